//! Unit tests of the registry: every family is rendered, recording moves the series it names, and
//! nothing but configured customers becomes a `customer` label.

use super::*;

fn acme() -> CustomerId {
    "acme".parse().unwrap()
}

/// The value of the sample line starting with `series ` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[test]
fn every_family_is_rendered_from_the_start() {
    let m = Metrics::new([&acme()]);
    let _ = m.siem_sink(&acme(), 0);
    let text = m.encode();
    for family in [
        "sallyport_tunnels_opened",
        "sallyport_tunnels_refused",
        "sallyport_tunnels_live",
        "sallyport_tunnel_bytes",
        "sallyport_requests",
        "sallyport_request_approval_wait_seconds",
        "sallyport_webhook_failures",
        "sallyport_webhook_queued",
        "sallyport_siem_failures",
        "sallyport_siem_lag_seconds",
        "sallyport_decision_duration_seconds",
        "sallyport_audit_commit_duration_seconds",
        "sallyport_audit_failures",
        "sallyport_handshake_failures",
        "sallyport_rate_limited",
        "sallyport_handshake_slots_refused",
        "sallyport_live_sessions",
        "sallyport_handshakes_in_progress",
        "sallyport_locks_active",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    // Every customer series exists at zero before anything happened.
    assert_eq!(
        sample(&text, "sallyport_tunnels_opened_total{customer=\"acme\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "sallyport_requests{customer=\"acme\",state=\"pending\"}"
        ),
        Some(0.0)
    );
}

#[test]
fn recording_moves_the_series_it_names() {
    let m = Metrics::new([&acme()]);
    let c = m.customer("acme").unwrap();
    c.tunnel_opened();
    c.tunnel_opened();
    c.tunnel_closed();
    c.bytes_up(5);
    c.bytes_down(7);
    c.set_requests(RequestState::Approved, 3);
    c.approved_after(Duration::from_secs(2));
    m.tunnel_refused(Some("acme"), TunnelRefusal::PolicyDenied);
    m.handshake_failed(HandshakeFailure::NoCertificate);
    m.rate_limited(Limiter::HandshakeSlots);
    m.set_locks_active(2);
    m.siem_sink(&acme(), 1).set_lag(Duration::from_secs(9));
    let text = m.encode();
    for (series, value) in [
        ("sallyport_tunnels_opened_total{customer=\"acme\"}", 2.0),
        ("sallyport_tunnels_live{customer=\"acme\"}", 1.0),
        (
            "sallyport_tunnel_bytes_total{customer=\"acme\",direction=\"up\"}",
            5.0,
        ),
        (
            "sallyport_tunnel_bytes_total{customer=\"acme\",direction=\"down\"}",
            7.0,
        ),
        (
            "sallyport_requests{customer=\"acme\",state=\"approved\"}",
            3.0,
        ),
        (
            "sallyport_request_approval_wait_seconds_count{customer=\"acme\"}",
            1.0,
        ),
        (
            "sallyport_tunnels_refused_total{customer=\"acme\",reason=\"policy_denied\"}",
            1.0,
        ),
        (
            "sallyport_handshake_failures_total{kind=\"no_certificate\"}",
            1.0,
        ),
        (
            "sallyport_rate_limited_total{limiter=\"handshake_slots\"}",
            1.0,
        ),
        // The older name counts the same refusals.
        ("sallyport_handshake_slots_refused_total", 1.0),
        ("sallyport_locks_active", 2.0),
        (
            "sallyport_siem_lag_seconds{customer=\"acme\",sink=\"1\"}",
            9.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}:\n{text}");
    }
}

#[test]
fn only_configured_customers_become_labels() {
    let m = Metrics::new([&acme()]);
    m.tunnel_refused(Some("mallory-chose-this"), TunnelRefusal::UnknownTarget);
    m.tunnel_refused(None, TunnelRefusal::MissingGrant);
    assert!(m.customer("mallory-chose-this").is_none());
    let text = m.encode();
    assert!(!text.contains("mallory"), "{text}");
    assert_eq!(
        sample(
            &text,
            "sallyport_tunnels_refused_total{customer=\"_none\",reason=\"unknown_target\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "sallyport_tunnels_refused_total{customer=\"_none\",reason=\"missing_grant\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn a_customer_added_later_gets_its_series_once() {
    let m = Metrics::default();
    let globex: CustomerId = "globex".parse().unwrap();
    let a = m.add_customer(&globex);
    a.tunnel_opened();
    let b = m.add_customer(&globex);
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(
        sample(
            &m.encode(),
            "sallyport_tunnels_opened_total{customer=\"globex\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn request_states_parse_the_store_spelling() {
    for s in RequestState::ALL {
        assert_eq!(RequestState::parse(s.as_str()), Some(s));
    }
    assert_eq!(RequestState::parse("lost"), None);
}
