//! A Hugging Face Hub for tests, on loopback: what loraweld's client and `huggingface_hub` (with
//! `HF_HUB_DISABLE_XET=1`, the legacy LFS path) use, answering with the Hub's status codes, JSON
//! shapes and headers. State is in memory.
//!
//! ```text
//! cargo run --example mock-hub -- --port 0 [--user NAME] [--org NAME] [--token TOKEN] [--chunk-size BYTES]
//! ```
//! prints its URL (`http://127.0.0.1:PORT`) as the first line of stdout and serves until killed.
//! Point a client at it with `HF_ENDPOINT=<url>`. Any `hf_…` token is accepted unless `--token`
//! pins one; it belongs to `--user` (default `mock-user`), a member of each `--org`.
//!
//! Endpoints: `GET /api/whoami-v2`; `POST /api/repos/create`; `POST /api/models/{repo}/branch/{b}`;
//! `POST /api/models/{repo}/preupload/{rev}`; `POST /{repo}.git/info/lfs/objects/batch` with basic
//! PUT, multipart (objects larger than `--chunk-size`: presigned part URLs, ETags, completion)
//! and `verify`; `POST /api/models/{repo}/commit/{rev}` (NDJSON, `create_pr=1`);
//! `GET /api/models/{repo}[/revision/{rev}]`; `GET|HEAD /{repo}/resolve/{rev}/{path}` (regular
//! files: 200 with `ETag` = git blob id; LFS files: 302 to a blob URL with `X-Linked-Etag` =
//! sha256 and `X-Linked-Size`; `X-Repo-Commit` on both; `Range` honoured); `POST /api/validate-yaml`.
//!
//! For tests: `GET /_mock/stats` (counters: LFS objects stored, PUTs, commits, PUTs and storage
//! blob GETs that carried an `Authorization` header, resolve GETs that carried the token, the
//! `User-Agent`s seen), `POST /_mock/config` (`{"put_delay_ms": N, "fail_uploads_after": N|null,
//! "fail_next": [{"prefix": "/api/…", "status": 503, "count": 1}]}`).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine;
use serde_json::{json, Value};
use sha2::Digest;
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

/// Server settings and test knobs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The token's user.
    pub user: String,
    /// Organizations the user may write to.
    pub orgs: Vec<String>,
    /// The one accepted token; `None` accepts any `hf_…` token.
    pub token: Option<String>,
    /// Objects larger than this go multipart, in parts of this size.
    pub chunk_size: u64,
    /// Sleep before answering each upload PUT.
    pub put_delay_ms: u64,
    /// After this many stored LFS objects, further upload PUTs fail with 400 (a simulated crash).
    pub fail_uploads_after: Option<u64>,
    /// Answer the next `count` requests whose path starts with `prefix` with `status`.
    pub fail_next: Vec<(String, u16, u32)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            user: "mock-user".into(),
            orgs: vec!["mock-org".into()],
            token: None,
            chunk_size: 8 << 20,
            put_delay_ms: 0,
            fail_uploads_after: None,
            fail_next: Vec::new(),
        }
    }
}

/// Counters a test reads to see what crossed the wire.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// LFS objects stored (basic PUT or multipart completion).
    pub objects_stored: u64,
    /// Their sha256s, in order.
    pub stored_oids: Vec<String>,
    /// Upload PUTs (basic and parts).
    pub puts: u64,
    /// Multipart part PUTs.
    pub part_puts: u64,
    /// Multipart completions.
    pub completions: u64,
    /// Verify calls.
    pub verifies: u64,
    /// LFS batch calls.
    pub batches: u64,
    /// Commits made.
    pub commits: u64,
    /// PUTs to presigned URLs that carried an `Authorization` header (a token leak).
    pub puts_with_authorization: u64,
    /// `GET|HEAD /{repo}/resolve/...` on the Hub.
    pub resolve_gets: u64,
    /// Of those, the ones that carried a `Bearer` token.
    pub resolve_gets_with_token: u64,
    /// `GET|HEAD` of LFS blobs on the storage origin (where LFS resolves redirect).
    pub blob_gets: u64,
    /// Of those, the ones that carried an `Authorization` header (a token leak).
    pub blob_gets_with_authorization: u64,
    /// Of those, the ones with a `Range` header (a resumed download).
    pub blob_gets_with_range: u64,
    /// Every distinct `User-Agent` seen, in order of first use.
    pub user_agents: Vec<String>,
    /// Requests answered with an injected failure.
    pub injected_failures: u64,
}

#[derive(Debug, Clone)]
enum Entry {
    Regular(Arc<Vec<u8>>),
    Lfs { oid: String, size: u64 },
}

impl Entry {
    fn size(&self) -> u64 {
        match self {
            Entry::Regular(b) => b.len() as u64,
            Entry::Lfs { size, .. } => *size,
        }
    }

    /// What `preupload` and the `siblings` report: git blob id, or sha256 for LFS.
    fn oid(&self) -> String {
        match self {
            Entry::Regular(b) => git_blob_oid(b),
            Entry::Lfs { oid, .. } => oid.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Commit {
    files: BTreeMap<String, Entry>,
    summary: String,
    description: String,
    parent: Option<String>,
}

#[derive(Debug, Default)]
struct Repo {
    private: bool,
    refs: BTreeMap<String, String>,
    commits: HashMap<String, Commit>,
    prs: u64,
}

impl Repo {
    fn resolve(&self, rev: &str) -> Option<(&String, &Commit)> {
        let sha = self
            .refs
            .get(rev)
            .or_else(|| self.commits.keys().find(|k| k.as_str() == rev))?;
        self.commits.get_key_value(sha)
    }
}

#[derive(Default)]
struct State {
    cfg: Config,
    stats: Stats,
    repos: BTreeMap<String, Repo>,
    lfs: HashMap<String, Arc<Vec<u8>>>,
    parts: HashMap<String, BTreeMap<u64, Vec<u8>>>,
    seq: u64,
    /// The "storage" origin (a second listener): presigned PUTs and LFS blob downloads go there,
    /// as they go to S3 / a CDN from the real Hub, so clients see a cross-origin redirect.
    cdn: String,
}

/// A running mock Hub; stops when dropped.
pub struct MockHub {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    state: Arc<Mutex<State>>,
    servers: Vec<Arc<Server>>,
    workers: Vec<JoinHandle<()>>,
}

impl MockHub {
    /// Binds the Hub on `127.0.0.1:port` (0: any free port) and its storage origin on another
    /// free port, and serves each on four threads.
    pub fn start(port: u16, cfg: Config) -> std::io::Result<MockHub> {
        let bind = |port: u16| -> std::io::Result<(Arc<Server>, u16)> {
            let server = Server::http(("127.0.0.1", port)).map_err(std::io::Error::other)?;
            let port = server
                .server_addr()
                .to_ip()
                .map(|a| a.port())
                .ok_or_else(|| std::io::Error::other("not an IP listener"))?;
            Ok((Arc::new(server), port))
        };
        let (hub, port) = bind(port)?;
        let (cdn, cdn_port) = bind(0)?;
        let state = Arc::new(Mutex::new(State {
            cfg,
            cdn: format!("http://127.0.0.1:{cdn_port}"),
            ..State::default()
        }));
        let servers = vec![hub, cdn];
        let mut workers = Vec::new();
        for (si, server) in servers.iter().enumerate() {
            for i in 0..4 {
                let (server, state) = (server.clone(), state.clone());
                workers.push(
                    std::thread::Builder::new()
                        .name(format!("mock-hub.{si}.{i}"))
                        .spawn(move || {
                            while let Ok(rq) = server.recv() {
                                handle(&state, rq);
                            }
                        })?,
                );
            }
        }
        Ok(MockHub {
            url: format!("http://127.0.0.1:{port}"),
            state,
            servers,
            workers,
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Changes the test knobs.
    pub fn configure(&self, f: impl FnOnce(&mut Config)) {
        f(&mut self.lock().cfg);
    }

    /// Paths at a revision of a repo, with their sizes.
    pub fn files(&self, repo: &str, rev: &str) -> Option<BTreeMap<String, u64>> {
        let st = self.lock();
        let (_, c) = st.repos.get(repo)?.resolve(rev)?;
        Some(c.files.iter().map(|(k, v)| (k.clone(), v.size())).collect())
    }

    /// Whether a repo exists and is private.
    pub fn is_private(&self, repo: &str) -> Option<bool> {
        self.lock().repos.get(repo).map(|r| r.private)
    }

    /// The summary and description of the commit a revision points to.
    pub fn commit_message(&self, repo: &str, rev: &str) -> Option<(String, String)> {
        let st = self.lock();
        let (_, c) = st.repos.get(repo)?.resolve(rev)?;
        Some((c.summary.clone(), c.description.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        for s in &self.servers {
            for _ in 0..4 {
                s.unblock();
            }
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// An answer: status, headers, body.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, v: Value) -> Answer {
        Answer {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    /// An error as the Hub sends it: JSON `{"error"}` plus `X-Error-Message` (and `X-Error-Code`).
    fn error(status: u16, code: Option<&'static str>, msg: &str) -> Answer {
        let mut a = Answer::json(status, json!({ "error": msg }));
        a.headers.push(("X-Error-Message", msg.into()));
        if let Some(c) = code {
            a.headers.push(("X-Error-Code", c.into()));
        }
        a
    }

    fn with(mut self, k: &'static str, v: impl Into<String>) -> Answer {
        self.headers.push((k, v.into()));
        self
    }
}

/// What the handler needs from a request.
struct Req {
    method: Method,
    path: Vec<String>,
    raw_path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    base: String,
}

impl Req {
    fn bearer(&self) -> Option<&str> {
        self.headers.get("authorization")?.strip_prefix("Bearer ")
    }

    fn json(&self) -> Result<Value, Answer> {
        serde_json::from_slice(&self.body).map_err(|e| Answer::error(400, None, &format!("invalid JSON body: {e}")))
    }
}

fn handle(state: &Mutex<State>, mut rq: Request) {
    let url = rq.url().to_string();
    let (raw_path, q) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let mut headers = HashMap::new();
    for h in rq.headers() {
        headers.insert(
            h.field.as_str().as_str().to_ascii_lowercase(),
            h.value.as_str().to_string(),
        );
    }
    let mut body = Vec::new();
    let _ = rq.as_reader().read_to_end(&mut body);
    let base = format!(
        "http://{}",
        headers.get("host").cloned().unwrap_or_else(|| "127.0.0.1".into())
    );
    let req = Req {
        method: rq.method().clone(),
        path: raw_path.split('/').filter(|s| !s.is_empty()).map(decode).collect(),
        raw_path: raw_path.to_string(),
        query: q
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect(),
        headers,
        body,
        base,
    };
    let a = route(state, &req);
    let mut resp = Response::from_data(a.body).with_status_code(StatusCode(a.status));
    for (k, v) in a.headers {
        if let Ok(h) = Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp.add_header(h);
        }
    }
    let _ = rq.respond(resp);
}

fn route(state: &Mutex<State>, r: &Req) -> Answer {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    {
        let mut st = lock();
        let ua = r.headers.get("user-agent").cloned().unwrap_or_default();
        if !st.stats.user_agents.contains(&ua) {
            st.stats.user_agents.push(ua);
        }
        if let Some(i) = st
            .cfg
            .fail_next
            .iter()
            .position(|(p, _, n)| *n > 0 && r.raw_path.starts_with(p.as_str()))
        {
            st.cfg.fail_next[i].2 -= 1;
            let status = st.cfg.fail_next[i].1;
            st.stats.injected_failures += 1;
            return Answer::error(status, None, "injected failure");
        }
    }
    let p: Vec<&str> = r.path.iter().map(String::as_str).collect();
    let m = &r.method;
    match (m, p.as_slice()) {
        (Method::Get, ["_mock", "stats"]) => {
            Answer::json(200, serde_json::to_value(&lock().stats).unwrap_or(Value::Null))
        }
        (Method::Post, ["_mock", "config"]) => mock_config(&mut lock(), r),
        (Method::Get, ["api", "whoami-v2"]) => whoami(&lock(), r),
        (Method::Post, ["api", "validate-yaml"]) => Answer::json(200, json!({"errors": [], "warnings": []})),
        (Method::Post, ["api", "repos", "create"]) => create_repo(&mut lock(), r),
        (Method::Post, ["api", "models", o, n, "branch", b]) => create_branch(&mut lock(), r, &format!("{o}/{n}"), b),
        (Method::Post, ["api", "models", o, n, "preupload", rev]) => preupload(&lock(), r, &format!("{o}/{n}"), rev),
        (Method::Post, ["api", "models", o, n, "commit", rev]) => commit(&mut lock(), r, &format!("{o}/{n}"), rev),
        (Method::Get, ["api", "models", o, n]) => info(&lock(), r, &format!("{o}/{n}"), "main"),
        (Method::Get, ["api", "models", o, n, "revision", rev]) => info(&lock(), r, &format!("{o}/{n}"), rev),
        (Method::Get, ["api", "models", o, n, "tree", rev, rest @ ..]) => {
            tree(&lock(), r, &format!("{o}/{n}"), rev, &rest.join("/"))
        }
        (Method::Post, [o, n, "info", "lfs", "objects", "batch"]) if n.ends_with(".git") => {
            lfs_batch(&mut lock(), r, &format!("{o}/{}", n.trim_end_matches(".git")))
        }
        (Method::Post, [o, n, "info", "lfs", "objects", "verify"]) if n.ends_with(".git") => {
            lfs_verify(&mut lock(), r, &format!("{o}/{}", n.trim_end_matches(".git")))
        }
        (Method::Put, ["_mock", "lfs", oid]) => lfs_put(state, r, oid),
        (Method::Post, ["_mock", "lfs", oid, "complete"]) => lfs_complete(&mut lock(), r, oid),
        (Method::Get | Method::Head, ["_mock", "blobs", oid]) => {
            let mut st = lock();
            st.stats.blob_gets += 1;
            st.stats.blob_gets_with_authorization += u64::from(r.headers.contains_key("authorization"));
            st.stats.blob_gets_with_range += u64::from(r.headers.contains_key("range"));
            blob(&st, r, oid)
        }
        (Method::Get | Method::Head, [o, n, "resolve", rev, rest @ ..]) if !rest.is_empty() => {
            let mut st = lock();
            st.stats.resolve_gets += 1;
            st.stats.resolve_gets_with_token += u64::from(r.bearer().is_some());
            resolve(&st, r, &format!("{o}/{n}"), rev, &rest.join("/"))
        }
        _ => Answer::error(404, None, "Not Found"),
    }
}

fn mock_config(st: &mut State, r: &Req) -> Answer {
    let v = match r.json() {
        Ok(v) => v,
        Err(a) => return a,
    };
    if let Some(d) = v.get("put_delay_ms").and_then(Value::as_u64) {
        st.cfg.put_delay_ms = d;
    }
    if let Some(f) = v.get("fail_uploads_after") {
        st.cfg.fail_uploads_after = f.as_u64();
    }
    if let Some(list) = v.get("fail_next").and_then(Value::as_array) {
        for f in list {
            let prefix = f.get("prefix").and_then(Value::as_str).unwrap_or("/").to_string();
            let status = f.get("status").and_then(Value::as_u64).unwrap_or(503) as u16;
            let count = f.get("count").and_then(Value::as_u64).unwrap_or(1) as u32;
            st.cfg.fail_next.push((prefix, status, count));
        }
    }
    Answer::json(200, json!({}))
}

/// `Ok(user)` for a valid token, else the Hub's 401.
fn authed(st: &State, r: &Req) -> Result<String, Answer> {
    let ok = match (r.bearer(), &st.cfg.token) {
        (Some(t), Some(want)) => t == want,
        (Some(t), None) => t.starts_with("hf_"),
        (None, _) => false,
    };
    if ok {
        Ok(st.cfg.user.clone())
    } else {
        Err(Answer::error(401, None, "Invalid username or password."))
    }
}

/// The user may write to `repo`'s namespace.
fn may_write(st: &State, r: &Req, repo: &str) -> Result<(), Answer> {
    let user = authed(st, r)?;
    let ns = repo.split('/').next().unwrap_or("");
    if ns == user || st.cfg.orgs.iter().any(|o| o == ns) {
        Ok(())
    } else {
        Err(Answer::error(
            403,
            None,
            &format!("You don't have the rights to write to {repo}"),
        ))
    }
}

/// The repo, if it exists and the caller may read it; else the Hub's 401/404 `RepoNotFound`.
fn readable<'a>(st: &'a State, r: &Req, repo: &str) -> Result<&'a Repo, Answer> {
    match st.repos.get(repo) {
        Some(rp) if !rp.private || authed(st, r).is_ok() => Ok(rp),
        Some(_) => Err(Answer::error(401, Some("RepoNotFound"), "Repository not found")),
        None => Err(Answer::error(404, Some("RepoNotFound"), "Repository not found")),
    }
}

fn whoami(st: &State, r: &Req) -> Answer {
    match authed(st, r) {
        Ok(user) => Answer::json(
            200,
            json!({
                "type": "user",
                "id": "0000000000000000000000aa",
                "name": user,
                "fullname": user,
                "email": null,
                "canPay": false,
                "isPro": false,
                "orgs": st.cfg.orgs.iter().map(|o| json!({"type": "org", "name": o, "fullname": o, "roleInOrg": "write"})).collect::<Vec<_>>(),
                "auth": {"type": "access_token", "accessToken": {"displayName": "mock", "role": "write"}},
            }),
        ),
        Err(a) => a,
    }
}

fn new_commit_id(st: &mut State, salt: &str) -> String {
    st.seq += 1;
    let mut h = sha1::Sha1::new();
    h.update(format!("{}:{salt}", st.seq).as_bytes());
    hex(&h.finalize())
}

fn create_repo(st: &mut State, r: &Req) -> Answer {
    let v = match r.json() {
        Ok(v) => v,
        Err(a) => return a,
    };
    let Some(name) = v.get("name").and_then(Value::as_str) else {
        return Answer::error(400, None, "\"name\" is required");
    };
    if let Some(t) = v.get("type").and_then(Value::as_str) {
        if t != "model" {
            return Answer::error(400, None, "only model repos in this mock");
        }
    }
    let user = match authed(st, r) {
        Ok(u) => u,
        Err(a) => return a,
    };
    let ns = v
        .get("organization")
        .and_then(Value::as_str)
        .unwrap_or(&user)
        .to_string();
    let id = format!("{ns}/{name}");
    if let Err(a) = may_write(st, r, &id) {
        return a;
    }
    let url = format!("{}/{id}", r.base);
    if st.repos.contains_key(&id) {
        return Answer::json(409, json!({"error": "You already created this model repo", "url": url}))
            .with("X-Error-Message", "You already created this model repo");
    }
    let private = match v.get("visibility").and_then(Value::as_str) {
        Some(vis) => vis == "private",
        None => v.get("private").and_then(Value::as_bool).unwrap_or(false),
    };
    let sha = new_commit_id(st, &id);
    let mut files = BTreeMap::new();
    files.insert(
        ".gitattributes".to_string(),
        Entry::Regular(Arc::new(GITATTRIBUTES.as_bytes().to_vec())),
    );
    let mut repo = Repo {
        private,
        ..Repo::default()
    };
    repo.commits.insert(
        sha.clone(),
        Commit {
            files,
            summary: "initial commit".into(),
            ..Commit::default()
        },
    );
    repo.refs.insert("main".into(), sha);
    st.repos.insert(id.clone(), repo);
    Answer::json(200, json!({"url": url, "name": id, "id": id}))
}

fn create_branch(st: &mut State, r: &Req, id: &str, branch: &str) -> Answer {
    if let Err(a) = may_write(st, r, id) {
        return a;
    }
    let from = r
        .json()
        .ok()
        .and_then(|v| v.get("startingPoint").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "main".into());
    let Some(repo) = st.repos.get_mut(id) else {
        return Answer::error(404, Some("RepoNotFound"), "Repository not found");
    };
    if repo.refs.contains_key(branch) {
        return Answer::error(409, None, &format!("Reference already exists: refs/heads/{branch}"));
    }
    let Some((sha, _)) = repo.resolve(&from) else {
        return Answer::error(404, Some("RevisionNotFound"), &format!("Invalid rev id: {from}"));
    };
    let sha = sha.clone();
    repo.refs.insert(branch.to_string(), sha);
    Answer::json(200, json!({}))
}

/// The Hub's choice: LFS for what `.gitattributes` tracks, anything over 10 MB, and binary samples.
fn wants_lfs(path: &str, size: u64, sample: &[u8]) -> bool {
    const EXT: [&str; 12] = [
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".ckpt",
        ".h5",
        ".msgpack",
        ".onnx",
        ".gguf",
        ".model",
        ".zip",
        ".npy",
    ];
    EXT.iter().any(|e| path.ends_with(e)) || size > 10_000_000 || sample.contains(&0)
}

fn preupload(st: &State, r: &Req, id: &str, rev: &str) -> Answer {
    if let Err(a) = may_write(st, r, id) {
        return a;
    }
    let repo = match readable(st, r, id) {
        Ok(x) => x,
        Err(a) => return a,
    };
    let Some((_, head)) = repo.resolve(rev) else {
        return Answer::error(404, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"));
    };
    let v = match r.json() {
        Ok(v) => v,
        Err(a) => return a,
    };
    let Some(files) = v.get("files").and_then(Value::as_array) else {
        return Answer::error(400, None, "\"files\" is required");
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for f in files {
        let (Some(path), Some(size), Some(sample)) = (
            f.get("path").and_then(Value::as_str),
            f.get("size").and_then(Value::as_u64),
            f.get("sample").and_then(Value::as_str),
        ) else {
            return Answer::error(400, None, "each file needs path, size and sample");
        };
        let Ok(sample) = b64.decode(sample) else {
            return Answer::error(400, None, "sample is not base64");
        };
        let lfs = wants_lfs(path, size, &sample);
        out.push(json!({
            "path": path,
            "uploadMode": if lfs { "lfs" } else { "regular" },
            "shouldIgnore": false,
            "oid": head.files.get(path).map(Entry::oid),
        }));
    }
    Answer::json(200, json!({ "files": out }))
}

fn lfs_batch(st: &mut State, r: &Req, id: &str) -> Answer {
    if let Err(a) = may_write(st, r, id) {
        return a;
    }
    if !st.repos.contains_key(id) {
        return Answer::error(404, Some("RepoNotFound"), "Repository not found");
    }
    st.stats.batches += 1;
    let v = match r.json() {
        Ok(v) => v,
        Err(a) => return a,
    };
    if v.get("operation").and_then(Value::as_str) != Some("upload") {
        return Answer::error(400, None, "only the upload operation");
    }
    let Some(objects) = v.get("objects").and_then(Value::as_array) else {
        return Answer::error(400, None, "\"objects\" is required");
    };
    let mut out = Vec::new();
    for o in objects {
        let (Some(oid), Some(size)) = (
            o.get("oid").and_then(Value::as_str),
            o.get("size").and_then(Value::as_u64),
        ) else {
            return Answer::error(400, None, "each object needs oid and size");
        };
        if oid.len() != 64 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(json!({"oid": oid, "size": size, "error": {"code": 422, "message": "invalid oid"}}));
            continue;
        }
        if st.lfs.get(oid).is_some_and(|b| b.len() as u64 == size) {
            out.push(json!({"oid": oid, "size": size}));
            continue;
        }
        let verify = json!({"href": format!("{}/{id}.git/info/lfs/objects/verify", r.base), "header": {}});
        let chunk = st.cfg.chunk_size.max(1);
        let upload = if size > chunk {
            let mut header = serde_json::Map::new();
            header.insert("chunk_size".into(), json!(chunk.to_string()));
            for i in 1..=size.div_ceil(chunk) {
                header.insert(
                    i.to_string(),
                    json!(format!("{}/_mock/lfs/{oid}?part={i}&size={size}&sig=x", st.cdn)),
                );
            }
            json!({"href": format!("{}/_mock/lfs/{oid}/complete?size={size}&sig=x", r.base), "header": header})
        } else {
            json!({"href": format!("{}/_mock/lfs/{oid}?size={size}&sig=x", st.cdn), "header": {}})
        };
        out.push(
            json!({"oid": oid, "size": size, "authenticated": true, "actions": {"upload": upload, "verify": verify}}),
        );
    }
    let mut a = Answer::json(200, json!({"transfer": "basic", "objects": out, "hash_algo": "sha256"}));
    a.headers[0].1 = "application/vnd.git-lfs+json".into();
    a
}

fn lfs_put(state: &Mutex<State>, r: &Req, oid: &str) -> Answer {
    let delay = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.stats.puts += 1;
        if r.headers.contains_key("authorization") {
            st.stats.puts_with_authorization += 1;
        }
        if st.cfg.fail_uploads_after.is_some_and(|n| st.stats.objects_stored >= n) {
            st.stats.injected_failures += 1;
            return Answer::error(400, None, "simulated interruption");
        }
        st.cfg.put_delay_ms
    };
    std::thread::sleep(std::time::Duration::from_millis(delay));
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let size: Option<u64> = r.query.get("size").and_then(|s| s.parse().ok());
    if let Some(part) = r.query.get("part").and_then(|s| s.parse::<u64>().ok()) {
        st.stats.part_puts += 1;
        let etag = format!("\"{}\"", &hex(&sha2::Sha256::digest(&r.body))[..32]);
        st.parts
            .entry(oid.to_string())
            .or_default()
            .insert(part, r.body.clone());
        return Answer::json(200, json!({})).with("ETag", etag);
    }
    if Some(r.body.len() as u64) != size || hex(&sha2::Sha256::digest(&r.body)) != oid {
        return Answer::error(400, None, "body does not match the object's size and sha256");
    }
    store(&mut st, oid, r.body.clone());
    Answer::json(200, json!({})).with("ETag", format!("\"{}\"", &oid[..32]))
}

fn store(st: &mut State, oid: &str, bytes: Vec<u8>) {
    if st.lfs.insert(oid.to_string(), Arc::new(bytes)).is_none() {
        st.stats.objects_stored += 1;
        st.stats.stored_oids.push(oid.to_string());
    }
}

fn lfs_complete(st: &mut State, r: &Req, oid: &str) -> Answer {
    st.stats.completions += 1;
    let v = match r.json() {
        Ok(v) => v,
        Err(a) => return a,
    };
    if v.get("oid").and_then(Value::as_str) != Some(oid) {
        return Answer::error(400, None, "oid does not match the completion URL");
    }
    let Some(parts) = v.get("parts").and_then(Value::as_array) else {
        return Answer::error(400, None, "\"parts\" is required");
    };
    let Some(have) = st.parts.remove(oid) else {
        return Answer::error(400, None, "no parts uploaded");
    };
    let mut bytes = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let n = p.get("partNumber").and_then(Value::as_u64);
        let etag = p.get("etag").and_then(Value::as_str).unwrap_or("");
        let Some(data) = n.filter(|&n| n == i as u64 + 1).and_then(|n| have.get(&n)) else {
            return Answer::error(400, None, &format!("part {} missing or out of order", i + 1));
        };
        if etag != format!("\"{}\"", &hex(&sha2::Sha256::digest(data))[..32]) {
            return Answer::error(400, None, &format!("part {}: ETag mismatch", i + 1));
        }
        bytes.extend_from_slice(data);
    }
    let size: Option<u64> = r.query.get("size").and_then(|s| s.parse().ok());
    if parts.len() != have.len() || Some(bytes.len() as u64) != size || hex(&sha2::Sha256::digest(&bytes)) != oid {
        return Answer::error(400, None, "assembled object does not match its size and sha256");
    }
    store(st, oid, bytes);
    Answer::json(200, json!({}))
}

fn lfs_verify(st: &mut State, r: &Req, id: &str) -> Answer {
    if let Err(a) = may_write(st, r, id) {
        return a;
    }
    st.stats.verifies += 1;
    let v = match r.json() {
        Ok(v) => v,
        Err(a) => return a,
    };
    let (oid, size) = (
        v.get("oid").and_then(Value::as_str),
        v.get("size").and_then(Value::as_u64),
    );
    match oid.and_then(|o| st.lfs.get(o)) {
        Some(b) if Some(b.len() as u64) == size => Answer::json(200, json!({})),
        _ => Answer::error(404, None, "object not found or size mismatch"),
    }
}

fn commit(st: &mut State, r: &Req, id: &str, rev: &str) -> Answer {
    if let Err(a) = may_write(st, r, id) {
        return a;
    }
    if !r
        .headers
        .get("content-type")
        .is_some_and(|c| c.starts_with("application/x-ndjson"))
    {
        return Answer::error(400, None, "expected Content-Type application/x-ndjson");
    }
    let mut lines = Vec::new();
    for l in r.body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Value>(l) {
            Ok(v) => lines.push(v),
            Err(e) => return Answer::error(400, None, &format!("invalid NDJSON line: {e}")),
        }
    }
    let Some(header) = lines
        .first()
        .filter(|h| h["key"] == "header")
        .map(|h| h["value"].clone())
    else {
        return Answer::error(400, None, "the first line must be the header");
    };
    let summary = header["summary"].as_str().unwrap_or("").to_string();
    if summary.is_empty() {
        return Answer::error(400, None, "summary is required");
    }
    let create_pr = r.query.get("create_pr").is_some_and(|v| v == "1");
    let Some(repo) = st.repos.get(id) else {
        return Answer::error(404, Some("RepoNotFound"), "Repository not found");
    };
    let Some((head_sha, head)) = repo.resolve(rev) else {
        return Answer::error(404, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"));
    };
    if let Some(parent) = header["parentCommit"].as_str() {
        if parent != head_sha {
            return Answer::error(412, None, "A commit has happened since. Please refresh and try again.");
        }
    }
    let (head_sha, mut files) = (head_sha.clone(), head.files.clone());
    let b64 = base64::engine::general_purpose::STANDARD;
    for l in &lines[1..] {
        let v = &l["value"];
        let path = v["path"].as_str().unwrap_or("").to_string();
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|s| s == ".." || s.is_empty()) {
            return Answer::error(400, None, &format!("invalid path `{path}`"));
        }
        match l["key"].as_str() {
            Some("file") => {
                let Ok(content) = b64.decode(v["content"].as_str().unwrap_or("")) else {
                    return Answer::error(400, None, &format!("{path}: content is not base64"));
                };
                files.insert(path, Entry::Regular(Arc::new(content)));
            }
            Some("lfsFile") => {
                let (oid, size) = (v["oid"].as_str().unwrap_or(""), v["size"].as_u64());
                if v["algo"] != "sha256" {
                    return Answer::error(400, None, &format!("{path}: algo must be sha256"));
                }
                if st.lfs.get(oid).is_none_or(|b| Some(b.len() as u64) != size) {
                    return Answer::error(
                        422,
                        None,
                        &format!("Your push was rejected because an LFS pointer pointed to a file that does not exist: {path}"),
                    );
                }
                files.insert(
                    path,
                    Entry::Lfs {
                        oid: oid.to_string(),
                        size: size.unwrap_or(0),
                    },
                );
            }
            Some("deletedFile") => {
                if files.remove(&path).is_none() {
                    return Answer::error(
                        404,
                        Some("EntryNotFound"),
                        &format!("A file with this name doesn't exist: {path}"),
                    );
                }
            }
            Some("deletedFolder") => files.retain(|k, _| !k.starts_with(&format!("{path}/"))),
            other => return Answer::error(400, None, &format!("unknown key {other:?}")),
        }
    }
    let sha = new_commit_id(st, &summary);
    st.stats.commits += 1;
    let repo = st.repos.get_mut(id).expect("checked above");
    repo.commits.insert(
        sha.clone(),
        Commit {
            files,
            summary,
            description: header["description"].as_str().unwrap_or("").to_string(),
            parent: Some(head_sha),
        },
    );
    let mut answer = json!({
        "success": true,
        "commitOid": sha,
        "commitUrl": format!("{}/{id}/commit/{sha}", r.base),
        "hookOutput": "",
    });
    if create_pr {
        repo.prs += 1;
        let n = repo.prs;
        repo.refs.insert(format!("refs/pr/{n}"), sha);
        answer["pullRequestUrl"] = json!(format!("{}/{id}/discussions/{n}", r.base));
    } else {
        repo.refs.insert(rev.to_string(), sha);
    }
    Answer::json(200, answer)
}

fn info(st: &State, r: &Req, id: &str, rev: &str) -> Answer {
    let repo = match readable(st, r, id) {
        Ok(x) => x,
        Err(a) => return a,
    };
    let Some((sha, c)) = repo.resolve(rev) else {
        return Answer::error(404, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"));
    };
    let (author, _) = id.split_once('/').unwrap_or((id, ""));
    Answer::json(
        200,
        json!({
            "_id": "0000000000000000000000bb",
            "id": id,
            "modelId": id,
            "author": author,
            "sha": sha,
            "private": repo.private,
            "disabled": false,
            "gated": false,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": "transformers",
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": c.files.keys().map(|f| json!({"rfilename": f})).collect::<Vec<_>>(),
        }),
    )
    .with("X-Repo-Commit", sha.clone())
}

/// `GET /api/models/{repo}/tree/{rev}[/{path}][?recursive=true]`: one page with every entry.
fn tree(st: &State, r: &Req, id: &str, rev: &str, under: &str) -> Answer {
    let repo = match readable(st, r, id) {
        Ok(x) => x,
        Err(a) => return a,
    };
    let Some((_, c)) = repo.resolve(rev) else {
        return Answer::error(404, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"));
    };
    let recursive = r.query.get("recursive").is_some_and(|v| v == "true" || v == "1");
    let prefix = if under.is_empty() {
        String::new()
    } else {
        format!("{under}/")
    };
    let mut dirs = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (path, e) in &c.files {
        let Some(rest) = path.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        for i in 1..parts.len() {
            if recursive || i == 1 {
                dirs.insert(format!("{prefix}{}", parts[..i].join("/")));
            }
        }
        if !recursive && parts.len() > 1 {
            continue;
        }
        let mut v = json!({"type": "file", "path": path, "size": e.size(), "oid": git_blob_oid(&match e {
            Entry::Regular(b) => b.to_vec(),
            Entry::Lfs { oid, size } => format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n").into_bytes(),
        })});
        if let Entry::Lfs { oid, size } = e {
            v["lfs"] = json!({"oid": oid, "size": size, "pointerSize": 134});
        }
        out.push(v);
    }
    let mut all: Vec<Value> = dirs
        .into_iter()
        .map(|d| json!({"type": "directory", "path": d, "oid": git_blob_oid(d.as_bytes()), "size": 0}))
        .collect();
    all.extend(out);
    Answer::json(200, Value::Array(all))
}

fn resolve(st: &State, r: &Req, id: &str, rev: &str, path: &str) -> Answer {
    let repo = match readable(st, r, id) {
        Ok(x) => x,
        Err(a) => return a,
    };
    let Some((sha, c)) = repo.resolve(rev) else {
        return Answer::error(404, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"));
    };
    match c.files.get(path) {
        None => Answer::error(404, Some("EntryNotFound"), &format!("Entry not found: {path}"))
            .with("X-Repo-Commit", sha.clone()),
        Some(Entry::Regular(bytes)) => ranged(r, bytes)
            .with("ETag", format!("\"{}\"", git_blob_oid(bytes)))
            .with("X-Repo-Commit", sha.clone()),
        Some(Entry::Lfs { oid, size }) => {
            let pointer = format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n");
            let location = format!("{}/_mock/blobs/{oid}", st.cdn);
            Answer {
                status: 302,
                headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
                body: format!("Found. Redirecting to {location}").into_bytes(),
            }
            .with("Location", location)
            .with("ETag", format!("\"{}\"", git_blob_oid(pointer.as_bytes())))
            .with("X-Linked-Etag", format!("\"{oid}\""))
            .with("X-Linked-Size", size.to_string())
            .with("X-Repo-Commit", sha.clone())
        }
    }
}

fn blob(st: &State, r: &Req, oid: &str) -> Answer {
    match st.lfs.get(oid) {
        Some(b) => ranged(r, b).with("ETag", format!("\"{oid}\"")),
        None => Answer::error(404, None, "NoSuchKey"),
    }
}

/// 200 with the whole body, or 206 for `Range: bytes=a-[b]`.
fn ranged(r: &Req, bytes: &[u8]) -> Answer {
    let n = bytes.len() as u64;
    let range = r
        .headers
        .get("range")
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| {
            let (a, b) = v.split_once('-')?;
            let a: u64 = a.parse().ok()?;
            let b: u64 = if b.is_empty() {
                n.checked_sub(1)?
            } else {
                b.parse::<u64>().ok()?.min(n.checked_sub(1)?)
            };
            (a <= b).then_some((a, b))
        });
    let a = match range {
        Some((a, b)) => Answer {
            status: 206,
            headers: vec![("Content-Range", format!("bytes {a}-{b}/{n}"))],
            body: bytes[a as usize..=b as usize].to_vec(),
        },
        None if r.headers.contains_key("range") && n == 0 => Answer {
            status: 200,
            headers: vec![],
            body: Vec::new(),
        },
        None => Answer {
            status: 200,
            headers: vec![],
            body: bytes.to_vec(),
        },
    };
    a.with("Accept-Ranges", "bytes")
        .with("Content-Type", "application/octet-stream")
}

/// Percent-decodes a path segment or query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn git_blob_oid(content: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex(&h.finalize())
}

/// What the Hub puts in a new repo's first commit.
const GITATTRIBUTES: &str = "*.bin filter=lfs diff=lfs merge=lfs -text\n*.gguf filter=lfs diff=lfs merge=lfs -text\n*.model filter=lfs diff=lfs merge=lfs -text\n*.pt filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n";

fn main() {
    let mut cfg = Config::default();
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--port" => port = val().parse().unwrap_or_else(|_| usage("--port: a number")),
            "--user" => cfg.user = val(),
            "--org" => cfg.orgs.push(val()),
            "--token" => cfg.token = Some(val()),
            "--chunk-size" => cfg.chunk_size = val().parse().unwrap_or_else(|_| usage("--chunk-size: bytes")),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    let hub = MockHub::start(port, cfg).unwrap_or_else(|e| {
        eprintln!("mock-hub: {e}");
        std::process::exit(1)
    });
    println!("{}", hub.url);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("mock-hub: {msg}");
    }
    eprintln!("usage: mock-hub [--port N] [--user NAME] [--org NAME]... [--token TOKEN] [--chunk-size BYTES]");
    std::process::exit(2)
}
