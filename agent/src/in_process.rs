//! The in-process executor: every instance on the agent's own wasmtime
//! engine, on the guests' scheduler. Dense and fast; an instance's memory
//! limit covers its linear memories and tables, its CPU is shared by epochs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use futures::future::BoxFuture;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wasmlet_api::NodeRuntime;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::executor::{Entry, Executor, Exit, Prepared, Program, RunSpec, ServeSpec, Service, Usage};
use crate::logs::InstanceLog;
use crate::runtime::Runtime;
use crate::runtime::http::HttpState;
use crate::runtime::module::{LoadedModule, Program as Compiled};

/// Runs instances inside the agent, on `runtime`.
pub struct InProcess {
    runtime: Runtime,
}

impl InProcess {
    pub fn new(runtime: Runtime) -> InProcess {
        InProcess { runtime }
    }
}

impl Executor for InProcess {
    fn prepare(&self, digest: &str, bytes: Arc<Vec<u8>>) -> BoxFuture<'static, Result<Prepared, String>> {
        let runtime = self.runtime.clone();
        let digest = digest.to_string();
        Box::pin(async move {
            let (module, outcome) = runtime.modules.load(&digest, bytes).await.map_err(|e| e.to_string())?;
            Ok(Prepared { program: Arc::new(InProcessProgram { runtime, module }), how: outcome.describe() })
        })
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()> {
        self.runtime.spawn(task)
    }

    fn node_runtime(&self) -> NodeRuntime {
        let compiler = &self.runtime.modules.compiler().info;
        NodeRuntime {
            allocator: self.runtime.allocator.kind.to_string(),
            allocator_reason: self.runtime.allocator.reason.clone(),
            compiler: compiler.kind.to_string(),
            compiler_reason: compiler.reason.clone(),
            ..NodeRuntime::default()
        }
    }

    fn describe(&self) -> String {
        self.runtime.describe()
    }

    fn register_metrics(&self, registry: &mut Registry) {
        let cache: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
        let stats = &self.runtime.modules.stats;
        for (result, counter) in [
            ("memory_hit", &stats.memory_hits),
            ("disk_hit", &stats.disk_hits),
            ("compiled", &stats.compiled),
            ("discarded", &stats.discarded),
        ] {
            cache.get_or_create(&vec![("result", result.to_string())]).set(counter.load(Ordering::Relaxed) as i64);
        }
        let allocator: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
        allocator.get_or_create(&vec![("allocator", self.runtime.allocator.kind.to_string())]).set(1);
        registry.register("wasmlet_module_loads", "Module loads by how the compile cache served them", cache);
        registry.register("wasmlet_runtime_allocator", "The instance allocator in use", allocator);
    }
}

/// A module compiled for the agent's engine.
struct InProcessProgram {
    runtime: Runtime,
    module: Arc<LoadedModule>,
}

impl Program for InProcessProgram {
    fn entry(&self) -> Entry {
        match self.module.program {
            Compiled::Proxy(_) => Entry::Serve,
            Compiled::Core(_) | Compiled::Command(_) => Entry::Run,
        }
    }

    fn run(self: Arc<Self>, spec: RunSpec, log: InstanceLog, usage: Arc<Usage>) -> BoxFuture<'static, Exit> {
        Box::pin(async move { self.runtime.run(&self.module, &spec, &log, &usage).await })
    }

    fn serve(
        self: Arc<Self>,
        spec: ServeSpec,
        log: InstanceLog,
        _usage: Arc<Usage>,
    ) -> BoxFuture<'static, Result<Arc<dyn Service>, String>> {
        let Compiled::Proxy(pre) = &self.module.program else {
            return Box::pin(std::future::ready(Err("the module exports no wasi:http/incoming-handler".to_string())));
        };
        let service: Arc<dyn Service> = Arc::new(InProcessService { runtime: self.runtime.clone(), pre: pre.clone(), spec, log });
        Box::pin(std::future::ready(Ok(service)))
    }
}

/// A service component, instantiated afresh for every request.
struct InProcessService {
    runtime: Runtime,
    pre: ProxyPre<HttpState>,
    spec: ServeSpec,
    log: InstanceLog,
}

impl Service for InProcessService {
    fn handle(self: Arc<Self>, request: hyper::Request<Body>) -> BoxFuture<'static, hyper::Response<Body>> {
        Box::pin(async move { self.runtime.serve(&self.pre, &self.spec, &self.log, request).await })
    }
}
