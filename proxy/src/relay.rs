//! Relaying an open tunnel: bytes both ways, counted, until a peer closes, the grant expires, the tunnel
//! idles out, or the broker shuts down, whichever comes first.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// When recorded: bytes go in only once the capture has room for them.
    capture: Option<crate::capture::CaptureSink>,
    counters: Arc<Counters>,
    /// Writes into this stream go technician -> target.
    up: bool,
    activity: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Metered<S> {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
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
            c.fetch_add(n as u64, Ordering::Relaxed);
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
    let Ends {
        deadline,
        idle,
        shutdown: cancel,
        stop,
    } = ends;
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let capture_failed = capture
        .as_ref()
        .map_or_else(CancellationToken::new, |c| c.failed.clone());
    let mut client = Metered {
        inner: client,
        capture: capture.as_ref().map(|c| c.sink(false)),
        counters: counters.clone(),
        up: false,
        activity: activity.clone(),
        epoch,
    };
    let mut upstream = Metered {
        inner: upstream,
        capture: capture.as_ref().map(|c| c.sink(true)),
        counters: counters.clone(),
        up: true,
        activity: activity.clone(),
        epoch,
    };
    let idle_watch = async {
        loop {
            let last = epoch + Duration::from_millis(activity.load(Ordering::Relaxed));
            if Instant::now() >= last + idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    };
    let reason = tokio::select! {
        r = copy_both(&mut client, &mut upstream) => match r {
            Ok(_) => CloseReason::PeerClosed,
            Err(e) => CloseReason::Error(e.to_string()),
        },
        _ = tokio::time::sleep_until(deadline) => CloseReason::GrantExpired,
        _ = idle_watch => CloseReason::Idle,
        _ = cancel.cancelled() => CloseReason::Shutdown,
        _ = stop.cancelled() => CloseReason::Stopped,
        _ = capture_failed.cancelled() => CloseReason::Error("session capture failed".into()),
    };
    RelayOutcome {
        bytes_up: counters.up.load(Ordering::Relaxed),
        bytes_down: counters.down.load(Ordering::Relaxed),
        reason,
    }
}

/// Size of a relay buffer: two TLS records, so bulk transfers take few system calls.
const BUF_SIZE: usize = 32 * 1024;
/// Free buffers kept per thread for the next tunnel that has bytes to move.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_back(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    });
}

/// One direction of a tunnel. It holds a buffer only while bytes are in flight, so an idle tunnel
/// holds none (tokio's `copy_bidirectional` keeps 8 KiB per direction for the tunnel's life).
#[derive(Default)]
struct OneWay {
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
}

impl OneWay {
    /// Same contract as tokio's copy: read, write all, flush when the reader stalls, and shut the
    /// writer down after the reader's end of file.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<std::io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                let buf = self.buf.get_or_insert_with(take_buffer);
                let mut rb = ReadBuf::new(&mut buf[..]);
                match reader.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing in flight: the buffer goes back until bytes arrive.
                        if let Some(b) = self.buf.take() {
                            give_back(b);
                        }
                        if self.need_flush {
                            std::task::ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_deref() else {
                    return Poll::Ready(Err(std::io::Error::other("relay buffer missing")));
                };
                let n =
                    std::task::ready!(writer.as_mut().poll_write(cx, &buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.read_done {
                if let Some(b) = self.buf.take() {
                    give_back(b);
                }
                std::task::ready!(writer.as_mut().poll_flush(cx))?;
                std::task::ready!(writer.as_mut().poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Copies both ways until both directions reach end of file (each shuts its writer down when its
/// reader ends), or either fails.
async fn copy_both<A, B>(a: &mut A, b: &mut B) -> std::io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = OneWay::default();
    let mut b_to_a = OneWay::default();
    std::future::poll_fn(|cx| {
        if !a_to_b.done
            && let Poll::Ready(r) = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))
        {
            r?;
            a_to_b.done = true;
        }
        if !b_to_a.done
            && let Poll::Ready(r) = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))
        {
            r?;
            b_to_a.done = true;
        }
        if a_to_b.done && b_to_a.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
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
    async fn an_idle_direction_holds_no_buffer() {
        let (mut client, mut c_end) = tokio::io::duplex(64 * 1024);
        let (mut u_end, mut target) = tokio::io::duplex(64 * 1024);
        let mut way = OneWay::default();
        client.write_all(&[7u8; 40_000]).await.unwrap();
        let polled = std::future::poll_fn(|cx| {
            Poll::Ready(way.poll_copy(cx, Pin::new(&mut c_end), Pin::new(&mut u_end)))
        })
        .await;
        assert!(polled.is_pending(), "copy ended early");
        assert!(way.buf.is_none(), "an idle direction kept its buffer");
        let mut got = vec![0u8; 40_000];
        target.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
        drop(client);
        std::future::poll_fn(|cx| way.poll_copy(cx, Pin::new(&mut c_end), Pin::new(&mut u_end)))
            .await
            .unwrap();
        assert_eq!(
            target.read(&mut got).await.unwrap(),
            0,
            "writer not shut down"
        );
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
}
