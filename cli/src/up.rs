//! `tessera up`: a complete local cluster in one process — embedded topology, every tablet with
//! its own PostgreSQL, and a gate — until Ctrl-C or SIGTERM.
//!
//! [`LocalCluster`] is the library form, used by end-to-end tests.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use std::time::Duration;

use tessera_coordinator::CoordinatorConfig;
use tessera_gate::GateConfig;
use tessera_tablet::postgres::{DEFAULT_BIN_DIR, PostgresConfig};
use tessera_tablet::{InitialRole, Tablet, TabletConfig};
use tessera_topology::records::{KeyspaceRecord, ShardRecord};
use tessera_topology::{TopoError, TopoServer, Topology};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::components::{ShutdownSignal, bind};
use crate::layout::{Layout, TabletSpec};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of shards of the keyspace (only when creating the cluster).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Tablets per shard (only when creating the cluster).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Zones the tablets are spread over (only when creating the cluster).
    #[arg(long)]
    pub zones: Option<usize>,
    /// Port of the gate (PostgreSQL clients connect here).
    #[arg(long, default_value_t = 15432)]
    pub port: u16,
    /// Where tablets keep their PostgreSQL data and the embedded topology.
    #[arg(long, default_value = "./tessera-data")]
    pub data_dir: PathBuf,
    /// Topology store URL; default: embedded, persisted in the data dir.
    #[arg(long)]
    pub topo: Option<String>,
    /// Keyspace (database name clients connect to), when creating the cluster.
    #[arg(long, default_value = "app")]
    pub keyspace: String,
    /// First PostgreSQL port; poolers use +1000 and gRPC +2000 (only when creating the cluster).
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Port of the admin gRPC endpoint that serves the embedded topology to `tessera status`.
    #[arg(long, default_value_t = 15999)]
    pub admin_port: u16,
    /// Port of the Prometheus metrics endpoint (/metrics); 0 disables it.
    #[arg(long, default_value_t = 15990)]
    pub metrics_port: u16,
    /// Directory holding PostgreSQL 15's initdb and postgres.
    #[arg(long, env = "TESSERA_PG_BIN_DIR", default_value = DEFAULT_BIN_DIR)]
    pub pg_bin_dir: PathBuf,
    /// Run PostgreSQL with fsync=off: faster, and loses data on a machine crash. Tests only.
    #[arg(long, hide = true)]
    pub unsafe_no_fsync: bool,
}

/// Everything needed to start a local cluster.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub gate_port: u16,
    /// `None`: no admin endpoint.
    pub admin_port: Option<u16>,
    /// Port of the Prometheus endpoint (`0`: any free port). `None`: no endpoint, and no
    /// recorder installed by the cluster (there can be one per process).
    pub metrics_port: Option<u16>,
    pub topo: Option<String>,
    pub shards: Option<usize>,
    pub replicas: Option<usize>,
    pub zones: Option<usize>,
    pub keyspace: String,
    pub base_port: Option<u16>,
    pub pg_bin_dir: PathBuf,
    pub pg_settings: BTreeMap<String, String>,
    /// Gate settings; `listen` and `gate_id` are set by the cluster.
    pub gate: GateConfig,
    /// Coordinator settings; `zone` is set per coordinator.
    pub coordinator: CoordinatorConfig,
    /// How long to wait for every shard's first establishment before giving up.
    pub ready_timeout: Duration,
}

impl UpOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> UpOptions {
        UpOptions {
            data_dir: data_dir.into(),
            gate_port: 15432,
            admin_port: Some(15999),
            metrics_port: None,
            topo: None,
            shards: None,
            replicas: None,
            zones: None,
            keyspace: "app".into(),
            base_port: None,
            pg_bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
            pg_settings: BTreeMap::new(),
            gate: GateConfig::default(),
            coordinator: CoordinatorConfig::default(),
            ready_timeout: Duration::from_secs(120),
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    pub layout: Layout,
    pub topology: Topology,
    pub tablets: Vec<Arc<Tablet>>,
    pub gate_address: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn resolve_layout(options: &UpOptions) -> anyhow::Result<Layout> {
    let stored = Layout::load(&options.data_dir)?;
    let requested = Layout {
        keyspace: options.keyspace.clone(),
        shards: options.shards.unwrap_or(2),
        replicas: options.replicas.unwrap_or(3),
        zones: options.zones.unwrap_or(3),
        base_port: options.base_port.unwrap_or(25432),
    };
    let Some(stored) = stored else {
        requested.validate()?;
        requested.save(&options.data_dir)?;
        return Ok(requested);
    };
    let conflicts = [
        (
            "--shards",
            options.shards.is_some_and(|v| v != stored.shards),
        ),
        (
            "--replicas",
            options.replicas.is_some_and(|v| v != stored.replicas),
        ),
        ("--zones", options.zones.is_some_and(|v| v != stored.zones)),
        (
            "--base-port",
            options.base_port.is_some_and(|v| v != stored.base_port),
        ),
    ];
    if let Some((flag, _)) = conflicts.iter().find(|(_, differs)| *differs) {
        bail!(
            "{flag} differs from the cluster stored in {} ({} shards x {} replicas over {} zones, base port {}); \
             drop the flag to restart that cluster, or use another --data-dir",
            options.data_dir.display(),
            stored.shards,
            stored.replicas,
            stored.zones,
            stored.base_port
        );
    }
    Ok(stored)
}

/// Creates the keyspace and shard records on first start; keeps existing ones.
async fn ensure_topology(
    topology: &Topology,
    layout: &Layout,
    tablets: &[TabletSpec],
) -> anyhow::Result<()> {
    match topology
        .create_keyspace(&KeyspaceRecord::new(layout.keyspace.clone()))
        .await
    {
        Ok(_) | Err(TopoError::AlreadyExists { .. }) => {}
        Err(error) => return Err(error).context("creating the keyspace in the topology"),
    }
    for shard in layout.shard_names()? {
        let mut record = ShardRecord::new(layout.keyspace.clone(), shard.clone());
        // at_least_n(2) (the primary plus one standby) needs a second tablet.
        record.policy = format!("at_least_n({})", layout.replicas.min(2));
        record.primary = tablets
            .iter()
            .find(|t| t.shard == shard && t.replica == 0)
            .map(|t| t.id.clone());
        match topology.create_shard(&record).await {
            Ok(_) | Err(TopoError::AlreadyExists { .. }) => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("creating shard {shard} in the topology"));
            }
        }
    }
    Ok(())
}

impl LocalCluster {
    pub async fn start(options: UpOptions) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(&options.data_dir)
            .with_context(|| format!("data dir {} is not writable", options.data_dir.display()))?;
        let data_dir = std::path::absolute(&options.data_dir)
            .with_context(|| format!("cannot resolve {}", options.data_dir.display()))?;
        let layout = resolve_layout(&options)?;
        let specs = layout.tablets(&data_dir)?;
        layout.check_port_free(&specs, "--port", options.gate_port)?;
        if let Some(port) = options.admin_port {
            layout.check_port_free(&specs, "--admin-port", port)?;
        }
        check_binaries(&options.pg_bin_dir)?;
        if let Some(port) = options.metrics_port {
            layout.check_port_free(&specs, "--metrics-port", port)?;
            // Before the gate starts: it registers its hot counters with the recorder then.
            crate::telemetry::serve_metrics(SocketAddr::from(([127, 0, 0, 1], port)))
                .map_err(anyhow::Error::msg)?;
        }

        let gate_listener = bind(
            SocketAddr::from(([127, 0, 0, 1], options.gate_port)),
            "gate",
        )
        .await?;
        let gate_address = gate_listener.local_addr()?;
        let admin_listener = match options.admin_port {
            Some(port) => Some(bind(SocketAddr::from(([127, 0, 0, 1], port)), "admin").await?),
            None => None,
        };
        let mut tablet_listeners = Vec::new();
        for spec in &specs {
            let pooler = bind(
                SocketAddr::from(([127, 0, 0, 1], spec.pooler_port)),
                &format!("{} pooler", spec.id),
            )
            .await?;
            let grpc = bind(
                SocketAddr::from(([127, 0, 0, 1], spec.grpc_port)),
                &format!("{} gRPC", spec.id),
            )
            .await?;
            tablet_listeners.push((pooler, grpc));
        }

        let url = match &options.topo {
            Some(url) => url.clone(),
            None => format!("file://{}", data_dir.join("topology.json").display()),
        };
        let store = tessera_topology::connect(&url)
            .await
            .with_context(|| format!("cannot open the topology at {url}"))?;
        let topology = Topology::new(store.clone());
        ensure_topology(&topology, &layout, &specs).await?;
        let shards = topology.list_shards(&layout.keyspace).await?;
        let primaries: HashMap<String, Option<String>> = shards
            .into_iter()
            .map(|(s, _)| (s.name, s.primary))
            .collect();

        tracing::info!(tablets = specs.len(), data_dir = %data_dir.display(), "starting tablets");
        // Primaries first: a new replica is a base backup of its shard's primary.
        let is_primary = |spec: &TabletSpec| {
            primaries.get(&spec.shard).cloned().flatten().as_deref() == Some(spec.id.as_str())
        };
        let (first, rest): (Vec<&TabletSpec>, Vec<&TabletSpec>) =
            specs.iter().partition(|spec| is_primary(spec));
        let mut tablets: Vec<Arc<Tablet>> = Vec::new();
        let mut failure = None;
        for wave in [first, rest] {
            let opened = futures::future::join_all(wave.iter().map(|spec| {
                let source = specs
                    .iter()
                    .find(|p| p.shard == spec.shard && is_primary(p) && p.id != spec.id)
                    .map(|primary| tessera_tablet::postgres::ReplicationSource {
                        host: "127.0.0.1".into(),
                        port: primary.postgres_port,
                        user: "postgres".into(),
                        password: "postgres".into(),
                        application_name: spec.id.clone(),
                    });
                Tablet::open(
                    tablet_config(spec, &layout, &options, is_primary(spec)),
                    source,
                )
            }))
            .await;
            for (spec, result) in wave.iter().zip(opened) {
                match result {
                    Ok(tablet) => tablets.push(tablet),
                    Err(error) => {
                        failure
                            .get_or_insert_with(|| anyhow::anyhow!("tablet {}: {error}", spec.id));
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(error) = failure {
            for tablet in &tablets {
                tablet.shutdown().await;
            }
            return Err(error);
        }
        // Keep the layout order (listeners were bound in that order).
        tablets.sort_by_key(|t| specs.iter().position(|s| s.id == t.id()));
        for tablet in &tablets {
            topology.register_tablet(&tablet.record()).await?;
        }

        let (stop, stopped) = watch::channel(false);
        let wait_stop = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let mut tasks = Vec::new();
        for (tablet, (pooler, grpc)) in tablets.iter().zip(tablet_listeners) {
            tasks.push(tokio::spawn(tessera_tablet::serve(
                tablet.clone(),
                pooler,
                grpc,
                wait_stop(),
            )));
        }
        if let Some(listener) = admin_listener {
            let server = TopoServer::new(store.clone());
            let shutdown = wait_stop();
            tasks.push(tokio::spawn(async move {
                if let Err(error) = server.serve(listener, shutdown).await {
                    tracing::error!(%error, "admin endpoint failed");
                }
            }));
        }
        let local = tablets
            .iter()
            .map(|t| (t.id().to_string(), t.source()))
            .collect();
        let gate_config = GateConfig {
            listen: gate_address,
            gate_id: "up".into(),
            ..options.gate.clone()
        };
        let gate_topology = topology.clone();
        let shutdown = wait_stop();
        tasks.push(tokio::spawn(async move {
            if let Err(error) =
                tessera_gate::run(gate_config, gate_listener, gate_topology, local, shutdown).await
            {
                tracing::error!(%error, "gate failed");
            }
        }));
        for zone in 1..=layout.zones {
            let config = CoordinatorConfig {
                zone: format!("zone{zone}"),
                ..options.coordinator.clone()
            };
            let coordinator_topology = topology.clone();
            let shutdown = wait_stop();
            tasks.push(tokio::spawn(async move {
                if let Err(error) =
                    tessera_coordinator::run(config, coordinator_topology, shutdown).await
                {
                    tracing::error!(%error, "coordinator failed");
                }
            }));
        }
        if let Err(error) = wait_established(&tablets, &layout, options.ready_timeout).await {
            let _ = stop.send(true);
            for task in tasks {
                let _ = task.await;
            }
            for tablet in &tablets {
                tablet.shutdown().await;
            }
            return Err(error);
        }
        Ok(LocalCluster {
            layout,
            topology,
            tablets,
            gate_address,
            stop,
            tasks,
        })
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:postgres@{}:{}/{}",
            self.gate_address.ip(),
            self.gate_address.port(),
            self.layout.keyspace
        )
    }

    /// Stops the gate and the tablets, and every PostgreSQL server.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        futures::future::join_all(self.tablets.iter().map(|t| t.shutdown())).await;
    }
}

/// Waits until every shard has a primary serving in an established term.
async fn wait_established(
    tablets: &[Arc<Tablet>],
    layout: &Layout,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let shards = layout.shard_names()?;
    loop {
        let missing: Vec<&String> = shards
            .iter()
            .filter(|shard| {
                !tablets.iter().any(|t| {
                    let status = t.status();
                    status.shard == **shard && status.serving && status.term > 0
                })
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no primary was established within {} s for shard(s) {}; see the log for the coordinators' problems",
                timeout.as_secs(),
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check_binaries(bin_dir: &Path) -> anyhow::Result<()> {
    for binary in ["initdb", "postgres", "pg_ctl"] {
        let path = bin_dir.join(binary);
        if !path.is_file() {
            bail!(
                "PostgreSQL binary {} not found: install PostgreSQL 15 (apt-get install postgresql-15) or pass --pg-bin-dir",
                path.display()
            );
        }
    }
    Ok(())
}

fn tablet_config(
    spec: &TabletSpec,
    layout: &Layout,
    options: &UpOptions,
    primary: bool,
) -> TabletConfig {
    let mut postgres = PostgresConfig::under(&spec.dir, spec.postgres_port);
    postgres.bin_dir = options.pg_bin_dir.clone();
    postgres.settings = options.pg_settings.clone();
    TabletConfig {
        id: spec.id.clone(),
        zone: spec.zone.clone(),
        keyspace: layout.keyspace.clone(),
        shard: spec.shard.clone(),
        host: "127.0.0.1".into(),
        pooler_port: spec.pooler_port,
        grpc_port: spec.grpc_port,
        postgres,
        pool_size: 40,
        acquire_timeout_ms: 5_000,
        initial_role: if primary {
            InitialRole::Primary
        } else {
            InitialRole::Replica
        },
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // Registered first, so a Ctrl-C during a long start (initdb) still stops cleanly.
    let shutdown = ShutdownSignal::install()?;
    let mut pg_settings = BTreeMap::new();
    if args.unsafe_no_fsync {
        pg_settings.insert("fsync".to_string(), "off".to_string());
    }
    let options = UpOptions {
        data_dir: args.data_dir,
        gate_port: args.port,
        admin_port: Some(args.admin_port),
        metrics_port: (args.metrics_port != 0).then_some(args.metrics_port),
        topo: args.topo,
        shards: args.shards,
        replicas: args.replicas,
        zones: args.zones,
        keyspace: args.keyspace,
        base_port: args.base_port,
        pg_bin_dir: args.pg_bin_dir,
        pg_settings,
        gate: GateConfig::default(),
        coordinator: CoordinatorConfig::default(),
        ready_timeout: Duration::from_secs(120),
    };
    let cluster = LocalCluster::start(options).await?;
    println!("ready: {}", cluster.url());
    shutdown.received().await;
    cluster.stop().await;
    Ok(())
}
