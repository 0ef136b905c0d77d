//! `CertFacts::from_der` and `build_chain` over arbitrary bytes.
//!
//! The input is one or more DER certificates back to back (a TLS handshake's certificate list
//! or a `.p7b`-less bundle, as `cat a.der b.der` makes): it is cut at each top-level DER element
//! (no validation: a wrong length just makes the next piece garbage). The first piece is the
//! leaf, the others are the supplied certificates; the chain is built twice, once with the last
//! piece as the only trust anchor and once with no anchors at all. The whole input is also
//! parsed as a single certificate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steward_pki::{CertFacts, build_chain, rfc3339};

/// At most this many pieces: more only repeats the same work.
const MAX_PIECES: usize = 8;

/// Split `data` into top-level DER TLVs (tag, definite length). A piece whose length runs past
/// the end takes the rest of the input.
fn der_pieces(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < MAX_PIECES {
        let len = tlv_len(data).unwrap_or(data.len()).min(data.len());
        let (piece, rest) = data.split_at(len.max(1));
        out.push(piece);
        data = rest;
    }
    out
}

/// Total length (header + content) of the TLV at the start of `d`.
fn tlv_len(d: &[u8]) -> Option<usize> {
    let first = *d.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let bytes = d.get(2..2 + n)?;
    let content = bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    (2 + n).checked_add(content)
}

fn touch(f: &CertFacts) {
    let _ = (
        f.label(),
        f.dns_names().count(),
        f.key.to_string(),
        f.is_self_issued(),
    );
    let _ = (
        rfc3339(f.not_before),
        rfc3339(f.not_after),
        f.signature.hash.to_string(),
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = CertFacts::from_der(data) {
        touch(&f);
    }
    let facts: Vec<CertFacts> = der_pieces(data)
        .into_iter()
        .filter_map(|p| CertFacts::from_der(p).ok())
        .collect();
    let Some((leaf, supplied)) = facts.split_first() else {
        return;
    };
    touch(leaf);
    let anchors: Vec<CertFacts> = supplied.last().cloned().into_iter().collect();
    for anchors in [&anchors[..], &[]] {
        let chain = build_chain(leaf.clone(), supplied, anchors);
        assert!(!chain.links.is_empty(), "a chain always has its leaf");
        assert_eq!(chain.leaf().der, leaf.der);
        // build_chain stops once the chain is longer than its MAX_DEPTH (10).
        assert!(
            chain.links.len() <= 11,
            "chain longer than MAX_DEPTH allows"
        );
        assert!(chain.unused.len() <= supplied.len());
    }
});
