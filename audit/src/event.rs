//! One audit record: what happened ([`EventKind`], [`Outcome`]), the [`AuditEvent`] a caller hands the
//! writer, and the line format: [`render`] writes a record line and its hash, [`check_line`] checks one.
//!
//! Ids are the `ids` crate's newtypes; `actor` and `target` stay text, since a refused client may
//! name anything (`unauthenticated`, a target that does not exist) and the record keeps what it said,
//! bounded: [`render`] cuts `actor`, `target` and `reason` to [`MAX_ACTOR`], [`MAX_TARGET`] and
//! [`MAX_REASON`] characters with a marker ([`clip`]), so no client chooses how long a record is.

use std::borrow::Cow;
use std::net::IpAddr;

use sallyport_ids::cert::{CertFingerprint, CertSerial};
use sallyport_ids::{CustomerId, GrantId, LockId, RequestId, SessionId, SpiffeId};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::AuditError;
use crate::idp::IdpEvidence;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A TLS handshake or a grant failed to authenticate.
    AuthFailure,
    /// A grant was minted.
    GrantMinted,
    /// An authorization decision on a tunnel request.
    Decision,
    /// A tunnel was opened to its target.
    TunnelOpen,
    /// A tunnel was allowed but its target could not be reached.
    TunnelFailed,
    /// A tunnel closed.
    TunnelClose,
    /// A grant was revoked.
    GrantRevoked,
    /// A technician filed an access request (or was refused filing one).
    RequestFiled,
    /// An approver approved a request that needs more approvals.
    ApprovalRecorded,
    /// A request reached its quorum (or needed none): its grant exists.
    RequestApproved,
    /// An approver denied a request.
    RequestDenied,
    /// A pending request expired undecided.
    RequestExpired,
    /// The technician who filed a pending request withdrew it.
    RequestCancelled,
    /// A live session was ended through the API.
    SessionEnded,
    /// A webhook notification could not be delivered.
    WebhookFailed,
    /// A torn last line of the chain (a write cut short by a crash) was moved aside at start-up.
    TornTailQuarantined,
    /// Segments older than the retention period were retired (deleted) from the chain.
    SegmentsRetired,
    /// A customer's policy set was loaded (at start-up or when it changed), with its digest.
    PolicyLoaded,
    /// An identity or one certificate was locked: barred until unlocked or until the lock ends.
    IdentityLocked,
    /// A lock was lifted.
    IdentityUnlocked,
    /// A `/v1` call was refused for the caller's role or tenant (403, or 404 for what it may not see).
    AccessRefused,
    /// Refusals of one source or identity that were not recorded one by one in an interval: their
    /// `count`, their `aggregated_event`, `first_seen` and `last_seen`, and one of them as a sample.
    RefusalsAggregated,
    /// The configuration was reloaded (SIGHUP or `sallyport reload`): on `_broker` with what
    /// changed, and on each customer added, changed or removed. The policy sets it put in force
    /// follow as `policy_loaded` records.
    ConfigReloaded,
    /// A reload was refused: the new file's error is the reason; the configuration in force is
    /// unchanged.
    ConfigReloadRefused,
    /// A person signed in at an identity provider and was issued a short-lived certificate: on
    /// `_broker` for technicians and admins, on the customer's chain for its approvers and
    /// auditors, with `idp`, `cert_serial` and `expires_at`.
    SignedIn,
    /// A sign-in was refused (a bad token, a missing group or MFA, an IdP error): the reason, and
    /// `idp` when the token was readable.
    SigninFailed,
    /// A person signed out of the web console: `actor`, `source_ip`, and the session's
    /// `cert_sha256` (the one its `signed_in` carries).
    SignedOut,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
    /// Done.
    Success,
    /// Tried and failed.
    Failure,
}

/// One event to record; the writer adds `seq`, `time`, `prev_hash` and `hash`.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// The customer's chain, or `None` for the broker chain.
    pub customer: Option<CustomerId>,
    /// What happened.
    pub event: EventKind,
    /// Who did it (SPIFFE id, or a description for unauthenticated peers).
    pub actor: Option<String>,
    /// The target concerned.
    pub target: Option<String>,
    /// Whom the action concerns when that is not the actor (the technician a grant was minted for).
    pub subject: Option<SpiffeId>,
    /// The grant concerned.
    pub grant_id: Option<GrantId>,
    /// The session concerned.
    pub session_id: Option<SessionId>,
    /// The access request concerned.
    pub request_id: Option<RequestId>,
    /// Where the connection came from.
    pub source_ip: Option<IpAddr>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why, in words.
    pub reason: String,
    /// The policies that determined a decision.
    pub policy_ids: Vec<String>,
    /// Bytes client -> target (closes).
    pub bytes_up: Option<u64>,
    /// Bytes target -> client (closes).
    pub bytes_down: Option<u64>,
    /// Tunnel duration (closes).
    pub duration_ms: Option<u64>,
    /// Grant expiry (grant and decision records), or until when a filed request waits for its
    /// approvals (`request_filed`), RFC 3339.
    pub expires_at: Option<String>,
    /// Start of a grant's window (`request_approved`, `grant_minted`), RFC 3339.
    pub not_before: Option<String>,
    /// Minutes asked for (`request_filed`, `grant_minted`).
    pub minutes: Option<u32>,
    /// When the asked window starts, for a request that asks for a later start, RFC 3339.
    pub start_at: Option<String>,
    /// The ticket a request or a break-glass grant names.
    pub ticket: Option<String>,
    /// The approver's comment (`approval_recorded`, `request_approved`).
    pub comment: Option<String>,
    /// How many approvals a filed request needs.
    pub approvals_required: Option<u32>,
    /// The policy whose annotations set a filed request's terms.
    pub terms_policy_id: Option<String>,
    /// SHA-256 (hex) of the customer's policy set in force when the decision was taken, or of the
    /// set loaded (`policy_loaded`).
    pub policy_digest: Option<String>,
    /// Who minted a break-glass grant, and on which machine.
    pub operator: Option<Operator>,
    /// SHA-256 of the session's capture file (closes of recorded targets).
    pub capture_sha256: Option<String>,
    /// The segments retired (`segments_retired` records).
    pub retired: Vec<Retired>,
    /// The lock concerned (lock and unlock records, and refusals of a locked identity).
    pub lock_id: Option<LockId>,
    /// Where a lock applies: `*` (everywhere) or the one customer whose access it bars.
    pub lock_scope: Option<String>,
    /// The serial of the certificate concerned (locks of one certificate).
    pub cert_serial: Option<CertSerial>,
    /// The SHA-256 fingerprint of the certificate concerned (locks of one certificate).
    pub cert_sha256: Option<CertFingerprint>,
    /// How many refusals the record stands for (`refusals_aggregated`).
    pub count: Option<u64>,
    /// The event of the refusals it stands for (`refusals_aggregated`).
    pub aggregated_event: Option<EventKind>,
    /// When the first of them happened, RFC 3339 (`refusals_aggregated`).
    pub first_seen: Option<String>,
    /// When the last of them happened, RFC 3339 (`refusals_aggregated`).
    pub last_seen: Option<String>,
    /// What an identity provider said: sign-ins, and approvals and denials signed at the
    /// customer's IdP (with the ID token).
    pub idp: Option<IdpEvidence>,
}

impl AuditEvent {
    /// An event with only the required parts set.
    pub fn new(event: EventKind, outcome: Outcome, reason: impl Into<String>) -> Self {
        Self {
            customer: None,
            event,
            actor: None,
            target: None,
            subject: None,
            grant_id: None,
            session_id: None,
            request_id: None,
            source_ip: None,
            outcome,
            reason: reason.into(),
            policy_ids: Vec::new(),
            bytes_up: None,
            bytes_down: None,
            duration_ms: None,
            expires_at: None,
            not_before: None,
            minutes: None,
            start_at: None,
            ticket: None,
            comment: None,
            approvals_required: None,
            terms_policy_id: None,
            policy_digest: None,
            operator: None,
            capture_sha256: None,
            retired: Vec::new(),
            lock_id: None,
            lock_scope: None,
            cert_serial: None,
            cert_sha256: None,
            count: None,
            aggregated_event: None,
            first_seen: None,
            last_seen: None,
            idp: None,
        }
    }
}

/// Longest `actor` written, in characters (a SPIFFE id is far shorter).
pub const MAX_ACTOR: usize = 512;
/// Longest `target` written, in characters (`<target>.<customer>` is at most 127).
pub const MAX_TARGET: usize = 256;
/// Longest `reason` written, in characters (a person's reason is at most 1000, plus its context).
pub const MAX_REASON: usize = 2048;

/// `s` cut to at most `max` characters, on a character boundary, with a marker saying how many
/// bytes were left out; `s` itself when it is short enough.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((at, _)) => Cow::Owned(format!("{}…[{} more bytes]", &s[..at], s.len() - at)),
    }
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: String,
    customer: Option<&'a CustomerId>,
    event: EventKind,
    actor: Option<&'a str>,
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a SpiffeId>,
    grant_id: Option<&'a GrantId>,
    session_id: Option<&'a SessionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a RequestId>,
    source_ip: Option<IpAddr>,
    outcome: Outcome,
    reason: &'a str,
    policy_ids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_up: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_down: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    minutes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ticket: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approvals_required: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    terms_policy_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    operator: Option<&'a Operator>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capture_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "<[Retired]>::is_empty")]
    retired: &'a [Retired],
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_id: Option<&'a LockId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_serial: Option<&'a CertSerial>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_sha256: Option<&'a CertFingerprint>,
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregated_event: Option<EventKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_seen: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idp: Option<&'a IdpEvidence>,
    prev_hash: &'a str,
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The chain (customer id or `_broker`).
    pub chain: String,
    /// Its sequence number in the chain.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// Renders one record line (with trailing newline) and its hash; text a client may have chosen is
/// cut to its bound ([`clip`]).
pub fn render(ev: &AuditEvent, seq: u64, time: &str, prev_hash: &str) -> (String, String) {
    let actor = ev.actor.as_deref().map(|a| clip(a, MAX_ACTOR));
    let target = ev.target.as_deref().map(|t| clip(t, MAX_TARGET));
    let reason = clip(&ev.reason, MAX_REASON);
    let body = Body {
        seq,
        time: time.to_owned(),
        customer: ev.customer.as_ref(),
        event: ev.event,
        actor: actor.as_deref(),
        target: target.as_deref(),
        subject: ev.subject.as_ref(),
        grant_id: ev.grant_id.as_ref(),
        session_id: ev.session_id.as_ref(),
        request_id: ev.request_id.as_ref(),
        source_ip: ev.source_ip,
        outcome: ev.outcome,
        reason: &reason,
        policy_ids: &ev.policy_ids,
        bytes_up: ev.bytes_up,
        bytes_down: ev.bytes_down,
        duration_ms: ev.duration_ms,
        expires_at: ev.expires_at.as_deref(),
        not_before: ev.not_before.as_deref(),
        minutes: ev.minutes,
        start_at: ev.start_at.as_deref(),
        ticket: ev.ticket.as_deref(),
        comment: ev.comment.as_deref(),
        approvals_required: ev.approvals_required,
        terms_policy_id: ev.terms_policy_id.as_deref(),
        policy_digest: ev.policy_digest.as_deref(),
        operator: ev.operator.as_ref(),
        capture_sha256: ev.capture_sha256.as_deref(),
        retired: &ev.retired,
        lock_id: ev.lock_id.as_ref(),
        lock_scope: ev.lock_scope.as_deref(),
        cert_serial: ev.cert_serial.as_ref(),
        cert_sha256: ev.cert_sha256.as_ref(),
        count: ev.count,
        aggregated_event: ev.aggregated_event,
        first_seen: ev.first_seen.as_deref(),
        last_seen: ev.last_seen.as_deref(),
        idp: ev.idp.as_ref(),
        prev_hash,
    };
    // Serializing a struct of strings, numbers and addresses cannot fail.
    let json = serde_json::to_string(&body).unwrap_or_default();
    let hash = hex::encode(Sha256::digest(json.as_bytes()));
    let mut line = String::with_capacity(json.len() + 80);
    line.push_str(&json[..json.len().saturating_sub(1)]);
    line.push_str(",\"hash\":\"");
    line.push_str(&hash);
    line.push_str("\"}\n");
    (line, hash)
}

/// Checks one line's hash and returns `(seq, prev_hash, hash)`.
pub fn check_line(line: &str) -> Result<(u64, String, String), AuditError> {
    let bad = |why: &str| AuditError::Record(why.to_owned());
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| AuditError::Record(format!("not a JSON object: {e}")))?;
    let hash = v["hash"]
        .as_str()
        .ok_or_else(|| bad("no `hash`"))?
        .to_owned();
    let prev = v["prev_hash"]
        .as_str()
        .ok_or_else(|| bad("no `prev_hash`"))?
        .to_owned();
    let seq = v["seq"].as_u64().ok_or_else(|| bad("no `seq`"))?;
    let suffix = format!(",\"hash\":\"{hash}\"}}");
    let body = line
        .strip_suffix(&suffix)
        .ok_or_else(|| bad("`hash` is not the last member"))?;
    let computed = hex::encode(Sha256::digest(format!("{body}}}").as_bytes()));
    if computed != hash {
        return Err(AuditError::Record(format!(
            "hash mismatch at seq {seq}: record was altered"
        )));
    }
    Ok((seq, prev, hash))
}

/// A segment retired by retention, as its `segments_retired` record names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Retired {
    /// The segment's file name (`2026-01-31.jsonl`).
    pub segment: String,
    /// Its first record's seq.
    pub first_seq: u64,
    /// Its last record's seq.
    pub last_seq: u64,
    /// Its last record's hash: the `prev_hash` of the record after it.
    pub last_hash: String,
}

/// The administrator behind a break-glass grant: the operating-system user and host that ran
/// `sallyport grant`, and the admin identity (SPIFFE id) it was run with, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Operator {
    /// The operating-system user name (or `uid N` when it has no name).
    pub user: String,
    /// The host name of the machine.
    pub host: String,
    /// The admin identity given with `--identity`, checked against the broker's CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_on_a_character_boundary_with_a_marker() {
        assert!(matches!(clip("short", 5), Cow::Borrowed("short")));
        assert_eq!(clip("abcdef", 3), "abc…[3 more bytes]");
        // Multi-byte characters are never split.
        assert_eq!(clip("ééé", 2), "éé…[2 more bytes]");
        assert_eq!(clip("日本語テキスト", 0), "…[21 more bytes]");
    }

    #[test]
    fn render_bounds_what_a_client_chose() {
        let mut ev = AuditEvent::new(EventKind::Decision, Outcome::Deny, "x".repeat(10_000));
        ev.target = Some("t".repeat(5_000));
        ev.actor = Some("ü".repeat(3_000));
        let (line, hash) = render(&ev, 1, "2026-01-01T00:00:00Z", crate::GENESIS);
        assert!(line.len() < 8_000, "{}", line.len());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .ends_with("…[7952 more bytes]")
        );
        assert_eq!(
            v["target"].as_str().unwrap().chars().count(),
            MAX_TARGET + 18
        );
        assert_eq!(check_line(line.trim_end()).unwrap().2, hash);
    }
}
