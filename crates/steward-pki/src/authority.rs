//! Certificate authorities: the platform root, the online issuing CA, and what they sign.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

use crate::error::signing;
use crate::{Error, KeySpec};

/// What a leaf certificate is for; decides its extendedKeyUsage and keyUsage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (agent site, console, gateway listener, package server).
    Server,
    /// A TLS client (agent identity, gateway→server link).
    Client,
    /// Both: a gateway presents one identity to agents and to the server.
    ServerAndClient,
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// Subject CN; informational only (names are matched against SANs).
    pub common_name: String,
    /// dNSName SANs.
    pub dns_names: Vec<String>,
    /// iPAddress SANs.
    pub ip_addrs: Vec<IpAddr>,
    /// Server, client, or both.
    pub usage: Usage,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
    /// CRL distribution point URLs (every Steward-issued certificate names one).
    pub crl_urls: Vec<String>,
    /// The key to generate.
    pub key: KeySpec,
}

/// A certificate with the private key generated for it.
#[derive(Debug)]
pub struct IssuedCert {
    /// The certificate.
    pub cert: CertificateDer<'static>,
    /// The private key, PKCS#8 DER. Callers store it with mode 0600 and never log it.
    pub key_pkcs8: Vec<u8>,
}

/// An entry for a CRL.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The revoked certificate's serial as encoded in it.
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub at: OffsetDateTime,
}

/// A CA that can sign certificates and CRLs.
#[derive(Debug)]
pub struct Authority {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| signing("a serial number", "no randomness"))?;
    // Positive, and never a leading zero octet: some verifiers reject non-minimal encodings.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from(bytes.to_vec()))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Steward");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(
    cn: &str,
    path_len: u8,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    crl_urls: &[String],
) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = not_before;
    p.not_after = not_after;
    p.serial_number = Some(random_serial()?);
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    if !crl_urls.is_empty() {
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: crl_urls.to_vec(),
        }];
    }
    Ok(p)
}

impl Authority {
    /// Create a self-signed root CA. Path length 1: it signs issuing CAs, which sign leaves.
    pub fn new_root(
        common_name: &str,
        key: KeySpec,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, Error> {
        let key = key.generate()?;
        let mut params = ca_params(common_name, 1, not_before, not_after, &[])?;
        params.use_authority_key_identifier_extension = false;
        let cert = params
            .self_signed(&key)
            .map_err(|e| signing(format!("root CA {common_name}"), e))?;
        Ok(Self {
            cert: cert.der().clone(),
            key,
        })
    }

    /// Create an issuing CA signed by this one (path length 0: it signs only leaves).
    pub fn new_intermediate(
        &self,
        common_name: &str,
        key: KeySpec,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        crl_urls: &[String],
    ) -> Result<Self, Error> {
        let key = key.generate()?;
        let params = ca_params(common_name, 0, not_before, not_after, crl_urls)?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| signing(format!("issuing CA {common_name}"), e))?;
        Ok(Self {
            cert: cert.der().clone(),
            key,
        })
    }

    /// Certify another CA's existing key and name under this CA: the certificate a root
    /// roll gives the issuing CA under the new root. Subject (byte for byte), key and so the
    /// subject key identifier stay those of `ca`, so every certificate `ca` ever issued chains
    /// through either of its certificates (the old one to the old root, this one to the new);
    /// one CRL signed by `ca`'s key speaks for both. `path_len` is the new certificate's
    /// pathLenConstraint (0 for an issuing CA).
    pub fn certify_ca(
        &self,
        ca: &Authority,
        path_len: u8,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        crl_urls: &[String],
    ) -> Result<CertificateDer<'static>, Error> {
        let facts = crate::CertFacts::from_der(ca.cert())
            .map_err(|e| Error::CaMaterial(format!("certificate: {e}")))?;
        let cn =
            facts.common_names.first().cloned().ok_or_else(|| {
                Error::CaMaterial("the CA certificate has no common name".to_owned())
            })?;
        let params = ca_params(&cn, path_len, not_before, not_after, crl_urls)?;
        let cert = params
            .signed_by(&ca.key, &self.issuer()?)
            .map_err(|e| signing(format!("CA certificate for {cn}"), e))?;
        let der = cert.der().clone();
        let new = crate::CertFacts::from_der(&der)
            .map_err(|e| Error::CaMaterial(format!("certificate: {e}")))?;
        // Leaves name their issuer by these bytes: a re-encoded name would orphan them.
        if new.subject_raw != facts.subject_raw || new.subject_key_id != facts.subject_key_id {
            return Err(Error::CaMaterial(format!(
                "{cn}: its name or key identifier cannot be reproduced exactly; it was not made by Steward"
            )));
        }
        Ok(der)
    }

    /// Load a CA from its certificate and PKCS#8 key. `spec` chooses the signature hash for RSA
    /// keys (the key itself does not say which hash to sign with).
    pub fn from_der(
        cert: CertificateDer<'static>,
        key_pkcs8: &[u8],
        spec: KeySpec,
    ) -> Result<Self, Error> {
        let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(key_pkcs8);
        let key = match spec {
            KeySpec::Rsa { .. } => KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, spec.algorithm()),
            _ => KeyPair::try_from(&pkcs8),
        }
        .map_err(|e| Error::CaMaterial(format!("key: {e}")))?;
        let facts = crate::CertFacts::from_der(&cert)
            .map_err(|e| Error::CaMaterial(format!("certificate: {e}")))?;
        if crate::key_matches_cert(
            &rustls_pki_types::PrivateKeyDer::Pkcs8(pkcs8.clone_key()),
            &facts.spki_der,
        ) != Ok(true)
        {
            return Err(Error::CaMaterial(
                "the key does not belong to the certificate".to_owned(),
            ));
        }
        Ok(Self { cert, key })
    }

    /// The CA certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA's private key, PKCS#8 DER.
    pub fn key_pkcs8(&self) -> &[u8] {
        self.key.serialized_der()
    }

    /// A detached signature of `msg` with the CA's key (the algorithm of its certificate's
    /// signatures: ECDSA in ASN.1 form, RSA PKCS#1 v1.5, Ed25519). Verified by
    /// [`verify_detached`] with the CA's certificate.
    pub fn sign_detached(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        use rcgen::SigningKey as _;
        self.key.sign(msg).map_err(|e| Error::Signing {
            what: "a detached signature".to_owned(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, Error> {
        Issuer::from_ca_cert_der(&self.cert, &self.key)
            .map_err(|e| Error::CaMaterial(e.to_string()))
    }

    /// Generate a key pair and issue a leaf certificate for it.
    pub fn issue(&self, req: &LeafRequest) -> Result<IssuedCert, Error> {
        let key = req.key.generate()?;
        let p = leaf_params(req)?;
        let cert = p
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| signing(format!("certificate for {}", req.common_name), e))?;
        Ok(IssuedCert {
            cert: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
        })
    }

    /// Issue a certificate for the key in a PKCS#10 CSR (PEM), whose signature proves the
    /// requester holds that key. Everything but the public key comes from `req` (names, usage,
    /// dates); `req.key` only decides the keyUsage bits and should match the CSR's key type.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        req: &LeafRequest,
    ) -> Result<CertificateDer<'static>, Error> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::Csr(e.to_string()))?;
        csr.params = leaf_params(req)?;
        let cert = csr
            .signed_by(&self.issuer()?)
            .map_err(|e| signing(format!("certificate for {}", req.common_name), e))?;
        Ok(cert.der().clone())
    }

    /// Sign a CRL listing `revoked`.
    pub fn sign_crl(
        &self,
        revoked: &[Revoked],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        crl_number: u64,
    ) -> Result<CertificateRevocationListDer<'static>, Error> {
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from(r.serial.clone()),
                    revocation_time: r.at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer()?)
            .map_err(|e| signing("CRL", e))?;
        Ok(crl.der().clone())
    }
}

fn leaf_params(req: &LeafRequest) -> Result<CertificateParams, Error> {
    let what = format!("certificate for {}", req.common_name);
    let mut p = CertificateParams::default();
    p.distinguished_name = name(&req.common_name);
    p.subject_alt_names = req
        .dns_names
        .iter()
        .map(|d| {
            d.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| signing(&what, e))
        })
        .chain(req.ip_addrs.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
        .collect::<Result<_, _>>()?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = match req.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    p.key_usages = match req.key {
        // RSA key exchange (TLS 1.2 without ECDHE) needs keyEncipherment; everything else needs
        // only digitalSignature.
        KeySpec::Rsa { .. } => vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
        _ => vec![KeyUsagePurpose::DigitalSignature],
    };
    p.not_before = req.not_before;
    p.not_after = req.not_after;
    p.serial_number = Some(random_serial()?);
    p.use_authority_key_identifier_extension = true;
    if !req.crl_urls.is_empty() {
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: req.crl_urls.clone(),
        }];
    }
    Ok(p)
}

/// Make a key pair and a PKCS#10 request for it: the key stays with the caller (an agent writes
/// it 0600 and never sends it anywhere). Returns (CSR PEM, PKCS#8 DER key).
pub fn make_csr(spec: KeySpec, common_name: &str) -> Result<(String, Vec<u8>), Error> {
    let key = spec.generate()?;
    let mut p = CertificateParams::default();
    p.distinguished_name = name(common_name);
    let csr = p.serialize_request(&key).map_err(|e| signing("CSR", e))?;
    let pem = csr.pem().map_err(|e| signing("CSR", e))?;
    Ok((pem, key.serialize_der()))
}

/// Whether `signature` over `msg` verifies with the public key of the certificate `signer`
/// (DER). The algorithm follows the key: ECDSA P-256/SHA-256, P-384/SHA-384, Ed25519, RSA
/// PKCS#1 v1.5 with SHA-256, -384 or -512.
pub fn verify_detached(signer: &[u8], msg: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature as sig;
    use x509_parser::prelude::FromDer as _;
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(signer) else {
        return false;
    };
    let spki = cert.public_key();
    let key = spki.subject_public_key.data.as_ref();
    let algs: &[&'static dyn sig::VerificationAlgorithm] =
        match spki.algorithm.algorithm.to_id_string().as_str() {
            // id-ecPublicKey: the curve decides the hash.
            "1.2.840.10045.2.1" => match spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .as_deref()
            {
                Some("1.2.840.10045.3.1.7") => &[&sig::ECDSA_P256_SHA256_ASN1],
                Some("1.3.132.0.34") => &[&sig::ECDSA_P384_SHA384_ASN1],
                _ => &[],
            },
            "1.3.101.112" => &[&sig::ED25519],
            "1.2.840.113549.1.1.1" => &[
                &sig::RSA_PKCS1_2048_8192_SHA256,
                &sig::RSA_PKCS1_2048_8192_SHA384,
                &sig::RSA_PKCS1_2048_8192_SHA512,
            ],
            _ => &[],
        };
    algs.iter().any(|a| {
        sig::UnparsedPublicKey::new(*a, key)
            .verify(msg, signature)
            .is_ok()
    })
}
