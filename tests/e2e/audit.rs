//! A flood of refused requests against the master, as one client on the
//! network would send it: anonymous, with forged tokens, with a token of the
//! wrong role. The flood gets `429`, the audit log stays under its cap, what
//! was dropped is counted, and an admin and an agent behind the same address
//! keep working all along.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmlet_tests::{Agent, Master, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Every audit file's size and its lines, `audit.log` and its rotated ones.
fn audit_files(dir: &Path) -> Vec<(String, u64, Vec<Value>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("data dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit.log"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines = text.lines().map(|l| serde_json::from_str(l).expect("an audit line is JSON")).collect();
            (e.file_name().to_string_lossy().into_owned(), text.len() as u64, lines)
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

fn metric(master: &Master, series: &str) -> f64 {
    let text = master.client().get(format!("{}/metrics", master.url)).send().and_then(|r| r.text()).unwrap_or_default();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Sends `requests` refused requests from this address, cycling through the
/// ways to be refused; returns the status codes and whether each 429 said when to retry.
fn flood(master: &Master, viewer: &str, requests: usize) -> Vec<(u16, bool)> {
    let admin_id = master.admin_token.split('.').next().expect("id").to_string();
    let forged = [
        None,
        Some("0123456789abcdef.0123456789abcdef0123456789abcdef".to_string()),
        Some(format!("{admin_id}.{}", "0".repeat(32))),
        Some("not a token at all".to_string()),
        Some(viewer.to_string()),
    ];
    let clients: Vec<_> = forged
        .iter()
        .map(|token| match token {
            Some(token) => master.client_with(token).build().expect("client"),
            None => master.anonymous().build().expect("client"),
        })
        .collect();
    (0..requests)
        .map(|i| {
            let client = &clients[i % clients.len()];
            // The viewer may read but not write: its POSTs are 403s.
            let response = if i % clients.len() == 4 {
                client.post(master.api("/workloads")).body("{}").send()
            } else {
                client.get(master.api("/nodes")).send()
            }
            .expect("an answer");
            let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).is_some_and(|s| s >= 1);
            (response.status().as_u16(), retry)
        })
        .collect()
}

#[test]
fn a_flood_of_refused_requests_gets_429_while_admins_and_agents_keep_working() {
    let master = Master::start(&[
        "--refused-per-second",
        "20",
        "--refused-burst",
        "40",
        "--audit-log-max-size",
        "32Ki",
        "--audit-log-max-files",
        "3",
    ])
    .expect("master starts");
    // The agent comes from the same address as the flood, as nodes behind one NAT would.
    let _agent =
        Agent::start(&["--master", &master.url, "--join-token", &master.join_token, "--name", "edge", "--sample-interval", "500ms"])
            .expect("agent");
    wait_for(WAIT, "edge Ready", || master.nodes().into_iter().find(|n| n.metadata.name == "edge" && n.is_ready()));
    let out = master.command(&["token", "create", "--role", "viewer", "--ttl", "1h"]);
    let viewer = String::from_utf8_lossy(&out.stdout).lines().next().expect("token").to_string();

    // An admin working during the flood.
    let stop = Arc::new(AtomicBool::new(false));
    let admin_answers = Arc::new(Mutex::new(Vec::new()));
    let admin = {
        let (client, url, stop, answers) = (master.client(), master.api("/workloads"), stop.clone(), admin_answers.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let status = client.get(&url).send().map(|r| r.status().as_u16()).unwrap_or(0);
                answers.lock().expect("lock").push(status);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    let answers: Vec<(u16, bool)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| flood(&master, &viewer, 600))).collect();
        handles.into_iter().flat_map(|h| h.join().expect("flooder")).collect()
    });
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    admin.join().expect("admin");

    let count = |code: u16| answers.iter().filter(|(c, _)| *c == code).count();
    let (refused, limited) = (count(401) + count(403), count(429));
    assert_eq!(
        refused + limited,
        answers.len(),
        "every flood request is refused: {:?}",
        answers.iter().map(|a| a.0).collect::<std::collections::BTreeSet<_>>()
    );
    assert!(limited > 0, "the flood was answered 429");
    assert!(answers.iter().filter(|(c, _)| *c == 429).all(|(_, retry)| *retry), "every 429 says when to retry");
    // The limit holds: the burst, and 20 a second since.
    let allowed = 40 + (20.0 * (elapsed.as_secs_f64() + 1.0)) as usize;
    assert!(refused <= allowed, "{refused} refusals answered in {elapsed:?}, at most {allowed}");
    let admin_answers = admin_answers.lock().expect("lock").clone();
    assert!(!admin_answers.is_empty() && admin_answers.iter().all(|s| *s == 200), "the admin was answered all along: {admin_answers:?}");
    // The agent's heartbeats and reports (its only PUTs), from the same address, were never refused.
    for code in [401, 403, 429] {
        let series = format!("wasmlet_master_http_requests_total{{method=\"PUT\",code=\"{code}\"}}");
        assert_eq!(metric(&master, &series), 0.0, "{series}");
    }
    assert!(metric(&master, "wasmlet_master_http_requests_total{method=\"PUT\",code=\"200\"}") > 0.0, "the agent renewed its lease");
    wait_for(WAIT, "edge Ready", || master.nodes().into_iter().find(|n| n.metadata.name == "edge" && n.is_ready()));

    assert_eq!(metric(&master, "wasmlet_master_requests_rate_limited_total"), limited as f64);
    let summary = wait_for(WAIT, "the audit line summing up the drops", || {
        audit_files(master.data_dir.path()).into_iter().flat_map(|(_, _, lines)| lines).find(|l| l["result"] == "dropped")
    });
    assert!(summary["rateLimited"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert_eq!(summary["rateLimitedSources"][0]["source"], "127.0.0.1", "{summary}");
    let files = audit_files(master.data_dir.path());
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(files.len() <= 3 && total <= 3 * (32 << 10), "{} files, {total} bytes", files.len());
    let written = files.iter().flat_map(|f| &f.2).filter(|l| l["result"] == "unauthenticated" || l["result"] == "denied").count();
    assert!(written <= refused, "{written} lines for {refused} refusals: the 429s are not written one by one");
}

#[test]
fn the_audit_log_rotates_and_never_exceeds_its_cap() {
    let master =
        Master::start(&["--refused-per-second", "0", "--audit-log-max-size", "16Ki", "--audit-log-max-files", "2"]).expect("master starts");
    let client = master.anonymous().build().expect("client");
    for i in 0..1500 {
        // Long paths: each line as large as the log lets one be.
        let response = client.get(master.api(&format!("/workloads/{i}-{}", "x".repeat(2000)))).send().expect("answer");
        assert_eq!(response.status(), 401, "no rate limit with --refused-per-second 0");
    }
    wait_for(WAIT, "a rotated file", || master.data_dir.path().join("audit.log.1").exists().then_some(()));
    let files = audit_files(master.data_dir.path());
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names, ["audit.log", "audit.log.1"], "two files kept, the current one included");
    let total: u64 = files.iter().map(|f| f.1).sum();
    assert!(total <= 2 * (16 << 10), "{total} bytes");
    let line = &files[1].2[0];
    assert_eq!(line["user"], "anonymous");
    assert!(line["object"].as_str().unwrap_or_default().len() < 600, "a line holds at most the start of a long path");
    assert_eq!(metric(&master, "wasmlet_master_audit_lines_dropped_total"), 0.0);
}
