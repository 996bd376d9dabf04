//! Plans a GGUF save: the merge planned exactly as for `merged_16bit` (so every value is the one
//! PEFT's merged checkpoint holds), then, per requested file, what llama.cpp's route makes of
//! that checkpoint: the converter's tensor names, order, transforms and types for f32/f16/bf16/
//! q8_0, and for the other types `llama-quantize`'s order and type rules applied to the 16-bit
//! GGUF it would read. Every file is laid out (header, tokenizer, offsets) before any weight is
//! read.

use std::collections::HashMap;
use std::sync::Arc;

use super::merge::plan_merged;
use super::types::{rows_cols, BaseSrc, GgufEnc, LayoutArgs, Op, OutTensor, Plan};
use crate::checkpoint::{Adapter, Checkpoint};
use crate::error::{Error, Result};
use crate::format::dtype::{float_of, st_dtype, FloatDtype};
use crate::format::ggml_rows::{Encoding, Writer};
use crate::format::gguf::{self as gguf_file, GgmlType};
use crate::format::gguf_rules::{self, FileType};
use crate::gguf::Model;
use crate::job::{GgufTarget, Job, OutputFormat, SaveMethod, ShardOrder};
use crate::writer::output::PlannedFile;

/// A tensor as the converter writes it, before a file type is chosen.
pub(super) struct Converted {
    /// GGUF name.
    pub(super) name: String,
    /// Shape, rows first.
    pub(super) shape: Vec<u64>,
    /// Where its values come from (a merge op, or bytes made here).
    pub(super) op: Op,
    /// Merged dtype (`None` for a generated F32 tensor).
    pub(super) merged: Option<FloatDtype>,
    /// Permute with this many heads.
    pub(super) heads: Option<u64>,
    /// Gemma's norm offset.
    pub(super) add_one: bool,
    /// Elements.
    pub(super) params: u64,
}

/// A file's tensor: index into the converted list, its encoding, and the 16-bit type its values
/// are rounded through first (llama-quantize's input).
pub(super) type FileTensor = (usize, Encoding, Option<GgmlType>);

/// A file's metadata, in order.
pub(super) type Metadata = Vec<(String, gguf_file::Value)>;

/// The ggml type of a float dtype.
fn float_ggml(d: FloatDtype) -> GgmlType {
    match d {
        FloatDtype::Bf16 => GgmlType::Bf16,
        FloatDtype::F16 => GgmlType::F16,
        FloatDtype::F32 => GgmlType::F32,
    }
}

/// The file type a GGUF target means for this model: `not_quantized` is the merged model's
/// 16-bit type.
pub fn file_type(target: GgufTarget, model_dtype: Option<FloatDtype>) -> FileType {
    match target {
        GgufTarget::File(f) => f,
        GgufTarget::NotQuantized => match model_dtype {
            Some(FloatDtype::F16) => FileType::F16,
            Some(FloatDtype::F32) => FileType::F32,
            _ => FileType::Bf16,
        },
    }
}

/// The file name Unsloth gives a GGUF: `{name}.{TYPE}.gguf`.
pub fn file_name(model_name: &str, ft: FileType) -> String {
    let stem: String = model_name
        .chars()
        .map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c })
        .collect();
    format!("{stem}.{}.gguf", ft.name().to_uppercase())
}

/// Plans every GGUF file the job asks for.
pub(crate) fn plan_gguf(ck: &Checkpoint, adapter: &Adapter, job: &Job, model: &Model) -> Result<Plan> {
    let spec = job
        .gguf()
        .ok_or_else(|| Error::Internal("plan_gguf without a GGUF job".into()))?;
    // The merge, as merged_16bit plans it: the converter reads that checkpoint.
    let job16 = Job {
        method: SaveMethod::Merged16bit,
        output: OutputFormat::Safetensors {
            max_shard_size: spec.merged_shard_size,
            order: ShardOrder::Natural,
            variant: None,
        },
        ..job.clone()
    };
    let merged = plan_merged(ck, adapter, &job16)?;
    let converted = convert(&merged, model)?;
    let mut files = Vec::with_capacity(spec.targets.len());
    for &target in &spec.targets {
        let ft = file_type(target, merged.model_dtype);
        let (kvs, file_tensors) = file_plan(&converted, model, ft, spec.intermediate)?;
        files.push((file_name(model.name(), ft), kvs, file_tensors));
    }
    let assembled = assemble(&converted, files)?;
    Ok(gguf_plan(job, &converted, assembled, Some(merged)))
}

/// The plan of GGUF files: their tensors and layout, with the counts, warnings and layout
/// arguments of `merged` (the merge's plan; `None` for an adapter GGUF, which merges nothing).
pub(super) fn gguf_plan(job: &Job, converted: &[Converted], (tensors, shards, twins): Assembled, merged: Option<Plan>) -> Plan {
    let mut plan = Plan {
        job: job.clone(),
        total_size: tensors.iter().map(|t| t.nbytes).sum(),
        total_parameters: converted.iter().map(|c| c.params).sum(),
        tensors,
        shards,
        index_name: None,
        model_dtype: None,
        counts: Default::default(),
        warnings: Vec::new(),
        config_updates: serde_json::Map::new(),
        quant_groups: Vec::new(),
        layout_args: LayoutArgs::new(0, ShardOrder::Natural, "adapter_model", None),
        twins,
    };
    if let Some(m) = merged {
        plan.model_dtype = m.model_dtype;
        plan.counts = m.counts;
        plan.warnings = m.warnings;
        plan.config_updates = m.config_updates;
        plan.layout_args = m.layout_args;
    }
    plan
}

/// A GGUF plan's tensors, files and twins (`Plan::twins`).
pub(super) type Assembled = (Vec<OutTensor>, Vec<PlannedFile>, Vec<Vec<usize>>);

/// Lays out every file (head, offsets) and ties files to one read of the inputs: files whose
/// tensors come in the same order (the converter's, or llama-quantize's) are written in
/// lockstep, the first of each order leading; a file in another order still follows the first
/// lead, each of its tensors written at its place as it comes.
pub(super) fn assemble(
    converted: &[Converted],
    files: Vec<(String, Metadata, Vec<FileTensor>)>,
) -> Result<Assembled> {
    let mut tensors: Vec<OutTensor> = Vec::new();
    let mut shards: Vec<PlannedFile> = Vec::new();
    let mut leads: Vec<(Vec<usize>, usize)> = Vec::new();
    let mut twins: Vec<Vec<usize>> = Vec::new();
    for (file_name, kvs, file_tensors) in files {
        let specs: Vec<gguf_file::Tensor> = file_tensors
            .iter()
            .map(|(i, enc, _)| gguf_file::Tensor {
                name: converted[*i].name.clone(),
                shape: converted[*i].shape.clone(),
                ggml_type: enc.ty,
            })
            .collect();
        let (head, offsets, len) = gguf_file::lay_out(&kvs, &specs)?;
        let si = shards.len();
        let order: Vec<usize> = file_tensors.iter().map(|(i, _, _)| *i).collect();
        let (follows, scattered) = match leads.iter().find(|(o, _)| *o == order) {
            Some((_, lead)) => (Some(*lead), false),
            None => (leads.first().map(|(_, lead)| *lead), !leads.is_empty()),
        };
        if follows.is_none() {
            leads.push((order, si));
        }
        let mut members = Vec::with_capacity(file_tensors.len());
        for ((i, enc, through), off) in file_tensors.iter().zip(offsets) {
            let c = &converted[*i];
            let (rows, cols) = match c.shape.split_last() {
                // GGUF rows run along the last dimension (ne[0]).
                Some((last, rest)) => (rest.iter().product::<u64>(), *last),
                None => (1, 1),
            };
            let row_bytes = enc.row_bytes(cols).ok_or_else(|| {
                Error::Internal(format!("gguf: `{}` rows of {cols} are not whole {:?} blocks", c.name, enc.ty))
            })?;
            members.push(tensors.len());
            tensors.push(OutTensor {
                name: c.name.clone(),
                dtype: st_dtype(c.merged.unwrap_or(FloatDtype::F32)),
                shape: c.shape.clone(),
                nbytes: rows * row_bytes,
                rows,
                cols,
                op: c.op.clone(),
                params: c.params,
                shard: si,
                offset: off,
                gguf: c.merged.map(|m| GgufEnc {
                    merged: m,
                    heads: c.heads,
                    add_one: c.add_one,
                    // A round trip through the merged values' own 16-bit type changes nothing
                    // (the values are that type's, unless Gemma's +1 moved them).
                    through: through.filter(|t| c.add_one || Some(*t) != c.merged.map(float_ggml)),
                    enc: *enc,
                }),
            });
        }
        twins.resize(tensors.len(), Vec::new());
        if let Some(lead) = follows {
            // The lead's tensor made from the same converted tensor.
            let of_lead: HashMap<usize, usize> = leads
                .iter()
                .find(|(_, l)| *l == lead)
                .map(|(o, _)| o.iter().copied().zip(shards[lead].tensors.iter().copied()).collect())
                .unwrap_or_default();
            for ((i, _, _), &t) in file_tensors.iter().zip(&members) {
                let lt = of_lead.get(i).ok_or_else(|| {
                    Error::Internal(format!("gguf: `{}` is in one file but not another", converted[*i].name))
                })?;
                twins[*lt].push(t);
            }
        }
        shards.push(PlannedFile {
            file_name,
            tensors: members,
            head,
            file_len: len,
            skip: false,
            follows,
            scattered,
        });
    }
    Ok((tensors, shards, twins))
}

/// The converter's tensors in its order: generated ones first, then the merged checkpoint's
/// files in name order, each file in its header order; names mapped, transforms noted.
fn convert(merged: &Plan, model: &Model) -> Result<Vec<Converted>> {
    let mut out: Vec<Converted> = model
        .generated()
        .into_iter()
        .map(|(name, values)| Converted {
            params: values.len() as u64,
            shape: vec![values.len() as u64],
            name,
            op: Op::Literal(Arc::new(values.iter().flat_map(|v| v.to_le_bytes()).collect())),
            merged: None,
            heads: None,
            add_one: false,
        })
        .collect();
    // The converter lists each file's tensors sorted by name (gguf-py re-sorts them), the files
    // in name order.
    let mut order: Vec<usize> = (0..merged.tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&merged.tensors[a], &merged.tensors[b]);
        (x.shard, &x.name).cmp(&(y.shard, &y.name))
    });
    for i in order {
        let t = &merged.tensors[i];
        let Some(m) = model.map_tensor(&t.name, &t.shape)? else {
            continue;
        };
        let dt = float_of(t.dtype).ok_or_else(|| Error::Unsupported {
            path: model.dir().to_path_buf(),
            what: format!("GGUF output of `{}` ({}): only float tensors are converted", t.name, t.dtype),
        })?;
        // A byte copy in the safetensors plan is a cast without a LoRA here: the GGUF needs
        // the values, not the bytes.
        let op = match &t.op {
            Op::Copy(src) => Op::Compute {
                base: BaseSrc::Float(src.clone(), dt),
                lora: None,
                extra: None,
            },
            op => op.clone(),
        };
        // Gemma 3 keeps only the embedding rows the tokenizer has (a slice: never more rows).
        let mut shape = t.shape.clone();
        if let (Some(n), Some(r)) = (m.rows, shape.first_mut()) {
            *r = (*r).min(n);
        }
        let (rows, cols) = rows_cols(&shape);
        out.push(Converted {
            name: m.name,
            shape,
            op,
            merged: Some(dt),
            heads: m.heads,
            add_one: m.add_one,
            params: rows * cols,
        });
    }
    Ok(out)
}

/// One file's metadata and its tensors (indices into `converted`) in file order with their
/// encodings: the converter's for f32/f16/bf16/q8_0, else `llama-quantize`'s run on the
/// intermediate 16-bit GGUF.
fn file_plan(
    converted: &[Converted],
    model: &Model,
    ft: FileType,
    intermediate: FloatDtype,
) -> Result<(Metadata, Vec<FileTensor>)> {
    let params: u64 = converted.iter().map(|c| c.params).sum();
    let direct = |ft: FileType| -> Vec<FileTensor> {
        converted
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ty = model.converter_type(&c.name, &c.shape, ft);
                (i, Encoding { ty, writer: Writer::Converter }, None)
            })
            .collect()
    };
    if !ft.is_quantize() {
        return Ok((model.kvs(ft, params), direct(ft)));
    }
    let inter = match intermediate {
        FloatDtype::F16 => FileType::F16,
        _ => FileType::Bf16,
    };
    let input = direct(inter);
    // llama-quantize keeps the input's keys (the vocabulary is most of them: one copy at a time).
    let kvs = gguf_rules::quantized_kvs(&model.kvs(inter, params), ft);
    let info = gguf_rules::ModelInfo::from_kvs(&kvs).map_err(|e| Error::Internal(format!("gguf: {e}")))?;
    let names: Vec<&str> = input.iter().map(|(i, _, _)| converted[*i].name.as_str()).collect();
    let order = gguf_rules::quantize_order(&names);
    let in_tensors: Vec<gguf_rules::InTensor<'_>> = order
        .iter()
        .map(|&k| gguf_rules::InTensor {
            name: &converted[input[k].0].name,
            shape: &converted[input[k].0].shape,
            ggml_type: input[k].1.ty,
        })
        .collect();
    let types = gguf_rules::tensor_types(ft, &info, &in_tensors).map_err(|e| Error::Unsupported {
        path: model.dir().to_path_buf(),
        what: format!("llama-quantize would refuse this model: {e}"),
    })?;
    let mut files = Vec::with_capacity(order.len());
    for (&k, ty) in order.iter().zip(types) {
        let (i, in_enc, _) = input[k];
        if ty == in_enc.ty {
            // A tensor llama-quantize leaves alone keeps the intermediate's bytes.
            files.push((i, in_enc, None));
            continue;
        }
        let enc = Encoding { ty, writer: Writer::Quantizer };
        if !enc.supported() {
            return Err(Error::Internal(format!("gguf: no {ty:?} writer for `{}`", converted[i].name)));
        }
        // It quantizes the intermediate's values: the merged values rounded through its type.
        let through = matches!(in_enc.ty, GgmlType::F16 | GgmlType::Bf16).then_some(in_enc.ty);
        files.push((i, enc, through));
    }
    Ok((kvs, files))
}
