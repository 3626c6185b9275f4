//! The layer in front of every route: authenticate the bearer token,
//! authorize by [`super::policy`], pass the [`Caller`] on to the handler,
//! and audit what changed or was refused. A source over its refusal rate
//! limit ([`super::ratelimit`]) gets `429` instead of `401`/`403`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use super::audit::Record;
use super::policy::{Decision, Used, authorize, is_mutation};
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
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let source = peer.map(|p| p.to_string()).unwrap_or_default();
    // A refusal, or a 429 when the source has had too many of them lately.
    let refuse = |refusal: Failure| -> Response {
        let Some(ip) = peer.map(|p| p.ip()) else { return refusal.into_response() };
        match shared.refusals.refuse(ip) {
            Ok(()) => refusal.into_response(),
            Err(wait) => {
                shared.metrics.rate_limited.inc();
                if let Some(log) = &shared.audit {
                    log.rate_limited(&ip.to_string());
                }
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut response = Failure::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    format!("too many refused requests from {ip}: retry in {seconds} s, with a valid token"),
                )
                .into_response();
                response.headers_mut().insert(header::RETRY_AFTER, seconds.max(1).into());
                response
            }
        }
    };
    let audit = |caller: Option<&Caller>, code: StatusCode| {
        let Some(log) = &shared.audit else { return };
        let refused = code == StatusCode::UNAUTHORIZED || code == StatusCode::FORBIDDEN;
        let lease = path.ends_with("/lease");
        // Secrets read by nodes are recorded like changes.
        let secret = path.starts_with("/api/v1/nodes/") && path.contains("/registry-credentials/");
        if !(refused || secret || is_mutation(&method) && !lease) {
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
            let response = refuse(Failure::new(StatusCode::UNAUTHORIZED, "Unauthorized", refusal.to_string()));
            if response.status() == StatusCode::UNAUTHORIZED {
                audit(None, StatusCode::UNAUTHORIZED);
                tracing::debug!(%path, %source, reason = %refusal, "unauthenticated request");
            }
            return response;
        }
    };
    let template = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| path.clone());
    let (mut parts, body) = request.into_parts();
    let params = Path::<HashMap<String, String>>::from_request_parts(&mut parts, &()).await.map(|p| p.0).unwrap_or_default();
    let allowed = match authorize(&caller.role, &method, &template, |name| params.get(name).cloned()) {
        Decision::Allow => true,
        Decision::Deny => false,
        Decision::AllowIfUsed { node, uses: Used::Module(digest) } => {
            shared.cluster().instances_on(&node).any(|p| p.workload.spec.module.digest == digest)
        }
        Decision::AllowIfUsed { node, uses: Used::RegistryCredentials(name) } => {
            shared.cluster().instances_on(&node).any(|p| p.workload.spec.module.credentials.as_ref() == Some(&name))
        }
    };
    if !allowed {
        let message = match &caller.role {
            Role::Node(node) if template.ends_with("/modules/{digest}") || template.ends_with("/registry-credentials/{credentials}") => {
                format!("{caller} may not read {path}: no instance assigned to node {node} uses it")
            }
            _ => format!("{caller} may not {method} {path}"),
        };
        let response = refuse(Failure::new(StatusCode::FORBIDDEN, "Forbidden", message));
        if response.status() == StatusCode::FORBIDDEN {
            audit(Some(&caller), StatusCode::FORBIDDEN);
        }
        return response;
    }
    parts.extensions.insert(caller.clone());
    let response = next.run(Request::from_parts(parts, body)).await;
    audit(Some(&caller), response.status());
    response
}
