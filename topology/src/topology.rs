//! `Topology`: the typed facade every component uses instead of raw keys and bytes.
//!
//! It knows the key layout (through [`crate::paths`]) and the record formats (through
//! [`crate::records`]), and it turns compare-and-set into a read-modify-write loop so callers
//! describe *what* to change and never lose a concurrent writer's change.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::TopoError;
use crate::paths::{self, KeyKind};
use crate::records::{self, KeyspaceRecord, ShardRecord, TabletRecord, check_identity};
use crate::store::{LockGuard, TopoStore, Version, WatchStream};

/// How often a read-modify-write retries after losing a compare-and-set race before it reports
/// `TooManyConflicts`. Every lost race means another writer made progress, so this only trips
/// under pathological contention.
pub const MAX_UPDATE_ATTEMPTS: u32 = 32;

/// Typed access to the topology through any [`TopoStore`]. Cheap to clone.
#[derive(Clone)]
pub struct Topology {
    store: Arc<dyn TopoStore>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Topology")
            .field("store", &self.store.describe())
            .finish()
    }
}

impl Topology {
    pub fn new(store: Arc<dyn TopoStore>) -> Topology {
        Topology { store }
    }

    /// The underlying store, for raw access (e.g. serving it over gRPC).
    pub fn store(&self) -> &Arc<dyn TopoStore> {
        &self.store
    }

    // ---- keyspaces ----

    /// Creates a keyspace; `AlreadyExists` when it exists.
    pub async fn create_keyspace(&self, record: &KeyspaceRecord) -> Result<Version, TopoError> {
        let key = paths::keyspace(&record.name)?;
        if record.sharding_column.is_empty() {
            return Err(TopoError::InvalidArgument {
                reason: format!(
                    "keyspace {}: sharding column must not be empty",
                    record.name
                ),
            });
        }
        self.store
            .create(&key, records::encode(&key, record)?)
            .await
    }

    pub async fn get_keyspace(&self, name: &str) -> Result<(KeyspaceRecord, Version), TopoError> {
        let key = paths::keyspace(name)?;
        self.read(&key, |record: &KeyspaceRecord| {
            check_identity(&key, "name", &record.name, name)
        })
        .await
    }

    /// Every keyspace, sorted by name. Fails with `Corrupt` naming the first bad record.
    pub async fn list_keyspaces(&self) -> Result<Vec<(KeyspaceRecord, Version)>, TopoError> {
        let mut keyspaces = Vec::new();
        for (key, versioned) in self.store.list(paths::KEYSPACES).await? {
            // The prefix also returns shard keys (and anything unknown); keep keyspaces only.
            if let KeyKind::Keyspace { keyspace } = paths::classify(&key) {
                let record: KeyspaceRecord = records::decode(&key, &versioned.value)?;
                check_identity(&key, "name", &record.name, &keyspace)?;
                keyspaces.push((record, versioned.version));
            }
        }
        Ok(keyspaces)
    }

    /// Read-modify-write of a keyspace with compare-and-set, retried on conflict. `update` may
    /// run several times and must not rename the keyspace; its error aborts the update. Nothing
    /// is written when `update` leaves the record unchanged.
    pub async fn update_keyspace<F, E>(
        &self,
        name: &str,
        update: F,
    ) -> Result<(KeyspaceRecord, Version), E>
    where
        F: FnMut(&mut KeyspaceRecord) -> Result<(), E>,
        E: From<TopoError>,
    {
        let key = paths::keyspace(name)?;
        self.read_modify_write(
            &key,
            |record: &KeyspaceRecord| check_identity(&key, "name", &record.name, name),
            update,
        )
        .await
    }

    /// Deletes a keyspace that has no shards left.
    pub async fn delete_keyspace(&self, name: &str) -> Result<(), TopoError> {
        let key = paths::keyspace(name)?;
        let shards = self.store.list(&paths::shards_prefix(name)?).await?;
        if !shards.is_empty() {
            return Err(TopoError::InvalidArgument {
                reason: format!(
                    "keyspace {name} still has {} shard(s); delete them first",
                    shards.len()
                ),
            });
        }
        self.store.delete(&key, None).await
    }

    // ---- shards ----

    /// Creates a shard of an existing keyspace (`NotFound` for the keyspace key otherwise).
    pub async fn create_shard(&self, record: &ShardRecord) -> Result<Version, TopoError> {
        let key = paths::shard(&record.keyspace, &record.name)?;
        self.store.get(&paths::keyspace(&record.keyspace)?).await?;
        self.store
            .create(&key, records::encode(&key, record)?)
            .await
    }

    pub async fn get_shard(
        &self,
        keyspace: &str,
        shard: &str,
    ) -> Result<(ShardRecord, Version), TopoError> {
        let key = paths::shard(keyspace, shard)?;
        self.read(&key, |record: &ShardRecord| {
            check_shard_identity(&key, record, keyspace, shard)
        })
        .await
    }

    /// The shards of one keyspace, sorted by name.
    pub async fn list_shards(
        &self,
        keyspace: &str,
    ) -> Result<Vec<(ShardRecord, Version)>, TopoError> {
        let mut shards = Vec::new();
        for (key, versioned) in self.store.list(&paths::shards_prefix(keyspace)?).await? {
            if let KeyKind::Shard { keyspace, shard } = paths::classify(&key) {
                let record: ShardRecord = records::decode(&key, &versioned.value)?;
                check_shard_identity(&key, &record, &keyspace, &shard)?;
                shards.push((record, versioned.version));
            }
        }
        Ok(shards)
    }

    /// Read-modify-write of a shard, like [`Topology::update_keyspace`].
    pub async fn update_shard<F, E>(
        &self,
        keyspace: &str,
        shard: &str,
        update: F,
    ) -> Result<(ShardRecord, Version), E>
    where
        F: FnMut(&mut ShardRecord) -> Result<(), E>,
        E: From<TopoError>,
    {
        let key = paths::shard(keyspace, shard)?;
        self.read_modify_write(
            &key,
            |record: &ShardRecord| check_shard_identity(&key, record, keyspace, shard),
            update,
        )
        .await
    }

    pub async fn delete_shard(&self, keyspace: &str, shard: &str) -> Result<(), TopoError> {
        self.store
            .delete(&paths::shard(keyspace, shard)?, None)
            .await
    }

    // ---- tablets ----

    /// Registers (creates or overwrites) a tablet; tablets call this at every start.
    pub async fn register_tablet(&self, record: &TabletRecord) -> Result<Version, TopoError> {
        let key = paths::tablet(&record.zone, &record.id)?;
        paths::validate_name("keyspace", &record.keyspace)?;
        paths::validate_name("shard", &record.shard)?;
        self.store
            .update(&key, records::encode(&key, record)?, None)
            .await
    }

    pub async fn get_tablet(
        &self,
        zone: &str,
        id: &str,
    ) -> Result<(TabletRecord, Version), TopoError> {
        let key = paths::tablet(zone, id)?;
        self.read(&key, |record: &TabletRecord| {
            check_tablet_identity(&key, record, zone, id)
        })
        .await
    }

    /// Removes a tablet's registration; `Ok(false)` when it was not registered.
    pub async fn remove_tablet(&self, zone: &str, id: &str) -> Result<bool, TopoError> {
        match self.store.delete(&paths::tablet(zone, id)?, None).await {
            Ok(()) => Ok(true),
            Err(TopoError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Tablets of one zone, or of all zones with `None`; sorted by zone, then id.
    pub async fn list_tablets(
        &self,
        zone: Option<&str>,
    ) -> Result<Vec<(TabletRecord, Version)>, TopoError> {
        let prefix = match zone {
            Some(zone) => paths::tablets_prefix(zone)?,
            None => paths::CELLS.to_string(),
        };
        let mut tablets = Vec::new();
        for (key, versioned) in self.store.list(&prefix).await? {
            if let KeyKind::Tablet { zone, id } = paths::classify(&key) {
                let record: TabletRecord = records::decode(&key, &versioned.value)?;
                check_tablet_identity(&key, &record, &zone, &id)?;
                tablets.push((record, versioned.version));
            }
        }
        Ok(tablets)
    }

    // ---- watching and locking ----

    /// Watches all of `/tessera/`. Caches rebuild on every `Snapshot` and classify the keys of
    /// `Put`/`Delete` with [`paths::classify`] (ignoring `Lock` and `Unknown`), decoding values
    /// with [`records::decode`].
    pub async fn watch(&self) -> Result<WatchStream, TopoError> {
        self.store.watch(paths::ROOT).await
    }

    /// Takes the shard's lock (contention reduction for coordinators; never a safety mechanism).
    pub async fn lock_shard(
        &self,
        keyspace: &str,
        shard: &str,
        ttl: Duration,
    ) -> Result<LockGuard, TopoError> {
        self.store
            .lock(&paths::shard_lock(keyspace, shard)?, ttl)
            .await
    }

    /// Takes the keyspace's lock (for admin operations such as resharding).
    pub async fn lock_keyspace(
        &self,
        keyspace: &str,
        ttl: Duration,
    ) -> Result<LockGuard, TopoError> {
        self.store.lock(&paths::keyspace_lock(keyspace)?, ttl).await
    }

    // ---- helpers ----

    async fn read<T, C>(&self, key: &str, check: C) -> Result<(T, Version), TopoError>
    where
        T: DeserializeOwned,
        C: Fn(&T) -> Result<(), TopoError>,
    {
        let versioned = self.store.get(key).await?;
        let record: T = records::decode(key, &versioned.value)?;
        check(&record)?;
        Ok((record, versioned.version))
    }

    async fn read_modify_write<T, C, F, E>(
        &self,
        key: &str,
        check: C,
        mut update: F,
    ) -> Result<(T, Version), E>
    where
        T: DeserializeOwned + Serialize + Clone + PartialEq,
        C: Fn(&T) -> Result<(), TopoError>,
        F: FnMut(&mut T) -> Result<(), E>,
        E: From<TopoError>,
    {
        for attempt in 1..=MAX_UPDATE_ATTEMPTS {
            let (mut record, version) = self.read(key, &check).await?;
            let original = record.clone();
            update(&mut record)?;
            if record == original {
                return Ok((record, version));
            }
            check(&record).map_err(|_| TopoError::InvalidArgument {
                reason: format!("an update of {key} must not change the record's identity"),
            })?;
            let value = records::encode(key, &record)?;
            match self.store.update(key, value, Some(version)).await {
                Ok(version) => return Ok((record, version)),
                Err(TopoError::BadVersion { .. }) => {
                    tracing::debug!(%key, attempt, "topology update lost a race; retrying");
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(10)) * 2)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(TopoError::TooManyConflicts {
            key: key.to_string(),
            attempts: MAX_UPDATE_ATTEMPTS,
        }
        .into())
    }
}

fn check_shard_identity(
    key: &str,
    record: &ShardRecord,
    keyspace: &str,
    shard: &str,
) -> Result<(), TopoError> {
    check_identity(key, "keyspace", &record.keyspace, keyspace)?;
    check_identity(key, "name", &record.name, shard)
}

fn check_tablet_identity(
    key: &str,
    record: &TabletRecord,
    zone: &str,
    id: &str,
) -> Result<(), TopoError> {
    check_identity(key, "zone", &record.zone, zone)?;
    check_identity(key, "id", &record.id, id)
}
