//! The tablet core: owns one PostgreSQL server, its connection pool, its role/serving state and
//! its consensus node.
//!
//! Every query reaches PostgreSQL through [`Tablet::source`] (in-process) or the pooler
//! endpoint (over TCP); both check the serving state first, so changing it fences the tablet
//! immediately. A tablet serves only as the delegated primary of its current term (or, before
//! consensus has established any term, as the bootstrap primary of a new shard).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tessera_proto::tablet::TabletStatus;
use tessera_topology::records::TabletRecord;
use tessera_wire::pool::AcquireFuture;
use tessera_wire::scram::Verifier;
use tessera_wire::{AcquireError, ConnSource, ConnectConfig, Pool, PoolConfig, PooledConn, Target};
use tokio::sync::watch;

use crate::config::{InitialRole, TabletConfig};
use crate::consensus::ConsensusState;
use crate::postgres::{PostgresError, PostgresServer, PostgresState, ReplicationSource, StopMode};

/// How often PostgreSQL's health and WAL position are probed for the status stream.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// A probe that takes longer than this marks PostgreSQL unhealthy (e.g. SIGSTOPped).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

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

#[derive(Debug, Clone, Default)]
struct Health {
    healthy: bool,
    in_recovery: bool,
    lsn: String,
    lsn_value: u64,
    wal_term: u64,
    streaming: bool,
    sync_standby_names: String,
    policy: String,
    commits_waiting: u32,
}

#[derive(Debug, Clone)]
struct State {
    role: Role,
    /// The pooler accepts queries (only a primary, delegated in its current term).
    serving: bool,
    message: String,
    /// The tablet this one replicates from.
    following: Option<String>,
    health: Health,
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
    consensus: ConsensusState,
}

impl Tablet {
    /// Prepares and starts PostgreSQL, then returns the running tablet:
    /// - an initialised data dir is adopted as it is (primary or standby);
    /// - otherwise a replica copies its primary with pg_basebackup from `bootstrap_source`, and
    ///   the first primary of a new shard runs initdb and creates Tessera's schema.
    pub async fn open(
        config: TabletConfig,
        bootstrap_source: Option<ReplicationSource>,
    ) -> Result<Arc<Tablet>, TabletError> {
        config.validate()?;
        let postgres = Arc::new(PostgresServer::new(config.postgres.clone())?);
        let tablet_dir = config
            .postgres
            .data_dir
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| config.postgres.data_dir.clone());
        let consensus = ConsensusState::open(&tablet_dir).map_err(|error| TabletError::Io {
            context: format!("tablet {}: reading its consensus state", config.id),
            error,
        })?;
        let fresh = !postgres.is_initialized();
        if !fresh {
            tracing::info!(tablet = %config.id, data_dir = %config.postgres.data_dir.display(), "adopting existing PostgreSQL data dir");
        } else {
            match (config.initial_role, &bootstrap_source) {
                (InitialRole::Replica, Some(source)) => {
                    tracing::info!(tablet = %config.id, source = %source.address(), "creating a standby with pg_basebackup");
                    postgres.init_standby_from(source).await?;
                }
                (InitialRole::Replica, None) => {
                    return Err(TabletError::Setup {
                        tablet: config.id.clone(),
                        message: "a new replica needs its shard's primary to copy from, and none is known".into(),
                    });
                }
                (InitialRole::Primary, _) => {
                    tracing::info!(tablet = %config.id, data_dir = %config.postgres.data_dir.display(), "initialising PostgreSQL (initdb with data checksums)");
                    postgres.init().await?;
                }
            }
        }
        let pid = postgres.start().await?;
        tracing::info!(tablet = %config.id, pid, port = config.postgres.port, "PostgreSQL running");
        let is_standby = postgres.role().await? == crate::postgres::ServerRole::Standby;
        if !is_standby {
            postgres.ensure_database(&config.keyspace).await?;
            let client = postgres.connect(&config.keyspace).await?;
            client
                .batch_execute(tessera_proto::schema::CREATE_TESSERA_SCHEMA)
                .await
                .map_err(|error| TabletError::Setup {
                    tablet: config.id.clone(),
                    message: format!("creating the tessera schema: {error}"),
                })?;
        }
        // Serve without consensus only as the bootstrap primary of a shard no term was ever
        // established for; otherwise wait to be delegated.
        let bootstrap_primary =
            !is_standby && consensus.term() == 0 && config.initial_role == InitialRole::Primary;
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
                params: vec![(
                    "application_name".into(),
                    format!("tessera-pooler-{}", config.id),
                )],
                connect_timeout_ms: config.acquire_timeout_ms,
            },
            max_size: config.pool_size,
            acquire_timeout_ms: config.acquire_timeout_ms,
        });
        let (changes, _) = watch::channel(0);
        let role = if is_standby {
            Role::Replica
        } else if bootstrap_primary {
            Role::Primary
        } else {
            Role::Starting
        };
        let tablet = Arc::new(Tablet {
            verifier: Verifier::from_password(&config.postgres.password),
            state: RwLock::new(State {
                role,
                serving: bootstrap_primary,
                message: match role {
                    Role::Starting => "waiting for a coordinator to establish a term".into(),
                    _ => String::new(),
                },
                following: None,
                health: Health::default(),
            }),
            config,
            postgres,
            pool,
            changes,
            consensus,
        });
        tokio::spawn(tablet.clone().watch_postgres());
        tokio::spawn(tablet.clone().probe_loop());
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

    pub(crate) fn consensus(&self) -> &ConsensusState {
        &self.consensus
    }

    /// How another tablet of this cluster reaches `host:port` for replication, identifying
    /// itself as this tablet.
    pub fn replication_source(&self, host: &str, port: u16) -> ReplicationSource {
        ReplicationSource {
            host: host.to_string(),
            port,
            user: self.config.postgres.superuser.clone(),
            password: self.config.postgres.password.clone(),
            application_name: self.config.id.clone(),
        }
    }

    /// Subscribes to state changes (for status streams).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn notify_changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.write());
        self.notify_changed();
    }

    pub(crate) fn set_serving(&self, serving: bool, message: String) {
        self.update(|s| {
            s.serving = serving;
            s.message = message;
        });
    }

    /// Records the policy now in force before the next probe reads it back from the WAL, so a
    /// status never shows a finished rule change as neither pending nor applied.
    pub(crate) fn note_policy(&self, policy: String) {
        self.update(|s| s.health.policy = policy);
    }

    pub(crate) fn set_role(&self, role: Role, message: String) {
        self.update(|s| {
            s.role = role;
            if role != Role::Primary {
                s.serving = false;
            }
            s.message = message;
        });
    }

    pub(crate) fn set_following(&self, primary: Option<String>) {
        self.update(|s| s.following = primary);
    }

    pub fn role(&self) -> Role {
        self.state.read().role
    }

    pub fn is_serving(&self) -> bool {
        self.state.read().serving
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
            term: self.consensus.term(),
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

    /// A snapshot of the tablet's state (health and WAL position from the last probe).
    pub fn status(&self) -> TabletStatus {
        let state = self.state.read().clone();
        TabletStatus {
            id: self.config.id.clone(),
            zone: self.config.zone.clone(),
            keyspace: self.config.keyspace.clone(),
            shard: self.config.shard.clone(),
            role: state.role.as_str().to_string(),
            term: self.consensus.term(),
            postgres_pid: self.postgres.pid().unwrap_or(0),
            postgres_port: u32::from(self.config.postgres.port),
            pooler_port: u32::from(self.config.pooler_port),
            data_dir: self.config.postgres.data_dir.display().to_string(),
            lsn: state.health.lsn.clone(),
            serving: state.serving,
            message: state.message,
            lsn_value: state.health.lsn_value,
            wal_term: state.health.wal_term,
            postgres_healthy: state.health.healthy,
            in_recovery: state.health.in_recovery,
            following: state.following.unwrap_or_default(),
            streaming: state.health.streaming,
            agent: self.consensus.agent().unwrap_or_default(),
            sync_standby_names: state.health.sync_standby_names,
            host: self.config.host.clone(),
            policy: state.health.policy,
            commits_waiting: state.health.commits_waiting,
            pending_policy: self.consensus.pending_policy().unwrap_or_default(),
        }
    }

    /// Probes PostgreSQL continuously; a change of health or position wakes status streams.
    async fn probe_loop(self: Arc<Self>) {
        let mut client: Option<tokio_postgres::Client> = None;
        loop {
            let health = tokio::time::timeout(PROBE_TIMEOUT, self.probe(&mut client)).await;
            let health = match health {
                Ok(Some(health)) => health,
                Ok(None) => Health::default(),
                Err(_) => {
                    client = None;
                    Health::default()
                }
            };
            let changed = {
                let mut state = self.state.write();
                let old = &state.health;
                let changed = old.healthy != health.healthy
                    || old.in_recovery != health.in_recovery
                    || old.wal_term != health.wal_term
                    || old.streaming != health.streaming
                    || old.sync_standby_names != health.sync_standby_names
                    || old.policy != health.policy
                    || old.commits_waiting != health.commits_waiting
                    || old.lsn_value != health.lsn_value;
                state.health = health;
                changed
            };
            if changed {
                self.notify_changed();
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn probe(&self, client: &mut Option<tokio_postgres::Client>) -> Option<Health> {
        self.postgres.pid()?;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = self.postgres.connect(&self.config.keyspace).await.ok();
        }
        let row = client
            .as_ref()?
            .query_one(
                "SELECT pg_is_in_recovery(), \
                 (CASE WHEN pg_is_in_recovery() THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                       ELSE pg_current_wal_lsn() END)::text, \
                 coalesce((SELECT max(term) FROM tessera.terms), 0), \
                 coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver LIMIT 1), false), \
                 current_setting('synchronous_standby_names'), \
                 coalesce((SELECT policy FROM tessera.terms ORDER BY term DESC, seq DESC LIMIT 1), ''), \
                 (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep')::int",
                &[],
            )
            .await
            .ok();
        let Some(row) = row else {
            *client = None;
            return None;
        };
        let lsn: Option<String> = row.get(1);
        let lsn = lsn.unwrap_or_default();
        let lsn_value = lsn
            .parse::<crate::postgres::Lsn>()
            .map(|l| l.as_u64())
            .unwrap_or(0);
        Some(Health {
            healthy: true,
            in_recovery: row.get(0),
            lsn,
            lsn_value,
            wal_term: row.get::<_, i64>(2) as u64,
            streaming: row.get(3),
            sync_standby_names: row.get(4),
            policy: row.get(5),
            commits_waiting: row.get::<_, i32>(6).max(0) as u32,
        })
    }

    /// Resumes serving after a drain unless a new term arrived meanwhile (switchover aborted).
    pub(crate) fn resume_after_drain(
        self: &Arc<Self>,
        term: u64,
        after: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tablet = self.clone();
        async move {
            tokio::time::sleep(after).await;
            let still_leader = tablet.consensus.term() == term && tablet.role() == Role::Primary;
            let draining = tablet.state.read().message.starts_with("draining");
            if still_leader && draining {
                tracing::warn!(tablet = %tablet.id(), "switchover did not happen; serving again");
                tablet.set_serving(true, String::new());
            }
        }
    }

    /// Reacts to PostgreSQL exiting on its own: stop serving at once, then restart it. A
    /// primary that crashed comes back without serving: a coordinator decides who leads.
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
            let was_bootstrap_primary = self.state.read().serving && self.consensus.term() == 0;
            self.set_serving(false, format!("PostgreSQL exited ({exit}); restarting"));
            self.pool.reset();
            let mut delay = Duration::from_millis(200);
            loop {
                tokio::time::sleep(delay).await;
                match self.postgres.start().await {
                    Ok(pid) => {
                        tracing::info!(tablet = %self.config.id, pid, "PostgreSQL restarted");
                        // Only a bootstrap primary resumes by itself; in a consensus term the
                        // coordinators re-establish leadership.
                        self.set_serving(
                            was_bootstrap_primary,
                            if was_bootstrap_primary {
                                String::new()
                            } else {
                                "restarted; waiting for a coordinator".into()
                            },
                        );
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
        self.set_serving(false, "shutting down".into());
        self.pool.reset();
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

    fn acquire_now(&self) -> Option<Result<PooledConn, AcquireError>> {
        if let Err(error) = self.tablet.check_serving() {
            return Some(Err(error));
        }
        self.tablet.pool.get_idle().map(Ok)
    }
}
