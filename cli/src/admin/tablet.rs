//! `tessera tablet list`: the tablets registered in the topology (`tessera status` adds each
//! tablet's live state).

use std::collections::HashMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_topology::Topology;
use tessera_topology::records::TabletRecord;

use super::{print_json, render_table};
use crate::status::TopoArgs;

#[derive(Debug, Subcommand)]
pub enum TabletAdminCommand {
    /// List registered tablets (address, ports, shard).
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tablets of this zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// Only tablets of this keyspace.
    #[arg(long)]
    pub keyspace: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub topo: TopoArgs,
}

/// A tablet as `tablet list --json` prints it: its registration plus the primary hint.
#[derive(Debug, Serialize)]
pub struct TabletSummary {
    #[serde(flatten)]
    pub record: TabletRecord,
    /// Whether its shard record names it primary (a hint; consensus terms decide).
    pub primary: bool,
}

pub async fn run(command: TabletAdminCommand) -> anyhow::Result<()> {
    let TabletAdminCommand::List(args) = command;
    let topology = args.topo.connect().await?;
    let tablets = list(&topology, args.zone.as_deref(), args.keyspace.as_deref()).await?;
    if args.json {
        return print_json(&tablets);
    }
    if tablets.is_empty() {
        println!("no tablets registered");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tablets
        .iter()
        .map(|summary| {
            let t = &summary.record;
            vec![
                t.id.clone(),
                t.zone.clone(),
                t.keyspace.clone(),
                t.shard.clone(),
                if summary.primary { "primary" } else { "-" }.to_string(),
                t.host.clone(),
                t.postgres_port.to_string(),
                t.pooler_port.to_string(),
                t.grpc_port.to_string(),
                t.data_dir.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(
            &[
                "TABLET", "ZONE", "KEYSPACE", "SHARD", "RECORD", "HOST", "POSTGRES", "POOLER",
                "GRPC", "DATA DIR"
            ],
            &rows
        )
    );
    Ok(())
}

/// Registered tablets, optionally of one zone and/or keyspace.
pub async fn list(
    topology: &Topology,
    zone: Option<&str>,
    keyspace: Option<&str>,
) -> anyhow::Result<Vec<TabletSummary>> {
    let tablets = topology
        .list_tablets(zone)
        .await
        .context("listing tablets")?;
    let mut primaries: HashMap<(String, String), Option<String>> = HashMap::new();
    for (keyspace_record, _) in topology
        .list_keyspaces()
        .await
        .context("listing keyspaces")?
    {
        for (shard, _) in topology.list_shards(&keyspace_record.name).await? {
            primaries.insert((shard.keyspace, shard.name), shard.primary);
        }
    }
    Ok(tablets
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| keyspace.is_none_or(|k| t.keyspace == k))
        .map(|t| TabletSummary {
            primary: primaries
                .get(&(t.keyspace.clone(), t.shard.clone()))
                .is_some_and(|p| p.as_deref() == Some(t.id.as_str())),
            record: t,
        })
        .collect())
}
