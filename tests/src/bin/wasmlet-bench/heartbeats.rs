//! Scenario `heartbeats`: what a large fleet's heartbeats cost the master. Every
//! node renews its lease every heartbeat interval whatever else happens, so
//! this is the master's floor load; it decides how many nodes one master can
//! hold.
//!
//! A master with `--heartbeat-interval 2s` (grace and lostAfter at their
//! defaults, 8 s and 15 s) and [`NODES`] simulated nodes (see `simnode`) in
//! this process: they register with at most [`REGISTER_CONCURRENCY`]
//! registrations in flight, each renewing its lease from then on, spread evenly
//! over the interval. Once all are registered, each node also opens its
//! assignment watch (a long poll the master holds for 30 s), as an agent does.
//! After [`WARM_UP`], for [`WINDOW`]: the latency of every lease renewal as the
//! client sees it (p50, p99, max), failed renewals, and the master's CPU
//! (cores = CPU seconds / wall seconds) and RSS at the end.
//!
//! The load generator runs on the same machine and shares its cores with the
//! master; its own CPU use is reported too. Goals: p99 <= [`P99_GOAL`] ms with
//! the master using <= [`CPU_GOAL`] core.

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmlet_tests::{Master, bin, rss_bytes};

use crate::figures::{Figure, Figures, Goal};
use crate::simnode::{Fleet, Stats};
use crate::support::{percentile, process_cpu_seconds, raise_open_files_limit, require_executable};

const SUBJECT: &str = "master";
const NODES: usize = 10_000;
const REGISTER_CONCURRENCY: usize = 64;
const REGISTER_TIMEOUT: Duration = Duration::from_secs(300);
const MASTER_ARGS: [&str; 6] = ["--heartbeat-interval", "2s", "--node-grace-period", "8s", "--lost-after", "15s"];
/// The simulated nodes' tokio worker threads (the machine has 2 cores, shared with the master).
const FLEET_THREADS: usize = 2;
const WARM_UP: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(30);
const P99_GOAL: Goal = Goal::AtMost(50.0);
const CPU_GOAL: Goal = Goal::AtMost(1.0);

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    require_executable(&bin("wasmlet-master"), "run `cargo build -p wasmlet-master --bins` (or set WASMLET_BIN_DIR)")?;
    // Each node holds a watch connection open, in this process and in the master (which inherits the limit).
    let open_files = raise_open_files_limit();
    progress(format!("open files limit {open_files:?}; starting a master with {}", MASTER_ARGS.join(" ")));
    let master = Master::start(&MASTER_ARGS).context("starting wasmlet-master")?;
    let pid = master.pid().context("the master's pid")?;
    let fleet = Fleet::new(&master, FLEET_THREADS)?;

    progress(format!("registering {NODES} simulated nodes, {REGISTER_CONCURRENCY} at a time"));
    let names: Vec<String> = (0..NODES).map(|i| format!("sim-{i:05}")).collect();
    let cpu_before_register = process_cpu_seconds(pid, "wasmlet-master")?;
    let (took, registered) = fleet.register(&names, REGISTER_CONCURRENCY, REGISTER_TIMEOUT);
    let register_cpu = process_cpu_seconds(pid, "wasmlet-master")? - cpu_before_register;
    progress(format!("{registered} nodes registered in {:.1} s (master CPU {register_cpu:.1} s)", took.as_secs_f64()));
    figures.emit(
        Figure::new(SUBJECT, "nodes_registered", registered as u64).note(&format!("of {NODES}; gave up after {REGISTER_TIMEOUT:?}")),
    )?;
    figures.emit(Figure::new(SUBJECT, "registration_s", took.as_secs_f64()).note(&format!(
        "wall time to register the nodes, {REGISTER_CONCURRENCY} registrations in flight; each node renews its lease from its registration on"
    )))?;
    figures.emit(Figure::new(SUBJECT, "registrations_per_s", registered as f64 / took.as_secs_f64()))?;
    figures.emit(
        Figure::new(SUBJECT, "registration_cpu_s", register_cpu).note("master CPU seconds (user+system) spent during registration"),
    )?;

    // Every node holding an assignment long poll open needs a descriptor on
    // both sides, and ten thousand of them plus the renewals do not fit under
    // a hard open-files limit of 20,000 (this machine's, which root may not
    // raise). With no workloads the watches carry nothing; agents learn of a
    // new assignment from the lease answer too. So only when the limit allows:
    let limit = raise_open_files_limit().unwrap_or(0);
    let watching = limit >= 4 * NODES as u64;
    if watching {
        progress(format!("opening every node's assignment watch; warm-up {WARM_UP:?}"));
        fleet.start_watches();
    } else {
        progress(format!("open-files limit {limit}: not opening {NODES} assignment watches; warm-up {WARM_UP:?}"));
    }
    figures.emit(Figure::new(SUBJECT, "assignment_watches_open", if watching { NODES as u64 } else { 0 }).note(&format!(
        "long polls held open during the measurement; the open-files limit here is {limit} (two descriptors per watch, one on each side)"
    )))?;
    std::thread::sleep(WARM_UP);

    progress(format!("measuring for {WINDOW:?}"));
    let stats = &fleet.stats;
    let me = std::process::id();
    let (leases_before, errors_before, watch_errors_before) =
        (Stats::get(&stats.leases), Stats::get(&stats.lease_errors), Stats::get(&stats.watch_errors));
    let (master_cpu_before, own_cpu_before) = (process_cpu_seconds(pid, "wasmlet-master")?, process_cpu_seconds(me, "wasmlet-bench")?);
    let started = Instant::now();
    stats.start_recording();
    std::thread::sleep(WINDOW);
    let latencies = stats.stop_recording();
    let wall = started.elapsed().as_secs_f64();
    let master_cores = (process_cpu_seconds(pid, "wasmlet-master")? - master_cpu_before) / wall;
    let own_cores = (process_cpu_seconds(me, "wasmlet-bench")? - own_cpu_before) / wall;
    let rss = rss_bytes(pid).context("reading the master's RSS from /proc")?;
    let renewals = Stats::get(&stats.leases) - leases_before;
    let errors = Stats::get(&stats.lease_errors) - errors_before;
    let watch_errors = Stats::get(&stats.watch_errors) - watch_errors_before;
    let ready = master.nodes().iter().filter(|n| n.is_ready()).count();

    let watches = if watching { "each holding an assignment watch" } else { "without assignment watches (open-files limit)" };
    let setting = format!(
        "{registered} simulated nodes renewing every 2 s (spread evenly), {watches}, over {} s after a {} s warm-up",
        WINDOW.as_secs(),
        WARM_UP.as_secs()
    );
    let shared = "the load generator (this process) runs on the same 2 cores as the master";
    let latency_note =
        format!("client-side latency of successful lease renewals (PUT /nodes/NAME/lease), nearest rank; {setting}; {shared}");
    figures.emit(Figure::new(SUBJECT, "lease_renewals", renewals).note(&setting))?;
    figures.emit(
        Figure::new(SUBJECT, "lease_renewals_per_s", renewals as f64 / wall).note(&format!("expected {:.0}", registered as f64 / 2.0)),
    )?;
    figures.emit(Figure::new(SUBJECT, "lease_p50_ms", percentile(&latencies, 0.5)).note(&latency_note))?;
    figures.emit(Figure::new(SUBJECT, "lease_p99_ms", percentile(&latencies, 0.99)).goal(P99_GOAL).note(&latency_note))?;
    figures.emit(Figure::new(SUBJECT, "lease_max_ms", percentile(&latencies, 1.0)).note(&latency_note))?;
    figures.emit(
        Figure::new(SUBJECT, "lease_errors", errors).note("renewals that failed (connection error, no answer within 10 s, non-2xx)"),
    )?;
    figures.emit(Figure::new(SUBJECT, "watch_errors", watch_errors).note("assignment watches that failed in the window"))?;
    let expected = registered as f64 / 2.0 * wall;
    let served = if (renewals as f64) < 0.9 * expected {
        format!("; only {renewals} of ~{expected:.0} expected renewals were served, so this is not the CPU of the full load")
    } else {
        String::new()
    };
    figures.emit(
        Figure::new(SUBJECT, "cpu_cores", master_cores)
            .goal(CPU_GOAL)
            .note(&format!("master CPU seconds (user+system) / wall seconds over the window; {shared}{served}")),
    )?;
    figures.emit(Figure::new(SUBJECT, "rss_bytes", rss).note(&format!("master RSS at the end of the window, {registered} nodes")))?;
    figures.emit(
        Figure::new("wasmlet-bench", "loadgen_cpu_cores", own_cores).note("CPU of the simulated nodes (this process) over the window"),
    )?;
    figures.emit(Figure::new(SUBJECT, "ready_nodes", ready as u64).note("nodes Ready per the master at the end"))?;
    progress(format!(
        "{renewals} renewals, p50 {:.2} ms, p99 {:.2} ms (goal {P99_GOAL}), {errors} errors; master {master_cores:.2} cores \
         (goal {CPU_GOAL}), RSS {} MiB; load generator {own_cores:.2} cores; {ready} nodes Ready",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        rss >> 20
    ));
    // The fleet goes first: its connections close before the master is killed.
    drop(fleet);
    Ok(())
}

fn progress(message: impl Display) {
    eprintln!("heartbeats: {message}");
}
