//! The master ↔ agent protocol under `/api/v1`. Every connection is opened by
//! the agent, so nodes behind NAT work.
//!
//! | request | body → answer |
//! | --- | --- |
//! | `POST /nodes/register` | [`RegisterRequest`] → [`RegisterResponse`] |
//! | `PUT /nodes/{name}/lease` | [`LeaseRenewal`] → [`LeaseResponse`] (every heartbeat interval) |
//! | `PUT /nodes/{name}/status` | [`NodeStatus`](crate::NodeStatus) → [`Node`] (on change, and at least every status report interval) |
//! | `GET /nodes/{name}/assignment?watch=true&since=REV&timeoutSeconds=N` | → [`Assignment`] (long poll; `304` when nothing changed) |
//! | `PUT /nodes/{name}/instances/status` | [`InstanceStatusBatch`] → `204` |
//! | `POST /nodes/{name}/credential` | [`CredentialRenewal`] → [`RenewedCredential`] (before the credential or certificate expires) |
//! | `GET /modules/{digest}` | → the module's bytes |
//! | `GET /endpoints?watch=true&since=REV` | → [`List`] of [`ServiceEndpoints`] (long poll) |
//! | `GET /nodes/{name}/registry-credentials/{c}` | → [`HeldCredentials`] (for each pull of a module that names them) |
//! | `GET /nodes/{name}/channel` | `Upgrade: wasmlet-channel` → `101`, then the master's HTTP/2 requests to the agent's API over the connection (version 4) |
//!
//! The master reaches an agent's own API only to serve operators live data
//! (`GET /instances/{name}/logs`, `GET /nodes/{name}/live`), presenting the
//! `masterToken`: through the channel the agent opened to it, so a node
//! behind NAT is reached; without one (agents of version 3 or older, or
//! while the channel is down), at the address the registration came from and
//! the `apiPort` it named, over TLS with the node certificate it issued
//! (checked against the node CA, for the node's name).
//!
//! Versions. Every message is decoded tolerantly on both sides
//! ([`crate::decode::from_wire`]): a field the reader does not know, a newer
//! peer's, is dropped, so a new field never breaks an older peer of version
//! 4 or newer. Each build speaks a range of versions, from
//! [`MIN_PROTOCOL_VERSION`] to [`PROTOCOL_VERSION`]. An agent names its range
//! at registration ([`RegisterRequest::protocol_version`],
//! [`RegisterRequest::min_protocol_version`]); the master serves it when the
//! ranges overlap, each side then speaking the older of the two newest
//! versions, and otherwise refuses it (`400 UnsupportedProtocolVersion`,
//! naming both ranges: [`negotiate`]). The master names its version in
//! [`RegisterResponse::protocol_version`] and, to agents of version 3 or
//! newer, in every [`LeaseResponse::protocol_version`]; an agent refuses a master older than
//! its own minimum ([`master_unsupported`]) and keeps trying, so an upgraded
//! master is picked up.
//!
//! Agents and masters of version 3 or older refuse most fields they do not
//! know, so each side sends a peer of those versions only what it reads:
//! the master sends the fields of a newer version only to agents that speak
//! it ([`assigned_for_agent`]), and an agent sends a master of version 2 or
//! older only what that version reads ([`node_status_for_master`],
//! [`instance_status_for_master`]). Golden copies of every message of
//! version 4 are in `api/tests/golden/`; later builds must still read them.
//!
//! Every request carries `Authorization: Bearer <token>`: the first
//! registration a join token's `<id>.<secret>`, everything after it the node
//! credential that registration returned.
//!
//! Errors everywhere are [`ApiError`] with the HTTP status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::instance::{Instance, InstanceStatus};
use crate::node::{Node, NodeStatus, Taint};
use crate::workload::{Isolation, Workload};

/// The newest protocol this build speaks. An agent that sends no version speaks version 1.
///
/// - Version 2 adds the node CA, the renewal of credentials and node
///   certificates (`POST /nodes/{name}/credential`) and the peer side of
///   ingresses (mutual TLS between nodes, `peerUrl`).
/// - Version 3 adds isolation modes: a workload's `isolation` and
///   `resources.limits.cpu`; the modes a node offers in its
///   `status.runtime` (`isolation`, `isolationReason`, `defaultIsolation`,
///   `cgroups`); an instance's cgroup figures in `status.usage`
///   (`isolation`, `cpuLimitMillis`, `memoryLimitBytes`, `cpuPeriods`,
///   `cpuThrottledPeriods`, `cpuThrottledSeconds`, `oomKills`,
///   `cpuPressure`, `memoryPressure`); and the master's own version in
///   [`RegisterResponse`] and [`LeaseResponse`].
/// - Version 4 adds the channel the agent opens (`GET /nodes/{name}/channel`) and tolerant decoding of every message.
/// - Version 5 adds gray releases: a service's [`CanarySplit`] in
///   [`ServiceEndpoints`], which every ingress follows, and an instance's
///   request figures in `status.usage.requests` (what the ingress counted of
///   its answers), which the master reads for the health gates of a rollout.
pub const PROTOCOL_VERSION: u32 = 5;

/// The first version whose ingresses split a service's traffic between two revisions.
pub const CANARY_VERSION: u32 = 5;

/// The first version whose agents open a channel and whose masters accept one.
pub const CHANNEL_VERSION: u32 = 4;

/// The `Upgrade` token of the agent's channel.
pub const CHANNEL_UPGRADE: &str = "wasmlet-channel";

/// The oldest protocol this build serves: a master, the agents it registers;
/// an agent, the masters it registers with. Raised only when a release
/// drops an older version; the README's "Upgrading a fleet" says what that means.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// `protocol 7` or `protocol 7 to 9`.
fn versions(min: u32, max: u32) -> String {
    if min == max { format!("protocol {max}") } else { format!("protocol {min} to {max}") }
}

/// The version a master of this build speaks with an agent that speaks
/// `min..=max` (`min` absent: 1), or why it cannot serve it, naming both ranges.
pub fn negotiate(min: Option<u32>, max: u32) -> Result<u32, String> {
    let min = min.unwrap_or(1).min(max);
    let master = versions(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
    if max == 0 {
        return Err(format!("this agent speaks protocol 0, which no wasmlet speaks; this master speaks {master}"));
    }
    if min > PROTOCOL_VERSION {
        return Err(format!("this agent speaks {}; this master speaks {master}: upgrade the masters first", versions(min, max)));
    }
    if max < MIN_PROTOCOL_VERSION {
        return Err(format!("this agent speaks {}; this master speaks {master}: upgrade the agent", versions(min, max)));
    }
    Ok(max.min(PROTOCOL_VERSION))
}

/// Why an agent of this build cannot work with a master that speaks
/// `master` (the newest version it named), naming both; None when it can.
pub fn master_unsupported(master: u32) -> Option<String> {
    (master < MIN_PROTOCOL_VERSION).then(|| {
        format!(
            "this master speaks protocol {master}; this agent speaks {}: upgrade the masters first",
            versions(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
        )
    })
}

/// The first version with isolation modes: older agents refuse a workload
/// that names one, older masters a status that reports one.
pub const ISOLATION_VERSION: u32 = 3;

/// The JSON keys new in protocol version 3: a message for a peer of an older
/// version carries none of them (what the downgrades below guarantee).
pub const VERSION_3_KEYS: [&str; 12] = [
    "isolation",
    "isolationReason",
    "defaultIsolation",
    "cgroups",
    "cpuLimitMillis",
    "memoryLimitBytes",
    "cpuPeriods",
    "cpuThrottledPeriods",
    "cpuThrottledSeconds",
    "oomKills",
    "cpuPressure",
    "memoryPressure",
];

/// The keys of [`VERSION_3_KEYS`] found anywhere in `message`, each once, sorted.
pub fn version_3_keys(message: &serde_json::Value) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut stack = vec![message];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                found.extend(map.keys().filter(|k| VERSION_3_KEYS.contains(&k.as_str())).cloned());
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    found.into_iter().collect()
}

/// A node joining (or re-joining after a restart) the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    pub status: NodeStatus,
    /// The newest protocol version the agent speaks; absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    /// The oldest protocol version the agent speaks; absent: 1. Version 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<u32>,
    /// A PEM certificate signing request for the node's key: the master signs
    /// the key with the node CA for the node's name and the address it
    /// registers from, and nothing else the request asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_csr: Option<String>,
    /// The port of the agent's API; the master reaches it at the address the
    /// registration came from (for logs and live usage), unless `apiUrl` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_port: Option<u16>,
    /// Where the master reaches the agent's API, when the source address is
    /// not it. It names no certificate: the master checks the agent's
    /// certificate for the node's name, whatever host this URL has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The port of the agent's ingress; peers forward service requests to it
    /// at the address the registration came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_port: Option<u16>,
}

/// Where a service can be reached: the ingress of every node with a Ready
/// instance of it (`GET /endpoints`, watchable like every list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEndpoints {
    pub workload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<crate::workload::Route>,
    pub endpoints: Vec<IngressEndpoint>,
    /// During a gray release: the new revision's share of the requests and
    /// where it runs; `endpoints` then lists the nodes of the previous revision.
    /// Absent for agents older than [`CANARY_VERSION`] (they would refuse it, or not follow it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySplit>,
}

/// How an ingress splits a service's requests between its previous revision
/// and the new one: `weight` percent to the new one, all of them when the
/// request carries the header; a request another ingress forwarded goes to the
/// revision that ingress chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanarySplit {
    /// Percent of the requests for the new revision, 0–100.
    pub weight: u32,
    /// A request with this header (lowercase name) and value goes to the new revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<CanaryHeader>,
    /// The nodes with a Ready instance of the new revision.
    pub endpoints: Vec<IngressEndpoint>,
    /// The new revision's instances: a node's own instances named here serve its share.
    pub instances: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressEndpoint {
    pub node: String,
    /// Base URL of the node's ingress for the public, e.g. `http://10.0.0.7:7080`.
    pub url: String,
    /// Where peers reach the node's ingress: mutual TLS with node
    /// certificates, on the same port (e.g. `https://10.0.0.7:7080`). Absent
    /// for a node that does not serve it (an agent of protocol version 1,
    /// or `--insecure-http`), and for callers of version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
}

/// What a node needs to take part: its object and the cluster's timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub node: Node,
    /// A new node credential, when the node registered with a join token:
    /// the bearer token from then on (the master keeps only its hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The cluster CA (PEM), when the master serves TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    /// The node certificate's chain (PEM), signed from `servingCsr` by the node CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_certificate: Option<String>,
    /// The bearer token the master presents when it calls the agent's API.
    pub master_token: String,
    pub heartbeat_interval: Duration,
    pub status_report_interval: Duration,
    /// The master's default for `disconnect.lostAfter`.
    pub lost_after: Duration,
    /// The node CA (PEM): the certificates of the master's callers and of
    /// peer nodes chain to it. Version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_ca_certificate: Option<String>,
    /// When to renew the credential and the certificate
    /// (`POST /nodes/{name}/credential`), counted from this answer. Version 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_after: Option<Duration>,
    /// The protocol the master speaks; absent: version 2 or older. Version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
}

/// A node renewing its credential and its certificate, with its current credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRenewal {
    /// A PEM signing request for the node's key, as at registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_csr: Option<String>,
}

/// A renewed credential. The one the renewal was made with stays valid
/// until the node uses the new one (its next heartbeat), or at most its own
/// expiry, so an answer lost on the way locks no node out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewedCredential {
    /// The new node credential: the bearer token from now on.
    pub credential: String,
    /// The new node certificate's chain (PEM), signed from `servingCsr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_certificate: Option<String>,
    /// The node CA (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_ca_certificate: Option<String>,
    /// When to renew again, counted from this answer.
    pub renew_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRenewal {
    /// The assignment revision the agent runs now.
    pub assignment_revision: u64,
}

/// Extended in version 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseResponse {
    /// The node's current assignment revision: fetch the assignment when it differs.
    pub assignment_revision: u64,
    /// The protocol the master speaks, to agents of version 3 or newer (older
    /// ones refuse the field), so an agent learns of a master upgraded under it.
    /// Version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
}

/// The authoritative list of what a node must run. The agent runs exactly
/// these instances, each under its epoch, and stops anything else it finds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub revision: u64,
    pub instances: Vec<AssignedInstance>,
}

/// One instance to run, with the workload it belongs to (as of the instance's epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedInstance {
    pub instance: Instance,
    pub workload: Workload,
}

/// Phase changes of a node's instances, sent together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatusBatch {
    pub updates: Vec<InstanceStatusUpdate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatusUpdate {
    pub name: String,
    /// The epoch the agent runs the instance under; an update from an older epoch is ignored.
    pub epoch: u64,
    pub status: InstanceStatus,
}

/// Registry credentials the master holds, as it hands them to a node for
/// one pull of a module on that registry (`GET /nodes/{name}/registry-credentials/{c}`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldCredentials {
    /// The registry they are for (`host[:port]`); presented to no other.
    pub registry: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for HeldCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldCredentials").field("registry", &self.registry).field("username", &self.username).finish_non_exhaustive()
    }
}

/// The reason of the refusal of a peer whose protocol versions this build does not speak.
pub const UNSUPPORTED_PROTOCOL_VERSION: &str = "UnsupportedProtocolVersion";

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    /// One CamelCase word: `NotFound`, `Conflict`, `Invalid`, `TooLarge`, `Unauthorized`, …
    pub reason: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// A list answer: the items and the collection's revision, to watch from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    pub revision: u64,
    pub items: Vec<T>,
}

/// One master of the cluster, as `GET /api/v1/masters` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MasterStatus {
    /// Its URL, as it advertises it.
    pub name: String,
    /// `Leader` (runs the controllers) or `Follower` (serves the API).
    pub role: MasterRole,
    /// Whether this is the master that answered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answering: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterRole {
    Leader,
    Follower,
}

/// Convenience for [`Node`]-returning endpoints.
pub type NodeList = List<Node>;

/// The node status an agent sends a master of protocol `master`: without the
/// fields of newer versions, which a master of version 2 or older refuses
/// (and with them the whole report).
pub fn node_status_for_master(mut status: NodeStatus, master: u32) -> NodeStatus {
    if master < ISOLATION_VERSION
        && let Some(runtime) = &mut status.runtime
    {
        runtime.isolation = Vec::new();
        runtime.isolation_reason = String::new();
        runtime.default_isolation = String::new();
        runtime.cgroups = String::new();
    }
    status
}

/// An instance's status as an agent sends it to a master of protocol `master`:
/// without the cgroup figures when the master is older than isolation modes.
pub fn instance_status_for_master(mut status: InstanceStatus, master: u32) -> InstanceStatus {
    // Request figures change with every request: the master reads them live, when a rollout needs them.
    if let Some(usage) = &mut status.usage {
        usage.requests = None;
    }
    if master < ISOLATION_VERSION
        && let Some(usage) = &mut status.usage
    {
        *usage = crate::InstanceUsage { memory_bytes: usage.memory_bytes, cpu_seconds: usage.cpu_seconds, ..Default::default() };
    }
    status
}

/// An assigned instance as the master sends it to an agent of protocol
/// `agent`, or None when that agent cannot run it as asked. An agent older
/// than isolation modes refuses an assignment naming one (all of it, not the
/// one instance): `isolation: in-process`, how it runs anyway, is left out,
/// and an instance that needs `process` is withheld (the scheduler places
/// none there; this holds also for instances placed before the agent was
/// downgraded, or by a node that claims more than its version can do).
pub fn assigned_for_agent(mut assigned: AssignedInstance, agent: u32) -> Option<AssignedInstance> {
    // How the workload changes is the master's business alone (and agents of version 3 would refuse the field).
    assigned.workload.spec.rollout = None;
    if agent < ISOLATION_VERSION {
        let spec = &mut assigned.workload.spec;
        if spec.isolation == Some(Isolation::Process) {
            return None;
        }
        spec.isolation = None;
        // Valid only with `isolation: process`; cleared all the same, as the agent would refuse it.
        spec.resources.limits.cpu = None;
    }
    Some(assigned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{InstanceSpec, InstanceUsage, PressureFigures};
    use crate::node::NodeRuntime;

    fn version_3_keys(message: &impl Serialize) -> Vec<String> {
        super::version_3_keys(&serde_json::to_value(message).unwrap())
    }

    fn figures() -> PressureFigures {
        PressureFigures { some_avg10: 1.5, full_avg10: 0.5, some_seconds: 12.0, full_seconds: 3.0 }
    }

    #[test]
    fn an_older_master_gets_no_field_of_version_3_and_a_newer_one_all() {
        let mut status = NodeStatus {
            runtime: Some(NodeRuntime {
                allocator: "pooling".into(),
                allocator_reason: "fits".into(),
                compiler: "process".into(),
                compiler_reason: String::new(),
                isolation: vec!["in-process".into(), "process".into()],
                isolation_reason: "why not".into(),
                default_isolation: "in-process".into(),
                cgroups: "v2 at /sys/fs/cgroup".into(),
            }),
            ..Default::default()
        };
        status.runtime.as_mut().unwrap().compiler_reason = "kept".into();
        assert_eq!(version_3_keys(&status).len(), 4);
        let older = node_status_for_master(status.clone(), 2);
        assert_eq!(version_3_keys(&older), Vec::<String>::new());
        let runtime = older.runtime.unwrap();
        assert_eq!((runtime.allocator.as_str(), runtime.compiler_reason.as_str()), ("pooling", "kept"), "version 2 fields stay");
        assert_eq!(node_status_for_master(status.clone(), PROTOCOL_VERSION), status);

        let usage = InstanceUsage {
            memory_bytes: 3 << 20,
            cpu_seconds: 1.25,
            isolation: Some("process".into()),
            cpu_limit_millis: Some(200),
            memory_limit_bytes: Some(40 << 20),
            cpu_periods: Some(100),
            cpu_throttled_periods: Some(40),
            cpu_throttled_seconds: Some(2.5),
            oom_kills: Some(1),
            cpu_pressure: Some(figures()),
            memory_pressure: Some(figures()),
            requests: None,
        };
        let status = InstanceStatus { usage: Some(usage), reason: Some("OOMKilled".into()), ..Default::default() };
        assert_eq!(version_3_keys(&status).len(), 9);
        let older = instance_status_for_master(status.clone(), 2);
        assert_eq!(version_3_keys(&older), Vec::<String>::new());
        assert_eq!(older.usage.as_ref().map(|u| (u.memory_bytes, u.cpu_seconds)), Some((3 << 20, 1.25)));
        assert_eq!(older.reason.as_deref(), Some("OOMKilled"), "reasons are words, in every version");
        assert_eq!(instance_status_for_master(status.clone(), 3), status);
        // Request figures are read live; no report carries them, to a master of any version.
        let mut serving = status.clone();
        if let Some(usage) = &mut serving.usage {
            usage.requests = Some(crate::RequestFigures { requests: 5, server_errors: 1, latency_buckets: vec![5] });
        }
        assert_eq!(instance_status_for_master(serving, PROTOCOL_VERSION), status);
    }

    #[test]
    fn a_master_serves_an_agent_whose_versions_overlap_its_own_and_names_both_otherwise() {
        assert_eq!(negotiate(None, 1), Ok(1), "an agent that names no version speaks 1");
        assert_eq!(negotiate(None, 3), Ok(3));
        assert_eq!(negotiate(Some(1), PROTOCOL_VERSION + 5), Ok(PROTOCOL_VERSION), "a newer agent speaks down to this master");
        assert_eq!(negotiate(Some(PROTOCOL_VERSION), PROTOCOL_VERSION + 5), Ok(PROTOCOL_VERSION));
        let too_new = negotiate(Some(PROTOCOL_VERSION + 3), PROTOCOL_VERSION + 5).unwrap_err();
        let master = format!("this master speaks protocol {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}");
        assert_eq!(
            too_new,
            format!("this agent speaks protocol {} to {}; {master}: upgrade the masters first", PROTOCOL_VERSION + 3, PROTOCOL_VERSION + 5)
        );
        let zero = negotiate(None, 0).unwrap_err();
        assert_eq!(zero, format!("this agent speaks protocol 0, which no wasmlet speaks; {master}"));
        assert_eq!(negotiate(Some(0), 2), Ok(2), "a minimum of 0 is a range that reaches 1");
        assert_eq!(
            master_unsupported(0),
            Some(format!(
                "this master speaks protocol 0; this agent speaks protocol {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}: upgrade the masters first"
            ))
        );
        assert_eq!(master_unsupported(MIN_PROTOCOL_VERSION), None);
    }

    #[test]
    fn an_older_agent_gets_no_isolation_and_no_instance_that_needs_process() {
        let text = |isolation: &str| {
            format!(
                "metadata: {{name: w}}\nspec:\n  type: daemon\n  module: {{source: m.wasm, digest: \"sha256:{}\"}}\n{isolation}",
                "0".repeat(64)
            )
        };
        let assigned = |isolation: &str| AssignedInstance {
            instance: Instance::new("w-1", InstanceSpec { workload: "w".into(), node: "n".into(), epoch: 1 }),
            workload: crate::from_yaml(&text(isolation)).unwrap(),
        };
        let in_process = assigned("  isolation: in-process\n");
        let sent = assigned_for_agent(in_process.clone(), 2).unwrap();
        assert_eq!(version_3_keys(&sent), Vec::<String>::new());
        assert_eq!(sent, assigned(""), "the same workload as one that names no mode");
        assert_eq!(assigned_for_agent(in_process.clone(), 3), Some(in_process));

        let process = assigned("  isolation: process\n  resources:\n    limits: {cpu: 200m}\n");
        assert_eq!(assigned_for_agent(process.clone(), 2), None);
        assert_eq!(assigned_for_agent(process.clone(), 1), None);
        assert_eq!(assigned_for_agent(process.clone(), 3), Some(process));

        let plain = assigned("");
        assert_eq!(assigned_for_agent(plain.clone(), 1), Some(plain));
    }
}
