//! `tessera keyspace create|list`.

use std::str::FromStr;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_consensus::policy::PolicySpec;
use tessera_proto::keyrange::KeyRange;
use tessera_topology::records::{KeyspaceRecord, ShardRecord};
use tessera_topology::{DEFAULT_POLICY, DEFAULT_SHARDING_COLUMN, TopoError, Topology};

use super::{print_json, render_table};
use crate::status::TopoArgs;

/// Most shards one `keyspace create` makes; more is a typo rather than a plan.
pub const MAX_SHARDS: usize = 256;

#[derive(Debug, Args)]
pub struct KeyspaceArgs {
    #[command(subcommand)]
    pub command: KeyspaceCommand,
    #[command(flatten)]
    pub topo: TopoArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeyspaceCommand {
    /// Create a keyspace and its shards (evenly split key ranges).
    Create(CreateArgs),
    /// List keyspaces with their sharding column, shards and tables.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Keyspace name; also the database name clients connect to.
    pub name: String,
    /// Tables with this column are sharded by it; tables without it are reference tables.
    #[arg(long, default_value = DEFAULT_SHARDING_COLUMN)]
    pub sharding_column: String,
    /// Number of shards; the key space is split evenly (2 -> `-80`, `80-`).
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Durability policy of every shard, e.g. `at_least_n(2)`, `multi_zone(2)`, `majority`.
    #[arg(long, default_value = DEFAULT_POLICY)]
    pub policy: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A keyspace as `keyspace list --json` prints it.
#[derive(Debug, Serialize)]
pub struct KeyspaceSummary {
    pub name: String,
    pub sharding_column: String,
    pub shards: Vec<String>,
    pub tables: Vec<String>,
}

pub async fn run(args: KeyspaceArgs) -> anyhow::Result<()> {
    let topology = args.topo.connect().await?;
    match args.command {
        KeyspaceCommand::Create(create_args) => {
            println!("{}", create(&topology, &create_args).await?);
            Ok(())
        }
        KeyspaceCommand::List(list_args) => {
            let keyspaces = list(&topology).await?;
            if list_args.json {
                return print_json(&keyspaces);
            }
            if keyspaces.is_empty() {
                println!("no keyspaces (create one with `tessera keyspace create NAME`)");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = keyspaces
                .iter()
                .map(|k| {
                    vec![
                        k.name.clone(),
                        k.sharding_column.clone(),
                        k.shards.join(" "),
                        k.tables.len().to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(&["KEYSPACE", "SHARDING COLUMN", "SHARDS", "TABLES"], &rows)
            );
            Ok(())
        }
    }
}

/// Checks a keyspace name: it is a PostgreSQL database name and a topology path segment.
fn validate_keyspace_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    anyhow::ensure!(
        ok,
        "keyspace name {name:?} must be 1 to 63 letters, digits and '_' (it is also the database name)"
    );
    Ok(())
}

/// Checks a sharding column: an unquoted PostgreSQL identifier, which PostgreSQL folds to
/// lower case, so only lower case can match the column of a created table.
fn validate_column_name(column: &str) -> anyhow::Result<()> {
    let mut chars = column.chars();
    let ok = column.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    anyhow::ensure!(
        ok,
        "sharding column {column:?} must be a lower-case SQL identifier (a-z, 0-9, '_', not starting with a digit)"
    );
    Ok(())
}

/// Creates the keyspace record, then one record per shard. Returns the line to print.
pub async fn create(topology: &Topology, args: &CreateArgs) -> anyhow::Result<String> {
    validate_keyspace_name(&args.name)?;
    validate_column_name(&args.sharding_column)?;
    anyhow::ensure!(
        (1..=MAX_SHARDS).contains(&args.shards),
        "--shards must be between 1 and {MAX_SHARDS} (got {})",
        args.shards
    );
    let policy = PolicySpec::from_str(&args.policy)
        .map_err(|error| anyhow::anyhow!("--policy {:?}: {error}", args.policy))?
        .to_string();
    let ranges = KeyRange::split_evenly(args.shards).map_err(|error| {
        anyhow::anyhow!(
            "cannot split the key space into {} shards: {error}",
            args.shards
        )
    })?;

    let mut record = KeyspaceRecord::new(args.name.clone());
    record.sharding_column = args.sharding_column.clone();
    match topology.create_keyspace(&record).await {
        Ok(_) => {}
        Err(TopoError::AlreadyExists { .. }) => {
            let shards = topology.list_shards(&args.name).await.unwrap_or_default();
            let names: Vec<String> = shards.into_iter().map(|(s, _)| s.name).collect();
            anyhow::bail!(
                "keyspace {} already exists (shards: {}); nothing changed",
                args.name,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
        }
        Err(error) => return Err(error).context(format!("creating keyspace {}", args.name)),
    }
    let mut created = Vec::new();
    for range in ranges {
        let mut shard = ShardRecord::new(args.name.clone(), range.to_string());
        shard.policy = policy.clone();
        if let Err(error) = topology.create_shard(&shard).await {
            anyhow::bail!(
                "keyspace {} was created, but creating shard {} failed: {error} (shards created: {})",
                args.name,
                shard.name,
                if created.is_empty() {
                    "none".to_string()
                } else {
                    created.join(", ")
                }
            );
        }
        created.push(shard.name);
    }
    Ok(format!(
        "created keyspace {} (sharding column {}, policy {policy}) with {} shard(s): {}",
        args.name,
        args.sharding_column,
        created.len(),
        created.join(", ")
    ))
}

/// Every keyspace with its shards and tables.
pub async fn list(topology: &Topology) -> anyhow::Result<Vec<KeyspaceSummary>> {
    let mut summaries = Vec::new();
    for (keyspace, _) in topology
        .list_keyspaces()
        .await
        .context("listing keyspaces")?
    {
        let shards = topology
            .list_shards(&keyspace.name)
            .await
            .with_context(|| format!("listing the shards of {}", keyspace.name))?;
        summaries.push(KeyspaceSummary {
            shards: shards.into_iter().map(|(s, _)| s.name).collect(),
            tables: keyspace.tables.keys().cloned().collect(),
            name: keyspace.name,
            sharding_column: keyspace.sharding_column,
        });
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str, shards: usize) -> CreateArgs {
        CreateArgs {
            name: name.into(),
            sharding_column: DEFAULT_SHARDING_COLUMN.into(),
            shards,
            policy: DEFAULT_POLICY.into(),
        }
    }

    fn memory() -> Topology {
        Topology::new(std::sync::Arc::new(tessera_topology::MemoryTopo::new()))
    }

    #[tokio::test]
    async fn create_makes_evenly_split_shards_and_refuses_a_second_create() {
        // Goal: `keyspace create` writes the keyspace and its shard records, and a second
        // create of the same name fails naming the existing shards without changing anything.
        let topology = memory();
        create(&topology, &args("app", 4)).await.unwrap();
        let listed = list(&topology).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].shards, ["-40", "40-80", "80-c0", "c0-"]);
        let error = create(&topology, &args("app", 2))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("already exists") && error.contains("-40, 40-80"),
            "{error}"
        );
        assert_eq!(list(&topology).await.unwrap()[0].shards.len(), 4);
    }

    #[tokio::test]
    async fn bad_names_counts_and_policies_are_refused_before_writing() {
        // Goal: invalid input is rejected with the offending value named, and nothing is written.
        let topology = memory();
        let cases = [
            (args("bad name", 2), "keyspace name"),
            (args("app", 0), "--shards"),
            (
                CreateArgs {
                    sharding_column: "Tenant".into(),
                    ..args("app", 2)
                },
                "sharding column",
            ),
            (
                CreateArgs {
                    policy: "at_most(2)".into(),
                    ..args("app", 2)
                },
                "--policy",
            ),
        ];
        for (case, expected) in cases {
            let error = create(&topology, &case).await.unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
        assert!(list(&topology).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_policy_is_stored_in_canonical_form() {
        // Goal: a policy typed with spaces is stored the way `status` prints policies.
        let topology = memory();
        let case = CreateArgs {
            policy: "multi_zone( 2 )".into(),
            ..args("app", 1)
        };
        create(&topology, &case).await.unwrap();
        let (shard, _) = topology.get_shard("app", "-").await.unwrap();
        assert_eq!(shard.policy, "multi_zone(2)");
    }
}
