//! HTTP Negotiate (RFC 4559): SPNEGO tokens carrying Kerberos, accepted and initiated through
//! GSSAPI (MIT krb5 via libgssapi).
//!
//! The keytab is MIT's default acceptor keytab (`KRB5_KTNAME`, else `default_keytab_name` in
//! krb5.conf, else `/etc/krb5.keytab`): GSSAPI offers no safe per-credential keytab choice in
//! this binding, so the server sets `KRB5_KTNAME` for its own process before it starts (see
//! `steward server run`). Acceptor credentials are acquired for *no* name, so every `HTTP/…`
//! key in the keytab is usable: one service principal per name the server answers to.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::error::{Error as GssError, MajorFlags};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE, OidSet};

use crate::codes;

/// The NTLMSSP signature that starts every raw NTLM message.
const NTLMSSP: &[u8] = b"NTLMSSP\0";
/// DER of the NTLMSSP mechanism OID 1.3.6.1.4.1.311.2.2.10, as listed in a SPNEGO offer.
const NTLM_OID: &[u8] = &[
    0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a,
];
/// DER of the Kerberos OIDs a SPNEGO offer may list (RFC 4121 and Microsoft's legacy one).
const KRB5_OIDS: [&[u8]; 2] = [
    &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02,
    ],
    &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02,
    ],
];
/// Largest `Authorization: Negotiate` token decoded (AD tickets with large PACs reach ~12 KiB;
/// headers are bounded by the HTTP layer too).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Why NTLM is refused, said the same way in the 401, the log and the docs.
pub const NTLM_REASON: &str = "NTLM is not supported: it cannot authenticate the server to the \
     client (no mutual authentication), its challenge-response can be relayed to other \
     services, and it needs a Windows domain controller to verify; use Kerberos (kinit, then \
     Negotiate) or a local account";

/// A refused Negotiate exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiateError {
    /// The client offered NTLM only (a raw NTLMSSP token, or a SPNEGO offer listing NTLM
    /// without Kerberos): the client has no Kerberos ticket for this server.
    #[error("{NTLM_REASON}")]
    Ntlm,
    /// The header's token is empty, not base64, too large, or not a GSS-API/SPNEGO token.
    #[error("the Negotiate token is malformed: {0}")]
    Malformed(String),
    /// GSSAPI refused the token; `hint` names the likely cause.
    #[error("Kerberos refused the token: {reason}{hint}")]
    Rejected {
        /// GSSAPI's major and minor messages.
        reason: String,
        /// The krb5 minor status code (0 when none).
        minor: i64,
        /// A sentence on the likely cause, starting with "; " (or empty).
        hint: String,
    },
    /// The exchange needs more than one round trip, which HTTP Negotiate does not carry for
    /// Kerberos (a client that offered a mechanism other than Kerberos first).
    #[error(
        "the Negotiate exchange did not complete in one round (the client chose a mechanism \
         other than Kerberos)"
    )]
    Incomplete,
    /// The server has no usable acceptor credentials (keytab missing, empty or unreadable).
    #[error("no Kerberos acceptor credentials: {0}")]
    NoAcceptor(String),
}

/// A refused client-side (initiator) step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitiateError {
    /// No usable ticket-granting ticket in the credential cache (none, or expired).
    #[error("no Kerberos ticket in the credential cache ({0}); run kinit")]
    NoTicket(String),
    /// The KDC does not know the service principal `HTTP/<host>`.
    #[error("the KDC has no service principal {spn} ({reason})")]
    UnknownService {
        /// The principal asked for.
        spn: String,
        /// GSSAPI's message.
        reason: String,
    },
    /// The KDC could not be reached.
    #[error("the KDC cannot be reached ({0})")]
    KdcUnreachable(String),
    /// Any other GSSAPI failure.
    #[error("Kerberos failed: {reason}")]
    Failed {
        /// GSSAPI's message.
        reason: String,
        /// The krb5 minor status code.
        minor: i64,
    },
    /// The server's answer did not prove its identity (mutual authentication failed).
    #[error("the server's Negotiate answer does not authenticate it: {0}")]
    MutualFailed(String),
}

/// The krb5 minor code as the signed value the krb5 headers define.
fn minor(e: &GssError) -> i64 {
    i64::from(e.minor as i32)
}

/// A sentence on what a krb5 error code usually means at the acceptor.
fn accept_hint(minor: i64) -> &'static str {
    match minor {
        codes::AP_ERR_BADKEYVER => {
            "; the keytab's key version differs from the KDC's (the service password was \
             changed or the keytab re-exported elsewhere): export a fresh keytab \
             (steward doctor kerberos names it)"
        }
        codes::AP_ERR_SKEW => {
            "; the client's and the server's clocks differ by more than the allowed skew \
             (5 minutes by default): synchronise both with NTP"
        }
        codes::AP_ERR_NOKEY | codes::KT_NOTFOUND | codes::KT_KVNONOTFOUND => {
            "; the keytab has no key for the service principal the client asked for: add \
             HTTP/<name> for every name the server answers to"
        }
        codes::AP_ERR_MODIFIED => {
            "; the ticket does not decrypt with the keytab's key (wrong key, or a duplicate \
             SPN made the KDC use another account's key)"
        }
        codes::AP_ERR_REPEAT => "; the token was replayed",
        codes::AP_ERR_TKT_EXPIRED => "; the client's service ticket expired: kinit again",
        codes::AP_WRONG_PRINC => {
            "; the ticket is for a service principal this server is not configured for"
        }
        _ => "",
    }
}

/// Whether a decoded Negotiate token is NTLM only (see [`NegotiateError::Ntlm`]).
pub fn is_ntlm_only(token: &[u8]) -> bool {
    if token.starts_with(NTLMSSP) {
        return true;
    }
    let contains = |needle: &[u8]| token.windows(needle.len()).any(|w| w == needle);
    // A SPNEGO NegTokenInit (0x60…) that lists NTLMSSP and no Kerberos mechanism: Windows
    // sends this when it has no ticket for the server's SPN.
    token.first() == Some(&0x60) && contains(NTLM_OID) && !KRB5_OIDS.iter().any(|o| contains(o))
}

/// Decodes the token of an `Authorization: Negotiate <base64>` value (the part after the
/// scheme), refusing NTLM before it reaches GSSAPI.
pub fn decode_token(b64: &str) -> Result<Vec<u8>, NegotiateError> {
    let b64 = b64.trim();
    if b64.is_empty() {
        return Err(NegotiateError::Malformed("empty token".into()));
    }
    if b64.len() > MAX_TOKEN_BYTES * 4 / 3 + 4 {
        return Err(NegotiateError::Malformed(format!(
            "token over {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let token = STANDARD
        .decode(b64)
        .map_err(|e| NegotiateError::Malformed(format!("not base64: {e}")))?;
    if is_ntlm_only(&token) {
        return Err(NegotiateError::Ntlm);
    }
    // Every first GSS-API token is an InitialContextToken ([APPLICATION 0], 0x60, RFC 2743
    // §3.1); a later SPNEGO token is a NegTokenResp ([1], 0xa1, RFC 4178).
    match token.first() {
        Some(0x60 | 0xa1) => Ok(token),
        Some(b) => Err(NegotiateError::Malformed(format!(
            "not a GSS-API/SPNEGO token (it starts with byte 0x{b:02x}, not 0x60)"
        ))),
        None => Err(NegotiateError::Malformed("empty token".into())),
    }
}

/// A successful accept: who the client is and the token that proves the server to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The client's principal, `name@REALM`.
    pub principal: String,
    /// The server's reply token (mutual authentication), base64, for `WWW-Authenticate:
    /// Negotiate <token>`; `None` when the client did not ask for one.
    pub reply: Option<String>,
}

/// The server's side: acceptor credentials from the keytab.
#[derive(Clone)]
pub struct Acceptor {
    cred: Cred,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acceptor")
    }
}

fn mechs() -> Result<OidSet, GssError> {
    let mut set = OidSet::new();
    set.add(GSS_MECH_SPNEGO)?;
    set.add(GSS_MECH_KRB5)?;
    Ok(set)
}

impl Acceptor {
    /// Acquires acceptor credentials for every principal in the default keytab. Fails when
    /// the keytab is missing, empty or unreadable, so a server does not start with a
    /// Negotiate provider that can accept nobody.
    pub fn new() -> Result<Self, NegotiateError> {
        let set = mechs().map_err(|e| NegotiateError::NoAcceptor(e.to_string()))?;
        let cred = Cred::acquire(None, None, CredUsage::Accept, Some(&set))
            .map_err(|e| NegotiateError::NoAcceptor(e.to_string()))?;
        Ok(Self { cred })
    }

    /// Accepts one client token (one GSSAPI accept; a blocking call — the caller moves it off
    /// the async runtime).
    pub fn accept(&self, token: &[u8]) -> Result<Accepted, NegotiateError> {
        if is_ntlm_only(token) {
            return Err(NegotiateError::Ntlm);
        }
        let mut ctx = ServerCtx::new(Some(self.cred.clone()));
        let reply = ctx.step(token, None).map_err(|e| {
            let m = minor(&e);
            NegotiateError::Rejected {
                reason: e.to_string().trim().to_owned(),
                minor: m,
                hint: accept_hint(m).to_owned(),
            }
        })?;
        if !ctx.is_complete() {
            return Err(NegotiateError::Incomplete);
        }
        let principal = ctx
            .source_name()
            .map_err(|e| NegotiateError::Rejected {
                reason: format!("the client's name cannot be read: {e}"),
                minor: minor(&e),
                hint: String::new(),
            })?
            .to_string();
        Ok(Accepted {
            principal,
            reply: reply
                .filter(|b| !b.is_empty())
                .map(|b| STANDARD.encode(&*b)),
        })
    }
}

/// The client's side of one Negotiate exchange, kept to check the server's answer.
pub struct Initiation {
    ctx: ClientCtx,
    /// The first token, base64, for `Authorization: Negotiate <token>`.
    pub token: String,
    /// The service principal asked for, `HTTP@host` form.
    pub target: String,
}

impl std::fmt::Debug for Initiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiation")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn classify_init(e: &GssError, spn: &str) -> InitiateError {
    let m = minor(e);
    let reason = e.to_string().trim().to_owned();
    match m {
        codes::S_PRINCIPAL_UNKNOWN => InitiateError::UnknownService {
            spn: spn.to_owned(),
            reason,
        },
        codes::KDC_UNREACH | codes::REALM_UNKNOWN => InitiateError::KdcUnreachable(reason),
        codes::FCC_NOFILE | codes::CC_NOTFOUND | codes::AP_ERR_TKT_EXPIRED => {
            InitiateError::NoTicket(reason)
        }
        _ if e.major.contains(MajorFlags::GSS_S_NO_CRED)
            || e.major.contains(MajorFlags::GSS_S_CREDENTIALS_EXPIRED) =>
        {
            InitiateError::NoTicket(reason)
        }
        _ => InitiateError::Failed { reason, minor: m },
    }
}

/// Whether the default credential cache holds a ticket that has not expired (the CLI's
/// "Negotiate by default when a ticket exists").
pub fn have_ticket() -> bool {
    let Ok(set) = OidSet::singleton(GSS_MECH_KRB5) else {
        return false;
    };
    Cred::acquire(None, None, CredUsage::Initiate, Some(&set))
        .and_then(|c| c.lifetime())
        .is_ok_and(|l| !l.is_zero())
}

/// The principal of the default credential cache, if it holds a usable ticket.
pub fn ticket_principal() -> Option<String> {
    let set = OidSet::singleton(GSS_MECH_KRB5).ok()?;
    let cred = Cred::acquire(None, None, CredUsage::Initiate, Some(&set)).ok()?;
    if cred.lifetime().ok()?.is_zero() {
        return None;
    }
    cred.name().ok().map(|n| n.to_string())
}

/// Starts a Negotiate exchange for `HTTP/<host>` with the default credential cache, asking
/// for mutual authentication (SPNEGO, as browsers and curl do).
pub fn initiate(host: &str) -> Result<Initiation, InitiateError> {
    start(host, "HTTP", true)
}

/// Starts a bare Kerberos (not SPNEGO) exchange for `<service>/<host>`: its token carries the
/// ticket in a form [`crate::probe::ticket_facts`] reads (the doctor's klist check).
pub fn initiate_krb5(service: &str, host: &str) -> Result<Initiation, InitiateError> {
    start(host, service, false)
}

/// Starts a Negotiate exchange for `HTTP/<host>` as this machine's host principal
/// (`host/<fqdn>@REALM`), whose key MIT Kerberos takes from the client keytab
/// (`KRB5_CLIENT_KTNAME`, e.g. the system keytab `/etc/krb5.keytab`): agent enrollment of a
/// domain-joined host. The local host name is used, as `kinit -k` does.
pub fn initiate_as_host(host: &str) -> Result<Initiation, InitiateError> {
    let spn = format!("HTTP/{host}");
    let me =
        Name::new(b"host", Some(GSS_NT_HOSTBASED_SERVICE)).map_err(|e| classify_init(&e, &spn))?;
    let set = OidSet::singleton(GSS_MECH_KRB5).map_err(|e| classify_init(&e, &spn))?;
    let cred = Cred::acquire(Some(&me), None, CredUsage::Initiate, Some(&set))
        .map_err(|e| classify_init(&e, &spn))?;
    start_with(Some(cred), host, "HTTP", true)
}

fn start(host: &str, service: &str, spnego: bool) -> Result<Initiation, InitiateError> {
    start_with(None, host, service, spnego)
}

fn start_with(
    cred: Option<Cred>,
    host: &str,
    service: &str,
    spnego: bool,
) -> Result<Initiation, InitiateError> {
    let target = format!("{service}@{host}");
    let spn = format!("{service}/{host}");
    let name = Name::new(target.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE))
        .map_err(|e| classify_init(&e, &spn))?;
    let mech = if spnego {
        GSS_MECH_SPNEGO
    } else {
        GSS_MECH_KRB5
    };
    let mut ctx = ClientCtx::new(cred, name, CtxFlags::GSS_C_MUTUAL_FLAG, Some(mech));
    let token = ctx
        .step(None, None)
        .map_err(|e| classify_init(&e, &spn))?
        .map(|b| STANDARD.encode(&*b))
        .unwrap_or_default();
    Ok(Initiation { ctx, token, target })
}

impl Initiation {
    /// The raw first token.
    pub fn token_bytes(&self) -> Vec<u8> {
        STANDARD.decode(&self.token).unwrap_or_default()
    }

    /// Checks the server's `WWW-Authenticate: Negotiate <token>` answer: the proof that the
    /// server holds the service key (mutual authentication).
    pub fn finish(mut self, server_token_b64: Option<&str>) -> Result<(), InitiateError> {
        let Some(b64) = server_token_b64.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(InitiateError::MutualFailed(
                "the server sent no token back".into(),
            ));
        };
        let tok = STANDARD
            .decode(b64)
            .map_err(|e| InitiateError::MutualFailed(format!("not base64: {e}")))?;
        self.ctx
            .step(Some(&tok), None)
            .map_err(|e| InitiateError::MutualFailed(e.to_string().trim().to_owned()))?;
        if self.ctx.is_complete() {
            Ok(())
        } else {
            Err(InitiateError::MutualFailed(
                "the context is still incomplete after the server's token".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntlm_is_recognised_raw_and_inside_spnego() {
        assert!(is_ntlm_only(b"NTLMSSP\0\x01\0\0\0"));
        let mut spnego_ntlm = vec![0x60, 0x30, 0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
        spnego_ntlm.extend_from_slice(NTLM_OID);
        assert!(is_ntlm_only(&spnego_ntlm));
        let mut both = spnego_ntlm.clone();
        both.extend_from_slice(KRB5_OIDS[0]);
        assert!(
            !is_ntlm_only(&both),
            "an offer with Kerberos goes to GSSAPI"
        );
        assert_eq!(
            decode_token(&STANDARD.encode(b"NTLMSSP\0\x01\0\0\0")),
            Err(NegotiateError::Ntlm)
        );
        assert!(matches!(
            decode_token("!!"),
            Err(NegotiateError::Malformed(_))
        ));
        assert!(matches!(
            decode_token(""),
            Err(NegotiateError::Malformed(_))
        ));
        assert!(matches!(
            decode_token(&STANDARD.encode(b"garbage, not a token")),
            Err(NegotiateError::Malformed(m)) if m.contains("0x67")
        ));
        assert!(matches!(
            decode_token("===="),
            Err(NegotiateError::Malformed(_))
        ));
        assert!(decode_token(&STANDARD.encode([0x60, 0x03, 0x06, 0x01, 0x00])).is_ok());
    }
}
