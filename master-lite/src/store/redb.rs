//! The embedded default store: one redb file in the data dir, a table per
//! [`Kind`] and a `meta` table for the counters and the store's format. Every
//! commit is durable (fsync) before it returns, so an acknowledged write
//! survives `kill -9`.
//!
//! A missing file is a new cluster. A file that exists but cannot be read as a
//! wasmlet store (empty, truncated, garbage, another program's redb file, a
//! newer format) is an error naming the file and what to do, and the file is
//! left as it is: a master never starts an empty cluster over a store it
//! could not read.

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Batch, Kind, Op, Snapshot, Store, StoreError, Visit};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
const EPOCH: &str = "epoch";
/// The layout of the tables; a store of a later format is refused, not misread.
const FORMAT: &str = "format";
const CURRENT_FORMAT: u64 = 1;
/// The store's file in the data dir.
pub const STORE_FILE: &str = "store.redb";

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.table())
}

fn err(context: &str) -> impl Fn(String) -> StoreError + '_ {
    move |e| StoreError(format!("{context}: {e}"))
}

pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

impl RedbStore {
    /// Opens `<dir>/store.redb`, or creates it when there is none.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(STORE_FILE);
        match std::fs::metadata(&path) {
            Ok(_) => Self::open_existing(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(&path),
            Err(e) => Err(StoreError(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Creates a new, empty store at `path` (which must not exist).
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError(format!("cannot create {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err("meta table")(e.to_string()))?;
            meta.insert(FORMAT, CURRENT_FORMAT).map_err(|e| err("meta")(e.to_string()))?;
            for kind in Kind::ALL {
                txn.open_table(table(kind)).map_err(|e| err(kind.table())(e.to_string()))?;
            }
        }
        txn.commit().map_err(|e| err("commit")(e.to_string()))?;
        Ok(RedbStore { db, path: path.to_path_buf() })
    }

    /// Opens a store that exists; anything but a readable wasmlet store is [`unreadable`].
    fn open_existing(path: &Path) -> Result<Self, StoreError> {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            return Err(unreadable(path, "the file is empty (0 bytes)"));
        }
        let in_use =
            || StoreError(format!("{} is in use by another process: is a master already running on this data dir?", path.display()));
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
            let txn = db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
            for kind in missing {
                txn.open_table(table(kind)).map_err(|e| err(kind.table())(e.to_string()))?;
            }
            txn.commit().map_err(|e| err("commit")(e.to_string()))?;
        }
        Ok(RedbStore { db, path: path.to_path_buf() })
    }

    fn load_all(&self) -> Result<Snapshot, StoreError> {
        let bad = |why: String| unreadable(&self.path, &why);
        let mut snapshot = Snapshot::default();
        let (revision, epoch) = self
            .export(&mut |kind, name, value| {
                snapshot.objects.push((kind, name.to_string(), value.to_vec()));
                Ok(())
            })
            .map_err(|e| bad(e.0))?;
        (snapshot.revision, snapshot.epoch) = (revision, epoch);
        Ok(snapshot)
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
    StoreError(format!(
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

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        guarded(|| self.load_all()).map_err(|panic| unreadable(&self.path, &panic))?
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| err("begin write")(e.to_string()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err("meta table")(e.to_string()))?;
            meta.insert(REVISION, batch.revision).map_err(|e| err("meta")(e.to_string()))?;
            meta.insert(EPOCH, batch.epoch).map_err(|e| err("meta")(e.to_string()))?;
            for op in &batch.ops {
                match op {
                    Op::Put { kind, name, value } => {
                        let mut t = txn.open_table(table(*kind)).map_err(|e| err(kind.table())(e.to_string()))?;
                        t.insert(name.as_str(), value.as_slice()).map_err(|e| err(kind.table())(e.to_string()))?;
                    }
                    Op::Delete { kind, name } => {
                        let mut t = txn.open_table(table(*kind)).map_err(|e| err(kind.table())(e.to_string()))?;
                        t.remove(name.as_str()).map_err(|e| err(kind.table())(e.to_string()))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| err("commit")(e.to_string()))
    }

    fn export(&self, visit: &mut Visit<'_>) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read().map_err(|e| err("begin read")(e.to_string()))?;
        let meta = txn.open_table(META).map_err(|e| err("meta table")(e.to_string()))?;
        let counter = |key: &str| -> Result<u64, StoreError> {
            Ok(meta.get(key).map_err(|e| err("meta")(e.to_string()))?.map(|v| v.value()).unwrap_or(0))
        };
        let counters = (counter(REVISION)?, counter(EPOCH)?);
        for kind in Kind::ALL {
            let t = txn.open_table(table(kind)).map_err(|e| err(kind.table())(e.to_string()))?;
            for item in t.iter().map_err(|e| err(kind.table())(e.to_string()))? {
                let (name, value) = item.map_err(|e| err(kind.table())(e.to_string()))?;
                visit(kind, name.value(), value.value()).map_err(|e| StoreError(format!("writing the backup: {e}")))?;
            }
        }
        Ok(counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            let put = |name: &str| Op::Put { kind: Kind::Node, name: name.into(), value: b"{}".to_vec() };
            store.commit(&Batch { revision: 1, epoch: 0, ops: vec![put("a"), put("b")] }).unwrap();
            store.commit(&Batch { revision: 2, epoch: 7, ops: vec![Op::Delete { kind: Kind::Node, name: "a".into() }] }).unwrap();
        }
        let snapshot = RedbStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!((snapshot.revision, snapshot.epoch), (2, 7));
        let names: Vec<_> = snapshot.objects.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn a_store_that_cannot_be_read_is_an_error_and_is_left_as_it_is() {
        let good = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(good.path()).unwrap();
            let put = |name: &str| Op::Put { kind: Kind::Workload, name: name.into(), value: vec![b'x'; 5000] };
            store.commit(&Batch { revision: 1, epoch: 0, ops: (0..50).map(|i| put(&format!("w{i}"))).collect() }).unwrap();
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
            let result = RedbStore::open(dir.path()).and_then(|s| s.load().map(drop));
            let err = result.err().unwrap_or_else(|| panic!("{what}: opened")).to_string();
            assert!(err.contains(expected) && err.contains(&path.display().to_string()) && err.contains("restore"), "{what}: {err}");
            assert_eq!(std::fs::read(&path).unwrap(), content, "{what}: the file is left as it is");
        }
    }
}
