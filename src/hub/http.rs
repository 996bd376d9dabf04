//! One HTTP client for every Hub call we make ourselves (hf-hub does its own downloads): the
//! token goes only to the Hub endpoint, never to presigned upload URLs; 408, 429, 5xx and
//! transport errors are retried with backoff as `huggingface_hub.utils.http_backoff` does
//! (1, 2, 4, 8 s; [`super::HubConfig::tries`], five by default; `Retry-After` honoured up to 30 s); a final error status becomes
//! [`Error::HubHttp`] with the server's message.

use std::time::Duration;

use ureq::http::Response;
use ureq::{Agent, Body};

use super::{HubConfig, Token};
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
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .user_agent(format!("loraweld/{}; rust/ureq", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
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
        mut attempt: impl FnMut(&Agent) -> std::result::Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>> {
        let mut wait = BASE_WAIT;
        let tries = self.tries;
        for n in 1..=tries {
            match attempt(&self.agent) {
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
fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
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
}
