//! A fleet of mixed versions, attacked from both sides of the protocol's
//! version 3 (isolation modes). Older agents refuse fields they do not know,
//! and with one such field their whole assignment: the real master is sent
//! registrations as agents of versions 1, 2 and 3 would send them (and by a
//! version 2 node that claims process isolation it cannot have), and what
//! each gets back is read field by field. Older masters refuse the new status
//! fields likewise: the real agent is pointed at a master that speaks version
//! 1 or 2 and refuses, as those do, every field newer than its version.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use reqwest::Method as HttpMethod;
use serde_json::{Value, json};
use wasmlet_api::protocol::{AssignedInstance, Assignment, PROTOCOL_VERSION, version_3_keys};
use wasmlet_api::{Instance, InstanceSpec, Workload};
use wasmlet_tests::{Agent, Master, bin, example, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

/// A node status as an agent reports it: Ready, room for instances, and
/// `runtime` as given.
fn ready_status(runtime: Value) -> Value {
    let now = chrono::Utc::now();
    let resources = json!({"cpu": "4", "memory": "8Gi", "ephemeralStorage": "10Gi", "instances": 20});
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "runtime": runtime,
    })
}

/// Registers `name` with the join token as an agent of `version` (None: version 1 sends none).
fn register(master: &Master, name: &str, version: Option<u32>, runtime: Value) -> Value {
    let mut body = json!({"name": name, "labels": {"fleet": name}, "status": ready_status(runtime)});
    if let Some(version) = version {
        body["protocolVersion"] = json!(version);
    }
    let response = master.client_with(&master.join_token).build().expect("client").post(master.api("/nodes/register")).json(&body).send();
    let response = response.expect("an answer");
    let status = response.status();
    let answer: Value = response.json().expect("JSON");
    assert_eq!(status, StatusCode::OK, "{name}: {answer}");
    answer
}

/// `method path` with `credential`, as the node would; the JSON answer.
fn as_node(master: &Master, credential: &str, method: HttpMethod, path: &str, body: Option<Value>) -> Value {
    let client = master.client_with(credential).build().expect("client");
    let mut request = client.request(method, master.api(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().expect("an answer");
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().expect("JSON")
}

fn create(master: &Master, name: &str, extra: &str) {
    let text = workload_manifest(name, "sensor", "daemon", extra);
    let workload: Workload = wasmlet_api::from_yaml(&text).expect("manifest");
    let (status, body) = master.send_json(HttpMethod::POST, "/workloads", &workload).expect("POST /workloads");
    assert!(status == 201 || status == 200, "{name}: {status}: {body}");
}

/// The name of the instance of `workload` the master placed on `node`.
fn placed_on(master: &Master, workload: &str, node: &str) -> String {
    wait_for(WAIT, &format!("{workload} placed on {node}"), || {
        master.instances().into_iter().find(|i| i.spec.workload == workload && i.spec.node == node).map(|i| i.metadata.name)
    })
}

/// The workloads of the instances in an assignment, by instance name.
fn assigned(assignment: &Value) -> Vec<(String, Value)> {
    let instances = assignment["instances"].as_array().expect("instances");
    instances.iter().map(|a| (a["instance"]["metadata"]["name"].as_str().unwrap_or_default().to_string(), a["workload"].clone())).collect()
}

#[test]
fn an_older_agent_is_never_sent_what_it_refuses() {
    // Leases are renewed by hand here: a long grace keeps the nodes Ready meanwhile.
    let master = Master::start(&["--node-grace-period", "60s", "--lost-after", "120s"]).expect("master starts");
    master.upload_example("sensor").expect("upload");
    let offers = offers_process();
    let quiet = json!({"allocator": "on-demand", "allocatorReason": "test"});

    let ancient = register(&master, "ancient", None, quiet.clone());
    assert!(ancient.get("protocolVersion").is_none(), "a version 1 agent refuses the field: {ancient}");
    let old = register(&master, "old", Some(2), quiet);
    assert_eq!(old["protocolVersion"], json!(PROTOCOL_VERSION), "{old}");
    // A version 2 node claiming process isolation: no real agent of that version can, but a node may say anything.
    let liar = register(&master, "liar", Some(2), offers.clone());
    let new = register(&master, "new", Some(3), offers);
    let credential = |answer: &Value| answer["credential"].as_str().expect("a credential").to_string();

    create(&master, "plain-old", "  nodeSelector: {fleet: old}\n  isolation: in-process\n");
    create(&master, "proc-old", "  nodeSelector: {fleet: old}\n  isolation: process\n  resources:\n    limits: {cpu: 200m}\n");
    create(&master, "proc-liar", "  nodeSelector: {fleet: liar}\n  isolation: process\n");
    create(&master, "plain-liar", "  nodeSelector: {fleet: liar}\n  isolation: in-process\n");
    create(&master, "proc-new", "  nodeSelector: {fleet: new}\n  isolation: process\n  resources:\n    limits: {cpu: 200m}\n");

    // The scheduler keeps a process-mode workload off a node that does not offer it, and says why.
    let refused = wait_for(WAIT, "proc-old refused", || {
        master.events().into_iter().find(|e| e.reason == "FailedScheduling" && e.involved_object.name == "proc-old").map(|e| e.message)
    });
    assert!(refused.contains("0/4 nodes available") && refused.contains("1 process isolation not offered"), "{refused}");
    assert!(!master.instances().iter().any(|i| i.spec.workload == "proc-old"), "nothing of proc-old is placed");

    // Version 2: the in-process instance, without the field; nothing else of version 3 either.
    let plain = placed_on(&master, "plain-old", "old");
    let assignment = as_node(&master, &credential(&old), HttpMethod::GET, "/nodes/old/assignment", None);
    assert_eq!(version_3_keys(&assignment), Vec::<String>::new(), "{assignment}");
    assert_eq!(assigned(&assignment).into_iter().map(|(name, _)| name).collect::<Vec<_>>(), [plain]);
    // What the agent of version 2 decodes it as: a workload that names no mode.
    let decoded: Assignment = serde_json::from_value(assignment).expect("an assignment");
    assert_eq!(decoded.instances[0].workload.spec.isolation, None);

    // A node of version 2 that claims process isolation is not believed: it could not be sent such an instance.
    let refused = wait_for(WAIT, "proc-liar refused", || {
        master.events().into_iter().find(|e| e.reason == "FailedScheduling" && e.involved_object.name == "proc-liar").map(|e| e.message)
    });
    assert!(refused.contains("1 process isolation not offered"), "{refused}");
    let kept = placed_on(&master, "plain-liar", "liar");
    let assignment = as_node(&master, &credential(&liar), HttpMethod::GET, "/nodes/liar/assignment", None);
    assert_eq!(version_3_keys(&assignment), Vec::<String>::new(), "{assignment}");
    let names: Vec<String> = assigned(&assignment).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, std::slice::from_ref(&kept));

    // Version 3: every field, as given.
    let isolated = placed_on(&master, "proc-new", "new");
    let assignment = as_node(&master, &credential(&new), HttpMethod::GET, "/nodes/new/assignment", None);
    let sent = assigned(&assignment);
    assert_eq!(sent.len(), 1, "{assignment}");
    assert_eq!(sent[0].0, isolated);
    assert_eq!(sent[0].1["spec"]["isolation"], json!("process"), "{assignment}");
    assert_eq!(sent[0].1["spec"]["resources"]["limits"]["cpu"], json!("200m"), "{assignment}");

    // The master names its version in lease answers to version 3 agents only: version 2 ones refuse the field.
    let lease = |answer: &Value, name: &str| {
        as_node(&master, &credential(answer), HttpMethod::PUT, &format!("/nodes/{name}/lease"), Some(json!({"assignmentRevision": 0})))
    };
    assert!(lease(&old, "old").get("protocolVersion").is_none());
    assert!(lease(&ancient, "ancient").get("protocolVersion").is_none());
    assert_eq!(lease(&new, "new")["protocolVersion"], json!(PROTOCOL_VERSION));

    // What people read: the workload's mode and limit, the modes each node offers.
    let page = wasmlet(&master, &["describe", "workload", "proc-old"]);
    assert!(page.contains("Isolation:          process\n") && page.contains("  cpu:      200m\n"), "{page}");
    let page = wasmlet(&master, &["describe", "node", "new"]);
    assert!(page.contains("  Isolation:         in-process (default), process\n"), "{page}");
    let page = wasmlet(&master, &["describe", "node", "old"]);
    assert!(!page.contains("Isolation"), "an agent older than isolation modes says nothing of them: {page}");

    // Node `new` is downgraded to an agent of version 2 (claiming process isolation still) with its
    // process-mode instance placed: the master withholds that instance rather than send what the agent refuses.
    let body = json!({"name": "new", "labels": {"fleet": "new"}, "status": ready_status(offers_process()), "protocolVersion": 2});
    as_node(&master, &credential(&new), HttpMethod::POST, "/nodes/register", Some(body));
    let assignment = as_node(&master, &credential(&new), HttpMethod::GET, "/nodes/new/assignment", None);
    assert_eq!(assigned(&assignment), Vec::new(), "{isolated} is withheld: {assignment}");
    assert!(master.instances().iter().any(|i| i.metadata.name == isolated && i.spec.node == "new"), "and stays placed there");
    assert!(lease(&new, "new").get("protocolVersion").is_none(), "nor does the master name its version to it any more");
    // Upgraded again, it is sent the instance.
    let body = json!({"name": "new", "labels": {"fleet": "new"}, "status": ready_status(offers_process()), "protocolVersion": 3});
    as_node(&master, &credential(&new), HttpMethod::POST, "/nodes/register", Some(body));
    let assignment = as_node(&master, &credential(&new), HttpMethod::GET, "/nodes/new/assignment", None);
    assert_eq!(assigned(&assignment).into_iter().map(|(name, _)| name).collect::<Vec<_>>(), [isolated]);
}

/// The runtime of a node that offers both isolation modes.
fn offers_process() -> Value {
    json!({"allocator": "on-demand", "allocatorReason": "test", "isolation": ["in-process", "process"], "defaultIsolation": "in-process"})
}

/// `wasmlet ARGS` as the master's admin; its output, which must be a success.
fn wasmlet(master: &Master, args: &[&str]) -> String {
    let config = master.cli_config(master.data_dir.path());
    let o = std::process::Command::new(bin("wasmlet"))
        .args(args)
        .env("WASMLETCONFIG", config)
        .env("NO_COLOR", "1")
        .env_remove("WASMLET_MASTER")
        .env_remove("WASMLET_TOKEN")
        .env_remove("WASMLET_CA")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("wasmlet runs");
    assert!(o.status.success(), "wasmlet {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A master of an older protocol version, as far as an agent can tell: it
/// refuses (400, naming the field, as serde does) every message with a field
/// newer than its version, answers the rest, and assigns one sensor instance.
struct OlderMaster {
    url: String,
    state: Arc<OlderState>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct OlderState {
    /// The protocol version it speaks: 1 or 2, or 3 once "upgraded".
    version: AtomicU32,
    node: String,
    module: Vec<u8>,
    assignment: Value,
    /// Every message the agent sent: path, body, accepted.
    received: Mutex<Vec<(String, Value, bool)>>,
}

impl OlderState {
    /// The field a master of this version does not know, if the body has one.
    fn unknown_field(&self, path: &str, body: &Value) -> Option<String> {
        let version = self.version.load(Ordering::SeqCst);
        if version < 2 && path.ends_with("/register") && body.get("protocolVersion").is_some() {
            return Some("protocolVersion".into());
        }
        if version < 3 {
            return version_3_keys(body).into_iter().next();
        }
        None
    }

    async fn answer(self: Arc<Self>, method: Method, uri: Uri, body: Bytes) -> Response {
        let path = uri.path().to_string();
        let query = uri.query().unwrap_or_default().to_string();
        let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
        if let Some(field) = self.unknown_field(&path, &body) {
            self.received.lock().expect("lock").push((path, body, false));
            let message = format!("the message cannot be decoded: unknown field `{field}`, expected one of …");
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"reason": "Invalid", "message": message}))).into_response();
        }
        if method != Method::GET || path.ends_with("/register") {
            self.received.lock().expect("lock").push((path.clone(), body, true));
        }
        let named = (self.version.load(Ordering::SeqCst) >= 3).then_some(3);
        let watching_current = query.contains("watch=true") && query.contains("since=1");
        match (method.as_str(), path.as_str()) {
            ("POST", "/api/v1/nodes/register") => {
                let mut answer = json!({
                    "node": wasmlet_api::Node::new(&self.node),
                    "credential": "abc123.abcdefghijklmnopqrstuvwxyz012345",
                    "masterToken": "older-master",
                    "heartbeatInterval": "200ms",
                    "statusReportInterval": "1s",
                    "lostAfter": "15s",
                });
                if let Some(version) = named {
                    answer["protocolVersion"] = json!(version);
                }
                axum::Json(answer).into_response()
            }
            ("PUT", p) if p.ends_with("/lease") => {
                let mut answer = json!({"assignmentRevision": 1});
                if let Some(version) = named {
                    answer["protocolVersion"] = json!(version);
                }
                axum::Json(answer).into_response()
            }
            ("PUT", p) if p.ends_with("/instances/status") => StatusCode::NO_CONTENT.into_response(),
            ("PUT", p) if p.ends_with("/status") => axum::Json(json!({})).into_response(),
            ("GET", p) if p.ends_with("/assignment") || p == "/api/v1/endpoints" => {
                if watching_current {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return StatusCode::NOT_MODIFIED.into_response();
                }
                match p.ends_with("/assignment") {
                    true => axum::Json(self.assignment.clone()).into_response(),
                    false => axum::Json(json!({"revision": 1, "items": []})).into_response(),
                }
            }
            ("GET", p) if p.starts_with("/api/v1/modules/") => self.module.clone().into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

impl OlderMaster {
    fn start(version: u32, node: &str) -> OlderMaster {
        let (path, digest) = example("sensor");
        let module = std::fs::read(path).expect("sensor.wasm");
        let workload: Workload =
            wasmlet_api::from_yaml(&workload_manifest("sensor", "sensor", "daemon", "  args: [\"--interval\", \"200\"]\n"))
                .expect("manifest");
        assert_eq!(workload.spec.module.digest, digest);
        let instance = Instance::new(format!("sensor-{node}"), InstanceSpec { workload: "sensor".into(), node: node.into(), epoch: 1 });
        let assignment = serde_json::to_value(Assignment { revision: 1, instances: vec![AssignedInstance { instance, workload }] })
            .expect("an assignment");
        let state = Arc::new(OlderState {
            version: AtomicU32::new(version),
            node: node.to_string(),
            module,
            assignment,
            received: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let serving = state.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| serving.clone().answer(method, uri, body));
        runtime.spawn(async move { axum::serve(listener, app).await });
        OlderMaster { url, state, runtime: Some(runtime) }
    }

    fn received(&self) -> Vec<(String, Value, bool)> {
        self.state.received.lock().expect("lock").clone()
    }

    /// Whether the agent reported its instance Running, in a message the master accepted.
    fn saw_running(&self) -> bool {
        self.received().iter().any(|(path, body, accepted)| {
            *accepted
                && path.ends_with("/instances/status")
                && body["updates"].as_array().into_iter().flatten().any(|u| u["status"]["phase"] == "Running")
        })
    }
}

impl Drop for OlderMaster {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn join_older(master: &OlderMaster, name: &str) -> Agent {
    let join = format!("wasmlet-join:{}:abc123.{}", "0".repeat(64), "a".repeat(32));
    Agent::start(&["--master", &master.url, "--insecure-http", "--join-token", &join, "--name", name, "--sample-interval", "300ms"])
        .expect("agent starts")
}

#[test]
fn an_agent_speaks_an_older_masters_version() {
    let (v1, v2) = (OlderMaster::start(1, "edge-v1"), OlderMaster::start(2, "edge-v2"));
    let (agent_v1, agent_v2) = (join_older(&v1, "edge-v1"), join_older(&v2, "edge-v2"));
    for (master, agent) in [(&v1, &agent_v1), (&v2, &agent_v2)] {
        wait_for(WAIT, "the instance reported Running", || master.saw_running().then_some(()));
        let received = master.received();
        // Nothing the master accepted has a field it does not know: every refusal came before the registration.
        for (path, body, accepted) in &received {
            if *accepted {
                assert_eq!(master.state.unknown_field(path, body), None, "{path}: {body}");
            }
        }
        let registered = received.iter().position(|(path, _, accepted)| *accepted && path.ends_with("/register")).expect("a registration");
        assert!(received[registered..].iter().all(|(_, _, accepted)| *accepted), "nothing refused once registered: {received:?}");
        // The agent's own API speaks its own version, whatever the master's.
        let own: Value = agent.get_json("/status").expect("the agent's status");
        let has_version_3 = !version_3_keys(&own).is_empty();
        let refusals = received[..registered].len();
        let version = master.state.version.load(Ordering::SeqCst);
        match version {
            // The newest version (protocolVersion refused), then 1.
            1 => {
                assert_eq!(refusals, 1, "{received:?}");
                assert!(received[registered].1.get("protocolVersion").is_none(), "{:?}", received[registered]);
                assert!(agent.log_text().contains("no renewals"), "the agent says what it gives up");
            }
            // Refused only for the fields of version 3, when the agent has any to report.
            _ => {
                assert_eq!(refusals, usize::from(has_version_3), "{received:?}");
                assert_eq!(received[registered].1["protocolVersion"], json!(PROTOCOL_VERSION), "the agent still says what it speaks");
            }
        }
    }

    // The master is upgraded under the running agent: its lease answers name version 3, and the agent follows;
    // rolled back, they name none, and the agent speaks version 2 again.
    let changed_to = |version: u32| {
        let (now, was) = (format!("\"protocol\":{version}"), format!("\"was\":{}", 5 - version));
        agent_v2
            .log_text()
            .lines()
            .any(|l| l.contains("the master speaks another protocol version now") && l.contains(&now) && l.contains(&was))
    };
    v2.state.version.store(3, Ordering::SeqCst);
    wait_for(WAIT, "the agent to learn of the upgrade", || changed_to(3).then_some(()));
    let since = v2.received().len();
    v2.state.version.store(2, Ordering::SeqCst);
    wait_for(WAIT, "the agent to learn of the rollback", || changed_to(2).then_some(()));
    // The rolled-back master reads what the agent sends: its node and its instance reported again.
    for what in ["/status", "/instances/status"] {
        wait_for(WAIT, &format!("{what} accepted after the rollback"), || {
            let received = v2.received();
            let reported = received[since..].iter().any(|(path, body, accepted)| {
                *accepted && path.ends_with(what) && (what != "/status" || !path.ends_with("/instances/status")) && body.is_object()
            });
            reported.then_some(())
        });
    }
}
