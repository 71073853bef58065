//! Every way a tunnel is refused: each case gets its status and an audit record, and no byte reaches
//! the target. Real broker binary, real TLS on loopback, certificates from our own PKI code.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sallyport_certs::pki::{CertificateAuthority, Validity};
use sallyport_testkit::{
    Broker, CustomerSpec, Setup, allow_support, anonymous_connector, closed_port, connect,
    connector, echo_server, technician_from, valid_for,
};
use tokio::io::AsyncReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// acme (db + down + other), globex (policy that only opens twelve hours from now).
fn setup() -> (Setup, Broker) {
    let s = Setup::init(BIN);
    let echo = echo_server();
    let now_hour = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap())
        .hour();
    let closed_hour = (now_hour + 12) % 24;
    let globex_policy = format!(
        "@id(\"night-shift-only\")\npermit(principal in Sallyport::Group::\"support\", action == Sallyport::Action::\"connect\", resource in Sallyport::Customer::\"globex\") when {{ context.hour == {closed_hour} }};\n"
    );
    s.write_config(
        &[
            CustomerSpec {
                id: "acme",
                timezone: "Europe/Berlin",
                policy: &allow_support("acme"),
                targets: vec![
                    ("db01", echo.to_string(), vec!["prod"]),
                    ("other", echo.to_string(), vec![]),
                    ("down", closed_port().to_string(), vec![]),
                ],
            },
            CustomerSpec {
                id: "globex",
                timezone: "Asia/Tokyo",
                policy: &globex_policy,
                targets: vec![("db01", echo.to_string(), vec![])],
            },
        ],
        "",
    );
    let b = Broker::start(&s);
    (s, b)
}

fn window() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (now - Duration::from_secs(5), now + Duration::from_secs(600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals_are_audited_on_the_broker_chain() {
    let (s, b) = setup();
    let tech = s.identity("technician");

    // No client certificate.
    let anon = anonymous_connector(&tech.ca_pem);
    let r = connect(b.addr, &anon, "db01.acme:1", None).await;
    assert!(r.is_err(), "a client without a certificate got an answer");
    s.wait_for_audit("_broker", |r| {
        r["event"] == "auth_failure" && r["reason"].as_str().unwrap().contains("no certificate")
    });

    // A certificate from another CA.
    let other_ca = CertificateAuthority::generate(&"sallyport.local".parse().unwrap()).unwrap();
    let mut stranger = technician_from(
        &other_ca,
        &s.root.join("stranger"),
        "mallory",
        &["support"],
        valid_for(3600),
    );
    stranger.ca_pem = tech.ca_pem.clone();
    let r = connect(b.addr, &connector(&stranger), "db01.acme:1", None).await;
    assert!(r.is_err());
    s.wait_for_audit("_broker", |r| {
        // Same CA name, other key: rustls reports a bad signature (or an unknown issuer).
        let reason = r["reason"].as_str().unwrap();
        reason.contains("BadSignature") || reason.contains("UnknownIssuer")
    });

    // An expired certificate from the right CA.
    let now = SystemTime::now();
    let expired = s.technician(
        "old",
        &["support"],
        Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        },
    );
    let r = connect(b.addr, &connector(&expired), "db01.acme:1", None).await;
    assert!(r.is_err());
    s.wait_for_audit("_broker", |r| {
        r["reason"]
            .as_str()
            .unwrap()
            .contains("certificate expired")
    });
    for rec in s.audit("_broker") {
        assert_eq!(rec["outcome"], "deny");
        assert_eq!(rec["source_ip"], "127.0.0.1");
    }
    assert!(
        s.audit("acme")
            .iter()
            .all(|r| r["event"] == "policy_loaded"),
        "no customer chain entry for unauthenticated peers"
    );
}

struct Case {
    name: &'static str,
    authority: String,
    grant: Option<String>,
    status: u16,
    chain: &'static str,
    reason: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_and_routing_refusals_have_their_status_and_record() {
    let (s, b) = setup();
    let alice = s.identity("technician");
    let bob = s.technician("bob", &["support"], valid_for(3600));
    let (nbf, exp) = window();
    let echo_port = |c: &str, t: &str| -> u16 {
        let cfg = std::fs::read_to_string(s.config()).unwrap();
        let _ = (c, t);
        // All echo targets share one address; read it from the config.
        cfg.lines()
            .find(|l| l.starts_with("address"))
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('"')
            .parse()
            .unwrap()
    };
    let port = echo_port("acme", "db01");
    let good = s.mint(&alice, "acme", "db01", port, nbf, exp);
    let signer = s.signer();

    // Forged: same header and claims, signature by another key.
    let other_key = sallyport_certs::grant::generate_signing_key_pem().unwrap();
    let other =
        sallyport_certs::grant::GrantSigner::from_pkcs8_pem(&other_key, "sallyport", "sallyport")
            .unwrap();
    let forged_src = {
        let peer = sallyport_testkit::peer_of(&alice);
        other
            .mint(&sallyport_certs::grant::GrantSpec {
                sub: peer.id,
                customer: "acme".parse().unwrap(),
                target: "db01".parse().unwrap(),
                port,
                gid: "g-forged".parse().unwrap(),
                not_before: nbf,
                expires_at: exp,
                cert_thumbprint: peer.thumbprint,
            })
            .unwrap()
            .0
    };
    let good_parts: Vec<&str> = good.split('.').collect();
    let forged_sig = forged_src.split('.').nth(2).unwrap();
    let forged = format!("{}.{}.{}", good_parts[0], good_parts[1], forged_sig);

    let header = |alg: &str| {
        B64.encode(format!(
            r#"{{"typ":"sallyport-grant+jwt","alg":"{alg}","kid":"{}"}}"#,
            signer.kid()
        ))
    };
    let alg_none = format!("{}.{}.", header("none"), good_parts[1]);
    let hs256 = {
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(good_parts[1]).unwrap()).unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.typ = Some("sallyport-grant+jwt".into());
        h.kid = Some(signer.kid().into());
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(signer.public_key()),
        )
        .unwrap()
    };
    let expired = s.mint(
        &alice,
        "acme",
        "db01",
        port,
        nbf - Duration::from_secs(7200),
        SystemTime::now() - Duration::from_secs(120),
    );
    let future = s.mint(
        &alice,
        "acme",
        "db01",
        port,
        SystemTime::now() + Duration::from_secs(600),
        SystemTime::now() + Duration::from_secs(1200),
    );
    let just_expired = s.mint(
        &alice,
        "acme",
        "db01",
        port,
        nbf - Duration::from_secs(600),
        SystemTime::now() - Duration::from_secs(5),
    );
    let wrong_port_claim = s.mint(&alice, "acme", "db01", port.wrapping_add(1), nbf, exp);
    let for_other = s.mint(&alice, "acme", "other", port, nbf, exp);
    let globex = s.mint(&alice, "globex", "db01", port, nbf, exp);
    let down_port: u16 = std::fs::read_to_string(s.config())
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("address"))
        .nth(2)
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('"')
        .parse()
        .unwrap();
    let down = s.mint(&alice, "acme", "down", down_port, nbf, exp);

    let db01 = format!("db01.acme:{port}");
    let cases = vec![
        Case {
            name: "no grant",
            authority: db01.clone(),
            grant: None,
            status: 407,
            chain: "_broker",
            reason: "missing grant",
        },
        Case {
            name: "forged signature",
            authority: db01.clone(),
            grant: Some(forged),
            status: 407,
            chain: "_broker",
            reason: "signature is invalid",
        },
        Case {
            name: "alg none",
            authority: db01.clone(),
            grant: Some(alg_none),
            status: 407,
            chain: "_broker",
            reason: "malformed grant",
        },
        Case {
            name: "HS256 with the public key",
            authority: db01.clone(),
            grant: Some(hs256),
            status: 407,
            chain: "_broker",
            reason: "not accepted",
        },
        Case {
            name: "garbage",
            authority: db01.clone(),
            grant: Some("not.a.jwt".into()),
            status: 407,
            chain: "_broker",
            reason: "malformed grant",
        },
        Case {
            name: "expired grant",
            authority: db01.clone(),
            grant: Some(expired),
            status: 407,
            chain: "acme",
            reason: "grant has expired",
        },
        Case {
            name: "not yet valid",
            authority: db01.clone(),
            grant: Some(future),
            status: 407,
            chain: "acme",
            reason: "not yet valid",
        },
        Case {
            name: "expired within the leeway",
            authority: db01.clone(),
            grant: Some(just_expired),
            status: 407,
            chain: "acme",
            reason: "grant has expired",
        },
        Case {
            name: "grant names another port",
            authority: db01.clone(),
            grant: Some(wrong_port_claim),
            status: 403,
            chain: "acme",
            reason: "is reached on port",
        },
        Case {
            name: "grant for T used for U",
            authority: db01.clone(),
            grant: Some(for_other),
            status: 403,
            chain: "acme",
            reason: "grant is for target `other`, not `db01`",
        },
        Case {
            name: "another customer's target",
            authority: format!("db01.globex:{port}"),
            grant: Some(good.clone()),
            status: 403,
            chain: "acme",
            reason: "grant is for customer `acme`, not `globex`",
        },
        Case {
            name: "wrong port",
            authority: "db01.acme:1".into(),
            grant: Some(good.clone()),
            status: 403,
            chain: "acme",
            reason: "is reached on port",
        },
        Case {
            name: "unknown target",
            authority: format!("nope.acme:{port}"),
            grant: Some(good.clone()),
            status: 404,
            chain: "acme",
            reason: "has no target `nope`",
        },
        Case {
            name: "malformed authority",
            authority: format!("db01:{port}"),
            grant: Some(good.clone()),
            status: 400,
            chain: "acme",
            reason: "is not `<target>.<customer>:<port>`",
        },
        Case {
            name: "policy deny by time window",
            authority: format!("db01.globex:{port}"),
            grant: Some(globex),
            status: 403,
            chain: "globex",
            reason: "no policy permits",
        },
        Case {
            name: "target down",
            authority: format!("down.acme:{down_port}"),
            grant: Some(down),
            status: 502,
            chain: "acme",
            reason: "target unreachable",
        },
    ];
    let alice_conn = connector(&alice);
    for c in &cases {
        let before = s.audit(c.chain).len();
        let a = connect(b.addr, &alice_conn, &c.authority, c.grant.as_deref())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(a.status, c.status, "{}: {}", c.name, a.body);
        assert!(
            a.body.contains(c.reason) || c.status == 502,
            "{}: body {:?}",
            c.name,
            a.body
        );
        if c.status == 407 {
            assert_eq!(
                a.header("proxy-authenticate"),
                Some("Bearer realm=\"sallyport\""),
                "{}",
                c.name
            );
        }
        // The record is durable before the answer: no waiting needed.
        let records = s.audit(c.chain);
        assert!(
            records.len() > before,
            "{}: no audit record in {}",
            c.name,
            c.chain
        );
        let last = records.last().unwrap();
        assert!(
            last["reason"].as_str().unwrap().contains(c.reason),
            "{}: audit reason {}",
            c.name,
            last["reason"]
        );
        if c.status == 502 {
            assert_eq!(last["event"], "tunnel_failed");
            let allow = &records[records.len() - 2];
            assert_eq!(
                allow["outcome"], "allow",
                "{}: the allow decision precedes the dial",
                c.name
            );
        } else {
            assert_eq!(last["outcome"], "deny", "{}", c.name);
        }
        assert_eq!(
            last["actor"],
            "spiffe://sallyport.local/technician/northwind/alice"
        );
    }
    // The attempt on globex's target under acme's grant is on globex's own chain too.
    let seen_by_globex = s.audit("globex");
    assert!(
        seen_by_globex.iter().any(|r| r["reason"]
            .as_str()
            .unwrap()
            .contains("grant is for customer `acme`, not `globex`")),
        "{seen_by_globex:#?}"
    );
    let policy_deny = s.audit("globex").into_iter().last().unwrap();
    assert_eq!(policy_deny["event"], "decision");
    assert_eq!(policy_deny["policy_ids"], serde_json::json!([]));

    // Technician A's grant on technician B's connection.
    let a = connect(b.addr, &connector(&bob), &db01, Some(&good))
        .await
        .unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("bound to another client certificate"));
    let rec = s.audit("acme").into_iter().last().unwrap();
    assert_eq!(
        rec["actor"],
        "spiffe://sallyport.local/technician/northwind/bob"
    );
    assert_eq!(rec["event"], "auth_failure");

    // None of the refusals opened a tunnel.
    assert!(s.audit("acme").iter().all(|r| r["event"] != "tunnel_open"));
    // The good grant still works on its own connection.
    let a = connect(b.addr, &alice_conn, &db01, Some(&good))
        .await
        .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_rate_limited() {
    let (s, _) = Setup::with_echo_target(
        BIN,
        "auth_failures_per_minute = 1\nauth_failure_burst = 3\n",
    );
    let mut b = Broker::start(&s);
    let alice = connector(&s.identity("technician"));
    for i in 0..3 {
        let a = connect(b.addr, &alice, "db01.acme:1", Some("bogus"))
            .await
            .unwrap();
        assert_eq!(a.status, 407, "attempt {i}");
    }
    // The fourth is past the budget of three, and so is every one after it until it refills.
    for _ in 0..2 {
        let a = connect(b.addr, &alice, "db01.acme:1", Some("bogus"))
            .await
            .unwrap();
        assert_eq!(a.status, 429, "{}", a.body);
        assert!(a.body.contains("too many refused attempts"), "{}", a.body);
        let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // The three within the budget are on the trail one by one; the two past it in one aggregate,
    // written at the latest when the broker stops.
    assert!(b.terminate().success());
    let trail = s.audit("_broker");
    assert_eq!(trail.len(), 4, "{trail:#?}");
    assert!(trail[..3].iter().all(|r| r["event"] == "auth_failure"));
    let aggregate = &trail[3];
    assert_eq!(aggregate["event"], "refusals_aggregated");
    assert_eq!(aggregate["aggregated_event"], "auth_failure");
    assert_eq!(aggregate["count"], 2);
    assert_eq!(
        aggregate["actor"],
        "spiffe://sallyport.local/technician/northwind/alice"
    );
    assert!(
        aggregate["reason"]
            .as_str()
            .unwrap()
            .contains("past the failure budget"),
        "{aggregate}"
    );
    s.assert_trail_verifies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_by_the_handshake_and_header_timeouts() {
    let (s, _) = Setup::with_echo_target(
        BIN,
        "handshake_timeout_seconds = 1\nheader_timeout_seconds = 1\n",
    );
    let b = Broker::start(&s);
    // Connects and sends nothing: the broker hangs up (EOF or reset), it does not wait forever.
    let mut tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "silent TCP client was not dropped: {r:?}"
    );
    s.wait_for_audit("_broker", |r| r["reason"] == "tls handshake timed out");

    // Completes the handshake, then sends no request: dropped by the header timeout.
    let tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector(&s.identity("technician"))
        .connect(name, tcp)
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(_)) | Ok(Err(_))),
        "silent TLS client was not dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_trail_means_503_and_no_tunnel() {
    // The target is a bare listener so the test can see whether the broker ever dialled it.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    let s = Setup::init(BIN);
    s.write_config(
        &[CustomerSpec {
            id: "acme",
            timezone: "UTC",
            policy: &allow_support("acme"),
            targets: vec![("db01", target.local_addr().unwrap().to_string(), vec![])],
        }],
        "",
    );
    // Every write to acme's chain fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", s.segment("acme")).unwrap();
    let b = Broker::start(&s);
    let alice = s.identity("technician");
    let (nbf, exp) = window();
    let grant = s.mint(&alice, "acme", "db01", port, nbf, exp);
    let a = connect(
        b.addr,
        &connector(&alice),
        &format!("db01.acme:{port}"),
        Some(&grant),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.body.contains("audit trail not writable"));
    target.set_nonblocking(true).unwrap();
    assert_eq!(
        target.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the broker dialled the target without a durable audit record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_only_target_dot_customer_colon_port() {
    // A bare listener as the target, so the test sees whether the broker ever dialled it.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    let s = Setup::init(BIN);
    s.write_config(
        &[CustomerSpec {
            id: "acme",
            timezone: "UTC",
            policy: &allow_support("acme"),
            targets: vec![("db01", target.local_addr().unwrap().to_string(), vec![])],
        }],
        "",
    );
    let b = Broker::start(&s);
    let alice = s.identity("technician");
    let (nbf, exp) = window();
    let grant = s.mint(&alice, "acme", "db01", port, nbf, exp);
    let tls = connector(&alice);
    for (sent, why) in [
        (format!("http://db01.acme:{port}"), "not a URL"),
        (format!("http://db01.acme:{port}/"), "not a URL"),
        (format!("alice@db01.acme:{port}"), "no user name"),
        (format!("alice:secret@db01.acme:{port}"), "no user name"),
        (format!("db01.acme:0{port}"), "without leading zeros"),
        (format!("db01.acme:00{port}"), "without leading zeros"),
        ("db01.acme:65536".to_owned(), "1 to 65535"),
        ("db01.acme".to_owned(), "no port"),
        (format!("DB01.ACME:{port}"), "lowercase names"),
        (format!("db01.acme.evil:{port}"), "lowercase names"),
    ] {
        let before = s.audit("acme").len();
        let a = connect(b.addr, &tls, &sent, Some(&grant)).await.unwrap();
        assert_eq!(a.status, 400, "{sent}: {}", a.body);
        assert!(
            a.body.contains("is not `<target>.<customer>:<port>`") && a.body.contains(why),
            "{sent}: {}",
            a.body
        );
        // Refused and recorded as refused; nothing was opened.
        let records = s.audit("acme");
        assert_eq!(records.len(), before + 1, "{sent}");
        let last = records.last().unwrap();
        assert_eq!(
            (last["event"].as_str(), last["outcome"].as_str()),
            (Some("decision"), Some("deny")),
            "{sent}"
        );
    }
    assert!(s.audit("acme").iter().all(|r| r["event"] != "tunnel_open"));
    target.set_nonblocking(true).unwrap();
    assert_eq!(
        target.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the broker dialled the target for a malformed authority"
    );
    // The strict form still opens the tunnel.
    let a = connect(b.addr, &tls, &format!("db01.acme:{port}"), Some(&grant))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
}
