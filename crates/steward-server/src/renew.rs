//! The server's own listener certificates (agent site, console): renewed from the platform CA
//! once the configured share of their lifetime has passed, on demand (`steward server cert
//! renew`), and swapped into the running listeners without a restart.
//!
//! Agents trust the platform root, never a leaf, so a renewed listener certificate needs
//! nothing from them: connections made after the swap see the new one, open ones keep the old.
//!
//! On disk a renewal is committed like an agent's: new key and certificate are written as
//! `*.next`, then renamed over the live files, key first. [`recover`] runs before anything
//! reads them at start-up and finishes (or discards) a renewal a crash interrupted, so the
//! pair on disk always matches.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use steward_pki::{CertFacts, OffsetDateTime, SanEntry};
use steward_proto::admin::ListenerCertStatus;
use tokio::sync::watch;

use crate::ServerError;
use crate::config::{Config, DataDir};
use crate::lifecycle::EXPIRY_WARNING_SECS;
use crate::pki::{Crls, ListenerCert, Pki, write_cert, write_key};
use crate::tls::{Resumption, SwappableConfig, agent_config, console_config};

/// How often the renewal loop looks at the listener certificates.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// One of the server's listeners that carries a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The agent site.
    Agent,
    /// The console and admin API.
    Console,
}

impl Listener {
    /// Both, in display order.
    pub(crate) const ALL: [Listener; 2] = [Listener::Agent, Listener::Console];

    /// `agent` or `console`, as on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Listener::Agent => "agent",
            Listener::Console => "console",
        }
    }

    /// Parses [`Listener::name`].
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == s)
    }

    pub(crate) fn paths(self, dir: &DataDir) -> (PathBuf, PathBuf) {
        match self {
            Listener::Agent => (dir.agent_cert(), dir.agent_key()),
            Listener::Console => (dir.console_cert(), dir.console_key()),
        }
    }
}

fn next(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

/// Finishes or discards a listener renewal that a crash interrupted: a complete `.next` pair
/// (or a certificate whose key was already moved) is committed; a lone new key is dropped.
pub(crate) fn recover(dir: &DataDir) -> Result<(), ServerError> {
    // A root roll's finalize first: the listener files do not depend on it, the CAs do.
    crate::pki::recover_roll(dir)?;
    for l in Listener::ALL {
        let (cert, key) = l.paths(dir);
        let (cert_next, key_next) = (next(&cert), next(&key));
        if cert_next.exists() {
            if key_next.exists() {
                std::fs::rename(&key_next, &key).map_err(|e| ServerError::io(&key_next, e))?;
            }
            std::fs::rename(&cert_next, &cert).map_err(|e| ServerError::io(&cert_next, e))?;
            tracing::info!(
                listener = l.name(),
                "an interrupted certificate renewal was completed"
            );
        } else if key_next.exists() {
            std::fs::remove_file(&key_next).map_err(|e| ServerError::io(&key_next, e))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), ServerError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ServerError::io(dir, e))
}

/// The listeners' certificates as served, and the TLS configurations built from them.
#[derive(Debug)]
pub(crate) struct Listeners {
    pki: Arc<Pki>,
    dir: DataDir,
    cfg: Config,
    agent: RwLock<Arc<ListenerCert>>,
    console: RwLock<Arc<ListenerCert>>,
    crls: RwLock<Crls>,
    /// Kept across the agent site's configuration rebuilds, so agents resume their sessions.
    resumption: Resumption,
    /// The agent site's TLS configuration (also rebuilt for each new CRL).
    pub(crate) agent_tls: Arc<SwappableConfig>,
    /// The console's.
    pub(crate) console_tls: Arc<SwappableConfig>,
    /// Serialises renewals (two at once would race on the `.next` files).
    renewing: tokio::sync::Mutex<()>,
}

impl Listeners {
    /// Loads both listener certificates and builds their TLS configurations.
    pub(crate) fn load(
        dir: &DataDir,
        cfg: &Config,
        pki: Arc<Pki>,
        crls: &Crls,
    ) -> Result<Self, ServerError> {
        let agent = ListenerCert::load(&dir.agent_cert(), &dir.agent_key(), &pki)?;
        let console = ListenerCert::load(&dir.console_cert(), &dir.console_key(), &pki)?;
        let resumption = Resumption::new()?;
        let agent_tls = Arc::new(SwappableConfig::new(agent_config(
            &agent,
            &pki,
            crls,
            &resumption,
        )?));
        let console_tls = Arc::new(SwappableConfig::new(console_config(&console)?));
        Ok(Self {
            pki,
            dir: dir.clone(),
            cfg: cfg.clone(),
            agent: RwLock::new(Arc::new(agent)),
            console: RwLock::new(Arc::new(console)),
            crls: RwLock::new(crls.clone()),
            resumption,
            agent_tls,
            console_tls,
            renewing: tokio::sync::Mutex::new(()),
        })
    }

    /// The data directory.
    pub(crate) fn dir(&self) -> &DataDir {
        &self.dir
    }

    fn slot(&self, l: Listener) -> &RwLock<Arc<ListenerCert>> {
        match l {
            Listener::Agent => &self.agent,
            Listener::Console => &self.console,
        }
    }

    /// The certificate a listener serves now.
    pub(crate) fn current(&self, l: Listener) -> Arc<ListenerCert> {
        self.slot(l)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New CRLs: the agent site's client-certificate verifier is rebuilt with them.
    pub(crate) fn set_crls(&self, crls: &Crls) -> Result<(), ServerError> {
        *self.crls.write().unwrap_or_else(|p| p.into_inner()) = crls.clone();
        self.agent_tls.set(agent_config(
            &self.current(Listener::Agent),
            &self.pki,
            crls,
            &self.resumption,
        )?);
        Ok(())
    }

    fn apply(&self, l: Listener, cert: ListenerCert) -> Result<(), ServerError> {
        let cfg = match l {
            Listener::Agent => {
                let crls = self.crls.read().unwrap_or_else(|p| p.into_inner()).clone();
                agent_config(&cert, &self.pki, &crls, &self.resumption)?
            }
            Listener::Console => console_config(&cert)?,
        };
        *self.slot(l).write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cert);
        match l {
            Listener::Agent => self.agent_tls.set(cfg),
            Listener::Console => self.console_tls.set(cfg),
        }
        Ok(())
    }

    /// What a listener's certificate says, for the console and the CLI.
    pub(crate) fn status(&self, l: Listener, now: OffsetDateTime) -> ListenerCertStatus {
        let cert = self.current(l);
        let facts = cert.chain.first().and_then(|c| CertFacts::from_der(c).ok());
        let Some(f) = facts else {
            return ListenerCertStatus {
                listener: l.name().to_owned(),
                ..Default::default()
            };
        };
        let left = (f.not_after - now).whole_seconds();
        ListenerCertStatus {
            listener: l.name().to_owned(),
            subject: f.subject.clone(),
            issuer: f.issuer.clone(),
            sha256: f.thumbprint.sha256_hex(),
            not_before: crate::service::rfc3339(f.not_before.unix_timestamp()),
            not_after: crate::service::rfc3339(f.not_after.unix_timestamp()),
            renewal_due: self.due(&f, now) && !self.third_party(l),
            warning: (left < EXPIRY_WARNING_SECS).then(|| {
                format!(
                    "CERT-EXPIRING-SOON: the {} certificate expires at {} ({} day(s))",
                    l.name(),
                    crate::service::rfc3339(f.not_after.unix_timestamp()),
                    left / 86_400
                )
            }),
            third_party: self.third_party(l),
            staged: None,
            findings: Vec::new(),
        }
    }

    fn due(&self, f: &CertFacts, now: OffsetDateTime) -> bool {
        self.cfg.certs.due(
            f.not_before.unix_timestamp(),
            f.not_after.unix_timestamp(),
            now.unix_timestamp(),
        )
    }

    /// Issues a new certificate for a listener from the platform CA, with the names of the
    /// current one, commits it to disk and serves it from the next connection on.
    pub(crate) async fn renew(&self, l: Listener, now: OffsetDateTime) -> Result<(), ServerError> {
        let _one = self.renewing.lock().await;
        let current = self.current(l);
        let facts = current
            .chain
            .first()
            .and_then(|c| CertFacts::from_der(c).ok())
            .ok_or_else(|| {
                ServerError::Internal(format!("the {} certificate does not parse", l.name()))
            })?;
        let (mut dns, mut ips) = (Vec::new(), Vec::new());
        for san in facts.sans.iter().flatten() {
            match san {
                SanEntry::Dns(d) => dns.push(d.clone()),
                SanEntry::Ip(ip) => ips.push(*ip),
                SanEntry::Other(_) => {}
            }
        }
        if dns.is_empty() && ips.is_empty() {
            dns = self.cfg.fqdns.clone();
            ips = self.cfg.ip_addrs.clone();
        }
        let cn = facts
            .common_names
            .first()
            .cloned()
            .unwrap_or_else(|| self.cfg.primary_name().to_owned());
        let issued = self
            .pki
            .issue_listener(&cn, dns, ips, &self.cfg.issuing_crl_url(), now)?;
        self.commit(l, |cert_next, key_next| {
            write_key(key_next, &issued.key_pkcs8)?;
            write_cert(cert_next, &issued.cert)
        })?;
        // Platform-issued again: a third-party root it replaced is no longer needed live.
        match std::fs::remove_file(crate::replace::live_root_path(&self.dir, l)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ServerError::io(
                    crate::replace::live_root_path(&self.dir, l),
                    e,
                ));
            }
        }
        tracing::info!(
            listener = l.name(),
            old = %facts.thumbprint.sha256_hex(),
            new = %steward_pki::Thumbprint::of(&issued.cert).sha256_hex(),
            "listener certificate renewed from the platform CA and swapped in without a restart"
        );
        Ok(())
    }

    /// Writes a listener's new key and certificate (`write` fills the two `.next` paths),
    /// renames them over the live files key first, and serves them from the next connection.
    pub(crate) fn commit(
        &self,
        l: Listener,
        write: impl FnOnce(&Path, &Path) -> Result<(), ServerError>,
    ) -> Result<(), ServerError> {
        let (cert_path, key_path) = l.paths(&self.dir);
        let (cert_next, key_next) = (next(&cert_path), next(&key_path));
        for p in [&cert_next, &key_next] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ServerError::io(p, e)),
            }
        }
        write(&cert_next, &key_next)?;
        sync_dir(&self.dir.pki())?;
        // Loaded (and so checked: key and certificate match, TLS accepts them) before either
        // live file is touched.
        let loaded = ListenerCert::load(&cert_next, &key_next, &self.pki)?;
        let _ = match l {
            Listener::Agent => {
                let crls = self.crls.read().unwrap_or_else(|p| p.into_inner()).clone();
                agent_config(&loaded, &self.pki, &crls, &self.resumption)?
            }
            Listener::Console => console_config(&loaded)?,
        };
        std::fs::rename(&key_next, &key_path).map_err(|e| ServerError::io(&key_next, e))?;
        std::fs::rename(&cert_next, &cert_path).map_err(|e| ServerError::io(&cert_next, e))?;
        sync_dir(&self.dir.pki())?;
        self.apply(l, loaded)
    }

    /// Whether the listener serves a third-party certificate (never renewed automatically:
    /// its CA is not ours).
    pub(crate) fn third_party(&self, l: Listener) -> bool {
        crate::replace::live_root_path(&self.dir, l).exists()
    }

    /// Renews each listener whose certificate is due.
    pub(crate) async fn renew_due(&self, now: OffsetDateTime) {
        for l in Listener::ALL {
            let due = self
                .current(l)
                .chain
                .first()
                .and_then(|c| CertFacts::from_der(c).ok())
                .is_some_and(|f| self.due(&f, now))
                && !self.third_party(l);
            if due && let Err(e) = self.renew(l, now).await {
                tracing::error!(id = e.id(), listener = l.name(), error = %e, "renewing the listener certificate failed; the current one stays in service and renewal is tried again in an hour");
            }
        }
    }
}

/// Checks the listener certificates at start and then every [`CHECK_INTERVAL`].
pub(crate) async fn renew_loop(listeners: Arc<Listeners>, mut shutdown: watch::Receiver<bool>) {
    loop {
        listeners.renew_due(OffsetDateTime::now_utc()).await;
        tokio::select! {
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
