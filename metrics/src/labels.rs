//! The label values the broker records under: closed enums, each with its one spelling, so no label
//! can take a value a client chose. Customers are the other label, and only configured ids are ever
//! used (see [`crate::Metrics::customer`]).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// Writes a closed enum's spelling as its label value.
macro_rules! label_value {
    ($name:ident) => {
        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// Why a CONNECT was refused (`reason` of `sallyport_tunnels_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelRefusal {
    /// 400: the request target is not `<target>.<customer>:<port>`.
    BadAuthority,
    /// 407: no grant was sent.
    MissingGrant,
    /// 407: the grant does not verify (signature, claims, window).
    InvalidGrant,
    /// 403: the grant is bound to another certificate, or the peer is no technician.
    WrongCertificate,
    /// 403: the grant is for another customer, target or port.
    WrongTarget,
    /// 404: no such customer or target.
    UnknownTarget,
    /// 403: the customer's `connect` policy denied it.
    PolicyDenied,
    /// 403: the grant was revoked.
    Revoked,
    /// 403: the identity or certificate is locked.
    Locked,
    /// 429: the identity is past its failure budget.
    RateLimited,
    /// 502: the target did not answer.
    Unreachable,
    /// 503: the audit trail, the store, the lock state or the session capture is not available.
    Unavailable,
}

impl TunnelRefusal {
    /// Every reason, in the order of their counters.
    pub const ALL: [TunnelRefusal; 12] = [
        TunnelRefusal::BadAuthority,
        TunnelRefusal::MissingGrant,
        TunnelRefusal::InvalidGrant,
        TunnelRefusal::WrongCertificate,
        TunnelRefusal::WrongTarget,
        TunnelRefusal::UnknownTarget,
        TunnelRefusal::PolicyDenied,
        TunnelRefusal::Revoked,
        TunnelRefusal::Locked,
        TunnelRefusal::RateLimited,
        TunnelRefusal::Unreachable,
        TunnelRefusal::Unavailable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelRefusal::BadAuthority => "bad_authority",
            TunnelRefusal::MissingGrant => "missing_grant",
            TunnelRefusal::InvalidGrant => "invalid_grant",
            TunnelRefusal::WrongCertificate => "wrong_certificate",
            TunnelRefusal::WrongTarget => "wrong_target",
            TunnelRefusal::UnknownTarget => "unknown_target",
            TunnelRefusal::PolicyDenied => "policy_denied",
            TunnelRefusal::Revoked => "revoked",
            TunnelRefusal::Locked => "locked",
            TunnelRefusal::RateLimited => "rate_limited",
            TunnelRefusal::Unreachable => "unreachable",
            TunnelRefusal::Unavailable => "unavailable",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
label_value!(TunnelRefusal);

/// How a TLS handshake failed (`kind` of `sallyport_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The client presented no certificate.
    NoCertificate,
    /// The client's certificate has expired (or is not yet valid).
    ExpiredCertificate,
    /// The client's certificate is not from the broker CA, or is otherwise invalid.
    UntrustedCertificate,
    /// The certificate verified but names no usable identity of this trust domain.
    IdentityRefused,
    /// Any other TLS failure (protocol, version, cipher suite).
    Protocol,
    /// The handshake did not finish within `limits.handshake_timeout_seconds`.
    Timeout,
}

impl HandshakeFailure {
    /// Every kind, in the order of their counters.
    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::NoCertificate,
        HandshakeFailure::ExpiredCertificate,
        HandshakeFailure::UntrustedCertificate,
        HandshakeFailure::IdentityRefused,
        HandshakeFailure::Protocol,
        HandshakeFailure::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::ExpiredCertificate => "expired_certificate",
            HandshakeFailure::UntrustedCertificate => "untrusted_certificate",
            HandshakeFailure::IdentityRefused => "identity_refused",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
        }
    }
}
label_value!(HandshakeFailure);

/// Which limit refused a call (`limiter` of `sallyport_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limiter {
    /// An identity past its budget of refused CONNECTs (answered 429).
    AuthFailures,
    /// A source address past its budget of failed handshakes (aggregated on the trail).
    UnauthenticatedFailures,
    /// A technician filing requests too fast (429).
    RequestFilings,
    /// An identity calling the API too fast (429).
    ApiCalls,
    /// A connection closed at accept for want of a handshake slot.
    HandshakeSlots,
}

impl Limiter {
    /// Every limiter, in the order of their counters.
    pub const ALL: [Limiter; 5] = [
        Limiter::AuthFailures,
        Limiter::UnauthenticatedFailures,
        Limiter::RequestFilings,
        Limiter::ApiCalls,
        Limiter::HandshakeSlots,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Limiter::AuthFailures => "auth_failures",
            Limiter::UnauthenticatedFailures => "unauthenticated_failures",
            Limiter::RequestFilings => "request_filings",
            Limiter::ApiCalls => "api_calls",
            Limiter::HandshakeSlots => "handshake_slots",
        }
    }
}
label_value!(Limiter);

/// Where a request stands (`state` of `sallyport_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// Approved: a grant exists.
    Approved,
    /// Denied.
    Denied,
    /// Nobody decided in time.
    Expired,
    /// Withdrawn by the technician who filed it.
    Cancelled,
}

impl RequestState {
    /// Every state, in the order of their gauges.
    pub const ALL: [RequestState; 5] = [
        RequestState::Pending,
        RequestState::Approved,
        RequestState::Denied,
        RequestState::Expired,
        RequestState::Cancelled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Cancelled => "cancelled",
        }
    }

    /// The state of this name (the store's spelling).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}
label_value!(RequestState);

/// Which way bytes went (`direction` of `sallyport_tunnel_bytes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Technician to target.
    Up,
    /// Target to technician.
    Down,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}
label_value!(Direction);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CustomerLabel {
    pub(crate) customer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    pub(crate) customer: String,
    pub(crate) reason: TunnelRefusal,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BytesLabels {
    pub(crate) customer: String,
    pub(crate) direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) customer: String,
    pub(crate) state: RequestState,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: HandshakeFailure,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimiterLabel {
    pub(crate) limiter: Limiter,
}

/// How a reload of the configuration ended (`outcome` of `sallyport_config_reloads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadOutcome {
    /// The new configuration is in force.
    Applied,
    /// It was refused (a bad file, a restart-only change, a record not written); the old one serves.
    Refused,
}

impl ReloadOutcome {
    /// Every outcome, in the order of their counters.
    pub const ALL: [ReloadOutcome; 2] = [ReloadOutcome::Applied, ReloadOutcome::Refused];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Refused => "refused",
        }
    }
}
label_value!(ReloadOutcome);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: ReloadOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SinkLabels {
    pub(crate) customer: String,
    pub(crate) sink: String,
}
