//! The cluster's public-key infrastructure.
//!
//! On its first start the master creates a CA (ECDSA P-256, ten years) under
//! `<data-dir>/pki/` (`ca.crt`, and `ca.key` readable by the master only).
//! Every start it issues itself a serving certificate for its names and
//! addresses. Agents get serving certificates too, from signing requests sent
//! at registration: the agent's key never leaves its machine, and the master
//! decides the names (the node's name and the address it registered from),
//! not the request.
//!
//! Everyone else trusts the CA by its [`Fingerprint`], the SHA-256 of its DER.

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
/// Serving certificates are issued again at every start (master) and registration (agent).
const SERVING_VALIDITY_DAYS: i64 = 365;

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

/// The cluster CA, able to sign.
pub struct ClusterPki {
    ca_pem: String,
    fingerprint: Fingerprint,
    issuer: Issuer<'static, KeyPair>,
}

fn cert_error(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |source| Error::Certificate { what: what.to_string(), source }
}

impl ClusterPki {
    /// Loads the CA from `dir` (`ca.crt`, `ca.key`), creating it when neither exists.
    /// Returns whether it was created.
    pub fn load_or_create(dir: &Path) -> Result<(ClusterPki, bool)> {
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        match (files::read_secret(&cert_path)?, files::read_secret(&key_path)?) {
            (Some(cert), Some(key)) => {
                let key = KeyPair::from_pem(&key).map_err(cert_error(&format!("{} is not a private key", key_path.display())))?;
                let pki =
                    ClusterPki::from_pem(format!("{cert}\n"), key).map_err(|e| Error::Invalid(format!("{}: {e}", cert_path.display())))?;
                Ok((pki, false))
            }
            (None, None) => {
                files::private_dir(dir)?;
                let key = KeyPair::generate().map_err(cert_error("generating the CA key"))?;
                let mut params = CertificateParams::default();
                params.distinguished_name = name("wasmlet cluster CA");
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
                (params.not_before, params.not_after) = validity(CA_VALIDITY_DAYS);
                let cert = params.self_signed(&key).map_err(cert_error("creating the CA certificate"))?;
                // The key first: a crash in between leaves no certificate without its key.
                files::write_private(&key_path, key.serialize_pem().as_bytes())?;
                files::write_private(&cert_path, cert.pem().as_bytes())?;
                Ok((ClusterPki::from_pem(cert.pem(), key)?, true))
            }
            (Some(_), None) => {
                Err(Error::Invalid(format!("{} exists but {} does not: restore the key", cert_path.display(), key_path.display())))
            }
            (None, Some(_)) => {
                Err(Error::Invalid(format!("{} exists but {} does not: restore the certificate", key_path.display(), cert_path.display())))
            }
        }
    }

    fn from_pem(ca_pem: String, key: KeyPair) -> Result<ClusterPki> {
        let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| Error::Invalid(format!("not a PEM certificate: {e}")))?;
        let fingerprint = Fingerprint::of(&der);
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(cert_error("reading the CA certificate"))?;
        Ok(ClusterPki { ca_pem, fingerprint, issuer })
    }

    /// The CA certificate in PEM: what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// A fresh key and serving certificate for `names` (DNS names or IP addresses).
    pub fn issue_identity(&self, common_name: &str, names: &[String]) -> Result<Identity> {
        let key = KeyPair::generate().map_err(cert_error("generating a serving key"))?;
        let chain_pem = self.sign(&key, common_name, names)?;
        Ok(Identity { chain_pem, key_pem: key.serialize_pem() })
    }

    /// Signs the public key of a PEM signing request (checking its signature:
    /// the requester holds the key) for `names`; what the request asks for
    /// beyond its key is ignored. Returns the chain in PEM.
    pub fn sign_request(&self, csr_pem: &str, common_name: &str, names: &[String]) -> Result<String> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem).map_err(cert_error("the certificate signing request"))?;
        self.sign(&request.public_key, common_name, names)
    }

    fn sign(&self, key: &impl rcgen::PublicKeyData, common_name: &str, names: &[String]) -> Result<String> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(SERVING_VALIDITY_DAYS);
        let cert = params.signed_by(key, &self.issuer).map_err(cert_error("signing a serving certificate"))?;
        Ok(format!("{}{}", cert.pem(), self.ca_pem))
    }
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

fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for machines whose clocks are a little behind.
    (now - time::Duration::hours(1), now + time::Duration::days(days))
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

    #[test]
    fn the_ca_is_created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = ClusterPki::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (again, created) = ClusterPki::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(first.fingerprint().to_string().parse::<Fingerprint>().unwrap(), first.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let error = ClusterPki::load_or_create(dir.path()).err().unwrap().to_string();
        assert!(error.contains("ca.key") && error.contains("restore"), "{error}");
    }

    #[test]
    fn requests_are_signed_for_the_names_the_ca_chooses() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = ClusterPki::load_or_create(dir.path()).unwrap();
        let csr = signing_request(&generate_key().unwrap(), "edge-1").unwrap();
        let chain = pki.sign_request(&csr, "wasmlet-node:edge-1", &["edge-1".into(), "10.0.0.7".into()]).unwrap();
        let certs: Vec<_> = CertificateDer::pem_slice_iter(chain.as_bytes()).collect::<Result<_, _>>().unwrap();
        assert_eq!(certs.len(), 2, "leaf and CA");
        assert_eq!(Fingerprint::of(&certs[1]), pki.fingerprint());
        assert!(pki.sign_request("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "x", &[]).is_err());
        assert!(pki.issue_identity("master", &["nöde".into()]).is_err());
    }

    #[test]
    fn local_names_include_loopback_and_extras() {
        let names = local_names(&["master.example".into()]);
        assert!(names.contains(&"127.0.0.1".to_string()) && names.contains(&"master.example".to_string()));
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }
}
