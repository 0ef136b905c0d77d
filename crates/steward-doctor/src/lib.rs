//! Steward's diagnosis engine: evidence in, findings out.
//!
//! Every check has a stable ID (documented in `docs/diagnostics.md`), a severity that may depend
//! on the requirement profile, a message carrying the evidence actually found, and a remedy.
//! The same findings are printed by `steward doctor`, shown in the console and written to the
//! agent log, so an ID seen in one place can be looked up in the others.
//!
//! Architecture invariant: no network or disk I/O and no clock reads here. Callers gather the
//! evidence (files, handshakes, CRL downloads) and pass "now"; this crate only judges it.
#![forbid(unsafe_code)]

pub mod binding;
pub mod catalog;
pub mod cert;
pub mod logs;
mod names;
mod report;
pub mod rules;

use std::fmt;

pub use names::name_covered;
pub use report::{CertReport, CertSummary, ChainEntry};
pub use rules::{Level, Profile, RULES, Rule};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The check passed, was accepted under this profile, or did not apply.
    Ok,
    /// Works, but is a risk or will break some peers.
    Warning,
    /// Agents will fail (or the certificate will be refused).
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One result of one check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Stable ID, e.g. `CERT-CHAIN-INCOMPLETE`.
    pub id: &'static str,
    /// Severity under the profile in force.
    pub severity: Severity,
    /// What was found, with the actual values.
    pub message: String,
    /// How to fix it; `None` when the finding is `ok`.
    pub remedy: Option<String>,
}

impl Finding {
    /// A passing finding.
    pub fn ok(id: &'static str, message: impl Into<String>) -> Self {
        Self {
            id,
            severity: Severity::Ok,
            message: message.into(),
            remedy: None,
        }
    }
}
