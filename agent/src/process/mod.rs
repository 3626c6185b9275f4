//! The process executor (`isolation: process`): every run of an instance in
//! a child process of its own, `wasmlet-agent instance` ([`child`]), inside
//! a cgroup of its own ([`cgroup`]) that holds its hard limits: CPU quota
//! (`limits.cpu`), memory (`limits.memory` plus the process's own overhead,
//! see [`ProcessSettings::memory_overhead`]) and PIDs. What the kernel
//! counts in that cgroup is the run's usage; an end by the kernel's OOM
//! killer is told apart from other kills by the cgroup's own counter.
//!
//! The agent compiles and caches the module as for in-process runs; the
//! child maps the cached artefact. A run's cgroup is created before its
//! process and removed after it: nothing outlives a run but its log.
//!
//! Runs outlive the agent ([`adopt`]): it leaves them running when it stops
//! or is killed, and the next agent of the same data dir adopts each one
//! whose instance it is asked to run with the same spec, and ends the rest.

pub mod adopt;
pub mod cgroup;
pub mod child;
mod service;
mod spare;
mod template;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmlet_api::NodeRuntime;

use self::adopt::{Orphan, ProcessId, RunState};
use self::cgroup::{Cgroups, InstanceCgroup, Limits};
use self::child::{ChildSpec, ExitRecord, ServeChild};
use crate::executor::{CgroupUsage, Entry, Executor, Exit, ExitReason, Fence, Prepared, Program, RunSpec, ServeSpec, Service, Usage};
use crate::logs::InstanceLog;
use crate::runtime::module::{LoadedModule, Program as Compiled, engine_hash};
use crate::runtime::{ModuleKind, Runtime};

/// How process-isolated runs are started and bounded.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// The agent's own binary (`/proc/self/exe`): each run is `<exe> instance --spec …`.
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    pub log_max_size: u64,
    /// Added to an instance's memory limit for its cgroup: the process itself
    /// (its runtime, threads and stacks, the guest's async stack, page tables).
    pub memory_overhead: u64,
    /// Tasks (threads) one run's process may have.
    pub pids_max: u64,
}

/// How long a stopped run has after SIGTERM before its cgroup is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How often a run's cgroup is read for its usage.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Runs instances in processes of their own.
pub struct Process {
    inner: Arc<Inner>,
}

struct Inner {
    /// The agent's runtime: compiles and caches the modules the children map.
    runtime: Runtime,
    cgroups: Cgroups,
    settings: ProcessSettings,
    engine_hash: String,
    /// Every run's keeper, so that shutdown can wait until each stopped.
    keepers: TaskTracker,
    runs: AtomicU64,
    /// Runs a previous agent left running, by instance, until one of this
    /// agent's runs of that instance adopts it or it is ended.
    orphans: Mutex<BTreeMap<String, Orphan>>,
    /// Set when the agent stops: keepers then leave their runs running.
    detached: CancellationToken,
    /// A process started ahead of the next run (see [`spare`]).
    spare: spare::Slot,
    /// Runs being kept now, and ever: the spare is kept while there are
    /// some, and for [`spare::LINGER`] after the last one ended.
    live: std::sync::atomic::AtomicUsize,
    runs_kept: AtomicU64,
}

impl Inner {
    fn orphans(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Orphan>> {
        self.orphans.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a process-isolated instance's run files are: `<instance dir>/process`.
pub(crate) fn run_dir(data_dir: &Path, instance: &str) -> PathBuf {
    crate::scratch::instance_dir(data_dir, instance).join("process")
}

impl Process {
    /// The executor, if this node can offer it: the error says why not (no
    /// writable cgroup hierarchy, …).
    pub fn new(runtime: Runtime, settings: ProcessSettings) -> Result<Process, String> {
        let cgroups = Cgroups::discover(&settings.data_dir)?;
        let orphans = adopt::find(&cgroups, &settings.data_dir).into_iter().map(|o| (o.instance.clone(), o)).collect();
        let engine_hash = engine_hash(runtime.engine());
        Ok(Process {
            inner: Arc::new(Inner {
                runtime,
                cgroups,
                settings,
                engine_hash,
                keepers: TaskTracker::new(),
                runs: AtomicU64::new(0),
                orphans: Mutex::new(orphans),
                detached: CancellationToken::new(),
                spare: spare::Slot::default(),
                live: Default::default(),
                runs_kept: Default::default(),
            }),
        })
    }

    /// One line about the cgroups in use, for the node's status.
    pub fn cgroups(&self) -> String {
        self.inner.cgroups.describe()
    }
}

impl Executor for Process {
    fn prepare(&self, digest: &str, bytes: Arc<Vec<u8>>) -> BoxFuture<'static, Result<Prepared, String>> {
        let inner = self.inner.clone();
        let digest = digest.to_string();
        Box::pin(async move {
            // Compiled and cached by the agent, as for in-process runs; loading
            // it here also checks it links before any process starts.
            let (module, outcome) = inner.runtime.modules.load(&digest, bytes).await.map_err(|e| e.to_string())?;
            Ok(Prepared { program: Arc::new(ProcessProgram { inner, module }), how: outcome.describe() })
        })
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(task)
    }

    fn node_runtime(&self) -> NodeRuntime {
        NodeRuntime::default()
    }

    fn describe(&self) -> String {
        format!("process isolation on cgroups ({})", self.inner.cgroups.describe())
    }

    fn register_metrics(&self, _registry: &mut Registry) {}

    fn outlives_agent(&self) -> bool {
        true
    }

    fn left_running(&self, instance: &str) -> Option<DateTime<Utc>> {
        self.inner.orphans().get(instance).map(|orphan| orphan.state.started_at)
    }

    fn settle(&self, wanted: &[String]) {
        let unwanted: Vec<Orphan> = {
            let mut orphans = self.inner.orphans();
            let names: Vec<String> = orphans.keys().filter(|name| !wanted.contains(name)).cloned().collect();
            names.iter().filter_map(|name| orphans.remove(name)).collect()
        };
        if unwanted.is_empty() {
            return;
        }
        let data_dir = self.inner.settings.data_dir.clone();
        self.inner.keepers.spawn_blocking(move || {
            for orphan in unwanted {
                tracing::warn!(instance = %orphan.instance, pid = orphan.state.process.pid, "ending a run a previous agent left: its instance is not wanted here any more");
                let dir = run_dir(&data_dir, &orphan.instance);
                orphan.end(&dir);
            }
        });
    }

    fn detach(&self) {
        self.inner.detached.cancel();
        self.inner.spare.discard();
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.keepers.close();
            inner.keepers.wait().await;
            inner.spare.discard();
            // Runs left running keep their cgroups for the next agent; if none is, what discovery made goes too.
            let left = inner.cgroups.instances().len();
            if left > 0 {
                tracing::info!(runs = left, "leaving process-isolated runs running: the next agent of this data dir adopts them");
                return;
            }
            let cgroups = inner.cgroups.clone();
            match tokio::task::spawn_blocking(move || cgroups.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove the agent's cgroups"),
                Err(e) => tracing::warn!(error = %e, "removing the agent's cgroups panicked"),
            }
        })
    }
}

/// A module the agent compiled, run by children that map its artefact.
struct ProcessProgram {
    inner: Arc<Inner>,
    module: Arc<LoadedModule>,
}

/// What a run's process is started for.
enum Launch<'a> {
    Run(&'a RunSpec),
    Serve(&'a ServeSpec, PathBuf),
}

impl Program for ProcessProgram {
    fn entry(&self) -> Entry {
        match self.module.program {
            Compiled::Proxy(_) => Entry::Serve,
            Compiled::Core(_) | Compiled::Command(_) => Entry::Run,
        }
    }

    fn run(self: Arc<Self>, spec: RunSpec, log: InstanceLog, usage: Arc<Usage>) -> BoxFuture<'static, Exit> {
        Box::pin(async move {
            let run =
                match self.start(&spec.instance, Launch::Run(&spec), &spec.fence, spec.memory_limit, spec.cpu_limit_millis, &log, usage) {
                    Ok(run) => run,
                    Err(exit) => return exit,
                };
            run.ended().await
        })
    }

    fn serve(
        self: Arc<Self>,
        spec: ServeSpec,
        log: InstanceLog,
        usage: Arc<Usage>,
    ) -> BoxFuture<'static, Result<Arc<dyn Service>, String>> {
        Box::pin(async move {
            if !matches!(self.module.program, Compiled::Proxy(_)) {
                return Err("the module exports no wasi:http/incoming-handler".to_string());
            }
            let socket = self.inner.settings.data_dir.join("run").join(format!("{}.sock", spec.instance));
            // sun_path holds 108 bytes with its terminating NUL.
            if socket.as_os_str().len() > 107 {
                return Err(format!(
                    "the service's socket path {} is longer than a Unix socket path may be (107 bytes): use a shorter --data-dir",
                    socket.display()
                ));
            }
            if let Some(dir) = socket.parent() {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let run = self
                .start(
                    &spec.instance,
                    Launch::Serve(&spec, socket.clone()),
                    &spec.fence,
                    spec.memory_limit,
                    spec.cpu_limit_millis,
                    &log,
                    usage,
                )
                .map_err(|exit| exit.message)?;
            service::ProcessService::connect(run, socket, spec.request_timeout).await
        })
    }
}

impl ProcessProgram {
    /// Starts a run's process in a new cgroup, and a keeper that watches it.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        instance: &str,
        launch: Launch<'_>,
        fence: &Fence,
        memory_limit: Option<u64>,
        cpu_limit_millis: Option<u64>,
        log: &InstanceLog,
        usage: Arc<Usage>,
    ) -> Result<RunHandle, Exit> {
        let inner = &self.inner;
        let settings = &inner.settings;
        let run_id = format!("{}-{}", std::process::id(), inner.runs.fetch_add(1, Ordering::Relaxed));
        let files = RunFiles::new(&run_dir(&settings.data_dir, instance));
        let socket = match &launch {
            Launch::Serve(_, socket) => Some(socket.clone()),
            Launch::Run(_) => None,
        };
        let spec = self.child_spec(run_id.clone(), launch, &files, log);
        let memory_max = memory_limit.map(|l| l.saturating_add(settings.memory_overhead));
        let limits = Limits { cpu_millis: cpu_limit_millis, memory_max, pids_max: Some(settings.pids_max) };
        let detached = inner.detached.clone();
        let keeper = move |watched, cgroup, run_id, files| {
            let (tail, tailer) = follow(log);
            Keeper {
                watched,
                cgroup,
                files,
                socket,
                tail,
                tailer,
                run_id,
                fence: fence.clone(),
                usage,
                cpu_limit_millis,
                memory_max,
                stop: CancellationToken::new(),
                detached,
                done: watch::channel(None).0,
            }
        };

        // A run a previous agent left running is watched as if this agent had started it.
        if let Some(orphan) = inner.orphans().remove(instance) {
            if !orphan.runs(&spec, &limits) {
                log.agent_line("ending the process a previous agent left running: the instance's spec changed since");
                // Rare, and bounded by the cgroup's removal wait: the agent's thread waits.
                orphan.end(&files.dir);
            } else {
                match orphan.watch() {
                    Ok(adopted) => {
                        log.agent_line(&format!("adopted its process {}, left running by the previous agent", adopted.pid));
                        let keeper = keeper(Watched::Pidfd(adopted.pidfd), adopted.cgroup, adopted.run_id, files);
                        if let Err(e) = write_fence(&keeper.files.fence, keeper.fence.deadline()) {
                            tracing::warn!(file = %keeper.files.fence.display(), error = %e, "cannot pass the fence deadline to an instance's process");
                        }
                        keeper.sample();
                        return Ok(self.keep(keeper));
                    }
                    Err((orphan, e)) => {
                        // Never expected (a pidfd is pollable since Linux 5.3): the run is ended, not left unwatched.
                        tracing::warn!(instance, error = %e, "cannot watch the process a previous agent left running");
                        orphan.end(&files.dir);
                    }
                }
            }
        }

        files.prepare(fence).map_err(|e| Exit::start_error(format!("cannot prepare {}: {e}", files.dir.display())))?;
        files.write_spec(&spec).map_err(|e| Exit::start_error(format!("cannot write {}: {e}", files.spec.display())))?;
        // A spare already runs in a cgroup of its own (moving a process into a
        // cgroup can take the kernel a grace period: the spare paid it ahead).
        let (cgroup, watched, pid) = match inner.spare.claim(&files.spec, &limits) {
            Some(claimed) => (claimed.cgroup, Watched::Pidfd(claimed.pidfd), Some(claimed.pid)),
            None => {
                let cgroup = inner.cgroups.create(&format!("{instance}.{run_id}"), &limits).map_err(Exit::start_error)?;
                match spawn_child(&settings.exe, &files, &cgroup) {
                    Ok(child) => {
                        let pid = child.id();
                        (cgroup, Watched::Child(child), pid)
                    }
                    Err(e) => {
                        let _ = cgroup.remove();
                        return Err(Exit::start_error(format!("cannot start the instance's process: {e}")));
                    }
                }
            }
        };
        let cgroup_name = cgroup.name().to_string();
        // What the next agent adopts the run by, should this one stop first.
        let state = pid.ok_or_else(|| "the process ended at once".to_string()).and_then(ProcessId::of).map(|process| RunState {
            run_id: run_id.clone(),
            process,
            cgroup: cgroup_name,
            started_at: Utc::now(),
            cpu_limit_millis,
            memory_max,
            pids_max: limits.pids_max,
        });
        if let Err(e) = state.map_err(std::io::Error::other).and_then(|state| adopt::write_state(&files.dir, &state)) {
            tracing::warn!(instance, error = %e, "cannot record the run's state: an agent restart will end it");
        }
        let run = self.keep(keeper(watched, cgroup, run_id, files));
        spare::prepare(inner);
        Ok(run)
    }

    fn keep(&self, keeper: Keeper) -> RunHandle {
        let ended = keeper.done.subscribe();
        let stop = keeper.stop.clone();
        let inner = self.inner.clone();
        inner.live.fetch_add(1, Ordering::Relaxed);
        inner.runs_kept.fetch_add(1, Ordering::Relaxed);
        self.inner.keepers.spawn(async move {
            keeper.keep().await;
            if inner.live.fetch_sub(1, Ordering::Relaxed) == 1 {
                spare::linger(inner);
            }
        });
        RunHandle { ended, _stop: stop.drop_guard() }
    }

    /// The spec file of a run.
    fn child_spec(&self, run_id: String, launch: Launch<'_>, files: &RunFiles, log: &InstanceLog) -> ChildSpec {
        let inner = &self.inner;
        let spec = ChildSpec {
            run_id,
            engine_hash: inner.engine_hash.clone(),
            memory_reservation: inner.runtime.memory_reservation,
            epoch_tick_ms: inner.runtime.epoch_tick.as_millis() as u64,
            cache_dir: inner.runtime.modules.dir().to_path_buf(),
            digest: self.module.digest.clone(),
            component: self.module.kind == ModuleKind::Component,
            log_dir: log.dir(),
            log_max_size: inner.settings.log_max_size,
            fence_path: files.fence.clone(),
            exit_path: files.exit.clone(),
            program: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            cpu_time_limit_ms: None,
            serve: None,
        };
        match launch {
            Launch::Run(run) => ChildSpec {
                program: run.program.clone(),
                args: run.args.clone(),
                env: run.env.clone(),
                dirs: run.dirs.clone(),
                cpu_time_limit_ms: run.cpu_time_limit.map(|d| d.as_millis() as u64),
                ..spec
            },
            Launch::Serve(serve, socket) => ChildSpec {
                program: serve.program.clone(),
                env: serve.env.clone(),
                dirs: serve.dirs.clone(),
                serve: Some(ServeChild {
                    socket,
                    memory_limit: serve.memory_limit,
                    request_timeout_ms: serve.request_timeout.as_millis() as u64,
                    max_request_body: serve.max_request_body,
                    max_response_body: serve.max_response_body,
                    outbound: serve.outbound.hosts(),
                }),
                ..spec
            },
        }
    }
}

/// Feeds the log's followers from its file, until the token is cancelled.
fn follow(log: &InstanceLog) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let tail = CancellationToken::new();
    let tailer = {
        let (log, tail) = (log.clone(), tail.clone());
        tokio::spawn(async move { log.follow_file(tail).await })
    };
    (tail, tailer)
}

/// A run under way. Dropping it stops the run's process.
pub(crate) struct RunHandle {
    ended: watch::Receiver<Option<Exit>>,
    _stop: tokio_util::sync::DropGuard,
}

impl RunHandle {
    /// How the run ended, once it has.
    pub(crate) fn ended(&self) -> BoxFuture<'static, Exit> {
        let mut ended = self.ended.clone();
        Box::pin(async move {
            match ended.wait_for(Option::is_some).await {
                Ok(exit) => exit.clone().unwrap_or_else(|| Exit::start_error("the run's keeper ended without an exit")),
                Err(_) => Exit::start_error("the run's keeper ended without an exit"),
            }
        })
    }
}

const STDERR_FILE: &str = "stderr";

/// The files of a run, in the instance's directory.
pub(crate) struct RunFiles {
    dir: PathBuf,
    spec: PathBuf,
    fence: PathBuf,
    exit: PathBuf,
    /// The process's own stdout and stderr: what it says before it has a log (setup errors, panics).
    stderr: PathBuf,
}

impl RunFiles {
    fn new(dir: &Path) -> RunFiles {
        RunFiles {
            dir: dir.to_path_buf(),
            spec: dir.join("spec.json"),
            fence: dir.join("fence"),
            exit: dir.join("exit.json"),
            stderr: dir.join(STDERR_FILE),
        }
    }

    /// The stderr file of the run whose spec file is `spec`.
    pub(crate) fn stderr_beside(spec: &Path) -> PathBuf {
        spec.with_file_name(STDERR_FILE)
    }

    fn prepare(&self, fence: &Fence) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        for stale in [&self.exit, &self.stderr] {
            match std::fs::remove_file(stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        write_fence(&self.fence, fence.deadline())
    }

    fn write_spec(&self, spec: &ChildSpec) -> std::io::Result<()> {
        crate::files::write_atomically(&self.spec, &serde_json::to_vec(spec)?, 0o600)
    }

    /// The exit file of run `run_id`, if that run wrote one.
    fn exit_of(&self, run_id: &str) -> Option<Exit> {
        let record: ExitRecord = serde_json::from_slice(&std::fs::read(&self.exit).ok()?).ok()?;
        (record.run_id == run_id).then_some(record.exit)
    }

    /// The last lines the process wrote to its own stderr.
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join("; ")
    }
}

fn write_fence(path: &Path, deadline: i64) -> std::io::Result<()> {
    crate::files::write_atomically(path, deadline.to_string().as_bytes(), 0o600)
}

/// Starts `<exe> instance --spec <spec>` in its own session, placed in
/// `cgroup` before it executes anything.
fn spawn_child(exe: &Path, files: &RunFiles, cgroup: &InstanceCgroup) -> std::io::Result<tokio::process::Child> {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&files.stderr)?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("instance")
        .arg("--spec")
        .arg(&files.spec)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr.try_clone()?))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(false);
    let procs = cgroup.procs_files()?;
    place_before_exec(&mut command, &procs);
    let child = command.spawn();
    drop(procs);
    child
}

#[allow(unsafe_code)]
fn place_before_exec(command: &mut tokio::process::Command, procs: &[std::fs::File]) {
    use std::os::fd::AsRawFd as _;
    let fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes none but setsid(2) and
    // write(2), and allocates nothing (the descriptors were collected before
    // the fork, and stay open in the parent until the spawn has returned).
    // Joining the cgroup here, before exec, charges every page of the new
    // image to the run rather than to the agent; a new session keeps the
    // process out of the agent's process group and its signals.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in &fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The process of a run, as its keeper waits for it.
enum Watched {
    /// Started by this agent: its exit status is known.
    Child(tokio::process::Child),
    /// Not the agent's child (left running by a previous agent, or forked
    /// by the template): a pidfd, readable once it ended.
    Pidfd(tokio::io::unix::AsyncFd<OwnedFd>),
}

impl Watched {
    /// Waits for the end; the status only where it can be known (a child's).
    async fn wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        match self {
            Watched::Child(child) => child.wait().await.map(Some),
            Watched::Pidfd(pidfd) => pidfd.readable().await.map(|_| None),
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        match self {
            Watched::Child(child) => {
                if let Some(pid) = child.id().and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
                    let _ = rustix::process::kill_process(pid, signal);
                }
            }
            Watched::Pidfd(pidfd) => {
                let _ = rustix::process::pidfd_send_signal(pidfd.get_ref(), signal);
            }
        }
    }
}

/// Watches one run's process: keeps its usage and fence file current, stops
/// it when asked, says how it ended, and removes its cgroup. When the agent
/// stops, it leaves the run running for the next agent instead.
struct Keeper {
    watched: Watched,
    cgroup: InstanceCgroup,
    files: RunFiles,
    /// A service's socket, removed when its process ends.
    socket: Option<PathBuf>,
    /// Ends the log's tailer, which ends once it read what the process wrote.
    tail: CancellationToken,
    tailer: tokio::task::JoinHandle<()>,
    run_id: String,
    fence: Fence,
    usage: Arc<Usage>,
    cpu_limit_millis: Option<u64>,
    memory_max: Option<u64>,
    stop: CancellationToken,
    /// The agent is stopping: a stop then leaves the run running.
    detached: CancellationToken,
    done: watch::Sender<Option<Exit>>,
}

impl Keeper {
    async fn keep(mut self) {
        let mut fence = self.fence.deadline();
        let mut stopping: Option<tokio::time::Instant> = None;
        let mut killed = false;
        let mut ticks = tokio::time::interval(SAMPLE_EVERY.min(Duration::from_millis(250)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sampled = tokio::time::Instant::now();
        let status = loop {
            tokio::select! {
                status = self.watched.wait() => break status,
                _ = self.stop.cancelled(), if stopping.is_none() => {
                    if self.detached.is_cancelled() {
                        // Its files, socket and cgroup stay: the next agent adopts it by them.
                        self.tail.cancel();
                        let _ = (&mut self.tailer).await;
                        return;
                    }
                    stopping = Some(tokio::time::Instant::now() + STOP_GRACE);
                    self.watched.signal(rustix::process::Signal::TERM);
                }
                _ = ticks.tick() => {
                    let now_fence = self.fence.deadline();
                    if now_fence != fence {
                        fence = now_fence;
                        if let Err(e) = write_fence(&self.files.fence, fence) {
                            tracing::warn!(file = %self.files.fence.display(), error = %e, "cannot pass the fence deadline to an instance's process");
                        }
                    }
                    if sampled.elapsed() >= SAMPLE_EVERY {
                        sampled = tokio::time::Instant::now();
                        self.sample();
                    }
                    if let Some(deadline) = stopping && !killed && tokio::time::Instant::now() >= deadline {
                        killed = true;
                        let _ = self.cgroup.kill();
                    }
                }
            }
        };
        self.sample();
        let exit = match status {
            Ok(status) => self.account(status),
            Err(e) => Exit::start_error(format!("cannot wait for the instance's process: {e}")),
        };
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
        let _ = std::fs::remove_file(self.files.dir.join(adopt::STATE_FILE));
        self.tail.cancel();
        let _ = (&mut self.tailer).await;
        // Anything it started is gone with it; then the cgroup can go.
        let _ = self.cgroup.kill();
        let cgroup = self.cgroup.clone();
        match tokio::task::spawn_blocking(move || cgroup.remove()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(cgroup = %self.cgroup.name(), error = %e, "cannot remove a finished run's cgroup"),
            Err(e) => tracing::warn!(error = %e, "removing a cgroup panicked"),
        }
        let _ = self.done.send(Some(exit));
    }

    fn sample(&self) {
        let stats = self.cgroup.stats();
        self.usage.memory.store(stats.memory_current, Ordering::Relaxed);
        *self.usage.cgroup.lock().unwrap_or_else(|p| p.into_inner()) = Some(CgroupUsage { stats, cpu_limit_millis: self.cpu_limit_millis });
    }

    /// How the run ended: its exit file when it wrote one; else what the
    /// kernel says (the OOM killer's counter in its cgroup, the signal).
    fn account(&self, status: Option<ExitStatus>) -> Exit {
        if let Some(exit) = self.files.exit_of(&self.run_id) {
            return exit;
        }
        let oom_kills = self.cgroup.oom_kills();
        let Some(status) = status else {
            // Not the agent's child: its exit status went to its parent.
            return if oom_kills > 0 {
                self.oom_killed()
            } else if self.stop.is_cancelled() {
                Exit { code: None, reason: ExitReason::Error, message: "stopped by the agent".to_string() }
            } else {
                Exit {
                    code: None,
                    reason: ExitReason::Error,
                    message: "the instance's process ended without saying how (its exit status went to its parent, which is not the agent)"
                        .to_string(),
                }
            };
        };
        match status.signal() {
            Some(libc::SIGKILL) if oom_kills > 0 => self.oom_killed(),
            Some(signal) if self.stop.is_cancelled() => {
                Exit { code: None, reason: ExitReason::Error, message: format!("stopped by the agent (signal {signal})") }
            }
            Some(signal) => {
                Exit { code: None, reason: ExitReason::Error, message: format!("the instance's process ended by signal {signal}") }
            }
            None => {
                let said = self.files.stderr_tail();
                let code = status.code().unwrap_or(-1);
                Exit::start_error(if said.is_empty() {
                    format!("the instance's process exited with code {code} before its run ended")
                } else {
                    format!("the instance's process exited with code {code}: {said}")
                })
            }
        }
    }

    fn oom_killed(&self) -> Exit {
        Exit {
            code: None,
            reason: ExitReason::OomKilled,
            message: format!(
                "killed by the kernel's OOM killer: the instance's cgroup reached its memory limit of {} (limits.memory plus the process's own overhead)",
                self.memory_max.map_or_else(|| "the node's".to_string(), |m| wasmlet_api::Bytes::new(m).human())
            ),
        }
    }
}
