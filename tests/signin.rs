//! Sign-in through identity providers, end to end, against two real OpenID providers
//! (`oidc-provider` from npm, `tests/oidc/idp.mjs`): the provider's, where technicians sign in, and
//! acme's own, where acme's approvers sign in and sign every approval and denial. A technician logs
//! in with the real `sallyport login` and tunnels under a policy that requires MFA; an acme approver
//! logs in at acme's IdP and approves with `sallyport approve`, the approval's ID token lands on
//! acme's trail and `audit verify --idp-keys` passes with acme's keys and fails with the provider
//! IdP's; tokens from the wrong IdP, for another request, expired, without the approver group or
//! without MFA are each refused and recorded; provider-CA approvers of acme are refused.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sallyport_audit::{Decision, decision_nonce};
use sallyport_certs::identity_dir::IdentityDir;
use sallyport_testkit::idp::{Browsed, Idp, browse};
use sallyport_testkit::{
    Broker, CustomerSpec, Setup, connect, connector, echo_server, peer_of, support_with_approvals,
    valid_for,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// The provider's IdP client, and acme's.
const PROVIDER_CLIENT: (&str, &str) = ("sallyport", "provider-client-secret");
const ACME_CLIENT: (&str, &str) = ("sallyport-at-acme", "acme-client-secret");

struct World {
    s: Setup,
    broker: Broker,
    provider: Idp,
    acme: Idp,
}

impl World {
    fn web(&self) -> SocketAddr {
        self.broker
            .web
            .unwrap_or_else(|| panic!("the broker printed no sign-in address"))
    }

    fn ca(&self) -> PathBuf {
        self.s.root.join("pki/ca.pem")
    }
}

/// A broker with sign-in at both IdPs; acme needs one approval, MFA for approvers, and MFA for
/// every tunnel (context.mfa).
fn world() -> World {
    let provider = Idp::start(PROVIDER_CLIENT.0, Some(PROVIDER_CLIENT.1), "groups");
    let acme = Idp::start(ACME_CLIENT.0, Some(ACME_CLIENT.1), "groups");
    let s = Setup::init(BIN);
    let policy = format!(
        "{}@id(\"mfa-for-tunnels\")\nforbid (principal, action == Sallyport::Action::\"connect\", resource) unless {{ context.mfa }};\n",
        support_with_approvals("acme", 1)
    );
    s.write_config(
        &[CustomerSpec {
            id: "acme",
            timezone: "UTC",
            policy: &policy,
            targets: vec![("db01", echo_server().to_string(), vec!["prod"])],
        }],
        "",
    );
    std::fs::write(s.root.join("provider-secret"), PROVIDER_CLIENT.1).unwrap();
    std::fs::write(s.root.join("acme-secret"), ACME_CLIENT.1).unwrap();
    s.append_config(&format!(
        "[customers.oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"acme-secret\"\n\
         approver_groups = [\"acme-approvers\"]\nauditor_groups = [\"acme-auditors\"]\nrequire_mfa = true\n\
         \n[web]\nlisten = \"127.0.0.1:0\"\n\
         \n[provider.oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"provider-secret\"\n\
         provider = \"northwind\"\nadmin_groups = [\"ops\"]\ncert_hours = 2\n",
        acme.issuer(),
        ACME_CLIENT.0,
        provider.issuer(),
        PROVIDER_CLIENT.0,
    ));
    let broker = Broker::start(&s);
    World {
        s,
        broker,
        provider,
        acme,
    }
}

/// What a CLI command that opens a sign-in ended with: the page the browser showed, the
/// command's success and output.
struct SignedIn {
    page: Browsed,
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `sallyport ARGS --no-browser`, follows the sign-in URL it prints with the headless
/// browser (trusting the broker CA), and waits for the command to end.
fn through_browser(w: &World, args: &[&str]) -> SignedIn {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--no-browser")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let url = loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let done = child.wait_with_output().unwrap();
            panic!(
                "no sign-in URL printed: {printed}{}",
                String::from_utf8_lossy(&done.stderr)
            );
        }
        printed.push_str(&line);
        if let Some(u) = line.trim().strip_prefix("http") {
            break format!("http{u}");
        }
    };
    let page = browse(&url, Some(&w.ca()), None);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let done = child.wait_with_output().unwrap();
    SignedIn {
        page,
        ok: done.status.success(),
        stdout: printed + &rest,
        stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
    }
}

/// `sallyport login` into `out` (EXTRA: `--customer acme`, ...).
fn login(w: &World, out: &Path, extra: &[&str]) -> SignedIn {
    let web = w.web().to_string();
    let mut args = vec!["login", "--broker", &web, "--out", out.to_str().unwrap()];
    let ca = w.ca();
    args.extend(["--ca", ca.to_str().unwrap()]);
    args.extend(extra);
    through_browser(w, &args)
}

fn alice() -> Value {
    json!({"sub": "u-1001", "preferred_username": "alice", "name": "Alice",
           "groups": ["support"], "amr": ["pwd", "otp"]})
}

fn bob() -> Value {
    json!({"sub": "acme-77", "preferred_username": "bob", "name": "Bob",
           "groups": ["acme-approvers"], "amr": ["pwd", "hwk"]})
}

/// Files a request as `identity`; returns its id.
fn file(w: &World, identity: &Path) -> String {
    let filed = w.s.cli(
        identity,
        w.broker.addr,
        &[
            "request",
            "acme/db01",
            "--minutes",
            "30",
            "--reason",
            "patching",
        ],
    );
    filed.out().trim().to_owned()
}

/// The `filed_hash` of request `id` (`GET /v1/requests/{id}`), which a decision's nonce commits to.
fn filed_hash(w: &World, identity: &Path, id: &str) -> String {
    let (status, body) = api_get(w, identity, &format!("/v1/requests/{id}"));
    assert_eq!(status, 200, "{body}");
    body["filed_hash"].as_str().unwrap().to_owned()
}

/// One `/v1` call as `identity`.
fn api(w: &World, identity: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let id = IdentityDir::read(identity).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    );
    let a = rt
        .block_on(sallyport_testkit::request(
            w.broker.addr,
            &sallyport_testkit::connector(&id),
            &head,
        ))
        .unwrap();
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(Value::Null),
    )
}

fn api_get(w: &World, identity: &Path, path: &str) -> (u16, Value) {
    api(w, identity, "GET", path, None)
}

#[test]
fn technicians_and_approvers_sign_in_and_approvals_are_signed_by_the_customers_idp() {
    let w = world();
    let people = w.s.root.join("people");

    // A technician signs in at the provider's IdP with MFA: a certificate for a key made here.
    w.provider.next(alice());
    let alice_dir = people.join("alice");
    let done = login(&w, &alice_dir, &[]);
    assert!(done.ok, "{}{}", done.stdout, done.stderr);
    assert_eq!(done.page.status, 200, "{:?}", done.page);
    assert!(done.page.body.contains("Signed in"), "{}", done.page.body);
    assert!(
        done.stdout
            .contains("signed in as spiffe://sallyport.local/technician/northwind/alice")
    );
    let alice_id = IdentityDir::read(&alice_dir).unwrap();
    assert_eq!(
        alice_id.broker,
        format!("localhost:{}", w.broker.addr.port()),
        "{alice_id:?}"
    );
    let peer = peer_of(&alice_id);
    assert_eq!(
        peer.id.to_string(),
        "spiffe://sallyport.local/technician/northwind/alice"
    );
    assert_eq!(
        peer.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        ["support"]
    );
    let signin = peer.signin.clone().unwrap();
    assert_eq!(signin.issuer, w.provider.issuer());
    assert_eq!(signin.subject, "u-1001");
    assert!(signin.mfa);
    assert_eq!(signin.amr, ["pwd", "otp"]);
    let life = peer
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!(
        life <= 2 * 3600 && life > 2 * 3600 - 120,
        "cert_hours = 2: {life} s"
    );
    // The key never left: the folder's key is the certificate's.
    assert!(alice_id.key_pem.contains("PRIVATE KEY"));
    let signed_in = w.s.wait_for_audit("_broker", |r| r["event"] == "signed_in");
    assert_eq!(signed_in["actor"], peer.id.to_string());
    assert_eq!(signed_in["idp"]["issuer"], w.provider.issuer());
    assert_eq!(signed_in["idp"]["subject"], "u-1001");
    assert_eq!(signed_in["idp"]["amr"], json!(["pwd", "otp"]));
    assert_eq!(signed_in["idp"]["mfa"], true);
    assert!(signed_in["cert_serial"].is_string() && signed_in["expires_at"].is_string());
    assert!(signed_in["idp"].get("token").is_none(), "{signed_in}");

    // An acme approver signs in at acme's own IdP.
    w.acme.next(bob());
    let bob_dir = people.join("bob");
    let done = login(&w, &bob_dir, &["--customer", "acme"]);
    assert!(done.ok, "{}{}", done.stdout, done.stderr);
    let bob_peer = peer_of(&IdentityDir::read(&bob_dir).unwrap());
    assert_eq!(
        bob_peer.id.to_string(),
        "spiffe://sallyport.local/approver/acme/bob"
    );
    assert_eq!(bob_peer.signin.as_ref().unwrap().issuer, w.acme.issuer());
    w.s.wait_for_audit("acme", |r| {
        r["event"] == "signed_in" && r["actor"] == bob_peer.id.to_string()
    });

    // Alice asks; Bob approves through a fresh sign-in at acme's IdP.
    let id = file(&w, &alice_dir);
    assert!(id.starts_with("r-"), "{id}");
    w.acme.next(bob());
    let addr = w.broker.addr.to_string();
    let done = through_browser(
        &w,
        &[
            "approve",
            &id,
            "--comment",
            "ok for the patch",
            "--identity",
            bob_dir.to_str().unwrap(),
            "--broker",
            &addr,
        ],
    );
    assert!(done.ok, "{}{}", done.stdout, done.stderr);
    assert!(done.page.body.contains("Approved"), "{}", done.page.body);
    assert!(done.stdout.contains("granted"), "{}", done.stdout);
    let approved = w.s.wait_for_audit("acme", |r| {
        r["event"] == "request_approved" && r["request_id"] == id.as_str()
    });
    let idp = &approved["idp"];
    assert_eq!(idp["issuer"], w.acme.issuer(), "{approved}");
    assert_eq!(idp["subject"], "acme-77");
    assert_eq!(idp["name"], "bob");
    assert_eq!(idp["groups"], json!(["acme-approvers"]));
    assert_eq!(idp["amr"], json!(["pwd", "hwk"]));
    assert_eq!(idp["audience"], ACME_CLIENT.0);
    let token = idp["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert_eq!(approved["comment"], "ok for the patch");

    // Alice's MFA sign-in lets her tunnel under the policy that requires MFA; bytes flow.
    let (status, grant) = api_get(&w, &alice_dir, &format!("/v1/requests/{id}/grant"));
    assert_eq!(status, 200, "{grant}");
    let token = grant["token"].as_str().unwrap().to_owned();
    let port = u16::try_from(grant["port"].as_u64().unwrap()).unwrap();
    let authority = format!("db01.acme:{port}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut tunnel = rt
        .block_on(connect(
            w.broker.addr,
            &connector(&alice_id),
            &authority,
            Some(&token),
        ))
        .unwrap();
    assert_eq!(tunnel.status, 200, "{}", tunnel.body);
    rt.block_on(async {
        tunnel.stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tunnel.stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
    });
    let open = w.s.wait_for_audit("acme", |r| r["event"] == "tunnel_open");
    assert_eq!(open["actor"], peer.id.to_string());
    // A technician whose certificate `certs issue` made (no sign-in, so no MFA) is refused by
    // acme's policy, grant or not.
    let hand_made = w.s.technician("carol", &["support"], valid_for(600));
    let now = std::time::SystemTime::now();
    let minted = w.s.mint(
        &hand_made,
        "acme",
        "db01",
        port,
        now,
        now + std::time::Duration::from_secs(600),
    );
    let refused = rt
        .block_on(connect(
            w.broker.addr,
            &connector(&hand_made),
            &authority,
            Some(&minted),
        ))
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    w.s.wait_for_audit("acme", |r| {
        r["event"] == "decision"
            && r["outcome"] == "deny"
            && r["policy_ids"] == json!(["mfa-for-tunnels"])
    });

    // Anyone with acme's IdP keys checks the approval; the provider IdP's keys do not.
    let data = w.s.root.join("data");
    let acme_keys = w.s.root.join("acme-jwks.json");
    std::fs::write(&acme_keys, w.acme.jwks()).unwrap();
    let provider_keys = w.s.root.join("provider-jwks.json");
    std::fs::write(&provider_keys, w.provider.jwks()).unwrap();
    let verify = |keys: &Path| {
        let out = Command::new(BIN)
            .args(["audit", "verify", "--data"])
            .arg(&data)
            .arg("--idp-keys")
            .arg(format!("acme={}", keys.display()))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = verify(&acme_keys);
    assert!(ok, "{out}");
    assert!(
        out.contains("acme: every approval and denial signed by its identity provider: 1 checked"),
        "{out}"
    );
    let (ok, out) = verify(&provider_keys);
    assert!(!ok, "{out}");
    assert!(out.contains("does not check"), "{out}");

    // Sign-ins reach SIEMs as OCSF Authentication events, with whether they used MFA.
    for chain in ["_broker", "acme"] {
        let events = w.s.ocsf_export(chain);
        let logon = events
            .iter()
            .find(|e| {
                e["unmapped"]["event"] == "signed_in" || e["metadata"]["event_code"] == "signed_in"
            })
            .unwrap_or_else(|| panic!("no signed_in in {chain}"));
        assert_eq!(logon["class_uid"], 3002, "{logon}");
        assert_eq!(logon["is_mfa"], true, "{logon}");
        assert_eq!(logon["auth_protocol"], "OpenID Connect");
    }
}

#[test]
fn forged_stale_and_unfit_approval_tokens_are_refused_and_recorded() {
    let mut w = world();
    let people = w.s.root.join("people");
    w.provider.next(alice());
    let alice_dir = people.join("alice");
    assert!(login(&w, &alice_dir, &[]).ok);
    w.acme.next(bob());
    let bob_dir = people.join("bob");
    assert!(login(&w, &bob_dir, &["--customer", "acme"]).ok);
    let id = file(&w, &alice_dir);
    let other = file(&w, &alice_dir);
    let nonce = decision_nonce(&filed_hash(&w, &bob_dir, &id), Decision::Approve, "go");
    let other_nonce = decision_nonce(&filed_hash(&w, &bob_dir, &other), Decision::Approve, "go");

    let cases: Vec<(&str, String, &str)> = vec![
        // The provider's own IdP signs for the provider, never for acme.
        (
            "provider IdP",
            {
                w.provider
                    .next(json!({"sub": "acme-77", "preferred_username": "bob",
                                   "groups": ["acme-approvers"], "amr": ["pwd", "otp"]}));
                w.provider
                    .id_token(PROVIDER_CLIENT.0, PROVIDER_CLIENT.1, &nonce)
            },
            "key",
        ),
        (
            "another request",
            {
                w.acme.next(bob());
                w.acme.id_token(ACME_CLIENT.0, ACME_CLIENT.1, &other_nonce)
            },
            "nonce",
        ),
        (
            "expired",
            {
                let mut old = bob();
                old["clock_offset_s"] = json!(-7200);
                w.acme.next(old);
                w.acme.id_token(ACME_CLIENT.0, ACME_CLIENT.1, &nonce)
            },
            "expired",
        ),
        (
            "no approver group",
            {
                let mut outsider = bob();
                outsider["groups"] = json!(["acme-staff"]);
                w.acme.next(outsider);
                w.acme.id_token(ACME_CLIENT.0, ACME_CLIENT.1, &nonce)
            },
            "approver group",
        ),
        (
            "no MFA",
            {
                let mut weak = bob();
                weak["amr"] = json!(["pwd"]);
                w.acme.next(weak);
                w.acme.id_token(ACME_CLIENT.0, ACME_CLIENT.1, &nonce)
            },
            "multi-factor",
        ),
    ];
    for (what, token, needle) in &cases {
        let (status, body) = api(
            &w,
            &bob_dir,
            "POST",
            &format!("/v1/requests/{id}/approve"),
            Some(json!({"comment": "go", "id_token": token})),
        );
        assert_eq!(status, 403, "{what}: {body}");
        assert_eq!(body["error"]["code"], "idp_refused", "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
        // Recorded, and nothing was let through.
        w.s.wait_for_audit("acme", |r| {
            r["event"] == "approval_recorded"
                && r["outcome"] == "deny"
                && r["request_id"] == id.as_str()
                && r["reason"].as_str().is_some_and(|m| m.contains(needle))
        });
        let (_, shown) = api_get(&w, &bob_dir, &format!("/v1/requests/{id}"));
        assert_eq!(shown["status"], "pending", "{what}: {shown}");
    }
    // The right token for this request, decision and comment is taken.
    w.acme.next(bob());
    let good = w.acme.id_token(ACME_CLIENT.0, ACME_CLIENT.1, &nonce);
    // With another comment than the one it was signed for, it is refused too.
    let (status, body) = api(
        &w,
        &bob_dir,
        "POST",
        &format!("/v1/requests/{id}/approve"),
        Some(json!({"comment": "something else", "id_token": good})),
    );
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("idp_refused")),
        "{body}"
    );
    let (status, body) = api(
        &w,
        &bob_dir,
        "POST",
        &format!("/v1/requests/{id}/approve"),
        Some(json!({"comment": "go", "id_token": good})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "approved");

    // A decision without a signature is not taken: the API answers with the sign-in instead.
    let third = file(&w, &alice_dir);
    let (status, body) = api(
        &w,
        &bob_dir,
        "POST",
        &format!("/v1/requests/{third}/deny"),
        Some(json!({"reason": "no"})),
    );
    assert_eq!(status, 202, "{body}");
    let url = body["signin"]["url"].as_str().unwrap();
    assert!(url.starts_with(w.acme.issuer()), "{url}");
    assert!(
        url.contains("prompt=login") && url.contains("max_age=0"),
        "{url}"
    );
    let signin = body["signin"]["id"].as_str().unwrap();
    let (_, shown) = api_get(&w, &bob_dir, &format!("/v1/requests/{third}"));
    assert_eq!(shown["status"], "pending");
    // Only its starter follows the sign-in.
    let (status, _) = api_get(&w, &alice_dir, &format!("/v1/signins/{signin}"));
    assert_eq!(status, 404);
    let (status, body) = api_get(&w, &bob_dir, &format!("/v1/signins/{signin}"));
    assert_eq!(
        (status, body["status"].clone()),
        (202, json!("pending")),
        "{body}"
    );
    // Bob signs in at acme's IdP: the denial is taken, with its token on the trail.
    w.acme.next(bob());
    let page = browse(url, Some(&w.ca()), None);
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("Denied"), "{}", page.body);
    let (status, body) = api_get(&w, &bob_dir, &format!("/v1/signins/{signin}?wait=5"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["request"]["status"], "denied");
    let denied = w.s.wait_for_audit("acme", |r| {
        r["event"] == "request_denied" && r["outcome"] == "success"
    });
    assert_eq!(denied["reason"], "no");
    assert!(denied["idp"]["token"].is_string(), "{denied}");
    // The same callback again does nothing: a sign-in's state is good once.
    let again = browse(&page.url, Some(&w.ca()), None);
    assert_eq!(again.status, 403, "{again:?}");
    assert!(again.body.contains("not found"), "{}", again.body);

    // Both signed decisions check with acme's keys, on the chain and in the evidence bundle; the
    // refused attempts are counted, never taken for decisions.
    let keys = w.s.root.join("acme-jwks.json");
    std::fs::write(&keys, w.acme.jwks()).unwrap();
    let idp_keys = format!("acme={}", keys.display());
    let out = Command::new(BIN)
        .args(["audit", "verify", "--data"])
        .arg(w.s.root.join("data"))
        .args(["--idp-keys", &idp_keys])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("2 checked (6 refused attempts recorded)"),
        "{text}"
    );
    // The broker's last checkpoint, at shutdown, covers every record.
    assert!(w.broker.terminate().success());
    let bundle = w.s.root.join("bundle.json");
    let made = Command::new(BIN)
        .args(["audit", "bundle", "--request", &id, "--out"])
        .arg(&bundle)
        .arg("--data")
        .arg(w.s.root.join("data"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = Command::new(BIN)
        .args(["audit", "verify", "--bundle"])
        .arg(&bundle)
        .args(["--trust-bundle-key", "--idp-keys", &idp_keys])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("acme: every approval and denial signed"),
        "{text}"
    );
}

#[test]
fn provider_ca_approvers_of_a_customer_with_its_own_idp_are_refused() {
    let w = world();
    // `init`'s demo approver of acme comes from the provider's CA: refused, and recorded.
    let demo = w.s.root.join("identities/approver");
    let (status, body) = api_get(&w, &demo, "/v1/requests");
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sallyport login --customer acme"),
        "{message}"
    );
    w.s.wait_for_audit("acme", |r| {
        r["event"] == "access_refused"
            && r["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("spiffe://sallyport.local/approver/acme/"))
    });
    // And `certs issue` makes none.
    let out = Command::new(BIN)
        .args([
            "certs",
            "issue",
            "approver",
            "mallory",
            "--customer",
            "acme",
            "--dir",
        ])
        .arg(&w.s.root)
        .arg("--out")
        .arg(w.s.root.join("people/mallory"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has its own identity provider"), "{err}");
    assert!(!w.s.root.join("people/mallory").exists());

    // A sign-in at acme's IdP by someone in no acme group gives no certificate, and is recorded.
    w.acme.next(json!({"sub": "x-1", "preferred_username": "eve", "groups": ["staff"], "amr": ["pwd", "otp"]}));
    let eve = w.s.root.join("people/eve");
    let done = login(&w, &eve, &["--customer", "acme"]);
    assert!(!done.ok, "{}", done.stdout);
    assert_eq!(done.page.status, 403, "{:?}", done.page);
    assert!(done.stderr.contains("not a member"), "{}", done.stderr);
    assert!(!eve.join("cert.pem").exists());
    w.s.wait_for_audit("acme", |r| {
        r["event"] == "signin_failed" && r["idp"]["subject"] == "x-1"
    });
}

#[test]
fn bad_sign_in_requests_get_clear_errors_and_issue_nothing() {
    let w = world();
    let ca = std::fs::read_to_string(w.ca()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let post = |path: &str, body: &str| {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let a = rt
            .block_on(sallyport_testkit::request(
                w.web(),
                &sallyport_testkit::anonymous_connector(&ca),
                &head,
            ))
            .unwrap();
        let v: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
        (
            a.status,
            v["error"]["code"].as_str().unwrap_or("").to_owned(),
            a.body,
        )
    };
    for (path, body, status, code) in [
        ("/login", r#"{"csr":"not a csr"}"#, 400, "bad_csr"),
        ("/login", "{not json", 400, "bad_json"),
        ("/login", r#"{"csr":"x","extra":1}"#, 400, "bad_json"),
        (
            "/login",
            r#"{"csr":"-----BEGIN CERTIFICATE REQUEST-----","role":"root"}"#,
            400,
            "bad_role",
        ),
        (
            "/login",
            r#"{"csr":"-----BEGIN CERTIFICATE REQUEST-----","customer":"globex"}"#,
            404,
            "not_found",
        ),
        (
            "/login/nope/wait",
            r#"{"secret":"guess"}"#,
            404,
            "not_found",
        ),
    ] {
        let (got, got_code, text) = post(path, body);
        assert_eq!(
            (got, got_code.as_str()),
            (status, code),
            "{path} {body}: {text}"
        );
    }
    // A started login is only followed with its secret.
    let csr = rcgen_csr();
    let (status, _, text) = post("/login", &json!({ "csr": csr }).to_string());
    assert_eq!(status, 200, "{text}");
    let started: Value = serde_json::from_str(&text).unwrap();
    let id = started["id"].as_str().unwrap();
    let (status, code, _) = post(&format!("/login/{id}/wait"), r#"{"secret":"wrong"}"#);
    assert_eq!((status, code.as_str()), (404, "not_found"));
    // Nothing was issued: no sign-in on any trail.
    assert!(
        w.s.audit("_broker")
            .iter()
            .all(|r| r["event"] != "signed_in")
    );
}

/// A real certificate signing request, made the way `sallyport login` makes one.
fn rcgen_csr() -> String {
    sallyport_client::login::key_and_request().unwrap().csr_pem
}
