//! The coordinator: the per-zone failover agent (ARCHITECTURE.md §5).
//!
//! ```text
//!  observe (status stream from every tablet + topology) ─► analyse (pure: named problems)
//!        ─► recover (one action per problem; leadership changes via the consensus core)
//! ```
//! Several coordinators may race on the same shard. Safety comes only from terms: a tablet
//! serves the first agent of a term and refuses older terms. Grace periods, jitter and the
//! shard lock in the topology only make collisions rare.

pub mod analysis;
pub mod change;
pub mod client;
pub mod config;
pub mod observe;
pub mod operations;
pub mod recover;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{ConfigError, CoordinatorConfig};
use tessera_consensus::AgentId;
use tessera_topology::{TopoError, Topology};

use crate::analysis::{Problem, analyse};
use crate::change::Timeouts;
use crate::client::Clients;
use crate::observe::Observer;

/// Lease of the shard lock. The holder renews it while alive; a holder that dies (kill -9)
/// blocks others for at most this long.
pub const SHARD_LOCK_TTL: Duration = Duration::from_secs(4);

/// Why a coordinator stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("topology: {0}")]
    Topology(#[from] TopoError),
}

/// The agent id of a coordinator: zone plus a per-run suffix, so a restarted coordinator is a
/// new agent.
pub fn agent_id(zone: &str) -> AgentId {
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    AgentId::new(format!(
        "coord-{zone}-{:x}{:04x}",
        boot,
        rand::random::<u16>()
    ))
    .expect("valid agent id")
}

struct ShardMemory {
    /// When each current problem was first seen.
    first_seen: HashMap<String, Instant>,
    /// Highest term seen, and when it last rose.
    term: u64,
    term_rose: Instant,
    /// A recovery task is running.
    busy: bool,
    /// Failed recoveries in a row, and no new attempt before `retry_at` (randomized
    /// exponential backoff: coordinators racing without a lock must not keep stealing each
    /// other's terms).
    failures: u32,
    retry_at: Instant,
}

/// Runs one coordinator until `shutdown` resolves.
pub async fn run(
    config: CoordinatorConfig,
    topology: Topology,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    config.validate()?;
    let agent = agent_id(&config.zone);
    let clients = Arc::new(Clients::default());
    let observer = Observer::new(
        topology.clone(),
        clients.clone(),
        Duration::from_millis(config.unreachable_after_ms),
    );
    observer.refresh().await;
    tracing::info!(zone = %config.zone, %agent, "coordinator started");
    let refresher = {
        let observer = observer.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                observer.refresh().await;
            }
        })
    };
    let memory: Arc<parking_lot::Mutex<HashMap<(String, String), ShardMemory>>> =
        Default::default();
    let tick = Duration::from_millis(config.tick_ms);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(tick) => {}
        }
        for (keyspace, shard) in observer.shards() {
            let key = (keyspace.clone(), shard.record.name.clone());
            let problems = analyse(&shard);
            let action = {
                let mut memory = memory.lock();
                let highest = shard.highest_term();
                let entry = memory.entry(key.clone()).or_insert_with(|| ShardMemory {
                    first_seen: HashMap::new(),
                    term: highest,
                    term_rose: long_ago(),
                    busy: false,
                    failures: 0,
                    retry_at: Instant::now(),
                });
                if highest > entry.term {
                    entry.term = highest;
                    entry.term_rose = Instant::now();
                }
                let keys: HashSet<String> = problems.iter().map(Problem::key).collect();
                entry.first_seen.retain(|k, _| keys.contains(k));
                for problem in &problems {
                    entry.first_seen.entry(problem.key()).or_insert_with(|| {
                        tracing::warn!(keyspace = %keyspace, shard = %shard.record.name, %problem, "problem detected");
                        metrics::counter!("tessera_coordinator_problems_total", "kind" => problem.kind()).increment(1);
                        Instant::now()
                    });
                }
                if entry.busy || Instant::now() < entry.retry_at {
                    None
                } else {
                    choose(&config, entry, &problems)
                }
            };
            let Some(problem) = action else { continue };
            memory.lock().get_mut(&key).expect("entry exists").busy = true;
            let agent = agent.clone();
            let clients = clients.clone();
            let topology = topology.clone();
            let memory = memory.clone();
            let observer = observer.clone();
            let jitter = Duration::from_millis(rand::random_range(0..=config.jitter_ms));
            tokio::spawn(async move {
                tokio::time::sleep(jitter).await;
                // The shard lock only avoids collisions; without a topology, go ahead anyway.
                let asked = Instant::now();
                let lock = if observer.topology_available() {
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        topology.lock_shard(&keyspace, &shard.record.name, SHARD_LOCK_TTL),
                    )
                    .await
                } else {
                    tracing::info!(keyspace = %keyspace, shard = %shard.record.name, "topology unavailable: recovering without the shard lock");
                    Ok(Err(TopoError::Unavailable {
                        endpoint: "topology".into(),
                        reason: "not answering".into(),
                    }))
                };
                let guard = match lock {
                    Ok(Ok(guard)) => Some(guard),
                    Ok(Err(error)) if error.is_retryable() => None,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "shard lock failed");
                        None
                    }
                    Err(_) => {
                        // Someone else holds the lock: they are recovering this shard.
                        memory
                            .lock()
                            .get_mut(&(keyspace, shard.record.name.clone()))
                            .expect("entry")
                            .busy = false;
                        return;
                    }
                };
                // A lock that was not free at once was probably held by a coordinator fixing
                // this shard: wait for tablets to report after it let go (its new term), so
                // the stale picture from before does not start a needless second change.
                let locked = Instant::now();
                if guard.is_some() && locked - asked > CONTENDED_LOCK {
                    observer
                        .await_reports_since(
                            &keyspace,
                            &shard.record.name,
                            locked,
                            FRESH_REPORTS_LIMIT,
                        )
                        .await;
                }
                // Re-read the shard: the problem may be gone by now.
                let current = observer
                    .shards()
                    .into_iter()
                    .find(|(k, s)| *k == keyspace && s.record.name == shard.record.name)
                    .map(|(_, s)| s);
                let mut failed = false;
                if let Some(current) = current
                    && analyse(&current).contains(&problem)
                {
                    tracing::warn!(keyspace = %keyspace, shard = %current.record.name, %problem, "recovering");
                    let started = Instant::now();
                    match recover::recover(
                        &agent,
                        &clients,
                        Some(&topology),
                        &keyspace,
                        &current,
                        &problem,
                        &Timeouts::default(),
                    )
                    .await
                    {
                        Ok(Some(outcome)) => {
                            observer.note_primary(
                                &keyspace,
                                &current.record.name,
                                &outcome.leader,
                                outcome.term,
                            );
                            metrics::histogram!("tessera_coordinator_recovery_seconds", "kind" => problem.kind())
                                .record(started.elapsed().as_secs_f64());
                            tracing::info!(keyspace = %keyspace, shard = %current.record.name, term = outcome.term,
                                leader = %outcome.leader, elapsed_ms = started.elapsed().as_millis() as u64, "recovered");
                        }
                        Ok(None) => {}
                        Err(error) => {
                            failed = true;
                            metrics::counter!("tessera_coordinator_recovery_failures_total", "kind" => problem.kind()).increment(1);
                            tracing::warn!(keyspace = %keyspace, shard = %current.record.name, %problem, %error, "recovery failed; will retry");
                        }
                    }
                }
                if let Some(guard) = guard {
                    let _ = guard.release().await;
                }
                let mut memory = memory.lock();
                let entry = memory
                    .get_mut(&(keyspace, shard.record.name.clone()))
                    .expect("entry");
                entry.busy = false;
                if failed {
                    entry.failures = (entry.failures + 1).min(6);
                    let ceiling_ms = 250u64 << entry.failures;
                    entry.retry_at = Instant::now()
                        + Duration::from_millis(rand::random_range(ceiling_ms / 2..=ceiling_ms));
                } else {
                    entry.failures = 0;
                }
                // Terms raised during our own work are not another agent's.
                entry.term_rose = long_ago();
                if let Some(highest) = observer_highest(&observer, &entry_key(&shard)) {
                    entry.term = entry.term.max(highest);
                }
            });
        }
    }
    refresher.abort();
    observer.close();
    tracing::info!(zone = %config.zone, "coordinator stopped");
    Ok(())
}

/// Taking the shard lock longer than this means another holder was waited for.
const CONTENDED_LOCK: Duration = Duration::from_millis(50);
/// Longest wait for fresh tablet reports after a contended lock (status streams report every
/// 250 ms).
const FRESH_REPORTS_LIMIT: Duration = Duration::from_millis(750);

fn long_ago() -> Instant {
    Instant::now()
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or_else(Instant::now)
}

fn entry_key(shard: &analysis::ShardView) -> (String, String) {
    (shard.record.keyspace.clone(), shard.record.name.clone())
}

fn observer_highest(observer: &Observer, key: &(String, String)) -> Option<u64> {
    observer
        .shards()
        .into_iter()
        .find(|(keyspace, shard)| *keyspace == key.0 && shard.record.name == key.1)
        .map(|(_, shard)| shard.highest_term())
}

/// Picks the problem to recover now, if any has persisted past its grace period.
fn choose(
    config: &CoordinatorConfig,
    memory: &ShardMemory,
    problems: &[Problem],
) -> Option<Problem> {
    let aged = |problem: &Problem, grace_ms: u64| {
        memory
            .first_seen
            .get(&problem.key())
            .is_some_and(|seen| seen.elapsed() >= Duration::from_millis(grace_ms))
    };
    // Another agent raised the term recently: give it time to finish its change.
    let someone_working =
        memory.term_rose.elapsed() < Duration::from_millis(config.takeover_grace_ms);
    for problem in problems {
        let ready = match problem {
            p if p.needs_failover() => !someone_working && aged(p, config.failover_grace_ms),
            Problem::PolicyMismatch { .. } | Problem::ForeignTerm { .. } => {
                !someone_working && aged(problem, config.failover_grace_ms)
            }
            Problem::StalePrimary { .. } | Problem::ReplicaNotReplicating { .. } => {
                aged(problem, config.repair_grace_ms)
            }
            _ => false,
        };
        if ready {
            return Some(problem.clone());
        }
    }
    None
}
