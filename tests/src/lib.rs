//! Harness for wasmlet's end-to-end tests and benchmarks: starts the real
//! binaries as processes on loopback and stops them again, also when a test
//! fails (every process is killed when its handle drops).
//!
//! Binaries are found in `WASMLET_BIN_DIR`, else next to the test executable
//! (`target/<profile>/`), where `make test` builds them first.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod etcd;
pub mod nat;
pub mod registry;
pub mod test_ca;
pub use etcd::{EtcdCluster, EtcdTls};

/// Where the wasmlet binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WASMLET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe.parent().expect("the test executable is in a directory");
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    if dir.ends_with("deps") { dir.parent().unwrap_or(dir).to_path_buf() } else { dir.to_path_buf() }
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Where the example workloads are built (`make examples`).
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../wasm-examples/dist")
}

/// The architectures `make debs` builds packages for on this machine: its own,
/// and arm64 too on amd64 (cross-compiled).
pub fn package_architectures() -> Vec<&'static str> {
    let host = Command::new("dpkg").arg("--print-architecture").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if host.as_deref().unwrap_or("amd64") == "amd64" { vec!["amd64", "arm64"] } else { vec!["arm64"] }
}

/// The newest package `make debs` built for `name` and `arch`, in `$CARGO_TARGET_DIR/debian`.
pub fn package(name: &str, arch: &str) -> anyhow::Result<PathBuf> {
    let dir = bin_dir().parent().context("the binaries' dir has a parent")?.join("debian");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("{} (run `make debs`)", dir.display()))?;
    let (prefix, suffix) = (format!("{name}_"), format!("_{arch}.deb"));
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix)))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .with_context(|| format!("no {name} package for {arch} in {} (run `make debs`)", dir.display()))
}

/// Unpacks a package's files into `dir` (`dpkg-deb -x`).
pub fn unpack(deb: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    let out = Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir).output().context("running dpkg-deb")?;
    if !out.status.success() {
        bail!("dpkg-deb -x {}: {}", deb.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A command running the arm64 binary `path` on this machine: directly on
/// arm64, through Debian's `qemu-aarch64-static` (with the cross libc) elsewhere.
pub fn arm64_command(path: &std::path::Path) -> Command {
    if std::env::consts::ARCH == "aarch64" {
        return Command::new(path);
    }
    let mut qemu = Command::new("qemu-aarch64-static");
    qemu.args(["-L", "/usr/aarch64-linux-gnu"]).arg(path);
    qemu
}

/// The path and `sha256:` digest of a built example.
pub fn example(name: &str) -> (PathBuf, String) {
    let path = examples_dir().join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make examples`)", path.display()));
    (path, sha256(&bytes))
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// A Workload manifest running example `module` as `name`; `extra` is YAML
/// indented by two spaces, appended to `spec`.
pub fn workload_manifest(name: &str, module: &str, kind: &str, extra: &str) -> String {
    let (path, digest) = example(module);
    format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  type: {kind}\n  module:\n    source: {}\n    digest: {digest}\n{extra}",
        path.display()
    )
}

/// Writes a file into `dir` under a hidden temporary name, then renames it
/// into place, so a watcher of `dir` never reads it half-written.
pub fn place_file(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, dir.join(name)).unwrap_or_else(|e| panic!("renaming {}: {e}", tmp.display()));
}

/// Polls `check` every 50 ms until it returns Some, or fails after `timeout`
/// with `what` and the last value seen.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `wasmlet-agent` with its own data dir and an API on a free loopback port.
pub struct Agent {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub api: String,
    /// `http://127.0.0.1:PORT` of the ingress.
    pub ingress: String,
    pub data_dir: tempfile::TempDir,
    /// The data dir the agent runs on: `data_dir` unless the test passed its own `--data-dir`.
    effective_data_dir: std::path::PathBuf,
    /// Everything the agent wrote to stderr so far.
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts an agent and waits until its API answers.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Agent> {
        let data_dir = tempfile::Builder::new().prefix("wasmlet-agent-").tempdir()?;
        Self::start_in(data_dir, extra_args)
    }

    pub fn start_in(data_dir: tempfile::TempDir, extra_args: &[&str]) -> anyhow::Result<Agent> {
        Self::launch(Command::new(bin("wasmlet-agent")), data_dir, extra_args, &[])
    }

    /// Starts an agent whose process also gets the environment variables `env` (on top of the test's own).
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Agent> {
        let data_dir = tempfile::Builder::new().prefix("wasmlet-agent-").tempdir()?;
        Self::launch(Command::new(bin("wasmlet-agent")), data_dir, extra_args, env)
    }

    /// Starts the agent `command` runs (another build of it, or one under an emulator).
    pub fn start_command(command: Command, extra_args: &[&str]) -> anyhow::Result<Agent> {
        let data_dir = tempfile::Builder::new().prefix("wasmlet-agent-").tempdir()?;
        Self::launch(command, data_dir, extra_args, &[])
    }

    fn launch(mut command: Command, data_dir: tempfile::TempDir, extra_args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Agent> {
        let program = format!("{:?}", command.get_program());
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir.path())
            // Tests start many agents: a small pool keeps each one's reservation modest.
            .args(["--pool-instances", "64"])
            .args(["--api-addr", "127.0.0.1:0", "--ingress-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(extra_args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let stderr = child.stderr.take().context("agent stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(started) = started_api(&line) {
                        let _ = tx.send(started);
                    }
                    logs.lock().expect("log lock").push(line);
                }
            });
        }
        // The last `--data-dir` wins, as for any repeated flag.
        let effective_data_dir = extra_args
            .windows(2)
            .filter(|pair| pair[0] == "--data-dir")
            .map(|pair| std::path::PathBuf::from(pair[1]))
            .chain(extra_args.iter().filter_map(|a| a.strip_prefix("--data-dir=")).map(std::path::PathBuf::from))
            .last()
            .unwrap_or_else(|| data_dir.path().to_path_buf());
        let mut agent = Agent { child, api: String::new(), ingress: String::new(), data_dir, effective_data_dir, logs };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((api, ingress)) => (agent.api, agent.ingress) = (api, ingress),
            Err(_) => bail!("the agent did not report its API address; its log:\n{}", agent.log_text()),
        }
        Ok(agent)
    }

    /// Freezes the agent (SIGSTOP), as a network partition would silence it,
    /// and returns once every thread of it has stopped: a signal is delivered
    /// asynchronously, and on a busy machine a thread may still serve a
    /// request for a moment after `kill` returned.
    pub fn freeze(&self) {
        signal(self.pid(), rustix::process::Signal::STOP);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(self.pid()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Thaws a frozen agent (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), rustix::process::Signal::CONT);
    }

    /// `kill -9`, as a crash of the machine.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the agent with SIGTERM and hands back its data dir, for a restart on the same state.
    pub fn stop_keep_data(mut self) -> anyhow::Result<tempfile::TempDir> {
        self.terminate(Duration::from_secs(20))?;
        self.hand_over_data_dir()
    }

    /// `kill -9` of the agent alone, handing back its data dir: what it
    /// started in processes of its own keeps running.
    pub fn kill_keep_data(mut self) -> anyhow::Result<tempfile::TempDir> {
        self.kill();
        self.hand_over_data_dir()
    }

    /// The data dir, for the next agent: this one's drop then reaps nothing of it.
    fn hand_over_data_dir(&mut self) -> anyhow::Result<tempfile::TempDir> {
        let empty = tempfile::Builder::new().prefix("wasmlet-empty-").tempdir()?;
        self.effective_data_dir = empty.path().to_path_buf();
        Ok(std::mem::replace(&mut self.data_dir, empty))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// The agent's own API token (`<data-dir>/api.token`).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("api.token")).map(|t| t.trim().to_string()).unwrap_or_default()
    }

    /// A client for the agent's API: its token on every request, and the
    /// node CA (which signs the API's certificate) trusted once the agent joined a master.
    pub fn client_builder(&self) -> reqwest::blocking::ClientBuilder {
        let mut builder = authorized(&self.token()).tls_built_in_root_certs(false);
        if let Some(cert) = self.credential_field("nodesCaCertificate").and_then(|pem| reqwest::Certificate::from_pem(pem.as_bytes()).ok())
        {
            builder = builder.add_root_certificate(cert);
        }
        builder
    }

    /// A text field of the agent's saved credential (`<data-dir>/credential.json`), once it has one.
    pub fn credential_field(&self, field: &str) -> Option<String> {
        let credential = std::fs::read(self.data_dir.path().join("credential.json")).ok()?;
        let value: serde_json::Value = serde_json::from_slice(&credential).ok()?;
        value[field].as_str().map(String::from)
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        self.client_builder().build().expect("an HTTP client")
    }

    /// GET a path of the agent's API and decode the JSON answer.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let body = self.client().get(self.url(path)).send()?.error_for_status()?.bytes()?;
        Ok(serde_json::from_slice(&body)?)
    }

    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.client().get(self.url(path)).send()?.text()?)
    }

    /// The agent's instance of that name, if it has one.
    pub fn instance(&self, name: &str) -> Option<wasmlet_api::Instance> {
        let instances: Vec<wasmlet_api::Instance> = self.get_json("/instances").ok()?;
        instances.into_iter().find(|i| i.metadata.name == name)
    }

    /// Waits until the instance reaches `phase` and returns it.
    pub fn wait_phase(&self, name: &str, phase: wasmlet_api::Phase, timeout: Duration) -> wasmlet_api::Instance {
        wait_for(timeout, &format!("instance {name} to be {phase}"), || self.instance(name).filter(|i| i.status.phase == phase))
    }

    /// The value of one metric line (exact name and labels) from `/metrics`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.get_text("/metrics").ok()?;
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    /// Sends SIGTERM and waits for the exit status (killing after `grace`).
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
        signal(self.pid(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the agent did not stop within {grace:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A frozen process would ignore nothing but SIGKILL; thaw it anyway so it is reaped promptly.
        signal(self.pid(), rustix::process::Signal::CONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Process-isolated instances live in sessions of their own and outlive
        // a killed agent: stop them, and remove the cgroups they leave.
        reap_instances(&self.effective_data_dir);
    }
}

/// The processes of the process-isolated instances of the agent whose data
/// dir is `data_dir`, with the instance each runs: those started for a run
/// (their `--spec` names the instance), and spares a run claimed (the run's
/// state file names the process, which must still be an instance process in
/// the run's cgroup).
pub fn instance_processes(data_dir: &std::path::Path) -> Vec<(u32, String)> {
    let instances = data_dir.join("instances");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let instance_args = |pid: u32| -> Option<Vec<String>> {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        (args.get(1).map(String::as_str) == Some("instance")).then_some(args)
    };
    let mut found = std::collections::BTreeMap::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Some(args) = instance_args(pid) else { continue };
        let Some(spec) = args.iter().skip_while(|a| *a != "--spec").nth(1) else { continue };
        if let Ok(rest) = std::path::Path::new(spec).strip_prefix(&instances)
            && let Some(name) = rest.components().next()
        {
            found.insert(pid, name.as_os_str().to_string_lossy().into_owned());
        }
    }
    for entry in std::fs::read_dir(&instances).into_iter().flatten().filter_map(|e| e.ok()) {
        let Ok(state) = std::fs::read(entry.path().join("process").join("run.json")) else { continue };
        let Ok(state) = serde_json::from_slice::<serde_json::Value>(&state) else { continue };
        let (Some(pid), Some(cgroup)) = (state["process"]["pid"].as_u64(), state["cgroup"].as_str()) else { continue };
        let Ok(pid) = u32::try_from(pid) else { continue };
        let in_its_cgroup =
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&format!("/instances/{cgroup}\n")));
        if in_its_cgroup && instance_args(pid).is_some() {
            found.insert(pid, entry.file_name().to_string_lossy().into_owned());
        }
    }
    found.into_iter().collect()
}

/// The cgroup directories a process is in, one per hierarchy (from `/proc/PID/cgroup` and the mounts).
pub fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return Vec::new() };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let mount = mounts.lines().find_map(|m| {
            let f: Vec<&str> = m.split_whitespace().collect();
            let (point, kind, options) = (*f.get(1)?, *f.get(2)?, *f.get(3)?);
            let matches = if controllers.is_empty() {
                kind == "cgroup2"
            } else {
                kind == "cgroup" && controllers.split(',').all(|c| options.split(',').any(|o| o == c))
            };
            matches.then(|| PathBuf::from(point))
        });
        if let Some(mount) = mount {
            dirs.push(mount.join(path.trim_start_matches('/')));
        }
    }
    dirs
}

/// Kills every process-isolated instance of the agent of `data_dir` and
/// removes the cgroups they were in.
pub fn reap_instances(data_dir: &std::path::Path) {
    for (pid, _) in instance_processes(data_dir) {
        let dirs = cgroup_dirs(pid);
        signal(pid, rustix::process::Signal::KILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for dir in dirs.iter().filter(|d| d.to_string_lossy().contains("/instances/")) {
            let _ = std::fs::remove_dir(dir);
        }
    }
    // The agent's own cgroups (`wasmlet-<first 12 hex of sha256 of its data dir>`),
    // beneath this process's cgroup in each hierarchy, as an agent started by a test has them:
    // whatever still runs in one (a spare process, say) is killed, then every directory goes.
    let Ok(canonical) = std::fs::canonicalize(data_dir) else { return };
    let hash = sha256(canonical.as_os_str().as_encoded_bytes());
    let name = format!("wasmlet-{}", &hash.trim_start_matches("sha256:")[..12]);
    let roots: Vec<PathBuf> = cgroup_dirs(std::process::id()).into_iter().map(|own| own.join(&name)).collect();
    let cgroups: Vec<PathBuf> = roots
        .iter()
        .flat_map(|root| std::fs::read_dir(root.join("instances")).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path()))
        .filter(|path| path.is_dir())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    for cgroup in &cgroups {
        loop {
            let pids = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<u32> = pids.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            pids.into_iter().for_each(|pid| signal(pid, rustix::process::Signal::KILL));
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(cgroup);
    }
    for root in roots {
        let _ = std::fs::remove_dir(root.join("instances"));
        let _ = std::fs::remove_dir(&root);
    }
}

/// A script started in its own process group (`process_group(0)`), which
/// is sent SIGTERM as a whole when this drops: the script's trap stops
/// everything it started.
pub struct ProcessGroup(pub Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        }
        let _ = self.0.wait();
    }
}

/// Runs `command` (a `wasmlet logs -f` of sensor instances) until it has
/// printed `count` sensor lines, then kills it: the lines' `seq` numbers.
/// Each line is `TIME STREAM TEXT`; the sensor's text is one JSON object.
pub fn followed_sensor_seqs(mut command: Command, count: usize) -> Vec<u64> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("the follower runs");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no sensor line streamed; got {seqs:?}");
        };
        let json = line.find('{').map(|i| &line[i..]).unwrap_or_else(|| panic!("not a sensor line: {line}"));
        let value: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{line}: {e}"));
        seqs.push(value["seq"].as_u64().expect("seq"));
    }
    let _ = child.kill();
    let _ = child.wait();
    seqs
}

/// A free TCP port on loopback (bound and released: a tiny race, fine for tests).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A free TCP port on `host`. For `0.0.0.0` it must be free on every address:
/// a port free on 127.0.0.1 may be held on 127.0.12.3 by another test's connection.
pub fn free_port_on(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A client builder that sends `token` as the bearer token on every request.
pub fn authorized(token: &str) -> reqwest::blocking::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(value) = format!("Bearer {token}").parse() {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::blocking::Client::builder().default_headers(headers)
}

/// A running `wasmlet-master` on a loopback port with its own data dir,
/// serving TLS unless started with `--insecure-http`.
pub struct Master {
    child: Option<Child>,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// The join token the master created at its first start.
    pub join_token: String,
    /// The admin token the master created at its first start.
    pub admin_token: String,
    /// The cluster CA, PEM.
    pub ca_pem: String,
    port: u16,
    /// The address it listens on: loopback, unless the test chose another.
    host: String,
    pub data_dir: tempfile::TempDir,
    args: Vec<String>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Master {
    /// Starts a master with short timings for tests: heartbeat 200 ms, grace 800 ms, lostAfter 2 s.
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Master> {
        Self::start_on("127.0.0.1", extra_args)
    }

    /// Starts a master listening on `host`: an address of this machine (its URL then names it; pass
    /// `--tls-san` for its certificate), or `0.0.0.0` for all interfaces (its URL stays on loopback).
    pub fn start_on(host: &str, extra_args: &[&str]) -> anyhow::Result<Master> {
        let listen = host;
        let host = if host == "0.0.0.0" { "127.0.0.1" } else { host };
        let data_dir = tempfile::Builder::new().prefix("wasmlet-master-").tempdir()?;
        let mut args: Vec<String> =
            ["--heartbeat-interval", "200ms", "--node-grace-period", "800ms", "--lost-after", "2s", "--log-format", "json"]
                .map(String::from)
                .into();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let scheme = if extra_args.contains(&"--insecure-http") { "http" } else { "https" };
        let port = free_port_on(listen);
        let mut master = Master {
            child: None,
            url: format!("{scheme}://{host}:{port}"),
            join_token: String::new(),
            admin_token: String::new(),
            ca_pem: String::new(),
            port,
            host: listen.to_string(),
            data_dir,
            args,
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        // The free port may be taken by another test's process before the master binds it: try another.
        for _ in 0..3 {
            match master.spawn() {
                Err(e) if e.to_string().contains("cannot listen") => {
                    master.port = free_port_on(listen);
                    master.url = format!("{scheme}://{host}:{}", master.port);
                    master.logs.lock().expect("log lock").clear();
                }
                other => return other.map(|()| master),
            }
        }
        master.spawn().map(|()| master)
    }

    /// A client builder trusting the cluster CA, presenting no token.
    pub fn anonymous(&self) -> reqwest::blocking::ClientBuilder {
        Self::trusting(reqwest::blocking::Client::builder(), &self.ca_pem)
    }

    /// A client builder trusting the cluster CA and presenting `token`.
    pub fn client_with(&self, token: &str) -> reqwest::blocking::ClientBuilder {
        Self::trusting(authorized(token), &self.ca_pem)
    }

    fn trusting(builder: reqwest::blocking::ClientBuilder, ca_pem: &str) -> reqwest::blocking::ClientBuilder {
        let builder = builder.tls_built_in_root_certs(false);
        match reqwest::Certificate::from_pem(ca_pem.as_bytes()) {
            Ok(ca) if !ca_pem.is_empty() => builder.add_root_certificate(ca),
            _ => builder,
        }
    }

    /// A client as admin.
    pub fn client(&self) -> reqwest::blocking::Client {
        self.client_with(&self.admin_token).build().expect("an HTTP client")
    }

    /// Runs `wasmlet-master ARGS` on this master's data dir and port (the
    /// `token` and `client-config` commands), returning its output.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(bin("wasmlet-master"));
        command.arg("--data-dir").arg(self.data_dir.path()).args(["--listen", &format!("{}:{}", self.host, self.port)]);
        if self.url.starts_with("http://") {
            command.arg("--insecure-http");
        }
        command.args(args).env_remove("WASMLET_CONFIG").env_remove("WASMLETCONFIG").output().expect("wasmlet-master runs")
    }

    /// `--master URL --join-token TOKEN`, to start an agent that joins this master.
    pub fn join_args(&self) -> [&str; 4] {
        ["--master", &self.url, "--join-token", &self.join_token]
    }

    /// Writes a CLI config file with this master as its current context (CA and admin token) into `dir`.
    pub fn cli_config(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("wasmlet-cli.toml");
        let text = format!(
            "current-context = \"test\"\n\n[[contexts]]\nname = \"test\"\nmaster = \"{}\"\ntoken = \"{}\"\ncertificate-authority-data = '''\n{}'''\n",
            self.url, self.admin_token, self.ca_pem
        );
        std::fs::write(&path, text).expect("writing the CLI config");
        path
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(bin("wasmlet-master"))
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--listen", &format!("{}:{}", self.host, self.port)])
            .args(&self.args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin("wasmlet-master").display()))?;
        if let Some(stderr) = child.stderr.take() {
            let logs = self.logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().expect("log lock").push(line);
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let dir = self.data_dir.path().to_path_buf();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok().filter(|t| t.ends_with('\n'));
        while Instant::now() < deadline {
            if let (Some(join), Some(admin), Some(ca)) = (read("join.token"), read("admin.token"), read("pki/ca.crt")) {
                (self.join_token, self.admin_token, self.ca_pem) = (join.trim().to_string(), admin.trim().to_string(), ca);
                let healthy = self.anonymous().build().and_then(|c| c.get(format!("{}/healthz", self.url)).send());
                if healthy.is_ok_and(|r| r.status().is_success()) {
                    return Ok(());
                }
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                std::thread::sleep(Duration::from_millis(200)); // the reader thread takes the last lines
                bail!("the master exited with {status}; its log:\n{}", self.logs.lock().expect("log lock").join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the master did not answer /healthz within 60 s")
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the master again on the same port and data dir.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// A figure of the master's `/metrics`, by its whole series (`name{labels}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.client().get(format!("{}/metrics", self.url)).send().and_then(|r| r.text()).ok()?;
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.client().get(self.api(path)).send()?;
        let status = response.status();
        let body = response.bytes()?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Sends JSON; returns the status and the body.
    pub fn send_json(&self, method: reqwest::Method, path: &str, body: &impl serde::Serialize) -> anyhow::Result<(u16, String)> {
        let response = self.client().request(method, self.api(path)).json(body).send()?;
        Ok((response.status().as_u16(), response.text()?))
    }

    /// Uploads a built example module; returns its digest.
    pub fn upload_example(&self, name: &str) -> anyhow::Result<String> {
        let (path, digest) = example(name);
        let bytes = std::fs::read(path)?;
        let response = self.client().put(self.api(&format!("/modules/{digest}"))).body(bytes).send()?;
        if !response.status().is_success() {
            bail!("uploading {name}: {}: {}", response.status(), response.text()?);
        }
        Ok(digest)
    }

    pub fn nodes(&self) -> Vec<wasmlet_api::Node> {
        self.get_json::<wasmlet_api::protocol::List<wasmlet_api::Node>>("/nodes").map(|l| l.items).unwrap_or_default()
    }

    pub fn instances(&self) -> Vec<wasmlet_api::Instance> {
        self.get_json::<wasmlet_api::protocol::List<wasmlet_api::Instance>>("/instances").map(|l| l.items).unwrap_or_default()
    }

    pub fn events(&self) -> Vec<wasmlet_api::Event> {
        self.get_json::<wasmlet_api::protocol::List<wasmlet_api::Event>>("/events").map(|l| l.items).unwrap_or_default()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stopping a master and starting it again on other state.
impl Master {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it gracefully (SIGTERM), keeping its data dir.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        signal(child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the master did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops it and starts it again on the same port with `data_dir` (e.g. a
    /// restored one); returns the data dir it ran on before.
    pub fn restart_in(&mut self, data_dir: tempfile::TempDir) -> anyhow::Result<tempfile::TempDir> {
        self.stop()?;
        let old = std::mem::replace(&mut self.data_dir, data_dir);
        self.logs.lock().expect("log lock").clear();
        self.spawn()?;
        Ok(old)
    }
}

/// The outcome of a daemon that was expected to stop on its own.
pub struct Exit {
    pub status: std::process::ExitStatus,
    pub stderr: String,
}

/// Runs `command` and waits up to `timeout` for it to exit (it is killed otherwise, and that is an error).
pub fn run_to_exit(mut command: Command, timeout: Duration) -> anyhow::Result<Exit> {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().context("starting")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {timeout:?}; its log:\n{}", reader.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Exit { status, stderr: reader.join().unwrap_or_default() })
}

/// The `api` and `ingress` fields of the agent's "started" log line.
fn started_api(line: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    if fields.get("message")?.as_str()? != "wasmlet agent started" {
        return None;
    }
    let field = |name: &str| fields.get(name).and_then(|v| v.as_str()).map(str::to_string);
    Some((field("api")?, field("ingress").unwrap_or_default()))
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return true };
    tasks.filter_map(|t| t.ok()).all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
    })
}

pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Resident set size of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU time a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = 100.0; // USER_HZ on Linux
    Some((utime + stime) / ticks)
}
