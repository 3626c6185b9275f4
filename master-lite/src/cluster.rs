//! The cluster as a master sees it: every object in memory, a view of the
//! [`crate::store::Store`] kept current by its watch.
//!
//! A [`Txn`] stages changes; [`Cluster::prepare`] turns them into a store
//! [`Write`]: it sets `uid` and `creationTimestamp` on new objects and makes
//! each put expect the revision the object had when it was read (absent for a
//! new one), so a write based on an older read fails instead of overwriting.
//! [`crate::Shared::commit`] commits it and waits until the watch brought it
//! back; [`Cluster::apply`] applies each committed [`Batch`] (this master's or
//! another's) and wakes watchers. An object's `resourceVersion` is the revision
//! of its last write. Reads are served from memory. This module also owns the
//! revisions watchers wait on: one per collection, and one per node for its
//! assignment.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use wasmlet_api::{Event, EventType, Instance, Node, ObjectReference, Phase, RegistryCredential, Rollout, Workload};

use crate::annotations::agent_protocol;
use crate::auth::{TokenRecord, TokenTable};
use crate::config::defaults;
use crate::controller::lifecycle::is_unreachable;
use crate::store::{Batch, Expect, Fence, Kind, Op, Snapshot, StoreError, Write};
use crate::usage_history::UsageHistory;

/// An instance together with the workload as it was when the instance was
/// created: what its node runs, even while the workload rolls to a new spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    pub instance: Instance,
    pub workload: Workload,
}

/// What a lease renewal or an assignment watch needs to know about one node,
/// kept apart from the [`Cluster`] so neither waits for the cluster lock.
#[derive(Debug)]
pub struct AgentView {
    /// The revision of the last change to the node's assignment; watchers of
    /// the assignment subscribe here (the sender is dropped when the node is deleted).
    pub assignment: watch::Sender<u64>,
    /// Whether the node carries the unreachable taint.
    pub unreachable: bool,
    /// The protocol version the node's agent registered with.
    pub protocol: u32,
}

/// What a lease renewal needs to know about one node (see [`AgentView`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentState {
    pub assignment: u64,
    pub unreachable: bool,
    pub protocol: u32,
}

/// Per registered node: its [`AgentView`]. Updated by every commit that changes it.
#[derive(Debug, Clone, Default)]
pub struct AgentViews(Arc<RwLock<HashMap<String, AgentView>>>);

impl AgentViews {
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<String, AgentView>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The assignment revision, taint and protocol of a registered node.
    pub fn get(&self, node: &str) -> Option<AgentState> {
        self.read().get(node).map(|v| AgentState { assignment: *v.assignment.borrow(), unreachable: v.unreachable, protocol: v.protocol })
    }

    /// A receiver of the node's assignment revision.
    pub fn subscribe(&self, node: &str) -> Option<watch::Receiver<u64>> {
        self.read().get(node).map(|v| v.assignment.subscribe())
    }
}

/// Changes staged for one commit.
#[derive(Debug, Default)]
pub struct Txn {
    changes: Vec<Change>,
    /// The epoch counter when the transaction began, and as it issued them.
    epoch: (u64, u64),
    /// Names of the instances this transaction puts.
    instances: HashSet<String>,
    /// Commit only while this leadership is held (the controllers' writes).
    fence: Option<Fence>,
    /// Whether the changes may commit in several pieces when one write
    /// cannot hold them all (see [`Txn::divisible`]).
    divisible: bool,
}

#[derive(Debug)]
enum Change {
    Node(Box<Node>),
    Workload(Box<Workload>),
    Instance(Box<Placed>),
    Event(Box<Event>),
    Credential(String, String),
    Token(Box<TokenRecord>),
    RegistryCredential(Box<RegistryCredential>),
    Rollout(Box<Rollout>),
    Delete(Kind, String),
}

/// The node an instance change assigns to (None for every other change).
fn assigned_node(change: &Change) -> Option<&str> {
    match change {
        Change::Instance(placed) => Some(&placed.instance.spec.node),
        _ => None,
    }
}

impl Txn {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn put_node(&mut self, node: Node) {
        self.changes.push(Change::Node(Box::new(node)));
    }

    pub fn put_workload(&mut self, workload: Workload) {
        self.changes.push(Change::Workload(Box::new(workload)));
    }

    pub fn put_instance(&mut self, placed: Placed) {
        self.instances.insert(placed.instance.metadata.name.clone());
        self.changes.push(Change::Instance(Box::new(placed)));
    }

    /// A name for a new instance of `workload` that neither `cluster` nor
    /// this transaction holds: random names collide (one in five workloads
    /// of 2,500 replicas would otherwise replace one of its own instances).
    pub fn new_instance_name(&self, cluster: &Cluster, workload: &str) -> String {
        loop {
            let name = instance_name(workload);
            if !cluster.instances.contains_key(&name) && !self.instances.contains(&name) {
                return name;
            }
        }
    }

    pub fn put_credential(&mut self, node: &str, credential: String) {
        self.changes.push(Change::Credential(node.to_string(), credential));
    }

    pub fn put_token(&mut self, record: TokenRecord) {
        self.changes.push(Change::Token(Box::new(record)));
    }

    pub fn put_registry_credential(&mut self, credential: RegistryCredential) {
        self.changes.push(Change::RegistryCredential(Box::new(credential)));
    }

    /// Puts a workload's rollout record; it expects the record's `resourceVersion` (none: a new record).
    pub fn put_rollout(&mut self, rollout: Rollout) {
        self.changes.push(Change::Rollout(Box::new(rollout)));
    }

    pub fn delete(&mut self, kind: Kind, name: &str) {
        self.changes.push(Change::Delete(kind, name.to_string()));
    }

    /// A fresh epoch, larger than every one issued before (also across restarts).
    pub fn next_epoch(&mut self) -> u64 {
        self.epoch.1 += 1;
        self.epoch.1
    }

    /// Makes the transaction commit only while `fence`'s leadership is held.
    pub fn fence(&mut self, fence: Fence) {
        self.fence = Some(fence);
    }

    /// Lets the changes commit in several pieces, in any order, when the
    /// store cannot take them in one write: for changes each of which stands
    /// on its own (instances placed, statuses reported, the instances of a
    /// deleted workload removed). Should a piece fail, the others stay, and
    /// the controllers carry on from there.
    pub fn divisible(&mut self) {
        self.divisible = true;
    }

    pub fn is_divisible(&self) -> bool {
        self.divisible
    }

    /// Records an event reported by the master.
    pub fn event(&mut self, kind_of_event: EventType, reason: &str, object: (&str, &str), message: impl Into<String>) {
        let name = format!("{}.{}", object.1, random_hex(8));
        let involved = ObjectReference { kind: object.0.to_string(), name: object.1.to_string() };
        let message = message.into();
        match kind_of_event {
            EventType::Warning => tracing::warn!(reason, object = %object.1, "{message}"),
            EventType::Normal => tracing::info!(reason, object = %object.1, "{message}"),
        }
        self.changes.push(Change::Event(Box::new(Event::new(name, kind_of_event, reason, involved, message, "master"))));
    }
}

/// Every object, the counters, and the revisions watchers wait on.
pub struct Cluster {
    /// Stored objects the master keeps but does not act on, with the reason:
    /// records it cannot decode (left in the store as they are; a workload is
    /// shown as a placeholder), and workloads that break a limit. Putting or
    /// deleting the object clears its entry.
    pub invalid: BTreeMap<(Kind, String), String>,
    /// The global revision: bumped by every commit.
    pub revision: u64,
    /// The last epoch issued.
    epoch: u64,
    pub nodes: BTreeMap<String, Node>,
    pub workloads: BTreeMap<String, Workload>,
    pub instances: BTreeMap<String, Placed>,
    pub events: BTreeMap<String, Event>,
    /// Event names, oldest first, to drop the oldest beyond the cap.
    event_order: VecDeque<String>,
    credentials: HashMap<String, String>,
    /// Registry credentials by name, passwords included (answers leave them out).
    pub registry_credentials: BTreeMap<String, RegistryCredential>,
    /// Each workload's revisions and rollout, by workload (none for a workload
    /// stored by a master older than rollouts, until it changes).
    pub rollouts: BTreeMap<String, Rollout>,
    /// Token records, readable without this lock.
    pub tokens: TokenTable,
    /// The revision of the last write to each collection.
    collection_revision: HashMap<Kind, u64>,
    /// The revision of the last change to each node's assignment.
    assignment_revision: HashMap<String, u64>,
    /// Instance names per node.
    by_node: HashMap<String, BTreeSet<String>>,
    /// What lease renewals and assignment watches read, without this lock.
    agents: AgentViews,
    /// Each node's recent usage, recorded as its statuses are applied (for the dashboard's plots).
    pub usage_history: UsageHistory,
    /// Carries the global revision to watchers and controllers.
    changes: watch::Sender<u64>,
}

impl Cluster {
    /// The view of everything in `snapshot`. A record that cannot be decoded
    /// does not stop the master: it stays in the store untouched and is listed
    /// in [`Cluster::invalid`]; a workload's record is stood in for by a
    /// placeholder, so the workload shows (as Invalid) and its instances are kept.
    pub fn new(snapshot: Snapshot) -> Self {
        let mut cluster = Cluster {
            invalid: BTreeMap::new(),
            revision: snapshot.revision,
            epoch: snapshot.epoch,
            nodes: BTreeMap::new(),
            workloads: BTreeMap::new(),
            instances: BTreeMap::new(),
            events: BTreeMap::new(),
            event_order: VecDeque::new(),
            credentials: HashMap::new(),
            registry_credentials: BTreeMap::new(),
            rollouts: BTreeMap::new(),
            tokens: TokenTable::default(),
            collection_revision: HashMap::new(),
            assignment_revision: HashMap::new(),
            by_node: HashMap::new(),
            agents: AgentViews::default(),
            usage_history: UsageHistory::default(),
            changes: watch::Sender::new(snapshot.revision),
        };
        cluster.fill(snapshot);
        cluster
    }

    /// Replaces the whole view with `snapshot` (the store's watch could not
    /// resume), keeping the channels watchers and agents wait on.
    pub fn reload(&mut self, snapshot: Snapshot) {
        let kept: HashSet<&str> = snapshot.objects.iter().filter(|o| o.kind == Kind::Node).map(|o| o.name.as_str()).collect();
        let gone: Vec<String> = self.nodes.keys().filter(|n| !kept.contains(n.as_str())).cloned().collect();
        self.invalid.clear();
        self.nodes.clear();
        self.workloads.clear();
        self.instances.clear();
        self.events.clear();
        self.credentials.clear();
        self.registry_credentials.clear();
        self.tokens.clear();
        self.by_node.clear();
        self.revision = snapshot.revision;
        self.epoch = snapshot.epoch;
        self.fill(snapshot);
        self.usage_history.retain(|n| !gone.iter().any(|g| g == n));
        self.publish(gone);
        self.changes.send_replace(self.revision);
    }

    fn fill(&mut self, snapshot: Snapshot) {
        for stored in snapshot.objects {
            match decode(stored.kind, &stored.name, stored.revision, &stored.value) {
                Ok(change) => self.apply_change(change, stored.revision, &mut Vec::new()),
                Err(problem) => self.undecodable(stored.kind, stored.name, stored.revision, &stored.value, problem),
            }
        }
        let mut order: Vec<(u64, String)> =
            self.events.iter().map(|(name, e)| (e.metadata.resource_version.unwrap_or(0), name.clone())).collect();
        order.sort();
        self.event_order = order.into_iter().map(|(_, name)| name).collect();
        // Revisions before the load are unknown: everything counts as changed now.
        for kind in Kind::ALL {
            self.collection_revision.insert(kind, self.revision);
        }
        for node in self.nodes.keys() {
            self.assignment_revision.insert(node.clone(), self.revision);
        }
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        self.publish(names);
    }

    /// Records a stored object, written at `revision`, that cannot be decoded (see [`Cluster::new`]).
    fn undecodable(&mut self, kind: Kind, name: String, revision: u64, value: &[u8], problem: String) {
        if kind == Kind::Workload {
            let mut placeholder = placeholder(&name, value);
            placeholder.metadata.resource_version = Some(revision);
            self.workloads.insert(name.clone(), placeholder);
        }
        let problem = format!("its stored record cannot be decoded ({problem}); it is left in the store as it is");
        self.invalid.insert((kind, name), problem);
    }

    /// Why the master does not act on this object, if it does not.
    pub fn invalid(&self, kind: Kind, name: &str) -> Option<&str> {
        self.invalid.get(&(kind, name.to_string())).map(String::as_str)
    }

    pub fn txn(&self) -> Txn {
        Txn { changes: Vec::new(), epoch: (self.epoch, self.epoch), instances: HashSet::new(), fence: None, divisible: false }
    }

    /// Receives the global revision after every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn collection_revision(&self, kind: Kind) -> u64 {
        self.collection_revision.get(&kind).copied().unwrap_or(0)
    }

    pub fn assignment_revision(&self, node: &str) -> u64 {
        self.assignment_revision.get(node).copied().unwrap_or(0)
    }

    /// The per-node view lease renewals and assignment watches read.
    pub fn agents(&self) -> AgentViews {
        self.agents.clone()
    }

    pub fn credential(&self, node: &str) -> Option<&str> {
        self.credentials.get(node).map(String::as_str)
    }

    /// The instances placed on `node`.
    pub fn instances_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Placed> + 'a {
        self.by_node.get(node).into_iter().flatten().filter_map(|name| self.instances.get(name))
    }

    /// Events, oldest first.
    pub fn events_in_order(&self) -> impl Iterator<Item = &Event> {
        self.event_order.iter().filter_map(|name| self.events.get(name))
    }

    /// The store write of `txn`: `uid` and `creationTimestamp` set on new
    /// objects, each put expecting the revision its object was read at (absent
    /// for a new one), the oldest events dropped beyond the cap. None when
    /// there is nothing to write.
    pub fn prepare(&self, txn: Txn) -> Result<Option<Write>, StoreError> {
        if txn.changes.is_empty() && txn.epoch.0 == txn.epoch.1 {
            return Ok(None);
        }
        let now = Utc::now();
        let mut write = Write {
            ops: Vec::with_capacity(txn.changes.len()),
            epoch: (txn.epoch.0 != txn.epoch.1).then_some(txn.epoch),
            fence: txn.fence,
        };
        let mut changes = txn.changes;
        if txn.divisible {
            // Each change stands on its own: a node's instances side by side, so a
            // write split into pieces wakes each node's assignment once or twice, not once per piece.
            changes.sort_by(|a, b| assigned_node(a).cmp(&assigned_node(b)));
        }
        let new_events = changes.iter().filter(|c| matches!(c, Change::Event(_))).count();
        let excess = (self.event_order.len() + new_events).saturating_sub(defaults::MAX_EVENTS);
        for name in self.event_order.iter().take(excess) {
            changes.push(Change::Delete(Kind::Event, name.clone()));
        }
        let encode = |value: &dyn erased::Encode| value.encode().map_err(|e| StoreError::Other(format!("encoding: {e}")));
        for change in &mut changes {
            // The revision it was read at is what the write expects; the store sets the new one.
            let stamp = |meta: &mut wasmlet_api::ObjectMeta| {
                let expect = match meta.resource_version.take() {
                    Some(revision) => Expect::Revision(revision),
                    None => Expect::Absent,
                };
                if meta.uid.is_none() {
                    meta.uid = Some(new_uid());
                }
                if meta.creation_timestamp.is_none() {
                    meta.creation_timestamp = Some(now);
                }
                expect
            };
            let op = match change {
                Change::Node(node) => {
                    let expect = stamp(&mut node.metadata);
                    Op::Put { kind: Kind::Node, name: node.metadata.name.clone(), value: encode(node.as_ref())?, expect }
                }
                Change::Workload(workload) => {
                    let expect = stamp(&mut workload.metadata);
                    Op::Put { kind: Kind::Workload, name: workload.metadata.name.clone(), value: encode(workload.as_ref())?, expect }
                }
                Change::Instance(placed) => {
                    let expect = stamp(&mut placed.instance.metadata);
                    placed.workload.metadata.resource_version = None;
                    Op::Put { kind: Kind::Instance, name: placed.instance.metadata.name.clone(), value: encode(placed.as_ref())?, expect }
                }
                Change::Event(event) => {
                    let expect = stamp(&mut event.metadata);
                    Op::Put { kind: Kind::Event, name: event.metadata.name.clone(), value: encode(event.as_ref())?, expect }
                }
                Change::Credential(node, credential) => {
                    Op::Put { kind: Kind::Credential, name: node.clone(), value: credential.as_bytes().to_vec(), expect: Expect::Any }
                }
                Change::Token(record) => {
                    let expect = record.revision.map_or(Expect::Absent, Expect::Revision);
                    Op::Put { kind: Kind::Token, name: record.id.clone(), value: encode(record.as_ref())?, expect }
                }
                Change::RegistryCredential(credential) => {
                    let expect = stamp(&mut credential.metadata);
                    Op::Put {
                        kind: Kind::RegistryCredential,
                        name: credential.metadata.name.clone(),
                        value: encode(credential.as_ref())?,
                        expect,
                    }
                }
                Change::Rollout(rollout) => {
                    // A record this master cannot read (damaged, or a newer master's) is written over: a
                    // workload's record must never keep the workload from changing.
                    let unreadable =
                        rollout.metadata.resource_version.is_none() && self.invalid(Kind::Rollout, &rollout.metadata.name).is_some();
                    let expect = stamp(&mut rollout.metadata);
                    let expect = if unreadable { Expect::Any } else { expect };
                    Op::Put { kind: Kind::Rollout, name: rollout.metadata.name.clone(), value: encode(rollout.as_ref())?, expect }
                }
                Change::Delete(kind, name) => Op::Delete { kind: *kind, name: name.clone(), expect: Expect::Any },
            };
            write.ops.push(op);
        }
        Ok(Some(write))
    }

    /// Applies one committed batch (in revision order) and wakes watchers.
    pub fn apply(&mut self, batch: Batch) {
        if batch.revision <= self.revision {
            return;
        }
        let revision = batch.revision;
        self.revision = revision;
        if let Some(epoch) = batch.epoch {
            self.epoch = self.epoch.max(epoch);
        }
        // Nodes whose agent view may have changed.
        let mut touched: Vec<String> = Vec::new();
        for change in batch.changes {
            // A record written anew (or deleted) replaces the one that could not be acted on.
            self.invalid.remove(&(change.kind, change.name.clone()));
            let decoded = match &change.value {
                Some(value) => decode(change.kind, &change.name, revision, value),
                None => Ok(Change::Delete(change.kind, change.name.clone())),
            };
            match decoded {
                Ok(decoded) => self.apply_change(decoded, revision, &mut touched),
                Err(problem) => {
                    tracing::warn!(kind = change.kind.table(), name = %change.name, %problem, "a stored record cannot be decoded");
                    let value = change.value.unwrap_or_default();
                    if change.kind != Kind::Workload {
                        self.apply_change(Change::Delete(change.kind, change.name.clone()), revision, &mut touched);
                    }
                    self.undecodable(change.kind, change.name, revision, &value, problem);
                }
            }
        }
        self.publish(touched);
        self.changes.send_replace(revision);
    }

    /// Applies one decoded change of the commit at `revision`; adds the nodes
    /// whose agent view may have changed to `touched`.
    fn apply_change(&mut self, change: Change, revision: u64, touched: &mut Vec<String>) {
        match change {
            Change::Node(node) => {
                self.touch(Kind::Node, revision);
                self.assignment_revision.entry(node.metadata.name.clone()).or_insert(revision);
                touched.push(node.metadata.name.clone());
                if let Some(usage) = &node.status.usage {
                    self.usage_history.record(&node.metadata.name, usage);
                }
                self.nodes.insert(node.metadata.name.clone(), *node);
            }
            Change::Workload(workload) => {
                self.touch(Kind::Workload, revision);
                self.workloads.insert(workload.metadata.name.clone(), *workload);
            }
            Change::Instance(placed) => {
                self.touch(Kind::Instance, revision);
                let name = placed.instance.metadata.name.clone();
                let old = self.instances.get(&name);
                let lost = |p: &Placed| p.instance.status.phase == Phase::Lost;
                let assignment_changed = old.is_none_or(|old| {
                    old.instance.spec != placed.instance.spec || old.workload.spec != placed.workload.spec || lost(old) != lost(&placed)
                });
                let new_node = &placed.instance.spec.node;
                if assignment_changed {
                    if let Some(old) = old {
                        self.assignment_revision.insert(old.instance.spec.node.clone(), revision);
                        touched.push(old.instance.spec.node.clone());
                    }
                    self.assignment_revision.insert(new_node.clone(), revision);
                    touched.push(new_node.clone());
                }
                let moved_from = old.filter(|old| old.instance.spec.node != *new_node).map(|old| old.instance.spec.node.clone());
                if let Some(old_node) = moved_from {
                    self.unindex(&old_node, &name);
                }
                let here = self.by_node.entry(new_node.clone()).or_default();
                if !here.contains(&name) {
                    here.insert(name.clone());
                }
                self.instances.insert(name, *placed);
            }
            Change::Event(event) => {
                self.touch(Kind::Event, revision);
                if !self.events.contains_key(&event.metadata.name) {
                    self.event_order.push_back(event.metadata.name.clone());
                }
                self.events.insert(event.metadata.name.clone(), *event);
            }
            Change::Credential(node, credential) => {
                self.credentials.insert(node, credential);
            }
            Change::Token(record) => self.tokens.insert(*record),
            Change::RegistryCredential(credential) => {
                self.touch(Kind::RegistryCredential, revision);
                self.registry_credentials.insert(credential.metadata.name.clone(), *credential);
            }
            Change::Rollout(rollout) => {
                // Only what the ingresses follow moves the collection (and wakes every node's endpoints watch):
                // the gates' readings change every second of a step.
                let routed = |r: &Rollout| (r.status.revision, r.status.phase, r.status.step, r.status.weight);
                if self.rollouts.get(&rollout.metadata.name).is_none_or(|old| routed(old) != routed(&rollout)) {
                    self.touch(Kind::Rollout, revision);
                }
                self.rollouts.insert(rollout.metadata.name.clone(), *rollout);
            }
            Change::Delete(kind, name) => {
                self.touch(kind, revision);
                match kind {
                    Kind::Node => {
                        self.nodes.remove(&name);
                        self.usage_history.forget(&name);
                        self.assignment_revision.insert(name.clone(), revision);
                        touched.push(name);
                    }
                    Kind::Workload => drop(self.workloads.remove(&name)),
                    Kind::Instance => {
                        if let Some(old) = self.instances.remove(&name) {
                            self.unindex(&old.instance.spec.node, &name);
                            self.assignment_revision.insert(old.instance.spec.node.clone(), revision);
                            touched.push(old.instance.spec.node);
                        }
                    }
                    Kind::Event => {
                        if self.events.remove(&name).is_some() {
                            // Trimming deletes the oldest: O(1) from the front.
                            if self.event_order.front() == Some(&name) {
                                self.event_order.pop_front();
                            } else {
                                self.event_order.retain(|n| *n != name);
                            }
                        }
                    }
                    Kind::Credential => drop(self.credentials.remove(&name)),
                    Kind::Token => self.tokens.remove(&name),
                    Kind::RegistryCredential => drop(self.registry_credentials.remove(&name)),
                    Kind::Rollout => drop(self.rollouts.remove(&name)),
                }
            }
        }
    }

    fn unindex(&mut self, node: &str, instance: &str) {
        if let Some(names) = self.by_node.get_mut(node) {
            names.remove(instance);
            if names.is_empty() {
                self.by_node.remove(node);
            }
        }
    }

    /// Brings the agent views of `nodes` up to date (drops those of deleted nodes).
    fn publish(&self, mut nodes: Vec<String>) {
        if nodes.is_empty() {
            return;
        }
        nodes.sort_unstable();
        nodes.dedup();
        let mut views = self.agents.0.write().unwrap_or_else(|e| e.into_inner());
        for name in nodes {
            let assignment = self.assignment_revision(&name);
            match self.nodes.get(&name) {
                Some(node) => {
                    let unreachable = is_unreachable(node);
                    let protocol = agent_protocol(node);
                    match views.get_mut(&name) {
                        Some(view) => {
                            view.unreachable = unreachable;
                            view.protocol = protocol;
                            view.assignment.send_if_modified(|r| std::mem::replace(r, assignment) != assignment);
                        }
                        None => drop(views.insert(name, AgentView { assignment: watch::Sender::new(assignment), unreachable, protocol })),
                    }
                }
                None => {
                    if let Some(view) = views.remove(&name) {
                        view.assignment.send_replace(assignment);
                    }
                }
            }
        }
    }

    fn touch(&mut self, kind: Kind, revision: u64) {
        self.collection_revision.insert(kind, revision);
    }
}

/// The change a stored record of `kind` makes, its `resourceVersion` set to `revision`.
fn decode(kind: Kind, name: &str, revision: u64, value: &[u8]) -> Result<Change, String> {
    let at = |meta: &mut wasmlet_api::ObjectMeta| meta.resource_version = Some(revision);
    let decoded = match kind {
        Kind::Node => wasmlet_api::from_json::<Node>(value).map(|mut node| {
            at(&mut node.metadata);
            Change::Node(Box::new(node))
        }),
        Kind::Workload => wasmlet_api::from_json::<Workload>(value).map(|mut workload| {
            at(&mut workload.metadata);
            Change::Workload(Box::new(workload))
        }),
        Kind::Instance => wasmlet_api::from_json::<Placed>(value).map(|mut placed| {
            at(&mut placed.instance.metadata);
            Change::Instance(Box::new(placed))
        }),
        Kind::Event => wasmlet_api::from_json::<Event>(value).map(|mut event| {
            at(&mut event.metadata);
            Change::Event(Box::new(event))
        }),
        Kind::Credential => return Ok(Change::Credential(name.to_string(), String::from_utf8_lossy(value).into_owned())),
        Kind::Token => wasmlet_api::from_json::<TokenRecord>(value).map(|mut record| {
            record.revision = Some(revision);
            Change::Token(Box::new(record))
        }),
        Kind::RegistryCredential => wasmlet_api::from_json::<RegistryCredential>(value).map(|mut credential| {
            at(&mut credential.metadata);
            Change::RegistryCredential(Box::new(credential))
        }),
        Kind::Rollout => wasmlet_api::from_json::<Rollout>(value).map(|mut rollout| {
            at(&mut rollout.metadata);
            Change::Rollout(Box::new(rollout))
        }),
    };
    decoded.map_err(|e| e.to_string())
}

mod erased {
    /// Lets `commit` encode the different object types through one closure.
    pub trait Encode {
        fn encode(&self) -> serde_json::Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(self)
        }
    }
}

/// What stands in for a workload whose stored record cannot be decoded: its
/// name, and whatever of its metadata, module and type can still be read, so
/// it can be listed, described, replaced and deleted. The master never acts on
/// it (it is in [`Cluster::invalid`]).
fn placeholder(name: &str, raw: &[u8]) -> Workload {
    let value: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
    fn field<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Option<T> {
        serde_json::from_value(v.clone()).ok()
    }
    let metadata = &value["metadata"];
    let spec = &value["spec"];
    Workload {
        api_version: wasmlet_api::API_VERSION.to_string(),
        kind: wasmlet_api::WORKLOAD_KIND.to_string(),
        metadata: wasmlet_api::ObjectMeta {
            name: name.to_string(),
            labels: field(&metadata["labels"]).unwrap_or_default(),
            annotations: field(&metadata["annotations"]).unwrap_or_default(),
            uid: field(&metadata["uid"]),
            resource_version: None,
            creation_timestamp: field(&metadata["creationTimestamp"]),
        },
        spec: wasmlet_api::WorkloadSpec {
            module: field(&spec["module"]).unwrap_or_default(),
            kind: field(&spec["type"]).unwrap_or(wasmlet_api::WorkloadType::Daemon),
            replicas: None,
            placement: None,
            node_selector: Default::default(),
            tolerations: Vec::new(),
            args: Vec::new(),
            env: Default::default(),
            dirs: Vec::new(),
            allowed_outbound_hosts: Vec::new(),
            resources: Default::default(),
            isolation: None,
            restart_policy: None,
            route: None,
            readiness_path: None,
            liveness_path: None,
            disconnect: Default::default(),
            rollout: None,
        },
        status: None,
    }
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fills `buf` from the OS; falls back to the clock if the OS has no randomness to give.
pub fn fill_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        for b in buf {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (seed >> 64) as u8;
        }
    }
}

fn new_uid() -> String {
    let h = random_hex(16);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// `<workload>-<5 random lowercase letters and digits>`.
pub fn instance_name(workload: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    fill_random(&mut bytes);
    let suffix: String = bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    format!("{workload}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str) -> Workload {
        serde_json::from_value(serde_json::json!({
            "apiVersion": wasmlet_api::API_VERSION, "kind": "Workload", "metadata": {"name": name},
            "spec": {"type": "daemon", "module": {"source": "w.wasm", "digest": format!("sha256:{}", "0".repeat(64))}}
        }))
        .unwrap()
    }

    /// The nodes of the instance puts of `write`, in its order.
    fn nodes_of(write: &Write) -> Vec<String> {
        write
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { kind: Kind::Instance, value, .. } => Some(serde_json::from_slice::<Placed>(value).unwrap().instance.spec.node),
                _ => None,
            })
            .collect()
    }

    /// A divisible write (a controller pass placing round-robin) is split into
    /// pieces: its instances are grouped by node, so each node's assignment
    /// changes in as few pieces as can hold them. An indivisible one keeps its order.
    #[test]
    fn a_divisible_write_groups_each_nodes_instances() {
        let cluster = Cluster::new(Snapshot::default());
        let w = workload("w");
        let build = |divisible: bool| {
            let mut txn = cluster.txn();
            txn.event(EventType::Normal, "Scaled", ("Workload", "w"), "placing");
            for i in 0..12 {
                let spec = wasmlet_api::InstanceSpec { workload: "w".into(), node: format!("n{}", i % 3), epoch: 1 };
                txn.put_instance(Placed { instance: Instance::new(format!("w-{i:05}"), spec), workload: w.clone() });
            }
            if divisible {
                txn.divisible();
            }
            cluster.prepare(txn).unwrap().unwrap()
        };
        let grouped = build(true);
        assert_eq!(nodes_of(&grouped), [["n0"; 4], ["n1"; 4], ["n2"; 4]].concat());
        assert!(matches!(grouped.ops[0], Op::Put { kind: Kind::Event, .. }), "the other changes stay, first");
        // Split four ops a piece: each node's four instances span two pieces at most (round-robin, all four).
        let pieces_with = |write: Write, node: &str| {
            write.split(crate::store::Limits { ops: 4, bytes: usize::MAX }).iter().filter(|p| nodes_of(p).iter().any(|n| n == node)).count()
        };
        assert!(["n0", "n1", "n2"].iter().all(|n| pieces_with(grouped.clone(), n) <= 2));
        let kept = build(false);
        assert_eq!(nodes_of(&kept)[..3], ["n0", "n1", "n2"]);
        assert_eq!(pieces_with(kept, "n0"), 3, "kept in order, n0 spans three pieces");
    }

    /// A rollout's record is written every second of a step (its gates'
    /// readings); only a change the ingresses follow moves the collection that
    /// every node's endpoints watch waits on.
    #[test]
    fn only_a_rollouts_routing_moves_its_collection() {
        let mut cluster = Cluster::new(Snapshot::default());
        let spec = workload("w").spec;
        let mut record = wasmlet_api::Rollout::first("w", &spec, Utc::now());
        let write = |cluster: &mut Cluster, revision: u64, record: &wasmlet_api::Rollout| {
            let value = Some(serde_json::to_vec(record).unwrap());
            cluster.apply(crate::store::Batch {
                revision,
                epoch: None,
                changes: vec![crate::store::Change { kind: Kind::Rollout, name: "w".into(), value }],
            });
        };
        write(&mut cluster, 1, &record);
        assert_eq!(cluster.collection_revision(Kind::Rollout), 1);
        record.status.message = "holding".into();
        write(&mut cluster, 2, &record);
        assert_eq!(cluster.collection_revision(Kind::Rollout), 1, "a new message moves nothing");
        assert_eq!(cluster.rollouts["w"].status.message, "holding", "but is kept");
        record.status.weight = 50;
        write(&mut cluster, 3, &record);
        assert_eq!(cluster.collection_revision(Kind::Rollout), 3, "a new weight does");
    }

    /// 30,000 random names of five letters out of 27 collide all but surely
    /// (the chance of none is about e^-31): the names a transaction hands out
    /// never do, with each other or with the cluster's instances.
    #[test]
    fn new_instance_names_never_collide() {
        let cluster = Cluster::new(Snapshot::default());
        let mut txn = cluster.txn();
        let workload = workload("w");
        let mut seen = HashSet::new();
        for _ in 0..30_000 {
            let name = txn.new_instance_name(&cluster, "w");
            assert!(seen.insert(name.clone()), "{name} handed out twice");
            let spec = wasmlet_api::InstanceSpec { workload: "w".into(), node: "n".into(), epoch: 1 };
            txn.put_instance(Placed { instance: Instance::new(name, spec), workload: workload.clone() });
        }
    }
}
