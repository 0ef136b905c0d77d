//! `doctor cert`: judge one certificate (with its chain, key and CRLs) against a profile.

use steward_pki::{
    CertFacts, Chain, ChainEnd, CrlFacts, CrlSignature, KeyAlg, LinkSource, MaterialError,
    MaterialFormat, SignatureCheck, rfc3339,
};
use time::{Duration, OffsetDateTime};

use crate::rules::{Profile, RULES, Rule};
use crate::{Finding, Severity, name_covered};

/// Fewer days than this left is CERT-EXPIRES-SOON (ITMS refuses such certificates at import).
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Where the certificate came from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A file; `format` once it is known.
    File {
        /// The container, when the file was read.
        format: Option<MaterialFormat>,
    },
    /// A live TLS endpoint.
    Endpoint {
        /// The address the handshake went to.
        addr: String,
        /// Negotiated protocol and cipher suite, when the handshake completed.
        negotiated: Option<String>,
    },
}

/// An endpoint probe that failed before any certificate was seen.
#[derive(Debug, Clone)]
pub struct ProbeFailure {
    /// Stable ID (`DNS-RESOLVE`, `NET-REFUSED`, ...).
    pub id: &'static str,
    /// What happened, with the address and the system's words.
    pub message: String,
    /// How to fix it.
    pub remedy: String,
}

/// How reading the target went.
#[derive(Debug, Clone)]
pub enum ReadOutcome {
    /// Certificates were read; the chain is in [`CertEvidence::chain`].
    Read,
    /// The file yielded no certificate.
    Material(MaterialError),
    /// The endpoint could not be reached or did not complete a handshake.
    Probe(ProbeFailure),
}

/// What is known about the private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvidence {
    /// No key to check here, with the reason (an endpoint proves its key in the handshake).
    NotApplicable(&'static str),
    /// A PKCS#12 file without a private key.
    Missing,
    /// The key belongs to the leaf.
    Matches,
    /// The key belongs to another certificate.
    Mismatch,
    /// The key could not be loaded, with the reason.
    Unloadable(String),
}

/// One CRL download for one certificate of the chain.
#[derive(Debug, Clone)]
pub struct CrlEvidence {
    /// Index in the chain of the certificate whose distribution point this is.
    pub link: usize,
    /// The distribution point URL.
    pub url: String,
    /// The parsed CRL, or why it could not be had (fetch error or not a CRL).
    pub fetched: Result<CrlFacts, String>,
}

/// Whether and how revocation was checked.
#[derive(Debug, Clone)]
pub enum Revocation {
    /// `--no-revocation`.
    Disabled,
    /// Every distribution point of the chain was fetched.
    Checked(Vec<CrlEvidence>),
}

/// Everything gathered about the target.
#[derive(Debug, Clone)]
pub struct CertEvidence {
    /// How reading went.
    pub read: ReadOutcome,
    /// Where it came from.
    pub input: Input,
    /// The chain built from the leaf, when a certificate was read.
    pub chain: Option<Chain>,
    /// The private key.
    pub key: KeyEvidence,
    /// Names that must be covered (from --fqdn, or the endpoint's host).
    pub names: Vec<String>,
    /// Revocation evidence.
    pub revocation: Revocation,
}

enum Outcome {
    Pass(String),
    Skip(String),
    Fire { alt: bool, message: String },
}

fn fire(message: impl Into<String>) -> Outcome {
    Outcome::Fire {
        alt: false,
        message: message.into(),
    }
}

fn finding(rule: &Rule, outcome: Outcome, profile: Profile) -> Finding {
    match outcome {
        Outcome::Pass(m) => Finding::ok(rule.id, m),
        Outcome::Skip(m) => Finding::ok(rule.id, format!("skipped: {m}")),
        Outcome::Fire { alt, message } => {
            let severity = rule.level(profile, alt).severity();
            if severity == Severity::Ok {
                Finding::ok(rule.id, format!("{message} (accepted under {profile})"))
            } else {
                Finding {
                    id: rule.id,
                    severity,
                    message,
                    remedy: Some(rule.remedy.to_owned()),
                }
            }
        }
    }
}

/// Judge the evidence under `profile` at time `now`: one finding per rule, in table order
/// (preceded by the probe failure, if the endpoint could not be reached).
pub fn evaluate(ev: &CertEvidence, profile: Profile, now: OffsetDateTime) -> Vec<Finding> {
    let mut out = Vec::with_capacity(RULES.len() + 1);
    let chain = match (&ev.read, &ev.chain) {
        (ReadOutcome::Read, Some(chain)) => chain,
        (read, _) => {
            if let ReadOutcome::Probe(p) = read {
                out.push(Finding {
                    id: p.id,
                    severity: Severity::Error,
                    message: p.message.clone(),
                    remedy: Some(p.remedy.clone()),
                });
            }
            for rule in RULES {
                let outcome = match (rule.id, read) {
                    (
                        "PFX-PASSWORD",
                        ReadOutcome::Material(
                            e @ (MaterialError::WrongPassword | MaterialError::PasswordRequired),
                        ),
                    ) => fire(e.to_string()),
                    (
                        "CERT-PARSE",
                        ReadOutcome::Material(
                            MaterialError::WrongPassword | MaterialError::PasswordRequired,
                        ),
                    ) => Outcome::Skip(
                        "the PKCS#12 file cannot be opened without its password".to_owned(),
                    ),
                    ("CERT-PARSE", ReadOutcome::Material(e)) => fire(e.to_string()),
                    ("CERT-PARSE", ReadOutcome::Probe(_)) => {
                        Outcome::Skip("no handshake completed".to_owned())
                    }
                    _ => Outcome::Skip("no certificate was read".to_owned()),
                };
                out.push(finding(rule, outcome, profile));
            }
            return out;
        }
    };
    for rule in RULES {
        let outcome = check(rule.id, ev, chain, profile, now);
        out.push(finding(rule, outcome, profile));
    }
    out
}

/// A readable role for link `i`: leaf, intermediate, root.
fn role(chain: &Chain, i: usize) -> String {
    let link = &chain.links[i];
    let what = if i == 0 {
        "leaf"
    } else if link.cert.is_self_issued() {
        "root"
    } else {
        "intermediate"
    };
    let from = if link.source == LinkSource::Anchor {
        ", trust anchor"
    } else {
        ""
    };
    format!("{what} \"{}\"{from}", link.cert.label())
}

/// Links whose own signature matters: not trust anchors (trusted as they are) and not
/// self-signed roots (their self-signature proves nothing).
fn signed_links(chain: &Chain) -> impl Iterator<Item = (usize, &CertFacts)> {
    chain
        .links
        .iter()
        .enumerate()
        .filter(|(i, l)| l.source != LinkSource::Anchor && !(*i > 0 && l.cert.is_self_issued()))
        .map(|(i, l)| (i, &l.cert))
}

fn days(d: Duration) -> String {
    let h = d.whole_hours();
    if h.abs() < 48 {
        format!("{h} h")
    } else {
        format!("{} days", d.whole_days())
    }
}

fn check(
    id: &str,
    ev: &CertEvidence,
    chain: &Chain,
    profile: Profile,
    now: OffsetDateTime,
) -> Outcome {
    let leaf = chain.leaf();
    let is_pfx = matches!(
        ev.input,
        Input::File {
            format: Some(MaterialFormat::Pkcs12)
        }
    );
    match id {
        "CERT-PARSE" => Outcome::Pass(match &ev.input {
            Input::File { format } => format!(
                "{} certificate(s) read ({})",
                chain
                    .links
                    .iter()
                    .filter(|l| l.source == LinkSource::Target)
                    .count()
                    + chain.unused.len(),
                format.map(|f| f.to_string()).unwrap_or_default()
            ),
            Input::Endpoint { addr, negotiated } => format!(
                "{} certificate(s) received from {addr}{}",
                chain
                    .links
                    .iter()
                    .filter(|l| l.source == LinkSource::Target)
                    .count()
                    + chain.unused.len(),
                negotiated
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
        }),
        "PFX-PASSWORD" => {
            if is_pfx {
                Outcome::Pass("the password opens the PKCS#12 file".to_owned())
            } else {
                Outcome::Skip("not a PKCS#12 file".to_owned())
            }
        }
        "PFX-NO-KEY" => match (&ev.key, is_pfx) {
            (KeyEvidence::Missing, _) => {
                fire("the PKCS#12 file holds certificates but no private key")
            }
            (_, true) => Outcome::Pass("the PKCS#12 file holds a private key".to_owned()),
            (KeyEvidence::NotApplicable(why), false) => Outcome::Skip((*why).to_owned()),
            (_, false) => Outcome::Skip("not a PKCS#12 file".to_owned()),
        },
        "PFX-KEY-MISMATCH" => match &ev.key {
            KeyEvidence::Matches => {
                Outcome::Pass(format!("the private key belongs to \"{}\"", leaf.label()))
            }
            KeyEvidence::Mismatch => fire(format!(
                "the private key does not belong to the certificate \"{}\" (SHA-1 {})",
                leaf.label(),
                leaf.thumbprint.sha1_hex()
            )),
            KeyEvidence::Unloadable(why) => fire(why.clone()),
            KeyEvidence::Missing => Outcome::Skip("no private key".to_owned()),
            KeyEvidence::NotApplicable(why) => Outcome::Skip((*why).to_owned()),
        },
        "CERT-EXPIRED" => {
            let expired: Vec<String> = chain
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| l.cert.not_after < now)
                .map(|(i, l)| {
                    format!(
                        "{} expired {} ({} ago)",
                        role(chain, i),
                        rfc3339(l.cert.not_after),
                        days(now - l.cert.not_after)
                    )
                })
                .collect();
            if expired.is_empty() {
                Outcome::Pass(format!(
                    "valid until {} ({} left)",
                    rfc3339(leaf.not_after),
                    days(leaf.not_after - now)
                ))
            } else {
                fire(expired.join("; "))
            }
        }
        "CERT-NOT-YET-VALID" => {
            let early: Vec<String> = chain
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| l.cert.not_before > now)
                .map(|(i, l)| {
                    format!(
                        "{} is valid from {} ({} from now; if that is a clock difference, the skew is at least that much)",
                        role(chain, i),
                        rfc3339(l.cert.not_before),
                        days(l.cert.not_before - now)
                    )
                })
                .collect();
            if early.is_empty() {
                Outcome::Pass(format!("valid since {}", rfc3339(leaf.not_before)))
            } else {
                fire(early.join("; "))
            }
        }
        "CERT-EXPIRES-SOON" => {
            let soon: Vec<String> = chain
                .links
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    l.cert.not_after >= now
                        && l.cert.not_after - now < Duration::days(EXPIRY_WARNING_DAYS)
                })
                .map(|(i, l)| {
                    format!(
                        "{} expires {} ({} left)",
                        role(chain, i),
                        rfc3339(l.cert.not_after),
                        days(l.cert.not_after - now)
                    )
                })
                .collect();
            if soon.is_empty() {
                Outcome::Pass(format!(
                    "more than {EXPIRY_WARNING_DAYS} days left on every certificate"
                ))
            } else {
                fire(format!(
                    "{} (fewer than {EXPIRY_WARNING_DAYS} days)",
                    soon.join("; ")
                ))
            }
        }
        "CERT-NAME-MISMATCH" => {
            if ev.names.is_empty() {
                return Outcome::Skip("no --fqdn given".to_owned());
            }
            let missing: Vec<&str> = ev
                .names
                .iter()
                .map(String::as_str)
                .filter(|n| !name_covered(n, leaf, profile.cn_fallback()))
                .collect();
            let have = sans_text(leaf);
            if missing.is_empty() {
                Outcome::Pass(format!("{} covered by {have}", ev.names.join(", ")))
            } else {
                fire(format!(
                    "{} not covered; the certificate has {have}",
                    missing.join(", ")
                ))
            }
        }
        "CERT-NO-SAN" => match &leaf.sans {
            Some(s) if !s.is_empty() => {
                Outcome::Pass(format!("subjectAltName present: {}", sans_text(leaf)))
            }
            _ => {
                let cn = leaf.common_names.join(", ");
                let cn_matches = !leaf.common_names.is_empty()
                    && (ev.names.is_empty()
                        || ev.names.iter().all(|n| name_covered(n, leaf, true)));
                let names_note = if ev.names.is_empty() {
                    " (no --fqdn given to compare)"
                } else {
                    ""
                };
                Outcome::Fire {
                    alt: cn_matches,
                    message: if cn.is_empty() {
                        "no subjectAltName extension and no subject CN".to_owned()
                    } else if cn_matches {
                        format!(
                            "no subjectAltName extension; only the subject CN {cn:?} names the host{names_note}"
                        )
                    } else {
                        format!(
                            "no subjectAltName extension, and the subject CN {cn:?} does not match {}",
                            ev.names.join(", ")
                        )
                    },
                }
            }
        },
        "CERT-EKU-SERVER-AUTH" => match &leaf.eku {
            Some(e) if e.server_auth => {
                Outcome::Pass(format!("extendedKeyUsage: {}", e.purposes.join(", ")))
            }
            Some(e) => fire(format!(
                "extendedKeyUsage is {} — serverAuth (1.3.6.1.5.5.7.3.1) is missing",
                if e.purposes.is_empty() {
                    "empty".to_owned()
                } else {
                    e.purposes.join(", ")
                }
            )),
            None => Outcome::Fire {
                alt: true,
                message:
                    "no extendedKeyUsage extension (serverAuth is not stated; ITMS requires it)"
                        .to_owned(),
            },
        },
        "CERT-HASH-WEAK" => {
            let weak: Vec<String> = signed_links(chain)
                .filter(|(_, c)| c.signature.hash.is_weak())
                .map(|(i, c)| format!("{} is signed with {}", role(chain, i), c.signature.name))
                .collect();
            if weak.is_empty() {
                Outcome::Pass(hashes_text(chain))
            } else {
                fire(weak.join("; "))
            }
        }
        "CERT-HASH-BROKEN" => {
            let broken: Vec<String> = signed_links(chain)
                .filter(|(_, c)| c.signature.hash.is_broken())
                .map(|(i, c)| format!("{} is signed with {}", role(chain, i), c.signature.name))
                .collect();
            if broken.is_empty() {
                Outcome::Pass("no MD2/MD5 signatures".to_owned())
            } else {
                fire(broken.join("; "))
            }
        }
        "CERT-KEY-ALG" => {
            let accepted = match (&leaf.key, profile) {
                (KeyAlg::Rsa { .. }, _) => true,
                (KeyAlg::Ec { curve }, Profile::Steward) => curve == "P-256" || curve == "P-384",
                (KeyAlg::Ed25519, Profile::Steward) => true,
                _ => false,
            };
            let list = if profile == Profile::Steward {
                "RSA, ECDSA P-256/P-384, Ed25519"
            } else {
                "RSA only"
            };
            if accepted {
                Outcome::Pass(format!("{} key", leaf.key))
            } else {
                fire(format!("{} key; {profile} accepts {list}", leaf.key))
            }
        }
        "CERT-KEY-SIZE" => {
            let small: Vec<String> = chain
                .links
                .iter()
                .enumerate()
                .filter_map(|(i, l)| match l.cert.key {
                    KeyAlg::Rsa { bits } if bits < 2048 => {
                        Some(format!("{} has an RSA {bits}-bit key", role(chain, i)))
                    }
                    _ => None,
                })
                .collect();
            if small.is_empty() {
                Outcome::Pass(format!("{} key", leaf.key))
            } else {
                fire(small.join("; "))
            }
        }
        "CERT-LEAF-IS-CA" => {
            if leaf.is_ca {
                fire(format!("\"{}\" has basicConstraints CA:TRUE", leaf.label()))
            } else {
                Outcome::Pass("end-entity certificate (not a CA)".to_owned())
            }
        }
        "CERT-KEY-USAGE" => match leaf.key_usage {
            None => Outcome::Pass("no keyUsage extension (no restriction)".to_owned()),
            Some(ku) => {
                let problem = match leaf.key {
                    KeyAlg::Rsa { .. } if !ku.digital_signature && !ku.key_encipherment => Some(
                        "an RSA key needs digitalSignature (ECDHE, TLS 1.3) or keyEncipherment",
                    ),
                    KeyAlg::Rsa { .. } if !ku.digital_signature => Some(
                        "an RSA key with keyEncipherment only cannot do ECDHE or TLS 1.3 (Steward agents use only those)",
                    ),
                    KeyAlg::Rsa { .. } => None,
                    _ if !ku.digital_signature => Some("an ECDSA/EdDSA key needs digitalSignature"),
                    _ => None,
                };
                match problem {
                    Some(p) => fire(format!("keyUsage is {ku}: {p}")),
                    None => Outcome::Pass(format!("keyUsage: {ku}")),
                }
            }
        },
        "CERT-CHAIN-INCOMPLETE" => match &chain.end {
            ChainEnd::MissingIssuer {
                issuer,
                ca_issuers_urls,
            } => {
                let last = &chain.links[chain.links.len() - 1].cert;
                let aia = if ca_issuers_urls.is_empty() {
                    String::new()
                } else {
                    format!("; it can be downloaded from {}", ca_issuers_urls.join(", "))
                };
                fire(format!(
                    "the issuer \"{issuer}\" of \"{}\" was not supplied and is not a trust anchor{aia}",
                    last.label()
                ))
            }
            ChainEnd::TooLong => fire(
                "no path to a trust anchor within 10 certificates (a loop of cross-certificates?)",
            ),
            _ => Outcome::Pass(format!("{} certificate(s) in the path", chain.links.len())),
        },
        "CERT-UNTRUSTED-ROOT" => match &chain.end {
            ChainEnd::UntrustedRoot => {
                let root = &chain.links[chain.links.len() - 1].cert;
                fire(format!(
                    "the chain ends at \"{}\" (SHA-1 {}), which is not a trust anchor",
                    root.subject,
                    root.thumbprint.sha1_hex()
                ))
            }
            ChainEnd::Anchor => {
                let anchor = &chain.links[chain.links.len() - 1].cert;
                Outcome::Pass(format!("ends at trust anchor \"{}\"", anchor.label()))
            }
            _ => Outcome::Skip("the chain does not reach a root".to_owned()),
        },
        "CERT-SELF-SIGNED" => {
            if leaf.is_self_issued() && chain.links.len() == 1 {
                fire(format!("\"{}\" is its own issuer", leaf.label()))
            } else {
                Outcome::Pass(format!("issued by \"{}\"", leaf.issuer))
            }
        }
        "CERT-SIGNATURE" => {
            let bad: Vec<String> = chain
                .links
                .iter()
                .enumerate()
                .filter_map(|(i, l)| match &l.signature {
                    SignatureCheck::Invalid(why) => Some(format!("{}: {why}", role(chain, i))),
                    SignatureCheck::Unsupported(alg) => Some(format!(
                        "{}: the {alg} signature cannot be verified",
                        role(chain, i)
                    )),
                    _ => None,
                })
                .collect();
            let verified = chain
                .links
                .iter()
                .filter(|l| l.signature == SignatureCheck::Valid)
                .count();
            if !bad.is_empty() {
                fire(bad.join("; "))
            } else if verified == 0 {
                Outcome::Skip("no issuer in the chain to verify a signature with".to_owned())
            } else {
                Outcome::Pass(format!("{verified} signature(s) verified"))
            }
        }
        "CERT-REVOKED" | "CERT-CRL-UNREACHABLE" | "CERT-CRL-STALE" => {
            revocation(id, ev, chain, now)
        }
        other => Outcome::Skip(format!("no evaluation for {other}")),
    }
}

fn revocation(id: &str, ev: &CertEvidence, chain: &Chain, now: OffsetDateTime) -> Outcome {
    let Revocation::Checked(crls) = &ev.revocation else {
        return Outcome::Skip("revocation checking disabled (--no-revocation)".to_owned());
    };
    if crls.is_empty() {
        return Outcome::Skip(
            "no certificate in the chain names a CRL distribution point".to_owned(),
        );
    }
    // CRL times are whole seconds: so is the "now" they are compared with in messages.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let mut faults = Vec::new();
    let mut fetched = 0;
    // Age and next-update of each CRL read, for the passing message: "fresh" is a claim about
    // time, so the evidence is the times.
    let mut timing = Vec::new();
    // CRLs whose issuer is not in the chain cannot have their signature checked; say so rather
    // than call them verified.
    let mut unverified = 0;
    for c in crls {
        let Some(link) = chain.links.get(c.link) else {
            continue;
        };
        let subject = role(chain, c.link);
        let issuer = chain.links.get(c.link + 1).map(|l| &l.cert);
        match (&c.fetched, id) {
            (Err(why), "CERT-CRL-UNREACHABLE") => {
                faults.push(format!("{} (for {subject}): {why}", c.url))
            }
            (Ok(crl), "CERT-CRL-STALE") => {
                fetched += 1;
                timing.push(crl_timing(&c.url, crl, now));
                if let Some(next) = crl.next_update
                    && next < now
                {
                    faults.push(format!(
                        "{}: next-update {} is {} past",
                        c.url,
                        rfc3339(next),
                        days(now - next)
                    ));
                }
                if crl.this_update > now {
                    faults.push(format!(
                        "{}: not yet valid: this-update {} is {} in the future — clock skew: \
                         this host's clock ({}) is at least {} behind the CA's",
                        c.url,
                        rfc3339(crl.this_update),
                        span(crl.this_update - now),
                        rfc3339(now),
                        span(crl.this_update - now)
                    ));
                }
                match issuer.map(|i| crl.verify_signed_by(i)) {
                    Some(CrlSignature::Valid) => {}
                    None => unverified += 1,
                    Some(CrlSignature::WrongIssuer { crl_issuer }) => faults.push(format!(
                        "{}: the CRL is issued by \"{crl_issuer}\", not by \"{}\"",
                        c.url, link.cert.issuer
                    )),
                    Some(CrlSignature::Invalid(why)) => {
                        faults.push(format!(
                            "{}: the CRL signature does not verify with the issuer's key ({why})",
                            c.url
                        ));
                    }
                }
            }
            (Ok(crl), "CERT-REVOKED") => {
                fetched += 1;
                let signature = issuer.map(|i| crl.verify_signed_by(i));
                if signature.is_none() {
                    unverified += 1;
                }
                // A CRL that verifies against another key proves nothing; one whose issuer is
                // missing is still the best evidence there is, and is reported as unchecked.
                let usable = matches!(signature, None | Some(CrlSignature::Valid));
                if let (true, Some(at)) = (usable, crl.revocation_of(&link.cert)) {
                    let note = if signature.is_none() {
                        " (CRL signature unchecked: its issuer is missing)"
                    } else {
                        ""
                    };
                    faults.push(format!(
                        "{subject} (serial {}) was revoked at {} according to {}{note}",
                        link.cert.serial,
                        rfc3339(at),
                        c.url
                    ));
                }
            }
            _ => {}
        }
    }
    if !faults.is_empty() {
        return fire(faults.join("; "));
    }
    match id {
        "CERT-CRL-UNREACHABLE" => {
            Outcome::Pass(format!("{} distribution point(s) fetched", crls.len()))
        }
        "CERT-CRL-STALE" if fetched > 0 && unverified == 0 => Outcome::Pass(format!(
            "{fetched} CRL(s) current and signed by their issuer ({})",
            timing.join("; ")
        )),
        "CERT-CRL-STALE" if fetched > 0 => Outcome::Pass(format!(
            "{fetched} CRL(s) current; {unverified} not checked against an issuer missing from the chain ({})",
            timing.join("; ")
        )),
        "CERT-REVOKED" if fetched > 0 && unverified == 0 => {
            Outcome::Pass(format!("not listed in {fetched} CRL(s)"))
        }
        "CERT-REVOKED" if fetched > 0 => Outcome::Pass(format!(
            "not listed in {fetched} CRL(s) ({unverified} with an unchecked signature)"
        )),
        _ => Outcome::Skip("no CRL could be fetched".to_owned()),
    }
}

/// A duration as a person reads it: seconds, minutes, hours or days, whichever fits.
fn span(d: Duration) -> String {
    let s = d.whole_seconds().abs();
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// `URL: this-update T (age A), next-update N (in D)` for one CRL.
fn crl_timing(url: &str, crl: &CrlFacts, now: OffsetDateTime) -> String {
    let next = match crl.next_update {
        Some(n) if n >= now => format!("next-update {} (in {})", rfc3339(n), span(n - now)),
        Some(n) => format!("next-update {} ({} ago)", rfc3339(n), span(now - n)),
        None => "no next-update".to_owned(),
    };
    let age = if crl.this_update <= now {
        format!("age {}", span(now - crl.this_update))
    } else {
        format!("{} in the future", span(crl.this_update - now))
    };
    format!(
        "{url}: this-update {} ({age}), {next}",
        rfc3339(crl.this_update)
    )
}

fn sans_text(c: &CertFacts) -> String {
    match &c.sans {
        Some(s) if !s.is_empty() => s
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        _ => format!("no SANs (CN {:?})", c.common_names.join(", ")),
    }
}

fn hashes_text(chain: &Chain) -> String {
    let algs: Vec<String> = signed_links(chain)
        .map(|(_, c)| c.signature.name.clone())
        .collect();
    if algs.is_empty() {
        "no signatures to judge".to_owned()
    } else {
        format!("signed with {}", algs.join(", "))
    }
}
