//! Serving an axum router on a bound listener, over TLS or plain HTTP, until
//! a cancellation token fires; then in-flight requests finish (handlers end
//! their long polls on the same token).
//!
//! Every listener is bounded, so that slow or idle clients can neither keep
//! connections forever nor take the process's file descriptors:
//! - at most [`ConnectionLimits::max_connections`] at once: one more is
//!   closed as soon as it is accepted (and counted), so connections already
//!   accepted go on being served, and the kernel's backlog ([`BACKLOG`]) is
//!   drained as fast as connections come;
//! - a client has [`ConnectionLimits::header_read_timeout`] to send a
//!   request's whole header: from the connection's opening (a TLS handshake
//!   included), or on a kept-alive connection from the first byte of the
//!   next request. One header byte a second does not keep a connection;
//! - a kept-alive connection with no request in flight that receives nothing
//!   for [`ConnectionLimits::idle_timeout`] is closed.
//!
//! A request in flight (a long poll, a streamed log) is never cut by these
//! timers, nor is a connection a request upgraded to another protocol (an
//! agent's channel: its own keepalive watches it). What a listener refused and closed is counted in
//! [`ConnectionMetrics`], which the daemons render on `/metrics`.
//!
//! [`raise_open_files_limit`] lifts the process's soft limit on open files to
//! its hard limit at start; the daemons size their default limits from it.

use std::future::{Future, Ready, ready};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioExecutor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// The fewest connections a listener is allowed, whatever its share of a small open-files limit.
pub const MIN_CONNECTIONS: usize = 16;

/// Connections the kernel keeps waiting for `accept` (capped by `net.core.somaxconn`).
/// The standard library's 128 overflows in a burst of connections; the kernel then
/// drops their handshakes' last step, and such a client believes itself connected
/// to a server that never sees it. A longer queue lets the server take each
/// connection and decide: serve it, or close it at the limit.
pub const BACKLOG: i32 = 4096;

/// How much one listener may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time to send a request's whole header, from the connection's opening or the request's first byte.
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request without receiving anything.
    pub idle_timeout: Duration,
}

/// `percent` of the open-files limit `open_files`, and at least [`MIN_CONNECTIONS`]:
/// how the daemons size a listener's connection limit when it is not set.
pub fn share_of_open_files(open_files: u64, percent: u64) -> usize {
    usize::try_from(open_files.saturating_mul(percent) / 100).unwrap_or(usize::MAX).max(MIN_CONNECTIONS)
}

/// Raises the soft limit on open files to the hard limit and returns the
/// soft limit now in force. Connections, module files, logs and sockets to
/// peers all take descriptors; the kernel's soft default (often 1024) is far
/// below what the hard limit (and a systemd unit's `LimitNOFILE`) allows.
pub fn raise_open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit cannot be the soft one for files (the kernel caps it at nr_open).
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
        && let Err(e) = setrlimit(Resource::Nofile, Rlimit { current: Some(maximum), maximum: Some(maximum) })
    {
        tracing::warn!(current, maximum, error = %e, "cannot raise the open-files limit to its hard limit");
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    listener: String,
    /// `header`: a request header came too slowly; `idle`: nothing came on a kept-alive connection.
    phase: String,
}

/// Connection figures of every listener of a process, labelled by listener.
/// Clones share the figures.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    open: Family<ListenerLabel, Gauge>,
    limit: Family<ListenerLabel, Gauge>,
    accepted: Family<ListenerLabel, Counter>,
    refused: Family<ListenerLabel, Counter>,
    timed_out: Family<TimeoutLabels, Counter>,
}

impl ConnectionMetrics {
    /// Adds the figures to `registry` (under its prefix): `connections_open`,
    /// `connection_limit`, `connections_accepted_total`,
    /// `connections_refused_total` and `connections_timed_out_total{phase}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("connections_open", "Connections open now, by listener", self.open.clone());
        registry.register("connection_limit", "Most connections a listener keeps open at once", self.limit.clone());
        registry.register("connections_accepted", "Connections accepted within the listener's limit", self.accepted.clone());
        registry.register(
            "connections_refused",
            "Connections closed as soon as accepted because the listener was at its limit",
            self.refused.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed because a request header came too slowly (phase=header) or a kept-alive connection stayed idle (phase=idle)",
            self.timed_out.clone(),
        );
    }

    /// The figures as OpenMetrics text (without `# EOF`), each name prefixed with `prefix_`.
    pub fn render(&self, prefix: &str) -> String {
        let mut registry = Registry::with_prefix(prefix);
        self.register(&mut registry);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode the connection metrics");
        }
        out
    }
}

/// One listener: its name (the `listener` label of its figures), its limits and where it counts.
#[derive(Debug, Clone)]
pub struct Connections {
    pub listener: &'static str,
    pub limits: ConnectionLimits,
    pub metrics: ConnectionMetrics,
}

/// Serves `app` on `listener` (with the peer's [`SocketAddr`] as connect info)
/// within `connections`' limits, until `shutdown` is cancelled and every
/// connection has finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<ServerConfig>>,
    connections: Connections,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = connections.limits;
    let (server, gate) = bounded_server(listener, connections, shutdown)?;
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(config) => {
            let acceptor =
                RustlsAcceptor::new(RustlsConfig::from_config(config)).handshake_timeout(limits.header_read_timeout).acceptor(gate);
            server.acceptor(acceptor).serve(service).await
        }
        None => server.acceptor(gate).serve(service).await,
    }
}

/// A server on `listener` within `connections`' limits that stops gracefully
/// when `shutdown` is cancelled, and the gate its acceptor must start with.
pub(crate) fn bounded_server(
    listener: tokio::net::TcpListener,
    connections: Connections,
    shutdown: CancellationToken,
) -> io::Result<(axum_server::Server<SocketAddr>, Gate)> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(None);
    });
    let limits = connections.limits;
    let gate = Gate::new(connections);
    // Listening again on a listening socket sets its backlog anew.
    rustix::net::listen(&listener, BACKLOG)?;
    let server = axum_server::from_tcp(listener.into_std()?)?.handle(handle);
    Ok((configure(server, limits), gate))
}

/// HTTP/1 only, with upgrades (axum-server's own `http1_only` turns them
/// off), and hyper's own header timer as a backstop: it starts when the
/// connection waits for a request, so it covers the idle time and the header together.
fn configure<A>(mut server: axum_server::Server<SocketAddr, A>, limits: ConnectionLimits) -> axum_server::Server<SocketAddr, A> {
    let builder = std::mem::replace(server.http_builder(), hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()));
    *server.http_builder() = builder.http1_only();
    let backstop = limits.header_read_timeout.checked_add(limits.idle_timeout);
    server.http_builder().http1().header_read_timeout(backstop);
    server
}

/// A listener's gate: takes a permit for each accepted connection, or
/// closes it when none is left.
#[derive(Debug, Clone)]
pub(crate) struct Gate(Arc<GateState>);

#[derive(Debug)]
struct GateState {
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    label: ListenerLabel,
    /// Set while connections are being refused, so the warning is logged once per episode.
    refusing: AtomicBool,
}

impl Gate {
    /// The header-read timeout of this listener's connections.
    pub(crate) fn header_read_timeout(&self) -> Duration {
        self.0.limits.header_read_timeout
    }

    fn new(connections: Connections) -> Gate {
        let label = ListenerLabel { listener: connections.listener.to_string() };
        let max = connections.limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        connections.metrics.limit.get_or_create(&label).set(i64::try_from(max).unwrap_or(i64::MAX));
        Gate(Arc::new(GateState {
            permits: Arc::new(Semaphore::new(max)),
            limits: connections.limits,
            metrics: connections.metrics,
            label,
            refusing: AtomicBool::new(false),
        }))
    }
}

impl<S> Accept<TcpStream, S> for Gate {
    type Stream = BoundedStream;
    type Service = BoundedService<S>;
    type Future = Ready<io::Result<(BoundedStream, BoundedService<S>)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let gate = &self.0;
        let Ok(permit) = gate.permits.clone().try_acquire_owned() else {
            gate.metrics.refused.get_or_create(&gate.label).inc();
            if !gate.refusing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    listener = %gate.label.listener,
                    limit = gate.limits.max_connections,
                    "the listener is at its connection limit: new connections are closed until some end"
                );
            }
            // Dropping the stream closes the connection.
            return ready(Err(io::Error::other("connection limit reached")));
        };
        if gate.refusing.swap(false, Ordering::Relaxed) {
            tracing::info!(listener = %gate.label.listener, "the listener accepts connections again");
        }
        gate.metrics.accepted.get_or_create(&gate.label).inc();
        gate.metrics.open.get_or_create(&gate.label).inc();
        let wait = Arc::new(Mutex::new(Wait::Waiting { since: Instant::now(), header_from: Some(Instant::now()) }));
        let stream = BoundedStream { io: stream, wait: wait.clone(), gate: self.0.clone(), timer: None, _permit: permit };
        ready(Ok((stream, BoundedService { inner: service, wait })))
    }
}

/// What a connection is doing, as far as its timers are concerned.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Requests are being served (their answers not yet sent to the end): no timer runs.
    Busy(usize),
    /// Waiting for a request since `since`; its header's time runs from `header_from`
    /// (the opening, or the first byte after an idle spell).
    Waiting { since: Instant, header_from: Option<Instant> },
    /// Upgraded to another protocol (`101 Switching Protocols`): no more HTTP/1 requests, no timer.
    Upgraded,
}

impl Wait {
    /// When the connection is to be closed, and why, if nothing more arrives.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, &'static str)> {
        match *self {
            Wait::Busy(_) | Wait::Upgraded => None,
            Wait::Waiting { header_from: Some(from), .. } => from.checked_add(limits.header_read_timeout).map(|t| (t, "header")),
            Wait::Waiting { since, header_from: None } => since.checked_add(limits.idle_timeout).map(|t| (t, "idle")),
        }
    }
}

fn lock(wait: &Mutex<Wait>) -> MutexGuard<'_, Wait> {
    wait.lock().unwrap_or_else(|e| e.into_inner())
}

/// An accepted connection: holds its permit, and ends reading with
/// `TimedOut` when the client is too slow or idle too long.
pub struct BoundedStream {
    io: TcpStream,
    wait: Arc<Mutex<Wait>>,
    gate: Arc<GateState>,
    /// Wakes the connection at its deadline; made on the first wait.
    timer: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl BoundedStream {
    /// Reads the next bytes without taking them from the connection.
    pub(crate) async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.peek(buf).await
    }
}

impl Drop for BoundedStream {
    fn drop(&mut self) {
        self.gate.metrics.open.get_or_create(&self.gate.label).dec();
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        let deadline = {
            let mut wait = lock(&this.wait);
            match (&result, &mut *wait) {
                (Poll::Ready(Ok(())), Wait::Waiting { header_from, .. }) if buf.filled().len() > before => {
                    header_from.get_or_insert_with(Instant::now);
                    None
                }
                (Poll::Pending, waiting) => waiting.deadline(&this.gate.limits),
                _ => None,
            }
        };
        let Some((deadline, phase)) = deadline else { return result };
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return result;
        }
        let labels = TimeoutLabels { listener: this.gate.label.listener.clone(), phase: phase.to_string() };
        this.gate.metrics.timed_out.get_or_create(&labels).inc();
        let why = match phase {
            "header" => "the request header did not arrive in time",
            _ => "the connection stayed idle too long",
        };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Marks its connection busy from the moment a request's header is in
/// until its answer's body has been sent (or dropped).
struct Busy(Arc<Mutex<Wait>>);

impl Busy {
    fn enter(wait: Arc<Mutex<Wait>>) -> Busy {
        {
            let mut state = lock(&wait);
            *state = match *state {
                Wait::Busy(n) => Wait::Busy(n + 1),
                Wait::Waiting { .. } => Wait::Busy(1),
                Wait::Upgraded => Wait::Upgraded,
            };
        }
        Busy(wait)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        *state = match *state {
            Wait::Busy(n) if n > 1 => Wait::Busy(n - 1),
            Wait::Upgraded => Wait::Upgraded,
            _ => Wait::Waiting { since: Instant::now(), header_from: None },
        };
    }
}

/// The router's service for one connection, keeping the connection busy while it answers.
#[derive(Clone)]
pub struct BoundedService<S> {
    inner: S,
    wait: Arc<Mutex<Wait>>,
}

impl<S, B> tower_service::Service<Request<Incoming>> for BoundedService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + Unpin + Send + 'static,
{
    type Response = Response<BusyBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let busy = Busy::enter(self.wait.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                *lock(&busy.0) = Wait::Upgraded;
            }
            Ok(response.map(|body| BusyBody { body, _busy: busy }))
        })
    }
}

/// An answer's body; the connection is busy until it is dropped.
pub struct BusyBody<B> {
    body: B,
    _busy: Busy,
}

impl<B> Body for BusyBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_the_open_files_limit() {
        assert_eq!(share_of_open_files(20_000, 25), 5_000);
        assert_eq!(share_of_open_files(1_024, 5), 51);
        assert_eq!(share_of_open_files(10, 25), MIN_CONNECTIONS);
        assert_eq!(share_of_open_files(u64::MAX, 75), usize::try_from(u64::MAX / 100).unwrap_or(usize::MAX));
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let limits =
            ConnectionLimits { max_connections: 1, header_read_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60) };
        let t0 = Instant::now();
        assert!(Wait::Busy(1).deadline(&limits).is_none());
        assert_eq!(Wait::Waiting { since: t0, header_from: None }.deadline(&limits), Some((t0 + Duration::from_secs(60), "idle")));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(Wait::Waiting { since: t0, header_from: Some(t1) }.deadline(&limits), Some((t1 + Duration::from_secs(10), "header")));
        let forever = ConnectionLimits { idle_timeout: Duration::MAX, ..limits };
        assert_eq!(Wait::Waiting { since: t0, header_from: None }.deadline(&forever), None);
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A router with a quick answer and one that takes `slow` to come, served within `limits`.
    async fn served(limits: ConnectionLimits, slow: Duration) -> (SocketAddr, ConnectionMetrics, CancellationToken) {
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" })).route(
            "/slow",
            axum::routing::get(move || async move {
                tokio::time::sleep(slow).await;
                "late"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = ConnectionMetrics::default();
        let stop = CancellationToken::new();
        let connections = Connections { listener: "test", limits, metrics: metrics.clone() };
        tokio::spawn(serve(listener, app, None, connections, stop.clone()));
        (addr, metrics, stop)
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out)).await.expect("the server closes the connection");
        String::from_utf8_lossy(&out).into_owned()
    }

    fn count(metrics: &ConnectionMetrics, series: &str) -> f64 {
        let text = metrics.render("t");
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_the_accepted_ones_served() {
        let limits =
            ConnectionLimits { max_connections: 2, header_read_timeout: Duration::from_secs(30), idle_timeout: Duration::from_secs(30) };
        let (addr, metrics, stop) = served(limits, Duration::ZERO).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        let mut second = TcpStream::connect(addr).await.expect("connect");
        // Both are accepted once they are counted open.
        while count(&metrics, "t_connections_open{listener=\"test\"}") < 2.0 {
            tokio::task::yield_now().await;
        }
        let mut third = TcpStream::connect(addr).await.expect("the kernel completes the handshake");
        assert_eq!(until_closed(&mut third).await, "", "the third connection is closed unanswered");
        assert_eq!(count(&metrics, "t_connections_refused_total{listener=\"test\"}"), 1.0);
        for stream in [&mut first, &mut second] {
            stream.write_all(REQUEST).await.expect("request");
            let mut answer = [0u8; 256];
            let n = stream.read(&mut answer).await.expect("answer");
            assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
        }
        drop(first);
        // A place is free again once the server has seen the close.
        while count(&metrics, "t_connections_open{listener=\"test\"}") >= 2.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut again = TcpStream::connect(addr).await.expect("connect");
        again.write_all(REQUEST).await.expect("request");
        let mut answer = [0u8; 256];
        let n = again.read(&mut answer).await.expect("answer");
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer[..n]));
        assert_eq!(count(&metrics, "t_connection_limit{listener=\"test\"}"), 2.0);
        stop.cancel();
    }

    /// An upgraded connection (an agent's channel) outlives the header and idle timers;
    /// a request with `Upgrade` that is answered without `101` stays under them.
    #[tokio::test]
    async fn an_upgraded_connection_is_not_cut_by_the_timers() {
        use axum::response::IntoResponse;
        let limits = ConnectionLimits {
            max_connections: 10,
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
        };
        let echo = |mut request: axum::extract::Request| async move {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = io.read(&mut buf).await {
                    if io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let mut response = hyper::StatusCode::SWITCHING_PROTOCOLS.into_response();
            response.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("upgrade"));
            response.headers_mut().insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("echo"));
            response
        };
        let app = Router::new().route("/echo", axum::routing::get(echo)).route("/", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let connections = Connections { listener: "test", limits, metrics: ConnectionMetrics::default() };
        tokio::spawn(serve(listener, app, None, connections, stop.clone()));

        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.expect("request");
        let mut answer = [0u8; 256];
        let n = stream.read(&mut answer).await.expect("answer");
        assert!(answer[..n].starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&answer[..n]));
        // Longer than both timers, silent, then a few bytes: echoed.
        tokio::time::sleep(Duration::from_millis(800)).await;
        stream.write_all(b"still here").await.expect("write");
        let mut echoed = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed)).await.expect("in time").expect("echoed");
        assert_eq!(&echoed, b"still here");

        // Asking for an upgrade a route does not give: an ordinary connection, closed when idle.
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.expect("request");
        let text = until_closed(&mut plain).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        stop.cancel();
    }

    #[tokio::test]
    async fn slow_headers_and_idle_connections_are_closed_but_answers_in_progress_are_not() {
        let limits = ConnectionLimits {
            max_connections: 10,
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
        };
        let (addr, metrics, stop) = served(limits, Duration::from_millis(1500)).await;

        // Silent from the start: the header's time runs from the opening.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(until_closed(&mut silent).await, "");

        // A header trickled: cut off although bytes keep coming.
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.expect("start");
        let mut sent = 0;
        while slow.write_all(b"X: y\r\n").await.is_ok() && sent < 100 {
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut probe = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
                break;
            }
        }
        assert!(sent < 100, "a trickled header held the connection");
        assert!(started.elapsed() >= Duration::from_millis(300));

        // Kept alive after an answer, then idle: closed after the idle time, not the header's.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(REQUEST).await.expect("request");
        let answered = tokio::time::Instant::now();
        let text = until_closed(&mut idle).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(answered.elapsed() >= Duration::from_millis(600), "closed after {:?}", answered.elapsed());

        // An answer that takes longer than both timers is still delivered.
        let mut patient = TcpStream::connect(addr).await.expect("connect");
        patient.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("request");
        let text = until_closed(&mut patient).await;
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("late"), "{text}");

        assert_eq!(count(&metrics, "t_connections_timed_out_total{listener=\"test\",phase=\"header\"}"), 2.0);
        assert_eq!(count(&metrics, "t_connections_timed_out_total{listener=\"test\",phase=\"idle\"}"), 2.0);
        stop.cancel();
    }
}
