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
//! `grant_revoked`, `request_expired`; a receiver should ignore events it does not know.
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
    /// `request_expired`, ...
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
    customers: HashMap<CustomerId, Slot>,
    on_give_up: GiveUpFn,
}

type GiveUpFn = Arc<dyn Fn(GiveUp) + Send + Sync + 'static>;

/// What `notify` does for one configured customer.
enum Slot {
    /// The customer's worker queue.
    Queue(mpsc::Sender<Job>),
    /// The customer's webhook URL was refused at start; every notification gives up at once.
    Refused(String),
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut customers: Vec<&CustomerId> = self.inner.customers.keys().collect();
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
        let client = HttpsClient::new(tls);
        let mut customers = HashMap::with_capacity(targets.len());
        for (customer, target) in targets {
            if let Some(problem) = WebhookTarget::url_problem(&target.url) {
                tracing::error!(%customer, %problem, "webhook not started");
                customers.insert(customer, Slot::Refused(problem));
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            let worker = Worker {
                customer: customer.clone(),
                origin: Origin::of(&target.url).to_string(),
                target,
                client: client.clone(),
                on_give_up: on_give_up.clone(),
            };
            tokio::spawn(worker.run(rx, shutdown.clone()));
            customers.insert(customer, Slot::Queue(tx));
        }
        Notifier {
            inner: Arc::new(Inner {
                customers,
                on_give_up,
            }),
        }
    }

    /// Queues `n` for its customer's webhook; never blocks, never fails. A customer without a
    /// webhook: nothing happens. A full queue ([`QUEUE_CAPACITY`]): the notification is dropped,
    /// logged at warn and reported to `on_give_up` with `attempts == 0` and error `queue full`.
    pub fn notify(&self, mut n: Notification) {
        let Some(slot) = self.inner.customers.get(&n.customer) else {
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
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::Mutex;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Response, Uri};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc::UnboundedReceiver;
    use tokio::sync::mpsc::error::TryRecvError;

    use super::*;

    /// Generous bound on waits for something that should happen within milliseconds.
    const WAIT: Duration = Duration::from_secs(10);

    const SECRET: &[u8] = b"whsec-test-0123456789";

    /// One request as the receiver saw it.
    struct Received {
        uri: Uri,
        headers: hyper::HeaderMap,
        body: Bytes,
    }

    /// A local HTTP/1 receiver answering `statuses` in order, then 200; `hold` never answers.
    async fn receiver(statuses: Vec<u16>, hold: bool) -> (u16, UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        let statuses = Arc::new(Mutex::new(VecDeque::from(statuses)));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (tx, statuses) = (tx.clone(), statuses.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (tx, statuses) = (tx.clone(), statuses.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let _ = tx.send(Received {
                            uri: parts.uri,
                            headers: parts.headers,
                            body,
                        });
                        if hold {
                            std::future::pending::<()>().await;
                        }
                        let status = statuses.lock().unwrap().pop_front().unwrap_or(200);
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"thanks")))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (port, rx)
    }

    /// A port on 127.0.0.1 that nothing listens on.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    fn target(url: &str, max_attempts: u32) -> WebhookTarget {
        WebhookTarget {
            url: url.parse().unwrap(),
            secret: SECRET.to_vec(),
            max_attempts,
            first_backoff: Duration::from_millis(5),
        }
    }

    fn start(target: WebhookTarget) -> (Notifier, UnboundedReceiver<GiveUp>, CancellationToken) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let notifier = Notifier::start(
            HashMap::from([("acme".parse().unwrap(), target)]),
            &sallyport_certs::tls::default_client(),
            move |g| {
                let _ = tx.send(g);
            },
            shutdown.clone(),
        );
        (notifier, rx, shutdown)
    }

    fn notification(event: &str) -> Notification {
        Notification {
            customer: "acme".parse().unwrap(),
            event: event.to_owned(),
            text: "Alice asked for 30 minutes on db-1.".to_owned(),
            data: serde_json::json!({"request_id": "r-1", "target": "db-1", "technician": "alice"}),
        }
    }

    async fn next<T>(rx: &mut UnboundedReceiver<T>) -> T {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    fn header<'a>(r: &'a Received, name: &str) -> &'a str {
        r.headers.get(name).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn delivers_a_signed_notification() {
        let (port, mut requests) = receiver(vec![], false).await;
        let (notifier, mut give_ups, shutdown) = start(target(
            &format!("http://127.0.0.1:{port}/hooks/acme?k=1"),
            3,
        ));
        notifier.notify(notification("request_filed"));
        let r = next(&mut requests).await;

        assert_eq!(r.uri.path_and_query().unwrap().as_str(), "/hooks/acme?k=1");
        assert_eq!(header(&r, "host"), format!("127.0.0.1:{port}"));
        assert_eq!(header(&r, "content-type"), "application/json");
        assert_eq!(
            header(&r, "user-agent"),
            format!("sallyport-webhook/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(header(&r, "x-sallyport-event"), "request_filed");
        let timestamp: i64 = header(&r, "x-sallyport-timestamp").parse().unwrap();
        assert!((timestamp - jiff::Timestamp::now().as_second()).abs() < 60);
        assert_eq!(
            header(&r, "x-sallyport-signature"),
            sign(SECRET, timestamp, &r.body)
        );
        assert_ne!(
            header(&r, "x-sallyport-signature"),
            sign(b"another secret", timestamp, &r.body)
        );
        let delivery_id = header(&r, "x-sallyport-delivery");
        let parsed = uuid::Uuid::parse_str(delivery_id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);

        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["text"], "Alice asked for 30 minutes on db-1.");
        assert_eq!(body["event"], "request_filed");
        assert_eq!(body["customer"], "acme");
        assert_eq!(body["delivery_id"], delivery_id);
        assert_eq!(body["data"]["technician"], "alice");
        let time = body["time"].as_str().unwrap();
        assert!(time.ends_with('Z'), "{time}");
        let time: jiff::Timestamp = time.parse().unwrap();
        assert!((time.as_second() - timestamp).abs() < 60);
        assert_eq!(body.as_object().unwrap().len(), 6);

        // A customer without a webhook: nothing happens.
        notifier.notify(Notification {
            customer: "globex".parse().unwrap(),
            ..notification("request_filed")
        });
        assert!(matches!(give_ups.try_recv(), Err(TryRecvError::Empty)));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn retries_503_then_succeeds_with_the_same_delivery_id() {
        let (port, mut requests) = receiver(vec![503, 503], false).await;
        let (notifier, mut give_ups, shutdown) =
            start(target(&format!("http://127.0.0.1:{port}/"), 5));
        notifier.notify(notification("request_approved"));
        let mut ids = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let r = next(&mut requests).await;
            let ts: i64 = header(&r, "x-sallyport-timestamp").parse().unwrap();
            assert_eq!(
                header(&r, "x-sallyport-signature"),
                sign(SECRET, ts, &r.body)
            );
            ids.push(header(&r, "x-sallyport-delivery").to_owned());
            bodies.push(r.body);
        }
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert!(bodies.iter().all(|b| *b == bodies[0]));

        // Deliveries of a customer are in order: once the next one arrives, the first is done.
        notifier.notify(notification("grant_revoked"));
        let r = next(&mut requests).await;
        assert_eq!(header(&r, "x-sallyport-event"), "grant_revoked");
        assert_ne!(header(&r, "x-sallyport-delivery"), ids[0]);
        assert!(matches!(give_ups.try_recv(), Err(TryRecvError::Empty)));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn receiver_down_gives_up_after_max_attempts_without_blocking() {
        let port = closed_port().await;
        let (notifier, mut give_ups, shutdown) =
            start(target(&format!("http://127.0.0.1:{port}/"), 3));
        notifier.notify(notification("request_denied"));
        // This runtime has one thread: the worker cannot have run yet, so notify did not wait for it.
        assert!(matches!(give_ups.try_recv(), Err(TryRecvError::Empty)));

        let g = next(&mut give_ups).await;
        assert_eq!(g.customer, "acme");
        assert_eq!(g.event, "request_denied");
        assert_eq!(g.attempts, 3);
        assert!(uuid::Uuid::parse_str(&g.delivery_id).is_ok());
        assert!(
            g.error
                .contains(&format!("connecting to http://127.0.0.1:{port}")),
            "{}",
            g.error
        );
        assert!(g.error.to_lowercase().contains("refused"), "{}", g.error);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn answer_400_gives_up_after_one_attempt() {
        let (port, mut requests) = receiver(vec![400], false).await;
        let (notifier, mut give_ups, shutdown) =
            start(target(&format!("http://localhost:{port}/"), 5));
        notifier.notify(notification("request_expired"));
        let g = next(&mut give_ups).await;
        assert_eq!(g.attempts, 1);
        assert!(g.error.contains("400"), "{}", g.error);
        assert!(g.error.contains("not retried"), "{}", g.error);
        let r = next(&mut requests).await;
        assert_eq!(header(&r, "x-sallyport-delivery"), g.delivery_id);
        assert!(matches!(requests.try_recv(), Err(TryRecvError::Empty)));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn full_queue_drops_and_reports() {
        let port = closed_port().await;
        let (notifier, mut give_ups, shutdown) =
            start(target(&format!("http://127.0.0.1:{port}/"), 1));
        // One thread: the worker takes nothing off the queue until this test awaits.
        for _ in 0..QUEUE_CAPACITY {
            notifier.notify(notification("request_filed"));
        }
        assert!(matches!(give_ups.try_recv(), Err(TryRecvError::Empty)));
        notifier.notify(notification("request_approved"));
        let g = give_ups.try_recv().unwrap();
        assert_eq!(g.event, "request_approved");
        assert_eq!(g.attempts, 0);
        assert_eq!(g.error, "queue full");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn shutdown_stops_the_worker_and_drops_pending_deliveries() {
        let (port, mut requests) = receiver(vec![], true).await;
        let (notifier, mut give_ups, shutdown) =
            start(target(&format!("http://127.0.0.1:{port}/"), 3));
        notifier.notify(notification("request_filed"));
        notifier.notify(notification("request_approved"));
        let r = next(&mut requests).await;
        assert_eq!(header(&r, "x-sallyport-event"), "request_filed");
        shutdown.cancel();
        let Some(Slot::Queue(tx)) = notifier.inner.customers.get("acme") else {
            panic!("no queue for acme");
        };
        tokio::time::timeout(WAIT, tx.closed()).await.unwrap();
        assert!(matches!(give_ups.try_recv(), Err(TryRecvError::Empty)));
        // After shutdown, notify still neither blocks nor fails.
        notifier.notify(notification("grant_revoked"));
        assert!(matches!(give_ups.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test]
    async fn refused_url_reports_every_notification() {
        let (notifier, mut give_ups, _shutdown) = start(target("http://example.com/hook", 3));
        notifier.notify(notification("request_filed"));
        let g = give_ups.try_recv().unwrap();
        assert_eq!(g.attempts, 0);
        assert!(g.error.contains("https://"), "{}", g.error);
    }

    #[test]
    fn people_cannot_inject_slack_markup() {
        assert_eq!(
            escape_text("<!channel> see <https://evil|here> & more"),
            "&lt;!channel&gt; see &lt;https://evil|here&gt; &amp; more"
        );
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        let short = hmac_sha256(&[0x0b; 20])
            .chain_update(b"Hi There")
            .finalize();
        assert_eq!(
            hex::encode(short.into_bytes()),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let long = hmac_sha256(&[0xaa; 131])
            .chain_update(b"Test Using Larger Than Block-Size Key - Hash Key First")
            .finalize();
        assert_eq!(
            hex::encode(long.into_bytes()),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn sign_is_hmac_of_timestamp_dot_body() {
        let mut mac = HmacSha256::new_from_slice(b"key").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(sign(b"key", 1_700_000_000, br#"{"a":1}"#), expected);
        assert_ne!(sign(b"key", 1_700_000_001, br#"{"a":1}"#), expected);
    }

    #[test]
    fn backoff_classification() {
        assert!(matches!(
            classify(StatusCode::NO_CONTENT),
            Outcome::Delivered(_)
        ));
        for code in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(matches!(classify(status), Outcome::Retry(_)), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 410, 422] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(matches!(classify(status), Outcome::Fatal(_)), "{code}");
        }
    }

    #[tokio::test]
    async fn https_to_a_plain_http_receiver_is_a_tls_error() {
        let (port, _requests) = receiver(vec![], false).await;
        let (notifier, mut give_ups, shutdown) =
            start(target(&format!("https://127.0.0.1:{port}/"), 2));
        notifier.notify(notification("request_filed"));
        let g = next(&mut give_ups).await;
        assert_eq!(g.attempts, 2);
        assert!(g.error.contains("TLS handshake"), "{}", g.error);
        shutdown.cancel();
    }
}
