//! The `describe` pages: everything about one object on one screen, in the
//! order of `kubectl describe`, with the instances and events that concern it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use wasmlet_api::{
    Bytes, ConditionType, Cpu, Event, Instance, InstanceUsage, Node, NodeRuntime, Phase, Pressure, ResourcePressure, Workload, WorkloadType,
};

use crate::age;
use crate::style::Style;
use crate::table::Table;
use crate::view;

/// The column where top-level values start.
const KEY_WIDTH: usize = 20;

/// Times as kubectl prints them (RFC 1123 with a numeric zone).
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S %z").to_string()
}

fn opt_timestamp(t: Option<DateTime<Utc>>) -> String {
    t.map(timestamp).unwrap_or_else(|| "<unset>".into())
}

/// A page being written: `Key:  value` lines and indented sections.
struct Page(String);

impl Page {
    fn field(&mut self, key: &str, value: impl std::fmt::Display) {
        let key = format!("{key}:");
        let line = format!("{key:<KEY_WIDTH$}{value}");
        let _ = writeln!(self.0, "{}", line.trim_end());
    }

    /// A key with several values, one a line, aligned; `<none>` when empty.
    fn lines(&mut self, key: &str, values: &[String]) {
        match values.split_first() {
            None => self.field(key, "<none>"),
            Some((first, rest)) => {
                self.field(key, first);
                for value in rest {
                    let _ = writeln!(self.0, "{:KEY_WIDTH$}{value}", "");
                }
            }
        }
    }

    fn heading(&mut self, key: &str) {
        let _ = writeln!(self.0, "{key}:");
    }

    /// `  key:  value` lines under a heading, the values aligned.
    fn pairs(&mut self, pairs: &[(&str, String)]) {
        let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0) + 2;
        for (key, value) in pairs {
            let key = format!("{key}:");
            let line = format!("  {key:<width$}{value}");
            let _ = writeln!(self.0, "{}", line.trim_end());
        }
    }

    fn table(&mut self, table: &Table) {
        self.0.push_str(&table.render(Style::PLAIN, "  "));
    }
}

fn map_lines(map: &BTreeMap<String, String>) -> Vec<String> {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Whole percent of `part` in `whole`, floored; `0%` of nothing.
fn share(part: u64, whole: u64) -> String {
    if whole == 0 { "0%".into() } else { format!("{}%", (part as u128 * 100 / whole as u128)) }
}

/// Instances that hold resources on their node: not finished, not lost.
fn holds_resources(phase: Phase) -> bool {
    !matches!(phase, Phase::Succeeded | Phase::Failed | Phase::Lost)
}

/// The events about one object, oldest first.
fn events_of<'a>(events: &'a [Event], kind: &str, name: &str) -> Vec<&'a Event> {
    let mut mine: Vec<&Event> = events.iter().filter(|e| e.involved_object.kind == kind && e.involved_object.name == name).collect();
    mine.sort_by_key(|e| e.time);
    mine
}

fn events_section(page: &mut Page, events: &[&Event], now: DateTime<Utc>) {
    if events.is_empty() {
        page.field("Events", "<none>");
        return;
    }
    page.heading("Events");
    let mut table = Table::new(["Type", "Reason", "Age", "From", "Message"]).underlined();
    for e in events {
        let kind = match e.kind_of_event {
            wasmlet_api::EventType::Normal => "Normal",
            wasmlet_api::EventType::Warning => "Warning",
        };
        table.push([kind.to_string(), e.reason.clone(), age::since(now, Some(e.time)), e.source.clone(), e.message.clone()]);
    }
    page.table(&table);
}

fn pressure_line(p: &ResourcePressure) -> Vec<String> {
    let full = p.full.map(|f| (format!("{:.2}%", f.avg10), format!("{:.2}%", f.avg60)));
    let (full10, full60) = full.unwrap_or_else(|| ("<none>".into(), "<none>".into()));
    vec![format!("{:.2}%", p.some.avg10), format!("{:.2}%", p.some.avg60), full10, full60]
}

fn pressure_section(page: &mut Page, pressure: Option<&Pressure>) {
    let pressure = match pressure {
        None => return page.field("Pressure", "unavailable: the node has not reported usage yet"),
        Some(p) if !p.available => {
            return page.field("Pressure", format!("unavailable: {}", p.reason.as_deref().unwrap_or("the kernel does not expose PSI")));
        }
        Some(p) => p,
    };
    page.heading("Pressure");
    let mut table = Table::new(["Resource", "Some avg10", "Some avg60", "Full avg10", "Full avg60"]).underlined();
    for (name, resource) in [("cpu", &pressure.cpu), ("memory", &pressure.memory), ("io", &pressure.io)] {
        if let Some(r) = resource {
            let mut row = vec![name.to_string()];
            row.extend(pressure_line(r));
            table.push(row);
        }
    }
    page.table(&table);
}

/// The isolation modes a node offers, its default marked, why process
/// isolation is missing, and the cgroup layout; nothing from an agent older than isolation modes.
fn isolation_facts(runtime: &NodeRuntime) -> Vec<(&'static str, String)> {
    let mut facts = Vec::new();
    if !runtime.isolation.is_empty() {
        let modes: Vec<String> = runtime
            .isolation
            .iter()
            .map(|mode| if *mode == runtime.default_isolation { format!("{mode} (default)") } else { mode.clone() })
            .collect();
        facts.push(("Isolation", modes.join(", ")));
    }
    if !runtime.isolation_reason.is_empty() {
        facts.push(("Process Isolation", format!("not offered: {}", runtime.isolation_reason)));
    }
    if !runtime.cgroups.is_empty() {
        facts.push(("Cgroups", runtime.cgroups.clone()));
    }
    facts
}

/// `describe node`: `instances` and `workloads` are the cluster's (the page picks the node's),
/// `events` all events (the page picks those about the node).
pub fn node(node: &Node, instances: &[Instance], workloads: &[Workload], events: &[Event], now: DateTime<Utc>) -> String {
    let mut page = Page(String::new());
    let name = &node.metadata.name;
    page.field("Name", name);
    page.field("Roles", view::node_roles(node));
    page.lines("Labels", &map_lines(&node.metadata.labels));
    page.lines("Annotations", &map_lines(&node.metadata.annotations));
    page.field("CreationTimestamp", opt_timestamp(node.metadata.creation_timestamp));
    let taints: Vec<String> = node
        .spec
        .taints
        .iter()
        .map(|t| if t.value.is_empty() { format!("{}:{:?}", t.key, t.effect) } else { format!("{}={}:{:?}", t.key, t.value, t.effect) })
        .collect();
    page.lines("Taints", &taints);
    page.field("Unschedulable", node.spec.unschedulable);

    let ready = node.condition(ConditionType::Ready);
    page.heading("Lease");
    page.pairs(&[("HolderIdentity", name.clone()), ("RenewTime", opt_timestamp(ready.map(|c| c.last_heartbeat_time)))]);

    if node.status.conditions.is_empty() {
        page.field("Conditions", "<none>");
    } else {
        page.heading("Conditions");
        let mut table = Table::new(["Type", "Status", "LastHeartbeatTime", "LastTransitionTime", "Reason", "Message"]).underlined();
        for c in &node.status.conditions {
            table.push([
                c.kind.to_string(),
                c.status.to_string(),
                timestamp(c.last_heartbeat_time),
                timestamp(c.last_transition_time),
                c.reason.clone(),
                c.message.clone(),
            ]);
        }
        page.table(&table);
    }

    if node.status.addresses.is_empty() {
        page.field("Addresses", "<none>");
    } else {
        page.heading("Addresses");
        let addresses: Vec<(&str, String)> = node
            .status
            .addresses
            .iter()
            .map(|a| {
                let kind = match a.kind {
                    wasmlet_api::AddressType::Hostname => "Hostname",
                    wasmlet_api::AddressType::InternalIp => "InternalIP",
                    wasmlet_api::AddressType::ExternalIp => "ExternalIP",
                };
                (kind, a.address.clone())
            })
            .collect();
        page.pairs(&addresses);
    }

    for (heading, list) in [("Capacity", &node.status.capacity), ("Allocatable", &node.status.allocatable)] {
        page.heading(heading);
        page.pairs(&[
            ("cpu", list.cpu.to_string()),
            ("ephemeral-storage", list.ephemeral_storage.to_string()),
            ("instances", list.instances.to_string()),
            ("memory", list.memory.to_string()),
        ]);
    }

    let info = &node.status.node_info;
    page.heading("System Info");
    let mut facts = vec![
        ("Machine ID", info.machine_id.clone()),
        ("System UUID", info.system_uuid.clone()),
        ("Boot ID", info.boot_id.clone()),
        ("Kernel Version", info.kernel_version.clone()),
        ("OS Image", info.os_image.clone()),
        ("Operating System", info.operating_system.clone()),
        ("Architecture", info.architecture.clone()),
        ("CPU Model", info.cpu_model.clone()),
        ("Agent Version", info.agent_version.clone()),
        ("Runtime Version", if info.runtime_version.is_empty() { String::new() } else { format!("wasmtime/{}", info.runtime_version) }),
    ];
    if let Some(runtime) = &node.status.runtime {
        facts.push(("Allocator", format!("{} ({})", runtime.allocator, runtime.allocator_reason)));
        if !runtime.compiler.is_empty() {
            facts.push(("Compiler", format!("{} ({})", runtime.compiler, runtime.compiler_reason)));
        }
        facts.extend(isolation_facts(runtime));
    }
    page.pairs(&facts);

    pressure_section(&mut page, node.status.usage.as_ref().map(|u| &u.pressure));

    let by_name: BTreeMap<&str, &Workload> = workloads.iter().map(|w| (w.metadata.name.as_str(), w)).collect();
    let mut mine: Vec<&Instance> = instances.iter().filter(|i| i.spec.node == *name && holds_resources(i.status.phase)).collect();
    mine.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let allocatable = &node.status.allocatable;
    let (mut cpu, mut cpu_limits, mut memory, mut memory_limits) = (Cpu::ZERO, Cpu::ZERO, Bytes::ZERO, Bytes::ZERO);
    let _ = writeln!(page.0, "Non-terminated Instances:  ({} in total)", mine.len());
    if !mine.is_empty() {
        let mut table =
            Table::new(["Name", "Workload", "Phase", "CPU Requests", "CPU Limits", "Memory Requests", "Memory Limits", "Age"]).underlined();
        for i in &mine {
            let resources = by_name.get(i.spec.workload.as_str()).map(|w| w.spec.resources.clone()).unwrap_or_default();
            let r_cpu = resources.requests.cpu.unwrap_or(Cpu::ZERO);
            let l_cpu = resources.limits.cpu.unwrap_or(Cpu::ZERO);
            let r_mem = resources.requests.memory.unwrap_or(Bytes::ZERO);
            let l_mem = resources.limits.memory.unwrap_or(Bytes::ZERO);
            cpu = cpu.saturating_add(r_cpu);
            cpu_limits = cpu_limits.saturating_add(l_cpu);
            memory = memory.saturating_add(r_mem);
            memory_limits = memory_limits.saturating_add(l_mem);
            table.push([
                i.metadata.name.clone(),
                i.spec.workload.clone(),
                i.status.phase.to_string(),
                format!("{r_cpu} ({})", share(r_cpu.millis(), allocatable.cpu.millis())),
                format!("{l_cpu} ({})", share(l_cpu.millis(), allocatable.cpu.millis())),
                format!("{r_mem} ({})", share(r_mem.get(), allocatable.memory.get())),
                format!("{l_mem} ({})", share(l_mem.get(), allocatable.memory.get())),
                age::since(now, i.metadata.creation_timestamp),
            ]);
        }
        page.table(&table);
    }
    page.heading("Allocated resources");
    let _ = writeln!(page.0, "  (Total limits may be over 100 percent, i.e., overcommitted.)");
    let mut table = Table::new(["Resource", "Requests", "Limits"]).underlined();
    table.push([
        "cpu".into(),
        format!("{cpu} ({})", share(cpu.millis(), allocatable.cpu.millis())),
        format!("{cpu_limits} ({})", share(cpu_limits.millis(), allocatable.cpu.millis())),
    ]);
    table.push([
        "memory".into(),
        format!("{memory} ({})", share(memory.get(), allocatable.memory.get())),
        format!("{memory_limits} ({})", share(memory_limits.get(), allocatable.memory.get())),
    ]);
    table.push([
        "instances".into(),
        format!("{} ({})", mine.len(), share(mine.len() as u64, u64::from(allocatable.instances))),
        "0 (0%)".into(),
    ]);
    page.table(&table);

    events_section(&mut page, &events_of(events, "Node", name), now);
    page.0
}

fn kind_name(kind: WorkloadType) -> &'static str {
    match kind {
        WorkloadType::Service => "service",
        WorkloadType::Daemon => "daemon",
        WorkloadType::Job => "job",
    }
}

/// `describe workload`: its spec in short, its replicas, its instances and events.
pub fn workload(w: &Workload, instances: &[Instance], events: &[Event], now: DateTime<Utc>) -> String {
    let mut page = Page(String::new());
    let name = &w.metadata.name;
    let spec = &w.spec;
    page.field("Name", name);
    page.lines("Labels", &map_lines(&w.metadata.labels));
    page.lines("Annotations", &map_lines(&w.metadata.annotations));
    page.field("CreationTimestamp", opt_timestamp(w.metadata.creation_timestamp));
    page.field("Type", kind_name(spec.kind));
    page.field("Module", spec.module.origin());
    page.field("Digest", &spec.module.digest);
    let placement = if spec.placement.is_some() { "every node".to_string() } else { format!("{} replica(s)", spec.replicas.unwrap_or(1)) };
    page.field("Placement", placement);
    page.field("Isolation", spec.isolation.map_or("<node default>", |mode| mode.as_str()));
    if let Some(s) = &w.status {
        page.field(
            "Replicas",
            format!("{} desired | {} running | {} ready | {} succeeded | {} failed", s.desired, s.running, s.ready, s.succeeded, s.failed),
        );
        let conditions: Vec<String> =
            s.conditions.iter().map(|c| format!("{:?}={} {}: {}", c.kind, c.status, c.reason, c.message)).collect();
        if !conditions.is_empty() {
            page.lines("Conditions", &conditions);
        }
    }
    page.lines("Node-Selector", &map_lines(&spec.node_selector));
    let tolerations: Vec<String> = spec
        .tolerations
        .iter()
        .map(|t| {
            let effect = t.effect.map(|e| format!(":{e:?}")).unwrap_or_default();
            match t.operator {
                wasmlet_api::TolerationOperator::Exists => format!("{} op=Exists{effect}", if t.key.is_empty() { "<all>" } else { &t.key }),
                wasmlet_api::TolerationOperator::Equal => format!("{}={}{effect}", t.key, t.value),
            }
        })
        .collect();
    page.lines("Tolerations", &tolerations);
    page.field("Args", if spec.args.is_empty() { "<none>".into() } else { spec.args.join(" ") });
    page.lines("Environment", &map_lines(&spec.env));
    let dirs: Vec<String> = spec
        .dirs
        .iter()
        .map(|d| {
            format!(
                "{}{}{}",
                d.path,
                d.host_path.as_deref().map(|h| format!(" from {h}")).unwrap_or_default(),
                if d.read_only { " (ro)" } else { "" }
            )
        })
        .collect();
    page.lines("Dirs", &dirs);
    let r = &spec.resources;
    page.heading("Requests");
    page.pairs(&[
        ("cpu", r.requests.cpu.map(|c| c.to_string()).unwrap_or_else(|| "<none>".into())),
        ("memory", r.requests.memory.map(|m| m.to_string()).unwrap_or_else(|| "<none>".into())),
    ]);
    page.heading("Limits");
    page.pairs(&[
        ("cpu", r.limits.cpu.map(|c| c.to_string()).unwrap_or_else(|| "<none>".into())),
        ("memory", r.limits.memory.map(|m| m.to_string()).unwrap_or_else(|| "<none>".into())),
        ("cpuTime", r.limits.cpu_time.map(|d| d.to_string()).unwrap_or_else(|| "<none>".into())),
    ]);
    page.field("Restart Policy", format!("{:?}", w.restart_policy()));
    let d = &spec.disconnect;
    page.field(
        "Disconnect",
        format!(
            "lostAfter={} stopOnAgentAfter={}",
            d.lost_after.map(|x| x.to_string()).unwrap_or_else(|| "<master default>".into()),
            d.stop_on_agent_after.map(|x| x.to_string()).unwrap_or_else(|| "<none>".into())
        ),
    );
    if let Some(rollout) = w.status.as_ref().and_then(|s| s.rollout.as_ref()) {
        page.0.push_str(&self::rollout(rollout, now));
    }
    let mut mine: Vec<&Instance> = instances.iter().filter(|i| i.spec.workload == *name).collect();
    mine.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if mine.is_empty() {
        page.field("Instances", "<none>");
    } else {
        page.heading("Instances");
        let mut table = Table::new(["Name", "Node", "Phase", "Restarts", "Reason", "Age"]).underlined();
        for i in mine {
            table.push([
                i.metadata.name.clone(),
                i.spec.node.clone(),
                i.status.phase.to_string(),
                i.status.restarts.to_string(),
                i.status.reason.clone().unwrap_or_else(|| "<none>".into()),
                age::since(now, i.metadata.creation_timestamp),
            ]);
        }
        page.table(&table);
    }
    events_section(&mut page, &events_of(events, "Workload", name), now);
    page.0
}

/// A workload's revision and rollout: the step under way, the traffic
/// split, the gates' readings, and the revisions with their modules
/// (`describe workload`, `rollout status`).
pub fn rollout(s: &wasmlet_api::RolloutStatus, now: DateTime<Utc>) -> String {
    let mut page = Page(String::new());
    page.field("Revision", s.revision);
    let strategy = s.strategy.map_or("one replica at a time", |s| s.as_str());
    page.field("Rollout", format!("{strategy}, {}", s.phase));
    if !s.message.is_empty() {
        page.field("Rollout Message", &s.message);
    }
    if s.phase.active() && s.strategy.is_some() {
        let mut pairs = vec![("step", format!("{} of {}", s.step + 1, s.step_count + 1))];
        if s.strategy == Some(wasmlet_api::Strategy::Canary) {
            let previous = s.previous.as_ref().map_or("the previous revision".to_string(), |p| format!("revision {}", p.revision));
            pairs.push(("weight", format!("{}% to revision {}, {}% to {previous}", s.weight, s.revision, 100 - s.weight.min(100))));
        }
        pairs.push(("step started", s.step_started_at.map_or("<unset>".into(), |t| age::since(now, Some(t)) + " ago")));
        pairs.push(("all running since", s.step_ready_at.map_or("<not yet>".into(), |t| age::since(now, Some(t)) + " ago")));
        page.heading("Step");
        page.pairs(&pairs);
    }
    if s.gates.is_empty() {
        page.field("Gates", "<none read>");
    } else {
        page.heading("Gates");
        let mut table = Table::new(["Gate", "Value", "Limit", "Passed"]).underlined();
        for g in &s.gates {
            table.push([g.gate.clone(), g.value.clone(), g.limit.clone(), if g.passed { "yes" } else { "NO" }.to_string()]);
        }
        page.table(&table);
    }
    page.heading("History");
    let mut table = Table::new(["Revision", "Digest", "Module", "Outcome", "Age", "Message"]).underlined();
    for r in &s.history {
        let digest = r.digest.strip_prefix("sha256:").map_or(r.digest.clone(), |hex| format!("sha256:{}", &hex[..hex.len().min(12)]));
        table.push([r.revision.to_string(), digest, r.module.clone(), r.outcome.clone(), age::since(now, Some(r.at)), r.message.clone()]);
    }
    page.table(&table);
    page.0
}

/// An instance's usage, with every figure its cgroup gave (process isolation) in the order of `top`.
fn usage_pairs(u: &InstanceUsage) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    if let Some(isolation) = &u.isolation {
        pairs.push(("isolation", isolation.clone()));
    }
    pairs.push(("cpu", format!("{:.3}s", u.cpu_seconds)));
    if let Some(millis) = u.cpu_limit_millis {
        pairs.push(("cpu limit", Cpu::from_millis(millis).to_string()));
    }
    if let Some(periods) = u.cpu_periods {
        let mut line = format!("{periods}");
        if let Some(throttled) = u.cpu_throttled_periods {
            let _ = write!(line, ", throttled in {throttled} ({})", share(throttled, periods));
        }
        if let Some(seconds) = u.cpu_throttled_seconds {
            let _ = write!(line, " for {seconds:.3}s");
        }
        pairs.push(("cpu periods", line));
    }
    pairs.push(("memory", Bytes::new(u.memory_bytes).human()));
    if let Some(limit) = u.memory_limit_bytes {
        pairs.push(("memory limit", Bytes::new(limit).human()));
    }
    if let Some(kills) = u.oom_kills {
        pairs.push(("oom kills", kills.to_string()));
    }
    for (key, pressure) in [("cpu pressure", &u.cpu_pressure), ("memory pressure", &u.memory_pressure)] {
        if let Some(p) = pressure {
            pairs.push((
                key,
                format!(
                    "some {:.2}% full {:.2}% (avg10), some {:.3}s full {:.3}s (total)",
                    p.some_avg10, p.full_avg10, p.some_seconds, p.full_seconds
                ),
            ));
        }
    }
    pairs
}

/// `describe instance`: where it runs, how it is doing, how its last run ended, its events.
pub fn instance(i: &Instance, events: &[Event], now: DateTime<Utc>) -> String {
    let mut page = Page(String::new());
    let s = &i.status;
    page.field("Name", &i.metadata.name);
    page.field("Workload", &i.spec.workload);
    page.field("Node", &i.spec.node);
    page.field("Epoch", i.spec.epoch);
    page.lines("Labels", &map_lines(&i.metadata.labels));
    page.lines("Annotations", &map_lines(&i.metadata.annotations));
    page.field("CreationTimestamp", opt_timestamp(i.metadata.creation_timestamp));
    page.field("Phase", s.phase);
    page.field("Started", opt_timestamp(s.started_at));
    page.field("Restarts", s.restarts);
    page.field("Reason", s.reason.as_deref().unwrap_or("<none>"));
    page.field("Message", s.message.as_deref().unwrap_or("<none>"));
    page.field("Exit Code", s.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "<none>".into()));
    match &s.last_termination {
        None => page.field("Last Termination", "<none>"),
        Some(t) => {
            page.heading("Last Termination");
            page.pairs(&[
                ("Reason", t.reason.clone()),
                ("Message", t.message.clone()),
                ("Exit Code", t.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "<none>".into())),
                ("Started", timestamp(t.started_at)),
                ("Finished", timestamp(t.finished_at)),
            ]);
        }
    }
    match &s.usage {
        None => page.field("Usage", "<none>"),
        Some(u) => {
            page.heading("Usage");
            page.pairs(&usage_pairs(u));
        }
    }
    events_section(&mut page, &events_of(events, "Instance", &i.metadata.name), now);
    page.0
}
