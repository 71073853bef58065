//! The SQLite store against a real database file: quorum, self-approval, conflicts, expiry,
//! revocation, and state surviving a reopen.

use super::*;

const ALICE: &str = "spiffe://sallyport.local/technician/northwind/alice";
const BOB: &str = "spiffe://sallyport.local/approver/acme/bob";
const CAROL: &str = "spiffe://sallyport.local/approver/acme/carol";

fn req(id: &str, approvals: u32) -> NewRequest {
    NewRequest {
        id: id.into(),
        customer: "acme".into(),
        target: "db01".into(),
        technician: ALICE.into(),
        cert_thumbprint: "thumb".into(),
        minutes: 30,
        reason: "patching".into(),
        ticket: Some("CHG-1".into()),
        start_at: None,
        approvals_required: approvals,
        policy_id: Some("support".into()),
        created_at: 1_000,
        expires_at: 1_000 + 86_400,
    }
}

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("sallyport.db")).unwrap();
    (dir, s)
}

#[test]
fn quorum_of_two_distinct_approvers() {
    let (_d, s) = open();
    s.file_request(&req("r1", 2), "g1", 1_000).unwrap();
    assert_eq!(
        s.approve("r1", BOB, Some("ok"), "g1", 1_010).unwrap(),
        Approval::Recorded { missing: 1 }
    );
    assert_eq!(s.request("r1").unwrap().status, RequestStatus::Pending);
    let err = s.approve("r1", BOB, None, "g1", 1_011).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(m) if m.contains("already approved")));
    let Approval::Granted(g) = s.approve("r1", CAROL, None, "g1", 1_020).unwrap() else {
        panic!("quorum not reached");
    };
    assert_eq!((g.not_before, g.expires_at), (1_020, 1_020 + 1_800));
    let rec = s.request("r1").unwrap();
    assert_eq!(rec.status, RequestStatus::Approved);
    assert_eq!(rec.grant_id.as_deref(), Some("g1"));
    assert_eq!(rec.approvals.len(), 2);
}

#[test]
fn requester_cannot_approve_and_denied_stays_denied() {
    let (_d, s) = open();
    s.file_request(&req("r1", 1), "g1", 1_000).unwrap();
    let err = s.approve("r1", ALICE, None, "g1", 1_001).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(m) if m.contains("own request")));
    let rec = s.deny("r1", BOB, "not now", 1_002).unwrap();
    assert_eq!(rec.status, RequestStatus::Denied);
    assert_eq!(rec.denial, Some((BOB.into(), "not now".into())));
    let err = s.approve("r1", CAROL, None, "g1", 1_003).unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict("request `r1` is already denied".into())
    );
    assert!(s.grant("g1").is_err(), "no grant for a denied request");
}

#[test]
fn zero_approvals_grants_at_once_and_start_at_is_honoured() {
    let (_d, s) = open();
    let mut r = req("r1", 0);
    r.start_at = Some(5_000);
    let rec = s.file_request(&r, "g1", 1_000).unwrap();
    assert_eq!(rec.status, RequestStatus::Approved);
    let g = s.grant("g1").unwrap();
    assert_eq!((g.not_before, g.expires_at), (5_000, 5_000 + 1_800));
}

#[test]
fn pending_requests_expire_and_cannot_be_approved_after() {
    let (_d, s) = open();
    s.file_request(&req("r1", 1), "g1", 1_000).unwrap();
    s.file_request(&req("r2", 1), "g2", 1_000).unwrap();
    s.approve("r2", BOB, None, "g2", 1_001).unwrap();
    let late = 1_000 + 86_400;
    let err = s.approve("r1", BOB, None, "g1", late).unwrap_err();
    assert_eq!(err, StoreError::Conflict("request `r1` has expired".into()));
    let expired = s.expire_pending(late).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].status, RequestStatus::Expired);
    assert_eq!(s.request("r2").unwrap().status, RequestStatus::Approved);
    assert!(s.expire_pending(late).unwrap().is_empty());
}

#[test]
fn listing_filters_by_customer_technician_and_status() {
    let (_d, s) = open();
    s.file_request(&req("r1", 1), "g1", 1_000).unwrap();
    let mut other = req("r2", 1);
    other.customer = "globex".into();
    s.file_request(&other, "g2", 1_000).unwrap();
    assert_eq!(s.requests(Some("acme"), None, None).unwrap().len(), 1);
    assert_eq!(s.requests(None, Some(ALICE), None).unwrap().len(), 2);
    assert_eq!(
        s.requests(Some("globex"), None, Some(RequestStatus::Approved))
            .unwrap()
            .len(),
        0
    );
    let err = s.file_request(&req("r1", 1), "g3", 1_000).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)));
}

#[test]
fn revocation_and_state_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sallyport.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.file_request(&req("r1", 1), "g1", 1_000).unwrap();
        s.file_request(&req("r2", 1), "g2", 1_000).unwrap();
        s.approve("r1", BOB, None, "g1", 1_001).unwrap();
        let (g, changed) = s.revoke("g1", BOB, "ticket closed", 1_100).unwrap();
        assert!(changed);
        assert_eq!(g.revoked, Some((1_100, BOB.into(), "ticket closed".into())));
        assert!(!g.audited, "an approval's grant waits for its audit record");
        s.mark_grant_audited("g1").unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.request("r2").unwrap().status, RequestStatus::Pending);
    assert!(s.grant("g1").unwrap().audited);
    let (g, changed) = s.revoke("g1", CAROL, "again", 1_200).unwrap();
    assert!(!changed);
    assert_eq!(
        g.revoked,
        Some((1_100, BOB.into(), "ticket closed".into())),
        "first revocation stands"
    );
    assert!(matches!(
        s.revoke("nope", BOB, "x", 1),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn migrations_are_valid() {
    Migrations::from_slice(MIGRATIONS).validate().unwrap();
}

#[test]
fn break_glass_grants_are_recorded_without_a_request() {
    let (_d, s) = open();
    let g = GrantRecord {
        id: "g-bg".into(),
        request_id: None,
        customer: "acme".into(),
        target: "db01".into(),
        technician: ALICE.into(),
        not_before: 10,
        expires_at: 70,
        revoked: None,
        audited: true,
    };
    s.record_grant(&g).unwrap();
    assert_eq!(s.grant("g-bg").unwrap(), g);
    assert!(matches!(s.record_grant(&g), Err(StoreError::Conflict(_))));
}

#[test]
fn a_window_that_started_earlier_is_cut_short_and_a_past_one_cannot_be_approved() {
    let (_d, s) = open();
    let mut r = req("r1", 1);
    r.start_at = Some(900);
    s.file_request(&r, "g1", 1_000).unwrap();
    let Approval::Granted(g) = s.approve("r1", BOB, None, "g1", 1_100).unwrap() else {
        panic!("not granted");
    };
    assert_eq!((g.not_before, g.expires_at), (1_100, 900 + 1_800));

    let mut r = req("r2", 1);
    r.start_at = Some(0);
    s.file_request(&r, "g2", 1_000).unwrap();
    let err = s.approve("r2", BOB, None, "g2", 1_900).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(m) if m.contains("already ended")));
    let rec = s.request("r2").unwrap();
    assert_eq!(rec.status, RequestStatus::Pending);
    assert!(
        rec.approvals.is_empty(),
        "a refused approval leaves no trace"
    );
}

fn session(id: &str, customer: &str) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        grant_id: "g1".into(),
        customer: customer.into(),
        target: "db01".into(),
        technician: ALICE.into(),
        source_ip: "127.0.0.1".into(),
        opened_at: 1_000,
        closed_at: None,
        bytes_up: 0,
        bytes_down: 0,
        close_reason: None,
    }
}

#[test]
fn sessions_open_close_in_any_order_and_orphans_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sallyport.db");
    let s = SqliteStore::open(&path).unwrap();
    s.record_sessions(&[
        SessionChange::Open(session("s1", "acme")),
        SessionChange::Open(session("s2", "acme")),
        SessionChange::Open(session("s3", "globex")),
    ])
    .unwrap();
    // The close of s4 is written before its open.
    s.record_sessions(&[
        SessionChange::Close {
            id: "s1".into(),
            at: 1_060,
            bytes_up: 5,
            bytes_down: 7,
            reason: "closed by peer".into(),
        },
        SessionChange::Close {
            id: "s4".into(),
            at: 1_070,
            bytes_up: 1,
            bytes_down: 2,
            reason: "grant revoked".into(),
        },
        SessionChange::Open(session("s4", "acme")),
    ])
    .unwrap();
    let s1 = s.session("s1").unwrap();
    assert_eq!(
        (s1.closed_at, s1.bytes_up, s1.bytes_down),
        (Some(1_060), 5, 7)
    );
    let s4 = s.session("s4").unwrap();
    assert_eq!((s4.customer.as_str(), s4.closed_at), ("acme", Some(1_070)));
    assert_eq!(s4.close_reason.as_deref(), Some("grant revoked"));
    let live: Vec<String> = s
        .sessions(Some("acme"), None, true)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(live, ["s2"]);
    assert_eq!(s.sessions(None, None, false).unwrap().len(), 4);
    assert_eq!(s.sessions(None, Some(BOB), false).unwrap().len(), 0);
    assert!(matches!(
        s.session("nope"),
        Err(StoreError::NotFound {
            kind: "session",
            ..
        })
    ));
    drop(s);
    // A broker that died left s2 and s3 open.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.close_orphaned_sessions(2_000, "broker restarted")
            .unwrap(),
        2
    );
    assert!(s.sessions(None, None, true).unwrap().is_empty());
    assert_eq!(
        s.session("s3").unwrap().close_reason.as_deref(),
        Some("broker restarted")
    );
}
