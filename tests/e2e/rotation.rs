//! Certificates and credentials renewed while everything runs: with
//! lifetimes of seconds, a master and an agent go through several of them,
//! the certificates on the wire change, the node stays Ready, the master
//! still reaches the agent, and used-up or expired credentials are refused.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use wasmlet_api::Phase;
use wasmlet_tests::{Master, bin, wait_for, workload_manifest};

use crate::identity::{WAIT, credential, join, register, wait_ready};

/// The SHA-256 of the leaf certificate `url` presents, trusting `ca_pem`
/// only (a new connection each time), and how long it has left.
fn leaf_of(url: &str, ca_pem: &str) -> Option<(String, i64)> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).ok()?;
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .tls_info(true)
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let response = client.get(format!("{url}/healthz")).send().ok()?;
    let der = response.extensions().get::<reqwest::tls::TlsInfo>()?.peer_certificate()?.to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let left = cert.validity().not_after.timestamp() - chrono::Utc::now().timestamp();
    Some((wasmlet_tests::sha256(&der), left))
}

#[test]
fn certificates_and_credentials_are_renewed_while_the_cluster_runs() {
    let master = Master::start(&["--serving-certificate-ttl", "3s", "--node-credential-ttl", "3s"]).expect("master starts");
    let agent = join(&master, "rotating", &master.join_token, &[]);
    wait_ready(&master, "rotating");
    let first = credential(&agent);
    let nodes_ca = wait_for(WAIT, "the node CA", || agent.credential_field("nodesCaCertificate"));

    // Three of each on the wire and on disk: the master's certificate, the agent's, the credential.
    let (mut master_certs, mut agent_certs, mut credentials) = (HashSet::new(), HashSet::new(), HashSet::new());
    wait_for(Duration::from_secs(30), "three master certificates, agent certificates and credentials", || {
        if let Some((leaf, left)) = leaf_of(&master.url, &master.ca_pem) {
            assert!(left <= 3, "the master's certificate lives --serving-certificate-ttl: {left} s left");
            master_certs.insert(leaf);
        }
        if let Some((leaf, left)) = leaf_of(&agent.api, &nodes_ca) {
            assert!(left <= 3, "the agent's certificate lives --serving-certificate-ttl: {left} s left");
            agent_certs.insert(leaf);
        }
        credentials.extend(agent.credential_field("token"));
        (master_certs.len() >= 3 && agent_certs.len() >= 3 && credentials.len() >= 3).then_some(())
    });
    assert!(agent.log_text().contains("renewed this node's credential and certificate"));

    // Still Ready, never NotReady, and the master still reaches the agent (logs, over TLS to its renewed certificate).
    wait_ready(&master, "rotating");
    assert!(
        !master.events().iter().any(|e| e.reason == "NodeNotReady"),
        "the node never went NotReady: {:?}",
        master.events().iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    master.upload_example("hello").expect("upload");
    let workload: wasmlet_api::Workload = wasmlet_api::from_yaml(&workload_manifest("hello", "hello", "job", "")).expect("manifest");
    let (status, body) = master.send_json(reqwest::Method::POST, "/workloads", &workload).expect("create");
    assert_eq!(status, 201, "{body}");
    let instance = wait_for(WAIT, "hello Succeeded", || {
        master.instances().into_iter().find(|i| i.spec.workload == "hello" && i.status.phase == Phase::Succeeded)
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let config = master.cli_config(dir.path());
    let out = std::process::Command::new(bin("wasmlet"))
        .args(["logs", &instance.metadata.name])
        .env("WASMLETCONFIG", &config)
        .output()
        .expect("wasmlet runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from wasmlet"));
    // The agent opened its channel again with each credential, and live requests travel through it.
    let opened = agent.log_text().matches("opened the channel to the master").count();
    assert!(opened >= 3, "a channel per credential: {opened}");
    let via_channel = || master.metric("wasmlet_master_live_requests_total{via=\"channel\"}").unwrap_or(0.0);
    let before = via_channel();
    wait_for(WAIT, "a live read through the renewed channel", || {
        let live = master.client().get(master.api("/nodes/rotating/live")).send().expect("an answer");
        (live.status().is_success() && via_channel() > before).then_some(())
    });

    // The first credential was replaced, then refused.
    let as_first = master.client_with(&first).build().expect("client");
    let refused = as_first.get(master.api("/nodes/rotating")).send().expect("answer");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    // A credential nobody renews expires with its lifetime.
    let (status, answer) = register(&master, &master.join_token, serde_json::json!({"name": "lapsed", "status": {}, "protocolVersion": 2}));
    assert_eq!(status, StatusCode::OK, "{answer}");
    let lapsing = answer["credential"].as_str().expect("a credential").to_string();
    let renew_after = answer["renewAfter"].as_str().expect("when to renew").to_string();
    assert!(renew_after.ends_with("ms") || renew_after == "2s", "two thirds of 3 s: {renew_after}");
    let as_lapsed = master.client_with(&lapsing).build().expect("client");
    assert_eq!(as_lapsed.get(master.api("/nodes/lapsed")).send().expect("answer").status(), StatusCode::OK);
    // Renewing takes a valid credential of that very node.
    let other = as_lapsed.post(master.api("/nodes/rotating/credential")).json(&serde_json::json!({})).send().expect("answer");
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let message = wait_for(WAIT, "the credential to expire", || {
        let response = as_lapsed.get(master.api("/nodes/lapsed")).send().ok()?;
        (response.status() == StatusCode::UNAUTHORIZED).then(|| response.text().unwrap_or_default())
    });
    assert!(message.contains("expired"), "{message}");
    let lapsed = as_lapsed.post(master.api("/nodes/lapsed/credential")).json(&serde_json::json!({})).send().expect("answer");
    assert_eq!(lapsed.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn a_master_with_a_new_node_ca_gives_running_agents_new_certificates() {
    // As after upgrading a master of a version with one CA: the node CA is new, the agents'
    // certificates are not from it. They register again on their own and get one.
    let mut master = Master::start(&[]).expect("master starts");
    let agent = join(&master, "veteran", &master.join_token, &[]);
    wait_ready(&master, "veteran");
    let live = |master: &Master| master.client().get(master.api("/nodes/veteran/live")).send().map(|r| r.status()).ok();
    wait_for(WAIT, "live usage from the agent", || (live(&master) == Some(StatusCode::OK)).then_some(()));
    let pki = master.data_dir.path().join("pki");
    let old_nodes_ca = std::fs::read_to_string(pki.join("nodes-ca.crt")).expect("nodes-ca.crt");
    std::fs::remove_file(pki.join("nodes-ca.crt")).expect("remove");
    std::fs::remove_file(pki.join("nodes-ca.key")).expect("remove");
    let (ca, join_token) = (master.ca_pem.clone(), master.join_token.clone());
    master.restart().expect("the master starts again");
    assert_eq!(master.ca_pem, ca, "the cluster CA is kept: CLI configs stay valid");
    assert_eq!(master.join_token, join_token, "join tokens stay valid");
    let new_nodes_ca = std::fs::read_to_string(pki.join("nodes-ca.crt")).expect("a new node CA");
    assert_ne!(new_nodes_ca, old_nodes_ca);

    wait_for(WAIT, "live usage from the agent with its new certificate", || (live(&master) == Some(StatusCode::OK)).then_some(()));
    assert!(agent.log_text().contains("must register again"), "the agent was told why");
    let (leaf, _) = wait_for(WAIT, "the agent's new certificate on the wire", || leaf_of(&agent.api, &new_nodes_ca));
    assert!(!leaf.is_empty());
    assert_eq!(agent.credential_field("nodesCaCertificate").as_deref(), Some(new_nodes_ca.as_str()));
    let newcomer = join(&master, "newcomer", &join_token, &[]);
    wait_ready(&master, "newcomer");
    drop(newcomer);
}

/// `POST /nodes/{node}/credential` with `token`: the status and the new credential, if any.
fn renew(master: &Master, token: &str, node: &str) -> (StatusCode, Option<String>) {
    let client = master.client_with(token).build().expect("client");
    let response = client.post(master.api(&format!("/nodes/{node}/credential"))).json(&serde_json::json!({})).send().expect("answer");
    let status = response.status();
    let body: serde_json::Value = response.json().unwrap_or_default();
    (status, body["credential"].as_str().map(str::to_string))
}

/// Whether `token` still authenticates (as any role: a lease renewal of `node`).
fn lease(master: &Master, token: &str, node: &str) -> StatusCode {
    let client = master.client_with(token).build().expect("client");
    client
        .put(master.api(&format!("/nodes/{node}/lease")))
        .json(&serde_json::json!({"assignmentRevision": 0}))
        .send()
        .expect("answer")
        .status()
}

/// The token records the master keeps for `node`: (valid, all).
fn credentials_of(master: &Master, node: &str) -> (usize, usize) {
    let list: serde_json::Value = master.get_json("/tokens").expect("tokens");
    let role = format!("node:{node}");
    let records: Vec<&serde_json::Value> =
        list["items"].as_array().expect("items").iter().filter(|r| r["role"].as_str() == Some(role.as_str())).collect();
    (records.iter().filter(|r| r.get("revoked").is_none()).count(), records.len())
}

#[test]
fn renewals_in_a_loop_lost_or_racing_leave_a_node_two_credentials_and_lock_no_one_out() {
    let master = Master::start(&[]).expect("master starts");
    let body = serde_json::json!({"name": "looper", "status": {}, "protocolVersion": 2});
    let (status, answer) = register(&master, &master.join_token, body);
    assert_eq!(status, StatusCode::OK, "{answer}");
    let first = answer["credential"].as_str().expect("a credential").to_string();

    // A node (or a thief of its credential) renews in a loop and every answer is lost:
    // the master keeps the credential presented and the newest one, not one per renewal.
    let lost: Vec<String> = (0..30).map(|_| renew(&master, &first, "looper").1.expect("renewed")).collect();
    let (valid, all) = credentials_of(&master, "looper");
    assert!(valid <= 2 && all <= 3, "{valid} valid of {all} credentials kept after 30 renewals");
    for (i, token) in lost[..29].iter().enumerate() {
        assert_eq!(lease(&master, token, "looper"), StatusCode::UNAUTHORIZED, "lost answer {i} is no credential");
    }
    // The node is not locked out: the credential it holds still renews, and the answer it gets works.
    let (status, second) = renew(&master, &first, "looper");
    assert_eq!(status, StatusCode::OK);
    let second = second.expect("renewed");
    assert_eq!(lease(&master, &second, "looper"), StatusCode::OK);
    // First use of the new one retires the old one, which then neither leases nor renews.
    assert_eq!(lease(&master, &first, "looper"), StatusCode::UNAUTHORIZED);
    assert_eq!(renew(&master, &first, "looper").0, StatusCode::UNAUTHORIZED);

    // Two renewals racing with one credential: both answer, the one committed last is the node's.
    let racing: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2).map(|_| s.spawn(|| renew(&master, &second, "looper").1.expect("renewed"))).collect();
        runs.into_iter().map(|r| r.join().expect("thread")).collect()
    });
    let working: Vec<&String> = racing.iter().filter(|t| lease(&master, t, "looper") == StatusCode::OK).collect();
    assert_eq!(working.len(), 1, "exactly one of two racing renewals stands");
    let third = working[0].clone();
    let (valid, all) = credentials_of(&master, "looper");
    assert!(valid <= 1 && all <= 3, "{valid} valid of {all} credentials kept after the race");

    // Nobody else renews a node's credential: not another node, nor a viewer, a join token or an admin.
    let (_, other) = register(&master, &master.join_token, serde_json::json!({"name": "other", "status": {}, "protocolVersion": 2}));
    let other = other["credential"].as_str().expect("a credential").to_string();
    let out = master.command(&["token", "create", "--role", "viewer"]);
    let viewer = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_string();
    for (who, token) in
        [("another node", other.as_str()), ("a viewer", &viewer), ("a join token", &master.join_token), ("the admin", &master.admin_token)]
    {
        assert_eq!(renew(&master, token, "looper").0, StatusCode::FORBIDDEN, "{who}");
    }

    // Deleting the node ends every credential it has, and renewing brings none back.
    let deleted = master.client().delete(master.api("/nodes/looper")).send().expect("delete");
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(renew(&master, &third, "looper").0, StatusCode::UNAUTHORIZED);
    assert_eq!(credentials_of(&master, "looper").0, 0);
}
