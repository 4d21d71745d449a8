//! `tessera shard list`.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_topology::{TopoError, Topology};

use super::{missing_keyspace, print_json, render_table};
use crate::status::TopoArgs;

#[derive(Debug, Args)]
pub struct ShardArgs {
    #[command(subcommand)]
    pub command: ShardCommand,
    #[command(flatten)]
    pub topo: TopoArgs,
}

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// List the shards of a keyspace: serving state, policy, primary hint and tablets.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Keyspace whose shards to list.
    #[arg(long, default_value = "app")]
    pub keyspace: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A shard as `shard list --json` prints it.
#[derive(Debug, Serialize)]
pub struct ShardSummary {
    pub keyspace: String,
    pub name: String,
    pub serving: bool,
    pub policy: String,
    /// Primary named by the shard record (a hint; consensus terms on the tablets decide).
    pub primary: Option<String>,
    pub term: u64,
    /// Tablets registered for this shard.
    pub tablets: Vec<String>,
}

pub async fn run(args: ShardArgs) -> anyhow::Result<()> {
    let topology = args.topo.connect().await?;
    let ShardCommand::List(list_args) = args.command;
    let shards = list(&topology, &list_args.keyspace).await?;
    if list_args.json {
        return print_json(&shards);
    }
    let rows: Vec<Vec<String>> = shards
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                if s.serving { "yes" } else { "no" }.to_string(),
                s.policy.clone(),
                s.primary.clone().unwrap_or_else(|| "-".into()),
                s.term.to_string(),
                if s.tablets.is_empty() {
                    "-".into()
                } else {
                    s.tablets.join(" ")
                },
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(
            &["SHARD", "SERVING", "POLICY", "PRIMARY", "TERM", "TABLETS"],
            &rows
        )
    );
    Ok(())
}

/// The shards of `keyspace`; an error naming the existing keyspaces when it does not exist.
pub async fn list(topology: &Topology, keyspace: &str) -> anyhow::Result<Vec<ShardSummary>> {
    match topology.get_keyspace(keyspace).await {
        Ok(_) => {}
        Err(TopoError::NotFound { .. }) => return Err(missing_keyspace(topology, keyspace).await),
        Err(error) => return Err(error).context(format!("reading keyspace {keyspace}")),
    }
    let tablets = topology
        .list_tablets(None)
        .await
        .context("listing tablets")?;
    let shards = topology
        .list_shards(keyspace)
        .await
        .with_context(|| format!("listing the shards of {keyspace}"))?;
    Ok(shards
        .into_iter()
        .map(|(shard, _)| ShardSummary {
            tablets: tablets
                .iter()
                .filter(|(t, _)| t.keyspace == keyspace && t.shard == shard.name)
                .map(|(t, _)| t.id.clone())
                .collect(),
            keyspace: shard.keyspace,
            name: shard.name,
            serving: shard.serving,
            policy: shard.policy,
            primary: shard.primary,
            term: shard.term,
        })
        .collect())
}
