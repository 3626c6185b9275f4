//! Static manifests: Workload files in `--manifests-dir`, run without a
//! master, like the kubelet's static pods. The directory is polled: a new or
//! changed file starts or updates its workloads, a removed file stops them,
//! and a broken file is reported (event and log line naming the file, the
//! field and the problem) while what runs keeps running, on its last good version.
//! What the files ask for is bounded before anything is made of it: each
//! workload by the API's limits, and all of them together by the node's
//! `--max-instances` (or the pool's size, `--pool-instances`, when smaller),
//! so no manifest can exhaust the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;
use wasmlet_api::{EventType, Placement, Workload};

use crate::config::InstanceLimit;
use crate::grants::{HostPathPolicy, Preopen};
use crate::modules::{Module, ModuleStore, Remote};
use crate::runtime::module::{detect, sha256_digest};
use crate::supervisor::{DesiredInstance, Source, Supervisor};

/// A workload admitted from a manifest, ready to become instances.
#[derive(Clone)]
struct Admitted {
    workload: Arc<Workload>,
    module: Module,
    host_dirs: Vec<Preopen>,
    generation: String,
}

struct FileEntry {
    /// Hash of the content last read, so an unchanged file is not parsed again.
    content: [u8; 32],
    /// The last good version of the file's workloads.
    admitted: Vec<Admitted>,
}

/// Watches a manifests directory and keeps the supervisor in step with it.
pub struct ManifestWatcher {
    dir: PathBuf,
    /// Host directories workloads may be granted.
    host_paths: HostPathPolicy,
    files: BTreeMap<PathBuf, FileEntry>,
    /// Instances all manifests together may ask for.
    limit: InstanceLimit,
    supervisor: Arc<Supervisor>,
    /// Where the modules of workloads that name a URL or a registry are pulled from, and kept.
    store: Arc<ModuleStore>,
    remote: Arc<Remote>,
}

impl ManifestWatcher {
    pub fn new(
        dir: PathBuf,
        host_paths: HostPathPolicy,
        limit: InstanceLimit,
        supervisor: Arc<Supervisor>,
        store: Arc<ModuleStore>,
        remote: Arc<Remote>,
    ) -> Self {
        ManifestWatcher { dir, host_paths, files: BTreeMap::new(), limit, supervisor, store, remote }
    }

    /// Polls until `stop` is cancelled.
    pub async fn run(mut self, poll: Duration, stop: CancellationToken) {
        tracing::info!(dir = %self.dir.display(), "watching static manifests");
        let mut first = true;
        loop {
            // The first scan is reconciled even when the dir is empty: it says what this source wants.
            if self.scan() || std::mem::take(&mut first) {
                self.supervisor.reconcile(Source::Manifests, self.desired());
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Reads what changed. Returns whether the set of admitted workloads changed.
    pub fn scan(&mut self) -> bool {
        let events = self.supervisor.events.clone();
        let present: BTreeSet<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
                .collect(),
            Err(e) => {
                events.record(EventType::Warning, "ManifestsDirUnreadable", "Node", "manifests", format!("{}: {e}", self.dir.display()));
                return false;
            }
        };
        let mut changed = false;
        let removed: Vec<PathBuf> = self.files.keys().filter(|p| !present.contains(*p)).cloned().collect();
        for path in removed {
            self.files.remove(&path);
            events.record(EventType::Normal, "ManifestRemoved", "Manifest", &file_name(&path), "file removed: its workloads stop");
            changed = true;
        }
        for path in present {
            let Ok(text) = std::fs::read(&path) else { continue };
            let content: [u8; 32] = Sha256::digest(&text).into();
            if self.files.get(&path).is_some_and(|f| f.content == content) {
                continue;
            }
            let others = || self.files.iter().filter(|(p, _)| **p != path).flat_map(|(_, f)| f.admitted.iter());
            let taken: BTreeSet<String> = others().map(|a| a.workload.metadata.name.clone()).collect();
            let room = u64::from(self.limit.max).saturating_sub(others().map(|a| instances_of(&a.workload)).sum());
            match self.admit_file(&path, &text, &taken, room) {
                Ok(admitted) => {
                    let names: Vec<String> = admitted.iter().map(|a| a.workload.metadata.name.clone()).collect();
                    events.record(
                        EventType::Normal,
                        "ManifestApplied",
                        "Manifest",
                        &file_name(&path),
                        format!("workloads: {}", names.join(", ")),
                    );
                    self.files.insert(path, FileEntry { content, admitted });
                    changed = true;
                }
                Err(problem) => {
                    events.record(
                        EventType::Warning,
                        "ManifestInvalid",
                        "Manifest",
                        &file_name(&path),
                        format!("{}: {problem}", path.display()),
                    );
                    // Keep the last good version running; remember this content so it is reported once.
                    let previous = self.files.remove(&path).map(|f| f.admitted).unwrap_or_default();
                    self.files.insert(path, FileEntry { content, admitted: previous });
                }
            }
        }
        changed
    }

    /// Instances for every admitted workload: `<workload>-<index>`.
    pub fn desired(&self) -> Vec<DesiredInstance> {
        let mut out = Vec::new();
        for admitted in self.files.values().flat_map(|f| f.admitted.iter()) {
            for i in 0..instances_of(&admitted.workload) {
                out.push(DesiredInstance {
                    name: format!("{}-{i}", admitted.workload.metadata.name),
                    workload: admitted.workload.clone(),
                    module: admitted.module.clone(),
                    host_dirs: admitted.host_dirs.clone(),
                    generation: admitted.generation.clone(),
                    epoch: 0,
                    refused: None,
                    fence: Default::default(),
                });
            }
        }
        out
    }

    /// Admits every workload of one file, or none; `room` is how many
    /// instances the other files leave of `--max-instances`.
    fn admit_file(&self, path: &Path, text: &[u8], taken: &BTreeSet<String>, room: u64) -> Result<Vec<Admitted>, String> {
        let text = std::str::from_utf8(text).map_err(|e| format!("not UTF-8 text: {e}"))?;
        let workloads = parse_workloads(path, text)?;
        let mut admitted = Vec::new();
        let mut names = BTreeSet::new();
        let mut instances = 0u64;
        for (i, workload) in workloads.into_iter().enumerate() {
            let at = |problem: String| if i == 0 { problem } else { format!("document {}: {problem}", i + 1) };
            let name = workload.metadata.name.clone();
            if taken.contains(&name) || !names.insert(name.clone()) {
                return Err(at(format!("metadata.name: workload `{name}` is already defined by another manifest")));
            }
            // Validated before its replicas are counted: a count past the API's limit is named as such.
            workload.validate().map_err(|e| at(e.to_string()))?;
            instances += instances_of(&workload);
            if instances > room {
                let others = u64::from(self.limit.max) - room;
                return Err(at(format!(
                    "spec.replicas: {instances} instances in this file and {others} in the others are more than this node runs ({} {})",
                    self.limit.set_by, self.limit.max
                )));
            }
            admitted.push(self.admit(path, workload).map_err(at)?);
        }
        Ok(admitted)
    }

    /// Admits one validated workload: its module read and checked (or, from a
    /// URL or a registry, pulled by its instances), its host grants resolved.
    fn admit(&self, manifest: &Path, workload: Workload) -> Result<Admitted, String> {
        let spec = &workload.spec;
        if let Some(credentials) = &spec.module.credentials {
            return Err(format!(
                "spec.module.credentials: `{credentials}`: no master holds registry credentials here; give the node its own (--registry-credentials)"
            ));
        }
        let module = match self.remote.source_of(&spec.module) {
            Some(_) if spec.module.digest.is_empty() => {
                return Err(format!(
                    "spec.module.digest: `{}`: a static manifest pins the module's digest (`wasmlet push` prints it); no master resolves tags here",
                    spec.module.origin()
                ));
            }
            Some(source) => Module::Pull { module: spec.module.clone(), store: self.store.clone(), source },
            None => Module::Ready(Arc::new(read_module(manifest, spec)?)),
        };
        let host_dirs = self.host_paths.resolve(&spec.dirs)?;
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(&workload.spec).unwrap_or_default());
        hasher.update(serde_json::to_vec(&workload.metadata.labels).unwrap_or_default());
        let generation = format!("{:x}", hasher.finalize())[..16].to_string();
        Ok(Admitted { workload: Arc::new(workload), module, host_dirs, generation })
    }
}

/// The module file a static manifest names (relative to it), checked against its digest.
fn read_module(manifest: &Path, spec: &wasmlet_api::WorkloadSpec) -> Result<Vec<u8>, String> {
    let source = &spec.module.source;
    let base = manifest.parent().unwrap_or(Path::new("."));
    let module_path = base.join(source.strip_prefix("file://").unwrap_or(source));
    let bytes = std::fs::read(&module_path).map_err(|e| format!("spec.module.source: cannot read {}: {e}", module_path.display()))?;
    let actual = sha256_digest(&bytes);
    if actual != spec.module.digest {
        return Err(format!(
            "spec.module.digest: the manifest pins {} but {} hashes to {actual}",
            spec.module.digest,
            module_path.display()
        ));
    }
    detect(&bytes).map_err(|e| format!("spec.module.source: {}: {e}", module_path.display()))?;
    Ok(bytes)
}

/// How many instances a static workload runs: its replicas, or one for `placement: everyNode`.
fn instances_of(workload: &Workload) -> u64 {
    match workload.spec.placement {
        Some(Placement::EveryNode) => 1,
        None => u64::from(workload.spec.replicas.unwrap_or(1)),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The Workload documents of one file: JSON (`.json`), or YAML with `---` between documents.
pub fn parse_workloads(path: &Path, text: &str) -> Result<Vec<Workload>, String> {
    wasmlet_api::decode::workloads(text, path.extension().and_then(|e| e.to_str()) == Some("json"))
}
