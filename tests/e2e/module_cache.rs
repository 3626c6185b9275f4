//! The node's module cache: module bytes and compiled modules together on
//! disk within `--module-cache-size`, the least recently used going first,
//! what the node's instances need never.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use wasm_encoder::{CustomSection, Section};
use wasmlet_api::{Phase, Workload};
use wasmlet_tests::{Agent, Master, example, sha256, wait_for};

const WAIT: Duration = Duration::from_secs(60);
/// The agent's `--module-cache-size`.
const CAP: u64 = 10 << 20;

/// `sensor.wasm` made module `n` of its own, about 3 MiB large: a custom
/// section, which changes the digest but not what runs.
fn big_sensor(n: u8) -> Vec<u8> {
    let (path, _) = example("sensor");
    let mut bytes = std::fs::read(path).expect("the example");
    let filler = vec![n; 3 << 20];
    CustomSection { name: format!("wasmlet-cache-test-{n}").into(), data: filler.into() }.append_to(&mut bytes);
    bytes
}

/// What the files under `dir` hold, all of them.
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => disk_usage(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Uploads `bytes` and runs them as daemon workload `name`; returns their digest.
fn run(master: &Master, name: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let response = master.client().put(master.api(&format!("/modules/{digest}"))).body(bytes.to_vec()).send().expect("PUT");
    assert!(response.status().is_success(), "uploading {name}: {}", response.status());
    let text = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  type: daemon\n  module:\n    source: {name}.wasm\n    digest: {digest}\n  args: [\"--interval\", \"100\"]\n"
    );
    let workload: Workload = wasmlet_api::from_yaml(&text).expect("manifest");
    let (status, body) = master.send_json(Method::POST, "/workloads", &workload).expect("POST");
    assert_eq!(status, 201, "{body}");
    digest
}

/// The name of workload `name`'s instance, once it is Running.
fn running(master: &Master, name: &str) -> String {
    wait_for(WAIT, &format!("{name} Running"), || {
        master.instances().into_iter().find(|i| i.spec.workload == name && i.status.phase == Phase::Running).map(|i| i.metadata.name)
    })
}

/// With a 10 MiB cap and four modules of about 3.5 MiB each (bytes and
/// compiled code), run two at a time: each new one evicts what the deleted
/// one left, least recently used first, while the one still running keeps
/// running (and keeps its module); the cache's files never hold more than
/// the cap, and `/metrics` counts the evictions.
#[test]
fn a_module_cache_smaller_than_the_modules_keeps_what_runs_and_evicts_the_rest() {
    let master = Master::start(&[]).expect("master starts");
    let cap = CAP.to_string();
    let agent = Agent::start(&[
        "--master",
        &master.url,
        "--join-token",
        &master.join_token,
        "--name",
        "small",
        "--module-cache-size",
        &cap,
        "--sample-interval",
        "500ms",
    ])
    .expect("agent starts");
    let cache = agent.data_dir.path().join("cache");
    let kept = |digest: &str| cache.join("modules").join(format!("{}.wasm", digest.trim_start_matches("sha256:"))).exists();
    let evictions = || agent.metric("wasmlet_module_cache_evictions_total").expect("the evictions in /metrics");
    let output = |instance: &str| {
        let logs = agent.get_text(&format!("/instances/{instance}/logs")).unwrap_or_default();
        logs.lines().filter(|l| l.split(' ').nth(1) == Some("stdout")).count()
    };
    let within_cap = |when: &str| {
        let used = disk_usage(&cache);
        assert!(used <= CAP, "{when}: the cache holds {used} bytes, over its {CAP}");
        let counted = agent.metric("wasmlet_module_cache_bytes").expect("the cache's bytes in /metrics");
        assert_eq!(counted as u64, used, "{when}: /metrics counts what is on disk");
    };

    let digests: Vec<String> = (0..4).map(|n| sha256(&big_sensor(n))).collect();
    let mut instances = Vec::new();
    for n in 0..2 {
        run(&master, &format!("cache-{n}"), &big_sensor(n));
        instances.push(running(&master, &format!("cache-{n}")));
    }
    within_cap("two modules");
    assert_eq!(evictions(), 0.0, "two modules fit");
    assert!(kept(&digests[0]) && kept(&digests[1]));

    for n in 2..4 {
        let old = format!("cache-{}", n - 2);
        let deleted = master.client().delete(master.api(&format!("/workloads/{old}"))).send().expect("DELETE");
        assert!(deleted.status().is_success(), "{}", deleted.status());
        wait_for(WAIT, &format!("{old} gone from the node"), || agent.instance(&instances[n - 2]).is_none().then_some(()));
        assert!(kept(&digests[n - 2]), "{old}'s module stays while there is room for it");
        let previous = instances[n - 1].clone();
        let (before, printed) = (evictions(), output(&previous));

        run(&master, &format!("cache-{n}"), &big_sensor(n as u8));
        instances.push(running(&master, &format!("cache-{n}")));
        assert!(evictions() > before, "module {n} did not fit: something was evicted");
        assert!(!kept(&digests[n - 2]), "{old}'s module, the least recently used, was evicted");
        assert!(kept(&digests[n - 1]) && kept(&digests[n]), "the running instances' modules stay");
        within_cap(&format!("module {n}"));
        let still = agent.instance(&previous).expect("the earlier instance");
        assert_eq!((still.status.phase, still.status.restarts), (Phase::Running, 0), "{previous} runs on");
        wait_for(WAIT, &format!("{previous} printing on"), || (output(&previous) > printed).then_some(()));
    }
}
