//! What an identity provider said, as the trail keeps it: the [`IdpEvidence`] of a sign-in or of an
//! approval or denial signed at a customer's own IdP (the claims the broker read, and for decisions
//! the signed ID token itself), and [`decision_nonce`], the nonce that binds such a sign-in to one
//! request, one decision and one comment. `docs/audit-format.md` ("Decisions signed by the
//! customer's identity provider") specifies both, so any verifier can recompute the nonce from the
//! chain alone.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The domain separator of [`decision_nonce`]; a new derivation gets a new version.
pub const NONCE_DOMAIN: &str = "sallyport/decision/v1";

/// The two decisions a signed sign-in can commit to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Approve the request.
    Approve,
    /// Deny the request.
    Deny,
}

impl Decision {
    /// `approve` or `deny`, as the nonce and the trail spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
        }
    }
}

/// The nonce of a sign-in that approves or denies a request: unpadded base64url of
/// `SHA-256("sallyport/decision/v1" LF filed_hash LF decision LF words)`, where `filed_hash` is the
/// `hash` of the request's `request_filed` record (lowercase hex), `decision` is `approve` or
/// `deny`, and `words` the approver's comment or the denial's reason exactly as recorded (empty when
/// there is none). A token carrying it was issued for that request, that decision and those words
/// only.
pub fn decision_nonce(filed_hash: &str, decision: Decision, words: &str) -> String {
    let mut h = Sha256::new();
    for (i, part) in [NONCE_DOMAIN, filed_hash, decision.as_str(), words]
        .iter()
        .enumerate()
    {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(part.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// What the identity provider said about the person behind a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdpEvidence {
    /// The IdP (`iss`).
    pub issuer: String,
    /// The person at the IdP (`sub`).
    pub subject: String,
    /// The name the broker took from the token (the configured `name_claim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The groups the token carried (the configured `groups_claim`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// How the person authenticated (`amr`, RFC 8176).
    #[serde(default)]
    pub amr: Vec<String>,
    /// Whether that was multi-factor.
    pub mfa: bool,
    /// When the person authenticated (`auth_time`), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<String>,
    /// The client the token was issued to (the broker's `client_id` at that IdP).
    pub audience: String,
    /// The signed ID token itself (decisions), so anyone with the IdP's keys can check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_commits_to_request_decision_and_words() {
        let h = "ab".repeat(32);
        let n = decision_nonce(&h, Decision::Approve, "ok for CHG-1");
        assert_eq!(n.len(), 43);
        assert_eq!(n, decision_nonce(&h, Decision::Approve, "ok for CHG-1"));
        assert_ne!(n, decision_nonce(&h, Decision::Deny, "ok for CHG-1"));
        assert_ne!(n, decision_nonce(&h, Decision::Approve, "ok for CHG-2"));
        assert_ne!(
            n,
            decision_nonce(&"cd".repeat(32), Decision::Approve, "ok for CHG-1")
        );
        // The separator keeps parts from sliding into each other.
        assert_ne!(
            decision_nonce("a", Decision::Approve, "\nb"),
            decision_nonce("a\n", Decision::Approve, "b")
        );
        // Pinned, so the documented derivation and the code never drift apart.
        let doc = {
            let mut h2 = Sha256::new();
            h2.update(format!("sallyport/decision/v1\n{h}\napprove\nok for CHG-1").as_bytes());
            URL_SAFE_NO_PAD.encode(h2.finalize())
        };
        assert_eq!(n, doc);
    }
}
