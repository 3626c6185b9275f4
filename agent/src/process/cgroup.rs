//! The cgroups of process-mode instances.
//!
//! This module owns every cgroup directory the agent makes: where they live
//! (found from `/proc/self/cgroup` and `/proc/self/mountinfo`), one cgroup per
//! instance with its CPU quota, memory limit (without swap) and pids limit,
//! the kernel's counters for it, and killing and removing it.
//!
//! Three host layouts:
//! - **pure cgroup v2**: one hierarchy. The agent's delegated root enables
//!   `cpu memory pids` for its subtree and each instance is a leaf
//!   `<root>/instances/<name>`.
//! - **pure v1**: the cpu, cpuacct, memory and pids hierarchies (cpu and
//!   cpuacct may share one); the instance has a directory in each.
//! - **hybrid**: the v1 hierarchies plus a cgroup2 hierarchy that has none of
//!   those controllers (`/sys/fs/cgroup/unified`). Its *core* files still work
//!   per cgroup, so each instance also gets a twin there for `cgroup.kill`,
//!   `cgroup.events` and pressure (PSI).
//!
//! `cgroups-rs` makes the directories, writes the limits, reads the usage
//! counters and deletes. What it does not cover is read and written here
//! directly: the agent's own leaf and `cgroup.subtree_control`, the
//! `oom_kill` counters (`memory.events`, `memory.oom_control`), PSI,
//! `cgroup.kill`, `cgroup.events` and the whole hybrid core hierarchy (the
//! crate's v2 hierarchy is bound to `/sys/fs/cgroup`).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cgroups_rs::fs::Controller as _;
use cgroups_rs::fs::MaxValue;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::error::{Error as CrateError, ErrorKind as CrateErrorKind};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};
use sha2::{Digest as _, Sha256};

/// The directory under each root that holds one cgroup per instance.
const INSTANCES: &str = "instances";
/// The basename systemd (`DelegateSubgroup=agent`) or an earlier agent gives
/// the agent's own cgroup; its parent is then the delegated root.
const AGENT_LEAF: &str = "agent";
/// What a pure v2 root enables for the instances below it.
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// The CFS period every quota is expressed in (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses a CFS quota under 1000 µs: 10 millicores of a 100 ms period.
const MIN_CPU_MILLIS: u64 = 10;
/// v1 reports "no memory limit" as the largest page-aligned i64 (its exact value
/// depends on the page size); no real limit comes near 4 EiB.
const NO_MEMORY_LIMIT_FLOOR: u64 = 1 << 62;
/// How long [`InstanceCgroup::remove`] waits for the last process to go.
const REMOVE_WAIT: Duration = Duration::from_secs(1);
const REMOVE_POLL: Duration = Duration::from_millis(10);
/// Rounds of "list, then SIGKILL the new ones" without `cgroup.kill`; pids.max
/// bounds how many processes can appear, so this many rounds always suffice in practice.
const KILL_ROUNDS: usize = 64;

/// The cgroups this agent creates its process-mode instances' cgroups in.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Arc<Layout>,
}

/// The limits of one instance's cgroup; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Millicores: a CFS quota of `cpu_millis × 100` µs per 100 ms period; at least 10.
    pub cpu_millis: Option<u64>,
    /// Bytes of memory, with no swap beside it.
    pub memory_max: Option<u64>,
    /// Tasks (threads count, not only processes).
    pub pids_max: Option<u64>,
}

/// The cgroup(s) of one instance: a directory in each hierarchy used.
#[derive(Debug, Clone)]
pub struct InstanceCgroup {
    inner: Arc<InstanceDirs>,
}

/// The kernel's counters for one instance's cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    /// v1 `cpuacct.usage`; v2 `cpu.stat` `usage_usec`.
    pub cpu_usage: Duration,
    /// `cpu.stat` `nr_periods`: periods in which the cgroup was runnable.
    pub cpu_periods: u64,
    /// `cpu.stat` `nr_throttled`.
    pub cpu_throttled_periods: u64,
    /// `cpu.stat` `throttled_time` (v1, ns) or `throttled_usec` (v2).
    pub cpu_throttled: Duration,
    pub memory_current: u64,
    pub memory_peak: u64,
    pub memory_max: Option<u64>,
    pub oom_kills: u64,
    /// Only where a cgroup2 directory (pure, or the hybrid core) gives them and PSI is on.
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
}

/// One PSI file (`cpu.pressure`, `memory.pressure`): the share of the last
/// 10 s in which some / all of the cgroup's tasks were stalled, and the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub some_avg10: f64,
    pub full_avg10: f64,
    pub some_total: Duration,
    pub full_total: Duration,
}

/// A directory under which the instance cgroups live (`<dir>/instances/<name>`).
#[derive(Debug, Clone, PartialEq)]
struct Root {
    dir: PathBuf,
    /// This agent's own `wasmlet-<hash>` directory, which [`Cgroups::release`]
    /// removes; otherwise a delegated cgroup (systemd's unit) that outlives the agent.
    ours: bool,
}

/// Where the instance cgroups go on this host.
#[derive(Debug, Clone, PartialEq)]
enum Layout {
    /// One cgroup2 hierarchy with cpu, memory and pids.
    V2 {
        root: Root,
        /// The leaf the agent moves itself into first, so `root` may enable
        /// controllers (no process may stay in a cgroup that does).
        move_into: Option<PathBuf>,
    },
    /// The v1 controllers, each in its hierarchy, and on a hybrid host the
    /// cgroup2 core hierarchy beside them.
    V1 { cpu: Root, cpuacct: Root, memory: Root, pids: Root, core: Option<Root> },
}

/// The host facts discovery decides on, read once; tests pass their own.
struct Host<'a> {
    /// `/proc/self/cgroup`.
    proc_self_cgroup: &'a str,
    /// `/proc/self/mountinfo`.
    mountinfo: &'a str,
    pid: u32,
    /// `INVOCATION_ID` is set: systemd started the agent.
    under_systemd: bool,
}

/// Every directory of one instance cgroup, with the crate's handles on them.
#[derive(Debug)]
struct InstanceDirs {
    name: String,
    /// Every directory, each once: the v1 hierarchies', then the cgroup2 one.
    dirs: Vec<PathBuf>,
    cpu: CpuController,
    /// v1 only: v2 reports the usage in `cpu.stat`.
    cpuacct: Option<CpuAcctController>,
    memory: MemController,
    pids: PidController,
    /// The cgroup2 directory (pure v2, or the hybrid core twin): kill, events, PSI.
    v2: Option<PathBuf>,
    /// On pure v2 the memory controller is in the cgroup2 directory (`memory.events`);
    /// otherwise it is v1's (`memory.oom_control`).
    memory_v2: bool,
}

impl Cgroups {
    /// Finds the agent's own cgroups (per /proc/self/cgroup + mountinfo), picks
    /// the root for instances (with `wasmlet-H`, H = first 12 hex of sha256 of
    /// the canonical data dir, so two agents sharing a cgroup stay apart),
    /// creates `<root>/instances`, and proves it can create, limit and remove a
    /// probe child there.
    ///
    /// Err = one sentence naming the path and the OS error.
    pub fn discover(data_dir: &Path) -> Result<Cgroups, String> {
        let canonical = fs::canonicalize(data_dir).map_err(|e| format!("cannot resolve the data dir {}: {e}", data_dir.display()))?;
        let proc_self_cgroup = read_proc("/proc/self/cgroup")?;
        let mountinfo = read_proc("/proc/self/mountinfo")?;
        let host = Host {
            proc_self_cgroup: &proc_self_cgroup,
            mountinfo: &mountinfo,
            pid: std::process::id(),
            under_systemd: std::env::var_os("INVOCATION_ID").is_some(),
        };
        let cgroups = Cgroups { layout: Arc::new(plan(&host, &root_name(&canonical))?) };
        if let Err(e) = prepare(&cgroups.layout).and_then(|()| cgroups.probe()) {
            // Leave no empty directory behind: it would keep the enclosing cgroup from being removed.
            let _ = cgroups.release();
            return Err(e);
        }
        Ok(cgroups)
    }

    /// One line for the node status, e.g. "hybrid: v1 cpu,cpuacct,memory,pids
    /// (memory at …); v2 core at /sys/fs/cgroup/unified/wasmlet-ab12…".
    pub fn describe(&self) -> String {
        match &*self.layout {
            Layout::V2 { root, .. } => format!("cgroup v2: cpu,memory,pids at {}", root.dir.display()),
            Layout::V1 { memory, core: Some(core), .. } => {
                format!("hybrid: v1 cpu,cpuacct,memory,pids (memory at {}); v2 core at {}", memory.dir.display(), core.dir.display())
            }
            Layout::V1 { memory, core: None, .. } => {
                format!("cgroup v1: cpu,cpuacct,memory,pids (memory at {})", memory.dir.display())
            }
        }
    }

    /// Every root directory the instance cgroups live under (`<root>/instances/<name>`),
    /// each once: for the state file, status and tests.
    pub fn roots(&self) -> Vec<PathBuf> {
        self.layout.roots().into_iter().map(|root| root.dir.clone()).collect()
    }

    /// Creates the instance's cgroup(s) (reusing existing dirs of that name) and
    /// sets the limits. Err names the file and error.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<InstanceCgroup, String> {
        check_name(name)?;
        self.create_unchecked(name, limits)
    }

    /// A handle on an instance's existing cgroup(s) (for adoption after an agent
    /// restart); None if absent.
    pub fn open(&self, name: &str) -> Option<InstanceCgroup> {
        check_name(name).ok()?;
        let cgroup = self.handle(name);
        cgroup.inner.dirs.iter().any(|dir| dir.is_dir()).then_some(cgroup)
    }

    /// Names of the instance cgroups that exist now (in any hierarchy).
    pub fn instances(&self) -> Vec<String> {
        let mut names = BTreeSet::new();
        for root in self.roots() {
            let Ok(entries) = fs::read_dir(root.join(INSTANCES)) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if check_name(&name).is_ok() && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    names.insert(name);
                }
            }
        }
        names.into_iter().collect()
    }

    /// Removes what discovery made (`<root>/instances`, and `<root>` itself where
    /// it is this agent's `wasmlet-H`) once no instance cgroup is left: for an
    /// agent that ends with no process-mode instance, and for tests.
    pub fn release(&self) -> io::Result<()> {
        let left = self.instances();
        if !left.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("instance cgroups remain under {}: {}", self.describe(), left.join(", ")),
            ));
        }
        // Every root is tried, so one read-only hierarchy leaves nothing behind in the others.
        let mut first_error = None;
        for root in self.layout.roots() {
            let removed = remove_dir_if_present(&root.dir.join(INSTANCES))
                .and_then(|()| if root.ours { remove_dir_if_present(&root.dir) } else { Ok(()) });
            if let Err(e) = removed {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Proves this agent can create, limit and remove a cgroup under every root.
    fn probe(&self) -> Result<(), String> {
        // Probes a crashed agent left behind are empty: remove them first.
        for root in self.roots() {
            let Ok(entries) = fs::read_dir(root.join(INSTANCES)) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().as_bytes().starts_with(b".probe-") {
                    let _ = self.handle(&entry.file_name().to_string_lossy()).remove();
                }
            }
        }
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let name = format!(".probe-{}-{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
        let limits = Limits { cpu_millis: Some(100), memory_max: Some(16 << 20), pids_max: Some(1) };
        let probe = self.create_unchecked(&name, &limits)?;
        probe.remove().map_err(|e| format!("cannot remove the probe cgroup: {e}"))
    }

    fn create_unchecked(&self, name: &str, limits: &Limits) -> Result<InstanceCgroup, String> {
        let quota = cpu_quota_us(limits.cpu_millis)?;
        let memory_max = limit_i64("memory", limits.memory_max)?;
        let pids_max = limit_i64("pids", limits.pids_max)?;
        let cgroup = self.handle(name);
        let made = cgroup.make_dirs().and_then(|()| cgroup.set_limits(quota, memory_max, pids_max));
        if let Err(e) = made {
            // Nothing half-made stays behind (a populated reused cgroup refuses, as it should).
            cgroup.discard();
            return Err(e);
        }
        Ok(cgroup)
    }

    /// The handle on `<root>/instances/<name>` in every hierarchy; touches nothing.
    fn handle(&self, name: &str) -> InstanceCgroup {
        let dir = |root: &Root| root.dir.join(INSTANCES).join(name);
        let inner = match &*self.layout {
            Layout::V2 { root, .. } => {
                let dir = dir(root);
                InstanceDirs {
                    name: name.to_string(),
                    dirs: vec![dir.clone()],
                    cpu: CpuController::new(dir.clone(), root.dir.clone(), true),
                    cpuacct: None,
                    memory: MemController::new(dir.clone(), root.dir.clone(), true),
                    pids: PidController::new(dir.clone(), root.dir.clone(), true),
                    v2: Some(dir),
                    memory_v2: true,
                }
            }
            Layout::V1 { cpu, cpuacct, memory, pids, core } => {
                let v2 = core.as_ref().map(dir);
                let mut dirs: Vec<PathBuf> = Vec::new();
                for d in [cpu, cpuacct, memory, pids].into_iter().map(dir).chain(v2.clone()) {
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
                InstanceDirs {
                    name: name.to_string(),
                    dirs,
                    cpu: CpuController::new(dir(cpu), cpu.dir.clone(), false),
                    cpuacct: Some(CpuAcctController::new(dir(cpuacct), cpuacct.dir.clone())),
                    memory: MemController::new(dir(memory), memory.dir.clone(), false),
                    pids: PidController::new(dir(pids), pids.dir.clone(), false),
                    v2,
                    memory_v2: false,
                }
            }
        };
        InstanceCgroup { inner: Arc::new(inner) }
    }
}

impl InstanceCgroup {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// One write-only, close-on-exec file per `cgroup.procs` the child must be
    /// placed in (every v1 hierarchy used, and the v2/unified one). Writing
    /// `b"0"` to each in a `pre_exec` closure places the child before exec, so
    /// every page of the new image is charged to the instance.
    pub fn procs_files(&self) -> io::Result<Vec<File>> {
        self.inner
            .dirs
            .iter()
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                // std opens with O_CLOEXEC: the child keeps none of them after exec.
                OpenOptions::new().write(true).open(&path).map_err(|e| with_path(&path, e))
            })
            .collect()
    }

    /// Moves a running process into it, in every hierarchy.
    pub fn move_in(&self, pid: u32) -> io::Result<()> {
        use std::io::Write as _;
        for mut file in self.procs_files()? {
            file.write_all(pid.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// Reads the kernel's counters now (missing files → zero/None, never an error).
    pub fn stats(&self) -> CgroupStats {
        let inner = &*self.inner;
        // Usage before the period counters: then one sample satisfies
        // usage ≤ periods × quota, which is what callers check.
        let acct_usage = inner.cpuacct.as_ref().map(|acct| Duration::from_nanos(acct.cpuacct().usage));
        let cpu = CpuStat::parse(&inner.cpu.cpu().stat);
        let memory = inner.memory.memory_stat();
        CgroupStats {
            cpu_usage: acct_usage.or(cpu.usage).unwrap_or_default(),
            cpu_periods: cpu.periods,
            cpu_throttled_periods: cpu.throttled_periods,
            cpu_throttled: cpu.throttled,
            memory_current: memory.usage_in_bytes,
            memory_peak: memory.max_usage_in_bytes,
            memory_max: u64::try_from(memory.limit_in_bytes).ok().filter(|&l| l > 0 && l < NO_MEMORY_LIMIT_FLOOR),
            oom_kills: self.oom_kills(),
            cpu_pressure: self.pressure("cpu.pressure"),
            memory_pressure: self.pressure("memory.pressure"),
        }
    }

    /// The OOM killer's kills in this cgroup so far (v2 `memory.events`
    /// `oom_kill`; v1 `memory.oom_control` `oom_kill`).
    pub fn oom_kills(&self) -> u64 {
        // The crate has no memory.events reader, and its oom_control parser is positional.
        let file = if self.inner.memory_v2 { "memory.events" } else { "memory.oom_control" };
        fs::read_to_string(self.inner.memory.path().join(file)).ok().and_then(|text| keyed_value(&text, "oom_kill")).unwrap_or(0)
    }

    /// PIDs of the processes in it now (in any of its directories).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = BTreeSet::new();
        for dir in &self.inner.dirs {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(parse_pids(&text));
            }
        }
        pids.into_iter().collect()
    }

    /// SIGKILLs every process in it: `cgroup.kill` where it exists (v2, or the
    /// hybrid core; Linux ≥ 5.14), then kill(2) through a pidfd for whatever
    /// `cgroup.procs` still lists that was not signalled yet.
    pub fn kill(&self) -> io::Result<()> {
        if let Some(v2) = &self.inner.v2 {
            let path = v2.join("cgroup.kill");
            match write_file(&path, "1") {
                Ok(()) => {}
                // Before 5.14, or the directory is gone: the per-PID path below does it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut signalled = BTreeSet::new();
        for _ in 0..KILL_ROUNDS {
            let fresh: Vec<u32> = self.pids().into_iter().filter(|pid| !signalled.contains(pid)).collect();
            if fresh.is_empty() {
                return Ok(());
            }
            for pid in fresh {
                self.kill_member(pid)?;
                signalled.insert(pid);
            }
        }
        Err(io::Error::other(format!(
            "{}: new processes kept appearing through {KILL_ROUNDS} rounds of SIGKILL",
            self.inner.dirs.first().map_or_else(String::new, |d| d.display().to_string())
        )))
    }

    /// Blocking: waits (≤ 1 s, polling) until no process is left, then removes
    /// every directory of it. Err if still populated or rmdir fails.
    pub fn remove(&self) -> io::Result<()> {
        let deadline = Instant::now() + REMOVE_WAIT;
        loop {
            let left = self.pids();
            if left.is_empty() && !self.populated() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("cannot remove cgroup {}: processes {left:?} are still in it", self.inner.name),
                ));
            }
            std::thread::sleep(REMOVE_POLL);
        }
        let inner = &*self.inner;
        // The crate retries rmdir a few times (the kernel may still be tearing down the last task).
        inner.memory.delete().map_err(|e| crate_io_error("remove", inner.memory.path(), &e))?;
        inner.pids.delete().map_err(|e| crate_io_error("remove", inner.pids.path(), &e))?;
        inner.cpu.delete().map_err(|e| crate_io_error("remove", inner.cpu.path(), &e))?;
        if let Some(acct) = &inner.cpuacct {
            acct.delete().map_err(|e| crate_io_error("remove", acct.path(), &e))?;
        }
        if let Some(v2) = &inner.v2 {
            remove_dir_if_present(v2)?;
        }
        match inner.dirs.iter().find(|dir| dir.exists()) {
            Some(dir) => Err(io::Error::other(format!("cannot remove {}: it is still there", dir.display()))),
            None => Ok(()),
        }
    }

    /// Every directory of this instance cgroup (v1 per controller, unified/v2),
    /// for the state file and tests.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.inner.dirs.clone()
    }

    fn make_dirs(&self) -> Result<(), String> {
        let inner = &*self.inner;
        inner.cpu.create().map_err(|e| crate_error("create", inner.cpu.path(), &e))?;
        if let Some(acct) = &inner.cpuacct {
            acct.create().map_err(|e| crate_error("create", acct.path(), &e))?;
        }
        inner.memory.create().map_err(|e| crate_error("create", inner.memory.path(), &e))?;
        inner.pids.create().map_err(|e| crate_error("create", inner.pids.path(), &e))?;
        if let Some(v2) = &inner.v2 {
            fs::create_dir_all(v2).map_err(|e| format!("cannot create {}: {e}", v2.display()))?;
        }
        Ok(())
    }

    /// Sets the limits of a cgroup that exists (a spare's, when a run claims
    /// it); `None` is no limit. The memory limit must hold what it uses now.
    pub fn limit(&self, limits: &Limits) -> Result<(), String> {
        let quota = cpu_quota_us(limits.cpu_millis)?;
        let memory_max = limit_i64("memory", limits.memory_max)?;
        let pids_max = limit_i64("pids", limits.pids_max)?;
        self.set_limits(quota, memory_max, pids_max)
    }

    /// Writes all three limits; `None` writes "no limit", so a reused cgroup
    /// never keeps an earlier run's.
    fn set_limits(&self, quota_us: Option<i64>, memory_max: Option<i64>, pids_max: Option<i64>) -> Result<(), String> {
        let inner = &*self.inner;
        let (cpu, memory, pids) = (&inner.cpu, &inner.memory, &inner.pids);
        // -1 is "no quota" on v1; the crate writes "max" for it on v2.
        cpu.set_cfs_quota_and_period(Some(quota_us.unwrap_or(-1)), Some(CPU_PERIOD_US))
            .map_err(|e| crate_error("write", cpu.path(), &e))?;
        if inner.memory_v2 {
            memory.set_limit(memory_max.unwrap_or(-1)).map_err(|e| crate_error("write", memory.path(), &e))?;
            // On v2 the crate's memswap limit is memory.swap.max: swap alone, so 0.
            if memory.path().join("memory.swap.max").exists() {
                memory.set_memswap_limit(0).map_err(|e| crate_error("write", memory.path(), &e))?;
            }
        } else if memory.path().join("memory.memsw.limit_in_bytes").exists() {
            // v1 requires memory ≤ memory+swap at every write: lift memsw, set memory, then
            // memsw = memory, which leaves no room for swap.
            memory.set_memswap_limit(-1).map_err(|e| crate_error("write", memory.path(), &e))?;
            memory.set_limit(memory_max.unwrap_or(-1)).map_err(|e| crate_error("write", memory.path(), &e))?;
            if let Some(max) = memory_max {
                memory.set_memswap_limit(max).map_err(|e| crate_error("write", memory.path(), &e))?;
            }
        } else {
            memory.set_limit(memory_max.unwrap_or(-1)).map_err(|e| crate_error("write", memory.path(), &e))?;
        }
        let pid_max = pids_max.map_or(MaxValue::Max, MaxValue::Value);
        pids.set_pid_max(pid_max).map_err(|e| crate_error("write", pids.path(), &e))?;
        Ok(())
    }

    /// Best effort: removes the directories of a cgroup that could not be set up.
    fn discard(&self) {
        for dir in &self.inner.dirs {
            let _ = fs::remove_dir(dir);
        }
    }

    /// `cgroup.events` says `populated 1` (cgroup2 only; elsewhere `cgroup.procs` tells).
    fn populated(&self) -> bool {
        let Some(v2) = &self.inner.v2 else { return false };
        fs::read_to_string(v2.join("cgroup.events")).ok().and_then(|text| keyed_value(&text, "populated")).is_some_and(|n| n > 0)
    }

    fn pressure(&self, file: &str) -> Option<Pressure> {
        let v2 = self.inner.v2.as_ref()?;
        // Absent with psi=0, and EOPNOTSUPP when the cgroup's cgroup.pressure is 0.
        parse_pressure(&fs::read_to_string(v2.join(file)).ok()?)
    }

    /// SIGKILLs `pid` if it is still in this cgroup.
    fn kill_member(&self, pid: u32) -> io::Result<()> {
        let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else { return Ok(()) };
        // Pin the process first, then check it is still a member: the PID read from
        // cgroup.procs may have been freed and reused by an unrelated process since.
        let pidfd = match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
            Ok(pidfd) => pidfd,
            Err(Errno::SRCH) => return Ok(()),
            // Before Linux 5.3: no pidfd, so the plain kill with its small race.
            Err(Errno::NOSYS) => {
                return match rustix::process::kill_process(raw, Signal::KILL) {
                    Ok(()) | Err(Errno::SRCH) => Ok(()),
                    Err(e) => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        if !self.pids().contains(&pid) {
            return Ok(());
        }
        match rustix::process::pidfd_send_signal(&pidfd, Signal::KILL) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Layout {
    fn roots(&self) -> Vec<&Root> {
        match self {
            Layout::V2 { root, .. } => vec![root],
            Layout::V1 { cpu, cpuacct, memory, pids, core } => {
                // cpu and cpuacct share one hierarchy where they are mounted together.
                let mut roots: Vec<&Root> = Vec::new();
                for root in [cpu, cpuacct, memory, pids].into_iter().chain(core) {
                    if !roots.iter().any(|r| r.dir == root.dir) {
                        roots.push(root);
                    }
                }
                roots
            }
        }
    }
}

/// `wasmlet-` and the first 12 hex digits of sha256 of the canonical data dir.
fn root_name(canonical_data_dir: &Path) -> String {
    let digest = format!("{:x}", Sha256::digest(canonical_data_dir.as_os_str().as_bytes()));
    format!("wasmlet-{}", &digest[..12])
}

/// Decides where the instance cgroups go (the table in the module's design):
/// reads the host's files but writes nothing.
fn plan(host: &Host, root_name: &str) -> Result<Layout, String> {
    let mounts = parse_mountinfo(host.mountinfo);
    let own = parse_proc_cgroup(host.proc_self_cgroup);
    let v1_mount = |controller: &str| mounts.iter().find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller));
    let v2_mount = mounts.iter().find(|m| m.fstype == "cgroup2");
    let v1_controllers = ["cpu", "cpuacct", "memory", "pids"];
    let missing_v1: Vec<&str> = v1_controllers.into_iter().filter(|c| v1_mount(c).is_none()).collect();

    if missing_v1.is_empty() {
        let v1_root = |controller: &str| -> Result<Root, String> {
            let mount = v1_mount(controller).ok_or_else(|| format!("no cgroup v1 mount carries {controller}"))?;
            let own_path = own
                .iter()
                .find(|line| line.controllers.iter().any(|c| c == controller))
                .map(|line| line.path.as_str())
                .ok_or_else(|| format!("/proc/self/cgroup has no line for the {controller} controller"))?;
            Ok(own_root(&mount.dir_of(own_path)?, root_name))
        };
        // The hybrid core is a bonus (kill, events, PSI); without a 0:: line there is none.
        let core = match (v2_mount, own.iter().find(|line| line.hierarchy == "0" && line.controllers.is_empty())) {
            (Some(mount), Some(line)) => Some(own_root(&mount.dir_of(&line.path)?, root_name)),
            _ => None,
        };
        return Ok(Layout::V1 {
            cpu: v1_root("cpu")?,
            cpuacct: v1_root("cpuacct")?,
            memory: v1_root("memory")?,
            pids: v1_root("pids")?,
            core,
        });
    }
    if missing_v1.len() < v1_controllers.len() {
        return Err(format!(
            "the cgroup v1 controllers are incomplete: {} not mounted (process mode needs cpu, cpuacct, memory and pids)",
            missing_v1.join(", ")
        ));
    }
    let Some(mount) = v2_mount else {
        return Err("no cgroup hierarchy is mounted: neither cgroup2 nor the v1 cpu, cpuacct, memory and pids controllers appear in /proc/self/mountinfo".to_string());
    };
    let own_path = own
        .iter()
        .find(|line| line.hierarchy == "0" && line.controllers.is_empty())
        .map(|line| line.path.as_str())
        .ok_or("/proc/self/cgroup has no cgroup2 (0::) line")?;
    let own_dir = mount.dir_of(own_path)?;
    let (root, move_into) = if own_dir.file_name().is_some_and(|n| n == AGENT_LEAF) {
        (parent_of(&own_dir)?, None)
    } else if host.under_systemd {
        return Err(format!(
            "systemd started this agent in {} without DelegateSubgroup={AGENT_LEAF}: systemd before 254 cannot restart a delegated agent whose instances outlive it (set Delegate=yes and DelegateSubgroup={AGENT_LEAF}, systemd ≥ 254)",
            own_dir.display()
        ));
    } else {
        let procs_path = own_dir.join("cgroup.procs");
        let procs = fs::read_to_string(&procs_path).map_err(|e| format!("cannot read {}: {e}", procs_path.display()))?;
        let others: Vec<u32> = parse_pids(&procs).into_iter().filter(|&p| p != host.pid).collect();
        if !others.is_empty() {
            return Err(format!(
                "{} holds {} other process(es) besides this agent: process mode on cgroup v2 needs a cgroup of the agent's own (run it under systemd with Delegate=yes and DelegateSubgroup={AGENT_LEAF})",
                own_dir.display(),
                others.len()
            ));
        }
        (own_dir.clone(), Some(own_dir.join(AGENT_LEAF)))
    };
    let controllers_path = root.join("cgroup.controllers");
    let controllers = fs::read_to_string(&controllers_path).map_err(|e| format!("cannot read {}: {e}", controllers_path.display()))?;
    let missing: Vec<&str> = V2_CONTROLLERS.into_iter().filter(|c| !controllers.split_whitespace().any(|have| have == *c)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} lacks {}: the controllers were not delegated to the agent (Delegate=yes)",
            controllers_path.display(),
            missing.join(", ")
        ));
    }
    Ok(Layout::V2 { root: Root { dir: root, ours: false }, move_into })
}

/// The root for instances given the agent's own cgroup directory in one hierarchy.
fn own_root(own_dir: &Path, root_name: &str) -> Root {
    match own_dir.parent() {
        Some(parent) if own_dir.file_name().is_some_and(|n| n == AGENT_LEAF) => Root { dir: parent.to_path_buf(), ours: false },
        _ => Root { dir: own_dir.join(root_name), ours: true },
    }
}

fn parent_of(dir: &Path) -> Result<PathBuf, String> {
    dir.parent().map(Path::to_path_buf).ok_or_else(|| format!("{} has no parent cgroup", dir.display()))
}

/// Makes the roots ready: on pure v2 the agent's leaf, the controllers for the
/// subtree, and `instances`; elsewhere only the `instances` directories.
fn prepare(layout: &Layout) -> Result<(), String> {
    match layout {
        Layout::V2 { root, move_into } => {
            if let Some(leaf) = move_into {
                fs::create_dir_all(leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
                // "0" moves the writing process with all its threads.
                write_file(&leaf.join("cgroup.procs"), "0").map_err(|e| e.to_string())?;
            }
            let enable = V2_CONTROLLERS.map(|c| format!("+{c}")).join(" ");
            // Fails with EBUSY while any process is still in root itself.
            write_file(&root.dir.join("cgroup.subtree_control"), &enable).map_err(|e| e.to_string())?;
            let instances = root.dir.join(INSTANCES);
            fs::create_dir_all(&instances).map_err(|e| format!("cannot create {}: {e}", instances.display()))?;
            write_file(&instances.join("cgroup.subtree_control"), &enable).map_err(|e| e.to_string())
        }
        Layout::V1 { .. } => {
            for root in layout.roots() {
                let instances = root.dir.join(INSTANCES);
                fs::create_dir_all(&instances).map_err(|e| format!("cannot create {}: {e}", instances.display()))?;
            }
            Ok(())
        }
    }
}

/// Instance names become directory names: one plain component, never hidden
/// (the probe's `.probe-*` cannot collide with an instance).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
        return Err(format!("{name:?} cannot name an instance cgroup: it must be one path component not starting with '.'"));
    }
    Ok(())
}

/// The CFS quota in µs for a 100 ms period, or `None` for no limit.
fn cpu_quota_us(cpu_millis: Option<u64>) -> Result<Option<i64>, String> {
    let Some(millis) = cpu_millis else { return Ok(None) };
    if millis < MIN_CPU_MILLIS {
        return Err(format!(
            "cpu limit {millis}m is below {MIN_CPU_MILLIS}m: the kernel refuses a CFS quota under 1000 µs per {CPU_PERIOD_US} µs period"
        ));
    }
    millis
        .checked_mul(CPU_PERIOD_US / 1000)
        .and_then(|us| i64::try_from(us).ok())
        .map(Some)
        .ok_or_else(|| format!("cpu limit {millis}m is too large for a CFS quota"))
}

fn limit_i64(what: &str, limit: Option<u64>) -> Result<Option<i64>, String> {
    limit.map(|l| i64::try_from(l).map_err(|_| format!("{what} limit {l} is too large for a cgroup"))).transpose()
}

fn read_proc(path: &str) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Writes `value` to an existing (kernel-made) file; never creates one.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path).map_err(|e| with_path(path, e))?;
    file.write_all(value.as_bytes()).map_err(|e| io::Error::new(e.kind(), format!("cannot write {value:?} to {}: {e}", path.display())))
}

fn remove_dir_if_present(dir: &Path) -> io::Result<()> {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(e.kind(), format!("cannot remove {}: {e}", dir.display()))),
        _ => Ok(()),
    }
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// "cannot <action> <path>: <OS error>" from one of the crate's errors, whose
/// own text names only the file and shows the cause with `{:?}`.
fn crate_error(action: &str, dir: &Path, e: &CrateError) -> String {
    let path = match e.kind() {
        // The crate names the file relative to the cgroup, or the whole path when open failed.
        CrateErrorKind::WriteFailed(file, _) | CrateErrorKind::ReadFailed(file) => dir.join(file),
        _ => dir.to_path_buf(),
    };
    let cause = std::error::Error::source(e).map_or_else(|| e.kind().to_string(), ToString::to_string);
    format!("cannot {action} {}: {cause}", path.display())
}

fn crate_io_error(action: &str, dir: &Path, e: &CrateError) -> io::Error {
    let kind =
        std::error::Error::source(e).and_then(|cause| cause.downcast_ref::<io::Error>()).map_or(io::ErrorKind::Other, io::Error::kind);
    io::Error::new(kind, crate_error(action, dir, e))
}

/// One mount of `/proc/self/mountinfo` (proc(5)).
#[derive(Debug, Clone, PartialEq)]
struct Mount {
    /// Field 4: the directory of the filesystem mounted here (a cgroup path for cgroupfs).
    root: String,
    /// Field 5, unescaped.
    point: PathBuf,
    fstype: String,
    /// The superblock options (for cgroup v1: the controllers).
    options: Vec<String>,
}

impl Mount {
    /// The directory of the cgroup `path` (from /proc/self/cgroup) in this mount.
    fn dir_of(&self, path: &str) -> Result<PathBuf, String> {
        let relative = if self.root == "/" {
            Some(path)
        } else {
            path.strip_prefix(self.root.as_str()).filter(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let relative = relative.filter(|rel| !rel.split('/').any(|c| c == ".." || c == "."));
        let Some(relative) = relative else {
            return Err(format!("this agent's cgroup {path} is not visible under {} (which shows {})", self.point.display(), self.root));
        };
        let relative = relative.trim_start_matches('/');
        Ok(if relative.is_empty() { self.point.clone() } else { self.point.join(relative) })
    }
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let _source = after.next()?;
            let options = after.next()?;
            Some(Mount {
                root: unescape_octal(fields.get(3)?),
                point: PathBuf::from(unescape_octal(fields.get(4)?)),
                fstype: fstype.to_string(),
                options: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq)]
struct OwnCgroup {
    hierarchy: String,
    /// Empty for the cgroup2 line (`0::/…`); `name=systemd` for named v1 ones.
    controllers: Vec<String>,
    path: String,
}

fn parse_proc_cgroup(text: &str) -> Vec<OwnCgroup> {
    text.lines()
        .filter_map(|line| {
            // The path itself may contain ':'.
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.to_string();
            let controllers = parts.next()?.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            let path = parts.next()?.to_string();
            Some(OwnCgroup { hierarchy, controllers, path })
        })
        .collect()
}

fn parse_pids(text: &str) -> Vec<u32> {
    text.split_whitespace().filter_map(|pid| pid.parse().ok()).filter(|&pid| pid > 0).collect()
}

/// The value of `key` in a flat-keyed file (`key value` per line: cpu.stat,
/// memory.events, memory.oom_control, cgroup.events).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The counters of `cpu.stat`, v1 or v2.
#[derive(Debug, Clone, Default, PartialEq)]
struct CpuStat {
    /// v2 only (`usage_usec`); v1 keeps usage in cpuacct.
    usage: Option<Duration>,
    periods: u64,
    throttled_periods: u64,
    throttled: Duration,
}

impl CpuStat {
    fn parse(text: &str) -> CpuStat {
        let value = |key| keyed_value(text, key);
        CpuStat {
            usage: value("usage_usec").map(Duration::from_micros),
            periods: value("nr_periods").unwrap_or(0),
            throttled_periods: value("nr_throttled").unwrap_or(0),
            throttled: value("throttled_usec")
                .map(Duration::from_micros)
                .or_else(|| value("throttled_time").map(Duration::from_nanos))
                .unwrap_or_default(),
        }
    }
}

/// A PSI file: `some avg10=… avg60=… avg300=… total=<µs>` and the same for `full`.
fn parse_pressure(text: &str) -> Option<Pressure> {
    let line = |kind: &str| -> Option<(f64, Duration)> {
        let fields = text.lines().find_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))?;
        let field = |name: &str| fields.split_whitespace().find_map(|f| f.strip_prefix(name)?.strip_prefix('='));
        let avg10 = field("avg10")?.parse::<f64>().ok().filter(|v| v.is_finite())?;
        let total = field("total")?.parse::<u64>().ok()?;
        Some((avg10, Duration::from_micros(total)))
    };
    let (some_avg10, some_total) = line("some")?;
    // cgroup cpu.pressure has no "full" line before Linux 5.13.
    let (full_avg10, full_total) = line("full").unwrap_or_default();
    Some(Pressure { some_avg10, full_avg10, some_total, full_total })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    // ---- parsers ----

    #[test]
    fn proc_self_cgroup_lines_give_hierarchy_controllers_and_path() {
        let text = "9:name=systemd:/\n4:memory:/process_api/c58a\n2:cpu,cpuacct:/system.slice/x.scope:cri:96b3\n0::/\n\nbad line\n";
        let own = parse_proc_cgroup(text);
        assert_eq!(own.len(), 4, "{own:?}");
        assert_eq!(own[0].controllers, ["name=systemd"]);
        assert_eq!(own[1], OwnCgroup { hierarchy: "4".into(), controllers: vec!["memory".into()], path: "/process_api/c58a".into() });
        assert_eq!(own[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(own[2].path, "/system.slice/x.scope:cri:96b3", "a ':' inside the path is kept");
        assert_eq!(own[3], OwnCgroup { hierarchy: "0".into(), controllers: vec![], path: "/".into() });
    }

    #[test]
    fn mountinfo_lines_give_root_point_type_and_options() {
        let text = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate
50 31 0:40 /docker/abc /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw
garbage
99 1 0:1 / /x rw -
";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 3, "{mounts:?}");
        assert_eq!(
            mounts[0],
            Mount {
                root: "/".into(),
                point: "/sys/fs/cgroup/cpu".into(),
                fstype: "cgroup".into(),
                options: vec!["rw".into(), "cpu".into()]
            }
        );
        assert_eq!(mounts[1].fstype, "cgroup2", "optional fields before ' - ' are skipped");
        assert_eq!(mounts[2].point, PathBuf::from("/mnt/my cgroups"), "\\040 is a space");
        assert_eq!(mounts[2].root, "/docker/abc");
    }

    #[test]
    fn a_mount_root_is_stripped_and_paths_outside_it_are_refused() {
        let mount = Mount { root: "/docker/abc".into(), point: "/sys/fs/cgroup".into(), fstype: "cgroup2".into(), options: vec![] };
        assert_eq!(mount.dir_of("/docker/abc/sub").unwrap(), PathBuf::from("/sys/fs/cgroup/sub"));
        assert_eq!(mount.dir_of("/docker/abc").unwrap(), PathBuf::from("/sys/fs/cgroup"));
        for outside in ["/docker/abcdef", "/other", "/docker/abc/../x", "/.."] {
            let err = mount.dir_of(outside).unwrap_err();
            assert!(err.contains(outside) && err.contains("not visible"), "{err}");
        }
        let root = Mount { root: "/".into(), ..mount };
        assert_eq!(root.dir_of("/").unwrap(), PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(root.dir_of("/a/b").unwrap(), PathBuf::from("/sys/fs/cgroup/a/b"));
    }

    #[test]
    fn cpu_stat_v1_counts_throttled_time_in_nanoseconds() {
        // As read on this kind of host after a 1 s spin at 200m.
        let stat = CpuStat::parse("nr_periods 14\nnr_throttled 11\nthrottled_time 717033081\nnr_bursts 0\nburst_time 0\n");
        assert_eq!(stat, CpuStat { usage: None, periods: 14, throttled_periods: 11, throttled: Duration::from_nanos(717_033_081) });
    }

    #[test]
    fn cpu_stat_v2_counts_usage_and_throttled_time_in_microseconds() {
        let text = "usage_usec 224515\nuser_usec 200000\nsystem_usec 24515\nnr_periods 14\nnr_throttled 11\nthrottled_usec 717033\nnr_bursts 0\nburst_usec 0\n";
        let stat = CpuStat::parse(text);
        assert_eq!(stat.usage, Some(Duration::from_micros(224_515)));
        assert_eq!((stat.periods, stat.throttled_periods), (14, 11));
        assert_eq!(stat.throttled, Duration::from_micros(717_033));
        // The core cpu.stat of a cgroup2 without the cpu controller: usage only.
        let core = CpuStat::parse("usage_usec 5\nuser_usec 3\nsystem_usec 2\nnice_usec 0\n");
        assert_eq!(core, CpuStat { usage: Some(Duration::from_micros(5)), ..CpuStat::default() });
        assert_eq!(CpuStat::parse(""), CpuStat::default());
        assert_eq!(CpuStat::parse("nr_periods x\nnr_throttled -1\n"), CpuStat::default(), "garbage reads as zero");
    }

    #[test]
    fn oom_kill_is_read_from_memory_events_and_oom_control() {
        let events = "low 0\nhigh 0\nmax 169\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(1));
        assert_eq!(keyed_value(events, "oom"), Some(1), "a key that prefixes another is matched whole");
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed_value("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"), None, "before Linux 4.13");
        assert_eq!(keyed_value("populated 1\nfrozen 0\n", "populated"), Some(1));
    }

    #[test]
    fn pressure_lines_give_avg10_and_totals() {
        let text = "some avg10=1.50 avg60=0.30 avg300=0.06 total=7867\nfull avg10=0.25 avg60=0.00 avg300=0.00 total=1200\n";
        assert_eq!(
            parse_pressure(text),
            Some(Pressure {
                some_avg10: 1.5,
                full_avg10: 0.25,
                some_total: Duration::from_micros(7867),
                full_total: Duration::from_micros(1200)
            })
        );
        let some_only = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n").unwrap();
        assert_eq!((some_only.some_total, some_only.full_total), (Duration::from_micros(42), Duration::ZERO));
        assert_eq!(parse_pressure(""), None);
        assert_eq!(parse_pressure("some avg10=NaN avg60=0 avg300=0 total=1\n"), None);
        assert_eq!(parse_pressure("something avg10=0.00 total=1\n"), None, "'some' must be the whole word");
    }

    #[test]
    fn limits_are_checked_before_anything_is_written() {
        assert_eq!(cpu_quota_us(Some(200)), Ok(Some(20_000)));
        assert_eq!(cpu_quota_us(Some(10)), Ok(Some(1_000)));
        assert_eq!(cpu_quota_us(None), Ok(None));
        let err = cpu_quota_us(Some(5)).unwrap_err();
        assert!(err.contains("5m") && err.contains("1000 µs"), "{err}");
        assert!(cpu_quota_us(Some(u64::MAX)).unwrap_err().contains("too large"));
        assert!(limit_i64("memory", Some(u64::MAX)).unwrap_err().contains("memory limit"));
        for bad in ["", ".", "..", ".probe-1", "a/b", "../x", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("sensor-1").is_ok());
    }

    #[test]
    fn the_root_name_is_a_hash_of_the_data_dir() {
        let a = root_name(Path::new("/var/lib/wasmlet"));
        assert!(a.starts_with("wasmlet-") && a.len() == "wasmlet-".len() + 12, "{a}");
        assert_ne!(a, root_name(Path::new("/var/lib/wasmlet2")));
        assert_eq!(a, root_name(Path::new("/var/lib/wasmlet")));
    }

    #[test]
    fn handles_are_cheap_to_share_across_threads() {
        fn shareable<T: Clone + Send + Sync>() {}
        shareable::<Cgroups>();
        shareable::<InstanceCgroup>();
    }

    // ---- the layout decision on a fake tree ----

    /// A fake /sys/fs/cgroup in a temporary directory, with mountinfo lines pointing into it.
    struct FakeHost {
        dir: tempfile::TempDir,
        mountinfo: String,
    }

    impl FakeHost {
        fn new() -> FakeHost {
            FakeHost { dir: tempfile::tempdir().unwrap(), mountinfo: String::new() }
        }
        fn path(&self, relative: &str) -> PathBuf {
            self.dir.path().join(relative)
        }
        fn mount(mut self, fstype: &str, point: &str, options: &str) -> FakeHost {
            let point = self.path(point);
            fs::create_dir_all(&point).unwrap();
            self.mountinfo.push_str(&format!("30 20 0:1 / {} rw,relatime - {fstype} {fstype} {options}\n", point.display()));
            self
        }
        fn file(self, relative: &str, text: &str) -> FakeHost {
            let path = self.path(relative);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
            self
        }
        fn plan(&self, proc_self_cgroup: &str, under_systemd: bool) -> Result<Layout, String> {
            let host = Host { proc_self_cgroup, mountinfo: &self.mountinfo, pid: 77, under_systemd };
            plan(&host, "wasmlet-hash")
        }
        fn hybrid() -> FakeHost {
            FakeHost::new()
                .mount("cgroup", "cpu", "rw,cpu")
                .mount("cgroup", "cpuacct", "rw,cpuacct")
                .mount("cgroup", "memory", "rw,memory")
                .mount("cgroup", "pids", "rw,pids")
                .mount("cgroup", "systemd", "rw,name=systemd")
                .mount("cgroup2", "unified", "rw")
        }
    }

    fn ours(dir: PathBuf) -> Root {
        Root { dir, ours: true }
    }

    const HYBRID_SELF: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/c58a\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn hybrid_puts_a_hashed_root_beside_the_agent_in_each_hierarchy_and_the_core() {
        let host = FakeHost::hybrid();
        let layout = host.plan(HYBRID_SELF, true).unwrap();
        assert_eq!(
            layout,
            Layout::V1 {
                cpu: ours(host.path("cpu/wasmlet-hash")),
                cpuacct: ours(host.path("cpuacct/wasmlet-hash")),
                memory: ours(host.path("memory/process_api/c58a/wasmlet-hash")),
                pids: ours(host.path("pids/wasmlet-hash")),
                core: Some(ours(host.path("unified/wasmlet-hash"))),
            }
        );
        prepare(&layout).unwrap();
        for dir in ["cpu", "cpuacct", "memory/process_api/c58a", "pids", "unified"] {
            assert!(host.path(dir).join("wasmlet-hash/instances").is_dir(), "{dir}");
        }
        assert!(!host.path("systemd/wasmlet-hash").exists(), "hierarchies we do not use are left alone");
    }

    #[test]
    fn v1_with_an_agent_leaf_uses_its_parent_and_a_shared_cpu_cpuacct_once() {
        let host = FakeHost::new()
            .mount("cgroup", "cpu,cpuacct", "rw,cpu,cpuacct")
            .mount("cgroup", "memory", "rw,memory")
            .mount("cgroup", "pids", "rw,pids");
        let own = "3:pids:/system.slice/w.service/agent\n2:memory:/system.slice/w.service/agent\n1:cpu,cpuacct:/system.slice/w.service/agent\n0::/system.slice/w.service/agent\n";
        let layout = host.plan(own, true).unwrap();
        let delegated = |h: &str| Root { dir: host.path(h).join("system.slice/w.service"), ours: false };
        assert_eq!(
            layout,
            Layout::V1 {
                cpu: delegated("cpu,cpuacct"),
                cpuacct: delegated("cpu,cpuacct"),
                memory: delegated("memory"),
                pids: delegated("pids"),
                core: None,
            }
        );
        assert_eq!(layout.roots().len(), 3, "cpu and cpuacct share one directory");
    }

    #[test]
    fn pure_v2_with_an_agent_leaf_delegates_its_parent() {
        let host = FakeHost::new()
            .mount("cgroup2", "v2", "rw,nsdelegate")
            .file("v2/system.slice/w.service/cgroup.controllers", "cpuset cpu io memory pids\n");
        let layout = host.plan("0::/system.slice/w.service/agent\n", true).unwrap();
        assert_eq!(layout, Layout::V2 { root: Root { dir: host.path("v2/system.slice/w.service"), ours: false }, move_into: None });
    }

    #[test]
    fn pure_v2_alone_in_its_cgroup_moves_into_an_agent_leaf() {
        let host = FakeHost::new()
            .mount("cgroup2", "v2", "rw")
            .file("v2/box/cgroup.procs", "77\n")
            .file("v2/box/cgroup.controllers", "cpu memory pids\n")
            .file("v2/box/cgroup.subtree_control", "")
            .file("v2/box/agent/cgroup.procs", "")
            .file("v2/box/instances/cgroup.subtree_control", "");
        let layout = host.plan("0::/box\n", false).unwrap();
        let root = host.path("v2/box");
        assert_eq!(layout, Layout::V2 { root: Root { dir: root.clone(), ours: false }, move_into: Some(root.join("agent")) });
        prepare(&layout).unwrap();
        assert_eq!(fs::read_to_string(root.join("agent/cgroup.procs")).unwrap(), "0");
        assert_eq!(fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(), "+cpu +memory +pids");
        assert_eq!(fs::read_to_string(root.join("instances/cgroup.subtree_control")).unwrap(), "+cpu +memory +pids");
    }

    #[test]
    fn pure_v2_refuses_a_shared_cgroup_systemd_without_subgroup_and_missing_controllers() {
        let host = FakeHost::new()
            .mount("cgroup2", "v2", "rw")
            .file("v2/shared/cgroup.procs", "12\n77\n")
            .file("v2/shared/cgroup.controllers", "cpu memory pids\n")
            .file("v2/lean/cgroup.procs", "77\n")
            .file("v2/lean/cgroup.controllers", "cpu io\n");
        let err = host.plan("0::/shared\n", false).unwrap_err();
        assert!(err.contains("v2/shared") && err.contains("1 other process"), "{err}");
        let err = host.plan("0::/shared\n", true).unwrap_err();
        assert!(err.contains("DelegateSubgroup=agent"), "{err}");
        let err = host.plan("0::/lean\n", false).unwrap_err();
        assert!(err.contains("cgroup.controllers lacks memory, pids"), "{err}");
    }

    #[test]
    fn incomplete_or_missing_hierarchies_are_refused_with_the_reason() {
        let partial = FakeHost::new().mount("cgroup", "cpu", "rw,cpu").mount("cgroup", "memory", "rw,memory");
        let err = partial.plan("2:memory:/\n1:cpu:/\n", false).unwrap_err();
        assert!(err.contains("cpuacct, pids not mounted"), "{err}");
        let err = FakeHost::new().plan("0::/\n", false).unwrap_err();
        assert!(err.contains("no cgroup hierarchy is mounted"), "{err}");
        let err = FakeHost::hybrid().plan("0::/\n", false).unwrap_err();
        assert!(err.contains("no line for the cpu controller"), "{err}");
    }

    // ---- the real cgroups of this machine (root only) ----

    /// Removes everything a test made under its own root, also when it fails.
    pub(crate) struct Cleanup {
        pub(crate) cgroups: Cgroups,
        pub(crate) data_dir: tempfile::TempDir,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            for name in self.cgroups.instances() {
                if let Some(cgroup) = self.cgroups.open(&name) {
                    let _ = cgroup.kill();
                    let _ = cgroup.remove();
                }
            }
            if let Err(e) = self.cgroups.release() {
                eprintln!("cleanup: {e}");
            }
        }
    }

    /// Discovers this machine's cgroups for a fresh data dir; None (with the
    /// reason printed) when not root, as only root may create cgroups here.
    pub(crate) fn real_cgroups(test: &str) -> Option<Cleanup> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("{test}: skipped: creating cgroups needs root");
            return None;
        }
        let data_dir = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::discover(data_dir.path()).unwrap_or_else(|e| panic!("discover: {e}"));
        Some(Cleanup { cgroups, data_dir })
    }

    /// Starts `program` placed in `cgroup` before exec, as the process executor does.
    #[allow(unsafe_code)]
    pub(crate) fn spawn_in(cgroup: &InstanceCgroup, program: &str, args: &[&str]) -> std::process::Child {
        use std::os::unix::process::CommandExt as _;
        let files = cgroup.procs_files().unwrap();
        let mut command = std::process::Command::new(program);
        command.args(args).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        // SAFETY: between fork and exec the closure only calls write(2) on
        // descriptors opened before the fork: async-signal-safe, no allocation.
        unsafe {
            command.pre_exec(move || {
                for file in &files {
                    rustix::io::write(file, b"0")?;
                }
                Ok(())
            });
        }
        command.spawn().unwrap()
    }

    /// The first directory of `cgroup` holding `file` (the hierarchy of that controller).
    fn file_of(cgroup: &InstanceCgroup, file: &str) -> Option<PathBuf> {
        cgroup.paths().into_iter().map(|dir| dir.join(file)).find(|path| path.exists())
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
    }

    fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether this host gives per-cgroup pressure: a cgroup2 directory and PSI on.
    fn expects_pressure(cgroup: &InstanceCgroup) -> bool {
        cgroup.inner.v2.is_some() && Path::new("/proc/pressure/cpu").exists()
    }

    #[test]
    fn real_limits_are_written_to_the_kernel_files_and_reuse_replaces_them() {
        let Some(env) = real_cgroups("real_limits") else { return };
        let limits = Limits { cpu_millis: Some(200), memory_max: Some(32 << 20), pids_max: Some(32) };
        let cgroup = env.cgroups.create("limits", &limits).unwrap();
        assert_eq!(cgroup.name(), "limits");
        if let Some(cpu_max) = file_of(&cgroup, "cpu.max") {
            assert_eq!(read(&cpu_max), "20000 100000");
            assert_eq!(read(&file_of(&cgroup, "memory.max").unwrap()), (32u64 << 20).to_string());
            if let Some(swap) = file_of(&cgroup, "memory.swap.max") {
                assert_eq!(read(&swap), "0");
            }
        } else {
            assert_eq!(read(&file_of(&cgroup, "cpu.cfs_quota_us").unwrap()), "20000");
            assert_eq!(read(&file_of(&cgroup, "cpu.cfs_period_us").unwrap()), "100000");
            assert_eq!(read(&file_of(&cgroup, "memory.limit_in_bytes").unwrap()), (32u64 << 20).to_string());
            if let Some(memsw) = file_of(&cgroup, "memory.memsw.limit_in_bytes") {
                assert_eq!(read(&memsw), (32u64 << 20).to_string(), "no room for swap");
            }
        }
        assert_eq!(read(&file_of(&cgroup, "pids.max").unwrap()), "32");
        let stats = cgroup.stats();
        assert_eq!(stats.memory_max, Some(32 << 20));
        assert_eq!(stats.oom_kills, 0);

        // Reused by name with a higher memory limit (v1: above the old memsw) and no CPU limit.
        let raised = Limits { cpu_millis: None, memory_max: Some(64 << 20), pids_max: None };
        let again = env.cgroups.create("limits", &raised).unwrap();
        assert_eq!(again.paths(), cgroup.paths());
        assert_eq!(again.stats().memory_max, Some(64 << 20));
        assert_eq!(read(&file_of(&again, "pids.max").unwrap()), "max");
        match file_of(&again, "cpu.max") {
            Some(cpu_max) => assert_eq!(read(&cpu_max), "max 100000"),
            None => assert_eq!(read(&file_of(&again, "cpu.cfs_quota_us").unwrap()), "-1"),
        }
        assert_eq!(env.cgroups.instances(), ["limits"]);

        let err = env.cgroups.create("tiny", &Limits { cpu_millis: Some(5), ..Limits::default() }).err().unwrap();
        assert!(err.contains("5m"), "{err}");
        assert!(env.cgroups.open("tiny").is_none(), "a refused limit makes no directory");
        assert!(env.cgroups.create("../escape", &Limits::default()).is_err());
        assert!(env.cgroups.open("../escape").is_none());
    }

    #[test]
    fn real_cpu_quota_throttles_the_instance_and_counts_its_usage() {
        let Some(env) = real_cgroups("real_cpu_quota") else { return };
        let cgroup = env.cgroups.create("spin", &Limits { cpu_millis: Some(200), ..Limits::default() }).unwrap();
        let mut child = spawn_in(&cgroup, "sh", &["-c", "while :; do :; done"]);
        assert_eq!(cgroup.pids(), [child.id()], "the child is in every directory of its cgroup");
        wait_until("the spinner was throttled 3 times", Duration::from_secs(30), || cgroup.stats().cpu_throttled_periods >= 3);
        let stats = cgroup.stats();
        // The kernel's own bound: at most one quota (20 ms) per period it ran in, and one more
        // for the runtime CPUs draw from the quota ahead (slices of 5 ms each, not yet accounted).
        let bound = Duration::from_millis(20) * u32::try_from(stats.cpu_periods + 2).unwrap();
        assert!(stats.cpu_usage > Duration::ZERO && stats.cpu_usage <= bound, "{stats:?}");
        assert!(stats.cpu_throttled > Duration::ZERO, "{stats:?}");
        if expects_pressure(&cgroup) {
            let cpu = stats.cpu_pressure.unwrap_or_else(|| panic!("no cpu pressure: {stats:?}"));
            assert!(cpu.some_total > Duration::ZERO, "a throttled spinner stalls: {cpu:?}");
            assert!(stats.memory_pressure.is_some(), "{stats:?}");
        }
        cgroup.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        cgroup.remove().unwrap();
        assert!(cgroup.paths().iter().all(|dir| !dir.exists()));
    }

    #[test]
    fn real_oom_kill_is_contained_and_counted() {
        let Some(env) = real_cgroups("real_oom_kill") else { return };
        let cgroup = env.cgroups.create("memhog", &Limits { memory_max: Some(32 << 20), ..Limits::default() }).unwrap();
        let mut child = spawn_in(&cgroup, "perl", &["-e", r#"$x = "a" x (64*1024*1024); sleep 1"#]);
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status:?}");
        assert!(cgroup.oom_kills() >= 1);
        let stats = cgroup.stats();
        assert_eq!(stats.oom_kills, cgroup.oom_kills());
        assert!(stats.memory_peak <= 32 << 20, "{stats:?}");
        if stats.memory_peak > 0 || file_of(&cgroup, "memory.max_usage_in_bytes").is_some() {
            // Charged here, not to the agent: the child was placed before exec.
            assert!(stats.memory_peak >= 16 << 20, "{stats:?}");
        }
        if expects_pressure(&cgroup) {
            let memory = stats.memory_pressure.unwrap_or_else(|| panic!("no memory pressure: {stats:?}"));
            assert!(memory.some_total > Duration::ZERO, "{memory:?}");
        }
        cgroup.remove().unwrap();
    }

    #[test]
    fn real_kill_then_remove_leaves_no_directory() {
        let Some(env) = real_cgroups("real_kill_remove") else { return };
        let cgroup = env.cgroups.create("sleepers", &Limits { pids_max: Some(32), ..Limits::default() }).unwrap();
        let mut child = spawn_in(&cgroup, "sh", &["-c", "sleep 1000 & sleep 1000 & wait"]);
        wait_until("three processes are in the cgroup", Duration::from_secs(10), || cgroup.pids().len() >= 3);
        let err = cgroup.remove().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy, "{err}");
        assert!(cgroup.paths().iter().all(|dir| dir.is_dir()), "a populated cgroup stays");

        // Adopted after a restart: a handle from open() kills and removes as well.
        let adopted = env.cgroups.open("sleepers").unwrap();
        assert_eq!(adopted.paths(), cgroup.paths());
        adopted.kill().unwrap();
        child.wait().unwrap();
        adopted.remove().unwrap();
        assert!(cgroup.paths().iter().all(|dir| !dir.exists()), "{:?}", cgroup.paths());
        assert!(env.cgroups.instances().is_empty());
        assert!(env.cgroups.open("sleepers").is_none());
        assert_eq!(cgroup.stats(), CgroupStats::default(), "a removed cgroup reads as zeros, not an error");
        assert!(cgroup.procs_files().is_err());
    }

    #[test]
    fn real_kill_without_cgroup_kill_catches_a_fork_loop() {
        let Some(env) = real_cgroups("real_kill_fork_loop") else { return };
        // The v1 hierarchies alone, as on a pure v1 host: no cgroup.kill, so one pidfd per member.
        let Layout::V1 { cpu, cpuacct, memory, pids, .. } = &*env.cgroups.layout else {
            eprintln!("real_kill_fork_loop: skipped: a pure cgroup v2 host always has cgroup.kill");
            return;
        };
        let v1_only = Cgroups {
            layout: Arc::new(Layout::V1 {
                cpu: cpu.clone(),
                cpuacct: cpuacct.clone(),
                memory: memory.clone(),
                pids: pids.clone(),
                core: None,
            }),
        };
        let cgroup = v1_only.create("forker", &Limits { pids_max: Some(16), ..Limits::default() }).unwrap();
        assert!(cgroup.paths().iter().all(|dir| !dir.join("cgroup.kill").exists()));
        // Every process forks again whenever pids.max leaves room: killed ones are replaced at once.
        let bomb = "while (1) { select(undef, undef, undef, 0.01) unless defined fork }";
        let mut child = spawn_in(&cgroup, "perl", &["-e", bomb]);
        wait_until("the fork loop filled its cgroup", Duration::from_secs(10), || cgroup.pids().len() >= 12);
        cgroup.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        cgroup.remove().unwrap();
        assert!(cgroup.paths().iter().all(|dir| !dir.exists()), "{:?}", cgroup.paths());
    }

    #[test]
    fn real_discover_twice_gives_disjoint_roots_and_release_removes_them() {
        let Some(first) = real_cgroups("real_disjoint") else { return };
        let Some(second) = real_cgroups("real_disjoint") else { return };
        let (a, b) = (first.cgroups.roots(), second.cgroups.roots());
        assert!(!a.is_empty() && a.iter().all(|root| !b.contains(root)), "{a:?} / {b:?}");
        assert_ne!(first.cgroups.describe(), second.cgroups.describe());
        let one = first.cgroups.create("same-name", &Limits::default()).unwrap();
        let two = second.cgroups.create("same-name", &Limits::default()).unwrap();
        assert!(one.paths().iter().all(|dir| !two.paths().contains(dir)));
        assert_eq!(second.cgroups.instances(), ["same-name"]);

        assert!(first.cgroups.release().is_err(), "release keeps a root with instances");
        one.remove().unwrap();
        first.cgroups.release().unwrap();
        for root in first.cgroups.roots() {
            assert!(!root.join(INSTANCES).exists(), "{}", root.display());
        }
        assert!(second.cgroups.open("same-name").is_some(), "the other agent's cgroups are untouched");
    }
}
