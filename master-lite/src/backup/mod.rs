//! Backups of a master: the archive format, and the `backup` and `restore`
//! commands (`command`).
//!
//! # Format
//!
//! A backup is a POSIX tar archive (readable with `tar tvf`), its entries in
//! this order:
//!
//! | entry | holds |
//! | --- | --- |
//! | `wasmlet-backup/begin` | JSON: `{"format": "wasmlet-backup", "version": 1, "created", "masterVersion"}` |
//! | `store/<table>/<name>` | one stored record, byte for byte (`<name>` percent-encoded) |
//! | `modules/<sha256 hex>` | an uploaded module a stored workload or instance uses |
//! | `files/<path>` | a file of the data dir: the CA (`pki/…`), `admin.token`, `join.token` |
//! | `wasmlet-backup/end` | JSON: `{"entries", "sha256", "revision", "epoch"}` |
//!
//! The records are one read transaction of the store (consistent while writes
//! go on), `revision` and `epoch` its counters. `sha256` chains every entry
//! before `end`: for each, its path, a zero byte, its size as 8 bytes little
//! endian, and its content. A module's name is its content's SHA-256. So a
//! truncated, reordered or damaged backup is refused before anything is
//! restored; the chain detects damage, not forgery (a backup is as trusted as
//! the data dir it came from, and holds the CA's key).

pub mod command;

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::Kind;

pub const FORMAT: &str = "wasmlet-backup";
pub const VERSION: u32 = 1;
const BEGIN: &str = "wasmlet-backup/begin";
const END: &str = "wasmlet-backup/end";
/// Largest record, module and data-dir file a backup may hold (a damaged
/// header must not make a restore read gigabytes into memory).
const MAX_RECORD: u64 = 64 << 20;
const MAX_MODULE: u64 = 1 << 30;
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Begin {
    format: String,
    version: u32,
    created: DateTime<Utc>,
    master_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct End {
    entries: u64,
    sha256: String,
    revision: u64,
    epoch: u64,
}

/// Why a backup cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("it is not a wasmlet backup: {0}")]
    NotABackup(String),
    #[error("it is damaged: {0}")]
    Damaged(String),
    #[error("it ends early, before its last entry (a truncated copy?)")]
    Truncated,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Writes a backup archive.
pub struct Writer<W: Write> {
    tar: tar::Builder<W>,
    chain: Sha256,
    entries: u64,
}

impl<W: Write> Writer<W> {
    /// Starts an archive on `out`.
    pub fn begin(out: W) -> io::Result<Self> {
        let mut writer = Writer { tar: tar::Builder::new(out), chain: Sha256::new(), entries: 0 };
        let begin =
            Begin { format: FORMAT.into(), version: VERSION, created: Utc::now(), master_version: env!("CARGO_PKG_VERSION").into() };
        writer.entry(BEGIN, &serde_json::to_vec(&begin).map_err(io::Error::other)?)?;
        Ok(writer)
    }

    /// A stored record.
    pub fn record(&mut self, kind: Kind, name: &str, value: &[u8]) -> io::Result<()> {
        self.entry(&format!("store/{}/{}", kind.table(), encode(name)), value)
    }

    /// A module; `hex` is its SHA-256.
    pub fn module(&mut self, hex: &str, size: u64, data: impl Read) -> io::Result<()> {
        self.entry_from(&format!("modules/{hex}"), size, data)
    }

    /// A file of the data dir, by its path relative to it.
    pub fn file(&mut self, path: &str, size: u64, data: impl Read) -> io::Result<()> {
        self.entry_from(&format!("files/{path}"), size, data)
    }

    /// Ends the archive with the counters of the records' read.
    pub fn finish(mut self, revision: u64, epoch: u64) -> io::Result<W> {
        let sha256 = format!("{:x}", self.chain.clone().finalize());
        let end = End { entries: self.entries, sha256, revision, epoch };
        let body = serde_json::to_vec(&end).map_err(io::Error::other)?;
        let mut header = header(body.len() as u64);
        self.tar.append_data(&mut header, END, body.as_slice())?;
        self.tar.into_inner()
    }

    fn entry(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.entry_from(path, data.len() as u64, data)
    }

    fn entry_from(&mut self, path: &str, size: u64, data: impl Read) -> io::Result<()> {
        chain_header(&mut self.chain, path, size);
        let mut header = header(size);
        let hashed = Hashing { inner: data.take(size), hasher: &mut self.chain, read: 0 };
        self.tar.append_data(&mut header, path, hashed)?;
        self.entries += 1;
        Ok(())
    }
}

fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn chain_header(chain: &mut Sha256, path: &str, size: u64) {
    chain.update(path.as_bytes());
    chain.update([0]);
    chain.update(size.to_le_bytes());
}

/// Feeds what is read through it into a hasher.
struct Hashing<'h, R> {
    inner: R,
    hasher: &'h mut Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// One entry of a backup, as [`read`] hands it over.
pub enum Item<'a> {
    Record {
        kind: Kind,
        name: String,
        value: Vec<u8>,
    },
    /// `digest` is `sha256:<hex>`; the content (`size` bytes) is checked against it after the visitor read it.
    Module {
        digest: String,
        size: u64,
        data: &'a mut dyn Read,
    },
    /// `path` is relative to the data dir and stays inside it.
    File {
        path: PathBuf,
        size: u64,
        data: &'a mut dyn Read,
    },
}

/// What a whole, checked backup held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    pub records: u64,
    pub modules: u64,
    pub files: u64,
    pub revision: u64,
    pub epoch: u64,
    pub created: Option<DateTime<Utc>>,
}

/// Reads a backup from `input`, handing each entry to `visit`, and checks
/// it whole: the result is an error unless every entry is there and intact.
/// `visit` must not act on what it gets before this returns `Ok`.
pub fn read(input: impl Read, mut visit: impl FnMut(Item<'_>) -> io::Result<()>) -> Result<Contents, BackupError> {
    let mut archive = tar::Archive::new(input);
    let mut chain = Sha256::new();
    let mut contents = Contents::default();
    let mut entries = 0u64;
    let mut begun = false;
    let damaged = |e: io::Error| BackupError::Damaged(e.to_string());
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(|e| if e.kind() == io::ErrorKind::UnexpectedEof { BackupError::Truncated } else { damaged(e) })?;
        let path = entry.path().map_err(damaged)?.to_string_lossy().into_owned();
        let size = entry.size();
        if !begun {
            if path != BEGIN {
                return Err(BackupError::NotABackup(format!("its first entry is `{path}`, not `{BEGIN}`")));
            }
            chain_header(&mut chain, BEGIN, size);
            let bytes = read_small(&mut Hashing { inner: &mut entry, hasher: &mut chain, read: 0 }, size, 1 << 16)?;
            let begin: Begin = serde_json::from_slice(&bytes).map_err(|e| BackupError::NotABackup(format!("{BEGIN}: {e}")))?;
            if begin.format != FORMAT {
                return Err(BackupError::NotABackup(format!("its format is `{}`", begin.format)));
            }
            if begin.version > VERSION {
                return Err(BackupError::NotABackup(format!(
                    "it is version {} of the format, written by wasmlet-master {}; this one reads up to {VERSION}",
                    begin.version, begin.master_version
                )));
            }
            contents.created = Some(begin.created);
            entries += 1;
            begun = true;
            continue;
        }
        if path == END {
            let end: End =
                serde_json::from_slice(&read_small(&mut entry, size, 1 << 16)?).map_err(|e| BackupError::Damaged(format!("{END}: {e}")))?;
            let actual = format!("{:x}", chain.finalize());
            if end.entries != entries || end.sha256 != actual {
                return Err(BackupError::Damaged(format!(
                    "its checksum does not match its entries ({entries} entries read, {} announced): an entry was changed, lost or added",
                    end.entries
                )));
            }
            contents.revision = end.revision;
            contents.epoch = end.epoch;
            return Ok(contents);
        }
        chain_header(&mut chain, &path, size);
        let mut hashed = Hashing { inner: &mut entry, hasher: &mut chain, read: 0 };
        if let Some(rest) = path.strip_prefix("store/") {
            let (table, name) = rest.split_once('/').ok_or_else(|| BackupError::Damaged(format!("`{path}` names no record")))?;
            let kind = Kind::of_table(table).ok_or_else(|| BackupError::Damaged(format!("`{path}`: no table `{table}`")))?;
            let name = decode(name).ok_or_else(|| BackupError::Damaged(format!("`{path}`: the name is not encoded")))?;
            let value = read_small(&mut hashed, size, MAX_RECORD)?;
            visit(Item::Record { kind, name, value })?;
            contents.records += 1;
        } else if let Some(hex) = path.strip_prefix("modules/") {
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || size > MAX_MODULE {
                return Err(BackupError::Damaged(format!("`{path}` is not a module entry")));
            }
            let mut content = Sha256::new();
            let mut checked = Hashing { inner: &mut hashed, hasher: &mut content, read: 0 };
            visit(Item::Module { digest: format!("sha256:{hex}"), size, data: &mut checked })?;
            io::copy(&mut checked, &mut io::sink())?;
            if format!("{:x}", content.finalize()) != hex {
                return Err(BackupError::Damaged(format!("module {hex}: its content does not have that digest")));
            }
            contents.modules += 1;
        } else if let Some(relative) = path.strip_prefix("files/") {
            let relative = Path::new(relative);
            let inside = relative.components().all(|c| matches!(c, Component::Normal(_)));
            if !inside || size > MAX_FILE {
                return Err(BackupError::Damaged(format!("`{path}` is not a data-dir file entry")));
            }
            visit(Item::File { path: relative.to_path_buf(), size, data: &mut hashed })?;
            contents.files += 1;
        } else {
            return Err(BackupError::Damaged(format!("unknown entry `{path}`")));
        }
        // Whatever the visitor left unread still counts in the chain.
        io::copy(&mut hashed, &mut io::sink())?;
        if hashed.read != size {
            return Err(BackupError::Truncated);
        }
        entries += 1;
    }
    Err(if begun { BackupError::Truncated } else { BackupError::NotABackup("it has no entries".into()) })
}

/// Reads an entry of at most `limit` bytes whole.
fn read_small(entry: &mut impl Read, size: u64, limit: u64) -> Result<Vec<u8>, BackupError> {
    if size > limit {
        return Err(BackupError::Damaged(format!("an entry of {size} bytes is larger than any it may hold ({limit})")));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != size {
        return Err(BackupError::Truncated);
    }
    Ok(bytes)
}

/// A record name as a path component: letters, digits, `-`, `_` and `.` as
/// they are (but a leading `.`), every other byte as `%XX`.
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut writer = Writer::begin(Vec::new()).unwrap();
        writer.record(Kind::Workload, "web", b"{\"spec\":{}}").unwrap();
        writer.record(Kind::Event, "../../etc/passwd", b"{}").unwrap();
        writer.module(&format!("{:x}", Sha256::digest(b"\0asm module")), 11, &b"\0asm module"[..]).unwrap();
        writer.file("pki/ca.key", 3, &b"key"[..]).unwrap();
        writer.finish(42, 7).unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<(Contents, Vec<String>), BackupError> {
        let mut seen = Vec::new();
        let contents = read(bytes, |item| {
            seen.push(match item {
                Item::Record { kind, name, value } => format!("{}/{name}={}", kind.table(), String::from_utf8_lossy(&value)),
                Item::Module { digest, data, .. } => {
                    let mut text = String::new();
                    data.read_to_string(&mut text)?;
                    format!("{digest}={text}")
                }
                Item::File { path, .. } => path.display().to_string(),
            });
            Ok(())
        })?;
        Ok((contents, seen))
    }

    #[test]
    fn a_backup_reads_back_whole() {
        let (contents, seen) = read_all(&archive()).unwrap();
        assert_eq!((contents.records, contents.modules, contents.files, contents.revision, contents.epoch), (2, 1, 1, 42, 7));
        assert_eq!(seen[0], "workloads/web={\"spec\":{}}");
        assert_eq!(seen[1], "events/../../etc/passwd={}", "any name is carried, as a name");
        assert!(seen[2].ends_with("=\0asm module"), "{}", seen[2]);
        assert_eq!(seen[3], "pki/ca.key");
    }

    #[test]
    fn damage_anywhere_is_found() {
        let good = archive();
        let at = good.windows(11).position(|w| w == b"\0asm module").unwrap();
        let mut module = good.clone();
        module[at + 5] ^= 1;
        let record_at = good.windows(6).position(|w| w == b"{\"spec").unwrap();
        let mut record = good.clone();
        record[record_at + 1] = b'S';
        for (what, bytes) in [
            ("a module byte", module),
            ("a record byte", record),
            ("cut short", good[..good.len() - 1536].to_vec()),
            ("cut in an entry", good[..at + 3].to_vec()),
            ("empty", Vec::new()),
            ("text", b"hello\n".repeat(200)),
        ] {
            assert!(read_all(&bytes).is_err(), "{what}");
        }
        assert!(matches!(read_all(&good[..good.len() - 1536]), Err(BackupError::Truncated)));
    }

    #[test]
    fn names_survive_the_trip_through_a_path() {
        for name in ["web", "a.b-c_d", ".hidden", "../x", "spaced name", "ü/ß"] {
            let encoded = encode(name);
            assert!(!encoded.contains('/') && !encoded.starts_with('.'), "{encoded}");
            assert_eq!(decode(&encoded).as_deref(), Some(name));
        }
    }
}
