//! `wasmlet top nodes|instances`: live usage, asked of each node's agent through the master.

use clap::{Args, ValueEnum};
use serde::Deserialize;
use wasmlet_api::protocol::List;
use wasmlet_api::{Bytes, Instance, Node, Phase};

use super::{Session, note, print};
use crate::client::Client;
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

/// The instances of `node` with their usage now, as its agent has them (through the master).
pub(crate) fn live_instances(client: &Client, node: &str) -> Result<Vec<Instance>> {
    match client.get::<Instances>(&format!("/nodes/{node}/instances/live"))? {
        Instances::Bare(items) | Instances::Listed(List { items, .. }) => Ok(items),
    }
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
                let mut rows = Vec::new();
                for node in &nodes.items {
                    let name = &node.metadata.name;
                    let instances = match live_instances(&client, name) {
                        Ok(items) => items,
                        Err(e) => {
                            note(&format!("node/{name}: no live usage ({e})"));
                            continue;
                        }
                    };
                    rows.extend(instances.into_iter().filter(occupies).map(|i| (name.clone(), i)));
                }
                rows.sort_by(|(a_node, a), (b_node, b)| a.metadata.name.cmp(&b.metadata.name).then(a_node.cmp(b_node)));
                table = view::top_instances(&rows);
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
