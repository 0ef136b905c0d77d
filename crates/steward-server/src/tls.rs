//! rustls server configurations for the agent site (client certificates checked against the
//! platform root and both CRLs) and the console (no client authentication).

use std::sync::{Arc, OnceLock, RwLock};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::ServerConfig;
use steward_pki::{AgentResumption, RevocationDepth};

use crate::ServerError;
use crate::pki::{Crls, ListenerCert, Pki};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn base(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, ServerError> {
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))
}

/// The agent site's session resumption state, made once per server and kept across rebuilds
/// of its configuration (every CRL re-signing, every certificate renewal).
#[derive(Debug, Clone)]
pub(crate) struct Resumption(AgentResumption);

impl Resumption {
    /// A session cache and a ticket key for this server.
    pub(crate) fn new() -> Result<Self, ServerError> {
        AgentResumption::new()
            .map(Self)
            .map_err(|e| ServerError::Tls(format!("the session ticket key: {e}")))
    }
}

/// The agent site: the client certificate is optional at the TLS layer (enrollment has none),
/// but one that is presented must chain to the platform root, carry clientAuth, and not be
/// revoked by either CRL; anything else fails the handshake. Routes other than enrollment
/// then refuse requests that came without one.
pub(crate) fn agent_config(
    cert: &ListenerCert,
    pki: &Pki,
    crls: &Crls,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, ServerError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    // The platform root and, during a root roll's overlap, the previous one.
    for root in pki.client_anchors() {
        roots
            .add(root)
            .map_err(|e| ServerError::Tls(format!("the platform root as trust anchor: {e}")))?;
    }
    // CRL signatures are verified once per verifier, not per handshake (steward-pki).
    let verifier = steward_pki::crl_client_verifier(
        Arc::new(roots),
        crls.all(),
        provider.clone(),
        RevocationDepth::Chain,
        true,
    )
    .map_err(|e| ServerError::Tls(format!("the client certificate verifier: {e}")))?;
    let mut cfg = base(provider)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(|e| ServerError::Tls(format!("the agent-site certificate: {e}")))?;
    // HTTP/2 first: a gateway multiplexes every agent it serves over one connection (one
    // descriptor here instead of one per held long-poll); agents and older gateways that offer
    // only HTTP/1.1 get it. `http::connection` serves by what was negotiated.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    resumption.0.apply(&mut cfg);
    Ok(Arc::new(cfg))
}

/// Verifies agent certificates that gateways forward: the platform root, clientAuth, and
/// both CRLs, exactly as the agent site's handshake does (a certificate is required here).
pub(crate) fn forwarded_verifier(
    pki: &Pki,
    crls: &Crls,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ServerError> {
    let mut roots = RootCertStore::empty();
    for root in pki.client_anchors() {
        roots
            .add(root)
            .map_err(|e| ServerError::Tls(format!("the platform root as trust anchor: {e}")))?;
    }
    steward_pki::crl_client_verifier(
        Arc::new(roots),
        crls.all(),
        provider(),
        RevocationDepth::Chain,
        false,
    )
    .map_err(|e| ServerError::Tls(format!("the forwarded-agent verifier: {e}")))
}

/// What the forwarded-agent verifier built from `pki` and `crls` rests on
/// ([`crate::forwarded::Trust`]); `None`, logged, if a CRL does not parse (then nothing
/// verified before is kept).
pub(crate) fn forwarded_trust(pki: &Pki, crls: &Crls) -> Option<crate::forwarded::Trust> {
    crate::forwarded::Trust::of(
        &pki.client_anchors(),
        std::slice::from_ref(pki.issuing.cert()),
        &crls.all(),
    )
    .inspect_err(|e| tracing::error!(error = %e, "the forwarded-agent verifier's trust"))
    .ok()
}

/// The console and admin API: server authentication only.
pub(crate) fn console_config(cert: &ListenerCert) -> Result<Arc<ServerConfig>, ServerError> {
    let mut cfg = base(provider())?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(|e| ServerError::Tls(format!("the console certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A server configuration that can be replaced while serving (new CRLs): each accepted
/// connection uses the configuration current at its accept.
#[derive(Debug)]
pub(crate) struct SwappableConfig {
    current: RwLock<Arc<ServerConfig>>,
    /// Where the agent site looks up, once per HTTP/2 connection, whether the client
    /// certificate is an enrolled gateway's identity (its stream limit depends on it, see
    /// `http::H2Peer`). Unset on the console, which never negotiates HTTP/2.
    gateways: OnceLock<Arc<dyn steward_store::Store>>,
}

impl SwappableConfig {
    pub(crate) fn new(cfg: Arc<ServerConfig>) -> Self {
        Self {
            current: RwLock::new(cfg),
            gateways: OnceLock::new(),
        }
    }

    /// Sets the store gateway identities are looked up in (once; later calls change nothing).
    pub(crate) fn set_gateway_lookup(&self, store: Arc<dyn steward_store::Store>) {
        let _ = self.gateways.set(store);
    }

    /// The store gateway identities are looked up in, once set.
    pub(crate) fn gateway_lookup(&self) -> Option<Arc<dyn steward_store::Store>> {
        self.gateways.get().cloned()
    }

    pub(crate) fn get(&self) -> Arc<ServerConfig> {
        // Replacing an Arc cannot leave it half-written, so a poisoned lock is still usable.
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set(&self, cfg: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }
}
