//! `spin`: burns CPU in a busy loop forever (for CPU limits, fuel and epoch interruption).
//!
//! Prints `spinning` first. With `--seconds N` (fractions allowed) it stops after N seconds of
//! wall time, checked every 2^20 iterations, and exits 0.

use std::hint::black_box;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: spin [--seconds <N>]";

fn parse_args() -> Result<Option<Duration>, String> {
    let mut limit = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let v = args.next().ok_or("--seconds needs a value")?;
                let secs: f64 = v.parse().map_err(|e| format!("invalid --seconds {v:?}: {e}"))?;
                limit = Some(Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid --seconds {v:?}: {e}"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(limit)
}

fn main() -> ExitCode {
    let limit = match parse_args() {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("spin: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!("spinning");
    let _ = std::io::stdout().flush();

    let start = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rounds: u64 = 0;
    loop {
        for _ in 0..(1u32 << 20) {
            // A 64-bit LCG step; black_box keeps every iteration from being folded away.
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407));
        }
        rounds += 1;
        if limit.is_some_and(|limit| start.elapsed() >= limit) {
            break;
        }
    }
    black_box(x);
    eprintln!("spin: stopped after {rounds} x 2^20 iterations");
    ExitCode::SUCCESS
}
