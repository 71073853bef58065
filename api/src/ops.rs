//! Operations: health, readiness and metrics, rendered once for both listeners that serve them, and
//! the reload.
//!
//! - `GET /healthz`: the process is up (on the mTLS listener for anyone with a certificate, and on
//!   the admin listener for anyone).
//! - `GET /readyz` (admin listener): 200 when every check passes, 503 naming the failing ones. The
//!   checks: `audit` (the last audit batch was written durably: [`sallyport_audit::Health`]),
//!   `store` (a cheap query answers within 2 s), `policies` (every configured customer has its
//!   validated policy set loaded).
//! - `GET /metrics`: the registry as OpenMetrics text, its sampled gauges (live sessions, handshakes
//!   in progress, requests by state, active locks, webhook queues) set just before it is rendered.
//!   On the mTLS listener for provider admins only; on the admin listener for anyone who can reach
//!   it (loopback by default).
//! - `POST /v1/reload` (provider admins): the configuration and policies read again; the answer says
//!   what changed, or 422 `invalid_config` with the file's error.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use sallyport_gateway::{Body, Conn};
use sallyport_ids::Role;
use sallyport_metrics::RequestState;
use sallyport_workflow::reload::ReloadError;
use serde_json::json;

use crate::{Api, ApiError, json};

/// How long the store has to answer readiness and the request counts of a scrape.
const STORE_DEADLINE: Duration = Duration::from_secs(2);

/// `GET /healthz`.
pub fn health() -> Response<Body> {
    json(StatusCode::OK, r#"{"status":"ok"}"#.into())
}

/// `GET /metrics` on the mTLS listener: provider admins only.
pub async fn metrics(api: &Api, conn: &Conn) -> Result<Response<Body>, ApiError> {
    if conn.peer.id.role() != Role::Admin {
        return Err(ApiError::forbidden("metrics are for provider admins"));
    }
    Ok(metrics_text(api).await)
}

/// The metrics as an answer, gauges sampled now.
pub async fn metrics_text(api: &Api) -> Response<Body> {
    sample(api).await;
    let mut r = Response::new(Full::new(Bytes::from(api.metrics.encode())));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(sallyport_metrics::CONTENT_TYPE),
    );
    r
}

/// Sets the gauges that are read rather than counted.
async fn sample(api: &Api) {
    let m = &api.metrics;
    m.set_live_sessions(api.sessions.len());
    m.set_handshakes_in_progress(api.slots.in_use());
    let cx = api.workflow.requests.context();
    m.set_locks_active(api.workflow.locks.gate().view().active_at(cx.clock.unix()));
    let customers = m.customers();
    for (id, queued) in cx.notifier.queued() {
        if let Some((_, c)) = customers.iter().find(|(c, _)| *c == id) {
            c.set_webhook_queued(queued);
        }
    }
    let counts = tokio::time::timeout(STORE_DEADLINE, cx.db.run(|s| s.request_counts())).await;
    match counts {
        Ok(Ok(counts)) => {
            for (id, c) in &customers {
                for state in RequestState::ALL {
                    let n = counts
                        .iter()
                        .find(|(cid, st, _)| cid == id && st.as_str() == state.as_str())
                        .map_or(0, |(_, _, n)| *n);
                    c.set_requests(state, n);
                }
            }
        }
        // The gauges keep their last values; readiness names the store.
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: cannot count requests"),
        Err(_) => tracing::warn!("metrics: the store did not answer in time"),
    }
}

/// One readiness check's outcome.
fn check(name: &str, problem: Option<String>) -> serde_json::Value {
    match problem {
        None => json!({ "name": name, "ok": true }),
        Some(error) => json!({ "name": name, "ok": false, "error": error }),
    }
}

/// `GET /readyz`: 200 when the broker can take sessions, else 503 naming what fails.
pub async fn readiness(api: &Api) -> Response<Body> {
    let audit = api.trail_health.is_failing().then(|| {
        "the last audit write failed (disk full or an I/O error): new sessions and grants are refused until a record is written again".to_owned()
    });
    let cx = api.workflow.requests.context();
    let store = match tokio::time::timeout(STORE_DEADLINE, cx.db.run(|s| s.locks_version())).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("the store does not answer: {e}")),
        Err(_) => Some(format!(
            "the store did not answer within {} s",
            STORE_DEADLINE.as_secs()
        )),
    };
    let config = api.config.load();
    let unloaded: Vec<&str> = config
        .customers
        .iter()
        .filter(|c| c.policy.digest().is_empty())
        .map(|c| c.id.as_str())
        .collect();
    let policies =
        (!unloaded.is_empty()).then(|| format!("no policy set loaded for {}", unloaded.join(", ")));
    let checks = [
        check("audit", audit),
        check("store", store),
        check("policies", policies),
    ];
    let failing: Vec<&str> = checks
        .iter()
        .filter(|c| c["ok"] == false)
        .filter_map(|c| c["name"].as_str())
        .collect();
    let (status, word) = if failing.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    let body = json!({ "status": word, "failing": failing, "checks": checks });
    json(status, body.to_string())
}

/// `POST /v1/reload` (provider admins): reloads the configuration file in force. 200 `{added,
/// changed, removed, policies: [{customer, policy_digest}], sessions_closed: [{session_id,
/// customer, why}]}`; 422 `invalid_config` (the message names the file, the key and the fix) when
/// the new file is refused, the configuration in force unchanged.
pub async fn reload(api: &Api, conn: &Conn) -> Result<Response<Body>, ApiError> {
    if conn.peer.id.role() != Role::Admin {
        let answer = sallyport_workflow::WorkflowError::Forbidden(
            "only provider admins reload the configuration".into(),
        );
        return Err(api
            .workflow
            .refusals
            .refused(
                crate::caller(conn),
                sallyport_workflow::refusals::Attempt::new("reload the configuration"),
                answer,
            )
            .await
            .into());
    }
    let done = api
        .workflow
        .reload
        .reload(&conn.peer.id.to_string())
        .await
        .map_err(|e| match e {
            ReloadError::Config(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                e.to_string(),
            ),
            ReloadError::Workflow(e) => e.into(),
        })?;
    let ids =
        |v: &[sallyport_ids::CustomerId]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    Ok(crate::ok(
        StatusCode::OK,
        serde_json::json!({
            "added": ids(&done.change.added),
            "changed": ids(&done.change.changed),
            "removed": ids(&done.change.removed),
            "policies": done.policies.iter().map(|(c, d)| serde_json::json!({"customer": c, "policy_digest": d})).collect::<Vec<_>>(),
            "sessions_closed": done.closed.iter().map(|(s, why)| serde_json::json!({"session_id": s.id, "customer": s.customer, "target": s.target, "technician": s.technician, "why": why})).collect::<Vec<_>>(),
        }),
    ))
}
