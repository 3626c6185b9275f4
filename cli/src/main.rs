//! `wasmlet`: parses the command line and runs the command; errors go to
//! stderr as one `error: …` line and the exit code is 1.
#![forbid(unsafe_code)]

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    match wasmlet_cli::commands::Cli::parse().execute() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
