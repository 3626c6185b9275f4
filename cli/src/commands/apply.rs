//! `wasmlet apply -f FILE|DIR|- [--wait]`: uploads local modules, then creates
//! each workload or changes it when its spec differs; with `--wait`, follows
//! its replicas until they run, and fails with the reason when they cannot.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use clap::Args;
use reqwest::Method;
use wasmlet_api::protocol::List;
use wasmlet_api::{Event, Instance, Phase, Workload, WorkloadType};

use super::{Session, note, print};
use crate::client::Client;
use crate::manifest::{self, Document, ModuleFile};
use crate::{Error, Result};

/// Files larger than this get a progress bar on a terminal.
const PROGRESS_THRESHOLD: u64 = 1 << 20;

/// Create or update workloads from manifests.
#[derive(Debug, Args)]
pub struct Apply {
    /// A manifest file, a directory of them, or `-` for stdin (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Wait until every workload has its desired instances Running.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "2m")]
    timeout: wasmlet_api::Duration,
}

/// What happened to one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

impl Apply {
    pub fn execute(self, session: &Session) -> Result<()> {
        let documents = manifest::read(&self.files, true)?;
        let client = session.client()?;
        // Every module is checked (and missing ones looked up) before anything is written.
        let mut problems = Vec::new();
        for doc in &documents {
            if let ModuleFile::Missing { path } = &doc.module
                && !module_uploaded(&client, &doc.workload.spec.module.digest)?
            {
                problems.push(format!(
                    "{}: spec.module.source: {} does not exist here and the master does not have module {}",
                    doc.origin,
                    path.display(),
                    doc.workload.spec.module.digest
                ));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Manifest(problems));
        }
        for doc in &documents {
            if let ModuleFile::Local { path, size } = &doc.module {
                upload(&client, doc, path, *size)?;
            }
            let outcome = apply_one(&client, &doc.workload)?;
            print(&format!("workload/{} {}\n", doc.workload.metadata.name, outcome.as_str()));
        }
        if self.wait {
            let names: Vec<String> = documents.iter().map(|d| d.workload.metadata.name.clone()).collect();
            wait_running(&client, &names, self.timeout.get())?;
        }
        Ok(())
    }
}

fn module_uploaded(client: &Client, digest: &str) -> Result<bool> {
    match client.send(client.request(Method::HEAD, &format!("/modules/{digest}"))) {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// `PUT /modules/{digest}` unless the master has it; a progress bar for large files on a terminal.
fn upload(client: &Client, doc: &Document, path: &std::path::Path, size: u64) -> Result<()> {
    let digest = &doc.workload.spec.module.digest;
    if module_uploaded(client, digest)? {
        return Ok(());
    }
    let file = std::fs::File::open(path).map_err(|e| Error::Failed(format!("{}: cannot read {}: {e}", doc.origin, path.display())))?;
    let request = client.request(Method::PUT, &format!("/modules/{digest}")).timeout(Duration::from_secs(600));
    let request = if size > PROGRESS_THRESHOLD && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(size).with_message(format!("uploading {}", path.display()));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        request.body(reqwest::blocking::Body::sized(bar.wrap_read(file), size))
    } else {
        request.body(reqwest::blocking::Body::sized(file, size))
    };
    client.send(request).map_err(|e| match e {
        Error::Api { message, .. } => Error::Failed(format!("{}: uploading {}: {message}", doc.origin, path.display())),
        other => other,
    })?;
    Ok(())
}

/// Creates the workload, or replaces it (naming the resourceVersion it read) when it differs.
pub fn apply_one(client: &Client, workload: &Workload) -> Result<Outcome> {
    let name = &workload.metadata.name;
    let Some(current) = client.get_opt::<Workload>(&format!("/workloads/{name}"))? else {
        let _: serde_json::Value = client.send_json(Method::POST, "/workloads", workload)?;
        return Ok(Outcome::Created);
    };
    let same = current.spec == workload.spec
        && current.metadata.labels == workload.metadata.labels
        && current.metadata.annotations == workload.metadata.annotations;
    if same {
        return Ok(Outcome::Unchanged);
    }
    let mut desired = workload.clone();
    desired.metadata.resource_version = current.metadata.resource_version;
    desired.status = None;
    let stored: Workload = client.send_json(Method::PUT, &format!("/workloads/{name}"), &desired)?;
    // A registry tag is pinned by the master: the same tag, where it still names the same module, changes nothing.
    let same = stored.spec == current.spec
        && stored.metadata.labels == current.metadata.labels
        && stored.metadata.annotations == current.metadata.annotations;
    Ok(if same { Outcome::Unchanged } else { Outcome::Configured })
}

/// Polls until each workload has its desired instances Running (jobs: Running or Succeeded).
fn wait_running(client: &Client, names: &[String], timeout: Duration) -> Result<()> {
    let deadline = wasmlet_api::duration::deadline(Instant::now(), timeout);
    let mut last_line: Vec<String> = vec![String::new(); names.len()];
    loop {
        let instances: List<Instance> = client.list("/instances", None)?;
        let mut done = 0;
        for (i, name) in names.iter().enumerate() {
            let workload: Workload = client.get(&format!("/workloads/{name}"))?;
            let status = workload.status.clone().unwrap_or_default();
            let mine: Vec<&Instance> = instances.items.iter().filter(|x| x.spec.workload == *name).collect();
            if let Some(failed) = mine.iter().find(|x| x.status.phase == Phase::Failed) {
                return Err(Error::Failed(format!(
                    "workload/{name}: instance {} on {} failed: {}: {}",
                    failed.metadata.name,
                    failed.spec.node,
                    failed.status.reason.as_deref().unwrap_or("Failed"),
                    failed.status.message.as_deref().unwrap_or("no message")
                )));
            }
            let running = if workload.spec.kind == WorkloadType::Job { status.running + status.succeeded } else { status.running };
            let line = format!("workload/{name}: {running}/{} running", status.desired);
            if line != last_line[i] {
                note(&line);
                last_line[i] = line;
            }
            if status.desired > 0 && running >= status.desired {
                done += 1;
            }
        }
        if done == names.len() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Failed(timeout_reason(client, names, &instances.items, timeout)));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Why the wait ran out: the newest FailedScheduling event, else what the instances say.
fn timeout_reason(client: &Client, names: &[String], instances: &[Instance], timeout: Duration) -> String {
    let waited = wasmlet_api::Duration::from(timeout);
    let events: Vec<Event> = client.list::<Event>("/events", None).map(|l| l.items).unwrap_or_default();
    let mut reasons = Vec::new();
    for name in names {
        let scheduling = events
            .iter()
            .filter(|e| e.involved_object.kind == "Workload" && e.involved_object.name == *name && e.reason == "FailedScheduling")
            .max_by_key(|e| e.time);
        if let Some(e) = scheduling {
            reasons.push(format!("workload/{name}: FailedScheduling: {}", e.message));
            continue;
        }
        for i in instances.iter().filter(|i| i.spec.workload == *name && i.status.phase != Phase::Running) {
            let why = match (&i.status.reason, &i.status.message) {
                (Some(r), Some(m)) => format!("{r}: {m}"),
                (Some(r), None) => r.clone(),
                _ => "no reason given yet".into(),
            };
            reasons.push(format!("workload/{name}: instance {} is {} on {}: {why}", i.metadata.name, i.status.phase, i.spec.node));
        }
    }
    if reasons.is_empty() {
        reasons.push("no instance was placed yet".into());
    }
    format!("timed out after {waited} waiting for the workloads to run\n{}", reasons.join("\n"))
}
