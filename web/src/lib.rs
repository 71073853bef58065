//! The sign-in listener (`[web] listen`): HTTPS with no client certificate, since a person signing
//! in has none yet. CONNECT tunnels and `/v1` stay on the mTLS listener; this one serves the web
//! console under `/console` ([`console`]) and:
//!
//! - `POST /login` `{csr, customer?, role?}` -> `{id, url, secret}`: a login at the provider's IdP
//!   (or `customer`'s) for the certificate signing request's key; open `url` in a browser.
//! - `POST /login/{id}/wait` `{secret}` -> 202 `{status: "pending"}` after up to 25 s, or 200
//!   `{status: "done", identity, cert, ca, broker, expires_at, ...}`, or the refusal
//!   (`{"error": {code, message}}`, 403).
//! - `GET /oidc/callback?code&state` (the IdP sends the browser here) -> a page saying what happened.
//! - `GET /` -> the console (or, without one, what this listener is).
//! - `GET /static/sallyport.css`, `/static/console.js`, `/static/favicon.svg`: the only assets, embedded in the binary.
//!
//! Every answer carries `Cache-Control: no-store`, `Referrer-Policy: no-referrer` (the callback's
//! URL holds a code), a Content-Security-Policy allowing only the listener's own styles and
//! scripts (no inline script), and `frame-ancestors 'none'`. Bounded: [`MAX_CONNECTIONS`] at once
//! and [`MAX_CONNECTIONS_PER_SOURCE`] from one address, the TLS handshake and request head within
//! [`HEADER_TIMEOUT`], bodies of at most [`MAX_BODY`] within [`BODY_TIMEOUT`], HTTP/2 (ALPN `h2`,
//! [`MAX_STREAMS_PER_CONNECTION`] requests at once) or one HTTP/1.1 request per connection, each connection closed after [`CONNECTION_TIMEOUT`] (a live page's event stream
//! ends before). The flows themselves are the workflow's ([`sallyport_workflow::signin`]).

pub mod console;
mod pages;
pub mod session;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use sallyport_ids::Role;
use sallyport_workflow::WorkflowError;
use sallyport_workflow::signin::{Callback, Done, LoginStart, SignIns};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
pub use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections served at once from one source address (an IPv6 source: its /64).
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// Requests at once on one HTTP/2 connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// A request body must arrive within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The TLS handshake, and then the request head, must each arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed this long after it was accepted, answered or not (a wait is 25 s, a
/// live page's event stream [`console::events::STREAM_LIFETIME`]).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(330);
/// Largest request body.
pub const MAX_BODY: usize = 16 * 1024;
/// How long `POST /login/{id}/wait` waits before answering "pending".
pub const LOGIN_WAIT: Duration = Duration::from_secs(25);

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The certificate or key is not usable.
    #[error("{0}")]
    Tls(#[from] sallyport_certs::CertsError),
}

/// The body of every answer: a whole page, or an event stream.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// What the listener serves: sign-in flows, and the console when there is one.
#[derive(Clone)]
pub struct Web {
    /// Sign-in flows.
    pub signins: SignIns,
    /// The console.
    pub console: Option<Arc<console::Console>>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").finish_non_exhaustive()
    }
}

/// A whole body.
pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// The TLS acceptor of the sign-in listener, from its certificate and key (PEM, with the file
/// names for errors).
pub fn acceptor(cert: (&str, &str), key: (&str, &str)) -> Result<TlsAcceptor, WebError> {
    let cfg = sallyport_certs::tls::web_server_config(cert, key)?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Serves the sign-in listener on `listener` until `shutdown`; connections run in `tasks`.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    web: Web,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (tcp, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "sign-in listener: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("sign-in listener: too many connections; closing one");
            continue;
        };
        let Some(slot) = SourceSlot::take(&per_source, from.ip()) else {
            tracing::debug!(peer = %from, "sign-in listener: too many connections from one address; closing one");
            continue;
        };
        let (tls, web, shutdown) = (tls.clone(), web.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let Ok(Ok(stream)) = tokio::time::timeout(HEADER_TIMEOUT, tls.accept(tcp)).await else {
                tracing::debug!(peer = %from, "sign-in listener: handshake failed or timed out");
                return;
            };
            serve_one(stream, from, web, shutdown).await;
        });
    }
}

/// A connection's place in its source address's count.
struct SourceSlot {
    counts: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

/// The source a connection counts against: its IPv4 address, or its IPv6 /64 (one host's
/// usual share, so that walking through a /64 gains nothing).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

impl SourceSlot {
    fn take(counts: &Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Self> {
        let ip = source_of(ip);
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

async fn serve_one(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    from: SocketAddr,
    web: Web,
    shutdown: CancellationToken,
) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let web = web.clone();
        async move {
            let mut answer = route(&web, from.ip(), req).await;
            secure(&mut answer, h2);
            Ok::<_, Infallible>(answer)
        }
    });
    let io = TokioIo::new(stream);
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .max_header_list_size(16 * 1024)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        drive(builder.serve_connection(io, service), shutdown).await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(16 * 1024)
            .keep_alive(false);
        drive(builder.serve_connection(io, service), shutdown).await;
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2) for at most [`CONNECTION_TIMEOUT`], and winds it
/// down within a second at shutdown.
async fn drive<C>(serving: C, shutdown: CancellationToken)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(serving);
    tokio::select! {
        r = tokio::time::timeout(CONNECTION_TIMEOUT, serving.as_mut()) => {
            if let Ok(Err(e)) = r {
                tracing::debug!(error = %e, "sign-in connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            serving.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), serving).await;
        }
    }
}

/// The headers every answer carries (`h2`: over HTTP/2, which has no `Connection` header).
fn secure(r: &mut Response<Body>, h2: bool) {
    let h = r.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // Console pages set their own policies (their forms may go to an IdP; their form posts
    // must carry an Origin, which `no-referrer` would make `null`); everything else gets these.
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(
        "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ));
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

/// A workflow error as its answer.
fn refusal(e: &WorkflowError) -> Response<Body> {
    let (status, code) = match e {
        WorkflowError::Invalid { code, .. } => (StatusCode::BAD_REQUEST, code.as_str()),
        WorkflowError::Forbidden(_) | WorkflowError::Locked(_) => {
            (StatusCode::FORBIDDEN, "forbidden")
        }
        WorkflowError::IdpRefused(_) => (StatusCode::FORBIDDEN, "idp_refused"),
        WorkflowError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        WorkflowError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        WorkflowError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        WorkflowError::IdpUnavailable(_) => (StatusCode::BAD_GATEWAY, "idp_unavailable"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    error(status, code, &e.to_string())
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let read = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    );
    let body = read
        .await
        .map_err(|_| {
            error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body did not arrive within 10 s",
            )
        })?
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the body is over 16 KiB or was cut short",
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_json", &format!("{e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    csr: String,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitBody {
    secret: String,
}

/// Answers one request.
async fn route(web: &Web, from: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let signins = &web.signins;
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if let (Some(console), Some(&"console")) = (&web.console, segments.first()) {
        return console.route(console::http::Req::new(req, from)).await;
    }
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) if web.console.is_some() => console::http::see_other("/console", &[]),
        (&Method::GET, [""]) => pages::render(&pages::Notice::index()),
        (&Method::GET, ["oidc", "callback"]) => {
            let mut cb = callback_of(req.uri().query().unwrap_or(""));
            let cookies = console::http::cookies_of(req.headers());
            cb.binding = session::cookie(&cookies, session::FLOW_COOKIE).map(str::to_owned);
            let page = signins.callback(cb, from).await;
            match &web.console {
                Some(c) if page.console.is_some() || page.request.is_some() => {
                    c.signed_in(page, &cookies)
                }
                _ => pages::render(&pages::Notice::from(page)),
            }
        }
        (&Method::GET, ["static", "sallyport.css"]) => pages::stylesheet(),
        (&Method::GET, ["static", "console.js"]) => pages::script(),
        (&Method::GET, ["static", "favicon.svg"]) => pages::icon(),
        (&Method::POST, ["login"]) => {
            let body: LoginBody = match read_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let role = match body.role.as_deref() {
                None => None,
                Some("approver") => Some(Role::Approver),
                Some("auditor") => Some(Role::Auditor),
                Some("technician") => Some(Role::Technician),
                Some("admin") => Some(Role::Admin),
                Some(other) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_role",
                        &format!(
                            "`role` `{other}` is not one of approver, auditor, technician, admin"
                        ),
                    );
                }
            };
            let start = LoginStart {
                customer: body.customer,
                role,
                csr: body.csr,
            };
            match signins.start_login(start, from).await {
                Ok(s) => json(
                    StatusCode::OK,
                    &serde_json::json!({"id": s.id, "url": s.url, "secret": s.secret}),
                ),
                Err(e) => refusal(&e),
            }
        }
        (&Method::POST, ["login", id, "wait"]) => {
            let id = (*id).to_owned();
            let body: WaitBody = match read_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match signins.wait_login(&id, &body.secret, LOGIN_WAIT).await {
                Ok(None) => json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({"status": "pending"}),
                ),
                Ok(Some(Done::Ok(mut v))) => {
                    v["status"] = "done".into();
                    json(StatusCode::OK, &v)
                }
                Ok(Some(Done::Refused { code, message })) => {
                    error(StatusCode::FORBIDDEN, code, &message)
                }
                Err(e) => refusal(&e),
            }
        }
        (_, ["login"] | ["login", _, "wait"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the sign-in listener serves /login and /oidc/callback; the API is on the broker's mTLS port",
        ),
    }
}

/// The callback's query parameters (each bounded).
fn callback_of(query: &str) -> Callback {
    let mut cb = Callback::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if v.len() > 4096 {
            continue;
        }
        let v = Some(v.into_owned());
        match &*k {
            "state" => cb.state = v,
            "code" => cb.code = v,
            "error" => cb.error = v,
            "error_description" => cb.error_description = v,
            "iss" => cb.iss = v,
            _ => {}
        }
    }
    cb
}
