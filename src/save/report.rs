//! What a save did: the report behind `--json`, and the one an up-to-date re-run hands back.

use std::path::PathBuf;
use std::time::Instant;

use crate::hub::push::PushReport;
use crate::pipeline::{ShardResult, StageTimes};
use crate::plan::PlanCounts;
use crate::writer::resume;

/// What a save did: the machine-readable report behind `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SaveReport {
    /// The output directory.
    pub out: PathBuf,
    /// `lora` or `merged_16bit`.
    pub save_method: &'static str,
    /// The adapter directory.
    pub adapter: PathBuf,
    /// The base directory used, if any.
    pub base: Option<PathBuf>,
    /// The compute backend.
    pub backend: String,
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// Tensor counts by operation.
    pub counts: PlanCounts,
    /// Output tensors.
    pub tensors: usize,
    /// Sum of tensor data bytes.
    pub total_size: u64,
    /// Bytes of all weight files.
    pub bytes_written: u64,
    /// Written shards with their blake3 hashes.
    pub shards: Vec<ShardResult>,
    /// Other files written (config, tokenizer, card, index, manifest).
    pub files: Vec<String>,
    /// Free disk at the output before the run.
    pub free_disk: Option<u64>,
    /// Busy time per stage.
    pub stages: StageTimes,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Peak RSS of this process (VmHWM).
    pub peak_rss: Option<u64>,
    /// One-line warnings (e.g. a LoRA merged into tied embeddings).
    pub warnings: Vec<String>,
    /// One-line notices: what the run chose for itself (the CPU, when `--device auto` found no
    /// usable GPU).
    pub notices: Vec<String>,
    /// OUT was already a finished save of the same inputs and options: nothing was done.
    pub up_to_date: bool,
    /// Shards kept from an interrupted earlier run.
    pub resumed_shards: usize,
    /// With `up_to_date`: the wall-clock seconds of the run that wrote OUT (its backend and stage
    /// times are in `backend` and `stages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earlier_seconds: Option<f64>,
    /// The push to the Hub, with `--push-to-hub`: username, commit URL, what was sent.
    pub push: Option<PushReport>,
    /// The plan as text (for `--dry-run`).
    #[serde(skip)]
    pub plan_text: String,
}

impl SaveReport {
    /// The report of a planned save, before anything ran.
    pub(super) fn planned(
        opts: &crate::options::SaveOptions,
        plan: &crate::plan::Plan,
        base: Option<PathBuf>,
        free_disk: Option<u64>,
    ) -> Self {
        SaveReport {
            out: opts.out.clone(),
            save_method: plan.job.method.as_str(),
            adapter: opts.adapter.clone(),
            base,
            backend: String::new(),
            dry_run: opts.dry_run,
            counts: plan.counts.clone(),
            tensors: plan.tensors.len(),
            total_size: plan.total_size,
            bytes_written: 0,
            shards: Vec::new(),
            files: Vec::new(),
            free_disk,
            stages: StageTimes::default(),
            seconds: 0.0,
            peak_rss: None,
            warnings: plan.warnings.clone(),
            notices: Vec::new(),
            up_to_date: false,
            resumed_shards: 0,
            earlier_seconds: None,
            push: None,
            plan_text: String::new(),
        }
    }

    /// Stamps the wall time and peak RSS.
    pub(super) fn done(mut self, t0: Instant) -> Self {
        self.seconds = t0.elapsed().as_secs_f64();
        self.peak_rss = crate::sys::peak_rss();
        self
    }
}

/// The report of a run that found OUT up to date: this run's counts and seconds, the earlier
/// run's backend, stage times and files.
pub(super) fn up_to_date_report(mut report: SaveReport, done: resume::Finished, t0: Instant) -> SaveReport {
    let earlier = &done.report;
    report.up_to_date = true;
    report.bytes_written = 0;
    report.shards = done.shards;
    report.files = done.files;
    report.backend = earlier
        .get("backend")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    report.stages = earlier
        .get("stages")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    report.earlier_seconds = earlier.get("seconds").and_then(|v| v.as_f64());
    report.seconds = t0.elapsed().as_secs_f64();
    report.peak_rss = crate::sys::peak_rss();
    report
}
