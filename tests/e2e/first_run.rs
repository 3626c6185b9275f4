//! What a new user meets first, tried as they would: the CLI's config file
//! beside the daemons' in one shell, `wasmlet config set-context` on a fresh
//! machine, `make run`'s join command for other machines, and a WASI 0.3
//! component refused in words.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use wasmlet_api::{Event, Phase};
use wasmlet_tests::{Agent, Master, bin, place_file, run_to_exit, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// `wasmlet ARGS` with exactly the environment variables `env` of the config ones.
fn wasmlet(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(bin("wasmlet"));
    command.args(args).env_remove("WASMLETCONFIG").env_remove("WASMLET_CONFIG").env_remove("WASMLET_MASTER").env_remove("WASMLET_TOKEN");
    command.env_remove("WASMLET_CA").env("NO_COLOR", "1");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("wasmlet runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// One shell with both variables set: the CLI's contexts in `WASMLETCONFIG`,
/// an agent's settings in `WASMLET_CONFIG`. The CLI creates and reads its
/// file, and the agent started in the same shell reads its own and joins.
#[test]
fn the_cli_and_an_agent_in_one_shell_each_read_their_own_file() {
    let master = Master::start(&[]).expect("master starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let cli_config = dir.path().join("new/dirs/wasmlet.toml");
    let settings = dir.path().join("agent.toml");
    std::fs::write(&settings, "name = \"from-its-settings\"\nsample-interval = \"500ms\"\n").expect("write settings");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &master.ca_pem).expect("write the CA");
    let shell: [(&str, &Path); 2] = [("WASMLETCONFIG", &cli_config), ("WASMLET_CONFIG", &settings)];

    let ca_arg = ca.to_str().expect("utf-8");
    let set = wasmlet(
        &["config", "set-context", "lab", "--master", &master.url, "--token", &master.admin_token, "--certificate-authority", ca_arg],
        &shell,
    );
    assert!(set.status.success(), "set-context creates the file and its directories: {}", text(&set.stderr));
    assert!(text(&set.stdout).contains("Context \"lab\" created"), "{}", text(&set.stdout));
    assert_eq!(mode(&cli_config), 0o600, "it holds a token");

    let agent = Agent::start_with_env(
        &["--master", &master.url, "--join-token", &master.join_token],
        &[("WASMLETCONFIG", cli_config.to_str().expect("utf-8")), ("WASMLET_CONFIG", settings.to_str().expect("utf-8"))],
    )
    .expect("an agent with the CLI's variable set starts");
    wait_for(WAIT, "the node named by the agent's settings file to be Ready", || {
        master.nodes().into_iter().any(|n| n.metadata.name == "from-its-settings" && n.is_ready()).then_some(())
    });
    let nodes = wasmlet(&["get", "nodes"], &shell);
    assert!(nodes.status.success(), "the CLI reads WASMLETCONFIG, not the agent's settings: {}", text(&nodes.stderr));
    assert!(text(&nodes.stdout).contains("from-its-settings"), "{}", text(&nodes.stdout));
    drop(agent);
}

/// A daemon pointed at the CLI's contexts file says what the file is and
/// which variable the CLI reads, instead of "unknown key".
#[test]
fn a_daemon_given_the_cli_contexts_file_names_it_and_the_cli_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let contexts = dir.path().join("config.toml");
    std::fs::write(&contexts, "current-context = \"lab\"\n\n[[contexts]]\nname = \"lab\"\nmaster = \"https://10.0.0.5:7070\"\n")
        .expect("write");
    for daemon in ["wasmlet-agent", "wasmlet-master"] {
        let mut command = Command::new(bin(daemon));
        command.arg("--data-dir").arg(dir.path().join(daemon)).env("WASMLET_CONFIG", &contexts).env_remove("WASMLETCONFIG");
        let exit = run_to_exit(command, WAIT).expect("the daemon exits");
        assert!(!exit.status.success(), "{daemon}: {}", exit.stderr);
        assert!(
            exit.stderr.contains("this is the wasmlet CLI's contexts file")
                && exit.stderr.contains("WASMLETCONFIG")
                && exit.stderr.contains(contexts.to_str().expect("utf-8")),
            "{daemon}: {}",
            exit.stderr
        );
    }
}

/// A user who still names the CLI's file with `WASMLET_CONFIG` is told the
/// variable to use when the CLI finds no file of its own; not otherwise.
#[test]
fn the_cli_hints_at_wasmletconfig_when_wasmlet_config_still_names_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old-cli.toml");
    std::fs::write(&old, "current-context = \"lab\"\n\n[[contexts]]\nname = \"lab\"\nmaster = \"https://10.0.0.5:7070\"\n").expect("write");
    let home = dir.path().join("config-home");
    let out = wasmlet(&["config", "get-contexts"], &[("WASMLET_CONFIG", &old), ("XDG_CONFIG_HOME", &home)]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("export WASMLETCONFIG={}", old.display())), "{stderr}");
    assert!(stderr.contains(&home.join("wasmlet/config.toml").display().to_string()), "{stderr}");
    assert!(!text(&out.stdout).contains("lab"), "the CLI no longer reads WASMLET_CONFIG: {}", text(&out.stdout));

    let out = wasmlet(&["config", "get-contexts"], &[("WASMLET_CONFIG", &old), ("WASMLETCONFIG", &old)]);
    assert!(out.status.success() && text(&out.stdout).contains("lab"), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("hint"), "{}", text(&out.stderr));
}

/// An existing config file keeps its mode, its other contexts and its current
/// context when `set-context` changes one.
#[test]
fn set_context_changes_an_existing_file_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    let before = "current-context = \"home\"\n\n[[contexts]]\nname = \"home\"\nmaster = \"https://10.0.0.1:7070\"\ntoken = \"kept\"\n\n\
                  [[contexts]]\nname = \"lab\"\nmaster = \"https://10.0.0.5:7070\"\n";
    std::fs::write(&path, before).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = wasmlet(&["config", "set-context", "lab", "--master", "https://10.0.0.6:7070"], &[("WASMLETCONFIG", &path)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Context \"lab\" modified"), "{}", text(&out.stdout));
    assert_eq!(mode(&path), 0o640, "the file keeps its mode");
    let after = std::fs::read_to_string(&path).expect("read");
    assert_eq!(after, before.replace("10.0.0.5", "10.0.0.6"), "only the change");
    assert!(!path.with_extension("toml.tmp").exists());
}

/// `WASMLETCONFIG=wasmlet.toml`: a file in the current directory, which does
/// not exist yet, is created, private like any new one.
#[test]
fn set_context_creates_a_file_named_without_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin("wasmlet"))
        .args(["config", "set-context", "lab", "--master", "https://10.0.0.5:7070"])
        .env("WASMLETCONFIG", "wasmlet.toml")
        .env_remove("WASMLET_CONFIG")
        .current_dir(dir.path())
        .output()
        .expect("wasmlet runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = dir.path().join("wasmlet.toml");
    assert_eq!(mode(&path), 0o600);
    assert!(std::fs::read_to_string(&path).expect("read").contains("https://10.0.0.5:7070"));
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

/// What `make run` prints for other machines, from its script's own logic,
/// for the master whose data dir is `data_dir` listening on `listen`.
fn join_command(data_dir: &Path, listen: &str) -> String {
    let out = Command::new("bash")
        .arg(scripts().join("join-command.sh"))
        .arg(wasmlet_tests::bin_dir())
        .arg(data_dir)
        .arg(listen)
        .env_remove("WASMLET_CONFIG")
        .output()
        .expect("join-command.sh runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// `make run` on loopback says plainly that no other machine can join and
/// what to change; `make run LISTEN=0.0.0.0` reaches the master's listener,
/// and the join command it prints then works from another address of this
/// machine: the master's certificate names it, and an agent joins by it.
#[test]
fn make_run_prints_a_join_command_that_works_or_says_why_none_does() {
    let makefile = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let planned = Command::new("make").args(["-n", "run", "LISTEN=0.0.0.0"]).current_dir(&makefile).output().expect("make runs");
    let planned = text(&planned.stdout);
    assert!(planned.contains("WASMLET_RUN_LISTEN=0.0.0.0 bash scripts/run-local.sh"), "{planned}");
    let script = std::fs::read_to_string(scripts().join("run-local.sh")).expect("run-local.sh");
    assert!(
        script.contains("--listen \"$listen_addr\"") && script.contains("join-command.sh\" \"$bin\" \"$run/master\" \"$listen_addr\""),
        "{script}"
    );

    let master = Master::start_on("0.0.0.0", &[]).expect("a master on all interfaces");
    let dir = master.data_dir.path();
    let port = master.port();
    for loopback in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let said = join_command(dir, &loopback);
        assert!(
            said.contains("Other machines cannot join: this master is at ") && said.contains("which only this machine reaches"),
            "{said}"
        );
        assert!(said.contains("make run LISTEN=0.0.0.0") && !said.contains("wasmlet-agent --master"), "{said}");
    }
    let said = join_command(dir, "10.1.2.3:7070");
    assert!(said.contains(&format!("wasmlet-agent --master https://10.1.2.3:7070 --join-token {}", master.join_token)), "{said}");

    let said = join_command(dir, &format!("0.0.0.0:{port}"));
    let line = said.lines().find_map(|l| l.trim().strip_prefix("wasmlet-agent ")).unwrap_or_else(|| panic!("a join command: {said}"));
    let args: Vec<&str> = line.split_whitespace().collect();
    let url = args.windows(2).find(|w| w[0] == "--master").map(|w| w[1]).expect("--master URL");
    assert!(!url.contains("127.0.0.1"), "an address other machines reach: {url}");
    let mut joining = args.clone();
    joining.extend(["--name", "by-its-address"]);
    let agent = Agent::start(&joining).expect("the printed command starts an agent");
    wait_for(WAIT, "the agent that joined by the printed address to be Ready", || {
        master.nodes().into_iter().any(|n| n.metadata.name == "by-its-address" && n.is_ready()).then_some(())
    });
    drop(agent);
}

/// The smallest WASI 0.3 component: it uses `task.return`, an async builtin
/// of the component model that WASI 0.3 programs are built on.
const WASI_P3_COMPONENT: &str = "(component (core func (canon task.return)))";

/// A WASI 0.3 component is refused in words, in the instance's status, an
/// event and the instance's log, where wasmtime's parser message said only
/// "`task.return` requires the component model async feature".
#[test]
fn a_wasi_p3_component_is_refused_as_not_supported_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = wat::parse_str(WASI_P3_COMPONENT).expect("the component's text");
    std::fs::write(dir.path().join("p3.wasm"), &wasm).expect("write module");
    let digest = wasmlet_tests::sha256(&wasm);
    let manifest = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: p3\nspec:\n  type: job\n  module:\n    source: p3.wasm\n    digest: {digest}\n"
    );
    place_file(dir.path(), "p3.yaml", &manifest);
    let agent = Agent::start(&["--manifests-dir", dir.path().to_str().expect("utf-8"), "--manifests-poll-interval", "100ms"])
        .expect("agent starts");
    let instance = agent.wait_phase("p3-0", Phase::Failed, WAIT);
    let said = "this is a WASI 0.3 (p3) component";
    let not_yet = "wasmlet does not run WASI 0.3 components yet";
    assert_eq!(instance.status.reason.as_deref(), Some("InvalidModule"));
    let message = instance.status.message.unwrap_or_default();
    assert!(message.contains(said) && message.contains(not_yet) && message.contains("wasm32-wasip2"), "{message}");
    let events: Vec<Event> = agent.get_json("/events").expect("events");
    assert!(events.iter().any(|e| e.reason == "FailedToLoad" && e.message.contains(said) && e.message.contains(not_yet)), "{events:?}");
    let log = agent.get_text("/instances/p3-0/logs").expect("logs");
    assert!(log.contains(&format!("[wasmlet] module {digest} cannot run")) && log.contains(said), "{log}");
}
