//! Coordinator configuration: one validated struct; the `tessera coordinator` runner maps its
//! config file, flags and environment onto it.

use serde::{Deserialize, Serialize};

/// Settings of one coordinator. Several coordinators may run per zone; safety never depends on
/// how many (ARCHITECTURE.md §5: terms, not locks, make racing coordinators safe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Zone this coordinator runs in (e.g. `zone1`); it watches and recovers every shard.
    pub zone: String,
    /// How long a primary problem must persist before failing over.
    pub failover_grace_ms: u64,
    /// How long a replica problem must persist before repointing it.
    pub repair_grace_ms: u64,
    /// Random extra wait added per decision, so racing coordinators rarely collide.
    pub jitter_ms: u64,
    /// A tablet whose last status is older than this is unreachable.
    pub unreachable_after_ms: u64,
    /// After another agent raised a shard's term, leave it this long to finish.
    pub takeover_grace_ms: u64,
    /// Interval of the analysis loop.
    pub tick_ms: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            zone: "zone1".into(),
            failover_grace_ms: 800,
            repair_grace_ms: 2_000,
            jitter_ms: 400,
            unreachable_after_ms: 1_500,
            takeover_grace_ms: 8_000,
            tick_ms: 100,
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
        if self.tick_ms == 0 || self.tick_ms > 10_000 {
            return Err(ConfigError {
                field: "tick_ms",
                reason: "must be between 1 and 10000".into(),
            });
        }
        if self.unreachable_after_ms < 100 {
            return Err(ConfigError {
                field: "unreachable_after_ms",
                reason: "must be at least 100 (status streams report every 250 ms)".into(),
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
            ..CoordinatorConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(error.field, "zone");
    }
}
