//! Absurd durations and times wherever they come from input: log reads
//! (`since`) on the agent and through the master, watch and drain timeouts,
//! a workload's and a static manifest's durations, a token's time to live and
//! the CLI's `--since`. Each is refused with a `400` (or a usage error) naming
//! the parameter; no daemon falls over, no `502` stands in for a crash.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use wasmlet_api::{Phase, Workload};
use wasmlet_tests::{Agent, Master, bin, place_file, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);
/// The longest duration a client may ask for, as seconds: `u64::MAX`.
const FOREVER_SECONDS: &str = "18446744073709551615";

#[test]
fn absurd_durations_and_times_are_refused_naming_them() {
    let master = Master::start(&[]).expect("master starts");
    let manifests = tempfile::tempdir().expect("tempdir");
    place_file(
        manifests.path(),
        "forever.yaml",
        &workload_manifest("forever", "sensor", "daemon", "  disconnect: {stopOnAgentAfter: 300000y}\n"),
    );
    let dir = manifests.path().to_str().expect("utf-8");
    let agent = Agent::start(
        &[&master.join_args()[..], &["--name", "edge-time", "--manifests-dir", dir, "--manifests-poll-interval", "100ms"]].concat(),
    )
    .expect("agent starts");
    wait_for(WAIT, "the node Ready", || master.nodes().iter().any(|n| n.is_ready()).then_some(()));
    master.upload_example("sensor").expect("upload");
    let sensor: Workload =
        wasmlet_api::from_yaml(&workload_manifest("sensor", "sensor", "daemon", "  args: [\"--interval\", \"200\"]\n")).expect("manifest");
    let (status, body) = master.send_json(Method::POST, "/workloads", &sensor).expect("POST /workloads");
    assert_eq!(status, 201, "{body}");
    let instance = wait_for(WAIT, "sensor Running", || {
        master.instances().into_iter().find(|i| i.spec.workload == "sensor" && i.status.phase == Phase::Running)
    });
    let name = instance.metadata.name;
    agent.wait_phase(&name, Phase::Running, WAIT);

    // The agent's API: a duration past the longest, a negative one, words: 400 naming `since`.
    let http = agent.client_builder().timeout(Duration::from_secs(30)).build().expect("client");
    for (since, code) in [
        ("300000y", 400),
        ("876601h", 400),
        ("-5m", 400),
        ("yesterday", 400),
        ("100y", 200),
        ("9999-12-31T23:59:59Z", 200),
        ("0000-01-01T00:00:00Z", 200),
    ] {
        let response = http.get(agent.url(&format!("/instances/{name}/logs?since={since}"))).send().expect("GET logs from the agent");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        assert_eq!(status, code, "agent, since={since}: {text}");
        if code == 400 {
            assert!(text.contains("since") && text.contains(&format!("`{since}`")), "the refusal names the parameter and value: {text}");
        }
    }
    let all = http.get(agent.url(&format!("/instances/{name}/logs?since=100y"))).send().and_then(|r| r.text()).expect("logs");
    assert!(all.contains("started"), "100y ago reads the whole log: {all}");

    // Through the master: 400 from the master itself, not a 502 for a crashed agent.
    let admin = master.client();
    for (since, code) in [("300000y", 400), ("5m", 200), ("9999-12-31T23:59:59Z", 200)] {
        let response = admin.get(master.api(&format!("/instances/{name}/logs?since={since}"))).send().expect("GET logs via the master");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        assert_eq!(status, code, "master, since={since}: {text}");
        if code == 400 {
            assert!(text.contains("Invalid") && text.contains("since") && text.contains("300000y"), "{text}");
        }
    }
    let unknown = admin.get(master.api(&format!("/instances/{name}/logs?sinse=5m"))).send().expect("GET");
    assert_eq!(unknown.status().as_u16(), 400, "an unknown parameter is named, not passed on");

    // Watch and drain timeouts beyond any clock.
    let watch = admin.get(master.api(&format!("/nodes?watch=true&since=0&timeoutSeconds={FOREVER_SECONDS}"))).send().expect("watch");
    assert_eq!(watch.status().as_u16(), 400);
    assert!(watch.text().unwrap_or_default().contains("timeoutSeconds"));
    let drain = admin.post(master.api(&format!("/nodes/edge-time/drain?timeoutSeconds={FOREVER_SECONDS}"))).send().expect("drain");
    assert_eq!(drain.status().as_u16(), 400, "a drain that would wait forever is refused");
    let within = admin.get(master.api("/nodes?watch=true&since=0&timeoutSeconds=1")).send().expect("watch");
    assert_eq!(within.status().as_u16(), 200, "a sane watch is answered");

    // A workload's durations.
    for (field, extra) in [
        ("spec.disconnect.lostAfter", "  disconnect: {lostAfter: 300000y}\n"),
        ("spec.resources.limits.cpuTime", "  resources:\n    limits: {cpuTime: 99999999999999999999s}\n"),
    ] {
        // As a JSON value, so it reaches the master as written (a Workload could not hold it).
        let value: serde_json::Value = wasmlet_api::from_yaml(&workload_manifest("absurd", "sensor", "daemon", extra)).expect("YAML");
        let (status, body) = master.send_json(Method::POST, "/workloads", &value).expect("POST /workloads");
        assert_eq!(status, 400, "{field}: {body}");
        assert!(body.contains(field), "the refusal names {field}: {body}");
    }

    // A token's time to live, through the API and the command.
    let (status, body) =
        master.send_json(Method::POST, "/tokens", &serde_json::json!({"role": "viewer", "ttl": "300000y"})).expect("POST /tokens");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ttl"), "{body}");
    let created = master.command(&["token", "create", "--ttl", "300000y"]);
    assert!(!created.status.success(), "token create --ttl 300000y succeeded");
    let err = String::from_utf8_lossy(&created.stderr);
    assert!(err.contains("--ttl") && err.contains("300000y"), "{err}");

    // The CLI refuses before it asks.
    let config = tempfile::tempdir().expect("tempdir");
    let output = Command::new(bin("wasmlet"))
        .args(["--master", &master.url, "logs", &name, "--since", "300000y"])
        .env("WASMLETCONFIG", master.cli_config(config.path()))
        .env_remove("WASMLET_MASTER")
        .stdin(Stdio::null())
        .output()
        .expect("wasmlet runs");
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--since") && err.contains("300000y"), "{err}");

    // A static manifest with an absurd duration is refused by name; the agent runs on.
    wait_for(WAIT, "the agent to refuse forever.yaml", || {
        let events: Vec<wasmlet_api::Event> = agent.get_json("/events").ok()?;
        events.into_iter().find(|e| e.reason == "ManifestInvalid" && e.message.contains("forever.yaml"))
    })
    .message
    .contains("stopOnAgentAfter")
    .then_some(())
    .expect("the event names spec.disconnect.stopOnAgentAfter");

    // Everything is still up and the instance still runs.
    assert_eq!(http.get(agent.url("/healthz")).send().expect("agent /healthz").status().as_u16(), 200);
    assert_eq!(admin.get(format!("{}/healthz", master.url)).send().expect("master /healthz").status().as_u16(), 200);
    assert_eq!(agent.instance(&name).map(|i| i.status.phase), Some(Phase::Running));
}
