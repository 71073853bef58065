//! Checking the decisions a customer's identity provider signed, with keys the auditor got from
//! that IdP (never from the broker): every approval (`approval_recorded`, and `request_approved`
//! by an approver) and denial (`request_denied`) that took effect on the chain must carry the IdP's
//! ID token in `idp.token`, and that token must verify against the auditor's JWK set, name the
//! recorded issuer and audience, have been valid at the record's time, and carry the nonce
//! recomputed from the chain ([`crate::decision_nonce`] of the request's `request_filed` hash, the
//! decision, and the recorded comment or reason). A decision without a token, or whose token does
//! not check, is reported with its place: the provider can neither forge one nor slip one in
//! unsigned.

use std::path::Path;

use sallyport_oidc::token::{Expect, verify_id_token};

pub use sallyport_oidc::JwkSet;
pub use sallyport_oidc::jwks_from_json;

use crate::idp::{Decision, decision_nonce};
use crate::segment;

/// How far the record's time may be past a token's expiry (the broker's own leeway).
pub const LEEWAY_SECONDS: u64 = 60;

/// What checking one chain's signed decisions found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedReport {
    /// Decisions whose token checked.
    pub checked: u64,
    /// Refused attempts on the chain (outcome `deny`), not decisions: counted, not checked.
    pub refusals: u64,
    /// The first decision that did not check: where (`file:line` or `record N`) and why.
    pub problem: Option<String>,
}

/// Checks the signed decisions of the records `lines` (`(place, line text)`, in chain order).
pub fn check_records<'a>(
    lines: impl IntoIterator<Item = (String, &'a str)>,
    keys: &JwkSet,
) -> SignedReport {
    let mut report = SignedReport::default();
    let mut filed: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (place, text) in lines {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            continue;
        };
        let s = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
        let (Some(event), Some(outcome)) = (s("event"), s("outcome")) else {
            continue;
        };
        let request = s("request_id").unwrap_or("");
        if event == "request_filed" && outcome == "success" {
            if let Some(h) = s("hash") {
                filed.insert(request.to_owned(), h.to_owned());
            }
            continue;
        }
        let decision = match event {
            "approval_recorded" | "request_approved" => Decision::Approve,
            "request_denied" => Decision::Deny,
            _ => continue,
        };
        if outcome == "deny" {
            report.refusals += 1;
            continue;
        }
        // Approvals by policy (no approver) are the policy's, not a person's.
        if !s("actor").is_some_and(|a| a.contains("/approver/")) {
            continue;
        }
        let seq = v
            .get("seq")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let at = format!("{place}: seq {seq}: {event} of request {request}");
        match check_one(&v, decision, filed.get(request).map(String::as_str), keys) {
            Ok(()) => report.checked += 1,
            Err(why) => {
                report.problem = Some(format!("{at}: {why}"));
                return report;
            }
        }
    }
    report
}

fn check_one(
    v: &serde_json::Value,
    decision: Decision,
    filed_hash: Option<&str>,
    keys: &JwkSet,
) -> Result<(), String> {
    let idp = v
        .get("idp")
        .ok_or("unsigned: no identity-provider token (not signed at the customer's IdP)")?;
    let field = |k: &str| idp.get(k).and_then(serde_json::Value::as_str);
    let token = field("token").ok_or("unsigned: `idp` holds no token")?;
    let (issuer, audience) = match (field("issuer"), field("audience")) {
        (Some(i), Some(a)) => (i, a),
        _ => return Err("`idp` names no issuer or audience".into()),
    };
    let filed_hash = filed_hash.ok_or(
        "its request_filed record is not on this part of the chain, so the nonce cannot be recomputed",
    )?;
    let words = match decision {
        Decision::Approve => v.get("comment").and_then(serde_json::Value::as_str),
        Decision::Deny => v.get("reason").and_then(serde_json::Value::as_str),
    }
    .unwrap_or("");
    let nonce = decision_nonce(filed_hash, decision, words);
    let time = v
        .get("time")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .ok_or("the record has no readable time")?;
    let now = u64::try_from(time.as_second()).unwrap_or(0);
    let claims = verify_id_token(
        token,
        keys,
        &Expect {
            issuer,
            audience,
            nonce: Some(&nonce),
            now,
            leeway: LEEWAY_SECONDS,
            groups_claim: "groups",
            name_claim: "preferred_username",
        },
    )
    .map_err(|e| format!("the ID token does not check: {e}"))?;
    if field("subject") != Some(claims.subject.as_str()) {
        return Err(format!(
            "the record says subject `{}`, the token `{}`",
            field("subject").unwrap_or(""),
            claims.subject
        ));
    }
    Ok(())
}

/// Checks the signed decisions of `chain` in the audit folder `audit`.
pub fn check_chain(audit: &Path, chain: &str, keys: &JwkSet) -> Result<SignedReport, String> {
    let dir = segment::chain_dir(audit, chain);
    let reader = segment::Reader::open(&dir, segment::Start::Oldest, None)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut lines = Vec::new();
    for line in reader {
        let line = line.map_err(|e| format!("{}: {e}", dir.display()))?;
        if line.complete {
            lines.push((format!("{}:{}", line.file.display(), line.line), line.text));
        }
    }
    Ok(check_records(
        lines.iter().map(|(p, t)| (p.clone(), t.as_str())),
        keys,
    ))
}
