//! What llama.cpp's converter makes of a Hugging Face model, known before any weight is read:
//! the architecture (tensor names, transforms, hyperparameter keys: `arch.rs`), the metadata
//! around it (`meta.rs`), the tokenizer (`vocab.rs`). [`Model`] bundles them for the planner;
//! it is built from the config and tokenizer files alone, so an unsupported model or tokenizer
//! is refused before any heavy work. docs/formats.md §4 states the rules.

mod arch;
mod meta;
pub(crate) mod vocab;

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::format::gguf::{GgmlType, Value};
use crate::format::gguf_rules::FileType;

pub(crate) use arch::Arch;
pub(crate) use meta::{id_to_title, model_id_components, naming_convention, IdParts};

/// An HF tensor as the converter names and transforms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapped {
    /// GGUF name.
    pub name: String,
    /// Undo HF's rotary row order with this many heads.
    pub heads: Option<u64>,
    /// Add 1 (Gemma's norms).
    pub add_one: bool,
    /// Keep only the first rows (Gemma 3 drops embedding rows past the tokenizer's).
    pub rows: Option<u64>,
}

/// A model as the converter sees it.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    arch: Arch,
    /// config.json with the config class's defaults filled in.
    config: Json,
    /// Where config.json and the tokenizer live.
    dir: PathBuf,
    /// `general.name`.
    name: String,
    /// generation_config.json, if any.
    generation: Option<Json>,
    /// The tokenizer's KVs, in the converter's order.
    vocab: Vec<(String, Value)>,
    /// A model card's `base_model` and tags (the pipeline tag last) to take metadata from, as
    /// the converter does when the folder it reads has one.
    card: Option<(Option<String>, Vec<String>)>,
}

impl Model {
    /// Reads what the converter reads: `config` (the base's config.json), the tokenizer files
    /// in `tokenizer_dir`, `generation_config.json` when given. Refuses an architecture or a
    /// tokenizer the converter would refuse (or that we do not reproduce), by name.
    pub fn open(config: &Json, config_path: &Path, tokenizer_dir: &Path, generation: Option<&Path>, name: String) -> Result<Self> {
        let arch = Arch::from_config(config, config_path)?;
        let generation = match generation {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                Some(serde_json::from_str(&text).map_err(|e| Error::json(p, e))?)
            }
            None => None,
        };
        let config = arch::hparams(arch, config);
        let vocab = vocab::tokenizer_kvs(tokenizer_dir, arch.vocab_arch(), &config)?;
        Ok(Model {
            arch,
            config,
            dir: tokenizer_dir.to_path_buf(),
            name,
            generation,
            vocab,
            card: None,
        })
    }

    /// The base model as `convert_lora_to_gguf.py --base` reads it: its config alone (an adapter
    /// GGUF carries no tokenizer); `name` is `general.name`.
    pub fn for_adapter(config: &Json, config_path: &Path, name: String) -> Result<Self> {
        let arch = Arch::from_config(config, config_path)?;
        Ok(Model {
            arch,
            config: arch::hparams(arch, config),
            dir: config_path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            name,
            generation: None,
            vocab: Vec::new(),
            card: None,
        })
    }

    /// Also writes what the converter takes from a model card with this front matter.
    pub fn with_card(mut self, base_model: Option<String>, tags: Vec<String>) -> Self {
        self.card = Some((base_model, tags));
        self
    }

    /// `general.name`, also the files' stem.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder the tokenizer came from (for error messages).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tensors the converter makes itself (name, f32 values), written first.
    pub fn generated(&self) -> Vec<(String, Vec<f32>)> {
        self.arch.generated(&self.config)
    }

    /// The GGUF name and transforms of an HF tensor; `None` when the converter drops it.
    pub fn map_tensor(&self, name: &str, shape: &[u64]) -> Result<Option<Mapped>> {
        let mut m = self.arch.map_tensor(name, shape, &self.config, &self.dir)?;
        if let (Some(m), Arch::Gemma3) = (m.as_mut(), self.arch) {
            if name.contains("embed_tokens.weight") {
                m.rows = Some(self.vocab_len()?);
            }
        }
        Ok(m)
    }

    /// Gemma 3's `n_vocab_real`: the SentencePiece list's length with a `tokenizer.model`, else
    /// `tokenizer.json`'s vocabulary plus its added tokens.
    fn vocab_len(&self) -> Result<u64> {
        if self.dir.join("tokenizer.model").is_file() {
            let n = self
                .vocab
                .iter()
                .find(|(k, _)| k == "tokenizer.ggml.tokens")
                .and_then(|(_, v)| match v {
                    Value::Array(a) => Some(a.len() as u64),
                    _ => None,
                });
            return n.ok_or_else(|| unsupported(&self.dir, "GGUF output: the tokenizer has no tokens"));
        }
        let p = self.dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let j: Json = serde_json::from_str(&text).map_err(|e| Error::json(&p, e))?;
        let vocab = j.pointer("/model/vocab").and_then(Json::as_object).map_or(0, |m| m.len());
        let added = j.get("added_tokens").and_then(Json::as_array).map_or(0, Vec::len);
        Ok((vocab + added) as u64)
    }

    /// The type the converter stores a tensor in for `--outtype ft` (f32, f16, bf16, q8_0).
    pub fn converter_type(&self, name: &str, shape: &[u64], ft: FileType) -> GgmlType {
        arch::converter_type(name, shape, ft)
    }

    /// The file's metadata in the converter's order, for file type `ft` and `params` weights.
    pub fn kvs(&self, ft: FileType, params: u64) -> Vec<(String, Value)> {
        meta::kvs(self, ft, params)
    }

    /// A LoRA adapter GGUF's metadata, in `convert_lora_to_gguf.py`'s order: what gguf-py
    /// makes of the adapter folder's name (`parts`), and the adapter's `lora_alpha`.
    pub fn lora_kvs(&self, parts: &IdParts, alpha: f32) -> Vec<(String, Value)> {
        meta::lora_kvs(self, parts, alpha)
    }
}

/// `Error::Unsupported` for a model the converter route cannot take.
pub(crate) fn unsupported(path: &Path, what: impl Into<String>) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        what: what.into(),
    }
}
