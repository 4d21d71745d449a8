//! The `TopoStore` trait every backend implements, and the value types it speaks: versions,
//! watch events and streams, and lease-based lock guards.
//!
//! The trait is deliberately small (Vitess' `topo.Conn` is the model): get / create /
//! compare-and-set update / delete / list / watch a prefix / lock. Everything typed lives in
//! [`crate::Topology`] on top of it, so a new backend only has to get these semantics right — and
//! the conformance suite in `tests/` checks exactly these semantics against every backend.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::TopoError;

/// How many watch events may wait for a slow consumer before the backend stops reading. The
/// backends then fall behind and recover with a fresh snapshot instead of buffering without bound.
pub const WATCH_CHANNEL_CAPACITY: usize = 256;

/// Longest key the stores accept. etcd's own limit is far larger; topology keys are short paths,
/// so anything longer is a bug in the caller.
pub const MAX_KEY_BYTES: usize = 1024;

/// The version of one key. It increases on every change of that key (create, update, and a
/// re-create after delete), and for the etcd backend it is the key's `mod_revision`. The backends
/// draw versions from one store-wide counter, so versions of different keys are comparable too:
/// a larger version was committed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

impl From<u64> for Version {
    fn from(value: u64) -> Self {
        Version(value)
    }
}

/// A stored value together with the version it was read at (the input of a compare-and-set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: Version,
}

/// One item of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Every key under the watched prefix, sorted by key. Always the first event; sent again
    /// whenever the backend had to re-list (compaction, a consumer that fell too far behind).
    /// Consumers replace their whole view with it.
    Snapshot(Vec<(String, Versioned)>),
    /// The key was created or changed.
    Put {
        key: String,
        value: Vec<u8>,
        version: Version,
    },
    /// The key was deleted.
    Delete { key: String },
}

/// The stream a watch delivers: a bounded channel fed by a background task of the backend.
///
/// Items are `Ok(event)` in commit order. An `Err` item is terminal: the backend is gone for good
/// (e.g. the store was closed) and the stream ends right after it. Transient trouble (etcd
/// restarting, a dropped connection) never ends the stream: the backend reconnects and resumes,
/// or re-lists and sends a fresh [`WatchEvent::Snapshot`]. Dropping the stream stops the task.
pub struct WatchStream {
    receiver: mpsc::Receiver<Result<WatchEvent, TopoError>>,
    /// The task feeding `receiver`; aborted when the stream is dropped.
    feeder: Option<JoinHandle<()>>,
}

impl WatchStream {
    /// A connected sender/stream pair; the backend moves the sender into its feeding task and
    /// hands that task to [`WatchStream::attach`].
    pub fn channel() -> (WatchSender, WatchStream) {
        let (sender, receiver) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        (
            WatchSender { sender },
            WatchStream {
                receiver,
                feeder: None,
            },
        )
    }

    /// Ties the lifetime of the feeding task to this stream.
    pub fn attach(mut self, feeder: JoinHandle<()>) -> Self {
        self.feeder = Some(feeder);
        self
    }

    /// The next event; `None` once the stream has ended (always after an `Err` item).
    pub async fn next_event(&mut self) -> Option<Result<WatchEvent, TopoError>> {
        self.receiver.recv().await
    }
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("WatchStream")
            .finish_non_exhaustive()
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchEvent, TopoError>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(context)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if let Some(feeder) = self.feeder.take() {
            feeder.abort();
        }
    }
}

/// The backend's end of a [`WatchStream`].
#[derive(Debug, Clone)]
pub struct WatchSender {
    sender: mpsc::Sender<Result<WatchEvent, TopoError>>,
}

/// The consumer dropped its [`WatchStream`]; the feeding task should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerGone;

impl WatchSender {
    /// Delivers one event, waiting while the consumer's buffer is full.
    pub async fn send(&self, event: WatchEvent) -> Result<(), ConsumerGone> {
        self.sender.send(Ok(event)).await.map_err(|_| ConsumerGone)
    }

    /// Delivers the terminal error item. The caller must stop feeding afterwards.
    pub async fn fail(&self, error: TopoError) {
        // If the consumer is already gone there is nobody left to tell.
        let _ = self.sender.send(Err(error)).await;
    }

    /// True once the consumer dropped the stream.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Resolves when the consumer drops the stream, so idle feeders can stop promptly.
    pub async fn closed(&self) {
        self.sender.closed().await
    }
}

/// The backend half of a held lock: a lease that must be renewed within its TTL.
///
/// [`LockGuard`] drives it (renewal task, release on drop). The gRPC server drives it directly,
/// renewing only when its remote client asks, so that a dead client's lock expires.
#[async_trait::async_trait]
pub trait LockLease: Send + Sync + 'static {
    /// Extends the lease by its TTL. `Err(TopoError::LockLost)` once it has expired or was
    /// revoked; other errors are transient.
    async fn keep_alive(&self) -> Result<(), TopoError>;

    /// Gives the lock up now. Releasing a lease that already expired is not an error.
    async fn release(&self) -> Result<(), TopoError>;
}

/// An exclusive, lease-based lock held by this process.
///
/// A background task renews the lease every third of its TTL. The lock is released by
/// [`LockGuard::release`], by dropping the guard (best effort, in the background), or — if this
/// process dies or stops renewing — by the lease expiring in the backend. Locks only reduce
/// contention between agents; safety must never depend on them (a paused holder can lose its
/// lease without noticing in time), see ARCHITECTURE.md section 5.
pub struct LockGuard {
    key: String,
    ttl: Duration,
    lease: Arc<dyn LockLease>,
    /// Turns true (and stays true) when the renewal task finds the lease gone.
    lost: watch::Receiver<bool>,
    renewal: Option<JoinHandle<()>>,
    /// Invariant: true once the lease was released or handed away; `Drop` then does nothing.
    finished: bool,
}

impl LockGuard {
    /// Wraps a freshly acquired lease and starts renewing it. Must be called inside a Tokio
    /// runtime.
    pub fn new(key: impl Into<String>, ttl: Duration, lease: Arc<dyn LockLease>) -> LockGuard {
        let key = key.into();
        let (lost_sender, lost) = watch::channel(false);
        let renewal = tokio::spawn(renew_lease(key.clone(), ttl, lease.clone(), lost_sender));
        LockGuard {
            key,
            ttl,
            lease,
            lost,
            renewal: Some(renewal),
            finished: false,
        }
    }

    /// The locked key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease TTL the lock was taken with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// True when the lease could not be renewed in time: another agent may hold the lock now.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lock is lost (never, while it is held). Holders doing long work under
    /// the lock can `select!` on it.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the renewal task ended without declaring the lease lost (it was
        // released or handed away), so there is nothing to wait for.
        if lost.wait_for(|lost| *lost).await.is_err() {
            futures::future::pending::<()>().await;
        }
    }

    /// Releases the lock now and reports whether the backend confirmed it.
    pub async fn release(mut self) -> Result<(), TopoError> {
        self.stop_renewal();
        self.finished = true;
        self.lease.release().await
    }

    /// Stops renewing the lease *without* releasing it, as if this process had died: the lock
    /// stays held until its TTL runs out. For crash simulations in tests.
    pub fn abandon(mut self) {
        self.stop_renewal();
        self.finished = true;
    }

    /// Stops the renewal task and hands the raw lease to the caller, who takes over renewing or
    /// releasing it (the gRPC server does, on behalf of a remote client).
    pub fn into_lease(mut self) -> Arc<dyn LockLease> {
        self.stop_renewal();
        self.finished = true;
        self.lease.clone()
    }

    fn stop_renewal(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("LockGuard")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_renewal();
        if self.finished {
            return;
        }
        // Without a runtime we cannot talk to the backend; the lease then simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lease = self.lease.clone();
            let key = self.key.clone();
            runtime.spawn(async move {
                if let Err(error) = lease.release().await {
                    tracing::warn!(%key, %error, "releasing dropped lock failed; it expires with its lease");
                }
            });
        }
    }
}

/// Renews `lease` every third of `ttl`. Transient failures are retried quickly; once the lease is
/// known gone, or a whole TTL passed without a successful renewal, the lock is declared lost.
async fn renew_lease(
    key: String,
    ttl: Duration,
    lease: Arc<dyn LockLease>,
    lost: watch::Sender<bool>,
) {
    let interval = (ttl / 3).max(Duration::from_millis(10));
    let retry_interval = (ttl / 10).max(Duration::from_millis(10));
    let mut last_renewal = tokio::time::Instant::now();
    let mut next_attempt = interval;
    loop {
        tokio::time::sleep(next_attempt).await;
        let outcome = tokio::time::timeout(interval, lease.keep_alive()).await;
        match outcome {
            Ok(Ok(())) => {
                last_renewal = tokio::time::Instant::now();
                next_attempt = interval;
                continue;
            }
            Ok(Err(TopoError::LockLost { reason, .. })) => {
                tracing::warn!(%key, %reason, "lock lease lost");
                let _ = lost.send(true);
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(%key, %error, "renewing lock lease failed; retrying");
            }
            Err(_elapsed) => {
                tracing::warn!(%key, "renewing lock lease timed out; retrying");
            }
        }
        if last_renewal.elapsed() >= ttl {
            tracing::warn!(%key, ttl_ms = ttl.as_millis() as u64, "lock lease not renewed within its ttl; treating the lock as lost");
            let _ = lost.send(true);
            return;
        }
        next_attempt = retry_interval;
    }
}

/// A topology store: a small, strongly consistent key-value store with versions, prefix
/// watches and leased locks. Keys are absolute paths (`/tessera/...`, see [`crate::paths`]);
/// values are opaque bytes (JSON records, see [`crate::records`]).
///
/// Object safe: components hold an `Arc<dyn TopoStore>` chosen by [`crate::connect`].
#[async_trait::async_trait]
pub trait TopoStore: Send + Sync + 'static {
    /// The value and version of `key`; `NotFound` when absent.
    async fn get(&self, key: &str) -> Result<Versioned, TopoError>;

    /// Creates `key`; `AlreadyExists` when it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Version, TopoError>;

    /// With `Some(version)`: compare-and-set, failing with `BadVersion` when the key is at
    /// another version and `NotFound` when it is absent. With `None`: unconditional upsert.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Version>,
    ) -> Result<Version, TopoError>;

    /// Deletes `key` (only at `expected` when given); `NotFound` when absent.
    async fn delete(&self, key: &str, expected: Option<Version>) -> Result<(), TopoError>;

    /// Every key starting with `prefix`, sorted by key. A prefix is matched byte-wise, so pass
    /// a trailing `/` to list the children of a directory-like path only.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, TopoError>;

    /// Watches every key starting with `prefix`; see [`WatchStream`] for the guarantees.
    async fn watch(&self, prefix: &str) -> Result<WatchStream, TopoError>;

    /// Waits until this caller holds the exclusive lock named `key`, held under a lease of `ttl`
    /// (etcd rounds it up to whole seconds). Wrap the call in a timeout to bound the wait;
    /// cancelling it never leaves the lock held for longer than one TTL.
    async fn lock(&self, key: &str, ttl: Duration) -> Result<LockGuard, TopoError>;

    /// A short, secret-free description for logs, e.g. `etcd://127.0.0.1:2379/prefix`.
    fn describe(&self) -> String;
}

/// Checks the shape every key must have: absolute, no empty segment, no trailing slash, no
/// control characters, bounded length.
pub fn validate_key(key: &str) -> Result<(), TopoError> {
    let invalid = |reason: &str| TopoError::InvalidKey {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    if !key.starts_with('/') {
        return Err(invalid("must start with '/'"));
    }
    if key.len() == 1 || key.ends_with('/') {
        return Err(invalid("must name a key, not end with '/'"));
    }
    validate_common(key).map_err(|reason| invalid(&reason))
}

/// Checks a list/watch prefix: absolute, no empty segment, no control characters. `/` alone
/// means everything.
pub fn validate_prefix(prefix: &str) -> Result<(), TopoError> {
    if !prefix.starts_with('/') {
        return Err(TopoError::InvalidKey {
            key: prefix.to_string(),
            reason: "prefix must start with '/'".to_string(),
        });
    }
    validate_common(prefix).map_err(|reason| TopoError::InvalidKey {
        key: prefix.to_string(),
        reason,
    })
}

fn validate_common(path: &str) -> Result<(), String> {
    if path.len() > MAX_KEY_BYTES {
        return Err(format!("longer than {MAX_KEY_BYTES} bytes"));
    }
    if path.contains("//") {
        return Err("contains an empty path segment".to_string());
    }
    if path.chars().any(char::is_control) {
        return Err("contains a control character".to_string());
    }
    Ok(())
}

/// Checks a lock TTL: positive and at most one day (a longer one is certainly a unit mistake).
pub(crate) fn validate_ttl(ttl: Duration) -> Result<(), TopoError> {
    if ttl.is_zero() {
        return Err(TopoError::InvalidArgument {
            reason: "lock ttl must be positive".to_string(),
        });
    }
    if ttl > Duration::from_secs(24 * 3600) {
        return Err(TopoError::InvalidArgument {
            reason: format!("lock ttl {ttl:?} is longer than one day"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: malformed keys and prefixes are rejected with InvalidKey, well-formed ones pass.
    #[test]
    fn key_and_prefix_validation() {
        for good in [
            "/a",
            "/tessera/keyspaces/app",
            "/tessera/cells/zone1/tablets/zone1-101",
        ] {
            assert_eq!(validate_key(good), Ok(()), "{good}");
        }
        for bad in ["", "a", "/", "/a/", "//a", "/a//b", "/a\nb"] {
            assert!(
                matches!(validate_key(bad), Err(TopoError::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(validate_key(&format!("/{}", "x".repeat(MAX_KEY_BYTES))).is_err());
        for good in ["/", "/tessera/", "/tessera/keyspaces/app"] {
            assert_eq!(validate_prefix(good), Ok(()), "{good}");
        }
        for bad in ["", "tessera/", "//", "/a\0"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Goal: a zero or absurd TTL is refused instead of creating a lock that can never be held.
    #[test]
    fn ttl_validation() {
        assert!(validate_ttl(Duration::ZERO).is_err());
        assert!(validate_ttl(Duration::from_secs(2 * 24 * 3600)).is_err());
        assert!(validate_ttl(Duration::from_millis(1)).is_ok());
    }
}
