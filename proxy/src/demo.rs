//! The demo customer's target: a tiny web page that `sallyport serve` with embedded defaults serves on
//! loopback, so the first session works on a fresh machine with nothing else installed.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const PAGE: &str =
    "Hello from acme/web: you reached this demo target through a Sallyport tunnel.\n";

/// The demo customer and target of the embedded defaults.
pub const DEMO: (&str, &str) = ("acme", "web");

/// Moves the demo target `acme/web` of `cfg` to `127.0.0.1:port` (the address it is served on and
/// dialled at, and the port a technician names).
pub fn move_to(cfg: &mut sallyport_config::Config, port: u16) {
    let (customer, target) = DEMO;
    for c in cfg
        .customers
        .iter_mut()
        .filter(|c| c.id.as_str() == customer)
    {
        for t in c.targets.iter_mut().filter(|t| t.id.as_str() == target) {
            t.address = format!("127.0.0.1:{port}");
            t.port = port;
        }
    }
}

/// Serves the demo page on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        PAGE.as_bytes(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(local)
}
