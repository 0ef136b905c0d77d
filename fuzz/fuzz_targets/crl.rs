//! `parse_crl` over arbitrary bytes (a CRL distribution point can answer anything: DER, PEM, an
//! HTML error page), then the checks the doctor runs on a parsed CRL: its signature against a
//! fixed issuer (the CA that signed the seed CRLs) and a revocation look-up.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use steward_pki::{CertFacts, parse_crl, rfc3339};

/// The issuing CA of the seed CRLs (written by seeds/generate.sh).
static ISSUER: LazyLock<CertFacts> = LazyLock::new(|| {
    CertFacts::from_der(include_bytes!("../seeds/issuer.der")).expect("seeds/issuer.der parses")
});

fuzz_target!(|data: &[u8]| {
    let Ok(crl) = parse_crl(data) else {
        return;
    };
    let _ = crl.verify_signed_by(&ISSUER);
    let _ = crl.revocation_of(&ISSUER);
    let _ = rfc3339(crl.this_update);
    if let Some(next) = crl.next_update {
        let _ = rfc3339(next);
    }
    for (_, when) in &crl.revoked {
        let _ = rfc3339(*when);
    }
});
