//! Modules in OCI registries: the node pulls the layer the master pinned
//! (`module.digest`) from the workload's repository, with the credentials
//! the workload names (held by the master, fetched from it for each pull),
//! else the node's own (`--registry-credentials`, Docker's `config.json`,
//! read at each pull so that renewed credentials apply without a restart),
//! else anonymously.

use std::path::PathBuf;

use futures::future::BoxFuture;
use wasmlet_api::ModuleRef;
use wasmlet_registry::credentials::Credentials;
use wasmlet_registry::{Registry, RegistryAuth, RegistryError};

use super::{ModuleSource, PullError};

/// Pulls modules from registries.
#[derive(Debug)]
pub struct OciSource {
    registry: Registry,
    credentials: Option<PathBuf>,
}

impl OciSource {
    /// `extra_ca_pem`: the node's `--module-ca-file`; `credentials`: its
    /// `--registry-credentials` file; `user_agent` names the node in the
    /// registry's logs.
    pub fn new(extra_ca_pem: Option<&[u8]>, credentials: Option<PathBuf>, user_agent: &'static str) -> anyhow::Result<OciSource> {
        if let Some(file) = &credentials {
            Credentials::read(file).map_err(|e| anyhow::anyhow!("--registry-credentials {e}"))?;
        }
        let registry = Registry::new(extra_ca_pem, user_agent).map_err(anyhow::Error::msg)?;
        Ok(OciSource { registry, credentials })
    }

    async fn pull(&self, module: &ModuleRef, limit: u64) -> Result<Vec<u8>, PullError> {
        let reference = reference_of(module)?;
        let auth = match &self.credentials {
            Some(file) => Credentials::read(file).map_err(|e| PullError::Refused(format!("--registry-credentials {e}")))?,
            None => Credentials::default(),
        }
        .for_registry(reference.resolve_registry());
        self.pull_with(module, &auth, limit).await
    }

    /// Pulls `module` presenting `auth` (credentials the master holds for the workload).
    pub async fn pull_with(&self, module: &ModuleRef, auth: &RegistryAuth, limit: u64) -> Result<Vec<u8>, PullError> {
        let reference = reference_of(module)?;
        self.registry.pull(&reference, &module.digest, auth, limit).await.map_err(|e| match e {
            RegistryError::Refused(why) => PullError::Refused(why),
            RegistryError::Unreachable(why) => PullError::Unreachable(why),
            RegistryError::TooLarge { limit, .. } => PullError::TooLarge { limit },
        })
    }
}

fn reference_of(module: &ModuleRef) -> Result<wasmlet_registry::Reference, PullError> {
    let Some(reference) = &module.oci else {
        return Err(PullError::Refused(format!("`{}` is not a registry reference", module.origin())));
    };
    wasmlet_registry::parse(reference).map_err(PullError::Refused)
}

impl ModuleSource for OciSource {
    fn fetch<'a>(&'a self, module: &'a ModuleRef, limit: u64) -> BoxFuture<'a, Result<Vec<u8>, PullError>> {
        Box::pin(self.pull(module, limit))
    }
}
