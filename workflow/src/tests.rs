//! The workflow against real things: a SQLite file, an audit trail on disk, the customer's Cedar
//! policy from a configuration file, a real grant signer, and a hand-set clock. No HTTP, no
//! listener, no broker.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sallyport_audit::AuditWriter;
use sallyport_certs::grant::{GrantSigner, GrantVerifier, generate_signing_key_pem};
use sallyport_certs::identity::PeerIdentity;
use sallyport_config::Config;
use sallyport_ids::time::Clock;
use sallyport_store::{RequestStatus, Store};

use crate::limit::CallLimiter;
use crate::requests::Filing;
use crate::{Caller, Requests, WorkflowError};

const NOW: i64 = 1_767_261_600; // 2026-01-01T10:00:00Z

const POLICY: &str = r#"
@id("support") @approvals("2") @max_minutes("120")
permit (principal in Sallyport::Group::"support",
        action in [Sallyport::Action::"request", Sallyport::Action::"connect"],
        resource in Sallyport::Customer::"acme");
@id("instant") @approvals("0")
permit (principal in Sallyport::Group::"oncall", action == Sallyport::Action::"request",
        resource in Sallyport::Customer::"acme");
@id("approvers")
permit (principal is Sallyport::Approver in Sallyport::Customer::"acme",
        action == Sallyport::Action::"approve", resource in Sallyport::Customer::"acme");
"#;

struct World {
    _dir: tempfile::TempDir,
    config: Arc<Config>,
    audit: std::path::PathBuf,
    store: Arc<dyn Store>,
    requests: Requests,
    clock: Clock,
    /// Joins the writer thread when the world ends.
    _writer: AuditWriter,
    signer_pem: String,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.cedar"), POLICY).unwrap();
        let cfg = Config::parse(
            &dir.path().join("sallyport.toml"),
            "[server]\nlisten = \"127.0.0.1:0\"\n[requests]\npending_expiry_seconds = 600\n\
             [[customers]]\nid = \"acme\"\npolicy = \"acme.cedar\"\n\
             [[customers.targets]]\nid = \"db01\"\naddress = \"127.0.0.1:5432\"\n",
        )
        .unwrap();
        let audit = dir.path().join("audit");
        let (cx, store, writer) = crate::test_context(dir.path(), &["acme"], NOW);
        let clock = cx.clock.clone();
        let signer_pem = generate_signing_key_pem().unwrap();
        let signer = GrantSigner::from_pkcs8_pem(&signer_pem, "sallyport", "sallyport").unwrap();
        let config = Arc::new(cfg);
        let requests = Requests::new(
            cx.clone(),
            sallyport_config::SharedConfig::new((*config).clone()),
            Arc::new(signer),
            Arc::new(CallLimiter::new(60, 60)),
            crate::LockGate::new(Arc::new(crate::LockView::new()), cx),
        );
        World {
            _dir: dir,
            config,
            audit,
            store,
            requests,
            clock,
            _writer: writer,
            signer_pem,
        }
    }

    /// The configuration the requests run on.
    fn requests_config(&self) -> Arc<Config> {
        self.config.clone()
    }

    /// The records of `chain` so far, parsed.
    fn raw(&self, chain: &str) -> Vec<serde_json::Value> {
        let dir = sallyport_audit::segment::chain_dir(&self.audit, chain);
        sallyport_audit::segment::Reader::open(&dir, sallyport_audit::segment::Start::Oldest, None)
            .unwrap()
            .map(|l| serde_json::from_str(&l.unwrap().text).unwrap())
            .collect()
    }

    /// The records on acme's chain so far (each was durable before its call returned), as
    /// `(event, outcome)`.
    fn records(&self) -> Vec<(String, String)> {
        let dir = sallyport_audit::segment::chain_dir(&self.audit, "acme");
        let text: String = sallyport_audit::segment::Reader::open(
            &dir,
            sallyport_audit::segment::Start::Oldest,
            None,
        )
        .unwrap()
        .map(|l| l.unwrap().text + "\n")
        .collect();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["event"].as_str().unwrap().to_owned(),
                    v["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

fn peer(spiffe: &str, groups: &[&str]) -> PeerIdentity {
    PeerIdentity {
        id: spiffe.parse().unwrap(),
        groups: groups.iter().map(|g| g.parse().unwrap()).collect(),
        thumbprint: [9; 32],
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(NOW as u64 + 86_400),
        signin: None,
    }
}

fn caller(p: &PeerIdentity) -> Caller<'_> {
    Caller {
        peer: p,
        ip: "10.0.0.1".parse().unwrap(),
    }
}

fn filing(minutes: u32) -> Filing {
    Filing {
        customer: "acme".into(),
        target: "db01".into(),
        minutes,
        reason: "patch the database".into(),
        ticket: Some("CHG-7".into()),
        start_at: None,
    }
}

fn alice() -> PeerIdentity {
    peer(
        "spiffe://sallyport.local/technician/northwind/alice",
        &["support"],
    )
}

fn approver(name: &str) -> PeerIdentity {
    peer(
        &format!("spiffe://sallyport.local/approver/acme/{name}"),
        &[],
    )
}

async fn file(
    w: &World,
    who: &PeerIdentity,
    f: Filing,
) -> Result<sallyport_store::RequestRecord, WorkflowError> {
    let filer = w.requests.filer(caller(who)).await?;
    w.requests.file(filer, f).await
}

#[tokio::test]
async fn a_quorum_of_two_approvers_mints_a_grant_bound_to_the_filing_certificate() {
    let w = World::new();
    let a = alice();
    let rec = file(&w, &a, filing(60)).await.unwrap();
    assert_eq!(rec.status, RequestStatus::Pending);
    assert_eq!(rec.filed.approvals_required, 2);
    assert_eq!(rec.filed.expires_at, NOW + 600, "pending_expiry_seconds");
    let id = rec.filed.id.clone();

    let early = w.requests.grant(caller(&a), &id).await.unwrap_err();
    assert!(
        matches!(&early, WorkflowError::Conflict(m) if m.contains("2 more approval(s)")),
        "{early}"
    );
    let one = w
        .requests
        .approve(
            caller(&approver("bob")),
            &id,
            crate::terms::comment(Some("ok")).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(one.missing, 1);
    let again = w
        .requests
        .approve(caller(&approver("bob")), &id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&again, WorkflowError::Conflict(m) if m.contains("already approved")),
        "{again}"
    );
    w.clock.advance(30);
    let two = w
        .requests
        .approve(caller(&approver("carol")), &id, None)
        .await
        .unwrap();
    assert_eq!(
        (two.missing, two.request.status),
        (0, RequestStatus::Approved)
    );
    let g = two.request.grant.clone().unwrap();
    assert_eq!((g.not_before, g.expires_at), (NOW + 30, NOW + 30 + 3_600));
    assert!(
        w.store.grant(&g.id).unwrap().audited,
        "the approval is on the trail, so the grant may be handed out"
    );

    // Only the requester, with the certificate it filed with, gets the token.
    let other = approver("bob");
    let err = w.requests.grant(caller(&other), &id).await.unwrap_err();
    assert!(matches!(err, WorkflowError::Forbidden(_)), "{err}");
    let mut renewed = alice();
    renewed.thumbprint = [1; 32];
    let err = w.requests.grant(caller(&renewed), &id).await.unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Forbidden(m) if m.contains("another certificate")),
        "{err}"
    );
    let fetched = w.requests.grant(caller(&a), &id).await.unwrap();
    let verifier = GrantVerifier::new("sallyport", "sallyport", Duration::from_secs(30)).trust(
        GrantSigner::from_pkcs8_pem(&w.signer_pem, "sallyport", "sallyport")
            .unwrap()
            .public_key(),
    );
    // The window is in the manual clock's past, so verify the binding, not the time.
    let claims = verifier.signed_claims(&fetched.token).unwrap();
    assert!(claims.is_bound_to(&a.thumbprint));
    assert_eq!(claims.gid, fetched.grant_id);
    assert_eq!(claims.exp as i64, NOW + 30 + 3_600);

    let events: Vec<String> = w.records().into_iter().map(|(e, _)| e).collect();
    assert_eq!(
        events,
        [
            "request_filed",
            "approval_recorded",
            "request_approved",
            // The approver's and the other certificate's attempts on the grant.
            "access_refused",
            "access_refused",
            "grant_minted"
        ]
    );
}

#[tokio::test]
async fn the_policy_sets_the_terms_and_refusals_are_recorded() {
    let w = World::new();
    // Longer than the permitting policy's @max_minutes.
    let err = file(&w, &alice(), filing(121)).await.unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Forbidden(m) if m.contains("at most 120 minutes")),
        "{err}"
    );
    // No policy permits a technician outside the groups.
    let nobody = peer("spiffe://sallyport.local/technician/northwind/eve", &[]);
    assert!(matches!(
        file(&w, &nobody, filing(10)).await,
        Err(WorkflowError::Forbidden(_))
    ));
    // @approvals("0") approves at once.
    let oncall = peer(
        "spiffe://sallyport.local/technician/northwind/olga",
        &["oncall"],
    );
    let rec = file(&w, &oncall, filing(10)).await.unwrap();
    assert_eq!(rec.status, RequestStatus::Approved);
    let gid = rec.grant_id.unwrap();
    assert!(w.store.grant(&gid).unwrap().audited);
    // Only technicians file; bad values name their field.
    let err = w
        .requests
        .filer(caller(&approver("bob")))
        .await
        .unwrap_err();
    assert!(matches!(err, WorkflowError::Forbidden(_)));
    for (f, code) in [
        (filing(0), "bad_minutes"),
        (
            Filing {
                reason: " ".into(),
                ..filing(10)
            },
            "bad_reason",
        ),
        (
            Filing {
                start_at: Some("soon".into()),
                ..filing(10)
            },
            "bad_start_at",
        ),
    ] {
        let err = file(&w, &alice(), f).await.unwrap_err();
        assert!(
            matches!(&err, WorkflowError::Invalid { code: c, .. } if c == code),
            "{err}"
        );
    }
    let missing = file(
        &w,
        &alice(),
        Filing {
            target: "nope".into(),
            ..filing(10)
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(missing, WorkflowError::NotFound(_)));
    assert_eq!(
        w.records(),
        [
            ("request_filed".to_owned(), "deny".to_owned()),
            ("request_filed".into(), "deny".into()),
            ("request_filed".into(), "success".into()),
            ("request_approved".into(), "success".into()),
            // An approver trying to file.
            ("access_refused".into(), "deny".into()),
        ]
    );
}

#[tokio::test]
async fn undecided_requests_expire_by_the_clock_and_cannot_be_decided_after() {
    let w = World::new();
    let rec = file(&w, &alice(), filing(30)).await.unwrap();
    let id = rec.filed.id.clone();
    assert_eq!(w.requests.expire_due().await.unwrap(), 0);
    w.clock.advance(600);
    let late = w
        .requests
        .approve(caller(&approver("bob")), &id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&late, WorkflowError::Conflict(m) if m.contains("has expired")),
        "{late}"
    );
    assert_eq!(w.requests.expire_due().await.unwrap(), 1);
    assert_eq!(
        w.store.request(&rec.filed.id).unwrap().status,
        RequestStatus::Expired
    );
    assert_eq!(w.requests.expire_due().await.unwrap(), 0);
    let events: Vec<String> = w.records().into_iter().map(|(e, _)| e).collect();
    assert_eq!(events, ["request_filed", "request_expired"]);
}

#[tokio::test]
async fn tenants_are_walls_and_a_denial_ends_a_request() {
    let w = World::new();
    let rec = file(&w, &alice(), filing(30)).await.unwrap();
    let id = rec.filed.id.clone();
    let globex = peer("spiffe://sallyport.local/approver/globex/gus", &[]);
    let err = w.requests.visible(caller(&globex), &id).await.unwrap_err();
    assert_eq!(err, WorkflowError::NotFound(format!("no request `{id}`")));
    // The attempt is on acme's chain, naming who tried what; the answer stays a 404.
    let seen = w.raw("acme").pop().unwrap();
    assert_eq!(seen["event"], "access_refused");
    assert_eq!(
        seen["actor"],
        "spiffe://sallyport.local/approver/globex/gus"
    );
    assert_eq!(seen["request_id"], id.as_str());
    assert_eq!(
        seen["subject"],
        "spiffe://sallyport.local/technician/northwind/alice"
    );
    let why = seen["reason"].as_str().unwrap();
    assert!(
        why.contains("approver of customer `globex`") && why.contains("no request"),
        "{why}"
    );
    // globex has no chain here: its approver's own record is on `_broker`, told only the answer.
    let told = w.raw("_broker").pop().unwrap();
    assert_eq!(
        told["reason"],
        format!("read request `{id}`: refused: no request `{id}`")
    );
    assert!(told.get("subject").is_none(), "{told}");
    let bob_tech = peer(
        "spiffe://sallyport.local/technician/northwind/bob",
        &["support"],
    );
    assert!(w.requests.visible(caller(&bob_tech), &id).await.is_err());
    let err = crate::error::parse_id::<sallyport_ids::RequestId>("request", "not an id!");
    assert_eq!(
        err.unwrap_err(),
        WorkflowError::NotFound("no request `not an id!`".into())
    );
    let denied = w
        .requests
        .deny(
            caller(&approver("bob")),
            &id,
            crate::terms::deny_reason("not during the freeze").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(denied.status, RequestStatus::Denied);
    let err = w
        .requests
        .approve(caller(&approver("carol")), &id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Conflict(m) if m.contains("already denied")),
        "{err}"
    );
}

#[tokio::test]
async fn without_a_writable_trail_nothing_is_filed() {
    let w = World::new();
    // The chain's segment is /dev/full: every write fails, as on a full disk.
    let chain = sallyport_audit::segment::chain_dir(&w.audit, "acme");
    let today = sallyport_audit::segment::segment_path(
        &chain,
        sallyport_audit::segment::date_of(jiff::Timestamp::now()),
    );
    let _ = std::fs::remove_file(&today);
    std::os::unix::fs::symlink("/dev/full", &today).unwrap();
    let err = file(&w, &alice(), filing(30)).await.unwrap_err();
    assert_eq!(err, WorkflowError::AuditUnavailable);
    assert!(
        w.store.requests(None, None, None).unwrap().is_empty(),
        "a request never exists unrecorded"
    );
}

#[tokio::test]
async fn the_filer_cancels_a_pending_request_on_the_trail_first_and_nobody_decides_it_after() {
    let w = World::new();
    let a = alice();
    let rec = file(&w, &a, filing(60)).await.unwrap();
    let id = rec.filed.id.clone();
    // Approvers deny; they do not cancel. Another technician does not even see it.
    let err = w
        .requests
        .cancel(caller(&approver("bob")), &id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Forbidden(m) if m.contains("approvers deny")),
        "{err}"
    );
    let mallory = peer(
        "spiffe://sallyport.local/technician/northwind/mallory",
        &["support"],
    );
    let err = w
        .requests
        .cancel(caller(&mallory), &id, None)
        .await
        .unwrap_err();
    assert!(matches!(err, WorkflowError::NotFound(_)), "{err}");
    let done = w
        .requests
        .cancel(
            caller(&a),
            &id,
            crate::terms::cancel_reason(Some("fixed it myself")).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Cancelled);
    let cancelled = w
        .raw("acme")
        .into_iter()
        .find(|r| r["event"] == "request_cancelled")
        .unwrap();
    assert_eq!(cancelled["reason"], "fixed it myself");
    assert_eq!(cancelled["outcome"], "success");
    assert_eq!(cancelled["request_id"], id.as_str());
    let err = w
        .requests
        .approve(caller(&approver("bob")), &id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Conflict(m) if m.contains("was cancelled")),
        "{err}"
    );
    let err = w.requests.cancel(caller(&a), &id, None).await.unwrap_err();
    assert!(
        matches!(&err, WorkflowError::Conflict(m) if m.contains("already cancelled")),
        "{err}"
    );
    let listed = w
        .requests
        .list(caller(&a), Some("cancelled"), None)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[test]
fn a_technician_may_ask_for_what_the_policy_would_let_them_file() {
    let w = World::new();
    let now = jiff::Timestamp::from_second(NOW).unwrap();
    let ip = "10.0.0.1".parse().unwrap();
    let cfg = &w.requests_config();
    let listed = crate::targets::requestable(cfg, &alice(), ip, now);
    assert_eq!(listed.len(), 1);
    let t = &listed[0];
    assert_eq!((t.customer.as_str(), t.target.as_str()), ("acme", "db01"));
    assert_eq!(
        (t.port, t.max_minutes, t.approvals),
        (5432, Some(120), Some(2))
    );
    assert_eq!(t.policy_ids, ["support"]);
    // Another group is permitted by another policy, with other terms; no group, nothing.
    let oncall = peer(
        "spiffe://sallyport.local/technician/northwind/olga",
        &["oncall"],
    );
    let listed = crate::targets::requestable(cfg, &oncall, ip, now);
    assert_eq!(listed[0].approvals, Some(0));
    let nobody = peer("spiffe://sallyport.local/technician/northwind/nina", &[]);
    assert!(crate::targets::requestable(cfg, &nobody, ip, now).is_empty());
    // Approvers and auditors see their customer's targets, without terms; another customer's
    // approver sees nothing.
    let listed = crate::targets::requestable(cfg, &approver("bob"), ip, now);
    assert_eq!((listed.len(), listed[0].max_minutes), (1, None));
    let other = peer("spiffe://sallyport.local/auditor/globex/gina", &[]);
    assert!(crate::targets::requestable(cfg, &other, ip, now).is_empty());
}
