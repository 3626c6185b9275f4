//! What the master, the agent and the CLI share to trust each other.
//!
//! - `pki`: the two CAs the master creates: the cluster CA (the master's
//!   serving certificate) and the node CA (node certificates, signed from
//!   the agents' requests for the names the master verified).
//! - `token`: bearer tokens (`<id>.<secret>`, stored hashed), join tokens
//!   that carry the CA's fingerprint (`wasmlet-join:<sha256>:<id>.<secret>`).
//! - `tls`: rustls configurations: a server with a fixed or a swappable
//!   certificate, a client that trusts only the cluster CA, the joining
//!   client that trusts a chain only when it holds the CA the token names,
//!   and the node-to-node configurations (one node's certificate, mutual TLS).
//! - `peering`: an ingress port that serves the public over plain HTTP and
//!   peers over mutual TLS, marking requests with the peer node.
//! - `serve`: one way to serve an axum router, over TLS or plain HTTP, with
//!   graceful shutdown, within a listener's connection limit and its header
//!   and idle timeouts; the open-files limit the daemons size them from.
//! - `files`: secrets written atomically, readable by their owner only.
//!
//! Every TLS configuration uses the `ring` provider explicitly.
#![forbid(unsafe_code)]

pub mod files;
pub mod peering;
pub mod pki;
pub mod serve;
pub mod tls;
pub mod token;

pub use pki::{ClusterPki, Fingerprint};
pub use token::{JoinToken, Token};

/// Why a security operation failed, in words for the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Certificate { what: String, source: rcgen::Error },
    #[error("{what}: {source}")]
    Tls { what: String, source: rustls::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The rustls crypto provider every configuration uses.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// An error and its sources on one line, `outer: inner: innermost` (reqwest
/// and rustls hide the reason of a failed handshake in the sources).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}
