//! The API side of the client: an mTLS HTTP/1.1 connection to the broker with an identity folder,
//! used by `sallyport connect` (CONNECT tunnels, and finding the grant to use) and the API commands;
//! JSON calls and their errors in the broker's words.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use sallyport_certs::identity_dir::IdentityDir;
use sallyport_certs::tls::PemFiles;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{ClientError, Result};

/// How to reach the broker as one identity.
#[derive(Clone)]
pub struct BrokerClient {
    connector: TlsConnector,
    /// The broker's address, `host:port`.
    pub broker: String,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerClient")
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

impl BrokerClient {
    /// A client presenting `identity`, talking to `broker` (default: the identity's `broker` file).
    pub fn new(identity: &IdentityDir, broker: Option<&str>) -> Result<Self> {
        let broker = broker.unwrap_or(&identity.broker).to_owned();
        let host = broker
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| {
                ClientError::Input(format!(
                    "broker address `{broker}` is not HOST:PORT: check --broker or the identity folder's `broker` file"
                ))
            })?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::Input(format!("broker host `{host}`: {e}")))?;
        let (ca_n, cert_n, key_n) = identity.pem_files();
        let client = sallyport_certs::tls::client_config(PemFiles {
            ca: (&identity.ca_pem, &ca_n),
            cert: (&identity.cert_pem, &cert_n),
            key: (&identity.key_pem, &key_n),
        })?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            broker,
            server_name,
        })
    }

    /// A client without a certificate, for the broker's sign-in listener at `web` (`host:port`),
    /// trusting the CA certificates in `ca_pem` (the broker CA, or the sign-in listener's own), or
    /// without them the Mozilla roots.
    pub fn anonymous(web: &str, ca_pem: Option<(&str, &str)>) -> Result<Self> {
        let host = web
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| {
                ClientError::Input(format!(
                    "sign-in address `{web}` is not HOST:PORT: check --broker"
                ))
            })?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::Input(format!("sign-in host `{host}`: {e}")))?;
        let client = match ca_pem {
            Some((pem, origin)) => sallyport_certs::tls::client_trusting(pem, origin)?,
            None => sallyport_certs::tls::default_client(),
        };
        Ok(Self {
            connector: TlsConnector::from(client),
            broker: web.to_owned(),
            server_name,
        })
    }

    /// Opens one mTLS HTTP/1.1 connection (with upgrades, for CONNECT).
    pub async fn open(&self) -> Result<SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(&self.broker)
            .await
            .map_err(|error| ClientError::Io {
                what: format!("connecting to the broker at {}", self.broker),
                error,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "TLS handshake with the broker failed");
                ClientError::Handshake(handshake_words(&e, &self.broker))
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(ClientError::http("starting HTTP with the broker"))?;
        tokio::spawn(conn.with_upgrades());
        Ok(sender)
    }

    /// Sends a JSON API request; returns the status and the parsed body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value)> {
        let mut sender = self.open().await?;
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.broker)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(ClientError::request)?;
        let resp = sender.send_request(req).await.map_err(ClientError::http(
            "the broker closed the connection (is the client certificate valid?)",
        ))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(ClientError::http("reading the broker's answer"))?
            .to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, value))
    }
}

/// A failed TLS handshake with the broker, in words (the TLS library's own message is logged at
/// debug).
fn handshake_words(e: &std::io::Error, broker: &str) -> String {
    use tokio_rustls::rustls::Error as Tls;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Tls>()) {
        Some(Tls::InvalidCertificate(_)) => format!(
            "the broker at {broker} is not the one this identity folder trusts (its certificate does not check against ca.pem): check --broker"
        ),
        Some(Tls::AlertReceived(_)) => format!(
            "the broker at {broker} refused this identity's certificate (expired, locked, or from another CA): get a new one with `sallyport certs issue`"
        ),
        Some(_) => format!("could not set up a secure connection with the broker at {broker}"),
        None => format!("the broker at {broker} closed the connection during the TLS handshake"),
    }
}

/// The message of a JSON API error answer.
pub fn error_message(status: StatusCode, body: &serde_json::Value) -> String {
    let msg = body["error"]["message"].as_str().unwrap_or("no details");
    format!("the broker answered {status}: {msg}")
}

/// The broker's words in a JSON API error answer, without its status: for `connect`, which speaks
/// to people only in words.
pub fn words(status: StatusCode, body: &serde_json::Value) -> String {
    match body["error"]["message"].as_str() {
        Some(m) => m.to_owned(),
        None => crate::forwarder::refusal_words(status, ""),
    }
}

/// `customer/target` split in two.
pub fn split(spec: &str) -> Result<(&str, &str)> {
    spec.split_once('/')
        .filter(|(c, t)| !c.is_empty() && !t.is_empty())
        .ok_or_else(|| {
            ClientError::Input(format!("`{spec}` is not CUSTOMER/TARGET, e.g. acme/db01"))
        })
}

/// A `GET` of the API; a non-2xx answer becomes the error, in the broker's words.
pub async fn get(client: &BrokerClient, path: &str) -> Result<serde_json::Value> {
    let (status, v) = client.call(Method::GET, path, None).await?;
    if !status.is_success() {
        return Err(ClientError::Refused(words(status, &v)));
    }
    Ok(v)
}

/// What the caller's requests for one target come to.
#[derive(Debug)]
pub enum Usable {
    /// A grant to use.
    Token(String),
    /// No usable grant, but this request is pending: it can be waited for.
    Pending(String),
    /// Nothing to use or wait for, and why.
    None(String),
}

/// The grant of the caller's newest approved request for `customer/target` that still has one to
/// give (not revoked, not expired), or the newest pending request for it.
pub async fn usable_grant(client: &BrokerClient, spec: &str) -> Result<Usable> {
    let (customer, target) = split(spec)?;
    let list = get(client, "/v1/requests").await?;
    let now = jiff::Timestamp::now();
    let mine = |r: &&serde_json::Value| r["customer"] == customer && r["target"] == target;
    let usable = |r: &&serde_json::Value| {
        r["status"] == "approved"
            && r["grant"]["revoked"] == false
            && r["grant"]["expires_at"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t > now)
    };
    let requests: Vec<&serde_json::Value> = list["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(mine)
        .collect();
    let mut last_refusal = None;
    // Newest first; a handful of tries is plenty and keeps within the API rate.
    for r in requests.iter().copied().filter(usable).take(5) {
        let id = r["id"].as_str().unwrap_or_default();
        let (status, body) = client
            .call(Method::GET, &format!("/v1/requests/{id}/grant"), None)
            .await?;
        if status.is_success()
            && let Some(token) = body["token"].as_str()
        {
            return Ok(Usable::Token(token.to_owned()));
        }
        last_refusal = Some(words(status, &body));
    }
    if let Some(r) = requests.iter().find(|r| r["status"] == "pending") {
        return Ok(Usable::Pending(
            r["id"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    let any_approved = requests.iter().any(|r| r["status"] == "approved");
    Ok(Usable::None(match last_refusal {
        Some(why) => format!("no usable grant for {spec}: {why}"),
        None if any_approved => format!(
            "no usable grant for {spec}: your approved requests' grants were revoked or have expired; file a new one with `sallyport request {spec} --minutes M --reason TEXT`"
        ),
        None => format!(
            "no approved request for {spec}: file one with `sallyport request {spec} --minutes M --reason TEXT` and wait for approval (`connect --wait` waits), or pass --grant FILE"
        ),
    }))
}
