//! Tablet configuration: one validated struct; flags, env and files map onto it.

use serde::{Deserialize, Serialize};

use crate::postgres::PostgresConfig;

/// The role a tablet starts in until consensus assigns one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialRole {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabletConfig {
    /// Tablet id, `<zone>-<number>` by convention (e.g. zone1-101).
    pub id: String,
    pub zone: String,
    pub keyspace: String,
    /// Shard key range name, e.g. `-80`.
    pub shard: String,
    /// Address other components use to reach this tablet.
    #[serde(default = "default_host")]
    pub host: String,
    /// Port of the PG-wire pooler endpoint.
    pub pooler_port: u16,
    /// Port of the gRPC status/consensus service.
    pub grpc_port: u16,
    /// The PostgreSQL server this tablet owns.
    pub postgres: PostgresConfig,
    /// Server connections in the pooler's pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long a pooler client waits for a free server connection.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    pub initial_role: InitialRole,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_pool_size() -> usize {
    40
}
fn default_acquire_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug, thiserror::Error)]
#[error("invalid tablet configuration: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

impl TabletConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.into(),
            })
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.id) {
            return fail("id", "use letters, digits, '-' and '_' only");
        }
        if !name_ok(&self.zone) {
            return fail("zone", "use letters, digits, '-' and '_' only");
        }
        if !name_ok(&self.keyspace) {
            return fail("keyspace", "use letters, digits, '-' and '_' only");
        }
        if let Err(error) = self.shard.parse::<tessera_proto::keyrange::KeyRange>() {
            return Err(ConfigError {
                field: "shard",
                reason: error.to_string(),
            });
        }
        if self.pool_size == 0 {
            return fail("pool_size", "must be at least 1");
        }
        if self.pooler_port == 0 || self.grpc_port == 0 {
            return fail("ports", "pooler_port and grpc_port must be set");
        }
        if self.postgres.port == self.pooler_port
            || self.postgres.port == self.grpc_port
            || self.pooler_port == self.grpc_port
        {
            return fail("ports", "postgres, pooler and grpc ports must differ");
        }
        self.postgres.validate().map_err(|error| ConfigError {
            field: "postgres",
            reason: error.to_string(),
        })
    }
}
