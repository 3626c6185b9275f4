//! What the agent knows about its machine, the way a kubelet reports NodeStatus.
//!
//! A [`Reporter`] reads the machine through a [`Probe`] on a timer, turns the
//! facts into a [`Node`] (capacity, allocatable, conditions, addresses, usage)
//! and publishes it as a [`Report`] with the JSON and metrics already rendered.
//! Readers never touch the machine: they clone an `Arc` of the latest report.

pub mod conditions;
pub mod metrics;
pub mod probe;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use wasmlet_api::{AddressType, Bytes, Condition, Cpu, Node, NodeAddress, NodeRuntime, NodeStatus, NodeUsage, ResourceList};

pub use conditions::{AgentHealth, ConditionTracker, DataDirProblem, Thresholds};
pub use probe::{Facts, HostProbe, Probe};

use crate::config::AgentConfig;
use crate::supervisor::Supervisor;
use metrics::NodeMetrics;

/// One published reading of the machine.
#[derive(Debug, Clone)]
pub struct Report {
    /// Grows by one each time the content changes; also the Node's `resourceVersion`.
    pub version: u64,
    /// Unique across agent restarts, so a cached copy from an earlier run never matches.
    pub etag: String,
    pub node: Node,
    pub json: bytes::Bytes,
    pub metrics: bytes::Bytes,
}

/// What the reporter is told once, at start.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// Node name; the hostname when None.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub sample_interval: Duration,
    pub thresholds: Thresholds,
    pub max_instances: u32,
    pub reserved: ResourceList,
    /// Shown in the report: the agent speaks plain HTTP.
    pub insecure_http: bool,
}

impl ReportSettings {
    pub fn from_config(config: &AgentConfig) -> Self {
        ReportSettings {
            name: config.name.clone(),
            labels: config.labels(),
            data_dir: config.data_dir.clone(),
            sample_interval: config.sample_interval.get(),
            thresholds: Thresholds {
                memory_available_min: config.memory_available_min,
                nodefs_available_min_percent: config.nodefs_available_min_percent,
                inodes_free_min_percent: config.inodes_free_min_percent,
                pid_available_min_percent: config.pid_available_min_percent,
                transition_period: config.pressure_transition_period.get(),
            },
            max_instances: config.max_instances,
            reserved: ResourceList {
                cpu: config.reserved_cpu,
                memory: config.reserved_memory,
                ephemeral_storage: config.reserved_storage,
                instances: 0,
            },
            insecure_http: config.insecure_http,
        }
    }
}

/// Where wall-clock timestamps come from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    /// Wall time that advances with tokio's clock, for tests on paused time.
    FollowTokio {
        instant: Instant,
        wall: DateTime<Utc>,
    },
}

impl Clock {
    pub fn follow_tokio() -> Self {
        Clock::FollowTokio { instant: Instant::now(), wall: Utc::now() }
    }

    fn wall(&self, now: Instant) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::FollowTokio { instant, wall } => {
                *wall + chrono::Duration::from_std(now.saturating_duration_since(*instant)).unwrap_or_default()
            }
        }
    }
}

/// Samples the machine and publishes reports.
pub struct Reporter {
    probe: Box<dyn Probe>,
    settings: ReportSettings,
    tracker: ConditionTracker,
    clock: Clock,
    /// The runtime's description, or why it failed to start: part of Ready.
    runtime: Result<String, String>,
    /// Versions of the agent and of wasmtime, copied into nodeInfo.
    versions: (String, String),
    /// Distinguishes this process's ETags from an earlier run's.
    run_id: String,
    metrics: NodeMetrics,
    tx: watch::Sender<Arc<Report>>,
    /// Where the node's instance list comes from, when the agent runs workloads.
    supervisor: Option<Arc<Supervisor>>,
    node_runtime: Option<NodeRuntime>,
    /// The last reading and what it meant, republished when only instances change.
    last: Option<(Facts, Vec<Condition>, DateTime<Utc>, f64)>,
}

impl Reporter {
    /// Takes the first sample at once, so the report is there before the API opens.
    pub fn new(
        probe: Box<dyn Probe>,
        settings: ReportSettings,
        runtime: Result<String, String>,
        clock: Clock,
    ) -> (Reporter, watch::Receiver<Arc<Report>>) {
        let transition = settings.thresholds.transition_period;
        let placeholder = Arc::new(Report {
            version: 0,
            etag: String::new(),
            node: Node::new("unknown"),
            json: bytes::Bytes::new(),
            metrics: bytes::Bytes::new(),
        });
        let (tx, _) = watch::channel(placeholder);
        let run_id = format!("{:x}", Utc::now().timestamp_nanos_opt().unwrap_or_default() ^ i64::from(std::process::id()));
        let mut reporter = Reporter {
            probe,
            settings,
            tracker: ConditionTracker::new(transition),
            clock,
            runtime,
            versions: (env!("CARGO_PKG_VERSION").to_string(), crate::executor::RUNTIME_VERSION.to_string()),
            run_id,
            metrics: NodeMetrics::new(),
            tx,
            supervisor: None,
            node_runtime: None,
            last: None,
        };
        reporter.sample();
        let rx = reporter.tx.subscribe();
        (reporter, rx)
    }

    /// Lists the supervisor's instances in the report and republishes when they change.
    pub fn with_supervisor(mut self, supervisor: Arc<Supervisor>, node_runtime: NodeRuntime) -> Self {
        self.supervisor = Some(supervisor);
        self.node_runtime = Some(node_runtime);
        self.publish();
        self
    }

    /// Samples every `sample_interval` until `shutdown` completes, and
    /// republishes when instances change. Dropping the reporter then ends
    /// every watch waiting on it.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut ticks = tokio::time::interval_at(Instant::now() + self.settings.sample_interval, self.settings.sample_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let changed = self.supervisor.as_ref().map(|s| s.changed.subscribe());
        let instances_changed = wait_for_change(changed.clone());
        tokio::pin!(shutdown);
        tokio::pin!(instances_changed);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticks.tick() => self.sample(),
                rx = &mut instances_changed => {
                    self.publish();
                    // Bursts of changes (a thousand instances starting) are published at most every 100 ms.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    instances_changed.set(wait_for_change(rx));
                }
            }
        }
    }

    /// Reads the machine once and publishes the result if anything changed.
    pub fn sample(&mut self) {
        let started = std::time::Instant::now();
        let facts = self.probe.read();
        let now = Instant::now();
        let wall = self.clock.wall(now);
        let health = AgentHealth { data_dir: check_data_dir(&self.settings.data_dir), runtime: self.runtime.clone() };
        let observations = conditions::observe(&facts, &health, &self.settings.thresholds);
        let conditions = self.tracker.update(observations, now, wall);
        self.last = Some((facts, conditions, wall, started.elapsed().as_secs_f64()));
        self.publish();
    }

    /// Builds the Node from the last reading and the current instances, and
    /// publishes it if it differs from the previous report.
    fn publish(&mut self) {
        let Some((facts, conditions, wall, sample_seconds)) = self.last.clone() else { return };
        let previous = self.tx.borrow().clone();
        let mut node = self.build_node(&facts, wall);
        node.status.conditions = conditions;
        if let Some(supervisor) = &self.supervisor {
            node.status.instances = supervisor.summaries();
        }
        node.status.runtime = self.node_runtime.clone();
        node.status.insecure_http = self.settings.insecure_http;
        node.metadata.resource_version = Some(previous.version);
        node.metadata.creation_timestamp = previous.node.metadata.creation_timestamp.or(Some(wall));

        let json = serde_json::to_vec(&node).unwrap_or_default();
        if json == previous.json {
            return;
        }
        let version = previous.version + 1;
        node.metadata.resource_version = Some(version);
        let json = serde_json::to_vec(&node).unwrap_or_default();
        let metrics = self.metrics.render(&node, sample_seconds);
        self.tx.send_replace(Arc::new(Report {
            version,
            etag: format!("\"{}-{version}\"", self.run_id),
            node,
            json: json.into(),
            metrics: metrics.into(),
        }));
    }

    fn build_node(&self, facts: &Facts, wall: DateTime<Utc>) -> Node {
        let name = self.settings.name.clone().unwrap_or_else(|| node_name_from_hostname(&facts.hostname));
        let mut node = Node::new(name);
        node.metadata.labels = self.settings.labels.clone();
        for (key, value) in [
            ("wasmlet.io/hostname", facts.hostname.clone()),
            ("wasmlet.io/arch", facts.info.architecture.clone()),
            ("wasmlet.io/os", facts.info.operating_system.clone()),
        ] {
            if wasmlet_api::validate::is_label_value(&value) {
                node.metadata.labels.entry(key.to_string()).or_insert(value);
            }
        }

        let disk = facts.disk.clone().unwrap_or_default();
        let capacity = ResourceList {
            cpu: Cpu::from_cores(u64::from(facts.cpus)),
            memory: Bytes::new(facts.memory.total_bytes),
            ephemeral_storage: Bytes::new(disk.total_bytes),
            instances: self.settings.max_instances,
        };
        let reserved = &self.settings.reserved;
        let allocatable = ResourceList {
            cpu: capacity.cpu.saturating_sub(reserved.cpu),
            memory: capacity.memory.saturating_sub(reserved.memory),
            ephemeral_storage: capacity.ephemeral_storage.saturating_sub(reserved.ephemeral_storage),
            instances: capacity.instances,
        };

        let mut info = facts.info.clone();
        info.agent_version = self.versions.0.clone();
        info.runtime_version = self.versions.1.clone();

        node.status = NodeStatus {
            capacity,
            allocatable,
            conditions: Vec::new(),
            addresses: addresses(facts),
            node_info: info,
            usage: Some(NodeUsage {
                sample_time: wall,
                cpu_percent: facts.cpu_percent.map_or(0.0, |p| (p * 10.0).round() / 10.0),
                memory: facts.memory.clone(),
                disk,
                pids: facts.pids.clone(),
                pressure: facts.pressure.clone(),
            }),
            instances: Vec::new(),
            runtime: None,
            insecure_http: false,
        };
        node
    }
}

/// Completes when the supervisor signals a change; never without one.
async fn wait_for_change(changed: Option<watch::Receiver<u64>>) -> Option<watch::Receiver<u64>> {
    match changed {
        Some(mut rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            Some(rx)
        }
        None => std::future::pending().await,
    }
}

/// The node's name: as configured, else from the hostname.
pub fn node_name(configured: Option<&str>) -> String {
    match configured {
        Some(name) => name.to_string(),
        None => node_name_from_hostname(&sysinfo::System::host_name().unwrap_or_default()),
    }
}

/// The hostname, lowercased and cut to a valid node name.
fn node_name_from_hostname(hostname: &str) -> String {
    let short = hostname.split('.').next().unwrap_or(hostname).to_ascii_lowercase();
    let cleaned: String = short.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(63).collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() { "node".to_string() } else { trimmed.to_string() }
}

/// Hostname first, then every non-loopback address of an up interface,
/// IPv4 before IPv6 (IPv6 link-local left out: it is useless off the link).
fn addresses(facts: &Facts) -> Vec<NodeAddress> {
    let mut out = vec![NodeAddress { kind: AddressType::Hostname, address: facts.hostname.clone() }];
    let mut interfaces: Vec<_> = facts.interfaces.iter().filter(|i| i.up && !i.loopback).collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    let mut found: Vec<&IpAddr> = interfaces.iter().flat_map(|i| i.addresses.iter()).collect();
    found.sort_by_key(|a| a.is_ipv6());
    for address in found {
        let link_local_v6 = matches!(address, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !address.is_loopback() && !address.is_unspecified() && !link_local_v6 {
            let text = address.to_string();
            if !out.iter().any(|a| a.address == text) {
                out.push(NodeAddress { kind: AddressType::InternalIp, address: text });
            }
        }
    }
    out
}

/// Below this much free space the data dir counts as full: the agent's own
/// writes (state, logs, compiled modules) would fail.
pub const DATA_DIR_FULL_BELOW: u64 = 1 << 20;

/// Whether the agent can write its data dir, without writing to it on every
/// sample (flash storage on small boards wears out): it exists, is writable,
/// is not on a read-only filesystem, and its filesystem has room (bytes and
/// inodes) for what the agent writes.
pub fn check_data_dir(dir: &std::path::Path) -> Result<(), DataDirProblem> {
    use rustix::fs::{Access, StatVfsMountFlags};
    let not_writable = |message: String| DataDirProblem { reason: "DataDirNotWritable", message };
    if !dir.is_dir() {
        return Err(not_writable(format!("data dir {} does not exist or is not a directory", dir.display())));
    }
    rustix::fs::access(dir, Access::WRITE_OK).map_err(|e| not_writable(format!("data dir {} is not writable: {e}", dir.display())))?;
    let st = rustix::fs::statvfs(dir).map_err(|e| not_writable(format!("data dir {}: {e}", dir.display())))?;
    if st.f_flag.contains(StatVfsMountFlags::RDONLY) {
        return Err(not_writable(format!("data dir {} is on a read-only filesystem", dir.display())));
    }
    // root may use the blocks and inodes a filesystem reserves for it.
    let root = rustix::process::geteuid().is_root();
    let (blocks, inodes) = if root { (st.f_bfree, st.f_ffree) } else { (st.f_bavail, st.f_favail) };
    let free = blocks.saturating_mul(st.f_frsize);
    // A filesystem without inode figures (f_files 0) has no inodes to run out of.
    if free < DATA_DIR_FULL_BELOW || (st.f_files > 0 && inodes == 0) {
        return Err(DataDirProblem {
            reason: "DataDirFull",
            message: format!(
                "data dir {} is full: its filesystem has {} and {inodes} inodes free; free space there or move --data-dir",
                dir.display(),
                Bytes::new(free).human()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe::FixedProbe;
    use wasmlet_api::{ConditionStatus, ConditionType};

    fn settings(data_dir: &std::path::Path) -> ReportSettings {
        ReportSettings {
            name: Some("edge-1".into()),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            data_dir: data_dir.to_path_buf(),
            sample_interval: Duration::from_secs(5),
            thresholds: Thresholds {
                memory_available_min: Bytes::new(100 << 20),
                nodefs_available_min_percent: 10.0,
                inodes_free_min_percent: 5.0,
                pid_available_min_percent: 5.0,
                transition_period: Duration::from_secs(30),
            },
            max_instances: 1000,
            reserved: ResourceList { cpu: Cpu::from_millis(500), memory: Bytes::new(1 << 30), ..Default::default() },
            insecure_http: false,
        }
    }

    fn condition(rx: &watch::Receiver<Arc<Report>>, kind: ConditionType) -> Condition {
        rx.borrow().node.condition(kind).cloned().expect("condition reported")
    }

    #[tokio::test(start_paused = true)]
    async fn memory_pressure_shows_at_once_and_clears_after_the_transition_period() {
        let dir = tempfile::tempdir().unwrap();
        let probe = FixedProbe::new(Facts::healthy_example());
        let clock = Clock::follow_tokio();
        let Clock::FollowTokio { instant: t0, wall: w0 } = clock else { unreachable!() };
        let (reporter, mut rx) = Reporter::new(Box::new(probe.clone()), settings(dir.path()), Ok("runtime ok".into()), clock);
        tokio::spawn(reporter.run(std::future::pending()));
        assert_eq!(condition(&rx, ConditionType::MemoryPressure).status, ConditionStatus::False);
        assert_eq!(condition(&rx, ConditionType::Ready).status, ConditionStatus::True);

        probe.update(|f| f.memory.available_bytes = 50 << 20);
        rx.changed().await.unwrap();
        let pressure = condition(&rx, ConditionType::MemoryPressure);
        assert_eq!(t0.elapsed(), Duration::from_secs(5), "the next sample, on paused time");
        assert_eq!(pressure.status, ConditionStatus::True);
        assert_eq!(pressure.reason, "AgentHasInsufficientMemory");
        assert!(pressure.message.contains("50Mi") && pressure.message.contains("100Mi"), "{}", pressure.message);
        let became_true = pressure.last_transition_time;

        probe.update(|f| f.memory.available_bytes = 4 << 30);
        loop {
            rx.changed().await.unwrap();
            let c = condition(&rx, ConditionType::MemoryPressure);
            let elapsed = t0.elapsed();
            assert_eq!(c.last_heartbeat_time, w0 + chrono::Duration::from_std(elapsed).unwrap());
            if elapsed < Duration::from_secs(35) {
                assert_eq!(c.status, ConditionStatus::True, "held at {elapsed:?}");
                assert_eq!(c.last_transition_time, became_true);
            } else {
                assert_eq!(elapsed, Duration::from_secs(35), "clear for the full 30 s since the last bad sample at 5 s");
                assert_eq!(c.status, ConditionStatus::False);
                assert_eq!(c.reason, "AgentHasSufficientMemory");
                assert_eq!(c.last_transition_time, w0 + chrono::Duration::seconds(35));
                break;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_allocatable_and_unavailable_psi() {
        let dir = tempfile::tempdir().unwrap();
        let mut facts = Facts::healthy_example();
        facts.pressure = probe::read_pressure(&dir.path().join("no-psi-here"));
        let (_reporter, rx) = Reporter::new(Box::new(FixedProbe::new(facts)), settings(dir.path()), Ok("ok".into()), Clock::follow_tokio());
        let report = rx.borrow().clone();
        let status = &report.node.status;
        assert_eq!(status.capacity.cpu, Cpu::from_cores(2));
        assert_eq!(status.allocatable.cpu, Cpu::from_millis(1500));
        assert_eq!(status.allocatable.memory, Bytes::new(7 << 30));
        assert_eq!(status.capacity.instances, 1000);
        assert_eq!(report.node.metadata.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(status.addresses[1].address, "10.0.0.2");
        let usage = status.usage.as_ref().unwrap();
        assert!(!usage.pressure.available);
        let metrics = std::str::from_utf8(&report.metrics).unwrap();
        assert!(metrics.contains("wasmlet_node_pressure_available 0"), "{metrics}");
        assert!(!metrics.contains("wasmlet_node_pressure_percent{"), "absent PSI is not exported as zero");
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_that_failed_makes_the_node_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let (_r, rx) = Reporter::new(
            Box::new(FixedProbe::new(Facts::healthy_example())),
            settings(dir.path()),
            Err("the WASM runtime did not start: no memory".into()),
            Clock::follow_tokio(),
        );
        let ready = condition(&rx, ConditionType::Ready);
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason, "RuntimeNotReady");
    }

    #[test]
    fn node_names_come_from_hostnames() {
        assert_eq!(node_name_from_hostname("Edge-Board_7.local"), "edge-board-7");
        assert_eq!(node_name_from_hostname("---"), "node");
    }
}
