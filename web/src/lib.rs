//! The sign-in listener (`[web] listen`): HTTPS with no client certificate, since a person signing
//! in has none yet. CONNECT tunnels and `/v1` stay on the mTLS listener; this one serves only:
//!
//! - `POST /login` `{csr, customer?, role?}` -> `{id, url, secret}`: a login at the provider's IdP
//!   (or `customer`'s) for the certificate signing request's key; open `url` in a browser.
//! - `POST /login/{id}/wait` `{secret}` -> 202 `{status: "pending"}` after up to 25 s, or 200
//!   `{status: "done", identity, cert, ca, broker, expires_at, ...}`, or the refusal
//!   (`{"error": {code, message}}`, 403).
//! - `GET /oidc/callback?code&state` (the IdP sends the browser here) -> a page saying what happened.
//! - `GET /` -> what this listener is.
//!
//! Every answer carries `Cache-Control: no-store`, `Referrer-Policy: no-referrer` (the callback's
//! URL holds a code), a Content-Security-Policy with nothing allowed but its own styles, and
//! `frame-ancestors 'none'`. Bounded: [`MAX_CONNECTIONS`] at once, the TLS handshake and request
//! head within [`HEADER_TIMEOUT`], bodies of at most [`MAX_BODY`], one request per connection, each
//! connection closed after [`CONNECTION_TIMEOUT`]. The flows themselves are the workflow's
//! ([`sallyport_workflow::signin`]).

mod pages;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
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
pub const MAX_CONNECTIONS: usize = 256;
/// The TLS handshake, and then the request head, must each arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed this long after it was accepted, answered or not (a wait is 25 s).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(40);
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

type Body = Full<Bytes>;

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
    signins: SignIns,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let (tls, signins, shutdown) = (tls.clone(), signins.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let Ok(Ok(stream)) = tokio::time::timeout(HEADER_TIMEOUT, tls.accept(tcp)).await else {
                tracing::debug!(peer = %from, "sign-in listener: handshake failed or timed out");
                return;
            };
            serve_one(stream, from, signins, shutdown).await;
        });
    }
}

async fn serve_one(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    from: SocketAddr,
    signins: SignIns,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let signins = signins.clone();
        async move {
            let mut answer = route(&signins, from.ip(), req).await;
            secure(&mut answer);
            Ok::<_, Infallible>(answer)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .keep_alive(false);
    let serving = builder.serve_connection(TokioIo::new(stream), service);
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

/// The headers every answer carries.
fn secure(r: &mut Response<Body>) {
    let h = r.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
        (header::CONNECTION, "close"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
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
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
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
async fn route(signins: &SignIns, from: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => pages::render(&pages::Notice::index()),
        (&Method::GET, ["oidc", "callback"]) => {
            let cb = callback_of(req.uri().query().unwrap_or(""));
            let page = signins.callback(cb, from).await;
            pages::render(&pages::Notice::from(page))
        }
        (&Method::GET, ["static", "sallyport.css"]) => pages::stylesheet(),
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
