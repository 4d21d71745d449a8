//! Publishing schema changes made through the gate (CREATE/DROP/ALTER TABLE) in the topology,
//! so every gate routes the new tables.

use tessera_proto::vindex::HashFamily;
use tessera_topology::TopoError;
use tessera_topology::records::{KeyspaceRecord, TableKind as RecordKind, TableRecord};

use crate::cluster::Cluster;
use crate::sql::plan::SchemaEffect;
use crate::sql::vschema::{TableInfo, TableKind};

/// The SQL type recorded for a sharding column of this hash family.
fn family_type(family: HashFamily) -> &'static str {
    match family {
        HashFamily::Int => "bigint",
        HashFamily::Text => "text",
        HashFamily::Uuid => "uuid",
    }
}

pub fn table_record(info: &TableInfo) -> TableRecord {
    match &info.kind {
        TableKind::Sharded { column, family } => TableRecord {
            kind: RecordKind::Sharded,
            column: Some(column.clone()),
            column_type: Some(family_type(*family).to_string()),
            columns: info.columns.clone(),
        },
        TableKind::Reference => TableRecord {
            kind: RecordKind::Reference,
            column: None,
            column_type: None,
            columns: info.columns.clone(),
        },
    }
}

/// Applies effects to a keyspace record. Returns whether anything changed.
pub fn apply(record: &mut KeyspaceRecord, effects: &[SchemaEffect]) {
    for effect in effects {
        match effect {
            SchemaEffect::CreateTable {
                name,
                info,
                if_not_exists,
            } => {
                if *if_not_exists && record.tables.contains_key(name) {
                    continue;
                }
                record.tables.insert(name.clone(), table_record(info));
            }
            SchemaEffect::DropTable { names, .. } => {
                for name in names {
                    record.tables.remove(name);
                }
            }
            SchemaEffect::AlterTable {
                name,
                new_name,
                columns,
            } => {
                let Some(mut table) = record.tables.remove(name) else {
                    continue;
                };
                if let Some(columns) = columns {
                    if let Some(column) = &table.column
                        && !columns.contains(column)
                    {
                        // The sharding column was renamed: follow it by position.
                        if let Some(position) = table.columns.iter().position(|c| c == column) {
                            table.column = columns.get(position).cloned();
                        }
                    }
                    table.columns = columns.clone();
                }
                record
                    .tables
                    .insert(new_name.clone().unwrap_or_else(|| name.clone()), table);
            }
        }
    }
}

/// Writes the effects into the keyspace record (compare-and-set, retried) and refreshes the
/// local view so the next statement of this session already sees them.
pub async fn publish(
    cluster: &Cluster,
    keyspace: &str,
    effects: &[SchemaEffect],
) -> Result<(), TopoError> {
    cluster
        .topology()
        .update_keyspace(keyspace, |record| {
            apply(record, effects);
            Ok::<(), TopoError>(())
        })
        .await?;
    cluster.refresh().await
}
