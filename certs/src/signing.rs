//! Detached Ed25519 signatures over byte strings, for records that must be provable offline (the audit
//! trail's signed checkpoints). The private key is PKCS#8 PEM like the grant key; the public key is
//! published raw (32 bytes, base64url) with its RFC 7638 thumbprint as key id.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use crate::grant::{GrantError, ed25519_kid, load_ed25519};

/// Signs byte strings with an Ed25519 key.
pub struct Ed25519Signer {
    key: EncodingKey,
    public_key: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Ed25519Signer {
    /// Loads an Ed25519 PKCS#8 PEM key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, GrantError> {
        let (key, public_key) = load_ed25519(pem)?;
        Ok(Self {
            kid: ed25519_kid(&public_key),
            key,
            public_key,
        })
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The public key, base64url without padding.
    pub fn public_key_b64(&self) -> String {
        B64.encode(&self.public_key)
    }

    /// Signs `message`; returns the 64-byte signature, base64url without padding.
    pub fn sign(&self, message: &[u8]) -> Result<String, GrantError> {
        jsonwebtoken::crypto::sign(message, &self.key, Algorithm::EdDSA)
            .map_err(|e| GrantError::Key(format!("signing failed: {e}")))
    }
}

/// Whether `signature` (base64url) is `public_key`'s (raw 32 bytes) Ed25519 signature of `message`.
pub fn verify(public_key: &[u8], message: &[u8], signature: &str) -> bool {
    let key = DecodingKey::from_ed_der(public_key);
    jsonwebtoken::crypto::verify(signature, message, &key, Algorithm::EdDSA).unwrap_or(false)
}

/// Decodes a base64url (or standard base64) 32-byte public key.
pub fn public_key_from_b64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    let raw = B64
        .decode(text.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .ok()?;
    (raw.len() == 32).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::generate_signing_key_pem;

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let a = Ed25519Signer::from_pkcs8_pem(&generate_signing_key_pem().unwrap()).unwrap();
        let b = Ed25519Signer::from_pkcs8_pem(&generate_signing_key_pem().unwrap()).unwrap();
        let sig = a.sign(b"checkpoint 1").unwrap();
        assert!(verify(a.public_key(), b"checkpoint 1", &sig));
        assert!(!verify(a.public_key(), b"checkpoint 2", &sig));
        assert!(!verify(b.public_key(), b"checkpoint 1", &sig));
        assert!(!verify(a.public_key(), b"checkpoint 1", "not base64!"));
        assert_eq!(
            public_key_from_b64(&a.public_key_b64()).unwrap(),
            a.public_key()
        );
        assert!(public_key_from_b64("c2hvcnQ").is_none());
        assert!(!format!("{a:?}").contains("key:"));
    }
}
