//! HTTP services (wasi:http components) served through a node's ingress:
//! routing, 404/503/504, body limits and the outbound allow-list.

use std::io::{Read, Write};
use std::time::Duration;

use reqwest::blocking::Client;
use wasmlet_api::Phase;
use wasmlet_tests::{Agent, place_file, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

/// A one-shot HTTP server on loopback answering `body` to every request, for outbound calls.
fn upstream(body: &'static str) -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).ok();
        for stream in listener.incoming().take(1) {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    (port, handle)
}

#[test]
fn services_answer_through_the_ingress_with_their_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, server) = upstream("upstream says hi");
    place_file(dir.path(), "hello.yaml", &workload_manifest("hello", "http-hello", "service", "  route: {pathPrefix: /hello}\n"));
    place_file(
        dir.path(),
        "slow.yaml",
        &workload_manifest(
            "slow",
            "http-slow",
            "service",
            "  route: {pathPrefix: /slow}\n  resources:\n    limits: {requestTimeout: 300ms}\n",
        ),
    );
    place_file(dir.path(), "echo.yaml", &workload_manifest("echo", "http-echo", "service", "  route: {pathPrefix: /echo}\n"));
    place_file(dir.path(), "fetch.yaml", &workload_manifest("fetch", "http-fetch", "service", "  route: {pathPrefix: /fetch}\n"));
    place_file(
        dir.path(),
        "fetch-allowed.yaml",
        &workload_manifest(
            "fetch-allowed",
            "http-fetch",
            "service",
            &format!("  route: {{pathPrefix: /allowed}}\n  allowedOutboundHosts: [\"127.0.0.1:{port}\"]\n"),
        ),
    );
    place_file(dir.path(), "broken.yaml", &workload_manifest("broken", "sensor", "service", "  route: {pathPrefix: /broken}\n"));
    let agent = Agent::start(&[
        "--manifests-dir",
        dir.path().to_str().expect("utf-8"),
        "--manifests-poll-interval",
        "100ms",
        "--max-request-body",
        "1Ki",
        "--name",
        "edge-7",
    ])
    .expect("agent starts");
    for name in ["hello-0", "slow-0", "echo-0", "fetch-0", "fetch-allowed-0"] {
        agent.wait_phase(name, Phase::Running, WAIT);
    }
    let broken = agent.wait_phase("broken-0", Phase::Failed, WAIT);
    assert_eq!(broken.status.reason.as_deref(), Some("InvalidModule"), "{:?}", broken.status.message);

    let http = client();
    let get = |path: &str| {
        let r = http.get(format!("{}{path}", agent.ingress)).send().expect("request");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    let (status, body) = get("/hello");
    assert_eq!((status, body.trim()), (200, "hello from wasmlet on edge-7"));
    let (status, body) = get("/nowhere");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no route"), "{body}");
    let (status, body) = get("/broken");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broken"), "{body}");

    let (status, body) = get("/slow?ms=50");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get("/slow?ms=3000");
    assert_eq!(status, 504, "requestTimeout 300ms: {body}");

    let echoed = http.post(format!("{}/echo/x?q=1", agent.ingress)).body("small body").send().expect("echo");
    assert_eq!(echoed.status().as_u16(), 200);
    assert!(echoed.text().unwrap_or_default().contains("small body"));
    let big = http.post(format!("{}/echo", agent.ingress)).body(vec![b'x'; 4096]).send().expect("big body");
    assert_ne!(big.status().as_u16(), 200, "a body over --max-request-body does not reach the guest whole");

    let (status, body) = get(&format!("/fetch?url=http://127.0.0.1:{port}/"));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "a denied host fails inside the guest with a clear error: {body}");
    let (status, body) = get(&format!("/allowed?url=http://127.0.0.1:{port}/"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upstream says hi"), "{body}");
    server.join().expect("upstream");

    let metrics = agent.get_text("/metrics").expect("metrics");
    for needle in [
        "wasmlet_ingress_requests_total{workload=\"hello\",code=\"2xx\"} 1",
        "wasmlet_ingress_requests_total{workload=\"slow\",code=\"5xx\"} 1",
        "wasmlet_ingress_request_seconds_bucket{le=",
        "wasmlet_ingress_in_flight{workload=\"hello\"} 0",
    ] {
        assert!(metrics.contains(needle), "/metrics has {needle}:\n{metrics}");
    }
}

#[test]
fn readiness_probes_decide_who_takes_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    // http-echo answers 200 on any path: ready. http-slow answers 400 to `?ms=abc`: never ready.
    place_file(
        dir.path(),
        "ready.yaml",
        &workload_manifest("ready", "http-echo", "service", "  route: {pathPrefix: /ready}\n  readinessPath: /healthz\n"),
    );
    place_file(
        dir.path(),
        "never.yaml",
        &workload_manifest("never", "http-slow", "service", "  route: {pathPrefix: /never}\n  readinessPath: \"/?ms=abc\"\n"),
    );
    let agent = Agent::start(&["--manifests-dir", dir.path().to_str().expect("utf-8"), "--manifests-poll-interval", "100ms"])
        .expect("agent starts");
    agent.wait_phase("ready-0", Phase::Running, WAIT);
    let never = wasmlet_tests::wait_for(WAIT, "the readiness verdict", || {
        agent.instance("never-0").filter(|i| i.status.reason.as_deref() == Some("NotReady"))
    });
    assert!(never.status.message.unwrap_or_default().contains("400"));
    let http = client();
    let ok = wasmlet_tests::wait_for(WAIT, "ready in rotation", || {
        http.get(format!("{}/ready", agent.ingress)).send().ok().filter(|r| r.status().as_u16() == 200)
    });
    assert_eq!(ok.status().as_u16(), 200);
    let refused = http.get(format!("{}/never", agent.ingress)).send().expect("request");
    assert_eq!(refused.status().as_u16(), 503, "a service that is not ready takes no traffic");
}

/// A service whose `livenessPath` fails is restarted with the same back-off
/// as a crashing program: a handful of restarts in seconds, not one per
/// probe (and never a restart loop without a pause).
#[test]
fn a_failing_liveness_probe_restarts_with_back_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    // http-slow answers 400 to `?ms=abc`: never alive.
    place_file(
        dir.path(),
        "dying.yaml",
        &workload_manifest("dying", "http-slow", "service", "  route: {pathPrefix: /dying}\n  livenessPath: \"/?ms=abc\"\n"),
    );
    let agent = Agent::start(&[
        "--manifests-dir",
        dir.path().to_str().expect("utf-8"),
        "--manifests-poll-interval",
        "100ms",
        "--restart-backoff-initial",
        "500ms",
        "--restart-backoff-max",
        "10s",
    ])
    .expect("agent starts");
    let first =
        wasmlet_tests::wait_for(WAIT, "the first liveness restart", || agent.instance("dying-0").filter(|i| i.status.restarts >= 1));
    let termination = first.status.last_termination.expect("a last termination");
    assert_eq!(termination.reason, "LivenessProbeFailed");
    assert!(termination.message.contains("400"), "{}", termination.message);
    // Back-off of 0.5 s, 1 s, 2 s, 4 s: within 5 s of the first restart, at most four more.
    std::thread::sleep(Duration::from_secs(5));
    let restarts = agent.instance("dying-0").expect("the instance").status.restarts;
    assert!((2..=5).contains(&restarts), "{restarts} restarts in about 5 s");
    let events: Vec<wasmlet_api::Event> = agent.get_json("/events").expect("events");
    assert!(events.iter().any(|e| e.reason == "BackOff" && e.involved_object.name == "dying-0"), "a BackOff event");
}
