//! Uploaded modules, content-addressed: `<data-dir>/modules/<sha256 hex>`.
//!
//! An upload is streamed into a temporary file while it is hashed and
//! counted; only a complete upload within the size limit whose hash is the
//! digest it was uploaded under is renamed into place, so a module file
//! under its digest is always whole and correct.

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

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
    #[error("writing the module: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct ModuleStore {
    dir: PathBuf,
}

impl ModuleStore {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("modules");
        std::fs::create_dir_all(&dir)?;
        // Leftovers of uploads cut short by a crash.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".upload-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(ModuleStore { dir })
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

    /// Streams `body` to disk under `digest`; returns whether it was new.
    pub async fn upload<S, E>(&self, digest: &str, mut body: S, limit: u64) -> Result<bool, UploadError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let target = self.path(digest)?;
        let mut suffix = [0u8; 8];
        let _ = getrandom::fill(&mut suffix);
        let temp = self.dir.join(format!(".upload-{}", suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()));
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
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
        let existed = target.is_file();
        tokio::fs::rename(&temp, &target).await?;
        Ok(!existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8]) -> impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
        futures::stream::iter(data.chunks(100).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn streamed_uploads_are_checked_before_they_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let modules = ModuleStore::open(dir.path()).unwrap();
        let data = vec![1u8; 1000];
        let digest = format!("sha256:{:x}", Sha256::digest(&data));
        assert!(matches!(modules.upload(&digest, chunks(&data), 999).await, Err(UploadError::TooLarge { limit: 999 })));
        let other = format!("sha256:{}", "0".repeat(64));
        let err = modules.upload(&other, chunks(&data), 1000).await.unwrap_err().to_string();
        assert!(err.contains(&other) && err.contains(&digest), "{err}");
        assert_eq!(std::fs::read_dir(dir.path().join("modules")).unwrap().count(), 0, "nothing half-written");
        assert!(modules.upload(&digest, chunks(&data), 1000).await.unwrap());
        assert!(!modules.upload(&digest, chunks(&data), 1000).await.unwrap(), "already there");
        assert!(modules.contains(&digest));
    }
}
