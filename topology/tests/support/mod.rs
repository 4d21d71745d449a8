//! Test fixtures shared by the topology integration tests: one store per backend, built from
//! real components (a real etcd process, a real gRPC server on a localhost socket, real files).
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tessera_topology::etcd_process::EtcdProcess;
use tessera_topology::{
    DEFAULT_REMOTE_TIMEOUT, EtcdConfig, EtcdTopo, MemoryTopo, RemoteTopo, TopoServer, TopoStore,
    WatchEvent, WatchStream,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Bound on waiting for any single watch event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// The next watch event; fails the test on an error item, the end of the stream, or silence.
pub async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next_event()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("watch failed: {error}"),
        Ok(None) => panic!("watch ended unexpectedly"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// Which backend a fixture runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `MemoryTopo::new()`
    Memory,
    /// `MemoryTopo::open(file)`
    File,
    /// `RemoteTopo` against a `TopoServer` (over a `MemoryTopo`) on a localhost socket.
    Remote,
    /// `EtcdTopo` against an etcd process started for this test.
    Etcd,
}

/// A store under test plus whatever keeps it alive.
pub struct Fixture {
    pub backend: Backend,
    /// The store the test talks to.
    pub store: Arc<dyn TopoStore>,
    pub directory: TempDir,
    pub server: Option<ServerHandle>,
    pub etcd: Option<EtcdProcess>,
}

impl Fixture {
    pub async fn new(backend: Backend) -> Fixture {
        let directory = tempfile::tempdir().expect("temp dir");
        let (mut server, mut etcd) = (None, None);
        let store: Arc<dyn TopoStore> = match backend {
            Backend::Memory => Arc::new(MemoryTopo::new()),
            Backend::File => Arc::new(
                MemoryTopo::open(directory.path().join("topo.json")).expect("open file store"),
            ),
            Backend::Remote => {
                let started = ServerHandle::start(Arc::new(MemoryTopo::new()), None).await;
                let remote =
                    RemoteTopo::connect(&started.address.to_string(), DEFAULT_REMOTE_TIMEOUT)
                        .await
                        .expect("connect to topology server");
                server = Some(started);
                Arc::new(remote)
            }
            Backend::Etcd => {
                let process = start_etcd(&directory).await;
                let client = etcd_client_for(&process, "/conformance").await;
                etcd = Some(process);
                Arc::new(client)
            }
        };
        Fixture {
            backend,
            store,
            directory,
            server,
            etcd,
        }
    }

    /// Another, independent client of the same store — as a second process would have. For the
    /// in-process backends it is the same object (there is no second process to speak of).
    pub async fn other_client(&self) -> Arc<dyn TopoStore> {
        match self.backend {
            Backend::Memory | Backend::File => self.store.clone(),
            Backend::Remote => {
                let server = self.server.as_ref().expect("server");
                Arc::new(
                    RemoteTopo::connect(&server.address.to_string(), DEFAULT_REMOTE_TIMEOUT)
                        .await
                        .expect("second client"),
                )
            }
            Backend::Etcd => {
                Arc::new(etcd_client_for(self.etcd.as_ref().expect("etcd"), "/conformance").await)
            }
        }
    }
}

/// Starts the test etcd; fails the test (never skips) when etcd is not installed.
pub async fn start_etcd(directory: &TempDir) -> EtcdProcess {
    match EtcdProcess::start(&directory.path().join("etcd")).await {
        Ok(etcd) => etcd,
        Err(error) => panic!("cannot run the etcd tests: {error}"),
    }
}

pub async fn etcd_client_for(etcd: &EtcdProcess, prefix: &str) -> EtcdTopo {
    EtcdTopo::connect(EtcdConfig::new(vec![etcd.endpoint()], prefix))
        .await
        .expect("connect to test etcd")
}

/// A `TopoServer` running on a localhost socket until stopped or dropped.
pub struct ServerHandle {
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Serves `store` on `address` (or a free port).
    pub async fn start(store: Arc<dyn TopoStore>, address: Option<SocketAddr>) -> ServerHandle {
        let listener =
            TcpListener::bind(address.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr")))
                .await
                .expect("bind topology server");
        let address = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = TopoServer::new(store).serve(listener, shutdown).await {
                panic!("topology server failed: {error}");
            }
        });
        ServerHandle {
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the server down gracefully and waits until it has stopped (bounded).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("topology server did not shut down within 10 s")
                .expect("server task");
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A TCP proxy that can cut every connection and refuse new ones, to simulate a network
/// partition between a client and its server.
pub struct Proxy {
    pub address: SocketAddr,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy addr");
        let (open, _) = watch::channel(true);
        let state = open.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut state = state.clone();
                if !*state.borrow() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Proxy {
            address,
            open,
            task,
        }
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
