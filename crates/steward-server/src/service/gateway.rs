//! Internet gateways in the service layer: join tokens, joining (two certificates), reports,
//! the profile's gateway entries derived from those reports, and trusting the agent identity
//! a gateway vouches for.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use steward_pki::{CertFacts, LeafRequest, OffsetDateTime, Thumbprint, Usage};
use steward_proto::admin::{GatewaySummary, GatewayToken, NewGatewayToken};
use steward_proto::{
    AGENT_CERT_HEADER, CommunicationProfile, ConnectionPath, GatewayEntry, GatewayJoinRequest,
    GatewayJoinResponse, GatewayReport,
};
use steward_store::{Device, GatewayRecord, NewEnrollmentToken, NewGateway, Store, TokenCheck};

use super::{AdminUser, PeerCert, Service, csr_key_spec, forbidden, now, rfc3339};
use crate::ApiFailure;
use crate::pki::{AGENT_DAYS, BACKDATE, LISTENER_DAYS};
use crate::secret::{self, pem};

/// Longest validity of a gateway join token.
const MAX_GATEWAY_TOKEN_SECS: u64 = 30 * 24 * 3600;
/// External names a gateway may ask for.
const MAX_EXTERNAL_NAMES: usize = 8;
/// Thumbprints a gateway may report (current and next; a little room).
const MAX_THUMBPRINTS: usize = 4;
/// Largest forwarded agent certificate (base64 text).
const MAX_FORWARDED_CERT: usize = 16 * 1024;

/// The profile's gateway entries: every unrevoked gateway that has reported, as it reported.
pub(crate) async fn gateway_entries(store: &dyn Store) -> Result<Vec<GatewayEntry>, ApiFailure> {
    Ok(store
        .gateways()
        .await?
        .into_iter()
        .filter(|g| !g.revoked)
        .filter_map(|g| {
            let r = g.report?;
            Some(GatewayEntry {
                name: g.id,
                host: r.external_name,
                port: r.listen_port,
                thumbprints: r.thumbprints,
                trust_anchors_pem: r.trust_anchors_pem,
            })
        })
        .collect())
}

/// Gives a profile its version: the stored one when its content is what was stored last,
/// the next one otherwise (so agents can tell newer from older, across restarts too).
pub(crate) async fn stamp_version(
    store: &dyn Store,
    p: &mut CommunicationProfile,
) -> Result<(), ApiFailure> {
    p.version = 0;
    let content = serde_json::to_string(&*p).map_err(|e| ApiFailure::internal("profile", e))?;
    let hash = secret::token_hash(&content);
    let stored = store.setting("profile_version").await?;
    let version = stored.as_deref().and_then(|v| v.parse::<u64>().ok());
    p.version = match (version, store.setting("profile_hash").await?) {
        (Some(v), Some(h)) if h == hash => v,
        (v, _) => {
            let next = v.unwrap_or(0) + 1;
            store
                .set_setting("profile_version", &next.to_string())
                .await?;
            store.set_setting("profile_hash", &hash).await?;
            tracing::info!(version = next, "communication profile changed");
            next
        }
    };
    Ok(())
}

fn gateway_token_verdict(v: TokenCheck, peer: &str) -> Result<(), ApiFailure> {
    let refuse = |id: &'static str, m: String| {
        tracing::warn!(id, peer, "gateway join refused: {m}");
        Err(forbidden(id, m))
    };
    match v {
        TokenCheck::Usable { .. } => Ok(()),
        TokenCheck::Unknown => refuse(
            "GATEWAY-TOKEN-INVALID",
            "the gateway token is not known to this server (mistyped, forged, an agent \
             enrollment token, or from another server)"
                .to_owned(),
        ),
        TokenCheck::Expired { expires_at } => refuse(
            "GATEWAY-TOKEN-EXPIRED",
            format!(
                "the gateway token expired at {}; make a new one (steward gateway token)",
                rfc3339(expires_at)
            ),
        ),
        TokenCheck::Exhausted { .. } => refuse(
            "GATEWAY-TOKEN-USED",
            "the gateway token has already been used; each token joins one gateway".to_owned(),
        ),
    }
}

/// Splits external names into DNS names and IP addresses, refusing anything else.
fn external_names(names: &[String]) -> Result<(Vec<String>, Vec<std::net::IpAddr>), ApiFailure> {
    let invalid = |m: String| ApiFailure::bad_request("GATEWAY-NAME-INVALID", m);
    if names.is_empty() || names.len() > MAX_EXTERNAL_NAMES {
        return Err(invalid(format!(
            "a gateway needs 1 to {MAX_EXTERNAL_NAMES} external names"
        )));
    }
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for n in names {
        if let Ok(ip) = n.parse() {
            ips.push(ip);
        } else if valid_dns_name(n) {
            dns.push(n.to_ascii_lowercase());
        } else {
            return Err(invalid(format!(
                "{n:?} is neither a DNS name nor an IP address"
            )));
        }
    }
    Ok((dns, ips))
}

fn valid_dns_name(n: &str) -> bool {
    n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn valid_report(r: &GatewayReport) -> Result<(), ApiFailure> {
    let invalid = |m: String| ApiFailure::bad_request("GATEWAY-REPORT-INVALID", m);
    if r.listen_port == 0 {
        return Err(invalid("listen_port 0 is not a port".to_owned()));
    }
    if r.external_name.parse::<std::net::IpAddr>().is_err() && !valid_dns_name(&r.external_name) {
        return Err(invalid(format!(
            "external_name {:?} is neither a DNS name nor an IP address",
            r.external_name
        )));
    }
    if r.thumbprints.is_empty() || r.thumbprints.len() > MAX_THUMBPRINTS {
        return Err(invalid(format!(
            "1 to {MAX_THUMBPRINTS} thumbprints expected, got {}",
            r.thumbprints.len()
        )));
    }
    if let Some(bad) = r
        .thumbprints
        .iter()
        .find(|t| t.len() != 64 || !t.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(invalid(format!("{bad:?} is not a SHA-256 in hex")));
    }
    if r.version.len() > 64 || r.health.len() > 1024 {
        return Err(invalid("version or health is too long".to_owned()));
    }
    Ok(())
}

impl Service {
    /// Replaces the verifier for agent certificates forwarded by gateways (same anchors and
    /// CRLs as the agent site's TLS layer; rebuilt whenever the CRLs are re-signed).
    pub(crate) fn set_forwarded_verifier(&self, v: Arc<dyn ClientCertVerifier>) {
        *self
            .forwarded_verifier
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(v);
    }

    /// Replaces the issuing CA's CRL served to gateways (at each re-signing).
    pub(crate) fn set_issuing_crl(&self, der: &[u8]) {
        *self.issuing_crl.write().unwrap_or_else(|p| p.into_inner()) =
            Some(axum::body::Bytes::copy_from_slice(der));
    }

    /// The issuing CA's current CRL (DER), for an enrolled, unrevoked gateway only: the
    /// gateway fetches it over its own authenticated link, so the DMZ needs no other port.
    pub async fn gateway_crl(
        &self,
        peer: Option<&PeerCert>,
    ) -> Result<axum::body::Bytes, ApiFailure> {
        let Some(p) = peer else {
            return Err(ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "GATEWAY-CERT-REQUIRED",
                "the gateway CRL needs the gateway's client certificate (steward gateway join)",
            ));
        };
        if self.peer_gateway(p).await?.is_none() {
            return Err(Self::not_trusted_to(
                peer,
                "unknown, revoked or replaced identity",
                "fetch the gateway CRL",
            ));
        }
        self.issuing_crl
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                ApiFailure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "GATEWAY-CRL-NOT-READY",
                    "the server has not signed its CRLs yet; try again shortly",
                )
            })
    }

    /// Makes a single-use gateway join token (only its hash is stored).
    pub async fn new_gateway_token(
        &self,
        user: &AdminUser,
        req: NewGatewayToken,
    ) -> Result<GatewayToken, ApiFailure> {
        if req.expires_secs == 0 || req.expires_secs > MAX_GATEWAY_TOKEN_SECS {
            return Err(ApiFailure::bad_request(
                "GATEWAY-TOKEN-REQUEST-INVALID",
                format!("expires_secs must be between 1 and {MAX_GATEWAY_TOKEN_SECS}"),
            ));
        }
        let now = now();
        let expires = now.saturating_add(i64::try_from(req.expires_secs).unwrap_or(i64::MAX));
        let token = secret::new_token().map_err(|e| ApiFailure::internal("making a token", e))?;
        self.store
            .create_gateway_token(&NewEnrollmentToken {
                token_hash: secret::token_hash(&token),
                expires_at: expires,
                max_uses: 1,
                tags: Vec::new(),
                created_at: now,
                created_by: user.username.clone(),
            })
            .await?;
        tracing::info!(user = %user.username, expires_at = %rfc3339(expires), "gateway token created");
        Ok(GatewayToken {
            token,
            expires_at: rfc3339(expires),
            trust_anchors_pem: self.profile().trust_anchors_pem.clone(),
        })
    }

    /// Revokes a gateway: its word is refused at once, its identity goes into the CRLs
    /// (re-signed before this returns), and it leaves the profile.
    pub async fn revoke_gateway(&self, user: &AdminUser, id: &str) -> Result<(), ApiFailure> {
        if self.store.gateway(id).await?.is_none() {
            return Err(ApiFailure::not_found(
                "GATEWAY-NOT-FOUND",
                format!("no gateway has the ID {id:?}"),
            ));
        }
        if self.store.revoke_gateway(id, now()).await? {
            tracing::info!(user = %user.username, gateway = %id, "gateway revoked");
        }
        self.resign_crls().await;
        self.refresh_gateways().await
    }

    /// Every gateway with its latest report.
    pub async fn gateways(&self) -> Result<Vec<GatewaySummary>, ApiFailure> {
        Ok(self
            .store
            .gateways()
            .await?
            .into_iter()
            .map(|g| GatewaySummary {
                id: g.id,
                revoked: g.revoked,
                report: g.report,
                reported_at: g.reported_at.map(rfc3339),
                status: Default::default(),
                problems: Vec::new(),
                pending_devices: Vec::new(),
                pending_total: 0,
            })
            .collect())
    }

    /// A gateway joins: the token is checked, both CSRs are signed (client identity, CN = a
    /// new gateway ID; server certificate for its external names), and the gateway is stored
    /// while the token is consumed atomically.
    pub async fn join_gateway(
        &self,
        req: GatewayJoinRequest,
        peer_addr: &str,
    ) -> Result<GatewayJoinResponse, ApiFailure> {
        let now_t = OffsetDateTime::now_utc();
        let now = now_t.unix_timestamp();
        let hash = secret::token_hash(&req.token);
        gateway_token_verdict(self.store.check_gateway_token(&hash, now).await?, peer_addr)?;
        let (dns, ips) = external_names(&req.external_names)?;
        let csr_invalid = |m: String| ApiFailure::bad_request("GATEWAY-CSR-INVALID", m);
        let client_key = csr_key_spec(&req.client_csr_pem).map_err(csr_invalid)?;
        let server_key = csr_key_spec(&req.server_csr_pem).map_err(csr_invalid)?;
        let id = secret::new_uuid().map_err(|e| ApiFailure::internal("making a gateway ID", e))?;
        let crl_urls = vec![self.config.issuing_crl_url()];
        let client = self
            .pki
            .issuing
            .sign_csr(
                &req.client_csr_pem,
                &LeafRequest {
                    common_name: id.clone(),
                    dns_names: Vec::new(),
                    ip_addrs: Vec::new(),
                    usage: Usage::Client,
                    not_before: now_t - BACKDATE,
                    not_after: now_t + time::Duration::days(AGENT_DAYS),
                    crl_urls: crl_urls.clone(),
                    key: client_key,
                },
            )
            .map_err(|e| csr_invalid(e.to_string()))?;
        let server = self
            .pki
            .issuing
            .sign_csr(
                &req.server_csr_pem,
                &LeafRequest {
                    common_name: req.external_names[0].clone(),
                    dns_names: dns,
                    ip_addrs: ips,
                    usage: Usage::Server,
                    not_before: now_t - BACKDATE,
                    not_after: now_t + time::Duration::days(LISTENER_DAYS),
                    crl_urls,
                    key: server_key,
                },
            )
            .map_err(|e| csr_invalid(e.to_string()))?;
        let facts = CertFacts::from_der(&client)
            .map_err(|e| ApiFailure::internal("reading the issued certificate", e))?;
        let verdict = self
            .store
            .join_gateway(
                &hash,
                now,
                &NewGateway {
                    id: id.clone(),
                    cert_serial: facts.serial.clone(),
                    cert_sha256: Thumbprint::of(&client).sha256_hex(),
                    created_at: now,
                },
            )
            .await?;
        gateway_token_verdict(verdict, peer_addr)?;
        tracing::info!(gateway = %id, peer = peer_addr, names = %req.external_names.join(","), version = %req.version, "gateway joined");
        Ok(GatewayJoinResponse {
            gateway_id: id,
            client_cert_pem: pem("CERTIFICATE", &client),
            server_cert_pem: pem("CERTIFICATE", &server),
            chain_pem: vec![self.pki.issuing_pem.clone()],
            trust_anchors_pem: self.profile().trust_anchors_pem.clone(),
            crl_url: self.config.issuing_crl_url(),
        })
    }

    /// The enrolled, unrevoked gateway a verified client certificate belongs to, if any.
    async fn peer_gateway(&self, peer: &PeerCert) -> Result<Option<GatewayRecord>, ApiFailure> {
        let Some(cn) = &peer.common_name else {
            return Ok(None);
        };
        Ok(self
            .store
            .gateway(cn)
            .await?
            .filter(|g| !g.revoked && g.cert_sha256.eq_ignore_ascii_case(&peer.sha256)))
    }

    fn not_trusted(peer: Option<&PeerCert>, why: &str) -> ApiFailure {
        Self::not_trusted_to(peer, why, "state an agent's identity")
    }

    fn not_trusted_to(peer: Option<&PeerCert>, why: &str, what: &str) -> ApiFailure {
        let who = peer
            .and_then(|p| p.common_name.clone())
            .unwrap_or_else(|| "(no client certificate)".to_owned());
        let m = format!(
            "{who} is not an enrolled gateway ({why}); only an enrolled, unrevoked gateway may \
             {what}"
        );
        tracing::warn!(id = "GATEWAY-NOT-TRUSTED", "{m}");
        forbidden("GATEWAY-NOT-TRUSTED", m)
    }

    /// A gateway's report: stored, and the profile's gateway entries re-derived from every
    /// report (a change bumps the profile version and wakes waiting agents).
    pub async fn gateway_report(
        &self,
        peer: Option<&PeerCert>,
        report: GatewayReport,
    ) -> Result<(), ApiFailure> {
        let Some(p) = peer else {
            return Err(ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "GATEWAY-CERT-REQUIRED",
                "a gateway report needs the gateway's client certificate (steward gateway join)",
            ));
        };
        let Some(gw) = self.peer_gateway(p).await? else {
            return Err(Self::not_trusted(
                peer,
                "unknown, revoked or replaced identity",
            ));
        };
        valid_report(&report)?;
        let changed = gw.report.as_ref() != Some(&report);
        if changed {
            self.store
                .save_gateway_report(&gw.id, &report, now())
                .await?;
            tracing::info!(gateway = %gw.id, external = %report.external_name, port = report.listen_port, health = %report.health, "gateway report");
            self.refresh_gateways().await?;
        }
        Ok(())
    }

    /// Re-derives the profile's gateway entries; bumps the version when they changed.
    pub(crate) async fn refresh_gateways(&self) -> Result<(), ApiFailure> {
        // One refresh at a time, so two reports cannot both stamp the same next version.
        let _guard = self.profile_lock.lock().await;
        let entries = gateway_entries(self.store.as_ref()).await?;
        let current = self.profile();
        if current.gateways == entries {
            return Ok(());
        }
        let mut fresh = (*current).clone();
        fresh.gateways = entries;
        stamp_version(self.store.as_ref(), &mut fresh).await?;
        *self.profile.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        self.waiters.wake_all();
        Ok(())
    }

    /// The device behind an agent-site request: the TLS peer itself, or — when the request
    /// carries [`AGENT_CERT_HEADER`] — the agent an enrolled gateway vouches for, after its
    /// certificate is verified again here against the platform root and the current CRLs.
    /// Also returns the ID of the gateway that vouched, if one did.
    pub async fn agent_identity(
        &self,
        peer: Option<&PeerCert>,
        headers: &HeaderMap,
    ) -> Result<(Device, Option<String>), ApiFailure> {
        let Some(forwarded) = headers.get(AGENT_CERT_HEADER) else {
            return Ok((self.agent_device(peer).await?, None));
        };
        let Some(p) = peer else {
            return Err(Self::not_trusted(None, "no client certificate"));
        };
        let Some(gw) = self.peer_gateway(p).await? else {
            return Err(Self::not_trusted(
                peer,
                "unknown, revoked or replaced identity",
            ));
        };
        let invalid = |m: String| {
            tracing::warn!(id = "GATEWAY-AGENT-CERT-INVALID", gateway = %gw.id, "{m}");
            forbidden("GATEWAY-AGENT-CERT-INVALID", m)
        };
        let text = forwarded
            .to_str()
            .ok()
            .filter(|t| t.len() <= MAX_FORWARDED_CERT)
            .ok_or_else(|| invalid("the forwarded agent certificate header is malformed".into()))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| {
                invalid(format!(
                    "the forwarded agent certificate is not base64: {e}"
                ))
            })?;
        let verifier = self
            .forwarded_verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| invalid("no CRL is loaded yet to check it against".into()))?;
        let leaf = CertificateDer::from(der);
        verifier
            .verify_client_cert(
                &leaf,
                std::slice::from_ref(self.pki.issuing.cert()),
                UnixTime::now(),
            )
            .map_err(|e| invalid(format!("the forwarded agent certificate is refused: {e}")))?;
        let agent = PeerCert::from_der(&leaf)
            .ok_or_else(|| invalid("the forwarded agent certificate does not parse".into()))?;
        Ok((self.agent_device(Some(&agent)).await?, Some(gw.id)))
    }
}

/// The connection path as the server knows it: the agent's own account (which address it
/// used) corrected by the fact of whether a gateway, and which, carried the request.
pub(crate) fn actual_path(claimed: ConnectionPath, via_gateway: Option<String>) -> ConnectionPath {
    match (claimed, via_gateway) {
        (ConnectionPath::Gateway { via, .. }, Some(gateway)) => {
            ConnectionPath::Gateway { gateway, via }
        }
        (ConnectionPath::Lan { .. }, Some(gateway)) => ConnectionPath::Gateway {
            gateway,
            via: "unknown".to_owned(),
        },
        (ConnectionPath::Gateway { via, .. }, None) => ConnectionPath::Lan { server: via },
        (lan, None) => lan,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_names_split_and_refuse() {
        let (dns, ips) =
            external_names(&["GW.example.net".into(), "192.0.2.7".into()]).unwrap_or_default();
        assert_eq!(dns, vec!["gw.example.net".to_owned()]);
        assert_eq!(ips.len(), 1);
        assert!(external_names(&[]).is_err());
        assert!(external_names(&["bad name".into()]).is_err());
        assert!(external_names(&["-x.example".into()]).is_err());
    }

    #[test]
    fn the_path_is_what_carried_the_request() {
        let gw = |g: &str, v: &str| ConnectionPath::Gateway {
            gateway: g.into(),
            via: v.into(),
        };
        let lan = |s: &str| ConnectionPath::Lan { server: s.into() };
        assert_eq!(
            actual_path(gw("x", "a:1"), Some("g".into())),
            gw("g", "a:1")
        );
        assert_eq!(
            actual_path(lan("s:1"), Some("g".into())),
            gw("g", "unknown")
        );
        assert_eq!(actual_path(gw("x", "a:1"), None), lan("a:1"));
        assert_eq!(actual_path(lan("s:1"), None), lan("s:1"));
    }

    #[test]
    fn reports_are_validated() {
        let ok = GatewayReport {
            external_name: "gw.example.net".into(),
            listen_port: 8443,
            thumbprints: vec!["ab".repeat(32)],
            version: "0.1.0".into(),
            health: "ok".into(),
            previous_ports: vec![],
            trust_anchors_pem: vec![],
            probes: vec![],
        };
        assert!(valid_report(&ok).is_ok());
        let mut bad = ok.clone();
        bad.listen_port = 0;
        assert!(valid_report(&bad).is_err());
        let mut bad = ok.clone();
        bad.thumbprints = vec!["xyz".into()];
        assert!(valid_report(&bad).is_err());
        let mut bad = ok;
        bad.external_name = "a b".into();
        assert!(valid_report(&bad).is_err());
    }
}
