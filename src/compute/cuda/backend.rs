//! The GPU merge backend: [`CudaBackend`], the [`Backend`] the pipeline drives. It opens the
//! device, loads the kernels, sizes the staging from the memory budget, and runs each tile
//! through the chunk launcher, or on the CPU when no kernel covers it. The one `unsafe` block
//! here is a driver call (FFI) that pins a caller's buffer; it says why it is sound.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cust::context::{Context, CurrentContext};
use cust::device::Device;
use cust::sys as cu;

use super::device::{cu_err, open_device};
use super::kernels::{resident_blocks, KernelSpec, LEAN_KERNELS};
use super::launch::{ChunkArgs, Dest, Gpu, QuantChunk};
use super::kquant::KQUANTS;
use super::module::{load_kquant_module, load_merge_module, load_quant_module};
use super::slots::{event, Clock, Slot};
use crate::compute::cpu::CpuBackend;
use crate::compute::{Backend, BaseRows, GpuTimes, MergeTile, PinRelease, QuantSpec};
use crate::error::{Error, Result};
use crate::format::bnb::block_row_step;
use crate::format::bnb::QuantType;
use crate::format::gguf::GgmlType;
use crate::sys::MemoryBudget;

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
        let (kquant, _) = load_kquant_module(jit).map_err(|e| none(e.to_string()))?;
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
                kquant,
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
            Some(l) => gpu.upload_a(l.a)?,
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

    fn device_kquants(&self) -> &'static [GgmlType] {
        KQUANTS
    }

    fn kquant(&self, ty: GgmlType, half: &[u8], f16: bool, out: &mut [u8]) -> Result<()> {
        if half.is_empty() {
            return Ok(());
        }
        let mut gpu = self
            .gpu
            .lock()
            .map_err(|_| Error::Internal("the cuda state was poisoned by a panic".into()))?;
        CurrentContext::set_current(&gpu.ctx).map_err(cu_err("cuCtxSetCurrent"))?;
        let t = Instant::now();
        let res = gpu.kquant(ty, half, f16, out, &self.copier);
        if res.is_err() {
            gpu.abandon();
        }
        gpu.times.kquant_s += t.elapsed().as_secs_f64();
        res
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
