//! A new cluster's secrets, created on the master's first start under its
//! data dir: the cluster CA and the node CA (`pki/`), the admin token
//! (`admin.token`) and a join token (`join.token`), all 0600. Later starts
//! load them (and add the node CA to a cluster of an older version). The
//! token files hold the only plain copies; the store keeps their hashes, and
//! a token whose record was lost with the store is recorded again from its
//! file (a revoked one stays revoked: its record is kept). No secret is ever
//! logged: the log names the file and the command that prints it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use wasmlet_security::tls::CertSlot;
use wasmlet_security::{ClusterPki, JoinToken, Token, files, pki, tls};

use super::{Role, TokenRecord};
use crate::Shared;
use crate::config::MasterConfig;
use crate::store::Store;

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const JOIN_TOKEN_FILE: &str = "join.token";
pub const PKI_DIR: &str = "pki";

/// What the master serves with.
pub struct Secrets {
    pub pki: ClusterPki,
    /// The serving certificate, renewed while the master runs ([`super::serving`]); None with `--insecure-http`.
    pub serving: Option<Arc<CertSlot>>,
    /// None with `--insecure-http`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The files of the cluster's CAs in `pki/`, which all masters of a cluster share.
const PKI_FILES: [&str; 4] = ["ca.crt", "ca.key", "nodes-ca.crt", "nodes-ca.key"];

/// Loads or creates the CAs and the serving certificate. The CAs are the
/// cluster's, kept by `store` for every master: the first master's, which
/// later ones write into their data dirs (a data dir with other CAs is refused).
pub async fn prepare(config: &MasterConfig, store: &dyn Store) -> anyhow::Result<Secrets> {
    let dir = &config.data_dir;
    let pki_dir = dir.join(PKI_DIR);
    let had_pki = pki_dir.join(PKI_FILES[0]).exists();
    let (mut pki, created) = ClusterPki::load_or_create(&pki_dir).context("the cluster's CAs")?;
    let ours = pki_bundle(&pki_dir)?;
    let kept = store.share(PKI_DIR, ours.clone()).await.context("sharing the cluster's CAs")?;
    if kept != ours {
        if had_pki {
            anyhow::bail!(
                "the CAs in {} are not this cluster's (another master of {} created the cluster's first): \
                 this data dir belongs to another cluster. Move {} away to take the cluster's CAs",
                pki_dir.display(),
                store.describe(),
                pki_dir.display()
            );
        }
        let files: std::collections::BTreeMap<String, String> = serde_json::from_slice(&kept).context("the cluster's CAs in the store")?;
        for name in PKI_FILES {
            let text = files.get(name).with_context(|| format!("the cluster's CAs in the store have no {name}"))?;
            files::write_private(&pki_dir.join(name), text.as_bytes())?;
        }
        (pki, _) = ClusterPki::load_or_create(&pki_dir).context("the cluster's CAs")?;
        tracing::info!(fingerprint = %pki.fingerprint(), dir = %pki_dir.display(), "took the cluster's CAs from the store");
    }
    if created.cluster && kept == ours {
        tracing::info!(fingerprint = %pki.fingerprint(), dir = %dir.join(PKI_DIR).display(), "created the cluster CA");
    }
    if created.nodes && kept == ours {
        tracing::info!(fingerprint = %pki.nodes().fingerprint(), dir = %dir.join(PKI_DIR).display(), "created the node CA (node certificates)");
    }
    let (serving, tls) = if config.insecure_http {
        tracing::warn!("--insecure-http: the API is served over plain HTTP; tokens and workloads cross the network in clear text");
        (None, None)
    } else {
        let slot = Arc::new(CertSlot::default());
        super::serving::issue(&pki, config, &slot)?;
        let tls = tls::server_with_slot(slot.clone()).context("the TLS configuration")?;
        (Some(slot), Some(tls))
    };
    Ok(Secrets { pki, serving, tls })
}

/// Loads or creates the bootstrap tokens: the admin token and a join token.
pub async fn ensure_tokens(shared: &Shared) -> anyhow::Result<()> {
    let dir = &shared.config.data_dir;
    ensure_token(shared, &dir.join(ADMIN_TOKEN_FILE), Role::Admin, "the admin token of the first start", |t| t.to_string()).await?;
    let ca = shared.pki.fingerprint();
    let join_file = dir.join(JOIN_TOKEN_FILE);
    let created_join = ensure_token(shared, &join_file, Role::Join, "the join token of the first start", |t| {
        JoinToken { ca, token: t.clone() }.to_string()
    })
    .await?;
    if created_join {
        // The file and the command, never the token: logs travel further than the data dir.
        tracing::info!(
            file = %join_file.display(),
            "created a join token; `wasmlet-master join-command --data-dir {}` prints the command that joins a node",
            dir.display()
        );
    }
    Ok(())
}

/// The CA files of `dir` as one value, to share with the other masters.
fn pki_bundle(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    for name in PKI_FILES {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        files.insert(name, text);
    }
    Ok(serde_json::to_vec(&files)?)
}

/// The command that joins a node with the join token in `join.token`.
pub fn join_command(config: &MasterConfig) -> anyhow::Result<String> {
    let file = config.data_dir.join(JOIN_TOKEN_FILE);
    let token = files::read_secret(&file)?.with_context(|| {
        format!(
            "{} does not exist: is this the master's data dir (--data-dir), and has the master started once? \
             `wasmlet-master token create` makes a join token",
            file.display()
        )
    })?;
    Ok(format!("wasmlet-agent --master {} --join-token {token}\n", advertised_url(config)))
}

/// Makes sure the token in `file` is recorded, creating both when the file is missing.
/// Returns whether it created the token.
async fn ensure_token(
    shared: &Shared,
    file: &Path,
    role: Role,
    description: &str,
    text: impl Fn(&Token) -> String,
) -> anyhow::Result<bool> {
    if let Some(existing) = files::read_secret(file)? {
        let token = Token::from_bearer(&existing).with_context(|| format!("{}", file.display()))?;
        if shared.tokens.get(&token.id).is_none() {
            tracing::warn!(file = %file.display(), "the store had no record of this token; recording it again");
            commit_token(shared, TokenRecord::new(&token, role, description, None)).await?;
        }
        return Ok(false);
    }
    let token = Token::generate()?;
    commit_token(shared, TokenRecord::new(&token, role, description, None)).await?;
    files::write_private(file, format!("{}\n", text(&token)).as_bytes())?;
    Ok(true)
}

async fn commit_token(shared: &Shared, record: TokenRecord) -> anyhow::Result<()> {
    let mut txn = shared.cluster().txn();
    txn.put_token(record);
    shared.commit(txn).await.context("recording a token")?;
    Ok(())
}

/// The URL nodes reach this master at: the listen address, or for a wildcard
/// listen address the machine's first non-loopback IPv4 address.
pub fn advertised_url(config: &MasterConfig) -> String {
    let ip = match config.listen.ip() {
        ip if ip.is_unspecified() => pki::local_names(&[])
            .iter()
            .filter_map(|n| n.parse::<IpAddr>().ok())
            .find(|ip| ip.is_ipv4() && !ip.is_loopback())
            .unwrap_or(IpAddr::from([127, 0, 0, 1])),
        ip => ip,
    };
    url_of(SocketAddr::new(ip, config.listen.port()), !config.insecure_http)
}

/// The URL of this master from the same machine (token and config commands).
pub fn local_url(config: &MasterConfig) -> String {
    let ip = match config.listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    url_of(SocketAddr::new(ip, config.listen.port()), !config.insecure_http)
}

fn url_of(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}
