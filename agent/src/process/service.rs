//! A service whose instance runs in its own process: the ingress's requests
//! go to the process over its Unix socket, as HTTP/1.1, unchanged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use futures::future::BoxFuture;
use hyper::StatusCode;

use super::RunHandle;
use crate::executor::{Exit, Service, plain};

/// How long a new service process has to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Time a service process gets beyond the request timeout it enforces itself.
const ANSWER_SLACK: Duration = Duration::from_secs(5);

pub(super) struct ProcessService {
    run: RunHandle,
    socket: PathBuf,
    request_timeout: Duration,
}

impl ProcessService {
    /// Waits until the run's process listens on `socket`; the error says why
    /// it never did (it ended: how).
    pub(super) async fn connect(run: RunHandle, socket: PathBuf, request_timeout: Duration) -> Result<std::sync::Arc<dyn Service>, String> {
        let ended = run.ended();
        let listening = async {
            loop {
                if tokio::net::UnixStream::connect(&socket).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            () = listening => Ok(Arc::new(ProcessService { run, socket, request_timeout })),
            exit = ended => Err(exit.message),
            () = tokio::time::sleep(START_TIMEOUT) => Err(format!("the service's process did not listen on {} within {START_TIMEOUT:?}", socket.display())),
        }
    }

    async fn forward(&self, request: hyper::Request<Body>) -> Result<hyper::Response<Body>, String> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| format!("cannot reach the service's process: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot talk to the service's process: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let response = sender.send_request(request).await.map_err(|e| format!("the service's process failed the request: {e}"))?;
        Ok(response.map(Body::new))
    }
}

impl Service for ProcessService {
    fn handle(self: Arc<Self>, request: hyper::Request<Body>) -> BoxFuture<'static, hyper::Response<Body>> {
        Box::pin(async move {
            match tokio::time::timeout(self.request_timeout + ANSWER_SLACK, self.forward(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(why)) => plain(StatusCode::BAD_GATEWAY, why),
                Err(_) => plain(StatusCode::BAD_GATEWAY, "the service's process did not answer"),
            }
        })
    }

    fn ended(&self) -> BoxFuture<'static, Exit> {
        self.run.ended()
    }

    fn outlives_agent(&self) -> bool {
        true
    }
}
