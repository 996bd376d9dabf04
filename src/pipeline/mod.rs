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

mod compute;
mod items;
mod pack;
mod read;
mod requant;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crossbeam_channel::bounded;

use crate::compute::Backend;
use crate::error::{Error, Result};
use crate::format::dtype::float_of;
use crate::plan::{Op, Plan, QuantPart};
pub use crate::writer::shard::ShardResult;
use crate::writer::shard::AlignedBuf;

use compute::compute_stage;
use items::{tiles, Packed, Work};
pub use items::{ExecConfig, Inputs, OnShard, StageTimes};
use pack::pack_stage;
use read::read_stage;
pub use requant::quant_stats;

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
            Op::Compute { .. } if t.gguf.is_some() => {
                let rows = tiles(t.rows, t.cols, t.row_step(), tile_bytes).iter().map(|&(_, n)| n).max()?;
                Some((rows * t.row_bytes()) as usize + 4096)
            }
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
