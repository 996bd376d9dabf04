//! A PEFT LoRA adapter directory: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Groups the adapter's tensors by target module (`base_model.model.K.lora_A.weight` → `K`),
//! accepting keys that still carry the adapter name (`….lora_A.default.weight`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::model::Shard;
use super::safetensors::TensorInfo;
use crate::error::{Error, Result};

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
        if cfg.use_dora {
            return Err(unsupported("use_dora: DoRA merges are not supported yet"));
        }
        if cfg.fan_in_fan_out {
            return Err(unsupported(
                "fan_in_fan_out: Conv1D-style adapters are not supported yet",
            ));
        }
        if cfg.lora_bias {
            return Err(unsupported(
                "lora_bias: adapters with a lora_B bias are not supported yet",
            ));
        }
        let nonempty = |m: &Option<BTreeMap<String, serde_json::Value>>| m.as_ref().is_some_and(|m| !m.is_empty());
        if nonempty(&cfg.rank_pattern) || nonempty(&cfg.alpha_pattern) {
            return Err(unsupported("rank_pattern/alpha_pattern are not supported yet"));
        }
        if cfg.trainable_token_indices.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported("trainable_token_indices are not supported yet"));
        }
        if cfg.layer_replication.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(
                "layer_replication changes the model's layers: cannot merge",
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
        if self.use_rslora {
            self.lora_alpha / (r as f64).sqrt()
        } else {
            self.lora_alpha / r as f64
        }
    }
}

/// What one adapter tensor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterTensorKind {
    /// `lora_A` of a Linear.
    LoraA,
    /// `lora_B` of a Linear.
    LoraB,
    /// Something we do not merge yet (embedding LoRA, DoRA magnitude, biases …).
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
                    Some(AdapterTensorKind::Other("lora_B bias"))
                } else {
                    Some(AdapterTensorKind::LoraB)
                }
            }
            "lora_embedding_A" | "lora_embedding_B" => Some(AdapterTensorKind::Other("embedding LoRA")),
            "lora_magnitude_vector" => Some(AdapterTensorKind::Other("DoRA magnitude")),
            "token_adapter" => Some(AdapterTensorKind::Other("trainable tokens")),
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
            .replace(".original_module.", "."),
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
        assert_eq!(k.kind, AdapterTensorKind::Other("embedding LoRA"));
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
        let e = AdapterConfig::parse(Path::new("a"), r#"{"use_dora":true}"#).unwrap_err();
        assert!(e.to_string().contains("DoRA"), "{e}");
        let e = AdapterConfig::parse(Path::new("a"), r#"{"init_lora_weights":"pissa"}"#).unwrap_err();
        assert!(e.to_string().contains("mutates the base"), "{e}");
        let e = AdapterConfig::parse(Path::new("a"), "{").unwrap_err();
        assert!(e.to_string().contains("invalid json"), "{e}");
    }
}
