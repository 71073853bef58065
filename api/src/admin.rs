//! The admin listener: plain HTTP, no client certificate (a load balancer or Prometheus has none),
//! serving only `GET /healthz`, `GET /readyz` and `GET /metrics` ([`crate::ops`]). Anything else is
//! 404, another method on those paths 405. It listens where `admin.listen` says (off unless set;
//! meant for loopback or a private management network: its metrics name customers and counts).
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections at once (more are closed at accept), a request
//! head of at most [`MAX_HEAD_BYTES`] that must arrive within [`HEADER_TIMEOUT`], no request body
//! read, and each connection closed after one answer or [`CONNECTION_TIMEOUT`], whichever is first.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{ALLOW, CONNECTION, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sallyport_gateway::Body;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Api, json, ops};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A request head must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed this long after it was accepted, answered or not.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// The paths served.
const PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": status.as_u16(), "message": message } });
    json(status, body.to_string())
}

/// Answers one request of the admin listener.
pub async fn route(api: &Api, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if !PATHS.contains(&path) {
        return error(
            StatusCode::NOT_FOUND,
            "the admin listener serves /healthz, /readyz and /metrics",
        );
    }
    if req.method() != Method::GET {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match path {
        "/healthz" => ops::health(),
        "/readyz" => ops::readiness(api).await,
        _ => ops::metrics_text(api).await,
    }
}

/// Serves the admin listener on `listener` until `shutdown`; connections run in `tasks`.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!("admin listener: too many connections; closing one");
            continue;
        };
        let (api, shutdown) = (api.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let api = api.clone();
                async move {
                    let mut answer = route(&api, &req).await;
                    answer
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                    Ok::<_, Infallible>(answer)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .keep_alive(false);
            let serving = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(serving);
            tokio::select! {
                r = tokio::time::timeout(CONNECTION_TIMEOUT, serving.as_mut()) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    serving.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), serving).await;
                }
            }
        });
    }
}
