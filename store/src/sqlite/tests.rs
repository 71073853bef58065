//! The SQLite store against a real database file: quorum, conflicts, expiry, revocation, sessions,
//! and state surviving a reopen. (The rules it is handed, such as who may approve and what window a
//! grant covers, are tested in the workflow crate.)

use super::*;

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

fn alice() -> SpiffeId {
    id("spiffe://sallyport.local/technician/northwind/alice")
}

fn bob() -> SpiffeId {
    id("spiffe://sallyport.local/approver/acme/bob")
}

fn carol() -> SpiffeId {
    id("spiffe://sallyport.local/approver/acme/carol")
}

/// The grant `gid`, for `minutes` from `at`.
fn grant(gid: &str, at: i64, minutes: i64) -> NewGrant {
    NewGrant {
        id: id(gid),
        not_before: at,
        expires_at: at + minutes * 60,
    }
}

fn req(rid: &str, approvals: u32) -> NewRequest {
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

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("sallyport.db")).unwrap();
    (dir, s)
}

#[test]
fn quorum_of_two_distinct_approvers() {
    let (_d, s) = open();
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

#[test]
fn denied_stays_denied() {
    let (_d, s) = open();
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

#[test]
fn a_refused_grant_leaves_no_trace_of_the_approval() {
    let (_d, s) = open();
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

#[test]
fn a_request_filed_with_its_grant_is_approved_at_once() {
    let (_d, s) = open();
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

#[test]
fn pending_requests_expire_and_cannot_be_approved_after() {
    let (_d, s) = open();
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

#[test]
fn listing_filters_by_customer_technician_and_status() {
    let (_d, s) = open();
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

#[test]
fn revocation_and_state_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sallyport.db");
    let g1: GrantId = id("g1");
    let first = Revocation {
        at: 1_100,
        by: bob(),
        reason: "ticket closed".into(),
    };
    {
        let s = SqliteStore::open(&path).unwrap();
        s.file_request(&req("r1", 1), None, 1_000).unwrap();
        s.file_request(&req("r2", 1), None, 1_000).unwrap();
        s.approve(
            &id("r1"),
            &bob(),
            None,
            &|_| Ok(grant("g1", 1_001, 30)),
            1_001,
        )
        .unwrap();
        let (g, changed) = s.revoke(&g1, &bob(), "ticket closed", 1_100).unwrap();
        assert!(changed);
        assert_eq!(g.revoked, Some(first.clone()));
        assert!(!g.audited, "an approval's grant waits for its audit record");
        s.mark_grant_audited(&g1).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.request(&id("r2")).unwrap().status, RequestStatus::Pending);
    assert!(s.grant(&g1).unwrap().audited);
    let (g, changed) = s.revoke(&g1, &carol(), "again", 1_200).unwrap();
    assert!(!changed);
    assert_eq!(g.revoked, Some(first), "first revocation stands");
    assert!(matches!(
        s.revoke(&id("nope"), &bob(), "x", 1),
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

fn session(sid: &str, customer: &str) -> SessionRecord {
    SessionRecord {
        id: id(sid),
        grant_id: id("g1"),
        customer: id(customer),
        target: id("db01"),
        technician: alice(),
        source_ip: id("127.0.0.1"),
        opened_at: 1_000,
        closed_at: None,
        bytes_up: 0,
        bytes_down: 0,
        close_reason: None,
    }
}

fn closed(sid: &str, at: i64, up: u64, down: u64, reason: &str) -> SessionChange {
    SessionChange::Close(SessionRecord {
        closed_at: Some(at),
        bytes_up: up,
        bytes_down: down,
        close_reason: Some(reason.into()),
        ..session(sid, "acme")
    })
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
        closed("s1", 1_060, 5, 7, "closed by peer"),
        closed("s4", 1_070, 1, 2, "grant revoked"),
        SessionChange::Open(session("s4", "acme")),
    ])
    .unwrap();
    let s1 = s.session(&id("s1")).unwrap();
    assert_eq!(
        (s1.closed_at, s1.bytes_up, s1.bytes_down),
        (Some(1_060), 5, 7)
    );
    let s4 = s.session(&id("s4")).unwrap();
    assert_eq!((s4.customer.as_str(), s4.closed_at), ("acme", Some(1_070)));
    assert_eq!(s4.close_reason.as_deref(), Some("grant revoked"));
    assert_eq!((s4.bytes_up, s4.bytes_down), (1, 2));
    let live_of = |customer: &str| -> Vec<String> {
        s.sessions(&SessionFilter {
            customer: Some(id(customer)),
            live_only: true,
            ..SessionFilter::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect()
    };
    assert_eq!(live_of("acme"), ["s2"]);
    assert_eq!(s.sessions(&SessionFilter::default()).unwrap().len(), 4);
    let of_bob = SessionFilter {
        technician: Some(bob()),
        ..SessionFilter::default()
    };
    assert_eq!(s.sessions(&of_bob).unwrap().len(), 0);
    let of_grant = SessionFilter {
        grant: Some(id("g1")),
        ..SessionFilter::default()
    };
    assert_eq!(s.sessions(&of_grant).unwrap().len(), 4);
    assert!(matches!(
        s.session(&id("nope")),
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
    let live = SessionFilter {
        live_only: true,
        ..SessionFilter::default()
    };
    assert!(s.sessions(&live).unwrap().is_empty());
    assert_eq!(
        s.session(&id("s3")).unwrap().close_reason.as_deref(),
        Some("broker restarted")
    );
}

#[test]
fn a_row_this_store_did_not_write_is_a_backend_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sallyport.db");
    let s = SqliteStore::open(&path).unwrap();
    s.record_sessions(&[SessionChange::Open(session("s1", "acme"))])
        .unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("UPDATE sessions SET technician = 'not a spiffe id'", [])
        .unwrap();
    assert!(matches!(s.session(&id("s1")), Err(StoreError::Backend(_))));
}

#[test]
fn rows_without_identity_from_an_earlier_version_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sallyport.db");
    {
        // The schema of the previous version, with a close that was written before its open and
        // whose open was lost: the row has no identity.
        let mut raw = rusqlite::Connection::open(&path).unwrap();
        Migrations::from_slice(&MIGRATIONS[..2])
            .to_latest(&mut raw)
            .unwrap();
        raw.execute(
            "INSERT INTO sessions (id, grant_id, customer, target, technician, source_ip, opened_at, closed_at, bytes_up, bytes_down, close_reason)
             VALUES ('s-lost', '', '', '', '', '', 1070, 1070, 1, 2, 'grant revoked')",
            [],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    s.record_sessions(&[SessionChange::Open(session("s1", "acme"))])
        .unwrap();
    let all = s.sessions(&SessionFilter::default()).unwrap();
    assert_eq!(all.len(), 1, "the listing works and holds only whole rows");
    assert!(matches!(
        s.session(&id("s-lost")),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn a_cancelled_request_stays_cancelled_and_cannot_be_decided() {
    let (_d, s) = open();
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

#[test]
fn the_cancelled_status_migration_keeps_every_row_and_its_references() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sallyport.db");
    // A database of the version before `cancelled`, with a request, its approval and its grant.
    {
        let mut conn = connect(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
        Migrations::from_slice(&MIGRATIONS[..MIGRATIONS.len() - 1])
            .to_latest(&mut conn)
            .unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        conn.execute_batch(
            "INSERT INTO requests (id, customer, target, technician, cert_thumbprint, minutes, reason,
               approvals_required, created_at, expires_at, status)
             VALUES ('r1', 'acme', 'db01', 'spiffe://sallyport.local/technician/northwind/alice',
               't', 30, 'patching', 1, 1000, 90000, 'approved');
             INSERT INTO approvals (request_id, approver, at)
               VALUES ('r1', 'spiffe://sallyport.local/approver/acme/bob', 1001);
             INSERT INTO grants (id, request_id, customer, target, technician, not_before, expires_at)
               VALUES ('g1', 'r1', 'acme', 'db01',
                 'spiffe://sallyport.local/technician/northwind/alice', 1001, 2801);",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let rec = s.request(&id("r1")).unwrap();
    assert_eq!(rec.status, RequestStatus::Approved);
    assert_eq!(rec.approvals.len(), 1);
    assert_eq!(rec.grant_id, Some(id("g1")));
    s.file_request(&req("r2", 1), None, 1_000).unwrap();
    assert_eq!(
        s.cancel(&id("r2"), 1_001).unwrap().status,
        RequestStatus::Cancelled
    );
    // Foreign keys are on again: an approval of no request is refused.
    let conn = s.conn.lock().unwrap();
    assert!(
        conn.execute(
            "INSERT INTO approvals (request_id, approver, at) VALUES ('nope', 'x', 1)",
            [],
        )
        .is_err()
    );
}

#[test]
fn request_counts_group_by_customer_and_status() {
    let (_d, s) = open();
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
