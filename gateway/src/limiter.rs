//! Failure budgets (governor), with a penalty box. Plain call rates (API calls, request filings) are
//! the workflow crate's `CallLimiter`.
//!
//! The rule: a client that presented a valid certificate is judged by its identity alone. Every
//! refusal of its CONNECTs (a missing, forged or expired grant, another customer, target or port,
//! a policy denial, a revoked grant) spends that identity's budget (`limits.auth_failures_per_minute`,
//! `limits.auth_failure_burst`); past it the identity's CONNECTs are answered 429 until the budget
//! refills, and nobody else is affected, whatever address they share. A failed handshake (no,
//! untrusted or expired certificate) can only be pinned on its source address: it spends that
//! address's budget (`limits.unauthenticated_failures_per_minute`, `limits.unauthenticated_failure_burst`),
//! larger, since a NAT or VPN address carries many clients. An address past it is never dropped
//! before its handshake: the broker cannot tell its good clients from its bad one until a
//! certificate is presented, and a valid certificate is always served. What the budget ends is the
//! address's failed handshakes being recorded one by one (they are aggregated); what one address
//! can hold at once is bounded by the pre-handshake slots ([`crate::slots`]).

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
    /// A source address (IPv6 by its /64) whose handshakes failed: unauthenticated failures.
    Source(IpAddr),
    /// A certificate identity (SPIFFE id) whose CONNECTs were refused: answered 429 past its budget.
    Identity(String),
}

/// A failure budget: a steady rate per minute, and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Failures per minute, steady.
    pub per_minute: u32,
    /// Failures allowed at once before the rate applies.
    pub burst: u32,
}

impl Budget {
    fn quota(self) -> Quota {
        let per_minute = NonZeroU32::new(self.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::per_minute(per_minute).allow_burst(burst)
    }
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
    identities: DefaultKeyedRateLimiter<FailKey>,
    sources: DefaultKeyedRateLimiter<FailKey>,
    blocked: Mutex<HashMap<FailKey, Instant>>,
    failures: AtomicU64,
}

impl std::fmt::Debug for FailureLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLimiter").finish_non_exhaustive()
    }
}

impl FailureLimiter {
    /// Allows each identity the failures of `identity`, each source address those of `source`.
    pub fn new(identity: Budget, source: Budget) -> Self {
        Self {
            identities: RateLimiter::keyed(identity.quota()),
            sources: RateLimiter::keyed(source.quota()),
            blocked: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
        }
    }

    fn limiter(&self, key: &FailKey) -> &DefaultKeyedRateLimiter<FailKey> {
        match key {
            FailKey::Source(_) => &self.sources,
            FailKey::Identity(_) => &self.identities,
        }
    }

    fn retain_recent(&self) {
        for l in [&self.identities, &self.sources] {
            l.retain_recent();
            l.shrink_to_fit();
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

    /// Records a failure by `key`; returns true when that failure is over the budget (it spent the
    /// last of it, or there was none left).
    pub fn record_failure(&self, key: FailKey) -> bool {
        let clock = DefaultClock::default();
        // Forget keys whose budget has refilled, now and then, so memory stays bounded.
        if self.failures.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.retain_recent();
            let now = Instant::now();
            self.blocked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, until| *until > now);
        }
        match self.limiter(&key).check_key(&key) {
            Ok(()) => false,
            Err(not_until) => {
                let wait = not_until.wait_time_from(clock.now());
                let mut map = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() >= MAX_BLOCKED {
                    let now = Instant::now();
                    map.retain(|_, until| *until > now);
                    self.retain_recent();
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

    fn budget(per_minute: u32, burst: u32) -> Budget {
        Budget { per_minute, burst }
    }

    #[test]
    fn blocks_after_the_burst_and_only_that_key() {
        let l = FailureLimiter::new(budget(1, 3), budget(1, 3));
        let bad = FailKey::Identity("mallory".into());
        let good = FailKey::Identity("alice".into());
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
        assert!(
            l.blocked_for(&FailKey::Source("10.0.0.1".parse().unwrap()))
                .is_none()
        );
    }

    #[test]
    fn identities_and_addresses_have_their_own_budgets() {
        let l = FailureLimiter::new(budget(1, 2), budget(1, 5));
        let nat = FailKey::Source("198.51.100.7".parse().unwrap());
        for _ in 0..5 {
            assert!(!l.record_failure(nat.clone()));
        }
        assert!(l.record_failure(nat.clone()));
        // An address over its budget says nothing about the identities behind it.
        let alice = FailKey::Identity("alice".into());
        assert!(l.blocked_for(&alice).is_none());
        assert!(!l.record_failure(alice.clone()) && !l.record_failure(alice.clone()));
        assert!(l.record_failure(alice.clone()));
        assert!(l.blocked_for(&alice).is_some());
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
