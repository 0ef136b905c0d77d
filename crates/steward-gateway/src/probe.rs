//! The gateway tests its own external address from its side, as the server asks: what the
//! firewall, a NAT and DNS really let through cannot be derived, so it is probed.

use std::time::Duration;

use steward_probe::ProbeError;
use steward_proto::{FailureKind, ProbeTarget, ReachProbe};

/// Each network step (resolve, connect, handshake) of a self-probe gets this long.
pub const SELF_PROBE_STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole self-probe never takes longer than this, whatever the resolver or peer does.
const SELF_PROBE_LIMIT: Duration = Duration::from_secs(20);
/// At most this many targets are probed per report (the server lists one per profile entry;
/// more would only be a misbehaving server).
pub(crate) const MAX_TARGETS: usize = 8;

/// Resolves `target`, connects, does a TLS handshake and compares the certificate presented
/// with `own` (SHA-256 hex of the gateway's server certificates). Never fails: every failure
/// is an outcome, with its evidence.
pub async fn self_probe(target: &ProbeTarget, own: &[String], step: Duration) -> ReachProbe {
    let at = steward_pki::rfc3339(steward_pki::OffsetDateTime::now_utc());
    let place = authority(target);
    let is_ip = target.host.parse::<std::net::IpAddr>().is_ok();
    // The name agents send as SNI, so a NAT or proxy that routes by SNI is tested too.
    let sni = (!is_ip).then_some(target.host.as_str());
    let fetched = tokio::time::timeout(
        SELF_PROBE_LIMIT,
        steward_probe::fetch_chain(&target.host, target.port, sni, step),
    )
    .await;
    let (failure, detail) = match fetched {
        Err(_) => (
            Some(FailureKind::Timeout),
            format!(
                "{place}: NET-TIMEOUT: no outcome within {} s",
                SELF_PROBE_LIMIT.as_secs()
            ),
        ),
        Ok(Err(e)) => (Some(failure_kind(&e)), format!("{place}: {}: {e}", e.id())),
        Ok(Ok(peer)) => {
            let seen = peer
                .certs
                .first()
                .map(|c| steward_pki::Thumbprint::of(c).sha256_hex());
            match seen {
                Some(sha) if own.iter().any(|o| o.eq_ignore_ascii_case(&sha)) => (
                    None,
                    format!(
                        "{place}: reached {} ({}); the certificate {sha} is this gateway's",
                        peer.addr, peer.protocol
                    ),
                ),
                Some(sha) => (
                    Some(FailureKind::WrongPeer),
                    format!(
                        "{place}: {} answered with the certificate {sha}, which is not this \
                         gateway's ({}): another host or a NAT to the wrong place",
                        peer.addr,
                        own.join(", ")
                    ),
                ),
                None => (
                    Some(FailureKind::WrongPeer),
                    format!("{place}: {} presented no certificate", peer.addr),
                ),
            }
        }
    };
    ReachProbe {
        target: target.clone(),
        failure,
        detail,
        at,
    }
}

/// The probe's stable IDs in the classes an admin acts on.
fn failure_kind(e: &ProbeError) -> FailureKind {
    match e.id() {
        "DNS-RESOLVE" => FailureKind::Dns,
        "NET-REFUSED" | "NET-UNREACHABLE" => FailureKind::Refused,
        "NET-TIMEOUT" => FailureKind::Timeout,
        id if id.starts_with("TLS-") => FailureKind::Tls,
        // A connection that broke mid-way, or a target the probe cannot even try: not this
        // gateway answering properly.
        _ => FailureKind::WrongPeer,
    }
}

fn authority(t: &ProbeTarget) -> String {
    if t.host.contains(':') {
        format!("[{}]:{}", t.host, t.port)
    } else {
        format!("{}:{}", t.host, t.port)
    }
}

/// Whether two sets of outcomes differ in what an admin would see (reached or not, and why);
/// the time and the wording of the evidence do not count.
pub(crate) fn changed(old: &[ReachProbe], new: &[ReachProbe]) -> bool {
    old.len() != new.len()
        || old
            .iter()
            .zip(new)
            .any(|(a, b)| a.target != b.target || a.failure != b.failure)
}
