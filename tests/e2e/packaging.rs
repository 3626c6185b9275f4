//! What packages install: the systemd units pass `systemd-analyze verify`
//! (where the tool runs), and the commented config files are what the
//! binaries generate from their flags.

use std::path::PathBuf;
use std::process::Command;

fn packaging() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

#[test]
fn the_systemd_units_verify_cleanly() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed here: the units are not verified");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut units = Vec::new();
    for name in ["wasmlet-agent.service", "wasmlet-master.service"] {
        let text = std::fs::read_to_string(packaging().join("systemd").join(name)).expect("unit file");
        // The package installs the binaries in /usr/bin; verify against the ones just built.
        let text = text.replace("/usr/bin/", &format!("{}/", wasmlet_tests::bin_dir().display()));
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write unit");
        units.push(path);
    }
    let out = Command::new("systemd-analyze").arg("verify").args(&units).output().expect("systemd-analyze");
    let complaints = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
}

#[test]
fn the_packaged_configs_are_what_the_binaries_generate() {
    for (binary, file) in [("wasmlet-agent", "agent.toml"), ("wasmlet-master", "master.toml")] {
        let out = Command::new(wasmlet_tests::bin(binary)).arg("config-template").output().expect("config-template");
        assert!(out.status.success());
        let packaged = std::fs::read_to_string(packaging().join(file)).expect("packaged config");
        assert_eq!(String::from_utf8_lossy(&out.stdout), packaged, "packaging/{file} drifted: run `make packaging-configs`");
        // Every line is a comment: installing the file changes no default.
        assert!(packaged.lines().all(|l| l.is_empty() || l.starts_with('#')), "packaging/{file} sets something");
    }
}
