//! Modules in OCI registries, as wasm artifacts: one `application/wasm`
//! layer under a `application/vnd.wasm.config.v0+json` config, the layout
//! other WebAssembly runtimes pull and `wkg`/`oras` push.
//!
//! - The master [resolves](Registry::resolve) a reference (a tag, or a
//!   manifest digest) to the pinned manifest and its layer's digest when a
//!   workload is applied, so every replica runs the same bytes.
//! - An agent [pulls](Registry::pull) that layer by its digest, resuming a
//!   download that broke off, at most as many bytes as it accepts.
//! - The CLI [pushes](Registry::push) a module file in the same layout.
//!
//! Credentials come from a Docker `config.json` ([`credentials`]) or from the
//! master; anonymous pulls need none.

pub mod credentials;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt as _;
use oci_client::Client;
pub use oci_client::Reference;
use oci_client::client::{BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
pub use oci_client::secrets::RegistryAuth;
use wasmlet_security::error_chain;

/// The media type of a module's layer.
pub const WASM_LAYER: &str = "application/wasm";
/// The media type of a wasm artifact's config.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Resumes of one layer download, at most (each must bring new bytes).
const RESUMES: u32 = 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A tag resolved at apply: the registry's whole answer, at most this long.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);
/// A registry that sends nothing for this long is given up on (and resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a registry did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered, and will answer the same again: a 401, a
    /// missing tag, an artifact that is not a module.
    #[error("{0}")]
    Refused(String),
    /// The registry could not be reached or stopped answering.
    #[error("{0}")]
    Unreachable(String),
    #[error("{what} is larger than the {limit} bytes accepted")]
    TooLarge { what: String, limit: u64 },
}

/// A reference as written (`registry/repository:tag` or `…@sha256:…`),
/// checked; the error names what is wrong with it.
pub fn parse(reference: &str) -> Result<Reference, String> {
    let parsed: Reference = reference.parse().map_err(|e| format!("`{reference}` is not a registry reference: {e}"))?;
    if reference.contains("://") {
        return Err(format!("`{reference}`: a registry reference has no scheme (registry.example.com/team/module:1.0)"));
    }
    Ok(parsed)
}

/// What a reference names, pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The reference with its manifest's digest: `registry/repository[:tag]@sha256:…`.
    pub pinned: String,
    /// The digest of the module's bytes (its layer).
    pub digest: String,
    pub size: u64,
}

/// Where a push put the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The reference pushed, with the manifest's digest.
    pub pinned: String,
    /// The digest of the module's bytes: what a manifest's `module.digest` pins.
    pub digest: String,
}

/// A client for registries, trusting the system's certificate authorities and
/// the given ones. One connection pool per registry and credentials: the
/// distribution client keeps the first credentials (and the tokens they got)
/// for as long as it lives, so credentials that change get a client of their own.
pub struct Registry {
    roots: Vec<Certificate>,
    user_agent: &'static str,
    clients: Mutex<HashMap<String, (RegistryAuth, Client)>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("user_agent", &self.user_agent).finish_non_exhaustive()
    }
}

impl Registry {
    /// `extra_ca_pem`: certificate authorities to trust beside the system's
    /// (a registry with a private CA); `user_agent` names the caller in the
    /// registry's logs.
    pub fn new(extra_ca_pem: Option<&[u8]>, user_agent: &'static str) -> Result<Registry, String> {
        let mut roots: Vec<Certificate> =
            trusted_system_roots().into_iter().map(|data| Certificate { encoding: CertificateEncoding::Der, data }).collect();
        if let Some(pem) = extra_ca_pem {
            roots.push(Certificate { encoding: CertificateEncoding::Pem, data: pem.to_vec() });
        }
        let registry = Registry { roots, user_agent, clients: Mutex::default() };
        // Built once here so that a CA the TLS library refuses stops the caller's start.
        registry.build().map_err(|e| format!("cannot set up the registry client: {e}"))?;
        Ok(registry)
    }

    fn build(&self) -> Result<Client, OciDistributionError> {
        let config = ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates: self.roots.clone(),
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: self.user_agent,
            ..ClientConfig::default()
        };
        Client::try_from(config)
    }

    /// The client for `reference`'s registry with `auth`, given those credentials.
    async fn client(&self, reference: &Reference, auth: &RegistryAuth) -> Result<Client, RegistryError> {
        let registry = reference.resolve_registry().to_string();
        let kept = {
            let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            clients.get(&registry).filter(|(used, _)| used == auth).map(|(_, client)| client.clone())
        };
        let client = match kept {
            Some(client) => client,
            None => {
                let client = self.build().map_err(|e| RegistryError::Unreachable(format!("cannot set up the registry client: {e}")))?;
                self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(registry.clone(), (auth.clone(), client.clone()));
                client
            }
        };
        client.store_auth_if_needed(&registry, auth).await;
        Ok(client)
    }

    /// The manifest `reference` names, pinned by its digest, and its module
    /// layer; refused unless it is a wasm artifact of one layer of at most `limit` bytes.
    pub async fn resolve(&self, reference: &Reference, auth: &RegistryAuth, limit: u64) -> Result<Resolved, RegistryError> {
        let client = self.client(reference, auth).await?;
        let (manifest, manifest_digest) = tokio::time::timeout(RESOLVE_TIMEOUT, client.pull_image_manifest(reference, auth))
            .await
            .map_err(|_| {
                RegistryError::Unreachable(format!(
                    "{} did not answer for {reference} within {RESOLVE_TIMEOUT:?}",
                    reference.resolve_registry()
                ))
            })?
            .map_err(|e| classify(reference, "its manifest", e))?;
        let layers: Vec<&str> = manifest.layers.iter().map(|l| l.media_type.as_str()).collect();
        let [layer] = manifest.layers.as_slice() else {
            return Err(RegistryError::Refused(format!(
                "{reference} is not a wasm module: it has {} layers ({}), a module has one {WASM_LAYER} layer; push modules with `wasmlet push`",
                layers.len(),
                layers.join(", ")
            )));
        };
        if layer.media_type != WASM_LAYER {
            return Err(RegistryError::Refused(format!(
                "{reference} is not a wasm module: its layer is {}, not {WASM_LAYER}; push modules with `wasmlet push`",
                layer.media_type
            )));
        }
        // Digests as the registry gives them become stored objects and cache file names: sha256 only.
        for (what, digest) in [("manifest", &manifest_digest), ("layer", &layer.digest)] {
            if !is_sha256(digest) {
                return Err(RegistryError::Refused(format!(
                    "{reference}: the registry gave its {what} digest as `{}`, not sha256:<64 hex digits>",
                    bounded(digest)
                )));
            }
        }
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > limit {
            return Err(RegistryError::TooLarge { what: format!("the module of {reference} ({size} bytes)"), limit });
        }
        let name = match reference.tag() {
            Some(tag) => format!("{}/{}:{tag}", reference.resolve_registry(), reference.repository()),
            None => format!("{}/{}", reference.resolve_registry(), reference.repository()),
        };
        Ok(Resolved { pinned: format!("{name}@{manifest_digest}"), digest: layer.digest.clone(), size })
    }

    /// The bytes of the layer `digest` in `reference`'s repository, at most
    /// `limit` of them; a download that breaks off is resumed where it stopped.
    /// The caller checks them against the digest.
    pub async fn pull(&self, reference: &Reference, digest: &str, auth: &RegistryAuth, limit: u64) -> Result<Vec<u8>, RegistryError> {
        let client = self.client(reference, auth).await?;
        let layer = OciDescriptor { media_type: WASM_LAYER.to_string(), digest: digest.to_string(), ..OciDescriptor::default() };
        let what = || format!("{digest} from {}/{}", reference.resolve_registry(), reference.repository());
        let mut bytes: Vec<u8> = Vec::new();
        let mut resumes = 0;
        loop {
            let answer = client.pull_blob_stream_partial(reference, &layer, bytes.len() as u64, None).await;
            let mut stream: SizedStream = match answer {
                Ok(BlobResponse::Partial(stream)) if !bytes.is_empty() => stream,
                // The whole layer again (the registry ignores ranges, or this is the first try).
                Ok(BlobResponse::Full(stream) | BlobResponse::Partial(stream)) => {
                    bytes.clear();
                    stream
                }
                Err(e) => match classify(reference, &what(), e) {
                    RegistryError::Unreachable(_) if !bytes.is_empty() && resumes < RESUMES => {
                        resumes += 1;
                        continue;
                    }
                    other => return Err(other),
                },
            };
            if stream.content_length.is_some_and(|length| (bytes.len() as u64).saturating_add(length) > limit) {
                return Err(RegistryError::TooLarge { what: what(), limit });
            }
            let before = bytes.len();
            let dropped = loop {
                match stream.next().await {
                    Some(Ok(chunk)) => {
                        if (bytes.len() + chunk.len()) as u64 > limit {
                            return Err(RegistryError::TooLarge { what: what(), limit });
                        }
                        bytes.extend_from_slice(&chunk);
                    }
                    None => return Ok(bytes),
                    Some(Err(e)) => break e,
                }
            };
            if bytes.len() == before || resumes >= RESUMES {
                return Err(RegistryError::Unreachable(format!(
                    "the download of {} broke off after {} bytes: {dropped}",
                    what(),
                    bytes.len()
                )));
            }
            resumes += 1;
            tracing::info!(layer = %what(), have = bytes.len(), error = %dropped, "the module download broke off; resuming where it stopped");
        }
    }

    /// Pushes `module` (a core module or a component) to `reference` as a wasm artifact.
    #[cfg(feature = "push")]
    pub async fn push(&self, reference: &Reference, module: Vec<u8>, auth: &RegistryAuth) -> Result<Pushed, RegistryError> {
        use oci_wasm::{WasmClient, WasmConfig};
        let digest = sha256(&module);
        let component = module.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00]);
        let (config, layer) =
            if component { WasmConfig::from_raw_component(module, None) } else { WasmConfig::from_raw_module(module, None) }
                .map_err(|e| RegistryError::Refused(format!("cannot describe the module for the registry: {e:#}")))?;
        let client = WasmClient::new(self.client(reference, auth).await?);
        let pushed = client.push(reference, auth, layer, config, None).await.map_err(|e| match e.downcast::<OciDistributionError>() {
            Ok(e) => classify(reference, "the push", e),
            Err(e) => RegistryError::Unreachable(format!("pushing to {reference}: {e:#}")),
        })?;
        let manifest_digest = pushed.manifest_url.rsplit('/').next().unwrap_or_default().to_string();
        let name = format!("{}/{}", reference.resolve_registry(), reference.repository());
        let name = match reference.tag() {
            Some(tag) => format!("{name}:{tag}"),
            None => name,
        };
        Ok(Pushed { pinned: format!("{name}@{manifest_digest}"), digest })
    }
}

#[cfg(feature = "push")]
fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// What a registry wrote, as far as an error message repeats it: at most 200
/// characters, without control characters (a registry's error page must not
/// swell an instance's status).
fn bounded(text: &str) -> String {
    let clean: String = text.trim().chars().filter(|c| !c.is_control()).take(200).collect();
    if clean.len() < text.trim().len() { format!("{clean}…") } else { clean }
}

/// The system's certificate authorities that the TLS library accepts (one it
/// cannot take is no reason to trust none).
fn trusted_system_roots() -> Vec<Vec<u8>> {
    let mut store = rustls::RootCertStore::empty();
    rustls_native_certs::load_native_certs()
        .certs
        .into_iter()
        .filter(|certificate| store.add(certificate.clone()).is_ok())
        .map(|certificate| certificate.to_vec())
        .collect()
}

/// `sha256:` and 64 lowercase hex digits.
fn is_sha256(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Sorts a client error into refused (will be the same again) or unreachable (retry).
fn classify(reference: &Reference, what: &str, error: OciDistributionError) -> RegistryError {
    let registry = reference.resolve_registry();
    match error {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => RegistryError::Refused(format!(
            "{registry} answered 401 Unauthorized for {what} of {reference}: check the registry credentials"
        )),
        OciDistributionError::ServerError { code, message, .. } if (400..500).contains(&code) => {
            let why = match code {
                401 => "401 Unauthorized (check the registry credentials)".to_string(),
                403 => "403 Forbidden (the credentials may not pull this repository)".to_string(),
                404 => "404 Not Found".to_string(),
                code => format!("{code}: {}", bounded(&message)),
            };
            RegistryError::Refused(format!("{registry} answered {why} for {what} of {reference}"))
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            RegistryError::Refused(format!("{registry} has no {reference} (404 Not Found): check the repository and tag"))
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown)) =>
        {
            RegistryError::Refused(format!("{registry} has no {what} of {reference} (404 Not Found): check the repository and tag"))
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope.errors.iter().take(4).map(|e| format!("{:?}: {}", e.code, bounded(&e.message))).collect();
            let unauthorized = envelope.errors.iter().any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
            let hint = if unauthorized { " (check the registry credentials)" } else { "" };
            RegistryError::Refused(format!("{registry} refused {what} of {reference}: {}{hint}", codes.join("; ")))
        }
        OciDistributionError::ServerError { code, .. } => {
            RegistryError::Unreachable(format!("{registry} answered {code} for {what} of {reference}"))
        }
        OciDistributionError::RequestError(e) => {
            RegistryError::Unreachable(format!("cannot reach {registry} for {what} of {reference}: {}", error_chain(&e)))
        }
        other => RegistryError::Unreachable(format!("{registry}: {what} of {reference}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_registry_says_is_bounded_and_digests_are_sha256() {
        let page = format!("<html>\n{}</html>", "x".repeat(1 << 20));
        let shown = bounded(&page);
        assert!(shown.chars().count() <= 201 && !shown.contains('\n'), "{}", shown.len());
        assert_eq!(bounded(" manifest unknown "), "manifest unknown");
        assert!(is_sha256(&format!("sha256:{}", "a1".repeat(32))));
        for bad in ["sha512:00", "sha256:../../etc/passwd", &format!("sha256:{}", "A1".repeat(32)), ""] {
            assert!(!is_sha256(bad), "{bad}");
        }
    }
}
