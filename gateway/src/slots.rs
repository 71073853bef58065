//! Pre-handshake slots: what a client may hold before it has proven who it is. A connection takes a
//! [`Slot`] at accept and gives it back when its TLS handshake ends, whichever way. There are at most
//! `limits.max_handshakes` slots in all and `limits.max_handshakes_per_source` per source address
//! (IPv6 by its /64, as [`crate::limiter::source`] groups it); a connection that finds none is
//! closed at once, before any TLS work, and counted ([`Slots::refused`]), not recorded one by one.
//!
//! So one source holding thousands of silent connections holds at most its share of handshakes,
//! many sources together at most `max_handshakes`, and the rest of `max_connections` stays for
//! established connections, whose tunnels never depend on a slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sallyport_metrics::Counter;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limiter::source;

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Its source already has `max_handshakes_per_source` connections before their handshake.
    Source,
    /// `max_handshakes` handshakes are in progress.
    Global,
}

impl NoSlot {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NoSlot::Source => "too many handshakes in progress from this source",
            NoSlot::Global => "too many handshakes in progress",
        }
    }
}

/// The pre-handshake slots of a listener.
pub struct Slots {
    per_source: usize,
    all: Arc<Semaphore>,
    /// Connections before their handshake, per source; only sources with at least one, so at most
    /// `max_handshakes` entries.
    pending: Mutex<HashMap<IpAddr, usize>>,
    /// `sallyport_handshake_slots_refused_total`, and `limiter="handshake_slots"` of
    /// `sallyport_rate_limited_total`.
    refused: Counter,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").finish_non_exhaustive()
    }
}

/// One connection's place before its handshake; given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    source: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.slots.pending();
        if let Some(n) = map.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

impl Slots {
    /// `all` slots in all, `per_source` for each source address.
    pub fn new(all: usize, per_source: usize) -> Arc<Self> {
        Self::counted(all, per_source, Counter::default())
    }

    /// [`Slots::new`], counting connections refused a slot into `refused`.
    pub fn counted(all: usize, per_source: usize, refused: Counter) -> Arc<Self> {
        Arc::new(Self {
            per_source,
            all: Arc::new(Semaphore::new(all)),
            pending: Mutex::new(HashMap::new()),
            refused,
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip`, if its source and the listener have one free.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, NoSlot> {
        let source = source(ip);
        let mut map = self.pending();
        let held = map.get(&source).copied().unwrap_or(0);
        let refused = if held >= self.per_source {
            NoSlot::Source
        } else {
            match self.all.clone().try_acquire_owned() {
                Ok(permit) => {
                    map.insert(source, held + 1);
                    return Ok(Slot {
                        slots: self.clone(),
                        source,
                        _permit: permit,
                    });
                }
                Err(_) => NoSlot::Global,
            }
        };
        self.refused.inc();
        Err(refused)
    }

    /// Connections closed at accept for want of a slot, since start.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// Connections before their handshake now.
    pub fn in_use(&self) -> usize {
        self.pending().values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_holds_its_share_and_gives_it_back() {
        let slots = Slots::new(10, 3);
        let held: Vec<Slot> = (0..3)
            .map(|_| slots.take(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(slots.take(ip("192.0.2.1")).unwrap_err(), NoSlot::Source);
        // Another source is not affected.
        let other = slots.take(ip("192.0.2.2")).unwrap();
        assert_eq!(slots.in_use(), 4);
        drop(held);
        assert!(slots.take(ip("192.0.2.1")).is_ok());
        drop(other);
        assert_eq!(slots.in_use(), 0);
        assert_eq!(slots.refused(), 1);
        assert!(
            slots.pending().is_empty(),
            "no source is kept without a slot"
        );
    }

    #[test]
    fn all_sources_together_hold_at_most_the_global_cap() {
        let slots = Slots::new(4, 2);
        let _held: Vec<Slot> = ["192.0.2.1", "192.0.2.1", "192.0.2.2", "192.0.2.3"]
            .iter()
            .map(|a| slots.take(ip(a)).unwrap())
            .collect();
        assert_eq!(slots.take(ip("192.0.2.4")).unwrap_err(), NoSlot::Global);
        assert_eq!(slots.take(ip("192.0.2.1")).unwrap_err(), NoSlot::Source);
        assert_eq!(slots.refused(), 2);
    }

    #[test]
    fn an_ipv6_source_is_its_slash_64() {
        let slots = Slots::new(10, 1);
        let _a = slots.take(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            slots.take(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            NoSlot::Source
        );
        assert!(slots.take(ip("2001:db8:1:3::1")).is_ok());
    }
}
