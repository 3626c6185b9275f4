//! `footprint`: what the packaged agent costs a machine: the size of its
//! stripped binary, its resident memory idle and with one `sensor` daemon
//! running, with default settings. Measured for this machine's package
//! natively and, on amd64, for the arm64 package under `qemu-aarch64-static`
//! (the memory figure is then the emulator's process: the agent plus qemu's
//! own code cache, more than on a real board).
//!
//! The references are published figures, not measured here: a k3s agent
//! takes about 270 MB, KubeEdge's edgecore at least 70 MB, and the kubelet's
//! e2e tests allow it 200 MiB.

use std::time::Duration;

use anyhow::Context;
use wasmlet_api::Phase;
use wasmlet_tests::{Agent, arm64_command, package, package_architectures, rss_bytes, unpack};

use crate::figures::{Figure, Figures};
use crate::support::{place_manifest, yaml_path};

/// Long enough for the first samples and lazily touched pages to settle.
const SETTLE: Duration = Duration::from_secs(5);
/// Emulation compiles modules slowly.
const RUNNING_WITHIN: Duration = Duration::from_secs(240);

const REFERENCES: [(&str, f64, &str); 3] = [
    ("k3s-agent", 270e6, "published: a k3s agent node's memory, about 270 MB (k3s resource profiling)"),
    ("kubeedge-edgecore", 70e6, "published: KubeEdge's edgecore, at least 70 MB"),
    ("kubelet", 200.0 * 1048576.0, "published: the kubelet's memory ceiling in Kubernetes' e2e resource tests, 200 MiB"),
];

fn progress(message: impl AsRef<str>) {
    eprintln!("footprint: {}", message.as_ref());
}

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    for arch in package_architectures() {
        measure(figures, arch)?;
    }
    for (subject, bytes, note) in REFERENCES {
        figures.emit(Figure::new(subject, "rss_reference_bytes", bytes).note(note))?;
    }
    Ok(())
}

fn measure(figures: &mut Figures, arch: &str) -> anyhow::Result<()> {
    let emulated = arch == "arm64" && std::env::consts::ARCH != "aarch64";
    let subject = if emulated { "agent-arm64-qemu".to_string() } else { format!("agent-{arch}") };
    let deb = package("wasmlet-agent", arch)?;
    let tree = tempfile::tempdir()?;
    unpack(&deb, tree.path())?;
    let binary = tree.path().join("usr/bin/wasmlet-agent");
    let size = std::fs::metadata(&binary).with_context(|| format!("{} in {}", binary.display(), deb.display()))?.len();
    figures.emit(Figure::new(&subject, "binary_bytes", size).note(&format!("/usr/bin/wasmlet-agent of {}, stripped", deb.display())))?;

    let manifests = tempfile::tempdir()?;
    let data = tempfile::tempdir()?;
    std::fs::write(data.path().join("value"), "21.5\n")?;
    let command = if arch == "arm64" { arm64_command(&binary) } else { std::process::Command::new(&binary) };
    let dirs = [manifests.path().to_str().context("utf-8 path")?, data.path().to_str().context("utf-8 path")?];
    // Natively the pool the agent reserves by default (the harness asks for a smaller one). qemu-user
    // keeps a record of every page the guest reserves, in its own memory: the pool's terabytes of
    // address space would cost gigabytes of emulator and minutes. Under emulation memories are
    // allocated on demand, as they are on boards whose kernels give processes too little address
    // space for the pool (the agent falls back by itself there).
    let pool = if emulated { "0" } else { "1000" };
    let agent = Agent::start_command(command, &["--pool-instances", pool, "--manifests-dir", dirs[0], "--allowed-host-paths", dirs[1]])
        .with_context(|| format!("starting the {arch} agent"))?;
    std::thread::sleep(SETTLE);
    let idle = rss_bytes(agent.pid()).context("reading the agent's RSS")?;
    let how = if emulated {
        "the qemu-aarch64-static process running the agent and its translated code (--pool-instances 0: on demand)"
    } else {
        "the agent process (--pool-instances 1000, the default)"
    };
    figures.emit(Figure::new(&subject, "idle_rss_bytes", idle).note(&format!("{how}, no instances, {SETTLE:?} after start")))?;

    let (path, digest) = wasmlet_tests::example("sensor");
    let manifest = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: sensor\nspec:\n  type: daemon\n  module:\n    source: {}\n    digest: {digest}\n  args: [\"--interval\", \"1000\"]\n  dirs:\n  - path: /data\n    hostPath: {}\n    readOnly: true\n",
        yaml_path(&path),
        yaml_path(data.path())
    );
    place_manifest(manifests.path(), "sensor.yaml", &manifest)?;
    let deadline = std::time::Instant::now() + RUNNING_WITHIN;
    while agent.instance("sensor-0").is_none_or(|i| i.status.phase != Phase::Running) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the sensor did not run on the {arch} agent within {RUNNING_WITHIN:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(SETTLE);
    let running = rss_bytes(agent.pid()).context("reading the agent's RSS")?;
    figures.emit(Figure::new(&subject, "sensor_rss_bytes", running).note(&format!("{how}, one sensor daemon Running for {SETTLE:?}")))?;
    for (reference, bytes, _) in REFERENCES {
        figures.emit(Figure::ratio(&subject, "sensor_rss_bytes", running as f64, reference, bytes, crate::figures::Goal::AtMost(1.0)))?;
    }
    progress(format!("{subject}: binary {} MiB, idle {} MiB, with sensor {} MiB", size >> 20, idle >> 20, running >> 20));
    Ok(())
}
