//! `RemoteTopo`: a `TopoStore` that forwards every operation over gRPC to a [`TopoServer`],
//! which `tessera up` runs in front of its embedded store so that admin commands and separately
//! started components share it.
//!
//! Watches survive server restarts: the client reconnects with backoff and the server starts
//! every watch with a snapshot, so consumers simply rebuild. Locks are renewed by the client's
//! [`LockGuard`] through `KeepAlive`; when the client dies, the server stops renewing and the
//! lock expires.

mod convert;
mod server;

use std::sync::Arc;
use std::time::Duration;

use tessera_proto::topo as wire;
use tessera_proto::topo::topo_client::TopoClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::TopoError;
use crate::store::{
    LockGuard, LockLease, TopoStore, Version, Versioned, WatchEvent, WatchSender, WatchStream,
    validate_key, validate_prefix, validate_ttl,
};
use convert::{entry_from_wire, event_from_wire, status_to_error};
pub use server::TopoServer;

/// Largest gRPC message either side accepts (a list or snapshot of the whole topology).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Default bound on connecting and on each unary request.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest pause between two reconnection attempts of a watch.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(2);

/// A topology store reached through a [`TopoServer`]. Cloning shares the connection.
#[derive(Clone)]
pub struct RemoteTopo {
    client: TopoClient<Channel>,
    /// `host:port` of the server, for messages.
    address: String,
    request_timeout: Duration,
}

impl std::fmt::Debug for RemoteTopo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RemoteTopo")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl RemoteTopo {
    /// Connects to the server at `host:port`, failing within `timeout` when it is unreachable.
    /// Later disconnections are repaired transparently by the channel.
    pub async fn connect(address: &str, timeout: Duration) -> Result<RemoteTopo, TopoError> {
        let unavailable = |reason: String| TopoError::Unavailable {
            endpoint: format!("grpc://{address}"),
            reason,
        };
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| TopoError::InvalidUrl {
                url: format!("grpc://{address}"),
                reason: error.to_string(),
            })?
            .connect_timeout(timeout)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        let channel = tokio::time::timeout(timeout, endpoint.connect())
            .await
            .map_err(|_| {
                unavailable(format!(
                    "no connection within {timeout:?}; is `tessera up` running?"
                ))
            })?
            .map_err(|error| unavailable(format!("{error}; is `tessera up` running?")))?;
        let client = TopoClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(RemoteTopo {
            client,
            address: address.to_string(),
            request_timeout: timeout,
        })
    }

    fn endpoint(&self) -> String {
        format!("grpc://{}", self.address)
    }

    /// Runs one unary call under the request timeout.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, TopoError> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status_to_error(&status, &self.endpoint())),
            Err(_) => Err(TopoError::Unavailable {
                endpoint: self.endpoint(),
                reason: format!("no answer within {:?}", self.request_timeout),
            }),
        }
    }

    /// Opens the server-side watch and returns it after its first event (the snapshot), so that
    /// callers of `watch` see an unreachable server as an error instead of an empty stream.
    async fn open_watch(
        &self,
        prefix: &str,
    ) -> Result<(WatchEvent, tonic::Streaming<wire::WatchEvent>), TopoError> {
        let mut client = self.client.clone();
        let mut stream = self
            .call(client.watch(wire::WatchRequest {
                prefix: prefix.to_string(),
            }))
            .await?;
        let first = tokio::time::timeout(self.request_timeout, stream.message())
            .await
            .map_err(|_| TopoError::Unavailable {
                endpoint: self.endpoint(),
                reason: "the watch sent no snapshot in time".to_string(),
            })?
            .map_err(|status| status_to_error(&status, &self.endpoint()))?
            .ok_or_else(|| TopoError::Unavailable {
                endpoint: self.endpoint(),
                reason: "the watch ended before its snapshot".to_string(),
            })?;
        let first = event_from_wire(first)?;
        if !matches!(first, WatchEvent::Snapshot(_)) {
            return Err(TopoError::Internal {
                reason: "the topology server's watch did not start with a snapshot".to_string(),
            });
        }
        Ok((first, stream))
    }
}

/// Whether a watch error from the server means "try again" or "the stream is over".
fn is_transient(error: &TopoError) -> bool {
    matches!(error, TopoError::Unavailable { .. })
}

/// Forwards server events, reconnecting after transport failures. Every reconnection starts
/// with the server's snapshot, which consumers treat as a rebuild.
async fn feed_watch(
    remote: RemoteTopo,
    prefix: String,
    mut stream: tonic::Streaming<wire::WatchEvent>,
    sender: WatchSender,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let failure = loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = sender.closed() => return,
            };
            match message {
                Ok(Some(event)) => match event_from_wire(event) {
                    Ok(event) => {
                        if sender.send(event).await.is_err() {
                            return;
                        }
                        backoff = Duration::from_millis(100);
                    }
                    Err(error) => break error,
                },
                Ok(None) => {
                    break TopoError::Unavailable {
                        endpoint: remote.endpoint(),
                        reason: "the server ended the watch".to_string(),
                    };
                }
                Err(status) => break status_to_error(&status, &remote.endpoint()),
            }
        };
        if !is_transient(&failure) {
            sender.fail(failure).await;
            return;
        }
        tracing::warn!(%prefix, error = %failure, "remote topology watch interrupted; reconnecting");
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = sender.closed() => return,
            }
            backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
            match remote.open_watch(&prefix).await {
                Ok((snapshot, reopened)) => {
                    if sender.send(snapshot).await.is_err() {
                        return;
                    }
                    stream = reopened;
                    break;
                }
                Err(error) if is_transient(&error) => {
                    tracing::debug!(%prefix, %error, "remote topology watch still unavailable");
                }
                Err(error) => {
                    sender.fail(error).await;
                    return;
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl TopoStore for RemoteTopo {
    async fn get(&self, key: &str) -> Result<Versioned, TopoError> {
        validate_key(key)?;
        let mut client = self.client.clone();
        let entry = self
            .call(client.get(wire::GetRequest {
                key: key.to_string(),
            }))
            .await?;
        Ok(entry_from_wire(entry).1)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Version, TopoError> {
        validate_key(key)?;
        let mut client = self.client.clone();
        let response = self
            .call(client.create(wire::CreateRequest {
                key: key.to_string(),
                value,
            }))
            .await?;
        Ok(Version(response.version))
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Version>,
    ) -> Result<Version, TopoError> {
        validate_key(key)?;
        let mut client = self.client.clone();
        let response = self
            .call(client.update(wire::UpdateRequest {
                key: key.to_string(),
                value,
                expected_version: expected.map(|version| version.0),
            }))
            .await?;
        Ok(Version(response.version))
    }

    async fn delete(&self, key: &str, expected: Option<Version>) -> Result<(), TopoError> {
        validate_key(key)?;
        let mut client = self.client.clone();
        self.call(client.delete(wire::DeleteRequest {
            key: key.to_string(),
            expected_version: expected.map(|version| version.0),
        }))
        .await?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, TopoError> {
        validate_prefix(prefix)?;
        let mut client = self.client.clone();
        let response = self
            .call(client.list(wire::ListRequest {
                prefix: prefix.to_string(),
            }))
            .await?;
        Ok(response.entries.into_iter().map(entry_from_wire).collect())
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, TopoError> {
        validate_prefix(prefix)?;
        let (snapshot, server_stream) = self.open_watch(prefix).await?;
        let (sender, stream) = WatchStream::channel();
        // The channel has room, so the first send cannot wait.
        if sender.send(snapshot).await.is_err() {
            return Err(TopoError::Closed {
                reason: "watch consumer vanished".to_string(),
            });
        }
        let feeder = tokio::spawn(feed_watch(
            self.clone(),
            prefix.to_string(),
            server_stream,
            sender,
        ));
        Ok(stream.attach(feeder))
    }

    async fn lock(&self, key: &str, ttl: Duration) -> Result<LockGuard, TopoError> {
        validate_key(key)?;
        validate_ttl(ttl)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut client = self.client.clone();
        // No request timeout: waiting for the lock is the point. Dropping this future cancels
        // the RPC, and the server then releases anything it acquired for us.
        let response = client
            .lock(wire::LockRequest {
                key: key.to_string(),
                ttl_ms,
            })
            .await
            .map_err(|status| status_to_error(&status, &self.endpoint()))?
            .into_inner();
        let lease = RemoteLease {
            remote: self.clone(),
            key: key.to_string(),
            lease_id: response.lease_id,
        };
        Ok(LockGuard::new(key, ttl, Arc::new(lease)))
    }

    fn describe(&self) -> String {
        self.endpoint()
    }
}

/// A lock held through the server; renewing and releasing are RPCs.
struct RemoteLease {
    remote: RemoteTopo,
    key: String,
    lease_id: u64,
}

#[async_trait::async_trait]
impl LockLease for RemoteLease {
    async fn keep_alive(&self) -> Result<(), TopoError> {
        let mut client = self.remote.client.clone();
        self.remote
            .call(client.keep_alive(wire::KeepAliveRequest {
                lease_id: self.lease_id,
            }))
            .await
            .map(|_| ())
            .map_err(|error| match error {
                TopoError::LockLost { reason, .. } => TopoError::LockLost {
                    key: self.key.clone(),
                    reason,
                },
                other => other,
            })
    }

    async fn release(&self) -> Result<(), TopoError> {
        let mut client = self.remote.client.clone();
        self.remote
            .call(client.unlock(wire::UnlockRequest {
                lease_id: self.lease_id,
            }))
            .await
            .map(|_| ())
    }
}
