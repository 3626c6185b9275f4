//! `wasmlet-master backup FILE` and `wasmlet-master restore FILE`.
//!
//! `backup` runs beside a running master, on its machine: it asks the master
//! (as admin, `GET /api/v1/backup`) for one consistent read of its store and
//! the modules it uses, checks it, and adds the data dir's identity files
//! (the CA and the bootstrap tokens, which never cross the API), into FILE,
//! written whole or not at all.
//!
//! `restore` runs while no master runs on the data dir: it checks the whole
//! backup into a staging directory first, and only then moves it into place,
//! the store last (one rename); whatever it replaces (with `--force`) is kept
//! beside it, renamed `….replaced-<time>`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{Contents, Item, Writer, read};
use crate::admin::Admin;
use crate::auth::bootstrap::{ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE, PKI_DIR};
use crate::config::MasterConfig;
use crate::store::modules::MODULES_DIR;
use crate::store::{RedbStore, STORE_FILE};

/// The data dir's files a backup carries beside the store: what makes a
/// restored master the same cluster to its agents and its admins.
pub const IDENTITY_FILES: [&str; 3] = [PKI_DIR, ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE];

/// `wasmlet-master backup FILE`.
pub async fn backup(config: &MasterConfig, file: &Path) -> anyhow::Result<String> {
    let admin = Admin::of(config)?;
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let download = Partial::new(&dir, file, "download")?;
    let url = format!("{}/api/v1/backup", admin.url);
    let response = crate::admin::trusting_client(&admin.ca_pem)?
        .get(&url)
        .bearer_auth(&admin.token)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the master at {}: {}", admin.url, wasmlet_security::error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        bail!("the master answered {status}: {}", body["message"].as_str().unwrap_or("no reason given"));
    }
    {
        let mut out = tokio::fs::File::from_std(download.create()?);
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| anyhow::anyhow!("the master's answer broke off: {}", wasmlet_security::error_chain(&e)))?;
            out.write_all(&chunk).await.with_context(|| format!("writing {}", download.path.display()))?;
        }
        out.flush().await?;
    }
    let data_dir = config.data_dir.clone();
    let target = file.to_path_buf();
    let contents =
        tokio::task::spawn_blocking(move || repack(&download, &data_dir, &dir, &target)).await.context("the backup did not finish")??;
    Ok(format!(
        "backup {}: {} records (revision {}), {} modules, {} data-dir files\n",
        file.display(),
        contents.records,
        contents.revision,
        contents.modules,
        contents.files
    ))
}

/// Checks the master's archive and writes it again into `target` with the data dir's identity files.
fn repack(download: &Partial, data_dir: &Path, dir: &Path, target: &Path) -> anyhow::Result<Contents> {
    let output = Partial::new(dir, target, "backup")?;
    let input = BufReader::new(File::open(&download.path).with_context(|| format!("reading {}", download.path.display()))?);
    let mut writer = Writer::begin(BufWriter::new(output.create()?))?;
    let mut contents = read(input, |item| match item {
        Item::Record { kind, name, value } => writer.record(kind, &name, &value),
        Item::Module { digest, size, data } => writer.module(digest.trim_start_matches("sha256:"), size, data),
        Item::File { .. } => Err(io::Error::other("the master's answer holds data-dir files; it should not")),
    })
    .map_err(|e| anyhow::anyhow!("the master's answer is not a whole backup: {e}"))?;
    for name in IDENTITY_FILES {
        for path in files_under(&data_dir.join(name))? {
            let relative = path.strip_prefix(data_dir).unwrap_or(&path).to_string_lossy().into_owned();
            let file = File::open(&path).with_context(|| format!("reading {}", path.display()))?;
            let size = file.metadata()?.len();
            writer.file(&relative, size, file)?;
            contents.files += 1;
        }
    }
    let out = writer.finish(contents.revision, contents.epoch)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    output.keep(target)?;
    Ok(contents)
}

/// The regular files at `path` (itself, or inside it when it is a directory), in name order.
fn files_under(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries {
            out.extend(files_under(&entry)?);
        }
    }
    Ok(out)
}

/// A file written under a temporary name beside its target, renamed into
/// place when complete, removed otherwise.
struct Partial {
    path: PathBuf,
}

impl Partial {
    fn new(dir: &Path, target: &Path, what: &str) -> anyhow::Result<Partial> {
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "backup".into());
        Ok(Partial { path: dir.join(format!(".{name}.{what}-{}", crate::cluster::random_hex(4))) })
    }

    fn create(&self) -> anyhow::Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn keep(self, target: &Path) -> anyhow::Result<()> {
        std::fs::rename(&self.path, target).with_context(|| format!("cannot write {}", target.display()))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `wasmlet-master restore FILE [--force]`.
pub fn restore(config: &MasterConfig, file: &Path, force: bool) -> anyhow::Result<String> {
    if config.store == crate::config::StoreKind::Etcd {
        bail!(
            "restore writes the store of a master on its own (--store redb); the objects of masters on etcd are etcd's: \
             restore etcd from its own snapshot (`etcdctl snapshot save` / `etcdutl snapshot restore`)"
        );
    }
    let data_dir = &config.data_dir;
    let store_path = data_dir.join(STORE_FILE);
    // Held until the new store is in place: no master starts on the old one meanwhile.
    let _lock = claim(&store_path, force)?;
    let input = File::open(file).with_context(|| format!("cannot read the backup {}", file.display()))?;
    wasmlet_security::files::private_dir(data_dir)?;
    let stage = Stage::new(data_dir)?;
    let contents = stage.fill(BufReader::new(input)).map_err(|e| {
        anyhow::anyhow!("the backup {} cannot be restored: {e:#}. Nothing in {} was changed", file.display(), data_dir.display())
    })?;
    let suffix = format!("replaced-{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    let mut kept = Vec::new();
    let mut set_aside = |target: &Path| -> anyhow::Result<()> {
        if std::fs::symlink_metadata(target).is_ok() {
            let mut aside = target.as_os_str().to_owned();
            aside.push(format!(".{suffix}"));
            std::fs::rename(target, &aside).with_context(|| format!("cannot move {} aside", target.display()))?;
            kept.push(PathBuf::from(aside));
        }
        Ok(())
    };
    for name in IDENTITY_FILES {
        let staged = stage.dir.join("files").join(name);
        if staged.exists() {
            let target = data_dir.join(name);
            set_aside(&target)?;
            std::fs::rename(&staged, &target).with_context(|| format!("cannot write {}", target.display()))?;
        }
    }
    let modules = data_dir.join(MODULES_DIR);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&modules)?;
    for entry in std::fs::read_dir(stage.dir.join(MODULES_DIR))?.flatten() {
        let target = modules.join(entry.file_name());
        if !target.exists() {
            std::fs::rename(entry.path(), &target).with_context(|| format!("cannot write {}", target.display()))?;
        }
    }
    // The store last, in one rename: until here a master would start on the old one.
    set_aside(&store_path)?;
    std::fs::rename(stage.dir.join(STORE_FILE), &store_path).with_context(|| format!("cannot write {}", store_path.display()))?;
    let mut text = format!(
        "restored {} records (revision {}), {} modules and {} data-dir files into {}\n",
        contents.records,
        contents.revision,
        contents.modules,
        contents.files,
        data_dir.display()
    );
    for path in kept {
        text.push_str(&format!("kept what it replaced as {}\n", path.display()));
    }
    text.push_str("start the master on this data dir\n");
    Ok(text)
}

/// Refuses a data dir whose store a master holds, or that has a store at all without `force`;
/// returns the open store file, locked, when there is one.
fn claim(store_path: &Path, force: bool) -> anyhow::Result<Option<File>> {
    let file = match File::open(store_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", store_path.display())),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("a master is running on this data dir (it holds {}): stop it, then restore", store_path.display())
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", store_path.display())),
    }
    if !force {
        bail!(
            "{} already has a store: restoring replaces it, its CA and its tokens; pass --force to do so \
             (what is replaced is kept beside it, renamed `….replaced-<time>`)",
            store_path.parent().unwrap_or(store_path).display()
        );
    }
    Ok(Some(file))
}

/// The staging directory of a restore, inside the data dir (so its content
/// moves into place by renames); removed when dropped.
struct Stage {
    dir: PathBuf,
}

impl Stage {
    fn new(data_dir: &Path) -> anyhow::Result<Stage> {
        let dir = data_dir.join(format!(".restore-{}", crate::cluster::random_hex(4)));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::DirBuilder::new().mode(0o700).create(dir.join(MODULES_DIR))?;
        Ok(Stage { dir })
    }

    /// Reads the whole backup into the stage: a new store with every record, the modules, the files.
    fn fill(&self, input: impl io::Read) -> anyhow::Result<Contents> {
        let mut records = Vec::new();
        let contents = read(input, |item| match item {
            Item::Record { kind, name, value } => {
                records.push((kind, name, value));
                Ok(())
            }
            Item::Module { digest, data, .. } => {
                let hex = digest.trim_start_matches("sha256:");
                write_new(&self.dir.join(MODULES_DIR).join(hex), data)
            }
            Item::File { path, data, .. } => {
                let known = path.components().next().is_some_and(|first| IDENTITY_FILES.iter().any(|name| first.as_os_str() == *name));
                if !known {
                    return Err(io::Error::other(format!("it holds `{}`, not a file a backup carries", path.display())));
                }
                write_new(&self.dir.join("files").join(path), data)
            }
        })?;
        let store = RedbStore::create(&self.dir.join(STORE_FILE)).map_err(|e| anyhow::anyhow!("{e}"))?;
        store.import(contents.revision, contents.epoch, records).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(contents)
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `data` to a new private file at `path`, synced.
fn write_new(path: &Path, data: &mut dyn io::Read) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    io::copy(data, &mut file)?;
    file.sync_all()
}
