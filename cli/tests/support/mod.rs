//! Shared harness of the `tessera` binary tests: free ports, short temp dirs, child processes
//! that announce `ready:`, a multi-process deployment on a real etcd, and the walking-skeleton
//! SQL checked through the gate and directly on each shard's PostgreSQL.
//!
//! Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tessera_proto::keyrange::KeyRange;
use tessera_proto::vindex::{HashFamily, sql_hash_expr};
use tessera_topology::etcd_process::EtcdProcess;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// The binary under test.
pub const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");

/// How long a component may take to print `ready:` (initdb included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A temp dir and a private etcd whose data lives in it (killed when dropped).
pub async fn start_etcd() -> (tempfile::TempDir, EtcdProcess) {
    let dir = short_temp_dir();
    let etcd = EtcdProcess::start(&dir.path().join("etcd"))
        .await
        .expect("start etcd");
    (dir, etcd)
}

/// `count` distinct loopback ports that were free a moment ago. All listeners are held until
/// every port is chosen, so the ports cannot coincide.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}

/// A base port such that base+i, base+1000+i and base+2000+i are free for every i < `count`
/// (the port layout of `tessera up` and `deploy/local`).
pub fn free_base_port(count: u16) -> u16 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id();
    for _ in 0..200 {
        // xorshift: a different candidate each round, different across test processes.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let base = 20_000 + (seed % 20_000) as u16;
        let ports = (0..count).flat_map(|i| [base + i, base + 1000 + i, base + 2000 + i]);
        let held: Result<Vec<_>, _> = ports
            .map(|port| std::net::TcpListener::bind(("127.0.0.1", port)))
            .collect();
        if held.is_ok() {
            return base;
        }
    }
    panic!("no free port range found");
}

/// A temp dir with a short path (PostgreSQL's unix socket path is limited to 107 bytes) that
/// the unprivileged `postgres` user can traverse.
pub fn short_temp_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("tc")
        .tempdir_in("/tmp")
        .expect("create a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temp dir");
    dir
}

/// A `tessera` command with the caller's `TESSERA_*` environment removed, so a developer's
/// shell settings cannot change what a test exercises.
pub fn tessera_command(args: &[String]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(TESSERA);
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("TESSERA_") {
            command.env_remove(key);
        }
    }
    command.env("TESSERA_LOG", "info");
    command.stdin(Stdio::null());
    command.kill_on_drop(true);
    // SAFETY: only prctl, async-signal-safe, runs between fork and exec. A test that dies
    // without dropping its processes (e.g. killed by the harness) must not leave them running.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The outcome of a `tessera` command that ran to completion.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The `error: ...` line of stderr (log lines may precede it).
    pub fn error_line(&self) -> Option<&str> {
        self.stderr.lines().find(|line| line.starts_with("error: "))
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "expected success, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts a clean failure: non-zero exit status 1, no panic, exactly one `error:` line that
    /// is the last line of stderr. Returns that line.
    pub fn failed(&self) -> &str {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit status 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|line| line.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "expected one error line:\n{}", self.stderr);
        assert_eq!(
            self.stderr.lines().last(),
            Some(errors[0]),
            "{}",
            self.stderr
        );
        errors[0]
    }
}

/// Runs `tessera args` to completion (bounded: a hang is a failure).
pub async fn tessera(args: &[&str]) -> Finished {
    tessera_with_env(args, &[]).await
}

pub async fn tessera_with_env(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut command = tessera_command(&strings(args));
    command.envs(env.iter().copied());
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("tessera {args:?} did not finish within 60 s"))
        .expect("run tessera");
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A long-running `tessera` component: stdout lines are collected (to see `ready:`), stderr
/// (the logs) goes to a file.
pub struct Process {
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Process {
    /// Starts `tessera args`, logging to `<log_dir>/<name>.log` (appended across restarts).
    pub fn spawn(name: &str, args: Vec<String>, log_dir: &Path) -> Process {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the log file");
        let mut command = tessera_command(&args);
        command.stdout(Stdio::piped()).stderr(file);
        let mut child = command.spawn().expect("start tessera");
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
        Process {
            name: name.to_string(),
            args,
            log,
            child,
            lines,
        }
    }

    /// Starts and waits for `ready:`; panics with the log tail when it does not come.
    pub async fn start(name: &str, args: Vec<String>, log_dir: &Path) -> Process {
        let mut process = Process::spawn(name, args, log_dir);
        process.wait_ready().await;
        process
    }

    /// Waits for the `ready:` line and returns it.
    pub async fn wait_ready(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.starts_with("ready: ") => return line,
                Ok(Some(_)) => continue,
                Ok(None) => panic!(
                    "{} exited before it was ready ({:?})\n{}",
                    self.name,
                    self.child.try_wait(),
                    self.log_tail()
                ),
                Err(_) => panic!(
                    "{} not ready within {READY_TIMEOUT:?}\n{}",
                    self.name,
                    self.log_tail()
                ),
            }
        }
    }

    /// Starts the same command again (after `kill` or `terminate`).
    pub async fn restart(&mut self) {
        let log_dir = self.log.parent().expect("log dir").to_path_buf();
        *self = Process::start(&self.name.clone(), self.args.clone(), &log_dir).await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    /// SIGKILL, like a crash, and waits for the exit.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child
            .wait()
            .await
            .expect("wait for the killed process");
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => status.expect("wait for the terminated process"),
            Err(_) => panic!(
                "{} did not exit within 60 s of SIGTERM\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of {} ---\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

/// Retries `attempt` until it succeeds or `timeout` passes; panics with the last error.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: still failing after {timeout:?}: {error:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Connects with tokio-postgres as postgres/postgres to database `app`.
pub async fn connect(port: u16) -> anyhow::Result<tokio_postgres::Client> {
    let config = format!(
        "host=127.0.0.1 port={port} user=postgres password=postgres dbname=app connect_timeout=5"
    );
    let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// One shard as the tests see it: its key range and its primary's PostgreSQL port.
#[derive(Debug, Clone)]
pub struct ShardPort {
    pub range: KeyRange,
    pub postgres_port: u16,
    /// The tablet, when known.
    pub tablet: String,
}

/// `tessera status --json` with `topology_args` (e.g. `--topo etcd://...`).
pub async fn status_json(topology_args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(topology_args);
    let outcome = tessera(&args).await;
    anyhow::ensure!(
        outcome.status.success(),
        "tessera status failed: {}",
        outcome.stderr
    );
    Ok(serde_json::from_str(&outcome.stdout)?)
}

/// The serving primary of every shard of keyspace `app`, in key order, as `tessera status`
/// reports them. Waits (bounded) until every shard has exactly one: which tablet is primary is
/// decided by the cluster (bootstrap or consensus), not assumed by the tests.
pub async fn serving_primaries(topology_args: &[&str]) -> Vec<ShardPort> {
    eventually(
        "one serving primary per shard",
        Duration::from_secs(60),
        || async {
            let status = status_json(topology_args).await?;
            let keyspace = status["keyspaces"]
                .as_array()
                .and_then(|keyspaces| keyspaces.iter().find(|k| k["name"] == "app"))
                .ok_or_else(|| anyhow::anyhow!("no keyspace app in {status}"))?;
            let mut primaries = Vec::new();
            for shard in keyspace["shards"].as_array().into_iter().flatten() {
                let serving: Vec<&serde_json::Value> = shard["tablets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["role"] == "primary" && t["serving"] == true)
                    .collect();
                anyhow::ensure!(
                    serving.len() == 1,
                    "shard {}: {} serving primaries",
                    shard["name"],
                    serving.len()
                );
                primaries.push(ShardPort {
                    range: shard["name"].as_str().unwrap_or_default().parse()?,
                    postgres_port: serving[0]["postgres_port"].as_u64().unwrap_or_default() as u16,
                    tablet: serving[0]["id"].as_str().unwrap_or_default().to_string(),
                });
            }
            anyhow::ensure!(!primaries.is_empty(), "no shards in {status}");
            primaries.sort_by_key(|p| p.range.start);
            Ok(primaries)
        },
    )
    .await
}

/// The walking-skeleton SQL through the gate at `gate_port`, checked through the gate and
/// directly on each shard. `table` names the sharded table (so one cluster can run it several
/// times); the reference table is `<table>_countries`.
pub async fn walking_skeleton(
    gate_port: u16,
    shards: &[ShardPort],
    table: &str,
) -> anyhow::Result<()> {
    let gate = connect(gate_port).await?;
    let countries = format!("{table}_countries");
    gate.batch_execute(&format!(
        "CREATE TABLE {table} (tenant_id bigint NOT NULL, id bigint NOT NULL, amount int, PRIMARY KEY (tenant_id, id));
         CREATE TABLE {countries} (code text PRIMARY KEY, name text)"
    ))
    .await
    .context("CREATE TABLE through the gate")?;
    gate.execute(
        &*format!("INSERT INTO {countries} VALUES ('fr', 'France'), ('de', 'Germany')"),
        &[],
    )
    .await
    .context("INSERT into the reference table")?;
    let values: Vec<String> = (1..=20)
        .map(|t| format!("({t}, {t}, {})", t * 10))
        .collect();
    let inserted = gate
        .execute(
            &*format!("INSERT INTO {table} VALUES {}", values.join(", ")),
            &[],
        )
        .await
        .context("multi-shard INSERT")?;
    anyhow::ensure!(
        inserted == 20,
        "INSERT reported {inserted} rows, expected 20"
    );

    let row = gate
        .query_one(
            &*format!("SELECT id, amount FROM {table} WHERE tenant_id = $1"),
            &[&7_i64],
        )
        .await
        .context("single-shard SELECT")?;
    anyhow::ensure!(
        row.get::<_, i64>(0) == 7 && row.get::<_, i32>(1) == 70,
        "tenant 7 reads {row:?}"
    );

    let updated = gate
        .execute(
            &*format!("UPDATE {table} SET amount = amount + 1 WHERE tenant_id = 3"),
            &[],
        )
        .await
        .context("UPDATE")?;
    anyhow::ensure!(updated == 1, "UPDATE touched {updated} rows");
    let deleted = gate
        .execute(&*format!("DELETE FROM {table} WHERE tenant_id = 4"), &[])
        .await
        .context("DELETE")?;
    anyhow::ensure!(deleted == 1, "DELETE touched {deleted} rows");

    let count: i64 = gate
        .query_one(&*format!("SELECT count(*) FROM {table}"), &[])
        .await
        .context("scatter count(*)")?
        .get(0);
    anyhow::ensure!(count == 19, "scatter count(*) = {count}, expected 19");
    let amount: i32 = gate
        .query_one(
            &*format!("SELECT amount FROM {table} WHERE tenant_id = 3"),
            &[],
        )
        .await?
        .get(0);
    anyhow::ensure!(amount == 31, "updated amount reads {amount}");

    // Directly on every shard: each holds only rows of its key range (PostgreSQL evaluates
    // the hash), together they hold every row, and each has the whole reference table.
    let hash = sql_hash_expr(HashFamily::Int, "tenant_id");
    let mut total = 0;
    for shard in shards {
        let direct = connect(shard.postgres_port).await?;
        let here: i64 = direct
            .query_one(&*format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        let outside: i64 = direct
            .query_one(
                &*format!(
                    "SELECT count(*) FROM {table} WHERE NOT {}",
                    shard.range.to_sql_predicate(&hash)
                ),
                &[],
            )
            .await?
            .get(0);
        let reference: i64 = direct
            .query_one(&*format!("SELECT count(*) FROM {countries}"), &[])
            .await?
            .get(0);
        anyhow::ensure!(
            outside == 0,
            "shard {} holds {outside} rows of other shards",
            shard.range
        );
        anyhow::ensure!(
            here > 0 || shards.len() == 1,
            "shard {} got no rows",
            shard.range
        );
        anyhow::ensure!(
            reference == 2,
            "shard {} has {reference} reference rows",
            shard.range
        );
        total += here;
    }
    anyhow::ensure!(total == 19, "shards hold {total} rows in all, expected 19");
    Ok(())
}

/// A write and a read of one tenant through the gate, on a fresh connection. Idempotent (the
/// tenant's row is replaced), so a retry after a half-done attempt can succeed.
pub async fn write_and_read(gate_port: u16, table: &str, tenant: i64) -> anyhow::Result<()> {
    let gate = connect(gate_port).await?;
    gate.execute(
        &*format!("DELETE FROM {table} WHERE tenant_id = $1"),
        &[&tenant],
    )
    .await
    .with_context(|| format!("DELETE tenant {tenant}"))?;
    gate.execute(
        &*format!("INSERT INTO {table} VALUES ($1, $1, 1)"),
        &[&tenant],
    )
    .await
    .with_context(|| format!("INSERT tenant {tenant}"))?;
    let rows = gate
        .query(
            &*format!("SELECT id FROM {table} WHERE tenant_id = $1"),
            &[&tenant],
        )
        .await
        .with_context(|| format!("SELECT tenant {tenant}"))?;
    anyhow::ensure!(rows.len() == 1, "tenant {tenant}: {} rows", rows.len());
    Ok(())
}

/// One tablet of a [`Deployment`].
#[derive(Debug, Clone)]
pub struct TabletPorts {
    pub id: String,
    pub zone: String,
    pub shard: String,
    /// Position in its shard; replica 0 starts first and so claims the shard as primary.
    pub replica: usize,
    pub postgres: u16,
    pub pooler: u16,
    pub grpc: u16,
}

/// etcd plus `replicas` tablets per shard spread over as many zones, one coordinator per zone
/// and one gate, each a separate `tessera` process, in one temp dir.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub etcd: EtcdProcess,
    pub topo: String,
    pub tablets: Vec<(TabletPorts, Process)>,
    pub gate_port: u16,
    pub metrics_port: u16,
    pub gate: Process,
    pub coordinators: Vec<Process>,
}

impl Deployment {
    /// Starts keyspace `app` with `shards` shards and one tablet per shard.
    pub async fn start(shards: usize) -> Deployment {
        Deployment::start_with_replicas(shards, 1).await
    }

    pub async fn start_with_replicas(shards: usize, replicas: usize) -> Deployment {
        let (dir, etcd) = start_etcd().await;
        let topo = etcd.url("/e2e");
        // A durability policy the shard can satisfy: with one tablet per shard, the primary
        // alone (consensus would otherwise rightly refuse to acknowledge writes).
        let policy = format!("at_least_n({})", replicas.min(2));
        tessera(&[
            "keyspace",
            "create",
            "app",
            "--shards",
            &shards.to_string(),
            "--policy",
            &policy,
            "--topo",
            &topo,
        ])
        .await
        .ok();
        // The file holds what every tablet shares (fast, unsafe PostgreSQL settings for tests);
        // identity and ports come from flags, so file and flags are both exercised.
        let tablet_config = dir.path().join("tablet.toml");
        std::fs::write(
            &tablet_config,
            format!(
                "topo = \"{topo}\"\n[tablet.postgres]\nsync_initdb = false\n[tablet.postgres.settings]\nfsync = \"off\"\n"
            ),
        )
        .expect("write tablet.toml");
        let ranges = KeyRange::split_evenly(shards).expect("split");
        let mut tablets = Vec::new();
        // Replica 0 of every shard first, so that it is the one claiming the shard.
        for replica in 0..replicas {
            let first = tablets.len();
            for (index, range) in ranges.iter().enumerate() {
                let ports = free_ports(3);
                let zone = format!("zone{}", replica + 1);
                let spec = TabletPorts {
                    id: format!("{zone}-{}", 100 * (index + 1) + replica + 1),
                    zone,
                    shard: range.to_string(),
                    replica,
                    postgres: ports[0],
                    pooler: ports[1],
                    grpc: ports[2],
                };
                let args = strings(&[
                    "tablet",
                    "--config",
                    &tablet_config.display().to_string(),
                    "--id",
                    &spec.id,
                    "--zone",
                    &spec.zone,
                    "--keyspace",
                    "app",
                    "--shard",
                    &spec.shard,
                    "--pg-port",
                    &spec.postgres.to_string(),
                    "--pooler-port",
                    &spec.pooler.to_string(),
                    "--grpc-port",
                    &spec.grpc.to_string(),
                    "--data-dir",
                    &dir.path().join(&spec.id).display().to_string(),
                ]);
                tablets.push((spec.clone(), Process::spawn(&spec.id, args, dir.path())));
            }
            for (_, process) in &mut tablets[first..] {
                process.wait_ready().await;
            }
        }
        let mut coordinators = Vec::new();
        for zone in 1..=replicas {
            let zone = format!("zone{zone}");
            coordinators.push(
                Process::start(
                    &format!("coordinator-{zone}"),
                    strings(&["coordinator", "--topo", &topo, "--zone", &zone]),
                    dir.path(),
                )
                .await,
            );
        }
        let ports = free_ports(2);
        let (gate_port, metrics_port) = (ports[0], ports[1]);
        let gate = Process::start(
            "gate",
            strings(&[
                "gate",
                "--topo",
                &topo,
                "--listen",
                &format!("127.0.0.1:{gate_port}"),
                "--metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
            ]),
            dir.path(),
        )
        .await;
        Deployment {
            dir,
            etcd,
            topo,
            tablets,
            gate_port,
            metrics_port,
            gate,
            coordinators,
        }
    }

    /// The process of tablet `id`.
    pub fn tablet(&mut self, id: &str) -> &mut Process {
        self.tablets
            .iter_mut()
            .find(|(spec, _)| spec.id == id)
            .map(|(_, process)| process)
            .unwrap_or_else(|| panic!("no tablet {id}"))
    }

    /// Runs [`walking_skeleton`] on table `orders`; on failure panics with every log tail.
    pub async fn run_walking_skeleton(&self) {
        if let Err(error) =
            walking_skeleton(self.gate_port, &self.shard_ports().await, "orders").await
        {
            panic!("{error:#}\n{}", self.logs());
        }
    }

    /// The current serving primary of every shard (see [`serving_primaries`]).
    pub async fn shard_ports(&self) -> Vec<ShardPort> {
        serving_primaries(&["--topo", &self.topo]).await
    }

    /// Tenants whose rows live on shard `index` (computed by PostgreSQL's own hash on that
    /// shard's server, not by the code under test).
    pub async fn tenants_of_shard(
        &self,
        index: usize,
        candidates: std::ops::Range<i64>,
    ) -> Vec<i64> {
        let shard = &self.shard_ports().await[index];
        let direct = connect(shard.postgres_port)
            .await
            .expect("connect to the shard");
        let predicate = shard
            .range
            .to_sql_predicate(&sql_hash_expr(HashFamily::Int, "t"));
        let rows = direct
            .query(
                &*format!(
                    "SELECT t FROM generate_series($1::int8, $2::int8) AS t WHERE {predicate}"
                ),
                &[&candidates.start, &(candidates.end - 1)],
            )
            .await
            .expect("tenants of the shard");
        rows.iter().map(|row| row.get(0)).collect()
    }

    /// Logs of every component, for failure messages.
    pub fn logs(&self) -> String {
        let processes = self
            .tablets
            .iter()
            .map(|(_, p)| p)
            .chain(&self.coordinators)
            .chain([&self.gate]);
        processes
            .map(Process::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every component with SIGTERM and checks each exits 0 promptly. Tablets go first,
    /// while the coordinators still hold status streams to them and the gate still holds
    /// pooler connections: open clients must not keep a component from stopping.
    pub async fn stop(mut self) {
        let processes = self
            .tablets
            .iter_mut()
            .map(|(_, p)| p)
            .chain(self.coordinators.iter_mut())
            .chain([&mut self.gate]);
        for process in processes {
            let started = tokio::time::Instant::now();
            let status = process.terminate().await;
            assert!(
                status.success(),
                "{} exited with {status} on SIGTERM\n{}",
                process.name,
                process.log_tail()
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} took {:?} to stop\n{}",
                process.name,
                started.elapsed(),
                process.log_tail()
            );
        }
    }
}

/// Fetches `http://127.0.0.1:<port>/metrics` with a bare HTTP/1.0 request.
pub async fn fetch_metrics(port: u16) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    anyhow::ensure!(
        response.starts_with("HTTP/1.") && response.contains(" 200 "),
        "{response}"
    );
    Ok(response)
}
