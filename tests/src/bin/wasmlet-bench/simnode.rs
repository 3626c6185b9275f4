//! A fleet of simulated nodes: each speaks the real master ↔ agent protocol
//! of `wasmlet_api::protocol` over HTTP like an agent does, but runs nothing.
//! Thousands of them share one tokio runtime in the bench process, so the
//! master can be measured at a scale no machine could host with real agents.
//! Each has an HTTP client of its own, as an agent does: its connections are
//! kept alive between heartbeats and never lent to another node (one pool
//! for all would open a burst of new connections, each a TLS handshake,
//! whenever answers slow down, which no fleet of agents does).
//!
//! A node registers (`POST /nodes/register`) with a plausible [`NodeStatus`]
//! (4 CPUs, 8 GiB, 110 instances; Ready and no pressure), renews its lease
//! (`PUT /nodes/{name}/lease`) every heartbeat interval the master answered
//! with, and, once [`Fleet::start_watches`] is called, long-polls its
//! assignment (`GET /nodes/{name}/assignment?watch=true`) and reports every
//! newly assigned instance as Running in one batch per assignment
//! (`PUT /nodes/{name}/instances/status`).
//!
//! What the nodes see and how long their requests take is counted in
//! [`Stats`]. Dropping the [`Fleet`] ends every node at once (the runtime is
//! shut down), without telling the master.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use reqwest::StatusCode;
use wasmlet_api::protocol::{
    Assignment, InstanceStatusBatch, InstanceStatusUpdate, LeaseRenewal, LeaseResponse, RegisterRequest, RegisterResponse,
};
use wasmlet_api::{
    AddressType, Bytes, Condition, ConditionStatus, ConditionType, Cpu, InstanceStatus, NodeAddress, NodeInfo, NodeStatus, Phase,
    ResourceList,
};

/// How long a lease renewal, a registration or a status report may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// What a node asks the master to hold an assignment watch open for.
const WATCH_SECONDS: u64 = 30;
/// Pause after a failed watch or report before the next try.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
const REGISTER_ATTEMPTS: usize = 3;

/// What the fleet's nodes did, counted across all of them.
#[derive(Default)]
pub struct Stats {
    pub registered: AtomicU64,
    pub register_errors: AtomicU64,
    pub leases: AtomicU64,
    /// Failed renewals: no answer within [`REQUEST_TIMEOUT`], a connection error or a non-2xx answer.
    pub lease_errors: AtomicU64,
    pub watches: AtomicU64,
    pub watch_errors: AtomicU64,
    /// Instances that appeared in some node's assignment.
    pub seen: AtomicU64,
    /// Instances whose Running report the master acknowledged (204).
    pub reported: AtomicU64,
    pub report_errors: AtomicU64,
    recording: AtomicBool,
    lease_latencies_ms: Mutex<Vec<f64>>,
    last_seen: Mutex<Option<Instant>>,
    last_reported: Mutex<Option<Instant>>,
}

impl Stats {
    /// Starts keeping the latency of every successful lease renewal.
    pub fn start_recording(&self) {
        lock(&self.lease_latencies_ms).clear();
        self.recording.store(true, Ordering::SeqCst);
    }

    /// Stops keeping latencies; returns those kept since [`Stats::start_recording`], in milliseconds.
    pub fn stop_recording(&self) -> Vec<f64> {
        self.recording.store(false, Ordering::SeqCst);
        std::mem::take(&mut *lock(&self.lease_latencies_ms))
    }

    /// When a node last saw an instance new to it in its assignment.
    pub fn last_seen(&self) -> Option<Instant> {
        *lock(&self.last_seen)
    }

    /// When the master last acknowledged a Running report.
    pub fn last_reported(&self) -> Option<Instant> {
        *lock(&self.last_reported)
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn lease_done(&self, latency: Duration) {
        self.leases.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            lock(&self.lease_latencies_ms).push(latency.as_secs_f64() * 1000.0);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Simulated nodes on one tokio runtime of their own.
pub struct Fleet {
    runtime: Option<tokio::runtime::Runtime>,
    /// The cluster CA the nodes trust (empty: plain HTTP).
    ca_pem: String,
    /// `https://127.0.0.1:PORT/api/v1` of each master; node `i` talks to master `i % n`.
    apis: Vec<String>,
    /// The `<id>.<secret>` every node registers with.
    join_token: String,
    pub stats: Arc<Stats>,
    /// Each registered node's credential and the assignment revision it runs.
    nodes: Mutex<BTreeMap<String, Arc<NodeState>>>,
}

struct NodeState {
    client: reqwest::Client,
    credential: String,
    revision: AtomicU64,
    /// The API of the master the node talks to.
    api: String,
}

impl Fleet {
    /// A fleet joining `master` with its join token (trusting its CA),
    /// its runtime on `threads` worker threads.
    pub fn new(master: &wasmlet_tests::Master, threads: usize) -> anyhow::Result<Fleet> {
        Self::spread(&[master], threads)
    }

    /// A fleet spread over several masters of one cluster (sharing one CA
    /// and join tokens): node `i` talks to master `i % masters.len()`.
    pub fn spread(masters: &[&wasmlet_tests::Master], threads: usize) -> anyhow::Result<Fleet> {
        let master = masters.first().context("a fleet needs a master")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("simnode")
            .enable_all()
            .build()
            .context("building the simulated nodes' runtime")?;
        // Presented whole: the master takes a join token's `<id>.<secret>` part.
        let join_token = master.join_token.clone();
        Ok(Fleet {
            runtime: Some(runtime),
            ca_pem: master.ca_pem.clone(),
            apis: masters.iter().map(|m| format!("{}/api/v1", m.url)).collect(),
            join_token,
            stats: Arc::default(),
            nodes: Mutex::default(),
        })
    }

    /// A node's own HTTP client.
    fn node_client(&self) -> anyhow::Result<reqwest::Client> {
        let mut client = reqwest::Client::builder().tls_built_in_root_certs(false);
        if !self.ca_pem.is_empty() {
            client = client.add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes())?);
        }
        client
            // Below the master's --idle-timeout (60 s): the node lets a connection go
            // before the master closes it, so no renewal is sent on one being closed.
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .context("building a simulated node's HTTP client")
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    /// Registers `names` with at most `concurrency` registrations in flight, and
    /// starts each node's lease renewals as soon as it is registered. The
    /// renewals of the whole fleet are spread evenly over the heartbeat
    /// interval. Gives up after `timeout`; returns how long it took and how many
    /// nodes registered.
    pub fn register(&self, names: &[String], concurrency: usize, timeout: Duration) -> (Duration, usize) {
        let started = Instant::now();
        let total = names.len().max(1);
        let registered = self.runtime().block_on(async {
            let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut tasks = tokio::task::JoinSet::new();
            for (index, name) in names.iter().enumerate() {
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                if started.elapsed() > timeout {
                    break;
                }
                let api = self.apis[index % self.apis.len()].clone();
                let client = match self.node_client() {
                    Ok(client) => client,
                    Err(error) => {
                        eprintln!("simnode: {name}: {error:#}");
                        continue;
                    }
                };
                let (stats, name) = (self.stats.clone(), name.clone());
                let join_token = self.join_token.clone();
                tasks.spawn(async move {
                    let result = register_one(&client, &api, &join_token, &name).await;
                    drop(permit);
                    match result {
                        Ok(response) => {
                            stats.registered.fetch_add(1, Ordering::Relaxed);
                            let state = Arc::new(NodeState {
                                client: client.clone(),
                                credential: response.credential.unwrap_or_default(),
                                revision: AtomicU64::new(0),
                                api: api.clone(),
                            });
                            let interval: Duration = response.heartbeat_interval.into();
                            // Node `index` renews at its share of the interval: the fleet's renewals are spread evenly.
                            let offset = interval.mul_f64(index as f64 / total as f64);
                            tokio::spawn(renew_leases(client, format!("{api}/nodes/{name}/lease"), state.clone(), stats, interval, offset));
                            Some((name, state))
                        }
                        Err(error) => {
                            stats.register_errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("simnode: {name} could not register: {error:#}");
                            None
                        }
                    }
                });
            }
            let mut registered = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                if let Ok(Some(node)) = joined {
                    registered.push(node);
                }
            }
            registered
        });
        let count = registered.len();
        lock(&self.nodes).extend(registered);
        (started.elapsed(), count)
    }

    /// Starts every registered node's assignment watch: from then on, newly
    /// assigned instances are reported Running.
    pub fn start_watches(&self) {
        let nodes: Vec<(String, Arc<NodeState>)> = lock(&self.nodes).iter().map(|(n, s)| (n.clone(), s.clone())).collect();
        for (name, state) in nodes {
            self.runtime().spawn(watch_assignment(state.client.clone(), state.api.clone(), name, state, self.stats.clone()));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The status a simulated node reports: a small machine, Ready, no pressure.
pub fn node_status(name: &str) -> NodeStatus {
    let now = Utc::now();
    let resources =
        ResourceList { cpu: Cpu::from_cores(4), memory: Bytes::new(8 << 30), ephemeral_storage: Bytes::new(100 << 30), instances: 110 };
    let conditions = ConditionType::ALL
        .into_iter()
        .map(|kind| {
            let (status, reason, message) = match kind {
                ConditionType::Ready => (ConditionStatus::True, "AgentReady", "simulated node is ready".to_string()),
                other => (ConditionStatus::False, "NoPressure", format!("simulated node has no {other}")),
            };
            Condition { kind, status, reason: reason.to_string(), message, last_heartbeat_time: now, last_transition_time: now }
        })
        .collect();
    NodeStatus {
        capacity: resources,
        allocatable: resources,
        conditions,
        addresses: vec![
            NodeAddress { kind: AddressType::Hostname, address: name.to_string() },
            NodeAddress { kind: AddressType::InternalIp, address: "127.0.0.1".to_string() },
        ],
        node_info: NodeInfo {
            machine_id: crate::support::hex_id(name),
            system_uuid: String::new(),
            boot_id: crate::support::hex_id(&format!("boot {name}")),
            kernel_version: "6.1.0-simulated".to_string(),
            os_image: "wasmlet-bench simulated node".to_string(),
            operating_system: "linux".to_string(),
            architecture: "amd64".to_string(),
            cpu_model: "simulated".to_string(),
            agent_version: "wasmlet-bench-simnode".to_string(),
            runtime_version: "none".to_string(),
        },
        usage: None,
        instances: Vec::new(),
        runtime: None,
        insecure_http: false,
    }
}

async fn register_one(client: &reqwest::Client, api: &str, join_token: &str, name: &str) -> anyhow::Result<RegisterResponse> {
    let request = RegisterRequest {
        name: name.to_string(),
        labels: [("wasmlet.io/simulated".to_string(), "true".to_string())].into(),
        taints: Vec::new(),
        status: node_status(name),
        protocol_version: None,
        min_protocol_version: None,
        serving_csr: None,
        api_port: None,
        api_url: None,
        ingress_port: None,
    };
    let mut attempt = 1;
    loop {
        let result = async {
            let response =
                client.post(format!("{api}/nodes/register")).bearer_auth(join_token).json(&request).timeout(REQUEST_TIMEOUT).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            if !status.is_success() {
                bail!("{status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(wasmlet_api::from_json::<RegisterResponse>(&body)?)
        }
        .await;
        match result {
            Ok(response) => return Ok(response),
            Err(error) if attempt >= REGISTER_ATTEMPTS => return Err(error),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Renews the lease every `interval`, the first time after `offset`, until the runtime ends.
async fn renew_leases(
    client: reqwest::Client,
    url: String,
    state: Arc<NodeState>,
    stats: Arc<Stats>,
    interval: Duration,
    offset: Duration,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bearer = format!("Bearer {}", state.credential);
    loop {
        ticks.tick().await;
        let renewal = LeaseRenewal { assignment_revision: state.revision.load(Ordering::Relaxed) };
        let began = Instant::now();
        let result = async {
            let response =
                client.put(&url).header(reqwest::header::AUTHORIZATION, &bearer).json(&renewal).timeout(REQUEST_TIMEOUT).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            if !status.is_success() {
                bail!("{status}");
            }
            Ok(wasmlet_api::from_json::<LeaseResponse>(&body)?)
        }
        .await;
        match result {
            Ok(_) => stats.lease_done(began.elapsed()),
            Err(_) => {
                stats.lease_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Watches the node's assignment and reports each newly assigned instance Running, until the runtime ends.
async fn watch_assignment(client: reqwest::Client, api: String, name: String, state: Arc<NodeState>, stats: Arc<Stats>) {
    let bearer = format!("Bearer {}", state.credential);
    let status_url = format!("{api}/nodes/{name}/instances/status");
    // Instance name → the epoch it was reported Running under.
    let mut running: HashMap<String, u64> = HashMap::new();
    let mut since = 0;
    loop {
        let url = format!("{api}/nodes/{name}/assignment?watch=true&since={since}&timeoutSeconds={WATCH_SECONDS}");
        let result = async {
            let response = client
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, &bearer)
                .timeout(Duration::from_secs(WATCH_SECONDS + 15))
                .send()
                .await?;
            let status = response.status();
            if status == StatusCode::NOT_MODIFIED {
                return Ok(None);
            }
            let body = response.bytes().await?;
            if !status.is_success() {
                bail!("{status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(Some(wasmlet_api::from_json::<Assignment>(&body)?))
        }
        .await;
        stats.watches.fetch_add(1, Ordering::Relaxed);
        let assignment = match result {
            Ok(Some(assignment)) => assignment,
            Ok(None) => continue,
            Err(_) => {
                stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        since = assignment.revision;
        let now = Utc::now();
        let updates: Vec<InstanceStatusUpdate> = assignment
            .instances
            .iter()
            .map(|a| &a.instance)
            .filter(|i| running.get(&i.metadata.name) != Some(&i.spec.epoch))
            .map(|i| InstanceStatusUpdate {
                name: i.metadata.name.clone(),
                epoch: i.spec.epoch,
                status: InstanceStatus { phase: Phase::Running, started_at: Some(now), ..InstanceStatus::default() },
            })
            .collect();
        if !updates.is_empty() {
            stats.seen.fetch_add(updates.len() as u64, Ordering::Relaxed);
            *lock(&stats.last_seen) = Some(Instant::now());
            let batch = InstanceStatusBatch { updates };
            loop {
                let result = client
                    .put(&status_url)
                    .header(reqwest::header::AUTHORIZATION, &bearer)
                    .json(&batch)
                    .timeout(REQUEST_TIMEOUT)
                    .send()
                    .await;
                match result {
                    Ok(response) if response.status().is_success() => break,
                    _ => {
                        stats.report_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            stats.reported.fetch_add(batch.updates.len() as u64, Ordering::Relaxed);
            *lock(&stats.last_reported) = Some(Instant::now());
            for update in batch.updates {
                running.insert(update.name, update.epoch);
            }
        }
        // Forget instances no longer assigned; the node now runs this revision.
        running.retain(|name, _| assignment.instances.iter().any(|a| &a.instance.metadata.name == name));
        state.revision.store(since, Ordering::Relaxed);
    }
}
