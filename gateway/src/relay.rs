//! Relaying an open tunnel: bytes both ways, counted, until a peer closes, the grant expires, the tunnel
//! idles out, or the broker shuts down, whichever comes first.
//!
//! The copy ([`Both`]) reads into one scratch buffer per worker thread and writes straight from it;
//! a direction keeps bytes of its own only while its writer cannot take them. An idle tunnel
//! therefore holds no relay buffer at all, where `tokio::io::copy_bidirectional` keeps two 8 KiB
//! buffers for the tunnel's whole life: with thousands of idle tunnels, that is most of the memory.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::live::Counters;

/// Why a tunnel closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// One side closed and the other finished.
    PeerClosed,
    /// The grant's `exp` passed.
    GrantExpired,
    /// No bytes either way for the idle timeout.
    Idle,
    /// The broker is shutting down.
    Shutdown,
    /// Ended from outside: the grant was revoked or the session was ended through the API.
    Stopped,
    /// A read or write failed.
    Error(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("closed by peer"),
            CloseReason::GrantExpired => f.write_str("grant expired"),
            CloseReason::Idle => f.write_str("idle timeout"),
            CloseReason::Shutdown => f.write_str("broker shutting down"),
            CloseReason::Stopped => f.write_str("ended"),
            CloseReason::Error(e) => write!(f, "relay error: {e}"),
        }
    }
}

/// What a finished relay moved.
#[derive(Debug, Clone)]
pub struct RelayOutcome {
    /// Bytes from the client to the target.
    pub bytes_up: u64,
    /// Bytes from the target to the client.
    pub bytes_down: u64,
    /// Why it ended.
    pub reason: CloseReason,
}

/// Counts bytes written into a stream (delivered, not merely read) and notes when bytes last moved.
struct Metered<S> {
    inner: S,
    /// When recorded: bytes go in only once the capture has room for them. Boxed: most tunnels
    /// are not recorded, and an idle one should hold as little as possible.
    capture: Option<Box<crate::capture::CaptureSink>>,
    counters: Arc<Counters>,
    /// Writes into this stream go technician -> target.
    up: bool,
    epoch: Instant,
}

impl<S> Metered<S> {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.counters.last_moved_ms.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(cap) = &mut self.capture {
            match cap.poll_reserve(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(())) => {
                    return Poll::Ready(Err(std::io::Error::other("session capture failed")));
                }
                Poll::Ready(Ok(())) => {}
            }
        }
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Err(_)), Some(cap)) = (&res, &mut self.capture) {
            cap.release();
        }
        if let Poll::Ready(Ok(n)) = res {
            let c = if self.up {
                &self.counters.up
            } else {
                &self.counters.down
            };
            let moved = n as u64;
            c.fetch_add(moved, Ordering::Relaxed);
            match (&self.counters.customer, self.up) {
                (Some(m), true) => m.bytes_up(moved),
                (Some(m), false) => m.bytes_down(moved),
                (None, _) => {}
            }
            if let Some(cap) = &mut self.capture {
                if n > 0 {
                    cap.send(&buf[..n]);
                } else {
                    cap.release();
                }
            }
            self.touch();
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Bytes read per call: large enough for several TLS records at a time.
const SCRATCH: usize = 64 * 1024;
/// Reads in a row before a relay lets other tasks run.
const TURNS: usize = 32;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// One direction of a relay.
#[derive(Debug, Default)]
struct Flow {
    /// Bytes read but not yet taken by the writer (empty, without capacity, when it keeps up).
    held: Vec<u8>,
    /// How much of `held` was written.
    pos: usize,
    read_done: bool,
    need_flush: bool,
    shut: bool,
}

enum Read {
    Pending,
    Eof,
    Data,
}

impl Flow {
    /// Moves bytes from `src` to `dst` until the source ends (then shuts `dst` down) or either side
    /// must wait.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
    ) -> Poll<std::io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut turns = 0;
        loop {
            if self.pos < self.held.len() {
                match Pin::new(&mut *dst).poll_write(cx, &self.held[self.pos..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.need_flush = true;
                        if self.pos == self.held.len() {
                            self.held = Vec::new();
                            self.pos = 0;
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.read_done {
                turns += 1;
                if turns > TURNS {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                match self.read_and_write(cx, src, dst)? {
                    Read::Data => continue,
                    Read::Eof => self.read_done = true,
                    Read::Pending => {
                        // Nothing to read: push out what the writer buffered, then wait.
                        if self.need_flush {
                            match Pin::new(&mut *dst).poll_flush(cx) {
                                Poll::Ready(Ok(())) => self.need_flush = false,
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                                Poll::Pending => {}
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
            if !self.shut {
                match Pin::new(&mut *dst).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => self.shut = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            return Poll::Ready(Ok(()));
        }
    }

    /// Reads into the thread's scratch buffer and writes what it can straight from there, holding
    /// the rest.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
    ) -> std::io::Result<Read>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        SCRATCH_BUF.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Pending => return Ok(Read::Pending),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                return Ok(Read::Eof);
            }
            let mut written = 0;
            while written < n {
                match Pin::new(&mut *dst).poll_write(cx, &scratch[written..n]) {
                    Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(m)) => written += m,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
            self.need_flush |= written > 0;
            if written < n {
                self.held = scratch[written..n].to_vec();
                self.pos = 0;
            }
            Ok(Read::Data)
        })
    }
}

/// Copies both ways between `a` and `b` until both directions have ended: each source's end shuts
/// the other side's writing down, as `tokio::io::copy_bidirectional` does.
struct Both<'a, A, B> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Flow,
    b_to_a: Flow,
    a_done: bool,
    b_done: bool,
}

impl<A, B> Future for Both<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = std::io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.a_done {
            match this.a_to_b.poll(cx, this.a, this.b) {
                Poll::Ready(Ok(())) => this.a_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if !this.b_done {
            match this.b_to_a.poll(cx, this.b, this.a) {
                Poll::Ready(Ok(())) => this.b_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if this.a_done && this.b_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// Copies both ways between `a` and `b` (see [`Both`]).
async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    Both {
        a,
        b,
        a_to_b: Flow::default(),
        b_to_a: Flow::default(),
        a_done: false,
        b_done: false,
    }
    .await
}

/// What ends a relay besides its peers.
#[derive(Debug, Clone)]
pub struct Ends {
    /// The grant's (or certificate's) end.
    pub deadline: Instant,
    /// No bytes either way for this long.
    pub idle: Duration,
    /// The broker shuts down.
    pub shutdown: CancellationToken,
    /// Ended from outside (revocation, the API).
    pub stop: CancellationToken,
}

/// Relays between `client` and `upstream` until done; never longer than `ends.deadline`. Bytes are
/// counted into `counters` as they are delivered, so they can be read while the tunnel lives, and
/// copied into `capture` when the session is recorded.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    ends: Ends,
    counters: Arc<Counters>,
    capture: Option<Arc<crate::capture::Capture>>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    // `ends` is used in place: copies of its fields would be held for the whole tunnel.
    let epoch = Instant::now();
    let mut client = Metered {
        inner: client,
        capture: capture.as_ref().map(|c| Box::new(c.sink(false))),
        counters: counters.clone(),
        up: false,
        epoch,
    };
    let mut upstream = Metered {
        inner: upstream,
        capture: capture.as_ref().map(|c| Box::new(c.sink(true))),
        counters: counters.clone(),
        up: true,
        epoch,
    };
    // One timer for both time limits (an idle tunnel holds as little as possible): it sleeps until
    // the earlier of the deadline and the idle limit, and looks again when it wakes.
    let time_limits = async {
        loop {
            let idle_at = epoch
                + Duration::from_millis(counters.last_moved_ms.load(Ordering::Relaxed))
                + ends.idle;
            let now = Instant::now();
            if now >= ends.deadline {
                return CloseReason::GrantExpired;
            }
            if now >= idle_at {
                return CloseReason::Idle;
            }
            tokio::time::sleep_until(ends.deadline.min(idle_at)).await;
        }
    };
    let capture_failed = async {
        match &capture {
            Some(c) => c.failed.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        r = copy_both_ways(&mut client, &mut upstream) => match r {
            Ok(_) => CloseReason::PeerClosed,
            Err(e) => CloseReason::Error(e.to_string()),
        },
        why = time_limits => why,
        _ = ends.shutdown.cancelled() => CloseReason::Shutdown,
        _ = ends.stop.cancelled() => CloseReason::Stopped,
        _ = capture_failed => CloseReason::Error("session capture failed".into()),
    };
    RelayOutcome {
        bytes_up: counters.up.load(Ordering::Relaxed),
        bytes_down: counters.down.load(Ordering::Relaxed),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_ways_and_stops_at_deadline() {
        let (mut client, c_end) = tokio::io::duplex(1024);
        let (u_end, mut target) = tokio::io::duplex(1024);
        let deadline = Instant::now() + Duration::from_millis(300);
        let task = tokio::spawn(relay(
            c_end,
            u_end,
            Ends {
                deadline,
                idle: Duration::from_secs(60),
                shutdown: CancellationToken::new(),
                stop: CancellationToken::new(),
            },
            Arc::default(),
            None,
        ));
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        target.read_exact(&mut buf).await.unwrap();
        target.write_all(b"hi!").await.unwrap();
        let mut buf = [0u8; 3];
        client.read_exact(&mut buf).await.unwrap();
        let out = task.await.unwrap();
        assert_eq!(out.reason, CloseReason::GrantExpired);
        assert!(Instant::now() >= deadline);
        assert_eq!((out.bytes_up, out.bytes_down), (5, 3));
    }

    #[tokio::test]
    async fn idle_and_cancel_end_the_relay() {
        let (_client, c_end) = tokio::io::duplex(64);
        let (u_end, _target) = tokio::io::duplex(64);
        let far = Instant::now() + Duration::from_secs(60);
        let out = relay(
            c_end,
            u_end,
            Ends {
                deadline: far,
                idle: Duration::from_millis(50),
                shutdown: CancellationToken::new(),
                stop: CancellationToken::new(),
            },
            Arc::default(),
            None,
        )
        .await;
        assert_eq!(out.reason, CloseReason::Idle);

        let (_client, c_end) = tokio::io::duplex(64);
        let (u_end, _target) = tokio::io::duplex(64);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let out = relay(
            c_end,
            u_end,
            Ends {
                deadline: far,
                idle: Duration::from_secs(60),
                shutdown: cancel,
                stop: CancellationToken::new(),
            },
            Arc::default(),
            None,
        )
        .await;
        assert_eq!(out.reason, CloseReason::Shutdown);
    }

    #[tokio::test]
    async fn bulk_both_ways_through_slow_writers_arrives_whole_and_half_closes() {
        // Small pipes: writers take a little at a time, so the relay must hold bytes.
        let (client, c_end) = tokio::io::duplex(1000);
        let (u_end, target) = tokio::io::duplex(700);
        let task = tokio::spawn(relay(
            c_end,
            u_end,
            Ends {
                deadline: Instant::now() + Duration::from_secs(60),
                idle: Duration::from_secs(60),
                shutdown: CancellationToken::new(),
                stop: CancellationToken::new(),
            },
            Arc::default(),
            None,
        ));
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (mut c_read, mut c_write) = tokio::io::split(client);
        let (mut t_read, mut t_write) = tokio::io::split(target);
        let sent_up = up.clone();
        let writer = tokio::spawn(async move {
            c_write.write_all(&sent_up).await.unwrap();
            // The technician is done sending; the target must see the end of input.
            c_write.shutdown().await.unwrap();
            c_write
        });
        let sent_down = down.clone();
        let target_side = tokio::spawn(async move {
            let mut got = Vec::new();
            t_read.read_to_end(&mut got).await.unwrap();
            // Still answering after the technician's half-close.
            t_write.write_all(&sent_down).await.unwrap();
            t_write.shutdown().await.unwrap();
            got
        });
        let mut got_down = Vec::new();
        c_read.read_to_end(&mut got_down).await.unwrap();
        let _ = writer.await.unwrap();
        assert!(target_side.await.unwrap() == up, "bytes up were changed");
        assert!(got_down == down, "bytes down were changed");
        let out = task.await.unwrap();
        assert_eq!(out.reason, CloseReason::PeerClosed);
        assert_eq!((out.bytes_up, out.bytes_down), (300_000, 200_000));
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (mut client, mut c_end) = tokio::io::duplex(64 * 1024);
        let (mut u_end, mut target) = tokio::io::duplex(16 * 1024);
        let mut flow = Flow::default();
        client.write_all(&[7u8; 40_000]).await.unwrap();
        // The target's pipe takes 16 KiB: the rest is held until it reads.
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(flow.poll(cx, &mut c_end, &mut u_end))).await;
        assert!(polled.is_pending(), "copy ended early");
        assert!(!flow.held.is_empty(), "a slow writer's bytes must be held");
        let mut got = vec![0u8; 40_000];
        let reader = tokio::spawn(async move {
            target.read_exact(&mut got).await.unwrap();
            (target, got)
        });
        let polled = std::future::poll_fn(|cx| match flow.poll(cx, &mut c_end, &mut u_end) {
            Poll::Pending if flow.held.is_empty() => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => panic!("copy ended early: {r:?}"),
        });
        polled.await;
        // Idle again: nothing held, no capacity kept.
        assert_eq!(flow.held.capacity(), 0);
        let (mut target, got) = reader.await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
        drop(client);
        std::future::poll_fn(|cx| flow.poll(cx, &mut c_end, &mut u_end))
            .await
            .unwrap();
        assert_eq!(
            target.read(&mut [0u8; 8]).await.unwrap(),
            0,
            "writer not shut down"
        );
    }
}
