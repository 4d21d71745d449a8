//! `tessera tablet`: one tablet (a PostgreSQL server, its pooler and its gRPC service) as its
//! own process, registered in the topology.
//!
//! # Initial role: a provisional bootstrap
//!
//! Until consensus lands (issue 4), a tablet decides its role once, at start, from its shard's
//! record: if the record names no primary, the tablet claims the shard with a compare-and-set
//! of the record and starts as primary; if the record names this tablet, it is primary again;
//! otherwise it starts as a replica (a new one is copied from the primary's registered
//! PostgreSQL with pg_basebackup; replicas do not serve queries). The compare-and-set makes two
//! tablets starting at once agree on one primary. This is NOT failover: nothing here replaces
//! a primary that dies. Consensus replaces this bootstrap, and then terms on the tablets, not
//! the topology record, decide who is primary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use tessera_tablet::postgres::{PostgresConfig, PostgresError, ReplicationSource};
use tessera_tablet::{InitialRole, Tablet, TabletConfig, TabletError};
use tessera_topology::{TopoError, Topology};

use super::config::{CommonArgs, ComponentConfig, ConfigError, DEFAULT_TOPOLOGY_URL};
use super::{ShutdownSignal, announce_ready, bind, connect_topology, serve_metrics};

/// The tablet's directory when neither `--data-dir` nor the file says otherwise (relative to
/// the working directory).
pub const DEFAULT_TABLET_DIR: &str = "tessera-tablet";

/// Everything `tessera tablet` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabletProcessConfig {
    /// Topology URL: etcd://host:port[,host:port...][/prefix], or grpc://host:port for the
    /// embedded store of a running `tessera up`.
    pub topo: String,
    /// Address of the Prometheus endpoint (`/metrics`); absent = no endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Local address the pooler and gRPC endpoints bind to (`0.0.0.0` in containers).
    /// `tablet.host` is the address other components dial, published in the topology.
    pub bind_address: IpAddr,
    /// The tablet itself. `tablet.initial_role` is ignored by this runner: the provisional
    /// bootstrap (see the module documentation) decides the role from the shard record.
    pub tablet: TabletConfig,
}

impl ComponentConfig for TabletProcessConfig {
    const COMPONENT: &'static str = "tablet";

    fn defaults() -> Result<Self, ConfigError> {
        // Only the fields `TabletConfig` requires are given here; every other tablet and
        // PostgreSQL default comes from those crates' own serde defaults.
        let required = serde_json::json!({
            "id": "zone1-101",
            "zone": "zone1",
            "keyspace": "app",
            "shard": "-",
            "pooler_port": 26432,
            "grpc_port": 27432,
            "postgres": PostgresConfig::under(Path::new(DEFAULT_TABLET_DIR), 25432),
            "initial_role": "replica",
        });
        let tablet = serde_json::from_value(required).map_err(|error| ConfigError::Render {
            component: Self::COMPONENT,
            reason: format!("building the default tablet configuration: {error}"),
        })?;
        Ok(TabletProcessConfig {
            topo: DEFAULT_TOPOLOGY_URL.to_string(),
            metrics_listen: None,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tablet,
        })
    }

    fn topology_url(&mut self) -> &mut String {
        &mut self.topo
    }

    fn metrics_listen(&mut self) -> &mut Option<SocketAddr> {
        &mut self.metrics_listen
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.tablet
            .validate()
            .map_err(|error| ConfigError::in_section(Self::COMPONENT, error.field, error.reason))?;
        // Tablet ids are `<zone>-<number>` by convention; requiring the zone prefix catches a
        // forgotten `--id` (two tablets with the default id would overwrite each other's
        // registration).
        let prefix = format!("{}-", self.tablet.zone);
        if !self.tablet.id.starts_with(&prefix) {
            return Err(ConfigError::invalid(
                Self::COMPONENT,
                "tablet.id",
                format!(
                    "{:?} must start with its zone, {prefix:?} (set --id, e.g. {prefix}101)",
                    self.tablet.id
                ),
            ));
        }
        Ok(())
    }
}

/// Parses `KEY=VALUE` of `--pg-setting`.
fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[derive(Debug, Args)]
pub struct TabletArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Tablet id, `<zone>-<number>`, unique in the cluster (`tablet.id`).
    #[arg(long, env = "TESSERA_TABLET_ID")]
    pub id: Option<String>,
    /// Zone (`tablet.zone`).
    #[arg(long, env = "TESSERA_ZONE")]
    pub zone: Option<String>,
    /// Keyspace; also the name of the PostgreSQL database (`tablet.keyspace`).
    #[arg(long, env = "TESSERA_KEYSPACE")]
    pub keyspace: Option<String>,
    /// Shard key range, e.g. `-80` (`tablet.shard`). Ranges may start with '-'.
    #[arg(long, env = "TESSERA_SHARD", allow_hyphen_values = true)]
    pub shard: Option<String>,
    /// Address other components use to reach this tablet (`tablet.host`).
    #[arg(long, env = "TESSERA_TABLET_HOST")]
    pub host: Option<String>,
    /// Local address to bind the pooler and gRPC endpoints to (`bind_address`).
    #[arg(long, env = "TESSERA_BIND_ADDRESS")]
    pub bind_address: Option<IpAddr>,
    /// PostgreSQL port (`tablet.postgres.port`).
    #[arg(long, env = "TESSERA_PG_PORT")]
    pub pg_port: Option<u16>,
    /// Pooler (PG-wire) port (`tablet.pooler_port`).
    #[arg(long, env = "TESSERA_POOLER_PORT")]
    pub pooler_port: Option<u16>,
    /// gRPC port (`tablet.grpc_port`).
    #[arg(long, env = "TESSERA_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// The tablet's directory: sets `tablet.postgres.data_dir` = DIR/pgdata, `socket_dir` =
    /// DIR/run and `log_file` = DIR/postgres.log.
    #[arg(long, env = "TESSERA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory holding PostgreSQL 15's binaries (`tablet.postgres.bin_dir`).
    #[arg(long, env = "TESSERA_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
    /// PostgreSQL superuser password, also checked by the pooler (`tablet.postgres.password`).
    #[arg(long, env = "TESSERA_PG_PASSWORD", hide_env_values = true)]
    pub pg_password: Option<String>,
    /// Extra PostgreSQL setting KEY=VALUE, repeatable (`tablet.postgres.settings`).
    #[arg(long = "pg-setting", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub pg_settings: Vec<(String, String)>,
}

impl TabletArgs {
    fn apply(&self, config: &mut TabletProcessConfig) {
        if let Some(address) = self.bind_address {
            config.bind_address = address;
        }
        let tablet = &mut config.tablet;
        let strings = [
            (&self.id, &mut tablet.id),
            (&self.zone, &mut tablet.zone),
            (&self.keyspace, &mut tablet.keyspace),
            (&self.shard, &mut tablet.shard),
            (&self.host, &mut tablet.host),
            (&self.pg_password, &mut tablet.postgres.password),
        ];
        for (flag, field) in strings {
            if let Some(value) = flag {
                *field = value.clone();
            }
        }
        if let Some(port) = self.pg_port {
            tablet.postgres.port = port;
        }
        if let Some(port) = self.pooler_port {
            tablet.pooler_port = port;
        }
        if let Some(port) = self.grpc_port {
            tablet.grpc_port = port;
        }
        if let Some(dir) = &self.data_dir {
            let layout = PostgresConfig::under(dir, tablet.postgres.port);
            tablet.postgres.data_dir = layout.data_dir;
            tablet.postgres.socket_dir = layout.socket_dir;
            tablet.postgres.log_file = layout.log_file;
        }
        if let Some(dir) = &self.pg_bin_dir {
            tablet.postgres.bin_dir = dir.clone();
        }
        for (key, value) in &self.pg_settings {
            tablet.postgres.settings.insert(key.clone(), value.clone());
        }
    }
}

/// Decides the initial role (provisional bootstrap, see the module documentation): claims the
/// shard with a compare-and-set when its record names no primary. Returns the role and the
/// shard's primary (this tablet when it is the primary).
pub async fn claim_initial_role(
    topology: &Topology,
    config: &TabletConfig,
) -> anyhow::Result<(InitialRole, String)> {
    let (keyspace, shard, id) = (&config.keyspace, &config.shard, &config.id);
    let hint = || format!("create it first: tessera keyspace create {keyspace} --shards N");
    match topology.get_keyspace(keyspace).await {
        Ok(_) => {}
        Err(TopoError::NotFound { .. }) => {
            anyhow::bail!(
                "keyspace {keyspace} does not exist in the topology; {}",
                hint()
            )
        }
        Err(error) => return Err(error).context(format!("reading keyspace {keyspace}")),
    }
    let claimed = topology
        .update_shard(keyspace, shard, |record| {
            if record.primary.is_none() {
                record.primary = Some(id.clone());
            }
            Ok::<_, TopoError>(())
        })
        .await;
    let (record, _) = match claimed {
        Ok(found) => found,
        Err(TopoError::NotFound { .. }) => {
            let shards = topology.list_shards(keyspace).await.unwrap_or_default();
            let names: Vec<String> = shards.into_iter().map(|(s, _)| s.name).collect();
            anyhow::bail!(
                "shard {keyspace}/{shard} does not exist in the topology (shards of {keyspace}: {}); pass one of them with --shard",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        }
        Err(error) => {
            return Err(error).context(format!("claiming shard {keyspace}/{shard}"));
        }
    };
    let primary = record.primary.unwrap_or_else(|| id.clone());
    let role = if primary == *id {
        InitialRole::Primary
    } else {
        InitialRole::Replica
    };
    Ok((role, primary))
}

/// How long a replica waits for its shard's primary to be registered before it starts without
/// a source (which only works when its data dir already holds a server).
pub const PRIMARY_REGISTRATION_WAIT: Duration = Duration::from_secs(60);

/// Where a new replica copies its data from: the registered PostgreSQL of the shard's primary,
/// reached with this tablet's superuser credentials (all tablets of a shard share them).
/// Waits (bounded) for the primary to register, since both may be starting at the same time.
async fn replication_source(
    topology: &Topology,
    config: &TabletConfig,
    primary: &str,
) -> Option<ReplicationSource> {
    let deadline = tokio::time::Instant::now() + PRIMARY_REGISTRATION_WAIT;
    let mut logged = false;
    loop {
        match topology.list_tablets(None).await {
            Ok(tablets) => {
                if let Some((record, _)) = tablets.into_iter().find(|(t, _)| t.id == primary) {
                    return Some(ReplicationSource {
                        host: record.host,
                        port: record.postgres_port,
                        user: config.postgres.superuser.clone(),
                        password: config.postgres.password.clone(),
                        application_name: config.id.clone(),
                    });
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list tablets to find the primary"),
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(tablet = %config.id, primary, "the shard's primary is not registered; starting without a replication source");
            return None;
        }
        if !logged {
            tracing::info!(tablet = %config.id, primary, "waiting for the shard's primary to register");
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long the endpoints may take to close after SIGINT/SIGTERM before the tablet stops its
/// PostgreSQL anyway. Why: gRPC's graceful shutdown waits for open streams, and a client that
/// keeps a status stream open (a coordinator) must not keep the process from stopping.
pub const ENDPOINT_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a starting tablet waits for a PostgreSQL that still holds its data dir to exit.
/// Why: when a tablet process is killed, its server gets a parent-death signal (immediate
/// shutdown) but needs a moment to exit; a supervisor restarting the tablet at once would
/// otherwise find the data dir in use and give up.
pub const PREVIOUS_SERVER_GRACE: Duration = Duration::from_secs(15);

/// Opens the tablet, waiting (bounded) for a previous incarnation's PostgreSQL to exit.
async fn open_tablet(
    config: &TabletConfig,
    source: Option<ReplicationSource>,
) -> Result<Arc<Tablet>, TabletError> {
    let deadline = tokio::time::Instant::now() + PREVIOUS_SERVER_GRACE;
    let mut logged = false;
    loop {
        match Tablet::open(config.clone(), source.clone()).await {
            Err(TabletError::Postgres(PostgresError::DataDirInUse { pid, .. }))
                if tokio::time::Instant::now() < deadline =>
            {
                if !logged {
                    tracing::warn!(tablet = %config.id, pid, "the data dir is still used by a PostgreSQL (a previous run of this tablet?); waiting for it to exit");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Warns when another process registered the same tablet id with another address: two
/// processes sharing an id would take turns overwriting the registration.
async fn warn_on_identity_clash(topology: &Topology, config: &TabletConfig) {
    if let Ok((existing, _)) = topology.get_tablet(&config.zone, &config.id).await
        && (existing.host != config.host
            || existing.pooler_port != config.pooler_port
            || existing.shard != config.shard
            || existing.keyspace != config.keyspace)
    {
        tracing::warn!(
            tablet = %config.id,
            previous_host = %existing.host,
            previous_pooler_port = existing.pooler_port,
            previous_shard = %existing.shard,
            "replacing a registration of this tablet id with different settings; make sure no other tablet uses this id"
        );
    }
}

pub async fn run(args: TabletArgs) -> anyhow::Result<()> {
    let shutdown = ShutdownSignal::install()?;
    let Some(mut config) = args.common.resolve(|config| args.apply(config))? else {
        return Ok(());
    };
    serve_metrics(config.metrics_listen)?;
    let id = config.tablet.id.clone();
    let pooler = bind(
        SocketAddr::new(config.bind_address, config.tablet.pooler_port),
        &format!("tablet {id} pooler"),
    )
    .await?;
    let grpc = bind(
        SocketAddr::new(config.bind_address, config.tablet.grpc_port),
        &format!("tablet {id} gRPC"),
    )
    .await?;
    let topology = connect_topology(&config.topo).await?;
    let (role, primary) = claim_initial_role(&topology, &config.tablet).await?;
    config.tablet.initial_role = role;
    tracing::info!(tablet = %id, keyspace = %config.tablet.keyspace, shard = %config.tablet.shard, ?role,
        "initial role from the shard record (provisional bootstrap until consensus)");
    let source = match role {
        InitialRole::Primary => None,
        InitialRole::Replica => replication_source(&topology, &config.tablet, &primary).await,
    };
    let tablet = open_tablet(&config.tablet, source)
        .await
        .map_err(|error| anyhow::anyhow!("tablet {id}: {error}"))?;
    warn_on_identity_clash(&topology, &config.tablet).await;
    if let Err(error) = topology.register_tablet(&tablet.record()).await {
        tablet.shutdown().await;
        return Err(error).context(format!("registering tablet {id} in the topology"));
    }
    let role_name = match role {
        InitialRole::Primary => "primary",
        InitialRole::Replica => "replica",
    };
    announce_ready(format_args!(
        "tablet {id} ({role_name} of {}/{}) pooler {}:{} postgres port {}",
        config.tablet.keyspace,
        config.tablet.shard,
        config.tablet.host,
        config.tablet.pooler_port,
        config.tablet.postgres.port
    ));
    let (signalled, signal_seen) = tokio::sync::oneshot::channel::<()>();
    let serving = tessera_tablet::serve(tablet.clone(), pooler, grpc, async {
        shutdown.received().await;
        let _ = signalled.send(());
    });
    let grace_expired = async {
        // Only after the signal: a dropped sender means the endpoints ended on their own.
        if signal_seen.await.is_ok() {
            tokio::time::sleep(ENDPOINT_CLOSE_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = serving => {}
        () = grace_expired => tracing::warn!(
            tablet = %id,
            grace_ms = ENDPOINT_CLOSE_GRACE.as_millis() as u64,
            "the pooler and gRPC endpoints did not close in time after the signal (open client \
             streams, e.g. a coordinator's status stream); stopping PostgreSQL anyway"
        ),
    }
    tablet.shutdown().await;
    tracing::info!(tablet = %id, "tablet stopped");
    Ok(())
}

/// `tessera tablet`: runs a tablet, or with a subcommand (`list`) inspects registered ones.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TabletCommandArgs {
    #[command(subcommand)]
    pub admin: Option<crate::admin::tablet::TabletAdminCommand>,
    #[command(flatten)]
    pub run: TabletArgs,
}

/// Dispatches `tessera tablet [list]`.
pub async fn command(args: TabletCommandArgs) -> anyhow::Result<()> {
    match args.admin {
        Some(admin) => crate::admin::tablet::run(admin).await,
        None => run(args.run).await,
    }
}
