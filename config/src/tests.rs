//! Configuration parsing and validation against real files: defaults, every refused value naming
//! its field, line and fix, policies, webhooks and SIEM sinks.

use std::path::Path;
use std::time::Duration;

use crate::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/sallyport/sallyport.toml"), text)
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse("[server]\nlisten = \"127.0.0.1:8443\"\n").unwrap();
    assert_eq!(c.data_dir, Path::new("/etc/sallyport/data"));
    assert_eq!(c.grants.leeway, Duration::from_secs(30));
    assert_eq!(c.public_address, "localhost:8443");
    assert_eq!(c.trust_domain.as_str(), "sallyport.local");
    assert_eq!(c.worker_threads, 0);
}

#[test]
fn worker_threads_out_of_range_names_field_and_fix() {
    let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nworker_threads = 5000\n").unwrap_err();
    assert_eq!(err.field, "server.worker_threads");
    assert!(err.fix.contains("1024"), "{}", err.fix);
}

#[test]
fn unknown_key_names_line_and_key() {
    let err = parse("[server]\nlisten = \"127.0.0.1:8443\"\nlisten_port = 3\n").unwrap_err();
    let s = err.to_string();
    assert!(s.starts_with("/etc/sallyport/sallyport.toml:3:"), "{s}");
    assert_eq!(err.field, "server.listen_port");
    assert!(err.fix.starts_with("did you mean `listen`?"), "{}", err.fix);
}

#[test]
fn an_unknown_key_names_its_path_line_and_the_keys_of_its_table() {
    let err = parse("[server]\nlistn = \"127.0.0.1:8443\"\n").unwrap_err();
    assert_eq!(err.location, "/etc/sallyport/sallyport.toml:2");
    assert_eq!(err.field, "server.listn");
    assert_eq!(err.message, "unknown key `listn` in [server]");
    assert!(err.fix.starts_with("did you mean `listen`?"), "{}", err.fix);
    for key in [
        "`listen`",
        "`data_dir`",
        "`public_address`",
        "`sallyport config example`",
    ] {
        assert!(err.fix.contains(key), "{key} not in {}", err.fix);
    }

    let text = "[server]\nlisten = \"127.0.0.1:1\"\n\n[[customers]]\nid = \"acme\"\npolicy = \"p.cedar\"\n\n[[customers.targets]]\nid = \"db01\"\nadress = \"10.0.0.1:5432\"\n";
    let err = parse(text).unwrap_err();
    assert_eq!(err.location, "/etc/sallyport/sallyport.toml:10");
    assert_eq!(err.field, "customers[0].targets[0].adress");
    assert!(
        err.message.contains("[[customers.targets]]"),
        "{}",
        err.message
    );
    assert!(
        err.fix.starts_with("did you mean `address`?"),
        "{}",
        err.fix
    );

    let err = parse("[server]\nlisten = \"127.0.0.1:1\"\n[limits]\nspeed = 11\n").unwrap_err();
    assert_eq!(err.field, "limits.speed");
    assert!(
        err.fix.starts_with("remove it or correct its name"),
        "{}",
        err.fix
    );
    assert!(err.fix.contains("`max_connections`"), "{}", err.fix);

    let err = parse("[sever]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
    assert_eq!(err.field, "sever");
    assert!(err.fix.starts_with("did you mean `server`?"), "{}", err.fix);
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let err = parse("[server]\nlisten = \"127.0.0.1:1\"\n[limits]\nmax_connections = \"many\"\n")
        .unwrap_err();
    assert_eq!(err.field, "limits.max_connections");
    assert_eq!(err.location, "/etc/sallyport/sallyport.toml:4");
    assert!(
        err.fix.contains("`sallyport config example`"),
        "{}",
        err.fix
    );
    assert!(
        !err.fix.contains("deploy/"),
        "no source-tree path: {}",
        err.fix
    );
    let err = parse("[tls]\nca = \"x\"\n").unwrap_err();
    assert_eq!(err.field, "server", "{err}");
    let err =
        parse("[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"acme\"\n").unwrap_err();
    assert_eq!(err.field, "customers[0].policy", "{err}");
    let err = parse("[server]\nlisten = \n").unwrap_err();
    assert_eq!(err.field, "(syntax)", "{err}");
    assert!(
        err.fix.contains("`sallyport config example`"),
        "{}",
        err.fix
    );
    assert!(
        !err.fix.contains("deploy/"),
        "no source-tree path: {}",
        err.fix
    );
}

#[test]
fn no_fix_names_a_source_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("bad.cedar"),
        "permit(principal, action, resource) when { resource.nope };",
    )
    .unwrap();
    let cfg = tmp.path().join("sallyport.toml");
    let base = "[server]\nlisten = \"127.0.0.1:1\"\n";
    for text in [
        format!("{base}nope = 1\n"),
        format!("{base}[limits]\nmax_connections = \"x\"\n"),
        format!("{base}[[customers]]\nid = \"acme\"\npolicy = \"bad.cedar\"\n"),
        format!("{base}[[customers]]\nid = \"acme\"\npolicy = \"missing.cedar\"\n"),
        "[server\n".to_owned(),
    ] {
        let err = Config::parse(&cfg, &text).unwrap_err();
        assert!(
            !err.fix.contains("src/") && !err.fix.contains(".rs"),
            "a fix names a source file: {err}"
        );
    }
}

#[test]
fn limits_that_would_disable_a_protection_are_refused() {
    let base = "[server]\nlisten = \"127.0.0.1:1\"\n";
    let err = parse(&format!("{base}[grants]\nleeway_seconds = 86400\n")).unwrap_err();
    assert_eq!(err.field, "grants.leeway_seconds");
    let err = parse(&format!("{base}[limits]\nmax_connections = 0\n")).unwrap_err();
    assert_eq!(err.field, "limits.max_connections");
    for key in [
        "max_handshakes",
        "max_handshakes_per_source",
        "unauthenticated_failures_per_minute",
        "unauthenticated_failure_burst",
        "refusals_recorded_per_interval",
        "request_timeout_seconds",
        "refusal_interval_seconds",
    ] {
        let err = parse(&format!("{base}[limits]\n{key} = 0\n")).unwrap_err();
        assert_eq!(err.field, format!("limits.{key}"), "{err}");
    }
    let err = parse(&format!(
        "{base}[limits]\nrequest_timeout_seconds = 86400\n"
    ))
    .unwrap_err();
    assert_eq!(err.field, "limits.request_timeout_seconds");
    assert!(err.fix.contains("1 to 3600"), "{err}");
}

#[test]
fn handshake_caps_are_never_more_than_the_connections_they_hold() {
    let base = "[server]\nlisten = \"127.0.0.1:1\"\n";
    let cfg = parse(base).unwrap();
    let l = &cfg.limits;
    assert_eq!(
        (
            l.max_connections,
            l.max_handshakes,
            l.max_handshakes_per_source
        ),
        (10_000, 1024, 64)
    );
    assert_eq!(l.request_timeout, std::time::Duration::from_secs(30));
    let cfg = parse(&format!(
        "{base}[limits]\nmax_connections = 100\nmax_handshakes = 500\nmax_handshakes_per_source = 200\n"
    ))
    .unwrap();
    let l = &cfg.limits;
    assert_eq!((l.max_handshakes, l.max_handshakes_per_source), (100, 100));
}

#[test]
fn bad_listen_names_field_and_fix() {
    let err = parse("[server]\nlisten = \"localhost\"\n").unwrap_err();
    assert_eq!(err.field, "server.listen");
    assert_eq!(err.location, "/etc/sallyport/sallyport.toml:2");
    assert!(err.fix.contains("IP:PORT"));
}

#[test]
fn missing_policy_file_is_named() {
    let err = parse(
        "[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"acme\"\npolicy = \"nope.cedar\"\n",
    )
    .unwrap_err();
    assert_eq!(err.field, "customers[0].policy");
    assert!(err.message.contains("/etc/sallyport/nope.cedar"), "{err}");
    assert_eq!(err.location, "/etc/sallyport/sallyport.toml:5");
}

#[test]
fn bad_customer_and_target_ids_are_refused() {
    let err = parse(
        "[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"Acme Corp\"\npolicy = \"p\"\n",
    )
    .unwrap_err();
    assert_eq!(err.field, "customers[0].id");
    assert_eq!(err.location, "/etc/sallyport/sallyport.toml:4");
}

#[test]
fn policy_and_target_errors_from_real_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acme.cedar"),
        "permit(principal, action, resource);\n",
    )
    .unwrap();
    let cfg = dir.path().join("sallyport.toml");
    let base = "[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"acme\"\npolicy = \"acme.cedar\"\ntimezone = \"Europe/Berlin\"\n";
    let ok = format!(
        "{base}[[customers.targets]]\nid = \"db01\"\naddress = \"10.20.0.5:5432\"\ntags = [\"prod\"]\n"
    );
    let c = Config::parse(&cfg, &ok).unwrap();
    let t = c.customer("acme").unwrap().target("db01").unwrap();
    assert_eq!(t.port, 5432);
    assert_eq!(t.protocol, "tcp");

    let bad = format!("{base}[[customers.targets]]\nid = \"db01\"\naddress = \"10.20.0.5\"\n");
    let err = Config::parse(&cfg, &bad).unwrap_err();
    assert_eq!(err.field, "customers[0].targets[0].address");
    assert!(
        err.location.ends_with("sallyport.toml:9"),
        "{}",
        err.location
    );

    let tz = base.replace("Europe/Berlin", "Mars/Olympus");
    let err = Config::parse(&cfg, &tz).unwrap_err();
    assert_eq!(err.field, "customers[0].timezone");

    std::fs::write(
        dir.path().join("acme.cedar"),
        "permit(principal, action, resource)\n",
    )
    .unwrap();
    let err = Config::parse(&cfg, base).unwrap_err();
    assert!(err.message.contains("acme.cedar:"), "{err}");
}

#[test]
fn the_documented_example_uses_only_known_keys() {
    let text = include_str!("../../deploy/sallyport.toml");
    let file: crate::file::FileConfig = toml::from_str(text).unwrap();
    assert_eq!(file.requests.pending_expiry_seconds, 86_400);
    assert!(file.customers[0].webhook.is_some());
    assert_eq!(
        file.admin.listen.map(|l| l.into_inner()).as_deref(),
        Some("127.0.0.1:9090")
    );
}

#[test]
fn workflow_settings_annotations_and_webhooks_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sallyport.toml");
    let base = "[server]\nlisten = \"127.0.0.1:1\"\n";
    let err = Config::parse(
        &cfg,
        &format!("{base}[requests]\npending_expiry_seconds = 0\n"),
    )
    .unwrap_err();
    assert_eq!(err.field, "requests.pending_expiry_seconds");
    let err = Config::parse(&cfg, &format!("{base}[audit]\nretention_days = 40000\n")).unwrap_err();
    assert_eq!(err.field, "audit.retention_days");
    assert!(err.fix.contains("0 to keep every segment"), "{err}");
    let kept = Config::parse(&cfg, &format!("{base}[audit]\nretention_days = 0\n")).unwrap();
    assert_eq!(kept.audit.retention_days, None);
    let default = Config::parse(&cfg, base).unwrap();
    assert_eq!(default.audit.retention_days, Some(365));

    let customer = format!("{base}[[customers]]\nid = \"acme\"\npolicy = \"acme.cedar\"\n");
    let permit = "permit(principal, action, resource);\n";
    for (annotation, needle) in [
        ("@approvals(\"two\")", "@approvals(\"two\") is not 0 to 10"),
        ("@max_minutes(\"9999\")", "is not 1 to 480"),
    ] {
        std::fs::write(
            dir.path().join("acme.cedar"),
            format!("{annotation}\n{permit}"),
        )
        .unwrap();
        let err = Config::parse(&cfg, &customer).unwrap_err();
        assert_eq!(err.field, "customers[0].policy");
        assert!(err.message.contains(needle), "{err}");
        assert!(err.message.contains("acme.cedar"), "{err}");
    }
    std::fs::write(
        dir.path().join("acme.cedar"),
        format!("@approvals(\"2\")\n{permit}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("short"), "too short").unwrap();
    std::fs::write(dir.path().join("secret"), "0123456789abcdef0123\n").unwrap();
    let hook = |url: &str, secret: &str| {
        format!("{customer}[customers.webhook]\nurl = \"{url}\"\nsecret_file = \"{secret}\"\n")
    };
    let err = Config::parse(&cfg, &hook("http://hooks.example.com/x", "secret")).unwrap_err();
    assert_eq!(err.field, "customers[0].webhook.url");
    assert!(err.location.ends_with(":7"), "{}", err.location);
    let err = Config::parse(&cfg, &hook("https://hooks.example.com/x", "short")).unwrap_err();
    assert_eq!(err.field, "customers[0].webhook.secret_file");
    assert!(err.message.contains("shorter than 16 bytes"), "{err}");
    let err = Config::parse(&cfg, &hook("https://hooks.example.com/x", "missing")).unwrap_err();
    assert!(err.message.contains("cannot read"), "{err}");
    let ok = Config::parse(&cfg, &hook("https://hooks.example.com/x", "secret")).unwrap();
    let w = ok.customers[0].webhook.as_ref().unwrap();
    assert_eq!((w.secret.len(), w.max_attempts), (20, 5));
    assert!(
        !format!("{ok:?}").contains("0123456789abcdef"),
        "the secret leaks via Debug"
    );
}

#[test]
fn siem_sinks_are_checked_and_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acme.cedar"), "").unwrap();
    let cfg = dir.path().join("sallyport.toml");
    let base = "[server]\nlisten = \"127.0.0.1:1\"\n[[customers]]\nid = \"acme\"\npolicy = \"acme.cedar\"\n[[customers.siem]]\n";
    for (sink, field, needle) in [
        (
            "kind = \"kafka\"\n",
            "customers[0].siem[0].kind",
            "unknown sink kind `kafka`",
        ),
        (
            "kind = \"syslog\"\n",
            "customers[0].siem[0].address",
            "needs `address`",
        ),
        (
            "kind = \"syslog\"\naddress = \"siem\"\n",
            "customers[0].siem[0].address",
            "not HOST:PORT",
        ),
        (
            "kind = \"https\"\n",
            "customers[0].siem[0].url",
            "needs `url`",
        ),
        (
            "kind = \"https\"\nurl = \"http://siem.example/in\"\n",
            "customers[0].siem[0].url",
            "http",
        ),
        (
            "kind = \"syslog-tls\"\naddress = \"siem:6514\"\nca = \"none.pem\"\n",
            "customers[0].siem[0].ca",
            "cannot read",
        ),
        (
            "kind = \"https\"\nurl = \"https://siem.example/in\"\ntoken_file = \"none\"\n",
            "customers[0].siem[0].token_file",
            "cannot read",
        ),
    ] {
        let err = Config::parse(&cfg, &format!("{base}{sink}")).unwrap_err();
        assert_eq!(err.field, field, "{sink}: {err}");
        assert!(err.message.contains(needle), "{sink}: {err}");
    }
    let ok = Config::parse(
        &cfg,
        &format!("{base}kind = \"syslog-tls\"\naddress = \"siem.example:6514\"\n"),
    )
    .unwrap();
    assert_eq!(ok.customers[0].siem.len(), 1);
}

#[test]
fn the_admin_listener_is_off_unless_set_and_port_0_works() {
    let base = "[server]\nlisten = \"127.0.0.1:8443\"\n";
    assert_eq!(parse(base).unwrap().admin.listen, None);
    let c = parse(&format!("{base}[admin]\nlisten = \"127.0.0.1:9090\"\n")).unwrap();
    assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
    let c = parse(&format!("{base}[admin]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    assert_eq!(c.admin.listen, Some("127.0.0.1:0".parse().unwrap()));
    let c = parse(&format!("{base}[admin]\n")).unwrap();
    assert_eq!(c.admin.listen, None, "an empty [admin] table stays off");
}

#[test]
fn a_bad_admin_listen_names_admin_listen_its_line_and_the_fix() {
    let base = "[server]\nlisten = \"127.0.0.1:8443\"\n";
    for bad in [
        "localhost",
        "127.0.0.1",
        "127.0.0.1:99999",
        "",
        "http://127.0.0.1:9090",
    ] {
        let err = parse(&format!("{base}[admin]\nlisten = \"{bad}\"\n")).unwrap_err();
        assert_eq!(err.field, "admin.listen", "{bad}: {err}");
        assert!(
            err.location.ends_with("sallyport.toml:4"),
            "{bad}: {}",
            err.location
        );
        assert!(err.message.contains("is not an address"), "{err}");
        assert!(err.fix.contains("127.0.0.1:9090"), "{err}");
    }
    let err = parse(&format!("{base}[admin]\nlisten = \"127.0.0.1:8443\"\n")).unwrap_err();
    assert_eq!(err.field, "admin.listen");
    assert!(err.message.contains("also server.listen"), "{err}");
    let err = parse(&format!("{base}[admin]\nlisten = 9090\n")).unwrap_err();
    assert_eq!(err.field, "admin.listen", "a wrong type names its key");
    assert!(
        err.location.ends_with(":4") && err.message.contains("expected a string"),
        "{err}"
    );
    let err = parse(&format!("{base}[admin]\nport = 9090\n")).unwrap_err();
    assert_eq!(err.field, "admin.port", "an unknown key names its path");
    assert!(
        err.fix.contains("listen"),
        "the fix names the documented key: {err}"
    );
}
