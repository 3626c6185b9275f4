//! Live data served from the agents themselves, for operators: an
//! instance's log (streamed with `follow=true`), a node's current report and
//! its instances with their usage. The master reaches an agent's API through
//! the channel the agent holds open to it ([`super::channel`]); without one
//! (an agent of protocol 3 or older, or while its channel is down), at the
//! address its registration came from and the port it named (annotation
//! [`AGENT_API`](crate::annotations::AGENT_API) on the Node), accepting only that node's certificate from
//! the node CA: not the cluster CA's, not another node's.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Failure;
use crate::Shared;

/// A client for node `node`'s agent: it accepts that node's certificate from the node CA only.
fn agent_client(shared: &Shared, node: &str) -> Result<reqwest::Client, Failure> {
    let internal = |e: String| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", format!("a client for node `{node}`: {e}"));
    let tls = wasmlet_security::tls::client_for_node(shared.pki.nodes().ca_pem(), node, None).map_err(|e| internal(e.to_string()))?;
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| internal(e.to_string()))
}

/// The node's agent API and the token the master presents to it.
fn endpoint_of(shared: &Shared, node: &str) -> Result<(String, Option<String>), Failure> {
    let cluster = shared.cluster();
    let Some(n) = cluster.nodes.get(node) else { return Err(Failure::not_found("node", node)) };
    let url = n.metadata.annotations.get(crate::annotations::AGENT_API).cloned().ok_or_else(|| {
        Failure::new(
            StatusCode::BAD_GATEWAY,
            "AgentUnreachable",
            format!("node `{node}` did not say where its agent's API is (an agent older than this master?)"),
        )
    })?;
    Ok((url, cluster.credential(node).map(str::to_string)))
}

/// Forwards a GET to the node's agent and streams the answer back: through
/// the channel the node holds open to this master, else by dialing its API.
pub(crate) async fn forward(shared: &Shared, node: &str, path_and_query: String, follow: bool) -> Result<Response, Failure> {
    let timeout = (!follow).then_some(Duration::from_secs(10));
    let token = {
        let cluster = shared.cluster();
        if !cluster.nodes.contains_key(node) {
            return Err(Failure::not_found("node", node));
        }
        cluster.credential(node).map(str::to_string)
    };
    if let Some(answer) = super::channel::get(shared, node, &path_and_query, token.as_deref(), timeout).await {
        let answer = answer?;
        shared.metrics.live_requests.get_or_create(&crate::metrics::ViaLabel { via: "channel".into() }).inc();
        let (parts, body) = answer.into_parts();
        return Ok(relayed(parts.status, parts.headers.get(header::CONTENT_TYPE).cloned(), body));
    }
    let (base, token) = endpoint_of(shared, node)?;
    let url = format!("{base}{path_and_query}");
    let mut request = agent_client(shared, node)?.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(timeout) = timeout {
        request = request.timeout(timeout);
    }
    let answer = request.send().await.map_err(|e| {
        let why = wasmlet_security::error_chain(&e);
        Failure::new(
            StatusCode::BAD_GATEWAY,
            "AgentUnreachable",
            format!("cannot reach the agent of node `{node}` at {base} (and it holds no channel to this master): {why}"),
        )
    })?;
    shared.metrics.live_requests.get_or_create(&crate::metrics::ViaLabel { via: "dial".into() }).inc();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    Ok(relayed(status, content_type, Body::from_stream(answer.bytes_stream())))
}

/// An agent's answer as the master relays it: its status, its content type and its body, streamed.
fn relayed(status: StatusCode, content_type: Option<HeaderValue>, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let content_type = content_type.unwrap_or(HeaderValue::from_static("application/octet-stream"));
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response
}

/// The parameters of a log read, checked here so a bad one is the caller's
/// `400` naming it, whatever the agent would make of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Read by the agent; named here so that it is accepted and checked.
    #[allow(dead_code)]
    tail: Option<usize>,
    since: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// `GET /instances/{name}/logs?tail=N&since=5m&follow=true`
pub async fn instance_logs(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    params: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let Query(params) = params.map_err(|e| Failure::invalid(format!("bad query: {}", e.body_text())))?;
    if let Some(since) = &params.since {
        since.parse::<wasmlet_api::Since>().map_err(|e| Failure::invalid(format!("since: {e}")))?;
    }
    let node = {
        let cluster = shared.cluster();
        let instance = cluster.instances.get(&name).ok_or_else(|| Failure::not_found("instance", &name))?;
        instance.instance.spec.node.clone()
    };
    if node.is_empty() {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "NotScheduled",
            format!("instance `{name}` is not placed on a node yet: it has no log"),
        ));
    }
    let query = query.unwrap_or_default();
    let suffix = if query.is_empty() { String::new() } else { format!("?{query}") };
    forward(&shared, &node, format!("/instances/{name}/logs{suffix}"), params.follow).await
}

/// `GET /nodes/{name}/live`: the node's report as its agent has it now.
pub async fn node_live(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    forward(&shared, &name, "/status".to_string(), false).await
}

/// `GET /nodes/{name}/instances/live`: the agent's instances with their usage now.
pub async fn node_instances_live(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    forward(&shared, &name, "/instances".to_string(), false).await.map(IntoResponse::into_response)
}
