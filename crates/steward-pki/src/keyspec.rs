use std::fmt;

use rcgen::{KeyPair, RsaKeySize, SignatureAlgorithm};

use crate::Error;

/// Size of a generated RSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaBits {
    /// 2048 bits: the minimum anything accepts.
    B2048,
    /// 3072 bits.
    B3072,
    /// 4096 bits.
    B4096,
}

/// Hash used for RSA signatures made with a generated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaHash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// The kind of key pair to generate, and with it the signature algorithm that key signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeySpec {
    /// ECDSA on P-256 with SHA-256: Steward's default (small, fast, accepted everywhere that
    /// matters to Steward's own agents).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA, for peers that accept nothing else (ITMS accepts only RSA).
    Rsa {
        /// Modulus size.
        bits: RsaBits,
        /// Signature hash.
        hash: RsaHash,
    },
}

impl KeySpec {
    /// RSA 2048 with SHA-256, the common denominator for third-party peers.
    pub const RSA_2048: KeySpec = KeySpec::Rsa {
        bits: RsaBits::B2048,
        hash: RsaHash::Sha256,
    };

    /// The signature algorithm a key of this kind signs with.
    pub(crate) fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeySpec::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeySpec::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeySpec::Ed25519 => &rcgen::PKCS_ED25519,
            KeySpec::Rsa {
                hash: RsaHash::Sha256,
                ..
            } => &rcgen::PKCS_RSA_SHA256,
            KeySpec::Rsa {
                hash: RsaHash::Sha384,
                ..
            } => &rcgen::PKCS_RSA_SHA384,
            KeySpec::Rsa {
                hash: RsaHash::Sha512,
                ..
            } => &rcgen::PKCS_RSA_SHA512,
        }
    }

    /// Generate a fresh key pair of this kind.
    pub fn generate(self) -> Result<KeyPair, Error> {
        let alg = self.algorithm();
        let res = match self {
            KeySpec::Rsa { bits, .. } => KeyPair::generate_rsa_for(
                alg,
                match bits {
                    RsaBits::B2048 => RsaKeySize::_2048,
                    RsaBits::B3072 => RsaKeySize::_3072,
                    RsaBits::B4096 => RsaKeySize::_4096,
                },
            ),
            _ => KeyPair::generate_for(alg),
        };
        res.map_err(|e| Error::KeyGeneration {
            spec: self.to_string(),
            reason: e.to_string(),
        })
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::EcdsaP256 => f.write_str("ecdsa-p256"),
            KeySpec::EcdsaP384 => f.write_str("ecdsa-p384"),
            KeySpec::Ed25519 => f.write_str("ed25519"),
            KeySpec::Rsa { bits, hash } => {
                let b = match bits {
                    RsaBits::B2048 => 2048,
                    RsaBits::B3072 => 3072,
                    RsaBits::B4096 => 4096,
                };
                let h = match hash {
                    RsaHash::Sha256 => 256,
                    RsaHash::Sha384 => 384,
                    RsaHash::Sha512 => 512,
                };
                write!(f, "rsa{b}-sha{h}")
            }
        }
    }
}

impl std::str::FromStr for KeySpec {
    type Err = String;

    /// Parses `ecdsa-p256`, `ecdsa-p384`, `ed25519`, `rsa2048` (SHA-256), `rsa3072-sha384`, ...
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.to_ascii_lowercase();
        match s.as_str() {
            "ecdsa-p256" | "p256" | "ecdsa" => return Ok(KeySpec::EcdsaP256),
            "ecdsa-p384" | "p384" => return Ok(KeySpec::EcdsaP384),
            "ed25519" => return Ok(KeySpec::Ed25519),
            _ => {}
        }
        let bad = || {
            format!(
                "unknown key type {s:?}: expected ecdsa-p256, ecdsa-p384, ed25519, \
                 rsa2048|rsa3072|rsa4096 with optional -sha256|-sha384|-sha512"
            )
        };
        let rest = s.strip_prefix("rsa").ok_or_else(bad)?;
        let (bits, hash) = rest.split_once('-').unwrap_or((rest, "sha256"));
        let bits = match bits {
            "2048" => RsaBits::B2048,
            "3072" => RsaBits::B3072,
            "4096" => RsaBits::B4096,
            _ => return Err(bad()),
        };
        let hash = match hash {
            "sha256" => RsaHash::Sha256,
            "sha384" => RsaHash::Sha384,
            "sha512" => RsaHash::Sha512,
            _ => return Err(bad()),
        };
        Ok(KeySpec::Rsa { bits, hash })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for s in [
            "ecdsa-p256",
            "ecdsa-p384",
            "ed25519",
            "rsa2048-sha256",
            "rsa4096-sha512",
        ] {
            let spec: KeySpec = s.parse().expect(s);
            assert_eq!(spec.to_string(), s);
        }
        assert_eq!(
            "RSA3072".parse::<KeySpec>(),
            Ok(KeySpec::Rsa {
                bits: RsaBits::B3072,
                hash: RsaHash::Sha256
            })
        );
        assert!("rsa1024".parse::<KeySpec>().is_err());
        assert!("dsa".parse::<KeySpec>().is_err());
    }
}
