//! The systems under test and their lifecycles.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tessera_tablet::postgres::{PostgresConfig, PostgresServer, StopMode};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin};

use crate::child::DATABASE;
use crate::pgbouncer::{self, PgBouncer, PoolMode, Upstream};
use crate::system::Account;

/// Server connections per pool: the tablet pool size of `tessera up` (cli/src/up.rs), used for
/// PgBouncer too so both poolers hold the same number of PostgreSQL backends.
pub const POOL_SIZE: usize = 40;
/// User and password of every target (the local cluster's defaults).
pub const USER: &str = "postgres";
pub const PASSWORD: &str = "postgres";

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// pgbench straight to PostgreSQL over TCP.
    Direct,
    /// PgBouncer in front of the direct target's server.
    PgBouncer { session: bool },
    /// gate -> in-process tablet pool -> PostgreSQL, in a child process.
    Tessera { shards: usize, replicas: usize },
}

impl Kind {
    /// Short stable name used in tables and on the command line.
    pub fn label(self) -> String {
        match self {
            Kind::Direct => "direct".into(),
            Kind::PgBouncer { session: false } => "pgbouncer".into(),
            Kind::PgBouncer { session: true } => "pgbouncer-session".into(),
            Kind::Tessera {
                shards,
                replicas: 1,
            } => format!("tessera-{shards}sh"),
            Kind::Tessera { shards, replicas } => format!("tessera-{shards}sh-{replicas}rep"),
        }
    }

    pub fn is_tessera(self) -> bool {
        matches!(self, Kind::Tessera { .. })
    }

    pub fn describe(self) -> String {
        match self {
            Kind::Direct => "pgbench -> PostgreSQL 15 (TCP)".into(),
            Kind::PgBouncer { session: false } => {
                format!("pgbench -> PgBouncer, transaction mode, pool {POOL_SIZE} -> same PostgreSQL (unix socket)")
            }
            Kind::PgBouncer { session: true } => {
                "pgbench -> PgBouncer, session mode, pool sized to the largest client count -> same PostgreSQL (unix socket); only for -M prepared, which transaction mode cannot serve".into()
            }
            Kind::Tessera { shards, replicas } => format!(
                "pgbench -> gate -> in-process tablet pool (pool {POOL_SIZE} per tablet, unix socket) -> {shards} shard(s) x {replicas} tablet(s), own PostgreSQL 15 each{}",
                if replicas > 1 { ", synchronous replication" } else { "" }
            ),
        }
    }
}

/// A running target.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub kind: Kind,
    pub port: u16,
    /// The process whose memory is measured (the gate's process, PgBouncer, the postmaster).
    pub pid: u32,
}

impl Target {
    pub fn label(&self) -> String {
        self.kind.label()
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
            self.port
        )
    }
}

/// A Tessera cluster running in a child process of this binary.
struct TesseraChild {
    child: Child,
    /// Closing it tells the child to stop.
    stdin: Option<ChildStdin>,
}

/// Everything started for a run; stopped (and its processes killed) at the end.
#[derive(Default)]
pub struct Fleet {
    pub targets: Vec<Target>,
    direct: Option<Arc<PostgresServer>>,
    bouncers: Vec<PgBouncer>,
    clusters: Vec<TesseraChild>,
}

impl Fleet {
    /// Starts the direct PostgreSQL server (also the upstream of PgBouncer).
    pub async fn start_direct(
        &mut self,
        work_dir: &Path,
        pg_bin_dir: &Path,
    ) -> anyhow::Result<Target> {
        let port = crate::system::free_port()?;
        let mut config = PostgresConfig::under(&work_dir.join("direct"), port);
        config.bin_dir = pg_bin_dir.to_path_buf();
        // This one server carries pgbench's own connections (up to 64) next to both PgBouncer
        // pools (POOL_SIZE and up to 64, kept open between runs): more than the default 100. Tablets
        // only ever see their pool. The setting sizes a few shared arrays; it does not change
        // the per-query path.
        config
            .settings
            .insert("max_connections".into(), "250".into());
        let server = Arc::new(PostgresServer::new(config)?);
        server.init().await?;
        let pid = server.start().await?;
        server.ensure_database(DATABASE).await?;
        self.direct = Some(server);
        let target = Target {
            kind: Kind::Direct,
            port,
            pid,
        };
        self.targets.push(target.clone());
        Ok(target)
    }

    /// Starts PgBouncer in front of the direct server.
    pub async fn start_pgbouncer(
        &mut self,
        work_dir: &Path,
        mode: PoolMode,
        pool_size: usize,
        max_clients: usize,
        account: Option<&Account>,
    ) -> anyhow::Result<Target> {
        let server = self
            .direct
            .as_ref()
            .context("PgBouncer needs the direct server first")?;
        let config = server.config();
        let bouncer = PgBouncer::start(
            &pgbouncer::dir_for(work_dir, mode),
            mode,
            pool_size,
            max_clients,
            &Upstream {
                socket_dir: &config.socket_dir,
                port: config.port,
                database: DATABASE,
                user: USER,
                password: PASSWORD,
            },
            account,
        )
        .await?;
        let target = Target {
            kind: Kind::PgBouncer {
                session: mode == PoolMode::Session,
            },
            port: bouncer.port,
            pid: bouncer.pid,
        };
        self.bouncers.push(bouncer);
        self.targets.push(target.clone());
        Ok(target)
    }

    /// Starts a local Tessera cluster in a child process and waits until its gate serves.
    pub async fn start_tessera(
        &mut self,
        work_dir: &Path,
        shards: usize,
        replicas: usize,
    ) -> anyhow::Result<Target> {
        let kind = Kind::Tessera { shards, replicas };
        let dir = work_dir.join(kind.label());
        std::fs::create_dir_all(&dir)?;
        let base_port = crate::system::free_port_block((shards * replicas) as u16)?;
        let log: PathBuf = dir.join("cluster.log");
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("cluster")
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--shards",
                &shards.to_string(),
                "--replicas",
                &replicas.to_string(),
            ])
            .args(["--base-port", &base_port.to_string()])
            .env(
                "TESSERA_BENCH_LOG",
                std::env::var("TESSERA_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .kill_on_drop(true)
            .spawn()
            .context("starting the Tessera cluster process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(300), lines.next_line()).await;
        let line = match ready {
            Ok(Ok(Some(line))) => line,
            Ok(_) => bail!(
                "the {} cluster exited before it was ready; see {}",
                kind.label(),
                log.display()
            ),
            Err(_) => bail!(
                "the {} cluster was not ready within 300 s; see {}",
                kind.label(),
                log.display()
            ),
        };
        let field = |name: &str| -> anyhow::Result<u32> {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .and_then(|value| value.parse().ok())
                .with_context(|| format!("malformed ready line {line:?}"))
        };
        let target = Target {
            kind,
            port: u16::try_from(field("port=")?)?,
            pid: field("pid=")?,
        };
        self.clusters.push(TesseraChild { child, stdin });
        self.targets.push(target.clone());
        Ok(target)
    }

    /// Stops everything that was started.
    pub async fn stop(mut self) {
        for bouncer in self.bouncers.drain(..) {
            bouncer.stop().await;
        }
        for cluster in &mut self.clusters {
            cluster.stdin.take();
        }
        for mut cluster in self.clusters.drain(..) {
            if tokio::time::timeout(Duration::from_secs(90), cluster.child.wait())
                .await
                .is_err()
            {
                let _ = cluster.child.kill().await;
            }
        }
        if let Some(server) = self.direct.take()
            && let Err(error) = server.stop(StopMode::Fast).await
        {
            eprintln!("warning: stopping the direct PostgreSQL: {error}");
        }
    }
}
