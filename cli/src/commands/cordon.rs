//! `wasmlet cordon NODE`: no new instances are placed there; what runs stays.

use clap::Args;
use reqwest::Method;
use wasmlet_api::Node;

use super::{Session, print};
use crate::Result;

/// Mark a node unschedulable.
#[derive(Debug, Args)]
pub struct Cordon {
    node: String,
}

impl Cordon {
    pub fn execute(self, session: &Session) -> Result<()> {
        print(&set_unschedulable(session, &self.node, true)?);
        Ok(())
    }
}

/// Cordons or uncordons; says `already …` when there was nothing to do, as kubectl does.
pub fn set_unschedulable(session: &Session, name: &str, unschedulable: bool) -> Result<String> {
    let client = session.client()?;
    let before: Node = client.get(&format!("/nodes/{name}"))?;
    let verb = if unschedulable { "cordon" } else { "uncordon" };
    if before.spec.unschedulable == unschedulable {
        return Ok(format!("node/{name} already {verb}ed\n"));
    }
    let _: Node = client.send_json(Method::POST, &format!("/nodes/{name}/{verb}"), &serde_json::json!({}))?;
    Ok(format!("node/{name} {verb}ed\n"))
}
