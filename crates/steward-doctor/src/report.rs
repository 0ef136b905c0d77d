//! The report of `doctor cert`: JSON for machines, a readable table for people.

use std::fmt::Write as _;

use steward_pki::{CertFacts, ChainEnd, LinkSource, SignatureCheck, rfc3339};
use time::OffsetDateTime;

use crate::cert::{CertEvidence, evaluate};
use crate::{Finding, Profile, Severity};

/// The facts of one certificate, as shown to people and written to JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertSummary {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial, upper-case hex.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// subjectAltNames as `DNS:x` / `IP:y`.
    pub sans: Vec<String>,
    /// SHA-1 thumbprint as Windows shows it.
    pub sha1: String,
    /// SHA-256 thumbprint, upper-case hex.
    pub sha256: String,
    /// Key algorithm and size.
    pub key: String,
    /// Signature algorithm.
    pub signature: String,
}

impl From<&CertFacts> for CertSummary {
    fn from(c: &CertFacts) -> Self {
        Self {
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            serial: c.serial.clone(),
            not_before: rfc3339(c.not_before),
            not_after: rfc3339(c.not_after),
            sans: c.sans.iter().flatten().map(ToString::to_string).collect(),
            sha1: c.thumbprint.sha1_hex(),
            sha256: c.thumbprint.sha256_hex(),
            key: c.key.to_string(),
            signature: c.signature.name.clone(),
        }
    }
}

/// One certificate of the built chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainEntry {
    /// The certificate.
    #[serde(flatten)]
    pub cert: CertSummary,
    /// `target` (supplied with the file or by the server) or `trust-anchor`.
    pub source: &'static str,
    /// `valid`, `invalid: ...`, `unsupported: ...` or `not-checked`.
    pub signature_check: String,
}

/// The whole result of `doctor cert`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertReport {
    /// What was checked (path or endpoint).
    pub target: String,
    /// Profile judged against.
    pub profile: Profile,
    /// The leaf, when one was read.
    pub certificate: Option<CertSummary>,
    /// The chain from the leaf up, as far as it could be built.
    pub chain: Vec<ChainEntry>,
    /// Why the chain stops where it does.
    pub chain_end: Option<String>,
    /// Every check, in order.
    pub findings: Vec<Finding>,
}

impl CertReport {
    /// Judge `ev` and assemble the report.
    pub fn new(target: &str, ev: &CertEvidence, profile: Profile, now: OffsetDateTime) -> Self {
        let findings = evaluate(ev, profile, now);
        let chain = ev.chain.as_ref();
        Self {
            target: target.to_owned(),
            profile,
            certificate: chain.map(|c| CertSummary::from(c.leaf())),
            chain: chain
                .map(|c| {
                    c.links
                        .iter()
                        .map(|l| ChainEntry {
                            cert: CertSummary::from(&l.cert),
                            source: match l.source {
                                LinkSource::Target => "target",
                                LinkSource::Anchor => "trust-anchor",
                            },
                            signature_check: match &l.signature {
                                SignatureCheck::Valid => "valid".to_owned(),
                                SignatureCheck::Invalid(w) => format!("invalid: {w}"),
                                SignatureCheck::Unsupported(a) => format!("unsupported: {a}"),
                                SignatureCheck::NotChecked => "not-checked".to_owned(),
                            },
                        })
                        .collect()
                })
                .unwrap_or_default(),
            chain_end: chain.map(|c| match &c.end {
                ChainEnd::Anchor => "trust-anchor".to_owned(),
                ChainEnd::MissingIssuer { issuer, .. } => format!("missing-issuer: {issuer}"),
                ChainEnd::UntrustedRoot => "untrusted-root".to_owned(),
                ChainEnd::TooLong => "too-long".to_owned(),
            }),
            findings,
        }
    }

    /// The worst severity among the findings.
    pub fn worst(&self) -> Severity {
        self.findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Ok)
    }

    /// Human-readable rendering: the certificate, the chain, then one row per check with the
    /// remedy under every failure. Skipped checks are folded into one line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "steward doctor cert — {} (profile {})",
            self.target, self.profile
        );
        if let Some(c) = &self.certificate {
            let _ = writeln!(s);
            let _ = writeln!(s, "  subject     {}", c.subject);
            let _ = writeln!(s, "  issuer      {}", c.issuer);
            let _ = writeln!(s, "  serial      {}", c.serial);
            let _ = writeln!(s, "  valid       {} .. {}", c.not_before, c.not_after);
            let _ = writeln!(
                s,
                "  names       {}",
                if c.sans.is_empty() {
                    "(no SANs)".to_owned()
                } else {
                    c.sans.join(", ")
                }
            );
            let _ = writeln!(s, "  key         {}   signature {}", c.key, c.signature);
            let _ = writeln!(s, "  sha1        {}", c.sha1);
            let _ = writeln!(s, "  sha256      {}", c.sha256);
        }
        if !self.chain.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "  chain");
            for (i, e) in self.chain.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "    {i}  {}  [{}; signature {}]",
                    e.cert.subject, e.source, e.signature_check
                );
            }
            if let Some(end) = &self.chain_end {
                let _ = writeln!(s, "       ends: {end}");
            }
        }
        let _ = writeln!(s);
        let width = self.findings.iter().map(|f| f.id.len()).max().unwrap_or(0);
        let mut skipped = Vec::new();
        for f in &self.findings {
            if f.severity == Severity::Ok && f.message.starts_with("skipped: ") {
                skipped.push(f.id);
                continue;
            }
            let mark = match f.severity {
                Severity::Ok => "  ok   ",
                Severity::Warning => "  WARN ",
                Severity::Error => "  ERROR",
            };
            let _ = writeln!(s, "{mark} {:width$}  {}", f.id, f.message);
            if let Some(r) = &f.remedy {
                let _ = writeln!(s, "  {:7} {:width$}  fix: {r}", "", "");
            }
        }
        if !skipped.is_empty() {
            let _ = writeln!(
                s,
                "  skip   {} check(s) did not apply: {}",
                skipped.len(),
                skipped.join(", ")
            );
        }
        let errors = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        let warnings = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count();
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{}: {errors} error(s), {warnings} warning(s)",
            if errors > 0 { "FAIL" } else { "PASS" }
        );
        s
    }
}
