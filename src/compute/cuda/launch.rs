//! The row-chunk launcher. A tile's row chunks alternate between the two [`Slot`]s; each chunk
//! is planned ([`ChunkPlan`]: what it uploads and where), staged into pinned memory, and its
//! upload, kernels and download are queued on its slot's stream; [`Gpu::drain`] waits for it and
//! copies its result out. Every `unsafe` block here is a driver call (FFI) or an offset into a
//! caller's buffer; each says why it is sound.

use std::ffi::c_void;
use std::time::Instant;

use cust::context::{Context, CurrentContext};
use cust::function::Function;
use cust::memory::{DeviceBuffer, LockedBuffer};
use cust::module::Module;
use cust::sys as cu;

use super::device::{cu_err, result_name};
use super::kernels::{dt_code, launch_shape, quant_shape, KernelArgs, KernelSpec, QuantArgs, LEAN_KERNELS};
use super::slots::{
    dev_buf, f32_bytes_into, host_buf, ms_between, par_copy, stage_bt, Clock, Pending, QuantPending, Slot,
};
use crate::compute::{BaseRows, GpuTimes, MergeTile};
use crate::error::{Error, Result};
use crate::format::bnb::AbsmaxRef;

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

/// A chunk's requantization by `kernels/quant4.ptx`, after its merge.
#[derive(Debug, Clone, Copy)]
pub(super) struct QuantChunk {
    /// 0 NF4, 1 FP4 (the kernel's `p_qt`).
    pub(super) qt: u32,
    pub(super) log2bs: u32,
    /// The chunk ends with the weight's partial last block.
    pub(super) partial: bool,
    /// Codes wanted, not only the absmax values.
    pub(super) codes: bool,
}

/// Where a tile's results go.
pub(super) enum Dest<'o> {
    /// The merged values: `tile.out_len()` bytes.
    Values(&'o mut [u8]),
    /// The requantized tile: its packed codes (when asked for) and its block absmax values.
    Quant {
        codes: Option<&'o mut [u8]>,
        absmax: &'o mut [f32],
    },
}

/// Everything that lives in the CUDA context. Field order is drop order: the context goes last.
pub(super) struct Gpu {
    pub(super) slots: [Slot; 2],
    pub(super) host_a: Option<LockedBuffer<u8>>,
    pub(super) dev_a: Option<DeviceBuffer<u8>>,
    pub(super) module: Module,
    /// `kernels/quant4.ptx`.
    pub(super) quant: Module,
    /// `kernels/kquant.ptx`.
    pub(super) kquant: Module,
    /// [`resident_blocks`](super::kernels::resident_blocks) of each of [`LEAN_KERNELS`], in that order.
    pub(super) lean_resident: [u32; 4],
    /// Where the time went so far.
    pub(super) times: GpuTimes,
    pub(super) clock: Clock,
    pub(super) ctx: Context,
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
pub(super) struct ChunkArgs<'t, 'a> {
    pub(super) tile: &'t MergeTile<'a>,
    pub(super) spec: &'t KernelSpec,
    pub(super) row: usize,
    pub(super) n_rows: usize,
    pub(super) a_ptr: u64,
    /// The caller's output, when it is page-locked (`CudaBackend::pin_output`): the chunk's
    /// result is downloaded straight into it.
    pub(super) direct_out: Option<*mut u8>,
    /// Requantize the merged chunk on the device and download codes and absmax instead.
    pub(super) quant: Option<QuantChunk>,
}


/// The host bytes one chunk uploads, cut out of its tile, and the values its kernel takes with
/// them.
struct Sources<'t> {
    /// The base rows: 16-bit values, or 4-bit codes.
    base: &'t [u8],
    /// The chunk's absmax values (f32, or the double-quant codes) and nested absmax values.
    absmax: &'t [u8],
    nabs: &'t [u8],
    /// The 4-bit and nested code tables (empty for a 16-bit base).
    qmap: &'t [u8],
    nmap: &'t [u8],
    /// The chunk's first absmax block and first nested block (0 for a 16-bit base).
    blk0: u64,
    nblk0: u64,
    /// The LoRA rank and scale, and the chunk's rows of B (0, 0.0 and none without LoRA).
    r: usize,
    scale: f32,
    b_rows: &'t [f32],
}

impl<'t> Sources<'t> {
    /// Cuts chunk `c`, elements `k0..k1` of the weight, out of its tile.
    fn of(c: &ChunkArgs<'t, '_>, k0: u64, k1: u64) -> Result<Self> {
        let tile = c.tile;
        let cols = tile.cols;
        let internal = |what: &str| Error::Internal(format!("cuda: {what} out of range for tile at row {}", tile.row0));

        let (r, scale, b_rows) = match &tile.lora {
            Some(l) => (l.r, l.scale, &l.b[c.row * l.r..(c.row + c.n_rows) * l.r]),
            None => (0, 0.0, &[][..]),
        };
        let (base, absmax, nabs, qmap, nmap, blk0, nblk0) = match tile.base {
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
        Ok(Sources {
            base,
            absmax,
            nabs,
            qmap,
            nmap,
            blk0,
            nblk0,
            r,
            scale,
            b_rows,
        })
    }
}

/// Byte offsets of the sections of one chunk's upload (in its pinned staging and its device
/// buffer alike), and its length.
struct Upload {
    flag: usize,
    qmap: usize,
    nmap: usize,
    /// B, transposed and padded to `rows_pad` rows.
    b: usize,
    abs: usize,
    nabs: usize,
    base: usize,
    rows_pad: usize,
    len: usize,
}

impl Upload {
    fn of(src: &Sources<'_>, n_rows: usize) -> Self {
        let mut lay = Layout { end: 0 };
        let flag = lay.push(16);
        let qmap = lay.push(64);
        let nmap = lay.push(1024);
        // B goes transposed and padded to 8 rows: Bt[k][row] (kernels/README.md).
        let rows_pad = n_rows.next_multiple_of(8);
        let b = lay.push(if src.r > 0 { src.r * rows_pad * 4 } else { 0 });
        let abs = lay.push(src.absmax.len());
        let nabs = lay.push(src.nabs.len());
        let base = lay.push(src.base.len());
        Upload {
            flag,
            qmap,
            nmap,
            b,
            abs,
            nabs,
            base,
            rows_pad,
            len: lay.end,
        }
    }
}

/// A requantized chunk's download: its codes (padded to whole 8-element pieces, which the
/// kernel stores as u32 words) and then its absmax values.
#[derive(Clone, Copy)]
struct QuantLayout {
    q: QuantChunk,
    /// Blocks in the chunk.
    nb: usize,
    /// Byte offset of the absmax values.
    am_off: usize,
    /// Bytes downloaded.
    len: usize,
}

impl QuantLayout {
    fn of(q: QuantChunk, n: usize) -> Self {
        let nb = n.div_ceil(1 << q.log2bs);
        let codes_room = if q.codes { n.next_multiple_of(8) / 2 } else { 0 };
        let am_off = codes_room.next_multiple_of(16);
        QuantLayout {
            q,
            nb,
            am_off,
            len: am_off + nb * 4,
        }
    }
}

/// One chunk, worked out before anything is staged or queued.
struct ChunkPlan<'t> {
    /// The chunk's first element in the whole weight.
    k0: u64,
    src: Sources<'t>,
    up: Upload,
    /// Bytes of merged values (the merge kernel's output).
    out_len: usize,
    /// Where the chunk's values start in the tile's output.
    out_start: usize,
    /// The requantization's download, when there is one.
    quant: Option<QuantLayout>,
    /// Bytes downloaded, the flag word aside: the values, or the codes and absmax values.
    down_len: usize,
}

impl<'t> ChunkPlan<'t> {
    fn of(c: &ChunkArgs<'t, '_>) -> Result<Self> {
        let tile = c.tile;
        let cols = tile.cols;
        let osz = tile.out_dtype.size();
        let n = c.n_rows * cols;
        let k0 = (tile.row0 + c.row as u64) * cols as u64;
        let src = Sources::of(c, k0, k0 + n as u64)?;
        let up = Upload::of(&src, c.n_rows);
        let out_len = n * osz;
        let quant = c.quant.map(|q| QuantLayout::of(q, n));
        Ok(ChunkPlan {
            k0,
            src,
            up,
            out_len,
            out_start: c.row * cols * osz,
            quant,
            down_len: quant.map_or(out_len, |q| q.len),
        })
    }
}

/// A chunk's entry points: its merge kernel, `quant4` when it is requantized, and how many
/// blocks of the merge kernel the GPU holds at once (lean kernels; 0 for the others).
struct Kernels<'m> {
    merge: Function<'m>,
    quant: Option<Function<'m>>,
    resident: u32,
}

impl<'m> Kernels<'m> {
    /// The entry points chunk `c` runs, from the merge kernels' module and `quant4`'s, with
    /// [`Gpu::lean_resident`].
    fn of(module: &'m Module, quant: &'m Module, lean_resident: &[u32; 4], c: &ChunkArgs<'_, '_>) -> Result<Self> {
        let merge = module
            .get_function(&c.spec.name)
            .map_err(cu_err(format!("cuModuleGetFunction {}", c.spec.name)))?;
        let quant = match c.quant {
            Some(_) => Some(quant.get_function("quant4").map_err(cu_err("cuModuleGetFunction quant4"))?),
            None => None,
        };
        let resident = LEAN_KERNELS
            .iter()
            .position(|k| *k == c.spec.name)
            .map_or(0, |i| lean_resident[i]);
        Ok(Kernels { merge, quant, resident })
    }
}

/// The device addresses of a slot's input and output buffers, sized for the chunk.
#[derive(Clone, Copy)]
struct DevIo {
    input: u64,
    output: u64,
}

/// A chunk whose kernels are queued: its device buffers, where its download comes from (the
/// merged values, or the requantized codes and absmax values), and where a requantized chunk's
/// results go.
struct Queued {
    dev: DevIo,
    down_src: u64,
    quant: Option<QuantPending>,
}

impl Gpu {
    /// Stages chunk `c` into slot `s`, then queues its upload, kernel and download.
    pub(super) fn launch_chunk(&mut self, s: usize, c: &ChunkArgs<'_, '_>, pool: &rayon::ThreadPool) -> Result<()> {
        let plan = ChunkPlan::of(c)?;
        let kernels = Kernels::of(&self.module, &self.quant, &self.lean_resident, c)?;
        let slot = &mut self.slots[s];
        let t_stage = Instant::now();
        stage(slot, &plan, pool)?;
        self.times.stage_in_s += t_stage.elapsed().as_secs_f64();
        let dev = upload(slot, &mut self.clock, &plan, c.direct_out.is_some())?;
        let queued = run_kernels(slot, c, &plan, dev, &kernels)?;
        let (downloaded, direct) = download(slot, c, &plan, &queued)?;
        slot.pending = Some(Pending {
            out_start: plan.out_start,
            len: downloaded,
            in_len: plan.up.len,
            direct,
            quant: queued.quant,
        });
        Ok(())
    }

    /// Uploads `lora_A` (f32) whole, synchronously, for the tile's chunks; returns its device
    /// address.
    pub(super) fn upload_a(&mut self, a: &[f32]) -> Result<u64> {
        let a_len = a.len() * 4;
        let h = host_buf(&mut self.host_a, a_len)?;
        f32_bytes_into(&mut h[..a_len], a);
        let src = h.as_ptr();
        let d = dev_buf(&mut self.dev_a, a_len)?.as_device_ptr().as_raw();
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
        self.times.h2d_s += t_a.elapsed().as_secs_f64();
        self.times.h2d_bytes += a_len as u64;
        Ok(d)
    }

    /// Waits for slot `s`'s chunk, copies its output into `dest`, adds its times to
    /// [`Gpu::times`], and says whether it was all finite (the kernel's flag word stayed 0).
    pub(super) fn drain(&mut self, s: usize, dest: &mut Dest<'_>, pool: &rayon::ThreadPool) -> Result<bool> {
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
    pub(super) fn abandon(&mut self) {
        for s in &mut self.slots {
            let _ = s.stream.synchronize();
            s.pending = None;
        }
    }
}

/// Copies chunk `p`'s inputs into the slot's pinned staging, in the upload's layout.
fn stage(slot: &mut Slot, p: &ChunkPlan<'_>, pool: &rayon::ThreadPool) -> Result<()> {
    let (src, up) = (&p.src, &p.up);
    let h = host_buf(&mut slot.host_in, up.len)?;
    h[up.flag..up.flag + 16].fill(0);
    h[up.qmap..up.qmap + 64].fill(0);
    h[up.qmap..up.qmap + src.qmap.len()].copy_from_slice(src.qmap);
    h[up.nmap..up.nmap + 1024].fill(0);
    h[up.nmap..up.nmap + src.nmap.len()].copy_from_slice(src.nmap);
    if src.r > 0 {
        stage_bt(&mut h[up.b..up.b + src.r * up.rows_pad * 4], src.b_rows, src.r, up.rows_pad);
    }
    h[up.abs..up.abs + src.absmax.len()].copy_from_slice(src.absmax);
    h[up.nabs..up.nabs + src.nabs.len()].copy_from_slice(src.nabs);
    par_copy(pool, &mut h[up.base..up.base + src.base.len()], src.base);
    Ok(())
}

/// Sizes the slot's buffers for chunk `p` and queues its upload between events 0 and 1 (the
/// first chunk of all also starts `clock`). `direct`: the values go straight to the caller.
fn upload(slot: &mut Slot, clock: &mut Clock, p: &ChunkPlan<'_>, direct: bool) -> Result<DevIo> {
    // Staging: everything, unless the values go straight to the caller; a requantized
    // chunk's absmax values always.
    if !direct || p.quant.is_some() {
        host_buf(&mut slot.host_out, p.down_len)?;
    }
    let dev_in = dev_buf(&mut slot.dev_in, p.up.len)?.as_device_ptr().as_raw();
    let dev_out = dev_buf(&mut slot.dev_out, p.out_len)?.as_device_ptr().as_raw();
    let stream = slot.stream.as_inner();
    let host_in = slot.host_in.as_ref().expect("staged above").as_ptr();
    let in_len = p.up.len;
    if !clock.started {
        clock.origin.record(&slot.stream).map_err(cu_err("cuEventRecord"))?;
        clock.started = true;
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
    Ok(DevIo {
        input: dev_in,
        output: dev_out,
    })
}

/// Queues chunk `c`'s merge kernel on the slot's stream, then (when requantizing) `quant4`, then
/// event 2.
fn run_kernels(slot: &mut Slot, c: &ChunkArgs<'_, '_>, p: &ChunkPlan<'_>, dev: DevIo, k: &Kernels<'_>) -> Result<Queued> {
    let (dev_in, src) = (dev.input, &p.src);
    let ka = KernelArgs {
        out: dev.output,
        base: dev_in + p.up.base as u64,
        absmax: dev_in + p.up.abs as u64,
        nabs: dev_in + p.up.nabs as u64,
        nmap: dev_in + p.up.nmap as u64,
        qmap: dev_in + p.up.qmap as u64,
        a: c.a_ptr,
        b: dev_in + p.up.b as u64,
        flag: dev_in + p.up.flag as u64,
        k0: p.k0,
        blk0: src.blk0,
        nblk0: src.nblk0,
        rows: c.n_rows as u32,
        cols: c.tile.cols as u32,
        r: src.r as u32,
        scale: src.scale,
        offset: c.spec.offset,
        flags: c.spec.flags,
        log2bs: c.spec.log2_bs,
        log2nbs: c.spec.log2_nbs,
    };
    let args = ka.ptrs();
    let (grid, block) = launch_shape(&c.spec.name, c.n_rows, c.tile.cols, k.resident);
    // SAFETY: FFI. The arguments point at the fields of `ka` (alive until the call returns),
    // of the exact types and order the kernel declares; every device pointer lies inside a
    // live allocation sized for this chunk.
    unsafe { slot.stream.launch(&k.merge, grid, block, 0, &args) }
        .map_err(cu_err(format!("launch {}", c.spec.name)))?;
    let mut queued = Queued {
        dev,
        down_src: dev.output,
        quant: None,
    };
    if let (Some(ql), Some(qfunc)) = (&p.quant, &k.quant) {
        let (dev_q, quant) = launch_quant(slot, c, ql, dev.output, qfunc)?;
        queued.down_src = dev_q;
        queued.quant = Some(quant);
    }
    slot.ev[2].record(&slot.stream).map_err(cu_err("cuEventRecord"))?;
    Ok(queued)
}

/// Queues `quant4` on chunk `c`'s merged values (at `dev_out`), into the slot's `dev_q`.
/// Returns `dev_q`'s address and where the chunk's codes and absmax values go.
fn launch_quant(
    slot: &mut Slot,
    c: &ChunkArgs<'_, '_>,
    ql: &QuantLayout,
    dev_out: u64,
    qfunc: &Function<'_>,
) -> Result<(u64, QuantPending)> {
    let (q, nb, am_off) = (ql.q, ql.nb, ql.am_off);
    let cols = c.tile.cols;
    let n = c.n_rows * cols;
    let dev_q = dev_buf(&mut slot.dev_q, ql.len)?.as_device_ptr().as_raw();
    let qa = QuantArgs {
        input: dev_out,
        codes: if q.codes { dev_q } else { 0 },
        absmax: dev_q + am_off as u64,
        n: n as u32,
        log2bs: q.log2bs,
        partial: q.partial as u32,
        kind: dt_code(c.tile.out_dtype),
        qt: q.qt,
    };
    let args = qa.ptrs();
    let (grid, block) = quant_shape(nb, q.log2bs);
    // SAFETY: FFI. The arguments point at the fields of `qa`, of the kernel's types and
    // order; `dev_out` holds the chunk's `n` merged values (and its allocation, rounded to
    // 64 KiB, covers the kernel's reads of up to 7 more), `dev_q` has room for the codes
    // in whole u32 words and the absmax values.
    unsafe { slot.stream.launch(qfunc, grid, block, 0, &args) }.map_err(cu_err("launch quant4"))?;
    let quant = QuantPending {
        codes_start: c.row * cols / 2,
        codes_len: if q.codes { n.div_ceil(2) } else { 0 },
        am_start: (c.row * cols) >> q.log2bs,
        am_len: nb,
        am_off,
    };
    Ok((dev_q, quant))
}

/// Queues chunk `c`'s downloads on the slot's stream, the flag word last, then event 3. Returns
/// the bytes downloaded (the flag word aside) and whether they went straight into the caller's
/// buffer.
fn download(slot: &mut Slot, c: &ChunkArgs<'_, '_>, p: &ChunkPlan<'_>, queued: &Queued) -> Result<(usize, bool)> {
    let (out_start, out_len, down_len) = (p.out_start, p.out_len, p.down_len);
    let (dev_out, down_src) = (queued.dev.output, queued.down_src);
    let stream = slot.stream.as_inner();
    let staging = slot.host_out.as_mut().map(|h| h.as_mut_ptr());
    let staging = || staging.ok_or_else(|| Error::Internal("cuda: no pinned output staging".into()));
    // The downloads: (host destination, device source, bytes). With a page-locked caller's
    // buffer, values (or a requantized chunk's codes) go straight into it; the rest (and
    // everything otherwise) lands in the slot's staging for `drain` to copy out.
    let mut copies: Vec<(*mut u8, u64, usize)> = Vec::with_capacity(3);
    let direct = match (&queued.quant, c.direct_out) {
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
    copies.push((slot.host_flag.as_mut_ptr(), queued.dev.input + p.up.flag as u64, 4));
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
    Ok((downloaded, direct))
}
