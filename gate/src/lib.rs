//! The gate: a PostgreSQL-wire front end that parses, routes and executes statements on shards.
//!
//! ```text
//!  client ──▶ server (accept, limits) ──▶ session (startup, SCRAM, protocol state)
//!                                           │ plan (cached) ─▶ route (pure) ─▶ execute
//!                                           ▼
//!             backend (in-process tablet pool | pooler over TCP) ──▶ shard primaries
//!  cluster: topology cache (ArcSwap) fed by a watch      twopc: atomic multi-shard commit
//! ```

pub mod backend;
pub mod cluster;
pub mod config;
pub mod schema;
pub mod server;
mod session;
pub mod sql;
pub mod twopc;

use std::future::Future;
use std::sync::Arc;

pub use backend::LocalTablets;
pub use config::GateConfig;
use tessera_topology::{TopoError, Topology};
use tokio::net::TcpListener;

/// Runs a gate until `shutdown` resolves: loads the topology view, follows it, resolves
/// in-doubt distributed transactions, and serves clients on `listener`.
pub async fn run(
    config: GateConfig,
    listener: TcpListener,
    topology: Topology,
    local: LocalTablets,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TopoError> {
    let config = Arc::new(config);
    let cluster = cluster::Cluster::load(topology).await?;
    let follow = tokio::spawn(cluster.clone().follow());
    let follow_tablets = tokio::spawn(cluster.clone().follow_tablets());
    let backends = backend::Backends::new(config.clone(), local);
    let shared = Arc::new(server::Shared::new(config, cluster.clone(), backends));
    let recovery = tokio::spawn(twopc::recovery_loop(shared.clone()));
    server::serve(listener, shared, shutdown).await;
    follow.abort();
    follow_tablets.abort();
    cluster.close();
    recovery.abort();
    Ok(())
}
