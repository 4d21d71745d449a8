//! The coordinator: the per-zone failover agent (observe -> analyse -> recover, ARCHITECTURE.md
//! §5).
//!
//! Status: only the runner shape exists. [`run`] validates its configuration, reads the
//! topology once to report what it would watch, and waits for shutdown. Health checks, problem
//! analysis and failover arrive with consensus (issue 4); until then a dead primary is NOT
//! replaced by anyone.

pub mod config;

use std::future::Future;

pub use config::{ConfigError, CoordinatorConfig};
use tessera_topology::{TopoError, Topology};

/// Why a coordinator stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("topology: {0}")]
    Topology(#[from] TopoError),
}

/// Runs one coordinator for `config.zone` until `shutdown` resolves.
///
/// Today it only observes: it logs the tablets of its zone and that failover is not implemented
/// yet. A topology outage while running is not an error (the coordinator never needs the
/// topology to stay up); only a topology that cannot be read at start is.
pub async fn run(
    config: CoordinatorConfig,
    topology: Topology,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    config.validate()?;
    let tablets = topology.list_tablets(Some(&config.zone)).await?;
    tracing::info!(
        zone = %config.zone,
        tablets = tablets.len(),
        "coordinator started"
    );
    tracing::warn!(
        zone = %config.zone,
        "failover is not implemented yet (issue 4): this coordinator does not health-check or \
         recover tablets; a failed primary stays failed"
    );
    shutdown.await;
    tracing::info!(zone = %config.zone, "coordinator stopped");
    Ok(())
}
