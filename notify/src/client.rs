//! The one outgoing HTTP client of the broker, shared by webhooks and the HTTPS SIEM sink: one `POST`
//! over a fresh HTTP/1.1 connection (`https://` through rustls with the ALPN set to `http/1.1`, or
//! plain `http://`, which the configuration allows only to loopback), a bound on the time to the
//! answer's head, and at most [`MAX_ANSWER_BODY`] bytes of the answer read (and discarded) within
//! [`ANSWER_BODY_TIMEOUT`], so a receiver is never cut off mid-answer and never holds us either.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use sallyport_config::sinks::{Origin, bare_host};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::NotifyError;

/// The most of an answer's body that is read (and discarded).
pub const MAX_ANSWER_BODY: usize = 64 * 1024;

/// How long reading (and discarding) an answer's body may take.
pub const ANSWER_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Posts to receivers trusting one TLS configuration. Cheap to clone.
#[derive(Clone)]
pub struct HttpsClient {
    connector: TlsConnector,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").finish_non_exhaustive()
    }
}

impl HttpsClient {
    /// A client for `https://` URLs trusting `tls` (copied with its ALPN set to `http/1.1`).
    pub fn new(tls: &Arc<rustls::ClientConfig>) -> Self {
        let mut tls = (**tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            connector: TlsConnector::from(Arc::new(tls)),
        }
    }

    /// POSTs `body` with `headers` to `url`; the answer's head must arrive within `head_timeout`.
    /// Returns the answer's status once at most [`MAX_ANSWER_BODY`] of its body was read.
    ///
    /// [`NotifyError::Unreachable`] (worth retrying): connecting, the TLS handshake or the HTTP
    /// exchange failed, or no answer came in time. [`NotifyError::Refused`] (never worth retrying):
    /// the URL has no host, or the request cannot be built.
    pub async fn post(
        &self,
        url: &Uri,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        head_timeout: Duration,
    ) -> Result<StatusCode, NotifyError> {
        let answer = tokio::time::timeout(
            head_timeout,
            self.exchange(url, headers, body, head_timeout),
        )
        .await
        .map_err(|_| {
            NotifyError::Unreachable(format!("no answer within {} s", head_timeout.as_secs()))
        })??;
        let status = answer.status();
        drain(answer.into_body()).await;
        Ok(status)
    }

    async fn exchange(
        &self,
        url: &Uri,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        head_timeout: Duration,
    ) -> Result<Response<Incoming>, NotifyError> {
        // How long the connection may outlive the answer's head: long enough to read its body.
        let guard = head_timeout + ANSWER_BODY_TIMEOUT;
        let origin = Origin::of(url).to_string();
        let (Some(host), Some(authority)) = (bare_host(url), url.authority()) else {
            return Err(NotifyError::Refused("the URL has no host".to_owned()));
        };
        let https = url.scheme_str() == Some("https");
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, authority.as_str());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| NotifyError::Refused(format!("cannot build the request: {e}")))?;
        let exchange_failed =
            |e: hyper::Error| NotifyError::Unreachable(format!("HTTP exchange with {origin}: {e}"));
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| NotifyError::Unreachable(format!("connecting to {origin}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return send(tcp, request, guard).await.map_err(exchange_failed);
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| NotifyError::Refused(format!("host `{host}` as a TLS name: {e}")))?;
        let tls =
            self.connector.connect(name, tcp).await.map_err(|e| {
                NotifyError::Unreachable(format!("TLS handshake with {origin}: {e}"))
            })?;
        send(tls, request, guard).await.map_err(exchange_failed)
    }
}

/// Sends `request` over a fresh HTTP/1.1 connection on `io`.
async fn send<IO>(
    io: IO,
    request: Request<Full<Bytes>>,
    guard: Duration,
) -> Result<Response<Incoming>, hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection ends when `sender` and the answer's body are dropped; the timeout only guards
    // against a receiver that keeps it open.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(guard, conn).await;
    });
    sender.send_request(request).await
}

/// Reads and discards at most [`MAX_ANSWER_BODY`] bytes of an answer's body.
async fn drain(mut body: Incoming) {
    let read = async {
        let mut seen = 0;
        while seen < MAX_ANSWER_BODY {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                Some(Err(_)) | None => break,
            }
        }
    };
    let _ = tokio::time::timeout(ANSWER_BODY_TIMEOUT, read).await;
}
