//! Reloading the configuration of a live broker, with the real binary, real TLS and real files:
//! `sallyport reload` adds a customer whose tunnels then open, with its policy set on its trail and
//! its metrics series from then on;
//! `SIGHUP` with a policy that no longer permits a live tunnel closes it with reason `policy
//! changed` and leaves the others running; a bad file, a restart-only change and a caller who is no
//! admin are refused, and the configuration in force keeps serving, tunnels included; reloads are
//! counted by outcome.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use sallyport_certs::identity_dir::IdentityDir;
use sallyport_testkit::{
    Answer, Broker, CustomerSpec, Setup, allow_support, connect, connector, echo_server,
    eventually, http,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// `acme` (target `db01`) and, with `globex`, also `globex` (target `app`): the `support` group may
/// connect to both; each target a loopback echo server. Returns the ports of `db01` and `app`.
fn configure(s: &Setup, acme_policy: &str, globex: bool, ports: (u16, u16)) {
    let acme = CustomerSpec {
        id: "acme",
        timezone: "UTC",
        policy: acme_policy,
        targets: vec![("db01", format!("127.0.0.1:{}", ports.0), vec![])],
    };
    let globex_policy = allow_support("globex");
    let mut customers = vec![acme];
    if globex {
        customers.push(CustomerSpec {
            id: "globex",
            timezone: "UTC",
            policy: &globex_policy,
            targets: vec![("app", format!("127.0.0.1:{}", ports.1), vec![])],
        });
    }
    s.write_config(&customers, "");
    s.append_config("[admin]\nlisten = \"127.0.0.1:0\"\n");
}

/// The metrics the admin listener serves now.
fn scrape(b: &Broker) -> String {
    let (status, _, body) = http(b.admin.unwrap(), "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

fn ports() -> (u16, u16) {
    (echo_server().port(), echo_server().port())
}

/// A ten-minute grant for `identity` on `customer/target`, signed with the broker's key.
fn grant(s: &Setup, identity: &IdentityDir, customer: &str, target: &str, port: u16) -> String {
    let now = SystemTime::now();
    s.mint(
        identity,
        customer,
        target,
        port,
        now - Duration::from_secs(1),
        now + Duration::from_secs(600),
    )
}

/// CONNECT as the demo technician; on 200, one echo through the tunnel.
async fn tunnel(s: &Setup, b: &Broker, customer: &str, target: &str, port: u16) -> Answer {
    let alice = s.identity("technician");
    let token = grant(s, &alice, customer, target, port);
    let authority = format!("{target}.{customer}:{port}");
    let mut a = connect(b.addr, &connector(&alice), &authority, Some(&token))
        .await
        .unwrap();
    if a.status == 200 {
        echo(&mut a).await;
    }
    a
}

async fn echo(a: &mut Answer) {
    a.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    a.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// `sallyport reload` as `who`: exit code, stdout, stderr.
fn reload(s: &Setup, b: &Broker, who: &str) -> (i32, String, String) {
    let out = Command::new(&s.bin)
        .args(["reload", "--identity"])
        .arg(s.demo(who))
        .arg("--broker")
        .arg(b.addr.to_string())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha256_of(path: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn hangup(b: &Broker) {
    let ok = Command::new("kill")
        .args(["-HUP", &b.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits for a line the broker printed on stdout containing `what`.
fn printed(b: &Broker, what: &str) -> String {
    eventually(30, what, || {
        b.stdout
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(what))
            .cloned()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_adds_a_customer_whose_tunnels_then_open_with_its_policy_on_its_trail() {
    let s = Setup::init(BIN);
    let p = ports();
    configure(&s, &allow_support("acme"), false, p);
    let mut b = Broker::start(&s);
    let mut live = tunnel(&s, &b, "acme", "db01", p.0).await;
    assert_eq!(live.status, 200);
    // Not yet configured: refused, and no customer label is made of the name.
    assert_eq!(tunnel(&s, &b, "globex", "app", p.1).await.status, 404);
    assert!(!scrape(&b).contains("globex"));

    configure(&s, &allow_support("acme"), true, p);
    let (code, out, err) = reload(&s, &b, "admin");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("added globex; changed none; removed none"),
        "{out}"
    );
    let digest = sha256_of(&s.root.join("policies/globex.cedar"));
    assert!(out.contains(&digest), "{out}");
    assert!(out.contains("0 live tunnel(s) closed"), "{out}");

    // The new customer's target opens at once; the tunnel that was live is untouched.
    let mut fresh = tunnel(&s, &b, "globex", "app", p.1).await;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    echo(&mut live).await;
    echo(&mut fresh).await;
    // Its series exist from the reload, and count its tunnel.
    let text = scrape(&b);
    assert!(
        text.contains("sallyport_tunnels_opened_total{customer=\"globex\"} 1\n"),
        "{text}"
    );

    // On the trail before it took effect: the new customer's chain has the reload and the policy
    // set in force (what `sha256sum` prints), ahead of the tunnel's decision.
    let globex = s.audit("globex");
    let kinds: Vec<&str> = globex
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    let loaded = kinds.iter().position(|k| *k == "policy_loaded").unwrap();
    let decided = kinds.iter().position(|k| *k == "decision").unwrap();
    assert!(loaded < decided, "{kinds:?}");
    assert_eq!(globex[loaded]["policy_digest"], digest.as_str());
    assert_eq!(globex[loaded]["policy_ids"], serde_json::json!(["support"]));
    assert!(
        globex[loaded]["actor"]
            .as_str()
            .unwrap()
            .ends_with("/admin/root"),
        "{}",
        globex[loaded]
    );
    assert!(kinds.contains(&"config_reloaded"), "{kinds:?}");
    let broker = s.audit("_broker");
    let reloaded = broker
        .iter()
        .find(|r| r["event"] == "config_reloaded")
        .unwrap();
    assert!(
        reloaded["reason"]
            .as_str()
            .unwrap()
            .contains("added globex"),
        "{reloaded}"
    );
    // acme did not change: no second policy_loaded on its chain.
    let acme_loaded = s
        .audit("acme")
        .iter()
        .filter(|r| r["event"] == "policy_loaded")
        .count();
    assert_eq!(acme_loaded, 1);
    drop((live, fresh));
    // A broker that reloaded still stops cleanly, its trail complete.
    assert!(b.terminate().success());
    s.assert_trail_verifies();
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_closes_the_tunnels_a_new_policy_forbids_and_only_those() {
    let s = Setup::init(BIN);
    let p = ports();
    configure(&s, &allow_support("acme"), true, p);
    let mut b = Broker::start(&s);
    let mut acme = tunnel(&s, &b, "acme", "db01", p.0).await;
    let mut globex = tunnel(&s, &b, "globex", "app", p.1).await;
    assert_eq!((acme.status, globex.status), (200, 200));
    let session = acme.header("sallyport-session").unwrap().to_owned();

    // acme's new policy permits nothing.
    let forbid = "@id(\"freeze\")\nforbid(principal, action, resource);\n";
    configure(&s, forbid, true, p);
    hangup(&b);
    let line = printed(&b, "sallyport: reloaded");
    assert!(line.contains("1 changed"), "{line}");
    assert!(line.contains("1 tunnel(s) closed"), "{line}");
    acme.wait_cut().await;
    echo(&mut globex).await;

    let close = s.wait_for_audit("acme", |r| {
        r["event"] == "tunnel_close" && r["session_id"] == session.as_str()
    });
    assert_eq!(close["reason"], "policy changed");
    let digest = sha256_of(&s.root.join("policies/acme.cedar"));
    let loaded: Vec<serde_json::Value> = s
        .audit("acme")
        .into_iter()
        .filter(|r| r["event"] == "policy_loaded")
        .collect();
    assert_eq!(loaded.len(), 2, "{loaded:#?}");
    assert_eq!(loaded[1]["policy_digest"], digest.as_str());
    assert_eq!(loaded[1]["actor"], "SIGHUP");
    // And from now on acme's target is refused under the new policy.
    let again = tunnel(&s, &b, "acme", "db01", p.0).await;
    assert_eq!(again.status, 403, "{}", again.body);
    let refused = s.wait_for_audit("acme", |r| {
        r["event"] == "decision" && r["outcome"] == "deny"
    });
    assert_eq!(refused["policy_digest"], digest.as_str());
    assert_eq!(refused["policy_ids"], serde_json::json!(["freeze"]));
    drop(globex);
    // A broker that reloaded still stops cleanly, its trail complete.
    assert!(b.terminate().success());
    s.assert_trail_verifies();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_file_is_refused_and_the_configuration_in_force_keeps_serving() {
    let s = Setup::init(BIN);
    let p = ports();
    configure(&s, &allow_support("acme"), false, p);
    let mut b = Broker::start(&s);
    let mut live = tunnel(&s, &b, "acme", "db01", p.0).await;
    assert_eq!(live.status, 200);
    let good = std::fs::read_to_string(s.config()).unwrap();

    // A policy that does not parse: exit 64, the file, line and fix named.
    std::fs::write(s.root.join("policies/acme.cedar"), "permit(principal,").unwrap();
    let (code, out, err) = reload(&s, &b, "admin");
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains("keeps serving the configuration in force"),
        "{err}"
    );
    assert!(err.contains("acme.cedar"), "{err}");
    assert!(err.contains("fix:"), "{err}");
    // SIGHUP with the same file: refused too, the broker still up.
    hangup(&b);
    eventually(30, "the refused SIGHUP reload on the trail", || {
        (s.audit("_broker")
            .iter()
            .filter(|r| r["event"] == "config_reload_refused")
            .count()
            == 2)
            .then_some(())
    });
    std::fs::write(s.root.join("policies/acme.cedar"), allow_support("acme")).unwrap();

    // A key that is not a key.
    std::fs::write(s.config(), format!("{good}\n[server2]\nx = 1\n")).unwrap();
    let (code, _, err) = reload(&s, &b, "admin");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("server2"), "{err}");

    // A section only a restart may change.
    std::fs::write(
        s.config(),
        good.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1),
    )
    .unwrap();
    let (code, _, err) = reload(&s, &b, "admin");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("`server.listen`"), "{err}");
    assert!(err.contains("restart the broker"), "{err}");
    // The admin listener too: it is bound at start.
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"";
    assert!(good.contains(admin), "{good}");
    std::fs::write(
        s.config(),
        good.replace(admin, "[admin]\nlisten = \"127.0.0.1:2\""),
    )
    .unwrap();
    let (code, _, err) = reload(&s, &b, "admin");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("`admin.listen`"), "{err}");

    // Nobody but an admin reloads: the approver is refused, and that is recorded.
    std::fs::write(s.config(), &good).unwrap();
    let (code, _, err) = reload(&s, &b, "approver");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("only provider admins"), "{err}");
    s.wait_for_audit("acme", |r| {
        r["event"] == "access_refused"
            && r["reason"]
                .as_str()
                .is_some_and(|t| t.contains("reload the configuration"))
    });

    // Through all of it the old configuration served: the live tunnel runs, new ones open.
    echo(&mut live).await;
    assert_eq!(tunnel(&s, &b, "acme", "db01", p.0).await.status, 200);
    let refused: Vec<serde_json::Value> = s
        .audit("_broker")
        .into_iter()
        .filter(|r| r["event"] == "config_reload_refused")
        .collect();
    assert_eq!(refused.len(), 5, "{refused:#?}");
    assert!(
        s.audit("_broker")
            .iter()
            .all(|r| r["event"] != "config_reloaded")
    );
    // And the same file, now good, reloads with nothing changed.
    let (code, out, _) = reload(&s, &b, "admin");
    assert_eq!(code, 0);
    assert!(
        out.contains("added none; changed none; removed none"),
        "{out}"
    );
    // Counted for alerting: the five refused (by SIGHUP and by `reload`), this one applied; the
    // approver's call never got to a reload.
    let text = scrape(&b);
    for series in [
        "sallyport_config_reloads_total{outcome=\"refused\"} 5\n",
        "sallyport_config_reloads_total{outcome=\"applied\"} 1\n",
    ] {
        assert!(text.contains(series), "{series} not in:\n{text}");
    }
    drop(live);
    // A broker that reloaded still stops cleanly, its trail complete.
    assert!(b.terminate().success());
    s.assert_trail_verifies();
}
