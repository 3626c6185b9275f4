//! `PUT /modules/{digest}` streams an upload to disk, checked against the
//! digest and the size limit, and validated as WebAssembly; `GET
//! /modules/{digest}` streams it back.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Failure;
use crate::Shared;
use crate::store::modules::UploadError;

pub async fn upload(
    State(shared): State<Arc<Shared>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    let limit = shared.config.max_module_size.get();
    let too_large = |limit| Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "TooLarge", UploadError::TooLarge { limit }.to_string());
    shared.modules.path(&digest).map_err(|e| Failure::invalid(e.to_string()))?;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|size| size > limit) {
        return Err(too_large(limit));
    }
    match shared.modules.upload(&digest, body.into_data_stream(), limit).await {
        Ok(created) => {
            tracing::info!(%digest, created, "module uploaded");
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, axum::Json(serde_json::json!({ "digest": digest }))).into_response())
        }
        Err(UploadError::TooLarge { limit }) => Err(too_large(limit)),
        Err(e @ (UploadError::BadDigest(_) | UploadError::DigestMismatch { .. } | UploadError::Body(_) | UploadError::NotWasm(_))) => {
            Err(Failure::invalid(e.to_string()))
        }
        Err(e @ UploadError::Io(_)) => {
            tracing::error!(error = %e, %digest, "cannot store a module");
            Err(Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))
        }
        Err(UploadError::Store(e)) => Err(e.into()),
    }
}

pub async fn download(State(shared): State<Arc<Shared>>, Path(digest): Path<String>) -> Result<Response, Failure> {
    let path = match shared.modules.local(&digest).await {
        Ok(Some(path)) => path,
        Ok(None) => return Err(Failure::not_found("module", &digest)),
        Err(UploadError::BadDigest(_)) => return Err(Failure::invalid(UploadError::BadDigest(digest).to_string())),
        Err(UploadError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string())),
    };
    let file = tokio::fs::File::open(&path).await.map_err(|_| Failure::not_found("module", &digest))?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok(([(header::CONTENT_TYPE, "application/wasm")], Body::from_stream(stream)).into_response())
}
