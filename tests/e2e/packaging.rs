//! What packages install: the systemd units pass `systemd-analyze verify`
//! (where the tool runs), the commented config files are what the binaries
//! generate from their flags, and the `.deb`s `make debs` builds (this
//! machine's architecture, and arm64 cross-compiled on amd64) hold the right
//! files, metadata and maintainer scripts.

use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

fn deb(name: &str, arch: &str) -> PathBuf {
    wasmlet_tests::package(name, arch).unwrap_or_else(|e| panic!("{e:#}"))
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb").args(args).arg(deb).output().expect("dpkg-deb runs");
    assert!(out.status.success(), "dpkg-deb {args:?} {}: {}", deb.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ELF machine of a binary: 0x3e x86-64, 0xb7 aarch64.
fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).expect("binary");
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is an ELF binary", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn the_packages_hold_the_binaries_units_configs_and_scripts_a_machine_needs() {
    for arch in wasmlet_tests::package_architectures() {
        for (name, binaries, state_dir) in [
            ("wasmlet-agent", vec!["wasmlet-agent"], "/var/lib/wasmlet"),
            ("wasmlet-master", vec!["wasmlet-master", "wasmlet"], "/var/lib/wasmlet-master"),
        ] {
            let deb = deb(name, arch);
            let info = dpkg_deb(&["-I"], &deb);
            for field in [format!("Package: {name}"), format!("Architecture: {arch}"), "Maintainer: ".into(), "Section: admin".into()] {
                assert!(info.contains(&field), "{}: no `{field}` in\n{info}", deb.display());
            }
            let depends = info.lines().find(|l| l.trim_start().starts_with("Depends:")).unwrap_or_default();
            assert!(depends.contains("libc6") && depends.contains("init-system-helpers"), "{depends}");

            let contents = dpkg_deb(&["-c"], &deb);
            let entry = |path: &str| contents.lines().find(|l| l.ends_with(&format!(".{path}"))).map(str::to_string);
            let unit = format!("/usr/lib/systemd/system/{name}.service");
            let short = name.trim_start_matches("wasmlet-");
            for path in [unit.clone(), format!("/etc/wasmlet/{short}.toml"), format!("/etc/default/{name}")]
                .into_iter()
                .chain(binaries.iter().map(|b| format!("/usr/bin/{b}")))
            {
                assert!(entry(&path).is_some(), "{} lacks {path}:\n{contents}", deb.display());
            }
            for binary in &binaries {
                assert!(entry(&format!("/usr/bin/{binary}")).is_some_and(|l| l.starts_with("-rwxr-xr-x")), "{binary} is executable");
            }
            if name == "wasmlet-agent" {
                let default = entry("/etc/default/wasmlet-agent").unwrap_or_default();
                assert!(default.starts_with("-rw-------"), "the file that holds the join token is root's only: {default}");
            }

            let dir = tempfile::tempdir().expect("tempdir");
            let control = dir.path().join("DEBIAN");
            let out = Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control).output().expect("dpkg-deb -e");
            assert!(out.status.success());
            let read = |file: &str| std::fs::read_to_string(control.join(file)).unwrap_or_default();
            let conffiles = read("conffiles");
            assert!(
                conffiles.contains(&format!("/etc/wasmlet/{short}.toml")) && conffiles.contains(&format!("/etc/default/{name}")),
                "{conffiles}"
            );
            let postinst = read("postinst");
            assert!(postinst.contains(&format!("install -d -m 0700 {state_dir}")), "postinst creates the state dir:\n{postinst}");
            assert!(postinst.contains(&format!("deb-systemd-helper enable {name}.service")), "postinst enables the unit:\n{postinst}");
            assert!(!postinst.contains("deb-systemd-invoke start"), "postinst does not start the unit:\n{postinst}");
            let prerm = read("prerm");
            assert!(prerm.contains(&format!("deb-systemd-invoke stop {name}.service")), "prerm stops it on removal:\n{prerm}");
            let postrm = read("postrm");
            assert!(!postrm.contains("rm -") && !postinst.contains("rm -"), "no script deletes data:\n{postrm}");

            // The unit is the one in packaging/, and the binaries are built for the package's architecture.
            let tree = dir.path().join("root");
            wasmlet_tests::unpack(&deb, &tree).expect("unpacks");
            let packaged_unit = std::fs::read_to_string(tree.join(unit.trim_start_matches('/'))).expect("unit");
            assert_eq!(packaged_unit, std::fs::read_to_string(packaging().join("systemd").join(format!("{name}.service"))).expect("unit"));
            let machine = if arch == "arm64" { 0xb7 } else { 0x3e };
            for binary in &binaries {
                assert_eq!(elf_machine(&tree.join("usr/bin").join(binary)), machine, "{binary} in the {arch} package");
            }
        }
    }
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
