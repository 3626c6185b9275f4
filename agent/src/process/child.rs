//! `wasmlet-agent instance`: the process of one process-isolated run.
//!
//! The agent writes a spec file and starts this process inside the run's
//! cgroup. It builds an engine like the agent's, maps the module the agent
//! compiled and cached (so every process running it shares its code pages),
//! and runs it in the same sandbox as in the agent: a program to its end, or
//! a service answering on a Unix socket. While it runs it needs nothing from
//! the agent: it writes the instance's log itself, reads its fence deadline
//! from a file, and leaves how the run ended in an exit file, so an agent
//! that is restarted meanwhile loses nothing.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

use crate::executor::{Exit, ExitReason, Fence, OutboundPolicy, RunSpec, ServeSpec, Usage};
use crate::grants::Preopen;
use crate::logs::InstanceLog;
use crate::runtime::module::{Program, engine_hash};
use crate::runtime::{ModuleKind, Runtime};

/// `wasmlet-agent instance`: what the agent runs for each process-isolated run.
#[derive(Debug, Clone, clap::Args)]
pub struct InstanceArgs {
    /// The spec file the agent wrote for this run.
    #[arg(long, required_unless_present = "template")]
    pub spec: Option<PathBuf>,
    /// Forks spare instance processes on the agent's request (see
    /// `process::template`); each waits for its spec file's path on its
    /// stdin, then runs as with `--spec`.
    #[arg(long, conflicts_with = "spec")]
    pub template: bool,
}

/// Everything one run needs, written by the agent into the instance's
/// directory (mode 0600, never on a command line: the env may hold secrets).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildSpec {
    /// Names this run: its exit file must carry it.
    pub run_id: String,
    pub engine_hash: String,
    pub memory_reservation: u64,
    pub epoch_tick_ms: u64,
    /// The compile cache holding the module's artefact.
    pub cache_dir: PathBuf,
    pub digest: String,
    pub component: bool,
    pub log_dir: PathBuf,
    pub log_max_size: u64,
    /// Holds the fence deadline (milliseconds since the Unix epoch); the agent rewrites it.
    pub fence_path: PathBuf,
    pub exit_path: PathBuf,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dirs: Vec<Preopen>,
    pub cpu_time_limit_ms: Option<u64>,
    /// Present for a service.
    pub serve: Option<ServeChild>,
}

/// What a service's process serves with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServeChild {
    pub socket: PathBuf,
    /// The per-request memory limit, as in the agent.
    pub memory_limit: Option<u64>,
    pub request_timeout_ms: u64,
    pub max_request_body: usize,
    pub max_response_body: usize,
    pub outbound: Vec<String>,
}

/// How a run ended, as its process leaves it for the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub run_id: String,
    pub exit: Exit,
}

/// How often the process rereads its fence deadline.
const FENCE_POLL: Duration = Duration::from_millis(250);

/// Runs one instance's process. Exit codes: 0 when the run ended, however
/// it ended (the exit file says how); 2 when not even that could be written.
pub fn child_main(args: &InstanceArgs) -> ExitCode {
    if args.template {
        match super::template::serve_forks() {
            super::template::Served::Exit(code) => return code,
            super::template::Served::Spare => {}
        }
    }
    let path = match &args.spec {
        Some(path) => path.clone(),
        None => match claimed() {
            Ok(Some(path)) => path,
            // The agent went away before it needed this spare.
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("a spare instance process could not be claimed: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let spec: ChildSpec =
        match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
            Ok(spec) => spec,
            Err(e) => {
                eprintln!("cannot read the instance spec {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
    // Under memory pressure of the whole machine, instances go before the agent.
    let _ = std::fs::write("/proc/self/oom_score_adj", "500");
    one_malloc_arena();
    let exit = match tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(4).build() {
        Ok(threads) => threads.block_on(run(&spec)),
        Err(e) => Exit::start_error(format!("cannot start the instance's scheduler: {e}")),
    };
    match write_exit(&spec.exit_path, &ExitRecord { run_id: spec.run_id.clone(), exit }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the exit file {}: {e}", spec.exit_path.display());
            ExitCode::from(2)
        }
    }
}

/// One malloc arena for the whole process: its few threads take turns, and
/// each arena more would hold pages of its own.
#[allow(unsafe_code)]
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the heap's free pages to the kernel.
#[allow(unsafe_code)]
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; the allocator stays consistent.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A spare waits for the agent to claim it: the spec file's path, one line
/// on stdin (None at end of file). Its stdout and stderr then go to the run's
/// stderr file, beside the spec, as a process started for the run has them.
fn claimed() -> std::io::Result<Option<PathBuf>> {
    use std::io::BufRead as _;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let spec = PathBuf::from(line.trim_end_matches('\n'));
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(super::RunFiles::stderr_beside(&spec))?;
    rustix::stdio::dup2_stdout(&stderr)?;
    rustix::stdio::dup2_stderr(&stderr)?;
    Ok(Some(spec))
}

/// Writes the exit file whole or not at all.
fn write_exit(path: &Path, record: &ExitRecord) -> std::io::Result<()> {
    crate::files::write_atomically(path, &serde_json::to_vec(record)?, 0o600)
}

/// Reads a fence file: the deadline in milliseconds since the Unix epoch.
pub fn read_fence(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn run(spec: &ChildSpec) -> Exit {
    let runtime = match Runtime::for_instance(spec.cache_dir.clone(), spec.memory_reservation, Duration::from_millis(spec.epoch_tick_ms)) {
        Ok(runtime) => runtime,
        Err(e) => return Exit::start_error(format!("cannot start the instance's engine: {e:#}")),
    };
    let hash = engine_hash(runtime.engine());
    if hash != spec.engine_hash {
        return Exit::start_error(format!(
            "this agent binary builds a different engine ({hash}) than the agent that started the instance ({}): was it upgraded in between?",
            spec.engine_hash
        ));
    }
    let kind = if spec.component { ModuleKind::Component } else { ModuleKind::Core };
    let module = match runtime.modules.open_artefact(&spec.digest, kind) {
        Ok(module) => module,
        Err(e) => return Exit::start_error(e),
    };
    let log = match InstanceLog::open(&spec.log_dir, spec.log_max_size) {
        Ok(log) => log,
        Err(e) => return Exit::start_error(format!("cannot open the instance's log in {}: {e}", spec.log_dir.display())),
    };
    // Setting up (the agent's flags, the engine, the module's metadata) left
    // freed heap behind: give it back before the instance settles for long.
    trim_heap();
    let fence = Fence::default();
    if let Some(deadline) = read_fence(&spec.fence_path) {
        fence.set_deadline(deadline);
    }
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return Exit::start_error(format!("cannot handle SIGTERM: {e}")),
    };
    let watched = {
        let fence = fence.clone();
        let path = spec.fence_path.clone();
        async move {
            loop {
                tokio::time::sleep(FENCE_POLL).await;
                if let Some(deadline) = read_fence(&path) {
                    fence.set_deadline(deadline);
                }
            }
        }
    };
    let stopped = || Exit { code: None, reason: ExitReason::Error, message: "stopped by the agent".to_string() };
    let exit = match &spec.serve {
        None => {
            let run = RunSpec {
                instance: String::new(),
                program: spec.program.clone(),
                args: spec.args.clone(),
                env: spec.env.clone(),
                dirs: spec.dirs.clone(),
                // The kernel enforces the memory limit on the whole process (its cgroup).
                memory_limit: None,
                cpu_time_limit: spec.cpu_time_limit_ms.map(Duration::from_millis),
                cpu_limit_millis: None,
                fence: fence.clone(),
            };
            let usage = Usage::default();
            tokio::select! {
                exit = runtime.run(&module, &run, &log, &usage) => exit,
                _ = terminate.recv() => stopped(),
                () = watched => stopped(),
            }
        }
        Some(serve) => tokio::select! {
            exit = serve_socket(&runtime, &module.program, spec, serve, &log, &fence) => exit,
            _ = terminate.recv() => stopped(),
            () = watched => stopped(),
        },
    };
    log.flush_partial();
    exit
}

/// Serves requests on the instance's socket until the fence expires.
async fn serve_socket(
    runtime: &Runtime,
    program: &Program,
    spec: &ChildSpec,
    serve: &ServeChild,
    log: &InstanceLog,
    fence: &Fence,
) -> Exit {
    let Program::Proxy(pre) = program else {
        return Exit::start_error("the module exports no wasi:http/incoming-handler");
    };
    let _ = std::fs::remove_file(&serve.socket);
    let listener = match tokio::net::UnixListener::bind(&serve.socket) {
        Ok(l) => l,
        Err(e) => return Exit::start_error(format!("cannot listen on {}: {e}", serve.socket.display())),
    };
    let serve_spec = Arc::new(ServeSpec {
        instance: String::new(),
        program: spec.program.clone(),
        env: spec.env.clone(),
        dirs: spec.dirs.clone(),
        memory_limit: serve.memory_limit,
        request_timeout: Duration::from_millis(serve.request_timeout_ms),
        max_request_body: serve.max_request_body,
        max_response_body: serve.max_response_body,
        outbound: OutboundPolicy::new(&serve.outbound),
        cpu_limit_millis: None,
        fence: fence.clone(),
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let runtime = runtime.clone();
                let pre = pre.clone();
                let spec = serve_spec.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let (runtime, pre, spec, log) = (runtime.clone(), pre.clone(), spec.clone(), log.clone());
                        async move { Ok::<_, Infallible>(runtime.serve(&pre, &spec, &log, request.map(Body::new)).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if fence.expired() {
                    let _ = std::fs::remove_file(&serve.socket);
                    return Exit {
                        code: None,
                        reason: ExitReason::StoppedOnDisconnect,
                        message: "stopped serving: the master has been silent longer than stopOnAgentAfter".to_string(),
                    };
                }
            }
        }
    }
}
