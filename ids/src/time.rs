//! The one clock and the one time format of Sallyport.
//!
//! Times cross crate boundaries as Unix seconds (`i64`) or as [`Timestamp`]s, and are shown to people
//! and written on the trail as RFC 3339 UTC: [`rfc3339`] for whole seconds (API answers, grant
//! windows), [`rfc3339_micros`] for audit records. [`Clock`] is where "now" comes from: the system
//! clock in the broker, a hand-set one in tests of rules that depend on time (expiry, windows).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

pub use jiff::Timestamp;

/// Where "now" comes from. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock; else microseconds since the Unix epoch, set by hand.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands at `unix` seconds until it is moved with [`Clock::advance`] (for tests).
    pub fn manual(unix: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(unix.saturating_mul(1_000_000)))),
        }
    }

    /// Moves a manual clock on by `seconds`; the system clock is not moved.
    pub fn advance(&self, seconds: i64) {
        if let Some(m) = &self.manual {
            m.fetch_add(seconds.saturating_mul(1_000_000), Ordering::Relaxed);
        }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        match &self.manual {
            None => Timestamp::now(),
            Some(m) => Timestamp::from_microsecond(m.load(Ordering::Relaxed))
                .unwrap_or(Timestamp::UNIX_EPOCH),
        }
    }

    /// Now, in Unix seconds.
    pub fn unix(&self) -> i64 {
        self.now().as_second()
    }
}

/// Now by the system clock, in Unix seconds.
pub fn now_unix() -> i64 {
    Timestamp::now().as_second()
}

/// RFC 3339 UTC of Unix seconds, e.g. `2026-01-31T22:00:00Z`; empty if out of range.
pub fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// RFC 3339 UTC with microseconds, e.g. `2026-01-31T22:00:00.000001Z`: the `time` of audit records.
pub fn rfc3339_micros(t: Timestamp) -> String {
    format!("{t:.6}")
}

/// RFC 3339 UTC without fractional seconds, of a timestamp.
pub fn rfc3339_seconds(t: Timestamp) -> String {
    format!("{t:.0}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "");
        let t = Timestamp::from_microsecond(1_000_001).unwrap();
        assert_eq!(rfc3339_micros(t), "1970-01-01T00:00:01.000001Z");
        assert_eq!(rfc3339_seconds(t), "1970-01-01T00:00:01Z");
        assert!(rfc3339_micros(Timestamp::now()).ends_with('Z'));
    }

    #[test]
    fn a_manual_clock_moves_only_by_hand() {
        let c = Clock::manual(1_000);
        assert_eq!(c.unix(), 1_000);
        c.advance(60);
        assert_eq!(c.clone().unix(), 1_060);
        let s = Clock::system();
        s.advance(1_000_000);
        assert!((s.unix() - now_unix()).abs() < 5);
    }
}
