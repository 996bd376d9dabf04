//! A GGUF's metadata in the converter's order: `general.architecture`, `general.type`, the
//! sampling defaults from `generation_config.json`, the name and size label, the
//! architecture's hyperparameters and the file type, the quantization version, the tokenizer.

use serde_json::Value as Json;

use super::arch::{full_attention, head_dim, int, rope_params, Arch};
use super::Model;
use crate::format::gguf::Value;
use crate::format::gguf_rules::FileType;

/// `GGML_QUANT_VERSION`.
const QUANT_VERSION: u32 = 2;

/// gguf-py's `model_weight_count_rounded_notation(n, min_digits=2)`: `890M`, `1.5M`, `8.0B`.
pub(crate) fn size_label(n: u64) -> String {
    let x = n as f64;
    let (scaled, suffix) = if x > 1e12 {
        (x * 1e-12, "T")
    } else if x > 1e9 {
        (x * 1e-9, "B")
    } else if x > 1e6 {
        (x * 1e-6, "M")
    } else {
        (x * 1e-3, "K")
    };
    // Python's round() is half-to-even; str(int) has no leading zeros except "0" itself.
    let r = scaled.round_ties_even();
    let digits = if r == 0.0 { 0 } else { format!("{r:.0}").len() };
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// A config number as the converter passes it on: Python's int or float.
fn num(v: &Json) -> Option<f64> {
    v.as_f64()
}

/// gguf-py's KV dict: insertion order; a key added again keeps its place and takes the new
/// value; empty strings and arrays are never added.
#[derive(Default)]
struct Kvs(Vec<(String, Value)>);

impl Kvs {
    fn put(&mut self, k: impl Into<String>, v: Value) {
        let k = k.into();
        if matches!(&v, Value::String(s) if s.is_empty()) || matches!(&v, Value::Array(a) if a.is_empty()) {
            return;
        }
        match self.0.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }
}

/// The KVs, in the converter's order.
pub(crate) fn kvs(model: &Model, ft: FileType, params: u64) -> Vec<(String, Value)> {
    let cfg = &model.config;
    let arch = model.arch.gguf_name();
    let mut kv = Kvs::default();
    kv.put("general.architecture", Value::String(arch.into()));
    let rope = rope_params(cfg);
    if model.arch == Arch::Phi3 {
        // Written while the tensors are prepared, before the other metadata.
        if let Some(f) = phi3_attn_factor(cfg, &rope) {
            kv.put("phi3.rope.scaling.attn_factor", Value::F32(f as f32));
        }
    }
    kv.put("general.type", Value::String("model".into()));
    sampling(model.generation.as_ref(), &mut kv);
    kv.put("general.name", Value::String(model.name.clone()));
    kv.put("general.size_label", Value::String(size_label(params)));
    match model.arch {
        Arch::Phi3 => phi3_params(cfg, &rope, ft, &mut kv),
        _ => text_params(model.arch, cfg, &rope, ft, &mut kv),
    }
    kv.put("general.quantization_version", Value::U32(QUANT_VERSION));
    for (k, v) in &model.vocab {
        kv.put(k.clone(), v.clone());
    }
    kv.0
}

fn u32v(cfg: &Json, k: &str) -> Option<Value> {
    int(cfg, k).map(|v| Value::U32(v as u32))
}

fn f32v(v: Option<&Json>) -> Option<Value> {
    v.and_then(num).map(|x| Value::F32(x as f32))
}

/// TextModel.set_gguf_parameters and the Llama/Gemma 3 additions.
fn text_params(arch_kind: Arch, cfg: &Json, rp: &serde_json::Map<String, Json>, ft: FileType, kv: &mut Kvs) {
    let arch = arch_kind.gguf_name();
    let a = |k: &str| format!("{arch}.{k}");
    for (src, dst) in [
        ("num_hidden_layers", "block_count"),
        ("max_position_embeddings", "context_length"),
        ("hidden_size", "embedding_length"),
        ("intermediate_size", "feed_forward_length"),
        ("num_attention_heads", "attention.head_count"),
        ("num_key_value_heads", "attention.head_count_kv"),
    ] {
        if let Some(v) = u32v(cfg, src) {
            kv.put(a(dst), v);
        }
    }
    let full = full_attention(rp);
    let factor = full.get("factor").and_then(num);
    match (full.get("rope_type").and_then(Json::as_str), factor) {
        (Some("linear"), Some(f)) => {
            kv.put(a("rope.scaling.type"), Value::String("linear".into()));
            kv.put(a("rope.scaling.factor"), Value::F32(f as f32));
        }
        (Some("yarn"), Some(f)) => {
            kv.put(a("rope.scaling.type"), Value::String("yarn".into()));
            kv.put(a("rope.scaling.factor"), Value::F32(f as f32));
            if let Some(v) = u32v(&Json::Object(full.clone()), "original_max_position_embeddings") {
                kv.put(a("rope.scaling.original_context_length"), v);
            }
            let yarn = [
                (&["extrapolation_factor"][..], "rope.scaling.yarn_ext_factor"),
                (&["attention_factor", "attn_factor"][..], "rope.scaling.yarn_attn_factor"),
                (&["beta_fast"][..], "rope.scaling.yarn_beta_fast"),
                (&["beta_slow"][..], "rope.scaling.yarn_beta_slow"),
            ];
            for (keys, dst) in yarn {
                if let Some(v) = f32v(keys.iter().find_map(|k| full.get(*k).filter(|v| !v.is_null()))) {
                    kv.put(a(dst), v);
                }
            }
        }
        (Some("su" | "longrope"), _) => kv.put(a("rope.scaling.type"), Value::String("longrope".into())),
        _ => {}
    }
    if let Some(v) = f32v(full.get("rope_theta")) {
        kv.put(a("rope.freq_base"), v);
    }
    if let Some(v) = f32v(rp.get("sliding_attention").and_then(|s| s.get("rope_theta"))) {
        kv.put(a("rope.freq_base_swa"), v);
    }
    if let Some(v) = f32v(cfg.get("rms_norm_eps")) {
        kv.put(a("attention.layer_norm_rms_epsilon"), v);
    }
    // Only where the config has one (LlamaConfig and Gemma3TextConfig always do).
    if let Some(h) = u32v(cfg, "head_dim") {
        kv.put(a("attention.key_length"), h.clone());
        kv.put(a("attention.value_length"), h);
    }
    kv.put("general.file_type", Value::U32(ft.id()));
    match arch_kind {
        Arch::Llama | Arch::Mistral => {
            if let Some(v) = u32v(cfg, "vocab_size") {
                kv.put(a("vocab_size"), v);
            }
            kv.put(a("rope.dimension_count"), Value::U32(head_dim(cfg) as u32));
        }
        Arch::Gemma3 => {
            if let Some(v) = f32v(cfg.get("final_logit_softcapping").filter(|v| v.as_f64().is_some_and(|x| x != 0.0))) {
                kv.put(a("final_logit_softcapping"), v);
            }
            if cfg.get("sliding_window_pattern").and_then(Json::as_i64) != Some(1) {
                if let Some(v) = u32v(cfg, "sliding_window") {
                    kv.put(a("attention.sliding_window"), v);
                }
            }
        }
        Arch::Qwen2 | Arch::Phi3 => {}
    }
}

/// Phi-3's own parameter list (Phi3MiniModel.set_gguf_parameters).
fn phi3_params(cfg: &Json, rp: &serde_json::Map<String, Json>, ft: FileType, kv: &mut Kvs) {
    let hidden = int(cfg, "hidden_size").unwrap_or(0);
    let heads = int(cfg, "num_attention_heads").unwrap_or(1).max(1);
    let pct = rp.get("partial_rotary_factor").and_then(num).unwrap_or(1.0);
    let ctx = int(cfg, "n_positions").or_else(|| int(cfg, "max_position_embeddings"));
    if let Some(c) = ctx {
        kv.put("phi3.context_length", Value::U32(c as u32));
    }
    if let Some(o) = rp.get("original_max_position_embeddings").and_then(Json::as_u64) {
        kv.put("phi3.rope.scaling.original_context_length", Value::U32(o as u32));
    }
    for (src, dst) in [
        ("hidden_size", "embedding_length"),
        ("intermediate_size", "feed_forward_length"),
        ("num_hidden_layers", "block_count"),
        ("num_attention_heads", "attention.head_count"),
        ("num_key_value_heads", "attention.head_count_kv"),
    ] {
        if let Some(v) = u32v(cfg, src) {
            kv.put(format!("phi3.{dst}"), v);
        }
    }
    if let Some(v) = f32v(cfg.get("rms_norm_eps")) {
        kv.put("phi3.attention.layer_norm_rms_epsilon", v);
    }
    kv.put("phi3.rope.dimension_count", Value::U32(((pct * hidden as f64) as u64 / heads) as u32));
    if let Some(v) = f32v(full_attention(rp).get("rope_theta")) {
        kv.put("phi3.rope.freq_base", v);
    }
    kv.put("general.file_type", Value::U32(ft.id()));
    let window = int(cfg, "sliding_window").unwrap_or(0);
    kv.put("phi3.attention.sliding_window", Value::U32(window as u32));
}

/// Phi-3's long-context attention factor, when the config has long rope factors.
fn phi3_attn_factor(cfg: &Json, rp: &serde_json::Map<String, Json>) -> Option<f64> {
    let long = rp.get("long_factor")?.as_array()?;
    if long.is_empty() {
        return None;
    }
    let max_pos = int(cfg, "n_positions").or_else(|| int(cfg, "max_position_embeddings"))? as f64;
    let orig = rp.get("original_max_position_embeddings")?.as_f64()?;
    let scale = max_pos / orig;
    let kind = rp.get("rope_type").and_then(Json::as_str).unwrap_or("").to_ascii_lowercase();
    Some(match kind.as_str() {
        "su" | "longrope" if scale > 1.0 => (1.0 + scale.ln() / orig.ln()).sqrt(),
        "yarn" if scale > 1.0 => 0.1 * scale.ln() + 1.0,
        _ => 1.0,
    })
}

/// `general.sampling.*` from generation_config.json, in gguf-py's order and types.
fn sampling(gen: Option<&Json>, kv: &mut Kvs) {
    let mut put = |k: String, v: Value| kv.put(k, v);
    let Some(g) = gen else { return };
    let key = |k: &str| format!("general.sampling.{k}");
    if let Some(s) = g.get("sequence").and_then(Json::as_str) {
        put(key("sequence"), Value::String(s.into()));
    }
    if let Some(v) = g.get("top_k").and_then(Json::as_i64) {
        put(key("top_k"), Value::I32(v as i32));
    }
    let f = |k: &str| g.get(k).and_then(num).map(|v| Value::F32(v as f32));
    for (src, dst) in [
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("xtc_probability", "xtc_probability"),
        ("xtc_threshold", "xtc_threshold"),
        ("temperature", "temp"),
    ] {
        if let Some(v) = f(src) {
            put(key(dst), v);
        }
    }
    if let Some(v) = g.get("penalty_last_n").and_then(Json::as_i64) {
        put(key("penalty_last_n"), Value::I32(v as i32));
    }
    // `get("penalty_repeat", get("repetition_penalty"))`: a present key wins, even null.
    let repeat = if g.get("penalty_repeat").is_some() { f("penalty_repeat") } else { f("repetition_penalty") };
    if let Some(v) = repeat {
        put(key("penalty_repeat"), v);
    }
    if let Some(v) = g.get("mirostat").and_then(Json::as_i64) {
        put(key("mirostat"), Value::I32(v as i32));
    }
    if let Some(v) = f("mirostat_tau") {
        put(key("mirostat_tau"), v);
    }
    if let Some(v) = f("mirostat_eta") {
        put(key("mirostat_eta"), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gguf-py's labels: three significant digits at most, two at least.
    #[test]
    fn size_labels_as_gguf_py() {
        assert_eq!(size_label(890_000_000), "890M");
        assert_eq!(size_label(1_500_000), "1.5M");
        assert_eq!(size_label(8_030_000_000), "8.0B");
        assert_eq!(size_label(999), "1.0K");
        assert_eq!(size_label(400), "0.40K");
        assert_eq!(size_label(12_345_678), "12M");
    }
}
