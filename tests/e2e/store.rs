//! The master's store as an attacker or an accident leaves it: a store that
//! cannot be read stops the master with a message and is left as it is; a
//! backup taken under a burst of writes restores into a master its agents keep
//! working with; a damaged backup is refused before anything changes.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use wasmlet_api::{Phase, Workload};
use wasmlet_tests::{Agent, Master, bin, run_to_exit, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

fn sensor(name: &str, extra: &str) -> Workload {
    let text = workload_manifest(name, "sensor", "daemon", &format!("  args: [\"--interval\", \"500\"]\n{extra}"));
    wasmlet_api::from_yaml(&text).expect("manifest")
}

fn create(master: &Master, workload: &Workload) {
    let (status, body) = master.send_json(Method::POST, "/workloads", workload).expect("POST /workloads");
    assert_eq!(status, 201, "{body}");
}

fn running(master: &Master, workload: &str) -> usize {
    master.instances().iter().filter(|i| i.spec.workload == workload && i.status.phase == Phase::Running).count()
}

/// `wasmlet-master --data-dir DIR ARGS`, to its end.
fn master_command(dir: &std::path::Path, args: &[&str]) -> wasmlet_tests::Exit {
    let mut command = Command::new(bin("wasmlet-master"));
    command
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .env_remove("WASMLET_CONFIG")
        .env_remove("WASMLETCONFIG");
    run_to_exit(command, WAIT).expect("wasmlet-master ends")
}

#[test]
fn a_store_that_cannot_be_read_stops_the_master_and_is_left_as_it_is() {
    let mut master = Master::start(&[]).expect("master starts");
    master.upload_example("sensor").expect("upload");
    create(&master, &sensor("kept", ""));
    // A second master on the same data dir is refused while the first holds it.
    let second = master_command(master.data_dir.path(), &[]);
    assert!(!second.status.success() && second.stderr.contains("already running"), "{}", second.stderr);
    master.stop().expect("stops");

    let path = master.data_dir.path().join("store.redb");
    let good = std::fs::read(&path).expect("the store");
    let foreign_dir = tempfile::tempdir().expect("dir");
    {
        let db = redb::Database::create(foreign_dir.path().join("other.redb")).expect("redb");
        let txn = db.begin_write().expect("write");
        txn.open_table(redb::TableDefinition::<&str, u64>::new("accounts")).expect("table").insert("alice", 10).expect("insert");
        txn.commit().expect("commit");
    }
    let foreign = std::fs::read(foreign_dir.path().join("other.redb")).expect("foreign");
    let mut torn = good.clone();
    torn[..64].fill(0);
    let mut sqlite = b"SQLite format 3\0".to_vec();
    sqlite.resize(8192, 0);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zero-length", Vec::new(), "empty (0 bytes)"),
        ("truncated", good[..good.len() / 2].to_vec(), "cannot be read"),
        ("cut to its first page", good[..4096.min(good.len())].to_vec(), "cannot be read"),
        ("a torn header", torn, "cannot be read"),
        ("garbage", (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), "cannot be read"),
        ("another format", sqlite, "cannot be read"),
        ("another program's redb", foreign, "not a wasmlet store"),
    ];
    for (what, content, expected) in cases {
        std::fs::write(&path, &content).expect("write");
        let exit = master_command(master.data_dir.path(), &[]);
        assert!(!exit.status.success(), "{what}: the master must not start");
        assert_ne!(exit.status.code(), Some(101), "{what}: not a panic");
        let message = &exit.stderr;
        assert!(!message.contains("panicked"), "{what}: {message}");
        let file = path.display().to_string();
        for needle in [expected, file.as_str(), "left the file as it is", "wasmlet-master restore"] {
            assert!(message.contains(needle), "{what}: `{needle}` in {message}");
        }
        assert_eq!(std::fs::read(&path).expect("read"), content, "{what}: the file is left as it is");
    }
    // The same data dir with its store back is the same cluster.
    std::fs::write(&path, &good).expect("write");
    master.restart().expect("starts on the good store");
    assert!(master.get_json::<Value>("/workloads/kept").is_ok());
}

fn restore(dir: &std::path::Path, backup: &std::path::Path, extra: &[&str]) -> wasmlet_tests::Exit {
    let mut args = vec!["restore", backup.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    master_command(dir, &args)
}

#[test]
fn a_backup_under_writes_restores_into_a_master_the_agents_keep_working_with() {
    let mut master = Master::start(&[]).expect("master starts");
    let agent =
        Agent::start(&["--master", &master.url, "--join-token", &master.join_token, "--name", "edge", "--sample-interval", "500ms"])
            .expect("agent");
    let digest = master.upload_example("sensor").expect("upload");
    create(&master, &sensor("base", ""));
    wait_for(WAIT, "base Running", || (running(&master, "base") == 1).then_some(()));
    let out = master.command(&["token", "create", "--role", "viewer", "--ttl", "0s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let viewer = String::from_utf8_lossy(&out.stdout).lines().next().expect("token").to_string();

    // A burst of writes, one after the other, while the backup is taken.
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let burst = {
        let (url, token, ca) = (master.api("/workloads"), master.admin_token.clone(), master.ca_pem.clone());
        let acknowledged = acknowledged.clone();
        std::thread::spawn(move || {
            let client = wasmlet_tests::authorized(&token)
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
                .build()
                .expect("client");
            for i in 0..80 {
                let workload = sensor(&format!("w-{i}"), "  replicas: 0\n");
                let response = client.post(&url).json(&workload).send().expect("POST");
                assert_eq!(response.status(), 201);
                acknowledged.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    wait_for(WAIT, "the burst under way", || (acknowledged.load(Ordering::SeqCst) >= 10).then_some(()));
    let before = acknowledged.load(Ordering::SeqCst);
    let work = tempfile::tempdir().expect("dir");
    let file = work.path().join("cluster.backup");
    let out = master.command(&["backup", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 modules"), "{}", String::from_utf8_lossy(&out.stdout));
    burst.join().expect("the burst");
    // Written after the backup: the cluster moves well past every revision the backup holds.
    for i in 0..20 {
        create(&master, &sensor(&format!("late-{i}"), "  replicas: 0\n"));
    }
    create(&master, &sensor("post", ""));
    let post = wait_for(WAIT, "post Running", || {
        master.instances().into_iter().find(|i| i.spec.workload == "post" && i.status.phase == Phase::Running)
    });
    assert!(agent.instance(&post.metadata.name).is_some());
    let bytes = std::fs::read(&file).expect("the backup");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777, 0o600, "it holds the CA key");
    let leftovers: Vec<_> = std::fs::read_dir(work.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no partial files: {leftovers:?}");
    // A tar archive, as documented.
    let listing = Command::new("tar").arg("tf").arg(&file).output().expect("tar runs");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let entries: Vec<&str> = listing.lines().collect();
    assert_eq!(entries.first(), Some(&"wasmlet-backup/begin"), "{listing}");
    assert_eq!(entries.last(), Some(&"wasmlet-backup/end"), "{listing}");
    for entry in
        ["store/workloads/base", &format!("modules/{}", digest.trim_start_matches("sha256:")), "files/pki/ca.key", "files/admin.token"]
    {
        assert!(entries.contains(&entry), "{entry} in {listing}");
    }

    // Damaged backups are refused before anything changes.
    // A byte of the module's content (tar itself checks only its headers).
    let module_at = bytes.windows(4).position(|w| w == b"\0asm").expect("the module is in the backup");
    let mut flipped = bytes.clone();
    flipped[module_at + 100] ^= 0x55;
    let not_a_backup = b"just some text\n".repeat(100);
    for (what, content, expected) in [
        ("a flipped byte", flipped, "damaged"),
        ("half of it", bytes[..bytes.len() / 2].to_vec(), "cannot be restored"),
        ("its first 10 KiB", bytes[..10 << 10].to_vec(), "cannot be restored"),
        ("not a backup", not_a_backup, "cannot be restored"),
    ] {
        let bad = work.path().join("bad.backup");
        std::fs::write(&bad, &content).expect("write");
        let target = tempfile::tempdir().expect("dir");
        let exit = restore(target.path(), &bad, &[]);
        assert!(!exit.status.success() && exit.stderr.contains(expected) && exit.stderr.contains("Nothing in"), "{what}: {}", exit.stderr);
        let left: Vec<_> = std::fs::read_dir(target.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{what}: nothing restored: {left:?}");
    }
    // Not over a running master, not over a store without --force.
    let exit = restore(master.data_dir.path(), &file, &["--force"]);
    assert!(!exit.status.success() && exit.stderr.contains("a master is running"), "{}", exit.stderr);
    let restored = tempfile::Builder::new().prefix("wasmlet-restored-").tempdir().expect("dir");
    let exit = restore(restored.path(), &file, &[]);
    assert!(exit.status.success(), "restore: {}", exit.stderr);
    let exit = restore(restored.path(), &file, &[]);
    assert!(!exit.status.success() && exit.stderr.contains("--force"), "{}", exit.stderr);
    let exit = restore(restored.path(), &file, &["--force"]);
    assert!(exit.status.success(), "restore --force: {}", exit.stderr);
    let kept = std::fs::read_dir(restored.path())
        .expect("dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("store.redb.replaced-"));
    assert!(kept, "what --force replaced is kept");

    // The restored master, in the original's place: every object, token and module, and the agent keeps working.
    let original = master.restart_in(restored).expect("the restored master starts");
    let names: Vec<String> = master
        .get_json::<wasmlet_api::protocol::List<Workload>>("/workloads")
        .expect("list")
        .items
        .into_iter()
        .map(|w| w.metadata.name)
        .collect();
    let burst_names: Vec<&String> = names.iter().filter(|n| n.starts_with("w-")).collect();
    let count = burst_names.len();
    assert!(count >= before, "{count} of the burst restored, {before} were acknowledged before the backup began");
    for i in 0..count {
        assert!(names.contains(&format!("w-{i}")), "a consistent read holds a prefix of the burst: w-{i} missing from {names:?}");
    }
    assert!(names.contains(&"base".to_string()));
    let as_viewer = master.client_with(&viewer).build().expect("client").get(master.api("/workloads")).send().expect("GET");
    assert_eq!(as_viewer.status(), 200, "the viewer token is restored");
    let module = master.client().get(master.api(&format!("/modules/{digest}"))).send().expect("GET module");
    assert_eq!(module.status(), 200, "the module is restored");
    assert_eq!(running(&master, "base"), 1);
    // The agent's assignment watch moves on as soon as the revision differs
    // from its own: it stops what the backup does not hold. Its watch of the
    // services' endpoints came from a revision the restored store never
    // reached: answered 410 Gone, it lists again.
    wait_for(WAIT, "the instance placed after the backup stopped on the agent", || {
        agent.instance(&post.metadata.name).is_none().then_some(())
    });
    assert!(master.instances().iter().all(|i| i.spec.workload != "post"));
    wait_for(WAIT, "a watch answered 410 Gone", || {
        let metrics = master.client().get(format!("{}/metrics", master.url)).send().ok()?.text().ok()?;
        metrics.lines().any(|l| l.starts_with("wasmlet_master_http_requests_total{method=\"GET\",code=\"410\"}")).then_some(())
    });
    create(&master, &sensor("after", ""));
    wait_for(WAIT, "a new workload Running on the agent", || (running(&master, "after") == 1).then_some(()));
    let node = master.nodes().into_iter().find(|n| n.metadata.name == "edge").expect("edge");
    assert!(node.is_ready(), "the agent renews its lease with the restored master");
    drop(original);
}
