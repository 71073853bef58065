//! The data plane: the mTLS [`listener`] (pre-handshake [`slots`] per source and in all, handshake
//! under a timeout, the peer identified from its certificate, failures budgeted by [`limiter`]: per
//! identity once a certificate is presented, per address before), the CONNECT path ([`tunnel`], with every
//! check before a tunnel in the pure [`decide`]), the [`relay`] of bytes both ways until expiry,
//! revocation or shutdown, the registry of [`live`] tunnels (which the workflow ends through its
//! `LiveTunnels` trait), session [`capture`], and the [`watch`] that ends tunnels when the trail
//! fails.
//!
//! What it counts (tunnels opened and refused by reason, live tunnels, bytes, handshake failures,
//! decision latency, limits hit) goes into the `sallyport-metrics` registry it is given.
//!
//! The listener takes a handler and knows no routes; the binary's assembly routes CONNECT here and
//! everything else to the API. This crate never depends on the API.

#[cfg(feature = "bench-insecure")]
pub mod bench_insecure;
pub mod capture;
pub mod decide;
pub mod limiter;
pub mod listener;
pub mod live;
pub mod relay;
pub mod slots;
pub mod tunnel;
pub mod watch;

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::Full;
use sallyport_certs::identity::PeerIdentity;
use tokio::sync::OwnedSemaphorePermit;

pub use listener::{Listener, RequestDeadline};
pub use live::LiveSessions;
pub use tunnel::{Tunnels, TunnelsParts};

/// What can fail in the data plane besides a refused tunnel (which is an answer, not an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// A session capture could not be created or written: the tunnel is refused, or ends.
    #[error("{message}")]
    Capture {
        /// The capture file or its folder.
        path: std::path::PathBuf,
        /// What failed.
        message: String,
    },
    /// A `bench-insecure` build was started without consent to serve without authorization.
    #[error(
        "this binary was built with the `bench-insecure` feature and opens tunnels without authorization; \
         it only serves for benchmarks, with SALLYPORT_BENCH_SKIP_AUTHORIZATION=yes-this-is-a-benchmark. \
         Build without the feature for any other use"
    )]
    NoConsent,
}

/// Response body type of everything served on the listener.
pub type Body = Full<Bytes>;

/// A connection's authenticated peer.
#[derive(Debug)]
pub struct Conn {
    /// Who, from the client certificate.
    pub peer: PeerIdentity,
    /// From where.
    pub ip: IpAddr,
    /// The connection's slot under `limits.max_connections`; a tunnel keeps it until it closes.
    pub permit: OwnedSemaphorePermit,
}
