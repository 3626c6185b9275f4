//! The embedded default store: one redb file in the data dir, a table per
//! [`Kind`], a `revisions` table with the revision of each object's last
//! write, and a `meta` table for the counters and the store's format. Every
//! commit is durable (fsync) before it returns, so an acknowledged write
//! survives `kill -9`. The file is locked: one master per store, which always
//! leads; its watchers are handed each batch as it commits.
//!
//! A missing file is a new cluster. A file that exists but cannot be read as a
//! wasmlet store (empty, truncated, garbage, another program's redb file, a
//! newer format) is an error naming the file and what to do, and the file is
//! left as it is: a master never starts an empty cluster over a store it
//! could not read.

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use redb::{Database, DatabaseError, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::{Batch, Change, Expect, Fence, Kind, Limits, Op, Renewal, Snapshot, Store, StoreError, Stored, Watch, Write};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Per `(table, name)`: the revision of the object's last write (since format 2).
const REVISIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("revisions");
const REVISION: &str = "revision";
const EPOCH: &str = "epoch";
/// The layout of the tables; a store of a later format is refused, not misread.
/// Format 2 added `revisions`; a format-1 store is read (an object's revision
/// is then its `resourceVersion`) and becomes format 2 at its first write.
const FORMAT: &str = "format";
const CURRENT_FORMAT: u64 = 2;
/// The store's file in the data dir.
pub const STORE_FILE: &str = "store.redb";

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.table())
}

fn err<E: std::fmt::Display>(context: &str) -> impl Fn(E) -> StoreError + '_ {
    move |e| StoreError::Other(format!("{context}: {e}"))
}

/// A redb store; clones share the database.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    watchers: Arc<Mutex<Vec<Watcher>>>,
}

/// Where a watch of this store is handed its batches.
type Watcher = UnboundedSender<Result<Batch, StoreError>>;

impl RedbStore {
    /// Opens `<dir>/store.redb`, or creates it when there is none.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(STORE_FILE);
        match std::fs::metadata(&path) {
            Ok(_) => Self::open_existing(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(&path),
            Err(e) => Err(StoreError::Other(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Creates a new, empty store at `path` (which must not exist).
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Other(format!("cannot create {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(err("begin"))?;
        {
            let mut meta = txn.open_table(META).map_err(err("meta table"))?;
            meta.insert(FORMAT, CURRENT_FORMAT).map_err(err("meta"))?;
            txn.open_table(REVISIONS).map_err(err("revisions"))?;
            for kind in Kind::ALL {
                txn.open_table(table(kind)).map_err(err(kind.table()))?;
            }
        }
        txn.commit().map_err(err("commit"))?;
        Ok(RedbStore::new(db, path))
    }

    /// Opens a store that exists; anything but a readable wasmlet store is [`unreadable`].
    fn open_existing(path: &Path) -> Result<Self, StoreError> {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            return Err(unreadable(path, "the file is empty (0 bytes)"));
        }
        let in_use =
            || StoreError::Other(format!("{} is in use by another process: is a master already running on this data dir?", path.display()));
        // First read-only, which never writes: a damaged file is refused untouched.
        // redb answers most damage with an error; a panic deep in it must not
        // take the master down with a backtrace instead of this message.
        let checked = match guarded(|| ReadOnlyDatabase::open(path)) {
            Ok(Ok(db)) => Some(check_layout(&db, path)?),
            // Not shut down cleanly (a crash): opening it for writing repairs it, as after every `kill -9`.
            Ok(Err(DatabaseError::RepairAborted)) => None,
            Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => return Err(in_use()),
            Ok(Err(e)) => return Err(unreadable(path, &e.to_string())),
            Err(panic) => return Err(unreadable(path, &panic)),
        };
        let db = match guarded(|| Database::open(path)) {
            Ok(Ok(db)) => db,
            Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => return Err(in_use()),
            Ok(Err(e)) => return Err(unreadable(path, &e.to_string())),
            Err(panic) => return Err(unreadable(path, &panic)),
        };
        let missing = match checked {
            Some(missing) => missing,
            None => check_layout(&db, path)?,
        };
        if !missing.is_empty() {
            let txn = db.begin_write().map_err(err("begin"))?;
            for kind in missing {
                txn.open_table(table(kind)).map_err(err(kind.table()))?;
            }
            txn.commit().map_err(err("commit"))?;
        }
        Ok(RedbStore::new(db, path))
    }

    fn new(db: Database, path: &Path) -> Self {
        RedbStore { db: Arc::new(db), path: path.to_path_buf(), watchers: Arc::default() }
    }

    fn current(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(err("begin read"))?;
        let meta = txn.open_table(META).map_err(err("meta table"))?;
        Ok(meta.get(REVISION).map_err(err("meta"))?.map(|v| v.value()).unwrap_or(0))
    }
}

/// Checks that `db` holds wasmlet's tables in a format this master knows;
/// returns the kinds newer than the store, whose tables are still to be made.
fn check_layout(db: &impl ReadableDatabase, path: &Path) -> Result<Vec<Kind>, StoreError> {
    let bad = |why: String| unreadable(path, &why);
    let txn = db.begin_read().map_err(|e| bad(e.to_string()))?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(bad("it is a redb database but not a wasmlet store (it has no `meta` table)".into()));
        }
        Err(e) => return Err(bad(format!("the `meta` table: {e}"))),
    };
    let format = meta.get(FORMAT).map_err(|e| bad(format!("the `meta` table: {e}")))?.map(|v| v.value());
    if let Some(format) = format
        && format > CURRENT_FORMAT
    {
        return Err(bad(format!(
            "it was written by a newer wasmlet-master (store format {format}; this one reads up to {CURRENT_FORMAT}): run that version"
        )));
    }
    let mut missing = Vec::new();
    for kind in Kind::ALL {
        match txn.open_table(table(kind)) {
            Ok(_) => {}
            Err(TableError::TableDoesNotExist(_)) => missing.push(kind),
            Err(e) => return Err(bad(format!("the `{}` table: {e}", kind.table()))),
        }
    }
    Ok(missing)
}

/// The error of a store file that exists but cannot be read: it names the file,
/// says it was left alone, and what to do.
fn unreadable(path: &Path, why: &str) -> StoreError {
    StoreError::Other(format!(
        "the store {} cannot be read: {why}. The master did not start and left the file as it is. \
         Restore a backup into the data dir (`wasmlet-master restore --force BACKUP`, with the master stopped), \
         or move the file away to start an empty cluster",
        path.display()
    ))
}

/// The name of the threads [`guarded`] reads on.
const READER: &str = "store-read";

/// Runs `read` on a thread of its own, turning a panic into its message (the
/// error names the file and what to do; a backtrace would not).
fn guarded<T: Send>(read: impl FnOnce() -> T + Send) -> Result<T, String> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some(READER) {
                previous(info);
            }
        }));
    });
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new().name(READER.into()).spawn_scoped(scope, read);
        match reader {
            Ok(handle) => handle.join().map_err(|panic| {
                let text = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
                format!("reading it failed: {}", text.unwrap_or_else(|| "the reader stopped".into()))
            }),
            Err(e) => Err(format!("cannot start a thread to read it: {e}")),
        }
    })
}

impl RedbStore {
    /// The revision of the stored object `name` of `kind`, if there is one:
    /// from the `revisions` table, or for a record written before it
    /// existed (store format 1), its own `metadata.resourceVersion`.
    fn revision_of(
        records: &impl ReadableTable<&'static str, &'static [u8]>,
        revisions: &impl ReadableTable<(&'static str, &'static str), u64>,
        kind: Kind,
        name: &str,
    ) -> Result<Option<u64>, StoreError> {
        let Some(value) = records.get(name).map_err(err(kind.table()))? else { return Ok(None) };
        if let Some(revision) = revisions.get((kind.table(), name)).map_err(err("revisions"))? {
            return Ok(Some(revision.value()));
        }
        Ok(Some(legacy_revision(value.value())))
    }

    fn commit_now(&self, write: &Write) -> Result<Batch, StoreError> {
        let txn = self.db.begin_write().map_err(err("begin write"))?;
        let mut batch = Batch::default();
        {
            let mut meta = txn.open_table(META).map_err(err("meta table"))?;
            let counter = |meta: &redb::Table<&str, u64>, key: &str| -> Result<u64, StoreError> {
                Ok(meta.get(key).map_err(err("meta"))?.map(|v| v.value()).unwrap_or(0))
            };
            let revision = counter(&meta, REVISION)? + 1;
            batch.revision = revision;
            if let Some((from, to)) = write.epoch {
                if counter(&meta, EPOCH)? != from {
                    return Err(StoreError::Other(format!("the epoch is no longer {from}")));
                }
                meta.insert(EPOCH, to).map_err(err("meta"))?;
                batch.epoch = Some(to);
            }
            meta.insert(REVISION, revision).map_err(err("meta"))?;
            meta.insert(FORMAT, CURRENT_FORMAT).map_err(err("meta"))?;
            let mut revisions = txn.open_table(REVISIONS).map_err(err("revisions"))?;
            for op in &write.ops {
                let (kind, name) = op.key();
                let mut records = txn.open_table(table(kind)).map_err(err(kind.table()))?;
                let expected = match op.expect() {
                    Expect::Any => true,
                    Expect::Absent => records.get(name).map_err(err(kind.table()))?.is_none(),
                    Expect::Revision(r) => Self::revision_of(&records, &revisions, kind, name)? == Some(r),
                };
                if !expected {
                    return Err(StoreError::Conflict { kind, name: name.to_string() });
                }
                match op {
                    Op::Put { value, .. } => {
                        records.insert(name, value.as_slice()).map_err(err(kind.table()))?;
                        revisions.insert((kind.table(), name), revision).map_err(err("revisions"))?;
                        batch.changes.push(Change { kind, name: name.to_string(), value: Some(value.clone()) });
                    }
                    Op::Delete { .. } => {
                        records.remove(name).map_err(err(kind.table()))?;
                        revisions.remove((kind.table(), name)).map_err(err("revisions"))?;
                        batch.changes.push(Change { kind, name: name.to_string(), value: None });
                    }
                }
            }
        }
        txn.commit().map_err(err("commit"))?;
        Ok(batch)
    }

    /// Writes `objects` into a new store (a restore) at `revision` and `epoch`.
    pub fn import(&self, revision: u64, epoch: u64, objects: Vec<(Kind, String, Vec<u8>)>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err("begin write"))?;
        {
            let mut meta = txn.open_table(META).map_err(err("meta table"))?;
            meta.insert(REVISION, revision).map_err(err("meta"))?;
            meta.insert(EPOCH, epoch).map_err(err("meta"))?;
            meta.insert(FORMAT, CURRENT_FORMAT).map_err(err("meta"))?;
            let mut revisions = txn.open_table(REVISIONS).map_err(err("revisions"))?;
            for (kind, name, value) in objects {
                let mut records = txn.open_table(table(kind)).map_err(err(kind.table()))?;
                records.insert(name.as_str(), value.as_slice()).map_err(err(kind.table()))?;
                revisions.insert((kind.table(), name.as_str()), revision).map_err(err("revisions"))?;
            }
        }
        txn.commit().map_err(err("commit"))
    }

    fn read_all(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(err("begin read"))?;
        let meta = txn.open_table(META).map_err(err("meta table"))?;
        let counter = |key: &str| -> Result<u64, StoreError> { Ok(meta.get(key).map_err(err("meta"))?.map(|v| v.value()).unwrap_or(0)) };
        let mut snapshot = Snapshot { revision: counter(REVISION)?, epoch: counter(EPOCH)?, objects: Vec::new() };
        let revisions = match txn.open_table(REVISIONS) {
            Ok(t) => Some(t),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(err("revisions")(e)),
        };
        for kind in Kind::ALL {
            let t = txn.open_table(table(kind)).map_err(err(kind.table()))?;
            for item in t.iter().map_err(err(kind.table()))? {
                let (name, value) = item.map_err(err(kind.table()))?;
                let stored = match &revisions {
                    Some(revisions) => revisions.get((kind.table(), name.value())).map_err(err("revisions"))?.map(|r| r.value()),
                    None => None,
                };
                let revision = stored.unwrap_or_else(|| legacy_revision(value.value()));
                snapshot.objects.push(Stored { kind, name: name.value().to_string(), revision, value: value.value().to_vec() });
            }
        }
        Ok(snapshot)
    }
}

/// The revision of a record of store format 1: its `metadata.resourceVersion`
/// (the master stamped it with the commit's revision), or 0.
fn legacy_revision(value: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Record {
        metadata: Meta,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        resource_version: Option<u64>,
    }
    serde_json::from_slice::<Record>(value).ok().and_then(|r| r.metadata.resource_version).unwrap_or(0)
}

#[async_trait::async_trait]
impl Store for RedbStore {
    fn describe(&self) -> String {
        format!("redb {}", self.path.display())
    }

    fn limits(&self) -> Limits {
        Limits::NONE
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let this = self.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || guarded(|| this.read_all()).map_err(|panic| unreadable(&path, &panic))?)
            .await
            .map_err(StoreError::other)?
            .map_err(|e| match e {
                StoreError::Other(why) => unreadable(&self.path, &why),
                e => e,
            })
    }

    async fn commit(&self, write: Write) -> Result<u64, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // Held from the commit to the hand-over: watchers get the batches in revision order.
            let mut watchers = this.watchers.lock().unwrap_or_else(|e| e.into_inner());
            let batch = this.commit_now(&write)?;
            let revision = batch.revision;
            watchers.retain(|w| w.send(Ok(batch.clone())).is_ok());
            Ok(revision)
        })
        .await
        .map_err(StoreError::other)?
    }

    async fn watch(&self, revision: u64) -> Result<Watch, StoreError> {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        // Commits are handed over under this lock: none is missed or doubled from here.
        let current = self.current()?;
        if revision != current {
            return Err(StoreError::Compacted(revision));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        watchers.push(tx);
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|batch| (batch, rx)) })))
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        self.current()
    }

    async fn campaign(&self, _name: &str, _lost: CancellationToken) -> Result<Fence, StoreError> {
        // One master per redb file (the file is locked): it always leads.
        Ok(Fence(0))
    }

    async fn resign(&self, _fence: Fence) {}

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    async fn announce(&self, _name: &str, _stop: CancellationToken) -> Result<(), StoreError> {
        Ok(())
    }

    async fn masters(&self) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn share(&self, _name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        Ok(value)
    }

    async fn publish_renewals(&self, _master: &str, _renewals: Vec<Renewal>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn renewals(&self) -> Result<futures::stream::BoxStream<'static, Vec<Renewal>>, StoreError> {
        Ok(Box::pin(futures::stream::pending()))
    }

    async fn compact(&self, _revision: u64) -> Result<(), StoreError> {
        // redb keeps no history.
        Ok(())
    }

    async fn put_module(&self, _digest: &str, _bytes: Vec<u8>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn get_module(&self, _digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(kind: Kind, name: &str, value: &[u8]) -> Op {
        Op::Put { kind, name: name.into(), value: value.to_vec(), expect: Expect::Any }
    }

    #[tokio::test]
    async fn keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::conformance::check(&RedbStore::open(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn batches_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            store
                .commit(Write { ops: vec![put(Kind::Node, "a", b"{}"), put(Kind::Node, "b", b"{}")], ..Default::default() })
                .await
                .unwrap();
            let delete = Op::Delete { kind: Kind::Node, name: "a".into(), expect: Expect::Revision(1) };
            store.commit(Write { ops: vec![delete], epoch: Some((0, 7)), fence: None }).await.unwrap();
        }
        let snapshot = RedbStore::open(dir.path()).unwrap().load().await.unwrap();
        assert_eq!((snapshot.revision, snapshot.epoch), (2, 7));
        let names: Vec<_> = snapshot.objects.iter().map(|o| (o.name.as_str(), o.revision)).collect();
        assert_eq!(names, [("b", 1)]);
    }

    /// A store written by a master before object revisions had their table:
    /// each object's revision is its `resourceVersion`, and a write makes it format 2.
    #[tokio::test]
    async fn reads_a_store_of_format_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(FORMAT, 1).unwrap();
                meta.insert(REVISION, 9).unwrap();
                let mut workloads = txn.open_table(table(Kind::Workload)).unwrap();
                workloads.insert("w", br#"{"metadata":{"name":"w","resourceVersion":7}}"#.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = RedbStore::open(dir.path()).unwrap();
        let snapshot = store.load().await.unwrap();
        assert_eq!((snapshot.revision, snapshot.objects[0].revision), (9, 7));
        let stale = Op::Put { kind: Kind::Workload, name: "w".into(), value: b"{}".to_vec(), expect: Expect::Revision(6) };
        assert!(matches!(store.commit(Write { ops: vec![stale], ..Default::default() }).await, Err(StoreError::Conflict { .. })));
        let fresh = Op::Put { kind: Kind::Workload, name: "w".into(), value: b"{}".to_vec(), expect: Expect::Revision(7) };
        assert_eq!(store.commit(Write { ops: vec![fresh], ..Default::default() }).await.unwrap(), 10);
        drop(store);
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.load().await.unwrap().objects[0].revision, 10);
        let txn = store.db.begin_read().unwrap();
        assert_eq!(txn.open_table(META).unwrap().get(FORMAT).unwrap().unwrap().value(), CURRENT_FORMAT);
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_read_is_an_error_and_is_left_as_it_is() {
        let good = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(good.path()).unwrap();
            let ops = (0..50).map(|i| put(Kind::Workload, &format!("w{i}"), &[b'x'; 5000])).collect();
            store.commit(Write { ops, ..Default::default() }).await.unwrap();
        }
        let bytes = std::fs::read(good.path().join(STORE_FILE)).unwrap();
        let foreign = tempfile::tempdir().unwrap();
        {
            let db = Database::create(foreign.path().join(STORE_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TableDefinition::<u64, u64>::new("other")).unwrap().insert(1, 2).unwrap();
            txn.commit().unwrap();
        }
        let foreign = std::fs::read(foreign.path().join(STORE_FILE)).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "empty (0 bytes)"),
            ("truncated", bytes[..bytes.len() / 3].to_vec(), "cannot be read"),
            ("header only", bytes[..4096.min(bytes.len())].to_vec(), "cannot be read"),
            ("garbage", b"this is not a database\n".repeat(500), "cannot be read"),
            ("another program's redb", foreign, "not a wasmlet store"),
        ];
        for (what, content, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(STORE_FILE);
            std::fs::write(&path, &content).unwrap();
            let result = match RedbStore::open(dir.path()) {
                Ok(store) => store.load().await.map(drop),
                Err(e) => Err(e),
            };
            let err = result.err().unwrap_or_else(|| panic!("{what}: opened")).to_string();
            assert!(err.contains(expected) && err.contains(&path.display().to_string()) && err.contains("restore"), "{what}: {err}");
            assert_eq!(std::fs::read(&path).unwrap(), content, "{what}: the file is left as it is");
        }
    }
}
