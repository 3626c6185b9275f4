//! The report as Prometheus metrics. Rendered once per sample, so a scrape
//! costs a copy of bytes, not a walk over the machine.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wasmlet_api::{ConditionStatus, Node, ResourceList, ResourcePressure};

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The gauges of one node, registered once and set from each report.
pub struct NodeMetrics {
    registry: Registry,
    info: Family<Labels, FloatGauge>,
    capacity: Family<Labels, FloatGauge>,
    allocatable: Family<Labels, FloatGauge>,
    condition: Family<Labels, FloatGauge>,
    cpu_busy: FloatGauge,
    cpus: FloatGauge,
    memory: Family<Labels, FloatGauge>,
    disk: Family<Labels, FloatGauge>,
    disk_inodes: Family<Labels, FloatGauge>,
    pids: Family<Labels, FloatGauge>,
    pressure_available: FloatGauge,
    pressure: Family<Labels, FloatGauge>,
    sample_seconds: FloatGauge,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = NodeMetrics {
            registry: Registry::default(),
            info: Family::default(),
            capacity: Family::default(),
            allocatable: Family::default(),
            condition: Family::default(),
            cpu_busy: Gauge::default(),
            cpus: Gauge::default(),
            memory: Family::default(),
            disk: Family::default(),
            disk_inodes: Family::default(),
            pids: Family::default(),
            pressure_available: Gauge::default(),
            pressure: Family::default(),
            sample_seconds: Gauge::default(),
        };
        registry.register("wasmlet_node_info", "Facts about the node; the value is always 1", m.info.clone());
        registry.register(
            "wasmlet_node_capacity",
            "Node capacity by resource (cpu in cores, memory and storage in bytes)",
            m.capacity.clone(),
        );
        registry.register("wasmlet_node_allocatable", "Node allocatable by resource: capacity minus reservations", m.allocatable.clone());
        registry.register(
            "wasmlet_node_condition",
            "Node conditions: 1 for the status the condition has, 0 for the others",
            m.condition.clone(),
        );
        registry.register("wasmlet_node_cpu_busy_percent", "Busy share of all CPUs over the last sample interval", m.cpu_busy.clone());
        registry.register("wasmlet_node_cpus", "CPUs the agent may use", m.cpus.clone());
        registry.register(
            "wasmlet_node_memory_bytes",
            "Memory by state (total, used, available = the kernel's MemAvailable)",
            m.memory.clone(),
        );
        registry.register("wasmlet_node_disk_bytes", "The data dir's filesystem by state (total, used, available)", m.disk.clone());
        registry.register(
            "wasmlet_node_disk_inodes",
            "Inodes of the data dir's filesystem by state (total, used, free)",
            m.disk_inodes.clone(),
        );
        registry.register("wasmlet_node_pids", "Process IDs in use and pid_max", m.pids.clone());
        registry.register(
            "wasmlet_node_pressure_available",
            "1 when the kernel reports pressure stall information",
            m.pressure_available.clone(),
        );
        registry.register(
            "wasmlet_node_pressure_percent",
            "Pressure stall information: share of time stalled, by resource, kind (some/full) and window",
            m.pressure.clone(),
        );
        registry.register("wasmlet_agent_report_sample_seconds", "Wall time the last sample of the machine took", m.sample_seconds.clone());
        NodeMetrics { registry, ..m }
    }

    /// Sets every gauge from the node and renders the exposition text.
    pub fn render(&self, node: &Node, sample_seconds: f64) -> String {
        let status = &node.status;
        let info = &status.node_info;
        self.info.clear();
        self.info
            .get_or_create(&vec![
                ("node", node.metadata.name.clone()),
                ("kernel_version", info.kernel_version.clone()),
                ("os_image", info.os_image.clone()),
                ("architecture", info.architecture.clone()),
                ("agent_version", info.agent_version.clone()),
                ("runtime_version", info.runtime_version.clone()),
            ])
            .set(1.0);
        set_resources(&self.capacity, &status.capacity);
        set_resources(&self.allocatable, &status.allocatable);
        for condition in &status.conditions {
            for s in [ConditionStatus::True, ConditionStatus::False, ConditionStatus::Unknown] {
                self.condition
                    .get_or_create(&vec![("condition", condition.kind.to_string()), ("status", s.to_string())])
                    .set(if condition.status == s { 1.0 } else { 0.0 });
            }
        }
        self.cpus.set(status.capacity.cpu.millis() as f64 / 1000.0);
        self.sample_seconds.set(sample_seconds);
        if let Some(usage) = &status.usage {
            self.cpu_busy.set(usage.cpu_percent);
            let m = &usage.memory;
            for (state, v) in [("total", m.total_bytes), ("used", m.used_bytes), ("available", m.available_bytes)] {
                self.memory.get_or_create(&vec![("state", state.to_string())]).set(v as f64);
            }
            let d = &usage.disk;
            for (state, v) in [("total", d.total_bytes), ("used", d.used_bytes), ("available", d.available_bytes)] {
                self.disk.get_or_create(&vec![("state", state.to_string())]).set(v as f64);
            }
            for (state, v) in [("total", d.inodes_total), ("used", d.inodes_used), ("free", d.inodes_free)] {
                self.disk_inodes.get_or_create(&vec![("state", state.to_string())]).set(v as f64);
            }
            self.pids.get_or_create(&vec![("state", "used".to_string())]).set(usage.pids.used as f64);
            self.pids.get_or_create(&vec![("state", "max".to_string())]).set(usage.pids.max as f64);
            let p = &usage.pressure;
            self.pressure_available.set(if p.available { 1.0 } else { 0.0 });
            self.pressure.clear();
            for (resource, rp) in [("cpu", &p.cpu), ("memory", &p.memory), ("io", &p.io)] {
                if let Some(rp) = rp {
                    self.set_pressure(resource, rp);
                }
            }
        }
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    fn set_pressure(&self, resource: &str, rp: &ResourcePressure) {
        let kinds = [("some", Some(rp.some)), ("full", rp.full)];
        for (kind, averages) in kinds {
            let Some(a) = averages else { continue };
            for (window, v) in [("10s", a.avg10), ("60s", a.avg60)] {
                self.pressure
                    .get_or_create(&vec![("resource", resource.to_string()), ("kind", kind.to_string()), ("window", window.to_string())])
                    .set(v);
            }
        }
    }
}

fn set_resources(family: &Family<Labels, FloatGauge>, r: &ResourceList) {
    for (resource, v) in [
        ("cpu", r.cpu.millis() as f64 / 1000.0),
        ("memory", r.memory.get() as f64),
        ("ephemeral_storage", r.ephemeral_storage.get() as f64),
        ("instances", f64::from(r.instances)),
    ] {
        family.get_or_create(&vec![("resource", resource.to_string())]).set(v);
    }
}
