//! The tablet's gRPC service: status snapshots and a status stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tessera_proto::tablet::tablet_server::{Tablet as TabletRpc, TabletServer};
use tessera_proto::tablet::{StatusRequest, TabletStatus, WatchStatusRequest};
use tonic::{Request, Response, Status};

use crate::tablet::Tablet;

/// Default upper bound between two status snapshots of a stream.
const DEFAULT_INTERVAL_MS: u32 = 1_000;

pub struct TabletService {
    tablet: Arc<Tablet>,
}

impl TabletService {
    pub fn server(tablet: Arc<Tablet>) -> TabletServer<TabletService> {
        TabletServer::new(TabletService { tablet })
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<TabletStatus, Status>> + Send>>;

#[tonic::async_trait]
impl TabletRpc for TabletService {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<TabletStatus>, Status> {
        Ok(Response::new(self.tablet.status().await))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let interval_ms = match request.into_inner().interval_ms {
            0 => DEFAULT_INTERVAL_MS,
            ms => ms.clamp(50, 60_000),
        };
        let tablet = self.tablet.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut changes = tablet.subscribe();
            loop {
                if sender.send(Ok(tablet.status().await)).await.is_err() {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(u64::from(interval_ms)), changes.changed()).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
