//! Streaming replication between real PostgreSQL 15 servers through
//! `tessera_tablet::postgres`: standbys from pg_basebackup, synchronous commit, following and
//! un-following, switchover, failover with a diverged old primary repaired by pg_rewind (after
//! a clean stop and after kill -9), and the typed failures. Needs PostgreSQL 15 in
//! /usr/lib/postgresql/15/bin; when run as root, PostgreSQL runs as the `postgres` user.
//!
//! Every server runs with fsync off and small WAL settings; each test uses two servers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tessera_tablet::postgres::{
    PostgresConfig, PostgresError, PostgresServer, PostgresState, ReplicationSource, ServerRole,
    StandbyState, StopMode, WalPosition,
};
use tokio_postgres::error::SqlState;

mod postgres_support;
use postgres_support::{create_items_table, free_port, test_config, test_dir};

/// The superuser password of every test cluster: it holds the characters that need escaping in
/// a password file (`:` and `\`), a conninfo (`'`, `\`, space) and a configuration file (`'`,
/// `\`), so the tests prove each layer escapes it.
const PASSWORD: &str = r"pa:ss'w\rd x";

/// A fragment of [`PASSWORD`] that must never appear in a log or a setting.
const PASSWORD_FRAGMENT: &str = "pa:ss";

/// Upper bound for anything the tests wait for.
const WAIT: Duration = Duration::from_secs(30);

/// Bound for stop_following and replay catch-up.
const SHORT_WAIT: Duration = Duration::from_secs(10);

/// Test configuration: no fsync, small WAL, the tricky password; everything else as in
/// production.
fn replication_config(base: &Path) -> PostgresConfig {
    let mut config = test_config(base, free_port());
    config.password = PASSWORD.to_string();
    config.settings.extend(
        [
            ("min_wal_size", "32MB"),
            ("max_wal_size", "64MB"),
            ("wal_keep_size", "64MB"),
        ]
        .map(|(name, value)| (name.to_string(), value.to_string())),
    );
    config
}

/// How a standby named `application_name` reaches `primary` over TCP.
fn source_for(primary: &PostgresServer, application_name: &str) -> ReplicationSource {
    ReplicationSource {
        host: "127.0.0.1".to_string(),
        port: primary.config().port,
        user: "postgres".to_string(),
        password: PASSWORD.to_string(),
        application_name: application_name.to_string(),
    }
}

/// A started primary with database `app` and an empty table `items`.
async fn primary(directory: &Path) -> PostgresServer {
    let server = PostgresServer::new(replication_config(directory)).expect("new");
    server.init().await.expect("init");
    server.start().await.expect("start");
    create_items_table(&server).await;
    server
}

/// A started standby of `source`, made with init_standby_from.
async fn standby(directory: &Path, source: &ReplicationSource) -> PostgresServer {
    let server = PostgresServer::new(replication_config(directory)).expect("new");
    server
        .init_standby_from(source)
        .await
        .expect("init_standby_from");
    server.start().await.expect("start standby");
    server
}

async fn insert(server: &PostgresServer, id: i32) {
    let client = server.connect("app").await.expect("connect");
    client
        .execute("INSERT INTO items VALUES ($1)", &[&id])
        .await
        .expect("insert");
}

async fn ids(server: &PostgresServer) -> Vec<i32> {
    let client = server.connect("app").await.expect("connect");
    client
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .expect("select")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Polls `probe` until it returns `Some`, for at most [`WAIT`].
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `server` holds exactly the rows `expected`.
async fn wait_for_ids(server: &PostgresServer, expected: &[i32]) {
    eventually(&format!("rows {expected:?}"), async || {
        (ids(server).await == expected).then_some(())
    })
    .await;
}

/// Waits until `server` reports a standby named `name` in `state` (and returns it).
async fn wait_for_standby(server: &PostgresServer, name: &str, state: &str) -> StandbyState {
    eventually(&format!("standby {name} {state}"), async || {
        server
            .replication_status()
            .await
            .expect("replication_status")
            .into_iter()
            .find(|standby| standby.application_name == name && standby.state == state)
    })
    .await
}

/// Waits until the standby's WAL receiver streams, and returns its position then.
async fn wait_streaming(server: &PostgresServer) -> WalPosition {
    eventually("the WAL receiver streaming", async || {
        let position = server.wal_position().await.expect("wal_position");
        (position.wal_receiver_status.as_deref() == Some("streaming")).then_some(position)
    })
    .await
}

/// Asserts that the password appears in neither server log.
fn assert_password_not_logged(servers: &[&PostgresServer]) {
    for server in servers {
        let log = std::fs::read_to_string(&server.config().log_file).expect("read log");
        assert!(
            !log.contains(PASSWORD_FRAGMENT),
            "the password appears in {}",
            server.config().log_file.display()
        );
    }
}

/// Goal: a standby made with init_standby_from is a hot standby, known to the primary by its
/// application name, that replays the primary's writes; positions and pg_stat_replication
/// report it with increasing LSNs; the password is in no log and no setting.
#[tokio::test]
async fn base_backup_standby_replicates_writes_and_reports_positions() {
    let (directory_a, directory_b) = (test_dir(), test_dir());
    let a = primary(directory_a.path()).await;
    let before = a.wal_position().await.unwrap();
    assert!(!before.is_standby);
    assert_eq!(before.timeline, 1);
    assert!(before.current_lsn.is_some() && before.flushed_lsn.is_some());
    assert_eq!((before.replayed_lsn, before.received_lsn), (None, None));

    let b = standby(directory_b.path(), &source_for(&a, "zone2-201")).await;
    assert_eq!(a.role().await.unwrap(), ServerRole::Primary);
    assert_eq!(b.role().await.unwrap(), ServerRole::Standby);
    let client = a.connect("app").await.unwrap();
    client
        .execute("INSERT INTO items SELECT generate_series(1, 100)", &[])
        .await
        .unwrap();
    let expected: Vec<i32> = (1..=100).collect();
    wait_for_ids(&b, &expected).await;

    let after = a.wal_position().await.unwrap();
    assert!(after.current_lsn > before.current_lsn);
    let first = wait_streaming(&b).await;
    assert!(first.is_standby);
    assert_eq!(first.timeline, 1);
    assert_eq!(first.current_lsn, None);
    let replayed = first.replayed_lsn.expect("replay position");
    assert!(first.flushed_lsn.is_some_and(|flushed| flushed >= replayed));
    let seen = wait_for_standby(&a, "zone2-201", "streaming").await;
    assert_eq!(seen.sync_state, "async");
    assert_eq!(seen.client_address.as_deref(), Some("127.0.0.1/32"));
    assert!(
        seen.flush_lsn
            .is_some_and(|flushed| flushed <= after.flushed_lsn.unwrap())
    );

    insert(&a, 101).await;
    wait_for_ids(&b, &(1..=101).collect::<Vec<_>>()).await;
    let second = b.wal_position().await.unwrap();
    assert!(second.replayed_lsn > first.replayed_lsn);
    assert!(a.wal_position().await.unwrap().current_lsn > after.current_lsn);

    // The WAL receiver reads its password from a private file, not from the setting.
    let standby_client = b.connect("postgres").await.unwrap();
    let conninfo: String = standby_client
        .query_one("SHOW primary_conninfo", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        conninfo.contains("application_name='zone2-201'"),
        "{conninfo}"
    );
    assert!(!conninfo.contains(PASSWORD_FRAGMENT));
    let password_file = b.config().data_dir.join("tessera-replication.pgpass");
    let mode = std::fs::metadata(&password_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_password_not_logged(&[&a, &b]);
    let leftovers: Vec<_> = std::fs::read_dir(directory_b.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    b.stop(StopMode::Fast).await.unwrap();
    a.stop(StopMode::Fast).await.unwrap();
}

/// Goal: with synchronous_standby_names naming the standby, a commit waits while the standby
/// does not follow (stop_following: no WAL receiver left, replay caught up) and completes as
/// soon as it follows again.
#[tokio::test]
async fn synchronous_commit_waits_while_the_standby_does_not_follow() {
    let (directory_a, directory_b) = (test_dir(), test_dir());
    let a = primary(directory_a.path()).await;
    let source = source_for(&a, "zone2-201");
    let b = standby(directory_b.path(), &source).await;
    let expression = r#"ANY 1 ("zone2-201")"#;
    a.set_synchronous_standby_names(expression).await.unwrap();
    assert_eq!(a.synchronous_standby_names().await.unwrap(), expression);
    wait_for_standby(&a, "zone2-201", "streaming").await;
    let quorum = eventually("the standby counted in the quorum", async || {
        a.replication_status()
            .await
            .unwrap()
            .into_iter()
            .find(|standby| standby.sync_state == "quorum")
    })
    .await;
    assert_eq!(quorum.application_name, "zone2-201");
    tokio::time::timeout(WAIT, insert(&a, 1))
        .await
        .expect("a commit completes while the standby follows");

    b.stop_following(SHORT_WAIT).await.unwrap();
    assert_eq!(b.wal_position().await.unwrap().wal_receiver_status, None);
    eventually("the walsender gone", async || {
        a.replication_status()
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;

    let writer = a.connect("app").await.unwrap();
    let pending = tokio::spawn(async move {
        writer
            .execute("INSERT INTO items VALUES (2)", &[])
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !pending.is_finished(),
        "a commit was acknowledged without its synchronous standby"
    );
    let caught_up = b.wait_replay_caught_up(SHORT_WAIT).await.unwrap();
    assert!(caught_up.replayed_lsn >= caught_up.flushed_lsn);
    assert_eq!(
        ids(&b).await,
        vec![1],
        "the standby received WAL after stop_following"
    );

    b.follow(&source).await.unwrap();
    tokio::time::timeout(WAIT, pending)
        .await
        .expect("the commit completes once the standby follows again")
        .unwrap()
        .expect("the commit succeeds");
    wait_for_ids(&b, &[1, 2]).await;

    // Without synchronous standbys, a commit needs nobody.
    a.set_synchronous_standby_names("").await.unwrap();
    b.stop_following(SHORT_WAIT).await.unwrap();
    tokio::time::timeout(SHORT_WAIT, insert(&a, 3))
        .await
        .expect("an asynchronous commit completes alone");
    assert_password_not_logged(&[&a, &b]);
    b.stop(StopMode::Fast).await.unwrap();
    a.stop(StopMode::Fast).await.unwrap();
}

/// Goal: a primary demoted to a standby refuses writes; after the other server is promoted it
/// needs no rewind (its WAL is part of the new history), follows it, and replays its writes on
/// the new timeline.
#[tokio::test]
async fn demoted_primary_follows_the_promoted_standby() {
    let (directory_a, directory_b) = (test_dir(), test_dir());
    let a = primary(directory_a.path()).await;
    let b = standby(directory_b.path(), &source_for(&a, "zone2-201")).await;
    insert(&a, 1).await;
    wait_for_ids(&b, &[1]).await;

    a.demote_to_standby(None).await.unwrap();
    assert_eq!(a.role().await.unwrap(), ServerRole::Standby);
    let refused = a
        .connect("app")
        .await
        .unwrap()
        .execute("INSERT INTO items VALUES (2)", &[])
        .await
        .expect_err("a demoted primary accepted a write");
    assert_eq!(refused.code(), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    // It has streamed nothing since its restart: only the startup process waiting for more
    // WAL tells that its replay is complete.
    let replayed = a.wait_replay_caught_up(SHORT_WAIT).await.unwrap();
    assert_eq!(replayed.flushed_lsn, None);
    assert!(replayed.replayed_lsn.is_some());

    b.stop_following(SHORT_WAIT).await.unwrap();
    b.wait_replay_caught_up(SHORT_WAIT).await.unwrap();
    assert_eq!(b.promote(WAIT).await.unwrap(), 2);
    assert_eq!(b.role().await.unwrap(), ServerRole::Primary);
    assert_eq!(b.wal_position().await.unwrap().timeline, 2);

    let new_primary = source_for(&b, "zone1-101");
    assert!(!a.needs_rewind(&new_primary).await.unwrap());
    a.demote_to_standby(Some(&new_primary)).await.unwrap();
    insert(&b, 3).await;
    wait_for_ids(&a, &[1, 3]).await;
    assert_eq!(wait_streaming(&a).await.timeline, 2);
    wait_for_standby(&b, "zone1-101", "streaming").await;
    a.stop(StopMode::Fast).await.unwrap();
    b.stop(StopMode::Fast).await.unwrap();
}

/// Sets up the failover both rewind tests start from: `a` was the primary and committed row 2
/// that `b` never received; `b` was promoted and committed row 3.
async fn diverged_pair(directory_a: &Path, directory_b: &Path) -> (PostgresServer, PostgresServer) {
    let a = primary(directory_a).await;
    let b = standby(directory_b, &source_for(&a, "zone2-201")).await;
    insert(&a, 1).await;
    wait_for_ids(&b, &[1]).await;
    b.stop_following(SHORT_WAIT).await.unwrap();
    b.wait_replay_caught_up(SHORT_WAIT).await.unwrap();
    insert(&a, 2).await;
    assert_eq!(b.promote(WAIT).await.unwrap(), 2);
    insert(&b, 3).await;
    (a, b)
}

/// Waits until the rewound `a` is a standby of `b` with `b`'s rows only.
async fn assert_rejoined(a: &PostgresServer, b: &PostgresServer, new_primary: &ReplicationSource) {
    assert_eq!(a.role().await.unwrap(), ServerRole::Standby);
    wait_for_ids(a, &[1, 3]).await;
    insert(b, 4).await;
    wait_for_ids(a, &[1, 3, 4]).await;
    wait_for_standby(b, "zone1-101", "streaming").await;
    assert!(!a.needs_rewind(new_primary).await.unwrap());
}

/// Goal: an old primary with a commit the promoted standby never received is detected as
/// diverged while running as a primary, while running as a standby, and stopped (pg_rewind
/// --dry-run); pg_rewind repairs it and it rejoins as a standby with the new primary's rows and
/// without its own divergent row.
#[tokio::test]
async fn diverged_old_primary_is_rewound_and_rejoins() {
    let (directory_a, directory_b) = (test_dir(), test_dir());
    let (a, b) = diverged_pair(directory_a.path(), directory_b.path()).await;
    let new_primary = source_for(&b, "zone1-101");

    assert!(
        a.needs_rewind(&new_primary).await.unwrap(),
        "running primary"
    );
    a.demote_to_standby(Some(&new_primary)).await.unwrap();
    assert!(
        a.needs_rewind(&new_primary).await.unwrap(),
        "running standby"
    );
    a.stop(StopMode::Fast).await.unwrap();
    assert!(a.needs_rewind(&new_primary).await.unwrap(), "stopped");

    a.rewind_from(&new_primary).await.unwrap();
    assert_rejoined(&a, &b, &new_primary).await;
    a.stop(StopMode::Fast).await.unwrap();
    b.stop(StopMode::Fast).await.unwrap();
}

/// Goal: an old primary killed with SIGKILL after a divergent commit (not shut down cleanly)
/// counts as diverged, and rewind_from finishes its crash recovery and rejoins it as a standby
/// without the divergent row.
#[tokio::test]
async fn crashed_old_primary_is_rewound_and_rejoins() {
    let (directory_a, directory_b) = (test_dir(), test_dir());
    let (a, b) = diverged_pair(directory_a.path(), directory_b.path()).await;
    let new_primary = source_for(&b, "zone1-101");

    let mut exits = a.exits();
    kill(Pid::from_raw(a.pid().unwrap() as i32), Signal::SIGKILL).unwrap();
    tokio::time::timeout(
        WAIT,
        exits.wait_for(|state| matches!(state, PostgresState::Exited { .. })),
    )
    .await
    .expect("exit noticed")
    .unwrap();
    assert!(a.needs_rewind(&new_primary).await.unwrap());

    a.rewind_from(&new_primary).await.unwrap();
    assert_rejoined(&a, &b, &new_primary).await;
    a.stop(StopMode::Fast).await.unwrap();
    b.stop(StopMode::Fast).await.unwrap();
}

/// Goal: failures are typed errors that leave nothing half-done: a base backup from nowhere
/// installs no data dir, role changes on a primary are refused, a rejected
/// synchronous_standby_names is rolled back (the server still restarts), and a rewind from
/// another cluster fails with RewindFailed, leaving a data dir that can only start as a
/// standby.
#[tokio::test]
async fn replication_failures_are_typed_errors() {
    let (directory_a, directory_c, directory_d) = (test_dir(), test_dir(), test_dir());
    let a = primary(directory_a.path()).await;

    let d = PostgresServer::new(replication_config(directory_d.path())).unwrap();
    let nowhere = ReplicationSource {
        port: free_port(),
        ..source_for(&a, "zone3-301")
    };
    let error = d.init_standby_from(&nowhere).await.unwrap_err();
    assert!(
        matches!(error, PostgresError::BaseBackupFailed { .. }),
        "{error}"
    );
    assert!(!d.is_initialized());
    assert_eq!(std::fs::read_dir(directory_d.path()).unwrap().count(), 0);

    let source = source_for(&a, "zone3-301");
    for result in [
        a.promote(SHORT_WAIT).await.map(|_| ()),
        a.stop_following(SHORT_WAIT).await,
        a.follow(&source).await,
    ] {
        assert!(
            matches!(result, Err(PostgresError::NotStandby { .. })),
            "{result:?}"
        );
    }

    let error = a
        .set_synchronous_standby_names("ANY x (")
        .await
        .unwrap_err();
    assert!(
        matches!(error, PostgresError::InvalidSetting { .. }),
        "{error}"
    );
    assert_eq!(a.synchronous_standby_names().await.unwrap(), "");
    a.restart().await.unwrap();

    let c = PostgresServer::new(replication_config(directory_c.path())).unwrap();
    c.init().await.unwrap();
    match c.rewind_from(&source).await {
        Err(PostgresError::RewindFailed { output_tail, .. }) => {
            assert!(output_tail.contains("different systems"), "{output_tail}")
        }
        other => panic!("a rewind from another cluster returned {other:?}"),
    }
    assert!(c.config().data_dir.join("standby.signal").is_file());
    assert_eq!(c.pid(), None);
    a.stop(StopMode::Fast).await.unwrap();
}
