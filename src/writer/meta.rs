//! Metadata files written next to the shards, in the exact formats transformers writes:
//! `config.json`, `generation_config.json`, the index, tokenizer files, a README model card,
//! and our manifest.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::format::dtype::FloatDtype;
use crate::format::pyjson::dumps_indent2;
use crate::job::{PaddingSide, QuantSpec};

/// Writes `text` to `dir/name`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
}

/// Copies `src` to `dir/name`.
pub fn copy_file(src: &Path, dir: &Path, name: &str) -> Result<()> {
    let p = dir.join(name);
    std::fs::copy(src, &p).map_err(|e| Error::io(src, e))?;
    Ok(())
}

/// `model.safetensors.index.json`: `json.dumps(index, indent=2, sort_keys=True) + "\n"`.
pub fn index_json<'a>(
    weight_map: impl Iterator<Item = (&'a str, &'a str)>,
    total_parameters: u64,
    total_size: u64,
) -> String {
    let mut wm = Map::new();
    for (tensor, file) in weight_map {
        wm.insert(tensor.to_string(), Value::String(file.to_string()));
    }
    let v = json!({
        "metadata": {"total_parameters": total_parameters, "total_size": total_size},
        "weight_map": Value::Object(wm),
    });
    dumps_indent2(&v, true) + "\n"
}

/// Removes `quantization_config` (also under nested sub-configs) and sets the dtype key the
/// file already uses (`dtype` in transformers ≥ 4.56, `torch_dtype` before).
pub fn merged_config(base: &Value, dtype: Option<FloatDtype>) -> Value {
    let mut v = base.clone();
    strip_quant(&mut v);
    if let (Some(dt), Value::Object(m)) = (dtype, &mut v) {
        let key = if m.contains_key("torch_dtype") && !m.contains_key("dtype") {
            "torch_dtype"
        } else {
            "dtype"
        };
        m.insert(key.into(), Value::String(dt.torch_name().into()));
    }
    v
}

fn strip_quant(v: &mut Value) {
    if let Value::Object(m) = v {
        m.remove("quantization_config");
        for (_, sub) in m.iter_mut() {
            if sub.is_object() {
                strip_quant(sub);
            }
        }
    }
}

/// `config.json` of a `merged_4bit` save: a 4-bit base keeps its `quantization_config`; a 16-bit
/// base gets the one `BitsAndBytesConfig.to_dict()` writes for these settings (docs/formats.md §1.9).
pub fn quantized_config(base: &Value, dtype: Option<FloatDtype>, spec: &QuantSpec) -> Value {
    let mut v = base.clone();
    if let Value::Object(m) = &mut v {
        if !m.contains_key("quantization_config") {
            let compute = dtype.unwrap_or(FloatDtype::F32).torch_name();
            m.insert(
                "quantization_config".into(),
                json!({
                    "_load_in_4bit": true,
                    "_load_in_8bit": false,
                    "bnb_4bit_compute_dtype": compute,
                    "bnb_4bit_quant_storage": "uint8",
                    "bnb_4bit_quant_type": spec.quant_type.as_str(),
                    "bnb_4bit_use_double_quant": spec.double_quant,
                    "llm_int8_enable_fp32_cpu_offload": false,
                    "llm_int8_has_fp16_weight": false,
                    "llm_int8_skip_modules": null,
                    "llm_int8_threshold": 6.0,
                    "load_in_4bit": true,
                    "load_in_8bit": false,
                    "quant_method": "bitsandbytes"
                }),
            );
        }
        if let Some(dt) = dtype {
            let key = if m.contains_key("torch_dtype") && !m.contains_key("dtype") {
                "torch_dtype"
            } else {
                "dtype"
            };
            m.insert(key.into(), Value::String(dt.torch_name().into()));
        }
    }
    v
}

/// `config.json` text as transformers writes it.
pub fn config_text(v: &Value) -> String {
    dumps_indent2(v, true) + "\n"
}

/// Is this file name part of a tokenizer?
pub fn is_tokenizer_file(name: &str) -> bool {
    name.starts_with("tokenizer")
        || name.starts_with("vocab.")
        || name.starts_with("chat_template")
        || matches!(
            name,
            "special_tokens_map.json" | "added_tokens.json" | "merges.txt" | "spiece.model" | "sentencepiece.bpe.model"
        )
}

/// The tokenizer files to save: the adapter's own set if it has one (a trained tokenizer with
/// added tokens), else the base's.
pub fn tokenizer_files(adapter_dir: &Path, base_dir: Option<&Path>) -> Result<Vec<PathBuf>> {
    let list = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(d).map_err(|e| Error::io(d, e))? {
            let e = e.map_err(|e| Error::io(d, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if is_tokenizer_file(&name) && e.path().is_file() {
                v.push(e.path());
            }
        }
        v.sort();
        Ok(v)
    };
    let own = list(adapter_dir)?;
    if !own.is_empty() {
        return Ok(own);
    }
    match base_dir {
        Some(b) => list(b),
        None => Ok(Vec::new()),
    }
}

/// Copies tokenizer files into `out`, setting `padding_side` in `tokenizer_config.json`
/// (rewritten as transformers does: `indent=2, sort_keys=True, ensure_ascii=False` + newline).
pub fn write_tokenizer(files: &[PathBuf], out: &Path, padding: PaddingSide) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name == "tokenizer_config.json" && padding != PaddingSide::Keep {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            let mut v: Value = serde_json::from_str(&text).map_err(|e| Error::json(f, e))?;
            let side = if padding == PaddingSide::Left { "left" } else { "right" };
            match &mut v {
                Value::Object(m) => {
                    m.insert("padding_side".into(), Value::String(side.into()));
                }
                _ => return Err(Error::json(f, "expected a JSON object")),
            }
            write_file(out, &name, (dumps_indent2(&v, false) + "\n").as_bytes())?;
        } else {
            copy_file(f, out, &name)?;
        }
        names.push(name);
    }
    Ok(names)
}

/// An Ollama `Modelfile` for a GGUF in the same folder (`ollama create NAME -f Modelfile`).
/// Ollama reads the chat template, stop tokens and special tokens from the GGUF's metadata, so
/// the file names only the weights.
pub fn modelfile(gguf_file: &str) -> String {
    format!("FROM ./{gguf_file}\n")
}

/// The front matter of our model card: `base_model`, the tags, the pipeline tag.
pub fn card_front(base_model: Option<&str>, is_adapter: bool) -> (Option<String>, Vec<String>, &'static str) {
    let mut tags = Vec::new();
    if let Some(b) = base_model {
        tags.push(if is_adapter {
            format!("base_model:adapter:{b}")
        } else {
            format!("base_model:merge:{b}")
        });
    }
    if is_adapter {
        tags.push("lora".into());
    }
    tags.extend(["transformers".to_string(), "loraweld".to_string()]);
    (base_model.map(str::to_string), tags, "text-generation")
}

/// A README model card with YAML front matter (`base_model`, `tags`, `library_name`,
/// `pipeline_tag`), as the Hub renders it.
pub fn model_card(base_model: Option<&str>, method: &str, is_adapter: bool) -> String {
    let (base, tags, pipeline) = card_front(base_model, is_adapter);
    let mut s = String::from("---\n");
    if let Some(b) = &base {
        s.push_str(&format!("base_model: {}\n", yaml_str(b)));
    }
    s.push_str(if is_adapter {
        "library_name: peft\n"
    } else {
        "library_name: transformers\n"
    });
    s.push_str(&format!("pipeline_tag: {pipeline}\ntags:\n"));
    for t in &tags {
        s.push_str(&format!("- {}\n", yaml_str(t)));
    }
    s.push_str("---\n\n");
    s.push_str(&format!(
        "# Model card\n\nSaved with [loraweld](https://github.com/loraweld/loraweld) (`save_method={method}`){}.\n",
        base_model.map(|b| format!(" from base `{b}`")).unwrap_or_default()
    ));
    s
}

fn yaml_str(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c)) && !s.starts_with(['-', ':']) {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_config_drops_quantization_and_sets_dtype() {
        let base = json!({"dtype": "bfloat16", "quantization_config": {"load_in_4bit": true}, "text_config": {"quantization_config": {}}});
        let v = merged_config(&base, Some(FloatDtype::F16));
        assert_eq!(v, json!({"dtype": "float16", "text_config": {}}));
        let old = json!({"torch_dtype": "float16"});
        assert_eq!(
            merged_config(&old, Some(FloatDtype::Bf16)),
            json!({"torch_dtype": "bfloat16"})
        );
    }

    #[test]
    fn card_has_front_matter() {
        let c = model_card(Some("llama/base"), "merged_16bit", false);
        assert!(c.starts_with(
            "---\nbase_model: llama/base\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n"
        ));
        assert!(c.contains("- loraweld\n---\n"));
    }
}
