//! Where an instance goes: filter the nodes that can take it, score the
//! rest, pick the best. Pure functions over a [`Placement`] view of the
//! nodes, so the workload controller, the lifecycle controller and drain all
//! place the same way, and tests need no server.
//!
//! Filter (first failing reason per node is counted): Ready, schedulable,
//! taints tolerated, node selector, the isolation mode the workload names
//! offered (`status.runtime.isolation`, by an agent of a protocol version
//! that knows isolation modes), no DiskPressure/PIDPressure (nor
//! MemoryPressure when memory is requested), instance count below capacity,
//! requests fit allocatable minus what is placed there. Score: fewest
//! instances of the same workload first (spread), then least allocated (or
//! most, with `--scoring bin-pack`), then lower CPU pressure, then name.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;

use wasmlet_api::protocol::ISOLATION_VERSION;
use wasmlet_api::{ConditionStatus, ConditionType, Isolation, Node, Phase, Taint, TaintEffect, Toleration, TolerationOperator, Workload};

use crate::annotations::agent_protocol;
use crate::cluster::Cluster;
use crate::config::Scoring;

/// The taint the lifecycle controller puts on a silent node.
pub const UNREACHABLE_TAINT: &str = "node.wasmlet.io/unreachable";

/// One node and what is already placed on it.
#[derive(Debug, Clone)]
pub struct NodeLoad {
    pub node: Node,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub instances: u32,
    /// Instances per workload.
    pub per_workload: HashMap<String, u32>,
}

/// The nodes as the scheduler sees them, updated as it places.
#[derive(Debug, Clone)]
pub struct Placement {
    pub nodes: Vec<NodeLoad>,
    pub scoring: Scoring,
}

/// Why no node could take an instance, counted per reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub nodes: usize,
    pub reasons: BTreeMap<&'static str, usize>,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes available", self.nodes)?;
        let mut reasons: Vec<_> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (i, (reason, count)) in reasons.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(f, "{count} {reason}")?;
        }
        Ok(())
    }
}

/// Whether an instance in this phase holds resources on its node.
pub fn occupies_node(phase: Phase) -> bool {
    matches!(phase, Phase::Pending | Phase::Starting | Phase::Running | Phase::Terminating)
}

impl Placement {
    pub fn new(cluster: &Cluster, scoring: Scoring) -> Self {
        let mut loads: BTreeMap<&str, NodeLoad> = cluster
            .nodes
            .values()
            .map(|n| {
                (
                    n.metadata.name.as_str(),
                    NodeLoad { node: n.clone(), cpu_millis: 0, memory_bytes: 0, instances: 0, per_workload: HashMap::new() },
                )
            })
            .collect();
        for placed in cluster.instances.values() {
            if !occupies_node(placed.instance.status.phase) {
                continue;
            }
            if let Some(load) = loads.get_mut(placed.instance.spec.node.as_str()) {
                load.add(&placed.workload);
            }
        }
        Placement { nodes: loads.into_values().collect(), scoring }
    }

    /// Picks the best node for one more instance of `workload`, among those
    /// `allowed` says yes to, and counts it there. One pass over the nodes;
    /// to place many instances of one workload, [`Placement::placer`] scores them once.
    pub fn place(&mut self, workload: &Workload, allowed: impl Fn(&Node) -> bool) -> Result<String, Unschedulable> {
        let mut best: Option<(Score, usize)> = None;
        for (i, load) in self.nodes.iter().enumerate() {
            if !allowed(&load.node) || load.fits(workload).is_err() {
                continue;
            }
            let score = self.score(load, workload, load.count_of(workload));
            best = match best {
                Some((b, j))
                    if b.cmp(&score).then_with(|| self.nodes[j].node.metadata.name.cmp(&load.node.metadata.name)) != Ordering::Greater =>
                {
                    Some((b, j))
                }
                _ => Some((score, i)),
            };
        }
        match best {
            Some((_, i)) => {
                self.nodes[i].add(workload);
                Ok(self.nodes[i].node.metadata.name.clone())
            }
            None => Err(self.unschedulable(workload, |_, load| allowed(&load.node))),
        }
    }

    /// Places instances of `workload` one after another, among the nodes
    /// `allowed` says yes to: filters and scores every node once, then each
    /// placement takes the best from a heap and scores only that node again
    /// (placing on a node changes no other node's score for this workload).
    pub fn placer<'p>(&'p mut self, workload: &'p Workload, allowed: impl Fn(&Node) -> bool) -> Placer<'p> {
        let allowed: Vec<bool> = self.nodes.iter().map(|l| allowed(&l.node)).collect();
        let mut by_name: Vec<usize> = (0..self.nodes.len()).collect();
        by_name.sort_by(|a, b| self.nodes[*a].node.metadata.name.cmp(&self.nodes[*b].node.metadata.name));
        let mut rank = vec![0u32; self.nodes.len()];
        for (r, i) in by_name.into_iter().enumerate() {
            rank[i] = r as u32;
        }
        let mut counts = vec![0u32; self.nodes.len()];
        let mut heap = BinaryHeap::with_capacity(self.nodes.len());
        for (i, load) in self.nodes.iter().enumerate() {
            if !allowed[i] || load.fits(workload).is_err() {
                continue;
            }
            counts[i] = load.count_of(workload);
            heap.push(Reverse(Candidate { score: self.score(load, workload, counts[i]), rank: rank[i], index: i }));
        }
        Placer { placement: self, workload, allowed, counts, rank, heap }
    }

    /// The index of `node` in [`Placement::nodes`]: a binary search when they
    /// are in name order (as [`Placement::new`] builds them), else a scan.
    pub fn index_of(&self, node: &str) -> Option<usize> {
        match self.nodes.binary_search_by(|l| l.node.metadata.name.as_str().cmp(node)) {
            Ok(i) => Some(i),
            Err(_) => self.nodes.iter().position(|l| l.node.metadata.name == node),
        }
    }

    /// Counts one more instance of `workload` on `node` (placed elsewhere, e.g. everyNode).
    pub fn add_to(&mut self, node: &str, workload: &Workload) {
        if let Some(i) = self.index_of(node) {
            self.nodes[i].add(workload);
        }
    }

    /// How good `load` is for one more instance of `workload` that has `count` there already.
    fn score(&self, load: &NodeLoad, workload: &Workload, count: u32) -> Score {
        let share = load.allocated_share(workload);
        let allocation = match self.scoring {
            Scoring::LeastAllocated => share,
            // Fuller first: the negated share orders the other way round.
            Scoring::BinPack => -share,
        };
        Score { spread: count, allocation, pressure: load.cpu_pressure() }
    }

    fn unschedulable(&self, workload: &Workload, allowed: impl Fn(usize, &NodeLoad) -> bool) -> Unschedulable {
        let mut reasons = BTreeMap::new();
        for (i, load) in self.nodes.iter().enumerate() {
            let reason = if !allowed(i, load) { Err("excluded") } else { load.fits(workload) };
            if let Err(reason) = reason {
                *reasons.entry(reason).or_insert(0) += 1;
            }
        }
        Unschedulable { nodes: self.nodes.len(), reasons }
    }
}

/// A node's score for one more instance; `Less` is better: fewest instances
/// of the same workload (spread), then allocation (least allocated, or most
/// with bin-pack), then lower CPU pressure.
#[derive(Debug, Clone, Copy)]
struct Score {
    spread: u32,
    allocation: f64,
    pressure: f64,
}

impl Score {
    fn cmp(&self, other: &Score) -> Ordering {
        self.spread.cmp(&other.spread).then(self.allocation.total_cmp(&other.allocation)).then(self.pressure.total_cmp(&other.pressure))
    }
}

/// A node that can take one more instance, ordered by score, then name.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: Score,
    /// The node's position in name order.
    rank: u32,
    index: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.cmp(&other.score).then(self.rank.cmp(&other.rank)).then(self.index.cmp(&other.index))
    }
}

/// Places many instances of one workload; see [`Placement::placer`].
pub struct Placer<'p> {
    placement: &'p mut Placement,
    workload: &'p Workload,
    allowed: Vec<bool>,
    /// Instances of the workload per node (indexed like `placement.nodes`).
    counts: Vec<u32>,
    rank: Vec<u32>,
    heap: BinaryHeap<Reverse<Candidate>>,
}

impl Placer<'_> {
    /// Picks the best node for one more instance and counts it there.
    pub fn place(&mut self) -> Result<String, Unschedulable> {
        let Some(Reverse(best)) = self.heap.pop() else {
            let allowed = &self.allowed;
            return Err(self.placement.unschedulable(self.workload, |i, _| allowed[i]));
        };
        let i = best.index;
        self.placement.nodes[i].add(self.workload);
        self.counts[i] += 1;
        let load = &self.placement.nodes[i];
        if load.fits(self.workload).is_ok() {
            let score = self.placement.score(load, self.workload, self.counts[i]);
            self.heap.push(Reverse(Candidate { score, rank: self.rank[i], index: i }));
        }
        Ok(self.placement.nodes[i].node.metadata.name.clone())
    }
}

impl NodeLoad {
    /// Instances of `workload` placed here.
    fn count_of(&self, workload: &Workload) -> u32 {
        self.per_workload.get(&workload.metadata.name).copied().unwrap_or(0)
    }

    fn add(&mut self, workload: &Workload) {
        let requests = &workload.spec.resources.requests;
        self.cpu_millis += requests.cpu.map(|c| c.millis()).unwrap_or(0);
        self.memory_bytes += requests.memory.map(|m| m.get()).unwrap_or(0);
        self.instances += 1;
        *self.per_workload.entry(workload.metadata.name.clone()).or_insert(0) += 1;
    }

    /// Whether one more instance of `workload` may go here, or the first reason it may not.
    pub fn fits(&self, workload: &Workload) -> Result<(), &'static str> {
        let node = &self.node;
        let spec = &workload.spec;
        if !node.is_ready() {
            return Err("node(s) not ready");
        }
        if node.spec.unschedulable {
            return Err("node(s) unschedulable");
        }
        if node.spec.taints.iter().any(|t| blocks(t) && !spec.tolerations.iter().any(|tol| tolerates(tol, t))) {
            return Err("untolerated taint");
        }
        if spec.node_selector.iter().any(|(k, v)| node.metadata.labels.get(k) != Some(v)) {
            return Err("node selector mismatch");
        }
        // Without `isolation` an instance runs in the node's default mode, which every node offers.
        // An agent older than isolation modes cannot be sent one, whatever its status claims.
        if spec.isolation == Some(Isolation::Process)
            && !(node.status.runtime.as_ref().is_some_and(|r| r.offers(Isolation::Process)) && agent_protocol(node) >= ISOLATION_VERSION)
        {
            return Err("process isolation not offered");
        }
        let pressure = |kind| node.condition(kind).is_some_and(|c| c.status == ConditionStatus::True);
        if pressure(ConditionType::DiskPressure) {
            return Err("disk pressure");
        }
        if pressure(ConditionType::PidPressure) {
            return Err("PID pressure");
        }
        let requests = &spec.resources.requests;
        if requests.memory.is_some() && pressure(ConditionType::MemoryPressure) {
            return Err("memory pressure");
        }
        if self.instances >= node.status.capacity.instances {
            return Err("too many instances");
        }
        let allocatable = &node.status.allocatable;
        if let Some(cpu) = requests.cpu
            && self.cpu_millis + cpu.millis() > allocatable.cpu.millis()
        {
            return Err("insufficient cpu");
        }
        if let Some(memory) = requests.memory
            && self.memory_bytes + memory.get() > allocatable.memory.get()
        {
            return Err("insufficient memory");
        }
        Ok(())
    }

    /// The mean share of cpu, memory and instance slots in use once one more instance is placed.
    fn allocated_share(&self, workload: &Workload) -> f64 {
        let requests = &workload.spec.resources.requests;
        let status = &self.node.status;
        let (mut sum, mut count) = (0.0f64, 0u32);
        let mut share = |used: u64, total: u64| {
            if total > 0 {
                sum += used as f64 / total as f64;
                count += 1;
            }
        };
        share(self.cpu_millis + requests.cpu.map(|c| c.millis()).unwrap_or(0), status.allocatable.cpu.millis());
        share(self.memory_bytes + requests.memory.map(|m| m.get()).unwrap_or(0), status.allocatable.memory.get());
        share(u64::from(self.instances) + 1, u64::from(status.capacity.instances));
        if count == 0 { 0.0 } else { sum / f64::from(count) }
    }

    fn cpu_pressure(&self) -> f64 {
        self.node.status.usage.as_ref().and_then(|u| u.pressure.cpu.as_ref()).map(|p| p.some.avg10).unwrap_or(0.0)
    }
}

/// Taints that keep new instances away (PreferNoSchedule only discourages).
fn blocks(taint: &Taint) -> bool {
    matches!(taint.effect, TaintEffect::NoSchedule | TaintEffect::NoExecute)
}

/// Kubernetes semantics: an empty key with Exists tolerates everything; an
/// empty effect matches every effect.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration.effect.is_some_and(|e| e != taint.effect) {
        return false;
    }
    match toleration.operator {
        TolerationOperator::Exists => toleration.key.is_empty() || toleration.key == taint.key,
        TolerationOperator::Equal => toleration.key == taint.key && toleration.value == taint.value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmlet_api::{Bytes, Condition, Cpu, ObjectMeta, WorkloadSpec};

    pub(crate) fn ready_node(name: &str, cpu: u64, memory: u64) -> Node {
        let mut node = Node::new(name);
        let now = chrono::Utc::now();
        node.status.conditions.push(Condition {
            kind: ConditionType::Ready,
            status: ConditionStatus::True,
            reason: "AgentReady".into(),
            message: String::new(),
            last_heartbeat_time: now,
            last_transition_time: now,
        });
        node.status.allocatable.cpu = Cpu::from_millis(cpu);
        node.status.allocatable.memory = Bytes::new(memory);
        node.status.capacity = node.status.allocatable;
        node.status.capacity.instances = 100;
        node
    }

    fn workload(name: &str) -> Workload {
        Workload {
            api_version: wasmlet_api::API_VERSION.into(),
            kind: "Workload".into(),
            metadata: ObjectMeta::named(name),
            spec: serde_json::from_value::<WorkloadSpec>(serde_json::json!({
                "type": "daemon", "module": {"source": "x.wasm", "digest": format!("sha256:{}", "0".repeat(64))}
            }))
            .unwrap(),
            status: None,
        }
    }

    fn placement(nodes: Vec<Node>, scoring: Scoring) -> Placement {
        Placement {
            nodes: nodes
                .into_iter()
                .map(|node| NodeLoad { node, cpu_millis: 0, memory_bytes: 0, instances: 0, per_workload: HashMap::new() })
                .collect(),
            scoring,
        }
    }

    #[test]
    fn replicas_spread_then_fill_by_score() {
        let mut p = placement(
            vec![ready_node("c", 1000, 1 << 30), ready_node("a", 1000, 1 << 30), ready_node("b", 1000, 1 << 30)],
            Scoring::LeastAllocated,
        );
        let w = workload("web");
        let mut placed: Vec<String> = (0..6).map(|_| p.place(&w, |_| true).unwrap()).collect();
        assert_eq!(placed[..3], ["a", "b", "c"], "ties go by name");
        placed.sort();
        assert_eq!(placed, ["a", "a", "b", "b", "c", "c"]);
    }

    #[test]
    fn bin_pack_prefers_the_fuller_node_after_spread() {
        let mut p = placement(vec![ready_node("a", 1000, 1 << 30), ready_node("b", 1000, 1 << 30)], Scoring::BinPack);
        p.add_to("b", &workload("other"));
        assert_eq!(p.place(&workload("web"), |_| true).unwrap(), "b");
    }

    #[test]
    fn failures_are_counted_per_reason() {
        let mut small = ready_node("small", 1000, 1 << 20);
        small.metadata.labels.insert("zone".into(), "a".into());
        let mut tainted = ready_node("tainted", 1000, 1 << 30);
        tainted.spec.taints.push(Taint { key: "gpu".into(), value: "yes".into(), effect: TaintEffect::NoSchedule });
        let mut p = placement(vec![small.clone(), small.clone(), tainted], Scoring::LeastAllocated);
        p.nodes[1].node.metadata.name = "small2".into();
        let mut w = workload("big");
        w.spec.resources.requests.memory = Some(Bytes::new(1 << 25));
        let err = p.place(&w, |_| true).unwrap_err();
        assert_eq!(err.to_string(), "0/3 nodes available: 2 insufficient memory, 1 untolerated taint");

        w.spec.tolerations.push(Toleration {
            key: String::new(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
        });
        assert_eq!(p.place(&w, |_| true).unwrap(), "tainted");
    }

    #[test]
    fn process_isolation_goes_only_to_nodes_that_offer_it() {
        let node = |name: &str, memory: u64, protocol: u32, modes: &[&str]| {
            let mut node = ready_node(name, 1000, memory);
            node.metadata.annotations.insert(crate::annotations::AGENT_PROTOCOL.into(), protocol.to_string());
            node.status.runtime = Some(wasmlet_api::NodeRuntime {
                allocator: "pooling".into(),
                isolation: modes.iter().map(|m| m.to_string()).collect(),
                ..Default::default()
            });
            node
        };
        let mut older = node("older", 1 << 30, 2, &[]);
        older.status.runtime = None;
        let mut refused = node("refused", 1 << 30, 3, &["in-process"]);
        refused.status.runtime.as_mut().unwrap().isolation_reason =
            "cannot create /sys/fs/cgroup/cpu/wasmlet (Read-only file system)".into();
        // A node of version 2 whose status claims process isolation: it could not be sent such an instance.
        let claims = node("claims", 1 << 30, 2, &["in-process", "process"]);
        let small = node("small", 1 << 20, 3, &["in-process", "process"]);
        let mut p = placement(vec![older.clone(), refused.clone(), claims.clone(), small], Scoring::LeastAllocated);
        let mut w = workload("isolated");
        w.spec.isolation = Some(Isolation::Process);
        w.spec.resources.requests.memory = Some(Bytes::new(1 << 25));
        let err = p.place(&w, |_| true).unwrap_err();
        assert_eq!(err.to_string(), "0/4 nodes available: 3 process isolation not offered, 1 insufficient memory");
        assert_eq!(p.placer(&w, |_| true).place().unwrap_err(), err, "the placer filters alike");

        let able = node("able", 1 << 30, 3, &["in-process", "process"]);
        let mut p = placement(vec![older.clone(), refused.clone(), claims.clone(), able], Scoring::LeastAllocated);
        let placed: Vec<String> = (0..3).map(|_| p.place(&w, |_| true).unwrap()).collect();
        assert_eq!(placed, ["able", "able", "able"], "never on a node without process isolation, however full");

        // Without `isolation`, or in-process, a workload fits every node.
        let mut p = placement(vec![older, refused, claims], Scoring::LeastAllocated);
        for isolation in [None, Some(Isolation::InProcess)] {
            w.spec.isolation = isolation;
            assert!(p.place(&w, |_| true).is_ok(), "{isolation:?}");
        }
    }

    #[test]
    fn a_placer_places_as_repeated_single_placements_do() {
        for scoring in [Scoring::LeastAllocated, Scoring::BinPack] {
            let mut nodes: Vec<Node> = ["d", "b", "e", "a", "c"].iter().map(|n| ready_node(n, 1000, 1 << 30)).collect();
            nodes[2].status.capacity.instances = 3;
            nodes[4].spec.unschedulable = true;
            let mut one = placement(nodes, scoring);
            one.add_to("a", &workload("web"));
            one.add_to("b", &workload("other"));
            let mut many = one.clone();
            let w = workload("web");
            let singles: Vec<_> = (0..400).map(|_| one.place(&w, |n| n.metadata.name != "d")).collect();
            let mut placer = many.placer(&w, |n| n.metadata.name != "d");
            let batch: Vec<_> = (0..400).map(|_| placer.place()).collect();
            assert_eq!(singles, batch, "{scoring:?}");
            assert!(batch.last().unwrap().is_err(), "capacity runs out");
        }
    }

    #[test]
    fn toleration_semantics_follow_kubernetes() {
        let taint = Taint { key: "k".into(), value: "v".into(), effect: TaintEffect::NoSchedule };
        let tol = |key: &str, op, value: &str, effect| Toleration { key: key.into(), operator: op, value: value.into(), effect };
        assert!(tolerates(&tol("k", TolerationOperator::Equal, "v", None), &taint));
        assert!(!tolerates(&tol("k", TolerationOperator::Equal, "w", None), &taint));
        assert!(tolerates(&tol("k", TolerationOperator::Exists, "", Some(TaintEffect::NoSchedule)), &taint));
        assert!(!tolerates(&tol("k", TolerationOperator::Exists, "", Some(TaintEffect::NoExecute)), &taint));
        assert!(tolerates(&tol("", TolerationOperator::Exists, "", None), &taint));
    }
}
