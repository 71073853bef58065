//! The CONNECT decision: every check before a tunnel opens, as one pure function of plain values
//! ([`decide`]): the grant as verified, the peer's certificate identity, the authority asked for, the
//! time, and the customers' catalogue. Stages, in order: grant -> not past `exp` -> bound to this
//! certificate (and a technician's) -> the authority routes to a configured target of the grant's
//! customer, target and port -> the customer's `connect` policy. The first failing stage refuses with
//! its status, its reason and how it is audited. No I/O: the caller verifies the grant's signature,
//! checks revocation and rate limits, and writes the records.
//!
//! The request target is read strictly ([`route`]): exactly `<target>.<customer>:<port>`, in
//! authority form, the names valid ids, the port 1 to 65535 in digits without a leading zero; no
//! absolute form (`http://...`), no userinfo (`user@`), no path.

use std::net::IpAddr;
use std::time::Duration;

use hyper::StatusCode;
use hyper::Uri;
use sallyport_audit::{EventKind, clip};
use sallyport_certs::grant::{GrantClaims, GrantError};
use sallyport_certs::identity::PeerIdentity;
use sallyport_config::{Customer, Target};
use sallyport_ids::{CustomerId, Principal, Role, TargetId};
use sallyport_metrics::TunnelRefusal;
use sallyport_policy::{Action, RequestContext, Subject, TargetInfo};

/// The grant a CONNECT carried, as verification left it.
#[derive(Debug, Clone)]
pub enum GrantCheck {
    /// No `Proxy-Authorization: Bearer` grant.
    Missing,
    /// The grant does not verify; `signed` holds its claims when its signature did (a grant whose
    /// only fault is its window still names a customer).
    Refused {
        /// Why.
        error: GrantError,
        /// The claims of a grant whose signature checked.
        signed: Option<Box<GrantClaims>>,
    },
    /// A grant that verified.
    Verified(Box<GrantClaims>),
}

/// What a CONNECT asks, with everything [`decide`] looks at.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    /// Who, from the client certificate.
    pub peer: &'a PeerIdentity,
    /// From where.
    pub ip: IpAddr,
    /// The request target of the CONNECT, `<target>.<customer>:<port>`.
    pub uri: &'a Uri,
    /// The grant.
    pub grant: GrantCheck,
    /// Now.
    pub now: jiff::Timestamp,
}

/// A refused tunnel request: its status, reason and how it is audited.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The answer's status.
    pub status: StatusCode,
    /// Why, for the answer and the record.
    pub reason: String,
    /// The record's event.
    pub event: EventKind,
    /// The customer the attempt concerns, as named by the grant.
    pub customer: Option<String>,
    /// The target, as named (the grant's, or `<target>.<customer>` as the client asked).
    pub target: Option<String>,
    /// The grant concerned.
    pub grant_id: Option<String>,
    /// The policies that decided a policy refusal.
    pub policy_ids: Vec<String>,
    /// SHA-256 of the customer's policy set that decided a policy refusal.
    pub policy_digest: Option<String>,
    /// Spends the identity's failure budget: every refusal of the client's own making does; a 429
    /// or the broker's own failure (503) does not.
    pub counts: bool,
    /// For a 429: when to try again.
    pub retry_after: Option<Duration>,
    /// Another customer whose target was named: the attempt goes on that customer's chain too.
    pub also_for: Option<String>,
    /// Why, as counted (`reason` of `sallyport_tunnels_refused_total`): from the status unless a
    /// stage says more.
    pub kind: TunnelRefusal,
}

impl Refusal {
    /// A refusal with only its status, event and reason.
    pub fn new(status: StatusCode, event: EventKind, reason: impl Into<String>) -> Box<Self> {
        Box::new(Self {
            status,
            reason: reason.into(),
            event,
            customer: None,
            target: None,
            grant_id: None,
            policy_ids: Vec::new(),
            policy_digest: None,
            counts: true,
            retry_after: None,
            also_for: None,
            kind: match status {
                StatusCode::BAD_REQUEST => TunnelRefusal::BadAuthority,
                StatusCode::NOT_FOUND => TunnelRefusal::UnknownTarget,
                StatusCode::PROXY_AUTHENTICATION_REQUIRED => TunnelRefusal::InvalidGrant,
                StatusCode::TOO_MANY_REQUESTS => TunnelRefusal::RateLimited,
                StatusCode::FORBIDDEN => TunnelRefusal::WrongTarget,
                StatusCode::BAD_GATEWAY => TunnelRefusal::Unreachable,
                _ => TunnelRefusal::Unavailable,
            },
        })
    }

    /// Counted as `kind`.
    pub fn counted_as(mut self: Box<Self>, kind: TunnelRefusal) -> Box<Self> {
        self.kind = kind;
        self
    }

    /// About the grant of `claims`: its customer, target and id.
    pub fn about(mut self: Box<Self>, claims: &GrantClaims) -> Box<Self> {
        self.customer = Some(claims.customer.to_string());
        self.target = Some(claims.target.to_string());
        self.grant_id = Some(claims.gid.to_string());
        self
    }
}

/// Where a CONNECT asks to go, read strictly from its request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The target's name.
    pub target: TargetId,
    /// The customer's name.
    pub customer: CustomerId,
    /// The port.
    pub port: u16,
}

/// Longest authority quoted back in a refusal.
const MAX_QUOTED: usize = 256;

/// Reads `<target>.<customer>:<port>` from a CONNECT's request target, strictly; the error says what
/// is wrong with it.
pub fn route(uri: &Uri) -> Result<Route, String> {
    let Some(authority) = uri.authority() else {
        return Err("CONNECT needs an authority `<target>.<customer>:<port>`".into());
    };
    let text = authority.as_str();
    let bad = |why: &str| {
        format!(
            "authority `{}` is not `<target>.<customer>:<port>`: {why}",
            clip(text, MAX_QUOTED)
        )
    };
    if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| !p.as_str().is_empty()) {
        return Err(bad("send the authority alone, not a URL"));
    }
    if text.contains('@') {
        return Err(bad("no user name belongs in it"));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(bad("it names no port"));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 && !port.starts_with('0') && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => {
            return Err(bad(
                "the port must be 1 to 65535, in digits, without leading zeros",
            ));
        }
    };
    let Some((target, customer)) = host.split_once('.') else {
        return Err(bad("it names no customer"));
    };
    match (target.parse(), customer.parse()) {
        (Ok(target), Ok(customer)) => Ok(Route {
            target,
            customer,
            port,
        }),
        _ => Err(bad(
            "the target and the customer are lowercase names of letters, digits and dashes",
        )),
    }
}

/// A tunnel every check allows.
#[derive(Debug)]
pub struct Allowed<'a> {
    /// The grant.
    pub claims: GrantClaims,
    /// Its customer.
    pub customer: &'a Customer,
    /// The target to dial.
    pub target: &'a Target,
    /// The policies that allowed it.
    pub policy_ids: Vec<String>,
    /// Why, for the record.
    pub reason: String,
}

/// Every check before the tunnel, in order; pure. Takes the ask whole, so a verified grant's claims
/// move into [`Allowed`] without a copy.
pub fn decide<'a>(ask: Ask<'_>, customers: &'a [Customer]) -> Result<Allowed<'a>, Box<Refusal>> {
    // Stage: grant.
    let claims = match ask.grant {
        GrantCheck::Missing => {
            return Err(Refusal::new(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                EventKind::AuthFailure,
                "missing grant: send `Proxy-Authorization: Bearer <grant>`",
            )
            .counted_as(TunnelRefusal::MissingGrant));
        }
        GrantCheck::Refused { error, signed } => {
            let r = Refusal::new(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                EventKind::AuthFailure,
                error.to_string(),
            );
            return Err(match signed {
                Some(c) => r.about(&c),
                None => r,
            });
        }
        GrantCheck::Verified(claims) => *claims,
    };
    // The leeway is for clock skew between minting and checking; a tunnel never opens past `exp`.
    let now = u64::try_from(ask.now.as_second()).unwrap_or(0);
    if claims.exp <= now {
        return Err(Refusal::new(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            EventKind::AuthFailure,
            GrantError::Expired.to_string(),
        )
        .about(&claims));
    }
    // Stage: the grant belongs to this connection's certificate.
    let peer = ask.peer;
    if peer.id.role() != Role::Technician {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            EventKind::Decision,
            "only technicians open tunnels",
        )
        .about(&claims)
        .counted_as(TunnelRefusal::WrongCertificate));
    }
    if claims.sub != peer.id || !claims.is_bound_to(&peer.thumbprint) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            EventKind::AuthFailure,
            "grant is bound to another client certificate",
        )
        .about(&claims)
        .counted_as(TunnelRefusal::WrongCertificate));
    }
    // Stage: route the authority to a configured target.
    let asked = route(ask.uri).map_err(|why| {
        Refusal::new(StatusCode::BAD_REQUEST, EventKind::Decision, why).about(&claims)
    })?;
    let (t_name, c_name, port) = (asked.target.as_str(), asked.customer.as_str(), asked.port);
    let wrong = |status, why: String| {
        let mut r = Refusal::new(status, EventKind::Decision, why).about(&claims);
        r.target = Some(format!("{t_name}.{c_name}"));
        r
    };
    if c_name != claims.customer.as_str() {
        let mut r = wrong(
            StatusCode::FORBIDDEN,
            format!(
                "grant is for customer `{}`, not `{c_name}`",
                claims.customer
            ),
        );
        r.also_for = Some(c_name.to_owned());
        return Err(r);
    }
    let customer = customers
        .iter()
        .find(|c| c.id.as_str() == c_name)
        .ok_or_else(|| {
            wrong(
                StatusCode::NOT_FOUND,
                format!("unknown customer `{c_name}`"),
            )
        })?;
    let target = customer.target(t_name).ok_or_else(|| {
        wrong(
            StatusCode::NOT_FOUND,
            format!("customer `{c_name}` has no target `{t_name}`"),
        )
    })?;
    if t_name != claims.target.as_str() {
        return Err(wrong(
            StatusCode::FORBIDDEN,
            format!("grant is for target `{}`, not `{t_name}`", claims.target),
        ));
    }
    if port != target.port || claims.port != target.port {
        return Err(wrong(
            StatusCode::FORBIDDEN,
            format!("target `{t_name}` is reached on port {}", target.port),
        ));
    }
    // Stage: the customer's policy.
    let minutes = claims.exp.saturating_sub(claims.nbf).div_ceil(60);
    let minutes = u32::try_from(minutes).unwrap_or(u32::MAX);
    let Some(decision) = connect_policy(customer, target, peer, ask.ip, minutes, ask.now) else {
        return Err(wrong(
            StatusCode::FORBIDDEN,
            "only technicians open tunnels".into(),
        ));
    };
    if !decision.allowed {
        let mut r = Refusal::new(StatusCode::FORBIDDEN, EventKind::Decision, decision.reason)
            .about(&claims)
            .counted_as(TunnelRefusal::PolicyDenied);
        r.policy_ids = decision.policy_ids;
        r.policy_digest = Some(customer.policy.digest().to_owned());
        return Err(r);
    }
    Ok(Allowed {
        claims,
        customer,
        target,
        policy_ids: decision.policy_ids,
        reason: decision.reason,
    })
}

/// The customer's `connect` policy on a technician's tunnel to `target` (`None` for anyone else).
fn connect_policy(
    customer: &Customer,
    target: &Target,
    peer: &PeerIdentity,
    ip: IpAddr,
    minutes: u32,
    now: jiff::Timestamp,
) -> Option<sallyport_policy::Decision> {
    let Principal::Technician { provider, name } = peer.id.principal() else {
        return None;
    };
    let subject = Subject::Technician {
        id: peer.id.clone(),
        provider: provider.clone(),
        name: name.clone(),
        groups: peer.groups.clone(),
    };
    let info = TargetInfo {
        customer: customer.id.clone(),
        id: target.id.clone(),
        tags: target.tags.clone(),
        port: target.port,
        protocol: target.protocol.clone(),
    };
    let ctx = RequestContext {
        now,
        minutes,
        source_ip: ip,
        ticket: None,
        mfa: peer.mfa(),
    };
    Some(
        customer
            .policy
            .decide(Action::Connect, &subject, &info, &ctx),
    )
}

/// What a live tunnel was allowed on, to be checked again under a new configuration.
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    /// Its customer.
    pub customer: &'a CustomerId,
    /// Its target.
    pub target: &'a TargetId,
    /// The technician, from the client certificate.
    pub peer: &'a PeerIdentity,
    /// From where.
    pub ip: IpAddr,
    /// The grant's length.
    pub minutes: u32,
    /// The address it dialled.
    pub address: &'a str,
    /// The port the grant names.
    pub port: u16,
}

/// Whether a live tunnel is still allowed under `customers` at `now`: its customer and target
/// still configured, at the address it dialled and the port its grant names, and the customer's
/// `connect` policy still permitting it. The error says what changed; pure.
pub fn still_allowed(
    live: Live<'_>,
    customers: &[Customer],
    now: jiff::Timestamp,
) -> Result<(), String> {
    let customer = customers
        .iter()
        .find(|c| c.id == *live.customer)
        .ok_or_else(|| format!("customer `{}` is no longer configured", live.customer))?;
    let target = customer.target(live.target.as_str()).ok_or_else(|| {
        format!(
            "customer `{}` no longer has target `{}`",
            customer.id, live.target
        )
    })?;
    if target.address != live.address || target.port != live.port {
        return Err(format!(
            "target `{}.{}` now has another address",
            live.target, customer.id
        ));
    }
    match connect_policy(customer, target, live.peer, live.ip, live.minutes, now) {
        Some(d) if d.allowed => Ok(()),
        Some(d) => Err(d.reason),
        None => Err("only technicians open tunnels".into()),
    }
}

/// `bench-insecure` builds only: routes the authority to a configured target without any
/// authorization, under made-up claims naming the connection's own certificate.
#[cfg(feature = "bench-insecure")]
pub fn unauthorized<'a>(
    ask: Ask<'_>,
    customers: &'a [Customer],
    issuer: &str,
    audience: &str,
) -> Result<Allowed<'a>, Box<Refusal>> {
    let refuse = |status, why: String| Refusal::new(status, EventKind::Decision, why);
    let asked = route(ask.uri).map_err(|why| refuse(StatusCode::BAD_REQUEST, why))?;
    let (customer, target) = customers
        .iter()
        .find(|x| x.id == asked.customer)
        .and_then(|customer| Some((customer, customer.target(asked.target.as_str())?)))
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                format!("no target `{}.{}`", asked.target, asked.customer),
            )
        })?;
    if asked.port != target.port {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("target is reached on port {}", target.port),
        ));
    }
    let now = u64::try_from(ask.now.as_second()).unwrap_or(0);
    let gid = "g-unauthorized".parse().map_err(|e| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("bench grant id: {e}"),
        )
    })?;
    let claims = GrantClaims {
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        sub: ask.peer.id.clone(),
        customer: customer.id.clone(),
        target: target.id.clone(),
        port: target.port,
        gid,
        iat: now,
        nbf: now,
        exp: now + 3600,
        jti: String::new(),
        cnf: sallyport_certs::grant::Confirmation {
            x5t_s256: String::new(),
        },
    };
    Ok(Allowed {
        claims,
        customer,
        target,
        policy_ids: Vec::new(),
        reason: "authorization skipped: bench-insecure build".into(),
    })
}

#[cfg(test)]
mod tests;
