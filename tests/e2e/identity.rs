//! Node identity, attacked as a node or a join token holder would: a node
//! asks for a certificate naming the master (through `apiUrl`, its signing
//! request, its own name) and serves it as a fake master to the CLI and to
//! agents; a second machine joins under a live node's name; and the master's
//! log and audit log are searched for every secret of its data dir.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wasmlet_tests::{Agent, Master, bin, wait_for};

pub const WAIT: Duration = Duration::from_secs(60);

pub fn join(master: &Master, name: &str, token: &str, extra: &[&str]) -> Agent {
    let mut args = vec!["--master", &master.url, "--join-token", token, "--name", name, "--sample-interval", "500ms"];
    args.extend_from_slice(extra);
    Agent::start(&args).expect("agent starts")
}

pub fn wait_ready(master: &Master, name: &str) {
    wait_for(WAIT, &format!("node {name} Ready"), || master.nodes().into_iter().find(|n| n.metadata.name == name && n.is_ready()));
}

/// The agent's node credential, once it saved one.
pub fn credential(agent: &Agent) -> String {
    wait_for(WAIT, "the agent to save its credential", || agent.credential_field("token"))
}

/// `POST /api/v1/nodes/register` with `token`; the status and the JSON answer.
pub fn register(master: &Master, token: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let response =
        master.client_with(token).build().expect("client").post(master.api("/nodes/register")).json(&body).send().expect("answer");
    let status = response.status();
    (status, response.json().unwrap_or(serde_json::Value::Null))
}

/// A signing request for `key` that asks for much more than a node may have:
/// the master's names, an IP, a wildcard, and to be a CA.
fn greedy_request(key: &KeyPair) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let mut names = vec!["localhost".to_string(), "wasmlet-master".to_string(), "*.wasmlet.local".to_string()];
    names.extend((!host.is_empty()).then_some(host));
    let mut params = CertificateParams::new(names).expect("names");
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    params.subject_alt_names.push(SanType::IpAddress("::1".parse().expect("ip")));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.serialize_request(key).expect("a signing request").pem().expect("PEM")
}

/// The certificates of a PEM chain.
pub fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().expect("PEM certificates")
}

/// A certificate's subject alternative names (`DNS:x`, `IP:1.2.3.4`) and whether it is a CA.
pub fn names_of(der: &[u8]) -> (Vec<String>, bool) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a certificate");
    let names = cert
        .subject_alternative_name()
        .expect("SAN extension parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => format!("IP:{}", std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).expect("4 bytes"))),
                        _ => format!("IP:{}", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).expect("16 bytes"))),
                    },
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    (names, cert.is_ca())
}

/// A TLS server that presents a given chain and records everything that
/// reaches it after a handshake: the "master" an attacker would run.
pub struct FakeServer {
    pub port: u16,
    received: Arc<Mutex<Vec<u8>>>,
    /// Connections whose handshake the client completed.
    handshakes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    pub fn start(chain_pem: &str, key_pem: &str) -> FakeServer {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("a PEM key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain(chain_pem), key)
            .expect("a server configuration");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (received, handshakes, stop) = (Arc::<Mutex<Vec<u8>>>::default(), Arc::<AtomicUsize>::default(), Arc::<AtomicBool>::default());
        let (r, h, s) = (received.clone(), handshakes.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (config, received, handshakes) = (config.clone(), r.clone(), h.clone());
                std::thread::spawn(move || serve_one(stream, config, &received, &handshakes));
            }
        });
        FakeServer { port, received, handshakes, stop }
    }

    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().expect("lock")).into_owned()
    }

    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

fn serve_one(stream: TcpStream, config: Arc<rustls::ServerConfig>, received: &Mutex<Vec<u8>>, handshakes: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(connection) = rustls::ServerConnection::new(config) else { return };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut buf = [0u8; 8192];
    let mut seen = Vec::new();
    while let Ok(n) = tls.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        received.lock().expect("lock").extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let _ = tls.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            break;
        }
    }
    if !tls.conn.is_handshaking() {
        handshakes.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Runs the `wasmlet` CLI as the admin (the cluster CA and the admin token)
/// against `url`, from a config file of its own in `dir`.
fn cli_as_admin(master: &Master, dir: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    let path = dir.join(format!("cli-{}.toml", url.replace([':', '/', '.'], "-")));
    let text = format!(
        "current-context = \"x\"\n\n[[contexts]]\nname = \"x\"\nmaster = \"{url}\"\ntoken = \"{}\"\ncertificate-authority-data = '''\n{}'''\n",
        master.admin_token, master.ca_pem
    );
    std::fs::write(&path, text).expect("a CLI config");
    std::process::Command::new(bin("wasmlet")).args(args).env("WASMLETCONFIG", &path).output().expect("wasmlet runs")
}

#[test]
fn a_node_certificate_lets_no_one_pose_as_the_master() {
    let master = Master::start(&[]).expect("master starts");
    let pki = master.data_dir.path().join("pki");
    let nodes_ca = std::fs::read_to_string(pki.join("nodes-ca.crt")).expect("the master created a node CA");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();

    // With the join token, ask for certificates for every name a client reaches the master by:
    // through apiUrl, through the signing request, and as the node's own name.
    let mut stolen = None;
    let mut attempts = vec![("mole-1", "https://localhost:1".to_string()), ("mole-2", "https://127.0.0.1:1".to_string())];
    attempts.push(("localhost", "https://[::1]:1".to_string()));
    if !host.is_empty() {
        attempts.push(("mole-3", format!("https://{host}:1")));
    }
    for (node, api_url) in attempts {
        let key = KeyPair::generate().expect("key");
        let body = serde_json::json!({"name": node, "status": {}, "protocolVersion": 2, "servingCsr": greedy_request(&key),
            "apiUrl": api_url, "apiPort": 1, "ingressPort": 2});
        let (status, answer) = register(&master, &master.join_token, body);
        assert_eq!(status, StatusCode::OK, "{answer}");
        let issued = answer["servingCertificate"].as_str().expect("a certificate").to_string();
        let certs = chain(&issued);
        let (names, is_ca) = names_of(&certs[0]);
        assert_eq!(names, [format!("DNS:{node}"), "IP:127.0.0.1".to_string()], "only the node's name and source address ({api_url})");
        assert!(!is_ca, "a node certificate is never a CA");
        assert_eq!(certs[1].as_ref(), chain(&nodes_ca)[0].as_ref(), "signed by the node CA");
        assert_ne!(certs[1].as_ref(), chain(&master.ca_pem)[0].as_ref(), "not by the cluster CA");
        assert_eq!(answer["nodesCaCertificate"].as_str(), Some(nodes_ca.as_str()));
        if node == "localhost" {
            stolen = Some((issued, key.serialize_pem()));
        }
    }

    // Serve the stolen certificate (valid for `localhost` and 127.0.0.1) as a master, with the
    // cluster CA appended to the chain to look the part.
    let (issued, key) = stolen.expect("the node named localhost got a certificate");
    let fake = FakeServer::start(&format!("{issued}{}", master.ca_pem), &key);
    let dir = tempfile::tempdir().expect("tempdir");
    for url in [format!("https://127.0.0.1:{}", fake.port), format!("https://localhost:{}", fake.port)] {
        let out = cli_as_admin(&master, dir.path(), &url, &["get", "nodes"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the CLI refused the fake master at {url}");
        assert!(stderr.contains("certificate"), "says why: {stderr}");
    }
    // A joining agent (the join token pins the cluster CA), and a joined one (its saved credential).
    let joining =
        Agent::start(&["--master", &format!("https://127.0.0.1:{}", fake.port), "--join-token", &master.join_token]).expect("agent starts");
    wait_for(WAIT, "the joining agent to refuse the fake master", || joining.log_text().contains("cannot register").then_some(()));
    let joined = join(&master, "joined", &master.join_token, &[]);
    let node_credential = credential(&joined);
    let dir_of_joined = joined.stop_keep_data().expect("the agent stops");
    let fooled = Agent::start_in(dir_of_joined, &["--master", &format!("https://127.0.0.1:{}", fake.port), "--name", "joined"])
        .expect("agent starts");
    wait_for(WAIT, "the joined agent to refuse the fake master", || fooled.log_text().contains("cannot register").then_some(()));
    let secret = master.join_token.rsplit('.').next().expect("secret");
    let received = fake.received();
    assert_eq!(fake.handshakes(), 0, "no client completed a handshake with the fake master");
    for (what, value) in [("admin token", master.admin_token.as_str()), ("join token", secret), ("node credential", &node_credential)] {
        assert!(!received.contains(value), "the fake master got the {what}");
    }
    assert!(received.is_empty(), "nothing reached the fake master: {received}");

    // The control: a certificate the cluster CA signed (what only the master's data dir can make)
    // does fool the CLI, and the fake server records what it sends.
    let issuer = Issuer::from_ca_cert_pem(
        &master.ca_pem,
        KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).expect("ca.key")).expect("the CA key"),
    )
    .expect("the cluster CA");
    let leaf_key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let genuine = params.signed_by(&leaf_key, &issuer).expect("signed");
    let control = FakeServer::start(&format!("{}{}", genuine.pem(), master.ca_pem), &leaf_key.serialize_pem());
    let out = cli_as_admin(&master, dir.path(), &format!("https://127.0.0.1:{}", control.port), &["get", "nodes"]);
    assert!(!out.status.success(), "the control answers 503");
    assert!(control.received().contains(&master.admin_token), "the recorder catches a leak: {}", control.received());
}

#[test]
fn a_signing_request_gets_only_the_names_the_master_verified() {
    let master = Master::start(&[]).expect("master starts");
    // Names the request and the URL ask for are ignored, whatever they look like.
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["*.*".to_string(), "xn--80ak6aa92e.com".to_string(), "a".repeat(63)]).expect("names");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let csr = params.serialize_request(&key).expect("request").pem().expect("PEM");
    let body = serde_json::json!({"name": "odd", "status": {}, "servingCsr": csr, "apiUrl": "https://evil.example:443/x"});
    let (status, answer) = register(&master, &master.join_token, body);
    assert_eq!(status, StatusCode::OK, "{answer}");
    let certs = chain(answer["servingCertificate"].as_str().expect("a certificate"));
    assert_eq!(names_of(&certs[0]), (vec!["DNS:odd".to_string(), "IP:127.0.0.1".to_string()], false));
    assert!(
        answer.get("nodesCaCertificate").is_none() && answer.get("renewAfter").is_none(),
        "no version 2 fields for version 1: {answer}"
    );

    // A request whose signature does not hold (the key was changed): refused, naming the field.
    let mut tampered: Vec<String> = greedy_request(&key).lines().map(String::from).collect();
    let line = &mut tampered[3];
    let flipped = if line.starts_with('A') { "B" } else { "A" };
    line.replace_range(0..1, flipped);
    let body = serde_json::json!({"name": "tampered", "status": {}, "servingCsr": tampered.join("\n")});
    let (status, answer) = register(&master, &master.join_token, body);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["message"].as_str().unwrap_or_default().contains("servingCsr"), "{answer}");
    // A name that is not a node name gets no certificate at all.
    let body = serde_json::json!({"name": "Master.example", "status": {}, "servingCsr": greedy_request(&key)});
    let (status, answer) = register(&master, &master.join_token, body);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(!master.nodes().iter().any(|n| n.metadata.name == "tampered" || n.metadata.name == "Master.example"));
}

#[test]
fn a_join_under_a_live_name_is_refused_until_an_admin_frees_it() {
    let master = Master::start(&[]).expect("master starts");
    let original = join(&master, "edge", &master.join_token, &[]);
    wait_ready(&master, "edge");
    let first = credential(&original);

    // A second machine with the join token, and an admin token, under the same name: 409, saying what to do.
    let impostor = join(&master, "edge", &master.join_token, &[]);
    let line = wait_for(WAIT, "the refusal", || {
        impostor.log_text().lines().find(|l| l.contains("refused to register node edge")).map(String::from)
    });
    assert!(line.contains("token revoke") && line.contains("DELETE /api/v1/nodes/edge"), "{line}");
    for token in [master.join_token.as_str(), master.admin_token.as_str()] {
        let (status, answer) = register(&master, token, serde_json::json!({"name": "edge", "status": {}}));
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    }
    drop(impostor);
    // The original keeps its identity: its credential works and it stays Ready.
    let as_original = master.client_with(&first).build().expect("client");
    let lease = as_original.put(master.api("/nodes/edge/lease")).json(&serde_json::json!({"assignmentRevision": 0})).send().expect("lease");
    assert_eq!(lease.status(), StatusCode::OK);
    assert_eq!(credential(&original), first, "its credential was not replaced");
    wait_ready(&master, "edge");
    assert!(!master.events().iter().any(|e| e.reason == "NodeNotReady" && e.involved_object.name == "edge"));

    // After the admin revokes its credential, another machine may join under the name.
    let id = first.split('.').next().expect("id");
    let out = master.command(&["token", "revoke", id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replacement = join(&master, "edge", &master.join_token, &[]);
    let second = credential(&replacement);
    assert_ne!(second, first);
    wait_ready(&master, "edge");
    wait_for(WAIT, "the original to be refused", || original.log_text().contains("refused this node's credential").then_some(()));

    // Deleting the node frees the name too, and revokes the credential of the machine behind it.
    let deleted = master.client().delete(master.api("/nodes/edge")).send().expect("delete");
    assert_eq!(deleted.status(), StatusCode::OK);
    let as_replacement = master.client_with(&second).build().expect("client");
    assert_eq!(as_replacement.get(master.api("/nodes/edge")).send().expect("get").status(), StatusCode::UNAUTHORIZED);
    let third = join(&master, "edge", &master.join_token, &[]);
    assert_ne!(credential(&third), second);
    wait_ready(&master, "edge");
}

#[test]
fn the_master_logs_no_secret_of_its_data_dir() {
    let master = Master::start(&["--node-credential-ttl", "3s"]).expect("master starts");
    let dir = master.data_dir.path();
    let log = master.logs.lock().expect("log lock").join("\n");
    assert!(log.contains("join.token") && log.contains("join-command"), "the log names the file and the command: {log}");

    // The command the log names prints a join command that works.
    let out = master.command(&["join-command"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(printed, format!("wasmlet-agent --master {} --join-token {}", master.url, master.join_token));
    let args: Vec<&str> = printed.split_whitespace().skip(1).collect();
    let agent = Agent::start(&[&args[..], &["--name", "keeper"]].concat()).expect("agent starts");
    wait_ready(&master, "keeper");
    let first = credential(&agent);
    // Tokens of every role, and a renewed credential.
    let secret_of = |token: &str| token.trim().rsplit('.').next().unwrap_or_default().to_string();
    let mut needles: Vec<(String, String)> = Vec::new();
    for role in ["join", "viewer", "admin"] {
        let out = master.command(&["token", "create", "--role", role, "--ttl", "1h"]);
        let token = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
        needles.push((format!("a created {role} token"), secret_of(&token)));
    }
    wait_for(WAIT, "a renewed credential", || (credential(&agent) != first).then_some(()));
    let anonymous = master.anonymous().build().expect("client");
    let _ = anonymous.get(master.api("/nodes")).bearer_auth(&master.admin_token[..10]).send();

    for file in ["admin.token", "join.token"] {
        needles.push((file.to_string(), secret_of(&std::fs::read_to_string(dir.join(file)).expect(file))));
    }
    for (what, value) in [("the first node credential", first), ("the renewed node credential", credential(&agent))] {
        needles.push((what.to_string(), secret_of(&value)));
    }
    needles.push(("the master's token for the agent".into(), agent.credential_field("masterToken").expect("masterToken")));
    // Each line of the CA keys.
    for file in ["pki/ca.key", "pki/nodes-ca.key"] {
        let pem = std::fs::read_to_string(dir.join(file)).expect(file);
        needles.extend(pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16).map(|l| (file.to_string(), l.to_string())));
    }
    assert!(needles.iter().all(|(_, n)| n.len() >= 16), "{needles:?}");
    assert!(needles.len() >= 12, "the secrets were found: {needles:?}");
    let audit = wait_for(WAIT, "the audit log", || std::fs::read_to_string(dir.join("audit.log")).ok().filter(|a| a.contains("/tokens")));
    let log = master.logs.lock().expect("log lock").join("\n");
    for (what, needle) in &needles {
        assert!(!log.contains(needle.as_str()), "the master's log holds {what}");
        assert!(!audit.contains(needle.as_str()), "the audit log holds {what}");
        assert!(!agent.log_text().contains(needle.as_str()), "the agent's log holds {what}");
    }
}
