//! Errors of the PostgreSQL lifecycle.
//!
//! Every variant displays as one line that names the problem and, where there is one, the fix:
//! these messages end up as the last line a user sees when `tessera up` refuses to start.

use std::path::PathBuf;

/// Why a PostgreSQL lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// A PostgreSQL binary Tessera needs does not exist or is not executable.
    #[error(
        "PostgreSQL binary {path} not found: install PostgreSQL 15 (e.g. apt-get install postgresql-15) or pass the directory holding initdb and postgres as the PostgreSQL bin dir"
    )]
    BinaryMissing { path: PathBuf },

    /// Tessera runs as root but the account meant to run PostgreSQL does not exist.
    #[error(
        "Tessera runs as root and must run PostgreSQL as an unprivileged user, but user {user:?} does not exist: create it (useradd --system {user}) or choose another run-as user"
    )]
    RunAsUserMissing { user: String },

    /// The configured run-as account is root itself, which PostgreSQL refuses.
    #[error(
        "PostgreSQL cannot run as root (run-as user {user:?} has uid 0): choose an unprivileged run-as user such as postgres"
    )]
    RunAsUserIsRoot { user: String },

    /// The run-as account cannot enter a parent directory of a path PostgreSQL must use.
    #[error(
        "PostgreSQL runs as user {user}, which cannot enter directory {directory} (mode {mode:04o}): run `chmod o+x {directory}` or put the data dir somewhere {user} can reach"
    )]
    DirectoryNotTraversable {
        user: String,
        directory: PathBuf,
        mode: u32,
    },

    /// The data directory (or a directory PostgreSQL needs next to it) cannot be created or
    /// written.
    #[error("data dir {path} is not writable: {reason}")]
    DataDirNotWritable { path: PathBuf, reason: String },

    /// `init` was asked to initialise a directory that already holds other files.
    #[error(
        "data dir {path} exists and is not empty but holds no PostgreSQL cluster: empty it or choose another data dir"
    )]
    DataDirNotEmpty { path: PathBuf },

    /// `init` was asked to initialise a directory that already holds a cluster.
    #[error("data dir {path} already holds a PostgreSQL cluster")]
    AlreadyInitialized { path: PathBuf },

    /// `start` was asked to start a directory that holds no cluster.
    #[error("data dir {path} holds no PostgreSQL cluster: initialise it first")]
    NotInitialized { path: PathBuf },

    /// The TCP port (or the unix socket for that port) is taken by another process.
    #[error(
        "port {port} on {address} is already in use: stop the process using it or choose another port"
    )]
    PortInUse { address: String, port: u16 },

    /// Another live PostgreSQL owns the data directory.
    #[error(
        "data dir {path} is in use by another running PostgreSQL (pid {pid}): stop it first, two servers must never share a data dir"
    )]
    DataDirInUse { path: PathBuf, pid: i32 },

    /// `start` was called while this server already runs.
    #[error("PostgreSQL is already running (pid {pid})")]
    AlreadyRunning { pid: u32 },

    /// `initdb` failed.
    #[error("initdb failed ({status}): {output_tail}")]
    InitdbFailed { status: String, output_tail: String },

    /// PostgreSQL exited while starting up.
    #[error("PostgreSQL exited during startup ({status}): {log_tail} (full log: {log_file})")]
    StartFailed {
        status: String,
        log_tail: String,
        log_file: PathBuf,
    },

    /// PostgreSQL did not become ready in time (it has been stopped).
    #[error(
        "PostgreSQL did not become ready within {timeout_ms} ms and was stopped: {log_tail} (full log: {log_file})"
    )]
    StartTimeout {
        timeout_ms: u64,
        log_tail: String,
        log_file: PathBuf,
    },

    /// PostgreSQL did not exit even after SIGKILL.
    #[error("PostgreSQL (pid {pid}) did not exit within {timeout_ms} ms, even after SIGKILL")]
    StopTimeout { pid: u32, timeout_ms: u64 },

    /// A configuration value is invalid.
    #[error("invalid PostgreSQL configuration: {reason}")]
    InvalidConfig { reason: String },

    /// A setting name or value cannot be written to the managed configuration file.
    #[error("invalid PostgreSQL setting {name:?}: {reason}")]
    InvalidSetting { name: String, reason: String },

    /// The operation needs a running server.
    #[error("PostgreSQL is not running")]
    NotRunning,

    /// A binary could not be spawned at all.
    #[error("could not run {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The control connection could not be opened.
    #[error(
        "could not connect to PostgreSQL database {database:?} on {socket_dir} port {port}: {source}"
    )]
    Connect {
        database: String,
        socket_dir: PathBuf,
        port: u16,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A control query failed.
    #[error("PostgreSQL control query failed ({what}): {source}")]
    Query {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PostgresError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> PostgresError {
        PostgresError::Io {
            context: context.into(),
            source,
        }
    }
}
