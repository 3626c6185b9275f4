//! What `get` prints for each kind: the columns, and how a cell is derived
//! from the object. Pure functions of the objects and `now`.

use chrono::{DateTime, Utc};
use wasmlet_api::{AddressType, Bytes, ConditionStatus, ConditionType, Cpu, Event, EventType, Instance, Node, Phase, Workload};

use crate::age;
use crate::style::Tone;
use crate::table::Table;

/// Labels with this prefix give a node its roles, as `node-role.kubernetes.io/` does.
pub const ROLE_LABEL_PREFIX: &str = "node-role.wasmlet.io/";

/// `Ready`, `NotReady` or `Unknown`, with `,SchedulingDisabled` when cordoned.
pub fn node_status(node: &Node) -> (String, Tone) {
    let (ready, tone) = match node.condition(ConditionType::Ready).map(|c| c.status) {
        Some(ConditionStatus::True) => ("Ready", Tone::Good),
        Some(ConditionStatus::False) => ("NotReady", Tone::Bad),
        Some(ConditionStatus::Unknown) | None => ("Unknown", Tone::Bad),
    };
    if node.spec.unschedulable {
        (format!("{ready},SchedulingDisabled"), if tone == Tone::Good { Tone::Warn } else { tone })
    } else {
        (ready.to_string(), tone)
    }
}

/// The node's roles from `node-role.wasmlet.io/<role>` labels, else `<none>`.
pub fn node_roles(node: &Node) -> String {
    let roles: Vec<&str> =
        node.metadata.labels.keys().filter_map(|k| k.strip_prefix(ROLE_LABEL_PREFIX)).filter(|r| !r.is_empty()).collect();
    if roles.is_empty() { "<none>".into() } else { roles.join(",") }
}

pub fn internal_ip(node: &Node) -> String {
    node.status.addresses.iter().find(|a| a.kind == AddressType::InternalIp).map(|a| a.address.clone()).unwrap_or_else(|| "<none>".into())
}

fn or_unknown(text: &str) -> String {
    if text.is_empty() { "<unknown>".into() } else { text.to_string() }
}

/// Whole percent, floored as kubectl does; `<unknown>` without a total.
pub fn percent(part: f64, whole: f64) -> String {
    if whole <= 0.0 { "<unknown>".into() } else { format!("{}%", (part / whole * 100.0).floor() as i64) }
}

pub fn memory_percent(node: &Node) -> String {
    node.status
        .usage
        .as_ref()
        .map(|u| percent(u.memory.used_bytes as f64, u.memory.total_bytes as f64))
        .unwrap_or_else(|| "<unknown>".into())
}

pub fn cpu_percent(node: &Node) -> String {
    node.status.usage.as_ref().map(|u| format!("{}%", u.cpu_percent.round() as i64)).unwrap_or_else(|| "<unknown>".into())
}

pub fn nodes(nodes: &[Node], wide: bool, now: DateTime<Utc>) -> Table {
    let mut headers = vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"];
    if wide {
        headers.extend(["INTERNAL-IP", "OS-IMAGE", "KERNEL", "RUNTIME", "CPU%", "MEM%"]);
    }
    let mut table = Table::new(headers);
    for node in nodes {
        let plain = |s: String| (s, Tone::Plain);
        let mut row = vec![
            plain(node.metadata.name.clone()),
            node_status(node),
            plain(node_roles(node)),
            plain(age::since(now, node.metadata.creation_timestamp)),
            plain(or_unknown(&node.status.node_info.agent_version)),
        ];
        if wide {
            let info = &node.status.node_info;
            let runtime = if info.runtime_version.is_empty() { "<unknown>".into() } else { format!("wasmtime/{}", info.runtime_version) };
            row.extend([
                plain(internal_ip(node)),
                plain(or_unknown(&info.os_image)),
                plain(or_unknown(&info.kernel_version)),
                plain(runtime),
                plain(cpu_percent(node)),
                plain(memory_percent(node)),
            ]);
        }
        table.push_toned(row);
    }
    table
}

/// The masters with their roles; `*` marks the one that answered.
pub fn masters(masters: &[wasmlet_api::protocol::MasterStatus]) -> Table {
    let mut table = Table::new(vec!["NAME", "ROLE"]);
    for master in masters {
        let name = if master.answering { format!("{} *", master.name) } else { master.name.clone() };
        let role = match master.role {
            wasmlet_api::protocol::MasterRole::Leader => ("Leader".to_string(), Tone::Good),
            wasmlet_api::protocol::MasterRole::Follower => ("Follower".to_string(), Tone::Plain),
        };
        table.push_toned(vec![(name, Tone::Plain), role]);
    }
    table
}

/// Registry credentials: which registry and user; never a password.
pub fn registry_credentials(items: &[wasmlet_api::RegistryCredential], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(vec!["NAME", "REGISTRY", "USERNAME", "AGE"]);
    for c in items {
        table.push(vec![c.metadata.name.clone(), c.registry.clone(), c.username.clone(), age::since(now, c.metadata.creation_timestamp)]);
    }
    table
}

pub fn phase_tone(phase: Phase) -> Tone {
    match phase {
        Phase::Running | Phase::Succeeded => Tone::Good,
        Phase::Pending | Phase::Starting | Phase::Terminating => Tone::Warn,
        Phase::Failed | Phase::Lost => Tone::Bad,
    }
}

pub fn instances(instances: &[Instance], wide: bool, now: DateTime<Utc>) -> Table {
    let mut headers = vec!["NAME", "WORKLOAD", "NODE", "PHASE", "RESTARTS", "AGE"];
    if wide {
        headers.extend(["EPOCH", "REASON"]);
    }
    let mut table = Table::new(headers);
    for i in instances {
        let plain = |s: String| (s, Tone::Plain);
        let node = if i.spec.node.is_empty() { "<none>".to_string() } else { i.spec.node.clone() };
        let mut row = vec![
            plain(i.metadata.name.clone()),
            plain(i.spec.workload.clone()),
            plain(node),
            (i.status.phase.to_string(), phase_tone(i.status.phase)),
            plain(i.status.restarts.to_string()),
            plain(age::since(now, i.metadata.creation_timestamp)),
        ];
        if wide {
            row.extend([plain(i.spec.epoch.to_string()), plain(i.status.reason.clone().unwrap_or_else(|| "<none>".into()))]);
        }
        table.push_toned(row);
    }
    table
}

/// `wasmlet top instances`: each instance (with the node it runs on) and what
/// it uses. MEMORY is `used/limit` where the instance's cgroup has a limit;
/// CPU-LIMIT and THROTTLED (the share of CPU quota periods in which it had
/// to wait) appear when some instance has a CPU limit, so a table of
/// in-process instances stays as narrow as ever.
pub fn top_instances(instances: &[(String, Instance)]) -> Table {
    let limited = instances.iter().any(|(_, i)| i.status.usage.as_ref().is_some_and(|u| u.cpu_limit_millis.is_some()));
    let mut headers = vec!["NAME", "WORKLOAD", "NODE", "CPU(seconds)"];
    if limited {
        headers.extend(["CPU-LIMIT", "THROTTLED"]);
    }
    headers.push("MEMORY");
    let mut table = Table::new(headers);
    for (node, i) in instances {
        let mut row = vec![i.metadata.name.clone(), i.spec.workload.clone(), node.clone()];
        let Some(u) = &i.status.usage else {
            row.extend(std::iter::repeat_n("<unknown>".to_string(), if limited { 4 } else { 2 }));
            table.push(row);
            continue;
        };
        row.push(format!("{:.2}", u.cpu_seconds));
        if limited {
            row.push(u.cpu_limit_millis.map_or_else(|| "<none>".into(), |m| Cpu::from_millis(m).to_string()));
            row.push(match (u.cpu_throttled_periods, u.cpu_periods) {
                (Some(_), Some(0)) => "0%".into(),
                (Some(throttled), Some(periods)) => percent(throttled as f64, periods as f64),
                _ => "<none>".into(),
            });
        }
        let used = Bytes::new(u.memory_bytes).human();
        row.push(match u.memory_limit_bytes {
            Some(limit) => format!("{used}/{}", Bytes::new(limit).human()),
            None => used,
        });
        table.push(row);
    }
    table
}

/// `running/desired`, as kubectl's READY.
pub fn workload_ready(w: &Workload) -> String {
    match &w.status {
        Some(s) => format!("{}/{}", s.running, s.desired),
        None => "<unknown>".into(),
    }
}

pub fn workloads(workloads: &[Workload], wide: bool, now: DateTime<Utc>) -> Table {
    let mut headers = vec!["NAME", "TYPE", "READY", "AGE"];
    if wide {
        headers.extend(["MODULE", "SELECTOR"]);
    }
    let mut table = Table::new(headers);
    for w in workloads {
        let kind = serde_json::to_value(w.spec.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let mut row = vec![w.metadata.name.clone(), kind, workload_ready(w), age::since(now, w.metadata.creation_timestamp)];
        if wide {
            let selector: Vec<String> = w.spec.node_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            row.push(w.spec.module.origin().to_string());
            row.push(if selector.is_empty() { "<none>".into() } else { selector.join(",") });
        }
        table.push(row);
    }
    table
}

/// `kind/name` in lower case, as kubectl names objects.
pub fn object_ref(kind: &str, name: &str) -> String {
    format!("{}/{name}", kind.to_lowercase())
}

pub fn events(events: &[Event], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    for e in events {
        let (kind, tone) = match e.kind_of_event {
            EventType::Normal => ("Normal", Tone::Plain),
            EventType::Warning => ("Warning", Tone::Warn),
        };
        table.push_toned(vec![
            (age::since(now, Some(e.time)), Tone::Plain),
            (kind.to_string(), tone),
            (e.reason.clone(), Tone::Plain),
            (object_ref(&e.involved_object.kind, &e.involved_object.name), Tone::Plain),
            (e.message.clone(), Tone::Plain),
        ]);
    }
    table
}
