//! `loraweld verify DIR`: re-hashes every shard against the manifest, validates every header,
//! and checks the index against the files. Reads; never writes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::checkpoint::mmap::MappedFile;
use crate::error::{Error, Result};
use crate::format::safetensors::parse_header;

use crate::writer::resume::MANIFEST;

/// One checked file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileCheck {
    /// File name.
    pub file: String,
    /// Bytes on disk.
    pub bytes: u64,
    /// blake3 of the file.
    pub blake3: String,
    /// Whether it matched the manifest (None without a manifest entry).
    pub matches_manifest: Option<bool>,
}

/// What `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// The directory.
    pub dir: PathBuf,
    /// Every problem, one line each; empty means the directory is sound.
    pub problems: Vec<String>,
    /// Weight files checked.
    pub files: Vec<FileCheck>,
    /// Tensors in all headers.
    pub tensors: usize,
    /// Whether a manifest was there to check hashes against.
    pub had_manifest: bool,
}

impl VerifyReport {
    /// No problems.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies a saved model or adapter directory.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    if !dir.is_dir() {
        return Err(Error::NotFound {
            path: dir.to_path_buf(),
        });
    }
    let mut problems = Vec::new();
    let (manifest, expected) = manifest_entries(dir, &mut problems)?;
    let found = check_files(dir, &expected, &mut problems)?;
    check_indexes(dir, &found, &mut problems)?;
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        problems,
        files: found.files,
        tensors: found.tensors_in.len() + found.gguf_tensors,
        had_manifest: manifest.is_some(),
    })
}

/// The manifest, if any, and what it says of each shard: size and blake3 by file name.
type Expected = BTreeMap<String, (u64, String)>;

fn manifest_entries(dir: &Path, problems: &mut Vec<String>) -> Result<(Option<Value>, Expected)> {
    let manifest_path = dir.join(MANIFEST);
    let manifest: Option<Value> = if manifest_path.is_file() {
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        Some(serde_json::from_str(&text).map_err(|e| Error::json(&manifest_path, e))?)
    } else {
        None
    };
    let mut expected = Expected::new();
    if let Some(m) = &manifest {
        for s in m.get("shards").and_then(Value::as_array).into_iter().flatten() {
            let (Some(f), Some(b), Some(h)) = (
                s.get("file").and_then(Value::as_str),
                s.get("bytes").and_then(Value::as_u64),
                s.get("blake3").and_then(Value::as_str),
            ) else {
                problems.push(format!("{}: malformed shard entry {s}", manifest_path.display()));
                continue;
            };
            if s.get("done").and_then(Value::as_bool) == Some(false) {
                problems.push(format!("{f}: not finished (manifest says done: false)"));
            }
            expected.insert(f.to_string(), (b, h.to_string()));
        }
    }
    Ok((manifest, expected))
}

/// What the weight files hold.
struct Found {
    files: Vec<FileCheck>,
    /// Each tensor's file.
    tensors_in: BTreeMap<String, String>,
    /// Bytes of tensor data in all files.
    data_bytes: u64,
    /// Tensors in GGUF files (each a whole model, so not keyed by name across files).
    gguf_tensors: usize,
}

/// Hashes every `.safetensors` file against the manifest and checks its header.
fn check_files(dir: &Path, expected: &Expected, problems: &mut Vec<String>) -> Result<Found> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".safetensors") || n.ends_with(".gguf"))
        .collect();
    names.sort();
    if names.is_empty() {
        problems.push(format!("{}: no .safetensors or .gguf files", dir.display()));
    }
    let mut found = Found {
        files: Vec::new(),
        tensors_in: BTreeMap::new(),
        data_bytes: 0,
        gguf_tensors: 0,
    };
    for n in &names {
        let p = dir.join(n);
        let m = MappedFile::open(&p)?;
        let bytes = m.bytes().len() as u64;
        let hash = blake3::hash(m.bytes()).to_hex().to_string();
        let matches = expected.get(n).map(|(b, h)| *b == bytes && *h == hash);
        if matches == Some(false) {
            problems.push(format!("{n}: blake3 or size differs from the manifest"));
        }
        if n.ends_with(".gguf") {
            check_gguf(n, m.bytes(), &mut found, problems);
        } else {
            match parse_header(&p, m.bytes()) {
                Ok(h) => {
                    for t in &h.tensors {
                        found.data_bytes += t.nbytes();
                        if found.tensors_in.insert(t.name.clone(), n.clone()).is_some() {
                            problems.push(format!("{n}: tensor `{}` also appears in another file", t.name));
                        }
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        found.files.push(FileCheck {
            file: n.clone(),
            bytes,
            blake3: hash,
            matches_manifest: matches,
        });
    }
    for f in expected.keys() {
        if !names.contains(f) {
            problems.push(format!("{f}: listed in the manifest but missing"));
        }
    }
    Ok(found)
}

/// A GGUF file: its header parses, every tensor's bytes lie inside the file at aligned offsets
/// without overlapping, and the file ends where its last tensor's padding does. (Each GGUF is a
/// whole model, so its tensors are not counted against the other files'.)
fn check_gguf(n: &str, bytes: &[u8], found: &mut Found, problems: &mut Vec<String>) {
    use crate::format::gguf;
    let h = match gguf::parse(bytes) {
        Ok(h) => h,
        Err(e) => {
            problems.push(format!("{n}: invalid GGUF: {e}"));
            return;
        }
    };
    let mut end = h.data_start;
    for (t, off) in &h.tensors {
        let Some(nb) = t.nbytes() else {
            problems.push(format!(
                "{n}: tensor `{}`: rows are not whole {} blocks",
                t.name,
                t.ggml_type.name()
            ));
            continue;
        };
        if *off != end || off % gguf::ALIGNMENT != 0 {
            problems.push(format!("{n}: tensor `{}` at {off}, expected {end}", t.name));
        }
        end = off + nb.next_multiple_of(gguf::ALIGNMENT);
        found.data_bytes += nb;
        found.gguf_tensors += 1;
    }
    if end != bytes.len() as u64 {
        problems.push(format!("{n}: {} bytes, but its tensors end at {end}", bytes.len()));
    }
}

/// The index, when there is one, must name exactly the tensors the files hold.
fn check_indexes(dir: &Path, found: &Found, problems: &mut Vec<String>) -> Result<()> {
    let tensors_in = &found.tensors_in;
    let indexes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().contains(".safetensors.index") && n.to_string_lossy().ends_with(".json"))
                .unwrap_or(false)
        })
        .collect();
    for idx in &indexes {
        let text = std::fs::read_to_string(idx).map_err(|e| Error::io(idx, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::json(idx, e))?;
        let Some(wm) = v.get("weight_map").and_then(Value::as_object) else {
            problems.push(format!("{}: no weight_map", idx.display()));
            continue;
        };
        let listed: BTreeSet<&String> = wm.keys().collect();
        for (t, f) in wm {
            match (f.as_str(), tensors_in.get(t)) {
                (Some(f), Some(actual)) if f == actual => {}
                (Some(f), Some(actual)) => problems.push(format!("index says `{t}` is in {f}, but it is in {actual}")),
                (None, _) => problems.push(format!("index entry for `{t}` is not a file name")),
                (_, None) => problems.push(format!("index lists `{t}`, which no file holds")),
            }
        }
        for t in tensors_in.keys() {
            if !listed.contains(t) {
                problems.push(format!("`{t}` is in {} but not in the index", tensors_in[t]));
            }
        }
        if let Some(ts) = v.pointer("/metadata/total_size").and_then(Value::as_u64) {
            if ts != found.data_bytes {
                problems.push(format!(
                    "index total_size {ts} != {} bytes of tensor data",
                    found.data_bytes
                ));
            }
        }
    }
    Ok(())
}
