//! The node's module cache on disk, held to `--module-cache-size`.
//!
//! | path under the data dir | what | kept by |
//! | --- | --- | --- |
//! | `cache/modules/<hex>.wasm` | a module's bytes | [`super::ModuleStore`] |
//! | `cache/compiled/<hex>-<engine>.cwasm` (`.sha256` beside it) | its compiled artefact for one engine | [`crate::runtime::ModuleCache`] |
//!
//! Both count together against one limit. After every write to the cache,
//! and whenever the set of pinned digests changes, entries go least recently
//! used first until the cache is within its limit. What an instance the node
//! should run needs (its digest is pinned: the supervisor says which, whenever
//! its desired instances change) is never evicted, even when that alone is
//! over the limit; the cache then stays over it, says so in the log, and
//! `wasmlet_module_cache_pinned_bytes` shows by how much. An artefact compiled
//! for another engine (an older agent's) is never needed, pinned or not.
//!
//! Nothing is evicted before the supervisor first pins: until every source of
//! instances has said what it wants (a saved assignment read back after a
//! restart, say), it is not known what is needed.
//!
//! Last uses are kept in memory, and as each entry's modification time, so
//! that the order survives a restart.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Where module bytes are kept under the agent's data dir.
pub fn modules_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cache").join("modules")
}

/// Where compiled artefacts are kept under the agent's data dir.
pub fn compiled_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cache").join("compiled")
}

/// The file name of a module's bytes.
pub fn module_file(digest: &str) -> String {
    format!("{}.wasm", hex(digest))
}

/// The file name of a module's artefact compiled by an engine of compatibility
/// hash `engine`; its checksum is the same name with `.sha256` appended.
pub fn artefact_file(digest: &str, engine: &str) -> String {
    format!("{}-{engine}.cwasm", hex(digest))
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// What of a module an entry of the cache holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    /// Its bytes.
    Module,
    /// Its artefact compiled by an engine of this compatibility hash.
    Compiled(String),
}

impl Part {
    /// The `part` label of the metrics.
    fn label(&self) -> &'static str {
        match self {
            Part::Module => "module",
            Part::Compiled(_) => "compiled",
        }
    }

    fn index(&self) -> usize {
        match self {
            Part::Module => 0,
            Part::Compiled(_) => 1,
        }
    }
}

/// One entry: a part of the module whose digest is `hex`.
type Key = (String, Part);

/// The module bytes and compiled artefacts on disk, least recently used first out.
#[derive(Debug)]
pub struct DiskCache {
    modules: PathBuf,
    compiled: PathBuf,
    /// `--module-cache-size`.
    limit: u64,
    ledger: Mutex<Ledger>,
    /// Parts served from the cache, by [`Part::index`].
    hits: [AtomicU64; 2],
    /// Parts that had to be fetched or compiled, by [`Part::index`].
    misses: [AtomicU64; 2],
    evictions: AtomicU64,
}

/// What the cache holds, and what it must keep.
#[derive(Debug, Default)]
struct Ledger {
    entries: HashMap<Key, Kept>,
    /// The sum of the entries' sizes.
    bytes: u64,
    /// Counts uses: the entry with the lowest `used` is the least recently used.
    clock: u64,
    /// The digests (hex) the node's instances need; None until the supervisor
    /// first says, and while it is None nothing is evicted.
    pinned: Option<BTreeSet<String>>,
    /// The compatibility hash of the engine this agent loads artefacts into.
    engine: Option<String>,
    /// Whether the last eviction left the cache over its limit (warned once each time).
    over: bool,
}

#[derive(Debug, Clone, Copy)]
struct Kept {
    bytes: u64,
    used: u64,
}

impl Ledger {
    /// Whether an entry must stay: an instance the node should run needs it.
    fn needed(&self, (hex, part): &Key) -> bool {
        let pinned = self.pinned.as_ref().is_none_or(|pinned| pinned.contains(hex));
        match part {
            Part::Module => pinned,
            Part::Compiled(engine) => pinned && self.engine.as_ref().is_none_or(|mine| mine == engine),
        }
    }

    fn insert(&mut self, key: Key, bytes: u64) {
        self.clock += 1;
        if let Some(old) = self.entries.insert(key, Kept { bytes, used: self.clock }) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
    }

    fn remove(&mut self, key: &Key) -> Option<Kept> {
        let kept = self.entries.remove(key)?;
        self.bytes -= kept.bytes;
        Some(kept)
    }
}

impl DiskCache {
    /// The cache under `data_dir`, holding at most `limit` bytes but for what
    /// is pinned. What is on disk is counted, last used as its modification
    /// time says; files a write left behind when the agent stopped are removed.
    pub fn open(data_dir: &Path, limit: u64) -> DiskCache {
        let cache = DiskCache {
            modules: modules_dir(data_dir),
            compiled: compiled_dir(data_dir),
            limit,
            ledger: Mutex::default(),
            hits: Default::default(),
            misses: Default::default(),
            evictions: AtomicU64::new(0),
        };
        let mut found = cache.scan();
        found.sort_by_key(|(_, _, modified)| *modified);
        let mut ledger = cache.ledger();
        for (key, bytes, _) in found {
            ledger.insert(key, bytes);
        }
        tracing::info!(
            bytes = ledger.bytes,
            entries = ledger.entries.len(),
            limit,
            "module cache opened (--module-cache-size); nothing is evicted before the node knows what its instances need"
        );
        drop(ledger);
        cache
    }

    /// Where module bytes are kept.
    pub fn modules_dir(&self) -> &Path {
        &self.modules
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every entry on disk with its size and modification time.
    fn scan(&self) -> Vec<(Key, u64, SystemTime)> {
        let mut found = Vec::new();
        for (dir, compiled) in [(&self.modules, false), (&self.compiled, true)] {
            let Ok(listing) = std::fs::read_dir(dir) else { continue };
            for file in listing.filter_map(Result::ok) {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.contains(".tmp") || (compiled && is_orphan_checksum(dir, &name)) {
                    // What a write interrupted by the agent's end left: no entry, but it takes room.
                    let _ = std::fs::remove_file(file.path());
                    continue;
                }
                let Some(key) = parse(&name, compiled) else { continue };
                let Ok(meta) = file.metadata() else { continue };
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                let bytes = self.measure(&key);
                found.push((key, bytes, modified));
            }
        }
        found
    }

    /// The files of an entry: the first one's modification time is its last use.
    fn files(&self, (hex, part): &Key) -> Vec<PathBuf> {
        match part {
            Part::Module => vec![self.modules.join(module_file(hex))],
            Part::Compiled(engine) => {
                let artefact = self.compiled.join(artefact_file(hex, engine));
                let mut checksum = artefact.clone().into_os_string();
                checksum.push(".sha256");
                vec![artefact, checksum.into()]
            }
        }
    }

    /// What the entry's files hold on disk now.
    fn measure(&self, key: &Key) -> u64 {
        self.files(key).iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum()
    }

    /// Artefacts of other engines than `engine`'s are never needed here (this
    /// agent cannot load them): pinned or not, they may be evicted.
    pub fn loads_for_engine(&self, engine: &str) {
        self.ledger().engine = Some(engine.to_string());
    }

    /// The part was served from the cache (from memory or from disk): counted,
    /// and used now.
    pub fn hit(&self, digest: &str, part: Part) {
        self.hits[part.index()].fetch_add(1, Ordering::Relaxed);
        let key = (hex(digest).to_string(), part);
        let known = {
            let mut ledger = self.ledger();
            ledger.clock += 1;
            let now = ledger.clock;
            ledger.entries.get_mut(&key).map(|kept| kept.used = now).is_some()
        };
        if known && let Some(file) = self.files(&key).first() {
            // The order of last uses survives a restart. The cache works without it.
            let _ = std::fs::File::open(file).and_then(|f| f.set_modified(SystemTime::now()));
        }
    }

    /// The part was not in the cache: it is fetched or compiled.
    pub fn miss(&self, part: &Part) {
        self.misses[part.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The part's files were written (or removed): they are measured again,
    /// used now, and entries are evicted while the cache is over its limit.
    /// Blocks on the file system.
    pub fn written(&self, digest: &str, part: Part) {
        let key = (hex(digest).to_string(), part);
        let bytes = self.measure(&key);
        let mut ledger = self.ledger();
        ledger.remove(&key);
        if bytes > 0 {
            ledger.insert(key, bytes);
        }
        self.evict(&mut ledger);
    }

    /// The digests every instance the node should run needs (running or not),
    /// whenever they change: they are never evicted; what was pinned before
    /// and is not any more may now go. Blocks on the file system.
    pub fn pin<'a>(&self, digests: impl IntoIterator<Item = &'a String>) {
        let pinned = digests.into_iter().map(|d| hex(d).to_string()).collect();
        let mut ledger = self.ledger();
        ledger.pinned = Some(pinned);
        self.evict(&mut ledger);
    }

    /// Removes the least recently used entries that are not needed until the
    /// cache is within its limit, or only needed ones are left.
    fn evict(&self, ledger: &mut Ledger) {
        if ledger.pinned.is_none() {
            return;
        }
        while ledger.bytes > self.limit {
            let victim = ledger.entries.iter().filter(|(key, _)| !ledger.needed(key)).min_by_key(|(_, kept)| kept.used);
            let Some(key) = victim.map(|(key, _)| key.clone()) else { break };
            for file in self.files(&key) {
                match std::fs::remove_file(&file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(file = %file.display(), error = %e, "cannot evict from the module cache; the file stays, uncounted");
                    }
                    _ => {}
                }
            }
            let bytes = ledger.remove(&key).map_or(0, |kept| kept.bytes);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(digest = %format!("sha256:{}", key.0), part = key.1.label(), bytes, "evicted from the module cache, least recently used");
        }
        let over = ledger.bytes > self.limit;
        if over && !ledger.over {
            tracing::warn!(
                bytes = ledger.bytes,
                limit = self.limit,
                "the module cache is over --module-cache-size: what is left is needed by the node's instances, and is kept"
            );
        }
        ledger.over = over;
    }

    /// Hits, misses, evictions and sizes, as metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let hits: Family<Vec<(&'static str, String)>, Counter> = Family::default();
        let misses: Family<Vec<(&'static str, String)>, Counter> = Family::default();
        for part in [Part::Module, Part::Compiled(String::new())] {
            let labels = vec![("part", part.label().to_string())];
            hits.get_or_create(&labels).inc_by(self.hits[part.index()].load(Ordering::Relaxed));
            misses.get_or_create(&labels).inc_by(self.misses[part.index()].load(Ordering::Relaxed));
        }
        let evictions: Counter = Counter::default();
        evictions.inc_by(self.evictions.load(Ordering::Relaxed));
        let (bytes, pinned_bytes) = {
            let ledger = self.ledger();
            let pinned = ledger.entries.iter().filter(|(key, _)| ledger.pinned.is_some() && ledger.needed(key)).map(|(_, k)| k.bytes);
            (ledger.bytes, pinned.sum::<u64>())
        };
        let gauge = |value: u64| {
            let gauge: Gauge = Gauge::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            gauge
        };
        registry.register("wasmlet_module_cache_hits", "Module bytes and compiled modules served from the module cache", hits);
        registry.register(
            "wasmlet_module_cache_misses",
            "Module bytes fetched and modules compiled because the module cache had none",
            misses,
        );
        registry.register("wasmlet_module_cache_evictions", "Entries evicted from the module cache, least recently used first", evictions);
        registry.register(
            "wasmlet_module_cache_bytes",
            "What the module cache holds on disk (module bytes and compiled modules)",
            gauge(bytes),
        );
        registry.register("wasmlet_module_cache_limit_bytes", "The module cache's limit (--module-cache-size)", gauge(self.limit));
        registry.register(
            "wasmlet_module_cache_pinned_bytes",
            "What the module cache holds for the node's instances, which is never evicted (over the limit, the cache stays over it)",
            gauge(pinned_bytes),
        );
    }
}

/// The entry a file of the cache is, if it is one.
fn parse(name: &str, compiled: bool) -> Option<Key> {
    let is_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !compiled {
        let hex = name.strip_suffix(".wasm")?;
        return is_hex(hex, 64).then(|| (hex.to_string(), Part::Module));
    }
    let (hex, engine) = name.strip_suffix(".cwasm")?.split_once('-')?;
    (is_hex(hex, 64) && !engine.is_empty()).then(|| (hex.to_string(), Part::Compiled(engine.to_string())))
}

/// A checksum whose artefact is gone (the agent stopped between the two removals).
fn is_orphan_checksum(dir: &Path, name: &str) -> bool {
    name.strip_suffix(".sha256").is_some_and(|artefact| !dir.join(artefact).exists())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ENGINE: &str = "0123456789abcdef";

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    /// Writes `bytes` bytes as a part of module `n`, as the store or the compiler would, and says so.
    fn write(cache: &DiskCache, n: u8, part: Part, bytes: usize) {
        put(cache, n, &part, bytes);
        cache.written(&digest(n), part);
    }

    /// Writes the files of a part without telling the cache (as a previous agent did).
    fn put(cache: &DiskCache, n: u8, part: &Part, bytes: usize) {
        let key = (hex(&digest(n)).to_string(), part.clone());
        let files = cache.files(&key);
        std::fs::create_dir_all(files[0].parent().unwrap()).unwrap();
        std::fs::write(&files[0], vec![0u8; bytes]).unwrap();
        if let Some(checksum) = files.get(1) {
            std::fs::write(checksum, hex(&digest(n))).unwrap();
        }
    }

    fn on_disk(cache: &DiskCache, n: u8, part: &Part) -> bool {
        cache.files(&(hex(&digest(n)).to_string(), part.clone()))[0].exists()
    }

    fn compiled() -> Part {
        Part::Compiled(ENGINE.to_string())
    }

    fn metrics(cache: &DiskCache) -> String {
        let mut registry = Registry::default();
        cache.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn the_least_recently_used_go_first_module_bytes_and_artefacts_together() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 3000);
        cache.loads_for_engine(ENGINE);
        cache.pin(&[]);
        write(&cache, 1, Part::Module, 1000);
        write(&cache, 2, Part::Module, 1000);
        write(&cache, 3, compiled(), 936); // and a 64-byte checksum: 1000 in all
        cache.hit(&digest(1), Part::Module);
        assert!([1, 2].iter().all(|&n| on_disk(&cache, n, &Part::Module)) && on_disk(&cache, 3, &compiled()), "within the limit");

        // Over the limit: 2 is the least recently used (1 was used since).
        write(&cache, 4, compiled(), 436);
        assert!(!on_disk(&cache, 2, &Part::Module));
        assert!(on_disk(&cache, 1, &Part::Module) && on_disk(&cache, 3, &compiled()) && on_disk(&cache, 4, &compiled()));
        // Then 3 (its checksum with it), then 1.
        write(&cache, 5, Part::Module, 1600);
        assert!(!on_disk(&cache, 3, &compiled()) && !on_disk(&cache, 1, &Part::Module));
        assert!(!dir.path().join("cache/compiled").join(format!("{}.sha256", artefact_file(&digest(3), ENGINE))).exists());
        assert!(on_disk(&cache, 4, &compiled()) && on_disk(&cache, 5, &Part::Module));
        assert_eq!(cache.ledger().bytes, 2100);

        let text = metrics(&cache);
        for line in [
            "wasmlet_module_cache_evictions_total 3",
            "wasmlet_module_cache_bytes 2100",
            "wasmlet_module_cache_limit_bytes 3000",
            "wasmlet_module_cache_hits_total{part=\"module\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        cache.miss(&compiled());
        assert!(metrics(&cache).contains("wasmlet_module_cache_misses_total{part=\"compiled\"} 1"));
    }

    #[test]
    fn what_is_pinned_stays_even_over_the_limit_and_goes_once_unpinned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 0);
        cache.loads_for_engine(ENGINE);
        let (one, two) = (digest(1), digest(2));
        cache.pin([&one, &two]);
        write(&cache, 1, Part::Module, 1000);
        write(&cache, 1, compiled(), 1000);
        write(&cache, 2, Part::Module, 1000);
        // An older engine's artefact of a pinned module is not needed: it goes.
        write(&cache, 2, Part::Compiled("fedcba9876543210".into()), 1000);
        assert!(!on_disk(&cache, 2, &Part::Compiled("fedcba9876543210".into())));
        assert!(on_disk(&cache, 1, &Part::Module) && on_disk(&cache, 1, &compiled()) && on_disk(&cache, 2, &Part::Module));
        let text = metrics(&cache);
        assert!(text.contains("wasmlet_module_cache_pinned_bytes 3064") && text.contains("wasmlet_module_cache_bytes 3064"), "{text}");

        cache.pin([&two]);
        assert!(!on_disk(&cache, 1, &Part::Module) && !on_disk(&cache, 1, &compiled()), "unpinned: evicted at once");
        assert!(on_disk(&cache, 2, &Part::Module));
        cache.pin(&[]);
        assert!(!on_disk(&cache, 2, &Part::Module));
        assert_eq!(cache.ledger().bytes, 0);
        assert_eq!(cache.evictions.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn nothing_is_evicted_before_the_first_pins() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 0);
        write(&cache, 1, Part::Module, 1000);
        assert!(on_disk(&cache, 1, &Part::Module), "not known yet whether an instance needs it");
        cache.pin(&[]);
        assert!(!on_disk(&cache, 1, &Part::Module));
    }

    #[test]
    fn a_restart_finds_the_order_of_last_uses_in_modification_times() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20);
        for n in 1..=3 {
            put(&cache, n, &Part::Module, 1000);
        }
        put(&cache, 4, &compiled(), 936);
        let age = |n: u8, part: &Part, secs: u64| {
            let file = std::fs::File::options().write(true).open(&cache.files(&(hex(&digest(n)).to_string(), part.clone()))[0]).unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(secs)).unwrap();
        };
        age(1, &Part::Module, 300);
        age(2, &Part::Module, 100);
        age(3, &Part::Module, 200);
        age(4, &compiled(), 400);
        // Left by a write the agent's end interrupted, and a checksum without its artefact.
        std::fs::write(dir.path().join("cache/modules/x.wasm.tmp.77"), [0u8; 500]).unwrap();
        std::fs::write(dir.path().join("cache/compiled").join(format!("{}.sha256", artefact_file(&digest(9), ENGINE))), "x").unwrap();

        // A restart with a smaller limit. A use before the first pins counts.
        let restarted = DiskCache::open(dir.path(), 2000);
        assert_eq!(restarted.ledger().bytes, 4000, "the files of the earlier run are counted");
        assert_eq!(std::fs::read_dir(dir.path().join("cache/modules")).unwrap().count(), 3, "the leftover is removed");
        assert_eq!(std::fs::read_dir(dir.path().join("cache/compiled")).unwrap().count(), 2, "the orphan checksum is removed");
        restarted.hit(&digest(1), Part::Module);
        restarted.pin(&[]);
        assert!(!on_disk(&restarted, 4, &compiled()) && !on_disk(&restarted, 3, &Part::Module), "the oldest two went");
        assert!(on_disk(&restarted, 1, &Part::Module) && on_disk(&restarted, 2, &Part::Module));

        // The use was written to disk too: after another restart, 2 is older than 1.
        let again = DiskCache::open(dir.path(), 1000);
        again.pin(&[]);
        assert!(on_disk(&again, 1, &Part::Module) && !on_disk(&again, 2, &Part::Module));
    }

    #[test]
    fn files_are_named_as_the_store_and_the_compiler_name_them() {
        assert_eq!(parse(&module_file(&digest(1)), false), Some((hex(&digest(1)).to_string(), Part::Module)));
        assert_eq!(parse(&artefact_file(&digest(1), ENGINE), true), Some((hex(&digest(1)).to_string(), compiled())));
        assert_eq!(parse("notes.txt", false), None);
        assert_eq!(parse(&format!("{}.cwasm.sha256", artefact_file(&digest(1), ENGINE)), true), None);
        assert_eq!(parse("abc.wasm", false), None);
    }
}
