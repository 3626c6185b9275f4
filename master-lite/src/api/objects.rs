//! Workloads (create, replace with optimistic concurrency, delete with their
//! instances), instances and events, for operators.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wasmlet_api::protocol::List;
use wasmlet_api::protocol::{CanaryHeader, CanarySplit, IngressEndpoint, ServiceEndpoints};
use wasmlet_api::{
    ConditionStatus, EventType, ModuleRef, Phase, Rollout, Workload, WorkloadCondition, WorkloadConditionType, WorkloadStatus, WorkloadType,
};

use super::{Failure, ListParams, decode, not_modified, wait_for_change};
use crate::Shared;
use crate::auth::{Caller, Role};
use crate::cluster::Cluster;
use crate::controller::workloads::max_replicas_problem;
use crate::store::modules::ModuleProblem;
use crate::store::{Kind, StoreError};
use wasmlet_registry::credentials::Credentials;
use wasmlet_registry::{RegistryAuth, RegistryError};

type QueryPairs = Query<Vec<(String, String)>>;

/// Answers a list, or (with `watch=true`) waits for the collection to move past `since` first.
async fn list<T: serde::Serialize>(
    shared: &Shared,
    query: &[(String, String)],
    kind: Kind,
    items: impl Fn(&Cluster, &super::Selector) -> Vec<T>,
) -> Result<Response, Failure> {
    list_of(shared, query, &[kind], items).await
}

/// A list made of several collections: a watch returns when any of them moves past `since`.
async fn list_of<T: serde::Serialize>(
    shared: &Shared,
    query: &[(String, String)],
    kinds: &[Kind],
    items: impl Fn(&Cluster, &super::Selector) -> Vec<T>,
) -> Result<Response, Failure> {
    let params = ListParams::parse(query)?;
    if params.watch {
        super::check_since(shared, params.since).await?;
    }
    let revision = |c: &Cluster| kinds.iter().map(|k| c.collection_revision(*k)).max().unwrap_or(0);
    if params.watch && !wait_for_change(shared, params.since, params.timeout, revision).await {
        return Ok(not_modified());
    }
    let cluster = shared.cluster();
    Ok(Json(List { revision: cluster.revision, items: items(&cluster, &params.selector) }).into_response())
}

pub async fn list_workloads(State(shared): State<Arc<Shared>>, Query(query): QueryPairs) -> Result<Response, Failure> {
    list(&shared, &query, Kind::Workload, |c, s| {
        c.workloads.values().filter(|w| s.matches(&w.metadata.labels)).map(|w| with_status(c, w)).collect()
    })
    .await
}

pub async fn list_instances(State(shared): State<Arc<Shared>>, Query(query): QueryPairs) -> Result<Response, Failure> {
    list(&shared, &query, Kind::Instance, |c, s| {
        c.instances.values().filter(|p| s.matches(&p.instance.metadata.labels)).map(|p| p.instance.clone()).collect()
    })
    .await
}

/// `GET /endpoints`: for every service, the ingresses of the nodes with a
/// Ready instance of it, and during a gray release the new revision's share
/// ([`service_endpoints`]). Watchable: it changes with the instances, the
/// workloads and their rollouts. Peer URLs
/// go only to callers that know the field: agents of protocol version 1
/// refuse fields they do not know.
pub async fn list_endpoints(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Query(query): QueryPairs,
) -> Result<Response, Failure> {
    let canary_readers = match &caller.role {
        Role::Node(own) => node_protocol(&shared, own) >= wasmlet_api::protocol::CANARY_VERSION,
        _ => true,
    };
    list_of(&shared, &query, &[Kind::Instance, Kind::Rollout, Kind::Workload], |c, _| {
        let peer_urls = match &caller.role {
            Role::Node(own) => c.nodes.get(own).is_some_and(|n| crate::annotations::agent_protocol(n) >= 2),
            _ => true,
        };
        let ingress = |p: &crate::cluster::Placed| {
            let node = c.nodes.get(&p.instance.spec.node)?;
            let url = node.metadata.annotations.get(crate::annotations::AGENT_INGRESS)?;
            let peer_url = node.metadata.annotations.get(crate::annotations::AGENT_INGRESS_PEER).filter(|_| peer_urls).cloned();
            Some(IngressEndpoint { node: node.metadata.name.clone(), url: url.clone(), peer_url })
        };
        c.workloads
            .values()
            .filter(|w| w.spec.kind == wasmlet_api::WorkloadType::Service)
            .map(|w| service_endpoints(c, w, canary_readers, &ingress))
            .collect()
    })
    .await
}

/// Where `w`, a service, is served: the nodes with a Ready instance; during a
/// gray release (for callers that follow one) split into the previous and the
/// new revision's, with the new one's weight; after a rollback, the bad
/// revision's instances set apart with no weight while they stop.
fn service_endpoints(
    c: &Cluster,
    w: &Workload,
    canary_readers: bool,
    ingress: &impl Fn(&crate::cluster::Placed) -> Option<IngressEndpoint>,
) -> ServiceEndpoints {
    let sorted = |mut endpoints: Vec<IngressEndpoint>| {
        endpoints.sort_by(|a, b| a.node.cmp(&b.node));
        endpoints.dedup();
        endpoints
    };
    let ready: Vec<&crate::cluster::Placed> = c
        .instances
        .values()
        .filter(|p| p.instance.spec.workload == w.metadata.name)
        .filter(|p| p.instance.status.phase == wasmlet_api::Phase::Running && p.instance.status.reason.is_none())
        .collect();
    // During a gray release the new revision's instances get the step's weight; after a rollback
    // the bad revision's get nothing while they stop.
    let record = c.rollouts.get(&w.metadata.name);
    let split = match crate::controller::rollouts::stepping(c, w) {
        Some((rollout, _, spec)) if spec.strategy == wasmlet_api::Strategy::Canary => {
            let header = spec.canary_header().map(|(name, value)| CanaryHeader { name, value });
            Some((rollout.status.weight, header, true))
        }
        Some(_) => None,
        None if record.is_some_and(|r| r.status.phase == wasmlet_api::RolloutPhase::RolledBack) => Some((0, None, false)),
        None => None,
    };
    let split = split.filter(|_| canary_readers);
    let Some((weight, header, new_is_current)) = split else {
        let endpoints = sorted(ready.iter().filter_map(|p| ingress(p)).collect());
        return ServiceEndpoints { workload: w.metadata.name.clone(), route: w.spec.route.clone(), endpoints, canary: None };
    };
    let in_split = |p: &crate::cluster::Placed| crate::controller::rollouts::is_new(p, w) == new_is_current;
    let (new, old): (Vec<_>, Vec<_>) = ready.into_iter().partition(|p| in_split(p));
    let instances: Vec<String> = c
        .instances
        .values()
        .filter(|p| p.instance.spec.workload == w.metadata.name && in_split(p))
        .map(|p| p.instance.metadata.name.clone())
        .collect();
    if instances.is_empty() && !new_is_current {
        let endpoints = sorted(old.iter().filter_map(|p| ingress(p)).collect());
        return ServiceEndpoints { workload: w.metadata.name.clone(), route: w.spec.route.clone(), endpoints, canary: None };
    }
    let canary = CanarySplit { weight, header, endpoints: sorted(new.iter().filter_map(|p| ingress(p)).collect()), instances };
    let endpoints = sorted(old.iter().filter_map(|p| ingress(p)).collect());
    ServiceEndpoints { workload: w.metadata.name.clone(), route: w.spec.route.clone(), endpoints, canary: Some(canary) }
}

/// The protocol version of node `node`'s agent.
fn node_protocol(shared: &Shared, node: &str) -> u32 {
    shared.cluster().nodes.get(node).map_or(1, crate::annotations::agent_protocol)
}

pub async fn list_events(State(shared): State<Arc<Shared>>, Query(query): QueryPairs) -> Result<Response, Failure> {
    list(&shared, &query, Kind::Event, |c, s| c.events_in_order().filter(|e| s.matches(&e.metadata.labels)).cloned().collect()).await
}

pub async fn get_instance(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    let cluster = shared.cluster();
    let placed = cluster.instances.get(&name).ok_or_else(|| Failure::not_found("instance", &name))?;
    Ok(Json(&placed.instance).into_response())
}

pub async fn get_workload(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    let cluster = shared.cluster();
    let workload = cluster.workloads.get(&name).ok_or_else(|| Failure::not_found("workload", &name))?;
    Ok(Json(with_status(&cluster, workload)).into_response())
}

/// The workload with its status counted from its instances.
fn with_status(cluster: &Cluster, workload: &Workload) -> Workload {
    let mut status = WorkloadStatus {
        desired: match workload.spec.placement {
            Some(_) => 0,
            None => workload.spec.replicas.unwrap_or(1),
        },
        observed_generation: workload.metadata.resource_version.unwrap_or(0),
        ..Default::default()
    };
    for placed in cluster.instances.values().filter(|p| p.instance.spec.workload == workload.metadata.name) {
        match placed.instance.status.phase {
            Phase::Running => {
                status.running += 1;
                status.ready += 1;
            }
            Phase::Succeeded => status.succeeded += 1,
            Phase::Failed => status.failed += 1,
            _ => {}
        }
        if workload.spec.placement.is_some() && placed.instance.status.phase != Phase::Lost {
            status.desired += 1;
        }
    }
    if let Some(problem) = cluster.invalid(Kind::Workload, &workload.metadata.name) {
        status.conditions.push(WorkloadCondition {
            kind: WorkloadConditionType::Invalid,
            status: ConditionStatus::True,
            reason: "NotActedOn".to_string(),
            message: format!("{problem}; the master neither places nor removes its instances: apply a valid workload or delete it"),
        });
    }
    status.rollout = cluster.rollouts.get(&workload.metadata.name).map(|r| r.status.clone());
    let mut workload = workload.clone();
    workload.status = Some(status);
    workload
}

/// Decodes and validates a workload body against the API's and this master's
/// limits, and checks that its module is uploaded and valid.
async fn workload_from(shared: &Shared, body: &[u8], headers: &HeaderMap) -> Result<Workload, Failure> {
    let mut workload: Workload = decode(body, "workload")?;
    let name = wasmlet_api::validate::shorten(&workload.metadata.name).into_owned();
    workload.validate().map_err(|e| Failure::invalid(format!("workload `{name}` is invalid: {e}")))?;
    if let Some(replicas) = workload.spec.replicas
        && replicas > shared.config.max_replicas
    {
        return Err(Failure::invalid(format!(
            "workload `{name}` is invalid: {}",
            max_replicas_problem(replicas, shared.config.max_replicas)
        )));
    }
    if workload.spec.module.oci.is_some() {
        resolve_module(shared, &name, &mut workload.spec.module).await?;
        // What the registry said is checked as if the user had written it.
        workload.validate().map_err(|e| Failure::invalid(format!("workload `{name}` is invalid as resolved: {e}")))?;
    }
    let module = &workload.spec.module;
    if !module.is_remote() {
        match shared.modules.ensure_valid(&module.digest).await {
            Ok(()) => {}
            Err(ModuleProblem::Missing) => {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("MASTER:7070");
                return Err(Failure::invalid(format!(
                    "spec.module.digest: module {digest} is not uploaded to the master; upload it first: curl -X PUT --data-binary @{source} http://{host}/api/v1/modules/{digest}",
                    digest = module.digest,
                    source = module.source,
                )));
            }
            Err(ModuleProblem::Unavailable(e)) => return Err(e.into()),
            Err(ModuleProblem::Invalid(problem)) => {
                return Err(Failure::invalid(format!(
                    "spec.module.digest: module {} cannot run: it is not valid WebAssembly: {problem}; build the module again and upload it",
                    module.digest
                )));
            }
        }
    }
    workload.status = None;
    Ok(workload)
}

/// Pins a registry module: its reference to the manifest's digest, its
/// `digest` to the module layer's, as the registry says now (a manifest
/// that pins both is taken as it is: the nodes check the bytes).
async fn resolve_module(shared: &Shared, name: &str, module: &mut ModuleRef) -> Result<(), Failure> {
    let Some(reference) = &module.oci else { return Ok(()) };
    let invalid = |field: &str, problem: String| Failure::invalid(format!("workload `{name}` is invalid: spec.module.{field}: {problem}"));
    let parsed = wasmlet_registry::parse(reference).map_err(|e| invalid("oci", e))?;
    let held = match &module.credentials {
        Some(credentials) => {
            let cluster = shared.cluster();
            let held = cluster.registry_credentials.get(credentials).ok_or_else(|| {
                invalid(
                    "credentials",
                    format!("the master holds no registry credentials `{credentials}`: create them first (wasmlet create registry-credentials {credentials} …)"),
                )
            })?;
            // Credentials go to their own registry only.
            if held.registry != parsed.resolve_registry() {
                return Err(invalid(
                    "credentials",
                    format!("`{credentials}` are for {}, not {}, the registry of {reference}", held.registry, parsed.resolve_registry()),
                ));
            }
            Some(RegistryAuth::Basic(held.username.clone(), held.password.clone().unwrap_or_default()))
        }
        None => None,
    };
    if parsed.digest().is_some() && !module.digest.is_empty() {
        return Ok(());
    }
    let auth = match (held, &shared.config.registry_credentials) {
        (Some(held), _) => held,
        (None, Some(file)) => Credentials::read(file)
            .map_err(|e| {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "RegistryCredentials", format!("the master's --registry-credentials {e}"))
            })?
            .for_registry(parsed.resolve_registry()),
        (None, None) => RegistryAuth::Anonymous,
    };
    let resolved = shared.registry.resolve(&parsed, &auth, shared.config.max_module_size.get()).await.map_err(|e| match e {
        RegistryError::Refused(why) => invalid("oci", why),
        RegistryError::TooLarge { what, limit } => {
            invalid("oci", format!("{what} is larger than the {limit} bytes the master accepts (--max-module-size)"))
        }
        RegistryError::Unreachable(why) => Failure::new(
            StatusCode::BAD_GATEWAY,
            "RegistryUnreachable",
            format!("cannot resolve spec.module.oci of workload `{name}`: {why}; apply it again once the registry answers"),
        ),
    })?;
    if !module.digest.is_empty() && module.digest != resolved.digest {
        return Err(invalid(
            "digest",
            format!(
                "{reference} holds module {}, not the {} the manifest pins: push the module again or correct the digest",
                resolved.digest, module.digest
            ),
        ));
    }
    module.oci = Some(resolved.pinned);
    module.digest = resolved.digest;
    Ok(())
}

pub async fn create_workload(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Result<Response, Failure> {
    let mut workload = workload_from(&shared, &body, &headers).await?;
    let name = workload.metadata.name.clone();
    let exists = || {
        Failure::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("workload `{name}` already exists: change it with PUT /api/v1/workloads/{name}, or pick another name"),
        )
    };
    workload.metadata.uid = None;
    workload.metadata.resource_version = None;
    workload.metadata.creation_timestamp = None;
    let mut txn = {
        let cluster = shared.cluster();
        if cluster.workloads.contains_key(&name) {
            return Err(exists());
        }
        cluster.txn()
    };
    txn.put_rollout(Rollout::first(&name, &workload.spec, chrono::Utc::now()));
    txn.put_workload(workload);
    txn.event(EventType::Normal, "Created", ("Workload", &name), format!("workload {name} created"));
    match shared.commit(txn).await {
        // Created through another master meanwhile: the put expected no workload of that name.
        Err(StoreError::Conflict { kind: Kind::Workload, .. }) => return Err(exists()),
        result => result?,
    };
    let cluster = shared.cluster();
    let created = cluster.workloads.get(&name).map(|w| with_status(&cluster, w));
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub async fn replace_workload(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    let mut workload = workload_from(&shared, &body, &headers).await?;
    if workload.metadata.name != name {
        return Err(Failure::invalid(format!("metadata.name: `{}` does not match the name in the URL, `{name}`", workload.metadata.name)));
    }
    let changed_since = |given: u64, now: Option<u64>| {
        Failure::conflict(format!(
            "workload `{name}` was changed since resourceVersion {given} (it is now {}): GET it again, re-apply your change and PUT it with the new resourceVersion",
            now.map_or_else(|| "deleted".to_string(), |r| r.to_string())
        ))
    };
    let given = workload.metadata.resource_version;
    let (mut txn, rolled, rollout) = {
        let cluster = shared.cluster();
        let current = cluster.workloads.get(&name).ok_or_else(|| Failure::not_found("workload", &name))?;
        if let Some(given) = given
            && current.metadata.resource_version != Some(given)
        {
            return Err(changed_since(given, current.metadata.resource_version));
        }
        // The write expects the revision read here: a write in between makes it a conflict.
        workload.metadata.resource_version = current.metadata.resource_version;
        workload.metadata.uid = current.metadata.uid.clone();
        workload.metadata.creation_timestamp = current.metadata.creation_timestamp;
        let rollout = super::rollouts::after_change(&cluster, current, &workload.spec);
        (cluster.txn(), !current.spec.runs_like(&workload.spec), rollout)
    };
    let read_at = workload.metadata.resource_version.unwrap_or(0);
    txn.put_workload(workload);
    if let Some(rollout) = rollout {
        if rolled {
            let (revision, how) = (rollout.status.revision, &rollout.status.message);
            txn.event(EventType::Normal, "Updated", ("Workload", &name), format!("workload {name} changed to revision {revision}: {how}"));
        }
        txn.put_rollout(rollout);
    }
    match shared.commit(txn).await {
        Err(StoreError::Conflict { kind: Kind::Workload, .. }) => {
            let now = shared.cluster().workloads.get(&name).and_then(|w| w.metadata.resource_version);
            return Err(changed_since(given.unwrap_or(read_at), now));
        }
        result => result?,
    };
    let cluster = shared.cluster();
    let updated = cluster.workloads.get(&name).map(|w| with_status(&cluster, w));
    Ok(Json(updated).into_response())
}

pub async fn delete_workload(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    let workload = shared
        .update(|cluster| {
            let workload = cluster.workloads.get(&name).cloned().ok_or_else(|| Failure::not_found("workload", &name))?;
            let mut txn = cluster.txn();
            // The workload first; its instances may follow in pieces (the controller removes any left).
            txn.divisible();
            txn.delete(Kind::Workload, &name);
            if cluster.rollouts.contains_key(&name) || cluster.invalid(Kind::Rollout, &name).is_some() {
                txn.delete(Kind::Rollout, &name);
            }
            let instances: Vec<String> =
                cluster.instances.values().filter(|p| p.instance.spec.workload == name).map(|p| p.instance.metadata.name.clone()).collect();
            for instance in &instances {
                txn.delete(Kind::Instance, instance);
            }
            let kind = if workload.spec.kind == WorkloadType::Job { "job" } else { "workload" };
            txn.event(
                EventType::Normal,
                "Deleted",
                ("Workload", &name),
                format!("{kind} {name} deleted with its {} instance(s)", instances.len()),
            );
            Ok((txn, workload))
        })
        .await?;
    Ok(Json(workload).into_response())
}
