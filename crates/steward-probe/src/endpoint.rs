//! Parsing the endpoints users type on the command line.

use std::net::{IpAddr, Ipv6Addr};

use crate::ProbeError;

/// The port assumed when the user gives only a host: the doctor probes HTTPS endpoints.
const DEFAULT_PORT: u16 = 443;

/// Parse a user-supplied endpoint: `https://host:port[/...]`, `host:port`, `[::1]:443`, `host`
/// (port 443), a bare IP address (port 443).
///
/// The host comes back without IPv6 brackets, so it can be passed straight to
/// [`fetch_chain`](crate::fetch_chain) or parsed as an [`IpAddr`]. For a URL the scheme's
/// default port applies (`https` 443, `http` 80); other schemes need an explicit port.
pub fn parse_endpoint(target: &str) -> Result<(String, u16), ProbeError> {
    let t = target.trim();
    if t.is_empty() {
        return Err(invalid(target, "empty target"));
    }
    if t.contains("://") {
        return parse_url(target, t);
    }
    if let Some(rest) = t.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid(target, "missing ']' after the IPv6 address"))?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| invalid(target, &format!("{inside:?} is not an IPv6 address")))?;
        let port = match after {
            "" => DEFAULT_PORT,
            _ => match after.strip_prefix(':') {
                Some(p) => parse_port(target, p)?,
                None => return Err(invalid(target, "expected ':port' after ']'")),
            },
        };
        return Ok((ip.to_string(), port));
    }
    // A bare address, including an unbracketed IPv6 one (which cannot carry a port).
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok((ip.to_string(), DEFAULT_PORT));
    }
    let (host, port) = match t.split_once(':') {
        None => (t, DEFAULT_PORT),
        Some((host, port)) => {
            if port.contains(':') {
                return Err(invalid(
                    target,
                    "an IPv6 address with a port needs brackets: [address]:port",
                ));
            }
            (host, parse_port(target, port)?)
        }
    };
    check_host(target, host)?;
    Ok((host.to_owned(), port))
}

fn parse_url(target: &str, t: &str) -> Result<(String, u16), ProbeError> {
    let url = url::Url::parse(t).map_err(|e| invalid(target, &e.to_string()))?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(invalid(target, "the URL has no host")),
    };
    let port = url.port_or_known_default().ok_or_else(|| {
        invalid(
            target,
            &format!("no port given and scheme {:?} has no default", url.scheme()),
        )
    })?;
    if port == 0 {
        return Err(invalid(target, "port 0 is not a port a service listens on"));
    }
    Ok((host, port))
}

fn parse_port(target: &str, p: &str) -> Result<u16, ProbeError> {
    match p.parse::<u16>() {
        Ok(n) if n != 0 => Ok(n),
        _ => Err(invalid(
            target,
            &format!("port {p:?} is not a number from 1 to 65535"),
        )),
    }
}

/// Reject what cannot be a host name, so typos (a path, a space, a stray scheme) fail here with
/// a clear message instead of as a confusing DNS error.
fn check_host(target: &str, host: &str) -> Result<(), ProbeError> {
    if host.is_empty() {
        return Err(invalid(target, "no host name"));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(invalid(
            target,
            &format!("{c:?} cannot appear in a host name"),
        ));
    }
    Ok(())
}

fn invalid(target: &str, why: &str) -> ProbeError {
    ProbeError::InvalidTarget(format!("{target:?}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(t: &str) -> (String, u16) {
        parse_endpoint(t).unwrap_or_else(|e| panic!("{t}: {e}"))
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(ok("ns.example.com"), ("ns.example.com".into(), 443));
        assert_eq!(ok("ns.example.com:4726"), ("ns.example.com".into(), 4726));
        assert_eq!(ok("10.0.0.5:8443"), ("10.0.0.5".into(), 8443));
        assert_eq!(ok("10.0.0.5"), ("10.0.0.5".into(), 443));
        assert_eq!(ok("[::1]:443"), ("::1".into(), 443));
        assert_eq!(ok("[fe80::1]"), ("fe80::1".into(), 443));
        assert_eq!(ok("::1"), ("::1".into(), 443));
        assert_eq!(ok("https://gw.example.com"), ("gw.example.com".into(), 443));
        assert_eq!(
            ok("https://gw.example.com:8443/Altiris/x?y=1"),
            ("gw.example.com".into(), 8443)
        );
        assert_eq!(ok("https://[::1]:9443/"), ("::1".into(), 9443));
        assert_eq!(
            ok("http://crl.example.com/a.crl"),
            ("crl.example.com".into(), 80)
        );
        assert_eq!(ok("  host:1  "), ("host".into(), 1));
    }

    #[test]
    fn rejected_forms() {
        for t in [
            "",
            "host:",
            "host:0",
            "host:70000",
            "host:https",
            "[::1",
            "[::1]443",
            "[nothost]:443",
            "fe80::1:443:x",
            "host/path",
            "ho st",
            ":443",
            "tcp://host",
            "https://",
        ] {
            let e = parse_endpoint(t).expect_err(t);
            assert!(matches!(e, ProbeError::InvalidTarget(_)), "{t}: {e:?}");
            assert_eq!(e.id(), "PROBE-INPUT");
        }
    }
}
