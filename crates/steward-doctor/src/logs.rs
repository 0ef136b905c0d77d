//! Reading an agent log (`steward doctor logs FILE`): name each fault found, with its count,
//! when it happened, the evidence of its last occurrence, and its remedy.
//!
//! The agent writes one event per line: `<RFC 3339> <LEVEL> <EVENT-ID> <message>`. Lines that
//! do not have that shape (another program's output, a truncated line, binary garbage) are
//! skipped and counted, never fatal. A connection fault followed later by `AGENT-CONNECTED` is
//! reported as recovered (a warning) rather than current (an error), so the report says what is
//! wrong *now* and what merely happened.

use std::collections::BTreeMap;

use crate::{Finding, Severity};

/// What an agent event means for diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Normal operation.
    Info,
    /// A fault that leaves the agent working (or that it works around).
    Warning,
    /// A fault that stops the agent from doing its job.
    Error,
}

/// One agent event ID: its kind, whether a later successful connection clears it, and the
/// remedy shown for it.
#[derive(Debug, Clone, Copy)]
pub struct AgentEvent {
    /// The ID, as written in the log.
    pub id: &'static str,
    /// Severity class.
    pub kind: EventKind,
    /// A later `AGENT-CONNECTED` means the fault is over (connection and TLS faults).
    pub cleared_by_connect: bool,
    /// How to fix it (empty for `Info`).
    pub remedy: &'static str,
}

const fn info(id: &'static str) -> AgentEvent {
    AgentEvent {
        id,
        kind: EventKind::Info,
        cleared_by_connect: false,
        remedy: "",
    }
}

const fn fault(
    id: &'static str,
    kind: EventKind,
    cleared_by_connect: bool,
    remedy: &'static str,
) -> AgentEvent {
    AgentEvent {
        id,
        kind,
        cleared_by_connect,
        remedy,
    }
}

/// The event written when a check-in succeeds; it marks recovery.
pub const CONNECTED: &str = "AGENT-CONNECTED";
/// Finding: the text holds no agent event at all.
pub const LOG_EMPTY: &str = "AGENT-LOG-EMPTY";
/// Finding: events, no faults, but no successful connection either.
pub const NEVER_CONNECTED: &str = "AGENT-NEVER-CONNECTED";
/// Finding: warnings or errors under IDs this doctor does not know (a newer agent).
pub const UNKNOWN_EVENT: &str = "AGENT-UNKNOWN-EVENT";

/// Every event the agent writes, as data. The agent's own ID list is checked against this
/// table by a test in `steward-agent`, and every ID here is documented in diagnostics.md.
pub const AGENT_EVENTS: &[AgentEvent] = &[
    info("AGENT-STARTED"),
    info("AGENT-BACKOFF"),
    info("AGENT-SERVER-BUSY"),
    fault(
        "AGENT-PERSISTENT-FALLBACK",
        EventKind::Warning,
        true,
        "Something between the agent and the server (a proxy, NAT or firewall with an idle timeout) cuts the held connection: raise that device's idle timeout above the policy's long_poll_secs, or lower long_poll_secs in the agent-settings policy, or set persistent_connection = false for these devices. Tasks still arrive at each check-in.",
    ),
    info("AGENT-CERT-RENEWED"),
    info("AGENT-TRUST-RECOVERED"),
    fault(
        "AGENT-TRUST-RECOVERY-FAILED",
        EventKind::Error,
        true,
        "The agent site's certificate is not trusted and the signed trust bundle did not help: make the CRL listener (the distribution point in the agent's certificate) reachable from the agent, or enroll the agent again with a new package.",
    ),
    fault(
        "AGENT-CERT-RENEW-FAILED",
        EventKind::Warning,
        false,
        "Read the cause in the message (data directory not writable, the server's ID such as AGENT-RENEW-CSR-INVALID); the current certificate keeps working and renewal is retried at every check-in.",
    ),
    fault(
        "AGENT-HTTP-RESPONSE-UNVERIFIED",
        EventKind::Error,
        true,
        "An answer on the plain-HTTP agent site (protocol = \"http\") was not signed by the agent site's certificate for the name dialled: something else answers on the HTTP port, or something on the LAN rewrites answers. The agent fell back to HTTPS; find what answers or rewrites.",
    ),
    info("AGENT-STOPPED"),
    info("AGENT-ENROLLED"),
    info(CONNECTED),
    info("AGENT-CONFIG-UPDATED"),
    info("AGENT-INVENTORY-SENT"),
    info("AGENT-TASK-STARTED"),
    info("AGENT-TASK-FINISHED"),
    info("AGENT-RESULT-ACKED"),
    fault(
        "AGENT-CONFIG-REJECTED",
        EventKind::Warning,
        false,
        "The server sent a configuration whose profile the agent cannot use (no server, or a trust anchor that is not a certificate), so the agent kept its previous one. Fix the communication profile on the server; the agent applies the next version by itself.",
    ),
    fault(
        "AGENT-TASK-SKIPPED",
        EventKind::Warning,
        false,
        "The agent stopped (crash, kill, reboot) while the task ran, and tasks run at most once, so it was reported as failed instead of run again. Check the task's effect on the device and run it again if needed.",
    ),
    fault(
        "AGENT-CERT-EXPIRING",
        EventKind::Warning,
        false,
        "The agent's client certificate expires soon (or has expired). Enroll the device again with a fresh bootstrap package (`steward package agent`, then `steward-agent enroll --force`).",
    ),
    fault(
        "AGENT-PACKAGE-INVALID",
        EventKind::Error,
        false,
        "The bootstrap package is damaged, truncated or another file. Copy it again in binary mode, or write a new one with `steward package agent --out FILE`.",
    ),
    fault(
        "AGENT-ENROLL-KERBEROS",
        EventKind::Error,
        false,
        "Enrollment with the host's Kerberos identity failed. Check the host keytab (`klist -k`, `host/<fqdn>` present), that the server allows Kerberos enrollment (`[auth] agent_kerberos_enrollment`), and `steward doctor kerberos` on the server; or enroll with a bootstrap package.",
    ),
    fault(
        "AGENT-IDENTITY-INVALID",
        EventKind::Error,
        false,
        "The agent's identity (agent.key, identity.json) is missing, unreadable or mismatched. Enroll again with `steward-agent enroll --package FILE --force`.",
    ),
    fault(
        "AGENT-DNS-FAILED",
        EventKind::Error,
        true,
        "The server name in the communication profile does not resolve from the device. Fix the DNS record or the name in the profile, and check the device's resolver settings.",
    ),
    fault(
        "AGENT-CONNECTION-REFUSED",
        EventKind::Error,
        true,
        "Nothing accepts connections on the server's agent port. Check that the server runs and listens on the port the profile names (default 4726), and that no firewall rejects it.",
    ),
    fault(
        "AGENT-CONNECTION-TIMEOUT",
        EventKind::Error,
        true,
        "The server did not answer in time. Check routes and firewalls that drop traffic to the agent port, and the server's load.",
    ),
    fault(
        "AGENT-CONNECTION-FAILED",
        EventKind::Error,
        true,
        "The network path to the server is missing or breaks connections. Check routing, VPNs, and proxies or inspection devices between the device and the server.",
    ),
    fault(
        "AGENT-TLS-UNTRUSTED",
        EventKind::Error,
        true,
        "The server presents a certificate from a CA the agent does not trust (replaced without distributing the new root). Bind a certificate issued by the platform CA, or stage the new root in the communication profile and let agents acknowledge it before switching.",
    ),
    fault(
        "AGENT-TLS-EXPIRED",
        EventKind::Error,
        true,
        "A certificate of the server's chain is expired or not yet valid. Renew the server certificate (or its CA), and check the clocks of the device and the server.",
    ),
    fault(
        "AGENT-TLS-NAME-MISMATCH",
        EventKind::Error,
        true,
        "The server's certificate does not name the host the profile uses. Reissue it with that name as a subjectAltName, or change the profile to a name the certificate covers.",
    ),
    fault(
        "AGENT-TLS-REVOKED",
        EventKind::Error,
        true,
        "The server's certificate has been revoked. Issue and bind a new certificate for the server.",
    ),
    fault(
        "AGENT-GATEWAY-THUMBPRINT",
        EventKind::Error,
        true,
        "The gateway's certificate is not the one its reports gave the server. Check that the name and port reach the Steward gateway (not another service), and that the gateway has reported since its certificate changed (steward gateway run restarts report at once).",
    ),
    fault(
        "AGENT-TLS-CLIENT-REJECTED",
        EventKind::Error,
        true,
        "The server refused the agent's own certificate (revoked, expired, or issued by a CA the server no longer trusts). Enroll the device again with a fresh bootstrap package.",
    ),
    fault(
        "AGENT-TLS-FAILED",
        EventKind::Error,
        true,
        "The TLS handshake failed for another reason (the port does not speak TLS, no common protocol version). Point the profile at the agent site's TLS port and check the server's TLS settings.",
    ),
    fault(
        "AGENT-SERVER-REJECTED",
        EventKind::Error,
        true,
        "The server refused the request; the message gives its error ID (for example ENROLL-TOKEN-EXPIRED or a device that is not known). Look the ID up in diagnostics.md and act on it on the server.",
    ),
    fault(
        "AGENT-PROTOCOL-ERROR",
        EventKind::Error,
        true,
        "The server's answer was not what the agent expected. Check that the profile points at a Steward agent site (not another web server or proxy) and that server and agent versions are compatible.",
    ),
    fault(
        "AGENT-STORE-FAILED",
        EventKind::Error,
        false,
        "The agent could not write its data directory (disk full, read-only file system, permissions). Free space or fix permissions on the data directory; results are kept in memory meanwhile.",
    ),
];

/// The table entry of an event ID.
pub fn event(id: &str) -> Option<&'static AgentEvent> {
    AGENT_EVENTS.iter().find(|e| e.id == id)
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// Timestamp as written.
    pub time: &'a str,
    /// Level (`ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`).
    pub level: &'a str,
    /// Event ID.
    pub id: &'a str,
    /// The rest of the line.
    pub message: &'a str,
}

/// Parse one line; `None` when it is not an agent event line.
pub fn parse_line(line: &str) -> Option<LogLine<'_>> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (time, rest) = line.split_once(' ')?;
    let (level, rest) = rest.split_once(' ')?;
    let (id, message) = match rest.split_once(' ') {
        Some((id, m)) => (id, m),
        None => (rest, ""),
    };
    let looks_like_time = time.len() >= 20
        && time.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && time.get(4..5) == Some("-")
        && time.get(10..11) == Some("T")
        && time
            .bytes()
            .all(|b| b.is_ascii_digit() || b"-:.TZ+".contains(&b));
    let known_level = matches!(level, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE");
    let id_ok = id.len() > 6
        && id.len() <= 64
        && id.starts_with("AGENT-")
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
    (looks_like_time && known_level && id_ok).then_some(LogLine {
        time,
        level,
        id,
        message,
    })
}

#[derive(Debug)]
struct Seen<'a> {
    count: usize,
    first: &'a str,
    last: &'a str,
    last_index: usize,
    last_message: &'a str,
}

/// Read an agent log and return one finding per distinct fault, plus an `ok` finding when the
/// agent connected after its last fault (or without any). Never panics, whatever the input.
pub fn analyze(log_text: &str) -> Vec<Finding> {
    let mut faults: BTreeMap<&'static str, Seen<'_>> = BTreeMap::new();
    let mut unknown: BTreeMap<&str, usize> = BTreeMap::new();
    let mut events = 0usize;
    let mut skipped = 0usize;
    let mut last_connect: Option<(usize, &str, &str)> = None;
    let mut last_fault_index: Option<usize> = None;

    for (index, raw) in log_text.lines().enumerate() {
        let Some(line) = parse_line(raw) else {
            if !raw.trim().is_empty() {
                skipped += 1;
            }
            continue;
        };
        events += 1;
        if line.id == CONNECTED {
            last_connect = Some((index, line.time, line.message));
            continue;
        }
        match event(line.id) {
            Some(e) if e.kind != EventKind::Info => {
                last_fault_index = Some(index);
                faults
                    .entry(e.id)
                    .and_modify(|s| {
                        s.count += 1;
                        s.last = line.time;
                        s.last_index = index;
                        s.last_message = line.message;
                    })
                    .or_insert(Seen {
                        count: 1,
                        first: line.time,
                        last: line.time,
                        last_index: index,
                        last_message: line.message,
                    });
            }
            Some(_) => {}
            None if matches!(line.level, "ERROR" | "WARN") => {
                *unknown.entry(line.id).or_insert(0) += 1;
            }
            None => {}
        }
    }

    let mut out = Vec::new();
    if events == 0 {
        out.push(Finding {
            id: LOG_EMPTY,
            severity: Severity::Warning,
            message: format!(
                "no agent events found ({skipped} non-empty line(s), none in the agent log format `<time> <LEVEL> <AGENT-ID> <message>`)"
            ),
            remedy: Some(
                "Give the agent's log: DATA-DIR/logs/agent.log (by default /var/lib/steward-agent/logs/agent.log)."
                    .to_owned(),
            ),
        });
        return out;
    }

    for (id, seen) in &faults {
        let Some(spec) = event(id) else { continue };
        let recovered =
            spec.cleared_by_connect && last_connect.is_some_and(|(i, _, _)| i > seen.last_index);
        let severity = match (spec.kind, recovered) {
            (EventKind::Error, false) => Severity::Error,
            _ => Severity::Warning,
        };
        let times = if seen.count == 1 {
            format!("once, at {}", seen.first)
        } else {
            format!(
                "{} times, first at {}, last at {}",
                seen.count, seen.first, seen.last
            )
        };
        // The ID is the finding's own field; the message starts with what happened.
        let mut message = format!("{times}: {}", seen.last_message);
        if recovered && let Some((_, t, _)) = last_connect {
            message.push_str(&format!(" (recovered: the agent connected at {t})"));
        }
        out.push(Finding {
            id: spec.id,
            severity,
            message,
            remedy: Some(spec.remedy.to_owned()),
        });
    }

    if !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|(id, n)| format!("{id} ({n}×)"))
            .collect();
        out.push(Finding {
            id: UNKNOWN_EVENT,
            severity: Severity::Warning,
            message: format!(
                "warnings or errors under IDs this doctor does not know: {}",
                list.join(", ")
            ),
            remedy: Some(
                "The agent is newer than this `steward` binary: look the IDs up in the agent's docs/diagnostics.md, or update `steward`."
                    .to_owned(),
            ),
        });
    }

    match last_connect {
        Some((index, time, message)) if last_fault_index.is_none_or(|f| index > f) => {
            let tail = if faults.is_empty() {
                "no faults in this log".to_owned()
            } else {
                "after its last fault: recovered".to_owned()
            };
            out.push(Finding::ok(
                CONNECTED,
                format!("the agent connected at {time} ({message}), {tail}"),
            ));
        }
        None if faults.is_empty() => out.push(Finding {
            id: NEVER_CONNECTED,
            severity: Severity::Warning,
            message: format!(
                "{events} agent event(s) and no fault, but no successful check-in either: the agent may not have been started with `run`, or stopped before its first check-in"
            ),
            remedy: Some(
                "Start the agent (`steward-agent run`) and read the log again after one check-in interval."
                    .to_owned(),
            ),
        }),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: &str, level: &str, id: &str, msg: &str) -> String {
        format!("2026-11-05T10:{t}.000Z {level} {id} {msg}\n")
    }

    fn find<'a>(f: &'a [Finding], id: &str) -> &'a Finding {
        f.iter()
            .find(|x| x.id == id)
            .unwrap_or_else(|| panic!("no finding {id} in {f:#?}"))
    }

    #[test]
    fn every_fault_id_is_named_with_count_times_evidence_and_remedy() {
        let faults: Vec<&AgentEvent> = AGENT_EVENTS
            .iter()
            .filter(|e| e.kind != EventKind::Info)
            .collect();
        let mut log = String::new();
        for (i, e) in faults.iter().enumerate() {
            log.push_str(&line(
                &format!("{:02}:00", i),
                "ERROR",
                e.id,
                &format!("first {}", e.id),
            ));
            log.push_str(&line(
                &format!("{:02}:30", i),
                "ERROR",
                e.id,
                &format!("evidence of {}", e.id),
            ));
        }
        let findings = analyze(&log);
        for e in &faults {
            let f = find(&findings, e.id);
            assert!(f.message.contains("2 times"), "{}", f.message);
            assert!(f.message.contains(&format!("evidence of {}", e.id)));
            assert!(f.message.contains("10:00:00.000Z") || f.message.contains("first at"));
            assert!(f.remedy.as_deref().is_some_and(|r| r.len() > 20));
            let expected = match e.kind {
                EventKind::Error => Severity::Error,
                _ => Severity::Warning,
            };
            assert_eq!(f.severity, expected, "{}", e.id);
        }
        assert!(findings.iter().all(|f| f.id != CONNECTED));
    }

    #[test]
    fn a_connection_after_the_last_fault_is_a_recovery() {
        let log = [
            line(
                "00:00",
                "INFO",
                "AGENT-STARTED",
                "steward-agent 0.1.0 started",
            ),
            line(
                "00:01",
                "ERROR",
                "AGENT-TLS-UNTRUSTED",
                "TLS with smp:4726: ... (UnknownIssuer)",
            ),
            line(
                "01:01",
                "ERROR",
                "AGENT-TLS-UNTRUSTED",
                "TLS with smp:4726: subject CN=smp (UnknownIssuer)",
            ),
            line(
                "02:00",
                "INFO",
                "AGENT-CONNECTED",
                "connected to https://smp:4726, path lan",
            ),
        ]
        .concat();
        let f = analyze(&log);
        let tls = find(&f, "AGENT-TLS-UNTRUSTED");
        assert_eq!(tls.severity, Severity::Warning);
        assert!(tls.message.contains("recovered"), "{}", tls.message);
        assert!(tls.message.contains("subject CN=smp"));
        assert!(tls.message.contains("first at 2026-11-05T10:00:01.000Z"));
        let ok = find(&f, CONNECTED);
        assert_eq!(ok.severity, Severity::Ok);
        assert!(ok.message.contains("recovered"));
    }

    #[test]
    fn a_fault_after_the_last_connection_is_current() {
        let log = [
            line(
                "00:00",
                "INFO",
                "AGENT-CONNECTED",
                "connected to https://smp:4726",
            ),
            line(
                "00:05",
                "ERROR",
                "AGENT-CONNECTION-REFUSED",
                "connection to 10.0.0.1:4726 refused",
            ),
        ]
        .concat();
        let f = analyze(&log);
        assert_eq!(
            find(&f, "AGENT-CONNECTION-REFUSED").severity,
            Severity::Error
        );
        assert!(f.iter().all(|x| x.id != CONNECTED));
    }

    #[test]
    fn faults_a_connection_does_not_clear_stay_errors() {
        let log = [
            line("00:00", "ERROR", "AGENT-STORE-FAILED", "disk full"),
            line("00:05", "INFO", "AGENT-CONNECTED", "connected"),
        ]
        .concat();
        let f = analyze(&log);
        assert_eq!(find(&f, "AGENT-STORE-FAILED").severity, Severity::Error);
        assert_eq!(find(&f, CONNECTED).severity, Severity::Ok);
    }

    #[test]
    fn a_clean_log_is_ok_and_an_unconnected_one_says_so() {
        let clean = line(
            "00:00",
            "INFO",
            "AGENT-CONNECTED",
            "connected to https://a:1",
        );
        let f = analyze(&clean);
        assert_eq!(f.len(), 1);
        assert_eq!(find(&f, CONNECTED).severity, Severity::Ok);
        assert!(find(&f, CONNECTED).message.contains("no faults"));

        let started = line("00:00", "INFO", "AGENT-STARTED", "started");
        let f = analyze(&started);
        assert_eq!(find(&f, NEVER_CONNECTED).severity, Severity::Warning);
    }

    #[test]
    fn garbage_never_panics_and_is_skipped() {
        let garbage = [
            "",
            "\0\u{1}\u{2}",
            "2026-11-05T10:00:00.000Z",
            "2026-11-05T10:00:00.000Z ERROR",
            "2026-11-05T10:00:00.000Z ERROR AGENT-",
            "2026-11-05T10:00:00.000Z LOUD AGENT-DNS-FAILED x",
            "yesterday ERROR AGENT-DNS-FAILED x",
            "2026-11-05T10:00:00.000Z ERROR agent-dns-failed lower case",
            "é€😀 ERROR AGENT-DNS-FAILED multibyte time",
            "2026-11-05T1é:00:00.000Z ERROR AGENT-DNS-FAILED multibyte inside",
            "    at hyper::proto::h1 ...",
            "Nov  5 10:00:00 host kernel: eth0 link up",
        ];
        let text = garbage.join("\n");
        let f = analyze(&text);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].id, LOG_EMPTY);
        assert!(
            f[0].message.contains("11 non-empty line(s)"),
            "{}",
            f[0].message
        );

        // Mixed with real events: the events count, the garbage does not.
        let mixed = format!(
            "{text}\n{}",
            line(
                "00:00",
                "ERROR",
                "AGENT-DNS-FAILED",
                "cannot resolve smp.example.net"
            )
        );
        let f = analyze(&mixed);
        assert_eq!(find(&f, "AGENT-DNS-FAILED").severity, Severity::Error);
        // Every prefix of a valid log is handled too (a truncated copy).
        let full = [
            line("00:00", "ERROR", "AGENT-TLS-EXPIRED", "expired"),
            line("00:01", "INFO", "AGENT-CONNECTED", "ok"),
        ]
        .concat();
        for cut in 0..full.len() {
            if let Some(prefix) = full.get(..cut) {
                let _ = analyze(prefix);
            }
        }
    }

    #[test]
    fn unknown_faults_from_a_newer_agent_are_mentioned() {
        // Built at run time: these IDs must stay undocumented (that is the point of the test),
        // and the repository's check for undocumented IDs reads quoted literals.
        let (new_fault, new_info) = (
            format!("AGENT-{}", "SOMETHING-NEW"),
            format!("AGENT-{}", "OTHER-NEW"),
        );
        let log = [
            line("00:00", "WARN", &new_fault, "x"),
            line("00:01", "INFO", &new_info, "not a fault"),
            line("00:02", "INFO", "AGENT-CONNECTED", "ok"),
        ]
        .concat();
        let f = analyze(&log);
        let u = find(&f, UNKNOWN_EVENT);
        assert!(u.message.contains(&format!("{new_fault} (1×)")));
        assert!(!u.message.contains(&new_info));
    }

    #[test]
    fn every_id_is_documented() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/diagnostics.md"
        ))
        .unwrap_or_default();
        for id in
            AGENT_EVENTS
                .iter()
                .map(|e| e.id)
                .chain([LOG_EMPTY, NEVER_CONNECTED, UNKNOWN_EVENT])
        {
            assert!(
                doc.contains(&format!("### {id}\n")),
                "docs/diagnostics.md has no section for {id}"
            );
        }
    }
}
