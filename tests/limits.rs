//! No client starves the others, against the real broker over real TLS on loopback: a silent flood
//! from one source (and from several) leaves open tunnels and other sources working; a request
//! that trickles in is answered 408 and closed by the broker; a flood of refusals is aggregated,
//! so the trail stays small and verifies; and clients sharing one address (a NAT) are judged by their
//! certificates, so one bad client locks out no good one. Linux routes all of 127/8 to loopback, so
//! client sockets bound to 127.0.0.2, 127.0.0.3, ... are other sources.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails loudly on anything unexpected"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use sallyport_certs::identity_dir::IdentityDir;
use sallyport_certs::pki::CertificateAuthority;
use sallyport_testkit::{
    Answer, Broker, CustomerSpec, Setup, allow_support, connect, connect_from, connector,
    dial_from, echo_server, eventually, request_from, technician_from, tls_on, valid_for,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

/// The source every plain test connection comes from.
const ONE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// A second source.
const TWO: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A third source.
const THREE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// An address shared by several clients, as behind a NAT.
const NAT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));

/// A grant for `who` on `acme/db01`, valid for ten minutes.
fn grant(s: &Setup, who: &IdentityDir, port: u16) -> String {
    let now = SystemTime::now();
    s.mint(
        who,
        "acme",
        "db01",
        port,
        now - Duration::from_secs(5),
        now + Duration::from_secs(600),
    )
}

/// Checks that an open tunnel echoes.
async fn echoes(a: &mut Answer, msg: &[u8]) {
    a.stream.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), a.stream.read_exact(&mut back))
        .await
        .expect("no echo within 10 s")
        .unwrap();
    assert_eq!(back, msg);
}

/// A tunnel to `acme/db01` from `from`, checked with one echo.
async fn tunnel_from(
    b: &Broker,
    from: IpAddr,
    who: &IdentityDir,
    port: u16,
    token: &str,
) -> Answer {
    let mut a = connect_from(
        from,
        b.addr,
        &connector(who),
        &format!("db01.acme:{port}"),
        Some(token),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    echoes(&mut a, b"still here").await;
    a
}

/// Silent TCP connections from 127.0.0.1, each as the kernel completed it (in this order).
fn silent(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| {
            let c = std::net::TcpStream::connect(addr).unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect()
}

/// Whether the broker has closed `c` (EOF or reset), without waiting.
fn closed(c: &std::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    match c.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// A TLS handshake from `from` that the broker ends before it completes, and promptly: with the
/// handshake timeout at 60 s, an end within 10 s is the broker closing it at accept.
async fn refused_at_accept(b: &Broker, from: IpAddr, who: &IdentityDir) {
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        tls_on(dial_from(from, b.addr).await?, &connector(who)).await
    })
    .await
    .expect("the broker kept a connection it had no slot for");
    assert!(r.is_err(), "a handshake from {from} completed");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The value of `name` in the broker's `/metrics`, read by the admin from `from`.
async fn metric(s: &Setup, b: &Broker, from: IpAddr, name: &str) -> u64 {
    let a = request_from(
        from,
        b.addr,
        &connector(&s.identity("admin")),
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {}", a.body))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_flood_from_one_source_stops_neither_open_tunnels_nor_other_sources() {
    let (s, port) = Setup::with_echo_target(
        BIN,
        "handshake_timeout_seconds = 60\nmax_handshakes_per_source = 8\nmax_handshakes = 64\nmax_connections = 1000\n",
    );
    let b = Broker::start(&s);
    let alice = s.identity("technician");
    let token = grant(&s, &alice, port);
    let mut before = tunnel_from(&b, ONE, &alice, port, &token).await;

    // 400 connections from one source that never say a word.
    let flood = silent(b.addr, 400);
    // The broker accepts in order, so by the time it answers this, it has dealt with all 400: it
    // holds 8 in their handshake and closed the other 392 at once.
    assert_eq!(
        metric(&s, &b, TWO, "sallyport_handshake_slots_refused_total").await,
        392
    );
    assert_eq!(
        metric(&s, &b, TWO, "sallyport_handshakes_in_progress").await,
        8
    );
    let n = eventually(10, "the flood's closes to arrive", || {
        let n = flood.iter().filter(|c| closed(c)).count();
        (n == 392).then_some(n)
    });
    assert_eq!(n, 392);
    // One more from the same source gets no slot either.
    refused_at_accept(&b, ONE, &alice).await;

    // The tunnel opened before the flood does not notice it, and another source opens one now.
    echoes(&mut before, b"during the flood").await;
    let mut second = tunnel_from(&b, TWO, &alice, port, &token).await;
    echoes(&mut second, b"and again").await;
    // Closed connections are counted, not recorded one by one: no record of the flood at all.
    assert!(s.audit("_broker").is_empty(), "{:#?}", s.audit("_broker"));

    // When the flood stops, its source connects again.
    drop(flood);
    let mut back = eventually(10, "the source to get a slot again", || {
        futures_lite(connect(
            b.addr,
            &connector(&alice),
            &format!("db01.acme:{port}"),
            Some(&token),
        ))
        .ok()
    });
    assert_eq!(back.status, 200, "{}", back.body);
    echoes(&mut back, b"after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_are_capped_in_all_and_open_tunnels_keep_working() {
    let (s, port) = Setup::with_echo_target(
        BIN,
        "handshake_timeout_seconds = 60\nmax_handshakes_per_source = 8\nmax_handshakes = 16\n",
    );
    let b = Broker::start(&s);
    let alice = s.identity("technician");
    let token = grant(&s, &alice, port);
    let mut before = tunnel_from(&b, ONE, &alice, port, &token).await;

    // Two sources fill every handshake slot between them.
    let from_one = silent(b.addr, 8);
    let mut from_three = Vec::new();
    for _ in 0..8 {
        from_three.push(dial_from(THREE, b.addr).await.unwrap());
    }
    // A third source finds none free, and is closed at once; the open tunnel carries on.
    refused_at_accept(&b, TWO, &alice).await;
    echoes(&mut before, b"while every handshake slot is taken").await;
    assert!(
        from_one.iter().all(|c| !closed(c)),
        "a flood connection was closed early"
    );

    // Slots free up as the flood goes away.
    drop(from_three);
    let mut a = eventually(10, "a handshake slot to free up", || {
        futures_lite(connect_from(
            TWO,
            b.addr,
            &connector(&alice),
            &format!("db01.acme:{port}"),
            Some(&token),
        ))
        .ok()
    });
    assert_eq!(a.status, 200, "{}", a.body);
    echoes(&mut a, b"in").await;
    drop(from_one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_trickles_in_is_answered_408_and_closed_by_the_broker() {
    let (s, _) = Setup::with_echo_target(
        BIN,
        "header_timeout_seconds = 2\nrequest_timeout_seconds = 3\n",
    );
    let b = Broker::start(&s);
    let bob = connector(&s.identity("approver"));

    // A body announced at 100 bytes, sent one byte every 200 ms: 20 s if the broker waited.
    let tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let tls = tls_on(tcp, &bob).await.unwrap();
    let started = Instant::now();
    let (mut rx, mut tx) = tokio::io::split(tls);
    tx.write_all(
        b"POST /v1/requests/r-00000000000000000000000000000000/deny HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..99 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if tx.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 1024];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(read.is_ok(), "the broker did not close a trickling request");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    // The deadline runs from when the connection was ready for the request.
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    trickle.abort();

    // A head that trickles in is cut off by the header timeout.
    let tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let tls = tls_on(tcp, &bob).await.unwrap();
    let started = Instant::now();
    let (mut rx, mut tx) = tokio::io::split(tls);
    let trickle = tokio::spawn(async move {
        for byte in b"GET /v1/requests HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
            .take(200)
        {
            if tx.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = rx.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let took = started.elapsed();
    assert!(read.is_ok(), "the broker did not close a trickling head");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    trickle.abort();
    // A request that arrives in time is served as ever on the same broker.
    let a = request_from(
        ONE,
        b.addr,
        &bob,
        "GET /v1/requests HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
}

/// `acme` with target `db01` and `globex` with target `app`, both echo servers; the support group
/// may connect to either.
fn two_customers(limits: &str) -> (Setup, u16) {
    let s = Setup::init(BIN);
    let echo = echo_server();
    s.write_config(
        &[
            CustomerSpec {
                id: "acme",
                timezone: "UTC",
                policy: &allow_support("acme"),
                targets: vec![("db01", echo.to_string(), vec![])],
            },
            CustomerSpec {
                id: "globex",
                timezone: "UTC",
                policy: &allow_support("globex"),
                targets: vec![("app", echo.to_string(), vec![])],
            },
        ],
        limits,
    );
    (s, echo.port())
}

/// How many refusals of `event` (with `needle` in the reason) the records of `chain` stand for:
/// one per record of them, and the count of each aggregate of them.
fn accounted(s: &Setup, chain: &str, event: &str, needle: &str) -> (u64, usize) {
    let records = s.audit(chain);
    let mut total = 0;
    let mut n = 0;
    for r in &records {
        let reason = r["reason"].as_str().unwrap();
        if r["event"] == event && reason.contains(needle) {
            total += 1;
            n += 1;
        } else if r["event"] == "refusals_aggregated"
            && r["aggregated_event"] == event
            && reason.contains(needle)
        {
            total += r["count"].as_u64().unwrap();
            n += 1;
        }
    }
    (total, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_aggregated_and_the_trail_stays_small_and_verifies() {
    let (s, port) = two_customers(
        "auth_failures_per_minute = 10\nauth_failure_burst = 5\nrefusals_recorded_per_interval = 20\nrefusal_interval_seconds = 2\n",
    );
    let mut b = Broker::start(&s);
    let alice = s.identity("technician");
    let token = grant(&s, &alice, port);
    let tls = connector(&alice);
    // 2,000 CONNECTs under acme's grant to globex's target, four clients at once.
    let wrong = format!("app.globex:{port}");
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (tls, wrong, token, addr) = (tls.clone(), wrong.clone(), token.clone(), b.addr);
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..500 {
                let a = connect(addr, &tls, &wrong, Some(&token)).await.unwrap();
                seen.push(a.status);
            }
            seen
        }));
    }
    for c in clients {
        for status in c.await.unwrap() {
            *statuses.entry(status).or_default() += 1;
        }
    }
    let (forbidden, limited) = (statuses[&403], statuses[&429]);
    assert_eq!(forbidden + limited, 2000, "{statuses:?}");
    // The budget of 5 (and what refilled at 10 a minute meanwhile) got their answer; the rest 429.
    let refilled = started.elapsed().as_secs() / 6 + 1;
    assert!(
        (5..=6 + refilled).contains(&forbidden),
        "{statuses:?} in {:?}",
        started.elapsed()
    );

    // Aggregates are written as their intervals end, without waiting for shutdown.
    s.wait_for_audit("_broker", |r| r["event"] == "refusals_aggregated");
    // The rest at shutdown.
    assert!(b.terminate().success());

    // globex's chain holds one record per refusal that got its answer, and aggregates.
    let globex = s.audit("globex");
    let one_by_one: Vec<_> = globex.iter().filter(|r| r["event"] == "decision").collect();
    assert_eq!(one_by_one.len() as u64, forbidden, "{globex:#?}");
    assert!(one_by_one.iter().all(|r| r["outcome"] == "deny"
        && r["actor"] == "spiffe://sallyport.local/technician/northwind/alice"));
    // Every attempt is accounted for: on acme's chain (the grant's) those refused after the
    // grant was read, the others (429 before anything was read) on `_broker`.
    let needle = "not `globex`";
    let (on_acme, acme_records) = accounted(&s, "acme", "decision", needle);
    let (on_globex, _) = accounted(&s, "globex", "decision", needle);
    let (on_broker, broker_records) =
        accounted(&s, "_broker", "auth_failure", "too many refused attempts");
    assert_eq!(on_acme + on_broker, 2000);
    assert_eq!(on_globex, on_acme);
    assert!(
        acme_records < 30 && broker_records < 20,
        "{acme_records} {broker_records}"
    );
    let total: usize = ["acme", "globex", "_broker"]
        .iter()
        .map(|c| s.audit(c).len())
        .sum();
    assert!(total < 40, "2,000 refusals took {total} records");
    let aggregate = s
        .audit("_broker")
        .into_iter()
        .find(|r| r["event"] == "refusals_aggregated")
        .unwrap();
    assert_eq!(aggregate["outcome"], "deny");
    assert_eq!(aggregate["source_ip"], "127.0.0.1");
    assert!(aggregate["first_seen"].as_str().unwrap() <= aggregate["last_seen"].as_str().unwrap());
    s.assert_trail_verifies();
    // Aggregates are valid OCSF events of the class of what they count, with their count. (Which
    // chains have them depends on how the four clients raced the budget; `_broker` always does.)
    let mut aggregates = 0;
    for chain in ["acme", "_broker"] {
        for e in &s.ocsf_export(chain) {
            if e["metadata"]["event_code"] == "refusals_aggregated" {
                assert!(e["count"].as_u64().unwrap() >= 1, "{e}");
                aggregates += 1;
            }
        }
    }
    assert!(aggregates > 0, "no aggregate was exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_client_behind_a_shared_address_locks_out_no_good_one() {
    let (s, port) = Setup::with_echo_target(
        BIN,
        "auth_failures_per_minute = 1\nauth_failure_burst = 3\n\
         unauthenticated_failures_per_minute = 1\nunauthenticated_failure_burst = 3\n",
    );
    let mut b = Broker::start(&s);
    let alice = s.identity("technician");
    let token = grant(&s, &alice, port);
    let authority = format!("db01.acme:{port}");

    // Behind the NAT, a client with a certificate from another CA fails its handshake ten times:
    // far past its address's budget of three.
    let other_ca = CertificateAuthority::generate(&"sallyport.local".parse().unwrap()).unwrap();
    let mut stranger = technician_from(
        &other_ca,
        &s.root.join("stranger"),
        "mallory",
        &["support"],
        valid_for(3600),
    );
    stranger.ca_pem = alice.ca_pem.clone();
    for _ in 0..10 {
        let r = connect_from(NAT, b.addr, &connector(&stranger), &authority, None).await;
        assert!(r.is_err(), "a certificate from another CA got an answer");
    }
    // A technician with a valid certificate behind the same address is served at once.
    let mut a = tunnel_from(&b, NAT, &alice, port, &token).await;
    echoes(&mut a, b"through the NAT").await;

    // A technician of ours behind the same address sends bogus grants until 429...
    let eve = s.technician("eve", &["support"], valid_for(3600));
    let eve_tls = connector(&eve);
    for i in 0..3 {
        let r = connect_from(NAT, b.addr, &eve_tls, &authority, Some("bogus"))
            .await
            .unwrap();
        assert_eq!(r.status, 407, "attempt {i}: {}", r.body);
    }
    let r = connect_from(NAT, b.addr, &eve_tls, &authority, Some("bogus"))
        .await
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    // ...and only eve is limited: with a good grant she is still refused, alice is not.
    let eve_grant = grant(&s, &eve, port);
    let r = connect_from(NAT, b.addr, &eve_tls, &authority, Some(&eve_grant))
        .await
        .unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    let mut again = tunnel_from(&b, NAT, &alice, port, &token).await;
    echoes(&mut again, b"still through").await;
    echoes(&mut a, b"and the first tunnel too").await;

    // On the trail: the stranger's first failures one by one, the rest as one aggregate of the
    // address, every one of the ten accounted for.
    drop((a, again));
    assert!(b.terminate().success());
    let stranger: Vec<serde_json::Value> = s
        .audit("_broker")
        .into_iter()
        .filter(|r| r["actor"] == "unauthenticated")
        .collect();
    let one_by_one = stranger
        .iter()
        .filter(|r| r["event"] == "auth_failure")
        .count();
    let aggregates: Vec<&serde_json::Value> = stranger
        .iter()
        .filter(|r| r["event"] == "refusals_aggregated")
        .collect();
    assert_eq!((one_by_one, aggregates.len()), (3, 1), "{stranger:#?}");
    let aggregate = aggregates[0];
    assert_eq!(aggregate["count"], 7);
    assert_eq!(aggregate["aggregated_event"], "auth_failure");
    assert_eq!(aggregate["source_ip"], "127.0.0.5");
    assert!(
        aggregate["reason"]
            .as_str()
            .unwrap()
            .contains("past the failure budget")
    );
    s.assert_trail_verifies();
}

/// Runs a future to completion from synchronous code inside a test (for [`eventually`]).
fn futures_lite<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
