//! The SQLite store against a real database file: the shared suite every store passes
//! ([`crate::conformance`]), and what is SQLite's own: revocation and sessions surviving a reopen,
//! its migrations, rows it did not write. (The rules it is handed, such as who may approve and what window a
//! grant covers, are tested in the workflow crate.)

use super::*;
use crate::conformance::{alice, bob, carol, grant, id, req, store_suite};

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("sallyport.db")).unwrap();
    (dir, s)
}

/// A fresh store for the shared suite.
fn open_boxed() -> (tempfile::TempDir, Box<dyn Store>) {
    let (dir, s) = open();
    (dir, Box::new(s))
}

store_suite!(open_boxed);

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
