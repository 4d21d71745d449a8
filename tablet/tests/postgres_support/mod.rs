//! Setup shared by the real-PostgreSQL test files (`postgres_lifecycle.rs`,
//! `postgres_replication.rs`). Each file uses part of it.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tessera_tablet::postgres::{PostgresConfig, PostgresServer};

/// A short temporary directory (unix socket paths are limited to 107 bytes) that the
/// unprivileged PostgreSQL user can enter. Kept after the test (for its server logs) when
/// `TESSERA_KEEP_TEST_DIRS` is set.
pub fn test_dir() -> tempfile::TempDir {
    let mut directory = tempfile::Builder::new()
        .prefix("tp")
        .tempdir_in("/tmp")
        .expect("create temp dir");
    std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    if std::env::var_os("TESSERA_KEEP_TEST_DIRS").is_some() {
        directory.disable_cleanup(true);
        eprintln!("keeping {}", directory.path().display());
    }
    directory
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// Test configuration: no fsync (speed), everything else as in production.
pub fn test_config(base: &Path, port: u16) -> PostgresConfig {
    let mut config = PostgresConfig::under(base, port);
    config.sync_initdb = false;
    config
        .settings
        .insert("fsync".to_string(), "off".to_string());
    config.start_timeout_ms = 60_000;
    config
}

/// Creates database `app` with an empty table `items (id int PRIMARY KEY)`.
pub async fn create_items_table(server: &PostgresServer) {
    server
        .ensure_database("app")
        .await
        .expect("create database");
    let client = server.connect("app").await.expect("connect");
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .expect("create table");
}
