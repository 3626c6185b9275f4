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
    let workloads = [workload("sensor", 100, 16, 64), workload("api", 250, 128, 256)];
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
