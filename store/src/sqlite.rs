//! The embedded [`Store`]: one SQLite file (`<data_dir>/sallyport.db`), WAL mode with full sync, schema
//! versions applied by `rusqlite_migration` (tracked in `user_version`). Every transition runs in one
//! `IMMEDIATE` transaction, so concurrent brokers or CLI calls on the same file serialize cleanly.
//! Reads go through a second connection: under WAL they see every committed write and never wait
//! behind a writer's commit (a tunnel's revocation lookup does not queue behind a batch of session rows).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use rusqlite_migration::{M, Migrations};

use sallyport_ids::cert::CertFingerprint;
use sallyport_ids::{CustomerId, GrantId, LockId, RequestId, SessionId, SpiffeId};

use super::{
    Approval, ApprovalRecord, BreakGlass, Denial, GrantRecord, IssuedCertificate, LockRecord,
    NewGrant, NewLock, NewRequest, RequestRecord, RequestStatus, Revocation, SessionChange,
    SessionFilter, SessionRecord, Store, StoreError,
};

mod locks;

/// Schema versions, oldest first. Never edit a released entry: append a new one.
const MIGRATIONS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        customer TEXT NOT NULL,
        target TEXT NOT NULL,
        technician TEXT NOT NULL,
        cert_thumbprint TEXT NOT NULL,
        minutes INTEGER NOT NULL CHECK (minutes > 0),
        reason TEXT NOT NULL,
        ticket TEXT,
        start_at INTEGER,
        approvals_required INTEGER NOT NULL CHECK (approvals_required >= 0),
        policy_id TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
        denied_by TEXT,
        deny_reason TEXT,
        decided_at INTEGER
    ) STRICT;
    CREATE INDEX requests_by_customer ON requests (customer, status, created_at);
    CREATE INDEX requests_by_technician ON requests (technician, created_at);
    CREATE TABLE approvals (
        request_id TEXT NOT NULL REFERENCES requests (id),
        approver TEXT NOT NULL,
        comment TEXT,
        at INTEGER NOT NULL,
        PRIMARY KEY (request_id, approver)
    ) STRICT;
    CREATE TABLE grants (
        id TEXT PRIMARY KEY,
        request_id TEXT UNIQUE REFERENCES requests (id),
        customer TEXT NOT NULL,
        target TEXT NOT NULL,
        technician TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER,
        revoked_by TEXT,
        revoke_reason TEXT
    ) STRICT;
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL,
        customer TEXT NOT NULL,
        target TEXT NOT NULL,
        technician TEXT NOT NULL,
        source_ip TEXT NOT NULL,
        opened_at INTEGER NOT NULL,
        closed_at INTEGER,
        bytes_up INTEGER,
        bytes_down INTEGER,
        close_reason TEXT
    ) STRICT;
    CREATE INDEX sessions_live ON sessions (customer, closed_at);",
    ),
    // Grants created by an approval are handed out only once that approval is on the audit trail.
    M::up("ALTER TABLE grants ADD COLUMN audited INTEGER NOT NULL DEFAULT 1;"),
    // Earlier versions wrote a close that came before its open as a row with no identity (no grant,
    // customer, target, technician or source); when the open was then lost (the recorder drops the
    // oldest changes while the store fails) the row stayed so. Such a row names no session anyone
    // can be shown: the trail holds every session, so the row goes. Every row written now is whole.
    M::up(
        "DELETE FROM sessions WHERE grant_id = '' OR customer = '' OR target = ''
           OR technician = '' OR source_ip = '';",
    ),
    // Break-glass grants say who minted them and why. Those of earlier versions (a grant without a
    // request) did not record it: they are marked as break-glass by an unrecorded administrator.
    M::up(
        "ALTER TABLE grants ADD COLUMN break_glass_by TEXT;
         ALTER TABLE grants ADD COLUMN break_glass_reason TEXT;
         ALTER TABLE grants ADD COLUMN break_glass_ticket TEXT;
         UPDATE grants SET break_glass_by = 'unrecorded', break_glass_reason = ''
           WHERE request_id IS NULL;
         CREATE INDEX grants_by_customer ON grants (customer, not_before);",
    ),
    // Locks (an identity or one certificate barred, everywhere or for one customer, until lifted
    // or its end time) and the register of issued client certificates they name.
    M::up(
        "CREATE TABLE locks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('identity', 'certificate')),
        spiffe_id TEXT,
        cert_serial TEXT,
        cert_sha256 TEXT,
        customer TEXT,
        reason TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        unlocked_at INTEGER,
        unlocked_by TEXT,
        unlock_reason TEXT,
        version INTEGER NOT NULL UNIQUE,
        CHECK (kind = 'certificate' OR spiffe_id IS NOT NULL),
        CHECK ((kind = 'certificate') = (cert_serial IS NOT NULL AND cert_sha256 IS NOT NULL))
    ) STRICT;
    CREATE INDEX locks_active ON locks (unlocked_at, expires_at);
    CREATE INDEX locks_by_time ON locks (created_at);
    CREATE TABLE certificates (
        sha256 TEXT PRIMARY KEY,
        serial TEXT NOT NULL,
        spiffe_id TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        not_after INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX certificates_by_holder ON certificates (spiffe_id, not_after);",
    ),
    // A technician withdraws a pending request: the status `cancelled`. SQLite cannot change a
    // CHECK constraint, so the table is rebuilt (foreign keys are off while migrating, and checked
    // before the migration commits).
    M::up(
        "CREATE TABLE requests_new (
        id TEXT PRIMARY KEY,
        customer TEXT NOT NULL,
        target TEXT NOT NULL,
        technician TEXT NOT NULL,
        cert_thumbprint TEXT NOT NULL,
        minutes INTEGER NOT NULL CHECK (minutes > 0),
        reason TEXT NOT NULL,
        ticket TEXT,
        start_at INTEGER,
        approvals_required INTEGER NOT NULL CHECK (approvals_required >= 0),
        policy_id TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        status TEXT NOT NULL
          CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
        denied_by TEXT,
        deny_reason TEXT,
        decided_at INTEGER
    ) STRICT;
    INSERT INTO requests_new SELECT id, customer, target, technician, cert_thumbprint, minutes,
        reason, ticket, start_at, approvals_required, policy_id, created_at, expires_at, status,
        denied_by, deny_reason, decided_at FROM requests;
    DROP TABLE requests;
    ALTER TABLE requests_new RENAME TO requests;
    CREATE INDEX requests_by_customer ON requests (customer, status, created_at);
    CREATE INDEX requests_by_technician ON requests (technician, created_at);",
    )
    .foreign_key_check(),
    // The hash of a request's `request_filed` record: the nonce of an approval signed by the
    // customer's identity provider commits to it. Requests filed before have none.
    M::up("ALTER TABLE requests ADD COLUMN filed_hash TEXT;"),
];

/// The columns `grant_row` reads, in order.
const GRANT_COLUMNS: &str = "id, request_id, not_before, expires_at, revoked_at, revoked_by, revoke_reason, customer, target, technician, audited, break_glass_by, break_glass_reason, break_glass_ticket";

/// The SQLite store.
pub struct SqliteStore {
    /// Every write (and the migrations).
    conn: Mutex<Connection>,
    /// Every read, in deferred transactions.
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Created 0600 here, SQLite gives its -wal and -shm files the same mode.
        sallyport_ids::private::touch(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        let mut conn = connect(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        // A migration that rebuilds a table needs foreign keys off (they are checked before it
        // commits); they are back on before anything else runs.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(backend)?;
        let migrated = Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut conn)
            .map_err(|e| StoreError::Backend(format!("{}: migrating: {e}", path.display())));
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        migrated?;
        let reader = connect(path)?;
        reader
            .pragma_update(None, "query_only", "ON")
            .map_err(backend)?;
        Ok(Self {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
        })
    }

    /// A read: a deferred transaction on the reading connection, so readers never wait for a writer.
    fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(backend)?;
        let out = f(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(out)
    }

    fn tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let out = f(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(out)
    }
}

/// One connection to `path` with the store's settings: full sync, foreign keys, 5 s busy timeout.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend)?;
    Ok(conn)
}

/// Reads column `i` as text and parses it into an id (or an address): a row that does not parse was
/// not written by this store, and reads as a backend error.
fn col<T: std::str::FromStr>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = r.get(i)?;
    text.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// [`col`] for a nullable column.
fn opt_col<T: std::str::FromStr>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match r.get::<_, Option<String>>(i)? {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        }),
    }
}

fn not_found(kind: &'static str, id: &impl std::fmt::Display) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_string(),
    }
}

const REQUEST_COLUMNS: &str = "id, customer, target, technician, cert_thumbprint, minutes, reason, ticket, start_at, approvals_required, policy_id, created_at, expires_at, status, denied_by, deny_reason, filed_hash";

fn load(tx: &Transaction<'_>, id: &RequestId) -> Result<RequestRecord, StoreError> {
    let row = tx
        .prepare_cached(&format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"
        ))
        .map_err(backend)?
        .query_row(params![id.as_str()], |r| {
            Ok((
                NewRequest {
                    id: col(r, 0)?,
                    customer: col(r, 1)?,
                    target: col(r, 2)?,
                    technician: col(r, 3)?,
                    cert_thumbprint: r.get(4)?,
                    minutes: r.get(5)?,
                    reason: r.get(6)?,
                    ticket: r.get(7)?,
                    start_at: r.get(8)?,
                    approvals_required: r.get(9)?,
                    policy_id: r.get(10)?,
                    created_at: r.get(11)?,
                    expires_at: r.get(12)?,
                    filed_hash: r.get(16)?,
                },
                r.get::<_, String>(13)?,
                opt_col::<SpiffeId>(r, 14)?,
                r.get::<_, Option<String>>(15)?,
            ))
        })
        .optional()
        .map_err(backend)?
        .ok_or_else(|| not_found("request", id))?;
    let (filed, status, denied_by, deny_reason) = row;
    let status = RequestStatus::parse(&status).ok_or_else(|| {
        StoreError::Backend(format!("request `{id}` has unknown status `{status}`"))
    })?;
    let mut stmt = tx
        .prepare_cached("SELECT approver, comment, at FROM approvals WHERE request_id = ?1 ORDER BY at, approver")
        .map_err(backend)?;
    let approvals = stmt
        .query_map(params![id.as_str()], |r| {
            Ok(ApprovalRecord {
                approver: col(r, 0)?,
                comment: r.get(1)?,
                at: r.get(2)?,
            })
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let grant_id: Option<GrantId> = tx
        .prepare_cached("SELECT id FROM grants WHERE request_id = ?1")
        .map_err(backend)?
        .query_row(params![id.as_str()], |r| col(r, 0))
        .optional()
        .map_err(backend)?;
    let grant = match &grant_id {
        Some(g) => Some(load_grant(tx, g)?),
        None => None,
    };
    Ok(RequestRecord {
        filed,
        status,
        approvals,
        denial: denied_by
            .zip(deny_reason)
            .map(|(by, reason)| Denial { by, reason }),
        grant_id,
        grant,
    })
}

fn grant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GrantRecord> {
    let revoked_at: Option<i64> = r.get(4)?;
    let by: Option<SpiffeId> = opt_col(r, 5)?;
    let why: Option<String> = r.get(6)?;
    let glass_by: Option<String> = r.get(11)?;
    Ok(GrantRecord {
        id: col(r, 0)?,
        request_id: opt_col(r, 1)?,
        customer: col(r, 7)?,
        target: col(r, 8)?,
        technician: col(r, 9)?,
        not_before: r.get(2)?,
        expires_at: r.get(3)?,
        revoked: revoked_at.zip(by).map(|(at, by)| Revocation {
            at,
            by,
            reason: why.unwrap_or_default(),
        }),
        audited: r.get(10)?,
        break_glass: match glass_by {
            Some(by) => Some(BreakGlass {
                by,
                reason: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
                ticket: r.get(13)?,
            }),
            None => None,
        },
    })
}

fn load_grant(tx: &Transaction<'_>, id: &GrantId) -> Result<GrantRecord, StoreError> {
    tx.prepare_cached(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"))
        .map_err(backend)?
        .query_row(params![id.as_str()], grant_row)
        .optional()
        .map_err(backend)?
        .ok_or_else(|| not_found("grant", id))
}

const SESSION_COLUMNS: &str = "id, grant_id, customer, target, technician, source_ip, opened_at, closed_at, bytes_up, bytes_down, close_reason";

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: col(r, 0)?,
        grant_id: col(r, 1)?,
        customer: col(r, 2)?,
        target: col(r, 3)?,
        technician: col(r, 4)?,
        source_ip: col(r, 5)?,
        opened_at: r.get(6)?,
        closed_at: r.get(7)?,
        bytes_up: r.get::<_, Option<i64>>(8)?.unwrap_or(0).max(0) as u64,
        bytes_down: r.get::<_, Option<i64>>(9)?.unwrap_or(0).max(0) as u64,
        close_reason: r.get(10)?,
    })
}

/// Approves `req` and creates its grant with the window the workflow computed.
fn issue(
    tx: &Transaction<'_>,
    req: &NewRequest,
    grant: &NewGrant,
    now: i64,
) -> Result<GrantRecord, StoreError> {
    tx.execute(
        "UPDATE requests SET status = 'approved', decided_at = ?2 WHERE id = ?1",
        params![req.id.as_str(), now],
    )
    .map_err(backend)?;
    tx.execute(
        "INSERT INTO grants (id, request_id, customer, target, technician, not_before, expires_at, audited) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
        params![
            grant.id.as_str(),
            req.id.as_str(),
            req.customer.as_str(),
            req.target.as_str(),
            req.technician.to_string(),
            grant.not_before,
            grant.expires_at
        ],
    )
    .map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => {
            StoreError::Conflict(format!("grant `{}` already exists", grant.id))
        }
        _ => backend(e),
    })?;
    load_grant(tx, &grant.id)
}

/// Refuses a decision on a request that is no longer pending (or whose time is up): the check that
/// must hold at the moment of the write, whatever the caller saw before.
fn check_pending(rec: &RequestRecord, now: i64) -> Result<(), StoreError> {
    match rec.status {
        RequestStatus::Pending if rec.filed.expires_at <= now => Err(StoreError::Conflict(
            format!("request `{}` has expired", rec.filed.id),
        )),
        RequestStatus::Pending => Ok(()),
        RequestStatus::Cancelled => Err(StoreError::Conflict(format!(
            "request `{}` was cancelled by the technician who filed it",
            rec.filed.id
        ))),
        other => Err(StoreError::Conflict(format!(
            "request `{}` is already {}",
            rec.filed.id,
            other.as_str()
        ))),
    }
}

fn ids(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<RequestId>, StoreError> {
    stmt.query_map(params, |r| col::<RequestId>(r, 0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)
}

/// Writes one session row: inserted whole, or, when the row exists, updated with what `r` adds
/// (a close sets `closed_at`, the final bytes and the reason; an open never reopens a closed row).
fn write_session(tx: &Transaction<'_>, r: &SessionRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO sessions (id, grant_id, customer, target, technician, source_ip, opened_at, closed_at, bytes_up, bytes_down, close_reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (id) DO UPDATE SET
           closed_at = coalesce(excluded.closed_at, closed_at),
           bytes_up = CASE WHEN excluded.closed_at IS NULL THEN bytes_up ELSE excluded.bytes_up END,
           bytes_down = CASE WHEN excluded.closed_at IS NULL THEN bytes_down ELSE excluded.bytes_down END,
           close_reason = coalesce(excluded.close_reason, close_reason)",
        params![
            r.id.as_str(),
            r.grant_id.as_str(),
            r.customer.as_str(),
            r.target.as_str(),
            r.technician.to_string(),
            r.source_ip.to_string(),
            r.opened_at,
            r.closed_at,
            r.bytes_up as i64,
            r.bytes_down as i64,
            r.close_reason
        ],
    )
    .map_err(backend)?;
    Ok(())
}

impl Store for SqliteStore {
    fn file_request(
        &self,
        req: &NewRequest,
        grant: Option<&NewGrant>,
        now: i64,
    ) -> Result<RequestRecord, StoreError> {
        self.tx(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'pending', NULL, NULL, ?14)"
                ),
                params![
                    req.id.as_str(),
                    req.customer.as_str(),
                    req.target.as_str(),
                    req.technician.to_string(),
                    req.cert_thumbprint,
                    req.minutes,
                    req.reason,
                    req.ticket,
                    req.start_at,
                    req.approvals_required,
                    req.policy_id,
                    req.created_at,
                    req.expires_at,
                    req.filed_hash
                ],
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    StoreError::Conflict(format!("request `{}` already exists", req.id))
                }
                _ => backend(e),
            })?;
            if let Some(grant) = grant {
                issue(tx, req, grant, now)?;
            }
            load(tx, &req.id)
        })
    }

    fn request(&self, id: &RequestId) -> Result<RequestRecord, StoreError> {
        self.read(|tx| load(tx, id))
    }

    fn requests(
        &self,
        customer: Option<&CustomerId>,
        technician: Option<&SpiffeId>,
        status: Option<RequestStatus>,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id FROM requests
                     WHERE (?1 IS NULL OR customer = ?1) AND (?2 IS NULL OR technician = ?2)
                       AND (?3 IS NULL OR status = ?3)
                     ORDER BY created_at DESC, id LIMIT 1000",
                )
                .map_err(backend)?;
            let found = ids(
                &mut stmt,
                params![
                    customer.map(CustomerId::as_str),
                    technician.map(ToString::to_string),
                    status.map(|s| s.as_str())
                ],
            )?;
            found.iter().map(|id| load(tx, id)).collect()
        })
    }

    fn request_counts(&self) -> Result<Vec<(CustomerId, RequestStatus, u64)>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT customer, status, COUNT(*) FROM requests GROUP BY customer, status",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (customer, status, n) = row.map_err(backend)?;
                let customer = customer.parse().map_err(|e| {
                    StoreError::Backend(format!("stored customer `{customer}`: {e}"))
                })?;
                let status = RequestStatus::parse(&status)
                    .ok_or_else(|| StoreError::Backend(format!("stored status `{status}`")))?;
                out.push((customer, status, u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        })
    }

    fn approve(
        &self,
        id: &RequestId,
        approver: &SpiffeId,
        comment: Option<&str>,
        issue_grant: &dyn Fn(&NewRequest) -> Result<NewGrant, StoreError>,
        now: i64,
    ) -> Result<Approval, StoreError> {
        self.tx(|tx| {
            let rec = load(tx, id)?;
            check_pending(&rec, now)?;
            if rec.approvals.iter().any(|a| a.approver == *approver) {
                return Err(StoreError::Conflict(format!(
                    "`{approver}` has already approved request `{id}`"
                )));
            }
            tx.execute(
                "INSERT INTO approvals (request_id, approver, comment, at) VALUES (?1, ?2, ?3, ?4)",
                params![id.as_str(), approver.to_string(), comment, now],
            )
            .map_err(backend)?;
            let have = rec.approvals.len() as u32 + 1;
            if have >= rec.filed.approvals_required {
                let grant = issue_grant(&rec.filed)?;
                Ok(Approval::Granted(Box::new(issue(
                    tx, &rec.filed, &grant, now,
                )?)))
            } else {
                Ok(Approval::Recorded {
                    missing: rec.filed.approvals_required - have,
                })
            }
        })
    }

    fn deny(
        &self,
        id: &RequestId,
        approver: &SpiffeId,
        reason: &str,
        now: i64,
    ) -> Result<RequestRecord, StoreError> {
        self.tx(|tx| {
            let rec = load(tx, id)?;
            check_pending(&rec, now)?;
            tx.execute(
                "UPDATE requests SET status = 'denied', denied_by = ?2, deny_reason = ?3, decided_at = ?4 WHERE id = ?1",
                params![id.as_str(), approver.to_string(), reason, now],
            )
            .map_err(backend)?;
            load(tx, id)
        })
    }

    fn cancel(&self, id: &RequestId, now: i64) -> Result<RequestRecord, StoreError> {
        self.tx(|tx| {
            let rec = load(tx, id)?;
            check_pending(&rec, now)?;
            tx.execute(
                "UPDATE requests SET status = 'cancelled', decided_at = ?2 WHERE id = ?1",
                params![id.as_str(), now],
            )
            .map_err(backend)?;
            load(tx, id)
        })
    }

    fn expire_pending(&self, now: i64) -> Result<Vec<RequestRecord>, StoreError> {
        self.tx(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id FROM requests WHERE status = 'pending' AND expires_at <= ?1",
                )
                .map_err(backend)?;
            let due = ids(&mut stmt, params![now])?;
            for id in &due {
                tx.execute(
                    "UPDATE requests SET status = 'expired', decided_at = ?2 WHERE id = ?1",
                    params![id.as_str(), now],
                )
                .map_err(backend)?;
            }
            due.iter().map(|id| load(tx, id)).collect()
        })
    }

    fn record_grant(&self, g: &GrantRecord) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO grants (id, request_id, customer, target, technician, not_before, expires_at, audited, break_glass_by, break_glass_reason, break_glass_ticket) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    g.id.as_str(),
                    g.request_id.as_ref().map(RequestId::as_str),
                    g.customer.as_str(),
                    g.target.as_str(),
                    g.technician.to_string(),
                    g.not_before,
                    g.expires_at,
                    g.audited,
                    g.break_glass.as_ref().map(|b| b.by.as_str()),
                    g.break_glass.as_ref().map(|b| b.reason.as_str()),
                    g.break_glass.as_ref().and_then(|b| b.ticket.as_deref()),
                ],
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    StoreError::Conflict(format!("grant `{}` already exists", g.id))
                }
                _ => backend(e),
            })?;
            Ok(())
        })
    }

    fn grant(&self, id: &GrantId) -> Result<GrantRecord, StoreError> {
        self.read(|tx| load_grant(tx, id))
    }

    fn grants(
        &self,
        customer: Option<&CustomerId>,
        technician: Option<&SpiffeId>,
        break_glass_only: bool,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {GRANT_COLUMNS} FROM grants
                     WHERE (?1 IS NULL OR customer = ?1) AND (?2 IS NULL OR technician = ?2)
                       AND (?3 = 0 OR break_glass_by IS NOT NULL)
                     ORDER BY not_before DESC, id LIMIT 1000"
                ))
                .map_err(backend)?;
            stmt.query_map(
                params![
                    customer.map(CustomerId::as_str),
                    technician.map(ToString::to_string),
                    break_glass_only
                ],
                grant_row,
            )
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
        })
    }

    fn record_sessions(&self, changes: &[SessionChange]) -> Result<(), StoreError> {
        self.tx(|tx| {
            for change in changes {
                match change {
                    SessionChange::Open(r) | SessionChange::Close(r) => write_session(tx, r)?,
                }
            }
            Ok(())
        })
    }

    fn sessions(&self, f: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions
                     WHERE (?1 IS NULL OR customer = ?1) AND (?2 IS NULL OR technician = ?2)
                       AND (?3 IS NULL OR grant_id = ?3) AND (?4 = 0 OR closed_at IS NULL)
                     ORDER BY opened_at DESC, id LIMIT 1000"
                ))
                .map_err(backend)?;
            stmt.query_map(
                params![
                    f.customer.as_ref().map(CustomerId::as_str),
                    f.technician.as_ref().map(ToString::to_string),
                    f.grant.as_ref().map(GrantId::as_str),
                    f.live_only
                ],
                session_row,
            )
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
        })
    }

    fn session(&self, id: &SessionId) -> Result<SessionRecord, StoreError> {
        self.read(|tx| {
            tx.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
            ))
            .map_err(backend)?
            .query_row(params![id.as_str()], session_row)
            .optional()
            .map_err(backend)?
            .ok_or_else(|| not_found("session", id))
        })
    }

    fn close_orphaned_sessions(&self, now: i64, reason: &str) -> Result<usize, StoreError> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE sessions SET closed_at = ?1, close_reason = ?2 WHERE closed_at IS NULL",
                params![now, reason],
            )
            .map_err(backend)
        })
    }

    fn mark_grant_audited(&self, id: &GrantId) -> Result<(), StoreError> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE grants SET audited = 1 WHERE id = ?1",
                    params![id.as_str()],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(not_found("grant", id));
            }
            Ok(())
        })
    }

    fn revoke(
        &self,
        id: &GrantId,
        by: &SpiffeId,
        reason: &str,
        now: i64,
    ) -> Result<(GrantRecord, bool), StoreError> {
        self.tx(|tx| {
            let g = load_grant(tx, id)?;
            if g.revoked.is_some() {
                return Ok((g, false));
            }
            tx.execute(
                "UPDATE grants SET revoked_at = ?2, revoked_by = ?3, revoke_reason = ?4 WHERE id = ?1",
                params![id.as_str(), now, by.to_string(), reason],
            )
            .map_err(backend)?;
            Ok((load_grant(tx, id)?, true))
        })
    }

    fn add_lock(&self, lock: &NewLock, max_active: usize) -> Result<LockRecord, StoreError> {
        self.tx(|tx| locks::add_lock(tx, lock, max_active))
    }

    fn unlock(
        &self,
        id: &LockId,
        by: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<LockRecord, StoreError> {
        self.tx(|tx| locks::unlock(tx, id, by, reason, now))
    }

    fn lock(&self, id: &LockId) -> Result<LockRecord, StoreError> {
        self.read(|tx| locks::lock(tx, id))
    }

    fn locks(&self, active_at: Option<i64>, limit: usize) -> Result<Vec<LockRecord>, StoreError> {
        self.read(|tx| locks::locks(tx, active_at, limit))
    }

    fn locks_version(&self) -> Result<i64, StoreError> {
        self.read(locks::locks_version)
    }

    fn record_certificate(&self, cert: &IssuedCertificate) -> Result<(), StoreError> {
        self.tx(|tx| locks::record_certificate(tx, cert))
    }

    fn certificate(
        &self,
        sha256: &CertFingerprint,
    ) -> Result<Option<IssuedCertificate>, StoreError> {
        self.read(|tx| locks::certificate(tx, sha256))
    }

    fn certificates_of(
        &self,
        holder: &SpiffeId,
        valid_at: i64,
    ) -> Result<Vec<IssuedCertificate>, StoreError> {
        self.read(|tx| locks::certificates_of(tx, holder, valid_at))
    }
}

#[cfg(test)]
mod tests;
