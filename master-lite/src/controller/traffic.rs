//! On the leader, while a gray release has traffic gates: reads what the
//! ingresses counted for the new revision's instances, from the agents that
//! run them (through their channels, as every live read), every
//! [`ROLLOUT_INTERVAL`], into [`Shared::traffic`] for the workload controller.
//!
//! Pulled rather than reported: the figures change with every request and
//! matter only during a rollout's steps, so they never become store writes,
//! and a fleet without rollouts costs nothing. A node that does not answer
//! keeps the figures it gave last.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wasmlet_api::RequestFigures;
use wasmlet_api::Strategy;

use super::rollouts::{self, ROLLOUT_INTERVAL, TrafficReading};
use crate::Shared;

/// The most an agent's list of instances may weigh.
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// One rollout whose new revision's figures are wanted.
struct Wanted {
    workload: String,
    revision: u64,
    instances: BTreeSet<String>,
}

pub async fn follow(shared: Arc<Shared>, lost: CancellationToken) {
    let mut every = tokio::time::interval(ROLLOUT_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last figures each instance gave.
    let mut last: HashMap<String, RequestFigures> = HashMap::new();
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = every.tick() => {}
        }
        let (wanted, nodes) = wanted(&shared);
        shared.traffic.retain(&wanted.iter().map(|w| w.workload.clone()).collect());
        let all: BTreeSet<&String> = wanted.iter().flat_map(|w| &w.instances).collect();
        last.retain(|name, _| all.contains(name));
        if wanted.is_empty() {
            continue;
        }
        let reads = nodes.iter().map(|node| read(&shared, node));
        for (node, answer) in nodes.iter().zip(futures::future::join_all(reads).await) {
            match answer {
                Ok(instances) => {
                    for instance in instances {
                        let name = instance.metadata.name;
                        if let Some(figures) = instance.status.usage.and_then(|u| u.requests)
                            && all.contains(&name)
                        {
                            last.insert(name, figures);
                        }
                    }
                }
                Err(why) => tracing::debug!(node = %node, error = %why, "cannot read the ingress figures of a rollout"),
            }
        }
        for w in &wanted {
            let mut figures = RequestFigures::default();
            for name in &w.instances {
                if let Some(one) = last.get(name) {
                    figures.add(one);
                }
            }
            shared.traffic.set(&w.workload, TrafficReading { revision: w.revision, figures });
        }
    }
}

/// The rollouts with traffic gates under way, and the nodes their new instances run on.
fn wanted(shared: &Shared) -> (Vec<Wanted>, BTreeSet<String>) {
    let cluster = shared.cluster();
    let mut nodes = BTreeSet::new();
    let mut wanted = Vec::new();
    for workload in cluster.workloads.values() {
        let Some((rollout, _, spec)) = rollouts::stepping(&cluster, workload) else { continue };
        if spec.strategy != Strategy::Canary || !spec.gates.needs_traffic() {
            continue;
        }
        let mut instances = BTreeSet::new();
        for placed in cluster.instances.values() {
            if placed.instance.spec.workload == workload.metadata.name && rollouts::is_new(placed, workload) {
                instances.insert(placed.instance.metadata.name.clone());
                nodes.insert(placed.instance.spec.node.clone());
            }
        }
        wanted.push(Wanted { workload: workload.metadata.name.clone(), revision: rollout.status.revision, instances });
    }
    (wanted, nodes)
}

/// The agent's instances with their figures now.
async fn read(shared: &Shared, node: &str) -> Result<Vec<wasmlet_api::Instance>, String> {
    let answer = tokio::time::timeout(Duration::from_secs(3), crate::api::live::forward(shared, node, "/instances".to_string(), false))
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
        .map_err(|failure| failure.message().to_string())?;
    if !answer.status().is_success() {
        return Err(format!("the agent answered {}", answer.status()));
    }
    let body = axum::body::to_bytes(answer.into_body(), MAX_ANSWER_BYTES).await.map_err(|e| e.to_string())?;
    wasmlet_api::decode::from_wire(&body).map_err(|e| e.to_string())
}
