//! Rollouts with a master and three agents: a gray release through every
//! ingress (its share, the canary header, the end), a bad release rolled back
//! by its error-rate gate while the old version keeps answering, a crashing
//! daemon stopped after its first wave, pause/resume/undo from the CLI, and a
//! master killed in the middle of a canary.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::blocking::Client;
use wasmlet_api::{Phase, Rollout, RolloutPhase, Workload};
use wasmlet_tests::{Agent, Master, wait_for, workload_manifest};

use crate::cli::{stderr, stdout, wasmlet};
use crate::identity::{WAIT, join, wait_ready};

/// A master and agents a, b and c (labels `ring=1`, `2`, `3`), all Ready.
fn cluster() -> (Master, Vec<Agent>) {
    let master = Master::start(&[]).expect("master starts");
    let agents: Vec<Agent> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| join(&master, name, &master.join_token, &["--labels", &format!("ring={}", i + 1)]))
        .collect();
    for name in ["a", "b", "c"] {
        wait_ready(&master, name);
    }
    (master, agents)
}

/// The `http-version` service `web` at `version`, answering 500 to `fail_percent` of its requests.
pub fn web(version: u32, fail_percent: u32, replicas: u32, rollout: &str) -> Workload {
    let extra = format!(
        "  replicas: {replicas}\n  route: {{pathPrefix: /v}}\n  env: {{VERSION: \"{version}\", FAIL_PERCENT: \"{fail_percent}\"}}\n  rollout:\n{rollout}"
    );
    wasmlet_api::from_yaml(&workload_manifest("web", "http-version", "service", &extra)).expect("manifest")
}

/// Creates the workload, or replaces it (as `wasmlet apply` does).
pub fn apply(master: &Master, workload: &Workload) {
    let name = &workload.metadata.name;
    let exists = master.get_json::<Workload>(&format!("/workloads/{name}")).is_ok();
    let (method, path, expected) =
        if exists { (Method::PUT, format!("/workloads/{name}"), 200) } else { (Method::POST, "/workloads".to_string(), 201) };
    let (status, body) = master.send_json(method, &path, workload).expect("apply");
    assert_eq!(status, expected, "{body}");
}

fn rollout(master: &Master, name: &str) -> Rollout {
    master.get_json(&format!("/workloads/{name}/rollout")).expect("the rollout")
}

fn wait_rollout(master: &Master, name: &str, what: &str, check: impl Fn(&Rollout) -> bool) -> Rollout {
    wait_for(WAIT, what, || Some(rollout(master, name)).filter(|r| check(r)))
}

fn running(master: &Master, workload: &str) -> Vec<wasmlet_api::Instance> {
    master.instances().into_iter().filter(|i| i.spec.workload == workload && i.status.phase == Phase::Running).collect()
}

/// `wasmlet ARGS` as admin; its stdout, or the test fails with its stderr.
fn cli_ok(master: &Master, args: &[&str]) -> String {
    let out = wasmlet(master, args);
    assert!(out.status.success(), "wasmlet {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn http() -> Client {
    Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(4).build().expect("client")
}

/// One answer of the service: when it came, its status, and the version that gave it (0: none).
#[derive(Debug, Clone)]
struct Answer {
    at: Instant,
    wall: chrono::DateTime<chrono::Utc>,
    status: u16,
    version: u32,
}

fn ask(client: &Client, ingress: &str, header: Option<(&str, &str)>) -> Answer {
    let mut request = client.get(format!("{ingress}/v"));
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let (status, body) = match request.send() {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    let version = body.split_whitespace().nth(1).and_then(|v| v.parse().ok()).filter(|_| body.starts_with("version ")).unwrap_or(0);
    Answer { at: Instant::now(), wall: chrono::Utc::now(), status, version }
}

/// `count` requests spread evenly over `ingresses` by four clients.
fn spread(ingresses: &[String], count: usize, header: Option<(&str, &str)>) -> Vec<Answer> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                scope.spawn(move || {
                    let client = http();
                    (w..count).step_by(4).map(|i| ask(&client, &ingresses[i % ingresses.len()], header)).collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a client")).collect()
    })
}

fn share_of(answers: &[Answer], version: u32) -> f64 {
    answers.iter().filter(|a| a.version == version).count() as f64 * 100.0 / answers.len() as f64
}

#[test]
fn a_canary_gets_its_share_on_every_ingress_then_everything() {
    let (master, agents) = cluster();
    let ingresses: Vec<String> = agents.iter().map(|a| a.ingress.clone()).collect();
    master.upload_example("http-version").expect("upload");
    let steps = "    strategy: Canary\n    canaryHeader: \"x-canary: always\"\n    steps:\n    - {weight: 10, hold: 2s}\n    - {weight: 50, hold: 2s}\n";
    apply(&master, &web(1, 0, 3, steps));
    wait_for(WAIT, "three instances of version 1", || (running(&master, "web").len() == 3).then_some(()));
    let v1: BTreeSet<String> = running(&master, "web").into_iter().map(|i| i.metadata.name).collect();

    // Version 2, held at its first step.
    apply(&master, &web(2, 0, 3, steps));
    let paused = cli_ok(&master, &["rollout", "pause", "web"]);
    assert!(paused.contains("workload/web rollout paused: revision 2"), "{paused}");
    // Every ingress knows the split once the header reaches version 2 through each of them.
    for ingress in &ingresses {
        wait_for(WAIT, "the canary through every ingress", || {
            (ask(&http(), ingress, Some(("x-canary", "always"))).version == 2).then_some(())
        });
    }
    let answers = spread(&ingresses, 2_000, None);
    assert!(answers.iter().all(|a| a.status == 200), "every request answered: {:?}", answers.iter().find(|a| a.status != 200));
    let share = share_of(&answers, 2);
    assert!((7.0..=13.0).contains(&share), "version 2 got {share:.1}% of 2,000 requests at the 10% step");
    println!("{{\"figure\":\"canary_share\",\"weight\":10,\"requests\":2000,\"share\":{share:.2}}}");
    let pinned = spread(&ingresses, 90, Some(("x-canary", "always")));
    assert_eq!(share_of(&pinned, 2), 100.0, "the canary header pins every request to version 2");
    let other_value = spread(&ingresses, 30, Some(("x-canary", "never")));
    assert!(share_of(&other_value, 2) < 50.0, "another value of the header pins nothing");
    // The header ingresses tell each other the chosen revision with is not the public's to set.
    let forged = spread(&ingresses, 60, Some(("x-wasmlet-revision", "new")));
    assert!(share_of(&forged, 2) < 50.0, "a forged revision header picks nothing: {:.0}%", share_of(&forged, 2));
    // The previous version kept all its instances; the canary has one.
    let now: Vec<String> = running(&master, "web").into_iter().map(|i| i.metadata.name).collect();
    assert_eq!(now.len(), 4, "three of version 1 and one canary: {now:?}");
    assert!(v1.iter().all(|n| now.contains(n)), "version 1's instances stay during the canary");

    // Paused: past the hold, still at step 1.
    std::thread::sleep(Duration::from_secs(3));
    let status = cli_ok(&master, &["rollout", "status", "web"]);
    assert!(status.contains("Canary, Paused"), "{status}");
    assert!(status.contains("10% to revision 2, 90% to revision 1"), "{status}");
    assert_eq!(rollout(&master, "web").status.step, 0, "a paused rollout does not move on");

    let resumed = cli_ok(&master, &["rollout", "resume", "web"]);
    assert!(resumed.contains("rollout resumed"), "{resumed}");
    let done = wait_rollout(&master, "web", "the rollout to complete", |r| r.status.phase == RolloutPhase::Complete);
    assert_eq!(done.status.revision, 2);
    let outcomes: Vec<(u64, &str)> = done.status.history.iter().map(|r| (r.revision, r.outcome.as_str())).collect();
    assert_eq!(outcomes, [(1, "Complete"), (2, "Complete")]);
    let events: Vec<String> =
        master.events().into_iter().filter(|e| e.involved_object.name == "web").map(|e| format!("{} {}", e.reason, e.message)).collect();
    assert!(events.iter().any(|e| e.starts_with("RolloutStep") && e.contains("50% of the requests")), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with("RolloutComplete")), "{events:?}");
    wait_for(WAIT, "version 1's instances gone", || {
        let now = running(&master, "web");
        (now.len() == 3 && now.iter().all(|i| !v1.contains(&i.metadata.name))).then_some(())
    });
    let after = spread(&ingresses, 300, None);
    assert_eq!(share_of(&after, 2), 100.0, "after the last step every request goes to version 2");
    let described = cli_ok(&master, &["describe", "workload", "web"]);
    for needle in ["Revision:", "Canary, Complete", "History:", "sha256:"] {
        assert!(described.contains(needle), "describe shows {needle}:\n{described}");
    }
}

#[test]
fn a_release_that_fails_half_its_requests_is_rolled_back_and_the_old_version_never_fails() {
    let (master, agents) = cluster();
    let ingresses: Vec<String> = agents.iter().map(|a| a.ingress.clone()).collect();
    master.upload_example("http-version").expect("upload");
    let steps = "    strategy: Canary\n    steps:\n    - {weight: 20, hold: 10m}\n    gates: {maxErrorRate: 5%, minRequests: 20}\n";
    apply(&master, &web(1, 0, 2, steps));
    wait_for(WAIT, "two instances of version 1", || (running(&master, "web").len() == 2).then_some(()));

    // Traffic all along, from four clients over the three ingresses.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|w| {
                let (stop, ingresses) = (stop.clone(), &ingresses);
                scope.spawn(move || {
                    let client = http();
                    let mut seen = Vec::new();
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        seen.push(ask(&client, &ingresses[i % ingresses.len()], None));
                        i += 1;
                    }
                    seen
                })
            })
            .collect();
        let started = Instant::now();
        apply(&master, &web(2, 50, 2, steps));
        let rolled_back = wait_rollout(&master, "web", "the rollback", |r| r.status.phase == RolloutPhase::RolledBack);
        let noticed = Instant::now();
        // A while more, to see that version 2 answers no more.
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let answers: Vec<Answer> = clients.into_iter().flat_map(|c| c.join().expect("a client")).collect();
        (answers, rolled_back, started, noticed)
    });
    let (answers, rolled_back, started, noticed) = answers;

    let new: Vec<&Answer> = answers.iter().filter(|a| a.version == 2).collect();
    assert!(!new.is_empty(), "version 2 got some of the requests before it was rolled back");
    let old: Vec<&Answer> = answers.iter().filter(|a| a.version == 1).collect();
    assert!(old.len() > 100, "version 1 answered throughout ({} answers)", old.len());
    assert!(old.iter().all(|a| a.status == 200), "no request that reached version 1 failed");
    let unanswered = answers.iter().filter(|a| a.version == 0).count();

    let message = &rolled_back.status.message;
    assert!(message.contains("gate maxErrorRate failed"), "{message}");
    assert!(message.contains("% of the new revision's answers were server errors"), "{message}");
    let event = wait_for(WAIT, "the rollback's event", || {
        master.events().into_iter().find(|e| e.reason == "RolloutRolledBack" && e.involved_object.name == "web")
    });
    assert!(
        event.message.contains("maxErrorRate") && event.message.contains('%'),
        "the event names the gate and the rate: {}",
        event.message
    );
    let history: Vec<(u64, &str)> = rolled_back.status.history.iter().map(|r| (r.revision, r.outcome.as_str())).collect();
    assert_eq!(history, [(1, "Complete"), (2, "RolledBack"), (1, "Complete")]);
    let workload: Workload = master.get_json("/workloads/web").expect("the workload");
    assert_eq!(workload.spec.env.get("VERSION").map(String::as_str), Some("1"), "the workload is back on version 1");
    wait_for(WAIT, "version 2's instance gone", || (running(&master, "web").len() == 2).then_some(()));

    let last_new = new.iter().max_by_key(|a| a.at).expect("an answer of version 2");
    let first_new = new.iter().min_by_key(|a| a.at).expect("an answer of version 2");
    assert!(last_new.at <= noticed + Duration::from_millis(500), "version 2 stopped answering once rolled back");
    // The figure: from the gate's failure (the master's event, same clock) to the last answer of version 2.
    let gate_to_last_ms = (last_new.wall - event.time).num_milliseconds();
    println!(
        "{{\"figure\":\"rollback\",\"answers\":{},\"new_answers\":{},\"unanswered\":{unanswered},\"first_new_to_gate_failed_ms\":{},\"gate_failed_to_last_new_answer_ms\":{gate_to_last_ms},\"apply_to_rollback_seen_ms\":{}}}",
        answers.len(),
        new.len(),
        (event.time - first_new.wall).num_milliseconds(),
        noticed.duration_since(started).as_millis(),
    );
}

#[test]
fn a_daemon_that_crashes_is_stopped_after_its_first_wave_and_rolled_back_there() {
    let (master, agents) = cluster();
    master.upload_example("sensor").expect("upload");
    master.upload_example("crasher").expect("upload");
    let waves = "  placement: everyNode\n  rollout:\n    strategy: Waves\n    orderBy: ring\n    waves:\n    - {nodes: 1, hold: 3s}\n    - {nodes: 1, hold: 3s}\n    gates: {maxRestarts: 0}\n";
    let sensor: Workload =
        wasmlet_api::from_yaml(&workload_manifest("probe", "sensor", "daemon", &format!("  args: [\"--interval\", \"100\"]\n{waves}")))
            .expect("manifest");
    apply(&master, &sensor);
    let before: BTreeMap<String, String> = wait_for(WAIT, "a sensor on every node", || {
        let now = running(&master, "probe");
        (now.len() == 3).then(|| now.into_iter().map(|i| (i.spec.node, i.metadata.name)).collect())
    });

    let fetched = |part: &str| agents[0].metric(&format!("wasmlet_module_cache_misses_total{{part=\"{part}\"}}")).unwrap_or(0.0);
    let (modules_before, compiled_before) = (fetched("module"), fetched("compiled"));
    let crasher: Workload =
        wasmlet_api::from_yaml(&workload_manifest("probe", "crasher", "daemon", &format!("  args: [\"--after-ms\", \"200\"]\n{waves}")))
            .expect("manifest");
    apply(&master, &crasher);
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let rolled_back = wait_for(WAIT, "the rollback", || {
        for i in master.instances().into_iter().filter(|i| i.spec.workload == "probe") {
            seen.insert((i.spec.node, i.metadata.name));
        }
        Some(rollout(&master, "probe")).filter(|r| r.status.phase == RolloutPhase::RolledBack)
    });
    let message = &rolled_back.status.message;
    assert!(message.contains("gate maxRestarts failed") || message.contains("gate crashLoop failed"), "{message}");
    let touched: BTreeSet<&str> =
        seen.iter().filter(|(node, name)| before.get(node) != Some(name)).map(|(node, _)| node.as_str()).collect();
    assert_eq!(touched, BTreeSet::from(["a"]), "only the first wave's node (ring 1) got the new version");
    // Back on the sensor everywhere: b and c never changed, a runs the sensor again.
    let after = wait_for(WAIT, "the sensor on a again", || {
        let now = running(&master, "probe");
        (now.len() == 3 && master.instances().iter().filter(|i| i.spec.workload == "probe").count() == 3).then_some(now)
    });
    for instance in &after {
        let node = &instance.spec.node;
        if node == "a" {
            assert_ne!(before.get(node), Some(&instance.metadata.name), "a runs a new sensor instance");
        } else {
            assert_eq!(before.get(node), Some(&instance.metadata.name), "{node} kept its instance");
            assert_eq!(instance.status.restarts, 0, "{node}'s instance never restarted");
        }
    }
    let workload: Workload = master.get_json("/workloads/probe").expect("the workload");
    assert_eq!(workload.spec.module.digest, sensor.spec.module.digest, "the workload is back on the sensor");
    // Node a fetched and compiled the new module only: the sensor came back from its module cache.
    assert_eq!((fetched("module"), fetched("compiled")), (modules_before + 1.0, compiled_before + 1.0), "a's module cache misses");
    let status = cli_ok(&master, &["rollout", "status", "probe"]);
    assert!(status.contains("RolledBack"), "{status}");
}

#[test]
fn a_canary_goes_on_from_its_step_after_the_master_is_killed_and_undo_goes_back() {
    let (mut master, agents) = cluster();
    let ingresses: Vec<String> = agents.iter().map(|a| a.ingress.clone()).collect();
    master.upload_example("http-version").expect("upload");
    let steps = "    strategy: Canary\n    steps:\n    - {weight: 10, hold: 1s}\n    - {weight: 50, hold: 6s}\n";
    apply(&master, &web(1, 0, 2, steps));
    wait_for(WAIT, "two instances of version 1", || (running(&master, "web").len() == 2).then_some(()));
    apply(&master, &web(2, 0, 2, steps));
    let at_50 = wait_rollout(&master, "web", "the 50% step", |r| r.status.step == 1 && r.status.step_ready_at.is_some());
    assert_eq!(at_50.status.weight, 50);

    master.kill();
    master.restart().expect("the master starts again");
    let resumed = rollout(&master, "web");
    assert_eq!((resumed.status.revision, resumed.status.step), (2, 1), "the restarted master is at the step it was: {:?}", resumed.status);
    assert_eq!(resumed.status.phase, RolloutPhase::Progressing);
    let done = wait_rollout(&master, "web", "the rollout to complete", |r| r.status.phase == RolloutPhase::Complete);
    assert_eq!(done.status.step, 2, "it completed from the step it was at");
    let events: Vec<String> = master.events().into_iter().filter(|e| e.reason == "RolloutStep").map(|e| e.message).collect();
    assert_eq!(events.len(), 2, "two steps, each taken once: {events:?}");
    wait_for(WAIT, "every request to version 2", || (share_of(&spread(&ingresses, 30, None), 2) == 100.0).then_some(()));

    // Undo after the rollout: revision 1's spec again, as revision 3.
    let undone = cli_ok(&master, &["rollout", "undo", "web"]);
    assert!(undone.contains("rollout undone: revision 3"), "{undone}");
    let workload: Workload = master.get_json("/workloads/web").expect("the workload");
    assert_eq!(workload.spec.env.get("VERSION").map(String::as_str), Some("1"));
    wait_for(WAIT, "every request to version 1", || (share_of(&spread(&ingresses, 30, None), 1) == 100.0).then_some(()));

    // Undo during a rollout: back at once. Pause and resume refuse when nothing is under way.
    apply(&master, &web(4, 0, 2, "    strategy: Canary\n    steps:\n    - {weight: 10, hold: 10m}\n"));
    wait_rollout(&master, "web", "the new rollout", |r| r.status.phase == RolloutPhase::Progressing);
    let undone = cli_ok(&master, &["rollout", "undo", "web"]);
    assert!(undone.contains("rolled back to revision 3"), "{undone}");
    let refused = wasmlet(&master, &["rollout", "resume", "web"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("no rollout under way to resume"), "{}", stderr(&refused));
    // A viewer reads the rollout, and may not steer it.
    let out = master.command(&["token", "create", "--role", "viewer", "--ttl", "1h"]);
    let viewer = String::from_utf8_lossy(&out.stdout).lines().next().expect("token").to_string();
    let as_viewer = master.client_with(&viewer).build().expect("client");
    assert_eq!(as_viewer.get(master.api("/workloads/web/rollout")).send().expect("answer").status().as_u16(), 200);
    let forged = as_viewer.post(master.api("/workloads/web/rollout/undo")).send().expect("answer");
    assert_eq!(forged.status().as_u16(), 403, "a viewer cannot undo");
}

#[test]
fn a_job_on_every_node_runs_once_per_node_and_revision_wave_by_wave() {
    let (master, _agents) = cluster();
    master.upload_example("exit-code").expect("upload");
    let job = |code: &str| -> Workload {
        let extra = format!(
            "  args: [\"{code}\"]\n  placement: everyNode\n  rollout:\n    strategy: Waves\n    orderBy: ring\n    waves:\n    - {{nodes: 1, hold: 1s}}\n"
        );
        wasmlet_api::from_yaml(&workload_manifest("once", "exit-code", "job", &extra)).expect("manifest")
    };
    let succeeded = || master.instances().iter().filter(|i| i.spec.workload == "once" && i.status.phase == Phase::Succeeded).count();
    apply(&master, &job("0"));
    wait_for(WAIT, "the job done on every node", || (succeeded() == 3).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(master.instances().iter().filter(|i| i.spec.workload == "once").count(), 3, "a finished job does not run again");

    // Another revision, wave by wave: once per node again, then done.
    let first_wave = Instant::now();
    apply(&master, &job("00"));
    let done =
        wait_rollout(&master, "once", "the waves to complete", |r| r.status.phase == RolloutPhase::Complete && r.status.revision == 2);
    assert!(first_wave.elapsed() >= Duration::from_secs(1), "the first wave was held");
    assert_eq!(done.status.history.last().map(|r| r.outcome.as_str()), Some("Complete"));
    // Finished runs are kept, as a job's are: one per node and revision.
    wait_for(WAIT, "one finished run per node of revision 2", || (succeeded() == 6).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(master.instances().iter().filter(|i| i.spec.workload == "once").count(), 6, "nor does the new revision's");
}

/// A rollout record the master cannot read (damaged, or a newer master's) never keeps its workload from changing.
#[test]
fn an_unreadable_rollout_record_is_written_over_and_never_blocks_its_workload() {
    use wasmlet_master::store::{Expect, Kind, Op};
    let mut master = Master::start(&[]).expect("master starts");
    master.upload_example("http-version").expect("upload");
    let canary = "    strategy: Canary\n    steps:\n    - {weight: 10, hold: 1s}\n";
    apply(&master, &web(1, 0, 1, canary));
    master.stop().expect("master stops");
    let garbled = Op::Put { kind: Kind::Rollout, name: "web".into(), value: b"{\"status\": {\"revi".to_vec(), expect: Expect::Any };
    crate::control_plane::write_into_store(&master, vec![garbled]);
    master.restart().expect("the master starts with it");
    let event = wait_for(WAIT, "the record named as not acted on", || {
        master.events().into_iter().find(|e| e.reason == "InvalidStoredObject" && e.involved_object.kind == "Rollout")
    });
    assert_eq!(event.involved_object.name, "web");
    assert!(master.get_json::<Workload>("/workloads/web").is_ok(), "the workload reads");

    // Changed: a new, readable record; deleted: the record goes too, and the name is free again.
    apply(&master, &web(2, 0, 1, canary));
    let record = rollout(&master, "web");
    assert_eq!((record.status.revision, record.status.phase), (2, RolloutPhase::Progressing));
    let deleted = master.client().delete(master.api("/workloads/web")).send().expect("DELETE");
    assert_eq!(deleted.status().as_u16(), 200);
    apply(&master, &web(3, 0, 1, canary));
    assert_eq!(rollout(&master, "web").status.revision, 1, "a new workload of that name starts at revision 1");
}
