//! Crash-safe, resumable output: the run's fingerprint and the manifest of shards.
//!
//! The manifest (`loraweld-manifest.json`) records, per run, every input's fingerprint (size,
//! mtime and a blake3 of its safetensors header or JSON bytes) and the options that change the
//! output; per shard, the blake3 of its planned header, its size and blake3, and a done flag.
//! It is rewritten (atomically) after every shard, in the staging directory. A run that finds
//! the staging directory of an earlier run with the same fingerprint keeps the shards whose
//! header and bytes still verify and writes only the others; the result is byte-identical to an
//! uninterrupted run because every byte is a function of the inputs and options. A finished
//! `OUT` whose manifest has the same fingerprint is up to date: the run does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::shard::ShardResult;
use crate::checkpoint::mmap::MappedFile;
use crate::error::{Error, Result};
use crate::format::pyjson::dumps_indent2;
use super::output::PlannedFile;

/// The manifest's file name.
pub const MANIFEST: &str = "loraweld-manifest.json";

/// What makes two runs produce the same bytes.
#[derive(Debug, Clone)]
pub struct RunKey {
    /// blake3 over everything below.
    pub key: String,
    /// Per input: path, size, mtime, content fingerprint.
    pub inputs: Vec<Value>,
    /// The output-changing options.
    pub options: Value,
}

fn file_print(path: &Path) -> Result<Value> {
    let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Safetensors: the header (8-byte length + JSON); JSON files: the whole text.
    let head = if path.extension().is_some_and(|e| e == "safetensors") {
        let m = MappedFile::open(path)?;
        let b = m.bytes();
        let n = b
            .get(..8)
            .and_then(|x| x.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0) as usize;
        blake3::hash(b.get(..8 + n).unwrap_or(b)).to_hex().to_string()
    } else {
        blake3::hash(&std::fs::read(path).map_err(|e| Error::io(path, e))?)
            .to_hex()
            .to_string()
    };
    Ok(json!({"path": path.display().to_string(), "size": md.len(), "mtime_ns": mtime, "header_blake3": head}))
}

impl RunKey {
    /// Fingerprints the inputs and options.
    pub fn new(inputs: &[PathBuf], options: Value) -> Result<Self> {
        let prints = inputs.iter().map(|p| file_print(p)).collect::<Result<Vec<_>>>()?;
        let mut h = blake3::Hasher::new();
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(options.to_string().as_bytes());
        for p in &prints {
            h.update(p.to_string().as_bytes());
        }
        Ok(RunKey {
            key: h.finalize().to_hex().to_string(),
            inputs: prints,
            options,
        })
    }
}

/// The manifest for `plan` in `dir`, with `done` shards (by file name) marked finished.
pub fn manifest(run: &RunKey, files: &[PlannedFile], done: &BTreeMap<String, ShardResult>, dir: &Path) -> String {
    dumps_indent2(&manifest_value(run, files, done, dir), false) + "\n"
}

/// The manifest of a finished save: also every file in the directory (the manifest itself
/// included), which is what lets a later `--force` know the directory is ours to replace, and
/// the run's report, which an up-to-date re-run hands back.
pub fn final_manifest(
    run: &RunKey,
    planned: &[PlannedFile],
    done: &BTreeMap<String, ShardResult>,
    dir: &Path,
    files: &[String],
    report: Value,
) -> String {
    let mut v = manifest_value(run, planned, done, dir);
    let mut all: Vec<String> = files.to_vec();
    all.extend(planned.iter().map(|s| s.file_name.clone()));
    all.push(MANIFEST.to_string());
    all.sort();
    all.dedup();
    if let Value::Object(m) = &mut v {
        m.insert("files".into(), json!(all));
        m.insert("report".into(), report);
    }
    dumps_indent2(&v, false) + "\n"
}

/// A file's modification time in nanoseconds: with its size, what tells a kept shard is the one
/// this run finished (any rewrite changes it) without reading it back.
fn mtime_ns(path: &Path) -> Option<u64> {
    let md = std::fs::metadata(path).ok()?;
    let t = md.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(t.as_nanos()).ok()
}

fn manifest_value(run: &RunKey, files: &[PlannedFile], done: &BTreeMap<String, ShardResult>, dir: &Path) -> Value {
    let shards: Vec<Value> = files
        .iter()
        .map(|s| {
            let d = done.get(&s.file_name);
            json!({
                "file": s.file_name,
                "header_blake3": blake3::hash(&s.head).to_hex().to_string(),
                "bytes": s.file_len,
                "blake3": d.map(|r| r.blake3.clone()),
                "mtime_ns": d.and_then(|_| mtime_ns(&dir.join(&s.file_name))),
                "done": d.is_some(),
            })
        })
        .collect();
    json!({
        "loraweld_version": env!("CARGO_PKG_VERSION"),
        "run_key": run.key,
        "options": run.options,
        "inputs": run.inputs,
        "shards": shards,
    })
}

/// Writes the manifest atomically (temp file + rename) into `dir`.
pub fn write_manifest(dir: &Path, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{MANIFEST}.tmp"));
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    let to = dir.join(MANIFEST);
    std::fs::rename(&tmp, &to).map_err(|e| Error::io(&to, e))
}

fn read_manifest(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    serde_json::from_str(&text).ok()
}

/// A finished save found up to date: its shards, its other files and the report it recorded.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Every shard, in plan order.
    pub shards: Vec<ShardResult>,
    /// The other files (config, tokenizer, card, index, manifest).
    pub files: Vec<String>,
    /// What the run that wrote it reported (backend, stage times, seconds); `Null` if absent.
    pub report: Value,
}

/// Whether `out` holds a finished save of exactly this run (same fingerprint, every shard done
/// and present with its size).
pub fn up_to_date(out: &Path, run: &RunKey) -> Option<Finished> {
    let m = read_manifest(out)?;
    if m.get("run_key")?.as_str()? != run.key {
        return None;
    }
    let mut results = Vec::new();
    for s in m.get("shards")?.as_array()? {
        let file = s.get("file")?.as_str()?;
        let bytes = s.get("bytes")?.as_u64()?;
        if !s.get("done")?.as_bool()? || std::fs::metadata(out.join(file)).ok()?.len() != bytes {
            return None;
        }
        results.push(ShardResult {
            file: file.to_string(),
            bytes,
            blake3: s.get("blake3")?.as_str()?.to_string(),
            sha256: None,
            cloned_bytes: 0,
        });
    }
    let files = m
        .get("files")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|f| !results.iter().any(|r| r.file == *f))
        .map(str::to_string)
        .collect();
    Some(Finished {
        shards: results,
        files,
        report: m.get("report").cloned().unwrap_or(Value::Null),
    })
}

/// Whether the file at `path` begins with `head`.
fn starts_with(path: &Path, head: &[u8]) -> bool {
    use std::io::Read;
    let mut got = vec![0u8; head.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut got))
        .is_ok_and(|_| got == head)
}

/// Shards of an interrupted run in `staging` that can be kept: same fingerprint, same planned
/// header, and a file whose size and mtime are those recorded when it was finished (and which
/// starts with the planned header), or else whose size and blake3 match the manifest. Everything else in `staging`
/// is removed. Returns one entry per planned shard.
pub fn reusable(staging: &Path, run: &RunKey, files: &[PlannedFile]) -> Result<Vec<Option<ShardResult>>> {
    let mut keep: Vec<Option<ShardResult>> = vec![None; files.len()];
    let m = read_manifest(staging);
    let same_run = m.as_ref().and_then(|m| m.get("run_key")).and_then(Value::as_str) == Some(run.key.as_str());
    if same_run {
        let entries: BTreeMap<String, &Value> = m
            .as_ref()
            .and_then(|m| m.get("shards"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s.get("file")?.as_str()?.to_string(), s)))
            .collect();
        for (i, s) in files.iter().enumerate() {
            let Some(e) = entries.get(&s.file_name) else { continue };
            let header = blake3::hash(&s.head).to_hex().to_string();
            let ok_entry = e.get("done").and_then(Value::as_bool) == Some(true)
                && e.get("header_blake3").and_then(Value::as_str) == Some(header.as_str())
                && e.get("bytes").and_then(Value::as_u64) == Some(s.file_len);
            let Some(want) = e.get("blake3").and_then(Value::as_str).filter(|_| ok_entry) else {
                continue;
            };
            let path = staging.join(&s.file_name);
            // The shard was synced before it was marked done, and its size and mtime were
            // recorded then: unchanged, with the planned header in place, it is that file, and
            // is not read back (it was written with O_DIRECT, so reading it would come from the
            // disk, and made resuming slower than starting afresh). Otherwise: hash it all.
            let recorded = e.get("mtime_ns").and_then(Value::as_u64);
            let unchanged = recorded.is_some()
                && recorded == mtime_ns(&path)
                && std::fs::metadata(&path).is_ok_and(|m| m.len() == s.file_len)
                && starts_with(&path, &s.head);
            let verified = unchanged || {
                let Ok(mf) = MappedFile::open(&path) else { continue };
                mf.bytes().len() as u64 == s.file_len && blake3::hash(mf.bytes()).to_hex().as_str() == want
            };
            if verified {
                keep[i] = Some(ShardResult {
                    file: s.file_name.clone(),
                    bytes: s.file_len,
                    blake3: want.to_string(),
                    sha256: None,
                    cloned_bytes: 0,
                });
            }
        }
    }
    // Remove whatever is not kept: partial shards, other runs' files, old metadata.
    let kept: Vec<&str> = keep.iter().flatten().map(|r| r.file.as_str()).collect();
    for e in std::fs::read_dir(staging).map_err(|e| Error::io(staging, e))? {
        let e = e.map_err(|e| Error::io(staging, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if kept.contains(&name.as_str()) || name == ".lock" {
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|err| Error::io(&p, err))?;
    }
    Ok(keep)
}
