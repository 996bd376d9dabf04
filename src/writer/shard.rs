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
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, Result};

const ALIGN: usize = 4096;
/// Undoes a compute backend's `pin_output` (page-locking); runs before the buffer is freed, on whichever thread drops it.
pub type PinRelease = Box<dyn FnOnce() + Send>;

/// One written shard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardResult {
    /// File name.
    pub file: String,
    /// File bytes.
    pub bytes: u64,
    /// blake3 of the whole file, hex.
    pub blake3: String,
    /// sha256 of the whole file, hex, when asked for (`ExecConfig::sha256`: the Hub's LFS oid,
    /// computed as the bytes go by instead of reading the shard back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Bytes cloned from an input with `copy_file_range` instead of written (reflinking
    /// filesystems only; see `ShardWriter::write_from`).
    #[serde(skip_serializing_if = "is_zero")]
    pub cloned_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Bytes per write call.
pub const CHUNK: usize = 8 << 20;
/// Windows: one being filled, the rest in flight.
const WINDOWS: usize = 3;
/// Pass-through ranges shorter than this are copied, not cloned.
const CLONE_MIN: usize = 1 << 20;
/// Buffered mode: start writeback and drop cached pages every this many bytes.
const FLUSH_EVERY: u64 = 64 << 20;

/// A byte buffer whose start is 4 KiB-aligned in memory, so `O_DIRECT` can write from it.
/// The compute stage fills these directly at the byte position the data will have in its
/// 4 KiB page of the file, so the packer can hand them to the disk without copying.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    cap: usize,
    /// Run before `storage` is freed (a backend's [`crate::compute::Backend::pin_output`]).
    release: Option<crate::writer::shard::PinRelease>,
}

impl AlignedBuf {
    /// A zeroed buffer of `cap` bytes (rounded up to a whole page), resident from the start.
    ///
    /// Every page is touched here, so the resident set is the same whether a run later fills
    /// the buffer or not: memory is a function of the budget, not of the model or of timing.
    /// Buffers of 4 MiB and more start on a 2 MiB boundary and ask for transparent huge pages:
    /// the `O_DIRECT` write then pins a few huge pages instead of thousands of small ones, which
    /// made the 1B bf16 merge about 20% faster on this project's 2-core VM (BENCHMARKS.md).
    pub fn new(cap: usize) -> Self {
        const HUGE: usize = 2 << 20;
        let cap = cap.next_multiple_of(ALIGN).max(ALIGN);
        let align = if cap >= 2 * HUGE { HUGE } else { ALIGN };
        let mut storage = vec![0u8; cap + align];
        let start = storage.as_ptr().align_offset(align);
        let body = &mut storage[start..start + cap];
        if align == HUGE {
            crate::sys::want_huge_pages(body);
        }
        for i in (0..cap).step_by(ALIGN) {
            // An opaque zero: a known zero stored into a zeroed allocation may be optimized out,
            // and then the page would not be faulted in.
            body[i] = std::hint::black_box(0);
        }
        AlignedBuf {
            storage,
            start,
            cap,
            release: None,
        }
    }

    /// Sets what must run before this buffer's memory is freed.
    pub fn on_release(&mut self, f: crate::writer::shard::PinRelease) {
        self.release = Some(f);
    }

    /// Usable bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.cap]
    }

    /// The aligned bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.cap]
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Some(f) = self.release.take() {
            f();
        }
    }
}

/// The in-page offset at which data for file position `pos` must start in an [`AlignedBuf`].
pub fn lead_for(pos: u64) -> usize {
    (pos % ALIGN as u64) as usize
}

/// A window being filled: its buffer and how many bytes it holds.
struct Window {
    buf: AlignedBuf,
    fill: usize,
}

impl Window {
    fn new() -> Self {
        Window {
            buf: AlignedBuf::new(CHUNK),
            fill: 0,
        }
    }
}

/// What the I/O thread writes: a buffer, its length, its file offset, and where the buffer
/// goes afterwards.
struct IoItem {
    buf: AlignedBuf,
    len: usize,
    off: u64,
    /// A compute buffer (back to the compute pool) rather than a window.
    owned: bool,
}

/// A write-only output file, written front to back.
pub struct ShardWriter {
    path: PathBuf,
    file: File,
    direct: bool,
    /// The window being filled (direct mode).
    current: Option<Window>,
    /// Full buffers to the I/O thread, and empty windows back.
    to_io: Option<Sender<IoItem>>,
    free: Receiver<AlignedBuf>,
    io: Option<JoinHandle<std::io::Result<()>>>,
    /// Bytes appended so far (the file's logical length).
    written: u64,
    /// Direct mode: the file offset of the current window's first byte.
    pos: u64,
    /// Direct mode: bytes the I/O thread has written.
    done: Arc<AtomicU64>,
    /// Direct mode on a filesystem that clones blocks: pass-through ranges go by
    /// `copy_file_range` (see [`ShardWriter::write_from`]).
    clone_ok: bool,
    /// The smallest pass-through range worth cloning.
    clone_min: usize,
    /// Bytes cloned so far.
    cloned: u64,
    flushed: u64,
}

impl ShardWriter {
    /// Creates `path`, with `O_DIRECT` when the filesystem allows it.
    pub fn create(path: &Path) -> Result<Self> {
        Self::create_with(path, true, None)
    }

    /// Creates `path`; `try_direct = false` forces buffered writes. Compute buffers passed to
    /// [`ShardWriter::write_owned`] go back through `recycle` once written.
    pub fn create_with(path: &Path, try_direct: bool, recycle: Option<Sender<AlignedBuf>>) -> Result<Self> {
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
        let (free_tx, free_rx) = bounded::<AlignedBuf>(WINDOWS + 1);
        let done = Arc::new(AtomicU64::new(0));
        let (to_io, io, current) = if direct {
            for _ in 1..WINDOWS {
                let _ = free_tx.send(AlignedBuf::new(CHUNK));
            }
            let (tx, rx) = bounded::<IoItem>(WINDOWS);
            let f = file.try_clone().map_err(|e| Error::io(path, e))?;
            let done = done.clone();
            let handle = std::thread::Builder::new()
                .name("loraweld-io".into())
                .spawn(move || -> std::io::Result<()> {
                    for item in rx {
                        f.write_all_at(&item.buf.as_slice()[..item.len], item.off)?;
                        done.fetch_add(item.len as u64, Ordering::Release);
                        if item.owned {
                            if let Some(r) = &recycle {
                                let _ = r.try_send(item.buf);
                            }
                        } else {
                            let _ = free_tx.try_send(item.buf);
                        }
                    }
                    Ok(())
                })
                .map_err(|e| Error::io(path, e))?;
            (Some(tx), Some(handle), Some(Window::new()))
        } else {
            (None, None, None)
        };
        let clone_ok = direct && crate::sys::clones_blocks(&file);
        Ok(ShardWriter {
            path: path.to_path_buf(),
            file,
            direct,
            current,
            to_io,
            free: free_rx,
            io,
            written: 0,
            pos: 0,
            done,
            clone_ok,
            clone_min: CLONE_MIN,
            cloned: 0,
            flushed: 0,
        })
    }

    /// Forces (`Some(true)`) or forbids (`Some(false)`) cloning pass-through ranges with
    /// `copy_file_range`; `None` keeps what the filesystem suggests (`LORAWELD_COPY_FILE_RANGE`,
    /// read with the options).
    pub fn set_clone(&mut self, forced: Option<bool>) {
        if let Some(f) = forced {
            self.clone_ok = self.direct && f;
            // Forced (tests, any filesystem): down to two blocks, so small fixtures take the path.
            if f {
                self.clone_min = 2 * ALIGN;
            }
        }
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
            let f = w.fill;
            w.buf.as_mut_slice()[f..f + n].copy_from_slice(&data[..n]);
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
        self.send(w.buf, len, false)?;
        self.next_window()
    }

    /// Queues `buf[..len]` for the I/O thread at the current window position.
    fn send(&mut self, buf: AlignedBuf, len: usize, owned: bool) -> Result<()> {
        let item = IoItem {
            buf,
            len,
            off: self.pos,
            owned,
        };
        self.pos += len as u64;
        let sent = self.to_io.as_ref().map(|tx| tx.send(item).is_ok()).unwrap_or(false);
        if sent {
            Ok(())
        } else {
            Err(self.io_error())
        }
    }

    fn next_window(&mut self) -> Result<()> {
        match self.free.recv() {
            Ok(buf) => {
                self.current = Some(Window { buf, fill: 0 });
                Ok(())
            }
            Err(_) => Err(self.io_error()),
        }
    }

    /// Appends `len` bytes held at `buf[lead..lead + len]`, where `lead` must be
    /// [`lead_for`] of the current length; the buffer goes to the disk without being copied
    /// (only the partial pages at its two ends are). Returns the buffer when it was not taken
    /// (buffered mode, or too small to be worth it), for the caller to reuse.
    pub fn write_owned(&mut self, mut buf: AlignedBuf, lead: usize, len: usize) -> Result<Option<AlignedBuf>> {
        let direct_ok =
            self.direct && lead == lead_for(self.written) && len >= 4 * ALIGN && lead + len <= buf.capacity();
        if !direct_ok {
            self.write(&buf.as_slice()[lead..lead + len])?;
            return Ok(Some(buf));
        }
        // The window's last partial page goes in front of the data; its whole pages go first.
        let w = self.current.take().expect("direct mode always holds a window");
        let whole = w.fill - w.fill % ALIGN;
        debug_assert_eq!(w.fill - whole, lead);
        buf.as_mut_slice()[..lead].copy_from_slice(&w.buf.as_slice()[whole..w.fill]);
        if whole > 0 {
            self.send(w.buf, whole, false)?;
            self.next_window()?;
        } else {
            self.current = Some(Window { buf: w.buf, fill: 0 });
        }
        // The data's last partial page starts the next window.
        let end = lead + len;
        let full = end - end % ALIGN;
        let tail = end - full;
        {
            let w = self.current.as_mut().expect("set above");
            w.buf.as_mut_slice()[..tail].copy_from_slice(&buf.as_slice()[full..end]);
            w.fill = tail;
        }
        self.written += len as u64;
        self.send(buf, full, true)?;
        Ok(None)
    }

    /// Appends `data`, which is `src`'s bytes at `src_off` (a pass-through tensor). On a
    /// filesystem that clones blocks, when `data` sits at the same offset within a 4 KiB block
    /// in both files, its whole blocks are cloned with `copy_file_range` (no data moves: the
    /// output shares the input's blocks); the partial blocks at either end go through the
    /// window. Anywhere else, or if the kernel refuses, it is an ordinary [`ShardWriter::write`].
    pub fn write_from(&mut self, src: &File, src_off: u64, data: &[u8]) -> Result<()> {
        let a = ALIGN as u64;
        if !self.clone_ok || data.len() < self.clone_min || src_off % a != self.written % a {
            return self.write(data);
        }
        let head = ((a - self.written % a) % a) as usize;
        self.write(&data[..head])?;
        // The window now holds whole blocks only: hand them over, then wait until everything
        // before the clone is on the file, so the clone never lands beyond its end of file.
        let fill = self.current.as_ref().map(|w| w.fill).unwrap_or(0);
        if fill > 0 {
            self.send_window(fill)?;
        }
        while self.done.load(Ordering::Acquire) < self.pos {
            if self.io.as_ref().is_some_and(|h| h.is_finished()) {
                return Err(self.io_error());
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        let mid = (data.len() - head) / ALIGN * ALIGN;
        let cloned =
            crate::sys::copy_range(src, src_off + head as u64, &self.file, self.pos, mid as u64).unwrap_or(0) as usize;
        // Whatever the kernel did not take (an error, or a short copy) is written normally.
        let cloned = cloned / ALIGN * ALIGN;
        self.pos += cloned as u64;
        self.done.fetch_add(cloned as u64, Ordering::Release);
        self.written += cloned as u64;
        self.cloned += cloned as u64;
        self.write(&data[head + cloned..])
    }

    /// Bytes cloned with `copy_file_range` so far.
    pub fn cloned_bytes(&self) -> u64 {
        self.cloned
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
                    w.buf.as_mut_slice()[fill..padded].fill(0);
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

    /// The zero-copy path: `chunk` placed at its in-page position in a (recycled) buffer.
    fn write_tile(w: &mut ShardWriter, pool: &Receiver<AlignedBuf>, pos: u64, chunk: &[u8]) {
        let lead = lead_for(pos);
        let mut b = pool
            .try_recv()
            .ok()
            .filter(|b| b.capacity() >= lead + chunk.len())
            .unwrap_or_else(|| AlignedBuf::new(lead + chunk.len()));
        b.as_mut_slice()[lead..lead + chunk.len()].copy_from_slice(chunk);
        w.write_owned(b, lead, chunk.len()).unwrap();
    }

    /// A buffer a backend pinned (`on_release`) is released exactly once, when its memory is
    /// freed: not while the I/O thread writes it, nor while it waits in the pool, and also when
    /// the writer drops it rather than recycling it.
    #[test]
    fn a_pinned_buffer_is_released_once_when_freed() {
        use std::sync::atomic::AtomicUsize;
        let d = tempfile::tempdir().unwrap();
        let released = Arc::new(AtomicUsize::new(0));
        let pinned = |n: usize| {
            let mut b = AlignedBuf::new(n);
            let r = Arc::clone(&released);
            b.on_release(Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }));
            b
        };
        // Recycled: back in the pool after the write, released only when the pool is dropped.
        let (tx, rx) = bounded::<AlignedBuf>(8);
        let mut w = ShardWriter::create_with(&d.path().join("a"), true, Some(tx)).unwrap();
        // Whole pages from a page-aligned start, so each takes the zero-copy path where the
        // filesystem has O_DIRECT; a buffer handed back (buffered mode) goes to the pool, as the
        // packer does it.
        let mut back = Vec::new();
        for i in 0..3 {
            let mut b = pinned(1 << 20);
            b.as_mut_slice()[..1 << 16].fill(i as u8);
            back.extend(w.write_owned(b, 0, 1 << 16).unwrap());
        }
        w.finish().unwrap();
        assert_eq!(released.load(Ordering::SeqCst), 0, "released while still in use");
        drop(back);
        drop(rx);
        assert_eq!(released.load(Ordering::SeqCst), 3);
        // Not recycled: released when the writer is done with it.
        let mut w = ShardWriter::create_with(&d.path().join("b"), true, None).unwrap();
        let back = w.write_owned(pinned(1 << 20), 0, 1 << 16).unwrap();
        w.finish().unwrap();
        drop(back);
        assert_eq!(released.load(Ordering::SeqCst), 4);
        let want: Vec<u8> = (0..3u8).flat_map(|i| vec![i; 1 << 16]).collect();
        assert!(std::fs::read(d.path().join("a")).unwrap() == want);
    }

    #[test]
    fn cloned_ranges_land_where_written_ones_would() {
        // A source file; pass-through ranges of it are appended between ordinary writes and
        // zero-copy tiles, at offsets that match the output's in-block offset or do not.
        let d = tempfile::tempdir().unwrap();
        let src_path = d.path().join("src");
        let src_bytes: Vec<u8> = (0..6_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&src_path, &src_bytes).unwrap();
        let src = File::open(&src_path).unwrap();
        let p = d.path().join("out");
        let (tx, rx) = bounded::<AlignedBuf>(8);
        let mut w = ShardWriter::create_with(&p, true, Some(tx)).unwrap();
        let direct = w.direct;
        // Clone wherever the kernel lets us (ext4 copies inside the kernel; the layout is what
        // is tested), down to two blocks.
        w.clone_ok = direct;
        w.clone_min = 2 * ALIGN;
        let mut want = Vec::new();
        for i in 0..30usize {
            match i % 3 {
                0 => {
                    // Same in-block offset as the output position: cloned (whole blocks).
                    let len = 10_000 + i * 70_001;
                    let off = (i * 100_003) / ALIGN * ALIGN + want.len() % ALIGN;
                    let data = &src_bytes[off..off + len];
                    w.write_from(&src, off as u64, data).unwrap();
                    want.extend_from_slice(data);
                }
                1 => {
                    // A different in-block offset: written.
                    let off = 1 + want.len() % ALIGN + i * 999;
                    let data = &src_bytes[off..off + 50_000];
                    w.write_from(&src, off as u64, data).unwrap();
                    want.extend_from_slice(data);
                }
                _ => {
                    let chunk: Vec<u8> = (0..20_000 + i * 3_331).map(|j| (i * 7 + j) as u8).collect();
                    write_tile(&mut w, &rx, want.len() as u64, &chunk);
                    want.extend_from_slice(&chunk);
                }
            }
        }
        let cloned = w.cloned_bytes();
        assert_eq!(w.finish().unwrap(), want.len() as u64);
        assert!(std::fs::read(&p).unwrap() == want, "file bytes differ");
        if direct {
            assert!(cloned > 500_000, "only {cloned} bytes went by copy_file_range");
        }
    }

    #[test]
    fn odd_sized_writes_come_out_exact() {
        let d = tempfile::tempdir().unwrap();
        for direct in [true, false] {
            let p = d.path().join(format!("f{direct}"));
            let (tx, rx) = bounded::<AlignedBuf>(8);
            let mut w = ShardWriter::create_with(&p, direct, Some(tx)).unwrap();
            let mut want = Vec::new();
            for i in 0..40usize {
                let chunk: Vec<u8> = (0..(i * 977_131) % (3 * CHUNK / 2) + 1)
                    .map(|j| (i + j) as u8)
                    .collect();
                if i % 3 == 0 {
                    write_tile(&mut w, &rx, want.len() as u64, &chunk);
                } else {
                    w.write(&chunk).unwrap();
                }
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
            let mut w = ShardWriter::create_with(&p, direct, None).unwrap();
            let data = vec![7u8; len];
            w.write(&data).unwrap();
            assert_eq!(w.finish().unwrap(), len as u64);
            assert_eq!(std::fs::read(&p).unwrap(), data);
        }
    }
}
