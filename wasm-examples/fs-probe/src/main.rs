//! `fs-probe`: reports what the sandbox lets the guest see. Arguments are handled in order:
//!
//! * `<path>`: reads it (a directory is listed) and prints `<path>: ok <N> bytes`,
//!   `<path>: ok dir <N> entries` or `<path>: denied <error>`;
//! * `--write <path>`: creates/overwrites the file, prints `write <path>: ok` or
//!   `write <path>: denied <error>`;
//! * `--env`: prints every environment variable as `env K=V`, sorted by key;
//! * `--`: every later argument is a path.
//!
//! Always exits 0 (2 only for a malformed command line: `--write` without a path).

use std::fs;
use std::io::{self, Write};

fn probe_read(path: &str) -> io::Result<String> {
    if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        let mut entries = 0usize;
        for entry in fs::read_dir(path)? {
            entry?;
            entries += 1;
        }
        Ok(format!("ok dir {entries} entries"))
    } else {
        Ok(format!("ok {} bytes", fs::read(path)?.len()))
    }
}

fn main() {
    let mut out = io::stdout().lock();
    let mut args = std::env::args().skip(1);
    let mut only_paths = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--" if !only_paths => only_paths = true,
            "--env" if !only_paths => {
                let mut vars: Vec<_> = std::env::vars_os().collect();
                vars.sort_by(|a, b| a.0.cmp(&b.0));
                for (key, value) in vars {
                    let _ = writeln!(out, "env {}={}", key.to_string_lossy(), value.to_string_lossy());
                }
            }
            "--write" if !only_paths => {
                let Some(path) = args.next() else {
                    let _ = out.flush();
                    eprintln!("fs-probe: --write needs a path\nusage: fs-probe [--env] [--write <path>] [--] [<path>...]");
                    std::process::exit(2);
                };
                let _ = match fs::write(&path, b"written by fs-probe\n") {
                    Ok(()) => writeln!(out, "write {path}: ok"),
                    Err(e) => writeln!(out, "write {path}: denied {e}"),
                };
            }
            path => {
                let _ = match probe_read(path) {
                    Ok(result) => writeln!(out, "{path}: {result}"),
                    Err(e) => writeln!(out, "{path}: denied {e}"),
                };
            }
        }
        let _ = out.flush();
    }
}
