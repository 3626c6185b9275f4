//! `wasmlet uncordon NODE`: the node takes new instances again.

use clap::Args;

use super::cordon::set_unschedulable;
use super::{Session, print};
use crate::Result;

/// Mark a node schedulable again.
#[derive(Debug, Args)]
pub struct Uncordon {
    node: String,
}

impl Uncordon {
    pub fn execute(self, session: &Session) -> Result<()> {
        print(&set_unschedulable(session, &self.node, false)?);
        Ok(())
    }
}
