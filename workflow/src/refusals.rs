//! Refusals on the trail, bounded. Every refused attempt is evidence (an approver of one customer
//! touching another's request, a technician aiming a grant at another customer's target, a client
//! with no certificate), but a flood of them must not flood the trail: 2,000 refused attempts are not
//! 2,000 fsync'ed records.
//!
//! [`RefusalTrail`] is the one recorder of refusals, for the gateway (handshakes, CONNECT) and the
//! API alike. Per chain, per source or identity ([`RefusedBy`]) and per event kind, the first
//! `limits.refusals_recorded_per_interval` refusals of each `limits.refusal_interval_seconds` are
//! recorded one by one and durably; the rest, and every refusal of a source or identity already
//! over its failure budget, are counted, and one `refusals_aggregated` record at the end of the
//! interval says how many there were, of what kind, from when to when, with the first of them as a
//! sample. Aggregates are ordinary chain records, so the chain verifies as before. At most
//! [`MAX_TRACKED`] sources and identities are tracked at once; refusals of any further one are
//! counted together, per chain and kind. [`RefusalTrail::run`] writes aggregates as intervals end,
//! and [`RefusalTrail::flush`] writes what is left at shutdown. The counting itself is the pure
//! [`Tally`], tested here with a hand-set clock.
//!
//! [`Context::refused`] records a `/v1` call refused for the caller's role or tenant
//! (`access_refused`): on the caller's customer's chain (`_broker` for technicians and admins), with
//! exactly what the caller was told, so it reveals nothing a 404 hid; and on the chain of the
//! customer whose object it was, when it exists, with what was tried. A refusal that cannot be
//! recorded on the caller's chain is answered 503, as every refusal is when the trail fails.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sallyport_audit::{AuditError, AuditEvent, AuditLog, EventKind, Outcome};
use sallyport_ids::time::rfc3339_micros;
use sallyport_ids::{CustomerId, GrantId, Principal, RequestId, SessionId, SpiffeId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::scope::Scope;
use crate::{Caller, Context, WorkflowError};

/// Most sources and identities whose refusals are counted one window each; past it, refusals of new
/// ones share one window per chain and kind until windows end.
pub const MAX_TRACKED: usize = 10_000;

/// Whom a refusal is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RefusedBy {
    /// An authenticated caller, by its certificate identity (SPIFFE id).
    Identity(String),
    /// An unauthenticated client, by its source address (IPv6 by its /64).
    Source(IpAddr),
}

/// What became of one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Written one by one, and durable.
    Written,
    /// Counted into the interval's aggregate record.
    Counted,
}

/// How many refusals are recorded one by one, and per how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLimits {
    /// Recorded one by one per chain, source or identity and kind in each interval.
    pub per_interval: u32,
    /// The interval.
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WindowKey {
    chain: Option<CustomerId>,
    /// `None`: the shared window of refusals past [`MAX_TRACKED`].
    by: Option<RefusedBy>,
    kind: EventKind,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    written: u32,
    counted: u64,
    first_seen: String,
    last_seen: String,
    /// The first refusal counted, as it would have been recorded.
    sample: Option<AuditEvent>,
}

/// The counting behind [`RefusalTrail`]: windows of refusals per chain, source or identity and kind.
/// Pure: the caller hands in the time and does the writing.
#[derive(Debug)]
pub struct Tally {
    limits: RefusalLimits,
    max_tracked: usize,
    windows: HashMap<WindowKey, Window>,
}

impl Tally {
    /// An empty tally under `limits`, tracking at most `max_tracked` sources and identities.
    pub fn new(limits: RefusalLimits, max_tracked: usize) -> Self {
        Self {
            limits,
            max_tracked,
            windows: HashMap::new(),
        }
    }

    /// Counts refusal `ev` by `by` at `now` (`time` is `now` as RFC 3339). `over_budget`: the source
    /// or identity is already past its failure budget, so it is counted, never written one by one.
    /// Returns whether to write `ev` now, and the aggregate of a window of the same key that had
    /// ended, to be written too.
    pub fn count(
        &mut self,
        by: RefusedBy,
        ev: &AuditEvent,
        over_budget: bool,
        now: Instant,
        time: &str,
    ) -> (Recorded, Option<AuditEvent>) {
        let mut key = WindowKey {
            chain: ev.customer.clone(),
            by: Some(by),
            kind: ev.event,
        };
        // Shared windows are few (chains times kinds), so they may take the map a little past it.
        if !self.windows.contains_key(&key) && self.windows.len() >= self.max_tracked {
            key.by = None;
        }
        let ended = match self.windows.get(&key) {
            Some(w) if w.opened + self.limits.interval <= now => self
                .windows
                .remove_entry(&key)
                .and_then(|(k, w)| self.aggregate(&k, w)),
            _ => None,
        };
        let shared = key.by.is_none();
        let w = self.windows.entry(key).or_insert_with(|| Window {
            opened: now,
            written: 0,
            counted: 0,
            first_seen: String::new(),
            last_seen: String::new(),
            sample: None,
        });
        if !over_budget && !shared && w.written < self.limits.per_interval {
            w.written += 1;
            return (Recorded::Written, ended);
        }
        w.counted += 1;
        if w.sample.is_none() {
            w.first_seen = time.to_owned();
            w.sample = Some(ev.clone());
        }
        w.last_seen = time.to_owned();
        (Recorded::Counted, ended)
    }

    /// Ends the windows opened an interval before `now` (all of them with `all`); returns their
    /// aggregate records.
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<AuditEvent> {
        let interval = self.limits.interval;
        let ended: Vec<WindowKey> = self
            .windows
            .iter()
            .filter(|(_, w)| all || w.opened + interval <= now)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| {
                let w = self.windows.remove(&k)?;
                self.aggregate(&k, w)
            })
            .collect()
    }

    /// Sources and identities (and shared windows) counted now.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The `refusals_aggregated` record of an ended window; `None` when it counted nothing.
    fn aggregate(&self, key: &WindowKey, w: Window) -> Option<AuditEvent> {
        let sample = w.sample?;
        let why = if key.by.is_none() {
            format!(
                "refusals from more than {} sources and identities at once",
                self.max_tracked
            )
        } else if w.written >= self.limits.per_interval {
            format!(
                "refusals past the first {} in {} s",
                self.limits.per_interval,
                self.limits.interval.as_secs()
            )
        } else {
            "refusals past the failure budget".to_owned()
        };
        let mut ev = AuditEvent::new(
            EventKind::RefusalsAggregated,
            Outcome::Deny,
            format!(
                "{} {why}, not recorded one by one; the first: {}",
                w.counted, sample.reason
            ),
        );
        ev.customer = key.chain.clone();
        ev.actor = sample.actor;
        ev.target = sample.target;
        ev.subject = sample.subject;
        ev.grant_id = sample.grant_id;
        ev.request_id = sample.request_id;
        ev.source_ip = sample.source_ip;
        ev.count = Some(w.counted);
        ev.aggregated_event = Some(key.kind);
        ev.first_seen = Some(w.first_seen);
        ev.last_seen = Some(w.last_seen);
        Some(ev)
    }
}

/// The recorder of refusals. Cheap to clone.
#[derive(Clone)]
pub struct RefusalTrail {
    trail: AuditLog,
    limits: RefusalLimits,
    /// Replaced whole by a reload.
    chains: Arc<std::sync::RwLock<Arc<HashSet<CustomerId>>>>,
    tally: Arc<Mutex<Tally>>,
}

impl std::fmt::Debug for RefusalTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalTrail").finish_non_exhaustive()
    }
}

impl RefusalTrail {
    /// Refusals recorded on `trail` within `limits`, on the chains of `customers` (the configured
    /// ones) and `_broker`.
    pub fn new(
        trail: AuditLog,
        limits: RefusalLimits,
        customers: impl IntoIterator<Item = CustomerId>,
    ) -> Self {
        Self {
            trail,
            limits,
            chains: Arc::new(std::sync::RwLock::new(Arc::new(
                customers.into_iter().collect(),
            ))),
            tally: Arc::new(Mutex::new(Tally::new(limits, MAX_TRACKED))),
        }
    }

    /// Whether `customer` has a chain here (is configured).
    pub fn knows(&self, customer: &CustomerId) -> bool {
        self.chains().contains(customer)
    }

    /// The configured customers, after a reload: refusals naming one go on its chain.
    pub fn set_customers(&self, customers: impl IntoIterator<Item = CustomerId>) {
        *self.chains.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(customers.into_iter().collect());
    }

    fn chains(&self) -> Arc<HashSet<CustomerId>> {
        self.chains
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records refusal `ev` by `by`: written and durable when it is among the first of its interval
    /// and `by` is within its budget, counted into the interval's aggregate otherwise. An error means
    /// the record was due and could not be written.
    /// A refusal naming a customer that is not configured (a name a client made up, or a customer
    /// since removed) goes on `_broker`: no client chooses which chains exist.
    pub async fn refused(
        &self,
        by: RefusedBy,
        mut ev: AuditEvent,
        over_budget: bool,
    ) -> Result<Recorded, AuditError> {
        if ev
            .customer
            .as_ref()
            .is_some_and(|c| !self.chains().contains(c))
        {
            ev.customer = None;
        }
        let time = rfc3339_micros(jiff::Timestamp::now());
        let (verdict, ended) = self
            .tally()
            .count(by, &ev, over_budget, Instant::now(), &time);
        if let Some(aggregate) = ended {
            self.write_aggregate(aggregate).await;
        }
        match verdict {
            Recorded::Written => self.trail.append(ev).await.map(|_| Recorded::Written),
            Recorded::Counted => Ok(Recorded::Counted),
        }
    }

    async fn write_aggregate(&self, ev: AuditEvent) {
        // Refusals already answered: kept and written when the trail recovers if it fails now.
        if let Err(e) = self.trail.append_or_keep(ev).await {
            tracing::error!(error = %e, "could not record aggregated refusals; kept for later");
        }
    }

    async fn write_due(&self, all: bool) {
        let due = self.tally().due(Instant::now(), all);
        for ev in due {
            self.write_aggregate(ev).await;
        }
    }

    /// Writes the aggregates of every window, ended or not: at shutdown, once nothing is refused
    /// any more.
    pub async fn flush(&self) {
        self.write_due(true).await;
    }

    /// Writes aggregates as their intervals end, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let step =
            (self.limits.interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.write_due(false).await,
            }
        }
    }
}

/// The object a refused call was about, when it exists.
#[derive(Debug, Clone)]
pub struct Owner {
    /// Its customer.
    pub customer: CustomerId,
    /// The technician it concerns.
    pub technician: Option<SpiffeId>,
    /// Its target.
    pub target: Option<String>,
    /// Its grant, when the caller did not name it (a session's).
    pub grant_id: Option<GrantId>,
}

/// A `/v1` call refused for the caller's role or tenant, as [`Context::refused`] records it. The
/// ids are those the caller named; what only the object tells is in its [`Owner`].
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// What was asked, e.g. "approve request `r-…`".
    pub asked: String,
    /// The request it named.
    pub request_id: Option<RequestId>,
    /// The grant it named.
    pub grant_id: Option<GrantId>,
    /// The session it named.
    pub session_id: Option<SessionId>,
    /// The object, when it exists: its customer sees the attempt on its own chain.
    pub owner: Option<Owner>,
    /// Another customer the call named (a listing of another customer's requests), when it is one
    /// of ours: it sees the attempt on its own chain.
    pub named: Option<CustomerId>,
}

impl Attempt {
    /// An attempt at `asked`.
    pub fn new(asked: impl Into<String>) -> Self {
        Self {
            asked: asked.into(),
            ..Self::default()
        }
    }
}

/// The caller's role and customer, for the object's customer to read.
fn who(id: &SpiffeId) -> String {
    match Scope::of(id) {
        Scope::All => format!("provider admin {id}"),
        Scope::Customer(c) => format!("{} of customer `{c}`, {id},", id.role()),
        Scope::Technician(_) => format!("technician {id}"),
    }
}

impl Context {
    /// Records that `caller` was refused `attempt` with `answer` (a `Forbidden` or `NotFound`), and
    /// returns `answer`; [`WorkflowError::AuditUnavailable`] when the caller's chain cannot take the
    /// record. See the module header for what goes on which chain.
    pub async fn refused(
        &self,
        caller: Caller<'_>,
        attempt: Attempt,
        answer: WorkflowError,
    ) -> WorkflowError {
        let id = &caller.peer.id;
        let mine = match Scope::of(id) {
            Scope::Customer(c) => Some(c),
            Scope::All | Scope::Technician(_) => None,
        };
        let base = |reason: String| {
            let mut ev = AuditEvent::new(EventKind::AccessRefused, Outcome::Deny, reason);
            ev.actor = Some(id.to_string());
            ev.source_ip = Some(caller.ip);
            ev.request_id = attempt.request_id.clone();
            ev.grant_id = attempt.grant_id.clone();
            ev.session_id = attempt.session_id.clone();
            ev
        };
        // What the caller was told, and nothing more: the same whether or not the object exists.
        let mut told = base(format!("{}: refused: {answer}", attempt.asked));
        told.customer = mine.clone();
        // The customer whose object (or name) it was sees who tried what.
        let theirs = match (&attempt.owner, &attempt.named) {
            (Some(o), _) => Some(o.customer.clone()),
            (None, Some(c)) => Some(c.clone()),
            (None, None) => None,
        };
        let other = theirs
            .filter(|c| Some(c) != mine.as_ref() && self.refusals.knows(c))
            .map(|c| {
                let mut ev = base(format!(
                    "{} by {} refused: it is customer `{c}`'s; answered: {answer}",
                    attempt.asked,
                    who(id)
                ));
                if let Some(o) = &attempt.owner {
                    ev.subject = o.technician.clone();
                    ev.target = o.target.clone();
                    ev.grant_id = ev.grant_id.take().or_else(|| o.grant_id.clone());
                }
                ev.customer = Some(c);
                ev
            });
        // On the caller's own chain the object's details are added only when it is the same
        // customer's: then nothing is hidden from that chain's readers.
        if let Some(o) = attempt
            .owner
            .as_ref()
            .filter(|o| Some(&o.customer) == mine.as_ref())
        {
            told.subject = o.technician.clone();
            told.target = o.target.clone();
            told.grant_id = told.grant_id.take().or_else(|| o.grant_id.clone());
        }
        tracing::info!(peer = %id, source_ip = %caller.ip, asked = %attempt.asked, answer = %answer, "API call refused");
        let by = RefusedBy::Identity(id.to_string());
        let theirs = async {
            if let Some(ev) = other
                && let Err(e) = self.refusals.refused(by.clone(), ev, false).await
            {
                tracing::error!(error = %e, "could not record a refused call on the object's chain");
            }
        };
        let (recorded, ()) = tokio::join!(self.refusals.refused(by.clone(), told, false), theirs);
        match recorded {
            Ok(_) => answer,
            Err(e) => {
                tracing::error!(error = %e, "audit trail not writable; a refused call is answered 503");
                WorkflowError::AuditUnavailable
            }
        }
    }
}

/// Records `/v1` refusals for the API's own checks (which chain an auditor may read). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Refusals {
    cx: Context,
}

impl Refusals {
    /// Refusals recorded through `cx`.
    pub fn new(cx: Context) -> Self {
        Self { cx }
    }

    /// See [`Context::refused`].
    pub async fn refused(
        &self,
        caller: Caller<'_>,
        attempt: Attempt,
        answer: WorkflowError,
    ) -> WorkflowError {
        self.cx.refused(caller, attempt, answer).await
    }

    /// The audit chain `caller` may read, `asked` or their own: a customer's approvers and
    /// auditors read only that customer's; admins any they name (or `_broker`); technicians none.
    /// A refusal is recorded. Whether the chain exists is the caller's to check.
    pub async fn chain_to_read(
        &self,
        caller: Caller<'_>,
        asked: Option<String>,
    ) -> Result<String, WorkflowError> {
        match (caller.peer.id.principal(), asked) {
            (Principal::Approver { customer, .. } | Principal::Auditor { customer, .. }, asked) => {
                let mine = customer.to_string();
                if let Some(asked) = asked.filter(|a| *a != mine) {
                    let attempt = Attempt {
                        named: asked.parse().ok(),
                        ..Attempt::new(format!(
                            "read the audit trail of customer `{}`",
                            sallyport_audit::clip(&asked, 64)
                        ))
                    };
                    let message = format!("you can only read the audit trail of customer `{mine}`");
                    return Err(self
                        .refused(caller, attempt, WorkflowError::Forbidden(message))
                        .await);
                }
                Ok(mine)
            }
            (Principal::Admin { .. }, Some(c)) => Ok(c),
            (Principal::Admin { .. }, None) => Err(WorkflowError::invalid(
                "bad_query",
                "name the chain to read: `customer=<id>` (or `_broker`)",
            )),
            (Principal::Technician { .. }, asked) => {
                let attempt = Attempt {
                    named: asked.as_deref().and_then(|a| a.parse().ok()),
                    ..Attempt::new(format!(
                        "read the audit trail of `{}`",
                        sallyport_audit::clip(
                            asked.as_deref().unwrap_or("(no customer named)"),
                            64
                        )
                    ))
                };
                let message = "the audit trail is for the customer's auditors and approvers, and provider admins";
                Err(self
                    .refused(caller, attempt, WorkflowError::Forbidden(message.into()))
                    .await)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(chain: Option<&str>, reason: &str) -> AuditEvent {
        let mut ev = AuditEvent::new(EventKind::Decision, Outcome::Deny, reason);
        ev.customer = chain.map(|c| c.parse().unwrap());
        ev.actor = Some("spiffe://sallyport.local/technician/northwind/alice".into());
        ev
    }

    fn limits(per_interval: u32) -> RefusalLimits {
        RefusalLimits {
            per_interval,
            interval: Duration::from_secs(60),
        }
    }

    fn alice() -> RefusedBy {
        RefusedBy::Identity("alice".into())
    }

    #[test]
    fn the_first_of_an_interval_are_written_the_rest_counted_into_one_aggregate() {
        let mut t = Tally::new(limits(3), 100);
        let t0 = Instant::now();
        let mut written = 0;
        for i in 0..2000u32 {
            let ev = refusal(Some("globex"), &format!("attempt {i}"));
            let (r, ended) = t.count(alice(), &ev, false, t0, &format!("t{i}"));
            assert!(ended.is_none());
            written += u32::from(r == Recorded::Written);
        }
        assert_eq!(written, 3);
        // Nothing is due before the interval ends.
        assert!(t.due(t0 + Duration::from_secs(59), false).is_empty());
        let due = t.due(t0 + Duration::from_secs(60), false);
        assert_eq!(due.len(), 1);
        let a = &due[0];
        assert_eq!(a.event, EventKind::RefusalsAggregated);
        assert_eq!(a.count, Some(1997));
        assert_eq!(a.aggregated_event, Some(EventKind::Decision));
        assert_eq!(a.customer.as_ref().unwrap().as_str(), "globex");
        assert_eq!(
            (a.first_seen.as_deref(), a.last_seen.as_deref()),
            (Some("t3"), Some("t1999"))
        );
        assert!(a.reason.contains("the first: attempt 3"), "{}", a.reason);
        assert!(
            a.reason.contains("past the first 3 in 60 s"),
            "{}",
            a.reason
        );
        assert!(t.is_empty());
        // A new interval starts afresh.
        let (r, _) = t.count(alice(), &refusal(Some("globex"), "x"), false, t0, "t");
        assert_eq!(r, Recorded::Written);
    }

    #[test]
    fn windows_are_per_chain_source_or_identity_and_kind() {
        let mut t = Tally::new(limits(1), 100);
        let now = Instant::now();
        let mut count = |by: RefusedBy, ev: AuditEvent| t.count(by, &ev, false, now, "t").0;
        assert_eq!(
            count(alice(), refusal(Some("acme"), "a")),
            Recorded::Written
        );
        assert_eq!(
            count(alice(), refusal(Some("acme"), "a")),
            Recorded::Counted
        );
        assert_eq!(
            count(alice(), refusal(Some("globex"), "a")),
            Recorded::Written
        );
        assert_eq!(count(alice(), refusal(None, "a")), Recorded::Written);
        let mut auth = refusal(Some("acme"), "a");
        auth.event = EventKind::AuthFailure;
        assert_eq!(count(alice(), auth), Recorded::Written);
        let bob = RefusedBy::Identity("bob".into());
        assert_eq!(count(bob, refusal(Some("acme"), "a")), Recorded::Written);
        let ip = RefusedBy::Source("192.0.2.1".parse().unwrap());
        assert_eq!(count(ip, refusal(None, "a")), Recorded::Written);
        // Windows that counted nothing end without a record.
        let due = t.due(now, true);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].count, Some(1));
    }

    #[test]
    fn over_budget_refusals_are_only_counted() {
        let mut t = Tally::new(limits(20), 100);
        let now = Instant::now();
        let ev = refusal(None, "too many failed authentications");
        assert_eq!(t.count(alice(), &ev, true, now, "t").0, Recorded::Counted);
        let a = t.due(now, true).pop().unwrap();
        assert!(a.reason.contains("past the failure budget"), "{}", a.reason);
    }

    #[test]
    fn memory_is_bounded_past_the_tracked_sources() {
        let mut t = Tally::new(limits(5), 10);
        let now = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            t.count(RefusedBy::Source(ip), &refusal(None, "x"), false, now, "t");
        }
        // Ten sources, and one shared window for every other.
        assert_eq!(t.len(), 11);
        let due = t.due(now, true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, Some(9_990));
        assert!(
            due[0].reason.contains("more than 10 sources"),
            "{}",
            due[0].reason
        );
    }

    #[test]
    fn a_window_that_ended_unflushed_is_aggregated_by_the_next_refusal() {
        let mut t = Tally::new(limits(1), 100);
        let t0 = Instant::now();
        let ev = refusal(Some("acme"), "x");
        t.count(alice(), &ev, false, t0, "t0");
        t.count(alice(), &ev, false, t0, "t1");
        let (r, ended) = t.count(alice(), &ev, false, t0 + Duration::from_secs(61), "t2");
        assert_eq!(r, Recorded::Written);
        assert_eq!(ended.unwrap().count, Some(1));
    }
}
