//! The audit trail: one JSON object per line, a SHA-256 hash chain per customer, every record
//! fsync'ed before the action it records goes ahead.
//!
//! Files (see [`segment`]): `<data_dir>/audit/<customer>/<YYYY-MM-DD>.jsonl`, daily segments of one
//! chain, and `<data_dir>/audit/_broker/` for events that belong to no customer (a handshake without a
//! valid certificate, an unreadable grant). `_` cannot start a customer id, so the names never collide.
//!
//! Record ([`event`]): `seq`, `time` (RFC 3339 UTC), `customer`, `event`, `actor`, `target`,
//! (`subject`), `grant_id`, `session_id`, `source_ip`, `outcome`, `reason`, `policy_ids`, for closes
//! `bytes_up`, `bytes_down`, `duration_ms`, then `prev_hash` and `hash` last. `hash` is the lowercase hex
//! SHA-256 of the line's bytes with the `,"hash":"…"` member removed (the object then ends right after
//! `prev_hash`), and `prev_hash` is the previous record's `hash` (64 zeros for the first). Anyone can
//! recompute it from the file without a canonical-JSON library. `docs/audit-format.md` is the full
//! specification.
//!
//! Writes ([`writer`], on the on-disk chains of [`chain`]) go through one writer thread that takes
//! every record waiting, appends them, and issues one fsync per touched chain for the whole batch (group
//! commit). A chain's lock file is held (`flock`) while a batch is appended, and the writer re-reads the
//! chain head when the files changed under it, so a CLI command (`sallyport grant`) can append to the
//! same chain while the broker runs. The writer moves to a new segment when the UTC date changes, and
//! retires segments past the retention period.
//!
//! Around the trail: signed [`checkpoint`]s, the offline [`verify`]er, evidence [`bundle`]s, session
//! [`capture`] files (their format and their check against the trail), [`query`] for readers and the
//! [`ocsf`] mapping for SIEMs.
//!
//! This crate depends on `ids` and `certs` only; it knows nothing of requests, tunnels or HTTP.

pub mod bundle;
pub mod capture;
mod chain;
pub mod checkpoint;
pub mod event;
pub mod idp;
pub mod ocsf;
pub mod query;
pub mod segment;
pub mod signed;
pub mod verify;
pub mod writer;

use std::path::PathBuf;

pub use checkpoint::Checkpoints;
pub use event::{
    Appended, AuditEvent, EventKind, Operator, Outcome, Retired, check_line, clip, render,
};
pub use idp::{Decision, IdpEvidence, decision_nonce};
pub use verify::verify_chain;
pub use writer::{AuditLog, AuditWriter, Health};

/// `prev_hash` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Chain name for events that belong to no customer.
pub const BROKER_CHAIN: &str = "_broker";

/// Everything that can go wrong with the trail and its evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// Writing, syncing or reading a file failed.
    #[error("audit file {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// A chain file's last complete record does not verify: edited or corrupted, not a torn write.
    #[error(
        "audit file {path}: its last record does not verify (edited or corrupted); find the problem with `sallyport audit verify --data DATA_DIR` and restore the file from a copy"
    )]
    Corrupt {
        /// The chain file.
        path: PathBuf,
    },
    /// The writer has stopped.
    #[error("audit writer has stopped")]
    Closed,
    /// A record line does not verify (what is wrong, and where when known).
    #[error("{0}")]
    Record(String),
    /// A checkpoint line or the audit key is not usable.
    #[error("{0}")]
    Checkpoint(String),
    /// A time given to a query is not a time.
    #[error("{0}")]
    Time(String),
    /// An evidence bundle is not intact: which part, and how.
    #[error("{0}")]
    Bundle(String),
    /// A session capture is missing, altered or unreadable.
    #[error("{0}")]
    Capture(String),
}

/// `AuditError::Io` for `path`.
pub(crate) fn io_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |e| AuditError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
