//! Everything around the shards: index, config, generation config, tokenizer files, the model
//! card and the manifest; and the run's fingerprint that decides what is up to date.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::report::SaveReport;
use crate::checkpoint::{Adapter, Checkpoint};
use crate::error::{Error, Result};
use crate::job::{Job, SaveMethod};
use crate::pipeline::ShardResult;
use crate::plan::Plan;
use crate::writer::meta;
use crate::writer::resume::{self, RunKey};

/// What the files around the shards are made from.
#[derive(Clone, Copy)]
pub(super) struct Around<'a> {
    pub run: &'a RunKey,
    pub adapter: &'a Adapter,
    pub base: Option<&'a Checkpoint>,
    pub base_dir: Option<&'a Path>,
    pub plan: &'a Plan,
    pub shards: &'a [ShardResult],
    /// The staging directory.
    pub dir: &'a Path,
}

/// Writes everything around the shards into the staging dir; returns the file names.
pub(super) fn finish(around: &Around<'_>, report: &SaveReport, t0: Instant) -> Result<Vec<String>> {
    let Around {
        run,
        adapter,
        base: ck,
        base_dir,
        plan,
        shards,
        dir,
    } = *around;
    let job = &plan.job;
    let mut files = Vec::new();
    let base_name = adapter.config.base_model_name_or_path.clone();
    let lora_gguf = job.method == SaveMethod::Lora && job.gguf().is_some();
    match job.method {
        // An adapter GGUF stands alone: llama.cpp reads it with the base's GGUF.
        SaveMethod::Lora if lora_gguf => {}
        SaveMethod::Lora => {
            meta::write_file(dir, "adapter_config.json", &adapter.config_bytes)?;
            files.push("adapter_config.json".into());
        }
        SaveMethod::Merged16bit | SaveMethod::Merged4bit => {
            if let Some(name) = &plan.index_name {
                let weight_map = plan
                    .tensors
                    .iter()
                    .map(|t| (t.name.as_str(), plan.shards[t.shard].file_name.as_str()));
                let index = meta::index_json(weight_map, plan.total_parameters, plan.total_size);
                meta::write_file(dir, name, index.as_bytes())?;
                files.push(name.clone());
            }
            if let Some(cfg) = ck.and_then(|c| c.config.as_ref()) {
                let mut v = match &job.quantize {
                    Some(spec) => meta::quantized_config(cfg, plan.model_dtype, spec),
                    None => meta::merged_config(cfg, plan.model_dtype),
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
        SaveMethod::Gguf => {
            // Ollama's recipe for the first file; the GGUF carries the chat template itself.
            if let Some(first) = plan.shards.first() {
                meta::write_file(dir, "Modelfile", meta::modelfile(&first.file_name).as_bytes())?;
                files.push("Modelfile".into());
            }
        }
    }
    if job.method != SaveMethod::Gguf && !lora_gguf {
        // A GGUF holds its tokenizer; the other outputs load it from these files.
        let tok = meta::tokenizer_files(&adapter.dir, base_dir)?;
        files.extend(meta::write_tokenizer(&tok, dir, job.padding_side)?);
    }
    let is_adapter = job.method == SaveMethod::Lora;
    let card = match adapter.dir.join("README.md") {
        p if is_adapter && p.is_file() => std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?,
        _ => meta::model_card(base_name.as_deref(), job.method.as_str(), is_adapter),
    };
    meta::write_file(dir, "README.md", card.as_bytes())?;
    files.push("README.md".into());
    let done: BTreeMap<String, ShardResult> = shards.iter().map(|r| (r.file.clone(), r.clone())).collect();
    files.push(resume::MANIFEST.into());
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
    resume::write_manifest(dir, &resume::final_manifest(run, &plan.shards, &done, dir, &files, recorded))?;
    Ok(files)
}

/// The inputs and options that decide the output bytes (the run's fingerprint).
pub(super) fn run_key(job: &Job, adapter: &Adapter, ck: Option<&Checkpoint>, base_dir: Option<&Path>) -> Result<RunKey> {
    let mut inputs = vec![
        adapter.weights_path().to_path_buf(),
        adapter.dir.join("adapter_config.json"),
    ];
    // An adapter GGUF reads the base's config (its architecture and heads).
    if let (None, Some(_), Some(d)) = (ck, job.gguf(), base_dir) {
        inputs.push(d.join("config.json"));
    }
    if let Some(c) = ck {
        inputs.extend(c.files());
        let cfg = c.dir.join("config.json");
        if cfg.is_file() {
            inputs.push(cfg);
        }
    }
    let (max_shard_size, order, variant) = job.safetensors_layout();
    let gguf = job.gguf().map(|g| {
        json!({
            "targets": g.targets.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>(),
            "model_name": g.model_name,
            "intermediate": g.intermediate.torch_name(),
            "card_metadata": g.card_metadata,
        })
    });
    let options = json!({
        "gguf": gguf,
        "save_method": job.method.as_str(),
        "dtype": job.dtype.map(|d| d.torch_name()),
        "max_shard_size": max_shard_size,
        "variant": variant,
        "shard_order": format!("{order:?}").to_lowercase(),
        "padding_side": format!("{:?}", job.padding_side).to_lowercase(),
        "untie_embeddings": job.untie_embeddings,
        "quant_type": job.quantize.map(|q| q.quant_type.as_str()),
        "blocksize": job.quantize.map(|q| q.blocksize),
        "double_quant": job.quantize.map(|q| q.double_quant),
        "allow_nonfinite": job.allow_nonfinite,
    });
    RunKey::new(&inputs, options)
}
