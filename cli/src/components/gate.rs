//! `tessera gate`: one gate as its own process. It reaches every tablet's pooler over TCP
//! (there are no in-process tablets), discovers keyspaces, shards and tablets from the topology
//! and follows changes with a watch; queries keep running from the cached view while the
//! topology is unavailable.

use std::net::SocketAddr;

use clap::Args;
use serde::{Deserialize, Serialize};
use tessera_gate::{GateConfig, LocalTablets};

use super::config::{CommonArgs, ComponentConfig, ConfigError, DEFAULT_TOPOLOGY_URL};
use super::{ShutdownSignal, announce_ready, bind, connect_topology, serve_metrics};

/// Everything `tessera gate` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateProcessConfig {
    /// Topology URL: etcd://host:port[,host:port...][/prefix], or grpc://host:port for the
    /// embedded store of a running `tessera up`.
    pub topo: String,
    /// Address of the Prometheus endpoint (`/metrics`); absent = no endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// The gate itself (listen address, users, pools, buffering, two-phase commit).
    pub gate: GateConfig,
}

impl ComponentConfig for GateProcessConfig {
    const COMPONENT: &'static str = "gate";

    fn defaults() -> Result<Self, ConfigError> {
        Ok(GateProcessConfig {
            topo: DEFAULT_TOPOLOGY_URL.to_string(),
            metrics_listen: None,
            gate: GateConfig::default(),
        })
    }

    fn topology_url(&mut self) -> &mut String {
        &mut self.topo
    }

    fn metrics_listen(&mut self) -> &mut Option<SocketAddr> {
        &mut self.metrics_listen
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.gate
            .validate()
            .map_err(|error| ConfigError::in_section(Self::COMPONENT, error.field, error.reason))
    }
}

#[derive(Debug, Args)]
pub struct GateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address clients connect to (`gate.listen`).
    #[arg(long, env = "TESSERA_GATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Identity of this gate; must be unique among gates (`gate.gate_id`).
    #[arg(long, env = "TESSERA_GATE_ID")]
    pub gate_id: Option<String>,
    /// User the gate logs into tablet poolers with (`gate.backend_user`).
    #[arg(long, env = "TESSERA_BACKEND_USER")]
    pub backend_user: Option<String>,
    /// Password for tablet poolers (`gate.backend_password`).
    #[arg(long, env = "TESSERA_BACKEND_PASSWORD", hide_env_values = true)]
    pub backend_password: Option<String>,
}

impl GateArgs {
    fn apply(&self, config: &mut GateProcessConfig) {
        if let Some(listen) = self.listen {
            config.gate.listen = listen;
        }
        if let Some(gate_id) = &self.gate_id {
            config.gate.gate_id = gate_id.clone();
        }
        if let Some(user) = &self.backend_user {
            config.gate.backend_user = user.clone();
        }
        if let Some(password) = &self.backend_password {
            config.gate.backend_password = password.clone();
        }
    }
}

pub async fn run(args: GateArgs) -> anyhow::Result<()> {
    let shutdown = ShutdownSignal::install()?;
    let Some(config) = args.common.resolve(|config| args.apply(config))? else {
        return Ok(());
    };
    serve_metrics(config.metrics_listen)?;
    let listener = bind(config.gate.listen, "gate").await?;
    let address = listener.local_addr()?;
    let topology = connect_topology(&config.topo).await?;
    // The gate loads its whole view before serving; reading the keyspaces here first turns an
    // unreadable topology (e.g. a corrupt record) into a start-up error before `ready`.
    let keyspaces = topology.list_keyspaces().await.map_err(|error| {
        anyhow::anyhow!("cannot read the keyspaces from {}: {error}", config.topo)
    })?;
    tracing::info!(gate = %config.gate.gate_id, %address, keyspaces = keyspaces.len(), topo = %config.topo, "starting gate");
    let gate_id = config.gate.gate_id.clone();
    // `tessera_gate::run` first polls its shutdown future when its accept loop starts, i.e.
    // after the topology view is loaded: the right moment to announce readiness.
    let served = tessera_gate::run(
        config.gate,
        listener,
        topology,
        LocalTablets::new(),
        async {
            announce_ready(format_args!("gate {gate_id} listening on {address}"));
            shutdown.received().await
        },
    );
    served
        .await
        .map_err(|error| anyhow::anyhow!("gate {gate_id}: {error}"))?;
    tracing::info!(gate = %gate_id, "gate stopped");
    Ok(())
}
