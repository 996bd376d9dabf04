//! One HTTP client for every Hub call, uploads and downloads: the token goes only to the Hub
//! endpoint's origin, never to presigned upload URLs nor to the storage origin a download is
//! redirected to (redirects are followed by [`super::download`], not by ureq); 408, 429, 5xx and
//! transport errors are retried with backoff as `huggingface_hub.utils.http_backoff` does
//! (1, 2, 4, 8 s; [`super::HubConfig::tries`], five by default; `Retry-After` honoured up to 30 s); a final error status becomes
//! [`Error::HubHttp`] with the server's message.

use std::time::Duration;

use ureq::http::Response;
use ureq::{Agent, Body};

use super::config::{HubConfig, Token};
use crate::error::{Error, Result};

/// The first wait; doubled each retry.
const BASE_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between tries.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Statuses worth retrying: the request may succeed as is a moment later.
pub(crate) fn is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// The client: an agent that returns error statuses as responses, plus the token.
pub(crate) struct Client {
    agent: Agent,
    /// The same agent without redirects: downloads follow `Location` themselves, to decide per
    /// hop whether the token may go along.
    no_redirect: Agent,
    token: Option<Token>,
    tries: u32,
    /// The endpoint, for building API URLs.
    pub endpoint: String,
    /// The repo every error names.
    pub repo: String,
}

impl Client {
    /// A client for `repo` on the configured endpoint.
    pub fn new(cfg: &HubConfig, repo: &str) -> Self {
        let agent = |max_redirects: u32| -> Agent {
            Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(max_redirects)
                .timeout_connect(Some(Duration::from_secs(30)))
                .timeout_recv_response(Some(Duration::from_secs(300)))
                .user_agent(user_agent())
                .build()
                .into()
        };
        Client {
            agent: agent(10),
            no_redirect: agent(0),
            token: cfg.token.clone(),
            tries: cfg.tries.max(1),
            endpoint: cfg.endpoint.clone(),
            repo: repo.to_string(),
        }
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The `Authorization` header for Hub API calls, if we have a token. Presigned upload URLs
    /// get none: like `huggingface_hub`, the token goes to the Hub only.
    pub fn auth_header(&self) -> Option<String> {
        self.token.as_ref().map(Token::bearer)
    }

    /// Runs `attempt` until it gets a non-retryable answer, with backoff between tries.
    /// Returns the response whatever its status; [`Client::check`] turns errors into [`Error`].
    pub fn run(
        &self,
        op: &'static str,
        url: &str,
        attempt: impl FnMut(&Agent) -> std::result::Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>> {
        self.run_on(&self.agent, op, url, attempt)
    }

    /// GET `url` without following redirects (a 3xx comes back as is), retried like
    /// [`Client::run`], unchecked. The token goes along only when `url` is on the endpoint's
    /// origin; `range_from` asks for the bytes from there on.
    pub fn get_no_redirect(&self, op: &'static str, url: &str, range_from: Option<u64>) -> Result<Response<Body>> {
        let auth = self.auth_header().filter(|_| same_origin(url, &self.endpoint));
        self.run_on(&self.no_redirect, op, url, |a| {
            let mut rq = a.get(url);
            if let Some(h) = &auth {
                rq = rq.header("authorization", h);
            }
            if let Some(n) = range_from {
                rq = rq.header("range", format!("bytes={n}-"));
            }
            rq.call()
        })
    }

    fn run_on(
        &self,
        agent: &Agent,
        op: &'static str,
        url: &str,
        mut attempt: impl FnMut(&Agent) -> std::result::Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>> {
        let mut wait = BASE_WAIT;
        let tries = self.tries;
        for n in 1..=tries {
            match attempt(agent) {
                Ok(r) if n < tries && is_retryable(r.status().as_u16()) => {
                    let after = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    std::thread::sleep(after.unwrap_or(wait).min(MAX_WAIT));
                }
                Ok(r) => return Ok(r),
                Err(e) if n < tries && is_transient(&e) => std::thread::sleep(wait),
                Err(e) => {
                    return Err(Error::HubUnreachable {
                        repo: self.repo.clone(),
                        op,
                        url: strip_query(url),
                        source: Box::new(e),
                    })
                }
            }
            wait = (wait * 2).min(Duration::from_secs(8));
        }
        unreachable!("the last try returns")
    }

    /// Passes a 2xx response through; turns any other status into [`Error::HubHttp`].
    pub fn check(&self, op: &'static str, mut r: Response<Body>) -> Result<Response<Body>> {
        let status = r.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(r);
        }
        let header = r
            .headers()
            .get("x-error-message")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = r
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let from_json = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
        let mut message = header.or(from_json).unwrap_or(body).trim().replace('\n', " ");
        if message.chars().count() > 300 {
            message = message.chars().take(300).collect::<String>() + "…";
        }
        if status == 401 && self.token.is_none() {
            message.push_str(" (no token was sent: pass --token or set HF_TOKEN for a private or gated repo)");
        }
        Err(Error::HubHttp {
            repo: self.repo.clone(),
            op,
            status,
            message,
        })
    }

    /// Reads a JSON body, naming `op` when it is not JSON of the expected shape.
    pub fn json<T: serde::de::DeserializeOwned>(&self, op: &'static str, mut r: Response<Body>) -> Result<T> {
        let text = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.protocol(op, format!("reading the body: {e}")))?;
        serde_json::from_str(&text).map_err(|e| self.protocol(op, e))
    }

    /// A [`Error::HubProtocol`] for this repo.
    pub fn protocol(&self, op: &'static str, what: impl std::fmt::Display) -> Error {
        Error::HubProtocol {
            repo: self.repo.clone(),
            op,
            what: what.to_string(),
        }
    }

    /// GET a Hub API URL with the token, retried, checked, parsed.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, op: &'static str, url: &str) -> Result<T> {
        let auth = self.auth_header();
        let r = self.run(op, url, |a| {
            let mut rq = a.get(url);
            if let Some(h) = &auth {
                rq = rq.header("authorization", h);
            }
            rq.call()
        })?;
        let r = self.check(op, r)?;
        self.json(op, r)
    }

    /// POST JSON to a Hub API URL with the token; returns the raw (unchecked) response so callers
    /// can treat some statuses (409 on create) as success.
    pub fn post_json_raw(
        &self,
        op: &'static str,
        url: &str,
        content_type: &str,
        body: &serde_json::Value,
    ) -> Result<Response<Body>> {
        let auth = self.auth_header();
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?;
        self.run(op, url, |a| {
            let mut rq = a.post(url).header("content-type", content_type);
            if content_type.starts_with("application/vnd.git-lfs") {
                rq = rq.header("accept", content_type);
            }
            if let Some(h) = &auth {
                rq = rq.header("authorization", h);
            }
            rq.send(&bytes[..])
        })
    }
}

/// Connection resets, refused connections and timeouts may pass; protocol errors won't.
fn is_transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound
    )
}

/// A URL without its query (presigned URLs carry signatures there).
pub(crate) fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// What every request sends as `User-Agent`.
pub(crate) fn user_agent() -> String {
    format!("loraweld/{}; rust/ureq", env!("CARGO_PKG_VERSION"))
}

/// Scheme, host and port of an absolute URL (lowercase; the scheme's default port filled in).
fn origin(url: &str) -> Option<(String, String, u16)> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let port = match (uri.port_u16(), scheme.as_str()) {
        (Some(p), _) => p,
        (None, "http") => 80,
        (None, "https") => 443,
        (None, _) => return None,
    };
    Some((scheme, host, port))
}

/// Whether `url` has the same origin (scheme, host, port) as `endpoint`: where the token may go.
/// Anything unparsable is another origin.
pub(crate) fn same_origin(url: &str, endpoint: &str) -> bool {
    match (origin(url), origin(endpoint)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Where a `Location` header sends a request for `base`: an absolute URL as is, a
/// scheme-relative one with `base`'s scheme, a path on `base`'s origin, or a path relative to
/// `base`'s directory.
pub(crate) fn resolve_location(base: &str, location: &str) -> String {
    let location = location.trim();
    if location.contains("://") && !location.starts_with('/') {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    if let Some(l) = location.strip_prefix("//") {
        return format!("{scheme}://{l}");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = rest[authority.len()..].split(['?', '#']).next().unwrap_or("");
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{scheme}://{authority}{dir}{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_what_huggingface_hub_retries() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 422, 501] {
            assert!(!is_retryable(s), "{s}");
        }
        assert_eq!(strip_query("http://h/x?sig=secret"), "http://h/x");
    }

    #[test]
    fn the_token_goes_to_the_endpoint_origin_only() {
        let hub = "https://huggingface.co";
        assert!(same_origin("https://huggingface.co/a/b/resolve/x/f", hub));
        assert!(same_origin("https://HuggingFace.co:443/api", hub));
        assert!(!same_origin("https://cdn-lfs.huggingface.co/x", hub));
        assert!(!same_origin("http://huggingface.co/x", hub));
        assert!(!same_origin("https://huggingface.co:8443/x", hub));
        assert!(!same_origin("https://huggingface.co.evil.example/x", hub));
        assert!(!same_origin("https://huggingface.co@evil.example/x", hub));
        assert!(!same_origin("not a url", hub));
        assert!(same_origin("http://127.0.0.1:8080/x", "http://127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8081/x", "http://127.0.0.1:8080"));
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let base = "http://127.0.0.1:9/me/m/resolve/abc/f.json?x=1";
        assert_eq!(
            resolve_location(base, "https://cdn.example/b?sig=1"),
            "https://cdn.example/b?sig=1"
        );
        assert_eq!(resolve_location(base, "//cdn.example/b"), "http://cdn.example/b");
        assert_eq!(
            resolve_location(base, "/api/resolve-cache/x"),
            "http://127.0.0.1:9/api/resolve-cache/x"
        );
        assert_eq!(
            resolve_location(base, "g.json"),
            "http://127.0.0.1:9/me/m/resolve/abc/g.json"
        );
        assert_eq!(resolve_location("http://h:1", "x"), "http://h:1/x");
    }
}
