//! The README's five-minute tour, run as written: `make run`'s script with its
//! own ports and directory, then every command of the tour with the real CLI.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use wasmlet_tests::{ProcessGroup, bin_dir, free_port};

/// The commands of the README's tour: the first `sh` block after its heading,
/// without `make run` and the PATH line (the test sets both up itself).
fn tour_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README");
    let tour = readme.split("## Five-minute tour").nth(1).expect("a tour section");
    let block = tour.split("```sh").nth(1).and_then(|b| b.split("```").next()).expect("a shell block");
    block
        .lines()
        .map(|l| l.split("   #").next().unwrap_or(l).trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l != "make run" && !l.starts_with("export PATH="))
        .collect()
}

#[test]
fn the_readme_tour_works_as_written() {
    let commands = tour_commands();
    assert!(commands.len() >= 5 && commands.iter().all(|c| !c.contains("curl")), "the tour uses wasmlet: {commands:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (master_port, agent_port, ingress_port) = (free_port(), free_port(), free_port());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/run-local.sh");
    let mut child = Command::new("bash")
        .arg(script)
        .arg(bin_dir())
        .arg(dir.path().join(".run"))
        .env("WASMLET_RUN_MASTER_PORT", master_port.to_string())
        .env("WASMLET_RUN_AGENT_PORT", agent_port.to_string())
        .env("WASMLET_RUN_INGRESS_PORT", ingress_port.to_string())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env_remove("WASMLET_CONFIG")
        .env_remove("WASMLETCONFIG")
        .env_remove("WASMLET_MASTER")
        .env_remove("WASMLET_TOKEN")
        .current_dir(dir.path())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("run-local.log")).expect("log file"))
        .spawn()
        .expect("start run-local.sh");
    let stdout = child.stdout.take().expect("stdout");
    let _running = ProcessGroup(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let summary = printed.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            summary.lock().expect("summary").push_str(&format!("{line}\n"));
            if line.contains("wasmlet is running") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        let log = std::fs::read_to_string(dir.path().join("run-local.log")).unwrap_or_default();
        panic!("make run's script did not report the cluster running; its log:\n{log}");
    }

    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut transcript = String::new();
    for command in &commands {
        let out = Command::new("bash")
            .args(["-c", &format!("set -euo pipefail; {command}")])
            .current_dir(dir.path())
            .env("PATH", &path)
            // The context `make run` wrote: the master, its CA and the admin token.
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("NO_COLOR", "1")
            .output()
            .expect("run a tour command");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "`{command}` failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
        transcript.push_str(&format!("$ {command}\n{text}"));
    }
    for needle in ["Ready", "Succeeded", "\"seq\":", "workload/sensor configured", "Registered"] {
        assert!(transcript.contains(needle), "the tour shows {needle}:\n{transcript}");
    }
    // On loopback (the default), `make run` says no other machine can join, and what to change.
    let printed = printed.lock().expect("summary").clone();
    assert!(
        printed.contains("Other machines cannot join: this master is at 127.0.0.1") && printed.contains("make run LISTEN=0.0.0.0"),
        "{printed}"
    );
    let instances = Command::new(bin_dir().join("wasmlet"))
        .args(["get", "instances", "-o", "json"])
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .output()
        .expect("get instances");
    let list: wasmlet_api::protocol::List<wasmlet_api::Instance> = serde_json::from_slice(&instances.stdout).expect("json");
    let running = list.items.iter().filter(|i| i.spec.workload == "sensor" && i.status.phase == wasmlet_api::Phase::Running).count();
    assert_eq!(running, 3, "the tour scaled the sensor to 3");
}
