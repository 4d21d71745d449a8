//! Gate configuration: one validated struct; flags, env and files map onto it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A user allowed to connect through the gate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Password checked with SCRAM-SHA-256 (only a verifier is kept in memory).
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Identity of this gate in logs and in two-phase-commit transaction ids.
    pub gate_id: String,
    /// Users clients may log in as.
    pub users: Vec<UserConfig>,
    /// User and password the gate uses towards tablet poolers.
    pub backend_user: String,
    pub backend_password: String,
    /// Client connections accepted at once; more are refused with SQLSTATE 53300.
    pub max_client_connections: usize,
    /// Connections per tablet pooler (remote tablets only; in-process tablets use their pool).
    pub backend_pool_size: usize,
    /// How long a query waits for a backend connection before failing.
    pub backend_acquire_timeout_ms: u64,
    /// Distinct statements kept in the plan cache.
    pub plan_cache_entries: usize,
    /// Run simple-protocol queries whose constants sit where a bound parameter means the same
    /// (`... WHERE id = 42`, `INSERT ... VALUES (...)`) as their template prepared on the
    /// server, so PostgreSQL skips parse and plan, and likewise repeated parameterless scatter
    /// SELECTs on every shard; outside explicit transactions only (see docs/gate.md). `false`
    /// sends every simple query as text.
    pub prepare_simple_queries: bool,
    /// How long a query to a shard that is changing primaries is held before failing.
    pub buffer_window_ms: u64,
    /// Queries held at once across all shards while buffering; beyond this they fail at once.
    pub buffer_max_queries: usize,
    /// Interval of the in-doubt two-phase-commit recovery scan.
    pub twopc_recovery_interval_ms: u64,
    /// Age after which a prepared transaction without a decision is resolved by recovery.
    pub twopc_recovery_age_ms: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15432)),
            gate_id: "gate1".into(),
            users: vec![UserConfig {
                name: "postgres".into(),
                password: "postgres".into(),
            }],
            backend_user: "postgres".into(),
            backend_password: "postgres".into(),
            max_client_connections: 10_000,
            backend_pool_size: 32,
            backend_acquire_timeout_ms: 5_000,
            plan_cache_entries: 10_000,
            prepare_simple_queries: true,
            buffer_window_ms: 10_000,
            buffer_max_queries: 10_000,
            twopc_recovery_interval_ms: 5_000,
            twopc_recovery_age_ms: 10_000,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid gate configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl GateConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.into(),
            })
        };
        if self.users.is_empty() {
            return fail("users", "at least one user is required");
        }
        if self.users.iter().any(|u| u.name.is_empty()) {
            return fail("users", "user names must not be empty");
        }
        if self.gate_id.is_empty()
            || !self
                .gate_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return fail("gate_id", "use letters, digits, '-' and '_' only");
        }
        if self.max_client_connections == 0 {
            return fail("max_client_connections", "must be at least 1");
        }
        if self.backend_pool_size == 0 {
            return fail("backend_pool_size", "must be at least 1");
        }
        if self.plan_cache_entries == 0 {
            return fail("plan_cache_entries", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_values_are_named() {
        GateConfig::default().validate().unwrap();
        let config = GateConfig {
            users: vec![],
            ..GateConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "users");
        let config = GateConfig {
            gate_id: "a b".into(),
            ..GateConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "gate_id");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let error = serde_json::from_str::<GateConfig>(r#"{"listen":"127.0.0.1:1","bogus":1}"#)
            .unwrap_err();
        assert!(error.to_string().contains("bogus"), "{error}");
    }
}
