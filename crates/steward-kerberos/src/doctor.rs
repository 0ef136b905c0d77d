//! The judgement of `steward doctor kerberos`: evidence in, findings out (no I/O here, so
//! every rule is unit-tested on facts). IDs are documented in docs/diagnostics.md.

use std::fmt::Write as _;

use steward_doctor::{Finding, Severity};

use crate::keytab::{KeytabEntry, KeytabError, enctype_name};
use crate::negotiate::{InitiateError, NTLM_REASON};
use crate::probe::{KdcClock, KdcProbeError, Krb5Conf, NameResolution, TicketFacts};

/// Default clock-skew tolerance (MIT's and Active Directory's `clockskew`: 5 minutes).
pub const DEFAULT_MAX_SKEW_SECS: i64 = 300;

/// The outcome of reading the keytab, as the doctor judges it.
#[derive(Debug, Clone)]
pub enum KeytabRead {
    /// The entries.
    Entries(Vec<KeytabEntry>),
    /// The read failed.
    Failed(KeytabErrorKind, String),
}

/// Which way the keytab read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeytabErrorKind {
    /// No such file.
    Missing,
    /// Cannot be read, or is not a keytab.
    Unreadable,
}

impl From<Result<Vec<KeytabEntry>, KeytabError>> for KeytabRead {
    fn from(r: Result<Vec<KeytabEntry>, KeytabError>) -> Self {
        match r {
            Ok(e) => Self::Entries(e),
            Err(e @ KeytabError::Missing { .. }) => {
                Self::Failed(KeytabErrorKind::Missing, e.to_string())
            }
            Err(e) => Self::Failed(KeytabErrorKind::Unreadable, e.to_string()),
        }
    }
}

/// One name's service-ticket attempt (the `klist` check).
#[derive(Debug, Clone)]
pub struct TicketProbe {
    /// The host name asked for (`HTTP/<host>`).
    pub host: String,
    /// The ticket's facts, or why there is none.
    pub outcome: Result<Option<TicketFacts>, InitiateError>,
}

/// Everything `steward doctor kerberos` gathered.
#[derive(Debug, Clone)]
pub struct KerberosEvidence {
    /// The keytab path.
    pub keytab_path: String,
    /// Its contents.
    pub keytab: KeytabRead,
    /// The names the server answers to (`fqdns`).
    pub names: Vec<String>,
    /// The realm the checks use.
    pub realm: Option<String>,
    /// krb5.conf.
    pub conf: Krb5Conf,
    /// The KDC probe.
    pub kdc: Result<KdcClock, KdcProbeError>,
    /// Allowed clock skew, seconds.
    pub max_skew_secs: i64,
    /// Per name: how it resolves.
    pub resolution: Vec<NameResolution>,
    /// Per name: the service ticket a client gets (empty when not attempted).
    pub tickets: Vec<TicketProbe>,
    /// What the LDAP directory says about the server's SPNs (the duplicate-SPN check).
    pub ldap: LdapEvidence,
}

/// The holders of one SPN in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpnHolders {
    /// The SPN searched (`HTTP/<name>`).
    pub spn: String,
    /// The DNs of the objects whose `servicePrincipalName` holds it (compared as the directory
    /// does: case-insensitively in Active Directory), sorted.
    pub holders: Vec<String>,
}

/// The duplicate-SPN evidence: what the LDAP directory answered, or why it could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LdapEvidence {
    /// No directory is configured (`[auth] ldap_url`): the check cannot run.
    NotConfigured,
    /// The directory could not be reached (connection refused, name, TLS, timeout).
    Unreachable {
        /// The URL tried.
        url: String,
        /// Why.
        error: String,
    },
    /// The directory refused the bind (or its password could not be read).
    BindFailed {
        /// The URL.
        url: String,
        /// The DN bound as.
        bind_dn: String,
        /// Why.
        error: String,
    },
    /// The bind worked but a search was refused (no such base, access denied, anonymous
    /// searches not allowed).
    SearchFailed {
        /// The URL.
        url: String,
        /// The search base.
        base: String,
        /// The filter.
        filter: String,
        /// The DN bound as (empty: anonymous).
        bind_dn: String,
        /// Why.
        error: String,
    },
    /// Searched: the holders of each SPN.
    Searched {
        /// The URL.
        url: String,
        /// The search base.
        base: String,
        /// One entry per SPN the server needs.
        spns: Vec<SpnHolders>,
    },
}

fn finding(id: &'static str, severity: Severity, message: String, remedy: &str) -> Finding {
    Finding {
        id,
        severity,
        message,
        remedy: Some(remedy.to_owned()),
    }
}

fn spn_entries<'a>(
    entries: &'a [KeytabEntry],
    host: &str,
    realm: Option<&str>,
) -> Vec<&'a KeytabEntry> {
    let want = format!("HTTP/{}", host.to_ascii_lowercase());
    entries
        .iter()
        .filter(|e| e.name().eq_ignore_ascii_case(&want))
        .filter(|e| {
            realm.is_none_or(|r| e.principal.rsplit_once('@').is_some_and(|(_, er)| er == r))
        })
        .collect()
}

/// The keytab checks (read, then one `HTTP/<name>` per name), shared by the doctor and the
/// server's `--check-config`: the findings, and the entries when the keytab could be used.
pub fn keytab_findings<'a>(
    keytab_path: &str,
    keytab: &'a KeytabRead,
    names: &[String],
    realm: Option<&str>,
) -> (Vec<Finding>, Option<&'a [KeytabEntry]>) {
    let mut out = Vec::new();
    // 1. Keytab.
    let entries: Option<&[KeytabEntry]> = match keytab {
        KeytabRead::Entries(e) if e.is_empty() => {
            out.push(finding(
                "KRB-KEYTAB-UNREADABLE",
                Severity::Error,
                format!("the keytab {} holds no keys", keytab_path),
                "export the service keys into it: `kadmin -q 'ktadd -k FILE HTTP/<name>'` (MIT) \
                 or `ktpass`/`msktutil` (Active Directory)",
            ));
            None
        }
        KeytabRead::Entries(e) => {
            out.push(Finding::ok(
                "KRB-KEYTAB-OK",
                format!(
                    "keytab {}: {} key(s) for {}",
                    keytab_path,
                    e.len(),
                    dedup(e.iter().map(|x| x.principal.clone())).join(", ")
                ),
            ));
            Some(e)
        }
        KeytabRead::Failed(KeytabErrorKind::Missing, why) => {
            out.push(finding(
                "KRB-KEYTAB-MISSING",
                Severity::Error,
                why.clone(),
                "create the keytab at that path (or fix [auth] keytab): `kadmin -q 'ktadd -k \
                 FILE HTTP/<name>'` (MIT) or `ktpass`/`msktutil` (Active Directory)",
            ));
            None
        }
        KeytabRead::Failed(KeytabErrorKind::Unreadable, why) => {
            out.push(finding(
                "KRB-KEYTAB-UNREADABLE",
                Severity::Error,
                why.clone(),
                "make the file readable by the account the server runs as (mode 0600, owned by \
                 it), and check it is a keytab (`klist -k FILE`)",
            ));
            None
        }
    };
    // 2. One HTTP/<name> per name the server answers to.
    if let Some(entries) = entries {
        for name in names {
            if spn_entries(entries, name, realm).is_empty() {
                out.push(finding(
                    "KRB-SPN-MISSING",
                    Severity::Error,
                    format!(
                        "the server answers to {name}, but the keytab has no key for HTTP/{name}{}; \
                         clients using that name cannot authenticate",
                        realm.map(|r| format!("@{r}")).unwrap_or_default()
                    ),
                    "register the SPN and export its key: `kadmin -q 'addprinc -randkey \
                     HTTP/<name>'` then `ktadd -k FILE HTTP/<name>` (AD: `setspn -S HTTP/<name> \
                     ACCOUNT` and `ktpass`)",
                ));
            } else {
                out.push(Finding::ok(
                    "KRB-SPN-OK",
                    format!("the keytab has HTTP/{name}"),
                ));
            }
        }
    }
    (out, entries)
}

/// Judges the evidence: one or more findings per check, in a fixed order.
pub fn evaluate(ev: &KerberosEvidence) -> Vec<Finding> {
    let realm = ev.realm.as_deref();
    // 1. Keytab. 2. One HTTP/<name> per name the server answers to.
    let (mut out, entries) = keytab_findings(&ev.keytab_path, &ev.keytab, &ev.names, realm);
    // 3. The KDC and the clock.
    match &ev.kdc {
        Ok(clock) => {
            out.push(Finding::ok(
                "KRB-KDC-OK",
                format!("the KDC at {} answered", clock.kdc),
            ));
            let skew = clock.skew_secs();
            if skew.abs() > ev.max_skew_secs {
                out.push(finding(
                    "KRB-CLOCK-SKEW",
                    Severity::Error,
                    format!(
                        "the KDC's clock is {} s {} this machine's (KDC {}, here {}); the \
                         tolerance is {} s, so tickets are refused (KRB_AP_ERR_SKEW)",
                        skew.abs(),
                        if skew > 0 { "ahead of" } else { "behind" },
                        rfc3339(clock.kdc_time),
                        rfc3339(clock.local_time),
                        ev.max_skew_secs
                    ),
                    "synchronise this server, the KDC (domain controllers) and the clients with \
                     NTP (chrony/systemd-timesyncd); do not widen clockskew instead",
                ));
            } else {
                out.push(Finding::ok(
                    "KRB-CLOCK-OK",
                    format!(
                        "clocks agree within {} s (tolerance {} s)",
                        skew.abs(),
                        ev.max_skew_secs
                    ),
                ));
            }
        }
        Err(e) => out.push(finding(
            "KRB-KDC-UNREACHABLE",
            Severity::Error,
            format!(
                "{e} (krb5.conf: {}, realm {})",
                ev.conf.path,
                realm.unwrap_or("none")
            ),
            "check krb5.conf's [realms] kdc entries, DNS, and that TCP and UDP port 88 reach \
             the KDC through every firewall",
        )),
    }
    // 4. Names a client would really use in the SPN.
    if let Some(entries) = entries {
        for r in &ev.resolution {
            if let Some(err) = &r.error {
                out.push(finding(
                    "KRB-NAME-MISMATCH",
                    Severity::Warning,
                    format!(
                        "{} does not resolve ({err}); clients cannot reach it by that name",
                        r.name
                    ),
                    "add the name to DNS (A/AAAA), or remove it from fqdns",
                ));
                continue;
            }
            let host = r.spn_host(&ev.conf);
            if !host.eq_ignore_ascii_case(&r.name) && spn_entries(entries, &host, realm).is_empty()
            {
                out.push(finding(
                    "KRB-NAME-MISMATCH",
                    Severity::Warning,
                    format!(
                        "{} resolves to {}{} (reverse: {}), so MIT clients ask for HTTP/{host}, \
                         which the keytab does not have",
                        r.name,
                        r.canonical.as_deref().unwrap_or(&r.name),
                        r.addrs
                            .first()
                            .map(|a| format!(" at {a}"))
                            .unwrap_or_default(),
                        r.reverse.as_deref().unwrap_or("none"),
                    ),
                    "make the A record (not a CNAME) and the PTR record agree with the name, or \
                     add HTTP/<that name> to the keytab, or set `rdns = false` and \
                     `dns_canonicalize_hostname = false` on the clients",
                ));
            }
        }
    }
    // 5. The klist check, and the KDC's key version against the keytab's.
    for t in &ev.tickets {
        match &t.outcome {
            Ok(facts) => {
                out.push(Finding::ok(
                    "KRB-TICKET-OK",
                    format!(
                        "a service ticket for HTTP/{} was issued{}",
                        t.host,
                        facts
                            .as_ref()
                            .map(|f| format!(
                                " ({}@{}, key version {}, {})",
                                f.sname,
                                f.realm,
                                f.kvno.map_or("not stated".into(), |k| k.to_string()),
                                enctype_name(f.enctype)
                            ))
                            .unwrap_or_default()
                    ),
                ));
                if let (Some(f), Some(entries)) = (facts, entries) {
                    kvno_findings(&mut out, f, entries, &ev.keytab_path);
                }
            }
            Err(InitiateError::NoTicket(why)) => out.push(finding(
                "KRB-NO-TICKET",
                Severity::Warning,
                format!(
                    "no Kerberos ticket to test with ({why}), so the service-ticket and key-version \
                     checks for HTTP/{} did not run. {NTLM_REASON}.",
                    t.host
                ),
                "run `kinit USER@REALM` (any user) and run the doctor again",
            )),
            // The KDC had no cross-realm path: the name's domain maps to no realm it knows.
            Err(InitiateError::UnknownService { spn, reason }) if reason.contains("krbtgt/") => {
                out.push(finding(
                    "KRB-TICKET-FAILED",
                    Severity::Error,
                    format!(
                        "no service ticket for {spn}: the KDC was asked for a cross-realm ticket \
                         ({reason}), so the name's domain is not mapped to the realm"
                    ),
                    "map the domain to the realm in krb5.conf ([domain_realm] .example.net = \
                     EXAMPLE.NET) or DNS (_kerberos TXT), or use a name inside the realm's domain",
                ))
            }
            Err(InitiateError::UnknownService { spn, reason }) => out.push(finding(
                "KRB-SPN-NOT-IN-KDC",
                Severity::Error,
                format!("the KDC does not know {spn} ({reason})"),
                "create the service principal in the KDC (`kadmin addprinc -randkey HTTP/<name>`; \
                 AD: `setspn -S HTTP/<name> ACCOUNT`) and export its key into the keytab",
            )),
            Err(e) => out.push(finding(
                "KRB-TICKET-FAILED",
                Severity::Error,
                format!("no service ticket for HTTP/{}: {e}", t.host),
                "read the reason: usually the KDC is unreachable, the clock is skewed, or the \
                 realm of the name is not mapped ([domain_realm] in krb5.conf)",
            )),
        }
    }
    // 6. Duplicate SPNs.
    duplicate_spn_findings(&mut out, &ev.ldap);
    out
}

const NOT_CHECKED: &str = "so duplicate SPNs were not checked";

fn duplicate_spn_findings(out: &mut Vec<Finding>, ldap: &LdapEvidence) {
    match ldap {
        LdapEvidence::NotConfigured => out.push(finding(
            "KRB-DUPLICATE-SPN-UNCHECKED",
            Severity::Warning,
            "duplicate SPNs cannot be checked: no LDAP directory is configured ([auth] ldap_url \
             and ldap_base); a duplicate makes the KDC encrypt tickets with another account's \
             key, which this server then cannot decrypt"
                .to_owned(),
            "set [auth] ldap_url and ldap_base (Active Directory: a domain controller and the \
             domain's DN) and run the doctor again, or on Active Directory run `setspn -X` (and \
             `setspn -Q HTTP/<name>`); on MIT check that each HTTP/<name> exists once",
        )),
        LdapEvidence::Unreachable { url, error } => out.push(finding(
            "KRB-LDAP-UNREACHABLE",
            Severity::Warning,
            format!("the LDAP directory {url} cannot be reached ({error}), {NOT_CHECKED}"),
            "check [auth] ldap_url (scheme ldap:// or ldaps://, host, port 389 or 636), that \
             the directory runs and that the port reaches it through every firewall; for \
             ldaps:// the directory's certificate must chain to a root this machine trusts",
        )),
        LdapEvidence::BindFailed {
            url,
            bind_dn,
            error,
        } => out.push(finding(
            "KRB-LDAP-BIND-FAILED",
            Severity::Warning,
            format!(
                "the LDAP directory {url} refused the bind as {bind_dn} ({error}), {NOT_CHECKED}"
            ),
            "check [auth] ldap_bind_dn and the password in ldap_bind_password_file (one line), \
             and that the account is enabled; Active Directory also takes \
             user@domain as the bind name",
        )),
        LdapEvidence::SearchFailed {
            url,
            base,
            filter,
            bind_dn,
            error,
        } => out.push(finding(
            "KRB-LDAP-SEARCH-FAILED",
            Severity::Warning,
            format!(
                "the LDAP directory {url} refused the search {filter} under {base} as {} \
                 ({error}), {NOT_CHECKED}",
                if bind_dn.is_empty() {
                    "anonymous"
                } else {
                    bind_dn.as_str()
                }
            ),
            "check [auth] ldap_base (the domain's DN, e.g. dc=example,dc=net) and that the \
             account may read servicePrincipalName (Active Directory refuses anonymous \
             searches: set ldap_bind_dn and ldap_bind_password_file)",
        )),
        LdapEvidence::Searched { url, base, spns } => {
            for s in spns {
                match s.holders.as_slice() {
                    [] => out.push(finding(
                        "KRB-SPN-UNREGISTERED",
                        Severity::Warning,
                        format!(
                            "no object under {base} in {url} holds servicePrincipalName {}: the \
                             SPN is not registered in the directory, so a KDC that reads this \
                             directory (Active Directory) issues no tickets for it",
                            s.spn
                        ),
                        "register it, once, on the account whose key is in the keytab (AD: \
                         `setspn -S HTTP/<name> ACCOUNT`); if the KDC is not this directory \
                         (MIT with its own database), ldap_url points at the wrong directory",
                    )),
                    [one] => out.push(Finding::ok(
                        "KRB-SPN-UNIQUE",
                        format!("{} is registered once in {url}: on {one}", s.spn),
                    )),
                    many => out.push(finding(
                        "KRB-DUPLICATE-SPN",
                        Severity::Error,
                        format!(
                            "{} is registered on {} directory objects in {url}: {}. The KDC \
                             encrypts tickets for it with the key of one of them, so logins fail \
                             (KRB_AP_ERR_MODIFIED) whenever that is not the account whose key is \
                             in the keytab",
                            s.spn,
                            many.len(),
                            many.join("; ")
                        ),
                        "keep the SPN on the account whose key the keytab holds and remove it from \
                         the others (AD: `setspn -D HTTP/<name> OTHER-ACCOUNT`, then `setspn \
                         -X`); a stale computer account that still holds it can also be deleted",
                    )),
                }
            }
        }
    }
}

fn kvno_findings(out: &mut Vec<Finding>, f: &TicketFacts, entries: &[KeytabEntry], path: &str) {
    let mine: Vec<&KeytabEntry> = entries
        .iter()
        .filter(|e| {
            e.principal
                .eq_ignore_ascii_case(&format!("{}@{}", f.sname, f.realm))
        })
        .collect();
    let Some(kvno) = f.kvno else {
        return;
    };
    if mine.is_empty() {
        // KRB-SPN-MISSING already names it.
        return;
    }
    let versions = dedup(mine.iter().map(|e| e.kvno.to_string()));
    if !mine.iter().any(|e| e.kvno == kvno) {
        out.push(finding(
            "KRB-KVNO-MISMATCH",
            Severity::Error,
            format!(
                "the KDC encrypts tickets for {}@{} with key version {kvno}; the keytab {path} \
                 has key version(s) {}: every Negotiate login fails (KRB_AP_ERR_BADKEYVER)",
                f.sname,
                f.realm,
                versions.join(", ")
            ),
            "export the current key again (`kadmin -q 'ktadd -k FILE HTTP/<name>'` changes the \
             key: use `ktadd -norandkey` on MIT; on AD re-run `ktpass` or `msktutil --update`) \
             and restart the server",
        ));
    } else if !mine
        .iter()
        .any(|e| e.kvno == kvno && i64::from(e.enctype) == f.enctype)
    {
        out.push(finding(
            "KRB-ENCTYPE-MISMATCH",
            Severity::Error,
            format!(
                "the ticket for {} uses {}; the keytab has key version {kvno} only as {}",
                f.sname,
                enctype_name(f.enctype),
                dedup(
                    mine.iter()
                        .filter(|e| e.kvno == kvno)
                        .map(|e| enctype_name(i64::from(e.enctype)))
                )
                .join(", ")
            ),
            "export keys for the encryption types the KDC issues (AES256 and AES128), or set \
             msDS-SupportedEncryptionTypes on the AD account",
        ));
    } else {
        out.push(Finding::ok(
            "KRB-KVNO-OK",
            format!(
                "the keytab's key version {kvno} for {} matches the KDC's",
                f.sname
            ),
        ));
    }
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for i in items {
        if !v.contains(&i) {
            v.push(i);
        }
    }
    v
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// The report `steward doctor kerberos` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KerberosReport {
    /// The keytab checked.
    pub keytab: String,
    /// The realm.
    pub realm: Option<String>,
    /// The names checked.
    pub names: Vec<String>,
    /// The findings, in check order.
    pub findings: Vec<ReportFinding>,
}

/// One finding as printed (serialisable copy of [`Finding`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportFinding {
    /// Stable ID.
    pub id: &'static str,
    /// ok, warning or error.
    pub severity: Severity,
    /// The evidence.
    pub message: String,
    /// The fix.
    pub remedy: Option<String>,
}

impl KerberosReport {
    /// Builds the report from the evidence.
    pub fn new(ev: &KerberosEvidence) -> Self {
        Self {
            keytab: ev.keytab_path.clone(),
            realm: ev.realm.clone(),
            names: ev.names.clone(),
            findings: evaluate(ev)
                .into_iter()
                .map(|f| ReportFinding {
                    id: f.id,
                    severity: f.severity,
                    message: f.message,
                    remedy: f.remedy,
                })
                .collect(),
        }
    }

    /// 1 when any finding is an error, else 0.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.findings.iter().any(|f| f.severity == Severity::Error))
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "steward doctor kerberos: keytab {}, realm {}, names {}",
            self.keytab,
            self.realm.as_deref().unwrap_or("(none)"),
            self.names.join(", ")
        );
        for f in &self.findings {
            let _ = writeln!(s, "[{}] {}: {}", f.severity, f.id, f.message);
            if let Some(r) = &f.remedy {
                let _ = writeln!(s, "    fix: {r}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str, kvno: u32) -> KeytabEntry {
        KeytabEntry {
            principal: p.into(),
            kvno,
            enctype: 18,
        }
    }

    fn base() -> KerberosEvidence {
        KerberosEvidence {
            keytab_path: "/etc/steward/http.keytab".into(),
            keytab: KeytabRead::Entries(vec![entry("HTTP/smp.example.net@EXAMPLE.NET", 3)]),
            names: vec!["smp.example.net".into()],
            realm: Some("EXAMPLE.NET".into()),
            conf: Krb5Conf {
                path: "/etc/krb5.conf".into(),
                rdns: false,
                canonicalize: false,
                ..Krb5Conf::default()
            },
            kdc: Ok(KdcClock {
                kdc: "127.0.0.1:88".into(),
                kdc_time: 1000,
                local_time: 1010,
                error_code: 6,
            }),
            max_skew_secs: DEFAULT_MAX_SKEW_SECS,
            resolution: vec![],
            tickets: vec![TicketProbe {
                host: "smp.example.net".into(),
                outcome: Ok(Some(TicketFacts {
                    realm: "EXAMPLE.NET".into(),
                    sname: "HTTP/smp.example.net".into(),
                    kvno: Some(3),
                    enctype: 18,
                })),
            }],
            ldap: LdapEvidence::NotConfigured,
        }
    }

    fn ids(ev: &KerberosEvidence) -> Vec<(&'static str, Severity)> {
        evaluate(ev)
            .into_iter()
            .map(|f| (f.id, f.severity))
            .collect()
    }

    fn has(ev: &KerberosEvidence, id: &str, sev: Severity) -> bool {
        ids(ev).iter().any(|(i, s)| *i == id && *s == sev)
    }

    #[test]
    fn a_good_setup_has_no_error() {
        let ev = base();
        assert!(
            !ids(&ev).iter().any(|(_, s)| *s == Severity::Error),
            "{:?}",
            ids(&ev)
        );
        assert!(has(&ev, "KRB-KVNO-OK", Severity::Ok));
        assert!(has(&ev, "KRB-DUPLICATE-SPN-UNCHECKED", Severity::Warning));
    }

    #[test]
    fn each_fault_is_named() {
        let mut ev = base();
        ev.keytab = KeytabRead::Failed(KeytabErrorKind::Missing, "no keytab at x".into());
        assert!(has(&ev, "KRB-KEYTAB-MISSING", Severity::Error));
        ev.keytab = KeytabRead::Failed(KeytabErrorKind::Unreadable, "denied".into());
        assert!(has(&ev, "KRB-KEYTAB-UNREADABLE", Severity::Error));

        let mut ev = base();
        ev.names.push("smp".into());
        assert!(has(&ev, "KRB-SPN-MISSING", Severity::Error));

        let mut ev = base();
        ev.keytab = KeytabRead::Entries(vec![entry("HTTP/smp.example.net@EXAMPLE.NET", 2)]);
        assert!(has(&ev, "KRB-KVNO-MISMATCH", Severity::Error));

        let mut ev = base();
        ev.kdc = Ok(KdcClock {
            kdc: "k".into(),
            kdc_time: 2000,
            local_time: 1000,
            error_code: 6,
        });
        assert!(has(&ev, "KRB-CLOCK-SKEW", Severity::Error));

        let mut ev = base();
        ev.kdc = Err(KdcProbeError::Unreachable("refused".into()));
        assert!(has(&ev, "KRB-KDC-UNREACHABLE", Severity::Error));

        let mut ev = base();
        ev.tickets[0].outcome = Err(InitiateError::NoTicket("no ccache".into()));
        assert!(has(&ev, "KRB-NO-TICKET", Severity::Warning));
        ev.tickets[0].outcome = Err(InitiateError::UnknownService {
            spn: "HTTP/smp.example.net".into(),
            reason: "x".into(),
        });
        assert!(has(&ev, "KRB-SPN-NOT-IN-KDC", Severity::Error));
        ev.tickets[0].outcome = Err(InitiateError::UnknownService {
            spn: "HTTP/smp.other.org".into(),
            reason: "Server krbtgt/OTHER.ORG@EXAMPLE.NET not found in Kerberos database".into(),
        });
        assert!(
            has(&ev, "KRB-TICKET-FAILED", Severity::Error),
            "a realm-mapping fault"
        );
        assert!(!has(&ev, "KRB-SPN-NOT-IN-KDC", Severity::Error));

        let mut ev = base();
        ev.conf.rdns = true;
        ev.conf.canonicalize = true;
        ev.resolution = vec![NameResolution {
            name: "smp.example.net".into(),
            canonical: None,
            addrs: vec![std::net::IpAddr::from([10, 0, 0, 5])],
            reverse: Some("web01.example.net".into()),
            error: None,
        }];
        assert!(has(&ev, "KRB-NAME-MISMATCH", Severity::Warning));
    }

    fn searched(holders: &[&str]) -> LdapEvidence {
        LdapEvidence::Searched {
            url: "ldap://dc1.example.net".into(),
            base: "dc=example,dc=net".into(),
            spns: vec![SpnHolders {
                spn: "HTTP/smp.example.net".into(),
                holders: holders.iter().map(|h| (*h).to_owned()).collect(),
            }],
        }
    }

    fn message(ev: &KerberosEvidence, id: &str) -> String {
        evaluate(ev)
            .into_iter()
            .find(|f| f.id == id)
            .map(|f| f.message)
            .unwrap_or_else(|| panic!("no {id}: {:?}", ids(ev)))
    }

    #[test]
    fn the_directory_names_duplicate_spns() {
        let mut ev = base();
        ev.ldap = searched(&["cn=steward-svc,dc=example,dc=net"]);
        assert!(has(&ev, "KRB-SPN-UNIQUE", Severity::Ok));
        assert!(!has(&ev, "KRB-DUPLICATE-SPN-UNCHECKED", Severity::Warning));

        ev.ldap = searched(&[
            "cn=OLDWEB01,ou=computers,dc=example,dc=net",
            "cn=steward-svc,dc=example,dc=net",
        ]);
        assert!(has(&ev, "KRB-DUPLICATE-SPN", Severity::Error));
        let m = message(&ev, "KRB-DUPLICATE-SPN");
        assert!(
            m.contains("cn=OLDWEB01,ou=computers,dc=example,dc=net")
                && m.contains("cn=steward-svc,dc=example,dc=net")
                && m.contains("HTTP/smp.example.net"),
            "{m}"
        );
        assert_eq!(KerberosReport::new(&ev).exit_code(), 1);

        ev.ldap = searched(&[]);
        assert!(has(&ev, "KRB-SPN-UNREGISTERED", Severity::Warning));
        assert!(message(&ev, "KRB-SPN-UNREGISTERED").contains("not registered"));
    }

    #[test]
    fn a_directory_that_cannot_be_used_says_the_check_did_not_run() {
        let mut ev = base();
        assert!(message(&ev, "KRB-DUPLICATE-SPN-UNCHECKED").contains("ldap_url"));
        ev.ldap = LdapEvidence::Unreachable {
            url: "ldap://127.0.0.1:1".into(),
            error: "Connection refused".into(),
        };
        let m = message(&ev, "KRB-LDAP-UNREACHABLE");
        assert!(
            m.contains("ldap://127.0.0.1:1") && m.contains("refused") && m.contains("not checked"),
            "{m}"
        );
        ev.ldap = LdapEvidence::BindFailed {
            url: "ldap://dc1".into(),
            bind_dn: "cn=reader,dc=example,dc=net".into(),
            error: "LDAP result 49 (invalidCredentials)".into(),
        };
        assert!(message(&ev, "KRB-LDAP-BIND-FAILED").contains("cn=reader,dc=example,dc=net"));
        ev.ldap = LdapEvidence::SearchFailed {
            url: "ldap://dc1".into(),
            base: "dc=nowhere".into(),
            filter: "(servicePrincipalName=HTTP/smp.example.net)".into(),
            bind_dn: String::new(),
            error: "LDAP result 32 (noSuchObject)".into(),
        };
        let m = message(&ev, "KRB-LDAP-SEARCH-FAILED");
        assert!(m.contains("dc=nowhere") && m.contains("anonymous"), "{m}");
        // None of these is an error: Kerberos may well work; the check did not run.
        assert_eq!(KerberosReport::new(&ev).exit_code(), 0);
    }
}
