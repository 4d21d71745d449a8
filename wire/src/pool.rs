//! A bounded pool of server connections, and `ConnSource`: anything that hands out pooled
//! connections to one shard's primary (a tablet's own pool in-process, or the gate's pool of
//! connections to a remote tablet pooler).

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{SqlError, WireError};
use super::message::TxStatus;
use super::server_conn::{ConnectConfig, ServerConn};

/// Why no connection could be handed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcquireError {
    /// The tablet refuses queries in its current role or term (fenced, demoted, starting).
    /// Retryable: the gate buffers and retries on the new primary.
    #[error("tablet {tablet} is not serving: {reason}")]
    NotServing {
        tablet: String,
        reason: String,
        term: u64,
    },
    #[error("no connection to {target} became free within {timeout_ms} ms")]
    Timeout { target: String, timeout_ms: u64 },
    #[error("cannot connect to {target}: {error}")]
    Connect { target: String, error: String },
}

impl AcquireError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, AcquireError::Timeout { .. })
    }

    pub fn to_sql_error(&self) -> SqlError {
        match self {
            AcquireError::NotServing { .. } => SqlError::new("57P03", self.to_string())
                .with_hint("the shard is changing primaries; retry the statement"),
            AcquireError::Timeout { .. } => SqlError::new("53300", self.to_string()),
            AcquireError::Connect { .. } => SqlError::new("08006", self.to_string()),
        }
    }
}

pub type AcquireFuture<'a> =
    Pin<Box<dyn Future<Output = Result<PooledConn, AcquireError>> + Send + 'a>>;

/// Hands out connections to one tablet's PostgreSQL (directly or through its pooler).
pub trait ConnSource: Send + Sync {
    fn acquire(&self) -> AcquireFuture<'_>;

    /// A connection if one can be had without waiting (a free slot and an idle connection),
    /// else `None` and the caller uses [`ConnSource::acquire`]. Saves the boxed future of
    /// `acquire` on the common path, where the pool has idle connections.
    fn acquire_now(&self) -> Option<Result<PooledConn, AcquireError>> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Name for logs and metrics (e.g. the tablet id).
    pub name: String,
    pub connect: ConnectConfig,
    /// Upper bound on open connections.
    pub max_size: usize,
    /// How long `acquire` waits for a free connection.
    pub acquire_timeout_ms: u64,
}

struct PoolInner {
    config: PoolConfig,
    /// Boxed so that lending and returning a connection moves a pointer, not the whole
    /// connection state (buffers, prepared set, settings).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    permits: Arc<Semaphore>,
    /// Bumped by `reset`; connections from an older generation are closed on release.
    generation: AtomicU64,
}

/// A bounded connection pool. Cloning shares the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Pool {
        let permits = Arc::new(Semaphore::new(config.max_size.max(1)));
        Pool {
            inner: Arc::new(PoolInner {
                config,
                idle: Mutex::new(Vec::new()),
                permits,
                generation: AtomicU64::new(0),
            }),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Takes an idle connection or opens a new one, waiting at most `acquire_timeout_ms` for
    /// room under `max_size`.
    pub async fn get(&self) -> Result<PooledConn, AcquireError> {
        let config = &self.inner.config;
        let timeout_ms = config.acquire_timeout_ms;
        let permit = tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            self.inner.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| AcquireError::Timeout {
            target: config.connect.target.to_string(),
            timeout_ms,
        })?
        .map_err(|_| AcquireError::Connect {
            target: config.connect.target.to_string(),
            error: "pool closed".into(),
        })?;
        let generation = self.inner.generation.load(Ordering::Acquire);
        let conn = match self.pop_live_idle() {
            Some(conn) => conn,
            None => Box::new(
                ServerConn::connect(&config.connect)
                    .await
                    .map_err(|error| AcquireError::Connect {
                        target: config.connect.target.to_string(),
                        error: describe(&error),
                    })?,
            ),
        };
        Ok(PooledConn {
            conn: Some(conn),
            pool: Some(self.inner.clone()),
            generation,
            _permit: Some(permit),
        })
    }

    /// An idle connection, if one is there and the pool has room, without waiting.
    pub fn get_idle(&self) -> Option<PooledConn> {
        let permit = self.inner.permits.clone().try_acquire_owned().ok()?;
        let generation = self.inner.generation.load(Ordering::Acquire);
        let conn = self.pop_live_idle()?;
        Some(PooledConn {
            conn: Some(conn),
            pool: Some(self.inner.clone()),
            generation,
            _permit: Some(permit),
        })
    }

    /// Pops idle connections until one the server has not closed meanwhile, so a query never
    /// goes out on a connection that is already dead (after a server restart or failover).
    fn pop_live_idle(&self) -> Option<Box<ServerConn>> {
        loop {
            let conn = self.inner.idle.lock().pop()?;
            if !conn.stream.is_dead() {
                return Some(conn);
            }
            tracing::debug!(pool = %self.inner.config.name, "dropping a dead idle connection");
        }
    }

    /// Closes idle connections and makes connections in use close when released (after the
    /// server restarted or changed role).
    pub fn reset(&self) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.idle.lock().clear();
    }

    pub fn idle_count(&self) -> usize {
        self.inner.idle.lock().len()
    }

    pub fn in_use_count(&self) -> usize {
        self.inner.config.max_size - self.inner.permits.available_permits()
    }
}

fn describe(error: &WireError) -> String {
    match error {
        WireError::Server(sql) => sql.message.clone(),
        other => other.to_string(),
    }
}

impl ConnSource for Pool {
    fn acquire(&self) -> AcquireFuture<'_> {
        Box::pin(self.get())
    }

    fn acquire_now(&self) -> Option<Result<PooledConn, AcquireError>> {
        self.get_idle().map(Ok)
    }
}

/// A connection on loan from a pool; returned when dropped if it is still clean (idle
/// transaction state, nothing unread), otherwise closed.
pub struct PooledConn {
    conn: Option<Box<ServerConn>>,
    pool: Option<Arc<PoolInner>>,
    generation: u64,
    _permit: Option<OwnedSemaphorePermit>,
}

impl PooledConn {
    /// A connection that belongs to no pool (closed when dropped).
    pub fn unpooled(conn: ServerConn) -> PooledConn {
        PooledConn {
            conn: Some(Box::new(conn)),
            pool: None,
            generation: 0,
            _permit: None,
        }
    }

    /// Marks the connection unusable so it is closed instead of returned.
    pub fn discard(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.broken = true;
        }
    }
}

impl Deref for PooledConn {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn.as_ref().expect("PooledConn used after release")
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("PooledConn used after release")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) else {
            return;
        };
        let clean = !conn.broken
            && conn.tx_status == TxStatus::Idle
            && conn.stream.read_buf.is_empty()
            && conn.stream.write_buf.is_empty()
            && self.generation == pool.generation.load(Ordering::Acquire);
        if clean {
            pool.idle.lock().push(conn);
        }
    }
}
