//! The ingress (`--ingress-addr`, default `:7080`): HTTP requests routed by
//! `route.host` and `route.pathPrefix` to a Running instance of a service on
//! this node, round-robin. The most specific route wins (a host match, then
//! the longest prefix). No route: 404; a route without a Running instance:
//! 503; each with a short body saying which.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hyper::StatusCode;
use wasmlet_api::Workload;

use crate::runtime::http::plain;
use crate::supervisor::Supervisor;

#[derive(Clone)]
struct Ingress {
    supervisor: Arc<Supervisor>,
    /// Next endpoint to use, per workload.
    turns: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>,
}

pub fn router(supervisor: Arc<Supervisor>) -> Router {
    Router::new().fallback(route).with_state(Ingress { supervisor, turns: Arc::default() })
}

/// Whether `path` is under `prefix`, on segment boundaries (`/api` covers `/api/x`, not `/apix`).
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The most specific route matching `host` and `path`: (host given, prefix length).
fn best_route<'a>(workloads: impl Iterator<Item = &'a Arc<Workload>>, host: &str, path: &str) -> Option<&'a Arc<Workload>> {
    workloads
        .filter_map(|w| {
            let route = w.spec.route.as_ref()?;
            let host_ok = route.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host));
            let path_ok = route.path_prefix.as_deref().is_none_or(|p| under(path, p));
            (host_ok && path_ok).then(|| ((route.host.is_some(), route.path_prefix.as_deref().map_or(0, str::len)), w))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.metadata.name.cmp(&a.1.metadata.name)))
        .map(|(_, w)| w)
}

async fn route(State(ingress): State<Ingress>, request: Request) -> Response<Body> {
    let host =
        request.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| request.uri().host()).unwrap_or_default();
    let host = host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(h, _)| h).to_ascii_lowercase();
    let path = request.uri().path().to_string();

    let services = ingress.supervisor.service_workloads();
    let Some(workload) = best_route(services.iter(), &host, &path) else {
        return plain(StatusCode::NOT_FOUND, format!("no route for host `{host}` and path `{path}` on this node"));
    };
    let name = workload.metadata.name.clone();
    let mut endpoints: Vec<_> = ingress.supervisor.endpoints().into_iter().filter(|e| e.workload.metadata.name == name).collect();
    if endpoints.is_empty() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, format!("service `{name}` has no Ready instance on this node"));
    }
    endpoints.sort_by(|a, b| a.instance.cmp(&b.instance));
    let turn = {
        let mut turns = ingress.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.entry(name.clone()).or_default().clone()
    };
    let endpoint = endpoints.swap_remove(turn.fetch_add(1, Ordering::Relaxed) % endpoints.len());
    let metrics = &ingress.supervisor.ingress_metrics;
    let labels = vec![("workload", name.clone())];
    let started = std::time::Instant::now();
    let in_flight = metrics.in_flight.get_or_create(&labels).clone();
    in_flight.inc();
    // Waiting for a permit is the back-pressure when the instance is busy.
    let response = match endpoint.permits.clone().acquire_owned().await {
        Ok(_permit) => ingress.supervisor.runtime().serve(&endpoint.pre, &endpoint.spec, &endpoint.log, request).await,
        Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("service `{name}` is stopping")),
    };
    in_flight.dec();
    metrics.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let class = format!("{}xx", response.status().as_u16() / 100);
    metrics.requests.get_or_create(&vec![("workload", name), ("code", class)]).inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str, host: Option<&str>, prefix: Option<&str>) -> Arc<Workload> {
        let text = format!(
            "metadata: {{name: {name}}}\nspec:\n  type: service\n  module: {{source: x.wasm, digest: \"sha256:{}\"}}\n  route: {{{}{}}}\n",
            "0".repeat(64),
            host.map(|h| format!("host: {h}, ")).unwrap_or_default(),
            prefix.map(|p| format!("pathPrefix: {p}")).unwrap_or_default()
        );
        Arc::new(wasmlet_api::from_yaml(&text).expect("workload"))
    }

    #[test]
    fn the_most_specific_route_wins() {
        let all = [workload("root", None, Some("/")), workload("api", None, Some("/api")), workload("shop", Some("shop.local"), None)];
        let pick = |host: &str, path: &str| best_route(all.iter(), host, path).map(|w| w.metadata.name.clone());
        assert_eq!(pick("x", "/api/v1").as_deref(), Some("api"));
        assert_eq!(pick("x", "/apix").as_deref(), Some("root"));
        assert_eq!(pick("shop.local", "/api").as_deref(), Some("shop"));
        assert_eq!(pick("x", "/").as_deref(), Some("root"));
        let none = [workload("api", None, Some("/api"))];
        assert_eq!(best_route(none.iter(), "x", "/other").map(|w| w.metadata.name.clone()), None);
    }
}
