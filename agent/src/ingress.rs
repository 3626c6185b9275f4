//! The ingress (`--ingress-addr`, default `:7080`): HTTP requests routed by
//! `route.host` and `route.pathPrefix` to a Ready instance of a service on
//! this node, round-robin, or — when this node has none — forwarded to the
//! ingress of a node that has one (endpoints from the master), round-robin,
//! trying the next node when a connection fails for a request that can be
//! sent again. The most specific route wins (a host match, then the longest
//! prefix). No route: 404; no Ready instance anywhere: 503; a broken
//! upstream: 502; each with a short body saying which. A forwarded request
//! is never forwarded again, so requests cannot loop.
//!
//! Gray releases. During a Canary the master's endpoints carry a
//! [`CanarySplit`]: the new revision's instances and nodes and its weight.
//! Each ingress sends that share of every 100 requests to the new revision
//! (a turn per service, so the share holds on every node, evenly spread),
//! every request with the workload's canary header too, and the rest to the
//! previous revision: its own instances of the chosen revision first, else a
//! node that has one, else the other revision. A forwarded request carries the
//! chosen revision (`x-wasmlet-revision`), believed from peers only. Each
//! instance's answers are counted (requests, 5xx, latency buckets) for the
//! master's health gates ([`crate::supervisor::Traffic`]).
//!
//! Peers. Joined to a master over TLS, the ingress port also serves peers
//! over mutual TLS (`wasmlet_security::peering`): a request is "forwarded"
//! when it arrived over a connection authenticated with a node certificate
//! of this cluster, never because of a header an outside client can send;
//! the guest sees `x-wasmlet-forwarded-by` naming the authenticated node,
//! or not at all. Forwarding goes to a peer's `peerUrl`, accepting only that
//! node's certificate and presenting this node's. A peer without a
//! `peerUrl` (an agent of protocol version 1) gets plain HTTP, as does
//! everyone under `--insecure-http`, where the header marks forwarded requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use hyper::StatusCode;
use std::net::SocketAddr;

use wasmlet_api::Route;
use wasmlet_api::protocol::{CanarySplit, IngressEndpoint};
use wasmlet_security::peering::PeerNode;

use crate::executor::plain;
use crate::security::NodeIdentity;
use crate::supervisor::Supervisor;

/// Marks a request one ingress forwarded to another, naming the node it came from.
const FORWARDED_BY: &str = "x-wasmlet-forwarded-by";
/// On a forwarded request during a gray release: the revision the first ingress chose, `new` or `previous`.
const REVISION: &str = "x-wasmlet-revision";

/// Which revision of a service a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Revision {
    /// No gray release: any instance.
    Any,
    New,
    Previous,
}

impl Revision {
    fn header_value(self) -> Option<&'static str> {
        match self {
            Revision::Any => None,
            Revision::New => Some("new"),
            Revision::Previous => Some("previous"),
        }
    }
}

/// The revision a forwarded request was pinned to by the ingress that chose
/// it; the header is removed from every request (from the public's, it means nothing).
fn pinned_revision(request: &mut Request, forwarded: bool) -> Option<bool> {
    let value = request.headers_mut().remove(REVISION)?;
    match value.as_bytes() {
        b"new" if forwarded => Some(true),
        b"previous" if forwarded => Some(false),
        _ => None,
    }
}

/// Whether a request goes to the new revision: when it carries the canary
/// header, else for `weight` of every 100 requests (spread evenly by `turn`).
fn wants_new(split: &CanarySplit, request: &Request, turn: &AtomicUsize) -> bool {
    if let Some(header) = &split.header
        && request.headers().get_all(header.name.as_str()).iter().any(|v| v.as_bytes() == header.value.as_bytes())
    {
        return true;
    }
    let weight = split.weight.min(100) as usize;
    let n = turn.fetch_add(1, Ordering::Relaxed) % 100;
    (n + 1) * weight / 100 > n * weight / 100
}

#[derive(Clone)]
struct Ingress {
    supervisor: Arc<Supervisor>,
    /// Next endpoint to use, per workload.
    turns: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>,
    /// Where each workload's gray release is in its round of 100 requests.
    split_turns: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>,
    /// Plain HTTP connections to peer ingresses (`--insecure-http`, agents of protocol version 1), pooled.
    peers: reqwest::Client,
    /// Mutual TLS to peers; None under `--insecure-http` or without a master.
    peer_tls: Option<Arc<PeerClients>>,
}

pub fn router(supervisor: Arc<Supervisor>, identity: Option<Arc<NodeIdentity>>) -> Router {
    // A peer that takes the connection but never answers (frozen, overloaded)
    // is a broken upstream once the service's own time is up, with a margin.
    let answer_within = supervisor.service_settings().request_timeout + std::time::Duration::from_secs(5);
    let peers = peer_client_builder(answer_within).build().unwrap_or_default();
    let peer_tls = identity.map(|identity| Arc::new(PeerClients { identity, answer_within, clients: Mutex::default() }));
    Router::new().fallback(route).with_state(Ingress { supervisor, turns: Arc::default(), split_turns: Arc::default(), peers, peer_tls })
}

impl Ingress {
    fn split_turn(&self, workload: &str) -> Arc<AtomicUsize> {
        let mut turns = self.split_turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.entry(workload.to_string()).or_default().clone()
    }
}

fn peer_client_builder(answer_within: std::time::Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(2)).timeout(answer_within)
}

/// Headers that belong to one connection and are not passed on (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &hyper::header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Whether `path` is under `prefix`, on segment boundaries (`/api` covers `/api/x`, not `/apix`).
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The service whose route matches `host` and `path` most specifically (a host match, then the longest prefix).
fn best_route<'a>(routes: impl Iterator<Item = (&'a str, &'a Route)>, host: &str, path: &str) -> Option<&'a str> {
    routes
        .filter_map(|(name, route)| {
            let host_ok = route.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host));
            let path_ok = route.path_prefix.as_deref().is_none_or(|p| under(path, p));
            (host_ok && path_ok).then(|| ((route.host.is_some(), route.path_prefix.as_deref().map_or(0, str::len)), name))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, name)| name)
}

async fn route(State(ingress): State<Ingress>, ConnectInfo(client): ConnectInfo<SocketAddr>, mut request: Request) -> Response<Body> {
    let host_header = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let host = host_header.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host_header.as_str(), |(h, _)| h);
    let host = host.to_ascii_lowercase();
    let path = request.uri().path().to_string();
    let forwarded = mark_forwarded(&ingress, &mut request);

    let local = ingress.supervisor.service_workloads();
    let remote = ingress.supervisor.remote_endpoints.read().unwrap_or_else(|p| p.into_inner()).clone();
    let routes = local
        .iter()
        .filter_map(|w| w.spec.route.as_ref().map(|r| (w.metadata.name.as_str(), r)))
        .chain(remote.iter().filter_map(|e| e.route.as_ref().map(|r| (e.workload.as_str(), r))));
    let Some(name) = best_route(routes, &host, &path).map(str::to_string) else {
        return plain(StatusCode::NOT_FOUND, format!("no route for host `{host}` and path `{path}`"));
    };
    let turn = {
        let mut turns = ingress.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.entry(name.clone()).or_default().clone()
    };
    let metrics = &ingress.supervisor.ingress_metrics;
    let labels = vec![("workload", name.clone())];
    let started = std::time::Instant::now();
    let in_flight = metrics.in_flight.get_or_create(&labels).clone();
    in_flight.inc();

    let me = ingress.supervisor.node().to_string();
    let service = remote.iter().find(|e| e.workload == name);
    let split = service.and_then(|e| e.canary.as_ref());
    let pinned = pinned_revision(&mut request, forwarded);
    let mut local: Vec<_> = ingress.supervisor.endpoints().into_iter().filter(|e| e.workload.metadata.name == name).collect();
    local.sort_by(|a, b| a.instance.cmp(&b.instance));
    // The revisions to try, the chosen one first: the new one gets the split's share of requests, the header's, and
    // those another ingress chose it for; a revision with no Ready instance anywhere leaves its requests to the other.
    let order = match split {
        None => vec![Revision::Any],
        Some(split) => {
            let new = pinned.unwrap_or_else(|| wants_new(split, &request, &ingress.split_turn(&name)));
            if new { vec![Revision::New, Revision::Previous] } else { vec![Revision::Previous, Revision::New] }
        }
    };
    let mut response = None;
    for revision in order {
        let of = |instance: &str| match (revision, split) {
            (Revision::Any, _) | (_, None) => true,
            (Revision::New, Some(split)) => split.instances.iter().any(|i| i == instance),
            (Revision::Previous, Some(split)) => !split.instances.iter().any(|i| i == instance),
        };
        let mut here: Vec<_> = local.iter().filter(|e| of(&e.instance)).collect();
        if !here.is_empty() {
            let endpoint = here.swap_remove(turn.fetch_add(1, Ordering::Relaxed) % here.len()).clone();
            // Waiting for a permit is the back-pressure when the instance is busy.
            let answer = match endpoint.permits.clone().acquire_owned().await {
                Ok(_permit) => {
                    let started = std::time::Instant::now();
                    let answer = endpoint.service.handle(request).await;
                    endpoint.traffic.record(answer.status(), started.elapsed());
                    answer
                }
                Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("service `{name}` is stopping")),
            };
            response = Some(answer);
            break;
        }
        if forwarded {
            continue;
        }
        let listed = match (revision, split, service) {
            (Revision::New, Some(split), _) => split.endpoints.as_slice(),
            (_, _, Some(service)) => service.endpoints.as_slice(),
            _ => &[],
        };
        let peers: Vec<IngressEndpoint> = listed.iter().filter(|p| p.node != me).cloned().collect();
        if !peers.is_empty() {
            let start = turn.fetch_add(1, Ordering::Relaxed);
            let pin = split.map(|_| revision);
            response = Some(forward(&ingress, &me, client, &host_header, &name, request, &peers, start, pin).await);
            break;
        }
    }
    let response = response.unwrap_or_else(|| {
        if forwarded {
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("service `{name}` has no Ready instance on this node (a forwarded request is not forwarded again)"),
            )
        } else {
            plain(StatusCode::SERVICE_UNAVAILABLE, format!("service `{name}` has no Ready instance on any node"))
        }
    });
    in_flight.dec();
    metrics.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let class = format!("{}xx", response.status().as_u16() / 100);
    metrics.requests.get_or_create(&vec![("workload", name), ("code", class)]).inc();
    response
}

/// Sends the request to the first peer ingress that takes the connection,
/// starting at `start` round-robin, and streams its answer back.
#[allow(clippy::too_many_arguments)]
async fn forward(
    ingress: &Ingress,
    me: &str,
    from: SocketAddr,
    host: &str,
    service: &str,
    request: Request,
    peers: &[IngressEndpoint],
    start: usize,
    pin: Option<Revision>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    // Only requests without a body that may be sent twice are retried on another node.
    let bodiless = parts.headers.get(hyper::header::CONTENT_LENGTH).is_none_or(|v| v == "0")
        && !parts.headers.contains_key(hyper::header::TRANSFER_ENCODING);
    let retriable = bodiless && matches!(parts.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE");
    let mut body = Some(reqwest::Body::wrap_stream(body.into_data_stream()));
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut failures = Vec::new();
    for i in 0..peers.len() {
        let peer = &peers[(start + i) % peers.len()];
        let (client, base) = match peer_connection(ingress, peer) {
            Ok(connection) => connection,
            Err(why) => {
                failures.push(format!("{}: {why}", peer.node));
                continue;
            }
        };
        let mut outgoing = client.request(parts.method.clone(), format!("{base}{path}"));
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) && name != hyper::header::HOST && name != REVISION {
                outgoing = outgoing.header(name, value);
            }
        }
        let client_ip = from.ip().to_string();
        let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {client_ip}"),
            None => client_ip.clone(),
        };
        outgoing = outgoing
            .header(hyper::header::HOST, host)
            .header(FORWARDED_BY, me)
            .header("x-forwarded-for", forwarded_for)
            .header("x-forwarded-host", host)
            .header("x-forwarded-proto", "http")
            .header(hyper::header::FORWARDED, format!("for=\"{client_ip}\";host=\"{host}\";proto=http"));
        if let Some(value) = pin.and_then(Revision::header_value) {
            outgoing = outgoing.header(REVISION, value);
        }
        if let Some(body) = body.take() {
            outgoing = outgoing.body(body);
        }
        match outgoing.send().await {
            Ok(answer) => {
                let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let headers = answer.headers().clone();
                let mut response = Response::new(Body::from_stream(answer.bytes_stream()));
                *response.status_mut() = status;
                for (name, value) in &headers {
                    if !is_hop_by_hop(name) {
                        response.headers_mut().append(name.clone(), value.clone());
                    }
                }
                return response;
            }
            Err(e) if e.is_connect() && retriable => failures.push(format!("{}: {e}", peer.node)),
            Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("the ingress of node `{}` failed for `{service}`: {e}", peer.node)),
        }
    }
    plain(StatusCode::BAD_GATEWAY, format!("no node running `{service}` could be reached: {}", failures.join("; ")))
}

// Peers: which requests were forwarded, and how to reach a peer.

/// Whether `request` was forwarded by a peer. Joined over TLS, that is
/// whether it came over an authenticated peer connection: the marker header
/// is set to the peer's name, or removed from public requests, and the
/// request is counted by peer. Without a peer side the header tells.
fn mark_forwarded(ingress: &Ingress, request: &mut Request) -> bool {
    // No peer side (`--insecure-http`, or a master too old to hand out the node CA): peers forward in plain HTTP.
    if ingress.peer_tls.as_ref().is_none_or(|tls| !tls.identity.serves_peers()) {
        return request.headers().contains_key(FORWARDED_BY);
    }
    let peer = request.extensions().get::<PeerNode>().cloned();
    let headers = request.headers_mut();
    headers.remove(FORWARDED_BY);
    let Some(PeerNode(node)) = peer else { return false };
    if let Ok(value) = hyper::header::HeaderValue::from_str(&node) {
        headers.insert(FORWARDED_BY, value);
    }
    ingress.supervisor.ingress_metrics.peer_requests.get_or_create(&vec![("peer", node)]).inc();
    true
}

/// The client and base URL to forward to `peer` with: mutual TLS to its
/// `peerUrl`, or plain HTTP to a peer that serves no TLS (protocol version 1)
/// and under `--insecure-http`.
fn peer_connection<'a>(ingress: &Ingress, peer: &'a IngressEndpoint) -> Result<(reqwest::Client, &'a str), String> {
    match (&ingress.peer_tls, &peer.peer_url) {
        (Some(tls), Some(url)) => Ok((tls.client(&peer.node)?, url.as_str())),
        _ => Ok((ingress.peers.clone(), peer.url.as_str())),
    }
}

/// Clients for forwarding to peers over mutual TLS, one per peer node (each
/// accepts only that node's certificate), pooled, all presenting this node's.
struct PeerClients {
    identity: Arc<NodeIdentity>,
    answer_within: std::time::Duration,
    /// The node CA the clients trust, and the clients by node.
    clients: Mutex<(Option<String>, HashMap<String, reqwest::Client>)>,
}

impl PeerClients {
    fn client(&self, node: &str) -> Result<reqwest::Client, String> {
        let Some(nodes_ca) = self.identity.nodes_ca() else {
            return Err("this node does not know the node CA yet (not registered with the master)".to_string());
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let (trusted, by_node) = &mut *clients;
        if trusted.as_deref() != Some(nodes_ca.as_str()) {
            *trusted = Some(nodes_ca.clone());
            by_node.clear();
        }
        if let Some(client) = by_node.get(node) {
            return Ok(client.clone());
        }
        let tls = wasmlet_security::tls::client_for_node(&nodes_ca, node, Some(self.identity.slot.clone())).map_err(|e| e.to_string())?;
        let client = peer_client_builder(self.answer_within).use_preconfigured_tls(tls).build().map_err(|e| e.to_string())?;
        // Peers come and go; a fleet's worth of clients is kept at most.
        if by_node.len() >= 1024 {
            by_node.clear();
        }
        by_node.insert(node.to_string(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, prefix: Option<&str>) -> (String, Route) {
        (name.to_string(), Route { host: host.map(str::to_string), path_prefix: prefix.map(str::to_string) })
    }

    #[test]
    fn the_most_specific_route_wins() {
        let all = [route("root", None, Some("/")), route("api", None, Some("/api")), route("shop", Some("shop.local"), None)];
        let pick = |host: &str, path: &str| best_route(all.iter().map(|(n, r)| (n.as_str(), r)), host, path).map(str::to_string);
        assert_eq!(pick("x", "/api/v1").as_deref(), Some("api"));
        assert_eq!(pick("x", "/apix").as_deref(), Some("root"));
        assert_eq!(pick("shop.local", "/api").as_deref(), Some("shop"));
        assert_eq!(pick("x", "/").as_deref(), Some("root"));
        let none = [route("api", None, Some("/api"))];
        assert_eq!(best_route(none.iter().map(|(n, r)| (n.as_str(), r)), "x", "/other"), None);
    }

    fn split(weight: u32) -> CanarySplit {
        let header = Some(wasmlet_api::protocol::CanaryHeader { name: "x-canary".into(), value: "always".into() });
        CanarySplit { weight, header, endpoints: vec![], instances: vec![] }
    }

    #[test]
    fn a_split_sends_exactly_its_weight_of_every_hundred_requests_evenly() {
        for weight in [0, 1, 10, 33, 50, 99, 100] {
            let turn = AtomicUsize::new(0);
            let request = Request::new(Body::empty());
            let picks: Vec<bool> = (0..300).map(|_| wants_new(&split(weight), &request, &turn)).collect();
            assert_eq!(picks.iter().filter(|p| **p).count(), 3 * weight as usize, "weight {weight}");
            // Spread out: no run of the new revision longer than its share needs.
            if (1..=50).contains(&weight) {
                assert!(picks.windows(2).all(|w| !(w[0] && w[1])), "weight {weight}: never twice in a row");
            }
        }
    }

    #[test]
    fn the_canary_header_pins_a_request_and_only_its_value_does() {
        let turn = AtomicUsize::new(0);
        let with = |value: &str| Request::builder().header("x-canary", value).body(Body::empty()).unwrap();
        assert!((0..50).all(|_| wants_new(&split(0), &with("always"), &turn)));
        assert!((0..50).all(|_| !wants_new(&split(0), &with("never"), &turn)));
    }

    #[test]
    fn only_a_forwarded_request_keeps_the_revision_another_ingress_chose() {
        let pinned = |value: &str, forwarded: bool| {
            let mut request = Request::builder().header(REVISION, value).body(Body::empty()).unwrap();
            let revision = pinned_revision(&mut request, forwarded);
            assert!(!request.headers().contains_key(REVISION), "the header never reaches the guest");
            revision
        };
        assert_eq!(pinned("new", true), Some(true));
        assert_eq!(pinned("previous", true), Some(false));
        assert_eq!(pinned("new", false), None, "from the public it means nothing");
        assert_eq!(pinned("other", true), None);
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        assert!(is_hop_by_hop(&hyper::header::CONNECTION));
        assert!(is_hop_by_hop(&hyper::header::TRANSFER_ENCODING));
        assert!(!is_hop_by_hop(&hyper::header::CONTENT_TYPE));
    }
}
