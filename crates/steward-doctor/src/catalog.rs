//! The ID catalogue check: which stable IDs a piece of source names, and which of those
//! `docs/diagnostics.md` lacks. Each crate's test reads its own sources and the docs (this
//! module does no I/O) and asks here, so the rule for what counts as an ID lives once.

use std::collections::BTreeSet;

/// Quoted literals that look like IDs: upper-case words joined by hyphens (`"CERT-EXPIRED"`).
pub fn quoted_ids(source: &str) -> BTreeSet<String> {
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.contains('-')
                && !s.starts_with('-')
                && !s.ends_with('-')
                && !s.contains("--")
                && s.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
        })
        .map(str::to_owned)
        .collect()
}

/// The IDs among `ids` that have no `### ID` section in `docs`.
pub fn undocumented<'a>(ids: &'a BTreeSet<String>, docs: &str) -> Vec<&'a str> {
    ids.iter()
        .filter(|id| !docs.contains(&format!("\n### {id}\n")))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ids_and_only_ids() {
        let src = r#"let a = "CERT-EXPIRED"; let b = "not-an-id"; let c = "X"; f("TLS-NOT-TLS", "-A-", "A--B");"#;
        let ids = quoted_ids(src);
        assert_eq!(
            ids.into_iter().collect::<Vec<_>>(),
            vec!["CERT-EXPIRED", "TLS-NOT-TLS"]
        );
        let ids: BTreeSet<String> = ["CERT-EXPIRED".to_owned(), "TLS-NOT-TLS".to_owned()].into();
        assert_eq!(
            undocumented(&ids, "# D\n\n### CERT-EXPIRED\nmeaning\n"),
            vec!["TLS-NOT-TLS"]
        );
    }
}
