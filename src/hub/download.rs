//! Fetches an adapter or a base by repo id into the standard Hugging Face cache and hands back its
//! snapshot directory, which the reader then treats like any local directory.
//!
//! The cache layout is Python's (`models--owner--name/{blobs,refs,snapshots/<sha>}`, files named
//! by ETag, snapshots as relative symlinks, locks in `.locks/`), so `huggingface_hub` and we
//! share it. Only what the save needs is fetched: configs, tokenizer files, and the weights (the
//! shards that the index names, or `model.safetensors`; with a variant, `model.safetensors.index.
//! NAME.json` or `model.NAME.safetensors`; for an adapter `adapter_model.safetensors`). The
//! revision is resolved to a commit first; files already in that snapshot are not fetched again.
//! With `HF_HUB_OFFLINE=1` nothing is asked of the network: the snapshot `refs/<revision>` points
//! at is used, and a missing file is an [`Error::HubOffline`] naming it.
//!
//! Each file is `GET {endpoint}/{repo}/resolve/{commit}/{file}` with the token and without
//! automatic redirects: the ETag (`X-Linked-Etag`, else `ETag`), the size and the commit come
//! from the Hub's answer, and a redirect (LFS files go to a storage origin) is followed here,
//! with the token only while the URL stays on the endpoint's origin, as `huggingface_hub` (through
//! `requests`) does. The body streams into `blobs/<etag>.incomplete` (resumed with `Range` when
//! one is left from an interrupted run), is checked against the announced size, synced and
//! renamed.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::http::{HeaderMap, Response};
use ureq::Body;

use super::http::{resolve_location, same_origin, strip_query, Client};
use super::config::{encode_segment, HubConfig, RepoRef};
use super::protocol;
use crate::checkpoint::model::weight_files;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::writer::meta::is_tokenizer_file;

/// The weight index transformers writes.
const INDEX: &str = "model.safetensors.index.json";
/// Redirects followed per file (the Hub needs one; renamed repos add one).
const MAX_REDIRECTS: usize = 10;

/// What a save needs from a repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// A PEFT adapter: `adapter_config.json`, `adapter_model.safetensors`, tokenizer files, card.
    Adapter,
    /// A base to merge into: configs, tokenizer files and every safetensors shard; of the
    /// weight-file variant when one is given (`--variant`).
    Base(Option<&'a str>),
    /// A base only for its tokenizer files and configs (a `lora` save).
    Tokenizer,
}

/// Whether `name` is a weight index, of any variant (fetched only when it is the one needed:
/// another variant's index would make the snapshot's weights ambiguous).
fn is_weight_index(name: &str) -> bool {
    name == INDEX || (name.starts_with("model.safetensors.index.") && name.ends_with(".json"))
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
    // Every file comes from the commit, not the branch, so all of them are from one snapshot
    // even if the branch moves meanwhile; the ref itself is written below, as Python writes it.
    let dl = Downloader {
        cfg,
        client: &client,
        repo,
        sha: &info.sha,
        snapshot: &snapshot,
    };
    for f in small_files(need, &names) {
        dl.get(f)?;
    }
    match need {
        Need::Adapter => {
            if !names.contains("adapter_model.safetensors") {
                return Err(no_weights(repo, "adapter_model.safetensors", &names));
            }
            dl.get("adapter_model.safetensors")?;
        }
        Need::Base(variant) => {
            let (index, single) = weight_files(variant);
            if names.contains(index.as_str()) {
                dl.get(&index)?;
                for shard in index_shards(&snapshot.join(&index))? {
                    if !names.contains(shard.as_str()) {
                        return Err(
                            client.protocol("download", format!("{index} names `{shard}`, which the repo lacks"))
                        );
                    }
                    dl.get(&shard)?;
                }
            } else if names.contains(single.as_str()) {
                dl.get(&single)?;
            } else {
                return Err(no_weights(repo, &single, &names));
            }
        }
        Need::Tokenizer => {}
    }
    write_ref(cfg, repo, &info.sha)?;
    Ok(snapshot)
}

/// Downloads files of one commit into the cache.
struct Downloader<'a> {
    cfg: &'a HubConfig,
    client: &'a Client,
    repo: &'a RepoRef,
    sha: &'a str,
    snapshot: &'a Path,
}

/// Why one try at a file stopped: worth another try (the connection broke mid-body; the
/// `.incomplete` file keeps what came) or not.
enum Stop {
    Again(Error),
    Fail(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Fail(e)
    }
}

/// What the Hub's answer says about a file.
#[derive(Debug, Default)]
struct Meta {
    etag: Option<String>,
    commit: Option<String>,
    size: Option<u64>,
}

impl Meta {
    /// Takes what the Hub's headers say (`X-Linked-*` for LFS files, then the plain ones).
    fn update(&mut self, h: &HeaderMap) {
        let get = |k: &str| {
            h.get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        if let Some(e) = get("x-linked-etag").or_else(|| get("etag")) {
            self.etag = Some(normalize_etag(e));
        }
        if let Some(c) = get("x-repo-commit") {
            self.commit = Some(c.to_string());
        }
        if let Some(n) = get("x-linked-size").and_then(|v| v.parse().ok()) {
            self.size = Some(n);
        }
    }
}

/// `W/"abc"` → `abc`, as `huggingface_hub._normalize_etag`.
fn normalize_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// An ETag names a file in `blobs/`: it may not leave that folder.
fn safe_etag(e: &str) -> bool {
    !e.is_empty()
        && !e.starts_with('.')
        && e.len() <= 255
        && e.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.+=".contains(&b))
}

impl Downloader<'_> {
    /// Makes sure `file` is in the snapshot, retrying a transfer broken mid-body from where it
    /// stopped.
    fn get(&self, file: &str) -> Result<()> {
        if self.snapshot.join(file).is_file() {
            return Ok(());
        }
        let failed = |e: Error| Error::HubDownload {
            repo: self.repo.id.clone(),
            file: file.to_string(),
            source: Box::new(e),
        };
        let tries = self.cfg.tries.max(1);
        let mut wait = Duration::from_secs(1);
        for n in 1..=tries {
            match self.try_once(file) {
                Ok(()) => return Ok(()),
                Err(Stop::Again(_)) if n < tries => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(8));
                }
                Err(Stop::Again(e) | Stop::Fail(e)) => return Err(failed(e)),
            }
        }
        unreachable!("the last try returns")
    }

    fn try_once(&self, file: &str) -> std::result::Result<(), Stop> {
        let c = self.client;
        let repo_dir = repo_cache_dir(self.cfg, &self.repo.id);
        let blobs = repo_dir.join("blobs");
        let path: Vec<String> = file.split('/').map(encode_segment).collect();
        let id: Vec<String> = self.repo.id.split('/').map(encode_segment).collect();
        let mut url = format!(
            "{}/{}/resolve/{}/{}",
            c.endpoint,
            id.join("/"),
            self.sha,
            path.join("/")
        );
        let mut meta = Meta::default();
        let mut lock: Option<File> = None;
        let mut from = 0u64;
        let mut hops = 0;
        let r = loop {
            // Once the Hub has named the blob: done if it is there, else resume what is left.
            if let Some(etag) = &meta.etag {
                if !safe_etag(etag) {
                    return Err(c
                        .protocol("download", format!("`{file}`: ETag `{etag}` is not a file name"))
                        .into());
                }
                let blob = blobs.join(etag);
                if lock.is_none() {
                    lock = Some(lock_blob(self.cfg, &self.repo.id, etag)?);
                }
                if blob.is_file() {
                    return self.link(file, etag).map_err(Stop::Fail);
                }
                from = std::fs::metadata(blobs.join(format!("{etag}.incomplete"))).map_or(0, |m| m.len());
                if meta.size.is_some_and(|n| from > n) {
                    from = 0;
                }
                if from > 0 && meta.size == Some(from) {
                    return self.finish(file, etag, from, meta.size);
                }
            }
            let r = c.get_no_redirect("download", &url, (from > 0).then_some(from))?;
            if same_origin(&url, &c.endpoint) {
                meta.update(r.headers());
            }
            if !r.status().is_redirection() {
                break r;
            }
            hops += 1;
            let location = r.headers().get("location").and_then(|v| v.to_str().ok());
            let Some(location) = location.filter(|_| hops <= MAX_REDIRECTS) else {
                return Err(c
                    .protocol(
                        "download",
                        format!("`{file}`: HTTP {} without a usable Location", r.status().as_u16()),
                    )
                    .into());
            };
            url = resolve_location(&url, location);
        };
        let mut r = c.check("download", {
            // A 416 on a resume means the range is past the end: start over.
            if r.status().as_u16() == 416 && from > 0 {
                from = 0;
                c.get_no_redirect("download", &url, None)?
            } else {
                r
            }
        })?;
        if let Some(got) = &meta.commit {
            if got != self.sha {
                return Err(c
                    .protocol(
                        "download",
                        format!("`{file}`: answered for commit {got}, asked for {}", self.sha),
                    )
                    .into());
            }
        }
        let Some(etag) = meta.etag.clone() else {
            return Err(c.protocol("download", format!("`{file}`: no ETag")).into());
        };
        if !safe_etag(&etag) {
            return Err(c
                .protocol("download", format!("`{file}`: ETag `{etag}` is not a file name"))
                .into());
        }
        if lock.is_none() {
            lock = Some(lock_blob(self.cfg, &self.repo.id, &etag)?);
            // Another process may have finished it while we waited for the lock.
            if blobs.join(&etag).is_file() {
                return self.link(file, &etag).map_err(Stop::Fail);
            }
        }
        let start = self.resume_offset(file, &r, from)?;
        let length = r
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let total = meta.size.or(length.map(|n| start + n));
        std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
        let part = blobs.join(format!("{etag}.incomplete"));
        self.stream(&mut r, &part, start, total, file, &url)?;
        let got = std::fs::metadata(&part).map_err(|e| Error::io(&part, e))?.len();
        self.finish(file, &etag, got, total)?;
        drop(lock);
        Ok(())
    }

    /// Where the answer's body starts in the file: a 206 continues the `.incomplete` file from
    /// `from` (its Content-Range must say so); anything else is the whole file from byte 0.
    fn resume_offset(&self, file: &str, r: &Response<Body>, from: u64) -> std::result::Result<u64, Stop> {
        if r.status().as_u16() != 206 || from == 0 {
            return Ok(0);
        }
        let at = r
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if at != Some(from) {
            return Err(self
                .client
                .protocol(
                    "download",
                    format!("`{file}`: asked for bytes from {from}, got Content-Range {at:?}"),
                )
                .into());
        }
        Ok(from)
    }

    /// Streams the body into `part` from `start` (appending when resuming), with a progress bar
    /// on a terminal, and syncs it. A broken connection is worth another try: what came so far
    /// stays in `part`, where the next try resumes.
    fn stream(
        &self,
        r: &mut Response<Body>,
        part: &Path,
        start: u64,
        total: Option<u64>,
        file: &str,
        url: &str,
    ) -> std::result::Result<(), Stop> {
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .append(start > 0)
            .truncate(start == 0)
            .open(part)
            .map_err(|e| Error::io(part, e))?;
        let hook = self.cfg.progress.as_ref();
        let mut done = start;
        let mut body = r.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = out.sync_all();
                    return Err(Stop::Again(Error::HubUnreachable {
                        repo: self.repo.id.clone(),
                        op: "download",
                        url: strip_query(url),
                        source: Box::new(ureq::Error::Io(e)),
                    }));
                }
            };
            out.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
            done += n as u64;
            if let Some(h) = hook {
                h.report(Progress::Downloading { file, done, total });
            }
        }
        out.sync_all().map_err(|e| Error::io(part, e))?;
        if let Some(h) = hook {
            h.report(Progress::Finished);
        }
        Ok(())
    }

    /// Checks the `.incomplete` file's size and moves it to `blobs/<etag>`, then links it.
    fn finish(&self, file: &str, etag: &str, got: u64, total: Option<u64>) -> std::result::Result<(), Stop> {
        let blobs = repo_cache_dir(self.cfg, &self.repo.id).join("blobs");
        let part = blobs.join(format!("{etag}.incomplete"));
        if let Some(want) = total.filter(|&n| n != got) {
            let e = self
                .client
                .protocol("download", format!("`{file}`: received {got} bytes, expected {want}"));
            if got < want {
                // Short: the connection ended early; the next try resumes.
                return Err(Stop::Again(e));
            }
            let _ = std::fs::remove_file(&part);
            return Err(Stop::Fail(e));
        }
        let blob = blobs.join(etag);
        std::fs::rename(&part, &blob).map_err(|e| Error::io(&blob, e))?;
        self.link(file, etag).map_err(Stop::Fail)
    }

    /// `snapshots/<sha>/<file>` → `../../blobs/<etag>` (relative, as Python makes it).
    fn link(&self, file: &str, etag: &str) -> Result<()> {
        let link = self.snapshot.join(file);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        // A dangling link (its blob was deleted) is replaced.
        if std::fs::symlink_metadata(&link).is_ok() {
            std::fs::remove_file(&link).map_err(|e| Error::io(&link, e))?;
        }
        let up = "../".repeat(2 + file.matches('/').count());
        let target = PathBuf::from(format!("{up}blobs/{etag}"));
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &link).map_err(|e| Error::io(&link, e))?;
        #[cfg(not(unix))]
        {
            let blob = repo_cache_dir(self.cfg, &self.repo.id).join("blobs").join(etag);
            std::fs::copy(&blob, &link).map_err(|e| Error::io(&link, e))?;
        }
        Ok(())
    }
}

/// Takes `<cache>/.locks/models--owner--name/<etag>.lock`, the lock `huggingface_hub` takes
/// for the same blob, so two processes (of ours or Python's) never write one `.incomplete`.
fn lock_blob(cfg: &HubConfig, id: &str, etag: &str) -> Result<File> {
    let dir = cfg
        .cache_dir
        .join(".locks")
        .join(format!("models--{}", id.replace('/', "--")));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(format!("{etag}.lock"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    f.lock().map_err(|e| Error::io(&path, e))?;
    Ok(f)
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
        Need::Base(variant) => {
            let (index, single) = weight_files(variant);
            if snapshot.join(&index).is_file() {
                for shard in index_shards(&snapshot.join(&index))? {
                    need_file(&shard)?;
                }
            } else {
                need_file(&single)?;
            }
        }
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
            let json = n.ends_with(".json") && !is_weight_index(n);
            let tok = is_tokenizer_file(n);
            match need {
                Need::Adapter => json || tok || *n == "README.md",
                Need::Base(_) => json || tok,
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
    // Older builds (through hf-hub) wrote a ref named after the commit; Python has none such.
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
            small_files(Need::Base(None), &names),
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
    fn variants_name_files_like_transformers() {
        assert_eq!(
            weight_files(Some("fp16")),
            (
                "model.safetensors.index.fp16.json".to_string(),
                "model.fp16.safetensors".to_string()
            )
        );
        assert_eq!(weight_files(None), (INDEX.to_string(), "model.safetensors".to_string()));
        // No weight index rides along as a "small" JSON file: only the one needed is fetched.
        let names: BTreeSet<&str> = [
            "config.json",
            "model.safetensors.index.json",
            "model.safetensors.index.fp16.json",
        ]
        .into_iter()
        .collect();
        assert_eq!(small_files(Need::Base(Some("fp16")), &names), vec!["config.json"]);
        assert_eq!(small_files(Need::Base(None), &names), vec!["config.json"]);
    }

    #[test]
    fn etags_are_normalized_and_must_be_file_names() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(
            normalize_etag(" \"d41d8cd98f00b204e9800998ecf8427e-2\" "),
            "d41d8cd98f00b204e9800998ecf8427e-2"
        );
        assert!(safe_etag("d41d8cd98f00b204e9800998ecf8427e-2"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "a\\b"] {
            assert!(!safe_etag(bad), "{bad}");
        }
    }

    #[test]
    fn a_failed_file_download_names_the_repo_and_file() {
        use super::super::config::fake::{ok, serve};
        let sha = "b".repeat(40);
        // The revision lists a file whose resolve answers without an ETag.
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
            progress: None,
            tries: 1,
        };
        let e = fetch(&cfg, &RepoRef::parse("me/base").unwrap(), Need::Base(None)).unwrap_err();
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
            progress: None,
            tries: 1,
        };
        let repo = RepoRef::parse("me/base").unwrap();
        let e = fetch(&cfg, &repo, Need::Base(None)).unwrap_err();
        assert!(
            matches!(&e, Error::HubOffline { file, .. } if file == "refs/main"),
            "{e}"
        );
        let sha = "a".repeat(40);
        let snap = d.path().join("models--me--base/snapshots").join(&sha);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(d.path().join("models--me--base/refs")).unwrap();
        std::fs::write(d.path().join("models--me--base/refs/main"), &sha).unwrap();
        let e = fetch(&cfg, &repo, Need::Base(None)).unwrap_err();
        assert!(
            matches!(&e, Error::HubOffline { file, .. } if file == "model.safetensors"),
            "{e}"
        );
        std::fs::write(snap.join("model.safetensors"), b"x").unwrap();
        assert_eq!(fetch(&cfg, &repo, Need::Base(None)).unwrap(), snap);

        // A variant: its own files are checked, and the default ones beside them are refused
        // (the reader would take those).
        let e = fetch(&cfg, &repo, Need::Base(Some("v2"))).unwrap_err();
        assert!(
            matches!(&e, Error::HubOffline { file, .. } if file == "model.v2.safetensors"),
            "{e}"
        );
        std::fs::write(
            snap.join("model.safetensors.index.v2.json"),
            r#"{"weight_map":{"a":"model.v2-00001-of-00002.safetensors","b":"model.v2-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(snap.join("model.v2-00001-of-00002.safetensors"), b"x").unwrap();
        let e = fetch(&cfg, &repo, Need::Base(Some("v2"))).unwrap_err();
        assert!(
            matches!(&e, Error::HubOffline { file, .. } if file == "model.v2-00002-of-00002.safetensors"),
            "{e}"
        );
        std::fs::write(snap.join("model.v2-00002-of-00002.safetensors"), b"x").unwrap();
        // The default weights beside the variant are fine: the reader takes the variant's.
        assert_eq!(fetch(&cfg, &repo, Need::Base(Some("v2"))).unwrap(), snap);
    }
}
