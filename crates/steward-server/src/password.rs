//! Password hashing: argon2id with the crate's recommended parameters, as PHC strings.
//!
//! Hashing costs tens of milliseconds of CPU by design; async callers run these on the blocking
//! pool so a login never stalls check-ins.

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use crate::ServerError;

/// Shortest password accepted for an admin account.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Hashes a password into a PHC string (`$argon2id$v=19$...`) with a fresh random salt.
pub(crate) fn hash(password: &str) -> Result<String, ServerError> {
    let h: PasswordHash = Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| ServerError::Internal(format!("cannot hash a password: {e}")))?;
    Ok(h.to_string())
}

/// Whether `password` matches the PHC string. A malformed stored hash never matches.
pub(crate) fn verify(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// A valid hash of a random password, verified against when the account does not exist, so a
/// login for an unknown name costs the same time as one for a known name.
pub(crate) fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let random = crate::secret::new_token().unwrap_or_else(|_| "decoy".to_owned());
        hash(&random).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_salted() {
        let a = hash("correct horse").unwrap_or_default();
        let b = hash("correct horse").unwrap_or_default();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(verify("correct horse", &a));
        assert!(!verify("wrong", &a));
        assert!(!verify("correct horse", "not a hash"));
    }
}
