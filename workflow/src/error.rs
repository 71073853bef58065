//! [`WorkflowError`]: why a workflow action was refused or could not be done, in words a person can
//! act on. Each variant says which side failed (the caller, the state, or the broker) so an HTTP
//! handler or a console page only maps it to its status and renders it.

use std::time::Duration;

use sallyport_store::StoreError;

/// Why a workflow action did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// The caller gave a bad value (`code` names it, e.g. `bad_minutes`).
    #[error("{message}")]
    Invalid {
        /// A short machine-readable name of the problem.
        code: String,
        /// What is wrong and what to give instead.
        message: String,
    },
    /// The caller may not do this (their role, or the customer's policy).
    #[error("{0}")]
    Forbidden(String),
    /// The caller's identity or certificate is locked: barred until unlocked (the message says by
    /// whom, why and until when).
    #[error("{0}")]
    Locked(String),
    /// Nothing by that name that the caller may see (tenants are walls: another customer's objects
    /// are reported as missing, never as forbidden).
    #[error("{0}")]
    NotFound(String),
    /// The action does not fit the current state (approving a denied request, fetching an expired
    /// grant, ...).
    #[error("{0}")]
    Conflict(String),
    /// The caller is over its rate for `what`; try again after `wait`.
    #[error("too many {what}; try again in {} s", wait.as_secs().max(1))]
    RateLimited {
        /// What was counted, e.g. `access requests filed`.
        what: &'static str,
        /// How long until the next one is allowed.
        wait: Duration,
    },
    /// The audit trail is not writable, so nothing that would need a record was done.
    #[error("the audit trail is not writable")]
    AuditUnavailable,
    /// The state store failed (the detail is logged, not shown).
    #[error("the state store is unavailable; try again shortly")]
    StoreUnavailable(String),
    /// A grant could not be signed.
    #[error("the grant could not be signed")]
    SigningFailed,
    /// An identity provider's answer was refused (a bad token, the wrong person, no MFA); the
    /// refusal is on the trail.
    #[error("{0}")]
    IdpRefused(String),
    /// An identity provider could not be reached or answered nonsense.
    #[error("the identity provider is unavailable: {0}")]
    IdpUnavailable(String),
    /// The audit trail could not be read (evidence, queries).
    #[error(transparent)]
    Trail(#[from] sallyport_audit::AuditError),
}

impl WorkflowError {
    /// A bad value of field `name`.
    pub fn invalid(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Parses the id of a `kind` (`request`, `grant`, `session`) given by a caller: text that is not an
/// id names nothing, so it is `NotFound` like an id nobody filed.
pub fn parse_id<T: std::str::FromStr>(kind: &str, text: &str) -> Result<T, WorkflowError> {
    text.parse()
        .map_err(|_| WorkflowError::NotFound(format!("no {kind} `{text}`")))
}

impl From<StoreError> for WorkflowError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => Self::NotFound(format!("no {kind} `{id}`")),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Backend(m) => {
                tracing::error!(error = %m, "store failed");
                Self::StoreUnavailable(m)
            }
        }
    }
}
