//! The embedded default store: one redb file in the data dir, a table per
//! [`Kind`] and a `meta` table for the counters. Every commit is durable
//! (fsync) before it returns, so an acknowledged write survives `kill -9`.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, Kind, Op, Snapshot, Store, StoreError};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
const EPOCH: &str = "epoch";

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.table())
}

fn err(context: &str) -> impl Fn(String) -> StoreError + '_ {
    move |e| StoreError(format!("{context}: {e}"))
}

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) `<dir>/store.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("store.redb");
        let db = Database::create(&path).map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(|e| err("begin")(e.to_string()))?;
        {
            txn.open_table(META).map_err(|e| err("meta table")(e.to_string()))?;
            for kind in Kind::ALL {
                txn.open_table(table(kind)).map_err(|e| err(kind.table())(e.to_string()))?;
            }
        }
        txn.commit().map_err(|e| err("commit")(e.to_string()))?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db.begin_read().map_err(|e| err("begin read")(e.to_string()))?;
        let meta = txn.open_table(META).map_err(|e| err("meta table")(e.to_string()))?;
        let counter = |key: &str| -> Result<u64, StoreError> {
            Ok(meta.get(key).map_err(|e| err("meta")(e.to_string()))?.map(|v| v.value()).unwrap_or(0))
        };
        let mut snapshot = Snapshot { revision: counter(REVISION)?, epoch: counter(EPOCH)?, objects: Vec::new() };
        for kind in Kind::ALL {
            let t = txn.open_table(table(kind)).map_err(|e| err(kind.table())(e.to_string()))?;
            for item in t.iter().map_err(|e| err(kind.table())(e.to_string()))? {
                let (name, value) = item.map_err(|e| err(kind.table())(e.to_string()))?;
                snapshot.objects.push((kind, name.value().to_string(), value.value().to_vec()));
            }
        }
        Ok(snapshot)
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
}
