//! TLS and connection failures are classified from real handshakes with rustls servers on
//! 127.0.0.1, each into its event ID, with the presented certificate as evidence.

mod common;

use std::time::Duration;

use common::{Pki, days, free_port, server_config, tls_server};
use steward_agent::events::ids;
use steward_agent::net::{ClientIdentity, Connector, Fault};
use steward_pki::{CertFacts, OffsetDateTime, Revoked};
use steward_proto::{CommunicationProfile, ServerEndpoint};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

fn connector(profile: &CommunicationProfile) -> Connector {
    let mut c = Connector::new(profile, None, Vec::new()).expect("connector");
    c.timeouts.connect = Duration::from_secs(5);
    c.timeouts.handshake = Duration::from_secs(5);
    c
}

async fn fail(connector: &Connector, profile: &CommunicationProfile) -> Fault {
    let server = &profile.servers[0];
    match connector.connect(server).await {
        Ok(_) => panic!("connected to {server:?}, expected a failure"),
        Err(f) => f,
    }
}

#[tokio::test]
async fn a_trusted_server_connects_and_answers() {
    let pki = Pki::new("Good");
    let (port, _server) = tls_server(server_config(&pki, &pki.good_leaf(), None)).await;
    let profile = pki.profile(port);
    let mut conn = connector(&profile)
        .connect(&profile.servers[0])
        .await
        .expect("connect");
    assert_eq!(conn.base_url(), format!("https://127.0.0.1:{port}"));
    let wake = conn.wait(0, Duration::from_secs(5)).await.expect("wait");
    assert_eq!(wake.map(|w| w.reason).as_deref(), Some("tasks"));
    assert!(conn.is_open());
}

#[tokio::test]
async fn a_server_from_another_ca_is_untrusted_and_its_subject_is_quoted() {
    let ours = Pki::new("Platform");
    let theirs = Pki::new("Contoso");
    let (port, _server) = tls_server(server_config(&theirs, &theirs.good_leaf(), None)).await;
    let profile = ours.profile(port);
    let f = fail(&connector(&profile), &profile).await;
    assert_eq!(f.id(), ids::TLS_UNTRUSTED, "{f:?}");
    let text = f.to_string();
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(text.contains("CN=localhost"), "{text}");
    assert!(text.contains("Contoso Issuing CA"), "{text}");
    assert!(text.contains("1 trust anchor"), "{text}");
}

#[tokio::test]
async fn an_expired_server_certificate_is_named_with_its_date() {
    let pki = Pki::new("Expired");
    let now = OffsetDateTime::now_utc();
    let leaf = pki.server_leaf(
        &["localhost"],
        &["127.0.0.1"],
        now - days(30),
        now - days(1),
    );
    let (port, _server) = tls_server(server_config(&pki, &leaf, None)).await;
    let profile = pki.profile(port);
    let f = fail(&connector(&profile), &profile).await;
    assert_eq!(f.id(), ids::TLS_EXPIRED, "{f:?}");
    let text = f.to_string();
    assert!(text.contains("(Expired)"), "{text}");
    assert!(text.contains("the server's certificate"), "{text}");
    assert!(text.contains("expired at"), "{text}");
}

#[tokio::test]
async fn a_certificate_not_valid_yet_is_expired_too_and_blames_the_clock() {
    let pki = Pki::new("Future");
    let now = OffsetDateTime::now_utc();
    let leaf = pki.server_leaf(
        &["localhost"],
        &["127.0.0.1"],
        now + days(2),
        now + days(90),
    );
    let (port, _server) = tls_server(server_config(&pki, &leaf, None)).await;
    let profile = pki.profile(port);
    let f = fail(&connector(&profile), &profile).await;
    assert_eq!(f.id(), ids::TLS_EXPIRED, "{f:?}");
    assert!(f.to_string().contains("NotValidYet"), "{f}");
    assert!(f.to_string().contains("clock"), "{f}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_name_mismatch() {
    let pki = Pki::new("Names");
    let now = OffsetDateTime::now_utc();
    let leaf = pki.server_leaf(&["smp.example.net"], &[], now - days(1), now + days(90));
    let (port, _server) = tls_server(server_config(&pki, &leaf, None)).await;
    let profile = pki.profile(port);
    let f = fail(&connector(&profile), &profile).await;
    assert_eq!(f.id(), ids::TLS_NAME_MISMATCH, "{f:?}");
    let text = f.to_string();
    assert!(text.contains("smp.example.net"), "{text}");
    assert!(text.contains("not for 127.0.0.1"), "{text}");
    assert!(text.contains("NotValidForName"), "{text}");
}

#[tokio::test]
async fn a_revoked_server_certificate_is_revoked() {
    let pki = Pki::new("Revoking");
    let leaf = pki.good_leaf();
    let now = OffsetDateTime::now_utc();
    let serial = CertFacts::from_der(&leaf.cert).expect("facts").serial_raw;
    let crl = pki
        .inter
        .sign_crl(
            &[Revoked {
                serial,
                at: now - days(1),
            }],
            now - days(1),
            now + days(7),
            1,
        )
        .expect("crl");
    let (port, _server) = tls_server(server_config(&pki, &leaf, None)).await;
    let profile = pki.profile(port);
    let c = Connector::new(&profile, None, vec![crl]).expect("connector");
    let f = fail(&c, &profile).await;
    assert_eq!(f.id(), ids::TLS_REVOKED, "{f:?}");
    assert!(f.to_string().contains("(Revoked)"), "{f}");
    assert!(f.to_string().contains("CN=localhost"), "{f}");
}

#[tokio::test]
async fn a_crl_that_does_not_list_the_server_lets_it_through() {
    let pki = Pki::new("NotRevoked");
    let now = OffsetDateTime::now_utc();
    let crl = pki
        .inter
        .sign_crl(&[], now - days(1), now + days(7), 1)
        .expect("crl");
    let (port, _server) = tls_server(server_config(&pki, &pki.good_leaf(), None)).await;
    let profile = pki.profile(port);
    let c = Connector::new(&profile, None, vec![crl]).expect("connector");
    c.connect(&profile.servers[0]).await.expect("connect");
}

#[tokio::test]
async fn a_closed_port_is_refused() {
    let pki = Pki::new("Refused");
    let port = free_port();
    let profile = pki.profile(port);
    let f = fail(&connector(&profile), &profile).await;
    assert_eq!(
        f,
        Fault::Refused {
            addr: format!("127.0.0.1:{port}")
        }
    );
    assert_eq!(f.id(), ids::CONNECTION_REFUSED);
}

#[tokio::test]
async fn an_unknown_name_is_a_dns_failure() {
    let pki = Pki::new("Dns");
    let mut profile = pki.profile(4726);
    profile.servers = vec![ServerEndpoint {
        host: "nonexistent.invalid".to_owned(),
        port: 4726,
        http_port: None,
    }];
    let f = fail(&connector(&profile), &profile).await;
    assert_eq!(f.id(), ids::DNS_FAILED, "{f:?}");
    assert!(f.to_string().contains("nonexistent.invalid"));
}

#[tokio::test]
async fn a_silent_port_is_a_handshake_timeout() {
    let pki = Pki::new("Silent");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _hold = tokio::spawn(async move {
        let conn = listener.accept().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(conn);
    });
    let profile = pki.profile(port);
    let mut c = connector(&profile);
    c.timeouts.handshake = Duration::from_millis(300);
    let f = fail(&c, &profile).await;
    assert_eq!(f.id(), ids::CONNECTION_TIMEOUT, "{f:?}");
    assert!(f.to_string().contains("TLS handshake"), "{f}");
}

#[tokio::test]
async fn a_plain_http_port_is_a_tls_failure_that_says_so() {
    let pki = Pki::new("Plain");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _srv = tokio::spawn(async move {
        if let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 512];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let profile = pki.profile(port);
    let f = fail(&connector(&profile), &profile).await;
    assert_eq!(f.id(), ids::TLS_FAILED, "{f:?}");
    assert!(f.to_string().contains("does not speak TLS"), "{f}");
}

#[tokio::test]
async fn a_server_that_refuses_the_agent_certificate_is_client_rejected() {
    let pki = Pki::new("Platform");
    let other = Pki::new("Recreated");
    // The server now only trusts clients of a CA the agent's certificate is not from (the
    // server's CA was recreated).
    let (port, _server) = tls_server(server_config(&pki, &pki.good_leaf(), Some(&other))).await;
    let profile = pki.profile(port);
    let (cert, chain, key) = pki.client_pem("device-1");
    let identity = ClientIdentity::from_pem(&cert, &chain, &key).expect("identity");
    let c = Connector::new(&profile, Some(identity), Vec::new()).expect("connector");
    // TLS 1.3: the client's half of the handshake completes; the refusal arrives with the
    // first exchange.
    let f = match c.connect(&profile.servers[0]).await {
        Err(f) => f,
        Ok(mut conn) => conn
            .wait(0, Duration::from_secs(5))
            .await
            .expect_err("the server refuses the certificate"),
    };
    assert_eq!(f.id(), ids::TLS_CLIENT_REJECTED, "{f:?}");
    assert!(f.to_string().contains("UnknownCA"), "{f}");
}

#[tokio::test]
async fn a_server_that_trusts_the_agent_certificate_accepts_it() {
    let pki = Pki::new("Platform");
    let (port, _server) = tls_server(server_config(&pki, &pki.good_leaf(), Some(&pki))).await;
    let profile = pki.profile(port);
    let (cert, chain, key) = pki.client_pem("device-1");
    let identity = ClientIdentity::from_pem(&cert, &chain, &key).expect("identity");
    let c = Connector::new(&profile, Some(identity), Vec::new()).expect("connector");
    let mut conn = c.connect(&profile.servers[0]).await.expect("connect");
    conn.wait(0, Duration::from_secs(5))
        .await
        .expect("mTLS exchange");
}

#[test]
fn a_key_from_another_identity_is_refused_before_any_connection() {
    let pki = Pki::new("Keys");
    let (cert, chain, _) = pki.client_pem("a");
    let (_, _, other_key) = pki.client_pem("b");
    assert_eq!(
        ClientIdentity::from_pem(&cert, &chain, &other_key).map(|_| ()),
        Err(steward_agent::net::IdentityError::Mismatch)
    );
}
