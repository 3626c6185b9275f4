//! Blocking HTTP to the master's `/api/v1`. Every failure becomes an [`Error`]:
//! no connection → [`Error::Unreachable`] naming the URL; an error answer →
//! [`Error::Api`] carrying the master's `ApiError.message`. A context may name
//! several masters of one cluster (comma-separated): a request that finds one
//! unreachable, or answered 5xx, is sent to the next.

use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::{RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmlet_api::protocol::{ApiError, List};

use crate::config::Connection;
use crate::{Error, Result};

/// Ordinary requests; watches, drains and log streams set their own.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    /// The masters, `https://host:port` without `/api/v1`, as the context lists them.
    masters: Vec<String>,
    /// The one requests go to now.
    current: std::sync::atomic::AtomicUsize,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

impl Client {
    pub fn new(connection: &Connection) -> Result<Client> {
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(None)
            .user_agent(concat!("wasmlet/", env!("CARGO_PKG_VERSION")))
            // Only the cluster's own CA is trusted, never the system's.
            .tls_built_in_root_certs(false);
        if let Some(pem) = &connection.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| Error::Usage(format!("the context's certificate authority is not a PEM certificate: {e}")))?;
            builder = builder.add_root_certificate(ca);
        }
        let http = builder.build().map_err(|e| Error::Failed(format!("cannot set up HTTP: {e}")))?;
        let masters: Vec<String> =
            connection.master.split(',').map(|m| m.trim().trim_end_matches('/').to_string()).filter(|m| !m.is_empty()).collect();
        if masters.is_empty() {
            return Err(Error::Usage("the master's URL is empty".into()));
        }
        Ok(Client { masters, current: Default::default(), token: connection.token.clone(), http })
    }

    /// The master requests go to now.
    pub fn master(&self) -> &str {
        &self.masters[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.masters.len()]
    }

    /// A request to `/api/v1{path}` (or to `path` itself when it starts with `/healthz` etc.).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let master = self.master();
        let url = if path.starts_with("/api/") || !path.starts_with('/') || is_root_path(path) {
            format!("{master}{path}")
        } else {
            format!("{master}/api/v1{path}")
        };
        let builder = self.http.request(method, url).timeout(REQUEST_TIMEOUT);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends and turns a non-success answer into [`Error::Api`]; with several
    /// masters, tries the next one after a failure to connect or a 5xx.
    pub fn send(&self, request: RequestBuilder) -> Result<Response> {
        let mut request = request.build().map_err(|e| self.transport(e))?;
        for _ in 1..self.masters.len() {
            let Some(again) = request.try_clone() else { break };
            let from = self.master().to_string();
            let failed = match self.http.execute(again) {
                Ok(response) if !response.status().is_server_error() => return self.answer(response),
                Ok(response) => format!("answered {}", response.status()),
                Err(e) if e.is_connect() || e.is_timeout() => self.transport(e).to_string(),
                Err(e) => return Err(self.transport(e)),
            };
            let rest = request.url().as_str().strip_prefix(from.as_str()).unwrap_or_default().to_string();
            self.current.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let next = format!("{}{rest}", self.master());
            eprintln!("{from} {failed}; trying {}", self.master());
            *request.url_mut() = reqwest::Url::parse(&next).map_err(|e| Error::Usage(format!("the master's URL {next}: {e}")))?;
        }
        let response = self.http.execute(request).map_err(|e| self.transport(e))?;
        self.answer(response)
    }

    fn answer(&self, response: Response) -> Result<Response> {
        if response.status().is_success() || response.status() == reqwest::StatusCode::NOT_MODIFIED {
            Ok(response)
        } else {
            Err(api_error(response))
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self.send(self.request(Method::GET, path))?;
        self.decode(response, path)
    }

    /// GET of one object; `None` when the master says it does not exist.
    pub fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.get(path) {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GET of a list, with a label selector when one is given.
    pub fn list<T: DeserializeOwned>(&self, path: &str, selector: Option<&str>) -> Result<List<T>> {
        let mut request = self.request(Method::GET, path);
        if let Some(selector) = selector.filter(|s| !s.is_empty()) {
            request = request.query(&[("labelSelector", selector)]);
        }
        let response = self.send(request)?;
        self.decode(response, path)
    }

    /// A long poll: the list once it changed after `since`, `None` when it did not within the master's limit.
    pub fn watch<T: DeserializeOwned>(&self, path: &str, selector: Option<&str>, since: u64) -> Result<Option<List<T>>> {
        let mut request = self.request(Method::GET, path).timeout(Duration::from_secs(90)).query(&[
            ("watch", "true".to_string()),
            ("since", since.to_string()),
            ("timeoutSeconds", "30".to_string()),
        ]);
        if let Some(selector) = selector.filter(|s| !s.is_empty()) {
            request = request.query(&[("labelSelector", selector)]);
        }
        let response = self.send(request)?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        self.decode(response, path).map(Some)
    }

    /// Sends a JSON body and decodes the JSON answer.
    pub fn send_json<T: DeserializeOwned>(&self, method: Method, path: &str, body: &impl Serialize) -> Result<T> {
        let response = self.send(self.request(method, path).json(body))?;
        self.decode(response, path)
    }

    pub fn decode<T: DeserializeOwned>(&self, response: Response, path: &str) -> Result<T> {
        let body = response.bytes().map_err(|e| self.transport(e))?;
        // Tolerant, as the agents are: a newer master's fields must not break an older CLI.
        wasmlet_api::decode::from_wire(&body).map_err(|e| {
            Error::Failed(format!(
                "the master's answer to {path} cannot be read: {e} (is {} a wasmlet master of this version?)",
                self.master()
            ))
        })
    }

    /// A transport failure: unreachable when nothing answered, else what broke.
    pub fn transport(&self, e: reqwest::Error) -> Error {
        let mut cause = root_cause(&e);
        if cause.contains("UnknownIssuer") || cause.contains("certificate") {
            cause.push_str(
                " (the master's certificate is not signed by the context's certificate authority: \
                 `wasmlet-master client-config` on the master prints a config with the right one)",
            );
        }
        if e.is_connect() || (e.is_timeout() && e.is_request() && !e.is_body()) || e.is_builder() {
            Error::Unreachable { url: self.master().to_string(), cause }
        } else {
            Error::Failed(format!("talking to the master at {}: {cause}", self.master()))
        }
    }
}

fn is_root_path(path: &str) -> bool {
    ["/healthz", "/readyz", "/metrics", "/version"].iter().any(|p| path.starts_with(p))
}

/// The innermost error: "Connection refused (os error 111)" rather than "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// The master's [`ApiError`], or the status and body when the answer is not one.
fn api_error(response: Response) -> Error {
    let status = response.status();
    let body = response.text().unwrap_or_default();
    match wasmlet_api::decode::from_wire::<ApiError>(body.as_bytes()) {
        Ok(e) => Error::Api { status: status.as_u16(), reason: e.reason, message: e.message },
        Err(_) => {
            let text = body.trim();
            let message =
                if text.is_empty() { format!("the master answered {status}") } else { format!("the master answered {status}: {text}") };
            Error::Api { status: status.as_u16(), reason: status.canonical_reason().unwrap_or("Error").to_string(), message }
        }
    }
}
