//! Plans a LoRA adapter GGUF (`--save-method lora --quantization-method ...`): what llama.cpp's
//! `convert_lora_to_gguf.py --base BASE --outtype T ADAPTER` writes, for `llama-cli --lora`.
//! Each targeted module becomes `<gguf name>.lora_a` (A as stored, `[r, in]`) and
//! `<gguf name>.lora_b` (B `[out, r]`, its rows permuted as the converter permutes the weight's:
//! Llama's q/k), in the order the converter loads the adapter (its file's data order), each
//! module at its first tensor. Nothing is merged: the values are the adapter's own.

use std::collections::HashMap;

use super::gguf::{assemble, gguf_plan, Converted, FileTensor};
use super::types::{BaseSrc, FileRef, Op, Plan, Src};
use crate::checkpoint::adapter::{parse_key, AdapterTensorKind};
use crate::checkpoint::Adapter;
use crate::error::{Error, Result};
use crate::format::dtype::float_of;
use crate::format::ggml_rows::{Encoding, Writer};
use crate::format::safetensors::TensorInfo;
use crate::gguf::{model_id_components, naming_convention, Model};
use crate::job::{GgufTarget, Job};

/// Plans every LoRA GGUF file the job asks for. `model` is the base as the converter reads it
/// (config only); refuses, by name, what the converter would refuse and what llama.cpp would
/// apply wrongly.
pub(crate) fn plan_lora_gguf(adapter: &Adapter, job: &Job, model: &Model) -> Result<Plan> {
    let spec = job
        .gguf()
        .ok_or_else(|| Error::Internal("plan_lora_gguf without a GGUF job".into()))?;
    let refuse = |what: String| Error::Unsupported {
        path: adapter.dir.clone(),
        what: format!("LoRA GGUF: {what}"),
    };
    let cfg = &adapter.config;
    // llama.cpp scales every pair by alpha / rank (the rank read from the tensor): anything
    // else PEFT can express would load, silently wrong.
    let scaling = [
        (cfg.use_rslora, "use_rslora (llama.cpp scales by alpha / r, not alpha / sqrt(r))"),
        (cfg.use_dora, "DoRA (llama.cpp has no magnitude vectors)"),
        (cfg.lora_bias, "lora_bias (llama.cpp has no LoRA biases)"),
        (
            cfg.alpha_pattern.as_ref().is_some_and(|m| !m.is_empty()),
            "alpha_pattern (a LoRA GGUF holds one alpha)",
        ),
        (
            cfg.target_parameters.as_ref().is_some_and(|v| !v.is_null()),
            "target_parameters",
        ),
    ];
    if let Some((_, what)) = scaling.iter().find(|(on, _)| *on) {
        return Err(refuse(format!("{what} is not supported")));
    }
    let mut targets = Vec::with_capacity(spec.targets.len());
    for t in &spec.targets {
        match t {
            // convert_lora_to_gguf.py's --outtype: the converter's own types.
            GgufTarget::File(ft) if !ft.is_quantize() => targets.push(*ft),
            _ => {
                return Err(Error::Usage(format!(
                    "--quantization-method {}: a LoRA GGUF is f32, f16, bf16 or q8_0 (convert_lora_to_gguf.py's types)",
                    t.name()
                )))
            }
        }
    }

    // The converter's tensor map: modules in the order their first tensor loads.
    let mut modules: Vec<(String, Option<TensorInfo>, Option<TensorInfo>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for info in &adapter.weights.header.tensors {
        let key = parse_key(&info.name);
        let is_a = match &key.kind {
            AdapterTensorKind::LoraA => true,
            AdapterTensorKind::LoraB => false,
            // The wrapped layer's own copy: the converter skips it.
            AdapterTensorKind::BaseLayer(_) => continue,
            AdapterTensorKind::EmbA | AdapterTensorKind::EmbB => {
                return Err(refuse(format!("`{}`: LoRA on an embedding is not supported yet", info.name)))
            }
            _ => {
                return Err(refuse(format!(
                    "`{}`: not a lora_A or lora_B tensor (convert_lora_to_gguf.py refuses it too)",
                    info.name
                )))
            }
        };
        let k = *at.entry(key.module.clone()).or_insert_with(|| {
            modules.push((key.module.clone(), None, None));
            modules.len() - 1
        });
        let slot = if is_a { &mut modules[k].1 } else { &mut modules[k].2 };
        *slot = Some(info.clone());
    }
    if modules.is_empty() {
        return Err(refuse("the adapter has no LoRA tensors".into()));
    }

    let mut converted = Vec::with_capacity(2 * modules.len());
    let mut covered: u64 = 0;
    for (module, a, b) in modules {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(refuse(format!("`{module}`: lora_A or lora_B is missing")));
        };
        let cols = match (a.shape.as_slice(), b.shape.as_slice()) {
            ([ra, i], [o, rb]) if ra == rb => [*o, *i],
            _ => {
                return Err(refuse(format!(
                    "`{module}`: lora_A {:?} and lora_B {:?} are not a pair",
                    a.shape, b.shape
                )))
            }
        };
        let weight = format!("{module}.weight");
        let m = model
            .map_tensor(&weight, &cols)?
            .ok_or_else(|| refuse(format!("`{weight}` has no GGUF tensor: its LoRA would be lost")))?;
        covered += cols[0] * cols[1];
        for (info, suffix, heads) in [(a, "lora_a", None), (b, "lora_b", m.heads)] {
            let dt = float_of(info.dtype).ok_or_else(|| refuse(format!("`{}`: {} is not a float type", info.name, info.dtype)))?;
            let params = info.shape.iter().product();
            converted.push(Converted {
                name: format!("{}.{suffix}", m.name),
                shape: info.shape.clone(),
                op: Op::Compute {
                    base: BaseSrc::Float(
                        Src {
                            file: FileRef::Adapter,
                            info,
                        },
                        dt,
                    ),
                    lora: None,
                    extra: None,
                },
                merged: Some(dt),
                heads,
                add_one: false,
                params,
            });
        }
    }

    // gguf-py counts an adapter's parameters negative (the weights its pairs cover), and reads
    // the name from the adapter folder's.
    let folder = adapter.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let parts = model_id_components(&folder, -(covered as i64));
    let alpha = cfg.lora_alpha as f32;
    let mut files = Vec::with_capacity(targets.len());
    for ft in targets {
        let file_tensors: Vec<FileTensor> = converted
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ty = model.converter_type(&c.name, &c.shape, ft);
                (i, Encoding { ty, writer: Writer::Converter }, None)
            })
            .collect();
        let kvs = model.lora_kvs(&parts, alpha);
        let name = format!("{}.gguf", naming_convention(model.name(), &parts, ft.name(), Some("LoRA")));
        files.push((name, kvs, file_tensors));
    }
    let assembled = assemble(&converted, files)?;
    Ok(gguf_plan(job, &converted, assembled, None))
}
