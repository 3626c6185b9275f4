//! Nodes for operators: list, get, delete, cordon, uncordon and drain, and
//! a node's recent usage for the dashboard's plots.
//!
//! Deleting a node revokes its credentials too: the name is free for a new
//! join, and the deleted node's agent cannot bring it back on its own.
//!
//! Drain cordons the node and marks its instances draining; the workload
//! controller then places a replacement for each and removes the original
//! only once the replacement is Running. The request waits for that, at most
//! `timeoutSeconds` (default 60), and reports what moved.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use wasmlet_api::EventType;
use wasmlet_api::protocol::List;

use super::{Failure, ListParams, not_modified, wait_for_change};
use crate::Shared;
use crate::controller::workloads::DRAINING_ANNOTATION;
use crate::scheduler::occupies_node;
use crate::store::Kind;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn list(State(shared): State<Arc<Shared>>, Query(query): Query<Vec<(String, String)>>) -> Result<Response, Failure> {
    let params = ListParams::parse(&query)?;
    if params.watch {
        super::check_since(&shared, params.since).await?;
    }
    if params.watch && !wait_for_change(&shared, params.since, params.timeout, |c| c.collection_revision(Kind::Node)).await {
        return Ok(not_modified());
    }
    let cluster = shared.cluster();
    let items = cluster.nodes.values().filter(|n| params.selector.matches(&n.metadata.labels)).cloned().collect();
    Ok(Json(List { revision: cluster.revision, items }).into_response())
}

pub async fn get(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    let cluster = shared.cluster();
    let node = cluster.nodes.get(&name).ok_or_else(|| Failure::not_found("node", &name))?;
    Ok(Json(node).into_response())
}

/// `GET /nodes/{name}/usage-history`: the node's recent usage samples, oldest
/// first, as this master recorded them ([`crate::usage_history`]).
pub async fn usage_history(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    let cluster = shared.cluster();
    if !cluster.nodes.contains_key(&name) {
        return Err(Failure::not_found("node", &name));
    }
    Ok(Json(cluster.usage_history.history(&name, chrono::Utc::now())).into_response())
}

pub async fn delete(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    let node = shared
        .update(|cluster| {
            let node = cluster.nodes.get(&name).cloned().ok_or_else(|| Failure::not_found("node", &name))?;
            let mut txn = cluster.txn();
            // The node and its credentials first; its instances may follow in pieces.
            txn.divisible();
            txn.delete(Kind::Node, &name);
            txn.delete(Kind::Credential, &name);
            let now = chrono::Utc::now();
            for mut credential in shared.tokens.unrevoked(&crate::auth::Role::Node(name.clone())) {
                credential.revoked = Some(now);
                txn.put_token(credential);
            }
            let instances: Vec<String> = cluster.instances_on(&name).map(|p| p.instance.metadata.name.clone()).collect();
            for instance in &instances {
                txn.delete(Kind::Instance, instance);
            }
            txn.event(
                EventType::Normal,
                "Deleted",
                ("Node", &name),
                format!("node {name} deleted and its credentials revoked; its {} instance(s) are placed again", instances.len()),
            );
            Ok((txn, node))
        })
        .await?;
    shared.leases().forget(&name);
    shared.channels.close(&name);
    Ok(Json(node).into_response())
}

async fn set_unschedulable(shared: &Shared, name: &str, unschedulable: bool) -> Result<wasmlet_api::Node, Failure> {
    shared
        .update(|cluster| {
            let mut node = cluster.nodes.get(name).cloned().ok_or_else(|| Failure::not_found("node", name))?;
            let mut txn = cluster.txn();
            if node.spec.unschedulable != unschedulable {
                node.spec.unschedulable = unschedulable;
                txn.put_node(node);
                let (reason, what) =
                    if unschedulable { ("Cordoned", "no new instances go there") } else { ("Uncordoned", "it takes new instances again") };
                txn.event(EventType::Normal, reason, ("Node", name), format!("node {name}: {what}"));
            }
            Ok((txn, ()))
        })
        .await?;
    shared.cluster().nodes.get(name).cloned().ok_or_else(|| Failure::not_found("node", name))
}

pub async fn cordon(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    Ok(Json(set_unschedulable(&shared, &name, true).await?).into_response())
}

pub async fn uncordon(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    Ok(Json(set_unschedulable(&shared, &name, false).await?).into_response())
}

pub async fn drain(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, Failure> {
    let params = ListParams::parse(&query)?;
    let timeout = params.timeout.unwrap_or(DRAIN_TIMEOUT);
    set_unschedulable(&shared, &name, true).await?;
    let started = chrono::Utc::now();
    let draining: Vec<(String, String)> = shared
        .update(|cluster| {
            let mut txn = cluster.txn();
            txn.divisible();
            let mut draining = Vec::new();
            for placed in cluster.instances_on(&name) {
                if !occupies_node(placed.instance.status.phase) {
                    continue;
                }
                draining.push((placed.instance.metadata.name.clone(), placed.instance.spec.workload.clone()));
                if !placed.instance.metadata.annotations.contains_key(DRAINING_ANNOTATION) {
                    let mut marked = placed.clone();
                    marked.instance.metadata.annotations.insert(DRAINING_ANNOTATION.into(), "true".into());
                    txn.put_instance(marked);
                }
            }
            txn.event(
                EventType::Normal,
                "Draining",
                ("Node", &name),
                format!("draining node {name}: moving {} instance(s)", draining.len()),
            );
            Ok((txn, draining))
        })
        .await?;
    let deadline = super::after(timeout);
    let remaining = |shared: &Shared| -> Vec<String> {
        let cluster = shared.cluster();
        draining.iter().filter(|(i, _)| cluster.instances.contains_key(i)).map(|(i, _)| i.clone()).collect()
    };
    loop {
        let since = shared.cluster().revision;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining(&shared).is_empty() || left.is_zero() || shared.shutdown.is_cancelled() {
            break;
        }
        wait_for_change(&shared, since, Some(left), |c| c.revision).await;
    }
    let remaining = remaining(&shared);
    let cluster = shared.cluster();
    let moved: Vec<serde_json::Value> = draining
        .iter()
        .filter(|(i, _)| !remaining.contains(i))
        .map(|(instance, workload)| serde_json::json!({ "instance": instance, "workload": workload }))
        .collect();
    let replacements: Vec<serde_json::Value> = cluster
        .instances
        .values()
        .filter(|p| {
            draining.iter().any(|(_, w)| *w == p.instance.spec.workload)
                && p.instance.spec.node != name
                && p.instance.metadata.creation_timestamp.is_some_and(|t| t >= started)
        })
        .map(|p| serde_json::json!({ "instance": p.instance.metadata.name, "workload": p.instance.spec.workload, "node": p.instance.spec.node }))
        .collect();
    Ok(Json(serde_json::json!({
        "node": name,
        "complete": remaining.is_empty(),
        "moved": moved,
        "replacements": replacements,
        "remaining": remaining,
    }))
    .into_response())
}
