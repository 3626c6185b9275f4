//! The store of several masters: a cluster of etcd servers.
//!
//! # Keys
//! Under the prefix (`--etcd-prefix`, default `/wasmlet`):
//!
//! | key | holds |
//! | --- | --- |
//! | `<prefix>/data/<table>/<name>` | an object, as the redb store keeps it |
//! | `<prefix>/data/epoch` | the epoch counter, in decimal |
//! | `<prefix>/leader` | the leading master's name, bound to its lease |
//! | `<prefix>/masters/<name>` | a running master, bound to its lease |
//! | `<prefix>/shared/<name>` | what every master uses alike: the cluster's CAs (`pki`) |
//! | `<prefix>/renewals/<master>` | the lease renewals a master received lately, for the leader |
//! | `<prefix>/modules/<sha256>` | an uploaded module: its size and number of chunks, written last |
//! | `<prefix>/modules/<sha256>/<n>` | its bytes, in chunks of [`MODULE_CHUNK`] (etcd takes requests up to 1.5 MiB) |
//!
//! An object's revision is its etcd `mod_revision`, the global revision etcd's
//! own. A write is one etcd transaction: each op's [`Expect`] becomes a compare
//! (`create_revision = 0` for absent, `mod_revision = r` for a revision), the
//! epoch a compare of its value, a [`Fence`] a compare of the leader key's
//! `create_revision`. When the compares fail, the transaction reads the keys
//! instead, so the error names the object that moved.
//!
//! The leader key is created only where there is none, with a lease the
//! leader keeps alive; a leader that stops (killed, paused, cut off) loses the
//! key when the lease expires, and its fence with it: the next leader's key
//! has another `create_revision`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use super::{Batch, Change, Expect, Fence, Kind, Limits, Op, Renewal, Snapshot, Store, StoreError, Stored, Watch, Write};

/// The size of a module's chunks in etcd.
pub const MODULE_CHUNK: usize = 1 << 20;

/// What the key of a module in etcd holds, once all its chunks are there.
#[derive(serde::Serialize, serde::Deserialize)]
struct ModuleEntry {
    size: u64,
    chunks: u64,
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// PEM files: the CA that signed the servers' certificates, and this master's client certificate and key.
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// How long a request may take before the store counts as unavailable.
    pub request_timeout: Duration,
    /// The leader's lease: how long a leader that stopped renewing keeps the leadership.
    pub leader_lease: Duration,
}

/// A client of each member, and the one requests go to: the next one when a
/// request fails before a member took it (down, or cut off from the others).
#[derive(Clone)]
pub struct EtcdStore {
    clients: Arc<[Client]>,
    current: Arc<AtomicUsize>,
    settings: EtcdSettings,
}

/// How many times [`EtcdStore::reach`] tries every member before it gives up.
const REACH_ROUNDS: usize = 2;

/// Whether a request failed before a member took it: it could not connect,
/// or the member has no leader (cut off from the others) and refused it.
/// Nothing was done: it is safe to send it to another member.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable && (status.message().contains("connect") || status.message().contains("no leader"))
        }
        _ => false,
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

impl EtcdStore {
    /// Connects to `settings.endpoints` (TLS when a CA file is given).
    pub async fn connect(settings: EtcdSettings) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(settings.request_timeout)
            .with_timeout(settings.request_timeout)
            .with_keep_alive(Duration::from_secs(2), settings.request_timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from the others answers at once instead of waiting for a leader.
            .with_require_leader(true);
        if let Some(ca) = &settings.ca_file {
            let read =
                |path: &std::path::Path| std::fs::read(path).map_err(|e| StoreError::Other(format!("cannot read {}: {e}", path.display())));
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            match (&settings.cert_file, &settings.key_file) {
                (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
                (None, None) => {}
                _ => return Err(StoreError::Other("--etcd-cert-file and --etcd-key-file go together".into())),
            }
            options = options.with_tls(tls);
        }
        // Clients connect lazily: a member that is down at start is simply skipped later.
        let mut clients = Vec::new();
        for endpoint in &settings.endpoints {
            clients.push(Client::connect([endpoint], Some(options.clone())).await.map_err(unavailable)?);
        }
        if clients.is_empty() {
            return Err(StoreError::Other("no etcd endpoints: give --etcd-endpoints".into()));
        }
        Ok(EtcdStore { clients: clients.into(), current: Arc::default(), settings })
    }

    /// After the member at `at` failed: requests go to the next one.
    fn skip(&self, at: usize) {
        let _ = self.current.compare_exchange(at, at.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The client of the member requests go to now.
    fn client(&self) -> Client {
        self.clients[self.current.load(Ordering::Relaxed) % self.clients.len()].clone()
    }

    fn data(&self) -> String {
        format!("{}/data/", self.settings.prefix)
    }

    fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}/data/{}/{name}", self.settings.prefix, kind.table())
    }

    fn epoch_key(&self) -> String {
        format!("{}/data/epoch", self.settings.prefix)
    }

    /// Runs `call` on the current member, and on the next ones while it fails
    /// before a member took it ([`not_sent`]). A request a member took is
    /// never sent twice.
    async fn reach<T, Fut>(&self, mut call: impl FnMut(Client) -> Fut) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let members = self.clients.len();
        let mut tries = 0;
        loop {
            let at = self.current.load(Ordering::Relaxed);
            match call(self.clients[at % members].clone()).await {
                Ok(answer) => return Ok(answer),
                Err(e) if tries + 1 < members * REACH_ROUNDS && not_sent(&e) => {
                    tries += 1;
                    self.skip(at);
                    if tries % members == 0 {
                        // Every member refused: give them a moment (an election) before the next round.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    async fn get(&self, key: impl Into<Vec<u8>>, options: Option<GetOptions>) -> Result<etcd_client::GetResponse, StoreError> {
        let key = key.into();
        self.reach(|c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.kv_client().get(key, options).await }
        })
        .await
    }

    async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<etcd_client::PutOptions>,
    ) -> Result<(), StoreError> {
        let (key, value) = (key.into(), value.into());
        self.reach(|c| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.kv_client().put(key, value, options).await }
        })
        .await
        .map(drop)
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.reach(|c| {
            let txn = txn.clone();
            async move { c.kv_client().txn(txn).await }
        })
        .await
    }

    async fn open_watch(&self, key: impl Into<Vec<u8>>, options: WatchOptions) -> Result<etcd_client::WatchStream, StoreError> {
        let key = key.into();
        self.reach(|c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.watch_client().watch(key, Some(options)).await }
        })
        .await
    }

    async fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let ttl = ttl.as_secs().max(1) as i64;
        self.reach(|c| async move { c.lease_client().grant(ttl, None).await }).await.map(|lease| lease.id())
    }

    /// Puts `key` (this master's version) bound to a new lease of `ttl`; returns the lease.
    async fn listed(&self, key: &str, ttl: Duration) -> Result<i64, StoreError> {
        let lease = self.grant(ttl).await?;
        let options = etcd_client::PutOptions::new().with_lease(lease);
        self.put(key, env!("CARGO_PKG_VERSION"), Some(options)).await?;
        Ok(lease)
    }

    fn module_key(&self, digest: &str) -> String {
        format!("{}/modules/{}", self.settings.prefix, digest.trim_start_matches("sha256:"))
    }

    fn leader_key(&self) -> String {
        format!("{}/leader", self.settings.prefix)
    }

    /// What a key under `data/` is: an object, the epoch, or something this master does not know.
    fn parse(&self, key: &[u8]) -> Parsed {
        let Some(rest) = key.strip_prefix(self.data().as_bytes()) else { return Parsed::Unknown };
        let Ok(rest) = std::str::from_utf8(rest) else { return Parsed::Unknown };
        if rest == "epoch" {
            return Parsed::Epoch;
        }
        match rest.split_once('/').and_then(|(table, name)| Some((Kind::of_table(table)?, name))) {
            Some((kind, name)) => Parsed::Object(kind, name.to_string()),
            None => Parsed::Unknown,
        }
    }
}

enum Parsed {
    Object(Kind, String),
    Epoch,
    Unknown,
}

fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn etcd_revision(r: u64) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

fn epoch_of(value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Other(format!("the epoch in etcd is not a number: {:?}", String::from_utf8_lossy(value))))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd {} (prefix {})", self.settings.endpoints.join(","), self.settings.prefix)
    }

    fn limits(&self) -> Limits {
        // etcd's defaults (--max-txn-ops 128, --max-request-bytes 1.5 MiB), with
        // room for the epoch's and the fence's compares and gRPC's framing.
        Limits { ops: 120, bytes: 1 << 20 }
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        // One range read is one revision of the store, however many objects it returns.
        let mut response = self.get(self.data(), Some(GetOptions::new().with_prefix())).await?;
        let mut snapshot = Snapshot { revision: revision(response.header().map_or(0, |h| h.revision())), ..Default::default() };
        for kv in response.take_kvs() {
            match self.parse(kv.key()) {
                Parsed::Object(kind, name) => {
                    snapshot.objects.push(Stored { kind, name, revision: revision(kv.mod_revision()), value: kv.value().to_vec() })
                }
                Parsed::Epoch => snapshot.epoch = epoch_of(kv.value())?,
                Parsed::Unknown => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring a key in etcd this master does not know")
                }
            }
        }
        Ok(snapshot)
    }

    async fn commit(&self, write: Write) -> Result<u64, StoreError> {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut checked = Vec::new();
        for op in &write.ops {
            let (kind, name) = op.key();
            let key = self.key(kind, name);
            match op.expect() {
                Expect::Any => {}
                Expect::Absent => compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
                Expect::Revision(r) => compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, etcd_revision(r))),
            }
            if op.expect() != Expect::Any {
                checked.push((kind, name.to_string(), key.clone(), op.expect()));
            }
            ops.push(match op {
                Op::Put { value, .. } => TxnOp::put(key, value.clone(), None),
                Op::Delete { .. } => TxnOp::delete(key, None),
            });
        }
        if let Some((from, to)) = write.epoch {
            let key = self.epoch_key();
            compares.push(match from {
                0 => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                from => Compare::value(key.clone(), CompareOp::Equal, from.to_string()),
            });
            ops.push(TxnOp::put(key, to.to_string(), None));
        }
        if let Some(Fence(term)) = write.fence {
            compares.push(Compare::create_revision(self.leader_key(), CompareOp::Equal, etcd_revision(term)));
        }
        // When a compare fails, read what was compared, to say which.
        let mut reads: Vec<TxnOp> = checked.iter().map(|(_, _, key, _)| TxnOp::get(key.clone(), None)).collect();
        reads.push(TxnOp::get(self.epoch_key(), None));
        reads.push(TxnOp::get(self.leader_key(), None));
        let txn = Txn::new().when(compares).and_then(ops).or_else(reads);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(revision(response.header().map_or(0, |h| h.revision())));
        }
        let found: Vec<Option<(u64, u64, Vec<u8>)>> = response
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(get) => {
                    get.kvs().first().map(|kv| (revision(kv.create_revision()), revision(kv.mod_revision()), kv.value().to_vec()))
                }
                _ => None,
            })
            .collect();
        for ((kind, name, _, expect), now) in checked.iter().zip(&found) {
            let holds = match (expect, now) {
                (Expect::Absent, None) => true,
                (Expect::Revision(r), Some((_, modified, _))) => r == modified,
                _ => false,
            };
            if !holds {
                return Err(StoreError::Conflict { kind: *kind, name: name.clone() });
            }
        }
        if let Some(Fence(term)) = write.fence
            && found.last().cloned().flatten().map(|(created, _, _)| created) != Some(term)
        {
            return Err(StoreError::Fenced);
        }
        match write.epoch {
            Some((from, _)) => Err(StoreError::Other(format!("the epoch is no longer {from}"))),
            None => Err(StoreError::Other("an etcd transaction failed its compares".into())),
        }
    }

    async fn watch(&self, after: u64) -> Result<Watch, StoreError> {
        let options = WatchOptions::new().with_prefix().with_start_revision(etcd_revision(after + 1));
        let mut stream = self.open_watch(self.data(), options).await?;
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Batch, StoreError>>();
        tokio::spawn(async move {
            // Events of one revision are one commit; a response may carry several.
            loop {
                let message = tokio::select! {
                    _ = tx.closed() => return,
                    message = stream.message() => message,
                };
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        let _ = tx.send(Err(StoreError::Unavailable("etcd: the watch ended".into())));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(unavailable(e)));
                        return;
                    }
                };
                if response.compact_revision() > 0 {
                    let _ = tx.send(Err(StoreError::Compacted(after)));
                    return;
                }
                if response.canceled() {
                    let _ = tx.send(Err(StoreError::Unavailable(format!("etcd cancelled the watch: {}", response.cancel_reason()))));
                    return;
                }
                let mut batch: Option<Batch> = None;
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let at = revision(kv.mod_revision());
                    if batch.as_ref().is_some_and(|b| b.revision != at)
                        && let Some(done) = batch.take()
                        && tx.send(Ok(done)).is_err()
                    {
                        return;
                    }
                    let current = batch.get_or_insert_with(|| Batch { revision: at, ..Default::default() });
                    let value = (event.event_type() == EventType::Put).then(|| kv.value().to_vec());
                    match this.parse(kv.key()) {
                        Parsed::Object(kind, name) => current.changes.push(Change { kind, name, value }),
                        Parsed::Epoch => match value.as_deref().map(epoch_of) {
                            Some(Ok(epoch)) => current.epoch = Some(epoch),
                            Some(Err(e)) => tracing::warn!(error = %e, "ignoring the epoch"),
                            None => {}
                        },
                        Parsed::Unknown => {}
                    }
                }
                if let Some(done) = batch
                    && tx.send(Ok(done)).is_err()
                {
                    return;
                }
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|batch| (batch, rx)) })))
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        let options = GetOptions::new().with_count_only();
        let response = self.get(self.leader_key(), Some(options)).await?;
        Ok(revision(response.header().map_or(0, |h| h.revision())))
    }

    async fn campaign(&self, name: &str, lost: CancellationToken) -> Result<Fence, StoreError> {
        let key = self.leader_key();
        loop {
            let lease = self.grant(self.settings.leader_lease).await?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), name, Some(etcd_client::PutOptions::new().with_lease(lease)))])
                .or_else([TxnOp::get(key.clone(), None)]);
            let response = self.txn(txn).await?;
            if response.succeeded() {
                let term = revision(response.header().map_or(0, |h| h.revision()));
                tokio::spawn(keep_alive(self.clone(), lease, self.settings.leader_lease, lost));
                return Ok(Fence(term));
            }
            let _ = self.client().lease_client().revoke(lease).await;
            // Someone leads: wait until its key is gone (resigned, or its lease expired).
            let held = response.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            });
            let Some(held) = held else { continue };
            let options = WatchOptions::new().with_start_revision(held + 1);
            let mut watch = self.open_watch(key.clone(), options).await?;
            loop {
                tokio::select! {
                    _ = lost.cancelled() => return Err(StoreError::Other("stopped campaigning".into())),
                    message = watch.message() => match message {
                        Ok(Some(response)) if response.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => return Err(unavailable(e)),
                    },
                }
            }
        }
    }

    async fn resign(&self, fence: Fence) {
        let key = self.leader_key();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, etcd_revision(fence.0))])
            .and_then([TxnOp::delete(key, None)]);
        if let Err(e) = self.txn(txn).await {
            tracing::warn!(error = %e, "could not give the leadership up; another master takes over when its lease expires");
        }
    }

    async fn announce(&self, name: &str, stop: CancellationToken) -> Result<(), StoreError> {
        let key = format!("{}/masters/{name}", self.settings.prefix);
        let ttl = self.settings.leader_lease * 3;
        let mut lease = Some(self.listed(&key, ttl).await?);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Some(lease) = lease {
                    // Until `stop`, or until the lease is lost (etcd out of reach): then listed anew.
                    keep_alive(this.clone(), lease, ttl, stop.child_token()).await;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                lease = this.listed(&key, ttl).await.ok();
            }
        });
        Ok(())
    }

    async fn masters(&self) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{}/masters/", self.settings.prefix);
        let response = self.get(prefix.clone(), Some(GetOptions::new().with_prefix())).await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| kv.key().strip_prefix(prefix.as_bytes()).map(|name| String::from_utf8_lossy(name).into_owned()))
            .collect())
    }

    async fn share(&self, name: &str, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let key = format!("{}/shared/{name}", self.settings.prefix);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(value);
        }
        let kept = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        kept.ok_or_else(|| StoreError::Other(format!("`{name}` in etcd vanished while it was read")))
    }

    async fn publish_renewals(&self, master: &str, renewals: Vec<Renewal>) -> Result<(), StoreError> {
        let key = format!("{}/renewals/{master}", self.settings.prefix);
        let value = serde_json::to_vec(&renewals).map_err(StoreError::other)?;
        self.put(key, value, None).await
    }

    async fn renewals(&self) -> Result<BoxStream<'static, Vec<Renewal>>, StoreError> {
        let key = format!("{}/renewals/", self.settings.prefix);
        let stream = self.open_watch(key, WatchOptions::new().with_prefix()).await?;
        Ok(Box::pin(futures::stream::unfold(stream, |mut stream| async move {
            loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        let renewals: Vec<Renewal> = response
                            .events()
                            .iter()
                            .filter_map(|e| e.kv())
                            .filter_map(|kv| serde_json::from_slice::<Vec<Renewal>>(kv.value()).ok())
                            .flatten()
                            .collect();
                        if !renewals.is_empty() {
                            return Some((renewals, stream));
                        }
                    }
                    Ok(None) | Err(_) => return None,
                }
            }
        })))
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.reach(|c| async move { c.kv_client().compact(etcd_revision(revision), None).await }).await.map(drop)
    }

    async fn put_module(&self, digest: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let key = self.module_key(digest);
        if self.get(key.clone(), Some(GetOptions::new().with_count_only())).await?.count() > 0 {
            return Ok(());
        }
        let chunks = bytes.chunks(MODULE_CHUNK);
        let entry = ModuleEntry { size: bytes.len() as u64, chunks: chunks.len() as u64 };
        for (i, chunk) in chunks.enumerate() {
            self.put(format!("{key}/{i:06}"), chunk, None).await?;
        }
        // Last: a module is there only once every chunk is.
        self.put(key, serde_json::to_vec(&entry).map_err(StoreError::other)?, None).await?;
        Ok(())
    }

    async fn get_module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.module_key(digest);
        let response = self.get(key.clone(), None).await?;
        let Some(entry) = response.kvs().first() else { return Ok(None) };
        let entry: ModuleEntry =
            serde_json::from_slice(entry.value()).map_err(|e| StoreError::Other(format!("module {digest} in etcd: {e}")))?;
        let mut bytes = Vec::with_capacity(usize::try_from(entry.size).unwrap_or(0).min(1 << 30));
        // One chunk per request: a response stays far below gRPC's message limit.
        for i in 0..entry.chunks {
            let chunk = self.get(format!("{key}/{i:06}"), None).await?;
            let chunk = chunk.kvs().first().ok_or_else(|| StoreError::Other(format!("module {digest} in etcd lacks chunk {i}")))?;
            bytes.extend_from_slice(chunk.value());
        }
        let actual = format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if actual != digest || bytes.len() as u64 != entry.size {
            return Err(StoreError::Other(format!("module {digest} in etcd is damaged: its bytes are {actual}")));
        }
        Ok(Some(bytes))
    }

    async fn leader(&self) -> Result<Option<String>, StoreError> {
        let response = self.get(self.leader_key(), None).await?;
        Ok(response.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

/// Keeps a lease alive (the leader's, or a master's place on the list),
/// through another member when one goes away; cancels `lost` as soon as the
/// lease may have expired (not renewed within two thirds of it), so a leader
/// stops before another can start.
async fn keep_alive(store: EtcdStore, lease: i64, ttl: Duration, lost: CancellationToken) {
    let every = ttl / 3;
    let mut renewed = tokio::time::Instant::now();
    let why: String = 'kept: loop {
        if renewed.elapsed() > ttl - every {
            break format!("the lease was not renewed for {:?}", renewed.elapsed());
        }
        let at = store.current.load(Ordering::Relaxed);
        let mut leases = store.client().lease_client();
        let (mut keeper, mut answers) = match leases.keep_alive(lease).await {
            Ok(pair) => pair,
            Err(_) => {
                store.skip(at);
                tokio::time::sleep(every / 4).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = lost.cancelled() => break 'kept String::new(),
                _ = tick.tick() => {
                    if renewed.elapsed() > ttl - every {
                        break 'kept format!("the lease was not renewed for {:?}", renewed.elapsed());
                    }
                    if keeper.keep_alive().await.is_err() {
                        store.skip(at);
                        continue 'kept;
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => renewed = tokio::time::Instant::now(),
                    Ok(Some(_)) => break 'kept "the lease expired".to_string(),
                    // The member went away: go on through the next one.
                    Ok(None) | Err(_) => {
                        store.skip(at);
                        continue 'kept;
                    }
                },
            }
        }
    };
    if !why.is_empty() {
        tracing::warn!(reason = %why, lease, "an etcd lease was lost");
    }
    lost.cancel();
    let _ = store.client().lease_client().revoke(lease).await;
}
