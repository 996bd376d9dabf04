//! `save`: resolve → plan → preflight → execute → finish, for both save methods.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use crate::checkpoint::resolve::{resolve_adapter, resolve_base};
use crate::checkpoint::{Adapter, Checkpoint};
use crate::compute::cpu::CpuBackend;
use crate::compute::cuda::CudaBackend;
use crate::compute::Backend;
use crate::error::{Error, Result};
use crate::hub::push::{PushReport, Session};
use crate::hub::Need;
use crate::options::{DeviceChoice, SaveMethod, SaveOptions};
use crate::pipeline::OnShard;
use crate::pipeline::{execute, ExecConfig, Inputs, ShardResult, StageTimes};
use crate::plan::{describe, plan_adapter, plan_merged, MergeOpts, Plan, PlanCounts, QuantSpec};
use crate::writer::existing::{self, Existing};
use crate::writer::meta;
use crate::writer::resume::{self, RunKey};
use crate::writer::staging::Staging;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

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

const MANIFEST: &str = resume::MANIFEST;

fn poisoned<T>(_: T) -> Error {
    Error::Internal("a lock was poisoned by a panicking thread".into())
}

/// Saves according to `opts`. See the crate docs.
pub fn save(opts: &SaveOptions) -> Result<SaveReport> {
    let t0 = Instant::now();
    opts.validate()?;
    crate::sys::fix_malloc_threshold();
    let adapter_dir = resolve_adapter(&opts.adapter, &opts.hub)?;
    let adapter = Adapter::open(&adapter_dir)?;
    let base_dir = match opts.save_method {
        SaveMethod::Merged16bit | SaveMethod::Merged4bit => Some(resolve_base(
            &adapter_dir,
            opts.base.as_deref(),
            adapter.config.base_model_name_or_path.as_deref(),
            &opts.hub,
            Need::Base(opts.variant.as_deref()),
        )?),
        // A lora save only needs the base for tokenizer files; it is optional.
        SaveMethod::Lora => resolve_base(
            &adapter_dir,
            opts.base.as_deref(),
            adapter.config.base_model_name_or_path.as_deref(),
            &opts.hub,
            Need::Tokenizer,
        )
        .ok(),
    };
    let mut inputs_dirs = vec![adapter_dir.clone()];
    inputs_dirs.extend(base_dir.clone());
    existing::refuse_forbidden(&opts.out, &inputs_dirs)?;
    // What is at OUT decides, before any heavy work, whether this save may replace it.
    let at_out = existing::examine(&opts.out)?;
    if let Existing::NotOurs(why) = &at_out {
        return Err(Error::OutNotOurs {
            out: opts.out.clone(),
            why: why.clone(),
        });
    }

    let ck = match (opts.save_method, &base_dir) {
        (SaveMethod::Merged16bit | SaveMethod::Merged4bit, Some(b)) => {
            Some(Checkpoint::open_variant(b, opts.variant.as_deref())?)
        }
        _ => None,
    };
    let mut plan = match &ck {
        Some(ck) => plan_merged(
            ck,
            &adapter,
            &MergeOpts {
                dtype: opts.dtype,
                max_shard_size: opts.max_shard_size,
                order: opts.shard_order,
                variant: opts.variant.as_deref(),
                untie_embeddings: opts.untie_embeddings,
                quantize: (opts.save_method == SaveMethod::Merged4bit).then_some(QuantSpec {
                    quant_type: opts.quant_type,
                    blocksize: opts.blocksize,
                    double_quant: opts.double_quant,
                }),
            },
        )?,
        None => plan_adapter(&adapter, opts.dtype),
    };
    let free = crate::sys::free_space(&opts.out);
    let mut plan_text = describe(&plan, &opts.out, free);
    let mut report = SaveReport {
        out: opts.out.clone(),
        save_method: opts.save_method.as_str(),
        adapter: opts.adapter.clone(),
        base: base_dir.clone(),
        backend: String::new(),
        dry_run: opts.dry_run,
        counts: plan.counts.clone(),
        tensors: plan.tensors.len(),
        total_size: plan.total_size,
        bytes_written: 0,
        shards: Vec::new(),
        files: Vec::new(),
        free_disk: free,
        stages: StageTimes::default(),
        seconds: 0.0,
        peak_rss: None,
        warnings: plan.warnings.clone(),
        push: None,
        up_to_date: false,
        resumed_shards: 0,
        earlier_seconds: None,
        plan_text: String::new(),
    };
    let run = run_key(opts, &adapter, ck.as_ref())?;
    if at_out == Existing::Ours {
        // Like make: a finished OUT of the same inputs and options is up to date.
        if let Some(done) = resume::up_to_date(&opts.out, &run) {
            if opts.dry_run {
                plan_text.push_str(&format!(
                    "existing {}: a loraweld save of the same inputs and options: up to date, a run does nothing\n",
                    opts.out.display()
                ));
            } else if !opts.force {
                return Ok(up_to_date_report(report, done, t0));
            }
        } else if !opts.force && !opts.dry_run {
            return Err(Error::Usage(format!(
                "{}: holds a loraweld save of other inputs or options (use --force to replace it)",
                opts.out.display()
            )));
        }
    }
    if opts.dry_run && !plan_text.contains("up to date, a run does nothing") {
        plan_text.push_str(&format!(
            "existing {}: {}\n",
            opts.out.display(),
            at_out.describe(opts.force)
        ));
    }
    // Preflight, before any heavy work: weights plus a margin for the small files (and for the
    // 4-bit quant-state JSON, whose final length the stats pass sets), at OUT and, when output
    // is staged elsewhere, at the temporary location too (the final move then copies).
    let need = plan.file_bytes() + (1 << 20);
    let mut places = vec![(opts.out.clone(), free)];
    if let Some(t) = &opts.temporary_location {
        if !crate::sys::same_filesystem(t, &opts.out) {
            places.push((t.clone(), crate::sys::free_space(t)));
        }
    }
    // Test hook: LORAWELD_NO_DISK_PREFLIGHT=1 skips this check, so tests can fill a disk mid-write.
    let preflight = std::env::var_os("LORAWELD_NO_DISK_PREFLIGHT").is_none();
    for (path, free) in places.into_iter().filter(|_| preflight) {
        if let Some(f) = free {
            if f < need {
                return Err(Error::DiskFull { path, need, free: f });
            }
        }
    }
    let t_backend = Instant::now();
    let backend = pick_backend(opts)?;
    let backend_start_s = t_backend.elapsed().as_secs_f64();
    report.backend = backend.name();
    report.plan_text = plan_text;
    if opts.dry_run {
        report.seconds = t0.elapsed().as_secs_f64();
        report.peak_rss = crate::sys::peak_rss();
        return Ok(report);
    }

    // Pushing: token, username, repo and branch are settled before any heavy work.
    let session = match &opts.push_to_hub {
        Some(p) => Some(Session::start(p, &opts.hub)?),
        None => None,
    };
    let mut staging = Staging::create(&opts.out, opts.temporary_location.as_deref())?;
    let mut cfg = ExecConfig::from_budget(opts.maximum_memory_usage.bytes(), opts.allow_nonfinite);
    // Pushing: the packer also computes the LFS sha256 of each shard as it writes it.
    cfg.sha256 = session.is_some();
    let inputs = Inputs {
        base: ck.as_ref(),
        adapter: &adapter,
    };
    let t_stats = Instant::now();
    if !plan.quant_groups.is_empty() {
        // merged_4bit: block statistics first (the quant-state JSON sizes depend on them).
        crate::pipeline::quant_stats(&mut plan, inputs, backend.as_ref(), cfg)?;
    }
    let quant_stats_s = t_stats.elapsed().as_secs_f64();
    // Resume: keep the shards an interrupted run of the same inputs and options finished.
    let kept = resume::reusable(staging.path(), &run, &plan)?;
    for (s, k) in plan.shards.iter_mut().zip(&kept) {
        s.skip = k.is_some();
    }
    let done = std::sync::Mutex::new(
        kept.iter()
            .flatten()
            .map(|r| (r.file.clone(), r.clone()))
            .collect::<BTreeMap<_, _>>(),
    );
    resume::write_manifest(
        staging.path(),
        &resume::manifest(&run, &plan, &done.lock().map_err(poisoned)?.clone(), staging.path()),
    )?;
    let record = |_: &Path, r: &ShardResult| {
        if let Ok(mut d) = done.lock() {
            d.insert(r.file.clone(), r.clone());
            let _ = resume::write_manifest(staging.path(), &resume::manifest(&run, &plan, &d, staging.path()));
        }
    };
    let kept_paths: Vec<PathBuf> = kept.iter().flatten().map(|r| staging.path().join(&r.file)).collect();
    let written_bytes = AtomicU64::new(0);
    let total: u64 = plan.shards.iter().filter(|s| !s.skip).map(|s| s.file_len).sum();
    let resumed = plan.shards.iter().filter(|s| s.skip).count();
    let executed = crate::progress::while_drawing(opts.progress, total, resumed, &written_bytes, || {
        execute_and_upload(
            &plan,
            inputs,
            backend.as_ref(),
            staging.path(),
            cfg,
            session.as_ref(),
            &record,
            &kept_paths,
            Some(&written_bytes),
        )
    });
    let (written, stages) = match executed {
        Ok(x) => x,
        Err(Error::Interrupted { .. }) => {
            staging.keep();
            return Err(Error::Interrupted { out: opts.out.clone() });
        }
        Err(e) => return Err(e),
    };
    // Every planned shard, in plan order: kept ones from the earlier run, the rest just written.
    let mut by_file: BTreeMap<String, ShardResult> = written.into_iter().map(|r| (r.file.clone(), r)).collect();
    let mut shards = Vec::with_capacity(plan.shards.len());
    for (s, k) in plan.shards.iter().zip(kept) {
        match k.or_else(|| by_file.remove(&s.file_name)) {
            Some(r) => shards.push(r),
            None => return Err(Error::Internal(format!("{}: no result for shard", s.file_name))),
        }
    }
    report.resumed_shards = resumed;
    report.bytes_written = shards.iter().map(|s| s.bytes).sum();
    report.stages = StageTimes {
        backend_start_s,
        quant_stats_s,
        gpu: backend.gpu_times(),
        ..stages
    };
    let files = finish(
        &run,
        opts,
        &adapter,
        ck.as_ref(),
        base_dir.as_deref(),
        &plan,
        &shards,
        staging.path(),
        &report,
        t0,
    )?;
    if let Some(p) = &opts.push_to_hub {
        let card = staging.path().join("README.md");
        let text = std::fs::read_to_string(&card).map_err(|e| Error::io(&card, e))?;
        meta::write_file(
            staging.path(),
            "README.md",
            crate::hub::card::with_tags(&text, &p.tags).as_bytes(),
        )?;
    }
    staging.commit(&opts.out, opts.force)?;
    // The save is complete and in place; a failed push below leaves it there for `loraweld push`.
    if let Some(s) = &session {
        report.push = Some(s.finish(&opts.out, None)?);
    }

    report.shards = shards;
    report.files = files;
    report.seconds = t0.elapsed().as_secs_f64();
    report.peak_rss = crate::sys::peak_rss();
    Ok(report)
}

/// [`execute`], with each shard handed to the Hub session as soon as the packer closes it: an
/// uploader thread takes finished shard paths from a channel and sends them through LFS while
/// the pipeline goes on. The first error wins, the pipeline's before the uploader's.
#[allow(clippy::too_many_arguments)]
fn execute_and_upload(
    plan: &Plan,
    inputs: Inputs<'_>,
    backend: &dyn Backend,
    dir: &Path,
    cfg: ExecConfig,
    session: Option<&Session>,
    record: &OnShard<'_>,
    already_done: &[PathBuf],
    progress: Option<&AtomicU64>,
) -> Result<(Vec<ShardResult>, StageTimes)> {
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

/// `--device`: `cuda` fails when there is no usable GPU; `auto` takes the GPU when this build
/// has CUDA support and finds one, else the CPU, saying so in one line when a CUDA build could not
/// use the GPU. The GPU backend's device memory is capped by `--maximum-memory-usage` applied to
/// free VRAM.
fn pick_backend(opts: &SaveOptions) -> Result<Box<dyn Backend>> {
    match opts.device {
        DeviceChoice::Cpu => Ok(Box::new(CpuBackend::new(opts.threads)?)),
        DeviceChoice::Cuda => Ok(Box::new(CudaBackend::new(opts.maximum_memory_usage, opts.threads)?)),
        DeviceChoice::Auto => match CudaBackend::new(opts.maximum_memory_usage, opts.threads) {
            Ok(b) => Ok(Box::new(b)),
            Err(e) => {
                match e {
                    Error::CudaNotCompiled => {}
                    Error::NoCudaDevice { why } => {
                        eprintln!("loraweld: notice: no usable CUDA device ({why}); using the CPU")
                    }
                    e => eprintln!("loraweld: notice: the GPU backend failed to start ({e}); using the CPU"),
                }
                Ok(Box::new(CpuBackend::new(opts.threads)?))
            }
        },
    }
}

/// The report of a run that found OUT up to date: this run's counts and seconds, the earlier
/// run's backend, stage times and files.
fn up_to_date_report(mut report: SaveReport, done: resume::Finished, t0: Instant) -> SaveReport {
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

/// Writes everything around the shards into the staging dir; returns the file names.
#[allow(clippy::too_many_arguments)]
fn finish(
    run: &RunKey,
    opts: &SaveOptions,
    adapter: &Adapter,
    ck: Option<&Checkpoint>,
    base_dir: Option<&Path>,
    plan: &Plan,
    shards: &[ShardResult],
    dir: &Path,
    report: &SaveReport,
    t0: Instant,
) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let base_name = adapter.config.base_model_name_or_path.clone();
    match opts.save_method {
        SaveMethod::Lora => {
            meta::write_file(dir, "adapter_config.json", &adapter.config_bytes)?;
            files.push("adapter_config.json".into());
        }
        SaveMethod::Merged16bit | SaveMethod::Merged4bit => {
            if let Some(name) = &plan.index_name {
                meta::write_file(dir, name, meta::index_json(plan).as_bytes())?;
                files.push(name.clone());
            }
            if let Some(cfg) = ck.and_then(|c| c.config.as_ref()) {
                let mut v = if opts.save_method == SaveMethod::Merged4bit {
                    meta::quantized_config(cfg, plan.model_dtype, opts)
                } else {
                    meta::merged_config(cfg, plan.model_dtype)
                };
                if let serde_json::Value::Object(m) = &mut v {
                    for (k, val) in &plan.config_updates {
                        m.insert(k.clone(), val.clone());
                    }
                }
                meta::write_file(dir, "config.json", meta::config_text(&v).as_bytes())?;
                files.push("config.json".into());
            }
            for src in [Some(adapter.dir.as_path()), base_dir].into_iter().flatten() {
                let g = src.join("generation_config.json");
                if g.is_file() {
                    meta::copy_file(&g, dir, "generation_config.json")?;
                    files.push("generation_config.json".into());
                    break;
                }
            }
        }
    }
    let tok = meta::tokenizer_files(&adapter.dir, base_dir)?;
    files.extend(meta::write_tokenizer(&tok, dir, opts.padding_side)?);
    let is_adapter = opts.save_method == SaveMethod::Lora;
    let card = match adapter.dir.join("README.md") {
        p if is_adapter && p.is_file() => std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?,
        _ => meta::model_card(base_name.as_deref(), opts.save_method.as_str(), is_adapter),
    };
    meta::write_file(dir, "README.md", card.as_bytes())?;
    files.push("README.md".into());
    let done: BTreeMap<String, ShardResult> = shards.iter().map(|r| (r.file.clone(), r.clone())).collect();
    files.push(MANIFEST.into());
    // What an up-to-date re-run hands back: how this run went.
    let recorded = json!({
        "backend": report.backend,
        "stages": report.stages,
        "seconds": t0.elapsed().as_secs_f64(),
        "peak_rss": crate::sys::peak_rss(),
        "bytes_written": report.bytes_written,
        "resumed_shards": report.resumed_shards,
        "warnings": report.warnings,
    });
    resume::write_manifest(dir, &resume::final_manifest(run, plan, &done, dir, &files, recorded))?;
    Ok(files)
}

/// The inputs and options that decide the output bytes (the run's fingerprint).
fn run_key(opts: &SaveOptions, adapter: &Adapter, ck: Option<&Checkpoint>) -> Result<RunKey> {
    let mut inputs = vec![
        adapter.weights_path().to_path_buf(),
        adapter.dir.join("adapter_config.json"),
    ];
    if let Some(c) = ck {
        inputs.extend(c.files());
        let cfg = c.dir.join("config.json");
        if cfg.is_file() {
            inputs.push(cfg);
        }
    }
    let options = json!({
        "save_method": opts.save_method.as_str(),
        "dtype": opts.dtype.map(|d| d.torch_name()),
        "max_shard_size": opts.max_shard_size,
        "variant": opts.variant,
        "shard_order": format!("{:?}", opts.shard_order).to_lowercase(),
        "padding_side": format!("{:?}", opts.padding_side).to_lowercase(),
        "untie_embeddings": opts.untie_embeddings,
        "quant_type": opts.quant_type.as_str(),
        "blocksize": opts.blocksize,
        "double_quant": opts.double_quant,
        "allow_nonfinite": opts.allow_nonfinite,
    });
    RunKey::new(&inputs, options)
}
