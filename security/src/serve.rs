//! Serving an axum router on a bound listener, over TLS or plain HTTP, until
//! a cancellation token fires; then in-flight requests finish (handlers end
//! their long polls on the same token).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `listener` (with the peer's [`SocketAddr`] as connect info)
/// until `shutdown` is cancelled and every connection has finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopper.graceful_shutdown(None);
    });
    let listener = listener.into_std()?;
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(config) => axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(config))?.handle(handle).serve(service).await,
        None => axum_server::from_tcp(listener)?.handle(handle).serve(service).await,
    }
}
