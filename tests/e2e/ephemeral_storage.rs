//! The node's disk under attack: a guest writes into its scratch dir until it
//! is stopped. The agent measures every instance's scratch dirs every
//! `--ephemeral-storage-check-interval` and evicts an instance past its
//! `limits.ephemeralStorage` (or `--default-ephemeral-storage`): the run ends
//! `EphemeralStorageLimitExceeded`, the scratch dirs are emptied, the instance
//! restarts per its policy, and its siblings run on. A data dir whose
//! filesystem is full makes the node not Ready, saying so.

use std::path::Path;
use std::time::Duration;

use wasmlet_api::Phase;
use wasmlet_tests::{Agent, place_file, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

/// How often the tests' agents measure scratch dirs.
const CHECK_INTERVAL: &str = "100ms";

/// What a guest may write beyond its limit before the next measurement stops
/// it: its write rate times the interval, with a wide margin for a slow or
/// busy machine (a guest writes a few hundred MiB/s through WASI here).
const OVERSHOOT: u64 = 256 << 20;

/// Bytes a tree takes on disk (allocated blocks), not following links; 0 once it is gone.
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

#[test]
fn a_guest_filling_its_scratch_dir_is_evicted_and_its_siblings_run_on() {
    let manifests = tempfile::tempdir().expect("tempdir");
    let dir = manifests.path().to_str().expect("utf-8");
    let agent = Agent::start(&[
        "--manifests-dir",
        dir,
        "--manifests-poll-interval",
        "100ms",
        "--ephemeral-storage-check-interval",
        CHECK_INTERVAL,
        "--default-ephemeral-storage",
        "8Mi",
        "--restart-backoff-initial",
        "100ms",
        "--restart-backoff-max",
        "200ms",
    ])
    .expect("agent starts");
    // Siblings: a daemon with a scratch dir of its own, and a job that leaves a file in its scratch dir.
    place_file(
        manifests.path(),
        "sensor.yaml",
        &workload_manifest("sensor", "sensor", "daemon", "  args: [\"--interval\", \"100\"]\n  dirs:\n  - path: /data\n"),
    );
    place_file(
        manifests.path(),
        "note.yaml",
        &workload_manifest(
            "note",
            "fs-probe",
            "job",
            "  args: [\"--write\", \"/scratch/note\"]\n  restartPolicy: Never\n  dirs:\n  - path: /scratch\n",
        ),
    );
    agent.wait_phase("sensor-0", Phase::Running, WAIT);
    agent.wait_phase("note-0", Phase::Succeeded, WAIT);

    let fill = "  args: [\"--fill\", \"/scratch/big\"]\n  dirs:\n  - path: /scratch\n";
    place_file(
        manifests.path(),
        "filler.yaml",
        &workload_manifest(
            "filler",
            "fs-probe",
            "job",
            &format!("{fill}  restartPolicy: Never\n  resources:\n    limits: {{ephemeralStorage: 16Mi}}\n"),
        ),
    );
    // No limit in the manifest: the node's default (8Mi) holds; restarted per its policy.
    place_file(manifests.path(), "default.yaml", &workload_manifest("default", "fs-probe", "daemon", fill));

    let filler_dir = agent.data_dir.path().join("instances/filler-0");
    let mut peak = 0;
    let filler = wait_for(WAIT, "the filler to be evicted", || {
        peak = peak.max(disk_usage(&filler_dir));
        agent.instance("filler-0").filter(|i| i.status.phase == Phase::Failed)
    });
    eprintln!("the filler's scratch dir peaked at {} MiB (limit 16 MiB)", peak >> 20);
    assert_eq!(filler.status.reason.as_deref(), Some("EphemeralStorageLimitExceeded"), "{:?}", filler.status);
    let message = filler.status.message.unwrap_or_default();
    assert!(message.contains("over the limit of 16Mi"), "{message}");
    assert!(peak < (16 << 20) + OVERSHOOT, "the scratch dir reached {} MiB", peak >> 20);
    assert!(!filler_dir.join("scratch").exists(), "the evicted instance's scratch dirs were emptied");

    let default = wait_for(WAIT, "the defaulted filler to be evicted and restarted", || {
        agent.instance("default-0").filter(|i| {
            i.status.restarts >= 2 && i.status.last_termination.as_ref().is_some_and(|t| t.reason == "EphemeralStorageLimitExceeded")
        })
    });
    let last = default.status.last_termination.expect("last termination");
    assert!(last.message.contains("over the limit of 8Mi") && last.message.contains("--default-ephemeral-storage"), "{}", last.message);
    let events: Vec<wasmlet_api::Event> = agent.get_json("/events").expect("events");
    assert!(events.iter().any(|e| e.reason == "Evicted" && e.involved_object.name == "default-0"), "{events:?}");

    // The siblings ran on, untouched.
    let sensor = agent.instance("sensor-0").expect("sensor");
    assert_eq!((sensor.status.phase, sensor.status.restarts), (Phase::Running, 0), "{:?}", sensor.status);
    assert_eq!(agent.instance("note-0").expect("note").status.phase, Phase::Succeeded);
    let note = agent.data_dir.path().join("instances/note-0/scratch/0/note");
    assert_eq!(std::fs::read(&note).expect("the sibling's file"), b"written by fs-probe\n");
    let metric = agent.metric("wasmlet_instance_ephemeral_storage_bytes{instance=\"sensor-0\",workload=\"sensor\"}");
    assert!(metric.is_some_and(|bytes| bytes < (1 << 20) as f64), "{metric:?}");
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        assert!(rustix::process::geteuid().is_root(), "this test mounts a tmpfs: run it as root");
        let dir = tempfile::Builder::new().prefix("wasmlet-full-").tempdir().expect("tempdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).output();
    }
}

#[test]
fn readyz_says_when_the_data_dir_is_full() {
    let tmpfs = Tmpfs::mount("16m");
    let data = tmpfs.dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    let data_dir = tempfile::TempDir::new_in(&data).expect("a data dir on the tmpfs");
    let shown = data_dir.path().display().to_string();
    let agent = Agent::start_in(data_dir, &["--sample-interval", "100ms"]).expect("agent starts");
    let readyz = || {
        let response = reqwest::blocking::get(agent.url("/readyz")).expect("readyz");
        (response.status().as_u16(), response.text().unwrap_or_default())
    };
    wait_for(WAIT, "the agent to be ready", || (readyz().0 == 200).then_some(()));

    // Fill the filesystem as a runaway writer would.
    let ballast = tmpfs.dir.path().join("ballast");
    let mut file = std::fs::File::create(&ballast).expect("create");
    let chunk = vec![0u8; 1 << 20];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    drop(file);

    let (status, body) = wait_for(WAIT, "/readyz to say the data dir is full", || {
        let (status, body) = readyz();
        (status == 503).then_some((status, body))
    });
    assert_eq!(status, 503);
    assert!(body.contains("DataDirFull") && body.contains(&shown) && body.contains("is full"), "{body}");
    let node: wasmlet_api::Node = agent.get_json("/status").expect("status");
    let ready = node.condition(wasmlet_api::ConditionType::Ready).expect("Ready");
    assert_eq!((ready.status, ready.reason.as_str()), (wasmlet_api::ConditionStatus::False, "DataDirFull"), "{ready:?}");

    std::fs::remove_file(&ballast).expect("free the space");
    wait_for(WAIT, "the agent to be ready again", || (readyz().0 == 200).then_some(()));
    drop(agent);
}
