//! wasmlet-agent: the node agent of wasmlet.
//!
//! # Layout
//! - `config`: every setting with its default, as flag, environment variable
//!   and config-file key.
//! - `report`: what the machine is and how it is doing. A probe reads the
//!   facts, thresholds turn them into conditions, and the reporter publishes
//!   a Node object (with its JSON and metrics pre-rendered) on a timer.
//! - `executor`: the seam through which instances are run (prepare a module,
//!   run an instance, serve a request, report usage), whatever runs them;
//!   `in_process` runs them on the agent's own engine.
//! - `process`: instances in processes of their own; `process::cgroup`
//!   owns their cgroups (limits, counters, kill, removal).
//! - `grants`: the host directories a workload is granted, checked at
//!   admission and opened at every start without following links.
//! - `modules`: where a module's bytes come from (the master, the web) and
//!   where they are kept; `modules::cache` holds the node's module cache on
//!   disk (bytes and compiled modules) to `--module-cache-size`.
//! - `runtime`: the wasmtime engine, module cache, sandbox and limits every
//!   workload runs with.
//! - `supervisor`: keeps the desired instances running, with restart policies
//!   and back-off; `logs` holds what they print, `events` what happened;
//!   `scratch` where their scratch dirs live and what they hold.
//! - `manifests`: Workload files in a directory, run without a master.
//! - `master_link`: joining a master, heartbeats, status, the assignment.
//! - `api`: the local HTTP API (`/healthz`, `/readyz`, `/status`, `/metrics`,
//!   `/instances`, logs, `/events`).
//! - `ingress`: the node's HTTP entry for services, routing by host and path,
//!   forwarding to peers over mutual TLS.
//! - `status_cmd`: `wasmlet-agent status`, the report printed once.
//! - `security`: who may call the API, the node credential, the node's key and certificate.
//!
//! `main.rs` only parses settings, sets up logging and calls [`run`], so tests
//! start the very same agent in-process with their own listener and shutdown.
#![deny(unsafe_code)]

pub mod api;
pub mod channel;
pub mod config;
pub mod events;
pub mod executor;
pub mod files;
pub mod grants;
pub mod in_process;
pub mod ingress;
pub mod logs;
pub mod manifests;
pub mod master_link;
pub mod modules;
pub mod process;
pub mod report;
pub mod runtime;
pub mod scratch;
pub mod security;
pub mod status_cmd;
pub mod supervisor;

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wasmlet_security::serve::Connections;

pub use config::{AgentConfig, Cli};
use report::{Clock, HostProbe, ReportSettings, Reporter};
use runtime::Runtime;
use supervisor::{Backoff, Supervisor, SupervisorSettings};

/// Runs the agent on `listener` until `shutdown` completes, then stops
/// sampling and workloads, ends open watches and streams, and finishes
/// in-flight requests.
pub async fn run(config: AgentConfig, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let ingress =
        TcpListener::bind(config.ingress_addr).await.with_context(|| format!("cannot listen on --ingress-addr {}", config.ingress_addr))?;
    run_with_ingress(config, listener, ingress, shutdown).await
}

/// [`run`] with the ingress listener given too (tests pass one on a free port).
pub async fn run_with_ingress(
    config: AgentConfig,
    listener: TcpListener,
    ingress: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the API listener's address")?;
    let ingress_addr = ingress.local_addr().context("reading the ingress listener's address")?;
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        tracing::warn!(data_dir = %config.data_dir.display(), error = %e, "cannot create the data dir; the node will report Ready=False");
    }
    // A malformed join token stops the agent before it starts anything.
    let join = config.join_token.as_deref().map(str::parse::<wasmlet_security::JoinToken>).transpose().context("--join-token")?;
    let secure = config.master.is_some() && !config.insecure_http;
    if !secure && !addr.ip().is_loopback() {
        if !config.insecure_http {
            anyhow::bail!(
                "--api-addr {addr} is beyond loopback, but a standalone agent serves its API over plain HTTP: \
                 listen on 127.0.0.1, join a master (the API is then served over TLS), or pass --insecure-http"
            );
        }
        tracing::warn!(%addr, "--insecure-http: the agent API is served over plain HTTP beyond loopback; its tokens cross the network in clear text");
    }
    let local_token = security::local_token(&config.data_dir).context("the agent's API token")?;
    let saved = match config.master {
        Some(_) => security::Credential::load(&config.data_dir)?,
        None => None,
    };
    let auth = std::sync::Arc::new(security::ApiAuth::new(
        local_token,
        saved.as_ref().map(|c| c.master_token.clone()),
        config.api_read_token.clone(),
    ));
    let identity = match secure {
        true => {
            let nodes_ca = saved.as_ref().and_then(|c| c.nodes_ca_certificate.clone());
            Some(std::sync::Arc::new(security::NodeIdentity::load_or_create(&config.data_dir, nodes_ca).context("the node's TLS key")?))
        }
        false => None,
    };
    let tls = identity.as_ref().map(|s| wasmlet_security::tls::server_with_slot(s.slot.clone())).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let node = report::node_name(config.name.as_deref());
    let host_paths = config.host_path_policy();
    host_paths.check_allow_list();
    let module_cache = std::sync::Arc::new(modules::cache::DiskCache::open(&config.data_dir, config.module_cache_size.get()));
    let runtime = Runtime::new(runtime::RuntimeSettings { module_cache: Some(module_cache.clone()), ..config.runtime_settings() });
    let limit = config.instance_limit(runtime.as_ref().ok().and_then(|r| r.allocator.instances));
    if limit.max < config.max_instances {
        tracing::info!(
            instances = limit.max,
            max_instances = config.max_instances,
            "the node runs at most as many instances as the pool holds (--pool-instances)"
        );
    }
    let runtime_health = match &runtime {
        Ok(r) => Ok(r.describe()),
        Err(e) => {
            tracing::error!(error = %e, "the WASM runtime did not start; the node will report Ready=False");
            Err(format!("the WASM runtime did not start: {e:#}"))
        }
    };
    let supervisor = runtime.ok().map(|runtime| {
        let process = process::Process::new(
            runtime.clone(),
            process::ProcessSettings {
                exe: config.compiler.clone().unwrap_or_else(|| "/proc/self/exe".into()),
                data_dir: config.data_dir.clone(),
                log_max_size: config.log_max_size.get(),
                memory_overhead: config.process_memory_overhead.get(),
                pids_max: config.process_pids_max,
            },
        );
        if let Err(why) = &process {
            tracing::info!(reason = %why, "process isolation is not offered");
        }
        let cgroups = process.as_ref().map(process::Process::cgroups).unwrap_or_default();
        let executor = std::sync::Arc::new(in_process::InProcess::new(runtime));
        let settings = SupervisorSettings {
            data_dir: config.data_dir.clone(),
            backoff: Backoff {
                initial: config.restart_backoff_initial.get(),
                max: config.restart_backoff_max.get(),
                reset: config.restart_backoff_reset.get(),
            },
            log_max_size: config.log_max_size.get(),
            module_cache: module_cache.clone(),
            default_memory_limit: config.default_memory_limit.get(),
            default_ephemeral_storage: config.default_ephemeral_storage.get(),
            sources: [
                (config.master.is_some(), supervisor::Source::Master),
                (config.manifests_dir.is_some(), supervisor::Source::Manifests),
            ]
            .into_iter()
            .filter_map(|(configured, source)| configured.then_some(source))
            .collect(),
            services: supervisor::ServiceSettings {
                request_timeout: config.request_timeout.get(),
                max_request_body: config.max_request_body.get() as usize,
                max_response_body: config.max_response_body.get() as usize,
                concurrency: config.service_concurrency,
            },
        };
        let executors = executor::Executors {
            in_process: executor.clone(),
            process: process.map(|p| std::sync::Arc::new(p) as std::sync::Arc<dyn executor::Executor>),
            default: config.default_isolation,
        };
        let mut node_runtime = executor::Executor::node_runtime(&*executor);
        node_runtime.isolation = executors.offered();
        node_runtime.isolation_reason = executors.process.as_ref().err().cloned().unwrap_or_default();
        node_runtime.default_isolation = executors.default.as_str().to_string();
        node_runtime.cgroups = cgroups;
        (Supervisor::new(executors, settings, &node), node_runtime)
    });

    let probe = Box::new(HostProbe::new(&config.data_dir));
    let mut settings = ReportSettings::from_config(&config);
    settings.name = Some(node.clone());
    settings.max_instances = limit.max;
    let (mut reporter, reports) = Reporter::new(probe, settings, runtime_health, Clock::System);
    if let Some((supervisor, node_runtime)) = &supervisor {
        reporter = reporter.with_supervisor(supervisor.clone(), node_runtime.clone());
    }
    let supervisor = supervisor.map(|(s, _)| s);
    tracing::info!(%node, api = %format!("{scheme}://{addr}"), ingress = %format!("http://{ingress_addr}"), data_dir = %config.data_dir.display(), "wasmlet agent started");

    let stop = CancellationToken::new();
    let sampler = tokio::spawn(reporter.run(stop.clone().cancelled_owned()));
    let storage = supervisor.clone().map(|supervisor| {
        let interval = config.ephemeral_storage_check_interval.get().max(std::time::Duration::from_millis(10));
        tokio::spawn(supervisor.enforce_ephemeral_storage(interval, stop.clone()))
    });
    // One store and one set of downloaders for every source of workloads (the cache counts them all).
    let module_store = std::sync::Arc::new(modules::ModuleStore::new(module_cache.clone(), config.max_module_size.get()));
    let remote = std::sync::Arc::new(module_downloads(&config, &node)?);
    let manifests = match (&config.manifests_dir, &supervisor) {
        (Some(dir), Some(supervisor)) => {
            let watcher = manifests::ManifestWatcher::new(
                dir.clone(),
                host_paths.clone(),
                limit,
                supervisor.clone(),
                module_store.clone(),
                remote.clone(),
            );
            Some(tokio::spawn(watcher.run(config.manifests_poll_interval.get(), stop.clone())))
        }
        (Some(dir), None) => {
            tracing::error!(dir = %dir.display(), "not running static manifests: the WASM runtime did not start");
            None
        }
        _ => None,
    };
    let link = match (&config.master, &supervisor) {
        (Some(master), Some(supervisor)) => {
            let settings = master_link::LinkSettings {
                master: master.clone(),
                join,
                saved,
                node: node.clone(),
                taints: config.taints.clone(),
                data_dir: config.data_dir.clone(),
                host_paths: host_paths.clone(),
                api_port: addr.port(),
                ingress_port: ingress_addr.port(),
                insecure_http: config.insecure_http,
                auth: auth.clone(),
                identity: identity.clone(),
                modules: module_store.clone(),
                remote: remote.clone(),
            };
            let link = master_link::MasterLink::new(settings, supervisor.clone(), reports.clone())?;
            Some(link)
        }
        (Some(_), None) => {
            tracing::error!("not joining the master: the WASM runtime did not start");
            None
        }
        _ => None,
    };
    let open_files = wasmlet_security::serve::raise_open_files_limit();
    let (api_limits, ingress_limits) = config.connection_limits(open_files);
    let connections = wasmlet_security::serve::ConnectionMetrics::default();
    tracing::info!(
        open_files,
        api_max_connections = api_limits.max_connections,
        ingress_max_connections = ingress_limits.max_connections,
        "connection limits"
    );
    let app = api::router(api::ApiState {
        reports,
        watch_timeout: config.watch_timeout.get(),
        supervisor: supervisor.clone(),
        shutdown: stop.clone(),
        auth,
        connections: connections.clone(),
    });
    // The master link, and the channels to the masters that serve the API's router.
    let link = link.map(|link| {
        let channels = tokio::spawn(channel::hold(link.clone(), app.clone(), stop.clone()));
        let run = tokio::spawn(link.run(stop.clone()));
        async move {
            let _ = tokio::join!(run, channels);
        }
    });
    let link = link.map(tokio::spawn);
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    let ingress_task = supervisor.clone().map(|supervisor| {
        let app = ingress::router(supervisor, identity.clone());
        let bounds = Connections { listener: "ingress", limits: ingress_limits, metrics: connections.clone() };
        let stop = stop.clone();
        match &identity {
            // Joined over TLS: the same port serves peers over mutual TLS.
            Some(identity) => {
                tokio::spawn(wasmlet_security::peering::serve_with_peers(ingress, app, identity.peer_server.clone(), bounds, stop))
            }
            None => tokio::spawn(wasmlet_security::serve::serve(ingress, app, None, bounds, stop)),
        }
    });
    let bounds = Connections { listener: "api", limits: api_limits, metrics: connections };
    wasmlet_security::serve::serve(listener, app, tls, bounds, stop.clone()).await.context("serving the agent API")?;
    if let Some(task) = ingress_task {
        let _ = task.await;
    }
    for task in [manifests, link, storage].into_iter().flatten() {
        let _ = task.await;
    }
    if let Some(supervisor) = &supervisor {
        supervisor.stop_all().await;
    }
    sampler.await.context("the sampler task failed")?;
    tracing::info!("agent stopped");
    Ok(())
}

/// Where modules named by URL or registry reference are downloaded from, as the flags say.
fn module_downloads(config: &AgentConfig, node: &str) -> anyhow::Result<modules::Remote> {
    let extra_ca = match &config.module_ca_file {
        Some(file) => {
            let pem = std::fs::read(file).with_context(|| format!("--module-ca-file {}: cannot read it", file.display()))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                anyhow::bail!("--module-ca-file {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)", file.display());
            }
            Some(pem)
        }
        None => None,
    };
    let web = modules::https::HttpsSource::new(extra_ca.as_deref(), config.allow_http_modules)
        .context("setting up module downloads (the system's CAs and --module-ca-file)")?;
    // Once per agent: the registry client keeps it for its lifetime.
    let user_agent: &'static str = Box::leak(format!("wasmlet-agent/{} (node {node})", env!("CARGO_PKG_VERSION")).into_boxed_str());
    let registries = modules::oci::OciSource::new(extra_ca.as_deref(), config.registry_credentials.clone(), user_agent)?;
    Ok(modules::Remote { web: std::sync::Arc::new(web), registries: std::sync::Arc::new(registries) })
}
