//! rustls configurations.
//!
//! - [`server_config`]: a server with one certificate chain (the master).
//! - [`CertSlot`]: a server whose certificate arrives or changes while it
//!   runs (an agent gets its certificate when it registers).
//! - [`client_trusting`]: a client that trusts the cluster CA and nothing else.
//! - [`client_pinned`]: a joining client: it accepts the master's chain only
//!   when the chain carries the CA with the join token's fingerprint, and
//!   then verifies the master's certificate against that CA as usual.

use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::pki::{Fingerprint, Identity};
use crate::{Error, Result, provider};

fn tls_error(what: &str) -> impl FnOnce(rustls::Error) -> Error + '_ {
    move |source| Error::Tls { what: what.to_string(), source }
}

/// Every certificate of a PEM text.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Invalid("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

fn certified_key(identity: &Identity) -> Result<Arc<CertifiedKey>> {
    let chain = certificates(&identity.chain_pem)?;
    let key =
        PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|e| Error::Invalid(format!("not a PEM private key: {e}")))?;
    let key = provider().key_provider.load_private_key(key).map_err(tls_error("loading the private key"))?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// A server presenting `identity`, speaking HTTP/1.1 and HTTP/2.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>> {
    let slot = Arc::new(CertSlot::default());
    slot.set(identity)?;
    server_with_slot(slot)
}

/// A server presenting whatever `slot` holds at each handshake.
pub fn server_with_slot(slot: Arc<CertSlot>) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("choosing TLS versions"))?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server certificate that can be set or replaced while serving; handshakes fail while it is empty.
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl CertSlot {
    pub fn set(&self, identity: &Identity) -> Result<()> {
        let key = certified_key(identity)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A client that trusts the CA of `ca_pem` only.
pub fn client_trusting(ca_pem: &str) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem)? {
        roots.add(cert).map_err(tls_error("adding the cluster CA"))?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("choosing TLS versions"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client that trusts a server only when its chain holds the CA with `ca` as fingerprint.
pub fn client_pinned(ca: Fingerprint) -> Result<ClientConfig> {
    let verifier = Arc::new(PinnedCa { ca, provider: provider() });
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("choosing TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(Debug)]
struct PinnedCa {
    ca: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| Fingerprint::of(c) == self.ca) else {
            let found: Vec<String> = intermediates.iter().map(|c| Fingerprint::of(c).to_string()).collect();
            return Err(rustls::Error::General(format!(
                "the master's certificate chain does not hold the cluster CA the join token names (sha256 {}; the chain has {}): \
                 wrong master, or a token of another cluster; nothing was sent",
                self.ca,
                if found.is_empty() { "no CA".to_string() } else { found.join(", ") }
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("cannot verify against the pinned CA: {e}")))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
