//! Lifecycle of a real PostgreSQL 15 server through `tessera_tablet::postgres`: init, start,
//! connect, write, stop, restart, adoption after a crash, settings, and every startup error the
//! brief names. Needs PostgreSQL 15 in /usr/lib/postgresql/15/bin; when run as root, PostgreSQL
//! runs as the `postgres` system user.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tessera_tablet::postgres::{
    PostgresConfig, PostgresError, PostgresServer, PostgresState, ProcessExit, StopMode,
};

mod postgres_support;
use postgres_support::{create_items_table, free_port, test_config, test_dir};

/// Whether a process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised command name) is the state; Z is a zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits up to `limit` for `pid` to disappear.
fn wait_until_dead(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !process_alive(pid)
}

/// A new handle on `config`, initialised and started; returns it with the postmaster's pid.
async fn started(config: PostgresConfig) -> (PostgresServer, u32) {
    let server = PostgresServer::new(config).expect("new");
    server.init().await.expect("init");
    let pid = server.start().await.expect("start");
    (server, pid)
}

/// Creates database `app` with table `items` holding ids 1..=count.
async fn create_items(server: &PostgresServer, count: i32) {
    create_items_table(server).await;
    let client = server.connect("app").await.expect("connect");
    client
        .execute("INSERT INTO items SELECT generate_series(1, $1)", &[&count])
        .await
        .expect("insert");
}

async fn count_rows(server: &PostgresServer) -> i64 {
    let client = server.connect("app").await.expect("connect");
    client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0)
}

async fn show(server: &PostgresServer, setting: &str) -> String {
    let client = server.connect("postgres").await.expect("connect");
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .expect("show")
        .get(0)
}

/// Goal: a fresh cluster is initialised with checksums and managed settings, serves writes,
/// keeps them across restart and stop/start, and stops leaving no process behind.
#[tokio::test]
async fn init_start_write_restart_stop_keeps_data() {
    let directory = test_dir();
    let server = PostgresServer::new(test_config(directory.path(), free_port())).unwrap();
    assert!(!server.is_initialized());
    server.init().await.unwrap();
    assert!(server.is_initialized());
    assert!(matches!(
        server.init().await,
        Err(PostgresError::AlreadyInitialized { .. })
    ));

    let first_pid = server.start().await.unwrap();
    assert_eq!(server.pid(), Some(first_pid));
    assert!(matches!(
        server.start().await,
        Err(PostgresError::AlreadyRunning { .. })
    ));
    if nix::unistd::Uid::effective().is_root() {
        let status = std::fs::read_to_string(format!("/proc/{first_pid}/status")).unwrap();
        let uid_line = status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .unwrap();
        let postgres_uid = nix::unistd::User::from_name("postgres")
            .unwrap()
            .unwrap()
            .uid;
        assert!(
            uid_line.split_whitespace().nth(1) == Some(&postgres_uid.to_string()),
            "postmaster runs as {uid_line}, not as postgres"
        );
    }
    assert_eq!(show(&server, "data_checksums").await, "on");
    assert_eq!(show(&server, "wal_level").await, "logical");
    assert_eq!(show(&server, "max_prepared_transactions").await, "100");
    assert_eq!(show(&server, "lc_collate").await, "C");

    create_items(&server, 100).await;
    // Idempotent: the database exists now.
    server.ensure_database("app").await.unwrap();

    let second_pid = server.restart().await.unwrap();
    assert_ne!(first_pid, second_pid);
    assert!(!process_alive(first_pid));
    assert_eq!(count_rows(&server).await, 100);

    let exits = server.exits();
    server.stop(StopMode::Fast).await.unwrap();
    assert_eq!(server.pid(), None);
    assert!(!process_alive(second_pid));
    assert!(matches!(
        *exits.borrow(),
        PostgresState::Exited { pid, expected: true, exit: ProcessExit::Code(0) } if pid == second_pid
    ));
    server.stop(StopMode::Fast).await.unwrap();

    // A new handle adopts the cleanly stopped cluster.
    drop(server);
    let server = PostgresServer::new(test_config(directory.path(), free_port())).unwrap();
    server.start().await.unwrap();
    assert_eq!(count_rows(&server).await, 100);
    server.stop(StopMode::Smart).await.unwrap();
}

/// Goal: after kill -9 of the postmaster the exit is reported as unexpected, and a new handle
/// adopts the crashed data dir (stale postmaster.pid) with every committed row intact.
#[tokio::test]
async fn adopts_data_dir_after_kill_9() {
    let directory = test_dir();
    let config = test_config(directory.path(), free_port());
    let (server, pid) = started(config.clone()).await;
    create_items(&server, 42).await;

    let mut exits = server.exits();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let state = tokio::time::timeout(
        Duration::from_secs(10),
        exits.wait_for(|state| matches!(state, PostgresState::Exited { .. })),
    )
    .await
    .expect("exit noticed in time")
    .unwrap()
    .to_owned();
    assert_eq!(
        state,
        PostgresState::Exited {
            pid,
            exit: ProcessExit::Signal(9),
            expected: false
        }
    );
    assert_eq!(server.pid(), None);
    assert!(config.data_dir.join("postmaster.pid").exists());
    drop(server);

    let adopted = PostgresServer::new(config).unwrap();
    let new_pid = adopted.start().await.unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(count_rows(&adopted).await, 42);
    adopted.stop(StopMode::Fast).await.unwrap();
}

/// Goal: a second handle cannot start a data dir a live server already owns.
#[tokio::test]
async fn refuses_data_dir_owned_by_live_server() {
    let directory = test_dir();
    let config = test_config(directory.path(), free_port());
    let (owner, owner_pid) = started(config.clone()).await;

    let mut intruder_config = config;
    intruder_config.port = free_port();
    let intruder = PostgresServer::new(intruder_config).unwrap();
    let error = intruder.start().await.unwrap_err();
    assert!(
        matches!(error, PostgresError::DataDirInUse { pid, .. } if pid == owner_pid as i32),
        "{error}"
    );
    assert!(process_alive(owner_pid));
    owner.stop(StopMode::Fast).await.unwrap();
}

/// Goal: a port taken by another process gives a one-line PortInUse error naming the port.
#[tokio::test]
async fn port_in_use_is_reported() {
    let directory = test_dir();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = PostgresServer::new(test_config(directory.path(), port)).unwrap();
    server.init().await.unwrap();
    let error = server.start().await.unwrap_err();
    assert!(matches!(error, PostgresError::PortInUse { port: reported, .. } if reported == port));
    let message = error.to_string();
    assert!(
        message.contains(&port.to_string()) && !message.contains('\n'),
        "{message}"
    );
    assert_eq!(server.pid(), None);
}

/// Goal: missing binaries are reported with the missing path and the fix, before anything runs.
#[test]
fn missing_binaries_are_named() {
    let directory = test_dir();
    let mut config = test_config(directory.path(), free_port());
    config.bin_dir = "/nonexistent/pg/bin".into();
    let error = PostgresServer::new(config).err().expect("must fail");
    let message = error.to_string();
    assert!(matches!(error, PostgresError::BinaryMissing { .. }));
    assert!(message.contains("/nonexistent/pg/bin/initdb"), "{message}");
    assert!(message.contains("postgresql-15"), "{message}");
    assert!(!message.contains('\n'));
}

/// Goal: a data dir that cannot be created gives a one-line DataDirNotWritable naming it.
#[tokio::test]
async fn unwritable_data_dir_is_reported() {
    let directory = test_dir();
    let blocker = directory.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let mut config = test_config(directory.path(), free_port());
    config.data_dir = blocker.join("pgdata");
    let server = PostgresServer::new(config).unwrap();
    let error = server.init().await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, PostgresError::DataDirNotWritable { .. }),
        "{message}"
    );
    assert!(
        message.contains(&blocker.display().to_string()) && !message.contains('\n'),
        "{message}"
    );

    // A data dir with foreign files in it is refused, not overwritten.
    let mut config = test_config(directory.path(), free_port());
    config.data_dir = directory.path().join("busy");
    std::fs::create_dir(&config.data_dir).unwrap();
    std::fs::write(config.data_dir.join("precious"), "x").unwrap();
    let error = PostgresServer::new(config)
        .unwrap()
        .init()
        .await
        .unwrap_err();
    assert!(
        matches!(error, PostgresError::DataDirNotEmpty { .. }),
        "{error}"
    );
}

/// Goal: when running as root, a parent directory the postgres user cannot enter is named in a
/// one-line error with the fix, instead of an obscure initdb failure.
#[tokio::test]
async fn untraversable_parent_is_reported() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: only meaningful when Tessera runs as root");
        return;
    }
    let directory = test_dir();
    let private = directory.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut config = test_config(directory.path(), free_port());
    config.data_dir = private.join("pgdata");
    let error = PostgresServer::new(config)
        .unwrap()
        .init()
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, PostgresError::DirectoryNotTraversable { .. }),
        "{message}"
    );
    assert!(
        message.contains(&private.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("chmod o+x") && !message.contains('\n'),
        "{message}"
    );
}

/// Goal: a server that dies during startup yields StartFailed quoting the log's reason.
#[tokio::test]
async fn startup_failure_quotes_the_log() {
    let directory = test_dir();
    let mut config = test_config(directory.path(), free_port());
    config
        .settings
        .insert("shared_buffers".to_string(), "banana".to_string());
    let server = PostgresServer::new(config).unwrap();
    server
        .init()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let error = server.start().await.unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, PostgresError::StartFailed { .. }),
        "{message}"
    );
    assert!(message.contains("shared_buffers"), "{message}");
    assert!(!message.contains('\n'));
    assert_eq!(server.pid(), None);
}

/// Goal: managed settings apply on reload (or flag a pending restart), and operators' own
/// edits of postgresql.conf survive Tessera rewriting its file and restarting.
#[tokio::test]
async fn settings_reload_and_operator_edits_survive() {
    let directory = test_dir();
    let config = test_config(directory.path(), free_port());
    let server = PostgresServer::new(config.clone()).unwrap();
    server.init().await.unwrap();
    let mut settings = config.settings.clone();
    settings.insert("work_mem".to_string(), "7MB".to_string());
    server.set_settings(settings.clone()).unwrap();
    server.start().await.unwrap();
    assert_eq!(show(&server, "work_mem").await, "7MB");

    let postgresql_conf = config.data_dir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&postgresql_conf).unwrap();
    text.push_str("statement_timeout = '12345'  # operator\n");
    std::fs::write(&postgresql_conf, text).unwrap();

    settings.insert("work_mem".to_string(), "9MB".to_string());
    settings.insert("shared_buffers".to_string(), "24MB".to_string());
    server.set_settings(settings).unwrap();
    server.reload().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while show(&server, "work_mem").await != "9MB" {
        assert!(Instant::now() < deadline, "work_mem was not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.pending_restart().await.unwrap(),
        vec!["shared_buffers"]
    );
    assert_eq!(show(&server, "statement_timeout").await, "12345ms");

    server.restart().await.unwrap();
    assert_eq!(show(&server, "statement_timeout").await, "12345ms");
    assert_eq!(show(&server, "shared_buffers").await, "24MB");
    assert!(server.pending_restart().await.unwrap().is_empty());

    let invalid = BTreeMap::from([("port".to_string(), "1".to_string())]);
    assert!(matches!(
        server.set_settings(invalid),
        Err(PostgresError::InvalidSetting { .. })
    ));
    server.stop(StopMode::Fast).await.unwrap();
}

/// Goal: dropping a handle whose server still runs does not leak the server.
#[tokio::test]
async fn dropping_a_running_server_stops_it() {
    let directory = test_dir();
    let (server, pid) = started(test_config(directory.path(), free_port())).await;
    drop(server);
    assert!(
        wait_until_dead(pid, Duration::from_secs(15)),
        "postmaster {pid} survived"
    );
}

/// Environment variable that turns `parent_death_helper` into the helper process.
const HELPER_DIR_VARIABLE: &str = "TESSERA_PDEATHSIG_HELPER_DIR";

/// Helper for `postgres_dies_with_its_tablet_process`: when started by it (re-executing this test
/// binary), starts PostgreSQL, prints its pid and waits to be killed. A no-op otherwise.
#[test]
fn parent_death_helper() {
    let Ok(base) = std::env::var(HELPER_DIR_VARIABLE) else {
        return;
    };
    let port: u16 = std::env::var("TESSERA_PDEATHSIG_HELPER_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = PostgresServer::new(test_config(Path::new(&base), port)).unwrap();
        server.init().await.unwrap();
        let pid = server.start().await.unwrap();
        println!("TESSERA_POSTMASTER_PID={pid}");
        // Stay alive until the test kills this process.
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(server);
    });
}

/// Goal: if the tablet process is killed with SIGKILL (no cleanup runs), PostgreSQL still dies
/// through the parent-death signal instead of lingering as an orphan.
#[test]
fn postgres_dies_with_its_tablet_process() {
    let directory = test_dir();
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "parent_death_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_DIR_VARIABLE, directory.path())
        .env("TESSERA_PDEATHSIG_HELPER_PORT", free_port().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(helper.stdout.take().unwrap());
    let postmaster_pid: u32 = stdout
        .lines()
        .map_while(Result::ok)
        // The harness prints "test parent_death_helper ... " before it on the same line.
        .find_map(|line| {
            line.split_once("TESSERA_POSTMASTER_PID=")
                .map(|(_, pid)| pid.trim().to_string())
        })
        .expect("helper printed the postmaster pid")
        .parse()
        .unwrap();
    assert!(process_alive(postmaster_pid));
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert!(
        wait_until_dead(postmaster_pid, Duration::from_secs(15)),
        "postmaster {postmaster_pid} outlived its parent"
    );
}
