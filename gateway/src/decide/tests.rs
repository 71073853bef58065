//! [`decide`] table by table, on plain values: a peer identity, grant claims, an authority, a time
//! and a customer catalogue built in memory. No listener, store, trail or broker.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use sallyport_certs::grant::Confirmation;
use sallyport_policy::CustomerPolicy;

use super::*;

const NOW: i64 = 1_767_261_600; // 2026-01-01T10:00:00Z, a Thursday
const THUMB: [u8; 32] = [7; 32];

const POLICY: &str = r#"
@id("support-hours")
permit (principal in Sallyport::Group::"support", action == Sallyport::Action::"connect", resource)
when { context.hour >= 8 && context.hour < 18 && context.minutes <= 120 };
@id("no-prod-from-outside")
forbid (principal, action == Sallyport::Action::"connect", resource)
when { resource.tags.contains("prod") && !context.source_ip.isInRange(ip("10.0.0.0/8")) };
"#;

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

fn target(name: &str, port: u16, tags: &[&str]) -> Target {
    Target {
        id: id(name),
        address: format!("127.0.0.1:{port}"),
        port,
        protocol: "tcp".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        record: false,
    }
}

fn customer(name: &str, targets: Vec<Target>) -> Customer {
    Customer {
        id: id(name),
        timezone: "UTC".into(),
        policy_path: format!("{name}.cedar").into(),
        policy: Arc::new(CustomerPolicy::parse(id(name), "UTC", "test.cedar", POLICY).unwrap()),
        targets,
        webhook: None,
        siem: Vec::new(),
        oidc: None,
    }
}

fn catalogue() -> Vec<Customer> {
    vec![
        customer(
            "acme",
            vec![target("web", 7070, &[]), target("db", 5432, &["prod"])],
        ),
        customer("globex", vec![target("web", 7070, &[])]),
    ]
}

fn peer(spiffe: &str, groups: &[&str]) -> PeerIdentity {
    PeerIdentity {
        id: id(spiffe),
        groups: groups.iter().map(|g| id(g)).collect(),
        thumbprint: THUMB,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(NOW as u64 + 86_400),
        signin: None,
    }
}

fn alice() -> PeerIdentity {
    peer(
        "spiffe://sallyport.local/technician/northwind/alice",
        &["support"],
    )
}

/// A grant for alice's certificate on `acme/web:7070`, valid 30 minutes from 5 minutes ago.
fn claims() -> GrantClaims {
    let now = NOW as u64;
    GrantClaims {
        iss: "sallyport".into(),
        aud: "sallyport".into(),
        sub: alice().id,
        customer: id("acme"),
        target: id("web"),
        port: 7070,
        gid: id("g-1"),
        iat: now - 300,
        nbf: now - 300,
        exp: now + 1_500,
        jti: "j".into(),
        cnf: Confirmation {
            x5t_s256: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(THUMB),
        },
    }
}

/// One row: what is asked, and what must come of it.
struct Case {
    name: &'static str,
    peer: PeerIdentity,
    grant: GrantCheck,
    /// The CONNECT's request target, as sent.
    uri: &'static str,
    ip: &'static str,
    hour: i64,
    /// `Ok(policy ids)`, or `Err((status, event, reason contains))`.
    want: Result<&'static [&'static str], (StatusCode, EventKind, &'static str)>,
}

fn case(name: &'static str) -> Case {
    Case {
        name,
        peer: alice(),
        grant: GrantCheck::Verified(Box::new(claims())),
        uri: "web.acme:7070",
        ip: "10.1.2.3",
        hour: 0,
        want: Ok(&["support-hours"]),
    }
}

fn with(f: impl FnOnce(&mut GrantClaims)) -> GrantCheck {
    let mut c = claims();
    f(&mut c);
    GrantCheck::Verified(Box::new(c))
}

fn run(c: &Case) -> Result<Allowed<'static>, Box<Refusal>> {
    let customers: &'static [Customer] = Box::leak(catalogue().into_boxed_slice());
    let uri: Uri = c.uri.parse().unwrap();
    let ask = Ask {
        peer: &c.peer,
        ip: c.ip.parse().unwrap(),
        uri: &uri,
        grant: c.grant.clone(),
        now: jiff::Timestamp::from_second(NOW + c.hour * 3600).unwrap(),
    };
    decide(ask, customers)
}

#[test]
fn every_stage_refuses_with_its_status_event_and_reason() {
    use EventKind::{AuthFailure, Decision};
    use StatusCode as S;
    let approver = peer("spiffe://sallyport.local/approver/acme/bob", &[]);
    let cases = vec![
        case("a bound grant on its own target, in hours"),
        Case {
            want: Err((
                S::PROXY_AUTHENTICATION_REQUIRED,
                AuthFailure,
                "missing grant",
            )),
            grant: GrantCheck::Missing,
            ..case("no grant")
        },
        Case {
            want: Err((S::PROXY_AUTHENTICATION_REQUIRED, AuthFailure, "signature")),
            grant: GrantCheck::Refused {
                error: GrantError::BadSignature,
                signed: None,
            },
            ..case("a forged grant")
        },
        Case {
            want: Err((S::PROXY_AUTHENTICATION_REQUIRED, AuthFailure, "expired")),
            grant: with(|c| c.exp = NOW as u64),
            ..case("past exp, within the leeway")
        },
        Case {
            want: Err((S::FORBIDDEN, Decision, "only technicians")),
            peer: approver,
            grant: with(|c| c.sub = id("spiffe://sallyport.local/approver/acme/bob")),
            ..case("an approver's certificate")
        },
        Case {
            want: Err((S::FORBIDDEN, AuthFailure, "another client certificate")),
            grant: with(|c| c.cnf.x5t_s256 = "other".into()),
            ..case("bound to another certificate")
        },
        Case {
            want: Err((S::FORBIDDEN, AuthFailure, "another client certificate")),
            grant: with(|c| c.sub = id("spiffe://sallyport.local/technician/northwind/mallory")),
            ..case("another technician's grant")
        },
        Case {
            want: Err((S::BAD_REQUEST, Decision, "needs an authority")),
            uri: "/",
            ..case("no authority")
        },
        Case {
            want: Err((
                S::BAD_REQUEST,
                Decision,
                "is not `<target>.<customer>:<port>`",
            )),
            uri: "web:7070",
            ..case("an authority without a customer")
        },
        Case {
            want: Err((
                S::FORBIDDEN,
                Decision,
                "grant is for customer `acme`, not `globex`",
            )),
            uri: "web.globex:7070",
            ..case("another customer's target")
        },
        Case {
            want: Err((S::NOT_FOUND, Decision, "has no target `mail`")),
            uri: "mail.acme:25",
            ..case("an unknown target")
        },
        Case {
            want: Err((
                S::FORBIDDEN,
                Decision,
                "grant is for target `web`, not `db`",
            )),
            uri: "db.acme:5432",
            ..case("another target of the same customer")
        },
        Case {
            want: Err((S::FORBIDDEN, Decision, "reached on port 7070")),
            uri: "web.acme:22",
            ..case("another port")
        },
        Case {
            want: Err((S::FORBIDDEN, Decision, "reached on port 7070")),
            grant: with(|c| c.port = 22),
            ..case("a grant for another port")
        },
        Case {
            want: Err((S::FORBIDDEN, Decision, "")),
            hour: -5,
            ..case("outside the policy's hours")
        },
        Case {
            want: Err((S::FORBIDDEN, Decision, "")),
            grant: with(|c| c.exp = c.nbf + 3 * 3600),
            ..case("a window longer than the policy allows")
        },
        Case {
            want: Ok(&["support-hours"]),
            peer: peer(
                "spiffe://sallyport.local/technician/northwind/alice",
                &["support"],
            ),
            ..case("the group comes from the certificate")
        },
        Case {
            want: Err((S::FORBIDDEN, Decision, "")),
            peer: peer("spiffe://sallyport.local/technician/northwind/alice", &[]),
            ..case("without the group the policy names")
        },
    ];
    for c in &cases {
        match (run(c), &c.want) {
            (Ok(a), Ok(ids)) => {
                assert_eq!(a.policy_ids, *ids, "{}", c.name);
                assert_eq!(
                    (a.customer.id.as_str(), a.target.id.as_str()),
                    ("acme", "web"),
                    "{}",
                    c.name
                );
            }
            (Err(r), Err((status, event, needle))) => {
                assert_eq!(
                    (r.status, r.event),
                    (*status, *event),
                    "{}: {}",
                    c.name,
                    r.reason
                );
                assert!(r.reason.contains(needle), "{}: {}", c.name, r.reason);
                assert!(
                    r.counts,
                    "{}: every refusal in decide is the client's",
                    c.name
                );
            }
            (Ok(_), Err(_)) => panic!("{}: allowed", c.name),
            (Err(r), Ok(_)) => panic!("{}: refused: {}", c.name, r.reason),
        }
    }
}

#[test]
fn a_forbid_wins_and_names_its_policy() {
    let prod = Case {
        grant: with(|c| {
            c.target = id("db");
            c.port = 5432;
        }),
        uri: "db.acme:5432",
        ip: "192.0.2.7",
        ..case("prod from outside the customer's network")
    };
    let r = run(&prod).unwrap_err();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.policy_ids, ["no-prod-from-outside"]);
    let inside = Case {
        ip: "10.9.9.9",
        ..prod
    };
    assert_eq!(run(&inside).unwrap().target.id.as_str(), "db");
}

#[test]
fn refusals_name_what_the_records_need() {
    // A grant refused for its window still names its customer, target and grant.
    let expired = Case {
        grant: GrantCheck::Refused {
            error: GrantError::Expired,
            signed: Some(Box::new(claims())),
        },
        ..case("expired beyond the leeway")
    };
    let r = run(&expired).unwrap_err();
    assert_eq!(
        (
            r.customer.as_deref(),
            r.target.as_deref(),
            r.grant_id.as_deref()
        ),
        (Some("acme"), Some("web"), Some("g-1"))
    );
    // An attempt on another customer's target is that customer's business too.
    let other = Case {
        uri: "web.globex:7070",
        ..case("another customer's target")
    };
    let r = run(&other).unwrap_err();
    assert_eq!(r.also_for.as_deref(), Some("globex"));
    assert_eq!(r.target.as_deref(), Some("web.globex"));
    assert_eq!(r.customer.as_deref(), Some("acme"));
    // A missing grant names nothing.
    let r = run(&Case {
        grant: GrantCheck::Missing,
        ..case("no grant")
    })
    .unwrap_err();
    assert_eq!((r.customer, r.grant_id), (None, None));
}

#[test]
fn the_authority_is_read_strictly() {
    let ok = route(&"web.acme:7070".parse().unwrap()).unwrap();
    assert_eq!(
        (ok.target.as_str(), ok.customer.as_str(), ok.port),
        ("web", "acme", 7070)
    );
    assert_eq!(route(&"a-1.b-2:1".parse().unwrap()).unwrap().port, 1);
    for (sent, why) in [
        ("http://web.acme:7070", "not a URL"),
        ("http://web.acme:7070/", "not a URL"),
        ("https://web.acme:7070/x?y", "not a URL"),
        ("alice@web.acme:7070", "no user name"),
        ("alice:pw@web.acme:7070", "no user name"),
        ("web.acme:07070", "without leading zeros"),
        ("web.acme:0", "1 to 65535"),
        ("web.acme:65536", "1 to 65535"),
        ("web.acme:99999", "1 to 65535"),
        ("web.acme:", "1 to 65535"),
        ("web.acme", "no port"),
        ("web:7070", "no customer"),
        ("Web.Acme:7070", "lowercase names"),
        ("a.b.acme:7070", "lowercase names"),
        ("web.:7070", "lowercase names"),
        (".acme:7070", "lowercase names"),
        ("[::1]:7070", "no customer"),
        ("/", "needs an authority"),
    ] {
        // A request target the HTTP parser itself refuses never reaches the broker (400 there).
        let Ok(uri) = sent.parse::<Uri>() else {
            continue;
        };
        let err = route(&uri).unwrap_err();
        assert!(err.contains(why), "{sent}: {err}");
    }
    // What a client sent is quoted, bounded.
    let long: Uri = format!("{}.acme:1", "x".repeat(2000)).parse().unwrap();
    assert!(route(&long).unwrap_err().len() < 500);
}

#[test]
fn a_live_tunnel_is_checked_again_under_a_new_catalogue() {
    let now = jiff::Timestamp::from_second(NOW).unwrap();
    let peer = alice();
    let (acme, web): (CustomerId, TargetId) = (id("acme"), id("web"));
    let live = |address: &'static str| Live {
        customer: &acme,
        target: &web,
        peer: &peer,
        ip: "10.1.2.3".parse().unwrap(),
        minutes: 30,
        address,
        port: 7070,
    };
    let customers = catalogue();
    assert_eq!(
        still_allowed(live("127.0.0.1:7070"), &customers, now),
        Ok(())
    );
    // The target moved.
    let moved = still_allowed(live("127.0.0.1:9999"), &customers, now).unwrap_err();
    assert!(moved.contains("another address"), "{moved}");
    // Outside the hours the policy permits.
    let night = jiff::Timestamp::from_second(NOW + 10 * 3600).unwrap();
    let why = still_allowed(live("127.0.0.1:7070"), &customers, night).unwrap_err();
    assert!(why.contains("no policy permits"), "{why}");
    // The target, then the customer, gone.
    let mut fewer = catalogue();
    fewer[0].targets.retain(|t| t.id.as_str() != "web");
    let gone = still_allowed(live("127.0.0.1:7070"), &fewer, now).unwrap_err();
    assert!(gone.contains("no longer has target `web`"), "{gone}");
    fewer.remove(0);
    let gone = still_allowed(live("127.0.0.1:7070"), &fewer, now).unwrap_err();
    assert!(gone.contains("no longer configured"), "{gone}");
}

#[test]
fn every_refusal_is_counted_under_its_reason() {
    use TunnelRefusal as T;
    let cases = [
        (
            Case {
                grant: GrantCheck::Missing,
                ..case("no grant")
            },
            T::MissingGrant,
        ),
        (
            Case {
                grant: GrantCheck::Refused {
                    error: GrantError::BadSignature,
                    signed: None,
                },
                ..case("a forged grant")
            },
            T::InvalidGrant,
        ),
        (
            Case {
                grant: with(|c| c.exp = NOW as u64),
                ..case("past exp")
            },
            T::InvalidGrant,
        ),
        (
            Case {
                grant: with(|c| c.cnf.x5t_s256 = "other".into()),
                ..case("bound to another certificate")
            },
            T::WrongCertificate,
        ),
        (
            Case {
                peer: peer("spiffe://sallyport.local/approver/acme/bob", &[]),
                grant: with(|c| c.sub = id("spiffe://sallyport.local/approver/acme/bob")),
                ..case("an approver's certificate")
            },
            T::WrongCertificate,
        ),
        (
            Case {
                uri: "web:7070",
                ..case("a malformed authority")
            },
            T::BadAuthority,
        ),
        (
            Case {
                uri: "web.globex:7070",
                ..case("another customer")
            },
            T::WrongTarget,
        ),
        (
            Case {
                uri: "mail.acme:25",
                ..case("an unknown target")
            },
            T::UnknownTarget,
        ),
        (
            Case {
                uri: "web.acme:22",
                ..case("another port")
            },
            T::WrongTarget,
        ),
        (
            Case {
                hour: -5,
                ..case("outside the policy's hours")
            },
            T::PolicyDenied,
        ),
    ];
    for (c, want) in cases {
        let r = run(&c)
            .err()
            .unwrap_or_else(|| panic!("{}: allowed", c.name));
        assert_eq!(r.kind, want, "{}", c.name);
    }
    // What the gateway refuses outside `decide` takes its reason from the status unless it says more.
    let late = Refusal::new(StatusCode::SERVICE_UNAVAILABLE, EventKind::Decision, "x");
    assert_eq!(late.kind, T::Unavailable);
    let revoked =
        Refusal::new(StatusCode::FORBIDDEN, EventKind::Decision, "x").counted_as(T::Revoked);
    assert_eq!(revoked.kind, T::Revoked);
}
