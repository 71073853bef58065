//! The client side of a Sallyport broker, for the `sallyport` commands of technicians, approvers,
//! auditors and admins: [`api`] (an mTLS HTTP/1.1 connection made with an identity folder, JSON API
//! calls, finding the grant to use), [`forwarder`] (a grant read from its token, one CONNECT tunnel
//! under it, the relay, why a tunnel ended, a local port served with it), [`socks`] (one local
//! SOCKS5 port for every target the technician holds a grant for) and [`login`] (a key pair made
//! here and the certificate the broker issues for it on a sign-in at an identity provider).
//! It decides nothing the broker decides: every grant, policy and lock is checked there. What it says goes to stderr in words.

pub mod api;
mod error;
pub mod forwarder;
pub mod login;
pub mod socks;

pub use api::{BrokerClient, Usable};
pub use error::{ClientError, Result};
pub use forwarder::Grant;
