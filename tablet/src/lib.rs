//! A tablet manages one PostgreSQL server: its lifecycle, its pooler, its status service and (in
//! the consensus work) its replication role.
//!
//! ```text
//!   gate ──PG wire──▶ pooler ─┐ (fencing: serving state checked per borrow)
//!   gate (in-process) ────────┼─▶ Pool ──unix socket──▶ PostgreSQL (postgres module)
//!   coordinators, CLI ─gRPC─▶ service (status stream)
//! ```

pub mod config;
pub mod consensus;
pub mod pooler;
pub mod postgres;
pub mod service;
pub mod tablet;

use std::future::Future;

pub use config::{InitialRole, TabletConfig};
pub use tablet::{Role, Tablet, TabletError};
use tessera_topology::Topology;
use tokio::net::TcpListener;

/// Runs one tablet until `shutdown` resolves: starts PostgreSQL, registers in the topology,
/// serves the pooler and the gRPC service, then stops PostgreSQL.
pub async fn run(
    config: TabletConfig,
    pooler_listener: TcpListener,
    grpc_listener: TcpListener,
    topology: Topology,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TabletError> {
    let tablet = Tablet::open(config, None).await?;
    topology.register_tablet(&tablet.record()).await?;
    serve(tablet.clone(), pooler_listener, grpc_listener, shutdown).await;
    tablet.shutdown().await;
    Ok(())
}

/// Serves an open tablet's pooler and gRPC endpoints until `shutdown` resolves (PostgreSQL
/// keeps running; see [`Tablet::shutdown`]).
pub async fn serve(
    tablet: std::sync::Arc<Tablet>,
    pooler_listener: TcpListener,
    grpc_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pooler = {
        let mut stopped = stopped.clone();
        tokio::spawn(pooler::serve(pooler_listener, tablet.clone(), async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    };
    let grpc = {
        let mut stopped = stopped.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
        tonic::transport::Server::builder()
            .add_service(service::TabletService::server(tablet.clone()))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
    };
    let grpc = tokio::spawn(grpc);
    shutdown.await;
    let _ = stop.send(true);
    let _ = pooler.await;
    // Graceful gRPC shutdown waits for open status streams; a watcher that never hangs up
    // must not keep the tablet alive.
    let abort = grpc.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(2), grpc)
        .await
        .is_err()
    {
        abort.abort();
    }
}
