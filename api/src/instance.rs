//! The Instance object: one replica of a workload placed on one node.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, api_version};

pub const INSTANCE_KIND: &str = "Instance";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    pub workload: String,
    pub node: String,
    /// Issued by the master, only ever grows: an agent runs an instance only
    /// under the newest epoch it was given (fencing).
    pub epoch: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Termination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub reason: String,
    pub message: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// What an instance uses now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceUsage {
    pub memory_bytes: u64,
    /// CPU time over all runs of the instance.
    pub cpu_seconds: f64,
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
