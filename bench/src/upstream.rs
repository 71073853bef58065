//! The plain upstream servers every path ends at: an echo server (latency and idle tunnels), a sink
//! that reads and discards (bulk throughput), and an HTTP origin answering every request with one
//! fixed response (the small exchange of a new session). Plain TCP on loopback, one task per
//! connection.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::HTTP_RESPONSE;

/// What an upstream listener does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Writes back what it reads.
    Echo,
    /// Reads and discards.
    Sink,
    /// Answers each request head with [`HTTP_RESPONSE`].
    Http,
}

/// Binds `addr` and serves `kind` until the process ends.
pub async fn serve(kind: Kind, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                // Out of descriptors, typically: let some close.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let _ = match kind {
                    Kind::Echo => echo(conn).await,
                    Kind::Sink => sink(conn).await,
                    Kind::Http => http(conn).await,
                };
            });
        }
    });
    Ok(())
}

async fn echo(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

async fn sink(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    while conn.read(&mut buf).await? > 0 {}
    Ok(())
}

async fn http(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // Answer each complete request head; keep any partial one.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            conn.write_all(HTTP_RESPONSE).await?;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    }
}
