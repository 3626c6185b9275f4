//! `crasher`: prints `crashing in N ms`, sleeps N ms (`--after-ms N`, default 1000), then traps
//! with `unreachable` inside `crash_here`, so the trap's backtrace names that function.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: crasher [--after-ms <N>]";

fn parse_args() -> Result<u64, String> {
    let mut after_ms = 1000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--after-ms" => {
                let v = args.next().ok_or("--after-ms needs a value")?;
                after_ms = v.parse().map_err(|e| format!("invalid --after-ms {v:?}: {e}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(after_ms)
}

#[inline(never)]
fn crash_here() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

fn main() -> ExitCode {
    let after_ms = match parse_args() {
        Ok(ms) => ms,
        Err(e) => {
            eprintln!("crasher: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!("crashing in {after_ms} ms");
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_millis(after_ms));
    crash_here()
}
