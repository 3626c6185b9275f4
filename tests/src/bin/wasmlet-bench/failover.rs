//! Scenario `failover`: how long the instances of a crashed node stay down.
//! A node that dies takes its workloads with it until the master notices the
//! silence and starts them elsewhere; this is the time wasmlet is built to
//! keep short.
//!
//! Each of [`RUNS`] runs starts a fresh master (`--heartbeat-interval 500ms
//! --node-grace-period 1500ms --lost-after 2s --hand-offs-per-second 0`) and
//! one real agent, the victim; creates a `sensor` daemon (`--interval 60000`)
//! with [`REPLICAS`] replicas and waits until all of them run on the victim
//! (it is the only node). Then two healthy agents join and are waited for
//! until Ready, and the victim is killed with SIGKILL. From the kill on, the
//! master's `/api/v1/instances` is read every [`POLL_EVERY`]: the time until
//! all replicas are placed on the healthy nodes (handed off) and until all of
//! them are Running there.
//!
//! The time includes the master noticing (up to `lostAfter` after the
//! victim's last lease renewal, which was at most one heartbeat before the
//! kill, plus a controller resync), the agents seeing their new assignment and
//! starting the instances, their reports, and up to one poll interval.
//!
//! Figures: p50 and p99 (nearest rank; with [`RUNS`] runs p99 is the maximum)
//! of both, the Running p99 against the goal lostAfter + 0.5 s, and the
//! reference numbers of other orchestrators (quoted, not measured).

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use wasmlet_api::{Instance, Phase, Workload};
use wasmlet_tests::{Agent, Master, bin, workload_manifest};

use crate::figures::{Figure, Figures, Goal};
use crate::support::{percentile, poll_until, require_executable};

const SUBJECT: &str = "master";
const RUNS: usize = 5;
const REPLICAS: usize = 100;
const WORKLOAD: &str = "failover";
const VICTIM: &str = "victim";
const HEALTHY: [&str; 2] = ["healthy-1", "healthy-2"];
const MASTER_ARGS: [&str; 8] =
    ["--heartbeat-interval", "500ms", "--node-grace-period", "1500ms", "--lost-after", "2s", "--hand-offs-per-second", "0"];
const LOST_AFTER_S: f64 = 2.0;
const GOAL: Goal = Goal::AtMost(LOST_AFTER_S + 0.5);
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Setting up a run (100 instances compiled and started by a debug agent) may take a while.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// A hand-off not done by then is reported as missing, not waited for.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run measured, in seconds from the kill.
struct Run {
    handed_off_s: f64,
    running_s: f64,
}

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    require_executable(&bin("wasmlet-master"), "run `cargo build -p wasmlet-master --bins` (or set WASMLET_BIN_DIR)")?;
    require_executable(&bin("wasmlet-agent"), "run `cargo build -p wasmlet-agent --bins` (or set WASMLET_BIN_DIR)")?;
    let mut runs = Vec::with_capacity(RUNS);
    let mut missed = 0_u64;
    for i in 0..RUNS {
        progress(format!("run {}/{RUNS}: fresh master and victim, {REPLICAS} replicas", i + 1));
        match one_run()? {
            Some(run) => {
                progress(format!(
                    "run {}/{RUNS}: all handed off after {:.3} s, all Running after {:.3} s",
                    i + 1,
                    run.handed_off_s,
                    run.running_s
                ));
                runs.push(run);
            }
            None => {
                progress(format!("run {}/{RUNS}: not all replicas Running within {FAILOVER_TIMEOUT:?} of the kill", i + 1));
                missed += 1;
            }
        }
    }

    let handed_off: Vec<f64> = runs.iter().map(|r| r.handed_off_s).collect();
    let running: Vec<f64> = runs.iter().map(|r| r.running_s).collect();
    let note = |what: &str| {
        format!(
            "{} runs, nearest rank (p99 = the maximum with so few runs); from SIGKILL of the node running all {REPLICAS} replicas \
             to all {REPLICAS} {what}, per the master's /api/v1/instances polled every {} ms; \
             heartbeat 0.5 s, grace 1.5 s, lostAfter 2 s, hand-offs unlimited; real agents on this machine",
            runs.len(),
            POLL_EVERY.as_millis()
        )
    };
    let placed = note("placed on the two healthy nodes");
    let started = note("Running on the healthy nodes");
    figures.emit(Figure::new(SUBJECT, "failover_runs", runs.len() as u64))?;
    figures.emit(Figure::new(SUBJECT, "failover_runs_timed_out", missed).note(&format!("runs not done within {FAILOVER_TIMEOUT:?}")))?;
    figures.emit(Figure::new(SUBJECT, "handoff_p50_s", percentile(&handed_off, 0.5)).note(&placed))?;
    figures.emit(Figure::new(SUBJECT, "handoff_p99_s", percentile(&handed_off, 0.99)).note(&placed))?;
    figures.emit(Figure::new(SUBJECT, "failover_p50_s", percentile(&running, 0.5)).note(&started))?;
    let p99 = if missed > 0 { f64::NAN } else { percentile(&running, 0.99) };
    figures.emit(Figure::new(SUBJECT, "failover_p99_s", p99).goal(GOAL).note(&format!("{started}; goal lostAfter + 0.5 s")))?;
    for (subject, seconds, note) in REFERENCES {
        figures.emit(Figure::new(subject, "failover_reference_s", seconds).note(note))?;
    }
    progress(format!(
        "all Running after p50 {:.3} s, p99 {:.3} s (goal {GOAL}); {missed} runs timed out",
        percentile(&running, 0.5),
        percentile(&running, 0.99)
    ));
    Ok(())
}

/// Quoted, not measured: the usual defaults' time from a node's death to its workloads being replaced.
const REFERENCES: [(&str, f64, &str); 3] = [
    (
        "kubernetes",
        350.0,
        "reference, not measured: Kubernetes defaults, ~50 s until the node is NotReady (node-monitor-grace-period 40-50 s) \
         + 300 s default tolerationSeconds for not-ready/unreachable before pods are evicted",
    ),
    ("nomad", 50.0, "reference, not measured: Nomad, ~20 s heartbeat TTL until the node is down + ~30 s until allocations are rescheduled"),
    ("wasmcloud", 65.0, "reference, not measured: wasmCloud, ~60-70 s until a dead host's components are started elsewhere"),
];

/// One run; `None` when the replacements did not all run within [`FAILOVER_TIMEOUT`].
/// Every process is stopped by its guard when this returns, also on an error.
fn one_run() -> anyhow::Result<Option<Run>> {
    let master = Master::start(&MASTER_ARGS).context("starting wasmlet-master")?;
    let mut victim = join(&master, VICTIM)?;
    wait_ready(&master, &[VICTIM])?;

    master.upload_example("sensor").context("uploading the sensor example")?;
    let text = workload_manifest(WORKLOAD, "sensor", "daemon", &format!("  replicas: {REPLICAS}\n  args: [\"--interval\", \"60000\"]\n"));
    let workload: Workload = wasmlet_api::from_yaml(&text).context("the workload manifest")?;
    let (status, body) = master.send_json(Method::POST, "/workloads", &workload).context("POST /workloads")?;
    if !(200..300).contains(&status) {
        bail!("creating the workload: {status}: {body}");
    }
    poll_until(SETUP_TIMEOUT, Duration::from_millis(100), &format!("{REPLICAS} replicas Running on {VICTIM}"), || {
        let instances = instances(&master)?;
        Ok((instances.iter().filter(|i| i.spec.node == VICTIM && i.status.phase == Phase::Running).count() == REPLICAS).then_some(()))
    })?;

    let _healthy: Vec<Agent> = HEALTHY.iter().map(|name| join(&master, name)).collect::<anyhow::Result<_>>()?;
    wait_ready(&master, &[VICTIM, HEALTHY[0], HEALTHY[1]])?;

    let killed = Instant::now();
    victim.kill();
    let mut handed_off = None;
    while killed.elapsed() < FAILOVER_TIMEOUT {
        let instances = instances(&master)?;
        let elsewhere: Vec<&Instance> =
            instances.iter().filter(|i| i.spec.workload == WORKLOAD && i.spec.node != VICTIM && i.status.phase != Phase::Lost).collect();
        let now = killed.elapsed().as_secs_f64();
        if handed_off.is_none() && elsewhere.len() >= REPLICAS {
            handed_off = Some(now);
        }
        if elsewhere.iter().filter(|i| i.status.phase == Phase::Running).count() >= REPLICAS {
            return Ok(Some(Run { handed_off_s: handed_off.unwrap_or(now), running_s: now }));
        }
        std::thread::sleep(POLL_EVERY);
    }
    Ok(None)
}

fn join(master: &Master, name: &str) -> anyhow::Result<Agent> {
    Agent::start(&["--master", &master.url, "--join-token", &master.join_token, "--name", name, "--pool-instances", "256"])
        .with_context(|| format!("starting agent {name}"))
}

fn wait_ready(master: &Master, names: &[&str]) -> anyhow::Result<()> {
    poll_until(SETUP_TIMEOUT, Duration::from_millis(50), &format!("nodes {names:?} Ready"), || {
        let nodes = master.get_json::<wasmlet_api::protocol::List<wasmlet_api::Node>>("/nodes")?.items;
        Ok(names.iter().all(|name| nodes.iter().any(|n| n.metadata.name == *name && n.is_ready())).then_some(()))
    })
}

fn instances(master: &Master) -> anyhow::Result<Vec<Instance>> {
    Ok(master.get_json::<wasmlet_api::protocol::List<Instance>>("/instances")?.items)
}

fn progress(message: impl Display) {
    eprintln!("failover: {message}");
}
