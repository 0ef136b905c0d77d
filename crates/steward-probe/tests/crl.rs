//! `fetch_crl` against tiny HTTP servers on 127.0.0.1.

mod common;

use std::time::Duration;

use common::{FIXTURE_WAIT, free_port, localhost, report};
use steward_probe::{ProbeError, Stage, USER_AGENT, fetch_crl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const TIMEOUT: Duration = Duration::from_secs(5);
const LIMIT: usize = 1000;

/// Serve one HTTP request with `response` (raw bytes, written after the request head has been
/// read) and return the request head the client sent.
async fn http_server(response: Vec<u8>) -> (u16, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (mut tcp, _) = tokio::time::timeout(FIXTURE_WAIT, listener.accept())
            .await
            .expect("a client within the fixture wait")
            .expect("accept");
        let head = read_head(&mut tcp).await;
        // The client may hang up early (too large); that is the point of some tests.
        let _ = tcp.write_all(&response).await;
        let _ = tcp.shutdown().await;
        head
    });
    (port, task)
}

async fn read_head(tcp: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..64 {
        match tokio::time::timeout(FIXTURE_WAIT, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                head.extend_from_slice(buf.get(..n).expect("n <= len"));
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn response(status: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn chunked(status: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut r =
        format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .into_bytes();
    for c in chunks {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

#[tokio::test]
async fn serves_bytes_with_host_and_user_agent() {
    let crl: Vec<u8> = (0..=255u8).cycle().take(700).collect();
    let (port, server) = http_server(response(
        "200 OK",
        "Content-Type: application/pkix-crl\r\n",
        &crl,
    ))
    .await;

    let got = fetch_crl(
        &format!("http://127.0.0.1:{port}/pki/root.crl?x=1"),
        TIMEOUT,
        LIMIT,
    )
    .await
    .expect("fetched");

    assert_eq!(got, crl);
    let head = report(server).await;
    assert!(
        head.starts_with("GET /pki/root.crl?x=1 HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("host: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
    assert!(
        lower.contains(&format!(
            "user-agent: {}\r\n",
            USER_AGENT.to_ascii_lowercase()
        )),
        "{head}"
    );
    assert!(USER_AGENT.starts_with("steward-doctor/"));
}

#[tokio::test]
async fn chunked_body_within_limit_is_read() {
    let (port, server) = http_server(chunked("200 OK", &[b"abc", b"defg", b"h"])).await;

    let got = fetch_crl(&format!("http://127.0.0.1:{port}/c.crl"), TIMEOUT, LIMIT)
        .await
        .expect("fetched");

    assert_eq!(got, b"abcdefgh");
    report(server).await;
}

#[tokio::test]
async fn not_found_is_http_404() {
    let (port, server) = http_server(response("404 Not Found", "", b"nope")).await;
    let url = format!("http://127.0.0.1:{port}/missing.crl");

    let err = fetch_crl(&url, TIMEOUT, LIMIT).await.expect_err("404");

    assert_eq!(err, ProbeError::Http { url, status: 404 });
    assert_eq!(err.id(), "HTTP-STATUS");
    assert!(err.remedy().contains("Nothing is published"));
    report(server).await;
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let (port, server) = http_server(response(
        "302 Found",
        "Location: http://elsewhere.invalid/x.crl\r\n",
        b"",
    ))
    .await;
    let url = format!("http://127.0.0.1:{port}/moved.crl");

    let err = fetch_crl(&url, TIMEOUT, LIMIT).await.expect_err("302");

    assert_eq!(err, ProbeError::Http { url, status: 302 });
    assert!(err.remedy().contains("redirect"));
    report(server).await;
}

#[tokio::test]
async fn oversized_content_length_is_rejected_before_reading() {
    let body = vec![b'x'; LIMIT + 1];
    let (port, server) = http_server(response("200 OK", "", &body)).await;
    let url = format!("http://127.0.0.1:{port}/big.crl");

    let err = fetch_crl(&url, TIMEOUT, LIMIT)
        .await
        .expect_err("too large");

    assert_eq!(err, ProbeError::BodyTooLarge { url, limit: LIMIT });
    assert_eq!(err.id(), "HTTP-TOO-LARGE");
    report(server).await;
}

#[tokio::test]
async fn oversized_chunked_body_is_rejected_while_streaming() {
    let chunk = vec![b'y'; 400];
    let (port, server) = http_server(chunked("200 OK", &[&chunk, &chunk, &chunk])).await;
    let url = format!("http://127.0.0.1:{port}/big.crl");

    let err = fetch_crl(&url, TIMEOUT, LIMIT)
        .await
        .expect_err("too large");

    assert_eq!(err, ProbeError::BodyTooLarge { url, limit: LIMIT });
    report(server).await;
}

#[tokio::test]
async fn closed_port_is_refused() {
    let port = free_port();

    let err = fetch_crl(&format!("http://127.0.0.1:{port}/x.crl"), TIMEOUT, LIMIT)
        .await
        .expect_err("refused");

    assert_eq!(
        err,
        ProbeError::Refused {
            addr: localhost(port).to_string()
        }
    );
}

#[tokio::test]
async fn silent_server_is_a_response_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        if let Ok(Ok((mut tcp, _))) = tokio::time::timeout(FIXTURE_WAIT, listener.accept()).await {
            let _ = read_head(&mut tcp).await;
            // Never answer; hold the connection until the client gives up (bounded).
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(FIXTURE_WAIT, tcp.read(&mut buf)).await;
        }
    });

    let err = fetch_crl(
        &format!("http://127.0.0.1:{port}/slow.crl"),
        Duration::from_millis(300),
        LIMIT,
    )
    .await
    .expect_err("timeout");

    let ProbeError::Timeout {
        stage,
        addr,
        after_ms,
    } = &err
    else {
        panic!("expected Timeout, got {err:?}");
    };
    assert_eq!(*stage, Stage::Response);
    assert_eq!(addr, &localhost(port).to_string());
    assert!(*after_ms >= 300, "{after_ms}");
    report(server).await;
}

#[tokio::test]
async fn server_closing_without_answer_is_io() {
    let (port, server) = http_server(Vec::new()).await;

    let err = fetch_crl(&format!("http://127.0.0.1:{port}/x.crl"), TIMEOUT, LIMIT)
        .await
        .expect_err("closed");

    let ProbeError::Io { reason, .. } = &err else {
        panic!("expected Io, got {err:?}");
    };
    assert!(reason.contains("closed the connection"), "{reason}");
    assert_eq!(err.id(), "NET-IO");
    report(server).await;
}

#[tokio::test]
async fn non_http_reply_is_io() {
    let (port, server) = http_server(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()).await;

    let err = fetch_crl(&format!("http://127.0.0.1:{port}/x.crl"), TIMEOUT, LIMIT)
        .await
        .expect_err("garbage");

    let ProbeError::Io { reason, .. } = &err else {
        panic!("expected Io, got {err:?}");
    };
    assert!(reason.contains("not valid HTTP"), "{reason}");
    report(server).await;
}

#[tokio::test]
async fn unknown_host_is_dns() {
    let err = fetch_crl("http://nonexistent.invalid/x.crl", TIMEOUT, LIMIT)
        .await
        .expect_err("dns");
    assert!(
        matches!(&err, ProbeError::Dns { host, .. } if host == "nonexistent.invalid"),
        "{err:?}"
    );
}

#[tokio::test]
async fn only_http_is_fetched() {
    for url in [
        "ldap:///CN=Root,CN=CDP,DC=example,DC=com?certificateRevocationList",
        "https://crl.example.com/root.crl",
        "file:///etc/steward/root.crl",
    ] {
        let err = fetch_crl(url, TIMEOUT, LIMIT).await.expect_err(url);
        assert_eq!(err, ProbeError::UnsupportedScheme(url.to_owned()));
        assert_eq!(err.id(), "PROBE-INPUT");
        assert!(err.to_string().contains("only http://"), "{err}");
    }
}

#[tokio::test]
async fn garbage_url_is_invalid_target() {
    let err = fetch_crl("not a url", TIMEOUT, LIMIT)
        .await
        .expect_err("garbage");
    assert!(matches!(err, ProbeError::InvalidTarget(_)), "{err:?}");
}
