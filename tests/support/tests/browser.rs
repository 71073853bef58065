//! The test kit's own browser (`sallyport_testkit::browser`): Chromium loads a page from an HTTPS
//! server whose certificate it trusts only by its pinned key, under a strict CSP (its own script
//! runs, axe-core runs, no violation, no console error), fills and submits a form through a 303,
//! takes a screenshot; and a page from a server with another key does not load.
#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on anything unexpected"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use sallyport_certs::pki::{CertificateAuthority, Validity};
use sallyport_testkit::browser::Browser;

const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'";

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Sallyport browser self-test</title>
<link rel="stylesheet" href="/style.css">
<script src="/app.js" defer></script>
</head>
<body>
<main>
<h1>Browser self-test</h1>
<p id="status">loading</p>
<form method="post" action="/submit">
<label for="reason">Reason</label>
<input id="reason" name="reason" type="text">
<button type="submit">Send</button>
</form>
</main>
</body>
</html>
"#;

/// A server certificate for 127.0.0.1 from a CA of its own, which no browser knows.
fn server_cert() -> (String, String) {
    let ca = CertificateAuthority::generate(&"browser.test".parse().unwrap()).unwrap();
    let issued = ca
        .issue_server(
            &["127.0.0.1".to_owned()],
            Validity::from_now(Duration::from_secs(3600)),
        )
        .unwrap();
    (issued.cert_pem, issued.key_pem)
}

/// A tiny HTTPS server on 127.0.0.1 port 0, one thread per connection, `Connection: close`: the
/// page, its stylesheet and script, and a form target answering 303. Runs until the test ends.
fn https_server(cert_pem: &str, key_pem: &str) -> SocketAddr {
    let mut config =
        sallyport_certs::tls::web_server_config((cert_pem, "cert"), (key_pem, "key")).unwrap();
    // This server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                // Chromium opens connections it may never use: do not keep their threads forever.
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let _ = serve(BufReader::new(rustls::StreamOwned::new(conn, tcp)));
            });
        }
    });
    addr
}

/// Answers one request on a TLS connection.
fn serve(
    mut tls: BufReader<rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>>,
) -> std::io::Result<()> {
    let mut request_line = String::new();
    tls.read_line(&mut request_line)?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        if tls.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    tls.read_exact(&mut body)?;
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let thanks;
    let (status, headers, content): (&str, &[(&str, &str)], &str) = match (method, path) {
        ("GET", "/") => (
            "200 OK",
            &[("Content-Type", "text/html; charset=utf-8")],
            PAGE,
        ),
        ("GET", "/style.css") => (
            "200 OK",
            &[("Content-Type", "text/css")],
            "main { max-width: 40rem; margin: auto; font-family: sans-serif; }\n",
        ),
        ("GET", "/app.js") => (
            "200 OK",
            &[("Content-Type", "text/javascript")],
            "document.getElementById('status').textContent = 'script ran';\n",
        ),
        ("POST", "/submit") => {
            thanks = format!("/done?{}", String::from_utf8_lossy(&body));
            ("303 See Other", &[("Location", thanks.as_str())], "")
        }
        ("GET", "/done") => {
            thanks = format!(
                "<!doctype html><html lang=\"en\"><head><title>Done</title></head>\
                 <body><main><h1>Thanks</h1><p id=\"got\">{query}</p></main></body></html>"
            );
            (
                "200 OK",
                &[("Content-Type", "text/html; charset=utf-8")],
                thanks.as_str(),
            )
        }
        _ => (
            "404 Not Found",
            &[("Content-Type", "text/plain")],
            "not found\n",
        ),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Security-Policy: {CSP}\r\nContent-Length: {}\r\nConnection: close\r\n",
        content.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let stream = tls.get_mut();
    stream.write_all(head.as_bytes())?;
    stream.write_all(content.as_bytes())?;
    stream.conn.send_close_notify();
    stream.flush()
}

#[test]
fn browser_trusts_only_the_pinned_server_and_runs_axe_under_a_strict_csp() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = server_cert();
    let cert_file = tmp.path().join("server.pem");
    std::fs::write(&cert_file, &cert).unwrap();
    let trusted = https_server(&cert, &key);
    let (other_cert, other_key) = server_cert();
    let untrusted = https_server(&other_cert, &other_key);

    let mut b = Browser::start(&[cert_file.as_path()]);
    assert!(!b.version().is_empty());
    b.context("alice", 1280, 800);

    let (status, url) = b.goto("alice", &format!("https://{trusted}/"));
    assert_eq!(status, Some(200));
    assert_eq!(url, format!("https://{trusted}/"));
    assert_eq!(b.title("alice"), "Sallyport browser self-test");
    assert_eq!(b.text("alice", "h1"), "Browser self-test");
    // The page's own script ran under script-src 'self'.
    assert_eq!(b.wait_text("alice", "#status", "script ran"), "script ran");
    assert_eq!(b.attr("alice", "html", "lang").as_deref(), Some("en"));

    b.fill("alice", "#reason", "disk full");
    let violations = b.axe("alice");
    assert!(violations.is_empty(), "axe: {violations:#?}");
    let console = b.console("alice");
    assert!(
        console.iter().all(|m| m["type"] != "error"),
        "console: {console:#?}"
    );

    let shot = tmp.path().join("shots/self-test.png");
    b.screenshot("alice", &shot, true);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {}",
        shot.display()
    );

    let (status, url) = b.submit("alice", "button[type=submit]");
    assert_eq!(status, Some(200));
    assert_eq!(url, format!("https://{trusted}/done?reason=disk+full"));
    assert_eq!(b.text("alice", "#got"), "reason=disk+full");

    // Another key, from another unknown CA: the navigation fails on the certificate.
    let refused = b.call(serde_json::json!({
        "op": "goto", "ctx": "alice", "url": format!("https://{untrusted}/"),
    }));
    let error = refused.unwrap_err();
    assert!(error.contains("net::ERR_CERT_AUTHORITY_INVALID"), "{error}");
}
