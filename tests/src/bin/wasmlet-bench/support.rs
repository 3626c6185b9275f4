//! What scenarios share beyond the `wasmlet_tests` harness: finding tools,
//! free ports, HTTP clients (plain, or with an agent's token or a read token)
//! and polling, and the reference process, Debian's
//! `prometheus-node-exporter`, stopped by a guard like the harness's `Agent`;
//! the wasmtime CLI `make bench-deps` installs (path, version);
//! polling that fails instead of panicking, percentiles, placing a
//! manifest in an agent's `--manifests-dir`, process CPU time, ids for
//! simulated nodes and the open-files limit.
//!
//! `free_port`, `http_client`, `get_ok` and `NodeExporter` would fit in
//! `tests/src/lib.rs` once a test needs them.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How to get the tools the bench drives.
pub const INSTALL_HINT: &str = "run `make bench-deps` (apt-get install wrk prometheus-node-exporter)";

/// The first executable file called `name` in `$PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `make bench-deps` installs the wasmtime CLI.
pub const WASMTIME_DEFAULT: &str = "/var/tmp/wasmlet-tools/bin/wasmtime";
/// The version of wasmtime the agent embeds.
pub const WASMTIME_VERSION: &str = "48.0.8";
pub const WASMTIME_HINT: &str =
    "run `make bench-deps` (it installs wasmtime-cli 48.0.8 into /var/tmp/wasmlet-tools), or point $WASMTIME at a wasmtime 48 CLI";

/// Checks, before anything starts, that the agent binary and the wasmtime CLI
/// reference are there; warns when the CLI is not the version the agent embeds.
/// Returns the CLI's path and its `--version` line.
pub fn require_agent_and_wasmtime(scenario: &str) -> anyhow::Result<(PathBuf, String)> {
    require_executable(&wasmlet_tests::bin("wasmlet-agent"), "run `cargo build -p wasmlet-agent --bins` (or set WASMLET_BIN_DIR)")?;
    let wasmtime = wasmtime_path();
    require_executable(&wasmtime, WASMTIME_HINT)?;
    let version = wasmtime_version(&wasmtime)?;
    if !version.split_whitespace().any(|word| word == WASMTIME_VERSION) {
        eprintln!("{scenario}: warning: {} is `{version}`, not {WASMTIME_VERSION} as the agent embeds", wasmtime.display());
    }
    Ok((wasmtime, version))
}

/// The wasmtime CLI: `$WASMTIME`, else [`WASMTIME_DEFAULT`].
pub fn wasmtime_path() -> PathBuf {
    std::env::var_os("WASMTIME").map_or_else(|| PathBuf::from(WASMTIME_DEFAULT), PathBuf::from)
}

/// The first line of `wasmtime --version` (`wasmtime 48.0.8 (...)`).
pub fn wasmtime_version(wasmtime: &Path) -> anyhow::Result<String> {
    let output = Command::new(wasmtime).arg("--version").output().with_context(|| format!("running {} --version", wasmtime.display()))?;
    if !output.status.success() {
        bail!("{} --version failed ({}): {}", wasmtime.display(), output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or_default().trim().to_string())
}

/// Fails with a hint when a binary the bench starts is missing.
pub fn require_executable(path: &Path, hint: &str) -> anyhow::Result<()> {
    if !is_executable(path) {
        bail!("{} not found: {hint}", path.display());
    }
    Ok(())
}

/// A loopback port nobody listened on a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr().context("reading the free port")?.port())
}

/// How long one of the bench's own requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the bench's own requests (not the load, which wrk makes) to
/// servers that take no token: node_exporter, ingresses, `wasmtime serve`.
pub fn http_client() -> anyhow::Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder().timeout(REQUEST_TIMEOUT).build().context("building an HTTP client")
}

/// A client for an agent's API: the agent's own token on every request, and
/// the cluster CA trusted once it joined a master.
pub fn agent_client(agent: &wasmlet_tests::Agent) -> anyhow::Result<reqwest::blocking::Client> {
    agent.client_builder().timeout(REQUEST_TIMEOUT).build().context("building an HTTP client for the agent's API")
}

/// A client for an API taking `token` as its bearer token, over plain HTTP
/// (a standalone agent's API on loopback, read with its `--api-read-token`).
pub fn bearer_client(token: &str) -> anyhow::Result<reqwest::blocking::Client> {
    wasmlet_tests::authorized(token).timeout(REQUEST_TIMEOUT).build().context("building an HTTP client")
}

/// GET `url`, failing unless the answer is a success; returns the body.
pub fn get_ok(client: &reqwest::blocking::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let response = client.get(url).send().with_context(|| format!("GET {url}"))?;
    let response = response.error_for_status().with_context(|| format!("GET {url}"))?;
    response.bytes().map(|b| b.to_vec()).with_context(|| format!("reading the body of GET {url}"))
}

/// The path Debian's package installs the reference to.
pub const NODE_EXPORTER_BIN: &str = "/usr/bin/prometheus-node-exporter";
/// The reference's name in the figures.
pub const NODE_EXPORTER: &str = "prometheus-node-exporter";

/// A running `prometheus-node-exporter` on a free loopback port with its
/// default collectors; killed when dropped.
pub struct NodeExporter {
    child: Child,
    /// `http://127.0.0.1:PORT`
    base: String,
    /// Everything it wrote to stderr so far.
    logs: Arc<Mutex<Vec<String>>>,
}

impl NodeExporter {
    /// Starts the exporter and waits until its `/metrics` answers. A port taken
    /// in the meantime by someone else makes it exit; then it tries another.
    pub fn start() -> anyhow::Result<NodeExporter> {
        Self::require()?;
        let client = http_client()?;
        let mut attempt = 1;
        loop {
            let mut exporter = Self::spawn(free_port()?)?;
            match exporter.wait_until_ready(&client, Duration::from_secs(30)) {
                Ok(()) => return Ok(exporter),
                Err(error) if attempt < 3 && exporter.has_exited() => {
                    eprintln!("{NODE_EXPORTER} exited at start ({error:#}); trying another port");
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Fails with an install hint when the package is not installed.
    pub fn require() -> anyhow::Result<()> {
        require_executable(Path::new(NODE_EXPORTER_BIN), INSTALL_HINT)
    }

    fn spawn(port: u16) -> anyhow::Result<NodeExporter> {
        let mut child = Command::new(NODE_EXPORTER_BIN)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {NODE_EXPORTER_BIN}"))?;
        let stderr = child.stderr.take();
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = stderr {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut logs) = logs.lock() {
                        logs.push(line);
                    }
                }
            });
        }
        Ok(NodeExporter { child, base: format!("http://127.0.0.1:{port}"), logs })
    }

    fn wait_until_ready(&mut self, client: &reqwest::blocking::Client, timeout: Duration) -> anyhow::Result<()> {
        let url = self.url("/metrics");
        let deadline = Instant::now() + timeout;
        loop {
            if get_ok(client, &url).is_ok() {
                return Ok(());
            }
            if self.has_exited() {
                bail!("{NODE_EXPORTER} exited before {url} answered; its log:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("{NODE_EXPORTER}'s {url} did not answer within {timeout:?}; its log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_text(&self) -> String {
        self.logs.lock().map(|logs| logs.join("\n")).unwrap_or_default()
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `check` every `every` until it returns `Some`, fails with its error,
/// or `timeout` passes (then fails naming `what`). Unlike the harness's
/// `wait_for` it returns an error instead of panicking.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// The nearest-rank `quantile` (0 < quantile <= 1) of `values`: the smallest
/// value with at least that share of the values at or below it. NaN when empty.
pub fn percentile(values: &[f64], quantile: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Puts a manifest into an agent's `--manifests-dir` atomically: written under
/// a name the agent ignores (no `.yaml`), then renamed to `file_name`. Returns
/// the wall-clock time read just before the rename, when the file appears.
pub fn place_manifest(dir: &Path, file_name: &str, text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let temp = dir.join(format!(".{file_name}.tmp"));
    let target = dir.join(file_name);
    std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
    let now = chrono::Utc::now();
    std::fs::rename(&temp, &target).with_context(|| format!("renaming {} to {}", temp.display(), target.display()))?;
    Ok(now)
}

/// `later - earlier` in milliseconds, with microsecond resolution.
pub fn millis_between(earlier: chrono::DateTime<chrono::Utc>, later: chrono::DateTime<chrono::Utc>) -> f64 {
    (later - earlier).num_microseconds().map_or(f64::NAN, |us| us as f64 / 1000.0)
}

/// A YAML scalar holding `path` (a JSON string, which YAML reads as is).
pub fn yaml_path(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

/// 32 hex digits derived from `seed`: a stable machine or boot id for a simulated node.
pub fn hex_id(seed: &str) -> String {
    let digest = wasmlet_tests::sha256(seed.as_bytes());
    digest.trim_start_matches("sha256:").chars().take(32).collect()
}

/// Raises this process's soft limit of open files to its hard limit (processes
/// it starts, such as the master, inherit it); returns the soft limit now in force.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Ten thousand simulated nodes hold two connections each, on both sides:
    // ask for plenty (root may raise the hard limit), else take what the hard limit allows.
    const WANTED: u64 = 131_072;
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|c| c < WANTED)
        && setrlimit(Resource::Nofile, Rlimit { current: Some(WANTED), maximum: Some(WANTED.max(limit.maximum.unwrap_or(0))) }).is_err()
        && limit.current != limit.maximum
    {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
    getrlimit(Resource::Nofile).current
}

/// CPU seconds of a process, failing with its name when /proc has none.
pub fn process_cpu_seconds(pid: u32, name: &str) -> anyhow::Result<f64> {
    wasmlet_tests::cpu_seconds(pid).with_context(|| format!("reading the CPU time of {name} (pid {pid}) from /proc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn paths_are_quoted_for_yaml() {
        assert_eq!(yaml_path(Path::new("/tmp/a b/c.wasm")), r#""/tmp/a b/c.wasm""#);
    }
}
