//! Observation: a status stream from every tablet of the cluster, and the topology records,
//! kept current in memory. Analysis reads snapshots of it; nothing here decides anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tessera_proto::tablet::{TabletStatus, WatchStatusRequest};
use tessera_topology::Topology;
use tessera_topology::records::{ShardRecord, TabletRecord};
use tokio::task::JoinHandle;

use crate::analysis::{ShardView, TabletView};
use crate::client::Clients;

/// Interval the tablets are asked to report at even without changes.
const STREAM_INTERVAL_MS: u32 = 250;

struct Observed {
    status: Option<TabletStatus>,
    updated: Instant,
    connected: bool,
}

/// The live picture of the cluster.
pub struct Observer {
    topology: Topology,
    clients: Arc<Clients>,
    /// A tablet whose last status is older than this is unreachable.
    unreachable_after: Duration,
    statuses: Arc<DashMap<String, Observed>>,
    streams: parking_lot::Mutex<HashMap<String, (TabletRecord, JoinHandle<()>)>>,
    /// Last topology read (kept while the topology is unavailable).
    records: parking_lot::RwLock<(Vec<ShardRecord>, Vec<TabletRecord>)>,
    /// When the topology last answered.
    topology_seen: parking_lot::Mutex<Option<Instant>>,
}

impl Observer {
    pub fn new(
        topology: Topology,
        clients: Arc<Clients>,
        unreachable_after: Duration,
    ) -> Arc<Observer> {
        Arc::new(Observer {
            topology,
            clients,
            unreachable_after,
            statuses: Arc::new(DashMap::new()),
            streams: parking_lot::Mutex::new(HashMap::new()),
            records: parking_lot::RwLock::new((Vec::new(), Vec::new())),
            topology_seen: parking_lot::Mutex::new(None),
        })
    }

    /// Re-reads the topology and makes sure every tablet has a status stream. A topology that
    /// cannot be read leaves everything as it was (failover keeps working from tablet state).
    pub async fn refresh(&self) {
        let tablets = match self.topology.list_tablets(None).await {
            Ok(tablets) => tablets.into_iter().map(|(t, _)| t).collect::<Vec<_>>(),
            Err(error) => {
                tracing::debug!(%error, "topology unavailable; observing the last known tablets");
                return;
            }
        };
        let mut shards = Vec::new();
        match self.topology.list_keyspaces().await {
            Ok(keyspaces) => {
                for (keyspace, _) in keyspaces {
                    match self.topology.list_shards(&keyspace.name).await {
                        Ok(list) => shards.extend(list.into_iter().map(|(s, _)| s)),
                        Err(_) => return,
                    }
                }
            }
            Err(_) => return,
        }
        {
            let mut streams = self.streams.lock();
            streams.retain(|id, (record, handle)| {
                let keep = tablets.iter().any(|t| t == record);
                if !keep {
                    handle.abort();
                    self.statuses.remove(id);
                    self.clients.forget(record);
                }
                keep
            });
            for tablet in &tablets {
                if !streams.contains_key(&tablet.id) {
                    let handle = tokio::spawn(follow(
                        tablet.clone(),
                        self.clients.clone(),
                        self.statuses.clone(),
                    ));
                    streams.insert(tablet.id.clone(), (tablet.clone(), handle));
                }
            }
        }
        *self.records.write() = (shards, tablets);
        *self.topology_seen.lock() = Some(Instant::now());
    }

    /// Whether the topology answered recently. When it does not, recoveries go ahead without
    /// the shard lock (which is only a contention reducer; terms keep them safe).
    pub fn topology_available(&self) -> bool {
        self.topology_seen
            .lock()
            .is_some_and(|seen| seen.elapsed() < Duration::from_secs(3))
    }

    /// Every shard with its tablets as seen now.
    pub fn shards(&self) -> Vec<(String, ShardView)> {
        let (shards, tablets) = self.records.read().clone();
        shards
            .into_iter()
            .map(|shard| {
                let members = tablets
                    .iter()
                    .filter(|t| t.keyspace == shard.keyspace && t.shard == shard.name)
                    .map(|record| self.tablet_view(record))
                    .collect();
                (
                    shard.keyspace.clone(),
                    ShardView {
                        record: shard,
                        tablets: members,
                    },
                )
            })
            .collect()
    }

    fn tablet_view(&self, record: &TabletRecord) -> TabletView {
        match self.statuses.get(&record.id) {
            Some(observed) => TabletView {
                record: record.clone(),
                status: observed.status.clone(),
                reachable: observed.connected
                    && observed.updated.elapsed() < self.unreachable_after,
            },
            None => TabletView {
                record: record.clone(),
                status: None,
                reachable: false,
            },
        }
    }

    /// Ends every status stream (the coordinator is stopping).
    pub fn close(&self) {
        for (_, (_, handle)) in self.streams.lock().drain() {
            handle.abort();
        }
    }

    /// Waits, at most `limit`, until every tablet of the shard with an open status stream has
    /// reported after `since`. A coordinator that got the shard lock only when another one let
    /// go of it must not act on statuses from before that coordinator's change.
    pub async fn await_reports_since(
        &self,
        keyspace: &str,
        shard: &str,
        since: Instant,
        limit: Duration,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let stale = {
                let records = self.records.read();
                records
                    .1
                    .iter()
                    .filter(|t| t.keyspace == keyspace && t.shard == shard)
                    .any(|t| {
                        self.statuses
                            .get(&t.id)
                            .is_some_and(|o| o.connected && o.updated < since)
                    })
            };
            if !stale || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Records a shard's new primary locally at once (the topology may be slow or down).
    pub fn note_primary(&self, keyspace: &str, shard: &str, primary: &str, term: u64) {
        let mut records = self.records.write();
        if let Some(record) = records
            .0
            .iter_mut()
            .find(|s| s.keyspace == keyspace && s.name == shard)
        {
            record.primary = Some(primary.to_string());
            record.term = record.term.max(term);
        }
    }
}

/// Keeps one tablet's status stream open, reconnecting with backoff.
async fn follow(
    tablet: TabletRecord,
    clients: Arc<Clients>,
    statuses: Arc<DashMap<String, Observed>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let stream = match clients.get(&tablet) {
            Ok(mut client) => {
                let request = WatchStatusRequest {
                    interval_ms: STREAM_INTERVAL_MS,
                };
                tokio::time::timeout(Duration::from_secs(2), client.watch_status(request)).await
            }
            Err(error) => {
                tracing::warn!(tablet = %tablet.id, %error, "invalid tablet address");
                return;
            }
        };
        if let Ok(Ok(response)) = stream {
            backoff = Duration::from_millis(100);
            let mut stream = response.into_inner();
            // A stream that goes silent (hung tablet) counts as broken.
            while let Ok(Ok(Some(status))) =
                tokio::time::timeout(Duration::from_secs(3), stream.message()).await
            {
                statuses.insert(
                    tablet.id.clone(),
                    Observed {
                        status: Some(status),
                        updated: Instant::now(),
                        connected: true,
                    },
                );
            }
        }
        if let Some(mut observed) = statuses.get_mut(&tablet.id) {
            observed.connected = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
