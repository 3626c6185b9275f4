//! The control loop. Changes to the cluster wake it, but it runs at most once
//! per [`COALESCE`] window, absorbing every change in between, so a burst of
//! commits (registrations, status reports) costs one pass, not one each.
//!
//! - The node lifecycle controller runs on the resync timer and when woken
//!   (a lease or a registration from an unreachable node): leases are not
//!   commits, so commits alone never make it due.
//! - The workload controller runs on the resync timer (back-offs) and after
//!   changes that concern it: workloads or instances, or nodes while a
//!   workload waits for one (an unschedulable one, or an everyNode workload).
//!
//! Each controller commits what it decides in one transaction, of at most
//! [`crate::config::defaults::CONTROLLER_BATCH`] new instances; when a pass
//! stops there, the next one follows at once.

pub mod lifecycle;
pub mod relay;
pub mod rollouts;
pub mod traffic;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wasmlet_api::Placement as EveryNode;

use crate::Shared;
use crate::cluster::Cluster;
use crate::store::{Fence, Kind, StoreError};

/// How long the loop gathers changes before it runs.
pub const COALESCE: Duration = Duration::from_millis(25);

/// The collection revisions the workload controller last looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    nodes: u64,
    workloads: u64,
    instances: u64,
}

impl Seen {
    fn of(cluster: &Cluster) -> Self {
        Seen {
            nodes: cluster.collection_revision(Kind::Node),
            workloads: cluster.collection_revision(Kind::Workload),
            instances: cluster.collection_revision(Kind::Instance),
        }
    }
}

/// Campaigns for the leadership of the cluster and runs the controllers
/// while this master leads, until `shutdown`. Every write they make is fenced
/// with the leadership: once it is lost, none commits.
pub async fn lead(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let lost = shutdown.child_token();
        let fence = tokio::select! {
            _ = shutdown.cancelled() => return,
            won = shared.store.campaign(&shared.name, lost.clone()) => match won {
                Ok(fence) => fence,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot campaign for the leadership; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        tracing::info!(master = %shared.name, "leading the cluster: running the controllers");
        shared.metrics.is_leader.set(1);
        // Leases are kept in memory: every node counts as heard at the takeover,
        // so a change of leader never turns nodes NotReady nor hands their work off.
        let nodes: Vec<String> = shared.cluster().nodes.keys().cloned().collect();
        *shared.leases() = lifecycle::Leases::starting_at(nodes, tokio::time::Instant::now());
        tokio::spawn(relay::follow(shared.clone(), lost.clone()));
        tokio::spawn(compact(shared.clone(), lost.clone()));
        tokio::spawn(traffic::follow(shared.clone(), lost.clone()));
        run(shared.clone(), lost.clone(), fence).await;
        shared.metrics.is_leader.set(0);
        lost.cancel();
        if shutdown.is_cancelled() {
            shared.store.resign(fence).await;
            return;
        }
        tracing::warn!(master = %shared.name, "no longer leads the cluster: the controllers stopped");
    }
}

/// On the leader: forgets the store's history older than [`KEEP_HISTORY`], as
/// it goes (etcd keeps every revision until it is compacted). A master whose
/// watch falls further behind loads the store again.
async fn compact(shared: Arc<Shared>, lost: CancellationToken) {
    let mut history = History::default();
    let mut every = tokio::time::interval(KEEP_HISTORY / 5);
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = every.tick() => {}
        }
        let revision = shared.cluster().revision;
        if let Some(oldest) = history.record(tokio::time::Instant::now(), revision)
            && let Err(e) = shared.store.compact(oldest).await
        {
            tracing::warn!(error = %e, revision = oldest, "cannot compact the store's history");
        }
    }
}

/// The revisions the cluster was at, lately: which history may go.
#[derive(Debug, Default)]
struct History(std::collections::VecDeque<(tokio::time::Instant, u64)>);

impl History {
    /// Notes the cluster at `revision` at `now`; returns the newest revision
    /// that was current [`KEEP_HISTORY`] ago or earlier, to compact up to.
    fn record(&mut self, now: tokio::time::Instant, revision: u64) -> Option<u64> {
        self.0.push_back((now, revision));
        let mut oldest = None;
        while let Some((at, revision)) = self.0.front().copied()
            && now.duration_since(at) >= KEEP_HISTORY
        {
            oldest = Some(revision);
            self.0.pop_front();
        }
        oldest
    }
}

/// How much of the store's history the leader keeps (kube-apiserver compacts every 5 minutes too).
pub const KEEP_HISTORY: Duration = Duration::from_secs(300);

/// Runs both controllers until `shutdown` (or the leadership is lost).
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken, fence: Fence) {
    let mut lifecycle = lifecycle::LifecycleController::new(&shared.config);
    let mut workloads = workloads::WorkloadController::default();
    let mut changes = shared.cluster().subscribe();
    let mut resync = tokio::time::interval(shared.config.resync_interval());
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While a rollout steps, its holds and gates are looked at this often.
    let mut rollout_tick = tokio::time::interval(rollouts::ROLLOUT_INTERVAL);
    rollout_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Seen> = None;
    // Set when the workload controller stopped at its batch limit: the next pass follows at once.
    let mut again = false;
    loop {
        let (mut timer, mut woken, mut rollout_due) = (false, false, false);
        if again {
            // Let waiting requests have the cluster lock between two batches.
            tokio::task::yield_now().await;
            if shutdown.is_cancelled() {
                break;
            }
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = resync.tick() => timer = true,
                _ = rollout_tick.tick() => rollout_due = true,
                changed = changes.changed() => if changed.is_err() { break },
                _ = shared.wake.notified() => woken = true,
            }
            if rollout_due && !shared.cluster().rollouts.values().any(wasmlet_api::Rollout::stepping) {
                continue;
            }
        }
        if !timer && !again && !rollout_due {
            // Gather what else happens in the window; a timer tick or wake-up in it joins this pass.
            let window = tokio::time::sleep(COALESCE);
            tokio::pin!(window);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut window => break,
                    _ = resync.tick() => timer = true,
                    _ = shared.wake.notified() => woken = true,
                }
            }
        }
        let now = tokio::time::Instant::now();
        if timer || woken {
            let mut txn = lifecycle.tick(&shared.cluster(), &shared.leases, &shared.config, &shared.metrics, now);
            txn.fence(fence);
            txn.divisible();
            match shared.commit(txn).await {
                Ok(_) => {}
                Err(StoreError::Fenced) => return,
                Err(e) => tracing::error!(error = %e, "the node lifecycle controller could not write its decisions; retrying"),
            }
        }
        let txn = {
            let cluster = shared.cluster();
            let current = Seen::of(&cluster);
            let due = match seen {
                _ if timer || again || rollout_due => true,
                None => true,
                Some(last) => {
                    last.workloads != current.workloads
                        || last.instances != current.instances
                        || (last.nodes != current.nodes
                            && (workloads.waiting_for_nodes()
                                || cluster.workloads.values().any(|w| w.spec.placement == Some(EveryNode::EveryNode))))
                }
            };
            due.then(|| workloads.reconcile(&cluster, &shared.config, &shared.metrics, &shared.traffic, now))
        };
        if let Some(mut txn) = txn {
            txn.fence(fence);
            txn.divisible();
            again = match shared.commit(txn).await {
                Ok(_) => workloads.more_to_do(),
                Err(StoreError::Fenced) => return,
                Err(e) => {
                    tracing::error!(error = %e, "the workload controller could not write its decisions; retrying");
                    false
                }
            };
            // Our own commit counts as seen; should it have failed, the timer retries.
            seen = Some(Seen::of(&shared.cluster()));
        }
        // Seen our own commits: only later changes wake the loop again.
        changes.borrow_and_update();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_older_than_what_is_kept_goes_up_to_the_revision_current_back_then() {
        let start = tokio::time::Instant::now();
        let step = KEEP_HISTORY / 5;
        let mut history = History::default();
        for i in 0..5u32 {
            assert_eq!(history.record(start + step * i, 100 + u64::from(i)), None, "nothing is old enough yet");
        }
        assert_eq!(history.record(start + KEEP_HISTORY, 105), Some(100), "the revision of exactly KEEP_HISTORY ago");
        assert_eq!(history.record(start + KEEP_HISTORY + step, 106), Some(101));
        // A pause (the leader was busy) lets several go at once: up to the newest one old enough.
        assert_eq!(history.record(start + KEEP_HISTORY + step * 4, 110), Some(104));
        assert_eq!(history.record(start + KEEP_HISTORY + step * 4, 110), None, "nothing newer is old enough");
    }
}
