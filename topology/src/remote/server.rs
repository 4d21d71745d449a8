//! `TopoServer`: exposes any `Arc<dyn TopoStore>` over gRPC (`tessera.topo.Topo`).
//!
//! Locks are the only stateful part. The server takes the lock in its backend on the client's
//! behalf, but renews the backend lease only when the client sends `KeepAlive`; a client that
//! dies or hangs therefore loses the lock when the lease runs out, exactly as with a direct etcd
//! client.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tessera_proto::topo as wire;
use tessera_proto::topo::topo_server::{Topo, TopoServer as TopoService};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::MAX_MESSAGE_BYTES;
use super::convert::{entry_to_wire, error_to_status, event_to_wire};
use crate::error::TopoError;
use crate::store::{LockLease, TopoStore, Version};

/// Serves a topology store over gRPC.
#[derive(Clone)]
pub struct TopoServer {
    store: Arc<dyn TopoStore>,
    leases: Arc<Mutex<HashMap<u64, HeldLease>>>,
    /// Invariant: larger than every lease id handed out; ids start at 1 (0 means none on the
    /// wire).
    next_lease_id: Arc<AtomicU64>,
    /// Turns true when the server shuts down: open watches end and lock waits give up, so that
    /// a graceful shutdown does not wait forever on these long-lived calls.
    closing: Arc<watch::Sender<bool>>,
}

struct HeldLease {
    lease: Arc<dyn LockLease>,
    key: String,
    ttl: Duration,
    last_renewed: Instant,
}

impl TopoServer {
    pub fn new(store: Arc<dyn TopoStore>) -> TopoServer {
        TopoServer {
            store,
            leases: Arc::new(Mutex::new(HashMap::new())),
            next_lease_id: Arc::new(AtomicU64::new(1)),
            closing: Arc::new(watch::channel(false).0),
        }
    }

    /// Ends every open watch and lock wait, and refuses new ones. [`TopoServer::serve`] calls
    /// this on shutdown; call it yourself before a graceful shutdown of a server built with
    /// [`TopoServer::into_service`]. Clients see a dropped stream and reconnect elsewhere.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`TopoServer::close`] was called.
    fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            // An error means the sender is gone, which also means the server is gone.
            let _ = closing.wait_for(|closing| *closing).await;
        }
    }

    /// The tonic service, to add to a server that also hosts other services.
    pub fn into_service(self) -> TopoService<TopoServer> {
        TopoService::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), TopoError> {
        let address = listener
            .local_addr()
            .map(|address| address.to_string())
            .unwrap_or_else(|_| "unknown address".to_string());
        tracing::info!(%address, store = %self.store.describe(), "serving topology over gRPC");
        let closer = self.clone();
        let shutdown = async move {
            shutdown.await;
            closer.close();
        };
        tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown,
            )
            .await
            .map_err(|error| TopoError::Unavailable {
                endpoint: address,
                reason: format!("topology gRPC server failed: {error}"),
            })
    }

    /// Forgets a lease the client stopped renewing. The backend lease expires on its own; this
    /// only frees the bookkeeping.
    fn watch_over_lease(&self, lease_id: u64, ttl: Duration) {
        let leases = Arc::downgrade(&self.leases);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 2).await;
                let Some(leases) = leases.upgrade() else {
                    return;
                };
                let mut leases = leases.lock();
                match leases.get(&lease_id) {
                    Some(held) if held.last_renewed.elapsed() > held.ttl => {
                        tracing::info!(key = %held.key, lease_id, "remote lock holder stopped renewing; lease left to expire");
                        leases.remove(&lease_id);
                        return;
                    }
                    Some(_) => {}
                    None => return,
                }
            }
        });
    }

    fn lease(&self, lease_id: u64) -> Result<Arc<dyn LockLease>, Status> {
        self.leases
            .lock()
            .get(&lease_id)
            .map(|held| held.lease.clone())
            .ok_or_else(|| {
                error_to_status(TopoError::LockLost {
                    key: String::new(),
                    reason: format!("lease {lease_id} is unknown or expired"),
                })
            })
    }
}

fn expected_version(expected: Option<u64>) -> Option<Version> {
    expected.map(Version)
}

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<wire::WatchEvent, Status>> + Send>>;

#[async_trait::async_trait]
impl Topo for TopoServer {
    async fn get(
        &self,
        request: Request<wire::GetRequest>,
    ) -> Result<Response<wire::Entry>, Status> {
        let key = request.into_inner().key;
        let versioned = self.store.get(&key).await.map_err(error_to_status)?;
        Ok(Response::new(entry_to_wire(key, versioned)))
    }

    async fn create(
        &self,
        request: Request<wire::CreateRequest>,
    ) -> Result<Response<wire::VersionResponse>, Status> {
        let request = request.into_inner();
        let version = self
            .store
            .create(&request.key, request.value)
            .await
            .map_err(error_to_status)?;
        Ok(Response::new(wire::VersionResponse { version: version.0 }))
    }

    async fn update(
        &self,
        request: Request<wire::UpdateRequest>,
    ) -> Result<Response<wire::VersionResponse>, Status> {
        let request = request.into_inner();
        let version = self
            .store
            .update(
                &request.key,
                request.value,
                expected_version(request.expected_version),
            )
            .await
            .map_err(error_to_status)?;
        Ok(Response::new(wire::VersionResponse { version: version.0 }))
    }

    async fn delete(
        &self,
        request: Request<wire::DeleteRequest>,
    ) -> Result<Response<wire::DeleteResponse>, Status> {
        let request = request.into_inner();
        self.store
            .delete(&request.key, expected_version(request.expected_version))
            .await
            .map_err(error_to_status)?;
        Ok(Response::new(wire::DeleteResponse {}))
    }

    async fn list(
        &self,
        request: Request<wire::ListRequest>,
    ) -> Result<Response<wire::ListResponse>, Status> {
        let entries = self
            .store
            .list(&request.into_inner().prefix)
            .await
            .map_err(error_to_status)?;
        Ok(Response::new(wire::ListResponse {
            entries: entries
                .into_iter()
                .map(|(key, versioned)| entry_to_wire(key, versioned))
                .collect(),
        }))
    }

    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<wire::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let events = self
            .store
            .watch(&request.into_inner().prefix)
            .await
            .map_err(error_to_status)?;
        let stream = events
            .map(|item| item.map(event_to_wire).map_err(error_to_status))
            .take_until(self.closed());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn lock(
        &self,
        request: Request<wire::LockRequest>,
    ) -> Result<Response<wire::LockResponse>, Status> {
        let request = request.into_inner();
        let ttl = Duration::from_millis(request.ttl_ms);
        // If the client gives up while we wait, this future is dropped and so is the guard
        // (which releases the lock).
        let guard = tokio::select! {
            guard = self.store.lock(&request.key, ttl) => guard.map_err(error_to_status)?,
            () = self.closed() => {
                return Err(error_to_status(TopoError::Unavailable {
                    endpoint: "topology server".to_string(),
                    reason: "the server is shutting down".to_string(),
                }));
            }
        };
        let ttl = guard.ttl();
        let lease = guard.into_lease();
        let lease_id = self.next_lease_id.fetch_add(1, Ordering::Relaxed);
        self.leases.lock().insert(
            lease_id,
            HeldLease {
                lease,
                key: request.key,
                ttl,
                last_renewed: Instant::now(),
            },
        );
        self.watch_over_lease(lease_id, ttl);
        Ok(Response::new(wire::LockResponse { lease_id }))
    }

    async fn keep_alive(
        &self,
        request: Request<wire::KeepAliveRequest>,
    ) -> Result<Response<wire::KeepAliveResponse>, Status> {
        let lease_id = request.into_inner().lease_id;
        let lease = self.lease(lease_id)?;
        match lease.keep_alive().await {
            Ok(()) => {
                if let Some(held) = self.leases.lock().get_mut(&lease_id) {
                    held.last_renewed = Instant::now();
                }
                Ok(Response::new(wire::KeepAliveResponse {}))
            }
            Err(error) => {
                if matches!(error, TopoError::LockLost { .. }) {
                    self.leases.lock().remove(&lease_id);
                }
                Err(error_to_status(error))
            }
        }
    }

    async fn unlock(
        &self,
        request: Request<wire::UnlockRequest>,
    ) -> Result<Response<wire::UnlockResponse>, Status> {
        let lease_id = request.into_inner().lease_id;
        let held = self.leases.lock().remove(&lease_id);
        if let Some(held) = held {
            held.lease.release().await.map_err(error_to_status)?;
        }
        Ok(Response::new(wire::UnlockResponse {}))
    }
}
