//! The secrets of one sign-in and the URL that starts it: random `state` and `nonce` values
//! ([`random_token`]), the PKCE verifier and its S256 challenge ([`Pkce`], RFC 7636), and the
//! authorization request URL the browser is sent to ([`AuthorizationRequest`]).

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// 32 random bytes from the system generator, base64url without padding (43 characters): for a
/// `state`, a `nonce` or a PKCE verifier.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    #[expect(
        clippy::expect_used,
        reason = "the system random generator failing leaves nothing secure to do: stop loudly"
    )]
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A PKCE verifier and its S256 challenge. The verifier stays with us (in the sign-in's state)
/// until the code is exchanged; the challenge goes into the authorization request.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkce {
    /// The verifier: 43 base64url characters, sent with the code to the token endpoint.
    pub verifier: String,
    /// `BASE64URL(SHA-256(verifier))`, sent in the authorization request.
    pub challenge: String,
}

impl Pkce {
    /// A fresh random verifier and its challenge.
    pub fn new() -> Self {
        Self::from_verifier(random_token())
    }

    /// The challenge of a known `verifier`.
    pub fn from_verifier(verifier: String) -> Self {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce")
            .field("verifier", &"[redacted]")
            .field("challenge", &self.challenge)
            .finish()
    }
}

/// An authorization request (authorization code flow with PKCE S256).
#[derive(Debug, Clone, Copy)]
pub struct AuthorizationRequest<'a> {
    /// The provider's `authorization_endpoint` (it may already carry a query).
    pub endpoint: &'a str,
    /// Our client id.
    pub client_id: &'a str,
    /// Where the provider sends the browser back with the code.
    pub redirect_uri: &'a str,
    /// The scopes, space-separated; must include `openid` (e.g. `openid profile email groups`).
    pub scope: &'a str,
    /// The random `state` binding the answer to this browser.
    pub state: &'a str,
    /// The random `nonce` the ID token must carry.
    pub nonce: &'a str,
    /// [`Pkce::challenge`].
    pub code_challenge: &'a str,
    /// `prompt` (`login` to force a fresh sign-in, `select_account`, ...).
    pub prompt: Option<&'a str>,
    /// `max_age`: the most seconds since the person last actively authenticated.
    pub max_age: Option<u64>,
    /// `login_hint`: who is expected to sign in.
    pub login_hint: Option<&'a str>,
}

impl AuthorizationRequest<'_> {
    /// The URL to send the browser to: the endpoint with the request's parameters, form-encoded,
    /// appended to its query.
    pub fn url(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", self.client_id)
            .append_pair("redirect_uri", self.redirect_uri)
            .append_pair("scope", self.scope)
            .append_pair("state", self.state)
            .append_pair("nonce", self.nonce)
            .append_pair("code_challenge", self.code_challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(prompt) = self.prompt {
            query.append_pair("prompt", prompt);
        }
        if let Some(max_age) = self.max_age {
            query.append_pair("max_age", &max_age.to_string());
        }
        if let Some(hint) = self.login_hint {
            query.append_pair("login_hint", hint);
        }
        let query = query.finish();
        // A fragment cannot be sent to the provider; the parameters go in the query.
        let base = self
            .endpoint
            .split_once('#')
            .map_or(self.endpoint, |(base, _)| base);
        let separator = if !base.contains('?') {
            "?"
        } else if base.ends_with('?') || base.ends_with('&') {
            ""
        } else {
            "&"
        };
        format!("{base}{separator}{query}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn random_tokens_are_43_url_safe_characters_and_differ() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn the_challenge_is_s256_of_the_verifier() {
        // RFC 7636 appendix B.
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned());
        assert_eq!(
            pkce.challenge,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let fresh = Pkce::new();
        assert_eq!(fresh, Pkce::from_verifier(fresh.verifier.clone()));
        assert!(!format!("{fresh:?}").contains(&fresh.verifier));
    }

    fn request(endpoint: &str) -> AuthorizationRequest<'_> {
        AuthorizationRequest {
            endpoint,
            client_id: "sallyport",
            redirect_uri: "https://broker.example.com/oidc/callback",
            scope: "openid profile email groups",
            state: "st",
            nonce: "no",
            code_challenge: "ch",
            prompt: None,
            max_age: None,
            login_hint: None,
        }
    }

    fn query_of(url: &str) -> HashMap<String, String> {
        let (_, query) = url.split_once('?').unwrap();
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn the_url_carries_every_parameter_encoded() {
        let url = request("https://idp.example.com/authorize").url();
        assert!(url.starts_with("https://idp.example.com/authorize?response_type=code&"));
        assert!(url.contains("scope=openid+profile+email+groups"));
        assert!(url.contains("redirect_uri=https%3A%2F%2Fbroker.example.com%2Foidc%2Fcallback"));
        let q = query_of(&url);
        assert_eq!(q["client_id"], "sallyport");
        assert_eq!(q["state"], "st");
        assert_eq!(q["nonce"], "no");
        assert_eq!(q["code_challenge"], "ch");
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(!q.contains_key("prompt"));
        assert!(!q.contains_key("max_age"));
        assert!(!q.contains_key("login_hint"));
    }

    #[test]
    fn optional_parameters_and_an_endpoint_with_a_query() {
        let mut r = request("https://login.example.com/oauth2/authorize?p=B2C_1_signin#frag");
        r.prompt = Some("login");
        r.max_age = Some(300);
        r.login_hint = Some("alice@example.com");
        let url = r.url();
        assert!(url.starts_with("https://login.example.com/oauth2/authorize?p=B2C_1_signin&"));
        assert!(!url.contains("frag"));
        let q = query_of(&url);
        assert_eq!(q["p"], "B2C_1_signin");
        assert_eq!(q["prompt"], "login");
        assert_eq!(q["max_age"], "300");
        assert_eq!(q["login_hint"], "alice@example.com");
    }
}
