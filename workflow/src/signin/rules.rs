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

    fn oidc(require_mfa: bool) -> OidcSettings {
        OidcSettings {
            issuer: "https://idp.acme.example".into(),
            client_id: "broker".into(),
            client_secret: None,
            groups_claim: "groups".into(),
            name_claim: "preferred_username".into(),
            require_mfa,
            cert_validity: std::time::Duration::from_secs(3600),
            ca: None,
            tls: sallyport_certs::tls::default_client(),
        }
    }

    fn claims(name: &str, groups: &[&str], amr: &[&str]) -> IdClaims {
        IdClaims {
            issuer: "https://idp.acme.example".into(),
            subject: format!("sub-{name}"),
            audience: vec!["broker".into()],
            authorized_party: None,
            expires_at: 2_000,
            issued_at: 1_000,
            nonce: None,
            auth_time: Some(990),
            amr: amr.iter().map(|a| (*a).to_owned()).collect(),
            acr: None,
            name: Some(name.to_owned()),
            email: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            key_id: None,
            algorithm: "RS256".into(),
        }
    }

    fn acme(require_mfa: bool) -> CustomerSignIn {
        CustomerSignIn {
            oidc: oidc(require_mfa),
            approver_groups: vec!["approvers".into()],
            auditor_groups: vec!["auditors".into()],
        }
    }

    fn approver(name: &str, signin: Option<SignIn>) -> PeerIdentity {
        PeerIdentity {
            id: format!("spiffe://sallyport.local/approver/acme/{name}")
                .parse()
                .unwrap(),
            groups: Vec::new(),
            thumbprint: [0; 32],
            not_after: std::time::SystemTime::now(),
            signin,
        }
    }

    #[test]
    fn the_provider_idp_makes_admins_and_technicians_by_group() {
        let p = ProviderSignIn {
            oidc: oidc(true),
            provider: "northwind".parse().unwrap(),
            admin_groups: vec!["ops".into()],
            technician_groups: vec!["support".into()],
        };
        let (who, groups) =
            provider_person(&claims("Alice", &["support", "DB"], &["pwd", "otp"]), &p).unwrap();
        assert!(matches!(who, Principal::Technician { ref name, .. } if name.as_str() == "alice"));
        assert_eq!(
            groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            ["support", "db"]
        );
        let (who, groups) = provider_person(&claims("root", &["ops"], &["mfa"]), &p).unwrap();
        assert!(matches!(who, Principal::Admin { .. }) && groups.is_empty());
        let no = provider_person(&claims("eve", &["sales"], &["pwd", "otp"]), &p).unwrap_err();
        assert!(no.0.contains("technician group"), "{no}");
        let no = provider_person(&claims("alice", &["support"], &["pwd"]), &p).unwrap_err();
        assert!(no.0.contains("multi-factor"), "{no}");
    }

    #[test]
    fn a_customer_idp_makes_its_approvers_and_auditors_only() {
        let c = acme(false);
        let cust: CustomerId = "acme".parse().unwrap();
        let both = claims("bob", &["approvers", "auditors"], &["pwd"]);
        assert!(matches!(
            customer_person(&both, &cust, &c, None),
            Ok(Principal::Approver { .. })
        ));
        assert!(matches!(
            customer_person(&both, &cust, &c, Some(Role::Auditor)),
            Ok(Principal::Auditor { .. })
        ));
        let approver_only = claims("bob", &["approvers"], &["pwd"]);
        let no = customer_person(&approver_only, &cust, &c, Some(Role::Auditor)).unwrap_err();
        assert!(no.0.contains("auditor group"), "{no}");
        let no = customer_person(&approver_only, &cust, &c, Some(Role::Technician)).unwrap_err();
        assert!(no.0.contains("not a technician"), "{no}");
        let no = customer_person(&claims("x", &[], &["pwd"]), &cust, &c, None).unwrap_err();
        assert!(no.0.contains("not a member"), "{no}");
    }

    #[test]
    fn a_decision_is_signed_only_by_the_approver_who_asked() {
        let c = acme(true);
        let bob = claims("bob", &["approvers"], &["pwd", "hwk"]);
        signs_for(&bob, &approver("bob", None), &c).unwrap();
        // Another approver's sign-in does not sign Bob's decision.
        let no = signs_for(
            &claims("carol", &["approvers"], &["pwd", "hwk"]),
            &approver("bob", None),
            &c,
        )
        .unwrap_err();
        assert!(no.0.ends_with("not acme/bob"), "{no}");
        // Nor does the same name at the IdP for another person than the one Bob signed in as.
        let signed = SignIn {
            issuer: "https://idp.acme.example".into(),
            subject: "someone-else".into(),
            amr: vec![],
            mfa: true,
            auth_time: 0,
        };
        assert!(signs_for(&bob, &approver("bob", Some(signed)), &c).is_err());
        assert!(
            signs_for(
                &claims("bob", &["staff"], &["pwd", "hwk"]),
                &approver("bob", None),
                &c
            )
            .is_err()
        );
        assert!(
            signs_for(
                &claims("bob", &["approvers"], &["pwd"]),
                &approver("bob", None),
                &c
            )
            .is_err()
        );
        // The evidence keeps what was read, and the token for decisions.
        let ev = evidence(&bob, "broker", Some("a.b.c"));
        assert_eq!(
            (ev.subject.as_str(), ev.mfa, ev.token.as_deref()),
            ("sub-bob", true, Some("a.b.c"))
        );
        assert_eq!(ev.auth_time.as_deref(), Some("1970-01-01T00:16:30Z"));
    }

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
