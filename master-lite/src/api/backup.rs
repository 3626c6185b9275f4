//! `GET /api/v1/backup`, for admins: one consistent read of the store and the
//! modules its workloads and instances use, streamed as a backup archive
//! (`crate::backup`). The data dir's identity files (CA, bootstrap tokens)
//! are not in it: `wasmlet-master backup` adds them on the master's machine,
//! so they never cross the API.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use crate::Shared;
use crate::backup::Writer;
use crate::store::modules::ModuleStore;
use crate::store::{Kind, Snapshot};

pub async fn backup(State(shared): State<Arc<Shared>>) -> Response {
    let store = shared.store.clone();
    let modules = shared.modules.clone();
    let (chunks, body) = mpsc::channel::<io::Result<bytes::Bytes>>(8);
    tokio::spawn(async move {
        // One read of the store, at one revision, while writes go on.
        let snapshot = match store.load().await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::warn!(error = %e, "a backup was not completed");
                let _ = chunks.send(Err(io::Error::other(e.to_string()))).await;
                return;
            }
        };
        // Modules another master took are fetched first: the archive holds every one the records use.
        for digest in used_modules(&snapshot) {
            if let Err(e) = modules.local(&digest).await {
                tracing::warn!(error = %e, %digest, "a backup was not completed");
                let _ = chunks.send(Err(io::Error::other(e.to_string()))).await;
                return;
            }
        }
        let written = tokio::task::spawn_blocking(move || {
            let out = io::BufWriter::with_capacity(64 << 10, Chunks(chunks.clone()));
            write(&snapshot, &modules, out).map_err(|e| (e, chunks))
        })
        .await;
        if let Ok(Err((e, chunks))) = written {
            tracing::warn!(error = %e, "a backup was not completed");
            // Breaks the answer off, so the client cannot take it for a whole backup.
            let _ = chunks.send(Err(io::Error::other(e.to_string()))).await;
        }
    });
    let stream = futures::stream::unfold(body, |mut body| async move { body.recv().await.map(|chunk| (chunk, body)) });
    let name = format!("attachment; filename=\"wasmlet-backup-{}.tar\"", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
    ([(header::CONTENT_TYPE, "application/x-tar".to_string()), (header::CONTENT_DISPOSITION, name)], Body::from_stream(stream))
        .into_response()
}

/// The digests of the modules the workloads and instances of `snapshot` use.
fn used_modules(snapshot: &Snapshot) -> BTreeSet<String> {
    let mut digests = BTreeSet::new();
    for object in &snapshot.objects {
        let spec = match object.kind {
            Kind::Workload => Some("/spec/module/digest"),
            Kind::Instance => Some("/workload/spec/module/digest"),
            _ => None,
        };
        if let Some(pointer) = spec
            && let Ok(record) = serde_json::from_slice::<serde_json::Value>(&object.value)
            && let Some(digest) = record.pointer(pointer).and_then(|d| d.as_str())
        {
            digests.insert(digest.to_string());
        }
    }
    digests
}

/// The archive of `snapshot` and the modules its records use.
fn write(snapshot: &Snapshot, modules: &ModuleStore, out: impl Write) -> io::Result<()> {
    let mut writer = Writer::begin(out)?;
    for object in &snapshot.objects {
        writer.record(object.kind, &object.name, &object.value)?;
    }
    let digests = used_modules(snapshot);
    let (revision, epoch) = (snapshot.revision, snapshot.epoch);
    for digest in digests {
        // Only uploaded modules are files here (`https://` sources are fetched by the agents).
        let Ok(path) = modules.path(&digest) else { continue };
        let Ok(file) = std::fs::File::open(&path) else { continue };
        let size = file.metadata()?.len();
        writer.module(digest.trim_start_matches("sha256:"), size, file)?;
    }
    writer.finish(revision, epoch)?.flush()
}

/// Hands what is written to the answer's body, chunk by chunk; fails once the client is gone.
struct Chunks(mpsc::Sender<io::Result<bytes::Bytes>>);

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
