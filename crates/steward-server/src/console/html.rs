//! Escaping and formatting for the console's pages.
//!
//! [`Esc`] is the one way a value reaches a page: it escapes the five characters that matter
//! in HTML text and in quoted attribute values (`& < > " '`), so the same function is safe in
//! both places (every attribute the console writes is double-quoted). [`Enc`] percent-encodes a
//! value for a URL path segment or query value.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A value escaped for HTML text or a double-quoted attribute, when displayed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Esc<'a>(pub(crate) &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let mut last = 0;
        for (i, c) in s.char_indices() {
            let rep = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&s[last..i])?;
            f.write_str(rep)?;
            last = i + 1;
        }
        f.write_str(&s[last..])
    }
}

/// `s` escaped for HTML.
#[cfg(test)]
pub(crate) fn escape(s: &str) -> String {
    Esc(s).to_string()
}

/// A value percent-encoded for a URL path segment or query value: everything but the
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) becomes `%XX` (UTF-8 bytes). The result is
/// plain ASCII with nothing HTML would interpret.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Enc<'a>(pub(crate) &'a str);

impl fmt::Display for Enc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                f.write_str(char::from(b).encode_utf8(&mut [0; 4]))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// Bytes for people: `512 B`, `3.5 KiB`, `15.6 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// How long ago an RFC 3339 time was, from `now` (Unix seconds): `12 s ago`, `3 min ago`;
/// `None` when it does not parse.
pub(crate) fn ago(rfc3339: &str, now: i64) -> Option<String> {
    let t = OffsetDateTime::parse(rfc3339, &Rfc3339)
        .ok()?
        .unix_timestamp();
    let d = now.saturating_sub(t);
    Some(match d {
        ..=0 => "just now".to_owned(),
        1..60 => format!("{d} s ago"),
        60..3600 => format!("{} min ago", d / 60),
        3600..86400 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86400),
    })
}

/// A command line for display: the program and its arguments separated by spaces, an argument
/// that is empty or holds blanks or quotes shown in single quotes (display only: tasks run
/// without a shell, each argument exactly as given).
pub(crate) fn command_line(command: &str, args: &[String]) -> String {
    let mut out = command.to_owned();
    for a in args {
        out.push(' ');
        if a.is_empty()
            || a.chars()
                .any(|c| c.is_whitespace() || matches!(c, '\'' | '"'))
        {
            out.push('\'');
            out.push_str(&a.replace('\'', "'\\''"));
            out.push('\'');
        } else {
            out.push_str(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x&y")</script>"#),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("it's"), "it&#39;s");
        assert_eq!(escape("\" onmouseover=\"x"), "&quot; onmouseover=&quot;x");
        assert_eq!(escape("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(escape(""), "");
        assert_eq!(
            escape("&amp;"),
            "&amp;amp;",
            "escaping is not idempotent by design"
        );
        assert_eq!(escape("a<b>c"), "a&lt;b&gt;c");
        assert_eq!(format!("<td>{}</td>", Esc("<b>")), "<td>&lt;b&gt;</td>");
    }

    #[test]
    fn percent_encodes_everything_but_unreserved() {
        assert_eq!(
            Enc("0f2c-aa_b.~Z").to_string(),
            "0f2c-aa_b.~Z",
            "device IDs pass unchanged"
        );
        assert_eq!(Enc("/tasks?x=1&y").to_string(), "%2Ftasks%3Fx%3D1%26y");
        assert_eq!(Enc("a b\"<é").to_string(), "a%20b%22%3C%C3%A9");
    }

    #[test]
    fn formats_sizes_times_and_commands() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(4 << 30), "4.0 GiB");
        let now = 1_800_000_000;
        let at = |d: i64| {
            steward_pki::rfc3339(
                OffsetDateTime::from_unix_timestamp(now - d).unwrap_or(OffsetDateTime::UNIX_EPOCH),
            )
        };
        assert_eq!(ago(&at(12), now).as_deref(), Some("12 s ago"));
        assert_eq!(ago(&at(125), now).as_deref(), Some("2 min ago"));
        assert_eq!(ago(&at(7200), now).as_deref(), Some("2 h ago"));
        assert_eq!(ago(&at(-5), now).as_deref(), Some("just now"));
        assert_eq!(ago("yesterday", now), None);
        assert_eq!(
            command_line("echo", &["hello-console".into()]),
            "echo hello-console"
        );
        assert_eq!(
            command_line("sh", &["-c".into(), "echo 'hi'".into(), String::new()]),
            r#"sh -c 'echo '\''hi'\''' ''"#
        );
    }
}
