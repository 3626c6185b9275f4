//! `wasmlet-bench`: measures what wasmlet costs on this machine and sets the
//! figures next to a well-known reference, so a change can be judged on numbers
//! rather than impressions.
//!
//! Usage: `wasmlet-bench [SCENARIO ...]`; without a scenario every one runs.
//!
//! Every figure is one JSON object on its own line on stdout, e.g.
//! `{"scenario":"report","subject":"agent","metric":"idle_rss_bytes","value":12345678}`;
//! a figure compared with a reference or a goal also carries `reference`, `goal`
//! and `meets_goal`. Progress goes to stderr.
//!
//! The bench reports, it never judges: a slow machine gives poor figures, not a
//! failure. It fails (exit code 1) only when a tool or process cannot start, and
//! then says which one; an unknown scenario name is a usage error (exit code 2).
//!
//! Adding a scenario: write `<name>.rs` with
//! `pub fn run(figures: &mut Figures) -> anyhow::Result<()>` and add one entry
//! to [`SCENARIOS`]. Shared pieces live in `figures` (output), `wrk` (load from a
//! separate process), `simnode` (simulated nodes speaking the master ↔ agent
//! protocol, thousands on one tokio runtime) and `support` (helper processes,
//! ports, HTTP polling, placing manifests, percentiles, CPU time).
//!
//! Scenarios: `report` (the node report against prometheus-node-exporter),
//! `start` (manifest to Running, cold and warm), `pull` (apply to Running of
//! a 5 MiB module no cache holds, pulled from an OCI registry on loopback
//! against uploaded to the master; needs Debian's `docker-registry`, which
//! `make test-deps` installs), `density` (1000 idle
//! daemons in one agent against one `wasmtime run` process each; needs the
//! wasmtime CLI that `make bench-deps` installs), `failover` (a master and
//! three real agents: SIGKILL of the node running 100 instances until all run
//! elsewhere), `heartbeats` (10000 simulated nodes renewing their leases
//! against one master: latency, CPU, RSS) and `schedule` (10000 replicas onto
//! 1000 simulated nodes: placements per second) and `http` (the `http-hello`
//! wasi:http component through the agent's ingress against `wasmtime serve`
//! of it, and a native axum server as the ceiling: requests per second, p50,
//! p99; needs the wasmtime CLI too) and `footprint` (the packaged agent's
//! binary size and memory, natively and the arm64 one under qemu; needs
//! `make debs`) and `ha` (three masters on three etcd members against one
//! master on redb: failover, applies, placements, heartbeats).
#![forbid(unsafe_code)]

mod density;
mod failover;
mod figures;
mod footprint;
mod ha;
mod heartbeats;
mod http;
mod pull;
mod report;
mod schedule;
mod simnode;
mod start;
mod support;
mod wrk;

use std::process::ExitCode;

use figures::Figures;

/// A named measurement the bench can run.
struct Scenario {
    name: &'static str,
    /// One line for `--help` and the progress log.
    about: &'static str,
    run: fn(&mut Figures) -> anyhow::Result<()>,
}

/// Every scenario, in the order a plain `wasmlet-bench` runs them.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "report",
        about: "the agent's node report: idle RSS, CPU per sample, /status and /metrics under load, \
                against prometheus-node-exporter",
        run: report::run,
    },
    Scenario {
        name: "start",
        about: "time from a manifest appearing to its instance Running, cold (compiling) and warm (cached), p50 and p99",
        run: start::run,
    },
    Scenario {
        name: "pull",
        about: "apply to Running of a 5 MiB module no cache holds, pulled from an OCI registry against uploaded to the master, \
                p50 and p99",
        run: pull::run,
    },
    Scenario {
        name: "density",
        about: "memory of 1000 idle sensor daemons in one agent, against one `wasmtime run` process each",
        run: density::run,
    },
    Scenario {
        name: "failover",
        about: "time from SIGKILL of a node running 100 instances to all of them Running on healthy nodes, p50 and p99",
        run: failover::run,
    },
    Scenario {
        name: "heartbeats",
        about: "10000 simulated nodes renewing their lease every 2 s: lease latency p50/p99, master CPU and RSS",
        run: heartbeats::run,
    },
    Scenario {
        name: "schedule",
        about: "10000 replicas onto 1000 simulated nodes: time to placed and to Running, placements/s, master CPU and RSS",
        run: schedule::run,
    },
    Scenario {
        name: "ha",
        about: "three masters on three etcd members against one on redb: leader kill to the new leader's first write, \
                applies/s, placements/s, heartbeats of 10000 nodes",
        run: ha::run,
    },
    Scenario {
        name: "http",
        about: "the http-hello component through the agent's ingress against `wasmtime serve`, and a native axum server as the \
                ceiling: req/s, p50/p99",
        run: http::run,
    },
    Scenario {
        name: "footprint",
        about: "the packaged agent's binary size and RSS, idle and with a sensor, natively and for arm64 under qemu",
        run: footprint::run,
    },
];

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Request<'a> {
    Help,
    Run(Vec<&'a Scenario>),
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Scenario {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// The scenarios named by `args` (all of them when none is named), or the
/// names that are not scenarios.
fn parse_args<'a>(scenarios: &'a [Scenario], args: &[String]) -> Result<Request<'a>, Vec<String>> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Request::Help);
    }
    if args.is_empty() {
        return Ok(Request::Run(scenarios.iter().collect()));
    }
    let mut selected = Vec::new();
    let mut unknown = Vec::new();
    for arg in args {
        match scenarios.iter().find(|s| s.name == arg) {
            Some(scenario) => selected.push(scenario),
            None => unknown.push(arg.clone()),
        }
    }
    if unknown.is_empty() { Ok(Request::Run(selected)) } else { Err(unknown) }
}

fn known_scenarios() -> String {
    SCENARIOS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

fn usage() -> String {
    let mut text = String::from(
        "usage: wasmlet-bench [SCENARIO ...]\n\n\
         Runs the named scenarios (all when none is named) and prints one JSON line per figure on stdout.\n\n\
         scenarios:\n",
    );
    for scenario in SCENARIOS {
        text.push_str(&format!("  {:<10} {}\n", scenario.name, scenario.about));
    }
    text
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let selected = match parse_args(SCENARIOS, &args) {
        Ok(Request::Help) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Ok(Request::Run(selected)) => selected,
        Err(unknown) => {
            eprintln!(
                "wasmlet-bench: unknown scenario {}; known scenarios: {}",
                unknown.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
                known_scenarios()
            );
            return ExitCode::from(2);
        }
    };

    let mut failed = Vec::new();
    for scenario in selected {
        eprintln!("wasmlet-bench: scenario `{}`: {}", scenario.name, scenario.about);
        let mut figures = Figures::new(scenario.name, Box::new(std::io::stdout()));
        // Every process a scenario starts is stopped by a guard when `run` returns,
        // also on an error or a panic (unwinding drops the guards).
        if let Err(error) = (scenario.run)(&mut figures) {
            eprintln!("wasmlet-bench: scenario `{}` failed: {error:#}", scenario.name);
            failed.push(scenario.name);
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("wasmlet-bench: failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_argument_runs_every_scenario() {
        assert_eq!(parse_args(SCENARIOS, &[]), Ok(Request::Run(SCENARIOS.iter().collect())));
    }

    #[test]
    fn named_scenarios_run_in_the_order_given() {
        assert_eq!(parse_args(SCENARIOS, &args(&["report"])), Ok(Request::Run(vec![&SCENARIOS[0]])));
    }

    #[test]
    fn unknown_names_are_all_reported() {
        assert_eq!(parse_args(SCENARIOS, &args(&["report", "nope", "--fast"])), Err(args(&["nope", "--fast"])));
    }

    #[test]
    fn help_lists_every_scenario() {
        assert_eq!(parse_args(SCENARIOS, &args(&["report", "--help"])), Ok(Request::Help));
        for scenario in SCENARIOS {
            assert!(usage().contains(scenario.name));
        }
    }

    #[test]
    fn scenario_names_are_unique() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
    }
}
