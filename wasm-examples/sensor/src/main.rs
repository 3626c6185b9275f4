//! `sensor`: a daemon standing in for an IoT reader.
//!
//! Every `--interval <ms>` (default 1000) it reads `--file <path>` (default `/data/value`) and
//! prints one JSON line to stdout, flushed:
//! `{"seq":N,"unixMs":MS,"value":"<trimmed text>"}`, or, when the file cannot be read,
//! `{"seq":N,"unixMs":MS,"error":"<io error>"}`. `seq` counts lines from 0. Runs forever.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: sensor [--interval <ms>] [--file <path>]";

struct Options {
    interval: Duration,
    file: String,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options { interval: Duration::from_millis(1000), file: "/data/value".to_string() };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--interval" => {
                let v = args.next().ok_or("--interval needs a value")?;
                let ms: u64 = v.parse().map_err(|e| format!("invalid --interval {v:?}: {e}"))?;
                opts.interval = Duration::from_millis(ms);
            }
            "--file" => opts.file = args.next().ok_or("--file needs a value")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(opts)
}

/// Appends `s` to `out` as the inside of a JSON string literal.
fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

fn reading(seq: u64, file: &str) -> String {
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut line = format!("{{\"seq\":{seq},\"unixMs\":{unix_ms},");
    match std::fs::read(file) {
        Ok(bytes) => {
            line.push_str("\"value\":\"");
            push_json_escaped(&mut line, String::from_utf8_lossy(&bytes).trim());
        }
        Err(e) => {
            line.push_str("\"error\":\"");
            push_json_escaped(&mut line, &e.to_string());
        }
    }
    line.push_str("\"}\n");
    line
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("sensor: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = io::stdout();
    for seq in 0u64.. {
        let line = reading(seq, &opts.file);
        if let Err(e) = stdout.write_all(line.as_bytes()).and_then(|()| stdout.flush()) {
            eprintln!("sensor: writing to stdout failed: {e}");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(opts.interval);
    }
    ExitCode::SUCCESS
}
