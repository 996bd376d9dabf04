//! The `cust` side of the CUDA backend: device setup, the two staging slots, and one launcher
//! for the `lora_merge_*` kernels. Every `unsafe` block here is a driver call (FFI) or an
//! allocation of plain bytes; each says why it is sound.

use std::ffi::{c_void, CStr};
use std::os::raw::c_char;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cust::context::{Context, CurrentContext};
use cust::device::{Device, DeviceAttribute};
use cust::error::CudaError;
use cust::event::{Event, EventFlags};
use cust::function::{BlockSize, Function, GridSize};
use cust::memory::{DeviceBuffer, LockedBuffer};
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};
use cust::sys as cu;
use rayon::prelude::*;

use crate::compute::cpu::CpuBackend;
use crate::compute::{Backend, BaseRows, GpuTimes, MergeTile, PinRelease, QuantSpec};
use crate::error::{Error, Result};
use crate::format::bnb::block_row_step;
use crate::format::bnb::{AbsmaxRef, QuantType};
use crate::format::dtype::FloatDtype;
use crate::sys::MemoryBudget;

/// The kernels, embedded (candle's `include_str!` of its PTX).
const PTX: &str = include_str!("../../../kernels/lora_merge.ptx");
/// Machine code for `PTX` from build.rs (`ptxas` for sm_80 and sm_90), when the build found a
/// `ptxas`; empty otherwise.
mod cubins {
    include!(concat!(env!("OUT_DIR"), "/cubins.rs"));
}

/// Which of the embedded cubins (their `sm` numbers, `archs`) a GPU of compute capability
/// `major.minor` runs: the same major and the highest minor not above its own, since a cubin runs
/// on later minors of its major (sm_80 on an RTX 3090's 8.6 or an RTX 4090's 8.9). `None`: no
/// cubin fits, the PTX is JIT-compiled.
fn pick_cubin(major: u32, minor: u32, archs: &[u32]) -> Option<usize> {
    archs
        .iter()
        .enumerate()
        .filter(|&(_, &sm)| sm / 10 == major && sm % 10 <= minor)
        .max_by_key(|&(_, &sm)| sm)
        .map(|(i, _)| i)
}

/// Loads the merge kernels on the current context: the embedded cubin for this GPU when there is
/// one and the driver takes it, otherwise the PTX, which the driver JIT-compiles (2-3 s on an H100
/// unless its cache has it; BENCHMARKS.md, session 7). Returns the module and what was loaded (`sm_90 cubin`, `PTX`).
/// `LORAWELD_CUDA_JIT=1` skips the cubins (a timing aid).
fn load_merge_module(jit: bool) -> Result<(Module, String)> {
    load_module("kernels/lora_merge.ptx", PTX, cubins::CUBINS, jit)
}

/// The requantization kernel (`kernels/quant4.ptx`), loaded like the merge kernels.
fn load_quant_module(jit: bool) -> Result<(Module, String)> {
    load_module("kernels/quant4.ptx", QUANT_PTX, cubins::QUANT4_CUBINS, jit)
}

/// Loads `ptx` (from `file`) or the cubin of it for this GPU; see [`load_merge_module`].
/// With `jit` (`LORAWELD_CUDA_JIT`, read with the options) the PTX even when a cubin is there.
fn load_module(file: &str, ptx: &str, built: &[(u32, &[u8])], jit: bool) -> Result<(Module, String)> {
    let load_ptx = |what: String| {
        Module::from_ptx(ptx, &[])
            .map(|m| (m, what))
            .map_err(cu_err(format!("load {file}")))
    };
    if jit {
        return load_ptx("PTX, LORAWELD_CUDA_JIT".into());
    }
    let dev = Device::get_device(0).map_err(cu_err("cuDeviceGet"))?;
    let cc = |a| dev.get_attribute(a).map(|v| v.max(0) as u32);
    let major = cc(DeviceAttribute::ComputeCapabilityMajor).map_err(cu_err("cuDeviceGetAttribute"))?;
    let minor = cc(DeviceAttribute::ComputeCapabilityMinor).map_err(cu_err("cuDeviceGetAttribute"))?;
    let archs: Vec<u32> = built.iter().map(|&(sm, _)| sm).collect();
    match pick_cubin(major, minor, &archs) {
        Some(i) => {
            let (sm, bytes) = built[i];
            match Module::from_cubin(bytes, &[]) {
                Ok(m) => Ok((m, format!("sm_{sm} cubin"))),
                // An older driver may refuse a newer toolkit's cubin; its JIT still takes the PTX.
                Err(e) => load_ptx(format!("PTX; the sm_{sm} cubin was refused: {e}")),
            }
        }
        None => load_ptx("PTX".into()),
    }
}

/// The requantization of `merged_4bit` (bitsandbytes 4-bit blocks), run after a merge kernel.
const QUANT_PTX: &str = include_str!("../../../kernels/quant4.ptx");

/// The FMA-rate probe used by [`bench`].
const FMA_PTX: &str = include_str!("../../../kernels/fma_rate.ptx");
/// The L2 flush before a cold timing, used by [`bench`].
const FLUSH_PTX: &str = include_str!("../../../kernels/l2_flush.ptx");
/// The bytes-only floor kernel, used by [`bench`].
const TRAFFIC_PTX: &str = include_str!("../../../kernels/traffic.ptx");

/// Converts a driver error into ours, naming the operation.
fn cu_err(op: impl Into<String>) -> impl FnOnce(CudaError) -> Error {
    let op = op.into();
    move |e| Error::Cuda {
        op,
        what: e.to_string(),
    }
}

/// The driver's name for a raw result code; the stub library's own code is spelled out.
fn result_name(rc: cu::CUresult) -> String {
    let code = rc as u32;
    if code == 34 {
        return "CUDA_ERROR_STUB_LIBRARY (libcuda.so.1 is the link-time stub; no NVIDIA driver here)".into();
    }
    let mut p: *const c_char = std::ptr::null();
    // SAFETY: FFI; `p` is a valid out-pointer, and on success the driver points it at a static
    // NUL-terminated string.
    let ok = unsafe { cu::cuGetErrorName(rc, &mut p) } == cu::cudaError_enum::CUDA_SUCCESS;
    if ok && !p.is_null() {
        // SAFETY: checked non-null; the driver's error names are static C strings.
        let name = unsafe { CStr::from_ptr(p) };
        return name.to_string_lossy().into_owned();
    }
    format!("CUresult {code}")
}

/// Initializes the driver and takes device 0's primary context (current on this thread).
fn open_device() -> Result<(Context, String)> {
    let none = |why: String| Error::NoCudaDevice { why };
    // Raw cuInit so that the stub's code is named rather than reported as "unknown error".
    // SAFETY: FFI with a valid flags value (0).
    let rc = unsafe { cu::cuInit(0) };
    if rc != cu::cudaError_enum::CUDA_SUCCESS {
        return Err(none(format!("cuInit: {}", result_name(rc))));
    }
    let n = Device::num_devices().map_err(|e| none(format!("cuDeviceGetCount: {e}")))?;
    if n == 0 {
        return Err(none("the driver reports no CUDA device".into()));
    }
    let dev = Device::get_device(0).map_err(|e| none(format!("cuDeviceGet: {e}")))?;
    let name = dev.name().unwrap_or_else(|_| "CUDA device 0".into());
    let ctx = Context::new(dev).map_err(|e| none(format!("cuDevicePrimaryCtxRetain: {e}")))?;
    Ok((ctx, name))
}

/// The fast kernels' block: 128 threads, each an 8x8 output tile, so 128 columns x 64 rows
/// (kernels/README.md).
const FAST_BLOCK: (u32, u32) = (32, 4);

fn fast_grid(rows: usize, cols: usize) -> GridSize {
    (cols.div_ceil(128) as u32, rows.div_ceil(64) as u32).into()
}

/// The SMs of device 0 (at least 1).
fn sm_count() -> Result<u32> {
    let sms = Device::get_device(0)
        .and_then(|d| d.get_attribute(DeviceAttribute::MultiprocessorCount))
        .map_err(cu_err("cuDeviceGetAttribute(MultiprocessorCount)"))?;
    Ok(sms.max(1) as u32)
}

/// How many blocks of `func` (a lean kernel, 128-thread blocks) the GPU holds at once: the
/// occupancy API times the SMs. Asked once per kernel (at backend start), not per launch.
fn resident_blocks(func: &Function<'_>) -> Result<u32> {
    let per_sm = func
        .max_active_blocks_per_multiprocessor(FAST_BLOCK.into(), 0)
        .map_err(cu_err("cuOccupancyMaxActiveBlocksPerMultiprocessor"))?;
    Ok(per_sm.max(1).saturating_mul(sm_count()?))
}

/// The lean kernels' entry points (see [`KernelSpec::of`]).
const LEAN_KERNELS: [&str; 4] = [
    "lora_merge_q64_bf16",
    "lora_merge_q64_f16",
    "lora_merge_q64n_bf16",
    "lora_merge_q64n_f16",
];

/// Grid and block of entry point `name` (a `lora_merge_*` kernel) for `rows x cols`. The lean
/// kernels' grid is persistent: `resident` blocks (what fits on the GPU at once, from
/// [`resident_blocks`]), at most one per 128 x 64 tile; each block walks tiles `gridDim.x` apart.
fn launch_shape(name: &str, rows: usize, cols: usize, resident: u32) -> (GridSize, BlockSize) {
    if name.contains("_q64") {
        let tiles = cols.div_ceil(128) * rows.div_ceil(64);
        let blocks = (resident.max(1) as usize).min(tiles).max(1);
        ((blocks as u32).into(), FAST_BLOCK.into())
    } else if name.contains("_any_") {
        (((rows * cols).div_ceil(256).min(65535) as u32).into(), 256u32.into())
    } else {
        (fast_grid(rows, cols), FAST_BLOCK.into())
    }
}

/// Dtype code used by the kernels' flag bits (0 bf16, 1 f16, 2 f32).
fn dt_code(dt: FloatDtype) -> u32 {
    match dt {
        FloatDtype::Bf16 => 0,
        FloatDtype::F16 => 1,
        FloatDtype::F32 => 2,
    }
}

fn dt_suffix(dt: FloatDtype) -> &'static str {
    match dt {
        FloatDtype::Bf16 => "bf16",
        FloatDtype::F16 => "f16",
        FloatDtype::F32 => "f32",
    }
}

/// How one tile maps onto the kernels: the entry point and its `p_flags` word.
struct KernelSpec {
    /// `lora_merge_q64_{out}` / `lora_merge_q64n_{out}` (lean, persistent; plain / double-quant
    /// absmax), `lora_merge_{out}` (8x8 register tiles) or `lora_merge_any_{out}` (any shape);
    /// [`launch_shape`] gives each its grid.
    name: String,
    flags: u32,
    log2_bs: u32,
    log2_nbs: u32,
    offset: f32,
}

impl KernelSpec {
    /// `None` for the rare tiles the kernels do not cover (a non-power-of-two nested
    /// blocksize, a malformed code table); those run on the CPU backend.
    fn of(tile: &MergeTile<'_>) -> Option<Self> {
        let (mut flags, mut log2_bs, mut log2_nbs, mut offset) = (0u32, 0u32, 0u32, 0f32);
        match tile.base {
            BaseRows::Float { dtype, .. } => {
                flags |= 1 + dt_code(dtype);
            }
            BaseRows::Bnb(q) => {
                if !q.blocksize.is_power_of_two() || q.blocksize < 8 || q.quant_map.len() != 64 {
                    return None;
                }
                log2_bs = q.blocksize.trailing_zeros();
                flags |= dt_code(q.dtype) << 3;
                if let AbsmaxRef::Nested {
                    nested_blocksize,
                    offset: off,
                    nested_map,
                    ..
                } = q.absmax
                {
                    if !nested_blocksize.is_power_of_two() || nested_map.len() != 1024 {
                        return None;
                    }
                    flags |= 4;
                    log2_nbs = nested_blocksize.trailing_zeros();
                    offset = off;
                }
            }
        }
        if let Some(l) = tile.lora {
            flags |= 32 | (dt_code(l.delta_dtype) << 6);
        }
        let fast = tile.cols.is_multiple_of(8);
        // The lean kernels (`lora_merge_q64_*`, `lora_merge_q64n_*` for double quant): the common
        // QLoRA case, with a shorter epilogue (kernels/README.md). Rows start on a 64-element
        // block because cols % 64 == 0.
        let lean = match (tile.base, tile.lora) {
            (BaseRows::Bnb(q), Some(l)) => {
                q.blocksize == 64
                    && tile.cols.is_multiple_of(64)
                    && tile.out_dtype != FloatDtype::F32
                    && q.dtype == tile.out_dtype
                    && (l.delta_dtype == tile.out_dtype || l.delta_dtype == FloatDtype::F32)
                    && l.r > 0
            }
            _ => false,
        };
        let nested = flags & 4 != 0;
        let name = format!(
            "lora_merge_{}{}",
            if lean && nested {
                "q64n_"
            } else if lean {
                "q64_"
            } else if fast {
                ""
            } else {
                "any_"
            },
            dt_suffix(tile.out_dtype)
        );
        Some(KernelSpec {
            name,
            flags,
            log2_bs,
            log2_nbs,
            offset,
        })
    }
}

/// A kernel argument: the address of a local of the parameter's exact type.
fn arg<T>(p: &T) -> *mut c_void {
    p as *const T as *mut c_void
}

/// The merge kernels' 20 parameters, in their order (kernels/lora_merge.ptx documents them).
struct KernelArgs {
    out: u64,
    base: u64,
    absmax: u64,
    nabs: u64,
    nmap: u64,
    qmap: u64,
    a: u64,
    b: u64,
    flag: u64,
    k0: u64,
    blk0: u64,
    nblk0: u64,
    rows: u32,
    cols: u32,
    r: u32,
    scale: f32,
    offset: f32,
    flags: u32,
    log2bs: u32,
    log2nbs: u32,
}

impl KernelArgs {
    /// Pointers to each field, as `cuLaunchKernel` takes them; valid while `self` is.
    fn ptrs(&self) -> [*mut c_void; 20] {
        [
            arg(&self.out),
            arg(&self.base),
            arg(&self.absmax),
            arg(&self.nabs),
            arg(&self.nmap),
            arg(&self.qmap),
            arg(&self.a),
            arg(&self.b),
            arg(&self.flag),
            arg(&self.k0),
            arg(&self.blk0),
            arg(&self.nblk0),
            arg(&self.rows),
            arg(&self.cols),
            arg(&self.r),
            arg(&self.scale),
            arg(&self.offset),
            arg(&self.flags),
            arg(&self.log2bs),
            arg(&self.log2nbs),
        ]
    }
}

/// `quant4`'s 8 parameters, in their order (kernels/quant4.ptx documents them).
struct QuantArgs {
    input: u64,
    codes: u64,
    absmax: u64,
    n: u32,
    log2bs: u32,
    partial: u32,
    kind: u32,
    qt: u32,
}

impl QuantArgs {
    /// Pointers to each field, as `cuLaunchKernel` takes them; valid while `self` is.
    fn ptrs(&self) -> [*mut c_void; 8] {
        [
            arg(&self.input),
            arg(&self.codes),
            arg(&self.absmax),
            arg(&self.n),
            arg(&self.log2bs),
            arg(&self.partial),
            arg(&self.kind),
            arg(&self.qt),
        ]
    }
}

/// `quant4`'s grid for `nb` blocks of `2^log2bs` elements: a lane per 8 elements, at most 32
/// lanes per block (larger blocks loop), 256-thread CTAs (kernels/quant4.ptx).
fn quant_shape(nb: usize, log2bs: u32) -> (GridSize, BlockSize) {
    let lanes_log = (log2bs - 3).min(5);
    let per_warp = 32usize >> lanes_log;
    let warps = nb.div_ceil(per_warp);
    ((warps.div_ceil(8).max(1) as u32).into(), 256u32.into())
}

/// Copies with a few threads: one core's `memcpy` is well under the PCIe rate.
fn par_copy(pool: &rayon::ThreadPool, dst: &mut [u8], src: &[u8]) {
    const PIECE: usize = 1 << 20;
    if src.len() < 2 * PIECE {
        dst.copy_from_slice(src);
        return;
    }
    pool.install(|| {
        dst.par_chunks_mut(PIECE)
            .zip(src.par_chunks(PIECE))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
}

fn f32_bytes_into(dst: &mut [u8], src: &[f32]) {
    for (d, v) in dst.chunks_exact_mut(4).zip(src) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// Writes `B` rows (`[n, r]`, row-major) as `Bt[k][i]` with `rows_pad` columns, zero-padded.
fn stage_bt(dst: &mut [u8], b: &[f32], r: usize, rows_pad: usize) {
    dst.fill(0);
    for (i, row) in b.chunks_exact(r).enumerate() {
        for (k, v) in row.iter().enumerate() {
            let o = (k * rows_pad + i) * 4;
            dst[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Pinned host bytes that grow on demand.
fn host_buf(b: &mut Option<LockedBuffer<u8>>, n: usize) -> Result<&mut LockedBuffer<u8>> {
    if b.as_ref().is_none_or(|x| x.len() < n) {
        *b = None;
        let cap = n.max(4096).next_multiple_of(1 << 16);
        // SAFETY: u8 has no invalid bit patterns; every byte read back was written first.
        let nb = unsafe { LockedBuffer::uninitialized(cap) }.map_err(cu_err("cuMemAllocHost"))?;
        *b = Some(nb);
    }
    Ok(b.as_mut().expect("allocated just above"))
}

/// Device bytes that grow on demand.
fn dev_buf(b: &mut Option<DeviceBuffer<u8>>, n: usize) -> Result<&mut DeviceBuffer<u8>> {
    if b.as_ref().is_none_or(|x| x.len() < n) {
        *b = None;
        let cap = n.max(4096).next_multiple_of(1 << 16);
        // SAFETY: device bytes are only read by kernels after a copy or a kernel wrote them.
        let nb = unsafe { DeviceBuffer::uninitialized(cap) }.map_err(cu_err("cuMemAlloc"))?;
        *b = Some(nb);
    }
    Ok(b.as_mut().expect("allocated just above"))
}

/// Byte offsets of the sections of one chunk's upload, each 16-byte aligned.
struct Layout {
    end: usize,
}

impl Layout {
    fn push(&mut self, n: usize) -> usize {
        let at = self.end;
        self.end = (at + n).next_multiple_of(16);
        at
    }
}

/// A chunk in flight: where its bytes go in the caller's output, and how many it sent.
struct Pending {
    out_start: usize,
    /// Bytes downloaded (the flag word aside): the values, or a requantized chunk's codes and
    /// absmax values.
    len: usize,
    in_len: usize,
    /// The download went straight into the caller's (page-locked) buffer.
    direct: bool,
    /// A requantized chunk: where its codes and absmax values go.
    quant: Option<QuantPending>,
}

/// Where a requantized chunk's download goes: codes first in the staging, then (at `am_off`)
/// the absmax values.
struct QuantPending {
    /// Byte offset of the chunk's codes in the tile's packed codes.
    codes_start: usize,
    /// Bytes of codes (0: only the absmax values were asked for).
    codes_len: usize,
    /// The chunk's first block within the tile.
    am_start: usize,
    /// Blocks in the chunk.
    am_len: usize,
    /// Byte offset of the absmax values in the download.
    am_off: usize,
}

/// A chunk's requantization by `kernels/quant4.ptx`, after its merge.
#[derive(Debug, Clone, Copy)]
struct QuantChunk {
    /// 0 NF4, 1 FP4 (the kernel's `p_qt`).
    qt: u32,
    log2bs: u32,
    /// The chunk ends with the weight's partial last block.
    partial: bool,
    /// Codes wanted, not only the absmax values.
    codes: bool,
}

/// Where a tile's results go.
enum Dest<'o> {
    /// The merged values: `tile.out_len()` bytes.
    Values(&'o mut [u8]),
    /// The requantized tile: its packed codes (when asked for) and its block absmax values.
    Quant {
        codes: Option<&'o mut [u8]>,
        absmax: &'o mut [f32],
    },
}

/// One of the two staging slots: a stream with its own pinned and device buffers.
struct Slot {
    stream: Stream,
    host_in: Option<LockedBuffer<u8>>,
    host_out: Option<LockedBuffer<u8>>,
    host_flag: LockedBuffer<u8>,
    dev_in: Option<DeviceBuffer<u8>>,
    dev_out: Option<DeviceBuffer<u8>>,
    /// A requantized chunk's codes and absmax values.
    dev_q: Option<DeviceBuffer<u8>>,
    pending: Option<Pending>,
    /// Recorded on the stream before the chunk's upload, after it, after the kernel and after
    /// the download: the GPU's own times for [`GpuTimes`].
    ev: [Event; 4],
}

impl Slot {
    fn new() -> Result<Self> {
        Ok(Slot {
            stream: Stream::new(StreamFlags::NON_BLOCKING, None).map_err(cu_err("cuStreamCreate"))?,
            host_in: None,
            host_out: None,
            host_flag: LockedBuffer::new(&0u8, 16).map_err(cu_err("cuMemAllocHost"))?,
            dev_in: None,
            dev_out: None,
            dev_q: None,
            pending: None,
            ev: [event()?, event()?, event()?, event()?],
        })
    }
}

fn event() -> Result<Event> {
    Event::new(EventFlags::DEFAULT).map_err(cu_err("cuEventCreate"))
}

/// Milliseconds from event `a` to event `b`, both completed.
fn ms_between(a: &Event, b: &Event) -> Result<f64> {
    Ok(b.elapsed_time_f32(a).map_err(cu_err("cuEventElapsedTime"))? as f64)
}

/// The GPU's clock for [`GpuTimes::gpu_busy_s`]: an event recorded before the first chunk, and
/// the end of the busy time counted so far, in ms after it.
struct Clock {
    origin: Event,
    started: bool,
    busy_end_ms: f64,
}

/// Everything that lives in the CUDA context. Field order is drop order: the context goes last.
struct Gpu {
    slots: [Slot; 2],
    host_a: Option<LockedBuffer<u8>>,
    dev_a: Option<DeviceBuffer<u8>>,
    module: Module,
    /// `kernels/quant4.ptx`.
    quant: Module,
    /// [`resident_blocks`] of each of [`LEAN_KERNELS`], in that order.
    lean_resident: [u32; 4],
    /// Where the time went so far.
    times: GpuTimes,
    clock: Clock,
    ctx: Context,
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // Buffers are freed in this context from whichever thread drops the backend.
        let _ = CurrentContext::set_current(&self.ctx);
        for s in &self.slots {
            let _ = s.stream.synchronize();
        }
    }
}

/// What one chunk needs besides the tile: rows, the A pointer, the LoRA rank and scale.
struct ChunkArgs<'t, 'a> {
    tile: &'t MergeTile<'a>,
    spec: &'t KernelSpec,
    row: usize,
    n_rows: usize,
    a_ptr: u64,
    /// The caller's output, when it is page-locked ([`CudaBackend::pin_output`]): the chunk's
    /// result is downloaded straight into it.
    direct_out: Option<*mut u8>,
    /// Requantize the merged chunk on the device and download codes and absmax instead.
    quant: Option<QuantChunk>,
}

impl Gpu {
    /// Stages chunk `c` into slot `s`, then queues its upload, kernel and download.
    fn launch_chunk(&mut self, s: usize, c: &ChunkArgs<'_, '_>, pool: &rayon::ThreadPool) -> Result<()> {
        let tile = c.tile;
        let cols = tile.cols;
        let osz = tile.out_dtype.size();
        let n = c.n_rows * cols;
        let k0 = (tile.row0 + c.row as u64) * cols as u64;
        let k1 = k0 + n as u64;
        let internal = |what: &str| Error::Internal(format!("cuda: {what} out of range for tile at row {}", tile.row0));

        let (r, scale, b_rows) = match &tile.lora {
            Some(l) => (l.r, l.scale, &l.b[c.row * l.r..(c.row + c.n_rows) * l.r]),
            None => (0, 0.0, &[][..]),
        };
        let (base_src, absmax_src, nabs_src, qmap_src, nmap_src, blk0, nblk0) = match tile.base {
            BaseRows::Float { bytes, dtype } => {
                let s = dtype.size();
                let src = bytes
                    .get(c.row * cols * s..(c.row + c.n_rows) * cols * s)
                    .ok_or_else(|| internal("base rows"))?;
                (src, &[][..], &[][..], &[][..], &[][..], 0u64, 0u64)
            }
            BaseRows::Bnb(q) => {
                let codes = q
                    .codes
                    .get((k0 / 2) as usize..k1.div_ceil(2) as usize)
                    .ok_or_else(|| internal("4-bit codes"))?;
                let b0 = k0 >> c.spec.log2_bs;
                let b1 = (k1 - 1) >> c.spec.log2_bs;
                match q.absmax {
                    AbsmaxRef::Plain(bytes) => {
                        let am = bytes
                            .get(b0 as usize * 4..(b1 as usize + 1) * 4)
                            .ok_or_else(|| internal("absmax"))?;
                        (codes, am, &[][..], q.quant_map, &[][..], b0, 0)
                    }
                    AbsmaxRef::Nested {
                        codes: am_codes,
                        nested_absmax,
                        nested_map,
                        ..
                    } => {
                        let am = am_codes
                            .get(b0 as usize..b1 as usize + 1)
                            .ok_or_else(|| internal("absmax"))?;
                        let nb0 = b0 >> c.spec.log2_nbs;
                        let nb1 = b1 >> c.spec.log2_nbs;
                        let na = nested_absmax
                            .get(nb0 as usize * 4..(nb1 as usize + 1) * 4)
                            .ok_or_else(|| internal("nested absmax"))?;
                        (codes, am, na, q.quant_map, nested_map, b0, nb0)
                    }
                }
            }
        };

        let mut lay = Layout { end: 0 };
        let off_flag = lay.push(16);
        let off_qmap = lay.push(64);
        let off_nmap = lay.push(1024);
        // B goes transposed and padded to 8 rows: Bt[k][row] (kernels/README.md).
        let rows_pad = c.n_rows.next_multiple_of(8);
        let off_b = lay.push(if r > 0 { r * rows_pad * 4 } else { 0 });
        let off_abs = lay.push(absmax_src.len());
        let off_nabs = lay.push(nabs_src.len());
        let off_base = lay.push(base_src.len());
        let in_len = lay.end;
        let out_len = n * osz;

        let func = self
            .module
            .get_function(&c.spec.name)
            .map_err(cu_err(format!("cuModuleGetFunction {}", c.spec.name)))?;
        let qfunc = match c.quant {
            Some(_) => Some(
                self.quant
                    .get_function("quant4")
                    .map_err(cu_err("cuModuleGetFunction quant4"))?,
            ),
            None => None,
        };
        // A requantized chunk downloads its codes (padded to whole 8-element pieces, which the
        // kernel stores as u32 words) and then its absmax values.
        let q_layout = c.quant.map(|q| {
            let nb = n.div_ceil(1 << q.log2bs);
            let codes_room = if q.codes { n.next_multiple_of(8) / 2 } else { 0 };
            let am_off = codes_room.next_multiple_of(16);
            (q, nb, am_off, am_off + nb * 4)
        });
        let slot = &mut self.slots[s];
        let t_stage = Instant::now();
        {
            let h = host_buf(&mut slot.host_in, in_len)?;
            h[off_flag..off_flag + 16].fill(0);
            h[off_qmap..off_qmap + 64].fill(0);
            h[off_qmap..off_qmap + qmap_src.len()].copy_from_slice(qmap_src);
            h[off_nmap..off_nmap + 1024].fill(0);
            h[off_nmap..off_nmap + nmap_src.len()].copy_from_slice(nmap_src);
            if r > 0 {
                stage_bt(&mut h[off_b..off_b + r * rows_pad * 4], b_rows, r, rows_pad);
            }
            h[off_abs..off_abs + absmax_src.len()].copy_from_slice(absmax_src);
            h[off_nabs..off_nabs + nabs_src.len()].copy_from_slice(nabs_src);
            par_copy(pool, &mut h[off_base..off_base + base_src.len()], base_src);
        }
        self.times.stage_in_s += t_stage.elapsed().as_secs_f64();
        let down_len = q_layout.map_or(out_len, |(_, _, _, q_len)| q_len);
        // Staging: everything, unless the values go straight to the caller; a requantized
        // chunk's absmax values always.
        if c.direct_out.is_none() || q_layout.is_some() {
            host_buf(&mut slot.host_out, down_len)?;
        }
        let dev_in = dev_buf(&mut slot.dev_in, in_len)?.as_device_ptr().as_raw();
        let dev_out = dev_buf(&mut slot.dev_out, out_len)?.as_device_ptr().as_raw();
        let stream = slot.stream.as_inner();
        let host_in = slot.host_in.as_ref().expect("staged above").as_ptr();
        if !self.clock.started {
            self.clock
                .origin
                .record(&slot.stream)
                .map_err(cu_err("cuEventRecord"))?;
            self.clock.started = true;
        }
        slot.ev[0].record(&slot.stream).map_err(cu_err("cuEventRecord"))?;
        // SAFETY: FFI. `host_in` is pinned and holds `in_len` staged bytes; `dev_in` has room for
        // them. The slot is not touched again until `drain` has synchronized its stream.
        let rc = unsafe { cu::cuMemcpyHtoDAsync_v2(dev_in, host_in as *const c_void, in_len, stream) };
        if rc != cu::cudaError_enum::CUDA_SUCCESS {
            return Err(Error::Cuda {
                op: "copy to device".into(),
                what: result_name(rc),
            });
        }
        slot.ev[1].record(&slot.stream).map_err(cu_err("cuEventRecord"))?;

        let ka = KernelArgs {
            out: dev_out,
            base: dev_in + off_base as u64,
            absmax: dev_in + off_abs as u64,
            nabs: dev_in + off_nabs as u64,
            nmap: dev_in + off_nmap as u64,
            qmap: dev_in + off_qmap as u64,
            a: c.a_ptr,
            b: dev_in + off_b as u64,
            flag: dev_in + off_flag as u64,
            k0,
            blk0,
            nblk0,
            rows: c.n_rows as u32,
            cols: cols as u32,
            r: r as u32,
            scale,
            offset: c.spec.offset,
            flags: c.spec.flags,
            log2bs: c.spec.log2_bs,
            log2nbs: c.spec.log2_nbs,
        };
        let args = ka.ptrs();
        let resident = LEAN_KERNELS
            .iter()
            .position(|k| *k == c.spec.name)
            .map_or(0, |i| self.lean_resident[i]);
        let (grid, block) = launch_shape(&c.spec.name, c.n_rows, cols, resident);
        // SAFETY: FFI. The arguments point at the fields of `ka` (alive until the call returns),
        // of the exact types and order the kernel declares; every device pointer lies inside a
        // live allocation sized for this chunk.
        unsafe { slot.stream.launch(&func, grid, block, 0, &args) }
            .map_err(cu_err(format!("launch {}", c.spec.name)))?;
        let mut down_src = dev_out;
        let mut quant = None;
        if let (Some((q, nb, am_off, q_len)), Some(qfunc)) = (q_layout, &qfunc) {
            let dev_q = dev_buf(&mut slot.dev_q, q_len)?.as_device_ptr().as_raw();
            let qa = QuantArgs {
                input: dev_out,
                codes: if q.codes { dev_q } else { 0 },
                absmax: dev_q + am_off as u64,
                n: n as u32,
                log2bs: q.log2bs,
                partial: q.partial as u32,
                kind: dt_code(tile.out_dtype),
                qt: q.qt,
            };
            let args = qa.ptrs();
            let (grid, block) = quant_shape(nb, q.log2bs);
            // SAFETY: FFI. The arguments point at the fields of `qa`, of the kernel's types and
            // order; `dev_out` holds the chunk's `n` merged values (and its allocation, rounded to
            // 64 KiB, covers the kernel's reads of up to 7 more), `dev_q` has room for the codes
            // in whole u32 words and the absmax values.
            unsafe { slot.stream.launch(qfunc, grid, block, 0, &args) }.map_err(cu_err("launch quant4"))?;
            down_src = dev_q;
            quant = Some(QuantPending {
                codes_start: c.row * cols / 2,
                codes_len: if q.codes { n.div_ceil(2) } else { 0 },
                am_start: (c.row * cols) >> q.log2bs,
                am_len: nb,
                am_off,
            });
        }
        slot.ev[2].record(&slot.stream).map_err(cu_err("cuEventRecord"))?;

        let out_start = c.row * cols * osz;
        let staging = slot.host_out.as_mut().map(|h| h.as_mut_ptr());
        let staging = || staging.ok_or_else(|| Error::Internal("cuda: no pinned output staging".into()));
        // The downloads: (host destination, device source, bytes). With a page-locked caller's
        // buffer, values (or a requantized chunk's codes) go straight into it; the rest (and
        // everything otherwise) lands in the slot's staging for `drain` to copy out.
        let mut copies: Vec<(*mut u8, u64, usize)> = Vec::with_capacity(3);
        let direct = match (&quant, c.direct_out) {
            (None, Some(p)) => {
                // SAFETY: `direct_out` is the caller's output of `tile.out_len()` bytes, and this
                // chunk's `out_len` bytes from `out_start` lie inside it.
                copies.push((unsafe { p.add(out_start) }, dev_out, out_len));
                true
            }
            (Some(q), Some(p)) if q.codes_len > 0 => {
                // SAFETY: `direct_out` is the caller's codes buffer of the tile's packed length,
                // and this chunk's `codes_len` bytes from `codes_start` lie inside it; the
                // staging holds `down_len >= am_off + 4 * am_len` bytes.
                copies.push((unsafe { p.add(q.codes_start) }, down_src, q.codes_len));
                copies.push((
                    unsafe { staging()?.add(q.am_off) },
                    down_src + q.am_off as u64,
                    4 * q.am_len,
                ));
                true
            }
            _ => {
                copies.push((staging()?, down_src, down_len));
                false
            }
        };
        let downloaded = copies.iter().map(|c| c.2).sum();
        copies.push((slot.host_flag.as_mut_ptr(), ka.flag, 4));
        for (dst, src, len) in copies {
            // SAFETY: FFI. Every destination is pinned (the slot's staging, its flag word, or the
            // caller's registered buffer), sized for its copy as said above, and not read until
            // `drain` has synchronized the stream; `run_tile` drains every chunk before it
            // returns the caller's buffer.
            let rc = unsafe { cu::cuMemcpyDtoHAsync_v2(dst as *mut c_void, src, len, stream) };
            if rc != cu::cudaError_enum::CUDA_SUCCESS {
                return Err(Error::Cuda {
                    op: "copy from device".into(),
                    what: result_name(rc),
                });
            }
        }
        slot.ev[3].record(&slot.stream).map_err(cu_err("cuEventRecord"))?;
        slot.pending = Some(Pending {
            out_start,
            len: downloaded,
            in_len,
            direct,
            quant,
        });
        Ok(())
    }

    /// Waits for slot `s`'s chunk, copies its output into `dest`, adds its times to
    /// [`Gpu::times`], and says whether it was all finite (the kernel's flag word stayed 0).
    fn drain(&mut self, s: usize, dest: &mut Dest<'_>, pool: &rayon::ThreadPool) -> Result<bool> {
        let slot = &mut self.slots[s];
        let Some(p) = slot.pending.take() else {
            return Ok(true);
        };
        let t_wait = Instant::now();
        slot.stream.synchronize().map_err(cu_err("cuStreamSynchronize"))?;
        let t = &mut self.times;
        t.wait_s += t_wait.elapsed().as_secs_f64();
        let ev = &slot.ev;
        t.h2d_s += ms_between(&ev[0], &ev[1])? * 1e-3;
        t.kernel_s += ms_between(&ev[1], &ev[2])? * 1e-3;
        t.d2h_s += ms_between(&ev[2], &ev[3])? * 1e-3;
        // Chunks are drained in launch order, which is the order their uploads start in (one
        // copy engine each way), so a running end makes the union of the busy intervals.
        let start = ms_between(&self.clock.origin, &ev[0])?;
        let end = ms_between(&self.clock.origin, &ev[3])?;
        t.gpu_busy_s += (end - start.max(self.clock.busy_end_ms)).max(0.0) * 1e-3;
        self.clock.busy_end_ms = self.clock.busy_end_ms.max(end);
        t.chunks += 1;
        t.h2d_bytes += p.in_len as u64;
        t.d2h_bytes += p.len as u64 + 4;
        if !p.direct || p.quant.is_some() {
            let t_copy = Instant::now();
            let host = slot
                .host_out
                .as_ref()
                .ok_or_else(|| Error::Internal("cuda: a pending chunk has no output staging".into()))?;
            let bad = || Error::Internal("cuda: a chunk's result does not fit its destination".into());
            match (dest, &p.quant) {
                (Dest::Values(out), None) => {
                    let out = out.get_mut(p.out_start..p.out_start + p.len).ok_or_else(bad)?;
                    par_copy(pool, out, &host[..p.len]);
                }
                (Dest::Quant { codes, absmax }, Some(q)) => {
                    if let (Some(codes), false) = (codes, p.direct) {
                        codes
                            .get_mut(q.codes_start..q.codes_start + q.codes_len)
                            .ok_or_else(bad)?
                            .copy_from_slice(&host[..q.codes_len]);
                    }
                    let am = absmax.get_mut(q.am_start..q.am_start + q.am_len).ok_or_else(bad)?;
                    for (a, b) in am
                        .iter_mut()
                        .zip(host[q.am_off..q.am_off + 4 * q.am_len].chunks_exact(4))
                    {
                        *a = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                _ => return Err(bad()),
            }
            t.copy_out_s += t_copy.elapsed().as_secs_f64();
        }
        Ok(slot.host_flag[..4] == [0, 0, 0, 0])
    }

    /// After an error: wait for whatever is queued and forget it.
    fn abandon(&mut self) {
        for s in &mut self.slots {
            let _ = s.stream.synchronize();
            s.pending = None;
        }
    }
}

/// The GPU merge backend. See the module docs.
pub struct CudaBackend {
    gpu: Mutex<Gpu>,
    /// Tiles the kernels do not cover, bit for bit the same arithmetic.
    cpu: CpuBackend,
    /// A few threads for pinned ↔ pageable copies.
    copier: rayon::ThreadPool,
    device: String,
    /// What `load_merge_module` loaded (`sm_90 cubin`, `PTX`).
    image: String,
    /// Target bytes per chunk (output or input, whichever is larger).
    chunk_bytes: usize,
    /// Device bytes this backend may use: `maximum_memory_usage` applied to free VRAM.
    device_budget: u64,
    /// Host ranges (start, end) registered with the driver by [`Backend::pin_output`].
    pins: Arc<Mutex<Vec<(usize, usize)>>>,
}

impl CudaBackend {
    /// Opens device 0, loads the kernels, and sizes the staging from `budget` applied to the
    /// device's free memory. Fails with [`Error::NoCudaDevice`] when there is no usable GPU
    /// (no driver, the link-time stub, no device, or the kernels do not load).
    pub fn new(budget: MemoryBudget, threads: Option<usize>) -> Result<Self> {
        Self::with_jit(budget, threads, false)
    }

    /// [`CudaBackend::new`]; with `jit`, the kernels are loaded from PTX even when this build
    /// embeds a cubin for the GPU (`LORAWELD_CUDA_JIT`, to time the driver's JIT).
    pub fn with_jit(budget: MemoryBudget, threads: Option<usize>, jit: bool) -> Result<Self> {
        let (ctx, device) = open_device()?;
        let none = |why: String| Error::NoCudaDevice { why };
        let (module, image) = load_merge_module(jit).map_err(|e| none(e.to_string()))?;
        let (quant, _) = load_quant_module(jit).map_err(|e| none(e.to_string()))?;
        let mut lean_resident = [0u32; 4];
        for (slot, name) in lean_resident.iter_mut().zip(LEAN_KERNELS) {
            let func = module
                .get_function(name)
                .map_err(|e| none(format!("kernels/lora_merge.ptx has no {name}: {e}")))?;
            *slot = resident_blocks(&func)?;
        }
        let (free, _total) = cust::memory::mem_get_info().map_err(|e| none(format!("cuMemGetInfo: {e}")))?;
        let device_budget = match budget {
            MemoryBudget::Fraction(f) => (free as f64 * f) as u64,
            MemoryBudget::Bytes(b) => b.min(free as u64),
        };
        if device_budget < 1 << 20 {
            return Err(none(format!(
                "the device memory budget is {device_budget} bytes ({free} free), below 1 MiB"
            )));
        }
        // Two slots of (input + output) ≈ four chunks, plus A (at most a quarter of the budget).
        let chunk_bytes = (device_budget / 8).clamp(64 << 10, 16 << 20) as usize;
        let slots = [Slot::new()?, Slot::new()?];
        let copier = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.unwrap_or(8).clamp(1, 8))
            .thread_name(|i| format!("loraweld-cuda-copy-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("cannot start copy threads: {e}")))?;
        Ok(CudaBackend {
            gpu: Mutex::new(Gpu {
                slots,
                host_a: None,
                dev_a: None,
                module,
                quant,
                lean_resident,
                times: GpuTimes::default(),
                clock: Clock {
                    origin: event()?,
                    started: false,
                    busy_end_ms: 0.0,
                },
                ctx,
            }),
            cpu: CpuBackend::new(threads)?,
            copier,
            device,
            image,
            chunk_bytes,
            device_budget,
            pins: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Whether `out` lies inside a buffer registered by [`Backend::pin_output`].
    fn is_pinned(&self, out: &[u8]) -> bool {
        let (s, e) = (out.as_ptr() as usize, out.as_ptr() as usize + out.len());
        self.pins
            .lock()
            .is_ok_and(|p| p.iter().any(|&(ps, pe)| ps <= s && e <= pe))
    }

    /// The GPU's name (`NVIDIA H100 80GB HBM3`).
    pub fn device_name(&self) -> &str {
        &self.device
    }

    /// What the merge kernels were loaded from: `sm_90 cubin` (embedded machine code) or `PTX`
    /// (JIT-compiled by the driver), with the reason when a cubin was passed over.
    pub fn kernel_image(&self) -> &str {
        &self.image
    }

    /// Rows per chunk: `chunk_bytes` over the widest per-row stream (input, output or B).
    fn chunk_rows(&self, tile: &MergeTile<'_>) -> usize {
        let base = match tile.base {
            BaseRows::Float { dtype, .. } => dtype.size(),
            BaseRows::Bnb(_) => 1,
        };
        let r = tile.lora.map(|l| l.r).unwrap_or(0);
        let row_bytes = tile.cols * tile.out_dtype.size().max(base) + r * 4;
        let max_elems = (i32::MAX as usize) / tile.cols.max(1);
        (self.chunk_bytes / row_bytes.max(1)).clamp(1, max_elems.max(1))
    }

    /// The kernel that takes `tile` on this GPU, or `None` for the host: a tile no kernel
    /// covers, or one whose `lora_A` (uploaded whole) needs over a quarter of the device budget.
    fn kernel_for(&self, tile: &MergeTile<'_>) -> Option<KernelSpec> {
        let a_bytes = tile.lora.map(|l| l.a.len() as u64 * 4).unwrap_or(0);
        KernelSpec::of(tile).filter(|_| a_bytes <= self.device_budget / 4)
    }

    /// [`Self::run_tile`] under the GPU state's lock, in its context; a failed run abandons the
    /// chunks still in flight, so the next tile starts clean.
    fn run_locked(
        &self,
        tile: &MergeTile<'_>,
        spec: &KernelSpec,
        dest: Dest<'_>,
        quant: Option<&QuantSpec>,
    ) -> Result<bool> {
        let mut gpu = self
            .gpu
            .lock()
            .map_err(|_| Error::Internal("the cuda state was poisoned by a panic".into()))?;
        CurrentContext::set_current(&gpu.ctx).map_err(cu_err("cuCtxSetCurrent"))?;
        let res = self.run_tile(&mut gpu, tile, spec, dest, quant);
        if res.is_err() {
            gpu.abandon();
        }
        res
    }

    /// Merges `tile` chunk by chunk into `dest`; with `quant`, each chunk is requantized on the
    /// device too.
    fn run_tile(
        &self,
        gpu: &mut Gpu,
        tile: &MergeTile<'_>,
        spec: &KernelSpec,
        mut dest: Dest<'_>,
        quant: Option<&QuantSpec>,
    ) -> Result<bool> {
        let a_ptr = match &tile.lora {
            Some(l) => {
                let a_len = l.a.len() * 4;
                let h = host_buf(&mut gpu.host_a, a_len)?;
                f32_bytes_into(&mut h[..a_len], l.a);
                let src = h.as_ptr();
                let d = dev_buf(&mut gpu.dev_a, a_len)?.as_device_ptr().as_raw();
                let t_a = Instant::now();
                // SAFETY: FFI; a synchronous copy of `a_len` pinned bytes into a buffer of at least
                // that size. No kernel is in flight (every tile ends with both slots drained).
                let rc = unsafe { cu::cuMemcpyHtoD_v2(d, src as *const c_void, a_len) };
                if rc != cu::cudaError_enum::CUDA_SUCCESS {
                    return Err(Error::Cuda {
                        op: "copy lora_A to device".into(),
                        what: result_name(rc),
                    });
                }
                gpu.times.h2d_s += t_a.elapsed().as_secs_f64();
                gpu.times.h2d_bytes += a_len as u64;
                d
            }
            None => 0,
        };
        let mut rows_per = self.chunk_rows(tile);
        if let Some(q) = quant {
            // Every chunk starts on a block boundary.
            let step = block_row_step(tile.cols as u64, q.blocksize as u64) as usize;
            rows_per = (rows_per / step).max(1) * step;
        }
        let direct_out = match &mut dest {
            Dest::Values(out) => self.is_pinned(out).then_some(out.as_mut_ptr()),
            Dest::Quant { codes: Some(c), .. } => self.is_pinned(c).then_some(c.as_mut_ptr()),
            Dest::Quant { codes: None, .. } => None,
        };
        let mut finite = true;
        let (mut row, mut j) = (0usize, 0usize);
        while row < tile.rows {
            let n_rows = rows_per.min(tile.rows - row);
            let s = j % 2;
            finite &= gpu.drain(s, &mut dest, &self.copier)?;
            let end = (tile.row0 + (row + n_rows) as u64) * tile.cols as u64;
            let c = ChunkArgs {
                tile,
                spec,
                row,
                n_rows,
                a_ptr,
                direct_out,
                quant: quant.map(|q| QuantChunk {
                    qt: match q.quant_type {
                        QuantType::Nf4 => 0,
                        QuantType::Fp4 => 1,
                    },
                    log2bs: q.blocksize.trailing_zeros(),
                    partial: end == q.numel && !q.numel.is_multiple_of(q.blocksize as u64),
                    codes: matches!(dest, Dest::Quant { codes: Some(_), .. }),
                }),
            };
            gpu.launch_chunk(s, &c, &self.copier)?;
            row += n_rows;
            j += 1;
        }
        for k in 0..2 {
            finite &= gpu.drain((j + k) % 2, &mut dest, &self.copier)?;
        }
        Ok(finite)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda ({}, {})", self.device, self.image)
    }

    fn merge_tile(&self, tile: &MergeTile<'_>, out: &mut [u8]) -> Result<bool> {
        if out.len() != tile.out_len() {
            return Err(Error::Internal(format!(
                "tile output buffer is {} bytes, expected {}",
                out.len(),
                tile.out_len()
            )));
        }
        if tile.rows == 0 || tile.cols == 0 {
            return Ok(true);
        }
        match self.kernel_for(tile) {
            Some(spec) => self.run_locked(tile, &spec, Dest::Values(out), None),
            None => self.cpu.merge_tile(tile, out),
        }
    }

    fn quant_tile(
        &self,
        tile: &MergeTile<'_>,
        q: &QuantSpec,
        codes: Option<&mut [u8]>,
        absmax: &mut [f32],
    ) -> Result<Option<bool>> {
        let bs = q.blocksize;
        let len = tile.rows * tile.cols;
        if codes.as_ref().is_some_and(|c| c.len() != len.div_ceil(2)) || absmax.len() != len.div_ceil(bs.max(1)) {
            return Err(Error::Internal(format!(
                "quant tile at row {}: output buffers do not match {len} elements",
                tile.row0
            )));
        }
        // quant4 takes power-of-two blocks of 8 to 4096 elements, starting the tile, and chunks
        // of fewer than 2^31 elements (a chunk is at least the rows that make whole blocks).
        let k0 = tile.row0 * tile.cols as u64;
        if !bs.is_power_of_two() || !(8..=4096).contains(&bs) || !k0.is_multiple_of(bs as u64) {
            return Ok(None);
        }
        let step = block_row_step(tile.cols as u64, bs as u64);
        if step * tile.cols as u64 >= 1 << 30 {
            return Ok(None);
        }
        if len == 0 {
            return Ok(Some(true));
        }
        let Some(spec) = self.kernel_for(tile) else {
            return Ok(None);
        };
        self.run_locked(tile, &spec, Dest::Quant { codes, absmax }, Some(q))
            .map(Some)
    }

    fn gpu_times(&self) -> Option<GpuTimes> {
        self.gpu.lock().ok().map(|g| g.times)
    }

    fn host_pool(&self) -> Option<&rayon::ThreadPool> {
        self.cpu.host_pool()
    }

    fn pin_output(&self, buf: &mut [u8]) -> Option<PinRelease> {
        if buf.is_empty() {
            return None;
        }
        let gpu = self.gpu.lock().ok()?;
        CurrentContext::set_current(&gpu.ctx).ok()?;
        // A handle of its own on the primary context keeps it alive until the release has run.
        let ctx = Device::get_device(0).and_then(Context::new).ok()?;
        let start = buf.as_mut_ptr() as usize;
        // SAFETY: FFI. `buf` is live memory of `buf.len()` bytes; it stays registered until the
        // release below, which its owner runs before freeing it.
        let rc = unsafe { cu::cuMemHostRegister_v2(start as *mut c_void, buf.len(), 0) };
        if rc != cu::cudaError_enum::CUDA_SUCCESS {
            return None;
        }
        let pins = Arc::clone(&self.pins);
        if let Ok(mut p) = pins.lock() {
            p.push((start, start + buf.len()));
        }
        Some(Box::new(move || {
            if let Ok(mut p) = pins.lock() {
                p.retain(|&(s, _)| s != start);
            }
            let _ = CurrentContext::set_current(&ctx);
            // SAFETY: FFI; `start` was registered above and its memory is not freed yet.
            let _ = unsafe { cu::cuMemHostUnregister(start as *mut c_void) };
        }))
    }
}

/// Kernel timings on device-resident data, for `examples/gpu-bench.rs` and BENCHMARKS.md.
pub mod bench {
    use super::*;
    use cust::memory::CopyDestination;

    /// One timed configuration.
    #[derive(Debug, Clone)]
    pub struct KernelTiming {
        /// Output rows.
        pub rows: usize,
        /// Columns.
        pub cols: usize,
        /// LoRA rank.
        pub r: usize,
        /// Median milliseconds of one launch timed alone (events around it, so the CPU's launch
        /// latency, a few microseconds, is inside the figure).
        pub ms: f64,
        /// Median milliseconds per launch over batches of [`BATCH`] back-to-back launches: the
        /// GPU's own time per launch, without the CPU's launch latency (inputs that fit in L2
        /// stay there between launches).
        pub ms_b2b: f64,
        /// Median milliseconds of one launch queued behind an L2 flush: the GPU's own time from
        /// a cold L2, without the CPU's launch latency.
        pub ms_cold: f64,
        /// Bytes the launch must move: codes + absmax + B read, output written (A is L2-resident
        /// and counted once).
        pub bytes: u64,
        /// FNV-1a hash of the output bytes (equal hashes across kernels: equal outputs).
        pub hash: u64,
    }

    /// Launches per batch for the back-to-back timings.
    pub const BATCH: usize = 10;

    /// Bytes read between cold timings: several times the L2 of an H100 or H200 (50 MiB).
    const FLUSH_BYTES: usize = 256 << 20;

    /// How a time is taken.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        /// One call between two events on an idle stream: the CPU's launch latency is inside.
        Alone,
        /// [`BATCH`] calls between two events, per call: the GPU's queue stays full.
        BackToBack,
        /// One call between two events queued behind `kernels/l2_flush.ptx` reading
        /// [`FLUSH_BYTES`]: L2 holds none of the call's inputs and no dirty lines, and the flush
        /// keeps the GPU busy while the CPU queues the events and the call.
        Cold,
    }

    /// Device-to-device copy bandwidth in GB/s (bytes read plus written), per [`Mode`].
    #[derive(Debug, Clone, Copy)]
    pub struct CopyRates {
        /// [`Mode::Alone`].
        pub alone: f64,
        /// [`Mode::BackToBack`].
        pub b2b: f64,
        /// [`Mode::Cold`].
        pub cold: f64,
    }

    impl KernelTiming {
        /// GB/s for a time of `ms` milliseconds.
        pub fn gbs_at(&self, ms: f64) -> f64 {
            self.bytes as f64 / (ms * 1e-3) / 1e9
        }
        /// TFLOP/s for a time of `ms` milliseconds.
        pub fn tflops_at(&self, ms: f64) -> f64 {
            2.0 * self.r as f64 * (self.rows * self.cols) as f64 / (ms * 1e-3) / 1e12
        }
    }

    /// A context, stream and the modules, for timing.
    pub struct Bench {
        stream: Stream,
        flush: DeviceBuffer<u8>,
        flush_module: Module,
        module: Module,
        fma: Module,
        traffic: Module,
        /// SMs of the device (asked once).
        sms: u32,
        /// The GPU's name.
        pub device: String,
        /// What the merge kernels were loaded from (`sm_90 cubin`, `PTX`).
        pub image: String,
        _ctx: Context,
    }

    impl Bench {
        /// Queues `l2_flush` over the flush buffer (filled with one repeated word by `new`).
        fn flush_l2(&self) -> Result<()> {
            let func = self.flush_module.get_function("l2_flush").map_err(cu_err("l2_flush"))?;
            let p_buf = self.flush.as_device_ptr().as_raw();
            let p_n16 = (self.flush.len() / 16) as u64;
            // Never written (see the kernel); any device word would do.
            let p_out = p_buf;
            let p_never = 1u32;
            let args = [
                &p_buf as *const u64 as *mut c_void,
                &p_n16 as *const u64 as *mut c_void,
                &p_out as *const u64 as *mut c_void,
                &p_never as *const u32 as *mut c_void,
            ];
            // SAFETY: FFI; arguments match `l2_flush(u64, u64, u64, u32)`; the kernel reads
            // `p_n16` 16-byte pieces of the flush buffer and writes nothing.
            unsafe { self.stream.launch(&func, self.sms * 8, 256u32, 0, &args) }.map_err(cu_err("launch l2_flush"))
        }

        /// Median over `iters` of the time per call of `f` in milliseconds, taken as `mode` says.
        fn time_ms(&self, iters: usize, mode: Mode, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
            let stream = &self.stream;
            let batch = if mode == Mode::BackToBack { BATCH } else { 1 };
            let mut v = Vec::with_capacity(iters);
            let start = Event::new(EventFlags::DEFAULT).map_err(cu_err("cuEventCreate"))?;
            let stop = Event::new(EventFlags::DEFAULT).map_err(cu_err("cuEventCreate"))?;
            for _ in 0..iters {
                if mode == Mode::Cold {
                    self.flush_l2()?;
                }
                start.record(stream).map_err(cu_err("cuEventRecord"))?;
                for _ in 0..batch {
                    f()?;
                }
                stop.record(stream).map_err(cu_err("cuEventRecord"))?;
                stop.synchronize().map_err(cu_err("cuEventSynchronize"))?;
                v.push(stop.elapsed_time_f32(&start).map_err(cu_err("cuEventElapsedTime"))? as f64 / batch as f64);
            }
            v.sort_by(f64::total_cmp);
            Ok(v[v.len() / 2])
        }
    }

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let mut v = vec![0u8; n];
        for c in v.chunks_mut(8) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let b = s.to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
        v
    }

    fn random_f32(n: usize, seed: u64, scale: f32) -> Vec<u8> {
        random_bytes(n * 4, seed)
            .chunks_exact(4)
            .flat_map(|c| {
                let u = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                (((u >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * scale).to_le_bytes()
            })
            .collect()
    }

    fn upload(bytes: &[u8]) -> Result<DeviceBuffer<u8>> {
        DeviceBuffer::from_slice(bytes).map_err(cu_err("cuMemAlloc + copy"))
    }

    impl Bench {
        /// Opens device 0.
        pub fn new() -> Result<Self> {
            let (ctx, device) = open_device()?;
            // The harness takes the hook from the environment itself.
            let (module, image) = load_merge_module(std::env::var_os("LORAWELD_CUDA_JIT").is_some_and(|v| v != "0"))?;
            let fma = Module::from_ptx(FMA_PTX, &[]).map_err(cu_err("load fma_rate.ptx"))?;
            let stream = Stream::new(StreamFlags::NON_BLOCKING, None).map_err(cu_err("cuStreamCreate"))?;
            // SAFETY: plain bytes, filled right below.
            let flush = unsafe { DeviceBuffer::<u8>::uninitialized(FLUSH_BYTES) }.map_err(cu_err("cuMemAlloc"))?;
            // One repeated word (l2_flush relies on it), so the flush's xor is always 0.
            // SAFETY: FFI; `flush` holds FLUSH_BYTES / 4 u32 words.
            let rc = unsafe { cu::cuMemsetD32_v2(flush.as_device_ptr().as_raw(), 0x5A5A_5A5A, FLUSH_BYTES / 4) };
            if rc != cu::cudaError_enum::CUDA_SUCCESS {
                return Err(Error::Cuda {
                    op: "cuMemsetD32".into(),
                    what: result_name(rc),
                });
            }
            let flush_module = Module::from_ptx(FLUSH_PTX, &[]).map_err(cu_err("load l2_flush.ptx"))?;
            let traffic = Module::from_ptx(TRAFFIC_PTX, &[]).map_err(cu_err("load traffic.ptx"))?;
            Ok(Bench {
                stream,
                flush,
                flush_module,
                module,
                fma,
                traffic,
                sms: sm_count()?,
                device,
                image,
                _ctx: ctx,
            })
        }

        /// Device-to-device copy bandwidth in GB/s (bytes read plus written), timed each way.
        pub fn copy_rates(&self, bytes: usize) -> Result<CopyRates> {
            // SAFETY: plain bytes; the copy's source content does not matter for timing.
            let src = unsafe { DeviceBuffer::<u8>::uninitialized(bytes) }.map_err(cu_err("cuMemAlloc"))?;
            // SAFETY: as above.
            let dst = unsafe { DeviceBuffer::<u8>::uninitialized(bytes) }.map_err(cu_err("cuMemAlloc"))?;
            let (s, d) = (src.as_device_ptr().as_raw(), dst.as_device_ptr().as_raw());
            let stream = self.stream.as_inner();
            let copy = || {
                // SAFETY: FFI; both buffers hold `bytes` bytes and outlive the synchronized copy.
                let rc = unsafe { cu::cuMemcpyDtoDAsync_v2(d, s, bytes, stream) };
                if rc == cu::cudaError_enum::CUDA_SUCCESS {
                    Ok(())
                } else {
                    Err(Error::Cuda {
                        op: "cuMemcpyDtoDAsync".into(),
                        what: result_name(rc),
                    })
                }
            };
            self.time_ms(3, Mode::Alone, copy)?;
            let gbs = |ms: f64| 2.0 * bytes as f64 / (ms * 1e-3) / 1e9;
            Ok(CopyRates {
                alone: gbs(self.time_ms(20, Mode::Alone, copy)?),
                b2b: gbs(self.time_ms(20, Mode::BackToBack, copy)?),
                cold: gbs(self.time_ms(20, Mode::Cold, copy)?),
            })
        }

        /// Plain f32 FMA rate (TFLOP/s) of the probe `entry` of `kernels/fma_rate.ptx`
        /// (`fma_rate`: 128 FMAs per loop trip; `fma_rate32`: 32, the probe used before): 8
        /// independent chains per thread, no memory, two waves of 16 blocks of 256 per SM.
        pub fn fma_tflops(&self, entry: &str) -> Result<f64> {
            let per_trip = if entry == "fma_rate32" { 32 } else { 128 };
            let (blocks, threads) = (self.sms * 16, 256u32);
            // About 2.2 TFLOP on an H100 whichever the probe: 30-40 ms.
            let iters = 4096 * 32 / per_trip;
            let ms = self.fma_ms(entry, blocks, threads, iters, 10, Mode::Alone)?;
            Ok(2.0 * (per_trip * iters) as f64 * (blocks * threads) as f64 / (ms * 1e-3) / 1e12)
        }

        /// The same probe (`fma_rate`) doing about `flop` FLOP on `blocks` blocks of 128 threads
        /// (the lean kernel's grid), timed cold: what the card's FMA rate comes to for that much
        /// work in one launch (launch, ramp and tail included), the FMA counterpart of a copy of
        /// as many bytes. Returns (TFLOP/s, the FLOP actually done).
        pub fn fma_same_work(&self, flop: f64, blocks: u32) -> Result<(f64, f64)> {
            let threads = 128u32;
            let per_launch_trip = 256.0 * (blocks * threads) as f64;
            let iters = (flop / per_launch_trip).round().max(1.0) as u32;
            let done = per_launch_trip * iters as f64;
            let ms = self.fma_ms("fma_rate", blocks, threads, iters, 20, Mode::Cold)?;
            Ok((done / (ms * 1e-3) / 1e12, done))
        }

        fn fma_ms(&self, entry: &str, blocks: u32, threads: u32, iters: u32, n: usize, mode: Mode) -> Result<f64> {
            let func = self.fma.get_function(entry).map_err(cu_err(entry.to_string()))?;
            // SAFETY: plain bytes, written by the kernel.
            let out = unsafe { DeviceBuffer::<u8>::uninitialized((blocks * threads) as usize * 4) }
                .map_err(cu_err("cuMemAlloc"))?;
            let p_out = out.as_device_ptr().as_raw();
            let p_iters = iters;
            let p_x = 0.999f32;
            let run = || {
                let args = [
                    &p_out as *const u64 as *mut c_void,
                    &p_iters as *const u32 as *mut c_void,
                    &p_x as *const f32 as *mut c_void,
                ];
                // SAFETY: FFI; arguments match `fma_rate*(u64, u32, f32)`, `out` holds one f32 per thread.
                unsafe { self.stream.launch(&func, blocks, threads, 0, &args) }.map_err(cu_err("launch fma_rate"))
            };
            self.time_ms(2, Mode::Alone, run)?;
            self.time_ms(n, mode, run)
        }

        /// The floor under a kernel that reads `read` and writes `write` bytes (`kernels/traffic.ptx`,
        /// which moves them and does nothing else), timed cold like the merge: the fastest median
        /// over a few grids, in ms, with that grid's blocks of 256 threads. `read = write = 0` is
        /// an empty launch.
        pub fn traffic_floor(&self, read: usize, write: usize) -> Result<(f64, u32)> {
            let func = self.traffic.get_function("traffic").map_err(cu_err("traffic"))?;
            // SAFETY: plain bytes; what the source holds does not matter for timing.
            let src = unsafe { DeviceBuffer::<u8>::uninitialized(read.max(16)) }.map_err(cu_err("cuMemAlloc"))?;
            // SAFETY: plain bytes, written by the kernel.
            let dst = unsafe { DeviceBuffer::<u8>::uninitialized(write.max(16)) }.map_err(cu_err("cuMemAlloc"))?;
            let p_src = src.as_device_ptr().as_raw();
            let p_dst = dst.as_device_ptr().as_raw();
            let (p_nr16, p_nw16) = ((read / 16) as u64, (write / 16) as u64);
            let mut best = (f64::INFINITY, 0u32);
            let sms = self.sms;
            for blocks in [sms, sms * 4, sms * 8, sms * 16] {
                let run = || {
                    let args = [
                        &p_src as *const u64 as *mut c_void,
                        &p_dst as *const u64 as *mut c_void,
                        &p_nr16 as *const u64 as *mut c_void,
                        &p_nw16 as *const u64 as *mut c_void,
                    ];
                    // SAFETY: FFI; arguments match `traffic(u64, u64, u64, u64)`; the kernel reads
                    // `p_nr16` and writes `p_nw16` 16-byte pieces of buffers that hold them.
                    unsafe { self.stream.launch(&func, blocks, 256u32, 0, &args) }.map_err(cu_err("launch traffic"))
                };
                self.time_ms(2, Mode::Alone, run)?;
                let ms = self.time_ms(20, Mode::Cold, run)?;
                if ms < best.0 {
                    best = (ms, blocks);
                }
            }
            Ok(best)
        }

        /// Blocks in the built-in `lora_merge_q64n_bf16`'s grid for `rows x cols`.
        pub fn lean_blocks(&self, rows: usize, cols: usize) -> Result<u32> {
            let func = self
                .module
                .get_function("lora_merge_q64n_bf16")
                .map_err(cu_err("lora_merge_q64n_bf16"))?;
            let (grid, _) = launch_shape("lora_merge_q64n_bf16", rows, cols, resident_blocks(&func)?);
            Ok(grid.x)
        }

        /// The built-in `lora_merge.ptx` module.
        pub fn module(&self) -> &Module {
            &self.module
        }

        /// Loads another build of `lora_merge.ptx` (a variant under test), for [`Bench::nf4_merge_in`].
        pub fn load_variant(&self, ptx: &str) -> Result<Module> {
            Module::from_ptx(ptx, &[]).map_err(cu_err("load variant ptx"))
        }

        /// Times the kernel the backend would launch (`lora_merge_q64n_bf16`) on an NF4
        /// double-quant weight `[rows, cols]` (blocksize 64, bf16 quant state) with a rank-`r` f32
        /// update, all inputs resident on the device.
        pub fn nf4_merge(&self, rows: usize, cols: usize, r: usize, iters: usize) -> Result<KernelTiming> {
            self.nf4_merge_in(&self.module, "lora_merge_q64n_bf16", rows, cols, r, iters)
        }

        /// As [`Bench::nf4_merge`], with the entry point `name` of `module`.
        pub fn nf4_merge_in(
            &self,
            module: &Module,
            name: &str,
            rows: usize,
            cols: usize,
            r: usize,
            iters: usize,
        ) -> Result<KernelTiming> {
            self.merge_in(module, name, false, rows, cols, r, iters)
        }

        /// Times the kernel the backend launches for a 16-bit base (`lora_merge_bf16`): a bf16
        /// weight `[rows, cols]` (finite values) plus a rank-`r` f32 update, to bf16, all inputs
        /// resident on the device.
        pub fn bf16_merge(&self, rows: usize, cols: usize, r: usize, iters: usize) -> Result<KernelTiming> {
            self.merge_in(&self.module, "lora_merge_bf16", true, rows, cols, r, iters)
        }

        /// One timing of entry point `name`: an NF4 double-quant base (blocksize 64, bf16 quant
        /// state), or with `bf16_base` a bf16 one; a rank-`r` f32 update; bf16 output.
        #[expect(clippy::too_many_arguments)]
        fn merge_in(
            &self,
            module: &Module,
            name: &str,
            bf16_base: bool,
            rows: usize,
            cols: usize,
            r: usize,
            iters: usize,
        ) -> Result<KernelTiming> {
            let n = rows * cols;
            let nb = n.div_ceil(64);
            let (base_bytes, flags) = if bf16_base {
                // The upper halves of finite f32: finite bf16, so no row takes the out-of-line
                // not-finite path.
                let f = random_f32(n, 1, 2.0);
                let bf: Vec<u8> = f.chunks_exact(4).flat_map(|c| [c[2], c[3]]).collect();
                (bf, 1 | 32 | (2 << 6)) // bf16 base, LoRA, f32 delta
            } else {
                (random_bytes(n.div_ceil(2), 1), 4 | 32 | (2 << 6)) // nf4 base, nested, bf16 quant dtype, LoRA, f32 delta
            };
            let base = upload(&base_bytes)?;
            let absmax = upload(&random_bytes(nb, 2))?;
            let nabs = upload(&random_f32(nb.div_ceil(256), 3, 0.1))?;
            let nmap = upload(&random_f32(256, 4, 2.0))?;
            let qmap: Vec<u8> = crate::format::bnb::NF4.iter().flat_map(|x| x.to_le_bytes()).collect();
            let qmap = upload(&qmap)?;
            let a = upload(&random_f32(r * cols, 5, 0.02))?;
            // Bt [r, rows] (rows is a multiple of 8 here, so no padding).
            let b = upload(&random_f32(rows * r, 6, 0.02))?;
            let flag = upload(&[0u8; 16])?;
            // SAFETY: plain bytes, written by the kernel.
            let out = unsafe { DeviceBuffer::<u8>::uninitialized(n * 2) }.map_err(cu_err("cuMemAlloc"))?;
            let func = module.get_function(name).map_err(cu_err(name.to_string()))?;
            let ptr = |b: &DeviceBuffer<u8>| b.as_device_ptr().as_raw();
            let ka = KernelArgs {
                out: ptr(&out),
                base: ptr(&base),
                absmax: ptr(&absmax),
                nabs: ptr(&nabs),
                nmap: ptr(&nmap),
                qmap: ptr(&qmap),
                a: ptr(&a),
                b: ptr(&b),
                flag: ptr(&flag),
                k0: 0,
                blk0: 0,
                nblk0: 0,
                rows: rows as u32,
                cols: cols as u32,
                r: r as u32,
                scale: 2.0,
                offset: 0.03,
                flags,
                log2bs: 6,
                log2nbs: 8,
            };
            let (grid, block) = launch_shape(name, rows, cols, resident_blocks(&func)?);
            let run = || {
                let args = ka.ptrs();
                // SAFETY: FFI; arguments in the kernel's order and types; buffers sized for the shape.
                unsafe { self.stream.launch(&func, grid, block, 0, &args) }.map_err(cu_err(format!("launch {name}")))
            };
            self.time_ms(3, Mode::Alone, run)?;
            let ms = self.time_ms(iters, Mode::Alone, run)?;
            let ms_b2b = self.time_ms(iters, Mode::BackToBack, run)?;
            let ms_cold = self.time_ms(iters, Mode::Cold, run)?;
            let mut host = vec![0u8; n * 2];
            out.copy_to(&mut host[..]).map_err(cu_err("copy output"))?;
            let hash = host.iter().fold(0xcbf29ce484222325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x100000001b3)
            });
            let quant_state = if bf16_base { 0 } else { nb };
            let bytes = (base_bytes.len() + quant_state + rows * r * 4 + r * cols * 4 + n * 2) as u64;
            Ok(KernelTiming {
                rows,
                cols,
                r,
                ms,
                ms_b2b,
                ms_cold,
                bytes,
                hash,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cubins, launch_shape, pick_cubin, KernelSpec, LEAN_KERNELS};
    use crate::compute::{BaseRows, LoraRows, MergeTile};
    use crate::format::bnb::{AbsmaxRef, QuantView, NF4};
    use crate::format::dtype::FloatDtype;

    /// The entry point the launcher picks for a bnb 4-bit tile with an r = 4 LoRA (`nested`:
    /// double-quant absmax).
    fn pick(blocksize: u64, cols: usize, qdt: FloatDtype, delta: FloatDtype, out: FloatDtype, nested: bool) -> String {
        let qmap: Vec<u8> = NF4.iter().flat_map(|x| x.to_le_bytes()).collect();
        let nmap = vec![0u8; 1024];
        let (a, b) = (vec![0f32; 4 * cols], vec![0f32; 4 * 2]);
        let absmax = if nested {
            AbsmaxRef::Nested {
                codes: &[],
                nested_absmax: &[],
                nested_map: &nmap,
                nested_blocksize: 256,
                offset: 0.0,
            }
        } else {
            AbsmaxRef::Plain(&[])
        };
        let tile = MergeTile {
            row0: 0,
            rows: 2,
            cols,
            base: BaseRows::Bnb(QuantView {
                codes: &[],
                absmax,
                quant_map: &qmap,
                blocksize,
                dtype: qdt,
            }),
            lora: Some(LoraRows {
                a: &a,
                b: &b,
                r: 4,
                scale: 2.0,
                delta_dtype: delta,
            }),
            out_dtype: out,
        };
        KernelSpec::of(&tile).map(|s| s.name).unwrap_or_default()
    }

    #[test]
    fn the_common_qlora_tile_gets_the_lean_kernel_and_the_rest_the_general_ones() {
        use FloatDtype::{Bf16, F16, F32};
        assert_eq!(pick(64, 4096, Bf16, F32, Bf16, false), "lora_merge_q64_bf16");
        assert_eq!(pick(64, 4096, Bf16, Bf16, Bf16, false), "lora_merge_q64_bf16");
        assert_eq!(pick(64, 192, F16, F16, F16, false), "lora_merge_q64_f16");
        // double quant: the nested lean kernel
        assert_eq!(pick(64, 4096, Bf16, F32, Bf16, true), "lora_merge_q64n_bf16");
        assert_eq!(pick(64, 192, F16, F16, F16, true), "lora_merge_q64n_f16");
        assert_eq!(pick(128, 4096, Bf16, F32, Bf16, true), "lora_merge_bf16");
        // blocksize, width, dtypes outside the lean kernel's case
        assert_eq!(pick(128, 4096, Bf16, F32, Bf16, false), "lora_merge_bf16");
        assert_eq!(pick(64, 4104, Bf16, F32, Bf16, false), "lora_merge_bf16");
        assert_eq!(pick(64, 4096, F32, F32, Bf16, false), "lora_merge_bf16");
        assert_eq!(pick(64, 4096, Bf16, F16, Bf16, false), "lora_merge_bf16");
        assert_eq!(pick(64, 4096, F32, F32, F32, false), "lora_merge_f32");
        assert_eq!(pick(64, 4100, Bf16, F32, Bf16, false), "lora_merge_any_bf16");
        // every lean pick is one the backend sized a grid for at start
        for (q, o, n) in [
            (Bf16, Bf16, false),
            (F16, F16, false),
            (Bf16, Bf16, true),
            (F16, F16, true),
        ] {
            assert!(LEAN_KERNELS.contains(&pick(64, 4096, q, F32, o, n).as_str()));
        }
    }

    #[test]
    fn launch_shapes() {
        let dims = |name: &str, rows, cols, resident| {
            let (g, b) = launch_shape(name, rows, cols, resident);
            ((g.x, g.y), (b.x, b.y))
        };
        // lean: as many blocks as fit at once (528 on an H100), never more than the 128 x 64 tiles
        assert_eq!(dims("lora_merge_q64n_bf16", 8192, 8192, 528), ((528, 1), (32, 4)));
        assert_eq!(dims("lora_merge_q64_f16", 100, 256, 528), ((4, 1), (32, 4)));
        assert_eq!(dims("lora_merge_q64_bf16", 64, 64, 0), ((1, 1), (32, 4)));
        // general fast path: one block per tile
        assert_eq!(dims("lora_merge_bf16", 100, 300, 0), ((3, 2), (32, 4)));
        // any shape: one element per thread, 256 per block
        assert_eq!(dims("lora_merge_any_f32", 3, 7, 0), ((1, 1), (256, 1)));
    }

    #[test]
    fn a_gpu_runs_the_cubin_of_its_major_with_the_highest_minor_not_above_its_own() {
        let built = [80, 90];
        assert_eq!(pick_cubin(9, 0, &built), Some(1)); // H100, H200
        assert_eq!(pick_cubin(8, 0, &built), Some(0)); // A100
        assert_eq!(pick_cubin(8, 6, &built), Some(0)); // RTX 3090
        assert_eq!(pick_cubin(8, 9, &built), Some(0)); // RTX 4090, L40S
        assert_eq!(pick_cubin(8, 6, &[80, 86]), Some(1));
        assert_eq!(pick_cubin(8, 0, &[86]), None); // a later minor's cubin does not run on 8.0
        assert_eq!(pick_cubin(10, 0, &built), None); // Blackwell: the PTX
        assert_eq!(pick_cubin(12, 0, &built), None);
        assert_eq!(pick_cubin(7, 5, &built), None);
        assert_eq!(pick_cubin(9, 0, &[]), None); // built without ptxas
    }

    /// The cubins build.rs embedded are CUDA ELF files for the arch they claim, holding every
    /// entry point the launcher asks for. A build with `LORAWELD_PTXAS` set (CI's) must have both.
    #[test]
    fn embedded_cubins_are_elf_for_their_arch_with_every_entry_point() {
        let merge: Vec<&str> = LEAN_KERNELS
            .iter()
            .copied()
            .chain([
                "lora_merge_bf16",
                "lora_merge_f16",
                "lora_merge_f32",
                "lora_merge_any_bf16",
                "lora_merge_any_f16",
                "lora_merge_any_f32",
            ])
            .collect();
        for (file, built, names) in [
            ("lora_merge", cubins::CUBINS, merge),
            ("quant4", cubins::QUANT4_CUBINS, vec!["quant4"]),
        ] {
            if option_env!("LORAWELD_PTXAS").is_some_and(|p| p != "none") {
                let archs: Vec<u32> = built.iter().map(|&(sm, _)| sm).collect();
                assert_eq!(
                    archs,
                    [80, 90],
                    "LORAWELD_PTXAS was set, so build.rs must embed both cubins of {file}"
                );
            }
            for &(sm, bytes) in built {
                assert_eq!(&bytes[..4], b"\x7fELF", "{file} sm_{sm}");
                let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
                assert_eq!(machine, 0xBE, "{file} sm_{sm}: e_machine is EM_CUDA");
                let flags = u32::from_le_bytes([bytes[48], bytes[49], bytes[50], bytes[51]]);
                assert_eq!((flags >> 8) & 0xFF, sm, "{file} sm_{sm}: the arch in e_flags");
                for name in &names {
                    let found = bytes
                        .windows(name.len() + 1)
                        .any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0);
                    assert!(found, "{file} sm_{sm} cubin has no {name}");
                }
            }
        }
    }
}
