//! Tests of ID token verification: one per refusal, a good token per key type, and `mfa`.

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::testkeys::{TestKey, forge, set_of};

const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://idp.example.com/realms/acme";
const CLIENT: &str = "sallyport";

fn expect() -> Expect<'static> {
    Expect {
        issuer: ISSUER,
        audience: CLIENT,
        nonce: Some("n-0123456789"),
        now: NOW,
        leeway: 30,
        groups_claim: "groups",
        name_claim: "name",
    }
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": "248289761001",
        "aud": CLIENT,
        "exp": NOW + 300,
        "iat": NOW - 10,
        "auth_time": NOW - 20,
        "nonce": "n-0123456789",
        "amr": ["pwd", "otp"],
        "acr": "urn:acme:loa:2",
        "name": "Alice Example",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "groups": ["ops", "dba", 7],
    })
}

/// `claims()` with `changes` applied (a null value removes the claim).
fn claims_with(changes: &Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn key() -> TestKey {
    TestKey::es256(Some("k1"))
}

fn refusal(key: &TestKey, claims: &Value) -> TokenRefusal {
    let token = key.sign(claims);
    verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).unwrap_err()
}

#[test]
fn a_good_token_gives_its_claims() {
    let key = key();
    let token = key.sign(&claims());
    let got = verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).unwrap();
    assert_eq!(
        got,
        IdClaims {
            issuer: ISSUER.to_owned(),
            subject: "248289761001".to_owned(),
            audience: vec![CLIENT.to_owned()],
            authorized_party: None,
            expires_at: NOW + 300,
            issued_at: NOW - 10,
            nonce: Some("n-0123456789".to_owned()),
            auth_time: Some(NOW - 20),
            amr: vec!["pwd".to_owned(), "otp".to_owned()],
            acr: Some("urn:acme:loa:2".to_owned()),
            name: Some("Alice Example".to_owned()),
            email: Some("alice@example.com".to_owned()),
            groups: vec!["ops".to_owned(), "dba".to_owned()],
            key_id: Some("k1".to_owned()),
            algorithm: "ES256".to_owned(),
        }
    );
    assert!(got.mfa());
    assert_eq!(got.auth_time_or_iat(), NOW - 20);
}

#[test]
fn other_claim_names_and_a_single_group() {
    let key = key();
    let token = key.sign(&claims_with(
        &json!({ "roles": "admin", "auth_time": null }),
    ));
    let mut expect = expect();
    expect.groups_claim = "roles";
    expect.name_claim = "preferred_username";
    let got = verify_id_token(&token, &set_of(&[&key.jwk]), &expect).unwrap();
    assert_eq!(got.groups, vec!["admin".to_owned()]);
    assert_eq!(got.name.as_deref(), Some("alice"));
    assert_eq!(got.auth_time_or_iat(), NOW - 10);

    expect.groups_claim = "absent";
    assert!(
        verify_id_token(&token, &set_of(&[&key.jwk]), &expect)
            .unwrap()
            .groups
            .is_empty()
    );
}

#[test]
fn eddsa_and_rs256_tokens_verify() {
    for key in [TestKey::ed25519("ed"), TestKey::rs256("rsa")] {
        let other = TestKey::es256(Some("k1"));
        let token = key.sign(&claims());
        let got = verify_id_token(&token, &set_of(&[&other.jwk, &key.jwk]), &expect()).unwrap();
        assert_eq!(got.key_id, key.kid);
        assert_eq!(got.algorithm, super::algorithm_name(key.alg));
    }
}

#[test]
fn a_token_without_kid_uses_the_only_fitting_key() {
    let key = TestKey::es256(None);
    let ed = TestKey::ed25519("ed");
    let token = key.sign(&claims());
    let got = verify_id_token(&token, &set_of(&[&ed.jwk, &key.jwk]), &expect()).unwrap();
    assert_eq!(got.key_id, None);

    let second = TestKey::es256(None);
    assert_eq!(
        verify_id_token(&token, &set_of(&[&key.jwk, &second.jwk]), &expect()),
        Err(TokenRefusal::AmbiguousKey(2))
    );
    assert_eq!(
        verify_id_token(&token, &set_of(&[&ed.jwk]), &expect()),
        Err(TokenRefusal::UnknownKey(None))
    );
}

#[test]
fn another_keys_signature_is_refused() {
    let key = key();
    let impostor = TestKey::es256(Some("k1"));
    let token = impostor.sign(&claims());
    let got = verify_id_token(&token, &set_of(&[&key.jwk]), &expect());
    assert_eq!(got, Err(TokenRefusal::Signature));
    assert_eq!(got.unwrap_err().code(), "signature");
}

#[test]
fn a_tampered_payload_is_refused() {
    let key = key();
    let token = key.sign(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = URL_SAFE_NO_PAD.encode(claims_with(&json!({"sub": "root"})).to_string());
    parts[1] = &forged;
    assert_eq!(
        verify_id_token(&parts.join("."), &set_of(&[&key.jwk]), &expect()),
        Err(TokenRefusal::Signature)
    );
}

#[test]
fn hs256_is_refused_even_with_a_matching_oct_key() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let oct =
        json!({ "kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret), "kid": "h", "alg": "HS256" });
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("h".to_owned());
    let token =
        jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret)).unwrap();
    let got = verify_id_token(&token, &set_of(&[&oct]), &expect());
    assert_eq!(got, Err(TokenRefusal::Algorithm("HS256".to_owned())));
    assert_eq!(got.unwrap_err().code(), "algorithm");
}

#[test]
fn alg_none_is_refused() {
    let key = key();
    for alg in ["none", "None", "NONE"] {
        let token = forge(&json!({ "alg": alg, "kid": "k1" }), &claims(), b"");
        assert_eq!(
            verify_id_token(&token, &set_of(&[&key.jwk]), &expect()),
            Err(TokenRefusal::Algorithm(alg.to_owned()))
        );
    }
}

#[test]
fn an_unknown_kid_is_refused() {
    let key = key();
    let stranger = TestKey::es256(Some("k2"));
    let token = stranger.sign(&claims());
    let got = verify_id_token(&token, &set_of(&[&key.jwk]), &expect());
    assert_eq!(got, Err(TokenRefusal::UnknownKey(Some("k2".to_owned()))));
    assert_eq!(got.unwrap_err().code(), "unknown_key");
}

#[test]
fn a_key_of_another_type_or_alg_is_refused() {
    // An ES256 token naming an Ed25519 key.
    let key = TestKey::es256(Some("ed"));
    let ed = TestKey::ed25519("ed");
    let token = key.sign(&claims());
    let got = verify_id_token(&token, &set_of(&[&ed.jwk]), &expect()).unwrap_err();
    assert_eq!(got.code(), "key_mismatch", "{got}");

    // The JWK says it is for ES384.
    let key = TestKey::es256(Some("k1"));
    let mut jwk = key.jwk.clone();
    jwk["alg"] = json!("ES384");
    let got = verify_id_token(&key.sign(&claims()), &set_of(&[&jwk]), &expect()).unwrap_err();
    assert_eq!(got.code(), "key_mismatch", "{got}");
    assert!(got.to_string().contains("ES384"), "{got}");

    // An encryption key.
    let mut jwk = key.jwk.clone();
    jwk["use"] = json!("enc");
    let got = verify_id_token(&key.sign(&claims()), &set_of(&[&jwk]), &expect()).unwrap_err();
    assert_eq!(got.code(), "key_mismatch", "{got}");
}

#[test]
fn a_wrong_issuer_is_refused() {
    let got = refusal(
        &key(),
        &claims_with(&json!({ "iss": "https://evil.example.com" })),
    );
    assert_eq!(
        got,
        TokenRefusal::Issuer {
            expected: ISSUER.to_owned(),
            found: "https://evil.example.com".to_owned()
        }
    );
    // Exact comparison: a trailing slash is another issuer.
    let got = refusal(
        &key(),
        &claims_with(&json!({ "iss": format!("{ISSUER}/") })),
    );
    assert_eq!(got.code(), "issuer");
    assert_eq!(
        refusal(&key(), &claims_with(&json!({ "iss": null }))),
        TokenRefusal::MissingClaim("iss")
    );
}

#[test]
fn a_wrong_audience_is_refused() {
    let got = refusal(
        &key(),
        &claims_with(&json!({ "aud": ["other", "another"] })),
    );
    assert_eq!(
        got,
        TokenRefusal::Audience {
            expected: CLIENT.to_owned(),
            found: vec!["other".to_owned(), "another".to_owned()]
        }
    );
    assert_eq!(got.code(), "audience");
    assert_eq!(
        refusal(&key(), &claims_with(&json!({ "aud": null }))),
        TokenRefusal::MissingClaim("aud")
    );
}

#[test]
fn several_audiences_need_azp_naming_us() {
    let key = key();
    let got = refusal(&key, &claims_with(&json!({ "aud": [CLIENT, "api"] })));
    assert_eq!(
        got,
        TokenRefusal::AuthorizedParty {
            expected: CLIENT.to_owned(),
            found: None
        }
    );
    let got = refusal(
        &key,
        &claims_with(&json!({ "aud": [CLIENT, "api"], "azp": "api" })),
    );
    assert_eq!(got.code(), "authorized_party");
    // azp naming another party is refused even for one audience.
    let got = refusal(&key, &claims_with(&json!({ "azp": "api" })));
    assert_eq!(got.code(), "authorized_party");

    let token = key.sign(&claims_with(
        &json!({ "aud": [CLIENT, "api"], "azp": CLIENT }),
    ));
    let got = verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).unwrap();
    assert_eq!(got.audience, vec![CLIENT.to_owned(), "api".to_owned()]);
    assert_eq!(got.authorized_party.as_deref(), Some(CLIENT));
}

#[test]
fn an_expired_token_is_refused_beyond_the_leeway() {
    let key = key();
    // Expired 10 s ago: within the 30 s leeway.
    let token = key.sign(&claims_with(&json!({ "exp": NOW - 10 })));
    assert!(verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).is_ok());
    // Expired exactly the leeway ago, and longer.
    for exp in [NOW - 30, NOW - 3600] {
        let got = refusal(&key, &claims_with(&json!({ "exp": exp })));
        assert_eq!(got, TokenRefusal::Expired { exp, now: NOW });
        assert_eq!(got.code(), "expired");
    }
    // No leeway: expiring now is expired.
    let mut strict = expect();
    strict.leeway = 0;
    let token = key.sign(&claims_with(&json!({ "exp": NOW })));
    assert!(verify_id_token(&token, &set_of(&[&key.jwk]), &strict).is_err());
    // The recorded time counts, not the clock: a token of 2023 verifies at its time.
    let token = key.sign(&claims());
    assert!(verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).is_ok());
}

#[test]
fn a_fractional_exp_is_read() {
    let key = key();
    let token = key.sign(&claims_with(&json!({ "exp": (NOW + 300) as f64 + 0.5 })));
    let got = verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).unwrap();
    assert_eq!(got.expires_at, NOW + 300);
    let got = refusal(&key, &claims_with(&json!({ "exp": "tomorrow" })));
    assert_eq!(got.code(), "malformed");
    let got = refusal(&key, &claims_with(&json!({ "exp": -5 })));
    assert_eq!(got.code(), "malformed");
}

#[test]
fn a_token_issued_in_the_future_is_refused() {
    let key = key();
    let token = key.sign(&claims_with(&json!({ "iat": NOW + 20 })));
    assert!(verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).is_ok());
    let got = refusal(&key, &claims_with(&json!({ "iat": NOW + 31 })));
    assert_eq!(
        got,
        TokenRefusal::IssuedInFuture {
            iat: NOW + 31,
            now: NOW
        }
    );
    assert_eq!(got.code(), "issued_in_future");
    assert_eq!(
        refusal(&key, &claims_with(&json!({ "iat": null }))),
        TokenRefusal::MissingClaim("iat")
    );
}

#[test]
fn a_token_not_yet_valid_is_refused() {
    let key = key();
    let got = refusal(&key, &claims_with(&json!({ "nbf": NOW + 120 })));
    assert_eq!(
        got,
        TokenRefusal::NotYetValid {
            nbf: NOW + 120,
            now: NOW
        }
    );
    assert_eq!(got.code(), "not_yet_valid");
    let token = key.sign(&claims_with(&json!({ "nbf": NOW + 5 })));
    assert!(verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).is_ok());
}

#[test]
fn a_wrong_nonce_is_refused() {
    let got = refusal(&key(), &claims_with(&json!({ "nonce": "n-replayed" })));
    assert_eq!(got, TokenRefusal::Nonce);
    assert_eq!(got.code(), "nonce");
    // A prefix of the right nonce is still wrong.
    let got = refusal(&key(), &claims_with(&json!({ "nonce": "n-01234" })));
    assert_eq!(got, TokenRefusal::Nonce);
}

#[test]
fn a_missing_nonce_is_refused_when_one_was_sent() {
    let key = key();
    let c = claims_with(&json!({ "nonce": null }));
    assert_eq!(refusal(&key, &c), TokenRefusal::MissingClaim("nonce"));
    // Nothing expected (an offline check of a token whose nonce was not kept): not needed.
    let mut expect = expect();
    expect.nonce = None;
    let got = verify_id_token(&key.sign(&c), &set_of(&[&key.jwk]), &expect).unwrap();
    assert_eq!(got.nonce, None);
}

#[test]
fn missing_sub_or_exp_is_refused() {
    let key = key();
    for (claim, name) in [("sub", "sub"), ("exp", "exp")] {
        let got = refusal(&key, &claims_with(&json!({ claim: null })));
        assert_eq!(got, TokenRefusal::MissingClaim(name));
        assert_eq!(got.code(), "missing_claim");
        assert!(got.to_string().contains(name));
    }
    assert_eq!(
        refusal(&key, &claims_with(&json!({ "sub": "" }))),
        TokenRefusal::MissingClaim("sub")
    );
}

#[test]
fn a_too_large_token_is_refused() {
    let key = key();
    let token = key.sign(&claims_with(
        &json!({ "padding": "x".repeat(MAX_TOKEN_BYTES) }),
    ));
    assert_eq!(
        verify_id_token(&token, &set_of(&[&key.jwk]), &expect()),
        Err(TokenRefusal::TooLarge)
    );
    assert_eq!(claims_unverified(&token), Err(TokenRefusal::TooLarge));
    assert_eq!(key_id(&token), Err(TokenRefusal::TooLarge));
}

#[test]
fn malformed_tokens_are_refused() {
    let key = key();
    let set = set_of(&[&key.jwk]);
    for token in ["", "abc", "a.b", "a.b.c.d", "!!.??.xx", ".."] {
        let got = verify_id_token(token, &set, &expect()).unwrap_err();
        assert_eq!(got.code(), "malformed", "{token}: {got}");
    }
    let token = forge(&json!(["ES256"]), &claims(), b"x");
    assert_eq!(
        verify_id_token(&token, &set, &expect()).unwrap_err().code(),
        "malformed"
    );
}

#[test]
fn access_and_logout_tokens_are_refused() {
    let key = key();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".to_owned());
    for typ in ["at+jwt", "logout+JWT"] {
        header.typ = Some(typ.to_owned());
        let token = forge(
            &serde_json::to_value(&header).unwrap(),
            &claims(),
            b"not checked: refused before the key",
        );
        let got = verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).unwrap_err();
        assert_eq!(got, TokenRefusal::TokenType(typ.to_owned()));
    }
}

#[test]
fn crit_headers_are_refused() {
    let key = key();
    let token = forge(
        &json!({ "alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1 }),
        &claims(),
        b"sig",
    );
    let got = verify_id_token(&token, &set_of(&[&key.jwk]), &expect()).unwrap_err();
    assert_eq!(got.code(), "malformed");
    assert!(got.to_string().contains("crit"));
}

#[test]
fn claims_can_be_read_unverified_for_display() {
    let token = forge(&json!({ "alg": "none" }), &claims(), b"");
    let got = claims_unverified(&token).unwrap();
    assert_eq!(got["sub"], "248289761001");
    assert_eq!(
        key_id(&token),
        Err(TokenRefusal::Algorithm("none".to_owned()))
    );
    let token = key().sign(&claims());
    assert_eq!(key_id(&token), Ok(Some("k1".to_owned())));
    assert_eq!(claims_unverified("a.b.c").unwrap_err().code(), "malformed");
}

#[test]
fn refusals_have_distinct_codes_and_say_what_was_expected() {
    let all = [
        TokenRefusal::TooLarge,
        TokenRefusal::Malformed(String::new()),
        TokenRefusal::TokenType(String::new()),
        TokenRefusal::Algorithm("HS256".to_owned()),
        TokenRefusal::UnknownKey(None),
        TokenRefusal::AmbiguousKey(2),
        TokenRefusal::KeyMismatch(String::new()),
        TokenRefusal::Signature,
        TokenRefusal::Issuer {
            expected: "https://a".to_owned(),
            found: "https://b".to_owned(),
        },
        TokenRefusal::Audience {
            expected: "me".to_owned(),
            found: vec![],
        },
        TokenRefusal::AuthorizedParty {
            expected: "me".to_owned(),
            found: None,
        },
        TokenRefusal::Expired { exp: 1, now: 2 },
        TokenRefusal::NotYetValid { nbf: 2, now: 1 },
        TokenRefusal::IssuedInFuture { iat: 2, now: 1 },
        TokenRefusal::Nonce,
        TokenRefusal::MissingClaim("sub"),
    ];
    let codes: HashSet<&str> = all.iter().map(TokenRefusal::code).collect();
    assert_eq!(codes.len(), all.len());
    assert!(all[3].to_string().contains("RS256"));
    assert!(all[8].to_string().contains("expected `https://a`"));
}

fn claims_amr(amr: &[&str]) -> IdClaims {
    IdClaims {
        issuer: ISSUER.to_owned(),
        subject: "s".to_owned(),
        audience: vec![CLIENT.to_owned()],
        authorized_party: None,
        expires_at: NOW,
        issued_at: NOW,
        nonce: None,
        auth_time: None,
        amr: amr.iter().map(|s| (*s).to_owned()).collect(),
        acr: None,
        name: None,
        email: None,
        groups: vec![],
        key_id: None,
        algorithm: "ES256".to_owned(),
    }
}

#[test]
fn mfa_needs_two_factor_categories_or_mfa() {
    for (amr, mfa) in [
        (&["pwd", "otp"][..], true),
        (&["mfa"][..], true),
        (&["pwd"][..], false),
        (&["otp", "sms"][..], false),
        (&["hwk", "pin"][..], true),
        (&["face", "swk"][..], true),
        (&["pwd", "kba"][..], false),
        (&["user", "pop"][..], false),
        (&[][..], false),
    ] {
        assert_eq!(claims_amr(amr).mfa(), mfa, "{amr:?}");
    }
}
