//! One port, two audiences: an ingress serves the public over plain HTTP and
//! its peers (other nodes forwarding service requests) over mutual TLS, on
//! the same listener.
//!
//! Each connection's first byte decides. A TLS ClientHello starts with a
//! handshake record (`0x16`), which no HTTP request line does: such a
//! connection must complete a handshake that requires a client certificate
//! of the node CA, and every request on it carries the [`PeerNode`] the
//! certificate names. Everything else is served as plain HTTP without it. So
//! "this request was forwarded by a node of this cluster" is a fact of the
//! connection, which an outside client cannot forge with a header.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use axum::Router;
use hyper::Request;
use hyper::body::Incoming;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use axum_server::accept::Accept;

use crate::pki::node_of_certificate;
use crate::serve::{BoundedService, BoundedStream, Connections, Gate, bounded_server};

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// The node a request came from, set on requests that arrived over a peer
/// connection authenticated with that node's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode(pub String);

/// The TLS configuration of the peer side, set once the node has its
/// certificate and knows the node CA; until then TLS connections are refused.
#[derive(Debug, Default)]
pub struct PeerServerSlot(RwLock<Option<Arc<ServerConfig>>>);

impl PeerServerSlot {
    pub fn set(&self, config: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(config);
    }

    fn get(&self) -> Option<Arc<ServerConfig>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Serves `app` on `listener`: plain HTTP, and mutual TLS for peers (see the
/// module docs), until `shutdown` is cancelled and every connection finished.
pub async fn serve_with_peers(
    listener: tokio::net::TcpListener,
    app: Router,
    peers: Arc<PeerServerSlot>,
    connections: Connections,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (server, gate) = bounded_server(listener, connections, shutdown)?;
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    server.acceptor(PeerAcceptor { gate, peers }).serve(service).await
}

/// Sorts connections the listener's gate let in into peers (TLS) and the
/// public (anything else). The gate's timers bound the first byte and the
/// handshake like any request header.
#[derive(Clone)]
struct PeerAcceptor {
    gate: Gate,
    peers: Arc<PeerServerSlot>,
}

type Accepted<S> = std::io::Result<(Either<TlsStream<BoundedStream>, BoundedStream>, WithPeer<BoundedService<S>>)>;

impl<S: Send + 'static> Accept<TcpStream, S> for PeerAcceptor {
    type Stream = Either<TlsStream<BoundedStream>, BoundedStream>;
    type Service = WithPeer<BoundedService<S>>;
    type Future = Pin<Box<dyn Future<Output = Accepted<S>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peers = self.peers.clone();
        let within = self.gate.header_read_timeout();
        let admitted = self.gate.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = admitted.await?;
            let timed_out = |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} took over {within:?}"));
            let mut first = [0u8; 1];
            let read = tokio::time::timeout(within, stream.peek(&mut first)).await.map_err(|_| timed_out("the first byte"))??;
            if read == 0 || first[0] != TLS_HANDSHAKE {
                return Ok((Either::Right(stream), WithPeer { inner: service, peer: None }));
            }
            let config = peers.get().ok_or_else(|| std::io::Error::other("a peer connection before this node has its certificate"))?;
            let tls = tokio::time::timeout(within, tokio_rustls::TlsAcceptor::from(config).accept(stream))
                .await
                .map_err(|_| timed_out("the peer's TLS handshake"))??;
            // The handshake verified the chain to the node CA; the name is the node's.
            let node = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| node_of_certificate(leaf))
                .ok_or_else(|| std::io::Error::other("the peer's certificate names no node"))?;
            Ok((Either::Left(tls), WithPeer { inner: service, peer: Some(PeerNode(node)) }))
        })
    }
}

/// Adds the connection's [`PeerNode`], if any, to every request on it.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: Option<PeerNode>,
}

impl<S: Service<Request<Incoming>>> Service<Request<Incoming>> for WithPeer<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(peer) = &self.peer {
            request.extensions_mut().insert(peer.clone());
        }
        self.inner.call(request)
    }
}
