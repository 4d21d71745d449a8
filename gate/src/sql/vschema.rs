//! The gate's routing view of one keyspace: which tables exist, and how each is distributed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::plan::SchemaEffect;

pub use tessera_proto::vindex::HashFamily;

/// How a table's rows are distributed over the shards of its keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableKind {
    /// Each row lives on the shard owning the hash of `column` (hashed with `family`).
    Sharded {
        /// Sharding column name (normalised: lower case unless it was quoted).
        column: String,
        /// Hash function family of the column's type.
        #[serde(with = "family_serde")]
        family: HashFamily,
    },
    /// A full copy lives on every shard; writes go to all shards atomically.
    Reference,
}

/// What the gate knows about one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// Distribution of the table.
    pub kind: TableKind,
    /// Column names in table order (as `SELECT *` returns them); used to find the sharding
    /// column in `INSERT` without a column list and to expand `*` for merging.
    pub columns: Vec<String>,
}

impl TableInfo {
    /// A table sharded by `column` (hashed with `family`) with these columns in table order.
    pub fn sharded(column: &str, family: HashFamily, columns: &[&str]) -> Self {
        TableInfo {
            kind: TableKind::Sharded {
                column: column.to_string(),
                family,
            },
            columns: columns.iter().map(ToString::to_string).collect(),
        }
    }

    /// A reference table (a copy on every shard) with these columns in table order.
    pub fn reference(columns: &[&str]) -> Self {
        TableInfo {
            kind: TableKind::Reference,
            columns: columns.iter().map(ToString::to_string).collect(),
        }
    }

    /// The sharding column and family, if the table is sharded.
    pub fn sharding(&self) -> Option<(&str, HashFamily)> {
        match &self.kind {
            TableKind::Sharded { column, family } => Some((column.as_str(), *family)),
            TableKind::Reference => None,
        }
    }

    /// Whether the table has a column with this (normalised) name.
    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|column| column == name)
    }
}

/// The routing schema of one keyspace.
///
/// Table names are normalised the way PostgreSQL folds identifiers: unquoted names are lower
/// case, quoted names keep their case. Tables of the `public` schema are keyed by their bare name,
/// tables of other schemas by `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VSchema {
    /// Keyspace (= logical database) name.
    pub keyspace: String,
    /// Column that makes a newly created table sharded (default `tenant_id`).
    pub sharding_column: String,
    /// Known tables by normalised name.
    pub tables: HashMap<String, TableInfo>,
    /// Bumped on every change; plans made under an older version are stale.
    /// Invariant: never decreases.
    pub version: u64,
}

impl VSchema {
    /// An empty vschema for `keyspace` whose tables are sharded by `sharding_column`.
    pub fn new(keyspace: impl Into<String>, sharding_column: impl Into<String>) -> Self {
        VSchema {
            keyspace: keyspace.into(),
            sharding_column: sharding_column.into(),
            tables: HashMap::new(),
            version: 0,
        }
    }

    /// The table with this normalised name.
    pub fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.get(name)
    }

    /// Applies a schema effect of a DDL statement that succeeded on every shard, and bumps the
    /// version so that cached plans are re-planned.
    ///
    /// Idempotent in the way PostgreSQL's `IF [NOT] EXISTS` is: creating a table that exists
    /// with `if_not_exists` keeps the existing entry; dropping a missing table is a no-op.
    pub fn apply(&mut self, effect: &SchemaEffect) {
        match effect {
            SchemaEffect::CreateTable {
                name,
                info,
                if_not_exists,
            } => {
                if !(*if_not_exists && self.tables.contains_key(name)) {
                    self.tables.insert(name.clone(), info.clone());
                }
            }
            SchemaEffect::DropTable { names, .. } => {
                for name in names {
                    self.tables.remove(name);
                }
            }
            SchemaEffect::AlterTable {
                name,
                new_name,
                columns,
            } => {
                if let Some(mut info) = self.tables.remove(name) {
                    if let Some(columns) = columns {
                        info.columns = columns.clone();
                    }
                    let key = new_name.clone().unwrap_or_else(|| name.clone());
                    self.tables.insert(key, info);
                }
            }
        }
        self.version += 1;
    }
}

/// Serialises [`HashFamily`] (defined in `tessera-proto` without serde) as `int`/`text`/`uuid`.
mod family_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::HashFamily;

    pub fn serialize<S: Serializer>(family: &HashFamily, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match family {
            HashFamily::Int => "int",
            HashFamily::Text => "text",
            HashFamily::Uuid => "uuid",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HashFamily, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "int" => Ok(HashFamily::Int),
            "text" => Ok(HashFamily::Text),
            "uuid" => Ok(HashFamily::Uuid),
            other => Err(serde::de::Error::custom(format!(
                "unknown hash family {other:?} (expected int, text or uuid)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: a vschema survives a JSON round trip (the topology stores it as JSON).
    #[test]
    fn vschema_round_trips_through_json() {
        let mut vschema = VSchema::new("app", "tenant_id");
        vschema.tables.insert(
            "customers".to_string(),
            TableInfo::sharded("tenant_id", HashFamily::Uuid, &["tenant_id", "id"]),
        );
        let json = serde_json::to_string(&vschema).expect("serialise");
        let back: VSchema = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, vschema);
    }

    /// Goal: applying DDL effects creates, renames and drops tables and bumps the version.
    #[test]
    fn apply_effects_changes_tables_and_version() {
        let mut vschema = VSchema::new("app", "tenant_id");
        let info = TableInfo::reference(&["id"]);
        vschema.apply(&SchemaEffect::CreateTable {
            name: "plans".to_string(),
            info: info.clone(),
            if_not_exists: false,
        });
        assert_eq!(vschema.version, 1);
        vschema.apply(&SchemaEffect::AlterTable {
            name: "plans".to_string(),
            new_name: Some("tiers".to_string()),
            columns: Some(vec!["id".to_string(), "name".to_string()]),
        });
        assert!(vschema.table("plans").is_none());
        assert_eq!(vschema.table("tiers").map(|t| t.columns.len()), Some(2));
        vschema.apply(&SchemaEffect::DropTable {
            names: vec!["tiers".to_string()],
            if_exists: false,
        });
        assert!(vschema.tables.is_empty());
        assert_eq!(vschema.version, 3);
    }
}
