//! Telling each customer what happens, on the customer's own systems: webhooks ([`webhook`]) when
//! requests are filed, approved, denied or expire and when grants are revoked, and the audit trail
//! forwarded into the customer's SIEM ([`siem`]: syslog over TCP or TLS, or HTTPS JSON lines). Both go
//! out through the one outgoing HTTP client ([`client`]) and never hold up the caller.
//!
//! Settings come from the config crate (`WebhookTarget`, `SinkKind`); the SIEM forwarder reads the
//! trail through the audit crate. Nothing here decides anything about access.

pub mod client;
pub mod siem;
pub mod webhook;

pub use webhook::{GiveUp, Notification, Notifier};

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The receiver could not be reached, refused the connection or the TLS handshake, or did not
    /// answer in time: worth trying again.
    #[error("{0}")]
    Unreachable(String),
    /// The delivery can never succeed as configured (a host that is not a TLS name, a request that
    /// cannot be built): not tried again.
    #[error("{0}")]
    Refused(String),
}
