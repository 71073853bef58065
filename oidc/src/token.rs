//! ID token verification, pure and without I/O: the compact token, a JWK set and what the sign-in
//! expects ([`Expect`]) in, the claims the broker uses ([`IdClaims`]) or why the token was refused
//! ([`TokenRefusal`]) out.
//!
//! Signatures are checked by `jsonwebtoken`, never here, and only for the algorithms of
//! [`ALLOWED_ALGORITHMS`] (no `HS*`, no `none`); the key is picked from the set by the token's `kid`
//! and must fit the algorithm (its type, curve and own `alg`). Every time check is made against
//! [`Expect::now`], not the clock, so an auditor can check a recorded token at the time it was used.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

/// The signature algorithms an ID token may use: asymmetric only (never `HS*`, never `none`).
pub const ALLOWED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The largest compact ID token read, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The token types (`typ` header) refused because they name another kind of token signed by the
/// same keys: an access token (RFC 9068) or a logout token (OIDC back-channel logout).
const REFUSED_TYPES: &[&str] = &[
    "at+jwt",
    "application/at+jwt",
    "logout+jwt",
    "application/logout+jwt",
];

/// What the sign-in expects of its ID token.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The issuer, compared exactly (the configured issuer URL).
    pub issuer: &'a str,
    /// Our client id: it must be in `aud` (and be `azp` when that is present).
    pub audience: &'a str,
    /// The nonce sent in the authorization request; when set, the token must carry it.
    pub nonce: Option<&'a str>,
    /// The time to check at, in Unix seconds (now, or when a recorded token was used).
    pub now: u64,
    /// The clock skew allowed each way, in seconds.
    pub leeway: u64,
    /// The claim the groups are read from (`groups`, `roles`, ...).
    pub groups_claim: &'a str,
    /// The claim the display name is read from (`name`, `preferred_username`, ...).
    pub name_claim: &'a str,
}

/// The claims of a verified ID token that the broker uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdClaims {
    /// `iss`: the identity provider.
    pub issuer: String,
    /// `sub`: the person, unique and stable within the issuer.
    pub subject: String,
    /// `aud`: who the token is for (always one value or more, one of them our client id).
    pub audience: Vec<String>,
    /// `azp`: the party the token was issued to, when given.
    pub authorized_party: Option<String>,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// `iat`, Unix seconds.
    pub issued_at: u64,
    /// `nonce`, when given.
    pub nonce: Option<String>,
    /// `auth_time`: when the person actually authenticated, Unix seconds, when given.
    pub auth_time: Option<u64>,
    /// `amr`: the authentication methods used (RFC 8176 values such as `pwd`, `otp`, `hwk`).
    pub amr: Vec<String>,
    /// `acr`: the authentication context class, when given.
    pub acr: Option<String>,
    /// The value of [`Expect::name_claim`], when it is a string.
    pub name: Option<String>,
    /// `email`, when it is a string.
    pub email: Option<String>,
    /// The values of [`Expect::groups_claim`]: an array of strings (other entries skipped) or a
    /// single string; empty when absent.
    pub groups: Vec<String>,
    /// The `kid` of the key that signed the token, when the header named one.
    pub key_id: Option<String>,
    /// The signature algorithm, as in the header (`RS256`, `ES256`, `EdDSA`, ...).
    pub algorithm: String,
}

/// RFC 8176 methods that are something the person knows.
const KNOWLEDGE: &[&str] = &["pwd", "pin", "kba"];
/// RFC 8176 methods that are something the person has.
const POSSESSION: &[&str] = &["otp", "hwk", "swk", "sms", "tel", "sc", "pop"];
/// RFC 8176 methods that are something the person is. (`user`, a presence test, is not a factor.)
const INHERENCE: &[&str] = &["fpt", "face", "iris", "retina", "vbm"];

impl IdClaims {
    /// Whether the person signed in with more than one factor: `amr` holds `mfa`, or methods of at
    /// least two RFC 8176 factor categories (knowledge, possession, inherence). Two methods of the
    /// same category (`otp` and `sms`) are one factor.
    pub fn mfa(&self) -> bool {
        if self.amr.iter().any(|m| m == "mfa") {
            return true;
        }
        let uses = |category: &[&str]| self.amr.iter().any(|m| category.contains(&m.as_str()));
        [KNOWLEDGE, POSSESSION, INHERENCE]
            .into_iter()
            .filter(|c| uses(c))
            .count()
            >= 2
    }

    /// When the person authenticated: `auth_time`, or `iat` when the token has no `auth_time`.
    pub fn auth_time_or_iat(&self) -> u64 {
        self.auth_time.unwrap_or(self.issued_at)
    }
}

/// Why an ID token was refused. [`TokenRefusal::code`] gives a stable code for logs and metrics.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TokenRefusal {
    /// The token is larger than [`MAX_TOKEN_BYTES`].
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// The token is not a well-formed signed JWT (three base64url parts, JSON header and claims,
    /// claims of the right types).
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// The token's `typ` header names another kind of token.
    #[error("the token is of type `{0}`, expected an ID token (`JWT` or no `typ`)")]
    TokenType(String),
    /// The signature algorithm is not allowed.
    #[error(
        "the signature algorithm `{0}` is not allowed: expected one of RS256, RS384, RS512, PS256, \
         PS384, PS512, ES256, ES384, EdDSA"
    )]
    Algorithm(String),
    /// No key of the set fits: the header's `kid` is not in the set (the key id), or no key fits the
    /// algorithm when the header names none (`None`).
    #[error("{}", match .0 {
        Some(kid) => format!("no key with id `{kid}` in the identity provider's key set"),
        None => "the token names no key id and no key of the set fits its algorithm".to_owned(),
    })]
    UnknownKey(Option<String>),
    /// Several keys fit a token that does not say which one it was signed with.
    #[error(
        "{0} keys of the set fit the token and it names no key id (`kid`) to choose between them"
    )]
    AmbiguousKey(usize),
    /// The key named by the token cannot verify it (another key type or curve, another `alg`, not a
    /// signing key, unreadable).
    #[error("the key does not fit the token: {0}")]
    KeyMismatch(String),
    /// The signature does not verify.
    #[error("the signature does not verify with the identity provider's key")]
    Signature,
    /// `iss` is not the expected issuer.
    #[error("the token was issued by `{found}`, expected `{expected}`")]
    Issuer {
        /// The configured issuer.
        expected: String,
        /// The token's `iss`.
        found: String,
    },
    /// `aud` does not hold our client id.
    #[error("the token is for {found:?}, expected it to be for `{expected}`")]
    Audience {
        /// Our client id.
        expected: String,
        /// The token's `aud` values.
        found: Vec<String>,
    },
    /// `azp` is missing from a token for several audiences, or is not our client id.
    #[error("{}", match found {
        Some(found) => format!("the token was issued to `{found}` (azp), expected `{expected}`"),
        None => format!("the token is for several audiences and has no azp, expected azp `{expected}`"),
    })]
    AuthorizedParty {
        /// Our client id.
        expected: String,
        /// The token's `azp`, when present.
        found: Option<String>,
    },
    /// The token has expired (`exp` plus the leeway is not after `now`).
    #[error("the token expired at {exp}, it is now {now} (Unix seconds, leeway included)")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The time checked at.
        now: u64,
    },
    /// The token is not valid yet (`nbf` is after `now` plus the leeway).
    #[error("the token is not valid before {nbf}, it is now {now} (Unix seconds)")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
        /// The time checked at.
        now: u64,
    },
    /// The token says it was issued after `now` plus the leeway (a wrong clock at either end).
    #[error("the token was issued at {iat}, after now ({now}, Unix seconds): check both clocks")]
    IssuedInFuture {
        /// The token's `iat`.
        iat: u64,
        /// The time checked at.
        now: u64,
    },
    /// The token's nonce is not the one of this sign-in (a replayed or misdirected token).
    #[error("the token's nonce is not the one sent for this sign-in")]
    Nonce,
    /// A required claim is missing (or empty).
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
}

impl TokenRefusal {
    /// A stable snake_case code for logs, metrics and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::TokenType(_) => "token_type",
            Self::Algorithm(_) => "algorithm",
            Self::UnknownKey(_) => "unknown_key",
            Self::AmbiguousKey(_) => "ambiguous_key",
            Self::KeyMismatch(_) => "key_mismatch",
            Self::Signature => "signature",
            Self::Issuer { .. } => "issuer",
            Self::Audience { .. } => "audience",
            Self::AuthorizedParty { .. } => "authorized_party",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::IssuedInFuture { .. } => "issued_in_future",
            Self::Nonce => "nonce",
            Self::MissingClaim(_) => "missing_claim",
        }
    }
}

/// Verifies `token` (a compact JWS) with `keys` against `expect` and returns its claims.
///
/// In order: the size, the header (an allowed `alg`, no `crit`, not an access or logout token), the
/// key (by `kid`, or the only key fitting the algorithm), the signature, then `iss`, `aud`, `azp`,
/// `exp`, `iat`, `nbf`, `sub` and the nonce. The first failure is returned. Keys the token itself
/// names or carries (`jku`, `jwk`, `x5u`, `x5c` headers) are never used: only `keys`.
pub fn verify_id_token(
    token: &str,
    keys: &JwkSet,
    expect: &Expect<'_>,
) -> Result<IdClaims, TokenRefusal> {
    let header = RawHeader::of(token)?;
    let key = select_key(keys, header.alg, header.kid.as_deref())?;
    let decoding =
        DecodingKey::from_jwk(key).map_err(|e| TokenRefusal::KeyMismatch(format!("{e}")))?;
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &decoding, &validation)
        .map_err(refusal_of)?;
    check_claims(&data.claims, &header, expect)
}

/// The claims of `token` decoded WITHOUT verifying anything: for display and diagnostics only,
/// never for a decision.
pub fn claims_unverified(token: &str) -> Result<Value, TokenRefusal> {
    let (_, payload, _) = parts(token)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| TokenRefusal::Malformed(format!("the claims are not base64url: {e}")))?;
    let claims: Value = serde_json::from_slice(&bytes)
        .map_err(|e| TokenRefusal::Malformed(format!("the claims are not JSON: {e}")))?;
    if claims.is_object() {
        Ok(claims)
    } else {
        Err(TokenRefusal::Malformed(
            "the claims are not a JSON object".to_owned(),
        ))
    }
}

/// The `kid` of `token`'s header, read without verifying anything (to pick or fetch the key set).
/// Refuses what [`verify_id_token`] would refuse from the header alone.
pub fn key_id(token: &str) -> Result<Option<String>, TokenRefusal> {
    RawHeader::of(token).map(|h| h.kid)
}

/// The three parts of a compact JWS, size-checked.
fn parts(token: &str) -> Result<(&str, &str, &str), TokenRefusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenRefusal::TooLarge);
    }
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() => Ok((h, p, s)),
        _ => Err(TokenRefusal::Malformed(
            "expected three base64url parts separated by dots (a signed JWT)".to_owned(),
        )),
    }
}

/// What is read of the header before the key is chosen.
struct RawHeader {
    alg: Algorithm,
    kid: Option<String>,
}

impl RawHeader {
    /// Reads and checks the header of `token` (the algorithm from the raw JSON first, so `none` and
    /// `HS*` are named in the refusal rather than failing as unparsable).
    fn of(token: &str) -> Result<Self, TokenRefusal> {
        let (header, _, _) = parts(token)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|e| TokenRefusal::Malformed(format!("the header is not base64url: {e}")))?;
        let json: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
            TokenRefusal::Malformed(format!("the header is not a JSON object: {e}"))
        })?;
        let alg = match json.get("alg") {
            Some(Value::String(alg)) => alg,
            Some(_) => return Err(TokenRefusal::Malformed("`alg` is not a string".to_owned())),
            None => {
                return Err(TokenRefusal::Malformed(
                    "the header has no `alg`".to_owned(),
                ));
            }
        };
        let Some(&alg) = ALLOWED_ALGORITHMS
            .iter()
            .find(|a| algorithm_name(**a) == alg)
        else {
            return Err(TokenRefusal::Algorithm(truncate(alg, 32)));
        };
        match json.get("typ") {
            None | Some(Value::Null) => {}
            Some(Value::String(typ))
                if REFUSED_TYPES.iter().any(|t| t.eq_ignore_ascii_case(typ)) =>
            {
                return Err(TokenRefusal::TokenType(truncate(typ, 64)));
            }
            Some(Value::String(_)) => {}
            Some(_) => return Err(TokenRefusal::Malformed("`typ` is not a string".to_owned())),
        }
        if json.contains_key("crit") {
            return Err(TokenRefusal::Malformed(
                "the header has `crit` extensions, none of which are understood here".to_owned(),
            ));
        }
        let kid = match json.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(TokenRefusal::Malformed("`kid` is not a string".to_owned())),
        };
        // The library parses the same header when it verifies: make sure it can.
        jsonwebtoken::decode_header(token).map_err(refusal_of)?;
        Ok(Self { alg, kid })
    }
}

/// The JOSE name of `alg`.
pub(crate) fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // `Algorithm` is non-exhaustive; a new one is not in the allow-list anyway.
        _ => "unknown",
    }
}

/// Picks the key verifying a token signed with `alg`: the key named `kid`, or the only one that
/// fits when the token names none.
fn select_key<'k>(
    keys: &'k JwkSet,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<&'k Jwk, TokenRefusal> {
    let named: Vec<&Jwk> = match kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(|k| k.common.key_id.as_deref() == Some(kid))
            .collect(),
        None => keys.keys.iter().collect(),
    };
    if named.is_empty() {
        return Err(TokenRefusal::UnknownKey(kid.map(|k| truncate(k, 128))));
    }
    let fitting: Vec<&Jwk> = named
        .iter()
        .copied()
        .filter(|k| key_misfit(k, alg).is_none())
        .collect();
    match (fitting.as_slice(), kid) {
        ([key], _) => Ok(key),
        ([], None) => Err(TokenRefusal::UnknownKey(None)),
        ([], Some(kid)) => {
            let why = named
                .first()
                .and_then(|k| key_misfit(k, alg))
                .unwrap_or_default();
            Err(TokenRefusal::KeyMismatch(format!(
                "key `{}` {why}",
                truncate(kid, 128)
            )))
        }
        (several, _) => Err(TokenRefusal::AmbiguousKey(several.len())),
    }
}

/// Why `key` cannot verify a signature made with `alg`, or `None` when it can.
fn key_misfit(key: &Jwk, alg: Algorithm) -> Option<String> {
    let name = algorithm_name(alg);
    if let Some(usage) = &key.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Some("is not a signing key (`use` is not `sig`)".to_owned());
    }
    if let Some(ops) = &key.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Some("is not for verifying (`key_ops` lacks `verify`)".to_owned());
    }
    if let Some(own) = key.common.key_algorithm
        && own != KeyAlgorithm::from(alg)
    {
        return Some(format!("is for `{own}`, the token is signed with `{name}`"));
    }
    let fits = match (&key.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519
        }
        _ => false,
    };
    if fits {
        None
    } else {
        let kind = match &key.algorithm {
            AlgorithmParameters::RSA(_) => "an RSA key".to_owned(),
            AlgorithmParameters::EllipticCurve(ec) => format!("an EC key on {:?}", ec.curve),
            AlgorithmParameters::OctetKeyPair(okp) => format!("an OKP key on {:?}", okp.curve),
            AlgorithmParameters::OctetKey(_) => "a symmetric (oct) key".to_owned(),
            _ => "a key of an unsupported type".to_owned(),
        };
        Some(format!("is {kind}, which cannot verify `{name}`"))
    }
}

/// The refusal for an error of `jsonwebtoken`.
fn refusal_of(e: jsonwebtoken::errors::Error) -> TokenRefusal {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenRefusal::Signature,
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenRefusal::KeyMismatch(format!("{e}")),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => TokenRefusal::Algorithm(format!("{e}")),
        _ => TokenRefusal::Malformed(format!("{e}")),
    }
}

/// The explicit claim checks, after the signature verified.
fn check_claims(
    claims: &Map<String, Value>,
    header: &RawHeader,
    expect: &Expect<'_>,
) -> Result<IdClaims, TokenRefusal> {
    let issuer = string_claim(claims, "iss")?.ok_or(TokenRefusal::MissingClaim("iss"))?;
    if issuer != expect.issuer {
        return Err(TokenRefusal::Issuer {
            expected: expect.issuer.to_owned(),
            found: truncate(issuer, 256),
        });
    }

    let audience = audience_claim(claims)?;
    if !audience.iter().any(|a| a == expect.audience) {
        return Err(TokenRefusal::Audience {
            expected: expect.audience.to_owned(),
            found: audience.iter().take(16).map(|a| truncate(a, 256)).collect(),
        });
    }
    let authorized_party = string_claim(claims, "azp")?;
    match authorized_party {
        Some(azp) if azp != expect.audience => {
            return Err(TokenRefusal::AuthorizedParty {
                expected: expect.audience.to_owned(),
                found: Some(truncate(azp, 256)),
            });
        }
        None if audience.len() > 1 => {
            return Err(TokenRefusal::AuthorizedParty {
                expected: expect.audience.to_owned(),
                found: None,
            });
        }
        _ => {}
    }

    let now = expect.now;
    let exp = time_claim(claims, "exp")?.ok_or(TokenRefusal::MissingClaim("exp"))?;
    if now >= exp.saturating_add(expect.leeway) {
        return Err(TokenRefusal::Expired { exp, now });
    }
    let iat = time_claim(claims, "iat")?.ok_or(TokenRefusal::MissingClaim("iat"))?;
    if iat > now.saturating_add(expect.leeway) {
        return Err(TokenRefusal::IssuedInFuture { iat, now });
    }
    if let Some(nbf) = time_claim(claims, "nbf")?
        && nbf > now.saturating_add(expect.leeway)
    {
        return Err(TokenRefusal::NotYetValid { nbf, now });
    }

    let subject = string_claim(claims, "sub")?
        .filter(|s| !s.is_empty())
        .ok_or(TokenRefusal::MissingClaim("sub"))?;

    let nonce = string_claim(claims, "nonce")?;
    if let Some(expected) = expect.nonce {
        let found = nonce.ok_or(TokenRefusal::MissingClaim("nonce"))?;
        if !bool::from(found.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(TokenRefusal::Nonce);
        }
    }

    Ok(IdClaims {
        issuer: issuer.to_owned(),
        subject: subject.to_owned(),
        audience,
        authorized_party: authorized_party.map(str::to_owned),
        expires_at: exp,
        issued_at: iat,
        nonce: nonce.map(str::to_owned),
        auth_time: time_claim(claims, "auth_time")?,
        amr: strings_claim(claims.get("amr")),
        acr: string_claim(claims, "acr")?.map(str::to_owned),
        name: claims
            .get(expect.name_claim)
            .and_then(Value::as_str)
            .map(str::to_owned),
        email: claims
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_owned),
        groups: strings_claim(claims.get(expect.groups_claim)),
        key_id: header.kid.clone(),
        algorithm: algorithm_name(header.alg).to_owned(),
    })
}

/// A string claim: `None` when absent or null, refused when of another type.
fn string_claim<'c>(
    claims: &'c Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'c str>, TokenRefusal> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenRefusal::Malformed(format!(
            "the `{name}` claim is not a string"
        ))),
    }
}

/// A NumericDate claim in whole seconds (a fraction is dropped): `None` when absent or null,
/// refused when negative or not a number.
fn time_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, TokenRefusal> {
    let not_a_time =
        || TokenRefusal::Malformed(format!("the `{name}` claim is not a time (Unix seconds)"));
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(secs) => Ok(Some(secs)),
            None => match n.as_f64() {
                // Checked finite and non-negative; `as` saturates above `u64::MAX`.
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f.floor() as u64)),
                _ => Err(not_a_time()),
            },
        },
        Some(_) => Err(not_a_time()),
    }
}

/// `aud`: one string or an array of strings; required.
fn audience_claim(claims: &Map<String, Value>) -> Result<Vec<String>, TokenRefusal> {
    let not_strings =
        || TokenRefusal::Malformed("the `aud` claim is not a string or an array of strings".into());
    match claims.get("aud") {
        None | Some(Value::Null) => Err(TokenRefusal::MissingClaim("aud")),
        Some(Value::String(aud)) => Ok(vec![aud.clone()]),
        Some(Value::Array(values)) => values
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(not_strings))
            .collect(),
        Some(_) => Err(not_strings()),
    }
}

/// A list claim: the strings of an array (other entries skipped), or a single string; empty when
/// absent or of another type.
fn strings_claim(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(values)) => values
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// `s` cut to at most `max` characters, for echoing token content in a refusal.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
