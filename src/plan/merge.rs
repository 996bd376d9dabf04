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

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    find_quantized, is_quant_helper, layout, rows_cols, BaseSrc, DeltaSrc, Extra, FactorSrc, FileRef, LayoutArgs,
    LoraSrc, Op, OutTensor, Plan, PlanCounts, QuantGroup, QuantPart, QuantSrc, Src,
};
use crate::checkpoint::adapter::{parse_key, AdapterTensorKind};
use crate::checkpoint::{Adapter, Checkpoint};
use crate::error::{Error, Result};
use crate::format::dtype::FloatDtype;
use crate::format::dtype::{float_of, parse_torch_dtype, st_dtype};
use crate::format::safetensors::TensorInfo;
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

/// The adapter tensors of one module.
#[derive(Debug, Default)]
struct Parts {
    a: Option<TensorInfo>,
    b: Option<TensorInfo>,
    bias: Option<TensorInfo>,
    emb_a: Option<TensorInfo>,
    emb_b: Option<TensorInfo>,
    magnitude: Option<TensorInfo>,
    tokens: Option<TensorInfo>,
    /// Saved copies of the wrapped layer's own parameters (`base_layer.weight` / `.bias`).
    base_layer: Vec<(String, TensorInfo)>,
}

/// What happens to one base (or new) output tensor.
#[derive(Debug, Default)]
struct Recipe {
    /// Embedding-style deltas first (PEFT merges modules in registration order and the input
    /// embedding precedes the head), then Linear ones.
    deltas: Vec<(u8, DeltaSrc)>,
    magnitude: Option<TensorInfo>,
    rows: Option<(Vec<u64>, TensorInfo)>,
    replace: Option<TensorInfo>,
}

fn factor(info: &TensorInfo, transpose: bool) -> Option<FactorSrc> {
    Some(FactorSrc::Tensor {
        dtype: float_of(info.dtype)?,
        info: info.clone(),
        transpose,
    })
}

/// The input-embedding tensor a tied `lm_head` shares.
fn embedding_name(ck: &Checkpoint) -> Option<String> {
    [
        "embed_tokens.weight",
        "wte.weight",
        "word_embeddings.weight",
        "embed_in.weight",
    ]
    .iter()
    .find_map(|suffix| ck.tensors.iter().map(|(n, _)| n).find(|n| n.ends_with(suffix)).cloned())
}

fn is_head(module: &str) -> bool {
    module == "lm_head" || module.ends_with(".lm_head")
}

/// Trainable-token indices for `module` from `trainable_token_indices` (a list applies to the
/// input embedding; a dict maps module names, matched by suffix, to lists).
fn token_indices(cfg: &Option<Value>, module: &str) -> Option<Vec<u64>> {
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect::<Vec<_>>())
    };
    match cfg.as_ref()? {
        v @ Value::Array(_) => list(v),
        Value::Object(m) => m
            .iter()
            .find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
            .and_then(|(_, v)| list(v)),
        _ => None,
    }
}

/// Plans a `merged_16bit` save.
pub fn plan_merged(ck: &Checkpoint, adapter: &Adapter, job: &Job) -> Result<Plan> {
    let (max_shard_size, order, variant) = job.safetensors_layout();
    let quantized = find_quantized(ck)?;
    let cfg_dtype = ck.config_dtype().and_then(parse_torch_dtype);
    let cfg = &adapter.config;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut config_updates = serde_json::Map::new();

    // Group adapter tensors by module.
    let mut modules: BTreeMap<String, Parts> = BTreeMap::new();
    let mut fulls: Vec<(String, TensorInfo)> = Vec::new();
    for t in &adapter.weights.header.tensors {
        let key = parse_key(&t.name);
        fn slot<'p>(parts: &'p mut Parts, kind: &AdapterTensorKind) -> &'p mut Option<TensorInfo> {
            match kind {
                AdapterTensorKind::LoraA => &mut parts.a,
                AdapterTensorKind::LoraB => &mut parts.b,
                AdapterTensorKind::LoraBias => &mut parts.bias,
                AdapterTensorKind::EmbA => &mut parts.emb_a,
                AdapterTensorKind::EmbB => &mut parts.emb_b,
                AdapterTensorKind::Magnitude => &mut parts.magnitude,
                _ => &mut parts.tokens,
            }
        }
        match key.kind {
            AdapterTensorKind::LoraA
            | AdapterTensorKind::LoraB
            | AdapterTensorKind::LoraBias
            | AdapterTensorKind::EmbA
            | AdapterTensorKind::EmbB
            | AdapterTensorKind::Magnitude
            | AdapterTensorKind::Tokens => {
                *slot(modules.entry(key.module.clone()).or_default(), &key.kind) = Some(t.clone());
            }
            AdapterTensorKind::Full => fulls.push((key.module, t.clone())),
            AdapterTensorKind::BaseLayer(param) => modules
                .entry(key.module.clone())
                .or_default()
                .base_layer
                .push((param, t.clone())),
            AdapterTensorKind::Other(what) => {
                problems.push(format!("adapter tensor `{}`: {what} is not supported", t.name))
            }
        }
    }

    let has_head = ck.get("lm_head.weight").is_some() || quantized.contains_key("lm_head.weight");
    let tie_cfg = ck
        .config
        .as_ref()
        .and_then(|c| c.get("tie_word_embeddings"))
        .and_then(Value::as_bool);
    let tied = !has_head && tie_cfg != Some(false);
    let emb_name = embedding_name(ck);
    let base_shape = |name: &str| -> Option<Vec<u64>> {
        quantized
            .get(name)
            .map(|q| q.state.shape.clone())
            .or_else(|| ck.get(name).map(|l| l.info.shape.clone()))
    };
    // The own dtype of a base weight (what PEFT rounds to), and whether it is float at all.
    let own_dtype = |name: &str| -> Option<FloatDtype> {
        if let Some(q) = quantized.get(name) {
            return Some(cfg_dtype.unwrap_or(q.state.dtype));
        }
        ck.get(name).and_then(|l| float_of(l.info.dtype))
    };

    let mut recipes: BTreeMap<String, Recipe> = BTreeMap::new();
    // Output tensors that do not exist in the base (an untied head), with the base they copy.
    let mut new_tensors: BTreeMap<String, String> = BTreeMap::new();

    for (module, parts) in &modules {
        let (r_cfg, _alpha, scale) = cfg.module_scale(module, &adapter.pattern_order);
        let scale32 = scale as f32;
        // Which base tensor does `module.weight` mean? A tied head has none of its own.
        let mut target = format!("{module}.weight");
        if base_shape(&target).is_none() && is_head(module) && tied {
            match &emb_name {
                Some(e) if job.untie_embeddings => {
                    new_tensors.insert(target.clone(), e.clone());
                }
                Some(e) => {
                    warnings.push(format!(
                        "`{module}` is tied to `{e}`: its LoRA is merged into the shared matrix, so the input embedding changes too (as PEFT does); --untie-embeddings keeps them apart"
                    ));
                    target = e.clone();
                }
                None => {}
            }
        }
        let shape = new_tensors
            .get(&target)
            .and_then(|src| base_shape(src))
            .or_else(|| base_shape(&target));
        for (param, t) in &parts.base_layer {
            // The weight follows the (maybe tied) target; other parameters keep their module.
            let name = if param == "weight" {
                target.clone()
            } else {
                format!("{module}.{param}")
            };
            let want = if param == "weight" {
                shape.clone()
            } else {
                base_shape(&name)
            };
            if quantized.contains_key(&name) {
                // A 4-bit base layer is saved dequantized by nobody; PEFT keeps the base's own.
                continue;
            }
            if want.as_deref() != Some(&t.shape[..]) || float_of(t.dtype).is_none() {
                problems.push(format!(
                    "adapter tensor `{}` {:?} does not fit base `{name}` {:?}",
                    t.name, t.shape, want
                ));
                continue;
            }
            recipes.entry(name).or_default().replace = Some(t.clone());
        }

        match (&parts.a, &parts.b) {
            (Some(a), Some(b)) => {
                let Some(shape) = shape.clone() else {
                    problems.push(format!("adapter tensor `{}`: base has no tensor `{target}`", a.name));
                    continue;
                };
                let fan = cfg.fan_in_fan_out;
                let (out, inn) = if shape.len() == 2 {
                    if fan {
                        (shape[1], shape[0])
                    } else {
                        (shape[0], shape[1])
                    }
                } else {
                    (0, 0)
                };
                let ok = a.shape.len() == 2
                    && b.shape.len() == 2
                    && shape.len() == 2
                    && a.shape[0] == b.shape[1]
                    && a.shape[0] > 0
                    && a.shape[1] == inn
                    && b.shape[0] == out;
                if !ok {
                    problems.push(format!(
                        "`{module}`: lora_A {:?} and lora_B {:?} do not fit base `{target}` {:?}",
                        a.shape, b.shape, shape
                    ));
                    continue;
                }
                let r = a.shape[0];
                let r_pattern_given = cfg.rank_pattern.as_ref().is_some_and(|m| !m.is_empty());
                if r != r_cfg && r_pattern_given {
                    problems.push(format!(
                        "`{module}`: lora_A has rank {r} but rank_pattern/r say {r_cfg}"
                    ));
                    continue;
                }
                let (Some(fa), Some(fb)) = (factor(a, fan), factor(b, fan)) else {
                    problems.push(format!("`{module}`: LoRA tensors must be BF16, F16 or F32"));
                    continue;
                };
                let adt = float_of(a.dtype).unwrap_or(FloatDtype::F32);
                if float_of(b.dtype) != Some(adt) {
                    problems.push(format!("`{module}`: lora_A is {} but lora_B is {}", a.dtype, b.dtype));
                    continue;
                }
                // PEFT on CPU upcasts 16-bit factors, then casts the delta back to their dtype.
                let round_delta = (adt != FloatDtype::F32).then_some(adt);
                let (coef, basis) = if fan { (fa, fb) } else { (fb, fa) };
                let rec = recipes.entry(target.clone()).or_default();
                rec.deltas.push((
                    1,
                    DeltaSrc {
                        coef,
                        basis,
                        r: r as usize,
                        scale: scale32,
                        round_delta,
                    },
                ));
                if let Some(m) = &parts.magnitude {
                    if m.numel() != out || float_of(m.dtype).is_none() {
                        problems.push(format!(
                            "`{module}`: lora_magnitude_vector {:?} does not fit {out} rows",
                            m.shape
                        ));
                    } else {
                        rec.magnitude = Some(m.clone());
                    }
                }
                if let Some(bias) = &parts.bias {
                    let bname = format!("{module}.bias");
                    match base_shape(&bname) {
                        Some(bs) if bs == [out] && bias.shape == [out] => {
                            let Some(fbias) = factor(bias, false) else {
                                problems.push(format!("`{module}`: lora_B.bias must be a float tensor"));
                                continue;
                            };
                            // PEFT's bnb Linear4bit merge adds lora_B.bias unscaled.
                            let bias_scale = if job.quantize.is_some() && quantized.contains_key(&target) {
                                1.0
                            } else {
                                scale32
                            };
                            recipes.entry(bname).or_default().deltas.push((
                                1,
                                DeltaSrc {
                                    coef: fbias,
                                    basis: FactorSrc::Ones,
                                    r: 1,
                                    scale: bias_scale,
                                    round_delta,
                                },
                            ));
                        }
                        _ => problems.push(format!(
                            "adapter tensor `{}`: base has no bias `{bname}` of shape [{out}]",
                            bias.name
                        )),
                    }
                }
            }
            (Some(x), None) | (None, Some(x)) => {
                problems.push(format!(
                    "adapter tensor `{}` has no matching lora_A/lora_B partner",
                    x.name
                ));
            }
            (None, None) => {}
        }

        match (&parts.emb_a, &parts.emb_b) {
            (Some(a), Some(b)) => {
                let Some(shape) = shape.clone() else {
                    problems.push(format!("adapter tensor `{}`: base has no tensor `{target}`", a.name));
                    continue;
                };
                let ok = shape.len() == 2
                    && a.shape.len() == 2
                    && b.shape.len() == 2
                    && a.shape[0] == b.shape[1]
                    && a.shape[1] == shape[0]
                    && b.shape[0] == shape[1];
                if !ok {
                    problems.push(format!(
                        "`{module}`: lora_embedding_A {:?} and lora_embedding_B {:?} do not fit base `{target}` {:?}",
                        a.shape, b.shape, shape
                    ));
                    continue;
                }
                let (Some(fa), Some(fb)) = (factor(a, true), factor(b, true)) else {
                    problems.push(format!("`{module}`: embedding LoRA tensors must be BF16, F16 or F32"));
                    continue;
                };
                let wdt = own_dtype(new_tensors.get(&target).unwrap_or(&target)).unwrap_or(FloatDtype::F32);
                if parts.magnitude.is_some() && parts.a.is_none() {
                    problems.push(format!("`{module}`: DoRA on an embedding is not supported"));
                    continue;
                }
                recipes.entry(target.clone()).or_default().deltas.push((
                    0,
                    DeltaSrc {
                        coef: fa,
                        basis: fb,
                        r: a.shape[0] as usize,
                        scale: scale32,
                        // Embedding merges do `W += delta.to(W.dtype)`: two roundings.
                        round_delta: Some(wdt),
                    },
                ));
            }
            (Some(x), None) | (None, Some(x)) => {
                problems.push(format!("adapter tensor `{}` has no matching embedding partner", x.name));
            }
            (None, None) => {}
        }

        if let Some(t) = &parts.tokens {
            let Some(idx) = token_indices(&cfg.trainable_token_indices, module) else {
                problems.push(format!(
                    "adapter tensor `{}`: trainable_token_indices in adapter_config.json does not name `{module}`",
                    t.name
                ));
                continue;
            };
            let ok = matches!(&shape, Some(s) if s.len() == 2 && t.shape.len() == 2 && t.shape[1] == s[1]
                && t.shape[0] == idx.len() as u64 && idx.iter().all(|&i| i < s[0]));
            if !ok || float_of(t.dtype).is_none() {
                problems.push(format!(
                    "adapter tensor `{}` {:?}: does not fit `{target}` {:?} with {} indices",
                    t.name,
                    t.shape,
                    shape,
                    idx.len()
                ));
                continue;
            }
            recipes.entry(target.clone()).or_default().rows = Some((idx, t.clone()));
        }
        if parts.magnitude.is_some() && parts.a.is_none() && parts.emb_a.is_none() {
            problems.push(format!("`{module}`: lora_magnitude_vector without lora_A/lora_B"));
        }
    }

    // modules_to_save: full replacements.
    for (name, t) in &fulls {
        if base_shape(name).is_some() {
            if quantized.contains_key(name) {
                problems.push(format!(
                    "adapter tensor `{}`: replacing a 4-bit weight is not supported",
                    t.name
                ));
                continue;
            }
            if base_shape(name).as_deref() != Some(&t.shape[..]) {
                problems.push(format!(
                    "adapter tensor `{}` {:?} does not fit base `{name}` {:?}",
                    t.name,
                    t.shape,
                    base_shape(name)
                ));
                continue;
            }
            recipes.entry(name.clone()).or_default().replace = Some(t.clone());
        } else if name.ends_with("lm_head.weight") && tied && emb_name.is_some() {
            // A trained copy of a tied head unties it: write both, as PEFT does.
            new_tensors.insert(name.clone(), emb_name.clone().unwrap_or_default());
            recipes.entry(name.clone()).or_default().replace = Some(t.clone());
        } else {
            problems.push(format!("adapter tensor `{}`: base has no tensor `{name}`", t.name));
        }
    }
    if !new_tensors.is_empty() {
        config_updates.insert("tie_word_embeddings".into(), Value::Bool(false));
    }
    if !problems.is_empty() {
        return Err(Error::Coverage {
            adapter: adapter.dir.clone(),
            base: ck.dir.clone(),
            modules: modules.len() + fulls.len(),
            problems,
        });
    }

    let mut counts = PlanCounts::default();
    let mut tensors = Vec::new();
    let mut names: Vec<(String, Option<String>)> = Vec::new();
    // 4-bit weights of the base that get an update are quantized again; the others keep their bytes.
    let requant: std::collections::HashSet<String> = if job.quantize.is_some() {
        quantized.keys().filter(|k| recipes.contains_key(*k)).cloned().collect()
    } else {
        Default::default()
    };
    let mut quant_groups: Vec<QuantGroup> = Vec::new();
    for (name, loc) in &ck.tensors {
        if is_quant_helper(name, &quantized) {
            let owner = quantized.keys().find(|k| name.starts_with(&format!("{k}.")));
            match owner {
                Some(o) if job.quantize.is_some() && !requant.contains(o) => {
                    counts.copied += 1;
                    tensors.push(OutTensor {
                        name: name.clone(),
                        dtype: loc.info.dtype,
                        shape: loc.info.shape.clone(),
                        nbytes: loc.info.nbytes(),
                        rows: loc.info.nbytes(),
                        cols: 1,
                        op: Op::Copy(Src::base(loc)),
                        params: 0,
                        shard: 0,
                        offset: 0,
                    });
                }
                _ => counts.consumed_quant_helpers += 1,
            }
            continue;
        }
        names.push((name.clone(), None));
    }
    for (name, src) in &new_tensors {
        names.push((name.clone(), Some(src.clone())));
    }
    for (name, source) in names {
        let base_name = source.as_deref().unwrap_or(&name);
        let recipe = recipes.remove(&name).unwrap_or_default();
        let loc = ck
            .get(base_name)
            .ok_or_else(|| Error::Internal(format!("planned tensor `{base_name}` vanished")))?;
        let (base, shape, own): (BaseSrc, Vec<u64>, Option<FloatDtype>) = if let Some(q) = quantized.get(base_name) {
            let own = cfg_dtype.unwrap_or(q.state.dtype);
            (BaseSrc::Bnb(Box::new(q.clone())), q.state.shape.clone(), Some(own))
        } else {
            match float_of(loc.info.dtype) {
                Some(fd) => (BaseSrc::Float(Src::base(loc), fd), loc.info.shape.clone(), Some(fd)),
                None => {
                    if !recipe.deltas.is_empty() || recipe.replace.is_some() || recipe.rows.is_some() {
                        return Err(Error::Dtype {
                            path: ck.path_of(loc).to_path_buf(),
                            tensor: name.clone(),
                            dtype: loc.info.dtype.to_string(),
                            op: "a LoRA merge",
                        });
                    }
                    (
                        BaseSrc::Float(Src::base(loc), FloatDtype::F32),
                        loc.info.shape.clone(),
                        None,
                    )
                }
            }
        };
        if let Some(spec) = &job.quantize {
            // The group's settings: a 4-bit base weight keeps its own; a 16-bit one gets `spec`.
            let q = match &base {
                BaseSrc::Bnb(q) if requant.contains(base_name) => Some((
                    q.state.quant_type,
                    q.state.blocksize,
                    q.state.nested.is_some(),
                    q.state.dtype,
                    recipe.magnitude.is_some().then_some(own.unwrap_or(q.state.dtype)),
                )),
                BaseSrc::Bnb(_) => None,
                BaseSrc::Float(_, fd) if own.is_some() && quantizable(&name, &shape) => {
                    let dt = job.dtype.unwrap_or(*fd);
                    Some((spec.quant_type, spec.blocksize, spec.double_quant, dt, Some(dt)))
                }
                BaseSrc::Float(..) => None,
            };
            if let Some((qt, bs, dq, state_dtype, pre_round)) = q {
                let updated = !recipe.deltas.is_empty() || recipe.rows.is_some() || recipe.replace.is_some();
                let source = match build_op(base.clone(), own, recipe, None, &mut counts).0 {
                    Op::Copy(_) => Op::Compute {
                        base,
                        lora: None,
                        extra: None,
                    },
                    op => op,
                };
                if !updated {
                    counts.quantized += 1;
                }
                let gi = quant_groups.len();
                let (o, i) = (shape[0], shape[1]);
                let n = o * i;
                let nb = n.div_ceil(bs);
                quant_groups.push(QuantGroup {
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
                let state_len = quant_groups[gi].state_json().len() as u64;
                let u8d = crate::format::safetensors::Dtype::U8;
                let f32d = crate::format::safetensors::Dtype::F32;
                let mut parts: Vec<(String, crate::format::safetensors::Dtype, Vec<u64>, QuantPart, u64)> = vec![
                    (
                        name.clone(),
                        u8d,
                        vec![n.div_ceil(2), 1],
                        QuantPart::Codes,
                        2 * n.div_ceil(2),
                    ),
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
                    parts.push((
                        format!("{name}.nested_quant_map"),
                        f32d,
                        vec![256],
                        QuantPart::NestedMap,
                        0,
                    ));
                }
                for (pname, dt, pshape, part, params) in parts {
                    let nbytes = pshape.iter().product::<u64>() * dt.bits() / 8;
                    tensors.push(OutTensor {
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
                    });
                }
                continue;
            }
            if let BaseSrc::Bnb(q) = &base {
                // A 4-bit weight without an update keeps its bytes.
                let src = q.codes.clone();
                counts.copied += 1;
                tensors.push(OutTensor {
                    name: name.clone(),
                    dtype: src.info.dtype,
                    shape: src.info.shape.clone(),
                    nbytes: src.info.nbytes(),
                    rows: src.info.nbytes(),
                    cols: 1,
                    params: 2 * src.info.nbytes(),
                    op: Op::Copy(src),
                    shard: 0,
                    offset: 0,
                });
                continue;
            }
        }
        let (op, out_dtype) = build_op(base, own, recipe, job.dtype, &mut counts);
        let numel: u64 = shape.iter().product();
        let (rows, cols) = rows_cols(&shape);
        tensors.push(OutTensor {
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
        });
    }
    let model_dtype = job
        .dtype
        .or(cfg_dtype)
        .or_else(|| quantized.values().next().map(|q: &QuantSrc| q.state.dtype));
    let mut plan = layout(
        job,
        tensors,
        LayoutArgs::new(max_shard_size, order, "model", variant),
        model_dtype,
        counts,
    );
    plan.warnings = warnings;
    plan.config_updates = config_updates;
    plan.quant_groups = quant_groups;
    Ok(plan)
}

/// Chooses the op for one output tensor: a byte copy, the fast LoRA path, or the general path.
fn build_op(
    base: BaseSrc,
    own: Option<FloatDtype>,
    mut recipe: Recipe,
    dtype: Option<FloatDtype>,
    counts: &mut PlanCounts,
) -> (Op, crate::format::safetensors::Dtype) {
    let Some(own) = own else {
        counts.copied += 1;
        let BaseSrc::Float(src, _) = base else {
            unreachable!("non-float bases are never 4-bit")
        };
        let dt = src.info.dtype;
        return (Op::Copy(src), dt);
    };
    let out = dtype.unwrap_or(own);
    // modules_to_save: the trained copy replaces the base tensor.
    let base = match recipe.replace.take() {
        Some(t) => {
            let fd = float_of(t.dtype).unwrap_or(FloatDtype::F32);
            BaseSrc::Float(
                Src {
                    file: FileRef::Adapter,
                    info: t,
                },
                fd,
            )
        }
        None => base,
    };
    recipe.deltas.sort_by_key(|(order, _)| *order);
    let plain = recipe.deltas.is_empty() && recipe.magnitude.is_none() && recipe.rows.is_none();
    if plain {
        return match base {
            BaseSrc::Float(src, fd) if fd == out => {
                counts.copied += 1;
                (Op::Copy(src), st_dtype(out))
            }
            BaseSrc::Float(..) => {
                counts.converted += 1;
                (
                    Op::Compute {
                        base,
                        lora: None,
                        extra: None,
                    },
                    st_dtype(out),
                )
            }
            BaseSrc::Bnb(_) => {
                counts.dequantized += 1;
                (
                    Op::Compute {
                        base,
                        lora: None,
                        extra: None,
                    },
                    st_dtype(out),
                )
            }
        };
    }
    counts.merged += 1;
    // The fast path: one plain Linear LoRA, factors as stored.
    if recipe.magnitude.is_none() && recipe.rows.is_none() && recipe.deltas.len() == 1 {
        if let (
            _,
            DeltaSrc {
                coef:
                    FactorSrc::Tensor {
                        info: b,
                        transpose: false,
                        dtype: bdt,
                    },
                basis:
                    FactorSrc::Tensor {
                        info: a,
                        transpose: false,
                        ..
                    },
                r,
                scale,
                round_delta,
            },
        ) = &recipe.deltas[0]
        {
            if round_delta.is_none() || *round_delta == Some(*bdt) {
                let lora = LoraSrc {
                    a: a.clone(),
                    b: b.clone(),
                    r: *r,
                    scale: *scale,
                    dtype: *bdt,
                };
                return (
                    Op::Compute {
                        base,
                        lora: Some(lora),
                        extra: None,
                    },
                    st_dtype(out),
                );
            }
        }
    }
    let extra = Extra {
        deltas: recipe.deltas.into_iter().map(|(_, d)| d).collect(),
        magnitude: recipe.magnitude,
        rows: recipe.rows,
        work_dtype: own,
    };
    (
        Op::Compute {
            base,
            lora: None,
            extra: Some(Box::new(extra)),
        },
        st_dtype(out),
    )
}
