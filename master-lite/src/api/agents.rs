//! The master ↔ agent protocol (`wasmlet_api::protocol`): register, lease,
//! node status, the node's assignment (long poll) and batched instance
//! phases.
//!
//! A registration with a join token (or an admin token) creates the node's
//! credential and revokes any older one of that node; a registration with
//! the node's own credential (an agent restarting) keeps it. Either way the
//! agent's signing request is signed for the node's name and the address the
//! registration came from.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use wasmlet_api::protocol::{
    AssignedInstance, Assignment, InstanceStatusBatch, LeaseRenewal, LeaseResponse, RegisterRequest, RegisterResponse,
};
use wasmlet_api::{EventType, Node, NodeStatus, Phase};

use super::{Failure, ListParams, decode, not_modified};
use crate::Shared;
use crate::auth::{Caller, Role, TokenRecord};
use crate::cluster::random_hex;
use crate::controller::lifecycle::is_unreachable;
use crate::scheduler::UNREACHABLE_TAINT;

fn not_registered(name: &str) -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "NotFound", format!("node `{name}` is not registered: POST /api/v1/nodes/register first"))
}

pub async fn register(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: RegisterRequest = decode(&body, "registration")?;
    let name = request.name.clone();
    let issue_credential = match &caller.role {
        Role::Join | Role::Admin => true,
        Role::Node(own) if *own == name => false,
        _ => {
            return Err(Failure::new(StatusCode::FORBIDDEN, "Forbidden", format!("{caller} may not register node `{name}`")));
        }
    };
    let serving_certificate = match (&request.serving_csr, shared.ca_fingerprint.is_some()) {
        (Some(csr), true) => {
            let mut names = vec![name.clone(), peer.ip().to_string()];
            names.extend(request.api_url.as_deref().and_then(url_host).map(str::to_string));
            let chain = shared
                .pki
                .sign_request(csr, &format!("wasmlet-node:{name}"), &names)
                .map_err(|e| Failure::invalid(format!("servingCsr: {e}")))?;
            Some(chain)
        }
        _ => None,
    };
    let scheme = if serving_certificate.is_some() { "https" } else { "http" };
    let endpoint = super::live::agent_endpoint(scheme, peer, request.api_port, request.api_url.as_deref());
    let ingress = super::live::agent_endpoint("http", peer, request.ingress_port, None);
    let (node, credential, master_token, unreachable) = {
        let mut cluster = shared.cluster();
        let existing = cluster.nodes.get(&name).cloned();
        let mut node = existing.clone().unwrap_or_else(|| Node::new(&name));
        node.metadata.labels = request.labels;
        match endpoint {
            Some(url) => node.metadata.annotations.insert(super::live::AGENT_API.to_string(), url),
            None => node.metadata.annotations.remove(super::live::AGENT_API),
        };
        match ingress {
            Some(url) => node.metadata.annotations.insert(super::live::AGENT_INGRESS.to_string(), url),
            None => node.metadata.annotations.remove(super::live::AGENT_INGRESS),
        };
        let unreachable = node.spec.taints.iter().filter(|t| t.key == UNREACHABLE_TAINT).cloned();
        node.spec.taints = request.taints.into_iter().chain(unreachable).collect();
        node.status = request.status;
        node.validate().map_err(|e| Failure::invalid(format!("node `{name}` cannot register: {e}")))?;
        let master_token = cluster.credential(&name).map(str::to_string).unwrap_or_else(|| random_hex(32));
        let mut txn = cluster.txn();
        txn.put_credential(&name, master_token.clone());
        let credential = if issue_credential {
            let token = wasmlet_security::Token::generate()
                .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?;
            let now = chrono::Utc::now();
            let role = Role::Node(name.clone());
            for mut old in shared.tokens.unrevoked(&role) {
                old.revoked = Some(now);
                txn.put_token(old);
            }
            txn.put_token(TokenRecord::new(
                &token,
                role,
                format!("credential of node {name}, joined with token {}", caller.token_id),
                None,
            ));
            Some(token.to_string())
        } else {
            None
        };
        let conditions = node.status.conditions.clone();
        txn.put_node(node);
        let what = match (&existing, issue_credential) {
            (None, _) => format!("joined the cluster with token {}", caller.token_id),
            (Some(_), true) => format!("joined again with token {}; its older credentials are revoked", caller.token_id),
            (Some(_), false) => "registered again".to_string(),
        };
        txn.event(EventType::Normal, "Registered", ("Node", &name), format!("node {name} {what}"));
        cluster.commit(txn)?;
        let mut leases = shared.leases();
        leases.renew(&name, tokio::time::Instant::now());
        leases.report(&name, conditions);
        let node = cluster.nodes.get(&name).cloned().ok_or_else(|| not_registered(&name))?;
        let unreachable = is_unreachable(&node);
        (node, credential, master_token, unreachable)
    };
    // Back from silence: the lifecycle controller lifts the taint.
    if unreachable {
        shared.wake.notify_one();
    }
    let config = &shared.config;
    Ok(Json(RegisterResponse {
        node,
        credential,
        ca_certificate: shared.ca_fingerprint.map(|_| shared.pki.ca_pem().to_string()),
        serving_certificate,
        master_token,
        heartbeat_interval: config.heartbeat_interval,
        status_report_interval: config.status_report_interval,
        lost_after: config.lost_after,
    })
    .into_response())
}

/// The host of a URL: `https://edge-1:9000/x` → `edge-1`.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then_some(host)
}

/// Answers from the agent views and records the renewal in the lease table
/// only: renewals never wait for the cluster lock (nor for the controllers).
pub async fn renew_lease(State(shared): State<Arc<Shared>>, Path(name): Path<String>, body: Bytes) -> Result<Response, Failure> {
    let _renewal: LeaseRenewal = decode(&body, "lease renewal")?;
    let (revision, unreachable) = shared.agents.get(&name).ok_or_else(|| not_registered(&name))?;
    shared.leases().renew(&name, tokio::time::Instant::now());
    if unreachable {
        shared.wake.notify_one();
    }
    Ok(Json(LeaseResponse { assignment_revision: revision }).into_response())
}

pub async fn report_status(State(shared): State<Arc<Shared>>, Path(name): Path<String>, body: Bytes) -> Result<Response, Failure> {
    let status: NodeStatus = decode(&body, "node status")?;
    let mut cluster = shared.cluster();
    let mut node = cluster.nodes.get(&name).cloned().ok_or_else(|| not_registered(&name))?;
    let conditions = status.conditions.clone();
    node.status = status;
    let mut txn = cluster.txn();
    txn.put_node(node);
    cluster.commit(txn)?;
    {
        let mut leases = shared.leases();
        leases.renew(&name, tokio::time::Instant::now());
        leases.report(&name, conditions);
    }
    Ok(Json(cluster.nodes.get(&name).cloned()).into_response())
}

pub async fn assignment(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, Failure> {
    let params = ListParams::parse(&query)?;
    let changes = shared.agents.subscribe(&name).ok_or_else(|| not_registered(&name))?;
    if params.watch && !wait_for_assignment(&shared, changes, params.since, params.timeout).await {
        return Ok(not_modified());
    }
    let cluster = shared.cluster();
    let instances = cluster
        .instances_on(&name)
        // A Lost instance that was replaced elsewhere must stop here (fencing);
        // one that is not replaced (`replace: false`, everyNode) stays, so the
        // returning node keeps running it rather than restarting it.
        .filter(|p| p.instance.status.phase != Phase::Lost || !is_replaced_when_lost(&p.workload))
        .map(|p| AssignedInstance { instance: p.instance.clone(), workload: p.workload.clone() })
        .collect();
    Ok(Json(Assignment { revision: cluster.assignment_revision(&name), instances }).into_response())
}

/// Whether the workload's instances on a silent node are replaced elsewhere.
fn is_replaced_when_lost(workload: &wasmlet_api::Workload) -> bool {
    workload.spec.disconnect.replace != Some(false) && workload.spec.placement != Some(wasmlet_api::Placement::EveryNode)
}

/// Waits until the node's assignment revision differs from `since` (or the node is
/// deleted), at most `timeout` (capped by `--watch-timeout`). False on timeout
/// or shutdown. Only this node's assignment changes wake it.
async fn wait_for_assignment(shared: &Shared, mut changes: watch::Receiver<u64>, since: u64, timeout: Option<Duration>) -> bool {
    let limit = shared.config.watch_timeout.get();
    let deadline = super::after(timeout.unwrap_or(limit).min(limit));
    loop {
        // Differs, not exceeds: a master whose store was reset counts from 1 again.
        if *changes.borrow_and_update() != since {
            return true;
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return false,
            changed = tokio::time::timeout_at(deadline, changes.changed()) => match changed {
                Ok(Ok(())) => {}
                // The node was deleted: its assignment changed (to nothing).
                Ok(Err(_)) => return true,
                Err(_) => return false,
            },
        }
    }
}

pub async fn report_instances(State(shared): State<Arc<Shared>>, Path(name): Path<String>, body: Bytes) -> Result<Response, Failure> {
    let batch: InstanceStatusBatch = decode(&body, "instance status batch")?;
    let mut cluster = shared.cluster();
    if !cluster.nodes.contains_key(&name) {
        return Err(not_registered(&name));
    }
    let mut txn = cluster.txn();
    for update in batch.updates {
        let Some(placed) = cluster.instances.get(&update.name) else { continue };
        // Stale (older epoch), someone else's, or already handed off: the master's view wins.
        if placed.instance.spec.node != name || update.epoch < placed.instance.spec.epoch || placed.instance.status.phase == Phase::Lost {
            tracing::debug!(instance = %update.name, node = %name, epoch = update.epoch, "ignoring an instance status update");
            continue;
        }
        if placed.instance.status != update.status {
            let mut changed = placed.clone();
            changed.instance.status = update.status;
            txn.put_instance(changed);
        }
    }
    cluster.commit(txn)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
