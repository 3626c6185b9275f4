//! Service requests forwarded between ingresses go over mutual TLS with the
//! nodes' certificates, and only nodes of this cluster speak to the peer
//! side: attacked with no certificate, a certificate of another CA and a
//! node certificate of another cluster, and from the public side with forged
//! forwarding markers.

use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose};
use reqwest::blocking::Client;
use wasmlet_api::Phase;
use wasmlet_tests::{Agent, Master, wait_for, workload_manifest};

use crate::identity::{WAIT, join, wait_ready};

fn create_service(master: &Master, name: &str, module: &str, extra: &str) {
    master.upload_example(module).expect("upload");
    let workload: wasmlet_api::Workload = wasmlet_api::from_yaml(&workload_manifest(name, module, "service", extra)).expect("manifest");
    let (status, body) = master.send_json(reqwest::Method::POST, "/workloads", &workload).expect("POST /workloads");
    assert_eq!(status, 201, "{body}");
}

/// GET `url` with `headers`: the status and the echoed headers (`http-echo`'s JSON).
fn get(client: &Client, url: &str, headers: &[(&str, &str)]) -> Result<(u16, serde_json::Value), String> {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    Ok((status, response.json::<serde_json::Value>().map(|v| v["headers"].clone()).unwrap_or_default()))
}

fn plain() -> Client {
    Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

/// A TLS client for a peer ingress: trusting `nodes_ca`, presenting `identity` (certificate chain and key, PEM) if any.
fn peer_client(nodes_ca: &str, identity: Option<String>) -> Client {
    let mut builder = Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(nodes_ca.as_bytes()).expect("the node CA"));
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("an identity"));
    }
    builder.build().expect("client")
}

/// An agent's node certificate and key, from its data dir.
fn identity_of(agent: &Agent) -> String {
    let pki = agent.data_dir.path().join("pki");
    // The certificate lands just after the registration's answer, which may be after the node is listed.
    let read = |file: &str| wait_for(WAIT, file, || std::fs::read_to_string(pki.join(file)).ok());
    format!("{}{}", read("agent.crt"), read("agent.key"))
}

/// A client certificate for `wasmlet-node:b` from a CA of the test's own.
fn foreign_identity() -> String {
    let ca = wasmlet_tests::test_ca::TestCa::new();
    let mut leaf = CertificateParams::new(vec!["b".to_string()]).expect("params");
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, "wasmlet-node:b");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
    let (cert, key) = ca.sign(leaf);
    format!("{}{}{}", cert.pem(), ca.pem, key.serialize_pem())
}

#[test]
fn requests_between_nodes_go_over_mutual_tls_and_only_nodes_of_the_cluster_speak_it() {
    let master = Master::start(&[]).expect("master starts");
    let a = join(&master, "a", &master.join_token, &["--labels", "role=web"]);
    let b = join(&master, "b", &master.join_token, &[]);
    wait_ready(&master, "a");
    wait_ready(&master, "b");
    create_service(&master, "echo", "http-echo", "  replicas: 1\n  nodeSelector: {role: web}\n  route: {pathPrefix: /echo}\n");
    wait_for(WAIT, "echo Running on a", || {
        master.instances().into_iter().find(|i| i.spec.workload == "echo" && i.spec.node == "a" && i.status.phase == Phase::Running)
    });
    let peer_requests = |from: &str| a.metric(&format!("wasmlet_ingress_peer_requests_total{{peer=\"{from}\"}}")).unwrap_or(0.0);

    // Through b, which runs no echo: forwarded to a over mutual TLS, and a knows it came from b.
    let (status, headers) =
        wait_for(WAIT, "echo through b", || get(&plain(), &format!("{}/echo/x", b.ingress), &[]).ok().filter(|r| r.0 == 200));
    assert_eq!(status, 200);
    assert_eq!(headers["x-wasmlet-forwarded-by"], serde_json::json!(["b"]), "named by b's certificate: {headers}");
    assert!(peer_requests("b") >= 1.0, "a counted a request from peer b over TLS");

    // The public side: markers a client forges are not believed.
    let before = peer_requests("b");
    let forged = [("x-wasmlet-forwarded-by", "b"), ("forwarded", "for=\"10.0.0.2\";host=\"x\";proto=http")];
    let (status, headers) = get(&plain(), &format!("{}/echo/direct", a.ingress), &forged).expect("a answers");
    assert_eq!(status, 200);
    assert!(headers.get("x-wasmlet-forwarded-by").is_none(), "a forged marker does not reach the guest: {headers}");
    assert_eq!(peer_requests("b"), before, "a public request is not counted as b's");
    // At b, a forged marker does not stop forwarding (as a request from a peer would).
    let (status, headers) = get(&plain(), &format!("{}/echo/y", b.ingress), &[("x-wasmlet-forwarded-by", "a")]).expect("b answers");
    assert_eq!(status, 200, "forwarded all the same: {headers}");
    assert_eq!(headers["x-wasmlet-forwarded-by"], serde_json::json!(["b"]));

    // The peer side: only a node certificate of this cluster gets in.
    let before = peer_requests("b");
    let nodes_ca = a.credential_field("nodesCaCertificate").expect("the node CA");
    let peer_side = format!("{}/echo/peer", a.ingress.replace("http://", "https://"));
    let other_master = Master::start(&[]).expect("another cluster's master");
    let stranger = join(&other_master, "b", &other_master.join_token, &[]);
    wait_ready(&other_master, "b");
    for (who, identity) in [
        ("no certificate", None),
        ("another CA's certificate", Some(foreign_identity())),
        ("a node of another cluster", Some(identity_of(&stranger))),
    ] {
        let answer = get(&peer_client(&nodes_ca, identity), &peer_side, &[]);
        assert!(answer.is_err(), "{who}: the peer side refused the handshake, answered {answer:?}");
    }
    assert_eq!(peer_requests("b"), before, "none of them counted as a peer");
    // The control: b's own certificate is a peer's.
    let (status, headers) = get(&peer_client(&nodes_ca, Some(identity_of(&b))), &peer_side, &[]).expect("a answers b");
    assert_eq!(status, 200);
    assert_eq!(headers["x-wasmlet-forwarded-by"], serde_json::json!(["b"]));
    assert_eq!(peer_requests("b"), before + 1.0);
}
