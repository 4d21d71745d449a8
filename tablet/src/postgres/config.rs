//! Configuration of one tablet's PostgreSQL server.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::PostgresError;

/// Where Debian/Ubuntu's postgresql-15 package installs the server binaries.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Unix socket paths are limited by `sizeof(sockaddr_un.sun_path)` (108 bytes with the NUL).
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Settings of one PostgreSQL server owned by a tablet.
///
/// Paths may be relative; [`super::PostgresServer::new`] makes them absolute once, because
/// PostgreSQL binaries run with `/` as their working directory.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Directory holding `initdb` and `postgres`.
    #[serde(default = "default_bin_dir")]
    pub bin_dir: PathBuf,
    /// PGDATA: the cluster's data directory.
    pub data_dir: PathBuf,
    /// Directory of the server's unix socket; created and handed to the run-as user. Keep the
    /// path short: the socket path must fit in 107 bytes.
    pub socket_dir: PathBuf,
    /// `listen_addresses` of the server (comma-separated; empty disables TCP).
    #[serde(default = "default_listen_address")]
    pub listen_address: String,
    /// TCP port, also the suffix of the unix socket name.
    pub port: u16,
    /// Bootstrap superuser created by `initdb`, used by the control path.
    #[serde(default = "default_superuser")]
    pub superuser: String,
    /// Password of the superuser (SCRAM-SHA-256). Never logged.
    #[serde(default = "default_password")]
    pub password: String,
    /// Extra settings (GUCs) written to the Tessera-managed file; they override Tessera's
    /// defaults. Tests may pass `fsync = off`. `port`, `listen_addresses` and
    /// `unix_socket_directories` come from the fields above and are refused here.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// File receiving PostgreSQL's stdout and stderr (its server log). Appended to.
    pub log_file: PathBuf,
    /// Account that runs PostgreSQL when Tessera runs as root (PostgreSQL refuses root).
    /// Ignored when Tessera is not root: PostgreSQL then runs as Tessera's own user.
    #[serde(default = "default_run_as_user")]
    pub run_as_user: String,
    /// How long `start` waits for the server to accept connections, crash recovery included.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// How long `stop` waits for the requested shutdown mode before escalating.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// How long `pg_basebackup` and `pg_rewind` may run. They copy data, so size this to the
    /// database and the network; the default is one hour.
    #[serde(default = "default_copy_timeout_ms")]
    pub copy_timeout_ms: u64,
    /// Whether `initdb`, `pg_basebackup` and `pg_rewind` fsync what they write. Only tests
    /// should turn this off.
    #[serde(default = "default_true")]
    pub sync_initdb: bool,
}

fn default_bin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_BIN_DIR)
}
fn default_listen_address() -> String {
    "127.0.0.1".to_string()
}
fn default_superuser() -> String {
    "postgres".to_string()
}
fn default_password() -> String {
    "postgres".to_string()
}
fn default_run_as_user() -> String {
    "postgres".to_string()
}
fn default_start_timeout_ms() -> u64 {
    120_000
}
fn default_stop_timeout_ms() -> u64 {
    60_000
}
fn default_copy_timeout_ms() -> u64 {
    3_600_000
}
fn default_true() -> bool {
    true
}

impl PostgresConfig {
    /// A configuration with every default, laid out under one base directory:
    /// `<base>/pgdata` (data), `<base>/run` (socket) and `<base>/postgres.log`.
    pub fn under(base_dir: &Path, port: u16) -> PostgresConfig {
        PostgresConfig {
            bin_dir: default_bin_dir(),
            data_dir: base_dir.join("pgdata"),
            socket_dir: base_dir.join("run"),
            listen_address: default_listen_address(),
            port,
            superuser: default_superuser(),
            password: default_password(),
            settings: BTreeMap::new(),
            log_file: base_dir.join("postgres.log"),
            run_as_user: default_run_as_user(),
            start_timeout_ms: default_start_timeout_ms(),
            stop_timeout_ms: default_stop_timeout_ms(),
            copy_timeout_ms: default_copy_timeout_ms(),
            sync_initdb: true,
        }
    }

    /// Checks what can be checked without touching the file system.
    pub fn validate(&self) -> Result<(), PostgresError> {
        let invalid = |reason: String| Err(PostgresError::InvalidConfig { reason });
        if self.port == 0 {
            return invalid("port must not be 0".to_string());
        }
        if self.superuser.is_empty() {
            return invalid("superuser must not be empty".to_string());
        }
        if self.password.is_empty() {
            return invalid("password must not be empty (SCRAM authentication needs one)".into());
        }
        let socket_dir = std::path::absolute(&self.socket_dir).map_err(|error| {
            PostgresError::io(format!("resolving {}", self.socket_dir.display()), error)
        })?;
        let socket_path_bytes =
            socket_dir.as_os_str().len() + format!("/.s.PGSQL.{}", self.port).len();
        if socket_path_bytes > MAX_SOCKET_PATH_BYTES {
            return invalid(format!(
                "socket dir {} is too long: the socket path would be {socket_path_bytes} bytes, the limit is {MAX_SOCKET_PATH_BYTES}; choose a shorter socket dir",
                socket_dir.display()
            ));
        }
        super::conf_files::validate_extra_settings(&self.settings)
    }
}

impl fmt::Debug for PostgresConfig {
    /// Like a derived Debug, but the password is redacted.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PostgresConfig")
            .field("bin_dir", &self.bin_dir)
            .field("data_dir", &self.data_dir)
            .field("socket_dir", &self.socket_dir)
            .field("listen_address", &self.listen_address)
            .field("port", &self.port)
            .field("superuser", &self.superuser)
            .field("password", &"<redacted>")
            .field("settings", &self.settings)
            .field("log_file", &self.log_file)
            .field("run_as_user", &self.run_as_user)
            .field("start_timeout_ms", &self.start_timeout_ms)
            .field("stop_timeout_ms", &self.stop_timeout_ms)
            .field("copy_timeout_ms", &self.copy_timeout_ms)
            .field("sync_initdb", &self.sync_initdb)
            .finish()
    }
}

/// PostgreSQL's shutdown modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopMode {
    /// SIGTERM: wait for every client to disconnect. Can wait forever; escalates on timeout.
    Smart,
    /// SIGINT: roll back open transactions, disconnect clients, checkpoint, exit. The default.
    #[default]
    Fast,
    /// SIGQUIT: exit at once without a checkpoint; the next start runs crash recovery.
    Immediate,
}
