//! Golden files for the tables and pages people read: fixed objects, a fixed
//! `now`, compared byte for byte with `tests/golden/*.txt`. A layout change is
//! a visible diff; `UPDATE_GOLDEN=1 cargo test -p wasmlet-cli --test golden` rewrites them.

use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use wasmlet_api::*;
use wasmlet_cli::style::Style;
use wasmlet_cli::{describe, view};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).single().expect("a valid time")
}

fn ago(seconds: i64) -> DateTime<Utc> {
    now() - chrono::TimeDelta::seconds(seconds)
}

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, expected, "{name} differs from {}; if the change is intended, run with UPDATE_GOLDEN=1", path.display());
}

fn condition(kind: ConditionType, status: ConditionStatus, reason: &str, message: &str) -> Condition {
    Condition {
        kind,
        status,
        reason: reason.into(),
        message: message.into(),
        last_heartbeat_time: ago(3),
        last_transition_time: ago(2 * 86400 + 3600),
    }
}

fn node(name: &str, ready: ConditionStatus, age: i64) -> Node {
    let mut node = Node::new(name);
    node.metadata.creation_timestamp = Some(ago(age));
    node.status.capacity =
        ResourceList { cpu: Cpu::from_cores(4), memory: Bytes::new(8 << 30), ephemeral_storage: Bytes::new(100 << 30), instances: 110 };
    node.status.allocatable =
        ResourceList { cpu: Cpu::from_millis(3800), memory: Bytes::new(7 << 30), ephemeral_storage: Bytes::new(90 << 30), instances: 110 };
    node.status.conditions = vec![
        condition(ConditionType::Ready, ready, "AgentReady", "the agent is posting status"),
        condition(ConditionType::MemoryPressure, ConditionStatus::False, "HasSufficientMemory", "memory available: 5.1Gi"),
        condition(ConditionType::DiskPressure, ConditionStatus::False, "NoDiskPressure", "nodefs 40% used"),
        condition(ConditionType::PidPressure, ConditionStatus::False, "HasSufficientPID", "412 of 4194304 pids"),
    ];
    node.status.addresses = vec![
        NodeAddress { kind: AddressType::InternalIp, address: "10.0.0.11".into() },
        NodeAddress { kind: AddressType::Hostname, address: name.into() },
    ];
    node.status.node_info = NodeInfo {
        machine_id: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
        system_uuid: "4c4c4544-0042-3510-8052-b7c04f4e4e32".into(),
        boot_id: "b2a6a1a8-5a77-4c5e-9a0e-1f2b3c4d5e6f".into(),
        kernel_version: "6.8.0-45-generic".into(),
        os_image: "Ubuntu 24.04.1 LTS".into(),
        operating_system: "linux".into(),
        architecture: "amd64".into(),
        cpu_model: "AMD EPYC 7B13".into(),
        agent_version: "0.1.0".into(),
        runtime_version: "48.0.8".into(),
    };
    let pressure = |some: f64| ResourcePressure {
        some: PressureAverages { avg10: some, avg60: some / 2.0 },
        full: Some(PressureAverages { avg10: some / 4.0, avg60: 0.0 }),
    };
    node.status.usage = Some(NodeUsage {
        sample_time: ago(1),
        cpu_percent: 12.6,
        memory: MemoryUsage { total_bytes: 8 << 30, used_bytes: 3 << 30, available_bytes: 5 << 30 },
        disk: DiskUsage::default(),
        pids: PidUsage { used: 412, max: 4194304 },
        pressure: Pressure {
            available: true,
            reason: None,
            cpu: Some(pressure(1.5)),
            memory: Some(pressure(0.0)),
            io: Some(pressure(3.25)),
        },
    });
    node
}

fn fleet() -> Vec<Node> {
    let mut a = node("edge-a", ConditionStatus::True, 3 * 86400);
    a.status.runtime = Some(NodeRuntime {
        allocator: "pooling".into(),
        allocator_reason: "128 instances of up to 4Gi fit the address space".into(),
        compiler: "process".into(),
        compiler_reason: "a child process per compile".into(),
        isolation: vec!["in-process".into(), "process".into()],
        isolation_reason: String::new(),
        default_isolation: "in-process".into(),
        cgroups: "hybrid: v1 cpu,cpuacct,memory,pids; v2 core at /sys/fs/cgroup/unified".into(),
    });
    a.metadata.labels.insert("node-role.wasmlet.io/edge".into(), "".into());
    a.metadata.labels.insert("zone".into(), "lab".into());
    let mut b = node("edge-b", ConditionStatus::True, 45);
    b.spec.unschedulable = true;
    let mut c = node("gateway-1", ConditionStatus::Unknown, 5 * 3600);
    c.status.usage = None;
    c.status.node_info.runtime_version = String::new();
    c.spec.taints = vec![Taint { key: "node.wasmlet.io/unreachable".into(), value: String::new(), effect: TaintEffect::NoSchedule }];
    vec![a, b, c]
}

fn workload(name: &str, cpu: u64, memory_mi: u64, limit_mi: u64) -> Workload {
    let text = format!(
        "metadata: {{name: {name}}}\nspec:\n  type: daemon\n  module: {{source: sensor.wasm, digest: \"sha256:{}\"}}\n  resources:\n    requests: {{cpu: {cpu}m, memory: {memory_mi}Mi}}\n    limits: {{memory: {limit_mi}Mi}}\n",
        "a".repeat(64)
    );
    from_yaml(&text).expect("a valid workload")
}

/// A workload in process isolation with a kernel CPU limit.
fn isolated_workload(name: &str) -> Workload {
    let mut w = workload(name, 100, 16, 32);
    w.spec.isolation = Some(Isolation::Process);
    w.spec.resources.limits.cpu = Some(Cpu::from_millis(200));
    w.validate().expect("a valid workload");
    w
}

/// What the agent reports of an instance in process isolation: every cgroup figure.
fn cgroup_usage() -> InstanceUsage {
    InstanceUsage {
        memory_bytes: 13 << 20,
        cpu_seconds: 12.3456,
        isolation: Some("process".into()),
        cpu_limit_millis: Some(200),
        memory_limit_bytes: Some(40 << 20),
        cpu_periods: Some(1200),
        cpu_throttled_periods: Some(342),
        cpu_throttled_seconds: Some(4.25),
        oom_kills: Some(1),
        cpu_pressure: Some(PressureFigures { some_avg10: 37.5, full_avg10: 12.25, some_seconds: 4.5, full_seconds: 1.5 }),
        memory_pressure: Some(PressureFigures { some_avg10: 0.0, full_avg10: 0.0, some_seconds: 0.125, full_seconds: 0.0 }),
        requests: None,
    }
}

fn instance(name: &str, workload: &str, node: &str, phase: Phase, restarts: u32, age: i64) -> Instance {
    let mut i = Instance::new(name, InstanceSpec { workload: workload.into(), node: node.into(), epoch: 7 });
    i.metadata.creation_timestamp = Some(ago(age));
    i.status.phase = phase;
    i.status.restarts = restarts;
    if phase == Phase::Failed {
        i.status.reason = Some("InvalidModule".into());
    }
    i
}

fn instances() -> Vec<Instance> {
    vec![
        instance("sensor-7k2pq", "sensor", "edge-a", Phase::Running, 0, 310),
        instance("api-x9d1f", "api", "edge-a", Phase::Running, 2, 2 * 86400 + 5 * 3600),
        instance("api-b3c8w", "api", "edge-b", Phase::Pending, 0, 12),
        instance("broken-1a2b3", "broken", "edge-a", Phase::Failed, 5, 600),
    ]
}

#[test]
fn get_nodes() {
    check("get-nodes", &view::nodes(&fleet(), false, now()).render(Style::PLAIN, ""));
}

#[test]
fn get_nodes_wide() {
    check("get-nodes-wide", &view::nodes(&fleet(), true, now()).render(Style::PLAIN, ""));
}

#[test]
fn get_instances() {
    check("get-instances", &view::instances(&instances(), false, now()).render(Style::PLAIN, ""));
}

#[test]
fn describe_node() {
    let mut sensor = workload("sensor", 100, 16, 64);
    sensor.spec.isolation = Some(Isolation::Process);
    sensor.spec.resources.limits.cpu = Some(Cpu::from_millis(500));
    let workloads = [sensor, workload("api", 250, 128, 256)];
    let mut event = Event::new(
        "edge-a.1",
        EventType::Normal,
        "NodeReady",
        ObjectReference { kind: "Node".into(), name: "edge-a".into() },
        "node edge-a is Ready",
        "master",
    );
    event.time = ago(3 * 86400);
    let mut other = event.clone();
    other.involved_object.name = "edge-b".into();
    let nodes = fleet();
    check("describe-node", &describe::node(&nodes[0], &instances(), &workloads, &[event, other], now()));
}

#[test]
fn describe_node_without_psi() {
    let mut n = fleet().remove(0);
    if let Some(usage) = &mut n.status.usage {
        usage.pressure = Pressure {
            available: false,
            reason: Some("/proc/pressure is missing (kernel built without CONFIG_PSI)".into()),
            ..Default::default()
        };
    }
    let page = describe::node(&n, &[], &[], &[], now());
    assert!(page.contains("Pressure:           unavailable: /proc/pressure is missing"), "{page}");
    assert!(page.contains("Non-terminated Instances:  (0 in total)"), "{page}");
    assert!(page.contains("Events:             <none>"), "{page}");
}

#[test]
fn describe_node_without_process_isolation_says_why() {
    let mut n = fleet().remove(0);
    if let Some(runtime) = &mut n.status.runtime {
        runtime.isolation = vec!["in-process".into()];
        runtime.isolation_reason = "cannot create /sys/fs/cgroup/cpu/wasmlet-3f2a (Read-only file system)".into();
        runtime.cgroups = String::new();
    }
    let page = describe::node(&n, &[], &[], &[], now());
    assert!(page.contains("  Isolation:          in-process (default)\n"), "{page}");
    assert!(
        page.contains("  Process Isolation:  not offered: cannot create /sys/fs/cgroup/cpu/wasmlet-3f2a (Read-only file system)\n"),
        "{page}"
    );
    assert!(!page.contains("Cgroups:"), "{page}");

    // An agent older than isolation modes says nothing about them.
    let mut older = fleet().remove(0);
    if let Some(runtime) = &mut older.status.runtime {
        *runtime =
            NodeRuntime { allocator: runtime.allocator.clone(), allocator_reason: runtime.allocator_reason.clone(), ..Default::default() };
    }
    let page = describe::node(&older, &[], &[], &[], now());
    assert!(!page.contains("Isolation") && !page.contains("Cgroups"), "{page}");
}

/// An instance in process isolation that the kernel's OOM killer ended once, waiting to restart.
fn oom_killed_instance() -> Instance {
    let mut i = instance("memhog-4x7kq", "memhog", "edge-a", Phase::Pending, 1, 95);
    i.status.started_at = Some(ago(94));
    i.status.reason = Some("CrashLoopBackOff".into());
    i.status.message = Some("restarting in 200ms".into());
    i.status.last_termination = Some(Termination {
        exit_code: None,
        reason: "OOMKilled".into(),
        message:
            "killed by the kernel's OOM killer: the instance's cgroup reached memory.max = 40Mi (limits.memory 32Mi + process overhead 8Mi)"
                .into(),
        started_at: ago(94),
        finished_at: ago(2),
    });
    i.status.usage = Some(cgroup_usage());
    i
}

#[test]
fn describe_instance_in_process_isolation() {
    check("describe-instance", &describe::instance(&oom_killed_instance(), &[], now()));
}

#[test]
fn describe_instance_in_process_shows_only_what_it_has() {
    let mut i = instance("sensor-7k2pq", "sensor", "edge-a", Phase::Running, 0, 310);
    i.status.usage =
        Some(InstanceUsage { memory_bytes: 3 << 20, cpu_seconds: 0.5, isolation: Some("in-process".into()), ..Default::default() });
    let page = describe::instance(&i, &[], now());
    assert!(page.contains("Usage:\n  isolation:  in-process\n  cpu:        0.500s\n  memory:     3Mi\n"), "{page}");
}

#[test]
fn describe_workload_in_process_isolation() {
    let mut w = isolated_workload("spin");
    w.metadata.creation_timestamp = Some(ago(600));
    let mut i = instance("spin-8m2zt", "spin", "edge-a", Phase::Failed, 0, 300);
    i.status.reason = Some("IsolationUnavailable".into());
    check("describe-workload", &describe::workload(&w, &[i], &[], now()));
}

#[test]
fn top_instances() {
    let mut isolated = oom_killed_instance();
    isolated.status.phase = Phase::Running;
    let mut quiet = instance("spin-8m2zt", "spin", "edge-b", Phase::Running, 0, 300);
    quiet.status.usage = Some(InstanceUsage { cpu_throttled_periods: Some(0), cpu_periods: Some(0), ..cgroup_usage() });
    let mut in_process = instance("sensor-7k2pq", "sensor", "edge-a", Phase::Running, 0, 310);
    in_process.status.usage = Some(InstanceUsage { memory_bytes: 3 << 20, cpu_seconds: 0.52, ..Default::default() });
    let unknown = instance("api-x9d1f", "api", "edge-a", Phase::Running, 2, 600);
    let rows: Vec<(String, Instance)> = [("edge-a", in_process.clone()), ("edge-a", unknown), ("edge-a", isolated), ("edge-b", quiet)]
        .into_iter()
        .map(|(node, i)| (node.to_string(), i))
        .collect();
    check("top-instances", &view::top_instances(&rows).render(Style::PLAIN, ""));

    // In-process instances only: the table of before, no limit columns.
    let table = view::top_instances(&[("edge-a".to_string(), in_process)]).render(Style::PLAIN, "");
    assert_eq!(table, "NAME           WORKLOAD   NODE     CPU(seconds)   MEMORY\nsensor-7k2pq   sensor     edge-a   0.52           3Mi\n");
}
