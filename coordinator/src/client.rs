//! gRPC clients of tablets, one lazily connected channel per address, with a timeout on every
//! call.

use std::time::Duration;

use dashmap::DashMap;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_topology::records::TabletRecord;
use tonic::transport::{Channel, Endpoint};

/// Connect timeout of a tablet channel.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);

#[derive(Default)]
pub struct Clients {
    channels: DashMap<String, Channel>,
}

impl Clients {
    /// A client for `tablet` whose calls fail after `timeout`.
    pub fn get(
        &self,
        tablet: &TabletRecord,
    ) -> Result<TabletClient<Channel>, tonic::transport::Error> {
        let address = format!("http://{}:{}", tablet.host, tablet.grpc_port);
        let channel = match self.channels.get(&address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(address.clone())?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                self.channels.insert(address, channel.clone());
                channel
            }
        };
        Ok(TabletClient::new(channel))
    }

    /// Forgets a tablet's channel (after its address changed).
    pub fn forget(&self, tablet: &TabletRecord) {
        self.channels
            .remove(&format!("http://{}:{}", tablet.host, tablet.grpc_port));
    }
}

/// Runs a tablet RPC with a deadline, flattening transport and timeout errors into a message.
pub async fn call<T, F>(timeout: Duration, what: &str, future: F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("{what}: {}", status.message())),
        Err(_) => Err(format!(
            "{what}: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}
