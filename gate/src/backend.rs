//! Where the gate gets server connections for a shard's primary: the tablet's own pool when
//! the tablet runs in the same process (`tessera up`; no socket hop), otherwise a pool of
//! connections to the tablet's pooler over TCP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tessera_topology::records::TabletRecord;
use tessera_wire::{AcquireError, ConnSource, ConnectConfig, Pool, PoolConfig, PooledConn, Target};

use crate::cluster::Cluster;
use crate::config::GateConfig;
use crate::sql::shardmap::ShardIndex;

/// In-process tablets by id, handed to the gate by the process that runs both.
pub type LocalTablets = HashMap<String, Arc<dyn ConnSource>>;

pub struct Backends {
    local: LocalTablets,
    remote: DashMap<String, (TabletRecord, Pool)>,
    config: Arc<GateConfig>,
}

impl Backends {
    pub fn new(config: Arc<GateConfig>, local: LocalTablets) -> Backends {
        Backends {
            local,
            remote: DashMap::new(),
            config,
        }
    }

    fn source(&self, tablet: &TabletRecord) -> Arc<dyn ConnSource> {
        if let Some(local) = self.local.get(&tablet.id) {
            return local.clone();
        }
        if let Some(entry) = self.remote.get(&tablet.id)
            && entry.0.host == tablet.host
            && entry.0.pooler_port == tablet.pooler_port
        {
            return Arc::new(entry.1.clone());
        }
        let pool = Pool::new(PoolConfig {
            name: tablet.id.clone(),
            connect: ConnectConfig {
                target: Target::Tcp {
                    host: tablet.host.clone(),
                    port: tablet.pooler_port,
                },
                user: self.config.backend_user.clone(),
                password: self.config.backend_password.clone(),
                database: tablet.keyspace.clone(),
                params: vec![(
                    "application_name".into(),
                    format!("tessera-gate-{}", self.config.gate_id),
                )],
                connect_timeout_ms: self.config.backend_acquire_timeout_ms,
            },
            max_size: self.config.backend_pool_size,
            acquire_timeout_ms: self.config.backend_acquire_timeout_ms,
        });
        self.remote
            .insert(tablet.id.clone(), (tablet.clone(), pool.clone()));
        Arc::new(pool)
    }

    /// One attempt to get a connection to the primary of `shard` in `keyspace`.
    pub async fn try_acquire(
        &self,
        cluster: &Cluster,
        keyspace: &str,
        shard: ShardIndex,
    ) -> Result<PooledConn, AcquireError> {
        let source = self.resolve(cluster, keyspace, shard)?;
        source.acquire().await.map_err(|error| {
            tracing::debug!(%error, keyspace, shard, "acquire failed");
            error
        })
    }

    /// Where connections to the primary of `shard` in `keyspace` come from now.
    fn resolve(
        &self,
        cluster: &Cluster,
        keyspace: &str,
        shard: ShardIndex,
    ) -> Result<Arc<dyn ConnSource>, AcquireError> {
        // Resolve the source under the view guard, borrowing: no tablet-record or shard-name
        // copies per statement.
        Ok({
            let view = cluster.view();
            let keyspace_view =
                view.keyspaces
                    .get(keyspace)
                    .ok_or_else(|| AcquireError::NotServing {
                        tablet: "?".into(),
                        reason: format!("keyspace {keyspace} is not in the topology"),
                        term: 0,
                    })?;
            let shard_name = keyspace_view.shards.name(shard);
            let primary = cluster
                .primary(keyspace, shard_name, keyspace_view.primary(shard))
                .ok_or_else(|| AcquireError::NotServing {
                    tablet: "?".into(),
                    reason: format!("shard {keyspace}/{shard_name} has no primary"),
                    term: 0,
                })?;
            let tablet = view
                .tablets
                .get(&primary)
                .ok_or_else(|| AcquireError::NotServing {
                    tablet: primary.to_string(),
                    reason: format!("primary of {keyspace}/{shard_name} is not registered"),
                    term: 0,
                })?;
            self.source(tablet)
        })
    }

    /// Gets a connection, holding the query (bounded in time) while the shard has no serving
    /// primary, e.g. during a switchover or failover: the buffer that lets planned primary
    /// changes pass without client errors.
    ///
    /// `cache` holds the sources one session resolved before: while the cluster has not
    /// changed, a borrow skips resolving the primary (map lookups and the scan of the tablets'
    /// live statuses) and goes straight to the source.
    pub async fn acquire(
        &self,
        cluster: &Cluster,
        keyspace: &str,
        shard: ShardIndex,
        cache: &mut SourceCache,
    ) -> Result<PooledConn, AcquireError> {
        if let Some(source) = cache.get(shard, cluster.generation()) {
            let result = match source.acquire_now() {
                Some(result) => result,
                None => source.acquire().await,
            };
            match result {
                Ok(conn) => return Ok(conn),
                // Resolve again below; that path also buffers while there is no primary.
                Err(_) => cache.forget(shard),
            }
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.buffer_window_ms);
        let mut changes = cluster.subscribe();
        let mut buffered = false;
        loop {
            let generation = cluster.generation();
            let attempt = match self.resolve(cluster, keyspace, shard) {
                Ok(source) => {
                    let result = source.acquire().await;
                    if result.is_ok() {
                        cache.put(shard, generation, source);
                    }
                    result
                }
                Err(error) => Err(error),
            };
            match attempt {
                Ok(conn) => {
                    if buffered {
                        metrics::counter!("tessera_gate_buffered_queries_total", "outcome" => "served").increment(1);
                    }
                    return Ok(conn);
                }
                Err(error) if error.is_retryable() && Instant::now() < deadline => {
                    buffered = true;
                    // Wake on a topology change or retry shortly: tablets may recover before
                    // the topology records anything.
                    let wait = Duration::from_millis(50);
                    let _ = tokio::time::timeout(wait, changes.changed()).await;
                }
                Err(error) => {
                    if buffered {
                        metrics::counter!("tessera_gate_buffered_queries_total", "outcome" => "failed").increment(1);
                    }
                    return Err(error);
                }
            }
        }
    }

    /// Forgets remote pools (e.g. when a tablet moved); in-process sources are unaffected.
    pub fn reset_remote(&self, tablet: &str) {
        if let Some((_, (_, pool))) = self.remote.remove(tablet) {
            pool.reset();
        }
    }
}

/// How long a session reuses a resolved source without resolving again, even if nothing
/// changed: live statuses count only while fresh (`LIVE_STATUS_TTL` in cluster.rs), and an
/// expiry is not an event. Short next to that TTL and to failover times.
const SOURCE_CACHE_TTL: Duration = Duration::from_millis(250);

/// The connection source one session last resolved for each shard.
#[derive(Default)]
pub struct SourceCache {
    entries: Vec<Option<CachedSource>>,
}

struct CachedSource {
    generation: u64,
    resolved: Instant,
    source: Arc<dyn ConnSource>,
}

impl SourceCache {
    fn get(&self, shard: ShardIndex, generation: u64) -> Option<Arc<dyn ConnSource>> {
        let cached = self.entries.get(shard)?.as_ref()?;
        (cached.generation == generation && cached.resolved.elapsed() < SOURCE_CACHE_TTL)
            .then(|| cached.source.clone())
    }

    fn put(&mut self, shard: ShardIndex, generation: u64, source: Arc<dyn ConnSource>) {
        if self.entries.len() <= shard {
            self.entries.resize_with(shard + 1, || None);
        }
        self.entries[shard] = Some(CachedSource {
            generation,
            resolved: Instant::now(),
            source,
        });
    }

    fn forget(&mut self, shard: ShardIndex) {
        if let Some(entry) = self.entries.get_mut(shard) {
            *entry = None;
        }
    }
}
