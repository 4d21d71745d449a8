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

    /// A replication source (host, port, user, application name) cannot be used.
    #[error("invalid replication source: {reason}")]
    InvalidReplicationSource { reason: String },

    /// The operation needs a standby but the server is a primary (or a data dir that would
    /// start as one).
    #[error("PostgreSQL is a primary, but {operation} needs a standby")]
    NotStandby { operation: &'static str },

    /// `pg_basebackup` failed; nothing was installed in the data dir.
    #[error("pg_basebackup from {source_address} failed ({status}): {output_tail}")]
    BaseBackupFailed {
        source_address: String,
        status: String,
        output_tail: String,
    },

    /// `pg_rewind` failed. The data dir is left as pg_rewind left it (plus `standby.signal`, so
    /// it can never start as a primary): the tablet must quarantine this node.
    #[error(
        "pg_rewind from {source_address} failed ({status}): {output_tail}; data dir {data_dir} is left as pg_rewind left it and must not be reused (quarantine this node)"
    )]
    RewindFailed {
        source_address: String,
        status: String,
        output_tail: String,
        data_dir: PathBuf,
    },

    /// Another PostgreSQL tool (`pg_controldata`, `pg_rewind --dry-run`) failed.
    #[error("{tool} failed ({status}): {output_tail}")]
    ToolFailed {
        tool: &'static str,
        status: String,
        output_tail: String,
    },

    /// A PostgreSQL function or tool answered something Tessera cannot interpret.
    #[error("unexpected {what} from PostgreSQL: {text:?}")]
    UnexpectedOutput { what: &'static str, text: String },

    /// `pg_promote` did not finish in time.
    #[error("PostgreSQL did not finish promotion within {timeout_ms} ms")]
    PromoteTimeout { timeout_ms: u64 },

    /// A replication state Tessera waits for was not reached in time.
    #[error("{what} did not happen within {timeout_ms} ms")]
    ReplicationTimeout { what: String, timeout_ms: u64 },

    /// The control connection to the replication source could not be opened.
    #[error("could not connect to the replication source {source_address}: {source}")]
    SourceConnect {
        source_address: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The source is a different PostgreSQL cluster, so this server can never replicate from
    /// it (only a new base backup helps).
    #[error(
        "this server (system identifier {local_system_id}) and the source {source_address} (system identifier {source_system_id}) are different clusters: take a new base backup instead"
    )]
    DifferentClusters {
        local_system_id: String,
        source_address: String,
        source_system_id: String,
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
