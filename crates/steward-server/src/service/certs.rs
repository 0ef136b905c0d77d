//! Device certificate lifecycle: renewal over the authenticated channel, promotion on first
//! use, deletion (which revokes), and what the console shows about expiry.
//!
//! Renewal never leaves a window where neither certificate works: the renewed certificate is
//! staged next to the current one, both are accepted, and only the agent's first request with
//! the new one promotes it (and revokes the old). A lost answer costs nothing: the agent is
//! asked again at its next check-in and the unconfirmed certificate is retired.

use std::sync::Arc;
use steward_pki::{CertFacts, LeafRequest, OffsetDateTime, Thumbprint, Usage};

use steward_proto::admin::{
    CertFinalize, CertFinalized, CertImport, DeviceSummary, ListenerCertStatus, StagedCert,
};
use steward_proto::{RenewRequest, RenewResponse};
use steward_store::{Device, DeviceCert};

use super::{AdminUser, PeerCert, Service, csr_key_spec, now, rfc3339};
use crate::ApiFailure;
use crate::lifecycle::EXPIRY_WARNING_SECS;
use crate::pki::BACKDATE;
use crate::renew::{Listener, Listeners};
use crate::secret::pem;

impl Service {
    /// Validity of a newly issued agent certificate.
    pub(crate) fn agent_validity(&self) -> time::Duration {
        time::Duration::seconds(
            i64::try_from(self.config.certs.agent_validity_secs).unwrap_or(i64::MAX / 2),
        )
    }

    /// Whether the device should renew its certificate now: the configured share of its
    /// lifetime has passed, or it was issued before the last root roll was finalized (its
    /// chain reaches only the previous root; the renewed one carries the issuing CA's
    /// certificates under both). Devices enrolled before the expiry was recorded are left
    /// alone.
    pub(crate) fn renewal_due(&self, device: &Device, now: i64) -> bool {
        let Some(not_after) = device.cert_not_after else {
            return false;
        };
        let life = i64::try_from(self.config.certs.agent_validity_secs).unwrap_or(i64::MAX / 2);
        if let Some(rolled_at) = self.pki.live_rolled_at()
            && not_after.saturating_sub(life) < rolled_at
        {
            return true;
        }
        // Issued `life` before its expiry (less the backdating, which does not matter here).
        self.config
            .certs
            .due(not_after.saturating_sub(life), not_after, now)
    }

    /// A presented certificate that is the device's staged renewal: promote it (the old one
    /// is revoked in the same transaction) and answer with the updated device.
    pub(crate) async fn promote_if_renewed(
        &self,
        device: Device,
        peer: &PeerCert,
    ) -> Result<Option<Device>, ApiFailure> {
        let staged = device
            .next_cert_sha256
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(&peer.sha256));
        if !staged {
            return Ok(None);
        }
        if self
            .store
            .promote_device_cert(&device.id, &peer.sha256, now())
            .await?
        {
            tracing::info!(
                device = %device.id, name = %device.name, serial = %peer.serial,
                old_serial = %device.cert_serial,
                "renewed certificate in use; the previous one is revoked"
            );
        }
        Ok(self.store.device(&device.id).await?)
    }

    /// Issues a renewed client certificate for an authenticated device (same CN, a key made
    /// on the device) and stages it; the current one stays valid until the new one is used.
    pub async fn renew(
        &self,
        device: &Device,
        req: RenewRequest,
    ) -> Result<RenewResponse, ApiFailure> {
        let invalid = |m: String| {
            tracing::warn!(id = "AGENT-RENEW-CSR-INVALID", device = %device.id, "{m}");
            ApiFailure::bad_request("AGENT-RENEW-CSR-INVALID", m)
        };
        let key = csr_key_spec(&req.csr_pem).map_err(invalid)?;
        let now_t = OffsetDateTime::now_utc();
        let not_after = now_t + self.agent_validity();
        let cert = self
            .pki
            .issuing
            .sign_csr(
                &req.csr_pem,
                &LeafRequest {
                    common_name: device.id.clone(),
                    dns_names: Vec::new(),
                    ip_addrs: Vec::new(),
                    usage: Usage::Client,
                    not_before: now_t - BACKDATE,
                    not_after,
                    crl_urls: vec![self.config.issuing_crl_url()],
                    key,
                },
            )
            .map_err(|e| invalid(e.to_string()))?;
        let facts = CertFacts::from_der(&cert)
            .map_err(|e| ApiFailure::internal("reading the issued certificate", e))?;
        let staged = self
            .store
            .stage_device_cert(
                &device.id,
                &DeviceCert {
                    serial: facts.serial.clone(),
                    sha256: Thumbprint::of(&cert).sha256_hex(),
                    not_after: not_after.unix_timestamp(),
                },
                now_t.unix_timestamp(),
            )
            .await?;
        if !staged {
            // Revoked or deleted between authentication and now.
            return Err(ApiFailure::new(
                axum::http::StatusCode::FORBIDDEN,
                "AGENT-UNKNOWN-DEVICE",
                format!("device {} is revoked or deleted", device.id),
            ));
        }
        tracing::info!(device = %device.id, name = %device.name, serial = %facts.serial, "renewed certificate issued; waiting for its first use");
        Ok(RenewResponse {
            cert_pem: pem("CERTIFICATE", &cert),
            chain_pem: vec![self.pki.live_issuing_pem()],
            not_after: rfc3339(not_after.unix_timestamp()),
        })
    }

    /// Deletes a device: its certificates are revoked (kept in the CRLs after the row is
    /// gone, in the same transaction), the CRLs are re-signed before this returns, and its
    /// task rows go with it.
    pub async fn delete_device(
        &self,
        user: &AdminUser,
        id_or_name: &str,
    ) -> Result<(), ApiFailure> {
        let d = self.find_device(id_or_name).await?;
        if self.store.delete_device(&d.id, now()).await? {
            tracing::info!(user = %user.username, device = %d.id, name = %d.name, serial = %d.cert_serial, "device deleted; its certificate is revoked");
        }
        self.waiters.wake(&d.id);
        self.resign_crls().await;
        Ok(())
    }
}

impl Service {
    /// Detached signatures of the trust bundle: by the root every agent knows first (the
    /// previous root during a root roll's overlap), then by the platform root.
    pub(crate) fn sign_with_root(&self, msg: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.pki.sign_bundle(msg).map_err(|e| e.to_string())
    }

    /// A root CA's CRL by its distribution point file below `/crl/roots/` (a rolled-in root,
    /// or the previous one), signed now; `None` for an unknown file.
    pub(crate) fn root_crl(&self, file: &str) -> Option<Result<Vec<u8>, String>> {
        let validity = time::Duration::seconds(
            i64::try_from(self.config.crl.validity_secs).unwrap_or(i64::MAX / 2),
        );
        self.pki
            .root_crl_by_file(file, OffsetDateTime::now_utc(), validity)
            .map(|r| r.map(|c| c.to_vec()).map_err(|e| e.to_string()))
    }

    pub(crate) fn set_listeners(&self, l: Arc<Listeners>) {
        let _ = self.listeners.set(l);
    }

    fn listeners(&self) -> Result<&Arc<Listeners>, ApiFailure> {
        self.listeners
            .get()
            .ok_or_else(|| ApiFailure::internal("listener certificates", "not loaded yet"))
    }

    /// The server's listener certificates as served now.
    pub fn listener_certs(&self) -> Result<Vec<ListenerCertStatus>, ApiFailure> {
        let l = self.listeners()?;
        let now = OffsetDateTime::now_utc();
        Ok(Listener::ALL.iter().map(|x| l.status(*x, now)).collect())
    }

    /// Renews a listener's certificate from the platform CA now (served from the next
    /// connection on; agents trust the root, so nothing reaches them).
    pub async fn renew_listener(
        &self,
        user: &AdminUser,
        listener: &str,
    ) -> Result<ListenerCertStatus, ApiFailure> {
        let which = Listener::parse(listener).ok_or_else(|| {
            ApiFailure::not_found(
                "SERVER-LISTENER-UNKNOWN",
                format!("no listener {listener:?}; use agent or console"),
            )
        })?;
        let l = self.listeners()?;
        let now = OffsetDateTime::now_utc();
        l.renew(which, now)
            .await
            .map_err(|e| ApiFailure::internal("renewing the listener certificate", e))?;
        // A third-party root this replaced leaves the profile.
        self.refresh_anchors().await?;
        tracing::info!(user = %user.username, listener = which.name(), "listener certificate renewed on request");
        Ok(l.status(which, now))
    }
}

/// The certificate columns of a device's summary: expiry, the 30-day warning, renewal state.
pub(crate) fn cert_fields(summary: &mut DeviceSummary, d: &Device, now: i64) {
    summary.cert_expires_at = d.cert_not_after.map(rfc3339);
    summary.cert_renewal_pending = d.next_cert_sha256.is_some();
    summary.cert_warning = d
        .cert_not_after
        .filter(|at| at.saturating_sub(now) < EXPIRY_WARNING_SECS)
        .map(|at| {
            if at <= now {
                format!(
                    "CERT-EXPIRING-SOON: the client certificate expired at {}; the agent must \
                     enroll again",
                    rfc3339(at)
                )
            } else {
                format!(
                    "CERT-EXPIRING-SOON: the client certificate expires at {} ({} day(s)) and \
                     has not been renewed; check the agent's log for AGENT-CERT-RENEW-FAILED",
                    rfc3339(at),
                    (at - now) / 86_400
                )
            }
        });
}

/// How agents left behind by a forced finalize come back.
const STRANDED_RECOVERY: &str = "These agents do not trust the new certificate's root yet. \
     When one comes back, its TLS to the agent site fails as untrusted; it then fetches the \
     trust bundle signed by the platform root from the CRL listener (the distribution point in \
     its own certificate, plain HTTP), adds the new root and reconnects — the console shows \
     AGENT-TRUST-RECOVERED on the device. If the CRL listener is unreachable from it \
     (AGENT-TRUST-RECOVERY-FAILED in its log), enroll it again with a new package \
     (`steward package agent`, then `steward-agent enroll --force --package FILE`).";

impl Service {
    /// Re-derives the profile's trust anchors from the live and staged listener roots; bumps
    /// the version (and wakes long-polls) when they changed. Returns the profile's version.
    pub(crate) async fn refresh_anchors(&self) -> Result<u64, ApiFailure> {
        let l = self.listeners()?;
        let _guard = self.profile_lock.lock().await;
        let roots = self.pki.live_roots_pem();
        let anchors = crate::replace::trust_anchors(
            l.dir(),
            roots
                .first()
                .map_or(self.pki.root_pem.as_str(), String::as_str),
        );
        let current = self.profile();
        if current.trust_anchors_pem == anchors {
            return Ok(current.version);
        }
        let mut fresh = (*current).clone();
        fresh.trust_anchors_pem = anchors;
        super::stamp_version(self.store.as_ref(), &mut fresh).await?;
        let version = fresh.version;
        *self.profile.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        self.waiters.wake_all();
        Ok(version)
    }

    fn parse_listener(listener: &str) -> Result<Listener, ApiFailure> {
        Listener::parse(listener).ok_or_else(|| {
            ApiFailure::not_found(
                "SERVER-LISTENER-UNKNOWN",
                format!("no listener {listener:?}; use agent or console"),
            )
        })
    }

    /// The names a listener's certificate must cover: the agent site's configured names
    /// (what agents use), the console's current names (what browsers and the CLI use).
    fn listener_names(&self, l: Listener) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        if l == Listener::Agent {
            names.extend(self.config.fqdns.iter().cloned());
            names.extend(self.config.ip_addrs.iter().map(ToString::to_string));
        }
        if let Some(current) = self.listeners.get().map(|x| x.current(l))
            && let Some(f) = current
                .chain
                .first()
                .and_then(|c| CertFacts::from_der(c).ok())
        {
            for san in f.sans.iter().flatten() {
                let n = match san {
                    steward_pki::SanEntry::Dns(d) => d.clone(),
                    steward_pki::SanEntry::Ip(ip) => ip.to_string(),
                    steward_pki::SanEntry::Other(_) => continue,
                };
                if l == Listener::Console && !names.iter().any(|h| h.eq_ignore_ascii_case(&n)) {
                    names.push(n);
                }
            }
        }
        names
    }

    /// A listener's status with its staged certificate and the distribution's progress.
    async fn full_status(&self, l: Listener) -> Result<ListenerCertStatus, ApiFailure> {
        let listeners = self.listeners()?;
        let mut s = listeners.status(l, OffsetDateTime::now_utc());
        if let Some(meta) = crate::replace::staged(listeners.dir(), l) {
            let behind = self
                .store
                .devices_behind_profile(meta.profile_version, 50)
                .await?;
            // Every active device is "behind" an impossible version: that is the total.
            let total = self
                .store
                .devices_behind_profile(i64::MAX.unsigned_abs(), 0)
                .await?
                .total;
            s.staged = Some(StagedCert {
                sha256: meta.sha256,
                subject: meta.subject,
                root_subject: meta.root_subject,
                not_after: meta.not_after,
                staged_at: meta.staged_at,
                profile_version: meta.profile_version,
                acknowledged: total.saturating_sub(behind.total),
                total,
                pending: behind
                    .devices
                    .iter()
                    .map(|(id, name)| format!("{name} ({id})"))
                    .collect(),
            });
        }
        Ok(s)
    }

    /// Every listener's full status (for `steward server cert status` and the console).
    pub async fn listener_cert_status(&self) -> Result<Vec<ListenerCertStatus>, ApiFailure> {
        let mut out = Vec::new();
        for l in Listener::ALL {
            out.push(self.full_status(l).await?);
        }
        Ok(out)
    }

    /// Stage: judge a third-party certificate for a listener, refuse it with the findings on
    /// any error, else stage it and put its root in the profile.
    pub async fn stage_listener_cert(
        &self,
        user: &AdminUser,
        listener: &str,
        req: CertImport,
    ) -> Result<ListenerCertStatus, ApiFailure> {
        use base64::Engine as _;
        let l = Self::parse_listener(listener)?;
        let listeners = self.listeners()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(req.file_base64.trim())
            .map_err(|e| {
                ApiFailure::bad_request("REQUEST-MALFORMED", format!("file_base64: {e}"))
            })?;
        let label = if req.label.is_empty() {
            "the imported file".to_owned()
        } else {
            req.label.clone()
        };
        let now = OffsetDateTime::now_utc();
        let judged = match crate::replace::judge(
            &bytes,
            req.password.as_deref(),
            self.listener_names(l),
            &label,
            now,
        ) {
            Ok(j) => j,
            Err(report) => {
                let bad: Vec<&steward_doctor::Finding> = report
                    .findings
                    .iter()
                    .filter(|f| f.severity != steward_doctor::Severity::Ok)
                    .collect();
                let id = bad
                    .iter()
                    .find(|f| f.severity == steward_doctor::Severity::Error)
                    .or(bad.first())
                    .map_or("CERT-IMPORT-REFUSED", |f| f.id);
                let lines: Vec<String> = bad
                    .iter()
                    .map(|f| format!("{} {}: {}", f.severity, f.id, f.message))
                    .collect();
                tracing::warn!(
                    id,
                    listener = l.name(),
                    "certificate import refused: {}",
                    lines.join("; ")
                );
                return Err(ApiFailure::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    id,
                    format!(
                        "{label} was not staged for the {} listener; nothing changed:\n{}",
                        l.name(),
                        lines.join("\n")
                    ),
                ));
            }
        };
        let warnings: Vec<String> = judged
            .report
            .findings
            .iter()
            .filter(|f| f.severity != steward_doctor::Severity::Ok)
            .map(|f| format!("{} {}: {}", f.severity, f.id, f.message))
            .collect();
        // Files first (the root counts as an anchor once written), then the profile, then
        // `staged.json` with the version that carries the root: the commit point.
        let io = |e: crate::ServerError| ApiFailure::internal("staging the certificate", e);
        crate::replace::write_staged(listeners.dir(), l, &judged).map_err(io)?;
        let version = self.refresh_anchors().await?;
        let meta = crate::replace::StagedMeta {
            sha256: judged.sha256.clone(),
            subject: judged.subject.clone(),
            root_subject: judged.root_subject.clone(),
            not_after: rfc3339(judged.not_after.unix_timestamp()),
            staged_at: rfc3339(now.unix_timestamp()),
            profile_version: version,
        };
        crate::replace::write_staged_meta(listeners.dir(), l, &meta).map_err(io)?;
        tracing::info!(
            id = "SERVER-CERT-STAGED", user = %user.username, listener = l.name(),
            thumbprint = %meta.sha256, root = %meta.root_subject, profile_version = version,
            "third-party certificate staged; its root reaches agents with this profile version"
        );
        let mut s = self.full_status(l).await?;
        s.findings = warnings;
        Ok(s)
    }

    /// Finalize: the staged certificate goes live (refused while agents have not
    /// acknowledged its root, unless `force`, which names them).
    pub async fn finalize_listener_cert(
        &self,
        user: &AdminUser,
        listener: &str,
        req: CertFinalize,
    ) -> Result<CertFinalized, ApiFailure> {
        let l = Self::parse_listener(listener)?;
        let listeners = self.listeners()?;
        let status = self.full_status(l).await?;
        let Some(staged) = status.staged else {
            return Err(ApiFailure::new(
                axum::http::StatusCode::CONFLICT,
                "SERVER-CERT-NOT-STAGED",
                format!(
                    "nothing is staged for the {} listener: stage one first (steward server cert import FILE --listener {})",
                    l.name(),
                    l.name()
                ),
            ));
        };
        let pending = staged.total - staged.acknowledged;
        if pending > 0 && !req.force {
            return Err(ApiFailure::new(
                axum::http::StatusCode::CONFLICT,
                "SERVER-CERT-NOT-DISTRIBUTED",
                format!(
                    "{pending} of {} agent(s) have not acknowledged profile version {} with the new root yet ({}); they would be stranded. Wait for their next check-in, or finalize with --force",
                    staged.total,
                    staged.profile_version,
                    staged.pending.join(", ")
                ),
            ));
        }
        let dir = listeners.dir().clone();
        let sd = crate::replace::staged_dir(&dir, l);
        let read = |name: &str| {
            std::fs::read_to_string(sd.join(name))
                .map_err(|e| ApiFailure::internal("reading the staged certificate", e))
        };
        let (chain, key, root) = (read("chain.pem")?, read("key.pem")?, read("root.pem")?);
        // The root stays in the profile while the certificate is live: written before the
        // certificate goes live, so the profile never lacks it.
        crate::replace::write_atomic(
            &crate::replace::live_root_path(&dir, l),
            root.as_bytes(),
            0o644,
        )
        .map_err(|e| ApiFailure::internal("writing the root", e))?;
        listeners
            .commit(l, |cert_next, key_next| {
                crate::replace::write_atomic(key_next, key.as_bytes(), 0o600)?;
                crate::replace::write_atomic(cert_next, chain.as_bytes(), 0o644)
            })
            .map_err(|e| ApiFailure::internal("installing the certificate", e))?;
        crate::replace::remove_staged(&dir, l)
            .map_err(|e| ApiFailure::internal("removing the staged files", e))?;
        self.refresh_anchors().await?;
        let stranded = if pending > 0 {
            staged.pending.clone()
        } else {
            Vec::new()
        };
        if stranded.is_empty() {
            tracing::info!(id = "SERVER-CERT-FINALIZED", user = %user.username, listener = l.name(), thumbprint = %staged.sha256, "third-party certificate live, served from the next connection on");
        } else {
            tracing::warn!(id = "SERVER-CERT-FORCED", user = %user.username, listener = l.name(), thumbprint = %staged.sha256, stranded = %stranded.join(", "), "third-party certificate live although {pending} agent(s) had not acknowledged its root");
        }
        Ok(CertFinalized {
            status: self.full_status(l).await?,
            recovery: (!stranded.is_empty()).then(|| STRANDED_RECOVERY.to_owned()),
            stranded,
        })
    }

    /// Rollback: drop the staged certificate and its root; nothing else changed.
    pub async fn rollback_listener_cert(
        &self,
        user: &AdminUser,
        listener: &str,
    ) -> Result<ListenerCertStatus, ApiFailure> {
        let l = Self::parse_listener(listener)?;
        let listeners = self.listeners()?;
        // Also what an interrupted stage left (files without `staged.json`): its root must
        // not linger in the profile.
        if !crate::replace::staged_files_exist(listeners.dir(), l) {
            return Err(ApiFailure::new(
                axum::http::StatusCode::CONFLICT,
                "SERVER-CERT-NOT-STAGED",
                format!("nothing is staged for the {} listener", l.name()),
            ));
        }
        crate::replace::remove_staged(listeners.dir(), l)
            .map_err(|e| ApiFailure::internal("removing the staged files", e))?;
        self.refresh_anchors().await?;
        tracing::info!(id = "SERVER-CERT-ROLLED-BACK", user = %user.username, listener = l.name(), "staged certificate dropped; its root leaves the profile");
        self.full_status(l).await
    }
}

/// How agents that had not acknowledged the new root when a forced root-roll finalize went
/// ahead come back.
const CA_ROLL_STRANDED_RECOVERY: &str = "These agents do not hold the new platform root yet, \
     but they still trust the previous one, and during the overlap everything the server \
     serves also chains to it (the issuing CA's certificate under the previous root is sent \
     with every listener and agent certificate). They reconnect as they are and receive the \
     new root with the profile at their next check-in. Should one still meet a certificate it \
     cannot verify (AGENT-TLS-UNTRUSTED in its log), it fetches the trust bundle, signed by the \
     previous root as well, from the CRL listener named in its certificate and the console \
     shows AGENT-TRUST-RECOVERED on the device; if it cannot reach that listener \
     (AGENT-TRUST-RECOVERY-FAILED), enroll it again with a new package (`steward package \
     agent`, then `steward-agent enroll --force --package FILE`).";

/// One root-roll operation at a time.
static CA_ROLL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ca_info(der: &[u8]) -> steward_proto::admin::CaCertInfo {
    match CertFacts::from_der(der) {
        Ok(f) => steward_proto::admin::CaCertInfo {
            subject: f.subject.clone(),
            sha256: f.thumbprint.sha256_hex(),
            not_after: rfc3339(f.not_after.unix_timestamp()),
        },
        Err(_) => Default::default(),
    }
}

impl Service {
    /// How many active devices acknowledged profile `version` (or a later one), of how many,
    /// and who has not (the first 50): the distribution progress of listener replacements
    /// and root rolls alike.
    async fn profile_progress(&self, version: u64) -> Result<(u64, u64, Vec<String>), ApiFailure> {
        let behind = self.store.devices_behind_profile(version, 50).await?;
        // Every active device is "behind" an impossible version: that is the total.
        let total = self
            .store
            .devices_behind_profile(i64::MAX.unsigned_abs(), 0)
            .await?
            .total;
        let pending = behind
            .devices
            .iter()
            .map(|(id, name)| format!("{name} ({id})"))
            .collect();
        Ok((total.saturating_sub(behind.total), total, pending))
    }

    /// The platform root, the previous one during an overlap, and a staged roll's progress.
    pub async fn ca_roll_status(&self) -> Result<steward_proto::admin::CaRollStatus, ApiFailure> {
        let listeners = self.listeners()?;
        let live = self.pki.live();
        let mut s = steward_proto::admin::CaRollStatus {
            phase: if live.previous_root.is_some() {
                "overlap"
            } else {
                "idle"
            }
            .to_owned(),
            root: ca_info(live.root.cert()),
            issuing: ca_info(live.issuing.cert()),
            previous_root: live.previous_root.as_ref().map(|r| ca_info(r.cert())),
            staged: None,
        };
        if let Some(meta) = crate::pki::roll_staged(listeners.dir()) {
            let (acknowledged, total, pending) =
                self.profile_progress(meta.profile_version).await?;
            s.phase = "staged".to_owned();
            s.staged = Some(StagedCert {
                sha256: meta.root_sha256,
                subject: meta.root_subject.clone(),
                root_subject: meta.root_subject,
                not_after: meta.root_not_after,
                staged_at: meta.staged_at,
                profile_version: meta.profile_version,
                acknowledged,
                total,
                pending,
            });
        }
        Ok(s)
    }

    /// Stage a root roll: a new root, the issuing CA certified by it, the new root into the
    /// profile (a new version) and the trust bundle. Nothing agents must accept is signed by
    /// the new root yet.
    pub async fn stage_ca_roll(
        &self,
        user: &AdminUser,
    ) -> Result<steward_proto::admin::CaRollStatus, ApiFailure> {
        let _one = CA_ROLL.lock().await;
        let listeners = self.listeners()?;
        let dir = listeners.dir().clone();
        let live = self.pki.live();
        if let Some(prev) = &live.previous_root {
            let f = ca_info(prev.cert());
            return Err(ApiFailure::new(
                axum::http::StatusCode::CONFLICT,
                "SERVER-CA-ROLL-OVERLAP",
                format!(
                    "the previous root ({}) from the last roll is still trusted: agents enrolled before that roll still present certificates chaining to it, and a new roll would drop it. Retire it first (not available yet: remove pki/previous-root.* once every device has renewed its certificate)",
                    f.subject
                ),
            ));
        }
        if crate::pki::roll_staged(&dir).is_some() {
            return Err(ApiFailure::new(
                axum::http::StatusCode::CONFLICT,
                "SERVER-CA-ROLL-ALREADY-STAGED",
                "a root roll is already staged: finalize it or roll it back first".to_owned(),
            ));
        }
        let now_t = OffsetDateTime::now_utc();
        let io = |e: crate::ServerError| ApiFailure::internal("staging the root roll", e);
        let root = crate::pki::stage_roll(&dir, &self.config, &live, now_t).map_err(io)?;
        let version = self.refresh_anchors().await?;
        let info = ca_info(&root);
        crate::pki::write_roll_meta(
            &dir,
            &crate::pki::RollMeta {
                root_subject: info.subject.clone(),
                root_sha256: info.sha256.clone(),
                root_not_after: info.not_after.clone(),
                staged_at: rfc3339(now_t.unix_timestamp()),
                profile_version: version,
            },
        )
        .map_err(io)?;
        tracing::info!(
            id = "SERVER-CA-ROLL-STAGED", user = %user.username, root = %info.subject,
            thumbprint = %info.sha256, profile_version = version,
            "new platform root staged; it reaches agents with this profile version and the trust bundle"
        );
        self.ca_roll_status().await
    }

    /// Finalize a root roll: the new root becomes the platform root (the previous one stays
    /// trusted), the listener certificates are re-issued with chains to both roots and served
    /// from the next connection on. Refused while agents have not acknowledged the new root,
    /// unless `force` (which names them).
    pub async fn finalize_ca_roll(
        &self,
        user: &AdminUser,
        req: CertFinalize,
    ) -> Result<steward_proto::admin::CaRollFinalized, ApiFailure> {
        let _one = CA_ROLL.lock().await;
        let listeners = self.listeners()?;
        let dir = listeners.dir().clone();
        let status = self.ca_roll_status().await?;
        let Some(staged) = status.staged else {
            return Err(ApiFailure::new(
                axum::http::StatusCode::CONFLICT,
                "SERVER-CA-ROLL-NOT-STAGED",
                "no root roll is staged: stage one first (steward server ca roll stage)".to_owned(),
            ));
        };
        let pending = staged.total - staged.acknowledged;
        if pending > 0 && !req.force {
            return Err(ApiFailure::new(
                axum::http::StatusCode::CONFLICT,
                "SERVER-CA-ROLL-NOT-DISTRIBUTED",
                format!(
                    "{pending} of {} agent(s) have not acknowledged profile version {} with the new root yet ({}). Wait for their next check-in, or finalize with --force",
                    staged.total,
                    staged.profile_version,
                    staged.pending.join(", ")
                ),
            ));
        }
        let fail = |what: &'static str| {
            move |e: crate::ServerError| {
                tracing::error!(id = e.id(), error = %e, "{what}");
                ApiFailure::internal(what, e)
            }
        };
        crate::pki::finalize_roll(&dir).map_err(fail("finalizing the root roll on disk"))?;
        // On disk it is done (a crash from here on is finished at start); now the running
        // server follows: CAs, CRLs (the previous root's too), verifiers, listeners, profile.
        let fresh = crate::pki::Pki::load(&dir).map_err(fail("loading the rolled CAs"))?;
        self.pki.set_successor(Arc::new(fresh));
        self.resign_crls().await;
        let now_t = OffsetDateTime::now_utc();
        let mut renewed = Vec::new();
        for l in Listener::ALL {
            if listeners.third_party(l) {
                continue;
            }
            match listeners.renew(l, now_t).await {
                Ok(()) => renewed.push(listeners.status(l, now_t)),
                Err(e) => {
                    tracing::error!(id = e.id(), listener = l.name(), error = %e, "re-issuing the listener certificate after the root roll failed; the current one stays in service (it still chains to the previous root)");
                }
            }
        }
        self.refresh_anchors().await?;
        let stranded = if pending > 0 {
            staged.pending.clone()
        } else {
            Vec::new()
        };
        if stranded.is_empty() {
            tracing::info!(id = "SERVER-CA-ROLL-FINALIZED", user = %user.username, root = %staged.subject, "the new platform root is in service; the previous one stays trusted");
        } else {
            tracing::warn!(id = "SERVER-CA-ROLL-FORCED", user = %user.username, root = %staged.subject, stranded = %stranded.join(", "), "root roll finalized although {pending} agent(s) had not acknowledged the new root");
        }
        Ok(steward_proto::admin::CaRollFinalized {
            status: self.ca_roll_status().await?,
            recovery: (!stranded.is_empty()).then(|| CA_ROLL_STRANDED_RECOVERY.to_owned()),
            stranded,
            listeners: renewed,
        })
    }

    /// Rollback before finalize: the staged root leaves the profile; nothing else changed.
    pub async fn rollback_ca_roll(
        &self,
        user: &AdminUser,
    ) -> Result<steward_proto::admin::CaRollStatus, ApiFailure> {
        let _one = CA_ROLL.lock().await;
        let listeners = self.listeners()?;
        if !crate::pki::roll_files_exist(listeners.dir()) {
            return Err(ApiFailure::new(
                axum::http::StatusCode::CONFLICT,
                "SERVER-CA-ROLL-NOT-STAGED",
                "no root roll is staged".to_owned(),
            ));
        }
        crate::pki::remove_roll(listeners.dir())
            .map_err(|e| ApiFailure::internal("removing the staged root", e))?;
        self.refresh_anchors().await?;
        tracing::info!(id = "SERVER-CA-ROLL-ROLLED-BACK", user = %user.username, "staged root dropped; it leaves the profile");
        self.ca_roll_status().await
    }
}
