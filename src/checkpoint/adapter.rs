//! A PEFT LoRA adapter directory: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Groups the adapter's tensors by target module (`base_model.model.K.lora_A.weight` → `K`),
//! accepting keys that still carry the adapter name (`….lora_A.default.weight`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::model::Shard;
use crate::error::{Error, Result};
use crate::format::safetensors::TensorInfo;

/// The fields of `adapter_config.json` that change what a merge computes.
#[derive(Debug, Clone, Deserialize)]
pub struct AdapterConfig {
    /// Must be `LORA`.
    #[serde(default)]
    pub peft_type: Option<String>,
    /// Rank.
    #[serde(default = "default_r")]
    pub r: u64,
    /// Scaling numerator.
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// `s = alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA.
    #[serde(default)]
    pub use_dora: bool,
    /// GPT-2 Conv1D layout.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Per-module rank overrides.
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, serde_json::Value>>,
    /// Per-module alpha overrides.
    #[serde(default)]
    pub alpha_pattern: Option<BTreeMap<String, serde_json::Value>>,
    /// Modules saved in full.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Trainable token rows.
    #[serde(default)]
    pub trainable_token_indices: Option<serde_json::Value>,
    /// `lora_B` has a bias.
    #[serde(default)]
    pub lora_bias: bool,
    /// The base model path or Hub id.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Layer replication changes the module set.
    #[serde(default)]
    pub layer_replication: Option<serde_json::Value>,
    /// Init methods that mutate the base (pissa, olora, …).
    #[serde(default)]
    pub init_lora_weights: Option<serde_json::Value>,
    /// LoRA on raw parameters (MoE experts).
    #[serde(default)]
    pub target_parameters: Option<serde_json::Value>,
    /// Variant configs that change merge semantics when set.
    #[serde(default)]
    pub eva_config: Option<serde_json::Value>,
    /// CorDA config (mutates the base at init).
    #[serde(default)]
    pub corda_config: Option<serde_json::Value>,
    /// aLoRA invocation tokens: activated LoRA cannot be merged.
    #[serde(default)]
    pub alora_invocation_tokens: Option<serde_json::Value>,
}

fn default_r() -> u64 {
    8
}
fn default_alpha() -> f64 {
    8.0
}

impl AdapterConfig {
    /// Parses `adapter_config.json` text and refuses configs whose merge we cannot reproduce.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let cfg: AdapterConfig = serde_json::from_str(text).map_err(|e| Error::json(path, e))?;
        let unsupported = |what: &str| Error::Unsupported {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        if let Some(t) = &cfg.peft_type {
            if t != "LORA" {
                return Err(unsupported(&format!(
                    "peft_type `{t}`: only LORA adapters can be merged"
                )));
            }
        }
        if cfg.r == 0 {
            return Err(Error::json(path, "`r` must be positive"));
        }
        if !cfg.lora_alpha.is_finite() {
            return Err(Error::json(path, "`lora_alpha` must be finite"));
        }
        for (what, m) in [
            ("rank_pattern", &cfg.rank_pattern),
            ("alpha_pattern", &cfg.alpha_pattern),
        ] {
            for k in m.iter().flat_map(|m| m.keys()) {
                regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                    .map_err(|e| Error::json(path, format!("{what} key `{k}` is not a regex we can match: {e}")))?;
            }
        }
        if let Some(v) = &cfg.target_parameters {
            if !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()) {
                return Err(unsupported(
                    "target_parameters (LoRA on raw parameters, e.g. fused 3-D MoE experts) is not supported: merge it with PEFT, or train on the per-expert Linear modules",
                ));
            }
        }
        if cfg.use_dora && cfg.fan_in_fan_out {
            return Err(unsupported(
                "use_dora together with fan_in_fan_out (DoRA on Conv1D) is not supported",
            ));
        }
        if cfg.layer_replication.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(
                "layer_replication changes the model's layers: cannot merge",
            ));
        }
        if cfg.alora_invocation_tokens.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(
                "alora_invocation_tokens: an activated LoRA (aLoRA) cannot be merged into the base",
            ));
        }
        if cfg.corda_config.as_ref().is_some_and(|v| !v.is_null())
            && matches!(&cfg.init_lora_weights, Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("corda"))
        {
            return Err(unsupported(
                "init_lora_weights `corda` mutates the base at init: convert the adapter first",
            ));
        }
        if let Some(serde_json::Value::String(init)) = &cfg.init_lora_weights {
            let init = init.to_ascii_lowercase();
            if ["pissa", "olora", "corda", "loftq", "lora_ga"]
                .iter()
                .any(|p| init.starts_with(p))
            {
                return Err(unsupported(&format!(
                    "init_lora_weights `{init}` mutates the base at init: convert the adapter first"
                )));
            }
        }
        Ok(cfg)
    }

    /// The merge scale as PEFT computes it (a Python float), for rank `r`.
    pub fn scale(&self, r: u64) -> f64 {
        self.scale_with(r, self.lora_alpha)
    }

    fn scale_with(&self, r: u64, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// The first pattern key that matches `module` the way PEFT's `get_pattern_key` does:
    /// `re.match(rf"(.*\.)?({key})$", module)`, in the file's key order.
    fn pattern_value<'a>(
        map: &'a Option<BTreeMap<String, serde_json::Value>>,
        order: &[String],
        module: &str,
    ) -> Option<&'a serde_json::Value> {
        let m = map.as_ref()?;
        for k in order {
            if let (Some(v), Ok(re)) = (m.get(k), regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))) {
                if re.is_match(module) {
                    return Some(v);
                }
            }
        }
        None
    }

    /// `(r, alpha, scale)` for a module after `rank_pattern` / `alpha_pattern`.
    pub fn module_scale(&self, module: &str, pattern_order: &PatternOrder) -> (u64, f64, f64) {
        let r = Self::pattern_value(&self.rank_pattern, &pattern_order.rank, module)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(self.r);
        let alpha = Self::pattern_value(&self.alpha_pattern, &pattern_order.alpha, module)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(self.lora_alpha);
        (r, alpha, self.scale_with(r, alpha))
    }
}

/// The key order of `rank_pattern` and `alpha_pattern` as written in the file (PEFT takes the
/// first match in dict order; `BTreeMap` would sort them).
#[derive(Debug, Clone, Default)]
pub struct PatternOrder {
    /// `rank_pattern` keys in file order.
    pub rank: Vec<String>,
    /// `alpha_pattern` keys in file order.
    pub alpha: Vec<String>,
}

impl PatternOrder {
    /// Reads the key order from the raw JSON text.
    pub fn from_json(text: &str) -> Self {
        let keys = |field: &str| -> Vec<String> {
            // serde_json's Map is sorted; recover file order by scanning the raw text.
            let Some(start) = text.find(&format!("\"{field}\"")) else {
                return Vec::new();
            };
            let rest = &text[start..];
            let Some(open) = rest.find('{') else { return Vec::new() };
            let mut de = serde_json::Deserializer::from_str(&rest[open..]).into_iter::<OrderedKeys>();
            match de.next() {
                Some(Ok(k)) => k.0,
                _ => Vec::new(),
            }
        };
        PatternOrder {
            rank: keys("rank_pattern"),
            alpha: keys("alpha_pattern"),
        }
    }
}

/// Keys of a JSON object in file order.
struct OrderedKeys(Vec<String>);

impl<'de> Deserialize<'de> for OrderedKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<OrderedKeys, A::Error> {
                let mut v = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    let _: serde::de::IgnoredAny = m.next_value()?;
                    v.push(k);
                }
                Ok(OrderedKeys(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// What one adapter tensor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterTensorKind {
    /// `lora_A` of a Linear.
    LoraA,
    /// `lora_B` of a Linear.
    LoraB,
    /// `lora_B.bias` (`lora_bias=True`).
    LoraBias,
    /// `lora_embedding_A` `[r, num_embeddings]`.
    EmbA,
    /// `lora_embedding_B` `[dim, r]`.
    EmbB,
    /// DoRA `lora_magnitude_vector`.
    Magnitude,
    /// `token_adapter.trainable_tokens_delta`: new full rows.
    Tokens,
    /// `K.base_layer.<param>`: PEFT's saved copy of the wrapped layer's own parameter (saved
    /// when an embedding or head is targeted); it replaces the base parameter before merging.
    BaseLayer(String),
    /// Something we do not merge.
    Other(&'static str),
    /// A full replacement tensor (`modules_to_save`) for base tensor `K.param`.
    Full,
}

/// A parsed adapter tensor name.
#[derive(Debug, Clone)]
pub struct AdapterKey {
    /// The module path `K`, or for `Full` the base tensor name.
    pub module: String,
    /// What it is.
    pub kind: AdapterTensorKind,
}

/// Splits an adapter key into module and kind.
pub fn parse_key(key: &str) -> AdapterKey {
    let k = key.strip_prefix("base_model.model.").unwrap_or(key);
    let parts: Vec<&str> = k.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let kind = match *p {
            "lora_A" => Some(AdapterTensorKind::LoraA),
            "lora_B" => {
                if parts.last() == Some(&"bias") {
                    Some(AdapterTensorKind::LoraBias)
                } else {
                    Some(AdapterTensorKind::LoraB)
                }
            }
            "base_layer" if i + 1 < parts.len() => Some(AdapterTensorKind::BaseLayer(parts[i + 1..].join("."))),
            "lora_embedding_A" => Some(AdapterTensorKind::EmbA),
            "lora_embedding_B" => Some(AdapterTensorKind::EmbB),
            "lora_magnitude_vector" => Some(AdapterTensorKind::Magnitude),
            "token_adapter" => Some(AdapterTensorKind::Tokens),
            "lora_C" | "lora_E" | "hada_w1_a" | "lokr_w1" | "ia3_l" | "oft_r" | "boft_R" | "vera_lambda_b" => {
                Some(AdapterTensorKind::Other("a non-LoRA adapter weight"))
            }
            _ => None,
        };
        if let Some(kind) = kind {
            return AdapterKey {
                module: parts[..i].join("."),
                kind,
            };
        }
    }
    AdapterKey {
        module: k
            .replace(".modules_to_save.default.", ".")
            .replace(".original_module.", ".")
            .replace(".base_layer.", "."),
        kind: AdapterTensorKind::Full,
    }
}

/// One LoRA pair for a Linear module.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Module path `K` (base tensor `K.weight`).
    pub module: String,
    /// `lora_A` `[r, in]`.
    pub a: TensorInfo,
    /// `lora_B` `[out, r]`.
    pub b: TensorInfo,
}

/// An opened adapter.
#[derive(Debug)]
pub struct Adapter {
    /// The directory.
    pub dir: PathBuf,
    /// The config.
    pub config: AdapterConfig,
    /// `adapter_config.json` bytes as found.
    pub config_bytes: Vec<u8>,
    /// The mapped `adapter_model.safetensors`.
    pub weights: Shard,
    /// Pattern key order as written.
    pub pattern_order: PatternOrder,
}

impl Adapter {
    /// Opens an adapter directory.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::NotFound {
                path: dir.to_path_buf(),
            });
        }
        let cfg_path = dir.join("adapter_config.json");
        let config_bytes = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let text = std::str::from_utf8(&config_bytes).map_err(|_| Error::json(&cfg_path, "not UTF-8"))?;
        let config = AdapterConfig::parse(&cfg_path, text)?;
        let st = dir.join("adapter_model.safetensors");
        if !st.is_file() && dir.join("adapter_model.bin").is_file() {
            return Err(Error::Unsupported {
                path: dir.join("adapter_model.bin"),
                what: "pickle `.bin` adapter: convert to safetensors first".into(),
            });
        }
        let weights = Shard::open(&st)?;
        Ok(Adapter {
            dir: dir.to_path_buf(),
            pattern_order: PatternOrder::from_json(text),
            config,
            config_bytes,
            weights,
        })
    }

    /// Path of the weights file.
    pub fn weights_path(&self) -> &Path {
        self.weights.file.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_module_and_kind() {
        let k = parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        assert_eq!(k.module, "model.layers.0.self_attn.q_proj");
        assert_eq!(k.kind, AdapterTensorKind::LoraA);
        let k = parse_key("base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight");
        assert_eq!(k.module, "model.layers.0.mlp.up_proj");
        assert_eq!(k.kind, AdapterTensorKind::LoraB);
        let k = parse_key("base_model.model.lm_head.weight");
        assert_eq!(k.module, "lm_head.weight");
        assert_eq!(k.kind, AdapterTensorKind::Full);
        let k = parse_key("base_model.model.model.embed_tokens.lora_embedding_A");
        assert_eq!(k.kind, AdapterTensorKind::EmbA);
        assert_eq!(k.module, "model.embed_tokens");
        let k = parse_key("base_model.model.model.embed_tokens.base_layer.weight");
        assert_eq!(
            (k.module.as_str(), k.kind),
            ("model.embed_tokens", AdapterTensorKind::BaseLayer("weight".into()))
        );
        let k = parse_key("base_model.model.model.layers.0.mlp.up_proj.lora_B.bias");
        assert_eq!(k.kind, AdapterTensorKind::LoraBias);
    }

    #[test]
    fn patterns_match_like_peft_get_pattern_key() {
        let text = r#"{"r":8,"lora_alpha":16,"rank_pattern":{"q_proj":4,"layers.1.self_attn.k_proj":2},"alpha_pattern":{"down_proj":32}}"#;
        let c = AdapterConfig::parse(Path::new("a"), text).unwrap();
        let o = PatternOrder::from_json(text);
        assert_eq!(o.rank, ["q_proj", "layers.1.self_attn.k_proj"]);
        assert_eq!(c.module_scale("model.layers.0.self_attn.q_proj", &o), (4, 16.0, 4.0));
        assert_eq!(c.module_scale("model.layers.1.self_attn.k_proj", &o), (2, 16.0, 8.0));
        assert_eq!(c.module_scale("model.layers.0.self_attn.k_proj", &o), (8, 16.0, 2.0));
        assert_eq!(c.module_scale("model.layers.0.mlp.down_proj", &o), (8, 32.0, 4.0));
        // `(.*\.)?` needs a dot boundary: `xq_proj` is not `q_proj`.
        assert_eq!(c.module_scale("model.layers.0.self_attn.xq_proj", &o).0, 8);
    }

    #[test]
    fn scale_follows_peft() {
        let c = AdapterConfig::parse(Path::new("a"), r#"{"r":8,"lora_alpha":16}"#).unwrap();
        assert_eq!(c.scale(8), 2.0);
        let c = AdapterConfig::parse(Path::new("a"), r#"{"r":16,"lora_alpha":16,"use_rslora":true}"#).unwrap();
        assert_eq!(c.scale(16), 4.0);
    }

    #[test]
    fn unsupported_configs_are_refused_by_name() {
        let e = AdapterConfig::parse(Path::new("a"), r#"{"peft_type":"IA3"}"#).unwrap_err();
        assert!(e.to_string().contains("only LORA"), "{e}");
        let e = AdapterConfig::parse(Path::new("a"), r#"{"use_dora":true,"fan_in_fan_out":true}"#).unwrap_err();
        assert!(e.to_string().contains("DoRA"), "{e}");
        let e = AdapterConfig::parse(Path::new("a"), r#"{"target_parameters":["experts.gate_up_proj"]}"#).unwrap_err();
        assert!(e.to_string().contains("target_parameters"), "{e}");
        let e = AdapterConfig::parse(Path::new("a"), r#"{"init_lora_weights":"pissa"}"#).unwrap_err();
        assert!(e.to_string().contains("mutates the base"), "{e}");
        let e = AdapterConfig::parse(Path::new("a"), "{").unwrap_err();
        assert!(e.to_string().contains("invalid json"), "{e}");
    }
}
