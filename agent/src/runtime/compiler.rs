//! Compiling modules where a compile bomb cannot hurt the agent.
//!
//! Cranelift's working memory for a big module can reach gigabytes, and the
//! allocator keeps much of it after the compile; some shapes of code take
//! minutes. Before anything is compiled, [`super::precheck`] refuses modules
//! over the static limits. What passes is compiled in a child process of the
//! agent's own binary (`wasmlet-agent compile`, a hidden subcommand) with an
//! engine of the same settings:
//!
//! - the child limits its own data size (`RLIMIT_DATA`, `--compile-memory-limit`)
//!   before it reads the module;
//! - it is killed past `--compile-timeout`, and as soon as no instance waits
//!   for the module any more (dropping the compile kills it);
//! - it exits when the agent goes away (its stdin, which the agent holds open,
//!   reaches end of file);
//! - it writes the serialized artefact to its stdout; the agent stores it in
//!   the disk cache and loads it. The agent never holds the compiler's
//!   working set.
//!
//! Where the child cannot run (no binary to run, an emulator without binfmt
//! support, a child whose engine would not match), modules are compiled in the
//! agent's own process, as before: the static limits still hold, the memory
//! limit and the time budget do not (a thread cannot be killed), and the
//! allocator's free memory is handed back after each compile.
//! `status.runtime.compiler` says which, and why.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::Engine;

use super::module::{Compiled, LoadError, ModuleKind, compile_and_store, deserialize, engine_hash, store_artefact};
use super::precheck::CompileLimits;

/// What compiling one module may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileBudget {
    /// Checked before compiling, in either place.
    pub limits: CompileLimits,
    /// Data (heap and other private writable memory) the compiler process may use.
    pub memory: u64,
    /// Wall time one compile may take in the compiler process.
    pub timeout: Duration,
}

/// Where modules are compiled, and why there (for `status.runtime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompilerInfo {
    /// `process` (a child process per compile) or `in-agent`.
    pub kind: &'static str,
    pub reason: String,
}

/// Compiles modules in a child process where it can, else in the agent.
pub struct Compiler {
    place: Place,
    pub budget: CompileBudget,
    pub info: CompilerInfo,
    /// Compiles at once: each may use `budget.memory`.
    slots: tokio::sync::Semaphore,
}

enum Place {
    Child { exe: PathBuf, memory_reservation: u64, engine_hash: String },
    Agent,
}

/// Compiles that may run at once; more wait their turn.
const PARALLEL_COMPILES: usize = 2;

/// Exit codes of `wasmlet-agent compile`.
mod exit {
    /// The module does not compile (the message on stderr says why).
    pub const INVALID: u8 = 3;
    /// This binary's engine would not produce code the agent's accepts.
    pub const ENGINE_MISMATCH: u8 = 4;
    /// The child could not set itself up or talk to the agent.
    pub const SETUP: u8 = 5;
    /// The agent went away (stdin closed) before the compile ended.
    pub const ORPHANED: u8 = 6;
}

impl Compiler {
    /// Checks that `exe compile` builds an engine whose artefacts `engine`
    /// accepts (`memory_reservation` is the one setting of the engine that
    /// differs between agents); if not, compiles in the agent.
    pub fn new(exe: Option<&Path>, engine: &Engine, memory_reservation: u64, budget: CompileBudget) -> Compiler {
        let hash = engine_hash(engine);
        let (place, info) = match exe.map(|exe| probe(exe, memory_reservation, &hash).map(|()| exe)) {
            Some(Ok(exe)) => (
                Place::Child { exe: exe.to_path_buf(), memory_reservation, engine_hash: hash },
                CompilerInfo {
                    kind: "process",
                    reason: format!(
                        "each compile in a child process, at most {} of memory and {} each",
                        wasmlet_api::Bytes::new(budget.memory).human(),
                        wasmlet_api::Duration::from(budget.timeout)
                    ),
                },
            ),
            Some(Err(why)) => {
                tracing::warn!(reason = %why, "compiling modules in the agent's process: the compile memory limit and time budget do not apply");
                (
                    Place::Agent,
                    CompilerInfo {
                        kind: "in-agent",
                        reason: format!("{why}; compiling in the agent's process within the static limits only"),
                    },
                )
            }
            None => (
                Place::Agent,
                CompilerInfo {
                    kind: "in-agent",
                    reason: "no compiler binary configured; compiling in the agent's process within the static limits only".into(),
                },
            ),
        };
        Compiler { place, budget, info, slots: tokio::sync::Semaphore::new(PARALLEL_COMPILES) }
    }

    /// Compiles `bytes` (already checked against the static limits), stores the
    /// artefact at `artefact` and loads it. Dropping the returned future stops
    /// a compile in a child process at once.
    pub(super) async fn compile(
        &self,
        engine: &Engine,
        bytes: Arc<Vec<u8>>,
        kind: ModuleKind,
        artefact: &Path,
    ) -> Result<Compiled, LoadError> {
        let _slot = self.slots.acquire().await.map_err(|_| LoadError::Invalid("the agent is shutting down".into()))?;
        let engine = engine.clone();
        let path = artefact.to_path_buf();
        match &self.place {
            Place::Agent => tokio::task::spawn_blocking(move || {
                let compiled = compile_and_store(&engine, &bytes, kind, &path);
                super::heap::release_free_memory();
                compiled
            })
            .await
            .map_err(|e| LoadError::Invalid(format!("compilation failed: {e}")))?,
            Place::Child { exe, memory_reservation, engine_hash } => {
                let serialized = self.in_child(exe, *memory_reservation, engine_hash, &bytes, kind).await?;
                tokio::task::spawn_blocking(move || {
                    // The cache is an optimisation: failing to write it costs a compile next time, nothing more.
                    if let Err(e) = store_artefact(&path, &serialized) {
                        tracing::warn!(artefact = %path.display(), error = %e, "cannot cache the compiled module");
                    }
                    deserialize(&engine, &serialized, kind)
                        .map_err(|e| LoadError::Invalid(format!("the compiler process's artefact does not load: {e:#}")))
                })
                .await
                .map_err(|e| LoadError::Invalid(format!("loading the compiled module failed: {e}")))?
            }
        }
    }

    async fn in_child(
        &self,
        exe: &Path,
        memory_reservation: u64,
        engine_hash: &str,
        bytes: &[u8],
        kind: ModuleKind,
    ) -> Result<Vec<u8>, LoadError> {
        let budget = self.budget;
        let mut child = tokio::process::Command::new(exe)
            .arg("compile")
            .args(["--kind", kind_arg(kind)])
            .args(["--memory-reservation", &memory_reservation.to_string()])
            .args(["--engine-hash", engine_hash])
            .args(["--memory-limit", &budget.memory.to_string()])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| LoadError::Invalid(format!("cannot start the compiler process {}: {e}", exe.display())))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            return Err(LoadError::Invalid("the compiler process has no pipes".into()));
        };
        // Compiled code is a few times the size of the wasm; more than this is not an artefact.
        let cap = (bytes.len() as u64).saturating_mul(16).saturating_add(64 << 20);
        let work = async {
            // A child that failed early closes its stdin: what it says on stderr tells why.
            let _ = async {
                stdin.write_all(&(bytes.len() as u64).to_le_bytes()).await?;
                stdin.write_all(bytes).await?;
                stdin.flush().await
            }
            .await;
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let (mut stdout, mut stderr) = (stdout.take(cap), stderr.take(64 << 10));
            let (read_out, _) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            let status = child.wait().await;
            // Held open until the child is done: its end of file tells the child the agent is gone.
            drop(stdin);
            (status, read_out, out, err)
        };
        let (status, read_out, out, err) = match tokio::time::timeout(budget.timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                return Err(LoadError::TooCostly(format!(
                    "compiling took longer than --compile-timeout ({}); the compile was stopped",
                    wasmlet_api::Duration::from(budget.timeout)
                )));
            }
        };
        let status = status.map_err(|e| LoadError::Invalid(format!("waiting for the compiler process: {e}")))?;
        let said = String::from_utf8_lossy(&err).trim().to_string();
        let memory = || {
            LoadError::TooCostly(format!(
                "compiling needed more memory than --compile-memory-limit ({}) allows; the compile was stopped",
                wasmlet_api::Bytes::new(budget.memory).human()
            ))
        };
        if status.success() {
            read_out.map_err(|e| LoadError::Invalid(format!("reading the compiled module: {e}")))?;
            if out.len() as u64 >= cap {
                return Err(LoadError::Invalid(format!("the compiler process sent more than {cap} bytes")));
            }
            return Ok(out);
        }
        let out_of_memory =
            said.contains("memory allocation of") || said.contains("Cannot allocate memory") || said.contains("out of memory");
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            _ if out_of_memory => Err(memory()),
            (Some(code), _) if code == i32::from(exit::INVALID) => Err(LoadError::Invalid(said)),
            // Killed by the kernel: its out-of-memory killer chose the compiler.
            (None, Some(9)) => Err(memory()),
            _ => Err(LoadError::Invalid(format!("the compiler process failed ({status}): {said}"))),
        }
    }
}

fn kind_arg(kind: ModuleKind) -> &'static str {
    match kind {
        ModuleKind::Core => "core",
        ModuleKind::Component => "component",
    }
}

/// Runs `exe compile --probe` and compares the engine hash it prints with ours.
fn probe(exe: &Path, memory_reservation: u64, expected: &str) -> Result<(), String> {
    let mut child = std::process::Command::new(exe)
        .arg("compile")
        .arg("--probe")
        .args(["--memory-reservation", &memory_reservation.to_string()])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the compiler process {} ({e})", exe.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the compiler process {} did not answer within 30 s", exe.display()));
            }
            Err(e) => return Err(format!("waiting for the compiler process {}: {e}", exe.display())),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    // 127: the spawned child could not execute the binary (posix_spawn reports it so
    // where the exec error cannot travel back, as under qemu-user without binfmt).
    if status.code() == Some(127) {
        return Err(format!("cannot start the compiler process {} (it could not be executed: {status})", exe.display()));
    }
    if !status.success() {
        return Err(format!("the compiler process {} failed ({status}): {}", exe.display(), err.trim()));
    }
    if out.trim() != expected {
        return Err(format!("the compiler process {} builds a different engine ({} instead of {expected})", exe.display(), out.trim()));
    }
    Ok(())
}

/// `wasmlet-agent compile`: what the agent runs to compile one module.
#[derive(Debug, Clone, clap::Args)]
pub struct CompileArgs {
    /// Print the engine's compatibility hash and exit.
    #[arg(long)]
    pub probe: bool,
    /// `core` or `component`.
    #[arg(long, default_value = "core")]
    pub kind: String,
    /// The agent engine's memory reservation (bytes): the setting that shapes compiled code.
    #[arg(long)]
    pub memory_reservation: u64,
    /// The agent engine's compatibility hash; the compile is refused if this engine's differs.
    #[arg(long, default_value = "")]
    pub engine_hash: String,
    /// Data this process may use (bytes); 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub memory_limit: u64,
}

/// Runs the compiler process: reads `<length: u64 LE><module>` on stdin,
/// writes the serialized artefact on stdout, and says on stderr why not.
pub fn child_main(args: &CompileArgs) -> ExitCode {
    match child(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}

fn child(args: &CompileArgs) -> Result<(), (u8, String)> {
    if args.memory_limit > 0 {
        let limit = rustix::process::Rlimit { current: Some(args.memory_limit), maximum: Some(args.memory_limit) };
        rustix::process::setrlimit(rustix::process::Resource::Data, limit)
            .map_err(|e| (exit::SETUP, format!("cannot limit the compiler's memory: {e}")))?;
    }
    let engine = Engine::new(&super::base_config(args.memory_reservation)).map_err(|e| (exit::SETUP, format!("engine: {e:#}")))?;
    let hash = engine_hash(&engine);
    if args.probe {
        println!("{hash}");
        return Ok(());
    }
    if hash != args.engine_hash {
        return Err((exit::ENGINE_MISMATCH, format!("this engine's hash is {hash}, the agent's {}", args.engine_hash)));
    }
    let kind = match args.kind.as_str() {
        "core" => ModuleKind::Core,
        "component" => ModuleKind::Component,
        other => return Err((exit::SETUP, format!("--kind {other}: core or component"))),
    };
    let mut stdin = std::io::stdin().lock();
    let mut length = [0u8; 8];
    stdin.read_exact(&mut length).map_err(|e| (exit::SETUP, format!("reading the module's length: {e}")))?;
    let length = usize::try_from(u64::from_le_bytes(length)).map_err(|_| (exit::SETUP, "module too large".to_string()))?;
    let mut bytes = Vec::new();
    (&mut stdin).take(length as u64).read_to_end(&mut bytes).map_err(|e| (exit::SETUP, format!("reading the module: {e}")))?;
    drop(stdin);
    // The agent holds our stdin open while it waits: end of file means it is gone.
    std::thread::spawn(|| {
        let mut rest = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut rest);
        std::process::exit(i32::from(exit::ORPHANED));
    });
    let serialized = match kind {
        ModuleKind::Core => wasmtime::Module::new(&engine, &bytes).and_then(|m| m.serialize()),
        ModuleKind::Component => wasmtime::component::Component::new(&engine, &bytes).and_then(|c| c.serialize()),
    }
    .map_err(|e| (exit::INVALID, format!("{e:#}")))?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&serialized).and_then(|()| stdout.flush()).map_err(|e| (exit::SETUP, format!("writing the artefact: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: CompileBudget = CompileBudget {
        limits: CompileLimits { module_size: 1 << 20, functions: 10, function_size: 1000, nesting: 10, locals: 10 },
        memory: 256 << 20,
        timeout: Duration::from_secs(60),
    };

    /// Where the compiler process cannot start (as under an emulator without
    /// binfmt), modules are compiled in the agent, and the reason is told.
    #[tokio::test]
    async fn without_a_compiler_process_modules_compile_in_the_agent() {
        let engine = Engine::new(&super::super::base_config(1 << 30)).unwrap();
        let compiler = Compiler::new(Some(Path::new("/nonexistent/wasmlet-agent")), &engine, 1 << 30, BUDGET);
        assert_eq!(compiler.info.kind, "in-agent");
        assert!(compiler.info.reason.contains("cannot start the compiler process /nonexistent/wasmlet-agent"), "{}", compiler.info.reason);
        // What a child that cannot execute its binary looks like under qemu-user without binfmt.
        let bin = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let path = bin.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let unexecutable = Compiler::new(Some(&script("127", "exit 127")), &engine, 1 << 30, BUDGET);
        assert_eq!(unexecutable.info.kind, "in-agent");
        assert!(unexecutable.info.reason.contains("could not be executed"), "{}", unexecutable.info.reason);
        let foreign = Compiler::new(Some(&script("foreign", "echo 0123456789abcdef")), &engine, 1 << 30, BUDGET);
        assert!(foreign.info.reason.contains("builds a different engine (0123456789abcdef instead of"), "{}", foreign.info.reason);
        let none = Compiler::new(None, &engine, 1 << 30, BUDGET);
        assert!(none.info.reason.contains("no compiler binary configured"), "{}", none.info.reason);

        let cache = tempfile::tempdir().unwrap();
        let artefact = cache.path().join("m.cwasm");
        let wasm = Arc::new(wat::parse_str("(module (func (export \"_start\")))").unwrap());
        let compiled = compiler.compile(&engine, wasm, ModuleKind::Core, &artefact).await.unwrap();
        assert!(matches!(compiled, Compiled::Core(_)));
        assert!(artefact.exists(), "the artefact is cached as before");
        let bad = Arc::new(b"\0asm\x01\0\0\0\x01".to_vec());
        let err = compiler.compile(&engine, bad, ModuleKind::Core, &artefact).await.err().expect("refused");
        assert!(matches!(err, LoadError::Invalid(_)), "{err}");
    }
}
