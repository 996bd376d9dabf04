//! The architectures the converter route is reproduced for: the HF → GGUF tensor names
//! (gguf-py's `tensor_mapping.py` for these models), the transforms of `modify_tensors`
//! (Llama's rotary un-permute of q/k), the generated tensors (Llama-3's `rope_freqs`), the type
//! each tensor gets for an `--outtype`, and the hyperparameters llama-quantize's rules read.

use std::path::Path;

use serde_json::Value as Json;

use super::{unsupported, Mapped};
use crate::error::Result;
use crate::format::gguf::GgmlType;
use crate::format::gguf_rules::FileType;

/// A supported architecture (`config.json`'s `architectures[0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    /// `LlamaForCausalLM`.
    Llama,
    /// `MistralForCausalLM` (written as `llama`).
    Mistral,
    /// `Qwen2ForCausalLM`.
    Qwen2,
    /// `Gemma3ForCausalLM` (text only).
    Gemma3,
    /// `Phi3ForCausalLM` (fused qkv and gate_up, kept fused).
    Phi3,
}

/// The HF architectures and what they become.
const SUPPORTED: &[(&str, Arch)] = &[
    ("LlamaForCausalLM", Arch::Llama),
    ("MistralForCausalLM", Arch::Mistral),
    ("Qwen2ForCausalLM", Arch::Qwen2),
    ("Gemma3ForCausalLM", Arch::Gemma3),
    ("Phi3ForCausalLM", Arch::Phi3),
];

/// A config value as an integer.
pub(crate) fn int(cfg: &Json, key: &str) -> Option<u64> {
    cfg.get(key).and_then(Json::as_u64)
}

impl Arch {
    /// The architecture of `config`, or the refusal naming it.
    pub fn from_config(cfg: &Json, path: &Path) -> Result<Self> {
        let name = cfg
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Json::as_str)
            .ok_or_else(|| unsupported(path, "GGUF output: config.json names no `architectures`"))?;
        SUPPORTED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                let list: Vec<&str> = SUPPORTED.iter().map(|(n, _)| *n).collect();
                unsupported(
                    path,
                    format!("GGUF output of {name} is not supported (supported: {})", list.join(", ")),
                )
            })
    }

    /// `general.architecture`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama | Arch::Mistral => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
        }
    }

    /// The converter class's vocabulary path.
    pub fn vocab_arch(self) -> super::vocab::Arch {
        match self {
            Arch::Llama => super::vocab::Arch::Llama,
            Arch::Mistral => super::vocab::Arch::Mistral,
            Arch::Qwen2 => super::vocab::Arch::Qwen2,
            Arch::Gemma3 => super::vocab::Arch::Gemma3,
            Arch::Phi3 => super::vocab::Arch::Phi3,
        }
    }

    fn permutes(self) -> bool {
        matches!(self, Arch::Llama | Arch::Mistral)
    }

    /// The GGUF name of an HF tensor and its transforms; `None` when the converter skips it.
    pub fn map_tensor(self, name: &str, shape: &[u64], cfg: &Json, dir: &Path) -> Result<Option<Mapped>> {
        if name.ends_with(".rotary_emb.inv_freq") || name.ends_with(".attention.masked_bias") || name.ends_with(".attention.bias") {
            return Ok(None);
        }
        let (stem, suffix) = match name.rsplit_once('.') {
            Some((s, x @ ("weight" | "bias"))) => (s, x),
            _ => return Err(unsupported(dir, format!("GGUF output: cannot map tensor `{name}`"))),
        };
        let mapped = if let Some(rest) = stem.strip_prefix("model.layers.") {
            let (bid, module) = rest.split_once('.').unwrap_or((rest, ""));
            if bid.is_empty() || !bid.bytes().all(|b| b.is_ascii_digit()) {
                return Err(unsupported(dir, format!("GGUF output: cannot map tensor `{name}`")));
            }
            let g = match (self, module) {
                (_, "input_layernorm") => "attn_norm",
                (Arch::Gemma3, "post_attention_layernorm") => "post_attention_norm",
                (Arch::Gemma3, "pre_feedforward_layernorm") => "ffn_norm",
                (Arch::Gemma3, "post_feedforward_layernorm") => "post_ffw_norm",
                (Arch::Gemma3, "self_attn.q_norm") => "attn_q_norm",
                (Arch::Gemma3, "self_attn.k_norm") => "attn_k_norm",
                (_, "post_attention_layernorm") => "ffn_norm",
                (Arch::Phi3, "self_attn.qkv_proj") => "attn_qkv",
                (Arch::Phi3, "mlp.gate_up_proj") => "ffn_up",
                (Arch::Phi3, "self_attn.o_proj") => "attn_output",
                (Arch::Phi3, "mlp.down_proj") => "ffn_down",
                (Arch::Phi3, _) => return Err(unsupported(dir, format!("GGUF output: cannot map tensor `{name}`"))),
                (_, "self_attn.q_proj") => "attn_q",
                (_, "self_attn.k_proj") => "attn_k",
                (_, "self_attn.v_proj") => "attn_v",
                (_, "self_attn.o_proj") => "attn_output",
                (_, "mlp.gate_proj") => "ffn_gate",
                (_, "mlp.up_proj") => "ffn_up",
                (_, "mlp.down_proj") => "ffn_down",
                _ => return Err(unsupported(dir, format!("GGUF output: cannot map tensor `{name}`"))),
            };
            format!("blk.{bid}.{g}.{suffix}")
        } else {
            let g = match stem {
                "model.embed_tokens" => "token_embd",
                "model.norm" => "output_norm",
                "lm_head" => "output",
                _ => return Err(unsupported(dir, format!("GGUF output: cannot map tensor `{name}`"))),
            };
            format!("{g}.{suffix}")
        };
        // Llama's rotary layout: q with all heads, k with the key/value heads.
        let heads = match (self.permutes(), stem.rsplit('.').next()) {
            (true, Some("q_proj")) => int(cfg, "num_attention_heads"),
            (true, Some("k_proj")) => int(cfg, "num_key_value_heads").or_else(|| int(cfg, "num_attention_heads")),
            _ => None,
        };
        if let Some(h) = heads {
            let rows = shape.first().copied().unwrap_or(0);
            if h == 0 || rows % (2 * h) != 0 {
                return Err(unsupported(dir, format!("GGUF output: `{name}` has {rows} rows, not a multiple of 2 × {h} heads")));
            }
        }
        Ok(Some(Mapped {
            name: mapped,
            heads,
            // Gemma3RMSNorm scales by 1 + weight; the converter stores 1 + weight.
            add_one: self == Arch::Gemma3 && name.ends_with("norm.weight"),
            rows: None,
        }))
    }

    /// Tensors the converter generates: Llama-3's `rope_freqs.weight` for `rope_type: llama3`,
    /// Phi-3's `rope_factors_long/short.weight` for long-context rope.
    pub fn generated(self, cfg: &Json) -> Vec<(String, Vec<f32>)> {
        let rope = rope_params(cfg);
        if self == Arch::Phi3 {
            let list = |k: &str| -> Option<Vec<f32>> {
                let v = rope.get(k)?.as_array()?;
                Some(v.iter().filter_map(Json::as_f64).map(|x| x as f32).collect())
            };
            return match (list("long_factor").filter(|l| !l.is_empty()), list("short_factor")) {
                (Some(l), Some(s)) => vec![
                    ("rope_factors_long.weight".to_string(), l),
                    ("rope_factors_short.weight".to_string(), s),
                ],
                _ => Vec::new(),
            };
        }
        if !self.permutes() {
            return Vec::new();
        }
        let rope = full_attention(&rope);
        if rope.get("rope_type").and_then(Json::as_str).map(str::to_ascii_lowercase).as_deref() != Some("llama3") {
            return Vec::new();
        }
        let base = rope.get("rope_theta").and_then(Json::as_f64).unwrap_or(10000.0);
        let dim = head_dim(cfg);
        let get = |k: &str, d: f64| rope.get(k).and_then(Json::as_f64).unwrap_or(d);
        let factor = get("factor", 8.0);
        let low = get("low_freq_factor", 1.0);
        let high = get("high_freq_factor", 4.0);
        let old_ctx = get("original_max_position_embeddings", 8192.0);
        vec![("rope_freqs.weight".to_string(), llama3_rope_factors(base, dim, factor, low, high, old_ctx))]
    }
}

/// The config as the converter reads it, `AutoConfig.from_pretrained(dir).to_dict()` of
/// transformers 4.57.6: the keys it reads, filled with the config class's defaults where
/// config.json lacks them.
pub(crate) fn hparams(arch: Arch, cfg: &Json) -> Json {
    let mut h = cfg.clone();
    let Json::Object(m) = &mut h else { return h };
    let heads_default = match arch {
        Arch::Gemma3 => 8,
        _ => 32,
    };
    let heads = m.get("num_attention_heads").and_then(Json::as_u64).unwrap_or(heads_default);
    let (max_pos, kv_default) = match arch {
        Arch::Llama => (2048u64, heads),
        Arch::Mistral => (4096 * 32, 8),
        Arch::Qwen2 => (32768, heads),
        Arch::Gemma3 => (131072, 4),
        Arch::Phi3 => (4096, heads),
    };
    let hidden = m.get("hidden_size").and_then(Json::as_u64).unwrap_or(4096);
    let default = |m: &mut serde_json::Map<String, Json>, k: &str, v: Json| {
        if m.get(k).is_none_or(Json::is_null) {
            m.insert(k.to_string(), v);
        }
    };
    default(m, "num_attention_heads", heads.into());
    default(m, "max_position_embeddings", max_pos.into());
    default(m, "num_key_value_heads", kv_default.into());
    default(m, "rms_norm_eps", if arch == Arch::Phi3 { 1e-5 } else { 1e-6 }.into());
    default(m, "rope_theta", if arch == Arch::Gemma3 { 1_000_000.0 } else { 10000.0 }.into());
    if arch == Arch::Gemma3 {
        default(m, "head_dim", 256.into());
        default(m, "rope_local_base_freq", 10000.0.into());
        default(m, "sliding_window", 4096.into());
    }
    if arch == Arch::Phi3 {
        default(m, "original_max_position_embeddings", 4096.into());
    }
    if arch == Arch::Llama {
        // LlamaConfig always sets head_dim (hidden_size / heads when null).
        default(m, "head_dim", (hidden / heads.max(1)).into());
    }
    h
}

/// The first of `keys` the config has (the converter's `find_hparam`).
fn find<'a>(cfg: &'a Json, keys: &[&str]) -> Option<&'a Json> {
    keys.iter().find_map(|k| cfg.get(*k).filter(|v| !v.is_null()))
}

/// The converter's `rope_parameters` (TextModel.__init__): `rope_parameters`, else
/// `rope_scaling`; without per-attention-type entries, the global theta, a local (sliding-window)
/// theta, `type` as `rope_type`, the partial rotary factor and the original context length are
/// mirrored into it.
pub(crate) fn rope_params(cfg: &Json) -> serde_json::Map<String, Json> {
    let mut rp = find(cfg, &["rope_parameters"])
        .or_else(|| find(cfg, &["rope_scaling"]))
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    if rp.contains_key("full_attention") || rp.contains_key("sliding_attention") {
        return rp;
    }
    let theta = find(cfg, &["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"]);
    let local = find(cfg, &["local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta", "rope_local_base_freq"]);
    if let Some(l) = local {
        rp.insert("sliding_attention".into(), serde_json::json!({ "rope_theta": l }));
    }
    if let (false, Some(t)) = (rp.contains_key("rope_theta"), theta) {
        rp.insert("rope_theta".into(), t.clone());
    }
    if let (false, Some(t)) = (rp.contains_key("rope_type"), rp.get("type").cloned()) {
        rp.insert("rope_type".into(), t);
    }
    for k in ["partial_rotary_factor", "original_max_position_embeddings"] {
        let src: &[&str] = if k == "partial_rotary_factor" { &["partial_rotary_factor", "rope_pct", "rope_percent"] } else { &[k] };
        if let (false, Some(v)) = (rp.contains_key(k), find(cfg, src)) {
            rp.insert(k.into(), v.clone());
        }
    }
    rp
}

/// The parameters of full-attention layers (`rope_parameters["full_attention"]`, else all).
pub(crate) fn full_attention(rp: &serde_json::Map<String, Json>) -> serde_json::Map<String, Json> {
    rp.get("full_attention")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_else(|| rp.clone())
}

/// `head_dim`, else `hidden_size / num_attention_heads`.
pub(crate) fn head_dim(cfg: &Json) -> u64 {
    int(cfg, "head_dim").unwrap_or_else(|| {
        int(cfg, "hidden_size").unwrap_or(0) / int(cfg, "num_attention_heads").unwrap_or(1).max(1)
    })
}

/// The converter's Llama-3 rope factors, in torch's float32 arithmetic (a scalar divided by a
/// tensor is the tensor's reciprocal times the scalar; scalars are cast to f32 first):
/// `freqs = 1 / base ** (arange(0, dim, 2) / dim)`, then per frequency 1, `factor` or the blend.
/// torch's f32 `pow` is SLEEF's, accurate to 1 ulp; the correctly rounded value is used here.
fn llama3_rope_factors(base: f64, dim: u64, factor: f64, low: f64, high: f64, old_ctx: f64) -> Vec<f32> {
    let base = base as f32;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let (lo_wl, hi_wl) = ((old_ctx / low) as f32, (old_ctx / high) as f32);
    let span = (high - low) as f32;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let e = i as f32 / dim as f32;
            let p = (base as f64).powf(e as f64) as f32;
            let freq = 1.0f32 / p;
            let wl = (1.0f32 / freq) * two_pi;
            if wl < hi_wl {
                1.0
            } else if wl > lo_wl {
                factor as f32
            } else {
                let s = ((1.0f32 / wl) * old_ctx as f32 - low as f32) / span;
                1.0f32 / ((1.0f32 - s) / factor as f32 + s)
            }
        })
        .collect()
}

/// The type `convert_hf_to_gguf.py --outtype ft` stores a tensor in: F32 for 1-D tensors,
/// norms and anything not a `.weight`; else the outtype, with Q8_0 falling back to F16 where a
/// row is not whole blocks of 32.
pub(crate) fn converter_type(name: &str, shape: &[u64], ft: FileType) -> GgmlType {
    let stored = [".weight", ".lora_a", ".lora_b"].iter().any(|s| name.ends_with(s));
    if shape.len() <= 1 || name.ends_with("_norm.weight") || !stored {
        return GgmlType::F32;
    }
    match ft {
        FileType::F32 => GgmlType::F32,
        FileType::F16 => GgmlType::F16,
        FileType::Q8_0 if shape.last().is_some_and(|c| c % 32 == 0) => GgmlType::Q8_0,
        FileType::Q8_0 => GgmlType::F16,
        _ => GgmlType::Bf16,
    }
}
