//! Durable workflow state: access requests, approvals, grants, revocations and sessions.
//!
//! [`Store`] is the interface the broker programs against; [`sqlite::SqliteStore`] is the embedded
//! default (one file in the data directory, versioned migrations). The interface keeps every state
//! transition a single call that succeeds or fails whole, so a PostgreSQL implementation for several
//! broker nodes can follow with the same semantics (one transaction per call).
//!
//! Times are Unix seconds. Ids are strings minted by the caller.

pub mod sqlite;

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
}

impl RequestStatus {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RequestStatus::Pending,
            "approved" => RequestStatus::Approved,
            "denied" => RequestStatus::Denied,
            "expired" => RequestStatus::Expired,
            _ => return None,
        })
    }
}

/// A request as filed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    /// Request id.
    pub id: String,
    /// Customer id.
    pub customer: String,
    /// Target id.
    pub target: String,
    /// The requesting technician's SPIFFE id.
    pub technician: String,
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
}

/// A request with its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// What was filed.
    pub filed: NewRequest,
    /// Where it stands.
    pub status: RequestStatus,
    /// Approvers so far: (SPIFFE id, comment, time).
    pub approvals: Vec<(String, Option<String>, i64)>,
    /// Who denied it and why.
    pub denial: Option<(String, String)>,
    /// The grant issued on approval.
    pub grant_id: Option<String>,
    /// That grant, when there is one.
    pub grant: Option<GrantRecord>,
}

/// A grant row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// Grant id (`gid`).
    pub id: String,
    /// The request it came from (`None` for a break-glass grant).
    pub request_id: Option<String>,
    /// Customer id.
    pub customer: String,
    /// Target id.
    pub target: String,
    /// The technician's SPIFFE id.
    pub technician: String,
    /// Start of the window.
    pub not_before: i64,
    /// End of the window.
    pub expires_at: i64,
    /// When and by whom it was revoked, and why.
    pub revoked: Option<(i64, String, String)>,
    /// Whether the approval that created it is on the audit trail. A grant whose approval record
    /// could not be written is never handed out until that record is written.
    pub audited: bool,
}

/// A tunnel session, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub id: String,
    /// The grant it runs under.
    pub grant_id: String,
    /// Customer id.
    pub customer: String,
    /// Target id.
    pub target: String,
    /// The technician's SPIFFE id.
    pub technician: String,
    /// Where the technician connected from.
    pub source_ip: String,
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
    /// A tunnel closed.
    Close {
        /// Session id.
        id: String,
        /// When.
        at: i64,
        /// Bytes technician -> target.
        bytes_up: u64,
        /// Bytes target -> technician.
        bytes_down: u64,
        /// Why.
        reason: String,
    },
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
    Granted(GrantRecord),
}

/// Durable workflow state. Each method is one atomic transition.
pub trait Store: Send + Sync {
    /// Files a request. With `approvals_required == 0` it is approved at once and `grant_id` issues.
    fn file_request(
        &self,
        req: &NewRequest,
        grant_id: &str,
        now: i64,
    ) -> Result<RequestRecord, StoreError>;
    /// One request.
    fn request(&self, id: &str) -> Result<RequestRecord, StoreError>;
    /// Requests of a customer and/or a technician, optionally by status, newest first.
    fn requests(
        &self,
        customer: Option<&str>,
        technician: Option<&str>,
        status: Option<RequestStatus>,
    ) -> Result<Vec<RequestRecord>, StoreError>;
    /// Records one approval; on quorum approves the request and creates grant `grant_id`.
    fn approve(
        &self,
        id: &str,
        approver: &str,
        comment: Option<&str>,
        grant_id: &str,
        now: i64,
    ) -> Result<Approval, StoreError>;
    /// Denies a pending request.
    fn deny(
        &self,
        id: &str,
        approver: &str,
        reason: &str,
        now: i64,
    ) -> Result<RequestRecord, StoreError>;
    /// Expires pending requests whose time is up; returns them.
    fn expire_pending(&self, now: i64) -> Result<Vec<RequestRecord>, StoreError>;
    /// Records a grant issued without a request (break-glass).
    fn record_grant(&self, grant: &GrantRecord) -> Result<(), StoreError>;
    /// One grant.
    fn grant(&self, id: &str) -> Result<GrantRecord, StoreError>;
    /// Applies session changes in order, in one transaction. A close may arrive before its open
    /// (both are written by a background recorder); the row ends up closed either way.
    fn record_sessions(&self, changes: &[SessionChange]) -> Result<(), StoreError>;
    /// Sessions, newest first, optionally of one customer and/or technician, optionally only live ones.
    fn sessions(
        &self,
        customer: Option<&str>,
        technician: Option<&str>,
        live_only: bool,
    ) -> Result<Vec<SessionRecord>, StoreError>;
    /// One session.
    fn session(&self, id: &str) -> Result<SessionRecord, StoreError>;
    /// Closes sessions left open by a broker that stopped without closing them; returns how many.
    fn close_orphaned_sessions(&self, now: i64, reason: &str) -> Result<usize, StoreError>;
    /// Notes that the approval behind grant `id` is on the audit trail.
    fn mark_grant_audited(&self, id: &str) -> Result<(), StoreError>;
    /// Revokes a grant. Idempotent: an already revoked grant is returned unchanged, with `false`.
    fn revoke(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        now: i64,
    ) -> Result<(GrantRecord, bool), StoreError>;
}
