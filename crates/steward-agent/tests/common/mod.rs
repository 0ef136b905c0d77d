//! Fixtures shared by the agent's integration tests: a test PKI made with steward-pki's
//! `Authority` (real certificates, real dates), rustls servers on 127.0.0.1, profiles.
//! Every wait is bounded so a broken agent fails a test instead of hanging it.

// Each test binary uses a different subset of these fixtures.
#![allow(dead_code, unreachable_pub)]

pub mod running;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use steward_pki::{Authority, IssuedCert, KeySpec, LeafRequest, OffsetDateTime, Usage};
use steward_proto::{CommunicationProfile, ServerEndpoint};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub const FIXTURE_WAIT: Duration = Duration::from_secs(10);

pub fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

/// A root and an issuing CA, like the platform's.
pub struct Pki {
    pub root: Authority,
    pub inter: Authority,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(
            &format!("{name} Root"),
            KeySpec::EcdsaP256,
            now - days(1),
            now + days(3650),
        )
        .expect("root");
        let inter = root
            .new_intermediate(
                &format!("{name} Issuing CA"),
                KeySpec::EcdsaP256,
                now - days(1),
                now + days(1825),
                &[],
            )
            .expect("issuing CA");
        Self { root, inter }
    }

    /// A server certificate with these names and dates.
    pub fn server_leaf(
        &self,
        dns: &[&str],
        ips: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> IssuedCert {
        self.inter
            .issue(&LeafRequest {
                common_name: dns.first().copied().unwrap_or("server").to_owned(),
                dns_names: dns.iter().map(|s| (*s).to_owned()).collect(),
                ip_addrs: ips.iter().map(|s| s.parse().expect("ip")).collect(),
                usage: Usage::Server,
                not_before,
                not_after,
                crl_urls: vec![],
                key: KeySpec::EcdsaP256,
            })
            .expect("server leaf")
    }

    /// A valid server certificate for localhost / 127.0.0.1.
    pub fn good_leaf(&self) -> IssuedCert {
        let now = OffsetDateTime::now_utc();
        self.server_leaf(
            &["localhost"],
            &["127.0.0.1"],
            now - days(1),
            now + days(90),
        )
    }

    /// A client certificate (the agent identity) as PEM: (cert, chain, key).
    pub fn client_pem(&self, cn: &str) -> (String, Vec<String>, String) {
        let now = OffsetDateTime::now_utc();
        let c = self
            .inter
            .issue(&LeafRequest {
                common_name: cn.to_owned(),
                dns_names: vec![],
                ip_addrs: vec![],
                usage: Usage::Client,
                not_before: now - days(1),
                not_after: now + days(365),
                crl_urls: vec![],
                key: KeySpec::EcdsaP256,
            })
            .expect("client leaf");
        (
            pem_cert(&c.cert),
            vec![pem_cert(self.inter.cert())],
            pem::encode(&pem::Pem::new("PRIVATE KEY", c.key_pkcs8.clone())),
        )
    }

    pub fn root_pem(&self) -> String {
        pem_cert(self.root.cert())
    }

    pub fn profile(&self, port: u16) -> CommunicationProfile {
        CommunicationProfile {
            version: 1,
            servers: vec![ServerEndpoint {
                host: "127.0.0.1".to_owned(),
                port,
                http_port: None,
            }],
            protocol: Default::default(),
            trust_anchors_pem: vec![self.root_pem()],
            gateways: Vec::new(),
        }
    }
}

pub fn pem_cert(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server config presenting `leaf` (with `pki`'s issuing CA), optionally requiring client
/// certificates issued under `client_roots`.
pub fn server_config(
    pki: &Pki,
    leaf: &IssuedCert,
    client_roots: Option<&Pki>,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.root.cert().clone()).expect("root");
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .expect("client verifier"),
            )
        }
    };
    Arc::new(
        builder
            .with_single_cert(
                vec![leaf.cert.clone(), pki.inter.cert().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_pkcs8.clone())),
            )
            .expect("server cert"),
    )
}

/// A TLS server on 127.0.0.1 that accepts connections with `config` until dropped; after a
/// successful handshake it answers every request with a fixed JSON 200.
pub async fn tls_server(config: Arc<ServerConfig>) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(mut tls)) =
                    tokio::time::timeout(FIXTURE_WAIT, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let mut buf = [0u8; 4096];
                while let Ok(Ok(n)) = tokio::time::timeout(FIXTURE_WAIT, tls.read(&mut buf)).await {
                    if n == 0 {
                        return;
                    }
                    let body = br#"{"reason":"tasks"}"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    use tokio::io::AsyncWriteExt as _;
                    if tls.write_all(head.as_bytes()).await.is_err()
                        || tls.write_all(body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, task)
}

/// A port with nothing listening on it.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
