//! What one instance may use: memory through a [`ResourceLimiter`], CPU time
//! through a [`CpuMeter`] checked at every epoch tick.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

/// CPU time a guest has spent running: the time its future spends being
/// polled. Time asleep in WASI calls is not counted.
#[derive(Debug)]
pub struct CpuMeter {
    base: Instant,
    /// Nanoseconds in finished polls.
    total: AtomicU64,
    /// Start of the poll under way, in nanoseconds after `base` plus one; 0 when none.
    entered: AtomicU64,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter { base: Instant::now(), total: AtomicU64::new(0), entered: AtomicU64::new(0) }
    }
}

impl CpuMeter {
    pub fn used(&self) -> Duration {
        let mut ns = self.total.load(Ordering::Relaxed);
        let entered = self.entered.load(Ordering::Relaxed);
        if entered != 0 {
            ns += (self.base.elapsed().as_nanos() as u64 + 1).saturating_sub(entered);
        }
        Duration::from_nanos(ns)
    }

    /// Wraps a guest's future so the time spent polling it is counted.
    pub fn meter<F: Future>(self: Arc<Self>, inner: F) -> Metered<F> {
        Metered { inner: Box::pin(inner), meter: self }
    }
}

/// A future whose poll time is added to a [`CpuMeter`].
pub struct Metered<F> {
    inner: Pin<Box<F>>,
    meter: Arc<CpuMeter>,
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = self.meter.base.elapsed().as_nanos() as u64 + 1;
        self.meter.entered.store(start, Ordering::Relaxed);
        let result = self.inner.as_mut().poll(cx);
        let end = self.meter.base.elapsed().as_nanos() as u64 + 1;
        self.meter.entered.store(0, Ordering::Relaxed);
        self.meter.total.fetch_add(end.saturating_sub(start), Ordering::Relaxed);
        result
    }
}

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

    pub fn expired(&self) -> bool {
        chrono::Utc::now().timestamp_millis() >= self.0.load(Ordering::Relaxed)
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

    #[tokio::test]
    async fn the_meter_counts_poll_time_not_sleep() {
        let meter = Arc::new(CpuMeter::default());
        let started = Instant::now();
        meter
            .clone()
            .meter(async {
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(30) {
                    std::hint::black_box(0);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            })
            .await;
        let used = meter.used();
        assert!(used >= Duration::from_millis(30), "{used:?}");
        assert!(used + Duration::from_millis(100) <= started.elapsed(), "the sleep is not counted: {used:?}");
    }
}
