//! `memhog`: grows its memory 1 MiB at a time, writing every chunk so its pages are touched,
//! and prints `allocated N MiB` (flushed) after each step.
//!
//! * default: plain `vec![1u8; 1 MiB]` pushes, so when the host refuses to grow linear memory
//!   the Rust allocator aborts — the module traps.
//! * `--graceful`: uses `try_reserve_exact`; on refusal prints `refused at N MiB` and exits 3.
//! * `--max-mib N`: stops after N MiB and then sleeps forever, holding the memory.

use std::hint::black_box;
use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

const MIB: usize = 1 << 20;
const USAGE: &str = "usage: memhog [--graceful] [--max-mib <N>]";

struct Options {
    graceful: bool,
    max_mib: Option<u64>,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options { graceful: false, max_mib: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--graceful" => opts.graceful = true,
            "--max-mib" => {
                let v = args.next().ok_or("--max-mib needs a value")?;
                opts.max_mib = Some(v.parse().map_err(|e| format!("invalid --max-mib {v:?}: {e}"))?);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(opts)
}

/// One more touched MiB, or `None` when the allocator (i.e. the host) refuses the memory.
fn try_chunk(chunks: &mut Vec<Vec<u8>>) -> Option<()> {
    chunks.try_reserve(1).ok()?;
    let mut chunk = Vec::new();
    chunk.try_reserve_exact(MIB).ok()?;
    chunk.resize(MIB, 1u8);
    chunks.push(chunk);
    Some(())
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("memhog: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = io::stdout();
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut mib: u64 = 0;
    while opts.max_mib.is_none_or(|max| mib < max) {
        if opts.graceful {
            if try_chunk(&mut chunks).is_none() {
                let _ = writeln!(stdout, "refused at {mib} MiB");
                let _ = stdout.flush();
                return ExitCode::from(3);
            }
        } else {
            chunks.push(vec![1u8; MIB]);
        }
        black_box(&mut chunks);
        mib += 1;
        let _ = writeln!(stdout, "allocated {mib} MiB");
        let _ = stdout.flush();
    }
    eprintln!("memhog: holding {mib} MiB");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        black_box(&chunks);
    }
}
