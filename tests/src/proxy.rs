//! A TCP proxy that can be cut, to make network partitions without root privileges.
//!
//! A tablet whose topology record advertises proxy ports instead of its own is reached by
//! every other component through the proxies (coordinators' gRPC status streams and RPCs,
//! standbys' WAL streaming, pg_rewind). Cutting the proxies partitions the tablet from all of
//! them at once, the way a blackholed network would: established connections stall without an
//! error (no RST, no FIN), and new connections are accepted but nothing ever flows, so peers
//! only notice through their own timeouts. Healing drops the stalled connections (as a long
//! partition's TCP timeouts would) and forwards new connections again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Whether traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    Blackhole,
}

/// A running proxy from a local port to `upstream`.
pub struct Proxy {
    port: u16,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let (mode, _) = watch::channel(Mode::Open);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            mode.subscribe(),
            accepted.clone(),
        ));
        Ok(Proxy {
            port,
            upstream,
            mode,
            accepted,
            task,
        })
    }

    /// The port peers connect to instead of the upstream's.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Partitions: every connection stalls, new ones are accepted and never served.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Ends the partition: stalled connections are dropped, new ones flow again.
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Open);
    }

    /// Connections accepted so far (to see that peers really use the proxy).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Acquire)
    }

    pub fn is_cut(&self) -> bool {
        *self.mode.borrow() == Mode::Blackhole
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Stalled connection handlers end when the mode channel closes.
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::AcqRel);
        let _ = client.set_nodelay(true);
        tokio::spawn(serve_connection(client, upstream, mode.clone()));
    }
}

/// Waits until the mode is `wanted`; false when the proxy is gone.
async fn wait_for(mode: &mut watch::Receiver<Mode>, wanted: Mode) -> bool {
    mode.wait_for(|m| *m == wanted).await.is_ok()
}

async fn serve_connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
) {
    if *mode.borrow_and_update() == Mode::Blackhole {
        // Accepted by the kernel but never answered; closed when the partition heals.
        wait_for(&mut mode, Mode::Open).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        let _ = client.shutdown().await;
        return;
    };
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        cut = wait_for(&mut mode, Mode::Blackhole) => {
            if cut {
                // Hold both sockets open without reading or writing until the partition ends.
                wait_for(&mut mode, Mode::Open).await;
            }
        }
    }
}
