//! Steward's wire protocol: what agents, gateways and the server say to each other, and the
//! communication profile — the one document through which every change of server names, ports,
//! protocol, trust anchors and gateways reaches agents.
//!
//! Architecture invariant: serde types only; no I/O, no crypto. All messages are JSON over
//! HTTPS (mutual TLS on agent routes), or, with `protocol: http` on the LAN, over plain HTTP
//! with signed requests and answers ([`http_sig`] names the headers and the signed bytes). Fields are added, never repurposed; unknown fields are
//! ignored, so a newer server can talk to an older agent and the other way round.
#![forbid(unsafe_code)]

pub mod admin;
pub mod gateway_renew;

pub use gateway_renew::{GatewayCertStatus, GatewayRenewRequest, GatewayRenewResponse};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of this protocol; sent by agents, checked by the server.
pub const PROTOCOL_VERSION: u32 = 1;
/// The agent site's default port (as in ITMS).
pub const DEFAULT_AGENT_PORT: u16 = 4726;
/// The console/admin API's default port.
pub const DEFAULT_CONSOLE_PORT: u16 = 4727;
/// Largest request body the agent site accepts (an inventory, or a batch of task results).
pub const MAX_AGENT_BODY_BYTES: usize = 4 * 1024 * 1024;

/// `e`'s message followed by each of its causes, `": "` between them: what a log line or an
/// error shown to a person needs, where HTTP libraries' own first line is often only
/// "connection error" or "error sending request".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    push_causes(&mut text, e);
    text
}

/// Appends each cause of `e` (not `e` itself) to `text`, each after `": "`; for messages that
/// say what `e` is in their own words first.
pub fn push_causes(text: &mut String, e: &dyn std::error::Error) {
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
}

/// A `Retry-After` header's value in seconds (the form the server sends; an HTTP date is not
/// understood), at most an hour. `None` when it is not a whole number of seconds.
pub fn parse_retry_after(value: &str) -> Option<std::time::Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    Some(std::time::Duration::from_secs(secs.min(3600)))
}

/// How long a client waits after a 503 `SERVER-BUSY` (the server's admission control): the
/// answer's `Retry-After` plus up to as much again, placed by `r` in [0, 1), so clients turned
/// away together do not come back together (at least 1 s, at most an hour). Agents, the
/// swarm and gateways' reports all wait this way.
pub fn busy_delay(retry_after: std::time::Duration, r: f64) -> std::time::Duration {
    use std::time::Duration;
    let base = retry_after.clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let r = if r.is_finite() {
        r.clamp(0.0, 1.0)
    } else {
        0.5
    };
    base.mul_f64(1.0 + r)
}

/// Paths of the agent site.
pub mod paths {
    /// POST [`crate::EnrollRequest`] → [`crate::EnrollResponse`]. The only agent route without a
    /// client certificate: the bootstrap token authenticates it.
    pub const ENROLL: &str = "/agent/v1/enroll";
    /// POST [`crate::KerberosEnrollRequest`] → [`crate::EnrollResponse`]: enrollment with the
    /// host's Kerberos identity (`host/<fqdn>` from the system keytab) instead of a bootstrap
    /// token, when the server allows it (`[auth] agent_kerberos_enrollment`).
    pub const ENROLL_KERBEROS: &str = "/agent/v1/enroll/kerberos";
    /// POST [`crate::CheckinRequest`] → [`crate::CheckinResponse`].
    ///
    /// With `?wait=SECS[&tasks=carry]` the check-in may go on as the long-poll that would
    /// follow it ([`WAIT`]), saving that request: see [`crate::CHECKIN_HELD_CONTENT_TYPE`].
    pub const CHECKIN: &str = "/agent/v1/checkin";
    /// GET `?config_version=N&wait=SECS[&tasks=carry]` → 200 [`crate::WakeUp`] when there is
    /// work (with the tasks in it when `tasks=carry`, see [`crate::WAIT_CARRY_TASKS`]), 204
    /// after the long-poll period otherwise. Lets a task reach an online agent within seconds.
    pub const WAIT: &str = "/agent/v1/wait";
    /// GET → [`crate::Pong`]: proves the whole path (TLS, client certificate, and through a
    /// gateway the gateway's link to the server) without side effects; `steward-agent doctor`.
    pub const PING: &str = "/agent/v1/ping";
    /// POST [`crate::GatewayJoinRequest`] → [`crate::GatewayJoinResponse`]. Like enrollment,
    /// authenticated by a single-use token instead of a client certificate.
    pub const GATEWAY_JOIN: &str = "/gateway/v1/join";
    /// POST [`crate::GatewayReport`] → [`crate::GatewayReportResponse`]. Needs the gateway's
    /// own client certificate.
    pub const GATEWAY_REPORT: &str = "/gateway/v1/report";
    /// `GET`: the issuing CA's current CRL (DER), for enrolled gateways only (client
    /// certificate), so a DMZ needs no route to the server's plain-HTTP CRL port.
    pub const GATEWAY_CRL: &str = "/gateway/v1/crl";
    /// POST [`crate::GatewayRenewRequest`] → [`crate::GatewayRenewResponse`]: an enrolled,
    /// unrevoked gateway trades CSRs (new keys made on the gateway) for a new identity and/or
    /// server certificate, over its current identity.
    pub const GATEWAY_RENEW: &str = "/gateway/v1/renew";
    /// POST [`crate::RenewRequest`] → [`crate::RenewResponse`]: an enrolled agent trades a
    /// CSR for a new key (made on the computer) for a new client certificate, over its current
    /// identity. The old certificate stays valid until the agent's first request with the new
    /// one.
    pub const RENEW: &str = "/agent/v1/renew";
}

/// The header through which an enrolled gateway states the agent identity it verified at its
/// edge: the agent's client certificate, base64 (standard alphabet) of the DER. The server
/// honours it only on connections authenticated with an enrolled gateway's certificate.
pub const AGENT_CERT_HEADER: &str = "x-steward-agent-cert";

/// What a gateway sends instead of [`AGENT_CERT_HEADER`] once the server has accepted the
/// certificate whole on the same agent connection ([`AGENT_CERT_KNOWN_HEADER`]): its SHA-256
/// thumbprint, 64 hex digits. The whole certificate is about 1 KB of base64 that HPACK cannot
/// index (4 KB table, a different one per agent) and the server would hash again on every
/// request. A server that does not know the thumbprint (restarted, or a certificate was revoked since)
/// answers 412 `GATEWAY-AGENT-CERT-UNKNOWN`, and the gateway sends the request again with the
/// certificate whole.
pub const AGENT_CERT_SHA256_HEADER: &str = "x-steward-agent-cert-sha256";

/// The server's answer to a request that forwarded the agent's certificate whole: it verified
/// the certificate, and will take its thumbprint ([`AGENT_CERT_SHA256_HEADER`]) instead from now
/// on. Servers older than this never send it, so a gateway never names a certificate to them by
/// thumbprint.
pub const AGENT_CERT_KNOWN_HEADER: &str = "x-steward-agent-cert-known";

/// The header a gateway adds to every answer it forwards: its own clock, in seconds since
/// the Unix epoch, so a doctor can name clock skew between agent, gateway and server (the
/// server's clock is in the ping's body).
pub const GATEWAY_TIME_HEADER: &str = "x-steward-gateway-time";

/// Transport of the agent site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TLS with client certificates. The default, and the only choice through a gateway.
    #[default]
    Https,
    /// Plain HTTP on the LAN (`[listen] protocol = "http"`): an explicit, warned-about choice.
    /// Inventory and task output cross the LAN readable by anyone on it; every request is
    /// still signed with the agent's client-certificate key and every answer with the agent
    /// site's key ([`http_sig`]), so identity and integrity hold. Agents use a server's
    /// [`ServerEndpoint::http_port`] and fall back to its HTTPS port; gateways are always
    /// HTTPS. Agents older than this variant cannot read a profile that names it.
    Http,
}

/// Plain-HTTP agent requests and answers: headers and the exact bytes that are signed.
///
/// A request carries the agent's client certificate and a signature by its key over
/// [`request_message`]; the server verifies the certificate (platform CA, not revoked, the
/// device's current one), the signature, the timestamp (within [`MAX_SKEW_SECS`]) and that
/// the nonce is new. The answer carries the agent-site certificate chain and a signature by
/// its key over [`response_message`] (bound to the request's nonce); the agent verifies the
/// chain against the profile's trust anchors and the name it dialled before believing it.
pub mod http_sig {
    /// The device ID (the client certificate's CN).
    pub const DEVICE: &str = "x-steward-device";
    /// The agent's clock, Unix seconds.
    pub const TIME: &str = "x-steward-time";
    /// 32 hex digits of randomness, new for every request.
    pub const NONCE: &str = "x-steward-nonce";
    /// The agent's client certificate: base64 (standard) of the DER.
    pub const CERT: &str = "x-steward-cert";
    /// The signature over [`request_message`] by the client certificate's key, base64.
    pub const SIGNATURE: &str = "x-steward-signature";
    /// The signature over [`response_message`] by the agent site's key, base64.
    pub const RESPONSE_SIGNATURE: &str = "x-steward-response-signature";
    /// The agent site's certificate chain (leaf first), base64 DER, comma-separated.
    pub const RESPONSE_CHAIN: &str = "x-steward-response-chain";
    /// Largest difference between the agent's and the server's clock a request may show.
    pub const MAX_SKEW_SECS: i64 = 300;

    /// What the agent signs: method, path and query, device, time, nonce and the body's
    /// SHA-256 (hex), one per line after a fixed label.
    pub fn request_message(
        method: &str,
        path_and_query: &str,
        device_id: &str,
        time: i64,
        nonce: &str,
        body_sha256_hex: &str,
    ) -> Vec<u8> {
        format!(
            "steward-http-request/1\n{method}\n{path_and_query}\n{device_id}\n{time}\n{nonce}\n{}",
            body_sha256_hex.to_ascii_lowercase()
        )
        .into_bytes()
    }

    /// What the server signs: the request's nonce, the status and the body's SHA-256 (hex).
    pub fn response_message(nonce: &str, status: u16, body_sha256_hex: &str) -> Vec<u8> {
        format!(
            "steward-http-response/1\n{nonce}\n{status}\n{}",
            body_sha256_hex.to_ascii_lowercase()
        )
        .into_bytes()
    }
}

/// One address an agent can reach the server at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEndpoint {
    /// DNS name (must be covered by the agent-site certificate) or IP literal.
    pub host: String,
    /// TCP port of the agent site.
    pub port: u16,
    /// TCP port of the plain-HTTP agent site, when the server offers one
    /// ([`Protocol::Http`]). Left out of the JSON when absent, so profiles without it hash
    /// (and version) as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
}

impl ServerEndpoint {
    /// `http://host:http_port` when the server offers plain HTTP here.
    pub fn http_url(&self) -> Option<String> {
        let port = self.http_port?;
        Some(if self.host.contains(':') {
            format!("http://[{}]:{port}", self.host)
        } else {
            format!("http://{}:{port}", self.host)
        })
    }

    /// `https://host:port` (IPv6 literals bracketed).
    pub fn base_url(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }
}

/// The communication profile: how agents reach and trust the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommunicationProfile {
    /// Increases with every change; agents keep the highest they have verified.
    pub version: u64,
    /// LAN addresses of the server, tried in order.
    pub servers: Vec<ServerEndpoint>,
    /// Transport.
    #[serde(default)]
    pub protocol: Protocol,
    /// PEM certificates agents trust for the server (the platform root, plus any root staged
    /// for a certificate replacement). Never a leaf: renewing a leaf must not touch agents.
    pub trust_anchors_pem: Vec<String>,
    /// Internet gateways, tried after every LAN server failed. Derived by the server from
    /// what the gateways report about themselves, never typed by an admin. Left out of the JSON
    /// when empty, so a profile without gateways hashes (and versions) as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayEntry>,
}

/// One internet gateway as agents see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEntry {
    /// The gateway's ID (its identity certificate's CN); named in logs and connection paths.
    pub name: String,
    /// External DNS name (covered by its server certificate) or IP literal.
    pub host: String,
    /// The TCP port it really listens on, as it reported.
    pub port: u16,
    /// SHA-256 (hex) of its server certificates: the current one and, during a renewal, the
    /// next. The agent refuses a gateway whose certificate is not among them.
    pub thumbprints: Vec<String>,
    /// Extra roots (PEM) the agent accepts for this gateway only: the root of a third-party
    /// certificate bound with `steward gateway cert import`. Empty for platform certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_anchors_pem: Vec<String>,
}

impl GatewayEntry {
    /// `host:port` (IPv6 literals bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A gateway joining: its CSR (key made on the gateway), the single-use token, and the
/// external names its server certificate must cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayJoinRequest {
    /// The token from `steward gateway token`.
    pub token: String,
    /// PKCS#10 CSR (PEM) for the gateway→server identity (client certificate).
    pub client_csr_pem: String,
    /// PKCS#10 CSR (PEM) for the certificate agents see (server certificate).
    pub server_csr_pem: String,
    /// External DNS names or IP literals agents use to reach the gateway.
    pub external_names: Vec<String>,
    /// Gateway version.
    pub version: String,
}

/// What a gateway receives when it joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayJoinResponse {
    /// Stable gateway ID (CN of its client certificate).
    pub gateway_id: String,
    /// Client certificate for the gateway→server link (PEM).
    pub client_cert_pem: String,
    /// Server certificate for its external names (PEM).
    pub server_cert_pem: String,
    /// Issuing chain above both (PEM).
    pub chain_pem: Vec<String>,
    /// Trust anchors: the platform root(s), for verifying agents and the server.
    pub trust_anchors_pem: Vec<String>,
    /// The issuing CA's CRL URL, fetched periodically to refuse revoked agents at the edge.
    pub crl_url: String,
}

/// What a gateway says about itself, on start and periodically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayReport {
    /// The external name agents use.
    pub external_name: String,
    /// The port it really bound.
    pub listen_port: u16,
    /// SHA-256 (hex) of its server certificate(s): current, then next.
    pub thumbprints: Vec<String>,
    /// Gateway version.
    pub version: String,
    /// `ok`, or what is wrong (for example that the CRL could not be fetched).
    pub health: String,
    /// Ports it still answers on after a port change, until every agent has a profile with
    /// the new one (an internet-only agent can learn the new port only through the old).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_ports: Vec<u16>,
    /// Roots (PEM) of its server certificates when they are not the platform's (imported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_anchors_pem: Vec<String>,
    /// Its own external name and port(s) tested from its side, as the server asked in the
    /// last [`GatewayReportResponse`]: what the firewall, NAT and DNS really let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ReachProbe>,
}

/// The server's answer to a [`GatewayReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayReportResponse {
    /// Where agents are told to reach this gateway (profile entries): test each from the
    /// gateway's side (resolve, connect, TLS, own thumbprint) and report the outcome.
    pub probe: Vec<ProbeTarget>,
    /// True when every active device has acknowledged a profile holding this gateway's
    /// current entry (port, thumbprints): previous ports may close, a staged certificate
    /// may go live.
    pub all_agents_current: bool,
    /// Devices (ID and name) that have not acknowledged it yet; capped, see `pending_total`.
    pub pending_devices: Vec<String>,
    /// How many devices have not.
    pub pending_total: u64,
    /// The gateway's identity certificate is due for renewal (the configured share of its
    /// lifetime has passed): renew it now ([`paths::GATEWAY_RENEW`]). Absent from older
    /// servers (false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub renew_identity: bool,
    /// The platform-issued server certificate the gateway serves is due for renewal: renew
    /// it and stage the new one as next. Absent from older servers (false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub renew_server: bool,
}

/// One address to test from the gateway's side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTarget {
    /// Host name or IP literal, as agents use it.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a connection attempt failed, in the classes an admin acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The name did not resolve.
    Dns,
    /// Connection refused or unreachable (nothing listens, or a firewall rejects).
    Refused,
    /// No answer in time (a firewall drops: "filtered").
    Timeout,
    /// TCP connected but TLS failed (not TLS, untrusted, expired, name mismatch, ...).
    Tls,
    /// TLS succeeded but the certificate is not one the profile lists for this gateway, or
    /// what answered is not a Steward gateway.
    WrongPeer,
    /// Connected, but the request was refused or answered with an error.
    Http,
}

/// The outcome of a gateway's test of its own external address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReachProbe {
    /// What was tested.
    pub target: ProbeTarget,
    /// `None`: reached, and it was this gateway (its own thumbprint).
    pub failure: Option<FailureKind>,
    /// The evidence (resolved addresses, OS error, TLS alert, thumbprint seen).
    pub detail: String,
    /// When (RFC 3339).
    pub at: String,
}

/// One failed way to the server, as an agent reports it on the next channel that works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAttempt {
    /// The gateway's name, or `None` for a LAN server.
    pub gateway: Option<String>,
    /// `host:port` tried.
    pub address: String,
    /// Why it failed.
    pub kind: FailureKind,
    /// The agent's event ID for it (AGENT-CONNECTION-FAILED, AGENT-GATEWAY-THUMBPRINT, ...).
    pub id: String,
    /// The evidence.
    pub detail: String,
    /// When it failed last (RFC 3339).
    pub last_at: String,
    /// How many times since it was last reported.
    pub count: u32,
}

/// What `steward package agent` writes: everything an agent needs to enroll, and no secret but
/// a single-use, expiring token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapPackage {
    /// Always [`BootstrapPackage::FORMAT`]; lets a corrupt or foreign file be named as such.
    pub format: String,
    /// Where and how to reach the server.
    pub profile: CommunicationProfile,
    /// The enrollment token (random secret, shown nowhere else).
    pub token: String,
    /// When the token stops working (RFC 3339).
    pub expires_at: String,
}

impl BootstrapPackage {
    /// The `format` marker of version 1 packages.
    pub const FORMAT: &'static str = "steward-bootstrap/1";
}

/// Enrollment: the agent's CSR (its key never leaves the host) and the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The bootstrap token.
    pub token: String,
    /// PKCS#10 CSR in PEM.
    pub csr_pem: String,
    /// The host's name, for the console.
    pub hostname: String,
    /// Agent version.
    pub agent_version: String,
}

/// Enrollment of a domain-joined host with its Kerberos identity instead of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KerberosEnrollRequest {
    /// A SPNEGO token (base64) for `HTTP/<server name>`, initiated as `host/<fqdn>@REALM`.
    /// It travels in the body, not in `Authorization`, so the agent's one HTTP client serves
    /// both enrollments.
    pub negotiate_token: String,
    /// PKCS#10 CSR in PEM.
    pub csr_pem: String,
    /// Agent version.
    pub agent_version: String,
}

/// The agent's identity and first configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// Stable device ID (also the client certificate's CN).
    pub device_id: String,
    /// The client certificate (PEM).
    pub cert_pem: String,
    /// Issuing chain above it (PEM), to present with it.
    pub chain_pem: Vec<String>,
    /// The current profile.
    pub profile: CommunicationProfile,
}

/// How an agent reached the server this time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ConnectionPath {
    /// Directly, on the LAN.
    Lan {
        /// `host:port` used.
        server: String,
    },
    /// Through an internet gateway.
    Gateway {
        /// The gateway's name (its ID).
        gateway: String,
        /// `host:port` used.
        via: String,
    },
}

/// A fault the agent met, by its stable event ID (see docs/diagnostics.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// Event ID, e.g. `AGENT-TLS-UNTRUSTED`.
    pub id: String,
    /// What happened, with the evidence.
    pub message: String,
    /// When (RFC 3339).
    pub at: String,
}

/// A disk as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Mount point.
    pub mount: String,
    /// File system type.
    pub fs: String,
    /// Total bytes.
    pub total_bytes: u64,
    /// Available bytes.
    pub available_bytes: u64,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// Name (`eth0`).
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Addresses with prefix (`192.0.2.7/24`).
    pub addresses: Vec<String>,
}

/// Hardware and software inventory. Sent when its hash changes, and in full once a day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Host name.
    pub hostname: String,
    /// OS name (`Debian GNU/Linux`).
    pub os_name: String,
    /// OS version (`12`).
    pub os_version: String,
    /// Kernel version.
    pub kernel: String,
    /// CPU model.
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
    /// Disks.
    pub disks: Vec<Disk>,
    /// Network interfaces.
    pub interfaces: Vec<NetInterface>,
    /// Agent version.
    pub agent_version: String,
}

/// A check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinRequest {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol: u32,
    /// Agent version.
    pub agent_version: String,
    /// Version of the configuration the agent holds (0: none yet).
    pub config_version: u64,
    /// Hash of the agent's current inventory.
    pub inventory_hash: String,
    /// The inventory, when it changed, was asked for, or once a day.
    pub inventory: Option<Inventory>,
    /// Finished task results from the durable outbox, oldest first.
    pub results: Vec<TaskResult>,
    /// The last fault met since the last successful check-in.
    pub last_error: Option<AgentError>,
    /// How the agent reached the server.
    pub connection: ConnectionPath,
    /// Version of the communication profile the agent holds and uses (0: none).
    #[serde(default)]
    pub profile_version: u64,
    /// Every way that failed since the last report, one entry per address and kind, capped
    /// at [`MAX_FAILED_ATTEMPTS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_attempts: Vec<FailedAttempt>,
}

/// The answer to [`paths::PING`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The device the presented (or gateway-forwarded) certificate belongs to.
    pub device_id: String,
    /// The gateway that carried the request, if one did.
    pub via_gateway: Option<String>,
    /// The server's clock (RFC 3339), so a doctor can name clock skew.
    pub server_time: String,
}

/// Most failed-attempt entries a check-in carries (older ones are dropped first).
pub const MAX_FAILED_ATTEMPTS: usize = 32;

/// Built-in agent settings (the agent-settings policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSettings {
    /// Seconds between check-ins.
    pub checkin_interval_secs: u64,
    /// Random spread added to each interval, in percent of it, so agents do not synchronise.
    pub jitter_percent: u8,
    /// How long a long-poll waits for work before the server answers 204.
    pub long_poll_secs: u64,
    /// Task output kept per task (bytes); the rest is cut and flagged.
    pub task_output_max_bytes: u64,
    /// Hold the long-poll between check-ins (the persistent connection over which the server
    /// pushes "check in now" and tasks); `false`: check in at the interval only. Absent means
    /// `true` (agents and servers from before this key), and `true` is not serialised, so the
    /// configuration version of a device without the key set is unchanged.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub persistent_connection: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            checkin_interval_secs: 60,
            jitter_percent: 10,
            long_poll_secs: 50,
            task_output_max_bytes: 64 * 1024,
            persistent_connection: true,
        }
    }
}

/// A policy as applied to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// Policy name.
    pub name: String,
    /// Its key/value settings.
    pub values: BTreeMap<String, String>,
}

/// Everything the server configures on an agent; replaced atomically on the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Version; changes whenever anything below changes for this device.
    pub version: u64,
    /// Communication profile.
    pub profile: CommunicationProfile,
    /// Agent settings.
    pub settings: AgentSettings,
    /// Custom policies that apply to this device.
    pub policies: Vec<AppliedPolicy>,
}

/// A task for the agent to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// Task ID (the same for every target device).
    pub task_id: u64,
    /// Program to run (no shell).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Seconds before it is killed and reported as timed out.
    pub timeout_secs: u64,
}

/// How a task run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// Exit status 0.
    Succeeded,
    /// Non-zero exit, a signal, or the program could not start.
    Failed,
    /// Killed at the timeout.
    TimedOut,
}

/// The result of one task on one device. Idempotent by `task_id`: the server stores the first
/// and acknowledges every copy, so a result re-sent after a crash is never counted twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Task ID.
    pub task_id: u64,
    /// Outcome.
    pub outcome: TaskOutcome,
    /// Exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// stdout and stderr, capped at the configured size.
    pub output: String,
    /// Whether `output` was cut.
    pub truncated: bool,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub finished_at: String,
}

/// The server's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinResponse {
    /// The device this certificate belongs to.
    pub device_id: String,
    /// New configuration, when the agent's `config_version` is not the current one.
    pub config: Option<AgentConfig>,
    /// Tasks to run.
    pub tasks: Vec<TaskAssignment>,
    /// Task IDs whose results are committed: the agent may drop them from its outbox.
    pub acked_results: Vec<u64>,
    /// The server wants the full inventory next time (it has none, or an unknown hash).
    pub send_inventory: bool,
    /// The client certificate is due for renewal: the agent should renew it now
    /// ([`paths::RENEW`]). Absent from older servers (false).
    #[serde(default)]
    pub renew_certificate: bool,
}

/// Where the server publishes the [`SignedTrustBundle`]: on the plain-HTTP CRL listener,
/// next to the CRLs named in every agent certificate, so an agent whose TLS no longer
/// verifies (it slept through a certificate rollover) can still reach it.
pub const TRUST_BUNDLE_PATH: &str = "/trust/bundle.json";

/// The trust anchors of the current communication profile, as the platform root vouches for
/// them. Signed, not served over TLS: the agent fetching it may be unable to verify the TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    /// [`TrustBundle::FORMAT`].
    pub format: String,
    /// The profile version these anchors are from.
    pub profile_version: u64,
    /// When it was signed (RFC 3339).
    pub issued_at: String,
    /// PEM certificates agents should trust for the server: the platform root, and the roots
    /// of third-party listener certificates, live or staged.
    pub trust_anchors_pem: Vec<String>,
}

impl TrustBundle {
    /// The format tag.
    pub const FORMAT: &'static str = "steward-trust/1";
}

/// A [`TrustBundle`] and the platform root's signature over its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTrustBundle {
    /// The bundle's JSON, base64 (standard alphabet): verified byte for byte, then parsed.
    pub bundle_base64: String,
    /// The signature by the platform root key, base64. During a root roll's overlap, by the
    /// previous root (the one every agent enrolled so far knows).
    pub signature_base64: String,
    /// Further signatures over the same bytes, base64: during a root roll's overlap, the new
    /// platform root's. A verifier accepts the bundle when any signature verifies with a root
    /// it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_signatures_base64: Vec<String>,
}

/// A renewal: a new key's CSR, sent over the agent's current (still valid) identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// PKCS#10 CSR in PEM for the new key.
    pub csr_pem: String,
}

/// The renewed identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewResponse {
    /// The new client certificate (PEM), same CN (device ID).
    pub cert_pem: String,
    /// Issuing chain above it (PEM).
    pub chain_pem: Vec<String>,
    /// Its notAfter (RFC 3339).
    pub not_after: String,
}

/// Answer to a long-poll when there is something to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeUp {
    /// Why: `tasks`, `config`, or `wake` (woken while the server was busy: check in).
    pub reason: String,
    /// The tasks themselves, already handed out as a check-in would hand them out, when the
    /// agent asked for them ([`WAIT_CARRY_TASKS`] in the long-poll's query) and the server
    /// had an admission slot free. The agent runs them without checking in first; a wake-up
    /// with reason `tasks` and none carried means "check in to fetch them".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskAssignment>,
}

/// Query parameter of a long-poll ([`paths::WAIT`]) by which an agent asks for its tasks in
/// the wake-up itself (saving the check-in that would fetch them). Servers before it ignore
/// it, and an agent that does not send it is only ever told to check in.
pub const WAIT_CARRY_TASKS: &str = "tasks=carry";

/// Content type of a check-in that goes on as a long-poll ("held"): asked for with
/// `wait=SECS` (and [`WAIT_CARRY_TASKS`]) in a check-in's query, as a long-poll's. The body is
/// newline-delimited JSON: the [`CheckinResponse`] on the first line, sent at once; then, on
/// the same response, at most one [`WakeUp`] line when there is work within the hold, exactly
/// as the long-poll would have answered it. A body that ends after the first line is the
/// long-poll's 204: nothing came within the hold, check in when due.
///
/// The server holds only an answer that leaves the agent nothing to do at once: no tasks, no
/// configuration, no inventory or renewal asked for. Any other answer, and every answer of a
/// server from before this, is plain `application/json`; the agent then long-polls as usual.
pub const CHECKIN_HELD_CONTENT_TYPE: &str = "application/x-ndjson";

/// Error body of every non-2xx answer from the agent site and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable ID (`ENROLL-TOKEN-EXPIRED`, `AUTH-REQUIRED`, ...), documented in diagnostics.md.
    pub id: String,
    /// What went wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a cause, as HTTP libraries wrap an OS error.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_is_shown_with_every_cause() {
        let e = Wrapped(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ));
        assert_eq!(
            error_chain(&e),
            "connection error: connection reset by peer"
        );
        let mut own = "the server closed the connection".to_owned();
        push_causes(&mut own, &e);
        assert_eq!(
            own,
            "the server closed the connection: connection reset by peer"
        );
        let plain = std::io::Error::other("refused");
        assert_eq!(error_chain(&plain), "refused");
    }

    #[test]
    fn retry_after_is_whole_seconds_at_most_an_hour() {
        use std::time::Duration;
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("86400"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn busy_waits_for_retry_after_plus_jitter() {
        use std::time::Duration;
        let ten = Duration::from_secs(10);
        assert_eq!(busy_delay(ten, 0.0), ten);
        assert_eq!(busy_delay(ten, 0.5), Duration::from_secs(15));
        assert!(busy_delay(ten, 0.999) < Duration::from_secs(20));
        assert_eq!(busy_delay(Duration::ZERO, 0.0), Duration::from_secs(1));
        assert_eq!(busy_delay(ten, f64::NAN), Duration::from_secs(15));
    }

    #[test]
    fn unknown_fields_are_ignored_and_optional_ones_default() {
        let json = r#"{"version":3,"servers":[{"host":"smp.example.net","port":4726}],
                       "trust_anchors_pem":[],"future_field":true}"#;
        let p: CommunicationProfile = serde_json::from_str(json).unwrap();
        assert_eq!(p.protocol, Protocol::Https);
        assert!(p.gateways.is_empty());
        assert_eq!(p.servers[0].base_url(), "https://smp.example.net:4726");
        let v6 = ServerEndpoint {
            host: "::1".into(),
            port: 4726,
            http_port: None,
        };
        assert_eq!(v6.base_url(), "https://[::1]:4726");
        assert_eq!(v6.http_url(), None);
        // No HTTP port: the JSON is what it was before the field existed.
        assert_eq!(
            serde_json::to_string(&v6).unwrap(),
            r#"{"host":"::1","port":4726}"#
        );
        let h = ServerEndpoint {
            http_port: Some(4729),
            ..v6
        };
        assert_eq!(h.http_url().as_deref(), Some("http://[::1]:4729"));
        let p: Protocol = serde_json::from_str(r#""http""#).unwrap();
        assert_eq!(p, Protocol::Http);
    }

    #[test]
    fn signed_messages_are_distinct_and_exact() {
        let r = http_sig::request_message("POST", "/agent/v1/checkin", "d1", 7, "n", "AB");
        assert_eq!(
            r,
            b"steward-http-request/1\nPOST\n/agent/v1/checkin\nd1\n7\nn\nab".to_vec()
        );
        let a = http_sig::response_message("n", 200, "ab");
        assert_eq!(a, b"steward-http-response/1\nn\n200\nab".to_vec());
    }

    #[test]
    fn connection_path_is_tagged() {
        let s = serde_json::to_string(&ConnectionPath::Lan {
            server: "a:1".into(),
        })
        .unwrap();
        assert_eq!(s, r#"{"kind":"lan","server":"a:1"}"#);
        let g = serde_json::to_string(&ConnectionPath::Gateway {
            gateway: "g1".into(),
            via: "gw.example.net:8443".into(),
        })
        .unwrap();
        assert_eq!(
            g,
            r#"{"kind":"gateway","gateway":"g1","via":"gw.example.net:8443"}"#
        );
    }
}
