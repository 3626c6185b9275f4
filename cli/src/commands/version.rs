//! `wasmlet version`: this client's version and the master's.

use clap::Args;
use reqwest::Method;

use super::{Session, print};
use crate::Result;

/// Show the client's and the master's versions.
#[derive(Debug, Args)]
pub struct Version {
    /// Only the client's version; do not contact the master.
    #[arg(long)]
    client: bool,
}

impl Version {
    pub fn execute(self, session: &Session) -> Result<()> {
        print(&format!("client: wasmlet {}\n", env!("CARGO_PKG_VERSION")));
        if self.client {
            return Ok(());
        }
        let client = session.client()?;
        // A version endpoint where the master has one; otherwise its health check proves it is there.
        let line = match client.get::<serde_json::Value>("/version") {
            Ok(v) => {
                let version = v.get("version").and_then(|x| x.as_str()).map(str::to_string).unwrap_or_else(|| v.to_string());
                format!("master: {} {version}\n", client.master())
            }
            Err(e @ crate::Error::Unreachable { .. }) => return Err(e),
            Err(_) => {
                client.send(client.request(Method::GET, "/healthz"))?;
                format!("master: {} reachable (it does not report its version)\n", client.master())
            }
        };
        print(&line);
        Ok(())
    }
}
