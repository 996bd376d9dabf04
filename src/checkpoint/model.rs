//! A model checkpoint directory: `config.json`, and one safetensors file or shards named by
//! `model.safetensors.index.json`. Maps every shard and indexes every tensor by name.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::mmap::MappedFile;
use crate::error::{Error, Result};
use crate::format::safetensors::{parse_header, Header, TensorInfo};

/// Where a tensor lives: which shard, and its header entry.
#[derive(Debug, Clone)]
pub struct TensorLoc {
    /// Index into [`Checkpoint::shards`].
    pub shard: usize,
    /// The tensor's header entry.
    pub info: TensorInfo,
}

/// One mapped shard and its validated header.
#[derive(Debug)]
pub struct Shard {
    /// The mapped file.
    pub file: MappedFile,
    /// Its header.
    pub header: Header,
}

impl Shard {
    /// Opens and validates a safetensors file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let header = parse_header(path, file.bytes())?;
        Ok(Shard { file, header })
    }

    /// The data bytes of `info` (validated at parse time, so in range).
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        let s = (self.header.data_start + info.offsets.0) as usize;
        let e = (self.header.data_start + info.offsets.1) as usize;
        &self.file.bytes()[s..e]
    }

    /// Absolute file offset of a tensor's first byte.
    pub fn abs_offset(&self, info: &TensorInfo) -> usize {
        (self.header.data_start + info.offsets.0) as usize
    }
}

/// A base model directory, mapped.
#[derive(Debug)]
pub struct Checkpoint {
    /// The directory.
    pub dir: PathBuf,
    /// `config.json`, if present.
    pub config: Option<Value>,
    /// Mapped shards.
    pub shards: Vec<Shard>,
    /// Tensor name → location, in the order the checkpoint lists them (shard, then offset).
    pub tensors: Vec<(String, TensorLoc)>,
    /// Name → index into `tensors`.
    pub by_name: HashMap<String, usize>,
}

/// Reads a JSON file into a [`Value`].
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, e))
}

/// Rejects a `weight_map` file name that would leave the model directory.
fn check_shard_name(index: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let p = Path::new(name);
    let plain = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_))) && !name.contains('\\');
    if !plain {
        return Err(Error::json(
            index,
            format!("weight_map names `{name}`, which is outside the model directory"),
        ));
    }
    let full = dir.join(p);
    if let (Ok(real), Ok(real_dir)) = (full.canonicalize(), dir.canonicalize()) {
        if !real.starts_with(&real_dir) && !in_hf_cache_blobs(&real, &real_dir) {
            return Err(Error::json(
                index,
                format!("weight_map names `{name}`, a symlink that escapes the model directory"),
            ));
        }
    }
    Ok(full)
}

/// The index and single-file names of a weight variant, as transformers' `_add_variant` makes
/// them: `.NAME` before the extension.
pub fn weight_files(variant: Option<&str>) -> (String, String) {
    match variant {
        None => (
            "model.safetensors.index.json".to_string(),
            "model.safetensors".to_string(),
        ),
        Some(v) => (
            format!("model.safetensors.index.{v}.json"),
            format!("model.{v}.safetensors"),
        ),
    }
}

/// The index and single-file paths to read: with `--variant NAME`, that variant's files
/// (`model.safetensors.index.NAME.json`, `model.NAME.safetensors`) when the directory has them;
/// else the default ones (then the variant names only the output files).
fn weight_paths(dir: &Path, variant: Option<&str>) -> (PathBuf, PathBuf) {
    if let Some(v) = variant {
        let (index, single) = weight_files(Some(v));
        let (index, single) = (dir.join(index), dir.join(single));
        if index.is_file() || single.is_file() {
            return (index, single);
        }
    }
    let (index, single) = weight_files(None);
    (dir.join(index), dir.join(single))
}

/// Whether `real` is a blob of the Hugging Face cache repo whose snapshot `dir` is: snapshot
/// files are symlinks `snapshots/<sha>/f -> ../../blobs/<etag>`, which is no escape.
fn in_hf_cache_blobs(real: &Path, dir: &Path) -> bool {
    let Some(repo) = dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
    else {
        return false;
    };
    real.parent() == Some(repo.join("blobs").as_path())
}

impl Checkpoint {
    /// Opens a model directory (single file or sharded), validating every header.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_variant(dir, None)
    }

    /// [`Checkpoint::open`], reading weight variant `variant` (`model.safetensors.index.NAME.json`
    /// or `model.NAME.safetensors`) when the directory holds it.
    pub fn open_variant(dir: &Path, variant: Option<&str>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::NotFound {
                path: dir.to_path_buf(),
            });
        }
        let config_path = dir.join("config.json");
        let config = if config_path.is_file() {
            Some(read_json(&config_path)?)
        } else {
            None
        };
        let (index_path, single) = weight_paths(dir, variant);
        let mut files: Vec<PathBuf> = Vec::new();
        let mut expected: Option<Vec<(String, String)>> = None;
        if index_path.is_file() {
            let index = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| Error::json(&index_path, "missing `weight_map` object"))?;
            let mut pairs = Vec::with_capacity(map.len());
            for (tensor, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| Error::json(&index_path, format!("weight_map[`{tensor}`] is not a string")))?;
                let full = check_shard_name(&index_path, dir, file)?;
                if !files.contains(&full) {
                    files.push(full);
                }
                pairs.push((tensor.clone(), file.to_string()));
            }
            files.sort();
            expected = Some(pairs);
        } else if single.is_file() {
            files.push(single);
        } else {
            let has_bin = ["pytorch_model.bin", "pytorch_model.bin.index.json"]
                .iter()
                .any(|f| dir.join(f).is_file());
            if has_bin {
                return Err(Error::Unsupported {
                    path: dir.to_path_buf(),
                    what: "pickle `.bin` weights: convert to safetensors first".into(),
                });
            }
            return Err(Error::NotFound { path: single });
        }
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = Vec::new();
        let mut by_name = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let shard = Shard::open(f)?;
            for t in &shard.header.tensors {
                if by_name.insert(t.name.clone(), tensors.len()).is_some() {
                    return Err(Error::Safetensors {
                        path: f.clone(),
                        what: crate::error::SafetensorsProblem::Duplicate(t.name.clone()),
                    });
                }
                tensors.push((
                    t.name.clone(),
                    TensorLoc {
                        shard: i,
                        info: t.clone(),
                    },
                ));
            }
            shards.push(shard);
        }
        if let Some(pairs) = expected {
            for (tensor, file) in pairs {
                let ok = by_name
                    .get(&tensor)
                    .map(|&i| shards[tensors[i].1.shard].file.path().file_name() == Path::new(&file).file_name())
                    .unwrap_or(false);
                if !ok {
                    return Err(Error::json(
                        &index_path,
                        format!("weight_map says `{tensor}` is in `{file}`, but that file does not hold it"),
                    ));
                }
            }
        }
        for s in &shards {
            s.file.advise_sequential();
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            shards,
            tensors,
            by_name,
        })
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&TensorLoc> {
        self.by_name.get(name).map(|&i| &self.tensors[i].1)
    }

    /// The data bytes of a located tensor.
    pub fn data(&self, loc: &TensorLoc) -> &[u8] {
        self.shards[loc.shard].data(&loc.info)
    }

    /// The path of the shard holding `loc`.
    pub fn path_of(&self, loc: &TensorLoc) -> &Path {
        self.shards[loc.shard].file.path()
    }

    /// The model's `dtype` (or `torch_dtype`) from `config.json`.
    pub fn config_dtype(&self) -> Option<&str> {
        let c = self.config.as_ref()?;
        c.get("dtype").or_else(|| c.get("torch_dtype")).and_then(Value::as_str)
    }

    /// All input files (for overlap checks and fingerprints).
    pub fn files(&self) -> Vec<PathBuf> {
        self.shards.iter().map(|s| s.file.path().to_path_buf()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_map_may_not_escape() {
        let d = tempfile::tempdir().unwrap();
        let idx = d.path().join("model.safetensors.index.json");
        std::fs::write(&idx, r#"{"weight_map":{"a":"../evil.safetensors"}}"#).unwrap();
        let e = Checkpoint::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("outside the model directory"), "{e}");
        std::fs::write(&idx, r#"{"weight_map":{"a":"/etc/passwd"}}"#).unwrap();
        let e = Checkpoint::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("outside the model directory"), "{e}");
    }

    #[test]
    fn hf_cache_snapshot_symlinks_are_not_an_escape() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("models--me--base");
        let snap = repo.join("snapshots/0123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/etag"), b"x").unwrap();
        std::fs::write(d.path().join("elsewhere"), b"x").unwrap();
        std::os::unix::fs::symlink("../../blobs/etag", snap.join("a.safetensors")).unwrap();
        std::os::unix::fs::symlink("../../../elsewhere", snap.join("b.safetensors")).unwrap();
        let idx = snap.join("model.safetensors.index.json");
        assert!(check_shard_name(&idx, &snap, "a.safetensors").is_ok());
        let e = check_shard_name(&idx, &snap, "b.safetensors").unwrap_err();
        assert!(e.to_string().contains("escapes"), "{e}");
    }

    #[test]
    fn pickle_only_dirs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("pytorch_model.bin"), b"x").unwrap();
        let e = Checkpoint::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("convert to safetensors"), "{e}");
    }
}

#[cfg(test)]
mod variant_tests {
    use super::*;

    /// `--variant NAME` reads that variant's files when the directory also holds the default
    /// ones, and the default ones when it lacks the variant.
    #[test]
    fn a_variant_is_read_when_present() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/base_bf16");
        let d = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&fixture).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.path().join(e.file_name())).unwrap();
        }
        std::fs::copy(
            fixture.join("model-00003-of-00003.safetensors"),
            d.path().join("model.v2.safetensors"),
        )
        .unwrap();
        let names = |c: &Checkpoint| -> Vec<String> {
            c.files()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
                .collect()
        };
        let v2 = Checkpoint::open_variant(d.path(), Some("v2")).unwrap();
        assert_eq!(names(&v2), ["model.v2.safetensors"]);
        let default = Checkpoint::open_variant(d.path(), Some("v3")).unwrap();
        assert_eq!(names(&default).len(), 3);
        assert_eq!(names(&Checkpoint::open(d.path()).unwrap()), names(&default));
    }
}
