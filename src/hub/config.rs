//! What every Hub call needs: the configuration read once from the environment, the token
//! (never printed), repo ids with their revision, and URL path segments.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::progress::ProgressHook;

/// Tries per request, as `http_backoff(max_retries=5)` counts them (the first try included).
pub const DEFAULT_TRIES: u32 = 5;

/// The default endpoint, as `huggingface_hub`'s `constants.ENDPOINT`.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// An access token. Its `Debug` is redacted so it can't leak through a `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token; surrounding whitespace (a trailing newline in a token file) is dropped.
    /// An empty token is no token.
    pub fn new(s: &str) -> Option<Self> {
        let t = s.trim();
        (!t.is_empty()).then(|| Token(t.to_string()))
    }

    /// The `Authorization` header value.
    pub(crate) fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// How to reach the Hub and where its cache is: everything read from the environment.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `HF_ENDPOINT`, without a trailing slash. Default `https://huggingface.co`.
    pub endpoint: String,
    /// The hub cache (`models--owner--name/{blobs,refs,snapshots}`), shared with Python.
    pub cache_dir: PathBuf,
    /// The token, if any.
    pub token: Option<Token>,
    /// `HF_HUB_OFFLINE=1`: use the cache only.
    pub offline: bool,
    /// Where download and upload progress goes (the CLI draws bars on a terminal).
    pub progress: Option<ProgressHook>,
    /// Tries per request when the answer is 408, 429, 5xx or a transport error.
    pub tries: u32,
}

impl HubConfig {
    /// Reads the environment, the one place the Hub settings come from. `explicit_token` is
    /// `--token`, which wins over `HF_TOKEN` and the token file.
    pub fn from_env(explicit_token: Option<&str>) -> Self {
        Self::from_vars(explicit_token, |k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// [`HubConfig::from_env`] over any variable lookup (for tests). Paths follow
    /// `huggingface_hub.constants`: `HF_HOME` = `$XDG_CACHE_HOME/huggingface` or
    /// `~/.cache/huggingface`; the cache is `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else
    /// `$HF_HOME/hub`; the token file is `HF_TOKEN_PATH`, else `$HF_HOME/token`.
    pub fn from_vars(explicit_token: Option<&str>, var: impl Fn(&str) -> Option<String>) -> Self {
        let home = var("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_path = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("token"));
        let token = explicit_token
            .and_then(Token::new)
            .or_else(|| var("HF_TOKEN").as_deref().and_then(Token::new))
            .or_else(|| {
                std::fs::read_to_string(&token_path)
                    .ok()
                    .as_deref()
                    .and_then(Token::new)
            });
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        HubConfig {
            endpoint,
            cache_dir,
            token,
            offline,
            progress: None,
            tries: DEFAULT_TRIES,
        }
    }
}

/// `huggingface_hub`'s `_is_true`: `1`, `ON`, `YES`, `TRUE`, any case.
fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

/// A model repo on the Hub and a revision: `owner/name` or `owner/name@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// `owner/name`.
    pub id: String,
    /// A branch, tag, `refs/pr/N` or commit; `main` when not given.
    pub revision: String,
}

impl RepoRef {
    /// Parses `owner/name[@revision]` with the Hub's rules for names (`validate_repo_id`):
    /// letters, digits, `-`, `_`, `.`; at most 96 characters; no `--` or `..`; no leading or
    /// trailing `-`/`.`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why| Error::BadRepoId { id: s.to_string(), why };
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev),
            Some(_) => return Err(bad("empty revision after `@`")),
            None => (s, "main"),
        };
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() != 2 {
            return Err(bad("expected `owner/name`"));
        }
        for p in &parts {
            if p.is_empty() || p.len() > 96 {
                return Err(bad("each part must be 1 to 96 characters"));
            }
            if !p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(bad("only letters, digits, `-`, `_` and `.` are allowed"));
            }
            if p.contains("--") || p.contains("..") {
                return Err(bad("`--` and `..` are not allowed"));
            }
            if p.starts_with(['-', '.']) || p.ends_with(['-', '.']) {
                return Err(bad("a part may not start or end with `-` or `.`"));
            }
        }
        if revision.contains("..") || revision.starts_with('/') || revision.contains(char::is_whitespace) {
            return Err(bad("malformed revision"));
        }
        Ok(RepoRef {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// Whether `s` reads as a repo id (used only when `s` is not an existing directory).
    pub fn looks_like(s: &str) -> bool {
        Self::parse(s).is_ok()
    }

    /// The revision as a URL path segment (`refs/pr/1` → `refs%2Fpr%2F1`).
    pub(crate) fn revision_in_path(&self) -> String {
        encode_segment(&self.revision)
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.revision == "main" {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{}@{}", self.id, self.revision)
        }
    }
}

/// Percent-encodes one URL path segment as `urllib.parse.quote(s, safe="")` does.
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A throwaway HTTP server for the hostile tests: answers each request whose path starts with a
/// given prefix with a fixed raw response (status line, headers, body), 404 otherwise.
#[cfg(test)]
pub(crate) mod fake {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// Serves `routes` on a free loopback port until the test ends; returns its URL.
    pub fn serve(routes: Vec<(&'static str, String)>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let mut h = String::new();
                while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let answer = routes
                    .iter()
                    .find(|(p, _)| path.starts_with(p))
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(|| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into());
                let _ = (&s).write_all(answer.as_bytes());
            }
        });
        url
    }

    /// A raw `200 OK` with a body and extra header lines.
    pub fn ok(body: &str, headers: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
            body.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)], explicit: Option<&str>) -> HubConfig {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubConfig::from_vars(explicit, |k| m.get(k).cloned())
    }

    #[test]
    fn repo_ids_follow_the_hub_rules() {
        let r = RepoRef::parse("unsloth/llama-3-8b-bnb-4bit").unwrap();
        assert_eq!(
            (r.id.as_str(), r.revision.as_str()),
            ("unsloth/llama-3-8b-bnb-4bit", "main")
        );
        let r = RepoRef::parse("me/model@refs/pr/3").unwrap();
        assert_eq!(r.revision, "refs/pr/3");
        assert_eq!(r.revision_in_path(), "refs%2Fpr%2F3");
        for bad in [
            "gpt2", "a/b/c", "a/", "a--b/c", "a/b..c", "-a/b", "a/b@", "a/b c", "../x",
        ] {
            assert!(matches!(RepoRef::parse(bad), Err(Error::BadRepoId { .. })), "{bad}");
        }
    }

    #[test]
    fn token_order_is_flag_env_file() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().to_str().unwrap();
        std::fs::write(d.path().join("token"), "hf_file\n").unwrap();
        let c = cfg(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")], Some("hf_flag"));
        assert_eq!(c.token, Token::new("hf_flag"));
        let c = cfg(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")], None);
        assert_eq!(c.token, Token::new("hf_env"));
        let c = cfg(&[("HF_HOME", home)], None);
        assert_eq!(c.token, Token::new("hf_file"));
        std::fs::write(d.path().join("other"), "hf_other").unwrap();
        let other = d.path().join("other");
        let c = cfg(&[("HF_HOME", home), ("HF_TOKEN_PATH", other.to_str().unwrap())], None);
        assert_eq!(c.token, Token::new("hf_other"));
        assert_eq!(format!("{:?}", c.token), "Some(Token(***))");
    }

    #[test]
    fn cache_and_endpoint_follow_huggingface_hub() {
        let c = cfg(&[("HOME", "/h")], None);
        assert_eq!(c.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(c.endpoint, "https://huggingface.co");
        assert!(!c.offline);
        let c = cfg(
            &[
                ("HF_HOME", "/hf"),
                ("HF_ENDPOINT", "http://127.0.0.1:9/"),
                ("HF_HUB_OFFLINE", "1"),
            ],
            None,
        );
        assert_eq!(c.cache_dir, PathBuf::from("/hf/hub"));
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert!(c.offline);
        let c = cfg(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")], None);
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
    }
}
