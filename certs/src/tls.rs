//! rustls configurations: the one crypto provider ([`provider`]), the broker's server side (client
//! certificates required and verified against the broker CA), a client side that presents an identity
//! folder's certificate, and the outgoing client of webhooks and SIEM sinks ([`default_client`],
//! [`client_trusting`]).
//!
//! Every rustls configuration in Sallyport is built here, on [`provider`] (aws-lc-rs); the binary
//! also installs it as the process default once, at start.

use std::sync::{Arc, LazyLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::CertsError;

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));

/// The one crypto provider: aws-lc-rs with its default suites and key exchanges.
pub fn provider() -> Arc<CryptoProvider> {
    PROVIDER.clone()
}

/// Installs [`provider`] as the process-wide default (once, from `main`); a second call changes
/// nothing.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default((*provider()).clone());
}

/// The protocol versions every configuration allows.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// An outgoing client trusting the Mozilla roots of `webpki-roots` (webhook receivers and SIEM
/// intakes without a configured CA), TLS 1.3 and 1.2.
pub fn default_client() -> Arc<ClientConfig> {
    static DEFAULT: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Arc::new(client_with_roots(roots))
    });
    DEFAULT.clone()
}

/// An outgoing client trusting only the certificates in `ca_pem` (a SIEM's own CA). `origin` names
/// the file in errors.
pub fn client_trusting(ca_pem: &str, origin: &str) -> Result<Arc<ClientConfig>, CertsError> {
    Ok(Arc::new(client_with_roots(roots(ca_pem, origin)?)))
}

fn client_with_roots(roots: RootCertStore) -> ClientConfig {
    match ClientConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS) {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // aws-lc-rs supports both versions; should that ever change, its own defaults stand.
        Err(_) => ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(roots.clone())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| {
                ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }),
    }
}

/// A verifier of client certificates chained to the broker CA in `ca_pem` (the server side uses it,
/// and so does break-glass to check a technician's certificate). `origin` names the file in errors.
pub fn client_verifier(
    ca_pem: &str,
    origin: &str,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, CertsError> {
    let roots = Arc::new(roots(ca_pem, origin)?);
    Ok(WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?)
}

/// Parses every certificate in a PEM text. `origin` names the file in errors.
pub fn certs_from_pem(pem: &str, origin: &str) -> Result<Vec<CertificateDer<'static>>, CertsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| CertsError::Pem {
            path: origin.into(),
            what: format!("unreadable PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(CertsError::Pem {
            path: origin.into(),
            what: "no `BEGIN CERTIFICATE` block found; point this at a PEM certificate".into(),
        });
    }
    Ok(certs)
}

/// Parses one private key from a PEM text. `origin` names the file in errors.
pub fn key_from_pem(pem: &str, origin: &str) -> Result<PrivateKeyDer<'static>, CertsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertsError::Pem {
        path: origin.into(),
        what: format!("no usable private key ({e}); expected a PKCS#8 `BEGIN PRIVATE KEY` block"),
    })
}

fn roots(ca_pem: &str, origin: &str) -> Result<RootCertStore, CertsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem, origin)? {
        roots.add(c).map_err(|e| CertsError::Pem {
            path: origin.into(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// PEM inputs of a TLS endpoint, with the file names used in errors.
#[derive(Debug, Clone, Copy)]
pub struct PemFiles<'a> {
    /// CA certificate PEM text, and its file name.
    pub ca: (&'a str, &'a str),
    /// Own certificate chain PEM text, and its file name.
    pub cert: (&'a str, &'a str),
    /// Own private key PEM text, and its file name.
    pub key: (&'a str, &'a str),
}

/// The broker's server config: TLS 1.3 and 1.2, client certificates required and chained to the CA.
pub fn server_config(files: PemFiles<'_>, alpn: &[&[u8]]) -> Result<ServerConfig, CertsError> {
    let verifier = client_verifier(files.ca.0, files.ca.1)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_from_pem(files.cert.0, files.cert.1)?,
            key_from_pem(files.key.0, files.key.1)?,
        )?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No session resumption: a resumed session would skip the certificate checks (expiry included),
    // so every connection gets a full handshake against the CA.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// The sign-in listener's server side: no client certificate (a person signing in has none yet),
/// `cert`/`key` (`(pem, file name)`), HTTP/1.1.
pub fn web_server_config(
    cert: (&str, &str),
    key: (&str, &str),
) -> Result<ServerConfig, CertsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(certs_from_pem(cert.0, cert.1)?, key_from_pem(key.0, key.1)?)?;
    // HTTP/2 first: browsers hold at most six HTTP/1.1 connections to one origin, and every
    // live console page keeps one open for its updates.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client config presenting `cert`/`key` and trusting only the broker CA.
pub fn client_config(files: PemFiles<'_>) -> Result<ClientConfig, CertsError> {
    let roots = roots(files.ca.0, files.ca.1)?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs_from_pem(files.cert.0, files.cert.1)?,
            key_from_pem(files.key.0, files.key.1)?,
        )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_provider_everywhere() {
        assert!(Arc::ptr_eq(&provider(), &provider()));
        assert!(Arc::ptr_eq(&default_client(), &default_client()));
        let names = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(default_client().crypto_provider()),
            names(&rustls::crypto::aws_lc_rs::default_provider())
        );
        let err = client_trusting("nope", "siem-ca.pem").unwrap_err();
        assert!(err.to_string().starts_with("siem-ca.pem:"), "{err}");
    }

    #[test]
    fn empty_pem_names_the_file_and_fix() {
        let err = certs_from_pem("hello", "pki/server.pem").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("pki/server.pem: no `BEGIN CERTIFICATE`"),
            "{err}"
        );
        let err = key_from_pem("hello", "pki/server.key").unwrap_err();
        assert!(
            err.to_string()
                .contains("pki/server.key: no usable private key"),
            "{err}"
        );
    }
}
