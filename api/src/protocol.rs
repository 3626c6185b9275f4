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
//!
//! The master reaches an agent's own API only to serve operators live data
//! (`GET /instances/{name}/logs`, `GET /nodes/{name}/live`), at the address
//! the registration came from and the `apiPort` it named, over TLS with the
//! node certificate it issued (checked against the node CA, for the node's
//! name), presenting the `masterToken`.
//!
//! Versions: an agent says which protocol it speaks ([`PROTOCOL_VERSION`]);
//! the master sends the fields of a newer version only to agents that speak
//! it, since agents of version 1 refuse fields they do not know. The messages
//! new in version 2, and those it extends, tolerate unknown fields.
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
use crate::workload::Workload;

/// The protocol this build speaks. Version 2 adds the node CA, the renewal
/// of credentials and node certificates (`POST /nodes/{name}/credential`)
/// and the peer side of ingresses (mutual TLS between nodes, `peerUrl`).
/// An agent that sends no version speaks version 1.
pub const PROTOCOL_VERSION: u32 = 2;

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
    /// The protocol version the agent speaks; absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRenewal {
    /// The assignment revision the agent runs now.
    pub assignment_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseResponse {
    /// The node's current assignment revision: fetch the assignment when it differs.
    pub assignment_revision: u64,
}

/// The authoritative list of what a node must run. The agent runs exactly
/// these instances, each under its epoch, and stops anything else it finds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Assignment {
    pub revision: u64,
    pub instances: Vec<AssignedInstance>,
}

/// One instance to run, with the workload it belongs to (as of the instance's epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignedInstance {
    pub instance: Instance,
    pub workload: Workload,
}

/// Phase changes of a node's instances, sent together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceStatusBatch {
    pub updates: Vec<InstanceStatusUpdate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceStatusUpdate {
    pub name: String,
    /// The epoch the agent runs the instance under; an update from an older epoch is ignored.
    pub epoch: u64,
    pub status: InstanceStatus,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiError {
    /// One CamelCase word: `NotFound`, `Conflict`, `Invalid`, `TooLarge`, `Unauthorized`, …
    pub reason: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// A list answer: the items and the collection's revision, to watch from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct List<T> {
    pub revision: u64,
    pub items: Vec<T>,
}

/// Convenience for [`Node`]-returning endpoints.
pub type NodeList = List<Node>;
