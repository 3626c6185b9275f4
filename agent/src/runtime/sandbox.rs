//! The sandbox of one instance: exactly what its manifest grants and nothing
//! of the agent's own — no inherited environment, stdin closed, stdout and
//! stderr into the instance's log, only the granted directories, no sockets.
//! Clocks and randomness are available.

use std::path::PathBuf;

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::MemoryLimiter;
use crate::logs::{InstanceLog, Stream};

/// A directory opened for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// Already resolved and checked against the agent's allow-list.
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Store data of a WASI preview 1 core module.
pub struct CoreState {
    pub wasi: WasiP1Ctx,
    pub limiter: MemoryLimiter,
}

/// Store data of a component.
pub struct ComponentState {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// The WASI context for one run.
pub fn wasi_builder(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    dirs: &[Preopen],
    log: &InstanceLog,
) -> anyhow::Result<WasiCtxBuilder> {
    let mut builder = WasiCtxBuilder::new();
    builder.arg(program).args(args).envs(env).stdout(log.sink(Stream::Stdout)).stderr(log.sink(Stream::Stderr));
    // Explicit, although these are wasmtime's defaults too: a workload gets no
    // network unless a later, deliberate grant says otherwise.
    builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    for dir in dirs {
        let perms = if dir.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        builder
            .preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| anyhow::anyhow!("cannot open {} for the guest at {}: {e:#}", dir.host.display(), dir.guest))?;
    }
    Ok(builder)
}

/// Resolves a workload's host directory grants against the agent's
/// allow-list. Scratch grants (no host path) are left to the supervisor. The
/// error names the field and the allowed directories. The allow-list is
/// resolved here, at each admission, so a directory created after the agent
/// started counts.
pub fn resolve_host_grants(dirs: &[wasmlet_api::DirGrant], allowed: &[PathBuf]) -> Result<Vec<Preopen>, String> {
    if dirs.iter().all(|d| d.host_path.is_none()) {
        return Ok(Vec::new());
    }
    let allowed: Vec<PathBuf> = allowed.iter().filter_map(|p| p.canonicalize().ok()).collect();
    let mut out = Vec::new();
    for (i, grant) in dirs.iter().enumerate() {
        let Some(host) = &grant.host_path else { continue };
        let canonical = std::path::Path::new(host).canonicalize().map_err(|e| format!("spec.dirs[{i}].hostPath: {host}: {e}"))?;
        if !allowed.iter().any(|a| canonical.starts_with(a)) {
            let allowed = if allowed.is_empty() {
                "none are allowed; the agent's --allowed-host-paths lists the directories workloads may be granted".to_string()
            } else {
                let list: Vec<String> = allowed.iter().map(|p| p.display().to_string()).collect();
                format!("allowed: {}", list.join(", "))
            };
            return Err(format!("spec.dirs[{i}].hostPath: {host} is outside the agent's allowed host paths ({allowed})"));
        }
        out.push(Preopen { host: canonical, guest: grant.path.clone(), read_only: grant.read_only });
    }
    Ok(out)
}

/// Warns about allow-list entries that do not exist (yet): they count only once they do.
pub fn check_allow_list(paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = path.canonicalize() {
            tracing::warn!(path = %path.display(), error = %e, "an allowed host path cannot be resolved; it counts once it exists");
        }
    }
}
