//! Uploaded modules, content-addressed: `<data-dir>/modules/<sha256 hex>`.
//!
//! An upload is streamed into a temporary file while it is hashed and
//! counted; only a complete upload within the size limit whose hash is the
//! digest it was uploaded under, and that is valid WebAssembly (a core module
//! or a component, checked by [`check_wasm`]), is renamed into place, so a
//! module file under its digest is always whole and correct.
//!
//! With a store shared by several masters, an upload is also kept in the
//! store ([`Store::put_module`]) before it is answered, and a master that
//! lacks a module's file fetches it from there ([`ModuleStore::local`]): the
//! data dir's `modules` is then a cache, and every master serves every module,
//! also once the master that took the upload is gone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Store, StoreError};

/// The modules' directory in the data dir.
pub const MODULES_DIR: &str = "modules";

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("`{0}` is not a module digest: use `sha256:` followed by 64 lowercase hex digits")]
    BadDigest(String),
    #[error("the module is larger than the limit of {limit} bytes (--max-module-size)")]
    TooLarge { limit: u64 },
    #[error("the uploaded bytes have digest {actual}, not {expected}: upload the file whose digest is in the URL")]
    DigestMismatch { expected: String, actual: String },
    #[error("reading the upload: {0}")]
    Body(String),
    #[error("the module is not valid WebAssembly: {0}")]
    NotWasm(String),
    #[error("writing the module: {0}")]
    Io(#[from] std::io::Error),
    #[error("keeping the module for the other masters: {0}")]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct ModuleStore {
    dir: PathBuf,
    /// Digests whose file passed [`check_wasm`] since this master started.
    valid: Arc<Mutex<HashSet<String>>>,
    /// Where the other masters of the cluster find the modules this one took.
    store: Arc<dyn Store>,
}

/// The WebAssembly features the agents' engine accepts: what wasmtime 48
/// enables by default with the agent's cargo features (`gc`, `threads`,
/// `component-model`). The agent's own load stays the final word.
fn agent_features() -> wasmparser::WasmFeatures {
    use wasmparser::WasmFeatures as F;
    F::WASM3 | F::GC_TYPES | F::EXCEPTIONS | F::THREADS | F::COMPONENT_MODEL
}

/// Whether `bytes` are a WebAssembly core module or component the agents can
/// load; the error names what is wrong and where.
pub fn check_wasm(bytes: &[u8]) -> Result<(), String> {
    let start = || {
        let hex: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let text: String = bytes.iter().take(8).map(|b| if b.is_ascii_graphic() || *b == b' ' { *b as char } else { '.' }).collect();
        format!("[{}] (`{text}`)", hex.join(" "))
    };
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let hint = if bytes.starts_with(b"(module") || bytes.starts_with(b"(component") {
            " (this is WebAssembly text; compile it to binary first)"
        } else {
            ""
        };
        return Err(format!("{} bytes starting with {} lack the `\\0asm` magic of a module or component{hint}", bytes.len(), start()));
    }
    match [bytes[4], bytes[5], bytes[6], bytes[7]] {
        [1, 0, 0, 0] | [0x0d, 0x00, 0x01, 0x00] => {}
        [a, b, c, d] => {
            return Err(format!(
                "version/layer {a:02x} {b:02x} {c:02x} {d:02x} is neither a core module (01 00 00 00) nor a component (0d 00 01 00)"
            ));
        }
    }
    let kind = if bytes[4] == 1 { "core module" } else { "component" };
    wasmparser::Validator::new_with_features(agent_features())
        .validate_all(bytes)
        .map(drop)
        .map_err(|e| format!("the {kind} is invalid at byte offset {}: {}", e.offset(), e.message()))
}

impl ModuleStore {
    pub fn open(data_dir: &Path, store: Arc<dyn Store>) -> std::io::Result<Self> {
        let dir = data_dir.join(MODULES_DIR);
        std::fs::create_dir_all(&dir)?;
        // Leftovers of uploads cut short by a crash.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".upload-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ModuleStore { dir, valid: Arc::default(), store })
    }

    /// The file of module `digest`, fetched from the store when this master
    /// does not have it yet; None when no master took it.
    pub async fn local(&self, digest: &str) -> Result<Option<PathBuf>, UploadError> {
        let path = self.path(digest)?;
        if tokio::fs::try_exists(&path).await? {
            return Ok(Some(path));
        }
        let Some(bytes) = self.store.get_module(digest).await? else { return Ok(None) };
        let temp = self.temp();
        let written = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            file.write_all(&bytes).await?;
            file.sync_all().await?;
            tokio::fs::rename(&temp, &path).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e.into());
        }
        tracing::info!(%digest, "fetched a module another master took");
        Ok(Some(path))
    }

    /// A new temporary file's path in the modules' directory.
    fn temp(&self) -> PathBuf {
        let mut suffix = [0u8; 8];
        let _ = getrandom::fill(&mut suffix);
        self.dir.join(format!(".upload-{}", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()))
    }

    /// The file of a digest (`sha256:<hex>`), whether or not it exists.
    pub fn path(&self, digest: &str) -> Result<PathBuf, UploadError> {
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| UploadError::BadDigest(digest.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(UploadError::BadDigest(digest.to_string()));
        }
        Ok(self.dir.join(hex))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// Checks that the module of `digest` is uploaded and valid WebAssembly
    /// (files kept from before uploads were checked are checked here, once).
    pub async fn ensure_valid(&self, digest: &str) -> Result<(), ModuleProblem> {
        if self.valid.lock().unwrap_or_else(|e| e.into_inner()).contains(digest) {
            return Ok(());
        }
        let path = match self.local(digest).await {
            Ok(Some(path)) => path,
            Ok(None) => return Err(ModuleProblem::Missing),
            Err(UploadError::Store(e)) => return Err(ModuleProblem::Unavailable(e)),
            Err(e) => return Err(ModuleProblem::Invalid(e.to_string())),
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ModuleProblem::Missing),
            Err(e) => return Err(ModuleProblem::Invalid(format!("cannot read {}: {e}", path.display()))),
        };
        let checked =
            tokio::task::spawn_blocking(move || check_wasm(&bytes)).await.unwrap_or_else(|e| Err(format!("the check did not finish: {e}")));
        checked.map_err(ModuleProblem::Invalid)?;
        self.valid.lock().unwrap_or_else(|e| e.into_inner()).insert(digest.to_string());
        Ok(())
    }

    /// Streams `body` to disk under `digest`; returns whether it was new.
    pub async fn upload<S, E>(&self, digest: &str, mut body: S, limit: u64) -> Result<bool, UploadError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let target = self.path(digest)?;
        let temp = self.temp();
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(UploadError::TooLarge { limit });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            let actual = format!("sha256:{:x}", hasher.finalize());
            if actual != digest {
                return Err(UploadError::DigestMismatch { expected: digest.to_string(), actual });
            }
            file.sync_all().await?;
            drop(file);
            let bytes = tokio::fs::read(&temp).await?;
            let (checked, bytes) = tokio::task::spawn_blocking(move || (check_wasm(&bytes), bytes))
                .await
                .map_err(|e| UploadError::NotWasm(format!("the check did not finish: {e}")))?;
            checked.map_err(UploadError::NotWasm)?;
            Ok(bytes)
        }
        .await;
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        // Kept for the other masters before the answer: a 2xx means every master can serve it.
        if let Err(e) = self.store.put_module(digest, bytes).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e.into());
        }
        let existed = target.is_file();
        tokio::fs::rename(&temp, &target).await?;
        self.valid.lock().unwrap_or_else(|e| e.into_inner()).insert(digest.to_string());
        Ok(!existed)
    }
}

/// Why a workload's module cannot be used.
#[derive(Debug, Clone)]
pub enum ModuleProblem {
    /// Not uploaded.
    Missing,
    /// Uploaded, but not WebAssembly the agents can load.
    Invalid(String),
    /// Kept by the store, which cannot be reached now.
    Unavailable(StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8]) -> impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(data.chunks(100).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>())
    }

    /// A valid core module of about `size` bytes: the header and one custom section.
    fn module(size: usize) -> Vec<u8> {
        let mut bytes = b"\0asm\x01\0\0\0".to_vec();
        let payload = size.saturating_sub(8 + 6).max(1);
        bytes.push(0); // custom section
        let mut len = payload + 2;
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            bytes.push(if len == 0 { byte } else { byte | 0x80 });
            if len == 0 {
                break;
            }
        }
        bytes.extend_from_slice(&[1, b'x']);
        bytes.extend(std::iter::repeat_n(7u8, payload));
        bytes
    }

    #[test]
    fn only_webassembly_the_agents_load_passes() {
        assert_eq!(check_wasm(&module(100)), Ok(()));
        let cases: [(&[u8], &str); 6] = [
            (b"#!/bin/sh\nrm -rf /\n", "lack the `\\0asm` magic"),
            (b"(module)", "WebAssembly text"),
            (b"\0asm", "lack the"),
            (b"\0asm\x02\0\0\0", "neither a core module"),
            (b"\0asm\x0d\0\x01\0\xff\xff\xff", "component is invalid at byte offset 8"),
            // A type section that declares 4 GiB.
            (b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff\x0f\x01", "core module is invalid"),
        ];
        for (bytes, expected) in cases {
            let err = check_wasm(bytes).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let half = &module(100)[..50];
        assert!(check_wasm(half).unwrap_err().contains("invalid"), "a truncated module");
    }

    #[tokio::test]
    async fn streamed_uploads_are_checked_before_they_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let modules = ModuleStore::open(dir.path(), Arc::new(crate::store::RedbStore::open(&dir.path().join("store")).unwrap())).unwrap();
        let data = module(1000);
        let size = data.len() as u64;
        let digest = format!("sha256:{:x}", Sha256::digest(&data));
        assert!(matches!(modules.upload(&digest, chunks(&data), size - 1).await, Err(UploadError::TooLarge { .. })));
        let other = format!("sha256:{}", "0".repeat(64));
        let err = modules.upload(&other, chunks(&data), size).await.unwrap_err().to_string();
        assert!(err.contains(&other) && err.contains(&digest), "{err}");
        assert_eq!(std::fs::read_dir(dir.path().join("modules")).unwrap().count(), 0, "nothing half-written");
        assert!(modules.upload(&digest, chunks(&data), size).await.unwrap());
        assert!(!modules.upload(&digest, chunks(&data), size).await.unwrap(), "already there");
        assert!(modules.contains(&digest));
        assert!(modules.ensure_valid(&digest).await.is_ok());

        let script = b"#!/bin/sh\necho hi\n";
        let script_digest = format!("sha256:{:x}", Sha256::digest(script));
        let err = modules.upload(&script_digest, chunks(script), 1000).await.unwrap_err();
        assert!(matches!(err, UploadError::NotWasm(_)), "{err}");
        assert!(!modules.contains(&script_digest), "not kept");
        assert!(matches!(modules.ensure_valid(&script_digest).await, Err(ModuleProblem::Missing)));
        // A file kept from before uploads were checked is found out when a workload names it.
        std::fs::write(modules.path(&script_digest).unwrap(), script).unwrap();
        assert!(matches!(modules.ensure_valid(&script_digest).await, Err(ModuleProblem::Invalid(_))));
    }
}
