//! RegistryCredential: a user and password for an OCI registry, held by the
//! master for workloads whose module names them (`module.credentials`). The
//! password is written, never read back: answers leave it out.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::{ObjectMeta, api_version, validate_type};
use crate::validate::{Errors, ValidationError, shorten};

pub const REGISTRY_CREDENTIAL_KIND: &str = "RegistryCredential";
/// Longest password (or token) accepted.
pub const MAX_PASSWORD_BYTES: usize = 4096;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredential {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "registry_credential_kind")]
    pub kind: String,
    pub metadata: ObjectMeta,
    /// The registry these are for (`registry.example.com[:port]`), the only one they are presented to.
    pub registry: String,
    pub username: String,
    /// Given when created or replaced; never in an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

fn registry_credential_kind() -> String {
    REGISTRY_CREDENTIAL_KIND.to_string()
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("name", &self.metadata.name)
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl RegistryCredential {
    /// The object as answers show it: without the password.
    pub fn redacted(&self) -> RegistryCredential {
        RegistryCredential { password: None, ..self.clone() }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = Errors::default();
        validate_type(&self.api_version, &self.kind, REGISTRY_CREDENTIAL_KIND, &mut errors);
        self.metadata.validate(&mut errors);
        if let Err(problem) = check_registry_host(&self.registry) {
            errors.push("registry", problem);
        }
        if self.username.is_empty()
            || self.username.len() > 256
            || self.username.contains(':')
            || self.username.chars().any(char::is_control)
        {
            errors.push("username", "must be 1 to 256 characters, without `:` or control characters");
        }
        match &self.password {
            None => errors.push("password", "is required (it is never shown again)"),
            Some(p) if p.is_empty() || p.len() > MAX_PASSWORD_BYTES || p.chars().any(char::is_control) => {
                errors.push("password", format!("must be 1 to {MAX_PASSWORD_BYTES} bytes without control characters"))
            }
            Some(_) => {}
        }
        errors.finish()
    }
}

/// `host[:port]` as a registry reference starts: no scheme, no path.
pub fn check_registry_host(host: &str) -> Result<(), String> {
    let valid = !host.is_empty()
        && host.len() <= 261
        && !host.contains("://")
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if valid {
        Ok(())
    } else {
        Err(format!("`{}` must be a registry host, `registry.example.com` or `host:port`, without scheme or path", shorten(host)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::from_yaml;

    #[test]
    fn a_credential_validates_and_never_prints_its_password() {
        let good: RegistryCredential =
            from_yaml("metadata: {name: team}\nregistry: registry.example.com:5000\nusername: team\npassword: s3cret\n").unwrap();
        good.validate().unwrap();
        assert!(!format!("{good:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&good.redacted()).unwrap().contains("password"));
        for (text, field) in [
            ("metadata: {name: team}\nregistry: https://r.example.com\nusername: u\npassword: p\n", "registry"),
            ("metadata: {name: team}\nregistry: r.example.com/team\nusername: u\npassword: p\n", "registry"),
            ("metadata: {name: team}\nregistry: r.example.com\nusername: \"a:b\"\npassword: p\n", "username"),
            ("metadata: {name: team}\nregistry: r.example.com\nusername: u\n", "password"),
            ("metadata: {name: Team}\nregistry: r.example.com\nusername: u\npassword: p\n", "metadata.name"),
        ] {
            let error = from_yaml::<RegistryCredential>(text).unwrap().validate().unwrap_err();
            assert!(error.errors.iter().any(|e| e.field == field), "{text}: {error}");
        }
        assert!(from_yaml::<RegistryCredential>("metadata: {name: t}\nregistry: r\nusername: u\npassword: p\npasswd: x\n").is_err());
    }
}
