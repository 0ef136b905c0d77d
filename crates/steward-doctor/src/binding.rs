//! Judging third-party certificate material for binding to a listener whose clients (agents)
//! receive the root through the communication profile: the server's listeners
//! (`steward server cert import`) and the gateway's edge (`steward gateway cert import`).
//!
//! The material must hold the key and the whole chain up to a self-signed root (the root is
//! what agents will be given), and it is judged with the `doctor cert` rules under the
//! `steward` profile for the names agents use. Like the rest of this crate, no I/O: bytes and
//! "now" in, a verdict out.

use steward_pki::{
    CertFacts, Chain, ChainEnd, MaterialError, MaterialFormat, OffsetDateTime, PrivateKeyDer,
    build_chain, key_matches_cert, read_material,
};

use crate::cert::{CertEvidence, Input, KeyEvidence, ReadOutcome, Revocation};
use crate::{CertReport, Profile, Severity};

/// Rules that refuse a binding although they are only warnings under the `steward` profile: a
/// certificate goes live only after every agent has its root, which can take longer than the
/// few days such a certificate has left (ITMS refuses them at import for the same reason).
pub const REFUSED_AT_BINDING: &[&str] = &["CERT-EXPIRES-SOON"];

/// Material fit to bind.
#[derive(Debug)]
pub struct Bindable {
    /// The chain from the leaf to the root (the root included, as the last link).
    pub chain: Chain,
    /// The root agents must be given.
    pub root: CertFacts,
    /// The private key of the leaf.
    pub key: PrivateKeyDer<'static>,
    /// The findings (none an error; warnings are worth showing).
    pub report: CertReport,
}

impl Bindable {
    /// What a listener sends: the leaf and its intermediates, not the root (agents hold it).
    pub fn served_der(&self) -> Vec<&[u8]> {
        self.chain
            .links
            .iter()
            .filter(|l| l.cert.der != self.root.der)
            .map(|l| l.cert.der.as_ref())
            .collect()
    }
}

/// Why material cannot be bound.
#[derive(Debug)]
pub enum Refusal {
    /// A rule refused it (unreadable, wrong password, no key, a name not covered, no
    /// serverAuth, expiring soon, ...): the report says which, with the evidence.
    Findings(Box<CertReport>),
    /// The chain in the file does not reach a self-signed root, so there is no root to give
    /// agents; `end` says where it stops. The report shows the chain as far as it goes.
    NoRoot {
        /// Where the chain stops, in words.
        end: String,
        /// The findings for the chain as found (CERT-CHAIN-INCOMPLETE among them).
        report: Box<CertReport>,
    },
}

/// Judges `bytes` (PKCS#12, PEM or DER; `password` for PKCS#12; `label` names it in the
/// report) for binding to a listener agents reach by `names`. CRLs are not fetched: a
/// third-party CA's distribution points are the CA's to keep reachable, and the listener's
/// host (a DMZ, often) may not reach them; `steward doctor cert` checks them on demand.
pub fn judge_for_binding(
    bytes: &[u8],
    password: Option<&str>,
    names: Vec<String>,
    label: &str,
    now: OffsetDateTime,
) -> Result<Bindable, Refusal> {
    let mut ev = CertEvidence {
        read: ReadOutcome::Read,
        input: Input::File { format: None },
        chain: None,
        key: KeyEvidence::Missing,
        names,
        revocation: Revocation::Disabled,
    };
    let report = |ev: &CertEvidence| Box::new(CertReport::new(label, ev, Profile::Steward, now));
    let material = match read_material(bytes, password) {
        Ok(m) => m,
        Err(e) => {
            ev.read = ReadOutcome::Material(e);
            return Err(Refusal::Findings(report(&ev)));
        }
    };
    ev.input = Input::File {
        format: Some(material.format),
    };
    let mut facts = Vec::with_capacity(material.certs.len());
    for (index, der) in material.certs.iter().enumerate() {
        match CertFacts::from_der(der) {
            Ok(f) => facts.push(f),
            Err(reason) => {
                ev.read = ReadOutcome::Material(MaterialError::BadCertificate { index, reason });
                return Err(Refusal::Findings(report(&ev)));
            }
        }
    }
    let Some(leaf_index) = material.leaf_index() else {
        ev.read = ReadOutcome::Material(MaterialError::Unrecognised(match material.format {
            MaterialFormat::Pkcs12 => "the PKCS#12 file holds no certificate".into(),
            _ => "no certificate".into(),
        }));
        return Err(Refusal::Findings(report(&ev)));
    };
    let leaf = facts.remove(leaf_index);
    // Binding needs the key, whatever the container: no key is PFX-NO-KEY.
    let key = material.keys.into_iter().next();
    ev.key = match &key {
        None => KeyEvidence::Missing,
        Some(key) => match key_matches_cert(key, &leaf.spki_der) {
            Ok(true) => KeyEvidence::Matches,
            Ok(false) => KeyEvidence::Mismatch,
            Err(why) => KeyEvidence::Unloadable(why),
        },
    };
    // Walked without anchors: a complete file ends in a self-signed root, which then counts
    // as the anchor for the judgement.
    let walked = build_chain(leaf.clone(), &facts, &[]);
    let root = match &walked.end {
        ChainEnd::UntrustedRoot => walked.links.last().map(|l| l.cert.clone()),
        _ => None,
    };
    let Some(root) = root else {
        let end = match &walked.end {
            ChainEnd::MissingIssuer { issuer, .. } => {
                format!("the issuer {issuer} is not in the file")
            }
            ChainEnd::TooLong => "the chain does not end (a loop)".to_owned(),
            ChainEnd::Anchor | ChainEnd::UntrustedRoot => "no root".to_owned(),
        };
        ev.chain = Some(walked);
        return Err(Refusal::NoRoot {
            end,
            report: report(&ev),
        });
    };
    let chain = build_chain(leaf, &facts, std::slice::from_ref(&root));
    ev.chain = Some(chain.clone());
    let judged = report(&ev);
    let refused = judged.findings.iter().any(|f| {
        f.severity == Severity::Error
            || (f.severity != Severity::Ok && REFUSED_AT_BINDING.contains(&f.id))
    });
    match key {
        // A missing key is PFX-NO-KEY, an error: refused here too.
        Some(key) if !refused => Ok(Bindable {
            chain,
            root,
            key,
            report: *judged,
        }),
        _ => Err(Refusal::Findings(judged)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_pki::{Authority, KeySpec, LeafRequest, Pkcs12Encryption, Usage, write_pkcs12};
    use time::Duration;

    /// A root, an intermediate and a server certificate for `gw.example.com` valid `days`,
    /// as a PFX with the key and the chain up to (and with `with_root`, including) the root.
    fn pfx(days: i64, with_root: bool) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        let root = Authority::new_root(
            "Corp Root",
            KeySpec::EcdsaP256,
            now,
            now + Duration::days(3650),
        )
        .unwrap();
        let ca = root
            .new_intermediate(
                "Corp CA",
                KeySpec::EcdsaP256,
                now,
                now + Duration::days(1000),
                &[],
            )
            .unwrap();
        let leaf = ca
            .issue(&LeafRequest {
                common_name: "gw.example.com".into(),
                dns_names: vec!["gw.example.com".into()],
                ip_addrs: vec![],
                usage: Usage::Server,
                not_before: now - Duration::hours(1),
                not_after: now + Duration::days(days),
                crl_urls: vec![],
                key: KeySpec::EcdsaP256,
            })
            .unwrap();
        let mut chain = vec![leaf.cert, ca.cert().clone()];
        if with_root {
            chain.push(root.cert().clone());
        }
        write_pkcs12(
            &leaf.key_pkcs8,
            &chain,
            "pw",
            "gw",
            Pkcs12Encryption::Aes256,
        )
        .unwrap()
    }

    fn judge(bytes: &[u8], name: &str) -> Result<Bindable, Refusal> {
        judge_for_binding(
            bytes,
            Some("pw"),
            vec![name.into()],
            "gw.pfx",
            OffsetDateTime::now_utc(),
        )
    }

    fn ids(r: &CertReport) -> Vec<&str> {
        r.findings
            .iter()
            .filter(|f| f.severity != Severity::Ok)
            .map(|f| f.id)
            .collect()
    }

    #[test]
    fn a_complete_file_binds_and_serves_without_its_root() {
        let bound = judge(&pfx(365, true), "gw.example.com").unwrap();
        assert_eq!(bound.root.subject, "O=Steward, CN=Corp Root");
        // Leaf and intermediate are served; the root goes to agents through the profile.
        assert_eq!(bound.served_der().len(), 2);
        assert!(matches!(bound.key, PrivateKeyDer::Pkcs8(_)));
    }

    #[test]
    fn refusals_name_the_rule() {
        match judge(&pfx(365, false), "gw.example.com") {
            Err(Refusal::NoRoot { end, report }) => {
                assert!(end.contains("Corp Root"), "{end}");
                assert!(
                    ids(&report).contains(&"CERT-CHAIN-INCOMPLETE"),
                    "{:?}",
                    ids(&report)
                );
            }
            other => panic!("{other:?}"),
        }
        match judge(&pfx(365, true), "other.example.com") {
            Err(Refusal::Findings(r)) => assert!(ids(&r).contains(&"CERT-NAME-MISMATCH")),
            other => panic!("{other:?}"),
        }
        // Only a warning under the `steward` profile, but refused for binding.
        match judge(&pfx(10, true), "gw.example.com") {
            Err(Refusal::Findings(r)) => assert_eq!(ids(&r), vec!["CERT-EXPIRES-SOON"]),
            other => panic!("{other:?}"),
        }
        match judge_for_binding(
            &pfx(365, true),
            Some("wrong"),
            vec!["gw.example.com".into()],
            "gw.pfx",
            OffsetDateTime::now_utc(),
        ) {
            Err(Refusal::Findings(r)) => assert!(ids(&r).contains(&"PFX-PASSWORD")),
            other => panic!("{other:?}"),
        }
    }
}
