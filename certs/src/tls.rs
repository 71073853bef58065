//! rustls configurations: the broker's server side (client certificates required and verified against
//! the broker CA) and a client side that presents an identity folder's certificate.
//!
//! The process-wide crypto provider is installed once by the binary; these builders use the provider
//! passed in, so tests and the binary agree on one.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::CertsError;

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
pub fn server_config(
    provider: Arc<CryptoProvider>,
    files: PemFiles<'_>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, CertsError> {
    let roots = Arc::new(roots(files.ca.0, files.ca.1)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
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

/// A client config presenting `cert`/`key` and trusting only the broker CA.
pub fn client_config(
    provider: Arc<CryptoProvider>,
    files: PemFiles<'_>,
) -> Result<ClientConfig, CertsError> {
    let roots = roots(files.ca.0, files.ca.1)?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
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
