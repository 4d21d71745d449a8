//! The gate's cached view of the topology: per keyspace its vschema, its serving shards and
//! each shard's primary, plus every tablet's address. Queries read it lock-free (`ArcSwap`);
//! a watch on the topology rebuilds it. The query path never waits on the topology.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tessera_proto::keyrange::KeyRange;
use tessera_proto::vindex::HashFamily;
use tessera_topology::records::{KeyspaceRecord, TableKind as RecordKind, TabletRecord};
use tessera_topology::{TopoError, Topology};
use tokio::sync::watch;

use crate::sql::shardmap::{ShardIndex, ShardMap};
use crate::sql::vschema::{TableInfo, TableKind, VSchema};

/// One keyspace as the gate routes it.
#[derive(Debug)]
pub struct KeyspaceView {
    pub vschema: Arc<VSchema>,
    pub shards: Arc<ShardMap>,
    /// Primary tablet id of each shard (by `ShardIndex`), when known.
    pub primaries: Vec<Option<String>>,
}

impl KeyspaceView {
    pub fn primary(&self, shard: ShardIndex) -> Option<&str> {
        self.primaries.get(shard).and_then(|p| p.as_deref())
    }
}

/// Everything the gate knows, rebuilt as a whole on each topology change.
#[derive(Debug, Default)]
pub struct ClusterView {
    pub keyspaces: HashMap<String, Arc<KeyspaceView>>,
    pub tablets: HashMap<String, TabletRecord>,
    /// Problems found while building the view (shown in logs, never fatal).
    pub problems: Vec<String>,
}

/// What a tablet last said about itself on its status stream.
#[derive(Debug, Clone)]
pub struct LiveTablet {
    pub keyspace: String,
    pub shard: String,
    pub serving: bool,
    pub term: u64,
    pub updated: std::time::Instant,
}

/// A live status older than this is ignored (the tablet may be gone).
const LIVE_STATUS_TTL: Duration = Duration::from_secs(3);

/// The live view plus the means to refresh it.
pub struct Cluster {
    topology: Topology,
    view: ArcSwap<ClusterView>,
    /// Bumped whenever the view changes; buffered queries wait on it.
    changed: watch::Sender<u64>,
    /// Bumped on every change routing depends on (see [`Cluster::generation`]).
    generation: std::sync::atomic::AtomicU64,
    /// Tablets' own reports, from their status streams: who serves, in which term. The
    /// primary a query goes to is the serving tablet with the highest term; the topology's
    /// primary is only the fallback, so failover reaches clients even while the topology is
    /// unavailable.
    live: dashmap::DashMap<String, LiveTablet>,
    streams: parking_lot::Mutex<
        std::collections::HashMap<String, (TabletRecord, tokio::task::JoinHandle<()>)>,
    >,
}

impl Cluster {
    /// Loads the first view; fails only if the topology cannot be read at all.
    pub async fn load(topology: Topology) -> Result<Arc<Cluster>, TopoError> {
        let view = build_view(&topology).await?;
        let (changed, _) = watch::channel(0);
        Ok(Arc::new(Cluster {
            topology,
            view: ArcSwap::from_pointee(view),
            changed,
            generation: std::sync::atomic::AtomicU64::new(0),
            live: dashmap::DashMap::new(),
            streams: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }))
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn view(&self) -> arc_swap::Guard<Arc<ClusterView>> {
        self.view.load()
    }

    pub fn keyspace(&self, name: &str) -> Option<Arc<KeyspaceView>> {
        self.view.load().keyspaces.get(name).cloned()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The tablet serving `shard` of `keyspace` now: the serving tablet with the highest term
    /// per the tablets' own reports, else the topology's primary.
    pub fn primary(&self, keyspace: &str, shard: &str, hint: Option<&str>) -> Option<String> {
        let live = self
            .live
            .iter()
            .filter(|entry| {
                let t = entry.value();
                t.serving
                    && t.keyspace == keyspace
                    && t.shard == shard
                    && t.updated.elapsed() < LIVE_STATUS_TTL
            })
            .max_by_key(|entry| entry.value().term)
            .map(|entry| entry.key().clone());
        live.or_else(|| hint.map(str::to_string))
    }

    /// Ends the status streams (the gate is stopping).
    pub fn close(&self) {
        for (_, (_, handle)) in self.streams.lock().drain() {
            handle.abort();
        }
    }

    /// Keeps a status stream open to every tablet of the current view.
    pub async fn follow_tablets(self: Arc<Self>) {
        loop {
            let tablets: Vec<TabletRecord> = self.view.load().tablets.values().cloned().collect();
            {
                let mut streams = self.streams.lock();
                streams.retain(|id, (record, handle)| {
                    let keep = tablets.iter().any(|t| t == record);
                    if !keep {
                        handle.abort();
                        self.live.remove(id);
                        self.note_change();
                    }
                    keep
                });
                for tablet in tablets {
                    if !streams.contains_key(&tablet.id) {
                        let handle = tokio::spawn(self.clone().follow_tablet(tablet.clone()));
                        streams.insert(tablet.id.clone(), (tablet, handle));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn follow_tablet(self: Arc<Self>, tablet: TabletRecord) {
        use tessera_proto::tablet::WatchStatusRequest;
        use tessera_proto::tablet::tablet_client::TabletClient;
        let mut backoff = Duration::from_millis(100);
        loop {
            let address = format!("http://{}:{}", tablet.host, tablet.grpc_port);
            let connected = async {
                let channel = tonic::transport::Endpoint::from_shared(address)
                    .ok()?
                    .connect_timeout(Duration::from_secs(1))
                    .connect()
                    .await
                    .ok()?;
                let mut client = TabletClient::new(channel);
                client
                    .watch_status(WatchStatusRequest { interval_ms: 500 })
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            };
            if let Ok(Some(mut stream)) =
                tokio::time::timeout(Duration::from_secs(2), connected).await
            {
                backoff = Duration::from_millis(100);
                while let Ok(Ok(Some(status))) =
                    tokio::time::timeout(Duration::from_secs(3), stream.message()).await
                {
                    let previous = self.live.insert(
                        tablet.id.clone(),
                        LiveTablet {
                            keyspace: status.keyspace,
                            shard: status.shard,
                            serving: status.serving,
                            term: status.term,
                            updated: std::time::Instant::now(),
                        },
                    );
                    let changed = previous
                        .is_none_or(|p| p.serving != status.serving || p.term != status.term);
                    if changed {
                        // Wake buffered queries: a primary may have appeared.
                        self.note_change();
                    }
                }
            }
            if let Some(mut entry) = self.live.get_mut(&tablet.id)
                && entry.serving
            {
                entry.serving = false;
                drop(entry);
                self.note_change();
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Re-reads the topology now (after the gate itself changed it, e.g. DDL).
    pub async fn refresh(&self) -> Result<(), TopoError> {
        let view = build_view(&self.topology).await?;
        for problem in &view.problems {
            tracing::warn!(%problem, "topology problem");
        }
        self.view.store(Arc::new(view));
        self.note_change();
        Ok(())
    }

    /// Counts a change of what routing reads (the view or a tablet's serving state), waking
    /// buffered queries and invalidating sessions' cached connection sources.
    fn note_change(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Changes seen so far; equal values mean routing would resolve the same primaries, except
    /// for live statuses expiring by age (see [`crate::backend::SourceCache`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Follows topology changes until the process ends. On errors it keeps serving the last
    /// good view and retries, so a topology outage never stops queries.
    pub async fn follow(self: Arc<Self>) {
        loop {
            match self.topology.watch().await {
                Ok(mut stream) => loop {
                    match stream.next_event().await {
                        Some(Ok(_)) => {
                            // Coalesce bursts of events into one rebuild.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            if let Err(error) = self.refresh().await {
                                tracing::warn!(%error, "cannot refresh topology view; keeping the last one");
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "topology watch failed; re-watching");
                            break;
                        }
                        None => break,
                    }
                },
                Err(error) => tracing::warn!(%error, "cannot watch topology; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Builds the vschema of a keyspace record. `version` must grow with every change of the record.
pub fn vschema_from_record(record: &KeyspaceRecord, version: u64) -> (VSchema, Vec<String>) {
    let mut vschema = VSchema::new(record.name.clone(), record.sharding_column.clone());
    vschema.version = version;
    let mut problems = Vec::new();
    for (name, table) in &record.tables {
        let kind = match table.kind {
            RecordKind::Reference => TableKind::Reference,
            RecordKind::Sharded => {
                let column = table
                    .column
                    .clone()
                    .unwrap_or_else(|| record.sharding_column.clone());
                let type_name = table.column_type.as_deref().unwrap_or("bigint");
                match HashFamily::for_sql_type(type_name) {
                    Some(family) => TableKind::Sharded { column, family },
                    None => {
                        problems.push(format!(
                            "table {name}: sharding column type {type_name:?} has no hash vindex; table ignored"
                        ));
                        continue;
                    }
                }
            }
        };
        vschema.tables.insert(
            name.clone(),
            TableInfo {
                kind,
                columns: table.columns.clone(),
            },
        );
    }
    (vschema, problems)
}

async fn build_view(topology: &Topology) -> Result<ClusterView, TopoError> {
    let mut view = ClusterView::default();
    for (tablet, _) in topology.list_tablets(None).await? {
        view.tablets.insert(tablet.id.clone(), tablet);
    }
    for (keyspace, version) in topology.list_keyspaces().await? {
        let (vschema, problems) = vschema_from_record(&keyspace, version.get());
        view.problems.extend(problems);
        let mut serving = Vec::new();
        for (shard, _) in topology.list_shards(&keyspace.name).await? {
            if !shard.serving {
                continue;
            }
            match shard.name.parse::<KeyRange>() {
                Ok(range) => serving.push((shard, range)),
                Err(error) => view.problems.push(format!(
                    "keyspace {}: shard {}: {error}",
                    keyspace.name, shard.name
                )),
            }
        }
        serving.sort_by_key(|(_, range)| range.start);
        let ranges = serving
            .iter()
            .map(|(shard, range)| (shard.name.clone(), range.start, range.end))
            .collect();
        let shards = match ShardMap::new(ranges) {
            Ok(map) => map,
            Err(error) => {
                view.problems.push(format!(
                    "keyspace {}: serving shards do not partition the key space: {error}",
                    keyspace.name
                ));
                continue;
            }
        };
        let primaries = (0..shards.len())
            .map(|index| {
                let name = shards.name(index);
                serving
                    .iter()
                    .find(|(shard, _)| shard.name == name)
                    .and_then(|(shard, _)| shard.primary.clone())
            })
            .collect();
        view.keyspaces.insert(
            keyspace.name.clone(),
            Arc::new(KeyspaceView {
                vschema: Arc::new(vschema),
                shards: Arc::new(shards),
                primaries,
            }),
        );
    }
    Ok(view)
}
