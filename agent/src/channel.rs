//! The channel the agent holds open to each master (protocol version 4), so
//! that the master reaches the agent's API for operators' live requests
//! (logs, `-f` included, the report, the instances with their usage) even
//! when it cannot open a connection to the node: behind NAT, carrier-grade
//! NAT, a firewall that lets only outbound connections through.
//!
//! The agent asks `GET /api/v1/nodes/{name}/channel` with its node
//! credential and `Upgrade: wasmlet-channel`, over the same verified TLS as
//! every other request to the master; on `101` it serves its own API router
//! over the connection as an HTTP/2 server, so the master's requests pass
//! the same checks (the master token) as on the agent's listener. One
//! channel per master of `--master`, each reopened with back-off when it
//! ends, and at once with the new credential after a renewal (the older
//! channel serving on until its successor is open). Both sides ping:
//! a connection a NAT forgot is noticed within [`KEEPALIVE`] and
//! [`KEEPALIVE_TIMEOUT`], and opened again.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use wasmlet_api::protocol::CHANNEL_UPGRADE;

use crate::master_link::{Backoff, MasterLink};

/// How often the agent pings a master over its channel.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// How long a ping may go unanswered before the channel is opened again.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests a master may have in flight over one channel.
const MAX_STREAMS: u32 = 64;

/// Holds a channel open to each master of the link until `stop`.
pub async fn hold(link: Arc<MasterLink>, app: Router, stop: CancellationToken) {
    let tasks: Vec<_> =
        link.masters().iter().map(|master| tokio::spawn(hold_one(link.clone(), master.clone(), app.clone(), stop.clone()))).collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// Why a channel could not be opened.
enum Refused {
    /// Not registered yet, or the master speaks a protocol older than channels: ask again soon.
    NotYet,
    Failed(String),
}

async fn hold_one(link: Arc<MasterLink>, master: String, app: Router, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut last_error = String::new();
    // A channel opened with a credential since renewed: it serves on until its successor is open.
    let mut retiring: Option<oneshot::Sender<()>> = None;
    loop {
        let credentials = link.credential_changes();
        let opened = open(&link, &master).await;
        if let Some(retire) = retiring.take() {
            let _ = retire.send(());
        }
        let wait = match opened {
            Ok(upgraded) => {
                backoff.reset();
                last_error.clear();
                tracing::info!(master = %master, "opened the channel to the master");
                match serve(upgraded, app.clone(), credentials, &stop).await {
                    Ended::Stopping => return,
                    Ended::Renewed(retire) => {
                        retiring = Some(retire);
                        Duration::ZERO
                    }
                    Ended::Closed(why) => {
                        tracing::info!(master = %master, why = %why, "the channel to the master closed; opening it again");
                        backoff.next()
                    }
                }
            }
            Err(Refused::NotYet) => Duration::from_secs(1),
            Err(Refused::Failed(why)) => {
                let retry = backoff.next();
                if why != last_error {
                    tracing::warn!(master = %master, error = %why, retry_in = ?retry, "cannot open the channel to the master");
                    last_error = why;
                }
                retry
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn open(link: &MasterLink, master: &str) -> Result<reqwest::Upgraded, Refused> {
    let request = link.channel_request(master).ok_or(Refused::NotYet)?;
    let answer = request
        .header(reqwest::header::CONNECTION, "Upgrade")
        .header(reqwest::header::UPGRADE, CHANNEL_UPGRADE)
        .send()
        .await
        .map_err(|e| Refused::Failed(wasmlet_security::error_chain(&e)))?;
    match answer.status() {
        reqwest::StatusCode::SWITCHING_PROTOCOLS => {}
        status => {
            let body = answer.text().await.unwrap_or_default();
            let text: String = body.chars().take(300).collect();
            return Err(Refused::Failed(format!("the master answered {status}: {}", text.trim())));
        }
    }
    answer.upgrade().await.map_err(|e| Refused::Failed(format!("the upgrade failed: {}", wasmlet_security::error_chain(&e))))
}

/// How serving a channel ended.
enum Ended {
    /// The connection ended: why.
    Closed(String),
    /// The node's credential was renewed: the channel serves on (requests in
    /// flight included) until the sender fires, then ends gracefully.
    Renewed(oneshot::Sender<()>),
    Stopping,
}

/// Serves the agent's API over the channel until it ends, the credential
/// changes or `stop`.
async fn serve(
    upgraded: reqwest::Upgraded,
    app: Router,
    mut credentials: tokio::sync::watch::Receiver<u64>,
    stop: &CancellationToken,
) -> Ended {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS);
    let mut connection = Box::pin(builder.serve_connection(TokioIo::new(upgraded), TowerToHyperService::new(app)));
    tokio::select! {
        ended = connection.as_mut() => Ended::Closed(match ended {
            Ok(()) => "the master closed it".into(),
            Err(e) => e.to_string(),
        }),
        _ = credentials.changed() => {
            let (retire, retired) = oneshot::channel::<()>();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = connection.as_mut() => return,
                    _ = retired => {}
                    () = stop.cancelled() => {}
                }
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(60), connection).await;
            });
            Ended::Renewed(retire)
        }
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
            Ended::Stopping
        }
    }
}
