//! [`ApiError`]: every failure of a `/v1` call as its answer, `{"error": {"code", "message"}}` with
//! its status (and `Retry-After` for 429, `Connection: close` for 408). Workflow errors map one to one; internal detail (a store
//! error) is logged where it happens, never shown.

use std::time::Duration;

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use sallyport_gateway::Body;
use sallyport_workflow::WorkflowError;

use crate::json;

/// A refused or failed API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {code}: {message}")]
pub struct ApiError {
    /// The answer's status.
    pub status: StatusCode,
    /// A short machine-readable name.
    pub code: String,
    /// For people.
    pub message: String,
    /// For a 429: when to try again.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error answer.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 400 with `code`.
    pub fn bad(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 429 `rate_limited`, with `Retry-After`.
    pub fn too_many(wait: Duration, what: &str) -> Self {
        let secs = wait.as_secs().max(1);
        Self {
            retry_after: Some(wait),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many {what}; try again in {secs} s"),
            )
        }
    }

    /// The answer.
    pub fn into_response(self) -> Response<Body> {
        let mut r = json(
            self.status,
            serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string(),
        );
        if let Some(wait) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
        {
            r.headers_mut().insert(RETRY_AFTER, v);
        }
        // A request that did not arrive in time ends its connection: what is left of it is not read.
        if self.status == StatusCode::REQUEST_TIMEOUT {
            r.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        let unavailable =
            |code: &str, message: &str| Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        match e {
            WorkflowError::Invalid { code, message } => Self::bad(code, message),
            WorkflowError::Forbidden(m) => Self::forbidden(m),
            WorkflowError::Locked(m) => Self::new(StatusCode::FORBIDDEN, "locked", m),
            WorkflowError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
            WorkflowError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            WorkflowError::RateLimited { what, wait } => Self::too_many(wait, what),
            WorkflowError::AuditUnavailable => {
                unavailable("audit_unavailable", "the audit trail is not writable")
            }
            WorkflowError::StoreUnavailable(_) => unavailable(
                "store_unavailable",
                "the state store is unavailable; try again shortly",
            ),
            WorkflowError::SigningFailed => {
                unavailable("signing_failed", "the grant could not be signed")
            }
            WorkflowError::IdpRefused(m) => Self::new(StatusCode::FORBIDDEN, "idp_refused", m),
            WorkflowError::IdpUnavailable(m) => {
                tracing::warn!(error = %m, "identity provider unavailable");
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    "idp_unavailable",
                    format!("the identity provider is unavailable: {m}"),
                )
            }
            WorkflowError::Trail(e) => {
                tracing::error!(error = %e, "reading the audit trail failed");
                unavailable("audit_unavailable", "the audit trail could not be read")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_errors_map_to_their_answers() {
        let status = |e: WorkflowError| ApiError::from(e).status;
        assert_eq!(
            status(WorkflowError::invalid("bad_x", "x")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(WorkflowError::Forbidden("x".into())),
            StatusCode::FORBIDDEN
        );
        let locked = ApiError::from(WorkflowError::Locked("x".into()));
        assert_eq!(
            (locked.status, locked.code.as_str()),
            (StatusCode::FORBIDDEN, "locked")
        );
        assert_eq!(
            status(WorkflowError::NotFound("x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(WorkflowError::Conflict("x".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(WorkflowError::AuditUnavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let limited = ApiError::from(WorkflowError::RateLimited {
            what: "access requests filed",
            wait: Duration::from_millis(10),
        });
        assert_eq!(
            limited.message,
            "too many access requests filed; try again in 1 s"
        );
        let r = limited.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert!(r.headers().get(hyper::header::CONNECTION).is_none());
    }

    #[test]
    fn a_request_that_came_too_slowly_ends_its_connection() {
        let r =
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "late").into_response();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(r.headers()[hyper::header::CONNECTION], "close");
    }
}
