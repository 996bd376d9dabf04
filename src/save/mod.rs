//! `save`, the story of one save in the order it happens: the job decided from the options →
//! the inputs found → what is at `OUT` → the plan → up to date? → disk preflight → (a dry run
//! stops here) → the backend → the `merged_4bit` stats pass → resume → the pipeline (with the
//! Hub upload and progress reports) → the files around the shards → the rename → the push.

mod finish;
mod progress;
mod report;
mod upload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use crate::checkpoint::{Adapter, Checkpoint};
use crate::compute::{self, Backend};
use crate::error::{Error, Result};
use crate::hub::push::Session;
use crate::hub::Need;
use crate::gguf::Model;
use crate::job::{Job, SaveMethod};
use crate::options::SaveOptions;
use crate::pipeline::{ExecConfig, Inputs, ShardResult, StageTimes};
use crate::plan::{describe, plan_adapter, plan_gguf, plan_lora_gguf, plan_merged, Plan};
use crate::progress::ProgressHook;
use crate::resolve::{resolve_adapter, resolve_base};
use crate::writer::existing::{self, Existing};
use crate::writer::meta;
use crate::writer::resume::{self, RunKey};
use crate::writer::staging::Staging;

pub use report::SaveReport;

/// Saves according to `opts`. See the crate docs.
pub fn save(opts: &SaveOptions) -> Result<SaveReport> {
    let t0 = Instant::now();
    let job = opts.job()?;
    crate::sys::fix_malloc_threshold();
    // The backend (for CUDA a context, buffers and kernels: 0.2-0.3 s) starts while the inputs
    // are resolved and planned (a GGUF's tokenizer takes as long again); a dry run starts none.
    let starting = (!opts.dry_run).then(|| {
        let (choice, budget) = (job.backend, job.budget);
        std::thread::spawn(move || {
            let t = Instant::now();
            compute::start::start(&choice, &budget).map(|(b, notice)| (b, notice, t.elapsed().as_secs_f64()))
        })
    });
    let found = Found::resolve(opts, &job)?;
    let at_out = check_out(&opts.out, &found)?;
    let mut plan = match &found.base {
        Some(ck) if job.method == SaveMethod::Gguf => plan_gguf(ck, &found.adapter, &job, &gguf_model(opts, &found, ck)?)?,
        Some(ck) => plan_merged(ck, &found.adapter, &job)?,
        None if job.gguf().is_some() => plan_lora_gguf(&found.adapter, &job, &lora_model(opts, &found)?)?,
        None => plan_adapter(&found.adapter, &job),
    };
    let run = finish::run_key(&job, &found.adapter, found.base.as_ref(), found.base_dir.as_deref())?;
    let free = crate::sys::free_space(&opts.out);
    let mut report = SaveReport::planned(opts, &plan, found.base_dir.clone(), free);
    report.plan_text = describe(&plan, &opts.out, free);
    if let Some(done) = existing_output(opts, &at_out, &run, &mut report.plan_text)? {
        return Ok(report::up_to_date_report(report, done, t0));
    }
    preflight(opts, &job, &plan, free)?;
    if opts.dry_run {
        report.backend = compute::start::describe_choice(&job.backend);
        return Ok(report.done(t0));
    }

    let (backend, notice, backend_start_s) = starting
        .ok_or_else(|| Error::Internal("no backend started".into()))?
        .join()
        .map_err(|_| Error::Internal("the backend's start panicked".into()))??;
    report.backend = backend.name();
    report.notices.extend(notice);
    // Pushing: token, username, repo and branch are settled before any heavy work.
    let session = match &opts.push_to_hub {
        Some(p) => Some(Session::start(p, &opts.hub)?),
        None => None,
    };
    let mut staging = Staging::create(&opts.out, opts.temporary_location.as_deref())?;
    let mut cfg = ExecConfig::from_budget(job.budget.host_bytes, job.allow_nonfinite);
    // Pushing: the packer also computes the LFS sha256 of each shard as it writes it.
    cfg.sha256 = session.is_some();
    cfg.copy_file_range = job.hooks.copy_file_range;
    let inputs = Inputs {
        base: found.base.as_ref(),
        adapter: &found.adapter,
    };
    let t_stats = Instant::now();
    if !plan.quant_groups.is_empty() {
        // merged_4bit: block statistics first (the quant-state JSON sizes depend on them).
        crate::pipeline::quant_stats(&mut plan, inputs, backend.as_ref(), cfg)?;
    }
    let quant_stats_s = t_stats.elapsed().as_secs_f64();
    // Resume: keep the shards an interrupted run of the same job finished; they are skipped.
    let kept = resume::reusable(staging.path(), &run, &plan.shards)?;
    for (s, k) in plan.shards.iter_mut().zip(&kept) {
        s.skip = k.is_some();
    }
    let run_on = Run {
        plan: &plan,
        kept,
        inputs,
        backend: backend.as_ref(),
        cfg,
        session: session.as_ref(),
        key: &run,
        progress: opts.progress.as_ref(),
    };
    let (shards, stages, resumed) = match run_on.execute(&mut staging) {
        Err(Error::Interrupted { .. }) => {
            staging.keep();
            return Err(Error::Interrupted { out: opts.out.clone() });
        }
        r => r?,
    };
    report.resumed_shards = resumed;
    report.bytes_written = shards.iter().map(|s| s.bytes).sum();
    report.stages = StageTimes {
        backend_start_s,
        quant_stats_s,
        gpu: backend.gpu_times(),
        ..stages
    };
    if opts.process_exits_after {
        // The process ends right after: the OS reclaims the backend (a GPU context) faster.
        std::mem::forget(backend);
    }
    let around = finish::Around {
        run: &run,
        adapter: &found.adapter,
        base: found.base.as_ref(),
        base_dir: found.base_dir.as_deref(),
        plan: &plan,
        shards: &shards,
        dir: staging.path(),
    };
    let files = finish::finish(&around, &report, t0)?;
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
    Ok(report.done(t0))
}

/// The inputs, found: the adapter, and the base when the job merges (for a `lora` save only
/// its directory, for tokenizer files, when it can be found).
struct Found {
    adapter: Adapter,
    base_dir: Option<PathBuf>,
    base: Option<Checkpoint>,
}

impl Found {
    fn resolve(opts: &SaveOptions, job: &Job) -> Result<Self> {
        let adapter_dir = resolve_adapter(&opts.adapter, &opts.hub)?;
        let adapter = Adapter::open(&adapter_dir)?;
        let (_, _, variant) = job.safetensors_layout();
        let base_dir = |need| {
            resolve_base(
                &adapter_dir,
                opts.base.as_deref(),
                adapter.config.base_model_name_or_path.as_deref(),
                &opts.hub,
                need,
            )
        };
        let (base_dir, base) = if job.method.merges() {
            let dir = base_dir(Need::Base(variant))?;
            let ck = Checkpoint::open_variant(&dir, variant)?;
            (Some(dir), Some(ck))
        } else {
            (base_dir(Need::Tokenizer).ok(), None)
        };
        Ok(Found {
            adapter,
            base_dir,
            base,
        })
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.adapter.dir.clone()];
        v.extend(self.base_dir.clone());
        v
    }
}

/// What the converter would read for a GGUF save: the base's config, the tokenizer files the
/// merged checkpoint would hold (the adapter's own set, else the base's), the generation config
/// (the adapter's, else the base's), and the name (`--model-name`, else the base's).
fn gguf_model(opts: &SaveOptions, found: &Found, ck: &Checkpoint) -> Result<Model> {
    let cfg_path = ck.dir.join("config.json");
    let config = ck
        .config
        .as_ref()
        .ok_or_else(|| Error::NotFound { path: cfg_path.clone() })?;
    let tok = meta::tokenizer_files(&found.adapter.dir, found.base_dir.as_deref())?;
    let tok_dir = tok
        .first()
        .and_then(|p| p.parent())
        .unwrap_or(ck.dir.as_path())
        .to_path_buf();
    let generation = [Some(found.adapter.dir.as_path()), found.base_dir.as_deref()]
        .into_iter()
        .flatten()
        .map(|d| d.join("generation_config.json"))
        .find(|p| p.is_file());
    let name = match opts.model_name.clone() {
        Some(n) => n,
        None => base_name(found, ck),
    };
    let model = Model::open(config, &cfg_path, &tok_dir, generation.as_deref(), name)?;
    Ok(match opts.gguf_card_metadata {
        // The card merged_16bit writes, as the converter would read it from that folder.
        true => {
            let (base, mut tags, pipeline) =
                meta::card_front(found.adapter.config.base_model_name_or_path.as_deref(), false);
            tags.push(pipeline.to_string());
            model.with_card(base, tags)
        }
        false => model,
    })
}

/// The base model's name: the last part of the adapter's `base_model_name_or_path`, else of the
/// base directory.
/// The base as `convert_lora_to_gguf.py --base` reads it for an adapter GGUF: its config.json
/// only. The name is `--model-name`, else what gguf-py makes of the adapter folder's name.
fn lora_model(opts: &SaveOptions, found: &Found) -> Result<Model> {
    let dir = found.base_dir.as_deref().ok_or_else(|| Error::Usage(
        "--quantization-method with --save-method lora: the base model's config.json is needed (give --base)".into(),
    ))?;
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::json(&cfg_path, e))?;
    let folder = found.adapter.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let name = match opts.model_name.clone() {
        Some(n) => n,
        None => crate::gguf::id_to_title(&crate::gguf::model_id_components(&folder, 0).full),
    };
    Model::for_adapter(&config, &cfg_path, name)
}

fn base_name(found: &Found, ck: &Checkpoint) -> String {
    let from_id = found
        .adapter
        .config
        .base_model_name_or_path
        .as_deref()
        .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    from_id
        .or_else(|| ck.dir.canonicalize().ok()?.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| "model".to_string())
}

/// Refuses the places a save never replaces, and whatever at `OUT` is not ours to replace.
fn check_out(out: &Path, found: &Found) -> Result<Existing> {
    existing::refuse_forbidden(out, &found.dirs())?;
    let at_out = existing::examine(out)?;
    if let Existing::NotOurs(why) = &at_out {
        return Err(Error::OutNotOurs {
            out: out.to_path_buf(),
            why: why.clone(),
        });
    }
    Ok(at_out)
}

/// A loraweld save at `OUT`: of the same inputs and options it is up to date (returned, unless
/// `--force` or a dry run), of others it needs `--force`. A dry run says what would happen.
fn existing_output(
    opts: &SaveOptions,
    at_out: &Existing,
    run: &RunKey,
    plan_text: &mut String,
) -> Result<Option<resume::Finished>> {
    let out = opts.out.display();
    if *at_out == Existing::Ours {
        match resume::up_to_date(&opts.out, run) {
            Some(_) if opts.dry_run => {
                plan_text.push_str(&format!(
                    "existing {out}: a loraweld save of the same inputs and options: up to date, a run does nothing\n"
                ));
                return Ok(None);
            }
            Some(done) if !opts.force => return Ok(Some(done)),
            Some(_) => {}
            None if !opts.force && !opts.dry_run => {
                return Err(Error::Usage(format!(
                    "{out}: holds a loraweld save of other inputs or options (use --force to replace it)"
                )))
            }
            None => {}
        }
    }
    if opts.dry_run {
        plan_text.push_str(&format!("existing {out}: {}\n", at_out.describe(opts.force)));
    }
    Ok(None)
}

/// Before any heavy work: the weights plus a margin for the small files (and for the 4-bit
/// quant-state JSON, whose final length the stats pass sets) must fit at `OUT` and, when output
/// is staged on another filesystem, at the temporary location too (the final move then copies).
fn preflight(opts: &SaveOptions, job: &Job, plan: &Plan, free: Option<u64>) -> Result<()> {
    if job.hooks.no_disk_preflight {
        return Ok(());
    }
    let need = plan.file_bytes() + (1 << 20);
    let mut places = vec![(opts.out.clone(), free)];
    if let Some(t) = &opts.temporary_location {
        if !crate::sys::same_filesystem(t, &opts.out) {
            places.push((t.clone(), crate::sys::free_space(t)));
        }
    }
    for (path, free) in places {
        if let Some(f) = free.filter(|&f| f < need) {
            return Err(Error::DiskFull { path, need, free: f });
        }
    }
    Ok(())
}

/// One execution of the plan into a staging directory.
struct Run<'a> {
    /// The plan, with the files kept from an interrupted run marked `skip`.
    plan: &'a Plan,
    /// Per planned file, what an interrupted run left that is kept.
    kept: Vec<Option<ShardResult>>,
    inputs: Inputs<'a>,
    backend: &'a dyn Backend,
    cfg: ExecConfig,
    session: Option<&'a Session>,
    key: &'a RunKey,
    progress: Option<&'a ProgressHook>,
}

impl Run<'_> {
    /// Writes the files not kept (the manifest rewritten after each), and returns every file in
    /// plan order, the stage times and how many were kept.
    fn execute(&self, staging: &mut Staging) -> Result<(Vec<ShardResult>, StageTimes, usize)> {
        let (plan, kept) = (self.plan, &self.kept);
        let dir = staging.path().to_path_buf();
        let done = Mutex::new(
            kept.iter()
                .flatten()
                .map(|r| (r.file.clone(), r.clone()))
                .collect::<BTreeMap<_, _>>(),
        );
        let manifest = |d: &BTreeMap<String, ShardResult>| resume::manifest(self.key, &plan.shards, d, &dir);
        let first = done
            .lock()
            .map_err(|_| Error::Internal("a lock was poisoned by a panicking thread".into()))?
            .clone();
        resume::write_manifest(&dir, &manifest(&first))?;
        let record = |_: &Path, r: &ShardResult| {
            if let Ok(mut d) = done.lock() {
                d.insert(r.file.clone(), r.clone());
                let _ = resume::write_manifest(&dir, &manifest(&d));
            }
        };
        let kept_paths: Vec<PathBuf> = kept.iter().flatten().map(|r| dir.join(&r.file)).collect();
        let written_bytes = AtomicU64::new(0);
        let total: u64 = plan.shards.iter().filter(|s| !s.skip).map(|s| s.file_len).sum();
        let resumed = kept.iter().flatten().count();
        let (written, stages) = progress::while_reporting(self.progress, total, resumed, &written_bytes, || {
            let execution = upload::Execution {
                plan,
                inputs: self.inputs,
                backend: self.backend,
                dir: &dir,
                cfg: self.cfg,
                progress: Some(&written_bytes),
            };
            upload::execute_and_upload(&execution, self.session, &record, &kept_paths)
        })?;
        // Every planned shard, in plan order: kept ones from the earlier run, the rest just written.
        let mut by_file: BTreeMap<String, ShardResult> = written.into_iter().map(|r| (r.file.clone(), r)).collect();
        let mut shards = Vec::with_capacity(plan.shards.len());
        for (s, k) in plan.shards.iter().zip(kept) {
            match k.clone().or_else(|| by_file.remove(&s.file_name)) {
                Some(r) => shards.push(r),
                None => return Err(Error::Internal(format!("{}: no result for shard", s.file_name))),
            }
        }
        Ok((shards, stages, resumed))
    }
}
