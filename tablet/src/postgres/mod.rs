//! One real PostgreSQL 15 server owned by a tablet: initialise, configure, start, stop, restart,
//! adopt an existing data dir, notice unexpected exits, and open control connections; and its
//! streaming replication (standby from a base backup, follow, promote, demote, rewind,
//! synchronous standbys, WAL positions; see [`replication`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), tessera_tablet::postgres::PostgresError> {
//! use tessera_tablet::postgres::{PostgresConfig, PostgresServer, StopMode};
//! let server = PostgresServer::new(PostgresConfig::under("/srv/tessera/zone1-101".as_ref(), 25432))?;
//! if !server.is_initialized() {
//!     server.init().await?;
//! }
//! let pid = server.start().await?;
//! server.ensure_database("app").await?;
//! let mut exits = server.exits(); // the tablet watches this for unexpected exits
//! server.stop(StopMode::Fast).await?;
//! # Ok(()) }
//! ```
//!
//! Decisions (see also docs/postgres.md):
//! - **Runs as an unprivileged account.** When Tessera is root, every PostgreSQL binary runs as
//!   `run_as_user` (default `postgres`), the directories PostgreSQL writes are chowned to it, and
//!   the parent directories are checked to be enterable first (`account.rs`).
//! - **Direct child with a parent-death signal** so the pid is known, exits are noticed and the
//!   server never outlives the tablet (`launcher.rs`). It runs in its own process group, so a
//!   Ctrl-C at the terminal reaches only the tablet, which then stops PostgreSQL in order.
//! - **Tessera-managed settings** live in `tessera.conf`, included from `postgresql.conf`, which
//!   Tessera never rewrites (`conf_files.rs`).
//! - **Readiness and ownership come from `postmaster.pid`** (`lock_file.rs`); a stale lock file
//!   left by a crash is removed only when no process works in the data dir.
//! - **`init` is atomic**: initdb runs in a hidden sibling directory which is renamed into place
//!   only when complete, so a crash mid-init never leaves a half-initialised data dir that would
//!   be adopted later.

mod account;
mod conf_files;
mod config;
mod error;
mod launcher;
mod lock_file;
pub mod replication;
mod timeline;
mod tools;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use config::{DEFAULT_BIN_DIR, PostgresConfig, StopMode};
pub use error::PostgresError;
pub use replication::{InvalidLsn, Lsn, ReplicationSource, ServerRole, StandbyState, WalPosition};

use account::ServerAccount;
use launcher::Launcher;

/// How long orphaned backends of a killed postmaster get to notice its death and exit before a
/// new start declares the data dir in use.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

/// How long each forced step of a stop (SIGQUIT, then SIGKILL) waits.
const FORCED_STOP_WAIT: Duration = Duration::from_secs(10);

/// How often startup readiness is polled.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How many lines of a log or of initdb's output an error message quotes.
const TAIL_LINES: usize = 3;

/// Lifecycle state of the server, as published by [`PostgresServer::exits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostgresState {
    /// This handle has not started PostgreSQL yet.
    NotStarted,
    /// The postmaster runs (it may still be starting up).
    Running { pid: u32 },
    /// The postmaster has exited and been reaped.
    Exited {
        pid: u32,
        exit: ProcessExit,
        /// True when Tessera asked for the exit (stop, restart, drop); false for a crash or a
        /// kill from outside, which the tablet must react to.
        expected: bool,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
    /// `waitpid` failed; the process is gone but its status is unknown.
    Unknown,
}

impl std::fmt::Display for ProcessExit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessExit::Code(code) => write!(formatter, "exit code {code}"),
            ProcessExit::Signal(signal) => write!(formatter, "killed by signal {signal}"),
            ProcessExit::Unknown => formatter.write_str("exit status unknown"),
        }
    }
}

/// What the waiter thread and the handle share.
struct Shared {
    /// Invariant: `pid` is `Some` exactly while a postmaster spawned by this handle has not been
    /// reaped; `stop_requested` is reset to false at every spawn.
    runtime: Mutex<Runtime>,
    state: watch::Sender<PostgresState>,
}

struct Runtime {
    pid: Option<u32>,
    stop_requested: bool,
}

/// Handle on one PostgreSQL server. See the module documentation.
pub struct PostgresServer {
    /// Paths are absolute.
    config: PostgresConfig,
    account: ServerAccount,
    launcher: Launcher,
    shared: Arc<Shared>,
    /// Extra settings currently written to `tessera.conf` (starts as `config.settings`).
    extra_settings: Mutex<BTreeMap<String, String>>,
    /// Serialises init/start/stop/restart so they never interleave.
    lifecycle: tokio::sync::Mutex<()>,
}

impl PostgresServer {
    /// Validates the configuration, checks that the binaries exist, and resolves the account
    /// PostgreSQL will run as. Touches no data.
    pub fn new(config: PostgresConfig) -> Result<PostgresServer, PostgresError> {
        config.validate()?;
        let mut config = config;
        for path in [
            &mut config.bin_dir,
            &mut config.data_dir,
            &mut config.socket_dir,
            &mut config.log_file,
        ] {
            *path = std::path::absolute(&*path).map_err(|error| {
                PostgresError::io(format!("resolving {}", path.display()), error)
            })?;
        }
        for binary in ["initdb", "postgres"] {
            let path = config.bin_dir.join(binary);
            let executable = std::fs::metadata(&path).is_ok_and(|metadata| {
                metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
            });
            if !executable {
                return Err(PostgresError::BinaryMissing { path });
            }
        }
        let account = ServerAccount::resolve(&config.run_as_user)?;
        if account.switch_user {
            info!(
                user = %account.name,
                uid = account.uid.as_raw(),
                gid = account.gid.as_raw(),
                data_dir = %config.data_dir.display(),
                "Tessera runs as root; PostgreSQL will run as an unprivileged user that owns its data dir and socket dir"
            );
        }
        let launcher = Launcher::new()
            .map_err(|error| PostgresError::io("starting the PostgreSQL launcher thread", error))?;
        let (state, _) = watch::channel(PostgresState::NotStarted);
        Ok(PostgresServer {
            extra_settings: Mutex::new(config.settings.clone()),
            config,
            account,
            launcher,
            shared: Arc::new(Shared {
                runtime: Mutex::new(Runtime {
                    pid: None,
                    stop_requested: false,
                }),
                state,
            }),
            lifecycle: tokio::sync::Mutex::new(()),
        })
    }

    /// The configuration, with absolute paths.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// Name of the account PostgreSQL runs as.
    pub fn run_as_user(&self) -> &str {
        &self.account.name
    }

    /// Whether the data dir holds a cluster (`PG_VERSION` exists).
    pub fn is_initialized(&self) -> bool {
        self.config.data_dir.join("PG_VERSION").is_file()
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.shared.runtime.lock().pid
    }

    /// The lifecycle state; the tablet watches it to notice an unexpected exit
    /// (`Exited { expected: false, .. }`).
    pub fn exits(&self) -> watch::Receiver<PostgresState> {
        self.shared.state.subscribe()
    }

    /// Creates the cluster: `initdb` with data checksums, locale C, UTF8, the superuser with a
    /// SCRAM password, SCRAM in pg_hba for local, host and replication connections; then writes
    /// the managed settings. Fails with `AlreadyInitialized` if there is a cluster already.
    pub async fn init(&self) -> Result<(), PostgresError> {
        let _lifecycle = self.lifecycle.lock().await;
        let staging = self.new_staging_directory("initdb")?;
        let result = self.init_in(&staging).await;
        remove_staging_directory(&staging);
        result?;
        info!(
            data_dir = %self.config.data_dir.display(),
            user = %self.account.name,
            "initialised a PostgreSQL cluster (data checksums, locale C, UTF8, SCRAM authentication)"
        );
        Ok(())
    }

    /// Checks that a new cluster may be created in the data dir (none there yet, the directory
    /// absent or empty, its parents reachable by the account) and returns a fresh, empty,
    /// hidden staging directory next to it, named after `purpose`. New clusters are built
    /// there and renamed into place only when complete ([`PostgresServer::install_staged`]), so
    /// a crash midway never leaves a half-built data dir that a later start would adopt.
    fn new_staging_directory(&self, purpose: &str) -> Result<PathBuf, PostgresError> {
        let data_dir = &self.config.data_dir;
        if self.is_initialized() {
            return Err(PostgresError::AlreadyInitialized {
                path: data_dir.clone(),
            });
        }
        let not_writable = |reason: String| PostgresError::DataDirNotWritable {
            path: data_dir.clone(),
            reason,
        };
        let Some(parent) = data_dir.parent() else {
            return Err(not_writable("it has no parent directory".to_string()));
        };
        std::fs::create_dir_all(parent).map_err(|error| {
            not_writable(format!("cannot create {}: {error}", parent.display()))
        })?;
        self.account.check_can_reach(data_dir)?;
        match std::fs::read_dir(data_dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(PostgresError::DataDirNotEmpty {
                        path: data_dir.clone(),
                    });
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(not_writable(error.to_string())),
        }
        let staging = self.sibling_path(purpose)?;
        if staging.exists() {
            warn!(path = %staging.display(), "removing the leftover of an interrupted {purpose}");
            std::fs::remove_dir_all(&staging).map_err(|error| {
                not_writable(format!("cannot remove {}: {error}", staging.display()))
            })?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(|error| {
                not_writable(format!("cannot create {}: {error}", staging.display()))
            })?;
        self.account.chown(&staging)?;
        Ok(staging)
    }

    /// A hidden path next to the data dir, `.<data dir name>.<suffix>`: outside the data dir,
    /// so neither PostgreSQL nor the tools that copy data dirs ever see it.
    fn sibling_path(&self, suffix: &str) -> Result<PathBuf, PostgresError> {
        let data_dir = &self.config.data_dir;
        match (data_dir.parent(), data_dir.file_name()) {
            (Some(parent), Some(name)) => {
                Ok(parent.join(format!(".{}.{suffix}", name.to_string_lossy())))
            }
            _ => Err(PostgresError::DataDirNotWritable {
                path: data_dir.clone(),
                reason: "it has no parent directory".to_string(),
            }),
        }
    }

    /// Runs initdb inside `staging`, configures the result and moves it to the data dir.
    async fn init_in(&self, staging: &Path) -> Result<(), PostgresError> {
        let staged_data = staging.join("pgdata");
        let password_file = staging.join("pwfile");
        conf_files::write_atomically(&password_file, &self.config.password, &self.account)?;

        let mut args: Vec<std::ffi::OsString> = vec!["--pgdata".into(), staged_data.clone().into()];
        args.extend(
            [
                "--data-checksums",
                "--locale=C",
                "--encoding=UTF8",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
            ]
            .map(Into::into),
        );
        args.push(format!("--username={}", self.config.superuser).into());
        args.push(format!("--pwfile={}", password_file.display()).into());
        if !self.config.sync_initdb {
            args.push("--no-sync".into());
        }
        let output = tools::run(
            &self.account,
            &self.config.bin_dir,
            "initdb",
            args,
            None,
            Duration::from_millis(self.config.start_timeout_ms),
        )
        .await?;
        if !output.success {
            return Err(PostgresError::InitdbFailed {
                status: output.status,
                output_tail: tail(&output.text, TAIL_LINES),
            });
        }
        std::fs::remove_file(&password_file)
            .map_err(|error| PostgresError::io("removing the initdb password file", error))?;
        self.install_staged(&staged_data)
    }

    /// Writes the managed settings into a complete staged data dir and renames it onto the
    /// data dir (rename(2) replaces an empty directory, so a pre-created empty data dir is
    /// fine), then syncs the parent so the rename survives a crash.
    fn install_staged(&self, staged_data: &Path) -> Result<(), PostgresError> {
        let settings = conf_files::render(&self.config, &self.extra_settings.lock())?;
        conf_files::write_atomically(
            &staged_data.join(conf_files::MANAGED_FILE_NAME),
            &settings,
            &self.account,
        )?;
        conf_files::ensure_include(&staged_data.join("postgresql.conf"))?;
        let data_dir = &self.config.data_dir;
        std::fs::rename(staged_data, data_dir).map_err(|error| {
            PostgresError::DataDirNotWritable {
                path: data_dir.clone(),
                reason: format!("cannot move the new cluster into place: {error}"),
            }
        })?;
        if let Some(parent) = data_dir.parent() {
            conf_files::sync_directory(parent)?;
        }
        Ok(())
    }

    /// Starts PostgreSQL on the (initialised) data dir and waits until it accepts connections,
    /// crash recovery included. Adopts any existing cluster, including one left by a crash.
    /// Returns the postmaster's pid.
    pub async fn start(&self) -> Result<u32, PostgresError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.start_locked().await
    }

    async fn start_locked(&self) -> Result<u32, PostgresError> {
        if let Some(pid) = self.pid() {
            return Err(PostgresError::AlreadyRunning { pid });
        }
        if !self.is_initialized() {
            return Err(PostgresError::NotInitialized {
                path: self.config.data_dir.clone(),
            });
        }
        self.prepare_directories()?;
        self.write_managed_settings()?;
        self.clear_stale_lock_files().await?;
        check_port_free(&self.config.listen_address, self.config.port)?;

        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.config.log_file)
            .map_err(|error| {
                PostgresError::io(
                    format!("opening log file {}", self.config.log_file.display()),
                    error,
                )
            })?;
        let log_offset = log
            .metadata()
            .map(|metadata| metadata.len())
            .unwrap_or_default();
        let log_for_stdout = log.try_clone().map_err(|error| {
            PostgresError::io(
                format!("opening log file {}", self.config.log_file.display()),
                error,
            )
        })?;

        let postgres = self.config.bin_dir.join("postgres");
        let mut command = std::process::Command::new(&postgres);
        command
            .arg("-D")
            .arg(&self.config.data_dir)
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(log_for_stdout)
            .stderr(log)
            // Own process group: terminal signals (Ctrl-C) go to the tablet, which stops
            // PostgreSQL in order, instead of racing it.
            .process_group(0);
        self.account.apply_std(&mut command);

        let child = self
            .launcher
            .spawn(command)
            .await
            .map_err(|source| PostgresError::Spawn {
                binary: postgres.clone(),
                source,
            })?;
        let pid = child.id();
        {
            let mut runtime = self.shared.runtime.lock();
            runtime.pid = Some(pid);
            runtime.stop_requested = false;
        }
        self.shared
            .state
            .send_replace(PostgresState::Running { pid });
        let shared = Arc::clone(&self.shared);
        if let Err(error) =
            launcher::watch_exit(child, move |status| record_exit(&shared, pid, status))
        {
            // Without a waiter nobody would notice the exit: refuse to run unsupervised.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGQUIT);
            return Err(PostgresError::io(
                "starting the PostgreSQL exit watcher",
                error,
            ));
        }
        info!(
            pid,
            port = self.config.port,
            user = %self.account.name,
            data_dir = %self.config.data_dir.display(),
            "PostgreSQL started; waiting until it accepts connections"
        );
        self.wait_until_ready(pid, log_offset).await?;
        info!(
            pid,
            port = self.config.port,
            "PostgreSQL accepts connections"
        );
        Ok(pid)
    }

    /// Gives the run-as account what PostgreSQL needs and checks it can reach it.
    fn prepare_directories(&self) -> Result<(), PostgresError> {
        let data_dir = &self.config.data_dir;
        let metadata = std::fs::metadata(data_dir)
            .map_err(|error| PostgresError::io(format!("reading {}", data_dir.display()), error))?;
        if self.account.switch_user && metadata.uid() != self.account.uid.as_raw() {
            warn!(
                data_dir = %data_dir.display(),
                user = %self.account.name,
                "data dir is not owned by the PostgreSQL user; handing it over (chown -R)"
            );
            self.account.chown_tree(data_dir)?;
        }
        // PostgreSQL refuses a data dir that group members may write or others may read.
        if metadata.permissions().mode() & 0o027 != 0 {
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |error| PostgresError::io(format!("chmod 0700 {}", data_dir.display()), error),
            )?;
        }
        self.account.check_can_reach(data_dir)?;

        let socket_dir = &self.config.socket_dir;
        std::fs::create_dir_all(socket_dir).map_err(|error| {
            PostgresError::io(
                format!("creating socket dir {}", socket_dir.display()),
                error,
            )
        })?;
        self.account.chown(socket_dir)?;
        self.account.check_can_reach(socket_dir)?;

        if let Some(log_dir) = self.config.log_file.parent() {
            std::fs::create_dir_all(log_dir).map_err(|error| {
                PostgresError::io(format!("creating log dir {}", log_dir.display()), error)
            })?;
        }
        Ok(())
    }

    /// Rewrites `tessera.conf` from the current settings and makes sure it is included.
    fn write_managed_settings(&self) -> Result<(), PostgresError> {
        let settings = conf_files::render(&self.config, &self.extra_settings.lock())?;
        conf_files::write_atomically(
            &self.config.data_dir.join(conf_files::MANAGED_FILE_NAME),
            &settings,
            &self.account,
        )?;
        if conf_files::ensure_include(&self.config.data_dir.join("postgresql.conf"))? {
            info!("re-added the include of tessera.conf to postgresql.conf");
        }
        Ok(())
    }

    /// Decides whether a lock file left behind is stale (see [`lock_file`]) and removes it if
    /// so; fails if a live server owns the data dir.
    async fn clear_stale_lock_files(&self) -> Result<(), PostgresError> {
        let data_dir = &self.config.data_dir;
        let read_error = |error| {
            PostgresError::io(
                format!("reading {}/postmaster.pid", data_dir.display()),
                error,
            )
        };
        let Some(lock) = lock_file::read(data_dir).map_err(read_error)? else {
            return Ok(());
        };
        let deadline = Instant::now() + ORPHAN_GRACE;
        loop {
            let users = lock_file::processes_in_directory(data_dir);
            let Some(first_user) = users.first().copied() else {
                break;
            };
            if let Some(pid) = lock.pid.filter(|pid| users.contains(pid)) {
                return Err(PostgresError::DataDirInUse {
                    path: data_dir.clone(),
                    pid,
                });
            }
            if Instant::now() >= deadline {
                return Err(PostgresError::DataDirInUse {
                    path: data_dir.clone(),
                    pid: first_user,
                });
            }
            debug!(?users, "waiting for orphaned PostgreSQL processes to exit");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        warn!(
            recorded_pid = ?lock.pid,
            data_dir = %data_dir.display(),
            "removing stale postmaster.pid left by a crash (no process uses the data dir)"
        );
        remove_if_present(&data_dir.join(lock_file::LOCK_FILE_NAME))?;

        // The socket lock file of the same crashed postmaster has the same pid-reuse problem; it
        // is ours if it names our data dir.
        let socket_lock = self
            .config
            .socket_dir
            .join(format!(".s.PGSQL.{}.lock", self.config.port));
        if let Ok(text) = std::fs::read_to_string(&socket_lock)
            && text.lines().nth(1).map(Path::new) == Some(data_dir.as_path())
        {
            warn!(path = %socket_lock.display(), "removing stale socket lock file left by a crash");
            remove_if_present(&socket_lock)?;
        }
        Ok(())
    }

    /// Polls `postmaster.pid` until the server reports ready, the postmaster exits, or the start
    /// timeout passes (then the server is stopped, so no half-started server is left behind).
    async fn wait_until_ready(&self, pid: u32, log_offset: u64) -> Result<(), PostgresError> {
        let timeout_ms = self.config.start_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut state = self.shared.state.subscribe();
        loop {
            if let PostgresState::Exited { exit, .. } = *state.borrow_and_update() {
                let log = read_log_since(&self.config.log_file, log_offset);
                return Err(self.startup_failure(exit, &log));
            }
            let ready = lock_file::read(&self.config.data_dir)
                .ok()
                .flatten()
                .is_some_and(|lock| lock.pid == Some(pid as i32) && lock.is_ready());
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                warn!(
                    pid,
                    timeout_ms, "PostgreSQL did not become ready in time; stopping it"
                );
                if let Err(error) = self.stop_locked(StopMode::Immediate).await {
                    warn!(%error, "could not stop PostgreSQL after the start timeout");
                }
                let log = read_log_since(&self.config.log_file, log_offset);
                return Err(PostgresError::StartTimeout {
                    timeout_ms,
                    log_tail: tail(&log, TAIL_LINES),
                    log_file: self.config.log_file.clone(),
                });
            }
            // Wake on an exit at once, otherwise poll the lock file again shortly.
            let _ = tokio::time::timeout(READY_POLL_INTERVAL, state.changed()).await;
        }
    }

    /// Maps a failed start to the most specific error its log allows.
    fn startup_failure(&self, exit: ProcessExit, log: &str) -> PostgresError {
        match classify_startup_log(log) {
            Some(StartupProblem::PortInUse) => PostgresError::PortInUse {
                address: self.config.listen_address.clone(),
                port: self.config.port,
            },
            Some(StartupProblem::DataDirInUse { pid }) => PostgresError::DataDirInUse {
                path: self.config.data_dir.clone(),
                pid,
            },
            None => PostgresError::StartFailed {
                status: exit.to_string(),
                log_tail: tail(log, TAIL_LINES),
                log_file: self.config.log_file.clone(),
            },
        }
    }

    /// Stops PostgreSQL with `mode` and waits until the postmaster has exited. If it does not
    /// exit within the stop timeout, escalates (smart -> fast -> immediate -> SIGKILL), so a
    /// stop never leaves a server running. Stopping a stopped server succeeds.
    pub async fn stop(&self, mode: StopMode) -> Result<(), PostgresError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.stop_locked(mode).await
    }

    async fn stop_locked(&self, mode: StopMode) -> Result<(), PostgresError> {
        let pid = {
            let mut runtime = self.shared.runtime.lock();
            let Some(pid) = runtime.pid else {
                return Ok(());
            };
            runtime.stop_requested = true;
            pid
        };
        let requested_wait = Duration::from_millis(self.config.stop_timeout_ms);
        let mut steps = Vec::with_capacity(4);
        if mode == StopMode::Smart {
            steps.push((Signal::SIGTERM, requested_wait));
        }
        if mode != StopMode::Immediate {
            steps.push((Signal::SIGINT, requested_wait));
        }
        steps.push((Signal::SIGQUIT, FORCED_STOP_WAIT.max(requested_wait)));
        steps.push((Signal::SIGKILL, FORCED_STOP_WAIT));
        for (signal, wait) in steps {
            debug!(pid, ?signal, "stopping PostgreSQL");
            match kill(Pid::from_raw(pid as i32), signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(errno) => {
                    return Err(PostgresError::io(
                        format!("sending {signal} to PostgreSQL (pid {pid})"),
                        std::io::Error::from(errno),
                    ));
                }
            }
            if self.wait_for_exit(pid, wait).await {
                if signal == Signal::SIGKILL {
                    self.kill_orphans().await;
                }
                info!(pid, ?mode, "PostgreSQL stopped");
                return Ok(());
            }
            warn!(
                pid,
                ?signal,
                wait_ms = wait.as_millis() as u64,
                "PostgreSQL did not exit; escalating"
            );
        }
        Err(PostgresError::StopTimeout {
            pid,
            timeout_ms: requested_wait.as_millis() as u64,
        })
    }

    /// Waits until the postmaster `pid` has been reaped.
    async fn wait_for_exit(&self, pid: u32, wait: Duration) -> bool {
        let mut state = self.shared.state.subscribe();
        let exited = state.wait_for(
            |state| !matches!(state, PostgresState::Running { pid: running } if *running == pid),
        );
        tokio::time::timeout(wait, exited).await.is_ok()
    }

    /// After a SIGKILL of the postmaster its children are orphans; they exit by themselves when
    /// they notice, but a stop must not return with any left, so stragglers are killed.
    async fn kill_orphans(&self) {
        let deadline = Instant::now() + FORCED_STOP_WAIT;
        loop {
            let orphans = lock_file::processes_in_directory(&self.config.data_dir);
            if orphans.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for pid in orphans {
                    warn!(pid, "killing an orphaned PostgreSQL process");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fast stop, then start. Returns the new pid.
    pub async fn restart(&self) -> Result<u32, PostgresError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.stop_locked(StopMode::Fast).await?;
        self.start_locked().await
    }

    /// Replaces the extra settings (those beyond Tessera's defaults and the config-derived
    /// ones) and rewrites `tessera.conf` if the cluster exists. Takes effect on [`reload`] for
    /// reloadable settings, on restart for the others (see [`pending_restart`]).
    ///
    /// [`reload`]: PostgresServer::reload
    /// [`pending_restart`]: PostgresServer::pending_restart
    pub fn set_settings(&self, settings: BTreeMap<String, String>) -> Result<(), PostgresError> {
        conf_files::validate_extra_settings(&settings)?;
        *self.extra_settings.lock() = settings;
        if self.is_initialized() {
            self.write_managed_settings()?;
        }
        Ok(())
    }

    /// The extra settings currently in force in `tessera.conf`.
    pub fn settings(&self) -> BTreeMap<String, String> {
        self.extra_settings.lock().clone()
    }

    /// Asks the running server to re-read its configuration (SIGHUP). A stopped server reads it
    /// at its next start anyway, so this succeeds without doing anything then.
    pub async fn reload(&self) -> Result<(), PostgresError> {
        let Some(pid) = self.pid() else {
            debug!(
                "reload requested while PostgreSQL is stopped; settings apply at the next start"
            );
            return Ok(());
        };
        kill(Pid::from_raw(pid as i32), Signal::SIGHUP).map_err(|errno| {
            PostgresError::io(
                format!("sending SIGHUP to PostgreSQL (pid {pid})"),
                std::io::Error::from(errno),
            )
        })
    }

    /// Names of settings whose new values wait for a restart.
    pub async fn pending_restart(&self) -> Result<Vec<String>, PostgresError> {
        let client = self.connect("postgres").await?;
        let rows = client
            .query(
                "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name",
                &[],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "reading pg_settings".to_string(),
                source,
            })?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Opens a control connection as the superuser over the unix socket. The connection task
    /// runs on the current tokio runtime.
    pub async fn connect(&self, database: &str) -> Result<tokio_postgres::Client, PostgresError> {
        let mut config =
            control_connection_config(&self.config.superuser, &self.config.password, database);
        config
            .host_path(&self.config.socket_dir)
            .port(self.config.port);
        open_control_connection(&config)
            .await
            .map_err(|source| PostgresError::Connect {
                database: database.to_string(),
                socket_dir: self.config.socket_dir.clone(),
                port: self.config.port,
                source,
            })
    }

    /// Creates database `name` unless it exists (a keyspace's database on its tablets).
    pub async fn ensure_database(&self, name: &str) -> Result<(), PostgresError> {
        let client = self.connect("postgres").await?;
        let query_error = |what: &str| {
            let what = what.to_string();
            move |source| PostgresError::Query { what, source }
        };
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(query_error("looking up the database"))?
            .is_some();
        if exists {
            return Ok(());
        }
        match client
            .batch_execute(&format!("CREATE DATABASE {}", quote_identifier(name)))
            .await
        {
            Ok(()) => {
                info!(database = name, "created database");
                Ok(())
            }
            // Someone else created it in between: that is what we wanted.
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) =>
            {
                Ok(())
            }
            Err(source) => Err(PostgresError::Query {
                what: format!("creating database {name}"),
                source,
            }),
        }
    }
}

impl Drop for PostgresServer {
    /// A handle dropped with its server running would otherwise leak the server silently: send
    /// an immediate shutdown and say so. (Ending the launcher thread right after would deliver
    /// the same SIGQUIT through the parent-death signal.)
    fn drop(&mut self) {
        let pid = {
            let mut runtime = self.shared.runtime.lock();
            runtime.stop_requested = true;
            runtime.pid
        };
        if let Some(pid) = pid {
            warn!(
                pid,
                data_dir = %self.config.data_dir.display(),
                "PostgresServer dropped while PostgreSQL runs: sending SIGQUIT (immediate shutdown); stop it explicitly instead"
            );
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGQUIT);
        }
    }
}

/// A control connection's settings without the address: who, which database, Tessera's
/// application name and a bounded connect time.
fn control_connection_config(user: &str, password: &str, database: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .user(user)
        .password(password)
        .dbname(database)
        .application_name("tessera-tablet")
        .connect_timeout(Duration::from_secs(10));
    config
}

/// Connects and runs the connection task on the current tokio runtime.
async fn open_control_connection(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "PostgreSQL control connection ended");
        }
    });
    Ok(client)
}

/// Records the postmaster's exit, called on the waiter thread.
fn record_exit(shared: &Shared, pid: u32, status: std::io::Result<std::process::ExitStatus>) {
    let exit = match status {
        Ok(status) => exit_of(status),
        Err(_) => ProcessExit::Unknown,
    };
    let expected = {
        let mut runtime = shared.runtime.lock();
        if runtime.pid == Some(pid) {
            runtime.pid = None;
        }
        runtime.stop_requested
    };
    if expected {
        debug!(pid, %exit, "PostgreSQL exited as requested");
    } else {
        warn!(pid, %exit, "PostgreSQL exited unexpectedly");
    }
    shared.state.send_replace(PostgresState::Exited {
        pid,
        exit,
        expected,
    });
}

fn exit_of(status: std::process::ExitStatus) -> ProcessExit {
    match (status.code(), status.signal()) {
        (Some(code), _) => ProcessExit::Code(code),
        (None, Some(signal)) => ProcessExit::Signal(signal),
        (None, None) => ProcessExit::Unknown,
    }
}

/// A startup failure recognised in PostgreSQL's log.
#[derive(Debug, PartialEq, Eq)]
enum StartupProblem {
    PortInUse,
    DataDirInUse { pid: i32 },
}

/// Recognises the startup failures that deserve their own error, from PostgreSQL's log lines.
fn classify_startup_log(log: &str) -> Option<StartupProblem> {
    // The pid of the competing postmaster is on the HINT line that follows the FATAL one.
    let other_pid = || {
        log.split("another postmaster (PID ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.trim().parse().ok())
            .unwrap_or(0)
    };
    for line in log.lines() {
        if line.contains("could not bind") || line.contains("Address already in use") {
            return Some(StartupProblem::PortInUse);
        }
        if line.contains("could not create lock file") && line.contains(".s.PGSQL.") {
            return Some(StartupProblem::PortInUse);
        }
        if line.contains("lock file \"postmaster.pid\" already exists")
            || line.contains("pre-existing shared memory block")
        {
            return Some(StartupProblem::DataDirInUse { pid: other_pid() });
        }
    }
    None
}

/// Checks each TCP address PostgreSQL will listen on by binding it briefly. PostgreSQL's own
/// "could not bind" is recognised too, for the race between this check and its start.
fn check_port_free(listen_address: &str, port: u16) -> Result<(), PostgresError> {
    for address in listen_address
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
    {
        let candidates: Vec<std::net::IpAddr> = match address {
            "*" => vec![[0, 0, 0, 0].into()],
            "localhost" => vec![[127, 0, 0, 1].into()],
            other => other.parse().into_iter().collect(),
        };
        for ip in candidates {
            if let Err(error) = std::net::TcpListener::bind((ip, port))
                && error.kind() == std::io::ErrorKind::AddrInUse
            {
                return Err(PostgresError::PortInUse {
                    address: address.to_string(),
                    port,
                });
            }
        }
    }
    Ok(())
}

/// Removes a staging directory; failing to is only worth a warning (the next attempt removes
/// it, and it is hidden and outside the data dir).
fn remove_staging_directory(staging: &Path) {
    if let Err(error) = std::fs::remove_dir_all(staging)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %staging.display(), %error, "could not remove a staging directory");
    }
}

fn remove_if_present(path: &Path) -> Result<(), PostgresError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(PostgresError::io(
            format!("removing {}", path.display()),
            error,
        )),
    }
}

/// The log written since `offset` (at most the last 64 KiB of it).
fn read_log_since(path: &PathBuf, offset: u64) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let start = offset.max(length.saturating_sub(MAX_BYTES));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `count` non-empty lines of `text`, joined into one line.
fn tail(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let start = lines.len().saturating_sub(count);
    let joined = lines[start..].join(" | ");
    if joined.is_empty() {
        "(no output)".to_string()
    } else {
        joined
    }
}

/// SQL identifier quoting: double quotes, embedded quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: PostgreSQL's real bind and lock-file failures map to the specific errors.
    #[test]
    fn classifies_startup_failures_from_log_lines() {
        let bind = "2025-01-01 00:00:00.000 UTC [42] LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
                    2025-01-01 00:00:00.000 UTC [42] WARNING:  could not create listen socket for \"127.0.0.1\"\n\
                    2025-01-01 00:00:00.000 UTC [42] FATAL:  could not create any TCP/IP sockets";
        assert_eq!(classify_startup_log(bind), Some(StartupProblem::PortInUse));
        let socket = "FATAL:  could not create lock file \"/tmp/run/.s.PGSQL.5432.lock\": File exists\n\
                      HINT:  Is another postmaster (PID 77) using socket file \"/tmp/run/.s.PGSQL.5432\"?";
        assert_eq!(
            classify_startup_log(socket),
            Some(StartupProblem::PortInUse)
        );
        let data_dir = "FATAL:  lock file \"postmaster.pid\" already exists\n\
                        HINT:  Is another postmaster (PID 1234) running in data directory \"/d\"?";
        assert_eq!(
            classify_startup_log(data_dir),
            Some(StartupProblem::DataDirInUse { pid: 1234 })
        );
        assert_eq!(
            classify_startup_log("FATAL:  data directory has invalid permissions"),
            None
        );
    }

    /// Goal: error tails are one line, from the end, and never empty.
    #[test]
    fn tail_joins_last_lines() {
        assert_eq!(tail("a\n\nb\nc\nd\n", 3), "b | c | d");
        assert_eq!(tail("", 3), "(no output)");
    }

    /// Goal: identifiers with quotes cannot break out of CREATE DATABASE.
    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_identifier("app"), "\"app\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
