//! Reading what a caller sent: a bounded JSON body (unknown fields refused, an empty body read as
//! `{}`) and a query string (unknown parameters refused).

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::Request;
use hyper::StatusCode;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::ApiError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads and parses a bounded JSON body.
pub async fn body<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ApiError> {
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
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
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad("bad_json", format!("invalid JSON body: {e}")))
}

/// Parses a query string.
pub fn query<T: for<'de> Deserialize<'de>>(q: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(q.unwrap_or(""))
        .map_err(|e| ApiError::bad("bad_query", format!("invalid query: {e}")))
}
