//! Durable storage of the cluster's objects.
//!
//! The master keeps every object in memory ([`crate::cluster`]) and writes
//! through a [`Store`]: a write is answered only after the store committed it
//! durably. The store sees objects as JSON bytes under a [`Kind`] and a name,
//! written in [`Batch`]es that commit all or nothing, plus two counters (the
//! global revision and the epoch). [`RedbStore`] is the embedded default; a
//! distributed backend is a second implementation of the trait.
//!
//! `modules` keeps the content-addressed module files beside the store.

pub mod modules;
mod redb;

pub use self::redb::{RedbStore, STORE_FILE};

/// The collections of objects the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Node,
    Workload,
    Instance,
    Event,
    /// The token the master presents to a node's agent API, by node (not an API object).
    Credential,
    /// A token record, by token id (not an API object).
    Token,
}

impl Kind {
    /// The kind of a table name, as [`Kind::table`] gives it.
    pub fn of_table(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.table() == name)
    }

    pub const ALL: [Kind; 6] = [Kind::Node, Kind::Workload, Kind::Instance, Kind::Event, Kind::Credential, Kind::Token];

    pub fn table(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Workload => "workloads",
            Kind::Instance => "instances",
            Kind::Event => "events",
            Kind::Credential => "credentials",
            Kind::Token => "tokens",
        }
    }
}

/// One change inside a [`Batch`].
#[derive(Debug, Clone)]
pub enum Op {
    Put { kind: Kind, name: String, value: Vec<u8> },
    Delete { kind: Kind, name: String },
}

/// Changes committed together, with the counters as they are after them.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub revision: u64,
    pub epoch: u64,
    pub ops: Vec<Op>,
}

/// Everything the store holds, read once at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub epoch: u64,
    pub objects: Vec<(Kind, String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// What [`Store::export`] hands every object to: its kind, name and bytes.
pub type Visit<'a> = dyn FnMut(Kind, &str, &[u8]) -> std::io::Result<()> + 'a;

/// Durable, transactional storage behind the master.
pub trait Store: Send + Sync + 'static {
    /// Reads every object and the counters.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Commits all of `batch` durably, or nothing of it.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Visits every object as of one consistent moment (while commits go on),
    /// and returns the counters `(revision, epoch)` of that moment.
    fn export(&self, visit: &mut Visit<'_>) -> Result<(u64, u64), StoreError>;
}
