//! Session capture while a tunnel runs, opt-in per target (`record = true`): both directions' bytes,
//! with timestamps, go to `<data_dir>/captures/<customer>/<session>.cap` in the format of the audit
//! crate's `capture` module (which also checks a capture against the trail and reads it back). The
//! file's SHA-256 goes into the session's `tunnel_close` record, so the audit chain covers it.
//!
//! Capture is fail-closed and lossless: a capture that cannot be created refuses the tunnel, one that
//! cannot be written ends it, and one that falls behind slows the tunnel down (bytes are delivered
//! only once the capture has room for them).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sallyport_audit::capture::{FRAME_HEAD, frame_head, header_line};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use sallyport_audit::capture::path_of;

use crate::GatewayError;

/// Frames waiting for the writer; past it the tunnel waits (at most about 64 x 8 KiB per session).
const QUEUE: usize = 64;

struct Frame {
    up: bool,
    micros: u64,
    data: Vec<u8>,
}

/// A session's capture; cheap to share between the two directions.
#[derive(Debug)]
pub struct Capture {
    tx: mpsc::Sender<Frame>,
    epoch: std::time::Instant,
    /// Cancelled when the capture failed: the tunnel must end.
    pub failed: CancellationToken,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.data.len())
    }
}

/// What a finished capture wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

/// The task writing a capture: what it wrote once the capture is dropped, or why it failed.
pub type CaptureWriter = tokio::task::JoinHandle<Result<Written, GatewayError>>;

impl Capture {
    /// Creates the file (never overwriting one) and starts its writer.
    pub fn start(
        path: PathBuf,
        header: &serde_json::Value,
    ) -> Result<(Arc<Capture>, CaptureWriter), GatewayError> {
        let failed_at = |p: &Path| {
            let p = p.to_owned();
            move |e: std::io::Error| GatewayError::Capture {
                path: p,
                message: e.to_string(),
            }
        };
        if let Some(dir) = path.parent() {
            sallyport_ids::private::dir_all(dir).map_err(failed_at(dir))?;
        }
        let mut file = sallyport_ids::private::file_options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(failed_at(&path))?;
        let mut hasher = Sha256::new();
        let head = header_line(header);
        file.write_all(head.as_bytes()).map_err(failed_at(&path))?;
        hasher.update(head.as_bytes());
        let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE);
        let failed = CancellationToken::new();
        let on_error = failed.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            let mut bytes = head.len() as u64;
            let result = (|| -> std::io::Result<(String, u64)> {
                while let Some(f) = rx.blocking_recv() {
                    let head = frame_head(f.up, f.micros, f.data.len() as u32);
                    out.write_all(&head)?;
                    out.write_all(&f.data)?;
                    hasher.update(head);
                    hasher.update(&f.data);
                    bytes += (FRAME_HEAD + f.data.len()) as u64;
                }
                out.flush()?;
                out.get_ref().sync_all()?;
                Ok((hex::encode(hasher.finalize()), bytes))
            })();
            match result {
                Ok((sha256, bytes)) => Ok(Written {
                    path,
                    sha256,
                    bytes,
                }),
                Err(e) => {
                    on_error.cancel();
                    Err(failed_at(&path)(e))
                }
            }
        });
        Ok((
            Arc::new(Capture {
                tx,
                epoch: std::time::Instant::now(),
                failed,
            }),
            writer,
        ))
    }

    /// Records bytes delivered in one direction, waiting for room (tests and simple callers).
    pub async fn record(&self, up: bool, data: &[u8]) {
        let mut sink = self.sink(up);
        if std::future::poll_fn(|cx| sink.poll_reserve(cx))
            .await
            .is_ok()
        {
            sink.send(data);
        }
    }

    /// One direction's writer side, for a stream that must wait until the capture has room.
    pub fn sink(&self, up: bool) -> CaptureSink {
        CaptureSink {
            tx: tokio_util::sync::PollSender::new(self.tx.clone()),
            up,
            epoch: self.epoch,
            failed: self.failed.clone(),
        }
    }
}

/// One direction of a capture: reserve room first, then deliver the bytes and record them.
#[derive(Debug)]
pub struct CaptureSink {
    tx: tokio_util::sync::PollSender<Frame>,
    up: bool,
    epoch: std::time::Instant,
    failed: CancellationToken,
}

impl CaptureSink {
    /// Ready once the capture has room for one more frame; an error once the capture has failed.
    pub fn poll_reserve(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ()>> {
        self.tx.poll_reserve(cx).map(|r| {
            r.map_err(|_| {
                self.failed.cancel();
            })
        })
    }

    /// Records bytes just delivered, into the room reserved before.
    pub fn send(&mut self, data: &[u8]) {
        let frame = Frame {
            up: self.up,
            micros: self.epoch.elapsed().as_micros() as u64,
            data: data.to_vec(),
        };
        if self.tx.send_item(frame).is_err() {
            self.failed.cancel();
        }
    }

    /// Gives back reserved room when nothing was delivered.
    pub fn release(&mut self) {
        self.tx.abort_send();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sallyport_audit::capture::parse;

    #[tokio::test]
    async fn a_capture_round_trips_and_hashes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_of(dir.path(), "acme", "s-1");
        let (cap, writer) =
            Capture::start(path.clone(), &serde_json::json!({"session": "s-1"})).unwrap();
        // Far more frames than the queue holds: the writer keeps up, nothing is lost.
        for _ in 0..QUEUE * 4 {
            cap.record(true, b"x").await;
        }
        cap.record(true, b"GET / HTTP/1.1\r\n\r\n").await;
        cap.record(false, b"HTTP/1.1 200 OK\r\n\r\n").await;
        drop(cap);
        let w = writer.await.unwrap().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(w.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(w.bytes, bytes.len() as u64);
        let (header, frames) = parse(&bytes).unwrap();
        assert_eq!(header["session"], "s-1");
        assert_eq!(frames.len(), QUEUE * 4 + 2);
        let last = &frames[frames.len() - 2..];
        assert!(last[0].up && !last[1].up);
        assert_eq!(last[1].data, b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(frames.windows(2).all(|w| w[0].micros <= w[1].micros));
        // Never overwritten.
        assert!(Capture::start(path, &serde_json::json!({})).is_err());
        assert!(parse(&bytes[..bytes.len() - 3]).is_err());
    }
}
