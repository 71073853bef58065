//! The web console, end to end, in a real browser: Debian's Chromium driven by Playwright
//! (`tests/browser/driver.mjs`), against the real broker and real OpenID providers (the
//! provider's, acme's and globex's, `tests/oidc/idp.mjs`). A technician files a request in the
//! console; an acme approver, signed in at acme's IdP, sees it appear without a reload and
//! approves it through the request-bound sign-in; the technician's tunnel works; the approver
//! watches the live session's bytes grow and ends it; an acme auditor finds the records, runs
//! "verify now", and downloads the evidence bundle, which `audit verify --bundle` accepts; a
//! globex approver sees nothing of acme and gets 404s on acme's URLs; a form posted from another
//! origin is refused and changes nothing; every page passes axe-core's WCAG 2.1 AA rules.
//! Screenshots of each page, at desktop and phone width, are written to `docs/console/`.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use sallyport_certs::identity_dir::IdentityDir;
use sallyport_testkit::browser::Browser;
use sallyport_testkit::idp::Idp;
use sallyport_testkit::{
    Broker, CustomerSpec, Setup, connect, connector, echo_server, support_with_approvals,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

const PROVIDER_CLIENT: (&str, &str) = ("sallyport", "provider-client-secret");
const ACME_CLIENT: (&str, &str) = ("sallyport-at-acme", "acme-client-secret");
const GLOBEX_CLIENT: (&str, &str) = ("sallyport-at-globex", "globex-client-secret");

/// Desktop and phone viewports.
const DESKTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (390, 844);

struct World {
    s: Setup,
    broker: Broker,
    provider: Idp,
    acme: Idp,
    globex: Idp,
    browser: Browser,
    /// Per browser context, how many of its console messages were looked at already.
    seen: std::collections::HashMap<String, usize>,
}

impl World {
    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.broker.web.unwrap())
    }
}

fn world() -> World {
    let provider = Idp::start(PROVIDER_CLIENT.0, Some(PROVIDER_CLIENT.1), "groups");
    // acme's IdP is another site than the broker (localhost against 127.0.0.1), as a real one is.
    let acme = Idp::start_elsewhere(ACME_CLIENT.0, Some(ACME_CLIENT.1), "groups");
    let globex = Idp::start(GLOBEX_CLIENT.0, Some(GLOBEX_CLIENT.1), "groups");
    let s = Setup::init(BIN);
    let (acme_policy, globex_policy) = (
        support_with_approvals("acme", 1),
        support_with_approvals("globex", 1),
    );
    s.write_config(
        &[
            CustomerSpec {
                id: "acme",
                timezone: "UTC",
                policy: &acme_policy,
                targets: vec![("db01", echo_server().to_string(), vec!["prod"])],
            },
            CustomerSpec {
                id: "globex",
                timezone: "UTC",
                policy: &globex_policy,
                targets: vec![("web01", echo_server().to_string(), vec!["prod"])],
            },
        ],
        "",
    );
    for (file, secret) in [
        ("provider-secret", PROVIDER_CLIENT.1),
        ("acme-secret", ACME_CLIENT.1),
        ("globex-secret", GLOBEX_CLIENT.1),
    ] {
        std::fs::write(s.root.join(file), secret).unwrap();
    }
    let customer_oidc = |customer: &str, idp: &Idp, client: &str, secret: &str| {
        format!(
            "[customers.oidc]\nissuer = \"{}\"\nclient_id = \"{client}\"\nclient_secret_file = \"{secret}\"\n\
             approver_groups = [\"{customer}-approvers\"]\nauditor_groups = [\"{customer}-auditors\"]\n",
            idp.issuer()
        )
    };
    // `[customers.oidc]` belongs to the last `[[customers]]` table: globex's is written with the
    // config, acme's is added by rewriting its table.
    let config = std::fs::read_to_string(s.config()).unwrap();
    let acme_table = customer_oidc("acme", &acme, ACME_CLIENT.0, "acme-secret");
    let config = config.replacen(
        "[[customers]]\nid = \"globex\"",
        &format!("{acme_table}\n[[customers]]\nid = \"globex\""),
        1,
    );
    assert!(
        config.contains(&acme_table),
        "acme's table not found:\n{config}"
    );
    std::fs::write(s.config(), config).unwrap();
    s.append_config(&format!(
        "{}\n[web]\nlisten = \"127.0.0.1:0\"\n\
         \n[provider.oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"provider-secret\"\n\
         provider = \"northwind\"\nadmin_groups = [\"ops\"]\ncert_hours = 2\n\
         \n[audit]\ncheckpoint_every_records = 1\n",
        customer_oidc("globex", &globex, GLOBEX_CLIENT.0, "globex-secret"),
        provider.issuer(),
        PROVIDER_CLIENT.0,
    ));
    let broker = Broker::start(&s);
    let browser = Browser::start(&[&s.root.join("pki/server.pem")]);
    World {
        s,
        broker,
        provider,
        acme,
        globex,
        browser,
        seen: std::collections::HashMap::new(),
    }
}

/// acme's approver, as acme's IdP signs him in (with a hardware key).
fn bob() -> Value {
    json!({"sub": "acme-77", "preferred_username": "bob", "name": "Bob",
           "groups": ["acme-approvers"], "amr": ["pwd", "hwk"]})
}

/// The provider's technician, as the provider's IdP signs her in.
fn alice_at_idp() -> Value {
    json!({"sub": "u-1001", "preferred_username": "alice", "name": "Alice",
           "groups": ["support"], "amr": ["pwd", "otp"]})
}

/// Where screenshots go: `docs/console/` of the repository.
fn shots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console")
}

/// Checks the page `ctx` shows with axe-core (WCAG 2.1 A and AA), and screenshots it as
/// `name` at desktop and phone width.
fn check_page(w: &mut World, ctx: &str, name: &str) {
    let violations = w.browser.axe(ctx);
    assert!(
        violations.is_empty(),
        "{name}: accessibility violations: {}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
    w.browser
        .screenshot(ctx, &shots().join(format!("{name}.png")), true);
    w.browser.viewport(ctx, PHONE.0, PHONE.1);
    w.browser
        .screenshot(ctx, &shots().join(format!("{name}-phone.png")), true);
    w.browser.viewport(ctx, DESKTOP.0, DESKTOP.1);
    // Only what this page logged: earlier refusals asked for on purpose are not its errors.
    let all = w.browser.console(ctx);
    let from = w.seen.insert(ctx.to_owned(), all.len()).unwrap_or(0);
    let errors: Vec<Value> = all
        .into_iter()
        .skip(from)
        .filter(|m| m["type"] == "error" || m["type"] == "pageerror")
        .collect();
    assert!(errors.is_empty(), "{name}: errors in the page: {errors:?}");
}

/// Marks what `ctx` logged so far as looked at (refusals asked for on purpose).
fn mark(w: &mut World, ctx: &str) {
    let n = w.browser.console(ctx).len();
    w.seen.insert(ctx.to_owned(), n);
}

/// Where someone signs in: the provider's IdP, or a customer's as approver or auditor.
#[derive(Clone, Copy)]
enum At<'a> {
    Provider,
    Customer(&'a str, &'a str),
}

/// Signs `ctx` in to the console as whoever the IdP signs in next, the way a person does: the
/// sign-in page's button (a customer's bookmarked link, `/console/login?customer=&role=`), the
/// IdP's own page where it has one (acme's: `#idp-continue`), back to the console. Returns the
/// URL it lands on, once it is `lands`.
fn sign_in(w: &mut World, ctx: &str, at: At<'_>, lands: &str) -> String {
    let button = match at {
        At::Provider => {
            w.browser.goto(ctx, &w.url("/console"));
            "#provider-signin".to_owned()
        }
        At::Customer(customer, role) => {
            w.browser.goto(
                ctx,
                &w.url(&format!("/console/login?customer={customer}&role={role}")),
            );
            format!("#signin-{role}")
        }
    };
    let (status, at_url) = w.browser.submit(ctx, &button);
    assert_eq!(status, Some(200), "sign-in ended at {at_url}");
    if at_url.contains("/interaction/") {
        w.browser.submit(ctx, "#idp-continue");
    }
    w.browser.wait_url(ctx, lands)
}

/// Confirms at acme's IdP page, when it shows one, and waits for the page the decision ends on.
fn through_idp(w: &mut World, ctx: &str, at_url: &str) {
    if at_url.contains("/interaction/") {
        w.browser.submit(ctx, "#idp-continue");
    }
    w.browser.wait_url(ctx, "/oidc/callback");
}

/// One `/v1` call as `identity`.
fn api(w: &World, identity: &IdentityDir, method: &str, path: &str) -> (u16, Value) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt
        .block_on(sallyport_testkit::request(
            w.broker.addr,
            &connector(identity),
            &format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
        ))
        .unwrap();
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(Value::Null),
    )
}

/// A page on another origin (plain HTTP on loopback) with a form that posts `fields` to
/// `action`; serves it to every visitor.
fn hostile_page(action: &str, fields: &[(&str, &str)]) -> SocketAddr {
    let inputs: String = fields
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{k}\" value=\"{v}\">"))
        .collect();
    let page = format!(
        "<!doctype html><html lang=\"en\"><title>win a prize</title><form method=\"post\" action=\"{action}\">{inputs}<button id=\"go\">Claim</button></form></html>"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    addr
}

#[test]
fn approvers_auditors_and_technicians_work_in_the_console() {
    let mut w = world();
    for (ctx, size) in [
        ("tech", DESKTOP),
        ("bob", DESKTOP),
        ("carol", DESKTOP),
        ("gina", DESKTOP),
    ] {
        w.browser.context(ctx, size.0, size.1);
    }

    // Nobody signed in: the console offers sign-in, and names no customer.
    let (status, _) = w.browser.goto("tech", &w.url("/console"));
    assert_eq!(status, Some(200));
    assert!(w.browser.content("tech").contains("Provider staff"));
    assert!(!w.browser.content("tech").contains("acme"));
    check_page(&mut w, "tech", "signin");

    // A technician signs in at the provider's IdP and lands on their requests.
    w.provider.next(alice_at_idp());
    sign_in(&mut w, "tech", At::Provider, "/console/my");
    w.browser.wait_text("tech", "header", "alice");
    assert!(
        w.browser
            .content("tech")
            .contains("You have no requests yet")
    );

    // An acme approver signs in at acme's IdP; the queue is empty.
    w.acme.next(bob());
    sign_in(
        &mut w,
        "bob",
        At::Customer("acme", "approver"),
        "/console/queue",
    );
    w.browser
        .wait_text("bob", "#queue-empty", "No requests are waiting");
    check_page(&mut w, "bob", "queue-empty");

    // The technician holds a certificate (the grant is bound to their newest one) and files a
    // request in the console, choosing from what policies allow.
    let alice = IdentityDir::read(&w.s.issue(
        "technician",
        "alice",
        &["--provider", "northwind", "--group", "support"],
    ))
    .unwrap();
    w.browser.goto("tech", &w.url("/console/new"));
    let options = w.browser.texts("tech", "#target option");
    assert!(
        options.iter().any(|o| o.starts_with("acme/db01")),
        "{options:?}"
    );
    check_page(&mut w, "tech", "new-request");
    w.browser.select("tech", "#target", "acme/db01");
    w.browser.fill("tech", "#minutes", "30");
    w.browser
        .fill("tech", "#reason", "patch the database server");
    w.browser.fill("tech", "#ticket", "CHG-4711");
    let (status, at) = w.browser.submit("tech", "#file");
    assert_eq!(
        status,
        Some(200),
        "{at}: {}",
        w.browser.text("tech", "main")
    );
    let id = at.rsplit('/').next().unwrap().to_owned();
    assert!(at.contains("/console/requests/"), "{at}");
    w.browser.wait_text("tech", "#status", "pending");
    check_page(&mut w, "tech", "request-technician");

    // It appears in the approver's queue without a reload, with what helps decide.
    w.browser
        .wait_text("bob", "#live", "patch the database server");
    let card = w.browser.text("bob", &format!("#req-{id}"));
    assert!(
        card.contains("northwind/alice") && card.contains("CHG-4711"),
        "{card}"
    );
    assert!(card.contains("1 of 1 still needed"), "{card}");
    assert!(card.contains("support-requests"), "{card}");
    check_page(&mut w, "bob", "queue");

    // The approver approves through acme's IdP, which signs this very decision.
    w.browser.click("bob", &format!("#req-{id} a.button"));
    check_page(&mut w, "bob", "request-approver");
    w.acme.next(bob());
    w.browser.fill("bob", "#comment", "ok for the patch");
    let (status, at) = w.browser.submit("bob", "#approve");
    assert_eq!(status, Some(200), "{at}: {}", w.browser.text("bob", "main"));
    through_idp(&mut w, "bob", &at);
    w.browser.wait_text("bob", "#outcome", "approved");
    w.browser.click("bob", "main a");
    w.browser.wait_text("bob", "#status", "approved");
    assert!(w.browser.text("bob", "#approvals").contains("acme/bob"));
    let approved = w.s.wait_for_audit("acme", |r| {
        r["event"] == "request_approved" && r["request_id"] == id.as_str()
    });
    assert_eq!(approved["idp"]["issuer"], w.acme.issuer(), "{approved}");
    assert_eq!(approved["comment"], "ok for the patch");

    // The technician sees the grant window, and the tunnel works with their certificate.
    w.browser
        .goto("tech", &w.url(&format!("/console/requests/{id}")));
    w.browser.wait_text("tech", "#grant", "until");
    let (status, grant) = api(&w, &alice, "GET", &format!("/v1/requests/{id}/grant"));
    assert_eq!(status, 200, "{grant}");
    let token = grant["token"].as_str().unwrap().to_owned();
    let port = grant["port"].as_u64().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut tunnel = rt
        .block_on(connect(
            w.broker.addr,
            &connector(&alice),
            &format!("db01.acme:{port}"),
            Some(&token),
        ))
        .unwrap();
    assert_eq!(tunnel.status, 200, "{}", tunnel.body);
    let echo = |tunnel: &mut sallyport_testkit::Answer, n: usize| {
        rt.block_on(async {
            let data = vec![b'x'; n];
            tunnel.stream.write_all(&data).await.unwrap();
            let mut back = vec![0u8; n];
            tunnel.stream.read_exact(&mut back).await.unwrap();
        });
    };
    echo(&mut tunnel, 1000);

    // The approver sees the live session, its bytes growing, and ends it.
    w.browser.goto("bob", &w.url("/console/sessions"));
    w.browser
        .wait_text("bob", "#sessions-table", "northwind/alice");
    let before = w.browser.attr("bob", ".bytes", "data-total").unwrap();
    assert_eq!(before, "2000", "bytes so far: up and down");
    echo(&mut tunnel, 50_000);
    w.browser.wait_text("bob", ".bytes", "49.8 KiB");
    check_page(&mut w, "bob", "sessions");
    w.browser.submit("bob", "button.end");
    w.browser
        .wait_text("bob", "#sessions-empty", "Nobody is connected");
    let closed = rt.block_on(async {
        let mut rest = Vec::new();
        tunnel
            .stream
            .read_to_end(&mut rest)
            .await
            .map(|_| rest.len())
    });
    assert!(matches!(closed, Ok(0) | Err(_)), "the tunnel is cut");
    let close = w.s.wait_for_audit("acme", |r| r["event"] == "tunnel_close");
    assert!(close.to_string().contains("approver/acme/bob"), "{close}");

    // An acme auditor finds the records, verifies the chain, and takes the evidence away.
    w.acme.next(
        json!({"sub": "acme-90", "preferred_username": "carol", "name": "Carol",
                       "groups": ["acme-auditors"], "amr": ["pwd", "otp"]}),
    );
    sign_in(
        &mut w,
        "carol",
        At::Customer("acme", "auditor"),
        "/console/audit",
    );
    w.browser.fill("carol", "#f-event", "request_approved");
    w.browser.submit("carol", "#search");
    let found = w.browser.text("carol", "#records");
    assert!(found.contains("request_approved"), "{found}");
    assert!(
        found.contains(w.acme.issuer()),
        "signed at acme's IdP: {found}"
    );
    w.browser.submit("carol", "#verify");
    w.browser
        .wait_text("carol", "#verified", "The chain verifies");
    check_page(&mut w, "carol", "audit");
    let export = w.s.root.join("export.jsonl");
    w.browser.download("carol", "#export-jsonl", &export);
    let lines = std::fs::read_to_string(&export).unwrap();
    assert!(
        lines.lines().all(|l| l.contains("\"request_approved\"")) && !lines.is_empty(),
        "{lines}"
    );
    w.browser
        .goto("carol", &w.url(&format!("/console/requests/{id}")));
    let bundle = w.s.root.join("bundle.json");
    w.browser.download("carol", "#bundle", &bundle);
    let key = w.s.root.join("audit-key.json");
    let (_, k) = api(&w, &alice, "GET", "/v1/audit/key");
    std::fs::write(&key, k.to_string()).unwrap();
    let verified = Command::new(BIN)
        .args(["audit", "verify", "--bundle"])
        .arg(&bundle)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    // The access register: the grant, who asked, who approved at which IdP, its use.
    w.browser.goto("carol", &w.url("/console/register"));
    let register = w.browser.text("carol", "#register");
    assert!(register.contains("northwind/alice"), "{register}");
    assert!(
        register.contains("acme/bob") && register.contains(w.acme.issuer()),
        "{register}"
    );
    assert!(register.contains("1 session(s)"), "{register}");
    check_page(&mut w, "carol", "register");
    w.browser.click("carol", "#register-print");
    assert!(
        w.browser
            .text("carol", "main")
            .contains("Access register of acme"),
        "the printable view"
    );
    w.browser.goto("carol", &w.url("/console/register"));
    let csv = w.s.root.join("register.csv");
    w.browser.download("carol", "#register-csv", &csv);
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(
        csv.starts_with("grant_id,customer,target,technician,"),
        "{csv}"
    );
    assert!(
        csv.contains(w.acme.issuer()) && csv.contains("CHG-4711"),
        "{csv}"
    );

    // A globex approver sees nothing of acme: acme's URLs are 404s, its chain is refused.
    w.globex.next(
        json!({"sub": "g-1", "preferred_username": "gina", "name": "Gina",
                         "groups": ["globex-approvers"], "amr": ["pwd", "otp"]}),
    );
    sign_in(
        &mut w,
        "gina",
        At::Customer("globex", "approver"),
        "/console/queue",
    );
    w.browser.wait_text("gina", "#queue-empty", "No requests");
    for path in [
        format!("/console/requests/{id}"),
        format!("/console/requests/{id}/bundle"),
    ] {
        let (status, _) = w.browser.goto("gina", &w.url(&path));
        assert_eq!(status, Some(404), "{path}");
        assert!(
            !w.browser.content("gina").contains("patch the database"),
            "{path}"
        );
    }
    let (status, _) = w
        .browser
        .goto("gina", &w.url("/console/audit?customer=acme"));
    assert_eq!(status, Some(403));
    w.browser.goto("gina", &w.url("/console/sessions"));
    assert!(!w.browser.content("gina").contains("acme"));

    // A form posted from another origin is refused, and changes nothing: the approver's grant
    // stays unrevoked.
    let gid = grant["grant_id"].as_str().unwrap().to_owned();
    let evil = hostile_page(
        &w.url(&format!("/console/grants/{gid}/revoke")),
        &[("reason", "gotcha"), ("back", "/console/sessions")],
    );
    w.browser.goto("bob", &format!("http://{evil}/"));
    let (status, _) = w.browser.submit("bob", "#go");
    assert_eq!(status, Some(403));
    assert!(w.browser.content("bob").contains("nothing was changed"));
    let (_, now) = api(&w, &alice, "GET", &format!("/v1/requests/{id}"));
    assert_eq!(now["grant"]["revoked"], false, "{now}");

    // Signing out ends the session: the console asks to sign in again.
    w.browser.goto("bob", &w.url("/console/queue"));
    w.browser.submit("bob", ".who button");
    let (status, _) = w.browser.goto("bob", &w.url("/console/queue"));
    assert_eq!(status, Some(200));
    assert!(w.browser.content("bob").contains("Provider staff"));
    let out = w.s.wait_for_audit("acme", |r| r["event"] == "signed_out");
    assert_eq!(
        out["actor"], "spiffe://sallyport.local/approver/acme/bob",
        "{out}"
    );
    let signed_in =
        w.s.audit("acme")
            .into_iter()
            .find(|r| r["event"] == "signed_in" && r["actor"] == out["actor"])
            .unwrap();
    assert_eq!(
        out["cert_sha256"], signed_in["cert_sha256"],
        "the same session"
    );
    // The console's records go to the customer's SIEM as valid OCSF: sign-in and sign-out are
    // Authentication Logon and Logoff.
    let events = w.s.ocsf_export("acme");
    let auth = |activity: u64| {
        events
            .iter()
            .any(|e| e["class_uid"] == 3002 && e["activity_id"] == activity)
    };
    assert!(auth(1) && auth(2), "logon and logoff");
    w.s.assert_trail_verifies();
}

/// The CSRF token of the form on `ctx`'s page.
fn csrf(w: &mut World, ctx: &str) -> String {
    w.browser
        .attr(ctx, "input[name=csrf]", "value")
        .unwrap_or_else(|| panic!("no form on {}", w.browser.url(ctx)))
}

#[test]
fn bad_console_requests_get_clear_errors_and_change_nothing() {
    let mut w = world();
    for ctx in ["tech", "bob", "victim", "admin"] {
        w.browser.context(ctx, DESKTOP.0, DESKTOP.1);
    }
    let alice = IdentityDir::read(&w.s.issue(
        "technician",
        "alice",
        &["--provider", "northwind", "--group", "support"],
    ))
    .unwrap();

    // A sign-in started elsewhere (an attacker's link) does not sign this browser in.
    let web = w.broker.web.unwrap();
    let ca = std::fs::read_to_string(w.s.root.join("pki/ca.pem")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start = |origin: &str| {
        let body = "customer=acme&role=approver";
        rt.block_on(sallyport_testkit::request(
            web,
            &sallyport_testkit::anonymous_connector(&ca),
            &format!(
                "POST /console/login HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        ))
        .unwrap()
    };
    // The pages' headers: a strict policy with no inline script, never framed, never cached.
    let page = rt
        .block_on(sallyport_testkit::request(
            web,
            &sallyport_testkit::anonymous_connector(&ca),
            "GET /console HTTP/1.1\r\nHost: x\r\n\r\n",
        ))
        .unwrap();
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe"),
        "{csp}"
    );
    for (name, value) in [
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("x-content-type-options", "nosniff"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        assert_eq!(page.header(name), Some(value), "{name}");
    }

    // Another site's page cannot start sign-ins in people's browsers.
    let refused = start("https://evil.example");
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("nothing was started"),
        "{}",
        refused.body
    );
    let started = start(&format!("https://{web}"));
    assert_eq!(started.status, 303, "{}", started.body);
    let cookie = started.header("set-cookie").unwrap();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let idp_url = started.header("location").unwrap().to_owned();
    assert!(idp_url.starts_with(w.acme.issuer()), "{idp_url}");
    w.acme.next(
        json!({"sub": "acme-66", "preferred_username": "mallory", "name": "Mallory",
                       "groups": ["acme-approvers"], "amr": ["pwd", "otp"]}),
    );
    w.browser.goto("victim", &idp_url);
    let (status, _) = w.browser.submit("victim", "#idp-continue");
    assert_eq!(status, Some(403));
    assert!(
        w.browser
            .text("victim", "main")
            .contains("started in another browser")
    );
    let failed =
        w.s.wait_for_audit("acme", |r| r["event"] == "signin_failed");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("another browser"),
        "{failed}"
    );
    assert!(
        !w.s.audit("acme").iter().any(|r| r["event"] == "signed_in"),
        "nobody signed in"
    );
    w.browser.goto("victim", &w.url("/console/queue"));
    assert!(
        w.browser.content("victim").contains("Provider staff"),
        "not signed in"
    );

    // Without a session, a POST changes nothing.
    let posted = rt
        .block_on(sallyport_testkit::request(
            web,
            &sallyport_testkit::anonymous_connector(&ca),
            &format!(
                "POST /console/requests HTTP/1.1\r\nHost: x\r\nOrigin: https://{web}\r\nContent-Length: 9\r\n\r\ncsrf=x&a="
            ),
        ))
        .unwrap();
    assert_eq!(posted.status, 403);
    assert!(
        posted.body.contains("Sign in to the console first"),
        "{}",
        posted.body
    );

    // The technician files; the approver signs in.
    w.provider.next(alice_at_idp());
    sign_in(&mut w, "tech", At::Provider, "/console/my");
    w.browser.goto("tech", &w.url("/console/new"));
    w.browser.select("tech", "#target", "acme/db01");
    w.browser.fill("tech", "#reason", "rotate the logs");
    let (_, at) = w.browser.submit("tech", "#file");
    let id = at.rsplit('/').next().unwrap().to_owned();
    w.acme.next(bob());
    sign_in(
        &mut w,
        "bob",
        At::Customer("acme", "approver"),
        "/console/queue",
    );
    w.browser
        .goto("bob", &w.url(&format!("/console/requests/{id}")));
    let token = csrf(&mut w, "bob");
    let pending = |w: &World| {
        let (_, r) = api(w, &alice, "GET", &format!("/v1/requests/{id}"));
        assert_eq!(r["status"], "pending", "{r}");
    };

    // A provider admin sees every customer's queue, and reads a chain they name.
    w.provider.next(
        json!({"sub": "u-1", "preferred_username": "olga", "name": "Olga",
                           "groups": ["ops"], "amr": ["pwd", "otp"]}),
    );
    sign_in(&mut w, "admin", At::Provider, "/console/queue");
    w.browser.wait_text("admin", "#live", "rotate the logs");
    w.browser.goto(
        "admin",
        &w.url("/console/audit?customer=acme&event=request_filed"),
    );
    w.browser.wait_text("admin", "#records", "rotate the logs");

    // A wrong CSRF token from the console's own origin: refused.
    let deny = w.url(&format!("/console/requests/{id}/deny"));
    let (status, body) = w
        .browser
        .fetch("bob", &deny, "POST", Some("csrf=forged&reason=no"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("its origin or token is wrong"), "{body}");
    pending(&w);
    // No reason for a denial: the clear error, nothing decided.
    let (status, body) =
        w.browser
            .fetch("bob", &deny, "POST", Some(&format!("csrf={token}&reason=")));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("reason"), "{body}");
    pending(&w);
    // The technician cannot approve their own request.
    w.browser
        .goto("tech", &w.url(&format!("/console/requests/{id}")));
    let tech_token = csrf(&mut w, "tech");
    let (status, body) = w.browser.fetch(
        "tech",
        &w.url(&format!("/console/requests/{id}/approve")),
        "POST",
        Some(&format!("csrf={tech_token}")),
    );
    assert!(status == 403 || status == 404, "{status}: {body}");
    pending(&w);
    // Unknown ids, pages and filters.
    let (status, _) = w
        .browser
        .goto("bob", &w.url("/console/requests/r-nonesuch"));
    assert_eq!(status, Some(404));
    let (status, _) = w.browser.goto("bob", &w.url("/console/nonesuch"));
    assert_eq!(status, Some(404));
    let (status, _) = w
        .browser
        .goto("bob", &w.url("/console/audit?since=yesterday"));
    assert_eq!(status, Some(400));
    assert!(w.browser.text("bob", "main").contains("`since`"));
    let (status, _) = w.browser.goto(
        "bob",
        &w.url("/console/register?from=2026-02-01&to=2026-01-01"),
    );
    assert_eq!(status, Some(400));
    assert!(w.browser.text("bob", "main").contains("before"));
    let (status, _) = w
        .browser
        .goto("bob", &w.url("/console/audit/export?format=xml"));
    assert_eq!(status, Some(400));

    // The approver denies through acme's IdP, with a reason.
    w.browser
        .goto("bob", &w.url(&format!("/console/requests/{id}")));
    w.acme.next(bob());
    w.browser.fill("bob", "#reason", "not in the change window");
    let (status, at) = w.browser.submit("bob", "#deny");
    assert_eq!(status, Some(200));
    through_idp(&mut w, "bob", &at);
    w.browser.wait_text("bob", "#outcome", "denied");
    let denied = w.s.wait_for_audit("acme", |r| {
        r["event"] == "request_denied" && r["request_id"] == id.as_str()
    });
    assert_eq!(denied["idp"]["issuer"], w.acme.issuer(), "{denied}");
    w.browser.goto("tech", &w.url("/console/my"));
    w.browser.wait_text("tech", "#my-requests", "denied");

    // Locking and unlocking a technician at acme, from the locks page.
    mark(&mut w, "bob");
    w.browser.goto("bob", &w.url("/console/locks"));
    w.browser.wait_text("bob", "#no-locks", "Nobody is locked");
    w.browser.fill(
        "bob",
        "#lock-id",
        "spiffe://sallyport.local/technician/northwind/alice",
    );
    w.browser
        .fill("bob", "#lock-reason", "laptop reported stolen");
    w.browser.submit("bob", "#lock");
    let locks = w.browser.wait_text("bob", "#locks", "northwind/alice");
    assert!(
        locks.contains("at acme") && locks.contains("laptop reported stolen"),
        "{locks}"
    );
    check_page(&mut w, "bob", "locks");
    w.s.wait_for_audit("acme", |r| r["event"] == "identity_locked");
    // Locked at acme: the technician's console filing for acme is refused.
    w.browser.goto("tech", &w.url("/console/new"));
    w.browser.select("tech", "#target", "acme/db01");
    w.browser.fill("tech", "#reason", "once more");
    let (status, _) = w.browser.submit("tech", "#file");
    assert_eq!(status, Some(403));
    w.browser.submit("bob", "button.unlock");
    w.browser.wait_text("bob", "#no-locks", "Nobody is locked");
    w.s.wait_for_audit("acme", |r| r["event"] == "identity_unlocked");

    // Unlocked, the technician files again, and cancels it.
    w.browser.goto("tech", &w.url("/console/new"));
    w.browser.select("tech", "#target", "acme/db01");
    w.browser.fill("tech", "#reason", "once more");
    let (status, at) = w.browser.submit("tech", "#file");
    assert_eq!(status, Some(200), "{at}");
    let again = at.rsplit('/').next().unwrap().to_owned();
    w.browser.submit("tech", "#cancel");
    w.browser.wait_text("tech", "#status", "cancelled");
    w.s.wait_for_audit("acme", |r| {
        r["event"] == "request_cancelled" && r["request_id"] == again.as_str()
    });
    w.s.assert_trail_verifies();
}
