//! Kerberos for Steward: HTTP Negotiate (SPNEGO) over GSSAPI for the console, the admin API
//! and agent registration, and the evidence and judgement of `steward doctor kerberos`.
//!
//! GSSAPI reads its configuration from the process environment (`KRB5_CONFIG`, `KRB5_KTNAME`,
//! `KRB5CCNAME`): one process, one Kerberos configuration. The accept and initiate calls block
//! (they may talk to the KDC); async callers run them on a blocking thread.
//!
//! NTLM is deliberately not supported (see [`negotiate::NTLM_REASON`]).
#![forbid(unsafe_code)]

pub mod codes;
mod der;
pub mod doctor;
pub mod keytab;
#[cfg(feature = "ldap")]
pub mod ldap;
pub mod negotiate;
pub mod probe;

pub use keytab::{KeytabEntry, KeytabError, read_keytab};
pub use negotiate::{
    Accepted, Acceptor, InitiateError, Initiation, NTLM_REASON, NegotiateError, have_ticket,
    initiate, initiate_as_host, ticket_principal,
};
#[cfg(feature = "testkdc")]
pub mod testkdc;
#[cfg(feature = "testkdc")]
pub mod testldap;
