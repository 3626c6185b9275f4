//! Sandbox audit: what a workload must not reach, checked against the real
//! `wasmlet-agent` running workloads from a manifests dir (no master). Each
//! test gives the guest a way to reach for something and a way to tell whether
//! it could, so that a leak makes the test fail:
//!
//! - files outside the grants: absolute host paths, `..`, symlinks in a
//!   granted dir pointing out (to a file and to a directory), and symlinks the
//!   guest creates itself in its writable scratch dir (`fs-probe --symlink`),
//!   for reading and for writing;
//! - the agent's environment (a secret variable in the agent's process);
//! - the agent's own files: its data dir, by absolute path and from the
//!   scratch dir that lives inside it; nor can links the guest plants there
//!   make the agent delete its own files when it cleans up;
//! - sockets: TCP connect and listen, UDP, name lookup (`net-probe`, a
//!   wasm32-wasip2 component), with a listener in the test proving that no
//!   connection and no datagram arrived;
//! - the agent's memory and CPU: memory and CPU hogs next to the agent's API
//!   and another workload, and the agent's resident memory while a memory hog
//!   without a limit runs: held by `--default-memory-limit` (128Mi), and by
//!   `--max-instance-memory` when the default is set higher.
//!
//! Covered by other tests, not repeated here:
//!
//! - a module importing something the agent does not provide is refused by
//!   name: `runtime::a_module_importing_what_the_agent_lacks_is_refused_by_name`;
//! - a host path outside `--allowed-host-paths` is refused at admission:
//!   `runtime::path_escapes_fail_inside_the_guest` (which also has a first,
//!   smaller set of the path escapes tried here);
//! - wasi:http outgoing requests to a host outside `allowedOutboundHosts` fail
//!   inside the guest with `HttpRequestDenied` and never reach the upstream
//!   (its one-shot server then serves the allowed request):
//!   `services::services_answer_through_the_ingress_with_their_bounds`;
//! - memory and CPU-time limits end runs with `MemoryLimitExceeded` and
//!   `CPUTimeLimitExceeded`: `runtime::examples_reach_their_phases_and_reasons`;
//!   spinning guests do not starve a sensor: `runtime::spinning_guests_do_not_starve_a_sensor`.

use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

use wasmlet_api::Phase;
use wasmlet_tests::{Agent, place_file, rss_bytes, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

/// What the agent's resident memory must stay below while hogs run: the agent
/// itself (a debug build) takes a few tens of MiB, the hogs' limits (64Mi,
/// 128Mi) fit well within the rest.
const RSS_BOUND: u64 = 300 << 20;

/// How long `/healthz` and `/status` may take next to the hogs: generous, so
/// a loaded machine does not fail the test; a starved API would take forever.
const API_BOUND: Duration = Duration::from_secs(10);

fn manifests() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("wasmlet-manifests-").tempdir().expect("tempdir")
}

fn manifests_args(dir: &Path) -> Vec<&str> {
    vec!["--manifests-dir", dir.to_str().expect("utf-8"), "--manifests-poll-interval", "100ms"]
}

fn agent_with(dir: &Path, extra: &[&str]) -> Agent {
    let mut args = manifests_args(dir);
    args.extend_from_slice(extra);
    Agent::start(&args).expect("agent starts")
}

fn logs(agent: &Agent, instance: &str) -> String {
    agent.get_text(&format!("/instances/{instance}/logs")).expect("logs")
}

/// What a probe printed about `subject` (`<subject>: <verdict>` on stdout): the verdict.
fn verdict<'a>(out: &'a str, subject: &str) -> &'a str {
    out.lines()
        .filter_map(|l| l.split_once(" stdout ").map(|(_, line)| line))
        .find_map(|line| line.strip_prefix(subject)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("the probe reports on {subject}:\n{out}"))
}

fn assert_denied(out: &str, subjects: &[&str]) {
    for subject in subjects {
        let verdict = verdict(out, subject);
        assert!(verdict.starts_with("denied"), "{subject}: {verdict}\n{out}");
    }
}

/// The `env K=V` lines a probe printed.
fn env_lines(out: &str) -> Vec<&str> {
    out.lines().filter_map(|l| l.split_once(" stdout ").map(|(_, line)| line)).filter(|line| line.starts_with("env ")).collect()
}

/// A YAML flow sequence of strings.
fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `../` often enough to reach `/` from any directory the agent uses, then `path`: a relative
/// path that resolves to `path` on the host.
fn up_to(path: &Path) -> String {
    format!("{}{}", "../".repeat(16), path.display().to_string().trim_start_matches('/'))
}

#[test]
fn files_outside_the_grants_can_be_neither_read_nor_written() {
    let dir = manifests();
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, b"top secret").expect("write");
    let outside_name = outside.path().file_name().and_then(|n| n.to_str()).expect("utf-8 name");

    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::write(shared.path().join("ok.txt"), b"fine").expect("write");
    std::os::unix::fs::symlink("ok.txt", shared.path().join("inner")).expect("symlink");
    std::os::unix::fs::symlink(&secret, shared.path().join("escape-file")).expect("symlink");
    std::os::unix::fs::symlink(format!("../{outside_name}/secret.txt"), shared.path().join("escape-rel")).expect("symlink");
    std::os::unix::fs::symlink(outside.path(), shared.path().join("escape-dir")).expect("symlink");
    let host = shared.path().to_str().expect("utf-8");
    let secret_abs = secret.display().to_string();
    let outside_abs = outside.path().display().to_string();
    let secret_up = up_to(&secret);
    let outside_up = up_to(outside.path());
    // Each symlink the guest plants would lead to the secret on the host; only the first stays inside.
    let args: Vec<String> = [
        "/data/ok.txt",
        "/data/inner",
        "/data/escape-file",
        "/data/escape-rel",
        "/data/escape-dir",
        "/data/escape-dir/secret.txt",
        &format!("/data/../{outside_name}/secret.txt"),
        "/data/..",
        "/",
        &secret_abs,
        &outside_abs,
        "--write",
        "/scratch/mine.txt",
        "--symlink",
        "mine.txt",
        "/scratch/link-mine",
        "/scratch/link-mine",
        "--symlink",
        &secret_abs,
        "/scratch/abs",
        "/scratch/abs",
        "--symlink",
        &secret_up,
        "/scratch/up",
        "/scratch/up",
        "--symlink",
        &outside_up,
        "/scratch/up-dir",
        "/scratch/up-dir/secret.txt",
        "--symlink",
        &outside_abs,
        "/scratch/abs-dir",
        "/scratch/abs-dir/secret.txt",
        "--write",
        "/scratch/up",
        "--write",
        "/scratch/up-dir/planted.txt",
        "--write",
        "/data/escape-file",
        "--write",
        "/data/escape-dir/planted.txt",
        "--write",
        &format!("{outside_abs}/planted.txt"),
        "--write",
        "/scratch/../planted.txt",
        "--symlink",
        "ok.txt",
        "/data/planted-link",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let extra = format!(
        "  args: {}\n  restartPolicy: Never\n  dirs:\n  - path: /data\n    hostPath: {host}\n    readOnly: true\n  - path: /scratch\n",
        yaml_list(&args)
    );
    place_file(dir.path(), "probe.yaml", &workload_manifest("probe", "fs-probe", "job", &extra));
    let agent = agent_with(dir.path(), &["--allowed-host-paths", host]);
    agent.wait_phase("probe-0", Phase::Succeeded, WAIT);
    let out = logs(&agent, "probe-0");

    // What is granted works, symlinks included: the denials below are the sandbox's.
    assert_eq!(verdict(&out, "/data/ok.txt"), "ok 4 bytes", "{out}");
    assert_eq!(verdict(&out, "/data/inner"), "ok 4 bytes", "a symlink inside the grant is followed: {out}");
    assert_eq!(verdict(&out, "write /scratch/mine.txt"), "ok", "{out}");
    assert_eq!(verdict(&out, "symlink /scratch/link-mine"), "ok", "the guest can create symlinks in its scratch dir: {out}");
    assert_eq!(verdict(&out, "/scratch/link-mine"), "ok 20 bytes", "{out}");

    assert_denied(
        &out,
        &[
            "/data/escape-file",
            "/data/escape-rel",
            "/data/escape-dir",
            "/data/escape-dir/secret.txt",
            &format!("/data/../{outside_name}/secret.txt"),
            "/data/..",
            "/",
            &secret_abs,
            &outside_abs,
            "/scratch/abs",
            "/scratch/up",
            "/scratch/up-dir/secret.txt",
            "/scratch/abs-dir/secret.txt",
            "write /scratch/up",
            "write /scratch/up-dir/planted.txt",
            "write /data/escape-file",
            "write /data/escape-dir/planted.txt",
            &format!("write {outside_abs}/planted.txt"),
            "write /scratch/../planted.txt",
            "symlink /data/planted-link",
        ],
    );
    // Creating a symlink whose target leaves the sandbox may be refused or allowed (following it
    // is what must fail); either way it is reported.
    for link in ["/scratch/abs", "/scratch/up", "/scratch/up-dir", "/scratch/abs-dir"] {
        verdict(&out, &format!("symlink {link}"));
    }

    assert_eq!(std::fs::read(&secret).expect("the secret is still there"), b"top secret", "nothing wrote through a link");
    let planted: Vec<_> = std::fs::read_dir(outside.path()).expect("list").filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(planted, [std::ffi::OsString::from("secret.txt")], "nothing was planted outside the grants");
    assert!(!shared.path().join("planted-link").exists(), "the read-only grant stays untouched");
    assert!(!agent.data_dir.path().join("instances/probe-0/scratch/planted.txt").exists(), "`..` does not leave the scratch dir");
}

#[test]
fn the_agents_environment_does_not_reach_guests() {
    let dir = manifests();
    place_file(
        dir.path(),
        "env.yaml",
        &workload_manifest(
            "env",
            "fs-probe",
            "job",
            "  args: [\"--env\", \"/proc/self/environ\", \"/proc/1/environ\"]\n  env: {ONLY: this}\n  restartPolicy: Never\n",
        ),
    );
    place_file(
        dir.path(),
        "env-component.yaml",
        &workload_manifest("env-component", "hello-component", "job", "  env: {KIND: component}\n  restartPolicy: Never\n"),
    );
    let agent = Agent::start_with_env(&manifests_args(dir.path()), &[("WASMLET_TEST_SECRET", "hunter2")]).expect("agent starts");
    let environ = std::fs::read(format!("/proc/{}/environ", agent.pid())).expect("the agent's environment");
    assert!(
        environ.split(|b| *b == 0).any(|var| var == b"WASMLET_TEST_SECRET=hunter2"),
        "the agent process has the secret, so a leak would show"
    );

    agent.wait_phase("env-0", Phase::Succeeded, WAIT);
    let out = logs(&agent, "env-0");
    assert_eq!(env_lines(&out), ["env ONLY=this"], "a core module sees exactly its manifest's env:\n{out}");
    assert_denied(&out, &["/proc/self/environ", "/proc/1/environ"]);
    assert!(!out.contains("hunter2"), "{out}");

    agent.wait_phase("env-component-0", Phase::Succeeded, WAIT);
    let out = logs(&agent, "env-component-0");
    assert_eq!(env_lines(&out), ["env KIND=component"], "a component sees exactly its manifest's env:\n{out}");
    assert!(!out.contains("hunter2"), "{out}");
}

#[test]
fn the_agents_own_files_are_out_of_reach() {
    let dir = manifests();
    let data = tempfile::Builder::new().prefix("wasmlet-agent-").tempdir().expect("tempdir");
    let root = data.path().to_path_buf();
    let token = root.join("token");
    std::fs::write(&token, b"tok-123").expect("write");
    let token_abs = token.display().to_string();
    let root_abs = root.display().to_string();
    let own_log = root.join("logs/probe-0/current.log").display().to_string();
    let cache = root.join("cache/compiled").display().to_string();
    // The scratch dir is <data>/instances/probe-0/scratch/0: four levels below the data dir.
    let args: Vec<String> = [
        &token_abs,
        &root_abs,
        &own_log,
        &cache,
        "/scratch/../../../../token",
        "/scratch/..",
        "--write",
        "/scratch/mine.txt",
        "/scratch/mine.txt",
        "--symlink",
        "../../../../token",
        "/scratch/token-link",
        "/scratch/token-link",
        "--symlink",
        "../../../..",
        "/scratch/data-link",
        "/scratch/data-link/token",
        "/scratch/data-link",
        "--symlink",
        &token_abs,
        "/scratch/abs-token",
        "/scratch/abs-token",
        "--write",
        "/scratch/token-link",
        "--write",
        "/scratch/data-link/token",
        "--write",
        "/scratch/../../../../token",
        "--write",
        &token_abs,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let extra = format!("  args: {}\n  restartPolicy: Never\n  dirs:\n  - path: /scratch\n", yaml_list(&args));
    place_file(dir.path(), "probe.yaml", &workload_manifest("probe", "fs-probe", "job", &extra));
    let agent = Agent::start_in(data, &manifests_args(dir.path())).expect("agent starts");
    agent.wait_phase("probe-0", Phase::Succeeded, WAIT);
    let out = logs(&agent, "probe-0");
    assert!(Path::new(&own_log).exists() && Path::new(&cache).exists(), "the probed files exist on the host");

    assert_eq!(verdict(&out, "/scratch/mine.txt"), "ok 20 bytes", "{out}");
    assert_denied(
        &out,
        &[
            &token_abs,
            &root_abs,
            &own_log,
            &cache,
            "/scratch/../../../../token",
            "/scratch/..",
            "/scratch/token-link",
            "/scratch/data-link/token",
            "/scratch/data-link",
            "/scratch/abs-token",
            "write /scratch/token-link",
            "write /scratch/data-link/token",
            "write /scratch/../../../../token",
            &format!("write {token_abs}"),
        ],
    );
    assert_eq!(std::fs::read(&token).expect("the token is still there"), b"tok-123");

    // The links the guest planted in the data dir do not trick the agent either: removing the
    // workload deletes the instance's dir without following them.
    let instance_dir = root.join("instances/probe-0");
    let planted = instance_dir.join("scratch/0/data-link");
    if std::fs::symlink_metadata(&planted).is_ok() {
        // Followed on the host, the guest's link leads to the data dir: a clean-up that followed it would delete it.
        assert_eq!(std::fs::canonicalize(&planted).ok(), std::fs::canonicalize(&root).ok(), "{}", planted.display());
    }
    std::fs::remove_file(dir.path().join("probe.yaml")).expect("remove");
    wait_for(WAIT, "the instance's dir to be removed", || (!instance_dir.exists()).then_some(()));
    assert_eq!(std::fs::read(&token).expect("the token survives the clean-up"), b"tok-123");
    assert!(Path::new(&cache).is_dir(), "the module cache survives the clean-up");
}

#[test]
fn guests_cannot_open_sockets() {
    let dir = manifests();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    listener.set_nonblocking(true).expect("non-blocking");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    udp.set_nonblocking(true).expect("non-blocking");
    let tcp_addr = listener.local_addr().expect("addr").to_string();
    let udp_addr = udp.local_addr().expect("addr").to_string();
    let args = [
        tcp_addr.clone(),
        "--udp".into(),
        udp_addr.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--lookup".into(),
        "localhost".into(),
    ];
    let extra = format!("  args: {}\n  restartPolicy: Never\n", yaml_list(&args));
    place_file(dir.path(), "net.yaml", &workload_manifest("net", "net-probe", "job", &extra));
    let agent = agent_with(dir.path(), &[]);
    agent.wait_phase("net-0", Phase::Succeeded, WAIT);
    let out = logs(&agent, "net-0");
    assert_denied(&out, &[&format!("tcp {tcp_addr}"), &format!("udp {udp_addr}"), "listen 127.0.0.1:0", "lookup localhost"]);

    // The job has ended: a connection it made would be queued, a datagram it sent buffered.
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("a guest connected to the test's listener from {peer}:\n{out}"),
        Err(e) => panic!("accept: {e}"),
    }
    let mut buf = [0u8; 64];
    match udp.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((n, peer)) => panic!("a guest sent {n} bytes over UDP from {peer}:\n{out}"),
        Err(e) => panic!("recv: {e}"),
    }
}

/// Checks that the agent's API answers within [`API_BOUND`] and that it is Ready.
fn assert_api_answers(agent: &Agent) {
    let started = Instant::now();
    assert_eq!(agent.get_text("/healthz").expect("healthz").trim(), "ok");
    let node: wasmlet_api::Node = agent.get_json("/status").expect("status");
    let took = started.elapsed();
    assert!(took < API_BOUND, "/healthz and /status took {took:?} next to the hogs");
    let ready = node.condition(wasmlet_api::ConditionType::Ready).map(|c| c.status);
    assert_eq!(ready, Some(wasmlet_api::ConditionStatus::True), "{:?}", node.status.conditions);
}

/// The agent's peak resident memory since it started (`VmHWM`): unlike samples of
/// [`rss_bytes`], it cannot miss a short spike.
fn peak_rss_bytes(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("the agent's /proc status");
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.split_whitespace().next()?.parse::<u64>().ok());
    let peak = kib.expect("VmHWM in /proc/PID/status") << 10;
    peak.max(rss_bytes(agent.pid()).expect("the agent's RSS"))
}

fn ended(agent: &Agent, name: &str) -> Option<wasmlet_api::Instance> {
    agent.instance(name).filter(|i| matches!(i.status.phase, Phase::Succeeded | Phase::Failed))
}

#[test]
fn memory_and_cpu_hogs_leave_the_agent_and_other_workloads_responsive() {
    let dir = manifests();
    place_file(dir.path(), "memhog.yaml", &workload_manifest("memhog", "memhog", "daemon", "  resources:\n    limits: {memory: 64Mi}\n"));
    // Two spinners without a CPU limit keep both cores busy for as long as they run.
    place_file(dir.path(), "spin.yaml", &workload_manifest("spin", "spin", "daemon", "  replicas: 2\n"));
    let agent = agent_with(dir.path(), &["--restart-backoff-max", "1s"]);
    agent.wait_phase("spin-0", Phase::Running, WAIT);
    agent.wait_phase("spin-1", Phase::Running, WAIT);
    let memhog = wait_for(WAIT, "memhog to hit its limit twice", || {
        agent
            .instance("memhog-0")
            .filter(|i| i.status.restarts >= 2 && i.status.last_termination.as_ref().is_some_and(|t| t.reason == "MemoryLimitExceeded"))
    });
    assert!(memhog.status.last_termination.is_some_and(|t| t.message.contains("64Mi")));
    assert_api_answers(&agent);

    // Another workload still gets to run to completion next to them.
    place_file(dir.path(), "hello.yaml", &workload_manifest("hello", "hello", "job", "  restartPolicy: Never\n"));
    let hello = wait_for(WAIT, "hello to finish", || ended(&agent, "hello-0"));
    assert_eq!(hello.status.phase, Phase::Succeeded, "{:?}", hello.status);
    assert!(logs(&agent, "hello-0").contains("hello from wasmlet"));
    assert_api_answers(&agent);

    let peak = peak_rss_bytes(&agent);
    eprintln!("agent RSS peak next to the hogs: {} MiB", peak >> 20);
    assert!(peak < RSS_BOUND, "the agent's RSS reached {} MiB", peak >> 20);
    for spin in ["spin-0", "spin-1"] {
        let spin = agent.instance(spin).expect("spin");
        assert_eq!((spin.status.phase, spin.status.restarts), (Phase::Running, 0), "the spinners kept running");
    }
}

#[test]
fn a_memory_hog_without_a_limit_is_held_by_the_agents_cap() {
    let dir = manifests();
    place_file(dir.path(), "memhog.yaml", &workload_manifest("memhog", "memhog", "job", "  restartPolicy: Never\n"));
    // A default above the cap: the pool's slot, not the instance's limiter, refuses the growth.
    let agent = agent_with(dir.path(), &["--max-instance-memory", "128Mi", "--default-memory-limit", "1Gi"]);
    let memhog = wait_for(WAIT, "memhog to end", || ended(&agent, "memhog-0"));
    assert_eq!(memhog.status.phase, Phase::Failed);
    assert_eq!(memhog.status.reason.as_deref(), Some("MemoryLimitExceeded"), "{:?}", memhog.status);
    let out = logs(&agent, "memhog-0");
    assert!(out.contains("allocated 64 MiB") && !out.contains("allocated 128 MiB"), "it grew up to the cap, not beyond:\n{out}");
    let peak = peak_rss_bytes(&agent);
    eprintln!("agent RSS peak with an unlimited memhog under --max-instance-memory 128Mi: {} MiB", peak >> 20);
    assert!(peak < RSS_BOUND, "the agent's RSS reached {} MiB", peak >> 20);
    assert_api_answers(&agent);
}

/// The same with the agent's default settings: a workload without `limits.memory` gets
/// `--default-memory-limit` (128Mi). memhog would stop at 400 MiB (and hold it) if nothing held it back.
#[test]
fn with_default_settings_a_memory_hog_without_a_limit_stays_bounded() {
    let dir = manifests();
    place_file(
        dir.path(),
        "memhog.yaml",
        &workload_manifest("memhog", "memhog", "job", "  args: [\"--max-mib\", \"400\"]\n  restartPolicy: Never\n"),
    );
    let agent = agent_with(dir.path(), &[]);
    let memhog = wait_for(WAIT, "memhog to end or hold 400 MiB", || {
        let memhog = agent.instance("memhog-0")?;
        let holding = memhog.status.phase == Phase::Running && logs(&agent, "memhog-0").contains("holding 400 MiB");
        (holding || matches!(memhog.status.phase, Phase::Succeeded | Phase::Failed)).then_some(memhog)
    });
    let peak = peak_rss_bytes(&agent);
    eprintln!("agent RSS peak with an unlimited memhog and default settings: {} MiB", peak >> 20);
    assert!(peak < RSS_BOUND, "the agent's RSS reached {} MiB; memhog: {:?}", peak >> 20, memhog.status);
    assert_eq!(memhog.status.phase, Phase::Failed);
    assert_eq!(memhog.status.reason.as_deref(), Some("MemoryLimitExceeded"), "{:?}", memhog.status);
    assert!(memhog.status.message.unwrap_or_default().contains("128Mi"), "the message names the default limit");
}
