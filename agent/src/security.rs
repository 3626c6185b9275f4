//! The agent's side of cluster security.
//!
//! - Its API is guarded by [`ApiAuth`]: `/healthz` and `/readyz` are open;
//!   `/status` and `/metrics` also take the `--api-read-token`; everything
//!   takes the agent's own token (`<data-dir>/api.token`, for local tools)
//!   and the token the master presents (issued at registration).
//! - Joined to a master, it has a node certificate ([`NodeIdentity`]): the
//!   master's node CA signs its key (`<data-dir>/pki/agent.key`, which never
//!   leaves the machine) at each registration and renewal. It serves the API
//!   and the peer side of the ingress with it, and presents it to peers.
//! - [`Credential`]: what the first registration with a join token gave
//!   (`<data-dir>/credential.json`, 0600): the node credential (replaced at
//!   each renewal), the token the master presents, the cluster CA (to reach
//!   the master) and the node CA (to recognise nodes). From then on the join
//!   token is not used.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use wasmlet_security::peering::PeerServerSlot;
use wasmlet_security::tls::CertSlot;
use wasmlet_security::token::constant_time_eq;
use wasmlet_security::{Fingerprint, Token, files, pki};

pub const API_TOKEN_FILE: &str = "api.token";
pub const CREDENTIAL_FILE: &str = "credential.json";

/// Who may call the agent's API.
#[derive(Debug)]
pub struct ApiAuth {
    /// The agent's own token, for tools on this machine.
    local: String,
    /// The token the master presents, once registered.
    master: RwLock<Option<String>>,
    /// May read the resource report only.
    read: Option<String>,
}

/// What a caller may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    /// `/status` and `/metrics`.
    Report,
    Everything,
}

impl Access {
    pub fn of(path: &str) -> Access {
        match path {
            "/healthz" | "/readyz" => Access::Open,
            "/status" | "/metrics" => Access::Report,
            _ => Access::Everything,
        }
    }
}

impl ApiAuth {
    pub fn new(local: String, master: Option<String>, read: Option<String>) -> ApiAuth {
        ApiAuth { local, master: RwLock::new(master), read: read.filter(|r| !r.is_empty()) }
    }

    pub fn set_master(&self, token: String) {
        *self.master.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
    }

    /// Whether `bearer` may reach `access`.
    pub fn allows(&self, bearer: Option<&str>, access: Access) -> bool {
        if access == Access::Open {
            return true;
        }
        let Some(bearer) = bearer else { return false };
        let is = |token: &str| constant_time_eq(token.as_bytes(), bearer.as_bytes());
        if is(&self.local) || self.master.read().unwrap_or_else(|e| e.into_inner()).as_deref().is_some_and(is) {
            return true;
        }
        access == Access::Report && self.read.as_deref().is_some_and(is)
    }
}

/// The agent's own API token, created on first start. When the data dir is
/// unusable (the node then reports Ready=False) the token lives in memory only.
pub fn local_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(API_TOKEN_FILE);
    match files::read_secret(&path) {
        Ok(Some(token)) if !token.is_empty() => return Ok(token),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the API token; local tools cannot call the API"),
    }
    let token = Token::generate()?.to_string();
    if let Err(e) = files::write_private(&path, format!("{token}\n").as_bytes()) {
        tracing::warn!(error = %e, "cannot save the API token; local tools cannot call the API");
    }
    Ok(token)
}

/// What registering with a join token gave this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credential {
    pub node: String,
    pub master: String,
    /// The node credential, the bearer token for every request to the master.
    pub token: String,
    /// The token the master presents to this agent's API.
    pub master_token: String,
    /// The cluster CA (PEM), absent for an `--insecure-http` master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    /// The node CA (PEM): the master's calls and the peers' certificates chain to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_ca_certificate: Option<String>,
}

impl Credential {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(CREDENTIAL_FILE)
    }

    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Credential>> {
        let path = Credential::path(data_dir);
        let Some(text) = files::read_secret(&path)? else { return Ok(None) };
        let credential = serde_json::from_str(&text)
            .with_context(|| format!("{} cannot be read; delete it and join again with a join token", path.display()))?;
        Ok(Some(credential))
    }

    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        files::write_private(&Credential::path(data_dir), &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// The fingerprint of the CA it holds.
    pub fn ca_fingerprint(&self) -> anyhow::Result<Option<Fingerprint>> {
        Ok(self.ca_certificate.as_deref().map(Fingerprint::of_pem).transpose()?)
    }
}

/// This node's key and certificate (under `<data-dir>/pki/`) and the node CA:
/// what it serves its API and its peers with, and presents to peers.
pub struct NodeIdentity {
    dir: PathBuf,
    pub key_pem: String,
    /// The node certificate: filled from disk at start and at every registration and renewal.
    pub slot: Arc<CertSlot>,
    /// The node CA (PEM), from the master.
    nodes_ca: RwLock<Option<String>>,
    /// The peer side of the ingress: mutual TLS, once the certificate and the node CA are known.
    pub peer_server: Arc<PeerServerSlot>,
}

/// Never prints the key.
impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity").field("dir", &self.dir).field("certificate", &self.slot.is_set()).finish()
    }
}

impl NodeIdentity {
    /// Loads the key (creating it on first start), the last certificate, if
    /// any, and the node CA the saved credential holds.
    pub fn load_or_create(data_dir: &Path, nodes_ca: Option<String>) -> anyhow::Result<NodeIdentity> {
        let dir = data_dir.join("pki");
        let key_path = dir.join("agent.key");
        let key_pem = match files::read_secret(&key_path)? {
            Some(key) => format!("{key}\n"),
            None => {
                let key = pki::generate_key()?;
                files::write_private(&key_path, key.as_bytes())?;
                key
            }
        };
        let identity = NodeIdentity {
            dir,
            key_pem,
            slot: Arc::new(CertSlot::default()),
            nodes_ca: RwLock::new(None),
            peer_server: Arc::new(PeerServerSlot::default()),
        };
        if let Some(chain) = files::read_secret(&identity.dir.join("agent.crt"))? {
            let saved = pki::Identity { chain_pem: format!("{chain}\n"), key_pem: identity.key_pem.clone() };
            if let Err(e) = identity.slot.set(&saved) {
                tracing::warn!(error = %e, "ignoring the saved node certificate; the next registration brings a new one");
            }
        }
        if let Some(ca) = nodes_ca
            && let Err(e) = identity.trust(&ca)
        {
            tracing::warn!(error = %format!("{e:#}"), "ignoring the saved node CA; the next registration brings it again");
        }
        Ok(identity)
    }

    /// A signing request for this key.
    pub fn request(&self) -> anyhow::Result<String> {
        Ok(pki::signing_request(&self.key_pem, "wasmlet-agent")?)
    }

    /// Serves and presents `chain_pem` from now on, and after restarts; with
    /// the node CA, when the master sent it, serves peers too.
    pub fn install(&self, chain_pem: &str, nodes_ca: Option<&str>) -> anyhow::Result<()> {
        self.slot.set(&pki::Identity { chain_pem: chain_pem.to_string(), key_pem: self.key_pem.clone() })?;
        files::write_private(&self.dir.join("agent.crt"), chain_pem.as_bytes())?;
        if let Some(ca) = nodes_ca {
            self.trust(ca)?;
        }
        Ok(())
    }

    /// Recognises nodes by the node CA of `ca_pem` from now on.
    fn trust(&self, ca_pem: &str) -> anyhow::Result<()> {
        let server = wasmlet_security::tls::peer_server_config(ca_pem, self.slot.clone())?;
        self.peer_server.set(server);
        *self.nodes_ca.write().unwrap_or_else(|e| e.into_inner()) = Some(ca_pem.to_string());
        Ok(())
    }

    /// Whether the peer side is served: the node CA is known.
    pub fn serves_peers(&self) -> bool {
        self.nodes_ca.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The node CA (PEM), once known.
    pub fn nodes_ca(&self) -> Option<String> {
        self.nodes_ca.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_admits_each_token_where_it_belongs() {
        let auth = ApiAuth::new("local".into(), None, Some("reader".into()));
        assert!(auth.allows(None, Access::Open));
        assert!(!auth.allows(None, Access::Report));
        assert!(auth.allows(Some("local"), Access::Everything));
        assert!(auth.allows(Some("reader"), Access::Report));
        assert!(!auth.allows(Some("reader"), Access::Everything));
        assert!(!auth.allows(Some("master"), Access::Everything));
        auth.set_master("master".into());
        assert!(auth.allows(Some("master"), Access::Everything));
        assert!(!auth.allows(Some("loca"), Access::Report));
        assert_eq!(Access::of("/instances/x/logs"), Access::Everything);
    }

    #[test]
    fn the_local_token_and_the_key_persist() {
        let dir = tempfile::tempdir().unwrap();
        let token = local_token(dir.path()).unwrap();
        assert_eq!(local_token(dir.path()).unwrap(), token);
        let key = NodeIdentity::load_or_create(dir.path(), None).unwrap();
        assert!(!key.slot.is_set());
        assert!(key.nodes_ca().is_none());
        assert!(key.request().unwrap().contains("CERTIFICATE REQUEST"));
        assert_eq!(NodeIdentity::load_or_create(dir.path(), None).unwrap().key_pem, key.key_pem);
    }
}
