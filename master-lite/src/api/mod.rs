//! The HTTP API under `/api/v1`: one route table, the error answer, and what
//! every handler shares (body decoding, list parameters, label selectors,
//! long-poll watches).
//!
//! - `objects`: workloads, instances and events, for operators.
//! - `rollouts`: a workload's revisions and rollout: read, pause, resume, undo.
//! - `nodes`: nodes for operators: list, delete, cordon, drain.
//! - `agents`: the master ↔ agent protocol of `wasmlet_api::protocol`.
//! - `modules`: module upload and download, content-addressed.
//! - `health`: `/healthz`, `/readyz`, `/metrics`.
//! - `masters`: the cluster's masters and which one leads.
//! - `live`: an instance's log and a node's live report, served from its agent.
//! - `tokens`: join, viewer and admin tokens, for admins.
//! - `backup`: one consistent read of the store and the modules it uses, for admins.
//!
//! Every route but `/healthz`, `/readyz` and the dashboard's static files
//! ([`crate::ui`]) passes [`crate::auth::middleware::guard`] first.

mod agents;
mod backup;
pub mod channel;
mod health;
pub mod live;
mod masters;
mod modules;
mod nodes;
mod objects;
mod registry_credentials;
pub mod rollouts;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use wasmlet_api::protocol::ApiError;

use crate::Shared;
use crate::cluster::Cluster;
use crate::metrics::RequestLabels;
use crate::store::StoreError;

pub fn router(shared: Arc<Shared>) -> Router {
    let v1 = Router::new()
        .route("/workloads", get(objects::list_workloads).post(objects::create_workload))
        .route("/workloads/{name}", get(objects::get_workload).put(objects::replace_workload).delete(objects::delete_workload))
        .route("/workloads/{name}/rollout", get(rollouts::get))
        .route("/workloads/{name}/rollout/{action}", post(rollouts::act))
        .route("/instances", get(objects::list_instances))
        .route("/instances/{name}", get(objects::get_instance))
        .route("/version", get(health::version))
        .route("/masters", get(masters::list))
        .route("/instances/{name}/logs", get(live::instance_logs))
        .route("/nodes/{name}/live", get(live::node_live))
        .route("/nodes/{name}/instances/live", get(live::node_instances_live))
        .route("/events", get(objects::list_events))
        .route("/endpoints", get(objects::list_endpoints))
        .route("/nodes", get(nodes::list))
        .route("/nodes/register", post(agents::register))
        .route("/nodes/{name}", get(nodes::get).delete(nodes::delete))
        .route("/nodes/{name}/usage-history", get(nodes::usage_history))
        .route("/self", get(health::caller))
        .route("/nodes/{name}/cordon", post(nodes::cordon))
        .route("/nodes/{name}/uncordon", post(nodes::uncordon))
        .route("/nodes/{name}/drain", post(nodes::drain))
        .route("/nodes/{name}/lease", put(agents::renew_lease))
        .route("/nodes/{name}/channel", get(channel::open))
        .route("/nodes/{name}/credential", post(agents::renew_credential))
        .route("/nodes/{name}/status", put(agents::report_status))
        .route("/nodes/{name}/assignment", get(agents::assignment))
        .route("/nodes/{name}/instances/status", put(agents::report_instances))
        .route("/modules/{digest}", put(modules::upload).get(modules::download).layer(DefaultBodyLimit::disable()))
        .route("/registry-credentials", get(registry_credentials::list).post(registry_credentials::create))
        .route(
            "/registry-credentials/{name}",
            get(registry_credentials::get).put(registry_credentials::replace).delete(registry_credentials::delete),
        )
        .route("/nodes/{name}/registry-credentials/{credentials}", get(registry_credentials::for_node))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/backup", get(backup::backup));
    Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), crate::auth::middleware::guard))
        .merge(crate::ui::router())
        .fallback(|| async {
            Failure::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such path: see /api/v1/workloads, /api/v1/nodes, /api/v1/instances, /api/v1/events",
            )
        })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), count_requests))
        .with_state(shared)
}

async fn count_requests(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let response = next.run(request).await;
    shared.metrics.http_requests.get_or_create(&RequestLabels { method, code: response.status().as_u16().to_string() }).inc();
    response
}

/// An error answer: the HTTP status and an [`ApiError`] body.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl Failure {
    /// What went wrong, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Failure { status, reason, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, "Invalid", message)
    }

    pub fn not_found(kind: &str, name: &str) -> Self {
        Failure::new(StatusCode::NOT_FOUND, "NotFound", format!("{kind} `{name}` does not exist"))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::CONFLICT, "Conflict", message)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => {
                Failure::conflict(format!("{e} meanwhile (through this master or another): nothing was written; read it again and retry"))
            }
            e => {
                tracing::error!(error = %e, "a write failed; nothing of it was applied");
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable", format!("{e}; nothing was written, retry later"))
            }
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ApiError { reason: self.reason.to_string(), message: self.message })).into_response()
    }
}

/// Decodes a JSON body: malformed JSON, unknown fields and bad values are `Invalid`, naming the field.
pub fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    wasmlet_api::from_json(body).map_err(|e| Failure::invalid(format!("the {what} cannot be decoded: {e}")))
}

/// Decodes a body an agent sent (the master ↔ agent protocol): fields of a
/// newer agent are dropped, bad values of known ones are `Invalid`, naming the field.
pub fn decode_wire<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    wasmlet_api::decode::from_wire(body).map_err(|e| Failure::invalid(format!("the {what} cannot be decoded: {e}")))
}

pub use wasmlet_api::Selector;

/// The query parameters of lists and watches.
#[derive(Debug, Default)]
pub struct ListParams {
    pub selector: Selector,
    pub watch: bool,
    pub since: u64,
    pub timeout: Option<Duration>,
}

impl ListParams {
    pub fn parse(query: &[(String, String)]) -> Result<Self, Failure> {
        let mut params = ListParams::default();
        for (key, value) in query {
            let number = |what: &str| value.parse::<u64>().map_err(|_| Failure::invalid(format!("`{what}={value}` is not a whole number")));
            match key.as_str() {
                "labelSelector" => params.selector = Selector::parse(value).map_err(|e| Failure::invalid(format!("labelSelector: {e}")))?,
                "watch" => params.watch = matches!(value.as_str(), "true" | "1" | ""),
                "since" => params.since = number("since")?,
                "timeoutSeconds" => {
                    let wait = Duration::from_secs(number("timeoutSeconds")?);
                    if wait > wasmlet_api::Duration::MAX.get() {
                        return Err(Failure::invalid(format!(
                            "`timeoutSeconds={value}` is longer than {}, the longest wait wasmlet accepts",
                            wasmlet_api::Duration::MAX
                        )));
                    }
                    params.timeout = Some(wait);
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

/// Refuses a watch from a revision the cluster never reached, with `410 Gone`:
/// the watcher saw a store that has since been replaced (a restore), and must
/// list again. A revision only this master has not reached yet (the watcher
/// came from a master further ahead) is waited for.
pub async fn check_since(shared: &Shared, since: u64) -> Result<(), Failure> {
    if since <= shared.cluster().revision {
        return Ok(());
    }
    let current = shared.store.current_revision().await?;
    if since > current {
        return Err(Failure::new(
            StatusCode::GONE,
            "Expired",
            format!("revision {since} is newer than the cluster's, {current}: its store was replaced since; list again without `since`"),
        ));
    }
    Ok(())
}

/// Waits until `revision(cluster)` exceeds `since`, at most `timeout` (capped by
/// `--watch-timeout`). False on timeout or shutdown.
pub async fn wait_for_change(shared: &Shared, since: u64, timeout: Option<Duration>, revision: impl Fn(&Cluster) -> u64) -> bool {
    let limit = shared.config.watch_timeout.get();
    let deadline = after(timeout.unwrap_or(limit).min(limit));
    let mut changes = {
        let cluster = shared.cluster();
        if revision(&cluster) > since {
            return true;
        }
        cluster.subscribe()
    };
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return false,
            changed = tokio::time::timeout_at(deadline, changes.changed()) => match changed {
                Ok(Ok(())) => {}
                _ => return false,
            },
        }
        if revision(&shared.cluster()) > since {
            return true;
        }
    }
}

/// The instant `wait` from now: a deadline that never overflows the clock.
pub fn after(wait: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(wasmlet_api::duration::deadline(std::time::Instant::now(), wait))
}

/// The answer of a watch that saw no change.
pub fn not_modified() -> Response {
    StatusCode::NOT_MODIFIED.into_response()
}
