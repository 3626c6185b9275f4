//! Durable storage of the cluster's objects, shared by every master of a cluster.
//!
//! The store sees objects as bytes under a [`Kind`] and a name. A [`Write`]
//! commits all of its [`Op`]s or none: each op may expect the object to be
//! absent or at a given revision (compare-and-set), and a write may be
//! [`Fence`]d, committing only while its master still leads. Every commit gets
//! the next global revision, which is also the revision of each object it
//! writes (`metadata.resourceVersion`). Masters never read the store for an
//! answer: each keeps a view in memory ([`crate::cluster`]), loaded once and
//! kept current by [`Store::watch`], which delivers every commit, its own and
//! other masters', in revision order.
//!
//! - `redb`: the embedded default, one file in the data dir, one master.
//! - `etcd`: a cluster of etcd servers, shared by several masters, with the
//!   leader election ([`Store::campaign`]) that makes one of them run the controllers.
//! - `modules`: the content-addressed module files beside the store.

pub mod conformance;
mod etcd;
pub mod modules;
mod redb;

use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

pub use self::etcd::{EtcdSettings, EtcdStore};
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
    /// Registry credentials the master holds for workloads' modules.
    RegistryCredential,
    /// A workload's revisions and the rollout under way, by workload.
    Rollout,
}

impl Kind {
    /// The kind of a table name, as [`Kind::table`] gives it.
    pub fn of_table(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.table() == name)
    }

    pub const ALL: [Kind; 8] =
        [Kind::Node, Kind::Workload, Kind::Instance, Kind::Event, Kind::Credential, Kind::Token, Kind::RegistryCredential, Kind::Rollout];

    pub fn table(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Workload => "workloads",
            Kind::Instance => "instances",
            Kind::Event => "events",
            Kind::Credential => "credentials",
            Kind::Token => "tokens",
            Kind::RegistryCredential => "registrycredentials",
            Kind::Rollout => "rollouts",
        }
    }
}

/// What an [`Op`] expects of the object before it: the compare of compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there.
    Any,
    /// No object of that name.
    Absent,
    /// The object, last written at this revision.
    Revision(u64),
}

/// One change inside a [`Write`].
#[derive(Debug, Clone)]
pub enum Op {
    Put { kind: Kind, name: String, value: Vec<u8>, expect: Expect },
    Delete { kind: Kind, name: String, expect: Expect },
}

impl Op {
    pub fn key(&self) -> (Kind, &str) {
        match self {
            Op::Put { kind, name, .. } | Op::Delete { kind, name, .. } => (*kind, name),
        }
    }

    pub fn expect(&self) -> Expect {
        match self {
            Op::Put { expect, .. } | Op::Delete { expect, .. } => *expect,
        }
    }
}

/// Changes committed together, or not at all.
#[derive(Debug, Clone, Default)]
pub struct Write {
    pub ops: Vec<Op>,
    /// The epoch counter moves from `.0` to `.1` (only if it still is `.0`).
    pub epoch: Option<(u64, u64)>,
    /// Commit only while this leadership is held.
    pub fence: Option<Fence>,
}

impl Write {
    /// The write in pieces that each keep within `limits`, in order: the
    /// first moves the epoch, each is fenced. Only for a write whose ops need
    /// not all commit together (each piece commits or not on its own).
    pub fn split(self, limits: Limits) -> Vec<Write> {
        let mut pieces: Vec<Write> = Vec::new();
        let mut piece = Write { ops: Vec::new(), epoch: self.epoch, fence: self.fence };
        let mut bytes = 0;
        for op in self.ops {
            let size = op.size();
            if !piece.ops.is_empty() && (piece.ops.len() >= limits.ops || bytes + size > limits.bytes) {
                pieces.push(std::mem::replace(&mut piece, Write { ops: Vec::new(), epoch: None, fence: self.fence }));
                bytes = 0;
            }
            bytes += size;
            piece.ops.push(op);
        }
        pieces.push(piece);
        pieces
    }

    /// Whether the write keeps within `limits`.
    pub fn fits(&self, limits: Limits) -> bool {
        self.ops.len() <= limits.ops && self.ops.iter().map(Op::size).sum::<usize>() <= limits.bytes
    }
}

impl Op {
    /// Roughly what the op weighs in a request: its name and value.
    fn size(&self) -> usize {
        match self {
            Op::Put { name, value, .. } => name.len() + value.len() + 64,
            Op::Delete { name, .. } => name.len() + 64,
        }
    }
}

/// The most one [`Write`] may hold for a store to take it in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub ops: usize,
    pub bytes: usize,
}

impl Limits {
    pub const NONE: Limits = Limits { ops: usize::MAX, bytes: usize::MAX };
}

/// A leadership as [`Store::campaign`] won it: writes fenced with it commit
/// only while no other master took over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence(pub u64);

/// One commit as watchers see it.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub revision: u64,
    /// The epoch counter, when the commit moved it.
    pub epoch: Option<u64>,
    pub changes: Vec<Change>,
}

/// An object written (`value`) or deleted (`None`) by a commit.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    pub value: Option<Vec<u8>>,
}

/// One stored object and the revision of its last write.
#[derive(Debug, Clone)]
pub struct Stored {
    pub kind: Kind,
    pub name: String,
    pub revision: u64,
    pub value: Vec<u8>,
}

/// Everything the store holds, as of one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub epoch: u64,
    pub objects: Vec<Stored>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An [`Expect`] of the write did not hold: someone wrote first.
    #[error("{} `{name}` was changed by another write", .kind.table())]
    Conflict { kind: Kind, name: String },
    /// The write was fenced and this master no longer leads.
    #[error("this master no longer leads the cluster; its write was not committed")]
    Fenced,
    /// The store cannot be reached, or cannot commit (no quorum).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A watch from a revision the store no longer has.
    #[error("the store no longer has revision {0}: relist")]
    Compacted(u64),
    #[error("store: {0}")]
    Other(String),
}

impl StoreError {
    pub fn other(e: impl std::fmt::Display) -> Self {
        StoreError::Other(e.to_string())
    }
}

/// The commits after a revision, in order.
pub type Watch = BoxStream<'static, Result<Batch, StoreError>>;

/// Durable, transactional storage behind the masters of a cluster.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// What the store is, for logs: its kind and where it is.
    fn describe(&self) -> String;
    /// The most one write may hold.
    fn limits(&self) -> Limits;
    /// Reads every object and the counters at one revision.
    async fn load(&self) -> Result<Snapshot, StoreError>;
    /// Commits all of `write` durably, or nothing of it; returns its revision.
    async fn commit(&self, write: Write) -> Result<u64, StoreError>;
    /// Every commit after `revision`, in order; [`StoreError::Compacted`] when
    /// the store cannot go back that far (the watcher loads anew).
    async fn watch(&self, revision: u64) -> Result<Watch, StoreError>;
    /// The newest revision the store has committed (a fresh read).
    async fn current_revision(&self) -> Result<u64, StoreError>;
    /// Waits until this master (`name`) leads the cluster, then returns its
    /// fence; `lost` is cancelled when the leadership ends (or could not be
    /// kept), after which fenced writes fail. A store of one master leads at once.
    async fn campaign(&self, name: &str, lost: CancellationToken) -> Result<Fence, StoreError>;
    /// Gives the leadership up (at shutdown), so another master takes over at once.
    async fn resign(&self, fence: Fence);
    /// The name of the master that leads now, if any.
    async fn leader(&self) -> Result<Option<String>, StoreError>;
    /// Lists this master (`name`) among the cluster's masters while it runs,
    /// until `stop`; a master that stops answering drops off the list.
    async fn announce(&self, name: &str, stop: CancellationToken) -> Result<(), StoreError>;
    /// The names of the masters that announced themselves.
    async fn masters(&self) -> Result<Vec<String>, StoreError>;
    /// Keeps `value` under `name` for every master of the cluster unless one
    /// was kept there first; returns what is kept (the cluster's CA: the first
    /// master's). A store of one master keeps nothing and returns `value`.
    async fn share(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError>;
    /// Hands the lease renewals this master received (each node, and how long
    /// ago) to whichever master leads. A store of one master drops them: it leads.
    async fn publish_renewals(&self, master: &str, renewals: Vec<Renewal>) -> Result<(), StoreError>;
    /// The renewals the other masters publish, as they come (the leader follows them).
    async fn renewals(&self) -> Result<BoxStream<'static, Vec<Renewal>>, StoreError>;
    /// Forgets the history before `revision` (watches cannot resume before it).
    async fn compact(&self, revision: u64) -> Result<(), StoreError>;
    /// Keeps an uploaded (and checked) module for every master, before its
    /// upload is answered. A store of one master keeps nothing: the file in
    /// its data dir (`modules`) is the module.
    async fn put_module(&self, digest: &str, bytes: Vec<u8>) -> Result<(), StoreError>;
    /// The module `put_module` kept under `digest`, if any (checked against the digest).
    async fn get_module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// A node's lease renewal, `ago` before it was published.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Renewal {
    pub node: String,
    #[serde(rename = "agoMs")]
    pub ago_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_divisible_write_splits_within_the_limits_in_order() {
        let put = |i: usize, size: usize| Op::Put {
            kind: Kind::Instance,
            name: format!("i{i}"),
            value: vec![b'x'; size],
            expect: Expect::Absent,
        };
        let write = Write { ops: (0..10).map(|i| put(i, 100)).collect(), epoch: Some((3, 13)), fence: Some(Fence(7)) };
        assert!(!write.fits(Limits { ops: 4, bytes: usize::MAX }));
        let pieces = write.clone().split(Limits { ops: 4, bytes: usize::MAX });
        assert_eq!(pieces.iter().map(|p| p.ops.len()).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(pieces.iter().map(|p| p.epoch).collect::<Vec<_>>(), [Some((3, 13)), None, None], "the first moves the epoch");
        assert!(pieces.iter().all(|p| p.fence == Some(Fence(7))), "each is fenced");
        let names: Vec<&str> = pieces.iter().flat_map(|p| p.ops.iter().map(|o| o.key().1)).collect();
        assert_eq!(names, (0..10).map(|i| format!("i{i}")).collect::<Vec<_>>(), "in order");
        // By size: an op larger than the limit goes alone.
        let write = Write { ops: vec![put(0, 300), put(1, 300), put(2, 5000), put(3, 10)], ..Default::default() };
        let pieces = write.split(Limits { ops: 100, bytes: 1000 });
        assert_eq!(pieces.iter().map(|p| p.ops.len()).collect::<Vec<_>>(), [2, 1, 1]);
        assert!(Write::default().fits(Limits { ops: 0, bytes: 0 }));
    }
}
