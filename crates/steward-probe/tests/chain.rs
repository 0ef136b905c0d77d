//! `fetch_chain` against real sockets on 127.0.0.1: rustls servers built from a steward-pki
//! chain, and plain TCP servers that are not TLS at all.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ClientAuth, Pki, free_port, localhost, report, server_config, tls_server};
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use steward_probe::{ProbeError, Stage, fetch_chain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn captures_leaf_and_intermediate_in_order_with_sni() {
    let pki = Pki::new();
    let (port, server) = tls_server(server_config(&pki, &[&TLS13, &TLS12], ClientAuth::Off)).await;

    let chain = fetch_chain("127.0.0.1", port, Some("localhost"), TIMEOUT)
        .await
        .expect("chain");

    assert_eq!(
        chain.certs,
        pki.served_chain(),
        "exactly leaf then intermediate"
    );
    assert_eq!(chain.addr, localhost(port));
    assert_eq!(chain.protocol, "TLSv1_3");
    assert!(
        chain.cipher_suite.starts_with("TLS13_"),
        "{}",
        chain.cipher_suite
    );
    assert_eq!(chain.client_auth, None);
    let seen = report(server).await;
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    assert_eq!(seen.handshake, Ok(()));
}

#[tokio::test]
async fn no_sni_when_none_and_host_name_resolves() {
    let pki = Pki::new();
    let (port, server) = tls_server(server_config(&pki, &[&TLS13], ClientAuth::Off)).await;

    // A host *name* goes through DNS (localhost), yet with `sni: None` no SNI is sent.
    let chain = fetch_chain("localhost", port, None, TIMEOUT)
        .await
        .expect("chain");

    assert_eq!(chain.certs.len(), 2);
    assert_eq!(report(server).await.sni, None);
}

#[tokio::test]
async fn tls12_is_offered_and_reported() {
    let pki = Pki::new();
    let (port, server) = tls_server(server_config(&pki, &[&TLS12], ClientAuth::Off)).await;

    let chain = fetch_chain("127.0.0.1", port, Some("localhost"), TIMEOUT)
        .await
        .expect("chain");

    assert_eq!(chain.protocol, "TLSv1_2");
    assert!(
        chain.cipher_suite.starts_with("TLS_ECDHE_ECDSA_"),
        "{}",
        chain.cipher_suite
    );
    assert_eq!(chain.certs, pki.served_chain());
    assert_eq!(report(server).await.handshake, Ok(()));
}

/// TLS 1.3 with a required client certificate: the client's side of the handshake completes
/// before the server judges the (empty) certificate, so the chain IS captured, and the
/// server's `certificate_required` alert arrives only afterwards; the probe records it.
#[tokio::test]
async fn tls13_required_client_cert_still_yields_chain_and_names_the_rejection() {
    let pki = Pki::new();
    let (port, server) = tls_server(server_config(&pki, &[&TLS13], ClientAuth::Required)).await;

    let chain = fetch_chain("127.0.0.1", port, Some("localhost"), TIMEOUT)
        .await
        .expect("TLS 1.3: the handshake completes on the client side");

    assert_eq!(chain.certs, pki.served_chain());
    let auth = chain
        .client_auth
        .expect("the server asked for a client cert");
    assert_eq!(auth.acceptable_issuers.len(), 1, "rustls names its root CA");
    let rejected = auth.rejected.expect("the server rejects the missing cert");
    assert!(rejected.contains("certificate_required"), "{rejected}");
    let seen = report(server).await;
    let server_err = seen.handshake.expect_err("server refused");
    assert!(
        server_err.contains("peer sent no certificates"),
        "{server_err}"
    );
}

/// TLS 1.2 with a required client certificate: the server says no before the client's
/// handshake finishes, so the result is a Tls error that carries the context.
#[tokio::test]
async fn tls12_required_client_cert_is_a_tls_error_with_context() {
    let pki = Pki::new();
    let (port, server) = tls_server(server_config(&pki, &[&TLS12], ClientAuth::Required)).await;

    let err = fetch_chain("127.0.0.1", port, Some("localhost"), TIMEOUT)
        .await
        .expect_err("TLS 1.2: rejected inside the handshake");

    let ProbeError::Tls { addr, detail } = &err else {
        panic!("expected Tls, got {err:?}");
    };
    assert_eq!(addr, &localhost(port).to_string());
    assert!(
        detail.contains("requested a client certificate"),
        "{detail}"
    );
    assert!(detail.contains("presented 2 certificate(s)"), "{detail}");
    assert_eq!(err.id(), "TLS-HANDSHAKE");
    assert!(report(server).await.handshake.is_err());
}

/// Optional client auth: the request is recorded, and no rejection follows.
#[tokio::test]
async fn optional_client_cert_is_recorded_without_rejection() {
    let pki = Pki::new();
    let (port, server) = tls_server(server_config(&pki, &[&TLS13], ClientAuth::Optional)).await;

    let chain = fetch_chain("127.0.0.1", port, Some("localhost"), TIMEOUT)
        .await
        .expect("chain");

    let auth = chain.client_auth.expect("requested");
    assert_eq!(auth.rejected, None);
    drop(chain.certs);
    assert_eq!(report(server).await.handshake, Ok(()));
}

/// A server whose certificate does not match its key: the chain is not trusted, but the
/// handshake signature is still checked, so the impostor is caught.
#[tokio::test]
async fn handshake_signature_is_verified_even_though_trust_is_not() {
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl ResolvesServerCert for Fixed {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    let pki = Pki::new();
    let other = Pki::new();
    // The real chain, signed with someone else's key.
    let wrong_key = common::provider()
        .key_provider
        .load_private_key(other.leaf_key())
        .expect("key");
    let config = rustls::ServerConfig::builder_with_provider(common::provider())
        .with_protocol_versions(&[&TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(Arc::new(CertifiedKey::new(
            pki.served_chain(),
            wrong_key,
        )))));
    let (port, server) = tls_server(Arc::new(config)).await;

    let err = fetch_chain("127.0.0.1", port, Some("localhost"), TIMEOUT)
        .await
        .expect_err("impostor");

    let ProbeError::Tls { detail, .. } = &err else {
        panic!("expected Tls, got {err:?}");
    };
    assert!(detail.contains("does not hold"), "{detail}");
    let _ = report(server).await;
}

/// Accept one connection on a fresh port, read what the client sends (its ClientHello), then
/// run `reply` on the socket.
async fn raw_server<F, Fut>(reply: F) -> (u16, tokio::task::JoinHandle<()>)
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        if let Ok(Ok((tcp, _))) =
            tokio::time::timeout(common::FIXTURE_WAIT, listener.accept()).await
        {
            reply(tcp).await;
        }
    });
    (port, task)
}

/// Read the ClientHello so closing the socket sends FIN, not RST (unread data makes Linux reset).
async fn read_hello(tcp: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(common::FIXTURE_WAIT, tcp.read(&mut buf)).await;
}

#[tokio::test]
async fn plain_http_server_is_not_tls() {
    let (port, server) = raw_server(|mut tcp| async move {
        read_hello(&mut tcp).await;
        let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let _ = tcp.shutdown().await;
    })
    .await;

    let err = fetch_chain("127.0.0.1", port, None, TIMEOUT)
        .await
        .expect_err("not TLS");

    let ProbeError::NotTls { addr, detail } = &err else {
        panic!("expected NotTls, got {err:?}");
    };
    assert_eq!(addr, &localhost(port).to_string());
    assert!(detail.contains("\"HTTP/1.1 400 Bad Request\""), "{detail}");
    assert_eq!(err.id(), "TLS-NOT-TLS");
    report(server).await;
}

#[tokio::test]
async fn ssh_banner_is_not_tls() {
    // An SSH server speaks first, without waiting for the client.
    let (port, server) = raw_server(|mut tcp| async move {
        let _ = tcp.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        read_hello(&mut tcp).await;
    })
    .await;

    let err = fetch_chain("127.0.0.1", port, None, TIMEOUT)
        .await
        .expect_err("not TLS");

    let ProbeError::NotTls { detail, .. } = &err else {
        panic!("expected NotTls, got {err:?}");
    };
    assert!(
        detail.contains("SSH banner (\"SSH-2.0-OpenSSH_9.6\")"),
        "{detail}"
    );
    report(server).await;
}

#[tokio::test]
async fn close_after_client_hello_is_a_tls_error() {
    let (port, server) = raw_server(|mut tcp| async move {
        read_hello(&mut tcp).await;
        let _ = tcp.shutdown().await;
    })
    .await;

    let err = fetch_chain("127.0.0.1", port, None, TIMEOUT)
        .await
        .expect_err("closed");

    let ProbeError::Tls { detail, .. } = &err else {
        panic!("expected Tls, got {err:?}");
    };
    assert!(
        detail.contains("connection closed during handshake"),
        "{detail}"
    );
    report(server).await;
}

#[tokio::test]
async fn silent_listener_is_a_handshake_timeout() {
    let (port, server) = raw_server(|mut tcp| async move {
        read_hello(&mut tcp).await;
        // Say nothing; hold the socket until the client gives up.
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(common::FIXTURE_WAIT, tcp.read(&mut buf)).await;
    })
    .await;

    let err = fetch_chain("127.0.0.1", port, None, Duration::from_millis(300))
        .await
        .expect_err("silence");

    let ProbeError::Timeout {
        stage,
        addr,
        after_ms,
    } = &err
    else {
        panic!("expected Timeout, got {err:?}");
    };
    assert_eq!(*stage, Stage::Handshake);
    assert_eq!(addr, &localhost(port).to_string());
    assert!(*after_ms >= 300, "{after_ms}");
    assert_eq!(err.id(), "NET-TIMEOUT");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    report(server).await;
}

#[tokio::test]
async fn closed_port_is_refused() {
    let port = free_port();

    let err = fetch_chain("127.0.0.1", port, None, TIMEOUT)
        .await
        .expect_err("nothing listening");

    assert_eq!(
        err,
        ProbeError::Refused {
            addr: localhost(port).to_string()
        }
    );
    assert_eq!(err.id(), "NET-REFUSED");
    assert!(err.remedy().contains("listening"));
}

#[tokio::test]
async fn unknown_host_is_dns() {
    let err = fetch_chain("nonexistent.invalid", 443, None, TIMEOUT)
        .await
        .expect_err("no such name");

    let ProbeError::Dns { host, reason } = &err else {
        panic!("expected Dns, got {err:?}");
    };
    assert_eq!(host, "nonexistent.invalid");
    assert!(!reason.is_empty());
    assert_eq!(err.id(), "DNS-RESOLVE");
}

#[tokio::test]
async fn bad_sni_is_an_input_error() {
    let err = fetch_chain("127.0.0.1", free_port(), Some("not a name"), TIMEOUT)
        .await
        .expect_err("bad SNI");
    assert!(matches!(err, ProbeError::InvalidTarget(_)), "{err:?}");
}

#[tokio::test]
async fn port_zero_is_an_input_error() {
    let err = fetch_chain("127.0.0.1", 0, None, TIMEOUT)
        .await
        .expect_err("port 0");
    assert!(matches!(err, ProbeError::InvalidTarget(_)), "{err:?}");
}

/// The chain type is the one callers (and steward-pki) use.
#[test]
fn certificate_type_is_shared() {
    let _: fn(steward_probe::CertificateDer<'static>) -> CertificateDer<'static> = |c| c;
}
