//! The inputs and output of a decision: action, subject (principal), target, request context and
//! [`Decision`].

use std::fmt::Write as _;
use std::net::IpAddr;

use sallyport_ids::{CustomerId, GroupName, PersonName, ProviderId, SpiffeId, TargetId};

/// What the subject wants to do; each is a Cedar action `Sallyport::Action::"<name>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A technician opens a tunnel to a target (`connect`).
    Connect,
    /// A technician asks for just-in-time access to a target (`request`).
    Request,
    /// An approver approves a request for access to a target (`approve`).
    Approve,
}

impl Action {
    /// The Cedar action id: `connect`, `request` or `approve`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "connect",
            Action::Request => "request",
            Action::Approve => "approve",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A customer target, as the broker's configuration knows it (the Cedar resource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// The customer owning the target.
    pub customer: CustomerId,
    /// The target's id within its customer.
    pub id: TargetId,
    /// Free-form tags (`prod`, `db`, ...), visible to policies as `resource.tags`.
    pub tags: Vec<String>,
    /// The target's port.
    pub port: u16,
    /// The target's protocol (`ssh`, `rdp`, `http`, ...).
    pub protocol: String,
}

/// Who is asking (the Cedar principal), as proven by their client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Provider staff: `Sallyport::Technician::"<provider>/<name>"`, member of one group per `groups`.
    Technician {
        /// The certificate's SPIFFE id; must name the same provider and technician.
        id: SpiffeId,
        /// The provider the technician works for.
        provider: ProviderId,
        /// The technician's name.
        name: PersonName,
        /// The certificate's groups, as `Sallyport::Group` parents.
        groups: Vec<GroupName>,
    },
    /// A customer's approver: `Sallyport::Approver::"<name>"`, member of its customer.
    Approver {
        /// The certificate's SPIFFE id; must name the same customer and approver.
        id: SpiffeId,
        /// The customer the approver decides for.
        customer: CustomerId,
        /// The approver's name.
        name: PersonName,
    },
}

/// The circumstances of a request, turned into the Cedar context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// When the request is made; policies see `context.hour` and `context.weekday` in the customer's zone.
    pub now: jiff::Timestamp,
    /// Minutes of access asked for (`context.minutes`).
    pub minutes: u32,
    /// Where the subject connects from (`context.source_ip`).
    pub source_ip: IpAddr,
    /// Change or incident ticket (`context.ticket`, `""` when `None`).
    pub ticket: Option<String>,
    /// Whether the subject signed in with more than one factor (`context.mfa`).
    pub mfa: bool,
}

/// The outcome of [`crate::CustomerPolicy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Short lowercase explanation, e.g. "permitted by policy `x`" or "no policy permits this request".
    pub reason: String,
    /// Ids of the policies that determined the decision, sorted: the permits when allowed, the forbids
    /// when forbidden, the failing policies when an evaluation error denied; empty otherwise.
    pub policy_ids: Vec<String>,
    /// Evaluation errors, one line each; any error denies the request.
    pub errors: Vec<String>,
}

impl Decision {
    /// A denial that evaluated no policy.
    pub(crate) fn deny(reason: &str) -> Self {
        Self {
            allowed: false,
            reason: reason.to_owned(),
            policy_ids: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// A decision determined by `policy_ids` (already sorted), with `verb` such as "permitted by".
    pub(crate) fn by_policies(allowed: bool, verb: &str, policy_ids: Vec<String>) -> Self {
        let mut reason = String::from(verb);
        reason.push_str(if policy_ids.len() == 1 {
            " policy "
        } else {
            " policies "
        });
        for (i, id) in policy_ids.iter().enumerate() {
            if i > 0 {
                reason.push_str(", ");
            }
            // Writing to a String cannot fail.
            let _ = write!(reason, "`{id}`");
        }
        Self {
            allowed,
            reason,
            policy_ids,
            errors: Vec::new(),
        }
    }
}
