//! `packaging/install.sh`, which joins a Debian/Ubuntu machine to a cluster as
//! a node, run end to end against a real master without touching this machine:
//! every path it uses lies under `WASMLET_INSTALL_ROOT` (a temp dir), and shims
//! first on PATH stand in for dpkg, dpkg-query, apt-get, systemctl and
//! journalctl. The systemctl shim runs the real `wasmlet-agent` in the
//! background with the variables of `/etc/default/wasmlet-agent`, as the unit
//! does; dpkg-deb and curl are the real ones, and the package is a tiny real
//! `.deb`. Every agent a shim started is killed when the test ends, also when
//! it fails.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use wasmlet_tests::Master;

/// `systemctl` for wasmlet-agent only: a background process of this root,
/// its pid in `shim/agent.pid` (and every pid ever started in `shim/pids`),
/// its stderr in `shim/agent.log`. Every call is recorded in `shim/calls`.
const SYSTEMCTL: &str = r#"#!/usr/bin/env bash
set -u
state=$WASMLET_INSTALL_ROOT/shim
mkdir -p "$state"
echo "systemctl $*" >>"$state/calls"
pid_file=$state/agent.pid
running() {
    local pid
    pid=$(cat "$pid_file" 2>/dev/null) && [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ]
}
start() {
    running && return 0
    (
        set -a
        if [ -r "$WASMLET_INSTALL_ROOT/etc/default/wasmlet-agent" ]; then . "$WASMLET_INSTALL_ROOT/etc/default/wasmlet-agent"; fi
        set +a
        mkdir -p "$WASMLET_INSTALL_ROOT/var/lib/wasmlet"
        exec env -u RUST_LOG "@AGENT@" --data-dir "$WASMLET_INSTALL_ROOT/var/lib/wasmlet" \
            --api-addr 127.0.0.1:0 --ingress-addr 127.0.0.1:0 --pool-instances 64 </dev/null >>"$state/agent.log" 2>&1
    ) &
    echo $! >"$pid_file"
    echo $! >>"$state/pids"
}
stop() {
    running || return 0
    local pid
    pid=$(cat "$pid_file")
    kill -TERM "$pid"
    for _ in $(seq 100); do running || break; sleep 0.1; done
    if running; then kill -KILL "$pid"; fi
    rm -f "$pid_file"
}
quiet=""
args=()
for a in "$@"; do
    case $a in
        --quiet | -q) quiet=yes ;;
        -* | *=*) ;;
        *) args+=("$a") ;;
    esac
done
case ${args[0]:-} in
    enable) touch "$state/enabled" ;;
    is-enabled) [ -e "$state/enabled" ] || { [ -n "$quiet" ] || echo disabled; exit 1; }; [ -n "$quiet" ] || echo enabled ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    is-active) if running; then [ -n "$quiet" ] || echo active; else [ -n "$quiet" ] || echo inactive; exit 3; fi ;;
    show) ;;
    status)
        echo "* wasmlet-agent.service - wasmlet node agent (test shim)"
        if running; then
            echo "     Active: active (running)"
            echo "   Main PID: $(cat "$pid_file") (wasmlet-agent)"
        else
            echo "     Active: inactive (dead)"
            exit 3
        fi
        ;;
    *) echo "systemctl shim: not supported: $*" >&2; exit 1 ;;
esac
"#;

/// `journalctl`: the agent's log of this root, the last 50 lines, whatever the options.
const JOURNALCTL: &str = r#"#!/usr/bin/env bash
tail -n 50 "$WASMLET_INSTALL_ROOT/shim/agent.log" 2>/dev/null
exit 0
"#;

/// `dpkg`: `-i FILE` records FILE's version as installed; anything else is the real dpkg.
const DPKG: &str = r#"#!/usr/bin/env bash
set -eu
for a in "$@"; do
    if [ "$a" = -i ]; then
        mkdir -p "$WASMLET_INSTALL_ROOT/shim"
        echo "dpkg $*" >>"$WASMLET_INSTALL_ROOT/shim/calls"
        dpkg-deb -f "${!#}" Version >"$WASMLET_INSTALL_ROOT/shim/installed-version"
        exit 0
    fi
done
exec "@DPKG@" "$@"
"#;

/// `apt-get install ... FILE.deb`: records the call and FILE's version as installed.
const APT_GET: &str = r#"#!/usr/bin/env bash
set -eu
mkdir -p "$WASMLET_INSTALL_ROOT/shim"
echo "apt-get $*" >>"$WASMLET_INSTALL_ROOT/shim/calls"
for a in "$@"; do
    case $a in
        *.deb) dpkg-deb -f "$a" Version >"$WASMLET_INSTALL_ROOT/shim/installed-version" ;;
    esac
done
"#;

/// `dpkg-query -W -f=FORMAT wasmlet-agent`: the recorded version, or not installed.
const DPKG_QUERY: &str = r#"#!/usr/bin/env bash
set -eu
format='${Version}'
previous=""
for a in "$@"; do
    case $a in
        -f=* | --showformat=*) format=${a#*=} ;;
    esac
    if [ "$previous" = -f ] || [ "$previous" = --showformat ]; then format=$a; fi
    previous=$a
done
version=$(cat "$WASMLET_INSTALL_ROOT/shim/installed-version" 2>/dev/null) || {
    echo "dpkg-query: no packages found matching wasmlet-agent" >&2
    exit 1
}
format=${format//'${db:Status-Status}'/installed}
printf '%s' "${format//'${Version}'/$version}"
"#;

/// A fake machine's workshop: the shims, the script next to a package (as
/// shipped), and one `WASMLET_INSTALL_ROOT` per machine. Dropping it kills
/// every agent the shims started.
struct Bench {
    dir: tempfile::TempDir,
    arch: String,
}

impl Bench {
    /// None where this is not a Debian-like amd64/arm64 machine with dpkg-deb.
    fn new() -> Option<Bench> {
        let real_dpkg = which("dpkg")?;
        let arch = Command::new(&real_dpkg).arg("--print-architecture").output().ok()?;
        let arch = String::from_utf8_lossy(&arch.stdout).trim().to_string();
        if !["amd64", "arm64"].contains(&arch.as_str()) || which("dpkg-deb").is_none() || which("curl").is_none() {
            eprintln!("not an amd64/arm64 machine with dpkg, dpkg-deb and curl: install.sh is not tested here");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("wasmlet-install-").tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let agent = wasmlet_tests::bin("wasmlet-agent");
        for (name, text) in
            [("systemctl", SYSTEMCTL), ("journalctl", JOURNALCTL), ("dpkg", DPKG), ("apt-get", APT_GET), ("dpkg-query", DPKG_QUERY)]
        {
            let text = text.replace("@AGENT@", &agent.display().to_string()).replace("@DPKG@", &real_dpkg.display().to_string());
            write_executable(&bin.join(name), &text);
        }
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).expect("bundle dir");
        let script = std::fs::read_to_string(script()).expect("packaging/install.sh");
        write_executable(&bundle.join("install.sh"), &script);
        let bench = Bench { dir, arch };
        bench.build_deb(&bench.arch, &bundle);
        Some(bench)
    }

    /// A tiny real `wasmlet-agent` 0.1.0 package for `arch`, built into `dir`.
    fn build_deb(&self, arch: &str, dir: &Path) -> PathBuf {
        let tree = self.dir.path().join(format!("deb-{arch}"));
        std::fs::create_dir_all(tree.join("DEBIAN")).expect("DEBIAN dir");
        let control = format!(
            "Package: wasmlet-agent\nVersion: 0.1.0\nArchitecture: {arch}\nMaintainer: wasmlet tests <tests@example.invalid>\nDescription: a test stand-in\n"
        );
        std::fs::write(tree.join("DEBIAN/control"), control).expect("control");
        let deb = dir.join(format!("wasmlet-agent_0.1.0_{arch}.deb"));
        let out =
            Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&tree).arg(&deb).output().expect("dpkg-deb");
        assert!(out.status.success(), "dpkg-deb --build: {}", String::from_utf8_lossy(&out.stderr));
        deb
    }

    /// A fresh machine: an empty `WASMLET_INSTALL_ROOT`.
    fn machine(&self, name: &str) -> PathBuf {
        let root = self.dir.path().join("machines").join(name);
        std::fs::create_dir_all(&root).expect("root");
        root
    }

    /// Runs the shipped script on machine `root`.
    fn install(&self, root: &Path, args: &[&str]) -> Run {
        let path = format!("{}:{}", self.dir.path().join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let started = Instant::now();
        let output = Command::new(self.dir.path().join("bundle/install.sh"))
            .args(args)
            .env("PATH", path)
            .env("WASMLET_INSTALL_ROOT", root)
            .env_remove("WASMLET_CONFIG")
            .env_remove("WASMLETCONFIG")
            .env_remove("WASMLET_MASTER")
            .env_remove("WASMLET_JOIN_TOKEN")
            .env_remove("WASMLET_NAME")
            .env_remove("WASMLET_INSECURE_HTTP")
            .output()
            .expect("install.sh runs");
        let run = Run { output, took: started.elapsed() };
        eprintln!("install.sh {args:?} on {}: {run}", root.display());
        run
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let Ok(machines) = std::fs::read_dir(self.dir.path().join("machines")) else { return };
        for root in machines.filter_map(Result::ok).map(|e| e.path()) {
            for pid in started(&root) {
                // Only a process that is still this machine's agent (its data dir is under the root), not a reused pid.
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&root.display().to_string()) {
                    wasmlet_tests::signal(pid, rustix::process::Signal::KILL);
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                    while std::path::Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            }
            // What a killed agent leaves: its cgroups (and any process instance).
            wasmlet_tests::reap_instances(&root.join("var/lib/wasmlet"));
        }
    }
}

/// Every agent process the systemctl shim started on that machine.
fn started(root: &Path) -> Vec<u32> {
    let pids = std::fs::read_to_string(root.join("shim/pids")).unwrap_or_default();
    pids.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Whether a process runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

/// Drops the bench and checks that no agent it started is left running.
fn tear_down(bench: Bench, root: &Path) {
    let pids = started(root);
    assert!(!pids.is_empty(), "the shim started an agent");
    drop(bench);
    wasmlet_tests::wait_for(Duration::from_secs(5), "every agent to be gone", || pids.iter().all(|&p| !running(p)).then_some(()));
}

struct Run {
    output: Output,
    took: Duration,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?} after {:?}\n--- stdout\n{}--- stderr\n{}", self.code(), self.took, self.stdout(), self.stderr())
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh")
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// What the shims were asked to do on that machine.
fn calls(root: &Path) -> String {
    std::fs::read_to_string(root.join("shim/calls")).unwrap_or_default()
}

fn agent_pid(root: &Path) -> String {
    std::fs::read_to_string(root.join("shim/agent.pid")).expect("the agent's pid file").trim().to_string()
}

fn create_token(master: &Master, ttl: &str) -> String {
    let out = master.command(&["token", "create", "--ttl", ttl]);
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().next().expect("the token").to_string()
}

#[test]
fn install_joins_a_node_and_running_it_again_changes_nothing() {
    let Some(bench) = Bench::new() else { return };
    let master = Master::start(&[]).expect("master starts");
    let root = bench.machine("node-1");
    let args = ["--master", &master.url, "--token", &master.join_token, "--name", "node-1", "--timeout", "60"];
    let ready_line = format!("node node-1 is Ready in {}\n", master.url);

    // (a) A fresh machine and a good token: installed, configured, started, Ready in the master.
    let first = bench.install(&root, &args);
    assert_eq!(first.code(), Some(0), "{first}");
    assert_eq!(first.stdout(), ready_line, "{first}");
    let done = calls(&root);
    let deb = format!("wasmlet-agent_0.1.0_{}.deb", bench.arch);
    assert!(done.lines().any(|l| l.starts_with("apt-get install -y") && l.ends_with(&deb)), "the package next to the script: {done}");
    for call in ["systemctl enable --quiet wasmlet-agent", "systemctl start wasmlet-agent"] {
        assert!(done.lines().any(|l| l == call), "{call}: {done}");
    }
    let default_file = root.join("etc/default/wasmlet-agent");
    let meta = std::fs::metadata(&default_file).expect("/etc/default/wasmlet-agent");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "the file holds the join token");
    let settings = std::fs::read_to_string(&default_file).expect("settings");
    assert!(settings.starts_with('#'), "a comment header: {settings}");
    for line in
        [format!("WASMLET_MASTER={}", master.url), format!("WASMLET_JOIN_TOKEN={}", master.join_token), "WASMLET_NAME=node-1".into()]
    {
        assert!(settings.lines().any(|l| l == line), "{line} in {settings}");
    }
    assert!(master.nodes().iter().any(|n| n.metadata.name == "node-1" && n.is_ready()), "the master has node-1 Ready");
    let pid = agent_pid(&root);

    // (b) Again: nothing installed, written or restarted; the same line.
    let second = bench.install(&root, &args);
    assert_eq!(second.code(), Some(0), "{second}");
    assert_eq!(second.stdout(), ready_line, "{second}");
    let stderr = second.stderr();
    for said in ["0.1.0 is already installed", "is up to date", "already running"] {
        assert!(stderr.contains(said), "`{said}`: {second}");
    }
    let new_calls = calls(&root)[done.len()..].to_string();
    assert!(
        !new_calls.lines().any(|l| l.starts_with("apt-get") || l.starts_with("dpkg") || l.contains(" start ") || l.contains("restart")),
        "the second run changed something: {new_calls}"
    );
    assert_eq!(agent_pid(&root), pid, "the agent was not restarted");
    let again = std::fs::metadata(&default_file).expect("settings");
    assert_eq!((again.mtime(), again.mtime_nsec(), again.ino()), (meta.mtime(), meta.mtime_nsec(), meta.ino()), "the file was not touched");

    // A new join token once the node has joined: written down, but no restart for it.
    let token = create_token(&master, "1h");
    let third = bench.install(&root, &["--master", &master.url, "--token", &token, "--name", "node-1", "--timeout", "60"]);
    assert_eq!(third.code(), Some(0), "{third}");
    assert_eq!(third.stdout(), ready_line, "{third}");
    assert!(third.stderr().contains("not restarted"), "{third}");
    assert_eq!(agent_pid(&root), pid, "no restart for a token the node no longer needs");
    assert!(std::fs::read_to_string(&default_file).expect("settings").contains(&token));
    tear_down(bench, &root);
}

#[test]
fn install_names_an_expired_token() {
    let Some(bench) = Bench::new() else { return };
    let master = Master::start(&[]).expect("master starts");
    let token = create_token(&master, "1s");
    std::thread::sleep(Duration::from_millis(1500));
    // (c) The agent runs but the master refuses it: the script says why at once instead of waiting out its timeout.
    let root = bench.machine("late");
    let run = bench.install(&root, &["--master", &master.url, "--token", &token, "--name", "late", "--timeout", "60"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(run.stdout().is_empty(), "{run}");
    let stderr = run.stderr();
    assert!(stderr.contains("the master refused the join token") && stderr.contains("expired at"), "{run}");
    assert!(!stderr.contains('\u{1b}'), "no terminal colours in the message: {run}");
    assert!(run.took < Duration::from_secs(30), "{run}");
    assert!(master.nodes().is_empty(), "no node joined");
    tear_down(bench, &root);
}

#[test]
fn install_refuses_bad_arguments_and_a_package_of_another_architecture() {
    let Some(bench) = Bench::new() else { return };
    let mode = std::fs::metadata(script()).expect("packaging/install.sh").permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "packaging/install.sh is executable");
    let root = bench.machine("untouched");
    let master = "https://127.0.0.1:9"; // never reached: every case stops before the master
    let good_token = format!("wasmlet-join:{}:abc123.{}", "ab".repeat(32), "x".repeat(32));

    let help = bench.install(&root, &["--help"]);
    assert_eq!(help.code(), Some(0), "{help}");
    assert!(help.stdout().starts_with("Usage: install.sh --master URL --token TOKEN"), "{help}");

    // (d) Bad arguments: exit 2 with the reason and the usage, and nothing done.
    let truncated = &good_token[..good_token.len() - 1];
    let bad: [(&[&str], &str); 7] = [
        (&["--master", master, "--token", "letmein"], "--token is not a join token"),
        (&["--master", master, "--token", truncated], "--token is not a join token"),
        (&["--master", "http://127.0.0.1:7070", "--token", &good_token], "is plain HTTP"),
        (&["--master", "127.0.0.1:7070", "--token", &good_token], "is not an https:// URL"),
        (&["--token", &good_token], "--master URL is required"),
        (&["--master", master, "--token", &good_token, "--name", "Not_A_Name"], "not a valid node name"),
        (&["--master", master, "--token", &good_token, "--frobnicate"], "unknown argument: --frobnicate"),
    ];
    for (args, why) in bad {
        let run = bench.install(&root, args);
        assert_eq!(run.code(), Some(2), "{args:?}: {run}");
        assert!(run.stderr().contains(why) && run.stderr().contains("Usage: install.sh"), "{args:?}: {run}");
        assert!(!run.stderr().contains("letmein"), "the token is never echoed: {run}");
    }

    // (e) A package for the other architecture: refused, naming both.
    let other = if bench.arch == "amd64" { "arm64" } else { "amd64" };
    let elsewhere = bench.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    let deb = bench.build_deb(other, &elsewhere);
    let run = bench.install(&root, &["--master", master, "--token", &good_token, "--deb", &deb.display().to_string()]);
    assert_eq!(run.code(), Some(1), "{run}");
    let stderr = run.stderr();
    assert!(stderr.contains(&format!("for {other}, but this machine is {}", bench.arch)), "{run}");

    assert!(calls(&root).is_empty(), "nothing was installed or started: {}", calls(&root));
    assert!(!root.join("etc").exists(), "nothing was written");
}
