//! The HTTP client of the relying party: one request over a fresh HTTP/1.1 connection (`https://`
//! through rustls with the ALPN set to `http/1.1`, or plain `http://`, which [`super::checked_url`]
//! allows only to loopback), at most [`TIMEOUT`] to the answer's head and again to its body, at most
//! [`MAX_BODY`] bytes of body read, redirects never followed.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{MAX_BODY, TIMEOUT, bare_host};
use crate::OidcError;

/// What is sent as `User-Agent`.
const USER_AGENT: &str = concat!("sallyport-oidc/", env!("CARGO_PKG_VERSION"));

/// An answer: its status and its whole (bounded) body.
pub(super) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends requests trusting one TLS configuration. Cheap to clone.
#[derive(Clone)]
pub(super) struct Http {
    connector: TlsConnector,
}

impl Http {
    /// A client for `https://` URLs trusting `tls` (copied with its ALPN set to `http/1.1`).
    pub fn new(tls: &Arc<rustls::ClientConfig>) -> Self {
        let mut tls = (**tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            connector: TlsConnector::from(Arc::new(tls)),
        }
    }

    /// GETs `url`, asking for JSON.
    pub async fn get(&self, url: &Uri) -> Result<Answer, OidcError> {
        self.send(Method::GET, url, None, Bytes::new()).await
    }

    /// POSTs the form `body` (`application/x-www-form-urlencoded`) to `url`, with `authorization`
    /// as the `Authorization` header when given.
    pub async fn post_form(
        &self,
        url: &Uri,
        body: String,
        authorization: Option<&str>,
    ) -> Result<Answer, OidcError> {
        self.send(Method::POST, url, authorization, Bytes::from(body))
            .await
    }

    async fn send(
        &self,
        method: Method,
        url: &Uri,
        authorization: Option<&str>,
        body: Bytes,
    ) -> Result<Answer, OidcError> {
        let shown = shown(url);
        let unreachable = |reason: String| OidcError::Unreachable {
            url: shown.clone(),
            reason,
        };
        let answer = tokio::time::timeout(
            TIMEOUT,
            self.exchange(method, url, authorization, body, &shown),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", TIMEOUT.as_secs())))??;
        let status = answer.status();
        let too_large = || OidcError::Answer {
            url: shown.clone(),
            reason: format!("the answer is larger than {MAX_BODY} bytes"),
        };
        let announced = answer
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let body = tokio::time::timeout(
            TIMEOUT,
            Limited::new(answer.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| {
            unreachable(format!(
                "the answer's body did not arrive within {} s",
                TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large()
            } else {
                unreachable(format!("reading the answer's body: {e}"))
            }
        })?
        .to_bytes();
        Ok(Answer { status, body })
    }

    async fn exchange(
        &self,
        method: Method,
        url: &Uri,
        authorization: Option<&str>,
        body: Bytes,
        shown: &str,
    ) -> Result<Response<Incoming>, OidcError> {
        let unreachable = |reason: String| OidcError::Unreachable {
            url: shown.to_owned(),
            reason,
        };
        let refused = |reason: String| OidcError::Config(format!("URL `{shown}`: {reason}"));
        let (Some(host), Some(authority)) = (bare_host(url), url.authority()) else {
            return Err(refused("it has no host".to_owned()));
        };
        let https = url.scheme_str() == Some("https");
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let mut request = Request::builder()
            .method(method.clone())
            .uri(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, authority.as_str())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, "application/json");
        if method == Method::POST {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| refused(format!("cannot build the request: {e}")))?;
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| unreachable(format!("connecting: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let exchanged = if https {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| refused(format!("host `{host}` as a TLS name: {e}")))?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS handshake: {e}")))?;
            send(tls, request).await
        } else {
            send(tcp, request).await
        };
        exchanged.map_err(|e| unreachable(format!("HTTP exchange: {e}")))
    }
}

/// Sends `request` over a fresh HTTP/1.1 connection on `io`.
async fn send<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection ends when `sender` and the answer's body are dropped; the timeout only guards
    // against a server that keeps it open.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(TIMEOUT * 2, conn).await;
    });
    sender.send_request(request).await
}

/// `scheme://authority/path` of `url`: what errors show of it (no query).
pub(super) fn shown(url: &Uri) -> String {
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("?"),
        url.authority().map_or("", |a| a.as_str()),
        url.path()
    )
}
