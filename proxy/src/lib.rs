//! The Sallyport broker and its command line.
//!
//! A technician with a certificate from the broker's PKI and a valid, time-boxed grant reaches exactly
//! one customer target through the broker, only while grant and policy allow. Modules, in the order a
//! connection meets them: [`broker`] (listener, TLS, HTTP), [`tunnel`] (the CONNECT decision path),
//! [`relay`] (bytes both ways until expiry), [`audit`] (the hash-chained trail). Around them: [`config`],
//! [`init`], [`breakglass`], [`forwarder`], [`demo`] and [`cli`].

pub mod api;
pub mod audit;
#[cfg(feature = "bench-insecure")]
pub mod bench_insecure;
pub mod breakglass;
pub mod broker;
pub mod capture;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod forwarder;
pub mod init;
pub mod limiter;
pub mod live;
pub mod relay;
pub mod siem;
pub mod store;
pub mod tunnel;
pub mod webhook;
