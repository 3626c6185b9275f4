//! The master's serving certificate: issued by the cluster CA at start for
//! the master's names (its hostname, its addresses, `--tls-san`), and issued
//! again at two thirds of `--serving-certificate-ttl` while the master runs,
//! for the names of that moment, without a restart. New handshakes get the
//! new certificate; open connections keep theirs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use wasmlet_security::tls::CertSlot;
use wasmlet_security::{ClusterPki, pki};

use crate::Shared;
use crate::config::MasterConfig;

/// Issues a new serving certificate and serves it from now on.
pub fn issue(pki: &ClusterPki, config: &MasterConfig, slot: &CertSlot) -> anyhow::Result<()> {
    let names = pki::local_names(&config.tls_san);
    let lifetime = config.serving_certificate_ttl;
    let identity = pki.issue_master_identity(&names, lifetime.get()).context("the master's serving certificate")?;
    slot.set(&identity).context("the master's serving certificate")?;
    tracing::info!(names = ?names, valid_for = %lifetime, "serving TLS with a new certificate");
    Ok(())
}

/// Renews the serving certificate at two thirds of its lifetime until `stop`.
pub async fn keep_renewed(shared: Arc<Shared>, slot: Arc<CertSlot>, stop: CancellationToken) {
    let lifetime = shared.config.serving_certificate_ttl.get();
    let mut next = pki::renewal_due(lifetime);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = stop.cancelled() => return,
        }
        next = match issue(&shared.pki, &shared.config, &slot) {
            Ok(()) => pki::renewal_due(lifetime),
            Err(e) => {
                // The current certificate is still valid for a third of its life: try again well before.
                let retry = (lifetime / 10).min(Duration::from_secs(60));
                tracing::error!(error = %format!("{e:#}"), retry_in = ?retry, "cannot renew the master's serving certificate");
                retry
            }
        };
    }
}
