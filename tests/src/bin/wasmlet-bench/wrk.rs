//! Load from a separate process: runs `wrk` (Debian's package) against a URL
//! and reads throughput and latency percentiles from its `--latency` report.
//! An API that wants a bearer token gets it on every request ([`run_authorized`]).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::support::{INSTALL_HINT, find_on_path};

const WRK: &str = "wrk";

/// The shape of a load: wrk's `-t`, `-c` and `-d`.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
}

/// What a wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkReport {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// Fails with an install hint when wrk is not on the PATH.
pub fn require() -> anyhow::Result<()> {
    match find_on_path(WRK) {
        Some(_) => Ok(()),
        None => bail!("{WRK} not found: {INSTALL_HINT}"),
    }
}

/// Runs wrk with `--latency` against `url` and reads its report.
pub fn run(url: &str, load: Load) -> anyhow::Result<WrkReport> {
    run_with(url, None, load)
}

/// The same, sending `Authorization: Bearer <token>` with every request.
pub fn run_authorized(url: &str, token: &str, load: Load) -> anyhow::Result<WrkReport> {
    run_with(url, Some(token), load)
}

fn run_with(url: &str, bearer: Option<&str>, load: Load) -> anyhow::Result<WrkReport> {
    let seconds = load.duration.as_secs().max(1);
    let mut command = Command::new(WRK);
    command.args(["-t", &load.threads.to_string(), "-c", &load.connections.to_string(), "-d", &format!("{seconds}s")]);
    if let Some(token) = bearer {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.args(["--latency", url]).output().map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{WRK} not found: {INSTALL_HINT}"),
        _ => anyhow::Error::new(error).context(format!("starting {WRK}")),
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said: Vec<&str> = [stdout.trim(), stderr.trim()].into_iter().filter(|text| !text.is_empty()).collect();
        bail!("{WRK} against {url} failed ({}): {}", output.status, said.join("\n"));
    }
    parse(&stdout).with_context(|| format!("reading the report of {WRK} against {url}:\n{stdout}"))
}

/// Reads `Requests/sec`, the 50% and 99% lines of `Latency Distribution` and
/// any error counts from the output of `wrk --latency`.
pub fn parse(text: &str) -> anyhow::Result<WrkReport> {
    let mut requests_per_second = None;
    let mut p50_ms = None;
    let mut p99_ms = None;
    let mut errors = 0;
    let mut in_distribution = false;
    for line in text.lines().map(str::trim) {
        if line == "Latency Distribution" {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((percent, latency)) = percentile_line(line) {
                match percent {
                    "50" => p50_ms = Some(duration_ms(latency)?),
                    "99" => p99_ms = Some(duration_ms(latency)?),
                    _ => {}
                }
                continue;
            }
            in_distribution = false;
        }
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            let value = value.trim();
            requests_per_second = Some(value.parse::<f64>().with_context(|| format!("Requests/sec `{value}` is not a number"))?);
        } else if let Some(counts) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            for part in counts.split(',') {
                let count = part.split_whitespace().nth(1).with_context(|| format!("socket error count in `{line}`"))?;
                errors += count.parse::<u64>().with_context(|| format!("socket error count `{count}` in `{line}`"))?;
            }
        } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
            let count = count.trim();
            errors += count.parse::<u64>().with_context(|| format!("non-2xx count `{count}`"))?;
        }
    }
    Ok(WrkReport {
        requests_per_second: requests_per_second.context("no `Requests/sec:` line")?,
        p50_ms: p50_ms.context("no 50% line under `Latency Distribution` (was wrk run with --latency?)")?,
        p99_ms: p99_ms.context("no 99% line under `Latency Distribution` (was wrk run with --latency?)")?,
        errors,
    })
}

/// `50%  1.10ms` → `("50", "1.10ms")`.
fn percentile_line(line: &str) -> Option<(&str, &str)> {
    let mut words = line.split_whitespace();
    let percent = words.next()?.strip_suffix('%')?;
    let latency = words.next()?;
    if words.next().is_some() || percent.parse::<f64>().is_err() {
        return None;
    }
    Some((percent, latency))
}

/// A wrk duration (`456.78us`, `1.10ms`, `2.00s`, `1.50m`, `1.00h`) in milliseconds.
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("latency `{text}` has no unit"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().with_context(|| format!("latency `{text}` is not a number"))?;
    let ms_per_unit = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => bail!("latency `{text}` has an unknown unit `{unit}`"),
    };
    Ok(number * ms_per_unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wrk -t1 -c32 -d10s --latency` against a fast local endpoint.
    const SAMPLE: &str = "\
Running 10s test @ http://127.0.0.1:40123/status
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  456.78us  12.34ms   89.01%
    Req/Sec    26.12k     1.23k   28.00k    75.00%
  Latency Distribution
     50%  987.00us
     75%    1.40ms
     90%    1.80ms
     99%    3.25ms
  261234 requests in 10.00s, 302.15MB read
Requests/sec:  26110.42
Transfer/sec:     30.20MB
";

    /// A slow endpoint with errors, as wrk prints it.
    const SLOW_WITH_ERRORS: &str = "\
Running 10s test @ http://127.0.0.1:19111/metrics
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   141.82ms  111.33ms   1.73s    82.98%
    Req/Sec   234.75     55.76   303.00     90.00%
  Latency Distribution
     50%  100.86ms
     75%  176.63ms
     90%  297.80ms
     99%    1.51s
  2340 requests in 10.00s, 129.55MB read
  Socket errors: connect 0, read 2, write 0, timeout 5
  Non-2xx or 3xx responses: 3
Requests/sec:    233.49
Transfer/sec:     12.92MB
";

    #[test]
    fn reads_a_fast_run() {
        let report = parse(SAMPLE).expect("parses");
        assert_eq!(report.requests_per_second, 26110.42);
        assert!((report.p50_ms - 0.987).abs() < 1e-9, "{}", report.p50_ms);
        assert_eq!(report.p99_ms, 3.25);
        assert_eq!(report.errors, 0);
    }

    #[test]
    fn reads_seconds_and_errors() {
        let report = parse(SLOW_WITH_ERRORS).expect("parses");
        assert_eq!(report.requests_per_second, 233.49);
        assert_eq!(report.p50_ms, 100.86);
        assert_eq!(report.p99_ms, 1510.0);
        assert_eq!(report.errors, 10);
    }

    #[test]
    fn converts_every_unit() {
        assert_eq!(duration_ms("500.00us").expect("us"), 0.5);
        assert_eq!(duration_ms("2.50ms").expect("ms"), 2.5);
        assert_eq!(duration_ms("1.20s").expect("s"), 1200.0);
        assert_eq!(duration_ms("1.50m").expect("m"), 90_000.0);
        assert_eq!(duration_ms("1.00h").expect("h"), 3_600_000.0);
        assert!(duration_ms("3.00").is_err());
        assert!(duration_ms("3.00ns").is_err());
        assert!(duration_ms("fast").is_err());
    }

    #[test]
    fn a_run_without_latency_distribution_is_an_error() {
        let without: String = SAMPLE
            .lines()
            .filter(|l| !l.trim_start().starts_with(['5', '7', '9']) && !l.contains("Distribution"))
            .map(|l| format!("{l}\n"))
            .collect();
        let error = parse(&without).expect_err("no percentiles");
        assert!(error.to_string().contains("--latency"), "{error}");
    }

    #[test]
    fn a_failed_run_is_an_error() {
        let error = parse("unable to connect to 127.0.0.1:19112 Connection refused\n").expect_err("nothing measured");
        assert!(error.to_string().contains("Requests/sec"), "{error}");
    }
}
