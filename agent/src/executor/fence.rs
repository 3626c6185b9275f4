//! The fence: a deadline past which an instance must not run.

use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A deadline after which an instance must not run: the master has been
/// silent for the workload's `stopOnAgentAfter`, and may be handing the
/// instance to another node. Checked at every epoch tick, so a guest stops
/// within a tick of the deadline even if the whole agent was frozen past it.
#[derive(Debug, Clone)]
pub struct Fence(Arc<std::sync::atomic::AtomicI64>);

impl Default for Fence {
    fn default() -> Self {
        Fence(Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX)))
    }
}

impl Fence {
    /// Sets the deadline (milliseconds since the Unix epoch).
    pub fn set_deadline(&self, unix_ms: i64) {
        self.0.store(unix_ms, Ordering::Relaxed);
    }

    /// The deadline (milliseconds since the Unix epoch; `i64::MAX`: none).
    pub fn deadline(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn expired(&self) -> bool {
        chrono::Utc::now().timestamp_millis() >= self.0.load(Ordering::Relaxed)
    }
}
