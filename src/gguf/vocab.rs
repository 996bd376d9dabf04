//! The tokenizer metadata (`tokenizer.*` KVs) exactly as llama.cpp's `convert_hf_to_gguf.py`
//! (llama-cpp-python 0.3.36's vendored copy) writes it: same keys, values, value types and order.
//!
//! Paths of the converter reproduced here, per model class (`conversion/*.py`):
//! - `LlamaModel` (Llama, Mistral in HF format): `add_space_prefix` from `tokenizer_config.json`'s
//!   `add_prefix_space`; then SentencePiece (`tokenizer.model`), else GPT-2 BPE (`tokenizer.json`);
//!   CodeLlama's `eot` (vocab 32016) and Granite's `add_bos_token = false` (vocab 49152).
//! - `Qwen2Model`: SentencePiece if `tokenizer.model` exists, else GPT-2 BPE.
//! - `Gemma3Model`: SentencePiece then `add_space_prefix = false`, else GPT-2 BPE.
//! - `Phi3MiniModel`: GPT-2 BPE when `tokenizer_class` is `GPT2Tokenizer`, else its own variant of
//!   the SentencePiece path (no range checks, `tokenizer.json`'s added tokens also override).
//!
//! then gguf-py's `SpecialVocab` (merges, special-token ids, `add_*_token` flags, chat template,
//! normalizer flags). Semantics kept from Python: gguf-py drops empty strings and arrays; a key
//! written twice keeps its first position (a dict); JSON objects are read in file order where it
//! matters. What the converter would refuse or crash on is an error here.
//!
//! The SentencePiece path reads only the pieces of the protobuf (piece, score, type): for these
//! model classes the converter reads no normalizer or trainer field (`add_dummy_prefix`,
//! `remove_extra_whitespaces`, `byte_fallback` are only read for T5-like models).
//!
//! Not reproduced (refused): the converter's `LlamaHfVocab` (a SentencePiece-style BPE
//! `tokenizer.json` with no `tokenizer.model`), Mistral's `tekken.json`/consolidated format, slow
//! BPE tokenizers (`vocab.json` + `merges.txt` without `tokenizer.json`), HybridDNA.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::gguf::Value;

/// The converter's model class, as far as the tokenizer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    /// `LlamaForCausalLM` (`LlamaModel`).
    Llama,
    /// `MistralForCausalLM`: also `LlamaModel` in the converter.
    Mistral,
    /// `Qwen2ForCausalLM`.
    Qwen2,
    /// `Gemma3ForCausalLM` / `Gemma3ForConditionalGeneration`.
    Gemma3,
    /// `Phi3ForCausalLM`.
    Phi3,
}


// gguf.TokenType / SentencePieceTokenTypes.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

const K_MODEL: &str = "tokenizer.ggml.model";
const K_PRE: &str = "tokenizer.ggml.pre";
const K_TOKENS: &str = "tokenizer.ggml.tokens";
const K_TYPES: &str = "tokenizer.ggml.token_type";
const K_SCORES: &str = "tokenizer.ggml.scores";
const K_MERGES: &str = "tokenizer.ggml.merges";
const K_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const K_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const K_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// The tokenizer KVs the converter writes for the model in `dir`, in its order. `config` is the
/// model's config (what the converter's `hparams` hold: `config.json`, best with transformers'
/// defaults filled in; a `text_config` is merged over the root as the converter does). The
/// special-token ids are read from `dir/config.json` itself, as gguf-py does.
pub(crate) fn tokenizer_kvs(dir: &Path, arch: Arch, config: &Json) -> Result<Vec<(String, Value)>> {
    tokenizer_kvs_with(dir, arch, config, None)
}

/// [`tokenizer_kvs`], with `pre` (when given) standing in for the check-text hash lookup: for
/// tests on made-up BPE tokenizers the converter cannot name.
fn tokenizer_kvs_with(dir: &Path, arch: Arch, config: &Json, pre: Option<&str>) -> Result<Vec<(String, Value)>> {
    let hp = Hparams::new(config);
    let mut kvs = Kvs::default();
    let _memo = ParsedScope;
    match arch {
        Arch::Llama | Arch::Mistral => llama_set_vocab(&mut kvs, dir, &hp, pre)?,
        Arch::Qwen2 => {
            if dir.join("tokenizer.model").is_file() {
                set_vocab_sentencepiece(&mut kvs, dir, &hp)?;
            } else {
                set_vocab_gpt2(&mut kvs, dir, &hp, pre)?;
            }
        }
        Arch::Gemma3 => {
            if dir.join("tokenizer.model").is_file() {
                set_vocab_sentencepiece(&mut kvs, dir, &hp)?;
                kvs.set(K_ADD_PREFIX, Value::Bool(false));
            } else {
                set_vocab_gpt2(&mut kvs, dir, &hp, pre)?;
            }
        }
        Arch::Phi3 => phi3_set_vocab(&mut kvs, dir, &hp, pre)?,
    }
    Ok(kvs.0)
}


// ---------------------------------------------------------------------------------------------
// KVs with gguf-py's semantics.

#[derive(Default)]
struct Kvs(Vec<(String, Value)>);

impl Kvs {
    /// `add_key_value`: a key written again keeps its place (a Python dict).
    fn set(&mut self, key: &str, v: Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.0.push((key.to_owned(), v)),
        }
    }

    /// `add_string`: empty strings are dropped.
    fn string(&mut self, key: &str, s: &str) {
        if !s.is_empty() {
            self.set(key, Value::String(s.to_owned()));
        }
    }

    /// `add_array`: empty arrays are dropped.
    fn array(&mut self, key: &str, items: Vec<Value>) {
        if !items.is_empty() {
            self.set(key, Value::Array(items));
        }
    }
}

fn strings(v: impl IntoIterator<Item = String>) -> Vec<Value> {
    v.into_iter().map(Value::String).collect()
}

// ---------------------------------------------------------------------------------------------
// Small JSON helpers with Python's semantics.

fn read_json(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::json(path, e))
}

thread_local! {
    /// tokenizer.json as parsed once for one `tokenizer_kvs` call (a Llama-3 one is 9 MB, and
    /// three steps of the converter read it).
    static PARSED: std::cell::RefCell<Option<(PathBuf, Option<Rc<Json>>)>> = const { std::cell::RefCell::new(None) };
}

/// Forgets the parsed tokenizer.json when dropped: the memo lives for one `tokenizer_kvs` call.
struct ParsedScope;

impl Drop for ParsedScope {
    fn drop(&mut self) {
        PARSED.with(|p| p.borrow_mut().take());
    }
}

/// `read_json` of a tokenizer.json, parsed once per `tokenizer_kvs` call; an object or `None`.
fn shared_object(path: &Path) -> Result<Option<Rc<Json>>> {
    if let Some(hit) = PARSED.with(|p| p.borrow().as_ref().filter(|(at, _)| at == path).map(|(_, j)| j.clone())) {
        return Ok(hit);
    }
    let parsed = match read_json(path)? {
        None => None,
        Some(j @ Json::Object(_)) => Some(Rc::new(j)),
        Some(_) => return Err(Error::json(path, "not a JSON object")),
    };
    PARSED.with(|p| *p.borrow_mut() = Some((path.to_path_buf(), parsed.clone())));
    Ok(parsed)
}

fn read_object(path: &Path) -> Result<Option<Map<String, Json>>> {
    match read_json(path)? {
        None => Ok(None),
        Some(Json::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Error::json(path, "not a JSON object")),
    }
}

/// A JSON object's entries in file order (Python's `json.load`: a repeated key keeps its first
/// place and takes the last value).
struct Ordered(Vec<(String, Json)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Ordered, A::Error> {
                let mut v: Vec<(String, Json)> = Vec::new();
                while let Some((k, x)) = m.next_entry::<String, Json>()? {
                    match v.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = x,
                        None => v.push((k, x)),
                    }
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Python truthiness of an optional JSON value (`None`/missing is false).
fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
    }
}

/// `isinstance(v, int)` (bool included, as in Python).
fn py_int(v: &Json) -> Option<i64> {
    match v {
        Json::Bool(b) => Some(i64::from(*b)),
        Json::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Python's `a == b` where `a` is a present value and `b` may be `None`.
fn py_eq(a: &Json, b: Option<&Json>) -> bool {
    b.is_some_and(|b| b == a)
}

/// Python's `int(str)` on an `added_tokens_decoder` key.
fn py_int_str(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    if digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    let v: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -v } else { v })
}

/// The converter's `hparams` for the keys the tokenizer needs: `text_config` over the root.
struct Hparams<'a> {
    root: Option<&'a Map<String, Json>>,
    text: Option<&'a Map<String, Json>>,
}

impl<'a> Hparams<'a> {
    fn new(config: &'a Json) -> Self {
        let root = config.as_object();
        let text = root.and_then(|r| r.get("text_config")).and_then(Json::as_object);
        Hparams { root, text }
    }

    fn get(&self, key: &str) -> Option<&'a Json> {
        self.text
            .and_then(|t| t.get(key))
            .or_else(|| self.root.and_then(|r| r.get(key)))
    }
}

fn unsupported(path: &Path, what: impl Into<String>) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// A vocabulary size from the hparams: an int, as the converter's list arithmetic needs.
fn vocab_size_of(dir: &Path, v: &Json) -> Result<usize> {
    py_int(v)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| unsupported(dir, format!("config vocab_size {v} is not a non-negative integer")))
}

// ---------------------------------------------------------------------------------------------
// LlamaModel / Phi3MiniModel set_vocab.

fn llama_set_vocab(kvs: &mut Kvs, dir: &Path, hp: &Hparams, pre: Option<&str>) -> Result<()> {
    if dir.join("tekken.json").is_file() && !dir.join("tokenizer.json").is_file() {
        return Err(unsupported(
            dir,
            "Mistral tekken.json tokenizers (mistral-common) are not supported",
        ));
    }
    let tc_path = dir.join("tokenizer_config.json");
    if let Some(tc) = read_object(&tc_path)? {
        if let Some(v) = tc.get("add_prefix_space").filter(|v| !v.is_null()) {
            kvs.set(K_ADD_PREFIX, Value::Bool(truthy(Some(v))));
        }
        if tc.get("tokenizer_class").and_then(Json::as_str) == Some("HybridDNATokenizer") {
            return Err(unsupported(&tc_path, "HybridDNATokenizer is not supported"));
        }
    }
    if dir.join("tokenizer.model").is_file() {
        set_vocab_sentencepiece(kvs, dir, hp)?;
    } else {
        // `_set_vocab_llama_hf` (LlamaHfVocab) takes a SentencePiece-style BPE tokenizer.json;
        // it raises FileNotFoundError/TypeError (→ GPT-2 BPE) for anything else.
        let tj_path = dir.join("tokenizer.json");
        let tj = shared_object(&tj_path)?.ok_or_else(|| Error::NotFound { path: tj_path.clone() })?;
        let model = tj.get("model").ok_or_else(|| Error::json(&tj_path, "no `model`"))?;
        let is_bpe = model.get("type").and_then(Json::as_str) == Some("BPE");
        let ignore_merges = truthy(model.get("ignore_merges"));
        let byte_fallback = model.get("byte_fallback").is_none_or(|v| truthy(Some(v)));
        let is_llama3 = is_bpe && ignore_merges && !byte_fallback;
        let spm_like = is_bpe
            && truthy(model.get("byte_fallback"))
            && tj.get("decoder").and_then(|d| d.get("type")).and_then(Json::as_str) == Some("Sequence");
        if !is_llama3 && spm_like {
            return Err(unsupported(
                dir,
                "a SentencePiece-style tokenizer.json without tokenizer.model (the converter's LlamaHfVocab) is not supported; add tokenizer.model",
            ));
        }
        set_vocab_gpt2(kvs, dir, hp, pre)?;
    }
    let vocab_size = hp.get("vocab_size").and_then(py_int).unwrap_or(32000);
    if vocab_size == 32016 {
        // CodeLlama: a second SpecialVocab for prefix/suffix/middle/eot (only eot has a writer).
        let types = ["prefix", "suffix", "middle", "eot"].map(String::from).to_vec();
        let mut sv = SpecialVocab::load(dir, false, types, None)?;
        sv.set_special_token("prefix", &Json::from(32007))?;
        sv.set_special_token("suffix", &Json::from(32008))?;
        sv.set_special_token("middle", &Json::from(32009))?;
        sv.set_special_token("eot", &Json::from(32010))?;
        sv.add_to_gguf(kvs, dir)?;
    }
    if vocab_size == 49152 {
        kvs.set(K_ADD_BOS, Value::Bool(false));
    }
    Ok(())
}

fn phi3_set_vocab(kvs: &mut Kvs, dir: &Path, hp: &Hparams, pre: Option<&str>) -> Result<()> {
    let tc_path = dir.join("tokenizer_config.json");
    let tc = read_object(&tc_path)?;
    if let Some(tc) = &tc {
        let class = tc
            .get("tokenizer_class")
            .ok_or_else(|| unsupported(&tc_path, "no tokenizer_class (the converter fails with KeyError)"))?;
        if class.as_str() == Some("GPT2Tokenizer") {
            return set_vocab_gpt2(kvs, dir, hp, pre);
        }
    }
    let model_path = dir.join("tokenizer.model");
    if !model_path.is_file() {
        return Err(unsupported(dir, format!("Error: Missing {}", model_path.display())));
    }
    let pieces = read_sentencepiece(&model_path)?;
    let vocab_size = match hp.get("vocab_size") {
        Some(v) => vocab_size_of(dir, v)?,
        None => pieces.len(),
    };
    let out_of_range = |what: &str, id: i64| {
        unsupported(
            dir,
            format!("{what}: token id {id} is out of range for vocab_size {vocab_size}"),
        )
    };
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    for (i, p) in pieces.iter().enumerate() {
        if i >= vocab_size {
            return Err(out_of_range("tokenizer.model", i as i64));
        }
        tokens[i] = p.piece.clone();
        scores[i] = p.score;
        types[i] = p.converter_type();
    }
    for (key, id) in read_added_tokens_json(dir)? {
        if id >= vocab_size as i64 {
            continue;
        }
        let i = nonneg(dir, id)?;
        tokens[i] = key;
        scores[i] = -1000.0;
        types[i] = USER_DEFINED;
    }
    let mut set = |id: i64, content: String, special: bool, what: &str| -> Result<()> {
        let i = usize::try_from(id)
            .ok()
            .filter(|&i| i < vocab_size)
            .ok_or_else(|| out_of_range(what, id))?;
        tokens[i] = content;
        scores[i] = -1000.0;
        types[i] = if special { CONTROL } else { USER_DEFINED };
        Ok(())
    };
    for (id, entry) in added_tokens_decoder(&tc_path)? {
        set(
            id,
            decoder_content(&tc_path, &entry)?,
            truthy(entry.get("special")),
            "added_tokens_decoder",
        )?;
    }
    let tj_path = dir.join("tokenizer.json");
    if let Some(tj) = shared_object(&tj_path)? {
        let added = match tj.get("added_tokens") {
            None => Vec::new(),
            Some(Json::Array(a)) => a.clone(),
            Some(_) => return Err(Error::json(&tj_path, "added_tokens is not a list")),
        };
        for t in added {
            let id = t
                .get("id")
                .and_then(py_int)
                .ok_or_else(|| Error::json(&tj_path, "added token without an integer id"))?;
            let content = t
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| Error::json(&tj_path, "added token without a string content"))?;
            set(
                id,
                content.to_owned(),
                truthy(t.get("special")),
                "tokenizer.json added_tokens",
            )?;
        }
    }
    write_spm(kvs, dir, tokens, scores, types)
}

fn nonneg(dir: &Path, id: i64) -> Result<usize> {
    usize::try_from(id).map_err(|_| unsupported(dir, format!("negative token id {id}")))
}

// ---------------------------------------------------------------------------------------------
// SentencePiece.

/// `_set_vocab_sentencepiece` (with `_create_vocab_sentencepiece`).
fn set_vocab_sentencepiece(kvs: &mut Kvs, dir: &Path, hp: &Hparams) -> Result<()> {
    let model_path = dir.join("tokenizer.model");
    let pieces = read_sentencepiece(&model_path)?;
    let vocab_size = match hp.get("vocab_size_per_layer_input").or_else(|| hp.get("vocab_size")) {
        Some(v) if truthy(Some(v)) => vocab_size_of(dir, v)?,
        _ => pieces.len(),
    };
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    for (i, p) in pieces.iter().take(vocab_size).enumerate() {
        tokens[i] = p.piece.clone();
        scores[i] = p.score;
        types[i] = p.converter_type();
    }
    for (key, id) in read_added_tokens_json(dir)? {
        if id >= vocab_size as i64 {
            continue;
        }
        let i = nonneg(dir, id)?;
        tokens[i] = key;
        scores[i] = -1000.0;
        types[i] = USER_DEFINED;
    }
    let tc_path = dir.join("tokenizer_config.json");
    for (id, entry) in added_tokens_decoder(&tc_path)? {
        let mut content = decoder_content(&tc_path, &entry)?;
        if id >= vocab_size as i64 {
            continue;
        }
        let i = nonneg(dir, id)?;
        if truthy(entry.get("special")) || looks_special(&content) {
            types[i] = CONTROL;
        } else {
            content = content.replace('\u{2581}', " ");
            types[i] = USER_DEFINED;
        }
        scores[i] = -1000.0;
        tokens[i] = content;
    }
    write_spm(kvs, dir, tokens, scores, types)
}

fn write_spm(kvs: &mut Kvs, dir: &Path, tokens: Vec<String>, scores: Vec<f32>, types: Vec<i32>) -> Result<()> {
    let n = tokens.len();
    kvs.string(K_MODEL, "llama");
    kvs.string(K_PRE, "default");
    kvs.array(K_TOKENS, strings(tokens));
    kvs.array(K_SCORES, scores.into_iter().map(Value::F32).collect());
    kvs.array(K_TYPES, types.into_iter().map(Value::I32).collect());
    SpecialVocab::load(dir, false, default_types(), Some(n))?.add_to_gguf(kvs, dir)
}

/// `added_tokens.json` as (token, id) in file order; ids must be ints.
fn read_added_tokens_json(dir: &Path) -> Result<Vec<(String, i64)>> {
    let path = dir.join("added_tokens.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let Ordered(entries) = serde_json::from_slice(&bytes).map_err(|e| Error::json(&path, e))?;
    entries
        .into_iter()
        .map(|(k, v)| match py_int(&v) {
            Some(id) => Ok((k, id)),
            None => Err(Error::json(&path, format!("id of {k:?} is not an integer"))),
        })
        .collect()
}

/// `tokenizer_config.json`'s `added_tokens_decoder` as (id, entry) in file order.
fn added_tokens_decoder(tc_path: &Path) -> Result<Vec<(i64, Json)>> {
    #[derive(serde::Deserialize)]
    struct Tc {
        #[serde(default)]
        added_tokens_decoder: Option<Ordered>,
    }
    if !tc_path.is_file() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(tc_path).map_err(|e| Error::io(tc_path, e))?;
    let tc: Tc = serde_json::from_slice(&bytes).map_err(|e| Error::json(tc_path, e))?;
    let Some(Ordered(entries)) = tc.added_tokens_decoder else {
        return Ok(Vec::new());
    };
    entries
        .into_iter()
        .map(|(k, v)| match py_int_str(&k) {
            Some(id) => Ok((id, v)),
            None => Err(Error::json(
                tc_path,
                format!("added_tokens_decoder key {k:?} is not an integer"),
            )),
        })
        .collect()
}

fn decoder_content(tc_path: &Path, entry: &Json) -> Result<String> {
    entry
        .get("content")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::json(tc_path, "added_tokens_decoder entry without a string content"))
}

/// One `ModelProto.pieces` entry.
#[derive(Debug, Clone, PartialEq)]
struct Piece {
    piece: String,
    score: f32,
    /// `SentencePiece.Type`: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6.
    kind: i32,
}

impl Piece {
    /// The converter's type: `IsUnknown`, `IsControl`, `IsUnused`, `IsByte`, else NORMAL (so a
    /// USER_DEFINED piece is written NORMAL).
    fn converter_type(&self) -> i32 {
        match self.kind {
            UNKNOWN | CONTROL | UNUSED | BYTE => self.kind,
            _ => NORMAL,
        }
    }
}

fn read_sentencepiece(path: &Path) -> Result<Vec<Piece>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_sentencepiece(&bytes).map_err(|what| unsupported(path, format!("invalid SentencePiece model: {what}")))
}

/// Protobuf wire reading, bounds-checked.
struct Pb<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Pb<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let c = *self.b.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            if i == 9 && c > 1 {
                return Err("varint overflows 64 bits".into());
            }
            v |= u64::from(c & 0x7f) << (7 * i);
            if c < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "length overflows")?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("truncated field")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field: number, wire type and, for length-delimited ones, the payload.
    fn field(&mut self) -> std::result::Result<(u64, Field<'a>), String> {
        let key = self.varint()?;
        let num = key >> 3;
        if num == 0 {
            return Err("field number 0".into());
        }
        let f = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => Field::Fixed64(self.take(8)?),
            2 => {
                let n = self.varint()?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32([b[0], b[1], b[2], b[3]])
            }
            w => return Err(format!("unsupported wire type {w} (field {num})")),
        };
        Ok((num, f))
    }

    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
}

enum Field<'a> {
    Varint(u64),
    Fixed64(#[allow(dead_code)] &'a [u8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// `ModelProto.pieces` (field 1, repeated `SentencePiece {piece = 1, score = 2, type = 3}`),
/// checked as `SentencePieceProcessor::Load` does: non-empty unique pieces, exactly one UNKNOWN.
/// Other fields (trainer/normalizer specs) are skipped.
fn parse_sentencepiece(bytes: &[u8]) -> std::result::Result<Vec<Piece>, String> {
    let mut r = Pb { b: bytes, pos: 0 };
    let mut pieces = Vec::new();
    while !r.done() {
        match r.field()? {
            (1, Field::Bytes(b)) => pieces.push(parse_piece(b).map_err(|e| format!("piece {}: {e}", pieces.len()))?),
            (1, _) => return Err("`pieces` is not a message".into()),
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    let mut unk = None;
    for (i, p) in pieces.iter().enumerate() {
        if p.piece.is_empty() {
            return Err(format!("piece {i} is empty"));
        }
        if !seen.insert(p.piece.as_str()) {
            return Err(format!("piece {:?} is already defined", p.piece));
        }
        if p.kind == UNKNOWN {
            if unk.is_some() {
                return Err("unk is already defined".into());
            }
            unk = Some(i);
        }
    }
    if unk.is_none() {
        return Err("unk is not defined".into());
    }
    Ok(pieces)
}

fn parse_piece(b: &[u8]) -> std::result::Result<Piece, String> {
    let mut r = Pb { b, pos: 0 };
    let mut p = Piece {
        piece: String::new(),
        score: 0.0,
        kind: NORMAL,
    };
    while !r.done() {
        match r.field()? {
            (1, Field::Bytes(s)) => p.piece = String::from_utf8(s.to_vec()).map_err(|_| "piece is not UTF-8")?,
            (2, Field::Fixed32(f)) => p.score = f32::from_le_bytes(f),
            (3, Field::Varint(t)) if (1..=6).contains(&t) => p.kind = t as i32,
            // proto2: an unknown enum value is kept as an unknown field; the type stays.
            (3, Field::Varint(_)) => {}
            (1..=3, _) => return Err("field with the wrong wire type".into()),
            _ => {}
        }
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// GPT-2 BPE (tokenizer.json).

/// `get_vocab_base_pre`'s check text, character for character.
const CHKTXT: &str = "\u{a} \u{a}\u{a} \u{a}\u{a}\u{a} \u{9} \u{9}\u{9} \u{9}\u{a}  \u{a}   \u{a}    \u{a}     \u{a}\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// `get_vocab_base_pre`'s `if chkhsh == …: res = …` statements, in source order (later ones win:
/// they are `if`s, not `elif`s, and two hashes appear twice).
const PRE_TABLE: &[(&str, &str)] = &[
    (
        "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b",
        "chatglm-bpe",
    ),
    (
        "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516",
        "chatglm-bpe",
    ),
    (
        "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2",
        "glm4",
    ),
    (
        "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902",
        "glm4",
    ),
    (
        "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267",
        "glm4",
    ),
    (
        "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35",
        "minerva-7b",
    ),
    (
        "7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664",
        "hunyuan",
    ),
    (
        "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6",
        "hunyuan-dense",
    ),
    (
        "e6ddf9c6686791c12d698d34c31ab9be1fea9af5a3d9a6909783ab382198ae1c",
        "hy_v4",
    ),
    (
        "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6",
        "falcon-h1",
    ),
    (
        "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86",
        "falcon-h1",
    ),
    (
        "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896",
        "falcon-h1",
    ),
    (
        "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b",
        "falcon-h1",
    ),
    (
        "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890",
        "kimi-k2",
    ),
    (
        "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c",
        "qwen2",
    ),
    (
        "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f",
        "qwen35",
    ),
    (
        "66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273",
        "grok-2",
    ),
    (
        "b3d1dd861f1d4c5c0d2569ce36baf3f90fe8a102db3de50dd71ff860d91be3df",
        "jina-v2-de",
    ),
    (
        "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4",
        "gpt-2",
    ),
    (
        "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7",
        "lfm2",
    ),
    (
        "846deafc5b0fa786186fa4ae6c7b49903cf2f1d1895bdb80b9120d60be135252",
        "gemma4",
    ),
    (
        "0a766d034107bc736a3f2dc4968fd62e54a3570f1454443e0c5a4cc6bd7941ed",
        "spark2_5",
    ),
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ),
    (
        "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754",
        "deepseek-llm",
    ),
    (
        "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821",
        "deepseek-coder",
    ),
    (
        "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed",
        "falcon",
    ),
    (
        "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f",
        "bert-bge",
    ),
    (
        "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e",
        "falcon3",
    ),
    (
        "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7",
        "bert-bge-large",
    ),
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "mpt",
    ),
    (
        "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34",
        "starcoder",
    ),
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ),
    (
        "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3",
        "stablelm2",
    ),
    (
        "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff",
        "refact",
    ),
    (
        "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8",
        "command-r",
    ),
    (
        "d772b220ace2baec124bed8cfafce0ead7d6c38a4b65ef11261cf9d5d62246d1",
        "tiny_aya",
    ),
    (
        "52df12b4c8d4176e7481aab4b6e8454d1fd0a210a04a574f6d4e067d10e23c3e",
        "cohere2moe",
    ),
    (
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
        "qwen2",
    ),
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "olmo",
    ),
    (
        "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e",
        "dbrx",
    ),
    (
        "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448",
        "jina-v1-en",
    ),
    (
        "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f",
        "jina-v2-en",
    ),
    (
        "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643",
        "jina-v2-es",
    ),
    (
        "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6",
        "jina-v2-de",
    ),
    (
        "a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d",
        "jina-v5-nano",
    ),
    (
        "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d",
        "smaug-bpe",
    ),
    (
        "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360",
        "poro-chat",
    ),
    (
        "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a",
        "jina-v2-code",
    ),
    (
        "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee",
        "viking",
    ),
    (
        "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901",
        "jais",
    ),
    (
        "bc5108ee1eb6a3d600cadd065f63190fbd0554dbc9e4bbd6a0d977970afc8d2a",
        "jais-2",
    ),
    (
        "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f",
        "codeshell",
    ),
    (
        "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e",
        "tekken",
    ),
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ),
    (
        "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7",
        "bloom",
    ),
    (
        "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21",
        "gpt3-finnish",
    ),
    (
        "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae",
        "exaone",
    ),
    (
        "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085",
        "phi-2",
    ),
    (
        "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450",
        "chameleon",
    ),
    (
        "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65",
        "roberta-bpe",
    ),
    (
        "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb",
        "gigachat",
    ),
    (
        "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1",
        "megrez",
    ),
    (
        "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5",
        "deepseek-v3",
    ),
    (
        "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5",
        "deepseek-r1-qwen",
    ),
    (
        "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e",
        "gpt-4o",
    ),
    (
        "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f",
        "superbpe",
    ),
    (
        "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15",
        "trillion",
    ),
    (
        "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224",
        "bailingmoe",
    ),
    (
        "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406",
        "llama4",
    ),
    (
        "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3",
        "pixtral",
    ),
    (
        "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec",
        "seed-coder",
    ),
    (
        "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf",
        "a.x-4.0",
    ),
    (
        "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4",
        "midm-2.0",
    ),
    (
        "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51",
        "lfm2",
    ),
    (
        "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb",
        "exaone4",
    ),
    (
        "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756",
        "mellum",
    ),
    (
        "a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152",
        "modern-bert",
    ),
    (
        "49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df",
        "afmoe",
    ),
    (
        "9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206",
        "bailingmoe2",
    ),
    (
        "53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e",
        "granite-docling",
    ),
    (
        "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95",
        "minimax-m2",
    ),
    (
        "4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665",
        "kormo",
    ),
    (
        "9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1",
        "youtu",
    ),
    (
        "16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91",
        "solar-open",
    ),
    (
        "6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f",
        "exaone-moe",
    ),
    (
        "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4",
        "qwen35",
    ),
    (
        "b4b8ca1f9769494fbd956ebc4c249de6131fb277a4a3345a7a92c7dd7a55808d",
        "joyai-llm",
    ),
    (
        "e4d54df1ebc1f2b91acd986c5b51aa50837d5faf7c7398e73c1f9e9ee5d19869",
        "kanana2",
    ),
    (
        "862f827721df956049dff5ca81a57f29e575280bc622e290d3bf4e35eca29015",
        "f2llmv2",
    ),
    (
        "62f6fb0a6fd5098caeabb19b07a5c1099cafc8b9c40eab6ea89ece4ec02fbc57",
        "sarvam-moe",
    ),
    (
        "f728162c1315c26e40249849799b4ba3fe584c32084b4795b03eb295e63cb5af",
        "talkie",
    ),
    (
        "36f3066e97b7f3994b379aaacde306c1444c6ae84e81a5ae3cd2b7ed3b8c42d4",
        "minicpm5",
    ),
    (
        "f241072145675bf8322086f115aebad05e9f869557a238bf2150a2a417d1bf60",
        "granite-embed-multi-97m",
    ),
    (
        "789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669",
        "granite-embed-multi-311m",
    ),
    (
        "9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d",
        "mellum2",
    ),
    (
        "972da7b59cec44d1f0a490a86c96df53859e486e481563e5dddac155013d87ac",
        "laguna",
    ),
    (
        "653660222fb704f61cbf2b618a8ae6502b7f8b20c980f9a5de07ed78e13319cd",
        "ufakzeka",
    ),
];

/// The name `get_vocab_base_pre` gives a check-text hash (None: the converter refuses it).
fn pre_name(chkhsh: &str) -> Option<&'static str> {
    PRE_TABLE.iter().rev().find(|(h, _)| *h == chkhsh).map(|(_, n)| *n)
}

/// `sha256(str(ids))`: Python's list repr, `[1, 2, 3]`.
fn chkhsh(ids: &[u32]) -> String {
    let list = format!("[{}]", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", "));
    Sha256::digest(list.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tokenizer as transformers' `AutoTokenizer` (fast) sets it up from the folder.
struct HfTokenizer {
    tok: tokenizers::Tokenizer,
    /// `tokenizer_config.json` (empty when absent).
    config: Map<String, Json>,
    /// The class's post-processor override (LlamaTokenizerFast, GemmaTokenizerFast):
    /// (bos id when `add_bos_token`, eos id when `add_eos_token`).
    template: Option<(Option<u32>, Option<u32>)>,
}

fn special_content(v: &Json) -> Option<&str> {
    match v {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// A tokenizer.json whose model is a plain BPE, built the way the `tokenizers` crate's own
/// deserializer builds it (`TokenizerVisitor` and `BPEVisitor`, 0.22), but from the JSON already
/// parsed: that deserializer first buffers the whole model (vocab and merges) as serde content,
/// a third of a Llama-3 export's start-up. `None`: not that shape (no `"type": "BPE"`, a value of
/// an unexpected type, another version); the caller deserializes it as before.
fn bpe_tokenizer(j: &Json) -> Option<std::result::Result<tokenizers::Tokenizer, String>> {
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::{DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};
    let m = j.get("model")?.as_object()?;
    if m.get("type")?.as_str()? != "BPE" || j.get("version").is_some_and(|v| v.as_str() != Some("1.0")) {
        return None;
    }
    let mut b = BPE::builder();
    let present = |k: &str| m.get(k).filter(|v| !v.is_null());
    if let Some(v) = present("dropout") {
        b = b.dropout(v.as_f64()? as f32);
    }
    if let Some(v) = present("unk_token") {
        b = b.unk_token(v.as_str()?.to_owned());
    }
    if let Some(v) = present("continuing_subword_prefix") {
        b = b.continuing_subword_prefix(v.as_str()?.to_owned());
    }
    if let Some(v) = present("end_of_word_suffix") {
        b = b.end_of_word_suffix(v.as_str()?.to_owned());
    }
    if let Some(v) = present("fuse_unk") {
        b = b.fuse_unk(v.as_bool()?);
    }
    if let Some(v) = present("byte_fallback") {
        b = b.byte_fallback(v.as_bool()?);
    }
    if let Some(v) = present("ignore_merges") {
        b = b.ignore_merges(v.as_bool()?);
    }
    let mut vocab = Vocab::default();
    for (k, v) in m.get("vocab")?.as_object()? {
        vocab.insert(k.clone(), u32::try_from(v.as_u64()?).ok()?);
    }
    let raw = m.get("merges")?.as_array()?;
    let mut merges = Vec::with_capacity(raw.len());
    if raw.iter().all(Json::is_array) {
        for pair in raw {
            match pair.as_array()?.as_slice() {
                [a, b] => merges.push((a.as_str()?.to_owned(), b.as_str()?.to_owned())),
                _ => return None,
            }
        }
    } else {
        // The legacy "a b" lines (`convert_merges_to_hashmap`).
        for (rank, line) in raw.iter().map(Json::as_str).collect::<Option<Vec<_>>>()?.into_iter().filter(|l| !l.starts_with("#version")).enumerate() {
            let parts: Vec<&str> = line.split(' ').collect();
            let [a, b] = parts.as_slice() else {
                return Some(Err(format!("merges line {} is not two tokens", rank + 1)));
            };
            merges.push(((*a).to_owned(), (*b).to_owned()));
        }
    }
    let bpe = match b.vocab_and_merges(vocab, merges).build() {
        Ok(bpe) => bpe,
        Err(e) => return Some(Err(e.to_string())),
    };
    fn part<T: serde::de::DeserializeOwned>(j: &Json, k: &str) -> Option<Option<T>> {
        match j.get(k) {
            None | Some(Json::Null) => Some(None),
            Some(v) => T::deserialize(v).ok().map(Some),
        }
    }
    let built = tokenizers::TokenizerBuilder::<ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
        .with_model(ModelWrapper::BPE(bpe))
        .with_normalizer(part(j, "normalizer")?)
        .with_pre_tokenizer(part(j, "pre_tokenizer")?)
        .with_post_processor(part(j, "post_processor")?)
        .with_decoder(part(j, "decoder")?)
        .with_truncation(part(j, "truncation")?)
        .with_padding(part(j, "padding")?)
        .build();
    let mut tok = match built {
        Ok(t) => t,
        Err(e) => return Some(Err(e.to_string())),
    };
    let added: Vec<tokenizers::AddedToken> = part(j, "added_tokens")?.unwrap_or_default();
    tok.add_tokens(&added);
    Some(Ok(tokenizers::Tokenizer::from(tok)))
}

impl HfTokenizer {
    fn load(dir: &Path, model_type: Option<&str>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(unsupported(
                dir,
                "a BPE tokenizer needs tokenizer.json (slow vocab.json + merges.txt tokenizers are not supported)",
            ));
        }
        // Built from the JSON already parsed for the converter's other reads (measured: 0.1 s
        // less than parsing the 9 MB text again for a Llama-3 tokenizer).
        let mut tok: tokenizers::Tokenizer = match shared_object(&path)? {
            Some(j) => match bpe_tokenizer(&j) {
                Some(Ok(t)) => t,
                Some(Err(e)) => return Err(unsupported(&path, format!("cannot build its BPE model: {e}"))),
                None => serde::Deserialize::deserialize(&*j).map_err(|e: serde_json::Error| Error::json(&path, e))?,
            },
            None => return Err(Error::NotFound { path }),
        };
        let config = read_object(&dir.join("tokenizer_config.json"))?.unwrap_or_default();

        // PreTrainedTokenizerFast.__init__: tokenizer_config's added_tokens_decoder entries that
        // differ from tokenizer.json's are added again (by id), then special tokens not yet added.
        let current: Vec<tokenizers::AddedToken> = tok.get_added_tokens_decoder().into_values().collect();
        let mut to_add: Vec<tokenizers::AddedToken> = Vec::new();
        if let Some(Json::Object(dec)) = config.get("added_tokens_decoder") {
            let mut entries: Vec<(i64, &Json)> = dec.iter().filter_map(|(k, v)| Some((py_int_str(k)?, v))).collect();
            entries.sort_by_key(|(id, _)| *id);
            for (_, v) in entries {
                let Some(content) = v.get("content").and_then(Json::as_str) else {
                    continue;
                };
                let flag = |k: &str, d: bool| v.get(k).and_then(Json::as_bool).unwrap_or(d);
                let special = flag("special", false);
                let t = tokenizers::AddedToken {
                    content: content.to_owned(),
                    single_word: flag("single_word", false),
                    lstrip: flag("lstrip", false),
                    rstrip: flag("rstrip", false),
                    normalized: flag("normalized", !special),
                    special,
                };
                if !current.contains(&t) {
                    to_add.push(t);
                }
            }
        }
        let mut specials: Vec<String> = Vec::new();
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ] {
            if let Some(c) = config.get(key).and_then(special_content) {
                specials.push(c.to_owned());
            }
        }
        if let Some(Json::Array(extra)) = config.get("additional_special_tokens") {
            specials.extend(extra.iter().filter_map(special_content).map(str::to_owned));
        }
        let encoder: HashSet<String> = current
            .iter()
            .map(|t| t.content.clone())
            .chain(to_add.iter().map(|t| t.content.clone()))
            .collect();
        for t in &mut to_add {
            t.special = t.special || specials.contains(&t.content);
        }
        for s in &specials {
            if !encoder.contains(s) && !to_add.iter().any(|t| &t.content == s) {
                to_add.push(tokenizers::AddedToken::from(s.clone(), true));
            }
        }
        if !to_add.is_empty() {
            tok.add_tokens(&to_add);
        }

        let class = config
            .get("tokenizer_class")
            .and_then(Json::as_str)
            .map(str::to_owned)
            .or_else(|| {
                Some(match model_type? {
                    "llama" | "mistral" | "phi3" | "code_llama" => "LlamaTokenizerFast".to_owned(),
                    "gemma" | "gemma2" | "gemma3" | "gemma3_text" => "GemmaTokenizerFast".to_owned(),
                    _ => return None,
                })
            });
        let class = class.as_deref().map(|c| c.strip_suffix("Fast").unwrap_or(c));
        let template = match class {
            Some("LlamaTokenizer" | "GemmaTokenizer" | "CodeLlamaTokenizer") => {
                let add_bos = config.get("add_bos_token").is_none_or(|v| truthy(Some(v)));
                let add_eos = config.get("add_eos_token").is_some_and(|v| truthy(Some(v)));
                let id = |key: &str| -> Result<Option<u32>> {
                    let c = config.get(key).and_then(special_content);
                    match c {
                        None => Err(unsupported(dir, format!("add_{key} is set but there is no {key}"))),
                        Some(c) => Ok(tok.token_to_id(c)),
                    }
                };
                Some((
                    if add_bos { id("bos_token")? } else { None },
                    if add_eos { id("eos_token")? } else { None },
                ))
            }
            _ => None,
        };
        Ok(HfTokenizer { tok, config, template })
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let err = |e| unsupported(Path::new("tokenizer.json"), format!("encoding failed: {e}"));
        match (self.template, add_special_tokens) {
            (Some((bos, eos)), true) => {
                let mut ids: Vec<u32> = bos.into_iter().collect();
                ids.extend_from_slice(self.tok.encode(text, false).map_err(err)?.get_ids());
                ids.extend(eos);
                Ok(ids)
            }
            _ => Ok(self
                .tok
                .encode(text, add_special_tokens)
                .map_err(err)?
                .get_ids()
                .to_vec()),
        }
    }

    /// `tokenizer.decode(ids)`: the fast tokenizer's decode, then `clean_up_tokenization` when
    /// `clean_up_tokenization_spaces` (default false in transformers 4.57).
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .tok
            .decode(ids, false)
            .map_err(|e| unsupported(Path::new("tokenizer.json"), format!("decoding failed: {e}")))?;
        if !truthy(self.config.get("clean_up_tokenization_spaces")) {
            return Ok(text);
        }
        Ok(text
            .replace(" .", ".")
            .replace(" ?", "?")
            .replace(" !", "!")
            .replace(" ,", ",")
            .replace(" ' ", "'")
            .replace(" n't", "n't")
            .replace(" 'm", "'m")
            .replace(" 's", "'s")
            .replace(" 've", "'ve")
            .replace(" 're", "'re"))
    }
}

/// `_set_vocab_gpt2` (with `get_vocab_base`).
fn set_vocab_gpt2(kvs: &mut Kvs, dir: &Path, hp: &Hparams, pre: Option<&str>) -> Result<()> {
    // The tokenizer is dropped before tokenizer.json is read again as JSON below (loading both
    // at once, on two threads, saved no time and raised a Llama-3 export's peak RSS by 100 MB).
    let (tokpre, tokens, types) = {
        let model_type = hp.get("model_type").and_then(Json::as_str);
        let tk = HfTokenizer::load(dir, model_type)?;
        let vocab: HashMap<String, u32> = tk.tok.get_vocab(true);
        let vocab_size = match hp.get("vocab_size") {
            Some(v) => vocab_size_of(dir, v)?,
            None => vocab.len(),
        };
        let max_id = vocab.values().copied().max().unwrap_or(0);
        if vocab.is_empty() || max_id as usize >= vocab_size {
            return Err(unsupported(
                dir,
                format!(
                    "the tokenizer's largest id {max_id} is not below vocab_size {vocab_size} (the converter's assert)"
                ),
            ));
        }

        let ids = tk.encode(CHKTXT, true)?;
        let hash = chkhsh(&ids);
        let tokpre = match pre {
            Some(p) => p.to_owned(),
            None => pre_name(&hash).map(str::to_owned).ok_or_else(|| {
                unsupported(
                    &dir.join("tokenizer.json"),
                    format!(
                        "BPE pre-tokenizer was not recognized - update get_vocab_base_pre() (chkhsh: {hash}; llama.cpp's convert_hf_to_gguf.py does not know this tokenizer)"
                    ),
                )
            })?,
        };

        let added = tk.tok.get_added_tokens_decoder();
        let added_contents: HashSet<&str> = added.values().map(|t| t.content.as_str()).collect();
        // Every id below vocab_size (the largest is, checked above).
        let mut reverse: Vec<Option<&str>> = vec![None; vocab_size];
        for (t, &id) in &vocab {
            let slot = &mut reverse[id as usize];
            // Two strings on one id (an added token over a model token): prefer the added one.
            if slot.is_none() || added.get(&id).is_some_and(|a| a.content == *t) {
                *slot = Some(t.as_str());
            }
        }
        let mut tokens = Vec::with_capacity(vocab_size);
        let mut types = Vec::with_capacity(vocab_size);
        for (i, tok) in reverse.iter().enumerate() {
            let Some(tok) = tok else {
                tokens.push(format!("[PAD{i}]"));
                types.push(UNUSED);
                continue;
            };
            let mut token = (*tok).to_owned();
            if added_contents.contains(token.as_str()) {
                let a = u32::try_from(i).ok().and_then(|i| added.get(&i)).ok_or_else(|| {
                    unsupported(
                        dir,
                        format!("added token {token:?} is also at id {i}, which is not an added token"),
                    )
                })?;
                if !a.normalized {
                    token = tk.decode(&tk.encode(&token, false)?)?;
                }
                if a.special || looks_special(&token) {
                    types.push(CONTROL);
                } else {
                    token = token.replace('\u{2581}', " ");
                    types.push(USER_DEFINED);
                }
            } else {
                types.push(NORMAL);
            }
            tokens.push(token);
        }
        (tokpre, tokens, types)
    };
    kvs.string(K_MODEL, "gpt2");
    kvs.string(K_PRE, &tokpre);
    kvs.array(K_TOKENS, strings(tokens));
    kvs.array(K_TYPES, types.into_iter().map(Value::I32).collect());
    SpecialVocab::load(dir, true, default_types(), None)?.add_to_gguf(kvs, dir)
}

// ---------------------------------------------------------------------------------------------
// gguf-py's SpecialVocab.

fn default_types() -> Vec<String> {
    ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
        .map(String::from)
        .to_vec()
}

enum ChatTemplate {
    One(String),
    /// `[{"name": …, "template": …}, …]`.
    Many(Vec<Json>),
}

/// An insertion-ordered dict.
#[derive(Default)]
struct Dict<T>(Vec<(String, T)>);

impl<T> Dict<T> {
    fn get(&self, k: &str) -> Option<&T> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }
    fn set(&mut self, k: &str, v: T) {
        match self.0.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k.to_owned(), v)),
        }
    }
    fn setdefault(&mut self, k: &str, v: T) {
        if self.get(k).is_none() {
            self.0.push((k.to_owned(), v));
        }
    }
}

struct SpecialVocab {
    merges: Vec<String>,
    load_merges: bool,
    add_special: Dict<bool>,
    ids: Dict<i64>,
    chat_template: Option<ChatTemplate>,
    lowercase: Option<bool>,
    strip_accents: Option<bool>,
    types: Vec<String>,
    n_vocab: Option<usize>,
}

impl SpecialVocab {
    fn load(dir: &Path, load_merges: bool, types: Vec<String>, n_vocab: Option<usize>) -> Result<Self> {
        let mut sv = SpecialVocab {
            merges: Vec::new(),
            load_merges,
            add_special: Dict::default(),
            ids: Dict::default(),
            chat_template: None,
            lowercase: None,
            strip_accents: None,
            types,
            n_vocab,
        };
        sv.load_tokenizer_json(dir)?;
        sv.load_config_json(dir)?;
        if sv.load_merges && sv.merges.is_empty() {
            sv.merges_txt(dir)?;
        }
        Ok(sv)
    }

    fn set_special_token(&mut self, typ: &str, tid: &Json) -> Result<()> {
        let Some(tid) = py_int(tid) else { return Ok(()) };
        if tid < 0 {
            return Err(Error::Usage(format!(
                "invalid value for special token type {typ}: {tid}"
            )));
        }
        if self.n_vocab.is_none_or(|n| (tid as u64) < n as u64) && self.ids.get(typ).is_none() {
            self.ids.set(typ, tid);
        }
        Ok(())
    }

    fn merges_txt(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("merges.txt");
        if !path.is_file() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let py_space = |c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c);
        let mut lines = text.split_inclusive('\n').peekable();
        if lines.peek().is_some_and(|l| l.trim_matches(py_space).starts_with('#')) {
            lines.next();
        }
        self.merges = lines
            .filter_map(|l| {
                let parts: Vec<&str> = l.split(py_space).filter(|p| !p.is_empty()).collect();
                (parts.len() == 2).then(|| format!("{} {}", parts[0], parts[1]))
            })
            .collect();
        Ok(())
    }

    fn parse_normalizer(&mut self, n: &Json) {
        match n.get("type").and_then(Json::as_str) {
            Some("Lowercase") => self.lowercase = Some(true),
            Some("StripAccents") => self.strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = n.get("lowercase") {
                    self.lowercase = (!v.is_null()).then(|| truthy(Some(v)));
                }
                if let Some(v) = n.get("strip_accents") {
                    self.strip_accents = (!v.is_null()).then(|| truthy(Some(v)));
                }
            }
            Some("Sequence") => {
                if let Some(Json::Array(list)) = n.get("normalizers") {
                    for x in list {
                        self.parse_normalizer(x);
                    }
                }
            }
            _ => {}
        }
    }

    /// `_try_load_from_tokenizer_json`, statement for statement.
    fn load_tokenizer_json(&mut self, dir: &Path) -> Result<()> {
        let tj_path = dir.join("tokenizer.json");
        let tokenizer = shared_object(&tj_path)?;
        let mut added_tokens: Vec<Json> = Vec::new();
        if let Some(tj) = tokenizer.as_deref() {
            if self.load_merges {
                if let Some(Json::Array(merges)) = tj.get("model").and_then(|m| m.get("merges")) {
                    self.merges = convert_merges(merges)
                        .ok_or_else(|| Error::json(&tj_path, "Unknown tokenizer merges format"))?;
                }
            }
            if let Some(n) = tj.get("normalizer").filter(|n| truthy(Some(n))) {
                self.parse_normalizer(n);
            }
            if let Some(Json::Array(a)) = tj.get("added_tokens") {
                added_tokens = a.clone();
            }
        }
        let tc_path = dir.join("tokenizer_config.json");
        let mut tc = read_object(&tc_path)?;
        let tc_truthy = tc.as_ref().is_some_and(|m| !m.is_empty());
        if let Some(tj) = tokenizer.as_deref().filter(|t| truthy(Some(t))) {
            let get = |tc: &Option<Map<String, Json>>, k: &str| tc.as_ref().and_then(|m| m.get(k)).cloned();
            let mut special_bos = get(&tc, "bos_token");
            let mut special_cls = get(&tc, "cls_token");
            let mut special_eos = get(&tc, "eos_token");
            let mut special_sep = get(&tc, "sep_token");
            let put = |tc: &mut Option<Map<String, Json>>, k: &str, v: Option<Json>| {
                if let Some(m) = tc.as_mut() {
                    m.insert(k.to_owned(), v.unwrap_or(Json::Null));
                }
            };
            if !truthy(special_bos.as_ref()) && truthy(special_cls.as_ref()) && tc_truthy {
                special_bos = special_cls.clone();
                put(&mut tc, "bos_token", special_bos.clone());
            }
            if !truthy(special_eos.as_ref()) && truthy(special_sep.as_ref()) && tc_truthy {
                special_eos = special_sep.clone();
                put(&mut tc, "eos_token", special_eos.clone());
            }
            if let Some(pp) = tj.get("post_processor").filter(|p| truthy(Some(p))) {
                let list = match pp.get("processors") {
                    Some(Json::Array(a)) => a.clone(),
                    Some(_) => return Err(Error::json(&tj_path, "post_processor.processors is not a list")),
                    None => vec![pp.clone()],
                };
                let sid = |x: Option<&Json>| -> Option<Json> {
                    x.and_then(|x| x.get("SpecialToken")).and_then(|s| s.get("id")).cloned()
                };
                for processor in &list {
                    match processor.get("type").and_then(Json::as_str) {
                        Some("ByteLevel") => {
                            self.add_special.setdefault("bos", false);
                            self.add_special.setdefault("eos", false);
                        }
                        Some("RobertaProcessing") => {
                            self.add_special.set("bos", true);
                            self.add_special.set("eos", true);
                            self.add_special.set("sep", true);
                            if !truthy(special_cls.as_ref()) && tc_truthy {
                                special_cls = match processor.get("cls") {
                                    Some(v) => py_index0(v),
                                    None => special_bos.clone(),
                                };
                                put(&mut tc, "cls_token", special_cls.clone());
                            }
                            if !truthy(special_sep.as_ref()) && tc_truthy {
                                special_sep = match processor.get("sep") {
                                    Some(v) => py_index0(v),
                                    None => special_eos.clone(),
                                };
                                put(&mut tc, "sep_token", special_sep.clone());
                            }
                        }
                        Some("TemplateProcessing") => {
                            let empty = Vec::new();
                            let single = processor.get("single").and_then(Json::as_array).unwrap_or(&empty);
                            let pair = processor.get("pair").and_then(Json::as_array).unwrap_or(&empty);
                            let mut special_first: Option<Json> = None;
                            let mut special_last: Option<Json> = None;
                            if single.len() > 1 {
                                let first = sid(single.first());
                                if truthy(first.as_ref()) {
                                    let f = first.clone().unwrap_or(Json::Null);
                                    special_first = first;
                                    if !tc_truthy {
                                        special_bos = Some(f.clone());
                                    } else if !(py_eq(&f, special_bos.as_ref()) || py_eq(&f, special_cls.as_ref())) {
                                        if !truthy(special_bos.as_ref()) {
                                            special_bos = Some(f.clone());
                                            put(&mut tc, "bos_token", special_bos.clone());
                                        }
                                        if !truthy(special_cls.as_ref()) {
                                            special_cls = Some(f.clone());
                                            put(&mut tc, "cls_token", special_cls.clone());
                                        }
                                    }
                                    let add = py_eq(&f, special_bos.as_ref()) || py_eq(&f, special_cls.as_ref());
                                    self.add_special.set("bos", add);
                                }
                                let last = sid(single.last());
                                if truthy(last.as_ref()) {
                                    let l = last.clone().unwrap_or(Json::Null);
                                    special_last = last;
                                    if !tc_truthy {
                                        special_eos = Some(l.clone());
                                    } else if !py_eq(&l, special_eos.as_ref()) {
                                        if !self.types.iter().any(|t| t == "eot") {
                                            self.types.push("eot".into());
                                            put(&mut tc, "eot_token", special_eos.clone());
                                        } else if !self.types.iter().any(|t| t == "eom") {
                                            self.types.push("eom".into());
                                            put(&mut tc, "eom_token", special_eos.clone());
                                        }
                                        special_eos = Some(l.clone());
                                        put(&mut tc, "eos_token", special_eos.clone());
                                    }
                                    self.add_special.set("eos", py_eq(&l, special_eos.as_ref()));
                                }
                            }
                            if !pair.is_empty() {
                                let matches = |x: Option<&Json>, s: &Option<Json>| {
                                    truthy(s.as_ref()) && sid(x).as_ref() == s.as_ref()
                                };
                                let start = usize::from(matches(pair.first(), &special_first));
                                let end = if matches(pair.last(), &special_last) {
                                    pair.len() - 1
                                } else {
                                    pair.len()
                                };
                                let tmpl = if start < end { &pair[start..end] } else { &[][..] };
                                if !tmpl.is_empty() {
                                    let seq = |x: Option<&Json>| {
                                        x.and_then(|x| x.get("Sequence")).and_then(|s| s.get("id")).cloned()
                                    };
                                    let a = seq(tmpl.first());
                                    let b = seq(tmpl.last());
                                    let inner = if tmpl.len() >= 2 {
                                        &tmpl[1..tmpl.len() - 1]
                                    } else {
                                        &[][..]
                                    };
                                    if a.as_ref().and_then(Json::as_str) == Some("A")
                                        && b.as_ref().and_then(Json::as_str) == Some("B")
                                        && !inner.is_empty()
                                    {
                                        let mut add_sep = false;
                                        let is_sep =
                                            |e: &Json| py_eq(e, special_sep.as_ref()) || py_eq(e, special_eos.as_ref());
                                        if let Some(e) = sid(inner.first()).filter(|e| truthy(Some(e))) {
                                            if is_sep(&e) && !truthy(special_last.as_ref()) {
                                                add_sep = true;
                                            }
                                        }
                                        if inner.len() == 2 {
                                            if let Some(e) = sid(inner.get(1)).filter(|e| truthy(Some(e))) {
                                                if is_sep(&e) {
                                                    add_sep = true;
                                                }
                                            }
                                        }
                                        self.add_special.set("sep", add_sep);
                                        if add_sep && !truthy(special_sep.as_ref()) && tc_truthy {
                                            put(&mut tc, "sep_token", special_eos.clone());
                                        }
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let Some(tc) = tc.filter(|m| !m.is_empty()) else {
            return Ok(());
        };
        let template = match tc.get("chat_template") {
            Some(t) => Some(t.clone()),
            None => chat_template_files(dir)?,
        };
        match template {
            None | Some(Json::Null) => self.chat_template = None,
            Some(Json::String(s)) => self.chat_template = Some(ChatTemplate::One(s)),
            Some(Json::Array(a)) => self.chat_template = Some(ChatTemplate::Many(a)),
            Some(_) => {} // "Bad type for chat_template field - ignoring"
        }
        for typ in self.types.clone() {
            if let Some(Json::Bool(b)) = tc.get(&format!("add_{typ}_token")) {
                self.add_special.setdefault(&typ, *b);
            }
            let Some(content) = tc.get(&format!("{typ}_token")).and_then(|e| match e {
                Json::String(s) => Some(s.as_str()),
                Json::Object(o) => o.get("content").and_then(Json::as_str),
                _ => None,
            }) else {
                continue;
            };
            let found = added_tokens
                .iter()
                .find(|a| a.get("content").and_then(Json::as_str) == Some(content));
            if let Some(id) = found.and_then(|a| a.get("id")) {
                self.set_special_token(&typ, id)?;
            }
        }
        Ok(())
    }

    fn load_config_json(&mut self, dir: &Path) -> Result<()> {
        let Some(config) = read_object(&dir.join("config.json"))? else {
            return Ok(());
        };
        for typ in self.types.clone() {
            let key = format!("{typ}_token_id");
            let mut id = config.get(&key).filter(|v| !v.is_null());
            if id.is_none() {
                id = config.get("text_config").and_then(|t| t.get(&key));
            }
            if let Some(id) = id {
                self.set_special_token(&typ, id)?;
            }
        }
        Ok(())
    }

    /// `add_to_gguf`.
    fn add_to_gguf(&self, kvs: &mut Kvs, dir: &Path) -> Result<()> {
        kvs.array(K_MERGES, strings(self.merges.iter().cloned()));
        for (typ, id) in &self.ids.0 {
            let key = match typ.as_str() {
                "bos" => "tokenizer.ggml.bos_token_id",
                "eos" => "tokenizer.ggml.eos_token_id",
                "unk" => "tokenizer.ggml.unknown_token_id",
                "sep" => "tokenizer.ggml.seperator_token_id",
                "pad" => "tokenizer.ggml.padding_token_id",
                "mask" => "tokenizer.ggml.mask_token_id",
                "eot" => "tokenizer.ggml.eot_token_id",
                "eom" => "tokenizer.ggml.eom_token_id",
                _ => continue, // no gguf writer handler (cls, prefix, …): skipped
            };
            let id =
                u32::try_from(*id).map_err(|_| unsupported(dir, format!("{typ} token id {id} does not fit u32")))?;
            kvs.set(key, Value::U32(id));
        }
        for (typ, v) in &self.add_special.0 {
            let key = match typ.as_str() {
                "bos" => K_ADD_BOS,
                "eos" => "tokenizer.ggml.add_eos_token",
                "sep" => "tokenizer.ggml.add_sep_token",
                _ => continue,
            };
            kvs.set(key, Value::Bool(*v));
        }
        match &self.chat_template {
            None => {}
            Some(ChatTemplate::One(s)) => kvs.string(K_CHAT_TEMPLATE, s),
            Some(ChatTemplate::Many(list)) => {
                let mut default = None;
                let mut names: Vec<String> = Vec::new();
                for choice in list {
                    let name: String = choice
                        .get("name")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect();
                    let template = choice.get("template").filter(|t| !t.is_null());
                    if let (false, Some(t)) = (name.is_empty(), template) {
                        let t = t
                            .as_str()
                            .ok_or_else(|| unsupported(dir, "chat template is not a string"))?;
                        if name == "default" {
                            default = Some(t.to_owned());
                        } else {
                            // gguf-py collects the names in a Python set: its order varies
                            // from run to run; file order here.
                            if !names.contains(&name) {
                                names.push(name.clone());
                            }
                            kvs.string(&format!("tokenizer.chat_template.{name}"), t);
                        }
                    }
                }
                kvs.array("tokenizer.chat_templates", strings(names));
                if let Some(d) = default {
                    kvs.string(K_CHAT_TEMPLATE, &d);
                }
            }
        }
        if let Some(v) = self.lowercase {
            kvs.set("tokenizer.ggml.normalizer.lowercase", Value::Bool(v));
        }
        if let Some(v) = self.strip_accents {
            kvs.set("tokenizer.ggml.normalizer.strip_accents", Value::Bool(v));
        }
        Ok(())
    }
}

/// `x[0]` for the Roberta `cls`/`sep` pairs (`["<s>", 0]`).
fn py_index0(v: &Json) -> Option<Json> {
    match v {
        Json::Array(a) => a.first().cloned(),
        Json::String(s) => s.chars().next().map(|c| Json::String(c.to_string())),
        _ => None,
    }
}

/// tokenizer.json merges: strings as they are, or `[a, b]` pairs joined with a space (a space
/// inside a part written as U+0120, as gguf-py does).
fn convert_merges(merges: &[Json]) -> Option<Vec<String>> {
    match merges.first()? {
        Json::String(_) => merges.iter().map(|m| m.as_str().map(str::to_owned)).collect(),
        Json::Array(p) if p.len() == 2 && p[0].is_string() => merges
            .iter()
            .map(|pair| {
                let parts: Option<Vec<String>> = pair
                    .as_array()?
                    .iter()
                    .map(|s| s.as_str().map(|s| s.replace(' ', "\u{120}")))
                    .collect();
                Some(parts?.join(" "))
            })
            .collect(),
        _ => None,
    }
}

/// `chat_template.jinja` (with `additional_chat_templates/*.jinja` as a named list) or
/// `chat_template.json`'s `chat_template`.
fn chat_template_files(dir: &Path) -> Result<Option<Json>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let main = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
        let extra_dir = dir.join("additional_chat_templates");
        let mut extra: Vec<PathBuf> = match std::fs::read_dir(&extra_dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
                .collect(),
            Err(_) => Vec::new(),
        };
        if extra.is_empty() {
            return Ok(Some(Json::String(main)));
        }
        // Python's glob order is the directory's; sorted here.
        extra.sort();
        let mut list = vec![serde_json::json!({"name": "default", "template": main})];
        for p in extra {
            let t = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            list.push(serde_json::json!({"name": stem, "template": t}));
        }
        return Ok(Some(Json::Array(list)));
    }
    let json = dir.join("chat_template.json");
    match read_json(&json)? {
        Some(Json::Object(m)) => Ok(m.get("chat_template").cloned()),
        Some(_) => Err(Error::json(&json, "not a JSON object")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf_vocab");

    /// The BPE tokenizers built from the parsed JSON are the `tokenizers` crate's own: the same
    /// vocabulary, added tokens and encodings (the check text, special tokens, odd text) for
    /// every tokenizer.json among the fixtures (Llama-3, Qwen2, the small BPE, a Llama-2 one).
    #[test]
    fn bpe_tokenizers_built_from_json_equal_the_crates_own() -> std::result::Result<(), tokenizers::Error> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let files = [
            "gguf_models/llama3_bpe/base_bf16/tokenizer.json",
            "gguf_models/qwen2/base_bf16/tokenizer.json",
            "gguf_vocab/bpe/tokenizer.json",
            "llama/base_bf16/tokenizer.json",
        ];
        let mut direct_built = 0;
        for f in files {
            let text = std::fs::read_to_string(root.join(f))?;
            let j: Json = serde_json::from_str(&text)?;
            let theirs: tokenizers::Tokenizer = serde_json::from_str(&text)?;
            let Some(ours) = bpe_tokenizer(&j) else {
                continue;
            };
            direct_built += 1;
            let ours = ours?;
            assert_eq!(ours.get_vocab(true), theirs.get_vocab(true), "{f}");
            assert_eq!(ours.get_added_tokens_decoder(), theirs.get_added_tokens_decoder(), "{f}");
            let specials: String = theirs.get_added_tokens_decoder().values().map(|t| t.content.clone()).collect();
            for t in [CHKTXT, "Hello  world!\n\tcaf\u{e9} 12345 <|begin_of_text|> x", specials.as_str(), ""] {
                for add in [false, true] {
                    let a = ours.encode(t, add)?;
                    let b = theirs.encode(t, add)?;
                    assert_eq!(a.get_ids(), b.get_ids(), "{f}: {t:?}");
                    assert_eq!(ours.decode(a.get_ids(), false).ok(), theirs.decode(b.get_ids(), false).ok(), "{f}");
                }
            }
        }
        assert!(direct_built >= 3, "only {direct_built} fixtures had a plain BPE model");
        Ok(())
    }

    /// The `tokenizer.*` KVs of a converter output, in order.
    fn reference(gguf: &Path) -> Vec<(String, Value)> {
        let bytes = std::fs::read(gguf).expect("fixture");
        let header = crate::format::gguf::parse(&bytes).expect("parse");
        header
            .kvs
            .into_iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .collect()
    }

    fn assert_same(ours: &[(String, Value)], theirs: &[(String, Value)]) {
        let keys = |v: &[(String, Value)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(ours), keys(theirs), "keys and their order");
        for ((k, a), (_, b)) in ours.iter().zip(theirs) {
            // Bitwise: value types, f32 bits and strings byte for byte.
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{k}");
            assert_eq!(a.type_id(), b.type_id(), "{k}");
            if let (Value::Array(x), Value::Array(y)) = (a, b) {
                assert_eq!(
                    x.first().map(Value::type_id),
                    y.first().map(Value::type_id),
                    "{k} element type"
                );
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    if let (Value::F32(p), Value::F32(q)) = (p, q) {
                        assert_eq!(p.to_bits(), q.to_bits(), "{k}[{i}]");
                    }
                }
            }
        }
    }

    /// The fixture folder for `case` (the shared tokenizer files plus that case's config.json).
    fn case_dir(case: &str) -> (tempfile::TempDir, Json) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = Path::new(FIXTURES).join("spm");
        for e in std::fs::read_dir(&src).expect("fixture dir") {
            let p = e.expect("entry").path();
            std::fs::copy(&p, tmp.path().join(p.file_name().expect("name"))).expect("copy");
        }
        let cfg = Path::new(FIXTURES).join(format!("spm-{case}.config.json"));
        std::fs::copy(&cfg, tmp.path().join("config.json")).expect("copy");
        let config: Json = serde_json::from_slice(&std::fs::read(&cfg).expect("config")).expect("json");
        (tmp, config)
    }

    fn check_spm_case(case: &str, arch: Arch) {
        let (dir, config) = case_dir(case);
        let ours = tokenizer_kvs(dir.path(), arch, &config).expect("tokenizer_kvs");
        let theirs = reference(&Path::new(FIXTURES).join(format!("spm-{case}.gguf")));
        assert_same(&ours, &theirs);
    }

    #[test]
    fn vocab_spm_llama_matches_converter() {
        check_spm_case("llama", Arch::Llama);
    }

    #[test]
    fn vocab_spm_mistral_is_llama() {
        check_spm_case("llama", Arch::Mistral);
    }

    #[test]
    fn vocab_spm_gemma3_matches_converter() {
        check_spm_case("gemma3", Arch::Gemma3);
    }

    #[test]
    fn vocab_spm_phi3_matches_converter() {
        check_spm_case("phi3", Arch::Phi3);
    }

    #[test]
    fn vocab_spm_qwen2_matches_converter() {
        check_spm_case("qwen2", Arch::Qwen2);
    }

    #[test]
    fn vocab_bpe_tiny_matches_converter_with_pinned_pre() {
        let src = Path::new(FIXTURES).join("bpe");
        let config: Json =
            serde_json::from_slice(&std::fs::read(src.join("config.json")).expect("config")).expect("json");
        let ours = tokenizer_kvs_with(&src, Arch::Llama, &config, Some("test-pre")).expect("tokenizer_kvs");
        let theirs = reference(&Path::new(FIXTURES).join("bpe-llama.gguf"));
        assert_same(&ours, &theirs);
        // Without the pin, the made-up tokenizer's hash is refused as the converter refuses it.
        let err = tokenizer_kvs(&src, Arch::Llama, &config).expect_err("unknown pre-tokenizer");
        let msg = err.to_string();
        assert!(matches!(err, Error::Unsupported { .. }), "{msg}");
        assert!(
            msg.contains("BPE pre-tokenizer was not recognized") && msg.contains("chkhsh: "),
            "{msg}"
        );
    }

    #[test]
    fn vocab_pre_table_is_the_converters() {
        assert_eq!(PRE_TABLE.len(), 97);
        assert_eq!(
            pre_name("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"),
            Some("llama-bpe")
        );
        assert_eq!(
            pre_name("e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea"),
            Some("qwen2")
        );
        // Repeated hashes: the later `if` wins.
        assert_eq!(
            pre_name("b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166"),
            Some("olmo")
        );
        assert_eq!(
            pre_name("0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"),
            Some("jina-v2-en")
        );
        assert_eq!(CHKTXT.chars().count(), 350);
        // Python: sha256(str([1, 22, 333]).encode()).hexdigest()
        assert_eq!(
            chkhsh(&[1, 22, 333]),
            "276d8737d9d5a80805e0731e8d5ae18972a8e3ba721f4988f67151c6e9159068"
        );
    }

    #[test]
    fn vocab_sentencepiece_parser_is_strict() {
        // piece "<unk>" type 2, piece "a" score 0.5
        let unk = [&[0x0a, 0x07, 0x0a, 0x05][..], b"<unk>", &[0x18, 0x02]].concat();
        let a = [&[0x0a, 0x01][..], b"a", &[0x15], &0.5f32.to_le_bytes()].concat();
        let wrap = |p: &[u8]| [&[0x0a, p.len() as u8][..], p].concat();
        let model = [wrap(&unk[2..]), wrap(&a)].concat();
        let _ = unk;
        let pieces = parse_sentencepiece(&model).expect("valid");
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].kind, UNKNOWN);
        assert_eq!(pieces[1].score, 0.5);
        assert_eq!(pieces[1].converter_type(), NORMAL);
        // Every truncation is an error, never a panic; so are duplicates and a missing unk.
        for n in 0..model.len() {
            let _ = parse_sentencepiece(&model[..n]);
        }
        assert!(parse_sentencepiece(&[wrap(&a)].concat()).is_err());
        assert!(parse_sentencepiece(&[wrap(&unk[2..]), wrap(&a), wrap(&a)].concat()).is_err());
        assert!(parse_sentencepiece(&[0x0b]).is_err()); // group wire type
        assert!(parse_sentencepiece(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
    }

    #[test]
    fn vocab_sentencepiece_parser_survives_noise() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = parse_sentencepiece(&bytes);
        }
    }

    #[test]
    fn vocab_python_helpers() {
        assert_eq!(py_int_str(" 12 "), Some(12));
        assert_eq!(py_int_str("1_000"), Some(1000));
        assert_eq!(py_int_str("-3"), Some(-3));
        assert_eq!(py_int_str("x"), None);
        assert!(looks_special("<|im_end|>") && looks_special("<unused12>") && !looks_special("<s>"));
        assert_eq!(
            convert_merges(&[serde_json::json!(["a b", "c"])]),
            Some(vec!["a\u{120}b c".to_owned()])
        );
    }
}
