//! The agent's local HTTP API: health, the node report and its metrics.
//!
//! Built for polling by dashboards and fleets of scrapers: every answer comes
//! from the latest published report, already serialized; `ETag` and
//! `If-None-Match` save the body when nothing changed, and `?watch=true`
//! long-polls until it does. Instances, their logs and the agent's events
//! are served from the supervisor. Every path but `/healthz` and `/readyz`
//! needs a bearer token ([`crate::security::ApiAuth`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::report::Report;
use crate::security::{Access, ApiAuth};
use crate::supervisor::Supervisor;

/// What every request handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The latest report; a watch waits on it for the next.
    pub reports: watch::Receiver<Arc<Report>>,
    /// Longest a watch may wait, whatever the client asks.
    pub watch_timeout: Duration,
    /// The instances, their logs and events; None when the runtime did not start.
    pub supervisor: Option<Arc<Supervisor>>,
    /// Cancelled at shutdown: ends log streams so shutdown does not wait on them.
    pub shutdown: CancellationToken,
    /// Who may call what.
    pub auth: Arc<ApiAuth>,
    /// What the API's and the ingress's listeners accepted, refused and closed.
    pub connections: wasmlet_security::serve::ConnectionMetrics,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/instances", get(list_instances))
        .route("/instances/{name}", get(get_instance))
        .route("/instances/{name}/logs", get(instance_logs))
        .route("/events", get(events))
        .layer(axum::middleware::from_fn_with_state(state.auth.clone(), guard))
        .with_state(state)
}

/// Refuses requests without a token that may reach the path: 401, without details.
async fn guard(State(auth): State<Arc<ApiAuth>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let bearer = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if auth.allows(bearer, Access::of(request.uri().path())) {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized\n").into_response()
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the node's Ready condition is True, else 503 with its reason.
async fn readyz(State(state): State<ApiState>) -> Response {
    let report = state.reports.borrow().clone();
    match report.node.condition(wasmlet_api::ConditionType::Ready) {
        Some(c) if c.status == wasmlet_api::ConditionStatus::True => (StatusCode::OK, "ready\n").into_response(),
        Some(c) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}: {}\n", c.reason, c.message)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no report yet\n").into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StatusQuery {
    #[serde(default)]
    watch: bool,
    /// The `resourceVersion` the client has; the watch returns once the report differs.
    since: Option<u64>,
    /// How long to wait, capped by the agent's `--watch-timeout`.
    timeout_seconds: Option<u64>,
}

async fn status(
    State(state): State<ApiState>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad query: {}\n", e.body_text())).into_response(),
    };
    let mut reports = state.reports.clone();
    let current = reports.borrow_and_update().clone();

    if !query.watch {
        if if_none_match(&headers, &current.etag) {
            return not_modified(&current);
        }
        return json_report(&current);
    }

    let since = query.since.unwrap_or(current.version);
    if current.version != since {
        return json_report(&current);
    }
    let wait = query.timeout_seconds.map(Duration::from_secs).unwrap_or(state.watch_timeout).min(state.watch_timeout);
    match tokio::time::timeout(wait, reports.wait_for(|r| r.version != since)).await {
        Ok(Ok(next)) => {
            let next = next.clone();
            json_report(&next)
        }
        // The reporter stopped: the agent is shutting down.
        Ok(Err(_)) => (StatusCode::SERVICE_UNAVAILABLE, "agent is shutting down\n").into_response(),
        // Nothing changed within the wait: the client's copy is current.
        Err(_) => not_modified(&current),
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let report = state.reports.borrow().clone();
    // The node's part is pre-rendered; instances and connections change too often for that.
    let node = std::str::from_utf8(&report.metrics).unwrap_or_default();
    let mut text = node.trim_end().trim_end_matches("# EOF").trim_end().to_string();
    if let Some(supervisor) = &state.supervisor {
        text = format!("{text}\n{}", supervisor.render_metrics().trim_end().trim_end_matches("# EOF").trim_end());
    }
    let body = bytes::Bytes::from(format!("{text}\n{}\n# EOF\n", state.connections.render("wasmlet_agent").trim_end()));
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"))], body).into_response()
}

/// The time a log line starts with.
fn line_time(line: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(line.split(' ').next()?).ok().map(|t| t.with_timezone(&chrono::Utc))
}

fn no_runtime() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "the WASM runtime did not start on this node; see /readyz\n").into_response()
}

fn no_instance(name: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no instance named `{name}` on this node; GET /instances lists them\n")).into_response()
}

async fn list_instances(State(state): State<ApiState>) -> Response {
    match &state.supervisor {
        Some(s) => Json(s.instances()).into_response(),
        None => Json(Vec::<wasmlet_api::Instance>::new()).into_response(),
    }
}

async fn get_instance(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(supervisor) = &state.supervisor else { return no_runtime() };
    match supervisor.instance(&name) {
        Some(instance) => Json(instance).into_response(),
        None => no_instance(&name),
    }
}

async fn events(State(state): State<ApiState>) -> Response {
    match &state.supervisor {
        Some(s) => Json(s.events.list()).into_response(),
        None => Json(Vec::<wasmlet_api::Event>::new()).into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    tail: Option<usize>,
    /// Only lines newer than this: a duration ago (`5m`) or an RFC 3339 time.
    since: Option<String>,
    #[serde(default)]
    follow: bool,
}

/// The instance's log lines; with `follow=true` the answer stays open and
/// streams new lines until the instance is removed or the agent stops.
async fn instance_logs(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad query: {}\n", e.body_text())).into_response(),
    };
    let cutoff = match query.since.as_deref().map(str::parse::<wasmlet_api::Since>).transpose() {
        Ok(since) => since.map(|s| s.cutoff(chrono::Utc::now())),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad query: since: {e}\n")).into_response(),
    };
    let Some(supervisor) = &state.supervisor else { return no_runtime() };
    let Some(log) = supervisor.log(&name) else { return no_instance(&name) };
    // Subscribe before reading the tail so no line falls between the two.
    let live = log.subscribe();
    let mut text = String::new();
    let lines = match cutoff {
        None => log.tail(query.tail),
        Some(cutoff) => {
            let newer: Vec<String> = log.tail(None).into_iter().filter(|l| line_time(l).is_none_or(|t| t >= cutoff)).collect();
            let skip = query.tail.map_or(0, |n| newer.len().saturating_sub(n));
            newer.into_iter().skip(skip).collect()
        }
    };
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    let plain = [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))];
    if !query.follow {
        return (plain, text).into_response();
    }
    let shutdown = state.shutdown.clone();
    let head = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(bytes::Bytes::from(text)) });
    let tail = futures::stream::unfold((live, shutdown), |(mut live, shutdown)| async move {
        let next = tokio::select! {
            next = live.recv() => next,
            _ = shutdown.cancelled() => return None,
        };
        let chunk = match next {
            Ok(line) => format!("{line}\n"),
            Err(broadcast::error::RecvError::Lagged(n)) => format!("[wasmlet] {n} lines skipped: the reader fell behind\n"),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(bytes::Bytes::from(chunk)), (live, shutdown)))
    });
    (plain, Body::from_stream(head.chain(tail))).into_response()
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|tag| {
        let tag = tag.trim();
        tag == "*" || tag.trim_start_matches("W/") == etag
    })
}

fn report_headers(report: &Report) -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::ETAG, HeaderValue::from_str(&report.etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""))),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ]
}

fn json_report(report: &Report) -> Response {
    let mut response = (report_headers(report), report.json.clone()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn not_modified(report: &Report) -> Response {
    (StatusCode::NOT_MODIFIED, report_headers(report)).into_response()
}
