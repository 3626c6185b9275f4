//! What an instance uses while it runs, read by the API and metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Live figures of one instance, read by metrics while it runs.
#[derive(Debug, Default)]
pub struct Usage {
    /// Linear memory held now, in bytes.
    pub memory: Arc<AtomicU64>,
    /// CPU time of the current run.
    pub cpu: Arc<CpuMeter>,
    /// What the kernel counts for the current run, when it runs in a cgroup of
    /// its own (process isolation); then it is the truth for CPU and memory.
    pub cgroup: std::sync::Mutex<Option<CgroupUsage>>,
}

/// An instance's own cgroup, as last read, with the limits it was given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupUsage {
    pub stats: crate::process::cgroup::CgroupStats,
    pub cpu_limit_millis: Option<u64>,
}

impl Usage {
    /// CPU time of the current run: the kernel's count where there is one.
    pub fn cpu_used(&self) -> Duration {
        match &*self.cgroup.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(cgroup) => cgroup.stats.cpu_usage,
            None => self.cpu.used(),
        }
    }

    /// The cgroup figures of the current run, if it has a cgroup.
    pub fn cgroup(&self) -> Option<CgroupUsage> {
        self.cgroup.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

#[cfg(test)]
mod tests {
    use super::*;

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
