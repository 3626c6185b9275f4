//! The master ↔ agent protocol (`wasmlet_api::protocol`): register, renew
//! the credential, lease, node status, the node's assignment (long poll) and
//! batched instance phases.
//!
//! Identity. A registration with a join token (or an admin token) creates the
//! node's credential, expiring after `--node-credential-ttl`; one with the
//! node's own credential (an agent restarting) keeps it. A join never takes
//! over a node whose credential is still valid: `409`, until an admin
//! deletes the node or revokes its credential. Either way the agent's signing
//! request is signed by the node CA for the node's name and the address the
//! registration came from, nothing else (not the host of `apiUrl`, not what
//! the request asks for). Before its credential or certificate is due, the
//! agent renews both with its credential (`POST /nodes/{name}/credential`);
//! the older credential is revoked once the new one is first used.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use wasmlet_api::protocol::{
    AssignedInstance, Assignment, CredentialRenewal, ISOLATION_VERSION, InstanceStatusBatch, LeaseRenewal, LeaseResponse, PROTOCOL_VERSION,
    RegisterRequest, RegisterResponse, RenewedCredential, UNSUPPORTED_PROTOCOL_VERSION, assigned_for_agent, negotiate,
};
use wasmlet_api::{EventType, Node, NodeStatus, Phase};

use super::{Failure, ListParams, decode_wire, not_modified};
use crate::Shared;
use crate::annotations::{AGENT_API, AGENT_INGRESS, AGENT_INGRESS_PEER, AGENT_PROTOCOL, NODE_CA, agent_protocol};
use crate::auth::{Caller, Role, TokenRecord};
use crate::cluster::random_hex;
use crate::controller::lifecycle::is_unreachable;
use crate::scheduler::UNREACHABLE_TAINT;

fn not_registered(name: &str) -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "NotFound", format!("node `{name}` is not registered: POST /api/v1/nodes/register first"))
}

/// An agent whose protocol versions this master does not speak (see `wasmlet_api::protocol::negotiate`).
fn unsupported(why: String) -> Failure {
    Failure::new(StatusCode::BAD_REQUEST, UNSUPPORTED_PROTOCOL_VERSION, why)
}

/// Refuses every call of a node whose agent registered with a protocol this
/// master no longer serves (before the master was upgraded past it): it must
/// be upgraded, then it registers again.
fn check_protocol(shared: &Shared, name: &str) -> Result<(), Failure> {
    match shared.agents.get(name) {
        Some(agent) => negotiate(None, agent.protocol).map(|_| ()).map_err(unsupported),
        None => Ok(()),
    }
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string())
}

/// A join for a name whose credential is still valid: refused, saying what an admin can do.
fn identity_taken(name: &str, live: &[TokenRecord]) -> Failure {
    let ids: Vec<&str> = live.iter().map(|r| r.id.as_str()).collect();
    Failure::conflict(format!(
        "node `{name}` is registered and its credential ({}) is valid: a join cannot take over a live node's identity. \
         If this machine replaces that node, an admin deletes the node (`DELETE /api/v1/nodes/{name}`, which revokes its credential) \
         or revokes its credential (`wasmlet-master token revoke {}`), then the machine joins again; otherwise join under another --name",
        ids.join(", "),
        ids.first().copied().unwrap_or_default(),
    ))
}

/// Signs the node's request for its name and `source`, when the master serves TLS.
fn node_certificate(shared: &Shared, node: &str, csr: Option<&str>, source: std::net::IpAddr) -> Result<Option<String>, Failure> {
    let (Some(csr), Some(_)) = (csr, shared.ca_fingerprint) else { return Ok(None) };
    let lifetime = shared.config.serving_certificate_ttl.get();
    let chain = shared.pki.sign_node_request(csr, node, &[source], lifetime).map_err(|e| Failure::invalid(format!("servingCsr: {e}")))?;
    Ok(Some(chain))
}

/// When the agent holding `credential` (and a certificate issued now) must renew, counted from now.
fn renew_after(shared: &Shared, credential: Option<&TokenRecord>, now: DateTime<Utc>) -> wasmlet_api::Duration {
    let certificate = wasmlet_security::pki::renewal_due(shared.config.serving_certificate_ttl.get());
    let credential = credential.map(|record| match record.expires {
        Some(expires) => {
            let due = (expires - record.created).to_std().map(wasmlet_security::pki::renewal_due).unwrap_or_default();
            let due_at = chrono::Duration::from_std(due).ok().and_then(|d| record.created.checked_add_signed(d)).unwrap_or(expires);
            (due_at - now).to_std().unwrap_or_default()
        }
        // A credential from before credentials expired: replace it now.
        None => Duration::ZERO,
    });
    credential.map_or(certificate, |c| c.min(certificate)).into()
}

/// A new node credential for `node`, expiring after `--node-credential-ttl`.
fn new_credential(shared: &Shared, node: &str, description: String, now: DateTime<Utc>) -> Result<(String, TokenRecord), Failure> {
    let token = wasmlet_security::Token::generate().map_err(internal)?;
    let lifetime = chrono::Duration::from_std(shared.config.node_credential_ttl.get()).map_err(internal)?;
    let expires = now.checked_add_signed(lifetime).ok_or_else(|| internal("--node-credential-ttl is too long"))?;
    let record = TokenRecord::new(&token, Role::Node(node.to_string()), description, Some(expires));
    Ok((token.to_string(), record))
}

pub async fn register(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, Failure> {
    let request: RegisterRequest = decode_wire(&body, "registration")?;
    let name = request.name.clone();
    let issue_credential = match &caller.role {
        Role::Join | Role::Admin => true,
        Role::Node(own) if *own == name => false,
        _ => {
            return Err(Failure::new(StatusCode::FORBIDDEN, "Forbidden", format!("{caller} may not register node `{name}`")));
        }
    };
    if !wasmlet_api::validate::is_dns_label(&name) {
        return Err(Failure::invalid(format!(
            "node `{name}` cannot register: `{name}` is not a valid name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        )));
    }
    // The version both speak: the agent's newest, or this master's when the agent is newer.
    let version = negotiate(request.min_protocol_version, request.protocol_version.unwrap_or(1)).map_err(|why| {
        tracing::warn!(node = %name, "refusing a registration: {why}");
        unsupported(why)
    })?;
    let serving_certificate = node_certificate(&shared, &name, request.serving_csr.as_deref(), peer.ip())?;
    let secure = serving_certificate.is_some();
    let scheme = if secure { "https" } else { "http" };
    let endpoint = crate::annotations::agent_endpoint(scheme, peer, request.api_port, request.api_url.as_deref());
    let ingress = crate::annotations::agent_endpoint("http", peer, request.ingress_port, None);
    // Version 2 agents serve their peers mutual TLS on the ingress port.
    let ingress_peer =
        (secure && version >= 2).then(|| crate::annotations::agent_endpoint("https", peer, request.ingress_port, None)).flatten();
    let now = Utc::now();
    let (node, credential, master_token, unreachable) = {
        let (credential, master_token) = shared
            .update(|cluster| {
                let role = Role::Node(name.clone());
                if issue_credential {
                    // Under the cluster lock: two joins for one name cannot both pass.
                    let live: Vec<TokenRecord> = shared.tokens.unrevoked(&role).into_iter().filter(|r| r.unusable(now).is_none()).collect();
                    if !live.is_empty() {
                        return Err(identity_taken(&name, &live));
                    }
                }
                let existing = cluster.nodes.get(&name).cloned();
                let mut node = existing.clone().unwrap_or_else(|| Node::new(&name));
                node.metadata.labels = request.labels.clone();
                let annotations = &mut node.metadata.annotations;
                for (key, value) in [
                    (AGENT_API, endpoint.clone()),
                    (AGENT_INGRESS, ingress.clone()),
                    (AGENT_INGRESS_PEER, ingress_peer.clone()),
                    (AGENT_PROTOCOL, Some(version.to_string())),
                    (NODE_CA, secure.then(|| shared.pki.nodes().fingerprint().to_string())),
                ] {
                    match value {
                        Some(value) => annotations.insert(key.to_string(), value),
                        None => annotations.remove(key),
                    };
                }
                let unreachable = node.spec.taints.iter().filter(|t| t.key == UNREACHABLE_TAINT).cloned();
                node.spec.taints = request.taints.iter().cloned().chain(unreachable).collect();
                node.status = request.status.clone();
                node.validate().map_err(|e| Failure::invalid(format!("node `{name}` cannot register: {e}")))?;
                let master_token = cluster.credential(&name).map(str::to_string).unwrap_or_else(|| random_hex(32));
                let mut txn = cluster.txn();
                txn.put_credential(&name, master_token.clone());
                let credential = if issue_credential {
                    // Only expired or revoked ones are left (a live one is refused above): tidy them away.
                    for mut old in shared.tokens.unrevoked(&role) {
                        old.revoked = Some(now);
                        txn.put_token(old);
                    }
                    let description = format!("credential of node {name}, joined with token {}", caller.token_id);
                    let (token, record) = new_credential(&shared, &name, description, now)?;
                    txn.put_token(record.clone());
                    Some((token, record))
                } else {
                    None
                };
                txn.put_node(node);
                let what = match (&existing, issue_credential) {
                    (None, _) => format!("joined the cluster with token {}", caller.token_id),
                    (Some(_), true) => format!("joined again with token {}", caller.token_id),
                    (Some(_), false) => "registered again".to_string(),
                };
                txn.event(EventType::Normal, "Registered", ("Node", &name), format!("node {name} {what}"));
                Ok((txn, (credential, master_token)))
            })
            .await?;
        shared.leases().renew(&name, tokio::time::Instant::now());
        let node = shared.cluster().nodes.get(&name).cloned().ok_or_else(|| not_registered(&name))?;
        let unreachable = is_unreachable(&node);
        (node, credential, master_token, unreachable)
    };
    // Back from silence: the lifecycle controller lifts the taint.
    if unreachable {
        shared.wake.notify_one();
    }
    let config = &shared.config;
    let held = match &credential {
        Some((_, record)) => Some(record.clone()),
        None => shared.tokens.get(&caller.token_id),
    };
    let tls = shared.ca_fingerprint.is_some();
    Ok(Json(RegisterResponse {
        node,
        credential: credential.map(|(token, _)| token),
        ca_certificate: tls.then(|| shared.pki.ca_pem().to_string()),
        serving_certificate,
        master_token,
        heartbeat_interval: config.heartbeat_interval,
        status_report_interval: config.status_report_interval,
        lost_after: config.lost_after,
        // Version 1 agents refuse fields they do not know.
        nodes_ca_certificate: (tls && version >= 2).then(|| shared.pki.nodes().ca_pem().to_string()),
        renew_after: (version >= 2).then(|| renew_after(&shared, held.as_ref(), now)),
        protocol_version: (version >= 2).then_some(PROTOCOL_VERSION),
    })
    .into_response())
}

/// `POST /nodes/{name}/credential`: the node, with its current credential,
/// gets a new one and a new certificate. The one presented is cut short to a
/// third of a lifetime, and revoked when the node first uses the new one;
/// older ones are revoked, and those issued after it (renewals whose answer
/// was lost) forgotten: a node holds at most two valid credentials.
pub async fn renew_credential(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    if caller.role != Role::Node(name.clone()) {
        return Err(Failure::new(StatusCode::FORBIDDEN, "Forbidden", format!("{caller} may not renew the credential of node `{name}`")));
    }
    check_protocol(&shared, &name)?;
    let request: CredentialRenewal = decode_wire(&body, "credential renewal")?;
    let serving_certificate = node_certificate(&shared, &name, request.serving_csr.as_deref(), peer.ip())?;
    let now = Utc::now();
    let description = format!("credential of node {name}, renewed from token {}", caller.token_id);
    let (token, record) = new_credential(&shared, &name, description, now)?;
    shared
        .update(|cluster| {
            if !cluster.nodes.contains_key(&name) {
                return Err(not_registered(&name));
            }
            let overlap = chrono::Duration::from_std(shared.config.node_credential_ttl.get() / 3).map_err(internal)?;
            let cut_off = now.checked_add_signed(overlap).unwrap_or(now);
            let mut txn = cluster.txn();
            let presented_at = shared.tokens.get(&caller.token_id).map(|r| r.created);
            for mut other in shared.tokens.unrevoked(&caller.role) {
                if other.id == caller.token_id {
                    // Bounded even if the master restarts before the new one is used.
                    if other.expires.is_none_or(|e| e > cut_off) {
                        other.expires = Some(cut_off);
                        txn.put_token(other);
                    }
                } else if presented_at.is_some_and(|at| other.created > at) {
                    // Issued by an earlier renewal whose answer the node never
                    // used (lost, or taken by whoever renews with a stolen
                    // credential): forgotten, so renewals never pile up credentials.
                    txn.delete(crate::store::Kind::Token, &other.id);
                } else {
                    // Older than the one presented, which the node holds.
                    other.revoked = Some(now);
                    txn.put_token(other);
                }
            }
            txn.put_token(record.clone());
            Ok((txn, ()))
        })
        .await?;
    shared.renewed_credentials.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), record.id.clone());
    tracing::info!(node = %name, credential = %record.id, from = %caller.token_id, "renewed a node credential");
    let tls = shared.ca_fingerprint.is_some();
    Ok(Json(RenewedCredential {
        credential: token,
        serving_certificate,
        nodes_ca_certificate: tls.then(|| shared.pki.nodes().ca_pem().to_string()),
        renew_after: renew_after(&shared, Some(&record), now),
    })
    .into_response())
}

/// Once a node presents the credential it renewed last, its older ones are
/// revoked, and those of earlier renewals, already unusable, are forgotten:
/// a node keeps two records, however often it renews (the audit log keeps the history).
async fn retire_older_credentials(shared: &Shared, node: &str, presented: &str) {
    {
        let mut renewed = shared.renewed_credentials.lock().unwrap_or_else(|e| e.into_inner());
        if renewed.is_empty() || renewed.get(node).map(String::as_str) != Some(presented) {
            return;
        }
        renewed.remove(node);
    }
    let now = Utc::now();
    let mut txn = shared.cluster().txn();
    for mut old in shared.tokens.of_role(&Role::Node(node.to_string())).into_iter().filter(|r| r.id != presented) {
        if old.unusable(now).is_some() {
            txn.delete(crate::store::Kind::Token, &old.id);
        } else {
            old.revoked = Some(now);
            txn.put_token(old);
        }
    }
    if let Err(e) = shared.commit(txn).await {
        tracing::warn!(%node, error = %e, "cannot revoke the older credentials yet; trying again at the next heartbeat");
        shared.renewed_credentials.lock().unwrap_or_else(|e| e.into_inner()).insert(node.to_string(), presented.to_string());
    }
}

/// Why a node must register again before it goes on: its certificate is not
/// from this cluster's node CA (it was issued before the master had one, by
/// a master of an older version). Registering gives it one, with no one's help.
fn must_register_again(shared: &Shared, node: &Node) -> Option<Failure> {
    shared.ca_fingerprint?;
    let annotations = &node.metadata.annotations;
    let has_certificate = annotations.get(AGENT_API).is_some_and(|url| url.starts_with("https://"));
    let current = shared.pki.nodes().fingerprint().to_string();
    (has_certificate && annotations.get(NODE_CA) != Some(&current)).then(|| {
        Failure::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "node `{}` must register again: its certificate is not from this cluster's node CA (issued by an older master); registering brings a new one",
                node.metadata.name
            ),
        )
    })
}

/// Answers from the agent views and records the renewal in the lease table
/// only: renewals never wait for the cluster lock (nor for the controllers).
pub async fn renew_lease(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let _renewal: LeaseRenewal = decode_wire(&body, "lease renewal")?;
    let agent = shared.agents.get(&name).ok_or_else(|| not_registered(&name))?;
    negotiate(None, agent.protocol).map_err(unsupported)?;
    retire_older_credentials(&shared, &name, &caller.token_id).await;
    shared.leases().renew(&name, tokio::time::Instant::now());
    if agent.unreachable {
        shared.wake.notify_one();
    }
    Ok(Json(LeaseResponse {
        assignment_revision: agent.assignment,
        // Agents of version 2 or older refuse the field.
        protocol_version: (agent.protocol >= ISOLATION_VERSION).then_some(PROTOCOL_VERSION),
    })
    .into_response())
}

pub async fn report_status(State(shared): State<Arc<Shared>>, Path(name): Path<String>, body: Bytes) -> Result<Response, Failure> {
    check_protocol(&shared, &name)?;
    let status: NodeStatus = decode_wire(&body, "node status")?;
    shared
        .update(|cluster| {
            let mut node = cluster.nodes.get(&name).cloned().ok_or_else(|| not_registered(&name))?;
            node.status = status.clone();
            let mut txn = cluster.txn();
            txn.put_node(node);
            Ok((txn, ()))
        })
        .await?;
    shared.leases().renew(&name, tokio::time::Instant::now());
    Ok(Json(shared.cluster().nodes.get(&name).cloned()).into_response())
}

pub async fn assignment(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, Failure> {
    let params = ListParams::parse(&query)?;
    check_protocol(&shared, &name)?;
    let changes = shared.agents.subscribe(&name).ok_or_else(|| not_registered(&name))?;
    if let Some(failure) = shared.cluster().nodes.get(&name).and_then(|node| must_register_again(&shared, node)) {
        return Err(failure);
    }
    if params.watch && !wait_for_assignment(&shared, changes, params.since, params.timeout).await {
        return Ok(not_modified());
    }
    let cluster = shared.cluster();
    let agent = cluster.nodes.get(&name).map_or(1, agent_protocol);
    let instances = cluster
        .instances_on(&name)
        // A Lost instance that was replaced elsewhere must stop here (fencing);
        // one that is not replaced (`replace: false`, everyNode) stays, so the
        // returning node keeps running it rather than restarting it.
        .filter(|p| p.instance.status.phase != Phase::Lost || !is_replaced_when_lost(&p.workload))
        .filter_map(|p| {
            let assigned = AssignedInstance { instance: p.instance.clone(), workload: p.workload.clone() };
            let sent = assigned_for_agent(assigned, agent);
            if sent.is_none() {
                tracing::warn!(
                    instance = %p.instance.metadata.name, node = %name, protocol = agent,
                    "withholding an instance that needs process isolation from an agent too old to run it"
                );
            }
            sent
        })
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
    check_protocol(&shared, &name)?;
    let batch: InstanceStatusBatch = decode_wire(&body, "instance status batch")?;
    shared
        .update(|cluster| {
            if !cluster.nodes.contains_key(&name) {
                return Err(not_registered(&name));
            }
            let mut txn = cluster.txn();
            txn.divisible();
            for update in &batch.updates {
                let Some(placed) = cluster.instances.get(&update.name) else { continue };
                // Stale (older epoch), someone else's, or already handed off: the master's view wins.
                if placed.instance.spec.node != name
                    || update.epoch < placed.instance.spec.epoch
                    || placed.instance.status.phase == Phase::Lost
                {
                    tracing::debug!(instance = %update.name, node = %name, epoch = update.epoch, "ignoring an instance status update");
                    continue;
                }
                if placed.instance.status != update.status {
                    let mut changed = placed.clone();
                    changed.instance.status = update.status.clone();
                    txn.put_instance(changed);
                }
            }
            Ok((txn, ()))
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
