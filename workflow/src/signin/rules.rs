//! The pure rules of a sign-in: who a verified ID token makes a person (the role from the groups of
//! the configured IdP, the name from the name claim, the groups a technician's certificate carries),
//! whether MFA is required and present, whether a token signs a decision as the approver who asked
//! for it, and what of the token goes onto the trail ([`evidence`]). No I/O: the sign-in service
//! calls these with the claims `oidc` verified.

use sallyport_audit::IdpEvidence;
use sallyport_certs::identity::PeerIdentity;
use sallyport_certs::pki::SignIn;
use sallyport_config::{CustomerSignIn, OidcSettings, ProviderSignIn};
use sallyport_ids::{CustomerId, GroupName, PersonName, Principal, Role};
use sallyport_oidc::token::IdClaims;

/// The most groups a sign-in certificate carries.
pub const MAX_CERT_GROUPS: usize = 64;

/// Why a verified token does not sign a person in (or does not sign a decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `text` as a Sallyport name: lowercased, every character but `a-z`, `0-9`, `.`, `_` and `-` turned
/// into `-`, leading punctuation dropped, at most 64 characters. `None` when nothing is left.
pub fn sallyport_name(text: &str) -> Option<String> {
    let mapped: String = text
        .trim()
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let kept: String = mapped
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(64)
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// The person's name from the configured name claim (or, without it, the subject).
pub fn person_name(claims: &IdClaims, oidc: &OidcSettings) -> Result<PersonName, Refusal> {
    let raw = claims.name.as_deref().unwrap_or(&claims.subject);
    sallyport_name(raw)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Refusal(format!(
                "the ID token's `{}` claim (`{raw}`) gives no usable name",
                oidc.name_claim
            ))
        })
}

/// Whether the token carries any group of `wanted` (compared as the IdP writes them).
fn member_of(claims: &IdClaims, wanted: &[String]) -> bool {
    claims.groups.iter().any(|g| wanted.contains(g))
}

/// MFA, when the IdP's settings require it.
pub fn check_mfa(claims: &IdClaims, oidc: &OidcSettings) -> Result<(), Refusal> {
    if oidc.require_mfa && !claims.mfa() {
        return Err(Refusal(format!(
            "multi-factor authentication is required, but the ID token's amr is [{}]",
            claims.amr.join(", ")
        )));
    }
    Ok(())
}

/// Who a sign-in at the provider's IdP makes the person: an admin (a member of `admin_groups`) or a
/// technician of `provider` (when `technician_groups` is set, only its members), with the token's
/// groups as certificate groups.
pub fn provider_person(
    claims: &IdClaims,
    p: &ProviderSignIn,
) -> Result<(Principal, Vec<GroupName>), Refusal> {
    check_mfa(claims, &p.oidc)?;
    let name = person_name(claims, &p.oidc)?;
    if member_of(claims, &p.admin_groups) {
        return Ok((Principal::Admin { name }, Vec::new()));
    }
    if !p.technician_groups.is_empty() && !member_of(claims, &p.technician_groups) {
        return Err(Refusal(format!(
            "not a member of any technician group ({}) in `{}`",
            p.technician_groups.join(", "),
            p.oidc.groups_claim
        )));
    }
    Ok((
        Principal::Technician {
            provider: p.provider.clone(),
            name,
        },
        cert_groups(&claims.groups),
    ))
}

/// The token's groups as certificate groups: each as a Sallyport name, duplicates and unusable
/// ones dropped, at most [`MAX_CERT_GROUPS`].
pub fn cert_groups(groups: &[String]) -> Vec<GroupName> {
    let mut out: Vec<GroupName> = Vec::new();
    for g in groups {
        if let Some(name) = sallyport_name(g).and_then(|n| n.parse::<GroupName>().ok())
            && !out.contains(&name)
        {
            out.push(name);
        }
        if out.len() == MAX_CERT_GROUPS {
            break;
        }
    }
    out
}

/// Who a sign-in at customer `customer`'s IdP makes the person: an approver or an auditor, by the
/// groups; `wanted` picks one when the person is both (default: approver).
pub fn customer_person(
    claims: &IdClaims,
    customer: &CustomerId,
    c: &CustomerSignIn,
    wanted: Option<Role>,
) -> Result<Principal, Refusal> {
    check_mfa(claims, &c.oidc)?;
    let name = person_name(claims, &c.oidc)?;
    let approver = member_of(claims, &c.approver_groups);
    let auditor = member_of(claims, &c.auditor_groups);
    let role = match wanted {
        Some(Role::Approver) if approver => Role::Approver,
        Some(Role::Auditor) if auditor => Role::Auditor,
        Some(r @ (Role::Approver | Role::Auditor)) => {
            return Err(Refusal(format!(
                "not a member of any {} group of `{customer}` ({}) in `{}`",
                r.as_str(),
                if r == Role::Approver {
                    c.approver_groups.join(", ")
                } else {
                    c.auditor_groups.join(", ")
                },
                c.oidc.groups_claim
            )));
        }
        Some(r) => {
            return Err(Refusal(format!(
                "a customer's IdP signs in its approvers and auditors, not a {}",
                r.as_str()
            )));
        }
        None if approver => Role::Approver,
        None if auditor => Role::Auditor,
        None => {
            return Err(Refusal(format!(
                "not a member of any approver or auditor group of `{customer}` in `{}`",
                c.oidc.groups_claim
            )));
        }
    };
    let customer = customer.clone();
    Ok(match role {
        Role::Approver => Principal::Approver { customer, name },
        _ => Principal::Auditor { customer, name },
    })
}

/// Whether a verified token signs a decision on behalf of `approver` (the person who asked to
/// decide, by their certificate): a member of an approver group, with MFA where required, the same
/// name, and, when the approver's certificate came from a sign-in, the same person at the same IdP.
pub fn signs_for(
    claims: &IdClaims,
    approver: &PeerIdentity,
    c: &CustomerSignIn,
) -> Result<(), Refusal> {
    check_mfa(claims, &c.oidc)?;
    if !member_of(claims, &c.approver_groups) {
        return Err(Refusal(format!(
            "the signing person is not a member of any approver group ({}) in `{}`",
            c.approver_groups.join(", "),
            c.oidc.groups_claim
        )));
    }
    let name = person_name(claims, &c.oidc)?;
    let same_name = match approver.id.principal() {
        Principal::Approver { name: n, .. } => *n == name,
        _ => false,
    };
    let same_person = approver
        .signin
        .as_ref()
        .is_none_or(|s| s.issuer == claims.issuer && s.subject == claims.subject);
    if !same_name || !same_person {
        return Err(Refusal(format!(
            "the token is `{}` (`{name}`) at {}, not {}",
            claims.subject,
            claims.issuer,
            approver.id.short()
        )));
    }
    Ok(())
}

/// Whether a certificate identity of customer `c`'s approvers or auditors came from a sign-in at
/// that customer's IdP (a customer with an IdP takes no other).
pub fn signed_in_at(peer: &PeerIdentity, c: &CustomerSignIn) -> bool {
    peer.signin
        .as_ref()
        .is_some_and(|s| s.issuer == c.oidc.issuer)
}

/// What the trail keeps of a verified token: the claims the broker read, and the token when
/// `token` is given (decisions).
pub fn evidence(claims: &IdClaims, audience: &str, token: Option<&str>) -> IdpEvidence {
    IdpEvidence {
        issuer: claims.issuer.clone(),
        subject: claims.subject.clone(),
        name: claims.name.clone(),
        groups: claims.groups.clone(),
        amr: claims.amr.clone(),
        mfa: claims.mfa(),
        auth_time: claims
            .auth_time
            .and_then(|t| i64::try_from(t).ok())
            .and_then(|t| jiff::Timestamp::from_second(t).ok())
            .map(|t| t.to_string()),
        audience: audience.to_owned(),
        token: token.map(str::to_owned),
    }
}

/// The sign-in a certificate records.
pub fn cert_signin(claims: &IdClaims) -> SignIn {
    SignIn {
        issuer: claims.issuer.clone(),
        subject: claims.subject.clone(),
        amr: claims.amr.clone(),
        mfa: claims.mfa(),
        auth_time: claims.auth_time.unwrap_or(claims.issued_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_mapped_to_what_sallyport_takes() {
        assert_eq!(sallyport_name("Alice").as_deref(), Some("alice"));
        assert_eq!(
            sallyport_name("alice@acme.example").as_deref(),
            Some("alice-acme.example")
        );
        assert_eq!(
            sallyport_name("  Jörg Müller ").as_deref(),
            Some("j-rg-m-ller")
        );
        assert_eq!(sallyport_name("--x").as_deref(), Some("x"));
        assert_eq!(sallyport_name("@@@"), None);
        assert_eq!(sallyport_name(&"a".repeat(100)).unwrap().len(), 64);
        let groups = cert_groups(&[
            "Support".into(),
            "support".into(),
            "DB Admins".into(),
            "???".into(),
        ]);
        let names: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
        assert_eq!(names, ["support", "db-admins"]);
    }
}
