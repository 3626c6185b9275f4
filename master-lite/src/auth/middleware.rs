//! The layer in front of every route: authenticate the bearer token,
//! authorize by [`super::policy`], pass the [`Caller`] on to the handler,
//! and audit what changed or was refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::audit::Record;
use super::policy::{Decision, authorize, is_mutation};
use super::{Caller, Role};
use crate::Shared;
use crate::api::Failure;

/// Paths anyone may call: liveness and readiness probes.
const OPEN: [&str; 2] = ["/healthz", "/readyz"];

pub async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    if OPEN.contains(&path.as_str()) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let source = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string()).unwrap_or_default();
    let audit = |caller: Option<&Caller>, code: StatusCode| {
        let Some(log) = &shared.audit else { return };
        let refused = code == StatusCode::UNAUTHORIZED || code == StatusCode::FORBIDDEN;
        let lease = path.ends_with("/lease");
        if !(refused || is_mutation(&method) && !lease) {
            return;
        }
        let result = match code.as_u16() {
            401 => "unauthenticated",
            403 => "denied",
            c if c < 400 => "allowed",
            _ => "failed",
        };
        log.record(Record {
            time: Utc::now(),
            user: caller.map_or_else(|| "anonymous".to_string(), |c| c.role.to_string()),
            token_id: caller.map(|c| c.token_id.clone()),
            verb: method.to_string(),
            object: path.clone(),
            result,
            code: code.as_u16(),
            source: source.clone(),
        });
    };

    let bearer = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let caller = match shared.tokens.authenticate(bearer, Utc::now()) {
        Ok(caller) => caller,
        Err(refusal) => {
            audit(None, StatusCode::UNAUTHORIZED);
            tracing::debug!(%path, %source, reason = %refusal, "unauthenticated request");
            return Failure::new(StatusCode::UNAUTHORIZED, "Unauthorized", refusal.to_string()).into_response();
        }
    };
    let template = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| path.clone());
    let (mut parts, body) = request.into_parts();
    let params = Path::<HashMap<String, String>>::from_request_parts(&mut parts, &()).await.map(|p| p.0).unwrap_or_default();
    let allowed = match authorize(&caller.role, &method, &template, |name| params.get(name).cloned()) {
        Decision::Allow => true,
        Decision::Deny => false,
        Decision::AllowIfAssigned { node, digest } => shared.cluster().instances_on(&node).any(|p| p.workload.spec.module.digest == digest),
    };
    if !allowed {
        audit(Some(&caller), StatusCode::FORBIDDEN);
        let message = match &caller.role {
            Role::Node(node) if template.ends_with("/modules/{digest}") => {
                format!("{caller} may not read {path}: no instance assigned to node {node} uses it")
            }
            _ => format!("{caller} may not {method} {path}"),
        };
        return Failure::new(StatusCode::FORBIDDEN, "Forbidden", message).into_response();
    }
    parts.extensions.insert(caller.clone());
    let response = next.run(Request::from_parts(parts, body)).await;
    audit(Some(&caller), response.status());
    response
}
