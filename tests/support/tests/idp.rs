//! The test kit's own OpenID provider (`sallyport_testkit::idp`): an authorization code flow with
//! PKCE through `browse` ends at the callback with a code, the code buys an ID token carrying the
//! person set with `Idp::next` (groups, amr, auth_time), a second flow signs in afresh, and a shifted
//! clock yields an expired token.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::time::{SystemTime, UNIX_EPOCH};

use sallyport_testkit::idp::{Idp, browse, http_request};
use serde_json::{Value, json};

const CLIENT_ID: &str = "sallyport-test";
const CLIENT_SECRET: &str = "s3cret-for-tests";
const REDIRECT_URI: &str = "https://127.0.0.1:9/oidc/callback";
/// A PKCE verifier and its S256 challenge (`printf %s VERIFIER | openssl dgst -sha256 -binary |
/// base64 | tr '+/' '-_' | tr -d =`).
const VERIFIER: &str = "sallyport-testkit-pkce-verifier-0123456789-abcdefghij";
const CHALLENGE: &str = "mr2Qr4d1IzuT0CneKh0YdaIpEk0_o-X9UXpKpq8w3p0";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64url_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {c}"),
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    out
}

/// The value of query parameter `name` in `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// One full sign-in as the person set last: returns the ID token's claims.
fn sign_in(idp: &Idp, state: &str, nonce: &str) -> Value {
    let (status, discovery) = http_request(
        &format!("{}/.well-known/openid-configuration", idp.issuer()),
        "GET",
        &[],
        None,
    );
    assert_eq!(status, 200, "{discovery}");
    let discovery: Value = serde_json::from_str(&discovery).unwrap();
    let authorize = format!(
        "{}?response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}\
         &code_challenge={CHALLENGE}&code_challenge_method=S256&prompt=login&max_age=0",
        discovery["authorization_endpoint"].as_str().unwrap(),
        enc(CLIENT_ID),
        enc(REDIRECT_URI),
        enc("openid profile email groups"),
    );
    let end = browse(&authorize, None, Some("https://127.0.0.1:9/"));
    assert!(
        [302, 303].contains(&end.status) && end.url.starts_with(REDIRECT_URI),
        "{end:?}"
    );
    assert_eq!(query_param(&end.url, "state").as_deref(), Some(state));
    let code = query_param(&end.url, "code").unwrap_or_else(|| panic!("no code in {}", end.url));

    let form = format!(
        "grant_type=authorization_code&code={code}&code_verifier={VERIFIER}&redirect_uri={}",
        enc(REDIRECT_URI)
    );
    let basic = format!(
        "Basic {}",
        base64(format!("{}:{}", enc(CLIENT_ID), enc(CLIENT_SECRET)).as_bytes())
    );
    let (status, tokens) = http_request(
        discovery["token_endpoint"].as_str().unwrap(),
        "POST",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic),
        ],
        Some(form.as_bytes()),
    );
    assert_eq!(status, 200, "{tokens}");
    let tokens: Value = serde_json::from_str(&tokens).unwrap();
    let id_token = tokens["id_token"].as_str().unwrap();
    assert_eq!(idp.last_id_token().as_deref(), Some(id_token));

    let parts: Vec<&str> = id_token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&base64url_decode(parts[0])).unwrap();
    assert_eq!(header["alg"], "RS256");
    let kid = header["kid"].as_str().unwrap();
    assert!(kid.starts_with("rsa-"), "{header}");
    let jwks: Value = serde_json::from_str(&idp.jwks()).unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid),
        "{jwks}"
    );
    serde_json::from_slice(&base64url_decode(parts[1])).unwrap()
}

#[test]
fn idp_signs_in_the_next_person_with_pkce_and_a_fresh_login_each_time() {
    let idp = Idp::start(CLIENT_ID, Some(CLIENT_SECRET), "groups");
    assert!(idp.issuer().starts_with("http://127.0.0.1:"));
    let jwks: Value = serde_json::from_str(&idp.jwks()).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    assert!(
        keys.iter().all(|k| k.get("d").is_none()),
        "private parts: {jwks}"
    );
    assert_eq!(idp.last_id_token(), None);
    let (status, published) = http_request(&format!("{}/jwks", idp.issuer()), "GET", &[], None);
    assert_eq!(status, 200, "{published}");
    let kids = |jwks: &Value| {
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| format!("{} {}", k["kid"], k["alg"]))
            .collect();
        kids.sort();
        kids
    };
    assert_eq!(
        kids(&jwks),
        kids(&serde_json::from_str(&published).unwrap())
    );

    idp.next(json!({
        "sub": "alice", "name": "Alice", "preferred_username": "alice",
        "email": "alice@example.test", "groups": ["approvers"], "amr": ["pwd", "otp"],
    }));
    let before = now();
    let claims = sign_in(&idp, "state-1", "nonce-1");
    assert_eq!(claims["iss"], idp.issuer(), "{claims}");
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["nonce"], "nonce-1");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["name"], "Alice");
    assert_eq!(claims["preferred_username"], "alice");
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(claims["groups"], json!(["approvers"]));
    assert_eq!(claims["amr"], json!(["pwd", "otp"]));
    let auth_time = claims["auth_time"].as_u64().unwrap();
    assert!(auth_time + 5 >= before && auth_time <= now(), "{claims}");
    assert!(claims["exp"].as_u64().unwrap() > now());

    // A second flow: a fresh login (prompt=login, max_age=0), now as someone else.
    idp.next(json!({"sub": "bob", "groups": ["support"], "amr": ["pwd"]}));
    let claims = sign_in(&idp, "state-2", "nonce-2");
    assert_eq!(claims["sub"], "bob", "{claims}");
    assert_eq!(claims["nonce"], "nonce-2");
    assert_eq!(claims["groups"], json!(["support"]));
    assert_eq!(claims["amr"], json!(["pwd"]));

    // Two hours back: the token expired an hour ago.
    idp.next(json!({"sub": "carol", "amr": ["pwd", "hwk"], "clock_offset_s": -7200}));
    let claims = sign_in(&idp, "state-3", "nonce-3");
    assert_eq!(claims["sub"], "carol", "{claims}");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp < now(), "not expired: {claims}");
    assert!(iat + 7200 >= now() - 5, "{claims}");

    // And a later /_test/next puts the clock right again.
    idp.next(json!({"sub": "dave"}));
    let claims = sign_in(&idp, "state-4", "nonce-4");
    assert_eq!(claims["sub"], "dave", "{claims}");
    assert_eq!(claims["groups"], json!([]));
    assert!(claims["exp"].as_u64().unwrap() > now());
}

#[test]
fn idp_with_a_custom_groups_claim_and_a_public_client() {
    let idp = Idp::start("public-client", None, "roles");
    idp.next(json!({"sub": "erin", "groups": ["support"]}));
    let (status, discovery) = http_request(
        &format!("{}/.well-known/openid-configuration", idp.issuer()),
        "GET",
        &[],
        None,
    );
    assert_eq!(status, 200);
    let discovery: Value = serde_json::from_str(&discovery).unwrap();
    let authorize = format!(
        "{}?response_type=code&client_id=public-client&redirect_uri={}&scope=openid%20groups\
         &state=s&nonce=n&code_challenge={CHALLENGE}&code_challenge_method=S256",
        discovery["authorization_endpoint"].as_str().unwrap(),
        enc("https://localhost:4443/oidc/callback"),
    );
    let end = browse(&authorize, None, Some("https://localhost:4443/"));
    let code = query_param(&end.url, "code").unwrap_or_else(|| panic!("{end:?}"));
    let form = format!(
        "grant_type=authorization_code&client_id=public-client&code={code}&code_verifier={VERIFIER}\
         &redirect_uri={}",
        enc("https://localhost:4443/oidc/callback")
    );
    let (status, tokens) = http_request(
        discovery["token_endpoint"].as_str().unwrap(),
        "POST",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(form.as_bytes()),
    );
    assert_eq!(status, 200, "{tokens}");
    let tokens: Value = serde_json::from_str(&tokens).unwrap();
    let id_token = tokens["id_token"].as_str().unwrap();
    let payload = id_token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&base64url_decode(payload)).unwrap();
    assert_eq!(claims["roles"], json!(["support"]), "{claims}");
    assert!(claims.get("groups").is_none());

    // Without PKCE, or to a callback elsewhere, the IdP refuses (it redirects with an error or shows one).
    let no_pkce = authorize.replace(
        &format!("&code_challenge={CHALLENGE}&code_challenge_method=S256"),
        "",
    );
    let end = browse(&no_pkce, None, Some("https://localhost:4443/"));
    assert!(query_param(&end.url, "code").is_none(), "{end:?}");
    assert_eq!(
        query_param(&end.url, "error").as_deref(),
        Some("invalid_request"),
        "{end:?}"
    );
    let elsewhere = authorize.replace("%2Foidc%2Fcallback", "%2Fother");
    let end = browse(&elsewhere, None, Some("https://localhost:4443/"));
    assert_eq!(end.status, 400, "{end:?}");
    assert!(end.body.contains("redirect_uri"), "{end:?}");
}
