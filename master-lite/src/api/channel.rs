//! The channel an agent opens to the master, so that operators' live
//! requests (logs, `-f` included, the node's report, its instances with
//! their usage) reach nodes the master cannot dial: boards behind NAT,
//! carrier-grade NAT, firewalls that let only outbound connections through.
//!
//! The agent asks `GET /api/v1/nodes/{name}/channel` with its node
//! credential and `Upgrade: wasmlet-channel`; the master answers `101` and
//! the connection turns around: the master speaks HTTP/2 to the agent's own
//! API over it, presenting the master token as when it dials, and the agent
//! serves those requests as it serves its listener. One channel per node and
//! master: a newer one replaces the older (an agent that reconnected). Only
//! the node's own credential opens its channel ([`crate::auth::policy`]), and
//! a request for node `n` only ever travels through `n`'s channel, so a node
//! can never answer for another. Each side pings the other, so a connection
//! a NAT forgot is noticed within [`KEEPALIVE`] and [`KEEPALIVE_TIMEOUT`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use wasmlet_api::protocol::CHANNEL_UPGRADE;

use super::Failure;
use crate::Shared;
use crate::auth::{Caller, TokenTable};

/// How often the master pings an agent over its channel.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// How long a ping may go unanswered before the channel is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The channels open to this master, by node.
#[derive(Default)]
pub struct Channels {
    open: Mutex<HashMap<String, Open>>,
    next_id: AtomicU64,
}

struct Open {
    id: u64,
    sender: SendRequest<Body>,
    /// The credential the channel was opened with: it is used as long as that credential is.
    token_id: String,
}

impl Channels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `sender` as node `node`'s channel, in place of an older one; its id.
    fn insert(&self, node: &str, sender: SendRequest<Body>, token_id: String) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(node.to_string(), Open { id, sender, token_id });
        id
    }

    /// Forgets channel `id` of `node`, unless a newer one took its place.
    fn remove(&self, node: &str, id: u64) {
        let mut open = self.lock();
        if open.get(node).is_some_and(|o| o.id == id) {
            open.remove(node);
        }
    }

    /// Closes node `node`'s channel (the node was deleted): its requests end.
    pub fn close(&self, node: &str) {
        self.lock().remove(node);
    }

    /// Node `node`'s channel, when one is open and the credential it was
    /// opened with is still valid (not revoked, not expired, not replaced by
    /// a renewal the node has used); a channel that is not is closed.
    fn sender(&self, node: &str, tokens: &TokenTable) -> Option<(u64, SendRequest<Body>)> {
        let mut open = self.lock();
        let channel = open.get(node)?;
        let valid = tokens.get(&channel.token_id).is_some_and(|t| t.unusable(chrono::Utc::now()).is_none());
        if valid && !channel.sender.is_closed() {
            return Some((channel.id, channel.sender.clone()));
        }
        if !valid {
            tracing::info!(node, token = %channel.token_id, "closing the node's channel: the credential it was opened with is no longer valid");
        }
        open.remove(node);
        None
    }

    /// How many channels are open.
    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

/// `GET /nodes/{name}/channel` with `Upgrade: wasmlet-channel`: the node's
/// own credential only (checked by the policy before this runs).
pub async fn open(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
    mut request: Request,
) -> Result<Response, Failure> {
    let asks =
        request.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case(CHANNEL_UPGRADE));
    if !asks {
        return Err(Failure::new(
            StatusCode::UPGRADE_REQUIRED,
            "UpgradeRequired",
            format!("the channel is opened with `Connection: Upgrade` and `Upgrade: {CHANNEL_UPGRADE}` over HTTP/1.1"),
        ));
    }
    if !shared.cluster().nodes.contains_key(&name) {
        return Err(Failure::not_found("node", &name));
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::warn!(node = %name, error = %e, "a node's channel was not upgraded"),
        };
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new()).keep_alive_interval(KEEPALIVE).keep_alive_timeout(KEEPALIVE_TIMEOUT).keep_alive_while_idle(true);
        let (sender, connection) = match builder.handshake::<_, Body>(upgraded).await {
            Ok(pair) => pair,
            Err(e) => return tracing::warn!(node = %name, error = %e, "a node's channel failed its HTTP/2 handshake"),
        };
        let id = shared.channels.insert(&name, sender, caller.token_id);
        shared.metrics.agent_channels.set(i64::try_from(shared.channels.count()).unwrap_or(i64::MAX));
        tracing::info!(node = %name, "the node opened its channel");
        let ended = tokio::select! {
            ended = connection => ended.err().map(|e| e.to_string()),
            () = shared.shutdown.cancelled() => Some("the master is shutting down".into()),
        };
        shared.channels.remove(&name, id);
        shared.metrics.agent_channels.set(i64::try_from(shared.channels.count()).unwrap_or(i64::MAX));
        tracing::info!(node = %name, why = ended.as_deref().unwrap_or("the agent closed it"), "the node's channel closed");
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(CHANNEL_UPGRADE));
    Ok(response)
}

/// A GET of `path_and_query` on node `node`'s agent through its channel,
/// presenting `token`: its answer; None when the node holds no channel to
/// this master or it broke (then the caller dials); a `504` when the agent
/// did not answer within `timeout`.
pub async fn get(
    shared: &Shared,
    node: &str,
    path_and_query: &str,
    token: Option<&str>,
    timeout: Option<Duration>,
) -> Option<Result<Response, Failure>> {
    let (id, mut sender) = shared.channels.sender(node, &shared.tokens)?;
    let mut request = axum::http::Request::get(format!("http://{node}{path_and_query}"));
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match request.body(Body::empty()) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(node, error = %e, "cannot make a request for a node's channel");
            return None;
        }
    };
    let sent = async {
        sender.ready().await?;
        sender.send_request(request).await
    };
    let answer = match timeout {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(answer) => answer,
            Err(_) => {
                return Some(Err(Failure::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "AgentTimeout",
                    format!("the agent of node `{node}` did not answer within {} s through its channel", limit.as_secs()),
                )));
            }
        },
        None => sent.await,
    };
    match answer {
        Ok(answer) => Some(Ok(answer.map(Body::new))),
        Err(e) => {
            tracing::warn!(node, error = %e, "a request through the node's channel failed: dialing its agent instead");
            shared.channels.remove(node, id);
            None
        }
    }
}
