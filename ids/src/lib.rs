//! Identifiers used across Sallyport, validated once at the edge, the one clock ([`time`]), the one
//! way to create files on disk ([`private`]: 0700 folders, 0600 files), and how a certificate is
//! named ([`cert`]: serial and SHA-256 fingerprint).
//!
//! Every id that crosses a trust boundary (a certificate, a token, a config file, a CONNECT authority)
//! is parsed into one of these newtypes with [`std::str::FromStr`]; code behind the edge never sees an
//! unchecked string. Labels (customers, targets, providers) follow DNS label rules because they appear in
//! CONNECT authorities (`<target>.<customer>:<port>`); names (people, groups) may also carry `.` and `_`.

pub mod cert;
pub mod private;
pub mod time;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An identifier failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A label (customer, target, provider) is not a lowercase DNS label.
    #[error(
        "invalid {kind} `{value}`: use 1-63 lowercase letters, digits and `-`, starting with a letter or digit"
    )]
    Label {
        /// What the label names (`customer`, `target`, ...).
        kind: &'static str,
        /// The rejected input.
        value: String,
    },
    /// A name (person, group) contains characters outside the allowed set.
    #[error(
        "invalid {kind} `{value}`: use 1-64 lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit"
    )]
    Name {
        /// What the name names (`technician name`, `group`, ...).
        kind: &'static str,
        /// The rejected input.
        value: String,
    },
    /// A trust domain is not a lowercase DNS name.
    #[error("invalid trust domain `{0}`: use a lowercase DNS name such as `sallyport.local`")]
    TrustDomain(String),
    /// A SPIFFE id does not have the Sallyport shape.
    #[error(
        "invalid SPIFFE id `{value}`: {why} (expected `spiffe://<trust-domain>/<role>/<scope>/<name>`)"
    )]
    Spiffe {
        /// The rejected input.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A role name is unknown.
    #[error("unknown role `{0}`: use technician, approver, auditor or admin")]
    Role(String),
    /// A certificate serial number is not hex.
    #[error(
        "invalid certificate serial `{0}`: use the serial in hex (at most 40 digits, colons allowed), as `openssl x509 -noout -serial` prints it"
    )]
    CertSerial(String),
    /// A certificate fingerprint is not a SHA-256 in hex.
    #[error(
        "invalid certificate fingerprint `{0}`: use the SHA-256 of the DER certificate, 64 hex digits (colons allowed), as `openssl x509 -noout -fingerprint -sha256` prints it"
    )]
    Fingerprint(String),
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:ident, $err:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if $check(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError::$err { kind: $kind, value: s.to_owned() })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Hash and Eq are those of the inner string, so maps keyed by the id can be looked up by text.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A customer (tenant), e.g. `acme`.
    CustomerId, "customer", is_label, Label
);
string_id!(
    /// A target within one customer, e.g. `db01`.
    TargetId, "target", is_label, Label
);
string_id!(
    /// A service provider (the MSP a technician works for), e.g. `northwind-msp`.
    ProviderId, "provider", is_label, Label
);
string_id!(
    /// A person's name inside their scope, e.g. `alice` or `j.doe`.
    PersonName, "name", is_name, Name
);
string_id!(
    /// A technician group carried in the client certificate, e.g. `oncall`.
    GroupName, "group", is_name, Name
);
string_id!(
    /// A grant id (`gid` claim), e.g. `g-2f0c...`.
    GrantId, "grant id", is_name, Name
);
string_id!(
    /// One relayed session (tunnel), e.g. `s-91ab...`.
    SessionId, "session id", is_name, Name
);
string_id!(
    /// An access request, e.g. `r-5c1e...`.
    RequestId, "request id", is_name, Name
);
string_id!(
    /// A lock on an identity or one certificate, e.g. `l-7d2a...`.
    LockId, "lock id", is_name, Name
);

/// A fresh random id: `prefix` and 32 lowercase hex digits (a UUID v4 without dashes), which is
/// always a valid name.
fn mint(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

impl RequestId {
    /// A new request id, `r-` and 32 hex digits. Every request id is minted here.
    pub fn mint() -> Self {
        Self(mint("r"))
    }
}

impl GrantId {
    /// A new grant id, `g-` and 32 hex digits. Every grant id is minted here.
    pub fn mint() -> Self {
        Self(mint("g"))
    }
}

impl SessionId {
    /// A new session id, `s-` and 32 hex digits. Every session id is minted here.
    pub fn mint() -> Self {
        Self(mint("s"))
    }
}

impl LockId {
    /// A new lock id, `l-` and 32 hex digits. Every lock id is minted here.
    pub fn mint() -> Self {
        Self(mint("l"))
    }
}

/// The SPIFFE trust domain of a broker's PKI, e.g. `sallyport.local`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() <= 253 && s.split('.').all(is_label) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::TrustDomain(s.to_owned()))
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a certificate holder may do at the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Provider staff asking for access to customer targets.
    Technician,
    /// A customer's approver: approves, denies and revokes that customer's access.
    Approver,
    /// A customer's auditor: reads that customer's trail.
    Auditor,
    /// A provider administrator running the broker.
    Admin,
}

impl Role {
    /// The role's path segment in a SPIFFE id.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Technician => "technician",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        match s {
            "technician" => Ok(Role::Technician),
            "approver" => Ok(Role::Approver),
            "auditor" => Ok(Role::Auditor),
            "admin" => Ok(Role::Admin),
            other => Err(IdError::Role(other.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a principal is, scoped: a technician belongs to a provider, approvers and auditors to a customer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    /// `spiffe://<td>/technician/<provider>/<name>`
    Technician {
        /// The provider the technician works for.
        provider: ProviderId,
        /// The technician's name.
        name: PersonName,
    },
    /// `spiffe://<td>/approver/<customer>/<name>`
    Approver {
        /// The customer this approver decides for.
        customer: CustomerId,
        /// The approver's name.
        name: PersonName,
    },
    /// `spiffe://<td>/auditor/<customer>/<name>`
    Auditor {
        /// The customer whose trail this auditor reads.
        customer: CustomerId,
        /// The auditor's name.
        name: PersonName,
    },
    /// `spiffe://<td>/admin/<name>`
    Admin {
        /// The administrator's name.
        name: PersonName,
    },
}

impl Principal {
    /// The principal's role.
    pub fn role(&self) -> Role {
        match self {
            Principal::Technician { .. } => Role::Technician,
            Principal::Approver { .. } => Role::Approver,
            Principal::Auditor { .. } => Role::Auditor,
            Principal::Admin { .. } => Role::Admin,
        }
    }

    /// The principal's name within its scope.
    pub fn name(&self) -> &PersonName {
        match self {
            Principal::Technician { name, .. }
            | Principal::Approver { name, .. }
            | Principal::Auditor { name, .. }
            | Principal::Admin { name } => name,
        }
    }

    /// The customer an approver or auditor belongs to; `None` for technicians and admins.
    pub fn customer(&self) -> Option<&CustomerId> {
        match self {
            Principal::Approver { customer, .. } | Principal::Auditor { customer, .. } => {
                Some(customer)
            }
            _ => None,
        }
    }
}

/// A Sallyport SPIFFE id: `spiffe://<trust-domain>/<role>/<scope>/<name>` (admins have no scope).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    principal: Principal,
}

impl SpiffeId {
    /// Builds an id from its parts.
    pub fn new(trust_domain: TrustDomain, principal: Principal) -> Self {
        Self {
            trust_domain,
            principal,
        }
    }

    /// The trust domain the id belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The principal the id names.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The principal's role.
    pub fn role(&self) -> Role {
        self.principal.role()
    }

    /// `scope/name` (`northwind/alice`, `acme/bob`, `admin/root`): the short form people read.
    pub fn short(&self) -> String {
        short(&self.to_string())
    }
}

/// `scope/name` of a SPIFFE id given as text, for people; anything else (`policy`, `broker`) is
/// returned as it is.
pub fn short(spiffe: &str) -> String {
    let mut parts = spiffe.rsplit('/');
    match (parts.next(), parts.next()) {
        (Some(name), Some(scope)) if spiffe.starts_with("spiffe://") => format!("{scope}/{name}"),
        _ => spiffe.to_owned(),
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let td = &self.trust_domain;
        match &self.principal {
            Principal::Technician { provider, name } => {
                write!(f, "spiffe://{td}/technician/{provider}/{name}")
            }
            Principal::Approver { customer, name } => {
                write!(f, "spiffe://{td}/approver/{customer}/{name}")
            }
            Principal::Auditor { customer, name } => {
                write!(f, "spiffe://{td}/auditor/{customer}/{name}")
            }
            Principal::Admin { name } => write!(f, "spiffe://{td}/admin/{name}"),
        }
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = |why| IdError::Spiffe {
            value: s.to_owned(),
            why,
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("missing `spiffe://` scheme"))?;
        let mut parts = rest.split('/');
        let td: TrustDomain = parts
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| bad("bad trust domain"))?;
        let segs: Vec<&str> = parts.collect();
        let role: Role = segs
            .first()
            .copied()
            .unwrap_or_default()
            .parse()
            .map_err(|_| bad("unknown role"))?;
        let principal = match (role, segs.as_slice()) {
            (Role::Admin, [_, name]) => Principal::Admin {
                name: name.parse().map_err(|_| bad("bad name"))?,
            },
            (Role::Technician, [_, scope, name]) => Principal::Technician {
                provider: scope.parse().map_err(|_| bad("bad provider"))?,
                name: name.parse().map_err(|_| bad("bad name"))?,
            },
            (Role::Approver, [_, scope, name]) => Principal::Approver {
                customer: scope.parse().map_err(|_| bad("bad customer"))?,
                name: name.parse().map_err(|_| bad("bad name"))?,
            },
            (Role::Auditor, [_, scope, name]) => Principal::Auditor {
                customer: scope.parse().map_err(|_| bad("bad customer"))?,
                name: name.parse().map_err(|_| bad("bad name"))?,
            },
            _ => return Err(bad("wrong number of path segments for the role")),
        };
        Ok(Self {
            trust_domain: td,
            principal,
        })
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_dns_rules() {
        for ok in ["acme", "db01", "a", "x-1", "0day"] {
            assert!(ok.parse::<CustomerId>().is_ok(), "{ok}");
        }
        for bad in ["", "Acme", "-a", "a-", "a.b", "a_b", "a b", &"a".repeat(64)] {
            let err = bad.parse::<TargetId>().unwrap_err();
            assert!(err.to_string().contains("invalid target"), "{err}");
        }
    }

    #[test]
    fn names_allow_dots_and_underscores() {
        assert!("j.doe_2".parse::<PersonName>().is_ok());
        assert!(".hidden".parse::<PersonName>().is_err());
        assert!("a/b".parse::<GroupName>().is_err());
    }

    #[test]
    fn spiffe_ids_round_trip() {
        for s in [
            "spiffe://sallyport.local/technician/northwind/alice",
            "spiffe://sallyport.local/approver/acme/bob",
            "spiffe://sallyport.local/auditor/acme/carol",
            "spiffe://sallyport.local/admin/root",
        ] {
            let id: SpiffeId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn spiffe_ids_reject_bad_shapes() {
        for s in [
            "https://sallyport.local/admin/root",
            "spiffe://sallyport.local/admin/acme/root",
            "spiffe://sallyport.local/technician/alice",
            "spiffe://sallyport.local/root/acme/alice",
            "spiffe://Bad_TD/admin/root",
            "spiffe://sallyport.local/approver/ACME/bob",
            "spiffe://sallyport.local/approver/acme/bob/extra",
        ] {
            let err = s.parse::<SpiffeId>().unwrap_err();
            assert!(matches!(err, IdError::Spiffe { .. }), "{s}: {err}");
        }
    }

    #[test]
    fn minted_ids_are_valid_and_distinct() {
        let (a, b) = (RequestId::mint(), RequestId::mint());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("r-") && a.as_str().len() == 34);
        assert_eq!(a.as_str().parse::<RequestId>().unwrap(), a);
        assert!(GrantId::mint().as_str().starts_with("g-"));
        assert!(SessionId::mint().as_str().starts_with("s-"));
        assert!(LockId::mint().as_str().starts_with("l-"));
        assert!("R-1".parse::<RequestId>().is_err());
    }

    #[test]
    fn short_names_people() {
        let id: SpiffeId = "spiffe://sallyport.local/technician/northwind/alice"
            .parse()
            .unwrap();
        assert_eq!(id.short(), "northwind/alice");
        assert_eq!(short("spiffe://sallyport.local/admin/root"), "admin/root");
        assert_eq!(short("policy"), "policy");
    }

    #[test]
    fn serde_validates() {
        let ok: CustomerId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(ok.as_str(), "acme");
        assert!(serde_json::from_str::<CustomerId>("\"ACME\"").is_err());
    }
}
