//! Locks and the certificate register against a real SQLite file: one active lock per target and
//! scope, the active limit, end times, lifting once, the version that moves with every change, and
//! state surviving a reopen.

use crate::sqlite::SqliteStore;
use crate::{IssuedCertificate, LockTarget, NewLock, Store, StoreError};
use sallyport_ids::cert::{CertFingerprint, CertSerial};
use sallyport_ids::{CustomerId, LockId, SpiffeId};

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

fn alice() -> SpiffeId {
    id("spiffe://sallyport.local/technician/northwind/alice")
}

fn fp(byte: u8) -> CertFingerprint {
    CertFingerprint::from_digest([byte; 32])
}

fn lock(lid: &str, target: LockTarget, customer: Option<&str>, at: i64) -> NewLock {
    NewLock {
        id: id(lid),
        target,
        customer: customer.map(id::<CustomerId>),
        reason: "laptop stolen".into(),
        created_by: "spiffe://sallyport.local/admin/root".into(),
        created_at: at,
        expires_at: None,
    }
}

fn cert(byte: u8) -> LockTarget {
    LockTarget::Certificate {
        serial: id(&format!("{byte:02x}")),
        sha256: fp(byte),
        holder: Some(alice()),
    }
}

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("sallyport.db")).unwrap();
    (dir, s)
}

#[test]
fn one_active_lock_per_target_and_scope() {
    let (_d, s) = open();
    assert_eq!(s.locks_version().unwrap(), 0);
    let rec = s
        .add_lock(&lock("l1", LockTarget::Identity(alice()), None, 100), 10)
        .unwrap();
    assert!(rec.active_at(100) && rec.unlocked.is_none());
    let v1 = s.locks_version().unwrap();
    assert!(v1 > 0);
    let err = s
        .add_lock(&lock("l2", LockTarget::Identity(alice()), None, 101), 10)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("already locked") && m.contains("`l1`")),
        "{err}"
    );
    // Another scope, or one certificate of the same person, is another lock.
    s.add_lock(
        &lock("l3", LockTarget::Identity(alice()), Some("acme"), 102),
        10,
    )
    .unwrap();
    s.add_lock(&lock("l4", cert(1), None, 103), 10).unwrap();
    let err = s.add_lock(&lock("l5", cert(1), None, 104), 10).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("certificate `1`")),
        "{err}"
    );
    assert_eq!(
        s.add_lock(&lock("l6", cert(2), None, 104), 10)
            .unwrap()
            .lock
            .id,
        id::<LockId>("l6")
    );
    assert!(s.locks_version().unwrap() > v1);
    let ids: Vec<String> = s
        .locks(Some(105), 100)
        .unwrap()
        .iter()
        .map(|l| l.lock.id.to_string())
        .collect();
    assert_eq!(ids, ["l6", "l4", "l3", "l1"], "newest first");
    assert_eq!(s.lock(&id("l4")).unwrap().lock.target, cert(1));
    assert!(matches!(
        s.lock(&id("nope")),
        Err(StoreError::NotFound { kind: "lock", .. })
    ));
}

#[test]
fn the_active_limit_holds_and_ended_locks_do_not_count() {
    let (_d, s) = open();
    let mut first = lock("l1", cert(1), None, 100);
    first.expires_at = Some(150);
    s.add_lock(&first, 2).unwrap();
    s.add_lock(&lock("l2", cert(2), None, 100), 2).unwrap();
    let err = s.add_lock(&lock("l3", cert(3), None, 120), 2).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("2 locks are active")),
        "{err}"
    );
    assert!(s.locks(Some(120), 100).unwrap().len() == 2);
    // Once l1 has ended it no longer applies, no longer counts, and its target may be locked again.
    assert_eq!(s.locks(Some(150), 100).unwrap().len(), 1);
    s.add_lock(&lock("l3", cert(3), None, 150), 2).unwrap();
    s.unlock(&id("l2"), "spiffe://sallyport.local/admin/root", None, 151)
        .unwrap();
    s.add_lock(&lock("l4", cert(1), None, 152), 2).unwrap();
    assert_eq!(
        s.locks(None, 100).unwrap().len(),
        4,
        "all, ended and lifted too"
    );
    assert_eq!(s.locks(None, 2).unwrap().len(), 2, "bounded");
}

#[test]
fn a_lock_is_lifted_once_and_not_after_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sallyport.db");
    let s = SqliteStore::open(&path).unwrap();
    let mut ending = lock("l1", LockTarget::Identity(alice()), None, 100);
    ending.expires_at = Some(200);
    s.add_lock(&ending, 10).unwrap();
    let before = s.locks_version().unwrap();
    let bob = "spiffe://sallyport.local/approver/acme/bob";
    let lifted = s.unlock(&id("l1"), bob, Some("found it"), 150).unwrap();
    let u = lifted.unlocked.clone().unwrap();
    assert_eq!(
        (u.at, u.by.as_str(), u.reason.as_deref()),
        (150, bob, Some("found it"))
    );
    assert!(!lifted.active_at(151));
    assert!(
        s.locks_version().unwrap() > before,
        "a lifting moves the version"
    );
    let err = s.unlock(&id("l1"), bob, None, 160).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("already lifted by acme/bob")),
        "{err}"
    );
    s.add_lock(&ending_at("l2", 200), 10).unwrap();
    let err = s.unlock(&id("l2"), bob, None, 200).unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("already ended")),
        "{err}"
    );
    assert!(matches!(
        s.unlock(&id("l9"), bob, None, 1),
        Err(StoreError::NotFound { .. })
    ));
    drop(s);
    let again = SqliteStore::open(&path).unwrap();
    assert_eq!(again.lock(&id("l1")).unwrap(), lifted);
    assert!(again.lock(&id("l2")).unwrap().active_at(199));
}

fn ending_at(lid: &str, end: i64) -> NewLock {
    let mut l = lock(lid, cert(7), Some("acme"), 100);
    l.expires_at = Some(end);
    l
}

#[test]
fn the_register_finds_certificates_by_fingerprint_and_holder() {
    let (_d, s) = open();
    let issued = |byte: u8, at: i64, until: i64| IssuedCertificate {
        serial: id::<CertSerial>(&format!("{byte:02x}")),
        sha256: fp(byte),
        holder: alice(),
        issued_at: at,
        not_after: until,
    };
    s.record_certificate(&issued(1, 100, 1_000)).unwrap();
    s.record_certificate(&issued(1, 100, 1_000)).unwrap();
    s.record_certificate(&issued(2, 200, 300)).unwrap();
    s.record_certificate(&issued(3, 300, 2_000)).unwrap();
    assert_eq!(s.certificate(&fp(2)).unwrap(), Some(issued(2, 200, 300)));
    assert_eq!(s.certificate(&fp(9)).unwrap(), None);
    let valid: Vec<CertSerial> = s
        .certificates_of(&alice(), 500)
        .unwrap()
        .into_iter()
        .map(|c| c.serial)
        .collect();
    assert_eq!(
        valid,
        [id("03"), id("01")],
        "newest first, expired ones left out"
    );
    assert!(
        s.certificates_of(&id("spiffe://sallyport.local/admin/root"), 0)
            .unwrap()
            .is_empty()
    );
}
