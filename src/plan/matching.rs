//! Matching: every adapter tensor to the base tensor it changes, with PEFT's scale and rounding
//! for each kind, gathered into one [`Recipe`] per output tensor. Every tensor that fits nothing
//! and every shape that disagrees is listed, and all of them are returned in one error.

use std::collections::BTreeMap;

use serde_json::Value;

use super::op::{factor, Recipe};
use super::quantized::find_quantized;
use super::types::{DeltaSrc, FactorSrc, QuantSrc};
use crate::checkpoint::adapter::{parse_key, AdapterTensorKind};
use crate::checkpoint::{Adapter, Checkpoint};
use crate::error::{Error, Result};
use crate::format::dtype::{float_of, parse_torch_dtype, FloatDtype};
use crate::format::safetensors::TensorInfo;
use crate::job::Job;

/// The base as matching sees it: its tensors, which are 4-bit, whether the head is tied.
pub(super) struct Base<'c> {
    pub ck: &'c Checkpoint,
    /// 4-bit weights, by name.
    pub quantized: BTreeMap<String, QuantSrc>,
    /// `torch_dtype`/`dtype` of `config.json`.
    pub cfg_dtype: Option<FloatDtype>,
    /// No `lm_head.weight` stored and `tie_word_embeddings` not false.
    pub tied: bool,
    /// The input embedding a tied head shares.
    pub emb_name: Option<String>,
}

impl<'c> Base<'c> {
    pub fn new(ck: &'c Checkpoint) -> Result<Self> {
        let quantized = find_quantized(ck)?;
        let has_head = ck.get("lm_head.weight").is_some() || quantized.contains_key("lm_head.weight");
        let tie_cfg = ck
            .config
            .as_ref()
            .and_then(|c| c.get("tie_word_embeddings"))
            .and_then(Value::as_bool);
        Ok(Base {
            ck,
            cfg_dtype: ck.config_dtype().and_then(parse_torch_dtype),
            tied: !has_head && tie_cfg != Some(false),
            emb_name: embedding_name(ck),
            quantized,
        })
    }

    /// The shape of a base weight (a 4-bit one's logical shape).
    pub fn shape(&self, name: &str) -> Option<Vec<u64>> {
        self.quantized
            .get(name)
            .map(|q| q.state.shape.clone())
            .or_else(|| self.ck.get(name).map(|l| l.info.shape.clone()))
    }

    /// The own dtype of a base weight (what PEFT rounds to), if it is a float at all.
    fn own_dtype(&self, name: &str) -> Option<FloatDtype> {
        if let Some(q) = self.quantized.get(name) {
            return Some(self.cfg_dtype.unwrap_or(q.state.dtype));
        }
        self.ck.get(name).and_then(|l| float_of(l.info.dtype))
    }
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

impl Parts {
    fn is_empty(&self) -> bool {
        self.a.is_none()
            && self.b.is_none()
            && self.bias.is_none()
            && self.emb_a.is_none()
            && self.emb_b.is_none()
            && self.magnitude.is_none()
            && self.tokens.is_none()
            && self.base_layer.is_empty()
    }
}

/// The adapter's tensors grouped by module, its full replacements (`modules_to_save`), and the
/// tensors of a kind we do not merge.
struct Grouped {
    modules: BTreeMap<String, Parts>,
    fulls: Vec<(String, TensorInfo)>,
    problems: Vec<String>,
}

fn group_by_module(adapter: &Adapter) -> Grouped {
    let mut g = Grouped {
        modules: BTreeMap::new(),
        fulls: Vec::new(),
        problems: Vec::new(),
    };
    for t in &adapter.weights.header.tensors {
        let key = parse_key(&t.name);
        let parts = g.modules.entry(key.module.clone()).or_default();
        let slot = match key.kind {
            AdapterTensorKind::LoraA => &mut parts.a,
            AdapterTensorKind::LoraB => &mut parts.b,
            AdapterTensorKind::LoraBias => &mut parts.bias,
            AdapterTensorKind::EmbA => &mut parts.emb_a,
            AdapterTensorKind::EmbB => &mut parts.emb_b,
            AdapterTensorKind::Magnitude => &mut parts.magnitude,
            AdapterTensorKind::Tokens => &mut parts.tokens,
            AdapterTensorKind::BaseLayer(param) => {
                parts.base_layer.push((param, t.clone()));
                continue;
            }
            AdapterTensorKind::Full => {
                g.fulls.push((key.module, t.clone()));
                continue;
            }
            AdapterTensorKind::Other(what) => {
                g.problems
                    .push(format!("adapter tensor `{}`: {what} is not supported", t.name));
                continue;
            }
        };
        *slot = Some(t.clone());
    }
    // Full replacements and unsupported kinds made no module of their own.
    g.modules.retain(|_, p| !p.is_empty());
    g
}

/// What matching decided.
pub(super) struct Matched {
    /// One recipe per output tensor that changes.
    pub recipes: BTreeMap<String, Recipe>,
    /// Output tensors that do not exist in the base (an untied head), with the base they copy.
    pub new_tensors: BTreeMap<String, String>,
    pub warnings: Vec<String>,
    pub config_updates: serde_json::Map<String, Value>,
}

/// Matches the whole adapter against `base`, or lists every misfit in one error.
pub(super) fn match_adapter(base: &Base<'_>, adapter: &Adapter, job: &Job) -> Result<Matched> {
    let grouped = group_by_module(adapter);
    let mut m = Matcher {
        base,
        adapter,
        job,
        recipes: BTreeMap::new(),
        new_tensors: BTreeMap::new(),
        warnings: Vec::new(),
        problems: grouped.problems,
    };
    for (module, parts) in &grouped.modules {
        m.module(module, parts);
    }
    for (name, t) in &grouped.fulls {
        m.full(name, t);
    }
    if !m.problems.is_empty() {
        return Err(Error::Coverage {
            adapter: adapter.dir.clone(),
            base: base.ck.dir.clone(),
            modules: grouped.modules.len() + grouped.fulls.len(),
            problems: m.problems,
        });
    }
    let mut config_updates = serde_json::Map::new();
    if !m.new_tensors.is_empty() {
        config_updates.insert("tie_word_embeddings".into(), Value::Bool(false));
    }
    Ok(Matched {
        recipes: m.recipes,
        new_tensors: m.new_tensors,
        warnings: m.warnings,
        config_updates,
    })
}

/// Whether to go on with a module's other tensors (`Some`), or stop at its first misfit.
type Step = Option<()>;
const GO_ON: Step = Some(());
const STOP: Step = None;

struct Matcher<'a, 'c> {
    base: &'a Base<'c>,
    adapter: &'a Adapter,
    job: &'a Job,
    recipes: BTreeMap<String, Recipe>,
    new_tensors: BTreeMap<String, String>,
    warnings: Vec<String>,
    problems: Vec<String>,
}

/// A module's target: the base tensor `module.weight` means, and its shape.
struct Target {
    name: String,
    shape: Option<Vec<u64>>,
}

impl Matcher<'_, '_> {
    /// One module, in PEFT's order: saved base-layer copies, the Linear LoRA, the embedding
    /// LoRA, trainable tokens; a misfit stops the module.
    fn module(&mut self, module: &str, parts: &Parts) {
        let (r_cfg, _alpha, scale) = self.adapter.config.module_scale(module, &self.adapter.pattern_order);
        let target = self.target(module);
        self.base_layer(module, parts, &target);
        let _ = self.deltas(module, parts, &target, r_cfg, scale as f32);
    }

    /// The module's deltas, in order, up to its first misfit.
    fn deltas(&mut self, module: &str, parts: &Parts, target: &Target, r_cfg: u64, scale: f32) -> Step {
        self.linear(module, parts, target, r_cfg, scale)?;
        self.embedding(module, parts, target, scale)?;
        self.tokens(module, parts, target)?;
        if parts.magnitude.is_some() && parts.a.is_none() && parts.emb_a.is_none() {
            self.problems
                .push(format!("`{module}`: lora_magnitude_vector without lora_A/lora_B"));
        }
        GO_ON
    }

    /// Which base tensor `module.weight` means. A tied head has none of its own: its LoRA goes
    /// into the shared embedding (PEFT), or into a new head beside it (`--untie-embeddings`).
    fn target(&mut self, module: &str) -> Target {
        let mut name = format!("{module}.weight");
        if self.base.shape(&name).is_none() && is_head(module) && self.base.tied {
            match &self.base.emb_name {
                Some(e) if self.job.untie_embeddings => {
                    self.new_tensors.insert(name.clone(), e.clone());
                }
                Some(e) => {
                    self.warnings.push(format!(
                        "`{module}` is tied to `{e}`: its LoRA is merged into the shared matrix, so the input embedding changes too (as PEFT does); --untie-embeddings keeps them apart"
                    ));
                    name = e.clone();
                }
                None => {}
            }
        }
        let shape = self
            .new_tensors
            .get(&name)
            .and_then(|src| self.base.shape(src))
            .or_else(|| self.base.shape(&name));
        Target { name, shape }
    }

    /// Saved copies of the wrapped layer's own parameters replace the base's.
    fn base_layer(&mut self, module: &str, parts: &Parts, target: &Target) {
        for (param, t) in &parts.base_layer {
            // The weight follows the (maybe tied) target; other parameters keep their module.
            let (name, want) = if param == "weight" {
                (target.name.clone(), target.shape.clone())
            } else {
                let n = format!("{module}.{param}");
                let s = self.base.shape(&n);
                (n, s)
            };
            if self.base.quantized.contains_key(&name) {
                // A 4-bit base layer is saved dequantized by nobody; PEFT keeps the base's own.
                continue;
            }
            if want.as_deref() != Some(&t.shape[..]) || float_of(t.dtype).is_none() {
                self.problems.push(format!(
                    "adapter tensor `{}` {:?} does not fit base `{name}` {:?}",
                    t.name, t.shape, want
                ));
                continue;
            }
            self.recipes.entry(name).or_default().replace = Some(t.clone());
        }
    }

    /// Both factors of one kind and the base shape they target. A lone factor is a problem but
    /// the module's other kinds are still looked at; a missing target stops the module.
    fn pair<'p>(
        &mut self,
        a: &'p Option<TensorInfo>,
        b: &'p Option<TensorInfo>,
        kind: &str,
        target: &Target,
    ) -> Result<(&'p TensorInfo, &'p TensorInfo, Vec<u64>), Step> {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(x), None) | (None, Some(x)) => {
                self.problems
                    .push(format!("adapter tensor `{}` has no matching {kind} partner", x.name));
                return Err(GO_ON);
            }
            (None, None) => return Err(GO_ON),
        };
        let Some(shape) = target.shape.clone() else {
            self.problems
                .push(format!("adapter tensor `{}`: base has no tensor `{}`", a.name, target.name));
            return Err(STOP);
        };
        Ok((a, b, shape))
    }

    /// `lora_A`/`lora_B` (Linear, or Conv1D with `fan_in_fan_out`), with DoRA's magnitude and
    /// `lora_B.bias`.
    fn linear(&mut self, module: &str, parts: &Parts, target: &Target, r_cfg: u64, scale: f32) -> Step {
        let (a, b, shape) = match self.pair(&parts.a, &parts.b, "lora_A/lora_B", target) {
            Ok(found) => found,
            Err(step) => return step,
        };
        let fan = self.adapter.config.fan_in_fan_out;
        let (out, inn) = match (shape.len() == 2, fan) {
            (true, true) => (shape[1], shape[0]),
            (true, false) => (shape[0], shape[1]),
            (false, _) => (0, 0),
        };
        let fits = a.shape.len() == 2
            && b.shape.len() == 2
            && shape.len() == 2
            && a.shape[0] == b.shape[1]
            && a.shape[0] > 0
            && a.shape[1] == inn
            && b.shape[0] == out;
        if !fits {
            self.problems.push(format!(
                "`{module}`: lora_A {:?} and lora_B {:?} do not fit base `{}` {:?}",
                a.shape, b.shape, target.name, shape
            ));
            return STOP;
        }
        let r = a.shape[0];
        let r_pattern_given = self.adapter.config.rank_pattern.as_ref().is_some_and(|m| !m.is_empty());
        if r != r_cfg && r_pattern_given {
            self.problems
                .push(format!("`{module}`: lora_A has rank {r} but rank_pattern/r say {r_cfg}"));
            return STOP;
        }
        let (Some(fa), Some(fb)) = (factor(a, fan), factor(b, fan)) else {
            self.problems
                .push(format!("`{module}`: LoRA tensors must be BF16, F16 or F32"));
            return STOP;
        };
        let adt = float_of(a.dtype).unwrap_or(FloatDtype::F32);
        if float_of(b.dtype) != Some(adt) {
            self.problems
                .push(format!("`{module}`: lora_A is {} but lora_B is {}", a.dtype, b.dtype));
            return STOP;
        }
        // PEFT on CPU upcasts 16-bit factors, then casts the delta back to their dtype.
        let round_delta = (adt != FloatDtype::F32).then_some(adt);
        let (coef, basis) = if fan { (fa, fb) } else { (fb, fa) };
        let rec = self.recipes.entry(target.name.clone()).or_default();
        rec.deltas.push((
            1,
            DeltaSrc {
                coef,
                basis,
                r: r as usize,
                scale,
                round_delta,
            },
        ));
        if let Some(m) = &parts.magnitude {
            if m.numel() != out || float_of(m.dtype).is_none() {
                self.problems.push(format!(
                    "`{module}`: lora_magnitude_vector {:?} does not fit {out} rows",
                    m.shape
                ));
            } else {
                rec.magnitude = Some(m.clone());
            }
        }
        match &parts.bias {
            Some(bias) => self.lora_bias(module, bias, target, out, scale, round_delta),
            None => GO_ON,
        }
    }

    /// `lora_B.bias`: added to the base's bias, scaled (unscaled into a 4-bit base that is
    /// requantized, as PEFT's bnb `Linear4bit` merge does).
    fn lora_bias(
        &mut self,
        module: &str,
        bias: &TensorInfo,
        target: &Target,
        out: u64,
        scale: f32,
        round_delta: Option<FloatDtype>,
    ) -> Step {
        let bname = format!("{module}.bias");
        match self.base.shape(&bname) {
            Some(bs) if bs == [out] && bias.shape == [out] => {
                let Some(fbias) = factor(bias, false) else {
                    self.problems
                        .push(format!("`{module}`: lora_B.bias must be a float tensor"));
                    return STOP;
                };
                let bias_scale = if self.job.quantize.is_some() && self.base.quantized.contains_key(&target.name) {
                    1.0
                } else {
                    scale
                };
                self.recipes.entry(bname).or_default().deltas.push((
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
            _ => self.problems.push(format!(
                "adapter tensor `{}`: base has no bias `{bname}` of shape [{out}]",
                bias.name
            )),
        }
        GO_ON
    }

    /// `lora_embedding_A`/`_B`: the delta is rounded to the weight's dtype before it is added.
    fn embedding(&mut self, module: &str, parts: &Parts, target: &Target, scale: f32) -> Step {
        let (a, b, shape) = match self.pair(&parts.emb_a, &parts.emb_b, "embedding", target) {
            Ok(found) => found,
            Err(step) => return step,
        };
        let fits = shape.len() == 2
            && a.shape.len() == 2
            && b.shape.len() == 2
            && a.shape[0] == b.shape[1]
            && a.shape[1] == shape[0]
            && b.shape[0] == shape[1];
        if !fits {
            self.problems.push(format!(
                "`{module}`: lora_embedding_A {:?} and lora_embedding_B {:?} do not fit base `{}` {:?}",
                a.shape, b.shape, target.name, shape
            ));
            return STOP;
        }
        let (Some(fa), Some(fb)) = (factor(a, true), factor(b, true)) else {
            self.problems
                .push(format!("`{module}`: embedding LoRA tensors must be BF16, F16 or F32"));
            return STOP;
        };
        let weight = self.new_tensors.get(&target.name).unwrap_or(&target.name);
        let wdt = self.base.own_dtype(weight).unwrap_or(FloatDtype::F32);
        if parts.magnitude.is_some() && parts.a.is_none() {
            self.problems
                .push(format!("`{module}`: DoRA on an embedding is not supported"));
            return STOP;
        }
        self.recipes.entry(target.name.clone()).or_default().deltas.push((
            0,
            DeltaSrc {
                coef: fa,
                basis: fb,
                r: a.shape[0] as usize,
                scale,
                // Embedding merges do `W += delta.to(W.dtype)`: two roundings.
                round_delta: Some(wdt),
            },
        ));
        GO_ON
    }

    /// Trainable tokens: the listed rows of the weight are replaced.
    fn tokens(&mut self, module: &str, parts: &Parts, target: &Target) -> Step {
        let Some(t) = &parts.tokens else { return GO_ON };
        let Some(idx) = token_indices(&self.adapter.config.trainable_token_indices, module) else {
            self.problems.push(format!(
                "adapter tensor `{}`: trainable_token_indices in adapter_config.json does not name `{module}`",
                t.name
            ));
            return STOP;
        };
        let fits = matches!(&target.shape, Some(s) if s.len() == 2 && t.shape.len() == 2 && t.shape[1] == s[1]
            && t.shape[0] == idx.len() as u64 && idx.iter().all(|&i| i < s[0]));
        if !fits || float_of(t.dtype).is_none() {
            self.problems.push(format!(
                "adapter tensor `{}` {:?}: does not fit `{}` {:?} with {} indices",
                t.name,
                t.shape,
                target.name,
                target.shape,
                idx.len()
            ));
            return STOP;
        }
        self.recipes.entry(target.name.clone()).or_default().rows = Some((idx, t.clone()));
        GO_ON
    }

    /// `modules_to_save`: a full trained copy replaces the base tensor; a trained copy of a
    /// tied head unties it (both written, as PEFT does).
    fn full(&mut self, name: &str, t: &TensorInfo) {
        let shape = self.base.shape(name);
        if shape.is_some() {
            if self.base.quantized.contains_key(name) {
                self.problems.push(format!(
                    "adapter tensor `{}`: replacing a 4-bit weight is not supported",
                    t.name
                ));
                return;
            }
            if shape.as_deref() != Some(&t.shape[..]) {
                self.problems.push(format!(
                    "adapter tensor `{}` {:?} does not fit base `{name}` {:?}",
                    t.name, t.shape, shape
                ));
                return;
            }
            self.recipes.entry(name.to_string()).or_default().replace = Some(t.clone());
        } else if name.ends_with("lm_head.weight") && self.base.tied && self.base.emb_name.is_some() {
            self.new_tensors
                .insert(name.to_string(), self.base.emb_name.clone().unwrap_or_default());
            self.recipes.entry(name.to_string()).or_default().replace = Some(t.clone());
        } else {
            self.problems
                .push(format!("adapter tensor `{}`: base has no tensor `{name}`", t.name));
        }
    }
}
