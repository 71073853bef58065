//! The console's HTTP plumbing: one request as the console reads it ([`Req`]: path, query,
//! cookies, origin, a bounded form body), and the answers it gives (pages, redirects, downloads,
//! event streams), each with the console's Content-Security-Policy. The checks that guard every
//! state-changing request are pure and unit-tested ([`same_origin`], [`csrf_matches`],
//! [`safe_next`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::Body;

/// The largest form body taken.
pub const MAX_FORM: usize = 16 * 1024;
/// A form body must arrive within this.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(10);

/// One request, as the console reads it.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: HashMap<String, String>,
    pub(crate) cookies: String,
    pub(crate) origin: Option<String>,
    pub(crate) ip: IpAddr,
    body: Option<Incoming>,
}

impl Req {
    /// Reads the head of `req` from `ip`.
    pub(crate) fn new(req: Request<Incoming>, ip: IpAddr) -> Self {
        let (parts, body) = req.into_parts();
        let text = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: form(parts.uri.query().unwrap_or("")),
            cookies: cookies_of(&parts.headers),
            origin: text(header::ORIGIN),
            ip,
            body: Some(body),
        }
    }

    /// A query parameter, when given and not empty.
    pub(crate) fn q(&self, name: &str) -> Option<String> {
        self.query.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// The form body (`application/x-www-form-urlencoded`), at most [`MAX_FORM`] within
    /// [`FORM_TIMEOUT`].
    pub(crate) async fn form(&mut self) -> Result<HashMap<String, String>, Response<Body>> {
        let Some(body) = self.body.take() else {
            return Ok(HashMap::new());
        };
        let read = Limited::new(body, MAX_FORM).collect();
        match tokio::time::timeout(FORM_TIMEOUT, read).await {
            Ok(Ok(b)) => Ok(form(&String::from_utf8_lossy(&b.to_bytes()))),
            _ => Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form is over 16 KiB, or did not arrive in time.",
            )),
        }
    }
}

/// Every `Cookie` field as one list: over HTTP/2 browsers send each cookie in its own field.
pub(crate) fn cookies_of(headers: &hyper::HeaderMap) -> String {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The pairs of a query string or form body (later ones win; values over 4 KiB are dropped).
pub(crate) fn form(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes())
        .filter(|(_, v)| v.len() <= 4096)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Whether a state-changing request comes from the console's own pages: browsers send `Origin`
/// on every POST, and it must be the console's (`base`, e.g. `https://host:8444`). A request
/// without one is refused: the console serves browsers only.
pub fn same_origin(origin: Option<&str>, base: &str) -> bool {
    origin.is_some_and(|o| o.trim_end_matches('/') == base.trim_end_matches('/'))
}

/// Whether the form's CSRF token is the session's (constant time).
pub fn csrf_matches(given: Option<&str>, expected: &str) -> bool {
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}

/// `next` if it is a console path (no other host, no scheme, no backslash tricks), else
/// `/console`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/console")
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.len() <= 512
                && n.chars().all(|c| c.is_ascii_graphic()) =>
        {
            n.to_owned()
        }
        _ => "/console".to_owned(),
    }
}

/// The console's Content-Security-Policy: only its own scripts, styles and connections, forms to
/// itself (and to `idp`, the origin a decision's sign-in goes to), never framed.
pub(crate) fn csp(idp: Option<&str>) -> String {
    let form = match idp {
        Some(o) => format!("'self' {o}"),
        None => "'self'".into(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action {form}; frame-ancestors 'none'"
    )
}

/// The origin (`scheme://host[:port]`) of a URL.
pub(crate) fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// An HTML page.
pub(crate) fn html(status: StatusCode, page: String, idp: Option<&str>) -> Response<Body> {
    let mut r = with_body(status, "text/html; charset=utf-8", Bytes::from(page));
    if let Ok(v) = HeaderValue::from_str(&csp(idp)) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    // Same-origin only: console URLs hold no secret, and a form post then carries the Origin
    // the CSRF check reads (under `no-referrer` browsers send `Origin: null`).
    r.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// Plain text (errors before any page can be drawn).
pub(crate) fn text(status: StatusCode, t: &str) -> Response<Body> {
    with_body(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(t.to_owned()),
    )
}

/// A file to download as `filename`.
pub(crate) fn download(
    content_type: &'static str,
    filename: &str,
    body: Vec<u8>,
) -> Response<Body> {
    let mut r = with_body(StatusCode::OK, content_type, Bytes::from(body));
    let safe: String = filename
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// A 303 to `location` (a console path or an IdP's URL), setting `cookies`.
pub(crate) fn see_other(location: &str, cookies: &[String]) -> Response<Body> {
    let mut r = with_body(
        StatusCode::SEE_OTHER,
        "text/plain; charset=utf-8",
        Bytes::new(),
    );
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// The body of a server-sent event stream: what `rx` gets, until its sender goes.
pub(crate) struct Events(pub(crate) tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A `text/event-stream` answer fed by `rx`.
pub(crate) fn event_stream(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(Events(rx).boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_console_origin_may_post() {
        let base = "https://broker.example:8444";
        assert!(same_origin(Some("https://broker.example:8444"), base));
        assert!(!same_origin(Some("https://evil.example"), base));
        assert!(!same_origin(Some("null"), base));
        assert!(!same_origin(Some("https://broker.example:8444.evil"), base));
        assert!(!same_origin(None, base), "no Origin, no change");
    }

    #[test]
    fn cookies_sent_in_several_fields_are_all_read() {
        let mut h = hyper::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-sallyport=s"),
        );
        let all = cookies_of(&h);
        assert_eq!(crate::session::cookie(&all, "__Host-sallyport"), Some("s"));
        assert_eq!(crate::session::cookie(&all, "a"), Some("1"));
    }

    #[test]
    fn csrf_tokens_compare_whole() {
        assert!(csrf_matches(Some("abc"), "abc"));
        assert!(!csrf_matches(Some("ab"), "abc"));
        assert!(!csrf_matches(Some(""), "abc"));
        assert!(!csrf_matches(None, "abc"));
    }

    #[test]
    fn next_stays_in_the_console() {
        assert_eq!(safe_next(Some("/console/queue")), "/console/queue");
        for bad in [
            "https://evil.example/console",
            "//evil.example/console",
            "/console\\@evil",
            "/elsewhere",
            "/console/\u{1}",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console", "{bad}");
        }
        assert_eq!(safe_next(None), "/console");
    }

    #[test]
    fn the_policy_allows_no_inline_script_and_names_the_idp_for_forms() {
        let p = csp(Some("https://idp.acme.example"));
        assert!(p.contains("script-src 'self';"));
        assert!(!p.contains("unsafe-inline"));
        assert!(p.contains("form-action 'self' https://idp.acme.example;"));
        assert!(p.contains("frame-ancestors 'none'"));
        assert_eq!(
            origin_of("https://idp.acme.example:8443/oauth2/v1?x=1").as_deref(),
            Some("https://idp.acme.example:8443")
        );
        assert_eq!(origin_of("nonsense"), None);
    }
}
