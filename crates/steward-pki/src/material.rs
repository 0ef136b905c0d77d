//! Reading certificate material in whatever form an administrator has it — PEM (any order,
//! several sections), DER, PKCS#12 old and new — and writing PKCS#12.

use p12_keystore::{EncryptionAlgorithm, KeyStore, KeyStoreEntry, PrivateKeyChain};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::{CertFacts, Error, MaterialError};

/// Which container the material came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaterialFormat {
    /// PEM text with one or more sections.
    Pem,
    /// A single DER certificate.
    Der,
    /// A PKCS#12 (.pfx/.p12) archive.
    Pkcs12,
}

impl std::fmt::Display for MaterialFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaterialFormat::Pem => "PEM",
            MaterialFormat::Der => "DER",
            MaterialFormat::Pkcs12 => "PKCS#12",
        })
    }
}

/// Certificates and private keys read from one input.
#[derive(Debug)]
pub struct Material {
    /// The container.
    pub format: MaterialFormat,
    /// Every certificate, in input order.
    pub certs: Vec<CertificateDer<'static>>,
    /// Every private key, in input order.
    pub keys: Vec<PrivateKeyDer<'static>>,
}

impl Material {
    /// Index of the end-entity certificate in `certs`.
    ///
    /// The certificate that belongs to the (first) private key when there is one; otherwise the
    /// first certificate that issued none of the others (the bottom of the chain), because PEM
    /// bundles come in either order.
    pub fn leaf_index(&self) -> Option<usize> {
        if self.certs.is_empty() {
            return None;
        }
        let facts: Vec<Option<CertFacts>> = self
            .certs
            .iter()
            .map(|c| CertFacts::from_der(c).ok())
            .collect();
        if let Some(key) = self.keys.first() {
            for (i, f) in facts.iter().enumerate() {
                if let Some(f) = f
                    && key_matches_cert(key, &f.spki_der) == Ok(true)
                {
                    return Some(i);
                }
            }
        }
        let issued_others = |i: usize| {
            let Some(Some(me)) = facts.get(i) else {
                return false;
            };
            facts.iter().enumerate().any(|(j, other)| {
                j != i
                    && other
                        .as_ref()
                        .is_some_and(|o| o.issuer_raw == me.subject_raw && !o.is_self_issued())
            })
        };
        Some(
            (0..self.certs.len())
                .find(|&i| !issued_others(i))
                .unwrap_or(0),
        )
    }
}

/// Read certificates and keys from `bytes`, sniffing the format from the content (not the file
/// name: `.cer` files are PEM as often as DER).
///
/// `password` is used for PKCS#12 only. With `None`, the empty password is tried (Windows
/// exports with no password that way) and [`MaterialError::PasswordRequired`] returned if it
/// fails.
pub fn read_material(bytes: &[u8], password: Option<&str>) -> Result<Material, MaterialError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(MaterialError::Empty);
    }
    if looks_like_pem(bytes) {
        return read_pem(bytes);
    }
    if let Ok((rest, _)) = x509_parser::certificate::X509Certificate::from_der(bytes)
        && rest.is_empty()
    {
        return Ok(Material {
            format: MaterialFormat::Der,
            certs: vec![CertificateDer::from(bytes.to_vec())],
            keys: Vec::new(),
        });
    }
    read_pkcs12(bytes, password)
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn read_pem(bytes: &[u8]) -> Result<Material, MaterialError> {
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = item.map_err(|e| MaterialError::PemMalformed(pem_error(&e)))?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                if let Some(k) = PrivateKeyDer::from_pem(kind, der) {
                    keys.push(k);
                }
            }
            _ => {}
        }
    }
    if certs.is_empty() {
        if bytes
            .windows(31)
            .any(|w| w == b"BEGIN ENCRYPTED PRIVATE KEY----")
        {
            return Err(MaterialError::EncryptedPemKey);
        }
        return Err(MaterialError::PemWithoutCertificate {
            found: pem_labels(bytes),
        });
    }
    for (index, c) in certs.iter().enumerate() {
        CertFacts::from_der(c).map_err(|reason| MaterialError::BadCertificate { index, reason })?;
    }
    Ok(Material {
        format: MaterialFormat::Pem,
        certs,
        keys,
    })
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => {
            format!(
                "missing end marker {:?} (truncated file?)",
                String::from_utf8_lossy(end_marker)
            )
        }
        E::IllegalSectionStart { line } => {
            format!(
                "bad BEGIN line {:?}",
                String::from_utf8_lossy(line)
                    .chars()
                    .take(60)
                    .collect::<String>()
            )
        }
        E::Base64Decode(m) => format!("bad base64 ({m})"),
        other => format!("{other:?}"),
    }
}

fn pem_labels(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .collect();
    if labels.is_empty() {
        "no complete BEGIN line".to_owned()
    } else {
        labels.join(", ")
    }
}

fn read_pkcs12(bytes: &[u8], password: Option<&str>) -> Result<Material, MaterialError> {
    use p12_keystore::error::Error as P;
    let archive = match p12_keystore::Pkcs12Archive::from_pkcs12(bytes, password.unwrap_or("")) {
        Ok(a) => a,
        // A MAC that does not verify, or (for MAC-less files) a decryption that yields garbage,
        // means the password is wrong: the structure itself parsed. PBES1 (3DES, RC2) reports
        // bad padding as `UnpadError`, PBES2 (AES) as the pkcs5 crate's "decryption failed".
        Err(e)
            if matches!(&e, P::MacError(_) | P::UnpadError)
                || matches!(&e, P::Pkcs5Error(m) if m.contains("decryption failed")) =>
        {
            return Err(if password.is_none() {
                MaterialError::PasswordRequired
            } else {
                MaterialError::WrongPassword
            });
        }
        Err(P::DerError(e)) => {
            return Err(MaterialError::Unrecognised(format!("not DER either: {e}")));
        }
        Err(P::InvalidVersion) => {
            return Err(MaterialError::Unrecognised(
                "ASN.1 but not PKCS#12 version 3".to_owned(),
            ));
        }
        Err(e) => return Err(MaterialError::Pkcs12Unsupported(e.to_string())),
    };
    let certs: Vec<CertificateDer<'static>> = archive
        .certs
        .iter()
        .map(|c| CertificateDer::from(c.cert.as_der().to_vec()))
        .collect();
    let keys = archive
        .keys
        .iter()
        .map(|k| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.key.as_der().to_vec())))
        .collect();
    Ok(Material {
        format: MaterialFormat::Pkcs12,
        certs,
        keys,
    })
}

/// Whether `key` is the private half of the public key in `spki_der`.
///
/// Compares the public key the crypto provider derives from the private key with the
/// certificate's key bits. `Err` when the provider cannot load the key at all (an unsupported
/// algorithm, a corrupt key, an RSA key below 2048 bits), with its reason.
pub fn key_matches_cert(key: &PrivateKeyDer<'_>, spki_der: &[u8]) -> Result<bool, String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("the private key cannot be loaded: {e}"))?;
    let derived = signer
        .public_key()
        .ok_or_else(|| "the crypto provider cannot derive the public key".to_owned())?;
    // Compare the key bits, not the whole SPKI: encoders differ in optional parameter encoding.
    let bits = |der: &[u8]| -> Option<Vec<u8>> {
        SubjectPublicKeyInfo::from_der(der)
            .ok()
            .map(|(_, s)| s.subject_public_key.data.to_vec())
    };
    match (bits(&derived), bits(spki_der)) {
        (Some(a), Some(b)) => Ok(a == b),
        _ => Err("a public key does not parse".to_owned()),
    }
}

/// Cipher for the key and certificate bags of a written PKCS#12 file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pkcs12Encryption {
    /// PBES2 with AES-256-CBC and HMAC-SHA-256: the modern default.
    #[default]
    Aes256,
    /// PBE-SHA1-3DES with a SHA-1 MAC, for Windows Server 2016 and older, which cannot read
    /// AES-encrypted PFX files.
    TripleDes,
}

/// Write a PKCS#12 archive holding `key` with its certificate `chain` (leaf first).
pub fn write_pkcs12(
    key_pkcs8: &[u8],
    chain: &[CertificateDer<'_>],
    password: &str,
    friendly_name: &str,
    encryption: Pkcs12Encryption,
) -> Result<Vec<u8>, Error> {
    let err = |e: p12_keystore::error::Error| Error::Pkcs12Write(e.to_string());
    let key = p12_keystore::PrivateKey::from_der(key_pkcs8).map_err(err)?;
    let certs = chain
        .iter()
        .map(|c| p12_keystore::Certificate::from_der(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let leaf = chain
        .first()
        .ok_or_else(|| Error::Pkcs12Write("empty chain".to_owned()))?;
    // The local key ID ties the key bag to the leaf's bag; Windows uses the SHA-1 thumbprint.
    let local_key_id = crate::Thumbprint::of(leaf).sha1.to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
    );
    let writer = store.writer(password);
    let writer = match encryption {
        Pkcs12Encryption::Aes256 => writer,
        Pkcs12Encryption::TripleDes => writer
            .encryption_algorithm(EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
            .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha1),
    };
    writer.write().map_err(err)
}
