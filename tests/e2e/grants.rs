//! Host-path grants under attack: a guest with write access to a granted
//! directory changes what lies beneath it, between one start and the next, so
//! that another grant (its own, or another workload's) leads out of the
//! allowed directories. The agent opens every grant at every start from its
//! allowed root without following links, so each such start fails, naming the
//! grant and what was found; the guest reads nothing outside; the instance is
//! restarted per its policy and runs again once the directory is put back.
//!
//! Races between the agent's open and the runtime's are out of reach by
//! construction (each step opens one name inside a directory already held
//! open, and the runtime gets the `/proc/self/fd` link of the open directory):
//! the unit test `runtime::sandbox::tests` swaps a grant in exactly that gap.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use wasmlet_api::{Instance, Phase, Workload};
use wasmlet_tests::{Agent, Master, place_file, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(60);

/// What the tests hide outside the allowed directory, where a swapped grant would lead.
const SECRET: &[u8] = b"top secret";

/// Restarts come quickly, so the next start after the swap does too.
const FAST_RESTARTS: [&str; 4] = ["--restart-backoff-initial", "50ms", "--restart-backoff-max", "200ms"];

/// A directory tree for one test: `<top>/secret.txt` outside, `<top>/root` the allowed host path.
struct Tree {
    top: tempfile::TempDir,
}

impl Tree {
    fn new(dirs: &[&str]) -> Tree {
        let top = tempfile::Builder::new().prefix("wasmlet-grants-").tempdir().expect("tempdir");
        std::fs::write(top.path().join("secret.txt"), SECRET).expect("write");
        for dir in dirs {
            std::fs::create_dir_all(top.path().join("root").join(dir)).expect("mkdir");
        }
        Tree { top }
    }

    fn root(&self) -> String {
        self.top.path().join("root").display().to_string()
    }

    fn path(&self, beneath: &str) -> String {
        format!("{}/{beneath}", self.root())
    }
}

/// A YAML flow sequence of strings.
fn yaml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A `fs-probe` daemon (restarted after every run) with `args` and the grants `(guest, host, read_only)`.
fn probe(name: &str, args: &[&str], grants: &[(&str, &str, bool)]) -> String {
    let mut extra = format!("  args: {}\n  dirs:\n", yaml_list(args));
    for (guest, host, read_only) in grants {
        extra.push_str(&format!("  - path: {guest}\n    hostPath: {host}\n    readOnly: {read_only}\n"));
    }
    workload_manifest(name, "fs-probe", "daemon", &extra)
}

/// The instance once it is waiting to restart after a start that failed because `grant`
/// was found to be `found`. (Between the attacker's rename and its link, a start fails
/// because the grant does not exist: that is a failure too, but not the one waited for.)
fn start_failed_on(instance: Option<Instance>, grant: &str, found: &str) -> Option<Instance> {
    let instance = instance?;
    let last = instance.status.last_termination.as_ref()?;
    (last.reason == "StartError" && last.message.starts_with(grant) && last.message.contains(found)).then_some(instance)
}

fn assert_never_read_the_secret(out: &str) {
    assert!(!out.contains("secret.txt: ok"), "a read through a swapped grant succeeded:\n{out}");
    assert!(!out.contains("top secret"), "{out}");
}

#[test]
fn a_grant_swapped_for_a_link_fails_the_next_start_for_its_own_and_another_workload() {
    let tree = Tree::new(&["a/b", "a/v"]);
    let manifests = tempfile::tempdir().expect("tempdir");
    // The victim reads through its grant at every run; the swap below would lead it to the secret.
    place_file(manifests.path(), "victim.yaml", &probe("victim", &["/shared/secret.txt"], &[("/shared", &tree.path("a/v"), true)]));
    let mut args = vec!["--manifests-dir", manifests.path().to_str().expect("utf-8"), "--manifests-poll-interval", "100ms"];
    let root = tree.root();
    args.extend(["--allowed-host-paths", &root]);
    args.extend(FAST_RESTARTS);
    let agent = Agent::start(&args).expect("agent starts");
    wait_for(WAIT, "the victim to have run", || agent.instance("victim-0").filter(|i| i.status.restarts >= 1));

    // The link `root/a/b -> ../..` leads to <top>, where secret.txt lies: the attack.
    let attack = [
        "--rename",
        "/data/b",
        "/data/b.orig",
        "--symlink",
        "../..",
        "/data/b",
        "--rename",
        "/data/v",
        "/data/v.orig",
        "--symlink",
        "../..",
        "/data/v",
        "/other/secret.txt",
    ];
    place_file(
        manifests.path(),
        "attacker.yaml",
        &probe("attacker", &attack, &[("/data", &tree.path("a"), false), ("/other", &tree.path("a/b"), true)]),
    );

    let own = format!("spec.dirs[1].hostPath {}", tree.path("a/b"));
    let attacker = wait_for(WAIT, "the attacker's next start to fail on its own grant", || {
        assert_never_read_the_secret(&agent.get_text("/instances/attacker-0/logs").unwrap_or_default());
        start_failed_on(agent.instance("attacker-0"), &own, "is a symbolic link")
    });
    let out = agent.get_text("/instances/attacker-0/logs").expect("logs");
    assert!(out.contains("symlink /data/b: ok") && out.contains("symlink /data/v: ok"), "the guest did swap both grants:\n{out}");
    assert_never_read_the_secret(&out);
    let message = attacker.status.last_termination.clone().expect("last termination").message;
    assert!(message.contains(&format!("{} is a symbolic link (to ../..)", tree.path("a/b"))), "{message}");
    assert_eq!(attacker.status.reason.as_deref(), Some("CrashLoopBackOff"), "restarted per its policy: {:?}", attacker.status);
    assert!(attacker.status.message.unwrap_or_default().contains(&own), "the instance's message names the grant");

    let other = format!("spec.dirs[0].hostPath {}", tree.path("a/v"));
    let victim = wait_for(WAIT, "the victim's next start to fail on its grant", || {
        assert_never_read_the_secret(&agent.get_text("/instances/victim-0/logs").unwrap_or_default());
        start_failed_on(agent.instance("victim-0"), &other, "is a symbolic link")
    });
    assert!(victim.status.last_termination.expect("last").message.contains("is a symbolic link (to ../..)"));
    assert_never_read_the_secret(&agent.get_text("/instances/victim-0/logs").expect("logs"));
    let events: Vec<wasmlet_api::Event> = agent.get_json("/events").expect("events");
    assert!(
        events.iter().any(|e| e.reason == "BackOff" && e.involved_object.name == "victim-0" && e.message.contains(&other)),
        "an event names the grant: {events:?}"
    );

    // Put back by the operator (the attacker removed): the victim runs again at its next restart.
    std::fs::remove_file(manifests.path().join("attacker.yaml")).expect("remove");
    wait_for(WAIT, "the attacker to be gone", || agent.instance("attacker-0").is_none().then_some(()));
    std::fs::remove_file(tree.path("a/v")).expect("remove the link");
    std::fs::rename(tree.path("a/v.orig"), tree.path("a/v")).expect("put the directory back");
    std::fs::write(tree.path("a/v/secret.txt"), b"inside").expect("write");
    wait_for(WAIT, "the victim to read its own directory again", || {
        agent.get_text("/instances/victim-0/logs").ok().filter(|out| out.contains("/shared/secret.txt: ok 6 bytes"))
    });
    assert_eq!(std::fs::read(tree.top.path().join("secret.txt")).expect("secret"), SECRET);
}

#[test]
fn a_link_in_an_intermediate_directory_or_a_file_in_place_of_a_grant_fails_the_start() {
    let tree = Tree::new(&["a/x/y/z", "a/f", "a/n/m"]);
    // Where the intermediate link below leads: a `z` with a secret, outside the allowed directory.
    std::fs::create_dir_all(tree.top.path().join("outside/z")).expect("mkdir");
    std::fs::write(tree.top.path().join("outside/z/secret.txt"), SECRET).expect("write");
    let manifests = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["--manifests-dir", manifests.path().to_str().expect("utf-8"), "--manifests-poll-interval", "100ms"];
    let root = tree.root();
    args.extend(["--allowed-host-paths", &root]);
    args.extend(FAST_RESTARTS);
    let agent = Agent::start(&args).expect("agent starts");
    place_file(manifests.path(), "deep.yaml", &probe("deep", &["/z/secret.txt"], &[("/z", &tree.path("a/x/y/z"), true)]));
    place_file(manifests.path(), "file.yaml", &probe("file", &["/f"], &[("/f", &tree.path("a/f"), true)]));
    place_file(manifests.path(), "near.yaml", &probe("near", &["/m"], &[("/m", &tree.path("a/n/m"), true)]));
    wait_for(WAIT, "the victims to have run", || {
        let ran = |name: &str| agent.instance(name).is_some_and(|i| i.status.restarts >= 1);
        (ran("deep-0") && ran("file-0") && ran("near-0")).then_some(())
    });

    // `root/a/x/y -> ../../../outside` leads `y/z` out; `root/a/n -> n2` stays inside the
    // allowed directory, and is not followed either: nothing beneath a root is.
    let attack = [
        "--rename",
        "/data/x/y",
        "/data/x/y2",
        "--symlink",
        "../../../outside",
        "/data/x/y",
        "--rename",
        "/data/f",
        "/data/f.orig",
        "--write",
        "/data/f",
        "--rename",
        "/data/n",
        "/data/n2",
        "--symlink",
        "n2",
        "/data/n",
    ];
    place_file(manifests.path(), "attacker.yaml", &probe("attacker", &attack, &[("/data", &tree.path("a"), false)]));

    let deep = wait_for(WAIT, "the deep grant's next start to fail", || {
        assert_never_read_the_secret(&agent.get_text("/instances/deep-0/logs").unwrap_or_default());
        start_failed_on(agent.instance("deep-0"), &format!("spec.dirs[0].hostPath {}", tree.path("a/x/y/z")), "is a symbolic link")
    });
    let message = deep.status.last_termination.expect("last").message;
    let link = format!("{} is a symbolic link (to ../../../outside)", tree.path("a/x/y"));
    assert!(message.contains(&link), "names the intermediate link: {message}");
    let near = wait_for(WAIT, "the near grant's next start to fail", || {
        start_failed_on(agent.instance("near-0"), &format!("spec.dirs[0].hostPath {}", tree.path("a/n/m")), "is a symbolic link")
    });
    let message = near.status.last_termination.expect("last").message;
    assert!(message.contains(&format!("{} is a symbolic link (to n2)", tree.path("a/n"))), "{message}");
    let file = wait_for(WAIT, "the file grant's next start to fail", || {
        start_failed_on(agent.instance("file-0"), &format!("spec.dirs[0].hostPath {}", tree.path("a/f")), "is a regular file")
    });
    let message = file.status.last_termination.expect("last").message;
    assert!(message.contains(&format!("{} is a regular file, not a directory", tree.path("a/f"))), "{message}");
    assert_eq!(std::fs::read(tree.path("a/f")).expect("the planted file"), b"written by fs-probe\n");
}

#[test]
fn through_a_master_a_swapped_grant_fails_the_start_and_the_master_shows_why() {
    let tree = Tree::new(&["a/b"]);
    let master = Master::start(&[]).expect("master starts");
    let root = tree.root();
    let mut args = vec!["--master", &master.url, "--join-token", &master.join_token, "--name", "node-g", "--allowed-host-paths", &root];
    args.extend(FAST_RESTARTS);
    let agent = Agent::start(&args).expect("agent starts");
    master.upload_example("fs-probe").expect("upload");
    let attack = ["--rename", "/data/b", "/data/b.orig", "--symlink", "../..", "/data/b", "/other/secret.txt"];
    let text = probe("attacker", &attack, &[("/data", &tree.path("a"), false), ("/other", &tree.path("a/b"), true)]);
    let workload: Workload = wasmlet_api::from_yaml(&text).expect("manifest");
    let (status, body) = master.send_json(Method::POST, "/workloads", &workload).expect("POST /workloads");
    assert!(status == 201 || status == 200, "{status}: {body}");

    let grant = format!("spec.dirs[1].hostPath {}", tree.path("a/b"));
    let logs = |name: &str| {
        let url = master.api(&format!("/instances/{name}/logs"));
        master.client().get(url).send().and_then(|r| r.text()).unwrap_or_default()
    };
    let instance = wait_for(WAIT, "the master to show the failed start", || {
        let instance = master.instances().into_iter().find(|i| i.spec.workload == "attacker")?;
        assert_never_read_the_secret(&logs(&instance.metadata.name));
        let message = instance.status.message.clone().unwrap_or_default();
        (instance.status.phase == Phase::Pending
            && message.contains(&grant)
            && message.contains("StartError")
            && message.contains("is a symbolic link (to ../..)"))
        .then_some(instance)
    });
    let logs = logs(&instance.metadata.name);
    assert!(logs.contains("symlink /data/b: ok"), "{logs}");
    assert_never_read_the_secret(&logs);
    assert!(Path::new(&tree.path("a/b.orig")).is_dir());
    drop(agent);
}

/// The operator allows a directory that holds the agent's own (`/var/lib`
/// holding `/var/lib/wasmlet`, say). A grant of the data dir, of a directory
/// holding it or of one inside it would hand the guest the node's credential
/// and API token, the compiled code the agent loads and runs natively, and the
/// other workloads' scratch dirs and logs; a grant of the manifests dir, the
/// workloads this agent runs. Each is refused by name; a grant beside them
/// under the same allowed directory runs.
#[test]
fn the_agents_own_directories_are_never_granted_even_inside_an_allowed_one() {
    let top = tempfile::Builder::new().prefix("wasmlet-own-").tempdir().expect("tempdir");
    let data = tempfile::Builder::new().prefix("data-").tempdir_in(top.path()).expect("data dir");
    let data_path = data.path().to_path_buf();
    let manifests = top.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::create_dir_all(top.path().join("shared")).expect("mkdir");
    std::fs::write(top.path().join("shared/ok.txt"), b"fine").expect("write");
    let allowed = top.path().display().to_string();
    let agent = Agent::start_in(
        data,
        &["--manifests-dir", manifests.to_str().expect("utf-8"), "--manifests-poll-interval", "100ms", "--allowed-host-paths", &allowed],
    )
    .expect("agent starts");
    // Something compiled and cached, so that the cache dir exists to be asked for.
    place_file(
        &manifests,
        "shared.yaml",
        &workload_manifest(
            "shared",
            "fs-probe",
            "job",
            &format!(
                "  args: [\"/s/ok.txt\"]\n  restartPolicy: Never\n  dirs:\n  - path: /s\n    hostPath: {}/shared\n    readOnly: true\n",
                allowed
            ),
        ),
    );
    agent.wait_phase("shared-0", Phase::Succeeded, WAIT);
    assert!(agent.get_text("/instances/shared-0/logs").expect("logs").contains("/s/ok.txt: ok 4 bytes"));

    let data_shown = data_path.canonicalize().expect("canonical").display().to_string();
    let manifests_shown = manifests.canonicalize().expect("canonical").display().to_string();
    let attempts = [
        ("holder", allowed.clone(), "holds the agent's data dir", data_shown.clone(), true),
        ("data", data_path.display().to_string(), "is the agent's data dir", data_shown.clone(), true),
        ("cache", data_path.join("cache/compiled").display().to_string(), "lies inside the agent's data dir", data_shown.clone(), false),
        ("slash", format!("{}//cache/", data_path.display()), "lies inside the agent's data dir", data_shown.clone(), false),
        ("manifests", manifests.display().to_string(), "is the agent's manifests dir", manifests_shown.clone(), false),
    ];
    for (name, host, _, _, read_only) in &attempts {
        // Were it granted: the agent's token read, a file planted where the agent loads compiled code.
        let manifest = workload_manifest(
            name,
            "fs-probe",
            "job",
            &format!(
                "  args: [\"/g/api.token\", \"--write\", \"/g/planted.cwasm\"]\n  restartPolicy: Never\n  dirs:\n  - path: /g\n    hostPath: {host:?}\n    readOnly: {read_only}\n"
            ),
        );
        place_file(&manifests, &format!("{name}.yaml"), &manifest);
    }
    for (name, host, problem, dir, _) in &attempts {
        let file = format!("{name}.yaml");
        let event = wait_for(WAIT, &format!("{file} to be refused"), || {
            let events: Vec<wasmlet_api::Event> = agent.get_json("/events").ok()?;
            events.into_iter().find(|e| e.reason == "ManifestInvalid" && e.involved_object.name == file)
        });
        let expected = format!("spec.dirs[0].hostPath: {host} {problem} {dir}");
        assert!(event.message.contains(&expected), "{file}: {} does not say `{expected}`", event.message);
        assert!(agent.instance(&format!("{name}-0")).is_none(), "{name} never ran");
    }
    assert!(!data_path.join("cache/compiled/planted.cwasm").exists() && !data_path.join("planted.cwasm").exists());
}
