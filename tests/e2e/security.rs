//! Who gets in, with TLS on: joins that succeed and joins that fail (wrong
//! CA fingerprint, another cluster's token, expired, revoked, unknown), what
//! each role may do (node A cannot touch node B, a viewer cannot write, no
//! token gets a bare 401), the audit log, revoking a node's credential, and
//! the agent's own API.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use reqwest::Method;
use reqwest::StatusCode;
use wasmlet_tests::{Agent, Master, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn join(master: &Master, name: &str, token: &str) -> Agent {
    Agent::start(&["--master", &master.url, "--join-token", token, "--name", name, "--sample-interval", "500ms"]).expect("agent starts")
}

fn wait_ready(master: &Master, name: &str) {
    wait_for(WAIT, &format!("node {name} Ready"), || master.nodes().into_iter().find(|n| n.metadata.name == name && n.is_ready()));
}

/// The agent's node credential, from its data dir (written once the registration's answer arrived,
/// which may be just after the master lists the node).
fn credential(agent: &Agent) -> String {
    let path = agent.data_dir.path().join("credential.json");
    let text = wait_for(WAIT, "the agent to save its credential", || std::fs::read_to_string(&path).ok());
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    value["token"].as_str().expect("token").to_string()
}

/// Waits until the agent logs a line containing `needle` and returns that line.
fn logged(agent: &Agent, needle: &str) -> String {
    wait_for(WAIT, &format!("the agent to log `{needle}`"), || agent.log_text().lines().find(|l| l.contains(needle)).map(String::from))
}

/// The audit log's records.
fn audit(master: &Master) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(master.data_dir.path().join("audit.log")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("an audit line is JSON")).collect()
}

fn create_token(master: &Master, role: &str, ttl: &str) -> String {
    let out = master.command(&["token", "create", "--role", role, "--ttl", ttl, "--description", "test"]);
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().next().expect("the token").to_string()
}

#[test]
fn a_node_joins_with_a_good_token_and_keeps_its_credential_private() {
    let master = Master::start(&[]).expect("master starts");
    for file in ["admin.token", "join.token", "pki/ca.key", "pki/ca.crt", "audit.log"] {
        let mode = std::fs::metadata(master.data_dir.path().join(file)).expect(file).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} is readable by the master only");
    }
    assert!(master.join_token.starts_with("wasmlet-join:"), "{}", master.join_token);
    let agent = join(&master, "good", &master.join_token);
    wait_ready(&master, "good");
    // The credential is a node token, not the join token.
    let credential = credential(&agent);
    let mode = std::fs::metadata(agent.data_dir.path().join("credential.json")).expect("credential").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!master.join_token.ends_with(&credential));
    let tokens = String::from_utf8_lossy(&master.command(&["token", "list"]).stdout).into_owned();
    let id = credential.split('.').next().expect("id");
    assert!(tokens.lines().any(|l| l.starts_with(id) && l.contains("node:good") && l.contains("valid")), "{tokens}");
    // The agent's API is served over TLS with a certificate of the node CA (the harness trusts only that CA).
    assert!(agent.api.starts_with("https://"), "{}", agent.api);
    let status: serde_json::Value = wait_for(WAIT, "the agent's API over TLS", || agent.get_json("/status").ok());
    assert_eq!(status["metadata"]["name"], "good");
    // Logs and live usage go from the master to the agent over TLS with the master's token.
    let live = master.client().get(master.api("/nodes/good/live")).send().expect("live");
    assert_eq!(live.status(), StatusCode::OK);
}

#[test]
fn joins_fail_with_a_precise_reason_and_never_reach_a_master_of_another_cluster() {
    let master = Master::start(&[]).expect("master starts");
    let other = Master::start(&[]).expect("another cluster's master starts");
    let secret = master.join_token.rsplit(':').next().expect("id.secret");

    // A fingerprint that is not this cluster's CA: refused before anything is sent.
    let wrong = format!("wasmlet-join:{}:{secret}", "ab".repeat(32));
    let agent = join(&master, "wrong-fingerprint", &wrong);
    let line = logged(&agent, "does not hold the cluster CA the join token names");
    assert!(line.contains(&"ab".repeat(32)), "{line}");
    // Another cluster's token, used against this master: the same refusal.
    let foreign = join(&master, "foreign", &other.join_token);
    logged(&foreign, "does not hold the cluster CA the join token names");
    let registrations = audit(&master).into_iter().filter(|r| r["object"] == "/api/v1/nodes/register").count();
    assert_eq!(registrations, 0, "no registration ever reached the master");

    // Expired, revoked and unknown tokens reach the master and get a one-line reason.
    let expiring = create_token(&master, "join", "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let expired = join(&master, "expired", &expiring);
    let line = logged(&expired, "the master refused the join token");
    assert!(line.contains("expired at"), "{line}");

    let revoked_token = create_token(&master, "join", "1h");
    let id = revoked_token.rsplit(':').next().and_then(|t| t.split('.').next()).expect("id");
    let out = master.command(&["token", "revoke", id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked = join(&master, "revoked", &revoked_token);
    let line = logged(&revoked, "the master refused the join token");
    assert!(line.contains("was revoked"), "{line}");

    let fingerprint = master.join_token.split(':').nth(1).expect("fingerprint");
    let unknown = join(&master, "unknown", &format!("wasmlet-join:{fingerprint}:zzzzzz.{}", "a".repeat(32)));
    let line = logged(&unknown, "the master refused the join token");
    assert!(line.contains("not known to this cluster"), "{line}");

    let names: Vec<String> = master.nodes().into_iter().map(|n| n.metadata.name).collect();
    assert!(names.is_empty(), "no node joined: {names:?}");
    // A malformed token stops the agent at once, naming the flag.
    let malformed = Agent::start(&["--master", &master.url, "--join-token", "letmein"]);
    let error = malformed.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("--join-token") && error.contains("not a join token"), "{error}");
}

#[test]
fn each_role_reaches_only_what_it_may_and_every_change_is_audited() {
    let master = Master::start(&[]).expect("master starts");
    let a = join(&master, "node-a", &master.join_token);
    let _b = join(&master, "node-b", &master.join_token);
    wait_ready(&master, "node-a");
    wait_ready(&master, "node-b");
    let node_a = master.client_with(&credential(&a)).build().expect("client");
    let send = |client: &reqwest::blocking::Client, method: Method, path: &str, body: serde_json::Value| {
        let r = client.request(method, master.api(path)).json(&body).send().expect("answer");
        (r.status(), r.text().unwrap_or_default())
    };

    // Node A: its own lease and Node, not node B's.
    assert_eq!(send(&node_a, Method::PUT, "/nodes/node-a/lease", serde_json::json!({"assignmentRevision": 0})).0, StatusCode::OK);
    assert_eq!(node_a.get(master.api("/nodes/node-a")).send().expect("get").status(), StatusCode::OK);
    let (status, body) = send(&node_a, Method::PUT, "/nodes/node-b/status", serde_json::json!({}));
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("node:node-a") && body.contains("/nodes/node-b/status"), "{body}");
    for path in ["/nodes/node-b/assignment", "/nodes/node-b", "/nodes", "/workloads", "/tokens"] {
        assert_eq!(node_a.get(master.api(path)).send().expect("get").status(), StatusCode::FORBIDDEN, "node A reads {path}");
    }
    assert_eq!(send(&node_a, Method::PUT, "/nodes/node-b/lease", serde_json::json!({"assignmentRevision": 0})).0, StatusCode::FORBIDDEN);
    assert_eq!(send(&node_a, Method::DELETE, "/nodes/node-b", serde_json::Value::Null).0, StatusCode::FORBIDDEN);
    // A module no instance of node A uses.
    let digest = master.upload_example("hello").expect("upload");
    let (status, body) = {
        let r = node_a.get(master.api(&format!("/modules/{digest}"))).send().expect("get");
        (r.status(), r.text().unwrap_or_default())
    };
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("no instance assigned to node node-a"), "{body}");

    // A viewer reads everything but cannot write.
    let viewer = master.client_with(&create_token(&master, "viewer", "1h")).build().expect("client");
    assert_eq!(viewer.get(master.api("/nodes")).send().expect("get").status(), StatusCode::OK);
    assert_eq!(viewer.get(master.url.clone() + "/metrics").send().expect("get").status(), StatusCode::OK);
    let workload = serde_json::json!({"apiVersion": "wasmlet.io/v1", "kind": "Workload", "metadata": {"name": "w"},
        "spec": {"type": "job", "module": {"source": "hello.wasm", "digest": digest}}});
    assert_eq!(send(&viewer, Method::POST, "/workloads", workload.clone()).0, StatusCode::FORBIDDEN);
    assert_eq!(send(&viewer, Method::POST, "/nodes/node-a/cordon", serde_json::Value::Null).0, StatusCode::FORBIDDEN);
    assert_eq!(viewer.get(master.api("/tokens")).send().expect("get").status(), StatusCode::FORBIDDEN);
    let (status, _) = send(&master.client(), Method::POST, "/workloads", workload);
    assert_eq!(status, StatusCode::CREATED);

    // No token, or a made-up one: 401 and nothing about the cluster.
    let anonymous = master.anonymous().build().expect("client");
    let response = anonymous.get(master.api("/nodes")).send().expect("get");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.text().unwrap_or_default();
    assert!(!body.contains("node-a") && body.contains("authentication required"), "{body}");
    let forged = master.client_with(&format!("abcdef.{}", "x".repeat(32))).build().expect("client");
    assert_eq!(forged.delete(master.api("/workloads/w")).send().expect("delete").status(), StatusCode::UNAUTHORIZED);
    // Plain HTTP to a TLS master does not work either.
    let plain = master.url.replace("https://", "http://");
    assert!(reqwest::blocking::get(format!("{plain}/api/v1/nodes")).map(|r| !r.status().is_success()).unwrap_or(true));

    let records = wait_for(WAIT, "the audit records", || {
        let records = audit(&master);
        records.iter().any(|r| r["user"] == "anonymous" && r["verb"] == "DELETE").then_some(records)
    });
    let has = |user: &str, verb: &str, object: &str, result: &str| {
        records.iter().any(|r| r["user"] == user && r["verb"] == verb && r["object"] == object && r["result"] == result)
    };
    assert!(has("join", "POST", "/api/v1/nodes/register", "allowed"), "registrations are audited");
    assert!(has("admin", "POST", "/api/v1/workloads", "allowed"), "the admin's create");
    assert!(has("admin", "POST", "/api/v1/tokens", "allowed"), "token creation");
    assert!(has("viewer", "POST", "/api/v1/workloads", "denied"), "the viewer's refused create");
    assert!(has("node:node-a", "PUT", "/api/v1/nodes/node-b/status", "denied"), "node A's refused write");
    assert!(has("node:node-a", "GET", "/api/v1/nodes/node-b/assignment", "denied"), "refused reads too");
    assert!(has("anonymous", "GET", "/api/v1/nodes", "unauthenticated"));
    assert!(
        !records.iter().any(|r| r["object"].as_str().is_some_and(|o| o.ends_with("/lease")) && r["result"] == "allowed"),
        "leases are not audited"
    );
    assert!(
        records
            .iter()
            .all(|r| r["time"].is_string() && r["code"].is_u64() && r["source"].as_str().is_some_and(|s| s.starts_with("127.0.0.1:")))
    );
}

#[test]
fn revoking_a_node_credential_fails_its_heartbeats_and_the_node_goes_not_ready() {
    let master = Master::start(&[]).expect("master starts");
    let agent = join(&master, "revoked-node", &master.join_token);
    wait_ready(&master, "revoked-node");
    let id = credential(&agent).split('.').next().expect("id").to_string();
    let out = master.command(&["token", "revoke", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("node:revoked-node"));
    let line = logged(&agent, "the master refused this node's credential");
    assert!(line.contains("was revoked"), "{line}");
    wait_for(WAIT, "the node NotReady", || {
        master.nodes().into_iter().find(|n| n.metadata.name == "revoked-node" && !n.is_ready()).map(|_| ())
    });
    // The agent does not fall back to the join token: the operator revoked this node.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!master.nodes().into_iter().any(|n| n.metadata.name == "revoked-node" && n.is_ready()));
}

#[test]
fn the_agent_api_wants_a_token_and_a_read_token_reads_only_the_report() {
    let agent = Agent::start(&["--api-read-token", "poller-secret"]).expect("agent starts");
    let anonymous = reqwest::blocking::Client::new();
    assert_eq!(anonymous.get(agent.url("/healthz")).send().expect("healthz").status(), StatusCode::OK);
    for path in ["/status", "/metrics", "/instances", "/events"] {
        assert_eq!(anonymous.get(agent.url(path)).send().expect("get").status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let poller = wasmlet_tests::authorized("poller-secret").build().expect("client");
    assert_eq!(poller.get(agent.url("/status")).send().expect("get").status(), StatusCode::OK);
    assert_eq!(poller.get(agent.url("/metrics")).send().expect("get").status(), StatusCode::OK);
    assert_eq!(poller.get(agent.url("/instances")).send().expect("get").status(), StatusCode::UNAUTHORIZED);
    assert_eq!(agent.client().get(agent.url("/instances")).send().expect("get").status(), StatusCode::OK);
    let mode = std::fs::metadata(agent.data_dir.path().join("api.token")).expect("api.token").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Plain HTTP beyond loopback only when asked for, and then it shows.
    let refused = Agent::start(&["--api-addr", "0.0.0.0:0"]);
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("beyond loopback") && error.contains("--insecure-http"), "{error}");
    let insecure = Agent::start(&["--insecure-http"]).expect("agent starts");
    let status: serde_json::Value = insecure.get_json("/status").expect("status");
    assert_eq!(status["status"]["insecureHttp"], true);
}
