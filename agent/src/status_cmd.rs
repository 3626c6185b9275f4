//! `wasmlet-agent status`: the report of this machine, printed once.

use std::fmt::Write as _;
use std::time::Duration;

use wasmlet_api::{Bytes, Node, ResourceList, ResourcePressure};

use crate::config::{AgentConfig, OutputFormat};
use crate::report::{Clock, HostProbe, ReportSettings, Reporter};
use crate::runtime::Runtime;

/// Samples twice (CPU use needs an interval), then prints.
pub async fn execute(config: &AgentConfig, output: OutputFormat) -> anyhow::Result<()> {
    let runtime =
        Runtime::new(config.runtime_settings()).map(|r| r.describe()).map_err(|e| format!("the WASM runtime did not start: {e:#}"));
    let probe = Box::new(HostProbe::new(&config.data_dir));
    let (mut reporter, reports) = Reporter::new(probe, ReportSettings::from_config(config), runtime, Clock::System);
    tokio::time::sleep(Duration::from_millis(250)).await;
    reporter.sample();
    let node = reports.borrow().node.clone();
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&node)?),
        OutputFormat::Table => print!("{}", table(&node)),
    }
    Ok(())
}

/// The report as a person reads it, in the spirit of `kubectl describe node`.
pub fn table(node: &Node) -> String {
    let s = &node.status;
    let i = &s.node_info;
    let mut out = String::new();
    let _ = writeln!(out, "Name:                {}", node.metadata.name);
    let labels: Vec<String> = node.metadata.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "Labels:              {}", if labels.is_empty() { "<none>".to_string() } else { labels.join(", ") });
    let _ = writeln!(out, "System Info:");
    for (k, v) in [
        ("Machine ID", &i.machine_id),
        ("System UUID", &i.system_uuid),
        ("Boot ID", &i.boot_id),
        ("Kernel Version", &i.kernel_version),
        ("OS Image", &i.os_image),
        ("Operating System", &i.operating_system),
        ("Architecture", &i.architecture),
        ("CPU Model", &i.cpu_model),
        ("Agent Version", &i.agent_version),
        ("Runtime Version", &i.runtime_version),
    ] {
        let _ = writeln!(out, "  {:<19} {}", format!("{k}:"), if v.is_empty() { "<unknown>" } else { v });
    }
    let _ = writeln!(out, "Addresses:");
    for a in &s.addresses {
        let _ = writeln!(
            out,
            "  {:<19} {}",
            format!("{}:", serde_json::to_value(a.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()),
            a.address
        );
    }
    for (title, r) in [("Capacity", &s.capacity), ("Allocatable", &s.allocatable)] {
        let _ = writeln!(out, "{title}:");
        resources(&mut out, r);
    }
    if let Some(u) = &s.usage {
        let _ = writeln!(out, "Usage:");
        let _ = writeln!(out, "  {:<19} {:.1}%", "cpu:", u.cpu_percent);
        let _ = writeln!(
            out,
            "  {:<19} {} used, {} available of {}",
            "memory:",
            Bytes::new(u.memory.used_bytes).human(),
            Bytes::new(u.memory.available_bytes).human(),
            Bytes::new(u.memory.total_bytes).human()
        );
        let _ = writeln!(
            out,
            "  {:<19} {} used, {} available of {} ({}); inodes {} used of {}",
            "disk:",
            Bytes::new(u.disk.used_bytes).human(),
            Bytes::new(u.disk.available_bytes).human(),
            Bytes::new(u.disk.total_bytes).human(),
            u.disk.path,
            u.disk.inodes_used,
            u.disk.inodes_total
        );
        let _ = writeln!(out, "  {:<19} {} of {}", "pids:", u.pids.used, u.pids.max);
        let _ = writeln!(out, "Pressure (PSI, % stalled avg10/avg60):");
        if u.pressure.available {
            for (name, p) in [("cpu", &u.pressure.cpu), ("memory", &u.pressure.memory), ("io", &u.pressure.io)] {
                let _ = writeln!(out, "  {:<19} {}", format!("{name}:"), pressure(p));
            }
        } else {
            let _ = writeln!(out, "  unavailable: {}", u.pressure.reason.as_deref().unwrap_or("not reported"));
        }
    }
    let _ = writeln!(out, "Conditions:");
    let _ = writeln!(out, "  {:<19} {:<8} {:<28} MESSAGE", "TYPE", "STATUS", "REASON");
    for c in &s.conditions {
        let _ = writeln!(out, "  {:<19} {:<8} {:<28} {}", c.kind.to_string(), c.status.to_string(), c.reason, c.message);
    }
    out
}

fn resources(out: &mut String, r: &ResourceList) {
    let _ = writeln!(out, "  {:<19} {}", "cpu:", r.cpu);
    let _ = writeln!(out, "  {:<19} {}", "memory:", r.memory.human());
    let _ = writeln!(out, "  {:<19} {}", "ephemeral-storage:", r.ephemeral_storage.human());
    let _ = writeln!(out, "  {:<19} {}", "instances:", r.instances);
}

fn pressure(p: &Option<ResourcePressure>) -> String {
    match p {
        None => "unknown".to_string(),
        Some(p) => {
            let mut text = format!("some {:.2}/{:.2}", p.some.avg10, p.some.avg60);
            if let Some(full) = p.full {
                let _ = write!(text, ", full {:.2}/{:.2}", full.avg10, full.avg60);
            }
            text
        }
    }
}
