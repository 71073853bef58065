//! The technician's end of a tunnel: a grant read from its token, one CONNECT through the broker
//! (its refusal put in words, never a raw status), the relay, and once a tunnel ends for a reason
//! other than a peer closing, why (asked of the API: the session's close reason, the grant's
//! revocation). `sallyport connect --listen` serves a local port with it, one tunnel per accepted
//! connection, so ssh, psql or an RDP client work unmodified against `127.0.0.1:PORT`; `--stdio`
//! carries one tunnel over stdin and stdout; `--socks` ([`crate::socks`]) picks the grant per
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::{BrokerClient, ClientError, Result};

/// How long before a grant ends [`warn_before_end`] warns.
pub const WARN_BEFORE_END: i64 = 5 * 60;

/// Longest refusal body read from the broker.
const MAX_REFUSAL: usize = 2048;

/// A grant as its own token says (read, not verified: the broker verifies it).
#[derive(Clone)]
pub struct Grant {
    /// The token.
    pub token: Arc<str>,
    /// Its customer.
    pub customer: String,
    /// Its target.
    pub target: String,
    /// The target's port.
    pub port: u16,
    /// Its id.
    pub gid: String,
    /// Start of its window (Unix seconds).
    pub nbf: i64,
    /// End of its window (Unix seconds).
    pub exp: i64,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("customer", &self.customer)
            .field("target", &self.target)
            .field("gid", &self.gid)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct Peek {
    customer: String,
    target: String,
    port: u16,
    gid: String,
    nbf: i64,
    exp: i64,
}

/// A Unix time for people: RFC 3339, UTC.
pub fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// "in 4 min", "in 2 h 5 min", for a number of seconds ahead.
pub fn in_words(secs: i64) -> String {
    let mins = (secs.max(0) + 59) / 60;
    if mins < 60 {
        format!("in {mins} min")
    } else {
        format!("in {} h {} min", mins / 60, mins % 60)
    }
}

impl Grant {
    /// Reads the claims of `token`, checking that it is for `spec` (`customer/target`) when given.
    pub fn peek(token: &str, spec: Option<&str>) -> Result<Self> {
        let not_jwt = || ClientError::Input("the grant is not a JWT".into());
        let payload = token.split('.').nth(1).ok_or_else(not_jwt)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| not_jwt())?;
        let p: Peek = serde_json::from_slice(&json).map_err(|e| {
            ClientError::Input(format!(
                "the grant has no customer, target, port, id or window: {e}"
            ))
        })?;
        if let Some(spec) = spec {
            let (customer, target) = crate::api::split(spec)?;
            if p.customer != customer || p.target != target {
                return Err(ClientError::Input(format!(
                    "the grant is for {}/{}, not {spec}",
                    p.customer, p.target
                )));
            }
        }
        Ok(Self {
            token: token.into(),
            customer: p.customer,
            target: p.target,
            port: p.port,
            gid: p.gid,
            nbf: p.nbf,
            exp: p.exp,
        })
    }

    /// `customer/target`.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.customer, self.target)
    }

    /// The CONNECT authority, `<target>.<customer>:<port>`.
    pub fn authority(&self) -> String {
        format!("{}.{}:{}", self.target, self.customer, self.port)
    }
}

/// Why the broker would not open a tunnel.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The answer's status (for SOCKS reply codes; never shown).
    pub status: StatusCode,
    /// The broker's reason, in words.
    pub words: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.words)
    }
}

impl Refused {
    /// The refusal of a tunnel under `grant`, in words that say what to do: an expired or early
    /// grant with its time, a policy's decision as the customer's.
    pub fn explain(&self, grant: &Grant) -> String {
        let w = self.words.as_str();
        if w == "grant has expired" {
            return format!(
                "the grant expired at {}: file a new request with `sallyport request {} --minutes M --reason TEXT`",
                when(grant.exp),
                grant.spec()
            );
        }
        if w == "grant is not yet valid" {
            return format!("the grant is not valid until {}", when(grant.nbf));
        }
        if [
            "forbidden by",
            "no policy permits",
            "denied: evaluation failed",
        ]
        .iter()
        .any(|p| w.starts_with(p))
        {
            return format!("denied by {}'s policy: {w}", grant.customer);
        }
        w.to_owned()
    }
}

/// The broker's reason in a refusal body (`403 Forbidden: why`), without its status line; a body
/// with nothing in it is described from the status alone.
pub fn refusal_words(status: StatusCode, body: &str) -> String {
    let body = body.trim();
    let reason = status.canonical_reason().unwrap_or("");
    let prefix = format!("{} {reason}:", status.as_u16());
    let words = body.strip_prefix(&prefix).unwrap_or(body).trim();
    if !words.is_empty() {
        return words.to_owned();
    }
    match status {
        StatusCode::PROXY_AUTHENTICATION_REQUIRED => "the grant was not accepted".into(),
        StatusCode::FORBIDDEN => "not allowed".into(),
        StatusCode::NOT_FOUND => "no such target".into(),
        StatusCode::BAD_GATEWAY => "the target is unreachable".into(),
        StatusCode::TOO_MANY_REQUESTS => "too many refused attempts; try again later".into(),
        StatusCode::SERVICE_UNAVAILABLE => "the broker cannot open tunnels right now".into(),
        _ => "the broker would not open the tunnel".into(),
    }
}

/// What an open tunnel gives: the stream and its session id.
pub struct Opened {
    /// The tunnel.
    pub io: TokioIo<Upgraded>,
    /// `Sallyport-Session`.
    pub session: Option<String>,
}

/// One CONNECT under `grant` through `client`: the tunnel, or the broker's refusal in words.
pub async fn open(
    client: &BrokerClient,
    grant: &Grant,
) -> Result<std::result::Result<Opened, Refused>> {
    let authority = grant.authority();
    let mut sender = client.open().await?;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(&authority)
        .header(hyper::header::HOST, &authority)
        .header(
            hyper::header::PROXY_AUTHORIZATION,
            format!("Bearer {}", grant.token),
        )
        .body(Full::new(Bytes::new()))
        .map_err(ClientError::request)?;
    let resp = sender.send_request(req).await.map_err(ClientError::http(
        "the broker closed the connection (is the client certificate valid?)",
    ))?;
    let status = resp.status();
    if status != StatusCode::OK {
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body[..body.len().min(MAX_REFUSAL)]).into_owned();
        return Ok(Err(Refused {
            status,
            words: refusal_words(status, &body),
        }));
    }
    let session = resp
        .headers()
        .get("sallyport-session")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(ClientError::http("opening the tunnel"))?;
    Ok(Ok(Opened {
        io: TokioIo::new(upgraded),
        session,
    }))
}

/// Why a tunnel of `grant` ended, in words, or `None` when a peer simply closed it. Asks the API:
/// the session's close reason (waiting up to about 3 s for it to be stored), and for a revocation
/// the grant's (by whom, why).
pub async fn why_ended(
    client: &BrokerClient,
    grant: &Grant,
    session: Option<&str>,
) -> Option<String> {
    let now = jiff::Timestamp::now().as_second();
    let mut reason = None;
    if let Some(id) = session {
        for _ in 0..30 {
            if let Ok((status, v)) = client.call(Method::GET, "/v1/sessions", None).await
                && status.is_success()
                && let Some(s) = v["sessions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["id"] == id)
                && s["live"] == false
            {
                reason = s["close_reason"].as_str().map(str::to_owned);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let revoked = || async {
        let (status, v) = client.call(Method::GET, "/v1/grants", None).await.ok()?;
        if !status.is_success() {
            return None;
        }
        let g = v["grants"]
            .as_array()?
            .iter()
            .find(|g| g["id"] == grant.gid.as_str())?
            .clone();
        let r = g["revoked"].as_object()?;
        Some(format!(
            "grant revoked by {}: {}",
            sallyport_ids::short(r.get("by")?.as_str()?),
            r.get("reason").and_then(|v| v.as_str()).unwrap_or("")
        ))
    };
    match reason.as_deref() {
        Some("closed by peer") => None,
        Some("grant revoked") => Some(
            revoked()
                .await
                .unwrap_or_else(|| "grant revoked".to_owned()),
        ),
        Some("grant expired") => Some(format!("grant expired at {}", when(grant.exp))),
        Some(other) => Some(match other.strip_prefix("ended by ") {
            Some(who) => format!("session ended by {}", sallyport_ids::short(who)),
            None => other.to_owned(),
        }),
        // The session is not known (or not stored yet): the grant may still say.
        None if grant.exp <= now => Some(format!("grant expired at {}", when(grant.exp))),
        None => revoked().await,
    }
}

/// Relays `local` through a new tunnel of `grant`; returns why it ended when that was not a peer
/// closing, or the refusal.
pub async fn tunnel<L: AsyncRead + AsyncWrite + Unpin>(
    client: &BrokerClient,
    grant: &Grant,
    local: &mut L,
) -> Result<std::result::Result<Option<String>, Refused>> {
    let mut opened = match open(client, grant).await? {
        Ok(o) => o,
        Err(refused) => return Ok(Err(refused)),
    };
    Ok(Ok(match relay(local, &mut opened.io).await {
        // The local client finished first: an ordinary end, nothing to explain.
        Ended::LocalFirst => None,
        Ended::RemoteFirst => ask_why(client, grant, opened.session.as_deref()).await,
    }))
}

/// Lookups of why a tunnel ended that may run at once; when all are busy, a tunnel's end goes
/// unexplained rather than adding to the caller's API rate (a SOCKS client may end many at once).
static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// [`why_ended`], within the [`LOOKUPS`] bound.
pub async fn ask_why(
    client: &BrokerClient,
    grant: &Grant,
    session: Option<&str>,
) -> Option<String> {
    let Ok(_slot) = LOOKUPS.try_acquire() else {
        tracing::debug!("not asking why a tunnel ended: enough lookups running");
        return None;
    };
    why_ended(client, grant, session).await
}

/// Which end of a relay finished first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The local client sent its end of file before the tunnel's far end closed.
    LocalFirst,
    /// The broker ended the tunnel (the target closed, or the broker cut it) first.
    RemoteFirst,
}

/// Copies both ways until the tunnel's far end is done: a local end-of-file is passed on (and the
/// answer still read to its end), while the broker closing the tunnel ends it here too, so a client
/// that would keep its side open learns at once.
pub async fn relay<L, R>(local: &mut L, remote: &mut R) -> Ended
where
    L: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    let local_done = std::sync::atomic::AtomicBool::new(false);
    let (mut lr, mut lw) = tokio::io::split(local);
    let (mut rr, mut rw) = tokio::io::split(remote);
    let up = async {
        let n = tokio::io::copy(&mut lr, &mut rw).await;
        local_done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = rw.shutdown().await;
        tracing::debug!(bytes_up = ?n.ok(), "local side done");
        std::future::pending::<()>().await
    };
    let down = async {
        let n = tokio::io::copy(&mut rr, &mut lw).await;
        let _ = lw.shutdown().await;
        tracing::debug!(bytes_down = ?n.ok(), "tunnel closed");
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
    if local_done.load(std::sync::atomic::Ordering::Relaxed) {
        Ended::LocalFirst
    } else {
        Ended::RemoteFirst
    }
}

/// Serves `listener`: one tunnel per accepted connection, until the process ends. Refusals and
/// tunnels ended from outside are said on stderr.
pub async fn serve(client: BrokerClient, grant: Grant, listener: TcpListener) -> Result<()> {
    let spec = grant.spec();
    loop {
        let (mut local, addr) = listener.accept().await.map_err(|error| ClientError::Io {
            what: "accepting a local connection".into(),
            error,
        })?;
        let _ = local.set_nodelay(true);
        let (client, grant, spec) = (client.clone(), grant.clone(), spec.clone());
        tokio::spawn(async move {
            match tunnel(&client, &grant, &mut local).await {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(why))) => eprintln!("sallyport: tunnel to {spec} ended: {why}"),
                Ok(Err(refused)) => eprintln!(
                    "sallyport: the broker refused the tunnel to {spec}: {}",
                    refused.explain(&grant)
                ),
                Err(e) => {
                    tracing::debug!(client = %addr, error = %e, "tunnel failed");
                    eprintln!("sallyport: tunnel to {spec} failed: {e}");
                }
            }
        });
    }
}

/// Binds a local listener for `flag` (`--listen` or `--socks`).
pub async fn bind(addr: SocketAddr, flag: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ClientError::Io {
            what: format!("cannot listen on {addr}; pick another {flag} address"),
            error,
        })
}

/// Says on stderr, once, when `grant` is [`WARN_BEFORE_END`] from its end (at once when it is
/// closer).
pub async fn warn_before_end(grant: Grant) {
    let now = jiff::Timestamp::now().as_second();
    if grant.exp <= now {
        return;
    }
    let at = grant.exp - WARN_BEFORE_END;
    if at > now {
        tokio::time::sleep(Duration::from_secs(u64::try_from(at - now).unwrap_or(0))).await;
    }
    let left = grant.exp - jiff::Timestamp::now().as_second();
    let spec = grant.spec();
    eprintln!(
        "sallyport: warning: the grant for {spec} ends at {} ({}); its tunnels close then. For more time: sallyport request {spec} --minutes M --reason TEXT",
        when(grant.exp),
        in_words(left)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_words_without_their_status_line() {
        assert_eq!(
            refusal_words(
                StatusCode::FORBIDDEN,
                "403 Forbidden: grant `g-1` was revoked by acme/bob: done\n"
            ),
            "grant `g-1` was revoked by acme/bob: done"
        );
        assert_eq!(
            refusal_words(
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: target unreachable"
            ),
            "target unreachable"
        );
        assert_eq!(refusal_words(StatusCode::NOT_FOUND, ""), "no such target");
        assert_eq!(refusal_words(StatusCode::FORBIDDEN, "odd"), "odd");
    }

    #[test]
    fn refusals_say_what_to_do() {
        let grant = Grant {
            token: "t".into(),
            customer: "acme".into(),
            target: "db01".into(),
            port: 5432,
            gid: "g-1".into(),
            nbf: 0,
            exp: 60,
        };
        let said = |words: &str| {
            Refused {
                status: StatusCode::FORBIDDEN,
                words: words.into(),
            }
            .explain(&grant)
        };
        assert!(said("grant has expired").starts_with("the grant expired at 1970-01-01T00:01:00Z"));
        assert_eq!(
            said("forbidden by policy `no-weekend-prod`"),
            "denied by acme's policy: forbidden by policy `no-weekend-prod`"
        );
        assert_eq!(said("target unreachable"), "target unreachable");
    }

    #[test]
    fn times_ahead_read_as_words() {
        assert_eq!(in_words(30), "in 1 min");
        assert_eq!(in_words(300), "in 5 min");
        assert_eq!(in_words(3_900), "in 1 h 5 min");
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
    }
}
