//! Read-only memory maps of input files: the only place inputs are mapped.
//!
//! # The mmap contract
//! * Inputs are mapped read-only and never written through the map.
//! * The output never overlaps an input: `save` checks canonical paths before anything is
//!   mapped, and output files are written with `pwrite`-style calls to fresh files in a staging
//!   directory, never into a mapped file (the safetensors #762 lesson).
//! * If another process truncates an input while it is mapped, reading the lost pages raises
//!   SIGBUS and the process dies. We cannot prevent that; do not edit inputs during a run.
//! * Views borrow `&'map [u8]`; nothing copies a whole tensor. Consumed ranges are released
//!   with `madvise(MADV_DONTNEED)` so resident memory stays flat.
#![expect(unsafe_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A read-only mapped input file.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    /// Kept open for `copy_file_range` of pass-through bytes.
    file: File,
    map: Option<memmap2::Mmap>,
}

impl MappedFile {
    /// Maps `path` read-only. An empty file maps to an empty slice.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Ok(MappedFile {
                path: path.to_path_buf(),
                file,
                map: None,
            });
        }
        // SAFETY: the map is read-only and we never write to the file; truncation by another
        // process would SIGBUS (see the module docs), which is the documented risk of mmap I/O.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            file,
            map: Some(map),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (read-only).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Hints sequential access for the whole map.
    pub fn advise_sequential(&self) {
        if let Some(m) = &self.map {
            let _ = m.advise(memmap2::Advice::Sequential);
        }
    }

    /// Maps the pages of `range` now, in one call (`MADV_POPULATE_READ`), instead of one page
    /// fault per 64 KiB as a later read would take them. A hint: ignored where unsupported.
    pub fn populate(&self, start: usize, end: usize) {
        let Some(m) = &self.map else { return };
        let end = end.min(m.len());
        if end > start {
            let _ = m.advise_range(memmap2::Advice::PopulateRead, start, end - start);
        }
    }

    /// Starts reading `range` into the page cache without mapping it (`MADV_WILLNEED`). A hint.
    pub fn will_need(&self, start: usize, end: usize) {
        let Some(m) = &self.map else { return };
        let end = end.min(m.len());
        if end > start {
            let _ = m.advise_range(memmap2::Advice::WillNeed, start, end - start);
        }
    }

    /// Drops every resident page of the file from this process.
    pub fn release_all(&self) {
        self.release(0, self.bytes().len());
    }

    /// Drops the resident pages of `range` (bytes of the file) from this process.
    ///
    /// The range is widened outward to [`FAULT_AROUND`] boundaries. A read fault maps more than
    /// its own page: every cached page of the surrounding window ("fault-around"), and with large
    /// page-cache folios (ext4 on Linux 6.x) the whole folio, up to 2 MiB: touching 3 pages of
    /// a file on this machine's kernel (6.18) mapped 512. So reading one tensor also maps the
    /// edges of its neighbours in the file, which may have been consumed already (the plan's
    /// order is not the file's); nothing would drop those pages again, and on an 8B merge they
    /// grew the resident set by 30 MiB over the run. A neighbour still being read just faults
    /// its folio back in from the page cache (one minor fault per folio). This is a pure memory
    /// hint either way.
    pub fn release(&self, start: usize, end: usize) {
        let Some(m) = &self.map else { return };
        let unit = FAULT_AROUND.max(page_size());
        let s = start / unit * unit;
        // Not past the map's length: memmap2 refuses that (the kernel rounds up to the page).
        let e = end.div_ceil(unit).saturating_mul(unit).min(m.len());
        if e > s {
            // SAFETY: MADV_DONTNEED on a read-only, never-written file mapping only drops
            // page-table entries; any later or concurrent read refaults the same file contents,
            // so no slice into the map ever observes different bytes.
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, s, e - s) };
        }
    }
}

/// The most a read fault maps around itself: a PMD-sized (2 MiB) page-cache folio.
const FAULT_AROUND: usize = 2 << 20;

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `m` mapped into this process (the "present" bit of /proc/self/pagemap).
    fn mapped_pages(m: &MappedFile) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        let b = m.bytes();
        let page = page_size();
        let first = b.as_ptr() as usize / page;
        let n = b.len().div_ceil(page);
        let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
        f.seek(SeekFrom::Start(first as u64 * 8)).unwrap();
        let mut raw = vec![0u8; n * 8];
        f.read_exact(&mut raw).unwrap();
        raw.chunks_exact(8)
            .filter(|c| u64::from_le_bytes((*c).try_into().unwrap()) >> 63 == 1)
            .count()
    }

    #[test]
    fn release_drops_every_page_including_the_last_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        // Not a multiple of the page size: the last page is partial.
        let data: Vec<u8> = (0..(5 << 20) + 123).map(|i| (i % 249) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let m = MappedFile::open(&p).unwrap();
        let sum: u64 = m.bytes().iter().step_by(4096).map(|&b| b as u64).sum();
        assert!(sum > 0);
        assert!(mapped_pages(&m) > 0);
        m.release_all();
        assert_eq!(mapped_pages(&m), 0, "release_all left pages mapped");
        // A small range deep inside drops the whole 2 MiB window around it (fault-around).
        let again: u64 = m.bytes().iter().step_by(4096).map(|&b| b as u64).sum();
        assert_eq!(std::hint::black_box(again), sum);
        let before = mapped_pages(&m);
        m.release((2 << 20) + 10, (2 << 20) + 20);
        assert_eq!(before - mapped_pages(&m), (2 << 20) / page_size());
        assert_eq!(m.bytes(), &data[..]);
    }

    #[test]
    fn maps_and_releases_without_changing_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3 * 4096 + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let m = MappedFile::open(&p).unwrap();
        assert_eq!(m.bytes(), &data[..]);
        m.release(0, data.len());
        assert_eq!(m.bytes(), &data[..]);
        let empty = dir.path().join("e");
        std::fs::write(&empty, b"").unwrap();
        assert!(MappedFile::open(&empty).unwrap().bytes().is_empty());
        assert!(matches!(
            MappedFile::open(&dir.path().join("missing")),
            Err(Error::NotFound { .. })
        ));
    }
}
