//! Server-sent events for the console's live pages: `GET /console/events?view=queue|sessions`
//! sends `event: changed` whenever what the person sees there changes (a request filed, approved
//! or gone; a session opened, closed or moving bytes), and the page's script fetches the new list.
//! The broker looks every [`TICK`] at what the person may see (through the workflow, as the
//! person); a stream ends after [`STREAM_LIFETIME`] (the browser reconnects), when its session
//! ends, or when the browser goes; at most [`MAX_STREAMS`] run at once, [`MAX_STREAMS_PER_SESSION`]
//! of one session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use sallyport_certs::identity::PeerIdentity;
use sallyport_workflow::sessions::Asked;
use sallyport_workflow::{Caller, Workflow};
use tokio::sync::Semaphore;

use super::Ctx;
use super::http::event_stream;
use crate::Body;

/// How often a stream looks for changes.
pub const TICK: Duration = Duration::from_secs(1);
/// How long one stream lasts before the browser reconnects.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(300);
/// Streams at once, from everyone.
pub const MAX_STREAMS: usize = 256;
/// Streams at once of one session (a few tabs).
pub const MAX_STREAMS_PER_SESSION: usize = 4;

/// The streams' budget: in all, and per session.
#[derive(Debug, Clone)]
pub struct Streams {
    all: Arc<Semaphore>,
    per_session: Arc<Mutex<HashMap<[u8; 32], usize>>>,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            all: Arc::new(Semaphore::new(MAX_STREAMS)),
            per_session: Arc::default(),
        }
    }
}

/// One stream's place in the budget, given back when it ends.
struct Slot {
    _all: tokio::sync::OwnedSemaphorePermit,
    per_session: Arc<Mutex<HashMap<[u8; 32], usize>>>,
    session: [u8; 32],
}

impl Streams {
    fn take(&self, session: [u8; 32]) -> Option<Slot> {
        let all = self.all.clone().try_acquire_owned().ok()?;
        let mut per = self.per_session.lock().unwrap_or_else(|p| p.into_inner());
        let n = per.entry(session).or_default();
        if *n >= MAX_STREAMS_PER_SESSION {
            return None;
        }
        *n += 1;
        Some(Slot {
            _all: all,
            per_session: self.per_session.clone(),
            session,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per = self.per_session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.session);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum View {
    Queue,
    Sessions,
}

/// `GET /console/events?view=`.
pub(crate) fn stream(cx: &Ctx<'_>, secret: &str) -> Response<Body> {
    let view = match cx.req.q("view").as_deref() {
        Some("queue") => View::Queue,
        Some("sessions") => View::Sessions,
        _ => {
            return super::views::plain(
                StatusCode::BAD_REQUEST,
                "Unknown view",
                "`view` is queue or sessions.",
            );
        }
    };
    let Some(permit) = cx.console.streams.take(cx.session.peer.thumbprint) else {
        return super::views::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many live pages are open; this one will not update by itself.",
        );
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let workflow = cx.console.workflow.clone();
    let sessions = cx.console.sessions.clone();
    let peer = cx.session.peer.clone();
    let ip = cx.req.ip;
    let secret = secret.to_owned();
    tokio::spawn(async move {
        let _permit = permit;
        let started = tokio::time::Instant::now();
        let mut last: Option<String> = None;
        let mut ticks = tokio::time::interval(TICK);
        let mut quiet = 0u32;
        while started.elapsed() < STREAM_LIFETIME && sessions.alive(&secret) {
            ticks.tick().await;
            let now = seen(&workflow, &peer, ip, view).await;
            let msg = match (&last, &now) {
                (Some(a), b) if a == b => {
                    quiet += 1;
                    // A comment now and then keeps proxies from closing a quiet stream.
                    if quiet.is_multiple_of(15) {
                        Some(": still here\n\n")
                    } else {
                        None
                    }
                }
                _ => {
                    quiet = 0;
                    Some("event: changed\ndata: {}\n\n")
                }
            };
            // The first look says "changed" too: the page was drawn before the stream began,
            // and whatever changed in between must not be missed.
            last = Some(now);
            if let Some(m) = msg
                && tx.send(Bytes::from_static(m.as_bytes())).await.is_err()
            {
                return;
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    event_stream(rx)
}

/// A digest of what the person sees in `view` now (ids, states, bytes).
async fn seen(
    workflow: &Workflow,
    peer: &PeerIdentity,
    ip: std::net::IpAddr,
    view: View,
) -> String {
    let caller = Caller { peer, ip };
    match view {
        View::Queue => match workflow.requests.list(caller, Some("pending"), None).await {
            Ok(list) => list
                .iter()
                .map(|r| format!("{}:{}", r.filed.id, r.approvals.len()))
                .collect::<Vec<_>>()
                .join(","),
            Err(e) => format!("error:{e}"),
        },
        View::Sessions => match workflow
            .sessions
            .list(
                caller,
                Asked {
                    live: true,
                    ..Asked::default()
                },
            )
            .await
        {
            Ok(list) => list
                .iter()
                .map(|l| {
                    format!(
                        "{}:{}:{}",
                        l.session.id, l.session.bytes_up, l.session.bytes_down
                    )
                })
                .collect::<Vec<_>>()
                .join(","),
            Err(e) => format!("error:{e}"),
        },
    }
}
