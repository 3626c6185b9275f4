//! The Instance object: one replica of a workload placed on one node.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, api_version};

pub const INSTANCE_KIND: &str = "Instance";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "instance_kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: InstanceSpec,
    #[serde(default)]
    pub status: InstanceStatus,
}

fn instance_kind() -> String {
    INSTANCE_KIND.to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSpec {
    pub workload: String,
    pub node: String,
    /// Issued by the master, only ever grows: an agent runs an instance only
    /// under the newest epoch it was given (fencing).
    pub epoch: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Machine-readable cause of the last state (`Trap`, `MemoryLimitExceeded`, `CrashLoopBackOff`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How the previous run ended, while the instance waits to restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_termination: Option<Termination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<InstanceUsage>,
}

/// The end of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub reason: String,
    pub message: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// What an instance uses now, extended in protocol version 3. The figures after
/// `cpuSeconds` come from the instance's cgroup, in process isolation only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceUsage {
    pub memory_bytes: u64,
    /// CPU time over all runs of the instance.
    pub cpu_seconds: f64,
    /// How the instance runs: `in-process` or `process` (absent from agents older than isolation modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// The cgroup's CPU quota (`limits.cpu`), in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_millis: Option<u64>,
    /// The cgroup's memory limit: `limits.memory` plus what the process itself costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// CPU quota periods the instance ran in, since its cgroup was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_periods: Option<u64>,
    /// Of those, the periods in which it used up its quota and had to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_periods: Option<u64>,
    /// How long it waited, throttled, in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_seconds: Option<f64>,
    /// Times the kernel's OOM killer ended a process of the instance, since its cgroup was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    /// The instance's own CPU pressure (where the kernel gives it per cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pressure: Option<PressureFigures>,
    /// The instance's own memory pressure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_pressure: Option<PressureFigures>,
    /// A service's answers as the node's ingress counted them, since the
    /// instance started on this agent (protocol version 5; absent before its first request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestFigures>,
}

/// Pressure stall information of one cgroup and one resource (`cpu.pressure`,
/// `memory.pressure`): shares of the last 10 s in percent, and totals since the cgroup was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PressureFigures {
    /// Share of time some of its tasks were stalled, 0–100.
    pub some_avg10: f64,
    /// Share of time all of its tasks were stalled at once, 0–100.
    pub full_avg10: f64,
    pub some_seconds: f64,
    pub full_seconds: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Pending,
    Starting,
    Running,
    Succeeded,
    Failed,
    Lost,
    Terminating,
}

impl Instance {
    pub fn new(name: impl Into<String>, spec: InstanceSpec) -> Self {
        Instance {
            api_version: api_version(),
            kind: instance_kind(),
            metadata: ObjectMeta::named(name),
            spec,
            status: InstanceStatus::default(),
        }
    }
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Starting => "Starting",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Lost => "Lost",
            Phase::Terminating => "Terminating",
        }
    }

    pub const ALL: [Phase; 7] =
        [Phase::Pending, Phase::Starting, Phase::Running, Phase::Succeeded, Phase::Failed, Phase::Lost, Phase::Terminating];
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Upper bounds of the latency buckets an ingress counts answers in (the last is open-ended).
pub const LATENCY_BUCKETS_MS: [u64; 14] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, u64::MAX];

/// What an ingress counted of the answers of an instance (or of several, summed):
/// every request it handed to the instance, those answered with a server
/// error (5xx), and the answers by latency ([`LATENCY_BUCKETS_MS`], one count each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestFigures {
    pub requests: u64,
    pub server_errors: u64,
    #[serde(default)]
    pub latency_buckets: Vec<u64>,
}

impl RequestFigures {
    pub fn add(&mut self, other: &RequestFigures) {
        self.requests += other.requests;
        self.server_errors += other.server_errors;
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine += theirs;
        }
    }

    /// What came after `earlier` (counters that went back, an agent restarted, count from zero).
    pub fn since(&self, earlier: &RequestFigures) -> RequestFigures {
        if self.requests < earlier.requests || self.server_errors < earlier.server_errors {
            return self.clone();
        }
        let buckets =
            self.latency_buckets.iter().enumerate().map(|(i, n)| n.saturating_sub(earlier.latency_buckets.get(i).copied().unwrap_or(0)));
        RequestFigures {
            requests: self.requests - earlier.requests,
            server_errors: self.server_errors - earlier.server_errors,
            latency_buckets: buckets.collect(),
        }
    }

    /// The share of server errors, in percent (None without requests).
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.server_errors as f64 * 100.0 / self.requests as f64)
    }

    /// The upper bound of the bucket holding the 99th percentile answer, in
    /// milliseconds (`u64::MAX` when beyond the last bound), None without answers.
    pub fn p99_ms(&self) -> Option<u64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total * 99).div_ceil(100);
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }

    /// The bucket an answer after `elapsed` counts in.
    pub fn bucket_of(elapsed: std::time::Duration) -> usize {
        let ms = elapsed.as_millis();
        LATENCY_BUCKETS_MS.iter().position(|bound| ms <= u128::from(*bound)).unwrap_or(LATENCY_BUCKETS_MS.len() - 1)
    }
}
