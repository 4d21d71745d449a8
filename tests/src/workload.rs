//! A write workload that remembers every acknowledgement, and the checks that nothing
//! acknowledged was lost or duplicated.
//!
//! Writers insert rows with unique ids through the gate, each on its own connection, and record
//! every attempt: acknowledged (with the port of the PostgreSQL that committed it, returned by
//! the INSERT itself), failed (the client saw an error), or timed out. Failed and timed-out
//! writes are *in doubt*: the commit may or may not have happened, so afterwards they may be
//! present at most once. Acknowledged writes must be present exactly once on every copy.
//!
//! The table has no unique constraint on purpose: a write replayed twice (e.g. by a buffer that
//! retries a statement that had already committed) shows up as a duplicate instead of being
//! hidden by a constraint violation.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// How a workload writes.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Table the rows go to (created through the gate by [`create_table`]).
    pub table: String,
    /// Concurrent writers, each with its own client connection.
    pub writers: usize,
    /// Pause after each attempt of one writer (bounds the CPU a test spends on writing).
    pub pause: Duration,
    /// An attempt that has not finished after this is abandoned and counted in doubt (a commit
    /// blocked by the durability policy never finishes on its own).
    pub attempt_timeout: Duration,
    /// Connection attempts of a writer time out after this.
    pub connect_timeout: Duration,
}

impl WorkloadOptions {
    pub fn new(table: &str) -> WorkloadOptions {
        WorkloadOptions {
            table: table.to_string(),
            writers: 2,
            pause: Duration::from_millis(5),
            attempt_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What became of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client got the row back: the write is acknowledged. `port` is the PostgreSQL port
    /// of the server that committed it (`current_setting('port')`).
    Acknowledged { port: u16 },
    /// The client saw an error (SQLSTATE when the server sent one).
    Failed {
        sqlstate: Option<String>,
        message: String,
    },
    /// No answer within the attempt timeout; the client gave up on the connection.
    TimedOut,
}

/// One write attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: i64,
    pub writer: usize,
    pub started: Instant,
    pub ended: Instant,
    pub outcome: Outcome,
}

impl Attempt {
    pub fn acknowledged(&self) -> bool {
        matches!(self.outcome, Outcome::Acknowledged { .. })
    }

    /// The port of the PostgreSQL that acknowledged the write.
    pub fn port(&self) -> Option<u16> {
        match self.outcome {
            Outcome::Acknowledged { port } => Some(port),
            _ => None,
        }
    }
}

/// An error a client saw that was not about one write: connecting failed.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub writer: usize,
    pub at: Instant,
    pub message: String,
}

#[derive(Default)]
struct Shared {
    attempts: Mutex<Vec<Attempt>>,
    connect_failures: Mutex<Vec<ConnectFailure>>,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    /// When the last acknowledgement arrived, in ms since `origin`.
    last_ack_ms: AtomicI64,
}

/// Locks a mutex whose data stays valid even if a writer panicked while holding it.
trait Locked<T> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running workload.
pub struct Workload {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<()>>,
    origin: Instant,
    table: String,
}

/// Creates the workload's table through the gate. No primary key on `id`: duplicates must
/// stay visible.
pub async fn create_table(gate: &Client, table: &str) -> Result<(), tokio_postgres::Error> {
    gate.batch_execute(&format!(
        "CREATE TABLE {table} (tenant_id bigint NOT NULL, id bigint NOT NULL, writer int NOT NULL)"
    ))
    .await
}

async fn connect(url: &str, timeout: Duration) -> Result<Client, String> {
    match tokio::time::timeout(timeout, tokio_postgres::connect(url, NoTls)).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

impl Workload {
    /// Starts `options.writers` writers against the gate at `url`. Ids are unique across the
    /// workload and start at `first_id` (use different ranges for workloads sharing a table).
    pub fn start(url: &str, options: WorkloadOptions, first_id: i64) -> Workload {
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let next_id = Arc::new(AtomicI64::new(first_id));
        let origin = Instant::now();
        let writers = (0..options.writers)
            .map(|writer| {
                tokio::spawn(write_loop(
                    writer,
                    url.to_string(),
                    options.clone(),
                    next_id.clone(),
                    shared.clone(),
                    stop.clone(),
                    origin,
                ))
            })
            .collect();
        Workload {
            shared,
            stop,
            writers,
            origin,
            table: options.table,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Acknowledged writes so far.
    pub fn acknowledged(&self) -> u64 {
        self.shared.acknowledged.load(Ordering::Acquire)
    }

    /// Attempts that ended with an error or a timeout so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// When the last acknowledgement arrived (None before the first).
    pub fn last_acknowledgement(&self) -> Option<Instant> {
        let ms = self.shared.last_ack_ms.load(Ordering::Acquire);
        (ms > 0).then(|| self.origin + Duration::from_millis(ms as u64))
    }

    /// Waits until `more` further writes are acknowledged; `Err` with the counts on timeout.
    pub async fn wait_for_more(&self, more: u64, timeout: Duration) -> Result<(), String> {
        let target = self.acknowledged() + more;
        let deadline = Instant::now() + timeout;
        while self.acknowledged() < target {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} of {more} more acknowledgements within {timeout:?} ({} failed so far; last error: {})",
                    self.acknowledged() + more - target,
                    self.failed(),
                    self.last_error().unwrap_or_else(|| "none".into())
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The newest error a client saw, for diagnostics.
    pub fn last_error(&self) -> Option<String> {
        let attempts = self.shared.attempts.locked();
        let failed = attempts.iter().rev().find_map(|a| match &a.outcome {
            Outcome::Failed { message, .. } => Some(message.clone()),
            Outcome::TimedOut => Some("timed out".into()),
            Outcome::Acknowledged { .. } => None,
        });
        failed.or_else(|| {
            self.shared
                .connect_failures
                .locked()
                .last()
                .map(|f| f.message.clone())
        })
    }

    /// Stops the writers (an attempt in flight finishes or times out) and returns the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Release);
        for writer in self.writers {
            let _ = writer.await;
        }
        let mut attempts = std::mem::take(&mut *self.shared.attempts.locked());
        attempts.sort_by_key(|a| a.ended);
        History {
            attempts,
            connect_failures: std::mem::take(&mut *self.shared.connect_failures.locked()),
            table: self.table,
        }
    }
}

async fn write_loop(
    writer: usize,
    url: String,
    options: WorkloadOptions,
    next_id: Arc<AtomicI64>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    origin: Instant,
) {
    let statement = format!(
        "INSERT INTO {} (tenant_id, id, writer) VALUES ($1, $2, $3) RETURNING current_setting('port')::int",
        options.table
    );
    let writer_number = writer as i32;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Acquire) {
        let current = match client.take() {
            Some(client) if !client.is_closed() => client,
            _ => match connect(&url, options.connect_timeout).await {
                Ok(client) => client,
                Err(message) => {
                    shared.connect_failures.locked().push(ConnectFailure {
                        writer,
                        at: Instant::now(),
                        message,
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let id = next_id.fetch_add(1, Ordering::AcqRel);
        let started = Instant::now();
        let result = tokio::time::timeout(
            options.attempt_timeout,
            current.query_one(&statement, &[&id, &id, &writer_number]),
        )
        .await;
        let ended = Instant::now();
        let outcome = match result {
            Ok(Ok(row)) => match row.try_get::<_, i32>(0) {
                Ok(port) => Outcome::Acknowledged {
                    port: u16::try_from(port).unwrap_or(0),
                },
                Err(error) => Outcome::Failed {
                    sqlstate: None,
                    message: format!("acknowledged without a readable port: {error}"),
                },
            },
            Ok(Err(error)) => Outcome::Failed {
                sqlstate: error.code().map(|c| c.code().to_string()),
                message: error
                    .as_db_error()
                    .map(|db| db.message().to_string())
                    .unwrap_or_else(|| error.to_string()),
            },
            Err(_) => Outcome::TimedOut,
        };
        match outcome {
            Outcome::Acknowledged { .. } => {
                shared.acknowledged.fetch_add(1, Ordering::AcqRel);
                let ms = ended.duration_since(origin).as_millis().max(1) as i64;
                shared.last_ack_ms.fetch_max(ms, Ordering::AcqRel);
                client = Some(current);
            }
            // After a timeout the connection is still busy with the abandoned statement.
            Outcome::TimedOut => {
                shared.failed.fetch_add(1, Ordering::AcqRel);
            }
            Outcome::Failed { .. } => {
                shared.failed.fetch_add(1, Ordering::AcqRel);
                client = Some(current);
            }
        }
        shared.attempts.locked().push(Attempt {
            id,
            writer,
            started,
            ended,
            outcome,
        });
        if !options.pause.is_zero() {
            tokio::time::sleep(options.pause).await;
        }
    }
}

/// Everything a workload did, ordered by the end of each attempt.
#[derive(Debug)]
pub struct History {
    pub attempts: Vec<Attempt>,
    pub connect_failures: Vec<ConnectFailure>,
    pub table: String,
}

/// What a copy of the data (one tablet's PostgreSQL) holds, compared with the history.
#[derive(Debug, Default)]
pub struct CopyCheck {
    /// Acknowledged ids that are missing.
    pub lost: Vec<i64>,
    /// Ids present more than once, with their count.
    pub duplicated: Vec<(i64, i64)>,
    /// Ids present that no writer ever attempted.
    pub phantom: Vec<i64>,
    /// In-doubt writes that are present (allowed; reported for information).
    pub in_doubt_present: usize,
    /// Rows in the table.
    pub rows: usize,
}

impl CopyCheck {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.phantom.is_empty()
    }
}

impl History {
    pub fn acknowledged(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter().filter(|a| a.acknowledged())
    }

    /// Attempts whose outcome the client does not know (error or timeout).
    pub fn in_doubt(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter().filter(|a| !a.acknowledged())
    }

    /// Every error a client saw: failed or timed-out writes and failed connection attempts.
    pub fn client_errors(&self) -> Vec<String> {
        let writes = self.in_doubt().map(|a| match &a.outcome {
            Outcome::Failed { sqlstate, message } => {
                format!(
                    "write {}: {} {message}",
                    a.id,
                    sqlstate.as_deref().unwrap_or("-")
                )
            }
            _ => format!("write {}: timed out", a.id),
        });
        let connects = self
            .connect_failures
            .iter()
            .map(|f| format!("writer {} connect: {}", f.writer, f.message));
        writes.chain(connects).collect()
    }

    /// The longest time between two consecutive acknowledgements within `[from, to]`
    /// (including the edges: from `from` to the first acknowledgement and from the last one
    /// to `to`).
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for attempt in self
            .acknowledged()
            .filter(|a| a.ended >= from && a.ended <= to)
        {
            longest = longest.max(attempt.ended.duration_since(previous));
            previous = attempt.ended;
        }
        longest.max(to.saturating_duration_since(previous))
    }

    /// The first acknowledgement that ended after `instant`.
    pub fn first_acknowledged_after(&self, instant: Instant) -> Option<&Attempt> {
        self.acknowledged().find(|a| a.ended > instant)
    }

    /// One line summing the history up, for logs and failure messages.
    pub fn summary(&self) -> String {
        let acknowledged = self.acknowledged().count();
        let mut by_port: BTreeMap<u16, usize> = BTreeMap::new();
        for attempt in self.acknowledged() {
            *by_port.entry(attempt.port().unwrap_or(0)).or_default() += 1;
        }
        format!(
            "{} attempts, {acknowledged} acknowledged (by PostgreSQL port: {by_port:?}), {} in doubt, {} connect failures",
            self.attempts.len(),
            self.attempts.len() - acknowledged,
            self.connect_failures.len()
        )
    }

    /// Compares one copy of the table with the history.
    pub async fn check_copy(&self, client: &Client) -> Result<CopyCheck, tokio_postgres::Error> {
        let rows = client
            .query(
                &*format!("SELECT id, count(*) FROM {} GROUP BY id", self.table),
                &[],
            )
            .await?;
        let present: HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let attempted: HashMap<i64, bool> = self
            .attempts
            .iter()
            .map(|a| (a.id, a.acknowledged()))
            .collect();
        let mut check = CopyCheck {
            rows: present.values().sum::<i64>() as usize,
            ..CopyCheck::default()
        };
        for (&id, &acknowledged) in &attempted {
            match present.get(&id) {
                None if acknowledged => check.lost.push(id),
                Some(_) if !acknowledged => check.in_doubt_present += 1,
                _ => {}
            }
        }
        for (&id, &count) in &present {
            if count > 1 {
                check.duplicated.push((id, count));
            }
            if !attempted.contains_key(&id) {
                check.phantom.push(id);
            }
        }
        check.lost.sort_unstable();
        check.duplicated.sort_unstable();
        check.phantom.sort_unstable();
        Ok(check)
    }

    /// Checks every copy (name, client): each holds every acknowledged write exactly once, no
    /// duplicates, nothing never attempted, and all copies hold the same rows. Returns a
    /// description of every problem found.
    pub async fn verify(
        &self,
        copies: &[(String, Client)],
    ) -> Result<Vec<(String, CopyCheck)>, String> {
        let mut problems = Vec::new();
        let mut checks = Vec::new();
        for (name, client) in copies {
            match self.check_copy(client).await {
                Ok(check) => {
                    if !check.is_clean() {
                        problems.push(format!(
                            "{name}: lost {} acknowledged writes {:?}, {} duplicated {:?}, {} phantom {:?}",
                            check.lost.len(),
                            truncate(&check.lost),
                            check.duplicated.len(),
                            truncate(&check.duplicated),
                            check.phantom.len(),
                            truncate(&check.phantom)
                        ));
                    }
                    checks.push((name.clone(), check));
                }
                Err(error) => problems.push(format!("{name}: cannot read {}: {error}", self.table)),
            }
        }
        // In-doubt writes may be present or not, but the same on every copy of a settled shard.
        if let Some((first_name, first)) = checks.first() {
            for (name, check) in &checks[1..] {
                if check.rows != first.rows || check.in_doubt_present != first.in_doubt_present {
                    problems.push(format!(
                        "{name} holds {} rows ({} in doubt) but {first_name} holds {} ({} in doubt)",
                        check.rows, check.in_doubt_present, first.rows, first.in_doubt_present
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(checks)
        } else {
            Err(problems.join("\n"))
        }
    }
}

fn truncate<T: Clone>(items: &[T]) -> Vec<T> {
    items.iter().take(10).cloned().collect()
}
