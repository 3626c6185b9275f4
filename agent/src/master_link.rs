//! The agent's link to a master (`--master URL`): join, heartbeat, report,
//! receive the assignment, report instance phases, fetch modules.
//!
//! Every connection is opened by the agent, so a node behind NAT works.
//!
//! Trust: a first registration presents the join token, and only to a master
//! whose certificate chain holds the CA the token names (its fingerprint),
//! checked before anything is sent. It returns the node credential, kept in
//! `<data-dir>/credential.json` with the CA, and used from then on; the join
//! token is not used again. A refused credential (revoked) is reported and
//! retried, never replaced by the join token: an operator revoked it.
//!
//! Renewal: the master says when to renew (at two thirds of the credential's
//! or the node certificate's lifetime, whichever comes first); the agent then
//! asks for a new credential and certificate with its current credential,
//! saves them (atomically) before it uses them, and goes on without a
//! restart. A failed renewal is retried while the current one is still valid.
//!
//! The link survives a flaky network and a master that is away:
//! - failures are retried with jittered exponential back-off, while the
//!   instances keep running;
//! - the last assignment is kept in `<data-dir>/link/state.json`, so after a
//!   reboot without the master the agent runs it again on its own;
//! - the assignment is authoritative: the agent runs exactly its instances,
//!   under their epochs, and stops anything else the master no longer lists
//!   (fencing: a copy handed off elsewhere is stopped on reconnect);
//! - an instance whose workload sets `disconnect.stopOnAgentAfter` carries a
//!   fence: a deadline that only a heartbeat confirming the assignment (or a
//!   fresh assignment) moves forward. Past it the guest is stopped at its next
//!   epoch tick — even when the whole agent was frozen past the deadline — and
//!   it runs again only when the master still assigns it. With
//!   `stopOnAgentAfter < lostAfter` one replica never runs twice.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use wasmlet_api::protocol::{
    ApiError, Assignment, CHANNEL_VERSION, CredentialRenewal, HeldCredentials, ISOLATION_VERSION, InstanceStatusBatch,
    InstanceStatusUpdate, LeaseRenewal, LeaseResponse, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RegisterRequest, RegisterResponse,
    RenewedCredential, UNSUPPORTED_PROTOCOL_VERSION, instance_status_for_master, master_unsupported, node_status_for_master,
};
use wasmlet_api::{EventType, InstanceStatus, ModuleRef, NodeStatus, Taint};
use wasmlet_security::{Fingerprint, JoinToken};

use crate::executor::Fence;
use crate::grants::HostPathPolicy;
use crate::modules::{Module, ModuleSource, ModuleStore, PullError, Remote};
use crate::report::Report;
use crate::runtime::module::sha256_digest;
use crate::security::{ApiAuth, Credential, NodeIdentity};
use crate::supervisor::{DesiredInstance, Source, Supervisor};
use wasmlet_registry::RegistryAuth;

/// What the link is told at start.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Base URL of the master, e.g. `https://10.0.0.1:7070`, or of several
    /// masters of one cluster, comma-separated.
    pub master: String,
    pub join: Option<JoinToken>,
    /// What an earlier registration gave, from `<data-dir>/credential.json`.
    pub saved: Option<Credential>,
    pub node: String,
    pub taints: Vec<Taint>,
    pub data_dir: PathBuf,
    /// Host directories workloads may be granted.
    pub host_paths: HostPathPolicy,
    /// The port the agent's API listens on, so the master can serve its logs and live usage.
    pub api_port: u16,
    /// The port of the agent's ingress, so peers can forward service requests to it.
    pub ingress_port: u16,
    /// Talk to an `http://` master.
    pub insecure_http: bool,
    /// Learns the token the master presents to the API.
    pub auth: Arc<ApiAuth>,
    /// The node's key, whose certificate each registration and renewal replaces (None: plain HTTP API).
    pub identity: Option<Arc<NodeIdentity>>,
    /// Where module bytes are kept, whatever their source.
    pub modules: Arc<ModuleStore>,
    /// Modules named by URL or registry reference: downloaded by the node itself.
    pub remote: Arc<Remote>,
}

/// What survives a restart of the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SavedState {
    assignment: Assignment,
    last_contact: DateTime<Utc>,
}

/// Timings the master hands out at registration.
#[derive(Debug, Clone, Copy)]
struct Timings {
    heartbeat: Duration,
    status_report: Duration,
}

pub struct MasterLink {
    settings: LinkSettings,
    /// The cluster's masters (one, or several sharing a store), as `--master` lists them.
    masters: Vec<String>,
    /// The one requests go to; the next one after a failure to connect or a 5xx.
    current: std::sync::atomic::AtomicUsize,
    http: reqwest::Client,
    supervisor: Arc<Supervisor>,
    reports: watch::Receiver<Arc<Report>>,
    state: Mutex<LinkState>,
    /// Wakes the assignment loop (the lease answer named a newer revision, or a reconnect).
    fetch_now: Notify,
    /// One writer of the saved state at a time, so an older snapshot never lands after a newer one.
    persist: tokio::sync::Mutex<()>,
    /// Wakes the instance status loop to report every instance again: a new
    /// assignment may have reset what the master knows of them (a node back from silence).
    report_all: Notify,
    /// Uploaded modules, fetched from the master (through this link, held weakly:
    /// the supervisor's instances keep it and the link keeps the supervisor).
    uploaded: Arc<dyn ModuleSource>,
    /// Registry modules whose workload names credentials the master holds.
    held: Arc<dyn ModuleSource>,
    /// Counts the node credentials taken into use: the channels open again with each.
    credential_taken: watch::Sender<u64>,
}

struct LinkState {
    /// The node credential and what came with it, once registered with a join token.
    credential: Option<Credential>,
    /// The assignment being run, authoritative as of `last_contact`.
    assignment: Option<Assignment>,
    /// The last time the master answered.
    last_contact: Option<DateTime<Utc>>,
    last_saved: Option<DateTime<Utc>>,
    /// The fence of each assigned instance, by name.
    fences: HashMap<String, Fence>,
    /// When to renew the credential and the certificate (None: the master does not renew them).
    renew_at: Option<tokio::time::Instant>,
    /// The protocol the master speaks, as far as the agent knows: this
    /// build's until a registration is refused for a field the master does
    /// not know, or the master names an older one. What the agent sends
    /// follows it (`node_status_for_master`, `instance_status_for_master`).
    master_protocol: u32,
}

/// Why a request failed: the master answered with an error, or did not answer.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("the master answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the master at {url} cannot be reached: {}", wasmlet_security::error_chain(.source))]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{0}")]
    Local(String),
    /// The master's protocol versions and this agent's do not meet (either side found it).
    #[error("{0}")]
    Unsupported(String),
}

impl MasterLink {
    pub fn new(
        settings: LinkSettings,
        supervisor: Arc<Supervisor>,
        reports: watch::Receiver<Arc<Report>>,
    ) -> anyhow::Result<Arc<MasterLink>> {
        let masters: Vec<String> =
            settings.master.split(',').map(|m| m.trim().trim_end_matches('/').to_string()).filter(|m| !m.is_empty()).collect();
        if masters.is_empty() {
            bail!("--master is empty: give the URL of the master, or of each master comma-separated");
        }
        let mut settings = LinkSettings { master: masters.join(","), ..settings };
        let saved = settings.saved.take();
        let join = &settings.join;
        let pinned = match &saved {
            Some(credential) => {
                if credential.node != settings.node {
                    bail!(
                        "{} is the credential of node `{}`, not `{}`: keep the node's name, or delete the file and join again",
                        Credential::path(&settings.data_dir).display(),
                        credential.node,
                        settings.node
                    );
                }
                if join.is_some() {
                    tracing::info!(file = %Credential::path(&settings.data_dir).display(), "using the saved node credential; the join token is not needed any more");
                }
                credential.ca_fingerprint()?
            }
            None if join.is_none() => bail!(
                "no --join-token and no node credential in {}: create a join token on the master (`wasmlet-master token create`) and pass it",
                Credential::path(&settings.data_dir).display()
            ),
            None => join.as_ref().map(|j| j.ca),
        };
        let https = masters.iter().all(|m| m.starts_with("https://"));
        if let Some(plain) = masters.iter().find(|m| !m.starts_with("https://"))
            && !settings.insecure_http
        {
            bail!(
                "--master {plain} is plain HTTP: the join token and the node's credential would cross the network readable; use https:// (or --insecure-http for a lab)"
            );
        }
        // A request that hangs on a half-open connection must not stall the link:
        // every request has a deadline (the long poll and module downloads set their own).
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .tcp_keepalive(Duration::from_secs(15));
        match (https, pinned) {
            (true, Some(ca)) => http = http.use_preconfigured_tls(wasmlet_security::tls::client_pinned(ca)?),
            (true, None) => bail!(
                "the saved credential has no cluster CA, but --master {} is https://: delete {} and join again",
                settings.master,
                Credential::path(&settings.data_dir).display()
            ),
            (false, _) => tracing::warn!(master = %settings.master, "--insecure-http: talking to the master over plain HTTP"),
        }
        let http = http.build().context("building the HTTP client")?;
        Ok(Arc::new_cyclic(|link| MasterLink {
            settings,
            masters,
            current: std::sync::atomic::AtomicUsize::new(0),
            http,
            supervisor,
            reports,
            state: Mutex::new(LinkState {
                credential: saved,
                assignment: None,
                last_contact: None,
                last_saved: None,
                fences: HashMap::new(),
                renew_at: None,
                master_protocol: PROTOCOL_VERSION,
            }),
            fetch_now: Notify::new(),
            persist: tokio::sync::Mutex::new(()),
            report_all: Notify::new(),
            uploaded: Arc::new(Uploaded(link.clone())),
            held: Arc::new(WithHeldCredentials(link.clone())),
            credential_taken: watch::Sender::new(0),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The masters of `--master`.
    pub fn masters(&self) -> &[String] {
        &self.masters
    }

    /// Changes each time the node takes another credential into use.
    pub fn credential_changes(&self) -> watch::Receiver<u64> {
        self.credential_taken.subscribe()
    }

    /// The request that opens the node's channel to `master` (without its
    /// upgrade headers), once the node holds a credential and the master it
    /// talks to speaks a protocol with channels.
    pub fn channel_request(&self, master: &str) -> Option<reqwest::RequestBuilder> {
        let state = self.lock();
        let credential = state.credential.as_ref()?;
        if state.master_protocol < CHANNEL_VERSION {
            return None;
        }
        let url = format!("{master}/api/v1/nodes/{}/channel", self.settings.node);
        Some(self.http.get(url).bearer_auth(&credential.token))
    }

    fn link_dir(&self) -> PathBuf {
        self.settings.data_dir.join("link")
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.master())
    }

    /// The master requests go to now.
    fn master(&self) -> &str {
        let at = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.masters.len();
        &self.masters[at]
    }

    /// After the master at `failed` did not answer (or answered 5xx): the
    /// next request goes to the next master, when there are several.
    fn next_master(&self, failed: usize, why: &str) {
        use std::sync::atomic::Ordering;
        if self.masters.len() > 1 && self.current.compare_exchange(failed, failed + 1, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let (from, to) = (&self.masters[failed % self.masters.len()], &self.masters[(failed + 1) % self.masters.len()]);
            tracing::warn!(master = %from, next = %to, "{why}; trying the next master");
        }
    }

    /// Runs the link until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        self.resume_saved().await;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let registered = tokio::select! {
                r = self.register() => r,
                _ = stop.cancelled() => return,
            };
            match registered {
                Ok(timings) => {
                    backoff.reset();
                    tracing::info!(master = %self.master(), node = %self.settings.node, "registered with the master");
                    let session = stop.child_token();
                    tokio::select! {
                        reason = self.clone().connected(timings, session.clone()) => {
                            tracing::warn!(reason = %reason, "registering again");
                        }
                        _ = stop.cancelled() => {}
                    }
                    session.cancel();
                    if stop.is_cancelled() {
                        return;
                    }
                }
                Err(LinkError::Refused { status: 409, message }) => {
                    tracing::error!(retry_in = ?backoff.peek(), "the master refused to register node {}: {message}", self.settings.node);
                }
                Err(LinkError::Refused { status: 401, message }) => {
                    let presented = if self.lock().credential.is_some() {
                        format!("this node's credential ({})", Credential::path(&self.settings.data_dir).display())
                    } else {
                        "the join token".to_string()
                    };
                    tracing::error!(retry_in = ?backoff.peek(), "the master refused {presented}: {message}");
                }
                Err(LinkError::Unsupported(why)) => {
                    tracing::error!(master = %self.master(), retry_in = ?backoff.peek(), "cannot work with the master: {why}; workloads keep running");
                }
                Err(e) => tracing::warn!(error = %e, retry_in = ?backoff.peek(), "cannot register with the master; workloads keep running"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next()) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// After a restart: runs the saved assignment, except what has been
    /// silent past its `stopOnAgentAfter`.
    async fn resume_saved(&self) {
        let path = self.link_dir().join("state.json");
        let Ok(text) = tokio::fs::read(&path).await else { return };
        let saved: SavedState = match serde_json::from_slice(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable saved assignment");
                return;
            }
        };
        tracing::info!(instances = saved.assignment.instances.len(), last_contact = %saved.last_contact, "resuming the saved assignment");
        {
            let mut state = self.lock();
            state.last_contact = Some(saved.last_contact);
            state.assignment = Some(saved.assignment.clone());
        }
        // Fences count from the last time the master was heard, before the reboot.
        // Modules not on disk are pulled by their instances, which wait meanwhile.
        self.apply(&saved.assignment, None).await;
    }

    async fn register(&self) -> Result<Timings, LinkError> {
        let report = self.reports.borrow().clone();
        let serving_csr = self.signing_request()?;
        let bearer = match (&self.lock().credential, &self.settings.join) {
            (Some(credential), _) => credential.token.clone(),
            (None, Some(join)) => join.token.to_string(),
            (None, None) => String::new(),
        };
        let mut speaks = self.lock().master_protocol;
        let response: RegisterResponse = loop {
            let request = RegisterRequest {
                name: self.settings.node.clone(),
                // The report's labels: the configured ones and the node's own (arch, os, hostname).
                labels: report.node.metadata.labels.clone(),
                taints: self.settings.taints.clone(),
                status: node_status_for_master(report.node.status.clone(), speaks),
                protocol_version: (speaks >= 2).then_some(PROTOCOL_VERSION),
                // Sent with the version: a master of version 1 refuses both.
                min_protocol_version: (speaks >= 2).then_some(MIN_PROTOCOL_VERSION),
                serving_csr: serving_csr.clone(),
                api_port: Some(self.settings.api_port),
                api_url: None,
                ingress_port: Some(self.settings.ingress_port),
            };
            match self.send(self.http.post(self.url("/nodes/register")).bearer_auth(&bearer).json(&request)).await {
                // A master of version 3 or older refuses fields it does not know: speak the version the field says it has.
                Err(LinkError::Refused { status: 400, message }) if speaks > MIN_PROTOCOL_VERSION && message.contains("unknown field") => {
                    speaks = older_than_refused_field(speaks, &message).max(MIN_PROTOCOL_VERSION);
                    tracing::warn!(master = %self.master(), protocol = speaks, "{}", older_master(speaks));
                }
                Err(LinkError::Refused { message, .. }) if message.starts_with(UNSUPPORTED_PROTOCOL_VERSION) => {
                    return Err(LinkError::Unsupported(message));
                }
                answer => break answer?,
            }
        };
        let master = master_protocol(speaks, response.protocol_version);
        if let Some(why) = master_unsupported(master) {
            return Err(LinkError::Unsupported(why));
        }
        self.accept_registration(&response).map_err(|e| LinkError::Local(format!("{e:#}")))?;
        self.lock().master_protocol = master;
        Ok(Timings { heartbeat: response.heartbeat_interval.get(), status_report: response.status_report_interval.get() })
    }

    /// A master of version 3 or newer names its protocol in every lease
    /// answer to an agent of version 3 or newer; one that names none is older.
    /// So a master upgraded, or rolled back, under a running agent is noticed
    /// at the next heartbeat, and the agent sends what its version reads from then on.
    /// A master that now names a version older than this agent's minimum
    /// (rolled back too far) ends the session: the registration that follows
    /// says why, and is retried until the master is upgraded.
    fn learn_master_protocol(&self, named: Option<u32>) -> Result<(), String> {
        let (before, speaks) = {
            let mut state = self.lock();
            let speaks = master_protocol(state.master_protocol, named);
            (std::mem::replace(&mut state.master_protocol, speaks), speaks)
        };
        if before != speaks {
            tracing::info!(master = %self.master(), protocol = speaks, was = before, "the master speaks another protocol version now");
            self.report_all.notify_one();
        }
        master_unsupported(speaks).map_or(Ok(()), Err)
    }

    /// A signing request for the node's key (None without TLS).
    fn signing_request(&self) -> Result<Option<String>, LinkError> {
        let Some(identity) = &self.settings.identity else { return Ok(None) };
        let request = identity.request().map_err(|e| LinkError::Local(format!("cannot make the node's signing request: {e:#}")))?;
        Ok(Some(request))
    }

    /// Keeps what a registration gave: a new credential, the master's token, the API's certificate.
    fn accept_registration(&self, response: &RegisterResponse) -> anyhow::Result<()> {
        let data_dir = &self.settings.data_dir;
        let mut saved = self.lock().credential.clone();
        if let Some(token) = &response.credential {
            // The pinned verifier already checked the chain; the CA handed over must be that one too.
            if let (Some(pem), Some(join)) = (&response.ca_certificate, &self.settings.join)
                && Fingerprint::of_pem(pem)? != join.ca
            {
                bail!("the master sent a CA other than the join token's (sha256 {}): not saving its credential", join.ca);
            }
            saved = Some(Credential {
                node: self.settings.node.clone(),
                master: self.settings.master.clone(),
                token: token.clone(),
                master_token: response.master_token.clone(),
                ca_certificate: response.ca_certificate.clone(),
                nodes_ca_certificate: None,
            });
            tracing::info!(file = %Credential::path(data_dir).display(), "joined: saved this node's credential");
        }
        if let Some(credential) = &mut saved {
            let nodes_ca = response.nodes_ca_certificate.clone().or_else(|| credential.nodes_ca_certificate.clone());
            if credential.master_token != response.master_token
                || response.credential.is_some()
                || credential.nodes_ca_certificate != nodes_ca
            {
                credential.master_token = response.master_token.clone();
                credential.nodes_ca_certificate = nodes_ca;
                credential.save(data_dir)?;
            }
        }
        if saved.is_some() {
            let changed = self.lock().credential.as_ref().map(|c| &c.token) != saved.as_ref().map(|c| &c.token);
            self.lock().credential = saved;
            if changed {
                self.credential_taken.send_modify(|n| *n += 1);
            }
        }
        self.settings.auth.set_master(response.master_token.clone());
        if let (Some(identity), Some(chain)) = (&self.settings.identity, &response.serving_certificate) {
            identity.install(chain, response.nodes_ca_certificate.as_deref())?;
        }
        self.lock().renew_at = response.renew_after.map(|after| tokio::time::Instant::now() + after.get());
        Ok(())
    }

    /// Renews the credential and the certificate when the master said to,
    /// retrying while the current ones are still valid. Returns why the session ended.
    async fn renewal_loop(self: Arc<Self>, session: CancellationToken) -> String {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        loop {
            let Some(due) = self.lock().renew_at else {
                session.cancelled().await;
                return "stopping".into();
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = session.cancelled() => return "stopping".into(),
            }
            match self.renew().await {
                Ok(()) => backoff.reset(),
                Err(LinkError::Refused { status: status @ (401 | 403 | 404), message }) => {
                    return format!("the master refused to renew this node's credential ({status}): {message}");
                }
                Err(e) => {
                    let retry = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?retry, "cannot renew this node's credential yet; the current one is still valid");
                    self.lock().renew_at = Some(tokio::time::Instant::now() + retry);
                }
            }
        }
    }

    /// Gets a new credential and certificate, saves them, and uses them from now on.
    async fn renew(&self) -> Result<(), LinkError> {
        let request = CredentialRenewal { serving_csr: self.signing_request()? };
        let path = format!("/nodes/{}/credential", self.settings.node);
        let renewed: RenewedCredential = self.send(self.authorized(self.http.post(self.url(&path))).json(&request)).await?;
        let Some(mut credential) = self.lock().credential.clone() else {
            return Err(LinkError::Local("no credential to renew".into()));
        };
        credential.token = renewed.credential.clone();
        if renewed.nodes_ca_certificate.is_some() {
            credential.nodes_ca_certificate = renewed.nodes_ca_certificate.clone();
        }
        // Saved before it is used: after a crash the agent starts with the credential the master knows.
        credential.save(&self.settings.data_dir).map_err(|e| LinkError::Local(format!("cannot save the renewed credential: {e:#}")))?;
        self.lock().credential = Some(credential);
        self.credential_taken.send_modify(|n| *n += 1);
        if let (Some(identity), Some(chain)) = (&self.settings.identity, &renewed.serving_certificate) {
            identity
                .install(chain, renewed.nodes_ca_certificate.as_deref())
                .map_err(|e| LinkError::Local(format!("cannot install the renewed certificate: {e:#}")))?;
        }
        self.lock().renew_at = Some(tokio::time::Instant::now() + renewed.renew_after.get());
        tracing::info!(renew_after = %renewed.renew_after, "renewed this node's credential and certificate");
        Ok(())
    }

    /// The loops of a registered session. Returns why the session ended.
    async fn connected(self: Arc<Self>, timings: Timings, session: CancellationToken) -> String {
        self.contact(Utc::now());
        self.fetch_now.notify_one();
        let tasks = [
            tokio::spawn(self.clone().lease_loop(timings, session.clone())),
            tokio::spawn(self.clone().status_loop(timings, session.clone())),
            tokio::spawn(self.clone().assignment_loop(session.clone())),
            tokio::spawn(self.clone().instance_status_loop(session.clone())),
            tokio::spawn(self.clone().endpoints_loop(session.clone())),
            tokio::spawn(self.clone().renewal_loop(session.clone())),
        ];
        let (ended, _, rest) = futures::future::select_all(tasks).await;
        for task in rest {
            task.abort();
        }
        ended.unwrap_or_else(|e| format!("a link task failed: {e}"))
    }

    /// The master answered a request sent at `sent_at`.
    fn contact(self: &Arc<Self>, sent_at: DateTime<Utc>) {
        {
            let mut state = self.lock();
            if state.last_contact.is_none_or(|last| last < sent_at) {
                state.last_contact = Some(sent_at);
            }
        }
        self.save_contact();
    }

    /// Moves every fence to now + its workload's `stopOnAgentAfter`: the
    /// master has just confirmed the assignment as it is run.
    fn extend_fences(&self, from: DateTime<Utc>) {
        let state = self.lock();
        let Some(assignment) = &state.assignment else { return };
        for assigned in &assignment.instances {
            let Some(fence) = state.fences.get(&assigned.instance.metadata.name) else { continue };
            match assigned.workload.spec.disconnect.stop_on_agent_after {
                Some(limit) => {
                    let limit = chrono::Duration::from_std(limit.get()).unwrap_or(chrono::Duration::MAX);
                    fence.set_deadline(from.checked_add_signed(limit).map_or(i64::MAX, |d| d.timestamp_millis()));
                }
                None => fence.set_deadline(i64::MAX),
            }
        }
    }

    async fn lease_loop(self: Arc<Self>, timings: Timings, session: CancellationToken) -> String {
        let path = format!("/nodes/{}/lease", self.settings.node);
        let mut failing_since: Option<DateTime<Utc>> = None;
        loop {
            let revision = self.lock().assignment.as_ref().map_or(0, |a| a.revision);
            let renewal = LeaseRenewal { assignment_revision: revision };
            // Fences count from when the request left, not from when the answer came back.
            let sent_at = Utc::now();
            match self.send::<LeaseResponse>(self.authorized(self.http.put(self.url(&path))).json(&renewal)).await {
                Ok(response) => {
                    if failing_since.take().is_some() {
                        tracing::info!("the master answers again");
                    }
                    self.contact(sent_at);
                    if let Err(why) = self.learn_master_protocol(response.protocol_version) {
                        return format!("cannot work with the master: {why}");
                    }
                    if response.assignment_revision == revision {
                        self.extend_fences(sent_at);
                    } else {
                        // Only the new assignment may lift fences: instances may have been handed off.
                        self.fetch_now.notify_one();
                    }
                }
                Err(LinkError::Refused { status: 404 | 401, message }) => {
                    return format!("the master no longer knows this node: {message}");
                }
                Err(LinkError::Refused { message, .. }) if message.starts_with(UNSUPPORTED_PROTOCOL_VERSION) => {
                    return format!("the master no longer serves this agent's protocol versions: {message}");
                }
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::warn!(error = %e, "heartbeat failed; workloads keep running");
                        failing_since = Some(Utc::now());
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(jitter(timings.heartbeat, 0.1)) => {}
                _ = session.cancelled() => return "stopping".into(),
            }
        }
    }

    /// Pushes NodeStatus when something other than live usage changed, and
    /// at least every status report interval.
    async fn status_loop(self: Arc<Self>, timings: Timings, session: CancellationToken) -> String {
        let path = format!("/nodes/{}/status", self.settings.node);
        let mut reports = self.reports.clone();
        let mut last_sent: Option<(String, tokio::time::Instant)> = None;
        loop {
            let report = reports.borrow_and_update().clone();
            let master = self.lock().master_protocol;
            let status = node_status_for_master(report.node.status.clone(), master);
            let fingerprint = significant(&status);
            let due = match &last_sent {
                None => true,
                Some((sent, at)) => *sent != fingerprint || at.elapsed() >= timings.status_report,
            };
            if due {
                let sent_at = Utc::now();
                match self.send::<serde_json::Value>(self.authorized(self.http.put(self.url(&path))).json(&status)).await {
                    Ok(_) => {
                        self.contact(sent_at);
                        last_sent = Some((fingerprint, tokio::time::Instant::now()));
                    }
                    Err(LinkError::Refused { status: 404 | 401, message }) => return format!("status refused: {message}"),
                    Err(e) => tracing::debug!(error = %e, "status report failed; retrying"),
                }
            }
            tokio::select! {
                _ = reports.changed() => {}
                _ = tokio::time::sleep(timings.status_report.min(Duration::from_secs(5))) => {}
                _ = session.cancelled() => return "stopping".into(),
            }
        }
    }

    /// Watches the node's assignment and applies each new one.
    async fn assignment_loop(self: Arc<Self>, session: CancellationToken) -> String {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
        loop {
            let since = self.lock().assignment.as_ref().map_or(0, |a| a.revision);
            let path = format!("/nodes/{}/assignment?watch=true&since={since}&timeoutSeconds=30", self.settings.node);
            let request = self.authorized(self.http.get(self.url(&path))).timeout(Duration::from_secs(45));
            let sent_at = Utc::now();
            let fetched = tokio::select! {
                r = self.send_optional::<Assignment>(request) => r,
                _ = session.cancelled() => return "stopping".into(),
            };
            match fetched {
                Ok(Some(assignment)) => {
                    self.contact(sent_at);
                    self.apply(&assignment, Some(sent_at)).await;
                    backoff.reset();
                }
                Ok(None) => {
                    self.contact(sent_at);
                    backoff.reset();
                }
                Err(LinkError::Refused { status: 404 | 401, message }) => return format!("assignment refused: {message}"),
                Err(e) => {
                    tracing::debug!(error = %e, "assignment watch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next()) => {}
                        _ = self.fetch_now.notified() => {}
                        _ = session.cancelled() => return "stopping".into(),
                    }
                }
            }
        }
    }

    async fn sleep_or_stop(&self, delay: Duration, session: &CancellationToken) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = session.cancelled() => {}
        }
    }

    /// Runs exactly the assignment's instances: reconciles the supervisor
    /// (each instance pulls its module, from the master or its URL, and waits
    /// in `ModulePullBackOff` while it cannot), saves the assignment.
    /// `fetched_at` is when a fresh assignment was requested (None: the saved
    /// one, after a reboot).
    async fn apply(&self, assignment: &Assignment, fetched_at: Option<DateTime<Utc>>) {
        let mut desired = Vec::with_capacity(assignment.instances.len());
        for assigned in &assignment.instances {
            let workload = &assigned.workload;
            let wanted = &workload.spec.module;
            let source = match (&wanted.oci, &wanted.credentials) {
                (Some(_), Some(_)) => self.held.clone(),
                _ => self.settings.remote.source_of(wanted).unwrap_or_else(|| self.uploaded.clone()),
            };
            let module = Module::Pull { module: wanted.clone(), store: self.settings.modules.clone(), source };
            let (host_dirs, refused) = match self.settings.host_paths.resolve(&workload.spec.dirs) {
                Ok(dirs) => (dirs, None),
                Err(why) => (Vec::new(), Some(why)),
            };
            let epoch = assigned.instance.spec.epoch;
            let fence = self.lock().fences.entry(assigned.instance.metadata.name.clone()).or_default().clone();
            let spec_json = serde_json::to_vec(&workload.spec).unwrap_or_default();
            desired.push(DesiredInstance {
                name: assigned.instance.metadata.name.clone(),
                workload: Arc::new(workload.clone()),
                module,
                host_dirs,
                generation: format!("{epoch}-{}", &sha256_digest(&spec_json)[7..23]),
                epoch,
                refused,
                fence,
            });
        }
        let contact = {
            let mut state = self.lock();
            if let Some(at) = fetched_at
                && state.last_contact.is_none_or(|last| last < at)
            {
                state.last_contact = Some(at);
            }
            state.assignment = Some(assignment.clone());
            let names: BTreeSet<&String> = assignment.instances.iter().map(|a| &a.instance.metadata.name).collect();
            state.fences.retain(|name, _| names.contains(name));
            let digests: BTreeSet<&String> = assignment.instances.iter().map(|a| &a.workload.spec.module.digest).collect();
            self.settings.modules.retain(&digests);
            state.last_contact.unwrap_or_else(Utc::now)
        };
        self.extend_fences(contact);
        let fenced: Vec<String> =
            self.supervisor.epochs(Source::Master).into_keys().filter(|name| !desired.iter().any(|d| &d.name == name)).collect();
        for name in &fenced {
            self.supervisor.events.record(
                EventType::Normal,
                "Fenced",
                "Instance",
                name,
                "not in the master's assignment any more: stopped",
            );
        }
        // Reconcile first: nothing may cancel the link between deciding and doing.
        self.supervisor.reconcile(Source::Master, desired);
        if fetched_at.is_some() {
            self.report_all.notify_one();
        }
        self.save().await;
    }

    async fn fetch_uploaded(&self, digest: &str, limit: u64) -> Result<Vec<u8>, PullError> {
        let what = format!("module {digest}");
        let response = self.get_for_pull(&format!("/modules/{digest}"), Duration::from_secs(600), &what).await?;
        if response.content_length().is_some_and(|length| length > limit) {
            return Err(PullError::TooLarge { limit });
        }
        let bytes = response.bytes().await.map_err(|e| PullError::Unreachable(format!("the module from the master broke off: {e}")))?;
        if bytes.len() as u64 > limit {
            return Err(PullError::TooLarge { limit });
        }
        Ok(bytes.to_vec())
    }

    /// The registry credentials `name` the master holds for this node's workloads.
    async fn registry_credentials(&self, name: &str) -> Result<(String, RegistryAuth), PullError> {
        let what = format!("registry credentials `{name}`");
        let path = format!("/nodes/{}/registry-credentials/{name}", self.settings.node);
        let response = self.get_for_pull(&path, Duration::from_secs(30), &what).await?;
        let body = response.bytes().await.map_err(|e| PullError::Unreachable(format!("{what} from the master: {e}")))?;
        let held: HeldCredentials =
            wasmlet_api::decode::from_wire(&body).map_err(|e| PullError::Unreachable(format!("{what} from the master: {e}")))?;
        Ok((held.registry, RegistryAuth::Basic(held.username, held.password)))
    }

    /// `GET path` from the master for a pull: a master that cannot be reached
    /// or fails (the next one is tried) is Unreachable, any other refusal Refused.
    async fn get_for_pull(&self, path: &str, timeout: Duration, what: &str) -> Result<reqwest::Response, PullError> {
        let at = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let response = match self.authorized(self.http.get(self.url(path))).timeout(timeout).send().await {
            Ok(response) => response,
            Err(e) => {
                self.next_master(at, "the master cannot be reached");
                return Err(PullError::Unreachable(format!("cannot fetch {what} from the master: {e}")));
            }
        };
        let status = response.status();
        if status.is_server_error() {
            self.next_master(at, &format!("the master answered {status}"));
            return Err(PullError::Unreachable(format!("the master answered {status} for {what}")));
        }
        if !status.is_success() {
            return Err(PullError::Refused(format!("the master answered {status} for {what}")));
        }
        Ok(response)
    }

    /// Watches where every service can be reached, for the ingress to forward
    /// requests for services without a Ready instance here.
    async fn endpoints_loop(self: Arc<Self>, session: CancellationToken) -> String {
        let mut since = 0;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
        loop {
            let path = format!("/endpoints?watch=true&since={since}&timeoutSeconds=30");
            let request = self.authorized(self.http.get(self.url(&path))).timeout(Duration::from_secs(45));
            let fetched = tokio::select! {
                r = self.send_optional::<wasmlet_api::protocol::List<wasmlet_api::protocol::ServiceEndpoints>>(request) => r,
                _ = session.cancelled() => return "stopping".into(),
            };
            match fetched {
                Ok(Some(list)) => {
                    since = list.revision;
                    *self.supervisor.remote_endpoints.write().unwrap_or_else(|p| p.into_inner()) = list.items;
                    backoff.reset();
                }
                Ok(None) => backoff.reset(),
                Err(LinkError::Refused { status: 404 | 401, message }) => return format!("endpoints refused: {message}"),
                // The revision is one the cluster never reached (its store was replaced): list again.
                Err(LinkError::Refused { status: 410, .. }) => since = 0,
                Err(e) => {
                    tracing::debug!(error = %e, "endpoints watch failed; retrying");
                    self.sleep_or_stop(backoff.next(), &session).await;
                }
            }
        }
    }

    /// Sends changed instance phases to the master in batches.
    async fn instance_status_loop(self: Arc<Self>, session: CancellationToken) -> String {
        let path = format!("/nodes/{}/instances/status", self.settings.node);
        let mut changes = self.supervisor.changed.subscribe();
        let mut sent: HashMap<String, InstanceStatus> = HashMap::new();
        loop {
            let master = self.lock().master_protocol;
            let updates: Vec<InstanceStatusUpdate> = self
                .supervisor
                .instances_of(Source::Master)
                .into_iter()
                .filter(|i| sent.get(&i.metadata.name).is_none_or(|s| reportable(s) != reportable(&i.status)))
                .map(|i| InstanceStatusUpdate {
                    name: i.metadata.name.clone(),
                    epoch: i.spec.epoch,
                    status: instance_status_for_master(i.status, master),
                })
                .collect();
            // Forget what was sent for instances that are gone: a name assigned
            // again (a node back from silence) must be reported afresh.
            let current = self.supervisor.epochs(Source::Master);
            sent.retain(|name, _| current.contains_key(name));
            if !updates.is_empty() {
                let batch = InstanceStatusBatch { updates: updates.clone() };
                let sent_at = Utc::now();
                match self.send_optional::<serde_json::Value>(self.authorized(self.http.put(self.url(&path))).json(&batch)).await {
                    Ok(_) => {
                        self.contact(sent_at);
                        for u in updates {
                            sent.insert(u.name, u.status);
                        }
                    }
                    Err(LinkError::Refused { status: 404 | 401, message }) => return format!("instance status refused: {message}"),
                    Err(e) => {
                        tracing::debug!(error = %e, "instance status report failed; retrying");
                        self.sleep_or_stop(Duration::from_secs(1), &session).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = changes.changed() => {
                    // Let a burst of changes settle into one batch.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = self.report_all.notified() => sent.clear(),
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = session.cancelled() => return "stopping".into(),
            }
        }
    }

    /// Saves the time of the last contact now and then (at most every 10 s:
    /// flash storage on small boards wears out).
    fn save_contact(self: &Arc<Self>) {
        let due = {
            let state = self.lock();
            match (state.last_saved, state.last_contact) {
                (Some(saved), Some(contact)) => (contact - saved).num_seconds() >= 10,
                _ => true,
            }
        };
        if due {
            let link = self.clone();
            tokio::spawn(async move { link.save().await });
        }
    }

    /// Writes the assignment and the last contact, one writer at a time,
    /// taking the snapshot under the writer's lock so the newest state lands last.
    async fn save(&self) {
        let _writer = self.persist.lock().await;
        let saved = {
            let mut state = self.lock();
            let Some(assignment) = state.assignment.clone() else { return };
            let last_contact = state.last_contact.unwrap_or_else(Utc::now);
            state.last_saved = Some(last_contact);
            SavedState { assignment, last_contact }
        };
        match serde_json::to_vec(&saved) {
            Ok(bytes) => {
                if let Err(e) = write_durably(&self.link_dir().join("state.json"), &bytes).await {
                    tracing::warn!(error = %e, "cannot save the assignment; after a reboot without the master it would not run");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the assignment"),
        }
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.lock().credential {
            Some(credential) => request.bearer_auth(&credential.token),
            None => request,
        }
    }

    async fn send<T: serde::de::DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, LinkError> {
        match self.send_optional(request).await? {
            Some(value) => Ok(value),
            None => Err(LinkError::Refused { status: 304, message: "nothing changed".into() }),
        }
    }

    /// Sends a request; `None` for 204/304 answers.
    async fn send_optional<T: serde::de::DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<Option<T>, LinkError> {
        let at = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let url = self.master().to_string();
        let response = match request.send().await {
            Ok(response) => response,
            Err(source) => {
                self.next_master(at, "the master cannot be reached");
                return Err(LinkError::Unreachable { url, source });
            }
        };
        let status = response.status();
        if status.is_server_error() {
            self.next_master(at, &format!("the master answered {status}"));
        }
        if status == reqwest::StatusCode::NOT_MODIFIED || status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let body = response.bytes().await.map_err(|source| LinkError::Unreachable { url, source })?;
        if !status.is_success() {
            let message = wasmlet_api::decode::from_wire::<ApiError>(&body)
                .map(|e| format!("{}: {}", e.reason, e.message))
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
            return Err(LinkError::Refused { status: status.as_u16(), message });
        }
        if body.is_empty() {
            return Ok(None);
        }
        wasmlet_api::decode::from_wire(&body)
            .map(Some)
            .map_err(|e| LinkError::Refused { status: status.as_u16(), message: format!("an answer this agent cannot read: {e}") })
    }
}

/// What an agent that spoke protocol `spoken` to a master may send it after an
/// answer (registration or lease) naming `named`: a master that names none
/// speaks version 2 or older.
fn master_protocol(spoken: u32, named: Option<u32>) -> u32 {
    match named {
        Some(version) => version.min(PROTOCOL_VERSION),
        None => spoken.min(ISOLATION_VERSION - 1),
    }
}

/// The newest version a master that refused a field as unknown (named in
/// `message`, as serde names it) can speak, below `speaks`: masters of
/// version 4 and newer refuse none, those of version 2 and 3 only fields of
/// a newer version, and those of version 1 the version itself.
fn older_than_refused_field(speaks: u32, message: &str) -> u32 {
    let field = message.split("unknown field `").nth(1).and_then(|rest| rest.split('`').next()).unwrap_or_default();
    if field == "protocolVersion" || field == "minProtocolVersion" {
        1
    } else if wasmlet_api::protocol::VERSION_3_KEYS.contains(&field) {
        speaks.min(ISOLATION_VERSION) - 1
    } else {
        speaks.min(ISOLATION_VERSION + 1) - 1
    }
}

/// What the agent gives up while the master speaks an older protocol.
fn older_master(speaks: u32) -> &'static str {
    match speaks {
        0 | 1 => "the master is of an older version: no renewals and no TLS between ingresses until it is upgraded",
        _ => {
            "the master is of an older version: it is not told this node's isolation modes nor its instances' cgroup figures (and places no workload that needs process isolation here) until it is upgraded"
        }
    }
}

/// What of an instance status is worth telling the master (not live usage).
fn reportable(s: &InstanceStatus) -> (wasmlet_api::Phase, u32, Option<i32>, Option<String>) {
    (s.phase, s.restarts, s.exit_code, s.reason.clone())
}

/// The parts of NodeStatus whose change is worth a report (not live usage
/// or heartbeat times, which the lease and the periodic report carry).
fn significant(status: &NodeStatus) -> String {
    let conditions: Vec<String> = status.conditions.iter().map(|c| format!("{}={}/{}", c.kind, c.status, c.reason)).collect();
    serde_json::json!({
        "capacity": status.capacity,
        "allocatable": status.allocatable,
        "conditions": conditions,
        "addresses": status.addresses,
        "nodeInfo": status.node_info,
        "instances": status.instances,
        "runtime": status.runtime,
    })
    .to_string()
}

/// Writes the file so that after a crash or a power cut it holds either the
/// old or the new content, never a mix or nothing: synced before it is renamed into place.
async fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = tokio::fs::File::create(&tmp).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, path).await
}

/// Registry modules whose workload names credentials the master holds: the
/// credentials are fetched from it for each pull (never kept), then the
/// registry is asked with them.
struct WithHeldCredentials(std::sync::Weak<MasterLink>);

impl ModuleSource for WithHeldCredentials {
    fn fetch<'a>(&'a self, module: &'a ModuleRef, limit: u64) -> futures::future::BoxFuture<'a, Result<Vec<u8>, PullError>> {
        Box::pin(async move {
            let Some(link) = self.0.upgrade() else {
                return Err(PullError::Unreachable("the agent is leaving the master".to_string()));
            };
            let name = module.credentials.as_deref().unwrap_or_default();
            let (registry, auth) = link.registry_credentials(name).await?;
            // Presented to their own registry only, whatever the master says.
            let module_registry =
                module.oci.as_deref().and_then(|r| wasmlet_registry::parse(r).ok()).map(|r| r.resolve_registry().to_string());
            if module_registry.as_deref() != Some(registry.as_str()) {
                return Err(PullError::Refused(format!(
                    "registry credentials `{name}` are for {registry}, not the registry of {}",
                    module.origin()
                )));
            }
            link.settings.remote.registries.pull_with(module, &auth, limit).await
        })
    }
}

/// Uploaded modules: from the master, by digest, through the link while it lives.
struct Uploaded(std::sync::Weak<MasterLink>);

impl ModuleSource for Uploaded {
    fn fetch<'a>(&'a self, module: &'a ModuleRef, limit: u64) -> futures::future::BoxFuture<'a, Result<Vec<u8>, PullError>> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(link) => link.fetch_uploaded(&module.digest, limit).await,
                None => Err(PullError::Unreachable("the agent is leaving the master".to_string())),
            }
        })
    }
}

/// `base` ± `fraction`, so a fleet does not beat in step.
fn jitter(base: Duration, fraction: f64) -> Duration {
    let nanos = Utc::now().timestamp_subsec_nanos() as f64 / 1e9; // cheap entropy, good enough to spread a fleet
    base.mul_f64(1.0 + fraction * (2.0 * nanos - 1.0))
}

/// Exponential back-off with jitter.
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max, current: initial }
    }

    fn peek(&self) -> Duration {
        self.current
    }

    pub(crate) fn next(&mut self) -> Duration {
        let delay = jitter(self.current, 0.2);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_field_says_how_old_the_master_is() {
        let refused = |field: &str| format!("Invalid: the registration cannot be decoded: unknown field `{field}`, expected one of `name`");
        assert_eq!(older_than_refused_field(PROTOCOL_VERSION, &refused("protocolVersion")), 1);
        assert_eq!(older_than_refused_field(PROTOCOL_VERSION, &refused("isolation")), 2);
        assert_eq!(older_than_refused_field(3, &refused("cgroups")), 2);
        assert_eq!(older_than_refused_field(PROTOCOL_VERSION, &refused("peerUrl")), 3, "no master of version 4 or newer refuses a field");
        assert_eq!(older_than_refused_field(3, &refused("peerUrl")), 2);
    }

    #[test]
    fn the_master_protocol_is_what_the_master_names_or_at_most_version_2() {
        // A master of version 3 or newer names its own; the agent speaks at most its own.
        assert_eq!(master_protocol(PROTOCOL_VERSION, Some(3)), 3);
        assert_eq!(master_protocol(PROTOCOL_VERSION, Some(PROTOCOL_VERSION + 5)), PROTOCOL_VERSION);
        // An older master names none: version 2, or 1 when it refused version 2's fields.
        assert_eq!(master_protocol(PROTOCOL_VERSION, None), 2);
        assert_eq!(master_protocol(1, None), 1);
        // Rolled back under a running agent, it names none any more; upgraded again, it names its own.
        assert_eq!(master_protocol(3, None), 2);
        assert_eq!(master_protocol(2, Some(3)), 3);
        assert!(older_master(2).contains("isolation") && older_master(1).contains("renewals"));
    }
}
