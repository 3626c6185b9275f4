//! Rollouts step by step: which revision each instance should run, when a
//! step is done, and when a gate fails and the workload goes back.
//!
//! A workload whose record ([`Rollout`]) is under way with a strategy
//! ([`Rollout::stepping`]) runs two revisions: its spec now (the new one)
//! and the one that served before ([`RolloutStatus::previous`]).
//!
//! - Canary (services with `replicas`): the previous revision keeps all its
//!   instances; the new one gets the step's weight of them (at least one) and
//!   the ingresses send it the step's weight of the requests
//!   ([`crate::api`]'s endpoints). The final step gives it every instance
//!   and every request; once they all run, the previous revision's go.
//! - Waves (`placement: everyNode`): the nodes in order (by the `orderBy`
//!   label, then name); the waves so far run the new revision, at most
//!   `maxUnavailable` nodes changing at once; the other nodes are not touched.
//!
//! Each pass reads the gates over the step: a Failed or crash-looping new
//! instance, more restarts than `maxRestarts`, new instances not Running
//! within the progress deadline, and (Canary) the error rate and p99 the
//! ingresses counted for the new revision, once it answered `minRequests`.
//! A failed gate rolls back: the workload's spec becomes the previous
//! revision's (the ingresses stop sending to the new one at once, its
//! instances go, the previous revision's come back where they went), and a
//! Warning event names the gate and what it measured. A step whose
//! instances all run and whose gates hold for its `hold` moves on.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use wasmlet_api::RequestFigures;
use wasmlet_api::rollout::{GateReading, Revision};
use wasmlet_api::{EventType, Phase, Rollout, RolloutPhase, RolloutSpec, Strategy, Workload};

use crate::cluster::{Cluster, Placed, Txn};

/// How often the leader reads the ingress figures of the new revisions and looks at the steps.
pub const ROLLOUT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The ingress figures of each workload's new revision, summed over its instances, as last read.
#[derive(Debug, Default)]
pub struct TrafficReadings(std::sync::Mutex<HashMap<String, TrafficReading>>);

#[derive(Debug, Clone)]
pub struct TrafficReading {
    /// The revision the figures are of.
    pub revision: u64,
    pub figures: RequestFigures,
}

impl TrafficReadings {
    pub fn get(&self, workload: &str, revision: u64) -> Option<RequestFigures> {
        let readings = self.0.lock().unwrap_or_else(|p| p.into_inner());
        readings.get(workload).filter(|r| r.revision == revision).map(|r| r.figures.clone())
    }

    pub fn set(&self, workload: &str, reading: TrafficReading) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(workload.to_string(), reading);
    }

    /// Forgets the workloads not in `keep`.
    pub fn retain(&self, keep: &BTreeSet<String>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|name, _| keep.contains(name));
    }
}

/// The rollout of `workload` under way, with the revision it goes back to.
pub fn stepping<'a>(cluster: &'a Cluster, workload: &'a Workload) -> Option<(&'a Rollout, &'a Revision, &'a RolloutSpec)> {
    let rollout = cluster.rollouts.get(&workload.metadata.name).filter(|r| r.stepping())?;
    let previous = rollout.status.previous.as_ref()?;
    let spec = workload.spec.rollout.as_ref().filter(|s| Some(s.strategy) == rollout.status.strategy)?;
    Some((rollout, previous, spec))
}

/// Whether `placed` runs the workload's spec now (the new revision).
pub fn is_new(placed: &Placed, workload: &Workload) -> bool {
    placed.workload.spec.runs_like(&workload.spec)
}

/// The workload as it was at the previous revision, to place its instances with.
pub fn previous_workload(workload: &Workload, previous: &Revision) -> Workload {
    Workload { spec: previous.spec.clone(), status: None, ..workload.clone() }
}

/// Canary: how many instances the new revision has at `step` of `replicas`.
pub fn canary_replicas(spec: &RolloutSpec, step: usize, replicas: u32) -> u32 {
    if step >= spec.step_count() { replicas } else { (replicas * spec.weight(step)).div_ceil(100).clamp(1, replicas.max(1)) }
}

/// Waves: the nodes of the workload in rollout order (the `orderBy` label's value, then the name).
pub fn wave_order<'a>(cluster: &'a Cluster, workload: &Workload, spec: &RolloutSpec) -> Vec<&'a str> {
    let mut nodes: Vec<(Option<&String>, &str)> = cluster
        .nodes
        .values()
        .filter(|n| workload.spec.node_selector.iter().all(|(k, v)| n.metadata.labels.get(k) == Some(v)))
        .map(|n| (spec.order_by.as_ref().and_then(|key| n.metadata.labels.get(key)), n.metadata.name.as_str()))
        .collect();
    // Nodes without the label go last.
    nodes.sort_by(|a, b| (a.0.is_none(), a.0, a.1).cmp(&(b.0.is_none(), b.0, b.1)));
    nodes.into_iter().map(|(_, name)| name).collect()
}

/// Waves: the nodes that run the new revision now: those of the waves so
/// far, at most `maxUnavailable` of the current wave changing at once.
pub fn wave_nodes<'a>(cluster: &'a Cluster, workload: &Workload, spec: &RolloutSpec, step: usize, mine: &[&Placed]) -> BTreeSet<&'a str> {
    let order = wave_order(cluster, workload, spec);
    let through = spec.nodes_through(step, order.len());
    let earlier = if step == 0 { 0 } else { spec.nodes_through(step - 1, order.len()) };
    let max_changing = spec.max_unavailable.map_or(usize::MAX, |n| n as usize);
    let mut state: HashMap<&str, bool> = HashMap::new();
    for p in mine.iter().filter(|p| is_new(p, workload)) {
        let running = done_or_running(p);
        let entry = state.entry(p.instance.spec.node.as_str()).or_insert(false);
        *entry |= running;
    }
    let mut chosen = BTreeSet::new();
    let mut changing = 0;
    for (i, node) in order.into_iter().take(through).enumerate() {
        match state.get(node) {
            Some(true) => {}
            // Earlier waves are done; a node of theirs without a running instance does not hold this one back.
            _ if i < earlier => {}
            Some(false) => changing += 1,
            None if changing < max_changing => changing += 1,
            None => continue,
        }
        chosen.insert(node);
    }
    chosen
}

/// Whether a new instance counts as up: Running and Ready, or (a job) finished.
fn done_or_running(p: &Placed) -> bool {
    let status = &p.instance.status;
    (status.phase == Phase::Running && status.reason.is_none()) || status.phase == Phase::Succeeded
}

/// What one pass decides about a rollout under way.
pub struct Decision {
    pub rollout: Rollout,
    /// The workload with its spec set back to the previous revision (a gate failed).
    pub rolled_back: Option<Workload>,
}

/// Looks at a rollout under way: reads its gates, moves it on when its
/// step is done, rolls it back when a gate fails. None when nothing changes.
pub fn progress(
    cluster: &Cluster,
    workload: &Workload,
    mine: &[&Placed],
    traffic: &TrafficReadings,
    now: DateTime<Utc>,
    txn: &mut Txn,
) -> Option<Decision> {
    let elapsed_since = |at: DateTime<Utc>| (now - at).to_std().unwrap_or_default();
    let (rollout, previous, spec) = stepping(cluster, workload)?;
    let status = &rollout.status;
    let step = status.step as usize;
    let new: Vec<&Placed> = mine.iter().copied().filter(|p| is_new(p, workload)).collect();
    let expected = match spec.strategy {
        Strategy::Canary => canary_replicas(spec, step, workload.spec.replicas.unwrap_or(1)) as usize,
        Strategy::Waves => spec.nodes_through(step, wave_order(cluster, workload, spec).len()),
    };
    let running = new.iter().filter(|p| done_or_running(p)).count();
    let ready = running >= expected;

    // The gates.
    let mut readings = Vec::new();
    let mut failed: Option<String> = None;
    let mut fail = |gate: &str, why: String| {
        if failed.is_none() {
            failed = Some(format!("gate {gate} failed: {why}"));
        }
    };
    let crashing: Vec<String> = new
        .iter()
        .filter(|p| p.instance.status.phase == Phase::Failed || p.instance.status.reason.as_deref() == Some("CrashLoopBackOff"))
        .map(|p| {
            let why = p.instance.status.message.clone().or(p.instance.status.reason.clone()).unwrap_or_else(|| "failed".into());
            format!("{} on {}: {why}", p.instance.metadata.name, p.instance.spec.node)
        })
        .collect();
    readings.push(GateReading {
        gate: "crashLoop".into(),
        value: crashing.len().to_string(),
        limit: "0".into(),
        passed: crashing.is_empty(),
    });
    if let Some(first) = crashing.first() {
        fail("crashLoop", format!("instance {first}"));
    }
    let restarts: u32 = new.iter().map(|p| p.instance.status.restarts).sum();
    if let Some(max) = spec.gates.max_restarts {
        readings.push(GateReading {
            gate: "maxRestarts".into(),
            value: restarts.to_string(),
            limit: max.to_string(),
            passed: restarts <= max,
        });
        if restarts > max {
            fail("maxRestarts", format!("the new revision's instances restarted {restarts} time(s), more than {max}"));
        }
    }
    let started = status.step_started_at.unwrap_or(now);
    let deadline = spec.progress_deadline();
    if !ready && status.step_ready_at.is_none() && elapsed_since(started) > deadline {
        readings.push(GateReading {
            gate: "progressDeadline".into(),
            value: format!("{running} of {expected} Running"),
            limit: wasmlet_api::Duration::from(deadline).to_string(),
            passed: false,
        });
        fail(
            "progressDeadline",
            format!("{running} of {expected} new instance(s) Running after {}", wasmlet_api::Duration::from(deadline)),
        );
    }
    let step_figures = traffic.get(&workload.metadata.name, status.revision).map(|now| match &status.baseline {
        Some(baseline) => now.since(baseline),
        None => now,
    });
    let min_requests = spec.gates.min_requests();
    let enough = step_figures.as_ref().is_some_and(|f| f.requests >= min_requests);
    if spec.strategy == Strategy::Canary && spec.gates.needs_traffic() {
        let answered = step_figures.as_ref().map_or(0, |f| f.requests);
        if let Some(max) = spec.gates.max_error_rate {
            let rate = step_figures.as_ref().and_then(RequestFigures::error_rate);
            let passed = !enough || rate.is_none_or(|r| r <= max.get());
            let value = match rate {
                Some(rate) if enough => format!("{rate:.1}% of {answered}"),
                _ => format!("{answered} of {min_requests} requests"),
            };
            readings.push(GateReading { gate: "maxErrorRate".into(), value, limit: max.to_string(), passed });
            if !passed {
                let errors = step_figures.as_ref().map_or(0, |f| f.server_errors);
                fail(
                    "maxErrorRate",
                    format!(
                        "{:.1}% of the new revision's answers were server errors ({errors} of {answered}), more than {max}",
                        rate.unwrap_or_default()
                    ),
                );
            }
        }
        if let Some(max) = spec.gates.max_p99 {
            let p99 = step_figures.as_ref().and_then(RequestFigures::p99_ms);
            let limit_ms = max.get().as_millis() as u64;
            let passed = !enough || p99.is_none_or(|p| p <= limit_ms);
            let shown = |ms: u64| if ms == u64::MAX { "> 10s".to_string() } else { format!("<= {ms}ms") };
            let value = match p99 {
                Some(ms) if enough => shown(ms),
                _ => format!("{answered} of {min_requests} requests"),
            };
            readings.push(GateReading { gate: "maxP99".into(), value: value.clone(), limit: max.to_string(), passed });
            if !passed {
                fail(
                    "maxP99",
                    format!("the new revision's 99th percentile latency was {value}, more than {max} (over {answered} requests)"),
                );
            }
        }
    }

    let mut next = rollout.clone();
    next.status.gates = readings;
    let name = workload.metadata.name.as_str();
    if let Some(why) = failed {
        return Some(roll_back(next, workload, previous, &why, now, txn));
    }
    let s = &mut next.status;
    if !ready {
        s.step_ready_at = None;
    } else if s.step_ready_at.is_none() {
        s.step_ready_at = Some(now);
    }
    let held = s.step_ready_at.is_some_and(|at| elapsed_since(at) >= spec.hold(step));
    let traffic_seen = spec.strategy != Strategy::Canary || !spec.gates.needs_traffic() || enough;
    let steps = spec.step_count();
    let revision = s.revision;
    if s.phase == RolloutPhase::Progressing && ready && step >= steps {
        s.phase = RolloutPhase::Complete;
        s.weight = 100;
        // `previous` stays: `wasmlet rollout undo` goes back to it.
        s.baseline = None;
        s.message = format!("revision {revision} runs everywhere");
        s.conclude(revision, "Complete", "");
        txn.event(
            EventType::Normal,
            "RolloutComplete",
            ("Workload", name),
            format!("revision {revision} of {name} rolled out to every instance"),
        );
    } else if s.phase == RolloutPhase::Progressing && ready && held && traffic_seen {
        let next_step = step + 1;
        s.step = next_step as u32;
        s.step_started_at = Some(now);
        s.step_ready_at = None;
        s.weight = spec.weight(next_step);
        s.baseline = traffic.get(name, revision);
        s.message = spec.describe_step(next_step);
        txn.event(EventType::Normal, "RolloutStep", ("Workload", name), format!("revision {revision}: {}", s.message));
    } else {
        s.message = match s.phase {
            RolloutPhase::Paused => format!("paused at {}", spec.describe_step(step)),
            _ if !ready => format!("{}: waiting for {running} of {expected} new instance(s) to run", spec.describe_step(step)),
            _ if !traffic_seen => format!(
                "{}: waiting for {min_requests} requests to the new revision (it answered {})",
                spec.describe_step(step),
                step_figures.as_ref().map_or(0, |f| f.requests)
            ),
            _ => format!("{}: holding", spec.describe_step(step)),
        };
    }
    (next != *rollout).then_some(Decision { rollout: next, rolled_back: None })
}

/// Sets the workload back to `previous` and records why.
pub fn roll_back(mut rollout: Rollout, workload: &Workload, previous: &Revision, why: &str, now: DateTime<Utc>, txn: &mut Txn) -> Decision {
    let name = workload.metadata.name.as_str();
    let s = &mut rollout.status;
    let bad = s.revision;
    s.conclude(bad, "RolledBack", why);
    s.phase = RolloutPhase::RolledBack;
    s.revision = previous.revision;
    s.previous = None;
    s.weight = 0;
    s.baseline = None;
    s.step_ready_at = None;
    s.message = format!("revision {bad} rolled back to revision {}: {why}", previous.revision);
    s.record(previous.revision, &previous.spec, now, "Complete", &format!("restored: revision {bad} rolled back"));
    txn.event(EventType::Warning, "RolloutRolledBack", ("Workload", name), s.message.clone());
    let mut reverted = workload.clone();
    reverted.spec = previous.spec.clone();
    reverted.status = None;
    Decision { rollout, rolled_back: Some(reverted) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kind, Snapshot, Stored};
    use wasmlet_api::rollout::{CanaryStep, NodeShare, Wave};
    use wasmlet_api::{Instance, InstanceSpec, Node};

    fn canary(weights: &[u32]) -> RolloutSpec {
        RolloutSpec::canary(weights.iter().map(|w| CanaryStep { weight: *w, hold: wasmlet_api::Duration::from_secs(1) }).collect())
    }

    fn waves(shares: &[NodeShare], max_unavailable: Option<u32>) -> RolloutSpec {
        let mut spec = RolloutSpec::waves(shares.iter().map(|n| Wave { nodes: *n, hold: wasmlet_api::Duration::from_secs(1) }).collect());
        spec.order_by = Some("ring".into());
        spec.max_unavailable = max_unavailable;
        spec
    }

    fn workload(version: &str, rollout: RolloutSpec) -> Workload {
        let mut w: Workload = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w"},
            "spec": {"type": "service", "replicas": 2, "module": {"source": "w.wasm", "digest": format!("sha256:{}", "0".repeat(64))},
                     "env": {"VERSION": version}}
        }))
        .unwrap();
        w.spec.rollout = Some(rollout);
        w
    }

    /// A cluster of `nodes` (name, `ring` label), the workload at `new`, its
    /// record stepping from `old`, and instances (name, node, of `new`?, phase).
    fn cluster(nodes: &[(&str, Option<&str>)], new: &Workload, old: &Workload, instances: &[(&str, &str, bool, Phase)]) -> Cluster {
        let mut objects = Vec::new();
        let mut put = |kind: Kind, name: &str, value: Vec<u8>| {
            objects.push(Stored { kind, name: name.to_string(), revision: objects.len() as u64 + 1, value });
        };
        for (name, ring) in nodes {
            let mut node = Node::new(*name);
            if let Some(ring) = ring {
                node.metadata.labels.insert("ring".into(), ring.to_string());
            }
            put(Kind::Node, name, serde_json::to_vec(&node).unwrap());
        }
        put(Kind::Workload, "w", serde_json::to_vec(new).unwrap());
        let record = Rollout::first("w", &old.spec, Utc::now()).changed(&old.spec, &new.spec, Utc::now());
        put(Kind::Rollout, "w", serde_json::to_vec(&record).unwrap());
        for (name, node, is_new, phase) in instances {
            let mut instance = Instance::new(*name, InstanceSpec { workload: "w".into(), node: node.to_string(), epoch: 1 });
            instance.status.phase = *phase;
            let placed = Placed { instance, workload: if *is_new { new.clone() } else { old.clone() } };
            put(Kind::Instance, name, serde_json::to_vec(&placed).unwrap());
        }
        let revision = objects.len() as u64;
        Cluster::new(Snapshot { revision, epoch: 1, objects })
    }

    #[test]
    fn a_canary_has_its_weight_of_the_replicas_and_at_least_one() {
        let spec = canary(&[10, 50]);
        assert_eq!(canary_replicas(&spec, 0, 3), 1);
        assert_eq!(canary_replicas(&spec, 1, 3), 2);
        assert_eq!(canary_replicas(&spec, 2, 3), 3, "the final step: every replica");
        assert_eq!(canary_replicas(&spec, 0, 20), 2);
        assert_eq!(canary_replicas(&spec, 0, 1), 1);
    }

    #[test]
    fn waves_go_in_label_order_and_change_at_most_max_unavailable_nodes_at_once() {
        let spec = waves(&[NodeShare::Count(1), NodeShare::Percent(wasmlet_api::rollout::Percent::new(50.0).unwrap())], Some(1));
        let (old, new) = (workload("1", spec.clone()), workload("2", spec.clone()));
        let nodes = [("d", None), ("c", Some("1")), ("b", Some("2")), ("a", Some("2"))];
        let c = cluster(&nodes, &new, &old, &[]);
        assert_eq!(wave_order(&c, &new, &spec), ["c", "a", "b", "d"], "by ring, then name; unlabelled last");
        let mine: Vec<&Placed> = Vec::new();
        assert_eq!(wave_nodes(&c, &new, &spec, 0, &mine), BTreeSet::from(["c"]));
        // Wave 2 adds half of four nodes, one at a time: c is done, a starts.
        let c = cluster(&nodes, &new, &old, &[("w-1", "c", true, Phase::Running)]);
        let mine: Vec<&Placed> = c.instances.values().collect();
        assert_eq!(wave_nodes(&c, &new, &spec, 1, &mine), BTreeSet::from(["c", "a"]));
        // a runs: b may start; d is in no wave yet.
        let c = cluster(&nodes, &new, &old, &[("w-1", "c", true, Phase::Running), ("w-2", "a", true, Phase::Running)]);
        let mine: Vec<&Placed> = c.instances.values().collect();
        assert_eq!(wave_nodes(&c, &new, &spec, 1, &mine), BTreeSet::from(["c", "a", "b"]));
        // A job that finished on a counts as done there too.
        let finished = cluster(&nodes, &new, &old, &[("w-1", "c", true, Phase::Running), ("w-2", "a", true, Phase::Succeeded)]);
        let done: Vec<&Placed> = finished.instances.values().collect();
        assert_eq!(wave_nodes(&finished, &new, &spec, 1, &done), BTreeSet::from(["c", "a", "b"]));
        assert_eq!(wave_nodes(&c, &new, &spec, 2, &mine), BTreeSet::from(["c", "a", "b", "d"]), "the final wave: d joins the earlier ones");
    }

    #[test]
    fn a_gate_reads_only_after_enough_requests_and_a_failing_one_rolls_back() {
        let mut spec = canary(&[20]);
        spec.gates.max_error_rate = wasmlet_api::rollout::Percent::new(5.0);
        let (old, new) = (workload("1", spec.clone()), workload("2", spec));
        let instances = [("w-1", "a", false, Phase::Running), ("w-2", "b", false, Phase::Running), ("w-3", "a", true, Phase::Running)];
        let c = cluster(&[("a", None), ("b", None)], &new, &old, &instances);
        let mine: Vec<&Placed> = c.instances.values().collect();
        let traffic = TrafficReadings::default();
        let figures = |requests, server_errors| RequestFigures { requests, server_errors, latency_buckets: vec![requests] };
        traffic.set("w", TrafficReading { revision: 2, figures: figures(10, 5) });
        let mut txn = c.txn();
        let decision = progress(&c, &new, &mine, &traffic, Utc::now(), &mut txn).expect("the step is ready: a change");
        assert!(decision.rolled_back.is_none(), "10 requests are fewer than the 20 the gate needs");
        assert!(decision.rollout.status.gates.iter().any(|g| g.gate == "maxErrorRate" && g.passed && g.value == "10 of 20 requests"));

        traffic.set("w", TrafficReading { revision: 2, figures: figures(40, 20) });
        let decision = progress(&c, &new, &mine, &traffic, Utc::now(), &mut txn).expect("a failed gate");
        let reverted = decision.rolled_back.expect("rolled back");
        assert_eq!(reverted.spec.env.get("VERSION").map(String::as_str), Some("1"), "back to the previous revision's spec");
        let status = &decision.rollout.status;
        assert_eq!((status.phase, status.revision), (RolloutPhase::RolledBack, 1));
        assert!(
            status.message.contains("50.0% of the new revision's answers were server errors (20 of 40), more than 5%"),
            "{}",
            status.message
        );
        // Figures of another revision (read before this one began) count for nothing.
        traffic.set("w", TrafficReading { revision: 7, figures: figures(40, 20) });
        let decision = progress(&c, &new, &mine, &traffic, Utc::now(), &mut txn).expect("a change");
        assert!(decision.rolled_back.is_none());
    }

    #[test]
    fn a_slow_new_revision_fails_its_p99_gate_and_one_not_running_in_time_its_deadline() {
        let mut spec = canary(&[20]);
        spec.gates.max_p99 = Some(wasmlet_api::Duration::from_millis(200));
        let (old, new) = (workload("1", spec.clone()), workload("2", spec));
        let instances = [("w-1", "a", false, Phase::Running), ("w-2", "a", true, Phase::Running)];
        let c = cluster(&[("a", None)], &new, &old, &instances);
        let mine: Vec<&Placed> = c.instances.values().collect();
        let traffic = TrafficReadings::default();
        let mut buckets = vec![0; wasmlet_api::instance::LATENCY_BUCKETS_MS.len()];
        buckets[RequestFigures::bucket_of(std::time::Duration::from_millis(5))] = 10;
        buckets[RequestFigures::bucket_of(std::time::Duration::from_millis(400))] = 20;
        traffic
            .set("w", TrafficReading { revision: 2, figures: RequestFigures { requests: 30, server_errors: 0, latency_buckets: buckets } });
        let mut txn = c.txn();
        let decision = progress(&c, &new, &mine, &traffic, Utc::now(), &mut txn).expect("a failed gate");
        assert!(decision.rolled_back.is_some());
        let message = &decision.rollout.status.message;
        assert!(
            message.contains("gate maxP99 failed: the new revision's 99th percentile latency was <= 500ms, more than 200ms"),
            "{message}"
        );

        // A new instance still Pending when the progress deadline (2m by default) is past.
        let c = cluster(&[("a", None)], &new, &old, &[("w-1", "a", false, Phase::Running), ("w-2", "a", true, Phase::Pending)]);
        let mine: Vec<&Placed> = c.instances.values().collect();
        let quiet = TrafficReadings::default();
        let in_time = progress(&c, &new, &mine, &quiet, Utc::now() + chrono::Duration::seconds(60), &mut txn).expect("a change");
        assert!(in_time.rolled_back.is_none(), "a minute in, it may still come up");
        let late = progress(&c, &new, &mine, &quiet, Utc::now() + chrono::Duration::seconds(121), &mut txn).expect("a failed gate");
        assert!(late.rolled_back.is_some());
        assert!(
            late.rollout.status.message.contains("gate progressDeadline failed: 0 of 1 new instance(s) Running after 2m"),
            "{}",
            late.rollout.status.message
        );
    }

    #[test]
    fn a_crash_looping_new_instance_fails_the_step_whatever_the_gates_even_paused() {
        let spec = canary(&[50]);
        let (old, new) = (workload("1", spec.clone()), workload("2", spec));
        let mut c = cluster(&[("a", None)], &new, &old, &[("w-1", "a", false, Phase::Running), ("w-2", "a", true, Phase::Failed)]);
        // Paused, too: a pause holds the steps, not the gates.
        c.rollouts.get_mut("w").expect("the record").status.phase = RolloutPhase::Paused;
        let mine: Vec<&Placed> = c.instances.values().collect();
        let mut txn = c.txn();
        let decision = progress(&c, &new, &mine, &TrafficReadings::default(), Utc::now(), &mut txn).expect("a failed gate");
        assert!(decision.rolled_back.is_some());
        assert!(
            decision.rollout.status.message.contains("gate crashLoop failed: instance w-2 on a"),
            "{}",
            decision.rollout.status.message
        );
    }
}
