//! Internet gateways in the service layer: join tokens, joining (two certificates), reports,
//! the profile's gateway entries derived from those reports, and trusting the agent identity
//! a gateway vouches for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, StatusCode};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use steward_pki::{CertFacts, LeafRequest, OffsetDateTime, Thumbprint, Usage};
use steward_proto::admin::{
    GatewayProblem, GatewayStatus, GatewaySummary, GatewayToken, NewGatewayToken,
};
use steward_proto::{
    AGENT_CERT_HEADER, AGENT_CERT_SHA256_HEADER, CommunicationProfile, ConnectionPath, FailureKind,
    GatewayCertStatus, GatewayEntry, GatewayJoinRequest, GatewayJoinResponse, GatewayRenewRequest,
    GatewayRenewResponse, GatewayReport, GatewayReportResponse, ProbeTarget,
};
use steward_store::{
    Device, DeviceFailures, GatewayCert, GatewayCertRole, GatewayCerts, GatewayRecord,
    NewEnrollmentToken, NewGateway, Store, TokenCheck,
};

use super::{AdminUser, PeerCert, Service, csr_key_spec, forbidden, now, rfc3339};
use crate::ApiFailure;
use crate::lifecycle::EXPIRY_WARNING_SECS;
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
/// Previous ports a gateway may report (a change in progress, and room for a second one).
const MAX_PREVIOUS_PORTS: usize = 4;
/// Imported roots a gateway may report.
const MAX_TRUST_ANCHORS: usize = 4;
/// Largest imported root (PEM text).
const MAX_ANCHOR_PEM: usize = 16 * 1024;
/// Self-probe outcomes a gateway may report (one per address it was asked to test, with room).
const MAX_PROBES: usize = 16;
/// A renewed gateway certificate not taken this long after issuance is abandoned: a running
/// gateway takes a renewal within the same second, `steward gateway cert renew` by the next
/// report (the identity) or at once (the staged server certificate).
const ABANDONED_AFTER_SECS: i64 = 15 * 60;
/// Devices named in a gateway's pending list (the total is always given).
const PENDING_SHOWN: u32 = 50;
/// A gateway reports on start and every minute; three missed reports mean it is down or
/// cannot reach the server, while one late report (a restart, a slow CRL fetch) is not news.
pub(crate) const REPORT_STALE_SECS: i64 = 180;
/// Agents' failures count against a gateway for an hour: the agent sets a failing gateway
/// aside for that long (by default) before trying it again, so an older failure has been
/// retried since and its outcome reported anew.
pub(crate) const FAILURE_WINDOW_SECS: i64 = 3600;

/// The profile's gateway entries: every unrevoked gateway that has reported, as it reported.
pub(crate) async fn gateway_entries(store: &dyn Store) -> Result<Vec<GatewayEntry>, ApiFailure> {
    Ok(store
        .gateways()
        .await?
        .into_iter()
        .filter(|g| !g.revoked)
        .filter_map(|g| Some(entry_of(&g.id, g.report.as_ref()?)))
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
    if r.previous_ports.len() > MAX_PREVIOUS_PORTS || r.previous_ports.contains(&0) {
        return Err(invalid(format!(
            "previous_ports: at most {MAX_PREVIOUS_PORTS} ports, none 0"
        )));
    }
    if r.trust_anchors_pem.len() > MAX_TRUST_ANCHORS
        || r.trust_anchors_pem.iter().any(|p| p.len() > MAX_ANCHOR_PEM)
    {
        return Err(invalid(format!(
            "trust_anchors_pem: at most {MAX_TRUST_ANCHORS} roots of at most {MAX_ANCHOR_PEM} bytes"
        )));
    }
    if r.probes.len() > MAX_PROBES {
        return Err(invalid(format!("at most {MAX_PROBES} probes")));
    }
    if let Some(p) = r
        .probes
        .iter()
        .find(|p| p.target.host.len() > 253 || p.detail.len() > 2048 || p.at.len() > 64)
    {
        return Err(invalid(format!(
            "the probe of {}:{} has an over-long host, detail or time",
            p.target.host.chars().take(64).collect::<String>(),
            p.target.port
        )));
    }
    Ok(())
}

/// The profile entry a gateway's report makes: what agents are told. A change here must reach
/// them (a new profile version); the rest of a report (health, probes) is status only.
fn entry_of(id: &str, r: &GatewayReport) -> GatewayEntry {
    GatewayEntry {
        name: id.to_owned(),
        host: r.external_name.clone(),
        port: r.listen_port,
        thumbprints: r.thumbprints.clone(),
        trust_anchors_pem: r.trust_anchors_pem.clone(),
    }
}

/// The stable ID for a failed self-probe, by what failed.
fn probe_problem_id(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Timeout => "GATEWAY-PORT-FILTERED",
        FailureKind::Refused => "GATEWAY-PORT-REFUSED",
        FailureKind::Dns => "GATEWAY-NAME-UNRESOLVED",
        FailureKind::Tls => "GATEWAY-PROBE-TLS",
        FailureKind::WrongPeer => "GATEWAY-PROBE-WRONG-PEER",
        FailureKind::Http => "GATEWAY-PROBE-HTTP",
    }
}

/// How a failure kind reads in a message.
fn kind_text(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Dns => "name does not resolve",
        FailureKind::Refused => "connection refused",
        FailureKind::Timeout => "no answer (filtered)",
        FailureKind::Tls => "TLS failed",
        FailureKind::WrongPeer => "something other than this gateway answered",
        FailureKind::Http => "request refused",
    }
}

fn problem(id: &str, message: String) -> GatewayProblem {
    GatewayProblem {
        id: id.to_owned(),
        message,
    }
}

/// Why a gateway is red, each reason with its ID and evidence; empty when it is green.
/// `entry` is its entry in the current profile, `failures` the devices' failed-attempts
/// reports received within [`FAILURE_WINDOW_SECS`].
pub(crate) fn gateway_problems(
    g: &GatewayRecord,
    entry: Option<&GatewayEntry>,
    failures: &[DeviceFailures],
    now: i64,
) -> Vec<GatewayProblem> {
    if g.revoked {
        return vec![problem(
            "GATEWAY-REVOKED",
            "this gateway's identity is revoked: the server refuses it and it is not in the \
             profile, so no agent is sent to it"
                .to_owned(),
        )];
    }
    let (Some(report), Some(at)) = (&g.report, g.reported_at) else {
        return vec![problem(
            "GATEWAY-NEVER-REPORTED",
            "this gateway joined but has never reported, so agents are not told about it; \
             start it (steward gateway run) and check that it reaches the server's agent site"
                .to_owned(),
        )];
    };
    let mut out = Vec::new();
    let age = now.saturating_sub(at);
    if age > REPORT_STALE_SECS {
        out.push(problem(
            "GATEWAY-REPORT-STALE",
            format!(
                "the last report arrived at {} ({age} s ago; one is expected every minute): \
                 the gateway is down or cannot reach the server",
                rfc3339(at)
            ),
        ));
    }
    if report.health != "ok" {
        out.push(problem(
            "GATEWAY-UNHEALTHY",
            format!("the gateway reports: {}", report.health),
        ));
    }
    // Only addresses agents may still use count: the profile's, and the previous ports the
    // gateway still answers on during a port change. Probes of an address given up since
    // are history.
    let current = entry.map(|e| (e.host.as_str(), e.port));
    let in_use = |t: &ProbeTarget| {
        current.is_some_and(|(host, port)| {
            t.host.eq_ignore_ascii_case(host)
                && (t.port == port || report.previous_ports.contains(&t.port))
        })
    };
    for p in report.probes.iter().filter(|p| in_use(&p.target)) {
        if let Some(kind) = p.failure {
            out.push(problem(
                probe_problem_id(kind),
                format!(
                    "the gateway's test of its own address {}:{} failed ({}): {} (at {})",
                    p.target.host,
                    p.target.port,
                    kind_text(kind),
                    p.detail,
                    p.at
                ),
            ));
        }
    }
    if let Some((host, port)) = current
        && !report
            .probes
            .iter()
            .any(|p| p.target.host.eq_ignore_ascii_case(host) && p.target.port == port)
    {
        out.push(problem(
            "GATEWAY-PROBE-PENDING",
            format!(
                "{host}:{port}, the address agents are given, has not been tested from the \
                 gateway's side yet; the gateway tests it and reports within a minute"
            ),
        ));
    }
    // Agents' failures to reach this gateway, one problem per address.
    let mut by_address: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&'static str>, u64)> =
        BTreeMap::new();
    let entry_address = entry.map(|e| format!("{}:{}", e.host, e.port));
    // A device whose last connection came through this gateway got through after its
    // failures (a restart, a moment's outage): those are history, not a fault to show.
    let through_us = format!("gateway {} via ", g.id);
    for f in failures.iter().filter(|f| {
        !f.connection_path
            .as_deref()
            .is_some_and(|p| p.starts_with(&through_us))
    }) {
        for a in &f.attempts {
            let ours = a.gateway.as_deref() == Some(g.id.as_str())
                || (a.gateway.is_none() && entry_address.as_deref() == Some(a.address.as_str()));
            if ours {
                let slot = by_address.entry(a.address.as_str()).or_default();
                slot.0.insert(f.name.as_str());
                slot.1.insert(kind_text(a.kind));
                slot.2 = slot.2.saturating_add(u64::from(a.count));
            }
        }
    }
    for (address, (devices, kinds, count)) in by_address {
        let names: Vec<&str> = devices.iter().take(5).copied().collect();
        let more = devices.len().saturating_sub(names.len());
        out.push(problem(
            "GATEWAY-AGENTS-FAILING",
            format!(
                "{} device(s) failed to reach {address} in the last hour ({}; {count} \
                 attempt(s)): {}{}",
                devices.len(),
                kinds.into_iter().collect::<Vec<_>>().join(", "),
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        ));
    }
    out
}

impl Service {
    /// Replaces the verifier for agent certificates forwarded by gateways (same anchors and
    /// CRLs as the agent site's TLS layer; rebuilt whenever the CRLs are re-signed). What the
    /// previous one verified is kept only when `trust` is the same (crate::forwarded's
    /// invariant): the hourly re-signing keeps it, a revocation does not.
    pub(crate) fn set_forwarded_verifier(
        &self,
        v: Arc<dyn ClientCertVerifier>,
        trust: Option<crate::forwarded::Trust>,
    ) {
        let mut slot = self.forwarded.write().unwrap_or_else(|p| p.into_inner());
        let next = crate::forwarded::Forwarded::after(slot.as_deref(), v, trust);
        *slot = Some(Arc::new(next));
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

    /// Every gateway with its latest report, green or red with the reasons, and the devices
    /// that do not hold its current entry yet.
    pub async fn gateways(&self) -> Result<Vec<GatewaySummary>, ApiFailure> {
        let now = now();
        let profile = self.profile();
        let failures = self
            .store
            .failures_since(now.saturating_sub(FAILURE_WINDOW_SECS))
            .await?;
        let mut out = Vec::new();
        for g in self.store.gateways().await? {
            let entry = profile.gateways.iter().find(|e| e.name == g.id);
            let mut problems = gateway_problems(&g, entry, &failures, now);
            let (pending_devices, pending_total) = match entry {
                Some(_) => self.pending(g.entry_since_version).await?,
                None => (Vec::new(), 0),
            };
            let certificates = if g.revoked {
                Vec::new()
            } else {
                cert_statuses(&self.store.gateway_certs(&g.id).await?, now)
            };
            for c in &certificates {
                if let Some(w) = &c.warning {
                    problems.push(problem("CERT-EXPIRING-SOON", w.clone()));
                }
            }
            let renewal = g
                .report
                .as_ref()
                .filter(|r| !g.revoked && r.thumbprints.len() > 1)
                .map(|r| {
                    format!(
                        "next certificate staged ({}), {pending_total} agent(s) pending; the \
                         gateway serves it once every agent holds its thumbprint",
                        r.thumbprints[1]
                    )
                });
            out.push(GatewaySummary {
                id: g.id,
                revoked: g.revoked,
                report: g.report,
                reported_at: g.reported_at.map(rfc3339),
                status: if problems.is_empty() {
                    GatewayStatus::Green
                } else {
                    GatewayStatus::Red
                },
                problems,
                pending_devices,
                pending_total,
                certificates,
                renewal,
            });
        }
        Ok(out)
    }

    /// Active devices that do not hold profile `since` yet, as `name (id)` (capped), and how
    /// many.
    async fn pending(&self, since: u64) -> Result<(Vec<String>, u64), ApiFailure> {
        let lag = self
            .store
            .devices_behind_profile(since, PENDING_SHOWN)
            .await?;
        Ok((
            lag.devices
                .into_iter()
                .map(|(id, name)| format!("{name} ({id})"))
                .collect(),
            lag.total,
        ))
    }

    /// What a reporting gateway is told: the address agents are given for it (to test from
    /// its side), and whether every active device holds that entry yet.
    async fn report_answer(&self, id: &str) -> Result<GatewayReportResponse, ApiFailure> {
        let profile = self.profile();
        let Some(entry) = profile.gateways.iter().find(|e| e.name == id) else {
            // Without an entry no agent can hold it: nothing to test, nothing to close.
            return Ok(GatewayReportResponse::default());
        };
        let since = self
            .store
            .gateway(id)
            .await?
            .map_or(0, |g| g.entry_since_version);
        let (pending_devices, pending_total) = self.pending(since).await?;
        Ok(GatewayReportResponse {
            probe: vec![ProbeTarget {
                host: entry.host.clone(),
                port: entry.port,
            }],
            all_agents_current: pending_total == 0,
            pending_devices,
            pending_total,
            ..GatewayReportResponse::default()
        })
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
        let server_facts = CertFacts::from_der(&server)
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
        // Recorded so renewals know the names, the keys to refuse and when each is due.
        self.store
            .record_gateway_join(
                &id,
                &normalized_names(&req.external_names),
                &recorded(&facts),
                &recorded(&server_facts),
                now,
            )
            .await?;
        tracing::info!(gateway = %id, peer = peer_addr, names = %req.external_names.join(","), version = %req.version, "gateway joined");
        Ok(GatewayJoinResponse {
            gateway_id: id,
            client_cert_pem: pem("CERTIFICATE", &client),
            server_cert_pem: pem("CERTIFICATE", &server),
            chain_pem: vec![self.pki.live_issuing_pem()],
            trust_anchors_pem: self.profile().trust_anchors_pem.clone(),
            crl_url: self.config.issuing_crl_url(),
        })
    }

    /// The enrolled, unrevoked gateway a verified client certificate belongs to, if any.
    async fn peer_gateway(&self, peer: &PeerCert) -> Result<Option<GatewayRecord>, ApiFailure> {
        let g = match gateway_identity(self.store.as_ref(), peer).await? {
            None => return Ok(None),
            Some(GatewayIdentity::Current(g)) => return Ok(Some(g)),
            Some(GatewayIdentity::Renewed(g)) => g,
        };
        let Some(cn) = &peer.common_name else {
            return Ok(None);
        };
        // Its renewed identity, used for the first time: that use is the confirmation, and
        // retires (revokes) the previous identity.
        if self
            .store
            .promote_gateway_cert(cn, GatewayCertRole::Identity, &peer.sha256, now())
            .await?
        {
            tracing::info!(id = "GATEWAY-IDENTITY-RENEWED", gateway = %cn, serial = %peer.serial, old_serial = %g.cert_serial, "the gateway uses its renewed identity; the previous one is revoked");
            self.resign_crls().await;
        }
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
    /// report (a change bumps the profile version and wakes waiting agents). The answer says
    /// what to probe and whether every agent holds the gateway's current entry.
    pub async fn gateway_report(
        &self,
        peer: Option<&PeerCert>,
        report: GatewayReport,
    ) -> Result<GatewayReportResponse, ApiFailure> {
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
        let certs = self.promote_served(&gw.id, &report).await?;
        // Judged against the published profile rather than the stored report, so a refresh
        // that failed after the report was stored is retried at the next report.
        let entry = entry_of(&gw.id, &report);
        let entry_changed = !self.profile().gateways.contains(&entry);
        let noteworthy = gw.report.as_ref().is_none_or(|old| {
            entry_of(&gw.id, old) != entry
                || old.health != report.health
                || old.previous_ports != report.previous_ports
        });
        // Stored every time, unchanged or not: the report time is the gateway's heartbeat
        // (GATEWAY-REPORT-STALE) and the probes' outcomes change from report to report. One
        // small write a minute per gateway.
        self.store
            .save_gateway_report(&gw.id, &report, now())
            .await?;
        if noteworthy {
            tracing::info!(gateway = %gw.id, external = %report.external_name, port = report.listen_port, previous_ports = ?report.previous_ports, health = %report.health, "gateway report");
        }
        if entry_changed {
            self.refresh_gateways().await?;
        }
        let mut answer = self.report_answer(&gw.id).await?;
        let (renew_identity, renew_server) = self.renewal_due_for(&certs, &report, now());
        answer.renew_identity = renew_identity;
        answer.renew_server = renew_server;
        Ok(answer)
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
        // A new or changed entry reaches agents only with this version: a port change is
        // complete when every device acknowledges it. Recorded before the profile is
        // published, so no report can be answered from the new profile with the old mark.
        for e in fresh
            .gateways
            .iter()
            .filter(|e| !current.gateways.contains(e))
        {
            self.store
                .set_gateway_entry_since(&e.name, fresh.version)
                .await?;
        }
        *self.profile.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        self.waiters.wake_all();
        Ok(())
    }

    /// The device behind an agent-site request: the TLS peer itself, or — when the request
    /// carries [`AGENT_CERT_HEADER`] — the agent an enrolled gateway vouches for, after its
    /// certificate is verified again here against the platform root and the current CRLs.
    /// A gateway told so ([`steward_proto::AGENT_CERT_KNOWN_HEADER`]) may name an agent's certificate by its
    /// thumbprint ([`AGENT_CERT_SHA256_HEADER`]) instead: it is found only if this server
    /// verified it whole under the current CRLs, and is answered 412
    /// `GATEWAY-AGENT-CERT-UNKNOWN` otherwise.
    pub async fn agent_identity(
        &self,
        peer: Option<&PeerCert>,
        headers: &HeaderMap,
    ) -> Result<AgentCaller, ApiFailure> {
        let whole = headers.get(AGENT_CERT_HEADER);
        let named = headers.get(AGENT_CERT_SHA256_HEADER);
        if whole.is_none() && named.is_none() {
            return Ok(AgentCaller {
                device: self.agent_device(peer).await?,
                gateway: None,
                learned: false,
            });
        }
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
        let verifier = self
            .forwarded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| invalid("no CRL is loaded yet to check it against".into()))?;
        let stats = &self.admission().stats;
        let now = UnixTime::now();
        // The whole certificate wins when both are sent: it can be verified.
        let (agent, learned) = if let Some(whole) = whole {
            let text = whole
                .to_str()
                .ok()
                .filter(|t| t.len() <= MAX_FORWARDED_CERT)
                .ok_or_else(|| {
                    invalid("the forwarded agent certificate header is malformed".into())
                })?;
            stats.forwarded_whole.fetch_add(1, Ordering::Relaxed);
            let agent = verifier
                .verify(text, std::slice::from_ref(self.pki.issuing.cert()), now)
                .map_err(invalid)?;
            (agent, true)
        } else {
            let thumbprint = named
                .and_then(|v| v.to_str().ok())
                .and_then(|t| Thumbprint::parse_sha256_hex(t.trim()))
                .ok_or_else(|| {
                    invalid(format!(
                        "{AGENT_CERT_SHA256_HEADER} is not a SHA-256 thumbprint (64 hex digits)"
                    ))
                })?;
            let Some(agent) = verifier.known(&thumbprint, now) else {
                stats.forwarded_unknown.fetch_add(1, Ordering::Relaxed);
                // A step of the protocol, not a fault: after a restart or a revocation
                // every persistent agent's next request comes here once.
                tracing::debug!(id = "GATEWAY-AGENT-CERT-UNKNOWN", gateway = %gw.id, "a forwarded thumbprint this server has not verified; the gateway sends the certificate whole");
                return Err(ApiFailure::new(
                    StatusCode::PRECONDITION_FAILED,
                    "GATEWAY-AGENT-CERT-UNKNOWN",
                    "this server has not verified the agent certificate the thumbprint names \
                     (restarted, or a certificate was revoked since): send it whole",
                ));
            };
            stats
                .forwarded_by_thumbprint
                .fetch_add(1, Ordering::Relaxed);
            (agent, false)
        };
        Ok(AgentCaller {
            device: self.agent_device(Some(&agent)).await?,
            gateway: Some(gw.id),
            learned,
        })
    }
}

/// Who an agent-site request is from, as [`Service::agent_identity`] found it.
#[derive(Debug)]
pub struct AgentCaller {
    /// The device.
    pub device: Device,
    /// The ID of the gateway that vouched for it, if one did.
    pub gateway: Option<String>,
    /// A gateway forwarded the certificate whole and it was accepted: the answer carries
    /// [`steward_proto::AGENT_CERT_KNOWN_HEADER`], so the gateway names it by thumbprint from now on.
    pub learned: bool,
}

/// Which of an enrolled, unrevoked gateway's identities a certificate is.
pub(crate) enum GatewayIdentity {
    /// The identity in use.
    Current(GatewayRecord),
    /// The renewed identity, not used before (its first use promotes it).
    Renewed(GatewayRecord),
}

/// The gateway a client certificate identifies, if any: one or two indexed reads. Recognition
/// only; promoting a renewed identity is `Service::peer_gateway`'s.
pub(crate) async fn gateway_identity(
    store: &dyn Store,
    cert: &PeerCert,
) -> Result<Option<GatewayIdentity>, steward_store::StoreError> {
    let Some(cn) = &cert.common_name else {
        return Ok(None);
    };
    let Some(g) = store.gateway(cn).await?.filter(|g| !g.revoked) else {
        return Ok(None);
    };
    if g.cert_sha256.eq_ignore_ascii_case(&cert.sha256) {
        return Ok(Some(GatewayIdentity::Current(g)));
    }
    let renewed = store
        .gateway_certs(cn)
        .await?
        .next_identity
        .is_some_and(|n| n.sha256.eq_ignore_ascii_case(&cert.sha256));
    if renewed {
        return Ok(Some(GatewayIdentity::Renewed(g)));
    }
    // The two reads above are not one snapshot: the renewed identity's promotion (its first
    // use, by another request) may have committed between them, moving it from "next" to
    // "current" after the first read looked at "current". A request with the new identity
    // would then match neither and be refused (seen in CI: an agent's check-in through a
    // gateway answered 403 GATEWAY-NOT-TRUSTED right at its identity switch). Promotion is
    // one transaction, so a fresh look at "current" sees it.
    let again = store.gateway(cn).await?.filter(|g| !g.revoked);
    Ok(again
        .filter(|g| g.cert_sha256.eq_ignore_ascii_case(&cert.sha256))
        .map(GatewayIdentity::Current))
}

/// External names as recorded: DNS names lower-case, IP literals as given.
fn normalized_names(names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| {
            if n.parse::<std::net::IpAddr>().is_ok() {
                n.clone()
            } else {
                n.to_ascii_lowercase()
            }
        })
        .collect()
}

/// What the store records of an issued certificate.
fn recorded(f: &CertFacts) -> GatewayCert {
    GatewayCert {
        serial: f.serial.clone(),
        sha256: f.thumbprint.sha256_hex(),
        spki_sha256: Thumbprint::of(&f.spki_der).sha256_hex(),
        not_before: f.not_before.unix_timestamp(),
        not_after: f.not_after.unix_timestamp(),
    }
}

/// What a renewal needs from a CSR: the SHA-256 of its public key and its subject's CNs.
fn csr_facts(csr_pem: &str) -> Result<(String, Vec<String>), String> {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate request: {e}"))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| format!("the certificate request does not parse: {e}"))?;
    let info = &csr.certification_request_info;
    let cns = info
        .subject
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    Ok((Thumbprint::of(info.subject_pki.raw).sha256_hex(), cns))
}

/// The console's view of a gateway's recorded certificates: expiry, the 30-day warning
/// (`CERT-EXPIRING-SOON`), a renewed one not in use yet.
fn cert_statuses(certs: &GatewayCerts, now: i64) -> Vec<GatewayCertStatus> {
    let mut out = Vec::new();
    for (role, current, next) in [
        (
            GatewayCertRole::Identity,
            &certs.identity,
            &certs.next_identity,
        ),
        (GatewayCertRole::Server, &certs.server, &certs.next_server),
    ] {
        let Some(c) = current else { continue };
        let what = match role {
            GatewayCertRole::Identity => "identity certificate (gateway→server)",
            GatewayCertRole::Server => "server certificate (what agents see)",
        };
        let warning = (c.not_after.saturating_sub(now) < EXPIRY_WARNING_SECS).then(|| {
            if c.not_after <= now {
                format!(
                    "CERT-EXPIRING-SOON: the gateway's {what} expired at {}; renew it \
                     (steward gateway cert renew) or join the gateway again",
                    rfc3339(c.not_after)
                )
            } else {
                format!(
                    "CERT-EXPIRING-SOON: the gateway's {what} expires at {} ({} day(s)) and \
                     has not been renewed; check the gateway's log for \
                     GATEWAY-CERT-RENEW-FAILED, or renew it (steward gateway cert renew)",
                    rfc3339(c.not_after),
                    (c.not_after - now) / 86_400
                )
            }
        });
        out.push(GatewayCertStatus {
            role: role.as_str().to_owned(),
            serial: c.serial.clone(),
            sha256: c.sha256.clone(),
            not_after: rfc3339(c.not_after),
            next_sha256: next.as_ref().map(|n| n.sha256.clone()),
            warning,
        });
    }
    out
}

/// Whether a reporting gateway should renew its identity and its server certificate: the
/// `[certs] renew_at_percent` share of the lifetime has passed. Dates unknown (joined before
/// the server recorded them) count as due, once, so they become known. The server certificate
/// only when the gateway serves a platform certificate (an imported one is replaced by
/// importing) and no staged one is waiting for agents.
pub(crate) fn renewal_due(
    cfg: &crate::lifecycle::Certs,
    certs: &GatewayCerts,
    report: &GatewayReport,
    now: i64,
) -> (bool, bool) {
    let due = |c: &Option<GatewayCert>| {
        c.as_ref()
            .is_none_or(|c| cfg.due(c.not_before, c.not_after, now))
    };
    let identity = due(&certs.identity);
    let served = report.thumbprints.first();
    let rollout = report.thumbprints.len() > 1;
    let platform_served = match &certs.server {
        Some(c) => served.is_some_and(|t| t.eq_ignore_ascii_case(&c.sha256)),
        // Unknown: platform unless the gateway reports a root of its own (an import).
        None => report.trust_anchors_pem.is_empty(),
    };
    let server = !rollout && platform_served && due(&certs.server);
    (identity, server)
}

fn renew_refused(gateway: &str, id: &'static str, m: String) -> ApiFailure {
    tracing::warn!(id, gateway, "gateway renewal refused: {m}");
    ApiFailure::bad_request(id, m)
}

impl Service {
    /// A report whose served certificate is the gateway's staged renewal: every agent had its
    /// thumbprint and the gateway switched, so the renewal is confirmed and the certificate it
    /// replaces is revoked (the CRLs re-signed). Returns the recorded certificates, current.
    async fn promote_served(
        &self,
        id: &str,
        report: &GatewayReport,
    ) -> Result<GatewayCerts, ApiFailure> {
        let mut certs = self.store.gateway_certs(id).await?;
        if self.drop_abandoned(id, &certs, report).await? {
            certs = self.store.gateway_certs(id).await?;
        }
        let served = report.thumbprints.first();
        let Some(next) = certs.next_server.as_ref() else {
            return Ok(certs);
        };
        if !served.is_some_and(|t| t.eq_ignore_ascii_case(&next.sha256)) {
            return Ok(certs);
        }
        if self
            .store
            .promote_gateway_cert(id, GatewayCertRole::Server, &next.sha256, now())
            .await?
        {
            tracing::info!(
                id = "GATEWAY-SERVER-CERT-RENEWED", gateway = %id, serial = %next.serial,
                old_serial = %certs.server.as_ref().map_or("-", |c| c.serial.as_str()),
                "the gateway serves its renewed server certificate; the previous one is revoked"
            );
            self.resign_crls().await;
        }
        Ok(self.store.gateway_certs(id).await?)
    }

    /// Renewed certificates the gateway did not take (a crash cut its renewal short, an
    /// import was staged over it): a report more than [`ABANDONED_AFTER_SECS`] after issuance
    /// that is not authenticated by the renewed identity (that would have promoted it) or does
    /// not list the renewed server certificate. They are revoked, so no unused key stays valid.
    async fn drop_abandoned(
        &self,
        id: &str,
        certs: &GatewayCerts,
        report: &GatewayReport,
    ) -> Result<bool, ApiFailure> {
        let now = now();
        // Issued at notBefore plus the backdating.
        let old = |c: &GatewayCert| {
            now.saturating_sub(c.not_before.saturating_add(BACKDATE.whole_seconds()))
                > ABANDONED_AFTER_SECS
        };
        let mut dropped = false;
        if let Some(n) = certs.next_identity.as_ref().filter(|n| old(n)) {
            dropped |= self
                .store
                .drop_gateway_cert(id, GatewayCertRole::Identity, &n.sha256, now)
                .await?;
            tracing::warn!(id = "GATEWAY-CERT-ABANDONED", gateway = %id, role = "identity", serial = %n.serial, "a renewed gateway certificate was never taken; revoked");
        }
        if let Some(n) = certs.next_server.as_ref().filter(|n| {
            old(n)
                && !report
                    .thumbprints
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(&n.sha256))
        }) {
            dropped |= self
                .store
                .drop_gateway_cert(id, GatewayCertRole::Server, &n.sha256, now)
                .await?;
            tracing::warn!(id = "GATEWAY-CERT-ABANDONED", gateway = %id, role = "server", serial = %n.serial, "a renewed gateway certificate was never taken; revoked");
        }
        if dropped {
            self.resign_crls().await;
        }
        Ok(dropped)
    }

    /// Whether a reporting gateway should renew its identity and its server certificate
    /// (see [`renewal_due`]).
    pub(crate) fn renewal_due_for(
        &self,
        certs: &GatewayCerts,
        report: &GatewayReport,
        now: i64,
    ) -> (bool, bool) {
        renewal_due(&self.config.certs, certs, report, now)
    }

    /// `POST /gateway/v1/renew`: an enrolled, unrevoked gateway (authenticated by its current
    /// identity, or its renewed one) trades CSRs for new certificates, with the checks of a
    /// join: well-formed CSRs of accepted keys, the server certificate for the gateway's
    /// external names exactly, and fresh keys (not the current ones, not one for both). The
    /// new identity is accepted next to the current one until its first use; the new server
    /// certificate is recorded as next, promoted when the gateway reports serving it.
    pub async fn gateway_renew(
        &self,
        peer: Option<&PeerCert>,
        req: GatewayRenewRequest,
    ) -> Result<GatewayRenewResponse, ApiFailure> {
        let Some(p) = peer else {
            return Err(ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "GATEWAY-CERT-REQUIRED",
                "a gateway renewal needs the gateway's client certificate (steward gateway join)",
            ));
        };
        let Some(gw) = self.peer_gateway(p).await? else {
            return Err(Self::not_trusted_to(
                peer,
                "unknown, revoked or replaced identity",
                "renew its certificates",
            ));
        };
        let id = gw.id.clone();
        if req.identity_csr_pem.is_none() && req.server_csr_pem.is_none() {
            return Err(renew_refused(
                &id,
                "GATEWAY-RENEW-INVALID",
                "a renewal needs identity_csr_pem, server_csr_pem or both".to_owned(),
            ));
        }
        let certs = self.store.gateway_certs(&id).await?;
        let csr_invalid = |m: String| renew_refused(&id, "GATEWAY-CSR-INVALID", m);
        let reused = |m: String| renew_refused(&id, "GATEWAY-RENEW-KEY-REUSED", m);
        let known_keys: Vec<&str> = [&certs.identity, &certs.server]
            .into_iter()
            .flatten()
            .map(|c| c.spki_sha256.as_str())
            .collect();
        let identity = match &req.identity_csr_pem {
            None => None,
            Some(csr) => {
                let key = csr_key_spec(csr).map_err(csr_invalid)?;
                let (spki, _) = csr_facts(csr).map_err(csr_invalid)?;
                Some((csr, key, spki))
            }
        };
        let server = match &req.server_csr_pem {
            None => None,
            Some(csr) => {
                let key = csr_key_spec(csr).map_err(csr_invalid)?;
                let (spki, cns) = csr_facts(csr).map_err(csr_invalid)?;
                Some((csr, key, spki, cns))
            }
        };
        for spki in identity
            .iter()
            .map(|i| &i.2)
            .chain(server.iter().map(|s| &s.2))
        {
            if known_keys.iter().any(|k| k.eq_ignore_ascii_case(spki)) {
                return Err(reused(
                    "the CSR's key is one the gateway already has a certificate for; a renewal \
                     needs a new key pair made on the gateway"
                        .to_owned(),
                ));
            }
        }
        if let (Some(i), Some(s)) = (&identity, &server)
            && i.2.eq_ignore_ascii_case(&s.2)
        {
            return Err(reused(
                "the identity and server CSRs carry the same key; each certificate needs its own"
                    .to_owned(),
            ));
        }
        // The server certificate covers the gateway's external names as joined, exactly.
        let names = match &server {
            None => None,
            Some((_, _, _, cns)) => {
                let joined = match &certs.external_names {
                    Some(n) => n.clone(),
                    None => gw
                        .report
                        .as_ref()
                        .map(|r| vec![r.external_name.clone()])
                        .unwrap_or_default(),
                };
                let asked = normalized_names(&req.external_names);
                let mut a: Vec<String> = asked.iter().map(|n| n.to_ascii_lowercase()).collect();
                let mut j: Vec<String> = joined.iter().map(|n| n.to_ascii_lowercase()).collect();
                a.sort();
                a.dedup();
                j.sort();
                j.dedup();
                if j.is_empty() || a != j {
                    return Err(renew_refused(
                        &id,
                        "GATEWAY-RENEW-NAMES",
                        format!(
                            "the server certificate must cover the gateway's external names \
                             [{}], asked for [{}]; a renewal never changes them (join a new \
                             gateway for other names)",
                            joined.join(", "),
                            req.external_names.join(", ")
                        ),
                    ));
                }
                if let Some(bad) = cns.iter().find(|cn| !j.contains(&cn.to_ascii_lowercase())) {
                    return Err(renew_refused(
                        &id,
                        "GATEWAY-RENEW-NAMES",
                        format!(
                            "the server CSR names {bad:?}, which is not one of the gateway's \
                             external names [{}]",
                            joined.join(", ")
                        ),
                    ));
                }
                Some(external_names(&joined)?)
            }
        };

        let now_t = OffsetDateTime::now_utc();
        let crl_urls = vec![self.config.issuing_crl_url()];
        let mut out = GatewayRenewResponse {
            chain_pem: vec![self.pki.live_issuing_pem()],
            ..GatewayRenewResponse::default()
        };
        let mut issued: Vec<(GatewayCertRole, CertificateDer<'static>)> = Vec::new();
        if let Some((csr, key, _)) = identity {
            let cert = self
                .pki
                .issuing
                .sign_csr(
                    csr,
                    &LeafRequest {
                        common_name: id.clone(),
                        dns_names: Vec::new(),
                        ip_addrs: Vec::new(),
                        usage: Usage::Client,
                        not_before: now_t - BACKDATE,
                        not_after: now_t + time::Duration::days(AGENT_DAYS),
                        crl_urls: crl_urls.clone(),
                        key,
                    },
                )
                .map_err(|e| csr_invalid(e.to_string()))?;
            issued.push((GatewayCertRole::Identity, cert));
        }
        if let (Some((csr, key, _, _)), Some((dns, ips))) = (server, names) {
            let common_name = certs
                .external_names
                .as_ref()
                .and_then(|n| n.first().cloned())
                .or_else(|| req.external_names.first().cloned())
                .unwrap_or_else(|| id.clone());
            let cert = self
                .pki
                .issuing
                .sign_csr(
                    csr,
                    &LeafRequest {
                        common_name,
                        dns_names: dns,
                        ip_addrs: ips,
                        usage: Usage::Server,
                        not_before: now_t - BACKDATE,
                        not_after: now_t + time::Duration::days(LISTENER_DAYS),
                        crl_urls,
                        key,
                    },
                )
                .map_err(|e| csr_invalid(e.to_string()))?;
            issued.push((GatewayCertRole::Server, cert));
        }
        let mut superseded = false;
        for (role, cert) in issued {
            let facts = CertFacts::from_der(&cert)
                .map_err(|e| ApiFailure::internal("reading the issued certificate", e))?;
            let rec = recorded(&facts);
            let previous_next = match role {
                GatewayCertRole::Identity => &certs.next_identity,
                GatewayCertRole::Server => &certs.next_server,
            };
            superseded |= previous_next.is_some();
            if !self
                .store
                .stage_gateway_cert(&id, role, &rec, now_t.unix_timestamp())
                .await?
            {
                return Err(Self::not_trusted_to(
                    peer,
                    "revoked while renewing",
                    "renew its certificates",
                ));
            }
            tracing::info!(
                id = "GATEWAY-CERT-ISSUED", gateway = %id, role = role.as_str(),
                serial = %rec.serial, thumbprint = %rec.sha256,
                "renewed gateway certificate issued; waiting for its first use"
            );
            let not_after = Some(rfc3339(rec.not_after));
            match role {
                GatewayCertRole::Identity => {
                    out.identity_cert_pem = Some(pem("CERTIFICATE", &cert));
                    out.identity_not_after = not_after;
                }
                GatewayCertRole::Server => {
                    out.server_cert_pem = Some(pem("CERTIFICATE", &cert));
                    out.server_not_after = not_after;
                }
            }
        }
        if superseded {
            // An earlier renewal never used went into revoked_certs.
            self.resign_crls().await;
        }
        Ok(out)
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
    use steward_proto::FailedAttempt;

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

    fn record(report: Option<GatewayReport>, reported_at: Option<i64>) -> GatewayRecord {
        GatewayRecord {
            id: "gw-1".into(),
            cert_serial: "01".into(),
            cert_sha256: "AA".into(),
            revoked: false,
            report,
            reported_at,
            entry_since_version: 3,
        }
    }

    fn healthy(port: u16) -> GatewayReport {
        GatewayReport {
            external_name: "gw.example.net".into(),
            listen_port: port,
            thumbprints: vec!["ab".repeat(32)],
            version: "0.1.0".into(),
            health: "ok".into(),
            previous_ports: vec![],
            trust_anchors_pem: vec![],
            probes: vec![steward_proto::ReachProbe {
                target: ProbeTarget {
                    host: "GW.example.net".into(),
                    port,
                },
                failure: None,
                detail: "reached".into(),
                at: "2027-01-15T08:00:00Z".into(),
            }],
        }
    }

    fn entry(port: u16) -> GatewayEntry {
        GatewayEntry {
            name: "gw-1".into(),
            host: "gw.example.net".into(),
            port,
            thumbprints: vec!["ab".repeat(32)],
            trust_anchors_pem: vec![],
        }
    }

    fn ids(p: &[GatewayProblem]) -> Vec<&str> {
        p.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn a_healthy_reporting_probed_gateway_has_no_problem() {
        let now = 1_800_000_000;
        let g = record(Some(healthy(8443)), Some(now - 30));
        assert!(gateway_problems(&g, Some(&entry(8443)), &[], now).is_empty());
    }

    #[test]
    fn a_silent_gateway_is_stale_after_three_minutes() {
        let now = 1_800_000_000;
        let e = entry(8443);
        let g = record(Some(healthy(8443)), Some(now - REPORT_STALE_SECS));
        assert!(gateway_problems(&g, Some(&e), &[], now).is_empty());
        let g = record(Some(healthy(8443)), Some(now - REPORT_STALE_SECS - 1));
        let p = gateway_problems(&g, Some(&e), &[], now);
        assert_eq!(ids(&p), vec!["GATEWAY-REPORT-STALE"]);
        assert!(p[0].message.contains("181 s ago"), "{}", p[0].message);
    }

    #[test]
    fn agents_failures_are_grouped_by_address_and_only_this_gateways_count() {
        let now = 1_800_000_000;
        let e = entry(8443);
        let g = record(Some(healthy(8443)), Some(now));
        let attempt = |gateway: Option<&str>, address: &str, kind, count| FailedAttempt {
            gateway: gateway.map(str::to_owned),
            address: address.into(),
            kind,
            id: "AGENT-CONNECTION-FAILED".into(),
            detail: "x".into(),
            last_at: "2027-01-15T08:00:00Z".into(),
            count,
        };
        let failures = vec![
            DeviceFailures {
                id: "d1".into(),
                name: "pc-1".into(),
                attempts: vec![
                    attempt(Some("gw-1"), "gw.example.net:8443", FailureKind::Timeout, 2),
                    attempt(Some("gw-2"), "other.example.net:443", FailureKind::Dns, 1),
                    attempt(None, "smp.example.net:4726", FailureKind::Refused, 1),
                ],
                at: now,
                connection_path: Some("lan via smp.example.net:4726".into()),
            },
            DeviceFailures {
                id: "d2".into(),
                name: "pc-2".into(),
                attempts: vec![
                    attempt(Some("gw-1"), "gw.example.net:8443", FailureKind::Tls, 3),
                    // No gateway named, but this gateway's address: still about it.
                    attempt(None, "gw.example.net:8443", FailureKind::Timeout, 1),
                    attempt(Some("gw-1"), "gw.example.net:7443", FailureKind::Refused, 1),
                ],
                at: now,
                connection_path: None,
            },
            // Failed, then got through this very gateway (it was restarting): not a fault.
            DeviceFailures {
                id: "d3".into(),
                name: "pc-3".into(),
                attempts: vec![attempt(
                    Some("gw-1"),
                    "gw.example.net:8443",
                    FailureKind::Refused,
                    4,
                )],
                at: now,
                connection_path: Some("gateway gw-1 via gw.example.net:8443".into()),
            },
        ];
        let p = gateway_problems(&g, Some(&e), &failures, now);
        assert_eq!(
            ids(&p),
            vec!["GATEWAY-AGENTS-FAILING", "GATEWAY-AGENTS-FAILING"]
        );
        // BTreeMap order: 7443 before 8443.
        assert!(
            p[0].message
                .starts_with("1 device(s) failed to reach gw.example.net:7443")
        );
        assert!(p[0].message.contains("pc-2"));
        let m = &p[1].message;
        assert!(
            m.starts_with("2 device(s) failed to reach gw.example.net:8443"),
            "{m}"
        );
        assert!(m.contains("6 attempt(s)"), "{m}");
        assert!(m.contains("TLS failed") && m.contains("filtered"), "{m}");
        assert!(!m.contains("name does not resolve"), "{m}");
        assert!(!m.contains("pc-3") && !m.contains("refused"), "{m}");
    }

    #[test]
    fn renewal_is_due_at_the_configured_share_for_platform_certificates_only() {
        let cfg = crate::lifecycle::Certs::default();
        let now = 1_800_000_000;
        let cert = |sha: &str, not_before: i64, not_after: i64| GatewayCert {
            serial: "01".into(),
            sha256: sha.into(),
            spki_sha256: "00".into(),
            not_before,
            not_after,
        };
        let served = "ab".repeat(32);
        let young = GatewayCerts {
            identity: Some(cert("11", now - 100, now + 900)),
            server: Some(cert(&served, now - 100, now + 900)),
            ..GatewayCerts::default()
        };
        let report = healthy(8443);
        assert_eq!(renewal_due(&cfg, &young, &report, now), (false, false));
        // Two thirds of the lifetime gone: both due.
        let old = GatewayCerts {
            identity: Some(cert("11", now - 700, now + 300)),
            server: Some(cert(&served, now - 700, now + 300)),
            ..GatewayCerts::default()
        };
        assert_eq!(renewal_due(&cfg, &old, &report, now), (true, true));
        // A staged certificate is being rolled out: not the server certificate again.
        let mut rolling = report.clone();
        rolling.thumbprints.push("cd".repeat(32));
        assert_eq!(renewal_due(&cfg, &old, &rolling, now), (true, false));
        // An imported certificate is served: the platform one is not renewed.
        let mut imported = report.clone();
        imported.thumbprints = vec!["ef".repeat(32)];
        assert_eq!(renewal_due(&cfg, &old, &imported, now), (true, false));
        // Joined before the dates were recorded: renewed once; an import reported: not.
        let unknown = GatewayCerts::default();
        assert_eq!(renewal_due(&cfg, &unknown, &report, now), (true, true));
        let mut with_root = report;
        with_root.trust_anchors_pem = vec!["root".into()];
        assert_eq!(renewal_due(&cfg, &unknown, &with_root, now), (true, false));
    }

    #[test]
    fn certificates_expiring_within_30_days_are_warned_about() {
        let now = 1_800_000_000;
        let c = |not_after: i64| GatewayCert {
            serial: "0A".into(),
            sha256: "aa".into(),
            spki_sha256: "bb".into(),
            not_before: now - 86_400,
            not_after,
        };
        let certs = GatewayCerts {
            identity: Some(c(now + 200 * 86_400)),
            server: Some(c(now + 10 * 86_400)),
            next_server: Some(GatewayCert {
                sha256: "cc".into(),
                ..c(now + 400 * 86_400)
            }),
            ..GatewayCerts::default()
        };
        let s = cert_statuses(&certs, now);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].role.as_str(), s[0].warning.is_none()),
            ("identity", true)
        );
        assert_eq!(s[1].role, "server");
        assert_eq!(s[1].next_sha256.as_deref(), Some("cc"));
        let w = s[1].warning.as_deref().unwrap_or_default();
        assert!(
            w.starts_with("CERT-EXPIRING-SOON") && w.contains("10 day(s)"),
            "{w}"
        );
        let expired = cert_statuses(
            &GatewayCerts {
                identity: Some(c(now - 1)),
                ..GatewayCerts::default()
            },
            now,
        );
        assert!(
            expired[0]
                .warning
                .as_deref()
                .is_some_and(|w| w.contains("expired")),
            "{expired:?}"
        );
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
        bad.previous_ports = vec![0];
        assert!(valid_report(&bad).is_err());
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
