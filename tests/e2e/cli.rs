//! The `wasmlet` command line against a real master and agents: what people
//! read (`get`, `describe`) shows the real machine, `apply` reports
//! created/unchanged/configured, failures exit non-zero with the reason.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use wasmlet_api::protocol::List;
use wasmlet_api::{Instance, Node, Phase, Workload};
use wasmlet_tests::{Agent, Master, bin, example, free_port, sha256, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Runs `wasmlet args…` against `master`, with a config file of its own naming
/// it with its CA and admin token (so the user's never matters).
pub fn wasmlet(master: &Master, args: &[&str]) -> Output {
    let config = master.cli_config(master.data_dir.path());
    cli().args(args).env("WASMLETCONFIG", config).output().expect("wasmlet runs")
}

/// Runs `wasmlet --master URL args…` with an empty config file.
fn wasmlet_at(url: &str, args: &[&str]) -> Output {
    let config = std::env::temp_dir().join(format!("wasmlet-cli-test-{}/config.toml", std::process::id()));
    cli().arg("--master").arg(url).args(args).env("WASMLETCONFIG", config).output().expect("wasmlet runs")
}

fn cli() -> Command {
    let mut command = Command::new(bin("wasmlet"));
    command.env("NO_COLOR", "1").env_remove("WASMLET_MASTER").env_remove("WASMLET_TOKEN").env_remove("WASMLET_CA").stdin(Stdio::null());
    command
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and insists on success, returning stdout.
fn ok(master: &Master, args: &[&str]) -> String {
    let o = wasmlet(master, args);
    assert!(o.status.success(), "wasmlet {args:?} failed: {}\n{}", stderr(&o), stdout(&o));
    stdout(&o)
}

fn join(master: &Master, name: &str) -> Agent {
    Agent::start(&[
        "--master",
        master.url.as_str(),
        "--join-token",
        master.join_token.as_str(),
        "--name",
        name,
        "--sample-interval",
        "500ms",
    ])
    .expect("agent starts")
}

fn wait_ready(master: &Master, count: usize) {
    wait_for(WAIT, &format!("{count} Ready nodes"), || (master.nodes().iter().filter(|n| n.is_ready()).count() == count).then_some(()));
}

/// A sensor manifest in `dir` whose module is a copy next to it (a relative `source`).
fn sensor_manifest(dir: &Path, name: &str, extra: &str) -> String {
    let (path, digest) = example("sensor");
    std::fs::copy(&path, dir.join("sensor.wasm")).expect("copy sensor.wasm");
    let text = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  type: daemon\n  module:\n    source: sensor.wasm\n    digest: {digest}\n  args: [\"--interval\", \"200\"]\n{extra}"
    );
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, text).expect("write manifest");
    file.display().to_string()
}

#[test]
fn get_and_describe_show_the_real_node() {
    let master = Master::start(&[]).expect("master starts");
    let _agent = join(&master, "cli-node");
    wait_ready(&master, 1);
    let kernel = String::from_utf8_lossy(&Command::new("uname").arg("-r").output().expect("uname").stdout).trim().to_string();
    let node: Node = master.get_json("/nodes/cli-node").expect("the node");

    let table = ok(&master, &["get", "nodes"]);
    let mut lines = table.lines();
    assert_eq!(lines.next().map(|h| h.split_whitespace().collect::<Vec<_>>()), Some(vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"]));
    let row = lines.next().expect("a row");
    assert!(row.starts_with("cli-node") && row.contains(" Ready ") && row.contains(&node.status.node_info.agent_version), "{table}");

    let wide = ok(&master, &["get", "nodes", "-o", "wide"]);
    assert!(wide.contains(&kernel) && wide.contains(&node.status.node_info.os_image), "{wide}");
    assert!(wide.contains(&format!("wasmtime/{}", node.status.node_info.runtime_version)), "{wide}");

    let page = ok(&master, &["describe", "node", "cli-node"]);
    for expected in [
        "Name:               cli-node".to_string(),
        format!("Kernel Version:    {kernel}"),
        format!("OS Image:          {}", node.status.node_info.os_image),
        format!("  cpu:                {}", node.status.capacity.cpu),
        format!("  memory:             {}", node.status.capacity.memory),
        "HolderIdentity:  cli-node".to_string(),
        "Allocated resources:".to_string(),
    ] {
        assert!(page.contains(&expected), "`{expected}` missing from:\n{page}");
    }
    let conditions: Vec<&str> = page.lines().skip_while(|l| *l != "Conditions:").skip(3).take_while(|l| l.starts_with("  ")).collect();
    assert!(conditions.iter().any(|l| l.trim_start().starts_with("Ready") && l.contains("True")), "{page}");
    assert!(conditions.iter().any(|l| l.trim_start().starts_with("MemoryPressure")), "{page}");

    let list: List<Node> = serde_json::from_str(&ok(&master, &["get", "nodes", "-o", "json"])).expect("-o json is a List<Node>");
    assert_eq!(list.items[0].metadata.name, "cli-node");
    let one: Node = serde_json::from_str(&ok(&master, &["get", "node", "cli-node", "-o", "json"])).expect("-o json is a Node");
    assert_eq!(one.status.node_info.kernel_version, kernel);
    assert_eq!(ok(&master, &["get", "nodes", "-o", "name"]), "node/cli-node\n");
    assert_eq!(ok(&master, &["get", "nodes", "-l", "no-such-label", "-o", "name"]), "");

    let missing = wasmlet(&master, &["describe", "node", "nope"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("node `nope` does not exist"), "{}", stderr(&missing));

    let top = ok(&master, &["top", "nodes"]);
    assert!(top.contains("cli-node"), "{top}");
}

#[test]
fn apply_reports_created_unchanged_configured_and_waits() {
    let master = Master::start(&[]).expect("master starts");
    let _agent = join(&master, "cli-apply");
    wait_ready(&master, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = sensor_manifest(dir.path(), "sensor", "");

    assert_eq!(ok(&master, &["apply", "-f", &file]), "workload/sensor created\n");
    assert_eq!(ok(&master, &["apply", "-f", &file]), "workload/sensor unchanged\n");
    let edited = std::fs::read_to_string(&file).expect("manifest").replace("\"200\"", "\"300\"");
    std::fs::write(&file, edited).expect("edit");
    let o = wasmlet(&master, &["apply", "-f", &file, "--wait", "--timeout", "60s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "workload/sensor configured\n");
    assert!(stderr(&o).contains("workload/sensor: 1/1 running"), "{}", stderr(&o));

    let list: List<Workload> = serde_json::from_str(&ok(&master, &["get", "workloads", "-o", "json"])).expect("List<Workload>");
    assert_eq!(list.items[0].spec.args, ["--interval", "300"]);
    let instances: List<Instance> = serde_json::from_str(&ok(&master, &["get", "instances", "-o", "json"])).expect("List<Instance>");
    assert!(instances.items.iter().any(|i| i.spec.workload == "sensor"));
    let table = ok(&master, &["get", "workloads"]);
    assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("sensor") && l.contains("daemon")), "{table}");
    let page = ok(&master, &["describe", "workload", "sensor"]);
    assert!(page.contains("Module:             sensor.wasm") && page.contains("Instances:"), "{page}");
    let events = ok(&master, &["events", "--for", "workload/sensor"]);
    assert!(events.contains("Created") && events.contains("workload/sensor"), "{events}");

    assert_eq!(ok(&master, &["delete", "-f", &file]), "workload/sensor deleted\n");
    let again = wasmlet(&master, &["delete", "workload", "sensor"]);
    assert!(!again.status.success() && stderr(&again).contains("does not exist"), "{}", stderr(&again));
}

#[test]
fn apply_wait_of_a_bad_module_fails_with_the_reason() {
    let master = Master::start(&[]).expect("master starts");
    let _agent = join(&master, "cli-bad");
    wait_ready(&master, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = b"this is not WebAssembly\n";
    std::fs::write(dir.path().join("broken.wasm"), text).expect("write module");
    let file = dir.path().join("broken.yaml");
    let manifest = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: broken\nspec:\n  type: daemon\n  restartPolicy: Never\n  module:\n    source: broken.wasm\n    digest: {}\n",
        sha256(text)
    );
    std::fs::write(&file, manifest).expect("write manifest");
    let o = wasmlet(&master, &["apply", "-f", &file.display().to_string(), "--wait", "--timeout", "60s"]);
    assert!(!o.status.success(), "{}", stdout(&o));
    // The master checks the module at upload: nothing is created, and the reason names the file.
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert!(err.contains("broken.wasm") && err.contains("not valid WebAssembly") && err.contains("`\\0asm` magic"), "{err}");
    assert!(master.get_json::<Workload>("/workloads/broken").is_err(), "not created");
}

#[test]
fn a_master_whose_certificate_is_not_trusted_is_refused_with_what_to_do() {
    let master = Master::start(&[]).expect("master starts");
    let o = wasmlet_at(&master.url, &["get", "nodes"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("certificate authority") && err.contains("client-config"), "{err}");
    // With the config `wasmlet-master client-config` prints, it works.
    let config = master.command(&["client-config", "--server", &master.url]);
    assert!(config.status.success(), "{}", String::from_utf8_lossy(&config.stderr));
    let path = master.data_dir.path().join("printed.toml");
    std::fs::write(&path, &config.stdout).expect("write");
    let o = cli().args(["version"]).env("WASMLETCONFIG", &path).output().expect("wasmlet runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli().args(["get", "nodes"]).env("WASMLETCONFIG", &path).output().expect("wasmlet runs");
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn bad_manifests_and_an_unreachable_master_fail_in_one_line() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let o = wasmlet_at(&nowhere, &["get", "nodes"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("error: cannot reach the master at {nowhere}: ")), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let good = sensor_manifest(dir.path(), "one", "");
    let text = std::fs::read_to_string(&good).expect("manifest");
    let file = dir.path().join("two.yaml");
    std::fs::write(
        &file,
        format!("{text}---\n{}", text.replace("name: one", "name: two").replace("  type: daemon\n", "  type: daemon\n  replicas: many\n")),
    )
    .expect("write");
    // The manifest is checked before any request: the unreachable master is never asked.
    let o = wasmlet_at(&nowhere, &["apply", "-f", &file.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with(&format!("error: {}: document 2: spec.replicas: ", file.display())), "{err}");

    // A kernel CPU limit without process isolation is refused before any request too, saying what to set.
    let capped = sensor_manifest(dir.path(), "capped", "  resources:\n    limits: {cpu: 200m}\n");
    let o = wasmlet_at(&nowhere, &["apply", "-f", &capped]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("spec.resources.limits.cpu: is enforced only in process isolation") && err.contains("set `isolation: process`"),
        "{err}"
    );
}

#[test]
fn drain_moves_every_instance_and_reports_it() {
    let master = Master::start(&[]).expect("master starts");
    let _a = join(&master, "drain-a");
    let _b = join(&master, "drain-b");
    wait_ready(&master, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = sensor_manifest(dir.path(), "sensor", "  replicas: 2\n");
    ok(&master, &["apply", "-f", &file, "--wait", "--timeout", "60s"]);
    let on_a: Vec<String> = master
        .instances()
        .into_iter()
        .filter(|i| i.spec.node == "drain-a" && i.status.phase == Phase::Running)
        .map(|i| i.metadata.name)
        .collect();
    assert!(!on_a.is_empty(), "replicas spread over both nodes");

    let report = ok(&master, &["drain", "drain-a", "--timeout", "60s"]);
    for name in &on_a {
        assert!(report.contains(&format!("instance/{name} (workload/sensor) moved")), "{report}");
    }
    assert!(report.contains(&format!("node/drain-a drained: {} instance(s) moved", on_a.len())), "{report}");
    assert!(master.instances().iter().all(|i| i.spec.node != "drain-a"), "nothing is left on drain-a");
    let nodes = ok(&master, &["get", "nodes"]);
    assert!(nodes.lines().any(|l| l.starts_with("drain-a") && l.contains("SchedulingDisabled")), "{nodes}");
    assert_eq!(ok(&master, &["uncordon", "drain-a"]), "node/drain-a uncordoned\n");
}

/// Needs the master's log proxy (`GET /instances/{name}/logs`) and live endpoints.
#[test]
fn logs_follow_streams_sensor_lines_and_top_shows_instances() {
    let master = Master::start(&[]).expect("master starts");
    let mut agent = join(&master, "cli-logs");
    wait_ready(&master, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = sensor_manifest(dir.path(), "sensor", "");
    ok(&master, &["apply", "-f", &file, "--wait", "--timeout", "60s"]);

    let mut follow = Command::new(bin("wasmlet"));
    follow
        .args(["logs", "workload/sensor", "-f", "--tail", "1"])
        .env("WASMLETCONFIG", master.cli_config(master.data_dir.path()))
        .env("NO_COLOR", "1");
    let seqs = wasmlet_tests::followed_sensor_seqs(follow, 3);
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "lines arrive in order while following: {seqs:?}");

    let top = ok(&master, &["top", "instances"]);
    assert!(top.lines().any(|l| l.contains("sensor") && l.contains("cli-logs")), "{top}");

    // describe instance shows the usage the agent has now; without the agent, the last reported, saying so.
    let name = master.instances().into_iter().find(|i| i.spec.workload == "sensor").expect("the sensor instance").metadata.name;
    let live = wasmlet(&master, &["describe", "instance", &name]);
    assert!(live.status.success() && stderr(&live).is_empty(), "{}", stderr(&live));
    assert!(stdout(&live).contains("\nUsage:\n") && stdout(&live).contains("  cpu:"), "{}", stdout(&live));
    agent.kill();
    let stored = wasmlet(&master, &["describe", "instance", &name]);
    assert!(stored.status.success(), "{}", stderr(&stored));
    assert!(stderr(&stored).contains(&format!("instance/{name}: no live usage")), "{}", stderr(&stored));
    assert!(stderr(&stored).contains("showing its last reported usage"), "{}", stderr(&stored));
    assert!(stdout(&stored).contains(&format!("Name:               {name}")), "{}", stdout(&stored));
}
