//! `wasmlet top nodes|instances`: live usage, asked of each node's agent through the master.

use clap::{Args, ValueEnum};
use serde::Deserialize;
use wasmlet_api::protocol::List;
use wasmlet_api::{Bytes, Instance, Node, Phase};

use super::{Session, note, print};
use crate::table::Table;
use crate::{Result, view};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    #[value(aliases = ["node", "no"])]
    Nodes,
    #[value(aliases = ["instance", "inst"])]
    Instances,
}

/// Show CPU and memory use of nodes or instances.
#[derive(Debug, Args)]
pub struct Top {
    what: What,
}

/// An instance that holds a place on its node.
pub fn occupies(i: &Instance) -> bool {
    !matches!(i.status.phase, Phase::Succeeded | Phase::Failed | Phase::Lost)
}

/// The agent's instance list, bare or wrapped in a `List`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Instances {
    Bare(Vec<Instance>),
    Listed(List<Instance>),
}

impl Top {
    pub fn execute(self, session: &Session) -> Result<()> {
        let client = session.client()?;
        let nodes: List<Node> = client.list("/nodes", None)?;
        let mut table;
        match self.what {
            What::Nodes => {
                table = Table::new(["NAME", "CPU%", "MEMORY(bytes)", "MEMORY%", "PIDS"]);
                for stored in &nodes.items {
                    let name = &stored.metadata.name;
                    let node = match client.get::<Node>(&format!("/nodes/{name}/live")) {
                        Ok(live) => live,
                        Err(e) => {
                            note(&format!("node/{name}: no live usage ({e}); showing its last report"));
                            stored.clone()
                        }
                    };
                    let (memory, pids) = match &node.status.usage {
                        Some(u) => (Bytes::new(u.memory.used_bytes).human(), u.pids.used.to_string()),
                        None => ("<unknown>".into(), "<unknown>".into()),
                    };
                    table.push([name.clone(), view::cpu_percent(&node), memory, view::memory_percent(&node), pids]);
                }
            }
            What::Instances => {
                table = Table::new(["NAME", "WORKLOAD", "NODE", "CPU(seconds)", "MEMORY"]);
                let mut rows = Vec::new();
                for node in &nodes.items {
                    let name = &node.metadata.name;
                    let instances = match client.get::<Instances>(&format!("/nodes/{name}/instances/live")) {
                        Ok(Instances::Bare(items)) | Ok(Instances::Listed(List { items, .. })) => items,
                        Err(e) => {
                            note(&format!("node/{name}: no live usage ({e})"));
                            continue;
                        }
                    };
                    for i in instances.into_iter().filter(occupies) {
                        let (cpu, memory) = match &i.status.usage {
                            Some(u) => (format!("{:.2}", u.cpu_seconds), Bytes::new(u.memory_bytes).human()),
                            None => ("<unknown>".into(), "<unknown>".into()),
                        };
                        rows.push([i.metadata.name.clone(), i.spec.workload.clone(), name.clone(), cpu, memory]);
                    }
                }
                rows.sort();
                for row in rows {
                    table.push(row);
                }
            }
        }
        if table.is_empty() {
            note("No resources found.");
        } else {
            print(&table.render(session.style, ""));
        }
        Ok(())
    }
}
