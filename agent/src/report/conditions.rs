//! Node conditions from facts: thresholds decide what a reading means, and the
//! tracker keeps a pressure condition True until it has been clear for the
//! transition period, so a machine near a threshold does not flap.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use wasmlet_api::{Bytes, Condition, ConditionStatus, ConditionType};

use super::probe::Facts;

/// When a reading counts as pressure. Defaults as the kubelet's hard eviction thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub memory_available_min: Bytes,
    pub nodefs_available_min_percent: f64,
    pub inodes_free_min_percent: f64,
    pub pid_available_min_percent: f64,
    pub transition_period: Duration,
}

/// The agent's own health, which decides Ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHealth {
    /// Err says why the data dir cannot be written.
    pub data_dir: Result<(), DataDirProblem>,
    /// Ok carries the runtime's description; Err why it did not start.
    pub runtime: Result<String, String>,
}

/// Why the data dir cannot take the agent's writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDirProblem {
    /// `DataDirNotWritable` or `DataDirFull`: the Ready condition's reason.
    pub reason: &'static str,
    pub message: String,
}

/// What one reading says about one condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: ConditionType,
    pub state: Observed,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The condition's bad state: pressure present, or the agent not ready.
    Bad,
    Good,
    /// The facts needed were not available.
    Unknown,
}

/// Reads the facts against the thresholds, one observation per condition type.
pub fn observe(facts: &Facts, health: &AgentHealth, t: &Thresholds) -> Vec<Observation> {
    let mut out = Vec::with_capacity(ConditionType::ALL.len());

    out.push(match (&health.data_dir, &health.runtime) {
        (Err(why), _) => Observation { kind: ConditionType::Ready, state: Observed::Bad, reason: why.reason, message: why.message.clone() },
        (_, Err(why)) => Observation { kind: ConditionType::Ready, state: Observed::Bad, reason: "RuntimeNotReady", message: why.clone() },
        (Ok(()), Ok(runtime)) => Observation {
            kind: ConditionType::Ready,
            state: Observed::Good,
            reason: "AgentReady",
            message: format!("agent is ready: data dir writable, {runtime}"),
        },
    });

    let mem = &facts.memory;
    out.push(if mem.total_bytes == 0 {
        unknown(ConditionType::MemoryPressure, "MemoryStatsUnavailable", "memory figures could not be read from /proc/meminfo")
    } else if mem.available_bytes < t.memory_available_min.get() {
        Observation {
            kind: ConditionType::MemoryPressure,
            state: Observed::Bad,
            reason: "AgentHasInsufficientMemory",
            message: format!(
                "memory available {} is below the threshold {}",
                Bytes::new(mem.available_bytes).human(),
                t.memory_available_min.human()
            ),
        }
    } else {
        Observation {
            kind: ConditionType::MemoryPressure,
            state: Observed::Good,
            reason: "AgentHasSufficientMemory",
            message: format!(
                "memory available {} is above the threshold {}",
                Bytes::new(mem.available_bytes).human(),
                t.memory_available_min.human()
            ),
        }
    });

    out.push(match &facts.disk {
        Err(why) => unknown(ConditionType::DiskPressure, "DiskStatsUnavailable", why),
        Ok(disk) => {
            let bytes_free = percent(disk.available_bytes, disk.total_bytes);
            let inodes_free = percent(disk.inodes_free, disk.inodes_total);
            let mut problems = Vec::new();
            if bytes_free.is_some_and(|p| p < t.nodefs_available_min_percent) {
                problems.push(format!(
                    "{:.1}% of {} free, below {}%",
                    bytes_free.unwrap_or(0.0),
                    disk.path,
                    t.nodefs_available_min_percent
                ));
            }
            if inodes_free.is_some_and(|p| p < t.inodes_free_min_percent) {
                problems.push(format!("{:.1}% of inodes free, below {}%", inodes_free.unwrap_or(0.0), t.inodes_free_min_percent));
            }
            if problems.is_empty() {
                Observation {
                    kind: ConditionType::DiskPressure,
                    state: Observed::Good,
                    reason: "AgentHasNoDiskPressure",
                    message: format!(
                        "{:.1}% of {} and {:.1}% of its inodes free",
                        bytes_free.unwrap_or(100.0),
                        disk.path,
                        inodes_free.unwrap_or(100.0)
                    ),
                }
            } else {
                Observation {
                    kind: ConditionType::DiskPressure,
                    state: Observed::Bad,
                    reason: "AgentHasDiskPressure",
                    message: problems.join("; "),
                }
            }
        }
    });

    let pids = &facts.pids;
    out.push(match percent(pids.max.saturating_sub(pids.used), pids.max) {
        None => unknown(ConditionType::PidPressure, "PIDStatsUnavailable", "pid_max could not be read"),
        Some(free) if free < t.pid_available_min_percent => Observation {
            kind: ConditionType::PidPressure,
            state: Observed::Bad,
            reason: "AgentHasInsufficientPID",
            message: format!("{} of {} PIDs in use, {free:.1}% free, below {}%", pids.used, pids.max, t.pid_available_min_percent),
        },
        Some(free) => Observation {
            kind: ConditionType::PidPressure,
            state: Observed::Good,
            reason: "AgentHasSufficientPID",
            message: format!("{} of {} PIDs in use, {free:.1}% free", pids.used, pids.max),
        },
    });

    let usable: Vec<String> = facts
        .interfaces
        .iter()
        .filter(|i| i.up && !i.loopback && i.addresses.iter().any(|a| !a.is_loopback()))
        .map(|i| i.name.clone())
        .collect();
    out.push(if usable.is_empty() {
        Observation {
            kind: ConditionType::NetworkUnavailable,
            state: Observed::Bad,
            reason: "NoNetworkInterface",
            message: "no non-loopback interface is up with an address".to_string(),
        }
    } else {
        Observation {
            kind: ConditionType::NetworkUnavailable,
            state: Observed::Good,
            reason: "NetworkAvailable",
            message: format!("up with an address: {}", usable.join(", ")),
        }
    });
    out
}

fn unknown(kind: ConditionType, reason: &'static str, message: &str) -> Observation {
    Observation { kind, state: Observed::Unknown, reason, message: message.to_string() }
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

/// Turns observations into conditions, remembering transitions and when
/// each pressure was last seen.
#[derive(Debug, Default)]
pub struct ConditionTracker {
    transition_period: Duration,
    tracked: BTreeMap<ConditionType, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    condition: Condition,
    /// When the bad state was last observed (pressure conditions only).
    last_bad: Option<Instant>,
}

impl ConditionTracker {
    pub fn new(transition_period: Duration) -> Self {
        ConditionTracker { transition_period, tracked: BTreeMap::new() }
    }

    /// Applies one reading. `now` drives the transition period; `wall` stamps
    /// heartbeats and transitions.
    pub fn update(&mut self, observations: Vec<Observation>, now: Instant, wall: DateTime<Utc>) -> Vec<Condition> {
        for obs in observations {
            let ready = obs.kind == ConditionType::Ready;
            let previous = self.tracked.get(&obs.kind);
            let last_bad = match obs.state {
                Observed::Bad => Some(now),
                _ => previous.and_then(|t| t.last_bad),
            };
            let bad_status = if ready { ConditionStatus::False } else { ConditionStatus::True };
            let good_status = if ready { ConditionStatus::True } else { ConditionStatus::False };

            let (status, reason, message) = match obs.state {
                Observed::Bad => (bad_status, obs.reason.to_string(), obs.message),
                Observed::Unknown => (ConditionStatus::Unknown, obs.reason.to_string(), obs.message),
                Observed::Good => {
                    // Ready follows the agent's health at once; a pressure
                    // condition must stay clear for the whole period first.
                    let held = !ready
                        && previous.is_some_and(|p| p.condition.status == bad_status)
                        && last_bad.is_some_and(|t| now.saturating_duration_since(t) < self.transition_period);
                    match (held, previous) {
                        (true, Some(p)) => {
                            let clear_for = now.saturating_duration_since(last_bad.unwrap_or(now));
                            (
                                bad_status,
                                p.condition.reason.clone(),
                                format!(
                                    "{}; clear for {}s, stays {} until clear for {}s",
                                    obs.message,
                                    clear_for.as_secs(),
                                    bad_status,
                                    self.transition_period.as_secs()
                                ),
                            )
                        }
                        _ => (good_status, obs.reason.to_string(), obs.message),
                    }
                }
            };
            let last_transition_time = match previous {
                Some(p) if p.condition.status == status => p.condition.last_transition_time,
                _ => wall,
            };
            self.tracked.insert(
                obs.kind,
                Tracked {
                    condition: Condition { kind: obs.kind, status, reason, message, last_heartbeat_time: wall, last_transition_time },
                    last_bad,
                },
            );
        }
        self.tracked.values().map(|t| t.condition.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmlet_api::PidUsage;

    fn thresholds() -> Thresholds {
        Thresholds {
            memory_available_min: Bytes::new(100 << 20),
            nodefs_available_min_percent: 10.0,
            inodes_free_min_percent: 5.0,
            pid_available_min_percent: 5.0,
            transition_period: Duration::from_secs(30),
        }
    }

    fn health() -> AgentHealth {
        AgentHealth { data_dir: Ok(()), runtime: Ok("wasmtime 48".into()) }
    }

    fn state(observations: &[Observation], kind: ConditionType) -> Observed {
        observations.iter().find(|o| o.kind == kind).unwrap().state
    }

    #[test]
    fn each_threshold_is_crossed_and_cleared() {
        let t = thresholds();
        let mut f = Facts::healthy_example();
        let obs = observe(&f, &health(), &t);
        for kind in ConditionType::ALL {
            assert_eq!(state(&obs, kind), Observed::Good, "{kind}");
        }

        f.memory.available_bytes = 99 << 20;
        assert_eq!(state(&observe(&f, &health(), &t), ConditionType::MemoryPressure), Observed::Bad);
        f.memory.available_bytes = 100 << 20;
        assert_eq!(state(&observe(&f, &health(), &t), ConditionType::MemoryPressure), Observed::Good);

        let mut disk = f.disk.clone().unwrap();
        disk.available_bytes = 9 << 30;
        f.disk = Ok(disk.clone());
        let obs = observe(&f, &health(), &t);
        assert_eq!(state(&obs, ConditionType::DiskPressure), Observed::Bad);
        disk.available_bytes = 50 << 30;
        disk.inodes_free = 40;
        f.disk = Ok(disk);
        let obs = observe(&f, &health(), &t);
        assert_eq!(state(&obs, ConditionType::DiskPressure), Observed::Bad);
        assert!(obs[2].message.contains("inodes"), "{}", obs[2].message);
        f.disk = Err("statvfs failed".into());
        assert_eq!(state(&observe(&f, &health(), &t), ConditionType::DiskPressure), Observed::Unknown);

        f.pids.used = 32000;
        assert_eq!(state(&observe(&f, &health(), &t), ConditionType::PidPressure), Observed::Bad);
        f.pids = PidUsage { used: 0, max: 0 };
        assert_eq!(state(&observe(&f, &health(), &t), ConditionType::PidPressure), Observed::Unknown);

        f.interfaces[0].up = false;
        assert_eq!(state(&observe(&f, &health(), &t), ConditionType::NetworkUnavailable), Observed::Bad);

        let problem = DataDirProblem { reason: "DataDirNotWritable", message: "read-only filesystem".into() };
        let sick = AgentHealth { data_dir: Err(problem), runtime: Ok(String::new()) };
        let obs = observe(&f, &sick, &t);
        assert_eq!(state(&obs, ConditionType::Ready), Observed::Bad);
        assert_eq!(obs[0].reason, "DataDirNotWritable");
    }

    fn obs(kind: ConditionType, state: Observed) -> Vec<Observation> {
        vec![Observation { kind, state, reason: "R", message: "m".into() }]
    }

    #[test]
    fn pressure_clears_only_after_the_transition_period() {
        let mut tracker = ConditionTracker::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let w0 = Utc::now();
        let at = |s: u64| (t0 + Duration::from_secs(s), w0 + chrono::Duration::seconds(s as i64));

        let (i, w) = at(0);
        let c = tracker.update(obs(ConditionType::MemoryPressure, Observed::Good), i, w);
        assert_eq!(c[0].status, ConditionStatus::False);
        let (i, w) = at(5);
        let c = tracker.update(obs(ConditionType::MemoryPressure, Observed::Bad), i, w);
        assert_eq!(c[0].status, ConditionStatus::True, "pressure shows at once");
        assert_eq!(c[0].last_transition_time, w);
        let became_true = w;

        for s in [10, 20, 34] {
            let (i, w) = at(s);
            let c = tracker.update(obs(ConditionType::MemoryPressure, Observed::Good), i, w);
            assert_eq!(c[0].status, ConditionStatus::True, "still held at {s}s");
            assert_eq!(c[0].last_transition_time, became_true, "no transition while held");
            assert_eq!(c[0].last_heartbeat_time, w);
        }
        let (i, w) = at(35);
        let c = tracker.update(obs(ConditionType::MemoryPressure, Observed::Good), i, w);
        assert_eq!(c[0].status, ConditionStatus::False, "clear for 30s");
        assert_eq!(c[0].last_transition_time, w);
    }

    #[test]
    fn ready_follows_health_at_once_and_unknown_is_its_own_state() {
        let mut tracker = ConditionTracker::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let w0 = Utc::now();
        let c = tracker.update(obs(ConditionType::Ready, Observed::Bad), t0, w0);
        assert_eq!(c[0].status, ConditionStatus::False);
        let c = tracker.update(obs(ConditionType::Ready, Observed::Good), t0 + Duration::from_secs(1), w0);
        assert_eq!(c[0].status, ConditionStatus::True);
        let c = tracker.update(obs(ConditionType::DiskPressure, Observed::Unknown), t0, w0);
        assert_eq!(c.iter().find(|c| c.kind == ConditionType::DiskPressure).unwrap().status, ConditionStatus::Unknown);
    }
}
