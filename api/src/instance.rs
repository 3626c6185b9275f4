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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
