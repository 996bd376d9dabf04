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
                map: None,
            });
        }
        // SAFETY: the map is read-only and we never write to the file; truncation by another
        // process would SIGBUS (see the module docs), which is the documented risk of mmap I/O.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map: Some(map),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Drops the resident pages of `range` (bytes of the file) from this process.
    ///
    /// The range is widened to whole pages: a boundary page shared with a neighbour that is still
    /// to be read is dropped too, and that read faults it back in from the page cache. Released
    /// only inward, those shared pages would never be dropped by either side, and on a 70B model
    /// they add up (two per tile). This is a pure memory hint either way.
    pub fn release(&self, start: usize, end: usize) {
        let Some(m) = &self.map else { return };
        let page = page_size();
        let s = start / page * page;
        let e = end.min(m.len()).div_ceil(page) * page;
        if e > s {
            // SAFETY: MADV_DONTNEED on a private, read-only, never-written file mapping only drops
            // page-table entries; any later or concurrent read refaults the same file contents,
            // so no slice into the map ever observes different bytes.
            let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, s, e - s) };
        }
    }
}

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
