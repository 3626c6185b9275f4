//! `/api/v1/registry-credentials`: credentials for OCI registries the master
//! holds for workloads whose module names them. Admins create, replace and
//! delete them; answers never carry the password. The node route
//! `GET /nodes/{name}/registry-credentials/{credentials}` gives them, password
//! included, to the node they are for (one that runs an instance of a
//! workload naming them), and only there; every such read is audited.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wasmlet_api::RegistryCredential;
use wasmlet_api::protocol::List;

use super::{Failure, decode};
use crate::Shared;
use crate::auth::{Caller, Role};
use crate::store::{Kind, StoreError};

pub async fn list(State(shared): State<Arc<Shared>>) -> Response {
    let cluster = shared.cluster();
    let items: Vec<RegistryCredential> = cluster.registry_credentials.values().map(RegistryCredential::redacted).collect();
    Json(List { revision: cluster.revision, items }).into_response()
}

pub async fn get(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    let cluster = shared.cluster();
    let credential = cluster.registry_credentials.get(&name).ok_or_else(|| Failure::not_found("registry credentials", &name))?;
    Ok(Json(credential.redacted()).into_response())
}

fn credential_from(body: &[u8]) -> Result<RegistryCredential, Failure> {
    let mut credential: RegistryCredential = decode(body, "registry credentials")?;
    let name = wasmlet_api::validate::shorten(&credential.metadata.name).into_owned();
    credential.validate().map_err(|e| Failure::invalid(format!("registry credentials `{name}` are invalid: {e}")))?;
    credential.metadata.uid = None;
    credential.metadata.creation_timestamp = None;
    Ok(credential)
}

pub async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, Failure> {
    let mut credential = credential_from(&body)?;
    let name = credential.metadata.name.clone();
    let exists = || {
        Failure::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("registry credentials `{name}` already exist: replace them with PUT /api/v1/registry-credentials/{name}"),
        )
    };
    credential.metadata.resource_version = None;
    let mut txn = {
        let cluster = shared.cluster();
        if cluster.registry_credentials.contains_key(&name) {
            return Err(exists());
        }
        cluster.txn()
    };
    let answer = credential.redacted();
    txn.put_registry_credential(credential);
    match shared.commit(txn).await {
        Err(StoreError::Conflict { kind: Kind::RegistryCredential, .. }) => Err(exists()),
        Err(e) => Err(e.into()),
        Ok(_) => {
            let stored = shared.cluster().registry_credentials.get(&name).map(RegistryCredential::redacted).unwrap_or(answer);
            Ok((StatusCode::CREATED, Json(stored)).into_response())
        }
    }
}

pub async fn replace(State(shared): State<Arc<Shared>>, Path(name): Path<String>, body: Bytes) -> Result<Response, Failure> {
    let credential = credential_from(&body)?;
    if credential.metadata.name != name {
        return Err(Failure::invalid(format!("metadata.name `{}` is not `{name}`, the name in the path", credential.metadata.name)));
    }
    shared
        .update(|cluster| {
            let current = cluster.registry_credentials.get(&name).ok_or_else(|| Failure::not_found("registry credentials", &name))?;
            let mut replaced = credential.clone();
            replaced.metadata.uid = current.metadata.uid.clone();
            replaced.metadata.creation_timestamp = current.metadata.creation_timestamp;
            replaced.metadata.resource_version = current.metadata.resource_version;
            let mut txn = cluster.txn();
            txn.put_registry_credential(replaced);
            Ok((txn, ()))
        })
        .await?;
    let stored = shared.cluster().registry_credentials.get(&name).map(RegistryCredential::redacted);
    Ok(Json(stored).into_response())
}

pub async fn delete(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    let deleted = shared
        .update(|cluster| {
            let current = cluster.registry_credentials.get(&name).ok_or_else(|| Failure::not_found("registry credentials", &name))?;
            let mut txn = cluster.txn();
            txn.delete(Kind::RegistryCredential, &name);
            Ok((txn, current.redacted()))
        })
        .await?;
    Ok(Json(deleted).into_response())
}

/// `GET /nodes/{name}/registry-credentials/{credentials}`: for the node
/// itself, when one of its instances' workloads names them (the policy
/// checks that); with the password.
pub async fn for_node(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path((node, name)): Path<(String, String)>,
) -> Result<Response, Failure> {
    if caller.role != Role::Node(node.clone()) {
        return Err(Failure::new(StatusCode::FORBIDDEN, "Forbidden", format!("only node {node} reads its registry credentials")));
    }
    let cluster = shared.cluster();
    let credential = cluster.registry_credentials.get(&name).ok_or_else(|| Failure::not_found("registry credentials", &name))?;
    // Only for a module on their own registry (they may have been replaced for another since the workload was applied).
    let own_registry = cluster.instances_on(&node).any(|p| {
        let module = &p.workload.spec.module;
        module.credentials.as_ref() == Some(&name)
            && module
                .oci
                .as_deref()
                .and_then(|r| wasmlet_registry::parse(r).ok())
                .is_some_and(|r| r.resolve_registry() == credential.registry)
    });
    if !own_registry {
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("registry credentials `{name}` are for {}, which no module of node {node}'s instances is on", credential.registry),
        ));
    }
    let password = credential.password.clone().unwrap_or_default();
    Ok(Json(wasmlet_api::protocol::HeldCredentials {
        registry: credential.registry.clone(),
        username: credential.username.clone(),
        password,
    })
    .into_response())
}
