//! What a service instance serves with, and the agent's own plain answers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::StatusCode;

use super::Fence;
use crate::grants::Preopen;

/// Which hosts a service may call: `name` (any port) or `name:port`; none by default.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allowed: Arc<[String]>,
}

impl OutboundPolicy {
    /// The hosts allowed, as given.
    pub fn hosts(&self) -> Vec<String> {
        self.allowed.to_vec()
    }

    pub fn new(allowed: &[String]) -> Self {
        OutboundPolicy { allowed: allowed.iter().map(|h| h.to_ascii_lowercase()).collect() }
    }

    pub fn allows(&self, uri: &hyper::Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
        self.allowed.iter().any(|entry| match entry.rsplit_once(':') {
            Some((name, p)) if p.parse::<u16>().is_ok() => name == host && p.parse::<u16>().ok() == Some(port),
            _ => *entry == host,
        })
    }
}

/// What one service instance serves with.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// The instance's name: where an executor keeps what belongs to this instance.
    pub instance: String,
    pub program: String,
    pub env: Vec<(String, String)>,
    pub dirs: Vec<Preopen>,
    pub memory_limit: Option<u64>,
    pub request_timeout: Duration,
    pub max_request_body: usize,
    pub max_response_body: usize,
    pub outbound: OutboundPolicy,
    /// A hard CPU limit (`limits.cpu`, millicores), enforced by executors that can.
    pub cpu_limit_millis: Option<u64>,
    pub fence: Fence,
}

/// A plain answer from the agent itself (not the guest), saying what went wrong.
pub fn plain(status: StatusCode, text: impl Into<String>) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Body::from(format!("{}\n", text.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_matches_hosts_and_ports() {
        let policy = OutboundPolicy::new(&["api.example.com".into(), "127.0.0.1:8080".into()]);
        assert!(policy.allows(&"https://api.example.com/x".parse().unwrap()));
        assert!(policy.allows(&"http://API.example.com:81/".parse().unwrap()));
        assert!(policy.allows(&"http://127.0.0.1:8080/".parse().unwrap()));
        assert!(!policy.allows(&"http://127.0.0.1:8081/".parse().unwrap()));
        assert!(!policy.allows(&"http://evil.example.com/".parse().unwrap()));
        assert!(!OutboundPolicy::default().allows(&"http://127.0.0.1/".parse().unwrap()));
    }
}
