//! `hello`: prints a greeting, its arguments and its environment (sorted by key).
//!
//! Built twice: as the wasm32-wasip1 core module `hello` and, from this same file, as the
//! wasm32-wasip2 component `hello-component`.

use std::io::{self, Write};
use std::process::ExitCode;

fn run() -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "hello from wasmlet")?;
    for (i, arg) in std::env::args_os().enumerate() {
        writeln!(out, "arg[{i}]={}", arg.to_string_lossy())?;
    }
    let mut vars: Vec<_> = std::env::vars_os().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in vars {
        writeln!(out, "env {}={}", key.to_string_lossy(), value.to_string_lossy())?;
    }
    out.flush()
}

fn main() -> ExitCode {
    if let Err(e) = run() {
        eprintln!("hello: writing to stdout failed: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("hello: done");
    ExitCode::SUCCESS
}
