//! The agent's HTTP API, polled the way dashboards and scrapers poll it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use wasmlet_api::Node;
use wasmlet_tests::Agent;

fn client(agent: &Agent) -> Client {
    agent.client_builder().timeout(Duration::from_secs(60)).build().expect("http client")
}

#[test]
fn status_round_trips_through_the_api_types() {
    let agent = Agent::start(&[]).expect("agent starts");
    let response = client(&agent).get(agent.url("/status")).send().expect("GET /status");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.bytes().expect("body");
    let node: Node = wasmlet_api::from_json(&body).expect("decodes with unknown fields refused");
    node.validate().expect("the agent's Node is valid");
    let original: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let again = serde_json::to_value(&node).expect("encode");
    assert_eq!(original, again, "nothing lost or added in the round trip");
}

#[test]
fn etag_saves_the_body_when_nothing_changed() {
    // A long interval: the report does not change during the test.
    let agent = Agent::start(&["--sample-interval", "1h"]).expect("agent starts");
    let http = client(&agent);
    let first = http.get(agent.url("/status")).send().expect("GET");
    let etag = first.headers()["etag"].to_str().expect("etag").to_string();
    let again = http.get(agent.url("/status")).header("If-None-Match", &etag).send().expect("GET");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert!(again.bytes().expect("body").is_empty());
    let stale = http.get(agent.url("/status")).header("If-None-Match", "\"other-1\"").send().expect("GET");
    assert_eq!(stale.status(), StatusCode::OK);
}

fn version_of(body: &[u8]) -> u64 {
    let node: Node = wasmlet_api::from_json(body).expect("Node");
    node.metadata.resource_version.expect("resourceVersion")
}

#[test]
fn watch_returns_on_change_and_times_out_cleanly() {
    let agent = Agent::start(&["--sample-interval", "200ms"]).expect("agent starts");
    let http = client(&agent);
    let body = http.get(agent.url("/status")).send().and_then(|r| r.bytes()).expect("GET");
    let version = version_of(&body);

    let started = Instant::now();
    let changed = http.get(agent.url(&format!("/status?watch=true&since={version}&timeoutSeconds=20"))).send().expect("watch");
    assert_eq!(changed.status(), StatusCode::OK);
    let next = version_of(&changed.bytes().expect("body"));
    assert!(next > version, "watch returned a newer report ({next} > {version})");
    assert!(started.elapsed() < Duration::from_secs(20), "returned on the change, not at the timeout");

    // A stale `since` answers at once.
    let at_once = http.get(agent.url(&format!("/status?watch=true&since={}", version.saturating_sub(1)))).send().expect("watch");
    assert_eq!(at_once.status(), StatusCode::OK);

    let quiet = Agent::start(&["--sample-interval", "1h"]).expect("agent starts");
    let http = client(&quiet);
    let body = http.get(quiet.url("/status")).send().and_then(|r| r.bytes()).expect("GET");
    let version = version_of(&body);
    let timed_out = http.get(quiet.url(&format!("/status?watch=true&since={version}&timeoutSeconds=1"))).send().expect("watch");
    assert_eq!(timed_out.status(), StatusCode::NOT_MODIFIED, "no change within the timeout");
    assert!(timed_out.headers().contains_key("etag"));

    let bad = http.get(quiet.url("/status?watch=maybe")).send().expect("GET");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.text().expect("body").contains("watch"));
}

#[test]
fn health_readiness_and_metrics() {
    let agent = Agent::start(&[]).expect("agent starts");
    let http = client(&agent);
    assert_eq!(http.get(agent.url("/healthz")).send().expect("healthz").status(), StatusCode::OK);
    assert_eq!(http.get(agent.url("/readyz")).send().expect("readyz").status(), StatusCode::OK);
    let metrics = http.get(agent.url("/metrics")).send().and_then(|r| r.text()).expect("metrics");
    for needle in [
        "wasmlet_node_capacity{resource=\"cpu\"}",
        "wasmlet_node_capacity{resource=\"memory\"}",
        "wasmlet_node_condition{condition=\"Ready\",status=\"True\"} 1",
        "wasmlet_node_condition{condition=\"MemoryPressure\",status=\"False\"} 1",
        "wasmlet_node_memory_bytes{state=\"available\"}",
        "wasmlet_node_pids{state=\"max\"}",
        "wasmlet_node_pressure_available",
    ] {
        assert!(metrics.contains(needle), "/metrics has {needle}:\n{metrics}");
    }
    if std::path::Path::new("/proc/pressure/memory").exists() {
        assert!(metrics.contains("wasmlet_node_pressure_percent{resource=\"memory\",kind=\"some\",window=\"10s\"}"), "{metrics}");
    }
}

#[test]
fn readiness_fails_with_the_reason_when_the_data_dir_is_not_writable() {
    let parent = tempfile::tempdir().expect("tempdir");
    let file = parent.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let agent = Agent::start(&["--data-dir", file.to_str().expect("utf-8 path")]).expect("agent starts");
    let response = client(&agent).get(agent.url("/readyz")).send().expect("readyz");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = response.text().expect("body");
    assert!(text.contains("DataDirNotWritable") && text.contains("not-a-dir"), "{text}");
}

#[test]
fn sigterm_stops_the_agent_gracefully_even_with_an_open_watch() {
    let mut agent = Agent::start(&["--sample-interval", "1h"]).expect("agent starts");
    let url = agent.url("/status?watch=true&timeoutSeconds=30");
    let http = client(&agent);
    let watcher = std::thread::spawn(move || http.get(url).send().map(|r| r.status()));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = agent.terminate(Duration::from_secs(10)).expect("stops after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let watched = watcher.join().expect("watcher thread");
    assert!(matches!(watched, Ok(StatusCode::SERVICE_UNAVAILABLE)) || watched.is_err(), "{watched:?}");
    assert!(agent.log_text().contains("agent stopped"), "{}", agent.log_text());
}
