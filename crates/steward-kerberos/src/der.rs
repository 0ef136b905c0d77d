//! Just enough DER for the two Kerberos messages the doctor reads and the one it writes: the
//! ticket inside a krb5 GSS token (its key version), the KDC's KRB-ERROR (its clock), and the
//! AS-REQ that provokes it. Every read is bounds-checked: the bytes come from the network.

/// One tag-length-value, borrowed from its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    /// The identifier octet (single-octet tags only: Kerberos uses no others).
    pub(crate) tag: u8,
    /// The contents.
    pub(crate) value: &'a [u8],
}

/// Reads one TLV from the front of `input`; returns it and the rest. `None` when the input is
/// truncated, uses a multi-octet tag, an indefinite length, or a length over 16 MiB.
pub(crate) fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((Tlv { tag, value }, rest))
}

/// The children of a constructed value, in order (`None` if any is malformed).
pub(crate) fn children(mut input: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (t, rest) = read(input)?;
        out.push(t);
        input = rest;
    }
    Some(out)
}

/// The value of context tag `[n]` among `items` (explicitly tagged: its one child).
pub(crate) fn field<'a>(items: &[Tlv<'a>], n: u8) -> Option<Tlv<'a>> {
    let t = items.iter().find(|t| t.tag == 0xa0 | n)?;
    read(t.value).map(|(inner, _)| inner)
}

/// A DER INTEGER as i64 (Kerberos integers fit in 32 bits).
pub(crate) fn integer(t: Tlv<'_>) -> Option<i64> {
    if t.tag != 0x02 || t.value.is_empty() || t.value.len() > 8 {
        return None;
    }
    let neg = t.value[0] & 0x80 != 0;
    let start: i64 = if neg { -1 } else { 0 };
    Some(
        t.value
            .iter()
            .fold(start, |acc, b| (acc << 8) | i64::from(*b)),
    )
}

/// Encodes one TLV.
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(value);
    out
}

/// A SEQUENCE of already-encoded items.
pub(crate) fn seq(items: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &items.concat())
}

/// Explicit context tag `[n]` around an encoded value.
pub(crate) fn ctx(n: u8, inner: Vec<u8>) -> Vec<u8> {
    tlv(0xa0 | n, &inner)
}

/// A non-negative INTEGER.
pub(crate) fn int(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(3);
    let mut out = Vec::with_capacity(5);
    // A leading 1 bit would read as negative: DER puts a zero octet in front.
    if bytes[start] & 0x80 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&bytes[start..]);
    tlv(0x02, &out)
}

/// A KerberosString / Realm (GeneralString).
pub(crate) fn general_string(s: &str) -> Vec<u8> {
    tlv(0x1b, s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip() {
        for v in [0u32, 5, 127, 128, 255, 256, 0x7fff_ffff, 0xffff_ffff] {
            let enc = int(v);
            let (t, rest) = read(&enc).unwrap_or_else(|| panic!("{v}"));
            assert!(rest.is_empty());
            assert_eq!(integer(t), Some(i64::from(v)), "{v}: {enc:02x?}");
        }
        let long = tlv(0x04, &[7u8; 300]);
        let (t, _) = read(&long).unwrap_or_else(|| panic!("long"));
        assert_eq!(t.value.len(), 300);
        assert_eq!(read(&long[..100]), None, "a truncated value is refused");
        assert_eq!(read(&[0x30, 0x80]), None, "indefinite lengths are refused");
    }
}
