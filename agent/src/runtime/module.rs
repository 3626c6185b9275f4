//! Modules: what the bytes are, whether they are what the manifest pinned,
//! and their compiled form, made once per digest and engine.
//!
//! Compiled artefacts are cached in memory while an instance holds them (a
//! second replica shares them; when no instance holds a module any more, its
//! memory is released) and on disk under `<cache>/<digest>-<engine hash>.cwasm`
//! with a `.sha256` beside it, so an agent restart does not recompile. An
//! entry is loaded only when its checksum matches and wasmtime accepts it for
//! this engine; anything else is deleted and compiled afresh. The disk entries
//! count against the node's bounded module cache ([`DiskCache`]).
//!
//! A module not found in either is checked against the compile limits
//! ([`super::precheck`]) and compiled by the [`Compiler`], once however many
//! instances wait for it; when none waits any more, the compile is dropped.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared, WeakShared};
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Engine, InstancePre, Linker, Module};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::compiler::Compiler;
use super::http::HttpState;
use super::sandbox::{ComponentState, CoreState};
use crate::modules::cache::{self, DiskCache, Part};

/// What a module's bytes turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// A core module for WASI preview 1 (`wasm32-wasip1`).
    Core,
    /// A component (`wasm32-wasip2`).
    Component,
}

/// Why a module cannot run. Each message says what was found and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error(
        "digest mismatch: the manifest pins {expected} but the module's bytes hash to {actual}; rebuild the manifest's digest or fix the file"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error("not a WebAssembly module: {0}; wasmlet runs core modules for WASI preview 1 (wasm32-wasip1) and components (wasm32-wasip2)")]
    NotWasm(String),
    #[error("invalid module: {0}")]
    Invalid(String),
    #[error("module refused: {0}")]
    Unsupported(String),
    /// Compiling it would cost more than the agent's compile limits allow.
    #[error("module refused: {0}")]
    TooCostly(String),
}

/// How a load was served, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    MemoryHit,
    DiskHit,
    Compiled,
}

impl CacheOutcome {
    /// How the module was had, in the words of the instance's event.
    pub fn describe(self) -> &'static str {
        match self {
            CacheOutcome::MemoryHit => "compile cache hit (memory)",
            CacheOutcome::DiskHit => "compile cache hit (disk)",
            CacheOutcome::Compiled => "compiled",
        }
    }
}

/// A module ready to instantiate: imports resolved once, shared by every instance.
pub struct LoadedModule {
    pub digest: String,
    pub kind: ModuleKind,
    pub program: Program,
}

pub enum Program {
    /// A WASI preview 1 command: instantiate, then call `_start`.
    Core(InstancePre<CoreState>),
    /// A component exporting `wasi:cli/run`.
    Command(CommandPre<ComponentState>),
    /// A component exporting `wasi:http/incoming-handler`: a service, instantiated per request.
    Proxy(ProxyPre<HttpState>),
}

/// Counters of the compile cache, exported as metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub compiled: AtomicU64,
    /// Disk entries found corrupt or foreign and removed.
    pub discarded: AtomicU64,
}

/// Compiled modules by digest.
pub struct ModuleCache {
    loader: Arc<Loader>,
    loaded: Mutex<HashMap<String, Slot>>,
    pub stats: Arc<CacheStats>,
}

/// A module in memory, or on its way there.
enum Slot {
    /// Held by the instances that use it; gone when none does.
    Ready(Weak<LoadedModule>),
    /// Shared by every caller waiting for it; gone when none waits any more.
    Loading(WeakShared<Loading>),
}

type Loading = BoxFuture<'static, Result<(Arc<LoadedModule>, CacheOutcome), LoadError>>;

/// Everything a load needs, shared with the load futures.
struct Loader {
    engine: Engine,
    dir: PathBuf,
    /// Hex hash of everything that makes compiled code fit this engine.
    engine_hash: String,
    compiler: Compiler,
    core_linker: Linker<CoreState>,
    component_linker: ComponentLinker<ComponentState>,
    http_linker: ComponentLinker<HttpState>,
    stats: Arc<CacheStats>,
    /// The node's bounded cache on disk, told of every artefact used and
    /// written; None where nothing is compiled (an instance's own process).
    disk: Option<Arc<DiskCache>>,
}

/// A hex hash of what makes compiled code fit `engine`: artefacts of engines
/// with the same hash load into each other.
pub fn engine_hash(engine: &Engine) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Identifies the module format from its first eight bytes.
pub fn detect(bytes: &[u8]) -> Result<ModuleKind, LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let start: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let hint = if bytes.starts_with(b"(module") || bytes.starts_with(b"(component") {
            " (this is WebAssembly text; compile it to binary first)".to_string()
        } else {
            String::new()
        };
        return Err(LoadError::NotWasm(format!("{} bytes starting with [{}] lack the `\\0asm` magic{hint}", bytes.len(), start.join(" "))));
    }
    let [a, b, c, d] = [bytes[4], bytes[5], bytes[6], bytes[7]];
    match [a, b, c, d] {
        [1, 0, 0, 0] => Ok(ModuleKind::Core),
        [0x0d, 0x00, 0x01, 0x00] => Ok(ModuleKind::Component),
        _ => Err(LoadError::NotWasm(format!(
            "binary version/layer {a:02x} {b:02x} {c:02x} {d:02x} is neither a core module (01 00 00 00) nor a component (0d 00 01 00)"
        ))),
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

impl ModuleCache {
    pub fn new(engine: Engine, dir: PathBuf, compiler: Compiler, disk: Option<Arc<DiskCache>>) -> anyhow::Result<ModuleCache> {
        let engine_hash = engine_hash(&engine);
        if let Some(disk) = &disk {
            disk.loads_for_engine(&engine_hash);
        }
        let mut core_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut core_linker, |s: &mut CoreState| &mut s.wasi)?;
        let mut component_linker = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)?;
        let mut http_linker = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut http_linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut http_linker)?;
        let stats = Arc::new(CacheStats::default());
        let loader = Loader { engine, dir, engine_hash, compiler, core_linker, component_linker, http_linker, stats: stats.clone(), disk };
        Ok(ModuleCache { loader: Arc::new(loader), loaded: Mutex::new(HashMap::new()), stats })
    }

    /// Where compiled artefacts are cached.
    pub fn dir(&self) -> &Path {
        &self.loader.dir
    }

    pub fn compiler(&self) -> &Compiler {
        &self.loader.compiler
    }

    /// The module for `bytes`, which must hash to `digest`: from memory, from
    /// disk, or compiled now (once, however many callers ask at the same time).
    /// Dropping the future gives up waiting; the last one to give up stops the compile.
    pub async fn load(&self, digest: &str, bytes: Arc<Vec<u8>>) -> Result<(Arc<LoadedModule>, CacheOutcome), LoadError> {
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(LoadError::DigestMismatch { expected: digest.to_string(), actual });
        }
        let (loading, first) = {
            let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            let joined = match loaded.get(digest) {
                Some(Slot::Ready(weak)) => match weak.upgrade() {
                    Some(module) => {
                        drop(loaded);
                        self.served(digest, CacheOutcome::MemoryHit);
                        return Ok((module, CacheOutcome::MemoryHit));
                    }
                    None => None,
                },
                Some(Slot::Loading(weak)) => weak.upgrade(),
                None => None,
            };
            match joined {
                Some(loading) => (loading, false),
                None => {
                    let loader = self.loader.clone();
                    let owned = digest.to_string();
                    let loading: Shared<Loading> = async move {
                        let (module, how) = loader.load_uncached(&owned, bytes).await?;
                        Ok((Arc::new(module), how))
                    }
                    .boxed()
                    .shared();
                    // Modules no instance holds any more are forgotten.
                    loaded.retain(|_, slot| match slot {
                        Slot::Ready(weak) => weak.strong_count() > 0,
                        Slot::Loading(weak) => weak.upgrade().is_some(),
                    });
                    if let Some(weak) = loading.downgrade() {
                        loaded.insert(digest.to_string(), Slot::Loading(weak));
                    }
                    (loading, true)
                }
            }
        };
        let result = loading.await;
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let (module, outcome) = match result {
            Ok(done) => done,
            Err(e) => {
                // The next caller tries again (after a fix of the cause, say more memory).
                if matches!(loaded.get(digest), Some(Slot::Loading(_))) {
                    loaded.remove(digest);
                }
                return Err(e);
            }
        };
        if !matches!(loaded.get(digest), Some(Slot::Ready(weak)) if weak.strong_count() > 0) {
            loaded.insert(digest.to_string(), Slot::Ready(Arc::downgrade(&module)));
        }
        drop(loaded);
        // Callers that joined a load under way count as served from memory.
        let outcome = if first { outcome } else { CacheOutcome::MemoryHit };
        self.served(digest, outcome);
        Ok((module, outcome))
    }

    /// Counts how a load was served.
    fn served(&self, digest: &str, outcome: CacheOutcome) {
        match outcome {
            CacheOutcome::MemoryHit => self.stats.memory_hits.fetch_add(1, Ordering::Relaxed),
            CacheOutcome::DiskHit => self.stats.disk_hits.fetch_add(1, Ordering::Relaxed),
            CacheOutcome::Compiled => self.stats.compiled.fetch_add(1, Ordering::Relaxed),
        };
        if let Some(disk) = &self.loader.disk {
            let part = Part::Compiled(self.loader.engine_hash.clone());
            match outcome {
                CacheOutcome::Compiled => disk.miss(&part),
                CacheOutcome::MemoryHit | CacheOutcome::DiskHit => disk.hit(digest, part),
            }
        }
    }
}

impl ModuleCache {
    /// The compiled artefact of `digest` in the disk cache, mapped rather
    /// than read: every process that opens the same file shares its pages.
    /// For a process that runs what the agent compiled and cached; a missing
    /// or corrupt artefact is an error here, not a compile.
    pub fn open_artefact(&self, digest: &str, kind: ModuleKind) -> Result<Arc<LoadedModule>, LoadError> {
        let path = self.loader.artefact_path(digest);
        let file = std::fs::File::open(&path)
            .map_err(|e| LoadError::Invalid(format!("the compiled module {} cannot be opened: {e}", path.display())))?;
        let expected = std::fs::read_to_string(checksum_path(&path)).unwrap_or_default();
        let actual = sha256_file(&file).map_err(|e| LoadError::Invalid(format!("reading {}: {e}", path.display())))?;
        if expected.trim() != actual {
            return Err(LoadError::Invalid(format!("the compiled module {} does not match its checksum", path.display())));
        }
        let compiled = deserialize_open_file(&self.loader.engine, file, kind)
            .map_err(|e| LoadError::Invalid(format!("the compiled module {} cannot be loaded: {e:#}", path.display())))?;
        let program = self.loader.link(compiled)?;
        Ok(Arc::new(LoadedModule { digest: digest.to_string(), kind, program }))
    }
}

fn sha256_file(file: &std::fs::File) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut hasher = Sha256::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut buf = [0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

#[allow(unsafe_code)]
fn deserialize_open_file(engine: &Engine, file: std::fs::File, kind: ModuleKind) -> wasmtime::Result<Compiled> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: as in `deserialize`, the artefact is this engine's own code,
    // checked against its sidecar checksum just before, from the same open
    // file. wasmtime maps the file and requires that it does not change while
    // mapped: the cache never writes an artefact in place (`store_artefact`
    // renames a new file over it; discarding unlinks it), so the inode this
    // descriptor names is never modified.
    unsafe {
        match kind {
            ModuleKind::Core => Module::deserialize_open_file(engine, file).map(Compiled::Core),
            ModuleKind::Component => {
                // Components have no open-file variant: the magic link names this very inode.
                let path = format!("/proc/self/fd/{}", file.as_raw_fd());
                let component = Component::deserialize_file(engine, &path);
                drop(file);
                component.map(Compiled::Component)
            }
        }
    }
}

impl Loader {
    async fn load_uncached(&self, digest: &str, bytes: Arc<Vec<u8>>) -> Result<(LoadedModule, CacheOutcome), LoadError> {
        let kind = detect(&bytes)?;
        let artefact = self.artefact_path(digest);
        let engine = self.engine.clone();
        let stats_discarded = {
            let path = artefact.clone();
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || load_artefact(&engine, &path, kind))
                .await
                .map_err(|e| LoadError::Invalid(format!("loading the cached artefact failed: {e}")))?
        };
        let (compiled, outcome) = match stats_discarded {
            ArtefactLoad::Loaded(compiled) => (compiled, CacheOutcome::DiskHit),
            other => {
                if matches!(other, ArtefactLoad::Discarded) {
                    self.stats.discarded.fetch_add(1, Ordering::Relaxed);
                    self.written(digest).await;
                }
                let limits = self.compiler.budget.limits;
                let checked = bytes.clone();
                tokio::task::spawn_blocking(move || super::precheck::check(&checked, &limits))
                    .await
                    .map_err(|e| LoadError::Invalid(format!("checking the module failed: {e}")))?
                    .map_err(LoadError::TooCostly)?;
                let compiled = self.compiler.compile(&engine, bytes.clone(), kind, &artefact).await;
                self.written(digest).await;
                let compiled = match compiled {
                    Err(LoadError::Invalid(why)) if kind == ModuleKind::Component => {
                        let checked = bytes.clone();
                        let p3 = tokio::task::spawn_blocking(move || is_wasi_p3_component(&checked)).await.unwrap_or(false);
                        return Err(if p3 { LoadError::Unsupported(WASI_P3_REFUSED.to_string()) } else { LoadError::Invalid(why) });
                    }
                    other => other?,
                };
                (compiled, CacheOutcome::Compiled)
            }
        };
        let program = self.link(compiled)?;
        Ok((LoadedModule { digest: digest.to_string(), kind, program }, outcome))
    }

    /// Resolves imports once. An import the agent does not provide is named in the error.
    fn link(&self, compiled: Compiled) -> Result<Program, LoadError> {
        match compiled {
            Compiled::Core(module) => {
                let start = module.get_export("_start");
                if !matches!(start, Some(wasmtime::ExternType::Func(_))) {
                    return Err(LoadError::Unsupported(
                        "the core module exports no `_start` function: wasmlet runs WASI command modules (a wasm32-wasip1 program with `main`), not libraries or reactors".to_string(),
                    ));
                }
                let pre = self.core_linker.instantiate_pre(&module).map_err(|e| LoadError::Unsupported(import_error(&e)))?;
                Ok(Program::Core(pre))
            }
            Compiled::Component(component) => {
                if exports_http_handler(&self.engine, &component) {
                    let pre = self.http_linker.instantiate_pre(&component).map_err(|e| LoadError::Unsupported(import_error(&e)))?;
                    let proxy = ProxyPre::new(pre).map_err(|e| {
                        LoadError::Unsupported(format!("the component's wasi:http/incoming-handler cannot be used ({e:#})"))
                    })?;
                    return Ok(Program::Proxy(proxy));
                }
                let pre = self.component_linker.instantiate_pre(&component).map_err(|e| LoadError::Unsupported(import_error(&e)))?;
                let command = CommandPre::new(pre).map_err(|e| {
                    LoadError::Unsupported(format!(
                        "the component does not export `wasi:cli/run` ({e:#}); daemons and jobs must be WASI command components"
                    ))
                })?;
                Ok(Program::Command(command))
            }
        }
    }

    fn artefact_path(&self, digest: &str) -> PathBuf {
        self.dir.join(cache::artefact_file(digest, &self.engine_hash))
    }

    /// Tells the disk cache the artefact of `digest` was written or removed
    /// (it measures it again and evicts what no longer fits).
    async fn written(&self, digest: &str) {
        let Some(disk) = self.disk.clone() else { return };
        let (digest, part) = (digest.to_string(), Part::Compiled(self.engine_hash.clone()));
        if let Err(e) = tokio::task::spawn_blocking(move || disk.written(&digest, part)).await {
            tracing::warn!(error = %e, "cannot account for a compiled module in the module cache");
        }
    }
}

/// Whether a component exports `wasi:http/incoming-handler` (any 0.2 version).
fn exports_http_handler(engine: &Engine, component: &Component) -> bool {
    component.component_type().exports(engine).any(|(name, _)| name.starts_with("wasi:http/incoming-handler@"))
}

/// Why a WASI 0.3 component does not run, in words (wasmtime's own message
/// names a canonical builtin and a feature, not the WASI version).
pub const WASI_P3_REFUSED: &str = "this is a WASI 0.3 (p3) component: it uses the component model's async features \
(such as `task.return`), and wasmlet does not run WASI 0.3 components yet; \
build it for WASI 0.2 (the wasm32-wasip2 target), or as a WASI preview 1 module (wasm32-wasip1)";

/// Whether `bytes` is a component that is valid only with the component
/// model's async features (WASI 0.3), which this agent's engine leaves off.
/// Asked only of a component the engine refused, so it costs nothing on the way to running.
fn is_wasi_p3_component(bytes: &[u8]) -> bool {
    use wasmparser::{Validator, WasmFeatures};
    let concurrency = WasmFeatures::CM_ASYNC
        | WasmFeatures::CM_ASYNC_STACKFUL
        | WasmFeatures::CM_MORE_ASYNC_BUILTINS
        | WasmFeatures::CM_THREADING
        | WasmFeatures::CM_ERROR_CONTEXT;
    let all = WasmFeatures::all();
    Validator::new_with_features(all).validate_all(bytes).is_ok()
        && Validator::new_with_features(all.difference(concurrency)).validate_all(bytes).is_err()
}

/// Linking fails for one reason in practice: an import the agent does not
/// provide. wasmtime's message names the import.
fn import_error(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    if text.contains("unknown import") { format!("it imports something this agent does not provide: {text}") } else { text }
}

pub(super) enum Compiled {
    Core(Module),
    Component(Component),
}

enum ArtefactLoad {
    Loaded(Compiled),
    Absent,
    /// Present but corrupt or made for another engine: removed.
    Discarded,
}

fn checksum_path(artefact: &Path) -> PathBuf {
    artefact.with_extension("cwasm.sha256")
}

fn load_artefact(engine: &Engine, path: &Path, kind: ModuleKind) -> ArtefactLoad {
    let Ok(bytes) = std::fs::read(path) else { return ArtefactLoad::Absent };
    let expected = std::fs::read_to_string(checksum_path(path)).unwrap_or_default();
    let discard = |why: String| {
        tracing::warn!(artefact = %path.display(), reason = %why, "discarding a cached compiled module; it will be recompiled");
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(checksum_path(path));
        ArtefactLoad::Discarded
    };
    if expected.trim() != sha256_digest(&bytes) {
        return discard("its checksum does not match".to_string());
    }
    match deserialize(engine, &bytes, kind) {
        Ok(compiled) => ArtefactLoad::Loaded(compiled),
        Err(e) => discard(format!("{e:#}")),
    }
}

#[allow(unsafe_code)]
pub(super) fn deserialize(engine: &Engine, bytes: &[u8], kind: ModuleKind) -> wasmtime::Result<Compiled> {
    // SAFETY: wasmtime runs deserialized code as is, so it must be code that
    // an engine of this configuration compiled. Artefacts come from two
    // places: the agent's own cache directory, written by `store_artefact`
    // with a SHA-256 sidecar that the caller checked just before; or the
    // stdout of the agent's own binary run as `wasmlet-agent compile`, whose
    // engine was checked at start to have this engine's compatibility hash.
    // wasmtime itself refuses artefacts from another version or configuration.
    unsafe {
        match kind {
            ModuleKind::Core => Module::deserialize(engine, bytes).map(Compiled::Core),
            ModuleKind::Component => Component::deserialize(engine, bytes).map(Compiled::Component),
        }
    }
}

pub(super) fn compile_and_store(engine: &Engine, bytes: &[u8], kind: ModuleKind, path: &Path) -> Result<Compiled, LoadError> {
    let (compiled, serialized) = match kind {
        ModuleKind::Core => {
            let module = Module::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
            let serialized = module.serialize();
            (Compiled::Core(module), serialized)
        }
        ModuleKind::Component => {
            let component = Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
            let serialized = component.serialize();
            (Compiled::Component(component), serialized)
        }
    };
    // The cache is an optimisation: failing to write it costs a compile next time, nothing more.
    match serialized {
        Ok(artefact) => {
            if let Err(e) = store_artefact(path, &artefact) {
                tracing::warn!(artefact = %path.display(), error = %e, "cannot cache the compiled module");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot serialize the compiled module"),
    }
    Ok(compiled)
}

/// Writes the artefact and its checksum so that a crash leaves either both or
/// an artefact without a matching checksum (which is discarded on load).
pub(super) fn store_artefact(path: &Path, artefact: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("cwasm.tmp");
    std::fs::write(&tmp, artefact)?;
    std::fs::rename(&tmp, path)?;
    let sum_tmp = path.with_extension("cwasm.sha256.tmp");
    std::fs::write(&sum_tmp, sha256_digest(artefact))?;
    std::fs::rename(&sum_tmp, checksum_path(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::cache::compiled_dir;
    use crate::runtime::compiler::CompileBudget;
    use crate::runtime::precheck::CompileLimits;

    /// An engine as the agent makes one, and a small compile budget.
    fn engine_and_budget() -> (Engine, CompileBudget) {
        let engine = Engine::new(&super::super::base_config(1 << 30)).unwrap();
        let budget = CompileBudget {
            limits: CompileLimits { module_size: 1 << 20, functions: 10, function_size: 1000, nesting: 10, locals: 10 },
            memory: 256 << 20,
            timeout: std::time::Duration::from_secs(60),
        };
        (engine, budget)
    }

    #[tokio::test]
    async fn a_wasi_p3_component_is_refused_in_words() {
        let (engine, budget) = engine_and_budget();
        let dir = tempfile::tempdir().unwrap();
        let cache =
            ModuleCache::new(engine.clone(), dir.path().to_path_buf(), Compiler::new(None, &engine, 1 << 30, budget), None).unwrap();
        let load = |text: &str| {
            let wasm = Arc::new(wat::parse_str(text).unwrap());
            let digest = sha256_digest(&wasm);
            let cache = &cache;
            async move { cache.load(&digest, wasm).await.err().expect("refused") }
        };
        let p3 = load("(component (core func (canon task.return)))").await;
        assert!(matches!(&p3, LoadError::Unsupported(m) if m == WASI_P3_REFUSED), "{p3}");
        assert!(p3.to_string().contains("WASI 0.3 (p3) component") && p3.to_string().contains("wasm32-wasip2"), "{p3}");
        // Any other refusal keeps wasmtime's words.
        let invalid = load("(component (core module (func (result i32))))").await;
        assert!(matches!(invalid, LoadError::Invalid(_)), "{invalid}");
    }

    #[tokio::test]
    async fn a_compiled_module_stays_in_memory_while_an_instance_holds_it_and_counts_in_the_disk_cache() {
        let (engine, budget) = engine_and_budget();
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskCache::open(dir.path(), u64::MAX));
        let compiler = Compiler::new(None, &engine, 1 << 30, budget);
        let cache = ModuleCache::new(engine.clone(), compiled_dir(dir.path()), compiler, Some(disk.clone())).unwrap();
        let wasm = Arc::new(wat::parse_str("(module (func (export \"_start\")))").unwrap());
        let digest = sha256_digest(&wasm);

        let (first, how) = cache.load(&digest, wasm.clone()).await.unwrap();
        assert_eq!(how, CacheOutcome::Compiled);
        let (second, how) = cache.load(&digest, wasm.clone()).await.unwrap();
        assert_eq!(how, CacheOutcome::MemoryHit, "shared while an instance holds it");
        drop((first, second));
        let (_third, how) = cache.load(&digest, wasm.clone()).await.unwrap();
        assert_eq!(how, CacheOutcome::DiskHit, "released from memory once no instance held it");

        let mut registry = prometheus_client::registry::Registry::default();
        disk.register_metrics(&mut registry);
        let mut metrics = String::new();
        prometheus_client::encoding::text::encode(&mut metrics, &registry).unwrap();
        let artefact = cache.loader.artefact_path(&digest);
        let on_disk = std::fs::metadata(&artefact).unwrap().len() + std::fs::metadata(checksum_path(&artefact)).unwrap().len();
        for counted in [
            "wasmlet_module_cache_misses_total{part=\"compiled\"} 1".to_string(),
            "wasmlet_module_cache_hits_total{part=\"compiled\"} 2".to_string(),
            format!("wasmlet_module_cache_bytes {on_disk}"),
        ] {
            assert!(metrics.lines().any(|l| l == counted), "{counted} in\n{metrics}");
        }
    }

    #[test]
    fn formats_are_told_apart_and_others_named() {
        assert_eq!(detect(b"\0asm\x01\0\0\0").unwrap(), ModuleKind::Core);
        assert_eq!(detect(b"\0asm\x0d\0\x01\0").unwrap(), ModuleKind::Component);
        let err = detect(b"#!/bin/sh\necho hi").unwrap_err().to_string();
        assert!(err.contains("not a WebAssembly module") && err.contains("23 21"), "{err}");
        let err = detect(b"(module)").unwrap_err().to_string();
        assert!(err.contains("WebAssembly text"), "{err}");
        let err = detect(b"\0asm\x02\0\0\0").unwrap_err().to_string();
        assert!(err.contains("02 00 00 00"), "{err}");
    }
}
