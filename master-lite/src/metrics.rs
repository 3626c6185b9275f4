//! The master's metrics, rendered as OpenMetrics text on `/metrics`.
//!
//! Counters are bumped where things happen (scheduling, hand-offs, HTTP
//! requests); the gauges (nodes by Ready status, instances by phase) are
//! recomputed from the cluster at each scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wasmlet_api::{ConditionStatus, ConditionType, Phase};

use crate::cluster::Cluster;

/// How a live request reached the agent: `channel` or `dial`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViaLabel {
    pub via: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabel {
    pub ready: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub code: String,
}

pub struct Metrics {
    registry: Registry,
    pub nodes: Family<ReadyLabel, Gauge>,
    pub instances: Family<PhaseLabel, Gauge>,
    pub scheduling_attempts: Counter,
    pub scheduling_failures: Counter,
    pub hand_offs: Counter,
    pub http_requests: Family<RequestLabels, Counter>,
    /// Audit lines not written (queue full, file unwritable, bound reached).
    pub audit_lines_dropped: Counter,
    /// Refused requests answered `429` by the refusal rate limit.
    pub rate_limited: Counter,
    /// Stored objects the master keeps but does not act on.
    pub not_acted_on: Gauge,
    /// 1 while this master leads the cluster (runs the controllers), else 0.
    pub is_leader: Gauge,
    /// What the API's listener accepted, refused and closed.
    pub connections: wasmlet_security::serve::ConnectionMetrics,
    /// Channels agents hold open to this master.
    pub agent_channels: Gauge,
    /// Operators' live requests relayed to agents, by way (`channel` or `dial`).
    pub live_requests: Family<ViaLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wasmlet_master");
        let m = Metrics {
            registry: Registry::default(),
            nodes: Family::default(),
            instances: Family::default(),
            scheduling_attempts: Counter::default(),
            scheduling_failures: Counter::default(),
            hand_offs: Counter::default(),
            http_requests: Family::default(),
            audit_lines_dropped: Counter::default(),
            rate_limited: Counter::default(),
            not_acted_on: Gauge::default(),
            is_leader: Gauge::default(),
            connections: Default::default(),
            agent_channels: Gauge::default(),
            live_requests: Family::default(),
        };
        registry.register("nodes", "Nodes by their Ready condition", m.nodes.clone());
        registry.register("instances", "Instances by phase", m.instances.clone());
        registry.register("scheduling_attempts", "Instances the scheduler tried to place", m.scheduling_attempts.clone());
        registry.register("scheduling_failures", "Placements that found no node", m.scheduling_failures.clone());
        registry.register("hand_offs", "Instances of silent nodes replaced on healthy ones", m.hand_offs.clone());
        registry.register("http_requests", "API requests by method and status code", m.http_requests.clone());
        registry.register("audit_lines_dropped", "Audit log lines not written", m.audit_lines_dropped.clone());
        registry.register(
            "requests_rate_limited",
            "Refused requests answered 429 because their source had too many refusals",
            m.rate_limited.clone(),
        );
        registry.register(
            "stored_objects_not_acted_on",
            "Stored objects the master cannot decode or act on (see the InvalidStoredObject events)",
            m.not_acted_on.clone(),
        );
        registry.register("is_leader", "1 while this master leads the cluster and runs its controllers, else 0", m.is_leader.clone());
        registry.register("agent_channels", "Channels agents hold open to this master", m.agent_channels.clone());
        registry.register(
            "live_requests",
            "Live requests (logs, live report, live instances) relayed to agents, by way: through the agent's channel or by dialing it",
            m.live_requests.clone(),
        );
        m.connections.register(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The OpenMetrics text, with the gauges refreshed from `cluster`.
    pub fn render(&self, cluster: &Cluster) -> String {
        for status in ["True", "False", "Unknown"] {
            self.nodes.get_or_create(&ReadyLabel { ready: status.into() }).set(0);
        }
        for node in cluster.nodes.values() {
            let status = node.condition(ConditionType::Ready).map(|c| c.status).unwrap_or(ConditionStatus::Unknown);
            self.nodes.get_or_create(&ReadyLabel { ready: status.to_string() }).inc();
        }
        for phase in Phase::ALL {
            self.instances.get_or_create(&PhaseLabel { phase: phase.to_string() }).set(0);
        }
        for placed in cluster.instances.values() {
            self.instances.get_or_create(&PhaseLabel { phase: placed.instance.status.phase.to_string() }).inc();
        }
        self.not_acted_on.set(i64::try_from(cluster.invalid.len()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
