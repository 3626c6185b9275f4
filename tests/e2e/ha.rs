//! Three masters on a cluster of three real etcd servers (Debian's
//! `etcd-server`, on loopback with their own data dirs): one leads, every one
//! serves, and losing the leader loses nothing.

use std::time::{Duration, Instant};

use reqwest::Method;
use wasmlet_api::{Phase, Workload};
use wasmlet_tests::{Agent, EtcdCluster, Master, signal, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

/// `count` masters on `etcd` under `prefix`.
fn masters(etcd: &EtcdCluster, prefix: &str, count: usize) -> Vec<Master> {
    let endpoints = etcd.endpoints();
    (0..count)
        .map(|_| Master::start(&["--store", "etcd", "--etcd-endpoints", &endpoints, "--etcd-prefix", prefix]).expect("a master starts"))
        .collect()
}

fn is_leader(master: &Master) -> Option<bool> {
    let text = master.client().get(format!("{}/metrics", master.url)).timeout(Duration::from_secs(2)).send().ok()?.text().ok()?;
    let line = text.lines().find(|l| l.starts_with("wasmlet_master_is_leader "))?;
    Some(line.ends_with(" 1"))
}

/// The index of the one master that says it leads, once exactly one does (among those not in `skip`).
fn leader(masters: &[Master], skip: &[usize]) -> usize {
    wait_for(WAIT, "exactly one master leads", || {
        let leading: Vec<usize> =
            (0..masters.len()).filter(|i| !skip.contains(i)).filter(|i| is_leader(&masters[*i]) == Some(true)).collect();
        (leading.len() == 1).then(|| leading[0])
    })
}

fn join(master: &Master, name: &str) -> Agent {
    let args = ["--master", master.url.as_str(), "--join-token", master.join_token.as_str(), "--name", name, "--sample-interval", "500ms"];
    Agent::start(&args).expect("agent starts")
}

fn sensor(name: &str, replicas: u32) -> Workload {
    let text = workload_manifest(name, "sensor", "daemon", &format!("  replicas: {replicas}\n  args: [\"--interval\", \"200\"]\n"));
    wasmlet_api::from_yaml(&text).expect("manifest")
}

fn running(master: &Master, workload: &str) -> Vec<wasmlet_api::Instance> {
    master.instances().into_iter().filter(|i| i.spec.workload == workload && i.status.phase == Phase::Running).collect()
}

#[test]
fn the_etcd_store_keeps_the_store_contract() {
    let etcd = EtcdCluster::start(3).expect("etcd starts");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let mut settings = wasmlet_master::MasterConfig::for_data_dir("/nonexistent").etcd();
        settings.endpoints = etcd.endpoints().split(',').map(String::from).collect();
        settings.prefix = "/contract".into();
        let store = wasmlet_master::store::EtcdStore::connect(settings).await.expect("connects");
        wasmlet_master::store::conformance::check(&store).await;
    });
}

/// `--master` with every master, `first` first.
fn join_all(masters: &[Master], first: usize, name: &str) -> Agent {
    let mut urls: Vec<&str> = masters.iter().map(|m| m.url.as_str()).collect();
    urls.swap(0, first);
    let list = urls.join(",");
    let args =
        ["--master", list.as_str(), "--join-token", masters[first].join_token.as_str(), "--name", name, "--sample-interval", "500ms"];
    Agent::start(&args).expect("agent starts")
}

/// Three masters share one CA and every object; one leads; an object written
/// through one is read through the others. The leader is killed while the
/// agents talk to it: another leads, the agents move to another master, and
/// the nodes notice nothing (no NotReady, no instance restarted or moved). A
/// module uploaded only through the killed master still runs, and a node
/// killed afterwards is handed off by the new leader.
#[test]
fn three_masters_serve_one_cluster_and_survive_losing_the_leader() {
    let etcd = EtcdCluster::start(3).expect("etcd starts");
    let mut masters = masters(&etcd, "/three", 3);
    for master in &masters[1..] {
        assert_eq!(master.ca_pem, masters[0].ca_pem, "every master serves with the cluster's one CA");
    }
    let first = leader(&masters, &[]);
    let followers: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let _a = join_all(&masters, first, "a");
    let b = join_all(&masters, first, "b");
    masters[first].upload_example("sensor").expect("upload");
    masters[first].upload_example("http-hello").expect("upload");
    wait_for(WAIT, "two Ready nodes on every master", || {
        masters.iter().all(|m| m.nodes().iter().filter(|n| n.is_ready()).count() == 2).then_some(())
    });
    // Each agent holds a channel to every master, so any master serves live data.
    wait_for(WAIT, "both nodes' channels on every master", || {
        masters.iter().all(|m| m.metric("wasmlet_master_agent_channels") == Some(2.0)).then_some(())
    });
    for master in &masters {
        let live: wasmlet_api::Node = master.get_json("/nodes/b/live").expect("b's live report through every master");
        assert_eq!(live.metadata.name, "b");
        assert_eq!(master.metric("wasmlet_master_live_requests_total{via=\"dial\"}"), None, "through the channel");
    }
    let (status, body) = masters[followers[0]].send_json(Method::POST, "/workloads", &sensor("s", 2)).expect("POST");
    assert_eq!(status, 201, "{body}");
    // A create of the same name through another master is refused: one store, one answer.
    let (status, body) = masters[followers[1]].send_json(Method::POST, "/workloads", &sensor("s", 2)).expect("POST");
    assert_eq!(status, 409, "{body}");
    let before = wait_for(WAIT, "two instances Running, seen through the third master", || {
        let running = running(&masters[first], "s");
        (running.len() == 2).then_some(running)
    });

    let killed_at = Instant::now();
    masters[first].kill();
    let second = leader(&masters, &[first]);
    eprintln!("a new leader after {:?}", killed_at.elapsed());
    // The module only the killed master took, run on nodes that never fetched it.
    let text = workload_manifest("web", "http-hello", "service", "  replicas: 2\n  route: {pathPrefix: /web}\n");
    let web: Workload = wasmlet_api::from_yaml(&text).expect("manifest");
    let (status, body) = masters[second].send_json(Method::POST, "/workloads", &web).expect("POST");
    assert_eq!(status, 201, "a write through the new leader: {body}");
    wait_for(WAIT, "the module uploaded through the killed master Running", || (running(&masters[second], "web").len() == 2).then_some(()));
    // Several grace periods later: nothing noticed the change of leader.
    std::thread::sleep(Duration::from_secs(3));
    let master = &masters[second];
    let not_ready: Vec<_> = master.events().into_iter().filter(|e| e.reason == "NodeNotReady" || e.reason == "HandedOff").collect();
    assert!(not_ready.is_empty(), "no node went NotReady, nothing was handed off: {not_ready:?}");
    assert!(master.nodes().iter().all(|n| n.is_ready()), "{:?}", master.nodes());
    let names = |list: &[wasmlet_api::Instance]| {
        let mut names: Vec<(String, String, u32)> =
            list.iter().map(|i| (i.metadata.name.clone(), i.spec.node.clone(), i.status.restarts)).collect();
        names.sort();
        names
    };
    assert_eq!(names(&running(master, "s")), names(&before), "the same instances on the same nodes, none restarted");

    // The CLI moves on as the agents do: a context whose first master is the dead one.
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("config.toml");
    let list = [first, followers[0], followers[1]].map(|i| masters[i].url.clone()).join(",");
    let text = format!(
        "current-context = \"ha\"\n\n[[contexts]]\nname = \"ha\"\nmaster = \"{list}\"\ntoken = \"{}\"\ncertificate-authority-data = '''\n{}'''\n",
        masters[second].admin_token, masters[second].ca_pem
    );
    std::fs::write(&config, text).expect("writing the CLI config");
    let get_masters = || cli(&["get", "masters"], ("WASMLETCONFIG", &config), "WASMLET_MASTER");
    let row = |table: &str, i: usize| table.lines().find(|l| l.starts_with(&masters[i].url)).map(str::to_string);
    let other = followers.iter().copied().find(|i| *i != second).expect("a follower");
    // The killed master's listing lapses with its etcd lease (three leader leases).
    let table = wait_for(WAIT, "the killed master no longer listed", || {
        let table = get_masters();
        row(&table, first).is_none().then_some(table)
    });
    assert!(row(&table, second).is_some_and(|r| r.contains("Leader")), "{table}");
    assert!(row(&table, other).is_some_and(|r| r.contains("Follower")), "{table}");

    // A node killed now is handed off by the new leader.
    drop(b);
    wait_for(WAIT, "the instance of the killed node handed off to the other", || {
        let running = running(&masters[second], "s");
        (running.len() == 2 && running.iter().all(|i| i.spec.node == "a")).then_some(())
    });
}

/// A leader frozen past its lease is replaced; when it thaws, its stale view
/// (every node silent for seconds) must not turn into writes: its fence is gone.
#[test]
fn a_paused_leader_writes_nothing_once_another_took_over() {
    let etcd = EtcdCluster::start(3).expect("etcd starts");
    let masters = masters(&etcd, "/paused", 3);
    let first = leader(&masters, &[]);
    let followers: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let _a = join(&masters[followers[0]], "a");
    masters[followers[0]].upload_example("sensor").expect("upload");
    let (status, body) = masters[followers[0]].send_json(Method::POST, "/workloads", &sensor("s", 1)).expect("POST");
    assert_eq!(status, 201, "{body}");
    let before = wait_for(WAIT, "the instance Running", || {
        let running = running(&masters[followers[1]], "s");
        (running.len() == 1).then_some(running)
    });

    let pid = masters[first].pid().expect("the leader runs");
    signal(pid, rustix::process::Signal::STOP);
    let second = leader(&masters, &[first]);
    // Past the lost-after (2 s) as the frozen leader counts: every lease it knows looks expired.
    std::thread::sleep(Duration::from_secs(3));
    signal(pid, rustix::process::Signal::CONT);
    wait_for(WAIT, "the old leader serves as a follower", || (is_leader(&masters[first]) == Some(false)).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(leader(&masters, &[]), second, "the new leader still leads");
    let master = &masters[second];
    let stale: Vec<_> = master.events().into_iter().filter(|e| e.reason == "NodeNotReady" || e.reason == "HandedOff").collect();
    assert!(stale.is_empty(), "the thawed leader wrote nothing: {stale:?}");
    let after = running(master, "s");
    assert_eq!(
        after.iter().map(|i| (&i.metadata.name, i.status.restarts)).collect::<Vec<_>>(),
        before.iter().map(|i| (&i.metadata.name, i.status.restarts)).collect::<Vec<_>>()
    );
    let logs = masters[first].logs.lock().expect("log lock").join("\n");
    assert!(logs.contains("no longer leads the cluster"), "the old leader says it stepped down:\n{logs}");
}

/// A node that joined and reports through a master that does not lead goes
/// silent past its grace period and comes back: it is Ready again as soon as
/// it renews, with the conditions it reported before (the leader takes them
/// from its view, which holds the last report whichever master took it), not
/// only at its next status report (60 s).
#[test]
fn a_node_back_from_silence_through_a_follower_is_ready_at_once() {
    let etcd = EtcdCluster::start(3).expect("etcd starts");
    let masters = masters(&etcd, "/back", 3);
    let first = leader(&masters, &[]);
    let follower = (first + 1) % 3;
    let agent = join(&masters[follower], "quiet");
    let leader_view =
        |ready: bool| masters[first].nodes().into_iter().find(|n| n.metadata.name == "quiet").filter(|n| n.is_ready() == ready);
    let before = wait_for(WAIT, "the node Ready", || leader_view(true));

    agent.freeze();
    wait_for(WAIT, "the node NotReady", || leader_view(false));
    agent.thaw();
    let back = wait_for(Duration::from_secs(15), "the node Ready again before its next status report", || leader_view(true));
    assert!(back.spec.taints.is_empty(), "{:?}", back.spec.taints);
    let conditions = |n: &wasmlet_api::Node| n.status.conditions.iter().map(|c| (c.kind, c.status, c.reason.clone())).collect::<Vec<_>>();
    assert_eq!(conditions(&back), conditions(&before), "the conditions from before the silence");
    let events: Vec<_> = masters[first].events().into_iter().map(|e| e.reason).collect();
    assert!(events.iter().any(|r| r == "NodeNotReady") && events.iter().any(|r| r == "NodeReady"), "{events:?}");
}

/// 200 creates spread over the three masters from eight clients, the leader
/// killed among them; a client whose master fails (no answer, or a 5xx)
/// sends the same create to the next one. Every create answered 2xx exists
/// afterwards with its exact spec, on every master; none was answered 2xx
/// twice; a create retried after its first try committed is answered 409.
#[test]
fn two_hundred_applies_through_three_masters_lose_nothing_when_the_leader_dies() {
    const CREATES: usize = 200;
    let etcd = EtcdCluster::start(3).expect("etcd starts");
    let mut masters = masters(&etcd, "/applies", 3);
    let first = leader(&masters, &[]);
    masters[0].upload_example("sensor").expect("upload");
    let clients: Vec<(String, reqwest::blocking::Client)> = masters
        .iter()
        .map(|m| (m.api("/workloads"), m.client_with(&m.admin_token).timeout(Duration::from_secs(10)).build().expect("client")))
        .collect();
    let clients = std::sync::Arc::new(clients);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (clients, done) = (clients.clone(), done.clone());
            std::thread::spawn(move || {
                let mut answers: Vec<(String, Workload, Vec<u16>)> = Vec::new();
                for i in (worker..CREATES).step_by(8) {
                    let name = format!("w{i:03}");
                    let workload = sensor(&name, (i % 5) as u32 + 1);
                    let mut got = Vec::new();
                    let deadline = Instant::now() + WAIT;
                    let mut at = i % 3;
                    while Instant::now() < deadline {
                        let (url, client) = &clients[at];
                        match client.post(url).json(&workload).send() {
                            Ok(answer) if !answer.status().is_server_error() => {
                                got.push(answer.status().as_u16());
                                break;
                            }
                            Ok(answer) => got.push(answer.status().as_u16()),
                            Err(_) => got.push(0),
                        }
                        at = (at + 1) % 3;
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    answers.push((name, workload, got));
                }
                answers
            })
        })
        .collect();
    wait_for(WAIT, "a quarter of the creates answered", || (done.load(std::sync::atomic::Ordering::Relaxed) >= CREATES / 4).then_some(()));
    masters[first].kill();
    let answers: Vec<(String, Workload, Vec<u16>)> = workers.into_iter().flat_map(|w| w.join().expect("a client thread")).collect();
    assert_eq!(answers.len(), CREATES);
    let second = leader(&masters, &[first]);
    assert_ne!(second, first);
    let retried = answers.iter().filter(|(_, _, got)| got.len() > 1).count();
    eprintln!("{retried} creates were sent to a second master");
    for (name, sent, got) in &answers {
        let created = got.iter().filter(|s| (200..300).contains(*s)).count();
        assert!(created <= 1, "{name} was answered 2xx more than once: {got:?}");
        let last = got.last().copied().unwrap_or(0);
        assert!(
            last == 201 || (last == 409 && got.len() > 1),
            "{name}: every create ends created, or found created by its earlier try: {got:?}"
        );
        for (i, master) in masters.iter().enumerate().filter(|(i, _)| *i != first) {
            let stored: Workload = wait_for(WAIT, &format!("{name} on master {i}"), || master.get_json(&format!("/workloads/{name}")).ok());
            assert_eq!(stored.spec, sent.spec, "{name} has the spec it was created with");
        }
    }
    let listed: wasmlet_api::protocol::List<Workload> = masters[second].get_json("/workloads").expect("list");
    assert_eq!(listed.items.len(), CREATES, "nothing more was created");
}

/// One etcd member down: everything works. Two down: writes are answered
/// 503 naming etcd, reads are answered from the masters' views, the
/// workloads keep running, and no master hands anything off. All is well
/// again once the members return.
#[test]
fn losing_etcd_quorum_stops_writes_and_nothing_else() {
    let mut etcd = EtcdCluster::start(3).expect("etcd starts");
    let masters = masters(&etcd, "/quorum", 3);
    leader(&masters, &[]);
    let agent = join_all(&masters, 0, "a");
    masters[0].upload_example("sensor").expect("upload");
    let (status, body) = masters[1].send_json(Method::POST, "/workloads", &sensor("s", 1)).expect("POST");
    assert_eq!(status, 201, "{body}");
    let before = wait_for(WAIT, "the instance Running", || {
        let running = running(&masters[2], "s");
        (running.len() == 1).then_some(running)
    });

    etcd.kill(0);
    // The others elect a leader among themselves (etcd answers nothing meanwhile), then all works.
    etcd.wait_healthy(1).expect("etcd has a leader again");
    for (i, master) in masters.iter().enumerate() {
        let (status, body) = master.send_json(Method::POST, "/workloads", &sensor(&format!("one-down-{i}"), 1)).expect("an answer");
        assert_eq!(status, 201, "a create with one etcd member down: {body}");
    }

    etcd.kill(1);
    let (status, body) = masters[2].send_json(Method::POST, "/workloads", &sensor("two-down", 1)).expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("etcd"), "the answer names etcd: {body}");
    for master in &masters {
        let listed: wasmlet_api::protocol::List<Workload> = master.get_json("/workloads").expect("reads are answered");
        assert!(listed.items.iter().any(|w| w.metadata.name == "s"), "{listed:?}");
    }
    // Past the lost-after (2 s): nothing is handed off, the node keeps running it.
    std::thread::sleep(Duration::from_secs(4));
    let own: serde_json::Value = agent
        .client_builder()
        .build()
        .expect("client")
        .get(agent.url("/instances"))
        .send()
        .expect("the agent answers")
        .json()
        .expect("JSON");
    assert!(own.to_string().contains(&before[0].metadata.name), "the agent still runs its instance: {own}");

    etcd.restart(0).expect("member 0 starts again");
    etcd.restart(1).expect("member 1 starts again");
    etcd.wait_healthy(0).expect("healthy");
    etcd.wait_healthy(1).expect("healthy");
    wait_for(WAIT, "a create once the members are back", || {
        let (status, _) = masters[2].send_json(Method::POST, "/workloads", &sensor("back", 1)).ok()?;
        (status == 201).then_some(())
    });
    leader(&masters, &[]);
    std::thread::sleep(Duration::from_secs(3));
    let master = &masters[2];
    let moved: Vec<_> = master.events().into_iter().filter(|e| e.reason == "NodeNotReady" || e.reason == "HandedOff").collect();
    assert!(moved.is_empty(), "nothing went NotReady or was handed off: {moved:?}");
    let after = running(master, "s");
    assert_eq!(
        after.iter().map(|i| (&i.metadata.name, i.status.restarts)).collect::<Vec<_>>(),
        before.iter().map(|i| (&i.metadata.name, i.status.restarts)).collect::<Vec<_>>()
    );
}

/// Runs the CLI with `set` in its environment and `unset` not, as a user would;
/// asserts it succeeds and returns what it printed.
fn cli(args: &[&str], set: (&str, &std::path::Path), unset: &str) -> String {
    let out = std::process::Command::new(wasmlet_tests::bin("wasmlet"))
        .args(args)
        .env(set.0, set.1)
        .env("NO_COLOR", "1")
        .env_remove(unset)
        .output()
        .expect("wasmlet runs");
    assert!(out.status.success(), "wasmlet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first of 20 free ports in a row on loopback.
fn free_range() -> u16 {
    // Below Linux's ephemeral ports (32768 and up), which the kernel hands to other tests' listeners and connections meanwhile.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) ^ std::process::id();
    for attempt in 0..50u32 {
        let base = 20_000 + ((seed.wrapping_add(attempt.wrapping_mul(7919)) % 600) * 20) as u16;
        let free = (base..base + 20).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no 20 free ports in a row");
}

/// `make run-ha` as a user runs it: three etcd members, three masters, two
/// agents, the examples applied; the CLI's context lists the masters, one leads.
#[test]
fn make_run_ha_starts_three_masters_on_etcd_and_the_examples() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/run-ha.sh");
    let mut child = std::process::Command::new("bash")
        .arg(script)
        .arg(wasmlet_tests::bin_dir())
        .arg(dir.path().join(".run"))
        .env("WASMLET_RUN_HA_PORT", free_range().to_string())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env_remove("WASMLET_CONFIG")
        .env_remove("WASMLETCONFIG")
        .env_remove("WASMLET_MASTER")
        .current_dir(dir.path())
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("run-ha.log")).expect("log file"))
        .spawn()
        .expect("start run-ha.sh");
    let stdout = child.stdout.take().expect("stdout");
    let _running = wasmlet_tests::ProcessGroup(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("wasmlet is running with three masters") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        let log = std::fs::read_to_string(dir.path().join("run-ha.log")).unwrap_or_default();
        panic!("make run-ha's script did not report the cluster running; its log:\n{log}");
    }
    let config_home = dir.path().join("config");
    let wasmlet = |args: &[&str]| cli(args, ("XDG_CONFIG_HOME", &config_home), "WASMLETCONFIG");
    let masters = wasmlet(&["get", "masters"]);
    assert_eq!(masters.lines().filter(|l| l.contains("https://127.0.0.1:")).count(), 3, "{masters}");
    assert_eq!(masters.matches("Leader").count(), 1, "{masters}");
    let nodes = wasmlet(&["get", "nodes"]);
    assert_eq!(nodes.matches(" Ready").count(), 2, "{nodes}");
    let instances = wasmlet(&["get", "instances"]);
    assert!(instances.lines().any(|l| l.starts_with("sensor-") && l.contains("Running")), "{instances}");
}

/// A backup of masters on etcd holds their objects and the modules another
/// master took, and restores into a master on its own; `restore` refuses to
/// write into an etcd-backed master's data dir (etcd has its own snapshots).
#[test]
fn a_backup_of_masters_on_etcd_restores_into_a_master_on_its_own() {
    let etcd = EtcdCluster::start(1).expect("etcd starts");
    let masters = masters(&etcd, "/backup", 2);
    masters[1].upload_example("sensor").expect("upload");
    let (status, body) = masters[1].send_json(Method::POST, "/workloads", &sensor("kept", 0)).expect("POST");
    assert_eq!(status, 201, "{body}");
    let work = tempfile::tempdir().expect("dir");
    let file = work.path().join("cluster.backup");
    // Through the master that never took the module: it fetches it from etcd.
    let out = masters[0].command(&["backup", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 modules"), "{}", String::from_utf8_lossy(&out.stdout));

    let restore = |dir: &std::path::Path, extra: &[&str]| {
        let mut command = std::process::Command::new(wasmlet_tests::bin("wasmlet-master"));
        command
            .arg("--data-dir")
            .arg(dir)
            .args(["restore", file.to_str().expect("utf-8")])
            .args(extra)
            .env_remove("WASMLET_CONFIG")
            .env_remove("WASMLETCONFIG");
        wasmlet_tests::run_to_exit(command, WAIT).expect("restore ends")
    };
    let refused = restore(work.path().join("etcd-master").as_path(), &["--store", "etcd", "--etcd-endpoints", &etcd.endpoints()]);
    assert!(!refused.status.success() && refused.stderr.contains("etcdctl snapshot"), "{}", refused.stderr);
    let alone = Master::start(&[]).expect("a master on its own");
    let dir = alone.data_dir.path().to_path_buf();
    drop(alone);
    let restored = restore(&dir, &["--force"]);
    assert!(restored.status.success(), "{}", restored.stderr);
    assert!(dir.join("modules").join(wasmlet_tests::example("sensor").1.trim_start_matches("sha256:")).is_file(), "the module is restored");
}

/// Masters reach etcd over mutual TLS with `--etcd-ca-file`,
/// `--etcd-cert-file` and `--etcd-key-file`; without a client certificate
/// etcd refuses them, and the master says so and stops.
#[test]
fn masters_reach_etcd_over_mutual_tls() {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose};
    let dir = tempfile::tempdir().expect("dir");
    let ca = wasmlet_tests::test_ca::TestCa::new();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let (cert, key) = ca.sign(leaf);
    let tls = wasmlet_tests::EtcdTls { ca: dir.path().join("ca.crt"), cert: dir.path().join("etcd.crt"), key: dir.path().join("etcd.key") };
    std::fs::write(&tls.ca, &ca.pem).expect("write");
    std::fs::write(&tls.cert, cert.pem()).expect("write");
    std::fs::write(&tls.key, key.serialize_pem()).expect("write");
    let etcd = EtcdCluster::start_with(1, Some(tls.clone())).expect("etcd starts");
    let endpoints = etcd.endpoints();
    assert!(endpoints.starts_with("https://"), "{endpoints}");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let (ca, cert, key) = (path(&tls.ca), path(&tls.cert), path(&tls.key));
    let master = Master::start(&[
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--etcd-ca-file",
        &ca,
        "--etcd-cert-file",
        &cert,
        "--etcd-key-file",
        &key,
    ])
    .expect("a master on etcd over TLS starts");
    master.upload_example("sensor").expect("upload");
    let (status, body) = master.send_json(Method::POST, "/workloads", &sensor("s", 0)).expect("POST");
    assert_eq!(status, 201, "{body}");

    let refused = |args: &[&str]| {
        let mut command = std::process::Command::new(wasmlet_tests::bin("wasmlet-master"));
        command.arg("--data-dir").arg(dir.path().join("other")).args(["--listen", "127.0.0.1:0", "--store", "etcd"]).args(args);
        command.env_remove("WASMLET_CONFIG").env_remove("WASMLETCONFIG");
        wasmlet_tests::run_to_exit(command, WAIT).expect("the master stops")
    };
    let no_certificate = refused(&["--etcd-endpoints", &endpoints, "--etcd-ca-file", &ca]);
    assert!(!no_certificate.status.success() && no_certificate.stderr.contains("etcd"), "{}", no_certificate.stderr);
    let no_ca = refused(&["--etcd-endpoints", &endpoints]);
    assert!(!no_ca.status.success() && no_ca.stderr.contains("--etcd-ca-file"), "{}", no_ca.stderr);
    let half = refused(&["--etcd-endpoints", &endpoints, "--etcd-ca-file", &ca, "--etcd-cert-file", &cert]);
    assert!(!half.status.success() && half.stderr.contains("--etcd-key-file"), "{}", half.stderr);
}

/// A leader stopped with SIGTERM gives the leadership up at once (well
/// before its lease would expire); every master's admin token works on every
/// master; a data dir with a CA of another cluster is refused.
#[test]
fn a_stopped_leader_hands_over_at_once_and_the_masters_share_ca_and_tokens() {
    let etcd = EtcdCluster::start(1).expect("etcd starts");
    let endpoints = etcd.endpoints();
    let args = ["--store", "etcd", "--etcd-endpoints", endpoints.as_str(), "--etcd-prefix", "/handover", "--leader-lease", "20s"];
    let mut masters: Vec<Master> = (0..2).map(|_| Master::start(&args).expect("a master starts")).collect();
    for (i, master) in masters.iter().enumerate() {
        let other = &masters[1 - i];
        let answer = master.client_with(&other.admin_token).build().expect("client").get(master.api("/workloads")).send().expect("answer");
        assert_eq!(answer.status(), 200, "master {i} takes the admin token of the other");
    }
    let first = leader(&masters, &[]);
    let stopped_at = Instant::now();
    masters[first].stop().expect("the leader stops");
    leader(&masters, &[first]);
    assert!(stopped_at.elapsed() < Duration::from_secs(10), "taken over in {:?}, not after the 20 s lease", stopped_at.elapsed());

    // A master whose data dir holds another cluster's CA does not join this one.
    let mut stranger = Master::start(&[]).expect("a master on its own");
    stranger.stop().expect("stops");
    let dir = stranger.data_dir.path().to_path_buf();
    let mut command = std::process::Command::new(wasmlet_tests::bin("wasmlet-master"));
    command.arg("--data-dir").arg(&dir).args(["--listen", "127.0.0.1:0"]).args(args);
    command.env_remove("WASMLET_CONFIG").env_remove("WASMLETCONFIG");
    let refused = wasmlet_tests::run_to_exit(command, WAIT).expect("the master stops");
    assert!(!refused.status.success() && refused.stderr.contains("not this cluster's"), "{}", refused.stderr);
}

/// etcd takes at most 128 operations in a transaction: a workload whose
/// placement, or deletion, is more than that is placed, runs and is deleted
/// all the same, in pieces.
#[test]
fn a_workload_larger_than_one_etcd_transaction_is_placed_and_deleted() {
    const REPLICAS: usize = 150;
    let etcd = EtcdCluster::start(1).expect("etcd starts");
    let masters = masters(&etcd, "/large", 1);
    let master = &masters[0];
    let _agents: Vec<Agent> = ["a", "b", "c"].iter().map(|name| join_all(&masters, 0, name)).collect();
    master.upload_example("sensor").expect("upload");
    let text = workload_manifest("many", "sensor", "daemon", &format!("  replicas: {REPLICAS}\n  args: [\"--interval\", \"60000\"]\n"));
    let many: Workload = wasmlet_api::from_yaml(&text).expect("manifest");
    let (status, body) = master.send_json(Method::POST, "/workloads", &many).expect("POST");
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + WAIT;
    while running(master, "many").len() < REPLICAS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut phases = std::collections::BTreeMap::new();
    for i in master.instances() {
        *phases.entry(format!("{:?} {}", i.status.phase, i.spec.node)).or_insert(0) += 1;
    }
    let logs: Vec<String> =
        master.logs.lock().expect("log lock").iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(10).cloned().collect();
    assert_eq!(running(master, "many").len(), REPLICAS, "{phases:?}\n{}", logs.join("\n"));
    let (status, body) = master.send_json(Method::DELETE, "/workloads/many", &serde_json::json!({})).expect("DELETE");
    assert_eq!(status, 200, "{body}");
    wait_for(WAIT, "every instance gone", || master.instances().is_empty().then_some(()));
}

/// A TCP proxy on loopback to `target`; `cut` closes every connection and
/// refuses new ones until `mend`.
struct Proxy {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, kept) = (open.clone(), connections.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = std::net::TcpStream::connect(target) else { continue };
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                for (mut from, mut to) in [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())]
                    .into_iter()
                    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                kept.lock().expect("lock").extend([client, server]);
            }
        });
        Proxy { port, open, connections }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().expect("lock").drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
    }

    fn mend(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A master cut off from etcd while the history it would resume from is
/// compacted away loads the store again when it is back, and serves what
/// was written meanwhile.
#[test]
fn a_master_behind_a_compaction_loads_the_store_again() {
    let etcd = EtcdCluster::start(1).expect("etcd starts");
    let endpoint = etcd.endpoints();
    let target: std::net::SocketAddr = endpoint.trim_start_matches("http://").parse().expect("an address");
    let proxy = Proxy::start(target);
    let near = Master::start(&["--store", "etcd", "--etcd-endpoints", &endpoint, "--etcd-prefix", "/behind"]).expect("a master");
    let far_endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let far = Master::start(&["--store", "etcd", "--etcd-endpoints", &far_endpoint, "--etcd-prefix", "/behind"]).expect("a master");
    near.upload_example("sensor").expect("upload");
    proxy.cut();
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        let (status, body) = near.send_json(Method::POST, "/workloads", &sensor(&format!("w{i}"), 0)).expect("POST");
        assert_eq!(status, 201, "{body}");
    }
    let client = reqwest::blocking::Client::new();
    let range: serde_json::Value = client
        .post(format!("{endpoint}/v3/kv/range"))
        .json(&serde_json::json!({"key": "AA=="}))
        .send()
        .expect("etcd")
        .json()
        .expect("JSON");
    let revision = range["header"]["revision"].as_str().expect("a revision").to_string();
    let compacted =
        client.post(format!("{endpoint}/v3/kv/compaction")).json(&serde_json::json!({"revision": revision})).send().expect("etcd");
    assert!(compacted.status().is_success(), "{:?}", compacted.text());
    proxy.mend();
    wait_for(WAIT, "the far master serves what was written while it was cut off", || far.get_json::<Workload>("/workloads/w4").ok());
    let logs = far.logs.lock().expect("log lock").join("\n");
    assert!(logs.contains("loading everything again"), "it loaded the store again:\n{logs}");
}

/// Whoever writes into etcd could swap a module's bytes: a master that
/// fetches a module checks them against the digest, refuses a damaged one
/// (saying so), keeps nothing of it and runs nothing from it.
#[test]
fn a_module_damaged_in_etcd_is_refused_by_the_master_that_fetches_it() {
    let etcd = EtcdCluster::start(1).expect("etcd starts");
    let masters = masters(&etcd, "/damaged", 2);
    let digest = masters[0].upload_example("sensor").expect("upload");
    let hex = digest.trim_start_matches("sha256:").to_string();
    let b64 = |s: &[u8]| {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        s.chunks(3)
            .flat_map(|c| {
                let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
                (0..4).map(move |i| if i <= c.len() { A[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' })
            })
            .collect::<String>()
    };
    let chunk = format!("/damaged/modules/{hex}/000000");
    let put = reqwest::blocking::Client::new()
        .post(format!("{}/v3/kv/put", etcd.endpoints()))
        .json(&serde_json::json!({"key": b64(chunk.as_bytes()), "value": b64(b"\0asm\x01\0\0\0 not the uploaded module")}))
        .send()
        .expect("etcd answers");
    assert!(put.status().is_success());
    // The other master never had the module: it fetches it from etcd.
    let (status, body) = masters[1].send_json(Method::POST, "/workloads", &sensor("s", 1)).expect("POST");
    assert!(status >= 400 && body.contains("damaged"), "{status}: {body}");
    assert!(!masters[1].data_dir.path().join("modules").join(&hex).exists(), "nothing of it is kept");
    let download = masters[1].client().get(masters[1].api(&format!("/modules/{digest}"))).send().expect("an answer");
    assert!(!download.status().is_success(), "not served: {}", download.status());
}
