//! Agent certificates that gateways forward (`X-Steward-Agent-Cert`), verified once per
//! certificate rather than on every request, and afterwards named by thumbprint
//! (`X-Steward-Agent-Cert-SHA256`).
//!
//! Behind a gateway every check-in and every long-poll carries the agent's certificate, and
//! verifying it (its chain's ECDSA signatures, the CRLs) was the largest single cost of the
//! server's CPU with 100,000 agents behind gateways (a quarter of its samples; BENCHMARKS.md,
//! swarm round 5). The verdict for one certificate under one verifier (its roots and CRLs)
//! only changes with time, so it is remembered with the certificate's expiry. A gateway that
//! was told so names a remembered certificate by its SHA-256 thumbprint alone, which saves it
//! and the server the HPACK coding of the whole certificate on every request. A thumbprint
//! carries no more trust than the certificate would: only certificates this verifier accepted
//! are found by it, and a certificate is no secret.
//!
//! **Invariant:** a remembered verdict never outlives the trust it was reached under: the
//! trust anchors, the issuing CA certificates and what each CRL revokes ([`Trust`]). The cache
//! lives inside [`Forwarded`]; a new verifier is a new `Forwarded`, which takes over the
//! verdicts of the one before only when their `Trust` is the same, that is when the CRLs were
//! only re-signed (the hourly run) and nothing was revoked or rolled. A revocation or a root
//! roll starts with none remembered. A revoked device is also refused by its device record,
//! which every request reads.
//!
//! Before the takeover, every hourly re-signing emptied the cache: every agent behind a
//! gateway was verified again (an ECDSA chain check each), and each one's next request named
//! by thumbprint was answered 412 and sent again whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use base64::Engine;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use steward_pki::CertFacts;

use crate::service::PeerCert;

/// Remembered verdicts at most; beyond it the cache starts again empty (a fleet larger than
/// this re-verifies more often, nothing worse).
const CAPACITY: usize = 262_144;

/// What a verifier's verdicts rest on besides time: the trust anchors, the issuing CA
/// certificates (the intermediates a forwarded certificate is checked with) and, for each CRL,
/// its issuer and the serials it revokes with their dates. Not the CRLs' validity periods,
/// numbers or signatures, which change at every re-signing: a verifier is only ever built with
/// fresh CRLs, so two verifiers with the same `Trust` accept the same certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trust([u8; 32]);

impl Trust {
    /// The trust of a verifier built from `anchors` and `crls`, checking with `intermediates`.
    /// The error names a CRL that does not parse.
    pub(crate) fn of(
        anchors: &[CertificateDer<'_>],
        intermediates: &[CertificateDer<'_>],
        crls: &[CertificateRevocationListDer<'_>],
    ) -> Result<Self, String> {
        // Every list and every item is preceded by its length, so two different inputs never
        // hash the same bytes.
        fn put(ctx: &mut digest::Context, bytes: &[u8]) {
            ctx.update(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
            ctx.update(bytes);
        }
        fn count(ctx: &mut digest::Context, n: usize) {
            ctx.update(&u64::try_from(n).unwrap_or(u64::MAX).to_be_bytes());
        }
        let mut ctx = digest::Context::new(&digest::SHA256);
        for certs in [anchors, intermediates] {
            count(&mut ctx, certs.len());
            for c in certs {
                put(&mut ctx, c.as_ref());
            }
        }
        count(&mut ctx, crls.len());
        for crl in crls {
            let facts = steward_pki::parse_crl(crl.as_ref())
                .map_err(|e| format!("a CRL of the forwarded-agent verifier: {e}"))?;
            put(&mut ctx, &facts.issuer_raw);
            let mut revoked: Vec<(&[u8], i64)> = facts
                .revoked
                .iter()
                .map(|(serial, at)| (serial.as_slice(), at.unix_timestamp()))
                .collect();
            revoked.sort_unstable();
            count(&mut ctx, revoked.len());
            for (serial, at) in revoked {
                put(&mut ctx, serial);
                ctx.update(&at.to_be_bytes());
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Ok(Self(out))
    }
}

/// A verifier of forwarded agent certificates and the certificates it has accepted.
pub(crate) struct Forwarded {
    verifier: Arc<dyn ClientCertVerifier>,
    /// What its verdicts rest on (`None`: unknown, so they are never taken over).
    trust: Option<Trust>,
    /// SHA-256 of the certificate (its thumbprint) → the agent it names, and its expiry.
    accepted: Mutex<HashMap<[u8; 32], Accepted>>,
}

#[derive(Clone)]
struct Accepted {
    peer: PeerCert,
    not_after: u64,
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarded")
            .field("accepted", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Forwarded {
    /// A verifier with nothing remembered yet.
    pub(crate) fn new(verifier: Arc<dyn ClientCertVerifier>, trust: Option<Trust>) -> Self {
        Self {
            verifier,
            trust,
            accepted: Mutex::new(HashMap::new()),
        }
    }

    /// The verifier that follows `previous` (new CRLs): it takes over `previous`'s verdicts
    /// when both rest on the same [`Trust`], and starts with none otherwise.
    pub(crate) fn after(
        previous: Option<&Self>,
        verifier: Arc<dyn ClientCertVerifier>,
        trust: Option<Trust>,
    ) -> Self {
        let next = Self::new(verifier, trust);
        if let Some(p) = previous.filter(|p| trust.is_some() && p.trust == trust) {
            // Taken, not copied: a request still on the previous verifier that misses
            // verifies again there, with the same outcome.
            *next.lock() = std::mem::take(&mut *p.lock());
        }
        next
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Accepted>> {
        // Entries are inserted whole: a poisoned map is still consistent.
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent a forwarded certificate header names, if the certificate (base64 DER) chains
    /// through `intermediates` to the platform root, is for client authentication, is within
    /// its validity and not revoked. The error is the reason, for the log and the answer.
    pub(crate) fn verify(
        &self,
        header: &str,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<PeerCert, String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(header.trim())
            .map_err(|e| format!("the forwarded agent certificate is not base64: {e}"))?;
        let key: [u8; 32] = digest::digest(&digest::SHA256, &der)
            .as_ref()
            .try_into()
            .map_err(|_| "SHA-256 is not 32 bytes".to_owned())?;
        if let Some(peer) = self.known(&key, now) {
            return Ok(peer);
        }
        let leaf = CertificateDer::from(der);
        self.verifier
            .verify_client_cert(&leaf, intermediates, now)
            .map_err(|e| format!("the forwarded agent certificate is refused: {e}"))?;
        let facts = CertFacts::from_der(&leaf)
            .map_err(|_| "the forwarded agent certificate does not parse".to_owned())?;
        let peer = PeerCert::from_facts(&facts);
        let not_after = u64::try_from(facts.not_after.unix_timestamp()).unwrap_or(0);
        let mut accepted = self.lock();
        if accepted.len() >= CAPACITY {
            accepted.clear();
        }
        accepted.insert(
            key,
            Accepted {
                peer: peer.clone(),
                not_after,
            },
        );
        Ok(peer)
    }

    /// The agent of a certificate this verifier accepted, named by its SHA-256 thumbprint;
    /// `None` if it has not accepted it (or forgot it), or the certificate has expired since.
    pub(crate) fn known(&self, sha256: &[u8; 32], now: UnixTime) -> Option<PeerCert> {
        self.lock()
            .get(sha256)
            .filter(|a| now.as_secs() < a.not_after)
            .map(|a| a.peer.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::server::danger::ClientCertVerified;
    use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
    use steward_pki::{LeafRequest, OffsetDateTime, Usage};

    use super::*;
    use crate::config::DataDir;
    use crate::pki::{Crls, Pki};
    use crate::tls::forwarded_verifier;

    /// The real verifier, counting the certificates it is asked about.
    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn ClientCertVerifier>,
        calls: AtomicUsize,
    }

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.inner.root_hint_subjects()
        }
        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    /// A platform (its data directory kept alive by the `TempDir`) and an agent certificate
    /// it issued for "device-1", valid for 30 days from `now`.
    async fn platform(now: OffsetDateTime) -> (tempfile::TempDir, Pki, CertificateDer<'static>) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut opts = crate::InitOptions::new(&data, vec!["localhost".into()]);
        opts.admin_password = Some("correct horse battery".into());
        crate::init(opts).await.unwrap();
        let pki = Pki::load(&DataDir::new(&data)).unwrap();
        let issued = pki
            .issuing
            .issue(&LeafRequest {
                common_name: "device-1".into(),
                dns_names: vec![],
                ip_addrs: vec![],
                usage: Usage::Client,
                not_before: now - time::Duration::hours(1),
                not_after: now + time::Duration::days(30),
                crl_urls: vec!["http://localhost:4728/crl/issuing.crl".into()],
                key: steward_pki::KeySpec::EcdsaP256,
            })
            .unwrap();
        (dir, pki, issued.cert)
    }

    fn counting(inner: Arc<dyn ClientCertVerifier>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            calls: AtomicUsize::new(0),
        })
    }

    fn at(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(t.unix_timestamp()).unwrap(),
        ))
    }

    #[tokio::test]
    async fn a_certificate_is_verified_once_per_verifier_and_never_past_its_expiry() {
        let now = OffsetDateTime::now_utc();
        let (_dir, pki, cert) = platform(now).await;
        let header = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        let serial = CertFacts::from_der(&cert).unwrap().serial;
        let crls = |revoked: &[(String, i64)]| {
            pki.sign_crls(revoked, now, time::Duration::hours(1), 1)
                .unwrap()
        };
        let counting = counting(forwarded_verifier(&pki, &crls(&[])).unwrap());
        let fwd = Forwarded::new(counting.clone(), None);
        let intermediates = std::slice::from_ref(pki.issuing.cert());

        // Not known by thumbprint before it was verified whole.
        let thumbprint = steward_pki::Thumbprint::of(&cert).sha256;
        assert_eq!(fwd.known(&thumbprint, at(now)), None);

        // Verified the first time, remembered after (surrounding whitespace is not a new one).
        let peer = fwd.verify(&header, intermediates, at(now)).unwrap();
        assert_eq!(peer.common_name.as_deref(), Some("device-1"));
        assert_eq!(peer.serial, serial);
        let again = fwd
            .verify(&format!(" {header}\n"), intermediates, at(now))
            .unwrap();
        assert_eq!(again, peer);
        assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
        // Now its thumbprint names it too, and no other thumbprint names anything.
        assert_eq!(fwd.known(&thumbprint, at(now)), Some(peer.clone()));
        assert_eq!(peer.sha256, steward_pki::Thumbprint::of(&cert).sha256_hex());
        assert_eq!(fwd.known(&[0u8; 32], at(now)), None);

        // Past its expiry it is asked about again, and refused; its thumbprint names nothing.
        let late = now + time::Duration::days(31);
        assert_eq!(fwd.known(&thumbprint, at(late)), None);
        let e = fwd.verify(&header, intermediates, at(late)).unwrap_err();
        assert!(e.contains("refused"), "{e}");
        assert_eq!(counting.calls.load(Ordering::SeqCst), 2);

        // A new verifier (the CRL re-signed with the certificate revoked) remembers nothing.
        let revoked = Forwarded::new(
            forwarded_verifier(&pki, &crls(&[(serial, now.unix_timestamp() - 60)])).unwrap(),
            None,
        );
        assert_eq!(revoked.known(&thumbprint, at(now)), None);
        let e = revoked.verify(&header, intermediates, at(now)).unwrap_err();
        assert!(e.contains("refused"), "{e}");
        assert_eq!(revoked.known(&thumbprint, at(now)), None);

        // Not base64, and base64 of something that is no certificate.
        let e = fwd.verify("%%%", intermediates, at(now)).unwrap_err();
        assert!(e.contains("not base64"), "{e}");
        let e = fwd.verify("AAAA", intermediates, at(now)).unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn verdicts_outlive_a_re_signing_but_not_a_revocation() {
        let now = OffsetDateTime::now_utc();
        let (_dir, pki, cert) = platform(now).await;
        let header = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        let thumbprint = steward_pki::Thumbprint::of(&cert).sha256;
        let intermediates = std::slice::from_ref(pki.issuing.cert());
        let signed = |revoked: &[(String, i64)], minutes: i64, number: u64| {
            let when = now + time::Duration::minutes(minutes);
            pki.sign_crls(revoked, when, time::Duration::hours(2), number)
                .unwrap()
        };
        let trust = |c: &Crls| crate::tls::forwarded_trust(&pki, c);
        let other = vec![("0A1B2C".to_owned(), now.unix_timestamp() - 60)];

        // The hourly run: new CRLs (other dates, number, signature), the same trust. A
        // revocation, or another list of anchors, is another trust.
        let (first, again, revoking) = (
            signed(&[], -30, 1),
            signed(&[], -20, 2),
            signed(&other, -10, 3),
        );
        assert_ne!(first.issuing, again.issuing);
        assert!(trust(&first).is_some());
        assert_eq!(trust(&first), trust(&again));
        assert_ne!(trust(&first), trust(&revoking));
        let anchors = pki.client_anchors();
        let more = [anchors.clone(), vec![cert.clone()]].concat();
        assert_ne!(
            Trust::of(&anchors, intermediates, &first.all()).unwrap(),
            Trust::of(&more, intermediates, &first.all()).unwrap()
        );
        assert!(Trust::of(&anchors, intermediates, &[b"garbage".to_vec().into()]).is_err());

        // Verified under the first CRLs...
        let one = Forwarded::after(
            None,
            counting(forwarded_verifier(&pki, &first).unwrap()),
            trust(&first),
        );
        let peer = one.verify(&header, intermediates, at(now)).unwrap();
        // ...still known after the re-signing, without being verified again.
        let second = counting(forwarded_verifier(&pki, &again).unwrap());
        let two = Forwarded::after(Some(&one), second.clone(), trust(&again));
        assert_eq!(two.known(&thumbprint, at(now)), Some(peer.clone()));
        assert_eq!(two.verify(&header, intermediates, at(now)).unwrap(), peer);
        assert_eq!(second.calls.load(Ordering::SeqCst), 0);
        // A trust that could not be worked out never takes anything over.
        let unknown = Forwarded::after(Some(&two), forwarded_verifier(&pki, &again).unwrap(), None);
        assert_eq!(unknown.known(&thumbprint, at(now)), None);
        // After a revocation (of another certificate), nothing is known.
        let three = Forwarded::after(
            Some(&two),
            forwarded_verifier(&pki, &revoking).unwrap(),
            trust(&revoking),
        );
        assert_eq!(three.known(&thumbprint, at(now)), None);
    }
}
