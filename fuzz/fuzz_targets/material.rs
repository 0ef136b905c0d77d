//! `read_material` over arbitrary bytes: PEM/DER/PKCS#12 sniffing, then everything a caller
//! does with the result (the leaf, the facts of each certificate, key/certificate matching).
//!
//! The whole input is the file. It is read as the CLI does: first with no password (the empty
//! password is tried), then, on `PasswordRequired`, with `Some("fuzz")`, the password of the
//! PKCS#12 seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steward_pki::{CertFacts, MaterialError, key_matches_cert, read_material, rfc3339};

fuzz_target!(|data: &[u8]| {
    let material = match read_material(data, None) {
        Err(MaterialError::PasswordRequired) => read_material(data, Some("fuzz")),
        other => other,
    };
    let Ok(material) = material else {
        return;
    };
    if let Some(i) = material.leaf_index() {
        assert!(i < material.certs.len(), "leaf_index out of range");
    }
    let facts: Vec<CertFacts> = material
        .certs
        .iter()
        .filter_map(|c| CertFacts::from_der(c).ok())
        .collect();
    for f in &facts {
        // What the doctor prints of every certificate.
        let _ = (f.label(), f.dns_names().count(), f.key.to_string());
        let _ = (
            rfc3339(f.not_before),
            rfc3339(f.not_after),
            f.signature.hash.to_string(),
        );
    }
    for key in &material.keys {
        for f in &facts {
            let _ = key_matches_cert(key, &f.spki_der);
        }
    }
});
