//! The crash harness: the real broker under a load of tunnels is killed with SIGKILL at random
//! moments, again and again. After each restart every acknowledged record (a tunnel whose client got
//! its 200) is on disk and the whole trail verifies; the harness also proves that kills landed while
//! records were in flight: written by that round, but never acknowledged to any client.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use sallyport_testkit::{Broker, Setup, connect, connector};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");
const CLIENTS: usize = 6;
/// Kills at most, waiting for one to land while records are in flight.
const MAX_KILLS: usize = 100;

/// Opens tunnels in a loop until `stop`; records the session id of every 200 it received.
async fn load(
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    authority: String,
    token: String,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut a) = connect(addr, &tls, &authority, Some(&token)).await else {
            continue;
        };
        if a.status != 200 {
            continue;
        }
        // The 200 is the acknowledgement: its records must survive anything from here on.
        acked
            .lock()
            .unwrap()
            .push(a.header("sallyport-session").unwrap().to_owned());
        let _ = a.stream.write_all(b"x").await;
        let mut b = [0u8; 1];
        let _ = a.stream.read_exact(&mut b).await;
    }
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_record() {
    let (s, port) = Setup::with_echo_target(BIN, "max_connections = 1000\n");
    let (token, _) = s.break_glass(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tls = connector(&s.identity("technician"));
    let authority = format!("db01.acme:{port}");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut rng = rand::rng();
    let (mut kills, mut in_flight) = (0, 0);
    // At least 5 kills, and on until one has provably landed mid-write (bounded). About one kill in
    // ten lands while a record is in flight, so 100 kills make a miss of them all vanishingly rare.
    while kills < 5 || (in_flight == 0 && kills < MAX_KILLS) {
        let mut b = Broker::start(&s);
        let stop = Arc::new(AtomicBool::new(false));
        let before = acked.lock().unwrap().len();
        let chain_before = s.audit("acme").len();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                rt.spawn(load(
                    b.addr,
                    tls.clone(),
                    authority.clone(),
                    token.clone(),
                    acked.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        // Kill once the load is running, at a random moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while acked.lock().unwrap().len() < before + 3 {
            assert!(std::time::Instant::now() < deadline, "no tunnel opened");
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        b.child.kill().unwrap();
        b.child.wait().unwrap();
        kills += 1;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            rt.block_on(c).unwrap();
        }
        // What reached the disk that no client was told about was in flight when the kill landed.
        let acknowledged: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
        // Only this kill's records count: those written since this round began.
        in_flight += s
            .audit("acme")
            .iter()
            .skip(chain_before)
            .filter(|r| {
                r["event"] == "tunnel_open" || (r["event"] == "decision" && r["outcome"] == "allow")
            })
            .filter(|r| {
                r["session_id"]
                    .as_str()
                    .is_some_and(|id| !acknowledged.contains(id))
            })
            .count();
    }
    // One more start quarantines a torn tail, if the last kill left one; then everything verifies.
    let mut b = Broker::start(&s);
    assert!(b.terminate().success());
    s.assert_trail_verifies();
    let records = s.audit("acme");
    let opened: HashSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "tunnel_open")
        .filter_map(|r| r["session_id"].as_str())
        .collect();
    let allowed: HashSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "decision" && r["outcome"] == "allow")
        .filter_map(|r| r["session_id"].as_str())
        .collect();
    let acked = acked.lock().unwrap();
    assert!(acked.len() >= 15, "too little load: {}", acked.len());
    for id in acked.iter() {
        assert!(
            allowed.contains(id.as_str()) && opened.contains(id.as_str()),
            "session {id} was acknowledged but its records are gone"
        );
    }
    assert!(
        in_flight > 0,
        "no kill landed while records were in flight in {kills} kills"
    );
    eprintln!(
        "{kills} kills, {} acknowledged tunnels, {in_flight} records in flight at kills, {} torn tails quarantined",
        acked.len(),
        torn(&s)
    );
}

/// Torn tails quarantined so far.
fn torn(s: &Setup) -> usize {
    s.audit("acme")
        .iter()
        .filter(|r| r["event"] == "torn_tail_quarantined")
        .count()
}
