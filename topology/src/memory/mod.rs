//! `MemoryTopo`: the in-process topology store. Volatile for tests and simulation
//! ([`MemoryTopo::new`]), or persisted to one JSON file as the embedded default of `tessera up`
//! ([`MemoryTopo::open`]).
//!
//! It mirrors etcd's model on purpose so that both backends pass one conformance suite: a
//! store-wide revision counter gives every change a version, watches are fed from a bounded
//! broadcast of changes (a consumer that falls behind gets a fresh snapshot, like an etcd watcher
//! hitting a compaction), and locks are leases that expire unless renewed.

mod file;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::error::TopoError;
use crate::store::{
    LockGuard, LockLease, TopoStore, Version, Versioned, WatchEvent, WatchSender, WatchStream,
    validate_key, validate_prefix, validate_ttl,
};
use file::StoreFile;

/// How many changes a watcher may trail the newest one before it is resynchronised with a
/// snapshot.
const CHANGE_BUFFER: usize = 1024;

/// The in-process topology store. Cloning shares the same store.
#[derive(Clone)]
pub struct MemoryTopo {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Every committed change, in commit order; watchers subscribe to it.
    changes: broadcast::Sender<Arc<Change>>,
    /// Woken whenever a lock is released, so that waiters retry at once.
    lock_released: Notify,
    /// Present for a persistent store.
    file: Option<StoreFile>,
    description: String,
}

struct State {
    /// Last version handed out.
    /// Invariant: never decreases, and is >= the version of every entry.
    revision: u64,
    entries: BTreeMap<String, Versioned>,
    /// Held locks by key. A lock whose `expires_at` has passed is free even while still listed.
    locks: HashMap<String, HeldLock>,
    /// Invariant: larger than every lease id handed out.
    next_lease_id: u64,
}

struct HeldLock {
    lease_id: u64,
    expires_at: Instant,
}

/// One committed change, as broadcast to watchers.
#[derive(Debug)]
struct Change {
    revision: u64,
    key: String,
    /// `None` for a delete.
    value: Option<Vec<u8>>,
}

impl MemoryTopo {
    /// A fresh, empty, volatile store.
    pub fn new() -> MemoryTopo {
        MemoryTopo::build(0, BTreeMap::new(), None, "memory".to_string())
    }

    /// Opens (or creates) the persistent store in the JSON file at `path`. Every mutation is on
    /// disk before it is acknowledged or visible. Fails with `Io` when another process has the
    /// file open, and with `Corrupt` when the file cannot be read back (it is left untouched).
    pub fn open(path: impl AsRef<Path>) -> Result<MemoryTopo, TopoError> {
        let path = path.as_ref();
        let (store_file, loaded) = StoreFile::open(path)?;
        tracing::info!(path = %path.display(), keys = loaded.entries.len(), revision = loaded.revision, "opened topology file");
        Ok(MemoryTopo::build(
            loaded.revision,
            loaded.entries,
            Some(store_file),
            format!("file://{}", path.display()),
        ))
    }

    fn build(
        revision: u64,
        entries: BTreeMap<String, Versioned>,
        file: Option<StoreFile>,
        description: String,
    ) -> MemoryTopo {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        MemoryTopo {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    revision,
                    entries,
                    locks: HashMap::new(),
                    next_lease_id: 1,
                }),
                changes,
                lock_released: Notify::new(),
                file,
                description,
            }),
        }
    }
}

impl Default for MemoryTopo {
    fn default() -> Self {
        MemoryTopo::new()
    }
}

impl std::fmt::Debug for MemoryTopo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MemoryTopo")
            .field("description", &self.shared.description)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Applies one change, makes it durable (persistent store), then publishes it.
    ///
    /// Runs entirely under the state mutex with no await point, so it is atomic and
    /// cancellation-safe. The fsync of the persistent store happens under that mutex on purpose:
    /// topology writes are rare, and durability-before-visibility is then trivially true.
    fn commit(
        &self,
        state: &mut State,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<Version, TopoError> {
        let revision = state.revision + 1;
        let previous = match &value {
            Some(value) => state.entries.insert(
                key.to_string(),
                Versioned {
                    value: value.clone(),
                    version: Version(revision),
                },
            ),
            None => state.entries.remove(key),
        };
        if let Some(file) = &self.file
            && let Err(error) = file.write(revision, &state.entries)
        {
            // Roll back so memory keeps matching the file; the caller sees the failure.
            match previous {
                Some(previous) => state.entries.insert(key.to_string(), previous),
                None => state.entries.remove(key),
            };
            tracing::error!(%key, %error, "persisting topology change failed");
            return Err(error);
        }
        state.revision = revision;
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(Arc::new(Change {
            revision,
            key: key.to_string(),
            value,
        }));
        Ok(Version(revision))
    }

    /// Subscribes to changes and lists `prefix` atomically: every change after the returned
    /// revision arrives on the receiver, none before it.
    fn subscribe(
        &self,
        prefix: &str,
    ) -> (
        Vec<(String, Versioned)>,
        u64,
        broadcast::Receiver<Arc<Change>>,
    ) {
        let state = self.state.lock();
        let receiver = self.changes.subscribe();
        (
            list_prefix(&state.entries, prefix),
            state.revision,
            receiver,
        )
    }
}

fn list_prefix(entries: &BTreeMap<String, Versioned>, prefix: &str) -> Vec<(String, Versioned)> {
    entries
        .range(prefix.to_string()..)
        .take_while(|(key, _)| key.starts_with(prefix))
        .map(|(key, versioned)| (key.clone(), versioned.clone()))
        .collect()
}

#[async_trait::async_trait]
impl TopoStore for MemoryTopo {
    async fn get(&self, key: &str) -> Result<Versioned, TopoError> {
        validate_key(key)?;
        let state = self.shared.state.lock();
        state
            .entries
            .get(key)
            .cloned()
            .ok_or_else(|| TopoError::NotFound {
                key: key.to_string(),
            })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Version, TopoError> {
        validate_key(key)?;
        let mut state = self.shared.state.lock();
        if state.entries.contains_key(key) {
            return Err(TopoError::AlreadyExists {
                key: key.to_string(),
            });
        }
        self.shared.commit(&mut state, key, Some(value))
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Version>,
    ) -> Result<Version, TopoError> {
        validate_key(key)?;
        let mut state = self.shared.state.lock();
        if let Some(expected) = expected {
            check_version(&state, key, expected)?;
        }
        self.shared.commit(&mut state, key, Some(value))
    }

    async fn delete(&self, key: &str, expected: Option<Version>) -> Result<(), TopoError> {
        validate_key(key)?;
        let mut state = self.shared.state.lock();
        match expected {
            Some(expected) => check_version(&state, key, expected)?,
            None if !state.entries.contains_key(key) => {
                return Err(TopoError::NotFound {
                    key: key.to_string(),
                });
            }
            None => {}
        }
        self.shared.commit(&mut state, key, None).map(|_| ())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, TopoError> {
        validate_prefix(prefix)?;
        let state = self.shared.state.lock();
        Ok(list_prefix(&state.entries, prefix))
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, TopoError> {
        validate_prefix(prefix)?;
        let (snapshot, revision, receiver) = self.shared.subscribe(prefix);
        let (sender, stream) = WatchStream::channel();
        let feeder = tokio::spawn(feed_watch(
            Arc::downgrade(&self.shared),
            prefix.to_string(),
            snapshot,
            revision,
            receiver,
            sender,
        ));
        Ok(stream.attach(feeder))
    }

    async fn lock(&self, key: &str, ttl: Duration) -> Result<LockGuard, TopoError> {
        validate_key(key)?;
        validate_ttl(ttl)?;
        loop {
            // Register for the wake-up before looking, so a release in between is not missed.
            let released = self.shared.lock_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let busy_until = {
                let mut state = self.shared.state.lock();
                let now = Instant::now();
                match state.locks.get(key) {
                    Some(held) if held.expires_at > now => held.expires_at,
                    _ => {
                        let lease_id = state.next_lease_id;
                        state.next_lease_id += 1;
                        state.locks.insert(
                            key.to_string(),
                            HeldLock {
                                lease_id,
                                expires_at: now + ttl,
                            },
                        );
                        let lease = MemoryLease {
                            shared: Arc::downgrade(&self.shared),
                            key: key.to_string(),
                            lease_id,
                            ttl,
                        };
                        return Ok(LockGuard::new(key, ttl, Arc::new(lease)));
                    }
                }
            };
            tokio::select! {
                () = &mut released => {}
                () = tokio::time::sleep_until(busy_until) => {}
            }
        }
    }

    fn describe(&self) -> String {
        self.shared.description.clone()
    }
}

fn check_version(state: &State, key: &str, expected: Version) -> Result<(), TopoError> {
    match state.entries.get(key) {
        None => Err(TopoError::NotFound {
            key: key.to_string(),
        }),
        Some(current) if current.version != expected => Err(TopoError::BadVersion {
            key: key.to_string(),
            expected,
            actual: current.version,
        }),
        Some(_) => Ok(()),
    }
}

/// Sends the snapshot, then every change under `prefix` after `revision`. Resynchronises with a
/// fresh snapshot when it fell more than [`CHANGE_BUFFER`] changes behind.
async fn feed_watch(
    shared: Weak<Shared>,
    prefix: String,
    mut snapshot: Vec<(String, Versioned)>,
    mut revision: u64,
    mut receiver: broadcast::Receiver<Arc<Change>>,
    sender: WatchSender,
) {
    loop {
        if sender
            .send(WatchEvent::Snapshot(std::mem::take(&mut snapshot)))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let change = match receiver.recv().await {
                Ok(change) => change,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(%prefix, missed, "topology watcher fell behind; resending a snapshot");
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    sender
                        .fail(TopoError::Closed {
                            reason: "the in-memory topology store was dropped".to_string(),
                        })
                        .await;
                    return;
                }
            };
            if change.revision <= revision || !change.key.starts_with(&prefix) {
                continue;
            }
            revision = change.revision;
            let event = match &change.value {
                Some(value) => WatchEvent::Put {
                    key: change.key.clone(),
                    value: value.clone(),
                    version: Version(change.revision),
                },
                None => WatchEvent::Delete {
                    key: change.key.clone(),
                },
            };
            if sender.send(event).await.is_err() {
                return;
            }
        }
        let Some(shared) = shared.upgrade() else {
            sender
                .fail(TopoError::Closed {
                    reason: "the in-memory topology store was dropped".to_string(),
                })
                .await;
            return;
        };
        (snapshot, revision, receiver) = shared.subscribe(&prefix);
    }
}

/// A lock lease in a [`MemoryTopo`]. Expiry is evaluated lazily against `expires_at`.
struct MemoryLease {
    shared: Weak<Shared>,
    key: String,
    lease_id: u64,
    ttl: Duration,
}

impl MemoryLease {
    fn lost(&self, reason: &str) -> TopoError {
        TopoError::LockLost {
            key: self.key.clone(),
            reason: reason.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl LockLease for MemoryLease {
    async fn keep_alive(&self) -> Result<(), TopoError> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| self.lost("store dropped"))?;
        let mut state = shared.state.lock();
        let now = Instant::now();
        match state.locks.get_mut(&self.key) {
            Some(held) if held.lease_id == self.lease_id && held.expires_at > now => {
                held.expires_at = now + self.ttl;
                Ok(())
            }
            _ => Err(self.lost("lease expired")),
        }
    }

    async fn release(&self) -> Result<(), TopoError> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let mut state = shared.state.lock();
        if state
            .locks
            .get(&self.key)
            .is_some_and(|held| held.lease_id == self.lease_id)
        {
            state.locks.remove(&self.key);
            drop(state);
            shared.lock_released.notify_waiters();
        }
        Ok(())
    }
}
