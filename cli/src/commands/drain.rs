//! `wasmlet drain NODE [--timeout 2m]`: cordons the node and moves every
//! instance elsewhere, each replacement Running before its original stops.
//! The master does the work in one request; meanwhile this shows how many are left.

use std::sync::mpsc;
use std::time::Duration;

use clap::Args;
use reqwest::Method;
use serde::Deserialize;
use wasmlet_api::Instance;

use super::{Session, note, print};
use crate::{Error, Result};

/// Move every instance off a node and cordon it.
#[derive(Debug, Args)]
pub struct Drain {
    node: String,
    /// Give up after this long (the instances not moved by then stay).
    #[arg(long, default_value = "2m")]
    timeout: wasmlet_api::Duration,
}

/// The master's answer to `POST /nodes/{name}/drain`.
#[derive(Debug, Clone, Deserialize)]
pub struct DrainReport {
    pub node: String,
    pub complete: bool,
    #[serde(default)]
    pub moved: Vec<Moved>,
    #[serde(default)]
    pub replacements: Vec<Replacement>,
    #[serde(default)]
    pub remaining: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Moved {
    pub instance: String,
    pub workload: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Replacement {
    pub instance: String,
    pub workload: String,
    pub node: String,
}

impl Drain {
    pub fn execute(self, session: &Session) -> Result<()> {
        let client = session.client()?;
        let name = self.node.clone();
        let _: wasmlet_api::Node = client.get(&format!("/nodes/{name}"))?;
        let seconds = self.timeout.get().as_secs().max(1);
        let request = client
            .request(Method::POST, &format!("/nodes/{name}/drain"))
            .query(&[("timeoutSeconds", seconds.to_string())])
            .timeout(Duration::from_secs(seconds.saturating_add(30)));
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let answer = client.send(request).and_then(|r| client.decode::<DrainReport>(r, "/nodes/drain"));
                let _ = tx.send(answer);
            });
            note(&format!("node/{name} cordoned"));
            let mut last = None;
            loop {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(answer) => return self.report(answer?),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(Error::Failed("the drain request ended without an answer".into()));
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                if let Ok(list) = client.list::<Instance>("/instances", None) {
                    let left = list.items.iter().filter(|i| i.spec.node == name && super::top::occupies(i)).count();
                    if last != Some(left) {
                        note(&format!("node/{name}: {left} instance(s) left to move"));
                        last = Some(left);
                    }
                }
            }
        })
    }

    fn report(&self, report: DrainReport) -> Result<()> {
        let mut out = String::new();
        for m in &report.moved {
            let to = report.replacements.iter().find(|r| r.workload == m.workload).map(|r| format!(" → {} on {}", r.instance, r.node));
            out.push_str(&format!("instance/{} (workload/{}) moved{}\n", m.instance, m.workload, to.unwrap_or_default()));
        }
        out.push_str(&format!("node/{} drained: {} instance(s) moved\n", report.node, report.moved.len()));
        if report.complete {
            print(&out);
            Ok(())
        } else {
            out.truncate(out.rfind("node/").unwrap_or(out.len()));
            print(&out);
            Err(Error::Failed(format!(
                "drain of node/{} timed out after {}: not moved: {}",
                report.node,
                self.timeout,
                report.remaining.join(", ")
            )))
        }
    }
}
