//! `GET /masters`: the cluster's masters with their roles (one leads and runs
//! the controllers; every one serves the API). A master on its own store is
//! the only one, and leads.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use wasmlet_api::protocol::{List, MasterRole, MasterStatus};

use super::Failure;
use crate::Shared;

pub async fn list(State(shared): State<Arc<Shared>>) -> Result<Response, Failure> {
    let leader = shared.store.leader().await?;
    let mut names = shared.store.masters().await?;
    if !names.contains(&shared.name) {
        names.push(shared.name.clone());
    }
    names.sort();
    let leads = |name: &str| match &leader {
        Some(leader) => leader == name,
        None => name == shared.name && shared.metrics.is_leader.get() == 1,
    };
    let items = names
        .into_iter()
        .map(|name| MasterStatus {
            role: if leads(&name) { MasterRole::Leader } else { MasterRole::Follower },
            answering: name == shared.name,
            name,
        })
        .collect();
    Ok(Json(List { revision: shared.cluster().revision, items }).into_response())
}
