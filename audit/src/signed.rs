//! Checking the decisions a customer's identity provider signed, with keys the auditor got from
//! that IdP (never from the broker): every approval (`approval_recorded`, and `request_approved`
//! by an approver) and denial (`request_denied`) that took effect on the chain must carry the IdP's
//! ID token in `idp.token`, and that token must verify against the auditor's JWK set, name the
//! recorded issuer and audience, have been valid at the record's time, and carry the nonce
//! recomputed from the chain ([`crate::decision_nonce`] of the request's `request_filed` hash, the
//! decision, and the recorded comment or reason). Each approval of a request is a different
//! person's signature, a request is approved only with as many as its `request_filed` record says
//! it needs, and only a request that needs none is approved by `policy`. A decision without a token, or whose token does
//! not check, is reported with its place: the provider can neither forge one nor slip one in
//! unsigned.

use std::collections::{HashMap, HashSet};
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
    // Per request: its request_filed hash, the approvals it needs, and who signed approvals so far.
    let mut filed: HashMap<String, String> = HashMap::new();
    let mut needs: HashMap<String, u64> = HashMap::new();
    let mut signers: HashMap<String, HashSet<(String, String)>> = HashMap::new();
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
            let required = v
                .get("approvals_required")
                .and_then(serde_json::Value::as_u64);
            needs.insert(request.to_owned(), required.unwrap_or(1));
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
        let seq = v
            .get("seq")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let at = format!("{place}: seq {seq}: {event} of request {request}");
        let required = needs.get(request).copied();
        // An approval by policy is the policy's, not a person's: only for a request that needs none.
        if !s("actor").is_some_and(|a| a.contains("/approver/")) {
            if decision == Decision::Approve && required != Some(0) {
                report.problem = Some(format!(
                    "{at}: approved by `{}` without a signed approval, though the request needs {}",
                    s("actor").unwrap_or("nobody"),
                    required.map_or("its approvals".to_owned(), |n| n.to_string())
                ));
                return report;
            }
            continue;
        }
        let subject = match check_one(&v, decision, filed.get(request).map(String::as_str), keys) {
            Ok(subject) => subject,
            Err(why) => {
                report.problem = Some(format!("{at}: {why}"));
                return report;
            }
        };
        report.checked += 1;
        if decision == Decision::Deny {
            continue;
        }
        // Each approval is a different person's signature, and they meet the quorum.
        let signed = signers.entry(request.to_owned()).or_default();
        if !signed.insert(subject.clone()) {
            report.problem = Some(format!(
                "{at}: a second approval signed by the same person (`{}` at {})",
                subject.1, subject.0
            ));
            return report;
        }
        let needed = required.unwrap_or(1);
        if event == "request_approved" && (signed.len() as u64) < needed {
            report.problem = Some(format!(
                "{at}: approved with {} signed approval(s), though the request needs {needed}",
                signed.len()
            ));
            return report;
        }
    }
    report
}

fn check_one(
    v: &serde_json::Value,
    decision: Decision,
    filed_hash: Option<&str>,
    keys: &JwkSet,
) -> Result<(String, String), String> {
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
    Ok((claims.issuer, claims.subject))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[serde_json::Value]) -> SignedReport {
        let texts: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let keys: JwkSet = serde_json::from_str(r#"{"keys":[]}"#).unwrap();
        check_records(
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("line {}", i + 1), t.as_str())),
            &keys,
        )
    }

    fn filed(required: u64) -> serde_json::Value {
        serde_json::json!({"seq": 1, "event": "request_filed", "outcome": "success",
            "request_id": "r-1", "approvals_required": required, "hash": "ab"})
    }

    fn approved(actor: &str) -> serde_json::Value {
        serde_json::json!({"seq": 2, "event": "request_approved", "outcome": "success",
            "request_id": "r-1", "actor": actor, "time": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn only_a_request_that_needs_no_approval_is_approved_by_policy() {
        assert_eq!(run(&[filed(0), approved("policy")]).problem, None);
        let r = run(&[filed(1), approved("policy")]);
        assert!(
            r.problem
                .unwrap()
                .contains("without a signed approval, though the request needs 1")
        );
    }

    #[test]
    fn an_approval_without_a_token_is_unsigned_and_refusals_are_counted() {
        let refused = serde_json::json!({"seq": 2, "event": "approval_recorded", "outcome": "deny",
            "request_id": "r-1", "actor": "spiffe://td/approver/acme/bob"});
        let r = run(&[filed(1), refused, approved("spiffe://td/approver/acme/bob")]);
        assert_eq!(r.refusals, 1);
        assert!(r.problem.unwrap().contains("unsigned"), "unsigned");
    }
}
