//! The agent's local HTTP API: health, the node report and its metrics.
//!
//! Built for polling by dashboards and fleets of scrapers: every answer comes
//! from the latest published report, already serialized; `ETag` and
//! `If-None-Match` save the body when nothing changed, and `?watch=true`
//! long-polls until it does.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::watch;

use crate::report::Report;

/// What every request handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// The latest report; a watch waits on it for the next.
    pub reports: watch::Receiver<Arc<Report>>,
    /// Longest a watch may wait, whatever the client asks.
    pub watch_timeout: Duration,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
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
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"))],
        report.metrics.clone(),
    )
        .into_response()
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
