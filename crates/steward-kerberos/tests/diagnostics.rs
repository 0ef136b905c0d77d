//! Every stable ID `steward doctor kerberos` can emit is documented in docs/diagnostics.md.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use steward_doctor::catalog::{quoted_ids, undocumented};

#[test]
fn every_id_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("../../docs/diagnostics.md")).unwrap();
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            ids.extend(quoted_ids(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    for expected in [
        "KRB-KVNO-MISMATCH",
        "KRB-CLOCK-SKEW",
        "KRB-DUPLICATE-SPN-UNCHECKED",
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
