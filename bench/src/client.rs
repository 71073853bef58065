//! The client side of every workload: TLS 1.3 only, one cipher suite (AES-128-GCM), one key-exchange
//! group (X25519, or X25519MLKEM768 for the post-quantum run), no resumption, and the technician's
//! certificate from an identity folder written by `sallyport certs issue`. An [`Endpoint`] opens a
//! connection the same way whatever is behind it: plain TCP (direct), TLS (HAProxy, nginx), or TLS
//! plus a Sallyport `CONNECT` with the grant.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sallyport_certs::identity_dir::IdentityDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The key-exchange group the client offers (the only one, so the server must pick it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kx {
    /// X25519 (classical).
    X25519,
    /// X25519MLKEM768 (hybrid post-quantum).
    X25519mlkem768,
}

/// Any async byte stream the workloads drive.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The client TLS configuration. With `verify_server` false the server's certificate and handshake
/// signature are not checked, so the load generator spends its core on load (every proxy still
/// verifies the client certificate in full).
pub fn tls_config(identity: &Path, kx: Kx, verify_server: bool) -> anyhow::Result<ClientConfig> {
    use rustls::crypto::aws_lc_rs as p;
    let id = IdentityDir::read(identity)
        .with_context(|| format!("reading the identity folder {}", identity.display()))?;
    let mut provider = p::default_provider();
    provider.kx_groups = vec![match kx {
        Kx::X25519 => p::kx_group::X25519,
        Kx::X25519mlkem768 => p::kx_group::X25519MLKEM768,
    }];
    provider.cipher_suites = vec![p::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let provider = Arc::new(provider);
    let mut roots = rustls::RootCertStore::empty();
    for c in sallyport_certs::tls::certs_from_pem(&id.ca_pem, "ca.pem")? {
        roots.add(c)?;
    }
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            sallyport_certs::tls::certs_from_pem(&id.cert_pem, "cert.pem")?,
            sallyport_certs::tls::key_from_pem(&id.key_pem, "key.pem")?,
        )?;
    cfg.resumption = rustls::client::Resumption::disabled();
    if !verify_server {
        cfg.dangerous()
            .set_certificate_verifier(Arc::new(TrustAnyServer(provider)));
    }
    Ok(cfg)
}

/// A server verifier that accepts anything: for the load generator on loopback only.
#[derive(Debug)]
struct TrustAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for TrustAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Where and how to open connections.
#[derive(Clone)]
pub struct Endpoint {
    /// The address connected to.
    pub addr: SocketAddr,
    /// TLS, for a proxy.
    pub tls: Option<Arc<ClientConfig>>,
    /// A Sallyport `CONNECT` request head sent after the handshake.
    pub connect: Option<Arc<Vec<u8>>>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("connect", &self.connect.is_some())
            .finish()
    }
}

/// The `CONNECT` request head for `authority` with `grant`.
pub fn connect_head(authority: &str, grant: &str) -> Vec<u8> {
    format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Bearer {grant}\r\n\r\n"
    )
    .into_bytes()
}

/// Checks a proxy's answer head to `CONNECT`: 200, and nothing after the head.
fn check_answer(buf: &[u8]) -> anyhow::Result<Option<()>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            bail!("CONNECT answer head too long");
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "CONNECT refused: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    if end + 4 != buf.len() {
        bail!("bytes after the CONNECT answer before any were sent");
    }
    Ok(Some(()))
}

impl Endpoint {
    /// Connections to `addr`: plain TCP without `tls`, TLS with it, then `CONNECT` with `connect`.
    /// The server certificate is checked (when it is) for `localhost`.
    pub fn new(
        addr: SocketAddr,
        tls: Option<Arc<ClientConfig>>,
        connect: Option<Vec<u8>>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            tls,
            connect: connect.map(Arc::new),
            name: ServerName::try_from("localhost")?.to_owned(),
        })
    }

    /// Opens a connection, ready to carry the workload's bytes.
    pub async fn open(&self) -> anyhow::Result<Box<dyn Io>> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let mut s = TlsConnector::from(tls.clone())
            .connect(self.name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        if let Some(head) = &self.connect {
            s.write_all(head).await?;
            let mut buf = Vec::with_capacity(256);
            let mut chunk = [0u8; 512];
            loop {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed before the CONNECT answer");
                }
                buf.extend_from_slice(&chunk[..n]);
                if check_answer(&buf)?.is_some() {
                    break;
                }
            }
        }
        Ok(Box::new(s))
    }

    /// [`Endpoint::open`] with blocking I/O, for the paced latency probes.
    pub fn open_blocking(&self) -> anyhow::Result<Box<dyn BlockingIo>> {
        let tcp = std::net::TcpStream::connect(self.addr)
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let conn = rustls::ClientConnection::new(tls.clone(), self.name.clone())?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        if let Some(head) = &self.connect {
            s.write_all(head)?;
            let mut buf = Vec::with_capacity(256);
            let mut chunk = [0u8; 512];
            loop {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(anyhow!("connection closed before the CONNECT answer"));
                }
                buf.extend_from_slice(&chunk[..n]);
                if check_answer(&buf)?.is_some() {
                    break;
                }
            }
        } else {
            // Finish the handshake before the clock starts.
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
        }
        Ok(Box::new(s))
    }
}

/// Any blocking byte stream.
pub trait BlockingIo: Read + Write + Send {}
impl<T: Read + Write + Send> BlockingIo for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_answers() {
        assert!(check_answer(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(check_answer(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().is_some());
        assert!(check_answer(b"HTTP/1.1 403 Forbidden\r\n\r\n").is_err());
        assert!(check_answer(b"HTTP/1.1 200 OK\r\n\r\nxx").is_err());
        let head = String::from_utf8(connect_head("echo.bench:1", "t")).unwrap();
        assert!(head.starts_with("CONNECT echo.bench:1 HTTP/1.1\r\n"));
    }
}
