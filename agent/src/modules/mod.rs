//! Where a module's bytes come from, and where they are kept.
//!
//! A workload names its module by a source and a digest. Each kind of source
//! is one [`ModuleSource`]: the master (`GET /modules/{digest}`, for uploaded
//! modules), `https://` URLs ([`https::HttpsSource`]) and OCI registries
//! ([`oci::OciSource`]). Whatever the source,
//! the bytes end in one content-addressed store ([`ModuleStore`]): checked
//! against the digest before they are kept, and before anything compiles them.
//!
//! | path under the data dir | what |
//! | --- | --- |
//! | `cache/modules/<hex>.wasm` | a module's bytes, named by their sha256 |
//!
//! The bytes on disk count, with the compiled modules, against the node's
//! bounded module cache ([`cache::DiskCache`]).

pub mod cache;
pub mod https;
pub mod oci;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use wasmlet_api::ModuleRef;

use self::cache::{DiskCache, Part};
use crate::runtime::module::sha256_digest;

/// Why a module's bytes could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The source answered, and will answer the same again (a 401, a 404, a
    /// scheme the node does not allow): worth retrying only slowly.
    #[error("{0}")]
    Refused(String),
    /// The source could not be reached or stopped answering: retried.
    #[error("{0}")]
    Unreachable(String),
    #[error("the module is larger than the {limit} bytes this node accepts (--max-module-size)")]
    TooLarge { limit: u64 },
    #[error("the bytes from {from} hash to {actual}, not the {expected} the workload pins: refused before compiling")]
    DigestMismatch { from: String, expected: String, actual: String },
    #[error("cannot keep the module in {dir}: {error}")]
    Store { dir: String, error: std::io::Error },
}

/// One place module bytes come from.
pub trait ModuleSource: Send + Sync {
    /// The bytes of `module`, at most `limit` of them. The caller checks the digest.
    fn fetch<'a>(&'a self, module: &'a ModuleRef, limit: u64) -> BoxFuture<'a, Result<Vec<u8>, PullError>>;
}

/// The sources of modules the node gets from elsewhere than its master.
#[derive(Debug)]
pub struct Remote {
    pub web: Arc<https::HttpsSource>,
    pub registries: Arc<oci::OciSource>,
}

impl Remote {
    /// The source of `module`: a registry or a web server; None for a file (uploaded to the master, or beside a static manifest).
    pub fn source_of(&self, module: &ModuleRef) -> Option<Arc<dyn ModuleSource>> {
        if module.oci.is_some() {
            Some(self.registries.clone())
        } else if module.is_url() {
            Some(self.web.clone())
        } else {
            None
        }
    }
}

/// A module's bytes as an instance gets them: at hand (a static manifest's
/// file, read at admission), or to be pulled from a source into the store
/// (the instance waits in `ModulePullBackOff` until they are).
#[derive(Clone)]
pub enum Module {
    Ready(Arc<Vec<u8>>),
    Pull { module: ModuleRef, store: Arc<ModuleStore>, source: Arc<dyn ModuleSource> },
}

impl Module {
    pub async fn bytes(&self) -> Result<Arc<Vec<u8>>, PullError> {
        match self {
            Module::Ready(bytes) => Ok(bytes.clone()),
            Module::Pull { module, store, source } => store.get(module, source.as_ref()).await,
        }
    }
}

/// Module bytes by digest: in memory while an instance needs them, on disk
/// (`cache/modules/`) across restarts; fetched from a source once.
#[derive(Debug)]
pub struct ModuleStore {
    dir: PathBuf,
    limit: u64,
    /// Counts the bytes on disk, their uses, hits and misses; evicts after each write.
    cache: Arc<DiskCache>,
    memory: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    /// One pull at a time per digest: replicas of a workload on one node wait
    /// for the first one's download instead of each fetching (and writing) it.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ModuleStore {
    /// The store in the node's module cache; no module larger than `limit` bytes is fetched.
    pub fn new(cache: Arc<DiskCache>, limit: u64) -> ModuleStore {
        ModuleStore { dir: cache.modules_dir().to_path_buf(), limit, cache, memory: Mutex::default(), pulling: Mutex::default() }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(cache::module_file(digest))
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vec<u8>>>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The module's bytes: from memory, from disk (checked again), or from `source`
    /// (checked against the digest before they are kept). Concurrent calls for
    /// one digest fetch it once.
    pub async fn get(&self, module: &ModuleRef, source: &dyn ModuleSource) -> Result<Arc<Vec<u8>>, PullError> {
        let digest = &module.digest;
        let in_memory = self.memory().get(digest).cloned();
        if let Some(bytes) = in_memory {
            self.cache.hit(digest, Part::Module);
            return Ok(bytes);
        }
        let turn = self.lock(digest).lock_owned().await;
        let kept = self.memory().get(digest).cloned();
        let got = match kept {
            Some(bytes) => {
                self.cache.hit(digest, Part::Module);
                Ok(bytes)
            }
            None => self.load(module, source).await,
        };
        drop(turn);
        self.unlock(digest);
        got
    }

    fn lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut pulling = self.pulling.lock().unwrap_or_else(|e| e.into_inner());
        pulling.entry(digest.to_string()).or_default().clone()
    }

    /// Forgets the digest's lock once no pull holds or waits for it.
    fn unlock(&self, digest: &str) {
        let mut pulling = self.pulling.lock().unwrap_or_else(|e| e.into_inner());
        if pulling.get(digest).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            pulling.remove(digest);
        }
    }

    async fn load(&self, module: &ModuleRef, source: &dyn ModuleSource) -> Result<Arc<Vec<u8>>, PullError> {
        let digest = &module.digest;
        let path = self.path(digest);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) if sha256_digest(&bytes) == *digest => {
                self.cache.hit(digest, Part::Module);
                bytes
            }
            _ => {
                self.cache.miss(&Part::Module);
                let bytes = source.fetch(module, self.limit).await?;
                let actual = sha256_digest(&bytes);
                if actual != *digest {
                    return Err(PullError::DigestMismatch { from: module.origin().to_string(), expected: digest.clone(), actual });
                }
                self.keep(digest, &path, &bytes).await?;
                bytes
            }
        };
        let bytes = Arc::new(bytes);
        self.memory().insert(digest.clone(), bytes.clone());
        Ok(bytes)
    }

    async fn keep(&self, digest: &str, path: &Path, bytes: &[u8]) -> Result<(), PullError> {
        let store = |error| PullError::Store { dir: self.dir.display().to_string(), error };
        tokio::fs::create_dir_all(&self.dir).await.map_err(store)?;
        let (path, bytes, cache, digest) = (path.to_path_buf(), bytes.to_vec(), self.cache.clone(), digest.to_string());
        tokio::task::spawn_blocking(move || {
            crate::files::write_atomically(&path, &bytes, 0o644)?;
            cache.written(&digest, Part::Module);
            Ok(())
        })
        .await
        .map_err(|e| store(std::io::Error::other(e)))?
        .map_err(store)
    }

    /// Lets go of the bytes in memory of every module not in `digests` (they stay on disk).
    pub fn retain(&self, digests: &BTreeSet<&String>) {
        self.memory().retain(|digest, _| digests.contains(digest));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Serves fixed bytes and counts the fetches.
    struct Fixed(Vec<u8>, AtomicUsize);

    impl ModuleSource for Fixed {
        fn fetch<'a>(&'a self, _: &'a ModuleRef, limit: u64) -> BoxFuture<'a, Result<Vec<u8>, PullError>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            let bytes = self.0.clone();
            Box::pin(async move { if bytes.len() as u64 > limit { Err(PullError::TooLarge { limit }) } else { Ok(bytes) } })
        }
    }

    fn open(data_dir: &Path) -> Arc<DiskCache> {
        Arc::new(DiskCache::open(data_dir, u64::MAX))
    }

    fn module(bytes: &[u8]) -> ModuleRef {
        ModuleRef { source: "https://example.test/m.wasm".into(), digest: sha256_digest(bytes), ..ModuleRef::default() }
    }

    #[tokio::test]
    async fn bytes_are_fetched_once_checked_and_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let source = Fixed(b"\0asm\x01\0\0\0".to_vec(), AtomicUsize::new(0));
        let wanted = module(&source.0);
        let cache = open(dir.path());
        let store = ModuleStore::new(cache.clone(), 1 << 20);
        assert_eq!(*store.get(&wanted, &source).await.unwrap(), source.0);
        assert_eq!(*store.get(&wanted, &source).await.unwrap(), source.0);
        assert_eq!(source.1.load(Ordering::SeqCst), 1, "from memory the second time");
        let mut registry = prometheus_client::registry::Registry::default();
        cache.register_metrics(&mut registry);
        let mut metrics = String::new();
        prometheus_client::encoding::text::encode(&mut metrics, &registry).unwrap();
        for counted in [
            "wasmlet_module_cache_misses_total{part=\"module\"} 1",
            "wasmlet_module_cache_hits_total{part=\"module\"} 1",
            "wasmlet_module_cache_bytes 8",
        ] {
            assert!(metrics.lines().any(|l| l == counted), "{counted} in\n{metrics}");
        }

        // A new store (an agent restart) reads the disk; a damaged file is fetched again.
        let again = ModuleStore::new(open(dir.path()), 1 << 20);
        assert_eq!(*again.get(&wanted, &source).await.unwrap(), source.0);
        assert_eq!(source.1.load(Ordering::SeqCst), 1, "from disk");
        std::fs::write(store.path(&wanted.digest), b"damaged").unwrap();
        let third = ModuleStore::new(open(dir.path()), 1 << 20);
        assert_eq!(*third.get(&wanted, &source).await.unwrap(), source.0);
        assert_eq!(source.1.load(Ordering::SeqCst), 2, "a damaged file is not used");

        third.retain(&BTreeSet::new());
        assert!(third.memory().is_empty(), "memory is released when no instance needs the module");
    }

    /// Serves its bytes after a pause, so that concurrent pulls overlap.
    struct Slow(Fixed);

    impl ModuleSource for Slow {
        fn fetch<'a>(&'a self, module: &'a ModuleRef, limit: u64) -> BoxFuture<'a, Result<Vec<u8>, PullError>> {
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                self.0.fetch(module, limit).await
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_pulls_of_one_module_fetch_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let source = Arc::new(Slow(Fixed(b"\0asm\x01\0\0\0".to_vec(), AtomicUsize::new(0))));
        let wanted = module(&source.0.0);
        let store = Arc::new(ModuleStore::new(open(dir.path()), 1 << 20));
        let pulls: Vec<_> = (0..8)
            .map(|_| {
                let (store, source, wanted) = (store.clone(), source.clone(), wanted.clone());
                tokio::spawn(async move { store.get(&wanted, source.as_ref()).await.map(|b| b.len()) })
            })
            .collect();
        for pull in pulls {
            assert_eq!(pull.await.unwrap().unwrap(), 8);
        }
        assert_eq!(source.0.1.load(Ordering::SeqCst), 1, "one fetch for eight replicas");
        assert!(store.pulling.lock().unwrap().is_empty(), "no lock is kept once the pulls are done");
        assert_eq!(std::fs::read(store.path(&wanted.digest)).unwrap(), source.0.0);
    }

    #[tokio::test]
    async fn bytes_that_do_not_match_the_digest_are_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let source = Fixed(b"\0asm\x01\0\0\0".to_vec(), AtomicUsize::new(0));
        let wanted = module(b"other bytes");
        let store = ModuleStore::new(open(dir.path()), 1 << 20);
        let error = store.get(&wanted, &source).await.unwrap_err();
        assert!(matches!(error, PullError::DigestMismatch { .. }), "{error}");
        assert!(error.to_string().contains(&wanted.digest) && error.to_string().contains("refused before compiling"), "{error}");
        assert!(!store.path(&wanted.digest).exists());
        let small = ModuleStore::new(open(dir.path()), 4);
        assert!(matches!(small.get(&module(&source.0), &source).await, Err(PullError::TooLarge { limit: 4 })));
    }
}
