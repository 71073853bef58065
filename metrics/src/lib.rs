//! The broker's metrics: one Prometheus registry (`prometheus-client`, the Prometheus project's Rust
//! client), its metric families, and [`Metrics`], the cheap handle (an `Arc`) every crate records
//! through. Rendered as OpenMetrics text by [`Metrics::encode`] for `/metrics`.
//!
//! Labels are bounded: every label value is either a closed enum of [`labels`] or a configured
//! customer id (with `_none` for a refusal that names no configured customer), never a technician
//! name or anything a client sent. Each customer's series are resolved once, when the customer is
//! added ([`Metrics::new`], [`Metrics::add_customer`]), into a [`CustomerMetrics`] of plain counter
//! and gauge handles, so recording on the CONNECT path is an atomic add with no lookup by label and
//! no allocation.
//!
//! Families the broker samples rather than counts (live sessions, handshakes in progress, requests
//! by state, active locks, webhook queues) are gauges set just before each scrape by whoever serves
//! `/metrics`. README.md ("Metrics") lists every family with its type, labels and meaning.
//!
//! This crate sits right above `ids`, so the audit writer, notifications, the workflow and the
//! gateway can all record into it.

pub mod labels;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sallyport_ids::CustomerId;

use labels::{
    BytesLabels, CustomerLabel, KindLabel, LimiterLabel, OutcomeLabel, RefusalLabels,
    RequestLabels, SinkLabels,
};
pub use labels::{
    Direction, HandshakeFailure, Limiter, ReloadOutcome, RequestState, TunnelRefusal,
};
pub use prometheus_client::metrics::counter::Counter;

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `customer` label of a refusal that names no configured customer.
pub const NO_CUSTOMER: &str = "_none";

/// Decision latency buckets, seconds: 10 µs to 100 ms.
const DECISION_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1,
];
/// Audit group-commit (write and fsync) buckets, seconds: 100 µs to 2.5 s.
const COMMIT_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Filing-to-approval buckets, seconds: 1 s to a day.
const APPROVAL_BUCKETS: [f64; 14] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0,
    86_400.0,
];

fn approval_histogram() -> Histogram {
    Histogram::new(APPROVAL_BUCKETS)
}

/// The series of `family` under `labels`, as a handle of its own. The family's read guard ends
/// here: two lookups in one expression would otherwise hold one while the next waits to insert.
fn resolve<L, M, C>(family: &Family<L, M, C>, labels: &L) -> M
where
    L: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    family.get_or_create(labels).clone()
}

/// A count as a gauge value.
fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The registry and every metric family. Cheap to clone; clones record into the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    /// A registry with no customers, for commands and tests that record nowhere anyone reads.
    fn default() -> Self {
        Self::new(std::iter::empty::<&CustomerId>())
    }
}

struct Families {
    opened: Family<CustomerLabel, Counter>,
    refused: Family<RefusalLabels, Counter>,
    live: Family<CustomerLabel, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    requests: Family<RequestLabels, Gauge>,
    approval: Family<CustomerLabel, Histogram, fn() -> Histogram>,
    webhook_failures: Family<CustomerLabel, Counter>,
    webhook_queued: Family<CustomerLabel, Gauge>,
    siem_failures: Family<SinkLabels, Counter>,
    siem_lag: Family<SinkLabels, Gauge>,
}

struct Inner {
    registry: Registry,
    families: Families,
    customers: RwLock<HashMap<CustomerId, Arc<CustomerMetrics>>>,
    /// Refusals that name no configured customer, by reason.
    unattributed: [Counter; TunnelRefusal::ALL.len()],
    decision: Histogram,
    audit_commit: Histogram,
    audit_failures: Counter,
    handshake_failures: [Counter; HandshakeFailure::ALL.len()],
    rate_limited: [Counter; Limiter::ALL.len()],
    live_sessions: Gauge,
    handshakes_in_progress: Gauge,
    locks_active: Gauge,
    reloads: [Counter; ReloadOutcome::ALL.len()],
}

/// One customer's series, resolved once. Recording is an atomic operation on a handle.
#[derive(Debug)]
pub struct CustomerMetrics {
    opened: Counter,
    refused: [Counter; TunnelRefusal::ALL.len()],
    live: Gauge,
    up: Counter,
    down: Counter,
    requests: [Gauge; RequestState::ALL.len()],
    approval: Histogram,
    webhook_failures: Counter,
    webhook_queued: Gauge,
}

impl CustomerMetrics {
    /// A tunnel of this customer opened (its open record is durable): counted, and live until
    /// [`CustomerMetrics::tunnel_closed`].
    pub fn tunnel_opened(&self) {
        self.opened.inc();
        self.live.inc();
    }

    /// A tunnel counted by [`CustomerMetrics::tunnel_opened`] closed.
    pub fn tunnel_closed(&self) {
        self.live.dec();
    }

    /// A CONNECT concerning this customer was refused.
    pub fn tunnel_refused(&self, why: TunnelRefusal) {
        self.refused[why.index()].inc();
    }

    /// `n` bytes delivered from the technician to the target.
    pub fn bytes_up(&self, n: u64) {
        self.up.inc_by(n);
    }

    /// `n` bytes delivered from the target to the technician.
    pub fn bytes_down(&self, n: u64) {
        self.down.inc_by(n);
    }

    /// A request of this customer was approved `after` its filing.
    pub fn approved_after(&self, after: Duration) {
        self.approval.observe(after.as_secs_f64());
    }

    /// A webhook delivery to this customer gave up.
    pub fn webhook_failed(&self) {
        self.webhook_failures.inc();
    }

    /// Notifications waiting in this customer's webhook queue now.
    pub fn set_webhook_queued(&self, n: usize) {
        self.webhook_queued.set(gauge_value(n));
    }

    /// This customer's requests in `state` now.
    pub fn set_requests(&self, state: RequestState, n: u64) {
        self.requests[state as usize].set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// One SIEM sink's series.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    failures: Counter,
    lag: Gauge,
}

impl SinkMetrics {
    /// A delivery attempt failed (the records wait on disk and are sent again).
    pub fn delivery_failed(&self) {
        self.failures.inc();
    }

    /// How far behind the chain the sink is: the age of the oldest record not yet delivered (0
    /// when it has everything).
    pub fn set_lag(&self, lag: Duration) {
        self.lag
            .set(i64::try_from(lag.as_secs()).unwrap_or(i64::MAX));
    }
}

impl Metrics {
    /// A registry with every family, and the series of each of `customers` resolved.
    pub fn new<'a>(customers: impl IntoIterator<Item = &'a CustomerId>) -> Self {
        let mut registry = Registry::with_prefix("sallyport");
        let families = Families {
            opened: Family::default(),
            refused: Family::default(),
            live: Family::default(),
            bytes: Family::default(),
            requests: Family::default(),
            approval: Family::new_with_constructor(approval_histogram),
            webhook_failures: Family::default(),
            webhook_queued: Family::default(),
            siem_failures: Family::default(),
            siem_lag: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "tunnels_opened",
            "Tunnels opened (their allow and open records durable), by customer.",
            families.opened.clone(),
        );
        r.register(
            "tunnels_refused",
            "CONNECTs refused, by customer concerned (_none: no configured customer) and reason.",
            families.refused.clone(),
        );
        r.register(
            "tunnels_live",
            "Tunnels open now, by customer.",
            families.live.clone(),
        );
        r.register(
            "tunnel_bytes",
            "Bytes relayed, by customer and direction (up: technician to target), counted as delivered.",
            families.bytes.clone(),
        );
        r.register(
            "requests",
            "Access requests by customer and state, read from the store at each scrape.",
            families.requests.clone(),
        );
        r.register_with_unit(
            "request_approval_wait",
            "Time from filing a request to its approval, by customer.",
            Unit::Seconds,
            families.approval.clone(),
        );
        r.register(
            "webhook_failures",
            "Webhook deliveries that gave up (attempts exhausted, refused, or not queued), by customer.",
            families.webhook_failures.clone(),
        );
        r.register(
            "webhook_queued",
            "Notifications waiting in a customer's webhook queue now.",
            families.webhook_queued.clone(),
        );
        r.register(
            "siem_failures",
            "Failed SIEM delivery attempts, by customer and sink (its index among the customer's sinks).",
            families.siem_failures.clone(),
        );
        r.register_with_unit(
            "siem_lag",
            "Age of the oldest record a SIEM sink has not yet confirmed (0: it has every record).",
            Unit::Seconds,
            families.siem_lag.clone(),
        );
        let decision = Histogram::new(DECISION_BUCKETS);
        r.register_with_unit(
            "decision_duration",
            "Time to decide a CONNECT: rate limit, grant verification, binding, route and policy.",
            Unit::Seconds,
            decision.clone(),
        );
        let audit_commit = Histogram::new(COMMIT_BUCKETS);
        r.register_with_unit(
            "audit_commit_duration",
            "Time to write and fsync one group commit of audit records to one chain.",
            Unit::Seconds,
            audit_commit.clone(),
        );
        let audit_failures = Counter::default();
        r.register(
            "audit_failures",
            "Audit batches that could not be written durably.",
            audit_failures.clone(),
        );
        let handshake_family = Family::<KindLabel, Counter>::default();
        r.register(
            "handshake_failures",
            "TLS handshakes that failed, by kind.",
            handshake_family.clone(),
        );
        let handshake_failures =
            HandshakeFailure::ALL.map(|kind| resolve(&handshake_family, &KindLabel { kind }));
        let limiter_family = Family::<LimiterLabel, Counter>::default();
        r.register(
            "rate_limited",
            "Calls and connections refused by a limit, by limiter.",
            limiter_family.clone(),
        );
        let rate_limited =
            Limiter::ALL.map(|limiter| resolve(&limiter_family, &LimiterLabel { limiter }));
        r.register(
            "handshake_slots_refused",
            "Connections closed at accept: their source, or the broker, had no handshake slot free.",
            rate_limited[Limiter::HandshakeSlots as usize].clone(),
        );
        let live_sessions = Gauge::default();
        r.register("live_sessions", "Tunnels open now.", live_sessions.clone());
        let handshakes_in_progress = Gauge::default();
        r.register(
            "handshakes_in_progress",
            "Connections that have not completed their TLS handshake.",
            handshakes_in_progress.clone(),
        );
        let locks_active = Gauge::default();
        r.register(
            "locks_active",
            "Locks in force now (identities and certificates barred).",
            locks_active.clone(),
        );
        let reload_family = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "config_reloads",
            "Reloads of the configuration (SIGHUP, sallyport reload), by outcome.",
            reload_family.clone(),
        );
        let reloads =
            ReloadOutcome::ALL.map(|outcome| resolve(&reload_family, &OutcomeLabel { outcome }));
        let unattributed = TunnelRefusal::ALL.map(|reason| {
            let labels = RefusalLabels {
                customer: NO_CUSTOMER.into(),
                reason,
            };
            resolve(&families.refused, &labels)
        });
        let metrics = Metrics(Arc::new(Inner {
            registry,
            families,
            customers: RwLock::new(HashMap::new()),
            unattributed,
            decision,
            audit_commit,
            audit_failures,
            handshake_failures,
            rate_limited,
            live_sessions,
            handshakes_in_progress,
            locks_active,
            reloads,
        }));
        for c in customers {
            metrics.add_customer(c);
        }
        metrics
    }

    /// Resolves `customer`'s series (they start at zero); a customer already added keeps its own.
    pub fn add_customer(&self, customer: &CustomerId) -> Arc<CustomerMetrics> {
        if let Some(m) = self.customer(customer.as_str()) {
            return m;
        }
        let f = &self.0.families;
        let name = || customer.as_str().to_owned();
        let one = || CustomerLabel { customer: name() };
        let bytes = |direction| BytesLabels {
            customer: name(),
            direction,
        };
        let m = Arc::new(CustomerMetrics {
            opened: resolve(&f.opened, &one()),
            refused: TunnelRefusal::ALL.map(|reason| {
                let labels = RefusalLabels {
                    customer: name(),
                    reason,
                };
                resolve(&f.refused, &labels)
            }),
            live: resolve(&f.live, &one()),
            up: resolve(&f.bytes, &bytes(Direction::Up)),
            down: resolve(&f.bytes, &bytes(Direction::Down)),
            requests: RequestState::ALL.map(|state| {
                let labels = RequestLabels {
                    customer: name(),
                    state,
                };
                resolve(&f.requests, &labels)
            }),
            approval: resolve(&f.approval, &one()),
            webhook_failures: resolve(&f.webhook_failures, &one()),
            webhook_queued: resolve(&f.webhook_queued, &one()),
        });
        self.0
            .customers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(customer.clone())
            .or_insert(m)
            .clone()
    }

    /// The series of a configured customer; `None` for any other name, which is never made a label.
    pub fn customer(&self, customer: &str) -> Option<Arc<CustomerMetrics>> {
        self.0
            .customers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(customer)
            .cloned()
    }

    /// Every configured customer's series, for the gauges set at scrape.
    pub fn customers(&self) -> Vec<(CustomerId, Arc<CustomerMetrics>)> {
        self.0
            .customers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect()
    }

    /// A CONNECT refused for `why`, concerning `customer` when it is configured (else `_none`).
    pub fn tunnel_refused(&self, customer: Option<&str>, why: TunnelRefusal) {
        match customer.and_then(|c| self.customer(c)) {
            Some(m) => m.tunnel_refused(why),
            None => {
                self.0.unattributed[why.index()].inc();
            }
        }
    }

    /// One CONNECT decision took `took`.
    pub fn decided(&self, took: Duration) {
        self.0.decision.observe(took.as_secs_f64());
    }

    /// One audit group commit to one chain took `took`.
    pub fn audit_committed(&self, took: Duration) {
        self.0.audit_commit.observe(took.as_secs_f64());
    }

    /// An audit batch could not be written durably.
    pub fn audit_failed(&self) {
        self.0.audit_failures.inc();
    }

    /// A TLS handshake failed.
    pub fn handshake_failed(&self, kind: HandshakeFailure) {
        self.0.handshake_failures[kind as usize].inc();
    }

    /// A limit refused a call or a connection.
    pub fn rate_limited(&self, limiter: Limiter) {
        self.0.rate_limited[limiter as usize].inc();
    }

    /// The counter of `limiter`'s refusals, for a component that counts them itself.
    pub fn rate_limit_counter(&self, limiter: Limiter) -> Counter {
        self.0.rate_limited[limiter as usize].clone()
    }

    /// The series of `customer`'s SIEM sink number `index`.
    pub fn siem_sink(&self, customer: &CustomerId, index: usize) -> SinkMetrics {
        let labels = SinkLabels {
            customer: customer.as_str().to_owned(),
            sink: index.to_string(),
        };
        let f = &self.0.families;
        SinkMetrics {
            failures: resolve(&f.siem_failures, &labels),
            lag: resolve(&f.siem_lag, &labels),
        }
    }

    /// A reload of the configuration ended with `outcome`.
    pub fn reloaded(&self, outcome: ReloadOutcome) {
        self.0.reloads[outcome as usize].inc();
    }

    /// Tunnels open now (`sallyport_live_sessions`).
    pub fn set_live_sessions(&self, n: usize) {
        self.0.live_sessions.set(gauge_value(n));
    }

    /// Connections before the end of their handshake now.
    pub fn set_handshakes_in_progress(&self, n: usize) {
        self.0.handshakes_in_progress.set(gauge_value(n));
    }

    /// Locks in force now.
    pub fn set_locks_active(&self, n: usize) {
        self.0.locks_active.set(gauge_value(n));
    }

    /// Every family as OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a label's encoding.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.0.registry) {
            out = format!("# metrics could not be encoded: {e}\n# EOF\n");
        }
        out
    }
}

#[cfg(test)]
mod tests;
