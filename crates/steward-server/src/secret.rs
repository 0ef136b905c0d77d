//! Random secrets, their hashes, identifiers, and the encodings they travel in.

use aws_lc_rs::digest;

use crate::ServerError;

/// `n` random bytes from the system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], ServerError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| ServerError::Internal("the system has no randomness".to_owned()))?;
    Ok(b)
}

/// A bearer or enrollment token: 32 random bytes, base64url without padding (43 characters,
/// safe in URLs, headers and file names).
pub(crate) fn new_token() -> Result<String, ServerError> {
    Ok(base64(&random_bytes::<32>()?, URL_SAFE, false))
}

/// Hex SHA-256 of a token: what is stored instead of the token.
pub(crate) fn token_hash(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// A random version-4 UUID.
pub(crate) fn new_uuid() -> Result<String, ServerError> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b).to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A password of `len` characters from letters and digits, drawn without modulo bias.
pub(crate) fn new_password(len: usize) -> Result<String, ServerError> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    // The largest multiple of the alphabet size that fits in a byte: bytes above it are
    // redrawn so every character is equally likely.
    let limit = 256 - (256 % ALPHABET.len());
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<64>()? {
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

/// Upper-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(H[usize::from(b >> 4)]));
        s.push(char::from(H[usize::from(b & 15)]));
    }
    s
}

/// Decodes hex (either case); `None` if malformed.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for j in 0..4 {
            if j <= chunk.len() {
                out.push(char::from(alphabet[((n >> (18 - 6 * j)) & 63) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// PEM armour around DER.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der, STANDARD, true);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // The base64 alphabet is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(base64(b"foobar", STANDARD, true), "Zm9vYmFy");
        assert_eq!(base64(b"fo", STANDARD, true), "Zm8=");
        assert_eq!(base64(&[0xfb, 0xff], URL_SAFE, false), "-_8");
        assert_eq!(hex(&[0, 0xab]), "00AB");
        assert_eq!(unhex("00ab"), Some(vec![0, 0xab]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        let t = new_token().unwrap_or_default();
        assert_eq!(t.len(), 43);
        let u = new_uuid().unwrap_or_default();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let p = new_password(24).unwrap_or_default();
        assert_eq!(p.len(), 24);
        assert!(p.chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(pem("CERTIFICATE", b"abc").starts_with("-----BEGIN CERTIFICATE-----\nYWJj\n"));
    }
}
