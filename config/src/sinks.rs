//! Where a customer's notifications and trail go, as configured: its webhook ([`WebhookTarget`], with
//! the rules a webhook URL must meet) and its SIEM sinks ([`SinkKind`]). The notify crate delivers to
//! them; these are only the validated settings.
//!
//! Secrets never reach a log line or a `Debug` output; neither does a URL's path or query (some
//! receivers, e.g. chat incoming webhooks, put a token there): only scheme, host and port are shown
//! ([`Origin`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

/// The longest wait between two webhook attempts; a configured first backoff is capped by it.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One customer's webhook: where to deliver, how to sign, how hard to try.
#[derive(Clone)]
pub struct WebhookTarget {
    /// Where deliveries are POSTed: `https://`, or `http://` to a loopback host only
    /// (see [`WebhookTarget::url_problem`]).
    pub url: Uri,
    /// The HMAC-SHA256 key shared with the receiver. Never logged; `Debug` prints `<redacted>`.
    pub secret: Vec<u8>,
    /// Attempts per notification, the first one included (`0` counts as `1`).
    pub max_attempts: u32,
    /// The wait after the first failed attempt; it doubles after each further failure, capped at
    /// [`MAX_BACKOFF`].
    pub first_backoff: Duration,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &Origin::of(&self.url))
            .field("secret", &"<redacted>")
            .field("max_attempts", &self.max_attempts)
            .field("first_backoff", &self.first_backoff)
            .finish()
    }
}

impl WebhookTarget {
    /// What keeps `url` from receiving deliveries, if anything: it must be an absolute `https://` URL
    /// with a host, or an `http://` URL whose host is loopback (`127.0.0.0/8`, `::1` or
    /// `localhost`), without a `user:password@` part. The problem names the fix.
    pub fn url_problem(url: &Uri) -> Option<String> {
        let Some(authority) = url.authority() else {
            return Some(format!(
                "webhook URL `{}` has no host: write an absolute URL such as \
                 https://hooks.example.com/sallyport",
                Origin::of(url)
            ));
        };
        if authority.as_str().contains('@') {
            return Some(
                "webhook URL contains a `user:password@` part: remove it; receivers authenticate \
                 deliveries by their X-Sallyport-Signature header"
                    .to_owned(),
            );
        }
        let host = bare_host(url).unwrap_or_default();
        if host.is_empty() {
            return Some(format!(
                "webhook URL `{}` has an empty host: write an absolute URL such as \
                 https://hooks.example.com/sallyport",
                Origin::of(url)
            ));
        }
        match url.scheme_str() {
            Some("https") => None,
            Some("http") if is_loopback(host) => None,
            Some("http") => Some(format!(
                "webhook URL `{}` uses plain http:// to a host that is not loopback: use https:// \
                 (plain http is allowed only for 127.0.0.0/8, ::1 and localhost)",
                Origin::of(url)
            )),
            Some(other) => Some(format!(
                "webhook URL scheme `{other}:` is not supported: use an https:// URL"
            )),
            None => Some("webhook URL has no scheme: use an https:// URL".to_owned()),
        }
    }
}

/// Where a customer's records go.
#[derive(Clone)]
pub enum SinkKind {
    /// RFC 5424 over TCP.
    Syslog {
        /// `host:port`.
        address: String,
    },
    /// RFC 5424 over TLS (RFC 5425).
    SyslogTls {
        /// `host:port`.
        address: String,
        /// Trust anchors for the receiver's certificate.
        tls: Arc<rustls::ClientConfig>,
    },
    /// JSON lines over HTTPS.
    Https {
        /// The endpoint.
        url: Uri,
        /// Bearer token, if the receiver wants one.
        token: Option<String>,
        /// Trust anchors for the receiver's certificate.
        tls: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkKind::Syslog { address } => write!(f, "syslog://{address}"),
            SinkKind::SyslogTls { address, .. } => write!(f, "syslog-tls://{address}"),
            SinkKind::Https { url, .. } => write!(
                f,
                "https://{}",
                url.authority().map(|a| a.as_str()).unwrap_or("")
            ),
        }
    }
}

/// The URL's host without IPv6 brackets.
pub fn bare_host(url: &Uri) -> Option<&str> {
    url.host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
}

/// Whether `host` is `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port]` of a URL: what may be logged of it (the path and query may hold a token).
pub struct Origin<'a>(&'a Uri);

impl<'a> Origin<'a> {
    /// The origin of `url`.
    pub fn of(url: &'a Uri) -> Self {
        Self(url)
    }
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.0.scheme_str().unwrap_or("?");
        let host = self.0.host().unwrap_or("");
        match self.0.port_u16() {
            Some(port) => write!(f, "{scheme}://{host}:{port}"),
            None => write!(f, "{scheme}://{host}"),
        }
    }
}

impl std::fmt::Debug for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}/…\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> WebhookTarget {
        WebhookTarget {
            url: url.parse().unwrap(),
            secret: b"0123456789abcdef".to_vec(),
            max_attempts: 3,
            first_backoff: Duration::from_millis(10),
        }
    }

    #[test]
    fn check_url_rules() {
        let problem = |u: &str| WebhookTarget::url_problem(&u.parse().unwrap());
        assert_eq!(problem("https://hooks.example.com/sallyport"), None);
        assert_eq!(problem("https://hooks.example.com:8443/x?y=z"), None);
        assert_eq!(problem("http://127.0.0.1/hook"), None);
        assert_eq!(problem("http://127.1.2.3:8080/hook"), None);
        assert_eq!(problem("http://localhost:9000/"), None);
        assert_eq!(problem("http://[::1]:9000/"), None);

        let err = problem("http://example.com/hook").unwrap();
        assert!(err.contains("https://"), "{err}");
        assert!(err.contains("loopback"), "{err}");
        assert!(problem("http://10.0.0.1/hook").is_some());
        assert!(problem("http://localhost.example.com/hook").is_some());
        let err = problem("ftp://example.com/hook").unwrap();
        assert!(err.contains("ftp"), "{err}");
        assert!(err.contains("https://"), "{err}");
        assert!(problem("/relative/path").is_some());
        let err = problem("https://user:pw@hooks.example.com/").unwrap();
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn debug_redacts_the_secret_and_the_path() {
        let mut t = target("https://hooks.example.com/services/T0/B0/tok3n");
        t.secret = b"super-secret-key".to_vec();
        let debug = format!("{t:?}");
        assert!(!debug.contains("super-secret-key"), "{debug}");
        assert!(!debug.contains(&format!("{:?}", t.secret)), "{debug}");
        assert!(!debug.contains("tok3n"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(debug.contains("https://hooks.example.com"), "{debug}");
    }
}
