//! `wasmlet push FILE REF`: a module file into an OCI registry, as a wasm
//! artifact (one `application/wasm` layer), the layout nodes pull.

use std::io::Read as _;
use std::path::PathBuf;

use clap::Args;
use wasmlet_registry::RegistryAuth;
use wasmlet_registry::credentials::Credentials;

use super::{Session, print};
use crate::{Error, Result};

/// Push a module to an OCI registry; prints the pinned reference and the module's digest.
#[derive(Debug, Args)]
pub struct Push {
    /// The module file (a core module or a component).
    file: PathBuf,
    /// Where to push it: `registry.example.com/team/module:1.4`.
    reference: String,
    /// The registry user; the password is read from standard input (`--password-stdin`).
    /// Without it: the registry's entry in Docker's config.json
    /// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), else anonymous.
    #[arg(long, short = 'u', requires = "password_stdin")]
    username: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Also trust this CA (PEM) for the registry, beside the system's.
    #[arg(long, value_name = "FILE")]
    registry_ca_file: Option<PathBuf>,
}

impl Push {
    pub fn execute(self, _session: &Session) -> Result<()> {
        let reference = wasmlet_registry::parse(&self.reference).map_err(Error::Usage)?;
        let module = std::fs::read(&self.file).map_err(|e| Error::Usage(format!("{}: cannot read it: {e}", self.file.display())))?;
        if !module.starts_with(b"\0asm") {
            return Err(Error::Usage(format!("{} is not WebAssembly (it does not start with \\0asm)", self.file.display())));
        }
        let auth = self.auth(reference.resolve_registry())?;
        let extra_ca = match &self.registry_ca_file {
            Some(file) => {
                Some(std::fs::read(file).map_err(|e| Error::Usage(format!("--registry-ca-file {}: cannot read it: {e}", file.display())))?)
            }
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Failed(format!("cannot start the push: {e}")))?;
        let pushed = runtime.block_on(async {
            let registry = wasmlet_registry::Registry::new(extra_ca.as_deref(), concat!("wasmlet/", env!("CARGO_PKG_VERSION")))
                .map_err(Error::Failed)?;
            registry.push(&reference, module, &auth).await.map_err(|e| Error::Failed(format!("cannot push {}: {e}", self.file.display())))
        })?;
        print(&format!("pushed {}\nmodule digest {}\n", pushed.pinned, pushed.digest));
        Ok(())
    }

    fn auth(&self, registry: &str) -> Result<RegistryAuth> {
        if let Some(user) = &self.username {
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password).map_err(|e| Error::Usage(format!("--password-stdin: cannot read it: {e}")))?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            if password.is_empty() {
                return Err(Error::Usage("--password-stdin: standard input is empty".to_string()));
            }
            return Ok(RegistryAuth::Basic(user.clone(), password));
        }
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")));
        match dir.map(|dir| dir.join("config.json")).filter(|file| file.exists()) {
            Some(file) => Ok(Credentials::read(&file).map_err(Error::Usage)?.for_registry(registry)),
            None => Ok(RegistryAuth::Anonymous),
        }
    }
}
