//! The evidence for the duplicate-SPN check (feature `ldap`): which directory objects hold each
//! `HTTP/<name>` the server needs, read from an LDAP directory (Active Directory, or any
//! directory whose schema has `servicePrincipalName`). The judgement is in
//! [`crate::doctor`]; this module only talks to the directory.
//!
//! The search is `(servicePrincipalName=<spn>)` over the subtree of the configured base,
//! asking for no attributes (the DNs are the answer). The comparison is the directory's:
//! `servicePrincipalName` matches case-insensitively in Active Directory (`caseIgnoreMatch`),
//! so `http/WEB01.example.net` counts as a holder of `HTTP/web01.example.net`, exactly as the
//! KDC treats it.

use std::time::Duration;

use ldap3::{LdapConn, LdapConnSettings, LdapError, Scope, SearchEntry, ldap_escape};

use crate::doctor::{LdapEvidence, SpnHolders};

/// Where and how to search.
#[derive(Clone)]
pub struct LdapSettings {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    /// The search base (`dc=example,dc=net`).
    pub base: String,
    /// A simple bind: the DN and its password; `None` binds anonymously.
    pub bind: Option<(String, String)>,
    /// The limit for connecting and for each operation.
    pub timeout: Duration,
}

impl std::fmt::Debug for LdapSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapSettings")
            .field("url", &self.url)
            .field("base", &self.base)
            .field("bind_dn", &self.bind.as_ref().map(|(dn, _)| dn))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The LDAP filter that finds the holders of `spn` (the value escaped, RFC 4515).
pub fn spn_filter(spn: &str) -> String {
    format!("(servicePrincipalName={})", ldap_escape(spn))
}

/// An LDAP result code with its RFC 4511 name, and the server's text when it gave one.
fn describe(e: &LdapError) -> String {
    match e {
        LdapError::LdapResult { result } => {
            let name = match result.rc {
                1 => "operationsError",
                2 => "protocolError",
                3 => "timeLimitExceeded",
                4 => "sizeLimitExceeded",
                8 => "strongerAuthRequired",
                10 => "referral",
                32 => "noSuchObject",
                34 => "invalidDNSyntax",
                48 => "inappropriateAuthentication",
                49 => "invalidCredentials",
                50 => "insufficientAccessRights",
                51 => "busy",
                52 => "unavailable",
                53 => "unwillingToPerform",
                _ => "error",
            };
            let mut out = format!("LDAP result {} ({name})", result.rc);
            let text = result.text.trim();
            if !text.is_empty() {
                out.push_str(&format!(": {text}"));
            }
            if !result.refs.is_empty() {
                out.push_str(&format!("; referred to {}", result.refs.join(", ")));
            }
            out
        }
        other => other.to_string(),
    }
}

/// Connects, binds (simple, or anonymous) and searches the holders of each SPN in `spns`.
/// Never fails: every failure is evidence ([`LdapEvidence`]) the doctor reports.
pub fn search_spns(settings: &LdapSettings, spns: &[String]) -> LdapEvidence {
    let url = settings.url.clone();
    let conn = LdapConn::with_settings(
        LdapConnSettings::new().set_conn_timeout(settings.timeout),
        &settings.url,
    );
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            return LdapEvidence::Unreachable {
                url,
                error: describe(&e),
            };
        }
    };
    let bind_dn = settings
        .bind
        .as_ref()
        .map_or_else(String::new, |(dn, _)| dn.clone());
    let bound = match &settings.bind {
        Some((dn, pw)) => conn
            .with_timeout(settings.timeout)
            .simple_bind(dn, pw)
            .and_then(ldap3::LdapResult::success)
            .map(|_| ()),
        // Anonymous: nothing to send; a directory that refuses anonymous searches says so on
        // the search.
        None => Ok(()),
    };
    if let Err(e) = bound {
        let _ = conn.unbind();
        return match e {
            LdapError::LdapResult { .. } => LdapEvidence::BindFailed {
                url,
                bind_dn,
                error: describe(&e),
            },
            // The connection broke or timed out during the bind.
            other => LdapEvidence::Unreachable {
                url,
                error: describe(&other),
            },
        };
    }
    let mut found = Vec::with_capacity(spns.len());
    for spn in spns {
        let filter = spn_filter(spn);
        let res = conn
            .with_timeout(settings.timeout)
            .search(&settings.base, Scope::Subtree, &filter, vec!["1.1"])
            // A referral (result 10: the base is in a naming context this server does not
            // hold) searched nothing, so it is a failure, not "no holder".
            .and_then(ldap3::SearchResult::success);
        match res {
            Ok((entries, _)) => {
                let mut holders: Vec<String> = entries
                    .into_iter()
                    .filter(|e| !e.is_ref() && !e.is_intermediate())
                    .map(|e| SearchEntry::construct(e).dn)
                    .collect();
                holders.sort();
                holders.dedup();
                found.push(SpnHolders {
                    spn: spn.clone(),
                    holders,
                });
            }
            Err(e @ LdapError::LdapResult { .. }) => {
                let _ = conn.unbind();
                return LdapEvidence::SearchFailed {
                    url,
                    base: settings.base.clone(),
                    filter,
                    bind_dn,
                    error: describe(&e),
                };
            }
            Err(e) => {
                return LdapEvidence::Unreachable {
                    url,
                    error: describe(&e),
                };
            }
        }
    }
    let _ = conn.unbind();
    LdapEvidence::Searched {
        url,
        base: settings.base.clone(),
        spns: found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_escapes_the_value() {
        assert_eq!(
            spn_filter("HTTP/smp.example.net"),
            "(servicePrincipalName=HTTP/smp.example.net)"
        );
        assert_eq!(
            spn_filter("HTTP/a*(b)"),
            "(servicePrincipalName=HTTP/a\\2a\\28b\\29)"
        );
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let s = LdapSettings {
            url: "ldap://dc1".into(),
            base: "dc=example,dc=net".into(),
            bind: Some(("cn=reader,dc=example,dc=net".into(), "hunter2".into())),
            timeout: Duration::from_secs(1),
        };
        let shown = format!("{s:?}");
        assert!(
            shown.contains("cn=reader") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
