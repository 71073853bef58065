//! Benchmark-only switch (cargo feature `bench-insecure`, off by default) that lets `serve` open
//! tunnels without authorization: no grant check, no certificate binding, no policy decision and no
//! revocation lookup. The client certificate is still verified, the authority is still routed to a
//! configured target only, and every tunnel is still on the audit trail, marked as unauthorized.
//!
//! It exists so `bench/run` can show what authorization costs. A binary built with the feature
//! refuses to start unless [`ENV`] is set to [`CONSENT`], and then warns on every start. Never ship one.

use std::sync::atomic::{AtomicBool, Ordering};

/// The variable that must hold [`CONSENT`] for a `bench-insecure` build to serve.
pub const ENV: &str = "SALLYPORT_BENCH_SKIP_AUTHORIZATION";
/// The value of [`ENV`] that lets it serve.
pub const CONSENT: &str = "yes-this-is-a-benchmark";

static SKIP: AtomicBool = AtomicBool::new(false);

/// Called by `serve`: refuses to start without consent, else skips authorization from now on.
pub fn enable_from_env() -> Result<(), crate::GatewayError> {
    if std::env::var(ENV).ok().as_deref() != Some(CONSENT) {
        return Err(crate::GatewayError::NoConsent);
    }
    eprintln!(
        "sallyport: WARNING: bench-insecure build: tunnels open WITHOUT grant, policy or revocation checks"
    );
    tracing::warn!("bench-insecure build: authorization is skipped for every tunnel");
    SKIP.store(true, Ordering::Relaxed);
    Ok(())
}

/// Whether tunnels skip authorization.
pub fn skip() -> bool {
    SKIP.load(Ordering::Relaxed)
}
