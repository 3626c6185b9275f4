//! Runs that outlive the agent: what a run's state file records, and how a
//! new agent finds the runs a previous one left running and proves that each
//! is still the very process that agent started.
//!
//! A process is named by its PID, the time it started (in clock ticks since
//! boot, from `/proc/<pid>/stat`) and the boot it started in: a PID alone may
//! have been reused by then. The proof is taken again after the process is
//! opened as a pidfd, so the pidfd cannot refer to a process that merely
//! reused the PID; from then on it is the handle everything goes through.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::cgroup::{Cgroups, InstanceCgroup, Limits};
use super::child::ChildSpec;

/// What the agent records about a run once its process started, in the
/// run's directory (`run.json`), for the agent that comes next.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    pub run_id: String,
    pub process: ProcessId,
    /// The run's cgroup, under `<root>/instances/`.
    pub cgroup: String,
    pub started_at: DateTime<Utc>,
    pub cpu_limit_millis: Option<u64>,
    pub memory_max: Option<u64>,
    pub pids_max: Option<u64>,
}

impl RunState {
    pub fn limits(&self) -> Limits {
        Limits { cpu_millis: self.cpu_limit_millis, memory_max: self.memory_max, pids_max: self.pids_max }
    }
}

/// One process, for as long as the machine runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessId {
    pub pid: u32,
    /// When it started, in clock ticks since boot (`/proc/<pid>/stat`, field 22).
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` of the boot it started in.
    pub boot_id: String,
}

impl ProcessId {
    /// The process running as `pid` now, or why it cannot be named.
    pub fn of(pid: u32) -> Result<ProcessId, String> {
        Ok(ProcessId { pid, start_time: start_time(pid)?, boot_id: boot_id()? })
    }

    /// A pidfd for this very process: None if it has ended, or if its PID now
    /// names another process.
    pub fn open(&self) -> Option<OwnedFd> {
        if boot_id().ok()? != self.boot_id || start_time(self.pid).ok()? != self.start_time {
            return None;
        }
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid).ok()?)?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
        // Asked again now that the pidfd holds it: the PID cannot be reused while it is open.
        (start_time(self.pid).ok()? == self.start_time).then_some(pidfd)
    }
}

fn boot_id() -> Result<String, String> {
    let path = "/proc/sys/kernel/random/boot_id";
    std::fs::read_to_string(path).map(|id| id.trim().to_string()).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Field 22 of `/proc/<pid>/stat`; the command name before it may hold any byte but ')' ends it last.
fn start_time(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| format!("{path}: no command name"))?;
    // Field 3 (the state) is the first after the name; field 22 is 19 further.
    after_name.split_ascii_whitespace().nth(19).and_then(|t| t.parse().ok()).ok_or_else(|| format!("{path}: no start time in field 22"))
}

/// A run a previous agent left running, proven to be its process and opened.
pub struct Orphan {
    pub instance: String,
    pub state: RunState,
    /// The spec its process was started with.
    pub spec: ChildSpec,
    pub cgroup: InstanceCgroup,
    pub pidfd: OwnedFd,
}

impl Orphan {
    /// Whether this run is what the agent would start now for the same
    /// instance: the same program, arguments, environment, grants and
    /// limits. What only the process itself needed to start (its engine's
    /// settings) may differ: it runs already.
    pub fn runs(&self, spec: &ChildSpec, limits: &Limits) -> bool {
        self.state.limits() == *limits && identity(&self.spec) == identity(spec)
    }

    /// Its process, registered to be awaited; the orphan back if it cannot be.
    #[allow(unsafe_code)]
    pub fn watch(self) -> Result<Adopted, (Box<Orphan>, std::io::Error)> {
        let Orphan { instance, state, spec, cgroup, pidfd } = self;
        // SAFETY: the descriptor is an open pidfd owned by the OwnedFd, which the
        // AsyncFd owns for as long as it is registered: it stays open and the same.
        match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
            Ok(pidfd) => Ok(Adopted { pid: state.process.pid, run_id: state.run_id, cgroup, pidfd }),
            Err(e) => {
                let (pidfd, cause) = e.into_parts();
                Err((Box::new(Orphan { instance, state, spec, cgroup, pidfd }), cause))
            }
        }
    }

    /// Ends it (SIGKILL to its cgroup) and removes its cgroup and state; blocks up to a few seconds.
    pub fn end(self, files_dir: &Path) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
        let _ = self.cgroup.kill();
        if let Err(e) = self.cgroup.remove() {
            tracing::warn!(cgroup = %self.cgroup.name(), error = %e, "cannot remove the cgroup of a run a previous agent left");
        }
        let _ = std::fs::remove_file(files_dir.join(STATE_FILE));
    }
}

/// A run taken over: its process, readable once it ended.
pub struct Adopted {
    pub pid: u32,
    pub run_id: String,
    pub cgroup: InstanceCgroup,
    pub pidfd: AsyncFd<OwnedFd>,
}

/// What makes two specs start the same instance.
fn identity(spec: &ChildSpec) -> serde_json::Value {
    let mut value = serde_json::to_value(spec).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for key in ["runId", "engineHash", "memoryReservation", "epochTickMs"] {
            map.remove(key);
        }
    }
    value
}

/// The state file's name in a run's directory.
pub const STATE_FILE: &str = "run.json";

/// Writes a run's state file whole or not at all (0600).
pub fn write_state(dir: &Path, state: &RunState) -> std::io::Result<()> {
    crate::files::write_atomically(&dir.join(STATE_FILE), &serde_json::to_vec(state)?, 0o600)
}

/// Finds the runs a previous agent of this data dir left running. Every
/// instance cgroup that is not one of them (its state is missing or
/// unreadable, its process ended or is not in it) is ended and removed:
/// two processes must never run one instance.
pub fn find(cgroups: &Cgroups, data_dir: &Path) -> Vec<Orphan> {
    let mut found = Vec::new();
    let mut claimed = std::collections::BTreeSet::new();
    for (instance, dir) in run_dirs(data_dir) {
        let Ok(text) = std::fs::read(dir.join(STATE_FILE)) else { continue };
        let orphan = (|| {
            let state: RunState = serde_json::from_slice(&text).map_err(|e| format!("unreadable {STATE_FILE}: {e}"))?;
            let spec: ChildSpec = serde_json::from_slice(&std::fs::read(dir.join("spec.json")).map_err(|e| format!("spec.json: {e}"))?)
                .map_err(|e| format!("unreadable spec.json: {e}"))?;
            let cgroup = cgroups.open(&state.cgroup).ok_or_else(|| format!("its cgroup {} is gone", state.cgroup))?;
            claimed.insert(state.cgroup.clone());
            if spec.run_id != state.run_id {
                return Err(format!("spec.json is of run {}, not of run {}", spec.run_id, state.run_id));
            }
            if !cgroup.pids().contains(&state.process.pid) {
                return Err(format!("process {} is not in its cgroup any more", state.process.pid));
            }
            let pidfd = state.process.open().ok_or_else(|| format!("process {} has ended", state.process.pid))?;
            Ok(Orphan { instance: instance.clone(), state, spec, cgroup, pidfd })
        })();
        match orphan {
            Ok(orphan) => {
                tracing::info!(instance = %instance, pid = orphan.state.process.pid, "found a run a previous agent left running");
                found.push(orphan);
            }
            Err(why) => {
                tracing::info!(instance = %instance, reason = %why, "a run a previous agent started is not running any more");
                let _ = std::fs::remove_file(dir.join(STATE_FILE));
            }
        }
    }
    let adoptable: std::collections::BTreeSet<&str> = found.iter().map(|o| o.state.cgroup.as_str()).collect();
    for name in cgroups.instances() {
        if adoptable.contains(name.as_str()) {
            continue;
        }
        let Some(left) = cgroups.open(&name) else { continue };
        if !claimed.contains(&name) {
            tracing::warn!(cgroup = %name, "ending a run a previous agent left without a state to adopt it by");
        }
        let _ = left.kill();
        if let Err(e) = left.remove() {
            tracing::warn!(cgroup = %name, error = %e, "cannot remove a cgroup a previous agent left behind");
        }
    }
    found
}

/// `(instance, its process dir)` for every instance dir with one.
fn run_dirs(data_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("instances")) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let instance = entry.file_name().into_string().ok()?;
            let dir = super::run_dir(data_dir, &instance);
            dir.is_dir().then_some((instance, dir))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_named_by_pid_start_time_and_boot() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.start_time > 0);
        assert_eq!(me.boot_id.len(), 36, "{}", me.boot_id);
        assert!(me.open().is_some(), "this very process can be opened");
        let reused = ProcessId { start_time: me.start_time + 1, ..me.clone() };
        assert!(reused.open().is_none(), "a PID that started at another time is another process");
        let other_boot = ProcessId { boot_id: "00000000-0000-0000-0000-000000000000".into(), ..me };
        assert!(other_boot.open().is_none(), "a PID of another boot is another process");
    }

    #[test]
    fn a_command_name_with_parentheses_and_spaces_does_not_shift_the_fields() {
        // The kernel writes the name between the first '(' and the last ')'.
        let dir = tempfile::tempdir().unwrap();
        let tricky = dir.path().join("a) b (c");
        std::fs::copy("/bin/sleep", &tricky).unwrap();
        let plain = std::process::Command::new("/bin/sleep").arg("5").spawn().unwrap();
        let child = std::process::Command::new(&tricky).arg("5").spawn().unwrap();
        // A plain name splits naively; field 22 is the 22nd word.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", plain.id())).unwrap();
        let plain_start: u64 = stat.split_ascii_whitespace().nth(21).unwrap().parse().unwrap();
        let tricky_start = ProcessId::of(child.id()).map(|id| id.start_time);
        for mut c in [plain, child] {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Started within moments of each other: within a second of clock ticks (100 per second).
        let tricky_start = tricky_start.unwrap();
        assert!(tricky_start.abs_diff(plain_start) <= 100, "{tricky_start} vs {plain_start}");
    }

    /// A state file (and spec) for a run of `instance` by `pid` in cgroup `cgroup`.
    fn leave_state(data_dir: &Path, instance: &str, pid: u32, cgroup: &str) {
        let dir = super::super::run_dir(data_dir, instance);
        std::fs::create_dir_all(&dir).unwrap();
        let spec: ChildSpec = serde_json::from_value(serde_json::json!({
            "runId": "1-0", "engineHash": "", "memoryReservation": 0, "epochTickMs": 10, "cacheDir": "/", "digest": "sha256:00",
            "component": false, "logDir": "/", "logMaxSize": 1, "fencePath": "/f", "exitPath": "/e", "program": "p",
            "args": [], "env": [], "dirs": [], "cpuTimeLimitMs": null, "serve": null
        }))
        .unwrap();
        std::fs::write(dir.join("spec.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        let state = RunState {
            run_id: "1-0".into(),
            process: ProcessId::of(pid).unwrap(),
            cgroup: cgroup.into(),
            started_at: Utc::now(),
            cpu_limit_millis: None,
            memory_max: None,
            pids_max: None,
        };
        write_state(&dir, &state).unwrap();
    }

    fn alive(child: &mut std::process::Child) -> bool {
        child.try_wait().unwrap().is_none()
    }

    #[test]
    fn real_a_forged_state_never_reaches_a_process_outside_the_agents_cgroups() {
        use super::super::cgroup::tests::{real_cgroups, spawn_in};
        let Some(env) = real_cgroups("real_forged_state") else { return };
        let data_dir = env.data_dir.path();
        // A process of someone else's, and a state file that claims it for an empty cgroup of the agent's.
        let mut bystander = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let empty = env.cgroups.create("victim.1-0", &Limits::default()).unwrap();
        leave_state(data_dir, "victim", bystander.id(), "victim.1-0");
        // And a real run, left as an agent leaves one.
        let run = env.cgroups.create("kept.1-0", &Limits::default()).unwrap();
        let mut kept = spawn_in(&run, "sleep", &["30"]);
        leave_state(data_dir, "kept", kept.id(), "kept.1-0");

        let found = find(&env.cgroups, data_dir);
        let names: Vec<&str> = found.iter().map(|o| o.instance.as_str()).collect();
        assert_eq!(names, ["kept"], "only the process in its own cgroup is adopted");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(alive(&mut bystander), "the bystander was not signalled");
        assert!(alive(&mut kept), "the adoptable run runs on");
        assert!(env.cgroups.open(empty.name()).is_none(), "the cgroup no valid state claims is removed");
        assert!(!super::super::run_dir(data_dir, "victim").join(STATE_FILE).exists(), "the stale state is forgotten");

        for orphan in found {
            orphan.end(&super::super::run_dir(data_dir, "kept"));
        }
        let _ = kept.wait();
        let _ = bystander.kill();
        let _ = bystander.wait();
        assert!(env.cgroups.instances().is_empty());
    }
}
