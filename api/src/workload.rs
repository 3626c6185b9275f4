//! The Workload object: what to run, how many, where, and within which bounds.
//! One kind covers what Kubernetes splits into Deployment, DaemonSet and Job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::limits::*;
use crate::meta::{ObjectMeta, api_version, validate_type};
use crate::node::TaintEffect;
use crate::quantity::{Bytes, Cpu};
use crate::validate::{Errors, ValidationError, is_label_key, is_label_value, shorten};

pub const WORKLOAD_KIND: &str = "Workload";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "workload_kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: WorkloadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WorkloadStatus>,
}

fn workload_kind() -> String {
    WORKLOAD_KIND.to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub module: ModuleRef,
    #[serde(rename = "type")]
    pub kind: WorkloadType,
    /// How many instances to keep; 1 when neither this nor `placement` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Directories the guest may open. Nothing else of the host is visible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirGrant>,
    /// Hosts (`name` or `name:port`) a service may call; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub resources: Resources,
    /// How each instance runs on its node; the node's default (its agent's
    /// `--default-isolation`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_path: Option<String>,
    #[serde(default)]
    pub disconnect: Disconnect,
    /// How a changed spec reaches the instances (one replica at a time when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutSpec>,
}

impl WorkloadSpec {
    /// Whether instances of `self` and of `other` run alike: the same spec but
    /// for `rollout`, which says how to change and is no part of what runs.
    pub fn runs_like(&self, other: &WorkloadSpec) -> bool {
        let strip = |spec: &WorkloadSpec| WorkloadSpec { rollout: None, ..spec.clone() };
        strip(self) == strip(other)
    }
}

/// The module to run, always pinned by digest: a file (uploaded to the
/// master), a URL, or an OCI registry reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRef {
    /// A path (relative to the manifest, or uploaded to the master), or an `https://` URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// A registry reference (`registry.example.com/team/module:1.4`, or
    /// `…@sha256:…`); the master pins it to its manifest's digest when the
    /// workload is applied (`…:1.4@sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<String>,
    /// For `oci`: the name of registry credentials the master holds (a
    /// RegistryCredential), used to resolve the tag and handed to the nodes
    /// that pull the module; without it, the master's and the nodes' own
    /// `--registry-credentials`, else anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// `sha256:<64 hex digits>` of the module's bytes; checked before anything
    /// runs. For `oci`, the master fills it in from the registry.
    #[serde(default)]
    pub digest: String,
}

impl ModuleRef {
    /// Whether the module is on a web server (the nodes download it themselves)
    /// rather than a file uploaded to the master.
    pub fn is_url(&self) -> bool {
        self.source.starts_with("https://") || self.source.starts_with("http://")
    }

    /// Whether the nodes get the module from somewhere else than the master (a URL or a registry).
    pub fn is_remote(&self) -> bool {
        self.is_url() || self.oci.is_some()
    }

    /// Where the module comes from, as the manifest says it.
    pub fn origin(&self) -> &str {
        self.oci.as_deref().unwrap_or(&self.source)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkloadType {
    /// A wasi:http component, instantiated per request.
    Service,
    /// A wasi:cli program kept running.
    Daemon,
    /// A program run to completion.
    Job,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Placement {
    /// One instance on every eligible node.
    EveryNode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    /// Empty with `operator: Exists` tolerates every taint.
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: TolerationOperator,
    #[serde(default)]
    pub value: String,
    /// Empty tolerates every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

/// A directory opened for the guest at `path`: a fresh scratch directory of
/// the instance, or a host directory inside the agent's allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirGrant {
    /// Where the guest sees it, e.g. `/data`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default)]
    pub requests: ResourceRequests,
    #[serde(default)]
    pub limits: ResourceLimits,
}

/// What the scheduler sets aside on a node for one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequests {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
}

/// What one instance may use at most.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceLimits {
    /// Linear memories and tables together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    /// A hard CPU limit enforced by the kernel (a cgroup CPU quota); needs `isolation: process`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// CPU time one run of a job or daemon may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<Duration>,
    /// Wall time one request to a service may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    /// What the instance's scratch dirs may hold together on the node's disk
    /// (the node's `--default-ephemeral-storage` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<Bytes>,
}

/// How an instance runs on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Inside the agent's own process: dense and fast; wasmtime enforces the limits.
    InProcess,
    /// In a child process of the agent with a cgroup of its own: the kernel
    /// enforces the CPU and memory limits, and the instance outlives a restart of the agent.
    Process,
}

impl Isolation {
    pub const ALL: [Isolation; 2] = [Isolation::InProcess, Isolation::Process];

    /// The spelling of manifests, flags and node status: `in-process`, `process`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::InProcess => "in-process",
            Isolation::Process => "process",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no isolation mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an isolation mode: use `in-process` or `process`")]
pub struct UnknownIsolation(pub String);

impl FromStr for Isolation {
    type Err = UnknownIsolation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Isolation::ALL.into_iter().find(|mode| mode.as_str() == s).ok_or_else(|| UnknownIsolation(shorten(s).into_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// Where the ingress sends traffic for a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

/// What happens when the node running an instance stops reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disconnect {
    /// Silence after which the instance counts as Lost (master default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after: Option<Duration>,
    /// Whether a Lost instance is replaced on another node (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<bool>,
    /// Silence after which the agent stops the instance on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_on_agent_after: Option<Duration>,
}

/// What the master observes of a workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    #[serde(default)]
    pub desired: u32,
    #[serde(default)]
    pub running: u32,
    #[serde(default)]
    pub ready: u32,
    #[serde(default)]
    pub succeeded: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub observed_generation: u64,
    /// What keeps the master from acting on the workload, when something does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<WorkloadCondition>,
    /// The workload's revision, its rollout (when one is under way or was the last), and its history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
}

/// Something true of a workload as a whole, as the master sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCondition {
    #[serde(rename = "type")]
    pub kind: WorkloadConditionType,
    pub status: crate::node::ConditionStatus,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadConditionType {
    /// The stored workload cannot be decoded or breaks a limit: the master
    /// neither places nor removes its instances until it is fixed or deleted.
    Invalid,
}

impl Workload {
    /// The restart policy in force: as given, else Always for services and
    /// daemons and OnFailure for jobs.
    pub fn restart_policy(&self) -> RestartPolicy {
        self.spec.restart_policy.unwrap_or(match self.spec.kind {
            WorkloadType::Job => RestartPolicy::OnFailure,
            WorkloadType::Service | WorkloadType::Daemon => RestartPolicy::Always,
        })
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = Errors::default();
        validate_type(&self.api_version, &self.kind, WORKLOAD_KIND, &mut errors);
        self.metadata.validate(&mut errors);
        let spec = &self.spec;

        let module = &spec.module;
        match &module.oci {
            None if module.source.trim().is_empty() => {
                errors.push("spec.module", "must name the module: `source` (a file or an https:// URL) or `oci` (a registry reference)")
            }
            Some(_) if !module.source.is_empty() => errors.push("spec.module.oci", "give either `source` or `oci`, not both"),
            Some(reference) => {
                too_long(&mut errors, "spec.module.oci", reference, MAX_PATH_BYTES);
                if let Err(problem) = check_oci_reference(reference) {
                    errors.push("spec.module.oci", problem);
                }
            }
            None => {}
        }
        too_long(&mut errors, "spec.module.source", &module.source, MAX_PATH_BYTES);
        match (&module.credentials, &module.oci) {
            (Some(_), None) => errors.push("spec.module.credentials", "only a registry module (`oci`) names credentials"),
            (Some(name), Some(_)) if !crate::validate::is_dns_label(name) => errors.push(
                "spec.module.credentials",
                format!("`{}` is not the name of registry credentials (lowercase letters, digits, `-`)", shorten(name)),
            ),
            _ => {}
        }
        // A registry module's digest is the master's to fill in, unless the manifest pins it.
        if (module.oci.is_none() || !module.digest.is_empty())
            && let Err(problem) = check_digest(&module.digest)
        {
            errors.push("spec.module.digest", problem);
        }
        if spec.replicas.is_some() && spec.placement.is_some() {
            errors.push("spec.placement", "give either `replicas` or `placement: everyNode`, not both");
        }
        if let Some(replicas) = spec.replicas
            && replicas > MAX_REPLICAS
        {
            errors.push("spec.replicas", format!("{replicas} is more than the limit of {MAX_REPLICAS} replicas of one workload"));
        }
        too_many(&mut errors, "spec.nodeSelector", spec.node_selector.len(), MAX_LABELS, "terms");
        for (key, value) in &spec.node_selector {
            if !is_label_key(key) || !is_label_value(value) {
                errors.push(
                    format!("spec.nodeSelector.{}", shorten(key)),
                    format!("`{}={}` is not a valid label selector term", shorten(key), shorten(value)),
                );
            }
        }
        too_many(&mut errors, "spec.tolerations", spec.tolerations.len(), MAX_TOLERATIONS, "tolerations");
        for (i, t) in spec.tolerations.iter().enumerate() {
            too_long(&mut errors, &format!("spec.tolerations[{i}].key"), &t.key, MAX_TOLERATION_BYTES);
            too_long(&mut errors, &format!("spec.tolerations[{i}].value"), &t.value, MAX_TOLERATION_BYTES);
            if t.operator == TolerationOperator::Exists && !t.value.is_empty() {
                errors.push(format!("spec.tolerations[{i}].value"), "must be empty when operator is Exists");
            }
            if t.operator == TolerationOperator::Equal && t.key.is_empty() {
                errors.push(format!("spec.tolerations[{i}].key"), "is required when operator is Equal");
            }
        }
        too_many(&mut errors, "spec.args", spec.args.len(), MAX_ARGS, "arguments");
        too_many(&mut errors, "spec.env", spec.env.len(), MAX_ENV, "variables");
        for (field, bytes, limit) in [
            ("spec.args", spec.args.iter().map(String::len).sum::<usize>(), MAX_ARGS_BYTES),
            ("spec.env", spec.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>(), MAX_ENV_BYTES),
        ] {
            if bytes > limit {
                errors.push(field, format!("{bytes} bytes together are more than the limit of {limit} bytes"));
            }
        }
        for key in spec.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                errors.push(format!("spec.env.{}", shorten(key)), "environment variable names must be non-empty and contain no '=' or NUL");
            }
        }
        too_many(&mut errors, "spec.dirs", spec.dirs.len(), MAX_DIRS, "directories");
        let mut guest_paths = BTreeSet::new();
        for (i, dir) in spec.dirs.iter().enumerate() {
            too_long(&mut errors, &format!("spec.dirs[{i}].path"), &dir.path, MAX_PATH_BYTES);
            if !dir.path.starts_with('/') || dir.path.split('/').any(|c| c == "..") {
                errors
                    .push(format!("spec.dirs[{i}].path"), format!("`{}` must be an absolute guest path without `..`", shorten(&dir.path)));
            }
            if !guest_paths.insert(dir.path.as_str()) {
                errors.push(format!("spec.dirs[{i}].path"), format!("`{}` is granted twice", shorten(&dir.path)));
            }
            if let Some(host) = &dir.host_path {
                too_long(&mut errors, &format!("spec.dirs[{i}].hostPath"), host, MAX_PATH_BYTES);
                if !host.starts_with('/') || host.split('/').any(|c| c == "..") {
                    errors.push(
                        format!("spec.dirs[{i}].hostPath"),
                        format!("`{}` must be an absolute host path without `..`", shorten(host)),
                    );
                }
            }
        }
        too_many(&mut errors, "spec.allowedOutboundHosts", spec.allowed_outbound_hosts.len(), MAX_OUTBOUND_HOSTS, "hosts");
        for (i, host) in spec.allowed_outbound_hosts.iter().enumerate() {
            too_long(&mut errors, &format!("spec.allowedOutboundHosts[{i}]"), host, MAX_HOST_BYTES);
            if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
                errors.push(format!("spec.allowedOutboundHosts[{i}]"), format!("`{}` is not a host name or host:port", shorten(host)));
            }
        }
        for (field, duration) in [
            ("spec.resources.limits.cpuTime", spec.resources.limits.cpu_time),
            ("spec.resources.limits.requestTimeout", spec.resources.limits.request_timeout),
            ("spec.disconnect.lostAfter", spec.disconnect.lost_after),
            ("spec.disconnect.stopOnAgentAfter", spec.disconnect.stop_on_agent_after),
        ] {
            if let Some(duration) = duration
                && duration.get() > MAX_DURATION
            {
                errors.push(field, format!("{duration} is longer than the limit of {}", Duration::from(MAX_DURATION)));
            }
        }
        if let (Some(request), Some(limit)) = (spec.resources.requests.memory, spec.resources.limits.memory)
            && request > limit
        {
            errors.push("spec.resources.requests.memory", format!("request {request} is above the limit {limit}"));
        }
        if let Some(cpu) = spec.resources.limits.cpu {
            let field = "spec.resources.limits.cpu";
            if cpu < MIN_CPU_LIMIT {
                errors.push(
                    field,
                    format!("{cpu} is less than {MIN_CPU_LIMIT}, the smallest CPU quota the kernel enforces (1 ms per 100 ms period)"),
                );
            }
            if cpu > MAX_CPU_LIMIT {
                errors.push(field, format!("{cpu} is more than the limit of {MAX_CPU_LIMIT}"));
            }
            if spec.isolation != Some(Isolation::Process) {
                errors.push(
                    field,
                    "is enforced only in process isolation (a cgroup CPU quota): set `isolation: process`, or leave the limit out",
                );
            }
            if let Some(request) = spec.resources.requests.cpu
                && request > cpu
            {
                errors.push("spec.resources.requests.cpu", format!("request {request} is above the limit {cpu}"));
            }
        }
        if spec.resources.limits.ephemeral_storage.is_some_and(|b| b.get() == 0) {
            errors.push("spec.resources.limits.ephemeralStorage", "must be more than 0 (leave it out for the node's default)");
        }
        if let Some(rollout) = &spec.rollout {
            rollout.validate(&mut errors, spec.kind, spec.placement == Some(Placement::EveryNode));
        }
        if spec.kind == WorkloadType::Job && spec.restart_policy == Some(RestartPolicy::Always) {
            errors.push("spec.restartPolicy", "a job runs to completion: use OnFailure or Never");
        }
        if spec.kind != WorkloadType::Service {
            for (field, given) in [
                ("spec.route", spec.route.is_some()),
                ("spec.readinessPath", spec.readiness_path.is_some()),
                ("spec.livenessPath", spec.liveness_path.is_some()),
                ("spec.resources.limits.requestTimeout", spec.resources.limits.request_timeout.is_some()),
            ] {
                if given {
                    errors.push(field, "only applies to `type: service`");
                }
            }
        }
        if let Some(route) = &spec.route {
            if route.host.is_none() && route.path_prefix.is_none() {
                errors.push("spec.route", "give a `host`, a `pathPrefix` or both");
            }
            if let Some(host) = &route.host {
                too_long(&mut errors, "spec.route.host", host, MAX_HOST_BYTES);
            }
            if let Some(prefix) = &route.path_prefix {
                too_long(&mut errors, "spec.route.pathPrefix", prefix, MAX_URL_PATH_BYTES);
                if !prefix.starts_with('/') {
                    errors.push("spec.route.pathPrefix", format!("`{}` must start with '/'", shorten(prefix)));
                }
            }
        }
        for (field, path) in [("spec.readinessPath", &spec.readiness_path), ("spec.livenessPath", &spec.liveness_path)] {
            if let Some(path) = path {
                too_long(&mut errors, field, path, MAX_URL_PATH_BYTES);
                if !path.starts_with('/') {
                    errors.push(field, format!("`{}` must start with '/'", shorten(path)));
                }
            }
        }
        errors.finish()
    }
}

/// The shape of a registry reference (the master parses it fully when it resolves it).
fn check_oci_reference(reference: &str) -> Result<(), String> {
    if reference.trim().is_empty() {
        return Err("must be a registry reference such as registry.example.com/team/module:1.4".to_string());
    }
    if reference.contains("://") {
        return Err(format!("`{}`: a registry reference has no scheme (registry.example.com/team/module:1.4)", shorten(reference)));
    }
    if reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{}` has a space or a control character", shorten(reference)));
    }
    if let Some((_, digest)) = reference.split_once('@') {
        check_digest(digest).map_err(|problem| format!("the digest after `@`: {problem}"))?;
    }
    Ok(())
}

fn check_digest(digest: &str) -> Result<(), String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!("`{}` must be `sha256:` followed by 64 hex digits", shorten(digest)));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("`{}` must be `sha256:` followed by 64 lowercase hex digits", shorten(digest)));
    }
    Ok(())
}

/// A list or map longer than its limit.
fn too_many(errors: &mut Errors, field: &str, count: usize, limit: usize, what: &str) {
    if count > limit {
        errors.push(field, format!("{count} {what} are more than the limit of {limit}"));
    }
}

/// A string longer than its limit.
fn too_long(errors: &mut Errors, field: &str, text: &str, limit: usize) {
    if text.len() > limit {
        errors.push(field, format!("{} bytes are more than the limit of {limit} bytes", text.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::from_yaml;

    const DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn manifest(extra_spec: &str) -> String {
        format!(
            "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: sensor\nspec:\n  type: daemon\n  module:\n    source: sensor.wasm\n    digest: {DIGEST}\n{extra_spec}"
        )
    }

    #[test]
    fn a_full_manifest_decodes() {
        let w: Workload = from_yaml(&manifest(
            "  replicas: 2\n  args: [\"--interval\", \"1s\"]\n  env: {LEVEL: info}\n  dirs:\n  - path: /data\n  resources:\n    requests: {cpu: 100m, memory: 16Mi}\n    limits: {memory: 64Mi, cpuTime: 10s, ephemeralStorage: 1Gi}\n  restartPolicy: OnFailure\n  disconnect: {lostAfter: 15s, stopOnAgentAfter: 10s}\n",
        ))
        .unwrap();
        assert_eq!(w.spec.replicas, Some(2));
        assert_eq!(w.spec.resources.limits.memory, Some(Bytes::new(64 << 20)));
        assert_eq!(w.spec.resources.limits.ephemeral_storage, Some(Bytes::new(1 << 30)));
        assert_eq!(w.spec.disconnect.stop_on_agent_after, Some(Duration::from_secs(10)));
        assert_eq!(w.restart_policy(), RestartPolicy::OnFailure);
    }

    #[test]
    fn unknown_fields_and_bad_quantities_name_the_field() {
        let err = from_yaml::<Workload>(&manifest("  replicaz: 2\n")).unwrap_err().to_string();
        assert!(err.contains("spec") && err.contains("replicaz"), "{err}");

        let err = from_yaml::<Workload>(&manifest("  resources:\n    limits: {memory: 12Qi}\n")).unwrap_err().to_string();
        assert!(err.contains("spec.resources.limits.memory"), "{err}");
        assert!(err.contains("unknown suffix `Qi`"), "{err}");
    }

    #[test]
    fn a_registry_module_needs_no_digest_and_no_source() {
        let oci = |module: &str| {
            from_yaml::<Workload>(&format!(
                "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: sensor\nspec:\n  type: daemon\n  module:\n{module}"
            ))
            .map_err(|e| e.to_string())
            .and_then(|w| w.validate().map(|()| w).map_err(|e| e.to_string()))
        };
        let w = oci("    oci: registry.example.com/team/sensor:1.4\n").unwrap();
        assert_eq!(w.spec.module.origin(), "registry.example.com/team/sensor:1.4");
        assert!(w.spec.module.is_remote() && !w.spec.module.is_url());
        assert!(!serde_json::to_string(&w).unwrap().contains("\"source\""), "no empty source on the wire");
        oci(&format!("    oci: registry.example.com/team/sensor@{DIGEST}\n    digest: {DIGEST}\n")).unwrap();
        for (module, wanted) in [
            ("    oci: r.example.com/a:1\n    source: a.wasm\n", "spec.module.oci: give either `source` or `oci`, not both"),
            ("    digest: sha256:00\n", "spec.module: must name the module"),
            ("    oci: https://r.example.com/a:1\n", "has no scheme"),
            ("    oci: \"r.example.com/a b:1\"\n", "has a space"),
            ("    oci: r.example.com/a@sha256:beef\n", "the digest after `@`"),
            ("    oci: r.example.com/a:1\n    digest: md5:00\n", "spec.module.digest"),
            ("    oci: r.example.com/a:1\n    sauce: x\n", "sauce"),
            (
                "    source: a.wasm\n    digest: sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n    credentials: team\n",
                "only a registry module",
            ),
            ("    oci: r.example.com/a:1\n    credentials: Team_1\n", "spec.module.credentials"),
        ] {
            let error = oci(module).unwrap_err();
            assert!(error.contains(wanted), "{module}: {error}");
        }
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut w: Workload = from_yaml(&manifest("  replicas: 1\n  placement: everyNode\n  route: {pathPrefix: /x}\n")).unwrap();
        w.spec.module.digest = "sha256:abc".into();
        let err = w.validate().unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.module.digest", "spec.placement", "spec.route"]);
    }

    #[test]
    fn what_one_workload_may_ask_for_is_bounded_and_the_error_names_field_and_limit() {
        let w: Workload = from_yaml(&manifest("  replicas: 4294967295\n")).unwrap();
        let err = w.validate().unwrap_err().to_string();
        assert!(err.contains("spec.replicas: 4294967295") && err.contains(&MAX_REPLICAS.to_string()), "{err}");

        let mut w: Workload = from_yaml(&manifest("  replicas: 1\n")).unwrap();
        w.spec.args = vec!["x".into(); MAX_ARGS + 1];
        w.spec.env = (0..MAX_ENV + 1).map(|i| (format!("K{i}"), String::new())).collect();
        w.spec.dirs = (0..MAX_DIRS + 1).map(|i| DirGrant { path: format!("/d{i}"), host_path: None, read_only: false }).collect();
        w.spec.allowed_outbound_hosts = vec!["a.example".into(); MAX_OUTBOUND_HOSTS + 1];
        w.spec.tolerations =
            vec![Toleration { key: "k".repeat(400), operator: TolerationOperator::Equal, value: String::new(), effect: None }];
        w.spec.node_selector = (0..MAX_LABELS + 1).map(|i| (format!("k{i}"), "v".into())).collect();
        w.metadata.labels = (0..MAX_LABELS + 1).map(|i| (format!("k{i}"), "v".into())).collect();
        w.metadata.annotations = [("note".to_string(), "x".repeat(MAX_ANNOTATIONS_BYTES))].into();
        w.spec.disconnect.lost_after = Some("10000h".parse().unwrap());
        w.spec.module.source = "m".repeat(MAX_PATH_BYTES + 1);
        let err = w.validate().unwrap_err();
        let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
        for field in [
            "metadata.labels",
            "metadata.annotations",
            "spec.module.source",
            "spec.nodeSelector",
            "spec.tolerations[0].key",
            "spec.args",
            "spec.env",
            "spec.dirs",
            "spec.allowedOutboundHosts",
            "spec.disconnect.lostAfter",
        ] {
            assert!(fields.contains(&field), "{field} in {fields:?}");
        }
        assert!(err.to_string().contains("limit of"), "{err}");
        assert!(err.to_string().len() < 8 << 10, "the error stays short: {} bytes", err.to_string().len());
    }

    #[test]
    fn ephemeral_storage_is_a_positive_quantity() {
        let err = from_yaml::<Workload>(&manifest("  resources:\n    limits: {ephemeralStorage: lots}\n")).unwrap_err().to_string();
        assert!(err.contains("spec.resources.limits.ephemeralStorage"), "{err}");
        let w: Workload = from_yaml(&manifest("  resources:\n    limits: {ephemeralStorage: 0}\n")).unwrap();
        let err = w.validate().unwrap_err().to_string();
        assert!(err.contains("spec.resources.limits.ephemeralStorage") && err.contains("more than 0"), "{err}");
    }

    #[test]
    fn isolation_is_spelled_as_in_manifests_and_flags() {
        for mode in Isolation::ALL {
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{mode}\""));
            assert_eq!(mode.as_str().parse::<Isolation>(), Ok(mode));
        }
        assert_eq!("in-process".parse::<Isolation>(), Ok(Isolation::InProcess));
        let err = "InProcess".parse::<Isolation>().unwrap_err().to_string();
        assert!(err.contains("`InProcess`") && err.contains("`in-process` or `process`"), "{err}");
        let err = from_yaml::<Workload>(&manifest("  isolation: container\n")).unwrap_err().to_string();
        assert!(err.contains("spec.isolation") && err.contains("container"), "{err}");
        let w: Workload = from_yaml(&manifest("  isolation: process\n")).unwrap();
        assert_eq!(w.spec.isolation, Some(Isolation::Process));
        w.validate().unwrap();
    }

    #[test]
    fn a_workload_without_isolation_serializes_as_before() {
        // Agents key an instance's generation on the spec's JSON: a spec that
        // sets neither field must not change it, or every instance would restart.
        let w: Workload = from_yaml(&manifest("  resources:\n    limits: {memory: 16Mi}\n")).unwrap();
        let json = serde_json::to_string(&w.spec).unwrap();
        assert!(!json.contains("isolation") && !json.contains("\"cpu\""), "{json}");
    }

    #[test]
    fn a_cpu_limit_is_a_kernel_quota_and_needs_process_isolation() {
        let w: Workload = from_yaml(&manifest("  isolation: process\n  resources:\n    limits: {cpu: 250m}\n")).unwrap();
        assert_eq!(w.spec.resources.limits.cpu, Some(Cpu::from_millis(250)));
        w.validate().unwrap();

        let err = from_yaml::<Workload>(&manifest("  resources:\n    limits: {cpu: 1.0001}\n")).unwrap_err().to_string();
        assert!(err.contains("spec.resources.limits.cpu") && err.contains("precision"), "{err}");

        for (isolation, cpu, problems) in [
            ("", "250m", vec!["enforced only in process isolation", "set `isolation: process`"]),
            ("  isolation: in-process\n", "1", vec!["enforced only in process isolation"]),
            ("  isolation: process\n", "9m", vec!["9m is less than 10m", "the kernel"]),
            ("  isolation: process\n", "0", vec!["0 is less than 10m"]),
            ("  isolation: process\n", "1025", vec!["1025 is more than the limit of 1024"]),
        ] {
            let w: Workload = from_yaml(&manifest(&format!("{isolation}  resources:\n    limits: {{cpu: \"{cpu}\"}}\n"))).unwrap();
            let err = w.validate().unwrap_err();
            assert!(err.errors.iter().all(|e| e.field == "spec.resources.limits.cpu"), "{err}");
            for problem in problems {
                assert!(err.to_string().contains(problem), "{cpu} with `{isolation}`: {err}");
            }
        }

        let w: Workload =
            from_yaml(&manifest("  isolation: process\n  resources:\n    requests: {cpu: 500m}\n    limits: {cpu: 200m}\n")).unwrap();
        let err = w.validate().unwrap_err().to_string();
        assert!(err.contains("spec.resources.requests.cpu: request 500m is above the limit 200m"), "{err}");
    }

    #[test]
    fn defaults_of_restart_policy_follow_the_type() {
        let mut w: Workload = from_yaml(&manifest("")).unwrap();
        assert_eq!(w.restart_policy(), RestartPolicy::Always);
        w.spec.kind = WorkloadType::Job;
        assert_eq!(w.restart_policy(), RestartPolicy::OnFailure);
    }
}
