//! A workload's rollout, for operators: read it (`GET
//! /workloads/{name}/rollout`), and pause, resume or undo it (`POST
//! /workloads/{name}/rollout/{pause|resume|undo}`, admins). The steps
//! themselves are the leader's ([`crate::controller::rollouts`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use wasmlet_api::{EventType, Rollout, RolloutPhase, Workload, WorkloadSpec};

use super::Failure;
use crate::Shared;
use crate::cluster::Cluster;
use crate::controller::rollouts::roll_back;

/// The record of `current` once its spec becomes `spec`: a new revision when
/// what runs changes; the same revision with the new steps when only
/// `spec.rollout` changes; None when nothing does.
pub fn after_change(cluster: &Cluster, current: &Workload, spec: &WorkloadSpec) -> Option<Rollout> {
    let name = &current.metadata.name;
    let now = chrono::Utc::now();
    let record = cluster.rollouts.get(name).cloned().unwrap_or_else(|| Rollout::first(name, &current.spec, now));
    if !current.spec.runs_like(spec) {
        return Some(record.changed(&current.spec, spec, now));
    }
    if current.spec.rollout == spec.rollout || !record.status.phase.active() {
        return None;
    }
    // Only the steps changed, during a rollout: go on with the new ones, or
    // (another strategy, or none) let the one-replica-at-a-time update finish it.
    let mut record = record;
    let status = &mut record.status;
    match &spec.rollout {
        Some(rollout) if Some(rollout.strategy) == status.strategy => {
            status.step_count = rollout.step_count() as u32;
            status.step = status.step.min(status.step_count);
            status.weight = rollout.weight(status.step as usize);
            status.message = rollout.describe_step(status.step as usize);
        }
        _ => {
            status.phase = RolloutPhase::Complete;
            status.strategy = None;
            status.message = "the rollout's strategy changed: rolling over one replica at a time".into();
            let revision = status.revision;
            status.conclude(revision, "Complete", &status.message.clone());
        }
    }
    Some(record)
}

fn no_record(name: &str) -> Failure {
    Failure::not_found("rollout", name)
}

/// `GET /workloads/{name}/rollout`
pub async fn get(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Response, Failure> {
    let cluster = shared.cluster();
    if !cluster.workloads.contains_key(&name) {
        return Err(Failure::not_found("workload", &name));
    }
    let rollout = cluster.rollouts.get(&name).ok_or_else(|| {
        Failure::new(
            axum::http::StatusCode::NOT_FOUND,
            "NotFound",
            format!("workload `{name}` has no rollout record yet (it was stored by an older master): it gets one when its spec changes"),
        )
    })?;
    Ok(Json(rollout).into_response())
}

/// `POST /workloads/{name}/rollout/{action}`: `pause`, `resume` or `undo`.
pub async fn act(State(shared): State<Arc<Shared>>, Path((name, action)): Path<(String, String)>) -> Result<Response, Failure> {
    let rollout = shared
        .update(|cluster| {
            let workload = cluster.workloads.get(&name).ok_or_else(|| Failure::not_found("workload", &name))?;
            let mut record = cluster.rollouts.get(&name).cloned().ok_or_else(|| no_record(&name))?;
            let mut txn = cluster.txn();
            let phase = record.status.phase;
            let not_under_way = || {
                Failure::conflict(format!(
                    "workload `{name}` has no rollout under way to {action} (revision {}, {phase}{})",
                    record.status.revision,
                    if record.stepping() { "" } else { "; `spec.rollout` gives it steps" }
                ))
            };
            match action.as_str() {
                "pause" => {
                    if phase != RolloutPhase::Progressing || !record.stepping() {
                        return Err(not_under_way());
                    }
                    record.status.phase = RolloutPhase::Paused;
                    let message = format!("revision {} paused at step {}", record.status.revision, record.status.step + 1);
                    txn.event(EventType::Normal, "RolloutPaused", ("Workload", &name), message);
                }
                "resume" => {
                    if phase != RolloutPhase::Paused {
                        return Err(not_under_way());
                    }
                    record.status.phase = RolloutPhase::Progressing;
                    // The step's hold counts again from now.
                    record.status.step_ready_at = None;
                    let message = format!("revision {} resumed at step {}", record.status.revision, record.status.step + 1);
                    txn.event(EventType::Normal, "RolloutResumed", ("Workload", &name), message);
                }
                "undo" if record.stepping() => {
                    let Some(previous) = record.status.previous.clone() else { return Err(not_under_way()) };
                    let decision = roll_back(record.clone(), workload, &previous, "undone by an admin", chrono::Utc::now(), &mut txn);
                    record = decision.rollout;
                    if let Some(reverted) = decision.rolled_back {
                        txn.put_workload(reverted);
                    }
                }
                "undo" => {
                    let Some(previous) = record.status.previous.clone() else {
                        return Err(Failure::conflict(format!(
                            "workload `{name}` has no earlier revision to go back to (revision {}, {phase})",
                            record.status.revision
                        )));
                    };
                    let mut reverted = workload.clone();
                    reverted.spec = previous.spec.clone();
                    reverted.status = None;
                    record = record.changed(&workload.spec, &reverted.spec, chrono::Utc::now());
                    let message =
                        format!("undone: back to what revision {} ran, as revision {}", previous.revision, record.status.revision);
                    txn.event(EventType::Normal, "RolloutUndone", ("Workload", &name), message);
                    txn.put_workload(reverted);
                }
                other => {
                    return Err(Failure::not_found("rollout action", other));
                }
            }
            txn.put_rollout(record.clone());
            Ok((txn, record))
        })
        .await?;
    let cluster = shared.cluster();
    Ok(Json(cluster.rollouts.get(&name).cloned().unwrap_or(rollout)).into_response())
}
