//! `fs-probe`: reports what the sandbox lets the guest see. Arguments are handled in order:
//!
//! * `<path>`: reads it (a directory is listed) and prints `<path>: ok <N> bytes`,
//!   `<path>: ok dir <N> entries` or `<path>: denied <error>`;
//! * `--write <path>`: creates/overwrites the file, prints `write <path>: ok` or
//!   `write <path>: denied <error>`;
//! * `--symlink <target> <link>`: creates the symbolic link `<link>` whose content is `<target>`
//!   (taken as is, like `ln -s`), prints `symlink <link>: ok` or `symlink <link>: denied <error>`.
//!   Rust std has no stable symlink call for WASI, so this calls WASI preview 1's `path_symlink`
//!   itself, relative to the link's parent directory (which must be inside a preopen);
//! * `--rename <from> <to>`: renames a file or directory, prints `rename <from>: ok` or
//!   `rename <from>: denied <error>`;
//! * `--fill <path>`: writes 1 MiB chunks to the file until a write fails, prints
//!   `fill <path>: stopped after <N> bytes: <error>` (or runs until the guest is stopped);
//! * `--env`: prints every environment variable as `env K=V`, sorted by key;
//! * `--`: every later argument is a path.
//!
//! Always exits 0 (2 only for a malformed command line: `--write`, `--fill` without a path,
//! `--symlink`, `--rename` without both paths).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

const USAGE: &str =
    "usage: fs-probe [--env] [--write <path>] [--symlink <target> <link>] [--rename <from> <to>] [--fill <path>] [--] [<path>...]";

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    /// `path_symlink(old_path, fd, new_path) -> errno` of WASI preview 1: creates `new_path`
    /// (relative to the directory `fd`) as a symbolic link containing `old_path`.
    #[link_name = "path_symlink"]
    fn wasi_path_symlink(old_path: *const u8, old_path_len: usize, fd: i32, new_path: *const u8, new_path_len: usize) -> i32;
}

/// Creates `link` as a symbolic link to `target`.
fn symlink(target: &str, link: &str) -> io::Result<()> {
    use std::os::wasi::io::AsRawFd as _;
    let link = Path::new(link);
    let name = link.file_name().and_then(|n| n.to_str()).ok_or_else(|| io::Error::other("the link needs a file name"))?;
    let parent = match link.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = fs::File::open(parent)?;
    // SAFETY: both pointers and lengths describe live UTF-8 buffers for the duration of the
    // call, and `dir` is an open descriptor that outlives it.
    let errno = unsafe { wasi_path_symlink(target.as_ptr(), target.len(), dir.as_raw_fd(), name.as_ptr(), name.len()) };
    if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(errno)) }
}

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

/// Writes to `path` until a write fails; returns the bytes written and the failure.
fn fill(path: &str) -> (u64, io::Error) {
    let mut file = match fs::File::create(path) {
        Ok(file) => file,
        Err(e) => return (0, e),
    };
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return (written, io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => written += n as u64,
            Err(e) => return (written, e),
        }
    }
}

/// The next argument, or exit 2 naming the option that lacks it.
fn operand(args: &mut impl Iterator<Item = String>, option: &str) -> String {
    args.next().unwrap_or_else(|| {
        let _ = io::stdout().flush();
        eprintln!("fs-probe: {option} needs more paths\n{USAGE}");
        std::process::exit(2);
    })
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
                    eprintln!("fs-probe: --write needs a path\n{USAGE}");
                    std::process::exit(2);
                };
                let _ = match fs::write(&path, b"written by fs-probe\n") {
                    Ok(()) => writeln!(out, "write {path}: ok"),
                    Err(e) => writeln!(out, "write {path}: denied {e}"),
                };
            }
            "--rename" if !only_paths => {
                let (from, to) = (operand(&mut args, "--rename"), operand(&mut args, "--rename"));
                let _ = match fs::rename(&from, &to) {
                    Ok(()) => writeln!(out, "rename {from}: ok"),
                    Err(e) => writeln!(out, "rename {from}: denied {e}"),
                };
            }
            "--fill" if !only_paths => {
                let path = operand(&mut args, "--fill");
                let (written, error) = fill(&path);
                let _ = writeln!(out, "fill {path}: stopped after {written} bytes: {error}");
            }
            "--symlink" if !only_paths => {
                let (Some(target), Some(link)) = (args.next(), args.next()) else {
                    let _ = out.flush();
                    eprintln!("fs-probe: --symlink needs a target and a link\n{USAGE}");
                    std::process::exit(2);
                };
                let _ = match symlink(&target, &link) {
                    Ok(()) => writeln!(out, "symlink {link}: ok"),
                    Err(e) => writeln!(out, "symlink {link}: denied {e}"),
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
