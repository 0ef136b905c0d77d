//! The krb5 error codes (com_err table `krb5`, from MIT's krb5.h) that Steward turns into
//! findings and hints. GSSAPI reports them as the minor status.

/// KDC_ERR_C_PRINCIPAL_UNKNOWN: the client is not in the KDC's database.
pub const C_PRINCIPAL_UNKNOWN: i64 = -1_765_328_378;
/// KDC_ERR_S_PRINCIPAL_UNKNOWN: the service principal is not in the KDC's database.
pub const S_PRINCIPAL_UNKNOWN: i64 = -1_765_328_377;
/// KRB_AP_ERR_TKT_EXPIRED.
pub const AP_ERR_TKT_EXPIRED: i64 = -1_765_328_352;
/// KRB_AP_ERR_REPEAT: a replayed authenticator.
pub const AP_ERR_REPEAT: i64 = -1_765_328_350;
/// KRB_AP_ERR_SKEW: clocks too far apart.
pub const AP_ERR_SKEW: i64 = -1_765_328_347;
/// KRB_AP_ERR_MODIFIED: the ticket does not decrypt with the key used.
pub const AP_ERR_MODIFIED: i64 = -1_765_328_343;
/// KRB_AP_ERR_BADKEYVER: the keytab's key version is not the ticket's.
pub const AP_ERR_BADKEYVER: i64 = -1_765_328_340;
/// KRB_AP_ERR_NOKEY: no key for the ticket's service principal.
pub const AP_ERR_NOKEY: i64 = -1_765_328_339;
/// KRB5_CC_NOTFOUND: no matching credential in the cache.
pub const CC_NOTFOUND: i64 = -1_765_328_243;
/// KRB5KRB_AP_WRONG_PRINC: the ticket is for another service principal.
pub const AP_WRONG_PRINC: i64 = -1_765_328_240;
/// KRB5_REALM_UNKNOWN: no KDC known for the realm.
pub const REALM_UNKNOWN: i64 = -1_765_328_230;
/// KRB5_KDC_UNREACH: no KDC answered.
pub const KDC_UNREACH: i64 = -1_765_328_228;
/// KRB5_KT_NOTFOUND: the keytab has no entry for the principal.
pub const KT_NOTFOUND: i64 = -1_765_328_203;
/// KRB5_FCC_NOFILE: no credential cache file.
pub const FCC_NOFILE: i64 = -1_765_328_189;
/// KRB5_KT_KVNONOTFOUND: the keytab has the principal, not at that key version.
pub const KT_KVNONOTFOUND: i64 = -1_765_328_154;

/// The KRB-ERROR code numbers (RFC 4120 §7.5.9) the KDC probe reads.
pub mod wire {
    /// KDC_ERR_C_PRINCIPAL_UNKNOWN.
    pub const C_PRINCIPAL_UNKNOWN: i64 = 6;
    /// KRB_AP_ERR_SKEW.
    pub const SKEW: i64 = 37;
}
