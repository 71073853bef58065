//! Session capture, opt-in per target (`record = true`): both directions' bytes, with timestamps, go
//! to `<data_dir>/captures/<customer>/<session>.cap`. The file's SHA-256 goes into the session's
//! `tunnel_close` record, so the audit chain covers it; `sallyport audit capture` checks it against
//! that record and extracts it.
//!
//! File format: one header line `SALLYPORT-CAPTURE/1 {json}\n` (session, customer, target, technician,
//! opened), then frames: 1 byte direction (`0` technician -> target, `1` target -> technician), 8 bytes
//! big-endian microseconds since the tunnel opened, 4 bytes big-endian length, the bytes.
//!
//! Capture is fail-closed and lossless: a capture that cannot be created refuses the tunnel, one that
//! cannot be written ends it, and one that falls behind slows the tunnel down (bytes are delivered
//! only once the capture has room for them).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The header line's magic.
pub const MAGIC: &str = "SALLYPORT-CAPTURE/1";
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

/// Where a session's capture lives.
pub fn path_of(data_dir: &Path, customer: &str, session: &str) -> PathBuf {
    data_dir
        .join("captures")
        .join(customer)
        .join(format!("{session}.cap"))
}

impl Capture {
    /// Creates the file (never overwriting one) and starts its writer.
    pub fn start(
        path: PathBuf,
        header: &serde_json::Value,
    ) -> std::io::Result<(
        Arc<Capture>,
        tokio::task::JoinHandle<std::io::Result<Written>>,
    )> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut hasher = Sha256::new();
        let head = format!("{MAGIC} {header}\n");
        file.write_all(head.as_bytes())?;
        hasher.update(head.as_bytes());
        let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE);
        let failed = CancellationToken::new();
        let on_error = failed.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::new(file);
            let mut bytes = head.len() as u64;
            let result = (|| {
                while let Some(f) = rx.blocking_recv() {
                    let mut head = [0u8; 13];
                    head[0] = u8::from(!f.up);
                    head[1..9].copy_from_slice(&f.micros.to_be_bytes());
                    head[9..13].copy_from_slice(&(f.data.len() as u32).to_be_bytes());
                    out.write_all(&head)?;
                    out.write_all(&f.data)?;
                    hasher.update(head);
                    hasher.update(&f.data);
                    bytes += 13 + f.data.len() as u64;
                }
                out.flush()?;
                out.get_ref().sync_all()?;
                Ok(Written {
                    path,
                    sha256: hex::encode(hasher.finalize()),
                    bytes,
                })
            })();
            if result.is_err() {
                on_error.cancel();
            }
            result
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

/// One frame read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Technician -> target.
    pub up: bool,
    /// Microseconds since the tunnel opened.
    pub micros: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Parses a capture file: its header and frames.
pub fn parse(bytes: &[u8]) -> Result<(serde_json::Value, Vec<Read>), String> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let head = std::str::from_utf8(&bytes[..nl]).map_err(|e| e.to_string())?;
    let json = head
        .strip_prefix(MAGIC)
        .ok_or("not a Sallyport capture")?
        .trim();
    let header: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    let mut rest = &bytes[nl + 1..];
    while !rest.is_empty() {
        if rest.len() < 13 {
            return Err("a frame is cut short".into());
        }
        let micros = u64::from_be_bytes(rest[1..9].try_into().map_err(|_| "bad frame")?);
        let len = u32::from_be_bytes(rest[9..13].try_into().map_err(|_| "bad frame")?) as usize;
        if rest.len() < 13 + len {
            return Err("a frame is cut short".into());
        }
        frames.push(Read {
            up: rest[0] == 0,
            micros,
            data: rest[13..13 + len].to_vec(),
        });
        rest = &rest[13 + len..];
    }
    Ok((header, frames))
}

#[cfg(test)]
mod tests {
    use super::*;

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
