//! Watching the audit trail for the data plane: on every write failure, with
//! `audit.on_failure = "end_sessions"` (the default), every live tunnel ends, since nothing may go on
//! that cannot be recorded (new tunnels and grants are refused by their own failing records until the
//! disk takes writes again). Once records go through again, the closes kept while it failed are
//! written (the trail's backlog). Started by the binary's assembly; stops at shutdown.

use std::sync::Arc;
use std::time::Duration;

use sallyport_audit::AuditLog;
use sallyport_config::OnAuditFailure;
use tokio_util::sync::CancellationToken;

use crate::live::LiveSessions;

/// Watches `trail` until `shutdown`, ending `sessions` on failures when `on_failure` says so.
pub async fn watch_trail(
    trail: AuditLog,
    sessions: Arc<LiveSessions>,
    on_failure: OnAuditFailure,
    shutdown: CancellationToken,
) {
    let health = trail.health().clone();
    // Failures are read from the counter, so one that lands while this task is busy is not missed.
    let mut seen = health.failures();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = health.failed() => {}
            _ = health.appended() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let failures = health.failures();
        if failures > seen {
            seen = failures;
            tracing::error!(
                failures,
                "the audit trail is not writable: new sessions and grants are refused until it recovers"
            );
            if on_failure == OnAuditFailure::EndSessions {
                let ended = sessions.end_all("audit trail not writable");
                if ended > 0 {
                    tracing::error!(
                        sessions = ended,
                        "ended live sessions: the audit trail is not writable"
                    );
                }
            }
            continue;
        }
        trail.write_backlog().await;
        // Retries that failed again are not news.
        seen = seen.max(health.failures());
    }
}
