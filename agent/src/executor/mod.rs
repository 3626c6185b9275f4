//! The executor seam: how instances are run, whatever runs them.
//!
//! The supervisor, the ingress and the report know instances only through
//! these traits: an [`Executor`] prepares a module (checked, compiled or
//! taken from a cache) into a [`Program`]; a program runs an instance to its
//! end, or becomes a [`Service`] that answers requests. Each isolation mode
//! is one implementation: [`crate::in_process::InProcess`] runs every
//! instance on the agent's own wasmtime engine.
//!
//! The words they share are executor-neutral: what a run is given
//! ([`RunSpec`], [`ServeSpec`]), how it ended ([`Exit`]), what it uses while
//! it runs ([`Usage`]) and the deadline past which it must not run
//! ([`Fence`]).

pub mod fence;
pub mod run;
pub mod service;
pub mod usage;

use std::sync::Arc;

use axum::body::Body;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use wasmlet_api::{Isolation, NodeRuntime, Workload};

pub use fence::Fence;
pub use run::{Exit, ExitReason, RunSpec};
pub use service::{OutboundPolicy, ServeSpec, plain};
pub use usage::{CgroupUsage, CpuMeter, Usage};

use crate::logs::InstanceLog;

/// The version of wasmtime, which every executor runs instances on.
pub const RUNTIME_VERSION: &str = wasmtime_environ::VERSION;

/// Prepares modules into programs, and drives the instances that run them.
pub trait Executor: Send + Sync + 'static {
    /// Makes `bytes` (whose digest the manifest names as `digest`) ready to
    /// run. The error says what is wrong with the module, in words for its
    /// instance's status.
    fn prepare(&self, digest: &str, bytes: Arc<Vec<u8>>) -> BoxFuture<'static, Result<Prepared, String>>;

    /// Drives one instance's supervision (its runs and probes) to its end.
    fn spawn(&self, task: BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()>;

    /// What runs instances on this node, for its status.
    fn node_runtime(&self) -> NodeRuntime;

    /// One line for the Ready condition.
    fn describe(&self) -> String;

    /// Adds the executor's own figures (module loads, allocator) to `registry`.
    fn register_metrics(&self, registry: &mut Registry);

    /// Whether its runs go on while the agent stops or restarts.
    fn outlives_agent(&self) -> bool {
        false
    }

    /// When the run of `instance` that a previous agent left running started,
    /// if there is one: the next run of that instance adopts it if its spec
    /// is the same. Runs of executors inside the agent never outlive it.
    fn left_running(&self, _instance: &str) -> Option<DateTime<Utc>> {
        None
    }

    /// Every source of instances has said what it wants: runs a previous
    /// agent left for any other instance are ended.
    fn settle(&self, _wanted: &[String]) {}

    /// The agent is about to stop: from now on, stopping a run that can
    /// outlive the agent leaves it running for the next agent to adopt.
    fn detach(&self) {}

    /// Waits until every instance it stopped has ended (the agent is shutting down).
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// The ways this node runs instances, and which one each workload gets.
#[derive(Clone)]
pub struct Executors {
    pub in_process: Arc<dyn Executor>,
    /// Process isolation, or why this node cannot offer it.
    pub process: Result<Arc<dyn Executor>, String>,
    /// What a workload that names no `isolation` gets (`--default-isolation`).
    pub default: Isolation,
}

impl Executors {
    /// Only in-process runs (process isolation is not offered: `why`).
    pub fn in_process(executor: Arc<dyn Executor>, why: &str) -> Executors {
        Executors { in_process: executor, process: Err(why.to_string()), default: Isolation::InProcess }
    }

    /// The isolation a workload runs in here: its own, else the node's default.
    pub fn isolation(&self, workload: &Workload) -> Isolation {
        workload.spec.isolation.unwrap_or(self.default)
    }

    /// The executor for `workload`; the error says why this node cannot run it.
    pub fn for_workload(&self, workload: &Workload) -> Result<&Arc<dyn Executor>, String> {
        match self.isolation(workload) {
            Isolation::InProcess => Ok(&self.in_process),
            Isolation::Process => self.process.as_ref().map_err(|why| format!("isolation: process is not offered by this node: {why}")),
        }
    }

    /// The modes offered, as the node's status lists them.
    pub fn offered(&self) -> Vec<String> {
        let mut modes = vec![Isolation::InProcess.as_str().to_string()];
        if self.process.is_ok() {
            modes.push(Isolation::Process.as_str().to_string());
        }
        modes
    }

    /// When the run of `instance` a previous agent left running started, if
    /// the executor `workload` runs in has one.
    pub fn left_running(&self, workload: &Workload, instance: &str) -> Option<DateTime<Utc>> {
        self.for_workload(workload).ok()?.left_running(instance)
    }

    /// See [`Executor::settle`].
    pub fn settle(&self, wanted: &[String]) {
        self.each(|executor| executor.settle(wanted));
    }

    /// See [`Executor::detach`].
    pub fn detach(&self) {
        self.each(|executor| executor.detach());
    }

    fn each(&self, mut f: impl FnMut(&dyn Executor)) {
        f(&*self.in_process);
        if let Ok(process) = &self.process {
            f(&**process);
        }
    }

    /// Waits until every stopped instance has ended (the agent is shutting down).
    pub async fn shutdown(&self) {
        self.in_process.shutdown().await;
        if let Ok(process) = &self.process {
            process.shutdown().await;
        }
    }
}

/// A module made ready to run.
pub struct Prepared {
    pub program: Arc<dyn Program>,
    /// How it was made ready, for the instance's log (`compiled`, `compile cache hit (memory)`, …).
    pub how: &'static str,
}

/// What a program offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A command, run to its end (`_start`, `wasi:cli/run`).
    Run,
    /// An HTTP handler (`wasi:http/incoming-handler`), instantiated per request.
    Serve,
}

/// A prepared module: runs instances of itself.
pub trait Program: Send + Sync {
    fn entry(&self) -> Entry;

    /// Runs one instance to its end. Dropping the future stops the guest.
    /// The executor keeps `usage` current while it runs.
    fn run(self: Arc<Self>, spec: RunSpec, log: InstanceLog, usage: Arc<Usage>) -> BoxFuture<'static, Exit>;

    /// A service answering requests with this program (an [`Entry::Serve`]
    /// one), once it can. The error says why it cannot serve, in words for
    /// the status. Dropping the service stops it.
    fn serve(self: Arc<Self>, spec: ServeSpec, log: InstanceLog, usage: Arc<Usage>)
    -> BoxFuture<'static, Result<Arc<dyn Service>, String>>;
}

/// A running service instance, as the ingress and the probes call it.
pub trait Service: Send + Sync {
    /// Answers one request. Failures of the guest are answers too (`502`,
    /// `504`), in the agent's own words.
    fn handle(self: Arc<Self>, request: hyper::Request<Body>) -> BoxFuture<'static, hyper::Response<Body>>;

    /// Resolves when the service ended by itself (its process died, say),
    /// with how; a service that cannot end by itself never resolves.
    fn ended(&self) -> BoxFuture<'static, Exit> {
        Box::pin(std::future::pending())
    }

    /// Whether it goes on serving while the agent stops or restarts.
    fn outlives_agent(&self) -> bool {
        false
    }
}
