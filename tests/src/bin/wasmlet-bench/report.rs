//! Scenario `report`: what the agent's node report costs on this machine, next
//! to the usual way of exposing the same facts, Debian's
//! `prometheus-node-exporter`. A node agent runs on every node next to the
//! workloads, so what it takes from them (memory, CPU) and how well its API
//! holds up under scraping decide whether it is cheap enough to run everywhere.
//!
//! 1. Idle RSS: an agent with default settings and a node_exporter each answer
//!    one `/metrics` scrape, then sit idle for [`IDLE_WAIT`]; their resident
//!    set sizes and the ratio agent/node_exporter (goal <= 1.0).
//! 2. CPU per sample: an agent sampling every 100 ms; over [`CPU_WINDOW`] its
//!    process CPU time divided by the samples it published (counted by the
//!    `metadata.resourceVersion` of `/status`, which grows by one per changed
//!    sample). This includes the agent's idle cost in that window.
//! 3. Load: `wrk -t1 -c32 -d10s --latency` from a separate process against the
//!    agent's `/status` and `/metrics` and node_exporter's `/metrics`, each
//!    after a short warm-up: requests per second, p50 and p99 latency, and
//!    failed requests (which should be 0 for the others to mean much). Goals:
//!    agent `/metrics` p99 at most 0.2 × node_exporter's, agent `/status` at
//!    least 10000 requests per second.
//!
//! The agents run on their own (no master), so their API is plain HTTP on
//! loopback; it takes a bearer token on `/status` and `/metrics`. Both agents
//! are started with `--api-read-token`, and every request to them (the bench's
//! own and wrk's) carries that token, as a resource-report poller's would.
//! node_exporter takes none.
//!
//! Every target listens on 127.0.0.1. Every process started here is stopped by
//! its guard when `run` returns, also on an error or a panic.

use std::fmt::Display;
use std::thread::sleep;
use std::time::Duration;

use anyhow::Context;
use wasmlet_api::Node;
use wasmlet_tests::{Agent, bin, cpu_seconds, rss_bytes};

use crate::figures::{Figure, Figures, Goal};
use crate::support::{NODE_EXPORTER, NodeExporter, bearer_client, get_ok, hex_id, require_executable};
use crate::wrk::{self, Load};

/// The subject name of wasmlet's node agent in the figures.
const AGENT: &str = "agent";

/// How long both processes sit idle before their RSS is read.
const IDLE_WAIT: Duration = Duration::from_secs(6);
const RSS_RATIO_GOAL: Goal = Goal::AtMost(1.0);

/// The sample interval of the agent whose CPU per sample is measured.
const FAST_SAMPLE_INTERVAL: &str = "100ms";
/// Lets start-up work finish before the CPU window opens.
const SETTLE: Duration = Duration::from_secs(1);
const CPU_WINDOW: Duration = Duration::from_secs(10);

const LOAD: Load = Load { threads: 1, connections: 32, duration: Duration::from_secs(10) };
const WARM_UP: Load = Load { duration: Duration::from_secs(2), ..LOAD };
/// A pause after the warm-up: wrk drops its connections mid-request when it
/// stops, and a server may still be answering them. node_exporter counts those
/// against its limit of 40 requests in flight and would answer the measured
/// run's first requests with 503.
const DRAIN: Duration = Duration::from_secs(1);
const METRICS_P99_RATIO_GOAL: Goal = Goal::AtMost(0.2);
const STATUS_RPS_GOAL: Goal = Goal::AtLeast(10_000.0);

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    // Fail before starting anything when a tool is missing.
    require_executable(&bin("wasmlet-agent"), "run `cargo build -p wasmlet-agent --bins` (or set WASMLET_BIN_DIR)")?;
    NodeExporter::require()?;
    wrk::require()?;
    // The token a resource-report poller would hold: it may read /status and /metrics only.
    let read_token = hex_id(&format!("report read token {} {:?}", std::process::id(), std::time::SystemTime::now()));
    let client = bearer_client(&read_token)?;

    progress("starting an agent (default settings but --api-read-token) and prometheus-node-exporter");
    let agent = Agent::start(&["--api-read-token", &read_token]).context("starting wasmlet-agent")?;
    let exporter = NodeExporter::start()?;
    idle_rss(figures, &client, &agent, &exporter)?;

    cpu_per_sample(figures, &client, &read_token)?;

    let status = load(figures, AGENT, "status", &agent.url("/status"), Some(&read_token), Some(STATUS_RPS_GOAL))?;
    let metrics = load(figures, AGENT, "metrics", &agent.url("/metrics"), Some(&read_token), None)?;
    let exporter_metrics = load(figures, NODE_EXPORTER, "metrics", &exporter.url("/metrics"), None, None)?;
    figures.emit(Figure::ratio(AGENT, "metrics_p99_ms", metrics.p99_ms, NODE_EXPORTER, exporter_metrics.p99_ms, METRICS_P99_RATIO_GOAL))?;
    progress(format!(
        "agent /status {:.0} req/s (goal {STATUS_RPS_GOAL}); agent /metrics p99 {:.2} ms vs {NODE_EXPORTER} {:.2} ms",
        status.requests_per_second, metrics.p99_ms, exporter_metrics.p99_ms
    ));
    Ok(())
}

/// Figure 1: RSS of both after one scrape and [`IDLE_WAIT`] of rest.
fn idle_rss(figures: &mut Figures, client: &reqwest::blocking::Client, agent: &Agent, exporter: &NodeExporter) -> anyhow::Result<()> {
    // node_exporter has answered a scrape already (that is how its start is
    // detected); the agent answers one too, so both have done their work once.
    get_ok(client, &agent.url("/metrics"))?;
    progress(format!("idle RSS: waiting {IDLE_WAIT:?}"));
    sleep(IDLE_WAIT);
    let agent_rss = rss(agent.pid(), "wasmlet-agent")?;
    let exporter_rss = rss(exporter.pid(), NODE_EXPORTER)?;
    figures.emit(Figure::new(AGENT, "idle_rss_bytes", agent_rss))?;
    figures.emit(Figure::new(NODE_EXPORTER, "idle_rss_bytes", exporter_rss))?;
    figures.emit(Figure::ratio(AGENT, "idle_rss_bytes", agent_rss as f64, NODE_EXPORTER, exporter_rss as f64, RSS_RATIO_GOAL))?;
    progress(format!("idle RSS: agent {} KiB, {NODE_EXPORTER} {} KiB", agent_rss / 1024, exporter_rss / 1024));
    Ok(())
}

/// Figure 2: CPU time per published sample of an agent sampling every 100 ms;
/// `client` carries `read_token`, which the agent takes.
fn cpu_per_sample(figures: &mut Figures, client: &reqwest::blocking::Client, read_token: &str) -> anyhow::Result<()> {
    progress(format!("CPU per sample: starting an agent with --sample-interval {FAST_SAMPLE_INTERVAL}"));
    let agent =
        Agent::start(&["--sample-interval", FAST_SAMPLE_INTERVAL, "--api-read-token", read_token]).context("starting wasmlet-agent")?;
    sleep(SETTLE);
    progress(format!("CPU per sample: measuring for {CPU_WINDOW:?}"));
    let cpu_before = cpu(agent.pid())?;
    let version_before = resource_version(client, &agent)?;
    sleep(CPU_WINDOW);
    let cpu_after = cpu(agent.pid())?;
    let version_after = resource_version(client, &agent)?;

    let samples = version_after.saturating_sub(version_before);
    let cpu_ms = (cpu_after - cpu_before) * 1000.0;
    // No sample at all gives `null`, not a failure: the bench reports.
    let cpu_ms_per_sample = if samples == 0 { f64::NAN } else { cpu_ms / samples as f64 };
    let window = format!("{} s at --sample-interval {FAST_SAMPLE_INTERVAL}", CPU_WINDOW.as_secs());
    figures.emit(
        Figure::new(AGENT, "samples", samples)
            .note(&format!("samples published in {window}, counted by metadata.resourceVersion of /status")),
    )?;
    figures.emit(Figure::new(AGENT, "cpu_ms_per_sample", cpu_ms_per_sample).note(&format!(
        "process CPU time (user+system) over {window} divided by samples; includes the agent's idle cost in that window"
    )))?;
    progress(format!("CPU per sample: {samples} samples, {cpu_ms:.0} ms CPU"));
    Ok(())
}

/// Figure 3: a warm-up, then the measured wrk run against `url`, every request
/// with `bearer` as its token if any; emits `<endpoint>_rps` (judged against
/// `rps_goal` if any), `_p50_ms`, `_p99_ms` and `_errors`.
fn load(
    figures: &mut Figures,
    subject: &str,
    endpoint: &str,
    url: &str,
    bearer: Option<&str>,
    rps_goal: Option<Goal>,
) -> anyhow::Result<wrk::WrkReport> {
    progress(format!("load: {subject} {url}: warm-up {:?}, then {:?}", WARM_UP.duration, LOAD.duration));
    let run = |load: Load| match bearer {
        Some(token) => wrk::run_authorized(url, token, load),
        None => wrk::run(url, load),
    };
    run(WARM_UP).context("warm-up")?;
    sleep(DRAIN);
    let report = run(LOAD)?;
    let mut rps = Figure::new(subject, &format!("{endpoint}_rps"), report.requests_per_second);
    if let Some(goal) = rps_goal {
        rps = rps.goal(goal);
    }
    figures.emit(rps)?;
    figures.emit(Figure::new(subject, &format!("{endpoint}_p50_ms"), report.p50_ms))?;
    figures.emit(Figure::new(subject, &format!("{endpoint}_p99_ms"), report.p99_ms))?;
    figures.emit(Figure::new(subject, &format!("{endpoint}_errors"), report.errors))?;
    if report.errors > 0 {
        progress(format!(
            "warning: {} requests against {url} failed (socket errors or non-2xx/3xx answers); its rps and latencies count them",
            report.errors
        ));
    }
    Ok(report)
}

fn resource_version(client: &reqwest::blocking::Client, agent: &Agent) -> anyhow::Result<u64> {
    let body = get_ok(client, &agent.url("/status"))?;
    let node: Node = wasmlet_api::from_json(&body).context("decoding /status as a Node")?;
    node.metadata.resource_version.context("/status has no metadata.resourceVersion")
}

fn rss(pid: u32, name: &str) -> anyhow::Result<u64> {
    rss_bytes(pid).with_context(|| format!("reading the RSS of {name} (pid {pid}) from /proc"))
}

fn cpu(pid: u32) -> anyhow::Result<f64> {
    cpu_seconds(pid).with_context(|| format!("reading the CPU time of wasmlet-agent (pid {pid}) from /proc"))
}

fn progress(message: impl Display) {
    eprintln!("report: {message}");
}
