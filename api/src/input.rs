//! Reading what a caller sent: a bounded JSON body (a JSON object only, unknown fields refused, an
//! empty body read as `{}`), read by the request's deadline (the listener's [`RequestDeadline`]:
//! past it the answer is 408 and the connection closes, so a client sending a byte now and then
//! cannot hold a connection), and a query string (unknown parameters refused).

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::StatusCode;
use hyper::body::Incoming;
use sallyport_gateway::RequestDeadline;
use serde::Deserialize;

use crate::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads and parses a bounded JSON body, by the request's deadline.
pub async fn body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ApiError> {
    let deadline = req.extensions().get::<RequestDeadline>().map(|d| d.0);
    let reading = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let read = match deadline {
        Some(at) => match tokio::time::timeout_at(at, reading).await {
            Ok(read) => read,
            Err(_) => {
                tracing::info!("request body not complete by its deadline; closing the connection");
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request did not arrive in time (`limits.request_timeout_seconds`)",
                ));
            }
        },
        None => reading.await,
    };
    let bytes: Bytes = match read {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
            ));
        }
        Err(_) => return Err(ApiError::bad("bad_body", "unreadable request body")),
    };
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    object(bytes)
}

/// Parses a JSON object into `T`: an array, string, number or `null` is refused even where `T` could
/// be read from it (serde reads a struct from an array of its fields, in order).
fn object<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad(
            "bad_json",
            "the request body must be a JSON object `{...}`",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad("bad_json", format!("invalid JSON body: {e}")))
}

/// Parses a query string.
pub fn query<T: for<'de> Deserialize<'de>>(q: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(q.unwrap_or(""))
        .map_err(|e| ApiError::bad("bad_query", format!("invalid query: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Two {
        #[expect(dead_code, reason = "only parsed")]
        a: String,
        #[expect(dead_code, reason = "only parsed")]
        b: u32,
    }

    #[test]
    fn only_json_objects_are_bodies() {
        assert!(object::<Two>(br#" {"a":"x","b":1}"#).is_ok());
        for text in [
            r#"["x",1]"#,
            r#""x""#,
            "1",
            "null",
            "true",
            r#"[{"a":"x","b":1}]"#,
        ] {
            let err = object::<Two>(text.as_bytes()).unwrap_err();
            assert_eq!(
                (err.status, err.code.as_str()),
                (StatusCode::BAD_REQUEST, "bad_json"),
                "{text}"
            );
            assert!(err.message.contains("JSON object"), "{text}: {err}");
        }
        let dup = object::<Two>(br#"{"a":"x","b":1,"a":"y"}"#).unwrap_err();
        assert!(dup.message.contains("duplicate"), "{dup}");
    }
}
