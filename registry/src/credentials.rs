//! Registry credentials in Docker's `config.json` format, the file `docker
//! login`, `oras login` and `wkg` write:
//!
//! ```json
//! {"auths": {"registry.example.com": {"auth": "<base64 of user:password>"}}}
//! ```
//!
//! An entry may give `username` and `password` instead of `auth`, or an
//! `identitytoken`. Only `auths` is read: credential helpers (`credsStore`,
//! `credHelpers`) are programs this file only names.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// The largest credentials file read (they hold a few entries).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Credentials by registry host (`host[:port]`); never printed.
#[derive(Clone, Default)]
pub struct Credentials {
    by_registry: BTreeMap<String, RegistryAuth>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("registries", &self.by_registry.keys().collect::<Vec<_>>()).finish()
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, rename = "identitytoken")]
    identity_token: Option<String>,
}

impl Credentials {
    /// Reads a `config.json`; the error names the file and what is wrong (never a secret).
    pub fn read(path: &Path) -> Result<Credentials, String> {
        let size = std::fs::metadata(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?.len();
        if size > MAX_FILE_BYTES {
            return Err(format!("{}: {size} bytes, more than a credentials file holds ({MAX_FILE_BYTES} at most)", path.display()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
        Credentials::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Credentials, String> {
        // serde's message may quote a value (a password): only where the problem is.
        let file: ConfigFile = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a Docker config.json ({{\"auths\": {{HOST: {{\"auth\": …}}}}}}): {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        let mut by_registry = BTreeMap::new();
        for (key, entry) in file.auths {
            let host = registry_host(&key);
            let auth = match entry {
                Entry { identity_token: Some(token), .. } if !token.is_empty() => RegistryAuth::Bearer(token),
                Entry { auth: Some(auth), .. } if !auth.is_empty() => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                        .ok_or_else(|| format!("auths.{key}.auth is not base64 of `user:password`"))?;
                    let (user, password) =
                        decoded.split_once(':').ok_or_else(|| format!("auths.{key}.auth is not base64 of `user:password` (no colon)"))?;
                    RegistryAuth::Basic(user.to_string(), password.to_string())
                }
                Entry { username: Some(user), password: Some(password), .. } => RegistryAuth::Basic(user, password),
                _ => return Err(format!("auths.{key} has neither `auth`, `username` and `password`, nor `identitytoken`")),
            };
            by_registry.insert(host, auth);
        }
        Ok(Credentials { by_registry })
    }

    /// What to present to `registry` (as [`oci_client::Reference::resolve_registry`] names it): anonymous when the file has nothing for it.
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        self.by_registry.get(registry).cloned().unwrap_or(RegistryAuth::Anonymous)
    }

    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.by_registry.keys().map(String::as_str)
    }
}

/// `https://registry.example.com:5000/v1/` → `registry.example.com:5000`; Docker Hub's key is `index.docker.io`.
fn registry_host(key: &str) -> String {
    let host = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "docker.io" | "registry-1.docker.io" => "index.docker.io".to_string(),
        host => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_are_read_by_host() {
        let text = r#"{
            "auths": {
                "https://registry.example.com:5000/v1/": {"auth": "dGVhbTpzM2NyM3Q6d2l0aDpjb2xvbnM="},
                "other.example.com": {"username": "u", "password": "p"},
                "tokens.example.com": {"identitytoken": "tok"},
                "https://index.docker.io/v1/": {"auth": "aHViOnB3"}
            },
            "credsStore": "desktop"
        }"#;
        let credentials = Credentials::parse(text).unwrap();
        assert!(
            matches!(credentials.for_registry("registry.example.com:5000"), RegistryAuth::Basic(u, p) if u == "team" && p == "s3cr3t:with:colons")
        );
        assert!(matches!(credentials.for_registry("other.example.com"), RegistryAuth::Basic(u, p) if u == "u" && p == "p"));
        assert!(matches!(credentials.for_registry("tokens.example.com"), RegistryAuth::Bearer(t) if t == "tok"));
        assert!(matches!(credentials.for_registry("index.docker.io"), RegistryAuth::Basic(u, _) if u == "hub"));
        assert!(matches!(credentials.for_registry("elsewhere.example.com"), RegistryAuth::Anonymous));
        let printed = format!("{credentials:?}");
        assert!(!printed.contains("s3cr3t") && !printed.contains("dGVhbT") && printed.contains("registry.example.com:5000"), "{printed}");
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_entry_and_no_secret() {
        for (text, wanted) in [
            (r#"{"auths": {"r.example.com": {"auth": "not base64!"}}}"#, "auths.r.example.com.auth is not base64"),
            (r#"{"auths": {"r.example.com": {"auth": "bm9jb2xvbg=="}}}"#, "no colon"),
            (r#"{"auths": {"r.example.com": {}}}"#, "auths.r.example.com has neither"),
            (r#"{"auths": ["#, "not a Docker config.json"),
            (r#"{"auths": {"r.example.com": {"auth": 123456789}}}"#, "line 1 column"),
        ] {
            let error = Credentials::parse(text).unwrap_err();
            assert!(error.contains(wanted), "{text}: {error}");
            assert!(!error.contains("bm9jb2xvbg") && !error.contains("nocolon") && !error.contains("123456789"), "{error}");
        }
    }
}
