//! What an instance is asked to do, and how its run ended: the same words
//! for every executor.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Fence;
use crate::grants::Preopen;

/// What one run is given.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The instance's name: where an executor keeps what belongs to this instance.
    pub instance: String,
    /// argv[0] as the guest sees it.
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub dirs: Vec<Preopen>,
    pub memory_limit: Option<u64>,
    pub cpu_time_limit: Option<Duration>,
    /// A hard CPU limit (`limits.cpu`, millicores), enforced by executors that can.
    pub cpu_limit_millis: Option<u64>,
    /// Past its deadline the guest is stopped at the next epoch tick.
    pub fence: Fence,
}

/// Why a run ended, in the words the instance status uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// Exit code 0.
    Completed,
    /// A non-zero exit code.
    Error,
    Trap,
    MemoryLimitExceeded,
    #[serde(rename = "CPUTimeLimitExceeded")]
    CpuTimeLimitExceeded,
    /// The sandbox could not be set up or the module not instantiated.
    StartError,
    /// The master was silent past `stopOnAgentAfter`.
    StoppedOnDisconnect,
    /// The scratch dirs held more than `limits.ephemeralStorage`: evicted.
    EphemeralStorageLimitExceeded,
    /// A service's `livenessPath` did not answer 2xx: restarted.
    LivenessProbeFailed,
    /// The kernel's OOM killer ended it: its cgroup reached its memory limit.
    #[serde(rename = "OOMKilled")]
    OomKilled,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::Trap => "Trap",
            ExitReason::MemoryLimitExceeded => "MemoryLimitExceeded",
            ExitReason::CpuTimeLimitExceeded => "CPUTimeLimitExceeded",
            ExitReason::StartError => "StartError",
            ExitReason::StoppedOnDisconnect => "StoppedOnDisconnect",
            ExitReason::EphemeralStorageLimitExceeded => "EphemeralStorageLimitExceeded",
            ExitReason::LivenessProbeFailed => "LivenessProbeFailed",
            ExitReason::OomKilled => "OOMKilled",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    pub code: Option<i32>,
    pub reason: ExitReason,
    pub message: String,
}

impl Exit {
    pub fn succeeded(&self) -> bool {
        self.reason == ExitReason::Completed
    }

    pub fn start_error(e: impl std::fmt::Display) -> Exit {
        Exit { code: None, reason: ExitReason::StartError, message: e.to_string() }
    }
}
