//! Host-name matching as TLS clients do it (RFC 6125 §6.4, as rustls/webpki implement it).

use std::net::IpAddr;

use steward_pki::{CertFacts, SanEntry};

/// Whether `name` (a DNS name or an IP literal) is covered by the certificate.
///
/// Wildcards: only a whole left-most label `*`, matching exactly one label, and never for IP
/// literals. With `allow_cn` (legacy clients such as ITMS's on Windows) the subject CN is used
/// when the certificate has no subjectAltName extension at all — never otherwise, as RFC 6125
/// forbids CN fallback when SANs are present.
pub fn name_covered(name: &str, cert: &CertFacts, allow_cn: bool) -> bool {
    let name = name.trim_end_matches('.');
    if let Ok(ip) = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return cert
            .sans
            .iter()
            .flatten()
            .any(|s| matches!(s, SanEntry::Ip(a) if *a == ip));
    }
    match &cert.sans {
        Some(sans) => sans
            .iter()
            .any(|s| matches!(s, SanEntry::Dns(pattern) if dns_matches(pattern, name))),
        None => allow_cn && cert.common_names.iter().any(|cn| dns_matches(cn, name)),
    }
}

fn dns_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    if let Some(rest) = pattern.strip_prefix("*.") {
        // The wildcard stands for exactly one non-empty label, and the rest must have at least
        // two labels (no `*.com`).
        if !rest.contains('.') || rest.contains('*') {
            return false;
        }
        return match name.split_once('.') {
            Some((first, tail)) => !first.is_empty() && tail.eq_ignore_ascii_case(rest),
            None => false,
        };
    }
    !pattern.contains('*') && pattern.eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::dns_matches;

    #[test]
    fn wildcard_covers_exactly_one_label() {
        let cases = [
            ("*.example.com", "gw.example.com", true),
            ("*.example.com", "GW.Example.COM", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.com", "example.com", false),
            ("gw*.example.com", "gw1.example.com", false),
            ("smp.example.net", "smp.example.net", true),
            ("smp.example.net.", "smp.example.net", true),
            ("smp.example.net", "smp.example.org", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(dns_matches(pattern, name), want, "{pattern} vs {name}");
        }
    }
}
