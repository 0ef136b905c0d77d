//! Evidence the doctor gathers from the outside world: krb5.conf (realm, KDC addresses), the
//! KDC itself (reachability and its clock, from one AS-REQ), the service ticket a client gets
//! (key version and encryption type, read from the krb5 GSS token) and name resolution (the
//! host name a Kerberos client will really put in the SPN).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use crate::der;

/// What krb5.conf says about the realm in use.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Krb5Conf {
    /// The file read.
    pub path: String,
    /// `[libdefaults] default_realm`.
    pub default_realm: Option<String>,
    /// `[realms] REALM = { kdc = … }`, for every realm, in file order.
    pub kdcs: Vec<(String, String)>,
    /// `[libdefaults] rdns` (MIT's default: true).
    pub rdns: bool,
    /// `[libdefaults] dns_canonicalize_hostname` (MIT's default: true).
    pub canonicalize: bool,
}

impl Krb5Conf {
    /// The KDC addresses of `realm`.
    pub fn kdcs_of(&self, realm: &str) -> Vec<String> {
        self.kdcs
            .iter()
            .filter(|(r, _)| r == realm)
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// The krb5.conf MIT Kerberos reads: `KRB5_CONFIG` (its first file), else `/etc/krb5.conf`.
pub fn krb5_conf_path() -> PathBuf {
    std::env::var_os("KRB5_CONFIG")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next().map(PathBuf::from))
        })
        .unwrap_or_else(|| PathBuf::from("/etc/krb5.conf"))
}

/// Reads the parts of krb5.conf the doctor uses; an unreadable file reads as empty (the
/// findings then say no realm or KDC is configured).
pub fn read_krb5_conf(path: &Path) -> Krb5Conf {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse_krb5_conf(&text, path)
}

fn truthy(v: &str) -> bool {
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "false" | "no" | "0" | "off"
    )
}

/// Parses krb5.conf text (profile format: `[section]`, `key = value`, `name = { … }`).
pub fn parse_krb5_conf(text: &str, path: &Path) -> Krb5Conf {
    let mut conf = Krb5Conf {
        path: path.display().to_string(),
        rdns: true,
        canonicalize: true,
        ..Krb5Conf::default()
    };
    let mut section = String::new();
    let mut realm: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_owned();
            realm = None;
            continue;
        }
        if line == "}" {
            realm = None;
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match section.as_str() {
            "libdefaults" => match k {
                "default_realm" => conf.default_realm = Some(v.to_owned()),
                "rdns" => conf.rdns = truthy(v),
                "dns_canonicalize_hostname" => conf.canonicalize = truthy(v),
                _ => {}
            },
            "realms" if v == "{" => realm = Some(k.to_owned()),
            "realms" if k == "kdc" => {
                if let Some(r) = &realm {
                    conf.kdcs.push((r.clone(), v.to_owned()));
                }
            }
            _ => {}
        }
    }
    conf
}

/// The KDC's answer to the probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KdcClock {
    /// The address that answered.
    pub kdc: String,
    /// The KDC's time (KRB-ERROR `stime`), Unix seconds.
    pub kdc_time: i64,
    /// This machine's time when the answer arrived, Unix seconds.
    pub local_time: i64,
    /// The KRB-ERROR code (6: the probe principal is unknown, as intended).
    pub error_code: i64,
}

impl KdcClock {
    /// KDC time minus local time, seconds.
    pub fn skew_secs(&self) -> i64 {
        self.kdc_time - self.local_time
    }
}

/// The principal the probe asks for: absent from every realm on purpose, so the KDC answers
/// with a KRB-ERROR (which always carries its clock) and issues nothing.
pub const PROBE_PRINCIPAL: &str = "steward-doctor-clock-probe";

/// Builds the probe's AS-REQ for `realm`.
pub fn as_req(realm: &str, nonce: u32) -> Vec<u8> {
    let principal = |kind: u32, parts: &[&str]| {
        der::seq(&[
            der::ctx(0, der::int(kind)),
            der::ctx(
                1,
                der::seq(
                    &parts
                        .iter()
                        .map(|p| der::general_string(p))
                        .collect::<Vec<_>>(),
                ),
            ),
        ])
    };
    let body = der::seq(&[
        der::ctx(0, der::tlv(0x03, &[0, 0, 0, 0, 0])),
        der::ctx(1, principal(1, &[PROBE_PRINCIPAL])),
        der::ctx(2, der::general_string(realm)),
        der::ctx(3, principal(2, &["krbtgt", realm])),
        der::ctx(5, der::tlv(0x18, b"20370913024805Z")),
        der::ctx(7, der::int(nonce)),
        der::ctx(8, der::seq(&[der::int(18), der::int(17)])),
    ]);
    der::tlv(
        0x6a,
        &der::seq(&[
            der::ctx(1, der::int(5)),
            der::ctx(2, der::int(10)),
            der::ctx(4, body),
        ]),
    )
}

/// Reads a KerberosTime (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn kerberos_time(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.len() != 15 || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i32>().ok();
    let month = time::Month::try_from(u8::try_from(n(4..6)?).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(n(0..4)?, month, u8::try_from(n(6..8)?).ok()?).ok()?;
    let t = time::Time::from_hms(
        u8::try_from(n(8..10)?).ok()?,
        u8::try_from(n(10..12)?).ok()?,
        u8::try_from(n(12..14)?).ok()?,
    )
    .ok()?;
    Some(date.with_time(t).assume_utc().unix_timestamp())
}

/// Reads a KRB-ERROR: (stime as Unix seconds, error code).
pub fn parse_krb_error(msg: &[u8]) -> Option<(i64, i64)> {
    let (outer, _) = der::read(msg)?;
    if outer.tag != 0x7e {
        return None;
    }
    let (seq, _) = der::read(outer.value)?;
    let items = der::children(seq.value)?;
    let stime = der::field(&items, 4)?;
    let code = der::integer(der::field(&items, 6)?)?;
    Some((kerberos_time(stime.value)?, code))
}

/// Why the KDC probe got no clock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KdcProbeError {
    /// No KDC is configured for the realm (krb5.conf has none; DNS SRV discovery is not
    /// probed).
    #[error("krb5.conf names no KDC for the realm {0}")]
    NoKdc(String),
    /// No configured KDC answered.
    #[error("no KDC answered: {0}")]
    Unreachable(String),
    /// Something answered, but not with a Kerberos message.
    #[error("{kdc} answered, but not with a Kerberos message")]
    NotKerberos {
        /// The address that answered.
        kdc: String,
    },
}

fn kdc_addrs(kdc: &str) -> Vec<SocketAddr> {
    let with_port = if kdc
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !kdc.ends_with(']')
    {
        kdc.to_owned()
    } else {
        format!("{kdc}:88")
    };
    with_port
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default()
}

/// Asks each KDC of `realm` (TCP, then UDP) for the probe principal, with `timeout` per
/// attempt; returns the first KDC's clock.
pub fn probe_kdc(
    conf: &Krb5Conf,
    realm: &str,
    timeout: Duration,
) -> Result<KdcClock, KdcProbeError> {
    let kdcs = conf.kdcs_of(realm);
    if kdcs.is_empty() {
        return Err(KdcProbeError::NoKdc(realm.to_owned()));
    }
    let nonce =
        u32::try_from(OffsetDateTime::now_utc().unix_timestamp() & 0x7fff_ffff).unwrap_or(1);
    let req = as_req(realm, nonce);
    let mut failures = Vec::new();
    for kdc in &kdcs {
        let addrs = kdc_addrs(kdc);
        if addrs.is_empty() {
            failures.push(format!("{kdc}: the name does not resolve"));
        }
        for addr in addrs {
            let answer = tcp_exchange(addr, &req, timeout)
                .or_else(|e| udp_exchange(addr, &req, timeout).map_err(|u| format!("{e}; {u}")));
            match answer {
                Ok(bytes) => {
                    let local_time = OffsetDateTime::now_utc().unix_timestamp();
                    return match parse_krb_error(&bytes) {
                        Some((kdc_time, error_code)) => Ok(KdcClock {
                            kdc: addr.to_string(),
                            kdc_time,
                            local_time,
                            error_code,
                        }),
                        None => Err(KdcProbeError::NotKerberos {
                            kdc: addr.to_string(),
                        }),
                    };
                }
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
    }
    Err(KdcProbeError::Unreachable(failures.join("; ")))
}

fn tcp_exchange(addr: SocketAddr, req: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("TCP: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("TCP: {e}"))?;
    let len = u32::try_from(req.len()).map_err(|_| "request too large")?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(req);
    s.write_all(&framed).map_err(|e| format!("TCP: {e}"))?;
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).map_err(|e| format!("TCP: {e}"))?;
    let n = u32::from_be_bytes(hdr) as usize;
    if n > 64 * 1024 {
        return Err(format!("TCP: a {n}-byte answer, larger than any KRB-ERROR"));
    }
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).map_err(|e| format!("TCP: {e}"))?;
    Ok(buf)
}

fn udp_exchange(addr: SocketAddr, req: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let s = UdpSocket::bind(bind).map_err(|e| format!("UDP: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| format!("UDP: {e}"))?;
    s.connect(addr).map_err(|e| format!("UDP: {e}"))?;
    s.send(req).map_err(|e| format!("UDP: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.recv(&mut buf).map_err(|e| format!("UDP: {e}"))?;
    buf.truncate(n);
    Ok(buf)
}

/// What the service ticket in a client's first krb5 token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TicketFacts {
    /// The ticket's realm.
    pub realm: String,
    /// The service principal the KDC issued the ticket for (`HTTP/host`).
    pub sname: String,
    /// Key version the KDC encrypted the ticket with (`None` if the KDC left it out).
    pub kvno: Option<u32>,
    /// Encryption type of the ticket.
    pub enctype: i64,
}

/// Reads the ticket out of a krb5 mechanism GSS token (RFC 1964/4121 initial context token:
/// `[APPLICATION 0] { OID, TOK_ID 01 00, AP-REQ }`).
pub fn ticket_facts(token: &[u8]) -> Option<TicketFacts> {
    let (outer, _) = der::read(token)?;
    if outer.tag != 0x60 {
        return None;
    }
    let (oid, rest) = der::read(outer.value)?;
    if oid.tag != 0x06 {
        return None;
    }
    let rest = rest.strip_prefix(&[0x01, 0x00])?;
    let (ap_req, _) = der::read(rest)?;
    if ap_req.tag != 0x6e {
        return None;
    }
    let (seq, _) = der::read(ap_req.value)?;
    let items = der::children(seq.value)?;
    let ticket = der::field(&items, 3)?;
    if ticket.tag != 0x61 {
        return None;
    }
    let (tseq, _) = der::read(ticket.value)?;
    let t = der::children(tseq.value)?;
    let realm = String::from_utf8_lossy(der::field(&t, 1)?.value).into_owned();
    let sname_items = der::children(der::field(&t, 2)?.value)?;
    let parts = der::children(der::field(&sname_items, 1)?.value)?;
    let sname = parts
        .iter()
        .map(|p| String::from_utf8_lossy(p.value).into_owned())
        .collect::<Vec<_>>()
        .join("/");
    let enc = der::children(der::field(&t, 3)?.value)?;
    let enctype = der::integer(der::field(&enc, 0)?)?;
    let kvno = der::field(&enc, 1)
        .and_then(der::integer)
        .and_then(|v| u32::try_from(v).ok());
    Some(TicketFacts {
        realm,
        sname,
        kvno,
        enctype,
    })
}

/// How a name resolves, and so which host name a Kerberos client puts in the SPN.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NameResolution {
    /// The name the server answers to.
    pub name: String,
    /// The canonical name (after CNAMEs), when it differs.
    pub canonical: Option<String>,
    /// Addresses it resolves to.
    pub addrs: Vec<IpAddr>,
    /// The reverse (PTR) name of the first address, when there is one.
    pub reverse: Option<String>,
    /// Why resolution failed, if it did.
    pub error: Option<String>,
}

impl NameResolution {
    /// The host name an MIT client uses for `HTTP/<host>` under these krb5.conf settings
    /// (canonicalisation, then reverse DNS when `rdns` is on).
    pub fn spn_host(&self, conf: &Krb5Conf) -> String {
        if !conf.canonicalize || self.error.is_some() {
            return self.name.to_ascii_lowercase();
        }
        let forward = self.canonical.clone().unwrap_or_else(|| self.name.clone());
        let chosen = if conf.rdns {
            self.reverse.clone().unwrap_or(forward)
        } else {
            forward
        };
        chosen.trim_end_matches('.').to_ascii_lowercase()
    }
}

/// `AI_CANONNAME` (glibc and musl): ask getaddrinfo for the canonical name.
const AI_CANONNAME: i32 = 0x0002;

/// Resolves `name` forward (with its canonical name) and its first address in reverse.
pub fn resolve(name: &str) -> NameResolution {
    let mut out = NameResolution {
        name: name.to_owned(),
        canonical: None,
        addrs: Vec::new(),
        reverse: None,
        error: None,
    };
    let hints = dns_lookup::AddrInfoHints {
        flags: AI_CANONNAME,
        ..dns_lookup::AddrInfoHints::default()
    };
    match dns_lookup::getaddrinfo(Some(name), None, Some(hints)) {
        Ok(iter) => {
            for ai in iter.flatten() {
                if out.canonical.is_none()
                    && let Some(c) = ai.canonname.filter(|c| !c.eq_ignore_ascii_case(name))
                {
                    out.canonical = Some(c);
                }
                let ip = ai.sockaddr.ip();
                if !out.addrs.contains(&ip) {
                    out.addrs.push(ip);
                }
            }
        }
        Err(e) => out.error = Some(std::io::Error::from(e).to_string()),
    }
    if let Some(ip) = out.addrs.first() {
        out.reverse = dns_lookup::lookup_addr(ip)
            .ok()
            .filter(|r| r.parse::<IpAddr>().is_err());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krb5_conf_realms_and_flags() {
        let text = "[libdefaults]\n default_realm = EXAMPLE.NET\n rdns = false\n\n[realms]\n \
                    EXAMPLE.NET = {\n  kdc = dc1.example.net\n  kdc = 127.0.0.1:8888\n }\n \
                    OTHER = {\n kdc = other:88\n }\n";
        let c = parse_krb5_conf(text, Path::new("k.conf"));
        assert_eq!(c.default_realm.as_deref(), Some("EXAMPLE.NET"));
        assert!(!c.rdns);
        assert!(c.canonicalize);
        assert_eq!(
            c.kdcs_of("EXAMPLE.NET"),
            vec!["dc1.example.net".to_owned(), "127.0.0.1:8888".to_owned()]
        );
        assert_eq!(c.kdcs_of("OTHER"), vec!["other:88".to_owned()]);
    }

    #[test]
    fn krb_error_clock_is_read() {
        let err = der::tlv(
            0x7e,
            &der::seq(&[
                der::ctx(0, der::int(5)),
                der::ctx(1, der::int(30)),
                der::ctx(4, der::tlv(0x18, b"20261122023000Z")),
                der::ctx(5, der::int(0)),
                der::ctx(6, der::int(6)),
            ]),
        );
        let (t, code) = parse_krb_error(&err).unwrap_or_else(|| panic!("parse"));
        assert_eq!(code, 6);
        assert_eq!(t, 1_795_314_600, "2026-11-22T02:30:00Z");
        assert_eq!(parse_krb_error(&err[..10]), None);
        assert!(as_req("EXAMPLE.NET", 7).starts_with(&[0x6a]));
    }

    #[test]
    fn spn_host_follows_the_client_rules() {
        let r = NameResolution {
            name: "smp".into(),
            canonical: Some("smp.example.net".into()),
            addrs: vec![IpAddr::from([10, 0, 0, 5])],
            reverse: Some("web01.example.net".into()),
            error: None,
        };
        let mut conf = Krb5Conf {
            rdns: true,
            canonicalize: true,
            ..Krb5Conf::default()
        };
        assert_eq!(r.spn_host(&conf), "web01.example.net");
        conf.rdns = false;
        assert_eq!(r.spn_host(&conf), "smp.example.net");
        conf.canonicalize = false;
        assert_eq!(r.spn_host(&conf), "smp");
    }
}
