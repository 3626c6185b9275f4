//! rustls configurations.
//!
//! - [`server_config`]: a server with one certificate chain (the master).
//! - [`CertSlot`]: a server whose certificate arrives or changes while it
//!   runs (an agent gets its certificate when it registers).
//! - [`client_trusting`]: a client that trusts the cluster CA and nothing else.
//! - [`client_pinned`]: a joining client: it accepts the master's chain only
//!   when the chain carries the CA with the join token's fingerprint, and
//!   then verifies the master's certificate against that CA as usual.
//! - [`client_for_node`]: a client that accepts one node only: a certificate
//!   of the node CA issued to that node's name, whatever address it is
//!   reached at (the master calling an agent; an agent forwarding to a peer,
//!   presenting its own node certificate).
//! - [`peer_server_config`]: the peer side of an ingress: TLS that requires
//!   a client certificate of the node CA.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
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

/// A server presenting `identity`, speaking HTTP/1.1 (the only protocol
/// [`crate::serve`] serves: its header and idle timers are HTTP/1.1's).
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
    // Offering h2 would have clients such as curl speak it to a server that answers only HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
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

impl ResolvesClientCert for CertSlot {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn has_certs(&self) -> bool {
        self.is_set()
    }
}

/// The certificates of a PEM text as a root store.
fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem)? {
        roots.add(cert).map_err(tls_error("adding a CA"))?;
    }
    Ok(Arc::new(roots))
}

/// A client that accepts only node `node`'s certificate from the node CA of
/// `nodes_ca_pem`, and presents the certificate in `own` (if any) to be
/// recognised as a node itself.
pub fn client_for_node(nodes_ca_pem: &str, node: &str, own: Option<Arc<CertSlot>>) -> Result<ClientConfig> {
    let name = ServerName::try_from(node.to_string()).map_err(|_| Error::Invalid(format!("`{node}` is not a node name")))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(nodes_ca_pem)?, provider())
        .build()
        .map_err(|e| Error::Invalid(format!("cannot verify against the node CA: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("choosing TLS versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(OneNode { name, verifier }));
    Ok(match own {
        Some(slot) => builder.with_client_cert_resolver(slot),
        None => builder.with_no_client_auth(),
    })
}

/// A server for the peers of a node: it presents the node's certificate in
/// `slot` and requires a client certificate of the node CA of `nodes_ca_pem`.
pub fn peer_server_config(nodes_ca_pem: &str, slot: Arc<CertSlot>) -> Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(nodes_ca_pem)?, provider())
        .build()
        .map_err(|e| Error::Invalid(format!("cannot verify clients against the node CA: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error("choosing TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies a server as one node: a chain to the node CA, for the node's
/// name rather than the host in the URL (an agent is reached at whatever
/// address it registered from, or the URL it gave).
#[derive(Debug)]
struct OneNode {
    name: ServerName<'static>,
    verifier: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for OneNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.verifier.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

/// A client that trusts the CA of `ca_pem` only.
pub fn client_trusting(ca_pem: &str) -> Result<ClientConfig> {
    let roots = roots(ca_pem)?;
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
