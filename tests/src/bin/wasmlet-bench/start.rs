//! Scenario `start`: how long a workload takes from its manifest appearing to
//! its instance running, when the agent compiles the module first (cold) and
//! when the compiled module is already in the agent's memory (warm). A node
//! that starts workloads in milliseconds can treat starting as cheap: scale
//! from zero, restart instead of repair.
//!
//! One agent watches a manifests dir every [`MANIFESTS_POLL_INTERVAL`]. Each
//! start puts one manifest (a `sensor` daemon, `--interval 60000`) into the dir
//! atomically (written under another name, then renamed), waits until the
//! instance is Running, and takes as latency the instance's `status.startedAt`
//! minus the wall-clock time read just before the rename (the agent runs on the
//! same machine, so on the same clock). The file is then removed and the
//! instance waited for until the agent has dropped it, so exactly one manifest
//! exists at a time. The latency includes up to one poll interval of the agent
//! noticing the file; each start waits a different part of the poll period
//! first, so the starts fall at spread points of it (otherwise each would come
//! right after a poll and wait nearly a whole period). How often the bench
//! asks for the instance does not enter the latency.
//!
//! - Cold: [`STARTS`] starts, each of a module the agent has never seen:
//!   `sensor.wasm` with a custom section appended that holds the start's index,
//!   which is a valid module with a digest of its own.
//! - Warm: one unmeasured start compiles `sensor.wasm` and stays running (the
//!   agent keeps a compiled module in memory only while an instance holds
//!   it), then [`STARTS`] starts of that same module.
//!
//! `wasmlet_module_loads` of `/metrics` confirms what each phase measured: the
//! cold starts compiled, the warm ones were served from the memory cache. When
//! it does not, the phase's latencies are not printed and the scenario fails.
//!
//! - Process: [`STARTS`] starts of the same cached module with
//!   `isolation: process`, each a process and a cgroup of its own.
//!
//! `status.startedAt` marks the instance Running, which for a process
//! instance comes before its process has started. So warm and process starts
//! are also measured to the guest's first line of output (the sensor prints
//! one at once), from the timestamp its instance log gives it: the time until
//! the program is really running, the same measure for both isolation modes.
//!
//! Figures: p50 and p99 (nearest rank) of each phase, warm p99 against a goal
//! of [`WARM_P99_GOAL`] ms, process p99 to the first output against
//! [`PROCESS_P99_GOAL`] ms, and the module-load counts of each phase.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use wasmlet_api::{Instance, Phase};
use wasmlet_tests::{Agent, bin, examples_dir, sha256};

use crate::figures::{Figure, Figures, Goal};
use crate::support::{agent_client, millis_between, percentile, place_manifest, poll_until, require_executable, yaml_path};

/// The subject name of wasmlet's node agent in the figures.
const AGENT: &str = "agent";

/// Measured starts per phase.
const STARTS: usize = 100;
/// The agent's `--manifests-poll-interval`; part of the measured latency.
const MANIFESTS_POLL_INTERVAL: &str = "10ms";
/// The same, to spread the starts over it (see [`stagger`]).
const MANIFESTS_POLL_PERIOD: Duration = Duration::from_millis(10);
const WARM_P99_GOAL: Goal = Goal::AtMost(20.0);
const PROCESS_P99_GOAL: Goal = Goal::AtMost(30.0);

/// How often the bench asks the agent about the instance. The latency is read
/// from `status.startedAt`, so this only paces the loop.
const CHECK_EVERY: Duration = Duration::from_millis(5);
/// A cold start compiles; a debug agent on a busy machine may take a while.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(60);
const GONE_TIMEOUT: Duration = Duration::from_secs(30);

/// The name of the custom section that makes each cold module new.
const CUSTOM_SECTION: &str = "wasmlet-bench";

pub fn run(figures: &mut Figures) -> anyhow::Result<()> {
    require_executable(&bin("wasmlet-agent"), "run `cargo build -p wasmlet-agent --bins` (or set WASMLET_BIN_DIR)")?;
    let sensor_path = examples_dir().join("sensor.wasm");
    let sensor = std::fs::read(&sensor_path).with_context(|| format!("reading {} (run `make examples`)", sensor_path.display()))?;
    let manifests = tempfile::Builder::new().prefix("wasmlet-bench-manifests-").tempdir().context("creating a manifests dir")?;
    let modules = tempfile::Builder::new().prefix("wasmlet-bench-modules-").tempdir().context("creating a modules dir")?;

    progress(format!("starting an agent with --manifests-poll-interval {MANIFESTS_POLL_INTERVAL}"));
    let manifests_arg = manifests.path().to_string_lossy().into_owned();
    let agent = Agent::start(&["--manifests-dir", &manifests_arg, "--manifests-poll-interval", MANIFESTS_POLL_INTERVAL])
        .context("starting wasmlet-agent")?;
    let starter = Starter { agent: &agent, client: agent_client(&agent)?, dir: manifests.path() };

    // Cold: a module of its own per start, written before the clock starts.
    progress(format!("cold: {STARTS} starts, each of a module the agent has not compiled"));
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let before = Loads::read(&agent)?;
    let mut cold = Vec::with_capacity(STARTS);
    for i in 0..STARTS {
        let bytes = with_custom_section(&sensor, CUSTOM_SECTION, format!("cold start {i} of run {nonce}").as_bytes());
        let path = modules.path().join(format!("sensor-cold-{i}.wasm"));
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        std::thread::sleep(stagger(i));
        cold.push(
            starter
                .start(&format!("cold-{i}"), &path, &sha256(&bytes), Isolation::InProcess)
                .with_context(|| format!("cold start {i}"))?
                .running_ms,
        );
    }
    let loads = Loads::read(&agent)?.since(before);
    let count_note = |what: &str| format!("wasmlet_module_loads over the {STARTS} cold starts: {what}");
    figures.emit(Figure::new(AGENT, "cold_start_compiled_loads", loads.compiled).note(&count_note(&format!("expected {STARTS}"))))?;
    figures.emit(
        Figure::new(AGENT, "cold_start_cached_loads", loads.memory_hit + loads.disk_hit)
            .note(&count_note("memory_hit + disk_hit, expected 0")),
    )?;
    if loads.compiled != STARTS as u64 || loads.memory_hit + loads.disk_hit != 0 {
        bail!("the cold starts were not all compiled ({loads:?} over {STARTS} starts); their latencies would be mislabelled");
    }
    let note = format!(
        "{STARTS} starts, nearest rank; from just before the manifest's rename into --manifests-dir to the instance's status.startedAt, \
         including the agent's --manifests-poll-interval {MANIFESTS_POLL_INTERVAL} (starts spread evenly over it); \
         each start compiles a module new to the agent"
    );
    figures.emit(Figure::new(AGENT, "cold_start_p50_ms", percentile(&cold, 0.5)).note(&note))?;
    figures.emit(Figure::new(AGENT, "cold_start_p99_ms", percentile(&cold, 0.99)).note(&note))?;
    progress(format!("cold: p50 {:.1} ms, p99 {:.1} ms", percentile(&cold, 0.5), percentile(&cold, 0.99)));

    // Warm: one start compiles sensor.wasm and keeps it in memory, then the same module again and again.
    progress(format!("warm: one start to compile sensor.wasm, left running, then {STARTS} starts of it"));
    let digest = sha256(&sensor);
    starter.keep_running("warm-up", &sensor_path, &digest).context("the warm-up start")?;
    let warm = starter.cached_starts(figures, "warm", &sensor_path, &digest, Isolation::InProcess)?;
    let (warm, warm_output): (Vec<f64>, Vec<f64>) = warm.into_iter().map(|s| (s.running_ms, s.output_ms)).unzip();
    let note = format!(
        "{STARTS} starts, nearest rank; from just before the manifest's rename into --manifests-dir to the instance's status.startedAt, \
         including the agent's --manifests-poll-interval {MANIFESTS_POLL_INTERVAL} (starts spread evenly over it); \
         the module compiled before and cached in memory"
    );
    figures.emit(Figure::new(AGENT, "warm_start_p50_ms", percentile(&warm, 0.5)).note(&note))?;
    figures.emit(Figure::new(AGENT, "warm_start_p99_ms", percentile(&warm, 0.99)).goal(WARM_P99_GOAL).note(&note))?;
    progress(format!("warm: p50 {:.1} ms, p99 {:.1} ms (goal {WARM_P99_GOAL})", percentile(&warm, 0.5), percentile(&warm, 0.99)));
    let output_note = |what: &str| {
        format!(
            "{STARTS} starts, nearest rank; from just before the manifest's rename into --manifests-dir to the timestamp of the guest's \
             first line of output in its instance log, including the agent's --manifests-poll-interval {MANIFESTS_POLL_INTERVAL}; {what}"
        )
    };
    let in_process_note = output_note("in-process, the module cached in memory");
    figures.emit(Figure::new(AGENT, "warm_start_first_output_p50_ms", percentile(&warm_output, 0.5)).note(&in_process_note))?;
    figures.emit(Figure::new(AGENT, "warm_start_first_output_p99_ms", percentile(&warm_output, 0.99)).note(&in_process_note))?;

    // Process isolation: the same cached module, a process and a cgroup per start.
    progress(format!("process: {STARTS} starts of the cached sensor.wasm with isolation: process"));
    let process = starter.cached_starts(figures, "process", &sensor_path, &digest, Isolation::Process)?;
    let (process_running, process_output): (Vec<f64>, Vec<f64>) = process.into_iter().map(|s| (s.running_ms, s.output_ms)).unzip();
    let note = output_note(
        "isolation: process (the agent's binary started as the instance's process in a new cgroup, mapping the cached artefact)",
    );
    figures.emit(
        Figure::new(AGENT, "process_start_running_p99_ms", percentile(&process_running, 0.99))
            .note("to status.startedAt, as the warm figures: for a process instance that is before its process started"),
    )?;
    figures.emit(Figure::new(AGENT, "process_start_first_output_p50_ms", percentile(&process_output, 0.5)).note(&note))?;
    figures.emit(
        Figure::new(AGENT, "process_start_first_output_p99_ms", percentile(&process_output, 0.99)).goal(PROCESS_P99_GOAL).note(&note),
    )?;
    let mut ratio =
        Figure::new(AGENT, "process_over_in_process_first_output_p50", percentile(&process_output, 0.5) / percentile(&warm_output, 0.5))
            .note("process start p50 over in-process warm start p50, both to the first output, in this run");
    ratio.reference = Some(format!("{AGENT} in-process"));
    figures.emit(ratio)?;
    progress(format!(
        "to the first output: in-process p50 {:.1} ms, p99 {:.1} ms; process p50 {:.1} ms, p99 {:.1} ms (goal {PROCESS_P99_GOAL})",
        percentile(&warm_output, 0.5),
        percentile(&warm_output, 0.99),
        percentile(&process_output, 0.5),
        percentile(&process_output, 0.99)
    ));
    Ok(())
}

/// How a start is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    InProcess,
    Process,
}

/// One start's latencies, in milliseconds from the manifest's rename.
struct Start {
    /// To `status.startedAt`.
    running_ms: f64,
    /// To the guest's first line of output.
    output_ms: f64,
}

/// Starts workloads one at a time through the agent's manifests dir.
struct Starter<'a> {
    agent: &'a Agent,
    /// The agent's API client (its token), reused so polling does not open a connection per request.
    client: Client,
    dir: &'a Path,
}

impl Starter<'_> {
    /// [`STARTS`] starts of a module the agent has in memory, checked by its
    /// load counters (a phase whose starts were not all memory hits fails).
    fn cached_starts(
        &self,
        figures: &mut Figures,
        phase: &str,
        module: &Path,
        digest: &str,
        isolation: Isolation,
    ) -> anyhow::Result<Vec<Start>> {
        let before = Loads::read(self.agent)?;
        let mut starts = Vec::with_capacity(STARTS);
        for i in 0..STARTS {
            std::thread::sleep(stagger(i));
            starts.push(self.start(&format!("{phase}-{i}"), module, digest, isolation).with_context(|| format!("{phase} start {i}"))?);
        }
        let loads = Loads::read(self.agent)?.since(before);
        let count_note = |what: &str| format!("wasmlet_module_loads over the {STARTS} {phase} starts: {what}");
        figures.emit(
            Figure::new(AGENT, &format!("{phase}_start_memory_hit_loads"), loads.memory_hit)
                .note(&count_note(&format!("expected {STARTS}"))),
        )?;
        figures.emit(
            Figure::new(AGENT, &format!("{phase}_start_uncached_loads"), loads.compiled + loads.disk_hit)
                .note(&count_note("compiled + disk_hit, expected 0")),
        )?;
        if loads.memory_hit != STARTS as u64 || loads.compiled + loads.disk_hit != 0 {
            bail!(
                "the {phase} starts were not all served from the memory cache ({loads:?} over {STARTS} starts); their latencies would be mislabelled"
            );
        }
        Ok(starts)
    }

    /// One start of a `sensor` daemon called `workload`: its latencies, after
    /// the manifest is removed again and the agent has dropped the instance.
    fn start(&self, workload: &str, module: &Path, digest: &str, isolation: Isolation) -> anyhow::Result<Start> {
        let file_name = format!("{workload}.yaml");
        let placed_at = place_manifest(self.dir, &file_name, &manifest(workload, module, digest, isolation))?;
        let name = format!("{workload}-0");
        let mut last = None;
        let running = poll_until(RUNNING_TIMEOUT, CHECK_EVERY, &format!("instance {name} to be Running"), || {
            let instance = self.instance(&name)?;
            if let Some(instance) = &instance {
                match instance.status.phase {
                    Phase::Running => return Ok(Some(instance.clone())),
                    Phase::Failed | Phase::Succeeded => {
                        bail!("instance {name} ended {} before running: {}", instance.status.phase.as_str(), describe(instance))
                    }
                    _ => {}
                }
            }
            last = instance;
            Ok(None)
        })
        .with_context(|| format!("last seen: {}", last.as_ref().map_or_else(|| "no such instance".to_string(), describe)))?;
        let started_at = running.status.started_at.with_context(|| format!("instance {name} is Running without status.startedAt"))?;
        let first_output = poll_until(RUNNING_TIMEOUT, CHECK_EVERY, &format!("the first output of {name}"), || self.first_output(&name))?;

        let path = self.dir.join(&file_name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        poll_until(GONE_TIMEOUT, CHECK_EVERY, &format!("the agent to drop instance {name}"), || {
            Ok(self.instance(&name)?.is_none().then_some(()))
        })?;
        Ok(Start { running_ms: millis_between(placed_at, started_at), output_ms: millis_between(placed_at, first_output) })
    }

    /// Starts a `sensor` daemon called `workload` and leaves it running: while
    /// its instance holds the compiled module, the agent keeps it in memory.
    fn keep_running(&self, workload: &str, module: &Path, digest: &str) -> anyhow::Result<()> {
        place_manifest(self.dir, &format!("{workload}.yaml"), &manifest(workload, module, digest, Isolation::InProcess))?;
        let name = format!("{workload}-0");
        poll_until(RUNNING_TIMEOUT, CHECK_EVERY, &format!("instance {name} to be Running"), || {
            Ok(self.instance(&name)?.filter(|i| i.status.phase == Phase::Running).map(|_| ()))
        })
    }

    /// When the instance's guest wrote its first line to stdout, by its log.
    fn first_output(&self, name: &str) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
        let url = self.agent.url(&format!("/instances/{name}/logs"));
        let text =
            self.client.get(&url).send().and_then(|r| r.error_for_status()).and_then(|r| r.text()).with_context(|| format!("GET {url}"))?;
        let Some(line) = text.lines().find(|l| l.split(' ').nth(1) == Some("stdout")) else { return Ok(None) };
        let stamp = line.split(' ').next().unwrap_or_default();
        let at = chrono::DateTime::parse_from_rfc3339(stamp).with_context(|| format!("the timestamp of log line {line:?}"))?;
        Ok(Some(at.with_timezone(&chrono::Utc)))
    }

    /// The instance, or None when the agent has none of that name.
    fn instance(&self, name: &str) -> anyhow::Result<Option<Instance>> {
        let url = self.agent.url(&format!("/instances/{name}"));
        let response = self.client.get(&url).send().with_context(|| format!("GET {url}"))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response.error_for_status().and_then(|r| r.bytes()).with_context(|| format!("GET {url}"))?;
        wasmlet_api::from_json(&body).map(Some).with_context(|| format!("decoding GET {url} as an Instance"))
    }
}

fn describe(instance: &Instance) -> String {
    let status = &instance.status;
    format!(
        "phase {}, reason {}, message {}",
        status.phase.as_str(),
        status.reason.as_deref().unwrap_or("-"),
        status.message.as_deref().unwrap_or("-")
    )
}

/// A pause before start `i`, so the starts fall at points spread evenly over
/// the agent's poll period (golden-ratio steps) rather than all just after a
/// poll: the previous start ends when the bench sees the agent drop the
/// instance, which happens right after one of its polls.
fn stagger(i: usize) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_895;
    MANIFESTS_POLL_PERIOD.mul_f64((i as f64 * GOLDEN).fract())
}

/// A `sensor` daemon that prints one line right away, then sleeps a minute
/// before the next (it has no file to read; the line says so).
fn manifest(name: &str, module: &Path, digest: &str, isolation: Isolation) -> String {
    let isolation = match isolation {
        Isolation::InProcess => "in-process",
        Isolation::Process => "process",
    };
    format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  type: daemon\n  isolation: {isolation}\n  module:\n    source: {}\n    digest: {digest}\n  args: [\"--interval\", \"60000\"]\n",
        yaml_path(module)
    )
}

/// `module` with a custom section `name` holding `payload` appended: still a
/// valid module (custom sections may come anywhere and do not change what
/// runs), with a digest of its own.
fn with_custom_section(module: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut content = leb128(name.len() as u64);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = module.to_vec();
    out.push(0x00); // section id 0: custom
    out.extend(leb128(content.len() as u64));
    out.extend(content);
    out
}

/// Unsigned LEB128, as WebAssembly encodes sizes.
fn leb128(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// The counters of `wasmlet_module_loads`.
#[derive(Debug, Clone, Copy)]
struct Loads {
    compiled: u64,
    memory_hit: u64,
    disk_hit: u64,
}

impl Loads {
    fn read(agent: &Agent) -> anyhow::Result<Loads> {
        let read = |result: &str| -> anyhow::Result<u64> {
            let series = format!("wasmlet_module_loads{{result=\"{result}\"}}");
            agent.metric(&series).map(|v| v as u64).with_context(|| format!("the agent's /metrics has no {series}"))
        };
        Ok(Loads { compiled: read("compiled")?, memory_hit: read("memory_hit")?, disk_hit: read("disk_hit")? })
    }

    fn since(self, before: Loads) -> Loads {
        Loads {
            compiled: self.compiled.saturating_sub(before.compiled),
            memory_hit: self.memory_hit.saturating_sub(before.memory_hit),
            disk_hit: self.disk_hit.saturating_sub(before.disk_hit),
        }
    }
}

fn progress(message: impl Display) {
    eprintln!("start: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_encodes_as_the_spec_shows() {
        assert_eq!(leb128(0), [0x00]);
        assert_eq!(leb128(127), [0x7f]);
        assert_eq!(leb128(128), [0x80, 0x01]);
        assert_eq!(leb128(624_485), [0xe5, 0x8e, 0x26]);
    }

    #[test]
    fn a_custom_section_is_appended_whole() {
        let module = b"\0asm\x01\0\0\0";
        let out = with_custom_section(module, "ab", b"xyz");
        assert_eq!(&out[..8], module);
        assert_eq!(&out[8..], &[0x00, 6, 2, b'a', b'b', b'x', b'y', b'z']);
    }
}
