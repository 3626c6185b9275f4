//! Scenario `ha`: three masters on three etcd members (Debian's `etcd-server`,
//! all on this machine, each with its own data dir and its own fsyncs), set
//! next to one master on redb measured in the same run.
//!
//! - Failover, [`KILLS`] times: `kill -9` of the leading master, then at once
//!   a create through a surviving master (API writes need no leader: the time
//!   to its `201`), and the time until that workload's `FailedScheduling`
//!   event appears (no node exists): the first write of the new leader's
//!   controllers. Goal: p99 of the latter <= [`FAILOVER_GOAL`] (the default
//!   leader lease of kube-controller-manager is 15 s). The killed master is
//!   started again before the next kill.
//! - Applies per second: [`APPLIES`] creates (replicas 0) from
//!   [`APPLY_CLIENTS`] clients, spread over the masters; three on etcd against
//!   one on redb. Goal: >= 0.5x.
//! - Placements per second: [`REPLICAS`] replicas onto [`NODES`] simulated
//!   nodes (spread over the masters), from just before the create until the
//!   leader's view holds every replica (committed: its `wasmlet_master_instances`
//!   read every [`PLACED_EVERY`]); also until the last one was seen by its
//!   node. Three on etcd against one on redb. Goal: >= 0.5x.
//! - Heartbeats: [`HEARTBEAT_NODES`] simulated nodes renewing every 2 s,
//!   spread over the three masters: renewal p99 (goal <= 50 ms), the masters'
//!   CPU together (goal <= 1 core) and etcd's writes per second meanwhile
//!   (from its revision).

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use wasmlet_api::Workload;
use wasmlet_tests::{EtcdCluster, Master, bin, workload_manifest};

use crate::figures::{Figure, Figures, Goal};
use crate::simnode::{Fleet, Stats};
use crate::support::{percentile, poll_until, process_cpu_seconds, raise_open_files_limit, require_executable};

const SUBJECT: &str = "masters-on-etcd";
const REFERENCE: &str = "one master on redb";
const KILLS: usize = 6;
const FAILOVER_GOAL: Goal = Goal::AtMost(3000.0);
const APPLIES: usize = 1000;
const APPLY_CLIENTS: usize = 16;
const NODES: usize = 200;
const REPLICAS: usize = 5000;
const HEARTBEAT_NODES: usize = 10_000;
const WARM_UP: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(30);
const MASTER_ARGS: [&str; 6] = ["--heartbeat-interval", "2s", "--node-grace-period", "8s", "--lost-after", "15s"];
const TIMEOUT: Duration = Duration::from_secs(300);

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    require_executable(&bin("wasmlet-master"), "run `cargo build -p wasmlet-master --bins` (or set WASMLET_BIN_DIR)")?;
    raise_open_files_limit();
    progress("starting three etcd members");
    let etcd = EtcdCluster::start(3).context("starting etcd (Debian's etcd-server)")?;

    failover(&etcd, figures)?;

    progress(format!("applies: {APPLIES} creates from {APPLY_CLIENTS} clients"));
    let (reference, measured) = side_by_side(&etcd, "/applies", applies)?;
    let note = format!("{APPLIES} POST /workloads (replicas 0) from {APPLY_CLIENTS} clients, spread over the masters");
    figures.emit(Figure::new(REFERENCE, "applies_per_s", reference).note(&note))?;
    figures.emit(Figure::new(SUBJECT, "applies_per_s", measured).note(&note))?;
    figures.emit(Figure::ratio(SUBJECT, "applies_per_s", measured, REFERENCE, reference, Goal::AtLeast(0.5)))?;

    progress(format!("placements: {REPLICAS} replicas onto {NODES} simulated nodes"));
    let (reference, measured) = side_by_side(&etcd, "/placements", placements)?;
    let setting = format!("{REPLICAS} replicas of one workload onto {NODES} simulated nodes, from just before POST /workloads");
    let note = format!(
        "{setting} until the leader's view holds them all (committed; its wasmlet_master_instances read every {} ms)",
        PLACED_EVERY.as_millis()
    );
    figures.emit(Figure::new(REFERENCE, "placements_per_s", reference.placed_per_s).note(&note))?;
    figures.emit(Figure::new(SUBJECT, "placements_per_s", measured.placed_per_s).note(&note))?;
    figures.emit(Figure::ratio(
        SUBJECT,
        "placements_per_s",
        measured.placed_per_s,
        REFERENCE,
        reference.placed_per_s,
        Goal::AtLeast(0.5),
    ))?;
    let note = format!(
        "{setting} until the last one was seen by its node in its assignment watch (each simulated node reports Running \
         before it watches again, so these writes compete)"
    );
    figures.emit(Figure::new(REFERENCE, "placements_seen_per_s", reference.seen_per_s).note(&note))?;
    figures.emit(Figure::new(SUBJECT, "placements_seen_per_s", measured.seen_per_s).note(&note))?;

    heartbeats(&etcd, figures)
}

/// `measure` through one master on redb (the reference), then through three on
/// `etcd` under `prefix`; each set stopped before the next starts.
fn side_by_side<T>(etcd: &EtcdCluster, prefix: &str, measure: fn(&[&Master]) -> anyhow::Result<T>) -> anyhow::Result<(T, T)> {
    let alone = Master::start(&MASTER_ARGS).context("starting a master on redb")?;
    let reference = measure(&[&alone])?;
    drop(alone);
    let three = on_etcd(etcd, prefix)?;
    let measured = measure(&three.iter().collect::<Vec<_>>())?;
    Ok((reference, measured))
}

/// Three masters on `etcd` under `prefix`.
fn on_etcd(etcd: &EtcdCluster, prefix: &str) -> anyhow::Result<Vec<Master>> {
    let endpoints = etcd.endpoints();
    let mut args: Vec<&str> = MASTER_ARGS.to_vec();
    args.extend(["--store", "etcd", "--etcd-endpoints", &endpoints, "--etcd-prefix", prefix]);
    (0..3).map(|_| Master::start(&args).context("starting a master on etcd")).collect()
}

fn is_leader(master: &Master) -> Option<bool> {
    let text = master.client().get(format!("{}/metrics", master.url)).timeout(Duration::from_secs(2)).send().ok()?.text().ok()?;
    Some(text.lines().any(|l| l == "wasmlet_master_is_leader 1"))
}

fn failover(etcd: &EtcdCluster, figures: &mut Figures) -> anyhow::Result<()> {
    let mut masters = on_etcd(etcd, "/failover")?;
    let (mut api_ms, mut controller_ms) = (Vec::new(), Vec::new());
    for kill in 0..KILLS {
        let leader = poll_until(TIMEOUT, Duration::from_millis(20), "exactly one leader", || {
            let leading: Vec<usize> = (0..masters.len()).filter(|i| is_leader(&masters[*i]) == Some(true)).collect();
            Ok((leading.len() == 1).then(|| leading[0]))
        })?;
        let survivor = (leader + 1) % masters.len();
        let name = format!("failover-{kill}");
        let text = workload_manifest(&name, "sensor", "daemon", "  replicas: 1\n");
        let workload: Workload = wasmlet_api::from_yaml(&text)?;
        masters[survivor].upload_example("sensor")?;
        masters[leader].kill();
        let killed = Instant::now();
        poll_until(TIMEOUT, Duration::from_millis(5), "a create through a surviving master", || {
            let (status, _) = masters[survivor].send_json(Method::POST, "/workloads", &workload)?;
            Ok((status == 201).then_some(()))
        })?;
        api_ms.push(killed.elapsed().as_secs_f64() * 1000.0);
        poll_until(TIMEOUT, Duration::from_millis(10), "the new leader's FailedScheduling event", || {
            let events = masters[survivor].events();
            Ok(events.iter().any(|e| e.reason == "FailedScheduling" && e.involved_object.name == name).then_some(()))
        })?;
        controller_ms.push(killed.elapsed().as_secs_f64() * 1000.0);
        progress(format!(
            "kill {kill}: API write after {:.0} ms, the new leader's first write after {:.0} ms",
            api_ms[kill], controller_ms[kill]
        ));
        masters[leader].restart().context("starting the killed master again")?;
    }
    let note = format!("{KILLS} kill -9 of the leading master of three (--leader-lease 2s); the killed one started again before the next");
    figures.emit(Figure::new(SUBJECT, "kill_to_api_write_p50_ms", percentile(&api_ms, 0.5)).note(&note))?;
    figures.emit(Figure::new(SUBJECT, "kill_to_api_write_p99_ms", percentile(&api_ms, 0.99)).note(&note))?;
    figures.emit(Figure::new(SUBJECT, "kill_to_leader_write_p50_ms", percentile(&controller_ms, 0.5)).note(&note))?;
    figures.emit(
        Figure::new(SUBJECT, "kill_to_leader_write_p99_ms", percentile(&controller_ms, 0.99))
            .goal(FAILOVER_GOAL)
            .note(&format!("{note}; until the new leader's controllers wrote (FailedScheduling of a workload created after the kill)")),
    )?;
    Ok(())
}

/// Creates per second through `masters`.
fn applies(masters: &[&Master]) -> anyhow::Result<f64> {
    masters[0].upload_example("sensor")?;
    let targets: Vec<(String, reqwest::blocking::Client)> = masters
        .iter()
        .map(|m| Ok((m.api("/workloads"), m.client_with(&m.admin_token).timeout(Duration::from_secs(30)).build()?)))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let failures = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..APPLY_CLIENTS)
            .map(|client| {
                let targets = &targets;
                scope.spawn(move || {
                    let mut failures = 0;
                    for i in (client..APPLIES).step_by(APPLY_CLIENTS) {
                        let text = workload_manifest(&format!("apply-{i:05}"), "sensor", "daemon", "  replicas: 0\n");
                        let Ok(workload) = wasmlet_api::from_yaml::<Workload>(&text) else { continue };
                        let (url, http) = &targets[i % targets.len()];
                        match http.post(url).json(&workload).send() {
                            Ok(answer) if answer.status().as_u16() == 201 => {}
                            _ => failures += 1,
                        }
                    }
                    failures
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(APPLIES)).sum::<usize>()
    });
    let took = started.elapsed().as_secs_f64();
    if failures > 0 {
        bail!("{failures} of {APPLIES} creates failed");
    }
    progress(format!("{APPLIES} creates through {} master(s) in {took:.2} s", masters.len()));
    Ok(APPLIES as f64 / took)
}

/// How fast one workload's replicas were placed.
struct Placements {
    /// Replicas per second until the leader's view held them all (committed).
    placed_per_s: f64,
    /// Replicas per second until the last one was seen by its node in its assignment watch.
    seen_per_s: f64,
}

/// How often the leader's `/metrics` is read while replicas are placed.
const PLACED_EVERY: Duration = Duration::from_millis(10);

/// The instances in `master`'s view: `wasmlet_master_instances`, summed over phases.
fn instances_in_view(master: &Master) -> anyhow::Result<f64> {
    let text = master.client().get(format!("{}/metrics", master.url)).timeout(Duration::from_secs(5)).send()?.text()?;
    Ok(text.lines().filter(|l| l.starts_with("wasmlet_master_instances{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
}

/// Places [`REPLICAS`] replicas onto [`NODES`] simulated nodes through `masters`.
fn placements(masters: &[&Master]) -> anyhow::Result<Placements> {
    let fleet = Fleet::spread(masters, 2)?;
    let names: Vec<String> = (0..NODES).map(|i| format!("sim-{i:04}")).collect();
    let (_, registered) = fleet.register(&names, 64, TIMEOUT);
    if registered < NODES {
        bail!("only {registered} of {NODES} simulated nodes registered");
    }
    fleet.start_watches();
    let first = masters[0];
    poll_until(TIMEOUT, Duration::from_millis(200), "the nodes Ready", || {
        Ok((first.nodes().iter().filter(|n| n.is_ready()).count() >= NODES).then_some(()))
    })?;
    first.upload_example("sensor")?;
    let text =
        workload_manifest("placements", "sensor", "daemon", &format!("  replicas: {REPLICAS}\n  args: [\"--interval\", \"60000\"]\n"));
    let workload: Workload = wasmlet_api::from_yaml(&text)?;
    let leader = masters.iter().find(|m| is_leader(m) == Some(true)).context("no master leads")?;
    let asked = Instant::now();
    let (status, body) = first.send_json(Method::POST, "/workloads", &workload)?;
    if status != 201 {
        bail!("creating the workload: {status}: {body}");
    }
    let placed = poll_until(TIMEOUT, PLACED_EVERY, "every replica placed in the leader's view", || {
        Ok((instances_in_view(leader)? >= REPLICAS as f64).then(|| asked.elapsed()))
    })?;
    let seen = poll_until(TIMEOUT, Duration::from_millis(5), "every replica seen by its node", || {
        Ok((Stats::get(&fleet.stats.seen) >= REPLICAS as u64).then(|| fleet.stats.last_seen()).flatten())
    })?;
    let seen = seen.saturating_duration_since(asked);
    progress(format!(
        "{REPLICAS} placed through {} master(s) in {:.3} s, seen by their nodes after {:.3} s",
        masters.len(),
        placed.as_secs_f64(),
        seen.as_secs_f64()
    ));
    drop(fleet);
    Ok(Placements { placed_per_s: REPLICAS as f64 / placed.as_secs_f64(), seen_per_s: REPLICAS as f64 / seen.as_secs_f64() })
}

/// etcd's current revision, through its JSON gateway.
fn etcd_revision(etcd: &EtcdCluster) -> anyhow::Result<u64> {
    let endpoint = etcd.endpoints().split(',').next().unwrap_or_default().to_string();
    let answer: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{endpoint}/v3/kv/range"))
        .json(&serde_json::json!({"key": "AA=="}))
        .send()?
        .json()?;
    answer["header"]["revision"].as_str().and_then(|r| r.parse().ok()).context("etcd's revision")
}

fn heartbeats(etcd: &EtcdCluster, figures: &mut Figures) -> anyhow::Result<()> {
    let masters = on_etcd(etcd, "/heartbeats")?;
    let pids: Vec<u32> = masters.iter().filter_map(Master::pid).collect();
    let fleet = Fleet::spread(&masters.iter().collect::<Vec<_>>(), 2)?;
    progress(format!("heartbeats: registering {HEARTBEAT_NODES} simulated nodes over the three masters"));
    let names: Vec<String> = (0..HEARTBEAT_NODES).map(|i| format!("sim-{i:05}")).collect();
    let (took, registered) = fleet.register(&names, 64, TIMEOUT);
    progress(format!("{registered} registered in {:.1} s; warm-up {WARM_UP:?}", took.as_secs_f64()));
    std::thread::sleep(WARM_UP);
    let cpu = |pids: &[u32]| -> anyhow::Result<f64> { pids.iter().map(|p| process_cpu_seconds(*p, "wasmlet-master")).sum() };
    let (cpu_before, revision_before) = (cpu(&pids)?, etcd_revision(etcd)?);
    let (leases_before, errors_before) = (Stats::get(&fleet.stats.leases), Stats::get(&fleet.stats.lease_errors));
    let started = Instant::now();
    fleet.stats.start_recording();
    std::thread::sleep(WINDOW);
    let latencies = fleet.stats.stop_recording();
    let wall = started.elapsed().as_secs_f64();
    let cores = (cpu(&pids)? - cpu_before) / wall;
    let writes = (etcd_revision(etcd)? - revision_before) as f64 / wall;
    let renewals = Stats::get(&fleet.stats.leases) - leases_before;
    let errors = Stats::get(&fleet.stats.lease_errors) - errors_before;
    let ready = masters[0].nodes().iter().filter(|n| n.is_ready()).count();
    let setting =
        format!("{registered} simulated nodes renewing every 2 s, spread over three masters on etcd, over {} s", WINDOW.as_secs());
    figures.emit(Figure::new(SUBJECT, "lease_renewals_per_s", renewals as f64 / wall).note(&setting))?;
    figures.emit(Figure::new(SUBJECT, "lease_p50_ms", percentile(&latencies, 0.5)).note(&setting))?;
    figures.emit(Figure::new(SUBJECT, "lease_p99_ms", percentile(&latencies, 0.99)).goal(Goal::AtMost(50.0)).note(&setting))?;
    figures.emit(Figure::new(SUBJECT, "lease_errors", errors))?;
    figures.emit(
        Figure::new(SUBJECT, "cpu_cores", cores)
            .goal(Goal::AtMost(1.0))
            .note("the three masters' CPU seconds together / wall seconds; the load generator and etcd share the same 2 cores"),
    )?;
    figures.emit(Figure::new("etcd", "writes_per_s", writes).note(&format!("etcd revisions per second meanwhile; {setting}")))?;
    figures.emit(Figure::new(SUBJECT, "ready_nodes", ready as u64).note("nodes Ready per the masters at the end"))?;
    progress(format!(
        "{renewals} renewals, p99 {:.2} ms, {errors} errors; masters {cores:.2} cores; etcd {writes:.1} writes/s; {ready} Ready",
        percentile(&latencies, 0.99)
    ));
    drop(fleet);
    Ok(())
}

fn progress(message: impl Display) {
    eprintln!("ha: {message}");
}
