//! The behaviour every [`Store`] must have, whatever its backend: quorum, conflicts, expiry,
//! cancellation, listings, break-glass grants, counts. Each backend's tests run this suite
//! ([`store_suite!`]) against a real database of its kind; tests of what only one backend has
//! (its migrations, its files) stay with it.

use crate::*;

pub(crate) fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

pub(crate) fn alice() -> SpiffeId {
    id("spiffe://sallyport.local/technician/northwind/alice")
}

pub(crate) fn bob() -> SpiffeId {
    id("spiffe://sallyport.local/approver/acme/bob")
}

pub(crate) fn carol() -> SpiffeId {
    id("spiffe://sallyport.local/approver/acme/carol")
}

/// The grant `gid`, for `minutes` from `at`.
pub(crate) fn grant(gid: &str, at: i64, minutes: i64) -> NewGrant {
    NewGrant {
        id: id(gid),
        not_before: at,
        expires_at: at + minutes * 60,
    }
}

pub(crate) fn req(rid: &str, approvals: u32) -> NewRequest {
    NewRequest {
        id: id(rid),
        customer: id("acme"),
        target: id("db01"),
        technician: alice(),
        cert_thumbprint: "thumb".into(),
        minutes: 30,
        reason: "patching".into(),
        ticket: Some("CHG-1".into()),
        start_at: None,
        approvals_required: approvals,
        policy_id: Some("support".into()),
        created_at: 1_000,
        expires_at: 1_000 + 86_400,
        filed_hash: Some("f1".repeat(32)),
    }
}

pub(crate) fn quorum_of_two_distinct_approvers(s: &dyn Store) {
    let r1: RequestId = id("r1");
    s.file_request(&req("r1", 2), None, 1_000).unwrap();
    assert_eq!(
        s.approve(
            &r1,
            &bob(),
            Some("ok"),
            &|_| Ok(grant("g1", 1_010, 30)),
            1_010
        )
        .unwrap(),
        Approval::Recorded { missing: 1 }
    );
    assert_eq!(s.request(&r1).unwrap().status, RequestStatus::Pending);
    assert_eq!(s.request(&r1).unwrap().approvals_missing(), 1);
    let err = s
        .approve(&r1, &bob(), None, &|_| Ok(grant("g1", 1_011, 30)), 1_011)
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(m) if m.contains("already approved")));
    let Approval::Granted(g) = s
        .approve(&r1, &carol(), None, &|_| Ok(grant("g1", 1_020, 30)), 1_020)
        .unwrap()
    else {
        panic!("quorum not reached");
    };
    assert_eq!((g.not_before, g.expires_at), (1_020, 1_020 + 1_800));
    let rec = s.request(&r1).unwrap();
    assert_eq!(rec.status, RequestStatus::Approved);
    assert_eq!(rec.grant_id, Some(id("g1")));
    assert_eq!(rec.approvals.len(), 2);
    assert_eq!(rec.approvals[0].comment.as_deref(), Some("ok"));
}

pub(crate) fn denied_stays_denied(s: &dyn Store) {
    let r1: RequestId = id("r1");
    s.file_request(&req("r1", 1), None, 1_000).unwrap();
    let rec = s.deny(&r1, &bob(), "not now", 1_002).unwrap();
    assert_eq!(rec.status, RequestStatus::Denied);
    assert_eq!(
        rec.denial,
        Some(Denial {
            by: bob(),
            reason: "not now".into()
        })
    );
    let err = s
        .approve(&r1, &carol(), None, &|_| Ok(grant("g1", 1_003, 30)), 1_003)
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict("request `r1` is already denied".into())
    );
    assert!(s.grant(&id("g1")).is_err(), "no grant for a denied request");
}

pub(crate) fn a_refused_grant_leaves_no_trace_of_the_approval(s: &dyn Store) {
    let r1: RequestId = id("r1");
    s.file_request(&req("r1", 1), None, 1_000).unwrap();
    let err = s
        .approve(
            &r1,
            &bob(),
            None,
            &|_| Err(StoreError::Conflict("the window has already ended".into())),
            1_900,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(m) if m.contains("already ended")));
    let rec = s.request(&r1).unwrap();
    assert_eq!(rec.status, RequestStatus::Pending);
    assert!(
        rec.approvals.is_empty(),
        "a refused approval leaves no trace"
    );
}

pub(crate) fn a_request_filed_with_its_grant_is_approved_at_once(s: &dyn Store) {
    let mut r = req("r1", 0);
    r.start_at = Some(5_000);
    let rec = s
        .file_request(&r, Some(&grant("g1", 5_000, 30)), 1_000)
        .unwrap();
    assert_eq!(rec.status, RequestStatus::Approved);
    let g = s.grant(&id("g1")).unwrap();
    assert_eq!((g.not_before, g.expires_at), (5_000, 5_000 + 1_800));
    assert_eq!(g.request_id, Some(id("r1")));
}

pub(crate) fn pending_requests_expire_and_cannot_be_approved_after(s: &dyn Store) {
    s.file_request(&req("r1", 1), None, 1_000).unwrap();
    s.file_request(&req("r2", 1), None, 1_000).unwrap();
    s.approve(
        &id("r2"),
        &bob(),
        None,
        &|_| Ok(grant("g2", 1_001, 30)),
        1_001,
    )
    .unwrap();
    let late = 1_000 + 86_400;
    let err = s
        .approve(
            &id("r1"),
            &bob(),
            None,
            &|_| Ok(grant("g1", late, 30)),
            late,
        )
        .unwrap_err();
    assert_eq!(err, StoreError::Conflict("request `r1` has expired".into()));
    let expired = s.expire_pending(late).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].status, RequestStatus::Expired);
    assert_eq!(
        s.request(&id("r2")).unwrap().status,
        RequestStatus::Approved
    );
    assert!(s.expire_pending(late).unwrap().is_empty());
}

pub(crate) fn listing_filters_by_customer_technician_and_status(s: &dyn Store) {
    s.file_request(&req("r1", 1), None, 1_000).unwrap();
    let mut other = req("r2", 1);
    other.customer = id("globex");
    s.file_request(&other, None, 1_000).unwrap();
    assert_eq!(s.requests(Some(&id("acme")), None, None).unwrap().len(), 1);
    assert_eq!(s.requests(None, Some(&alice()), None).unwrap().len(), 2);
    assert_eq!(
        s.requests(Some(&id("globex")), None, Some(RequestStatus::Approved))
            .unwrap()
            .len(),
        0
    );
    let err = s.file_request(&req("r1", 1), None, 1_000).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)));
}

pub(crate) fn break_glass_grants_are_recorded_without_a_request(s: &dyn Store) {
    let g = GrantRecord {
        id: id("g-bg"),
        request_id: None,
        customer: id("acme"),
        target: id("db01"),
        technician: alice(),
        not_before: 10,
        expires_at: 70,
        revoked: None,
        audited: true,
        break_glass: Some(BreakGlass {
            by: "ops@bastion".into(),
            reason: "outage".into(),
            ticket: Some("INC-1".into()),
        }),
    };
    s.record_grant(&g).unwrap();
    assert_eq!(s.grant(&id("g-bg")).unwrap(), g);
    assert!(matches!(s.record_grant(&g), Err(StoreError::Conflict(_))));
    assert_eq!(
        s.grants(Some(&id("acme")), None, true).unwrap(),
        std::slice::from_ref(&g)
    );
    assert_eq!(s.grants(Some(&id("globex")), None, false).unwrap(), []);
    assert_eq!(s.grants(None, Some(&alice()), false).unwrap(), [g]);
}

pub(crate) fn a_cancelled_request_stays_cancelled_and_cannot_be_decided(s: &dyn Store) {
    let r1: RequestId = id("r1");
    s.file_request(&req("r1", 2), None, 1_000).unwrap();
    s.approve(&r1, &bob(), None, &|_| Ok(grant("g1", 1_001, 30)), 1_001)
        .unwrap();
    let rec = s.cancel(&r1, 1_002).unwrap();
    assert_eq!(rec.status, RequestStatus::Cancelled);
    let listed = s
        .requests(None, None, Some(RequestStatus::Cancelled))
        .unwrap();
    assert_eq!(listed.len(), 1);
    let cancelled =
        StoreError::Conflict("request `r1` was cancelled by the technician who filed it".into());
    let err = s
        .approve(&r1, &carol(), None, &|_| Ok(grant("g1", 1_003, 30)), 1_003)
        .unwrap_err();
    assert_eq!(err, cancelled);
    assert_eq!(s.deny(&r1, &carol(), "no", 1_003).unwrap_err(), cancelled);
    assert_eq!(s.cancel(&r1, 1_004).unwrap_err(), cancelled);
    // Only a pending request is withdrawn.
    s.file_request(&req("r2", 1), None, 1_000).unwrap();
    s.deny(&id("r2"), &bob(), "no", 1_001).unwrap();
    let err = s.cancel(&id("r2"), 1_002).unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict("request `r2` is already denied".into())
    );
    assert!(matches!(
        s.cancel(&id("r9"), 1_002),
        Err(StoreError::NotFound { .. })
    ));
}

pub(crate) fn request_counts_group_by_customer_and_status(s: &dyn Store) {
    assert!(s.request_counts().unwrap().is_empty());
    s.file_request(&req("r1", 1), None, 1_000).unwrap();
    s.file_request(&req("r2", 1), None, 1_000).unwrap();
    s.file_request(&req("r3", 1), None, 1_000).unwrap();
    s.deny(&id("r3"), &bob(), "not now", 1_001).unwrap();
    let mut counts = s.request_counts().unwrap();
    counts.sort_by_key(|(_, st, _)| st.as_str());
    assert_eq!(
        counts,
        vec![
            (id("acme"), RequestStatus::Denied, 1),
            (id("acme"), RequestStatus::Pending, 2),
        ]
    );
}

/// Runs the suite against a backend: `store_suite!(open)`, where `open()` returns a guard (e.g.
/// the database's folder) and a fresh, empty `Box<dyn Store>`; one `#[test]` per behaviour.
macro_rules! store_suite {
    ($open:path) => {
        $crate::conformance::store_suite!(@each $open; quorum_of_two_distinct_approvers, denied_stays_denied, a_refused_grant_leaves_no_trace_of_the_approval, a_request_filed_with_its_grant_is_approved_at_once, pending_requests_expire_and_cannot_be_approved_after, listing_filters_by_customer_technician_and_status, break_glass_grants_are_recorded_without_a_request, a_cancelled_request_stays_cancelled_and_cannot_be_decided, request_counts_group_by_customer_and_status);
    };
    (@each $open:path; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (_guard, store) = $open();
                $crate::conformance::$name(store.as_ref());
            }
        )*
    };
}
pub(crate) use store_suite;
