//! The rules of the workflow that need no I/O: what a filing may ask for, the terms (quorum, longest
//! window) the customer's policy sets, the window a grant covers, and who may decide a request. Each
//! is a pure function of its inputs, tested here table by table; [`crate::requests`] applies them.

use sallyport_ids::SpiffeId;
use sallyport_policy::{CustomerPolicy, Decision};
use sallyport_store::{NewGrant, NewRequest, RequestRecord};

use crate::WorkflowError;

/// How far ahead a window may be asked for.
pub const MAX_START_AHEAD: i64 = 30 * 24 * 3600;

/// Longest reason, deny reason or comment, in characters.
pub const MAX_REASON: usize = 1000;

/// Longest ticket, in characters.
pub const MAX_TICKET: usize = 200;

/// Characters that change what a reader sees without being seen: the bidirectional embeddings,
/// overrides, isolates and marks (which can make `deny` read as `allow`, or hide text), and the
/// line and paragraph separators (which fake a new line in a log or a console).
pub fn is_spoofing(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// A trimmed, bounded, non-empty text field without control characters or characters that spoof
/// what a reader sees ([`is_spoofing`]).
pub fn text_field(name: &str, v: &str, max: usize, why: &str) -> Result<String, WorkflowError> {
    let v = v.trim();
    if let Some(c) = v.chars().find(|c| is_spoofing(*c)) {
        return Err(WorkflowError::invalid(
            format!("bad_{name}"),
            format!(
                "`{name}` must not contain bidirectional-override, direction-mark or line/paragraph separator characters (found U+{:04X}): they change what a reader sees",
                u32::from(c)
            ),
        ));
    }
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(WorkflowError::invalid(
            format!("bad_{name}"),
            format!("`{name}` must be 1 to {max} printable characters: {why}"),
        ));
    }
    Ok(v.to_owned())
}

/// Text a person wrote for the record (a comment, a reason), trimmed and checked by [`text_field`]:
/// made only by [`comment`], [`deny_reason`], [`cancel_reason`], [`revoke_reason`], [`break_glass_reason`],
/// [`ticket`], [`lock_reason`] and [`unlock_reason`], so a caller checks it first, before it names
/// the request, grant or lock it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words(String);

impl Words {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An approval's optional comment.
pub fn comment(v: Option<&str>) -> Result<Option<Words>, WorkflowError> {
    v.map(|c| text_field("comment", c, MAX_REASON, "leave it out or say something").map(Words))
        .transpose()
}

/// Why a request is denied.
pub fn deny_reason(v: &str) -> Result<Words, WorkflowError> {
    text_field("reason", v, MAX_REASON, "tell the technician why").map(Words)
}

/// Why a technician withdraws their own request (optional).
pub fn cancel_reason(v: Option<&str>) -> Result<Option<Words>, WorkflowError> {
    v.map(|r| text_field("reason", r, MAX_REASON, "leave it out or say why").map(Words))
        .transpose()
}

/// Why a grant is revoked.
pub fn revoke_reason(v: &str) -> Result<Words, WorkflowError> {
    text_field("reason", v, MAX_REASON, "say why the access ends").map(Words)
}

/// Why an administrator mints a break-glass grant (the customer is told these words).
pub fn break_glass_reason(v: &str) -> Result<Words, WorkflowError> {
    text_field(
        "reason",
        v,
        MAX_REASON,
        "say what the emergency is; the customer is told",
    )
    .map(Words)
}

/// A change or incident ticket.
pub fn ticket(v: Option<&str>) -> Result<Option<Words>, WorkflowError> {
    v.map(|t| {
        text_field(
            "ticket",
            t,
            MAX_TICKET,
            "give the change or incident ticket, or leave it out",
        )
        .map(Words)
    })
    .transpose()
}

/// Why an identity or certificate is locked.
pub fn lock_reason(v: &str) -> Result<Words, WorkflowError> {
    text_field("reason", v, MAX_REASON, "say why the identity is locked").map(Words)
}

/// Why a lock is lifted (optional).
pub fn unlock_reason(v: Option<&str>) -> Result<Option<Words>, WorkflowError> {
    v.map(|r| text_field("reason", r, MAX_REASON, "leave it out or say why").map(Words))
        .transpose()
}

/// What the permitting policies grant a filing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// Distinct approvals needed (0 approves at once).
    pub approvals: u32,
    /// The longest window, in minutes.
    pub max_minutes: u32,
    /// The permitting policies, comma-separated (empty when none permitted).
    pub policy_id: String,
}

/// The quorum and the longest window from the permitting policies' `@approvals` and `@max_minutes`:
/// the strictest wins. A permitting policy without `@approvals` asks for the default, one approval.
pub fn terms(p: &CustomerPolicy, decision: &Decision, max_minutes: u32) -> Terms {
    let approvals = decision
        .policy_ids
        .iter()
        .map(|id| {
            p.annotation(id, "approvals")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(1)
        })
        .max()
        .unwrap_or(1);
    let minutes = decision
        .policy_ids
        .iter()
        .filter_map(|id| p.annotation(id, "max_minutes")?.parse::<u32>().ok())
        .fold(max_minutes, u32::min);
    Terms {
        approvals,
        max_minutes: minutes,
        policy_id: decision.policy_ids.join(","),
    }
}

/// Checks a requested start: RFC 3339, its window (`minutes` from it) not over at `now`, at most
/// [`MAX_START_AHEAD`] ahead. Returns it in Unix seconds.
pub fn start_at(v: Option<&str>, minutes: u32, now: i64) -> Result<Option<i64>, WorkflowError> {
    let bad = |m: String| WorkflowError::invalid("bad_start_at", m);
    let Some(v) = v else { return Ok(None) };
    let start = v.parse::<jiff::Timestamp>().map_err(|e| {
        bad(format!(
            "`start_at` is not an RFC 3339 time such as 2026-01-31T22:00:00Z: {e}"
        ))
    })?;
    let start = start.as_second();
    if start + i64::from(minutes) * 60 <= now {
        return Err(bad(
            "the window `start_at` + `minutes` is already over".into()
        ));
    }
    if start > now + MAX_START_AHEAD {
        return Err(bad("`start_at` may be at most 30 days ahead".into()));
    }
    Ok(Some(start))
}

/// When an undecided request filed at `now` expires: after `pending` seconds, and never after the
/// window it asks for has ended.
pub fn pending_until(start_at: Option<i64>, minutes: u32, now: i64, pending: i64) -> i64 {
    let until = now + pending;
    start_at.map_or(until, |s| (s + i64::from(minutes) * 60).min(until))
}

/// The window of the grant that approving `req` at `now` creates: `minutes` from `start_at` (or from
/// now when none was given), of which the grant covers what is left from now on. A window already
/// over cannot be approved.
pub fn window(
    req: &NewRequest,
    grant: sallyport_ids::GrantId,
    now: i64,
) -> Result<NewGrant, WorkflowError> {
    let start = req.start_at.unwrap_or(now);
    let expires_at = start + i64::from(req.minutes) * 60;
    if expires_at <= now {
        return Err(WorkflowError::Conflict(format!(
            "the window requested by `{}` has already ended",
            req.id
        )));
    }
    Ok(NewGrant {
        id: grant,
        not_before: start.max(now),
        expires_at,
    })
}

/// A requester never decides their own request.
pub fn may_decide(who: &SpiffeId, rec: &RequestRecord) -> Result<(), WorkflowError> {
    if rec.filed.technician == *who {
        return Err(WorkflowError::Forbidden(
            "a requester cannot decide their own request".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sallyport_store::RequestStatus;

    fn decision(ids: &[&str]) -> Decision {
        Decision {
            allowed: true,
            reason: String::new(),
            policy_ids: ids.iter().map(|s| s.to_string()).collect(),
            errors: Vec::new(),
        }
    }

    fn req(start_at: Option<i64>) -> NewRequest {
        NewRequest {
            id: "r1".parse().unwrap(),
            customer: "acme".parse().unwrap(),
            target: "db01".parse().unwrap(),
            technician: "spiffe://sallyport.local/technician/northwind/alice"
                .parse()
                .unwrap(),
            cert_thumbprint: "thumb".into(),
            minutes: 30,
            reason: "patching".into(),
            ticket: None,
            start_at,
            approvals_required: 1,
            policy_id: None,
            created_at: 1_000,
            expires_at: 1_000 + 86_400,
            filed_hash: None,
        }
    }

    #[test]
    fn the_strictest_permitting_policy_sets_the_terms() {
        let src = r#"
@id("broad") @approvals("1") @max_minutes("240")
permit (principal, action == Sallyport::Action::"request", resource);
@id("prod") @approvals("2") @max_minutes("60")
permit (principal, action == Sallyport::Action::"request", resource);
@id("plain")
permit (principal, action == Sallyport::Action::"request", resource);
@id("instant") @approvals("0")
permit (principal, action == Sallyport::Action::"request", resource);
"#;
        let p = CustomerPolicy::parse("acme".parse().unwrap(), "UTC", "acme.cedar", src).unwrap();
        let t = |ids: &[&str]| {
            let t = terms(&p, &decision(ids), 480);
            (t.approvals, t.max_minutes, t.policy_id)
        };
        assert_eq!(t(&["broad", "prod"]), (2, 60, "broad,prod".into()));
        assert_eq!(t(&["plain"]), (1, 480, "plain".into()));
        assert_eq!(t(&["instant"]).0, 0);
        assert_eq!(t(&["instant", "broad"]).0, 1);
    }

    #[test]
    fn the_window_starts_at_approval_or_at_start_at_and_is_cut_to_what_is_left() {
        let g = || "g1".parse().unwrap();
        let w = window(&req(None), g(), 1_020).unwrap();
        assert_eq!((w.not_before, w.expires_at), (1_020, 1_020 + 1_800));
        let w = window(&req(Some(5_000)), g(), 1_000).unwrap();
        assert_eq!((w.not_before, w.expires_at), (5_000, 5_000 + 1_800));
        // A window that started earlier is cut short; one already over cannot be approved.
        let w = window(&req(Some(900)), g(), 1_100).unwrap();
        assert_eq!((w.not_before, w.expires_at), (1_100, 900 + 1_800));
        let err = window(&req(Some(0)), g(), 1_900).unwrap_err();
        assert!(matches!(err, WorkflowError::Conflict(m) if m.contains("already ended")));
    }

    #[test]
    fn a_requested_start_is_checked() {
        assert_eq!(start_at(None, 30, 1_000).unwrap(), None);
        assert_eq!(
            start_at(Some("1970-01-01T00:20:00Z"), 30, 1_000).unwrap(),
            Some(1_200)
        );
        for (v, needle) in [
            ("tomorrow", "not an RFC 3339 time"),
            ("1970-01-01T00:00:00Z", "already over"),
            ("2999-01-01T00:00:00Z", "30 days ahead"),
        ] {
            let err = start_at(Some(v), 10, 1_000).unwrap_err();
            assert!(
                matches!(&err, WorkflowError::Invalid { code, message } if code == "bad_start_at" && message.contains(needle)),
                "{v}: {err}"
            );
        }
        assert_eq!(pending_until(None, 30, 1_000, 600), 1_600);
        assert_eq!(pending_until(Some(1_000), 5, 1_000, 600), 1_300);
    }

    #[test]
    fn a_requester_cannot_decide_their_own_request() {
        let filed = req(None);
        let rec = RequestRecord {
            filed: filed.clone(),
            status: RequestStatus::Pending,
            approvals: Vec::new(),
            denial: None,
            grant_id: None,
            grant: None,
        };
        let err = may_decide(&filed.technician, &rec).unwrap_err();
        assert!(matches!(err, WorkflowError::Forbidden(m) if m.contains("own request")));
        let bob = "spiffe://sallyport.local/approver/acme/bob"
            .parse()
            .unwrap();
        assert!(may_decide(&bob, &rec).is_ok());
    }

    #[test]
    fn text_fields_are_bounded() {
        assert_eq!(text_field("reason", " ok ", 10, "say why").unwrap(), "ok");
        assert!(text_field("reason", "", 10, "say why").is_err());
        assert!(text_field("reason", "a\u{7}b", 10, "say why").is_err());
        assert!(text_field("reason", &"x".repeat(11), 10, "say why").is_err());
    }

    #[test]
    fn text_that_spoofs_what_a_reader_sees_is_refused_naming_the_field() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{2028}', '\u{2029}',
        ] {
            for field in ["reason", "comment", "ticket"] {
                let err = text_field(field, &format!("fix{c}ed"), 100, "say why").unwrap_err();
                assert!(
                    matches!(&err, WorkflowError::Invalid { code, message }
                        if *code == format!("bad_{field}") && message.contains(&format!("`{field}`"))
                            && message.contains(&format!("U+{:04X}", u32::from(c)))),
                    "{c:?} {field}: {err}"
                );
            }
        }
        // Other scripts, and right-to-left text itself, are fine.
        assert!(text_field("reason", "إصلاح الخادم 修理", 100, "say why").is_ok());
        assert!(deny_reason("\u{202E}wolla").is_err());
        assert!(revoke_reason("done\u{2028}approved by security").is_err());
        assert!(comment(Some("ok\u{2069}")).is_err());
    }
}
