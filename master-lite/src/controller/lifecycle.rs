//! The node lifecycle controller: what happens when a node stops renewing its lease.
//!
//! - Silent longer than `--node-grace-period`: every condition goes Unknown
//!   (reason `NodeStatusUnknown`), the node is tainted
//!   `node.wasmlet.io/unreachable:NoSchedule`, event `NodeNotReady`.
//! - Silent longer than a workload's `disconnect.lostAfter` (default
//!   `--lost-after`): its instances there become `Lost` and, unless
//!   `disconnect.replace: false`, a replacement is placed on a healthy node
//!   in the same transaction (event `HandedOff`). Hand-offs are rate limited,
//!   and held off entirely while more than 55% of the nodes (and more than 2)
//!   are silent: then the master is more likely the one cut off. One pass
//!   hands off at most a batch (`defaults::CONTROLLER_BATCH`), the next the rest.
//! - Renewing again: the taint goes, conditions come back from the node's
//!   last report, event `NodeReady`; its handed-off instances leave its
//!   assignment (the agent stops them, event `Fenced`).
//!
//! Leases live only in memory ([`Leases`]): 10,000 nodes renewing every 2 s
//! would otherwise be 5,000 durable writes a second.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use wasmlet_api::{Condition, ConditionStatus, ConditionType, EventType, Node, Phase, Placement as EveryNode, Taint, TaintEffect};

use crate::cluster::{Cluster, Placed, Txn};
use crate::config::{MasterConfig, defaults};
use crate::controller::workloads::new_instance;
use crate::metrics::Metrics;
use crate::scheduler::{Placement, UNREACHABLE_TAINT, occupies_node};
use crate::store::Kind;

/// When each node last renewed its lease, and the conditions it reported
/// last before it went silent.
#[derive(Debug, Default)]
pub struct Leases {
    renewed: HashMap<String, Instant>,
    /// Taken from the view when the node is marked Unknown (its reports may
    /// have gone through any master; the view has the last of them), given
    /// back when it renews again, unless it reported anew meanwhile.
    reported: HashMap<String, Vec<Condition>>,
    /// Nodes whose agent renewed since this master started: only those can be
    /// "back" — a node tainted before a restart is not back because the
    /// restart counted it as renewed.
    heard: std::collections::HashSet<String>,
    /// Renewals received since they were last handed to the leader (see `relay`).
    unpublished: HashMap<String, Instant>,
}

impl Leases {
    /// Every known node counts as renewed at `now`: after a master restart,
    /// nodes are not declared dead because the master was down.
    pub fn starting_at(nodes: impl IntoIterator<Item = String>, now: Instant) -> Self {
        Leases {
            renewed: nodes.into_iter().map(|n| (n, now)).collect(),
            reported: HashMap::new(),
            heard: Default::default(),
            unpublished: HashMap::new(),
        }
    }

    /// A renewal this master received from the node's agent.
    pub fn renew(&mut self, node: &str, now: Instant) {
        self.heard_from(node, now);
        match self.unpublished.get_mut(node) {
            Some(at) => *at = now,
            None => drop(self.unpublished.insert(node.to_string(), now)),
        }
    }

    /// A renewal at `at`, received by this master or relayed from another; an older one changes nothing.
    pub fn heard_from(&mut self, node: &str, at: Instant) {
        if !self.heard.contains(node) {
            self.heard.insert(node.to_string());
        }
        match self.renewed.get_mut(node) {
            Some(last) => *last = (*last).max(at),
            None => drop(self.renewed.insert(node.to_string(), at)),
        }
    }

    /// Renewals [`Leases::take_unpublished`] gave that could not be handed on,
    /// `ago` as of `then`: kept for the next batch, unless a newer one came meanwhile.
    pub fn put_back(&mut self, renewals: Vec<(String, Duration)>, then: Instant) {
        for (node, ago) in renewals {
            let at = then.checked_sub(ago).unwrap_or(then);
            self.unpublished.entry(node).or_insert(at);
        }
    }

    /// The renewals received since the last call, each with how long ago it was at `now`.
    pub fn take_unpublished(&mut self, now: Instant) -> Vec<(String, Duration)> {
        self.unpublished.drain().map(|(node, at)| (node, now.saturating_duration_since(at))).collect()
    }

    pub fn forget(&mut self, node: &str) {
        self.unpublished.remove(node);
        self.renewed.remove(node);
        self.reported.remove(node);
        self.heard.remove(node);
    }

    pub fn silence(&self, node: &str, now: Instant) -> Option<Duration> {
        self.renewed.get(node).map(|at| now.saturating_duration_since(*at))
    }
}

/// A token bucket over hand-offs; a rate of 0 means no limit.
#[derive(Debug)]
struct RateLimit {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn take(&mut self, now: Instant) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let burst = self.per_second.max(1.0);
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.per_second).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub struct LifecycleController {
    hand_offs: RateLimit,
    /// Whether hand-offs are held off because too many nodes are silent (so the event is recorded once).
    held_off: bool,
}

impl LifecycleController {
    pub fn new(config: &MasterConfig) -> Self {
        let per_second = f64::from(config.hand_offs_per_second);
        LifecycleController { hand_offs: RateLimit { per_second, tokens: per_second.max(1.0), at: Instant::now() }, held_off: false }
    }

    pub fn tick(
        &mut self,
        cluster: &Cluster,
        leases: &std::sync::Mutex<Leases>,
        config: &MasterConfig,
        metrics: &Metrics,
        now: Instant,
    ) -> Txn {
        let mut txn = cluster.txn();
        let grace = config.node_grace_period.get();
        // Only the silent nodes are collected: a healthy cluster costs no allocation per node.
        let mut silences: HashMap<&str, Duration> = HashMap::new();
        let mut returned: Vec<&str> = Vec::new();
        {
            let mut leases = leases.lock().unwrap_or_else(|e| e.into_inner());
            for node in cluster.nodes.values() {
                let name = node.metadata.name.as_str();
                let silence = match leases.silence(name, now) {
                    Some(s) => s,
                    None => {
                        leases.heard_from(name, now);
                        Duration::ZERO
                    }
                };
                if silence > grace {
                    silences.insert(name, silence);
                }
                let tainted = is_unreachable(node);
                if silence > grace && !tainted {
                    if !is_marked_unknown(node) {
                        leases.reported.insert(name.to_string(), node.status.conditions.clone());
                    }
                    txn.put_node(mark_unknown(node, silence));
                    txn.event(
                        EventType::Warning,
                        "NodeNotReady",
                        ("Node", name),
                        format!("node {name} has not renewed its lease for {}", secs(silence)),
                    );
                } else if silence <= grace && tainted && leases.heard.contains(name) {
                    txn.put_node(mark_back(node, leases.reported.get(name).cloned()));
                    txn.event(EventType::Normal, "NodeReady", ("Node", name), format!("node {name} renews its lease again"));
                    returned.push(name);
                }
            }
        }
        for name in &returned {
            fence(cluster, name, &mut txn);
        }

        let silent = silences.len();
        let total = cluster.nodes.len();
        if silent > defaults::DISRUPTION_MIN_NODES && silent as f64 > defaults::DISRUPTION_SHARE * total as f64 {
            if !self.held_off {
                self.held_off = true;
                txn.event(
                    EventType::Warning,
                    "HandOffsHeldOff",
                    ("Cluster", "wasmlet"),
                    format!(
                        "{} of {total} nodes are silent at once (more than 55% and more than 2): holding off hand-offs, as the master itself may be cut off from them",
                        silent
                    ),
                );
            }
            return txn;
        }
        if self.held_off {
            self.held_off = false;
            txn.event(
                EventType::Normal,
                "HandOffsResumed",
                ("Cluster", "wasmlet"),
                format!("{silent} of {total} nodes are silent: hand-offs resume"),
            );
        }
        self.hand_off(cluster, &silences, config, metrics, now, &mut txn);
        txn
    }

    /// Marks the instances of nodes silent past `lostAfter` Lost, and places their replacements.
    fn hand_off(
        &mut self,
        cluster: &Cluster,
        silences: &HashMap<&str, Duration>,
        config: &MasterConfig,
        metrics: &Metrics,
        now: Instant,
        txn: &mut Txn,
    ) {
        let mut placement: Option<Placement> = None;
        // The instances of silent nodes only, in name order as before.
        let mut candidates: Vec<&Placed> = silences.keys().flat_map(|node| cluster.instances_on(node)).collect();
        candidates.sort_unstable_by(|a, b| a.instance.metadata.name.cmp(&b.instance.metadata.name));
        // Per pass at most a batch; the rest in the next pass (the resync timer's).
        let mut budget = defaults::CONTROLLER_BATCH;
        for placed in candidates {
            let node = &placed.instance.spec.node;
            let Some(silence) = silences.get(node.as_str()).copied() else { continue };
            if silence <= config.node_grace_period.get() || !occupies_node(placed.instance.status.phase) {
                continue;
            }
            let workload = cluster.workloads.get(&placed.instance.spec.workload);
            let lost_after = workload.and_then(|w| w.spec.disconnect.lost_after).unwrap_or(config.lost_after).get();
            if silence <= lost_after {
                continue;
            }
            if budget == 0 || !self.hand_offs.take(now) {
                break;
            }
            budget -= 1;
            let name = &placed.instance.metadata.name;
            let mut lost = placed.clone();
            lost.instance.status.phase = Phase::Lost;
            lost.instance.status.reason = Some("NodeLost".into());
            lost.instance.status.message = Some(format!("node {node} has been silent for {}", secs(silence)));
            txn.put_instance(lost);
            // A workload the master does not act on gets no replacement either.
            let acted_on = |w: &&wasmlet_api::Workload| cluster.invalid(Kind::Workload, &w.metadata.name).is_none();
            let Some(workload) = workload
                .filter(|w| w.spec.disconnect.replace != Some(false) && w.spec.placement != Some(EveryNode::EveryNode))
                .filter(acted_on)
            else {
                txn.event(
                    EventType::Warning,
                    "InstanceLost",
                    ("Instance", name),
                    format!("node {node} has been silent for {}; not replaced", secs(silence)),
                );
                continue;
            };
            let placement = placement.get_or_insert_with(|| Placement::new(cluster, config.scoring));
            metrics.scheduling_attempts.inc();
            match placement.place(workload, |n| n.metadata.name != *node) {
                Ok(target) => {
                    let replacement = new_instance(cluster, txn, workload, &target);
                    metrics.hand_offs.inc();
                    txn.event(
                        EventType::Normal,
                        "HandedOff",
                        ("Instance", name),
                        format!(
                            "node {node} silent for {}: instance {name} of workload {} handed off from {node} to {target} as {} (epoch {})",
                            secs(silence),
                            workload.metadata.name,
                            replacement.instance.metadata.name,
                            replacement.instance.spec.epoch
                        ),
                    );
                    txn.put_instance(replacement);
                }
                Err(unschedulable) => {
                    metrics.scheduling_failures.inc();
                    txn.event(
                        EventType::Warning,
                        "InstanceLost",
                        ("Instance", name),
                        format!("node {node} is silent; no replacement yet: {unschedulable}"),
                    );
                }
            }
        }
    }
}

/// Removes the instances handed off while `node` was silent from its assignment.
fn fence(cluster: &Cluster, node: &str, txn: &mut Txn) {
    let lost: Vec<&Placed> = cluster.instances_on(node).filter(|p| p.instance.status.phase == Phase::Lost).collect();
    for placed in lost {
        let name = &placed.instance.metadata.name;
        let replaced = cluster
            .workloads
            .get(&placed.instance.spec.workload)
            .is_none_or(|w| w.spec.disconnect.replace != Some(false) && w.spec.placement != Some(EveryNode::EveryNode));
        if replaced {
            txn.delete(Kind::Instance, name);
            txn.event(
                EventType::Normal,
                "Fenced",
                ("Instance", name),
                format!("instance {name} was handed off while node {node} was silent; {node} stops it"),
            );
        } else {
            let mut back = placed.clone();
            back.instance.status.phase = Phase::Pending;
            back.instance.status.reason = None;
            back.instance.status.message = Some(format!("node {node} is back"));
            txn.put_instance(back);
        }
    }
}

pub fn is_unreachable(node: &Node) -> bool {
    node.spec.taints.iter().any(|t| t.key == UNREACHABLE_TAINT)
}

fn mark_unknown(node: &Node, silence: Duration) -> Node {
    let mut node = node.clone();
    let now = Utc::now();
    if node.condition(ConditionType::Ready).is_none() {
        node.status.conditions.push(Condition {
            kind: ConditionType::Ready,
            status: ConditionStatus::Unknown,
            reason: String::new(),
            message: String::new(),
            last_heartbeat_time: now,
            last_transition_time: now,
        });
    }
    for c in &mut node.status.conditions {
        if c.status != ConditionStatus::Unknown {
            c.last_transition_time = now;
        }
        c.status = ConditionStatus::Unknown;
        c.reason = STATUS_UNKNOWN.into();
        c.message = format!("the agent stopped reporting: no lease renewal for {}", secs(silence));
    }
    node.spec.taints.push(Taint { key: UNREACHABLE_TAINT.into(), value: String::new(), effect: TaintEffect::NoSchedule });
    node
}

/// The reason of the conditions [`mark_unknown`] sets.
const STATUS_UNKNOWN: &str = "NodeStatusUnknown";

/// Whether the node's conditions are still those [`mark_unknown`] set (no report came since).
fn is_marked_unknown(node: &Node) -> bool {
    !node.status.conditions.is_empty() && node.status.conditions.iter().all(|c| c.reason == STATUS_UNKNOWN)
}

/// Lifts the taint; the conditions come back from before the silence, unless
/// the node reported newer ones meanwhile. A leader that took over while the
/// node was silent has none from before: they stay Unknown until the agent's
/// next status report.
fn mark_back(node: &Node, before: Option<Vec<Condition>>) -> Node {
    let mut node = node.clone();
    node.spec.taints.retain(|t| t.key != UNREACHABLE_TAINT);
    if is_marked_unknown(&node)
        && let Some(conditions) = before
    {
        node.status.conditions = conditions;
    }
    node
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_that_could_not_be_handed_on_go_in_the_next_batch_unless_a_newer_one_came() {
        let start = Instant::now();
        let mut leases = Leases::default();
        leases.renew("a", start);
        leases.renew("b", start);
        let then = start + Duration::from_millis(500);
        let mut taken = leases.take_unpublished(then);
        taken.sort();
        assert_eq!(taken, [("a".to_string(), Duration::from_millis(500)), ("b".to_string(), Duration::from_millis(500))]);
        assert!(leases.take_unpublished(then).is_empty(), "taken once");

        // The store refused the batch; meanwhile `b` renewed again.
        leases.renew("b", start + Duration::from_millis(800));
        leases.put_back(taken, then);
        let mut next = leases.take_unpublished(start + Duration::from_secs(1));
        next.sort();
        assert_eq!(next, [("a".to_string(), Duration::from_secs(1)), ("b".to_string(), Duration::from_millis(200))]);
    }
}
