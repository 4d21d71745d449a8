//! PgBouncer as a comparison target: installed with apt if missing, configured by the harness
//! (its own port, SCRAM against the same PostgreSQL, transaction or session pooling), run as
//! the unprivileged account (PgBouncer refuses root) and killed at the end.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Child;

use crate::system::Account;

pub const BINARY: &str = "/usr/sbin/pgbouncer";

/// Pooling mode of a PgBouncer instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

/// Installs the Debian package when the binary is missing.
pub fn ensure_installed() -> anyhow::Result<()> {
    if Path::new(BINARY).is_file() {
        return Ok(());
    }
    eprintln!("pgbouncer not found: installing the Debian package (apt-get install -y pgbouncer)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "pgbouncer"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let mut status = install().context("running apt-get")?;
    if !status.success() {
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get update")?;
        status = install().context("running apt-get")?;
    }
    if !status.success() || !Path::new(BINARY).is_file() {
        bail!(
            "could not install pgbouncer (apt-get install -y pgbouncer failed); install it and rerun"
        );
    }
    Ok(())
}

/// Where PgBouncer sends its server connections.
pub struct Upstream<'a> {
    /// PostgreSQL's unix socket directory: the same kind of hop the gate's in-process pool uses.
    pub socket_dir: &'a Path,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
    pub password: &'a str,
}

pub struct PgBouncer {
    pub port: u16,
    pub pid: u32,
    child: Child,
}

impl PgBouncer {
    /// Writes the configuration under `dir` and starts PgBouncer on a free port.
    pub async fn start(
        dir: &Path,
        mode: PoolMode,
        pool_size: usize,
        max_clients: usize,
        upstream: &Upstream<'_>,
        account: Option<&Account>,
    ) -> anyhow::Result<PgBouncer> {
        std::fs::create_dir_all(dir)?;
        let port = crate::system::free_port()?;
        let userlist = dir.join("userlist.txt");
        // A plain-text password lets PgBouncer answer the client's SCRAM exchange and run its
        // own SCRAM exchange with the server.
        std::fs::write(
            &userlist,
            format!("\"{}\" \"{}\"\n", upstream.user, upstream.password),
        )?;
        let config = dir.join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n\
                 {database} = host={socket_dir} port={pg_port} dbname={database}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir = {dir}\n\
                 auth_type = scram-sha-256\n\
                 auth_file = {userlist}\n\
                 pool_mode = {mode}\n\
                 default_pool_size = {pool_size}\n\
                 max_client_conn = {max_clients}\n\
                 logfile = {log}\n\
                 pidfile = {pidfile}\n\
                 ignore_startup_parameters = extra_float_digits\n",
                database = upstream.database,
                socket_dir = upstream.socket_dir.display(),
                pg_port = upstream.port,
                dir = dir.display(),
                userlist = userlist.display(),
                mode = mode.as_str(),
                log = dir.join("pgbouncer.log").display(),
                pidfile = dir.join("pgbouncer.pid").display(),
            ),
        )?;
        if let Some(account) = account {
            for path in [dir, &userlist, &config] {
                account.own(path)?;
            }
        }
        let mut command = Command::new(BINARY);
        command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("stderr.log"))?));
        if let Some(account) = account {
            command.uid(account.uid).gid(account.gid);
        }
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let mut child = command.spawn().context("starting pgbouncer")?;
        let pid = child.id().context("pgbouncer exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "pgbouncer exited with {status}; see {}",
                    dir.join("pgbouncer.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("pgbouncer did not listen on port {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(PgBouncer { port, pid, child })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The directory a PgBouncer instance of this mode uses under the work dir.
pub fn dir_for(work_dir: &Path, mode: PoolMode) -> PathBuf {
    work_dir.join(format!("pgbouncer-{}", mode.as_str()))
}
