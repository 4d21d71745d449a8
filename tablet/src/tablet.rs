//! The tablet core: owns one PostgreSQL server, its connection pool and its role/serving state.
//!
//! Every query reaches PostgreSQL through [`Tablet::source`] (in-process) or the pooler
//! endpoint (over TCP); both check the serving state first, so changing it fences the tablet
//! immediately.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tessera_proto::tablet::TabletStatus;
use tessera_topology::records::TabletRecord;
use tessera_wire::pool::AcquireFuture;
use tessera_wire::scram::Verifier;
use tessera_wire::{AcquireError, ConnSource, ConnectConfig, Pool, PoolConfig, Target};
use tokio::sync::watch;

use crate::config::{InitialRole, TabletConfig};
use crate::postgres::{PostgresError, PostgresServer, PostgresState, StopMode};

/// Replication/consensus role, as shown in `tessera status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Starting,
    Primary,
    Replica,
    Observer,
    Quarantined,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Observer => "observer",
            Role::Quarantined => "quarantined",
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    role: Role,
    /// Invariant: never decreases.
    term: u64,
    /// The pooler accepts queries (only a primary in its current term).
    serving: bool,
    message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TabletError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("topology: {0}")]
    Topology(#[from] tessera_topology::TopoError),
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error("tablet {tablet}: {message}")]
    Setup { tablet: String, message: String },
}

pub struct Tablet {
    config: TabletConfig,
    postgres: Arc<PostgresServer>,
    pool: Pool,
    state: RwLock<State>,
    changes: watch::Sender<u64>,
    verifier: Verifier,
    control: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Tablet {
    /// Initialises PostgreSQL if needed (or adopts the existing data dir), starts it, prepares
    /// the keyspace database and returns the running tablet.
    pub async fn open(config: TabletConfig) -> Result<Arc<Tablet>, TabletError> {
        config.validate()?;
        let postgres = Arc::new(PostgresServer::new(config.postgres.clone())?);
        if postgres.is_initialized() {
            tracing::info!(tablet = %config.id, data_dir = %config.postgres.data_dir.display(), "adopting existing PostgreSQL data dir");
        } else {
            tracing::info!(tablet = %config.id, data_dir = %config.postgres.data_dir.display(), "initialising PostgreSQL (initdb with data checksums)");
            postgres.init().await?;
        }
        let pid = postgres.start().await?;
        tracing::info!(tablet = %config.id, pid, port = config.postgres.port, "PostgreSQL running");
        postgres.ensure_database(&config.keyspace).await?;
        let role = match config.initial_role {
            InitialRole::Primary => Role::Primary,
            InitialRole::Replica => Role::Replica,
        };
        if role == Role::Primary {
            let client = postgres.connect(&config.keyspace).await?;
            client
                .batch_execute(tessera_proto::schema::CREATE_TESSERA_SCHEMA)
                .await
                .map_err(|error| TabletError::Setup {
                    tablet: config.id.clone(),
                    message: format!("creating the tessera schema: {error}"),
                })?;
        }
        let pool = Pool::new(PoolConfig {
            name: config.id.clone(),
            connect: ConnectConfig {
                target: Target::Unix {
                    path: postgres
                        .config()
                        .socket_dir
                        .join(format!(".s.PGSQL.{}", config.postgres.port)),
                },
                user: config.postgres.superuser.clone(),
                password: config.postgres.password.clone(),
                database: config.keyspace.clone(),
                params: vec![("application_name".into(), format!("tessera-pooler-{}", config.id))],
                connect_timeout_ms: config.acquire_timeout_ms,
            },
            max_size: config.pool_size,
            acquire_timeout_ms: config.acquire_timeout_ms,
        });
        let (changes, _) = watch::channel(0);
        let tablet = Arc::new(Tablet {
            verifier: Verifier::from_password(&config.postgres.password),
            state: RwLock::new(State {
                role,
                term: 0,
                serving: role == Role::Primary,
                message: if role == Role::Replica {
                    "replication is not configured yet".into()
                } else {
                    String::new()
                },
            }),
            config,
            postgres,
            pool,
            changes,
            control: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(tablet.clone().watch_postgres());
        Ok(tablet)
    }

    pub fn config(&self) -> &TabletConfig {
        &self.config
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn postgres(&self) -> &PostgresServer {
        &self.postgres
    }

    /// Subscribes to state changes (for status streams).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.write());
        self.changes.send_modify(|n| *n += 1);
    }

    /// Checks that queries may run here now; the answer every pooler client gets when not.
    pub fn check_serving(&self) -> Result<(), AcquireError> {
        let state = self.state.read();
        if state.serving {
            return Ok(());
        }
        Err(AcquireError::NotServing {
            tablet: self.config.id.clone(),
            reason: if state.message.is_empty() {
                format!("role is {}", state.role.as_str())
            } else {
                format!("role is {} ({})", state.role.as_str(), state.message)
            },
            term: state.term,
        })
    }

    /// Connections for an in-process gate: the same fencing as the pooler endpoint.
    pub fn source(self: &Arc<Self>) -> Arc<dyn ConnSource> {
        Arc::new(TabletSource {
            tablet: self.clone(),
        })
    }

    /// The registration this tablet publishes in the topology.
    pub fn record(&self) -> TabletRecord {
        TabletRecord {
            id: self.config.id.clone(),
            zone: self.config.zone.clone(),
            keyspace: self.config.keyspace.clone(),
            shard: self.config.shard.clone(),
            host: self.config.host.clone(),
            postgres_port: self.config.postgres.port,
            pooler_port: self.config.pooler_port,
            grpc_port: self.config.grpc_port,
            data_dir: self.config.postgres.data_dir.display().to_string(),
        }
    }

    /// A snapshot of the tablet's state, with PostgreSQL's current WAL position.
    pub async fn status(&self) -> TabletStatus {
        let state = self.state.read().clone();
        let lsn = self.current_lsn().await.unwrap_or_default();
        TabletStatus {
            id: self.config.id.clone(),
            zone: self.config.zone.clone(),
            keyspace: self.config.keyspace.clone(),
            shard: self.config.shard.clone(),
            role: state.role.as_str().to_string(),
            term: state.term,
            postgres_pid: self.postgres.pid().unwrap_or(0),
            postgres_port: u32::from(self.config.postgres.port),
            pooler_port: u32::from(self.config.pooler_port),
            data_dir: self.config.postgres.data_dir.display().to_string(),
            lsn,
            serving: state.serving,
            message: state.message,
        }
    }

    async fn current_lsn(&self) -> Option<String> {
        self.postgres.pid()?;
        let mut control = self.control.lock().await;
        if control.as_ref().is_none_or(|c| c.is_closed()) {
            *control = self.postgres.connect(&self.config.keyspace).await.ok();
        }
        let client = control.as_ref()?;
        let query = "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text";
        match tokio::time::timeout(Duration::from_secs(2), client.query_one(query, &[])).await {
            Ok(Ok(row)) => row.get::<_, Option<String>>(0),
            _ => {
                *control = None;
                None
            }
        }
    }

    /// Reacts to PostgreSQL exiting on its own: stop serving at once, then restart it.
    async fn watch_postgres(self: Arc<Self>) {
        let mut exits = self.postgres.exits();
        loop {
            if exits.changed().await.is_err() {
                return;
            }
            let state = *exits.borrow_and_update();
            let PostgresState::Exited {
                pid,
                exit,
                expected: false,
            } = state
            else {
                continue;
            };
            tracing::error!(tablet = %self.config.id, pid, %exit, "PostgreSQL exited unexpectedly");
            metrics::counter!("tessera_tablet_postgres_crashes_total").increment(1);
            let was_serving = self.state.read().serving;
            self.update(|s| {
                s.serving = false;
                s.message = format!("PostgreSQL exited ({exit}); restarting");
            });
            self.pool.reset();
            let mut delay = Duration::from_millis(200);
            loop {
                tokio::time::sleep(delay).await;
                match self.postgres.start().await {
                    Ok(pid) => {
                        tracing::info!(tablet = %self.config.id, pid, "PostgreSQL restarted");
                        self.update(|s| {
                            s.serving = was_serving && s.role == Role::Primary;
                            s.message.clear();
                        });
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(tablet = %self.config.id, %error, "PostgreSQL restart failed; retrying");
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// Stops serving and shuts PostgreSQL down (fast mode).
    pub async fn shutdown(&self) {
        self.update(|s| {
            s.serving = false;
            s.message = "shutting down".into();
        });
        self.pool.reset();
        *self.control.lock().await = None;
        if let Err(error) = self.postgres.stop(StopMode::Fast).await {
            tracing::warn!(tablet = %self.config.id, %error, "stopping PostgreSQL failed");
        }
    }
}

/// In-process connection source with the tablet's fencing check.
struct TabletSource {
    tablet: Arc<Tablet>,
}

impl ConnSource for TabletSource {
    fn acquire(&self) -> AcquireFuture<'_> {
        Box::pin(async move {
            self.tablet.check_serving()?;
            self.tablet.pool.get().await
        })
    }
}
