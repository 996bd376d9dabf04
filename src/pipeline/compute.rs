//! The compute stage and its engine, `Computer`: each tile becomes output bytes through a
//! [`Backend`] (the fast path) or the general path, into buffers from the fixed pool, placed at
//! the in-page offset their bytes have in the file.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;

use crate::compute::general::{self, DeltaRows, GeneralTile};
use crate::compute::{Backend, BaseRows, LoraRows, MergeTile};
use crate::error::{Error, Result};
use crate::format::dtype::FloatDtype;
use crate::format::dtype::{bf16_to_f32, decode_into, encode_into, f16_to_f32, float_of, round_through};
use crate::format::ggml::{bf16_bits, f16_bits};
use crate::format::ggml_rows::{encode_rows, Writer};
use crate::format::gguf::GgmlType;
use crate::plan::{BaseSrc, Extra, FactorSrc, FileRef, GgufEnc, LoraSrc, Op, Plan, Src};
use crate::writer::shard::{lead_for, AlignedBuf};

use super::read::{tile_ranges, Release};
use super::items::{TileRows, ExecConfig, Inputs, Packed, Work};

/// Factors of the tensor being computed, decoded to f32 once per tensor.
pub(super) enum Factors {
    Fast { a: Vec<f32>, b: Vec<f32> },
    General(GeneralFactors),
    None,
}

/// One delta's factors as f32: coef, basis, r, scale, rounding.
pub(super) type DeltaF32 = (Vec<f32>, Vec<f32>, usize, f32, Option<FloatDtype>);

/// Everything the general path needs for one tensor, as f32.
pub(super) struct GeneralFactors {
    deltas: Vec<DeltaF32>,
    magnitude: Option<Vec<f32>>,
    /// Sorted `(row, index)` pairs and the new rows.
    replace: Option<RowsF32>,
}

pub(super) type RowsF32 = (Vec<(u64, usize)>, Vec<f32>);

pub(super) fn adapter_f32(inputs: &Inputs<'_>, info: &crate::format::safetensors::TensorInfo, transpose: bool) -> Vec<f32> {
    let dt = float_of(info.dtype).unwrap_or(FloatDtype::F32);
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

pub(super) fn load_general(inputs: &Inputs<'_>, x: &Extra) -> GeneralFactors {
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
    pub(super) plan: &'p Plan,
    pub(super) inputs: Inputs<'a>,
    pub(super) backend: &'p dyn Backend,
    /// Cache key of the loaded factors (tensor index, or `tensors.len() + group`).
    pub(super) key: Option<usize>,
    pub(super) factors: Factors,
    pub(super) bytes: Vec<u8>,
    pub(super) f32s: Vec<f32>,
    /// Block absmax values of the quant group whose codes were last produced.
    pub(super) absmax: Option<(usize, Vec<f32>)>,
    /// The op whose factors are loaded: all its input ranges are released when the next
    /// tensor starts (catching pages faulted in around tile edges and by small helper tensors).
    pub(super) prev: Option<&'p Op>,
    /// A GGUF tile's merged 16-bit values, and the same as f32.
    pub(super) gguf_bytes: Vec<u8>,
    pub(super) gguf_vals: Vec<f32>,
    /// `gguf_bytes` are the tile's values, rows permuted, in this 16-bit type (the device
    /// k-quant path); `gguf_vals` is then filled only when a file needs f32.
    pub(super) gguf_half: Option<FloatDtype>,
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
            gguf_bytes: Vec::new(),
            gguf_vals: Vec::new(),
            gguf_half: None,
        }
    }

    pub(super) fn load(&mut self, key: usize, op: &'p Op) {
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
    pub(super) fn release_all(&self, op: &Op) {
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

    pub(super) fn base_rows(&self, base: &'p BaseSrc, cols: usize, row0: u64, rows: usize) -> (BaseRows<'a>, Release<'a>) {
        let inputs = &self.inputs;
        let ranges = tile_ranges(inputs, base, cols, row0, rows);
        match base {
            BaseSrc::Float(_, dt) => {
                // The tile's rows are the one input range `tile_ranges` computed.
                let (file, a, b) = ranges.0[0];
                (
                    BaseRows::Float {
                        bytes: &file.bytes()[a..b],
                        dtype: *dt,
                    },
                    ranges,
                )
            }
            BaseSrc::Bnb(q) => (BaseRows::Bnb(inputs.quant_view(q)), ranges),
        }
    }

    /// The tile's rows of `op` rounded to `out_dtype`, into `buf`. Returns "all finite".
    pub(super) fn encoded(
        &mut self,
        key: usize,
        op: &'p Op,
        tile: TileRows,
        out_dtype: FloatDtype,
        buf: &mut [u8],
    ) -> Result<bool> {
        let TileRows { cols, row0, rows } = tile;
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

    /// The tile's rows of a GGUF tensor as f32, into `self.gguf_vals`: the merged values exactly
    /// as `merged_16bit` writes them, then as the converter treats them (rows permuted, values
    /// shifted). Returns "all finite" of the merged values. [`Self::gguf_encode`] makes the bytes
    /// of each file that wants them.
    ///
    /// With a backend that quantizes k-quants on the device, 16-bit values stay 16-bit bytes
    /// (`self.gguf_bytes`, rows permuted) and become f32 only if a file needs them on the host.
    pub(super) fn gguf_values(
        &mut self,
        key: usize,
        op: &'p Op,
        tile: TileRows,
        g: &GgufEnc,
        rows_per_head: u64,
    ) -> Result<bool> {
        let n = tile.rows * tile.cols;
        let copy = match op {
            // A tensor the merge leaves alone (its bytes are what merged_16bit copies): its
            // values straight from the input, as a copy does not look at them.
            Op::Compute {
                base: base @ BaseSrc::Float(_, dt),
                lora: None,
                extra: None,
            } if *dt == g.merged => Some(base),
            _ => None,
        };
        let as_half = !g.add_one && g.merged != FloatDtype::F32 && !self.backend.device_kquants().is_empty();
        self.gguf_half = None;
        if as_half {
            let mut merged = std::mem::take(&mut self.gguf_bytes);
            merged.resize(n * 2, 0);
            let finite = match copy {
                Some(base) => {
                    self.load(key, op);
                    let (rows, release) = self.base_rows(base, tile.cols, tile.row0, tile.rows);
                    release.populate();
                    if let BaseRows::Float { bytes, .. } = rows {
                        merged.copy_from_slice(bytes);
                    }
                    release.run();
                    Ok(true)
                }
                None => self.encoded(key, op, tile, g.merged, &mut merged),
            };
            if g.heads.is_some() {
                permute_heads(&mut merged, tile.cols * 2, rows_per_head as usize);
            }
            self.gguf_bytes = merged;
            self.gguf_half = Some(g.merged);
            self.gguf_vals.clear();
            return finite;
        }
        let mut vals = std::mem::take(&mut self.gguf_vals);
        vals.resize(n, 0.0);
        let pool = self.backend.host_pool();
        let finite = match copy {
            Some(base) => {
                self.load(key, op);
                let (rows, release) = self.base_rows(base, tile.cols, tile.row0, tile.rows);
                release.populate();
                if let BaseRows::Float { bytes, dtype } = rows {
                    par_decode(pool, bytes, dtype, &mut vals);
                }
                release.run();
                true
            }
            None => {
                let mut merged = std::mem::take(&mut self.gguf_bytes);
                merged.resize(n * g.merged.size(), 0);
                let finite = self.encoded(key, op, tile, g.merged, &mut merged);
                par_decode(pool, &merged, g.merged, &mut vals);
                self.gguf_bytes = merged;
                finite?
            }
        };
        if g.heads.is_some() {
            permute_heads(&mut vals, tile.cols, rows_per_head as usize);
        }
        let add_one = g.add_one;
        // The converter adds in the checkpoint's dtype where it keeps it (f16; bf16 becomes f32).
        let add_in_f16 = g.merged == FloatDtype::F16;
        if add_one {
            on_pool(pool, || {
                vals.par_chunks_mut(1 << 16).for_each(|c| {
                    for v in c {
                        *v += 1.0;
                        if add_in_f16 {
                            *v = round_through(*v, FloatDtype::F16);
                        }
                    }
                })
            });
        }
        self.gguf_vals = vals;
        Ok(finite)
    }

    /// The bytes of one file's encoding of the values [`Self::gguf_values`] made: rounded through
    /// the intermediate GGUF's type where llama-quantize reads one, then encoded, row-parallel
    /// on the host, or a k-quant on the device when the backend has one.
    pub(super) fn gguf_encode(&mut self, g: &GgufEnc, cols: usize, out: &mut [u8]) -> Result<()> {
        let (enc, through) = (g.enc, g.through);
        let pool = self.backend.host_pool();
        if let Some(dt) = self.gguf_half {
            let device = enc.writer == Writer::Quantizer && self.backend.device_kquants().contains(&enc.ty);
            // The intermediate is the merged dtype itself (`through` is then left out).
            if device && through.is_none() {
                return self.backend.kquant(enc.ty, &self.gguf_bytes, dt == FloatDtype::F16, out);
            }
            if self.gguf_vals.is_empty() && !self.gguf_bytes.is_empty() {
                let mut vals = std::mem::take(&mut self.gguf_vals);
                vals.resize(self.gguf_bytes.len() / 2, 0.0);
                par_decode(pool, &self.gguf_bytes, dt, &mut vals);
                self.gguf_vals = vals;
            }
            if let (true, Some(t @ (GgmlType::F16 | GgmlType::Bf16))) = (device, through) {
                // The other 16-bit type (llama-quantize's f16 route from a bf16 checkpoint).
                let vals = &self.gguf_vals;
                let mut half = vec![0u8; vals.len() * 2];
                on_pool(pool, || {
                    half.par_chunks_mut(1 << 17).zip(vals.par_chunks(1 << 16)).for_each(|(h, v)| {
                        for (h, x) in h.chunks_exact_mut(2).zip(v) {
                            let b = if t == GgmlType::F16 { f16_bits(*x) } else { bf16_bits(*x) };
                            h.copy_from_slice(&b.to_le_bytes());
                        }
                    })
                });
                return self.backend.kquant(enc.ty, &half, t == GgmlType::F16, out);
            }
        }
        let vals = &self.gguf_vals;
        on_pool(pool, || match through {
            None => encode_rows(enc, vals, cols, out),
            Some(t) => {
                // Row groups of about 64k values, each rounded into its own scratch.
                let rb = enc.row_bytes(cols as u64).unwrap_or(0) as usize;
                let per = ((1 << 16) / cols.max(1)).max(1);
                vals.par_chunks(cols * per)
                    .zip(out.par_chunks_mut(rb * per))
                    .for_each(|(v, o)| {
                        let rounded: Vec<f32> = v
                            .iter()
                            .map(|x| match t {
                                GgmlType::F16 => f16_to_f32(f16_bits(*x)),
                                GgmlType::Bf16 => bf16_to_f32(bf16_bits(*x)),
                                _ => *x,
                            })
                            .collect();
                        encode_rows(enc, &rounded, cols, o);
                    })
            }
        });
        Ok(())
    }

    /// Rows of a general-path `op` (DoRA and friends) before any output rounding, rounded
    /// through `pre_round` when given, into `self.f32s`. Returns "all finite".
    pub(super) fn general_values(
        &mut self,
        key: usize,
        op: &'p Op,
        x: &Extra,
        tile: TileRows,
        pre_round: Option<FloatDtype>,
    ) -> Result<bool> {
        let TileRows { cols, row0, rows } = tile;
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
}

/// The fast path's tile (a plain LoRA or none) of rows `row0..row0+rows`, from the loaded
/// factors: `lora_B`'s rows of the tile, `lora_A` whole.
pub(super) fn fast_tile<'f>(
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

/// Undoes HF's rotary row order in place, head by head (`vals` holds whole heads of
/// `rows_per_head` rows): the converter's `permute`, `w.reshape(heads, 2, hr / 2, cols)
/// .swapaxes(1, 2)`, so row `j·2 + t` of a head comes from row `t·hr/2 + j`.
pub(super) fn permute_heads<T: Copy + Default>(vals: &mut [T], cols: usize, rows_per_head: usize) {
    let half = rows_per_head / 2;
    let head = rows_per_head * cols;
    if half == 0 || head == 0 {
        return;
    }
    let mut tmp = vec![T::default(); head];
    for h in vals.chunks_exact_mut(head) {
        for j in 0..half {
            for t in 0..2 {
                let src = (t * half + j) * cols;
                let dst = (j * 2 + t) * cols;
                tmp[dst..dst + cols].copy_from_slice(&h[src..src + cols]);
            }
        }
        h.copy_from_slice(&tmp);
    }
}

/// Decodes 16/32-bit bytes into f32 values, in parallel on `pool`.
fn par_decode(pool: Option<&rayon::ThreadPool>, bytes: &[u8], dt: FloatDtype, vals: &mut [f32]) {
    let step = 1 << 16;
    on_pool(pool, || {
        vals.par_chunks_mut(step)
            .zip(bytes.par_chunks(step * dt.size()))
            .for_each(|(v, b)| decode_into(b, dt, v))
    })
}

/// Runs `f` on `pool` (the backend's host pool, so rayon work inside it uses `--threads`
/// threads), or on the calling thread's default pool when there is none.
pub(super) fn on_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

pub(super) fn general_rows(
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

pub(super) fn compute_stage<'a>(
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
    // Files an interrupted run finished get no bytes (a lead may be one: its twins still do).
    let live = |t: &usize| !plan.shards[plan.tensors[*t].shard].skip;
    // A buffer for `len` bytes placed at in-page offset `lead`; waiting here for one is the
    // back-pressure from the disk. A tile larger than the plan's largest (never, by
    // construction) gets its own. `None`: the pipeline is stopping.
    let take = |lead: usize, len: usize| -> Option<(AlignedBuf, Duration)> {
        let t_wait = Instant::now();
        let buf = if lead + len <= pool_cap { pool.recv().ok()? } else { AlignedBuf::new(lead + len) };
        Some((buf, t_wait.elapsed()))
    };
    macro_rules! send {
        ($p:expr) => {
            if tx.send($p).is_err() {
                return Ok(busy);
            }
        };
    }
    for w in rx {
        match w {
            Work::StartShard(i) => send!(Packed::StartShard(i)),
            Work::EndShard(i) => send!(Packed::EndShard(i)),
            Work::Copy {
                shard,
                data,
                file,
                abs,
                at,
            } => send!(Packed::Borrowed {
                shard,
                data,
                file,
                abs,
                at
            }),
            Work::Part { tensor } => {
                for ti in plan.with_twins(tensor).filter(live) {
                    let t0 = Instant::now();
                    let t = &plan.tensors[ti];
                    let bytes = match &t.op {
                        Op::Quant { group, part } => c.quant_part(*group, *part, cfg.tile_bytes)?,
                        Op::Literal(b) => b.as_ref().clone(),
                        _ => return Err(Error::Internal(format!("part item for `{}`", t.name))),
                    };
                    if bytes.len() as u64 != t.nbytes {
                        return Err(Error::Internal(format!(
                            "`{}`: made {} bytes, planned {}",
                            t.name,
                            bytes.len(),
                            t.nbytes
                        )));
                    }
                    busy += t0.elapsed();
                    send!(Packed::Owned {
                        shard: t.shard,
                        bytes,
                        at: t.offset
                    });
                }
            }
            Work::Tile { tensor, row0, rows } => {
                let t = &plan.tensors[tensor];
                let rows_of = TileRows {
                    cols: t.cols as usize,
                    row0,
                    rows,
                };
                if let Some(g) = &t.gguf {
                    // The values once, then each file's bytes of them.
                    let t0 = Instant::now();
                    let finite = c.gguf_values(tensor, &t.op, rows_of, g, t.row_step())?;
                    if !finite && !cfg.allow_nonfinite {
                        return Err(Error::NonFinite { tensor: t.name.clone() });
                    }
                    busy += t0.elapsed();
                    for ti in plan.with_twins(tensor).filter(live) {
                        let tw = &plan.tensors[ti];
                        let Some(gw) = &tw.gguf else {
                            return Err(Error::Internal(format!("`{}`: a twin without an encoding", tw.name)));
                        };
                        let rb = tw.row_bytes();
                        let (skip, len) = (row0 * rb, rows * rb as usize);
                        let lead = lead_for(tw.offset + skip);
                        let Some((mut buf, _waited)) = take(lead, len) else {
                            return Ok(busy);
                        };
                        let t1 = Instant::now();
                        c.gguf_encode(gw, rows_of.cols, &mut buf.as_mut_slice()[lead..lead + len])?;
                        busy += t1.elapsed();
                        send!(Packed::Aligned {
                            shard: tw.shard,
                            buf,
                            lead,
                            len,
                            at: tw.offset + skip,
                        });
                    }
                    continue;
                }
                let t0 = Instant::now();
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
                let Some((mut buf, waited)) = take(lead, len) else {
                    return Ok(busy);
                };
                let out = &mut buf.as_mut_slice()[lead..lead + len];
                let finite = match (&t.op, out_dtype) {
                    (Op::Quant { group, .. }, _) => c.quant_codes(*group, row0, rows, Some(out))?,
                    (op, Some(dt)) => c.encoded(tensor, op, rows_of, dt, out)?,
                    (_, None) => return Err(Error::Internal(format!("`{}`: no output dtype", t.name))),
                };
                if !finite && !cfg.allow_nonfinite {
                    return Err(Error::NonFinite { tensor: t.name.clone() });
                }
                busy += t0.elapsed().saturating_sub(waited);
                send!(Packed::Aligned {
                    shard: t.shard,
                    buf,
                    lead,
                    len,
                    at: t.offset + skip,
                });
            }
        }
    }
    Ok(busy)
}
