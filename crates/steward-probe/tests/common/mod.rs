//! Test fixtures shared by the integration tests: a certificate chain, TLS servers on
//! 127.0.0.1, free ports. Every wait here is bounded so a broken probe fails a test instead of
//! hanging it.

// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use steward_pki::{Authority, IssuedCert, KeySpec, LeafRequest, OffsetDateTime, Usage};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

/// Upper bound on any single wait inside a test fixture.
pub(crate) const FIXTURE_WAIT: Duration = Duration::from_secs(10);

/// A root, an issuing CA under it, and a server leaf for `localhost` / 127.0.0.1.
pub(crate) struct Pki {
    pub(crate) root: Authority,
    pub(crate) inter: Authority,
    pub(crate) leaf: IssuedCert,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let now = OffsetDateTime::now_utc();
        let nb = now - Duration::from_secs(3600);
        let na = now + Duration::from_secs(30 * 86400);
        let root =
            Authority::new_root("Probe Test Root", KeySpec::EcdsaP256, nb, na).expect("root CA");
        let inter = root
            .new_intermediate("Probe Test Issuing CA", KeySpec::EcdsaP256, nb, na, &[])
            .expect("issuing CA");
        let leaf = inter
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
        Pki { root, inter, leaf }
    }

    /// What a correctly configured server sends: leaf, then the issuing CA.
    pub(crate) fn served_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.cert.clone(), self.inter.cert().clone()]
    }

    pub(crate) fn leaf_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf.key_pkcs8.clone()))
    }
}

/// Whether and how the test server asks for a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    Off,
    Optional,
    Required,
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub(crate) fn server_config(
    pki: &Pki,
    versions: &[&'static SupportedProtocolVersion],
    client_auth: ClientAuth,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("protocol versions");
    let builder = match client_auth {
        ClientAuth::Off => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let mut roots = RootCertStore::empty();
            roots.add(pki.root.cert().clone()).expect("root in store");
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            if client_auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(verifier.build().expect("client verifier"))
        }
    };
    Arc::new(
        builder
            .with_single_cert(pki.served_chain(), pki.leaf_key())
            .expect("server cert"),
    )
}

/// What the test TLS server saw of the one connection it served.
#[derive(Debug)]
pub(crate) struct Seen {
    /// The SNI name in the ClientHello, if any.
    pub(crate) sni: Option<String>,
    /// How the server side of the handshake ended.
    pub(crate) handshake: Result<(), String>,
}

/// A TLS server on 127.0.0.1 that serves exactly one connection with `config`, then reports
/// what it saw. After a successful handshake it holds the connection open until the client
/// closes it (bounded), so the client can look for post-handshake alerts.
pub(crate) async fn tls_server(config: Arc<ServerConfig>) -> (u16, JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let task = tokio::spawn(async move {
        let (tcp, _) = tokio::time::timeout(FIXTURE_WAIT, listener.accept())
            .await
            .expect("a client within the fixture wait")
            .expect("accept");
        let start = tokio::time::timeout(
            FIXTURE_WAIT,
            LazyConfigAcceptor::new(Acceptor::default(), tcp),
        )
        .await
        .expect("a ClientHello within the fixture wait")
        .expect("a parseable ClientHello");
        let sni = start.client_hello().server_name().map(str::to_owned);
        let handshake = match start.into_stream(config).await {
            Ok(mut tls) => {
                let mut buf = [0u8; 256];
                for _ in 0..64 {
                    match tokio::time::timeout(FIXTURE_WAIT, tls.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => break,
                    }
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        Seen { sni, handshake }
    });
    (port, task)
}

/// Wait (bounded) for a fixture task's report.
pub(crate) async fn report<T>(task: JoinHandle<T>) -> T {
    tokio::time::timeout(FIXTURE_WAIT, task)
        .await
        .expect("the fixture finished within the fixture wait")
        .expect("the fixture did not panic")
}

/// A port on 127.0.0.1 with nothing listening: bind, note the port, close.
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr").port()
}

pub(crate) fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// PEM armour for DER, so openssl can read what steward-pki made.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
