//! The cluster's public-key infrastructure: two certificate authorities that
//! never vouch for each other's names.
//!
//! - The **cluster CA** (`<data-dir>/pki/ca.crt`, `ca.key`) signs the master's
//!   serving certificate and nothing else. Join tokens pin it, CLI configs
//!   and agents trust it to reach the master.
//! - The **node CA** (`nodes-ca.crt`, `nodes-ca.key`) signs node certificates:
//!   an agent's key (it never leaves the node) signed from the signing request
//!   it sends, for names the master verified: the node's name, bound to its
//!   credential, and the address the request came from, never what the
//!   request or the node asks for. Node certificates serve the agent's API
//!   and authenticate nodes to each other (server and client use). Only the
//!   master (calling agents) and agents (calling each other) trust this CA.
//!
//! So a node, whatever it asks for, never holds a certificate a client of the
//! master accepts. Both CAs are ECDSA P-256 and live ten years; a master of
//! an older version has only the cluster CA, and the node CA is created
//! beside it at the next start (join tokens and CLI configs stay valid).
//!
//! Everyone else trusts a CA by its [`Fingerprint`], the SHA-256 of its DER.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::token::hex;
use crate::{Error, Result, files};

const CA_VALIDITY_DAYS: i64 = 3650;
/// The common name of a node certificate: this prefix and the node's name.
const NODE_COMMON_NAME_PREFIX: &str = "wasmlet-node:";

/// SHA-256 of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The fingerprint of the first certificate of a PEM text.
    pub fn of_pem(pem: &str) -> Result<Fingerprint> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Invalid(format!("not a PEM certificate: {e}")))?;
        Ok(Fingerprint::of(&der))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl FromStr for Fingerprint {
    type Err = Error;

    fn from_str(text: &str) -> Result<Fingerprint> {
        let text = text.trim().trim_start_matches("sha256:");
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!("`{text}` is not a SHA-256 fingerprint (64 hex digits)")));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// A certificate chain (leaf first, then the CA) and its private key, in PEM.
#[derive(Clone)]
pub struct Identity {
    pub chain_pem: String,
    pub key_pem: String,
}

/// One certificate authority, able to sign.
pub struct Authority {
    ca_pem: String,
    fingerprint: Fingerprint,
    issuer: Issuer<'static, KeyPair>,
}

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Certificate { what: what.to_string(), source }
}

impl Authority {
    /// Loads `<stem>.crt` and `<stem>.key` from `dir`, creating both when neither exists.
    /// Returns whether it was created.
    fn load_or_create(dir: &Path, stem: &str, common_name: &str) -> Result<(Authority, bool)> {
        let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        match (files::read_secret(&cert_path)?, files::read_secret(&key_path)?) {
            (Some(cert), Some(key)) => {
                let key = KeyPair::from_pem(&key).map_err(cert_error(&format!("{} is not a private key", key_path.display())))?;
                let authority =
                    Authority::from_pem(format!("{cert}\n"), key).map_err(|e| Error::Invalid(format!("{}: {e}", cert_path.display())))?;
                Ok((authority, false))
            }
            (None, None) => {
                files::private_dir(dir)?;
                let key = KeyPair::generate().map_err(cert_error("generating a CA key"))?;
                let mut params = CertificateParams::default();
                params.distinguished_name = name(common_name);
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
                (params.not_before, params.not_after) = validity(std::time::Duration::from_secs(CA_VALIDITY_DAYS as u64 * 86_400));
                let cert = params.self_signed(&key).map_err(cert_error("creating a CA certificate"))?;
                // The key first: a crash in between leaves no certificate without its key.
                files::write_private(&key_path, key.serialize_pem().as_bytes())?;
                files::write_private(&cert_path, cert.pem().as_bytes())?;
                Ok((Authority::from_pem(cert.pem(), key)?, true))
            }
            (Some(_), None) => {
                Err(Error::Invalid(format!("{} exists but {} does not: restore the key", cert_path.display(), key_path.display())))
            }
            (None, Some(_)) => {
                Err(Error::Invalid(format!("{} exists but {} does not: restore the certificate", key_path.display(), cert_path.display())))
            }
        }
    }

    fn from_pem(ca_pem: String, key: KeyPair) -> Result<Authority> {
        let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| Error::Invalid(format!("not a PEM certificate: {e}")))?;
        let fingerprint = Fingerprint::of(&der);
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(cert_error("reading the CA certificate"))?;
        Ok(Authority { ca_pem, fingerprint, issuer })
    }

    /// The CA certificate in PEM: what clients of this authority trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Signs `key` for `names`, valid for `lifetime`; returns the chain (leaf, then this CA) in PEM.
    fn sign(
        &self,
        key: &impl rcgen::PublicKeyData,
        common_name: &str,
        names: &[String],
        purposes: Vec<ExtendedKeyUsagePurpose>,
        lifetime: std::time::Duration,
    ) -> Result<String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = purposes;
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(lifetime);
        let cert = params.signed_by(key, &self.issuer).map_err(cert_error("signing a certificate"))?;
        Ok(format!("{}{}", cert.pem(), self.ca_pem))
    }
}

/// Which of the two authorities were created by [`ClusterPki::load_or_create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub cluster: bool,
    pub nodes: bool,
}

/// The cluster CA (the master's serving certificate) and the node CA (node certificates).
pub struct ClusterPki {
    cluster: Authority,
    nodes: Authority,
}

impl ClusterPki {
    /// Loads both CAs from `dir`, creating each one that does not exist yet.
    pub fn load_or_create(dir: &Path) -> Result<(ClusterPki, Created)> {
        let (cluster, cluster_created) = Authority::load_or_create(dir, "ca", "wasmlet cluster CA")?;
        let (nodes, nodes_created) = Authority::load_or_create(dir, "nodes-ca", "wasmlet node CA")?;
        Ok((ClusterPki { cluster, nodes }, Created { cluster: cluster_created, nodes: nodes_created }))
    }

    /// The cluster CA certificate in PEM: what clients of the master trust.
    pub fn ca_pem(&self) -> &str {
        self.cluster.ca_pem()
    }

    /// The cluster CA's fingerprint, which join tokens carry.
    pub fn fingerprint(&self) -> Fingerprint {
        self.cluster.fingerprint()
    }

    /// The node CA: what the master and the agents trust to recognise a node.
    pub fn nodes(&self) -> &Authority {
        &self.nodes
    }

    /// A fresh key and serving certificate of the master for `names` (DNS names or IP addresses).
    pub fn issue_master_identity(&self, names: &[String], lifetime: std::time::Duration) -> Result<Identity> {
        let key = KeyPair::generate().map_err(cert_error("generating a serving key"))?;
        let chain_pem = self.cluster.sign(&key, "wasmlet-master", names, vec![ExtendedKeyUsagePurpose::ServerAuth], lifetime)?;
        Ok(Identity { chain_pem, key_pem: key.serialize_pem() })
    }

    /// Signs the public key of a PEM signing request (checking its signature:
    /// the requester holds the key) as node `node`'s certificate for `node` and
    /// `addresses`; everything else the request asks for (names, a CA bit,
    /// extensions) is ignored. Returns the chain in PEM.
    pub fn sign_node_request(&self, csr_pem: &str, node: &str, addresses: &[IpAddr], lifetime: std::time::Duration) -> Result<String> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem).map_err(cert_error("the certificate signing request"))?;
        let mut names = vec![node.to_string()];
        names.extend(addresses.iter().map(IpAddr::to_string));
        let purposes = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.nodes.sign(&request.public_key, &format!("{NODE_COMMON_NAME_PREFIX}{node}"), &names, purposes, lifetime)
    }
}

/// When a certificate or credential valid for `lifetime` is renewed, counted
/// from its issue: at two thirds, so a renewal that fails has a third of the
/// lifetime to be tried again.
pub fn renewal_due(lifetime: std::time::Duration) -> std::time::Duration {
    lifetime * 2 / 3
}

/// The node a node certificate (DER) was issued to, from its common name.
pub fn node_of_certificate(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert.subject().iter_common_name().next()?.as_str().ok()?;
    common_name.strip_prefix(NODE_COMMON_NAME_PREFIX).filter(|n| !n.is_empty()).map(str::to_string)
}

/// A new private key (ECDSA P-256), PEM: an agent's API key.
pub fn generate_key() -> Result<String> {
    Ok(KeyPair::generate().map_err(cert_error("generating a serving key"))?.serialize_pem())
}

/// A signing request for a PEM key.
pub fn signing_request(key_pem: &str, common_name: &str) -> Result<String> {
    let key = KeyPair::from_pem(key_pem).map_err(cert_error("reading the serving key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    let request = params.serialize_request(&key).map_err(cert_error("creating a signing request"))?;
    request.pem().map_err(cert_error("encoding a signing request"))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "wasmlet");
    name.push(DnType::CommonName, common_name);
    name
}

fn san(name: &str) -> Result<SanType> {
    match name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => {
            Ok(SanType::DnsName(name.try_into().map_err(|_| Error::Invalid(format!("`{name}` is neither an IP address nor a DNS name")))?))
        }
    }
}

fn validity(lifetime: std::time::Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    let lifetime = time::Duration::try_from(lifetime).unwrap_or(time::Duration::days(CA_VALIDITY_DAYS));
    // An hour back, for machines whose clocks are a little behind; the end counts from now.
    (now - time::Duration::hours(1), now.checked_add(lifetime).unwrap_or(now + time::Duration::days(CA_VALIDITY_DAYS)))
}

/// The names a master serves under: its hostname, `localhost`, loopback,
/// every address of its interfaces that is up, and the extra ones given.
pub fn local_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_string());
    }
    names.extend(interface_addresses().into_iter().map(|ip| ip.to_string()));
    names.extend(extra.iter().cloned());
    names.retain(|n| !n.is_empty());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// IPv4 addresses from `/proc/net/fib_trie` (local routes) and IPv6 ones from `/proc/net/if_inet6`.
fn interface_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<&str> = None;
        for line in trie.lines() {
            let line = line.trim();
            if let Some(addr) = line.strip_prefix("|-- ") {
                last = Some(addr);
            } else if line.contains("/32 host LOCAL")
                && let Some(ip) = last.and_then(|a| a.parse::<IpAddr>().ok())
                && !found.contains(&ip)
            {
                found.push(ip);
            }
        }
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in v6.lines() {
            let Some(hex) = line.split_whitespace().next().filter(|h| h.len() == 32) else { continue };
            let mut bytes = [0u8; 16];
            if (0..16).all(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map(|b| bytes[i] = b).is_ok()) {
                let ip = IpAddr::from(bytes);
                if !found.contains(&ip) {
                    found.push(ip);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    #[test]
    fn both_cas_are_created_once_then_loaded_and_an_old_cluster_gains_a_node_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = ClusterPki::load_or_create(dir.path()).unwrap();
        assert_eq!(created, Created { cluster: true, nodes: true });
        let (again, created) = ClusterPki::load_or_create(dir.path()).unwrap();
        assert_eq!(created, Created { cluster: false, nodes: false });
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(first.nodes().fingerprint(), again.nodes().fingerprint());
        assert_ne!(first.fingerprint(), first.nodes().fingerprint(), "two authorities, two keys");
        assert_eq!(first.fingerprint().to_string().parse::<Fingerprint>().unwrap(), first.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "nodes-ca.key"] {
            assert_eq!(std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode() & 0o777, 0o600, "{key}");
        }
        // A cluster of an older version: only the cluster CA. It is kept, and a node CA added.
        std::fs::remove_file(dir.path().join("nodes-ca.key")).unwrap();
        std::fs::remove_file(dir.path().join("nodes-ca.crt")).unwrap();
        let (upgraded, created) = ClusterPki::load_or_create(dir.path()).unwrap();
        assert_eq!(created, Created { cluster: false, nodes: true });
        assert_eq!(upgraded.fingerprint(), first.fingerprint(), "join tokens and CLI configs stay valid");
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let error = ClusterPki::load_or_create(dir.path()).err().unwrap().to_string();
        assert!(error.contains("ca.key") && error.contains("restore"), "{error}");
    }

    fn leaf(chain: &str) -> (Vec<CertificateDer<'static>>, Vec<String>, bool) {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>().unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
        let names = cert
            .subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        x509_parser::extensions::GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                        other => format!("{other}"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let is_ca = cert.is_ca();
        (certs, names, is_ca)
    }

    #[test]
    fn node_requests_are_signed_by_the_node_ca_for_the_names_the_master_chooses() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = ClusterPki::load_or_create(dir.path()).unwrap();
        // A request asking for the master's names and to be a CA.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "wasmlet-master".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = name("wasmlet-master");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let chain = pki.sign_node_request(&csr, "edge-1", &["10.0.0.7".parse().unwrap()], HOUR).unwrap();
        let (certs, names, is_ca) = leaf(&chain);
        assert_eq!(certs.len(), 2, "leaf and CA");
        assert_eq!(Fingerprint::of(&certs[1]), pki.nodes().fingerprint(), "signed by the node CA");
        assert_ne!(Fingerprint::of(&certs[1]), pki.fingerprint(), "never by the cluster CA");
        assert_eq!(names, ["DNSName(edge-1)", "IP:[10, 0, 0, 7]"]);
        assert!(!is_ca);
        assert_eq!(node_of_certificate(&certs[0]).as_deref(), Some("edge-1"));
        let bad = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(pki.sign_node_request(bad, "x", &[], HOUR).is_err());
        assert!(pki.sign_node_request(&signing_request(&generate_key().unwrap(), "x").unwrap(), "nöde", &[], HOUR).is_err());
    }

    #[test]
    fn the_master_identity_is_signed_by_the_cluster_ca_for_its_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = ClusterPki::load_or_create(dir.path()).unwrap();
        let identity = pki.issue_master_identity(&["localhost".into(), "127.0.0.1".into()], HOUR).unwrap();
        let (certs, names, _) = leaf(&identity.chain_pem);
        assert_eq!(Fingerprint::of(&certs[1]), pki.fingerprint());
        assert_eq!(names.len(), 2);
        assert_eq!(node_of_certificate(&certs[0]), None, "not a node's");
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
        let left = cert.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((3590..=3600).contains(&left), "valid for the hour asked: {left} s");
        assert!(pki.issue_master_identity(&["nöde".into()], HOUR).is_err());
    }

    #[test]
    fn local_names_include_loopback_and_extras() {
        let names = local_names(&["master.example".into()]);
        assert!(names.contains(&"127.0.0.1".to_string()) && names.contains(&"master.example".to_string()));
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }
}
