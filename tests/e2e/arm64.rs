//! The IoT path without an ARM board: the agent of the arm64 package, run
//! under Debian's `qemu-aarch64-static` (natively on an ARM machine), joins a master running natively,
//! reports `arm64` with the machine's real facts, and runs the `hello` and
//! `sensor` examples the master places on it (Cranelift compiles them to
//! aarch64 code, which qemu runs; in the agent's own process, as the emulated
//! agent cannot start its compiler process without binfmt support).

use std::time::Duration;

use reqwest::Method;
use wasmlet_api::{Instance, Phase, Workload};
use wasmlet_tests::{Agent, Master, arm64_command, package, package_architectures, unpack, wait_for, workload_manifest};

/// Emulation is slow: compiling a module takes seconds.
const WAIT: Duration = Duration::from_secs(240);

fn instance_of(master: &Master, workload: &str) -> Option<Instance> {
    master.instances().into_iter().find(|i| i.spec.workload == workload)
}

fn create(master: &Master, name: &str, module: &str, kind: &str, extra: &str) {
    master.upload_example(module).expect("upload");
    let workload: Workload = wasmlet_api::from_yaml(&workload_manifest(name, module, kind, extra)).expect("manifest");
    let (status, body) = master.send_json(Method::POST, "/workloads", &workload).expect("POST /workloads");
    assert!(status == 201 || status == 200, "{status}: {body}");
}

#[test]
fn the_arm64_agent_joins_a_native_master_and_runs_hello_and_sensor_under_emulation() {
    assert!(package_architectures().contains(&"arm64"), "make debs builds the arm64 packages everywhere");
    let tree = tempfile::tempdir().expect("tempdir");
    unpack(&package("wasmlet-agent", "arm64").expect("the arm64 package"), tree.path()).expect("unpacks");
    let binary = tree.path().join("usr/bin/wasmlet-agent");

    let master = Master::start(&[]).expect("master starts");
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("value"), "19.5\n").expect("write");
    let host_path = data.path().to_str().expect("utf-8").to_string();
    let agent = Agent::start_command(
        arm64_command(&binary),
        &[&master.join_args()[..], &["--name", "arm-board", "--allowed-host-paths", &host_path, "--sample-interval", "1s"]].concat(),
    )
    .expect("the arm64 agent starts under qemu");

    let node = wait_for(WAIT, "the arm64 node Ready in the master", || {
        master.nodes().into_iter().find(|n| n.metadata.name == "arm-board" && n.is_ready())
    });
    let info = &node.status.node_info;
    assert_eq!(info.architecture, "arm64", "{info:?}");
    assert_eq!(node.metadata.labels.get("wasmlet.io/arch").map(String::as_str), Some("arm64"));
    // The facts are the machine's own, read through the emulator.
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(info.kernel_version, kernel.trim());
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot_id");
    assert_eq!(info.boot_id, boot_id.trim());
    assert!(node.status.capacity.memory.get() > 0 && node.status.capacity.cpu.millis() > 0, "{:?}", node.status.capacity);
    // Without binfmt support the emulated agent cannot start its compiler process: it compiles
    // in its own process, and says so.
    let runtime = node.status.runtime.clone().expect("status.runtime");
    if std::env::consts::ARCH != "aarch64" && !std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        assert_eq!(runtime.compiler, "in-agent", "{runtime:?}");
        assert!(runtime.compiler_reason.contains("cannot start the compiler process"), "{runtime:?}");
    }

    let on_arm = "  nodeSelector: {wasmlet.io/arch: arm64}\n";
    create(&master, "hello", "hello", "job", &format!("  restartPolicy: Never\n{on_arm}"));
    let sensor =
        format!("  args: [\"--interval\", \"300\"]\n  dirs:\n  - path: /data\n    hostPath: {host_path}\n    readOnly: true\n{on_arm}");
    create(&master, "sensor", "sensor", "daemon", &sensor);
    let hello = wait_for(WAIT, "hello to succeed on the arm64 node", || {
        instance_of(&master, "hello").filter(|i| matches!(i.status.phase, Phase::Succeeded | Phase::Failed))
    });
    assert_eq!(hello.status.phase, Phase::Succeeded, "{:?}\n{}", hello.status, agent.log_text());
    assert_eq!(hello.spec.node, "arm-board");
    let logs =
        |name: &str| master.client().get(master.api(&format!("/instances/{name}/logs"))).send().and_then(|r| r.text()).unwrap_or_default();
    assert!(logs(&hello.metadata.name).contains("hello from wasmlet"), "{}", logs(&hello.metadata.name));
    let sensor = wait_for(WAIT, "the sensor to read its value on the arm64 node", || {
        let sensor = instance_of(&master, "sensor").filter(|i| i.status.phase == Phase::Running)?;
        logs(&sensor.metadata.name).contains("\"value\":\"19.5\"").then_some(sensor)
    });
    assert_eq!(sensor.spec.node, "arm-board");
}
