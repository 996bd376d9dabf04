//! The Hub's JSON API calls around an upload, one function each, in the order a push makes them:
//! `whoami-v2`, `repos/create`, `branch`, `preupload`, then (after the LFS transfers in
//! [`super::lfs`]) the NDJSON `commit`; plus the `revision` info that downloads start from.
//! Shapes follow `huggingface_hub` 2.x (`hf_api.py`, `_commit_api.py`).

use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use super::http::Client;
use super::config::{encode_segment, RepoRef};
use crate::error::Result;

/// The answer of `GET /api/models/{repo}/revision/{rev}` that we use.
#[derive(Debug, Clone, Deserialize)]
pub struct RepoInfo {
    /// The commit the revision points to.
    pub sha: String,
    /// Every file in the repo at that commit.
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

/// One file of [`RepoInfo`].
#[derive(Debug, Clone, Deserialize)]
pub struct Sibling {
    /// Its path in the repo.
    pub rfilename: String,
}

/// `GET /api/models/{repo}/revision/{rev}`.
pub fn repo_info(c: &Client, repo: &RepoRef) -> Result<RepoInfo> {
    let url = format!(
        "{}/api/models/{}/revision/{}",
        c.endpoint,
        repo.id,
        repo.revision_in_path()
    );
    c.get_json("repo info", &url)
}

/// `GET /api/whoami-v2` → the user name.
pub fn whoami(c: &Client) -> Result<String> {
    #[derive(Deserialize)]
    struct Who {
        name: String,
    }
    let who: Who = c.get_json("whoami", &format!("{}/api/whoami-v2", c.endpoint))?;
    Ok(who.name)
}

/// `POST /api/repos/create`; an existing repo (409) is fine, as with `exist_ok=True`.
pub fn create_repo(c: &Client, id: &str, private: bool) -> Result<()> {
    let (org, name) = id.split_once('/').unwrap_or(("", id));
    let body = json!({
        "name": name,
        "organization": org,
        "type": "model",
        "visibility": if private { "private" } else { "public" },
    });
    let url = format!("{}/api/repos/create", c.endpoint);
    let r = c.post_json_raw("create repo", &url, "application/json", &body)?;
    if r.status().as_u16() == 409 {
        return Ok(());
    }
    c.check("create repo", r).map(drop)
}

/// `POST /api/models/{repo}/branch/{branch}` from the default branch; an existing branch (409)
/// is fine, as with `create_branch(exist_ok=True)`.
pub fn create_branch(c: &Client, id: &str, branch: &str) -> Result<()> {
    let url = format!("{}/api/models/{id}/branch/{}", c.endpoint, encode_segment(branch));
    let r = c.post_json_raw("create branch", &url, "application/json", &json!({}))?;
    if r.status().as_u16() == 409 {
        return Ok(());
    }
    c.check("create branch", r).map(drop)
}

/// What the Hub says about one file we are about to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preupload {
    /// Its path in the repo.
    pub path: String,
    /// `true`: through LFS (by sha256); `false`: inline in the commit.
    pub lfs: bool,
    /// The `.gitignore` says to leave it out.
    pub should_ignore: bool,
    /// The oid of the file already at this path (sha256 for LFS, git blob sha1 otherwise).
    pub remote_oid: Option<String>,
}

/// A file to announce to `preupload`: its path, size and first 512 bytes.
pub struct PreuploadFile<'a> {
    /// Path in the repo.
    pub path: &'a str,
    /// Bytes.
    pub size: u64,
    /// The first 512 bytes (fewer for a small file).
    pub sample: &'a [u8],
}

/// `POST /api/models/{repo}/preupload/{rev}[?create_pr=1]`, 256 files per call.
pub fn preupload(
    c: &Client,
    id: &str,
    revision: &str,
    create_pr: bool,
    files: &[PreuploadFile],
) -> Result<Vec<Preupload>> {
    #[derive(Deserialize)]
    struct Answer {
        files: Vec<Entry>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        path: String,
        upload_mode: String,
        #[serde(default)]
        should_ignore: bool,
        #[serde(default)]
        oid: Option<String>,
    }
    let mut url = format!("{}/api/models/{id}/preupload/{}", c.endpoint, encode_segment(revision));
    if create_pr {
        url.push_str("?create_pr=1");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for chunk in files.chunks(256) {
        let body = json!({
            "files": chunk.iter().map(|f| json!({"path": f.path, "sample": b64.encode(f.sample), "size": f.size})).collect::<Vec<_>>(),
        });
        let r = c.post_json_raw("preupload", &url, "application/json", &body)?;
        let r = c.check("preupload", r)?;
        let a: Answer = c.json("preupload", r)?;
        for e in a.files {
            let lfs = match e.upload_mode.as_str() {
                "lfs" => true,
                "regular" => false,
                other => return Err(c.protocol("preupload", format!("`{}`: unknown uploadMode `{other}`", e.path))),
            };
            out.push(Preupload {
                path: e.path,
                lfs,
                should_ignore: e.should_ignore,
                remote_oid: e.oid,
            });
        }
    }
    for f in files {
        if !out.iter().any(|p| p.path == f.path) {
            return Err(c.protocol("preupload", format!("no answer for `{}`", f.path)));
        }
    }
    Ok(out)
}

/// One line of the commit body.
#[derive(Debug, Clone)]
pub enum CommitOp {
    /// A small file, inlined as base64.
    Regular {
        /// Path in the repo.
        path: String,
        /// Its bytes.
        content: Vec<u8>,
    },
    /// A file already uploaded through LFS, referenced by sha256.
    Lfs {
        /// Path in the repo.
        path: String,
        /// sha256, hex.
        oid: String,
        /// Bytes.
        size: u64,
    },
}

/// What the commit endpoint answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommitAnswer {
    /// `{endpoint}/{repo}/commit/{oid}`.
    pub commit_url: String,
    /// The new commit.
    pub commit_oid: String,
    /// `{endpoint}/{repo}/discussions/{n}` with `create_pr`.
    #[serde(default)]
    pub pull_request_url: Option<String>,
}

/// The NDJSON body: a header line, then one line per file (`_commit_api.py` `_prepare_commit_payload`).
pub fn commit_body(summary: &str, description: &str, ops: &[CommitOp]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines = vec![json!({"key": "header", "value": {"summary": summary, "description": description}})];
    for op in ops {
        lines.push(match op {
            CommitOp::Regular { path, content } => {
                json!({"key": "file", "value": {"content": b64.encode(content), "path": path, "encoding": "base64"}})
            }
            CommitOp::Lfs { path, oid, size } => {
                json!({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": size}})
            }
        });
    }
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// `POST /api/models/{repo}/commit/{rev}[?create_pr=1]` with an NDJSON body.
pub fn commit(c: &Client, id: &str, revision: &str, create_pr: bool, body: &[u8]) -> Result<CommitAnswer> {
    let mut url = format!("{}/api/models/{id}/commit/{}", c.endpoint, encode_segment(revision));
    if create_pr {
        url.push_str("?create_pr=1");
    }
    let auth = c.auth_header();
    let r = c.run("commit", &url, |a| {
        let mut rq = a.post(&url).header("content-type", "application/x-ndjson");
        if let Some(h) = &auth {
            rq = rq.header("authorization", h);
        }
        rq.send(body)
    })?;
    let r = c.check("commit", r)?;
    c.json("commit", r)
}

/// The git blob id of `content` (`sha1("blob {len}\0" + content)`), which `preupload` reports
/// for regular files already in the repo.
pub fn git_blob_oid(content: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex(&h.finalize())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn commit_body_is_ndjson_like_huggingface_hub() {
        let body = commit_body(
            "msg",
            "",
            &[
                CommitOp::Regular {
                    path: "config.json".into(),
                    content: b"{}".to_vec(),
                },
                CommitOp::Lfs {
                    path: "model.safetensors".into(),
                    oid: "ab".into(),
                    size: 3,
                },
            ],
        );
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            lines[0],
            json!({"key": "header", "value": {"summary": "msg", "description": ""}})
        );
        assert_eq!(
            lines[1],
            json!({"key": "file", "value": {"content": "e30=", "path": "config.json", "encoding": "base64"}})
        );
        assert_eq!(
            lines[2],
            json!({"key": "lfsFile", "value": {"path": "model.safetensors", "algo": "sha256", "oid": "ab", "size": 3}})
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn git_blob_oid_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(git_blob_oid(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
    }
}
