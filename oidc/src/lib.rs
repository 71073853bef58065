//! Sallyport's OpenID Connect relying party: how a technician's sign-in at the customer's identity
//! provider (IdP) becomes claims the broker can decide on.
//!
//! - [`token`] (pure, no I/O): verifies an ID token against a JWK set and what the sign-in expects
//!   (issuer, audience, nonce, the time), signatures only from an algorithm allow-list
//!   ([`token::ALLOWED_ALGORITHMS`]), and reads the claims the broker uses ([`IdClaims`]): subject,
//!   name, email, groups, how the person authenticated (`amr`, [`IdClaims::mfa`]).
//! - [`pkce`]: the random `state`, `nonce` and PKCE verifier of one sign-in, and the authorization URL
//!   the browser is sent to.
//! - [`provider`] (I/O): one IdP. Its discovery document and JWK set are fetched over HTTPS (plain
//!   HTTP only to loopback), cached, and the keys refetched when a token names an unknown `kid` (at
//!   most once per [`provider::JWKS_REFRESH_MIN`]); the authorization code is exchanged at its token
//!   endpoint with the PKCE verifier.
//!
//! Nothing here decides about access: the policy crate does, from the [`IdClaims`] this crate
//! returns. The compact token itself should be kept next to its claims, so an auditor can check the
//! signature again later ([`token::verify_id_token`] takes the time to check at).

pub mod pkce;
pub mod provider;
pub mod token;

#[cfg(test)]
mod testkeys;

pub use jsonwebtoken::jwk::JwkSet;
pub use pkce::{AuthorizationRequest, Pkce, random_token};
pub use provider::{Discovery, Provider, ProviderConfig, TokenAnswer, jwks_from_json};
pub use token::{Expect, IdClaims, TokenRefusal, verify_id_token};

/// Why talking to the identity provider, or the sign-in, failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider is configured wrongly (an issuer that is not an https:// URL, for one): fix the
    /// configuration.
    #[error("OIDC configuration: {0}")]
    Config(String),
    /// The identity provider could not be reached, or did not answer in time (upstream).
    #[error("identity provider unreachable at `{url}`: {reason}")]
    Unreachable {
        /// The URL asked, without its query.
        url: String,
        /// What failed: connecting, the TLS handshake, the HTTP exchange, a timeout.
        reason: String,
    },
    /// The identity provider answered, but not usefully: an unexpected status, a body that is too
    /// large or is not the JSON expected (upstream).
    #[error("identity provider answered `{url}` unusably: {reason}")]
    Answer {
        /// The URL asked, without its query.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// The discovery document is not acceptable (its issuer differs from the configured one, an
    /// endpoint is not https, PKCE S256 is not offered, ...).
    #[error("OIDC discovery: {0}")]
    Discovery(String),
    /// A JWK set (from the provider or a file) could not be read.
    #[error("JWK set: {0}")]
    Jwks(String),
    /// The token endpoint refused the authorization code exchange.
    #[error(
        "the token endpoint refused the code exchange with status {status}: `{error}`{}",
        if description.is_empty() { String::new() } else { format!(" ({description})") }
    )]
    TokenEndpoint {
        /// The HTTP status of the answer.
        status: u16,
        /// The OAuth `error` code (`invalid_grant`, `invalid_client`, ...), or a note when the answer
        /// had none.
        error: String,
        /// The `error_description`, shortened; empty when there was none.
        description: String,
    },
    /// The ID token was refused.
    #[error("ID token refused: {0}")]
    Token(#[from] TokenRefusal),
}
