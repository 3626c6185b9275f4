//! The audit log: one JSON line per mutation and per refused request, in
//! `<data-dir>/audit.log` (0600), with who, the verb, the object, the result
//! and where the request came from. Lease renewals are not recorded: they
//! change nothing stored and come every heartbeat from every node.
//!
//! Lines are written by a thread of their own, so a slow disk never holds a
//! request; at 64 MiB the file is renamed to `audit.log.1` (replacing the
//! previous one) and a new one begins.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrono::{DateTime, Utc};
use serde::Serialize;

const ROTATE_AT: u64 = 64 << 20;

/// One audited request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub time: DateTime<Utc>,
    /// `admin`, `viewer`, `node:<name>`, `join`, or `anonymous`.
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    pub verb: String,
    /// The path, e.g. `/api/v1/workloads/hello`.
    pub object: String,
    /// `allowed`, `denied` (403), `unauthenticated` (401) or `failed` (another error).
    pub result: &'static str,
    pub code: u16,
    pub source: String,
}

/// Where audit records go.
#[derive(Clone)]
pub struct AuditLog {
    lines: mpsc::Sender<Record>,
}

impl AuditLog {
    /// Starts the writer for `path`.
    pub fn open(path: PathBuf) -> std::io::Result<AuditLog> {
        let file = open(&path)?;
        let (lines, records) = mpsc::channel();
        std::thread::Builder::new().name("audit-log".into()).spawn(move || write_all(path, file, records))?;
        Ok(AuditLog { lines })
    }

    pub fn record(&self, record: Record) {
        let _ = self.lines.send(record);
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

fn write_all(path: PathBuf, file: std::fs::File, records: mpsc::Receiver<Record>) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::new(file);
    while let Ok(first) = records.recv() {
        for record in std::iter::once(first).chain(records.try_iter()) {
            let Ok(mut line) = serde_json::to_vec(&record) else { continue };
            line.push(b'\n');
            size += line.len() as u64;
            if let Err(e) = out.write_all(&line) {
                tracing::error!(file = %path.display(), error = %e, "cannot write the audit log");
            }
        }
        if let Err(e) = out.flush() {
            tracing::error!(file = %path.display(), error = %e, "cannot write the audit log");
        }
        if size >= ROTATE_AT {
            let rotated = path.with_extension("log.1");
            match std::fs::rename(&path, &rotated).and_then(|()| open(&path)) {
                Ok(file) => {
                    out = std::io::BufWriter::new(file);
                    size = 0;
                }
                Err(e) => tracing::error!(file = %path.display(), error = %e, "cannot rotate the audit log"),
            }
        }
    }
}
