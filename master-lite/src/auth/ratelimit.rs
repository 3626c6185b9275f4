//! The refusal rate limit: how many requests one source address may have
//! refused (`401` without a valid token, `403` for a role that may not) per
//! second, before the rest are answered `429` with `Retry-After` and are
//! counted rather than written to the audit log one by one.
//!
//! Only refusals count and only refusals are limited: a request with a valid
//! token that is allowed always goes through, so thousands of agents behind
//! one NAT address are never slowed by a flood from the same address.
//! An IPv6 source counts by its /64 (one host's usual allocation), so hopping
//! addresses within it does not escape the limit.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

pub struct RefusalLimit {
    /// None with `--refused-per-second 0`.
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl RefusalLimit {
    /// `per_second` refusals per source, `burst` at once; a rate of 0 means no limit.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RefusalLimit { limiter, clock: DefaultClock::default() }
    }

    /// Counts one refusal of `source`: `Err(retry after)` when it is over its limit.
    pub fn refuse(&self, source: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(&key(source)).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets sources whose limit has fully recovered (bounds the table's memory).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Sources remembered now.
    pub fn sources(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// What one source is counted as: its IPv4 address, or its IPv6 /64.
fn key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_waits_and_others_are_not_affected() {
        let limit = RefusalLimit::new(1, 3);
        let flood: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.refuse(flood).is_ok());
        }
        let wait = limit.refuse(flood).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limit.refuse("192.0.2.2".parse().unwrap()).is_ok(), "another source has its own burst");
        // One host's IPv6 addresses count together.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.refuse(a).is_ok());
        }
        assert!(limit.refuse(b).is_err());
        assert_eq!(limit.sources(), 3);
        let unlimited = RefusalLimit::new(0, 1);
        assert!((0..1000).all(|_| unlimited.refuse(flood).is_ok()));
    }
}
