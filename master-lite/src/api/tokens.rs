//! `/api/v1/tokens`, for admins: create a join, viewer or admin token (its
//! secret is shown once, in the answer), list tokens without their
//! secrets, revoke one. Node credentials are made only by registration, and
//! listed and revoked here like any other token.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use wasmlet_api::Duration;
use wasmlet_security::{JoinToken, Token};

use super::{Failure, decode};
use crate::Shared;
use crate::auth::{Caller, Role, TokenRecord};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    pub role: String,
    /// Absent or zero: never expires.
    #[serde(default)]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub description: String,
}

/// A new token: the record and, this once, the token itself.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub record: TokenRecord,
}

pub async fn create(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Response, Failure> {
    let request: CreateToken = decode(&body, "token request")?;
    let role: Role = request.role.parse().map_err(|e: String| Failure::invalid(format!("role: {e}")))?;
    if matches!(role, Role::Node(_)) {
        return Err(Failure::invalid("role: node credentials are issued when a node registers with a join token"));
    }
    let ttl = request.ttl.map(|t| t.get()).filter(|t| !t.is_zero());
    let expires = ttl
        .map(|t| {
            chrono::Duration::from_std(t)
                .ok()
                .and_then(|t| Utc::now().checked_add_signed(t))
                .ok_or_else(|| Failure::invalid("ttl is too long"))
        })
        .transpose()?;
    let token = Token::generate().map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?;
    let record = TokenRecord::new(&token, role.clone(), request.description, expires);
    let text = match (&role, &shared.ca_fingerprint) {
        (Role::Join, Some(ca)) => JoinToken { ca: *ca, token }.to_string(),
        _ => token.to_string(),
    };
    let mut txn = shared.cluster().txn();
    txn.put_token(record.clone());
    shared.commit(txn).await?;
    tracing::info!(id = %record.id, %role, expires = ?record.expires, "token created");
    Ok((StatusCode::CREATED, Json(CreatedToken { token: text, record: record.public() })).into_response())
}

pub async fn list(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let items: Vec<TokenRecord> = shared.tokens.all().iter().map(TokenRecord::public).collect();
    Json(serde_json::json!({ "items": items }))
}

pub async fn revoke(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    if id == caller.token_id {
        return Err(Failure::conflict(format!("token {id} is the one this request uses: revoke it with another admin token")));
    }
    let mut record = shared.tokens.get(&id).ok_or_else(|| Failure::not_found("token", &id))?;
    if record.revoked.is_none() {
        record.revoked = Some(Utc::now());
        let mut txn = shared.cluster().txn();
        txn.put_token(record.clone());
        shared.commit(txn).await?;
        tracing::info!(%id, role = %record.role, by = %caller, "token revoked");
    }
    Ok(Json(record.public()).into_response())
}
