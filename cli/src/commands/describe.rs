//! `wasmlet describe node|workload|instance NAME`: one object with the
//! instances and events that concern it.

use chrono::Utc;
use clap::{Args, ValueEnum};
use wasmlet_api::protocol::List;
use wasmlet_api::{Event, Instance, Node, Workload};

use super::{Session, note, print};
use crate::{Result, describe};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(aliases = ["nodes", "no"])]
    Node,
    #[value(aliases = ["workloads", "wl"])]
    Workload,
    #[value(aliases = ["instances", "inst"])]
    Instance,
}

/// Show everything about one object.
#[derive(Debug, Args)]
pub struct Describe {
    kind: Kind,
    name: String,
}

impl Describe {
    pub fn execute(self, session: &Session) -> Result<()> {
        let client = session.client()?;
        let name = &self.name;
        let events: List<Event> = client.list("/events", None)?;
        let now = Utc::now();
        let page = match self.kind {
            Kind::Node => {
                let mut node: Node = client.get(&format!("/nodes/{name}"))?;
                // The usage and pressure its agent has now (through the master), when the node is Ready.
                if node.is_ready() {
                    match client.get::<Node>(&format!("/nodes/{name}/live")) {
                        Ok(live) if live.status.usage.is_some() => node.status.usage = live.status.usage,
                        Ok(_) => {}
                        Err(e) => note(&format!("node/{name}: no live usage ({e}); showing its last report")),
                    }
                }
                let instances: List<Instance> = client.list("/instances", None)?;
                let workloads: List<Workload> = client.list("/workloads", None)?;
                describe::node(&node, &instances.items, &workloads.items, &events.items, now)
            }
            Kind::Workload => {
                let workload: Workload = client.get(&format!("/workloads/{name}"))?;
                let instances: List<Instance> = client.list("/instances", None)?;
                describe::workload(&workload, &instances.items, &events.items, now)
            }
            Kind::Instance => {
                let mut instance: Instance = client.get(&format!("/instances/{name}"))?;
                // The master keeps usage as of the instance's last change of phase; its agent has it as of now.
                let node = instance.spec.node.clone();
                if !node.is_empty() {
                    match super::top::live_instances(&client, &node) {
                        Ok(live) => match live.into_iter().find(|i| i.metadata.name == *name) {
                            Some(current) => instance.status.usage = current.status.usage,
                            None => note(&format!("instance/{name}: node/{node} does not run it now; showing its last reported usage")),
                        },
                        Err(e) => note(&format!("instance/{name}: no live usage ({e}); showing its last reported usage")),
                    }
                }
                describe::instance(&instance, &events.items, now)
            }
        };
        print(&page);
        Ok(())
    }
}
