//! Every stable ID the path checker can report is documented in docs/diagnostics.md.

use std::collections::BTreeSet;
use std::path::Path;

use steward_doctor::catalog::{quoted_ids, undocumented};
use steward_probe::{ProbeError, Stage};

#[test]
fn every_path_check_id_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    let docs = read("../../docs/diagnostics.md");
    let mut ids: BTreeSet<String> = quoted_ids(&read("src/path.rs"));
    // The probe failures a path check can end on (resolve, connect, handshake, a bad target);
    // the HTTP ones come from CRL downloads only.
    let a = || "127.0.0.1:1".to_owned();
    for e in [
        ProbeError::InvalidTarget(a()),
        ProbeError::Dns {
            host: a(),
            reason: a(),
        },
        ProbeError::Refused { addr: a() },
        ProbeError::Timeout {
            stage: Stage::Connect,
            addr: a(),
            after_ms: 1,
        },
        ProbeError::Unreachable {
            addr: a(),
            reason: a(),
        },
        ProbeError::NotTls {
            addr: a(),
            detail: a(),
        },
        ProbeError::Tls {
            addr: a(),
            detail: a(),
        },
        ProbeError::Io {
            addr: a(),
            reason: a(),
        },
    ] {
        ids.insert(e.id().to_owned());
    }
    // A sample the scan must find, so a broken scan cannot pass silently.
    for expected in [
        "PATH-OK",
        "PATH-THUMBPRINT-UNKNOWN",
        "PATH-GATEWAY-UPSTREAM",
        "PATH-NO-GATEWAYS",
        "CERT-EXPIRES-SOON",
        "NET-REFUSED",
    ] {
        assert!(
            ids.contains(expected),
            "the scan missed {expected}: {ids:?}"
        );
    }
    let missing = undocumented(&ids, &docs);
    assert!(
        missing.is_empty(),
        "docs/diagnostics.md has no section for {missing:?}"
    );
}
