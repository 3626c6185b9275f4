//! Bad configuration: the agent refuses to start and says what is wrong.

use std::process::Command;

fn run_agent(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(wasmlet_tests::bin("wasmlet-agent"))
        .args(["--data-dir", dir.path().to_str().expect("utf-8"), "--api-addr", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run the agent");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn malformed_config_files_name_the_key_and_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("sample-interval = \"2 parsecs\"\n", &["sample-interval", "2 parsecs"][..]),
        ("memory-available-min = \"12Qi\"\n", &["memory-available-min", "unknown suffix `Qi`"][..]),
        ("sample-intervall = \"2s\"\n", &["unknown key `sample-intervall`"][..]),
        ("api-addr = \n", &["agent.toml"][..]),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).expect("write config");
        let (ok, stderr) = run_agent(&["--config", path.to_str().expect("utf-8"), "status"]);
        assert!(!ok, "case {i} must fail");
        for needle in *expected {
            assert!(stderr.contains(needle), "case {i}: stderr names {needle}: {stderr}");
        }
        assert!(stderr.contains("agent.toml"), "case {i}: names the file: {stderr}");
    }
}

#[test]
fn bad_flag_values_are_refused() {
    let (ok, stderr) = run_agent(&["--max-instances=-3", "status"]);
    assert!(!ok);
    assert!(stderr.contains("--max-instances"), "{stderr}");
    let (ok, stderr) = run_agent(&["--sample-interval", "soon", "status"]);
    assert!(!ok);
    assert!(stderr.contains("--sample-interval") && stderr.contains("soon"), "{stderr}");
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (ok, stderr) = run_agent(&["--api-addr", &addr]);
    assert!(!ok);
    assert!(stderr.contains("--api-addr") && stderr.contains(&addr), "{stderr}");
}

/// Files for module downloads that cannot serve are refused at start, naming
/// the flag and the file, never a secret in them.
#[test]
fn unusable_module_download_files_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").expect("write");
    let bad_credentials = dir.path().join("config.json");
    std::fs::write(&bad_credentials, r#"{"auths": {"r.example.com": {"auth": "c2VjcmV0LXdpdGhvdXQtY29sb24="}}}"#).expect("write");
    let missing = dir.path().join("missing.json");
    for (flag, file, wanted) in [
        ("--module-ca-file", &not_pem, "holds no PEM certificate"),
        ("--registry-credentials", &bad_credentials, "auths.r.example.com.auth is not base64 of `user:password`"),
        ("--registry-credentials", &missing, "cannot read it"),
    ] {
        let data = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(wasmlet_tests::bin("wasmlet-agent"))
            .args(["--data-dir", data.path().to_str().expect("utf-8"), "--api-addr", "127.0.0.1:0", "--ingress-addr", "127.0.0.1:0"])
            .arg(flag)
            .arg(file)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run the agent");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{flag} {}: the agent did not refuse to start", file.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
        assert!(!status.success(), "{flag}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains(&file.display().to_string()) && stderr.contains(wanted), "{flag}: {stderr}");
        assert!(!stderr.contains("secret-without-colon") && !stderr.contains("c2VjcmV0"), "{stderr}");
    }
}
