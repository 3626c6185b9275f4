//! Scenario `density`: what an idle workload costs in memory when the agent
//! runs a thousand of them in one process, next to the usual way of running a
//! WASI program, one `wasmtime run` process each. Edge nodes are small; the
//! memory an idle instance holds decides how many fit.
//!
//! 1. Agent: an agent with `--pool-instances 1000` sits idle for
//!    [`IDLE_WAIT`] without instances; its RSS (and PSS) is read. Then one
//!    manifest with `replicas: 1000` of the `sensor` daemon (`--interval 60000
//!    --file /data/value`, a host dir with a `value` file granted at `/data`,
//!    an 8 MiB memory limit) is put into its manifests dir. Once all 1000
//!    instances are Running and [`SETTLE`] has passed, the RSS is read again.
//!    Figures: RSS with the 1000 instances (goal <= 200 MiB), RSS per
//!    instance ((with - without) / 1000), the time from the manifest's rename
//!    to the last instance's `status.startedAt`.
//! 2. Process isolation: an agent runs [`PROCESS_INSTANCES`] of the same
//!    daemon with `isolation: process`, each a process of its own in a cgroup
//!    of its own. Once all run and [`SETTLE`] has passed: PSS per instance,
//!    the instance processes' PSS summed plus what they added to the agent's,
//!    over their count (goal <= 1.5 MiB). The processes share the agent
//!    binary's pages and the compiled module's (each maps the cached artefact).
//! 3. Reference, in the same run after the agents are stopped: the same daemon as
//!    separate `wasmtime run` processes of the wasmtime CLI, the version the
//!    agent embeds, started one after the other until [`REFERENCE_MAX`] run,
//!    [`REFERENCE_TIME_BOX`] has passed or MemAvailable drops below
//!    [`MEM_AVAILABLE_MIN`], whichever comes first. A few are allowed to start
//!    at once (the rest wait), so memory is read while it is still there. Once
//!    they have gone quiet: their count, summed RSS, RSS per process, and PSS
//!    per process (`/proc/PID/smaps_rollup`, which counts shared pages, the
//!    binary's code above all, once across the processes). Ratio: RSS per
//!    process over the agent's RSS per instance (goal >= 20).
//!
//! The wasmtime CLI is `$WASMTIME` or `support::WASMTIME_DEFAULT`; `make bench-deps`
//! installs it. Its compile cache is pointed at a temp dir and warmed by one
//! unmeasured probe process, as the agent compiles the module once for all
//! its instances. Every process started here is stopped by a guard when `run`
//! returns, also on an error or a panic.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::blocking::Client;
use wasmlet_api::{Instance, Node, Phase};
use wasmlet_tests::{Agent, examples_dir, instance_processes, rss_bytes, sha256};

use crate::figures::{Figure, Figures, Goal};
use crate::support::{agent_client, get_ok, millis_between, place_manifest, poll_until, require_agent_and_wasmtime, yaml_path};

/// The subject name of wasmlet's node agent in the figures.
const AGENT: &str = "agent";
/// The subject name of the reference in the figures.
const WASMTIME_RUN: &str = "wasmtime-run";

const INSTANCES: u32 = 1000;
/// The agent's `--manifests-poll-interval`; part of the time to all Running.
const MANIFESTS_POLL_INTERVAL: &str = "100ms";
/// How long the agent sits without instances before its idle RSS is read.
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// How long the instances sit idle once all run, before the RSS is read.
const SETTLE: Duration = Duration::from_secs(5);
const ALL_RUNNING_TIMEOUT: Duration = Duration::from_secs(300);
const LIST_EVERY: Duration = Duration::from_millis(250);
const TOTAL_RSS_GOAL: Goal = Goal::AtMost(209_715_200.0);

const REFERENCE_MAX: usize = 1000;
const REFERENCE_TIME_BOX: Duration = Duration::from_secs(60);
const MEM_AVAILABLE_MIN: u64 = 2 << 30;
/// Of the most recently started processes ([`RECENT`]), how many may still be
/// starting (runnable or in uninterruptible sleep) before the next one starts.
const STARTING_MAX: usize = 4;
const RECENT: usize = 32;
/// The probe compiles the module (the cache is empty then).
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// The processes count as settled after [`SETTLE`] and then once none of them
/// was seen starting in [`QUIET_CHECKS`] checks in a row, or after this.
const QUIET_MAX: Duration = Duration::from_secs(60);
const QUIET_CHECKS: u32 = 3;
const RSS_PER_INSTANCE_RATIO_GOAL: Goal = Goal::AtLeast(20.0);

/// Process instances: fewer than in-process, each is a process.
const PROCESS_INSTANCES: u32 = 200;
const PROCESS_PSS_GOAL: Goal = Goal::AtMost(1_572_864.0);
const PROCESS_PSS_RATIO_GOAL: Goal = Goal::AtLeast(1.5);

/// The daemon's arguments, the same for both.
const SENSOR_ARGS: [&str; 4] = ["--interval", "60000", "--file", "/data/value"];

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    // Fail before starting anything when a tool is missing.
    let (wasmtime, version) = require_agent_and_wasmtime("density")?;
    let sensor = examples_dir().join("sensor.wasm");
    let sensor_bytes = std::fs::read(&sensor).with_context(|| format!("reading {} (run `make examples`)", sensor.display()))?;
    let data = tempfile::Builder::new().prefix("wasmlet-bench-data-").tempdir().context("creating the sensors' data dir")?;
    let value = data.path().join("value");
    std::fs::write(&value, "21.5\n").with_context(|| format!("writing {}", value.display()))?;

    let agent_per_instance = agent_density(figures, &sensor, &sha256(&sensor_bytes), data.path())?;
    let process_pss = process_density(figures, &sensor, &sha256(&sensor_bytes), data.path())?;
    reference(figures, &wasmtime, &version, &sensor, data.path(), agent_per_instance, process_pss)
}

/// Memory per instance of the agent, for the ratios.
struct PerInstance {
    rss: f64,
    pss: f64,
}

/// Figure 1: the agent with no instance, then with 1000 idle sensors.
fn agent_density(figures: &mut Figures, sensor: &Path, digest: &str, data: &Path) -> anyhow::Result<PerInstance> {
    let pool = INSTANCES.to_string();
    progress(format!("starting an agent with --pool-instances {pool}"));
    let (agent, manifests) = sensor_agent(data, &["--pool-instances", &pool])?;
    let client = &agent_client(&agent)?;
    let allocator = allocator(client, &agent)?;
    get_ok(client, &agent.url("/instances"))?;
    progress(format!("agent idle without instances for {IDLE_WAIT:?} ({allocator} allocator)"));
    sleep(IDLE_WAIT);
    let idle_rss = rss(agent.pid(), "wasmlet-agent")?;
    let idle_pss = pss(agent.pid(), "wasmlet-agent")?;
    figures.emit(
        Figure::new(AGENT, "idle_rss_bytes", idle_rss)
            .note(&format!("no instances, {} s after start; --pool-instances {INSTANCES}, {allocator} allocator", IDLE_WAIT.as_secs())),
    )?;

    progress(format!("placing a manifest with {INSTANCES} replicas of sensor"));
    let placed_at = place_manifest(manifests.path(), "sensors.yaml", &manifest(sensor, digest, data, INSTANCES, "in-process"))?;
    let mut seen = String::from("no answer yet");
    let instances = poll_until(ALL_RUNNING_TIMEOUT, LIST_EVERY, &format!("{INSTANCES} instances Running"), || {
        let instances = list(client, &agent)?;
        if let Some(broken) = instances.iter().find(|i| i.status.phase == Phase::Failed || i.status.restarts > 0) {
            bail!("instance {} failed: {}", broken.metadata.name, describe(broken));
        }
        if running(&instances) == INSTANCES as usize {
            return Ok(Some(instances));
        }
        seen = phases(&instances);
        Ok(None)
    })
    .with_context(|| format!("last seen: {seen}"))?;
    let last_started = instances.iter().filter_map(|i| i.status.started_at).max().context("Running instances without status.startedAt")?;
    let all_running_seconds = millis_between(placed_at, last_started) / 1000.0;
    progress(format!("all {INSTANCES} Running after {all_running_seconds:.2} s; settling for {SETTLE:?}"));
    sleep(SETTLE);
    let total_rss = rss(agent.pid(), "wasmlet-agent")?;
    let total_pss = pss(agent.pid(), "wasmlet-agent")?;
    let instances = list(client, &agent)?;
    let still_running: Vec<&Instance> = instances.iter().filter(|i| i.status.phase == Phase::Running).collect();
    let linear_memory: u64 = still_running.iter().filter_map(|i| i.status.usage.as_ref()).map(|u| u.memory_bytes).sum();
    drop(agent);

    let per_instance = PerInstance {
        rss: total_rss.saturating_sub(idle_rss) as f64 / f64::from(INSTANCES),
        pss: total_pss.saturating_sub(idle_pss) as f64 / f64::from(INSTANCES),
    };
    figures.emit(
        Figure::new(AGENT, "instances_running", still_running.len() as u64)
            .note(&format!("of {INSTANCES} sensor daemons, {} s after the last one started", SETTLE.as_secs())),
    )?;
    figures.emit(Figure::new(AGENT, "all_running_seconds", all_running_seconds).note(&format!(
        "from just before the manifest's rename into --manifests-dir to the last status.startedAt of the {INSTANCES} instances, \
         including the agent's --manifests-poll-interval {MANIFESTS_POLL_INTERVAL}"
    )))?;
    figures.emit(Figure::new(AGENT, "rss_bytes", total_rss).goal(TOTAL_RSS_GOAL).note(&format!(
        "the whole agent with {INSTANCES} idle sensor daemons, {} s after all were Running; goal 200 MiB",
        SETTLE.as_secs()
    )))?;
    figures.emit(
        Figure::new(AGENT, "rss_bytes_per_instance", per_instance.rss)
            .note(&format!("(rss_bytes - idle_rss_bytes) / {INSTANCES}, what each instance adds")),
    )?;
    figures.emit(
        Figure::new(AGENT, "pss_bytes_per_instance", per_instance.pss)
            .note(&format!("(PSS with - PSS without the instances) / {INSTANCES}, from /proc/PID/smaps_rollup")),
    )?;
    figures.emit(
        Figure::new(AGENT, "instance_memory_bytes_mean", linear_memory as f64 / still_running.len().max(1) as f64)
            .note("status.usage.memoryBytes averaged over the Running instances: the linear memory the agent accounts to each"),
    )?;
    progress(format!(
        "agent: idle {} KiB, with {INSTANCES} instances {} KiB, {:.0} bytes per instance",
        idle_rss / 1024,
        total_rss / 1024,
        per_instance.rss
    ));
    Ok(per_instance)
}

/// An agent watching a manifests dir of its own (returned, to be kept as
/// long as the agent runs), allowed to grant `data`.
fn sensor_agent(data: &Path, extra: &[&str]) -> anyhow::Result<(Agent, tempfile::TempDir)> {
    let manifests = tempfile::Builder::new().prefix("wasmlet-bench-manifests-").tempdir().context("creating a manifests dir")?;
    let manifests_arg = manifests.path().to_string_lossy().into_owned();
    let data_arg = data.to_string_lossy().into_owned();
    let mut args =
        vec!["--manifests-dir", &manifests_arg, "--manifests-poll-interval", MANIFESTS_POLL_INTERVAL, "--allowed-host-paths", &data_arg];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args).context("starting wasmlet-agent")?;
    Ok((agent, manifests))
}

/// Figure 2: the same daemons with `isolation: process`: PSS per instance.
fn process_density(figures: &mut Figures, sensor: &Path, digest: &str, data: &Path) -> anyhow::Result<f64> {
    progress("starting an agent for process instances");
    let (agent, manifests) = sensor_agent(data, &[])?;
    let client = &agent_client(&agent)?;
    sleep(IDLE_WAIT);
    let idle_pss = pss(agent.pid(), "wasmlet-agent")?;
    progress(format!("placing a manifest with {PROCESS_INSTANCES} replicas of sensor, isolation: process"));
    place_manifest(manifests.path(), "sensors.yaml", &manifest(sensor, digest, data, PROCESS_INSTANCES, "process"))?;
    let mut seen = String::from("no answer yet");
    poll_until(ALL_RUNNING_TIMEOUT, LIST_EVERY, &format!("{PROCESS_INSTANCES} process instances Running"), || {
        let instances = list(client, &agent)?;
        if let Some(broken) = instances.iter().find(|i| i.status.phase == Phase::Failed || i.status.restarts > 0) {
            bail!("instance {} failed: {}", broken.metadata.name, describe(broken));
        }
        let processes = instance_processes(agent.data_dir.path()).len();
        if running(&instances) == PROCESS_INSTANCES as usize && processes == PROCESS_INSTANCES as usize {
            return Ok(Some(()));
        }
        seen = format!("{}; {processes} processes", phases(&instances));
        Ok(None)
    })
    .with_context(|| format!("last seen: {seen}"))?;
    progress(format!("all {PROCESS_INSTANCES} Running in processes of their own; settling for {SETTLE:?}"));
    sleep(SETTLE);
    let processes = instance_processes(agent.data_dir.path());
    let (mut rss_sum, mut pss_sum, mut counted) = (0u64, 0u64, 0u64);
    for (pid, _) in &processes {
        if let (Some(rss), Some(pss)) = (rss_bytes(*pid), pss_bytes(*pid)) {
            rss_sum += rss;
            pss_sum += pss;
            counted += 1;
        }
    }
    if counted != u64::from(PROCESS_INSTANCES) {
        bail!("only {counted} of {PROCESS_INSTANCES} instance processes could be measured");
    }
    let agent_added = pss(agent.pid(), "wasmlet-agent")?.saturating_sub(idle_pss);
    drop(agent);
    let per_instance = (pss_sum + agent_added) as f64 / counted as f64;
    figures.emit(
        Figure::new(AGENT, "process_instances_running", counted)
            .note(&format!("of {PROCESS_INSTANCES} sensor daemons with isolation: process, {} s after all were Running", SETTLE.as_secs())),
    )?;
    figures.emit(
        Figure::new(AGENT, "process_rss_bytes_per_instance", rss_sum as f64 / counted as f64)
            .note("VmRSS of an instance's process, averaged: pages shared with the others count in full in each"),
    )?;
    figures.emit(Figure::new(AGENT, "process_pss_bytes_per_instance", per_instance).goal(PROCESS_PSS_GOAL).note(&format!(
        "(Pss of the {PROCESS_INSTANCES} instance processes summed + what they added to the agent's Pss, {} KiB) / {PROCESS_INSTANCES}, \
         from /proc/PID/smaps_rollup; goal 1.5 MiB",
        agent_added / 1024
    )))?;
    progress(format!("process instances: {:.0} KiB PSS each", per_instance / 1024.0));
    Ok(per_instance)
}

/// Figure 3: the same daemons, one `wasmtime run` process each.
fn reference(
    figures: &mut Figures,
    wasmtime: &Path,
    version: &str,
    sensor: &Path,
    data: &Path,
    agent: PerInstance,
    process_pss: f64,
) -> anyhow::Result<()> {
    let cache = tempfile::Builder::new().prefix("wasmlet-bench-wasmtime-cache-").tempdir().context("creating a cache dir for wasmtime")?;
    let command = || {
        let mut command = Command::new(wasmtime);
        command
            .arg("run")
            .arg("--dir")
            .arg(format!("{}::/data", data.display()))
            .arg(sensor)
            .args(SENSOR_ARGS)
            // wasmtime's compile cache lives under $XDG_CACHE_HOME/wasmtime.
            .env("XDG_CACHE_HOME", cache.path())
            .stdin(Stdio::null());
        command
    };
    progress(format!("{version}: one probe process to check the command and fill the compile cache"));
    probe(command())?;

    progress(format!(
        "starting `wasmtime run` processes: up to {REFERENCE_MAX}, for at most {REFERENCE_TIME_BOX:?}, while MemAvailable >= {} GiB",
        MEM_AVAILABLE_MIN >> 30
    ));
    let mut fleet = Fleet::default();
    let began = Instant::now();
    let stopped_by = loop {
        if fleet.children.len() >= REFERENCE_MAX {
            break format!("{REFERENCE_MAX} processes ran");
        }
        if began.elapsed() >= REFERENCE_TIME_BOX {
            break format!("the {} s time box was over", REFERENCE_TIME_BOX.as_secs());
        }
        let available = mem_available()?;
        if available < MEM_AVAILABLE_MIN {
            break format!("MemAvailable fell to {} MiB", available >> 20);
        }
        if fleet.starting(RECENT) >= STARTING_MAX {
            sleep(Duration::from_millis(5));
            continue;
        }
        let mut next = command();
        match next.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(child) => fleet.children.push(child),
            // The probe started, so this is a limit of the machine (processes, memory): as many as fit.
            Err(error) => break format!("starting one more failed: {error}"),
        }
    };
    let start_seconds = began.elapsed().as_secs_f64();
    progress(format!("{} processes started in {start_seconds:.1} s, stopped because {stopped_by}; settling", fleet.children.len()));
    sleep(SETTLE);
    if !fleet.wait_quiet(QUIET_MAX) {
        progress(format!("warning: some processes were still starting after {QUIET_MAX:?}; measuring anyway"));
    }
    let exited = fleet.exited();
    if exited > 0 {
        progress(format!("warning: {exited} of the processes exited; only the running ones are counted"));
    }
    let memory = fleet.memory();
    let per_rss = memory.rss as f64 / memory.processes as f64;
    let per_pss = memory.pss as f64 / memory.processes as f64;

    figures.emit(Figure::new(WASMTIME_RUN, "processes", memory.processes as u64).note(&format!(
        "{version}: `wasmtime run --dir DATA::/data sensor.wasm {}`, one process per daemon; started until {stopped_by} \
         (at most {REFERENCE_MAX}, {} s, MemAvailable >= {} GiB); {exited} exited; compile cache warmed by one probe",
        SENSOR_ARGS.join(" "),
        REFERENCE_TIME_BOX.as_secs(),
        MEM_AVAILABLE_MIN >> 30
    )))?;
    figures.emit(
        Figure::new(WASMTIME_RUN, "start_seconds", start_seconds)
            .note(&format!("starting the processes, at most {STARTING_MAX} of them starting at a time")),
    )?;
    figures.emit(
        Figure::new(WASMTIME_RUN, "rss_bytes", memory.rss)
            .note(&format!("VmRSS summed over the running processes, after {} s and once they were quiet", SETTLE.as_secs())),
    )?;
    figures.emit(Figure::new(WASMTIME_RUN, "rss_bytes_per_instance", per_rss).note("rss_bytes / processes"))?;
    figures.emit(
        Figure::new(WASMTIME_RUN, "pss_bytes_per_instance", per_pss)
            .note("Pss of /proc/PID/smaps_rollup summed over the processes / processes: pages shared between them count once"),
    )?;
    figures.emit(
        Figure::ratio(WASMTIME_RUN, "rss_bytes_per_instance", per_rss, AGENT, agent.rss, RSS_PER_INSTANCE_RATIO_GOAL)
            .note(&format!("RSS of one wasmtime run process over what one instance adds to the agent's RSS ({:.0} bytes)", agent.rss)),
    )?;
    let mut pss_ratio = Figure::new(WASMTIME_RUN, "pss_bytes_per_instance_ratio", per_pss / agent.pss)
        .note(&format!("PSS of one wasmtime run process over what one instance adds to the agent's PSS ({:.0} bytes)", agent.pss));
    pss_ratio.reference = Some(AGENT.to_string());
    figures.emit(pss_ratio)?;
    figures.emit(
        Figure::ratio(WASMTIME_RUN, "pss_bytes_per_process_instance", per_pss, AGENT, process_pss, PROCESS_PSS_RATIO_GOAL).note(&format!(
            "PSS of one wasmtime run process over the PSS of one process instance of the agent ({:.0} bytes); goal 1.5",
            process_pss
        )),
    )?;
    progress(format!(
        "{WASMTIME_RUN}: {} processes, {:.0} KiB RSS and {:.0} KiB PSS each; agent {:.0} KiB RSS per instance",
        memory.processes,
        per_rss / 1024.0,
        per_pss / 1024.0,
        agent.rss / 1024.0
    ));
    Ok(())
}

/// The sensors' manifest: `replicas` idle daemons reading `data/value` as `/data/value`.
fn manifest(sensor: &Path, digest: &str, data: &Path, replicas: u32, isolation: &str) -> String {
    let args: Vec<String> = SENSOR_ARGS.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: sensor\nspec:\n  type: daemon\n  replicas: {replicas}\n  isolation: {isolation}\n  module:\n    \
         source: {}\n    digest: {digest}\n  args: [{}]\n  dirs:\n  - path: /data\n    hostPath: {}\n  resources:\n    limits: {{memory: 8Mi}}\n",
        yaml_path(sensor),
        args.join(", "),
        yaml_path(data)
    )
}

fn list(client: &Client, agent: &Agent) -> anyhow::Result<Vec<Instance>> {
    let body = get_ok(client, &agent.url("/instances"))?;
    serde_json::from_slice(&body).context("decoding GET /instances as a list of Instances")
}

fn running(instances: &[Instance]) -> usize {
    instances.iter().filter(|i| i.status.phase == Phase::Running).count()
}

/// `Running 998, Starting 2`
fn phases(instances: &[Instance]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for instance in instances {
        *counts.entry(instance.status.phase.as_str()).or_insert(0) += 1;
    }
    if counts.is_empty() {
        return "no instances".to_string();
    }
    counts.iter().map(|(phase, n)| format!("{phase} {n}")).collect::<Vec<_>>().join(", ")
}

fn describe(instance: &Instance) -> String {
    let status = &instance.status;
    format!(
        "phase {}, restarts {}, reason {}, message {}",
        status.phase.as_str(),
        status.restarts,
        status.reason.as_deref().unwrap_or("-"),
        status.message.as_deref().unwrap_or("-")
    )
}

/// `pooling` or `on-demand`, from the agent's `/status`.
fn allocator(client: &Client, agent: &Agent) -> anyhow::Result<String> {
    let body = get_ok(client, &agent.url("/status"))?;
    let node: Node = wasmlet_api::from_json(&body).context("decoding /status as a Node")?;
    Ok(node.status.runtime.map_or_else(|| "unknown".to_string(), |r| r.allocator))
}

/// Starts one process of `command` and waits for the sensor's first line,
/// which must carry the value it read through the `--dir` grant.
fn probe(mut command: Command) -> anyhow::Result<()> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting wasmtime")?;
    let stdout = child.stdout.take().context("wasmtime's stdout")?;
    let stderr = child.stderr.take().context("wasmtime's stderr")?;
    let mut guard = Fleet { children: vec![child] };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(line) if line.contains("\"value\":") => return Ok(()),
        Ok(line) => line,
        Err(_) => String::new(),
    };
    // It printed an error, closed its stdout (exiting) or took too long: stop it and say what it said.
    let exit = poll_until(Duration::from_secs(2), Duration::from_millis(20), "the probe to exit", || Ok(guard.children[0].try_wait()?));
    guard.stop();
    let mut said = String::new();
    let _ = BufReader::new(stderr).read_to_string(&mut said);
    let said = said.trim();
    match exit {
        _ if !line.is_empty() => bail!("`wasmtime run` of sensor.wasm could not read /data/value through --dir: {}\n{said}", line.trim()),
        Ok(status) => bail!("`wasmtime run` of sensor.wasm exited ({status}) without printing a line; its stderr:\n{said}"),
        Err(_) => bail!("`wasmtime run` of sensor.wasm printed nothing within {PROBE_TIMEOUT:?}; its stderr:\n{said}"),
    }
}

/// Processes of `wasmtime run`, killed when dropped.
#[derive(Default)]
struct Fleet {
    children: Vec<Child>,
}

/// What a fleet's running processes hold.
struct Memory {
    processes: usize,
    rss: u64,
    pss: u64,
}

impl Fleet {
    /// How many of the `recent` last started processes are still starting.
    fn starting(&self, recent: usize) -> usize {
        self.children.iter().rev().take(recent).filter(|c| is_busy(c.id())).count()
    }

    /// Waits until none of the processes is seen busy [`QUIET_CHECKS`] times in
    /// a row; false when `timeout` passes first.
    fn wait_quiet(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut quiet = 0;
        while Instant::now() < deadline {
            if self.children.iter().any(|c| is_busy(c.id())) {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= QUIET_CHECKS {
                    return true;
                }
            }
            sleep(Duration::from_millis(200));
        }
        false
    }

    /// How many have exited.
    fn exited(&mut self) -> usize {
        self.children.iter_mut().map(Child::try_wait).filter(|status| !matches!(status, Ok(None))).count()
    }

    /// RSS and PSS summed over the processes still running.
    fn memory(&mut self) -> Memory {
        let mut memory = Memory { processes: 0, rss: 0, pss: 0 };
        for child in &mut self.children {
            if !matches!(child.try_wait(), Ok(None)) {
                continue;
            }
            if let (Some(rss), Some(pss)) = (rss_bytes(child.id()), pss_bytes(child.id())) {
                memory.processes += 1;
                memory.rss += rss;
                memory.pss += pss;
            }
        }
        memory
    }

    /// Kills every process, then reaps them.
    fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the process is runnable or in uninterruptible sleep (starting
/// still, for a process that ends up sleeping), from `/proc/PID/stat`.
fn is_busy(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("R" | "D"))
}

/// Proportional set size of a process: its pages, each shared page divided by
/// the number of processes mapping it.
fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&rollup, "Pss:")
}

/// MemAvailable of `/proc/meminfo`.
fn mem_available() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    kib_field(&meminfo, "MemAvailable:").context("/proc/meminfo has no MemAvailable")
}

/// The `NAME: N kB` line of a `/proc` file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

fn rss(pid: u32, name: &str) -> anyhow::Result<u64> {
    rss_bytes(pid).with_context(|| format!("reading the RSS of {name} (pid {pid}) from /proc"))
}

fn pss(pid: u32, name: &str) -> anyhow::Result<u64> {
    pss_bytes(pid).with_context(|| format!("reading the PSS of {name} (pid {pid}) from /proc/{pid}/smaps_rollup"))
}

fn progress(message: impl Display) {
    eprintln!("density: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_fields_are_read_in_bytes() {
        let text = "Rss:                1200 kB\nPss:                 300 kB\nPss_Anon:            100 kB\n";
        assert_eq!(kib_field(text, "Pss:"), Some(300 * 1024));
        assert_eq!(kib_field(text, "Swap:"), None);
    }

    #[test]
    fn the_manifest_grants_the_data_dir() {
        let text = manifest(Path::new("/x/sensor.wasm"), "sha256:00", Path::new("/tmp/data dir"), 1000, "process");
        assert!(text.contains("isolation: process"));
        assert!(text.contains("replicas: 1000"));
        assert!(text.contains("source: \"/x/sensor.wasm\"\n    digest: sha256:00\n"));
        assert!(text.contains("limits: {memory: 8Mi}"));
        assert!(text.contains("hostPath: \"/tmp/data dir\""));
        assert!(text.contains("args: [\"--interval\", \"60000\", \"--file\", \"/data/value\"]"));
    }
}
