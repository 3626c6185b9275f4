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
use crate::cluster::Cluster;
use crate::config::MasterConfig;

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

/// Loads or creates the CAs, the serving certificate and the bootstrap tokens.
pub fn prepare(config: &MasterConfig, cluster: &mut Cluster) -> anyhow::Result<Secrets> {
    let dir = &config.data_dir;
    let (pki, created) = ClusterPki::load_or_create(&dir.join(PKI_DIR)).context("the cluster's CAs")?;
    if created.cluster {
        tracing::info!(fingerprint = %pki.fingerprint(), dir = %dir.join(PKI_DIR).display(), "created the cluster CA");
    }
    if created.nodes {
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
    ensure_token(cluster, &dir.join(ADMIN_TOKEN_FILE), Role::Admin, "the admin token of the first start", |t| t.to_string())?;
    let ca = pki.fingerprint();
    let join_file = dir.join(JOIN_TOKEN_FILE);
    let created_join = ensure_token(cluster, &join_file, Role::Join, "the join token of the first start", |t| {
        JoinToken { ca, token: t.clone() }.to_string()
    })?;
    if created_join {
        // The file and the command, never the token: logs travel further than the data dir.
        tracing::info!(
            file = %join_file.display(),
            "created a join token; `wasmlet-master join-command --data-dir {}` prints the command that joins a node",
            dir.display()
        );
    }
    Ok(Secrets { pki, serving, tls })
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
fn ensure_token(
    cluster: &mut Cluster,
    file: &Path,
    role: Role,
    description: &str,
    text: impl Fn(&Token) -> String,
) -> anyhow::Result<bool> {
    if let Some(existing) = files::read_secret(file)? {
        let token = Token::from_bearer(&existing).with_context(|| format!("{}", file.display()))?;
        if cluster.tokens.get(&token.id).is_none() {
            tracing::warn!(file = %file.display(), "the store had no record of this token; recording it again");
            commit_token(cluster, TokenRecord::new(&token, role, description, None))?;
        }
        return Ok(false);
    }
    let token = Token::generate()?;
    commit_token(cluster, TokenRecord::new(&token, role, description, None))?;
    files::write_private(file, format!("{}\n", text(&token)).as_bytes())?;
    Ok(true)
}

fn commit_token(cluster: &mut Cluster, record: TokenRecord) -> anyhow::Result<()> {
    let mut txn = cluster.txn();
    txn.put_token(record);
    cluster.commit(txn).context("recording a token")?;
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
