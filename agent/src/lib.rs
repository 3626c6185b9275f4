//! wasmlet-agent: the node agent of wasmlet.
//!
//! # Layout
//! - `config`: every setting with its default, as flag, environment variable
//!   and config-file key.
//! - `report`: what the machine is and how it is doing. A probe reads the
//!   facts, thresholds turn them into conditions, and the reporter publishes
//!   a Node object (with its JSON and metrics pre-rendered) on a timer.
//! - `runtime`: the wasmtime engine every workload runs in.
//! - `api`: the local HTTP API (`/healthz`, `/readyz`, `/status`, `/metrics`),
//!   answering from the latest report.
//! - `status_cmd`: `wasmlet-agent status`, the report printed once.
//!
//! `main.rs` only parses settings, sets up logging and calls [`run`], so tests
//! start the very same agent in-process with their own listener and shutdown.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod report;
pub mod runtime;
pub mod status_cmd;

use std::future::Future;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{AgentConfig, Cli};
use report::{Clock, HostProbe, ReportSettings, Reporter};
use runtime::Runtime;

/// Runs the agent on `listener` until `shutdown` completes, then stops
/// sampling, ends open watches and finishes in-flight requests.
pub async fn run(config: AgentConfig, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the API listener's address")?;
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        tracing::warn!(data_dir = %config.data_dir.display(), error = %e, "cannot create the data dir; the node will report Ready=False");
    }
    let runtime = match Runtime::new() {
        Ok(r) => Ok(r.describe()),
        Err(e) => {
            tracing::error!(error = %e, "the WASM runtime did not start; the node will report Ready=False");
            Err(format!("the WASM runtime did not start: {e:#}"))
        }
    };
    let probe = Box::new(HostProbe::new(&config.data_dir));
    let (reporter, reports) = Reporter::new(probe, ReportSettings::from_config(&config), runtime, Clock::System);
    let node = reports.borrow().node.metadata.name.clone();
    tracing::info!(%node, api = %format!("http://{addr}"), data_dir = %config.data_dir.display(), "wasmlet agent started");

    let stop = CancellationToken::new();
    let sampler = tokio::spawn(reporter.run(stop.clone().cancelled_owned()));
    let app = api::router(api::ApiState { reports, watch_timeout: config.watch_timeout.get() });
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await.context("serving the agent API")?;
    sampler.await.context("the sampler task failed")?;
    tracing::info!("agent stopped");
    Ok(())
}
