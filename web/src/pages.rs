//! The pages of the sign-in listener, rendered from the askama templates in `web/templates/`
//! (escaped by the engine, never by hand), and the one stylesheet they use, embedded in the binary.

use askama::Template;
use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use sallyport_workflow::signin::Page;

use crate::Body;

/// The stylesheet, served at `/static/sallyport.css`.
const STYLESHEET: &str = include_str!("../templates/sallyport.css");
/// The console's one script, served at `/static/console.js`.
const SCRIPT: &str = include_str!("../templates/console.js");
/// The icon, served at `/static/favicon.svg`.
const ICON: &str = include_str!("../templates/favicon.svg");

/// A page with a heading and a message: the outcome of a sign-in, or what this listener is.
#[derive(Template)]
#[template(path = "notice.html")]
pub(crate) struct Notice {
    pub(crate) ok: bool,
    pub(crate) title: String,
    pub(crate) text: String,
}

impl Notice {
    /// `GET /`.
    pub(crate) fn index() -> Self {
        Self {
            ok: true,
            title: "Sallyport sign-in".into(),
            text: "This is where people sign in at their identity provider. Start with `sallyport login --broker HOST:PORT --out DIR` (technicians and admins), add `--customer ID` for a customer's approvers and auditors; approvals of customers with their own identity provider open here too.".into(),
        }
    }
}

impl From<Page> for Notice {
    fn from(p: Page) -> Self {
        Self {
            ok: p.ok,
            title: p.title,
            text: if p.text.contains("close this tab") {
                p.text
            } else {
                format!("{} You can close this tab.", p.text)
            },
        }
    }
}

/// The page as an HTML answer (200 when it reports success, 403 otherwise).
pub(crate) fn render(n: &Notice) -> Response<Body> {
    let (status, html) = match n.render() {
        Ok(html) => (
            if n.ok {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            },
            html,
        ),
        Err(e) => {
            tracing::error!(error = %e, "page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "page could not be rendered".to_owned(),
            )
        }
    };
    let mut r = Response::new(crate::full(html));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// `GET /static/sallyport.css`.
pub(crate) fn stylesheet() -> Response<Body> {
    asset(STYLESHEET, "text/css; charset=utf-8")
}

/// `GET /static/favicon.svg`.
pub(crate) fn icon() -> Response<Body> {
    asset(ICON, "image/svg+xml")
}

/// `GET /static/console.js`.
pub(crate) fn script() -> Response<Body> {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(crate::full(Bytes::from_static(text.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        let html = Notice {
            ok: false,
            title: "<b>x</b>".into(),
            text: "\"<script>alert(1)</script>".into(),
        }
        .render()
        .unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&#60;script&#62;"), "{html}");
        assert!(html.contains("lang=\"en\""));
    }
}
