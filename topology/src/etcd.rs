//! `EtcdTopo`: the production topology store on etcd (v3 API; works with etcd 3.4 and later).
//!
//! Mapping onto etcd:
//! - every key lives under an optional prefix from the URL (`etcd://h:p/prefix` stores
//!   `/tessera/...` at `/prefix/tessera/...`), so several clusters can share one etcd;
//! - a key's version is its `mod_revision`; create and compare-and-set are single transactions
//!   comparing `create_revision` / `mod_revision`;
//! - watches list the prefix, then watch from the listed revision + 1. After a disconnect they
//!   resume from the last delivered revision + 1 (no event lost, none repeated); when etcd
//!   answers that this revision was compacted away, they re-list and send a fresh snapshot;
//! - locks are keys attached to a lease, created only if absent. A holder that dies stops
//!   renewing the lease; etcd then deletes the key and the next waiter gets it.
//!
//! Every unary request is bounded by the request timeout, so an unreachable etcd yields
//! `Unavailable` quickly instead of a hang.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::error::TopoError;
use crate::store::{
    LockGuard, LockLease, TopoStore, Version, Versioned, WatchEvent, WatchSender, WatchStream,
    validate_key, validate_prefix, validate_ttl,
};

/// Default bound on connecting and on every unary request.
pub const DEFAULT_ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest pause between two reconnection attempts of a watch.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(2);

/// Where and how to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each etcd member.
    pub endpoints: Vec<String>,
    /// Prepended to every key; empty, or `/name` without a trailing slash.
    pub prefix: String,
    /// Bound on connecting at startup.
    pub connect_timeout: Duration,
    /// Bound on each unary request.
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// A configuration with the default timeouts.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            connect_timeout: DEFAULT_ETCD_TIMEOUT,
            request_timeout: DEFAULT_ETCD_TIMEOUT,
        }
    }
}

/// A topology store in etcd. Cloning shares the connection.
#[derive(Clone)]
pub struct EtcdTopo {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Invariant: empty or starts with '/' and does not end with '/'.
    prefix: String,
    request_timeout: Duration,
    description: String,
}

impl std::fmt::Debug for EtcdTopo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EtcdTopo")
            .field("description", &self.inner.description)
            .finish_non_exhaustive()
    }
}

impl EtcdTopo {
    /// Connects and checks that etcd answers, within `config.connect_timeout`.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdTopo, TopoError> {
        let description = format!("etcd://{}{}", config.endpoints.join(","), config.prefix);
        if config.endpoints.is_empty() {
            return Err(TopoError::InvalidArgument {
                reason: "etcd needs at least one endpoint".to_string(),
            });
        }
        let prefix = config.prefix.trim_end_matches('/').to_string();
        if !prefix.is_empty() {
            validate_key(&prefix)?;
        }
        let unavailable = |reason: String| TopoError::Unavailable {
            endpoint: description.clone(),
            reason,
        };
        let urls: Vec<String> = config
            .endpoints
            .iter()
            .map(|endpoint| format!("http://{endpoint}"))
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            // Detect a dead etcd on idle watch streams within a few seconds.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster must not serve stale watches.
            .with_require_leader(true);
        let client =
            tokio::time::timeout(config.connect_timeout, Client::connect(urls, Some(options)))
                .await
                .map_err(|_| {
                    unavailable(format!("no connection within {:?}", config.connect_timeout))
                })?
                .map_err(|error| unavailable(error.to_string()))?;
        let store = EtcdTopo {
            inner: Arc::new(Inner {
                client,
                prefix,
                request_timeout: config.request_timeout,
                description: description.clone(),
            }),
        };
        // The channel connects lazily; one real request proves etcd is there and answering.
        let probe = store.inner.full_key("/");
        let mut kv = store.inner.client.kv_client();
        let probe_options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_limit(1);
        tokio::time::timeout(config.connect_timeout, kv.get(probe, Some(probe_options)))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "etcd did not answer within {:?}; is it running and reachable?",
                    config.connect_timeout
                ))
            })?
            .map_err(|error| unavailable(error.to_string()))?;
        tracing::debug!(%description, "connected to etcd");
        Ok(store)
    }

    /// Discards etcd's history up to the current revision and returns that revision. Watches
    /// that were behind it recover with a fresh snapshot. For operators and tests.
    pub async fn compact_history(&self) -> Result<Version, TopoError> {
        let inner = &self.inner;
        let mut kv = inner.client.kv_client();
        let response = inner
            .call(kv.get(
                inner.full_key("/"),
                Some(GetOptions::new().with_count_only()),
            ))
            .await?;
        let revision = header_revision(response.header());
        let mut kv = inner.client.kv_client();
        inner
            .call(kv.compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            ))
            .await?;
        Ok(Version(revision.max(0) as u64))
    }
}

impl Inner {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The topology key of an etcd key, or `None` for keys outside our prefix or not UTF-8.
    fn topo_key(&self, full: &[u8]) -> Option<String> {
        let full = std::str::from_utf8(full).ok()?;
        full.strip_prefix(&self.prefix)
            .filter(|key| key.starts_with('/'))
            .map(str::to_string)
    }

    /// Runs one unary request under the request timeout.
    async fn call<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, TopoError> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(result) => result.map_err(|error| self.map_error(error)),
            Err(_) => Err(TopoError::Unavailable {
                endpoint: self.description.clone(),
                reason: format!("no answer within {:?}", self.request_timeout),
            }),
        }
    }

    fn map_error(&self, error: etcd_client::Error) -> TopoError {
        use tonic::Code;
        let unavailable = |reason: String| TopoError::Unavailable {
            endpoint: self.description.clone(),
            reason,
        };
        match error {
            etcd_client::Error::GRpcStatus(status) => match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::ResourceExhausted => unavailable(status.message().to_string()),
                Code::InvalidArgument | Code::OutOfRange => TopoError::InvalidArgument {
                    reason: status.message().to_string(),
                },
                _ => TopoError::Internal {
                    reason: format!("etcd: {}", status.message()),
                },
            },
            etcd_client::Error::TransportError(error) => unavailable(error.to_string()),
            etcd_client::Error::IoError(error) => unavailable(error.to_string()),
            other => TopoError::Internal {
                reason: format!("etcd client: {other}"),
            },
        }
    }

    /// Runs `action` on `key` only if `compare` holds, in one transaction whose failure branch
    /// reads the key, so a refusal comes with the key's current version (`None`: absent).
    async fn guarded(
        &self,
        key: &str,
        compare: impl FnOnce(String) -> Compare,
        action: impl FnOnce(String) -> TxnOp,
    ) -> Result<Guarded, TopoError> {
        let full = self.full_key(key);
        let transaction = Txn::new()
            .when([compare(full.clone())])
            .and_then([action(full.clone())])
            .or_else([TxnOp::get(full, None)]);
        let mut kv = self.client.kv_client();
        let response = self.call(kv.txn(transaction)).await?;
        if response.succeeded() {
            return Ok(Guarded::Applied(version_of(header_revision(
                response.header(),
            ))));
        }
        let current = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| version_of(kv.mod_revision())),
            _ => None,
        });
        Ok(Guarded::Refused { current })
    }

    /// A compare-and-set on `key` at `expected` (update or delete).
    async fn at_version(
        &self,
        key: &str,
        expected: Version,
        action: impl FnOnce(String) -> TxnOp,
    ) -> Result<Version, TopoError> {
        let revision = version_to_revision(key, expected)?;
        let compare = |full| Compare::mod_revision(full, CompareOp::Equal, revision);
        match self.guarded(key, compare, action).await? {
            Guarded::Applied(version) => Ok(version),
            Guarded::Refused { current: None } => Err(TopoError::NotFound {
                key: key.to_string(),
            }),
            Guarded::Refused {
                current: Some(actual),
            } => Err(TopoError::BadVersion {
                key: key.to_string(),
                expected,
                actual,
            }),
        }
    }
}

/// The outcome of [`Inner::guarded`].
enum Guarded {
    /// The action ran; the store is now at this revision.
    Applied(Version),
    /// The comparison failed; the key's version at that moment (`None`: absent).
    Refused { current: Option<Version> },
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map(|header| header.revision()).unwrap_or(0)
}

fn version_of(revision: i64) -> Version {
    Version(revision.max(0) as u64)
}

fn version_to_revision(key: &str, version: Version) -> Result<i64, TopoError> {
    i64::try_from(version.0).map_err(|_| TopoError::InvalidArgument {
        reason: format!("version {version} of {key} is out of etcd's range"),
    })
}

#[async_trait::async_trait]
impl TopoStore for EtcdTopo {
    async fn get(&self, key: &str) -> Result<Versioned, TopoError> {
        validate_key(key)?;
        let inner = &self.inner;
        let mut kv = inner.client.kv_client();
        let response = inner.call(kv.get(inner.full_key(key), None)).await?;
        let found = response.kvs().first().ok_or_else(|| TopoError::NotFound {
            key: key.to_string(),
        })?;
        Ok(Versioned {
            value: found.value().to_vec(),
            version: version_of(found.mod_revision()),
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Version, TopoError> {
        validate_key(key)?;
        let compare = |full| Compare::create_revision(full, CompareOp::Equal, 0);
        let put = |full| TxnOp::put(full, value, None);
        match self.inner.guarded(key, compare, put).await? {
            Guarded::Applied(version) => Ok(version),
            Guarded::Refused { .. } => Err(TopoError::AlreadyExists {
                key: key.to_string(),
            }),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Version>,
    ) -> Result<Version, TopoError> {
        validate_key(key)?;
        let inner = &self.inner;
        match expected {
            Some(expected) => {
                let put = |full| TxnOp::put(full, value, None);
                inner.at_version(key, expected, put).await
            }
            None => {
                let mut kv = inner.client.kv_client();
                let response = inner.call(kv.put(inner.full_key(key), value, None)).await?;
                Ok(version_of(header_revision(response.header())))
            }
        }
    }

    async fn delete(&self, key: &str, expected: Option<Version>) -> Result<(), TopoError> {
        validate_key(key)?;
        let inner = &self.inner;
        match expected {
            Some(expected) => {
                let delete = |full| TxnOp::delete(full, None);
                inner.at_version(key, expected, delete).await.map(|_| ())
            }
            None => {
                let mut kv = inner.client.kv_client();
                let response = inner.call(kv.delete(inner.full_key(key), None)).await?;
                if response.deleted() > 0 {
                    Ok(())
                } else {
                    Err(TopoError::NotFound {
                        key: key.to_string(),
                    })
                }
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, TopoError> {
        validate_prefix(prefix)?;
        let (entries, _) = list_at(&self.inner, prefix).await?;
        Ok(entries)
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, TopoError> {
        validate_prefix(prefix)?;
        // The first listing happens here so that an unreachable etcd fails the call itself.
        let (snapshot, revision) = list_at(&self.inner, prefix).await?;
        let (sender, stream) = WatchStream::channel();
        let feeder = tokio::spawn(feed_watch(
            self.inner.clone(),
            prefix.to_string(),
            snapshot,
            revision,
            sender,
        ));
        Ok(stream.attach(feeder))
    }

    async fn lock(&self, key: &str, ttl: Duration) -> Result<LockGuard, TopoError> {
        validate_key(key)?;
        validate_ttl(ttl)?;
        // etcd leases have whole-second TTLs; round up so the lease is never shorter than asked.
        let ttl_seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let ttl_seconds = i64::try_from(ttl_seconds.max(1)).unwrap_or(i64::MAX);
        let inner = &self.inner;
        let full = inner.full_key(key);
        let holder = format!("pid {} on {}", std::process::id(), hostname());
        loop {
            let mut lease_client = inner.client.lease_client();
            let granted = inner.call(lease_client.grant(ttl_seconds, None)).await?;
            let mut pending = RevokeOnDrop {
                inner: inner.clone(),
                lease_id: Some(granted.id()),
            };
            let transaction = Txn::new()
                .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    full.clone(),
                    holder.clone(),
                    Some(PutOptions::new().with_lease(granted.id())),
                )]);
            let mut kv = inner.client.kv_client();
            let response = inner.call(kv.txn(transaction)).await?;
            if response.succeeded() {
                pending.lease_id = None;
                let lease = EtcdLease {
                    inner: inner.clone(),
                    key: key.to_string(),
                    lease_id: granted.id(),
                    keeper: tokio::sync::Mutex::new(None),
                };
                let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
                return Ok(LockGuard::new(key, ttl, Arc::new(lease)));
            }
            // Someone holds it. Give our lease back and wait until their key goes away.
            pending.revoke_now().await;
            let seen = header_revision(response.header());
            wait_for_deletion(
                inner,
                &full,
                seen + 1,
                Duration::from_secs(ttl_seconds as u64),
            )
            .await;
        }
    }

    fn describe(&self) -> String {
        self.inner.description.clone()
    }
}

/// The host name, for the lock holder description stored in etcd (debugging aid only).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown host".to_string())
}

/// Lists `prefix` and returns the entries with the revision they were read at.
async fn list_at(
    inner: &Inner,
    prefix: &str,
) -> Result<(Vec<(String, Versioned)>, i64), TopoError> {
    let mut kv = inner.client.kv_client();
    let response = inner
        .call(kv.get(
            inner.full_key(prefix),
            Some(GetOptions::new().with_prefix()),
        ))
        .await?;
    let entries = response
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = inner.topo_key(kv.key())?;
            Some((
                key,
                Versioned {
                    value: kv.value().to_vec(),
                    version: version_of(kv.mod_revision()),
                },
            ))
        })
        .collect();
    Ok((entries, header_revision(response.header())))
}

/// Why one etcd watch stream ended.
enum WatchEnd {
    /// The consumer dropped the stream.
    ConsumerGone,
    /// etcd compacted the revision we need: re-list.
    Compacted,
    /// Connection or server trouble: resume from the last revision after a pause.
    Interrupted(String),
}

/// Feeds a watch forever: snapshot, events, resume after interruptions, re-list after
/// compaction. Ends only when the consumer goes away.
async fn feed_watch(
    inner: Arc<Inner>,
    prefix: String,
    snapshot: Vec<(String, Versioned)>,
    listed_revision: i64,
    sender: WatchSender,
) {
    if sender.send(WatchEvent::Snapshot(snapshot)).await.is_err() {
        return;
    }
    // The next revision to deliver. Invariant: every change before it has been delivered.
    let mut next_revision = listed_revision + 1;
    let mut backoff = Duration::from_millis(100);
    loop {
        match watch_once(&inner, &prefix, &mut next_revision, &sender).await {
            WatchEnd::ConsumerGone => return,
            WatchEnd::Compacted => {
                tracing::info!(%prefix, next_revision, "etcd compacted past the watch position; re-listing");
                match list_at(&inner, &prefix).await {
                    Ok((snapshot, revision)) => {
                        if sender.send(WatchEvent::Snapshot(snapshot)).await.is_err() {
                            return;
                        }
                        next_revision = revision + 1;
                        backoff = Duration::from_millis(100);
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%prefix, %error, "re-listing after compaction failed; retrying");
                        // Watching from a compacted revision fails again and lands here.
                    }
                }
            }
            WatchEnd::Interrupted(reason) => {
                tracing::warn!(%prefix, %reason, next_revision, "etcd watch interrupted; resuming");
            }
        }
        if sender.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
    }
}

/// Runs one etcd watch from `next_revision` until it ends, delivering events and advancing
/// `next_revision` past each delivered one.
async fn watch_once(
    inner: &Inner,
    prefix: &str,
    next_revision: &mut i64,
    sender: &WatchSender,
) -> WatchEnd {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(*next_revision);
    let mut watch_client = inner.client.watch_client();
    let opened = tokio::time::timeout(
        inner.request_timeout,
        watch_client.watch(inner.full_key(prefix), Some(options)),
    )
    .await;
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return WatchEnd::Interrupted(error.to_string()),
        Err(_) => return WatchEnd::Interrupted("opening the watch timed out".to_string()),
    };
    loop {
        // Poll the consumer too, so a dropped stream ends an idle watch promptly.
        let message = tokio::select! {
            message = stream.message() => message,
            () = sender.closed() => return WatchEnd::ConsumerGone,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return WatchEnd::Interrupted("etcd closed the watch stream".to_string()),
            Err(error) => return WatchEnd::Interrupted(error.to_string()),
        };
        if response.compact_revision() > 0 {
            return WatchEnd::Compacted;
        }
        if response.canceled() {
            return WatchEnd::Interrupted(format!(
                "etcd cancelled the watch: {}",
                response.cancel_reason()
            ));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            if revision < *next_revision {
                continue;
            }
            *next_revision = revision + 1;
            let Some(key) = inner.topo_key(kv.key()) else {
                tracing::warn!(%prefix, "ignoring a watched etcd key that is not UTF-8");
                continue;
            };
            let event = match event.event_type() {
                EventType::Put => WatchEvent::Put {
                    key,
                    value: kv.value().to_vec(),
                    version: version_of(revision),
                },
                EventType::Delete => WatchEvent::Delete { key },
            };
            if sender.send(event).await.is_err() {
                return WatchEnd::ConsumerGone;
            }
        }
    }
}

/// Waits until `full_key` is deleted at or after `from_revision`, or `patience` passes (then the
/// caller simply tries again), or the watch fails (after a short pause, likewise).
async fn wait_for_deletion(inner: &Inner, full_key: &str, from_revision: i64, patience: Duration) {
    let wait = async {
        let mut watch_client = inner.client.watch_client();
        let options = WatchOptions::new().with_start_revision(from_revision);
        let Ok(mut stream) = watch_client.watch(full_key, Some(options)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        };
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    if response.canceled()
                        || response
                            .events()
                            .iter()
                            .any(|event| event.event_type() == EventType::Delete)
                    {
                        return;
                    }
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(patience, wait).await;
}

/// Revokes a granted lease unless disarmed, so that a cancelled `lock` call does not leave a
/// lock held until its TTL runs out.
struct RevokeOnDrop {
    inner: Arc<Inner>,
    /// `Some` while armed.
    lease_id: Option<i64>,
}

impl RevokeOnDrop {
    async fn revoke_now(&mut self) {
        if let Some(lease_id) = self.lease_id.take() {
            let mut lease_client = self.inner.client.lease_client();
            if let Err(error) = self.inner.call(lease_client.revoke(lease_id)).await {
                tracing::debug!(lease_id, %error, "revoking an unused lock lease failed; it expires");
            }
        }
    }
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        let Some(lease_id) = self.lease_id.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            runtime.spawn(async move {
                let mut lease_client = inner.client.lease_client();
                let _ = inner.call(lease_client.revoke(lease_id)).await;
            });
        }
    }
}

/// The lease behind a held etcd lock.
struct EtcdLease {
    inner: Arc<Inner>,
    key: String,
    lease_id: i64,
    /// The keep-alive stream, opened on first use and reopened after errors.
    keeper: tokio::sync::Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream)>>,
}

#[async_trait::async_trait]
impl LockLease for EtcdLease {
    async fn keep_alive(&self) -> Result<(), TopoError> {
        let mut keeper = self.keeper.lock().await;
        if keeper.is_none() {
            let mut lease_client = self.inner.client.lease_client();
            *keeper = Some(
                self.inner
                    .call(lease_client.keep_alive(self.lease_id))
                    .await?,
            );
        }
        let Some((sender, responses)) = keeper.as_mut() else {
            return Err(TopoError::Internal {
                reason: "lease keeper vanished".to_string(),
            });
        };
        let renewed = async {
            sender.keep_alive().await?;
            responses.message().await
        };
        match self.inner.call(renewed).await {
            Ok(Some(response)) if response.ttl() > 0 => Ok(()),
            Ok(Some(_)) => Err(TopoError::LockLost {
                key: self.key.clone(),
                reason: format!("etcd lease {:x} expired", self.lease_id),
            }),
            Ok(None) => {
                *keeper = None;
                Err(TopoError::Unavailable {
                    endpoint: self.inner.description.clone(),
                    reason: "lease keep-alive stream closed".to_string(),
                })
            }
            Err(error) => {
                *keeper = None;
                Err(error)
            }
        }
    }

    async fn release(&self) -> Result<(), TopoError> {
        let mut lease_client = self.inner.client.lease_client();
        match self.inner.call(lease_client.revoke(self.lease_id)).await {
            Ok(_) => Ok(()),
            // An expired lease is already released.
            Err(TopoError::Internal { reason }) if reason.contains("lease not found") => Ok(()),
            Err(error) => Err(error),
        }
    }
}
