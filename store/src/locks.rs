//! What the store keeps about locks and issued certificates: a lock bars an identity (a SPIFFE id)
//! or one certificate (serial and SHA-256 fingerprint), everywhere or for one customer, until it is
//! unlocked or reaches its end time; the register of issued certificates lets a lock by certificate
//! name its holder and lets `certs issue --replace` find the earlier certificates of an identity.
//!
//! Who may lock what, and what a lock bars, are the workflow's rules; the store keeps at most the
//! given number of active locks and one active lock per target and scope, atomically.

use sallyport_ids::cert::{CertFingerprint, CertSerial};
use sallyport_ids::{CustomerId, LockId, SpiffeId};

/// What a lock bars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockTarget {
    /// Every certificate of this identity, issued before or after the lock.
    Identity(SpiffeId),
    /// One certificate.
    Certificate {
        /// Its serial number.
        serial: CertSerial,
        /// The SHA-256 of its DER encoding: what a connection is matched on.
        sha256: CertFingerprint,
        /// Whose certificate it is, when known (from the certificate or the register).
        holder: Option<SpiffeId>,
    },
}

impl LockTarget {
    /// `identity` or `certificate`, as stored and shown.
    pub fn kind(&self) -> &'static str {
        match self {
            LockTarget::Identity(_) => "identity",
            LockTarget::Certificate { .. } => "certificate",
        }
    }

    /// The identity the lock concerns, when known.
    pub fn holder(&self) -> Option<&SpiffeId> {
        match self {
            LockTarget::Identity(id) => Some(id),
            LockTarget::Certificate { holder, .. } => holder.as_ref(),
        }
    }
}

/// A lock as made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLock {
    /// Lock id.
    pub id: LockId,
    /// What it bars.
    pub target: LockTarget,
    /// `None`: everywhere; else only this customer's targets, requests and grants.
    pub customer: Option<CustomerId>,
    /// Why.
    pub reason: String,
    /// Who locked (a SPIFFE id, or `certs-issue:<operator>` for `certs issue --replace`).
    pub created_by: String,
    /// When.
    pub created_at: i64,
    /// When it stops applying by itself; `None`: until unlocked.
    pub expires_at: Option<i64>,
}

/// The lifting of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlock {
    /// When.
    pub at: i64,
    /// By whom.
    pub by: String,
    /// Why, if they said.
    pub reason: Option<String>,
}

/// A lock with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    /// The lock as made.
    pub lock: NewLock,
    /// When it was lifted.
    pub unlocked: Option<Unlock>,
}

impl LockRecord {
    /// Whether it applies at `now`: not lifted and not past its end time.
    pub fn active_at(&self, now: i64) -> bool {
        self.unlocked.is_none() && self.lock.expires_at.is_none_or(|end| end > now)
    }
}

/// A client certificate issued by `sallyport certs issue` (or `init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Its serial number.
    pub serial: CertSerial,
    /// The SHA-256 of its DER encoding.
    pub sha256: CertFingerprint,
    /// Whose it is.
    pub holder: SpiffeId,
    /// When it was issued.
    pub issued_at: i64,
    /// When it expires.
    pub not_after: i64,
}
