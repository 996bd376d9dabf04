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
    if let Some((base, tags)) = &model.card {
        card_kvs(base.as_deref(), tags, params, &mut kv);
    }
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

/// The KVs of a LoRA adapter GGUF: the architecture, the type, `Metadata.set_gguf_meta_model`'s
/// keys from the folder-name heuristics, the alpha (`set_gguf_parameters` is replaced, so no
/// hyperparameters and no vocabulary), the quantization version.
pub(crate) fn lora_kvs(model: &Model, parts: &IdParts, alpha: f32) -> Vec<(String, Value)> {
    let mut kv = Kvs::default();
    kv.put("general.architecture", Value::String(model.arch.gguf_name().into()));
    kv.put("general.type", Value::String("adapter".into()));
    kv.put("adapter.type", Value::String("lora".into()));
    kv.put("general.name", Value::String(model.name.clone()));
    let text = |k: &str, v: &Option<String>, kv: &mut Kvs| {
        if let Some(v) = v {
            kv.put(format!("general.{k}"), Value::String(v.clone()));
        }
    };
    text("version", &parts.version, &mut kv);
    text("organization", &parts.org.as_deref().map(id_to_title), &mut kv);
    text("finetune", &parts.finetune, &mut kv);
    text("basename", &parts.basename, &mut kv);
    text("size_label", &parts.size_label, &mut kv);
    kv.put("adapter.lora.alpha", Value::F32(alpha));
    kv.put("general.quantization_version", Value::U32(QUANT_VERSION));
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


/// What the converter takes from a model card whose front matter names `base_model` and `tags`
/// (the pipeline tag already appended): `general.base_model.*` from the id, `general.tags`.
fn card_kvs(base: Option<&str>, tags: &[String], params: u64, kv: &mut Kvs) {
    if let Some(id) = base {
        kv.put("general.base_model.count", Value::U32(1));
        let key = |k: &str| format!("general.base_model.0.{k}");
        let (mut name, mut org, mut version, mut repo_url) = (None, None, None, None);
        if ["http://", "https://", "ssh://"].iter().any(|p| id.starts_with(p)) {
            repo_url = Some(id.to_string());
            let hf = regex::Regex::new(r"^https?://huggingface.co/([^/]+/[^/]+)$").expect("a valid regex");
            if let Some(c) = hf.captures(id) {
                let p = model_id_components(&c[1], params as i64);
                (name, org, version) = (Some(p.full), p.org, p.version);
            }
        } else {
            let p = model_id_components(id, params as i64);
            if let Some(o) = &p.org {
                repo_url = Some(format!("https://huggingface.co/{o}/{}", p.full));
            }
            (name, org, version) = (Some(p.full), p.org, p.version);
        }
        if let Some(n) = name {
            kv.put(key("name"), Value::String(id_to_title(&n)));
        }
        if let Some(v) = version {
            kv.put(key("version"), Value::String(v));
        }
        if let Some(o) = org {
            kv.put(key("organization"), Value::String(id_to_title(&o)));
        }
        if let Some(u) = repo_url {
            kv.put(key("repo_url"), Value::String(u));
        }
    }
    kv.put("general.tags", Value::Array(tags.iter().map(|t| Value::String(t.clone())).collect()));
}

/// gguf-py's `Metadata.id_to_title`: words split on spaces and `-`, each all-lowercase word that is
/// not a version or number title-cased (Python's `str.title`), joined by spaces.
pub(crate) fn id_to_title(s: &str) -> String {
    let version = regex::Regex::new(r"^(v\d+(?:\.\d+)*|\d.*)$").expect("a valid regex");
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase);
            if lower && !version.is_match(w) {
                py_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `str.title()`: a letter after a non-letter is upper-cased, any other letter lower-cased.
fn py_title(w: &str) -> String {
    let mut out = String::new();
    let mut prev_cased = false;
    for c in w.chars() {
        if c.is_alphabetic() {
            if prev_cased {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_cased = true;
        } else {
            out.push(c);
            prev_cased = false;
        }
    }
    out
}

/// What gguf-py's `Metadata.get_model_id_components` makes of a model id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IdParts {
    /// The name part (after `org/`).
    pub full: String,
    /// The organization (`None` for `./` paths).
    pub org: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

/// gguf-py's `Metadata.get_model_id_components`, for a model whose parameter count is
/// `total_params` (negative for a LoRA adapter, as gguf-py counts it: then a smaller size
/// label is still one, and a `lora` part is the type, not a finetune).
pub(crate) fn model_id_components(id: &str, total_params: i64) -> IdParts {
    use regex::Regex;
    if id.contains(' ') {
        return IdParts {
            full: id.to_string(),
            ..IdParts::default()
        };
    }
    let (org, full) = match id.split_once('/') {
        Some((o, f)) => (Some(o.to_string()), f.to_string()),
        None => (None, id.to_string()),
    };
    let org = org.filter(|o| !o.starts_with('.'));
    let re = |p: &str| Regex::new(&format!("(?i)^(?:{p})$")).expect("a valid regex");
    let (version_re, type_re) = (re(r"(v|iter)?\d+([.]\d+)*"), re(r"i?q\d(_\w)*|b?fp?(16|32)"));
    let size_re = re(r"(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)");
    let finetune_re = re(r"chat|instruct|vision|lora");
    #[derive(Default, Clone)]
    struct T {
        version: bool,
        other: bool,
        size: bool,
        finetune: bool,
        basename: bool,
    }
    let mut parts: Vec<String> = full.split('-').filter(|p| !p.is_empty()).map(str::to_string).collect();
    let mut types = vec![T::default(); parts.len()];
    for (i, part) in parts.iter_mut().enumerate() {
        let t = &mut types[i];
        if version_re.is_match(part) {
            t.version = true;
        } else if type_re.is_match(part) {
            t.other = true;
            *part = part.to_uppercase();
        } else if i > 0 && size_re.is_match(part) {
            let mut p: Vec<char> = part.replace('_', ".").chars().collect();
            let n = p.len();
            if p[n - 1].is_ascii_digit() && n >= 2 {
                let (a, b) = (p[n - 2], p[n - 1]);
                p.truncate(n - 2);
                p.extend(['.', b, a]);
            }
            let n = p.len();
            if n > 1 && p[n - 2].is_ascii_digit() && "kmbt".contains(p[n - 1]) {
                p[n - 1] = p[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 {
                let unit = " KMBT".find(p[p.len() - 1]).map_or(-1, |k| k as i32);
                let num: String = p[..p.len() - 1].iter().collect();
                if let Ok(v) = num.parse::<f64>() {
                    let label = v * 1000f64.powi(unit);
                    let total = total_params as f64;
                    // A label far from the model's size is a context length (for an adapter:
                    // only a label below an eighth of the layers it covers).
                    let context = if total_params < 0 {
                        label < (total_params.unsigned_abs() / 8) as f64
                    } else {
                        (label - total).abs() > (7 * total_params / 8) as f64
                    };
                    if context {
                        t.finetune = true;
                        let last = p.len() - 1;
                        p[last] = p[last].to_ascii_lowercase();
                    }
                }
            }
            if !t.finetune {
                t.size = true;
            }
            *part = p.into_iter().collect();
        } else if i > 0 && finetune_re.is_match(part) {
            if total_params < 0 && part.eq_ignore_ascii_case("lora") {
                t.other = true;
            } else {
                t.finetune = true;
            }
        }
    }
    let empty = |t: &T| !(t.version || t.other || t.size || t.finetune || t.basename);
    if parts.iter().zip(&types).any(|(n, t)| t.size && n.chars().any(|c| c.is_ascii_digit())) {
        for (n, t) in parts.iter().zip(types.iter_mut()) {
            if t.size && n.chars().all(char::is_alphabetic) {
                t.size = false;
            }
        }
    }
    let mut at_start = true;
    for (part, t) in parts.iter().zip(types.iter_mut()) {
        let alpha = part.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((empty(t) && alpha) || t.version) {
            t.basename = true;
        } else {
            at_start = false;
            if empty(t) {
                t.finetune = true;
            }
        }
    }
    for t in types.iter_mut().rev() {
        let others = t.version || t.other || t.size || t.finetune;
        if t.basename && others {
            t.basename = false;
        } else {
            break;
        }
    }
    let join = |keep: &dyn Fn(&T) -> bool| -> Option<String> {
        let mut seen: Vec<&str> = Vec::new();
        for (p, t) in parts.iter().zip(&types) {
            if keep(t) {
                seen.push(p);
            }
        }
        (!seen.is_empty()).then(|| seen.join("-"))
    };
    let mut sizes: Vec<&str> = Vec::new();
    for (p, t) in parts.iter().zip(&types) {
        if t.size && !sizes.contains(&p.as_str()) {
            sizes.push(p);
        }
    }
    let size_label = (!sizes.is_empty()).then(|| sizes.join("-"));
    let finetune = join(&|t| t.finetune);
    let version = join(&|t| t.version && !t.basename);
    let ambiguous = size_label.is_none() && finetune.is_none() && version.is_none();
    IdParts {
        basename: if ambiguous { None } else { join(&|t| t.basename) },
        full,
        org,
        finetune,
        version,
        size_label,
    }
}

/// gguf-py's `naming_convention`: the file name the converter gives its output by default.
pub(crate) fn naming_convention(name: &str, p: &IdParts, output_type: &str, kind: Option<&str>) -> String {
    let dash = |s: &str| s.trim().replace(' ', "-");
    let stem = dash(p.basename.as_deref().unwrap_or(name)).replace('/', "-");
    let mut out = stem;
    for part in [&p.size_label, &p.finetune, &p.version].into_iter().flatten() {
        out.push('-');
        out.push_str(&dash(part));
    }
    out.push('-');
    out.push_str(&dash(output_type).to_uppercase());
    if let Some(k) = kind {
        out.push('-');
        out.push_str(&dash(k));
    }
    out
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

    /// gguf-py's `id_to_title` and the id heuristics, on the shapes base-model ids come in.
    #[test]
    fn model_ids_as_gguf_py() {
        assert_eq!(id_to_title("base_nf4"), "Base_Nf4");
        assert_eq!(id_to_title("Llama-3.2-1B-Instruct"), "Llama 3.2 1B Instruct");
        assert_eq!(id_to_title("qwen2.5-v1.0-chat"), "Qwen2.5 v1.0 Chat");
        let c = |id: &str| {
            let p = model_id_components(id, 4_800_000);
            (p.full, p.org, p.version)
        };
        assert_eq!(c("mistralai/Mistral-7B-v0.1"), ("Mistral-7B-v0.1".into(), Some("mistralai".into()), Some("v0.1".into())));
        assert_eq!(c("../base_bf16"), ("base_bf16".into(), None, None));
        assert_eq!(c("a model"), ("a model".into(), None, None));
    }
}
