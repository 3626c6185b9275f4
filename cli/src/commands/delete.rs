//! `wasmlet delete -f FILE` or `wasmlet delete workload|node NAME…`.

use clap::{Args, ValueEnum};
use reqwest::Method;

use super::{Session, note, print, usage};
use crate::{Error, Result, manifest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(aliases = ["workloads", "wl"])]
    Workload,
    #[value(aliases = ["nodes", "no"])]
    Node,
    #[value(name = "registry-credentials", aliases = ["registry-credential"])]
    RegistryCredentials,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Workload => "workload",
            Kind::Node => "node",
            Kind::RegistryCredentials => "registry-credentials",
        }
    }

    fn path(self, name: &str) -> String {
        match self {
            Kind::RegistryCredentials => format!("/registry-credentials/{name}"),
            kind => format!("/{}s/{name}", kind.as_str()),
        }
    }
}

/// Delete workloads (with their instances), nodes or registry credentials.
#[derive(Debug, Args)]
pub struct Delete {
    kind: Option<Kind>,
    names: Vec<String>,
    /// Delete the workloads these manifests define (file, directory or `-`).
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "names"])]
    files: Vec<String>,
    /// Succeed when an object is already gone.
    #[arg(long)]
    ignore_not_found: bool,
}

impl Delete {
    pub fn execute(self, session: &Session) -> Result<()> {
        let targets: Vec<(Kind, String)> = if !self.files.is_empty() {
            manifest::read(&self.files, false)?.into_iter().map(|d| (Kind::Workload, d.workload.metadata.name)).collect()
        } else {
            let kind =
                self.kind.ok_or_else(|| usage("say what to delete: `delete workload NAME`, `delete node NAME` or `delete -f FILE`"))?;
            if self.names.is_empty() {
                return Err(usage(format!("name the {} to delete", kind.as_str())));
            }
            self.names.iter().map(|n| (kind, n.clone())).collect()
        };
        let client = session.client()?;
        let mut failures = Vec::new();
        for (kind, name) in targets {
            let path = kind.path(&name);
            match client.send(client.request(Method::DELETE, &path)) {
                Ok(_) => print(&format!("{}/{name} deleted\n", kind.as_str())),
                Err(e) if e.is_not_found() && self.ignore_not_found => {}
                Err(e @ Error::Unreachable { .. }) => return Err(e),
                Err(e) => {
                    note(&format!("error: {}/{name}: {e}", kind.as_str()));
                    failures.push(name);
                }
            }
        }
        if failures.is_empty() { Ok(()) } else { Err(Error::Failed(format!("{} object(s) could not be deleted", failures.len()))) }
    }
}
