//! Locks and the register of issued certificates in SQLite: the `locks` and `certificates` tables.
//! Every addition or lifting of a lock takes the next `version`, so `MAX(version)` tells a broker
//! cheaply whether another process changed the locks.

use rusqlite::{OptionalExtension, Transaction, params};
use sallyport_ids::LockId;
use sallyport_ids::cert::CertFingerprint;
use sallyport_ids::time::rfc3339;

use super::{backend, col, not_found, opt_col};
use crate::{IssuedCertificate, LockRecord, LockTarget, NewLock, StoreError, Unlock};

const LOCK_COLUMNS: &str = "id, kind, spiffe_id, cert_serial, cert_sha256, customer, reason, created_by, created_at, expires_at, unlocked_at, unlocked_by, unlock_reason";

/// Rows active at `?1`.
const ACTIVE: &str = "unlocked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1)";

fn lock_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LockRecord> {
    let kind: String = r.get(1)?;
    let target = if kind == "certificate" {
        LockTarget::Certificate {
            serial: col(r, 3)?,
            sha256: col(r, 4)?,
            holder: opt_col(r, 2)?,
        }
    } else {
        LockTarget::Identity(col(r, 2)?)
    };
    let unlocked_at: Option<i64> = r.get(10)?;
    let unlocked_by: Option<String> = r.get(11)?;
    let unlock_reason: Option<String> = r.get(12)?;
    Ok(LockRecord {
        lock: NewLock {
            id: col(r, 0)?,
            target,
            customer: opt_col(r, 5)?,
            reason: r.get(6)?,
            created_by: r.get(7)?,
            created_at: r.get(8)?,
            expires_at: r.get(9)?,
        },
        unlocked: unlocked_at.zip(unlocked_by).map(|(at, by)| Unlock {
            at,
            by,
            reason: unlock_reason,
        }),
    })
}

fn load_lock(tx: &Transaction<'_>, id: &LockId) -> Result<LockRecord, StoreError> {
    tx.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks WHERE id = ?1"))
        .map_err(backend)?
        .query_row(params![id.as_str()], lock_row)
        .optional()
        .map_err(backend)?
        .ok_or_else(|| not_found("lock", id))
}

fn next_version(tx: &Transaction<'_>) -> Result<i64, StoreError> {
    tx.query_row("SELECT COALESCE(MAX(version), 0) + 1 FROM locks", [], |r| {
        r.get(0)
    })
    .map_err(backend)
}

pub(super) fn add_lock(
    tx: &Transaction<'_>,
    l: &NewLock,
    max_active: usize,
) -> Result<LockRecord, StoreError> {
    let now = l.created_at;
    let (spiffe, serial, sha256) = match &l.target {
        LockTarget::Identity(id) => (Some(id.to_string()), None, None),
        LockTarget::Certificate {
            serial,
            sha256,
            holder,
        } => (
            holder.as_ref().map(ToString::to_string),
            Some(serial.to_string()),
            Some(sha256.to_string()),
        ),
    };
    let customer = l.customer.as_ref().map(|c| c.as_str().to_owned());
    let same: Option<LockId> = tx
        .prepare_cached(&format!(
            "SELECT id FROM locks WHERE {ACTIVE} AND kind = ?2 AND customer IS ?3
               AND CASE kind WHEN 'identity' THEN spiffe_id = ?4 ELSE cert_sha256 = ?5 END
             ORDER BY created_at LIMIT 1"
        ))
        .map_err(backend)?
        .query_row(
            params![now, l.target.kind(), customer, spiffe, sha256],
            |r| col(r, 0),
        )
        .optional()
        .map_err(backend)?;
    if let Some(other) = same {
        let what = match &l.target {
            LockTarget::Identity(id) => format!("`{id}`"),
            LockTarget::Certificate { serial, .. } => format!("certificate `{serial}`"),
        };
        let scope = match &l.customer {
            Some(c) => format!(" for customer `{c}`"),
            None => String::new(),
        };
        return Err(StoreError::Conflict(format!(
            "{what} is already locked{scope} (lock `{other}`)"
        )));
    }
    let active: i64 = tx
        .prepare_cached(&format!("SELECT COUNT(*) FROM locks WHERE {ACTIVE}"))
        .map_err(backend)?
        .query_row(params![now], |r| r.get(0))
        .map_err(backend)?;
    if usize::try_from(active).unwrap_or(usize::MAX) >= max_active {
        return Err(StoreError::Conflict(format!(
            "{max_active} locks are active, the most the broker keeps; unlock some or let them end"
        )));
    }
    let version = next_version(tx)?;
    tx.execute(
        &format!(
            "INSERT INTO locks ({LOCK_COLUMNS}, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL, NULL, ?11)"
        ),
        params![
            l.id.as_str(),
            l.target.kind(),
            spiffe,
            serial,
            sha256,
            customer,
            l.reason,
            l.created_by,
            l.created_at,
            l.expires_at,
            version
        ],
    )
    .map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => {
            StoreError::Conflict(format!("lock `{}` already exists", l.id))
        }
        _ => backend(e),
    })?;
    load_lock(tx, &l.id)
}

pub(super) fn unlock(
    tx: &Transaction<'_>,
    id: &LockId,
    by: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<LockRecord, StoreError> {
    let rec = load_lock(tx, id)?;
    if let Some(u) = &rec.unlocked {
        return Err(StoreError::Conflict(format!(
            "lock `{id}` was already lifted by {} at {}",
            sallyport_ids::short(&u.by),
            rfc3339(u.at)
        )));
    }
    if let Some(end) = rec.lock.expires_at.filter(|end| *end <= now) {
        return Err(StoreError::Conflict(format!(
            "lock `{id}` already ended at {}",
            rfc3339(end)
        )));
    }
    let version = next_version(tx)?;
    tx.execute(
        "UPDATE locks SET unlocked_at = ?2, unlocked_by = ?3, unlock_reason = ?4, version = ?5 WHERE id = ?1",
        params![id.as_str(), now, by, reason, version],
    )
    .map_err(backend)?;
    load_lock(tx, id)
}

pub(super) fn lock(tx: &Transaction<'_>, id: &LockId) -> Result<LockRecord, StoreError> {
    load_lock(tx, id)
}

pub(super) fn locks(
    tx: &Transaction<'_>,
    active_at: Option<i64>,
    limit: usize,
) -> Result<Vec<LockRecord>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {LOCK_COLUMNS} FROM locks WHERE ?1 IS NULL OR ({ACTIVE})
             ORDER BY created_at DESC, id LIMIT ?2"
        ))
        .map_err(backend)?;
    stmt.query_map(params![active_at, limit], lock_row)
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)
}

pub(super) fn locks_version(tx: &Transaction<'_>) -> Result<i64, StoreError> {
    tx.prepare_cached("SELECT COALESCE(MAX(version), 0) FROM locks")
        .map_err(backend)?
        .query_row([], |r| r.get(0))
        .map_err(backend)
}

const CERT_COLUMNS: &str = "serial, sha256, spiffe_id, issued_at, not_after";

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IssuedCertificate> {
    Ok(IssuedCertificate {
        serial: col(r, 0)?,
        sha256: col(r, 1)?,
        holder: col(r, 2)?,
        issued_at: r.get(3)?,
        not_after: r.get(4)?,
    })
}

pub(super) fn record_certificate(
    tx: &Transaction<'_>,
    c: &IssuedCertificate,
) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO certificates ({CERT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (sha256) DO NOTHING"
        ),
        params![
            c.serial.to_string(),
            c.sha256.to_string(),
            c.holder.to_string(),
            c.issued_at,
            c.not_after
        ],
    )
    .map_err(backend)?;
    Ok(())
}

pub(super) fn certificate(
    tx: &Transaction<'_>,
    sha256: &CertFingerprint,
) -> Result<Option<IssuedCertificate>, StoreError> {
    tx.prepare_cached(&format!(
        "SELECT {CERT_COLUMNS} FROM certificates WHERE sha256 = ?1"
    ))
    .map_err(backend)?
    .query_row(params![sha256.to_string()], cert_row)
    .optional()
    .map_err(backend)
}

pub(super) fn certificates_of(
    tx: &Transaction<'_>,
    holder: &sallyport_ids::SpiffeId,
    valid_at: i64,
) -> Result<Vec<IssuedCertificate>, StoreError> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE spiffe_id = ?1 AND not_after > ?2
             ORDER BY issued_at DESC, sha256 LIMIT 1000"
        ))
        .map_err(backend)?;
    stmt.query_map(params![holder.to_string(), valid_at], cert_row)
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)
}

#[cfg(test)]
mod tests;
