//! The agent's report compared with the machine it runs on.

use std::process::Command;

use wasmlet_api::{ConditionStatus, ConditionType, Node};
use wasmlet_tests::Agent;

fn status(agent: &Agent) -> Node {
    let body =
        agent.client().get(agent.url("/status")).send().and_then(|r| r.error_for_status()).and_then(|r| r.bytes()).expect("GET /status");
    wasmlet_api::from_json(&body).expect("/status is a Node")
}

fn command_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn meminfo_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/meminfo"))
}

#[test]
fn report_matches_the_machine() {
    let agent = Agent::start(&[]).expect("agent starts");
    let node = status(&agent);
    let info = &node.status.node_info;

    let mem_total = meminfo_kib("MemTotal") * 1024;
    let reported = node.status.capacity.memory.get();
    let diff = (reported as f64 - mem_total as f64).abs() / mem_total as f64;
    assert!(diff < 0.01, "memory capacity {reported} vs /proc/meminfo {mem_total}");

    let nproc: u64 = command_output("nproc", &[]).parse().expect("nproc prints a number");
    assert_eq!(node.status.capacity.cpu.millis(), nproc * 1000, "cpu capacity in millicores equals nproc");

    assert_eq!(info.kernel_version, command_output("uname", &["-r"]));
    let os_release = std::fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    let pretty =
        os_release.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string()).expect("PRETTY_NAME");
    assert_eq!(info.os_image, pretty);
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot_id");
    assert_eq!(info.boot_id, boot_id.trim());
    if let Ok(machine_id) = std::fs::read_to_string("/etc/machine-id") {
        assert_eq!(info.machine_id, machine_id.trim());
    }
    assert_eq!(info.operating_system, "linux");
    let expected_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(info.architecture, expected_arch);
    assert!(info.runtime_version.starts_with("48."), "wasmtime version {}", info.runtime_version);
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));

    // The data dir's filesystem is the node's ephemeral storage.
    let usage = node.status.usage.as_ref().expect("usage is reported");
    assert!(node.status.capacity.ephemeral_storage.get() > 0);
    assert_eq!(usage.disk.total_bytes, node.status.capacity.ephemeral_storage.get());
    assert!(usage.memory.available_bytes > 0 && usage.memory.available_bytes <= mem_total);
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").expect("pid_max").trim().parse().expect("number");
    assert_eq!(usage.pids.max, pid_max);
    assert!(usage.pids.used > 0 && usage.pids.used < pid_max);
    assert_eq!(usage.pressure.available, std::path::Path::new("/proc/pressure/cpu").exists());

    // Every condition is reported; on this healthy machine the agent is Ready.
    for kind in ConditionType::ALL {
        assert!(node.condition(kind).is_some(), "{kind} reported");
    }
    let ready = node.condition(ConditionType::Ready).expect("Ready");
    assert_eq!(ready.status, ConditionStatus::True, "{}: {}", ready.reason, ready.message);
    assert!(node.status.addresses.iter().any(|a| a.kind == wasmlet_api::AddressType::Hostname));
}

#[test]
fn status_subcommand_prints_the_report_without_a_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = wasmlet_tests::bin("wasmlet-agent");
    let out = Command::new(&bin).args(["status", "-o", "json", "--data-dir"]).arg(dir.path()).output().expect("run status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node: Node = wasmlet_api::from_json(&out.stdout).expect("status -o json is a Node");
    assert_eq!(node.status.node_info.kernel_version, command_output("uname", &["-r"]));

    let out = Command::new(&bin).args(["status", "--data-dir"]).arg(dir.path()).output().expect("run status");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for heading in ["System Info:", "Capacity:", "Allocatable:", "Conditions:", "MemoryPressure", "Kernel Version:"] {
        assert!(text.contains(heading), "table has {heading}:\n{text}");
    }
}
