//! `wasmlet create registry-credentials NAME --registry HOST --username USER
//! --password-stdin`: credentials the master holds for workloads whose
//! module names them (`module.credentials: NAME`).

use std::io::Read as _;

use clap::{Args, Subcommand};
use reqwest::Method;
use wasmlet_api::{ObjectMeta, RegistryCredential};

use super::{Session, print};
use crate::{Error, Result};

/// Create an object from flags.
#[derive(Debug, Args)]
pub struct Create {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Registry credentials for workloads' modules; the password is read from
    /// standard input and never shown again.
    #[command(name = "registry-credentials")]
    RegistryCredentials {
        name: String,
        /// The registry they are for (`registry.example.com[:port]`), the only one they are presented to.
        #[arg(long)]
        registry: String,
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password from standard input (required: a password is never a flag).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Replace credentials of that name if the master holds them already.
        #[arg(long)]
        replace: bool,
    },
}

impl Create {
    pub fn execute(self, session: &Session) -> Result<()> {
        let What::RegistryCredentials { name, registry, username, replace, .. } = self.what;
        let mut password = String::new();
        std::io::stdin().read_to_string(&mut password).map_err(|e| Error::Usage(format!("--password-stdin: cannot read it: {e}")))?;
        let password = password.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            return Err(Error::Usage("--password-stdin: standard input is empty".to_string()));
        }
        let credential = RegistryCredential {
            api_version: wasmlet_api::API_VERSION.to_string(),
            kind: wasmlet_api::registry::REGISTRY_CREDENTIAL_KIND.to_string(),
            metadata: ObjectMeta { name: name.clone(), ..ObjectMeta::default() },
            registry,
            username,
            password: Some(password),
        };
        let client = session.client()?;
        let created: Result<RegistryCredential> = client.send_json(Method::POST, "/registry-credentials", &credential);
        let outcome = match created {
            Ok(_) => "created",
            Err(Error::Api { status: 409, .. }) if replace => {
                let _: RegistryCredential = client.send_json(Method::PUT, &format!("/registry-credentials/{name}"), &credential)?;
                "replaced"
            }
            Err(e) => return Err(e),
        };
        print(&format!("registry-credentials/{name} {outcome}\n"));
        Ok(())
    }
}
