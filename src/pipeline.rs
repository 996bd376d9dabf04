//! Execute a [`Plan`]: three stages joined by bounded channels.
//!
//! ```text
//! reader ──(Work)──► compute ──(Packed)──► packer
//! slices of the maps   tiles → bytes        shard files, blake3
//! ```
//! * **reader** walks the plan in output-file order and hands out zero-copy slices of the
//!   mapped inputs and row tiles, asking the kernel to read ahead (`MADV_WILLNEED`).
//! * **compute** turns each tile into output bytes through a [`Backend`], into buffers from a
//!   fixed pool allocated up front.
//! * **packer** writes each shard front to back (header first), hashes it with blake3, syncs it,
//!   and releases consumed input pages.
//!
//! Memory is bounded by the pool and channel depths × the tile size, not by the model. The first error
//! wins; "channel closed" errors in other stages are its consequences and are dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use rayon::prelude::*;

use crate::checkpoint::mmap::MappedFile;
use crate::checkpoint::{Adapter, Checkpoint};
use crate::compute::general::{self, DeltaRows, GeneralTile};
use crate::compute::{Backend, BaseRows, LoraRows, MergeTile, QuantSpec};
use crate::error::{Error, Result};
use crate::format::bnb::{AbsmaxRef, QuantView};
use crate::format::dtype::FloatDtype;
use crate::format::dtype::{decode_into, encode_into, float_of, round_through};
use crate::format::encode;
use crate::plan::{BaseSrc, Extra, FactorSrc, FileRef, LoraSrc, Op, Plan, QuantPart, QuantSrc, QuantStats, Src};
pub use crate::writer::shard::ShardResult;
use crate::writer::output::{OutputFile, OutputOptions};
use crate::writer::shard::{lead_for, AlignedBuf};

/// The mapped inputs a plan reads from.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The base checkpoint (absent for a `lora` save).
    pub base: Option<&'a Checkpoint>,
    /// The adapter.
    pub adapter: &'a Adapter,
}

impl<'a> Inputs<'a> {
    fn file(&self, f: FileRef) -> &'a MappedFile {
        match f {
            FileRef::Adapter => &self.adapter.weights.file,
            FileRef::Base(i) => &self.base.expect("plan names a base shard, so a base exists").shards[i].file,
        }
    }

    fn abs(&self, src: &Src) -> usize {
        let start = match src.file {
            FileRef::Adapter => self.adapter.weights.header.data_start,
            FileRef::Base(i) => self.base.expect("plan names a base shard").shards[i].header.data_start,
        };
        (start + src.info.offsets.0) as usize
    }

    /// The bytes of a source tensor.
    pub fn data(&self, src: &Src) -> &'a [u8] {
        let s = self.abs(src);
        &self.file(src.file).bytes()[s..s + src.info.nbytes() as usize]
    }

    /// Drops every mapped page of every input from this process.
    fn release_all(&self) {
        self.adapter.weights.file.release_all();
        for sh in self.base.iter().flat_map(|b| &b.shards) {
            sh.file.release_all();
        }
    }

    fn quant_view(&self, q: &QuantSrc) -> QuantView<'a> {
        let absmax = match &q.nested {
            Some((na, nm)) => AbsmaxRef::Nested {
                codes: self.data(&q.absmax),
                nested_absmax: self.data(na),
                nested_map: self.data(nm),
                nested_blocksize: q.state.nested.map(|n| n.0).unwrap_or(256),
                offset: q.state.nested.map(|n| n.1).unwrap_or(0.0),
            },
            None => AbsmaxRef::Plain(self.data(&q.absmax)),
        };
        QuantView {
            codes: self.data(&q.codes),
            absmax,
            quant_map: self.data(&q.quant_map),
            blocksize: q.state.blocksize,
            dtype: q.state.dtype,
        }
    }
}

/// Tuning derived from the memory budget.
#[derive(Debug, Clone, Copy)]
pub struct ExecConfig {
    /// Target bytes per work item.
    pub tile_bytes: usize,
    /// Capacity of each channel.
    pub depth: usize,
    /// Let NaN/Inf through.
    pub allow_nonfinite: bool,
    /// Also hash each shard with sha256 (for a Hub push).
    pub sha256: bool,
    /// Force or forbid `copy_file_range` clones (the `LORAWELD_COPY_FILE_RANGE` hook).
    pub copy_file_range: Option<bool>,
}

impl ExecConfig {
    /// Derives tile size and depth from a budget in bytes: a sixty-fourth of the budget per
    /// tile, between 1 MiB and 64 MiB, with two items in flight per channel. Small tiles keep
    /// the resident set a function of the budget, not of the model's largest tensor.
    pub fn from_budget(budget: u64, allow_nonfinite: bool) -> Self {
        let tile = (budget / 64).clamp(1 << 20, 64 << 20) as usize;
        ExecConfig {
            tile_bytes: tile,
            depth: 2,
            allow_nonfinite,
            sha256: false,
            copy_file_range: None,
        }
    }
}

/// Called by the packer with each shard's path once it is complete and synced (the Hub push
/// uploads it from there while the pipeline goes on). It must not block for long.
pub type OnShard<'a> = dyn Fn(&Path, &ShardResult) + Sync + 'a;

/// Busy time per stage.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct StageTimes {
    /// Reader busy seconds.
    pub read_s: f64,
    /// Compute busy seconds.
    pub compute_s: f64,
    /// Packer busy seconds (writing + hashing + syncing).
    pub pack_s: f64,
    /// Seconds to start the compute backend, before the stages run (set by `save`). For CUDA:
    /// the context, the staging buffers and loading the kernels: 0.2-0.3 s on an H100 from the
    /// embedded cubin, 2-3 s more when the driver must JIT-compile the PTX and its cache lacks it
    /// (BENCHMARKS.md, session 7).
    pub backend_start_s: f64,
    /// Seconds of `merged_4bit`'s statistics pass, before the stages run (set by `save`): every
    /// double-quantized weight merged once more for its block absmax values; 0 otherwise.
    pub quant_stats_s: f64,
    /// A GPU backend's breakdown of the compute stage (set by `save`); absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::compute::GpuTimes>,
}

/// Output buffers in circulation: one being filled, two queued for the packer, the rest with
/// the writer's I/O thread or back in the pool. More would not write faster (the disk is the
/// limit), only hold more memory.
const POOL: usize = 6;

/// The largest output tile of the plan (16-bit values, or `merged_4bit`'s packed codes) plus
/// room for its in-page lead: the pool's buffer size.
fn tile_buf_cap(plan: &Plan, tile_bytes: usize) -> usize {
    plan.tensors
        .iter()
        .filter_map(|t| match t.op {
            Op::Compute { .. } => {
                let size = float_of(t.dtype)?.size();
                let rows = tiles(t.rows, t.cols, 1, tile_bytes).iter().map(|&(_, n)| n).max()?;
                Some(rows as usize * t.cols as usize * size + 4096)
            }
            Op::Quant {
                group,
                part: QuantPart::Codes,
            } => {
                let g = plan.quant_groups.get(group)?;
                let rows = tiles(g.shape[0], g.shape[1], g.row_step(), tile_bytes)
                    .iter()
                    .map(|&(_, n)| n)
                    .max()?;
                Some((rows * g.shape[1]).div_ceil(2) as usize + 4096)
            }
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Row tiles of about `tile_bytes` of f32 scratch, each a multiple of `step` rows.
fn tiles(rows: u64, cols: u64, step: u64, tile_bytes: usize) -> Vec<(u64, u64)> {
    let row_bytes = (cols as usize * 4).max(1);
    let per = ((tile_bytes / row_bytes) as u64 / step).max(1) * step;
    let mut v = Vec::new();
    let mut r = 0;
    while r < rows {
        let n = per.min(rows - r);
        v.push((r, n));
        r += n;
    }
    v
}

enum Work<'a> {
    /// A whole small tensor produced in one go (4-bit helper tensors).
    Part {
        tensor: usize,
    },
    StartShard(usize),
    /// Input bytes copied as they are to `at` in the output file.
    Copy {
        data: &'a [u8],
        file: &'a MappedFile,
        abs: usize,
        at: u64,
    },
    Tile {
        tensor: usize,
        row0: u64,
        rows: usize,
    },
    EndShard(usize),
}

/// Output bytes and where they go in their file (`at`, absolute, as planned).
enum Packed<'a> {
    StartShard(usize),
    /// A computed tile at `buf[lead..lead + len]`, placed for a copy-free direct write.
    Aligned {
        buf: AlignedBuf,
        lead: usize,
        len: usize,
        at: u64,
    },
    Borrowed {
        data: &'a [u8],
        file: &'a MappedFile,
        abs: usize,
        at: u64,
    },
    Owned {
        bytes: Vec<u8>,
        at: u64,
    },
    EndShard(usize),
}

/// Runs the plan, writing every shard into `dir`.
pub fn execute(
    plan: &Plan,
    inputs: Inputs<'_>,
    backend: &dyn Backend,
    dir: &Path,
    cfg: ExecConfig,
    on_shard: Option<&OnShard<'_>>,
    progress: Option<&AtomicU64>,
) -> Result<(Vec<ShardResult>, StageTimes)> {
    let (work_tx, work_rx) = bounded::<Work>(cfg.depth);
    let (pack_tx, pack_rx) = bounded::<Packed>(cfg.depth);
    // Planning read every weight's small quant-state tensors (and a merged_4bit stats pass whole
    // weights); each read mapped the page-cache folio around it, up to 2 MiB of neighbouring
    // tensors. Drop all of that, so the streaming pass starts with nothing mapped.
    inputs.release_all();
    // A fixed set of output buffers, allocated (and faulted in) once: the resident set is then
    // the same at any point of any run at this budget, instead of growing with how many
    // buffers a long run happened to have in flight at once.
    let pool_cap = tile_buf_cap(plan, cfg.tile_bytes);
    let (pool_tx, pool_rx) = bounded::<AlignedBuf>(POOL);
    if pool_cap > 0 {
        for _ in 0..POOL {
            let mut buf = AlignedBuf::new(pool_cap);
            // A GPU backend page-locks them, so results come back into them directly.
            if let Some(release) = backend.pin_output(buf.as_mut_slice()) {
                buf.on_release(release);
            }
            let _ = pool_tx.try_send(buf);
        }
    }
    std::thread::scope(|s| {
        let reader = s.spawn(|| read_stage(plan, inputs, cfg, work_tx));
        let compute = s.spawn(|| compute_stage(plan, inputs, backend, cfg, work_rx, pack_tx, (pool_rx, pool_cap)));
        let packer = s.spawn(|| pack_stage(plan, dir, pack_rx, pool_tx, on_shard, progress, cfg));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Duration>>| {
            h.join()
                .unwrap_or_else(|_| Err(Error::Internal("a pipeline stage panicked".into())))
        };
        let r = join(reader);
        let c = join(compute);
        let p = packer
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the packer panicked".into())));
        // The first real error wins: compute and reader errors cause the packer's "stopped early".
        let c = c?;
        let r = r?;
        let (shards, pt) = p?;
        Ok((
            shards,
            StageTimes {
                read_s: r.as_secs_f64(),
                compute_s: c.as_secs_f64(),
                pack_s: pt.as_secs_f64(),
                backend_start_s: 0.0,
                quant_stats_s: 0.0,
                gpu: None,
            },
        ))
    })
}

fn read_stage<'a>(plan: &Plan, inputs: Inputs<'a>, cfg: ExecConfig, tx: Sender<Work<'a>>) -> Result<Duration> {
    let mut busy = Duration::ZERO;
    for (si, shard) in plan.shards.iter().enumerate() {
        if shard.skip {
            continue;
        }
        if tx.send(Work::StartShard(si)).is_err() {
            return Ok(busy);
        }
        for &ti in &shard.tensors {
            if crate::sys::interrupted() {
                return Err(Error::Interrupted { out: PathBuf::new() });
            }
            let t0 = Instant::now();
            let t = &plan.tensors[ti];
            let mut items = Vec::new();
            match &t.op {
                Op::Copy(src) => {
                    let data = inputs.data(src);
                    let file = inputs.file(src.file);
                    let abs = inputs.abs(src);
                    let mut off = 0;
                    while off < data.len() || (data.is_empty() && off == 0) {
                        let end = (off + cfg.tile_bytes).min(data.len());
                        items.push(Work::Copy {
                            data: &data[off..end],
                            file,
                            abs: abs + off,
                            at: t.offset + off as u64,
                        });
                        if data.is_empty() {
                            break;
                        }
                        off = end;
                    }
                }
                Op::Compute { .. } => {
                    for (row0, n) in tiles(t.rows, t.cols, 1, cfg.tile_bytes) {
                        items.push(Work::Tile {
                            tensor: ti,
                            row0,
                            rows: n as usize,
                        });
                    }
                }
                Op::Quant {
                    group,
                    part: QuantPart::Codes,
                } => {
                    let g = &plan.quant_groups[*group];
                    for (row0, n) in tiles(g.shape[0], g.shape[1], g.row_step(), cfg.tile_bytes) {
                        items.push(Work::Tile {
                            tensor: ti,
                            row0,
                            rows: n as usize,
                        });
                    }
                }
                Op::Quant { .. } => items.push(Work::Part { tensor: ti }),
            }
            busy += t0.elapsed();
            for it in items {
                // A cold input streams from disk while the tiles before this one compute.
                match (&it, &t.op) {
                    (Work::Tile { row0, rows, .. }, Op::Compute { base, .. }) => {
                        tile_ranges(&inputs, base, t.cols as usize, *row0, *rows).prefetch()
                    }
                    (Work::Copy { data, file, abs, .. }, _) => file.will_need(*abs, *abs + data.len()),
                    _ => {}
                }
                if tx.send(it).is_err() {
                    return Ok(busy);
                }
            }
        }
        if tx.send(Work::EndShard(si)).is_err() {
            return Ok(busy);
        }
    }
    Ok(busy)
}

/// Factors of the tensor being computed, decoded to f32 once per tensor.
enum Factors {
    Fast { a: Vec<f32>, b: Vec<f32> },
    General(GeneralFactors),
    None,
}

/// One delta's factors as f32: coef, basis, r, scale, rounding.
type DeltaF32 = (Vec<f32>, Vec<f32>, usize, f32, Option<crate::options::FloatDtype>);

/// Everything the general path needs for one tensor, as f32.
struct GeneralFactors {
    deltas: Vec<DeltaF32>,
    magnitude: Option<Vec<f32>>,
    /// Sorted `(row, index)` pairs and the new rows.
    replace: Option<RowsF32>,
}

type RowsF32 = (Vec<(u64, usize)>, Vec<f32>);

fn adapter_f32(inputs: &Inputs<'_>, info: &crate::format::safetensors::TensorInfo, transpose: bool) -> Vec<f32> {
    let dt = float_of(info.dtype).unwrap_or(crate::options::FloatDtype::F32);
    let mut v = vec![0f32; info.numel() as usize];
    let src = Src {
        file: FileRef::Adapter,
        info: info.clone(),
    };
    decode_into(inputs.data(&src), dt, &mut v);
    // The factor now lives in `v`; drop its pages from our resident set.
    let abs = inputs.abs(&src);
    inputs.file(FileRef::Adapter).release(abs, abs + info.nbytes() as usize);
    if !transpose || info.shape.len() != 2 {
        return v;
    }
    let (r, c) = (info.shape[0] as usize, info.shape[1] as usize);
    let mut t = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = v[i * c + j];
        }
    }
    t
}

fn load_general(inputs: &Inputs<'_>, x: &Extra) -> GeneralFactors {
    let factor = |f: &FactorSrc| match f {
        FactorSrc::Tensor { info, transpose, .. } => adapter_f32(inputs, info, *transpose),
        FactorSrc::Ones => vec![1.0],
    };
    GeneralFactors {
        deltas: x
            .deltas
            .iter()
            .map(|d| (factor(&d.coef), factor(&d.basis), d.r, d.scale, d.round_delta))
            .collect(),
        magnitude: x.magnitude.as_ref().map(|m| adapter_f32(inputs, m, false)),
        replace: x.rows.as_ref().map(|(idx, t)| {
            let mut pairs: Vec<(u64, usize)> = idx.iter().enumerate().map(|(j, &r)| (r, j)).collect();
            // PEFT's index_copy: with repeated indices the last row wins.
            pairs.sort_by_key(|&(r, j)| (r, std::cmp::Reverse(j)));
            pairs.dedup_by_key(|p| p.0);
            (pairs, adapter_f32(inputs, t, false))
        }),
    }
}

/// Turns row ranges of an `Op::Compute` into values: the compute stage's engine, also used by
/// the stats pass.
pub(crate) struct Computer<'a, 'p> {
    plan: &'p Plan,
    inputs: Inputs<'a>,
    backend: &'p dyn Backend,
    /// Cache key of the loaded factors (tensor index, or `tensors.len() + group`).
    key: Option<usize>,
    factors: Factors,
    bytes: Vec<u8>,
    f32s: Vec<f32>,
    /// Block absmax values of the quant group whose codes were last produced.
    absmax: Option<(usize, Vec<f32>)>,
    /// The op whose factors are loaded: all its input ranges are released when the next
    /// tensor starts (catching pages faulted in around tile edges and by small helper tensors).
    prev: Option<&'p Op>,
}

impl<'a, 'p> Computer<'a, 'p> {
    pub(crate) fn new(plan: &'p Plan, inputs: Inputs<'a>, backend: &'p dyn Backend) -> Self {
        Computer {
            plan,
            inputs,
            backend,
            key: None,
            factors: Factors::None,
            bytes: Vec::new(),
            f32s: Vec::new(),
            absmax: None,
            prev: None,
        }
    }

    fn load(&mut self, key: usize, op: &'p Op) {
        if self.key == Some(key) {
            return;
        }
        if let Some(prev) = self.prev.replace(op) {
            self.release_all(prev);
        }
        self.factors = match op {
            Op::Compute { lora: Some(l), .. } => Factors::Fast {
                a: adapter_f32(&self.inputs, &l.a, false),
                b: adapter_f32(&self.inputs, &l.b, false),
            },
            Op::Compute { extra: Some(x), .. } => Factors::General(load_general(&self.inputs, x)),
            _ => Factors::None,
        };
        self.key = Some(key);
    }

    /// Releases every input range `op` read.
    fn release_all(&self, op: &Op) {
        let Op::Compute { base, .. } = op else { return };
        let whole = |src: &Src| {
            let abs = self.inputs.abs(src);
            self.inputs
                .file(src.file)
                .release(abs, abs + src.info.nbytes() as usize);
        };
        match base {
            BaseSrc::Float(src, _) => whole(src),
            BaseSrc::Bnb(q) => {
                whole(&q.codes);
                whole(&q.absmax);
                whole(&q.quant_map);
                if let Some((na, nm)) = &q.nested {
                    whole(na);
                    whole(nm);
                }
            }
        }
    }

    fn base_rows(&self, base: &'p BaseSrc, cols: usize, row0: u64, rows: usize) -> (BaseRows<'a>, Release<'a>) {
        let inputs = &self.inputs;
        let ranges = tile_ranges(inputs, base, cols, row0, rows);
        match base {
            BaseSrc::Float(src, dt) => {
                let rb = cols * dt.size();
                let s = row0 as usize * rb;
                (
                    BaseRows::Float {
                        bytes: &inputs.data(src)[s..s + rows * rb],
                        dtype: *dt,
                    },
                    ranges,
                )
            }
            BaseSrc::Bnb(q) => (BaseRows::Bnb(inputs.quant_view(q)), ranges),
        }
    }

    /// Rows `row0..row0+rows` of `op` rounded to `out_dtype`, into `buf`. Returns "all finite".
    #[allow(clippy::too_many_arguments)]
    fn encoded(
        &mut self,
        key: usize,
        op: &'p Op,
        cols: usize,
        row0: u64,
        rows: usize,
        out_dtype: FloatDtype,
        buf: &mut [u8],
    ) -> Result<bool> {
        let Op::Compute { base, lora, extra } = op else {
            return Err(Error::Internal("compute of a non-compute op".into()));
        };
        if buf.len() != rows * cols * out_dtype.size() {
            return Err(Error::Internal("tile buffer has the wrong length".into()));
        }
        self.load(key, op);
        let (base_rows, release) = self.base_rows(base, cols, row0, rows);
        release.populate();
        let finite = match (&self.factors, extra) {
            (Factors::General(f), Some(x)) => {
                general_rows(f, x, base_rows, cols, row0, rows, &mut self.f32s);
                encode_into(&self.f32s, out_dtype, buf);
                self.f32s.iter().all(|v| round_through(*v, out_dtype).is_finite())
            }
            (factors, _) => {
                let tile = fast_tile(factors, lora.as_ref(), base_rows, cols, row0, rows, out_dtype);
                self.backend.merge_tile(&tile, buf)?
            }
        };
        release.run();
        Ok(finite)
    }

    /// Rows of a general-path `op` (DoRA and friends) before any output rounding, rounded
    /// through `pre_round` when given, into `self.f32s`. Returns "all finite".
    #[allow(clippy::too_many_arguments)]
    fn general_values(
        &mut self,
        key: usize,
        op: &'p Op,
        x: &Extra,
        cols: usize,
        row0: u64,
        rows: usize,
        pre_round: Option<FloatDtype>,
    ) -> Result<bool> {
        let Op::Compute { base, .. } = op else {
            return Err(Error::Internal("compute of a non-compute op".into()));
        };
        self.load(key, op);
        let (base_rows, release) = self.base_rows(base, cols, row0, rows);
        let Factors::General(f) = &self.factors else {
            return Err(Error::Internal("general factors missing".into()));
        };
        general_rows(f, x, base_rows, cols, row0, rows, &mut self.f32s);
        release.run();
        let finite = self.f32s.iter().all(|v| v.is_finite());
        if let Some(dt) = pre_round {
            let f32s = &mut self.f32s;
            on_pool(self.backend.host_pool(), move || {
                f32s.par_chunks_mut(1 << 16)
                    .for_each(|c| c.iter_mut().for_each(|v| *v = round_through(*v, dt)))
            });
        }
        Ok(finite)
    }

    /// Packed codes of a quant group's tile into `buf`, or with `buf = None` only the block
    /// absmax values (the stats pass); either way it appends the block absmax values to
    /// `self.absmax`. A backend that requantizes on its device does the whole tile
    /// ([`Backend::quant_tile`]); otherwise the blocks are spread over the backend's host pool,
    /// each task quantizing its blocks into a scratch of its own and packing them into its part
    /// of `buf`.
    fn quant_codes(&mut self, group: usize, row0: u64, rows: usize, mut buf: Option<&mut [u8]>) -> Result<bool> {
        let g = &self.plan.quant_groups[group];
        let cols = g.shape[1] as usize;
        let n = g.numel() as usize;
        let k0 = row0 as usize * cols;
        let len = rows * cols;
        let bs = g.blocksize as usize;
        let qt = g.quant_type;
        let mut am = vec![0f32; len.div_ceil(bs)];
        if buf.as_ref().is_some_and(|b| b.len() != len.div_ceil(2)) {
            return Err(Error::Internal(format!(
                "`{}`: codes buffer has the wrong length",
                g.name
            )));
        }
        let spec = QuantSpec {
            quant_type: qt,
            blocksize: bs,
            numel: n as u64,
        };
        let key = self.plan.tensors.len() + group;
        let (op, pre_round) = (&g.source, g.pre_round);
        let finite = match op {
            Op::Compute {
                base,
                lora,
                extra: None,
            } => {
                // The backend rounds its f32 result once to the output dtype, so asking it for
                // `pre_round` gives the f32 result rounded through it, with half the bytes.
                let dt = pre_round.unwrap_or(FloatDtype::F32);
                self.load(key, op);
                let (base_rows, release) = self.base_rows(base, cols, row0, rows);
                release.populate();
                let tile = fast_tile(&self.factors, lora.as_ref(), base_rows, cols, row0, rows, dt);
                let backend = self.backend;
                let finite = match backend.quant_tile(&tile, &spec, buf.as_deref_mut(), &mut am)? {
                    Some(finite) => finite,
                    None => {
                        self.f32s.resize(len, 0.0);
                        let finite = if dt == FloatDtype::F32 && cfg!(target_endian = "little") {
                            // f32 results are already the values: merged straight into them.
                            backend.merge_tile(&tile, crate::sys::f32_bytes_mut(&mut self.f32s))?
                        } else {
                            let mut bytes = std::mem::take(&mut self.bytes);
                            bytes.resize(len * dt.size(), 0);
                            let finite = backend.merge_tile(&tile, &mut bytes)?;
                            let (f32s, b) = (&mut self.f32s, &bytes);
                            on_pool(backend.host_pool(), move || {
                                f32s.par_chunks_mut(1 << 16)
                                    .zip(b.par_chunks(dt.size() << 16))
                                    .for_each(|(o, b)| decode_into(b, dt, o))
                            });
                            self.bytes = bytes;
                            finite
                        };
                        self.host_quant(&spec, k0, len, buf, &mut am);
                        finite
                    }
                };
                release.run();
                finite
            }
            Op::Compute { extra: Some(x), .. } => {
                let finite = self.general_values(key, op, x, cols, row0, rows, pre_round)?;
                self.host_quant(&spec, k0, len, buf, &mut am);
                finite
            }
            _ => {
                return Err(Error::Internal(format!(
                    "`{}`: quant source is not a compute op",
                    g.name
                )))
            }
        };
        match &mut self.absmax {
            Some((gi, v)) if *gi == group && row0 != 0 => v.extend_from_slice(&am),
            slot => *slot = Some((group, am)),
        }
        Ok(finite)
    }

    /// The host's requantization of the `len` values in `self.f32s` (flat elements `k0..`): the
    /// block absmax values into `am` and, with `buf`, the packed codes.
    fn host_quant(&self, spec: &QuantSpec, k0: usize, len: usize, buf: Option<&mut [u8]>, am: &mut [f32]) {
        let (n, bs, qt) = (spec.numel as usize, spec.blocksize, spec.quant_type);
        // Blocks per parallel task: big enough to amortize the task, small enough to balance.
        // Even, so every task but the last covers whole bytes of packed codes.
        const TASK: usize = 256;
        let partial = |j: usize| k0 + j * bs + bs > n && !n.is_multiple_of(bs);
        let x = &self.f32s[..len];
        on_pool(self.backend.host_pool(), || match buf {
            Some(buf) => {
                let pad = encode::zero_code(qt);
                x.par_chunks(bs * TASK)
                    .zip(buf.par_chunks_mut(bs * TASK / 2))
                    .zip(am.par_chunks_mut(TASK))
                    .enumerate()
                    .for_each_init(Vec::new, |codes, (t, ((xs, out), ams))| {
                        codes.resize(xs.len(), 0);
                        for (j, ((b, c), a)) in xs.chunks(bs).zip(codes.chunks_mut(bs)).zip(ams).enumerate() {
                            *a = encode::quantize_block(b, partial(t * TASK + j), qt, c);
                        }
                        encode::pack(codes, pad, out);
                    });
            }
            None => x
                .par_chunks(bs * TASK)
                .zip(am.par_chunks_mut(TASK))
                .enumerate()
                .for_each(|(t, (xs, ams))| {
                    for (j, (b, a)) in xs.chunks(bs).zip(ams).enumerate() {
                        *a = encode::block_absmax(b, partial(t * TASK + j));
                    }
                }),
        });
    }

    /// All block absmax values of a group (recomputed unless the codes pass just made them).
    fn group_absmax(&mut self, group: usize, tile_bytes: usize) -> Result<Vec<f32>> {
        let g = &self.plan.quant_groups[group];
        if let Some((gi, v)) = &self.absmax {
            if *gi == group && v.len() as u64 == g.blocks() {
                return Ok(v.clone());
            }
        }
        for (row0, n) in tiles(g.shape[0], g.shape[1], g.row_step(), tile_bytes) {
            self.quant_codes(group, row0, n as usize, None)?;
        }
        Ok(self.absmax.as_ref().map(|a| a.1.clone()).unwrap_or_default())
    }

    /// The bytes of a 4-bit helper tensor.
    fn quant_part(&mut self, group: usize, part: QuantPart, tile_bytes: usize) -> Result<Vec<u8>> {
        let g = &self.plan.quant_groups[group];
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        Ok(match part {
            QuantPart::Codes => return Err(Error::Internal("codes are tiled".into())),
            QuantPart::QuantMap => le(&encode::code_table(g.quant_type)),
            QuantPart::NestedMap => le(&encode::dynamic_map()),
            QuantPart::State => g.state_json().into_bytes(),
            QuantPart::NestedAbsmax => le(&g
                .stats
                .as_ref()
                .ok_or_else(|| Error::Internal(format!("`{}`: no stats", g.name)))?
                .nested_absmax),
            QuantPart::Absmax => {
                let double = g.double_quant;
                let stats = g.stats.clone();
                let am = self.group_absmax(group, tile_bytes)?;
                if !double {
                    le(&am)
                } else {
                    let st = stats.ok_or_else(|| Error::Internal("double quant without stats".into()))?;
                    let coder = encode::DynamicCoder::new(&encode::dynamic_map());
                    // On the host pool: 108 M blocks on an 8B model.
                    const PIECE: usize = 1 << 16;
                    let mut out = vec![0u8; am.len()];
                    on_pool(self.backend.host_pool(), || {
                        out.par_chunks_mut(PIECE)
                            .zip(am.par_chunks(PIECE))
                            .enumerate()
                            .for_each(|(c, (o, a))| {
                                for (j, (o, &a)) in o.iter_mut().zip(a).enumerate() {
                                    let b = c * PIECE + j;
                                    *o = coder.code((a - st.offset) / st.nested_absmax[b / 256]);
                                }
                            })
                    });
                    out
                }
            }
        })
    }
}

/// The fast path's tile (a plain LoRA or none) of rows `row0..row0+rows`, from the loaded
/// factors: `lora_B`'s rows of the tile, `lora_A` whole.
fn fast_tile<'f>(
    factors: &'f Factors,
    lora: Option<&LoraSrc>,
    base: BaseRows<'f>,
    cols: usize,
    row0: u64,
    rows: usize,
    out_dtype: FloatDtype,
) -> MergeTile<'f> {
    let lora = match (lora, factors) {
        (Some(l), Factors::Fast { a, b }) => Some(LoraRows {
            a: a.as_slice(),
            b: &b[row0 as usize * l.r..(row0 as usize + rows) * l.r],
            r: l.r,
            scale: l.scale,
            delta_dtype: l.dtype,
        }),
        _ => None,
    };
    MergeTile {
        row0,
        rows,
        cols,
        base,
        lora,
        out_dtype,
    }
}

/// The input byte ranges rows `row0..row0+rows` of a base read: the rows themselves, or a 4-bit
/// weight's codes and their block scales (u8 with double quant, f32 without: on a 70B model
/// the scales are over a gigabyte, so they are released as well).
fn tile_ranges<'a>(inputs: &Inputs<'a>, base: &BaseSrc, cols: usize, row0: u64, rows: usize) -> Release<'a> {
    match base {
        BaseSrc::Float(src, dt) => {
            let rb = cols * dt.size();
            let s = inputs.abs(src) + row0 as usize * rb;
            Release(vec![(inputs.file(src.file), s, s + rows * rb)])
        }
        BaseSrc::Bnb(q) => {
            let abs = inputs.abs(&q.codes);
            let k0 = row0 as usize * cols;
            let k1 = k0 + rows * cols;
            let bs = q.state.blocksize as usize;
            let per_block = q.absmax.info.dtype.bits() as usize / 8;
            let am_abs = inputs.abs(&q.absmax);
            Release(vec![
                (inputs.file(q.codes.file), abs + k0 / 2, abs + k1 / 2),
                (
                    inputs.file(q.absmax.file),
                    am_abs + k0 / bs * per_block,
                    am_abs + k1 / bs * per_block,
                ),
            ])
        }
    }
}

/// Input ranges a tile consumed, released once the tile is computed.
struct Release<'a>(Vec<(&'a MappedFile, usize, usize)>);

impl Release<'_> {
    /// Starts reading the ranges into the page cache (`MADV_WILLNEED`), without mapping them:
    /// the reader does this a few tiles ahead, so a cold input streams from disk while earlier
    /// tiles compute and write.
    fn prefetch(&self) {
        for (f, s, e) in &self.0 {
            f.will_need(*s, *e);
        }
    }

    /// Maps the tile's input pages in one call before the kernel reads them: measured on the
    /// 1B bf16 merge, the kernel's time fell from 1.04 s to 0.85 s (page faults one 64 KiB
    /// window at a time cost more than the populate).
    fn populate(&self) {
        for (f, s, e) in &self.0 {
            f.populate(*s, *e);
        }
    }

    fn run(&self) {
        for (f, s, e) in &self.0 {
            f.release(*s, *e);
        }
    }
}

/// Runs `f` on `pool` (the backend's host pool, so rayon work inside it uses `--threads`
/// threads), or on the calling thread's default pool when there is none.
fn on_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

fn general_rows(
    f: &GeneralFactors,
    x: &Extra,
    base: BaseRows<'_>,
    cols: usize,
    row0: u64,
    rows: usize,
    out: &mut Vec<f32>,
) {
    let deltas: Vec<DeltaRows> = f
        .deltas
        .iter()
        .map(|(c, b, r, s, rd)| DeltaRows {
            coef: c,
            basis: b,
            r: *r,
            scale: *s,
            round_delta: *rd,
        })
        .collect();
    let gt = GeneralTile {
        row0,
        rows,
        cols,
        base,
        deltas: &deltas,
        magnitude: f.magnitude.as_deref(),
        replace: f.replace.as_ref().map(|(i, r)| (&i[..], &r[..])),
        work_dtype: x.work_dtype,
    };
    out.resize(rows * cols, 0.0);
    general::compute(&gt, out);
}

/// The stats pass of `merged_4bit`: for every double-quantized weight, the block absmax values,
/// their mean (the offset) and the nested absmax. Fills the plan and lays it out again, since
/// the quant-state JSON's length depends on the offset.
pub fn quant_stats(plan: &mut Plan, inputs: Inputs<'_>, backend: &dyn Backend, cfg: ExecConfig) -> Result<()> {
    let mut all = Vec::new();
    {
        let mut c = Computer::new(plan, inputs, backend);
        for (gi, g) in plan.quant_groups.iter().enumerate() {
            if !g.double_quant {
                continue;
            }
            let am = c.group_absmax(gi, cfg.tile_bytes)?;
            let offset = encode::torch_mean(&am);
            let nested: Vec<f32> = am
                .chunks(256)
                .map(|ch| ch.iter().fold(0f32, |m, &a| m.max((a - offset).abs())))
                .collect();
            all.push((
                gi,
                QuantStats {
                    offset,
                    nested_absmax: nested,
                },
            ));
            c.absmax = None;
        }
    }
    for (gi, st) in all {
        plan.quant_groups[gi].stats = Some(st);
    }
    plan.relayout();
    Ok(())
}

fn compute_stage<'a>(
    plan: &Plan,
    inputs: Inputs<'a>,
    backend: &dyn Backend,
    cfg: ExecConfig,
    rx: Receiver<Work<'a>>,
    tx: Sender<Packed<'a>>,
    (pool, pool_cap): (Receiver<AlignedBuf>, usize),
) -> Result<Duration> {
    let mut busy = Duration::ZERO;
    let mut c = Computer::new(plan, inputs, backend);
    for w in rx {
        let out = match w {
            Work::StartShard(i) => Packed::StartShard(i),
            Work::EndShard(i) => Packed::EndShard(i),
            Work::Copy { data, file, abs, at } => Packed::Borrowed { data, file, abs, at },
            Work::Part { tensor } => {
                let t0 = Instant::now();
                let t = &plan.tensors[tensor];
                let Op::Quant { group, part } = t.op else {
                    return Err(Error::Internal(format!("part item for `{}`", t.name)));
                };
                let bytes = c.quant_part(group, part, cfg.tile_bytes)?;
                if bytes.len() as u64 != t.nbytes {
                    return Err(Error::Internal(format!(
                        "`{}`: made {} bytes, planned {}",
                        t.name,
                        bytes.len(),
                        t.nbytes
                    )));
                }
                busy += t0.elapsed();
                Packed::Owned { bytes, at: t.offset }
            }
            Work::Tile { tensor, row0, rows } => {
                let t0 = Instant::now();
                let t = &plan.tensors[tensor];
                // Where the tile's bytes start in the tensor, and how many: `merged_4bit`'s
                // packed codes (two per byte; a tile starts on a block, so on a whole byte), or
                // values of the output dtype.
                let (out_dtype, skip, len) = match &t.op {
                    Op::Quant { group, .. } => {
                        let cols = plan.quant_groups[*group].shape[1];
                        (None, row0 * cols / 2, (rows * cols as usize).div_ceil(2))
                    }
                    _ => {
                        let dt = float_of(t.dtype)
                            .ok_or_else(|| Error::Internal(format!("`{}` is not a float output", t.name)))?;
                        let row_bytes = t.cols as usize * dt.size();
                        (Some(dt), row0 * row_bytes as u64, rows * row_bytes)
                    }
                };
                // The tile goes where its bytes sit in their 4 KiB page of the shard, so the
                // writer can hand the buffer to the disk without copying it.
                let lead = lead_for(t.offset + skip);
                // Waiting here for a buffer is the back-pressure from the disk. A tile larger
                // than the plan's largest (never, by construction) gets its own.
                let t_wait = Instant::now();
                let mut buf = if lead + len <= pool_cap {
                    let Ok(b) = pool.recv() else {
                        return Ok(busy);
                    };
                    b
                } else {
                    AlignedBuf::new(lead + len)
                };
                let waited = t_wait.elapsed();
                let out = &mut buf.as_mut_slice()[lead..lead + len];
                let finite = match (&t.op, out_dtype) {
                    (Op::Quant { group, .. }, _) => c.quant_codes(*group, row0, rows, Some(out))?,
                    (op, Some(dt)) => c.encoded(tensor, op, t.cols as usize, row0, rows, dt, out)?,
                    (_, None) => return Err(Error::Internal(format!("`{}`: no output dtype", t.name))),
                };
                let packed = Packed::Aligned {
                    buf,
                    lead,
                    len,
                    at: t.offset + skip,
                };
                if !finite && !cfg.allow_nonfinite {
                    return Err(Error::NonFinite { tensor: t.name.clone() });
                }
                busy += t0.elapsed().saturating_sub(waited);
                packed
            }
        };
        if tx.send(out).is_err() {
            return Ok(busy);
        }
    }
    Ok(busy)
}

/// Writes every file the plan assigns, through the output-format seam: each planned file is
/// begun with its head, gets every piece at its planned offset, and is finished (hashed,
/// synced, checked against its planned length).
fn pack_stage(
    plan: &Plan,
    dir: &Path,
    rx: Receiver<Packed<'_>>,
    pool: Sender<AlignedBuf>,
    on_shard: Option<&OnShard<'_>>,
    progress: Option<&AtomicU64>,
    cfg: ExecConfig,
) -> Result<(Vec<ShardResult>, Duration)> {
    let mut busy = Duration::ZERO;
    let mut results = Vec::with_capacity(plan.shards.len());
    let mut open: Option<(usize, OutputFile)> = None;
    let opts = OutputOptions {
        sha256: cfg.sha256,
        copy_file_range: cfg.copy_file_range,
        progress,
    };
    let no_file = || Error::Internal("data before shard start".into());
    for p in rx {
        let t0 = Instant::now();
        match p {
            Packed::StartShard(i) => {
                let sh = &plan.shards[i];
                let f = OutputFile::begin(dir, &sh.file_name, &sh.head, sh.file_len, pool.clone(), opts)?;
                open = Some((i, f));
            }
            Packed::Borrowed { data, file, abs, at } => {
                let (_, f) = open.as_mut().ok_or_else(no_file)?;
                f.put_from(at, file.file(), abs as u64, data)?;
                file.release(abs, abs + data.len());
            }
            Packed::Owned { bytes, at } => {
                let (_, f) = open.as_mut().ok_or_else(no_file)?;
                f.put(at, &bytes)?;
            }
            Packed::Aligned { buf, lead, len, at } => {
                let (_, f) = open.as_mut().ok_or_else(no_file)?;
                if let Some(back) = f.put_owned(at, buf, lead, len)? {
                    let _ = pool.try_send(back);
                }
            }
            Packed::EndShard(i) => {
                let (oi, f) = open
                    .take()
                    .ok_or_else(|| Error::Internal("shard end without start".into()))?;
                if oi != i {
                    return Err(Error::Internal(format!("{}: ended out of order", plan.shards[i].file_name)));
                }
                results.push(f.finish()?);
                if let (Some(cb), Some(r)) = (on_shard, results.last()) {
                    cb(&dir.join(&plan.shards[i].file_name), r);
                }
            }
        }
        busy += t0.elapsed();
    }
    if results.len() != plan.shards.iter().filter(|s| !s.skip).count() {
        return Err(Error::Internal(
            "the pipeline stopped before every shard was written".into(),
        ));
    }
    Ok((results, busy))
}
