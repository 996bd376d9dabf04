//! The shard file writer used by the packer: sequential writes through 4 KiB-aligned windows
//! with `O_DIRECT`, so output bypasses the page cache. On a small machine the page cache
//! otherwise fills with dirty pages, the kernel throttles the writer, and copying into it costs
//! as much CPU as the merge.
//!
//! Full windows go to an I/O thread (two windows in flight), so the packer fills and hashes the
//! next window while the disk writes the last: the packer writes in parallel with itself where
//! order does not matter to it. Filesystems without `O_DIRECT` (tmpfs) get buffered writes,
//! with `sync_file_range` every 64 MiB and the written range dropped from the page cache, so
//! dirty memory stays bounded there too.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, Result};

const ALIGN: usize = 4096;
/// Bytes per write call.
pub const CHUNK: usize = 8 << 20;
/// Windows: one being filled, the rest in flight.
const WINDOWS: usize = 3;
/// Buffered mode: start writeback and drop cached pages every this many bytes.
const FLUSH_EVERY: u64 = 64 << 20;

/// An aligned window: backing storage and the aligned start inside it.
struct Window {
    storage: Vec<u8>,
    start: usize,
    fill: usize,
}

impl Window {
    fn new() -> Self {
        let storage = vec![0u8; CHUNK + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Window {
            storage,
            start,
            fill: 0,
        }
    }

    fn bytes(&self, len: usize) -> &[u8] {
        &self.storage[self.start..self.start + len]
    }
}

/// A write-only output file, written front to back.
pub struct ShardWriter {
    path: PathBuf,
    file: File,
    direct: bool,
    /// The window being filled (direct mode).
    current: Option<Window>,
    /// Full windows to the I/O thread, and empty ones back.
    to_io: Option<Sender<(Window, usize)>>,
    free: Receiver<Window>,
    io: Option<JoinHandle<std::io::Result<()>>>,
    written: u64,
    flushed: u64,
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
        let (free_tx, free_rx) = bounded::<Window>(WINDOWS);
        let (to_io, io, current) = if direct {
            for _ in 1..WINDOWS {
                let _ = free_tx.send(Window::new());
            }
            let (tx, rx) = bounded::<(Window, usize)>(WINDOWS);
            let mut f = file.try_clone().map_err(|e| Error::io(path, e))?;
            let handle = std::thread::Builder::new()
                .name("loraweld-io".into())
                .spawn(move || -> std::io::Result<()> {
                    for (mut w, len) in rx {
                        f.write_all(w.bytes(len))?;
                        w.fill = 0;
                        let _ = free_tx.send(w);
                    }
                    Ok(())
                })
                .map_err(|e| Error::io(path, e))?;
            (Some(tx), Some(handle), Some(Window::new()))
        } else {
            (None, None, None)
        };
        Ok(ShardWriter {
            path: path.to_path_buf(),
            file,
            direct,
            current,
            to_io,
            free: free_rx,
            io,
            written: 0,
            flushed: 0,
        })
    }

    /// Appends bytes.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if !self.direct {
            self.file.write_all(data).map_err(|e| Error::io(&self.path, e))?;
            self.written += data.len() as u64;
            if self.written - self.flushed >= FLUSH_EVERY {
                crate::sys::write_back(&self.file, self.flushed, self.written - self.flushed);
                self.flushed = self.written;
            }
            return Ok(());
        }
        while !data.is_empty() {
            let w = self.current.as_mut().expect("direct mode always holds a window");
            let n = (CHUNK - w.fill).min(data.len());
            let s = w.start + w.fill;
            w.storage[s..s + n].copy_from_slice(&data[..n]);
            w.fill += n;
            self.written += n as u64;
            data = &data[n..];
            if w.fill == CHUNK {
                self.send_window(CHUNK)?;
            }
        }
        Ok(())
    }

    /// Hands the current window (`len` bytes, aligned) to the I/O thread and takes a free one.
    fn send_window(&mut self, len: usize) -> Result<()> {
        let w = self.current.take().expect("direct mode always holds a window");
        let sent = self.to_io.as_ref().map(|tx| tx.send((w, len)).is_ok()).unwrap_or(false);
        if !sent {
            return Err(self.io_error());
        }
        match self.free.recv() {
            Ok(w) => {
                self.current = Some(w);
                Ok(())
            }
            Err(_) => Err(self.io_error()),
        }
    }

    /// The I/O thread's error, after it stopped.
    fn io_error(&mut self) -> Error {
        self.to_io = None;
        match self.io.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => Error::io(&self.path, e),
            _ => Error::Internal(format!("{}: the writer thread stopped", self.path.display())),
        }
    }

    /// Writes the tail, trims the alignment padding, syncs, and returns the file length.
    pub fn finish(mut self) -> Result<u64> {
        if self.direct {
            let fill = self.current.as_ref().map(|w| w.fill).unwrap_or(0);
            if fill > 0 {
                let padded = fill.next_multiple_of(ALIGN);
                if let Some(w) = self.current.as_mut() {
                    let s = w.start;
                    w.storage[s + fill..s + padded].fill(0);
                }
                self.send_window(padded)?;
            }
            self.to_io = None;
            match self.io.take().map(|h| h.join()) {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(Error::io(&self.path, e)),
                _ => {
                    return Err(Error::Internal(format!(
                        "{}: the writer thread panicked",
                        self.path.display()
                    )))
                }
            }
            if fill > 0 {
                self.file.set_len(self.written).map_err(|e| Error::io(&self.path, e))?;
            }
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
        for direct in [true, false] {
            let p = d.path().join(format!("f{direct}"));
            let mut w = ShardWriter::create_with(&p, direct).unwrap();
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

    #[test]
    fn empty_and_exactly_aligned_files() {
        let d = tempfile::tempdir().unwrap();
        for (len, direct) in [(0usize, true), (CHUNK, true), (4096, true), (0, false)] {
            let p = d.path().join(format!("g{len}{direct}"));
            let mut w = ShardWriter::create_with(&p, direct).unwrap();
            let data = vec![7u8; len];
            w.write(&data).unwrap();
            assert_eq!(w.finish().unwrap(), len as u64);
            assert_eq!(std::fs::read(&p).unwrap(), data);
        }
    }
}
