//! The certificate requirement rules, as data.
//!
//! One row per rule: its ID, what it checks, its severity under each profile (for its main
//! case and, where the requirements differ, an alternative case), and the remedy. The profiles
//! encode Broadcom's published ITMS requirements (reference articles 000 and 003) next to what
//! Steward's own agents accept. Adding a profile is adding a column; adding a rule is adding a
//! row here, its evaluation in `cert.rs`, and its entry in `docs/diagnostics.md` (a test checks
//! the last).

use std::fmt;
use std::str::FromStr;

use crate::Severity;

/// Whose requirements a certificate is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Profile {
    /// What Steward's own agents, gateways and servers accept (rustls/webpki semantics).
    #[default]
    #[serde(rename = "steward")]
    Steward,
    /// ITMS 8.x Notification Server / site server / Internet Gateway requirements.
    #[serde(rename = "itms-8.8")]
    Itms88,
    /// ITMS 7.5 requirements (SHA-1 still accepted).
    #[serde(rename = "itms-7.5")]
    Itms75,
}

impl Profile {
    /// All profiles, in column order of [`Rule::levels`].
    pub const ALL: [Profile; 3] = [Profile::Steward, Profile::Itms88, Profile::Itms75];

    fn column(self) -> usize {
        self as usize
    }

    /// Whether clients of this profile fall back to the subject CN when there are no SANs
    /// (Windows Schannel does; rustls does not).
    pub fn cn_fallback(self) -> bool {
        self != Profile::Steward
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Steward => "steward",
            Profile::Itms88 => "itms-8.8",
            Profile::Itms75 => "itms-7.5",
        })
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "steward" => Ok(Profile::Steward),
            "itms-8.8" | "itms-8" | "itms" => Ok(Profile::Itms88),
            "itms-7.5" => Ok(Profile::Itms75),
            _ => Err(format!(
                "unknown profile {s:?}: expected steward, itms-8.8 or itms-7.5"
            )),
        }
    }
}

/// What a rule's firing means under one profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Refused / breaks agents.
    Error,
    /// A risk, or breaks some peers.
    Warning,
    /// Accepted under this profile (reported as ok, with the evidence).
    Accept,
}

impl Level {
    /// The severity a finding gets at this level.
    pub fn severity(self) -> Severity {
        match self {
            Level::Error => Severity::Error,
            Level::Warning => Severity::Warning,
            Level::Accept => Severity::Ok,
        }
    }
}

/// One requirement rule.
#[derive(Debug)]
pub struct Rule {
    /// Stable ID.
    pub id: &'static str,
    /// What fires it, in a few words.
    pub title: &'static str,
    /// Level of the main case under steward, itms-8.8, itms-7.5.
    pub levels: [Level; 3],
    /// An alternative case with other levels: its name and levels.
    pub alt: Option<(&'static str, [Level; 3])>,
    /// How to fix it.
    pub remedy: &'static str,
}

impl Rule {
    /// Level of the main case (or the alternative one) under `profile`.
    pub fn level(&self, profile: Profile, alt: bool) -> Level {
        match (alt, self.alt) {
            (true, Some((_, levels))) => levels[profile.column()],
            _ => self.levels[profile.column()],
        }
    }
}

use Level::{Accept as A, Error as E, Warning as W};

/// Every certificate rule, in report order.
pub static RULES: &[Rule] = &[
    Rule {
        id: "CERT-PARSE",
        title: "the target holds no readable certificate",
        levels: [E, E, E],
        alt: None,
        remedy: "Export the certificate again as PKCS#12 (.pfx) with its private key and full chain, \
                 or as PEM; check the file was not truncated or converted as text in transit.",
    },
    Rule {
        id: "PFX-PASSWORD",
        title: "the PFX password is wrong or missing",
        levels: [E, E, E],
        alt: None,
        remedy: "Give the export password with --password-file FILE or the STEWARD_PFX_PASSWORD \
                 environment variable; if it is lost, export the PFX again.",
    },
    Rule {
        id: "PFX-NO-KEY",
        title: "the PFX has no private key",
        levels: [E, E, E],
        alt: None,
        remedy: "Export again with the private key (Windows: \"Yes, export the private key\"; \
                 openssl pkcs12 -export -inkey KEY). A certificate without its key cannot be bound \
                 to a listener.",
    },
    Rule {
        id: "PFX-KEY-MISMATCH",
        title: "the private key does not belong to the certificate",
        levels: [E, E, E],
        alt: None,
        remedy: "Pair the certificate with the key its CSR was made from; compare the two with \
                 `openssl x509 -noout -pubkey` and `openssl pkey -pubout`.",
    },
    Rule {
        id: "CERT-EXPIRED",
        title: "not-after is past",
        levels: [E, E, E],
        alt: None,
        remedy: "Renew the certificate (same names, key usage and chain) and bind the new one.",
    },
    Rule {
        id: "CERT-NOT-YET-VALID",
        title: "not-before is in the future",
        levels: [E, E, E],
        alt: None,
        remedy: "Check the clocks (NTP) of the issuing CA and of this host; if the clock is right, \
                 wait until not-before or re-issue with a current start date.",
    },
    Rule {
        id: "CERT-EXPIRES-SOON",
        title: "fewer than 30 days of validity left",
        levels: [W, E, E],
        alt: None,
        remedy: "Renew now: ITMS refuses certificates valid for less than 30 days, and agents \
                 strand if the certificate expires before the renewal reaches them.",
    },
    Rule {
        id: "CERT-NAME-MISMATCH",
        title: "a required name is not covered by a SAN",
        levels: [E, E, E],
        alt: None,
        remedy: "Re-issue the certificate with every name agents use (the server FQDN, the \
                 gateway's external name, split-domain names) as DNS subjectAltNames; a wildcard \
                 covers exactly one label.",
    },
    Rule {
        id: "CERT-NO-SAN",
        title: "no subjectAltName extension",
        levels: [E, E, E],
        alt: Some(("the subject CN matches", [E, W, W])),
        remedy: "Re-issue with a subjectAltName extension listing the DNS names: modern TLS \
                 clients (rustls, browsers) ignore the CN.",
    },
    Rule {
        id: "CERT-EKU-SERVER-AUTH",
        title: "extendedKeyUsage lacks serverAuth",
        levels: [E, E, E],
        alt: Some(("the EKU extension is absent", [W, E, E])),
        remedy: "Re-issue from a template that includes Server Authentication \
                 (1.3.6.1.5.5.7.3.1), for example the Web Server template of a Windows CA.",
    },
    Rule {
        id: "CERT-HASH-WEAK",
        title: "signed with SHA-1",
        levels: [E, W, A],
        alt: None,
        remedy: "Re-issue the certificate (and any SHA-1 intermediate) with SHA-256 or stronger.",
    },
    Rule {
        id: "CERT-HASH-BROKEN",
        title: "signed with MD2 or MD5",
        levels: [E, E, E],
        alt: None,
        remedy: "Re-issue with SHA-256 or stronger: MD5 and MD2 signatures can be forged.",
    },
    Rule {
        id: "CERT-KEY-ALG",
        title: "key algorithm not accepted",
        levels: [E, E, E],
        alt: None,
        remedy: "Re-issue with an accepted key: RSA 2048+ for ITMS; RSA 2048+, ECDSA P-256/P-384 \
                 or Ed25519 for Steward.",
    },
    Rule {
        id: "CERT-KEY-SIZE",
        title: "RSA key below 2048 bits",
        levels: [E, E, E],
        alt: None,
        remedy: "Generate a new key of at least 2048 bits and re-issue.",
    },
    Rule {
        id: "CERT-LEAF-IS-CA",
        title: "the server certificate says CA:TRUE",
        levels: [E, W, W],
        alt: None,
        remedy: "Issue a separate end-entity certificate (basicConstraints CA:FALSE) for the \
                 listener; do not bind a CA certificate.",
    },
    Rule {
        id: "CERT-KEY-USAGE",
        title: "keyUsage lacks what TLS needs for the key type",
        levels: [W, W, W],
        alt: None,
        remedy: "Re-issue with keyUsage digitalSignature (plus keyEncipherment for RSA), or \
                 without a keyUsage extension.",
    },
    Rule {
        id: "CERT-CHAIN-INCOMPLETE",
        title: "an issuer is neither supplied nor a trust anchor (missing intermediate)",
        levels: [E, E, E],
        alt: None,
        remedy: "Include the intermediate CA certificate(s): export the PFX with \"Include all \
                 certificates in the certification path\", or append the intermediate to the PEM \
                 chain the listener serves.",
    },
    Rule {
        id: "CERT-UNTRUSTED-ROOT",
        title: "the chain ends at a root that is not a trust anchor",
        levels: [E, E, E],
        alt: None,
        remedy: "Make the root trusted where the check runs (--trust ROOT.pem) and by every agent \
                 (Steward distributes it through the communication profile before the certificate \
                 goes live), or use a certificate from a root the agents already trust.",
    },
    Rule {
        id: "CERT-SELF-SIGNED",
        title: "the leaf is self-signed",
        levels: [W, W, W],
        alt: None,
        remedy: "Use a certificate issued by a CA (Steward's platform CA or your enterprise CA): \
                 a self-signed certificate cannot be revoked and must be trusted one by one.",
    },
    Rule {
        id: "CERT-SIGNATURE",
        title: "a signature in the chain does not verify",
        levels: [E, E, E],
        alt: None,
        remedy: "The certificate was altered or the wrong issuer certificate was supplied: get the \
                 issuer certificate that actually signed it (match the authority key identifier).",
    },
    Rule {
        id: "CERT-REVOKED",
        title: "a CRL lists a certificate of the chain",
        levels: [E, E, E],
        alt: None,
        remedy: "Stop using the revoked certificate: issue a new one and bind it.",
    },
    Rule {
        id: "CERT-CRL-UNREACHABLE",
        title: "a CRL distribution point cannot be fetched",
        levels: [E, E, E],
        alt: None,
        remedy: "Make the CRL URL reachable from every agent network (DNS, firewall, proxy), make \
                 sure the CA publishes there, or re-issue the certificate without stale \
                 distribution points.",
    },
    Rule {
        id: "CERT-CRL-STALE",
        title: "a CRL is past next-update, not yet valid, or not signed by the issuer",
        levels: [E, E, E],
        alt: None,
        remedy: "Have the CA publish a fresh CRL (check its CRL publication schedule and the \
                 clocks); a CRL signed by another key means the distribution point serves the \
                 wrong CA's list.",
    },
];

/// Probe failures that stop an endpoint check before any certificate is seen. They come from
/// the evidence gatherer, but their IDs are documented here with the rest.
pub static PROBE_IDS: &[&str] = &[
    "DNS-RESOLVE",
    "NET-REFUSED",
    "NET-TIMEOUT",
    "NET-UNREACHABLE",
    "NET-IO",
    "TLS-NOT-TLS",
    "TLS-HANDSHAKE",
];

/// The rule with this ID.
pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}
