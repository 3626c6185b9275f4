//! The WASM runtime: one wasmtime [`Engine`] for every workload on the node.
//!
//! - `module`: recognising what a module is, checking its digest, compiling
//!   it once and caching the result in memory and on disk.
//! - `precheck`: what a module may ask of the compiler, measured before it
//!   is compiled; `compiler`: compiling in a child process with a memory
//!   limit and a time budget (or in the agent where that cannot run);
//!   `heap`: handing freed memory back after a compile in the agent.
//! - `sandbox`: the WASI context a manifest grants (args, env, directories,
//!   output to the instance's log; no sockets, no inherited anything).
//! - `limits`: memory through a resource limiter, CPU through epochs.
//! - `run`: instantiating a program in a fresh store, running it to its end,
//!   and saying clearly how it ended.
//!
//! Guests run on the agent's tokio runtime. A ticker thread bumps the engine's
//! epoch every [`RuntimeSettings::epoch_tick`]; each tick a running guest
//! yields to the scheduler, so a spinning workload cannot starve the others or
//! the agent, and its CPU time is checked against its limit.

pub mod compiler;
mod heap;
pub mod http;
pub mod limits;
pub mod module;
pub mod precheck;
pub mod run;
pub mod sandbox;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use module::{LoadError, LoadedModule, ModuleCache, ModuleKind};

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Where compiled modules are cached.
    pub cache_dir: PathBuf,
    /// The node's bounded module cache on disk, which the compiled modules
    /// count against; None for a runtime that only looks (`wasmlet-agent status`).
    pub module_cache: Option<Arc<crate::modules::cache::DiskCache>>,
    /// How often running guests yield and have their CPU time checked.
    pub epoch_tick: Duration,
    /// Instances the pooling allocator makes room for; 0 disables pooling.
    pub pool_instances: u32,
    /// Largest linear memory any instance may have (the pool's slot size).
    pub max_instance_memory: u64,
    /// The binary that compiles in a child process (`wasmlet-agent compile`);
    /// None compiles in the agent's process.
    pub compiler: Option<PathBuf>,
    /// What compiling one module may cost.
    pub compile_budget: compiler::CompileBudget,
}

/// Which instance allocator the engine uses, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocatorInfo {
    /// `pooling` or `on-demand`.
    pub kind: &'static str,
    pub reason: String,
    /// The most instances it holds at once (the pool's size), when it has a bound.
    pub instances: Option<u32>,
}

/// The agent's engine, its module cache, the threads guests run on and the epoch ticker.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    pub modules: Arc<ModuleCache>,
    pub allocator: AllocatorInfo,
    /// The engine's memory reservation: with the epoch tick, what another
    /// process needs to build an engine that runs this one's compiled code.
    pub memory_reservation: u64,
    pub epoch_tick: Duration,
    /// Guests run on their own scheduler, apart from the agent's API and
    /// reporter, and it checks timers on every scheduling tick: a guest that
    /// yields after a 10 ms slice would otherwise let timers wait for dozens
    /// of slices (tokio's default is to check them every 61 ticks).
    guests: Arc<GuestThreads>,
    /// Ends the epoch ticker when the last clone is dropped.
    _ticker: Arc<TickerGuard>,
}

struct GuestThreads(Option<tokio::runtime::Runtime>);

impl Drop for GuestThreads {
    fn drop(&mut self) {
        // Dropping a runtime may happen inside the agent's async context, where blocking is not allowed.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct TickerGuard(Arc<AtomicBool>);

impl Drop for TickerGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The engine's configuration but for the instance allocator: all that
/// shapes compiled code, so the compiler process builds it too.
fn base_config(memory_reservation: u64) -> Config {
    let mut config = Config::new();
    // Epochs rather than fuel: a load and compare at loop heads and calls,
    // not a counter per instruction.
    config.epoch_interruption(true);
    config.max_wasm_stack(1 << 20);
    config.async_stack_size(2 << 20);
    config.memory_reservation(memory_reservation);
    config
}

/// Without a pool, memories reserve only what they grow into plus a guard, so
/// a thousand small instances stay cheap in address space too.
fn on_demand_reservation(settings: &RuntimeSettings) -> u64 {
    settings.max_instance_memory.min(4 << 30)
}

impl Runtime {
    /// Starts the engine: pooling when the address space allows it, on-demand otherwise.
    pub fn new(settings: RuntimeSettings) -> anyhow::Result<Runtime> {
        let (engine, allocator, memory_reservation) = match Self::pooling_engine(&settings) {
            Ok(engine) => (
                engine,
                AllocatorInfo {
                    kind: "pooling",
                    reason: format!(
                        "pool of {} instances, {} MiB memory each at most",
                        settings.pool_instances,
                        settings.max_instance_memory >> 20
                    ),
                    instances: Some(settings.pool_instances),
                },
                settings.max_instance_memory,
            ),
            Err(why) => {
                let reservation = on_demand_reservation(&settings);
                let engine = Engine::new(&base_config(reservation))?;
                tracing::info!(reason = %why, "using the on-demand instance allocator");
                (engine, AllocatorInfo { kind: "on-demand", reason: why, instances: None }, reservation)
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(&engine, settings.epoch_tick, stop.clone());
        let compiler = compiler::Compiler::new(settings.compiler.as_deref(), &engine, memory_reservation, settings.compile_budget);
        let modules = Arc::new(ModuleCache::new(engine.clone(), settings.cache_dir.clone(), compiler, settings.module_cache.clone())?);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let guests = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wasmlet-guest")
            .event_interval(1)
            .enable_all()
            .build()?;
        Ok(Runtime {
            engine,
            modules,
            allocator,
            memory_reservation,
            epoch_tick: settings.epoch_tick,
            guests: Arc::new(GuestThreads(Some(guests))),
            _ticker: Arc::new(TickerGuard(stop)),
        })
    }

    /// The runtime of one process-isolated instance: an engine like the
    /// agent's (so the agent's compiled artefacts load into it), allocating
    /// on demand (a pool would reserve its whole address space in every
    /// process), guests on the caller's tokio runtime, nothing compiled.
    pub fn for_instance(cache_dir: PathBuf, memory_reservation: u64, epoch_tick: Duration) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&base_config(memory_reservation))?;
        let stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(&engine, epoch_tick, stop.clone());
        // Nothing is compiled here: the agent compiled and cached the module before it started this process.
        let nothing = compiler::CompileBudget {
            limits: precheck::CompileLimits { module_size: 0, functions: 0, function_size: 0, nesting: 0, locals: 0 },
            memory: 0,
            timeout: Duration::ZERO,
        };
        let compiler = compiler::Compiler::new(None, &engine, memory_reservation, nothing);
        let modules = Arc::new(ModuleCache::new(engine.clone(), cache_dir, compiler, None)?);
        Ok(Runtime {
            engine,
            modules,
            allocator: AllocatorInfo { kind: "on-demand", reason: "one instance in its own process".to_string(), instances: None },
            memory_reservation,
            epoch_tick,
            guests: Arc::new(GuestThreads(None)),
            _ticker: Arc::new(TickerGuard(stop)),
        })
    }

    fn pooling_engine(settings: &RuntimeSettings) -> Result<Engine, String> {
        if settings.pool_instances == 0 {
            return Err("pooling disabled by configuration (--pool-instances 0)".to_string());
        }
        let n = settings.pool_instances;
        let mut pool = PoolingAllocationConfig::default();
        // A wasip2 command component holds a handful of core instances
        // (program, adapter, shims), so the pool is sized per component.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(6))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(6))
            .total_stacks(n)
            .max_memories_per_module(2)
            .max_memories_per_component(4)
            .max_memory_size(settings.max_instance_memory as usize)
            .max_core_instance_size(1 << 20)
            .table_elements(100_000);
        let mut config = base_config(settings.max_instance_memory);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        Engine::new(&config)
            .map_err(|e| format!("the pooling allocator could not reserve its address space ({e}); instances are allocated on demand"))
    }

    /// Spawns a task on the guests' scheduler.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.guests.0 {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// One line for the Ready condition.
    pub fn describe(&self) -> String {
        format!("runtime wasmtime {} initialised ({} allocator)", crate::executor::RUNTIME_VERSION, self.allocator.kind)
    }
}

fn spawn_epoch_ticker(engine: &Engine, tick: Duration, stop: Arc<AtomicBool>) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("wasmlet-epoch".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch ticker: running guests will not yield or be time-limited");
    }
}
