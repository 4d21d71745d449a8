//! `tessera coordinator`: the failover agent of one zone as its own process. The agent itself
//! is `tessera_coordinator::run`; this module maps the configuration file, environment and
//! flags onto its configuration, connects to the topology and handles signals.

use std::net::SocketAddr;

use clap::Args;
use serde::{Deserialize, Serialize};
use tessera_coordinator::CoordinatorConfig;

use super::config::{CommonArgs, ComponentConfig, ConfigError, DEFAULT_TOPOLOGY_URL};
use super::{ShutdownSignal, announce_ready, connect_topology, serve_metrics};

/// Everything `tessera coordinator` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorProcessConfig {
    /// Topology URL: etcd://host:port[,host:port...][/prefix], or grpc://host:port for the
    /// embedded store of a running `tessera up`.
    pub topo: String,
    /// Address of the Prometheus endpoint (`/metrics`); absent = no endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// The coordinator itself.
    pub coordinator: CoordinatorConfig,
}

impl ComponentConfig for CoordinatorProcessConfig {
    const COMPONENT: &'static str = "coordinator";

    fn defaults() -> Result<Self, ConfigError> {
        Ok(CoordinatorProcessConfig {
            topo: DEFAULT_TOPOLOGY_URL.to_string(),
            metrics_listen: None,
            coordinator: CoordinatorConfig::default(),
        })
    }

    fn topology_url(&mut self) -> &mut String {
        &mut self.topo
    }

    fn metrics_listen(&mut self) -> &mut Option<SocketAddr> {
        &mut self.metrics_listen
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.coordinator
            .validate()
            .map_err(|error| ConfigError::in_section(Self::COMPONENT, error.field, error.reason))
    }
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Zone this coordinator looks after (`coordinator.zone`).
    #[arg(long, env = "TESSERA_ZONE")]
    pub zone: Option<String>,
}

impl CoordinatorArgs {
    fn apply(&self, config: &mut CoordinatorProcessConfig) {
        if let Some(zone) = &self.zone {
            config.coordinator.zone = zone.clone();
        }
    }
}

pub async fn run(args: CoordinatorArgs) -> anyhow::Result<()> {
    let shutdown = ShutdownSignal::install()?;
    let Some(config) = args.common.resolve(|config| args.apply(config))? else {
        return Ok(());
    };
    serve_metrics(config.metrics_listen)?;
    let topology = connect_topology(&config.topo).await?;
    let zone = config.coordinator.zone.clone();
    // `run` polls its shutdown future once it has started.
    tessera_coordinator::run(config.coordinator, topology, async {
        announce_ready(format_args!("coordinator of zone {zone}"));
        shutdown.received().await
    })
    .await
    .map_err(|error| anyhow::anyhow!("coordinator of zone {zone}: {error}"))
}
