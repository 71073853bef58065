//! OCSF export of the audit trail: maps one parsed Sallyport audit record (one chain line, see
//! `docs/audit-format.md`) to one event of the Open Cybersecurity Schema Framework, version
//! [`OCSF_VERSION`]. This module owns the mapping only: it is pure (no I/O, no clock), takes records
//! as `serde_json::Value` so that it also maps records written by other broker versions, and never
//! fails: an odd record still becomes a schema-valid event, with what could not be mapped kept in
//! `unmapped`. `tests/ocsf/validate.py` checks the output against the official JSON schema, and
//! `docs/ocsf.md` documents the mapping for SIEM authors.
//!
//! | event | class | activity_id | notes |
//! |---|---|---|---|
//! | `auth_failure` | Authentication (3002) | 1 Logon | `user` and `actor.user` from `actor`; `service` = Sallyport; `dst_endpoint` = target when known |
//! | `signed_out` | Authentication (3002) | 2 Logoff | the person, their address and the service |
//! | `signed_in`, `signin_failed` | Authentication (3002) | 1 Logon | as `auth_failure`; `auth_protocol` "OpenID Connect" (99 Other) and `is_mfa` from `idp.mfa` |
//! | `decision`, outcome `deny` | Network Activity (4001) | 5 Refuse | profile `security_control`: `action_id` 2 Denied, `disposition_id` 2 Blocked |
//! | `decision`, outcome `allow` | Network Activity (4001) | 99 Other, `activity_name` "Allow" | not Open: `tunnel_open` or `tunnel_failed` follows for the same session; `action_id` 1 Allowed, `disposition_id` 1 Allowed |
//! | `tunnel_open` | Network Activity (4001) | 1 Open | |
//! | `tunnel_close` | Network Activity (4001) | 2 Close | `traffic.bytes_in` = `bytes_down`, `traffic.bytes_out` = `bytes_up`, `duration` = `duration_ms`, `start_time`/`end_time` |
//! | `tunnel_failed` | Network Activity (4001) | 4 Fail | |
//! | `request_filed` | API Activity (6003) | 1 Create | |
//! | `grant_minted` | API Activity (6003) | 1 Create | |
//! | `approval_recorded`, `request_approved`, `request_denied`, `request_expired`, `request_cancelled` | API Activity (6003) | 3 Update | the request changes state |
//! | `grant_revoked` | API Activity (6003) | 3 Update | the grant is marked revoked, not removed |
//! | `session_ended` | API Activity (6003) | 4 Delete | `DELETE /v1/sessions/{id}` |
//! | `segments_retired` | API Activity (6003) | 4 Delete | retention deleted old segments of the chain |
//! | `identity_locked` | Account Change (3001) | 9 Lock | `user` = the locked identity (`subject`), or the certificate when its holder is unknown |
//! | `identity_unlocked` | Account Change (3001) | 12 Unlock | as above |
//! | `access_refused` | API Activity (6003) | 99 Other, `activity_name` "Refuse" | a `/v1` call refused for the caller's role or tenant |
//! | `refusals_aggregated` | the class and activity of its `aggregated_event` | as that event | `count`, `start_time` = `first_seen`, `end_time` = `last_seen` |
//! | `webhook_failed`, `torn_tail_quarantined`, `policy_loaded`, any other event | API Activity (6003) | 99 Other, `activity_name` = event | |
//!
//! Every event: `type_uid` = `class_uid` × 100 + `activity_id`; `time` = the record's `time` in epoch
//! milliseconds (0 if unparseable; the original string is always in `metadata.original_time`);
//! `status_id` 1 Success for `allow`/`success`, 2 Failure for `deny`/`failure`, 99 Other for any other
//! outcome, 0 Unknown when missing, with `status_code` = `outcome`; `severity_id` 1 Informational on
//! success, 2 Low on deny/failure, 3 Medium for `torn_tail_quarantined`; `message` and `status_detail`
//! = `reason`; `metadata.uid` = `<customer or _broker>:<seq>`, `metadata.sequence` = `seq`,
//! `metadata.tenant_uid` = `customer`, `metadata.event_code` = `event`; `src_endpoint.ip` =
//! `source_ip`, or `{name, svc_name: "sallyport"}` (the broker itself) where API Activity needs a
//! source and the record has none; network events declare the `host` profile to carry
//! `actor.user`. `unmapped` holds every member of the record except `time` and `reason` (kept
//! verbatim above), so `seq`, `hash`, `prev_hash`, `customer`, `grant_id`, `session_id`,
//! `request_id`, `policy_ids`, `subject`, `expires_at` and any future member reach the SIEM for gap
//! detection and correlation.
//!
//! Identities (`actor`, and the `user` of an authentication): a SPIFFE id gives `uid` = the id,
//! `name` = `<scope>/<name>` (`admin/<name>` for admins), type User; `broker` and `policy` are System; `break-glass:<operator>`
//! is Admin named `<operator>`; `unauthenticated` is a user of unknown type with no `uid`. A record
//! without an actor gets `actor.app_name` = "Sallyport" where OCSF needs an actor.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

/// The OCSF schema version the output claims (metadata.version).
pub const OCSF_VERSION: &str = "1.7.0";

const PRODUCT: &str = "Sallyport";
/// Chain name of the records that concern no customer.
const BROKER_CHAIN: &str = "_broker";
/// `svc_name` of the broker itself, as an endpoint.
const BROKER_SVC: &str = "sallyport";
/// `activity_id` / `status_id` "Other".
const OTHER: u64 = 99;

/// One OCSF event class.
struct Class {
    uid: u64,
    name: &'static str,
    category_uid: u64,
    category_name: &'static str,
}

const AUTHENTICATION: Class = Class {
    uid: 3002,
    name: "Authentication",
    category_uid: 3,
    category_name: "Identity & Access Management",
};
const NETWORK_ACTIVITY: Class = Class {
    uid: 4001,
    name: "Network Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
const ACCOUNT_CHANGE: Class = Class {
    uid: 3001,
    name: "Account Change",
    category_uid: 3,
    category_name: "Identity & Access Management",
};
const API_ACTIVITY: Class = Class {
    uid: 6003,
    name: "API Activity",
    category_uid: 6,
    category_name: "Application Activity",
};

/// An activity: its id, and its name (the enum caption, or the source's own label for 99 Other).
struct Activity {
    id: u64,
    name: String,
}

impl Activity {
    fn new(id: u64, name: &str) -> Self {
        Self {
            id,
            name: name.to_owned(),
        }
    }

    /// The caption `type_name` uses: "Other" whatever the source label.
    fn caption(&self) -> &str {
        if self.id == OTHER {
            "Other"
        } else {
            &self.name
        }
    }
}

/// Read access to the record's members.
struct Record<'a>(Option<&'a Map<String, Value>>);

impl<'a> Record<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.and_then(|m| m.get(key))
    }

    /// A member that is a non-empty string.
    fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    fn u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    fn event(&self) -> &'a str {
        self.str("event").unwrap_or("unknown")
    }

    /// The chain the record belongs to: its customer, or `_broker`.
    fn chain(&self) -> &'a str {
        self.str("customer").unwrap_or(BROKER_CHAIN)
    }
}

/// Maps one Sallyport audit record (as parsed from a chain line) to one OCSF event.
pub fn to_ocsf(record: &serde_json::Value, product_version: &str) -> serde_json::Value {
    let r = Record(record.as_object());
    // An aggregate is mapped as the refusals it stands for, with their count and time span.
    let aggregate = r.event() == "refusals_aggregated";
    let event = match r.str("aggregated_event") {
        Some(kind) if aggregate => kind,
        _ => r.event(),
    };
    let mut out = match event {
        "auth_failure" | "signed_in" | "signin_failed" => {
            authentication(&r, Activity::new(1, "Logon"))
        }
        "signed_out" => authentication(&r, Activity::new(2, "Logoff")),
        "decision" | "tunnel_open" | "tunnel_close" | "tunnel_failed" => {
            network_activity(&r, event)
        }
        "identity_locked" | "identity_unlocked" => account_change(&r, event),
        _ => api_activity(&r, event),
    };
    if aggregate {
        if let Some(count) = r.u64("count") {
            out.insert("count".into(), json!(count));
        }
        for (from, to) in [("first_seen", "start_time"), ("last_seen", "end_time")] {
            if let Some(ms) = r.str(from).and_then(epoch_ms) {
                out.insert(to.into(), json!(ms));
            }
        }
    }
    common(&r, product_version, &mut out);
    Value::Object(out)
}

/// Authentication (3002): a TLS handshake or a grant that failed to authenticate, or a sign-in at
/// an identity provider (OpenID Connect, with whether it was multi-factor).
fn authentication(r: &Record<'_>, activity: Activity) -> Map<String, Value> {
    let mut out = header(&AUTHENTICATION, &activity);
    if let Some(idp) = r.get("idp").and_then(Value::as_object) {
        out.insert("auth_protocol_id".into(), json!(OTHER));
        out.insert("auth_protocol".into(), json!("OpenID Connect"));
        if let Some(mfa) = idp.get("mfa").and_then(Value::as_bool) {
            out.insert("is_mfa".into(), json!(mfa));
        }
    }
    let user = user(r.str("actor")).unwrap_or_else(|| unknown_user("unknown"));
    out.insert("actor".into(), json!({ "user": user.clone() }));
    out.insert("user".into(), user);
    // The service authenticated to; also satisfies the class's "service or dst_endpoint" rule.
    out.insert("service".into(), json!({ "name": PRODUCT }));
    out.insert("logon_type_id".into(), json!(3));
    out.insert("logon_type".into(), json!("Network"));
    if let Some(src) = source_endpoint(r) {
        out.insert("src_endpoint".into(), src);
    }
    if let Some(dst) = target_endpoint(r) {
        out.insert("dst_endpoint".into(), dst);
    }
    out
}

/// Account Change (3001): an identity, or one certificate, locked or unlocked.
fn account_change(r: &Record<'_>, event: &str) -> Map<String, Value> {
    let activity = if event == "identity_locked" {
        Activity::new(9, "Lock")
    } else {
        Activity::new(12, "Unlock")
    };
    let mut out = header(&ACCOUNT_CHANGE, &activity);
    // The account changed: the locked identity, or the certificate when its holder is unknown.
    let user = user(r.str("subject"))
        .or_else(|| {
            let sha256 = r.str("cert_sha256")?;
            let name = match r.str("cert_serial") {
                Some(serial) => format!("certificate {serial}"),
                None => "certificate".to_owned(),
            };
            Some(json!({ "uid": format!("sha256:{sha256}"), "name": name, "type_id": 0, "type": "Unknown" }))
        })
        .unwrap_or_else(|| unknown_user("unknown"));
    out.insert("user".into(), user);
    out.insert("actor".into(), actor(r));
    out.insert(
        "src_endpoint".into(),
        source_endpoint(r).unwrap_or_else(broker_endpoint),
    );
    out
}

/// Network Activity (4001): tunnel decisions, opens, closes and failures.
fn network_activity(r: &Record<'_>, event: &str) -> Map<String, Value> {
    let outcome = r.str("outcome");
    let decision = event == "decision";
    let activity = match (event, outcome) {
        ("decision", Some("deny")) => Activity::new(5, "Refuse"),
        ("decision", Some("allow")) => Activity::new(OTHER, "Allow"),
        ("tunnel_open", _) => Activity::new(1, "Open"),
        ("tunnel_close", _) => Activity::new(2, "Close"),
        ("tunnel_failed", _) => Activity::new(4, "Fail"),
        _ => Activity::new(OTHER, event),
    };
    let mut out = header(&NETWORK_ACTIVITY, &activity);
    // `actor` is a `host` profile attribute of this class.
    let mut profiles = vec!["host"];
    out.insert("actor".into(), actor(r));
    let src = source_endpoint(r);
    let dst = target_endpoint(r);
    if src.is_none() && dst.is_none() {
        // The class needs one of them: the attempt reached the broker.
        out.insert("dst_endpoint".into(), broker_endpoint());
    }
    if let Some(src) = src {
        out.insert("src_endpoint".into(), src);
    }
    if let Some(dst) = dst {
        out.insert("dst_endpoint".into(), dst);
    }
    if decision {
        let allowed = match outcome {
            Some("allow") => Some(true),
            Some("deny") => Some(false),
            _ => None,
        };
        if let Some(allowed) = allowed {
            profiles.push("security_control");
            let (action, disposition) = if allowed {
                ((1, "Allowed"), (1, "Allowed"))
            } else {
                ((2, "Denied"), (2, "Blocked"))
            };
            out.insert("action_id".into(), json!(action.0));
            out.insert("action".into(), json!(action.1));
            out.insert("disposition_id".into(), json!(disposition.0));
            out.insert("disposition".into(), json!(disposition.1));
        }
    }
    if event == "tunnel_close" {
        let up = r.u64("bytes_up");
        let down = r.u64("bytes_down");
        let mut traffic = Map::new();
        if let Some(down) = down {
            traffic.insert("bytes_in".into(), json!(down));
        }
        if let Some(up) = up {
            traffic.insert("bytes_out".into(), json!(up));
        }
        if let (Some(up), Some(down)) = (up, down)
            && let Some(total) = up.checked_add(down)
        {
            traffic.insert("bytes".into(), json!(total));
        }
        if !traffic.is_empty() {
            out.insert("traffic".into(), Value::Object(traffic));
        }
        if let Some(ms) = r.u64("duration_ms") {
            out.insert("duration".into(), json!(ms));
            if let Some(end) = r.str("time").and_then(epoch_ms)
                && let Some(start) = i64::try_from(ms).ok().and_then(|d| end.checked_sub(d))
            {
                out.insert("start_time".into(), json!(start));
                out.insert("end_time".into(), json!(end));
            }
        }
    }
    out.insert("metadata".into(), json!({ "profiles": profiles }));
    out
}

/// API Activity (6003): requests, approvals, grants, sessions ended through the API, and the
/// broker's own events (failed webhooks, quarantined torn tails, events this version doesn't know).
fn api_activity(r: &Record<'_>, event: &str) -> Map<String, Value> {
    let activity = match event {
        "request_filed" | "grant_minted" => Activity::new(1, "Create"),
        "approval_recorded" | "request_approved" | "request_denied" | "request_expired"
        | "request_cancelled" | "grant_revoked" => Activity::new(3, "Update"),
        "session_ended" | "segments_retired" => Activity::new(4, "Delete"),
        "access_refused" => Activity::new(OTHER, "Refuse"),
        _ => Activity::new(OTHER, event),
    };
    let mut out = header(&API_ACTIVITY, &activity);
    out.insert("actor".into(), actor(r));
    out.insert(
        "api".into(),
        json!({ "operation": event, "service": { "name": PRODUCT } }),
    );
    out.insert(
        "src_endpoint".into(),
        source_endpoint(r).unwrap_or_else(broker_endpoint),
    );
    let mut resources = Vec::new();
    for (key, kind) in [
        ("request_id", "request"),
        ("grant_id", "grant"),
        ("session_id", "session"),
    ] {
        if let Some(id) = r.str(key) {
            resources.push(json!({ "uid": id, "type": kind }));
        }
    }
    if let Some(target) = target_name(r) {
        resources.push(json!({ "name": target, "type": "target" }));
    }
    if matches!(event, "torn_tail_quarantined" | "segments_retired") {
        resources.push(json!({ "name": r.chain(), "type": "audit_chain" }));
    }
    if !resources.is_empty() {
        out.insert("resources".into(), Value::Array(resources));
    }
    out
}

/// The class and activity members every event starts with.
fn header(class: &Class, activity: &Activity) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("class_uid".into(), json!(class.uid));
    out.insert("class_name".into(), json!(class.name));
    out.insert("category_uid".into(), json!(class.category_uid));
    out.insert("category_name".into(), json!(class.category_name));
    out.insert("activity_id".into(), json!(activity.id));
    out.insert("activity_name".into(), json!(activity.name));
    out.insert("type_uid".into(), json!(class.uid * 100 + activity.id));
    out.insert(
        "type_name".into(),
        json!(format!("{}: {}", class.name, activity.caption())),
    );
    out
}

/// Time, status, severity, message, metadata and unmapped: the same for every class.
fn common(r: &Record<'_>, product_version: &str, out: &mut Map<String, Value>) {
    let time = r.str("time");
    out.insert("time".into(), json!(time.and_then(epoch_ms).unwrap_or(0)));

    let outcome = r.str("outcome");
    let (status_id, status) = match outcome {
        Some("allow" | "success") => (1, "Success"),
        Some("deny" | "failure") => (2, "Failure"),
        Some(other) => (OTHER, other),
        None => (0, "Unknown"),
    };
    out.insert("status_id".into(), json!(status_id));
    out.insert("status".into(), json!(status));
    if let Some(outcome) = outcome {
        out.insert("status_code".into(), json!(outcome));
    }
    let (severity_id, severity) = match (r.event(), status_id) {
        ("torn_tail_quarantined", _) => (3, "Medium"),
        (_, 1) => (1, "Informational"),
        (_, 2) => (2, "Low"),
        _ => (0, "Unknown"),
    };
    out.insert("severity_id".into(), json!(severity_id));
    out.insert("severity".into(), json!(severity));
    if let Some(reason) = r.str("reason") {
        out.insert("message".into(), json!(reason));
        out.insert("status_detail".into(), json!(reason));
    }

    // Class builders may have started the metadata (profiles).
    let mut metadata = match out.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    metadata.insert("version".into(), json!(OCSF_VERSION));
    metadata.insert(
        "product".into(),
        json!({ "name": PRODUCT, "vendor_name": PRODUCT, "version": product_version }),
    );
    let seq = r.get("seq").filter(|v| v.is_u64());
    let seq_text = seq.map_or_else(|| "unknown".to_owned(), Value::to_string);
    metadata.insert("uid".into(), json!(format!("{}:{seq_text}", r.chain())));
    if let Some(seq) = seq {
        metadata.insert("sequence".into(), seq.clone());
    }
    if let Some(customer) = r.str("customer") {
        metadata.insert("tenant_uid".into(), json!(customer));
    }
    metadata.insert("event_code".into(), json!(r.event()));
    if let Some(time) = time {
        metadata.insert("original_time".into(), json!(time));
    }
    out.insert("metadata".into(), Value::Object(metadata));

    // Everything but what is kept verbatim above, so nothing the chain carries is lost.
    let unmapped: Map<String, Value> =
        r.0.into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "time" && k.as_str() != "reason")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    if !unmapped.is_empty() {
        out.insert("unmapped".into(), Value::Object(unmapped));
    }
}

/// Epoch milliseconds of an RFC 3339 timestamp.
fn epoch_ms(time: &str) -> Option<i64> {
    time.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// The OCSF user for an `actor` value.
fn user(actor: Option<&str>) -> Option<Value> {
    let actor = actor?;
    if let Some(path) = actor.strip_prefix("spiffe://") {
        // spiffe://<trust-domain>/<role>/<scope>/<name>
        let parts: Vec<&str> = path.split('/').collect();
        let name = match parts.as_slice() {
            [_, _, scope, name] => format!("{scope}/{name}"),
            [_, "admin", name] => format!("admin/{name}"),
            _ => actor.to_owned(),
        };
        return Some(json!({ "uid": actor, "name": name, "type_id": 1, "type": "User" }));
    }
    if let Some(operator) = actor.strip_prefix("break-glass:") {
        let name = if operator.is_empty() { actor } else { operator };
        return Some(json!({ "uid": actor, "name": name, "type_id": 2, "type": "Admin" }));
    }
    Some(match actor {
        "broker" | "policy" => {
            json!({ "uid": actor, "name": actor, "type_id": 3, "type": "System" })
        }
        "unauthenticated" => unknown_user(actor),
        _ => json!({ "uid": actor, "name": actor, "type_id": 0, "type": "Unknown" }),
    })
}

/// A user known only by a label.
fn unknown_user(name: &str) -> Value {
    json!({ "name": name, "type_id": 0, "type": "Unknown" })
}

/// `actor`: the user, or the broker as an application when the record names no actor.
fn actor(r: &Record<'_>) -> Value {
    match user(r.str("actor")) {
        Some(user) => json!({ "user": user }),
        None => json!({ "app_name": PRODUCT }),
    }
}

/// The technician's address, when the record has a valid one.
fn source_endpoint(r: &Record<'_>) -> Option<Value> {
    let ip = r.str("source_ip")?;
    ip.parse::<IpAddr>()
        .ok()
        .map(|ip| json!({ "ip": ip.to_string() }))
}

/// The broker itself, as an endpoint.
fn broker_endpoint() -> Value {
    json!({ "name": BROKER_SVC, "svc_name": BROKER_SVC })
}

/// `<target>.<customer>`, the name technicians connect to (a refusal may already carry it whole).
fn target_name(r: &Record<'_>) -> Option<String> {
    let target = r.str("target")?;
    Some(match r.str("customer") {
        Some(customer) if !target.contains('.') => format!("{target}.{customer}"),
        _ => target.to_owned(),
    })
}

/// The target as an endpoint: no address is known here, only its name.
fn target_endpoint(r: &Record<'_>) -> Option<Value> {
    let name = target_name(r)?;
    Some(json!({ "hostname": name, "name": name }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f2c4e1b7a0d3c6f8e5b2a1d4c7f0e3b6a9d2c5f8e1b4a7d0c3f6e9b2a5d8c1f";
    const ALICE: &str = "spiffe://sallyport.local/technician/northwind/alice";
    /// 2026-03-14T09:26:53.589793Z in epoch milliseconds.
    const MS: i64 = 1_773_480_413_589;

    fn record(extra: Value) -> Value {
        let mut r = json!({
            "seq": 42,
            "time": "2026-03-14T09:26:53.589793Z",
            "customer": "acme",
            "actor": ALICE,
            "target": "db1",
            "grant_id": "g-5b0e6c1d2f3a4b5c6d7e8f9a0b1c2d3e",
            "session_id": "s-0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            "source_ip": "203.0.113.7",
            "outcome": "success",
            "reason": "tunnel open",
            "policy_ids": [],
            "prev_hash": "0".repeat(64),
            "hash": HASH,
        });
        let m = r.as_object_mut().unwrap();
        for (k, v) in extra.as_object().unwrap() {
            m.insert(k.clone(), v.clone());
        }
        r
    }

    fn check(ev: &Value, class: u64, activity: u64) {
        assert_eq!(ev["class_uid"], class);
        assert_eq!(ev["activity_id"], activity);
        assert_eq!(ev["type_uid"], class * 100 + activity);
        assert_eq!(ev["time"], MS);
        assert_eq!(ev["unmapped"]["seq"], 42);
        assert_eq!(ev["unmapped"]["hash"], HASH);
        assert_eq!(ev["metadata"]["sequence"], 42);
        assert_eq!(ev["metadata"]["uid"], "acme:42");
        assert_eq!(ev["metadata"]["version"], OCSF_VERSION);
        assert_eq!(ev["metadata"]["product"]["name"], "Sallyport");
        assert_eq!(ev["metadata"]["product"]["vendor_name"], "Sallyport");
        assert_eq!(ev["metadata"]["product"]["version"], "0.1.0");
    }

    #[test]
    fn sign_out_is_a_logoff() {
        let ev = to_ocsf(
            &record(json!({
                "event": "signed_out", "actor": "spiffe://sallyport.local/approver/acme/bob",
                "customer": "acme", "target": null, "grant_id": null, "session_id": null,
                "outcome": "success", "reason": "signed out of the web console as acme/bob",
            })),
            "0.1.0",
        );
        assert_eq!(ev["class_uid"], 3002);
        assert_eq!(ev["activity_id"], 2);
        assert_eq!(ev["type_uid"], 300_202);
        assert_eq!(ev["status_id"], 1);
        assert_eq!(ev["user"]["name"], "acme/bob");
    }

    #[test]
    fn auth_failure_is_a_failed_logon() {
        let ev = to_ocsf(
            &record(json!({
                "event": "auth_failure", "actor": "unauthenticated", "customer": null,
                "target": null, "grant_id": null, "session_id": null,
                "outcome": "deny", "reason": "no client certificate",
            })),
            "0.1.0",
        );
        assert_eq!(ev["class_uid"], 3002);
        assert_eq!(ev["activity_id"], 1);
        assert_eq!(ev["type_uid"], 300_201);
        assert_eq!(ev["time"], MS);
        assert_eq!(ev["unmapped"]["seq"], 42);
        assert_eq!(ev["unmapped"]["hash"], HASH);
        assert_eq!(ev["metadata"]["uid"], "_broker:42");
        assert_eq!(ev["status_id"], 2);
        assert_eq!(ev["user"]["name"], "unauthenticated");
        assert_eq!(ev["src_endpoint"]["ip"], "203.0.113.7");
        assert_eq!(ev["message"], "no client certificate");
        assert!(ev.get("dst_endpoint").is_none());
        assert_eq!(ev["service"]["name"], "Sallyport");
    }

    #[test]
    fn tunnel_close_is_a_network_close_with_traffic() {
        let ev = to_ocsf(
            &record(json!({
                "event": "tunnel_close", "reason": "client closed",
                "bytes_up": 1200, "bytes_down": 48000, "duration_ms": 60000,
            })),
            "0.1.0",
        );
        check(&ev, 4001, 2);
        assert_eq!(ev["traffic"]["bytes_in"], 48000);
        assert_eq!(ev["traffic"]["bytes_out"], 1200);
        assert_eq!(ev["traffic"]["bytes"], 49200);
        assert_eq!(ev["duration"], 60000);
        assert_eq!(ev["start_time"], MS - 60000);
        assert_eq!(ev["end_time"], MS);
        assert_eq!(ev["dst_endpoint"]["hostname"], "db1.acme");
        assert_eq!(ev["src_endpoint"]["ip"], "203.0.113.7");
        assert_eq!(ev["actor"]["user"]["uid"], ALICE);
        assert_eq!(ev["actor"]["user"]["name"], "northwind/alice");
        assert_eq!(ev["metadata"]["profiles"], json!(["host"]));
    }

    #[test]
    fn decisions_refuse_or_allow() {
        let deny = to_ocsf(
            &record(json!({"event": "decision", "outcome": "deny", "policy_ids": ["p-night"]})),
            "0.1.0",
        );
        check(&deny, 4001, 5);
        assert_eq!(deny["status_id"], 2);
        assert_eq!(deny["action_id"], 2);
        assert_eq!(deny["unmapped"]["policy_ids"], json!(["p-night"]));
        assert_eq!(
            deny["metadata"]["profiles"],
            json!(["host", "security_control"])
        );
        let allow = to_ocsf(
            &record(json!({"event": "decision", "outcome": "allow"})),
            "0.1.0",
        );
        check(&allow, 4001, 99);
        assert_eq!(allow["activity_name"], "Allow");
        assert_eq!(allow["type_name"], "Network Activity: Other");
        assert_eq!(allow["status_id"], 1);
        assert_eq!(allow["action_id"], 1);
        for (event, activity) in [("tunnel_open", 1), ("tunnel_failed", 4)] {
            check(
                &to_ocsf(&record(json!({"event": event})), "0.1.0"),
                4001,
                activity,
            );
        }
    }

    #[test]
    fn grant_minted_is_an_api_create() {
        let ev = to_ocsf(
            &record(json!({
                "event": "grant_minted", "actor": "break-glass:ops-oncall", "session_id": null,
                "source_ip": null, "subject": ALICE, "request_id": "r-1",
            })),
            "0.1.0",
        );
        check(&ev, 6003, 1);
        assert_eq!(ev["api"]["operation"], "grant_minted");
        assert_eq!(ev["actor"]["user"]["name"], "ops-oncall");
        assert_eq!(ev["actor"]["user"]["type_id"], 2);
        assert_eq!(ev["src_endpoint"]["svc_name"], "sallyport");
        assert_eq!(ev["unmapped"]["subject"], ALICE);
        let kinds: Vec<&str> = ev["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["request", "grant", "target"]);
    }

    #[test]
    fn api_activities() {
        for (event, activity) in [
            ("request_filed", 1),
            ("approval_recorded", 3),
            ("request_approved", 3),
            ("request_denied", 3),
            ("request_expired", 3),
            ("request_cancelled", 3),
            ("grant_revoked", 3),
            ("session_ended", 4),
            ("segments_retired", 4),
            ("webhook_failed", 99),
            ("torn_tail_quarantined", 99),
            ("something_new", 99),
        ] {
            let ev = to_ocsf(&record(json!({ "event": event })), "0.1.0");
            check(&ev, 6003, activity);
            assert_eq!(ev["api"]["operation"], event);
            if activity == 99 {
                assert_eq!(ev["activity_name"], event);
            }
        }
    }

    #[test]
    fn locks_are_account_changes() {
        let ev = to_ocsf(
            &record(json!({
                "event": "identity_locked", "actor": "spiffe://sallyport.local/admin/root",
                "subject": ALICE, "lock_id": "l-1", "lock_scope": "*", "grant_id": null,
                "session_id": null, "target": null,
            })),
            "0.1.0",
        );
        check(&ev, 3001, 9);
        assert_eq!(ev["type_name"], "Account Change: Lock");
        assert_eq!(ev["user"]["uid"], ALICE);
        assert_eq!(ev["user"]["name"], "northwind/alice");
        assert_eq!(ev["actor"]["user"]["name"], "admin/root");
        assert_eq!(ev["unmapped"]["lock_id"], "l-1");
        assert_eq!(ev["src_endpoint"]["ip"], "203.0.113.7");
        let ev = to_ocsf(
            &record(json!({
                "event": "identity_unlocked", "cert_serial": "5f", "cert_sha256": "ab",
                "source_ip": null,
            })),
            "0.1.0",
        );
        check(&ev, 3001, 12);
        assert_eq!(ev["user"]["uid"], "sha256:ab");
        assert_eq!(ev["user"]["name"], "certificate 5f");
        assert_eq!(ev["src_endpoint"]["svc_name"], "sallyport");
    }

    #[test]
    fn api_refusals_and_aggregates_map_as_the_refusals_they_are() {
        let refused = to_ocsf(
            &record(json!({"event": "access_refused", "outcome": "deny", "request_id": "r-1"})),
            "0.1.0",
        );
        check(&refused, 6003, 99);
        assert_eq!(refused["activity_name"], "Refuse");
        assert_eq!(refused["status_id"], 2);
        let aggregate = to_ocsf(
            &record(json!({
                "event": "refusals_aggregated", "outcome": "deny", "aggregated_event": "decision",
                "count": 1995, "first_seen": "2026-03-14T09:25:53.589793Z",
                "last_seen": "2026-03-14T09:26:53.589793Z",
            })),
            "0.1.0",
        );
        check(&aggregate, 4001, 5);
        assert_eq!(aggregate["count"], 1995);
        assert_eq!(aggregate["start_time"], MS - 60_000);
        assert_eq!(aggregate["end_time"], MS);
        assert_eq!(aggregate["metadata"]["event_code"], "refusals_aggregated");
        // Of refused API calls: API Activity, with the operation of the refusals.
        let aggregate = to_ocsf(
            &record(json!({
                "event": "refusals_aggregated", "outcome": "deny",
                "aggregated_event": "access_refused", "count": 3,
            })),
            "0.1.0",
        );
        check(&aggregate, 6003, 99);
        assert_eq!(aggregate["api"]["operation"], "access_refused");
    }

    #[test]
    fn odd_records_still_map() {
        let ev = to_ocsf(&json!({"time": "yesterday", "actor": null}), "0.1.0");
        assert_eq!(ev["class_uid"], 6003);
        assert_eq!(ev["time"], 0);
        assert_eq!(ev["metadata"]["original_time"], "yesterday");
        assert_eq!(ev["metadata"]["uid"], "_broker:unknown");
        assert_eq!(ev["actor"]["app_name"], "Sallyport");
        assert_eq!(ev["status_id"], 0);
        let ev = to_ocsf(&json!(null), "0.1.0");
        assert_eq!(ev["api"]["operation"], "unknown");
        assert!(ev.get("unmapped").is_none());
        // A tunnel record with neither address nor target still names an endpoint.
        let ev = to_ocsf(
            &json!({"event": "tunnel_failed", "source_ip": "not-an-ip"}),
            "0.1.0",
        );
        assert_eq!(ev["dst_endpoint"]["svc_name"], "sallyport");
        assert_eq!(ev["unmapped"]["source_ip"], "not-an-ip");
    }
}
