//! Modules in OCI registries, against a real registry on loopback (Debian's
//! `docker-registry`, with TLS and a password): `wasmlet push` puts a module
//! there, the master pins a workload's tag to a digest, every node pulls the
//! module itself, and what goes wrong on the way waits in `ModulePullBackOff`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use reqwest::Method;
use wasmlet_api::{Phase, Workload};
use wasmlet_tests::registry::TestRegistry;
use wasmlet_tests::{Agent, Master, bin, example, sha256, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// `wasmlet push FILE REF` with the registry's user, the password on standard input.
fn push(registry: &TestRegistry, file: &Path, reference: &str) -> Output {
    let mut child = Command::new(bin("wasmlet"))
        .args(["push"])
        .arg(file)
        .arg(reference)
        .args(["--username", &registry.user, "--password-stdin", "--registry-ca-file"])
        .arg(&registry.ca_file)
        .env("NO_COLOR", "1")
        .env("HOME", file.parent().unwrap_or(Path::new("/nonexistent")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wasmlet runs");
    child.stdin.take().expect("stdin").write_all(format!("{}\n", registry.password).as_bytes()).expect("password");
    child.wait_with_output().expect("wasmlet ends")
}

/// Pushes `bytes` as `reference`; returns the pinned reference it printed.
fn pushed(registry: &TestRegistry, dir: &Path, bytes: &[u8], reference: &str) -> String {
    let file = dir.join("module.wasm");
    std::fs::write(&file, bytes).expect("write");
    let output = push(registry, &file, reference);
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "push failed: {out}{}", String::from_utf8_lossy(&output.stderr));
    assert!(out.contains(&format!("module digest {}", sha256(bytes))), "{out}");
    let pinned = out.lines().find_map(|l| l.strip_prefix("pushed ")).expect("the pinned reference").to_string();
    assert!(pinned.starts_with(&format!("{reference}@sha256:")), "{pinned}");
    pinned
}

/// The sensor example with a custom section appended: other bytes, the same program.
fn variant(bytes: &[u8]) -> Vec<u8> {
    let mut other = bytes.to_vec();
    other.extend_from_slice(&[0, 6, 5, b'o', b't', b'h', b'e', b'r']);
    other
}

fn oci_workload(name: &str, module: &str, extra: &str) -> Workload {
    let text = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  type: daemon\n  module:\n{module}  args: [\"--interval\", \"200\"]\n{extra}"
    );
    wasmlet_api::from_yaml(&text).expect("manifest")
}

/// An agent joining `master` that trusts the registry's CA, with `extra` flags.
fn join(master: &Master, name: &str, registry: &TestRegistry, extra: &[&str]) -> Agent {
    let ca = registry.ca_file.to_str().expect("utf-8");
    let mut args = vec!["--master", &master.url, "--join-token", &master.join_token, "--name", name, "--module-ca-file", ca];
    args.extend_from_slice(extra);
    args.extend(["--sample-interval", "500ms"]);
    Agent::start(&args).expect("agent starts")
}

fn cached(agent: &Agent, digest: &str) -> bool {
    agent.data_dir.path().join("cache/modules").join(format!("{}.wasm", digest.trim_start_matches("sha256:"))).exists()
}

/// Pushed with `wasmlet push`, applied by tag: the master records the
/// manifest's digest and the module's, each node pulls the module from the
/// registry itself (its access log shows both nodes; the master never holds
/// the module) and runs it; the tag applied again is the same workload, and
/// a new tag rolls every instance to the new digest.
#[test]
fn a_module_pushed_to_a_registry_runs_by_tag_and_each_node_pulls_it_itself() {
    let registry = TestRegistry::start("team", "s3cret-pull").expect("registry starts");
    let dir = tempfile::tempdir().expect("dir");
    let (path, digest) = example("sensor");
    let bytes = std::fs::read(&path).expect("the example");
    let v1 = pushed(&registry, dir.path(), &bytes, &format!("{}/team/sensor:1.0", registry.host));
    let newer = variant(&bytes);
    let v2 = pushed(&registry, dir.path(), &newer, &format!("{}/team/sensor:1.1", registry.host));

    let credentials = dir.path().join("config.json");
    registry.write_credentials(&credentials, &registry.password).expect("credentials");
    let (ca, file) = (registry.ca_file.to_str().expect("utf-8"), credentials.to_str().expect("utf-8"));
    let master = Master::start(&["--registry-ca-file", ca, "--registry-credentials", file]).expect("master starts");
    let a = join(&master, "a", &registry, &["--registry-credentials", file]);
    let b = join(&master, "b", &registry, &["--registry-credentials", file]);

    let tagged = format!("    oci: {}/team/sensor:1.0\n", registry.host);
    let workload = oci_workload("sensor", &tagged, "  placement: everyNode\n");
    let (status, body) = master.send_json(Method::POST, "/workloads", &workload).expect("POST");
    assert_eq!(status, 201, "{body}");
    let stored: Workload = master.get_json("/workloads/sensor").expect("GET");
    assert_eq!(stored.spec.module.oci.as_deref(), Some(v1.as_str()), "the tag pinned to its manifest");
    assert_eq!(stored.spec.module.digest, digest, "and the module's digest");
    wait_for(WAIT, "an instance Running on each node", || {
        let running: Vec<_> = master.instances().into_iter().filter(|i| i.status.phase == Phase::Running).map(|i| i.spec.node).collect();
        (running.len() == 2 && running.contains(&"a".to_string()) && running.contains(&"b".to_string())).then_some(())
    });
    let pulls = registry.blob_pulls();
    for node in ["a", "b"] {
        assert!(
            pulls.iter().any(|l| l.contains(&digest) && l.contains(&format!("(node {node})"))),
            "node {node} pulled the module from the registry: {pulls:#?}"
        );
    }
    let module = master.client().get(master.api(&format!("/modules/{digest}"))).send().expect("GET");
    assert_eq!(module.status(), 404, "the master never held the module");

    // The same tag again: the same spec, and the instances run on.
    let names = || {
        let mut names: Vec<String> = master.instances().into_iter().map(|i| i.metadata.name).collect();
        names.sort();
        names
    };
    let before = names();
    let (status, body) = master.send_json(Method::PUT, "/workloads/sensor", &workload).expect("PUT");
    assert_eq!(status, 200, "{body}");
    let again: Workload = master.get_json("/workloads/sensor").expect("GET");
    assert_eq!(again.spec, stored.spec, "the same tag is the same workload");
    let manifest = dir.path().join("sensor.yaml");
    std::fs::write(&manifest, serde_json::to_string(&workload).expect("json")).expect("write");
    let config = master.cli_config(dir.path());
    let output =
        Command::new(bin("wasmlet")).args(["apply", "-f"]).arg(&manifest).env("WASMLETCONFIG", &config).output().expect("wasmlet runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "workload/sensor unchanged\n", "{}", String::from_utf8_lossy(&output.stderr));
    let output =
        Command::new(bin("wasmlet")).args(["describe", "workload", "sensor"]).env("WASMLETCONFIG", &config).output().expect("wasmlet runs");
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.contains(&v1) && page.contains(&digest), "describe shows the pinned reference and the module's digest: {page}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(names(), before, "no instance replaced");

    // A new tag: a new digest, and every node pulls and runs it.
    let workload = oci_workload("sensor", &format!("    oci: {}/team/sensor:1.1\n", registry.host), "  placement: everyNode\n");
    let (status, body) = master.send_json(Method::PUT, "/workloads/sensor", &workload).expect("PUT");
    assert_eq!(status, 200, "{body}");
    let rolled: Workload = master.get_json("/workloads/sensor").expect("GET");
    assert_eq!(rolled.spec.module.oci.as_deref(), Some(v2.as_str()));
    assert_eq!(rolled.spec.module.digest, sha256(&newer));
    wait_for(WAIT, "both nodes running the new digest", || {
        let running = master.instances().into_iter().filter(|i| i.status.phase == Phase::Running).count();
        (running == 2 && cached(&a, &sha256(&newer)) && cached(&b, &sha256(&newer))).then_some(())
    });
}

/// What goes wrong between a node and a registry waits in
/// `ModulePullBackOff` naming it, and recovers by itself: wrong credentials
/// (the 401, until the node's credentials file is corrected: it is read at
/// each pull), the registry down (until it is back). The master refuses a
/// tag it cannot resolve, naming the registry's answer.
#[test]
fn registry_failures_wait_in_module_pull_back_off_and_recover() {
    let mut registry = TestRegistry::start("team", "s3cret-pull").expect("registry starts");
    let dir = tempfile::tempdir().expect("dir");
    let (path, digest) = example("sensor");
    let bytes = std::fs::read(&path).expect("the example");
    pushed(&registry, dir.path(), &bytes, &format!("{}/team/sensor:1.0", registry.host));
    let newer = variant(&bytes);
    let v2 = pushed(&registry, dir.path(), &newer, &format!("{}/team/sensor:1.1", registry.host));

    let good = dir.path().join("good.json");
    registry.write_credentials(&good, &registry.password).expect("credentials");
    let node_credentials = dir.path().join("node.json");
    registry.write_credentials(&node_credentials, "not-the-password").expect("credentials");
    let (ca, file) = (registry.ca_file.to_str().expect("utf-8"), good.to_str().expect("utf-8"));
    let master = Master::start(&["--registry-ca-file", ca, "--registry-credentials", file]).expect("master starts");
    let node = join(&master, "edge", &registry, &["--registry-credentials", node_credentials.to_str().expect("utf-8")]);

    // A tag that is not there, and a master that cannot reach the registry: refused, saying why.
    let missing = oci_workload("missing", &format!("    oci: {}/team/sensor:9.9\n", registry.host), "");
    let (status, body) = master.send_json(Method::POST, "/workloads", &missing).expect("POST");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("spec.module.oci") && body.contains("404") && body.contains("sensor:9.9"), "{body}");

    let workload = oci_workload("sensor", &format!("    oci: {}/team/sensor:1.0\n", registry.host), "");
    let (status, body) = master.send_json(Method::POST, "/workloads", &workload).expect("POST");
    assert_eq!(status, 201, "{body}");
    let waiting = wait_for(WAIT, "the instance waiting in ModulePullBackOff", || {
        master.instances().into_iter().find(|i| i.spec.workload == "sensor" && i.status.reason.as_deref() == Some("ModulePullBackOff"))
    });
    let message = waiting.status.message.unwrap_or_default();
    assert!(message.contains("401") && message.contains(&registry.host), "names the 401 and the registry: {message}");
    assert!(!message.contains("not-the-password"), "{message}");
    registry.write_credentials(&node_credentials, &registry.password).expect("credentials");
    wait_for(WAIT, "Running once the node's credentials are right", || {
        master.instances().into_iter().find(|i| i.spec.workload == "sensor" && i.status.phase == Phase::Running)
    });
    let events: Vec<wasmlet_api::Event> = node.get_json("/events").expect("the node's events");
    assert!(
        events.iter().any(|e| e.reason == "ModulePullBackOff" && e.message.contains("401")),
        "an event said what happened: {:#?}",
        events.iter().map(|e| &e.message).collect::<Vec<_>>()
    );

    // The registry down: the master cannot resolve a tag; a pinned workload waits for the registry.
    registry.stop();
    let (status, body) = master
        .send_json(Method::POST, "/workloads", &oci_workload("later", &format!("    oci: {}/team/sensor:1.1\n", registry.host), ""))
        .expect("POST");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("cannot resolve") && body.contains(&registry.host), "{body}");
    let pinned = format!("    oci: {v2}\n    digest: {}\n", sha256(&newer));
    let (status, body) = master.send_json(Method::POST, "/workloads", &oci_workload("pinned", &pinned, "")).expect("POST");
    assert_eq!(status, 201, "a pinned workload needs no registry at apply: {body}");
    let waiting = wait_for(WAIT, "the pinned one waiting for the registry", || {
        master.instances().into_iter().find(|i| i.spec.workload == "pinned" && i.status.reason.as_deref() == Some("ModulePullBackOff"))
    });
    assert!(waiting.status.message.unwrap_or_default().contains(&registry.host));
    assert!(master.instances().iter().any(|i| i.spec.workload == "sensor" && i.status.phase == Phase::Running), "the other runs on");
    registry.start_again().expect("registry starts again");
    wait_for(WAIT, "Running once the registry is back", || {
        master.instances().into_iter().find(|i| i.spec.workload == "pinned" && i.status.phase == Phase::Running)
    });
    let _ = digest;
}

/// A node on its own (no master) runs a registry module from a static
/// manifest that pins its digest, pulled with the node's credentials; one
/// that names only a tag is refused, saying that no master resolves it here.
#[test]
fn a_static_manifest_runs_a_pinned_registry_module_on_a_node_alone() {
    let registry = TestRegistry::start("team", "s3cret-pull").expect("registry starts");
    let dir = tempfile::tempdir().expect("dir");
    let (path, digest) = example("sensor");
    let bytes = std::fs::read(&path).expect("the example");
    let reference = format!("{}/team/sensor:1.0", registry.host);
    pushed(&registry, dir.path(), &bytes, &reference);
    let credentials = dir.path().join("config.json");
    registry.write_credentials(&credentials, &registry.password).expect("credentials");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("dir");
    let manifest = |name: &str, module: &str| serde_json::to_string(&oci_workload(name, module, "")).expect("json");
    std::fs::write(manifests.join("pinned.json"), manifest("pinned", &format!("    oci: {reference}\n    digest: {digest}\n")))
        .expect("write");
    std::fs::write(manifests.join("tagged.json"), manifest("tagged", &format!("    oci: {reference}\n"))).expect("write");
    let agent = Agent::start(&[
        "--manifests-dir",
        manifests.to_str().expect("utf-8"),
        "--module-ca-file",
        registry.ca_file.to_str().expect("utf-8"),
        "--registry-credentials",
        credentials.to_str().expect("utf-8"),
        "--sample-interval",
        "500ms",
    ])
    .expect("agent starts");
    agent.wait_phase("pinned-0", Phase::Running, WAIT);
    assert!(registry.blob_pulls().iter().any(|l| l.contains(&digest)), "pulled from the registry");
    let line = wait_for(WAIT, "the tagged manifest refused", || {
        agent.log_text().lines().find(|l| l.contains("tagged.json") && l.contains("no master resolves tags here")).map(str::to_string)
    });
    assert!(line.contains("spec.module.digest"), "{line}");
    assert!(agent.instance("tagged-0").is_none());
}

/// Registry credentials the master holds: created with `wasmlet create
/// registry-credentials` (the password from standard input), never shown
/// back (API, CLI, audit log), used by the master to resolve the tag and
/// handed only to the node that runs an instance naming them (that read
/// audited); refused for another registry than their own, for another node,
/// and for a viewer.
#[test]
fn credentials_held_by_the_master_reach_only_the_nodes_that_use_them() {
    let registry = TestRegistry::start("team", "held-s3cret").expect("registry starts");
    let dir = tempfile::tempdir().expect("dir");
    let (path, digest) = example("sensor");
    let bytes = std::fs::read(&path).expect("the example");
    pushed(&registry, dir.path(), &bytes, &format!("{}/team/sensor:1.0", registry.host));
    let ca = registry.ca_file.to_str().expect("utf-8");
    // Neither the master nor the nodes have a credentials file of their own.
    let master = Master::start(&["--registry-ca-file", ca]).expect("master starts");
    let a = join(&master, "a", &registry, &["--labels", "pull=yes"]);
    let b = join(&master, "b", &registry, &["--labels", "pull=no"]);
    let config = master.cli_config(dir.path());
    let wasmlet = |args: &[&str], stdin: &str| {
        let mut child = Command::new(bin("wasmlet"))
            .args(args)
            .env("WASMLETCONFIG", &config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wasmlet runs");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin");
        let output = child.wait_with_output().expect("wasmlet ends");
        (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    };
    let create = ["create", "registry-credentials", "team", "--registry", &registry.host, "--username", "team", "--password-stdin"];
    let (ok, out) = wasmlet(&create, "held-s3cret\n");
    assert!(ok && out.contains("registry-credentials/team created"), "{out}");
    let (ok, out) = wasmlet(&create, "held-s3cret\n");
    assert!(!ok && out.contains("already exist"), "{out}");
    let (ok, out) =
        wasmlet(&["create", "registry-credentials", "elsewhere", "--registry", "other.example.com", "-u", "x", "--password-stdin"], "p\n");
    assert!(ok, "{out}");
    for args in [&["get", "registry-credentials"][..], &["get", "registry-credentials", "team", "-o", "json"][..]] {
        let (ok, out) = wasmlet(args, "");
        assert!(ok && out.contains("team") && out.contains(&registry.host), "{out}");
        assert!(!out.contains("held-s3cret") && !out.contains("password"), "never shown back: {out}");
    }

    // Credentials for another registry are not sent to this one.
    let module = |credentials: &str| format!("    oci: {}/team/sensor:1.0\n    credentials: {credentials}\n", registry.host);
    let (status, body) = master.send_json(Method::POST, "/workloads", &oci_workload("wrong", &module("elsewhere"), "")).expect("POST");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("spec.module.credentials") && body.contains("other.example.com") && body.contains(&registry.host), "{body}");

    let workload = oci_workload("sensor", &module("team"), "  nodeSelector: {pull: \"yes\"}\n");
    let (status, body) = master.send_json(Method::POST, "/workloads", &workload).expect("POST");
    assert_eq!(status, 201, "resolved with the held credentials: {body}");
    let running = wait_for(WAIT, "Running on a, pulled with the held credentials", || {
        master.instances().into_iter().find(|i| i.spec.workload == "sensor" && i.status.phase == Phase::Running)
    });
    assert_eq!(running.spec.node, "a");
    assert!(cached(&a, &digest));

    // Only node a, which runs an instance naming them, reads them.
    let read = |token: &str, node: &str| {
        let client = master.client_with(token).build().expect("client");
        client.get(master.api(&format!("/nodes/{node}/registry-credentials/team"))).send().expect("answer").status().as_u16()
    };
    let token_of = |agent: &Agent| wait_for(WAIT, "the node's credential", || agent.credential_field("token"));
    let (token_a, token_b) = (token_of(&a), token_of(&b));
    assert_eq!(read(&token_a, "a"), 200);
    assert_eq!(read(&token_b, "b"), 403, "b runs nothing that uses them");
    assert_eq!(read(&token_b, "a"), 403, "b is not a");
    let out = master.command(&["token", "create", "--role", "viewer", "--ttl", "1h"]);
    let viewer = String::from_utf8_lossy(&out.stdout).lines().next().expect("token").to_string();
    assert_eq!(read(&viewer, "a"), 403);
    assert_eq!(read(&master.admin_token, "a"), 403, "not even an admin reads the password");

    let audit = wait_for(WAIT, "the reads in the audit log", || {
        let text = std::fs::read_to_string(master.data_dir.path().join("audit.log")).ok()?;
        (text.contains("\"user\":\"node:a\"")
            && text.contains("/nodes/a/registry-credentials/team")
            && text.contains("\"user\":\"viewer\""))
        .then_some(text)
    });
    assert!(audit.lines().any(|l| l.contains("POST") && l.contains("/registry-credentials") && l.contains("\"allowed\"")), "{audit}");
    assert!(!audit.contains("held-s3cret"), "the audit log never holds the password");

    // Replaced for another registry: no longer handed out for a module on this one.
    let replace =
        ["create", "registry-credentials", "team", "--registry", "other.example.com", "-u", "team", "--password-stdin", "--replace"];
    let (ok, out) = wasmlet(&replace, "new-s3cret\n");
    assert!(ok && out.contains("registry-credentials/team replaced"), "{out}");
    assert_eq!(read(&token_a, "a"), 403, "credentials now for other.example.com do not go to {}", registry.host);

    let (ok, out) = wasmlet(&["delete", "registry-credentials", "team"], "");
    assert!(ok && out.contains("registry-credentials/team deleted"), "{out}");
}
