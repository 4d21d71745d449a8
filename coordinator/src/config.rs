//! Coordinator configuration: one validated struct; the `tessera coordinator` runner maps its
//! config file, flags and environment onto it.

use serde::{Deserialize, Serialize};

/// Settings of one coordinator. Several coordinators may run per zone; safety never depends on
/// how many (ARCHITECTURE.md §5: terms, not locks, make racing coordinators safe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Zone whose tablets this coordinator health-checks and recovers (e.g. `zone1`).
    pub zone: String,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            zone: "zone1".into(),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid coordinator configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl CoordinatorConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Zones are topology path segments (`/tessera/cells/<zone>/...`) and tablet-id prefixes.
        let zone_ok = !self.zone.is_empty()
            && self.zone.len() <= 128
            && self
                .zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !zone_ok {
            return Err(ConfigError {
                field: "zone",
                reason: format!("{:?}: use 1 to 128 letters, digits, '-' and '_'", self.zone),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_a_bad_zone_is_named() {
        // Goal: the defaults work, and an unusable zone is rejected with the field named.
        CoordinatorConfig::default().validate().unwrap();
        let error = CoordinatorConfig {
            zone: "zone 1".into(),
        }
        .validate()
        .unwrap_err();
        assert_eq!(error.field, "zone");
    }
}
