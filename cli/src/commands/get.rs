//! `wasmlet get nodes|workloads|instances|events|masters [NAME]`: tables, or the
//! objects themselves with `-o json|yaml|name`; `-w` keeps printing rows as they change
//! (masters excepted: they are listed as they are now).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmlet_api::protocol::{List, MasterStatus};
use wasmlet_api::{Event, Instance, Node, RegistryCredential, Workload};

use super::{Session, print, usage};
use crate::style::Style;
use crate::table::Table;
use crate::{Result, view};
use wasmlet_api::Selector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    #[value(aliases = ["node", "no"])]
    Nodes,
    #[value(aliases = ["workload", "wl"])]
    Workloads,
    #[value(aliases = ["instance", "inst"])]
    Instances,
    #[value(aliases = ["event", "ev"])]
    Events,
    /// The cluster's masters and which one leads.
    #[value(aliases = ["master"])]
    Masters,
    /// Registry credentials the master holds (never their passwords).
    #[value(name = "registry-credentials", aliases = ["registry-credential"])]
    RegistryCredentials,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Yaml,
    Name,
    Wide,
}

/// List objects of one kind, or show one by name.
#[derive(Debug, Args)]
pub struct Get {
    resource: Resource,
    name: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum)]
    output: Option<Format>,
    /// Label selector: `k=v`, `k!=v`, `k`, `!k`, comma-separated.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// After listing, keep printing objects as they change.
    #[arg(short, long)]
    watch: bool,
}

/// A kind `get` can list: where it lives and how a row of it looks.
pub trait Listed: Serialize + DeserializeOwned + Clone {
    const PATH: &'static str;
    const KIND: &'static str;
    fn name(&self) -> &str;
    fn table(items: &[Self], wide: bool, now: DateTime<Utc>) -> Table;
}

impl Listed for Node {
    const PATH: &'static str = "/nodes";
    const KIND: &'static str = "node";
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn table(items: &[Self], wide: bool, now: DateTime<Utc>) -> Table {
        view::nodes(items, wide, now)
    }
}

impl Listed for Workload {
    const PATH: &'static str = "/workloads";
    const KIND: &'static str = "workload";
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn table(items: &[Self], wide: bool, now: DateTime<Utc>) -> Table {
        view::workloads(items, wide, now)
    }
}

impl Listed for Instance {
    const PATH: &'static str = "/instances";
    const KIND: &'static str = "instance";
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn table(items: &[Self], wide: bool, now: DateTime<Utc>) -> Table {
        view::instances(items, wide, now)
    }
}

impl Listed for Event {
    const PATH: &'static str = "/events";
    const KIND: &'static str = "event";
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn table(items: &[Self], _wide: bool, now: DateTime<Utc>) -> Table {
        view::events(items, now)
    }
}

impl Listed for MasterStatus {
    const PATH: &'static str = "/masters";
    const KIND: &'static str = "master";
    fn name(&self) -> &str {
        &self.name
    }
    fn table(items: &[Self], _wide: bool, _now: DateTime<Utc>) -> Table {
        view::masters(items)
    }
}

impl Listed for RegistryCredential {
    const PATH: &'static str = "/registry-credentials";
    const KIND: &'static str = "registry-credentials";
    fn name(&self) -> &str {
        &self.metadata.name
    }
    fn table(items: &[Self], _wide: bool, now: DateTime<Utc>) -> Table {
        view::registry_credentials(items, now)
    }
}

impl Get {
    pub fn execute(self, session: &Session) -> Result<()> {
        match self.resource {
            Resource::Nodes => self.run::<Node>(session),
            Resource::Workloads => self.run::<Workload>(session),
            Resource::Instances => self.run::<Instance>(session),
            Resource::Events => self.run::<Event>(session),
            Resource::Masters if self.watch => Err(usage("masters cannot be watched: `wasmlet get masters` lists them as they are now")),
            Resource::Masters => self.run::<MasterStatus>(session),
            Resource::RegistryCredentials => self.run::<RegistryCredential>(session),
        }
    }

    fn run<T: Listed>(&self, session: &Session) -> Result<()> {
        let selector = match &self.selector {
            Some(text) => Some(Selector::parse(text).map_err(|e| usage(format!("-l {e}")))?.to_string()),
            None => None,
        };
        let client = session.client()?;
        let wide = self.output == Some(Format::Wide);
        // Events have no GET by name; every kind is fetched as a list and filtered, which also gives the watch its revision.
        let list: List<T> = client.list(T::PATH, selector.as_deref())?;
        let items = self.only_named(list.items);
        if let Some(name) = &self.name
            && items.is_empty()
        {
            return Err(crate::Error::Api {
                status: 404,
                reason: "NotFound".into(),
                message: format!("{} `{name}` does not exist", T::KIND),
            });
        }
        let single = self.name.is_some() && !self.watch;
        print(&self.render(&items, wide, single, list.revision, session.style)?);
        if !self.watch {
            return Ok(());
        }
        let header = T::table(&items, wide, Utc::now());
        let mut seen: BTreeMap<String, String> = items.iter().map(|i| (i.name().to_string(), fingerprint(i))).collect();
        let mut since = list.revision;
        loop {
            let list = match client.watch::<T>(T::PATH, selector.as_deref(), since) {
                Ok(Some(list)) => list,
                Ok(None) => continue,
                // The cluster's store was replaced since the listing: list again, show what differs.
                Err(crate::Error::Api { status: 410, .. }) => {
                    since = 0;
                    continue;
                }
                Err(e) => return Err(e),
            };
            since = list.revision;
            let changed: Vec<T> = self
                .only_named(list.items)
                .into_iter()
                .filter(|i| seen.insert(i.name().to_string(), fingerprint(i)).as_deref() != Some(fingerprint(i).as_str()))
                .collect();
            if changed.is_empty() {
                continue;
            }
            let text = match self.output {
                None | Some(Format::Wide) => T::table(&changed, wide, Utc::now()).render_rows(session.style, &header),
                _ => self.render(&changed, wide, false, list.revision, session.style)?,
            };
            print(&text);
        }
    }

    fn only_named<T: Listed>(&self, items: Vec<T>) -> Vec<T> {
        match &self.name {
            Some(name) => items.into_iter().filter(|i| i.name() == name).collect(),
            None => items,
        }
    }

    fn render<T: Listed>(&self, items: &[T], wide: bool, single: bool, revision: u64, style: Style) -> Result<String> {
        let encode = |e: String| crate::Error::Failed(format!("cannot encode the output: {e}"));
        Ok(match self.output {
            Some(Format::Json) if single => serde_json::to_string_pretty(&items[0]).map_err(|e| encode(e.to_string()))? + "\n",
            Some(Format::Json) => {
                serde_json::to_string_pretty(&List { revision, items: items.to_vec() }).map_err(|e| encode(e.to_string()))? + "\n"
            }
            Some(Format::Yaml) if single => serde_yaml::to_string(&items[0]).map_err(|e| encode(e.to_string()))?,
            Some(Format::Yaml) => serde_yaml::to_string(&List { revision, items: items.to_vec() }).map_err(|e| encode(e.to_string()))?,
            Some(Format::Name) => items.iter().map(|i| format!("{}/{}\n", T::KIND, i.name())).collect(),
            None | Some(Format::Wide) => {
                if items.is_empty() {
                    super::note("No resources found.");
                    String::new()
                } else {
                    T::table(items, wide, Utc::now()).render(style, "")
                }
            }
        })
    }
}

/// What a watch compares to decide that an object changed.
fn fingerprint<T: Serialize>(item: &T) -> String {
    serde_json::to_string(item).unwrap_or_default()
}
