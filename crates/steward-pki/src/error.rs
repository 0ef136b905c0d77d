use std::fmt;

/// Failures of the PKI core when creating or signing material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Key generation failed in the crypto provider (should not happen with a working aws-lc).
    #[error("could not generate a {spec} key: {reason}")]
    KeyGeneration {
        /// The key that was asked for.
        spec: String,
        /// What the provider said.
        reason: String,
    },
    /// The certificate or CRL could not be built or signed (bad name, bad dates, bad key).
    #[error("could not sign {what}: {reason}")]
    Signing {
        /// What was being signed ("certificate for smp.example.net", "CRL").
        what: String,
        /// What rcgen said.
        reason: String,
    },
    /// A stored CA certificate or key could not be loaded back.
    #[error("the CA material is unusable: {0}")]
    CaMaterial(String),
    /// A certificate signing request is malformed or its signature does not verify (the
    /// requester does not hold the key it names).
    #[error("the certificate request is unusable: {0}")]
    Csr(String),
    /// Writing a PKCS#12 file failed.
    #[error("could not write PKCS#12: {0}")]
    Pkcs12Write(String),
}

/// Why a file (or byte string) yielded no usable certificate material.
///
/// Each variant maps to one diagnosis ID in `steward doctor cert`; the mapping lives in
/// `steward-doctor`, the wording of the evidence lives here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaterialError {
    /// The input is empty.
    #[error("the file is empty")]
    Empty,
    /// PEM armour was found but no CERTIFICATE section in it.
    #[error("PEM with no CERTIFICATE section (found: {found})")]
    PemWithoutCertificate {
        /// The PEM labels that were found instead, comma separated.
        found: String,
    },
    /// A PEM section could not be decoded (bad base64, truncated armour).
    #[error("malformed PEM: {0}")]
    PemMalformed(String),
    /// The bytes are neither PEM, nor a DER certificate, nor a PKCS#12 archive.
    #[error("not a certificate, PEM bundle or PKCS#12 file ({0})")]
    Unrecognised(String),
    /// A certificate inside the input does not parse as X.509.
    #[error("certificate #{index} does not parse as X.509: {reason}")]
    BadCertificate {
        /// 0-based position in the input.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// The PKCS#12 MAC does not verify with the password given: the password is wrong.
    #[error("the PKCS#12 password is wrong (the integrity check or the decryption failed with it)")]
    WrongPassword,
    /// The PKCS#12 file needs a password and none was given (the empty password failed).
    #[error("the PKCS#12 file is password-protected and no password was given")]
    PasswordRequired,
    /// PKCS#12 structure uses something this reader does not support.
    #[error("unsupported PKCS#12 content: {0}")]
    Pkcs12Unsupported(String),
    /// An encrypted PEM private key: Steward does not decrypt those.
    #[error("the PEM private key is encrypted; export it unencrypted or as PKCS#12")]
    EncryptedPemKey,
}

pub(crate) fn signing(what: impl fmt::Display, e: impl fmt::Display) -> Error {
    Error::Signing {
        what: what.to_string(),
        reason: e.to_string(),
    }
}
