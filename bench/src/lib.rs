//! The Sallyport benchmark harness (issue 5), as a library behind the `sallyport-bench` binary and
//! the criterion benches: load generation through Sallyport, HAProxy, nginx and directly, the plain
//! upstream servers, the audit and decision benchmarks, what is read from /proc about the process
//! under test, and the report. `bench/run` orchestrates it all.

pub mod audit;
pub mod client;
pub mod decisions;
pub mod latency;
pub mod load;
pub mod measure;
pub mod report;
pub mod stats;
pub mod upstream;

/// The small HTTP exchange of a new session: one request...
pub const HTTP_REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: origin\r\nUser-Agent: sallyport-bench\r\n\r\n";
/// ...and the origin's fixed answer, read whole by the client before it closes.
pub const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n";
/// Size of a latency probe.
pub const PROBE_BYTES: usize = 64;
