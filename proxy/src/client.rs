//! The client side of the broker for the CLI: an mTLS HTTP/1.1 connection to the broker with an
//! identity folder, used by `sallyport connect` (CONNECT tunnels) and the API commands.

use std::sync::Arc;

use anyhow::{Context, anyhow};
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
    pub fn new(identity: &IdentityDir, broker: Option<&str>) -> anyhow::Result<Self> {
        let broker = broker.unwrap_or(&identity.broker).to_owned();
        let host = broker
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| anyhow!("broker address `{broker}` is not HOST:PORT"))?;
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| anyhow!("broker host `{host}`: {e}"))?;
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

    /// Opens one mTLS HTTP/1.1 connection (with upgrades, for CONNECT).
    pub async fn open(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(&self.broker)
            .await
            .with_context(|| format!("connecting to the broker at {}", self.broker))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake with the broker")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(sender)
    }

    /// Sends a JSON API request; returns the status and the parsed body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let mut sender = self.open().await?;
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.broker)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        let resp = sender
            .send_request(req)
            .await
            .context("the broker closed the connection (is the client certificate valid?)")?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, value))
    }
}

/// The message of a JSON API error answer.
pub fn error_message(status: StatusCode, body: &serde_json::Value) -> String {
    let msg = body["error"]["message"].as_str().unwrap_or("no details");
    format!("the broker answered {status}: {msg}")
}

/// The grant of the caller's newest approved request for `customer/target` that still has one to
/// give (not revoked, not expired).
pub async fn approved_grant(client: &BrokerClient, spec: &str) -> anyhow::Result<String> {
    let (customer, target) = spec
        .split_once('/')
        .ok_or_else(|| anyhow!("`{spec}` is not CUSTOMER/TARGET, e.g. acme/db01"))?;
    let (status, list) = client
        .call(Method::GET, "/v1/requests?status=approved", None)
        .await?;
    if !status.is_success() {
        return Err(anyhow!(error_message(status, &list)));
    }
    let now = jiff::Timestamp::now();
    let usable = |r: &&serde_json::Value| {
        r["customer"] == customer
            && r["target"] == target
            && r["grant"]["revoked"] == false
            && r["grant"]["expires_at"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t > now)
    };
    let mut last_refusal = None;
    // Newest first; a handful of tries is plenty and keeps within the API rate.
    for r in list["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(usable)
        .take(5)
    {
        let id = r["id"].as_str().unwrap_or_default();
        let (status, body) = client
            .call(Method::GET, &format!("/v1/requests/{id}/grant"), None)
            .await?;
        if status.is_success()
            && let Some(token) = body["token"].as_str()
        {
            return Ok(token.to_owned());
        }
        last_refusal = Some(error_message(status, &body));
    }
    let any_approved = list["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["customer"] == customer && r["target"] == target);
    Err(match last_refusal {
        Some(why) => anyhow!("no usable grant for {spec}: {why}"),
        None if any_approved => anyhow!(
            "no usable grant for {spec}: your approved requests' grants were revoked or have expired; file a new one with `sallyport request {spec} --minutes M --reason TEXT`"
        ),
        None => anyhow!(
            "no approved request for {spec}: file one with `sallyport request {spec} --minutes M --reason TEXT` and wait for approval, or pass --grant FILE"
        ),
    })
}
