//! The path checker: walk the way from an agent to the server — a LAN server or an internet
//! gateway — one step at a time, stopping at the first step that fails, and name that step.
//!
//! The steps, in order: the name resolves (`PATH-DNS`); the TCP port answers (`PATH-TCP`);
//! something speaks TLS there (`PATH-TLS`); its certificate chains to the trust anchors, is in
//! date and covers the name (`PATH-CERT`, judged by rustls/webpki exactly as the agent judges
//! it); for a gateway, its thumbprint is one the profile lists (`PATH-THUMBPRINT`); and, with the
//! agent's identity, `GET /agent/v1/ping` with the client certificate proves the whole way,
//! through a gateway up to the server (`PATH-OK`). Each failure has its own ID (the probes'
//! `DNS-RESOLVE`, `NET-REFUSED`, `NET-TIMEOUT`, `TLS-NOT-TLS`, ...; the certificate rules'
//! `CERT-*`; and `PATH-*` for what only this path has), a severity, the evidence and a remedy,
//! all documented in `docs/diagnostics.md`.
//!
//! Why a step list rather than one connection attempt: an administrator acts on the first
//! thing that is wrong (DNS, then firewall, then certificate, then credentials), and an agent
//! that only reports "cannot connect" hides which one it is — the failure ITMS's CEM is known
//! for ("breaks agents without generating a console-side error").

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use steward_doctor::{Finding, RULES, Severity};
use steward_pki::{CertFacts, OffsetDateTime, Thumbprint, rfc3339};
use steward_proto::{
    ApiError, CommunicationProfile, GATEWAY_TIME_HEADER, Pong, error_chain, paths,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::net::{bare_host, connect, elapsed_ms, resolve, within};
use crate::tls::handshake;
use crate::{ProbeError, Stage};

/// Stable IDs of the path checks (each documented in `docs/diagnostics.md`).
pub mod ids {
    /// The name resolved (ok).
    pub const DNS: &str = "PATH-DNS";
    /// The TCP port accepted the connection (ok).
    pub const TCP: &str = "PATH-TCP";
    /// A TLS handshake completed (ok).
    pub const TLS: &str = "PATH-TLS";
    /// The certificate chains to the anchors, is in date and covers the name (ok); as an error,
    /// a certificate fault with no more specific `CERT-*` ID.
    pub const CERT: &str = "PATH-CERT";
    /// The gateway's thumbprint is one the profile lists (ok).
    pub const THUMBPRINT: &str = "PATH-THUMBPRINT";
    /// The certificate chains and is valid, but is not one the profile lists for the gateway:
    /// something other than the gateway answers there, or its certificate changed unreported.
    pub const THUMBPRINT_UNKNOWN: &str = "PATH-THUMBPRINT-UNKNOWN";
    /// The ping step: skipped without an identity, or its answer could not be understood.
    pub const PING: &str = "PATH-PING";
    /// The server answered the ping: the whole way works (ok).
    pub const OK: &str = "PATH-OK";
    /// The gateway answered, but cannot reach the server (502 GATEWAY-UPSTREAM-UNREACHABLE).
    pub const GATEWAY_UPSTREAM: &str = "PATH-GATEWAY-UPSTREAM";
    /// The gateway reached the server, but the server does not trust the gateway (403
    /// GATEWAY-NOT-TRUSTED): wrong, revoked or replaced gateway credentials.
    pub const GATEWAY_NOT_TRUSTED: &str = "PATH-GATEWAY-NOT-TRUSTED";
    /// The server (or gateway) refused the agent's client certificate in the TLS handshake.
    pub const CLIENT_REJECTED: &str = "PATH-CLIENT-REJECTED";
    /// The server answered the ping with another refusal; the message names its API error ID.
    pub const SERVER_REFUSED: &str = "PATH-SERVER-REFUSED";
    /// The server's clock and this host's differ by more than a minute.
    pub const CLOCK_SKEW: &str = "PATH-CLOCK-SKEW";
    /// The agent's profile lists no gateway (`steward-agent doctor`).
    pub const NO_GATEWAYS: &str = "PATH-NO-GATEWAYS";
    /// The agent's own profile or identity cannot be read or used (`steward-agent doctor`).
    pub const AGENT_STATE: &str = "PATH-AGENT-STATE";
}

/// Clock difference beyond which `PATH-CLOCK-SKEW` is reported.
pub const CLOCK_SKEW_LIMIT: Duration = Duration::from_secs(60);

/// Largest ping answer read (a Pong is a few hundred bytes).
const MAX_PING_BYTES: usize = 64 * 1024;

/// One way to the server, as the agent would take it.
#[derive(Debug, Clone)]
pub struct PathTarget {
    /// Host name or IP literal (IPv6 with or without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The gateway's name when this is a gateway of the profile; `None` for a LAN server.
    pub gateway: Option<String>,
    /// For a gateway: the SHA-256 thumbprints (hex, any case) the profile lists. Empty means
    /// the thumbprint step is skipped (a LAN server, or an admin who gave none).
    pub thumbprints: Vec<String>,
    /// The roots the agent trusts for this way (for a gateway: the profile's plus its own).
    pub anchors: Vec<CertificateDer<'static>>,
}

impl PathTarget {
    /// `host:port`, IPv6 literals bracketed.
    pub fn authority(&self) -> String {
        let host = bare_host(&self.host);
        if host.contains(':') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// The agent's client certificate (leaf first, then its chain) and key, for the ping step.
#[derive(Debug)]
pub struct PathIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

/// The checks of one way, in order; the last non-ok one is where it stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathReport {
    /// `host:port` checked.
    pub target: String,
    /// The gateway's name, or `None` for a LAN server.
    pub gateway: Option<String>,
    /// `lan` or `gateway`.
    pub kind: &'static str,
    /// Every check made, in order.
    pub findings: Vec<Finding>,
}

impl PathReport {
    /// The worst severity among the findings.
    pub fn worst(&self) -> Severity {
        self.findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Ok)
    }

    /// Whether the way works as far as it was checked (no error).
    pub fn works(&self) -> bool {
        self.worst() != Severity::Error
    }

    /// The findings as text rows (the same layout as `steward doctor cert`).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let what = match &self.gateway {
            Some(g) => format!("gateway {g} at {}", self.target),
            None => format!("LAN server {}", self.target),
        };
        let _ = writeln!(s, "  {what}");
        write_findings(&mut s, &self.findings, "    ");
        s
    }
}

/// The ways of a communication profile, as the agent tries them: every LAN server (trusting
/// the profile's anchors), then every gateway (trusting those and its own extra roots, and
/// requiring one of its thumbprints). Anchors that cannot be read are findings
/// (`PATH-AGENT-STATE`); a way left without any anchor is still listed, and its certificate
/// step then says so.
pub fn profile_targets(profile: &CommunicationProfile) -> (Vec<PathTarget>, Vec<Finding>) {
    let mut findings = Vec::new();
    let mut read = |pems: &[String], whose: &str| -> Vec<CertificateDer<'static>> {
        let mut out = Vec::new();
        for (i, pem) in pems.iter().enumerate() {
            match steward_pki::read_material(pem.as_bytes(), None) {
                Ok(m) => out.extend(m.certs),
                Err(e) => findings.push(bad(
                    ids::AGENT_STATE,
                    Severity::Error,
                    format!("trust anchor {} of {whose} cannot be read: {e}", i + 1),
                    "Let the agent check in on the LAN to receive the current profile, or enroll it again.",
                )),
            }
        }
        out
    };
    let anchors = read(&profile.trust_anchors_pem, "the profile");
    let mut targets: Vec<PathTarget> = profile
        .servers
        .iter()
        .map(|s| PathTarget {
            host: s.host.clone(),
            port: s.port,
            gateway: None,
            thumbprints: Vec::new(),
            anchors: anchors.clone(),
        })
        .collect();
    for g in &profile.gateways {
        let mut all = anchors.clone();
        all.extend(read(&g.trust_anchors_pem, &format!("gateway {}", g.name)));
        targets.push(PathTarget {
            host: g.host.clone(),
            port: g.port,
            gateway: Some(g.name.clone()),
            // The agent refuses every certificate of a gateway listed without thumbprints;
            // an impossible value makes the check say the same instead of skipping it.
            thumbprints: if g.thumbprints.is_empty() {
                vec!["(none listed)".to_owned()]
            } else {
                g.thumbprints.clone()
            },
            anchors: all,
        });
    }
    (targets, findings)
}

/// Several ways checked together (every LAN server and gateway of an agent's profile, or the
/// one target of `steward doctor gateway`), with findings about the whole (no gateways, an
/// unreadable identity).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathsReport {
    /// What was checked: the agent data directory, or the target.
    pub source: String,
    /// Findings that belong to no single way.
    pub findings: Vec<Finding>,
    /// Each way, in the order the agent tries them.
    pub paths: Vec<PathReport>,
    /// The overall verdict (see [`PathsReport::verdict_of`]).
    pub verdict: Severity,
}

impl PathsReport {
    /// Assemble, computing the verdict.
    pub fn new(source: String, findings: Vec<Finding>, paths: Vec<PathReport>) -> Self {
        let verdict = Self::verdict_of(&findings, &paths);
        Self {
            source,
            findings,
            paths,
            verdict,
        }
    }

    /// The worst severity, where a failing way counts as a warning only when another way
    /// works: an agent reaches its server by the first way that works, so an internet
    /// agent's unreachable LAN server is expected, not the fault — but it is still shown.
    pub fn verdict_of(findings: &[Finding], paths: &[PathReport]) -> Severity {
        let general = findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Ok);
        let any_works = paths.iter().any(PathReport::works);
        let ways = paths
            .iter()
            .map(|p| match p.worst() {
                Severity::Error if any_works => Severity::Warning,
                s => s,
            })
            .max()
            .unwrap_or(Severity::Ok);
        general.max(ways)
    }

    /// Exit status: 0 ok, 1 warnings, 2 errors.
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            Severity::Ok => 0,
            Severity::Warning => 1,
            Severity::Error => 2,
        }
    }

    /// Text for people: each way with its steps, then the general findings and the verdict.
    pub fn to_text(&self, title: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{title} — {}", self.source);
        for p in &self.paths {
            let _ = writeln!(s);
            s.push_str(&p.to_text());
        }
        if !self.findings.is_empty() {
            let _ = writeln!(s);
            write_findings(&mut s, &self.findings, "  ");
        }
        let working = self.paths.iter().filter(|p| p.works()).count();
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{}: {working} of {} way(s) work",
            match self.verdict {
                Severity::Ok => "PASS",
                Severity::Warning => "WARN",
                Severity::Error => "FAIL",
            },
            self.paths.len()
        );
        s
    }
}

/// Rows of findings, each with its remedy under it.
pub fn write_findings(s: &mut String, findings: &[Finding], indent: &str) {
    let width = findings.iter().map(|f| f.id.len()).max().unwrap_or(0);
    for f in findings {
        let mark = match f.severity {
            Severity::Ok => "ok   ",
            Severity::Warning => "WARN ",
            Severity::Error => "ERROR",
        };
        let _ = writeln!(s, "{indent}{mark} {:width$}  {}", f.id, f.message);
        if let Some(r) = &f.remedy {
            let _ = writeln!(s, "{indent}      {:width$}  fix: {r}", "");
        }
    }
}

/// A finding that is not ok.
fn bad(id: &'static str, severity: Severity, message: String, remedy: &str) -> Finding {
    Finding {
        id,
        severity,
        message,
        remedy: Some(remedy.to_owned()),
    }
}

fn probe_failure(e: &ProbeError) -> Finding {
    bad(e.id(), Severity::Error, e.to_string(), e.remedy())
}

/// The remedy the certificate rules give for `id` (one text for `doctor cert` and here).
fn rule_remedy(id: &str) -> &'static str {
    RULES.iter().find(|r| r.id == id).map_or(
        "Check the certificate with `steward doctor cert https://HOST:PORT --anchors FILE`.",
        |r| r.remedy,
    )
}

/// Check one way, step by step, stopping at the first failure. `timeout` applies to each
/// step separately. Without `identity` the ping step is skipped (reported as such).
pub async fn check_path(
    target: &PathTarget,
    identity: Option<&PathIdentity>,
    timeout: Duration,
) -> PathReport {
    let mut findings = Vec::new();
    // Ignore the outcome: every step has already recorded its finding.
    let _ = run_steps(target, identity, timeout, &mut findings).await;
    PathReport {
        target: target.authority(),
        gateway: target.gateway.clone(),
        kind: if target.gateway.is_some() {
            "gateway"
        } else {
            "lan"
        },
        findings,
    }
}

/// The steps; `Err(())` once one failed (its finding is already in `out`).
async fn run_steps(
    target: &PathTarget,
    identity: Option<&PathIdentity>,
    timeout: Duration,
    out: &mut Vec<Finding>,
) -> Result<(), ()> {
    let host = bare_host(&target.host).to_owned();
    let fail = |out: &mut Vec<Finding>, f: Finding| {
        out.push(f);
    };
    if target.port == 0 {
        fail(
            out,
            probe_failure(&ProbeError::InvalidTarget(format!(
                "{}: port 0 is not a port a service listens on",
                target.authority()
            ))),
        );
        return Err(());
    }
    let server_name = match server_name(&host) {
        Ok(n) => n,
        Err(why) => {
            fail(out, probe_failure(&ProbeError::InvalidTarget(why)));
            return Err(());
        }
    };

    // 1. DNS.
    let addrs = match resolve(&host, target.port, timeout).await {
        Ok(a) => a,
        Err(e) => {
            fail(out, probe_failure(&e));
            return Err(());
        }
    };
    let listed: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    out.push(Finding::ok(
        ids::DNS,
        if host.parse::<IpAddr>().is_ok() {
            format!("{host} is an address: no name to resolve")
        } else {
            format!("{host} resolves to {}", listed.join(", "))
        },
    ));

    // 2. TCP.
    let start = Instant::now();
    let (tcp, addr) = match connect(&addrs, timeout).await {
        Ok(c) => c,
        Err(e) => {
            fail(out, probe_failure(&e));
            return Err(());
        }
    };
    out.push(Finding::ok(
        ids::TCP,
        format!(
            "TCP port {} of {} accepted the connection in {} ms",
            target.port,
            addr.ip(),
            elapsed_ms(start)
        ),
    ));

    // 3. TLS (without trusting anything yet: what is presented is the evidence).
    let peer = match handshake(tcp, addr, server_name.clone(), timeout).await {
        Ok(p) => p,
        Err(e) => {
            fail(out, probe_failure(&e));
            return Err(());
        }
    };
    out.push(Finding::ok(
        ids::TLS,
        format!(
            "{addr} speaks TLS ({}, {}) and presented {} certificate(s){}",
            peer.protocol,
            peer.cipher_suite,
            peer.certs.len(),
            if peer.client_auth.is_some() {
                "; it asks for a client certificate"
            } else {
                ""
            }
        ),
    ));

    // 4. The certificate, judged as the agent judges it.
    let Some((leaf, intermediates)) = peer.certs.split_first() else {
        fail(
            out,
            bad(
                ids::CERT,
                Severity::Error,
                format!("{addr} completed TLS without presenting a certificate"),
                rule_remedy("CERT-CHAIN-INCOMPLETE"),
            ),
        );
        return Err(());
    };
    let facts = CertFacts::from_der(leaf).ok();
    let shown = describe(facts.as_ref(), leaf);
    let verifier = match verifier(&target.anchors) {
        Ok(v) => v,
        Err(why) => {
            fail(
                out,
                bad(
                    ids::CERT,
                    Severity::Error,
                    format!("the trust anchors cannot be used: {why}"),
                    "Give the platform root (and a third-party certificate's root) as PEM: --anchors FILE, or the agent's profile.",
                ),
            );
            return Err(());
        }
    };
    if let Err(e) =
        verifier.verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
    {
        fail(
            out,
            cert_failure(&e, &shown, &host, target.anchors.len(), facts.as_ref()),
        );
        return Err(());
    }
    out.push(Finding::ok(
        ids::CERT,
        format!(
            "{shown} chains to one of the {} trust anchor(s), is in date and covers {host}",
            target.anchors.len()
        ),
    ));
    if let Some(f) = &facts {
        let left = (f.not_after - OffsetDateTime::now_utc()).whole_days();
        if left < steward_doctor::cert::EXPIRY_WARNING_DAYS {
            out.push(bad(
                "CERT-EXPIRES-SOON",
                Severity::Warning,
                format!(
                    "{shown} expires at {} ({left} day(s) left)",
                    rfc3339(f.not_after)
                ),
                rule_remedy("CERT-EXPIRES-SOON"),
            ));
        }
    }

    // 5. The thumbprint, for a gateway.
    let sha256 = Thumbprint::of(leaf).sha256_hex();
    if target.thumbprints.is_empty() && target.gateway.is_some() {
        out.push(Finding::ok(
            ids::THUMBPRINT,
            format!("skipped: no thumbprint to compare with (presented SHA-256 {sha256}); give --thumbprint HEX or --agent-data-dir DIR"),
        ));
    } else if !target.thumbprints.is_empty() {
        if target
            .thumbprints
            .iter()
            .any(|t| normalise(t) == normalise(&sha256))
        {
            out.push(Finding::ok(
                ids::THUMBPRINT,
                format!("SHA-256 {sha256} is listed for this gateway"),
            ));
        } else {
            fail(
                out,
                bad(
                    ids::THUMBPRINT_UNKNOWN,
                    Severity::Error,
                    format!(
                        "{addr} presented {shown} with SHA-256 {sha256}, which is not among the thumbprint(s) listed for {}: {}",
                        target.gateway.as_deref().unwrap_or("this gateway"),
                        target.thumbprints.join(", ")
                    ),
                    "Something other than this gateway answers on that name and port (another service, a load balancer or TLS-inspecting proxy), or the gateway's certificate was replaced and the server has not learned the new thumbprint: check what listens there, and let the gateway report (it does on start and every minute).",
                ),
            );
            return Err(());
        }
    }

    // 6. The whole way, with the agent's identity.
    let Some(identity) = identity else {
        out.push(Finding::ok(
            ids::PING,
            "skipped: no agent identity given, so the way through to the server (and, for a gateway, its link to the server) is not proven; give --agent-data-dir DIR".to_owned(),
        ));
        return Ok(());
    };
    ping(target, identity, addr, server_name, verifier, timeout, out).await
}

/// Thumbprints compared without case, colons or spaces (as Windows shows them).
fn normalise(t: &str) -> String {
    t.chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is not a host name: {e}"))
}

fn verifier(anchors: &[CertificateDer<'static>]) -> Result<Arc<WebPkiServerVerifier>, String> {
    if anchors.is_empty() {
        return Err("none given".to_owned());
    }
    let mut roots = RootCertStore::empty();
    for (i, a) in anchors.iter().enumerate() {
        roots
            .add(a.clone())
            .map_err(|e| format!("anchor {} is not usable: {e}", i + 1))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn describe(facts: Option<&CertFacts>, der: &CertificateDer<'_>) -> String {
    match facts {
        Some(f) => {
            let names: Vec<String> = f.sans.iter().flatten().map(ToString::to_string).collect();
            format!(
                "the certificate (subject {}, issuer {}, valid {} .. {}, names [{}])",
                f.subject,
                f.issuer,
                rfc3339(f.not_before),
                rfc3339(f.not_after),
                names.join(", ")
            )
        }
        None => format!(
            "a certificate that does not parse (SHA-256 {})",
            Thumbprint::of(der).sha256_hex()
        ),
    }
}

/// A webpki verdict as the certificate rule it breaks.
fn cert_failure(
    e: &rustls::Error,
    shown: &str,
    host: &str,
    anchors: usize,
    facts: Option<&CertFacts>,
) -> Finding {
    let rule =
        |id: &'static str, message: String| bad(id, Severity::Error, message, rule_remedy(id));
    let rustls::Error::InvalidCertificate(c) = e else {
        return bad(
            ids::CERT,
            Severity::Error,
            format!("{shown} cannot be verified: {e}"),
            rule_remedy("CERT-SIGNATURE"),
        );
    };
    match c {
        CertificateError::UnknownIssuer => rule(
            "CERT-UNTRUSTED-ROOT",
            format!(
                "{shown} does not chain to any of the {anchors} trust anchor(s) (UnknownIssuer): a certificate from another CA, or a chain without its intermediate"
            ),
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            let whose = match facts {
                Some(f) if f.not_after < OffsetDateTime::now_utc() => "",
                _ => " (a CA certificate of its chain has expired)",
            };
            rule("CERT-EXPIRED", format!("{shown} is expired{whose}"))
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => rule(
            "CERT-NOT-YET-VALID",
            format!("{shown} is not valid yet (check this host's clock and the CA's)"),
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            rule(
                "CERT-NAME-MISMATCH",
                format!("{shown} does not cover {host}, the name agents connect to"),
            )
        }
        CertificateError::Revoked => rule("CERT-REVOKED", format!("{shown} is revoked")),
        CertificateError::BadSignature => rule(
            "CERT-SIGNATURE",
            format!("{shown}: a signature in its chain does not verify"),
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => rule(
            "CERT-EKU-SERVER-AUTH",
            format!("{shown} is not valid for TLS server authentication"),
        ),
        other => bad(
            ids::CERT,
            Severity::Error,
            format!("{shown} is refused: {other:?}"),
            rule_remedy("CERT-SIGNATURE"),
        ),
    }
}

/// `GET /agent/v1/ping` with the client certificate, over a fresh connection to `addr`.
async fn ping(
    target: &PathTarget,
    identity: &PathIdentity,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    verifier: Arc<WebPkiServerVerifier>,
    timeout: Duration,
    out: &mut Vec<Finding>,
) -> Result<(), ()> {
    let shown = addr.to_string();
    let transport = |out: &mut Vec<Finding>, e: ProbeError| {
        out.push(probe_failure(&e));
        Err(())
    };
    let config = match ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
                .map_err(|e| e.to_string())
        }) {
        Ok(c) => c,
        Err(why) => {
            out.push(bad(
                ids::AGENT_STATE,
                Severity::Error,
                format!("the agent's client certificate cannot be used: {why}"),
                "Enroll the agent again (steward-agent enroll --force --package FILE).",
            ));
            return Err(());
        }
    };
    let tcp = match within(Stage::Connect, &shown, timeout, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return transport(
                out,
                ProbeError::Io {
                    addr: shown,
                    reason: format!("reconnecting for the ping: {e}"),
                },
            );
        }
        Err(e) => return transport(out, e),
    };
    let tls = match within(
        Stage::Handshake,
        &shown,
        timeout,
        TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            out.push(client_rejected(&shown, &e.to_string()));
            return Err(());
        }
        Err(e) => return transport(out, e),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await {
        Ok(s) => s,
        Err(e) => {
            return transport(
                out,
                ProbeError::Io {
                    addr: shown,
                    reason: e.to_string(),
                },
            );
        }
    };
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = match Request::get(paths::PING)
        .header(header::HOST, target.authority())
        .header(header::USER_AGENT, crate::USER_AGENT)
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => {
            driver.abort();
            return transport(out, ProbeError::InvalidTarget(e.to_string()));
        }
    };
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let gateway_time = response
            .headers()
            .get(GATEWAY_TIME_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok());
        let body = Limited::new(response.into_body(), MAX_PING_BYTES)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        Ok::<_, hyper::Error>((status, body, gateway_time))
    };
    let answer = within(Stage::Response, &shown, timeout, exchange).await;
    driver.abort();
    let (status, body, gateway_time) = match answer {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            // With TLS 1.3 a refused client certificate arrives after the handshake, here.
            let text = error_chain(&e);
            if looks_like_client_refusal(&text) {
                out.push(client_rejected(&shown, &text));
                return Err(());
            }
            return transport(
                out,
                ProbeError::Io {
                    addr: shown,
                    reason: text,
                },
            );
        }
        Err(e) => return transport(out, e),
    };
    judge_ping(target, status, &body, gateway_time, out)
}

fn looks_like_client_refusal(text: &str) -> bool {
    [
        "BadCertificate",
        "UnknownCA",
        "CertificateRevoked",
        "CertificateExpired",
        "CertificateRequired",
        "CertificateUnknown",
        "AccessDenied",
    ]
    .iter()
    .any(|a| text.contains(a))
}

fn client_rejected(addr: &str, detail: &str) -> Finding {
    bad(
        ids::CLIENT_REJECTED,
        Severity::Error,
        format!("{addr} refused the agent's client certificate in the TLS handshake: {detail}"),
        "The agent's certificate is revoked, expired or from another platform CA (a server rebuilt with a new CA, or a gateway whose CRL lists it): check `steward-agent status`, and enroll the agent again with a package from this server.",
    )
}

fn judge_ping(
    target: &PathTarget,
    status: StatusCode,
    body: &[u8],
    gateway_time: Option<i64>,
    out: &mut Vec<Finding>,
) -> Result<(), ()> {
    if status == StatusCode::OK {
        return match serde_json::from_slice::<Pong>(body) {
            Ok(pong) => {
                let via = match &pong.via_gateway {
                    Some(g) => format!("through gateway {g}"),
                    None => "directly".to_owned(),
                };
                out.push(Finding::ok(
                    ids::OK,
                    format!(
                        "the server answered the ping {via} for device {} (server time {}): this way works",
                        pong.device_id, pong.server_time
                    ),
                ));
                let now = OffsetDateTime::now_utc();
                if let Some(f) = clock_skew(&pong.server_time, now) {
                    out.push(f);
                }
                if let Some(f) = gateway_time.and_then(|g| gateway_skew(g, &pong.server_time, now))
                {
                    out.push(f);
                }
                Ok(())
            }
            Err(e) => {
                out.push(bad(
                    ids::PING,
                    Severity::Error,
                    format!(
                        "{} answered the ping with HTTP 200 but not a Steward answer ({e}): it is not a Steward server or gateway",
                        target.authority()
                    ),
                    "Point the profile (or this check) at the Steward agent site or gateway port.",
                ));
                Err(())
            }
        };
    }
    let api = serde_json::from_slice::<ApiError>(body).ok();
    let (api_id, message) = match &api {
        Some(a) => (a.id.as_str(), a.message.as_str()),
        None => ("", ""),
    };
    let evidence = if api.is_some() {
        format!("HTTP {} {api_id}: {message}", status.as_u16())
    } else {
        format!("HTTP {} without a Steward error body", status.as_u16())
    };
    let finding = match (status.as_u16(), api_id) {
        (502, "GATEWAY-UPSTREAM-UNREACHABLE") => bad(
            ids::GATEWAY_UPSTREAM,
            Severity::Error,
            format!(
                "the gateway at {} answered but cannot reach the server: {evidence}",
                target.authority()
            ),
            "Open the path from the gateway (DMZ) to the server's agent-site port and check the server URL the gateway joined with; see GATEWAY-SERVER-UNREACHABLE in the gateway's log.",
        ),
        (403, "GATEWAY-NOT-TRUSTED") => bad(
            ids::GATEWAY_NOT_TRUSTED,
            Severity::Error,
            format!(
                "the gateway at {} reached the server, but the server does not trust the gateway's credentials: {evidence}",
                target.authority()
            ),
            "The gateway's identity is revoked, replaced or from another server: make a token (steward gateway token) and join the gateway again into a new data directory.",
        ),
        _ => bad(
            ids::SERVER_REFUSED,
            Severity::Error,
            format!(
                "{} refused the ping: {evidence}{}",
                target.authority(),
                if status == StatusCode::NOT_FOUND {
                    " (a server or gateway older than the ping route answers 404)"
                } else {
                    ""
                }
            ),
            "Look up the server's error ID in docs/diagnostics.md and act on it (for example AGENT-UNKNOWN-DEVICE: enroll the agent again).",
        ),
    };
    out.push(finding);
    Err(())
}

/// `PATH-CLOCK-SKEW` when `server_time` is more than [`CLOCK_SKEW_LIMIT`] away from `now`.
pub fn clock_skew(server_time: &str, now: OffsetDateTime) -> Option<Finding> {
    let server =
        OffsetDateTime::parse(server_time, &time::format_description::well_known::Rfc3339).ok()?;
    let skew = (now - server).whole_seconds();
    let limit = i64::try_from(CLOCK_SKEW_LIMIT.as_secs()).unwrap_or(i64::MAX);
    if skew.abs() <= limit {
        return None;
    }
    Some(bad(
        ids::CLOCK_SKEW,
        Severity::Warning,
        format!(
            "this host's clock is {} s {} the server's ({} here, {server_time} there)",
            skew.abs(),
            if skew > 0 { "ahead of" } else { "behind" },
            rfc3339(now)
        ),
        "Synchronise both clocks (NTP): certificate validity is judged by each side's clock, so a skew of hours makes valid certificates look expired or not yet valid.",
    ))
}

/// `PATH-CLOCK-SKEW` naming the gateway when its clock (`gateway_secs`, from the header it
/// adds to forwarded answers) is more than [`CLOCK_SKEW_LIMIT`] away from this host's or the
/// server's: a gateway with a wrong clock refuses valid agent certificates or accepts a CRL as
/// fresh when it is not.
pub fn gateway_skew(gateway_secs: i64, server_time: &str, now: OffsetDateTime) -> Option<Finding> {
    let limit = i64::try_from(CLOCK_SKEW_LIMIT.as_secs()).unwrap_or(i64::MAX);
    let here = now.unix_timestamp() - gateway_secs;
    let server = OffsetDateTime::parse(server_time, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|s| s.unix_timestamp() - gateway_secs);
    let side = |d: i64| if d > 0 { "ahead of" } else { "behind" };
    let mut parts = Vec::new();
    if here.abs() > limit {
        parts.push(format!(
            "this host's clock is {} s {} the gateway's",
            here.abs(),
            side(here)
        ));
    }
    if let Some(s) = server.filter(|s| s.abs() > limit) {
        parts.push(format!(
            "the server's clock is {} s {} the gateway's",
            s.abs(),
            side(s)
        ));
    }
    if parts.is_empty() {
        return None;
    }
    let gw = OffsetDateTime::from_unix_timestamp(gateway_secs)
        .map_or_else(|_| gateway_secs.to_string(), rfc3339);
    Some(bad(
        ids::CLOCK_SKEW,
        Severity::Warning,
        format!(
            "{} (gateway {gw}, server {server_time}, here {})",
            parts.join("; "),
            rfc3339(now)
        ),
        "Synchronise the clocks of the gateway, the server and the agents (NTP): the gateway judges agent certificates and CRL validity by its own clock.",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_clock_skew_names_the_gateway() {
        let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time");
        let server = rfc3339(now);
        assert!(gateway_skew(now.unix_timestamp() - 30, &server, now).is_none());
        let f = gateway_skew(now.unix_timestamp() - 3600, &server, now).expect("skew");
        assert_eq!((f.id, f.severity), (ids::CLOCK_SKEW, Severity::Warning));
        assert!(
            f.message
                .contains("this host's clock is 3600 s ahead of the gateway's"),
            "{}",
            f.message
        );
        assert!(
            f.message
                .contains("the server's clock is 3600 s ahead of the gateway's"),
            "{}",
            f.message
        );
    }

    #[test]
    fn thumbprints_compare_without_case_or_separators() {
        assert_eq!(normalise("ab:cd ef"), "ABCDEF");
        assert_eq!(normalise("ABCDEF"), normalise("abcdef"));
    }

    #[test]
    fn clock_skew_over_a_minute_is_named() {
        let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time");
        assert!(clock_skew(&rfc3339(now - time::Duration::seconds(59)), now).is_none());
        let f = clock_skew(&rfc3339(now - time::Duration::seconds(600)), now).expect("skew");
        assert_eq!((f.id, f.severity), (ids::CLOCK_SKEW, Severity::Warning));
        assert!(f.message.contains("600 s ahead of"), "{}", f.message);
        assert!(clock_skew("not a time", now).is_none());
    }
}
