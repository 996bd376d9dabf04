//! Plans a merge: matches every adapter tensor to the base tensor it changes, and turns each
//! into an [`Op`] that reproduces PEFT `merge_and_unload()` (docs/formats.md §2):
//!
//! | adapter tensors | base tensor | update, in output-row space |
//! |---|---|---|
//! | `K.lora_A` `[r,in]`, `K.lora_B` `[out,r]` | `K.weight` `[out,in]` | coef = B, basis = A; one rounding |
//! | same, `fan_in_fan_out` (Conv1D) | `K.weight` `[in,out]` | coef = Aᵀ, basis = Bᵀ |
//! | `K.lora_embedding_A` `[r,V]`, `…_B` `[d,r]` | `K.weight` `[V,d]` | coef = Aᵀ, basis = Bᵀ; delta rounded to W's dtype first |
//! | `K.lora_B.bias` `[out]` | `K.bias` | `+= fl32(b * s)` |
//! | `K.lora_magnitude_vector` `[out]` | `K.weight` | DoRA row scaling |
//! | `K.token_adapter.trainable_tokens_delta` | `K.weight` | listed rows replaced |
//! | `base_model.model.<name>` (modules_to_save) | `<name>` | replaced |
//!
//! Every tensor that fits nothing, and every shape that disagrees, is listed in one error.

use std::collections::HashSet;

use super::matching::{match_adapter, Base, Matched};
use super::op::{build_op, Recipe};
use super::layout::layout;
use super::quantized::is_quant_helper;
use super::types::{
    rows_cols, BaseSrc, LayoutArgs, Op, OutTensor, Plan, PlanCounts, QuantGroup, QuantPart,
    QuantSrc, Src,
};
use crate::checkpoint::{Adapter, Checkpoint};
use crate::error::{Error, Result};
use crate::format::dtype::{float_of, FloatDtype};
use crate::format::safetensors::Dtype;
use crate::job::Job;

/// Whether a 16-bit tensor is a Linear weight that transformers quantizes: 2-D, a `.weight`,
/// not an embedding, the output head, a norm, or a router (not an `nn.Linear` in transformers 5).
pub fn quantizable(name: &str, shape: &[u64]) -> bool {
    if shape.len() != 2 || !name.ends_with(".weight") {
        return false;
    }
    let module = &name[..name.len() - ".weight".len()];
    let last = module.rsplit('.').next().unwrap_or(module);
    let skip = [
        "embed_tokens",
        "wte",
        "wpe",
        "word_embeddings",
        "embed_in",
        "embed_positions",
        "lm_head",
        "embed_out",
        "gate",
        "router",
    ];
    !skip.contains(&last) && !last.contains("norm") && !last.starts_with("ln")
}

/// Plans a merged save (`merged_16bit`, or `merged_4bit` when the job quantizes): every adapter
/// tensor matched to the base tensor it changes, then one output tensor per base tensor (and per
/// new one, an untied head), in the format's files.
pub fn plan_merged(ck: &Checkpoint, adapter: &Adapter, job: &Job) -> Result<Plan> {
    let base = Base::new(ck)?;
    let Matched {
        mut recipes,
        new_tensors,
        warnings,
        config_updates,
    } = match_adapter(&base, adapter, job)?;
    let mut out = Outputs::default();
    // 4-bit weights of the base that get an update are quantized again; the others keep their bytes.
    let requant: HashSet<String> = match job.quantize {
        Some(_) => base.quantized.keys().filter(|k| recipes.contains_key(*k)).cloned().collect(),
        None => HashSet::new(),
    };
    let mut names: Vec<(String, Option<String>)> = Vec::new();
    for (name, loc) in &ck.tensors {
        if is_quant_helper(name, &base.quantized) {
            out.quant_helper(name, loc, &base, job, &requant);
        } else {
            names.push((name.clone(), None));
        }
    }
    names.extend(new_tensors.iter().map(|(n, src)| (n.clone(), Some(src.clone()))));
    for (name, source) in names {
        let recipe = recipes.remove(&name).unwrap_or_default();
        out.tensor(&base, job, &requant, name, source.as_deref(), recipe)?;
    }
    let model_dtype = job
        .dtype
        .or(base.cfg_dtype)
        .or_else(|| base.quantized.values().next().map(|q: &QuantSrc| q.state.dtype));
    let (max_shard_size, order, variant) = job.safetensors_layout();
    let mut plan = layout(
        job,
        out.tensors,
        LayoutArgs::new(max_shard_size, order, "model", variant),
        model_dtype,
        out.counts,
    );
    plan.warnings = warnings;
    plan.config_updates = config_updates;
    plan.quant_groups = out.quant_groups;
    Ok(plan)
}

/// The output tensors as they are decided, with the counts and the 4-bit groups.
#[derive(Default)]
struct Outputs {
    tensors: Vec<OutTensor>,
    quant_groups: Vec<QuantGroup>,
    counts: PlanCounts,
}

/// A base weight's bitsandbytes settings when `merged_4bit` writes it as 4-bit: quant type,
/// blocksize, double quant, the quant state's dtype, and the dtype to round to before
/// quantizing.
type GroupSettings = (crate::format::bnb::QuantType, u64, bool, FloatDtype, Option<FloatDtype>);

impl Outputs {
    /// A 4-bit helper tensor (`absmax`, `quant_map`, …) of the base: copied when its weight
    /// keeps its bytes in a `merged_4bit` save, else consumed.
    fn quant_helper(
        &mut self,
        name: &str,
        loc: &crate::checkpoint::TensorLoc,
        base: &Base<'_>,
        job: &Job,
        requant: &HashSet<String>,
    ) {
        let owner = base.quantized.keys().find(|k| name.starts_with(&format!("{k}.")));
        match owner {
            Some(o) if job.quantize.is_some() && !requant.contains(o) => {
                self.counts.copied += 1;
                self.tensors.push(OutTensor {
                    name: name.to_string(),
                    dtype: loc.info.dtype,
                    shape: loc.info.shape.clone(),
                    nbytes: loc.info.nbytes(),
                    rows: loc.info.nbytes(),
                    cols: 1,
                    op: Op::Copy(Src::base(loc)),
                    params: 0,
                    shard: 0,
                    offset: 0,
                    gguf: None,
                });
            }
            _ => self.counts.consumed_quant_helpers += 1,
        }
    }

    /// One output tensor `name` (read from `source`, an untied head's embedding, when given).
    fn tensor(
        &mut self,
        base: &Base<'_>,
        job: &Job,
        requant: &HashSet<String>,
        name: String,
        source: Option<&str>,
        recipe: Recipe,
    ) -> Result<()> {
        let base_name = source.unwrap_or(&name);
        let (src, shape, own) = source_of(base, &name, base_name, &recipe)?;
        if job.quantize.is_some() {
            if let Some(settings) = group_settings(job, &src, own, &recipe, requant.contains(base_name), &name, &shape) {
                self.quant_group(name, src, own, recipe, &shape, settings);
                return Ok(());
            }
            if let BaseSrc::Bnb(q) = &src {
                // A 4-bit weight without an update keeps its bytes.
                let codes = q.codes.clone();
                self.counts.copied += 1;
                self.tensors.push(OutTensor {
                    name,
                    dtype: codes.info.dtype,
                    shape: codes.info.shape.clone(),
                    nbytes: codes.info.nbytes(),
                    rows: codes.info.nbytes(),
                    cols: 1,
                    params: 2 * codes.info.nbytes(),
                    op: Op::Copy(codes),
                    shard: 0,
                    offset: 0,
                    gguf: None,
                });
                return Ok(());
            }
        }
        let (op, out_dtype) = build_op(src, own, recipe, job.dtype, &mut self.counts);
        let numel: u64 = shape.iter().product();
        let (rows, cols) = rows_cols(&shape);
        self.tensors.push(OutTensor {
            name,
            dtype: out_dtype,
            nbytes: numel * out_dtype.bits() / 8,
            shape,
            rows,
            cols,
            op,
            params: numel,
            shard: 0,
            offset: 0,
            gguf: None,
        });
        Ok(())
    }

    /// A weight written as bitsandbytes 4-bit: its group, and the four or six tensors
    /// `save_pretrained` writes for it (packed codes, absmax, quant map, quant state, and the
    /// nested absmax and map with double quant).
    fn quant_group(
        &mut self,
        name: String,
        src: BaseSrc,
        own: Option<FloatDtype>,
        recipe: Recipe,
        shape: &[u64],
        (qt, bs, dq, state_dtype, pre_round): GroupSettings,
    ) {
        let updated = !recipe.deltas.is_empty() || recipe.rows.is_some() || recipe.replace.is_some();
        let source = match build_op(src.clone(), own, recipe, None, &mut self.counts).0 {
            Op::Copy(_) => Op::Compute {
                base: src,
                lora: None,
                extra: None,
            },
            op => op,
        };
        if !updated {
            self.counts.quantized += 1;
        }
        let gi = self.quant_groups.len();
        let (o, i) = (shape[0], shape[1]);
        let n = o * i;
        let nb = n.div_ceil(bs);
        self.quant_groups.push(QuantGroup {
            name: name.clone(),
            source,
            shape: [o, i],
            quant_type: qt,
            blocksize: bs,
            double_quant: dq,
            state_dtype,
            pre_round,
            stats: None,
        });
        let state_len = self.quant_groups[gi].state_json().len() as u64;
        let (u8d, f32d) = (Dtype::U8, Dtype::F32);
        let mut parts: Vec<(String, Dtype, Vec<u64>, QuantPart, u64)> = vec![
            (name.clone(), u8d, vec![n.div_ceil(2), 1], QuantPart::Codes, 2 * n.div_ceil(2)),
            (
                format!("{name}.absmax"),
                if dq { u8d } else { f32d },
                vec![nb],
                QuantPart::Absmax,
                0,
            ),
            (format!("{name}.quant_map"), f32d, vec![16], QuantPart::QuantMap, 0),
            (
                format!("{name}.quant_state.bitsandbytes__{}", qt.as_str()),
                u8d,
                vec![state_len],
                QuantPart::State,
                0,
            ),
        ];
        if dq {
            parts.push((
                format!("{name}.nested_absmax"),
                f32d,
                vec![nb.div_ceil(256)],
                QuantPart::NestedAbsmax,
                0,
            ));
            parts.push((format!("{name}.nested_quant_map"), f32d, vec![256], QuantPart::NestedMap, 0));
        }
        for (pname, dt, pshape, part, params) in parts {
            let nbytes = pshape.iter().product::<u64>() * dt.bits() / 8;
            self.tensors.push(OutTensor {
                name: pname,
                dtype: dt,
                rows: if part == QuantPart::Codes { o } else { nbytes },
                cols: if part == QuantPart::Codes { i } else { 1 },
                shape: pshape,
                nbytes,
                op: Op::Quant { group: gi, part },
                params,
                shard: 0,
                offset: 0,
                gguf: None,
            });
        }
    }
}

/// Where an output tensor's base values come from (a 16-bit tensor or a 4-bit weight), its
/// shape, and its own float dtype (`None`: not a float, so only a byte copy is possible).
fn source_of(
    base: &Base<'_>,
    name: &str,
    base_name: &str,
    recipe: &Recipe,
) -> Result<(BaseSrc, Vec<u64>, Option<FloatDtype>)> {
    let ck = base.ck;
    let loc = ck
        .get(base_name)
        .ok_or_else(|| Error::Internal(format!("planned tensor `{base_name}` vanished")))?;
    if let Some(q) = base.quantized.get(base_name) {
        let own = base.cfg_dtype.unwrap_or(q.state.dtype);
        return Ok((BaseSrc::Bnb(Box::new(q.clone())), q.state.shape.clone(), Some(own)));
    }
    match float_of(loc.info.dtype) {
        Some(fd) => Ok((BaseSrc::Float(Src::base(loc), fd), loc.info.shape.clone(), Some(fd))),
        None if !recipe.deltas.is_empty() || recipe.replace.is_some() || recipe.rows.is_some() => Err(Error::Dtype {
            path: ck.path_of(loc).to_path_buf(),
            tensor: name.to_string(),
            dtype: loc.info.dtype.to_string(),
            op: "a LoRA merge",
        }),
        None => Ok((
            BaseSrc::Float(Src::base(loc), FloatDtype::F32),
            loc.info.shape.clone(),
            None,
        )),
    }
}

/// `merged_4bit`: the settings an output weight is quantized with, or `None` when it is not
/// written as 4-bit. A 4-bit base weight that gets an update keeps its own settings; a 16-bit
/// Linear weight gets the job's.
fn group_settings(
    job: &Job,
    src: &BaseSrc,
    own: Option<FloatDtype>,
    recipe: &Recipe,
    requantized: bool,
    name: &str,
    shape: &[u64],
) -> Option<GroupSettings> {
    match src {
        BaseSrc::Bnb(q) if requantized => Some((
            q.state.quant_type,
            q.state.blocksize,
            q.state.nested.is_some(),
            q.state.dtype,
            recipe.magnitude.is_some().then_some(own.unwrap_or(q.state.dtype)),
        )),
        BaseSrc::Bnb(_) => None,
        BaseSrc::Float(_, fd) if own.is_some() && quantizable(name, shape) => {
            let spec = job.quantize?;
            let dt = job.dtype.unwrap_or(*fd);
            Some((spec.quant_type, spec.blocksize, spec.double_quant, dt, Some(dt)))
        }
        BaseSrc::Float(..) => None,
    }
}
