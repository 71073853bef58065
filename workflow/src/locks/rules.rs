//! The rules of locks that need no I/O, each a pure function tested here table by table:
//!
//! - who may lock whom, and where the lock then applies ([`lock_scope`]): a provider admin locks any
//!   identity but their own, everywhere (or, if they say so, for one customer); a customer's approver
//!   locks technicians only, and only for that customer; auditors and technicians lock nobody;
//! - who sees a lock ([`sees`]) and who may lift it ([`may_unlock`]);
//! - when a lock ends ([`end_time`]): an RFC 3339 time or a number of minutes, in the future, at most
//!   [`MAX_LOCK_AHEAD`] ahead, or never (until unlocked);
//! - what a lock bars ([`applies`]): the identity, or the one certificate, in its scope;
//! - which audit chains record a lock, and so which customers' webhooks hear of it ([`chains`]).

use sallyport_ids::{CustomerId, Principal, Role, SpiffeId};
use sallyport_store::{LockTarget, NewLock};

use crate::WorkflowError;

/// Most locks active at once; a lock beyond it is refused with a clear error.
pub const MAX_ACTIVE_LOCKS: usize = 10_000;

/// How far ahead a lock's end may be set: a year and a day. Longer means until unlocked.
pub const MAX_LOCK_AHEAD: i64 = 366 * 24 * 3600;

/// Where a lock made by `actor` on `holder` (`None`: a certificate whose holder is unknown) applies,
/// `None` meaning everywhere; `asked` is the customer the caller named, if any.
pub fn lock_scope(
    actor: &SpiffeId,
    holder: Option<&SpiffeId>,
    asked: Option<&CustomerId>,
) -> Result<Option<CustomerId>, WorkflowError> {
    match actor.principal() {
        Principal::Admin { .. } => {
            if holder == Some(actor) {
                return Err(WorkflowError::Forbidden(
                    "you cannot lock yourself out; another admin can".into(),
                ));
            }
            Ok(asked.cloned())
        }
        Principal::Approver { customer, .. } => {
            if asked.is_some_and(|c| c != customer) {
                return Err(WorkflowError::Forbidden(format!(
                    "you can only lock access to customer `{customer}`"
                )));
            }
            match holder {
                None => Err(WorkflowError::NotFound(
                    "this broker issued no certificate with that fingerprint; give the certificate itself (`--cert FILE`, or `certificate.pem`)"
                        .into(),
                )),
                Some(h) if h.role() != Role::Technician => Err(WorkflowError::Forbidden(
                    "approvers lock technicians only; ask a provider admin".into(),
                )),
                Some(_) => Ok(Some(customer.clone())),
            }
        }
        Principal::Auditor { .. } => Err(WorkflowError::Forbidden(
            "auditors cannot lock identities".into(),
        )),
        Principal::Technician { .. } => Err(WorkflowError::Forbidden(
            "technicians cannot lock identities".into(),
        )),
    }
}

/// Whether `viewer` may see `lock`: admins see every lock; a customer's approvers and auditors see
/// that customer's locks and the locks everywhere of technicians (which that customer was told of);
/// a technician sees the locks on themselves.
pub fn sees(viewer: &SpiffeId, lock: &NewLock) -> bool {
    match viewer.principal() {
        Principal::Admin { .. } => true,
        Principal::Approver { customer, .. } | Principal::Auditor { customer, .. } => {
            match &lock.customer {
                Some(c) => c == customer,
                None => lock
                    .target
                    .holder()
                    .is_some_and(|h| h.role() == Role::Technician),
            }
        }
        Principal::Technician { .. } => lock.target.holder() == Some(viewer),
    }
}

/// Whether `actor`, who sees `lock`, may lift it: admins any; a customer's approvers the locks of
/// that customer.
pub fn may_unlock(actor: &SpiffeId, lock: &NewLock) -> Result<(), WorkflowError> {
    match actor.principal() {
        Principal::Admin { .. } => Ok(()),
        Principal::Approver { customer, .. } if lock.customer.as_ref() == Some(customer) => Ok(()),
        Principal::Approver { .. } => Err(WorkflowError::Forbidden(
            "only a provider admin can lift a lock that applies everywhere".into(),
        )),
        Principal::Auditor { .. } => Err(WorkflowError::Forbidden(
            "auditors cannot unlock identities".into(),
        )),
        Principal::Technician { .. } => Err(WorkflowError::Forbidden(
            "technicians cannot unlock identities".into(),
        )),
    }
}

/// The end of a lock made at `now`: `expires_at` (RFC 3339) or `minutes` from now, or `None` (until
/// unlocked).
pub fn end_time(
    expires_at: Option<&str>,
    minutes: Option<u64>,
    now: i64,
) -> Result<Option<i64>, WorkflowError> {
    let max_minutes = MAX_LOCK_AHEAD / 60;
    match (expires_at, minutes) {
        (Some(_), Some(_)) => Err(WorkflowError::invalid(
            "bad_end",
            "give `expires_at` or `minutes`, not both",
        )),
        (None, None) => Ok(None),
        (None, Some(m)) => match i64::try_from(m) {
            Ok(m) if (1..=max_minutes).contains(&m) => Ok(Some(now + m * 60)),
            _ => Err(WorkflowError::invalid(
                "bad_minutes",
                format!(
                    "`minutes` must be 1 to {max_minutes} (a year and a day); leave it out to lock until unlocked"
                ),
            )),
        },
        (Some(t), None) => {
            let bad = |m: String| WorkflowError::invalid("bad_expires_at", m);
            let end = t
                .parse::<jiff::Timestamp>()
                .map_err(|e| {
                    bad(format!(
                        "`expires_at` is not an RFC 3339 time such as 2026-01-31T22:00:00Z: {e}"
                    ))
                })?
                .as_second();
            if end <= now {
                return Err(bad(format!(
                    "`expires_at` {t} is not in the future; give a later time, or leave it out to lock until unlocked"
                )));
            }
            if end > now + MAX_LOCK_AHEAD {
                return Err(bad(
                    "`expires_at` may be at most a year and a day ahead; leave it out to lock until unlocked"
                        .into(),
                ));
            }
            Ok(Some(end))
        }
    }
}

/// Whether a lock on `target` in `scope` bars the holder of certificate `thumbprint` naming `id`
/// from what concerns `customer` (`None`: nothing of one customer, such as the API as a whole, which
/// only a lock everywhere bars).
pub fn applies(
    target: &LockTarget,
    scope: Option<&CustomerId>,
    id: &SpiffeId,
    thumbprint: &[u8; 32],
    customer: Option<&CustomerId>,
) -> bool {
    let matches = match target {
        LockTarget::Identity(locked) => locked == id,
        LockTarget::Certificate { sha256, .. } => sha256.digest() == thumbprint,
    };
    matches && scope.is_none_or(|s| customer == Some(s))
}

/// The audit chains that record `lock` (`None`: the broker's own chain); each customer among them
/// also hears of it through its webhook. A customer's lock is on that customer's chain. A lock
/// everywhere is on the broker's chain and, when it concerns a technician (who may work for any
/// customer), on every customer's chain; when it concerns a customer's approver or auditor, on that
/// customer's chain too.
pub fn chains(lock: &NewLock, customers: &[CustomerId]) -> Vec<Option<CustomerId>> {
    if let Some(c) = &lock.customer {
        return vec![Some(c.clone())];
    }
    let mut out = vec![None];
    match lock.target.holder().map(SpiffeId::principal) {
        Some(Principal::Technician { .. }) => out.extend(customers.iter().cloned().map(Some)),
        Some(Principal::Approver { customer, .. } | Principal::Auditor { customer, .. })
            if customers.contains(customer) =>
        {
            out.push(Some(customer.clone()));
        }
        _ => {}
    }
    out
}

/// How a lock reads for people: `northwind/alice`, or `certificate 5f1c... of northwind/alice`.
pub fn describe(target: &LockTarget) -> String {
    match target {
        LockTarget::Identity(id) => id.short(),
        LockTarget::Certificate { serial, holder, .. } => match holder {
            Some(h) => format!("certificate {serial} of {}", h.short()),
            None => format!("certificate {serial}"),
        },
    }
}

/// Where a lock applies, for people: `everywhere` or `for customer acme`.
pub fn describe_scope(scope: Option<&CustomerId>) -> String {
    match scope {
        Some(c) => format!("for customer {c}"),
        None => "everywhere".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sallyport_ids::cert::CertFingerprint;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }
    const ALICE: &str = "spiffe://sallyport.local/technician/northwind/alice";
    const BOB: &str = "spiffe://sallyport.local/approver/acme/bob";
    const CAROL: &str = "spiffe://sallyport.local/auditor/acme/carol";
    const DAVE: &str = "spiffe://sallyport.local/approver/globex/dave";
    const ROOT: &str = "spiffe://sallyport.local/admin/root";
    const OPS: &str = "spiffe://sallyport.local/admin/ops";

    fn acme() -> CustomerId {
        "acme".parse().unwrap()
    }

    fn lock(target: LockTarget, customer: Option<&str>) -> NewLock {
        NewLock {
            id: "l-1".parse().unwrap(),
            target,
            customer: customer.map(|c| c.parse().unwrap()),
            reason: "stolen".into(),
            created_by: ROOT.into(),
            created_at: 0,
            expires_at: None,
        }
    }

    fn on(who: &str) -> LockTarget {
        LockTarget::Identity(id(who))
    }

    #[test]
    fn who_may_lock_whom_and_where() {
        let scope = |actor: &str, holder: Option<&str>, asked: Option<&str>| {
            let asked: Option<CustomerId> = asked.map(|c| c.parse().unwrap());
            lock_scope(&id(actor), holder.map(id).as_ref(), asked.as_ref())
        };
        // Admins: anyone but themselves, everywhere unless they name a customer.
        assert_eq!(scope(ROOT, Some(ALICE), None).unwrap(), None);
        assert_eq!(scope(ROOT, Some(OPS), None).unwrap(), None);
        assert_eq!(scope(ROOT, Some(BOB), None).unwrap(), None);
        assert_eq!(scope(ROOT, None, None).unwrap(), None);
        assert_eq!(
            scope(ROOT, Some(ALICE), Some("acme")).unwrap(),
            Some(acme())
        );
        assert!(
            matches!(scope(ROOT, Some(ROOT), None), Err(WorkflowError::Forbidden(m)) if m.contains("yourself"))
        );
        // Approvers: technicians only, for their own customer only.
        assert_eq!(scope(BOB, Some(ALICE), None).unwrap(), Some(acme()));
        assert_eq!(scope(BOB, Some(ALICE), Some("acme")).unwrap(), Some(acme()));
        for (holder, asked, needle) in [
            (
                Some(ALICE),
                Some("globex"),
                "only lock access to customer `acme`",
            ),
            (Some(ROOT), None, "technicians only"),
            (Some(DAVE), None, "technicians only"),
            (Some(CAROL), None, "technicians only"),
        ] {
            let err = scope(BOB, holder, asked).unwrap_err();
            assert!(
                matches!(&err, WorkflowError::Forbidden(m) if m.contains(needle)),
                "{holder:?} {asked:?}: {err}"
            );
        }
        assert!(matches!(
            scope(BOB, None, None),
            Err(WorkflowError::NotFound(_))
        ));
        // Auditors and technicians: nobody.
        for actor in [CAROL, ALICE] {
            assert!(matches!(
                scope(actor, Some(ALICE), None),
                Err(WorkflowError::Forbidden(_))
            ));
        }
    }

    #[test]
    fn who_sees_and_lifts_a_lock() {
        let everywhere = lock(on(ALICE), None);
        let for_acme = lock(on(ALICE), Some("acme"));
        let for_globex = lock(on(ALICE), Some("globex"));
        let an_admin = lock(on(OPS), None);
        let unknown_cert = lock(
            LockTarget::Certificate {
                serial: "5f".parse().unwrap(),
                sha256: CertFingerprint::from_digest([1; 32]),
                holder: None,
            },
            None,
        );
        let sees_ = |who: &str, l: &NewLock| sees(&id(who), l);
        for l in [
            &everywhere,
            &for_acme,
            &for_globex,
            &an_admin,
            &unknown_cert,
        ] {
            assert!(sees_(ROOT, l));
        }
        for who in [BOB, CAROL] {
            assert!(sees_(who, &everywhere) && sees_(who, &for_acme));
            assert!(
                !sees_(who, &for_globex) && !sees_(who, &an_admin) && !sees_(who, &unknown_cert)
            );
        }
        assert!(sees_(ALICE, &for_globex) && !sees_(ALICE, &an_admin));
        assert!(sees_(DAVE, &for_globex) && !sees_(DAVE, &for_acme));

        assert!(may_unlock(&id(ROOT), &everywhere).is_ok());
        assert!(may_unlock(&id(BOB), &for_acme).is_ok());
        let err = may_unlock(&id(BOB), &everywhere).unwrap_err();
        assert!(
            matches!(&err, WorkflowError::Forbidden(m) if m.contains("provider admin")),
            "{err}"
        );
        assert!(may_unlock(&id(CAROL), &for_acme).is_err());
        assert!(may_unlock(&id(ALICE), &for_acme).is_err());
    }

    #[test]
    fn a_lock_ends_in_the_future_or_never() {
        let now = 1_767_261_600; // 2026-01-01T10:00:00Z
        assert_eq!(end_time(None, None, now).unwrap(), None);
        assert_eq!(end_time(None, Some(30), now).unwrap(), Some(now + 1_800));
        assert_eq!(
            end_time(Some("2026-01-01T11:00:00Z"), None, now).unwrap(),
            Some(now + 3_600)
        );
        for (at, minutes, code, needle) in [
            (Some("2026-01-01T11:00:00Z"), Some(5), "bad_end", "not both"),
            (
                Some("tomorrow"),
                None,
                "bad_expires_at",
                "not an RFC 3339 time",
            ),
            (
                Some("2026-01-01T10:00:00Z"),
                None,
                "bad_expires_at",
                "not in the future",
            ),
            (
                Some("2025-12-31T00:00:00Z"),
                None,
                "bad_expires_at",
                "not in the future",
            ),
            (
                Some("2028-01-01T00:00:00Z"),
                None,
                "bad_expires_at",
                "a year and a day",
            ),
            (None, Some(0), "bad_minutes", "1 to 527040"),
            (None, Some(527_041), "bad_minutes", "1 to 527040"),
        ] {
            let err = end_time(at, minutes, now).unwrap_err();
            assert!(
                matches!(&err, WorkflowError::Invalid { code: c, message } if c == code && message.contains(needle)),
                "{at:?} {minutes:?}: {err}"
            );
        }
    }

    #[test]
    fn a_lock_bars_its_identity_or_certificate_in_its_scope() {
        let alice = id(ALICE);
        let other = id("spiffe://sallyport.local/technician/northwind/eve");
        let cert = LockTarget::Certificate {
            serial: "5f".parse().unwrap(),
            sha256: CertFingerprint::from_digest([1; 32]),
            holder: Some(alice.clone()),
        };
        let globex: CustomerId = "globex".parse().unwrap();
        let (a, g) = (Some(&acme()), Some(&globex));
        let acme_ = acme();
        // By identity, everywhere: every certificate of that identity, for anything.
        assert!(applies(&on(ALICE), None, &alice, &[1; 32], None));
        assert!(applies(&on(ALICE), None, &alice, &[2; 32], a));
        assert!(!applies(&on(ALICE), None, &other, &[1; 32], a));
        // For one customer: only what concerns that customer.
        assert!(applies(&on(ALICE), Some(&acme_), &alice, &[1; 32], a));
        assert!(!applies(&on(ALICE), Some(&acme_), &alice, &[1; 32], g));
        assert!(!applies(&on(ALICE), Some(&acme_), &alice, &[1; 32], None));
        // By certificate: that certificate only, whoever it names.
        assert!(applies(&cert, None, &alice, &[1; 32], g));
        assert!(applies(&cert, None, &other, &[1; 32], None));
        assert!(!applies(&cert, None, &alice, &[2; 32], a));
    }

    #[test]
    fn chains_and_webhooks_of_a_lock() {
        let customers: Vec<CustomerId> = vec![acme(), "globex".parse().unwrap()];
        let names = |l: &NewLock| -> Vec<String> {
            chains(l, &customers)
                .into_iter()
                .map(|c| c.map_or("_broker".into(), |c| c.to_string()))
                .collect()
        };
        assert_eq!(names(&lock(on(ALICE), Some("acme"))), ["acme"]);
        assert_eq!(names(&lock(on(ALICE), None)), ["_broker", "acme", "globex"]);
        assert_eq!(names(&lock(on(BOB), None)), ["_broker", "acme"]);
        assert_eq!(names(&lock(on(OPS), None)), ["_broker"]);
        let unknown = LockTarget::Certificate {
            serial: "5f".parse().unwrap(),
            sha256: CertFingerprint::from_digest([1; 32]),
            holder: None,
        };
        assert_eq!(names(&lock(unknown.clone(), None)), ["_broker"]);
        assert_eq!(describe(&unknown), "certificate 5f");
        assert_eq!(describe(&on(ALICE)), "northwind/alice");
        assert_eq!(describe_scope(Some(&acme())), "for customer acme");
    }
}
