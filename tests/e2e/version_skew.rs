//! Version skew between a master and its agents, with both sides of the
//! protocol tolerant of fields they do not know (protocol version 4).
//!
//! A real master and a real agent talk through a proxy in the test that adds
//! unknown fields (scalars, objects, arrays, nested) to every JSON object of
//! every request and every answer, as peers of a newer version would: the
//! node registers, renews its lease and its credential, reports its status
//! and its instances, runs a daemon, a service and a module pulled from a
//! registry with credentials the master holds, and the service's endpoints
//! appear. Then registrations announcing versions this master does
//! not speak are refused, naming both sides' versions, and a real agent
//! refuses a master older than its own minimum.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use wasmlet_api::Workload;
use wasmlet_api::protocol::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use wasmlet_tests::registry::TestRegistry;
use wasmlet_tests::{Agent, Master, bin, example, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

/// Keys whose object is a user's map (labels, environment): a key added there is data, not a field.
const MAPS: [&str; 4] = ["labels", "annotations", "env", "nodeSelector"];

/// Adds the fields a newer peer might send to every object of `value` but the user's maps.
fn add_unknown_fields(value: &mut Value, parent_key: &str) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                add_unknown_fields(child, key);
            }
            if !MAPS.contains(&parent_key) {
                map.insert("futureScalar".into(), json!(42));
                map.insert("futureText".into(), json!("added by a newer peer"));
                map.insert("futureObject".into(), json!({"nested": {"deeper": [1, "two", {"three": 3.5}]}, "on": true}));
                map.insert("futureList".into(), json!([{"a": 1}, [null], "c"]));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| add_unknown_fields(item, "")),
        _ => {}
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// `PUT /api/v1/nodes/{name}/lease` → `PUT /nodes/*/lease`: the route, not the node.
fn route(method: &hyper::Method, path: &str) -> String {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    let parts: Vec<&str> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| match (parts.get(1), i) {
            (Some(&"nodes"), 2) if *part != "register" => "*",
            (Some(&"modules"), 2) => "*",
            (Some(&"nodes"), 4) if parts.get(3) == Some(&"registry-credentials") => "*",
            _ => part,
        })
        .collect();
    format!("{method} {}", parts.join("/"))
}

/// A proxy between an agent and its master that adds unknown fields to
/// every JSON body, both ways, and passes everything else through as it
/// comes: module bytes, long polls, streamed bodies and HTTP/1.1 upgrades.
struct SkewProxy {
    url: String,
    /// The routes whose request (`→ route`) or answer (`← route`) it rewrote.
    rewritten: Arc<Mutex<BTreeSet<String>>>,
    /// Every route it forwarded, rewritten or not.
    forwarded: Arc<Mutex<BTreeSet<String>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    rewritten: Arc<Mutex<BTreeSet<String>>>,
    forwarded: Arc<Mutex<BTreeSet<String>>>,
}

fn is_json(headers: &hyper::HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

impl ProxyState {
    /// The body, with unknown fields added when it is JSON (and its length set again).
    async fn rewrite(&self, headers: &mut hyper::HeaderMap, body: Incoming, what: String) -> Result<Body, hyper::Error> {
        if !is_json(headers) {
            return Ok(body.boxed());
        }
        let bytes = body.collect().await?.to_bytes();
        let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else { return Ok(full(bytes)) };
        add_unknown_fields(&mut value, "");
        let bytes = Bytes::from(serde_json::to_vec(&value).expect("JSON encodes"));
        headers.insert(CONTENT_LENGTH, bytes.len().into());
        self.rewritten.lock().expect("lock").insert(what);
        Ok(full(bytes))
    }

    async fn forward(self, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        match self.try_forward(request).await {
            Ok(response) => Ok(response),
            Err(e) => {
                let mut response = Response::new(full(Bytes::from(format!("proxy: {e}"))));
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                Ok(response)
            }
        }
    }

    async fn try_forward(&self, mut request: Request<Incoming>) -> anyhow::Result<Response<Body>> {
        let route = route(request.method(), request.uri().path());
        let client_upgrade = hyper::upgrade::on(&mut request);
        self.forwarded.lock().expect("lock").insert(route.clone());
        let stream = tokio::net::TcpStream::connect(&self.upstream).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection.with_upgrades());

        let (mut parts, body) = request.into_parts();
        let body = match parts.headers.contains_key(UPGRADE) {
            // An upgrade is passed through untouched: its bytes are another protocol's.
            true => body.boxed(),
            false => self.rewrite(&mut parts.headers, body, format!("→ {route}")).await?,
        };
        let mut answer = sender.send_request(Request::from_parts(parts, body)).await?;

        if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (client, server) = (client_upgrade, hyper::upgrade::on(&mut answer));
            tokio::spawn(async move {
                if let (Ok(client), Ok(server)) = (client.await, server.await) {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(server)).await;
                }
            });
            let (parts, _) = answer.into_parts();
            return Ok(Response::from_parts(parts, full(Bytes::new())));
        }
        let (mut parts, body) = answer.into_parts();
        let body = self.rewrite(&mut parts.headers, body, format!("← {route}")).await?;
        Ok(Response::from_parts(parts, body))
    }
}

impl SkewProxy {
    fn start(upstream: &str) -> SkewProxy {
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let state = ProxyState { upstream, rewritten: Arc::default(), forwarded: Arc::default() };
        let (rewritten, forwarded) = (state.rewritten.clone(), state.forwarded.clone());
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| state.clone().forward(request));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await;
                });
            }
        });
        SkewProxy { url, rewritten, forwarded, runtime: Some(runtime) }
    }

    fn rewritten(&self) -> BTreeSet<String> {
        self.rewritten.lock().expect("lock").clone()
    }

    fn forwarded(&self) -> BTreeSet<String> {
        self.forwarded.lock().expect("lock").clone()
    }
}

impl Drop for SkewProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Pushes the sensor example to `registry` as `team/sensor:1.0` with `wasmlet push`.
fn push_sensor(registry: &TestRegistry) {
    use std::io::Write as _;
    let (path, _) = example("sensor");
    let mut child = std::process::Command::new(bin("wasmlet"))
        .arg("push")
        .arg(&path)
        .arg(format!("{}/team/sensor:1.0", registry.host))
        .args(["--username", &registry.user, "--password-stdin", "--registry-ca-file"])
        .arg(&registry.ca_file)
        .env("HOME", registry.ca_file.parent().unwrap_or(std::path::Path::new("/nonexistent")))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wasmlet runs");
    child.stdin.take().expect("stdin").write_all(format!("{}\n", registry.password).as_bytes()).expect("password");
    let output = child.wait_with_output().expect("wasmlet ends");
    assert!(output.status.success(), "push: {}", String::from_utf8_lossy(&output.stderr));
}

fn create(master: &Master, text: &str) {
    let workload: Workload = wasmlet_api::from_yaml(text).expect("manifest");
    let (status, body) = master.send_json(reqwest::Method::POST, "/workloads", &workload).expect("POST /workloads");
    assert!(status == 201 || status == 200, "{status}: {body}");
}

#[test]
fn a_master_and_an_agent_keep_working_with_unknown_fields_in_every_message() {
    // A module in a registry, pulled with credentials the master holds and hands to the node for each pull.
    let registry = TestRegistry::start("team", "skew-s3cret").expect("registry starts");
    push_sensor(&registry);
    let ca = registry.ca_file.to_str().expect("utf-8");
    // A short credential lifetime: the agent renews it (at two thirds) within the test.
    let master = Master::start(&["--insecure-http", "--node-credential-ttl", "6s", "--registry-ca-file", ca]).expect("master starts");
    let proxy = SkewProxy::start(&master.url);
    master.upload_example("sensor").expect("upload sensor");
    master.upload_example("http-hello").expect("upload http-hello");
    let join = master.join_args();
    let agent = Agent::start(&[
        "--master",
        &proxy.url,
        join[2],
        join[3],
        "--insecure-http",
        "--name",
        "skewed",
        "--sample-interval",
        "300ms",
        "--module-ca-file",
        ca,
    ])
    .expect("agent starts");
    let held = json!({"metadata": {"name": "team"}, "registry": registry.host, "username": "team", "password": "skew-s3cret"});
    let (status, body) = master.send_json(reqwest::Method::POST, "/registry-credentials", &held).expect("POST /registry-credentials");
    assert_eq!(status, 201, "{body}");
    let pulled = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: pulled\nspec:\n  type: daemon\n  module:\n    oci: {}/team/sensor:1.0\n    credentials: team\n  args: [\"--interval\", \"200\"]\n",
        registry.host
    );
    create(&master, &pulled);

    create(&master, &workload_manifest("sensor", "sensor", "daemon", "  args: [\"--interval\", \"200\"]\n"));
    create(&master, &workload_manifest("hello", "http-hello", "service", "  route: {pathPrefix: /hello}\n"));
    for workload in ["sensor", "hello", "pulled"] {
        wait_for(WAIT, &format!("{workload} Running on the node, as the master sees it"), || {
            master
                .instances()
                .into_iter()
                .find(|i| i.spec.workload == workload && i.spec.node == "skewed" && i.status.phase == wasmlet_api::Phase::Running)
        });
    }
    let node = master.nodes().into_iter().find(|n| n.metadata.name == "skewed").expect("the node");
    assert!(node.is_ready(), "{node:?}");
    let spoken = wasmlet_api::protocol::PROTOCOL_VERSION.to_string();
    assert_eq!(node.metadata.annotations.get("wasmlet.io/agent-protocol"), Some(&spoken), "{node:?}");
    assert!(!node.metadata.labels.contains_key("futureScalar"), "labels are the user's: nothing was added there");

    // The service's endpoints: at the master, and served at the node's ingress.
    wait_for(WAIT, "the service's endpoints", || {
        let list: Value = master.get_json("/endpoints").ok()?;
        let items = list["items"].as_array()?.clone();
        items
            .iter()
            .any(|s| s["workload"] == "hello" && s["endpoints"].as_array().is_some_and(|e| e.iter().any(|e| e["node"] == "skewed")))
            .then_some(())
    });
    let answer = wait_for(WAIT, "the service answering at the node's ingress", || {
        let response = reqwest::blocking::get(format!("{}/hello", agent.ingress)).ok()?;
        response.status().is_success().then(|| response.text().unwrap_or_default())
    });
    assert!(!answer.is_empty());

    // The credential was renewed through the proxy, and the renewed one is used.
    wait_for(WAIT, "a credential renewal", || proxy.rewritten().contains("← POST /nodes/*/credential").then_some(()));
    wait_for(WAIT, "a heartbeat after the renewal", || {
        let renewed = agent.log_text().lines().any(|l| l.contains("renewed"));
        (renewed && proxy.rewritten().contains("← PUT /nodes/*/lease")).then_some(())
    });

    // The CLI reads a master's answers as tolerantly: with unknown fields in every object, it works.
    for args in
        [&["get", "nodes"][..], &["get", "instances", "-o", "wide"], &["describe", "node", "skewed"], &["describe", "workload", "hello"]]
    {
        let output = std::process::Command::new(bin("wasmlet"))
            .args(args)
            .env("WASMLET_MASTER", &proxy.url)
            .env("WASMLET_TOKEN", &master.admin_token)
            .env("WASMLETCONFIG", master.data_dir.path().join("no-cli-config.toml"))
            .env("NO_COLOR", "1")
            .env_remove("WASMLET_CA")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("wasmlet runs");
        let out = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "wasmlet {args:?}: {}{out}", String::from_utf8_lossy(&output.stderr));
        assert!(out.contains("skewed") || out.contains("hello"), "wasmlet {args:?}: {out}");
    }
    assert!(proxy.rewritten().contains("← GET /nodes"), "{:?}", proxy.rewritten());

    let rewritten = proxy.rewritten();
    for route in [
        "→ POST /nodes/register",
        "← POST /nodes/register",
        "→ PUT /nodes/*/lease",
        "← PUT /nodes/*/lease",
        "→ PUT /nodes/*/status",
        "← PUT /nodes/*/status",
        "← GET /nodes/*/assignment",
        "→ PUT /nodes/*/instances/status",
        "→ POST /nodes/*/credential",
        "← POST /nodes/*/credential",
        "← GET /endpoints",
        "← GET /nodes/*/registry-credentials/*",
    ] {
        assert!(rewritten.contains(route), "the proxy rewrote no {route}: {rewritten:?}");
    }
    let forwarded = proxy.forwarded();
    assert!(forwarded.contains("GET /modules/*"), "modules pass through as bytes: {forwarded:?}");
    // The agent's channel passed the proxy too, and the master asks the agent through it.
    assert!(forwarded.contains("GET /nodes/*/channel"), "the channel: {forwarded:?}");
    let via_channel = || master.metric("wasmlet_master_live_requests_total{via=\"channel\"}").unwrap_or(0.0);
    let before = via_channel();
    wait_for(WAIT, "a live request through the channel", || {
        let live = master.client().get(master.api("/nodes/skewed/live")).send().expect("an answer");
        (live.status().is_success() && via_channel() > before).then_some(())
    });
    // Nothing was refused: the agent never stepped down nor re-registered for a field.
    let log = agent.log_text();
    for refusal in ["unknown field", "older version", "cannot read", "heartbeat failed", "registering again"] {
        assert!(!log.contains(refusal), "the agent logged `{refusal}`: {log}");
    }
    assert!(!master.logs.lock().expect("log lock").iter().any(|l| l.contains("unknown field")), "the master refused nothing");
}

/// A registration as an agent speaking `min..=max` would send it; the status and the JSON answer.
fn register_speaking(master: &Master, name: &str, min: Option<u32>, max: u32) -> (u16, Value) {
    let now = chrono::Utc::now();
    let resources = json!({"cpu": "4", "memory": "8Gi", "ephemeralStorage": "10Gi", "instances": 20});
    let status = json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady", "message": "", "lastHeartbeatTime": now, "lastTransitionTime": now}],
    });
    let mut body = json!({"name": name, "status": status, "protocolVersion": max});
    if let Some(min) = min {
        body["minProtocolVersion"] = json!(min);
    }
    let client = master.client_with(&master.join_token).build().expect("client");
    let response = client.post(master.api("/nodes/register")).json(&body).send().expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().expect("JSON"))
}

#[test]
fn versions_that_do_not_meet_are_refused_naming_both_sides() {
    let master = Master::start(&["--insecure-http"]).expect("master starts");
    let ours = format!("this master speaks protocol {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}");

    // An agent newer than the master, whose range reaches down to it: served, at the master's version.
    let (status, answer) = register_speaking(&master, "newer", Some(1), PROTOCOL_VERSION + 5);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["protocolVersion"], json!(PROTOCOL_VERSION), "{answer}");

    // One that no longer speaks the master's version: the masters must be upgraded first.
    let (status, answer) = register_speaking(&master, "too-new", Some(PROTOCOL_VERSION + 3), PROTOCOL_VERSION + 5);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["reason"], "UnsupportedProtocolVersion", "{answer}");
    let expected =
        format!("this agent speaks protocol {} to {}; {ours}: upgrade the masters first", PROTOCOL_VERSION + 3, PROTOCOL_VERSION + 5);
    assert_eq!(answer["message"].as_str(), Some(expected.as_str()), "{answer}");

    // Version 0 is no version.
    let (status, answer) = register_speaking(&master, "zero", None, 0);
    assert_eq!((status, answer["reason"].as_str()), (400, Some("UnsupportedProtocolVersion")), "{answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(message.contains("protocol 0") && message.contains(&ours), "{message}");

    let names: Vec<String> = master.nodes().into_iter().map(|n| n.metadata.name).collect();
    assert_eq!(names, ["newer"], "a refused registration leaves no node behind");
}

/// A master that answers a registration and leases naming the protocol version it is set to.
struct NamingMaster {
    url: String,
    version: Arc<std::sync::atomic::AtomicU32>,
    registrations: Arc<std::sync::atomic::AtomicU32>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl NamingMaster {
    fn start(version: u32) -> NamingMaster {
        use std::sync::atomic::{AtomicU32, Ordering};
        let version = Arc::new(AtomicU32::new(version));
        let registrations = Arc::new(AtomicU32::new(0));
        let (named, counted) = (version.clone(), registrations.clone());
        let answer = move |method: axum::http::Method, uri: axum::http::Uri| {
            let (named, counted) = (named.load(Ordering::SeqCst), counted.clone());
            async move {
                use axum::response::IntoResponse;
                let path = uri.path();
                match (method.as_str(), path) {
                    ("POST", "/api/v1/nodes/register") => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        axum::Json(json!({
                            "node": wasmlet_api::Node::new("pinned"),
                            "credential": "abc123.abcdefghijklmnopqrstuvwxyz012345",
                            "masterToken": "naming-master",
                            "heartbeatInterval": "200ms",
                            "statusReportInterval": "1s",
                            "lostAfter": "15s",
                            "protocolVersion": named,
                        }))
                        .into_response()
                    }
                    ("PUT", p) if p.ends_with("/lease") => {
                        axum::Json(json!({"assignmentRevision": 0, "protocolVersion": named})).into_response()
                    }
                    ("PUT", p) if p.ends_with("/instances/status") => StatusCode::NO_CONTENT.into_response(),
                    ("PUT", p) if p.ends_with("/status") => axum::Json(wasmlet_api::Node::new("pinned")).into_response(),
                    ("GET", p) if p.ends_with("/assignment") => axum::Json(json!({"revision": 0, "instances": []})).into_response(),
                    ("GET", "/api/v1/endpoints") => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        axum::Json(json!({"revision": 0, "items": []})).into_response()
                    }
                    _ => StatusCode::NOT_FOUND.into_response(),
                }
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let app = axum::Router::new().fallback(answer);
        runtime.spawn(async move { axum::serve(listener, app).await });
        NamingMaster { url, version, registrations, runtime: Some(runtime) }
    }
}

impl Drop for NamingMaster {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[test]
fn an_agent_refuses_a_master_older_than_its_minimum_until_it_is_upgraded() {
    use std::sync::atomic::Ordering;
    let old = MIN_PROTOCOL_VERSION - 1;
    let master = NamingMaster::start(old);
    let join = format!("wasmlet-join:{}:abc123.{}", "0".repeat(64), "a".repeat(32));
    let agent =
        Agent::start(&["--master", &master.url, "--insecure-http", "--join-token", &join, "--name", "pinned"]).expect("agent starts");
    let refusal = format!("this master speaks protocol {old}; this agent speaks protocol {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}");
    let refused = |agent: &Agent| agent.log_text().lines().filter(|l| l.contains("\"ERROR\"") && l.contains(&refusal)).count();
    // Refused, said at error level naming both, and tried again (with back-off).
    wait_for(WAIT, "two refusals", || (refused(&agent) >= 2 && master.registrations.load(Ordering::SeqCst) >= 2).then_some(()));
    assert_eq!(agent.credential_field("token"), None, "nothing is kept from a master it cannot work with");

    // Upgraded: the agent registers and goes on.
    master.version.store(PROTOCOL_VERSION, Ordering::SeqCst);
    wait_for(WAIT, "registered with the upgraded master", || agent.log_text().contains("registered with the master").then_some(()));

    // Rolled back below the minimum under the running agent: noticed at the next heartbeat, refused again.
    let before = refused(&agent);
    master.version.store(old, Ordering::SeqCst);
    wait_for(WAIT, "refused after the rollback", || (refused(&agent) > before).then_some(()));
}

/// The proxy itself: an HTTP/1.1 upgrade (the channel an agent opens) passes
/// through untouched, its bytes copied both ways, while JSON is rewritten.
#[test]
fn the_proxy_passes_upgrades_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("a port");
    let upstream = format!("http://{}", listener.local_addr().expect("an address"));
    // An upstream that echoes what comes over an upgraded connection.
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|mut request: Request<Incoming>| async move {
                let upgraded = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgraded.await {
                        let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut read, &mut write).await;
                    }
                });
                let response = Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(UPGRADE, "echo")
                    .header(hyper::header::CONNECTION, "upgrade")
                    .body(Full::new(Bytes::new()))
                    .expect("a response");
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades());
        }
    });
    let proxy = SkewProxy::start(&upstream);
    let address = proxy.url.trim_start_matches("http://").to_string();
    let echoed = runtime.block_on(async move {
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("the proxy");
        let request = "GET /api/v1/nodes/n/channel HTTP/1.1\r\nHost: master\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("written");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.expect("the answer's head");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        stream.write_all(b"{\"not\":\"rewritten\"}").await.expect("written");
        let mut echoed = [0u8; 19];
        tokio::time::timeout(WAIT, stream.read_exact(&mut echoed)).await.expect("in time").expect("echoed");
        echoed
    });
    assert_eq!(&echoed, b"{\"not\":\"rewritten\"}");
    assert!(proxy.forwarded().contains("GET /nodes/*/channel"), "{:?}", proxy.forwarded());
    assert!(proxy.rewritten().is_empty(), "{:?}", proxy.rewritten());
    runtime.shutdown_background();
}
