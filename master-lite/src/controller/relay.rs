//! How lease renewals reach the leader when agents talk to other masters.
//!
//! Renewals stay in memory (they are not objects: 10,000 nodes renewing every
//! 2 s would be 5,000 store writes a second). Every master answers them from
//! its own lease table. A master that does not lead hands what it received
//! to the store in one batch per [`interval`] (one write per master, however
//! many nodes), each renewal with how long ago it came; the leader follows
//! those batches and counts each node as heard at that moment by its own
//! clock (no two machines' clocks are compared). A new leader counts every
//! node as heard at its takeover, so a change of leader never turns a node
//! NotReady.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::store::Renewal;

/// How often a master that does not lead hands its renewals on: half a
/// heartbeat, so the leader's view of a lease is at most that much older.
pub fn interval(shared: &Shared) -> Duration {
    (shared.config.heartbeat_interval.get() / 2).max(Duration::from_millis(50))
}

/// On every master, until `stop`: hands the renewals it received to the
/// leader while it does not lead itself.
pub async fn publish(shared: Arc<Shared>, stop: CancellationToken) {
    let mut every = tokio::time::interval(interval(&shared));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let renewals = shared.leases().take_unpublished(now);
        if renewals.is_empty() || shared.metrics.is_leader.get() == 1 {
            continue;
        }
        let batch: Vec<Renewal> = renewals
            .iter()
            .map(|(node, ago)| Renewal { node: node.clone(), ago_ms: u64::try_from(ago.as_millis()).unwrap_or(u64::MAX) })
            .collect();
        if let Err(e) = shared.store.publish_renewals(&shared.name, batch).await {
            // Kept for the next batch: a node is not silent because the store was.
            shared.leases().put_back(renewals, now);
            tracing::warn!(error = %e, "cannot hand lease renewals to the leader; trying again with the next batch");
        }
    }
}

/// On the leader, until `lost`: counts the renewals other masters hand on.
pub async fn follow(shared: Arc<Shared>, lost: CancellationToken) {
    loop {
        let mut renewals = match shared.store.renewals().await {
            Ok(renewals) => renewals,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the other masters' lease renewals; retrying");
                tokio::select! {
                    _ = lost.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let batch = tokio::select! {
                _ = lost.cancelled() => return,
                batch = renewals.next() => batch,
            };
            let Some(batch) = batch else { break };
            let now = tokio::time::Instant::now();
            let mut leases = shared.leases();
            let mut back = false;
            for renewal in batch {
                let at = now.checked_sub(Duration::from_millis(renewal.ago_ms)).unwrap_or(now);
                leases.heard_from(&renewal.node, at);
                back |= shared.agents.get(&renewal.node).is_some_and(|a| a.unreachable);
            }
            drop(leases);
            if back {
                shared.wake.notify_one();
            }
        }
    }
}
