//! The register of issued certificates, written by `sallyport certs issue` (and `init`) next to a
//! live broker, and `certs issue --replace`: the new certificate's earlier siblings (same SPIFFE id,
//! still valid) are locked one by one, everywhere, until they expire, each lock on the trail. A
//! running broker picks the locks up within [`super::REFRESH`], cuts their tunnels and tells the
//! customers concerned. Blocking: for the command line.

use sallyport_audit::{AuditLog, EventKind};
use sallyport_ids::CustomerId;
use sallyport_ids::LockId;
use sallyport_store::{IssuedCertificate, LockRecord, LockTarget, NewLock, Store, StoreError};

use crate::WorkflowError;

/// What registering an issued certificate did.
#[derive(Debug, Clone, Default)]
pub struct Registered {
    /// The earlier certificates locked because the new one replaces them.
    pub locked: Vec<LockRecord>,
}

/// Registers `issued`, a certificate just written (idempotent).
pub fn register_issued(store: &dyn Store, issued: &IssuedCertificate) -> Result<(), WorkflowError> {
    Ok(store.record_certificate(issued)?)
}

/// Locks the other registered certificates of `issued`'s holder still valid at `now`, as `actor`
/// (e.g. `certs-issue:<operator>`), each until it expires. Each lock is recorded on the chains it
/// concerns (`trail` must have every configured customer's chain open); a lock whose record cannot
/// be written still stands, and the error says so.
pub fn replace_earlier(
    store: &dyn Store,
    trail: &AuditLog,
    customers: &[CustomerId],
    issued: &IssuedCertificate,
    actor: &str,
    now: i64,
) -> Result<Registered, WorkflowError> {
    let mut out = Registered::default();
    let earlier = store.certificates_of(&issued.holder, now)?;
    for cert in earlier.into_iter().filter(|c| c.sha256 != issued.sha256) {
        let lock = NewLock {
            id: LockId::mint(),
            target: LockTarget::Certificate {
                serial: cert.serial.clone(),
                sha256: cert.sha256,
                holder: Some(cert.holder.clone()),
            },
            customer: None,
            reason: format!(
                "replaced by certificate {} (`certs issue --replace`)",
                issued.serial
            ),
            created_by: actor.to_owned(),
            created_at: now,
            // Once the certificate has expired it needs no lock.
            expires_at: Some(cert.not_after),
        };
        let rec = match store.add_lock(&lock, super::MAX_ACTIVE_LOCKS) {
            Ok(r) => r,
            // Locked before (an earlier --replace): nothing to add.
            Err(StoreError::Conflict(m)) if m.contains("already locked") => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in super::events(&rec, EventKind::IdentityLocked, customers, None) {
            trail.append_blocking(ev).map_err(|e| {
                tracing::error!(error = %e, lock = %rec.lock.id, "a lock could not be audited (it applies regardless)");
                WorkflowError::AuditUnavailable
            })?;
        }
        out.locked.push(rec);
    }
    Ok(out)
}
