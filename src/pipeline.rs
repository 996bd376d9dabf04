//! Execute a [`Plan`]: three stages joined by bounded channels.
//!
//! ```text
//! reader ──(Work)──► compute ──(Packed)──► packer
//! slices of the maps   tiles → bytes        shard files, blake3
//! ```
//! * **reader** walks the plan in output-file order and hands out zero-copy slices of the
//!   mapped inputs and row tiles, asking the kernel to read ahead (`MADV_WILLNEED`).
//! * **compute** turns each tile into output bytes through a [`Backend`], reusing pooled buffers.
//! * **packer** writes each shard front to back (header first), hashes it with blake3, syncs it,
//!   and releases consumed input pages.
//!
//! Memory is bounded by the channel depth × the tile size, not by the model. The first error
//! wins; "channel closed" errors in other stages are its consequences and are dropped.

use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::checkpoint::mmap::MappedFile;
use crate::checkpoint::{Adapter, Checkpoint};
use crate::compute::general::{self, DeltaRows, GeneralTile};
use crate::compute::{Backend, BaseRows, LoraRows, MergeTile};
use crate::error::{Error, Result};
use crate::plan::{BaseSrc, Extra, FactorSrc, FileRef, Op, Plan, QuantSrc, Src};
use crate::quant::bnb::{AbsmaxRef, QuantView};
use crate::quant::dtype::{decode_into, encode_into, float_of, round_through};
use crate::writer::shard::ShardWriter;

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
}

impl ExecConfig {
    /// Derives tile size and depth from a budget in bytes: about a sixteenth of the budget per
    /// tile, between 1 MiB and 64 MiB, with two items in flight per channel.
    pub fn from_budget(budget: u64, allow_nonfinite: bool) -> Self {
        let tile = (budget / 16).clamp(1 << 20, 64 << 20) as usize;
        ExecConfig {
            tile_bytes: tile,
            depth: 2,
            allow_nonfinite,
        }
    }
}

/// One written shard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardResult {
    /// File name.
    pub file: String,
    /// File bytes.
    pub bytes: u64,
    /// blake3 of the whole file, hex.
    pub blake3: String,
}

/// Called by the packer with each shard's path once it is complete and synced (the Hub push
/// uploads it from there while the pipeline goes on). It must not block for long.
pub type OnShard = dyn Fn(&Path, &ShardResult) + Sync;

/// Busy time per stage.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageTimes {
    /// Reader busy seconds.
    pub read_s: f64,
    /// Compute busy seconds.
    pub compute_s: f64,
    /// Packer busy seconds (writing + hashing + syncing).
    pub pack_s: f64,
}

enum Work<'a> {
    StartShard(usize),
    Copy {
        data: &'a [u8],
        file: &'a MappedFile,
        abs: usize,
    },
    Tile {
        tensor: usize,
        row0: u64,
        rows: usize,
    },
    EndShard(usize),
}

enum Packed<'a> {
    StartShard(usize),
    Borrowed {
        data: &'a [u8],
        file: &'a MappedFile,
        abs: usize,
    },
    Owned(Vec<u8>),
    EndShard(usize),
}

/// Runs the plan, writing every shard into `dir`.
pub fn execute(
    plan: &Plan,
    inputs: Inputs<'_>,
    backend: &dyn Backend,
    dir: &Path,
    cfg: ExecConfig,
    on_shard: Option<&OnShard>,
) -> Result<(Vec<ShardResult>, StageTimes)> {
    let (work_tx, work_rx) = bounded::<Work>(cfg.depth);
    let (pack_tx, pack_rx) = bounded::<Packed>(cfg.depth);
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(cfg.depth * 2 + 2);
    std::thread::scope(|s| {
        let reader = s.spawn(|| read_stage(plan, inputs, cfg, work_tx));
        let compute = s.spawn(|| compute_stage(plan, inputs, backend, cfg, work_rx, pack_tx, pool_rx));
        let packer = s.spawn(|| pack_stage(plan, dir, pack_rx, pool_tx, on_shard));
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
            },
        ))
    })
}

fn read_stage<'a>(plan: &Plan, inputs: Inputs<'a>, cfg: ExecConfig, tx: Sender<Work<'a>>) -> Result<Duration> {
    let mut busy = Duration::ZERO;
    for (si, shard) in plan.shards.iter().enumerate() {
        if tx.send(Work::StartShard(si)).is_err() {
            return Ok(busy);
        }
        for &ti in &shard.tensors {
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
                        });
                        if data.is_empty() {
                            break;
                        }
                        off = end;
                    }
                }
                Op::Compute { .. } => {
                    let row_bytes = (t.cols as usize * 4).max(1);
                    let rows_per = (cfg.tile_bytes / row_bytes).max(1) as u64;
                    let mut r = 0;
                    while r < t.rows {
                        let n = rows_per.min(t.rows - r);
                        items.push(Work::Tile {
                            tensor: ti,
                            row0: r,
                            rows: n as usize,
                        });
                        r += n;
                    }
                }
            }
            busy += t0.elapsed();
            for it in items {
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
enum Current {
    Fast { tensor: usize, a: Vec<f32>, b: Vec<f32> },
    General { tensor: usize, f: GeneralFactors },
}

impl Current {
    fn tensor(&self) -> usize {
        match self {
            Current::Fast { tensor, .. } | Current::General { tensor, .. } => *tensor,
        }
    }
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

fn adapter_f32(inputs: &Inputs<'_>, info: &crate::checkpoint::safetensors::TensorInfo, transpose: bool) -> Vec<f32> {
    let dt = float_of(info.dtype).unwrap_or(crate::options::FloatDtype::F32);
    let mut v = vec![0f32; info.numel() as usize];
    decode_into(
        inputs.data(&Src {
            file: FileRef::Adapter,
            info: info.clone(),
        }),
        dt,
        &mut v,
    );
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

fn compute_stage<'a>(
    plan: &Plan,
    inputs: Inputs<'a>,
    backend: &dyn Backend,
    cfg: ExecConfig,
    rx: Receiver<Work<'a>>,
    tx: Sender<Packed<'a>>,
    pool: Receiver<Vec<u8>>,
) -> Result<Duration> {
    let mut busy = Duration::ZERO;
    let mut cur: Option<Current> = None;
    let mut scratch: Vec<f32> = Vec::new();
    for w in rx {
        let out = match w {
            Work::StartShard(i) => Packed::StartShard(i),
            Work::EndShard(i) => Packed::EndShard(i),
            Work::Copy { data, file, abs } => Packed::Borrowed { data, file, abs },
            Work::Tile { tensor, row0, rows } => {
                let t0 = Instant::now();
                let t = &plan.tensors[tensor];
                let Op::Compute { base, lora, extra } = &t.op else {
                    return Err(Error::Internal(format!("tile for copied tensor `{}`", t.name)));
                };
                let out_dtype =
                    float_of(t.dtype).ok_or_else(|| Error::Internal(format!("`{}` is not a float output", t.name)))?;
                if cur.as_ref().map(Current::tensor) != Some(tensor) {
                    cur = match (lora, extra) {
                        (Some(l), _) => Some(Current::Fast {
                            tensor,
                            a: adapter_f32(&inputs, &l.a, false),
                            b: adapter_f32(&inputs, &l.b, false),
                        }),
                        (None, Some(x)) => Some(Current::General {
                            tensor,
                            f: load_general(&inputs, x),
                        }),
                        (None, None) => None,
                    };
                }
                let cols = t.cols as usize;
                let (base_rows, release) = match base {
                    BaseSrc::Float(src, dt) => {
                        let data = inputs.data(src);
                        let rb = cols * dt.size();
                        let s = row0 as usize * rb;
                        let e = s + rows * rb;
                        let abs = inputs.abs(src);
                        (
                            BaseRows::Float {
                                bytes: &data[s..e],
                                dtype: *dt,
                            },
                            (inputs.file(src.file), abs + s, abs + e),
                        )
                    }
                    BaseSrc::Bnb(q) => {
                        let abs = inputs.abs(&q.codes);
                        let k0 = row0 as usize * cols;
                        let k1 = k0 + rows * cols;
                        (
                            BaseRows::Bnb(inputs.quant_view(q)),
                            (inputs.file(q.codes.file), abs + k0 / 2, abs + k1 / 2),
                        )
                    }
                };
                let out_len = rows * cols * out_dtype.size();
                // Pooled buffers keep their contents: resizing only zero-fills new bytes.
                let mut buf = pool.try_recv().unwrap_or_default();
                buf.resize(out_len, 0);
                let finite = match (&cur, extra) {
                    (Some(Current::General { f, .. }), Some(x)) => {
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
                            base: base_rows,
                            deltas: &deltas,
                            magnitude: f.magnitude.as_deref(),
                            replace: f.replace.as_ref().map(|(i, r)| (&i[..], &r[..])),
                            work_dtype: x.work_dtype,
                        };
                        scratch.resize(rows * cols, 0.0);
                        general::compute(&gt, &mut scratch);
                        encode_into(&scratch, out_dtype, &mut buf);
                        scratch.iter().all(|v| round_through(*v, out_dtype).is_finite())
                    }
                    _ => {
                        let lora_rows = match (lora, &cur) {
                            (Some(l), Some(Current::Fast { a, b, .. })) => Some(LoraRows {
                                a,
                                b: &b[row0 as usize * l.r..(row0 as usize + rows) * l.r],
                                r: l.r,
                                scale: l.scale,
                                delta_dtype: l.dtype,
                            }),
                            _ => None,
                        };
                        let tile = MergeTile {
                            row0,
                            rows,
                            cols,
                            base: base_rows,
                            lora: lora_rows,
                            out_dtype,
                        };
                        backend.merge_tile(&tile, &mut buf)?
                    }
                };
                if !finite && !cfg.allow_nonfinite {
                    return Err(Error::NonFinite { tensor: t.name.clone() });
                }
                release.0.release(release.1, release.2);
                busy += t0.elapsed();
                Packed::Owned(buf)
            }
        };
        if tx.send(out).is_err() {
            return Ok(busy);
        }
    }
    Ok(busy)
}

fn pack_stage(
    plan: &Plan,
    dir: &Path,
    rx: Receiver<Packed<'_>>,
    pool: Sender<Vec<u8>>,
    on_shard: Option<&OnShard>,
) -> Result<(Vec<ShardResult>, Duration)> {
    let mut busy = Duration::ZERO;
    let mut results = Vec::with_capacity(plan.shards.len());
    let mut open: Option<(usize, ShardWriter, blake3::Hasher, u64)> = None;
    for p in rx {
        let t0 = Instant::now();
        match p {
            Packed::StartShard(i) => {
                let sh = &plan.shards[i];
                let path = dir.join(&sh.file_name);
                let mut f = ShardWriter::create(&path)?;
                f.write(&sh.header)?;
                let mut h = blake3::Hasher::new();
                h.update(&sh.header);
                open = Some((i, f, h, sh.header.len() as u64));
            }
            Packed::Borrowed { data, file, abs } => {
                let (_, f, h, n) = open
                    .as_mut()
                    .ok_or_else(|| Error::Internal("data before shard start".into()))?;
                f.write(data)?;
                h.update(data);
                *n += data.len() as u64;
                file.release(abs, abs + data.len());
            }
            Packed::Owned(buf) => {
                let (_, f, h, n) = open
                    .as_mut()
                    .ok_or_else(|| Error::Internal("data before shard start".into()))?;
                f.write(&buf)?;
                h.update(&buf);
                *n += buf.len() as u64;
                let _ = pool.try_send(buf);
            }
            Packed::EndShard(i) => {
                let (oi, f, h, n) = open
                    .take()
                    .ok_or_else(|| Error::Internal("shard end without start".into()))?;
                let sh = &plan.shards[i];
                let path = dir.join(&sh.file_name);
                if oi != i || n != sh.file_len {
                    return Err(Error::Internal(format!(
                        "{}: wrote {n} bytes, planned {}",
                        path.display(),
                        sh.file_len
                    )));
                }
                let len = f.finish()?;
                if len != n {
                    return Err(Error::Internal(format!(
                        "{}: file is {len} bytes, wrote {n}",
                        path.display()
                    )));
                }
                results.push(ShardResult {
                    file: sh.file_name.clone(),
                    bytes: n,
                    blake3: h.finalize().to_hex().to_string(),
                });
                if let (Some(cb), Some(r)) = (on_shard, results.last()) {
                    cb(&path, r);
                }
            }
        }
        busy += t0.elapsed();
    }
    if results.len() != plan.shards.len() {
        return Err(Error::Internal(
            "the pipeline stopped before every shard was written".into(),
        ));
    }
    Ok((results, busy))
}
