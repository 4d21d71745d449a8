//! `tessera status [--json]`: every keyspace, shard and tablet, with live state from each
//! tablet's status service.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tessera_proto::tablet::StatusRequest;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_topology::Topology;
use tessera_topology::records::TabletRecord;

#[derive(Debug, Args)]
pub struct TopoArgs {
    /// Topology: `memory` = the embedded store of a running `tessera up` (reached through its
    /// admin endpoint), or etcd://host:port/prefix, grpc://host:port, file:///path.
    #[arg(long, global = true, default_value = "memory", env = "TESSERA_TOPO")]
    pub topo: String,
    /// Admin endpoint of `tessera up`, used with `--topo memory`.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:15999",
        env = "TESSERA_ADMIN"
    )]
    pub admin: String,
}

impl TopoArgs {
    pub async fn connect(&self) -> anyhow::Result<Topology> {
        let url = if self.topo == "memory" {
            format!("grpc://{}", self.admin)
        } else {
            self.topo.clone()
        };
        let store = tessera_topology::connect(&url).await.with_context(|| {
            if self.topo == "memory" {
                format!("cannot reach the embedded topology of `tessera up` at {}; is the cluster running?", self.admin)
            } else {
                format!("cannot open the topology at {url}")
            }
        })?;
        Ok(Topology::new(store))
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub topo: TopoArgs,
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub keyspaces: Vec<KeyspaceStatus>,
}

#[derive(Debug, Serialize)]
pub struct KeyspaceStatus {
    pub name: String,
    pub sharding_column: String,
    pub shards: Vec<ShardStatus>,
}

#[derive(Debug, Serialize)]
pub struct ShardStatus {
    pub name: String,
    pub serving: bool,
    pub policy: String,
    pub term: u64,
    pub primary: Option<String>,
    pub tablets: Vec<TabletStatusJson>,
}

#[derive(Debug, Serialize)]
pub struct TabletStatusJson {
    pub id: String,
    pub zone: String,
    pub shard: String,
    pub role: String,
    pub term: u64,
    pub postgres_pid: u32,
    pub postgres_port: u16,
    pub pooler_port: u16,
    pub data_dir: String,
    pub lsn: String,
    pub serving: bool,
    pub reachable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Policy in force on this tablet's WAL (newest rules entry).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub policy: String,
    /// A rule change in flight on this primary.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pending_policy: String,
    /// Commits waiting for the standbys the policy requires (writes blocked).
    #[serde(skip_serializing_if = "is_zero")]
    pub commits_waiting: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TabletStatusJson {
    /// What an operator should notice: the tablet's message, blocked commits, a rule change.
    fn notes(&self) -> String {
        let mut notes = Vec::new();
        if !self.message.is_empty() {
            notes.push(self.message.clone());
        }
        if self.commits_waiting > 0 {
            notes.push(format!(
                "{} commits wait for standbys the policy requires",
                self.commits_waiting
            ));
        }
        if !self.pending_policy.is_empty() {
            notes.push(format!(
                "changing policy {} -> {}",
                self.policy, self.pending_policy
            ));
        }
        if notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", notes.join("; "))
        }
    }
}

async fn tablet_status(record: &TabletRecord, primary_hint: Option<&str>) -> TabletStatusJson {
    let address = format!("http://{}:{}", record.host, record.grpc_port);
    let live = async {
        let mut client = TabletClient::connect(address).await?;
        let status = client.status(StatusRequest {}).await?.into_inner();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
    };
    match tokio::time::timeout(Duration::from_secs(3), live).await {
        Ok(Ok(status)) => TabletStatusJson {
            id: record.id.clone(),
            zone: record.zone.clone(),
            shard: record.shard.clone(),
            role: status.role,
            term: status.term,
            postgres_pid: status.postgres_pid,
            postgres_port: record.postgres_port,
            pooler_port: record.pooler_port,
            data_dir: status.data_dir,
            lsn: status.lsn,
            serving: status.serving,
            reachable: true,
            message: status.message,
            policy: status.policy,
            pending_policy: status.pending_policy,
            commits_waiting: status.commits_waiting,
        },
        outcome => TabletStatusJson {
            id: record.id.clone(),
            zone: record.zone.clone(),
            shard: record.shard.clone(),
            // Unreachable: show the role the topology last recorded.
            role: if primary_hint == Some(record.id.as_str()) {
                "primary"
            } else {
                "replica"
            }
            .into(),
            term: 0,
            postgres_pid: 0,
            postgres_port: record.postgres_port,
            pooler_port: record.pooler_port,
            data_dir: record.data_dir.clone(),
            lsn: String::new(),
            serving: false,
            reachable: false,
            message: match outcome {
                Ok(Err(error)) => format!("unreachable: {error}"),
                _ => "unreachable: no answer within 3 s".into(),
            },
            policy: String::new(),
            pending_policy: String::new(),
            commits_waiting: 0,
        },
    }
}

/// Gathers the status of the whole cluster.
pub async fn collect(topology: &Topology) -> anyhow::Result<ClusterStatus> {
    let tablets = topology
        .list_tablets(None)
        .await
        .context("listing tablets")?;
    let mut keyspaces = Vec::new();
    for (keyspace, _) in topology
        .list_keyspaces()
        .await
        .context("listing keyspaces")?
    {
        let mut shards = Vec::new();
        for (shard, _) in topology.list_shards(&keyspace.name).await? {
            let members: Vec<&TabletRecord> = tablets
                .iter()
                .map(|(t, _)| t)
                .filter(|t| t.keyspace == keyspace.name && t.shard == shard.name)
                .collect();
            let statuses = futures::future::join_all(
                members
                    .iter()
                    .map(|t| tablet_status(t, shard.primary.as_deref())),
            )
            .await;
            shards.push(ShardStatus {
                term: statuses
                    .iter()
                    .map(|t| t.term)
                    .max()
                    .unwrap_or(shard.term)
                    .max(shard.term),
                name: shard.name,
                serving: shard.serving,
                policy: shard.policy,
                primary: shard.primary,
                tablets: statuses,
            });
        }
        keyspaces.push(KeyspaceStatus {
            name: keyspace.name,
            sharding_column: keyspace.sharding_column,
            shards,
        });
    }
    Ok(ClusterStatus { keyspaces })
}

pub fn render_text(status: &ClusterStatus) -> String {
    let mut out = String::new();
    for keyspace in &status.keyspaces {
        out.push_str(&format!(
            "keyspace {} (sharding column {})\n",
            keyspace.name, keyspace.sharding_column
        ));
        for shard in &keyspace.shards {
            out.push_str(&format!(
                "  shard {:<6} policy {:<16} term {:<4} primary {}{}\n",
                shard.name,
                shard.policy,
                shard.term,
                shard.primary.as_deref().unwrap_or("-"),
                if shard.serving { "" } else { "  (not serving)" }
            ));
            out.push_str(&format!(
                "    {:<11} {:<6} {:<11} {:>4} {:>8} {:>6} {:<12} {:<7} {}\n",
                "TABLET", "ZONE", "ROLE", "TERM", "PG PID", "PORT", "LSN", "SERVING", "DATA DIR"
            ));
            for tablet in &shard.tablets {
                out.push_str(&format!(
                    "    {:<11} {:<6} {:<11} {:>4} {:>8} {:>6} {:<12} {:<7} {}{}\n",
                    tablet.id,
                    tablet.zone,
                    tablet.role,
                    tablet.term,
                    tablet.postgres_pid,
                    tablet.postgres_port,
                    if tablet.lsn.is_empty() {
                        "-"
                    } else {
                        &tablet.lsn
                    },
                    if tablet.serving { "yes" } else { "no" },
                    tablet.data_dir,
                    tablet.notes()
                ));
            }
        }
    }
    out
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let topology = args.topo.connect().await?;
    let status = collect(&topology).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render_text(&status));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tablet() -> TabletStatusJson {
        TabletStatusJson {
            id: "zone1-101".into(),
            zone: "zone1".into(),
            shard: "-80".into(),
            role: "primary".into(),
            term: 3,
            postgres_pid: 42,
            postgres_port: 15500,
            pooler_port: 15600,
            data_dir: "/data/zone1-101".into(),
            lsn: "0/3000060".into(),
            serving: true,
            reachable: true,
            message: String::new(),
            policy: "at_least_n(2)".into(),
            pending_policy: String::new(),
            commits_waiting: 0,
        }
    }

    #[test]
    fn blocked_writes_and_a_policy_change_in_flight_are_shown() {
        // Goal: an operator sees from `tessera status` that writes wait for the policy.
        assert_eq!(tablet().notes(), "");
        let blocked = TabletStatusJson {
            pending_policy: "multi_zone(3)".into(),
            commits_waiting: 4,
            ..tablet()
        };
        assert_eq!(
            blocked.notes(),
            "  (4 commits wait for standbys the policy requires; changing policy at_least_n(2) -> multi_zone(3))"
        );
        let json = serde_json::to_value(&blocked).expect("serializable");
        assert_eq!(json["commits_waiting"], 4);
        assert_eq!(json["pending_policy"], "multi_zone(3)");
        assert!(
            serde_json::to_value(tablet())
                .unwrap()
                .get("commits_waiting")
                .is_none()
        );
    }
}
