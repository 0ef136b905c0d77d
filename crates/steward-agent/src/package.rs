//! Reading a bootstrap package, naming exactly what is wrong with a bad one.
//!
//! Packages are copied around by hand (mail, USB sticks, software-distribution tools), so the
//! common failures are a truncated copy, a different file picked by mistake, or a text editor's
//! damage. Each is told apart: "truncated" (JSON ends early), "not JSON", "not a Steward
//! bootstrap package", "format X, expected Y", and what is missing or malformed inside.

use std::path::Path;

use steward_proto::BootstrapPackage;

use crate::store::{self, StoreError};

/// Largest package accepted: a profile with a handful of servers and trust anchors is a few
/// kilobytes; anything this large is the wrong file.
pub const MAX_PACKAGE_BYTES: usize = 1024 * 1024;

/// Why a bootstrap package cannot be used. Every variant is reported as
/// `AGENT-PACKAGE-INVALID` with its own message.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The file could not be read.
    #[error("cannot read the package: {0}")]
    Unreadable(#[source] StoreError),
    /// The file does not exist.
    #[error("the package file does not exist")]
    Missing,
    /// The file is empty.
    #[error("the package file is empty")]
    Empty,
    /// The file is larger than any package.
    #[error("the file is {0} bytes, far larger than a bootstrap package: it is another file")]
    TooLarge(usize),
    /// The JSON ends before the document does: a partial copy.
    #[error(
        "the package is truncated: its JSON ends early at line {line} column {column}; copy the whole file again"
    )]
    Truncated {
        /// Line where the text ends.
        line: usize,
        /// Column where the text ends.
        column: usize,
    },
    /// The bytes are not JSON at all (a binary file, an archive, damaged text).
    #[error("the file is not JSON (corrupt or another kind of file): {reason}")]
    NotJson {
        /// The parser's message, with line and column.
        reason: String,
    },
    /// Valid JSON, but not a Steward bootstrap package.
    #[error("the file is JSON but not a Steward bootstrap package: {0}")]
    Foreign(String),
    /// A package of another format (version) than this agent reads.
    #[error("the package format is {found:?}; this agent reads {expected:?}")]
    WrongFormat {
        /// The `format` found.
        found: String,
        /// [`BootstrapPackage::FORMAT`].
        expected: &'static str,
    },
    /// The package has the right format but a field is missing or malformed.
    #[error("the package is damaged: {0}")]
    Malformed(String),
    /// The profile names no server to enroll with.
    #[error("the package's profile lists no server")]
    NoServers,
    /// A server entry cannot be connected to.
    #[error("server {index} of the profile is unusable: {reason}")]
    BadServer {
        /// Position in the list (1-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// No trust anchor: the agent could not authenticate any server.
    #[error("the package's profile has no trust anchor, so no server could be trusted")]
    NoTrustAnchors,
    /// A trust anchor is not a usable certificate.
    #[error("trust anchor {index} of the profile is not a usable certificate: {reason}")]
    BadTrustAnchor {
        /// Position in the list (1-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The enrollment token is empty.
    #[error("the package carries no enrollment token")]
    NoToken,
}

impl PackageError {
    /// The event ID every package fault is logged and reported under.
    pub fn id(&self) -> &'static str {
        crate::events::ids::PACKAGE_INVALID
    }
}

/// Read and check the package at `path`.
pub fn read_package(path: &Path) -> Result<BootstrapPackage, PackageError> {
    match store::read_bytes(path) {
        Ok(Some(bytes)) => parse_package(&bytes),
        Ok(None) => Err(PackageError::Missing),
        // A file too large for the store's bound is certainly too large for a package.
        Err(StoreError::Corrupt { .. }) => Err(PackageError::TooLarge(MAX_PACKAGE_BYTES + 1)),
        Err(e) => Err(PackageError::Unreadable(e)),
    }
}

/// Parse and check package bytes.
pub fn parse_package(bytes: &[u8]) -> Result<BootstrapPackage, PackageError> {
    if bytes.len() > MAX_PACKAGE_BYTES {
        return Err(PackageError::TooLarge(bytes.len()));
    }
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(PackageError::Empty);
    }
    // Parse to a generic value first so "not JSON" and "truncated" are told apart from "JSON,
    // but not ours", which typed deserialization would blur into one message.
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
        if e.is_eof() {
            PackageError::Truncated {
                line: e.line(),
                column: e.column(),
            }
        } else {
            PackageError::NotJson {
                reason: e.to_string(),
            }
        }
    })?;
    let Some(object) = value.as_object() else {
        return Err(PackageError::Foreign(format!(
            "it is a JSON {} where a package is an object",
            kind(&value)
        )));
    };
    match object.get("format") {
        None => {
            return Err(PackageError::Foreign(
                "it has no \"format\" field".to_owned(),
            ));
        }
        Some(serde_json::Value::String(f)) if f == BootstrapPackage::FORMAT => {}
        Some(serde_json::Value::String(f)) => {
            return Err(PackageError::WrongFormat {
                found: f.clone(),
                expected: BootstrapPackage::FORMAT,
            });
        }
        Some(other) => {
            return Err(PackageError::Foreign(format!(
                "its \"format\" is a JSON {}",
                kind(other)
            )));
        }
    }
    let package: BootstrapPackage =
        serde_json::from_value(value).map_err(|e| PackageError::Malformed(e.to_string()))?;
    check(&package)?;
    Ok(package)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

fn check(p: &BootstrapPackage) -> Result<(), PackageError> {
    if p.token.trim().is_empty() {
        return Err(PackageError::NoToken);
    }
    crate::net::check_profile(&p.profile).map_err(|e| match e {
        crate::net::ProfileError::NoServers => PackageError::NoServers,
        crate::net::ProfileError::BadServer { index, reason } => {
            PackageError::BadServer { index, reason }
        }
        crate::net::ProfileError::NoTrustAnchors => PackageError::NoTrustAnchors,
        crate::net::ProfileError::BadTrustAnchor { index, reason } => {
            PackageError::BadTrustAnchor { index, reason }
        }
    })
}
