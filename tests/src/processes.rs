//! Tablets as separate processes, for tests that kill a tablet process.
//!
//! The child is the test binary itself, re-executed to run only its entry-point test, which
//! hands its arguments to the same library code `tessera tablet` runs
//! ([`run_tablet_child_if_requested`]). Why not the `tessera` binary: Cargo builds a binary
//! only for its own package's integration tests, not for this crate's.
//!
//! A child dies with the test (parent-death signal), and its PostgreSQL dies with it (the
//! tablet's own parent-death signal), so nothing outlives a failed test.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tessera_topology::etcd_process::EtcdProcess;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::ha::file_tail;

/// Environment variable carrying the `tessera tablet` arguments (JSON array) to a child.
pub const CHILD_ARGS_ENV: &str = "TESSERA_HA_TABLET_ARGS";

/// How long a tablet process may take to print `ready:` (initdb or pg_basebackup included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// In a child started by [`TabletProcess::spawn`], runs the tablet until it is signalled and
/// exits the process; otherwise returns at once. Call it from an `#[ignore]`d test whose name
/// the parent passes as `entry_test`.
pub fn run_tablet_child_if_requested() {
    let Ok(json) = std::env::var(CHILD_ARGS_ENV) else {
        return;
    };
    let args: Vec<String> = match serde_json::from_str(&json) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {CHILD_ARGS_ENV} is not a JSON array of strings: {error}");
            std::process::exit(2);
        }
    };
    let cli = match <tessera_cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("tessera".to_string()).chain(args),
    ) {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let _telemetry = tessera_cli::telemetry::init(&cli.telemetry);
    let tessera_cli::Command::Tablet(args) = cli.command else {
        eprintln!("error: a tablet child runs `tessera tablet` only");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime for the tablet child");
    let result = runtime.block_on(tessera_cli::components::tablet::command(*args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Ports and identity of one tablet process.
#[derive(Debug, Clone)]
pub struct TabletSpec {
    pub id: String,
    pub zone: String,
    pub keyspace: String,
    pub shard: String,
    pub postgres_port: u16,
    pub pooler_port: u16,
    pub grpc_port: u16,
    pub dir: PathBuf,
}

/// A tablet running as its own process.
pub struct TabletProcess {
    pub spec: TabletSpec,
    args: Vec<String>,
    entry_test: String,
    log: PathBuf,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl TabletProcess {
    /// Starts `tessera tablet` for `spec` with topology `topo`, logging to `<dir>.log`.
    /// `entry_test` is the name of the test that calls [`run_tablet_child_if_requested`].
    pub fn spawn(spec: TabletSpec, topo: &str, entry_test: &str) -> TabletProcess {
        let config = spec.dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "topo = \"{topo}\"\n[tablet.postgres]\nsync_initdb = false\n[tablet.postgres.settings]\nfsync = \"off\"\nshared_buffers = \"16MB\"\n"
            ),
        )
        .expect("write the tablet config");
        let args: Vec<String> = [
            "tablet",
            "--config",
            &config.display().to_string(),
            "--id",
            &spec.id,
            "--zone",
            &spec.zone,
            "--keyspace",
            &spec.keyspace,
            "--shard",
            &spec.shard,
            "--pg-port",
            &spec.postgres_port.to_string(),
            "--pooler-port",
            &spec.pooler_port.to_string(),
            "--grpc-port",
            &spec.grpc_port.to_string(),
            "--data-dir",
            &spec.dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = spec.dir.with_extension("log");
        let (child, lines) = launch(&args, entry_test, &log);
        TabletProcess {
            spec,
            args,
            entry_test: entry_test.to_string(),
            log,
            child,
            lines,
        }
    }

    /// Waits for the `ready:` line; panics with the log tail otherwise.
    pub async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                // libtest prints `test <name> ... ` without a newline before the test runs.
                Ok(Some(line)) if line.contains("ready: ") => return,
                Ok(Some(_)) => continue,
                Ok(None) => panic!(
                    "tablet {} exited before it was ready ({:?})\n{}",
                    self.spec.id,
                    self.child.try_wait(),
                    self.log_tail(40)
                ),
                Err(_) => panic!(
                    "tablet {} not ready within {READY_TIMEOUT:?}\n{}",
                    self.spec.id,
                    self.log_tail(40)
                ),
            }
        }
    }

    /// The tablet process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `kill -9` of the tablet process, and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Starts the same command again (after [`TabletProcess::kill`]); does not wait for
    /// `ready:`.
    pub fn restart(&mut self) {
        let (child, lines) = launch(&self.args, &self.entry_test, &self.log);
        self.child = child;
        self.lines = lines;
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            file_tail(&self.log, lines)
        )
    }
}

fn launch(
    args: &[String],
    entry_test: &str,
    log: &Path,
) -> (Child, mpsc::UnboundedReceiver<String>) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the tablet log");
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            entry_test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ARGS_ENV,
            serde_json::to_string(args).expect("arguments as JSON"),
        )
        .env("TESSERA_LOG", "info")
        .env_remove("TESSERA_TOPO")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(file)
        .kill_on_drop(true);
    // SAFETY: only prctl, async-signal-safe, runs between fork and exec: a test that dies
    // without dropping its children must not leave them running.
    unsafe {
        command.as_std_mut().pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().expect("start a tablet process");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

/// A real etcd for the topology of multi-process tests.
pub async fn start_etcd(dir: &Path) -> EtcdProcess {
    EtcdProcess::start(&dir.join("etcd"))
        .await
        .expect("start etcd")
}

/// `count` distinct loopback ports that were free a moment ago (all held until all are
/// chosen, so they cannot coincide).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}
