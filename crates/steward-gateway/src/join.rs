//! `steward gateway join`: keys made here, CSRs and the token sent, certificates stored.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use steward_pki::{KeySpec, make_csr};
use steward_proto::admin::GatewayToken;
use steward_proto::{ApiError, GatewayJoinRequest, GatewayJoinResponse, error_chain, paths};

use crate::state::{GatewayConfig, GatewayDir, certs_from_pem, pem, write_atomic};
use crate::{GatewayError, VERSION};

/// Where a gateway listens unless told otherwise (the port of the ITMS article).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// Largest token file.
const MAX_TOKEN_FILE: u64 = 1024 * 1024;

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The server's agent site, `https://host:port`.
    pub server_url: String,
    /// The token file written by `steward gateway token` (JSON, with the trust anchors).
    pub token_file: PathBuf,
    /// The gateway's data directory (created; must not hold a joined gateway).
    pub data_dir: PathBuf,
    /// The name agents use to reach the gateway (covered by its server certificate).
    pub external_name: String,
    /// Where `run` will listen.
    pub listen: SocketAddr,
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub(crate) fn roots(anchors_pem: &[String]) -> Result<RootCertStore, GatewayError> {
    let mut roots = RootCertStore::empty();
    for p in anchors_pem {
        for c in certs_from_pem(p.as_bytes()).map_err(GatewayError::Crypto)? {
            roots
                .add(c)
                .map_err(|e| GatewayError::Crypto(format!("a trust anchor: {e}")))?;
        }
    }
    Ok(roots)
}

/// Turns a non-2xx answer into [`GatewayError::Refused`] with the server's ID.
pub(crate) async fn refused(url: &str, resp: reqwest::Response) -> GatewayError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(steward_proto::parse_retry_after);
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ApiError>(&body) {
        Ok(e) => GatewayError::Refused {
            url: url.to_owned(),
            id: e.id,
            message: e.message,
            retry_after,
        },
        Err(_) => GatewayError::Refused {
            url: url.to_owned(),
            id: format!("HTTP-{}", status.as_u16()),
            message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            retry_after,
        },
    }
}

/// Joins the gateway to the server and writes its identity into the data directory.
pub async fn join(opts: &JoinOptions) -> Result<GatewayConfig, GatewayError> {
    if !opts.server_url.starts_with("https://") {
        return Err(GatewayError::UpstreamNotHttps(opts.server_url.clone()));
    }
    let dir = GatewayDir::new(&opts.data_dir);
    if dir.config().exists() {
        return Err(GatewayError::AlreadyJoined(opts.data_dir.clone()));
    }
    std::fs::create_dir_all(&opts.data_dir).map_err(|e| GatewayError::io(&opts.data_dir, e))?;
    let token_path = &opts.token_file;
    let meta = std::fs::metadata(token_path).map_err(|e| GatewayError::io(token_path, e))?;
    if meta.len() > MAX_TOKEN_FILE {
        return Err(GatewayError::Corrupt {
            path: token_path.clone(),
            reason: "larger than a token file can be".to_owned(),
        });
    }
    let text = std::fs::read_to_string(token_path).map_err(|e| GatewayError::io(token_path, e))?;
    let token: GatewayToken = serde_json::from_str(&text).map_err(|e| GatewayError::Corrupt {
        path: token_path.clone(),
        reason: format!("not a gateway token file (steward gateway token): {e}"),
    })?;

    let crypto = |e: steward_pki::Error| GatewayError::Crypto(e.to_string());
    let (client_csr, client_key) =
        make_csr(KeySpec::EcdsaP256, "steward-gateway").map_err(crypto)?;
    let (server_csr, server_key) =
        make_csr(KeySpec::EcdsaP256, &opts.external_name).map_err(crypto)?;

    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Crypto(e.to_string()))?
        .with_root_certificates(roots(&token.trust_anchors_pem)?)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| GatewayError::Crypto(e.to_string()))?;
    let url = format!(
        "{}{}",
        opts.server_url.trim_end_matches('/'),
        paths::GATEWAY_JOIN
    );
    let resp = client
        .post(&url)
        .json(&GatewayJoinRequest {
            token: token.token.clone(),
            client_csr_pem: client_csr,
            server_csr_pem: server_csr,
            external_names: vec![opts.external_name.clone()],
            version: VERSION.to_owned(),
        })
        .send()
        .await
        .map_err(|e| GatewayError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
    if !resp.status().is_success() {
        return Err(refused(&url, resp).await);
    }
    let joined: GatewayJoinResponse = resp.json().await.map_err(|e| GatewayError::Unreachable {
        url: url.clone(),
        reason: format!("the answer is not a join response: {e}"),
    })?;

    write_atomic(
        &dir.identity_key(),
        pem("PRIVATE KEY", &client_key).as_bytes(),
        0o600,
    )?;
    write_atomic(
        &dir.server_key(),
        pem("PRIVATE KEY", &server_key).as_bytes(),
        0o600,
    )?;
    write_atomic(
        &dir.identity_cert(),
        joined.client_cert_pem.as_bytes(),
        0o644,
    )?;
    write_atomic(&dir.server_cert(), joined.server_cert_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.chain(), joined.chain_pem.concat().as_bytes(), 0o644)?;
    write_atomic(
        &dir.anchors(),
        joined.trust_anchors_pem.concat().as_bytes(),
        0o644,
    )?;
    let cfg = GatewayConfig {
        gateway_id: joined.gateway_id,
        server_url: opts.server_url.trim_end_matches('/').to_owned(),
        external_name: opts.external_name.clone(),
        listen: opts.listen,
        previous_listen: Vec::new(),
        crl_url: joined.crl_url,
    };
    // Written last: its presence means the join completed.
    dir.write_config(&cfg)?;
    tracing::info!(gateway = %cfg.gateway_id, server = %cfg.server_url, "gateway joined");
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_plain_http_upstream_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("gateway");
        let opts = JoinOptions {
            // The LAN's plain-HTTP agent site of a server with `protocol = "http"`.
            server_url: "http://127.0.0.1:4729".to_owned(),
            token_file: dir.path().join("absent.token"),
            data_dir: data_dir.clone(),
            external_name: "gw.example.net".to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        let err = join(&opts).await.unwrap_err();
        assert_eq!(err.id(), "GATEWAY-UPSTREAM-NOT-HTTPS", "{err}");
        assert!(err.to_string().contains("http://127.0.0.1:4729"), "{err}");
        assert!(
            !data_dir.exists(),
            "nothing may be written for a refused join"
        );
    }
}
