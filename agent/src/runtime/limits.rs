//! What one instance may use: memory through a [`ResourceLimiter`]; CPU time
//! (a [`crate::executor::CpuMeter`]) and the fence are checked at every epoch
//! tick, and end the run with these errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Most table elements an instance may have (function tables of large programs stay well below).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Memory bookkeeping of one store. A refused growth is remembered, so an
/// instance that then traps or exits is reported as `MemoryLimitExceeded`.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: Option<usize>,
    /// Bytes of linear memory the instance holds now, shared with metrics.
    in_use: Arc<AtomicU64>,
    /// What `in_use` was before the growth under way, restored if the growth fails after all.
    before_growth: u64,
    pub refused: bool,
}

impl MemoryLimiter {
    pub fn new(limit: Option<u64>, in_use: Arc<AtomicU64>) -> Self {
        in_use.store(0, Ordering::Relaxed);
        MemoryLimiter { limit: limit.map(|l| l as usize), in_use, before_growth: 0, refused: false }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Several memories count together: what the others hold plus this one's new size.
        let others = (self.in_use.load(Ordering::Relaxed) as usize).saturating_sub(current);
        let total = others + desired;
        if self.limit.is_some_and(|limit| total > limit) || maximum.is_some_and(|max| desired > max) {
            self.refused = true;
            return Ok(false);
        }
        self.before_growth = self.in_use.swap(total as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Allowed here but refused by the engine (the instance's pool slot is full): a limit all the same.
    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.refused = true;
        self.in_use.store(self.before_growth, Ordering::Relaxed);
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }
}

/// The error an epoch callback raises when the instance's fence has expired.
#[derive(Debug, thiserror::Error)]
#[error("stopped: the master has been silent longer than the workload's stopOnAgentAfter")]
pub struct Fenced;

/// The error an epoch callback raises when a guest has used up its CPU time.
#[derive(Debug, thiserror::Error)]
#[error("CPU time limit of {limit:?} exceeded")]
pub struct CpuTimeLimitExceeded {
    pub limit: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_growth_beyond_the_limit_is_refused_and_remembered() {
        let in_use = Arc::new(AtomicU64::new(0));
        let mut limiter = MemoryLimiter::new(Some(2 << 20), in_use.clone());
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(limiter.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert_eq!(in_use.load(Ordering::Relaxed), 2 << 20);
        assert!(!limiter.memory_growing(2 << 20, 3 << 20, None).unwrap());
        assert!(limiter.refused);
        assert_eq!(in_use.load(Ordering::Relaxed), 2 << 20);
    }
}
