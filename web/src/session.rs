//! The console's cookie sessions: who a browser is signed in as, since when, and its CSRF token.
//! Sessions live in memory (a restart signs everyone out), are named by the SHA-256 of their
//! cookie's random secret (the secret itself is kept nowhere), end after [`IDLE_TIMEOUT`] without a
//! request or at the sign-in's absolute end (`peer.not_after`, at most 8 hours), and are bounded
//! ([`MAX_SESSIONS`], [`MAX_SESSIONS_PER_PERSON`]: the oldest goes first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sallyport_certs::identity::PeerIdentity;
use sallyport_workflow::signin::{ConsoleSignIn, console_thumbprint};

/// A session ends after this long without a request (PCI DSS 8.2.8 asks for 15 minutes at most).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Sessions at once.
pub const MAX_SESSIONS: usize = 4096;
/// Sessions of one person at once.
pub const MAX_SESSIONS_PER_PERSON: usize = 8;
/// The session cookie (`__Host-`: Secure, no Domain, Path=/, so no other host can set it).
pub const COOKIE: &str = "__Host-sallyport";
/// The cookie binding a sign-in in progress to the browser that started it.
pub const FLOW_COOKIE: &str = "__Host-sallyport-signin";

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who, as the workflow sees a caller.
    pub peer: PeerIdentity,
    /// The token every form of this session carries.
    pub csrf: String,
    last: Instant,
    opened: Instant,
}

/// The console's sessions. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<[u8; 32], Session>>>);

impl Sessions {
    /// Opens a session for a verified console sign-in; returns the cookie's value.
    pub fn open(&self, signin: &ConsoleSignIn) -> String {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sweep(&mut all);
        let mine: Vec<([u8; 32], Instant)> = all
            .iter()
            .filter(|(_, s)| s.peer.id == signin.peer.id)
            .map(|(k, s)| (*k, s.opened))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_PERSON
            && let Some((k, _)) = mine.iter().min_by_key(|(_, t)| *t)
        {
            all.remove(k);
        }
        if all.len() >= MAX_SESSIONS
            && let Some(k) = all.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k)
        {
            all.remove(&k);
        }
        let now = Instant::now();
        all.insert(
            signin.peer.thumbprint,
            Session {
                peer: signin.peer.clone(),
                csrf: sallyport_oidc::pkce::random_token(),
                last: now,
                opened: now,
            },
        );
        signin.secret.clone()
    }

    /// The live session of cookie value `secret`, touched; `None` when unknown or over.
    pub fn get(&self, secret: &str) -> Option<Session> {
        let key = console_thumbprint(secret);
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let s = all.get_mut(&key)?;
        if !live(s) {
            all.remove(&key);
            return None;
        }
        s.last = Instant::now();
        Some(s.clone())
    }

    /// The live session of cookie value `secret`, without counting as use: a live page's updates
    /// do not keep a session from going idle.
    pub fn peek(&self, secret: &str) -> Option<Session> {
        let key = console_thumbprint(secret);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|s| live(s))
            .cloned()
    }

    /// Whether the session of cookie value `secret` is still open (without counting as use).
    pub fn alive(&self, secret: &str) -> bool {
        self.peek(secret).is_some()
    }

    /// Ends the session of cookie value `secret`.
    pub fn end(&self, secret: &str) {
        let key = console_thumbprint(secret);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn live(s: &Session) -> bool {
    s.last.elapsed() < IDLE_TIMEOUT && SystemTime::now() < s.peer.not_after
}

fn sweep(all: &mut HashMap<[u8; 32], Session>) {
    all.retain(|_, s| live(s));
}

/// The `Set-Cookie` value of a session cookie (`max_age` `None`: until the browser closes;
/// `Some(0)`: cleared).
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}")
}

/// The `Set-Cookie` value of the sign-in binding: `Lax`, since the IdP's redirect back is a
/// cross-site navigation that a `Strict` cookie would not go with (it opens nothing by itself:
/// the callback only compares it with the flow's).
pub fn set_flow_cookie(value: &str, max_age: u64) -> String {
    format!("{FLOW_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signin(name: &str, secret: &str, for_secs: u64) -> ConsoleSignIn {
        ConsoleSignIn {
            peer: PeerIdentity {
                id: format!("spiffe://sallyport.local/approver/acme/{name}")
                    .parse()
                    .unwrap(),
                groups: Vec::new(),
                thumbprint: console_thumbprint(secret),
                not_after: SystemTime::now() + Duration::from_secs(for_secs),
                signin: None,
            },
            binding: "b".into(),
            secret: secret.into(),
            next: "/console".into(),
        }
    }

    #[test]
    fn sessions_open_find_and_end() {
        let s = Sessions::default();
        let cookie = s.open(&signin("bob", "secret-1", 3600));
        let got = s.get(&cookie).unwrap();
        assert_eq!(
            got.peer.id.to_string(),
            "spiffe://sallyport.local/approver/acme/bob"
        );
        assert!(got.csrf.len() >= 32);
        assert!(s.get("secret-2").is_none());
        s.end(&cookie);
        assert!(s.get(&cookie).is_none());
    }

    #[test]
    fn a_look_that_is_no_use_does_not_touch_the_session() {
        let s = Sessions::default();
        let cookie = s.open(&signin("bob", "secret-1", 3600));
        let before = s.peek(&cookie).unwrap().last;
        assert!(s.alive(&cookie));
        assert_eq!(s.peek(&cookie).unwrap().last, before);
        assert!(s.get(&cookie).unwrap().last >= before);
    }

    #[test]
    fn a_session_ends_with_its_sign_in() {
        let s = Sessions::default();
        let cookie = s.open(&signin("bob", "secret-1", 0));
        assert!(s.get(&cookie).is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn one_person_holds_a_bounded_number_of_sessions() {
        let s = Sessions::default();
        let first = s.open(&signin("bob", "first", 3600));
        for i in 0..MAX_SESSIONS_PER_PERSON {
            s.open(&signin("bob", &format!("s{i}"), 3600));
        }
        assert_eq!(s.len(), MAX_SESSIONS_PER_PERSON);
        assert!(s.get(&first).is_none(), "the oldest went first");
    }

    #[test]
    fn cookies_are_strict_and_read_back() {
        let c = set_cookie(COOKIE, "v", None);
        assert_eq!(
            c,
            "__Host-sallyport=v; Path=/; Secure; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie(COOKIE, "", Some(0)).ends_with("Max-Age=0"));
        assert_eq!(
            set_flow_cookie("b", 600),
            "__Host-sallyport-signin=b; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600"
        );
        let h = "a=1; __Host-sallyport=abc; __Host-sallyport-signin=def";
        assert_eq!(cookie(h, COOKIE), Some("abc"));
        assert_eq!(cookie(h, FLOW_COOKIE), Some("def"));
        assert_eq!(cookie(h, "b"), None);
    }
}
