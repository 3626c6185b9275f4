//! Serving wasi:http components (`type: service`): a fresh store per request
//! from a pre-instantiated `ProxyPre`, with the instance's memory limit, a
//! request timeout (`limits.requestTimeout`, answered 504), body size limits,
//! and outgoing requests only to `allowedOutboundHosts` (others fail inside
//! the guest with `HttpRequestDenied`).

use std::time::Instant;

use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::StatusCode;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::Runtime;
use super::limits::{Fenced, MemoryLimiter};
use crate::executor::{OutboundPolicy, ServeSpec, plain};
use crate::logs::InstanceLog;

/// Store data of one request to a service.
pub struct HttpState {
    ctx: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: OutboundPolicy,
    pub limiter: MemoryLimiter,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: hyper::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    hyper::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        if !self.allows(request.uri()) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        drop(fut);
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

impl Runtime {
    /// Serves one request with a fresh instance of the component.
    pub async fn serve(
        &self,
        pre: &ProxyPre<HttpState>,
        spec: &ServeSpec,
        log: &InstanceLog,
        request: hyper::Request<Body>,
    ) -> hyper::Response<Body> {
        let mut builder = match super::sandbox::wasi_builder(&spec.program, &[], &spec.env, &spec.dirs, log) {
            Ok(b) => b,
            Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("the service's sandbox could not be set up: {e:#}")),
        };
        let state = HttpState {
            ctx: builder.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: spec.outbound.clone(),
            limiter: MemoryLimiter::new(spec.memory_limit, Default::default()),
        };
        let mut store = Store::new(self.engine(), state);
        store.limiter(|s| &mut s.limiter);
        let deadline = wasmlet_api::duration::deadline(Instant::now(), spec.request_timeout);
        let fence = spec.fence.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if fence.expired() {
                return Err(Fenced.into());
            }
            if Instant::now() >= deadline {
                return Err(wasmtime::Error::msg("request timeout"));
            }
            Ok(UpdateDeadline::Yield(1))
        });

        let limit = spec.max_request_body;
        let (parts, body) = request.into_parts();
        let body = Limited::new(body, limit).map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit as u64))
            } else {
                wasmtime_wasi_http::Error::ConnectionTerminated
            }
        });
        let request = hyper::Request::from_parts(parts, body);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let resources = {
            let mut http = store.data_mut().http();
            http.new_incoming_request(Scheme::Http, request).and_then(|req| Ok((req, http.new_response_outparam(sender)?)))
        };
        let (req, out) = match resources {
            Ok(r) => r,
            Err(e) => return plain(StatusCode::BAD_REQUEST, format!("the request cannot be passed to the service: {e:#}")),
        };
        let pre = pre.clone();
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
        });
        let aborter = task.abort_handle();
        match tokio::time::timeout(spec.request_timeout, receiver).await {
            Ok(Ok(Ok(response))) => {
                let max = spec.max_response_body;
                response.map(|body| Body::new(Limited::new(body, max)))
            }
            Ok(Ok(Err(code))) => plain(StatusCode::BAD_GATEWAY, format!("the service failed the request: {code:?}")),
            Ok(Err(_)) => {
                // The guest ended without answering: say how.
                let why = match task.await {
                    Ok(Ok(())) => "it returned without setting a response".to_string(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => e.to_string(),
                };
                if why.contains("request timeout") {
                    plain(StatusCode::GATEWAY_TIMEOUT, format!("the service did not answer within {:?}", spec.request_timeout))
                } else {
                    plain(StatusCode::BAD_GATEWAY, format!("the service failed: {}", why.lines().next().unwrap_or_default()))
                }
            }
            Err(_) => {
                aborter.abort();
                plain(StatusCode::GATEWAY_TIMEOUT, format!("the service did not answer within {:?}", spec.request_timeout))
            }
        }
    }
}
