//! The recent usage of every node, for the dashboard's plots: a bounded ring
//! of samples per node, in memory only.
//!
//! Every master records the `status.usage` of each Node it applies to its
//! view (its own writes and those of the other masters, through the store's
//! watch), so all masters of a cluster hold the same history from the moment
//! they started, whichever of them the agent reports to. A master restart
//! starts empty: the history is a convenience for eyes, not a record; the
//! store is not written once more per report for it.
//!
//! Bounds: [`WINDOW`] of history, at most [`SAMPLES_PER_NODE`] samples per
//! node and [`MAX_NODES`] nodes; a deleted node is forgotten. A sample is a
//! few numbers (56 bytes), so the worst case is ~80 MB, the default (a report
//! a minute: 60 samples an hour) under 7 MB.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use wasmlet_api::NodeUsage;

/// How far back the history reaches.
pub const WINDOW: Duration = Duration::hours(1);
/// Samples kept per node: one hour at the agent's default sampling (5 s),
/// for masters whose status report interval is that short.
pub const SAMPLES_PER_NODE: usize = 720;
/// Nodes with a history; the samples of further nodes are not kept.
pub const MAX_NODES: usize = 2000;

/// One usage sample, as the dashboard plots it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSample {
    pub time: DateTime<Utc>,
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// PSI `some avg10` of cpu, memory and io, when the kernel has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_pressure: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_pressure: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_pressure: Option<f32>,
}

impl From<&NodeUsage> for UsageSample {
    fn from(usage: &NodeUsage) -> Self {
        let some = |p: Option<wasmlet_api::node::ResourcePressure>| p.map(|p| p.some.avg10 as f32);
        UsageSample {
            time: usage.sample_time,
            cpu_percent: usage.cpu_percent as f32,
            memory_used_bytes: usage.memory.used_bytes,
            memory_total_bytes: usage.memory.total_bytes,
            cpu_pressure: some(usage.pressure.cpu),
            memory_pressure: some(usage.pressure.memory),
            io_pressure: some(usage.pressure.io),
        }
    }
}

/// The answer of `GET /api/v1/nodes/{name}/usage-history`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub node: String,
    pub window_seconds: i64,
    pub max_samples: usize,
    /// Oldest first.
    pub samples: Vec<UsageSample>,
}

/// Per node, its samples oldest first.
#[derive(Debug, Default)]
pub struct UsageHistory {
    rings: HashMap<String, VecDeque<UsageSample>>,
}

impl UsageHistory {
    /// Records `usage` for `node` unless it is no newer than the last sample
    /// (the same status applied again, a cordon rewriting the Node), and drops
    /// what fell out of the window or beyond the cap.
    pub fn record(&mut self, node: &str, usage: &NodeUsage) {
        let sample = UsageSample::from(usage);
        if !self.rings.contains_key(node) && self.rings.len() >= MAX_NODES {
            return;
        }
        let ring = self.rings.entry(node.to_string()).or_default();
        if ring.back().is_some_and(|last| last.time >= sample.time) {
            return;
        }
        ring.push_back(sample);
        let oldest = sample.time - WINDOW;
        while ring.len() > SAMPLES_PER_NODE || ring.front().is_some_and(|s| s.time < oldest) {
            ring.pop_front();
        }
    }

    pub fn forget(&mut self, node: &str) {
        self.rings.remove(node);
    }

    /// Keeps only the nodes `keep` says exist.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.rings.retain(|node, _| keep(node));
    }

    /// The node's samples within the window before `now`, oldest first.
    pub fn history(&self, node: &str, now: DateTime<Utc>) -> History {
        let oldest = now - WINDOW;
        let samples = self.rings.get(node).map(|r| r.iter().filter(|s| s.time >= oldest).copied().collect()).unwrap_or_default();
        History { node: node.to_string(), window_seconds: WINDOW.num_seconds(), max_samples: SAMPLES_PER_NODE, samples }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(at: DateTime<Utc>, cpu: f64) -> NodeUsage {
        let mut usage = NodeUsage { sample_time: at, cpu_percent: cpu, ..Default::default() };
        usage.memory.used_bytes = 1 << 20;
        usage
    }

    #[test]
    fn keeps_samples_in_order_and_skips_repeats() {
        let mut history = UsageHistory::default();
        let t0 = Utc::now();
        history.record("a", &usage(t0, 1.0));
        history.record("a", &usage(t0, 2.0));
        history.record("a", &usage(t0 - Duration::seconds(1), 3.0));
        history.record("a", &usage(t0 + Duration::seconds(5), 4.0));
        let samples = history.history("a", t0 + Duration::seconds(5)).samples;
        assert_eq!(samples.iter().map(|s| s.cpu_percent).collect::<Vec<_>>(), [1.0, 4.0]);
        assert!(history.history("b", t0).samples.is_empty());
    }

    #[test]
    fn holds_one_window_and_at_most_the_cap() {
        let mut history = UsageHistory::default();
        let t0 = Utc::now() - Duration::hours(3);
        for i in 0..(SAMPLES_PER_NODE as i64 + 50) {
            history.record("fast", &usage(t0 + Duration::seconds(i), i as f64));
        }
        let fast = history.history("fast", t0 + Duration::seconds(SAMPLES_PER_NODE as i64 + 50)).samples;
        assert_eq!(fast.len(), SAMPLES_PER_NODE);
        assert_eq!(fast.first().map(|s| s.cpu_percent), Some(50.0), "the oldest samples went first");

        // One sample a minute for two hours: one hour stays.
        for i in 0..120 {
            history.record("slow", &usage(t0 + Duration::minutes(i), i as f64));
        }
        let last = t0 + Duration::minutes(119);
        let slow = history.history("slow", last).samples;
        assert_eq!(slow.len(), 61);
        assert!(slow.iter().all(|s| s.time >= last - WINDOW));
        // Read later, the samples older than the window are not answered.
        assert_eq!(history.history("slow", last + Duration::minutes(30)).samples.len(), 31);
    }

    #[test]
    fn a_sample_stays_as_small_as_the_module_says() {
        assert!(std::mem::size_of::<UsageSample>() <= 56, "{} bytes", std::mem::size_of::<UsageSample>());
    }

    #[test]
    fn forgets_deleted_nodes_and_caps_the_nodes() {
        let mut history = UsageHistory::default();
        let t0 = Utc::now();
        for n in 0..MAX_NODES + 5 {
            history.record(&format!("n{n}"), &usage(t0, 1.0));
        }
        assert_eq!(history.rings.len(), MAX_NODES);
        assert!(history.history(&format!("n{}", MAX_NODES + 1), t0).samples.is_empty());
        history.forget("n0");
        history.retain(|n| n != "n1");
        assert!(history.history("n0", t0).samples.is_empty() && history.history("n1", t0).samples.is_empty());
        // Room again for a new node.
        history.record("late", &usage(t0, 1.0));
        assert_eq!(history.history("late", t0).samples.len(), 1);
    }
}
