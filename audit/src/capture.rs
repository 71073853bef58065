//! Session capture files, the evidence of what went through a recorded tunnel (targets with
//! `record = true`): their format, and their check against the trail.
//!
//! A capture lives at `<data_dir>/captures/<customer>/<session>.cap` ([`path_of`]). Format: one header
//! line `SALLYPORT-CAPTURE/1 {json}\n` (session, customer, target, technician, grant, opened), then
//! frames: 1 byte direction (`0` technician -> target, `1` target -> technician), 8 bytes big-endian
//! microseconds since the tunnel opened, 4 bytes big-endian length, the bytes. The file's SHA-256 is in
//! the session's `tunnel_close` record, so the chain covers it; [`check`] finds the capture, hashes it,
//! compares it with that record and reads its frames.
//!
//! Writing a capture during a tunnel (queues, back-pressure, the writer task) is the gateway's job; it
//! writes with [`header_line`] and [`frame_head`] from here, so both sides share one format.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{AuditError, query, segment};

/// The header line's magic.
pub const MAGIC: &str = "SALLYPORT-CAPTURE/1";

/// Bytes of a frame's head: direction, microseconds, length.
pub const FRAME_HEAD: usize = 13;

/// Where a session's capture lives.
pub fn path_of(data_dir: &Path, customer: &str, session: &str) -> PathBuf {
    data_dir
        .join("captures")
        .join(customer)
        .join(format!("{session}.cap"))
}

/// The header line of a capture, with its newline.
pub fn header_line(header: &serde_json::Value) -> String {
    format!("{MAGIC} {header}\n")
}

/// The head of one frame of `len` bytes, `micros` after the tunnel opened, in direction `up`
/// (technician -> target) or down.
pub fn frame_head(up: bool, micros: u64, len: u32) -> [u8; FRAME_HEAD] {
    let mut head = [0u8; FRAME_HEAD];
    head[0] = u8::from(!up);
    head[1..9].copy_from_slice(&micros.to_be_bytes());
    head[9..13].copy_from_slice(&len.to_be_bytes());
    head
}

/// One frame read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Technician -> target.
    pub up: bool,
    /// Microseconds since the tunnel opened.
    pub micros: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Parses a capture file: its header and frames.
pub fn parse(bytes: &[u8]) -> Result<(serde_json::Value, Vec<Frame>), AuditError> {
    let bad = |why: &str| AuditError::Capture(why.to_owned());
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| bad("no header line"))?;
    let head = std::str::from_utf8(&bytes[..nl]).map_err(|e| AuditError::Capture(e.to_string()))?;
    let json = head
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("not a Sallyport capture"))?
        .trim();
    let header: serde_json::Value =
        serde_json::from_str(json).map_err(|e| AuditError::Capture(e.to_string()))?;
    let mut frames = Vec::new();
    let mut rest = &bytes[nl + 1..];
    while !rest.is_empty() {
        let cut = || bad("a frame is cut short");
        let head = rest.get(..FRAME_HEAD).ok_or_else(cut)?;
        let micros = u64::from_be_bytes(head[1..9].try_into().map_err(|_| bad("bad frame"))?);
        let len = u32::from_be_bytes(head[9..13].try_into().map_err(|_| bad("bad frame"))?);
        let data = rest
            .get(FRAME_HEAD..FRAME_HEAD + len as usize)
            .ok_or_else(cut)?;
        frames.push(Frame {
            up: head[0] == 0,
            micros,
            data: data.to_vec(),
        });
        rest = &rest[FRAME_HEAD + len as usize..];
    }
    Ok((header, frames))
}

/// A capture that matches the SHA-256 its `tunnel_close` record holds.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The customer whose session it is.
    pub customer: String,
    /// The capture file.
    pub path: PathBuf,
    /// Its header.
    pub header: serde_json::Value,
    /// Its frames.
    pub frames: Vec<Frame>,
    /// The seq of the `tunnel_close` record that holds its hash.
    pub close_seq: u64,
}

/// Finds the capture of `session` under the data directory `data`, and checks it against the
/// SHA-256 in the session's `tunnel_close` record on its customer's chain.
pub fn check(data: &Path, session: &str) -> Result<Checked, AuditError> {
    let captures = data.join("captures");
    let found = std::fs::read_dir(&captures)
        .map_err(|e| {
            AuditError::Capture(format!(
                "reading {} (pass the broker's data directory with --data): {e}",
                captures.display()
            ))
        })?
        .filter_map(Result::ok)
        .map(|customer| {
            (
                customer.file_name().to_string_lossy().into_owned(),
                customer.path().join(format!("{session}.cap")),
            )
        })
        .find(|(_, p)| p.exists());
    let Some((customer, path)) = found else {
        return Err(AuditError::Capture(format!(
            "no capture of session `{session}` in {} (only targets with `record = true` are captured)",
            captures.display()
        )));
    };
    let reading = |p: &Path| {
        let p = p.to_owned();
        move |e: std::io::Error| AuditError::Capture(format!("reading {}: {e}", p.display()))
    };
    let bytes = std::fs::read(&path).map_err(reading(&path))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let chain = segment::chain_dir(&data.join("audit"), &customer);
    let closes = query::Filter {
        event: Some("tunnel_close".into()),
        ..Default::default()
    };
    let mut close = None;
    query::each(&chain, &closes, |line| {
        if close.is_none()
            && let Ok(r) = serde_json::from_str::<serde_json::Value>(line)
            && r["session_id"] == session
        {
            close = Some(r);
        }
        Ok(())
    })
    .map_err(reading(&chain))?;
    let close = close.ok_or_else(|| {
        AuditError::Capture(format!(
            "session `{session}` has no tunnel_close record yet (is it still live?)"
        ))
    })?;
    if close["capture_sha256"] != sha.as_str() {
        return Err(AuditError::Capture(format!(
            "{}: the capture was altered: its SHA-256 is {sha}, but the tunnel_close record (seq {}) holds {}",
            path.display(),
            close["seq"],
            close["capture_sha256"]
        )));
    }
    let (header, frames) =
        parse(&bytes).map_err(|e| AuditError::Capture(format!("{}: {e}", path.display())))?;
    Ok(Checked {
        customer,
        path,
        header,
        frames,
        close_seq: close["seq"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_cut_file_is_refused() {
        let mut bytes = header_line(&serde_json::json!({"session": "s-1"})).into_bytes();
        for (up, data) in [(true, &b"GET /"[..]), (false, &b"200 OK"[..])] {
            bytes.extend(frame_head(up, 7, data.len() as u32));
            bytes.extend(data);
        }
        let (header, frames) = parse(&bytes).unwrap();
        assert_eq!(header["session"], "s-1");
        assert_eq!(frames.len(), 2);
        assert!(frames[0].up && !frames[1].up);
        assert_eq!(
            (frames[1].micros, frames[1].data.as_slice()),
            (7, &b"200 OK"[..])
        );
        let err = parse(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");
        assert!(parse(b"HELLO {}\n").is_err());
    }

    #[test]
    fn a_missing_capture_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("captures/acme")).unwrap();
        let err = check(dir.path(), "s-none").unwrap_err();
        assert!(
            err.to_string().contains("no capture of session `s-none`"),
            "{err}"
        );
    }
}
