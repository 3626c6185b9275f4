//! The Node object: a machine in the fleet, what it is and how it is doing.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::instance::Phase;
use crate::meta::{ObjectMeta, api_version, validate_type};
use crate::quantity::{Bytes, Cpu};
use crate::validate::{Errors, ValidationError, is_label_key};
use crate::workload::Isolation;

pub const NODE_KIND: &str = "Node";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "node_kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default)]
    pub status: NodeStatus,
}

fn node_kind() -> String {
    NODE_KIND.to_string()
}

impl Node {
    pub fn new(name: impl Into<String>) -> Self {
        Node {
            api_version: api_version(),
            kind: node_kind(),
            metadata: ObjectMeta::named(name),
            spec: NodeSpec::default(),
            status: NodeStatus::default(),
        }
    }

    /// The condition of the given type, if the node reports it.
    pub fn condition(&self, kind: ConditionType) -> Option<&Condition> {
        self.status.conditions.iter().find(|c| c.kind == kind)
    }

    pub fn is_ready(&self) -> bool {
        self.condition(ConditionType::Ready).is_some_and(|c| c.status == ConditionStatus::True)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = Errors::default();
        validate_type(&self.api_version, &self.kind, NODE_KIND, &mut errors);
        self.metadata.validate(&mut errors);
        let taints = self.spec.taints.len();
        if taints > crate::limits::MAX_TOLERATIONS {
            errors.push("spec.taints", format!("{taints} taints are more than the limit of {}", crate::limits::MAX_TOLERATIONS));
        }
        for (i, taint) in self.spec.taints.iter().enumerate() {
            if !is_label_key(&taint.key) {
                errors
                    .push(format!("spec.taints[{i}].key"), format!("`{}` is not a valid taint key", crate::validate::shorten(&taint.key)));
            }
        }
        errors.finish()
    }
}

/// What the operator decides about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Cordoned: no new instances are placed here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

/// Repels instances that do not tolerate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// What the node reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default)]
    pub capacity: ResourceList,
    /// Capacity minus what the operator reserves for the system and the agent.
    #[serde(default)]
    pub allocatable: ResourceList,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
    #[serde(default)]
    pub node_info: NodeInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<NodeUsage>,
    /// A short list of what runs there.
    #[serde(default)]
    pub instances: Vec<InstanceSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<NodeRuntime>,
    /// The agent runs with `--insecure-http`: its API and its link to the master are plain HTTP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
}

/// How the node's WASM runtime is set up. Extended in protocol version 3.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRuntime {
    /// `pooling` or `on-demand`.
    pub allocator: String,
    pub allocator_reason: String,
    /// Where modules are compiled: `process` (a child process per compile,
    /// with a memory limit and a time budget) or `in-agent`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compiler: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub compiler_reason: String,
    /// The isolation modes the node runs instances in (`in-process`,
    /// `process`). Empty from an agent older than isolation modes: in-process only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isolation: Vec<String>,
    /// Why `process` is not among them, when it is not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub isolation_reason: String,
    /// The mode of workloads that set no `isolation` (the agent's `--default-isolation`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub default_isolation: String,
    /// The cgroup layout process isolation uses, in one line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroups: String,
}

impl NodeRuntime {
    /// Whether the node runs instances in `mode`.
    pub fn offers(&self, mode: Isolation) -> bool {
        match self.isolation.is_empty() {
            true => mode == Isolation::InProcess,
            false => self.isolation.iter().any(|offered| offered == mode.as_str()),
        }
    }
}

/// Amounts of each resource a node has or offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceList {
    pub cpu: Cpu,
    pub memory: Bytes,
    pub ephemeral_storage: Bytes,
    /// How many instances the node accepts at most.
    pub instances: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionType,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    pub last_heartbeat_time: DateTime<Utc>,
    pub last_transition_time: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConditionType {
    Ready,
    MemoryPressure,
    DiskPressure,
    #[serde(rename = "PIDPressure")]
    PidPressure,
    NetworkUnavailable,
}

impl ConditionType {
    pub const ALL: [ConditionType; 5] = [
        ConditionType::Ready,
        ConditionType::MemoryPressure,
        ConditionType::DiskPressure,
        ConditionType::PidPressure,
        ConditionType::NetworkUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::MemoryPressure => "MemoryPressure",
            ConditionType::DiskPressure => "DiskPressure",
            ConditionType::PidPressure => "PIDPressure",
            ConditionType::NetworkUnavailable => "NetworkUnavailable",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: AddressType,
    pub address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressType {
    Hostname,
    #[serde(rename = "InternalIP")]
    InternalIp,
    #[serde(rename = "ExternalIP")]
    ExternalIp,
}

/// Facts about the machine that change rarely (on reboot or upgrade).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    #[serde(rename = "machineID")]
    pub machine_id: String,
    /// Empty where the firmware does not expose one or it is not readable.
    #[serde(rename = "systemUUID")]
    pub system_uuid: String,
    #[serde(rename = "bootID")]
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
    pub operating_system: String,
    /// As Kubernetes names them: amd64, arm64, arm, riscv64, …
    pub architecture: String,
    pub cpu_model: String,
    pub agent_version: String,
    /// The wasmtime version the agent is built with.
    pub runtime_version: String,
}

/// Live use of the machine, sampled by the agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeUsage {
    pub sample_time: DateTime<Utc>,
    /// Busy share of all CPUs since the previous sample, 0–100.
    pub cpu_percent: f64,
    pub memory: MemoryUsage,
    /// The filesystem holding the agent's data directory (nodefs).
    pub disk: DiskUsage,
    pub pids: PidUsage,
    pub pressure: Pressure,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryUsage {
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// The kernel's MemAvailable: what can be had without swapping.
    pub available_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskUsage {
    pub path: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub inodes_total: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PidUsage {
    /// Processes and threads alive on the machine.
    pub used: u64,
    /// `/proc/sys/kernel/pid_max`.
    pub max: u64,
}

/// Pressure stall information. Unavailable is not the same as zero: a kernel
/// without PSI says nothing about stalls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pressure {
    pub available: bool,
    /// Why it is unavailable, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<ResourcePressure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ResourcePressure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<ResourcePressure>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourcePressure {
    /// Share of time some tasks were stalled.
    pub some: PressureAverages,
    /// Share of time all non-idle tasks were stalled; the kernel omits it for cpu on older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<PressureAverages>,
}

/// Percentages over the last 10 and 60 seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PressureAverages {
    pub avg10: f64,
    pub avg60: f64,
}

/// One line of the node's instance list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSummary {
    pub name: String,
    pub workload: String,
    pub phase: Phase,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_types_use_the_kubernetes_spelling() {
        assert_eq!(serde_json::to_string(&ConditionType::PidPressure).unwrap(), "\"PIDPressure\"");
        assert_eq!(serde_json::to_string(&AddressType::InternalIp).unwrap(), "\"InternalIP\"");
        for t in ConditionType::ALL {
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
    }

    #[test]
    fn a_node_offers_the_isolation_modes_it_lists_and_an_older_one_in_process_only() {
        let older: NodeRuntime = serde_json::from_str(r#"{"allocator":"pooling","allocatorReason":"fits"}"#).unwrap();
        assert!(older.offers(Isolation::InProcess) && !older.offers(Isolation::Process));
        let both = NodeRuntime { isolation: vec!["in-process".into(), "process".into()], ..older.clone() };
        assert!(both.offers(Isolation::InProcess) && both.offers(Isolation::Process));
        let only = NodeRuntime { isolation: vec!["process".into()], ..older };
        assert!(!only.offers(Isolation::InProcess) && only.offers(Isolation::Process));
    }

    #[test]
    fn the_runtime_tolerates_fields_of_newer_agents_and_keeps_its_own() {
        let runtime: NodeRuntime = crate::decode::from_wire(
            br#"{"allocator":"pooling","allocatorReason":"fits","isolation":["in-process"],"isolationReason":"no cgroup",
                "defaultIsolation":"in-process","cgroups":"v2 at /sys/fs/cgroup","sandboxes":"gvisor"}"#,
        )
        .unwrap();
        assert_eq!(runtime.isolation_reason, "no cgroup");
        let json = serde_json::to_value(&runtime).unwrap();
        assert_eq!(json["defaultIsolation"], "in-process");
        assert_eq!(json["cgroups"], "v2 at /sys/fs/cgroup");
        assert!(json.get("sandboxes").is_none());
        let bare = serde_json::to_string(&NodeRuntime::default()).unwrap();
        assert!(!bare.contains("isolation") && !bare.contains("cgroups"), "{bare}");
    }

    #[test]
    fn node_names_are_validated() {
        let mut node = Node::new("Bad_Name");
        let err = node.validate().unwrap_err();
        assert_eq!(err.errors[0].field, "metadata.name");
        node.metadata.name = "edge-1".into();
        node.validate().unwrap();
    }
}
