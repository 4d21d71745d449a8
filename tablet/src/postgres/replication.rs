//! Streaming replication of a tablet's PostgreSQL 15 server: making a standby from a primary,
//! pointing it at another primary or at none, promoting, demoting, rewinding a diverged server,
//! the synchronous standby set, and WAL positions. The consensus node in the tablet drives
//! these; they know nothing about terms.
//!
//! Decisions (see also docs/postgres.md):
//! - **No restarts where PostgreSQL 15 allows it.** `primary_conninfo` is reloadable since 13,
//!   so following, repointing and un-following a standby are a file write plus SIGHUP; only a
//!   primary becoming a standby needs a restart.
//! - **Replication settings live in `tessera-replication.conf`**, included at the end of
//!   `tessera.conf` and written only by these operations, so a tablet restart keeps the role
//!   (`conf_files.rs`).
//! - **Passwords stay out of settings, command lines and logs.** PostgreSQL logs every changed
//!   setting's new value at reload (`parameter "primary_conninfo" changed to "..."`), so the
//!   WAL receiver's conninfo names a password file instead (`passfile=`, a file in the data
//!   dir, mode 0600); tools get a temporary password file next to the data dir.
//! - **A reload is waited for, not assumed.** Every change returns only once the server shows
//!   the new value, so "after this call" means what it says.
//! - **Standby identity** is `application_name` in `primary_conninfo`, the tablet id, which is
//!   what `synchronous_standby_names` names.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::conf_files::{self, ReplicationSettings};
use super::error::PostgresError;
use super::timeline::{self, Divergence};
use super::tools::{self, PasswordFile};
use super::{
    PostgresServer, StopMode, TAIL_LINES, control_connection_config, open_control_connection,
    read_log_since, tail,
};

/// The file whose presence makes PostgreSQL start as a standby.
const STANDBY_SIGNAL: &str = "standby.signal";

/// The WAL receiver's password file, in the data dir. Named relative to the data dir, which is
/// every PostgreSQL process's working directory, so the conninfo stays valid in copies of the
/// data dir made elsewhere.
const RECEIVER_PASSWORD_FILE: &str = "tessera-replication.pgpass";

/// How long a reload may take to become visible before it counts as failed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How often replication state is polled while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long the WAL receiver must stay gone before `stop_following` trusts that the startup
/// process has processed the new (empty) `primary_conninfo`: a receiver being (re)started with
/// the old value is not yet visible in `pg_stat_wal_receiver`, and the startup process stops it
/// as soon as it handles the reload, which takes milliseconds.
const RECEIVER_GONE_SETTLE: Duration = Duration::from_millis(300);

/// Wait events of the startup process when it has replayed every byte of WAL it has and waits
/// for more (streamed, or from pg_wal after a retry interval).
const WAITING_FOR_WAL_EVENTS: [&str; 2] = ["RecoveryWalStream", "RecoveryRetrieveRetryInterval"];

/// How long `pg_controldata` may take.
const CONTROL_DATA_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra time granted to the `pg_promote` call beyond its own wait.
const PROMOTE_SLACK: Duration = Duration::from_secs(5);

/// A PostgreSQL server to stream WAL from, and the name this server streams under.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplicationSource {
    /// Host name or address of the source's PostgreSQL (a path starting with `/` is a unix
    /// socket directory).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Role to connect as. Streaming needs the REPLICATION attribute; `rewind_from` and
    /// `needs_rewind` read files on the source, which takes a superuser (Tessera uses the
    /// cluster's superuser, see docs/postgres.md).
    pub user: String,
    /// Its password (SCRAM). Never logged, never on a command line.
    pub password: String,
    /// This server's name on the source: the tablet id, so that `synchronous_standby_names`
    /// can name it. At most 63 printable ASCII characters (PostgreSQL truncates and replaces
    /// beyond that, which would silently stop matching).
    pub application_name: String,
}

impl fmt::Debug for ReplicationSource {
    /// Like a derived Debug, but the password is redacted.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ReplicationSource")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl ReplicationSource {
    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Refuses values that would break a connection string, a password file or the standby's
    /// identity.
    fn validate(&self) -> Result<(), PostgresError> {
        let invalid = |reason: String| Err(PostgresError::InvalidReplicationSource { reason });
        if self.host.is_empty() || self.user.is_empty() {
            return invalid("host and user must not be empty".to_string());
        }
        if self.port == 0 {
            return invalid("port must not be 0".to_string());
        }
        for (field, value) in [
            ("host", &self.host),
            ("user", &self.user),
            ("password", &self.password),
        ] {
            if value.chars().any(char::is_control) {
                return invalid(format!("{field} must not contain control characters"));
            }
        }
        let name = &self.application_name;
        if name.is_empty()
            || name.len() > 63
            || !name.bytes().all(|byte| (0x20..=0x7e).contains(&byte))
        {
            return invalid(format!(
                "application name {name:?} must be 1 to 63 printable ASCII characters (it is the standby's identity)"
            ));
        }
        Ok(())
    }

    /// The WAL receiver's connection string. The password is read from
    /// [`RECEIVER_PASSWORD_FILE`], never part of the setting (which PostgreSQL logs).
    fn receiver_conninfo(&self) -> String {
        let port = self.port.to_string();
        tools::conninfo(&[
            ("host", &self.host),
            ("port", &port),
            ("user", &self.user),
            ("passfile", RECEIVER_PASSWORD_FILE),
            ("application_name", &self.application_name),
            ("connect_timeout", "10"),
        ])
    }

    /// The connection string for tools, without the password (they read the password file)
    /// and under the tool's own application name, so a base backup's WAL stream can never be
    /// mistaken for the standby in `synchronous_standby_names`.
    fn tool_conninfo(&self) -> String {
        let port = self.port.to_string();
        tools::conninfo(&[
            ("host", &self.host),
            ("port", &port),
            ("user", &self.user),
            ("dbname", "postgres"),
        ])
    }

    /// A control connection to the source's `postgres` database.
    async fn connect(&self) -> Result<tokio_postgres::Client, PostgresError> {
        let mut config = control_connection_config(&self.user, &self.password, "postgres");
        config.host(&self.host).port(self.port);
        open_control_connection(&config)
            .await
            .map_err(|source| PostgresError::SourceConnect {
                source_address: self.address(),
                source,
            })
    }
}

/// Whether a running server is a primary or a standby (`pg_is_in_recovery()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    /// Accepts writes.
    Primary,
    /// In recovery: replays WAL, read-only.
    Standby,
}

impl fmt::Display for ServerRole {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ServerRole::Primary => "primary",
            ServerRole::Standby => "standby",
        })
    }
}

/// A WAL position (log sequence number). Displays and parses as PostgreSQL writes it
/// (`0/3000148`: high and low 32 bits in hexadecimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position as a byte offset into the WAL.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a text is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {text:?}: expected two hexadecimal halves like 0/3000148")]
pub struct InvalidLsn {
    text: String,
}

impl FromStr for Lsn {
    type Err = InvalidLsn;

    fn from_str(text: &str) -> Result<Lsn, InvalidLsn> {
        let invalid = || InvalidLsn {
            text: text.to_string(),
        };
        let (high, low) = text.split_once('/').ok_or_else(invalid)?;
        let half = |digits: &str| {
            if digits.is_empty() || digits.len() > 8 {
                return Err(invalid());
            }
            u32::from_str_radix(digits, 16).map_err(|_| invalid())
        };
        Ok(Lsn((u64::from(half(high)?) << 32) | u64::from(half(low)?)))
    }
}

/// Where this server's WAL stands, from one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalPosition {
    /// True while the server is in recovery (a standby).
    pub is_standby: bool,
    /// Timeline of the newest WAL on this server. Primary: the timeline it writes. Standby: the
    /// WAL receiver's timeline while one runs; otherwise the newest timeline recorded in the
    /// control file (last restartpoint, minimum recovery point), which can lag a timeline
    /// switch replayed since.
    pub timeline: u32,
    /// Primary: WAL written so far (`pg_current_wal_lsn`). `None` on a standby.
    pub current_lsn: Option<Lsn>,
    /// Standby: WAL received by the running WAL receiver (written, perhaps not yet flushed).
    /// `None` on a primary or when no receiver runs.
    pub received_lsn: Option<Lsn>,
    /// WAL durably on this server's disk: primary `pg_current_wal_flush_lsn`, standby
    /// `pg_last_wal_receive_lsn` (what it has acknowledged). `None` on a standby that has not
    /// streamed since it started.
    pub flushed_lsn: Option<Lsn>,
    /// Standby: end of the last replayed record (`pg_last_wal_replay_lsn`). `None` on a
    /// primary.
    pub replayed_lsn: Option<Lsn>,
    /// Standby: the WAL receiver's status (`streaming`, `waiting`, ...); `None` when no
    /// receiver runs (stopped following, or cannot connect).
    pub wal_receiver_status: Option<String>,
}

/// One standby connected to this server, from `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyState {
    /// Its identity (the tablet id), as `synchronous_standby_names` names it.
    pub application_name: String,
    /// Its address, if it connected over TCP.
    pub client_address: Option<String>,
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
    /// Its priority in `synchronous_standby_names` (0: not named).
    pub sync_priority: i32,
    /// WAL it has written, flushed and replayed, as it last reported.
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
}

/// A position with the end of WAL used for divergence checks (the insert position on a
/// primary, the further of flushed and replayed on a standby).
struct PositionSample {
    position: WalPosition,
    end_of_wal: Lsn,
}

/// One query for every position, so the values belong together.
const POSITION_QUERY: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, \
     pg_last_wal_replay_lsn()::text, \
     receiver.status, \
     receiver.written_lsn::text, \
     receiver.received_tli, \
     (SELECT timeline_id FROM pg_control_checkpoint()), \
     (SELECT min_recovery_end_timeline FROM pg_control_recovery()) \
     FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS receiver ON true";

impl PostgresServer {
    /// Creates this server's data dir as a hot standby of `source`: `pg_basebackup` with WAL
    /// streamed alongside and a fast checkpoint, then `standby.signal` and `primary_conninfo`
    /// written by Tessera (not `-R`), with `application_name` = `source.application_name`.
    /// Atomic like [`PostgresServer::init`]: built in a hidden sibling directory and renamed
    /// into place only when complete. The new standby starts with no
    /// `synchronous_standby_names`. Call [`PostgresServer::start`] next.
    pub async fn init_standby_from(&self, source: &ReplicationSource) -> Result<(), PostgresError> {
        source.validate()?;
        let _lifecycle = self.lifecycle.lock().await;
        let staging = self.new_staging_directory("basebackup")?;
        let result = self.base_backup_in(&staging, source).await;
        super::remove_staging_directory(&staging);
        result?;
        info!(
            data_dir = %self.config.data_dir.display(),
            source = %source.address(),
            application_name = %source.application_name,
            "created a standby data dir with pg_basebackup"
        );
        Ok(())
    }

    async fn base_backup_in(
        &self,
        staging: &Path,
        source: &ReplicationSource,
    ) -> Result<(), PostgresError> {
        let staged_data = staging.join("pgdata");
        let password_file =
            PasswordFile::create(staging.join("pgpass"), &source.password, &self.account)?;
        let mut args: Vec<OsString> = vec![
            format!("--pgdata={}", staged_data.display()).into(),
            format!("--dbname={}", source.tool_conninfo()).into(),
            "--wal-method=stream".into(),
            "--checkpoint=fast".into(),
            "--no-password".into(),
            format!("--label=tessera standby {}", source.application_name).into(),
        ];
        if !self.config.sync_initdb {
            args.push("--no-sync".into());
        }
        info!(source = %source.address(), "taking a base backup");
        let output = tools::run(
            &self.account,
            &self.config.bin_dir,
            "pg_basebackup",
            args,
            Some(&password_file),
            Duration::from_millis(self.config.copy_timeout_ms),
        )
        .await?;
        drop(password_file);
        if !output.success {
            return Err(PostgresError::BaseBackupFailed {
                source_address: source.address(),
                status: output.status,
                output_tail: tail(&output.text, TAIL_LINES),
            });
        }
        // The copy carries the source's replication files; this server's own replace them.
        write_receiver_password(&staged_data, Some(source), &self.account)?;
        conf_files::write_replication(
            &staged_data,
            &ReplicationSettings {
                primary_conninfo: source.receiver_conninfo(),
                synchronous_standby_names: String::new(),
            },
            &self.account,
        )?;
        write_signal_file(&staged_data, STANDBY_SIGNAL, &self.account)?;
        self.install_staged(&staged_data)
    }

    /// Whether the running server is a primary or a standby.
    pub async fn role(&self) -> Result<ServerRole, PostgresError> {
        self.require_running()?;
        let client = self.connect("postgres").await?;
        Ok(if is_in_recovery(&client).await? {
            ServerRole::Standby
        } else {
            ServerRole::Primary
        })
    }

    /// Points this standby's WAL receiver at `source` (a new primary, or the same one again),
    /// without a restart: `primary_conninfo` plus reload; PostgreSQL restarts the receiver with
    /// the new value. Returns once the server uses the new value; streaming itself starts
    /// asynchronously (see [`WalPosition::wal_receiver_status`]). On a stopped standby the
    /// value applies at the next start. Fails with `NotStandby` on a primary.
    pub async fn follow(&self, source: &ReplicationSource) -> Result<(), PostgresError> {
        source.validate()?;
        let _lifecycle = self.lifecycle.lock().await;
        self.require_standby("follow").await?;
        let conninfo = source.receiver_conninfo();
        write_receiver_password(&self.config.data_dir, Some(source), &self.account)?;
        self.update_replication(|settings| settings.primary_conninfo = conninfo.clone())?;
        self.reload_until(&[("primary_conninfo", &conninfo)])
            .await?;
        info!(
            source = %source.address(),
            application_name = %source.application_name,
            "standby follows a new upstream"
        );
        Ok(())
    }

    /// Stops this standby's WAL receiver: empty `primary_conninfo` plus reload, then waits
    /// until no WAL receiver exists and none has appeared for a short settling time, at most
    /// `timeout`. Afterwards the standby acknowledges no WAL to anyone (the consensus "recruit"
    /// step relies on that) until [`PostgresServer::follow`]. Fails with `NotStandby` on a
    /// primary.
    pub async fn stop_following(&self, timeout: Duration) -> Result<(), PostgresError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.require_standby("stop_following").await?;
        self.update_replication(|settings| settings.primary_conninfo.clear())?;
        if self.pid().is_some() {
            self.reload_until(&[("primary_conninfo", "")]).await?;
            self.wait_receiver_gone(timeout).await?;
        }
        write_receiver_password(&self.config.data_dir, None, &self.account)?;
        info!("standby stopped following: no WAL receiver runs");
        Ok(())
    }

    /// Waits until the WAL receiver has been gone for [`RECEIVER_GONE_SETTLE`] without a break.
    async fn wait_receiver_gone(&self, timeout: Duration) -> Result<(), PostgresError> {
        let client = self.connect("postgres").await?;
        let deadline = Deadline::after(timeout);
        let mut gone_since: Option<Instant> = None;
        loop {
            // pg_stat_wal_receiver shows a receiver once it has set its pid; pg_stat_activity
            // as soon as it has a backend slot; checking both narrows the startup window.
            let receivers: i64 = client
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_stat_wal_receiver) \
                          + (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walreceiver')",
                    &[],
                )
                .await
                .map_err(query_failed("looking for a WAL receiver"))?
                .get(0);
            let now = Instant::now();
            if receivers > 0 {
                gone_since = None;
            } else if now.duration_since(*gone_since.get_or_insert(now)) >= RECEIVER_GONE_SETTLE {
                return Ok(());
            }
            if !deadline.sleep_before_next_poll().await {
                return Err(PostgresError::ReplicationTimeout {
                    what: "the WAL receiver stopping".to_string(),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
        }
    }

    /// Waits until this standby has replayed all the WAL it has received (replay LSN reaches
    /// the flushed LSN), at most `timeout`, and returns the position then. Replay also counts
    /// as caught up when the startup process waits for more WAL twice in a row at the same
    /// replay position: WAL that ends in an incomplete record (a primary that died mid-write)
    /// can never be replayed, and a standby that has not streamed since it started has no
    /// flushed position, only WAL in pg_wal.
    pub async fn wait_replay_caught_up(
        &self,
        timeout: Duration,
    ) -> Result<WalPosition, PostgresError> {
        self.require_running()?;
        let client = self.connect("postgres").await?;
        let deadline = Deadline::after(timeout);
        let mut waiting_at: Option<Lsn> = None;
        loop {
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, \
                            pg_last_wal_replay_lsn()::text, \
                            (SELECT wait_event FROM pg_stat_activity \
                              WHERE backend_type = 'startup' LIMIT 1)",
                    &[],
                )
                .await
                .map_err(query_failed("reading replay progress"))?;
            if !row.get::<_, bool>(0) {
                return Err(PostgresError::NotStandby {
                    operation: "wait_replay_caught_up",
                });
            }
            let flushed = lsn_column(&row, 1)?;
            let replayed = lsn_column(&row, 2)?;
            let waiting_for_wal = row
                .get::<_, Option<String>>(3)
                .is_some_and(|event| WAITING_FOR_WAL_EVENTS.contains(&event.as_str()));
            // Without a flushed position (nothing streamed since start) only the startup
            // process can tell that it has replayed everything in pg_wal.
            let caught_up = matches!((flushed, replayed), (Some(flushed), Some(replayed)) if replayed >= flushed);
            // Waiting for WAL twice at the same replay position: nothing replayable is left.
            let stalled = waiting_for_wal && replayed.is_some() && waiting_at == replayed;
            if caught_up || stalled {
                if !caught_up {
                    debug!(
                        ?flushed,
                        ?replayed,
                        "replay stops before the flushed position (an incomplete last record)"
                    );
                }
                return Ok(query_position(&client).await?.position);
            }
            waiting_at = if waiting_for_wal { replayed } else { None };
            if !deadline.sleep_before_next_poll().await {
                return Err(PostgresError::ReplicationTimeout {
                    what: format!(
                        "replay catching up (replayed {}, flushed {})",
                        display_lsn(replayed),
                        display_lsn(flushed)
                    ),
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
        }
    }

    /// Promotes this standby (`pg_promote(wait => true)`), waiting at most `timeout`, and
    /// returns the new timeline id. The promoted server stops following anyone. Fails with
    /// `NotStandby` on a primary and `PromoteTimeout` if promotion does not finish in time.
    ///
    /// `PromoteTimeout` does not mean "not promoted": PostgreSQL has been asked and may still
    /// finish the promotion afterwards. Treat the server as possibly promoted (check
    /// [`PostgresServer::role`], or demote it).
    pub async fn promote(&self, timeout: Duration) -> Result<u32, PostgresError> {
        let _lifecycle = self.lifecycle.lock().await;
        self.require_running()?;
        let client = self.connect("postgres").await?;
        if !is_in_recovery(&client).await? {
            return Err(PostgresError::NotStandby {
                operation: "promote",
            });
        }
        let timeout_ms = timeout.as_millis() as u64;
        let wait_seconds = i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        let promoted: bool = tokio::time::timeout(
            timeout + PROMOTE_SLACK,
            client.query_one("SELECT pg_promote(true, $1)", &[&wait_seconds]),
        )
        .await
        .map_err(|_| PostgresError::PromoteTimeout { timeout_ms })?
        .map_err(query_failed("promoting"))?
        .get(0);
        if !promoted {
            return Err(PostgresError::PromoteTimeout { timeout_ms });
        }
        // A primary has no upstream; a stale one would be followed after a later demotion.
        self.update_replication(|settings| settings.primary_conninfo.clear())?;
        self.reload().await?;
        write_receiver_password(&self.config.data_dir, None, &self.account)?;
        let timeline = query_position(&client).await?.position.timeline;
        info!(timeline, "promoted to primary");
        Ok(timeline)
    }

    /// Turns this primary into a standby that follows `source` (or nothing, if `None`): fast
    /// stop, `standby.signal` and `primary_conninfo`, start. It never serves a write in
    /// between: nothing runs between the stop and the start, and it starts in recovery. A
    /// server that is already a standby only changes its upstream (no restart); a stopped one
    /// is started as a standby.
    pub async fn demote_to_standby(
        &self,
        source: Option<&ReplicationSource>,
    ) -> Result<(), PostgresError> {
        if let Some(source) = source {
            source.validate()?;
        }
        let conninfo = source
            .map(ReplicationSource::receiver_conninfo)
            .unwrap_or_default();
        let _lifecycle = self.lifecycle.lock().await;
        if self.pid().is_some() {
            let client = self.connect("postgres").await?;
            if is_in_recovery(&client).await? {
                if source.is_some() {
                    write_receiver_password(&self.config.data_dir, source, &self.account)?;
                }
                self.update_replication(|settings| settings.primary_conninfo = conninfo.clone())?;
                self.reload_until(&[("primary_conninfo", &conninfo)])
                    .await?;
                if source.is_none() {
                    self.wait_receiver_gone(RELOAD_TIMEOUT).await?;
                    write_receiver_password(&self.config.data_dir, None, &self.account)?;
                }
                info!(source = ?source.map(ReplicationSource::address), "already a standby; changed its upstream");
                return Ok(());
            }
            drop(client);
            info!("demoting the primary: fast stop, then start as a standby");
            self.stop_locked(StopMode::Fast).await?;
        }
        if !self.is_initialized() {
            return Err(PostgresError::NotInitialized {
                path: self.config.data_dir.clone(),
            });
        }
        write_signal_file(&self.config.data_dir, STANDBY_SIGNAL, &self.account)?;
        write_receiver_password(&self.config.data_dir, source, &self.account)?;
        self.update_replication(|settings| settings.primary_conninfo = conninfo)?;
        self.start_locked().await?;
        let client = self.connect("postgres").await?;
        if !is_in_recovery(&client).await? {
            return Err(PostgresError::UnexpectedOutput {
                what: "role after starting with standby.signal",
                text: "primary".to_string(),
            });
        }
        info!(source = ?source.map(ReplicationSource::address), "demoted to a standby");
        Ok(())
    }

    /// Repairs a server whose WAL diverged from `source` (an old primary with commits the new
    /// primary never received) and makes it a standby of `source`: fast stop if running,
    /// `pg_rewind --source-server`, then `standby.signal` and `primary_conninfo`, start. If
    /// pg_rewind finds nothing to rewind it changes nothing and the server simply rejoins.
    ///
    /// If the server was not shut down cleanly, pg_rewind first finishes crash recovery in
    /// single-user mode, which refuses to run with `standby.signal`, so that file is removed
    /// for the rewind. If pg_rewind fails this returns `RewindFailed` and leaves the data dir
    /// as pg_rewind left it, except that `standby.signal` is (re)written so that the node can
    /// never start as a primary: the tablet must quarantine it.
    pub async fn rewind_from(&self, source: &ReplicationSource) -> Result<(), PostgresError> {
        source.validate()?;
        let _lifecycle = self.lifecycle.lock().await;
        self.stop_locked(StopMode::Fast).await?;
        let data_dir = &self.config.data_dir;
        if !self.is_initialized() {
            return Err(PostgresError::NotInitialized {
                path: data_dir.clone(),
            });
        }
        // After a crash, orphaned backends may still hold the data dir; pg_rewind's crash
        // recovery would refuse to start, and a data dir still in use must never be rewound.
        self.clear_stale_lock_files().await?;
        let own_settings = conf_files::read_replication(data_dir)?;
        let state = self.control_state().await?;
        if !is_clean_shutdown(&state) {
            warn!(
                %state,
                "data dir was not shut down cleanly; pg_rewind finishes crash recovery first (without standby.signal, which single-user mode refuses)"
            );
            super::remove_if_present(&data_dir.join(STANDBY_SIGNAL))?;
        }
        info!(source = %source.address(), "rewinding with pg_rewind");
        let mut args = Vec::new();
        if !self.config.sync_initdb {
            args.push("--no-sync".into());
        }
        let output = self.run_pg_rewind(source, args).await?;
        if !output.success {
            if let Err(error) = write_signal_file(data_dir, STANDBY_SIGNAL, &self.account) {
                warn!(%error, "could not write standby.signal after the failed rewind");
            }
            return Err(PostgresError::RewindFailed {
                source_address: source.address(),
                status: output.status,
                output_tail: tail(&output.text, TAIL_LINES),
                data_dir: data_dir.clone(),
            });
        }
        let rewound = !output.text.contains("no rewind required");
        // pg_rewind copied the source's configuration files; this server's own replace them
        // (tessera.conf is rewritten by the start).
        write_signal_file(data_dir, STANDBY_SIGNAL, &self.account)?;
        write_receiver_password(data_dir, Some(source), &self.account)?;
        conf_files::write_replication(
            data_dir,
            &ReplicationSettings {
                primary_conninfo: source.receiver_conninfo(),
                synchronous_standby_names: own_settings.synchronous_standby_names,
            },
            &self.account,
        )?;
        self.start_locked().await?;
        info!(source = %source.address(), rewound, "rejoined as a standby after pg_rewind");
        Ok(())
    }

    /// Whether this server's WAL diverged from `source`'s history, i.e. it has WAL beyond the
    /// point where `source`'s timeline history left the last timeline both share, so it can
    /// only follow `source` after [`PostgresServer::rewind_from`]. Method:
    /// - **running** (primary or standby): this server's timeline, end of WAL and timeline
    ///   history, and the source's timeline and history, are read over SQL (`pg_read_file` of
    ///   `pg_wal/<TLI>.history`) and compared with pg_rewind's rule (see `timeline.rs`);
    /// - **stopped after a clean shutdown**: `pg_rewind --dry-run` decides, from the control
    ///   file and the WAL on disk (it changes nothing);
    /// - **stopped after a crash**: reported as diverged without looking further: pg_rewind
    ///   would first finish crash recovery, which itself writes WAL past any fork point, and
    ///   rewinding a server that did not need it is harmless.
    pub async fn needs_rewind(&self, source: &ReplicationSource) -> Result<bool, PostgresError> {
        source.validate()?;
        let _lifecycle = self.lifecycle.lock().await;
        if self.pid().is_some() {
            return self.needs_rewind_running(source).await;
        }
        if !self.is_initialized() {
            return Err(PostgresError::NotInitialized {
                path: self.config.data_dir.clone(),
            });
        }
        let state = self.control_state().await?;
        if !is_clean_shutdown(&state) {
            info!(%state, "not shut down cleanly: counting it as diverged (a rewind is needed to rejoin)");
            return Ok(true);
        }
        let output = self.run_pg_rewind(source, vec!["--dry-run".into()]).await?;
        if !output.success {
            return Err(PostgresError::ToolFailed {
                tool: "pg_rewind --dry-run",
                status: output.status,
                output_tail: tail(&output.text, TAIL_LINES),
            });
        }
        if output.text.contains("no rewind required") {
            Ok(false)
        } else if output
            .text
            .contains("rewinding from last common checkpoint")
        {
            info!(detail = %tail(&output.text, TAIL_LINES), "pg_rewind --dry-run: this server diverged from the source");
            Ok(true)
        } else {
            Err(PostgresError::UnexpectedOutput {
                what: "pg_rewind --dry-run output",
                text: tail(&output.text, TAIL_LINES),
            })
        }
    }

    async fn needs_rewind_running(
        &self,
        source: &ReplicationSource,
    ) -> Result<bool, PostgresError> {
        let local = self.connect("postgres").await?;
        let remote = source.connect().await?;
        let local_system_id = system_identifier(&local).await?;
        let source_system_id = system_identifier(&remote).await?;
        if local_system_id != source_system_id {
            return Err(PostgresError::DifferentClusters {
                local_system_id,
                source_address: source.address(),
                source_system_id,
            });
        }
        let local_sample = query_position(&local).await?;
        let source_position = query_position(&remote).await?.position;
        let local_history = read_history(&local, local_sample.position.timeline).await?;
        let source_history = read_history(&remote, source_position.timeline).await?;
        match timeline::divergence(&local_history, local_sample.end_of_wal, &source_history) {
            Divergence::Prefix => Ok(false),
            Divergence::Diverged { fork, timeline } => {
                info!(
                    %fork,
                    timeline,
                    end_of_wal = %local_sample.end_of_wal,
                    source = %source.address(),
                    "this server's WAL goes past the point where the source's history forked"
                );
                Ok(true)
            }
            Divergence::Unrelated => {
                warn!(source = %source.address(), "this server and the source share no timeline; counting it as diverged");
                Ok(true)
            }
        }
    }

    /// Runs pg_rewind against `source` with `extra_args`, handing it the password in a
    /// temporary password file next to the data dir (inside, pg_rewind would delete it).
    async fn run_pg_rewind(
        &self,
        source: &ReplicationSource,
        extra_args: Vec<OsString>,
    ) -> Result<tools::ToolOutput, PostgresError> {
        ensure_timeline_in_control_file(source).await?;
        let password_file = PasswordFile::create(
            self.sibling_path("pgpass")?,
            &source.password,
            &self.account,
        )?;
        let mut args: Vec<OsString> = vec![
            format!("--target-pgdata={}", self.config.data_dir.display()).into(),
            format!("--source-server={}", source.tool_conninfo()).into(),
        ];
        args.extend(extra_args);
        tools::run(
            &self.account,
            &self.config.bin_dir,
            "pg_rewind",
            args,
            Some(&password_file),
            Duration::from_millis(self.config.copy_timeout_ms),
        )
        .await
    }

    /// The "Database cluster state" of the (stopped) data dir, from `pg_controldata`.
    async fn control_state(&self) -> Result<String, PostgresError> {
        let output = tools::run(
            &self.account,
            &self.config.bin_dir,
            "pg_controldata",
            vec![self.config.data_dir.clone().into()],
            None,
            CONTROL_DATA_TIMEOUT,
        )
        .await?;
        if !output.success {
            return Err(PostgresError::ToolFailed {
                tool: "pg_controldata",
                status: output.status,
                output_tail: tail(&output.text, TAIL_LINES),
            });
        }
        output
            .text
            .lines()
            .find_map(|line| line.strip_prefix("Database cluster state:"))
            .map(|state| state.trim().to_string())
            .ok_or_else(|| PostgresError::UnexpectedOutput {
                what: "pg_controldata output",
                text: tail(&output.text, TAIL_LINES),
            })
    }

    /// Sets `synchronous_standby_names` (e.g. `ANY 1 ("zone2-201", "zone3-301")`, compiled
    /// from the leader's durability rules; empty for none) and returns once the server uses it.
    /// With `synchronous_commit = on`, later commits wait for that many standbys. When waiting
    /// is switched on (from empty), a `CHECKPOINT` follows: the checkpointer publishes "sync
    /// standbys defined" to committing backends, and a checkpoint request proves it has
    /// processed the reload. A value PostgreSQL rejects is rolled back in the file and
    /// reported as `InvalidSetting`. On a stopped server it applies at the next start. Set it
    /// on a standby before promoting it, and the promoted server waits from its first commit.
    pub async fn set_synchronous_standby_names(
        &self,
        expression: &str,
    ) -> Result<(), PostgresError> {
        if expression.chars().any(char::is_control) {
            return Err(PostgresError::InvalidSetting {
                name: "synchronous_standby_names".to_string(),
                reason: "values cannot contain control characters".to_string(),
            });
        }
        let _lifecycle = self.lifecycle.lock().await;
        let data_dir = &self.config.data_dir;
        let previous = conf_files::read_replication(data_dir)?;
        if self.pid().is_none() {
            self.update_replication(|settings| {
                settings.synchronous_standby_names = expression.to_string();
            })?;
            return Ok(());
        }
        let client = self.connect("postgres").await?;
        let previous_effective = show(&client, "synchronous_standby_names").await?;
        self.update_replication(|settings| {
            settings.synchronous_standby_names = expression.to_string();
        })?;
        if let Err(error) = self
            .reload_until(&[("synchronous_standby_names", expression)])
            .await
        {
            // PostgreSQL kept the old value; a restart must not fail on the rejected one.
            conf_files::write_replication(data_dir, &previous, &self.account)?;
            self.reload().await?;
            return Err(error);
        }
        if previous_effective.trim().is_empty() && !expression.trim().is_empty() {
            client
                .batch_execute("CHECKPOINT")
                .await
                .map_err(query_failed(
                    "checkpoint after enabling synchronous replication",
                ))?;
        }
        info!(
            synchronous_standby_names = expression,
            "synchronous standby set changed"
        );
        Ok(())
    }

    /// The `synchronous_standby_names` in effect (running) or configured (stopped).
    pub async fn synchronous_standby_names(&self) -> Result<String, PostgresError> {
        if self.pid().is_none() {
            return Ok(
                conf_files::read_replication(&self.config.data_dir)?.synchronous_standby_names
            );
        }
        let client = self.connect("postgres").await?;
        show(&client, "synchronous_standby_names").await
    }

    /// Timeline and WAL positions of this server, from one query (see [`WalPosition`]).
    pub async fn wal_position(&self) -> Result<WalPosition, PostgresError> {
        self.require_running()?;
        let client = self.connect("postgres").await?;
        Ok(query_position(&client).await?.position)
    }

    /// The standbys streaming from this server, from `pg_stat_replication`, by name.
    pub async fn replication_status(&self) -> Result<Vec<StandbyState>, PostgresError> {
        self.require_running()?;
        let client = self.connect("postgres").await?;
        let rows = client
            .query(
                "SELECT application_name, client_addr::text, state, sync_state, sync_priority, \
                        write_lsn::text, flush_lsn::text, replay_lsn::text \
                   FROM pg_stat_replication ORDER BY application_name, pid",
                &[],
            )
            .await
            .map_err(query_failed("reading pg_stat_replication"))?;
        rows.iter()
            .map(|row| {
                Ok(StandbyState {
                    application_name: row.get::<_, Option<String>>(0).unwrap_or_default(),
                    client_address: row.get(1),
                    state: row.get::<_, Option<String>>(2).unwrap_or_default(),
                    sync_state: row.get::<_, Option<String>>(3).unwrap_or_default(),
                    sync_priority: row.get::<_, Option<i32>>(4).unwrap_or_default(),
                    write_lsn: lsn_column(row, 5)?,
                    flush_lsn: lsn_column(row, 6)?,
                    replay_lsn: lsn_column(row, 7)?,
                })
            })
            .collect()
    }

    fn require_running(&self) -> Result<(), PostgresError> {
        match self.pid() {
            Some(_) => Ok(()),
            None => Err(PostgresError::NotRunning),
        }
    }

    /// Fails with `NotStandby` unless the server is a running standby, or a stopped data dir
    /// that will start as one.
    async fn require_standby(&self, operation: &'static str) -> Result<(), PostgresError> {
        let standby = if self.pid().is_some() {
            is_in_recovery(&self.connect("postgres").await?).await?
        } else if self.is_initialized() {
            self.config.data_dir.join(STANDBY_SIGNAL).is_file()
        } else {
            return Err(PostgresError::NotInitialized {
                path: self.config.data_dir.clone(),
            });
        };
        if standby {
            Ok(())
        } else {
            Err(PostgresError::NotStandby { operation })
        }
    }

    /// Read-modify-write of the replication file (callers hold the lifecycle lock). Also
    /// rewrites `tessera.conf`, which includes the replication file, for data dirs written
    /// before it existed.
    fn update_replication(
        &self,
        change: impl FnOnce(&mut ReplicationSettings),
    ) -> Result<(), PostgresError> {
        let data_dir = &self.config.data_dir;
        let mut settings = conf_files::read_replication(data_dir)?;
        change(&mut settings);
        conf_files::write_replication(data_dir, &settings, &self.account)?;
        self.write_managed_settings()
    }

    /// Reloads the configuration and waits until a session sees every `(setting, value)` in
    /// `expected`. The postmaster re-reads the files and signals every child before it accepts
    /// another connection, so once a session sees a value, every process has been told. A
    /// value the server rejected is reported from its log as `InvalidSetting`. No-op when
    /// stopped.
    async fn reload_until(&self, expected: &[(&str, &str)]) -> Result<(), PostgresError> {
        if self.pid().is_none() {
            return Ok(());
        }
        let log_offset = std::fs::metadata(&self.config.log_file)
            .map(|metadata| metadata.len())
            .unwrap_or_default();
        self.reload().await?;
        let client = self.connect("postgres").await?;
        let deadline = Deadline::after(RELOAD_TIMEOUT);
        'poll: loop {
            for (name, value) in expected {
                let current: String = client
                    .query_one("SELECT current_setting($1)", &[name])
                    .await
                    .map_err(query_failed("reading a setting after reload"))?
                    .get(0);
                if current == *value {
                    continue;
                }
                // The postmaster logs a rejected value and keeps the old one.
                let marker = format!("invalid value for parameter \"{name}\"");
                let log = read_log_since(&self.config.log_file, log_offset);
                if let Some(line) = log.lines().find(|line| line.contains(&marker)) {
                    return Err(PostgresError::InvalidSetting {
                        name: name.to_string(),
                        reason: format!("PostgreSQL rejected it: {}", line.trim()),
                    });
                }
                if deadline.sleep_before_next_poll().await {
                    continue 'poll;
                }
                return Err(PostgresError::ReplicationTimeout {
                    what: format!("reloading {name}"),
                    timeout_ms: RELOAD_TIMEOUT.as_millis() as u64,
                });
            }
            return Ok(());
        }
    }
}

/// The end of a bounded wait, for polling loops.
struct Deadline {
    at: Instant,
}

impl Deadline {
    fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
        }
    }

    /// Sleeps one [`POLL_INTERVAL`] and returns true, or returns false at once when the
    /// deadline has passed (the caller then reports its timeout).
    async fn sleep_before_next_poll(&self) -> bool {
        if Instant::now() >= self.at {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        true
    }
}

/// `pg_is_in_recovery()`.
async fn is_in_recovery(client: &tokio_postgres::Client) -> Result<bool, PostgresError> {
    Ok(client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(query_failed("reading pg_is_in_recovery()"))?
        .get(0))
}

async fn show(client: &tokio_postgres::Client, setting: &str) -> Result<String, PostgresError> {
    Ok(client
        .query_one("SELECT current_setting($1)", &[&setting])
        .await
        .map_err(query_failed("reading a setting"))?
        .get(0))
}

/// The cluster's system identifier, which every copy made with pg_basebackup shares.
async fn system_identifier(client: &tokio_postgres::Client) -> Result<String, PostgresError> {
    Ok(client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .map_err(query_failed("reading the system identifier"))?
        .get(0))
}

/// Runs [`POSITION_QUERY`] and interprets it.
async fn query_position(client: &tokio_postgres::Client) -> Result<PositionSample, PostgresError> {
    let row = client
        .query_one(POSITION_QUERY, &[])
        .await
        .map_err(query_failed("reading WAL positions"))?;
    let is_standby: bool = row.get(0);
    let timeline_column = |index: usize| {
        row.get::<_, Option<i32>>(index)
            .and_then(|timeline| u32::try_from(timeline).ok())
            .unwrap_or(0)
    };
    if !is_standby {
        let wal_file: Option<String> = row.get(1);
        let timeline = wal_file
            .as_deref()
            .and_then(timeline_of_wal_file)
            .ok_or_else(|| PostgresError::UnexpectedOutput {
                what: "WAL file name",
                text: wal_file.clone().unwrap_or_default(),
            })?;
        let current_lsn = lsn_column(&row, 2)?;
        let flushed_lsn = lsn_column(&row, 3)?;
        let insert_lsn = lsn_column(&row, 4)?;
        return Ok(PositionSample {
            end_of_wal: insert_lsn.or(current_lsn).unwrap_or_default(),
            position: WalPosition {
                is_standby,
                timeline,
                current_lsn,
                received_lsn: None,
                flushed_lsn,
                replayed_lsn: None,
                wal_receiver_status: None,
            },
        });
    }
    let flushed_lsn = lsn_column(&row, 5)?;
    let replayed_lsn = lsn_column(&row, 6)?;
    let wal_receiver_status: Option<String> = row.get(7);
    let received_lsn = lsn_column(&row, 8)?;
    let timeline = [9, 10, 11]
        .into_iter()
        .map(timeline_column)
        .max()
        .unwrap_or(0);
    Ok(PositionSample {
        end_of_wal: flushed_lsn.max(replayed_lsn).unwrap_or_default(),
        position: WalPosition {
            is_standby,
            timeline,
            current_lsn: None,
            received_lsn,
            flushed_lsn,
            replayed_lsn,
            wal_receiver_status,
        },
    })
}

/// Makes sure a primary `source` records its current timeline in its control file.
///
/// PostgreSQL 15's pg_rewind takes the source's timeline from the last checkpoint in the
/// source's control file (16 also looks at the minimum recovery point). A just-promoted server
/// records its new timeline there only when its first checkpoint completes, and that one is
/// spread over minutes; until then pg_rewind sees both servers on the old timeline and answers
/// "no rewind required" for a server that did diverge. A CHECKPOINT on the source closes the
/// window (Patroni does the same).
async fn ensure_timeline_in_control_file(source: &ReplicationSource) -> Result<(), PostgresError> {
    let client = source.connect().await?;
    let position = query_position(&client).await?.position;
    if position.is_standby {
        return Ok(());
    }
    let recorded: i32 = client
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .map_err(query_failed("reading the source's checkpoint timeline"))?
        .get(0);
    if i64::from(recorded) < i64::from(position.timeline) {
        info!(
            source = %source.address(),
            recorded_timeline = recorded,
            timeline = position.timeline,
            "checkpointing the just-promoted source so that pg_rewind sees its timeline"
        );
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(query_failed("checkpoint on the rewind source"))?;
    }
    Ok(())
}

/// The timeline history leading to `timeline`, read on the server behind `client`.
async fn read_history(
    client: &tokio_postgres::Client,
    timeline: u32,
) -> Result<Vec<timeline::TimelineSpan>, PostgresError> {
    let text = if timeline <= 1 {
        String::new()
    } else {
        client
            .query_one(
                "SELECT pg_read_file($1)",
                &[&format!("pg_wal/{timeline:08X}.history")],
            )
            .await
            .map_err(query_failed("reading a timeline history file"))?
            .get(0)
    };
    timeline::parse_history(timeline.max(1), &text).map_err(|reason| {
        PostgresError::UnexpectedOutput {
            what: "timeline history",
            text: reason,
        }
    })
}

/// The timeline of a WAL segment file name (its first 8 hexadecimal digits).
fn timeline_of_wal_file(name: &str) -> Option<u32> {
    name.get(..8)
        .and_then(|digits| u32::from_str_radix(digits, 16).ok())
}

/// Reads a nullable `pg_lsn::text` column.
fn lsn_column(row: &tokio_postgres::Row, index: usize) -> Result<Option<Lsn>, PostgresError> {
    row.get::<_, Option<String>>(index)
        .map(|text| {
            text.parse()
                .map_err(|_| PostgresError::UnexpectedOutput { what: "LSN", text })
        })
        .transpose()
}

fn display_lsn(lsn: Option<Lsn>) -> String {
    lsn.map_or_else(|| "none".to_string(), |lsn| lsn.to_string())
}

/// Whether pg_controldata's cluster state is a clean shutdown (of a primary or a standby).
fn is_clean_shutdown(state: &str) -> bool {
    matches!(state, "shut down" | "shut down in recovery")
}

/// Writes the WAL receiver's password file for `source` into `data_dir`, or removes it when
/// there is no source.
fn write_receiver_password(
    data_dir: &Path,
    source: Option<&ReplicationSource>,
    account: &super::account::ServerAccount,
) -> Result<(), PostgresError> {
    let path = data_dir.join(RECEIVER_PASSWORD_FILE);
    match source {
        Some(source) => conf_files::write_atomically(
            &path,
            &tools::password_file_contents(&source.password),
            account,
        ),
        None => super::remove_if_present(&path),
    }
}

/// Creates an empty marker file (like `standby.signal`) owned by the account, durably.
fn write_signal_file(
    data_dir: &Path,
    name: &str,
    account: &super::account::ServerAccount,
) -> Result<(), PostgresError> {
    conf_files::write_atomically(&data_dir.join(name), "", account)
}

fn query_failed(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PostgresError {
    move |source| PostgresError::Query {
        what: what.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: LSNs read and print exactly as PostgreSQL writes them, and garbage is refused.
    #[test]
    fn lsn_round_trips_postgres_text() {
        for text in ["0/0", "0/3000148", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap().as_u64(), 1 << 32);
        assert!("0/3000148".parse::<Lsn>().unwrap() < "1/0".parse().unwrap());
        for bad in ["", "0", "0/", "/1", "x/1", "1/2/3", "100000000/0", "0/-1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} was accepted");
        }
    }

    /// Goal: a source that would break the conninfo, the password file or the standby's
    /// identity is refused, and Debug never shows the password.
    #[test]
    fn replication_sources_are_validated_and_redacted() {
        let good = ReplicationSource {
            host: "127.0.0.1".to_string(),
            port: 5432,
            user: "postgres".to_string(),
            password: "s3cret".to_string(),
            application_name: "zone1-101".to_string(),
        };
        assert!(good.validate().is_ok());
        assert!(!format!("{good:?}").contains("s3cret"));
        assert!(!good.tool_conninfo().contains("s3cret"));
        assert!(
            good.receiver_conninfo()
                .contains("application_name='zone1-101'")
        );
        let variants: [fn(&mut ReplicationSource); 6] = [
            |source| source.host.clear(),
            |source| source.port = 0,
            |source| source.password = "a\nb".to_string(),
            |source| source.application_name.clear(),
            |source| source.application_name = "x".repeat(64),
            |source| source.application_name = "zöne".to_string(),
        ];
        for change in variants {
            let mut source = good.clone();
            change(&mut source);
            assert!(
                matches!(
                    source.validate(),
                    Err(PostgresError::InvalidReplicationSource { .. })
                ),
                "{source:?} was accepted"
            );
        }
    }

    /// Compile-time check, never called: every operation can run inside `tokio::spawn`, as
    /// the tablet's RPC handlers run them. (Async closures or a non-Send value held across an
    /// await would break this; the build fails here first.)
    #[allow(dead_code)]
    fn operations_can_be_spawned(
        server: std::sync::Arc<PostgresServer>,
        source: ReplicationSource,
    ) {
        tokio::spawn(async move {
            let timeout = Duration::from_secs(1);
            let _ = server.init_standby_from(&source).await;
            let _ = server.role().await;
            let _ = server.follow(&source).await;
            let _ = server.stop_following(timeout).await;
            let _ = server.wait_replay_caught_up(timeout).await;
            let _ = server.promote(timeout).await;
            let _ = server.demote_to_standby(Some(&source)).await;
            let _ = server.needs_rewind(&source).await;
            let _ = server.rewind_from(&source).await;
            let _ = server.set_synchronous_standby_names("").await;
            let _ = server.synchronous_standby_names().await;
            let _ = server.wal_position().await;
            let _ = server.replication_status().await;
        });
    }

    /// Goal: the timeline comes from the first 8 hex digits of a WAL file name.
    #[test]
    fn reads_timeline_from_wal_file_names() {
        assert_eq!(timeline_of_wal_file("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of_wal_file("0000001A0000000000000003"), Some(26));
        assert_eq!(timeline_of_wal_file("zz"), None);
    }
}
