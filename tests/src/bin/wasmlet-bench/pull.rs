//! Scenario `pull`: how long a workload whose module is in an OCI registry
//! takes from its apply to its instance Running, when nothing has the module
//! yet, set next to the same cold start of a module uploaded to the master
//! (what `wasmlet apply` of a local file does), measured in the same run.
//!
//! One registry (Debian's `docker-registry` on loopback, TLS with a CA of its
//! own and a password) serves every run. Each of [`RUNS`] rounds makes one
//! cold start of each kind, alternating which comes first; every cold start
//! has a fresh master and a fresh agent (fresh data dirs, so no cache holds the
//! module), both started with the registry's CA and credentials whichever path
//! it measures, and waited for until the node is Ready. Its module is
//! `sensor.wasm` (a daemon) grown to [`MODULE_BYTES`] by a custom section of
//! bytes of its own, so each start has a module nothing on the way has seen
//! (custom sections do not change what runs).
//!
//! - Registry: the module is pushed with `wasmlet push` under a tag of its own
//!   beforehand (not timed); the clock starts just before `POST /workloads`
//!   naming the tag, which the master resolves to digests at the registry;
//!   the node then pulls the module from the registry itself. The registry's
//!   access log must show that pull, else the scenario fails.
//! - Upload: the clock starts just before `PUT /api/v1/modules/{digest}` of
//!   the module to the master, followed by `POST /workloads` naming it; the
//!   node fetches the module from the master.
//!
//! Both end when the master's `/api/v1/instances`, read every [`POLL_EVERY`]
//! over one connection, shows the instance Running: the time a user waits
//! with `wasmlet apply --wait`, including the node compiling the module and
//! reporting its instance, and up to one poll interval.
//!
//! Figures: p50 and p99 (nearest rank; with [`RUNS`] runs p99 is the maximum)
//! of each, and the registry's p50 over the upload's (no goal: the issue asks
//! to see the two side by side).

use std::fmt::Display;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use reqwest::blocking::Client;
use wasm_encoder::{CustomSection, Section};
use wasmlet_api::protocol::List;
use wasmlet_api::{Instance, Node, Phase, Workload};
use wasmlet_tests::registry::TestRegistry;
use wasmlet_tests::{Agent, Master, bin, examples_dir, sha256};

use crate::figures::{Figure, Figures};
use crate::support::{find_on_path, percentile, poll_until, require_executable};

/// The subject name of the registry path in the figures.
const REGISTRY: &str = "oci-registry";
/// The subject name of the reference, the module uploaded to the master.
const UPLOAD: &str = "master-upload";

/// Cold starts of each kind.
const RUNS: usize = 5;
/// The size of each module: `sensor.wasm` and a custom section.
const MODULE_BYTES: usize = 5 << 20;
const NODE: &str = "pull-node";
const WORKLOAD: &str = "big";
/// The registry's repository the modules are pushed to, under a tag per run.
const REPOSITORY: &str = "bench/big";
const USER: &str = "bench";
const PASSWORD: &str = "bench-pull-password";

/// How often the master is asked about the instance; part of the latency.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// A debug agent on a busy machine may take a while to compile a module of this size.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(120);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a cold start's module comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Pushed to the registry beforehand, applied by tag.
    Registry,
    /// Uploaded to the master as part of the apply.
    Upload,
}

impl Source {
    fn subject(self) -> &'static str {
        match self {
            Source::Registry => REGISTRY,
            Source::Upload => UPLOAD,
        }
    }
}

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    for binary in ["wasmlet-master", "wasmlet-agent", "wasmlet"] {
        require_executable(&bin(binary), "run `cargo build --workspace --bins` (or set WASMLET_BIN_DIR)")?;
    }
    find_on_path("docker-registry").context("docker-registry not found: run `make test-deps` (apt-get install docker-registry)")?;
    let sensor_path = examples_dir().join("sensor.wasm");
    let sensor = std::fs::read(&sensor_path).with_context(|| format!("reading {} (run `make examples`)", sensor_path.display()))?;

    progress("starting docker-registry on loopback");
    let registry = TestRegistry::start(USER, PASSWORD).context("starting the registry")?;
    let dir = tempfile::Builder::new().prefix("wasmlet-bench-pull-").tempdir().context("creating a work dir")?;
    let credentials = dir.path().join("config.json");
    registry.write_credentials(&credentials, &registry.password).context("writing the registry credentials")?;
    let cluster = Cluster { registry: &registry, credentials: &credentials, dir: dir.path() };

    let mut registry_ms = Vec::with_capacity(RUNS);
    let mut upload_ms = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        // Alternating the order, so neither path always runs on a machine the other just warmed.
        let order = if i % 2 == 0 { [Source::Registry, Source::Upload] } else { [Source::Upload, Source::Registry] };
        for source in order {
            let module = big_module(&sensor, source, i);
            let ms = cluster.cold_start(source, i, &module).with_context(|| format!("{} cold start {}", source.subject(), i + 1))?;
            progress(format!("run {}/{RUNS}: {} cold start {ms:.1} ms", i + 1, source.subject()));
            match source {
                Source::Registry => registry_ms.push(ms),
                Source::Upload => upload_ms.push(ms),
            }
        }
    }

    let note = |what: &str| {
        format!(
            "{RUNS} runs, nearest rank (p99 = the maximum with so few runs); a sensor daemon of {MODULE_BYTES} bytes no cache holds, \
             fresh master and agent per run; from {what} until the instance is Running per the master's /api/v1/instances polled every {} ms",
            POLL_EVERY.as_millis()
        )
    };
    let registry_note =
        note("just before POST /workloads naming a registry tag (resolved by the master, pulled by the node over TLS with a password)");
    let upload_note = note("just before PUT /api/v1/modules/{digest} of the module to the master (then POST /workloads naming it)");
    for (subject, values, note) in [(REGISTRY, &registry_ms, &registry_note), (UPLOAD, &upload_ms, &upload_note)] {
        figures.emit(Figure::new(subject, "cold_start_p50_ms", percentile(values, 0.5)).note(note))?;
        figures.emit(Figure::new(subject, "cold_start_p99_ms", percentile(values, 0.99)).note(note))?;
    }
    let (registry_p50, upload_p50) = (percentile(&registry_ms, 0.5), percentile(&upload_ms, 0.5));
    let mut ratio = Figure::new(REGISTRY, "cold_start_p50_ms_ratio", registry_p50 / upload_p50)
        .note("registry cold start p50 over master-upload cold start p50, in this run");
    ratio.reference = Some(UPLOAD.to_string());
    figures.emit(ratio)?;
    progress(format!("p50: registry {registry_p50:.1} ms, upload {upload_p50:.1} ms"));
    Ok(())
}

/// What every cold start shares: the registry and its credentials.
struct Cluster<'a> {
    registry: &'a TestRegistry,
    /// A Docker `config.json` with the registry's password, for the master and the agent.
    credentials: &'a Path,
    /// Where modules are written for `wasmlet push`.
    dir: &'a Path,
}

impl Cluster<'_> {
    /// One cold start of `module` on a fresh master and agent, in
    /// milliseconds from the apply to the instance Running. Both processes
    /// are stopped by their guards when this returns, also on an error.
    fn cold_start(&self, source: Source, run: usize, module: &[u8]) -> anyhow::Result<f64> {
        let digest = sha256(module);
        let tag = format!("{}/{REPOSITORY}:run-{run}", self.registry.host);
        if source == Source::Registry {
            self.push(module, &tag)?;
        }
        let ca = self.registry.ca_file.to_string_lossy();
        let credentials = self.credentials.to_string_lossy();
        let master =
            Master::start(&["--registry-ca-file", &ca, "--registry-credentials", &credentials]).context("starting wasmlet-master")?;
        let _agent = Agent::start(&[
            "--master",
            &master.url,
            "--join-token",
            &master.join_token,
            "--name",
            NODE,
            "--module-ca-file",
            &ca,
            "--registry-credentials",
            &credentials,
        ])
        .context("starting wasmlet-agent")?;
        // One client for the whole start: its connection is open before the clock starts.
        let client = master.client();
        poll_until(READY_TIMEOUT, Duration::from_millis(50), &format!("node {NODE} Ready"), || {
            let nodes: List<Node> = get_json(&client, &master.api("/nodes"))?;
            Ok(nodes.items.iter().any(|n| n.metadata.name == NODE && n.is_ready()).then_some(()))
        })?;

        let (started, workload) = match source {
            Source::Registry => (Instant::now(), workload(&format!("    oci: {tag}\n"))?),
            Source::Upload => {
                let body = module.to_vec();
                let started = Instant::now();
                let url = master.api(&format!("/modules/{digest}"));
                let response = client.put(&url).body(body).send().with_context(|| format!("PUT {url}"))?;
                if !response.status().is_success() {
                    bail!("uploading the module: {}: {}", response.status(), response.text().unwrap_or_default());
                }
                (started, workload(&format!("    source: {WORKLOAD}.wasm\n    digest: {digest}\n"))?)
            }
        };
        let url = master.api("/workloads");
        let response = client.request(Method::POST, &url).json(&workload).send().with_context(|| format!("POST {url}"))?;
        if !response.status().is_success() {
            bail!("creating the workload: {}: {}", response.status(), response.text().unwrap_or_default());
        }
        let mut last = None;
        poll_until(RUNNING_TIMEOUT, POLL_EVERY, &format!("workload {WORKLOAD}'s instance to be Running"), || {
            let instances: List<Instance> = get_json(&client, &master.api("/instances"))?;
            let instance = instances.items.into_iter().find(|i| i.spec.workload == WORKLOAD);
            if let Some(instance) = &instance {
                match instance.status.phase {
                    Phase::Running => return Ok(Some(())),
                    Phase::Failed | Phase::Succeeded => bail!("the instance ended before running: {}", describe(instance)),
                    _ => {}
                }
            }
            last = instance;
            Ok(None)
        })
        .with_context(|| format!("last seen: {}", last.as_ref().map_or_else(|| "no instance".to_string(), describe)))?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;

        if source == Source::Registry && !self.registry.blob_pulls().iter().any(|l| l.contains(&digest)) {
            bail!("the registry's access log shows no pull of {digest}; the start would be mislabelled");
        }
        Ok(ms)
    }

    /// `wasmlet push` of `module` as `tag`, the password on standard input.
    fn push(&self, module: &[u8], tag: &str) -> anyhow::Result<()> {
        let file = self.dir.join(format!("{WORKLOAD}.wasm"));
        std::fs::write(&file, module).with_context(|| format!("writing {}", file.display()))?;
        let mut child = Command::new(bin("wasmlet"))
            .arg("push")
            .arg(&file)
            .arg(tag)
            .args(["--username", &self.registry.user, "--password-stdin", "--registry-ca-file"])
            .arg(&self.registry.ca_file)
            // Not the user's Docker config: the credentials are the ones given here.
            .env("HOME", self.dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running wasmlet push")?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "{}", self.registry.password).context("writing the password to wasmlet push")?;
        }
        let output = child.wait_with_output().context("waiting for wasmlet push")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains(&format!("module digest {}", sha256(module))) {
            bail!("wasmlet push {tag} failed ({}): {stdout}{}", output.status, String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }
}

/// `sensor` grown to [`MODULE_BYTES`] by a custom section whose name and
/// bytes belong to this `source` and `run` alone.
fn big_module(sensor: &[u8], source: Source, run: usize) -> Vec<u8> {
    let name = format!("wasmlet-bench-pull-{}-{run}", source.subject());
    // After the section's id: its size, then the name's size and the name, then the data.
    let room = MODULE_BYTES.saturating_sub(sensor.len() + 1);
    let content = room - leb128_len(room);
    let data = filler(content.saturating_sub(leb128_len(name.len()) + name.len()), &name);
    let mut module = sensor.to_vec();
    CustomSection { name: name.into(), data: data.into() }.append_to(&mut module);
    module
}

/// How many bytes unsigned LEB128 takes for `value`.
fn leb128_len(value: usize) -> usize {
    ((usize::BITS - value.leading_zeros()) as usize).max(1).div_ceil(7)
}

/// `len` pseudo-random bytes seeded by `seed`: unlike a run of one byte,
/// nothing on the way (HTTP or storage compression) can shrink them.
fn filler(len: usize, seed: &str) -> Vec<u8> {
    let digest = sha256(seed.as_bytes());
    let mut state = u64::from_str_radix(&digest["sha256:".len().."sha256:".len() + 16], 16).unwrap_or(1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The daemon workload [`WORKLOAD`] with `module` (YAML lines under `module:`).
fn workload(module: &str) -> anyhow::Result<Workload> {
    let text = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: {WORKLOAD}\nspec:\n  type: daemon\n  module:\n{module}  args: [\"--interval\", \"200\"]\n"
    );
    wasmlet_api::from_yaml(&text).context("the workload manifest")
}

fn get_json<T: serde::de::DeserializeOwned>(client: &Client, url: &str) -> anyhow::Result<T> {
    let response = client.get(url).send().and_then(|r| r.error_for_status()).with_context(|| format!("GET {url}"))?;
    let body = response.bytes().with_context(|| format!("reading the body of GET {url}"))?;
    serde_json::from_slice(&body).with_context(|| format!("decoding GET {url}"))
}

fn describe(instance: &Instance) -> String {
    let status = &instance.status;
    format!(
        "{} on {}: phase {}, reason {}, message {}",
        instance.metadata.name,
        instance.spec.node,
        status.phase.as_str(),
        status.reason.as_deref().unwrap_or("-"),
        status.message.as_deref().unwrap_or("-")
    )
}

fn progress(message: impl Display) {
    eprintln!("pull: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_module_is_the_size_asked_and_its_own() {
        let sensor = b"\0asm\x01\0\0\0";
        let registry = big_module(sensor, Source::Registry, 0);
        assert_eq!(registry.len(), MODULE_BYTES);
        assert_eq!(&registry[..8], sensor);
        assert_ne!(sha256(&registry), sha256(&big_module(sensor, Source::Upload, 0)));
        assert_ne!(sha256(&registry), sha256(&big_module(sensor, Source::Registry, 1)));
    }

    #[test]
    fn leb128_lengths() {
        assert_eq!([0, 127, 128, 16_383, 16_384, MODULE_BYTES].map(leb128_len), [1, 1, 2, 2, 3, 4]);
    }
}
