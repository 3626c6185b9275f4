//! Scenario `schedule`: how fast the master places a large workload. Scaling
//! out, a rollout or a failed zone all come down to placing many instances at
//! once; the master should not be what makes them slow.
//!
//! A master (heartbeat, grace and lostAfter at their defaults, 2 s, 8 s, 15 s)
//! and [`NODES`] simulated nodes (see `simnode`) in this process; once every
//! node is registered, Ready and watching its assignment, one `sensor` daemon
//! workload with [`REPLICAS`] replicas (no resource requests; each node takes
//! up to 110 instances) is created. From just before the create request:
//!
//! - placed: until the master's `/api/v1/instances` lists all replicas, each
//!   with `spec.node` set (read every [`INSTANCES_EVERY`]: the list is large,
//!   so reading it more often would load the master; the resolution is that
//!   interval);
//! - Running: until the workload's `status.running` (`GET /workloads/NAME`,
//!   read every [`POLL_EVERY`]) reaches the replicas, each node having seen its
//!   instances in its assignment watch and reported them Running;
//! - as the nodes saw it: when the last node saw a new instance in its
//!   assignment, and when the master acknowledged the last Running report.
//!
//! Placements per second = replicas / placed time, against the goal of
//! [`PLACEMENTS_GOAL`]. The master's CPU seconds over the run and its largest
//! RSS are reported too. The run gives up after [`RUN_TIMEOUT`] and reports
//! what was reached. The simulated nodes share the machine's 2 cores with the
//! master.

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use wasmlet_api::{Instance, Workload};
use wasmlet_tests::{Master, bin, rss_bytes, workload_manifest};

use crate::figures::{Figure, Figures, Goal};
use crate::simnode::{Fleet, Stats};
use crate::support::{poll_until, process_cpu_seconds, raise_open_files_limit, require_executable};

const SUBJECT: &str = "master";
const NODES: usize = 1_000;
const REPLICAS: usize = 10_000;
const WORKLOAD: &str = "schedule";
const REGISTER_CONCURRENCY: usize = 64;
const MASTER_ARGS: [&str; 6] = ["--heartbeat-interval", "2s", "--node-grace-period", "8s", "--lost-after", "15s"];
const FLEET_THREADS: usize = 2;
const SETUP_TIMEOUT: Duration = Duration::from_secs(180);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const POLL_EVERY: Duration = Duration::from_millis(20);
const INSTANCES_EVERY: Duration = Duration::from_millis(250);
const PLACEMENTS_GOAL: Goal = Goal::AtLeast(10_000.0);

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    require_executable(&bin("wasmlet-master"), "run `cargo build -p wasmlet-master --bins` (or set WASMLET_BIN_DIR)")?;
    raise_open_files_limit();
    progress(format!("starting a master with {}", MASTER_ARGS.join(" ")));
    let master = Master::start(&MASTER_ARGS).context("starting wasmlet-master")?;
    let pid = master.pid().context("the master's pid")?;
    let fleet = Fleet::new(&master, FLEET_THREADS)?;

    progress(format!("registering {NODES} simulated nodes, {REGISTER_CONCURRENCY} at a time"));
    let names: Vec<String> = (0..NODES).map(|i| format!("sim-{i:04}")).collect();
    let (took, registered) = fleet.register(&names, REGISTER_CONCURRENCY, SETUP_TIMEOUT);
    if registered < NODES {
        bail!("only {registered} of {NODES} simulated nodes registered");
    }
    fleet.start_watches();
    poll_until(SETUP_TIMEOUT, Duration::from_millis(200), &format!("{NODES} nodes Ready"), || {
        let nodes = master.get_json::<wasmlet_api::protocol::List<wasmlet_api::Node>>("/nodes")?.items;
        Ok((nodes.iter().filter(|n| n.is_ready()).count() >= NODES).then_some(()))
    })?;
    progress(format!("{registered} nodes registered in {:.1} s and Ready", took.as_secs_f64()));
    figures.emit(Figure::new(SUBJECT, "nodes", registered as u64))?;
    figures.emit(
        Figure::new(SUBJECT, "registration_s", took.as_secs_f64()).note(&format!("{REGISTER_CONCURRENCY} registrations in flight")),
    )?;

    master.upload_example("sensor").context("uploading the sensor example")?;
    let text = workload_manifest(WORKLOAD, "sensor", "daemon", &format!("  replicas: {REPLICAS}\n  args: [\"--interval\", \"60000\"]\n"));
    let workload: Workload = wasmlet_api::from_yaml(&text).context("the workload manifest")?;
    // As admin, trusting the cluster CA: the master serves HTTPS and wants a token.
    let client = master.client_with(&master.admin_token).timeout(Duration::from_secs(30)).build().context("building an HTTP client")?;

    progress(format!("creating workload `{WORKLOAD}` with {REPLICAS} replicas"));
    let cpu_before = process_cpu_seconds(pid, "wasmlet-master")?;
    let mut rss_max = rss_bytes(pid).unwrap_or_default();
    let created = Instant::now();
    let (status, body) = master.send_json(Method::POST, "/workloads", &workload).context("POST /workloads")?;
    let create_s = created.elapsed().as_secs_f64();
    if !(200..300).contains(&status) {
        bail!("creating the workload: {status}: {body}");
    }

    let (mut placed_s, mut running_s) = (None, None);
    let (mut placed, mut running) = (0_usize, 0_usize);
    let mut instances_read: Option<Instant> = None;
    let mut slowest_poll = Duration::ZERO;
    while created.elapsed() < RUN_TIMEOUT {
        if placed_s.is_none() && instances_read.is_none_or(|at| at.elapsed() >= INSTANCES_EVERY) {
            instances_read = Some(Instant::now());
            let instances: Vec<Instance> =
                get(&client, &master.api("/instances")).map(|l: wasmlet_api::protocol::List<Instance>| l.items).unwrap_or_default();
            placed = instances.iter().filter(|i| i.spec.workload == WORKLOAD && !i.spec.node.is_empty()).count();
            if placed >= REPLICAS {
                placed_s = Some(created.elapsed().as_secs_f64());
                progress(format!("all {REPLICAS} placed after {:.3} s", created.elapsed().as_secs_f64()));
            }
        }
        let asked = Instant::now();
        if let Ok(workload) = get::<Workload>(&client, &master.api(&format!("/workloads/{WORKLOAD}"))) {
            running = workload.status.map(|s| s.running as usize).unwrap_or_default();
        }
        slowest_poll = slowest_poll.max(asked.elapsed());
        rss_max = rss_max.max(rss_bytes(pid).unwrap_or_default());
        if running >= REPLICAS {
            running_s = Some(created.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(POLL_EVERY);
    }
    let wall = created.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid, "wasmlet-master")? - cpu_before;
    let stats = &fleet.stats;
    let since_created = |at: Option<Instant>| at.map_or(f64::NAN, |at| at.saturating_duration_since(created).as_secs_f64());
    let (last_seen_s, last_reported_s) = (since_created(stats.last_seen()), since_created(stats.last_reported()));
    let done = running_s.is_some();

    let setting = format!("{REPLICAS} replicas of one workload onto {NODES} simulated nodes; from just before POST /workloads");
    figures.emit(Figure::new(SUBJECT, "create_request_ms", create_s * 1000.0).note("POST /workloads until its answer"))?;
    figures
        .emit(Figure::new(SUBJECT, "placed_instances", placed as u64).note("replicas with spec.node set at the last read of /instances"))?;
    figures.emit(Figure::new(SUBJECT, "running_instances", running as u64).note("the workload's status.running at the end"))?;
    figures.emit(Figure::new(SUBJECT, "placed_s", placed_s.unwrap_or(f64::NAN)).note(&format!(
        "{setting} to all listed by /api/v1/instances with spec.node set (read every {} ms); null if not reached within {RUN_TIMEOUT:?}",
        INSTANCES_EVERY.as_millis()
    )))?;
    figures.emit(
        Figure::new(SUBJECT, "placements_per_s", placed_s.map_or(f64::NAN, |s| REPLICAS as f64 / s))
            .goal(PLACEMENTS_GOAL)
            .note(&format!("{REPLICAS} / placed_s; kube-scheduler's CI floor is 100 pods/s, Nomad's C1M reached 3750/s on 5 servers")),
    )?;
    figures.emit(Figure::new(SUBJECT, "running_s", running_s.unwrap_or(f64::NAN)).note(&format!(
        "{setting} to the workload's status.running = {REPLICAS} (read every {} ms, slowest read {:.0} ms); \
         null if not reached within {RUN_TIMEOUT:?}",
        POLL_EVERY.as_millis(),
        slowest_poll.as_secs_f64() * 1000.0
    )))?;
    figures.emit(Figure::new(SUBJECT, "running_per_s", running_s.map_or(f64::NAN, |s| REPLICAS as f64 / s)))?;
    figures.emit(Figure::new("simnode", "last_assigned_seen_s", last_seen_s).note(&format!(
        "{setting} to the last node seeing a new instance in its assignment watch; {} instances seen",
        Stats::get(&stats.seen)
    )))?;
    figures.emit(Figure::new("simnode", "last_running_acknowledged_s", last_reported_s).note(&format!(
        "{setting} to the master's 204 for the last Running report; {} instances reported, {} failed reports, {} failed watches",
        Stats::get(&stats.reported),
        Stats::get(&stats.report_errors),
        Stats::get(&stats.watch_errors)
    )))?;
    figures.emit(Figure::new(SUBJECT, "cpu_s", cpu).note(&format!(
        "master CPU seconds (user+system) from the create request to the end ({wall:.1} s wall); the simulated nodes share the same 2 cores"
    )))?;
    figures.emit(Figure::new(SUBJECT, "rss_max_bytes", rss_max).note("largest master RSS seen while polling"))?;
    progress(format!(
        "placed {placed} after {:?} s, running {running} after {:?} s (goal {PLACEMENTS_GOAL} placements/s); master CPU {cpu:.1} s, \
         RSS max {} MiB",
        placed_s,
        running_s,
        rss_max >> 20
    ));
    if !done {
        progress(format!("gave up after {RUN_TIMEOUT:?}: the figures show what was reached"));
    }
    drop(fleet);
    Ok(())
}

fn get<T: serde::de::DeserializeOwned>(client: &reqwest::blocking::Client, url: &str) -> anyhow::Result<T> {
    let response = client.get(url).send().with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.bytes().with_context(|| format!("reading GET {url}"))?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(wasmlet_api::from_json(&body)?)
}

fn progress(message: impl Display) {
    eprintln!("schedule: {message}");
}
