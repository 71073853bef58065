//! Failed authentications (governor): per source IP and per identity, with a penalty box. A key that
//! spends its failure budget is refused (429, or dropped before its next handshake) until the budget
//! refills. Plain call rates (API calls, request filings) are the workflow crate's `CallLimiter`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

const MAX_BLOCKED: usize = 100_000;

/// Who failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailKey {
    /// A source address (IPv6 by its /64) that failed TLS handshakes: dropped before the next one.
    Handshake(IpAddr),
    /// A source address (IPv6 by its /64) that failed grant checks: answered 429.
    Ip(IpAddr),
    /// A certificate identity (SPIFFE id) that failed grant checks: answered 429.
    Identity(String),
}

/// The address a limit applies to: IPv4 as is, IPv6 by its /64 (one host's usual allocation).
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Counts failures and blocks keys that fail too often.
pub struct FailureLimiter {
    limiter: DefaultKeyedRateLimiter<FailKey>,
    blocked: Mutex<HashMap<FailKey, Instant>>,
    failures: AtomicU64,
}

impl std::fmt::Debug for FailureLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLimiter").finish_non_exhaustive()
    }
}

impl FailureLimiter {
    /// Allows `per_minute` failures per key, with bursts of `burst`.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            blocked: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
        }
    }

    /// How long `key` is still blocked, if it is.
    pub fn blocked_for(&self, key: &FailKey) -> Option<Duration> {
        let mut map = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let until = *map.get(key)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            map.remove(key);
            None
        }
    }

    /// Records a failure by `key`; returns true when that failure spent the budget.
    pub fn record_failure(&self, key: FailKey) -> bool {
        let clock = DefaultClock::default();
        // Forget keys whose budget has refilled, now and then, so memory stays bounded.
        if self.failures.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            let now = Instant::now();
            self.blocked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, until| *until > now);
        }
        match self.limiter.check_key(&key) {
            Ok(()) => false,
            Err(not_until) => {
                let wait = not_until.wait_time_from(clock.now());
                let mut map = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() >= MAX_BLOCKED {
                    let now = Instant::now();
                    map.retain(|_, until| *until > now);
                    self.limiter.retain_recent();
                }
                if map.len() < MAX_BLOCKED {
                    map.insert(key, Instant::now() + wait.max(Duration::from_secs(1)));
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_burst_and_only_that_key() {
        let l = FailureLimiter::new(1, 3);
        let bad = FailKey::Ip("10.0.0.1".parse().unwrap());
        let good = FailKey::Ip("10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(!l.record_failure(bad.clone()));
            assert!(l.blocked_for(&bad).is_none());
        }
        assert!(l.record_failure(bad.clone()));
        let wait = l.blocked_for(&bad).unwrap();
        assert!(
            wait > Duration::from_secs(30) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(l.blocked_for(&good).is_none());
        assert!(l.blocked_for(&FailKey::Identity("x".into())).is_none());
    }

    #[test]
    fn ipv6_is_limited_by_its_slash_64() {
        let a = source("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = source("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, source("2001:db8:1:3::1".parse().unwrap()));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(source(v4), v4);
        assert_eq!(source("::ffff:192.0.2.1".parse().unwrap()), v4);
    }
}
