//! Sallyport's credentials: the broker PKI, certificate identities and certificate-bound grant tokens.
//!
//! - [`pki`] creates the broker CA and issues server and client certificates (ECDSA P-256). A client
//!   certificate names its holder with one URI SAN, a SPIFFE id
//!   (`spiffe://<trust-domain>/<role>/<scope>/<name>`), and carries the holder's groups.
//! - [`identity`] reads a verified peer certificate back into a [`identity::PeerIdentity`].
//! - [`grant`] mints and verifies grant tokens: EdDSA-signed JWTs bound to the technician's client
//!   certificate with an RFC 8705 `cnf` / `x5t#S256` confirmation.
//! - [`tls`] builds rustls configurations for the broker and its clients.
//! - [`identity_dir`] reads and writes identity folders (`cert.pem`, `key.pem`, `ca.pem`, `broker`).
//!
//! Everything that reads a file names that file in its error.

pub mod grant;
pub mod identity;
pub mod identity_dir;
pub mod pki;
pub mod signing;
pub mod tls;

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, and how to fix it.
        what: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate does not carry a usable Sallyport identity.
    #[error("certificate identity: {0}")]
    Identity(String),
    /// rustls refused a configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A grant could not be minted or verified.
    #[error(transparent)]
    Grant(#[from] grant::GrantError),
}

/// SHA-256 of a DER certificate: the RFC 8705 `x5t#S256` thumbprint (raw bytes).
pub fn cert_thumbprint(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}
