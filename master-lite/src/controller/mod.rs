//! The control loop: after every change to the cluster and on a resync
//! timer, the node lifecycle controller and then the workload controller
//! look at the whole cluster and commit what they decide, one transaction each.

pub mod lifecycle;
pub mod workloads;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Runs both controllers until `shutdown`.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut lifecycle = lifecycle::LifecycleController::new(&shared.config);
    let mut workloads = workloads::WorkloadController::default();
    let mut changes = shared.cluster().subscribe();
    let mut resync = tokio::time::interval(shared.config.resync_interval());
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = resync.tick() => {}
            changed = changes.changed() => if changed.is_err() { break },
            _ = shared.wake.notified() => {}
        }
        let now = tokio::time::Instant::now();
        let mut cluster = shared.cluster();
        let txn = lifecycle.tick(&mut cluster, &shared.leases, &shared.config, &shared.metrics, now);
        if let Err(e) = cluster.commit(txn) {
            tracing::error!(error = %e, "the node lifecycle controller could not write its decisions; retrying");
        }
        let txn = workloads.reconcile(&cluster, &shared.config, &shared.metrics, now);
        if let Err(e) = cluster.commit(txn) {
            tracing::error!(error = %e, "the workload controller could not write its decisions; retrying");
        }
        // Seen our own commits: only later changes wake the loop again.
        changes.borrow_and_update();
    }
}
