//! The workload controller: keeps each workload's instances as its spec says.
//!
//! - `replicas` instances (1 by default), or one per eligible node with
//!   `placement: everyNode`; new instances get a fresh epoch and a name
//!   `<workload>-<5 chars>`.
//! - Jobs: Succeeded (and Failed) instances are kept and not replaced.
//!   Services and daemons: a Failed instance is replaced after a back-off
//!   that doubles per failure, so a broken module does not loop hot.
//! - A changed spec, or an instance marked for drain, rolls over one replica
//!   at a time: a new instance is created first and the old one removed only
//!   once enough new ones are Running (surge 1, nothing unavailable). A spec
//!   with `rollout` goes step by step instead ([`super::rollouts`]): each
//!   pass first reads its gates and steps, then keeps each revision's share.
//! - An instance whose workload is gone is removed.
//! - A workload that cannot be placed gets one `FailedScheduling` event per
//!   distinct answer, and is retried when nodes (or the workload) change.
//! - A pass creates at most [`defaults::CONTROLLER_BATCH`] instances and says
//!   when it left work for the next one, so no replica count becomes one
//!   allocation or one transaction.
//! - A workload the master cannot act on ([`Cluster::invalid`]: stored before
//!   a limit existed, or its record undecodable) is left alone with its
//!   instances; [`check_stored`] finds them when the master starts.

use std::collections::HashMap;

use tokio::time::Instant;
use wasmlet_api::{EventType, Instance, InstanceSpec, Phase, Placement as EveryNode, Workload, WorkloadType};

use wasmlet_api::{Rollout, RolloutSpec, Strategy};

use super::rollouts::{self, TrafficReadings};
use crate::cluster::{Cluster, Placed, Txn};
use crate::config::{MasterConfig, defaults};
use crate::metrics::Metrics;
use crate::scheduler::Placement;
use crate::store::Kind;

/// Marks an instance to be moved off its node (set by drain).
pub const DRAINING_ANNOTATION: &str = "wasmlet.io/draining";
/// The label every instance carries with its workload's name.
pub const WORKLOAD_LABEL: &str = "wasmlet.io/workload";

/// Marks the stored workloads the master will not act on (they break a limit
/// of this master, e.g. `--max-replicas`, or of the API); returns a Warning
/// event and a log line for each object in [`Cluster::invalid`]. Run once at start.
pub fn check_stored(cluster: &mut Cluster, config: &MasterConfig) -> Txn {
    for (name, workload) in &cluster.workloads {
        if cluster.invalid(Kind::Workload, name).is_some() {
            continue;
        }
        if let Some(problem) = limit_problem(workload, config) {
            cluster.invalid.insert((Kind::Workload, name.clone()), problem);
        }
    }
    let mut txn = cluster.txn();
    for ((kind, name), problem) in &cluster.invalid {
        let kind = kind_name(*kind);
        txn.event(
            EventType::Warning,
            "InvalidStoredObject",
            (kind, name),
            format!("{kind} `{name}` in the store is not acted on: {problem}; fix it (apply it again) or delete it"),
        );
    }
    txn
}

/// Why an (already stored) workload breaks a limit, if it does.
pub fn limit_problem(workload: &Workload, config: &MasterConfig) -> Option<String> {
    if let Err(e) = workload.validate() {
        return Some(e.to_string());
    }
    match workload.spec.replicas {
        Some(replicas) if replicas > config.max_replicas => Some(max_replicas_problem(replicas, config.max_replicas)),
        _ => None,
    }
}

/// The answer to a workload asking for more replicas than this master allows.
pub fn max_replicas_problem(replicas: u32, max: u32) -> String {
    format!("spec.replicas: {replicas} is more than this master allows, {max} (--max-replicas)")
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Node => "Node",
        Kind::Workload => "Workload",
        Kind::Instance => "Instance",
        Kind::Event => "Event",
        Kind::Credential => "Credential",
        Kind::Token => "Token",
        Kind::RegistryCredential => "RegistryCredential",
        Kind::Rollout => "Rollout",
    }
}

#[derive(Debug, Default)]
pub struct WorkloadController {
    /// Per workload: failures replaced in a row, and when the next replacement may happen.
    backoff: HashMap<String, (u32, Instant)>,
    /// Per workload: the last scheduling failure, and the node and workload
    /// revisions it was decided on (nothing is retried until one changes).
    failures: HashMap<String, Failure>,
    /// Whether the last pass stopped at its batch limit with instances left to create.
    more: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Failure {
    message: String,
    nodes_revision: u64,
    workload_revision: Option<u64>,
}

impl WorkloadController {
    /// Whether a workload waits for nodes to change (its last placement failed).
    pub fn waiting_for_nodes(&self) -> bool {
        !self.failures.is_empty()
    }

    /// Whether the last pass left instances to create for the next one.
    pub fn more_to_do(&self) -> bool {
        self.more
    }

    pub fn reconcile(
        &mut self,
        cluster: &Cluster,
        config: &MasterConfig,
        metrics: &Metrics,
        traffic: &TrafficReadings,
        now: Instant,
    ) -> Txn {
        let wall = chrono::Utc::now();
        let mut txn = cluster.txn();
        self.more = false;
        // Built on the first placement: most passes place nothing.
        let mut placement = LazyPlacement { cluster, scoring: config.scoring, placement: None };
        let mut by_workload: HashMap<&str, Vec<&Placed>> = HashMap::new();
        for placed in cluster.instances.values() {
            by_workload.entry(placed.instance.spec.workload.as_str()).or_default().push(placed);
        }
        for (name, instances) in &by_workload {
            if !cluster.workloads.contains_key(*name) {
                for p in instances {
                    txn.delete(Kind::Instance, &p.instance.metadata.name);
                }
            }
        }
        self.backoff.retain(|name, _| cluster.workloads.contains_key(name));
        self.failures.retain(|name, _| cluster.workloads.contains_key(name));
        let mut budget = defaults::CONTROLLER_BATCH;
        for workload in cluster.workloads.values() {
            if cluster.invalid(Kind::Workload, &workload.metadata.name).is_some() {
                continue;
            }
            let mine = by_workload.get(workload.metadata.name.as_str()).map(Vec::as_slice).unwrap_or_default();
            if let Some(decision) = rollouts::progress(cluster, workload, mine, traffic, wall, &mut txn) {
                txn.put_rollout(decision.rollout);
                if let Some(reverted) = decision.rolled_back {
                    // Back on the previous revision: the next pass places it.
                    txn.put_workload(reverted);
                    continue;
                }
            }
            let may_schedule = self.may_schedule(cluster, workload);
            let replace_failed = self.replace_failed(workload, mine, now);
            let stepping = rollouts::stepping(cluster, workload);
            let previous = stepping.map(|(_, previous, _)| rollouts::previous_workload(workload, previous));
            let mut plan = Plan {
                workload,
                txn: &mut txn,
                placement: &mut placement,
                metrics,
                unschedulable: None,
                budget: &mut budget,
                more: false,
                desired: None,
            };
            match (stepping, &previous) {
                (Some((rollout, _, spec)), Some(previous)) if spec.strategy == Strategy::Canary => {
                    plan.canary(mine, rollout, previous, spec, may_schedule, replace_failed);
                }
                (Some((rollout, _, spec)), Some(previous)) => {
                    let new_here = rollouts::wave_nodes(cluster, workload, spec, rollout.status.step as usize, mine);
                    plan.every_node(
                        cluster,
                        mine,
                        may_schedule,
                        replace_failed,
                        |node| if new_here.contains(node) { workload } else { previous },
                    );
                }
                _ if workload.spec.placement == Some(EveryNode::EveryNode) => {
                    plan.every_node(cluster, mine, may_schedule, replace_failed, |_| workload);
                }
                _ => plan.replicas(mine, may_schedule, replace_failed),
            }
            let (unschedulable, more) = (plan.unschedulable.take(), plan.more);
            self.more |= more;
            self.record_failure(cluster, workload, unschedulable, &mut txn);
        }
        txn
    }

    /// Whether to try placing: always, unless the last try failed and neither nodes nor the workload changed since.
    fn may_schedule(&self, cluster: &Cluster, workload: &Workload) -> bool {
        self.failures.get(&workload.metadata.name).is_none_or(|f| {
            f.nodes_revision != cluster.collection_revision(Kind::Node) || f.workload_revision != workload.metadata.resource_version
        })
    }

    fn record_failure(&mut self, cluster: &Cluster, workload: &Workload, unschedulable: Option<String>, txn: &mut Txn) {
        let name = &workload.metadata.name;
        match unschedulable {
            Some(message) => {
                let repeated = self.failures.get(name).is_some_and(|f| f.message == message);
                if !repeated {
                    txn.event(EventType::Warning, "FailedScheduling", ("Workload", name), message.clone());
                }
                let failure = Failure {
                    message,
                    nodes_revision: cluster.collection_revision(Kind::Node),
                    workload_revision: workload.metadata.resource_version,
                };
                self.failures.insert(name.clone(), failure);
            }
            None => {
                // Tried and placed everything, or had nothing to place: forget the failure.
                if self.may_schedule(cluster, workload) {
                    self.failures.remove(name);
                }
            }
        }
    }

    /// Whether Failed instances of a service or daemon may be replaced now; bumps the back-off when so.
    fn replace_failed(&mut self, workload: &Workload, mine: &[&Placed], now: Instant) -> bool {
        let name = &workload.metadata.name;
        let failed = mine.iter().any(|p| p.instance.status.phase == Phase::Failed);
        if !failed {
            if mine.iter().any(|p| p.instance.status.phase == Phase::Running) {
                self.backoff.remove(name);
            }
            return false;
        }
        let (count, not_before) = self.backoff.get(name).copied().unwrap_or((0, now));
        if now < not_before {
            return false;
        }
        let delay = defaults::REPLACE_BACKOFF_INITIAL.saturating_mul(1 << count.min(16)).min(defaults::REPLACE_BACKOFF_MAX);
        self.backoff.insert(name.clone(), (count + 1, now + delay));
        true
    }
}

/// The decisions for one workload.
struct Plan<'a, 'c> {
    workload: &'a Workload,
    txn: &'a mut Txn,
    placement: &'a mut LazyPlacement<'c>,
    metrics: &'a Metrics,
    /// Why the last placement failed, if one did.
    unschedulable: Option<String>,
    /// Instances this pass may still create (for all workloads).
    budget: &'a mut usize,
    /// Whether this workload wanted more instances than the budget allowed.
    more: bool,
    /// How many instances to keep, when not the workload's own count (a revision of a canary).
    desired: Option<usize>,
}

/// The scheduler's view of the nodes, built when first needed.
struct LazyPlacement<'a> {
    cluster: &'a Cluster,
    scoring: crate::config::Scoring,
    placement: Option<Placement>,
}

impl LazyPlacement<'_> {
    fn get(&mut self) -> &mut Placement {
        self.placement.get_or_insert_with(|| Placement::new(self.cluster, self.scoring))
    }
}

/// How one instance counts for its workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Runs (or will) the workload's current spec.
    Current,
    /// Runs an older spec, or is being drained: to be replaced, then removed.
    Old,
    /// Finished (jobs) or failed: kept, not counted.
    Done,
    /// Failed and to be replaced (service, daemon).
    Failed,
    /// On a silent node, replaced elsewhere: kept until the node returns.
    Lost,
}

impl Plan<'_, '_> {
    /// How `placed` counts for the workload at `target` (its spec now, or the revision its node runs in a rollout).
    fn standing(&self, placed: &Placed, target: &Workload) -> Standing {
        let spec = &target.spec;
        let phase = placed.instance.status.phase;
        let draining = placed.instance.metadata.annotations.contains_key(DRAINING_ANNOTATION);
        let replaced_when_lost = spec.disconnect.replace != Some(false) && spec.placement != Some(EveryNode::EveryNode);
        let other_revision = !placed.workload.spec.runs_like(spec);
        match phase {
            Phase::Succeeded => Standing::Done,
            Phase::Failed if spec.kind == WorkloadType::Job => Standing::Done,
            // A failed instance of another revision is replaced by the rollout, not after a back-off.
            Phase::Failed if other_revision => Standing::Old,
            Phase::Failed => Standing::Failed,
            Phase::Lost if replaced_when_lost => Standing::Lost,
            _ if draining || other_revision => Standing::Old,
            _ => Standing::Current,
        }
    }

    fn replicas(&mut self, mine: &[&Placed], may_schedule: bool, replace_failed: bool) {
        let spec = &self.workload.spec;
        let mut current = Vec::new();
        let mut old = Vec::new();
        let mut done = 0u32;
        let mut failed = Vec::new();
        for p in mine {
            match self.standing(p, self.workload) {
                Standing::Current => current.push(*p),
                Standing::Old => old.push(*p),
                Standing::Done => done += 1,
                Standing::Failed => failed.push(*p),
                Standing::Lost => {}
            }
        }
        let mut desired = spec.replicas.unwrap_or(1);
        if spec.kind == WorkloadType::Job {
            desired = desired.saturating_sub(done);
        }
        let desired = self.desired.unwrap_or(desired as usize);
        if replace_failed {
            for p in &failed {
                self.txn.delete(Kind::Instance, &p.instance.metadata.name);
            }
        }
        let held_back = !failed.is_empty() && !replace_failed;

        // Scale down: the excess current instances, those not Running first.
        if current.len() > desired {
            current.sort_by_key(|p| (p.instance.status.phase == Phase::Running, std::cmp::Reverse(p.instance.spec.epoch)));
            for p in current.drain(..current.len() - desired) {
                self.txn.delete(Kind::Instance, &p.instance.metadata.name);
            }
        }
        // Remove old instances as Running current ones take over.
        let running = current.iter().filter(|p| p.instance.status.phase == Phase::Running).count();
        let removable = (running + old.len()).saturating_sub(desired).min(old.len());
        old.sort_by_key(|p| p.instance.status.phase == Phase::Running);
        for p in old.drain(..removable) {
            self.txn.delete(Kind::Instance, &p.instance.metadata.name);
        }
        // Create: up to desired, and at most one above it while old ones remain.
        let missing = desired.saturating_sub(current.len());
        let room = if old.is_empty() { missing } else { missing.min((desired + 1).saturating_sub(current.len() + old.len())) };
        if may_schedule && !held_back && room > 0 {
            let batch = room.min(*self.budget);
            self.more |= batch < room;
            let placed = self.create_many(batch);
            *self.budget -= placed;
        }
    }

    /// One instance per eligible node, of the revision `target` says for the node.
    fn every_node<'w>(
        &mut self,
        cluster: &Cluster,
        mine: &[&Placed],
        may_schedule: bool,
        replace_failed: bool,
        target: impl Fn(&str) -> &'w Workload,
    ) {
        let mut on_node: HashMap<&str, Vec<(&Placed, Standing)>> = HashMap::new();
        for p in mine {
            let node = p.instance.spec.node.as_str();
            on_node.entry(node).or_default().push((p, self.standing(p, target(node))));
        }
        let held_back = !replace_failed && on_node.values().flatten().any(|(_, s)| *s == Standing::Failed);
        for node in cluster.nodes.values() {
            let name = node.metadata.name.as_str();
            let here = on_node.remove(name).unwrap_or_default();
            let selected = self.workload.spec.node_selector.iter().all(|(k, v)| node.metadata.labels.get(k) == Some(v));
            let mut has_current = false;
            let mut current_running = false;
            let revision = &target(name).spec;
            for (p, standing) in &here {
                let draining = p.instance.metadata.annotations.contains_key(DRAINING_ANNOTATION);
                match standing {
                    Standing::Current if !selected => self.txn.delete(Kind::Instance, &p.instance.metadata.name),
                    Standing::Current => {
                        has_current = true;
                        current_running |= p.instance.status.phase == Phase::Running;
                    }
                    // A job of this revision finished here: it does not run again.
                    Standing::Done if p.workload.spec.runs_like(revision) => {
                        has_current = true;
                        current_running = true;
                    }
                    Standing::Old if draining || !selected => self.txn.delete(Kind::Instance, &p.instance.metadata.name),
                    Standing::Failed if replace_failed => self.txn.delete(Kind::Instance, &p.instance.metadata.name),
                    _ => {}
                }
            }
            if current_running {
                for (p, standing) in &here {
                    if *standing == Standing::Old {
                        self.txn.delete(Kind::Instance, &p.instance.metadata.name);
                    }
                }
            }
            let lost_here = here.iter().any(|(p, _)| p.instance.status.phase == Phase::Lost);
            if has_current || lost_here || !selected || !may_schedule || held_back {
                continue;
            }
            let placement = self.placement.get();
            let load = placement.index_of(name).map(|i| &placement.nodes[i]);
            let target = target(name);
            if load.is_some_and(|l| l.fits(target).is_ok()) {
                if *self.budget == 0 {
                    self.more = true;
                    continue;
                }
                *self.budget -= 1;
                self.create_on(name, target);
            }
        }
        // Instances on nodes that no longer exist.
        for (p, _) in on_node.into_values().flatten() {
            self.txn.delete(Kind::Instance, &p.instance.metadata.name);
        }
    }

    /// Places one new instance of `target` on `node`.
    fn create_on(&mut self, node: &str, target: &Workload) {
        self.metrics.scheduling_attempts.inc();
        self.placement.get().add_to(node, target);
        self.put(node, target);
    }

    /// Places up to `count` new instances wherever the scheduler says, one
    /// scoring pass for all of them; returns how many were placed.
    fn create_many(&mut self, count: usize) -> usize {
        let mut targets = Vec::with_capacity(count.min(defaults::CONTROLLER_BATCH));
        {
            let mut placer = self.placement.get().placer(self.workload, |_| true);
            for _ in 0..count {
                self.metrics.scheduling_attempts.inc();
                match placer.place() {
                    Ok(node) => targets.push(node),
                    Err(unschedulable) => {
                        self.metrics.scheduling_failures.inc();
                        self.unschedulable = Some(unschedulable.to_string());
                        break;
                    }
                }
            }
        }
        for target in &targets {
            self.put(target, self.workload);
        }
        targets.len()
    }

    fn put(&mut self, node: &str, workload: &Workload) {
        let placed = new_instance(self.placement.cluster, self.txn, workload, node);
        tracing::debug!(instance = %placed.instance.metadata.name, node = %node, "placed");
        self.txn.put_instance(placed);
    }
}

impl<'a> Plan<'a, '_> {
    /// A canary step: the previous revision keeps its instances and the new one
    /// gets the step's share of them; once the final step's all run, the previous revision's go.
    fn canary(
        &mut self,
        mine: &[&Placed],
        rollout: &Rollout,
        previous: &'a Workload,
        spec: &RolloutSpec,
        may_schedule: bool,
        replace_failed: bool,
    ) {
        let (new, old): (Vec<&Placed>, Vec<&Placed>) = mine.iter().partition(|p| rollouts::is_new(p, self.workload));
        let step = rollout.status.step as usize;
        let replicas = self.workload.spec.replicas.unwrap_or(1);
        let wanted = rollouts::canary_replicas(spec, step, replicas) as usize;
        self.desired = Some(wanted);
        self.replicas(&new, may_schedule, replace_failed);
        let running = new.iter().filter(|p| p.instance.status.phase == Phase::Running && p.instance.status.reason.is_none()).count();
        let promoted = step >= spec.step_count() && running >= wanted;
        let workload = self.workload;
        self.workload = previous;
        self.desired = Some(if promoted { 0 } else { previous.spec.replicas.unwrap_or(1) as usize });
        self.replicas(&old, may_schedule, replace_failed);
        self.workload = workload;
        self.desired = None;
    }
}

/// A new instance of `workload` on `node`, named and fenced (its epoch) by `txn`.
pub fn new_instance(cluster: &Cluster, txn: &mut Txn, workload: &Workload, node: &str) -> Placed {
    let name = &workload.metadata.name;
    let spec = InstanceSpec { workload: name.clone(), node: node.to_string(), epoch: txn.next_epoch() };
    let mut instance = Instance::new(txn.new_instance_name(cluster, name), spec);
    instance.metadata.labels = workload.metadata.labels.clone();
    instance.metadata.labels.insert(WORKLOAD_LABEL.to_string(), name.clone());
    let mut workload = workload.clone();
    workload.status = None;
    Placed { instance, workload }
}
