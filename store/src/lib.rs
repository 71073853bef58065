//! Durable workflow state: access requests, approvals, grants, revocations, sessions, and locks with
//! the register of issued certificates ([`locks`]).
//!
//! [`Store`] is the interface the broker programs against; [`sqlite::SqliteStore`] is the embedded
//! default (one file in the data directory, versioned migrations). The interface keeps every state
//! transition a single call that succeeds or fails whole, so a PostgreSQL implementation for several
//! broker nodes can follow with the same semantics (one transaction per call).
//!
//! The store keeps transitions atomic; it does not make the rules. Who may approve, how many
//! approvals a request needs and what window a grant covers are decided by the workflow crate and
//! handed in; the store guards only what must hold at the moment of the write (the request is still
//! pending and not past its expiry, an approver approves once, a grant is revoked once).
//!
//! The API is blocking (SQLite waits on its own lock); async callers run it on a blocking thread.
//! Times are Unix seconds. Ids are the `ids` crate's newtypes, minted by the caller.

#[cfg(test)]
mod conformance;
pub mod locks;
pub mod sqlite;

use std::net::IpAddr;

use sallyport_ids::cert::CertFingerprint;
use sallyport_ids::{CustomerId, GrantId, LockId, RequestId, SessionId, SpiffeId, TargetId};

pub use locks::{IssuedCertificate, LockRecord, LockTarget, NewLock, Unlock};

/// The most requests, grants or sessions one listing answers (the newest): the `LIMIT 1000` of
/// the store's listing queries.
pub const LIST_LIMIT: usize = 1000;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// Waiting for approvals.
    Pending,
    /// Enough approvals: a grant exists.
    Approved,
    /// An approver denied it.
    Denied,
    /// Nobody decided in time.
    Expired,
    /// The technician who filed it withdrew it while it was pending.
    Cancelled,
}

impl RequestStatus {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
            RequestStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RequestStatus::Pending,
            "approved" => RequestStatus::Approved,
            "denied" => RequestStatus::Denied,
            "expired" => RequestStatus::Expired,
            "cancelled" => RequestStatus::Cancelled,
            _ => return None,
        })
    }
}

/// A request as filed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    /// Request id.
    pub id: RequestId,
    /// Customer id.
    pub customer: CustomerId,
    /// Target id.
    pub target: TargetId,
    /// The requesting technician.
    pub technician: SpiffeId,
    /// Thumbprint (base64url SHA-256) of the certificate the grant will be bound to.
    pub cert_thumbprint: String,
    /// Minutes of access asked for.
    pub minutes: u32,
    /// Why.
    pub reason: String,
    /// Change or incident ticket.
    pub ticket: Option<String>,
    /// Requested start of the window; `None` means at approval.
    pub start_at: Option<i64>,
    /// Approvals needed (0 approves at once).
    pub approvals_required: u32,
    /// The policy that permitted filing it.
    pub policy_id: Option<String>,
    /// When it was filed.
    pub created_at: i64,
    /// When it expires if still pending.
    pub expires_at: i64,
    /// The hash of its `request_filed` record (`None` for requests filed before it was kept): an
    /// approval signed by the customer's identity provider commits to it.
    pub filed_hash: Option<String>,
}

/// A request with its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// What was filed.
    pub filed: NewRequest,
    /// Where it stands.
    pub status: RequestStatus,
    /// Approvals so far, oldest first.
    pub approvals: Vec<ApprovalRecord>,
    /// Who denied it and why.
    pub denial: Option<Denial>,
    /// The grant issued on approval.
    pub grant_id: Option<GrantId>,
    /// That grant, when there is one.
    pub grant: Option<GrantRecord>,
}

impl RequestRecord {
    /// Approvals still missing for the quorum.
    pub fn approvals_missing(&self) -> u32 {
        self.filed
            .approvals_required
            .saturating_sub(u32::try_from(self.approvals.len()).unwrap_or(u32::MAX))
    }
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// Who approved.
    pub approver: SpiffeId,
    /// What they said.
    pub comment: Option<String>,
    /// When.
    pub at: i64,
}

/// The denial that ended a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Who denied it.
    pub by: SpiffeId,
    /// Why.
    pub reason: String,
}

/// The revocation of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// When.
    pub at: i64,
    /// By whom.
    pub by: SpiffeId,
    /// Why.
    pub reason: String,
}

/// The grant an approval creates: its id and its window, computed by the workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    /// Grant id (`gid`).
    pub id: GrantId,
    /// Start of the window.
    pub not_before: i64,
    /// End of the window.
    pub expires_at: i64,
}

/// A grant row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// Grant id (`gid`).
    pub id: GrantId,
    /// The request it came from (`None` for a break-glass grant).
    pub request_id: Option<RequestId>,
    /// Customer id.
    pub customer: CustomerId,
    /// Target id.
    pub target: TargetId,
    /// The technician.
    pub technician: SpiffeId,
    /// Start of the window.
    pub not_before: i64,
    /// End of the window.
    pub expires_at: i64,
    /// When and by whom it was revoked, and why.
    pub revoked: Option<Revocation>,
    /// Whether the approval that created it is on the audit trail. A grant whose approval record
    /// could not be written is never handed out until that record is written.
    pub audited: bool,
    /// Set on a grant an administrator minted without approval (`sallyport grant`).
    pub break_glass: Option<BreakGlass>,
}

/// Who minted a break-glass grant, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// The administrator: their admin identity, or `<user>@<host>` of the machine.
    pub by: String,
    /// Why, in their words.
    pub reason: String,
    /// The incident or change ticket.
    pub ticket: Option<String>,
}

/// A tunnel session, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub id: SessionId,
    /// The grant it runs under.
    pub grant_id: GrantId,
    /// Customer id.
    pub customer: CustomerId,
    /// Target id.
    pub target: TargetId,
    /// The technician.
    pub technician: SpiffeId,
    /// Where the technician connected from.
    pub source_ip: IpAddr,
    /// When the tunnel opened.
    pub opened_at: i64,
    /// When it closed (`None` while live).
    pub closed_at: Option<i64>,
    /// Bytes technician -> target (final once closed).
    pub bytes_up: u64,
    /// Bytes target -> technician (final once closed).
    pub bytes_down: u64,
    /// Why it closed.
    pub close_reason: Option<String>,
}

/// A change to the session table; changes are written in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A tunnel opened.
    Open(SessionRecord),
    /// A tunnel closed: the whole row, with `closed_at`, the final bytes and `close_reason` set (so a
    /// close written before its open still leaves a complete row).
    Close(SessionRecord),
}

/// Why a state change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such request, grant or session.
    #[error("no {kind} `{id}`")]
    NotFound {
        /// `request`, `grant` or `session`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The change does not fit the current state (approving a denied request, approving twice, ...).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("store: {0}")]
    Backend(String),
}

/// The result of an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Recorded; this many more are needed.
    Recorded {
        /// Approvals still missing.
        missing: u32,
    },
    /// The quorum is reached: the request is approved and this grant was created.
    Granted(Box<GrantRecord>),
}

/// Durable workflow state. Each method is one atomic transition.
pub trait Store: Send + Sync {
    /// Files a request. With `grant` it is approved at once and that grant issues (a request that
    /// needs no approval).
    fn file_request(
        &self,
        req: &NewRequest,
        grant: Option<&NewGrant>,
        now: i64,
    ) -> Result<RequestRecord, StoreError>;
    /// One request.
    fn request(&self, id: &RequestId) -> Result<RequestRecord, StoreError>;
    /// Requests of a customer and/or a technician, optionally by status, newest first (at most 1000).
    fn requests(
        &self,
        customer: Option<&CustomerId>,
        technician: Option<&SpiffeId>,
        status: Option<RequestStatus>,
    ) -> Result<Vec<RequestRecord>, StoreError>;
    /// Records one approval of a pending request that has not expired by `now`; when that completes
    /// the quorum, approves the request and creates the grant `issue` makes of it (the workflow's
    /// window; an `Err` from it undoes the whole approval).
    fn approve(
        &self,
        id: &RequestId,
        approver: &SpiffeId,
        comment: Option<&str>,
        issue: &dyn Fn(&NewRequest) -> Result<NewGrant, StoreError>,
        now: i64,
    ) -> Result<Approval, StoreError>;
    /// Denies a pending request that has not expired by `now`.
    fn deny(
        &self,
        id: &RequestId,
        approver: &SpiffeId,
        reason: &str,
        now: i64,
    ) -> Result<RequestRecord, StoreError>;
    /// Cancels a pending request that has not expired by `now` (its technician withdrew it).
    fn cancel(&self, id: &RequestId, now: i64) -> Result<RequestRecord, StoreError>;

    /// How many requests each customer has in each status (pairs with none are left out): cheap,
    /// from the index, for metrics and readiness.
    fn request_counts(&self) -> Result<Vec<(CustomerId, RequestStatus, u64)>, StoreError>;
    /// Expires pending requests whose time is up; returns them.
    fn expire_pending(&self, now: i64) -> Result<Vec<RequestRecord>, StoreError>;
    /// Records a grant issued without a request (break-glass).
    fn record_grant(&self, grant: &GrantRecord) -> Result<(), StoreError>;
    /// One grant.
    fn grant(&self, id: &GrantId) -> Result<GrantRecord, StoreError>;
    /// Grants, newest first (at most 1000), optionally of one customer and/or technician, optionally
    /// only break-glass ones.
    fn grants(
        &self,
        customer: Option<&CustomerId>,
        technician: Option<&SpiffeId>,
        break_glass_only: bool,
    ) -> Result<Vec<GrantRecord>, StoreError>;
    /// Applies session changes in order, in one transaction. A close may arrive before its open
    /// (both are written by a background recorder); the row ends up closed either way.
    fn record_sessions(&self, changes: &[SessionChange]) -> Result<(), StoreError>;
    /// Sessions, newest first (at most 1000), optionally of one customer, technician and/or grant,
    /// optionally only live ones.
    fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError>;
    /// One session.
    fn session(&self, id: &SessionId) -> Result<SessionRecord, StoreError>;
    /// Closes sessions left open by a broker that stopped without closing them; returns how many.
    fn close_orphaned_sessions(&self, now: i64, reason: &str) -> Result<usize, StoreError>;
    /// Notes that the approval behind grant `id` is on the audit trail.
    fn mark_grant_audited(&self, id: &GrantId) -> Result<(), StoreError>;
    /// Revokes a grant. Idempotent: an already revoked grant is returned unchanged, with `false`.
    fn revoke(
        &self,
        id: &GrantId,
        by: &SpiffeId,
        reason: &str,
        now: i64,
    ) -> Result<(GrantRecord, bool), StoreError>;
    /// Adds a lock, active from its `created_at`. Refused (`Conflict`) when an active lock already
    /// bars the same target in the same scope, or when `max_active` locks are active.
    fn add_lock(&self, lock: &NewLock, max_active: usize) -> Result<LockRecord, StoreError>;
    /// Lifts lock `id`. Refused (`Conflict`) when it was lifted before or has ended by `now`.
    fn unlock(
        &self,
        id: &LockId,
        by: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<LockRecord, StoreError>;
    /// One lock.
    fn lock(&self, id: &LockId) -> Result<LockRecord, StoreError>;
    /// Locks, newest first, at most `limit`: those active at `active_at`, or all of them.
    fn locks(&self, active_at: Option<i64>, limit: usize) -> Result<Vec<LockRecord>, StoreError>;
    /// A number that changes whenever a lock is added or lifted (0 with no locks), so a broker can
    /// notice locks made by another process cheaply.
    fn locks_version(&self) -> Result<i64, StoreError>;
    /// Registers an issued client certificate (idempotent for the same certificate).
    fn record_certificate(&self, cert: &IssuedCertificate) -> Result<(), StoreError>;
    /// The registered certificate with this fingerprint.
    fn certificate(
        &self,
        sha256: &CertFingerprint,
    ) -> Result<Option<IssuedCertificate>, StoreError>;
    /// The registered certificates of `holder` still valid at `valid_at`, newest first (at most
    /// 1000).
    fn certificates_of(
        &self,
        holder: &SpiffeId,
        valid_at: i64,
    ) -> Result<Vec<IssuedCertificate>, StoreError>;
}

/// Which sessions to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only this customer's.
    pub customer: Option<CustomerId>,
    /// Only this technician's.
    pub technician: Option<SpiffeId>,
    /// Only this grant's.
    pub grant: Option<GrantId>,
    /// Only live ones (not closed).
    pub live_only: bool,
}
