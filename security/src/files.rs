//! Secrets on disk: written whole (a temporary file renamed into place) and
//! readable by their owner only (0600, in a 0700 directory).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Error, Result};

/// Creates `dir` (and its parents) with mode 0700 when missing, and makes it 0700 when it exists.
pub fn private_dir(dir: &Path) -> Result<()> {
    let fail = |source| Error::Io { what: format!("cannot create {}", dir.display()), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)
}

/// Writes `bytes` to `path` with mode 0600, synced, replacing any old file only once complete.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |source| Error::Io { what: format!("cannot write {}", path.display()), source };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(fail)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Reads a secret file as text, trimmed; `None` when it does not exist.
pub fn read_secret(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io { what: format!("cannot read {}", path.display()), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pki/secret.key");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two\n").unwrap();
        assert_eq!(read_secret(&path).unwrap().as_deref(), Some("two"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temporary file is left behind");
        assert_eq!(read_secret(&dir.path().join("missing")).unwrap(), None);
        private_dir(&dir.path().join("a/b")).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("a/b")).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
