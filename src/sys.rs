//! Small OS calls, and one byte view, that need `unsafe` or `/proc`: free disk space, page-cache
//! hints, peak RSS, f32 memory as bytes.
#![expect(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The memory budget: a fraction of `MemAvailable`, or an absolute size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryBudget {
    /// 0 < x ≤ 0.95 of available RAM.
    Fraction(f64),
    /// Bytes.
    Bytes(u64),
}

impl MemoryBudget {
    /// Resolves the budget to bytes, reading `MemAvailable` for a fraction.
    pub fn bytes(self) -> u64 {
        match self {
            MemoryBudget::Bytes(b) => b,
            MemoryBudget::Fraction(f) => (mem_available().unwrap_or(4 << 30) as f64 * f) as u64,
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The nearest existing ancestor of `path`, itself included, whatever form the path has: a
/// bare relative name (`merged`, whose parent is the empty path) or `sub/rel` ends at `.`.
fn nearest_existing(path: &Path) -> Option<&Path> {
    let mut p = path;
    loop {
        if p.as_os_str().is_empty() {
            return Some(Path::new("."));
        }
        if p.exists() {
            return Some(p);
        }
        p = p.parent()?;
    }
}

/// Free bytes available to us on the filesystem holding `path` (or its nearest existing parent).
pub fn free_space(path: &Path) -> Option<u64> {
    let p = nearest_existing(path)?;
    let c = CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe_zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

fn unsafe_zeroed() -> libc::statvfs {
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}

/// Whether two paths (or their nearest existing ancestors) are on the same filesystem.
pub fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| -> Option<u64> { std::fs::metadata(nearest_existing(p)?).ok().map(|m| m.dev()) };
    match (dev(a), dev(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Whether `file` is on a filesystem whose `copy_file_range` clones blocks instead of copying
/// them (reflink: btrfs, XFS, bcachefs, OpenZFS 2.2+). Elsewhere (ext4, tmpfs) the kernel copies
/// through the page cache, which measured slower than our `O_DIRECT` path and fills the page
/// cache with dirty pages, so there it is not used.
pub fn clones_blocks(file: &File) -> bool {
    // SAFETY: the fd is valid for the lifetime of `file`; `st` is a properly sized out-parameter
    // of plain integers.
    let f_type = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(file.as_raw_fd(), &mut st) != 0 {
            return false;
        }
        st.f_type
    };
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
    let t = f_type as i64 as u32;
    matches!(t, 0x9123_683E | 0x5846_5342 | 0xCA45_1A4E | 0x2FC1_2FC1)
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off` inside the kernel
/// (`copy_file_range`): a block clone on a reflinking filesystem. Returns the bytes copied
/// (fewer than `len` only at end of file); an error means the caller writes them itself.
pub fn copy_range(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> std::io::Result<u64> {
    let (mut si, mut di) = (src_off as libc::loff_t, dst_off as libc::loff_t);
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: both fds are valid for the lifetime of the borrows; the offsets are in-out
        // parameters the kernel advances; no user memory is touched.
        let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut si, dst.as_raw_fd(), &mut di, want, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}

/// Tells the kernel we will not read `file`'s cached pages again (after they are on disk),
/// so writing a big model does not crowd the page cache of a small machine.
pub fn drop_cache(file: &File) {
    // SAFETY: the fd is valid for the lifetime of `file`; fadvise is only a hint.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Starts writeback of `len` bytes at `offset` and drops that range from the page cache once
/// it is on its way, so a buffered writer never holds much dirty memory.
pub fn write_back(file: &File, offset: u64, len: u64) {
    // SAFETY: the fd is valid for the lifetime of `file`; both calls are hints on a range of it.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        );
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// Takes an exclusive advisory lock on `file` without waiting; false when another process
/// holds it. The lock goes with the file descriptor.
pub fn try_lock(file: &File) -> bool {
    // SAFETY: the fd is valid for the lifetime of `file`; flock has no memory effects.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Set once by the SIGINT handler; the pipeline stops at the next work item when it is set.
/// The only process-wide state in the library: a signal handler can do nothing else safely.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether SIGINT arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Makes SIGINT stop a save cleanly at the next work item, leaving a resumable staging
/// directory (the CLI installs it; a library user may).
pub fn install_sigint_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

/// Makes glibc serve every allocation of 1 MiB or more with its own mapping, returned to the
/// system when freed. By default the threshold rises to the largest block freed so far, after
/// which the pipeline's 8 MiB tile buffers come from the heap, whose holes are not given back:
/// the resident set then creeps up with the length of the run instead of staying at the
/// budget. Called by `save` before any buffer exists.
pub fn fix_malloc_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before the pipeline's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Asks for transparent huge pages on `buf` (whole 2 MiB pages inside it). A hint.
pub fn want_huge_pages(buf: &mut [u8]) {
    const HUGE: usize = 2 << 20;
    let start = buf.as_mut_ptr() as usize;
    let s = start.next_multiple_of(HUGE);
    let e = (start + buf.len()) / HUGE * HUGE;
    if e > s {
        // SAFETY: [s, e) lies inside `buf`, which we borrow mutably; MADV_HUGEPAGE only changes
        // how the kernel backs the range, never its contents.
        unsafe {
            libc::madvise(s as *mut libc::c_void, e - s, libc::MADV_HUGEPAGE);
        }
    }
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `v`'s memory as bytes. On a little-endian host these are the little-endian f32 bytes a
/// backend writes for an f32 output, so a merge can land in `v` without a decode pass.
pub fn f32_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: u8 has alignment 1, the length is exactly v's, and every bit pattern is a valid f32,
    // so whatever is written through the view leaves `v` valid.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    #[test]
    fn free_space_and_rss_are_readable() {
        let d = tempfile::tempdir().unwrap();
        assert!(super::free_space(&d.path().join("not/yet/there")).unwrap() > 0);
        // Relative names: the current directory's filesystem.
        assert_eq!(super::nearest_existing(Path::new("merged")), Some(Path::new(".")));
        assert_eq!(super::nearest_existing(Path::new("no/such/sub")), Some(Path::new(".")));
        assert!(super::free_space(Path::new("merged")).is_some());
        assert!(super::same_filesystem(Path::new("merged"), Path::new("other/rel")));
        assert!(super::peak_rss().unwrap() > 0);
    }

    #[test]
    fn f32_bytes_view_the_values() {
        let mut v = vec![0f32; 3];
        let b = super::f32_bytes_mut(&mut v);
        assert_eq!(b.len(), 12);
        b[4..8].copy_from_slice(&1.5f32.to_ne_bytes());
        b[8..12].copy_from_slice(&(-2.25f32).to_ne_bytes());
        assert_eq!(v, [0.0, 1.5, -2.25]);
    }
}

/// An instruction set the vector kernels are compiled for (the merge's row kernel, the GGUF
/// row encoders), chosen once at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// No target features beyond the baseline.
    Portable,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 (F, BW, VL) + FMA.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU has.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            let avx512 = avx2
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl");
            if avx512 {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run, best first.
    pub fn available() -> Vec<Isa> {
        match Isa::detect() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Portable],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        }
    }

    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512",
        }
    }
}
