//! wasmlet-master: the thin master of wasmlet. It keeps the desired state,
//! places instances on nodes, watches the nodes' leases and hands work off
//! when a node goes silent.
//!
//! # Layout
//! - `config`: every setting with its default, as flag, environment variable
//!   and config-file key.
//! - `store`: the [`store::Store`] trait (durable, transactional storage of
//!   objects as bytes) and its embedded default on redb; `store::modules`
//!   keeps uploaded modules content-addressed on disk.
//! - `cluster`: every object in memory, written through the store in
//!   transactions that stamp `resourceVersion`, `uid` and the epoch; the
//!   revisions watchers wait on.
//! - `scheduler`: filter and score nodes for one instance; pure functions.
//! - `controller`: the control loop; `controller::workloads` keeps each
//!   workload's instances as its spec says, `controller::lifecycle` turns
//!   silent nodes NotReady, hands their instances off and fences them when
//!   they return, and keeps the leases (in memory only).
//! - `api`: the HTTP API under `/api/v1` — objects, the agent protocol of
//!   `wasmlet_api::protocol`, modules — plus `/healthz`, `/readyz`, `/metrics`.
//! - `metrics`: the counters and gauges behind `/metrics`.
//! - `auth`: tokens, roles, the authorization policy, the audit log, the CAs
//!   and bootstrap tokens of a new cluster, and the master's serving
//!   certificate, renewed while it runs.
//! - `admin`: `wasmlet-master token …` and `client-config`, run beside a master.
//! - `backup`: the backup archive, and `wasmlet-master backup` / `restore`.
//! - `usage_history`: a bounded ring of each node's recent usage, in memory,
//!   for the dashboard's plots.
//! - `ui`: the dashboard under `/ui/`: static files embedded in the binary,
//!   served with strict security headers; the page itself calls `/api/v1`.
//!
//! `main.rs` only parses settings, sets up logging and calls [`run`], so tests
//! start the very same master in-process with their own listener and shutdown.
#![forbid(unsafe_code)]

pub mod admin;
pub mod annotations;
pub mod api;
pub mod auth;
pub mod backup;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod metrics;
pub mod scheduler;
pub mod store;
pub mod ui;
pub mod usage_history;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use cluster::{Cluster, Txn};
pub use config::{Cli, MasterConfig};
use controller::lifecycle::Leases;
use metrics::Metrics;
use store::modules::ModuleStore;
use store::{Store, StoreError};

/// What the API handlers and the controllers share.
pub struct Shared {
    /// Where every write goes ([`Shared::commit`]); shared by all masters of a cluster.
    pub store: Arc<dyn Store>,
    /// This master's name among the masters of its cluster (its URL).
    pub name: String,
    /// Every object, the view the store's watch keeps current. Never held across an `.await`.
    pub cluster: Mutex<Cluster>,
    /// Per node: assignment revision and unreachable flag, readable without the cluster lock.
    pub agents: cluster::AgentViews,
    /// Lease renewals, in memory only. Lock order: [`Shared::cluster`] before
    /// this (the node lifecycle controller holds both); never the cluster
    /// while holding this.
    pub leases: Mutex<Leases>,
    /// Uploaded module files.
    pub modules: ModuleStore,
    /// Where workloads' module tags are resolved to digests.
    pub registry: wasmlet_registry::Registry,
    pub config: MasterConfig,
    pub metrics: Metrics,
    /// Wakes the controllers outside a commit (a silent node renewing its lease).
    pub wake: Notify,
    /// Cancelled on shutdown: ends open watches and the controllers.
    pub shutdown: CancellationToken,
    /// Token records by id (the cluster's, readable without its lock).
    pub tokens: auth::TokenTable,
    /// Where mutations and refusals are recorded.
    pub audit: Option<auth::audit::AuditLog>,
    /// Per source address: refusals answered before `429`.
    pub refusals: auth::ratelimit::RefusalLimit,
    /// The cluster CA (the master's serving certificate) and the node CA (node certificates).
    pub pki: wasmlet_security::ClusterPki,
    /// The cluster CA's fingerprint when the API is served over TLS (None with `--insecure-http`).
    pub ca_fingerprint: Option<wasmlet_security::Fingerprint>,
    /// Per node that renewed its credential: the id of the newest one. The
    /// older ones stay valid until the node first uses it, then are revoked.
    pub renewed_credentials: Mutex<std::collections::HashMap<String, String>>,
    /// The channels agents hold open to this master, by node.
    pub channels: api::channel::Channels,
    /// What the ingresses counted for the new revision of each rollout under way (read by the leader).
    pub traffic: controller::rollouts::TrafficReadings,
}

impl Shared {
    pub fn cluster(&self) -> MutexGuard<'_, Cluster> {
        debug_assert!(!HOLDS_LEASES.get(), "the cluster lock taken while holding the leases lock: the order is cluster, then leases");
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn leases(&self) -> LeasesGuard<'_> {
        let guard = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        HOLDS_LEASES.set(true);
        LeasesGuard(guard)
    }

    /// Commits `txn` and waits until this master's view has it: what the
    /// caller reads next includes its write. Returns the commit's revision.
    pub async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let divisible = txn.is_divisible();
        let Some(write) = self.cluster().prepare(txn)? else { return Ok(self.cluster().revision) };
        let limits = self.store.limits();
        let revision = if divisible && !write.fits(limits) {
            // The pieces stand on their own: sent together, the store commits them in as few rounds as it can.
            use futures::StreamExt;
            let commits =
                futures::stream::iter(write.split(limits)).map(|piece| self.store.commit(piece)).buffer_unordered(PIECES_IN_FLIGHT);
            let revisions: Vec<Result<u64, StoreError>> = commits.collect().await;
            let mut last = 0;
            for revision in revisions {
                last = last.max(revision?);
            }
            last
        } else {
            self.store.commit(write).await?
        };
        self.caught_up(revision).await;
        Ok(revision)
    }

    /// Builds a transaction from the view and commits it; when another write
    /// came first (a conflict), builds it again from the newer view, a few
    /// times. What `build` returns beside the transaction is handed back.
    pub async fn update<T>(&self, mut build: impl FnMut(&Cluster) -> Result<(Txn, T), api::Failure>) -> Result<T, api::Failure> {
        let mut tries = 0;
        loop {
            let (txn, out) = build(&self.cluster())?;
            match self.commit(txn).await {
                Ok(_) => return Ok(out),
                Err(StoreError::Conflict { .. }) if tries < UPDATE_TRIES => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until the view has applied `revision` (or the master stops).
    pub async fn caught_up(&self, revision: u64) {
        let mut changes = self.cluster().subscribe();
        tokio::select! {
            _ = changes.wait_for(|applied| *applied >= revision) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}

thread_local! {
    /// Whether this thread holds [`Shared::leases`] (debug builds check the lock order with it).
    static HOLDS_LEASES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`Shared::leases`] held; while it is, [`Shared::cluster`] must not be taken.
pub struct LeasesGuard<'a>(MutexGuard<'a, Leases>);

impl std::ops::Deref for LeasesGuard<'_> {
    type Target = Leases;
    fn deref(&self) -> &Leases {
        &self.0
    }
}

impl std::ops::DerefMut for LeasesGuard<'_> {
    fn deref_mut(&mut self) -> &mut Leases {
        &mut self.0
    }
}

impl Drop for LeasesGuard<'_> {
    fn drop(&mut self) {
        HOLDS_LEASES.set(false);
    }
}

/// Pieces of a divisible write sent to the store at once.
const PIECES_IN_FLIGHT: usize = 16;

/// How often [`Shared::update`] builds a transaction again after a conflict.
const UPDATE_TRIES: u32 = 5;

/// Commits [`follow`] applies under one lock, at most, when the store delivered them together.
const APPLIED_AT_ONCE: usize = 16;

/// Keeps the view current: applies every commit the store's watch delivers,
/// in order; loads the whole store again when the watch cannot resume. The
/// commits already delivered are applied under one lock, so a burst of them
/// (a write split into pieces) wakes each watcher once, not once per commit.
async fn follow(shared: Arc<Shared>, watch: Option<store::Watch>, stop: CancellationToken) {
    use futures::StreamExt;
    let mut watch = watch.map(|w| w.ready_chunks(APPLIED_AT_ONCE));
    let mut backoff = Duration::from_millis(100);
    // Set when the store no longer has the revisions after the view's.
    let mut compacted = false;
    loop {
        if let Some(stream) = watch.as_mut() {
            let delivered = tokio::select! {
                _ = stop.cancelled() => return,
                next = stream.next() => next,
            };
            match delivered.map(|batches| apply_delivered(&shared, batches)) {
                Some(Ok(())) => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Some(Err(StoreError::Compacted(_))) => compacted = true,
                Some(Err(e)) => tracing::warn!(error = %e, "the store's watch broke off; resuming"),
                None => tracing::warn!("the store's watch ended; resuming"),
            }
            watch = None;
        }
        let from = shared.cluster().revision;
        let opened = if compacted { Err(StoreError::Compacted(from)) } else { shared.store.watch(from).await };
        compacted = false;
        let resumed = match opened {
            Err(StoreError::Compacted(_)) => {
                tracing::warn!(revision = from, "the store cannot resume its watch there: loading everything again");
                match shared.store.load().await {
                    Ok(snapshot) => {
                        let revision = snapshot.revision;
                        shared.cluster().reload(snapshot);
                        shared.store.watch(revision).await
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        match resumed {
            Ok(stream) => watch = Some(stream.ready_chunks(APPLIED_AT_ONCE)),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot watch the store");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Applies the commits the watch delivered together, in order, under one
/// lock, up to the first error (what came after it is delivered again when
/// the watch resumes from the view's revision).
fn apply_delivered(shared: &Shared, delivered: Vec<Result<store::Batch, StoreError>>) -> Result<(), StoreError> {
    let mut cluster = shared.cluster();
    for batch in delivered {
        cluster.apply(batch?);
    }
    Ok(())
}

/// Runs the master on `listener` until `shutdown` completes, then ends open
/// watches, stops the controllers and finishes in-flight requests.
pub async fn run(config: MasterConfig, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the listener's address")?;
    // The store, the CA key and the tokens: readable by the master only.
    config.check()?;
    wasmlet_security::files::private_dir(&config.data_dir)?;
    // A store that exists but cannot be read stops the master here, naming the file: never an empty cluster over it.
    let store: Arc<dyn Store> = match config.store {
        config::StoreKind::Redb => Arc::new(store::RedbStore::open(&config.data_dir)?),
        config::StoreKind::Etcd => Arc::new(store::EtcdStore::connect(config.etcd()).await?),
    };
    let snapshot = store.load().await.with_context(|| format!("loading the cluster from {}", store.describe()))?;
    let watch = store.watch(snapshot.revision).await.with_context(|| format!("watching {}", store.describe()))?;
    let mut cluster = Cluster::new(snapshot);
    // Objects it cannot act on are marked and reported; they do not keep the master from starting.
    let not_acted_on = controller::workloads::check_stored(&mut cluster, &config);
    let secrets = auth::bootstrap::prepare(&config, store.as_ref()).await?;
    let metrics = Metrics::default();
    let audit_path = config.data_dir.join("audit.log");
    let bounds = auth::audit::Bounds { max_size: config.audit_log_max_size.get(), max_files: config.audit_log_max_files };
    let audit = auth::audit::AuditLog::open(audit_path.clone(), bounds, metrics.audit_lines_dropped.clone())
        .with_context(|| format!("opening the audit log {}", audit_path.display()))?;
    let scheme = if secrets.tls.is_some() { "https" } else { "http" };
    let modules =
        ModuleStore::open(&config.data_dir, store.clone()).with_context(|| format!("opening {}/modules", config.data_dir.display()))?;
    let registry = registry_client(&config)?;
    let leases = Leases::starting_at(cluster.nodes.keys().cloned(), tokio::time::Instant::now());
    tracing::info!(
        listen = %format!("{scheme}://{addr}"),
        data_dir = %config.data_dir.display(),
        store = %store.describe(),
        revision = cluster.revision,
        nodes = cluster.nodes.len(),
        workloads = cluster.workloads.len(),
        instances = cluster.instances.len(),
        not_acted_on = cluster.invalid.len(),
        "wasmlet master started"
    );
    let open_files = wasmlet_security::serve::raise_open_files_limit();
    let limits = config.connection_limits(open_files);
    tracing::info!(open_files, max_connections = limits.max_connections, "connection limits");
    let stop = CancellationToken::new();
    let agents = cluster.agents();
    let cluster_tokens = cluster.tokens.clone();
    let shared = Arc::new(Shared {
        store,
        name: auth::bootstrap::advertised_url(&config),
        agents,
        cluster: Mutex::new(cluster),
        leases: Mutex::new(leases),
        modules,
        registry,
        refusals: auth::ratelimit::RefusalLimit::new(config.refused_per_second, config.refused_burst),
        config,
        metrics,
        wake: Notify::new(),
        shutdown: stop.clone(),
        tokens: cluster_tokens,
        audit: Some(audit),
        ca_fingerprint: secrets.tls.as_ref().map(|_| secrets.pki.fingerprint()),
        pki: secrets.pki,
        renewed_credentials: Mutex::default(),
        channels: Default::default(),
        traffic: Default::default(),
    });
    tokio::spawn(follow(shared.clone(), Some(watch), stop.clone()));
    shared.commit(not_acted_on).await.context("recording the stored objects it cannot act on")?;
    auth::bootstrap::ensure_tokens(&shared).await?;
    shared.store.announce(&shared.name, stop.clone()).await.context("listing this master among the cluster's masters")?;
    tokio::spawn(controller::relay::publish(shared.clone(), stop.clone()));
    let controllers = tokio::spawn(controller::lead(shared.clone(), stop.clone()));
    if let Some(slot) = secrets.serving {
        tokio::spawn(auth::serving::keep_renewed(shared.clone(), slot, stop.clone()));
    }
    tokio::spawn(forget_idle_sources(shared.clone(), stop.clone()));
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    let connections = wasmlet_security::serve::Connections { listener: "api", limits, metrics: shared.metrics.connections.clone() };
    wasmlet_security::serve::serve(listener, api::router(shared), secrets.tls, connections, stop.clone())
        .await
        .context("serving the API")?;
    stop.cancel();
    controllers.await.context("the controllers failed")?;
    tracing::info!("master stopped");
    Ok(())
}

/// Keeps the refusal rate limit's table to the sources refused lately.
async fn forget_idle_sources(shared: Arc<Shared>, stop: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => shared.refusals.forget_idle(),
        }
    }
}

/// The registry client, trusting what `--registry-ca-file` adds; a credentials file that cannot be read stops the start.
fn registry_client(config: &MasterConfig) -> anyhow::Result<wasmlet_registry::Registry> {
    let extra_ca = match &config.registry_ca_file {
        Some(file) => Some(std::fs::read(file).with_context(|| format!("--registry-ca-file {}: cannot read it", file.display()))?),
        None => None,
    };
    if let Some(file) = &config.registry_credentials {
        wasmlet_registry::credentials::Credentials::read(file).map_err(|e| anyhow::anyhow!("--registry-credentials {e}"))?;
    }
    let user_agent = concat!("wasmlet-master/", env!("CARGO_PKG_VERSION"));
    wasmlet_registry::Registry::new(extra_ca.as_deref(), user_agent)
        .map_err(|e| anyhow::anyhow!("{e} (the system's CAs and --registry-ca-file)"))
}
