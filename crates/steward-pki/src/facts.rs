//! What a certificate says, extracted once into plain data.
//!
//! The doctor's rules read these facts rather than DER, so each rule can be unit-tested on
//! hand-made facts (a SHA-1 intermediate, an MD5 leaf, a 1024-bit key) without forging such
//! certificates, while integration tests feed real ones made by `openssl`.

use std::fmt;
use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509CertificateParser;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::nom::Parser;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::Thumbprint;

/// Formats a timestamp as RFC 3339 (UTC), the form used in every Steward message.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The hash inside a signature algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashAlg {
    /// MD2: broken.
    Md2,
    /// MD5: broken.
    Md5,
    /// SHA-1: collision attacks are practical; weak.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// The algorithm has its hash built in (Ed25519, Ed448).
    Intrinsic,
    /// An algorithm this code does not know, by OID.
    Unknown(String),
}

impl HashAlg {
    /// Whether this is SHA-1.
    pub fn is_weak(&self) -> bool {
        matches!(self, HashAlg::Sha1)
    }

    /// Whether this is MD2 or MD5.
    pub fn is_broken(&self) -> bool {
        matches!(self, HashAlg::Md2 | HashAlg::Md5)
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashAlg::Md2 => f.write_str("MD2"),
            HashAlg::Md5 => f.write_str("MD5"),
            HashAlg::Sha1 => f.write_str("SHA-1"),
            HashAlg::Sha224 => f.write_str("SHA-224"),
            HashAlg::Sha256 => f.write_str("SHA-256"),
            HashAlg::Sha384 => f.write_str("SHA-384"),
            HashAlg::Sha512 => f.write_str("SHA-512"),
            HashAlg::Intrinsic => f.write_str("intrinsic"),
            HashAlg::Unknown(oid) => write!(f, "unknown ({oid})"),
        }
    }
}

/// A certificate's signature algorithm: the name for people, the hash for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureAlg {
    /// For example `sha256WithRSAEncryption`, `ecdsa-with-SHA384`, `ED25519`.
    pub name: String,
    /// The hash it uses.
    pub hash: HashAlg,
}

/// The subject public key's algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAlg {
    /// RSA with its modulus size in bits.
    Rsa {
        /// Modulus size.
        bits: usize,
    },
    /// ECDSA/ECDH on a named curve.
    Ec {
        /// `P-256`, `P-384`, `P-521`, or the curve OID when not one of those.
        curve: String,
    },
    /// Ed25519.
    Ed25519,
    /// Ed448.
    Ed448,
    /// DSA with its size in bits.
    Dsa {
        /// Key size.
        bits: usize,
    },
    /// Something else, by OID.
    Other(String),
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlg::Rsa { bits } => write!(f, "RSA {bits}"),
            KeyAlg::Ec { curve } => write!(f, "ECDSA {curve}"),
            KeyAlg::Ed25519 => f.write_str("Ed25519"),
            KeyAlg::Ed448 => f.write_str("Ed448"),
            KeyAlg::Dsa { bits } => write!(f, "DSA {bits}"),
            KeyAlg::Other(oid) => write!(f, "unknown key algorithm {oid}"),
        }
    }
}

/// One subjectAltName entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanEntry {
    /// dNSName.
    Dns(String),
    /// iPAddress.
    Ip(IpAddr),
    /// Another kind (email, URI, ...), as text; never matched against host names.
    Other(String),
}

impl fmt::Display for SanEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SanEntry::Dns(d) => write!(f, "DNS:{d}"),
            SanEntry::Ip(ip) => write!(f, "IP:{ip}"),
            SanEntry::Other(o) => f.write_str(o),
        }
    }
}

/// The keyUsage bits that matter for TLS and for CAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyUsageBits {
    /// digitalSignature.
    pub digital_signature: bool,
    /// keyEncipherment.
    pub key_encipherment: bool,
    /// keyAgreement.
    pub key_agreement: bool,
    /// keyCertSign.
    pub key_cert_sign: bool,
    /// cRLSign.
    pub crl_sign: bool,
}

impl fmt::Display for KeyUsageBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.digital_signature, "digitalSignature"),
            (self.key_encipherment, "keyEncipherment"),
            (self.key_agreement, "keyAgreement"),
            (self.key_cert_sign, "keyCertSign"),
            (self.crl_sign, "cRLSign"),
        ]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
        if names.is_empty() {
            f.write_str("(none of the TLS bits)")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// The extendedKeyUsage extension.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Eku {
    /// id-kp-serverAuth (1.3.6.1.5.5.7.3.1).
    pub server_auth: bool,
    /// id-kp-clientAuth (1.3.6.1.5.5.7.3.2).
    pub client_auth: bool,
    /// anyExtendedKeyUsage (2.5.29.37.0).
    pub any: bool,
    /// Every purpose, as names or OIDs, for the evidence.
    pub purposes: Vec<String>,
}

/// Everything the rules need to know about one certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// The certificate itself.
    pub der: CertificateDer<'static>,
    /// Subject DN, RFC 4514 style.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Raw DER of the subject name, for exact issuer matching.
    pub subject_raw: Vec<u8>,
    /// Raw DER of the issuer name.
    pub issuer_raw: Vec<u8>,
    /// The subject's commonName values.
    pub common_names: Vec<String>,
    /// Serial number as upper-case hex (as Windows shows it).
    pub serial: String,
    /// Serial number bytes as encoded (for CRL look-ups).
    pub serial_raw: Vec<u8>,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
    /// subjectAltName entries; `None` when the extension is absent.
    pub sans: Option<Vec<SanEntry>>,
    /// Subject public key algorithm and size.
    pub key: KeyAlg,
    /// DER of the SubjectPublicKeyInfo (to compare with a private key, to verify signatures).
    pub spki_der: Vec<u8>,
    /// Signature algorithm of this certificate (made by its issuer).
    pub signature: SignatureAlg,
    /// basicConstraints cA flag (false when the extension is absent).
    pub is_ca: bool,
    /// keyUsage; `None` when the extension is absent.
    pub key_usage: Option<KeyUsageBits>,
    /// extendedKeyUsage; `None` when the extension is absent.
    pub eku: Option<Eku>,
    /// HTTP/LDAP URLs from the CRL distribution points.
    pub crl_urls: Vec<String>,
    /// caIssuers URLs from authorityInfoAccess: where the issuer can be downloaded.
    pub ca_issuers_urls: Vec<String>,
    /// subjectKeyIdentifier.
    pub subject_key_id: Option<Vec<u8>>,
    /// authorityKeyIdentifier keyIdentifier.
    pub authority_key_id: Option<Vec<u8>>,
    /// Thumbprints of the DER.
    pub thumbprint: Thumbprint,
}

/// Who a client certificate names, and nothing else: the three fields the agent site reads for
/// every TLS connection, spelled exactly as [`CertFacts`] spells them. A whole `CertFacts`
/// (names rendered, both thumbprints, every extension) cost a few per cent of a resumed
/// handshake's CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// SHA-256 thumbprint, upper-case hex ([`Thumbprint::sha256_hex`]).
    pub sha256: String,
    /// Serial number, upper-case hex ([`CertFacts::serial`]).
    pub serial: String,
    /// The subject's first commonName ([`CertFacts::common_names`]).
    pub common_name: Option<String>,
}

/// One DER certificate and nothing after it. The error is the parser's message.
fn parse_whole(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(trailing(rest.len()));
    }
    Ok(cert)
}

fn trailing(n: usize) -> String {
    format!("{n} trailing bytes after the certificate")
}

impl CertIdentity {
    /// Parse a DER certificate's identity. The error is the parser's message.
    ///
    /// Extensions are split but not decoded: none of the three fields is in one, and decoding
    /// them (SANs, key usages, key identifiers) was a third of the parse, paid on every TLS
    /// connection to the agent site. A certificate that reached here passed rustls's checks of
    /// them.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (rest, cert) = X509CertificateParser::new()
            .with_deep_parse_extensions(false)
            .parse(der)
            .map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(trailing(rest.len()));
        }
        Ok(Self {
            sha256: Thumbprint::sha256_hex_of(der),
            serial: hex_upper(cert.raw_serial()),
            common_name: cert
                .subject()
                .iter_common_name()
                .find_map(|cn| cn.as_str().ok().map(str::to_owned)),
        })
    }
}

impl CertFacts {
    /// Parse a DER certificate into facts. The error is the parser's message.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let cert = parse_whole(der)?;
        Ok(extract(&cert, der))
    }

    /// Whether subject and issuer are the same name (a root or a self-signed leaf).
    pub fn is_self_issued(&self) -> bool {
        self.subject_raw == self.issuer_raw
    }

    /// A short label for lists: the first CN, else the whole subject.
    pub fn label(&self) -> &str {
        self.common_names
            .first()
            .map(String::as_str)
            .unwrap_or(&self.subject)
    }

    /// The DNS names among the SANs (empty when there is no SAN extension).
    pub fn dns_names(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().flatten().filter_map(|s| match s {
            SanEntry::Dns(d) => Some(d.as_str()),
            _ => None,
        })
    }
}

fn extract(cert: &X509Certificate<'_>, der: &[u8]) -> CertFacts {
    let tbs = &cert.tbs_certificate;
    let common_names = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    let mut sans = None;
    let mut key_usage = None;
    let mut eku = None;
    let mut crl_urls = Vec::new();
    let mut ca_issuers_urls = Vec::new();
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    let mut is_ca = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                sans = Some(san.general_names.iter().map(san_entry).collect());
            }
            ParsedExtension::KeyUsage(ku) => {
                key_usage = Some(KeyUsageBits {
                    digital_signature: ku.digital_signature(),
                    key_encipherment: ku.key_encipherment(),
                    key_agreement: ku.key_agreement(),
                    key_cert_sign: ku.key_cert_sign(),
                    crl_sign: ku.crl_sign(),
                });
            }
            ParsedExtension::ExtendedKeyUsage(e) => {
                let mut purposes = Vec::new();
                for (on, name) in [
                    (e.server_auth, "serverAuth"),
                    (e.client_auth, "clientAuth"),
                    (e.code_signing, "codeSigning"),
                    (e.email_protection, "emailProtection"),
                    (e.time_stamping, "timeStamping"),
                    (e.ocsp_signing, "OCSPSigning"),
                    (e.any, "anyExtendedKeyUsage"),
                ] {
                    if on {
                        purposes.push(name.to_owned());
                    }
                }
                purposes.extend(e.other.iter().map(|o| o.to_id_string()));
                eku = Some(Eku {
                    server_auth: e.server_auth,
                    client_auth: e.client_auth,
                    any: e.any,
                    purposes,
                });
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            ParsedExtension::CRLDistributionPoints(cdp) => {
                for point in cdp.iter() {
                    if let Some(x509_parser::extensions::DistributionPointName::FullName(names)) =
                        &point.distribution_point
                    {
                        crl_urls.extend(names.iter().filter_map(|n| match n {
                            GeneralName::URI(u) => Some((*u).to_owned()),
                            _ => None,
                        }));
                    }
                }
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                for desc in &aia.accessdescs {
                    if desc.access_method
                        == x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS
                        && let GeneralName::URI(u) = desc.access_location
                    {
                        ca_issuers_urls.push(u.to_owned());
                    }
                }
            }
            ParsedExtension::SubjectKeyIdentifier(k) => subject_key_id = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                authority_key_id = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    CertFacts {
        der: CertificateDer::from(der.to_vec()),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        subject_raw: cert.subject().as_raw().to_vec(),
        issuer_raw: cert.issuer().as_raw().to_vec(),
        common_names,
        serial: hex_upper(cert.raw_serial()),
        serial_raw: cert.raw_serial().to_vec(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        sans,
        key: key_alg(cert),
        spki_der: tbs.subject_pki.raw.to_vec(),
        signature: signature_alg(&cert.signature_algorithm),
        is_ca,
        key_usage,
        eku,
        crl_urls,
        ca_issuers_urls,
        subject_key_id,
        authority_key_id,
        thumbprint: Thumbprint::of(der),
    }
}

fn san_entry(n: &GeneralName<'_>) -> SanEntry {
    match n {
        GeneralName::DNSName(d) => SanEntry::Dns((*d).to_owned()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => SanEntry::Ip(IpAddr::from([b[0], b[1], b[2], b[3]])),
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                SanEntry::Ip(IpAddr::from(a))
            }
            _ => SanEntry::Other(format!("IP:<{} bytes>", b.len())),
        },
        other => SanEntry::Other(other.to_string()),
    }
}

fn key_alg(cert: &X509Certificate<'_>) -> KeyAlg {
    let spki = cert.public_key();
    let oid = spki.algorithm.algorithm.to_id_string();
    match oid.as_str() {
        "1.3.101.112" => return KeyAlg::Ed25519,
        "1.3.101.113" => return KeyAlg::Ed448,
        _ => {}
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => KeyAlg::Rsa {
            bits: rsa.key_size(),
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let curve = match curve.as_str() {
                "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                "1.3.132.0.34" => "P-384".to_owned(),
                "1.3.132.0.35" => "P-521".to_owned(),
                _ => curve,
            };
            KeyAlg::Ec { curve }
        }
        Ok(PublicKey::DSA(y)) => KeyAlg::Dsa { bits: y.len() * 8 },
        _ => KeyAlg::Other(oid),
    }
}

fn signature_alg(alg: &x509_parser::x509::AlgorithmIdentifier<'_>) -> SignatureAlg {
    let oid = alg.algorithm.to_id_string();
    let (name, hash) = match oid.as_str() {
        "1.2.840.113549.1.1.2" => ("md2WithRSAEncryption", HashAlg::Md2),
        "1.2.840.113549.1.1.4" => ("md5WithRSAEncryption", HashAlg::Md5),
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => ("sha1WithRSAEncryption", HashAlg::Sha1),
        "1.2.840.113549.1.1.14" => ("sha224WithRSAEncryption", HashAlg::Sha224),
        "1.2.840.113549.1.1.11" => ("sha256WithRSAEncryption", HashAlg::Sha256),
        "1.2.840.113549.1.1.12" => ("sha384WithRSAEncryption", HashAlg::Sha384),
        "1.2.840.113549.1.1.13" => ("sha512WithRSAEncryption", HashAlg::Sha512),
        "1.2.840.10045.4.1" => ("ecdsa-with-SHA1", HashAlg::Sha1),
        "1.2.840.10045.4.3.1" => ("ecdsa-with-SHA224", HashAlg::Sha224),
        "1.2.840.10045.4.3.2" => ("ecdsa-with-SHA256", HashAlg::Sha256),
        "1.2.840.10045.4.3.3" => ("ecdsa-with-SHA384", HashAlg::Sha384),
        "1.2.840.10045.4.3.4" => ("ecdsa-with-SHA512", HashAlg::Sha512),
        "1.2.840.10040.4.3" => ("dsa-with-SHA1", HashAlg::Sha1),
        "1.3.101.112" => ("ED25519", HashAlg::Intrinsic),
        "1.3.101.113" => ("ED448", HashAlg::Intrinsic),
        "1.2.840.113549.1.1.10" => {
            // RSASSA-PSS carries its hash in the parameters; absent parameters mean SHA-1.
            let hash = match x509_parser::signature_algorithm::SignatureAlgorithm::try_from(alg) {
                Ok(x509_parser::signature_algorithm::SignatureAlgorithm::RSASSA_PSS(p)) => {
                    hash_by_oid(&p.hash_algorithm_oid().to_id_string())
                }
                _ => HashAlg::Sha1,
            };
            return SignatureAlg {
                name: format!("rsassaPss ({hash})"),
                hash,
            };
        }
        _ => {
            return SignatureAlg {
                name: oid.clone(),
                hash: HashAlg::Unknown(oid),
            };
        }
    };
    SignatureAlg {
        name: name.to_owned(),
        hash,
    }
}

fn hash_by_oid(oid: &str) -> HashAlg {
    match oid {
        "1.3.14.3.2.26" => HashAlg::Sha1,
        "2.16.840.1.101.3.4.2.4" => HashAlg::Sha224,
        "2.16.840.1.101.3.4.2.1" => HashAlg::Sha256,
        "2.16.840.1.101.3.4.2.2" => HashAlg::Sha384,
        "2.16.840.1.101.3.4.2.3" => HashAlg::Sha512,
        other => HashAlg::Unknown(other.to_owned()),
    }
}

fn hex_upper(b: &[u8]) -> String {
    crate::thumbprint::hex_upper(b, "")
}
