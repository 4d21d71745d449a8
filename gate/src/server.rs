//! The gate's accept loop and the state every session shares.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use dashmap::DashMap;
use tessera_wire::scram::Verifier;
use tessera_wire::{PgStream, Target};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::backend::Backends;
use crate::cluster::Cluster;
use crate::config::GateConfig;
use crate::session::Session;
use crate::sql::cache::PlanCache;

/// The server-side query a session is running, so a CancelRequest can be passed on.
#[derive(Debug, Clone)]
pub struct RunningQuery {
    /// Shared with the connection: no allocation per borrowed connection.
    pub target: Arc<Target>,
    pub process_id: i32,
    pub secret_key: i32,
}

/// A session's cancel key and what it is running now.
pub struct CancelEntry {
    pub secret_key: i32,
    pub running: parking_lot::Mutex<Vec<RunningQuery>>,
}

/// Handles of the metrics every statement updates, registered once: `metrics::counter!` looks
/// its key up in the recorder's registry (hashing and comparing name and labels) on each call.
pub struct HotMetrics {
    pub simple_queries: metrics::Counter,
    pub extended_batches: metrics::Counter,
}

impl HotMetrics {
    /// Registers with the recorder installed now; install it before starting the gate.
    fn register() -> HotMetrics {
        HotMetrics {
            simple_queries: metrics::counter!("tessera_gate_queries_total", "protocol" => "simple"),
            extended_batches: metrics::counter!("tessera_gate_queries_total", "protocol" => "extended"),
        }
    }
}

/// State shared by all sessions of one gate.
pub struct Shared {
    pub config: Arc<GateConfig>,
    pub cluster: Arc<Cluster>,
    pub backends: Backends,
    pub plans: PlanCache,
    pub verifiers: HashMap<String, Verifier>,
    pub cancels: DashMap<i32, Arc<CancelEntry>>,
    /// Distinguishes this run of the gate in two-phase-commit ids (transaction ids restart).
    pub boot_id: u64,
    next_process_id: AtomicI32,
    next_transaction: AtomicU64,
    /// Server parameters reported to clients at startup (from the first backend connection).
    pub server_params: parking_lot::RwLock<Vec<(String, String)>>,
    pub metrics: HotMetrics,
}

impl Shared {
    pub fn new(config: Arc<GateConfig>, cluster: Arc<Cluster>, backends: Backends) -> Shared {
        let verifiers = config
            .users
            .iter()
            .map(|user| (user.name.clone(), Verifier::from_password(&user.password)))
            .collect();
        Shared {
            plans: PlanCache::new(config.plan_cache_entries),
            config,
            cluster,
            backends,
            verifiers,
            cancels: DashMap::new(),
            boot_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_else(|_| rand::random()),
            next_process_id: AtomicI32::new(1),
            next_transaction: AtomicU64::new(1),
            server_params: parking_lot::RwLock::new(default_server_params()),
            metrics: HotMetrics::register(),
        }
    }

    pub fn new_process_id(&self) -> i32 {
        self.next_process_id.fetch_add(1, Ordering::Relaxed) & i32::MAX
    }

    /// A transaction id unique within this gate's lifetime (combined with the gate id and start
    /// time in two-phase-commit names).
    pub fn new_transaction_id(&self) -> u64 {
        self.next_transaction.fetch_add(1, Ordering::Relaxed)
    }
}

/// What PostgreSQL 15 reports at startup, used until a backend connection reports its own.
fn default_server_params() -> Vec<(String, String)> {
    [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
        ("session_authorization", "postgres"),
        ("application_name", ""),
        ("default_transaction_read_only", "off"),
        ("in_hot_standby", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Accepts clients until `shutdown` resolves; each client gets its own task.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let limit = Arc::new(Semaphore::new(shared.config.max_client_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let permit = limit.clone().try_acquire_owned();
        tokio::spawn(async move {
            let mut stream = PgStream::tcp(socket);
            let Ok(_permit) = permit else {
                metrics::counter!("tessera_gate_connections_refused_total").increment(1);
                crate::session::refuse(&mut stream, &shared).await;
                return;
            };
            metrics::gauge!("tessera_gate_client_connections").increment(1.0);
            Session::run(stream, shared, peer.to_string()).await;
            metrics::gauge!("tessera_gate_client_connections").decrement(1.0);
        });
    }
}
