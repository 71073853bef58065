//! `sallyport connect`: a local forwarder. It listens on a local address and opens one broker tunnel
//! per accepted connection, so ssh, psql or an RDP client work unmodified against `127.0.0.1:PORT`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use sallyport_certs::identity_dir::IdentityDir;
use tokio::net::{TcpListener, TcpStream};

use crate::client::BrokerClient;

/// A running forwarder's settings.
#[derive(Clone)]
pub struct Forwarder {
    client: BrokerClient,
    authority: String,
    token: Arc<str>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("client", &self.client)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct Peek {
    customer: String,
    target: String,
    port: u16,
    exp: i64,
}

impl Forwarder {
    /// Prepares a forwarder for `customer/target` with the grant `token`.
    pub fn new(
        spec: &str,
        token: &str,
        identity: &IdentityDir,
        broker: Option<&str>,
    ) -> anyhow::Result<(Self, String)> {
        let (customer, target) = spec
            .split_once('/')
            .ok_or_else(|| anyhow!("`{spec}` is not CUSTOMER/TARGET, e.g. acme/db01"))?;
        // Reading our own grant's claims (not verifying them: the broker does) to build the authority.
        let payload = token
            .split('.')
            .nth(1)
            .ok_or_else(|| anyhow!("the grant is not a JWT"))?;
        let peek: Peek = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .context("the grant is not a JWT")?,
        )
        .context("the grant has no customer, target or port")?;
        if peek.customer != customer || peek.target != target {
            bail!(
                "the grant is for {}/{}, not {spec}",
                peek.customer,
                peek.target
            );
        }
        let expires = jiff::Timestamp::from_second(peek.exp)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let client = BrokerClient::new(identity, broker)?;
        Ok((
            Self {
                client,
                authority: format!("{target}.{customer}:{}", peek.port),
                token: token.into(),
            },
            expires,
        ))
    }

    /// Accepts local connections forever, one tunnel each.
    pub async fn serve(self, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (local, addr) = listener.accept().await?;
            let fwd = self.clone();
            tokio::spawn(async move {
                if let Err(e) = fwd.tunnel(local).await {
                    tracing::error!(client = %addr, error = %format!("{e:#}"), "tunnel failed");
                }
            });
        }
    }

    /// Opens one tunnel and relays `local` through it.
    pub async fn tunnel(&self, mut local: TcpStream) -> anyhow::Result<()> {
        let _ = local.set_nodelay(true);
        let mut sender = self.client.open().await?;
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(&self.authority)
            .header(hyper::header::HOST, &self.authority)
            .header(
                hyper::header::PROXY_AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .body(Full::new(Bytes::new()))?;
        let resp = sender
            .send_request(req)
            .await
            .context("the broker closed the connection (is the client certificate valid?)")?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(512)])
                .trim()
                .to_owned();
            // The broker's refusals start with their status line already.
            if body.starts_with(status.as_str()) {
                bail!("the broker refused the tunnel: {body}");
            }
            bail!("the broker refused the tunnel: {status}: {body}");
        }
        let upgraded = hyper::upgrade::on(resp).await?;
        let mut remote = TokioIo::new(upgraded);
        let (up, down) = tokio::io::copy_bidirectional(&mut local, &mut remote).await?;
        tracing::info!(bytes_up = up, bytes_down = down, "tunnel closed");
        Ok(())
    }
}

/// Binds the local listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; pick another --listen address"))
}
