//! Signed checkpoints of the audit chains. Every N records or T seconds, and when the writer stops,
//! the broker signs `{customer, seq, hash, time, key_id}` of each chain that moved with its Ed25519
//! audit key, and appends the line to `checkpoints.jsonl` in the chain's folder. The signature
//! (`sig`, base64url) covers the line's bytes with the trailing `,"sig":"…"` member removed, the same
//! convention as a record's `hash`, so any verifier can check it without canonical JSON.
//!
//! A checkpoint pins the chain up to `seq`: records rewritten consistently (every hash recomputed)
//! no longer match it, and a chain cut back past it is caught as truncated. The public key is written
//! to `audit-key.pub` in the audit folder and served at `GET /v1/audit/key`; auditors should take it
//! from the API (or the operator), not from a folder the operator controls.

use std::sync::Arc;
use std::time::Duration;

use sallyport_certs::signing::Ed25519Signer;
use serde::Serialize;

use crate::AuditError;

fn bad(why: impl Into<String>) -> AuditError {
    AuditError::Checkpoint(why.into())
}

/// Name of the public-key file in the audit folder.
pub const KEY_FILE: &str = "audit-key.pub";

/// When to sign checkpoints, and with what.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// The audit signing key.
    pub signer: Arc<Ed25519Signer>,
    /// A checkpoint after this many new records on a chain.
    pub every_records: u64,
    /// And at least this often while a chain has new records.
    pub every: Duration,
    /// And once a chain with new records has had none for this long: a burst of activity is
    /// signed moments after it ends, not up to `every` later.
    pub quiet: Duration,
}

/// The `quiet` period the broker uses.
pub const QUIET: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Body<'a> {
    customer: &'a str,
    seq: u64,
    hash: &'a str,
    time: &'a str,
    key_id: &'a str,
}

/// Renders one signed checkpoint line (with trailing newline).
pub fn render(
    signer: &Ed25519Signer,
    chain: &str,
    seq: u64,
    hash: &str,
    time: &str,
) -> Result<String, AuditError> {
    let body = Body {
        customer: chain,
        seq,
        hash,
        time,
        key_id: signer.kid(),
    };
    let json = serde_json::to_string(&body).map_err(|e| bad(e.to_string()))?;
    let sig = signer
        .sign(json.as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    Ok(format!(
        "{},\"sig\":\"{sig}\"}}\n",
        &json[..json.len().saturating_sub(1)]
    ))
}

/// A parsed checkpoint line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The chain (customer id, or `_broker`).
    pub chain: String,
    /// The last record it covers.
    pub seq: u64,
    /// That record's hash.
    pub hash: String,
    /// When it was signed.
    pub time: String,
    /// The signing key's id.
    pub key_id: String,
}

/// Parses a checkpoint line; with `key`, also checks its signature (`Err("forged: …")` when it fails).
pub fn check(line: &str, key: Option<&[u8]>) -> Result<Checkpoint, AuditError> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("no `{k}`")))
    };
    let sig = field("sig")?;
    let cp = Checkpoint {
        chain: field("customer")?,
        seq: v["seq"].as_u64().ok_or_else(|| bad("no `seq`"))?,
        hash: field("hash")?,
        time: field("time")?,
        key_id: field("key_id")?,
    };
    if let Some(key) = key {
        let body = line
            .strip_suffix(&format!(",\"sig\":\"{sig}\"}}"))
            .ok_or_else(|| bad("`sig` is not the last member"))?;
        let message = format!("{body}}}");
        if !sallyport_certs::signing::verify(key, message.as_bytes(), &sig) {
            return Err(bad(
                "forged: the signature does not verify with the audit key",
            ));
        }
    }
    Ok(cp)
}

/// The published form of the audit key: `{"alg":"Ed25519","key_id":…,"public_key":…}`.
pub fn public_key_json(signer: &Ed25519Signer) -> serde_json::Value {
    serde_json::json!({
        "alg": "Ed25519",
        "key_id": signer.kid(),
        "public_key": signer.public_key_b64(),
    })
}

/// Reads a public key given as base64url text, as a file holding it, or as the published JSON.
pub fn read_public_key(arg: &str) -> Result<Vec<u8>, AuditError> {
    let text = match std::fs::read_to_string(arg) {
        Ok(t) => t,
        Err(_) if !arg.contains('/') && !arg.ends_with(".pub") => arg.to_owned(),
        Err(e) => return Err(bad(format!("{arg}: {e}"))),
    };
    let b64 = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => v["public_key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("{arg}: no `public_key`")))?,
        Err(_) => text,
    };
    sallyport_certs::signing::public_key_from_b64(&b64).ok_or_else(|| {
        bad(format!(
            "{arg}: not a 32-byte Ed25519 public key in base64url"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sallyport_certs::grant::generate_signing_key_pem;

    fn signer() -> Ed25519Signer {
        Ed25519Signer::from_pkcs8_pem(&generate_signing_key_pem().unwrap()).unwrap()
    }

    #[test]
    fn a_checkpoint_verifies_and_any_change_is_forged() {
        let s = signer();
        let line = render(&s, "acme", 7, "ab12", "2026-01-01T00:00:00Z").unwrap();
        let line = line.trim_end();
        let cp = check(line, Some(s.public_key())).unwrap();
        assert_eq!(
            (cp.chain.as_str(), cp.seq, cp.key_id.as_str()),
            ("acme", 7, s.kid())
        );
        let edited = line.replace("\"seq\":7", "\"seq\":8");
        assert!(
            check(&edited, Some(s.public_key()))
                .unwrap_err()
                .to_string()
                .starts_with("forged")
        );
        assert!(
            check(line, Some(signer().public_key()))
                .unwrap_err()
                .to_string()
                .starts_with("forged")
        );
        assert!(
            check(&edited, None).is_ok(),
            "without a key only the shape is checked"
        );
    }

    #[test]
    fn public_keys_are_read_in_every_published_form() {
        let s = signer();
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join(KEY_FILE);
        std::fs::write(&json, public_key_json(&s).to_string()).unwrap();
        assert_eq!(
            read_public_key(json.to_str().unwrap()).unwrap(),
            s.public_key()
        );
        assert_eq!(
            read_public_key(&s.public_key_b64()).unwrap(),
            s.public_key()
        );
        assert!(
            read_public_key("/nonexistent/key.pub")
                .unwrap_err()
                .to_string()
                .contains("No such file")
        );
        assert!(read_public_key("short").is_err());
    }
}
