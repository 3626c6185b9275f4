//! A node behind NAT: its agent runs in a network namespace that reaches the
//! master only through a masquerading router namespace (`wasmlet_tests::nat`),
//! so the master sees its connections come from the router, where nothing
//! listens, and cannot open one to it. Logs (followed), `top instances` and
//! `describe node` reach it through the channel the agent holds open to the
//! master; and a node's credential cannot answer for another node through it.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use wasmlet_tests::nat::NatLab;
use wasmlet_tests::{Agent, Master, bin, example, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Runs `wasmlet args…` as the admin of `master`.
fn wasmlet(master: &Master, args: &[&str]) -> Output {
    cli(master, args).output().expect("wasmlet runs")
}

fn cli(master: &Master, args: &[&str]) -> Command {
    let config = master.cli_config(master.data_dir.path());
    let mut command = Command::new(bin("wasmlet"));
    command
        .args(args)
        .env("WASMLETCONFIG", &config)
        .env("NO_COLOR", "1")
        .env_remove("WASMLET_MASTER")
        .env_remove("WASMLET_TOKEN")
        .stdin(Stdio::null());
    command
}

fn ok(master: &Master, args: &[&str]) -> String {
    let o = wasmlet(master, args);
    assert!(o.status.success(), "wasmlet {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A figure of the master's `/metrics` (0 when the series is absent).
fn metric(master: &Master, series: &str) -> f64 {
    master.metric(series).unwrap_or(0.0)
}

const BY_CHANNEL: &str = "wasmlet_master_live_requests_total{via=\"channel\"}";
const BY_DIAL: &str = "wasmlet_master_live_requests_total{via=\"dial\"}";

/// Joins `name` to `master` from `command` (the agent binary, here or inside the NAT).
fn join(master: &Master, command: Command, name: &str) -> Agent {
    let mut args = vec!["--name", name, "--sample-interval", "500ms"];
    args.extend(master.join_args());
    let agent = Agent::start_command(command, &args).expect("the agent starts");
    wait_for(WAIT, &format!("node {name} Ready"), || master.nodes().iter().any(|n| n.metadata.name == name && n.is_ready()).then_some(()));
    agent
}

#[test]
fn a_node_behind_nat_serves_logs_top_and_describe_through_its_channel_and_answers_only_for_itself() {
    let lab = NatLab::create().expect("the NAT lab (root, ip, iptables)");
    let mut master = Master::start_on(&lab.host_ip, &["--tls-san", &lab.host_ip]).expect("master starts");
    let edge = join(&master, lab.inside(&bin("wasmlet-agent")), "edge");

    // The master sees the router's address and cannot open a connection to the agent there.
    let node = master.nodes().into_iter().find(|n| n.metadata.name == "edge").expect("node edge");
    let api = node.metadata.annotations.get("wasmlet.io/agent-api").expect("the agent's API as the master knows it").clone();
    assert!(api.starts_with(&format!("https://{}:", lab.router_ip)), "the registration came from the router: {api}");
    let address: std::net::SocketAddr = api.trim_start_matches("https://").parse().expect("host:port");
    assert!(std::net::TcpStream::connect_timeout(&address, Duration::from_secs(3)).is_err(), "the master could dial {address}");
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&master, "wasmlet_master_agent_channels") != 1.0 {
        assert!(std::time::Instant::now() < deadline, "no channel from edge; its log:\n{}", edge.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let (path, digest) = example("sensor");
    std::fs::copy(&path, dir.path().join("sensor.wasm")).expect("copy sensor.wasm");
    let manifest = dir.path().join("sensor.yaml");
    let text = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: sensor\nspec:\n  type: daemon\n  module:\n    source: sensor.wasm\n    digest: {digest}\n  args: [\"--interval\", \"200\"]\n"
    );
    std::fs::write(&manifest, text).expect("write manifest");
    ok(&master, &["apply", "-f", manifest.to_str().expect("utf-8"), "--wait", "--timeout", "60s"]);

    // Followed logs stream through the channel.
    let seqs = wasmlet_tests::followed_sensor_seqs(cli(&master, &["logs", "workload/sensor", "-f", "--tail", "1"]), 3);
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "new lines arrive while following: {seqs:?}");

    let top = ok(&master, &["top", "instances"]);
    assert!(top.lines().any(|l| l.contains("sensor") && l.contains("edge")), "{top}");
    let before = metric(&master, BY_CHANNEL);
    let described = wasmlet(&master, &["describe", "node", "edge"]);
    let page = String::from_utf8_lossy(&described.stdout);
    assert!(described.status.success() && page.contains("Name:               edge"), "{page}");
    assert!(described.stderr.is_empty(), "no note of missing live usage: {}", String::from_utf8_lossy(&described.stderr));
    assert_eq!(metric(&master, BY_CHANNEL), before + 1.0, "describe node asked the agent, through its channel");
    assert_eq!(metric(&master, BY_DIAL), 0.0, "nothing was dialed");

    // Another node's credential: it cannot open edge's channel, nor can an admin's token.
    let mut other = join(&master, Command::new(bin("wasmlet-agent")), "other");
    // Saved by the agent once the registration's answer is in, a moment after the master sees it Ready.
    let stolen = crate::identity::credential(&other);
    other.kill();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(master.ca_pem.as_bytes()).expect("CA"))
        .build()
        .expect("client");
    let upgrade = |node: &str, token: &str| {
        http.get(format!("{}/api/v1/nodes/{node}/channel", master.url))
            .bearer_auth(token)
            .header("connection", "Upgrade")
            .header("upgrade", "wasmlet-channel")
            .send()
    };
    for token in [stolen.as_str(), master.admin_token.as_str()] {
        let answer = runtime.block_on(upgrade("edge", token)).expect("an answer");
        assert_eq!(answer.status(), 403, "opening edge's channel with another's token");
    }
    // With its own channel, the other node answers whatever it likes, but for itself only.
    let answer = runtime.block_on(upgrade("other", &stolen)).expect("an answer");
    assert_eq!(answer.status(), 101, "a node opens its own channel");
    let upgraded = runtime.block_on(answer.upgrade()).expect("upgraded");
    let forged = axum::Router::new().fallback(|| async { "FORGED\n" });
    runtime.spawn(
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(upgraded), hyper_util::service::TowerToHyperService::new(forged)),
    );
    let admin = master.client();
    let read = |path: &str| admin.get(master.api(path)).send().and_then(|r| r.text()).expect("an answer");
    wait_for(WAIT, "the forged channel in use", || (read("/nodes/other/live") == "FORGED\n").then_some(()));
    let sensor = master.instances().into_iter().find(|i| i.spec.workload == "sensor").expect("the sensor").metadata.name;
    let logs = read(&format!("/instances/{sensor}/logs?tail=2"));
    assert!(logs.contains("\"seq\":") && !logs.contains("FORGED"), "edge's log comes from edge: {logs}");
    let live = read("/nodes/edge/live");
    assert!(live.contains("\"name\":\"edge\"") && !live.contains("FORGED"), "{live}");

    // A channel is used only while the credential that opened it is valid.
    let id = stolen.split('.').next().expect("the credential's id");
    let revoked = admin.delete(master.api(&format!("/tokens/{id}"))).send().expect("revoke");
    assert!(revoked.status().is_success(), "revoking other's credential: {}", revoked.status());
    let after = admin.get(master.api("/nodes/other/live")).send().expect("an answer");
    assert_eq!(after.status(), 502, "the forged channel is no longer used, and other's agent is gone");

    // A restarted master is given the channel again.
    master.restart().expect("the master restarts");
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&master, "wasmlet_master_agent_channels") != 1.0 {
        assert!(std::time::Instant::now() < deadline, "edge did not open its channel again; its log:\n{}", edge.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let live = master.client().get(master.api("/nodes/edge/live")).send().and_then(|r| r.text()).expect("an answer");
    assert!(live.contains("\"name\":\"edge\""), "{live}");
    assert_eq!(metric(&master, BY_DIAL), 0.0, "nothing was dialed");

    // An agent that stops answering on its channel: a timeout naming the node, not a hang.
    edge.freeze();
    let late = master.client().get(master.api("/nodes/edge/live")).send().expect("an answer");
    assert_eq!(late.status(), 504);
    let text = late.text().expect("body");
    assert!(text.contains("AgentTimeout") && text.contains("node `edge`"), "{text}");
    drop(edge);
}
