//! The hidden `cluster` subcommand: runs a local Tessera cluster (the same [`LocalCluster`] as
//! `tessera up`) in this process, so the harness can measure it as a process of its own.
//!
//! Protocol with the parent: one line `ready port=<gate port> pid=<pid>` on stdout once the gate
//! serves; the cluster stops when stdin reaches end of file (the parent closed it or died) or on
//! SIGTERM. Logs go to stderr, which the parent sends to a file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tessera_cli::up::{LocalCluster, UpOptions};
use tessera_topology::records::KeyspaceRecord;
use tessera_topology::{TopoError, Topology};
use tokio::io::AsyncReadExt;

/// Keyspace (database) every target serves.
pub const DATABASE: &str = "app";

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Directory for the cluster's data and topology.
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub shards: usize,
    #[arg(long)]
    pub replicas: usize,
    /// First PostgreSQL port; poolers use +1000 and gRPC +2000.
    #[arg(long)]
    pub base_port: u16,
    /// Sharding column of the keyspace (pgbench tables are sharded by `aid`).
    #[arg(long, default_value = "aid")]
    pub sharding_column: String,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::path::absolute(&args.data_dir)?;
    let url = format!("file://{}", data_dir.join("topology.json").display());
    // The keyspace exists before the cluster starts, with the sharding column the workload needs
    // (pgbench's tables have no tenant_id); `LocalCluster` keeps an existing keyspace record.
    {
        let store = tessera_topology::connect(&url)
            .await
            .with_context(|| format!("opening the topology at {url}"))?;
        let record = KeyspaceRecord {
            sharding_column: args.sharding_column.clone(),
            ..KeyspaceRecord::new(DATABASE)
        };
        match Topology::new(store).create_keyspace(&record).await {
            Ok(_) | Err(TopoError::AlreadyExists { .. }) => {}
            Err(error) => return Err(error).context("creating the keyspace"),
        }
    }
    let mut options = UpOptions::new(data_dir.join("cluster"));
    options.gate_port = 0;
    options.admin_port = None;
    // Metrics are recorded as under `tessera up`, which serves them by default, so the figures
    // include what recording them costs.
    options.metrics_port = Some(0);
    options.topo = Some(url);
    options.shards = Some(args.shards);
    options.replicas = Some(args.replicas);
    options.zones = Some(args.replicas.max(1));
    options.keyspace = DATABASE.into();
    options.base_port = Some(args.base_port);
    let cluster = LocalCluster::start(options).await?;
    println!(
        "ready port={} pid={}",
        cluster.gate_address.port(),
        std::process::id()
    );
    wait_for_stop().await;
    tokio::time::timeout(Duration::from_secs(60), cluster.stop())
        .await
        .context("the cluster did not stop within 60 s")?;
    Ok(())
}

/// Resolves when stdin closes or SIGTERM arrives.
async fn wait_for_stop() {
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buffer).await {
            if n == 0 {
                break;
            }
        }
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = stdin_closed => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => stdin_closed.await,
    }
}
