//! `sallyport connect --socks ADDR`: one local SOCKS5 port for every target the technician holds a
//! grant for. The protocol part (RFC 1928) is what a tunnel needs and no more: the "no
//! authentication" method, the CONNECT command, and a domain name address `<target>.<customer>`
//! with the target's port (`curl --socks5-hostname`, `ssh -o ProxyCommand='nc -X 5 -x ...'`).
//! Addresses by IP are refused (targets are named, never addressed), and so are other commands.
//!
//! Written here rather than taken from a crate: the subset is three small fixed-layout messages,
//! every length in it is one byte (so nothing read is ever larger than 262 bytes), and the server
//! crates bring authentication, UDP and BIND that a tunnel to a named target must not offer.
//!
//! A target's grant is fetched on its first use and kept until it ends; a refusal evicts it, so the
//! next connection fetches afresh. Refusals get SOCKS reply codes (0x02 "not allowed by ruleset" for
//! a grant or policy refusal) and are said in words on stderr. Bounded: the handshake has
//! [`HANDSHAKE_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections are served at once (more are
//! closed at once), and at most [`MAX_GRANTS`] grants are kept.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::forwarder::{self, Grant, in_words, when};
use crate::{BrokerClient, ClientError, Result, Usable};

/// How long a client has to say where it wants to go.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Grants kept at once (one per target).
pub const MAX_GRANTS: usize = 1024;

/// How long fetching a grant may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xFF;
const CONNECT: u8 = 1;

/// SOCKS5 reply codes (RFC 1928, section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Succeeded = 0,
    /// General SOCKS server failure.
    GeneralFailure = 1,
    /// Connection not allowed by ruleset.
    NotAllowed = 2,
    /// Host unreachable.
    HostUnreachable = 4,
    /// Connection refused.
    ConnectionRefused = 5,
    /// Command not supported.
    CommandNotSupported = 7,
    /// Address type not supported.
    AddressTypeNotSupported = 8,
}

impl Reply {
    /// The reply to a broker's refusal with `status`.
    pub fn for_refusal(status: StatusCode) -> Reply {
        match status {
            StatusCode::FORBIDDEN | StatusCode::PROXY_AUTHENTICATION_REQUIRED => Reply::NotAllowed,
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Reply::HostUnreachable,
            StatusCode::BAD_GATEWAY => Reply::ConnectionRefused,
            _ => Reply::GeneralFailure,
        }
    }
}

/// Where a SOCKS client asks to go: `<target>.<customer>:<port>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The customer.
    pub customer: String,
    /// The target.
    pub target: String,
    /// The port asked for.
    pub port: u16,
}

impl Destination {
    /// `customer/target`.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.customer, self.target)
    }
}

/// A handshake that went wrong: the reply to send (none when the client is owed no reply) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The reply, if one is due.
    pub reply: Option<Reply>,
    /// Why, in words.
    pub words: String,
}

fn failed(reply: Option<Reply>, words: impl Into<String>) -> Failed {
    Failed {
        reply,
        words: words.into(),
    }
}

/// Reads `<target>.<customer>` from a SOCKS domain name.
pub fn destination(name: &[u8], port: u16) -> Result<Destination, Failed> {
    let bad = |why: &str| {
        failed(
            Some(Reply::HostUnreachable),
            format!(
                "`{}` is not <target>.<customer>: {why}",
                String::from_utf8_lossy(name)
            ),
        )
    };
    let name = std::str::from_utf8(name).map_err(|_| bad("it is not text"))?;
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let Some((target, customer)) = name.split_once('.') else {
        return Err(bad("it names no customer"));
    };
    let fits = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !fits(target) || !fits(customer) {
        return Err(bad(
            "the target and the customer are names of letters, digits and dashes",
        ));
    }
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok(Destination {
        customer: customer.to_owned(),
        target: target.to_owned(),
        port,
    })
}

/// The server side of a SOCKS5 handshake up to the request: the method negotiation (only "no
/// authentication") and a CONNECT to a domain name. Sends the method reply and, on a bad request,
/// its error reply; the success reply is the caller's, once the tunnel is open.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<Destination, Failed> {
    let io = |e: std::io::Error| failed(None, format!("the SOCKS client went away: {e}"));
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.map_err(io)?;
    if head[0] != VERSION {
        return Err(failed(
            None,
            format!(
                "not a SOCKS5 client (version byte {}); use socks5h:// or curl --socks5-hostname",
                head[0]
            ),
        ));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut methods).await.map_err(io)?;
    if !methods.contains(&NO_AUTH) {
        let _ = s.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await;
        return Err(failed(
            None,
            "the SOCKS client offers no \"no authentication\" method (the grant and your certificate are the authentication)",
        ));
    }
    s.write_all(&[VERSION, NO_AUTH]).await.map_err(io)?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await.map_err(io)?;
    if req[0] != VERSION {
        return Err(failed(None, "not a SOCKS5 request"));
    }
    let name = match req[3] {
        // A domain name: one length byte, then the name.
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await.map_err(io)?;
            let mut name = vec![0u8; usize::from(len[0])];
            s.read_exact(&mut name).await.map_err(io)?;
            Ok(name)
        }
        // IPv4 or IPv6: read it, to answer properly, and refuse it.
        1 | 4 => {
            let mut addr = vec![0u8; if req[3] == 1 { 4 } else { 16 }];
            s.read_exact(&mut addr).await.map_err(io)?;
            Err(failed(
                Some(Reply::AddressTypeNotSupported),
                "targets are named, never addressed by IP: ask for <target>.<customer>:<port> (socks5h://, curl --socks5-hostname)",
            ))
        }
        other => Err(failed(
            Some(Reply::AddressTypeNotSupported),
            format!("unknown SOCKS address type {other}"),
        )),
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await.map_err(io)?;
    let port = u16::from_be_bytes(port);
    let outcome = match (req[1], name) {
        (CONNECT, Ok(name)) => destination(&name, port),
        (CONNECT, Err(f)) => Err(f),
        (other, _) => Err(failed(
            Some(Reply::CommandNotSupported),
            format!("SOCKS command {other} is not supported: only CONNECT"),
        )),
    };
    if let Err(f) = &outcome
        && let Some(code) = f.reply
    {
        let _ = reply(s, code).await;
    }
    outcome
}

/// Sends a reply with an empty IPv4 bound address.
pub async fn reply<S: AsyncWrite + Unpin>(s: &mut S, code: Reply) -> std::io::Result<()> {
    s.write_all(&[VERSION, code as u8, 0, 1, 0, 0, 0, 0, 0, 0])
        .await?;
    s.flush().await
}

/// The grants in use, one per target, each kept until it ends.
struct Grants {
    client: BrokerClient,
    kept: tokio::sync::Mutex<HashMap<String, Grant>>,
    warned: std::sync::Mutex<HashSet<String>>,
}

impl Grants {
    /// The grant for `spec`: kept, or fetched now; a refusal in words.
    async fn get(&self, spec: &str) -> Result<Grant, String> {
        let now = jiff::Timestamp::now().as_second();
        let mut kept = self.kept.lock().await;
        if let Some(g) = kept.get(spec).filter(|g| g.exp > now) {
            return Ok(g.clone());
        }
        kept.retain(|_, g| g.exp > now);
        let fetched =
            tokio::time::timeout(FETCH_TIMEOUT, crate::api::usable_grant(&self.client, spec))
                .await
                .map_err(|_| "the broker did not answer in time".to_owned())?
                .map_err(|e| e.to_string())?;
        let token = match fetched {
            Usable::Token(t) => t,
            Usable::Pending(id) => {
                return Err(format!(
                    "request {id} for {spec} is still pending: no grant yet"
                ));
            }
            Usable::None(why) => return Err(why),
        };
        let g = Grant::peek(&token, Some(spec)).map_err(|e| e.to_string())?;
        if kept.len() < MAX_GRANTS {
            kept.insert(spec.to_owned(), g.clone());
        }
        drop(kept);
        let first = self
            .warned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(g.gid.clone());
        if first {
            tokio::spawn(forwarder::warn_before_end(g.clone()));
        }
        Ok(g)
    }

    async fn forget(&self, spec: &str) {
        self.kept.lock().await.remove(spec);
    }
}

/// Serves SOCKS5 on `listener` until the process ends.
pub async fn serve(client: BrokerClient, listener: TcpListener) -> Result<()> {
    let grants = Arc::new(Grants {
        client,
        kept: tokio::sync::Mutex::new(HashMap::new()),
        warned: std::sync::Mutex::new(HashSet::new()),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut local, addr) = listener.accept().await.map_err(|error| ClientError::Io {
            what: "accepting a SOCKS connection".into(),
            error,
        })?;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::info!(client = %addr, "SOCKS connection refused: {MAX_CONNECTIONS} already open");
            drop(local);
            continue;
        };
        let _ = local.set_nodelay(true);
        let grants = grants.clone();
        tokio::spawn(async move {
            one(&grants, &mut local).await;
            drop(slot);
        });
    }
}

/// One SOCKS connection: handshake, grant, tunnel, relay.
async fn one<S: AsyncRead + AsyncWrite + Unpin>(grants: &Grants, local: &mut S) {
    let dest = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(local)).await {
        Ok(Ok(d)) => d,
        Ok(Err(f)) => {
            eprintln!("sallyport: SOCKS request refused: {}", f.words);
            return;
        }
        Err(_) => {
            tracing::debug!("SOCKS handshake timed out");
            return;
        }
    };
    let spec = dest.spec();
    let refuse = |code: Reply, words: &str| {
        eprintln!(
            "sallyport: refused {spec} (SOCKS reply {:#04x}): {words}",
            code as u8
        );
    };
    let grant = match grants.get(&spec).await {
        Ok(g) => g,
        Err(why) => {
            refuse(Reply::NotAllowed, &why);
            let _ = reply(local, Reply::NotAllowed).await;
            return;
        }
    };
    let now = jiff::Timestamp::now().as_second();
    if grant.nbf > now {
        refuse(
            Reply::NotAllowed,
            &format!(
                "the grant is not valid yet: it starts at {} ({})",
                when(grant.nbf),
                in_words(grant.nbf - now)
            ),
        );
        let _ = reply(local, Reply::NotAllowed).await;
        return;
    }
    // The port asked for goes to the broker as it is: the broker says when it is the wrong one.
    let asked = Grant {
        port: dest.port,
        ..grant.clone()
    };
    let opened = match forwarder::open(&grants.client, &asked).await {
        Ok(Ok(o)) => o,
        Ok(Err(refused)) => {
            let code = Reply::for_refusal(refused.status);
            refuse(code, &refused.explain(&grant));
            if matches!(
                refused.status,
                StatusCode::FORBIDDEN | StatusCode::PROXY_AUTHENTICATION_REQUIRED
            ) {
                grants.forget(&spec).await;
            }
            let _ = reply(local, code).await;
            return;
        }
        Err(e) => {
            refuse(Reply::GeneralFailure, &e.to_string());
            let _ = reply(local, Reply::GeneralFailure).await;
            return;
        }
    };
    if reply(local, Reply::Succeeded).await.is_err() {
        return;
    }
    let mut io = opened.io;
    if forwarder::relay(local, &mut io).await == forwarder::Ended::LocalFirst {
        return;
    }
    if let Some(why) = forwarder::ask_why(&grants.client, &grant, opened.session.as_deref()).await {
        eprintln!("sallyport: tunnel to {spec} ended: {why}");
        grants.forget(&spec).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a handshake over `input`; returns its outcome and what the server wrote.
    async fn run(input: &[u8]) -> (Result<Destination, Failed>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(input).await.unwrap();
        let got = handshake(&mut server).await;
        drop(server);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        (got, out)
    }

    fn connect_to(name: &str, port: u16) -> Vec<u8> {
        let mut v = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&port.to_be_bytes());
        v
    }

    #[tokio::test]
    async fn a_connect_to_a_named_target_is_read() {
        let (got, out) = run(&connect_to("Web.acme", 7070)).await;
        assert_eq!(
            got.unwrap(),
            Destination {
                customer: "acme".into(),
                target: "web".into(),
                port: 7070
            }
        );
        assert_eq!(
            out,
            [5, 0],
            "only the method reply: success is sent once the tunnel is open"
        );
    }

    #[tokio::test]
    async fn what_a_tunnel_cannot_do_is_refused_with_its_reply_code() {
        // No "no authentication" method offered.
        let (got, out) = run(&[5, 1, 2]).await;
        assert!(got.unwrap_err().words.contains("no authentication"));
        assert_eq!(out, [5, 0xFF]);
        // BIND.
        let mut bind = connect_to("web.acme", 80);
        bind[4] = 2;
        let (got, out) = run(&bind).await;
        assert_eq!(got.unwrap_err().reply, Some(Reply::CommandNotSupported));
        assert_eq!(out[2..4], [5, 7]);
        // An IPv4 address.
        let (got, out) = run(&[5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80]).await;
        let f = got.unwrap_err();
        assert_eq!(f.reply, Some(Reply::AddressTypeNotSupported));
        assert!(f.words.contains("never addressed by IP"), "{}", f.words);
        assert_eq!(out[2..4], [5, 8]);
        // A name that is not <target>.<customer>.
        let (got, out) = run(&connect_to("localhost", 80)).await;
        assert!(got.unwrap_err().words.contains("names no customer"));
        assert_eq!(out[2..4], [5, 4]);
        // SOCKS4.
        let (got, out) = run(&[4, 1, 0, 80, 127, 0, 0, 1, 0]).await;
        assert!(got.unwrap_err().words.contains("not a SOCKS5 client"));
        assert!(out.is_empty());
    }

    #[test]
    fn names_are_checked() {
        assert!(destination(b"web.acme.", 1).is_ok());
        for bad in [
            &b"web"[..],
            b".acme",
            b"we b.acme",
            b"web.ac_me",
            b"\xff.acme",
        ] {
            assert!(destination(bad, 80).is_err(), "{bad:?}");
        }
        assert!(destination(b"web.acme", 0).is_err());
        assert_eq!(Reply::for_refusal(StatusCode::FORBIDDEN), Reply::NotAllowed);
        assert_eq!(
            Reply::for_refusal(StatusCode::BAD_GATEWAY),
            Reply::ConnectionRefused
        );
    }
}
