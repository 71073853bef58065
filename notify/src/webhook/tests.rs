//! Webhook delivery against real HTTP receivers on loopback: signing, retries, give-ups, a full
//! queue, shutdown, refused URLs and TLS failures.

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
    let (notifier, mut give_ups, shutdown) = start(target(&format!("http://127.0.0.1:{port}/"), 5));
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
    let (notifier, mut give_ups, shutdown) = start(target(&format!("http://127.0.0.1:{port}/"), 3));
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
    let (notifier, mut give_ups, shutdown) = start(target(&format!("http://localhost:{port}/"), 5));
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
    let (notifier, mut give_ups, shutdown) = start(target(&format!("http://127.0.0.1:{port}/"), 1));
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
    let (notifier, mut give_ups, shutdown) = start(target(&format!("http://127.0.0.1:{port}/"), 3));
    notifier.notify(notification("request_filed"));
    notifier.notify(notification("request_approved"));
    let r = next(&mut requests).await;
    assert_eq!(header(&r, "x-sallyport-event"), "request_filed");
    shutdown.cancel();
    let slot = notifier.inner.slots().get("acme").cloned();
    let Some(Slot::Queue(tx)) = slot else {
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

#[tokio::test]
async fn a_reconfigured_webhook_delivers_to_its_new_url_and_a_removed_one_to_none() {
    let (old_port, mut old) = receiver(vec![], false).await;
    let (new_port, mut new) = receiver(vec![], false).await;
    let (notifier, mut give_ups, _shutdown) =
        start(target(&format!("http://127.0.0.1:{old_port}/"), 3));
    notifier.notify(notification("request_filed"));
    assert_eq!(
        header(&next(&mut old).await, "x-sallyport-event"),
        "request_filed"
    );
    let acme: CustomerId = "acme".parse().unwrap();
    // Unchanged: the same worker (and queue) stays.
    let before = notifier.inner.slots().get(&acme).cloned();
    notifier.reconfigure(
        HashMap::from([(
            acme.clone(),
            target(&format!("http://127.0.0.1:{old_port}/"), 3),
        )]),
        &|_| false,
    );
    let after = notifier.inner.slots().get(&acme).cloned();
    assert!(
        matches!((before, after), (Some(Slot::Queue(a)), Some(Slot::Queue(b))) if a.same_channel(&b))
    );
    // Changed: deliveries go to the new URL.
    notifier.reconfigure(
        HashMap::from([(
            acme.clone(),
            target(&format!("http://127.0.0.1:{new_port}/"), 3),
        )]),
        &|c| *c == acme,
    );
    notifier.notify(notification("request_approved"));
    assert_eq!(
        header(&next(&mut new).await, "x-sallyport-event"),
        "request_approved"
    );
    // Removed: nothing is delivered, nothing given up.
    notifier.reconfigure(HashMap::new(), &|_| false);
    notifier.notify(notification("grant_revoked"));
    assert!(notifier.inner.slots().is_empty());
    assert!(matches!(give_ups.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(old.try_recv(), Err(TryRecvError::Empty)));
}
