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
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wasmlet_api::Placement as EveryNode;

use crate::Shared;
use crate::cluster::Cluster;
use crate::store::Kind;

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

/// Runs both controllers until `shutdown`.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut lifecycle = lifecycle::LifecycleController::new(&shared.config);
    let mut workloads = workloads::WorkloadController::default();
    let mut changes = shared.cluster().subscribe();
    let mut resync = tokio::time::interval(shared.config.resync_interval());
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Seen> = None;
    // Set when the workload controller stopped at its batch limit: the next pass follows at once.
    let mut again = false;
    loop {
        let (mut timer, mut woken) = (false, false);
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
                changed = changes.changed() => if changed.is_err() { break },
                _ = shared.wake.notified() => woken = true,
            }
        }
        if !timer && !again {
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
        let mut cluster = shared.cluster();
        if timer || woken {
            let txn = lifecycle.tick(&cluster, &shared.leases, &shared.config, &shared.metrics, now);
            if let Err(e) = cluster.commit(txn) {
                tracing::error!(error = %e, "the node lifecycle controller could not write its decisions; retrying");
            }
        }
        let current = Seen::of(&cluster);
        let due = match seen {
            _ if timer || again => true,
            None => true,
            Some(last) => {
                last.workloads != current.workloads
                    || last.instances != current.instances
                    || (last.nodes != current.nodes
                        && (workloads.waiting_for_nodes()
                            || cluster.workloads.values().any(|w| w.spec.placement == Some(EveryNode::EveryNode))))
            }
        };
        if due {
            let txn = workloads.reconcile(&cluster, &shared.config, &shared.metrics, now);
            again = match cluster.commit(txn) {
                Ok(_) => workloads.more_to_do(),
                Err(e) => {
                    tracing::error!(error = %e, "the workload controller could not write its decisions; retrying");
                    false
                }
            };
            // Our own commit counts as seen; should it have failed, the timer retries.
            seen = Some(Seen::of(&cluster));
        }
        // Seen our own commits: only later changes wake the loop again.
        changes.borrow_and_update();
    }
}
