//! `push_to_hub`: send a saved directory to a model repo as one commit.
//!
//! A [`Session`] does it in the Hub's order: `whoami` (the report's username, like Unsloth's
//! `(save_directory, username)`), create the repo (an existing one is fine), create the branch
//! for `--revision`; then for the files: `preupload` (LFS or inline, and what the repo already
//! has), the LFS transfers (objects the server already stores are skipped, so a re-run after an
//! interruption sends only what is missing), and one NDJSON commit (or a pull request). While a
//! save runs, [`Session::upload_early`] sends each shard as the packer closes it, and the final
//! [`Session::finish`] only commits.
//!
//! What is sent: every file under the directory except `.git`, `.cache/huggingface`, hidden
//! staging folders and `loraweld-manifest.json` (it records local input paths). The `README.md`
//! sent is the card with `--tags` merged in (`card.rs`), staged in `--temporary-location`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::http::Client;
use super::lfs::{self, LfsObject, Transferred};
use super::protocol::{self, CommitOp, PreuploadFile};
use super::config::{HubConfig, RepoRef};
use crate::error::{Error, Result};
use crate::writer::staging::Staging;

/// Files a push never sends.
use crate::writer::resume::MANIFEST;

/// Where and how to push; mirrors `--push-to-hub` and its flags.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// `owner/name`.
    pub repo: String,
    /// Create the repo private (an existing repo keeps its visibility).
    pub private: bool,
    /// The branch to commit to (created from `main` if missing); `None` = `main`.
    pub revision: Option<String>,
    /// Open a pull request instead of committing to the branch.
    pub create_pr: bool,
    /// The commit title; default "Upload model with loraweld".
    pub commit_message: Option<String>,
    /// The commit description.
    pub commit_description: Option<String>,
    /// Tags added to the model card.
    pub tags: Vec<String>,
}

impl PushOptions {
    /// Push options for a repo, with the defaults.
    pub fn new(repo: impl Into<String>) -> Self {
        PushOptions {
            repo: repo.into(),
            private: false,
            revision: None,
            create_pr: false,
            commit_message: None,
            commit_description: None,
            tags: Vec::new(),
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    /// The token's user (`whoami-v2`).
    pub username: String,
    /// `owner/name`.
    pub repo: String,
    /// The branch committed to (or that the pull request targets).
    pub revision: String,
    /// `{endpoint}/{repo}/commit/{oid}`.
    pub commit_url: String,
    /// The new commit (the current head when nothing changed).
    pub commit_oid: String,
    /// The pull request, with `create_pr`.
    pub pull_request_url: Option<String>,
    /// Files in the commit.
    pub files_committed: usize,
    /// Files left out because the repo already has the same bytes.
    pub files_unchanged: usize,
    /// LFS objects sent.
    pub lfs_uploaded: usize,
    /// LFS objects the server already had.
    pub lfs_skipped: usize,
    /// Bytes sent through LFS.
    pub bytes_uploaded: u64,
}

/// Pushes `dir`: [`Session::start`] then [`Session::finish`]. The card is staged in
/// `temporary_location` (default: the system temp dir) and removed afterwards.
pub fn push(dir: &Path, opts: &PushOptions, hub: &HubConfig, temporary_location: Option<&Path>) -> Result<PushReport> {
    if !dir.is_dir() {
        return Err(Error::NotFound {
            path: dir.to_path_buf(),
        });
    }
    let session = Session::start(opts, hub)?;
    let temp = temporary_location
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    // One staging folder per process: concurrent pushes must not share (or lock) one.
    let staging = Staging::create(&temp.join(format!("push-{}", std::process::id())), Some(&temp))?;
    let card = staging.path().join("README.md");
    let text = super::card::card_for(dir, &opts.tags)?;
    std::fs::write(&card, text).map_err(|e| Error::io(&card, e))?;
    session.finish(dir, Some(&card))
    // `staging` drops here: the staged card is removed.
}

/// What a commit changes.
struct Changes {
    ops: Vec<CommitOp>,
    objects: Vec<LfsObject>,
    /// Files the Hub already has, byte for byte.
    unchanged: usize,
}

/// A push in progress: the repo exists, the branch exists, the username is known.
pub struct Session {
    client: Client,
    opts: PushOptions,
    revision: String,
    username: String,
    /// sha256 and size of files already hashed (by path in the repo), so `finish` does not
    /// read a shard twice.
    hashed: Mutex<HashMap<String, (String, u64)>>,
    /// Transfers made by `upload_early`.
    early: Mutex<Transferred>,
    /// Upload progress, when the caller asked for it: every LFS byte of the push, early or not.
    bar: Option<lfs::UploadMeter>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // A push that failed leaves no half-drawn bar above its error line.
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

impl Session {
    /// Checks the token, asks `whoami`, creates the repo and the branch.
    pub fn start(opts: &PushOptions, hub: &HubConfig) -> Result<Self> {
        let repo = RepoRef::parse(&opts.repo)?;
        if repo.revision != "main" || opts.repo.contains('@') {
            return Err(Error::BadRepoId {
                id: opts.repo.clone(),
                why: "push to `owner/name` and pass the branch with --revision",
            });
        }
        if opts.commit_message.as_deref() == Some("") {
            return Err(Error::Usage("--commit-message: can't be empty".into()));
        }
        let revision = opts.revision.clone().unwrap_or_else(|| "main".into());
        RepoRef::parse(&format!("{}@{revision}", repo.id))?;
        let client = Client::new(hub, &repo.id);
        if !client.has_token() {
            return Err(Error::HubNoToken { repo: repo.id });
        }
        let username = protocol::whoami(&client)?;
        protocol::create_repo(&client, &repo.id, opts.private)?;
        if revision != "main" {
            protocol::create_branch(&client, &repo.id, &revision)?;
        }
        Ok(Session {
            client,
            opts: opts.clone(),
            revision,
            username,
            hashed: Mutex::new(HashMap::new()),
            early: Mutex::new(Transferred::default()),
            bar: hub.progress.clone().map(lfs::UploadMeter::new),
        })
    }

    /// The token's user.
    pub fn username(&self) -> &str {
        &self.username
    }

    fn lfs_ref(&self) -> Option<&str> {
        (!self.opts.create_pr).then_some(self.revision.as_str())
    }

    /// Sends one finished file through LFS now (if the Hub wants it in LFS and doesn't have it),
    /// so that the final commit only references it. Safe to call from another thread.
    pub fn upload_early(&self, path: &Path) -> Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let (oid, size) = self.hash(&name, path)?;
        let sample = sample(path)?;
        let pre = protocol::preupload(
            &self.client,
            &self.opts.repo,
            &self.revision,
            self.opts.create_pr,
            &[PreuploadFile {
                path: &name,
                size,
                sample: &sample,
            }],
        )?;
        let unchanged = pre[0].remote_oid.as_deref() == Some(oid.as_str());
        if pre[0].lfs && !pre[0].should_ignore && !unchanged && size > 0 {
            let obj = LfsObject {
                local: path.to_path_buf(),
                oid,
                size,
            };
            let t = lfs::upload(&self.client, &self.opts.repo, self.lfs_ref(), &[obj], self.bar.as_ref())?;
            *self.early.lock().unwrap_or_else(|p| p.into_inner()) += t;
        }
        Ok(())
    }

    /// Records a file's sha256 computed elsewhere (the packer hashes shards as it writes them),
    /// so uploading it does not read it back.
    pub fn record_hash(&self, name: &str, sha256: &str, size: u64) {
        self.hashed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (sha256.to_string(), size));
    }

    fn hash(&self, name: &str, path: &Path) -> Result<(String, u64)> {
        let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if let Some((oid, n)) = self.hashed.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            if *n == size {
                return Ok((oid.clone(), *n));
            }
        }
        let (oid, n) = lfs::sha256_file(path)?;
        self.hashed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (oid.clone(), n));
        Ok((oid, n))
    }

    /// Preuploads, transfers what is missing and commits every file of `dir` (with `card` sent
    /// as `README.md` when given).
    pub fn finish(&self, dir: &Path, card: Option<&Path>) -> Result<PushReport> {
        let mut files = list_files(dir)?;
        if let Some(card) = card {
            files.retain(|(name, _)| name != "README.md");
            files.push(("README.md".into(), card.to_path_buf()));
            files.sort();
        }
        let mut samples = Vec::new();
        let mut sizes = Vec::new();
        for (_, p) in &files {
            samples.push(sample(p)?);
            sizes.push(std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len());
        }
        let announce: Vec<PreuploadFile> = files
            .iter()
            .zip(&samples)
            .zip(&sizes)
            .map(|(((name, _), s), &size)| PreuploadFile {
                path: name,
                size,
                sample: s,
            })
            .collect();
        let modes = protocol::preupload(
            &self.client,
            &self.opts.repo,
            &self.revision,
            self.opts.create_pr,
            &announce,
        )?;
        let Changes {
            ops,
            objects,
            unchanged,
        } = self.changes(&files, &sizes, &modes)?;
        let mut t = lfs::upload(
            &self.client,
            &self.opts.repo,
            self.lfs_ref(),
            &objects,
            self.bar.as_ref(),
        )?;
        if let Some(b) = &self.bar {
            b.finish();
        }
        let early = *self.early.lock().unwrap_or_else(|p| p.into_inner());
        // Objects sent early show up as "skipped" in the final batch: count them once, as sent.
        t.skipped = t.skipped.saturating_sub(early.uploaded);
        t += early;
        let mut report = PushReport {
            username: self.username.clone(),
            repo: self.opts.repo.clone(),
            revision: self.revision.clone(),
            commit_url: String::new(),
            commit_oid: String::new(),
            pull_request_url: None,
            files_committed: ops.len(),
            files_unchanged: unchanged,
            lfs_uploaded: t.uploaded,
            lfs_skipped: t.skipped,
            bytes_uploaded: t.bytes,
        };
        if ops.is_empty() {
            // Nothing changed: no empty commit (as `huggingface_hub` does); report the head.
            let head = RepoRef {
                id: self.opts.repo.clone(),
                revision: self.revision.clone(),
            };
            let info = protocol::repo_info(&self.client, &head)?;
            report.commit_url = format!("{}/{}/commit/{}", self.client.endpoint, self.opts.repo, info.sha);
            report.commit_oid = info.sha;
            return Ok(report);
        }
        let message = self
            .opts
            .commit_message
            .clone()
            .unwrap_or_else(|| "Upload model with loraweld".into());
        let body = protocol::commit_body(&message, self.opts.commit_description.as_deref().unwrap_or(""), &ops);
        let a = protocol::commit(
            &self.client,
            &self.opts.repo,
            &self.revision,
            self.opts.create_pr,
            &body,
        )?;
        report.commit_url = a.commit_url;
        report.commit_oid = a.commit_oid;
        report.pull_request_url = a.pull_request_url;
        Ok(report)
    }

    /// What the commit must change, given the Hub's preupload answer: LFS pointers for large
    /// files whose object differs (and the objects to send), inline content for small ones; files
    /// the Hub already has identical are counted and left out.
    fn changes(&self, files: &[(String, PathBuf)], sizes: &[u64], modes: &[protocol::Preupload]) -> Result<Changes> {
        let mut c = Changes {
            ops: Vec::new(),
            objects: Vec::new(),
            unchanged: 0,
        };
        for ((name, path), size) in files.iter().zip(sizes) {
            let Some(m) = modes.iter().find(|m| &m.path == name) else {
                continue;
            };
            if m.should_ignore {
                continue;
            }
            // Empty files can't go through LFS (`huggingface_hub` sends them inline too).
            if m.lfs && *size > 0 {
                let (oid, size) = self.hash(name, path)?;
                if m.remote_oid.as_deref() == Some(oid.as_str()) {
                    c.unchanged += 1;
                    continue;
                }
                c.objects.push(LfsObject {
                    local: path.clone(),
                    oid: oid.clone(),
                    size,
                });
                c.ops.push(CommitOp::Lfs {
                    path: name.clone(),
                    oid,
                    size,
                });
            } else {
                let content = std::fs::read(path).map_err(|e| Error::io(path, e))?;
                if m.remote_oid.as_deref() == Some(protocol::git_blob_oid(&content).as_str()) {
                    c.unchanged += 1;
                    continue;
                }
                c.ops.push(CommitOp::Regular {
                    path: name.clone(),
                    content,
                });
            }
        }
        Ok(c)
    }
}

/// The first 512 bytes of a file (`UploadInfo.sample`).
fn sample(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut v = Vec::with_capacity(512);
    f.take(512).read_to_end(&mut v).map_err(|e| Error::io(path, e))?;
    Ok(v)
}

/// Every file under `dir` as (path in repo, local path), sorted, without what a push never sends.
fn list_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let e = e.map_err(|err| Error::io(&d, err))?;
            let name = e.file_name().to_string_lossy().to_string();
            let rel = format!("{prefix}{name}");
            let ft = std::fs::metadata(e.path()).map_err(|err| Error::io(e.path(), err))?;
            let skip = name == ".git"
                || rel == ".cache"
                || rel == MANIFEST
                || (name.starts_with('.') && name.contains(".loraweld-"));
            if skip {
                continue;
            }
            if ft.is_dir() {
                stack.push((format!("{rel}/"), e.path()));
            } else if ft.is_file() {
                out.push((rel, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_what_a_push_sends() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "config.json",
            MANIFEST,
            "sub/a.txt",
            ".git/HEAD",
            ".cache/huggingface/x",
            ".x.loraweld-1/y",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"1").unwrap();
        }
        let names: Vec<String> = list_files(d.path()).unwrap().into_iter().map(|x| x.0).collect();
        assert_eq!(names, vec!["config.json", "sub/a.txt"]);
    }

    #[test]
    fn push_without_a_token_is_refused_before_any_request() {
        let hub = HubConfig {
            endpoint: "http://127.0.0.1:9".into(),
            cache_dir: "/nonexistent".into(),
            token: None,
            offline: false,
            progress: None,
            tries: 1,
        };
        let e = Session::start(&PushOptions::new("me/model"), &hub).err().unwrap();
        assert!(matches!(e, Error::HubNoToken { .. }), "{e}");
        let e = Session::start(&PushOptions::new("me/model@dev"), &hub).err().unwrap();
        assert!(matches!(e, Error::BadRepoId { .. }), "{e}");
    }

    fn hub_at(endpoint: String) -> HubConfig {
        HubConfig {
            endpoint,
            cache_dir: "/nonexistent".into(),
            token: super::super::Token::new("hf_secret"),
            offline: false,
            progress: None,
            tries: 1,
        }
    }

    #[test]
    fn an_unreachable_hub_names_the_url_not_the_token() {
        // A port that was free a moment ago: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = Session::start(
            &PushOptions::new("me/model"),
            &hub_at(format!("http://127.0.0.1:{port}")),
        )
        .err()
        .unwrap();
        assert!(matches!(e, Error::HubUnreachable { op: "whoami", .. }), "{e}");
        assert_eq!(e.exit_code(), crate::error::ExitCode::Runtime);
        let msg = format!("{e} {e:?}");
        assert!(
            msg.contains(&format!("127.0.0.1:{port}/api/whoami-v2")) && !msg.contains("hf_secret"),
            "{msg}"
        );
    }

    #[test]
    fn a_malformed_answer_is_a_protocol_error() {
        let url = super::super::config::fake::serve(vec![("/api/whoami-v2", super::super::config::fake::ok("not json", ""))]);
        let e = Session::start(&PushOptions::new("me/model"), &hub_at(url))
            .err()
            .unwrap();
        assert!(matches!(e, Error::HubProtocol { op: "whoami", .. }), "{e}");
        let url = super::super::config::fake::serve(vec![
            ("/api/whoami-v2", super::super::config::fake::ok(r#"{"name":"me"}"#, "")),
            ("/api/repos/create", super::super::config::fake::ok("{}", "")),
            (
                "/api/models/me/model/preupload/main",
                super::super::config::fake::ok(r#"{"files":[{"path":"a","uploadMode":"xet"}]}"#, ""),
            ),
        ]);
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"1").unwrap();
        let s = Session::start(&PushOptions::new("me/model"), &hub_at(url)).unwrap();
        assert_eq!(s.username(), "me");
        let e = s.finish(d.path(), None).unwrap_err();
        assert!(e.to_string().contains("unknown uploadMode `xet`"), "{e}");
    }
}
