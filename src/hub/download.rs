//! Fetches an adapter or a base by repo id into the standard Hugging Face cache and hands back its
//! snapshot directory, which the reader then treats like any local directory.
//!
//! The cache layout is Python's (`models--owner--name/{blobs,refs,snapshots/<sha>}`, files named
//! by ETag, snapshots as symlinks), written by hf-hub, so `huggingface_hub` and we share it. Only
//! what the save needs is fetched: configs, tokenizer files, and the weights (the shards that the
//! index names, or `model.safetensors`; for an adapter `adapter_model.safetensors`). The revision
//! is resolved to a commit first; files already in that snapshot are not fetched again. With
//! `HF_HUB_OFFLINE=1` nothing is asked of the network: the snapshot `refs/<revision>` points at is
//! used, and a missing file is an [`Error::HubOffline`] naming it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::http::Client;
use super::{protocol, HubConfig, RepoRef};
use crate::error::{Error, Result};
use crate::writer::meta::is_tokenizer_file;

/// The weight index transformers writes.
const INDEX: &str = "model.safetensors.index.json";
/// A single-file checkpoint.
const SINGLE: &str = "model.safetensors";

/// What a save needs from a repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A PEFT adapter: `adapter_config.json`, `adapter_model.safetensors`, tokenizer files, card.
    Adapter,
    /// A base to merge into: configs, tokenizer files and every safetensors shard.
    Base,
    /// A base only for its tokenizer files and configs (a `lora` save).
    Tokenizer,
}

/// Makes sure what `need` asks for is in the cache and returns the snapshot directory.
pub fn fetch(cfg: &HubConfig, repo: &RepoRef, need: Need) -> Result<PathBuf> {
    if cfg.offline {
        return fetch_offline(cfg, repo, need);
    }
    let client = Client::new(cfg, &repo.id);
    let info = protocol::repo_info(&client, repo)?;
    let names: BTreeSet<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|n| !n.contains('/'))
        .collect();
    let snapshot = repo_cache_dir(cfg, &repo.id).join("snapshots").join(&info.sha);
    let api = ApiBuilder::from_cache(Cache::new(cfg.cache_dir.clone()))
        .with_endpoint(cfg.endpoint.clone())
        .with_token(cfg.token.as_ref().map(|t| t.0.clone()))
        .with_progress(cfg.progress)
        .with_retries(4)
        .build()
        .map_err(|e| download_error(repo, "(client)", e))?;
    // Ask for the commit, not the branch, so every file comes from one snapshot even if the
    // branch moves meanwhile; the ref itself is written below, as Python writes it.
    let at_commit = api.repo(Repo::with_revision(repo.id.clone(), RepoType::Model, info.sha.clone()));
    let get = |file: &str| -> Result<()> {
        if snapshot.join(file).is_file() {
            return Ok(());
        }
        let p = at_commit.download(file).map_err(|e| download_error(repo, file, e))?;
        if p.parent() != Some(snapshot.as_path()) {
            return Err(client.protocol(
                "download",
                format!("`{file}` landed in {}, expected {}", p.display(), snapshot.display()),
            ));
        }
        Ok(())
    };
    for f in small_files(need, &names) {
        get(f)?;
    }
    match need {
        Need::Adapter => {
            if !names.contains("adapter_model.safetensors") {
                return Err(no_weights(repo, "adapter_model.safetensors", &names));
            }
            get("adapter_model.safetensors")?;
        }
        Need::Base => {
            if names.contains(INDEX) {
                get(INDEX)?;
                for shard in index_shards(&snapshot.join(INDEX))? {
                    if !names.contains(shard.as_str()) {
                        return Err(
                            client.protocol("download", format!("{INDEX} names `{shard}`, which the repo lacks"))
                        );
                    }
                    get(&shard)?;
                }
            } else if names.contains(SINGLE) {
                get(SINGLE)?;
            } else {
                return Err(no_weights(repo, SINGLE, &names));
            }
        }
        Need::Tokenizer => {}
    }
    write_ref(cfg, repo, &info.sha)?;
    Ok(snapshot)
}

/// `HF_HUB_OFFLINE=1`: the snapshot the ref points at, if everything needed is there.
fn fetch_offline(cfg: &HubConfig, repo: &RepoRef, need: Need) -> Result<PathBuf> {
    let dir = repo_cache_dir(cfg, &repo.id);
    let missing = |file: String| Error::HubOffline {
        repo: repo.id.clone(),
        file,
        cache: cfg.cache_dir.clone(),
    };
    let sha = if is_commit(&repo.revision) {
        repo.revision.clone()
    } else {
        let r = dir.join("refs").join(&repo.revision);
        std::fs::read_to_string(&r)
            .map_err(|_| missing(format!("refs/{}", repo.revision)))?
            .trim()
            .to_string()
    };
    let snapshot = dir.join("snapshots").join(&sha);
    let need_file = |f: &str| -> Result<()> {
        if snapshot.join(f).is_file() {
            Ok(())
        } else {
            Err(missing(f.to_string()))
        }
    };
    match need {
        Need::Adapter => {
            need_file("adapter_config.json")?;
            need_file("adapter_model.safetensors")?;
        }
        Need::Base if snapshot.join(INDEX).is_file() => {
            for shard in index_shards(&snapshot.join(INDEX))? {
                need_file(&shard)?;
            }
        }
        Need::Base => need_file(SINGLE)?,
        Need::Tokenizer => {
            if !snapshot.is_dir() {
                return Err(missing(String::new()));
            }
        }
    }
    Ok(snapshot)
}

/// The small files worth having for `need`: JSON configs, tokenizer files, the adapter's card.
fn small_files<'a>(need: Need, names: &BTreeSet<&'a str>) -> Vec<&'a str> {
    names
        .iter()
        .copied()
        .filter(|n| {
            let json = n.ends_with(".json") && *n != INDEX;
            let tok = is_tokenizer_file(n);
            match need {
                Need::Adapter => json || tok || *n == "README.md",
                Need::Base => json || tok,
                Need::Tokenizer => tok || matches!(*n, "config.json" | "generation_config.json"),
            }
        })
        .collect()
}

/// The distinct shard names of an index, in order.
fn index_shards(index: &Path) -> Result<Vec<String>> {
    let v = crate::checkpoint::model::read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::json(index, "no `weight_map` object"))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for f in map.values() {
        let f = f
            .as_str()
            .ok_or_else(|| Error::json(index, "a `weight_map` value is not a string"))?;
        if seen.insert(f) {
            out.push(f.to_string());
        }
    }
    Ok(out)
}

/// `<cache>/models--owner--name`.
pub fn repo_cache_dir(cfg: &HubConfig, id: &str) -> PathBuf {
    cfg.cache_dir.join(format!("models--{}", id.replace('/', "--")))
}

/// Writes `refs/<revision>` = `sha` (Python writes it only for a name, not for a commit).
fn write_ref(cfg: &HubConfig, repo: &RepoRef, sha: &str) -> Result<()> {
    let dir = repo_cache_dir(cfg, &repo.id).join("refs");
    // hf-hub wrote a ref named after the commit we asked for; Python has none such.
    let _ = std::fs::remove_file(dir.join(sha));
    if is_commit(&repo.revision) {
        return Ok(());
    }
    let r = dir.join(&repo.revision);
    if let Some(parent) = r.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(&r, sha).map_err(|e| Error::io(&r, e))
}

/// A full commit id.
fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

fn download_error(repo: &RepoRef, file: &str, e: hf_hub::api::sync::ApiError) -> Error {
    Error::HubDownload {
        repo: repo.id.clone(),
        file: file.to_string(),
        source: Box::new(e),
    }
}

fn no_weights(repo: &RepoRef, want: &str, names: &BTreeSet<&str>) -> Error {
    let pickle = names.iter().any(|n| n.ends_with(".bin"));
    Error::Unsupported {
        path: PathBuf::from(&repo.id),
        what: format!(
            "the repo has no `{want}`{}",
            if pickle {
                " (only pickle .bin weights, which are refused)"
            } else {
                ""
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_only_what_the_save_needs() {
        let names: BTreeSet<&str> = [
            "config.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "README.md",
            "pytorch_model.bin",
            "generation_config.json",
            "adapter_config.json",
        ]
        .into_iter()
        .collect();
        assert_eq!(
            small_files(Need::Base, &names),
            vec![
                "adapter_config.json",
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );
        assert_eq!(
            small_files(Need::Tokenizer, &names),
            vec![
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );
        assert!(small_files(Need::Adapter, &names).contains(&"README.md"));
    }

    #[test]
    fn a_failed_file_download_names_the_repo_and_file() {
        use super::super::fake::{ok, serve};
        let sha = "b".repeat(40);
        // The revision lists a file whose resolve answers without the headers hf-hub needs.
        let url = serve(vec![
            (
                "/api/models/me/base/revision/main",
                ok(
                    &format!(
                        r#"{{"sha":"{sha}","siblings":[{{"rfilename":"config.json"}},{{"rfilename":"model.safetensors"}}]}}"#
                    ),
                    "",
                ),
            ),
            ("/me/base/resolve/", ok("{}", "")),
        ]);
        let d = tempfile::tempdir().unwrap();
        let cfg = HubConfig {
            endpoint: url,
            cache_dir: d.path().to_path_buf(),
            token: None,
            offline: false,
            progress: false,
            tries: 1,
        };
        let e = fetch(&cfg, &RepoRef::parse("me/base").unwrap(), Need::Base).unwrap_err();
        assert!(
            matches!(&e, Error::HubDownload { file, .. } if file == "config.json"),
            "{e}"
        );
        assert_eq!(e.to_string(), "hub repo `me/base`: downloading `config.json`");
    }

    #[test]
    fn offline_names_the_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let cfg = HubConfig {
            endpoint: "http://127.0.0.1:9".into(),
            cache_dir: d.path().to_path_buf(),
            token: None,
            offline: true,
            progress: false,
            tries: 1,
        };
        let repo = RepoRef::parse("me/base").unwrap();
        let e = fetch(&cfg, &repo, Need::Base).unwrap_err();
        assert!(
            matches!(&e, Error::HubOffline { file, .. } if file == "refs/main"),
            "{e}"
        );
        let sha = "a".repeat(40);
        let snap = d.path().join("models--me--base/snapshots").join(&sha);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(d.path().join("models--me--base/refs")).unwrap();
        std::fs::write(d.path().join("models--me--base/refs/main"), &sha).unwrap();
        let e = fetch(&cfg, &repo, Need::Base).unwrap_err();
        assert!(
            matches!(&e, Error::HubOffline { file, .. } if file == "model.safetensors"),
            "{e}"
        );
        std::fs::write(snap.join("model.safetensors"), b"x").unwrap();
        assert_eq!(fetch(&cfg, &repo, Need::Base).unwrap(), snap);
    }
}
