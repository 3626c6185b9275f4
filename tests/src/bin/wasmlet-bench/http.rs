//! Scenario `http`: what serving a wasi:http component through the agent's
//! ingress costs, next to the wasmtime CLI serving the same component, and a
//! native Rust server as the ceiling. All with the same `http-hello` component
//! (`wasm-examples/dist/http-hello.wasm`, answering `hello from wasmlet on
//! <node>`), the same load from a separate process and on loopback only, one
//! server at a time:
//!
//! 1. Reference: `wasmtime serve -Scli --addr 127.0.0.1:PORT --env
//!    WASMLET_NODE=NODE http-hello.wasm` (the wasmtime CLI `make bench-deps`
//!    installs, `$WASMTIME` or `/var/tmp/wasmlet-tools/bin/wasmtime`): requests
//!    per second, p50, p99, failed requests.
//! 2. The agent serving it through its ingress: an agent with a manifests dir
//!    holding the component as a `type: service` with `route: {pathPrefix: /}`,
//!    measured once its instance is Running and the ingress answers with the
//!    greeting. The same figures, plus ratios against the reference: requests
//!    per second (goal >= 1.0) and p99 (goal <= 1.0).
//! 3. The agent forwarding to a replica on another agent: not measured yet,
//!    as the ingress does not forward to other nodes; one `null` figure says so.
//! 4. Ceiling: a native axum (hyper) server on a tokio runtime inside the bench
//!    process, answering the same text: the same figures, and the reference's
//!    requests per second as a share of it.
//!
//! Each load is `wrk -t1 -c32 -d10s --latency` after a 2 s warm-up (which also
//! lets wasmtime and the agent compile the component) and a 1 s pause. Every
//! process and the native server are stopped by guards when `run` returns,
//! also on an error or a panic.

use std::fmt::Display;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::blocking::Client;
use wasmlet_api::Phase;
use wasmlet_tests::{Agent, Master, examples_dir, workload_manifest};

use crate::figures::{Figure, Figures, Goal};
use crate::support::{free_port, http_client, place_manifest, poll_until, require_agent_and_wasmtime};
use crate::wrk::{self, Load, WrkReport};

/// The subject names in the figures.
const WASMTIME_SERVE: &str = "wasmtime-serve";
const AGENT: &str = "agent";
const NATIVE: &str = "native-axum";

/// The node name every server puts into the greeting, so all answer the same bytes.
const NODE: &str = "bench";
const COMPONENT: &str = "http-hello";
/// The workload's name in the agent; its one instance is `<name>-0`.
const WORKLOAD: &str = "hello";

const LOAD: Load = Load { threads: 1, connections: 32, duration: Duration::from_secs(10) };
const WARM_UP: Load = Load { duration: Duration::from_secs(2), ..LOAD };
/// A pause after the warm-up, for the requests wrk dropped mid-way to finish.
const DRAIN: Duration = Duration::from_secs(1);
/// Generous: the first answer may wait for the component to compile.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const READY_EVERY: Duration = Duration::from_millis(100);
const RPS_RATIO_GOAL: Goal = Goal::AtLeast(1.0);
const P99_RATIO_GOAL: Goal = Goal::AtMost(1.0);
const FORWARDED_GOAL: Goal = Goal::AtLeast(0.5);
/// The figures of requests sent to an agent without a replica, forwarded to one that has it.
const AGENT_FORWARDED: &str = "agent-forwarded";

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    // Fail before starting anything when a tool is missing.
    let (wasmtime, version) = require_agent_and_wasmtime("http")?;
    wrk::require()?;
    let component = examples_dir().join(format!("{COMPONENT}.wasm"));
    if !component.is_file() {
        bail!("{} not found: run `make examples`", component.display());
    }
    let client = http_client()?;

    // 1. The reference, stopped before the next server starts.
    let reference = {
        progress(format!("starting `{version}` serve on {COMPONENT}.wasm"));
        let mut server = WasmtimeServe::start(&wasmtime, &component, &client)?;
        let report = load(figures, WASMTIME_SERVE, &server.url, &format!("{version}: `wasmtime serve -Scli` of {COMPONENT}.wasm"))?;
        server.check_alive()?;
        report
    };

    // 2. The agent serving it through its ingress.
    let agent = {
        let manifests = tempfile::Builder::new().prefix("wasmlet-bench-manifests-").tempdir().context("creating a manifests dir")?;
        let manifests_arg = manifests.path().to_string_lossy().into_owned();
        progress("starting an agent with the service in its manifests dir");
        let agent = Agent::start(&["--manifests-dir", &manifests_arg, "--manifests-poll-interval", "100ms", "--name", NODE])
            .context("starting wasmlet-agent")?;
        place_manifest(
            manifests.path(),
            &format!("{WORKLOAD}.yaml"),
            &workload_manifest(WORKLOAD, COMPONENT, "service", "  route: {pathPrefix: /}\n"),
        )?;
        wait_running(&agent, &format!("{WORKLOAD}-0"))?;
        let url = format!("{}/", agent.ingress);
        wait_greeting(&client, &url, "the agent's ingress", || Ok(()))?;
        load(figures, AGENT, &url, &format!("the agent's ingress, {COMPONENT}.wasm as a service with route pathPrefix /"))?
    };
    figures.emit(
        Figure::ratio(AGENT, "rps", agent.requests_per_second, WASMTIME_SERVE, reference.requests_per_second, RPS_RATIO_GOAL)
            .note("requests per second through the agent's ingress over wasmtime serve's"),
    )?;
    figures.emit(
        Figure::ratio(AGENT, "p99_ms", agent.p99_ms, WASMTIME_SERVE, reference.p99_ms, P99_RATIO_GOAL)
            .note("p99 latency through the agent's ingress over wasmtime serve's"),
    )?;

    // 3. An agent without a replica forwarding to the agent that has it.
    let forwarded = {
        progress("starting a master, the serving agent, then a second agent without a replica");
        let master = Master::start(&[]).context("starting wasmlet-master")?;
        let serving = Agent::start(&["--master", &master.url, "--join-token", &master.join_token, "--name", NODE])
            .context("starting the serving agent")?;
        poll_until(READY_TIMEOUT, READY_EVERY, "the serving node Ready", || Ok(master.nodes().iter().any(|n| n.is_ready()).then_some(())))?;
        master.upload_example(COMPONENT)?;
        let workload: wasmlet_api::Workload =
            wasmlet_api::from_yaml(&workload_manifest(WORKLOAD, COMPONENT, "service", "  route: {pathPrefix: /}\n"))?;
        let (status, body) = master.send_json(reqwest::Method::POST, "/workloads", &workload)?;
        if status >= 300 {
            bail!("creating the service: {status}: {body}");
        }
        poll_until(READY_TIMEOUT, READY_EVERY, "the replica Running", || {
            Ok(master.instances().iter().any(|i| i.spec.workload == WORKLOAD && i.status.phase == Phase::Running).then_some(()))
        })?;
        let front = Agent::start(&["--master", &master.url, "--join-token", &master.join_token, "--name", "bench-front"])
            .context("starting the forwarding agent")?;
        let url = format!("{}/", front.ingress);
        wait_greeting(&client, &url, "the forwarding agent's ingress", || Ok(()))?;
        let report = load(
            figures,
            AGENT_FORWARDED,
            &url,
            &format!("an agent without a replica forwarding to the agent that has it; {COMPONENT}.wasm, route pathPrefix /"),
        )?;
        drop((front, serving, master));
        report
    };
    figures.emit(
        Figure::ratio(AGENT_FORWARDED, "rps", forwarded.requests_per_second, WASMTIME_SERVE, reference.requests_per_second, FORWARDED_GOAL)
            .note("requests per second through a forwarding ingress over wasmtime serve's; both ingresses and wrk share the 2 cores"),
    )?;

    // 4. The ceiling.
    let native = {
        progress("starting a native axum server in the bench process");
        let server = NativeServer::start()?;
        wait_greeting(&client, &server.url, "the native server", || Ok(()))?;
        load(figures, NATIVE, &server.url, "axum 0.8 on hyper, tokio multi-threaded runtime inside the bench process")?
    };
    let mut share = Figure::new(WASMTIME_SERVE, "rps_ratio", reference.requests_per_second / native.requests_per_second)
        .note("wasmtime serve's requests per second as a share of the native server's, the ceiling on this machine");
    share.reference = Some(NATIVE.to_string());
    figures.emit(share)?;

    progress(format!(
        "{WASMTIME_SERVE} {:.0} req/s p99 {:.2} ms; {AGENT} {:.0} req/s p99 {:.2} ms; {NATIVE} {:.0} req/s p99 {:.2} ms",
        reference.requests_per_second, reference.p99_ms, agent.requests_per_second, agent.p99_ms, native.requests_per_second, native.p99_ms
    ));
    Ok(())
}

/// The greeting every server answers with.
fn greeting() -> String {
    format!("hello from wasmlet on {NODE}\n")
}

/// A warm-up, then the measured wrk run against `url`; emits `rps`, `p50_ms`,
/// `p99_ms` and `errors` of `subject`, the first with `about` as its note.
fn load(figures: &mut Figures, subject: &str, url: &str, about: &str) -> anyhow::Result<WrkReport> {
    progress(format!("load: {subject} {url}: warm-up {:?}, then {:?}", WARM_UP.duration, LOAD.duration));
    wrk::run(url, WARM_UP).context("warm-up")?;
    sleep(DRAIN);
    let report = wrk::run(url, LOAD)?;
    let shape = format!("wrk -t{} -c{} -d{}s --latency", LOAD.threads, LOAD.connections, LOAD.duration.as_secs());
    figures.emit(Figure::new(subject, "rps", report.requests_per_second).note(&format!("{about}; {shape}")))?;
    figures.emit(Figure::new(subject, "p50_ms", report.p50_ms))?;
    figures.emit(Figure::new(subject, "p99_ms", report.p99_ms))?;
    figures.emit(Figure::new(subject, "errors", report.errors))?;
    if report.errors > 0 {
        progress(format!(
            "warning: {} requests against {url} failed (socket errors or non-2xx/3xx answers); its rps and latencies count them",
            report.errors
        ));
    }
    Ok(report)
}

/// Polls `url` until it answers 200 with the greeting; `alive` fails when the server is gone.
fn wait_greeting(client: &Client, url: &str, what: &str, mut alive: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let expected = greeting();
    let mut seen = String::from("no answer yet");
    poll_until(READY_TIMEOUT, READY_EVERY, &format!("{what} to answer {url} with `{}`", expected.trim()), || {
        alive()?;
        match client.get(url).send() {
            Ok(response) => {
                let status = response.status();
                let body = response.text().unwrap_or_default();
                if status.is_success() && body == expected {
                    return Ok(Some(()));
                }
                seen = format!("{status}: {}", body.trim());
            }
            Err(error) => seen = format!("{error:#}"),
        }
        Ok(None)
    })
    .with_context(|| format!("last seen: {seen}"))
}

/// Waits until the agent's instance `name` is Running, failing when it fails.
fn wait_running(agent: &Agent, name: &str) -> anyhow::Result<()> {
    poll_until(READY_TIMEOUT, READY_EVERY, &format!("instance {name} Running"), || match agent.instance(name) {
        Some(instance) if instance.status.phase == Phase::Running => Ok(Some(())),
        Some(instance) if instance.status.phase == Phase::Failed => bail!(
            "instance {name} failed: reason {}, message {}",
            instance.status.reason.as_deref().unwrap_or("-"),
            instance.status.message.as_deref().unwrap_or("-")
        ),
        _ => Ok(None),
    })
    .with_context(|| format!("the agent's log:\n{}", agent.log_text()))
}

/// A running `wasmtime serve` of the component on a free loopback port; killed when dropped.
struct WasmtimeServe {
    child: Child,
    /// `http://127.0.0.1:PORT/`
    url: String,
    logs: Arc<Mutex<Vec<String>>>,
    /// wasmtime's compile cache, kept out of the user's home.
    _cache: tempfile::TempDir,
}

impl WasmtimeServe {
    /// Starts it and waits until it answers with the greeting. A port taken in
    /// the meantime by someone else makes it exit; then it tries another.
    fn start(wasmtime: &Path, component: &Path, client: &Client) -> anyhow::Result<WasmtimeServe> {
        let mut attempt = 1;
        loop {
            let mut server = Self::spawn(wasmtime, component, free_port()?)?;
            let url = server.url.clone();
            match wait_greeting(client, &url, "wasmtime serve", || server.check_alive()) {
                Ok(()) => return Ok(server),
                Err(error) if attempt < 3 && server.child.try_wait().is_ok_and(|s| s.is_some()) => {
                    progress(format!("wasmtime serve exited at start ({error:#}); trying another port"));
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn spawn(wasmtime: &Path, component: &Path, port: u16) -> anyhow::Result<WasmtimeServe> {
        let cache =
            tempfile::Builder::new().prefix("wasmlet-bench-wasmtime-cache-").tempdir().context("creating a cache dir for wasmtime")?;
        let mut child = Command::new(wasmtime)
            .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}"), "--env", &format!("WASMLET_NODE={NODE}")])
            .arg(component)
            // wasmtime's compile cache lives under $XDG_CACHE_HOME/wasmtime.
            .env("XDG_CACHE_HOME", cache.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} serve", wasmtime.display()))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let logs = logs.clone();
            std::thread::spawn(move || {
                // Keep the start and the end: a serving wasmtime may log per request.
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut logs) = logs.lock() {
                        if logs.len() >= 200 {
                            logs.remove(100);
                        }
                        logs.push(line);
                    }
                }
            });
        }
        Ok(WasmtimeServe { child, url: format!("http://127.0.0.1:{port}/"), logs, _cache: cache })
    }

    /// Fails with its log when the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting for wasmtime serve")? {
            let log = self.logs.lock().map(|logs| logs.join("\n")).unwrap_or_default();
            bail!("wasmtime serve exited ({status}); its stderr:\n{log}");
        }
        Ok(())
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ceiling: axum on hyper, on its own multi-threaded tokio runtime in this
/// process, answering every request with the greeting. Shut down when dropped.
struct NativeServer {
    runtime: Option<tokio::runtime::Runtime>,
    /// `http://127.0.0.1:PORT/`
    url: String,
}

impl NativeServer {
    fn start() -> anyhow::Result<NativeServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("native-hello")
            .build()
            .context("building a tokio runtime for the native server")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the native server to a loopback port")?;
        listener.set_nonblocking(true).context("making the native server's socket non-blocking")?;
        let port = listener.local_addr().context("reading the native server's port")?.port();
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("handing the native server's socket to tokio")?
        };
        let body = greeting();
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body) }
        });
        runtime.spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                progress(format!("the native server stopped: {error}"));
            }
        });
        Ok(NativeServer { runtime: Some(runtime), url: format!("http://127.0.0.1:{port}/") })
    }
}

impl Drop for NativeServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn progress(message: impl Display) {
    eprintln!("http: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_server_answers_the_greeting_and_stops() {
        let server = NativeServer::start().expect("starts");
        let client = http_client().expect("client");
        wait_greeting(&client, &server.url, "the native server", || Ok(())).expect("answers");
        let url = server.url.clone();
        drop(server);
        assert!(client.get(&url).send().is_err(), "{url} still answers after the drop");
    }
}
