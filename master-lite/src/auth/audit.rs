//! The audit log: one JSON line per mutation and per refused request, in
//! `<data-dir>/audit.log` (0600), with who, the verb, the object, the result
//! and where the request came from. Lease renewals are not recorded: they
//! change nothing stored and come every heartbeat from every node.
//!
//! The log is bounded three ways, so no client can fill the disk or the
//! master's memory with it:
//! - lines are written by a thread of their own through a queue of
//!   [`QUEUE`] lines; a line that finds the queue full is dropped and counted;
//! - before a line would take the file past `--audit-log-max-size`, it is
//!   rotated (`audit.log` → `audit.log.1` → … ) and only
//!   `--audit-log-max-files` files are kept, the current one included;
//! - requests answered `429` by the refusal rate limit
//!   ([`super::ratelimit`]) are not written one by one but counted.
//!
//! What was dropped (lines, rate-limited requests and their busiest sources)
//! is written as one summary line at most every
//! [`defaults::AUDIT_DROP_SUMMARY_EVERY`], and counted in `/metrics`.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::config::defaults;

/// Lines waiting for the writer at most.
pub const QUEUE: usize = 10_000;
/// Longest path or source kept in a line (a request's path is the client's choice).
const MAX_FIELD: usize = 512;
/// Sources named in a summary line; the others are added up.
const SUMMARY_SOURCES: usize = 20;
/// Sources counted one by one between two summaries; the others are added up.
const COUNTED_SOURCES: usize = 1000;

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

/// The line that says what was not written since the previous one.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    time: DateTime<Utc>,
    /// Always `dropped`: tells summary lines from records.
    result: &'static str,
    since: DateTime<Utc>,
    /// Audit lines lost: the queue was full or the file could not be written.
    lines_dropped: u64,
    /// Refused requests answered `429` and not written one by one.
    rate_limited: u64,
    /// The sources with the most rate-limited requests, most first.
    rate_limited_sources: Vec<SourceCount>,
}

#[derive(Debug, Serialize)]
struct SourceCount {
    source: String,
    requests: u64,
}

/// How large the log may grow.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Size of one file before rotation, in bytes.
    pub max_size: u64,
    /// Files kept, the current one included.
    pub max_files: u32,
}

/// What was dropped since the last summary line.
#[derive(Debug, Default)]
struct Drops {
    since: Option<DateTime<Utc>>,
    lines: u64,
    rate_limited: u64,
    by_source: HashMap<String, u64>,
    other_sources: u64,
}

impl Drops {
    fn is_empty(&self) -> bool {
        self.lines == 0 && self.rate_limited == 0
    }

    fn start(&mut self) {
        self.since.get_or_insert_with(Utc::now);
    }
}

/// Where audit records go.
#[derive(Clone)]
pub struct AuditLog {
    lines: mpsc::SyncSender<Record>,
    drops: Arc<Mutex<Drops>>,
    /// `/metrics`: audit lines not written.
    dropped: Counter,
}

impl AuditLog {
    /// Starts the writer for `path`; `dropped` counts lines it could not write.
    pub fn open(path: PathBuf, bounds: Bounds, dropped: Counter) -> std::io::Result<AuditLog> {
        remove_beyond(&path, bounds.max_files);
        let file = open(&path)?;
        let (lines, records) = mpsc::sync_channel(QUEUE);
        let drops = Arc::new(Mutex::new(Drops::default()));
        let writer = Writer { path, bounds, drops: drops.clone(), dropped: dropped.clone() };
        std::thread::Builder::new().name("audit-log".into()).spawn(move || writer.run(file, records))?;
        Ok(AuditLog { lines, drops, dropped })
    }

    pub fn record(&self, mut record: Record) {
        record.object = shorten(record.object);
        record.source = shorten(record.source);
        if let Err(mpsc::TrySendError::Full(_)) = self.lines.try_send(record) {
            self.dropped.inc();
            let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
            drops.start();
            drops.lines += 1;
        }
    }

    /// Counts a refused request answered `429` instead of writing it.
    pub fn rate_limited(&self, source: &str) {
        let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        drops.start();
        drops.rate_limited += 1;
        if let Some(count) = drops.by_source.get_mut(source) {
            *count += 1;
        } else if drops.by_source.len() < COUNTED_SOURCES {
            drops.by_source.insert(shorten(source.to_string()), 1);
        } else {
            drops.other_sources += 1;
        }
    }
}

fn shorten(mut text: String) -> String {
    if text.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// `audit.log.N`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Deletes rotated files a smaller `--audit-log-max-files` no longer keeps.
fn remove_beyond(path: &Path, max_files: u32) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let n =
            file.to_str().and_then(|f| f.strip_prefix(name)).and_then(|rest| rest.strip_prefix('.')).and_then(|n| n.parse::<u32>().ok());
        if n.is_some_and(|n| n >= max_files) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

struct Writer {
    path: PathBuf,
    bounds: Bounds,
    drops: Arc<Mutex<Drops>>,
    dropped: Counter,
}

impl Writer {
    fn run(self, file: std::fs::File, records: mpsc::Receiver<Record>) {
        let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut out = std::io::BufWriter::new(file);
        let mut last_summary = std::time::Instant::now();
        let mut closing = false;
        while !closing {
            let mut lines: Vec<Vec<u8>> = Vec::new();
            match records.recv_timeout(defaults::AUDIT_DROP_SUMMARY_EVERY) {
                Ok(first) => {
                    for record in std::iter::once(first).chain(records.try_iter().take(QUEUE)) {
                        if let Ok(line) = serde_json::to_vec(&record) {
                            lines.push(line);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The master stops: the last summary, then done.
                Err(mpsc::RecvTimeoutError::Disconnected) => closing = true,
            }
            if closing || last_summary.elapsed() >= defaults::AUDIT_DROP_SUMMARY_EVERY {
                last_summary = std::time::Instant::now();
                if let Some(line) = self.summary() {
                    lines.push(line);
                }
            }
            for mut line in lines {
                line.push(b'\n');
                let len = line.len() as u64;
                if size > 0 && size + len > self.bounds.max_size {
                    if let Err(e) = out.flush() {
                        tracing::error!(file = %self.path.display(), error = %e, "cannot write the audit log");
                    }
                    match self.rotate() {
                        Ok(file) => {
                            out = std::io::BufWriter::new(file);
                            size = 0;
                        }
                        Err(e) => tracing::error!(file = %self.path.display(), error = %e, "cannot rotate the audit log"),
                    }
                }
                if size + len > self.bounds.max_size {
                    // Rotation failed, or one line is larger than a whole file: the bound wins.
                    self.lost(1);
                    continue;
                }
                match out.write_all(&line) {
                    Ok(()) => size += len,
                    Err(e) => {
                        self.lost(1);
                        tracing::error!(file = %self.path.display(), error = %e, "cannot write the audit log");
                    }
                }
            }
            if let Err(e) = out.flush() {
                tracing::error!(file = %self.path.display(), error = %e, "cannot write the audit log");
            }
        }
    }

    fn lost(&self, lines: u64) {
        self.dropped.inc_by(lines);
        let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        drops.start();
        drops.lines += lines;
    }

    /// The summary of what was dropped since the last one, if anything was.
    fn summary(&self) -> Option<Vec<u8>> {
        let drops = std::mem::take(&mut *self.drops.lock().unwrap_or_else(|e| e.into_inner()));
        if drops.is_empty() {
            return None;
        }
        let mut sources: Vec<SourceCount> =
            drops.by_source.into_iter().map(|(source, requests)| SourceCount { source, requests }).collect();
        sources.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.source.cmp(&b.source)));
        let others: u64 = sources.iter().skip(SUMMARY_SOURCES).map(|s| s.requests).sum::<u64>() + drops.other_sources;
        sources.truncate(SUMMARY_SOURCES);
        if others > 0 {
            sources.push(SourceCount { source: "others".into(), requests: others });
        }
        let summary = Summary {
            time: Utc::now(),
            result: "dropped",
            since: drops.since.unwrap_or_else(Utc::now),
            lines_dropped: drops.lines,
            rate_limited: drops.rate_limited,
            rate_limited_sources: sources,
        };
        tracing::warn!(lines = summary.lines_dropped, rate_limited = summary.rate_limited, "audit log: requests and lines dropped");
        serde_json::to_vec(&summary).ok()
    }

    /// `audit.log` → `audit.log.1` → … → `audit.log.<max-files - 1>`, the oldest deleted; a new `audit.log`.
    fn rotate(&self) -> std::io::Result<std::fs::File> {
        let keep = self.bounds.max_files;
        if keep <= 1 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(rotated(&self.path, keep - 1));
            for n in (1..keep - 1).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        open(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> Record {
        Record {
            time: Utc::now(),
            user: "anonymous".into(),
            token_id: None,
            verb: "GET".into(),
            object: format!("/api/v1/workloads/{i}{}", "x".repeat(2000)),
            result: "unauthenticated",
            code: 401,
            source: "192.0.2.1:1234".into(),
        }
    }

    fn total(dir: &Path) -> (u64, usize) {
        let files: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        (files.iter().map(|f| f.metadata().unwrap().len()).sum(), files.len())
    }

    #[test]
    fn the_log_rotates_and_keeps_only_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // Left by an earlier run with more files kept.
        std::fs::write(rotated(&path, 7), "old\n").unwrap();
        let dropped = Counter::default();
        let bounds = Bounds { max_size: 4096, max_files: 3 };
        let log = AuditLog::open(path.clone(), bounds, dropped.clone()).unwrap();
        for i in 0..200 {
            log.record(record(i));
        }
        for source in ["192.0.2.1", "192.0.2.1", "198.51.100.7"] {
            log.rate_limited(source);
        }
        drop(log);
        // Closing writes a last summary line, after every record.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !std::fs::read_to_string(&path).unwrap_or_default().contains("\"result\":\"dropped\"") {
            assert!(std::time::Instant::now() < deadline, "no summary line");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (size, files) = total(dir.path());
        assert_eq!(files, 3, "audit.log, .1 and .2");
        assert!(size <= 3 * 4096, "{size} bytes kept");
        assert!(!rotated(&path, 7).exists());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines[0]["object"].as_str().unwrap().len() <= MAX_FIELD + 3, "long paths are cut");
        let summary = lines.last().unwrap();
        assert_eq!(summary["rateLimited"], 3, "{summary}");
        assert_eq!(summary["rateLimitedSources"][0]["source"], "192.0.2.1", "{summary}");
        assert_eq!(summary["rateLimitedSources"][0]["requests"], 2, "{summary}");
        assert_eq!(dropped.get(), 0);
    }
}
