//! The typed records stored in the topology, as JSON.
//!
//! Forward compatibility: unknown fields are ignored when reading, and fields added later get
//! serde defaults, so an older component can read what a newer one wrote. (An older component
//! that rewrites such a record drops the fields it does not know; schema additions must
//! therefore be optional.) Anything that is not valid JSON for the record, or a record whose name
//! disagrees with its key, is `TopoError::Corrupt` — never a panic, and never silently replaced.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::TopoError;

/// The default sharding column of a keyspace (multi-tenant convention, ARCHITECTURE.md §3).
pub const DEFAULT_SHARDING_COLUMN: &str = "tenant_id";

/// The default durability policy of a new shard.
pub const DEFAULT_POLICY: &str = "at_least_n(2)";

fn default_sharding_column() -> String {
    DEFAULT_SHARDING_COLUMN.to_string()
}

fn default_policy() -> String {
    DEFAULT_POLICY.to_string()
}

/// A keyspace (logical database) and its vschema. Key: `paths::keyspace(name)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceRecord {
    pub name: String,
    /// Tables with this column are sharded by it; tables without it are reference tables.
    #[serde(default = "default_sharding_column")]
    pub sharding_column: String,
    /// Known tables by name, with per-table overrides.
    #[serde(default)]
    pub tables: BTreeMap<String, TableRecord>,
}

impl KeyspaceRecord {
    /// A keyspace with the default sharding column and no tables yet.
    pub fn new(name: impl Into<String>) -> KeyspaceRecord {
        KeyspaceRecord {
            name: name.into(),
            sharding_column: default_sharding_column(),
            tables: BTreeMap::new(),
        }
    }
}

/// How a table's rows are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// Rows are spread over shards by the sharding column.
    Sharded,
    /// Every shard holds a full copy; writes go to all shards atomically.
    Reference,
}

/// One table of a keyspace's vschema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRecord {
    pub kind: TableKind,
    /// The sharding column of a sharded table.
    #[serde(default)]
    pub column: Option<String>,
    /// SQL type of the sharding column, e.g. "bigint", "text", "uuid" (selects the hash).
    #[serde(default)]
    pub column_type: Option<String>,
    /// All columns, in table order.
    #[serde(default)]
    pub columns: Vec<String>,
}

/// One shard of a keyspace. Key: `paths::shard(keyspace, name)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub keyspace: String,
    /// Key range in Vitess notation: "-80", "80-", "-".
    pub name: String,
    /// Whether gates route queries to this shard (false for resharding targets until switched).
    #[serde(default)]
    pub serving: bool,
    /// Durability policy, e.g. "at_least_n(2)"; coordinators apply changes as ruleset changes.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Last known primary tablet id. A hint only: the consensus term on the tablets is the truth.
    #[serde(default)]
    pub primary: Option<String>,
    /// Term in which `primary` was established (hint, like `primary`).
    #[serde(default)]
    pub term: u64,
}

impl ShardRecord {
    /// A serving shard with the default policy and no known primary.
    pub fn new(keyspace: impl Into<String>, name: impl Into<String>) -> ShardRecord {
        ShardRecord {
            keyspace: keyspace.into(),
            name: name.into(),
            serving: true,
            policy: default_policy(),
            primary: None,
            term: 0,
        }
    }
}

/// One tablet (a PostgreSQL server plus its pooler). Key: `paths::tablet(zone, id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TabletRecord {
    pub id: String,
    pub zone: String,
    pub keyspace: String,
    pub shard: String,
    pub host: String,
    pub postgres_port: u16,
    pub pooler_port: u16,
    pub grpc_port: u16,
    #[serde(default)]
    pub data_dir: String,
}

/// Serialises a record. Records are plain data, so this cannot fail in practice; the error path
/// exists so that no caller has to unwrap.
pub fn encode<T: Serialize>(key: &str, record: &T) -> Result<Vec<u8>, TopoError> {
    serde_json::to_vec(record).map_err(|error| TopoError::Internal {
        reason: format!("encoding the record for {key}: {error}"),
    })
}

/// Parses the value stored at `key`, mapping any failure to `TopoError::Corrupt`.
pub fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, TopoError> {
    serde_json::from_slice(value).map_err(|error| TopoError::Corrupt {
        key: key.to_string(),
        reason: error.to_string(),
    })
}

/// Fails with `Corrupt` when a record's own name disagrees with the key it is stored under.
pub(crate) fn check_identity(
    key: &str,
    field: &str,
    stored: &str,
    expected: &str,
) -> Result<(), TopoError> {
    if stored == expected {
        Ok(())
    } else {
        Err(TopoError::Corrupt {
            key: key.to_string(),
            reason: format!("record {field} is {stored:?} but its key says {expected:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: records round-trip, and a minimal keyspace record gets the documented defaults.
    #[test]
    fn round_trip_and_defaults() {
        let mut keyspace = KeyspaceRecord::new("app");
        keyspace.tables.insert(
            "orders".into(),
            TableRecord {
                kind: TableKind::Sharded,
                column: Some("tenant_id".into()),
                column_type: Some("bigint".into()),
                columns: vec!["tenant_id".into(), "id".into()],
            },
        );
        let bytes = encode("/k", &keyspace).unwrap();
        assert_eq!(decode::<KeyspaceRecord>("/k", &bytes).unwrap(), keyspace);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"kind\":\"sharded\""), "{text}");

        let minimal: KeyspaceRecord = decode("/k", br#"{"name":"app"}"#).unwrap();
        assert_eq!(minimal.sharding_column, "tenant_id");
        assert!(minimal.tables.is_empty());
        let shard: ShardRecord = decode("/s", br#"{"keyspace":"app","name":"-80"}"#).unwrap();
        assert_eq!(shard.policy, "at_least_n(2)");
        assert_eq!(shard.primary, None);
    }

    /// Goal: fields written by a newer version are ignored, not an error.
    #[test]
    fn unknown_fields_are_tolerated() {
        let tablet: TabletRecord = decode(
            "/t",
            br#"{"id":"z1-1","zone":"z1","keyspace":"app","shard":"-80","host":"h",
                 "postgres_port":1,"pooler_port":2,"grpc_port":3,"data_dir":"/d",
                 "future_field":{"nested":[1,2]}}"#,
        )
        .unwrap();
        assert_eq!(tablet.grpc_port, 3);
        let table: TableRecord = decode("/t", br#"{"kind":"reference","new":true}"#).unwrap();
        assert_eq!(table.kind, TableKind::Reference);
    }

    /// Goal: garbage, wrong types, an unknown table kind and a missing required field are all
    /// Corrupt errors naming the key.
    #[test]
    fn corrupt_values_are_typed_errors() {
        for bad in [
            &b"\xff\xfe"[..],
            b"not json",
            b"{\"name\":5}",
            b"[]",
            b"{\"keyspace\":\"app\"}",
        ] {
            match decode::<ShardRecord>("/tessera/keyspaces/app/shards/-80", bad) {
                Err(TopoError::Corrupt { key, .. }) => {
                    assert_eq!(key, "/tessera/keyspaces/app/shards/-80")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert!(matches!(
            decode::<TableRecord>("/t", br#"{"kind":"mirrored"}"#),
            Err(TopoError::Corrupt { .. })
        ));
    }
}
