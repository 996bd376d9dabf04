//! The packer: writes every planned file through the output-format seam.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::plan::Plan;
pub use crate::writer::shard::ShardResult;
use crate::writer::output::{OutputFile, OutputOptions};
use crate::writer::shard::AlignedBuf;

use super::items::{ExecConfig, OnShard, Packed};

/// Writes every file the plan assigns, through the output-format seam: each planned file is
/// begun with its head, gets every piece at its planned offset, and is finished (hashed,
/// synced, checked against its planned length).
pub(super) fn pack_stage(
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
    // Files written in lockstep are open together.
    let mut open: std::collections::BTreeMap<usize, OutputFile> = std::collections::BTreeMap::new();
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
                let f = if sh.scattered {
                    let data = sh.tensors.iter().map(|&t| plan.tensors[t].nbytes).sum();
                    OutputFile::begin_scattered(dir, &sh.file_name, &sh.head, sh.file_len, data, opts)?
                } else {
                    OutputFile::begin(dir, &sh.file_name, &sh.head, sh.file_len, pool.clone(), opts)?
                };
                open.insert(i, f);
            }
            Packed::Borrowed {
                shard,
                data,
                file,
                abs,
                at,
            } => {
                let f = open.get_mut(&shard).ok_or_else(no_file)?;
                f.put_from(at, file.file(), abs as u64, data)?;
                file.release(abs, abs + data.len());
            }
            Packed::Owned { shard, bytes, at } => {
                let f = open.get_mut(&shard).ok_or_else(no_file)?;
                f.put(at, &bytes)?;
            }
            Packed::Aligned {
                shard,
                buf,
                lead,
                len,
                at,
            } => {
                let f = open.get_mut(&shard).ok_or_else(no_file)?;
                if let Some(back) = f.put_owned(at, buf, lead, len)? {
                    let _ = pool.try_send(back);
                }
            }
            Packed::EndShard(i) => {
                let f = open
                    .remove(&i)
                    .ok_or_else(|| Error::Internal("shard end without start".into()))?;
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
