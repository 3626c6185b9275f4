//! The supervisor keeps the desired instances running: it starts what is
//! missing, stops what is no longer wanted, restarts what changed, and
//! restarts what ended according to its restart policy, with exponential
//! back-off (`CrashLoopBackOff`), the way a kubelet keeps containers alive.
//!
//! Each instance is one tokio task. Its status, usage and log are shared with
//! the API; a change wakes the reporter so the node's instance list follows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wasmlet_api::{
    EventType, Instance, InstanceSpec, InstanceStatus, InstanceSummary, InstanceUsage, Phase, RestartPolicy, Termination, Workload,
    WorkloadType,
};

use crate::events::EventLog;
use crate::executor::{Entry, Executors, Exit, ExitReason, Fence, OutboundPolicy, Program, RunSpec, ServeSpec, Service, Usage};
use crate::grants::{GrantedDir, Preopen};
use crate::logs::InstanceLog;
use crate::modules::Module;
use crate::modules::cache::DiskCache;
use crate::scratch;

/// An instance the agent should run, with everything needed to start it.
#[derive(Clone)]
pub struct DesiredInstance {
    pub name: String,
    pub workload: Arc<Workload>,
    /// The module's bytes, or where to pull them; their digest is the workload's `module.digest`.
    pub module: Module,
    /// Host directories granted, already checked against the allow-list.
    /// Scratch directories are made by the supervisor.
    pub host_dirs: Vec<Preopen>,
    /// Changes whenever the instance must be restarted to apply a change.
    pub generation: String,
    /// The master's epoch for the instance; 0 for static manifests.
    pub epoch: u64,
    /// Why the instance may not run here, when it may not (it is reported Failed).
    pub refused: Option<String>,
    /// The instance does not run past this deadline (see [`Fence`]).
    pub fence: Fence,
}

/// Where desired instances come from. Each source owns its instances: one
/// source's reconcile never stops another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Files in `--manifests-dir`.
    Manifests,
    /// The master's assignment.
    Master,
}

/// Restart back-off: starts at `initial`, doubles to `max`, and starts over
/// after a run that lasted `reset`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset: Duration,
}

#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub data_dir: PathBuf,
    pub backoff: Backoff,
    pub log_max_size: u64,
    /// The node's module cache on disk: told which modules the desired instances need.
    pub module_cache: Arc<DiskCache>,
    pub services: ServiceSettings,
    /// Memory limit of instances whose workload sets none.
    pub default_memory_limit: u64,
    /// Scratch dir limit of instances whose workload sets no `limits.ephemeralStorage`.
    pub default_ephemeral_storage: u64,
    /// Where this agent's instances come from. Once each has said what it
    /// wants, runs a previous agent left for any other instance are ended.
    pub sources: Vec<Source>,
}

/// Bounds of every service's requests, unless its manifest says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSettings {
    pub request_timeout: Duration,
    pub max_request_body: usize,
    pub max_response_body: usize,
    /// Requests one instance serves at once; more wait for a turn.
    pub concurrency: usize,
}

/// How often readiness and liveness probes of services run.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// A Running service instance, as the ingress sees it.
#[derive(Clone)]
pub struct Endpoint {
    pub instance: String,
    pub workload: Arc<Workload>,
    pub service: Arc<dyn Service>,
    /// Bounds concurrent requests; waiting for a permit is the back-pressure.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// What the ingress counted of the instance's answers.
    pub traffic: Arc<Traffic>,
}

/// What the ingress counted of one instance's answers since it started on
/// this agent: requests, server errors, latency buckets
/// ([`wasmlet_api::instance::LATENCY_BUCKETS_MS`]). Read by the master for
/// the health gates of a gray release (`status.usage.requests`).
#[derive(Debug, Default)]
pub struct Traffic {
    requests: AtomicU64,
    server_errors: AtomicU64,
    buckets: [AtomicU64; wasmlet_api::instance::LATENCY_BUCKETS_MS.len()],
}

impl Traffic {
    /// Counts one answer of `status` given after `elapsed`.
    pub fn record(&self, status: hyper::StatusCode, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status.is_server_error() {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[wasmlet_api::RequestFigures::bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// The figures so far; None before the first request.
    pub fn figures(&self) -> Option<wasmlet_api::RequestFigures> {
        let requests = self.requests.load(Ordering::Relaxed);
        (requests > 0).then(|| wasmlet_api::RequestFigures {
            requests,
            server_errors: self.server_errors.load(Ordering::Relaxed),
            latency_buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        })
    }
}

/// Metric labels: name and value pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Per-route figures of the ingress, by workload.
pub struct IngressMetrics {
    pub requests: Family<Labels, prometheus_client::metrics::counter::Counter>,
    pub latency: Family<Labels, Histogram, fn() -> Histogram>,
    pub in_flight: Family<Labels, Gauge>,
    /// Requests that arrived over a peer connection authenticated with a node certificate, by peer node.
    pub peer_requests: Family<Labels, prometheus_client::metrics::counter::Counter>,
}

impl Default for IngressMetrics {
    fn default() -> Self {
        fn buckets() -> Histogram {
            // 0.25 ms to about 8 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.00025, 2.0, 16))
        }
        IngressMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(buckets),
            in_flight: Family::default(),
            peer_requests: Family::default(),
        }
    }
}

pub struct Supervisor {
    /// Requests, latency and in-flight requests of the ingress, by workload.
    pub ingress_metrics: IngressMetrics,
    /// Every service's ingress endpoints across the cluster, from the master.
    pub remote_endpoints: std::sync::RwLock<Vec<wasmlet_api::protocol::ServiceEndpoints>>,
    executors: Executors,
    settings: SupervisorSettings,
    node: String,
    pub events: Arc<EventLog>,
    /// Instances by name.
    instances: Mutex<BTreeMap<String, Supervised>>,
    /// Bumped on every phase change; the reporter and the master link watch it.
    pub changed: watch::Sender<u64>,
    /// The sources that have not reconciled yet since the agent started.
    unsettled: Mutex<Vec<Source>>,
    /// Set when the agent stops.
    detaching: std::sync::atomic::AtomicBool,
}

/// What is kept of a status that can outlive the agent (`<instance dir>/status.json`):
/// a run the next agent adopts keeps its restarts and last termination.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeptStatus {
    generation: String,
    status: InstanceStatus,
}

const KEPT_STATUS: &str = "status.json";

struct Supervised {
    source: Source,
    generation: String,
    workload: Arc<Workload>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What an instance's task shares with readers.
struct Shared {
    name: String,
    workload: String,
    epoch: u64,
    fence: Fence,
    /// How its runs are isolated (the workload's `isolation`, else the node's default).
    isolation: wasmlet_api::Isolation,
    status: Mutex<InstanceStatus>,
    /// Memory now and CPU of the current run.
    usage: Mutex<Arc<Usage>>,
    /// CPU time of the runs before the current one.
    cpu_before: Mutex<Duration>,
    log: InstanceLog,
    /// Set while a service instance takes requests.
    serving: Mutex<Option<Endpoint>>,
    /// What the ingress counted of its answers, over all its runs.
    traffic: Arc<Traffic>,
    /// Most its scratch dirs may hold (`limits.ephemeralStorage` or the node's default).
    ephemeral_limit: u64,
    /// Whether it has scratch dirs at all (else there is nothing to measure).
    has_scratch: bool,
    /// What its scratch dirs held at the last measurement.
    ephemeral_bytes: std::sync::atomic::AtomicU64,
    /// Why the current run must end: its scratch dirs went over their limit.
    eviction: Mutex<Option<String>>,
    /// Wakes the instance's task when `eviction` is set.
    evict: tokio::sync::Notify,
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut InstanceStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Ends the current run (or service) for going over the scratch dir limit.
    fn evict(&self, why: String) {
        *self.eviction.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.evict.notify_one();
    }

    /// Waits until the instance is evicted, and says why.
    async fn evicted(&self) -> String {
        loop {
            if let Some(why) = self.eviction.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return why;
            }
            self.evict.notified().await;
        }
    }

    fn snapshot(&self) -> Instance {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let before = *self.cpu_before.lock().unwrap_or_else(|p| p.into_inner());
        if status.phase == Phase::Running && self.fence.expired() {
            // The guest stops at its next epoch tick; it must not count as running.
            status.phase = Phase::Pending;
            status.reason = Some("StoppedOnDisconnect".into());
        }
        let running = status.phase == Phase::Running;
        let mut figures = InstanceUsage {
            memory_bytes: if running { usage.memory.load(Ordering::Relaxed) } else { 0 },
            cpu_seconds: (before + if running { usage.cpu_used() } else { Duration::ZERO }).as_secs_f64(),
            isolation: Some(self.isolation.as_str().to_string()),
            ..InstanceUsage::default()
        };
        if let Some(cgroup) = usage.cgroup().filter(|_| running) {
            let stats = &cgroup.stats;
            let pressure = |p: Option<crate::process::cgroup::Pressure>| {
                p.map(|p| wasmlet_api::PressureFigures {
                    some_avg10: p.some_avg10,
                    full_avg10: p.full_avg10,
                    some_seconds: p.some_total.as_secs_f64(),
                    full_seconds: p.full_total.as_secs_f64(),
                })
            };
            figures.cpu_limit_millis = cgroup.cpu_limit_millis;
            figures.memory_limit_bytes = stats.memory_max;
            figures.cpu_periods = Some(stats.cpu_periods);
            figures.cpu_throttled_periods = Some(stats.cpu_throttled_periods);
            figures.cpu_throttled_seconds = Some(stats.cpu_throttled.as_secs_f64());
            figures.oom_kills = Some(stats.oom_kills);
            figures.cpu_pressure = pressure(stats.cpu_pressure);
            figures.memory_pressure = pressure(stats.memory_pressure);
        }
        figures.requests = self.traffic.figures();
        status.usage = Some(figures);
        let mut instance =
            Instance::new(&self.name, InstanceSpec { workload: self.workload.clone(), node: String::new(), epoch: self.epoch });
        instance.status = status;
        instance
    }
}

impl Supervisor {
    pub fn new(executors: Executors, settings: SupervisorSettings, node: &str) -> Arc<Supervisor> {
        if settings.sources.is_empty() {
            // Nothing will ever ask for an instance here.
            executors.settle(&[]);
            settings.module_cache.pin(&[]);
        }
        Arc::new(Supervisor {
            ingress_metrics: IngressMetrics::default(),
            remote_endpoints: Default::default(),
            unsettled: Mutex::new(settings.sources.clone()),
            executors,
            settings,
            node: node.to_string(),
            events: Arc::new(EventLog::new(node)),
            instances: Mutex::new(BTreeMap::new()),
            changed: watch::Sender::new(0),
            detaching: Default::default(),
        })
    }

    /// Makes the instances of `source` match `desired`.
    pub fn reconcile(self: &Arc<Self>, source: Source, desired: Vec<DesiredInstance>) {
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted: BTreeMap<String, DesiredInstance> = BTreeMap::new();
        for d in desired {
            match instances.get(&d.name) {
                Some(other) if other.source != source => self.events.record(
                    EventType::Warning,
                    "NameConflict",
                    "Instance",
                    &d.name,
                    format!("not started: an instance of that name already runs from {:?}", other.source),
                ),
                _ => {
                    wanted.insert(d.name.clone(), d);
                }
            }
        }
        self.pin_modules(&instances, source, &wanted);
        let stale: Vec<String> = instances
            .iter()
            .filter(|(_, s)| s.source == source)
            .filter(|(name, s)| wanted.get(*name).is_none_or(|d| d.generation != s.generation))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let Some(old) = instances.remove(&name) else { continue };
            old.cancel.cancel();
            let removed = !wanted.contains_key(&name);
            self.events.record(
                EventType::Normal,
                "Killing",
                "Instance",
                &name,
                if removed { "stopping: no longer wanted" } else { "stopping to apply a changed spec" },
            );
            if removed {
                let supervisor = self.clone();
                tokio::spawn(async move {
                    let _ = old.task.await;
                    // Only if the name was not started again meanwhile: its files are the new instance's now.
                    let reused = supervisor.instances.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&name);
                    if !reused {
                        for dir in [supervisor.instance_dir(&name), supervisor.log_dir(&name)] {
                            let _ = tokio::fs::remove_dir_all(dir).await;
                        }
                    }
                });
            }
        }
        for (name, d) in wanted {
            if instances.contains_key(&name) {
                continue;
            }
            match self.start(source, d) {
                Ok(s) => {
                    instances.insert(name, s);
                }
                Err(e) => self.events.record(EventType::Warning, "FailedToStart", "Instance", &name, format!("{e:#}")),
            }
        }
        let mut unsettled = self.unsettled.lock().unwrap_or_else(|p| p.into_inner());
        if !unsettled.is_empty() {
            unsettled.retain(|s| *s != source);
            if unsettled.is_empty() {
                // Every source has said what it wants: what a previous agent left for others goes.
                let wanted: Vec<String> = instances.keys().cloned().collect();
                self.executors.settle(&wanted);
            }
        }
        drop(unsettled);
        drop(instances);
        self.notify_change();
    }

    /// Tells the module cache which modules the node's instances need (those
    /// of `source` about to be `wanted`, the other sources' as they are),
    /// before any new one starts pulling or compiling. Only once every source
    /// has said what it wants: before that, what is needed is not known.
    fn pin_modules(&self, instances: &BTreeMap<String, Supervised>, source: Source, wanted: &BTreeMap<String, DesiredInstance>) {
        if !self.unsettled.lock().unwrap_or_else(|p| p.into_inner()).iter().all(|s| *s == source) {
            return;
        }
        let others = instances.values().filter(|s| s.source != source).map(|s| &s.workload.spec.module.digest);
        let needed: BTreeSet<&String> = others.chain(wanted.values().map(|d| &d.workload.spec.module.digest)).collect();
        self.settings.module_cache.pin(needed);
    }

    fn start(self: &Arc<Self>, source: Source, desired: DesiredInstance) -> anyhow::Result<Supervised> {
        let log = InstanceLog::open(&self.log_dir(&desired.name), self.settings.log_max_size)?;
        // A run a previous agent left running goes on with the status it had.
        let resumed = self.executors.left_running(&desired.workload, &desired.name).map(|started_at| {
            let kept = std::fs::read(self.instance_dir(&desired.name).join(KEPT_STATUS))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<KeptStatus>(&bytes).ok())
                .filter(|kept| kept.generation == desired.generation);
            let mut status = kept.map(|k| k.status).unwrap_or_default();
            status.phase = Phase::Running;
            status.started_at = Some(started_at);
            status.reason = None;
            status.message = None;
            status.usage = None;
            status
        });
        let shared = Arc::new(Shared {
            name: desired.name.clone(),
            workload: desired.workload.metadata.name.clone(),
            epoch: desired.epoch,
            fence: desired.fence.clone(),
            isolation: self.executors.isolation(&desired.workload),
            status: Mutex::new(resumed.clone().unwrap_or_default()),
            usage: Mutex::new(Arc::new(Usage::default())),
            cpu_before: Mutex::new(Duration::ZERO),
            log,
            serving: Mutex::new(None),
            traffic: Arc::default(),
            ephemeral_limit: desired
                .workload
                .spec
                .resources
                .limits
                .ephemeral_storage
                .map_or(self.settings.default_ephemeral_storage, |b| b.get()),
            has_scratch: desired.workload.spec.dirs.iter().any(|d| d.host_path.is_none()),
            ephemeral_bytes: Default::default(),
            eviction: Mutex::new(None),
            evict: tokio::sync::Notify::new(),
        });
        let cancel = CancellationToken::new();
        let generation = desired.generation.clone();
        let workload = desired.workload.clone();
        let resumed = resumed.is_some();
        let task = self.executors.in_process.spawn(Box::pin(self.clone().supervise(desired, shared.clone(), cancel.clone(), resumed)));
        Ok(Supervised { source, generation, workload, shared, cancel, task })
    }

    fn instance_dir(&self, name: &str) -> PathBuf {
        scratch::instance_dir(&self.settings.data_dir, name)
    }

    fn log_dir(&self, name: &str) -> PathBuf {
        self.settings.data_dir.join("logs").join(name)
    }

    /// The run specification: the workload's args and env, its host grants and
    /// a scratch directory per granted path without a host path. Directories
    /// are opened (scratch dirs created) at every start, not here.
    fn run_spec(&self, d: &DesiredInstance) -> RunSpec {
        let spec = &d.workload.spec;
        let mut dirs = d.host_dirs.clone();
        for (i, grant) in spec.dirs.iter().enumerate().filter(|(_, g)| g.host_path.is_none()) {
            let names = scratch::dir_names(&d.name, i);
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let dir = GrantedDir::scratch(i, &grant.path, &self.settings.data_dir, &names);
            dirs.push(Preopen { dir, guest: grant.path.clone(), read_only: grant.read_only });
        }
        RunSpec {
            instance: d.name.clone(),
            program: d.workload.metadata.name.clone(),
            args: spec.args.clone(),
            env: spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            dirs,
            memory_limit: Some(spec.resources.limits.memory.map_or(self.settings.default_memory_limit, |m| m.get())),
            cpu_time_limit: spec.resources.limits.cpu_time.map(|d| d.get()),
            cpu_limit_millis: spec.resources.limits.cpu.map(|c| c.millis()),
            fence: d.fence.clone(),
        }
    }

    /// Keeps one instance running. `resumed`: its first run is one a previous
    /// agent left running, which the executor adopts.
    async fn supervise(self: Arc<Self>, desired: DesiredInstance, shared: Arc<Shared>, cancel: CancellationToken, mut resumed: bool) {
        let name = desired.name.clone();
        let log = shared.log.clone();
        let workload = desired.workload.clone();
        let policy = workload.restart_policy();
        let backoff = self.settings.backoff;
        let mut delay = backoff.initial;
        let digest = workload.spec.module.digest.clone();

        if let Some(why) = &desired.refused {
            self.events.record(EventType::Warning, "AdmissionFailed", "Instance", &name, why.clone());
            return self.finish(&shared, Phase::Failed, None, "AdmissionFailed", why);
        }
        let executor = match self.executors.for_workload(&workload) {
            Ok(executor) => executor.clone(),
            Err(why) => {
                self.events.record(EventType::Warning, "IsolationUnavailable", "Instance", &name, why.clone());
                log.agent_line(&format!("not started: {why}"));
                return self.finish(&shared, Phase::Failed, None, "IsolationUnavailable", &why);
            }
        };
        let Some(module) = self.pull(&desired, &shared, &cancel).await else { return };
        let spec = self.run_spec(&desired);
        // Prepared once, and held while the instance is wanted (also between
        // restarts): the compiled module stays in memory as long as an instance holds it.
        let mut prepared_program: Option<Arc<dyn Program>> = None;
        loop {
            if !self.wait_for_fence(&shared, &cancel).await {
                return;
            }
            if !resumed {
                shared.update(|s| {
                    s.phase = Phase::Starting;
                    s.reason = None;
                    s.message = None;
                });
                self.notify_change();
            }
            let program = match &prepared_program {
                Some(program) => program.clone(),
                None => {
                    let prepared = tokio::select! {
                        prepared = executor.prepare(&digest, module.clone()) => prepared,
                        _ = cancel.cancelled() => return,
                    };
                    match prepared {
                        Ok(prepared) => {
                            log.agent_line(&format!("module {digest}: {}", prepared.how));
                            prepared_program.insert(prepared.program).clone()
                        }
                        Err(e) => {
                            // In the instance's log too: `wasmlet logs` is where a user looks first.
                            log.agent_line(&format!("module {digest} cannot run: {e}"));
                            self.events.record(EventType::Warning, "FailedToLoad", "Instance", &name, e.clone());
                            return self.finish(&shared, Phase::Failed, None, "InvalidModule", &e);
                        }
                    }
                }
            };

            let started_at = match shared.status.lock().unwrap_or_else(|p| p.into_inner()).started_at {
                Some(at) if resumed => at,
                _ => Utc::now(),
            };
            let started = Instant::now();
            let exit = if workload.spec.kind == WorkloadType::Service {
                match self.serve(&desired, &shared, &program, &cancel, resumed).await {
                    Some(exit) => exit,
                    None => return,
                }
            } else {
                let usage = Arc::new(Usage::default());
                *shared.usage.lock().unwrap_or_else(|p| p.into_inner()) = usage.clone();
                self.running(&shared, started_at, &desired.generation, executor.outlives_agent());
                if resumed {
                    self.events.record(EventType::Normal, "Adopted", "Instance", &name, "its run goes on under the restarted agent");
                } else {
                    self.events.record(EventType::Normal, "Started", "Instance", &name, format!("started {}", workload.metadata.name));
                    log.agent_line("started");
                }

                let exit = tokio::select! {
                    exit = program.clone().run(spec.clone(), log.clone(), usage.clone()) => exit,
                    why = shared.evicted() => eviction(why),
                    _ = cancel.cancelled() => {
                        log.flush_partial();
                        log.agent_line(self.stopped_by_agent(&*executor));
                        return;
                    }
                };
                log.flush_partial();
                *shared.cpu_before.lock().unwrap_or_else(|p| p.into_inner()) += usage.cpu_used();
                exit
            };
            if exit.reason == ExitReason::EphemeralStorageLimitExceeded {
                // As the kubelet does with an evicted pod's emptyDir: the next run starts with empty scratch dirs.
                self.events.record(EventType::Warning, "Evicted", "Instance", &name, exit.message.clone());
                if let Err(e) = remove_dir_if_present(&self.instance_dir(&name).join("scratch")).await {
                    tracing::warn!(instance = %name, error = %e, "cannot empty the scratch dirs of an evicted instance");
                }
                shared.ephemeral_bytes.store(0, Ordering::Relaxed);
            }
            let first_line = exit.message.lines().next().unwrap_or_default().to_string();
            log.agent_line(&format!("exited: {}: {}", exit.reason.as_str(), exit.message));
            let termination = Termination {
                exit_code: exit.code,
                reason: exit.reason.as_str().to_string(),
                message: exit.message.clone(),
                started_at,
                finished_at: Utc::now(),
            };

            if exit.reason == ExitReason::StoppedOnDisconnect {
                self.events.record(EventType::Warning, "StoppedOnDisconnect", "Instance", &name, exit.message.clone());
                shared.update(|s| s.last_termination = Some(termination));
                resumed = false;
                // It runs again once the master is heard from and still assigns it.
                continue;
            }
            let restart = match policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !exit.succeeded(),
                RestartPolicy::Never => false,
            };
            if !restart {
                let phase = if exit.succeeded() { Phase::Succeeded } else { Phase::Failed };
                let kind = if exit.succeeded() { EventType::Normal } else { EventType::Warning };
                self.events.record(kind, exit.reason.as_str(), "Instance", &name, format!("{}: {first_line}", phase.as_str()));
                shared.update(|s| s.last_termination = Some(termination));
                return self.finish(&shared, phase, exit.code, exit.reason.as_str(), &exit.message);
            }

            resumed = false;
            if started.elapsed() >= backoff.reset {
                delay = backoff.initial;
            }
            let message =
                format!("back-off {} restarting; last run: {}: {first_line}", wasmlet_api::Duration::from(delay), exit.reason.as_str());
            self.events.record(EventType::Warning, "BackOff", "Instance", &name, message.clone());
            log.agent_line(&message);
            shared.update(|s| {
                s.phase = Phase::Pending;
                s.restarts += 1;
                s.reason = Some("CrashLoopBackOff".into());
                s.message = Some(message);
                s.exit_code = exit.code;
                s.last_termination = Some(termination);
            });
            self.notify_change();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return,
            }
            delay = (delay * 2).min(backoff.max);
        }
    }

    /// Measures the scratch dirs of every running instance every `interval`
    /// and evicts those over their limit, until `stop`.
    pub async fn enforce_ephemeral_storage(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let running: Vec<Arc<Shared>> = {
                let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
                instances
                    .values()
                    .filter(|s| s.shared.has_scratch)
                    .filter(|s| s.shared.status.lock().unwrap_or_else(|p| p.into_inner()).phase == Phase::Running)
                    .map(|s| s.shared.clone())
                    .collect()
            };
            if running.is_empty() {
                continue;
            }
            let data_dir = self.settings.data_dir.clone();
            let measured = tokio::task::spawn_blocking(move || {
                running
                    .into_iter()
                    .map(|shared| {
                        let measured = scratch::measure(&data_dir, &shared.name, shared.ephemeral_limit);
                        (shared, measured)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            for (shared, measured) in measured.unwrap_or_default() {
                let limit = wasmlet_api::Bytes::new(shared.ephemeral_limit).human();
                let why = match measured {
                    Ok(scratch::Measured::Within(bytes)) => {
                        shared.ephemeral_bytes.store(bytes, Ordering::Relaxed);
                        continue;
                    }
                    Ok(scratch::Measured::Over(bytes)) => {
                        shared.ephemeral_bytes.store(bytes, Ordering::Relaxed);
                        format!(
                            "its scratch dirs hold at least {}, over the limit of {limit} (limits.ephemeralStorage, else --default-ephemeral-storage)",
                            wasmlet_api::Bytes::new(bytes).human()
                        )
                    }
                    Ok(scratch::Measured::TooDeep) => format!(
                        "its scratch dirs nest more than {} directories deep, which counts as over the limit of {limit}",
                        scratch::MAX_DEPTH
                    ),
                    Err(e) => {
                        tracing::warn!(instance = %shared.name, error = %e, "cannot measure the scratch dirs");
                        continue;
                    }
                };
                shared.log.agent_line(&format!("evicting: {why}"));
                shared.evict(why);
            }
        }
    }

    /// Stops these instances of `source` now, keeping their files (they may be
    /// assigned again).
    pub fn stop(&self, source: Source, names: &[String]) {
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            if instances.get(name).is_some_and(|s| s.source == source)
                && let Some(s) = instances.remove(name)
            {
                s.cancel.cancel();
            }
        }
        drop(instances);
        self.notify_change();
    }

    /// Stops every instance and waits for their tasks (the agent is shutting down).
    /// Their files stay: after a restart the agent runs them again.
    pub async fn stop_all(&self) {
        // Runs that can outlive the agent are left running for the next one.
        self.detaching.store(true, Ordering::Relaxed);
        self.executors.detach();
        let stopped: Vec<Supervised> =
            std::mem::take(&mut *self.instances.lock().unwrap_or_else(|p| p.into_inner())).into_values().collect();
        for s in &stopped {
            s.cancel.cancel();
        }
        for s in stopped {
            let _ = s.task.await;
        }
        self.executors.shutdown().await;
    }

    /// A service instance: Running (taking requests through the ingress) from
    /// when its program is ready until it is stopped (None), or until it
    /// cannot start, fails its liveness probe, is fenced or is evicted (the
    /// exit, restarted per policy and back-off like any other).
    async fn serve(
        &self,
        desired: &DesiredInstance,
        shared: &Shared,
        program: &Arc<dyn Program>,
        cancel: &CancellationToken,
        resumed: bool,
    ) -> Option<Exit> {
        let name = &desired.name;
        if program.entry() != Entry::Serve {
            let why =
                "a service must be a component exporting wasi:http/incoming-handler (built for wasm32-wasip2 with a wasi:http export)";
            self.events.record(EventType::Warning, "FailedToLoad", "Instance", name, why);
            self.finish(shared, Phase::Failed, None, "InvalidModule", why);
            return None;
        }
        let spec = &desired.workload.spec;
        let run = self.run_spec(desired);
        // Each request opens the grants anew; a grant that cannot be opened fails the start here already.
        for dir in &run.dirs {
            if let Err(e) = dir.dir.open() {
                return Some(Exit::start_error(e));
            }
        }
        let defaults = self.settings.services;
        let mut env = run.env.clone();
        env.push(("WASMLET_NODE".to_string(), self.node.clone()));
        let serve = ServeSpec {
            instance: name.clone(),
            program: run.program,
            env,
            dirs: run.dirs,
            memory_limit: run.memory_limit,
            request_timeout: spec.resources.limits.request_timeout.map_or(defaults.request_timeout, |d| d.get()),
            max_request_body: defaults.max_request_body,
            max_response_body: defaults.max_response_body,
            outbound: OutboundPolicy::new(&spec.allowed_outbound_hosts),
            cpu_limit_millis: run.cpu_limit_millis,
            fence: desired.fence.clone(),
        };
        let usage = Arc::new(Usage::default());
        *shared.usage.lock().unwrap_or_else(|p| p.into_inner()) = usage.clone();
        let service = tokio::select! {
            service = program.clone().serve(serve, shared.log.clone(), usage.clone()) => match service {
                Ok(service) => service,
                Err(why) => return Some(Exit::start_error(why)),
            },
            _ = cancel.cancelled() => return None,
        };
        let ended = service.ended();
        tokio::pin!(ended);
        let endpoint = Endpoint {
            instance: name.clone(),
            workload: desired.workload.clone(),
            service,
            permits: Arc::new(tokio::sync::Semaphore::new(defaults.concurrency.max(1))),
            traffic: shared.traffic.clone(),
        };
        let started_at = match shared.status.lock().unwrap_or_else(|p| p.into_inner()).started_at {
            Some(at) if resumed => at,
            _ => Utc::now(),
        };
        self.running(shared, started_at, &desired.generation, endpoint.service.outlives_agent());
        if resumed {
            self.events.record(EventType::Normal, "Adopted", "Instance", name, "its process goes on serving under the restarted agent");
        } else {
            self.events.record(EventType::Normal, "Started", "Instance", name, format!("serving {}", desired.workload.metadata.name));
            shared.log.agent_line("serving");
        }
        let out_of_rotation = |why: &str| {
            *shared.serving.lock().unwrap_or_else(|p| p.into_inner()) = None;
            shared.log.agent_line(why);
        };
        // In rotation once it can serve and, with a readinessPath, once it answers 2xx.
        let mut in_rotation = false;
        let mut next_probe = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_probe {
                next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
                let ready = match &spec.readiness_path {
                    None => Ok(()),
                    Some(path) => probe(&endpoint, path).await,
                };
                if let Some(path) = &spec.liveness_path
                    && let Err(why) = probe(&endpoint, path).await
                {
                    self.events.record(EventType::Warning, "Unhealthy", "Instance", name, format!("liveness probe failed: {why}"));
                    out_of_rotation("stopped serving: the liveness probe failed");
                    self.notify_change();
                    let message = format!("liveness probe failed: {why}");
                    return Some(Exit { code: None, reason: ExitReason::LivenessProbeFailed, message });
                }
                match ready {
                    Ok(()) if !in_rotation => {
                        in_rotation = true;
                        *shared.serving.lock().unwrap_or_else(|p| p.into_inner()) = Some(endpoint.clone());
                        shared.update(|s| {
                            s.reason = None;
                            s.message = None;
                        });
                        self.notify_change();
                    }
                    Err(why) if in_rotation || shared.status.lock().unwrap_or_else(|p| p.into_inner()).reason.is_none() => {
                        in_rotation = false;
                        *shared.serving.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        self.events.record(EventType::Warning, "NotReady", "Instance", name, format!("readiness probe failed: {why}"));
                        shared.update(|s| {
                            s.reason = Some("NotReady".into());
                            s.message = Some(format!("out of rotation: readiness probe failed: {why}"));
                        });
                        self.notify_change();
                    }
                    _ => {}
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                exit = &mut ended => {
                    out_of_rotation("stopped serving: its process ended");
                    self.notify_change();
                    return Some(exit);
                }
                why = shared.evicted() => {
                    out_of_rotation("stopped serving");
                    return Some(eviction(why));
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if desired.fence.expired() {
                        // Out of rotation while the master is silent; served again once it is heard.
                        let why = "stopped serving: the master has been silent longer than stopOnAgentAfter";
                        out_of_rotation(why);
                        return Some(Exit { code: None, reason: ExitReason::StoppedOnDisconnect, message: why.into() });
                    }
                }
            }
        }
        if self.detaching.load(Ordering::Relaxed) && endpoint.service.outlives_agent() {
            *shared.serving.lock().unwrap_or_else(|p| p.into_inner()) = None;
            shared.log.agent_line("the agent stops: its process goes on serving, for the next agent to adopt");
        } else {
            out_of_rotation("stopped serving");
        }
        None
    }

    /// Marks a run Running since `started_at`; where it can outlive the agent,
    /// keeps the status for the next agent.
    fn running(&self, shared: &Shared, started_at: chrono::DateTime<Utc>, generation: &str, outlives_agent: bool) {
        shared.update(|s| {
            s.phase = Phase::Running;
            s.started_at = Some(started_at);
            s.reason = None;
            s.message = None;
        });
        self.notify_change();
        if outlives_agent {
            let kept =
                KeptStatus { generation: generation.to_string(), status: shared.status.lock().unwrap_or_else(|p| p.into_inner()).clone() };
            let dir = self.instance_dir(&shared.name);
            let written = std::fs::create_dir_all(&dir)
                .and_then(|()| serde_json::to_vec(&kept).map_err(std::io::Error::other))
                .and_then(|bytes| crate::files::write_atomically(&dir.join(KEPT_STATUS), &bytes, 0o600));
            if let Err(e) = written {
                tracing::warn!(instance = %shared.name, error = %e, "cannot keep the instance's status for the next agent");
            }
        }
    }

    /// The instance log's last line for a run the agent stopped.
    fn stopped_by_agent(&self, executor: &dyn crate::executor::Executor) -> &'static str {
        if self.detaching.load(Ordering::Relaxed) && executor.outlives_agent() {
            "the agent stops: the run goes on in its own process, for the next agent to adopt"
        } else {
            "stopped by the agent"
        }
    }

    /// The service workloads this node has instances of, whatever their phase (for routing).
    pub fn service_workloads(&self) -> Vec<Arc<Workload>> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Arc<Workload>> = Vec::new();
        for s in instances.values() {
            if s.workload.spec.kind == WorkloadType::Service && !out.iter().any(|w| w.metadata.name == s.workload.metadata.name) {
                out.push(s.workload.clone());
            }
        }
        out
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn service_settings(&self) -> ServiceSettings {
        self.settings.services
    }

    /// The Running service instances, for the ingress.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances.values().filter_map(|s| s.shared.serving.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
    }

    /// Waits while the instance's fence is expired. Returns false when cancelled.
    async fn wait_for_fence(&self, shared: &Shared, cancel: &CancellationToken) -> bool {
        if !shared.fence.expired() {
            return true;
        }
        shared.update(|s| {
            s.phase = Phase::Pending;
            s.reason = Some("StoppedOnDisconnect".into());
            s.message = Some("waiting to hear from the master: it has been silent longer than stopOnAgentAfter".into());
        });
        self.notify_change();
        while shared.fence.expired() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = cancel.cancelled() => return false,
            }
        }
        true
    }

    /// The instance's module bytes: pulled from its source when they are not
    /// at hand, retried with the restart back-off while the instance waits in
    /// `Pending`, reason `ModulePullBackOff`, the failure in its message (an
    /// event each time the failure changes). None once cancelled.
    async fn pull(&self, desired: &DesiredInstance, shared: &Shared, cancel: &CancellationToken) -> Option<Arc<Vec<u8>>> {
        let backoff = self.settings.backoff;
        let mut delay = backoff.initial;
        let mut last_failure = String::new();
        loop {
            let pulled = tokio::select! {
                pulled = desired.module.bytes() => pulled,
                _ = cancel.cancelled() => return None,
            };
            let failure = match pulled {
                Ok(bytes) => {
                    if !last_failure.is_empty() {
                        self.events.record(
                            EventType::Normal,
                            "Pulled",
                            "Instance",
                            &desired.name,
                            "the module is here: starting".to_string(),
                        );
                    }
                    return Some(bytes);
                }
                Err(e) => e.to_string(),
            };
            let source = desired.workload.spec.module.origin();
            let message = format!("cannot get the module from {source}: {failure}; trying again in {delay:?}");
            tracing::warn!(instance = %desired.name, %source, digest = %desired.workload.spec.module.digest, error = %failure, "module not available");
            if failure != last_failure {
                self.events.record(EventType::Warning, "ModulePullBackOff", "Instance", &desired.name, message.clone());
                shared.log.agent_line(&message);
                last_failure = failure;
            }
            shared.update(|s| {
                s.phase = Phase::Pending;
                s.reason = Some("ModulePullBackOff".to_string());
                s.message = Some(message.clone());
            });
            self.notify_change();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return None,
            }
            delay = (delay * 2).min(backoff.max);
        }
    }

    fn finish(&self, shared: &Shared, phase: Phase, exit_code: Option<i32>, reason: &str, message: &str) {
        shared.update(|s| {
            s.phase = phase;
            s.exit_code = exit_code;
            s.reason = Some(reason.to_string());
            s.message = Some(message.to_string());
        });
        self.notify_change();
    }

    fn notify_change(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The instances of one source, with their status.
    pub fn instances_of(&self, source: Source) -> Vec<Instance> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances.values().filter(|s| s.source == source).map(|s| self.with_node(s.shared.snapshot())).collect()
    }

    /// Names and epochs of the instances of one source.
    pub fn epochs(&self, source: Source) -> BTreeMap<String, u64> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances.iter().filter(|(_, s)| s.source == source).map(|(n, s)| (n.clone(), s.shared.epoch)).collect()
    }

    /// Every instance with its status, by name.
    pub fn instances(&self) -> Vec<Instance> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances.values().map(|s| self.with_node(s.shared.snapshot())).collect()
    }

    pub fn instance(&self, name: &str) -> Option<Instance> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances.get(name).map(|s| self.with_node(s.shared.snapshot()))
    }

    pub fn log(&self, name: &str) -> Option<InstanceLog> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner()).get(name).map(|s| s.shared.log.clone())
    }

    fn with_node(&self, mut instance: Instance) -> Instance {
        instance.spec.node = self.node.clone();
        instance
    }

    pub fn summaries(&self) -> Vec<InstanceSummary> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances
            .values()
            .map(|s| InstanceSummary {
                name: s.shared.name.clone(),
                workload: s.shared.workload.clone(),
                phase: s.shared.status.lock().unwrap_or_else(|p| p.into_inner()).phase,
            })
            .collect()
    }

    /// Per-instance and runtime metrics, in exposition text without the `# EOF` line.
    pub fn render_metrics(&self) -> String {
        let mut registry = Registry::default();
        let phase: Family<Labels, Gauge> = Family::default();
        let restarts: Family<Labels, Gauge> = Family::default();
        let memory: Family<Labels, Gauge> = Family::default();
        let cpu: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        let scratch_bytes: Family<Labels, Gauge> = Family::default();
        let periods: Family<Labels, Gauge> = Family::default();
        let throttled_periods: Family<Labels, Gauge> = Family::default();
        let throttled_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        let oom_kills: Family<Labels, Gauge> = Family::default();
        let memory_limit: Family<Labels, Gauge> = Family::default();
        let pressure: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        let pressure_ratio: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        {
            let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
            for s in instances.values().filter(|s| s.shared.has_scratch) {
                let labels = vec![("instance", s.shared.name.clone()), ("workload", s.shared.workload.clone())];
                scratch_bytes.get_or_create(&labels).set(s.shared.ephemeral_bytes.load(Ordering::Relaxed) as i64);
            }
        }
        for instance in self.instances() {
            let labels = vec![("instance", instance.metadata.name.clone()), ("workload", instance.spec.workload.clone())];
            for p in Phase::ALL {
                let mut l = labels.clone();
                l.push(("phase", p.to_string()));
                phase.get_or_create(&l).set(i64::from(instance.status.phase == p));
            }
            restarts.get_or_create(&labels).set(i64::from(instance.status.restarts));
            let usage = instance.status.usage.unwrap_or_default();
            memory.get_or_create(&labels).set(usage.memory_bytes as i64);
            cpu.get_or_create(&labels).set(usage.cpu_seconds);
            // The kernel's own figures of a process-isolated run's cgroup.
            if let Some(n) = usage.cpu_periods {
                periods.get_or_create(&labels).set(n as i64);
            }
            if let Some(n) = usage.cpu_throttled_periods {
                throttled_periods.get_or_create(&labels).set(n as i64);
            }
            if let Some(s) = usage.cpu_throttled_seconds {
                throttled_seconds.get_or_create(&labels).set(s);
            }
            if let Some(n) = usage.oom_kills {
                oom_kills.get_or_create(&labels).set(n as i64);
            }
            if let Some(n) = usage.memory_limit_bytes {
                memory_limit.get_or_create(&labels).set(n as i64);
            }
            for (resource, figures) in [("cpu", usage.cpu_pressure), ("memory", usage.memory_pressure)] {
                let Some(p) = figures else { continue };
                for (kind, seconds, ratio) in [("some", p.some_seconds, p.some_avg10), ("full", p.full_seconds, p.full_avg10)] {
                    let mut l = labels.clone();
                    l.extend([("resource", resource.to_string()), ("kind", kind.to_string())]);
                    pressure.get_or_create(&l).set(seconds);
                    l.push(("window", "10s".to_string()));
                    pressure_ratio.get_or_create(&l).set(ratio / 100.0);
                }
            }
        }
        registry.register("wasmlet_instance_phase", "Instance phase: 1 for the phase the instance is in", phase);
        registry.register("wasmlet_instance_restarts", "Times the instance was restarted", restarts);
        registry.register("wasmlet_instance_memory_bytes", "Linear memory the instance holds", memory);
        registry.register("wasmlet_instance_cpu_seconds", "CPU time the instance used over all its runs", cpu);
        registry.register("wasmlet_instance_cpu_periods", "CPU quota periods of a process-isolated run (its cgroup's nr_periods)", periods);
        registry.register(
            "wasmlet_instance_cpu_throttled_periods",
            "Periods in which a process-isolated run used its whole CPU quota and was throttled (its cgroup's nr_throttled)",
            throttled_periods,
        );
        registry.register("wasmlet_instance_cpu_throttled_seconds", "Time a process-isolated run spent throttled", throttled_seconds);
        registry.register("wasmlet_instance_oom_kills", "Kills by the kernel's OOM killer in a process-isolated run's cgroup", oom_kills);
        registry.register("wasmlet_instance_memory_limit_bytes", "The memory limit of a process-isolated run's cgroup", memory_limit);
        registry.register(
            "wasmlet_instance_pressure_seconds",
            "Time a process-isolated run's tasks stalled for CPU or memory (PSI totals of its cgroup)",
            pressure,
        );
        registry.register(
            "wasmlet_instance_pressure_ratio",
            "Share of the last 10 s a process-isolated run's tasks stalled for CPU or memory (PSI avg10 of its cgroup)",
            pressure_ratio,
        );
        registry.register(
            "wasmlet_instance_ephemeral_storage_bytes",
            "What the instance's scratch dirs held at the last measurement",
            scratch_bytes,
        );
        self.executors.in_process.register_metrics(&mut registry);
        self.settings.module_cache.register_metrics(&mut registry);
        let ingress = &self.ingress_metrics;
        registry.register(
            "wasmlet_ingress_requests",
            "Requests through the ingress by service workload and status class",
            ingress.requests.clone(),
        );
        registry.register(
            "wasmlet_ingress_request_seconds",
            "Time from a request's arrival to its response headers, by service workload",
            ingress.latency.clone(),
        );
        registry.register("wasmlet_ingress_in_flight", "Requests being served, by service workload", ingress.in_flight.clone());
        registry.register(
            "wasmlet_ingress_peer_requests",
            "Requests forwarded by peer nodes over mutual TLS, by the node their certificate names",
            ingress.peer_requests.clone(),
        );
        let mut out = String::new();
        let _ = encode(&mut out, &registry);
        out.trim_end().trim_end_matches("# EOF").to_string()
    }
}

/// Asks the service for `path`; Ok on a 2xx answer.
async fn probe(endpoint: &Endpoint, path: &str) -> Result<(), String> {
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::USER_AGENT, "wasmlet-probe")
        .body(axum::body::Body::empty())
        .map_err(|e| format!("bad probe path `{path}`: {e}"))?;
    let response = endpoint.service.clone().handle(request).await;
    if response.status().is_success() { Ok(()) } else { Err(format!("GET {path} answered {}", response.status())) }
}

/// How a run that was evicted for its scratch dirs ends.
fn eviction(why: String) -> Exit {
    Exit { code: None, reason: ExitReason::EphemeralStorageLimitExceeded, message: format!("evicted: {why}; they are emptied") }
}

/// Removes a directory tree without following the links in it (as `remove_dir_all` does).
async fn remove_dir_if_present(dir: &std::path::Path) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The supervisor against a fake executor on paused time: what it decides
/// (when to restart, when to wait for the master, when a probe restarts a
/// service), apart from how instances run.
#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};

    use futures::future::BoxFuture;
    use hyper::StatusCode;
    use prometheus_client::registry::Registry;
    use wasmlet_api::NodeRuntime;

    use super::*;
    use crate::executor::{Executor, Prepared, plain};

    /// What one run of the fake program does.
    #[derive(Clone)]
    enum Step {
        /// Ends after this long with this reason.
        ExitAfter(Duration, ExitReason),
        /// Runs until its fence expires, as a guest stopped at an epoch tick would.
        UntilFenced,
    }

    /// A program that records when it was started and follows a script; its
    /// last step repeats. As a service it answers each path with the status
    /// set for it (200 when none is).
    struct FakeProgram {
        entry: Entry,
        script: Mutex<VecDeque<Step>>,
        starts: Mutex<Vec<Instant>>,
        answers: Mutex<HashMap<String, u16>>,
    }

    impl FakeProgram {
        fn new(entry: Entry, script: impl IntoIterator<Item = Step>) -> Arc<FakeProgram> {
            Arc::new(FakeProgram {
                entry,
                script: Mutex::new(script.into_iter().collect()),
                starts: Mutex::default(),
                answers: Mutex::default(),
            })
        }

        fn starts(&self) -> Vec<Instant> {
            self.starts.lock().unwrap().clone()
        }

        fn answer(&self, path: &str, status: u16) {
            self.answers.lock().unwrap().insert(path.to_string(), status);
        }

        /// The gaps between starts, in whole milliseconds.
        fn gaps_ms(&self) -> Vec<u128> {
            self.starts().windows(2).map(|w| (w[1] - w[0]).as_millis()).collect()
        }
    }

    impl Program for FakeProgram {
        fn entry(&self) -> Entry {
            self.entry
        }

        fn run(self: Arc<Self>, spec: RunSpec, _log: InstanceLog, _usage: Arc<Usage>) -> BoxFuture<'static, Exit> {
            self.starts.lock().unwrap().push(Instant::now());
            let step = {
                let mut script = self.script.lock().unwrap();
                if script.len() > 1 { script.pop_front() } else { script.front().cloned() }
            };
            Box::pin(async move {
                match step {
                    Some(Step::ExitAfter(after, reason)) => {
                        tokio::time::sleep(after).await;
                        let code = (reason == ExitReason::Error).then_some(1);
                        Exit { code, reason, message: "scripted".into() }
                    }
                    Some(Step::UntilFenced) | None => {
                        while !spec.fence.expired() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Exit { code: None, reason: ExitReason::StoppedOnDisconnect, message: "fenced".into() }
                    }
                }
            })
        }

        fn serve(
            self: Arc<Self>,
            _spec: ServeSpec,
            _log: InstanceLog,
            _usage: Arc<Usage>,
        ) -> BoxFuture<'static, Result<Arc<dyn Service>, String>> {
            self.starts.lock().unwrap().push(Instant::now());
            let service: Arc<dyn Service> = Arc::new(FakeService(self));
            Box::pin(async move { Ok(service) })
        }
    }

    struct FakeService(Arc<FakeProgram>);

    impl Service for FakeService {
        fn handle(self: Arc<Self>, request: hyper::Request<axum::body::Body>) -> BoxFuture<'static, hyper::Response<axum::body::Body>> {
            let status = self.0.answers.lock().unwrap().get(request.uri().path()).copied().unwrap_or(200);
            Box::pin(async move { plain(StatusCode::from_u16(status).unwrap(), "fake") })
        }
    }

    struct FakeExecutor(Arc<FakeProgram>);

    impl Executor for FakeExecutor {
        fn prepare(&self, _digest: &str, _bytes: Arc<Vec<u8>>) -> BoxFuture<'static, Result<Prepared, String>> {
            let program = self.0.clone();
            Box::pin(async move { Ok(Prepared { program, how: "fake" }) })
        }

        fn spawn(&self, task: BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()> {
            tokio::spawn(task)
        }

        fn node_runtime(&self) -> NodeRuntime {
            NodeRuntime::default()
        }

        fn describe(&self) -> String {
            "fake".into()
        }

        fn register_metrics(&self, _registry: &mut Registry) {}
    }

    const BACKOFF: Backoff = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(8), reset: Duration::from_secs(60) };

    fn supervisor(program: &Arc<FakeProgram>, data_dir: &std::path::Path) -> Arc<Supervisor> {
        supervisor_with_cache(program, data_dir, Arc::new(DiskCache::open(data_dir, u64::MAX)))
    }

    fn supervisor_with_cache(program: &Arc<FakeProgram>, data_dir: &std::path::Path, module_cache: Arc<DiskCache>) -> Arc<Supervisor> {
        let settings = SupervisorSettings {
            data_dir: data_dir.to_path_buf(),
            backoff: BACKOFF,
            log_max_size: 1 << 20,
            module_cache,
            services: ServiceSettings {
                request_timeout: Duration::from_secs(10),
                max_request_body: 1 << 20,
                max_response_body: 1 << 20,
                concurrency: 4,
            },
            default_memory_limit: 64 << 20,
            default_ephemeral_storage: 64 << 20,
            sources: vec![Source::Manifests, Source::Master],
        };
        Supervisor::new(Executors::in_process(Arc::new(FakeExecutor(program.clone())), "fake"), settings, "fake-node")
    }

    fn desired(kind: &str, extra: serde_json::Value, fence: &Fence) -> DesiredInstance {
        let mut spec = serde_json::json!({
            "type": kind, "module": {"source": "w.wasm", "digest": format!("sha256:{}", "0".repeat(64))}
        });
        if let (Some(spec), serde_json::Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        let workload: Workload = serde_json::from_value(serde_json::json!({
            "apiVersion": wasmlet_api::API_VERSION, "kind": "Workload", "metadata": {"name": "w"}, "spec": spec
        }))
        .unwrap();
        DesiredInstance {
            name: "w-0".into(),
            workload: Arc::new(workload),
            module: crate::modules::Module::Ready(Arc::new(Vec::new())),
            host_dirs: Vec::new(),
            generation: "1".into(),
            epoch: 0,
            refused: None,
            fence: fence.clone(),
        }
    }

    /// `desired` named `name`, of a workload whose module has `digest`.
    fn with_module(mut desired: DesiredInstance, name: &str, digest: &str) -> DesiredInstance {
        let mut workload = (*desired.workload).clone();
        workload.spec.module.digest = digest.to_string();
        desired.workload = Arc::new(workload);
        desired.name = name.to_string();
        desired
    }

    /// Waits (in paused time) until `check` holds, for at most `within`.
    async fn until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !check() {
            assert!(Instant::now() < deadline, "{what} within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn status(supervisor: &Supervisor) -> InstanceStatus {
        supervisor.instance("w-0").expect("the instance").status
    }

    /// Whether every gap is within 100 ms above what was expected (paused time: exact but for polling).
    fn close(gaps: &[u128], expected: &[u128]) -> bool {
        gaps.len() == expected.len() && gaps.iter().zip(expected).all(|(g, e)| *g >= *e && *g < *e + 100)
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_back_off_doubling_to_the_maximum_and_start_over_after_a_long_run() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Step::ExitAfter(Duration::ZERO, ExitReason::Error);
        let long = Step::ExitAfter(Duration::from_secs(61), ExitReason::Error);
        let program = FakeProgram::new(Entry::Run, [fail.clone(), fail.clone(), fail.clone(), fail.clone(), fail.clone(), long, fail]);
        let supervisor = supervisor(&program, dir.path());
        supervisor.reconcile(Source::Manifests, vec![desired("daemon", serde_json::json!({}), &Fence::default())]);

        until(Duration::from_secs(300), "eight starts", || program.starts().len() >= 8).await;
        // 1, 2, 4, 8, then 8 (the maximum); a run of 61 s (past the reset of 60 s)
        // brings the delay back to 1 s, then it doubles again.
        let gaps = program.gaps_ms();
        assert!(close(&gaps[..7], &[1000, 2000, 4000, 8000, 8000, 62_000, 2000]), "{gaps:?}");
        let s = status(&supervisor);
        assert!(s.restarts >= 7, "{s:?}");
        supervisor.stop_all().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_liveness_probe_restarts_the_service_with_the_same_back_off() {
        let dir = tempfile::tempdir().unwrap();
        let program = FakeProgram::new(Entry::Serve, []);
        program.answer("/live", 500);
        let supervisor = supervisor(&program, dir.path());
        supervisor.reconcile(Source::Manifests, vec![desired("service", serde_json::json!({"livenessPath": "/live"}), &Fence::default())]);

        until(Duration::from_secs(60), "four starts", || program.starts().len() >= 4).await;
        let gaps = program.gaps_ms();
        assert!(close(&gaps[..3], &[1000, 2000, 4000]), "liveness restarts back off: {gaps:?}");
        let s = status(&supervisor);
        assert_eq!(s.reason.as_deref(), Some("CrashLoopBackOff"), "{s:?}");
        assert_eq!(s.last_termination.as_ref().map(|t| t.reason.as_str()), Some("LivenessProbeFailed"));
        assert!(supervisor.endpoints().is_empty(), "out of rotation while backing off");

        // Healthy again: it serves, and stays up.
        program.answer("/live", 200);
        until(Duration::from_secs(60), "the service in rotation", || !supervisor.endpoints().is_empty()).await;
        let (starts, restarts) = (program.starts().len(), status(&supervisor).restarts);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!((program.starts().len(), status(&supervisor).restarts), (starts, restarts));
        assert_eq!(status(&supervisor).phase, Phase::Running);
        supervisor.stop_all().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_fence_holds_the_instance_until_the_master_is_heard_without_counting_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let program = FakeProgram::new(Entry::Run, [Step::UntilFenced]);
        let supervisor = supervisor(&program, dir.path());
        let fence = Fence::default();
        fence.set_deadline(0);
        supervisor.reconcile(Source::Master, vec![desired("daemon", serde_json::json!({}), &fence)]);

        // Past its deadline from the start: never started, and says why.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(program.starts().is_empty());
        let s = status(&supervisor);
        assert_eq!((s.phase, s.reason.as_deref()), (Phase::Pending, Some("StoppedOnDisconnect")), "{s:?}");

        // The master is heard: it runs.
        let far = chrono::Utc::now().timestamp_millis() + 3_600_000;
        fence.set_deadline(far);
        until(Duration::from_secs(5), "the first start", || status(&supervisor).phase == Phase::Running).await;
        assert_eq!(program.starts().len(), 1);

        // Silent again while it runs: it stops and waits, and the snapshot never shows it Running meanwhile.
        fence.set_deadline(0);
        assert_eq!(status(&supervisor).phase, Phase::Pending, "a fenced instance is not reported Running");
        until(Duration::from_secs(5), "the run to stop", || status(&supervisor).reason.as_deref() == Some("StoppedOnDisconnect")).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(program.starts().len(), 1, "not started again while fenced");

        fence.set_deadline(far);
        until(Duration::from_secs(5), "the second start", || program.starts().len() == 2).await;
        until(Duration::from_secs(5), "running again", || status(&supervisor).phase == Phase::Running).await;
        assert_eq!(status(&supervisor).restarts, 0, "waiting for the master is no restart");
        supervisor.stop_all().await;
    }

    /// The module cache keeps what the instances of every source need, evicts
    /// what none needs any more, and evicts nothing before every source has
    /// said what it wants (the master's instances after a restart, say).
    #[tokio::test(start_paused = true)]
    async fn the_module_cache_keeps_what_the_instances_of_every_source_need() {
        let dir = tempfile::tempdir().unwrap();
        let digest = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        let modules = crate::modules::cache::modules_dir(dir.path());
        std::fs::create_dir_all(&modules).unwrap();
        for n in 1..=3 {
            std::fs::write(modules.join(crate::modules::cache::module_file(&digest(n))), [0u8; 100]).unwrap();
        }
        let kept = |n: u8| modules.join(crate::modules::cache::module_file(&digest(n))).exists();
        // A limit of 0: only what is needed may stay.
        let program = FakeProgram::new(Entry::Run, [Step::UntilFenced]);
        let supervisor = supervisor_with_cache(&program, dir.path(), Arc::new(DiskCache::open(dir.path(), 0)));
        let daemon = || desired("daemon", serde_json::json!({}), &Fence::default());

        supervisor.reconcile(Source::Manifests, vec![with_module(daemon(), "a-0", &digest(1))]);
        assert!(kept(1) && kept(2) && kept(3), "nothing is evicted while the master's instances are not known");
        supervisor.reconcile(Source::Master, vec![with_module(daemon(), "b-0", &digest(2))]);
        assert!(kept(1) && kept(2) && !kept(3), "what no instance needs is evicted");
        supervisor.reconcile(Source::Master, vec![]);
        assert!(kept(1) && !kept(2), "the master's instance is gone, and so is its module");
        supervisor.reconcile(Source::Manifests, vec![]);
        assert!(!kept(1));
        supervisor.stop_all().await;
    }
}
