//! `wasmlet logs INSTANCE|workload/NAME [-f] [--tail N] [--since 5m]`: an instance's output,
//! fetched by the master from whichever node runs it.

use std::io::{Read as _, Write as _};

use clap::Args;
use reqwest::Method;
use wasmlet_api::protocol::List;
use wasmlet_api::{Instance, Phase};

use super::{Session, note, split_ref, usage};
use crate::{Error, Result};

/// Print an instance's output.
#[derive(Debug, Args)]
pub struct Logs {
    /// An instance name, or `workload/NAME` for one of its running instances.
    target: String,
    /// Keep streaming new lines.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<u64>,
    /// Only lines newer than this: a duration (`30s`, `5m`, `2h`) or an RFC 3339 time.
    #[arg(long)]
    since: Option<wasmlet_api::Since>,
}

impl Logs {
    pub fn execute(self, session: &Session) -> Result<()> {
        let client = session.client()?;
        let (kind, name) = split_ref(&self.target, "instance");
        let instance = match kind {
            "instance" | "instances" | "inst" => name.to_string(),
            "workload" | "workloads" | "wl" => {
                let list: List<Instance> = client.list("/instances", None)?;
                let mut mine: Vec<Instance> = list.items.into_iter().filter(|i| i.spec.workload == name).collect();
                mine.sort_by_key(|i| (i.status.phase != Phase::Running, i.metadata.name.clone()));
                let first = mine.first().ok_or_else(|| Error::Failed(format!("workload/{name} has no instances")))?;
                if mine.len() > 1 {
                    note(&format!("Found {} instances, using instance/{}", mine.len(), first.metadata.name));
                }
                first.metadata.name.clone()
            }
            other => return Err(usage(format!("`{other}/…`: logs come from `INSTANCE` or `workload/NAME`"))),
        };
        let mut request = client.request(Method::GET, &format!("/instances/{instance}/logs"));
        if let Some(tail) = self.tail {
            request = request.query(&[("tail", tail.to_string())]);
        }
        if let Some(since) = &self.since {
            request = request.query(&[("since", since.to_string())]);
        }
        if self.follow {
            request = request.query(&[("follow", "true")]).timeout(std::time::Duration::from_secs(365 * 24 * 3600));
        }
        let mut response = client.send(request)?;
        let mut buffer = [0u8; 8192];
        let mut out = std::io::stdout().lock();
        loop {
            let n = match response.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Failed(format!("the log stream of instance/{instance} broke: {e}"))),
            };
            // Flushed per chunk, so `-f` shows each line as it comes.
            if out.write_all(&buffer[..n]).and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
}
