//! `/healthz` (the process answers), `/readyz` (the store is loaded and the
//! controllers run), `/metrics` (OpenMetrics text), `/api/v1/version`, and
//! `/api/v1/self` (who the caller's token says it is).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::Shared;

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.shutdown.is_cancelled() { (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n") } else { (StatusCode::OK, "ready\n") }
}

/// `GET /api/v1/version`: what this master is.
pub async fn version(State(shared): State<Arc<Shared>>) -> axum::Json<serde_json::Value> {
    let tls = shared.ca_fingerprint.is_some();
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "tls": tls,
        "caFingerprint": shared.ca_fingerprint.map(|f| f.to_string()),
    }))
}

/// `GET /api/v1/self`: the caller's role and token id, so a client (the
/// dashboard) offers only what the role may do. The server decides anyway.
pub async fn caller(axum::Extension(caller): axum::Extension<crate::auth::Caller>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "role": caller.role.to_string(), "tokenId": caller.token_id }))
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let text = shared.metrics.render(&shared.cluster());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}
