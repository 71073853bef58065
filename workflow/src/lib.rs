//! The rules of just-in-time access, in one place: filing a request, the customer's approvers
//! approving or denying it under the customer's policy, expiry, handing out the grant, revocation and
//! ending sessions. HTTP handlers and console pages parse, call these, and render; the store keeps each
//! transition atomic; nothing here knows HTTP.
//!
//! One rule runs through all of it: **nothing that opens access happens before its record is
//! durable** (records go through [`Context::record`]). A filing is recorded before it is stored; a
//! grant is handed out only once the approval that created it is on the trail (an approval whose
//! record failed is recorded when the grant is first fetched) and the handing out is itself recorded
//! before the token leaves; the gateway dials a target only after its allow record. When the trail
//! cannot take a record, the action is refused with [`WorkflowError::AuditUnavailable`]. Actions that
//! end access (a denial, a revocation, ending a session) take effect even when their record cannot
//! be written, and the caller is told so, since ending access is always safe; a revocation is on the
//! trail before the tunnels it cuts record their closes.
//!
//! Refusals are on the trail too, bounded: a call refused for the caller's role or tenant is
//! recorded on the caller's customer's chain and on the chain of the customer whose object it was
//! ([`Context::refused`]), and every refusal, of the gateway's as well, goes through one
//! [`refusals::RefusalTrail`], which records the first of each interval one by one and aggregates
//! the rest.
//!
//! Modules: [`terms`] (the pure rules, unit-tested), [`requests`], [`targets`] (what a caller may
//! request, from the policies), [`grants`], [`sessions`],
//! [`locks`] (identities and certificates barred until unlocked, and the one check of every call),
//! [`evidence`] (the evidence bundle of a request), [`scope`] (tenant walls), [`view`] (the JSON shape
//! of requests, grants and sessions), [`limit`] (call rates), [`refusals`] (refusals on the trail).

pub mod breakglass;
pub mod error;
pub mod evidence;
pub mod grants;
pub mod limit;
pub mod locks;
pub mod policies;
pub mod refusals;
pub mod reload;
pub mod requests;
pub mod scope;
pub mod sessions;
pub mod signin;
pub mod targets;
pub mod terms;
pub mod view;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use sallyport_audit::{AuditEvent, AuditLog, EventKind, Outcome};
use sallyport_certs::identity::PeerIdentity;
use sallyport_ids::time::Clock;
use sallyport_ids::{GrantId, SessionId};
use sallyport_notify::{GiveUp, Notification, Notifier};
use sallyport_store::{SessionRecord, Store, StoreError};

pub use error::WorkflowError;
pub use grants::Grants;
pub use locks::{LockGate, LockView, Locks};
pub use refusals::{RefusalTrail, Refusals};
pub use requests::Requests;
pub use sessions::Sessions;
pub use signin::SignIns;

/// The durable state, reached from async code: each call runs on the blocking pool, since SQLite
/// may wait on a lock held by another process. Cheap to clone.
#[derive(Clone)]
pub struct Db(Arc<dyn Store>);

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// A handle on `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self(store)
    }

    /// The store itself, for blocking callers.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0
    }

    /// Runs `f` on the store, on the blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

/// Where every action lands: the store, the customer's audit trail and the customer's webhook, and
/// the clock it reads. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    /// Requests, approvals, grants, revocations, sessions.
    pub db: Db,
    /// The audit trail.
    pub trail: AuditLog,
    /// The customers' webhooks.
    pub notifier: Notifier,
    /// Now.
    pub clock: Clock,
    /// Where refusals are recorded, bounded.
    pub refusals: RefusalTrail,
    /// What the workflow counts: filings over their rate, the time from filing to approval.
    pub metrics: sallyport_metrics::Metrics,
}

impl Context {
    /// Writes `ev` and waits until it is durable; when it cannot be written, the action must not go
    /// ahead ([`WorkflowError::AuditUnavailable`]).
    pub async fn record(&self, ev: AuditEvent) -> Result<(), WorkflowError> {
        self.record_at(ev).await.map(|_| ())
    }

    /// As [`Context::record`], returning where the record landed (its hash).
    pub async fn record_at(
        &self,
        ev: AuditEvent,
    ) -> Result<sallyport_audit::Appended, WorkflowError> {
        let kind = ev.event;
        self.trail.append(ev).await.map_err(|e| {
            tracing::error!(error = %e, event = ?kind, "audit trail not writable");
            WorkflowError::AuditUnavailable
        })
    }

    /// Queues a webhook notification (never blocks, never fails).
    pub fn notify(&self, n: Notification) {
        self.notifier.notify(n);
    }
}

/// A context for the unit tests: a trail and store in `dir`, the `chains` given, no webhooks and
/// a hand-set clock at `now` (Unix seconds).
#[cfg(test)]
pub(crate) fn test_context(
    dir: &std::path::Path,
    chains: &[&str],
    now: i64,
) -> (Context, Arc<dyn Store>, sallyport_audit::AuditWriter) {
    let (trail, writer) = AuditLog::open(&dir.join("audit"), chains, None).unwrap();
    let store: Arc<dyn Store> =
        Arc::new(sallyport_store::sqlite::SqliteStore::open(&dir.join("sallyport.db")).unwrap());
    let cx = Context {
        db: Db::new(store.clone()),
        trail: trail.clone(),
        notifier: Notifier::start(
            Default::default(),
            &sallyport_certs::tls::default_client(),
            |_| {},
            tokio_util::sync::CancellationToken::new(),
        ),
        clock: Clock::manual(now),
        refusals: RefusalTrail::new(
            trail,
            refusals::RefusalLimits {
                per_interval: 20,
                interval: std::time::Duration::from_secs(60),
            },
            chains.iter().filter_map(|c| c.parse().ok()),
        ),
        metrics: sallyport_metrics::Metrics::default(),
    };
    (cx, store, writer)
}

/// The `webhook_failed` record of a notification its customer's webhook never got. It names the
/// event and delivery, never the URL (whose path may hold a token).
pub fn webhook_failed(g: GiveUp) -> AuditEvent {
    let mut ev = AuditEvent::new(
        EventKind::WebhookFailed,
        Outcome::Failure,
        format!(
            "`{}` notification {} not delivered after {} attempt(s): {}",
            g.event, g.delivery_id, g.attempts, g.error
        ),
    );
    ev.customer = Some(g.customer);
    ev
}

/// Who is acting: the identity from their client certificate, and where they connect from.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The verified certificate identity.
    pub peer: &'a PeerIdentity,
    /// The source address.
    pub ip: IpAddr,
}

/// A boxed future, for the one async method of [`LiveTunnels`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The live tunnels of this broker, as the workflow reaches them: the gateway's registry implements
/// it. Ending a tunnel only asks it to close; the tunnel records its own close.
pub trait LiveTunnels: Send + Sync {
    /// Open tunnels, with their bytes so far.
    fn snapshot(&self) -> Vec<SessionRecord>;
    /// The live session `id` (open, or about to open).
    fn get(&self, id: &SessionId) -> Option<SessionRecord>;
    /// Ends the live session `id`, recording `cause` as its close reason; `false` if it is not live.
    fn end(&self, id: &SessionId, cause: &str) -> bool;
    /// Ends every tunnel of grant `gid`; returns how many.
    fn end_grant(&self, gid: &GrantId, cause: &str) -> usize;
    /// Ends every tunnel for which `ends` says yes, given its session and the SHA-256 of the client
    /// certificate it runs under (the rule is the caller's); returns how many.
    fn end_where(&self, ends: &dyn Fn(&SessionRecord, &[u8; 32]) -> bool, cause: &str) -> usize;
    /// Checks every tunnel against `config` at `now` and ends, with `cause`, each it no longer
    /// allows (customer or target gone, another address, the policy no longer permitting it);
    /// returns each one ended with what changed.
    fn recheck(
        &self,
        config: &sallyport_config::Config,
        now: jiff::Timestamp,
        cause: &str,
    ) -> Vec<(SessionRecord, String)>;
    /// Waits until every session row queued so far is in the store.
    fn flush(&self) -> BoxFuture<'_, ()>;
}

/// The workflow's services, built once by the binary's assembly and handed to the API.
#[derive(Clone)]
pub struct Workflow {
    /// Requests and their grants.
    pub requests: Requests,
    /// Revocation.
    pub grants: Grants,
    /// Session listings and ends.
    pub sessions: Sessions,
    /// Locks, and the check every call goes through.
    pub locks: Locks,
    /// Refusals of the API's own checks.
    pub refusals: Refusals,
    /// Reloading the configuration.
    pub reload: reload::Reloader,
    /// Sign-ins at identity providers, and the decisions a customer's IdP signs.
    pub signins: SignIns,
}

#[cfg(test)]
mod tests;
