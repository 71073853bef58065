//! Per-customer outgoing webhooks: the broker tells a customer's own system (a chat channel, a ticket
//! tool, a SIEM) when a just-in-time access request is filed, approved, denied, revoked or expired.
//!
//! This module owns the delivery side: one bounded queue and one delivery worker per customer
//! ([`Notifier`]), signing ([`sign`]), retries with exponential backoff, and reporting deliveries
//! that finally fail ([`GiveUp`]). The settings (URL rules, secret, attempts) are the config crate's
//! [`WebhookTarget`]; each attempt goes through the shared [`HttpsClient`]. Queuing never blocks or
//! slows the caller; deliveries of one customer go out one at a time, in order.
//!
//! # Wire format
//!
//! Each attempt is one `POST` to the configured URL over a fresh HTTP/1.1 connection (`https://`,
//! or plain `http://` to a loopback host only), with these headers:
//!
//! | header | value |
//! | --- | --- |
//! | `Content-Type` | `application/json` |
//! | `User-Agent` | `sallyport-webhook/<version>` |
//! | `X-Sallyport-Event` | the event name, e.g. `request_approved` |
//! | `X-Sallyport-Delivery` | a UUID v4 naming the notification; the same on every retry of it |
//! | `X-Sallyport-Timestamp` | Unix seconds when this attempt was signed (new on every retry) |
//! | `X-Sallyport-Signature` | `v1=` + lowercase hex of HMAC-SHA256(secret, timestamp + `.` + body) |
//!
//! The body is one JSON object (the same bytes on every retry of a notification):
//!
//! ```json
//! {
//!   "text": "One human sentence (usable as Slack's `text`).",
//!   "event": "request_approved",
//!   "customer": "acme",
//!   "delivery_id": "1c1c6f5e-6a8e-4b8e-9f55-3f0d5d2b9a61",
//!   "time": "2025-01-31T09:15:00Z",
//!   "data": { "request_id": "...", "target": "...", "technician": "..." }
//! }
//! ```
//!
//! `time` is when the event was queued (RFC 3339, UTC); `data` is the structured event, whose fields
//! depend on `event`. Known events: `request_filed`, `request_approved`, `request_denied`,
//! `grant_revoked`, `request_expired`, `request_cancelled`, `grant_break_glass` (a grant minted
//! without approval: `data` is the grant, with `break_glass` naming who minted it, why and the
//! ticket), `identity_locked`, `identity_unlocked`; a receiver should ignore events it does not know.
//!
//! ## Verifying a delivery (receiver side)
//!
//! 1. Take the raw request body bytes, exactly as received (do not re-serialize the JSON).
//! 2. Compute `v1=` + hex(HMAC-SHA256(secret, X-Sallyport-Timestamp + "." + body)) — this is
//!    [`sign`] — and compare it with `X-Sallyport-Signature` in constant time.
//! 3. Refuse timestamps far from your clock (e.g. more than 5 minutes) to stop replays, and
//!    de-duplicate on `X-Sallyport-Delivery`: a retry after a lost answer delivers the same
//!    notification again.
//!
//! ## Answers and retries
//!
//! Any `2xx` answer is success. Connection, TLS and I/O errors, a timeout (10 s for connecting,
//! sending and receiving the answer's head), `408`, `429` and `5xx` are retried, after a backoff
//! that starts at [`WebhookTarget::first_backoff`] and doubles after each failure (at most 60 s),
//! up to [`WebhookTarget::max_attempts`] attempts in all. Any other answer (`3xx` — redirects are not
//! followed — or `4xx` such as `400`, `401`, `404`) gives up at once. At most 64 KiB of an answer's
//! body is read; it is discarded.
//!
//! Secrets never reach a log line or a `Debug` output; neither does a URL's path or query (some
//! receivers, e.g. chat incoming webhooks, put a token there): logs name only scheme, host and port.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use hyper::{StatusCode, header};
use sallyport_config::WebhookTarget;
use sallyport_config::sinks::{MAX_BACKOFF, Origin};
use sallyport_ids::CustomerId;
use sallyport_ids::time::{Timestamp, now_unix, rfc3339_seconds};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NotifyError;
use crate::client::HttpsClient;

/// How many notifications of one customer may wait for delivery; more are dropped.
pub const QUEUE_CAPACITY: usize = 1024;

/// The time one attempt may take to connect, send the request and receive the answer's head.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `User-Agent` of every delivery.
const USER_AGENT: &str = concat!("sallyport-webhook/", env!("CARGO_PKG_VERSION"));

type HmacSha256 = Hmac<Sha256>;

/// One event to tell a customer about.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The customer whose webhook receives it.
    pub customer: CustomerId,
    /// The event name: `request_filed`, `request_approved`, `request_denied`, `grant_revoked`,
    /// `request_expired`, `request_cancelled`, `identity_locked`, `identity_unlocked`, ...
    pub event: String,
    /// One human sentence (Slack-compatible `text`).
    pub text: String,
    /// The structured event (request id, target, technician, ...).
    pub data: serde_json::Value,
}

/// Reported when a delivery gives up: attempts exhausted, a non-retryable answer, or (with
/// `attempts == 0`) the notification could not even be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveUp {
    /// The customer of the notification.
    pub customer: CustomerId,
    /// The event of the notification.
    pub event: String,
    /// The delivery id (`X-Sallyport-Delivery`) of the notification.
    pub delivery_id: String,
    /// How many attempts were made (`0`: none, e.g. the queue was full).
    pub attempts: u32,
    /// Why the last attempt failed.
    pub error: String,
}

/// Escapes `&`, `<` and `>` as Slack's message format asks, so text written by people cannot become
/// links, mentions (`<!channel>`) or other markup in the receiving channel.
pub fn escape_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Returns `v1=` + lowercase hex of HMAC-SHA256(`secret`, `timestamp` + `.` + `body`): the value of
/// `X-Sallyport-Signature` for a delivery of `body` signed at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac_sha256(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// An HMAC-SHA256 keyed with `key` of any length (RFC 2104: a key longer than the 64-byte block is
/// hashed first, a shorter one padded with zeros), built without a fallible call.
fn hmac_sha256(key: &[u8]) -> HmacSha256 {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    <HmacSha256 as hmac::digest::KeyInit>::new(&block.into())
}

/// Queues notifications for the customers' webhook workers. Cheap to clone.
///
/// Workers end when the `shutdown` token given to [`Notifier::start`] is cancelled, or when every
/// clone of the `Notifier` is dropped (after delivering what was queued).
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced, customer by customer, by [`Notifier::reconfigure`].
    customers: std::sync::RwLock<HashMap<CustomerId, Slot>>,
    on_give_up: GiveUpFn,
    /// The delivery workers.
    workers: TaskTracker,
    /// What new workers are made with.
    client: HttpsClient,
    shutdown: CancellationToken,
}

type GiveUpFn = Arc<dyn Fn(GiveUp) + Send + Sync + 'static>;

impl Inner {
    fn slots(&self) -> std::sync::RwLockReadGuard<'_, HashMap<CustomerId, Slot>> {
        self.customers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn slots_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<CustomerId, Slot>> {
        self.customers.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker for `customer`'s webhook, or the refusal of its URL.
    fn slot(&self, customer: &CustomerId, target: WebhookTarget) -> Slot {
        if let Some(problem) = WebhookTarget::url_problem(&target.url) {
            tracing::error!(%customer, %problem, "webhook not started");
            return Slot::Refused(problem);
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let worker = Worker {
            customer: customer.clone(),
            origin: Origin::of(&target.url).to_string(),
            target,
            client: self.client.clone(),
            on_give_up: self.on_give_up.clone(),
        };
        self.workers.spawn(worker.run(rx, self.shutdown.clone()));
        Slot::Queue(tx)
    }
}

/// What `notify` does for one configured customer.
#[derive(Clone)]
enum Slot {
    /// The customer's worker queue.
    Queue(mpsc::Sender<Job>),
    /// The customer's webhook URL was refused at start; every notification gives up at once.
    Refused(String),
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut customers: Vec<CustomerId> = self.inner.slots().keys().cloned().collect();
        customers.sort();
        f.debug_struct("Notifier")
            .field("customers", &customers)
            .finish_non_exhaustive()
    }
}

/// One queued notification.
struct Job {
    notification: Notification,
    delivery_id: String,
    time: Timestamp,
}

/// The JSON body of a delivery.
#[derive(serde::Serialize)]
struct Body<'a> {
    text: &'a str,
    event: &'a str,
    customer: &'a str,
    delivery_id: &'a str,
    time: String,
    data: &'a serde_json::Value,
}

impl Notifier {
    /// Starts one delivery worker per customer in `targets` (keyed by customer); a customer's
    /// deliveries go out one at a time, in order. Must be called within a tokio runtime.
    ///
    /// `tls` is used for `https://` URLs (usually `sallyport_certs::tls::default_client`). `on_give_up` is called when a delivery exhausts its attempts or gets a
    /// non-retryable answer (from the worker task), or when a notification cannot be queued (from
    /// [`Notifier::notify`]); it should be quick. A target whose URL fails
    /// [`WebhookTarget::url_problem`] gets no worker: that is logged at error, and each of its
    /// notifications is reported to `on_give_up` with `attempts == 0`. Workers stop when `shutdown`
    /// is cancelled; what they had pending is dropped with a log line.
    pub fn start(
        targets: HashMap<CustomerId, WebhookTarget>,
        tls: &Arc<rustls::ClientConfig>,
        on_give_up: impl Fn(GiveUp) + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> Notifier {
        let on_give_up: GiveUpFn = Arc::new(on_give_up);
        let inner = Inner {
            customers: std::sync::RwLock::new(HashMap::with_capacity(targets.len())),
            on_give_up,
            workers: TaskTracker::new(),
            client: HttpsClient::new(tls),
            shutdown,
        };
        let slots = targets
            .into_iter()
            .map(|(customer, target)| {
                let slot = inner.slot(&customer, target);
                (customer, slot)
            })
            .collect();
        *inner.slots_mut() = slots;
        Notifier {
            inner: Arc::new(inner),
        }
    }

    /// After a reload: customers in `targets` whose webhook is new or changed (`changed` says which
    /// of them) get a new worker, and customers no longer in it get none. A replaced worker delivers
    /// what it had queued, then ends; customers not in `changed` keep theirs, queue and order.
    pub fn reconfigure(
        &self,
        targets: HashMap<CustomerId, WebhookTarget>,
        changed: &dyn Fn(&CustomerId) -> bool,
    ) {
        let inner = &self.inner;
        let mut slots = inner.slots_mut();
        slots.retain(|c, _| targets.contains_key(c));
        for (customer, target) in targets {
            if !slots.contains_key(&customer) || changed(&customer) {
                let slot = inner.slot(&customer, target);
                slots.insert(customer, slot);
            }
        }
    }

    /// Notifications waiting in each customer's queue now (not counting the one being delivered).
    pub fn queued(&self) -> Vec<(CustomerId, usize)> {
        self.inner
            .slots()
            .iter()
            .filter_map(|(c, slot)| match slot {
                Slot::Queue(tx) => Some((c.clone(), tx.max_capacity() - tx.capacity())),
                Slot::Refused(_) => None,
            })
            .collect()
    }

    /// Takes no more notifications and waits until the workers have delivered, or given up on,
    /// everything queued (retries included). Workers stop only once every clone is dropped, so a
    /// caller drops its other clones first (a command that must not exit before the customer is told).
    pub async fn drain(self) {
        let workers = self.inner.workers.clone();
        drop(self);
        workers.close();
        workers.wait().await;
    }

    /// Queues `n` for its customer's webhook; never blocks, never fails. A customer without a
    /// webhook: nothing happens. A full queue ([`QUEUE_CAPACITY`]): the notification is dropped,
    /// logged at warn and reported to `on_give_up` with `attempts == 0` and error `queue full`.
    pub fn notify(&self, mut n: Notification) {
        let Some(slot) = self.inner.slots().get(&n.customer).cloned() else {
            return;
        };
        // `text` carries people's words (reasons, tickets): Slack must not read them as markup.
        n.text = escape_text(&n.text);
        let delivery_id = uuid::Uuid::new_v4().to_string();
        let tx = match slot {
            Slot::Queue(tx) => tx,
            Slot::Refused(problem) => {
                self.give_up_unqueued(n, delivery_id, problem.clone());
                return;
            }
        };
        let job = Job {
            notification: n,
            delivery_id,
            time: Timestamp::now(),
        };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                tracing::warn!(
                    customer = %job.notification.customer,
                    event = %job.notification.event,
                    delivery_id = %job.delivery_id,
                    "webhook queue full; notification dropped"
                );
                self.give_up_unqueued(job.notification, job.delivery_id, "queue full".to_owned());
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                tracing::info!(
                    customer = %job.notification.customer,
                    event = %job.notification.event,
                    delivery_id = %job.delivery_id,
                    "webhook worker stopped (shutting down); notification dropped"
                );
            }
        }
    }

    fn give_up_unqueued(&self, n: Notification, delivery_id: String, error: String) {
        (self.inner.on_give_up)(GiveUp {
            customer: n.customer,
            event: n.event,
            delivery_id,
            attempts: 0,
            error,
        });
    }
}

/// Delivers one customer's notifications, in order.
struct Worker {
    customer: CustomerId,
    /// `scheme://host:port` of the target, for log lines.
    origin: String,
    target: WebhookTarget,
    client: HttpsClient,
    on_give_up: GiveUpFn,
}

/// How one attempt ended.
enum Outcome {
    Delivered(StatusCode),
    Retry(String),
    Fatal(String),
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
        loop {
            let job = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            let (event, delivery_id) = (job.notification.event.clone(), job.delivery_id.clone());
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    self.log_dropped(&event, &delivery_id);
                    break;
                }
                () = self.deliver(job) => {}
            }
        }
        rx.close();
        while let Ok(job) = rx.try_recv() {
            self.log_dropped(&job.notification.event, &job.delivery_id);
        }
    }

    fn log_dropped(&self, event: &str, delivery_id: &str) {
        tracing::info!(
            customer = %self.customer,
            %event,
            %delivery_id,
            "shutting down; webhook delivery dropped"
        );
    }

    /// Delivers one notification with retries; reports a final failure.
    async fn deliver(&self, job: Job) {
        let n = &job.notification;
        let body = Body {
            text: &n.text,
            event: &n.event,
            customer: n.customer.as_str(),
            delivery_id: &job.delivery_id,
            time: rfc3339_seconds(job.time),
            data: &n.data,
        };
        let body = match serde_json::to_vec(&body) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                self.give_up(&job, 0, format!("cannot serialize the notification: {e}"));
                return;
            }
        };
        let max_attempts = self.target.max_attempts.max(1);
        let mut backoff = self.target.first_backoff.min(MAX_BACKOFF);
        let mut attempt = 1;
        loop {
            // The status decides; the answer's body is read (after its head, bounded) only so that
            // the receiver is not cut off mid-answer.
            let outcome = match self.attempt(&n.event, &job.delivery_id, body.clone()).await {
                Ok(status) => classify(status),
                Err(NotifyError::Refused(e)) => Outcome::Fatal(e),
                Err(e) => Outcome::Retry(e.to_string()),
            };
            let error = match outcome {
                Outcome::Delivered(status) => {
                    tracing::debug!(
                        customer = %self.customer,
                        event = %n.event,
                        delivery_id = %job.delivery_id,
                        attempt,
                        %status,
                        "webhook delivered"
                    );
                    return;
                }
                Outcome::Fatal(error) => {
                    self.give_up(&job, attempt, error);
                    return;
                }
                Outcome::Retry(error) if attempt >= max_attempts => {
                    self.give_up(&job, attempt, error);
                    return;
                }
                Outcome::Retry(error) => error,
            };
            tracing::info!(
                customer = %self.customer,
                event = %n.event,
                delivery_id = %job.delivery_id,
                attempt,
                max_attempts,
                %error,
                retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                "webhook attempt failed; will retry"
            );
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }

    fn give_up(&self, job: &Job, attempts: u32, error: String) {
        tracing::warn!(
            customer = %self.customer,
            event = %job.notification.event,
            delivery_id = %job.delivery_id,
            target = %self.origin,
            attempts,
            %error,
            "webhook delivery failed; giving up"
        );
        (self.on_give_up)(GiveUp {
            customer: self.customer.clone(),
            event: job.notification.event.clone(),
            delivery_id: job.delivery_id.clone(),
            attempts,
            error,
        });
    }

    /// One signed attempt: POST, then the answer's status.
    async fn attempt(
        &self,
        event: &str,
        delivery_id: &str,
        body: Bytes,
    ) -> Result<StatusCode, NotifyError> {
        let timestamp = now_unix();
        let headers = [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::USER_AGENT, USER_AGENT.to_owned()),
            (
                header::HeaderName::from_static("x-sallyport-event"),
                event.to_owned(),
            ),
            (
                header::HeaderName::from_static("x-sallyport-delivery"),
                delivery_id.to_owned(),
            ),
            (
                header::HeaderName::from_static("x-sallyport-timestamp"),
                timestamp.to_string(),
            ),
            (
                header::HeaderName::from_static("x-sallyport-signature"),
                sign(&self.target.secret, timestamp, &body),
            ),
        ];
        self.client
            .post(&self.target.url, &headers, body, ATTEMPT_TIMEOUT)
            .await
    }
}

/// What an answer's status means for the delivery.
fn classify(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Delivered(status)
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Outcome::Retry(format!("the receiver answered {status}"))
    } else {
        Outcome::Fatal(format!("the receiver answered {status} (not retried)"))
    }
}

#[cfg(test)]
mod tests;
