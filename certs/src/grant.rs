//! Grant tokens: the time-boxed, certificate-bound right to open tunnels to one customer target.
//!
//! A grant is a JWS (RFC 7515) signed with Ed25519 (`alg: EdDSA`), header `typ: "sallyport-grant+jwt"` and a
//! `kid` (the RFC 7638 JWK thumbprint of the signing key). Claims: `iss`, `aud`, `sub` (the technician's
//! SPIFFE id), `customer`, `target`, `port`, `gid`, `iat`, `nbf`, `exp`, `jti` and
//! `cnf: {"x5t#S256": ...}` (RFC 8705), the SHA-256 thumbprint of the technician's client certificate.
//!
//! Verification follows RFC 8725: exactly one algorithm, known `kid`s only, no key material or key
//! locations taken from the token (`jku`, `jwk`, `x5u`, `x5c` and `crit` are refused), every registered
//! claim required with its type, and an explicit leeway. Binding to the presented certificate is a
//! separate, constant-time check ([`GrantClaims::is_bound_to`]) so callers can answer "invalid grant"
//! and "not your grant" differently.
//!
//! A technician's `connect` opens one tunnel per local connection, each presenting the same grant, and
//! the Ed25519 check dominates a decision. So a [`GrantVerifier`] remembers the tokens it has fully
//! verified (keyed by the SHA-256 of the whole token, bounded to [`VERIFIED_CACHE_ENTRIES`]), as
//! Envoy's `jwt_authn` does. A remembered token skips only the parsing and the signature: its time
//! window (`exp`, `nbf`, `iat`, with the same leeway) is checked again on every use, and the caller
//! still checks binding, revocation and policy. A token differing in any byte is a different key, and
//! tokens that fail are never remembered. The cache lives and dies with the verifier and its keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sallyport_ids::{CustomerId, GrantId, SpiffeId, TargetId};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// The JOSE `typ` of a grant.
pub const GRANT_TYP: &str = "sallyport-grant+jwt";
/// Longest token accepted, in bytes. Real grants are well under 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// How many verified tokens a [`GrantVerifier`] remembers (about 1 KiB each); the least recently
/// used go first.
pub const VERIFIED_CACHE_ENTRIES: usize = 4096;

/// Why a grant could not be minted or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The token is not a well-formed JWS.
    #[error("malformed grant: {0}")]
    Malformed(String),
    /// The JOSE header is not acceptable.
    #[error("grant header refused: {0}")]
    Header(String),
    /// The `kid` names no key this broker trusts.
    #[error("grant signed by unknown key `{0}`")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("grant signature is invalid")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("grant has expired")]
    Expired,
    /// `nbf` is still in the future (beyond the leeway).
    #[error("grant is not yet valid")]
    NotYetValid,
    /// A claim is missing, has the wrong type, or the wrong value.
    #[error("grant claims refused: {0}")]
    Claims(String),
    /// The signing key could not be loaded or used.
    #[error("grant signing key: {0}")]
    Key(String),
}

/// RFC 8705 confirmation: the thumbprint of the certificate the grant is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url(SHA-256(DER certificate)), no padding.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The claims of a grant token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// Issuer: the broker.
    pub iss: String,
    /// Audience: the broker's data plane.
    pub aud: String,
    /// The technician's SPIFFE id.
    pub sub: SpiffeId,
    /// The customer the grant is for.
    pub customer: CustomerId,
    /// The one target the grant opens.
    pub target: TargetId,
    /// The target's port, as the CONNECT authority must name it.
    pub port: u16,
    /// The grant id.
    pub gid: GrantId,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Not before (seconds since the epoch).
    pub nbf: u64,
    /// Expires (seconds since the epoch).
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
    /// Certificate binding.
    pub cnf: Confirmation,
}

impl GrantClaims {
    /// Whether the grant is bound to the certificate with this SHA-256 thumbprint (constant time).
    pub fn is_bound_to(&self, thumbprint: &[u8; 32]) -> bool {
        let expected = B64.encode(thumbprint);
        expected
            .as_bytes()
            .ct_eq(self.cnf.x5t_s256.as_bytes())
            .into()
    }

    /// When the grant expires.
    pub fn expires_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.exp)
    }
}

/// What a new grant says; [`GrantSigner::mint`] fills in `iss`, `aud`, `iat`, `jti` and the binding.
#[derive(Debug, Clone)]
pub struct GrantSpec {
    /// The technician.
    pub sub: SpiffeId,
    /// The customer.
    pub customer: CustomerId,
    /// The target.
    pub target: TargetId,
    /// The target's port.
    pub port: u16,
    /// The grant id.
    pub gid: GrantId,
    /// Start of the grant window.
    pub not_before: SystemTime,
    /// End of the grant window.
    pub expires_at: SystemTime,
    /// Thumbprint of the technician's client certificate.
    pub cert_thumbprint: [u8; 32],
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 7638 JWK thumbprint of an Ed25519 public key, base64url: the `kid` of that key.
pub fn ed25519_kid(public_key: &[u8]) -> String {
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        B64.encode(public_key)
    );
    B64.encode(sha2::Sha256::digest(jwk.as_bytes()))
}

/// Creates a new Ed25519 signing key, PEM of PKCS#8 v1 (RFC 8410): the form `openssl genpkey
/// -algorithm ed25519` writes and every tool reads (OpenSSL 3.0 and Python's `cryptography` refuse
/// the v2 form with the public key inside). Both forms are read.
pub fn generate_signing_key_pem() -> Result<String, GrantError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let der = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8v1(&rng)
        .map_err(|_| GrantError::Key("could not generate an Ed25519 key".into()))?;
    rcgen::KeyPair::try_from(der.as_ref())
        .map(|k| k.serialize_pem())
        .map_err(|e| GrantError::Key(e.to_string()))
}

/// Client-chosen text made safe to echo: printable ASCII only, at most 64 characters.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// Loads an Ed25519 PKCS#8 PEM private key: the signing key and the raw 32-byte public key.
pub(crate) fn load_ed25519(pem: &str) -> Result<(EncodingKey, Vec<u8>), GrantError> {
    let pair = rcgen::KeyPair::from_pem(pem)
        .map_err(|e| GrantError::Key(format!("not a PKCS#8 PEM private key: {e}")))?;
    if pair.algorithm() != &rcgen::PKCS_ED25519 {
        return Err(GrantError::Key(
            "not an Ed25519 key; create one with `openssl genpkey -algorithm ed25519`".into(),
        ));
    }
    let key = EncodingKey::from_ed_pem(pem.as_bytes())
        .map_err(|e| GrantError::Key(format!("unusable Ed25519 key: {e}")))?;
    Ok((key, pair.public_key_raw().to_vec()))
}

/// Signs grants with the broker's Ed25519 key.
pub struct GrantSigner {
    key: EncodingKey,
    public_key: Vec<u8>,
    kid: String,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for GrantSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl GrantSigner {
    /// Loads an Ed25519 PKCS#8 PEM key.
    pub fn from_pkcs8_pem(pem: &str, issuer: &str, audience: &str) -> Result<Self, GrantError> {
        let (key, public_key) = load_ed25519(pem)?;
        Ok(Self {
            kid: ed25519_kid(&public_key),
            key,
            public_key,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// The key id carried in every grant's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Mints a grant; returns the token and its claims.
    pub fn mint(&self, spec: &GrantSpec) -> Result<(String, GrantClaims), GrantError> {
        let claims = GrantClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: spec.sub.clone(),
            customer: spec.customer.clone(),
            target: spec.target.clone(),
            port: spec.port,
            gid: spec.gid.clone(),
            iat: unix(SystemTime::now()),
            nbf: unix(spec.not_before),
            exp: unix(spec.expires_at),
            jti: uuid::Uuid::new_v4().to_string(),
            cnf: Confirmation {
                x5t_s256: B64.encode(spec.cert_thumbprint),
            },
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(GRANT_TYP.into());
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| GrantError::Key(format!("signing failed: {e}")))?;
        Ok((token, claims))
    }
}

/// Verifies grants: one algorithm, known keys, required claims, explicit leeway.
pub struct GrantVerifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    leeway: u64,
    /// Claims of tokens that verified, by SHA-256 of the token (see the module docs). `None`: off.
    verified: Option<quick_cache::sync::Cache<[u8; 32], Arc<GrantClaims>>>,
}

impl std::fmt::Debug for GrantVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantVerifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl GrantVerifier {
    /// A verifier for `issuer`/`audience` with `leeway` for clock skew, trusting no key yet.
    pub fn new(issuer: &str, audience: &str, leeway: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = leeway.as_secs();
        Self {
            keys: HashMap::new(),
            validation,
            leeway: leeway.as_secs(),
            verified: Some(quick_cache::sync::Cache::new(VERIFIED_CACHE_ENTRIES)),
        }
    }

    /// Remembers up to `entries` verified tokens (0: none, every use checks the signature).
    pub fn remember(mut self, entries: usize) -> Self {
        self.verified = (entries > 0).then(|| quick_cache::sync::Cache::new(entries));
        self
    }

    /// Trusts an Ed25519 public key (raw 32 bytes) under its thumbprint `kid`.
    pub fn trust(mut self, public_key: &[u8]) -> Self {
        self.keys.insert(
            ed25519_kid(public_key),
            DecodingKey::from_ed_der(public_key),
        );
        self
    }

    /// Claims of a token whose header and signature verify, ignoring its time window. For naming the
    /// customer of an expired grant in the audit trail; never for letting anything through.
    pub fn signed_claims(&self, token: &str) -> Option<GrantClaims> {
        let mut relaxed = self.validation.clone();
        relaxed.validate_exp = false;
        relaxed.validate_nbf = false;
        self.check(token, &relaxed).ok()
    }

    /// Verifies a token's header, signature and claims. Does not check the certificate binding.
    pub fn verify(&self, token: &str) -> Result<GrantClaims, GrantError> {
        self.verify_at(token, SystemTime::now())
    }

    /// [`Self::verify`] with the time window checked at `now`. The signature of a token not seen
    /// before is checked with `jsonwebtoken`, which also checks the window at the real time.
    fn verify_at(&self, token: &str, now: SystemTime) -> Result<GrantClaims, GrantError> {
        let now = unix(now);
        let Some(cache) = &self.verified else {
            let claims = self.check(token, &self.validation)?;
            self.check_window(&claims, now)?;
            return Ok(claims);
        };
        if token.len() > MAX_TOKEN_BYTES {
            return self.check(token, &self.validation);
        }
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = cache.get(&key) {
            self.check_window(&claims, now)?;
            return Ok(GrantClaims::clone(&claims));
        }
        let claims = self.check(token, &self.validation)?;
        self.check_window(&claims, now)?;
        cache.insert(key, Arc::new(claims.clone()));
        Ok(claims)
    }

    /// The time window at `now` (seconds since the epoch), by `jsonwebtoken`'s rules and leeway
    /// (`exp` before `now - leeway` has expired, `nbf` after `now + leeway` is not yet valid), and
    /// the checks `jsonwebtoken` does not make: `iat` not in the future and `nbf` before `exp`.
    fn check_window(&self, claims: &GrantClaims, now: u64) -> Result<(), GrantError> {
        if claims.exp < now.saturating_sub(self.leeway) {
            return Err(GrantError::Expired);
        }
        if claims.nbf > now.saturating_add(self.leeway) {
            return Err(GrantError::NotYetValid);
        }
        if claims.iat > now.saturating_add(self.leeway) {
            return Err(GrantError::Claims("`iat` is in the future".into()));
        }
        if claims.nbf >= claims.exp {
            return Err(GrantError::Claims("`nbf` is not before `exp`".into()));
        }
        Ok(())
    }

    fn check(&self, token: &str, validation: &Validation) -> Result<GrantClaims, GrantError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(GrantError::Malformed(format!(
                "token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| GrantError::Malformed(format!("unreadable header: {e}")))?;
        if header.alg != Algorithm::EdDSA {
            return Err(GrantError::Header(format!(
                "algorithm `{:?}` is not accepted; grants use EdDSA",
                header.alg
            )));
        }
        if header.typ.as_deref() != Some(GRANT_TYP) {
            return Err(GrantError::Header(format!(
                "`typ` must be `{GRANT_TYP}`, found {:?}",
                header.typ
            )));
        }
        for (name, present) in [
            ("jku", header.jku.is_some()),
            ("jwk", header.jwk.is_some()),
            ("x5u", header.x5u.is_some()),
            ("x5c", header.x5c.is_some()),
            ("crit", header.crit.is_some()),
        ] {
            if present {
                return Err(GrantError::Header(format!(
                    "header parameter `{name}` is not accepted"
                )));
            }
        }
        let kid = header
            .kid
            .ok_or_else(|| GrantError::Header("missing `kid`".into()))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| GrantError::UnknownKey(printable(&kid)))?;
        let data =
            jsonwebtoken::decode::<GrantClaims>(token, key, validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::InvalidSignature => GrantError::BadSignature,
                    ErrorKind::ExpiredSignature => GrantError::Expired,
                    ErrorKind::ImmatureSignature => GrantError::NotYetValid,
                    ErrorKind::InvalidIssuer => GrantError::Claims("wrong `iss`".into()),
                    ErrorKind::InvalidAudience => GrantError::Claims("wrong `aud`".into()),
                    ErrorKind::MissingRequiredClaim(c) => {
                        GrantError::Claims(format!("missing `{c}`"))
                    }
                    ErrorKind::Json(j) => GrantError::Claims(format!("{j}")),
                    ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                        GrantError::Malformed(e.to_string())
                    }
                    _ => GrantError::Claims(e.to_string()),
                }
            })?;
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use sallyport_ids::{Principal, TrustDomain};

    fn signer() -> GrantSigner {
        let pem = generate_signing_key_pem().unwrap();
        GrantSigner::from_pkcs8_pem(&pem, "sallyport", "sallyport-data-plane").unwrap()
    }

    #[test]
    fn keys_are_written_as_pkcs8_v1_and_both_forms_are_read() {
        let pem = generate_signing_key_pem().unwrap();
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        // RFC 8410's v1 form: version 0, the OID, the 32-byte seed and nothing else.
        assert_eq!(der.secret_pkcs8_der().len(), 48);
        assert_eq!(der.secret_pkcs8_der()[4], 0, "version 0 (v1)");
        GrantSigner::from_pkcs8_pem(&pem, "i", "a").unwrap();
        // Keys an earlier version wrote (v2, with the public key) still load.
        let v2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem();
        assert_ne!(v2, pem);
        let signer = GrantSigner::from_pkcs8_pem(&v2, "i", "a").unwrap();
        assert_eq!(signer.public_key().len(), 32);
    }

    fn verifier(s: &GrantSigner) -> GrantVerifier {
        GrantVerifier::new("sallyport", "sallyport-data-plane", Duration::from_secs(30))
            .trust(s.public_key())
    }

    fn spec(nbf_offset: i64, exp_offset: i64) -> GrantSpec {
        let td: TrustDomain = "sallyport.test".parse().unwrap();
        let now = SystemTime::now();
        let at = |o: i64| {
            if o >= 0 {
                now + Duration::from_secs(o as u64)
            } else {
                now - Duration::from_secs((-o) as u64)
            }
        };
        GrantSpec {
            sub: SpiffeId::new(
                td,
                Principal::Technician {
                    provider: "northwind".parse().unwrap(),
                    name: "alice".parse().unwrap(),
                },
            ),
            customer: "acme".parse().unwrap(),
            target: "db01".parse().unwrap(),
            port: 5432,
            gid: "g-1".parse().unwrap(),
            not_before: at(nbf_offset),
            expires_at: at(exp_offset),
            cert_thumbprint: [7; 32],
        }
    }

    fn forge(header: &str, claims: &serde_json::Value, sig: &str) -> String {
        format!(
            "{}.{}.{}",
            B64.encode(header),
            B64.encode(serde_json::to_vec(claims).unwrap()),
            sig
        )
    }

    #[test]
    fn round_trip_and_binding() {
        let s = signer();
        let (token, claims) = s.mint(&spec(0, 600)).unwrap();
        let got = verifier(&s).verify(&token).unwrap();
        assert_eq!(got, claims);
        assert!(got.is_bound_to(&[7; 32]));
        assert!(!got.is_bound_to(&[8; 32]));
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.typ.as_deref(), Some(GRANT_TYP));
        assert_eq!(header.kid.as_deref(), Some(s.kid()));
    }

    #[test]
    fn time_window_with_leeway() {
        let s = signer();
        let v = verifier(&s);
        let (t, claims) = s.mint(&spec(-600, -60)).unwrap();
        assert_eq!(v.verify(&t), Err(GrantError::Expired));
        assert_eq!(v.signed_claims(&t), Some(claims));
        let (t, _) = s.mint(&spec(-600, -10)).unwrap();
        assert!(v.verify(&t).is_ok(), "within leeway");
        let (t, _) = s.mint(&spec(120, 600)).unwrap();
        assert_eq!(v.verify(&t), Err(GrantError::NotYetValid));
    }

    fn remembered(v: &GrantVerifier) -> usize {
        v.verified.as_ref().map_or(0, |c| c.len())
    }

    #[test]
    fn a_remembered_grant_is_still_checked_for_its_window() {
        let s = signer();
        let v = verifier(&s);
        let (t, claims) = s.mint(&spec(-60, 600)).unwrap();
        let now = SystemTime::now();
        assert_eq!(v.verify_at(&t, now), Ok(claims.clone()));
        assert_eq!(remembered(&v), 1);
        assert_eq!(v.verify_at(&t, now), Ok(claims));
        assert_eq!(remembered(&v), 1, "the second use is served from the cache");
        // The signature is not checked again, but the window is, at the time given, with the leeway.
        let later = |secs| now + Duration::from_secs(secs);
        assert!(v.verify_at(&t, later(600 + 29)).is_ok(), "within leeway");
        assert_eq!(v.verify_at(&t, later(600 + 31)), Err(GrantError::Expired));
        assert_eq!(
            v.verify_at(&t, now - Duration::from_secs(60 + 31)),
            Err(GrantError::NotYetValid)
        );
    }

    #[test]
    fn only_grants_that_verify_are_remembered_and_each_byte_counts() {
        let s = signer();
        let v = verifier(&s);
        let (expired, _) = s.mint(&spec(-600, -60)).unwrap();
        assert_eq!(v.verify(&expired), Err(GrantError::Expired));
        assert_eq!(remembered(&v), 0);
        let (t, _) = s.mint(&spec(-60, 600)).unwrap();
        assert!(v.verify(&t).is_ok());
        assert_eq!(remembered(&v), 1);
        // The same token with one character of its signature changed: a different key, checked in full.
        let at = t.len() - 10;
        let swapped = if &t[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{swapped}{}", &t[..at], &t[at + 1..]);
        assert_eq!(v.verify(&forged), Err(GrantError::BadSignature));
        assert_eq!(remembered(&v), 1);
        // A verifier that remembers nothing checks every use in full, with the same results.
        let plain = verifier(&s).remember(0);
        assert!(plain.verify(&t).is_ok());
        assert_eq!(plain.verify(&forged), Err(GrantError::BadSignature));
        assert_eq!(plain.verify(&expired), Err(GrantError::Expired));
        assert_eq!(remembered(&plain), 0);
    }

    #[test]
    fn other_key_same_kid_is_a_bad_signature() {
        let s = signer();
        let other = signer();
        let (token, _) = other.mint(&spec(0, 600)).unwrap();
        // Re-label the other key's token with the trusted kid.
        let mut parts: Vec<&str> = token.split('.').collect();
        let header = format!(
            r#"{{"typ":"{GRANT_TYP}","alg":"EdDSA","kid":"{}"}}"#,
            s.kid()
        );
        let h = B64.encode(header);
        parts[0] = &h;
        assert_eq!(
            verifier(&s).verify(&parts.join(".")),
            Err(GrantError::BadSignature)
        );
        assert!(matches!(
            verifier(&s).verify(&token),
            Err(GrantError::UnknownKey(_))
        ));
    }

    #[test]
    fn alg_none_and_hs256_are_refused() {
        let s = signer();
        let (_, claims) = s.mint(&spec(0, 600)).unwrap();
        let claims = serde_json::to_value(claims).unwrap();
        let none = forge(
            &format!(
                r#"{{"typ":"{GRANT_TYP}","alg":"none","kid":"{}"}}"#,
                s.kid()
            ),
            &claims,
            "",
        );
        assert!(matches!(
            verifier(&s).verify(&none),
            Err(GrantError::Malformed(_))
        ));
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(GRANT_TYP.into());
        header.kid = Some(s.kid().into());
        let hs = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(s.public_key()))
            .unwrap();
        assert!(matches!(
            verifier(&s).verify(&hs),
            Err(GrantError::Header(_))
        ));
    }

    #[test]
    fn key_locations_in_header_are_refused() {
        let s = signer();
        let (token, _) = s.mint(&spec(0, 600)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        for extra in [
            r#""jku":"https://evil.example/keys""#,
            r#""x5u":"https://evil.example/cert""#,
            r#""x5c":["AAAA"]"#,
            r#""crit":["exp"]"#,
        ] {
            let header = format!(
                r#"{{"typ":"{GRANT_TYP}","alg":"EdDSA","kid":"{}",{extra}}}"#,
                s.kid()
            );
            let t = format!("{}.{}.{}", B64.encode(header), parts[1], parts[2]);
            assert!(
                matches!(verifier(&s).verify(&t), Err(GrantError::Header(_))),
                "{extra}"
            );
        }
    }

    #[test]
    fn wrong_claim_types_and_missing_claims_are_refused() {
        let s = signer();
        let (_, claims) = s.mint(&spec(0, 600)).unwrap();
        let base = serde_json::to_value(claims).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(GRANT_TYP.into());
        header.kid = Some(s.kid().into());
        let pem = generate_signing_key_pem().unwrap();
        let _ = pem;
        let enc = &s.key;
        for (field, value) in [
            ("exp", serde_json::json!("9999999999")),
            ("nbf", serde_json::Value::Null),
            ("sub", serde_json::json!("alice")),
            ("aud", serde_json::json!("someone-else")),
            ("iss", serde_json::json!("evil")),
            ("customer", serde_json::json!("ACME")),
        ] {
            let mut c = base.clone();
            c[field] = value;
            let t = jsonwebtoken::encode(&header, &c, enc).unwrap();
            assert!(verifier(&s).verify(&t).is_err(), "{field}");
        }
        for field in ["exp", "nbf", "iat", "iss", "aud", "sub", "cnf", "gid"] {
            let mut c = base.clone();
            c.as_object_mut().unwrap().remove(field);
            let t = jsonwebtoken::encode(&header, &c, enc).unwrap();
            assert!(verifier(&s).verify(&t).is_err(), "missing {field}");
        }
    }

    #[test]
    fn wrong_typ_is_refused() {
        let s = signer();
        let (_, claims) = s.mint(&spec(0, 600)).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("JWT".into());
        header.kid = Some(s.kid().into());
        let t = jsonwebtoken::encode(&header, &claims, &s.key).unwrap();
        assert!(matches!(
            verifier(&s).verify(&t),
            Err(GrantError::Header(_))
        ));
    }

    #[test]
    fn non_ed25519_key_is_refused_with_a_fix() {
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let err = GrantSigner::from_pkcs8_pem(&p256, "i", "a").unwrap_err();
        assert!(err.to_string().contains("not an Ed25519 key"), "{err}");
    }
}
