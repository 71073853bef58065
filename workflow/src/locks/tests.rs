//! Locks against real things: a SQLite file, an audit trail on disk, a real CA, a hand-set clock and
//! a registry of live tunnels that records what it was asked to cut. No HTTP, no listener.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sallyport_audit::{AuditLog, AuditWriter};
use sallyport_certs::identity::{PeerIdentity, certificate_serial};
use sallyport_certs::pki::{CertificateAuthority, Validity};
use sallyport_ids::time::Clock;
use sallyport_ids::{CustomerId, GrantId, SessionId, SpiffeId, TrustDomain};
use sallyport_store::{IssuedCertificate, SessionRecord, Store};

use super::*;
use crate::BoxFuture;

const NOW: i64 = 1_767_261_600; // 2026-01-01T10:00:00Z
const ALICE: &str = "spiffe://sallyport.local/technician/northwind/alice";
const EVE: &str = "spiffe://sallyport.local/technician/northwind/eve";
const BOB: &str = "spiffe://sallyport.local/approver/acme/bob";
const DAVE: &str = "spiffe://sallyport.local/approver/globex/dave";
const ROOT: &str = "spiffe://sallyport.local/admin/root";

/// One live tunnel: its session, its certificate, and why it was cut (if it was).
type Live = (SessionRecord, [u8; 32], Option<String>);

/// Live tunnels: one per `(technician, customer, thumbprint)`; remembers which were cut.
#[derive(Default)]
struct Tunnels {
    live: Mutex<Vec<Live>>,
}

impl Tunnels {
    fn open(&self, technician: &str, customer: &str, thumbprint: [u8; 32]) {
        let mut live = self.live.lock().unwrap();
        let n = live.len();
        live.push((
            SessionRecord {
                id: format!("s{n}").parse().unwrap(),
                grant_id: "g1".parse().unwrap(),
                customer: customer.parse().unwrap(),
                target: "db01".parse().unwrap(),
                technician: technician.parse().unwrap(),
                source_ip: "10.0.0.1".parse().unwrap(),
                opened_at: NOW,
                closed_at: None,
                bytes_up: 0,
                bytes_down: 0,
                close_reason: None,
            },
            thumbprint,
            None,
        ));
    }

    fn causes(&self) -> Vec<Option<String>> {
        self.live
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, c)| c.clone())
            .collect()
    }
}

impl LiveTunnels for Tunnels {
    fn snapshot(&self) -> Vec<SessionRecord> {
        Vec::new()
    }
    fn get(&self, _: &SessionId) -> Option<SessionRecord> {
        None
    }
    fn end(&self, _: &SessionId, _: &str) -> bool {
        false
    }
    fn end_grant(&self, _: &GrantId, _: &str) -> usize {
        0
    }
    fn recheck(
        &self,
        _: &sallyport_config::Config,
        _: jiff::Timestamp,
        _: &str,
    ) -> Vec<(SessionRecord, String)> {
        Vec::new()
    }
    fn end_where(&self, ends: &dyn Fn(&SessionRecord, &[u8; 32]) -> bool, cause: &str) -> usize {
        let mut n = 0;
        for (s, t, c) in self.live.lock().unwrap().iter_mut() {
            if c.is_none() && ends(s, t) {
                *c = Some(cause.to_owned());
                n += 1;
            }
        }
        n
    }
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

struct World {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    trail: AuditLog,
    locks: Locks,
    tunnels: Arc<Tunnels>,
    clock: Clock,
    ca: CertificateAuthority,
    _writer: AuditWriter,
}

fn customers() -> Vec<CustomerId> {
    vec!["acme".parse().unwrap(), "globex".parse().unwrap()]
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let (cx, store, writer) = crate::test_context(dir.path(), &["acme", "globex"], NOW);
        let (trail, clock) = (cx.trail.clone(), cx.clock.clone());
        let td: TrustDomain = "sallyport.local".parse().unwrap();
        let ca = CertificateAuthority::generate(&td).unwrap();
        let crl_ca = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem(), "ca").unwrap();
        let tunnels = Arc::new(Tunnels::default());
        let locks = Locks::new(LocksParts {
            gate: LockGate::new(Arc::new(LockView::new()), cx.clone()),
            cx,
            tunnels: tunnels.clone(),
            customers: customers(),
            trust_domain: td,
            verifier: sallyport_certs::tls::client_verifier(ca.cert_pem(), "ca").unwrap(),
            crl: Some(Arc::new(crl::Crl::new(crl_ca, dir.path().join("crl.pem")))),
        });
        World {
            dir,
            store,
            trail,
            locks,
            tunnels,
            clock,
            ca,
            _writer: writer,
        }
    }

    /// A certificate for `who`, as a peer and its PEM.
    fn issue(&self, who: &str) -> (PeerIdentity, String) {
        let id: SpiffeId = who.parse().unwrap();
        let issued = self
            .ca
            .issue_client(&id, &[], Validity::from_now(Duration::from_secs(3600)))
            .unwrap();
        let der = sallyport_certs::tls::certs_from_pem(&issued.cert_pem, "c").unwrap();
        let peer = PeerIdentity::from_der(&der[0], id.trust_domain()).unwrap();
        (peer, issued.cert_pem)
    }

    fn records(&self, chain: &str) -> Vec<serde_json::Value> {
        let dir = sallyport_audit::segment::chain_dir(&self.dir.path().join("audit"), chain);
        sallyport_audit::segment::Reader::open(&dir, sallyport_audit::segment::Start::Oldest, None)
            .map(|r| {
                r.map(|l| serde_json::from_str(&l.unwrap().text).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn events(&self, chain: &str) -> Vec<String> {
        self.records(chain)
            .iter()
            .map(|r| r["event"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn peer(who: &str, thumbprint: [u8; 32]) -> PeerIdentity {
    PeerIdentity {
        id: who.parse().unwrap(),
        groups: Vec::new(),
        thumbprint,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(NOW as u64 + 86_400),
        signin: None,
    }
}

fn caller(p: &PeerIdentity) -> Caller<'_> {
    Caller {
        peer: p,
        ip: "10.0.0.9".parse().unwrap(),
    }
}

fn on(who: &str, reason: &str) -> LockAsk {
    LockAsk {
        spiffe_id: Some(who.into()),
        reason: reason.into(),
        ..LockAsk::default()
    }
}

#[tokio::test]
async fn an_admin_lock_bars_everything_cuts_tunnels_and_is_recorded_first() {
    let w = World::new();
    w.tunnels.open(ALICE, "acme", [1; 32]);
    w.tunnels.open(ALICE, "globex", [2; 32]);
    w.tunnels.open(EVE, "acme", [3; 32]);
    let root = peer(ROOT, [9; 32]);
    let done = w
        .locks
        .lock(caller(&root), on(ALICE, "laptop stolen"))
        .await
        .unwrap();
    assert_eq!(done.sessions_closed, 2);
    let cause = format!("identity locked (lock {})", done.lock.lock.id);
    assert_eq!(
        w.tunnels.causes(),
        [Some(cause.clone()), Some(cause), None],
        "both of alice's tunnels, and only hers"
    );
    // On the broker's chain and on every customer's: a technician may work for any of them.
    for chain in ["_broker", "acme", "globex"] {
        let r = w.records(chain);
        let r = r.last().unwrap();
        assert_eq!(r["event"], "identity_locked", "{chain}");
        assert_eq!(r["lock_id"], done.lock.lock.id.as_str());
        assert_eq!(r["lock_scope"], "*");
        assert_eq!(r["subject"], ALICE);
        assert_eq!(r["actor"], ROOT);
        assert!(r["reason"].as_str().unwrap().contains("laptop stolen"));
    }
    // Every certificate of alice is refused, for anything; the refusal is recorded with the lock.
    let alice = peer(ALICE, [5; 32]);
    let gate = w.locks.gate();
    let err = gate.admit(caller(&alice), None).await.unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Locked(m) if m.contains("this identity is locked by admin/root until unlocked") && m.contains("laptop stolen")),
        "{err}"
    );
    let acme: CustomerId = "acme".parse().unwrap();
    assert!(gate.admit(caller(&alice), Some(&acme)).await.is_err());
    let refusal = w.records("acme").pop().unwrap();
    assert_eq!(
        (refusal["event"].as_str(), refusal["outcome"].as_str()),
        (Some("auth_failure"), Some("deny"))
    );
    assert_eq!(refusal["lock_id"], done.lock.lock.id.as_str());
    assert!(gate.admit(caller(&peer(EVE, [5; 32])), None).await.is_ok());
    // The same lock again is refused and changes nothing.
    let err = w
        .locks
        .lock(caller(&root), on(ALICE, "again"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Conflict(m) if m.contains("already locked")),
        "{err}"
    );
    assert_eq!(w.locks.list(caller(&root), true).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_approver_locks_technicians_for_their_customer_only() {
    let w = World::new();
    w.tunnels.open(ALICE, "acme", [1; 32]);
    w.tunnels.open(ALICE, "globex", [1; 32]);
    let bob = peer(BOB, [7; 32]);
    let done = w
        .locks
        .lock(caller(&bob), on(ALICE, "suspicious logins"))
        .await
        .unwrap();
    assert_eq!(done.lock.lock.customer, Some("acme".parse().unwrap()));
    assert_eq!(done.sessions_closed, 1, "only the tunnel into acme");
    assert_eq!(w.tunnels.causes()[1], None);
    assert_eq!(w.events("acme"), ["identity_locked"]);
    assert!(w.events("globex").is_empty() && w.events("_broker").is_empty());
    let alice = peer(ALICE, [1; 32]);
    let gate = w.locks.gate();
    let (acme, globex): (CustomerId, CustomerId) =
        ("acme".parse().unwrap(), "globex".parse().unwrap());
    assert!(gate.admit(caller(&alice), Some(&acme)).await.is_err());
    assert!(gate.admit(caller(&alice), Some(&globex)).await.is_ok());
    assert!(
        gate.admit(caller(&alice), None).await.is_ok(),
        "the API as a whole"
    );

    // Another customer's approver sees nothing of it and cannot lift it, nor lock for acme.
    let dave = peer(DAVE, [8; 32]);
    assert!(w.locks.list(caller(&dave), true).await.unwrap().is_empty());
    let err = w
        .locks
        .unlock(caller(&dave), &done.lock.lock.id, None)
        .await
        .unwrap_err();
    assert!(matches!(err, WorkflowError::NotFound(_)), "{err}");
    let mut for_acme = on(ALICE, "x");
    for_acme.customer = Some("acme".into());
    let err = w.locks.lock(caller(&dave), for_acme).await.unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Forbidden(m) if m.contains("`globex`")),
        "{err}"
    );
    for who in [ROOT, DAVE] {
        let err = w.locks.lock(caller(&bob), on(who, "x")).await.unwrap_err();
        assert!(
            matches!(&err, WorkflowError::Forbidden(m) if m.contains("technicians only")),
            "{err}"
        );
    }
    // Alice sees the lock on herself; bob lifts it, and that is on the trail before access returns.
    assert_eq!(w.locks.list(caller(&alice), false).await.unwrap().len(), 1);
    let lifted = w
        .locks
        .unlock(
            caller(&bob),
            &done.lock.lock.id,
            crate::terms::unlock_reason(Some("all clear")).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        lifted.unlocked.unwrap().reason.as_deref(),
        Some("all clear")
    );
    assert_eq!(
        w.events("acme"),
        ["identity_locked", "auth_failure", "identity_unlocked"]
    );
    assert!(gate.admit(caller(&alice), Some(&acme)).await.is_ok());
    let err = w
        .locks
        .unlock(caller(&bob), &done.lock.lock.id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Conflict(m) if m.contains("already lifted by acme/bob")),
        "{err}"
    );
}

#[tokio::test]
async fn bad_asks_lock_nothing() {
    let w = World::new();
    let root = peer(ROOT, [9; 32]);
    let cert = |serial: Option<&str>, sha256: Option<&str>, pem: Option<&str>| CertAsk {
        serial: serial.map(Into::into),
        sha256: sha256.map(Into::into),
        pem: pem.map(Into::into),
    };
    let hex = "ab".repeat(32);
    let cases: Vec<(LockAsk, &str, &str)> = vec![
        (on(ALICE, "  "), "bad_reason", "`reason` must be"),
        (
            LockAsk {
                reason: "x".into(),
                ..LockAsk::default()
            },
            "bad_target",
            "say what to lock",
        ),
        (
            LockAsk {
                certificate: Some(cert(Some("5f"), Some(&hex), None)),
                ..on(ALICE, "x")
            },
            "bad_target",
            "not both",
        ),
        (
            LockAsk {
                certificate: Some(cert(Some("5f"), None, None)),
                reason: "x".into(),
                ..LockAsk::default()
            },
            "bad_certificate",
            "both `serial` and `sha256`",
        ),
        (
            LockAsk {
                certificate: Some(cert(Some("5f"), Some("zz"), None)),
                reason: "x".into(),
                ..LockAsk::default()
            },
            "bad_certificate",
            "SHA-256",
        ),
        (
            LockAsk {
                certificate: Some(cert(None, None, Some("not pem"))),
                reason: "x".into(),
                ..LockAsk::default()
            },
            "bad_certificate",
            "BEGIN CERTIFICATE",
        ),
        (
            on("spiffe://elsewhere.test/admin/x", "x"),
            "bad_spiffe_id",
            "trust domain",
        ),
        (on("alice", "x"), "bad_spiffe_id", "invalid SPIFFE id"),
        (
            LockAsk {
                expires_at: Some("2025-01-01T00:00:00Z".into()),
                ..on(ALICE, "x")
            },
            "bad_expires_at",
            "not in the future",
        ),
        (
            LockAsk {
                expires_at: Some("2026-01-02T00:00:00Z".into()),
                minutes: Some(5),
                ..on(ALICE, "x")
            },
            "bad_end",
            "not both",
        ),
    ];
    for (ask, code, needle) in cases {
        let err = w.locks.lock(caller(&root), ask.clone()).await.unwrap_err();
        assert!(
            matches!(&err, WorkflowError::Invalid { code: c, message } if c == code && message.contains(needle)),
            "{ask:?}: {err}"
        );
    }
    // A certificate from another CA is not this broker's.
    let other = CertificateAuthority::generate(&"sallyport.local".parse().unwrap()).unwrap();
    let foreign = other
        .issue_client(
            &ALICE.parse().unwrap(),
            &[],
            Validity::from_now(Duration::from_secs(60)),
        )
        .unwrap();
    let ask = LockAsk {
        certificate: Some(cert(None, None, Some(&foreign.cert_pem))),
        reason: "x".into(),
        ..LockAsk::default()
    };
    let err = w.locks.lock(caller(&root), ask).await.unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Invalid { message, .. } if message.contains("broker's CA")),
        "{err}"
    );
    let mut unknown = on(ALICE, "x");
    unknown.customer = Some("initech".into());
    assert!(matches!(
        w.locks.lock(caller(&root), unknown).await,
        Err(WorkflowError::NotFound(_))
    ));
    assert!(matches!(
        w.locks
            .unlock(caller(&root), &"l-nope".parse().unwrap(), None)
            .await,
        Err(WorkflowError::NotFound(_))
    ));
    assert!(
        w.store.locks(None, 100).unwrap().is_empty(),
        "nothing was locked"
    );
    assert!(w.events("_broker").is_empty(), "nothing was recorded");
}

#[tokio::test]
async fn a_certificate_lock_bars_that_certificate_only() {
    let w = World::new();
    let (old, pem) = w.issue(ALICE);
    let (new, _) = w.issue(ALICE);
    w.tunnels.open(ALICE, "acme", old.thumbprint);
    w.tunnels.open(ALICE, "acme", new.thumbprint);
    let root = peer(ROOT, [9; 32]);
    let ask = LockAsk {
        certificate: Some(CertAsk {
            pem: Some(pem.clone()),
            ..CertAsk::default()
        }),
        reason: "key leaked".into(),
        minutes: Some(60),
        ..LockAsk::default()
    };
    let done = w.locks.lock(caller(&root), ask).await.unwrap();
    assert_eq!(done.sessions_closed, 1);
    assert_eq!(done.lock.lock.expires_at, Some(NOW + 3_600));
    let LockTarget::Certificate { serial, holder, .. } = &done.lock.lock.target else {
        panic!("not a certificate lock");
    };
    assert_eq!(
        holder.as_ref().map(ToString::to_string).as_deref(),
        Some(ALICE)
    );
    let der = sallyport_certs::tls::certs_from_pem(&pem, "c").unwrap();
    assert_eq!(*serial, certificate_serial(&der[0]).unwrap());
    let gate = w.locks.gate();
    let err = gate.admit(caller(&old), None).await.unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Locked(m) if m.contains("this certificate is locked") && m.contains("until 2026-01-01T11:00:00Z")),
        "{err}"
    );
    assert!(gate.admit(caller(&new), None).await.is_ok());
    let r = w.records("acme").pop().unwrap();
    assert_eq!(r["cert_serial"], serial.as_str());
    assert_eq!(r["cert_sha256"], old.fingerprint().to_string());
    assert_eq!(r["expires_at"], "2026-01-01T11:00:00Z");
    // The CRL lists it.
    let crl = w.locks.crl().unwrap().pem().unwrap();
    assert_eq!(
        std::fs::read_to_string(w.dir.path().join("crl.pem")).unwrap(),
        crl
    );
    // It ends by itself: once past its end time, it no longer bars anything or lists as active.
    w.clock.advance(3_600);
    assert!(gate.admit(caller(&old), None).await.is_ok());
    assert!(w.locks.list(caller(&root), false).await.unwrap().is_empty());
    let err = w
        .locks
        .unlock(caller(&root), &done.lock.lock.id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Conflict(m) if m.contains("already ended")),
        "{err}"
    );
}

#[tokio::test]
async fn a_replacing_certificate_locks_the_earlier_ones_and_the_broker_picks_them_up() {
    let w = World::new();
    w.locks.load().await.unwrap();
    let (old, old_pem) = w.issue(ALICE);
    let (new, new_pem) = w.issue(ALICE);
    let registered = |p: &PeerIdentity, pem: &str| IssuedCertificate {
        serial: certificate_serial(&sallyport_certs::tls::certs_from_pem(pem, "c").unwrap()[0])
            .unwrap(),
        sha256: p.fingerprint(),
        holder: p.id.clone(),
        issued_at: NOW,
        not_after: NOW + 3_600,
    };
    let store = w.store.clone();
    let trail = w.trail.clone();
    let (first, second) = (registered(&old, &old_pem), registered(&new, &new_pem));
    let done = tokio::task::spawn_blocking(move || {
        offline::register_issued(store.as_ref(), &first).unwrap();
        offline::register_issued(store.as_ref(), &second).unwrap();
        offline::replace_earlier(
            store.as_ref(),
            &trail,
            &customers(),
            &second,
            "certs-issue:ops",
            NOW,
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(done.locked.len(), 1);
    let lock = &done.locked[0].lock;
    assert_eq!(
        lock.expires_at,
        Some(NOW + 3_600),
        "until the old certificate expires"
    );
    assert!(lock.reason.contains("replaced by certificate"));
    assert_eq!(w.events("globex"), ["identity_locked"]);
    // This broker has not seen it yet; its refresh does, and cuts the old certificate's tunnel.
    w.tunnels.open(ALICE, "acme", old.thumbprint);
    w.tunnels.open(ALICE, "acme", new.thumbprint);
    assert!(w.locks.gate().admit(caller(&old), None).await.is_ok());
    w.locks.refresh().await.unwrap();
    assert!(w.locks.gate().admit(caller(&old), None).await.is_err());
    assert!(w.locks.gate().admit(caller(&new), None).await.is_ok());
    assert_eq!(
        w.tunnels.causes()[0],
        Some(format!("identity locked (lock {})", lock.id))
    );
    assert_eq!(w.tunnels.causes()[1], None);
    // The CRL now lists the replaced certificate, and a second refresh changes nothing.
    assert!(w.locks.crl().unwrap().pem().is_some());
    w.locks.refresh().await.unwrap();
    assert_eq!(w.locks.gate().view().len(), 1);
}
