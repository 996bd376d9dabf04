//! The shard file writer used by the packer: sequential writes through a 4 KiB-aligned
//! buffer with `O_DIRECT`, so output bypasses the page cache. On a small machine the page cache
//! otherwise fills with dirty pages, the kernel throttles the writer, and copying into it costs
//! as much CPU as the merge. Filesystems without `O_DIRECT` (tmpfs) get plain buffered writes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const ALIGN: usize = 4096;
/// Bytes per write call.
pub const CHUNK: usize = 8 << 20;

/// A write-only output file, written front to back.
pub struct ShardWriter {
    path: PathBuf,
    file: File,
    direct: bool,
    /// Backing storage; `start..start + CHUNK` is the aligned window.
    storage: Vec<u8>,
    start: usize,
    fill: usize,
    written: u64,
}

impl ShardWriter {
    /// Creates `path`, with `O_DIRECT` when the filesystem allows it.
    pub fn create(path: &Path) -> Result<Self> {
        Self::create_with(path, true)
    }

    /// Creates `path`; `try_direct = false` forces buffered writes.
    pub fn create_with(path: &Path, try_direct: bool) -> Result<Self> {
        let flags = if try_direct { libc::O_DIRECT } else { 0 };
        let direct = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(flags)
            .open(path);
        let (file, direct) = match direct {
            Ok(f) => (f, try_direct),
            Err(_) => (File::create(path).map_err(|e| Error::io(path, e))?, false),
        };
        let storage = vec![0u8; CHUNK + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Ok(ShardWriter {
            path: path.to_path_buf(),
            file,
            direct,
            storage,
            start,
            fill: 0,
            written: 0,
        })
    }

    /// Appends bytes.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if !self.direct {
            self.written += data.len() as u64;
            return self.file.write_all(data).map_err(|e| Error::io(&self.path, e));
        }
        while !data.is_empty() {
            let n = (CHUNK - self.fill).min(data.len());
            let s = self.start + self.fill;
            self.storage[s..s + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill == CHUNK {
                self.flush_window(CHUNK)?;
            }
        }
        Ok(())
    }

    fn flush_window(&mut self, len: usize) -> Result<()> {
        let window = &self.storage[self.start..self.start + len];
        self.file.write_all(window).map_err(|e| Error::io(&self.path, e))?;
        self.written += self.fill as u64;
        self.fill = 0;
        Ok(())
    }

    /// Writes the tail, trims the alignment padding, syncs, and returns the file length.
    pub fn finish(mut self) -> Result<u64> {
        if self.direct && self.fill > 0 {
            let padded = self.fill.next_multiple_of(ALIGN);
            let s = self.start;
            self.storage[s + self.fill..s + padded].fill(0);
            self.flush_window(padded)?;
            self.file.set_len(self.written).map_err(|e| Error::io(&self.path, e))?;
        }
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))?;
        if !self.direct {
            crate::sys::drop_cache(&self.file);
        }
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sized_writes_come_out_exact() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut w = ShardWriter::create(&p).unwrap();
        let mut want = Vec::new();
        for i in 0..40usize {
            let chunk: Vec<u8> = (0..(i * 977_131) % (3 * CHUNK / 2) + 1)
                .map(|j| (i + j) as u8)
                .collect();
            w.write(&chunk).unwrap();
            want.extend_from_slice(&chunk);
        }
        assert_eq!(w.finish().unwrap(), want.len() as u64);
        assert!(std::fs::read(&p).unwrap() == want);
    }
}
