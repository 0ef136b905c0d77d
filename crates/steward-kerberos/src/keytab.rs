//! Reads MIT keytab files (format 0x0502, what `kadmin ktadd`, `ktutil` and `msktutil` write;
//! 0x0501 is read too). Only what the doctor judges is kept: principal, key version and
//! encryption type of each entry; key material is skipped, never copied.

use std::path::Path;

/// Largest keytab read: real ones are a few KiB; this bounds a wrong path to a huge file.
pub const MAX_KEYTAB_BYTES: u64 = 4 * 1024 * 1024;

/// One key of a keytab.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeytabEntry {
    /// `primary/instance@REALM`, e.g. `HTTP/smp.example.net@EXAMPLE.NET`.
    pub principal: String,
    /// Key version number (the 32-bit field when present, else the 8-bit one).
    pub kvno: u32,
    /// Encryption type number (17/18 AES, 19/20 AES-SHA2, 23 RC4).
    pub enctype: u16,
}

impl KeytabEntry {
    /// The principal without its realm.
    pub fn name(&self) -> &str {
        self.principal
            .rsplit_once('@')
            .map_or(self.principal.as_str(), |(n, _)| n)
    }
}

/// Why a keytab could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeytabError {
    /// The file does not exist.
    #[error("no keytab at {path}")]
    Missing {
        /// The path tried.
        path: String,
    },
    /// The file exists but cannot be read (permissions, a directory, I/O).
    #[error("cannot read the keytab {path}: {reason}")]
    Unreadable {
        /// The path tried.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The bytes are not a keytab.
    #[error("{path} is not a keytab: {reason}")]
    Malformed {
        /// The path read.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// Reads the keytab at `path`.
pub fn read_keytab(path: &Path) -> Result<Vec<KeytabEntry>, KeytabError> {
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| KeytabError::Unreadable {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeytabError::Missing { path: shown });
        }
        Err(e) => return Err(unreadable(e)),
    };
    if meta.len() > MAX_KEYTAB_BYTES {
        return Err(KeytabError::Malformed {
            path: shown,
            reason: format!("{} bytes, larger than any keytab", meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    parse_keytab(&bytes).map_err(|reason| KeytabError::Malformed {
        path: shown,
        reason,
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let (a, b) = self
            .buf
            .split_at_checked(n)
            .ok_or_else(|| "truncated entry".to_owned())?;
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self, be: bool) -> Result<u16, String> {
        let b: [u8; 2] = self.take(2)?.try_into().map_err(|_| "short read")?;
        Ok(if be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }
    fn u32(&mut self, be: bool) -> Result<u32, String> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| "short read")?;
        Ok(if be {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
    fn string(&mut self, be: bool) -> Result<String, String> {
        let n = usize::from(self.u16(be)?);
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

/// Parses keytab bytes (see the module comment for the format).
pub fn parse_keytab(bytes: &[u8]) -> Result<Vec<KeytabEntry>, String> {
    let (version, mut rest) = match bytes {
        [5, v @ (1 | 2), rest @ ..] => (*v, rest),
        _ => return Err("the file does not start with a keytab header (0x0501/0x0502)".into()),
    };
    // 0x0501 files are in host order; every writer in use ran on little-endian machines.
    let be = version == 2;
    let mut entries = Vec::new();
    while rest.len() >= 4 {
        let mut c = Cursor { buf: rest };
        let size = c.u32(be)? as i32;
        rest = c.buf;
        let len = size.unsigned_abs() as usize;
        let (record, after) = rest
            .split_at_checked(len)
            .ok_or_else(|| format!("an entry claims {len} bytes, past the end of the file"))?;
        rest = after;
        if size <= 0 {
            // A hole left by a deleted entry.
            continue;
        }
        let mut e = Cursor { buf: record };
        let mut count = e.u16(be)?;
        if version == 1 {
            // 0x0501 counted the realm as a component.
            count = count.saturating_sub(1);
        }
        let realm = e.string(be)?;
        let mut parts = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            parts.push(e.string(be)?);
        }
        if version == 2 {
            let _name_type = e.u32(be)?;
        }
        let _timestamp = e.u32(be)?;
        let vno8 = e.u8()?;
        let enctype = e.u16(be)?;
        let keylen = usize::from(e.u16(be)?);
        e.take(keylen)?;
        // The 32-bit kvno, when present and non-zero, supersedes the 8-bit one (which wraps).
        let kvno = match e.u32(be) {
            Ok(v) if v != 0 => v,
            _ => u32::from(vno8),
        };
        entries.push(KeytabEntry {
            principal: format!("{}@{realm}", parts.join("/")),
            kvno,
            enctype,
        });
    }
    Ok(entries)
}

/// The name of an encryption type number, for evidence lines.
pub fn enctype_name(n: i64) -> String {
    match n {
        17 => "aes128-cts-hmac-sha1-96".into(),
        18 => "aes256-cts-hmac-sha1-96".into(),
        19 => "aes128-cts-hmac-sha256-128".into(),
        20 => "aes256-cts-hmac-sha384-192".into(),
        23 => "rc4-hmac".into(),
        25 => "camellia128-cts-cmac".into(),
        26 => "camellia256-cts-cmac".into(),
        other => format!("enctype {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(principal: &[&str], realm: &str, kvno8: u8, kvno32: Option<u32>) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend((principal.len() as u16).to_be_bytes());
        e.extend((realm.len() as u16).to_be_bytes());
        e.extend(realm.as_bytes());
        for p in principal {
            e.extend((p.len() as u16).to_be_bytes());
            e.extend(p.as_bytes());
        }
        e.extend(1u32.to_be_bytes());
        e.extend(0u32.to_be_bytes());
        e.push(kvno8);
        e.extend(18u16.to_be_bytes());
        e.extend(32u16.to_be_bytes());
        e.extend([0u8; 32]);
        if let Some(v) = kvno32 {
            e.extend(v.to_be_bytes());
        }
        let mut out = (e.len() as i32).to_be_bytes().to_vec();
        out.extend(e);
        out
    }

    #[test]
    fn entries_holes_and_wide_kvnos() {
        let mut kt = vec![5, 2];
        kt.extend(entry(&["HTTP", "smp.example.net"], "EXAMPLE.NET", 3, None));
        kt.extend((-12i32).to_be_bytes());
        kt.extend([0u8; 12]);
        kt.extend(entry(
            &["host", "pc1.example.net"],
            "EXAMPLE.NET",
            4,
            Some(260),
        ));
        let got = parse_keytab(&kt).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].principal, "HTTP/smp.example.net@EXAMPLE.NET");
        assert_eq!(got[0].name(), "HTTP/smp.example.net");
        assert_eq!(got[0].kvno, 3);
        assert_eq!(got[0].enctype, 18);
        assert_eq!(got[1].kvno, 260, "the 32-bit kvno wins over the 8-bit one");
        assert!(parse_keytab(b"not a keytab").is_err());
        assert!(parse_keytab(&kt[..kt.len() - 5]).is_err(), "truncated");
    }
}
