//! Kernel timings on device-resident data, for `examples/gpu-bench.rs` and BENCHMARKS.md.
//! Compiled only with the `internals` feature: no part of the library's own build.

use std::ffi::c_void;

use cust::context::Context;
use cust::event::{Event, EventFlags};
use cust::memory::{CopyDestination, DeviceBuffer};
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};
use cust::sys as cu;

use super::device::{cu_err, open_device, result_name, sm_count};
use super::kernels::{launch_shape, resident_blocks, KernelArgs};
use super::module::load_merge_module;
use crate::error::{Error, Result};

/// The FMA-rate probe.
const FMA_PTX: &str = include_str!("../../../kernels/fma_rate.ptx");
/// The L2 flush before a cold timing.
const FLUSH_PTX: &str = include_str!("../../../kernels/l2_flush.ptx");
/// The bytes-only floor kernel.
const TRAFFIC_PTX: &str = include_str!("../../../kernels/traffic.ptx");

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
        let k = MergeKernel {
            module,
            name,
            bf16_base: false,
        };
        self.merge_in(k, MergeShape { rows, cols, r }, iters)
    }

    /// Times the kernel the backend launches for a 16-bit base (`lora_merge_bf16`): a bf16
    /// weight `[rows, cols]` (finite values) plus a rank-`r` f32 update, to bf16, all inputs
    /// resident on the device.
    pub fn bf16_merge(&self, rows: usize, cols: usize, r: usize, iters: usize) -> Result<KernelTiming> {
        let k = MergeKernel {
            module: &self.module,
            name: "lora_merge_bf16",
            bf16_base: true,
        };
        self.merge_in(k, MergeShape { rows, cols, r }, iters)
    }

    /// One timing of kernel `k` on shape `s`: a rank-`r` f32 update, bf16 output.
    fn merge_in(&self, k: MergeKernel<'_>, s: MergeShape, iters: usize) -> Result<KernelTiming> {
        let MergeShape { rows, cols, r } = s;
        let name = k.name;
        let n = rows * cols;
        let nb = n.div_ceil(64);
        let inputs = MergeInputs::upload(k.bf16_base, s)?;
        let func = k.module.get_function(name).map_err(cu_err(name.to_string()))?;
        let ka = inputs.args(s);
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
        inputs.out.copy_to(&mut host[..]).map_err(cu_err("copy output"))?;
        let hash = host.iter().fold(0xcbf29ce484222325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let quant_state = if k.bf16_base { 0 } else { nb };
        let bytes = (inputs.base_len + quant_state + rows * r * 4 + r * cols * 4 + n * 2) as u64;
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

/// The kernel a timing launches: entry point `name` of `module`, on an NF4 double-quant base
/// (blocksize 64, bf16 quant state) or, with `bf16_base`, a bf16 one.
#[derive(Clone, Copy)]
struct MergeKernel<'m> {
    module: &'m Module,
    name: &'m str,
    bf16_base: bool,
}

/// What a timing merges: a weight `[rows, cols]` and a rank-`r` update.
#[derive(Clone, Copy)]
struct MergeShape {
    rows: usize,
    cols: usize,
    r: usize,
}

/// A timing's inputs, resident on the device, and its output buffer.
struct MergeInputs {
    base: DeviceBuffer<u8>,
    absmax: DeviceBuffer<u8>,
    nabs: DeviceBuffer<u8>,
    nmap: DeviceBuffer<u8>,
    qmap: DeviceBuffer<u8>,
    a: DeviceBuffer<u8>,
    b: DeviceBuffer<u8>,
    flag: DeviceBuffer<u8>,
    out: DeviceBuffer<u8>,
    /// Bytes of the base: 4-bit codes, or bf16 values.
    base_len: usize,
    /// The kernel's `p_flags` word for this base.
    flags: u32,
}

impl MergeInputs {
    /// Random inputs of shape `s` (an NF4 double-quant base, or with `bf16_base` a bf16 one),
    /// uploaded.
    fn upload(bf16_base: bool, s: MergeShape) -> Result<Self> {
        let MergeShape { rows, cols, r } = s;
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
        Ok(MergeInputs {
            base,
            absmax,
            nabs,
            nmap,
            qmap,
            a,
            b,
            flag,
            out,
            base_len: base_bytes.len(),
            flags,
        })
    }

    /// The merge kernels' arguments for these buffers and shape `s`.
    fn args(&self, s: MergeShape) -> KernelArgs {
        let ptr = |b: &DeviceBuffer<u8>| b.as_device_ptr().as_raw();
        KernelArgs {
            out: ptr(&self.out),
            base: ptr(&self.base),
            absmax: ptr(&self.absmax),
            nabs: ptr(&self.nabs),
            nmap: ptr(&self.nmap),
            qmap: ptr(&self.qmap),
            a: ptr(&self.a),
            b: ptr(&self.b),
            flag: ptr(&self.flag),
            k0: 0,
            blk0: 0,
            nblk0: 0,
            rows: s.rows as u32,
            cols: s.cols as u32,
            r: s.r as u32,
            scale: 2.0,
            offset: 0.03,
            flags: self.flags,
            log2bs: 6,
            log2nbs: 8,
        }
    }
}
