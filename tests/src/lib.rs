//! Harness for end-to-end tests: real PostgreSQL servers, real clients.
//!
//! [`TestCluster`] runs a [`LocalCluster`] (what `tessera up` runs) in-process on free ports in
//! a short temporary directory the unprivileged `postgres` user can enter, with `fsync=off`.

pub mod ha;
pub mod processes;
pub mod proxy;
pub mod raw;
pub mod workload;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tessera_cli::up::{LocalCluster, UpOptions};
use tessera_topology::records::TabletRecord;
use tokio_postgres::{Client, NoTls};

/// Logs go to the test output when `TESSERA_TEST_LOG` is set (e.g. `info`, `tessera_gate=debug`).
pub fn init_tracing() {
    if let Ok(filter) = std::env::var("TESSERA_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A short directory under /tmp (unix socket paths are limited to 107 bytes) that PostgreSQL,
/// running as the `postgres` user, can enter.
pub fn temp_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ts")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    dir
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A base port such that `count` consecutive ports at base, base+1000 and base+2000 are free
/// (the local cluster's PostgreSQL, pooler and gRPC ports).
pub fn free_port_block(count: u16) -> u16 {
    for _ in 0..200 {
        let base: u16 = rand::random_range(20_000..40_000);
        let all_free = (0..count).all(|i| {
            [0u16, 1000, 2000]
                .iter()
                .all(|offset| TcpListener::bind(("127.0.0.1", base + offset + i)).is_ok())
        });
        if all_free {
            return base;
        }
    }
    panic!("no free block of {count} ports found");
}

/// Options for a small test cluster in `dir`.
pub fn test_options(dir: &Path, shards: usize, replicas: usize) -> UpOptions {
    let mut options = UpOptions::new(dir.join("data"));
    options.gate_port = 0;
    options.admin_port = None;
    options.shards = Some(shards);
    options.replicas = Some(replicas);
    options.zones = Some(replicas.max(1));
    options.base_port = Some(free_port_block((shards * replicas) as u16));
    options.pg_settings.insert("fsync".into(), "off".into());
    options
        .pg_settings
        .insert("shared_buffers".into(), "16MB".into());
    options
}

pub struct TestCluster {
    pub cluster: LocalCluster,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start(shards: usize, replicas: usize) -> TestCluster {
        init_tracing();
        let dir = temp_dir();
        let options = test_options(dir.path(), shards, replicas);
        TestCluster::start_with(dir, options).await
    }

    pub async fn start_with(dir: tempfile::TempDir, options: UpOptions) -> TestCluster {
        let cluster = LocalCluster::start(options)
            .await
            .expect("start local cluster");
        TestCluster { cluster, dir }
    }

    pub fn url(&self) -> String {
        self.cluster.url()
    }

    /// A client connected through the gate.
    pub async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    /// The registered tablets.
    pub async fn tablets(&self) -> Vec<TabletRecord> {
        self.cluster
            .topology
            .list_tablets(None)
            .await
            .expect("list tablets")
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    /// A client connected straight to the PostgreSQL of the primary of `shard`, bypassing
    /// Tessera: the way to check where rows physically live.
    pub async fn shard_primary_client(&self, shard: &str) -> Client {
        let (record, _) = self
            .cluster
            .topology
            .get_shard(&self.cluster.layout.keyspace, shard)
            .await
            .expect("shard record");
        let primary = record.primary.expect("shard has a primary");
        let tablet = self
            .tablets()
            .await
            .into_iter()
            .find(|t| t.id == primary)
            .expect("primary registered");
        connect(&format!(
            "postgres://postgres:postgres@127.0.0.1:{}/{}",
            tablet.postgres_port, self.cluster.layout.keyspace
        ))
        .await
    }

    pub async fn stop(self) {
        self.cluster.stop().await;
    }
}

/// Connects with tokio-postgres, retrying briefly while the server comes up.
pub async fn connect(url: &str) -> Client {
    let mut last_error = None;
    for _ in 0..50 {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return client;
            }
            Err(error) => {
                last_error = Some(error);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("cannot connect to {url}: {last_error:?}");
}

/// SQLSTATE of a failed statement, for assertions.
pub fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}
