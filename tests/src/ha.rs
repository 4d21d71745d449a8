//! Harness of the high-availability tests (L3): watch one shard through its tablets' own
//! status RPCs, wait (bounded) for it to reach a state, freeze or kill PostgreSQL servers, and
//! check a workload's history against every copy of the data, read straight from each
//! tablet's PostgreSQL.
//!
//! Everything goes through the topology and the tablets' gRPC endpoints, so the same code
//! drives an in-process cluster ([`crate::TestCluster`]) and separate tablet processes.
//! Failures panic with diagnostics: `tessera status --json`, the tail of the captured logs and
//! of each PostgreSQL log.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tessera_cli::up::UpOptions;
use tessera_coordinator::analysis::{ShardView, TabletView};
use tessera_coordinator::client::{Clients, call};
use tessera_coordinator::operations;
use tessera_proto::tablet::StatusRequest;
use tessera_tablet::Tablet;
use tessera_topology::Topology;
use tessera_topology::records::TabletRecord;
use tokio_postgres::Client;

use crate::proxy::Proxy;
use crate::workload::History;
use crate::{TestCluster, temp_dir, test_options};

/// Log lines kept for failure messages.
const LOG_LINES_KEPT: usize = 20_000;
/// Log lines printed in a failure message.
const LOG_LINES_SHOWN: usize = 120;

fn ring() -> &'static Mutex<VecDeque<String>> {
    static RING: OnceLock<Mutex<VecDeque<String>>> = OnceLock::new();
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(LOG_LINES_KEPT)))
}

/// One formatted log event; appended to the ring when the formatter is done with it.
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0).trim_end().to_string();
        if text.is_empty() {
            return;
        }
        let mut ring = ring().lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == LOG_LINES_KEPT {
            ring.pop_front();
        }
        ring.push_back(text);
    }
}

/// Captures the process's logs (level from `TESSERA_TEST_LOG`, default `info`) in memory, so
/// a failing test can show what the coordinators and tablets did. With
/// `TESSERA_TEST_LOG_STDERR=1` they also go to stderr as they happen.
pub fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let filter = std::env::var("TESSERA_TEST_LOG").unwrap_or_else(|_| "info".into());
        let echo = std::env::var("TESSERA_TEST_LOG_STDERR").is_ok_and(|v| v == "1");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || -> Box<dyn Write> {
                if echo {
                    Box::new(Tee(LogLine(Vec::new())))
                } else {
                    Box::new(LogLine(Vec::new()))
                }
            })
            .try_init();
    });
}

/// A log line that is also written to stderr.
struct Tee(LogLine);

impl Write for Tee {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(bytes);
        self.0.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The last `count` captured log lines.
pub fn log_tail(count: usize) -> String {
    let ring = ring().lock().unwrap_or_else(|p| p.into_inner());
    let skip = ring.len().saturating_sub(count);
    ring.iter()
        .skip(skip)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Forgets the captured log lines (tests that run one after another start afresh).
pub fn clear_logs() {
    ring().lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Captured log lines containing `needle`.
pub fn log_lines_containing(needle: &str) -> Vec<String> {
    let ring = ring().lock().unwrap_or_else(|p| p.into_inner());
    ring.iter()
        .filter(|line| line.contains(needle))
        .cloned()
        .collect()
}

/// The last `count` lines of a text file (empty when unreadable).
pub fn file_tail(path: &Path, count: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Retries `attempt` every 100 ms until it returns `Some`, or returns the last reason after
/// `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let reason = match attempt().await {
            Ok(value) => return Ok(value),
            Err(reason) => reason,
        };
        if Instant::now() >= deadline {
            return Err(reason);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `signal` to PostgreSQL: `SIGKILL` to the postmaster only (`kill -9` of the server an
/// operator sees in `tessera status`); `SIGSTOP` and `SIGCONT` to the postmaster and every
/// process it started (backends, WAL senders, checkpointer...), so the whole server freezes.
/// Why not the process group: PostgreSQL makes each child the leader of its own group.
pub fn signal_postgres(postmaster_pid: u32, signal: Signal) {
    match signal {
        Signal::SIGSTOP => {
            // The postmaster first: once stopped it starts no child we would miss.
            send(postmaster_pid, signal);
            children_of(postmaster_pid)
                .into_iter()
                .for_each(|child| send(child, signal));
        }
        Signal::SIGCONT => {
            children_of(postmaster_pid)
                .into_iter()
                .for_each(|child| send(child, signal));
            send(postmaster_pid, signal);
        }
        _ => send(postmaster_pid, signal),
    }
}

fn send(pid: u32, signal: Signal) {
    if let Err(error) = kill(Pid::from_raw(pid as i32), signal) {
        // A child may exit between listing and signalling; the postmaster must not.
        if error != nix::errno::Errno::ESRCH {
            panic!("{signal} to PostgreSQL process {pid}: {error}");
        }
    }
}

/// Processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // Fields after the parenthesised command name: state, ppid, ...
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            ppid == Some(parent)
        })
        .collect()
}

/// A tablet view's status fields the tests look at, with defaults for a tablet never heard of.
pub fn describe(tablet: &TabletView) -> String {
    match &tablet.status {
        Some(s) => format!(
            "{} role={} term={} serving={} healthy={} reachable={} following={:?} streaming={} lsn={} wal_term={} policy={} waiting={} msg={:?}",
            tablet.record.id,
            s.role,
            s.term,
            s.serving,
            s.postgres_healthy,
            tablet.reachable,
            s.following,
            s.streaming,
            s.lsn,
            s.wal_term,
            s.policy,
            s.commits_waiting,
            s.message
        ),
        None => format!(
            "{} (no status, reachable={})",
            tablet.record.id, tablet.reachable
        ),
    }
}

/// The serving primary of the highest term, from statuses the tablets reported.
pub fn serving_primary(view: &ShardView) -> Option<&TabletView> {
    view.tablets
        .iter()
        .filter(|t| {
            t.reachable
                && t.status
                    .as_ref()
                    .is_some_and(|s| s.role == "primary" && s.serving && s.term > 0)
        })
        .max_by_key(|t| t.status.as_ref().map(|s| s.term))
}

/// How long the test waits for one tablet's status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A tablet's real ports, for a tablet behind proxies.
#[derive(Debug, Clone, Copy)]
pub struct DirectPorts {
    pub postgres: u16,
    pub grpc: u16,
}

/// A settled shard: one serving primary, the other tablets streaming from it, replay caught up.
#[derive(Debug, Clone)]
pub struct Settled {
    pub primary: String,
    pub term: u64,
    pub replicas: Vec<String>,
}

/// One shard of a running cluster, watched through its tablets.
pub struct ShardWatch {
    pub topology: Topology,
    pub keyspace: String,
    pub shard: String,
    clients: Clients,
    /// Real PostgreSQL and gRPC ports of tablets whose topology records advertise proxies: the
    /// test's own reads and status calls must not be cut off by the partitions it makes.
    direct_ports: Mutex<HashMap<String, DirectPorts>>,
    /// Extra text for failure messages (e.g. the logs of tablet processes).
    extra_diagnostics: Mutex<Vec<Box<dyn Fn() -> String + Send + Sync>>>,
}

impl ShardWatch {
    pub fn new(topology: Topology, keyspace: &str, shard: &str) -> ShardWatch {
        ShardWatch {
            topology,
            keyspace: keyspace.to_string(),
            shard: shard.to_string(),
            clients: Clients::default(),
            direct_ports: Mutex::new(HashMap::new()),
            extra_diagnostics: Mutex::new(Vec::new()),
        }
    }

    /// Reaches tablet `id` on its real ports (behind proxies) for the test's own reads.
    pub fn set_direct_ports(&self, id: &str, ports: DirectPorts) {
        self.direct_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), ports);
    }

    fn direct_ports(&self, id: &str) -> Option<DirectPorts> {
        self.direct_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    /// Adds a source of text for failure messages.
    pub fn add_diagnostics(&self, source: impl Fn() -> String + Send + Sync + 'static) {
        self.extra_diagnostics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(source));
    }

    /// Every tablet of the shard with its status, asked now (each tablet on its real gRPC
    /// port, so a partitioned tablet still reports to the test).
    pub async fn view(&self) -> Result<ShardView, String> {
        let (record, _) = self
            .topology
            .get_shard(&self.keyspace, &self.shard)
            .await
            .map_err(|error| format!("reading the shard record: {error}"))?;
        let records: Vec<TabletRecord> = self
            .topology
            .list_tablets(None)
            .await
            .map_err(|error| format!("listing tablets: {error}"))?
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| t.keyspace == self.keyspace && t.shard == self.shard)
            .collect();
        let tablets = futures::future::join_all(records.into_iter().map(|record| async move {
            let mut address = record.clone();
            if let Some(ports) = self.direct_ports(&record.id) {
                address.grpc_port = ports.grpc;
            }
            let status = match self.clients.get(&address) {
                Ok(mut client) => call(STATUS_TIMEOUT, "status", client.status(StatusRequest {}))
                    .await
                    .ok(),
                Err(_) => None,
            };
            TabletView {
                reachable: status.is_some(),
                status,
                record,
            }
        }))
        .await;
        Ok(ShardView { record, tablets })
    }

    /// `tessera status --json`, the tablets as seen now, and the log tails.
    pub async fn diagnostics(&self) -> String {
        let status = match tessera_cli::status::collect(&self.topology).await {
            Ok(status) => serde_json::to_string_pretty(&status).unwrap_or_default(),
            Err(error) => format!("(status unavailable: {error:#})"),
        };
        let mut text = format!("=== tessera status --json ===\n{status}\n");
        if let Ok(view) = self.view().await {
            text.push_str("=== tablets ===\n");
            for tablet in &view.tablets {
                text.push_str(&describe(tablet));
                text.push('\n');
            }
            for tablet in &view.tablets {
                let log = Path::new(&tablet.record.data_dir)
                    .parent()
                    .map(|dir| dir.join("postgres.log"))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "=== last lines of {} ===\n{}\n",
                    log.display(),
                    file_tail(&log, 12)
                ));
            }
        }
        for source in self
            .extra_diagnostics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            text.push_str(&source());
            text.push('\n');
        }
        text.push_str(&format!(
            "=== last {LOG_LINES_SHOWN} log lines ===\n{}\n",
            log_tail(LOG_LINES_SHOWN)
        ));
        text
    }

    /// Panics with `message` and the diagnostics.
    pub async fn fail(&self, message: &str) -> ! {
        let diagnostics = self.diagnostics().await;
        panic!("{message}\n{diagnostics}");
    }

    /// Unwraps `result`, failing with diagnostics on `Err`.
    pub async fn check<T>(&self, what: &str, result: Result<T, String>) -> T {
        match result {
            Ok(value) => value,
            Err(error) => self.fail(&format!("{what}: {error}")).await,
        }
    }

    /// Waits until `predicate` holds for the shard; fails with the last view otherwise.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        predicate: impl Fn(&ShardView) -> Result<(), String>,
    ) -> ShardView {
        let result = poll(timeout, || async {
            let view = self.view().await?;
            predicate(&view).map(|()| view)
        })
        .await;
        self.check(&format!("{what} (waited {timeout:?})"), result)
            .await
    }

    /// Waits for a serving primary in a term above `above_term`; returns (tablet id, term).
    pub async fn wait_for_primary(&self, above_term: u64, timeout: Duration) -> (String, u64) {
        let view = self
            .wait_for(
                &format!("a serving primary in a term above {above_term}"),
                timeout,
                |view| match serving_primary(view) {
                    Some(p) if p.status.as_ref().is_some_and(|s| s.term > above_term) => Ok(()),
                    Some(p) => Err(format!(
                        "primary {} still in term {}",
                        p.record.id,
                        p.status.as_ref().map_or(0, |s| s.term)
                    )),
                    None => Err("no serving primary".into()),
                },
            )
            .await;
        let primary = serving_primary(&view).expect("checked by the predicate");
        (
            primary.record.id.clone(),
            primary.status.as_ref().map_or(0, |s| s.term),
        )
    }

    /// The tablet record and status of `id`, asked now.
    pub async fn tablet(&self, id: &str) -> TabletView {
        let view = self.check("reading the shard", self.view().await).await;
        match view.tablet(id) {
            Some(tablet) => tablet.clone(),
            None => self.fail(&format!("no tablet {id} in the shard")).await,
        }
    }

    /// A client connected straight to tablet `id`'s PostgreSQL, bypassing Tessera.
    pub async fn direct(&self, id: &str) -> Result<Client, String> {
        let port = match self.direct_ports(id) {
            Some(ports) => ports.postgres,
            None => {
                let view = self.view().await?;
                view.tablet(id)
                    .ok_or_else(|| format!("no tablet {id}"))?
                    .record
                    .postgres_port
            }
        };
        let url = format!(
            "host=127.0.0.1 port={port} user=postgres password=postgres dbname={} connect_timeout=5",
            self.keyspace
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|error| format!("connecting to {id} on port {port}: {error}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Waits until the shard is settled: a serving primary, and every tablet in `members`
    /// (all tablets when empty) either that primary or a replica that streams from it and has
    /// replayed everything the primary has written.
    pub async fn wait_settled(&self, members: &[&str], timeout: Duration) -> Settled {
        let result = poll(timeout, || async {
            let view = self.view().await?;
            let primary = serving_primary(&view).ok_or("no serving primary")?;
            let primary_id = primary.record.id.clone();
            let term = primary.status.as_ref().map_or(0, |s| s.term);
            let mut replicas = Vec::new();
            for tablet in &view.tablets {
                let id = tablet.record.id.as_str();
                if id == primary_id || (!members.is_empty() && !members.contains(&id)) {
                    continue;
                }
                let Some(status) = tablet.status.as_ref().filter(|_| tablet.reachable) else {
                    return Err(format!("{id} is unreachable"));
                };
                if status.role != "replica"
                    || !status.in_recovery
                    || !status.streaming
                    || status.following != primary_id
                {
                    return Err(format!("not settled: {}", describe(tablet)));
                }
                replicas.push(id.to_string());
            }
            let primary_client = self.direct(&primary_id).await?;
            let lsn: String = primary_client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .map_err(|e| format!("primary LSN: {e}"))?
                .get(0);
            for id in &replicas {
                let replica = self.direct(id).await?;
                let caught_up: bool = replica
                    .query_one(
                        "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                        &[&lsn],
                    )
                    .await
                    .map_err(|e| format!("{id} replay position: {e}"))?
                    .get(0);
                if !caught_up {
                    return Err(format!("{id} has not replayed up to {lsn} yet"));
                }
            }
            Ok(Settled {
                primary: primary_id,
                term,
                replicas,
            })
        })
        .await;
        self.check(&format!("the shard to settle within {timeout:?}"), result)
            .await
    }

    /// Checks `history` against the primary and every replica of a settled shard: every
    /// acknowledged write present exactly once, nothing duplicated or invented, all copies equal.
    pub async fn verify(&self, history: &History, settled: &Settled) {
        let mut copies = Vec::new();
        for id in std::iter::once(&settled.primary).chain(&settled.replicas) {
            let client = self
                .check(&format!("connecting to {id}"), self.direct(id).await)
                .await;
            copies.push((id.clone(), client));
        }
        match history.verify(&copies).await {
            Ok(checks) => {
                for (name, check) in checks {
                    tracing::info!(tablet = %name, rows = check.rows, in_doubt_present = check.in_doubt_present, "copy verified");
                }
            }
            Err(problems) => {
                self.fail(&format!(
                    "acknowledged writes are not intact ({}):\n{problems}",
                    history.summary()
                ))
                .await
            }
        }
    }
}

/// The proxies in front of one tablet's PostgreSQL and gRPC ports.
pub struct TabletProxies {
    pub postgres: Proxy,
    pub grpc: Proxy,
}

impl TabletProxies {
    /// Partitions the tablet from coordinators (gRPC) and from standbys and rewind sources
    /// (PostgreSQL).
    pub fn cut(&self) {
        self.postgres.cut();
        self.grpc.cut();
    }

    pub fn heal(&self) {
        self.postgres.heal();
        self.grpc.heal();
    }
}

/// An in-process cluster of one shard with three tablets in three zones (what `tessera up
/// --shards 1` runs: policy `at_least_n(2)`, one coordinator per zone, a gate), with a
/// [`ShardWatch`] on its shard.
pub struct HaCluster {
    pub test: TestCluster,
    pub watch: ShardWatch,
    /// Proxies by tablet id, after [`HaCluster::put_behind_proxies`].
    pub proxies: HashMap<String, TabletProxies>,
}

impl HaCluster {
    /// Starts the cluster (options adjustable by `configure`) and waits until it is settled.
    pub async fn start(configure: impl FnOnce(&mut UpOptions)) -> HaCluster {
        capture_logs();
        clear_logs();
        let dir = temp_dir();
        let mut options = test_options(dir.path(), 1, 3);
        configure(&mut options);
        let test = TestCluster::start_with(dir, options).await;
        let shard = test
            .cluster
            .layout
            .shard_names()
            .expect("shard names")
            .remove(0);
        let watch = ShardWatch::new(
            test.cluster.topology.clone(),
            &test.cluster.layout.keyspace,
            &shard,
        );
        let cluster = HaCluster {
            test,
            watch,
            proxies: HashMap::new(),
        };
        cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
        cluster
    }

    /// The in-process tablet `id`.
    pub fn tablet(&self, id: &str) -> &Arc<Tablet> {
        self.test
            .cluster
            .tablets
            .iter()
            .find(|t| t.id() == id)
            .unwrap_or_else(|| panic!("no tablet {id}"))
    }

    /// Puts every tablet's PostgreSQL and gRPC ports behind proxies and makes every
    /// component use them: the topology records advertise the proxy ports (coordinators
    /// reconnect their status streams), and a planned switchover repoints every standby at
    /// the new primary's proxied PostgreSQL port. Returns the settled shard.
    pub async fn put_behind_proxies(&mut self) -> Settled {
        let records = self.test.tablets().await;
        for record in records {
            let postgres = Proxy::start(SocketAddr::from(([127, 0, 0, 1], record.postgres_port)))
                .await
                .expect("start a PostgreSQL proxy");
            let grpc = Proxy::start(SocketAddr::from(([127, 0, 0, 1], record.grpc_port)))
                .await
                .expect("start a gRPC proxy");
            self.watch.set_direct_ports(
                &record.id,
                DirectPorts {
                    postgres: record.postgres_port,
                    grpc: record.grpc_port,
                },
            );
            let advertised = TabletRecord {
                postgres_port: postgres.port(),
                grpc_port: grpc.port(),
                ..record.clone()
            };
            self.test
                .cluster
                .topology
                .register_tablet(&advertised)
                .await
                .expect("register the proxied tablet record");
            self.proxies
                .insert(record.id.clone(), TabletProxies { postgres, grpc });
        }
        // Every coordinator (one per zone) follows every tablet through its proxy.
        let coordinators = self.test.cluster.layout.zones as u64;
        let result = poll(SETTLE_TIMEOUT, || async {
            match self
                .proxies
                .iter()
                .find(|(_, p)| p.grpc.accepted() < coordinators)
            {
                Some((id, p)) => Err(format!(
                    "{id}'s gRPC proxy has {} connections",
                    p.grpc.accepted()
                )),
                None => Ok(()),
            }
        })
        .await;
        self.watch
            .check("coordinators to use the gRPC proxies", result)
            .await;
        let outcome = operations::switchover(
            &self.test.cluster.topology,
            &self.watch.keyspace,
            &self.watch.shard,
            None,
            Duration::from_secs(2),
        )
        .await;
        let (outcome, _) = self
            .watch
            .check(
                "a switchover onto the proxies",
                outcome.map_err(|e| e.to_string()),
            )
            .await;
        let settled = self.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
        if settled.primary != outcome.leader {
            self.watch
                .fail(&format!(
                    "switched over to {} but {} leads",
                    outcome.leader, settled.primary
                ))
                .await;
        }
        // Every standby now streams through the primary's proxy.
        let primary_proxy = self.proxies[&settled.primary].postgres.port();
        for replica in &settled.replicas {
            let client = self
                .watch
                .check("connecting to a replica", self.watch.direct(replica).await)
                .await;
            let conninfo: String = match client
                .query_one("SELECT conninfo FROM pg_stat_wal_receiver", &[])
                .await
            {
                Ok(row) => row.get(0),
                Err(error) => {
                    self.watch
                        .fail(&format!("{replica}: pg_stat_wal_receiver: {error}"))
                        .await
                }
            };
            let through_proxy = [
                format!("port={primary_proxy}"),
                format!("port='{primary_proxy}'"),
            ]
            .iter()
            .any(|setting| conninfo.split_whitespace().any(|word| word == setting));
            if !through_proxy {
                self.watch
                    .fail(&format!("{replica} streams with {conninfo:?}, not through proxy port {primary_proxy}"))
                    .await;
            }
        }
        settled
    }

    pub async fn stop(self) {
        drop(self.proxies);
        self.test.stop().await;
    }
}

/// Bound on waiting for a shard to settle (start, rejoin after a rewind).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
