//! Certificate lifecycle settings (`[certs]` in `steward.toml`): how long agent certificates
//! live and when platform-issued certificates are renewed. Renewal happens at a fraction of
//! the lifetime rather than a fixed number of days before expiry, so short-lived certificates
//! (tests, labs) and year-long ones are renewed equally "well before" they expire.

use serde::Deserialize;

/// Seconds in a day.
const DAY: u64 = 86_400;

/// The console and `steward devices list` warn when a certificate in use expires within this.
pub const EXPIRY_WARNING_SECS: i64 = 30 * 86_400;

/// `[certs]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Certs {
    /// Validity of agent client certificates, in seconds (enrollment and renewal).
    pub agent_validity_secs: u64,
    /// A platform-issued certificate (an agent's, a listener's) is renewed once this percent
    /// of its lifetime has passed.
    pub renew_at_percent: u8,
}

impl Default for Certs {
    fn default() -> Self {
        Self {
            agent_validity_secs: 365 * DAY,
            renew_at_percent: 66,
        }
    }
}

impl Certs {
    /// Checks values that parse but cannot work.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.agent_validity_secs < 60 {
            return Err("certs.agent_validity_secs must be at least 60".to_owned());
        }
        if !(1..=90).contains(&self.renew_at_percent) {
            return Err(
                "certs.renew_at_percent must be between 1 and 90, so renewal happens well \
                 before expiry (agents renew on their own at 90%)"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Whether a certificate valid from `not_before` to `not_after` is due for renewal at
    /// `now`.
    pub(crate) fn due(&self, not_before: i64, not_after: i64, now: i64) -> bool {
        let life = not_after.saturating_sub(not_before).max(1);
        let elapsed = now.saturating_sub(not_before);
        // Computed in i128: lifetimes times percent do not overflow.
        i128::from(elapsed) * 100 >= i128::from(life) * i128::from(self.renew_at_percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_the_configured_share_of_the_lifetime() {
        let c = Certs::default();
        assert!(c.validate().is_ok());
        assert!(!c.due(0, 100, 65));
        assert!(c.due(0, 100, 66));
        assert!(c.due(0, 100, 200));
        assert!(
            Certs {
                renew_at_percent: 0,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            Certs {
                agent_validity_secs: 10,
                ..c
            }
            .validate()
            .is_err()
        );
    }
}
