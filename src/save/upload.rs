//! The pipeline with a Hub push riding along: each shard is uploaded as soon as the packer
//! closes it, while the merge goes on.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use crate::compute::Backend;
use crate::error::{Error, Result};
use crate::hub::push::Session;
use crate::pipeline::{execute, ExecConfig, Inputs, OnShard, ShardResult, StageTimes};
use crate::plan::Plan;

/// What one execution of the pipeline needs.
#[derive(Clone, Copy)]
pub(super) struct Execution<'a> {
    pub plan: &'a Plan,
    pub inputs: Inputs<'a>,
    pub backend: &'a dyn Backend,
    pub dir: &'a Path,
    pub cfg: ExecConfig,
    /// Bytes written so far, for the progress bar.
    pub progress: Option<&'a AtomicU64>,
}

/// [`execute`], with each shard handed to the Hub session as soon as the packer closes it: an
/// uploader thread takes finished shard paths from a channel and sends them through LFS while
/// the pipeline goes on. The first error wins, the pipeline's before the uploader's.
pub(super) fn execute_and_upload(
    run: &Execution<'_>,
    session: Option<&Session>,
    record: &OnShard<'_>,
    already_done: &[PathBuf],
) -> Result<(Vec<ShardResult>, StageTimes)> {
    let Execution {
        plan,
        inputs,
        backend,
        dir,
        cfg,
        progress,
    } = *run;
    let Some(session) = session else {
        return execute(plan, inputs, backend, dir, cfg, Some(record), progress);
    };
    // Unbounded on purpose: an item is a path, and the packer must never wait for the network.
    let (tx, rx) = crossbeam_channel::unbounded::<PathBuf>();
    for p in already_done {
        let _ = tx.send(p.clone());
    }
    std::thread::scope(|s| {
        let uploader = std::thread::Builder::new()
            .name("loraweld.upload".into())
            .spawn_scoped(s, move || -> Result<()> {
                for path in rx {
                    session.upload_early(&path)?;
                }
                Ok(())
            })
            .map_err(|e| Error::Internal(format!("starting the upload thread: {e}")))?;
        let on_shard = move |path: &Path, r: &ShardResult| {
            record(path, r);
            if let Some(sha) = &r.sha256 {
                session.record_hash(&r.file, sha, r.bytes);
            }
            let _ = tx.send(path.to_path_buf());
        };
        let done = execute(plan, inputs, backend, dir, cfg, Some(&on_shard), progress);
        drop(on_shard);
        let uploaded = uploader
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the upload thread panicked".into())));
        let done = done?;
        uploaded?;
        Ok(done)
    })
}
