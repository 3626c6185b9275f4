//! Modules from where teams keep them: a workload whose module is an
//! `https://` URL runs from bytes the node downloads itself, resumed after a
//! dropped connection and checked against the digest before anything
//! compiles them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use wasmlet_api::{Phase, Workload};
use wasmlet_tests::{Agent, Master, example, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// A web server on loopback serving one file, over TLS with its own CA or
/// plain HTTP. Its first answer announces the whole file, sends half and
/// drops the connection; later ones honour `Range`. Stops when dropped.
struct FlakyServer {
    url: String,
    ca_file: tempfile::NamedTempFile,
    /// The `Range` start of every request served, in order (None: the whole file).
    ranges: Arc<Mutex<Vec<Option<usize>>>>,
    /// While set, every request is answered 503 (the server is "down").
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FlakyServer {
    fn start(body: Vec<u8>, tls: bool) -> FlakyServer {
        let ca = wasmlet_tests::test_ca::TestCa::new();
        let (cert, key) = ca.sign(rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params"));
        let ca_file = tempfile::NamedTempFile::new().expect("file");
        std::fs::write(ca_file.path(), &ca.pem).expect("write");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into())
            .expect("server config");
        let config = Arc::new(config);

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{}/modules/sensor.wasm", listener.local_addr().expect("addr"));
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let (stop, down) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let thread = {
            let (ranges, stop, down) = (ranges.clone(), stop.clone(), down.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let first = ranges.lock().expect("lock").is_empty();
                            let down = down.load(Ordering::SeqCst);
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                            if tls {
                                let Ok(connection) = rustls::ServerConnection::new(config.clone()) else { continue };
                                let _ = serve(rustls::StreamOwned::new(connection, stream), &body, first, down, &ranges);
                            } else {
                                let _ = serve(stream, &body, first, down, &ranges);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        FlakyServer { url, ca_file, ranges, down, stop, thread: Some(thread) }
    }
}

impl Drop for FlakyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream`: 503 when `down`, else the file, cut in half when `cut`.
fn serve(mut stream: impl Read + Write, body: &[u8], cut: bool, down: bool, ranges: &Mutex<Vec<Option<usize>>>) -> std::io::Result<()> {
    let mut range = None;
    {
        let mut reader = BufReader::new(&mut stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                range = value.trim().trim_end_matches('-').parse::<usize>().ok();
            }
        }
    }
    if down {
        stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
        return stream.flush();
    }
    ranges.lock().expect("lock").push(range);
    let start = range.unwrap_or(0).min(body.len());
    let head = match range {
        Some(_) => format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len() - 1,
            body.len(),
            body.len() - start
        ),
        None => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()),
    };
    stream.write_all(head.as_bytes())?;
    // Half of it, then the connection drops (no TLS close either, as a broken link would).
    let end = if cut { start + (body.len() - start) / 2 } else { body.len() };
    stream.write_all(&body[start..end])?;
    stream.flush()
}

fn url_workload(name: &str, url: &str, digest: &str) -> Workload {
    let text = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  type: daemon\n  module:\n    source: {url}\n    digest: {digest}\n  args: [\"--interval\", \"200\"]\n"
    );
    wasmlet_api::from_yaml(&text).expect("manifest")
}

/// A workload whose module is an `https://` URL, on a server whose first
/// answer breaks off halfway: the node resumes the download where it stopped
/// (a range request), checks the digest and runs it; the master never holds
/// the module. The same URL under another digest is refused before anything
/// compiles it: that instance waits in `ModulePullBackOff` saying why, tried
/// again with back-off, and the first workload keeps running.
#[test]
fn a_module_from_an_https_url_is_downloaded_by_the_node_resumed_and_checked() {
    let (path, digest) = example("sensor");
    let bytes = std::fs::read(&path).expect("the example");
    let server = FlakyServer::start(bytes.clone(), true);
    let master = Master::start(&[]).expect("master starts");
    let ca = server.ca_file.path().to_str().expect("utf-8").to_string();
    let agent = Agent::start(&[
        "--master",
        &master.url,
        "--join-token",
        &master.join_token,
        "--name",
        "edge",
        "--module-ca-file",
        &ca,
        "--sample-interval",
        "500ms",
    ])
    .expect("agent starts");

    let (status, body) = master.send_json(Method::POST, "/workloads", &url_workload("web", &server.url, &digest)).expect("POST");
    assert_eq!(status, 201, "{body}");
    wait_for(WAIT, "the instance Running", || {
        master.instances().into_iter().find(|i| i.spec.workload == "web" && i.status.phase == Phase::Running)
    });
    let ranges = server.ranges.lock().expect("lock").clone();
    assert_eq!(ranges, [None, Some(bytes.len() / 2)], "the whole file asked once, then resumed at the half it had");
    let module = master.client().get(master.api(&format!("/modules/{digest}"))).send().expect("GET");
    assert_eq!(module.status(), 404, "the master never held the module");
    let kept = agent.data_dir.path().join("cache/modules").join(format!("{}.wasm", digest.trim_start_matches("sha256:")));
    assert_eq!(std::fs::read(&kept).expect("the node keeps the module"), bytes);

    // The same bytes under a digest they do not have: refused before compiling, named in the log.
    let (_, other) = example("hello");
    let (status, body) = master.send_json(Method::POST, "/workloads", &url_workload("wrong", &server.url, &other)).expect("POST");
    assert_eq!(status, 201, "{body}");
    let line = wait_for(WAIT, "the agent refusing the bytes", || {
        agent.log_text().lines().find(|l| l.contains("refused before compiling")).map(str::to_string)
    });
    assert!(line.contains(&other) && line.contains(&digest), "names both digests: {line}");
    let waiting = wait_for(WAIT, "the instance waiting in ModulePullBackOff", || {
        master.instances().into_iter().find(|i| i.spec.workload == "wrong" && i.status.reason.as_deref() == Some("ModulePullBackOff"))
    });
    assert_eq!(waiting.status.phase, Phase::Pending);
    let message = waiting.status.message.unwrap_or_default();
    assert!(message.contains(&server.url) && message.contains(&other) && message.contains("refused before compiling"), "{message}");
    assert!(master.instances().iter().any(|i| i.spec.workload == "web" && i.status.phase == Phase::Running), "the first one runs on");
    // The refusal is retried (with back-off), and refused again.
    wait_for(WAIT, "a second try", || (agent.log_text().matches("refused before compiling").count() >= 2).then_some(()));
}

/// `http://` modules only where the node allows them: refused naming the
/// flag, downloaded (and resumed, and checked) with `--allow-http-modules`.
/// While the server is down the instance waits in `ModulePullBackOff` naming
/// its answer, and runs once the server is back.
#[test]
fn http_modules_are_downloaded_only_where_the_node_allows_them() {
    let (path, digest) = example("sensor");
    let bytes = std::fs::read(&path).expect("the example");
    let server = FlakyServer::start(bytes, false);
    server.down.store(true, Ordering::SeqCst);
    let master = Master::start(&[]).expect("master starts");
    let join = |name: &str, extra: &[&str]| {
        let mut args = vec!["--master", &master.url, "--join-token", &master.join_token, "--name", name, "--sample-interval", "500ms"];
        args.extend_from_slice(extra);
        args.extend(["--labels", if extra.is_empty() { "http=no" } else { "http=yes" }]);
        Agent::start(&args).expect("agent starts")
    };
    let strict = join("strict", &[]);
    let _lab = join("lab", &["--allow-http-modules"]);
    for (name, label) in [("refused", "no"), ("allowed", "yes")] {
        let mut workload = url_workload(name, &server.url, &digest);
        workload.spec.node_selector.insert("http".into(), label.into());
        let (status, body) = master.send_json(Method::POST, "/workloads", &workload).expect("POST");
        assert_eq!(status, 201, "{body}");
    }
    let waiting = wait_for(WAIT, "the allowed one waiting for the server", || {
        master.instances().into_iter().find(|i| i.spec.workload == "allowed" && i.status.reason.as_deref() == Some("ModulePullBackOff"))
    });
    let message = waiting.status.message.unwrap_or_default();
    assert!(message.contains("503") && message.contains(&server.url), "{message}");
    server.down.store(false, Ordering::SeqCst);
    let running = wait_for(WAIT, "the allowed one Running once the server is back", || {
        master.instances().into_iter().find(|i| i.spec.workload == "allowed" && i.status.phase == Phase::Running)
    });
    assert_eq!(running.spec.node, "lab");
    let line = wait_for(WAIT, "the strict node refusing http://", || {
        strict.log_text().lines().find(|l| l.contains("--allow-http-modules")).map(str::to_string)
    });
    assert!(line.contains(&server.url), "{line}");
    assert!(master.instances().iter().all(|i| i.spec.workload != "refused" || i.status.phase != Phase::Running));
    assert_eq!(server.ranges.lock().expect("lock").len(), 2, "only the lab node downloaded: once cut off, once resumed");
}
