use std::fmt;

use aws_lc_rs::digest;

/// SHA-1 and SHA-256 thumbprints of a certificate's DER encoding.
///
/// Windows (and ITMS) show the SHA-1 thumbprint as upper-case hex without separators; openssl
/// shows colon-separated pairs. Both forms are offered so an administrator can compare with
/// whichever tool is in front of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Thumbprint {
    /// SHA-1 digest of the DER certificate.
    pub sha1: [u8; 20],
    /// SHA-256 digest of the DER certificate.
    pub sha256: [u8; 32],
}

impl Thumbprint {
    /// Thumbprints of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        let mut sha1 = [0u8; 20];
        sha1.copy_from_slice(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref());
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
        Self { sha1, sha256 }
    }

    /// The SHA-256 thumbprint alone, as [`Thumbprint::sha256_hex`] spells it.
    pub fn sha256_hex_of(der: &[u8]) -> String {
        hex_upper(digest::digest(&digest::SHA256, der).as_ref(), "")
    }

    /// The SHA-256 digest that 64 hex digits (any case, nothing else) spell, as
    /// [`Thumbprint::sha256_hex`] writes it; `None` for anything else.
    pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return None;
        }
        let nibble = |c: u8| {
            char::from(c)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
        };
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(out)
    }

    /// SHA-1 as Windows shows it: `A1B2C3...` (40 hex digits).
    pub fn sha1_hex(&self) -> String {
        hex_upper(&self.sha1, "")
    }

    /// SHA-256 as upper-case hex without separators (64 hex digits).
    pub fn sha256_hex(&self) -> String {
        hex_upper(&self.sha256, "")
    }

    /// SHA-1 as openssl shows it: `A1:B2:C3:...`.
    pub fn sha1_colons(&self) -> String {
        hex_upper(&self.sha1, ":")
    }

    /// SHA-256 as openssl shows it: `A1:B2:C3:...`.
    pub fn sha256_colons(&self) -> String {
        hex_upper(&self.sha256, ":")
    }

    /// Whether `text` names this certificate: either digest, any case, with or without colons
    /// or spaces (as copied from the Windows certificate dialog, which inserts spaces).
    pub fn matches(&self, text: &str) -> bool {
        let norm: String = text
            .chars()
            .filter(|c| !matches!(c, ':' | ' ' | '\u{200e}'))
            .collect::<String>()
            .to_ascii_uppercase();
        norm == self.sha1_hex() || norm == self.sha256_hex()
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.sha256_hex())
    }
}

/// Upper-case hex of `bytes`, pairs separated by `sep`. Without a `format!` per byte: the
/// agent site renders a thumbprint and a serial for every TLS connection.
pub(crate) fn hex_upper(bytes: &[u8], sep: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * (2 + sep.len()));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha256_thumbprint_parses_back_from_its_hex_and_nothing_else_does() {
        let t = Thumbprint::of(b"abc");
        assert_eq!(
            Thumbprint::parse_sha256_hex(&t.sha256_hex()),
            Some(t.sha256)
        );
        let lower = t.sha256_hex().to_ascii_lowercase();
        assert_eq!(Thumbprint::parse_sha256_hex(&lower), Some(t.sha256));
        for bad in [
            "",
            &t.sha1_hex(),
            &t.sha256_colons(),
            &format!("{}0", t.sha256_hex()),
            &format!(" {}", &t.sha256_hex()[1..]),
            &format!("G{}", &t.sha256_hex()[1..]),
            // Non-ASCII of the right byte length.
            &format!("é{}", &t.sha256_hex()[2..]),
        ] {
            assert_eq!(Thumbprint::parse_sha256_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn known_digests() {
        // Digests of the ASCII string "abc" (FIPS 180 test vectors).
        let t = Thumbprint::of(b"abc");
        assert_eq!(t.sha1_hex(), "A9993E364706816ABA3E25717850C26C9CD0D89D");
        assert_eq!(
            t.sha256_hex(),
            "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
        );
        assert!(t.sha1_colons().starts_with("A9:99:3E:"));
        assert_eq!(t.sha256_colons().len(), 32 * 3 - 1);
        assert_eq!(Thumbprint::sha256_hex_of(b"abc"), t.sha256_hex());
        assert_eq!(hex_upper(&[0x00, 0x0f, 0xa0, 0xff], ":"), "00:0F:A0:FF");
        assert_eq!(hex_upper(&[], ""), "");
    }

    #[test]
    fn matches_any_common_form() {
        let t = Thumbprint::of(b"abc");
        assert!(t.matches("a9993e364706816aba3e25717850c26c9cd0d89d"));
        assert!(t.matches("a9 99 3e 36 47 06 81 6a ba 3e 25 71 78 50 c2 6c 9c d0 d8 9d"));
        assert!(t.matches(&t.sha256_colons()));
        assert!(!t.matches("A9993E"));
    }
}
