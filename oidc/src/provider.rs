//! One identity provider, over the network: its discovery document and JWK set (fetched, checked,
//! cached; the keys refetched when a token names an unknown `kid`, at most once per
//! [`JWKS_REFRESH_MIN`]), the authorization code exchange at its token endpoint, and the ID token
//! check with its keys ([`Provider::verify`], which leaves the claim checks to [`crate::token`]).
//!
//! The provider is reached over `https://`; plain `http://` only to loopback (a test IdP, or one
//! behind a local proxy). Every request has [`TIMEOUT`] for its answer's head and again for its
//! body, reads at most [`MAX_BODY`] bytes, and never follows a redirect.

mod http;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::{StatusCode, Uri};
use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};

use self::http::{Http, shown};
use crate::OidcError;
use crate::token::{self, ALLOWED_ALGORITHMS, Expect, IdClaims};

/// How long a discovery document is used before it is fetched again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(60 * 60);

/// How long a JWK set is used before it is fetched again (sooner when a token names a `kid` it
/// lacks).
pub const JWKS_TTL: Duration = Duration::from_secs(60 * 60);

/// The least time between two fetches of the JWK set (or of the discovery document, once one is
/// cached): a token naming an unknown `kid` triggers at most one refetch per interval, so a key
/// rotation is picked up within it and nobody can make us hammer the provider.
pub const JWKS_REFRESH_MIN: Duration = Duration::from_secs(60);

/// The largest answer body read from the provider.
pub const MAX_BODY: usize = 1024 * 1024;

/// How long the provider may take to send an answer's head, and again its body.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The path of the discovery document under the issuer.
const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// How to reach and authenticate to one identity provider.
#[derive(Clone)]
pub struct ProviderConfig {
    /// The issuer URL, exactly as the provider writes it in its tokens (`https://`, or `http://`
    /// to loopback only).
    pub issuer: String,
    /// Our client id at the provider.
    pub client_id: String,
    /// Our client secret (sent with HTTP Basic, `client_secret_basic`); `None` for a public client.
    pub client_secret: Option<String>,
    /// The TLS client configuration trusting the provider's certificates.
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
}

/// The fields of a provider's discovery document that are used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// The issuer: equal to the configured one.
    pub issuer: String,
    /// Where the browser is sent to sign in.
    pub authorization_endpoint: String,
    /// Where the code is exchanged for tokens.
    pub token_endpoint: String,
    /// Where the signing keys are published.
    pub jwks_uri: String,
    /// Where the browser is sent to sign out (RP-initiated logout), when offered.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// The ID token signature algorithms offered (empty when not said).
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// The PKCE methods offered (empty when not said).
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
}

/// What the token endpoint answered that is used: the ID token (the access token is ignored).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenAnswer {
    /// The compact ID token, to verify with [`Provider::verify`] and keep as signed.
    pub id_token: String,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("id_token", &format_args!("[{} bytes]", self.id_token.len()))
            .finish()
    }
}

/// One identity provider. Cheap to clone: clones share the cached discovery document and keys.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    discovery_url: Uri,
    client_id: String,
    client_secret: Option<String>,
    http: Http,
    discovery: Cache<Discovery>,
    keys: Cache<JwkSet>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.inner.issuer)
            .field("client_id", &self.inner.client_id)
            .field(
                "client_secret",
                &self.inner.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// A provider for `cfg`; nothing is fetched yet.
    ///
    /// [`OidcError::Config`] when the issuer is not an `https://` URL (or `http://` to loopback),
    /// has a query, a fragment or user info, or the client id is empty.
    pub fn new(cfg: ProviderConfig) -> Result<Self, OidcError> {
        checked_url(&cfg.issuer, "the issuer").map_err(OidcError::Config)?;
        if cfg.issuer.contains('?') {
            return Err(OidcError::Config(format!(
                "the issuer `{}` has a query: an issuer is a URL without one, as the provider \
                 writes it in its tokens (`iss`)",
                cfg.issuer
            )));
        }
        if cfg.client_id.is_empty() {
            return Err(OidcError::Config(
                "the client id is empty: set it to the client id registered at the provider"
                    .to_owned(),
            ));
        }
        let discovery_url = format!("{}{WELL_KNOWN}", cfg.issuer.trim_end_matches('/'));
        let discovery_url =
            checked_url(&discovery_url, "the discovery URL").map_err(OidcError::Config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                issuer: cfg.issuer,
                discovery_url,
                client_id: cfg.client_id,
                client_secret: cfg.client_secret,
                http: Http::new(&cfg.tls),
                discovery: Cache::default(),
                keys: Cache::default(),
            }),
        })
    }

    /// The configured issuer (what [`Expect::issuer`] should be).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Our client id (what [`Expect::audience`] should be).
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The discovery document: cached for [`DISCOVERY_TTL`], fetched from
    /// `{issuer}/.well-known/openid-configuration` otherwise. The document's issuer must equal the
    /// configured one exactly and its endpoints must be `https://` (or `http://` to loopback).
    /// When a refresh fails, the cached document is used (and the refresh tried again after
    /// [`JWKS_REFRESH_MIN`]).
    pub async fn discovery(&self) -> Result<Arc<Discovery>, OidcError> {
        self.inner
            .discovery
            .get(DISCOVERY_TTL, JWKS_REFRESH_MIN, &|_| true, || {
                self.fetch_discovery()
            })
            .await
    }

    /// The provider's JWK set: cached for [`JWKS_TTL`], fetched from the discovery document's
    /// `jwks_uri` otherwise.
    pub async fn keys(&self) -> Result<Arc<JwkSet>, OidcError> {
        self.keys_knowing(None).await
    }

    /// The JWK set, refetched when it lacks the key `kid` (a key rotation at the provider), at most
    /// once per [`JWKS_REFRESH_MIN`]: within that interval the cached set is returned, lacking it.
    pub async fn keys_knowing(&self, kid: Option<&str>) -> Result<Arc<JwkSet>, OidcError> {
        let knows = |set: &JwkSet| kid.is_none_or(|kid| set.find(kid).is_some());
        self.inner
            .keys
            .get(JWKS_TTL, JWKS_REFRESH_MIN, &knows, || self.fetch_keys())
            .await
    }

    /// Exchanges an authorization `code` at the token endpoint (`grant_type=authorization_code`,
    /// with the `redirect_uri` of the authorization request and the PKCE verifier), authenticating
    /// with the client secret over HTTP Basic when there is one. Returns the ID token, unverified.
    ///
    /// [`OidcError::TokenEndpoint`] when the endpoint refuses, with its OAuth `error` and
    /// `error_description`; [`OidcError::Answer`] when the answer has no `id_token`.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        pkce_verifier: &str,
    ) -> Result<TokenAnswer, OidcError> {
        let discovery = self.discovery().await?;
        let url = checked_url(&discovery.token_endpoint, "the token endpoint")
            .map_err(OidcError::Discovery)?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_verifier", pkce_verifier)
            .append_pair("client_id", &self.inner.client_id)
            .finish();
        let authorization = self
            .inner
            .client_secret
            .as_deref()
            .map(|secret| basic_authorization(&self.inner.client_id, secret));
        let answer = self
            .inner
            .http
            .post_form(&url, form, authorization.as_deref())
            .await?;
        if !answer.status.is_success() {
            return Err(token_endpoint_error(answer.status, &answer.body));
        }
        #[derive(Deserialize)]
        struct Wire {
            id_token: Option<String>,
        }
        let wire: Wire = serde_json::from_slice(&answer.body).map_err(|e| OidcError::Answer {
            url: shown(&url),
            reason: format!("the token answer is not the JSON expected: {e}"),
        })?;
        match wire.id_token {
            Some(id_token) if !id_token.is_empty() => Ok(TokenAnswer { id_token }),
            _ => Err(OidcError::Answer {
                url: shown(&url),
                reason: "the token answer has no `id_token` (is `openid` in the scope?)".to_owned(),
            }),
        }
    }

    /// Verifies `id_token` with the provider's keys (refetched once when it names an unknown `kid`)
    /// against `expect` ([`token::verify_id_token`]).
    pub async fn verify(&self, id_token: &str, expect: &Expect<'_>) -> Result<IdClaims, OidcError> {
        let kid = token::key_id(id_token)?;
        let keys = self.keys_knowing(kid.as_deref()).await?;
        Ok(token::verify_id_token(id_token, &keys, expect)?)
    }

    async fn fetch_discovery(&self) -> Result<Discovery, OidcError> {
        let url = &self.inner.discovery_url;
        let body = self.get_json(url).await?;
        let doc: Discovery = serde_json::from_slice(&body).map_err(|e| OidcError::Answer {
            url: shown(url),
            reason: format!("the discovery document is not the JSON expected: {e}"),
        })?;
        check_discovery(&doc, &self.inner.issuer)?;
        tracing::debug!(issuer = %doc.issuer, "OIDC discovery document fetched");
        Ok(doc)
    }

    async fn fetch_keys(&self) -> Result<JwkSet, OidcError> {
        let discovery = self.discovery().await?;
        let url = checked_url(&discovery.jwks_uri, "`jwks_uri`").map_err(OidcError::Discovery)?;
        let body = self.get_json(&url).await?;
        let set = parse_jwks(&body).map_err(|reason| OidcError::Answer {
            url: shown(&url),
            reason,
        })?;
        tracing::debug!(issuer = %self.inner.issuer, keys = set.keys.len(), "OIDC JWK set fetched");
        Ok(set)
    }

    /// GETs `url`, accepting only status 200.
    async fn get_json(&self, url: &Uri) -> Result<bytes::Bytes, OidcError> {
        let answer = self.inner.http.get(url).await?;
        if answer.status != StatusCode::OK {
            let redirect = if answer.status.is_redirection() {
                " (redirects are not followed: configure the URL it points to)"
            } else {
                ""
            };
            return Err(OidcError::Answer {
                url: shown(url),
                reason: format!("status {}, expected 200{redirect}", answer.status.as_u16()),
            });
        }
        Ok(answer.body)
    }
}

/// A JWK set from its JSON text (a file of an offline verifier, say).
pub fn jwks_from_json(text: &str) -> Result<JwkSet, OidcError> {
    if text.len() > MAX_BODY {
        return Err(OidcError::Jwks(format!(
            "the JWK set is larger than {MAX_BODY} bytes"
        )));
    }
    parse_jwks(text.as_bytes()).map_err(OidcError::Jwks)
}

fn parse_jwks(body: &[u8]) -> Result<JwkSet, String> {
    serde_json::from_slice::<JwkSet>(body)
        .map_err(|e| format!("not a JWK set (`{{\"keys\": [...]}}`): {e}"))
}

/// Checks a discovery document against the configured issuer.
fn check_discovery(doc: &Discovery, issuer: &str) -> Result<(), OidcError> {
    if doc.issuer != issuer {
        return Err(OidcError::Discovery(format!(
            "the provider's discovery document names the issuer `{}`, expected `{issuer}` exactly: \
             configure the issuer as the provider writes it",
            doc.issuer
        )));
    }
    for (name, url) in [
        (
            "`authorization_endpoint`",
            Some(&doc.authorization_endpoint),
        ),
        ("`token_endpoint`", Some(&doc.token_endpoint)),
        ("`jwks_uri`", Some(&doc.jwks_uri)),
        ("`end_session_endpoint`", doc.end_session_endpoint.as_ref()),
    ] {
        if let Some(url) = url {
            checked_url(url, name).map_err(OidcError::Discovery)?;
        }
    }
    let methods = &doc.code_challenge_methods_supported;
    if !methods.is_empty() && !methods.iter().any(|m| m == "S256") {
        return Err(OidcError::Discovery(format!(
            "the provider offers PKCE methods {methods:?}, and S256 is required"
        )));
    }
    let algs = &doc.id_token_signing_alg_values_supported;
    let allowed = |name: &str| {
        ALLOWED_ALGORITHMS
            .iter()
            .any(|a| token::algorithm_name(*a) == name)
    };
    if !algs.is_empty() && !algs.iter().any(|a| allowed(a)) {
        return Err(OidcError::Discovery(format!(
            "the provider signs ID tokens only with {algs:?}, none of which is allowed: configure it \
             to use RS256, PS256, ES256 or EdDSA"
        )));
    }
    Ok(())
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 section 2.3.1).
fn basic_authorization(client_id: &str, secret: &str) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", encode(client_id), encode(secret)))
    )
}

/// The error of a refused code exchange, from its OAuth error body (RFC 6749 section 5.2).
fn token_endpoint_error(status: StatusCode, body: &[u8]) -> OidcError {
    #[derive(Deserialize)]
    struct Wire {
        error: Option<String>,
        error_description: Option<String>,
    }
    let wire = serde_json::from_slice::<Wire>(body).ok();
    let error = wire.as_ref().and_then(|w| w.error.as_deref()).map_or_else(
        || "(no OAuth error in the answer)".to_owned(),
        |e| printable(e, 64),
    );
    let description = wire
        .as_ref()
        .and_then(|w| w.error_description.as_deref())
        .map(|d| printable(d, 300))
        .unwrap_or_default();
    OidcError::TokenEndpoint {
        status: status.as_u16(),
        error,
        description,
    }
}

/// `s` without control characters, cut to `max` characters: provider text fit for a log line.
fn printable(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().filter(|c| !c.is_control()).nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Parses `url` and checks it is `https://`, or `http://` to a loopback host (`127.0.0.0/8`,
/// `::1`, `localhost`), with a host and no user info or fragment. `what` names it in the error.
fn checked_url(url: &str, what: &str) -> Result<Uri, String> {
    let example = "write an absolute https:// URL such as https://idp.example.com/realms/acme";
    if url.contains('#') {
        return Err(format!("{what} `{url}` has a fragment (`#...`): {example}"));
    }
    let parsed: Uri = url
        .parse()
        .map_err(|e| format!("{what} `{url}` is not a URL ({e}): {example}"))?;
    let Some(authority) = parsed.authority() else {
        return Err(format!("{what} `{url}` has no host: {example}"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{what} `{url}` carries user info (`user@`): credentials never go in the URL"
        ));
    }
    let host = bare_host(&parsed).unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{what} `{url}` has an empty host: {example}"));
    }
    match parsed.scheme_str() {
        Some("https") => Ok(parsed),
        Some("http") if is_loopback(host) => Ok(parsed),
        Some("http") => Err(format!(
            "{what} `{url}` uses plain http:// to a host that is not loopback: use https:// (plain \
             http is allowed only for 127.0.0.0/8, ::1 and localhost)"
        )),
        Some(other) => Err(format!(
            "{what} `{url}` has the scheme `{other}:`, which is not supported: {example}"
        )),
        None => Err(format!("{what} `{url}` has no scheme: {example}")),
    }
}

/// The host of `url` without the brackets of an IPv6 literal.
fn bare_host(url: &Uri) -> Option<&str> {
    url.host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
}

/// Whether `host` is `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A value fetched from the provider, shared by all clones of the provider: used while fresh (and
/// wanted), refetched otherwise, but at most once per retry interval once there is one.
struct Cache<T> {
    state: Mutex<Cached<T>>,
    /// Held while fetching, so concurrent callers wait for one fetch instead of each making one.
    fetching: tokio::sync::Mutex<()>,
}

struct Cached<T> {
    value: Option<Arc<T>>,
    /// When `value` was fetched.
    fetched: Option<Instant>,
    /// When a fetch was last tried (successful or not).
    attempted: Option<Instant>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(Cached {
                value: None,
                fetched: None,
                attempted: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }
}

/// What to do for a caller of [`Cache::get`].
enum Decision<T> {
    /// Return this value.
    Use(Arc<T>),
    /// Fetch, falling back to this stale value if the fetch fails.
    Fetch(Option<Arc<T>>),
}

impl<T> Cache<T> {
    fn lock(&self) -> MutexGuard<'_, Cached<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn decide(
        &self,
        ttl: Duration,
        retry: Duration,
        wanted: &(dyn Fn(&T) -> bool + Sync),
    ) -> Decision<T> {
        let state = self.lock();
        let Some(value) = &state.value else {
            return Decision::Fetch(None);
        };
        let fresh = state.fetched.is_some_and(|t| t.elapsed() < ttl);
        if fresh && wanted(value) {
            return Decision::Use(value.clone());
        }
        if state.attempted.is_none_or(|t| t.elapsed() >= retry) {
            Decision::Fetch(Some(value.clone()))
        } else {
            Decision::Use(value.clone())
        }
    }

    /// The cached value when it is fresh and `wanted`; otherwise the value `fetch`ed (one fetch at
    /// a time, and none within `retry` of the last try while a value is cached). A failed fetch
    /// returns the stale value when there is one.
    async fn get<F, Fut>(
        &self,
        ttl: Duration,
        retry: Duration,
        wanted: &(dyn Fn(&T) -> bool + Sync),
        fetch: F,
    ) -> Result<Arc<T>, OidcError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, OidcError>>,
    {
        if let Decision::Use(value) = self.decide(ttl, retry, wanted) {
            return Ok(value);
        }
        let _fetching = self.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        let stale = match self.decide(ttl, retry, wanted) {
            Decision::Use(value) => return Ok(value),
            Decision::Fetch(stale) => stale,
        };
        self.lock().attempted = Some(Instant::now());
        match fetch().await {
            Ok(value) => {
                let value = Arc::new(value);
                let mut state = self.lock();
                state.value = Some(value.clone());
                state.fetched = Some(Instant::now());
                Ok(value)
            }
            Err(e) => match stale {
                Some(value) => {
                    tracing::warn!(error = %e, "refreshing from the identity provider failed; using the cached copy");
                    Ok(value)
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests;
