//! Tests of the provider against a small plain-HTTP identity provider on loopback, started per
//! test: discovery and its cache, the issuer and URL rules, the JWK set refetch on an unknown `kid`
//! and its rate limit, the code exchange and its errors, and the body bound.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::TokenRefusal;
use crate::testkeys::TestKey;

/// A request the test IdP received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

type Routes = Arc<Mutex<HashMap<String, (u16, String)>>>;

/// A plain-HTTP identity provider on 127.0.0.1: canned answers per path, every request recorded.
struct Idp {
    addr: SocketAddr,
    routes: Routes,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Idp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Routes = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (r, s) = (routes.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (r, s) = (r.clone(), s.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (r, s) = (r.clone(), s.clone());
                        async move { Ok::<_, Infallible>(answer(req, &r, &s).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        let idp = Self { addr, routes, seen };
        idp.route(WELL_KNOWN, 200, &idp.discovery_doc().to_string());
        idp
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/realms/acme", self.addr.port())
    }

    fn discovery_doc(&self) -> Value {
        let base = format!("http://127.0.0.1:{}", self.addr.port());
        json!({
            "issuer": self.issuer(),
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "jwks_uri": format!("{base}/jwks"),
            "end_session_endpoint": format!("{base}/logout"),
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "response_types_supported": ["code"],
        })
    }

    fn route(&self, path: &str, status: u16, body: &str) {
        let path = if path == WELL_KNOWN {
            format!("/realms/acme{WELL_KNOWN}")
        } else {
            path.to_owned()
        };
        self.routes
            .lock()
            .unwrap()
            .insert(path, (status, body.to_owned()));
    }

    fn jwks(&self, keys: &[&TestKey]) {
        let keys: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
        self.route("/jwks", 200, &json!({ "keys": keys }).to_string());
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    fn hits(&self, path: &str) -> usize {
        let path = if path == WELL_KNOWN {
            format!("/realms/acme{WELL_KNOWN}")
        } else {
            path.to_owned()
        };
        self.seen(&path).len()
    }

    fn provider(&self, secret: Option<&str>) -> Provider {
        Provider::new(config(&self.issuer(), secret)).unwrap()
    }
}

async fn answer(
    req: Request<Incoming>,
    routes: &Routes,
    seen: &Mutex<Vec<Seen>>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let (status, body) = routes
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or((404, "{}".to_owned()));
    let mut answer = Response::builder().status(status);
    if status == 302 {
        answer = answer.header("location", "https://elsewhere.example.com/");
    }
    answer
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn config(issuer: &str, secret: Option<&str>) -> ProviderConfig {
    ProviderConfig {
        issuer: issuer.to_owned(),
        client_id: "sallyport".to_owned(),
        client_secret: secret.map(str::to_owned),
        tls: sallyport_certs::tls::default_client(),
    }
}

fn claims(issuer: &str) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({
        "iss": issuer,
        "sub": "alice",
        "aud": "sallyport",
        "exp": now + 300,
        "iat": now,
        "nonce": "n1",
        "amr": ["pwd", "hwk"],
    })
}

fn expect(issuer: &str) -> Expect<'_> {
    Expect {
        issuer,
        audience: "sallyport",
        nonce: Some("n1"),
        now: jsonwebtoken::get_current_timestamp(),
        leeway: 30,
        groups_claim: "groups",
        name_claim: "name",
    }
}

/// Makes the last fetch (and try) of `cache` look long ago: past its TTL and its retry interval.
/// (Forgetting the times rather than backdating them: an `Instant` an hour back may not exist on
/// a machine that booted recently.)
fn age<T>(cache: &Cache<T>) {
    let mut state = cache.lock();
    state.attempted = None;
    state.fetched = None;
}

#[tokio::test]
async fn discovery_is_fetched_once_and_cached() {
    let idp = Idp::start().await;
    let provider = idp.provider(None);
    let first = provider.discovery().await.unwrap();
    let second = provider.clone().discovery().await.unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(idp.hits(WELL_KNOWN), 1);
    assert_eq!(first.issuer, idp.issuer());
    assert!(first.token_endpoint.ends_with("/token"));
    assert_eq!(first.code_challenge_methods_supported, ["plain", "S256"]);
    assert!(first.end_session_endpoint.is_some());
    let seen = &idp.seen(&format!("/realms/acme{WELL_KNOWN}"))[0];
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.headers["accept"], "application/json");

    // After the TTL it is fetched again.
    age(&provider.inner.discovery);
    provider.discovery().await.unwrap();
    assert_eq!(idp.hits(WELL_KNOWN), 2);
}

#[tokio::test]
async fn a_trailing_slash_issuer_is_kept_exactly() {
    let idp = Idp::start().await;
    let issuer = format!("{}/", idp.issuer());
    let mut doc = idp.discovery_doc();
    doc["issuer"] = json!(issuer);
    idp.route(WELL_KNOWN, 200, &doc.to_string());
    let provider = Provider::new(config(&issuer, None)).unwrap();
    assert_eq!(provider.discovery().await.unwrap().issuer, issuer);
    assert_eq!(provider.issuer(), issuer);
}

#[tokio::test]
async fn a_discovery_document_of_another_issuer_is_refused() {
    let idp = Idp::start().await;
    let mut doc = idp.discovery_doc();
    doc["issuer"] = json!("https://evil.example.com/realms/acme");
    idp.route(WELL_KNOWN, 200, &doc.to_string());
    let err = idp.provider(None).discovery().await.unwrap_err();
    assert!(matches!(err, OidcError::Discovery(_)), "{err}");
    assert!(err.to_string().contains("evil.example.com"), "{err}");
    assert!(err.to_string().contains(&idp.issuer()), "{err}");
}

#[tokio::test]
async fn discovery_endpoints_must_be_https_or_loopback() {
    let idp = Idp::start().await;
    for (field, value) in [
        ("token_endpoint", json!("http://idp.example.com/token")),
        ("jwks_uri", json!("ftp://127.0.0.1/jwks")),
        ("end_session_endpoint", json!("http://10.0.0.1/logout")),
        ("code_challenge_methods_supported", json!(["plain"])),
        (
            "id_token_signing_alg_values_supported",
            json!(["HS256", "none"]),
        ),
    ] {
        let mut doc = idp.discovery_doc();
        doc[field] = value;
        idp.route(WELL_KNOWN, 200, &doc.to_string());
        let err = idp.provider(None).discovery().await.unwrap_err();
        assert!(matches!(err, OidcError::Discovery(_)), "{field}: {err}");
    }
    idp.route(WELL_KNOWN, 200, "not json");
    let err = idp.provider(None).discovery().await.unwrap_err();
    assert!(matches!(err, OidcError::Answer { .. }), "{err}");
}

#[test]
fn issuers_must_be_https_or_loopback_http() {
    for ok in [
        "https://idp.example.com",
        "https://login.example.com/tenant/v2.0",
        "http://localhost:8080/realms/acme",
        "http://127.0.0.1:9000",
        "http://127.8.9.10",
        "http://[::1]:9000/",
    ] {
        Provider::new(config(ok, None)).unwrap();
    }
    for bad in [
        "http://idp.example.com",
        "http://10.0.0.1:8080",
        "http://[2001:db8::1]/",
        "ftp://idp.example.com",
        "idp.example.com",
        "https://user:pw@idp.example.com",
        "https://idp.example.com/?tenant=x",
        "https://idp.example.com/#x",
        "",
    ] {
        let err = Provider::new(config(bad, None)).unwrap_err();
        assert!(matches!(err, OidcError::Config(_)), "{bad}: {err}");
    }
    let err = Provider::new(config("http://idp.example.com", None)).unwrap_err();
    assert!(err.to_string().contains("use https://"), "{err}");
    let mut cfg = config("https://idp.example.com", None);
    cfg.client_id.clear();
    assert!(matches!(Provider::new(cfg), Err(OidcError::Config(_))));
}

#[test]
fn debug_never_shows_the_secret() {
    let cfg = config("https://idp.example.com", Some("hunter2-secret"));
    assert!(!format!("{cfg:?}").contains("hunter2"));
    let provider = Provider::new(cfg).unwrap();
    let shown = format!("{provider:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    let answer = TokenAnswer {
        id_token: "eyJhbGciOi.secret.sig".to_owned(),
    };
    assert!(!format!("{answer:?}").contains("secret"));
}

#[tokio::test]
async fn keys_are_cached_and_verify_a_token() {
    let idp = Idp::start().await;
    let key = TestKey::es256(Some("k1"));
    idp.jwks(&[&key]);
    let provider = idp.provider(None);
    let token = key.sign(&claims(&idp.issuer()));
    let issuer = idp.issuer();
    let got = provider.verify(&token, &expect(&issuer)).await.unwrap();
    assert_eq!(got.subject, "alice");
    assert!(got.mfa());
    provider.verify(&token, &expect(&issuer)).await.unwrap();
    provider.keys().await.unwrap();
    assert_eq!(idp.hits("/jwks"), 1);
    assert_eq!(idp.hits(WELL_KNOWN), 1);

    // A refused token is an `OidcError::Token` with the refusal.
    let mut wrong = expect(&issuer);
    wrong.nonce = Some("n2");
    let err = provider.verify(&token, &wrong).await.unwrap_err();
    assert!(
        matches!(err, OidcError::Token(TokenRefusal::Nonce)),
        "{err}"
    );
    // A malformed token costs no request.
    let err = provider.verify("garbage", &wrong).await.unwrap_err();
    assert!(matches!(err, OidcError::Token(TokenRefusal::Malformed(_))));
    assert_eq!(idp.hits("/jwks"), 1);
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_at_most_once_per_interval() {
    let idp = Idp::start().await;
    let old = TestKey::es256(Some("old"));
    let new = TestKey::es256(Some("new"));
    idp.jwks(&[&old]);
    let provider = idp.provider(None);
    let issuer = idp.issuer();
    provider
        .verify(&old.sign(&claims(&issuer)), &expect(&issuer))
        .await
        .unwrap();
    assert_eq!(idp.hits("/jwks"), 1);

    // The IdP rotates its key. Within the interval since the last fetch, no refetch: refused.
    idp.jwks(&[&old, &new]);
    let token = new.sign(&claims(&issuer));
    for _ in 0..3 {
        let err = provider.verify(&token, &expect(&issuer)).await.unwrap_err();
        assert!(
            matches!(err, OidcError::Token(TokenRefusal::UnknownKey(Some(ref k))) if k == "new"),
            "{err}"
        );
    }
    assert_eq!(idp.hits("/jwks"), 1);

    // Once the interval has passed, the unknown kid refetches once, and the new key is used.
    age(&provider.inner.keys);
    provider.verify(&token, &expect(&issuer)).await.unwrap();
    assert_eq!(idp.hits("/jwks"), 2);

    // A kid nobody has: at most one refetch per interval, however many tokens name it.
    let stranger = TestKey::es256(Some("stranger"));
    let bogus = stranger.sign(&claims(&issuer));
    for _ in 0..5 {
        assert!(provider.verify(&bogus, &expect(&issuer)).await.is_err());
    }
    assert_eq!(idp.hits("/jwks"), 2);
    age(&provider.inner.keys);
    for _ in 0..5 {
        assert!(provider.verify(&bogus, &expect(&issuer)).await.is_err());
    }
    assert_eq!(idp.hits("/jwks"), 3);
    // Known kids never wait for the interval.
    provider.verify(&token, &expect(&issuer)).await.unwrap();
    assert_eq!(idp.hits("/jwks"), 3);
}

#[tokio::test]
async fn concurrent_callers_share_one_fetch() {
    let idp = Idp::start().await;
    let key = TestKey::es256(Some("k1"));
    idp.jwks(&[&key]);
    let provider = idp.provider(None);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let p = provider.clone();
            tokio::spawn(async move { p.keys_knowing(Some("k1")).await.map(|_| ()) })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(idp.hits("/jwks"), 1);
    assert_eq!(idp.hits(WELL_KNOWN), 1);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_cached_keys() {
    let idp = Idp::start().await;
    let key = TestKey::es256(Some("k1"));
    idp.jwks(&[&key]);
    let provider = idp.provider(None);
    let first = provider.keys().await.unwrap();
    idp.route("/jwks", 500, "{}");
    age(&provider.inner.keys);
    let stale = provider.keys().await.unwrap();
    assert!(Arc::ptr_eq(&first, &stale));
    assert_eq!(idp.hits("/jwks"), 2);
    // And is not retried on every call.
    provider.keys().await.unwrap();
    assert_eq!(idp.hits("/jwks"), 2);
}

#[tokio::test]
async fn the_code_exchange_sends_basic_auth_and_the_verifier() {
    let idp = Idp::start().await;
    idp.route(
        "/token",
        200,
        r#"{"access_token":"at-1","token_type":"Bearer","expires_in":300,"id_token":"eyJ.eyJ.sig"}"#,
    );
    let provider = idp.provider(Some("s3cr:et &x"));
    let answer = provider
        .exchange_code(
            "the code",
            "https://broker.example.com/oidc/callback",
            "verifier-123",
        )
        .await
        .unwrap();
    assert_eq!(answer.id_token, "eyJ.eyJ.sig");

    let seen = idp.seen("/token");
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        seen.headers["authorization"],
        format!("Basic {}", STANDARD.encode("sallyport:s3cr%3Aet+%26x"))
    );
    let form: HashMap<String, String> = form_urlencoded::parse(seen.body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "the code");
    assert_eq!(
        form["redirect_uri"],
        "https://broker.example.com/oidc/callback"
    );
    assert_eq!(form["code_verifier"], "verifier-123");
    assert_eq!(form["client_id"], "sallyport");
    assert!(!seen.body.contains("s3cr"));

    // A public client sends no Authorization header.
    idp.provider(None)
        .exchange_code("c", "https://b/cb", "v")
        .await
        .unwrap();
    assert!(!idp.seen("/token")[1].headers.contains_key("authorization"));
}

#[tokio::test]
async fn a_refused_exchange_surfaces_the_oauth_error() {
    let idp = Idp::start().await;
    idp.route(
        "/token",
        400,
        r#"{"error":"invalid_grant","error_description":"Code not valid\r\nor expired"}"#,
    );
    let err = idp
        .provider(Some("secret"))
        .exchange_code("c", "https://b/cb", "v")
        .await
        .unwrap_err();
    let OidcError::TokenEndpoint {
        status,
        error,
        description,
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*status, 400);
    assert_eq!(error, "invalid_grant");
    assert_eq!(description, "Code not validor expired");
    let shown = err.to_string();
    assert!(
        shown.contains("invalid_grant") && shown.contains("Code not valid"),
        "{shown}"
    );

    idp.route("/token", 401, "<html>no</html>");
    let err = idp
        .provider(Some("secret"))
        .exchange_code("c", "https://b/cb", "v")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OidcError::TokenEndpoint { status: 401, .. }),
        "{err}"
    );

    idp.route("/token", 200, r#"{"access_token":"at"}"#);
    let err = idp
        .provider(None)
        .exchange_code("c", "https://b/cb", "v")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("id_token"), "{err}");
}

#[tokio::test]
async fn an_oversize_body_is_refused() {
    let idp = Idp::start().await;
    idp.route("/jwks", 200, &" ".repeat(MAX_BODY + 1));
    let err = idp.provider(None).keys().await.unwrap_err();
    assert!(matches!(err, OidcError::Answer { .. }), "{err}");
    assert!(err.to_string().contains("larger than"), "{err}");
}

/// A server answering every connection with `head` and then `body_len` spaces in one chunk.
async fn raw_server(head: &'static str, body_len: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(head.as_bytes()).await;
                if body_len > 0 {
                    let chunk = format!("{body_len:x}\r\n{}\r\n0\r\n\r\n", " ".repeat(body_len));
                    let _ = tcp.write_all(chunk.as_bytes()).await;
                }
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_oversize_chunked_body_is_refused() {
    let addr = raw_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        MAX_BODY + 1,
    )
    .await;
    let provider = Provider::new(config(&format!("http://{addr}"), None)).unwrap();
    let err = provider.discovery().await.unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let idp = Idp::start().await;
    idp.route(WELL_KNOWN, 302, "");
    let err = idp.provider(None).discovery().await.unwrap_err();
    assert!(matches!(err, OidcError::Answer { .. }), "{err}");
    assert!(err.to_string().contains("302"), "{err}");
}

#[tokio::test]
async fn an_unreachable_provider_is_named() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let provider = Provider::new(config(&format!("http://{addr}"), None)).unwrap();
    let err = provider.discovery().await.unwrap_err();
    assert!(matches!(err, OidcError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn a_jwks_file_is_read() {
    let key = TestKey::es256(Some("k1"));
    let set = jwks_from_json(&json!({ "keys": [key.jwk] }).to_string()).unwrap();
    assert!(set.find("k1").is_some());
    assert!(matches!(jwks_from_json("{}"), Err(OidcError::Jwks(_))));
    assert!(matches!(jwks_from_json("[1,2]"), Err(OidcError::Jwks(_))));
}
