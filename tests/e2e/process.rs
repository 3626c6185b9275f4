//! Process isolation (`isolation: process`): every run in a process and a
//! cgroup of its own. What is asserted comes from the kernel's own files
//! (the run's cgroup), found through `/proc/PID/cgroup` of the run's process,
//! never from wall-clock speed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmlet_api::{Phase, Workload};
use wasmlet_tests::{Agent, Master, cgroup_dirs, instance_processes, place_file, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

fn manifests_agent(dir: &Path, extra: &[&str]) -> Agent {
    let mut args = vec!["--manifests-dir", dir.to_str().expect("utf-8"), "--manifests-poll-interval", "100ms"];
    args.extend_from_slice(extra);
    Agent::start(&args).expect("agent starts")
}

/// The process of `instance`, once there is exactly one.
fn process_of(agent: &Agent, instance: &str) -> u32 {
    wait_for(WAIT, &format!("the process of {instance}"), || {
        let pids: Vec<u32> = instance_processes(agent.data_dir.path()).into_iter().filter(|(_, i)| i == instance).map(|(p, _)| p).collect();
        (pids.len() == 1).then(|| pids[0])
    })
}

/// The directory of `pid`'s cgroup in the hierarchy that has `file`.
fn cgroup_file(pid: u32, file: &str) -> PathBuf {
    cgroup_dirs(pid)
        .into_iter()
        .map(|d| d.join(file))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no cgroup of process {pid} has {file}: {:?}", cgroup_dirs(pid)))
}

/// Whether `pid` runs (a zombie, dead but not yet reaped by whoever adopted it, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A `key value` line of a flat-keyed cgroup file.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// CPU figures of a cgroup: periods, throttled periods, usage in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct CpuCounters {
    periods: u64,
    throttled: u64,
    usage_ns: u64,
}

fn cpu_counters(pid: u32) -> CpuCounters {
    let stat = read(&cgroup_file(pid, "cpu.stat"));
    let periods = field(&stat, "nr_periods").expect("nr_periods in cpu.stat");
    let throttled = field(&stat, "nr_throttled").expect("nr_throttled in cpu.stat");
    // v2: usage in cpu.stat (µs); v1: cpuacct.usage (ns), in its own hierarchy.
    let usage_ns = match field(&stat, "usage_usec") {
        Some(us) if cgroup_dirs(pid).iter().all(|d| !d.join("cpuacct.usage").exists()) => us * 1000,
        _ => read(&cgroup_file(pid, "cpuacct.usage")).trim().parse().expect("cpuacct.usage"),
    };
    CpuCounters { periods, throttled, usage_ns }
}

#[test]
fn the_kernel_holds_a_process_instance_to_its_cpu_quota_and_kills_only_the_instance_over_its_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let process = "  isolation: process\n";
    place_file(
        dir.path(),
        "spin.yaml",
        &workload_manifest("spin", "spin", "daemon", &format!("{process}  resources:\n    limits: {{cpu: 200m}}\n")),
    );
    place_file(
        dir.path(),
        "memhog.yaml",
        &workload_manifest(
            "memhog",
            "memhog",
            "job",
            &format!("{process}  restartPolicy: Never\n  resources:\n    limits: {{memory: 32Mi}}\n"),
        ),
    );
    place_file(
        dir.path(),
        "sensor.yaml",
        &workload_manifest("sensor", "sensor", "daemon", &format!("{process}  args: [--interval, \"100\"]\n")),
    );
    let agent = manifests_agent(dir.path(), &[]);
    let status: serde_json::Value = agent.get_json("/status").expect("status");
    let offered = &status["status"]["runtime"]["isolation"];
    assert!(offered.as_array().is_some_and(|m| m.iter().any(|m| m == "process")), "process isolation offered: {status:#}");

    // CPU: the quota is the kernel's, and so is the proof it holds.
    agent.wait_phase("spin-0", Phase::Running, WAIT);
    let spin = process_of(&agent, "spin-0");
    let quota = match cgroup_dirs(spin).iter().map(|d| d.join("cpu.max")).find(|p| p.exists()) {
        Some(max) => read(&max).trim().to_string(),
        None => format!("{} {}", read(&cgroup_file(spin, "cpu.cfs_quota_us")).trim(), read(&cgroup_file(spin, "cpu.cfs_period_us")).trim()),
    };
    assert_eq!(quota, "20000 100000", "limits.cpu 200m is 20 ms per 100 ms period");
    let before = cpu_counters(spin);
    wait_for(WAIT, "a few seconds of throttled periods", || {
        let now = cpu_counters(spin);
        (now.periods >= before.periods + 20 && now.throttled > before.throttled).then_some(())
    });
    let after = cpu_counters(spin);
    let (periods, used) = (after.periods - before.periods, after.usage_ns - before.usage_ns);
    assert!(after.throttled - before.throttled >= 1, "the spinning instance was throttled: {before:?} → {after:?}");
    // The two reads of each sample are not one instant: a period's worth of slack on either side.
    assert!(used <= (periods + 2) * 20_000_000, "{used} ns used over {periods} periods of 20 ms quota");

    // Memory: the OOM killer ends memhog alone.
    let memhog = agent.wait_phase("memhog-0", Phase::Failed, WAIT);
    assert_eq!(memhog.status.reason.as_deref(), Some("OOMKilled"), "{:?}", memhog.status);
    assert!(memhog.status.exit_code.is_none(), "{:?}", memhog.status);
    let sensor = agent.wait_phase("sensor-0", Phase::Running, WAIT);
    assert_eq!(sensor.status.restarts, 0, "the sensor beside it kept running");
    let sensor_pid = process_of(&agent, "sensor-0");
    let oom = cgroup_dirs(sensor_pid)
        .iter()
        .flat_map(|d| [d.join("memory.events"), d.join("memory.oom_control")])
        .find_map(|p| field(&std::fs::read_to_string(p).ok()?, "oom_kill"));
    assert_eq!(oom, Some(0), "no OOM kill in the sensor's cgroup");
    let seq = |agent: &Agent| -> u64 {
        let text = agent.get_text("/instances/sensor-0/logs").unwrap_or_default();
        text.lines().filter_map(|l| l.split("\"seq\":").nth(1)?.split(',').next()?.parse().ok()).max().unwrap_or(0)
    };
    let was = seq(&agent);
    wait_for(WAIT, "the sensor to keep reading", || (seq(&agent) > was + 2).then_some(()));
    // Followers of the log get the lines the sensor's own process writes.
    let mut stream = agent.client().get(agent.url("/instances/sensor-0/logs?tail=0&follow=true")).send().expect("follow");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\"seq\":").count() < 3 {
        let n = std::io::Read::read(&mut stream, &mut buf).expect("read the stream");
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(stream);
    let ready = agent.client().get(agent.url("/readyz")).send().expect("readyz");
    assert!(ready.status().is_success(), "the agent stays ready: {}", ready.status());

    // What the agent reports comes from the same counters.
    let spin = agent.instance("spin-0").expect("spin");
    let usage = spin.status.usage.expect("usage");
    assert!(usage.cpu_seconds > 0.0, "{usage:?}");
    let metrics = agent.get_text("/metrics").expect("metrics");
    let throttled = metrics
        .lines()
        .find(|l| l.starts_with("wasmlet_instance_cpu_throttled_periods") && l.contains("instance=\"spin-0\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("throttled periods of spin-0 in /metrics:\n{metrics}"));
    assert!(throttled >= (after.throttled) as f64 - 1.0, "{throttled} vs the kernel's {}", after.throttled);
}

#[test]
fn a_process_instance_service_answers_through_the_ingress() {
    let dir = tempfile::tempdir().expect("tempdir");
    place_file(
        dir.path(),
        "hello.yaml",
        &workload_manifest("hello", "http-hello", "service", "  isolation: process\n  route: {pathPrefix: /hello}\n"),
    );
    let agent = manifests_agent(dir.path(), &[]);
    agent.wait_phase("hello-0", Phase::Running, WAIT);
    let pid = process_of(&agent, "hello-0");
    assert_ne!(pid, agent.pid());
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let body = wait_for(WAIT, "the service to answer", || {
        let r = http.get(format!("{}/hello", agent.ingress)).send().ok()?;
        r.status().is_success().then(|| r.text().unwrap_or_default())
    });
    assert!(body.contains("hello"), "{body}");
    // Its own process's log lines land in the instance's log, as in-process.
    let log = agent.get_text("/instances/hello-0/logs").expect("logs");
    assert!(log.contains("serving"), "{log}");

    std::fs::remove_file(dir.path().join("hello.yaml")).expect("remove manifest");
    let cgroups: Vec<PathBuf> = cgroup_dirs(pid).into_iter().filter(|d| d.to_string_lossy().contains("/instances/")).collect();
    assert!(!cgroups.is_empty(), "the service ran in cgroups of its own: {:?}", cgroup_dirs(pid));
    wait_for(WAIT, "the service's process to end", || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()));
    wait_for(WAIT, "its cgroups to be removed", || cgroups.iter().all(|d| !d.exists()).then_some(()));
}

#[test]
fn runs_that_start_and_stop_leave_no_cgroup_and_no_process_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A daemon that ends at once, restarted at once: a process and a cgroup per run.
    place_file(dir.path(), "hello.yaml", &workload_manifest("hello", "hello", "daemon", "  isolation: process\n"));
    let agent = manifests_agent(dir.path(), &["--restart-backoff-initial", "1ms", "--restart-backoff-max", "1ms"]);
    // The instances' parent cgroups, from a run caught while it runs.
    let parents: Vec<PathBuf> = wait_for(WAIT, "a run of hello in its cgroup", || {
        let (pid, _) = instance_processes(agent.data_dir.path()).into_iter().next()?;
        let dirs: Vec<PathBuf> = cgroup_dirs(pid).into_iter().filter(|d| d.to_string_lossy().contains("/instances/")).collect();
        (!dirs.is_empty()).then(|| dirs.iter().filter_map(|d| d.parent().map(Path::to_path_buf)).collect())
    });
    wait_for(WAIT, "100 runs", || agent.instance("hello-0").is_some_and(|i| i.status.restarts >= 100).then_some(()));
    // A daemon started and stopped a few times: the stop path.
    for _ in 0..5 {
        place_file(dir.path(), "sensor.yaml", &workload_manifest("sensor", "sensor", "daemon", "  isolation: process\n"));
        agent.wait_phase("sensor-0", Phase::Running, WAIT);
        process_of(&agent, "sensor-0");
        std::fs::remove_file(dir.path().join("sensor.yaml")).expect("remove");
        wait_for(WAIT, "the sensor gone", || agent.instance("sensor-0").is_none().then_some(()));
    }
    std::fs::remove_file(dir.path().join("hello.yaml")).expect("remove");
    wait_for(WAIT, "hello gone", || agent.instance("hello-0").is_none().then_some(()));
    wait_for(WAIT, "no instance process left", || instance_processes(agent.data_dir.path()).is_empty().then_some(()));
    let sockets = std::fs::read_dir(agent.data_dir.path().join("run")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(sockets, 0, "no service socket left");
    // What is left: at most the one spare process the agent keeps ready for the next run.
    let left = || -> Vec<PathBuf> {
        parents
            .iter()
            .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect()
    };
    // The last run's cgroup (a claimed spare's, named spare-…) may still be going away beside the next spare: it settles to one.
    wait_for(WAIT, "no instance cgroup left but one spare's", || {
        let names: std::collections::BTreeSet<String> =
            left().iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
        (names.len() <= 1 && names.iter().all(|n| n.starts_with("spare-"))).then_some(())
    });
    // Stopped, the agent leaves nothing at all.
    let mut agent = agent;
    agent.terminate(Duration::from_secs(20)).expect("the agent stops");
    assert!(left().is_empty(), "{:?}", left());
}

#[test]
fn a_node_without_writable_cgroups_refuses_process_instances_and_runs_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    place_file(dir.path(), "boxed.yaml", &workload_manifest("boxed", "sensor", "daemon", "  isolation: process\n"));
    place_file(dir.path(), "plain.yaml", &workload_manifest("plain", "sensor", "daemon", ""));
    // Every cgroup hierarchy read-only, in a mount namespace of the agent's own.
    let mut command = std::process::Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "--", "sh", "-c"]).arg(
        "for m in $(awk '$3 == \"cgroup\" || $3 == \"cgroup2\" {print $2}' /proc/self/mounts); do mount -o remount,bind,ro \"$m\" || exit 1; done; exec \"$0\" \"$@\"",
    );
    command.arg(wasmlet_tests::bin("wasmlet-agent"));
    let agent =
        Agent::start_command(command, &["--manifests-dir", dir.path().to_str().expect("utf-8"), "--manifests-poll-interval", "100ms"])
            .expect("agent starts");
    let status: serde_json::Value = agent.get_json("/status").expect("status");
    assert_eq!(status["status"]["runtime"]["isolation"], serde_json::json!(["in-process"]), "{status:#}");
    let reason = status["status"]["runtime"]["isolationReason"].as_str().unwrap_or_default();
    assert!(reason.contains("Read-only file system"), "{reason}");
    let boxed = agent.wait_phase("boxed-0", Phase::Failed, WAIT);
    assert_eq!(boxed.status.reason.as_deref(), Some("IsolationUnavailable"), "{:?}", boxed.status);
    let message = boxed.status.message.unwrap_or_default();
    assert!(message.contains("isolation: process") && message.contains("Read-only file system"), "{message}");
    agent.wait_phase("plain-0", Phase::Running, WAIT);
    assert!(instance_processes(agent.data_dir.path()).is_empty());
}

/// Answers `GET path` over a service instance's own socket, as the agent's ingress would ask it.
fn ask_socket(socket: &Path, path: &str) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: instance\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    if answer.starts_with("HTTP/1.1 200") { Ok(answer) } else { Err(answer) }
}

/// The `seq` numbers of the sensor's lines in an instance log, in order.
fn sensor_seqs(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.split("\"seq\":").nth(1)?.split(',').next()?.parse().ok()).collect()
}

/// What the master says of each instance: phase and restarts, by name.
fn master_view(master: &Master) -> BTreeMap<String, (Phase, u32)> {
    master.instances().into_iter().map(|i| (i.metadata.name, (i.status.phase, i.status.restarts))).collect()
}

#[test]
fn a_restarted_agent_adopts_the_runs_it_left_and_nobody_notices() {
    let master = Master::start(&[]).expect("master starts");
    let args = [
        "--master",
        master.url.as_str(),
        "--join-token",
        master.join_token.as_str(),
        "--name",
        "edge",
        "--sample-interval",
        "500ms",
        "--restart-backoff-initial",
        "100ms",
    ];
    let agent = Agent::start(&args).expect("agent starts");
    for example in ["sensor", "http-hello"] {
        master.upload_example(example).expect("upload");
    }
    let sensor = "  isolation: process\n  args: [\"--interval\", \"100\"]\n";
    for (name, module, kind, extra) in [
        ("sensor-a", "sensor", "daemon", sensor),
        ("sensor-b", "sensor", "daemon", sensor),
        ("hello", "http-hello", "service", "  isolation: process\n  route: {pathPrefix: /hello}\n"),
    ] {
        let workload: Workload = wasmlet_api::from_yaml(&workload_manifest(name, module, kind, extra)).expect("manifest");
        let (status, body) = master.send_json(reqwest::Method::POST, "/workloads", &workload).expect("POST /workloads");
        assert!(status == 201 || status == 200, "{status}: {body}");
    }
    let running = |view: &BTreeMap<String, (Phase, u32)>| view.len() == 3 && view.values().all(|(phase, _)| *phase == Phase::Running);
    let view = wait_for(WAIT, "three instances Running on the master", || Some(master_view(&master)).filter(running));
    let name_of = |workload: &str| view.keys().find(|n| n.starts_with(workload)).cloned().expect("an instance of each workload");
    let (a, b, hello) = (name_of("sensor-a"), name_of("sensor-b"), name_of("hello"));

    // One restart before, so that "unchanged" is not merely zero.
    let first = process_of(&agent, &a);
    wasmlet_tests::signal(first, rustix::process::Signal::KILL);
    wait_for(WAIT, "sensor-a restarted", || agent.instance(&a).filter(|i| i.status.restarts == 1 && i.status.phase == Phase::Running));
    let before = wait_for(WAIT, "the master to see the restart", || Some(master_view(&master)).filter(|v| running(v) && v[&a].1 == 1));
    let pids: Vec<u32> = [&a, &b, &hello].iter().map(|name| process_of(&agent, name)).collect();
    let socket = agent.data_dir.path().join("run").join(format!("{hello}.sock"));
    ask_socket(&socket, "/hello").expect("the service answers on its socket");

    // Sampled throughout: the service on its own socket, and the master's view.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, socket) = (stop.clone(), socket.clone());
        std::thread::spawn(move || {
            let (mut answered, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match ask_socket(&socket, "/hello") {
                    Ok(_) => answered += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (answered, failed)
        })
    };
    let watcher = {
        let (stop, url, client) = (stop.clone(), master.api("/instances"), master.client());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = client.get(&url).send()
                    && let Ok(list) = r.json::<wasmlet_api::protocol::List<wasmlet_api::Instance>>()
                {
                    seen.push(list.items.into_iter().map(|i| (i.metadata.name, (i.status.phase, i.status.restarts))).collect());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        })
    };

    // kill -9, as a crash of the agent alone; then SIGTERM, as an upgrade does.
    let data = agent.kill_keep_data().expect("kill -9");
    assert!(pids.iter().all(|pid| alive(*pid)), "every run outlives a killed agent");
    std::thread::sleep(Duration::from_millis(500));
    let agent = Agent::start_in(data, &args).expect("agent restarts");
    let adopted = |agent: &Agent| {
        wait_for(WAIT, "the runs adopted", || {
            let instances: Vec<wasmlet_api::Instance> = agent.get_json("/instances").ok()?;
            (instances.len() == 3 && instances.iter().all(|i| i.status.phase == Phase::Running)).then_some(instances)
        })
    };
    adopted(&agent);
    // A resumed instance is Running from the new agent's start; its executor takes the
    // process over once the module is loaded, which a busy machine may take a moment for.
    // Stopped only once it did (else the next agent is the first to take it over).
    let adoption = format!("adopted its process {}", pids[1]);
    wait_for(WAIT, "the second agent to take sensor-b's process over", || {
        agent.get_text(&format!("/instances/{b}/logs")).ok().filter(|log| log.contains(&adoption)).map(drop)
    });
    let data = agent.stop_keep_data().expect("SIGTERM");
    assert!(pids.iter().all(|pid| alive(*pid)), "every run outlives a stopped agent");
    let agent = Agent::start_in(data, &args).expect("agent restarts");
    let instances = adopted(&agent);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = sampler.join().expect("sampler");
    let seen: Vec<BTreeMap<String, (Phase, u32)>> = watcher.join().expect("watcher");

    // The same processes, the same restart counts, here and on the master.
    let now: Vec<u32> = [&a, &b, &hello].iter().map(|name| process_of(&agent, name)).collect();
    assert_eq!(now, pids, "the runs the first agent started still run, and no other");
    for instance in &instances {
        assert_eq!(instance.status.restarts, before[&instance.metadata.name].1, "{:?}", instance.status);
    }
    assert!(failed.is_empty() && answered > 20, "the service answered throughout: {answered} answers, failures {failed:?}");
    assert!(seen.len() > 10, "the master was sampled: {}", seen.len());
    for view in &seen {
        assert_eq!(view, &before, "the master saw no change of phase or restarts");
    }
    // Through the new agent's ingress, and its logs continue the old ones line by line.
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let body = wait_for(WAIT, "the ingress to route to the adopted service", || {
        http.get(format!("{}/hello", agent.ingress)).send().ok().filter(|r| r.status().is_success()).map(|r| r.text().unwrap_or_default())
    });
    assert!(body.contains("hello"), "{body}");
    let log = wait_for(WAIT, "the last agent to take sensor-b's process over", || {
        let log = agent.get_text(&format!("/instances/{b}/logs")).ok()?;
        let after_second = log.rsplit_once(&adoption).map(|(_, after)| sensor_seqs(after).len()).unwrap_or(0);
        (log.matches(&adoption).count() == 2 && after_second > 3).then_some(log)
    });
    let seqs = sensor_seqs(&log);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no line lost or repeated across two restarts: {seqs:?}");
    let (before_first, _) = log.split_once(&adoption).expect("adopted");
    let (_, after_second) = log.rsplit_once(&adoption).expect("adopted");
    assert!(sensor_seqs(before_first).len() > 3 && sensor_seqs(after_second).len() > 3, "lines before and after: {log}");
    let events: Vec<wasmlet_api::Event> = agent.get_json("/events").expect("events");
    assert!(events.iter().any(|e| e.reason == "Adopted" && e.involved_object.name == b), "{events:?}");
    assert!(!events.iter().any(|e| e.reason == "Started"), "nothing started anew: {events:?}");
}

#[test]
fn a_restarted_agent_ends_the_runs_it_is_no_longer_asked_for_and_restarts_changed_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = |name: &str, interval: u32| {
        workload_manifest(name, "sensor", "daemon", &format!("  isolation: process\n  args: [\"--interval\", \"{interval}\"]\n"))
    };
    for name in ["kept", "changed", "removed"] {
        place_file(dir.path(), &format!("{name}.yaml"), &manifest(name, 100));
    }
    let args = ["--manifests-dir", dir.path().to_str().expect("utf-8"), "--manifests-poll-interval", "100ms"];
    let agent = Agent::start(&args).expect("agent starts");
    let old: Vec<u32> = ["kept-0", "changed-0", "removed-0"]
        .iter()
        .map(|name| {
            agent.wait_phase(name, Phase::Running, WAIT);
            process_of(&agent, name)
        })
        .collect();
    let data = agent.kill_keep_data().expect("kill -9");
    assert!(old.iter().all(|pid| alive(*pid)), "the runs outlive a killed agent");
    // While the agent is away: one manifest changes, one goes.
    place_file(dir.path(), "changed.yaml", &manifest("changed", 150));
    std::fs::remove_file(dir.path().join("removed.yaml")).expect("remove");
    let agent = Agent::start_in(data, &args).expect("agent restarts");
    agent.wait_phase("kept-0", Phase::Running, WAIT);
    agent.wait_phase("changed-0", Phase::Running, WAIT);
    wait_for(WAIT, "the unwanted and the changed runs to end", || (!alive(old[1]) && !alive(old[2])).then_some(()));
    assert_eq!(process_of(&agent, "kept-0"), old[0], "the unchanged run is adopted");
    assert_ne!(process_of(&agent, "changed-0"), old[1], "the changed one runs anew");
    assert!(agent.instance("removed-0").is_none());
    let log = agent.get_text("/instances/changed-0/logs").expect("logs");
    assert!(log.contains("the instance's spec changed since"), "{log}");
}
