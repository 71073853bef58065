//! Plain per-key call rates (governor): request filings per technician, API calls per identity. A
//! key over its rate is refused with how long to wait; keys whose budget has refilled are forgotten
//! now and then, so the map stays bounded by the keys active in the last minute.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A steady per-key call rate with a burst; keys whose budget has refilled are forgotten now and then.
pub struct CallLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    calls: AtomicU64,
}

impl std::fmt::Debug for CallLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallLimiter").finish_non_exhaustive()
    }
}

impl CallLimiter {
    /// Allows `per_minute` calls per key, with bursts of `burst`.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            calls: AtomicU64::new(0),
        }
    }

    /// Counts a call by `key`: `Err(wait)` when the key is over its rate.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.calls.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| {
                not_until
                    .wait_time_from(DefaultClock::default().now())
                    .max(Duration::from_secs(1))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_limiter_refuses_past_the_burst_per_key() {
        let l = CallLimiter::new(1, 2);
        assert!(l.check("a").is_ok() && l.check("a").is_ok());
        let wait = l.check("a").unwrap_err();
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(60));
        assert!(l.check("b").is_ok());
    }
}
