//! Live tunnels on this broker: who is connected where (and with which certificate), bytes so far,
//! and the switch that ends each one (revocation of its grant, a lock, or `DELETE /v1/sessions/{id}`). Session rows reach the store through a
//! background recorder that batches them, so recording never delays or blocks a tunnel; the audit
//! trail, written before any byte flows, stays the authoritative record.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sallyport_ids::{GrantId, SessionId};
use sallyport_metrics::CustomerMetrics;
use sallyport_store::{SessionChange, SessionRecord, Store};
use sallyport_workflow::{BoxFuture, LiveTunnels};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Session changes waiting for the recorder; past this, changes are dropped with a warning (the audit
/// trail still has them).
const QUEUE: usize = 16 * 1024;

/// Bytes moved by a tunnel so far, counted on delivery.
#[derive(Debug, Default)]
pub struct Counters {
    /// Technician -> target.
    pub up: AtomicU64,
    /// Target -> technician.
    pub down: AtomicU64,
    /// When bytes last moved either way, in milliseconds from the start of the relay (for the
    /// idle limit).
    pub last_moved_ms: AtomicU64,
    /// The customer's byte counters, which every delivered byte also goes into.
    pub customer: Option<Arc<CustomerMetrics>>,
}

/// One registered tunnel.
#[derive(Debug)]
pub struct LiveSession {
    /// What the store will hold (`closed_at` unset; bytes are read from `counters`).
    pub record: SessionRecord,
    /// SHA-256 of the client certificate the tunnel runs under (for locks of one certificate).
    pub thumbprint: [u8; 32],
    /// Bytes so far.
    pub counters: Arc<Counters>,
    /// Cancelled to end the tunnel.
    pub stop: CancellationToken,
    /// Why it was ended from outside (`grant revoked`, `ended by ...`).
    cause: Mutex<Option<String>>,
    /// Set once the tunnel is open (its allow and open records are durable).
    open: AtomicBool,
    /// What it was allowed on, to check it again when the configuration changes.
    pub basis: Option<Basis>,
}

/// What a tunnel was allowed on, beyond its session record: its connection (certificate and
/// source), its grant's length and port, and the address it dialled.
#[derive(Debug)]
pub struct Basis {
    /// The technician's connection.
    pub conn: Arc<crate::Conn>,
    /// The grant's length.
    pub minutes: u32,
    /// The port the grant names.
    pub port: u16,
    /// The address dialled.
    pub address: String,
}

impl LiveSession {
    /// Ends the tunnel, recording why (the first cause wins).
    pub fn end(&self, cause: &str) {
        let mut c = self.cause.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            *c = Some(cause.to_owned());
        }
        self.stop.cancel();
    }

    /// Why it was ended from outside, if it was.
    pub fn cause(&self) -> Option<String> {
        self.cause.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The record with the bytes so far.
    pub fn snapshot(&self) -> SessionRecord {
        let mut r = self.record.clone();
        r.bytes_up = self.counters.up.load(Ordering::Relaxed);
        r.bytes_down = self.counters.down.load(Ordering::Relaxed);
        r
    }
}

/// A live session in the registry, found by its id (no second copy of the id is kept).
#[derive(Debug)]
struct ById(Arc<LiveSession>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.record.id == other.0.record.id
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.record.id.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.record.id.as_str()
    }
}

/// The registry of live tunnels, and the queue to the session recorder.
#[derive(Debug)]
pub struct LiveSessions {
    by_id: Mutex<HashSet<ById>>,
    recorder: mpsc::Sender<Msg>,
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "changes are the hot path and flushes are rare: no allocation per change just to shrink flushes"
)]
enum Msg {
    Change(SessionChange),
    /// Answered once everything queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A registered tunnel; dropping it deregisters the tunnel, on every path.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<LiveSessions>,
    /// The session.
    pub session: Arc<LiveSession>,
}

impl Registration {
    /// Marks the tunnel open and queues its session row.
    pub fn opened(&self) {
        self.session.open.store(true, Ordering::Release);
        self.registry
            .record(SessionChange::Open(self.session.record.clone()));
    }

    /// Queues the close of the session row.
    pub fn closed(&self, at: i64, reason: &str) {
        let mut s = self.session.snapshot();
        s.closed_at = Some(at);
        s.close_reason = Some(reason.to_owned());
        self.registry.record(SessionChange::Close(s));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.session.record.id.as_str());
    }
}

impl LiveSessions {
    /// A registry whose recorder task writes session rows to `store`.
    pub fn start(store: Arc<dyn Store>) -> Arc<LiveSessions> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(recorder(store, rx));
        Arc::new(LiveSessions {
            by_id: Mutex::new(HashSet::new()),
            recorder: tx,
        })
    }

    fn record(&self, change: SessionChange) {
        if self.recorder.try_send(Msg::Change(change)).is_err() {
            tracing::warn!(
                "session recorder queue full or closed; a session row is dropped (the audit trail has it)"
            );
        }
    }

    /// Waits until every session change queued so far is written, for at most 5 s (the store may be
    /// failing; callers then read what it has).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let wait = async {
            if self.recorder.send(Msg::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .is_err()
        {
            tracing::warn!("session rows not yet written after 5 s");
        }
    }

    /// Registers a tunnel (under the client certificate `thumbprint`) before it opens, so a
    /// revocation or a lock from now on reaches it.
    pub fn register(
        self: &Arc<Self>,
        record: SessionRecord,
        thumbprint: [u8; 32],
        basis: Option<Basis>,
    ) -> Registration {
        self.register_metered(record, thumbprint, basis, None)
    }

    /// [`LiveSessions::register`], its bytes also counted into `customer`'s series.
    pub fn register_metered(
        self: &Arc<Self>,
        record: SessionRecord,
        thumbprint: [u8; 32],
        basis: Option<Basis>,
        customer: Option<Arc<CustomerMetrics>>,
    ) -> Registration {
        let session = Arc::new(LiveSession {
            basis,
            record,
            thumbprint,
            counters: Arc::new(Counters {
                customer,
                ..Counters::default()
            }),
            stop: CancellationToken::new(),
            cause: Mutex::new(None),
            open: AtomicBool::new(false),
        });
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ById(session.clone()));
        Registration {
            registry: self.clone(),
            session,
        }
    }

    /// How many tunnels are registered now (open, or about to open).
    pub fn len(&self) -> usize {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no tunnel is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every tunnel of grant `gid`; returns how many.
    pub fn end_grant(&self, gid: &GrantId, cause: &str) -> usize {
        let live = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        live.iter()
            .filter(|s| s.0.record.grant_id == *gid)
            .map(|s| s.0.end(cause))
            .count()
    }

    /// Ends every tunnel for which `ends` says yes (given its session and certificate); returns how
    /// many.
    pub fn end_where(
        &self,
        ends: &dyn Fn(&SessionRecord, &[u8; 32]) -> bool,
        cause: &str,
    ) -> usize {
        let live = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        live.iter()
            .filter(|s| ends(&s.0.record, &s.0.thumbprint))
            .map(|s| s.0.end(cause))
            .count()
    }

    /// Ends, with `cause`, every tunnel that [`crate::decide::still_allowed`] no longer allows under
    /// `config` at `now`; returns each one ended with what changed. A tunnel registered without a
    /// basis (a benchmark build's) is left.
    pub fn recheck(
        &self,
        config: &sallyport_config::Config,
        now: jiff::Timestamp,
        cause: &str,
    ) -> Vec<(SessionRecord, String)> {
        let live = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended = Vec::new();
        for s in live.iter() {
            let (s, Some(basis)) = (&s.0, &s.0.basis) else {
                continue;
            };
            let asked = crate::decide::Live {
                customer: &s.record.customer,
                target: &s.record.target,
                peer: &basis.conn.peer,
                ip: basis.conn.ip,
                minutes: basis.minutes,
                address: &basis.address,
                port: basis.port,
            };
            if let Err(why) = crate::decide::still_allowed(asked, &config.customers, now) {
                s.end(cause);
                ended.push((s.snapshot(), why));
            }
        }
        ended
    }

    /// Ends every tunnel; returns how many.
    pub fn end_all(&self, cause: &str) -> usize {
        let live = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        live.iter().map(|s| s.0.end(cause)).count()
    }

    /// The live session `id` (open or about to open).
    pub fn get(&self, id: &SessionId) -> Option<Arc<LiveSession>> {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id.as_str())
            .map(|s| s.0.clone())
    }

    /// Open tunnels with their bytes so far.
    pub fn snapshot(&self) -> Vec<SessionRecord> {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.0.open.load(Ordering::Acquire))
            .map(|s| s.0.snapshot())
            .collect()
    }
}

impl LiveTunnels for LiveSessions {
    fn snapshot(&self) -> Vec<SessionRecord> {
        LiveSessions::snapshot(self)
    }

    fn get(&self, id: &SessionId) -> Option<SessionRecord> {
        LiveSessions::get(self, id).map(|s| s.snapshot())
    }

    fn end(&self, id: &SessionId, cause: &str) -> bool {
        LiveSessions::get(self, id).map(|s| s.end(cause)).is_some()
    }

    fn end_grant(&self, gid: &GrantId, cause: &str) -> usize {
        LiveSessions::end_grant(self, gid, cause)
    }

    fn end_where(&self, ends: &dyn Fn(&SessionRecord, &[u8; 32]) -> bool, cause: &str) -> usize {
        LiveSessions::end_where(self, ends, cause)
    }

    fn recheck(
        &self,
        config: &sallyport_config::Config,
        now: jiff::Timestamp,
        cause: &str,
    ) -> Vec<(SessionRecord, String)> {
        LiveSessions::recheck(self, config, now, cause)
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(LiveSessions::flush(self))
    }
}

/// How long the recorder gathers session changes before writing them (unless asked to flush).
/// Session rows are the store's view for listings; the audit trail is written before any byte flows.
const LINGER: Duration = Duration::from_millis(100);

/// Most session changes written in one transaction.
const MAX_BATCH: usize = 4096;

/// Most session changes kept for a retry while the store is failing; past it the oldest are dropped
/// (the audit trail still has every session).
const MAX_PENDING: usize = 100_000;

/// Writes session changes in batches. A failed batch is kept and retried with backoff, merged with
/// whatever arrives meanwhile, so rows are not lost to a transient store error.
async fn recorder(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>) {
    let mut batch = Vec::with_capacity(256);
    let mut pending: Vec<SessionChange> = Vec::new();
    let mut flushes = Vec::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        if pending.is_empty() {
            if rx.recv_many(&mut batch, 256).await == 0 {
                return;
            }
            // Gather what arrives for a moment, so a busy broker writes many rows per commit
            // (and so per sync) instead of one or two. A flush ends the wait.
            let until = tokio::time::Instant::now() + LINGER;
            let mut looked = 0;
            loop {
                let flush = batch[looked..].iter().any(|m| matches!(m, Msg::Flush(_)));
                looked = batch.len();
                if flush || batch.len() >= MAX_BATCH {
                    break;
                }
                let room = MAX_BATCH - batch.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        } else {
            tokio::time::sleep(backoff).await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
        }
        for msg in batch.drain(..) {
            match msg {
                Msg::Change(c) => pending.push(c),
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !pending.is_empty() {
            let store = store.clone();
            let changes = std::mem::take(&mut pending);
            let written = tokio::task::spawn_blocking(move || {
                let r = store.record_sessions(&changes);
                (changes, r)
            })
            .await;
            match written {
                Ok((_, Ok(()))) => backoff = Duration::from_millis(100),
                Ok((changes, Err(e))) => {
                    tracing::error!(error = %e, changes = changes.len(), retry_in = ?backoff, "could not record sessions; will retry");
                    pending = changes;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    if pending.len() > MAX_PENDING {
                        let over = pending.len() - MAX_PENDING;
                        pending.drain(..over);
                        tracing::error!(
                            dropped = over,
                            "session rows dropped while the store fails (the audit trail has them)"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "session recorder task failed"),
            }
        }
        if pending.is_empty() {
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sallyport_store::sqlite::SqliteStore;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    fn record(sid: &str, gid: &str) -> SessionRecord {
        SessionRecord {
            id: id(sid),
            grant_id: id(gid),
            customer: id("acme"),
            target: id("web"),
            technician: id("spiffe://sallyport.local/technician/northwind/alice"),
            source_ip: id("127.0.0.1"),
            opened_at: 1_000,
            closed_at: None,
            bytes_up: 0,
            bytes_down: 0,
            close_reason: None,
        }
    }

    #[tokio::test]
    async fn registry_ends_by_grant_and_recorder_writes_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let live = LiveSessions::start(store.clone());
        let a = live.register(record("s1", "g1"), [1; 32], None);
        let b = live.register(record("s2", "g1"), [1; 32], None);
        let c = live.register(record("s3", "g2"), [2; 32], None);
        assert!(
            live.snapshot().is_empty(),
            "nothing is listed before it opens"
        );
        a.opened();
        c.opened();
        a.session.counters.up.store(5, Ordering::Relaxed);
        assert_eq!(live.snapshot().len(), 2);
        assert_eq!(live.end_grant(&id("g1"), "grant revoked"), 2);
        live.end_grant(&id("g1"), "later cause");
        assert!(a.session.stop.is_cancelled() && b.session.stop.is_cancelled());
        assert_eq!(a.session.cause().as_deref(), Some("grant revoked"));
        assert!(!c.session.stop.is_cancelled());
        // A lock of one certificate reaches the tunnels under it, and only those.
        assert_eq!(live.end_where(&|_, t| *t == [2; 32], "identity locked"), 1);
        assert_eq!(c.session.cause().as_deref(), Some("identity locked"));
        let d = live.register(record("s4", "g2"), [3; 32], None);
        assert!(!d.session.stop.is_cancelled());
        drop(d);
        a.closed(1_010, "grant revoked");
        drop((a, b));
        assert!(live.get(&id("s1")).is_none() && live.get(&id("s2")).is_none());
        assert!(live.get(&id("s3")).is_some());
        drop(c);
        live.flush().await;
        let s1 = store.session(&id("s1")).unwrap();
        assert_eq!((s1.closed_at, s1.bytes_up), (Some(1_010), 5));
        assert_eq!(store.session(&id("s3")).unwrap().closed_at, None);
        assert!(
            store.session(&id("s2")).is_err(),
            "never opened, never recorded"
        );
    }
}
