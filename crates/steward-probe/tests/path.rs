//! The path checker against real listeners on 127.0.0.x: each way fails at the first broken
//! step, under that step's ID, with the evidence; a good way passes every step. (The ping step
//! through a real gateway and server is tested in steward-agent's `tests/doctor_gateway.rs`,
//! which can start both in-process.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ClientAuth, Pki, free_port, server_config};
use rustls::ServerConfig;
use steward_doctor::Severity;
use steward_pki::Thumbprint;
use steward_probe::path::{PathReport, PathTarget, PathsReport, check_path};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const STEP: Duration = Duration::from_secs(5);

fn target(host: &str, port: u16, pki: &Pki, thumbprints: &[String]) -> PathTarget {
    PathTarget {
        host: host.to_owned(),
        port,
        gateway: Some("gw-test".to_owned()),
        thumbprints: thumbprints.to_vec(),
        anchors: vec![pki.root.cert().clone()],
    }
}

fn ids(r: &PathReport) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.id).collect()
}

fn last(r: &PathReport) -> &steward_doctor::Finding {
    r.findings.last().expect("at least one finding")
}

/// A TLS listener on `ip` serving every connection with `config` (handshake, then it reads
/// until the client goes), until the test ends.
async fn tls_listener(ip: &str, config: Arc<ServerConfig>) -> u16 {
    let listener = TcpListener::bind(format!("{ip}:0")).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(Ok(mut tls)) =
                    tokio::time::timeout(common::FIXTURE_WAIT, acceptor.accept(tcp)).await
                {
                    let mut buf = [0u8; 256];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(common::FIXTURE_WAIT, tls.read(&mut buf)).await
                    {
                        if n == 0 {
                            break;
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_name_that_does_not_resolve_stops_at_dns() {
    let pki = Pki::new();
    let r = check_path(
        &target("no-such-gateway.invalid", 8443, &pki, &[]),
        None,
        STEP,
    )
    .await;
    assert_eq!(ids(&r), ["DNS-RESOLVE"]);
    assert_eq!(last(&r).severity, Severity::Error);
    assert!(last(&r).message.contains("no-such-gateway.invalid"));
    assert!(last(&r).remedy.is_some());
}

#[tokio::test]
async fn a_closed_port_is_refused() {
    let pki = Pki::new();
    let port = free_port();
    let r = check_path(&target("127.0.0.1", port, &pki, &[]), None, STEP).await;
    assert_eq!(ids(&r), ["PATH-DNS", "NET-REFUSED"]);
    assert!(last(&r).message.contains(&format!("127.0.0.1:{port}")));
    let all = PathsReport::new("t".into(), Vec::new(), vec![r]);
    assert_eq!((all.verdict, all.exit_code()), (Severity::Error, 2));
}

#[tokio::test]
async fn plain_http_on_the_port_is_not_tls() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let r = check_path(&target("127.0.0.1", port, &pki, &[]), None, STEP).await;
    assert_eq!(ids(&r), ["PATH-DNS", "PATH-TCP", "TLS-NOT-TLS"]);
    assert!(
        last(&r).message.contains("HTTP/1.1 400"),
        "{}",
        last(&r).message
    );
}

/// A server certificate for localhost / 127.0.0.1 from a CA of another name and key.
fn foreign_config() -> Arc<ServerConfig> {
    use steward_pki::{Authority, KeySpec, LeafRequest, OffsetDateTime, Usage};
    let now = OffsetDateTime::now_utc();
    let (nb, na) = (
        now - Duration::from_secs(3600),
        now + Duration::from_secs(90 * 86400),
    );
    let root = Authority::new_root("Contoso Root", KeySpec::EcdsaP256, nb, na).expect("root");
    let leaf = root
        .issue(&LeafRequest {
            common_name: "localhost".to_owned(),
            dns_names: vec!["localhost".to_owned()],
            ip_addrs: vec!["127.0.0.1".parse().expect("ip")],
            usage: Usage::Server,
            not_before: nb,
            not_after: na,
            crl_urls: vec![],
            key: KeySpec::EcdsaP256,
        })
        .expect("leaf");
    Arc::new(
        ServerConfig::builder_with_provider(common::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.cert.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf.key_pkcs8.clone().into()),
            )
            .expect("server cert"),
    )
}

#[tokio::test]
async fn a_certificate_from_a_foreign_ca_is_untrusted() {
    let ours = Pki::new();
    let port = tls_listener("127.0.0.1", foreign_config()).await;
    let r = check_path(&target("127.0.0.1", port, &ours, &[]), None, STEP).await;
    assert_eq!(
        ids(&r),
        ["PATH-DNS", "PATH-TCP", "PATH-TLS", "CERT-UNTRUSTED-ROOT"]
    );
    assert!(
        last(&r).message.contains("UnknownIssuer"),
        "{}",
        last(&r).message
    );
    assert!(
        last(&r).message.contains("CN=localhost"),
        "{}",
        last(&r).message
    );
    assert!(
        last(&r).message.contains("Contoso Root"),
        "{}",
        last(&r).message
    );
}

#[tokio::test]
async fn a_certificate_for_other_names_is_a_name_mismatch() {
    let pki = Pki::new();
    // The leaf covers localhost and 127.0.0.1; the way goes to 127.0.0.2.
    let port = tls_listener(
        "127.0.0.2",
        server_config(&pki, rustls::DEFAULT_VERSIONS, ClientAuth::Off),
    )
    .await;
    let r = check_path(&target("127.0.0.2", port, &pki, &[]), None, STEP).await;
    assert_eq!(
        ids(&r),
        ["PATH-DNS", "PATH-TCP", "PATH-TLS", "CERT-NAME-MISMATCH"]
    );
    assert!(
        last(&r).message.contains("127.0.0.2"),
        "{}",
        last(&r).message
    );
}

#[tokio::test]
async fn a_valid_certificate_with_an_unlisted_thumbprint_is_not_the_gateway() {
    let pki = Pki::new();
    let port = tls_listener(
        "127.0.0.1",
        server_config(&pki, rustls::DEFAULT_VERSIONS, ClientAuth::Required),
    )
    .await;
    let listed = "AB".repeat(32);
    let r = check_path(
        &target("127.0.0.1", port, &pki, std::slice::from_ref(&listed)),
        None,
        STEP,
    )
    .await;
    assert_eq!(
        ids(&r),
        [
            "PATH-DNS",
            "PATH-TCP",
            "PATH-TLS",
            "PATH-CERT",
            // The fixture's leaf is valid for 30 days: a warning, and the checks go on.
            "CERT-EXPIRES-SOON",
            "PATH-THUMBPRINT-UNKNOWN"
        ]
    );
    let presented = Thumbprint::of(&pki.leaf.cert).sha256_hex();
    assert!(
        last(&r).message.contains(&presented),
        "{}",
        last(&r).message
    );
    assert!(last(&r).message.contains(&listed), "{}", last(&r).message);
}

#[tokio::test]
async fn a_good_gateway_passes_every_step_it_can_check_without_an_identity() {
    let pki = Pki::new();
    let port = tls_listener(
        "127.0.0.1",
        server_config(&pki, rustls::DEFAULT_VERSIONS, ClientAuth::Required),
    )
    .await;
    // Listed in lower case, with colons, as an admin may paste it.
    let listed: String = Thumbprint::of(&pki.leaf.cert)
        .sha256_hex()
        .to_lowercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let r = check_path(&target("localhost", port, &pki, &[listed]), None, STEP).await;
    assert_eq!(
        ids(&r),
        [
            "PATH-DNS",
            "PATH-TCP",
            "PATH-TLS",
            "PATH-CERT",
            "CERT-EXPIRES-SOON",
            "PATH-THUMBPRINT",
            "PATH-PING"
        ]
    );
    for f in &r.findings {
        let expected = if f.id == "CERT-EXPIRES-SOON" {
            Severity::Warning
        } else {
            Severity::Ok
        };
        assert_eq!(f.severity, expected, "{f:?}");
    }
    assert!(
        last(&r).message.starts_with("skipped: "),
        "{}",
        last(&r).message
    );
    assert!(
        r.findings[2]
            .message
            .contains("asks for a client certificate")
    );
    let all = PathsReport::new("t".into(), Vec::new(), vec![r]);
    assert_eq!((all.verdict, all.exit_code()), (Severity::Warning, 1));
    assert!(all.to_text("doctor").contains("WARN: 1 of 1 way(s) work"));
}
