//! Slow and idle clients against every listener (the agent's API and ingress,
//! the master's API), as an attacker would send them: a header trickled one
//! line a second, kept-alive connections left idle, and 20,000 idle
//! connections from other processes, more than a daemon has descriptors for.
//! The daemons cut the slow ones off, close the idle ones, keep at most their
//! limit open and go on serving their own work meanwhile.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use wasmlet_api::{ConditionType, Phase};
use wasmlet_tests::{Agent, Master, bin, place_file, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);
/// The hard open-files limit the flood tests give the daemons (this machine's).
const OPEN_FILES: u64 = 20_000;
/// The attack: more idle connections than a daemon has descriptors.
const ATTACKERS: usize = 4;
const PER_ATTACKER: usize = 5_000;

/// Host and port of an `http://host:port` URL.
fn socket_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").trim_start_matches("https://").parse().expect("a host:port URL")
}

/// A value of `/metrics` text: the line that starts with `series` exactly.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// How a trickled request ended.
struct Trickle {
    lines_sent: usize,
    took: Duration,
}

/// Opens a connection to `addr`, sends `before` (complete requests, whose
/// answers it reads), then the start of a request and one more header line
/// every second, never finishing it, until the server closes the connection.
fn trickle(addr: SocketAddr, before: &str) -> Trickle {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_millis(1000))).expect("read timeout");
    if !before.is_empty() {
        stream.write_all(before.as_bytes()).expect("first request");
        let mut answer = [0u8; 4096];
        let n = stream.read(&mut answer).expect("the first answer");
        assert!(answer[..n].starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&answer[..n]));
    }
    let started = Instant::now();
    let mut lines_sent = 0;
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n");
    // 60 lines at one a second is far beyond any timeout the tests set.
    while lines_sent < 60 {
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            // The server closed the connection (or reset it): the trickle is over.
            Ok(0) => break,
            Err(e) if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Ok(n) => panic!("the server answered an unfinished request: {}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
        if stream.write_all(format!("X-Slow-{lines_sent}: a\r\n").as_bytes()).is_err() {
            break;
        }
        lines_sent += 1;
    }
    Trickle { lines_sent, took: started.elapsed() }
}

/// Waits until the server closes a connection that carried one complete request and then nothing.
fn idle_after_one_request(addr: SocketAddr, request: &str) -> Duration {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("request");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let started = Instant::now();
    let mut answer = Vec::new();
    // The answer arrives, then end-of-file when the server closes the idle connection.
    let _ = stream.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < WAIT, "the idle connection was not closed within {WAIT:?}");
    started.elapsed()
}

/// How long a silent client keeps its connection: the time until the server closes it.
fn silent(addr: SocketAddr) -> Duration {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let started = Instant::now();
    let closed = stream.read(&mut [0u8; 64]);
    assert!(matches!(closed, Ok(0) | Err(_)) && started.elapsed() < WAIT, "a silent client kept its connection: {closed:?}");
    started.elapsed()
}

#[test]
fn slow_headers_are_cut_off_and_idle_connections_closed_on_every_listener() {
    let (header, idle) = (Duration::from_secs(1), Duration::from_secs(2));
    let timeouts = ["--header-read-timeout", "1s", "--idle-timeout", "2s"];
    // No new sample for the test's length: a watch of /status waits its whole time.
    let agent = Agent::start(&[&timeouts[..], &["--sample-interval", "1h"]].concat()).expect("agent starts");
    let master = Master::start(&[&["--insecure-http"][..], &timeouts].concat()).expect("master starts");
    let tls_master = Master::start(&timeouts).expect("a master serving TLS starts");
    let listeners = [("agent API", socket_of(&agent.api)), ("ingress", socket_of(&agent.ingress)), ("master", socket_of(&master.url))];
    let keep_alive = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

    // All at once, on every listener: slowloris on a new connection and on a
    // kept-alive one, a kept-alive connection left idle, and (over TLS) a
    // client that never starts its handshake.
    let trickles: Vec<_> = listeners
        .iter()
        .flat_map(|&(name, addr)| [(name, addr, ""), (name, addr, keep_alive)])
        .map(|(name, addr, before)| (name, before.is_empty(), std::thread::spawn(move || trickle(addr, before))))
        .collect();
    let idles: Vec<_> =
        listeners.iter().map(|&(name, addr)| (name, std::thread::spawn(move || idle_after_one_request(addr, keep_alive)))).collect();
    let tls = socket_of(&tls_master.url);
    let handshake = std::thread::spawn(move || silent(tls));

    // A request in flight is never cut by these timers: a long poll outlives both.
    let version: u64 = {
        let node: wasmlet_api::Node = agent.get_json("/status").expect("GET /status");
        node.metadata.resource_version.expect("a resourceVersion")
    };
    let agent_client = agent.client_builder().timeout(WAIT).build().expect("client");
    let agent_poll = agent.url(&format!("/status?watch=true&since={version}&timeoutSeconds=3"));
    let agent_poll = std::thread::spawn(move || agent_client.get(agent_poll).send().map(|r| r.status()));
    let revision = master.get_json::<serde_json::Value>("/nodes").expect("GET /nodes")["revision"].as_u64().unwrap_or(0);
    let watched = master
        .client_with(&master.admin_token)
        .timeout(WAIT)
        .build()
        .expect("client")
        .get(master.api(&format!("/nodes?watch=true&since={revision}&timeoutSeconds=3")))
        .send()
        .expect("a watch of 3 s is answered");
    assert_eq!(watched.status(), reqwest::StatusCode::NOT_MODIFIED, "the master's watch ran its course");
    let polled = agent_poll.join().expect("the poll ran").expect("a long poll of 3 s is answered");
    assert_eq!(polled, reqwest::StatusCode::NOT_MODIFIED, "the agent's long poll ran its course");

    // The server's timers start at accept, a moment before the client's clock does (after its connect).
    let slack = Duration::from_millis(50);
    for (name, fresh, run) in trickles {
        let t = run.join().expect("the trickle ran");
        let what = if fresh { "a new connection" } else { "a kept-alive connection" };
        assert!(t.lines_sent < 60, "{name}: {what} took a header line a second for a minute");
        // The cut is the timeout's, not an accident: it never comes before the client's time is up.
        assert!(t.took + slack >= header, "{name}: {what} was cut after {:?}, before its {header:?}", t.took);
    }
    for (name, run) in idles {
        let took = run.join().expect("the idle client ran");
        assert!(took + slack >= idle, "{name}: closed after {took:?}, before its idle timeout of {idle:?}");
    }
    let took = handshake.join().expect("the silent TLS client ran");
    assert!(took + slack >= header, "a silent TLS client was cut after {took:?}, before its {header:?}");

    // The figures say which timer closed what.
    let agent_metrics = agent.get_text("/metrics").expect("agent /metrics");
    for listener in ["api", "ingress"] {
        for (phase, least) in [("header", 2.0), ("idle", 1.0)] {
            let series = format!("wasmlet_agent_connections_timed_out_total{{listener=\"{listener}\",phase=\"{phase}\"}}");
            let count = metric(&agent_metrics, &series).unwrap_or(0.0);
            assert!(count >= least, "{series} is {count}, expected at least {least}:\n{agent_metrics}");
        }
    }
    for (server, least_header) in [(&master, 2.0), (&tls_master, 1.0)] {
        let text = server.client().get(format!("{}/metrics", server.url)).send().and_then(|r| r.text()).expect("master /metrics");
        for (phase, least) in [("header", least_header), ("idle", if server.url.starts_with("http:") { 1.0 } else { 0.0 })] {
            let series = format!("wasmlet_master_connections_timed_out_total{{listener=\"api\",phase=\"{phase}\"}}");
            let count = metric(&text, &series).unwrap_or(0.0);
            assert!(count >= least, "{series} is {count}, expected at least {least}:\n{text}");
        }
    }
}

/// What one attacking process reported last.
#[derive(Default)]
struct Held {
    /// Connections established, once every attempt ended.
    established: Option<usize>,
    /// Connections the server has not closed.
    open: usize,
}

/// Processes holding idle connections to one address, killed when dropped.
struct IdleClients {
    children: Vec<Child>,
    counts: Vec<Arc<Mutex<Held>>>,
}

impl IdleClients {
    /// Starts [`ATTACKERS`] processes with [`PER_ATTACKER`] connections each, from
    /// loopback addresses of their own, and waits until every one is established.
    fn open(target: SocketAddr, first_source: u8) -> IdleClients {
        let mut clients = IdleClients { children: Vec::new(), counts: Vec::new() };
        for i in 0..ATTACKERS {
            let source = format!("127.0.{first_source}.{}", i + 1);
            let mut child = Command::new(bin("wasmlet-idle-clients"))
                .args([target.to_string(), PER_ATTACKER.to_string(), source])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("wasmlet-idle-clients starts");
            let out = child.stdout.take().expect("stdout");
            let counts = Arc::new(Mutex::new(Held::default()));
            let shared = counts.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let mut c = shared.lock().expect("counts");
                    if let Some(n) = line.strip_prefix("connected ").and_then(|n| n.parse().ok()) {
                        c.established = Some(n);
                    } else if let Some(n) = line.strip_prefix("open ").and_then(|n| n.parse().ok()) {
                        c.open = n;
                    }
                }
            });
            clients.children.push(child);
            clients.counts.push(counts);
        }
        wait_for(WAIT, "every idle connection to be established", || {
            let established: Option<usize> = clients.counts.iter().map(|c| c.lock().expect("counts").established).sum();
            established.map(|n| assert_eq!(n, ATTACKERS * PER_ATTACKER, "connections established"))
        });
        clients
    }

    /// Connections the server has not closed, over all processes.
    fn open_now(&self) -> usize {
        self.counts.iter().map(|c| c.lock().expect("counts").open).sum()
    }

    fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Gives this test process (and so every daemon it starts) a low soft and a
/// fixed hard open-files limit, as a service manager would: the daemons raise
/// the soft limit and size their connection limits from the hard one.
fn open_files_like_a_service() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(Resource::Nofile, Rlimit { current: Some(1024), maximum: Some(OPEN_FILES) }).expect("setting the open-files limit");
}

#[test]
fn twenty_thousand_idle_connections_leave_the_agent_working() {
    open_files_like_a_service();
    let master = Master::start(&["--heartbeat-interval", "500ms", "--node-grace-period", "5s", "--lost-after", "30s"]).expect("master");
    let manifests = tempfile::tempdir().expect("tempdir");
    place_file(manifests.path(), "hello.yaml", &workload_manifest("hello", "http-hello", "service", "  route: {pathPrefix: /hello}\n"));
    let dir = manifests.path().to_str().expect("utf-8");
    let agent = Agent::start(
        &[
            &master.join_args()[..],
            &["--name", "edge-flood", "--manifests-dir", dir, "--manifests-poll-interval", "100ms"],
            // The attack holds its connections for the whole test, however slow the machine.
            &["--header-read-timeout", "5m", "--idle-timeout", "5m"],
        ]
        .concat(),
    )
    .expect("agent starts");
    wait_for(WAIT, "the node Ready in the master", || master.nodes().iter().any(|n| n.is_ready()).then_some(()));
    agent.wait_phase("hello-0", Phase::Running, WAIT);
    // Clients that do not keep connections: every one the ingress holds below is the attack's.
    let client = || Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(0).build().expect("client");
    let hello = |client: &Client| client.get(format!("{}/hello", agent.ingress)).send().map(|r| r.status().as_u16());
    assert_eq!(hello(&client()).expect("the service answers"), 200);
    let ingress_open = || agent.metric("wasmlet_agent_connections_open{listener=\"ingress\"}");
    wait_for(WAIT, "the ingress to hold no connection", || (ingress_open() == Some(0.0)).then_some(()));

    // The default: a quarter of the open files (after raising the soft limit to the hard one), at most 4096.
    let limit = agent.metric("wasmlet_agent_connection_limit{listener=\"ingress\"}").expect("the ingress limit in /metrics");
    assert_eq!(limit, (OPEN_FILES / 4).min(4096) as f64, "the default ingress limit");
    let mut attack = IdleClients::open(socket_of(&agent.ingress), 11);
    wait_for(WAIT, "the ingress to keep its limit and close the rest", || (attack.open_now() == limit as usize).then_some(()));
    let refused = agent.metric("wasmlet_agent_connections_refused_total{listener=\"ingress\"}").unwrap_or(0.0);
    assert!(refused >= (ATTACKERS * PER_ATTACKER) as f64 - limit, "refused {refused} connections");
    eprintln!(
        "agent under {} idle ingress connections: {} held, {refused} refused, RSS {} MiB",
        ATTACKERS * PER_ATTACKER,
        attack.open_now(),
        wasmlet_tests::rss_bytes(agent.pid()).unwrap_or(0) >> 20
    );

    // The agent's own work goes on: its API, its manifests dir, its master link.
    let fresh = client();
    let healthz = agent.client().get(agent.url("/healthz")).send().expect("GET /healthz under attack");
    assert_eq!(healthz.status(), 200);
    let status: wasmlet_api::Node = agent.get_json("/status").expect("GET /status under attack");
    assert!(status.is_ready(), "the agent reports itself Ready");
    place_file(manifests.path(), "job.yaml", &workload_manifest("job", "hello", "job", ""));
    agent.wait_phase("job-0", Phase::Succeeded, WAIT);
    assert!(agent.metric("wasmlet_agent_connections_accepted_total{listener=\"api\"}").is_some(), "the API counts its connections too");
    // A new ingress connection is closed at once while the ingress is full: no hanging client.
    assert!(hello(&fresh).is_err(), "the ingress took a connection beyond its limit");
    // The master hears from the node throughout (its grace period is 5 s): ten more heartbeats.
    let master_metrics = || master.client().get(format!("{}/metrics", master.url)).send().and_then(|r| r.text()).unwrap_or_default();
    let renewals = || metric(&master_metrics(), "wasmlet_master_http_requests_total{method=\"PUT\",code=\"200\"}").unwrap_or(0.0);
    let before = renewals();
    wait_for(WAIT, "ten more heartbeats under attack", || (renewals() >= before + 10.0).then_some(()));
    assert_eq!(attack.open_now(), limit as usize, "the attack still fills the ingress");
    assert!(master.nodes().iter().all(|n| n.is_ready()), "the node stayed Ready in the master");
    let not_ready = master.events().into_iter().filter(|e| e.reason == "NodeNotReady").count();
    assert_eq!(not_ready, 0, "the node never went NotReady under attack");

    // Once the attack ends, the ingress serves new requests again.
    attack.stop();
    wait_for(WAIT, "the ingress to serve a new request", || hello(&fresh).ok().filter(|s| *s == 200));
    wait_for(WAIT, "the ingress to let go of the attack's connections", || (ingress_open() == Some(0.0)).then_some(()));
    let ready = master.nodes().into_iter().find(|n| n.metadata.name == "edge-flood").expect("the node");
    assert_eq!(ready.condition(ConditionType::Ready).map(|c| c.status), Some(wasmlet_api::ConditionStatus::True));
}

#[test]
fn idle_connections_do_not_stop_the_masters_heartbeats() {
    open_files_like_a_service();
    let master = Master::start(
        &[
            &["--heartbeat-interval", "500ms", "--node-grace-period", "5s", "--lost-after", "30s"][..],
            &["--header-read-timeout", "5m", "--idle-timeout", "5m"],
        ]
        .concat(),
    )
    .expect("master starts");
    let agent = Agent::start(&[&master.join_args()[..], &["--name", "edge-beat"]].concat()).expect("agent starts");
    wait_for(WAIT, "the node Ready", || master.nodes().iter().any(|n| n.is_ready()).then_some(()));
    // This client's connection is opened before the attack and kept alive: it watches from inside.
    let inside = master.client();
    let scrape = || inside.get(format!("{}/metrics", master.url)).send().and_then(|r| r.text()).expect("master /metrics");
    let limit = metric(&scrape(), "wasmlet_master_connection_limit{listener=\"api\"}").expect("the API's limit in /metrics");
    assert_eq!(limit, (OPEN_FILES * 3 / 4) as f64, "the default limit is 75% of the hard open-files limit");

    let attack = IdleClients::open(socket_of(&master.url), 12);
    wait_for(WAIT, "the master to hold its limit and close the rest", || {
        let text = scrape();
        let open = metric(&text, "wasmlet_master_connections_open{listener=\"api\"}").unwrap_or(0.0);
        let refused = metric(&text, "wasmlet_master_connections_refused_total{listener=\"api\"}").unwrap_or(0.0);
        (open == limit && refused >= (ATTACKERS * PER_ATTACKER) as f64 - limit).then_some(())
    });
    // The helpers report what they hold every so often: wait for their first word.
    wait_for(WAIT, "the attack to hold connections", || (attack.open_now() > 0).then_some(()));
    eprintln!(
        "master under {} idle connections: {} held by the attack, RSS {} MiB",
        ATTACKERS * PER_ATTACKER,
        attack.open_now(),
        wasmlet_tests::rss_bytes(master.pid().unwrap_or(0)).unwrap_or(0) >> 20
    );
    // Lease renewals go on over the agent's connections, as counted by the master.
    let renewals = |text: &str| metric(text, "wasmlet_master_http_requests_total{method=\"PUT\",code=\"200\"}").unwrap_or(0.0);
    let before = renewals(&scrape());
    wait_for(WAIT, "ten more heartbeats under attack", || (renewals(&scrape()) >= before + 10.0).then_some(()));
    let nodes = inside.get(master.api("/nodes")).send().and_then(|r| r.json::<serde_json::Value>()).expect("GET /nodes");
    let ready = nodes["items"][0]["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].clone());
    assert_eq!(ready, Some(serde_json::json!("True")), "the node stayed Ready: {nodes}");
    let events = inside.get(master.api("/events")).send().and_then(|r| r.text()).expect("GET /events");
    assert!(!events.contains("NodeNotReady"), "the node never went NotReady: {events}");
    drop(attack);
    // A new client gets in once the attack is over.
    wait_for(WAIT, "a new connection to be served", || {
        let client = master.anonymous().timeout(Duration::from_secs(5)).build().ok()?;
        client.get(format!("{}/healthz", master.url)).send().ok().filter(|r| r.status().is_success())
    });
    drop(agent);
}

/// A joined node's ingress serves the public over plain HTTP and its peers
/// over mutual TLS on one port: both kinds of connection are held to the
/// same timers and the same limit. A slowloris, a client that starts a TLS
/// handshake and stops, and more connections than the limit, while a real
/// peer's request still goes through once the limit frees.
#[test]
fn a_joined_nodes_ingress_bounds_peers_and_the_public_alike() {
    let master = Master::start(&[]).expect("master starts");
    let bounds = ["--header-read-timeout", "1s", "--idle-timeout", "2s", "--ingress-max-connections", "16"];
    let agent = crate::identity::join(&master, "bounded", &master.join_token, &bounds);
    crate::identity::wait_ready(&master, "bounded");
    let ingress = socket_of(&agent.ingress);

    let slowloris = std::thread::spawn(move || trickle(ingress, ""));
    // The first bytes of a TLS handshake record, then nothing: the peer path waits for the rest.
    let stalled_handshake = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(ingress).expect("connect");
        stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).expect("a handshake's first bytes");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        let started = Instant::now();
        let closed = stream.read(&mut [0u8; 64]);
        assert!(matches!(closed, Ok(0) | Err(_)), "a stalled handshake got an answer: {closed:?}");
        started.elapsed()
    });
    let t = slowloris.join().expect("the trickle ran");
    assert!(t.lines_sent < 60 && t.took >= Duration::from_secs(1), "the slowloris held on for {:?}", t.took);
    let took = stalled_handshake.join().expect("the stalled handshake ran");
    // Its time runs from the connection's acceptance, a moment before the client's clock starts.
    assert!(took >= Duration::from_millis(900) && took < WAIT, "a stalled peer handshake was closed after {took:?}");

    // More silent connections than the limit: those beyond what is left of it are closed at once.
    let open = |what: &str| agent.metric(&format!("wasmlet_agent_connections_{what}{{listener=\"ingress\"}}")).unwrap_or(0.0);
    wait_for(WAIT, "the attackers' connections to be closed", || (open("open") == 0.0).then_some(()));
    let refused_before = open("refused_total");
    let held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(ingress).expect("connect")).collect();
    wait_for(WAIT, "the ingress to refuse the connections beyond its limit", || {
        (open("refused_total") - refused_before >= 24.0).then_some(())
    });
    assert_eq!(open("refused_total") - refused_before, 24.0, "40 connections against a limit of 16");
    drop(held);
    // Once they are gone the ingress serves again.
    let client = Client::builder().timeout(WAIT).build().expect("client");
    // (No service is called `bounded.invalid`: any HTTP answer shows the ingress serving.)
    wait_for(WAIT, "the ingress to answer again", || client.get(&agent.ingress).header("host", "bounded.invalid").send().ok());
    let timed_out = agent.metric("wasmlet_agent_connections_timed_out_total{listener=\"ingress\",phase=\"header\"}").unwrap_or(0.0);
    assert!(timed_out >= 2.0, "the ingress counted {timed_out} header timeouts");
}
