//! Component runners: `tessera gate`, `tessera tablet` and `tessera coordinator` run one
//! component each as its own process, the way operators deploy Tessera (ARCHITECTURE.md §6).
//!
//! Every runner has one configuration struct ([`config::ComponentConfig`]) that a TOML file
//! (`--config`), environment variables and flags map onto, in that order of precedence
//! (flags win). Each runner validates it, binds its listeners (so a taken port fails at once),
//! connects to the topology, prints one `ready: ...` line on stdout when it serves, and shuts
//! down cleanly on SIGINT or SIGTERM. Errors end the process with one line on stderr and a
//! non-zero exit status.

pub mod config;
pub mod coordinator;
pub mod gate;
pub mod tablet;

use std::net::SocketAddr;

use anyhow::Context;
use tessera_topology::Topology;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, registered when created. Why not `tokio::signal::ctrl_c()`: it installs
/// its handler only when first polled, and a runner polls its shutdown future only once it
/// serves; a Ctrl-C during a long start (initdb) would then kill the process without cleanup.
pub struct ShutdownSignal {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignal {
    pub fn install() -> anyhow::Result<ShutdownSignal> {
        Ok(ShutdownSignal {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Resolves at the first SIGINT or SIGTERM (also one that arrived before this is polled).
    pub async fn received(mut self) {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down");
    }
}

/// Binds a listener, naming the port's purpose when it is taken.
pub async fn bind(address: SocketAddr, purpose: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{address} ({purpose}) is already in use: stop the process using it or choose another port"
            )
        } else {
            anyhow::anyhow!("cannot listen on {address} ({purpose}): {error}")
        }
    })
}

/// Connects to the topology; bounded in time (an unreachable etcd fails within seconds).
pub async fn connect_topology(url: &str) -> anyhow::Result<Topology> {
    let store = tessera_topology::connect(url)
        .await
        .with_context(|| format!("cannot open the topology at {url}"))?;
    Ok(Topology::new(store))
}

/// Starts the Prometheus endpoint when configured.
pub fn serve_metrics(address: Option<SocketAddr>) -> anyhow::Result<()> {
    match address {
        Some(address) => crate::telemetry::serve_metrics(address).map_err(anyhow::Error::msg),
        None => Ok(()),
    }
}

/// The line scripts and tests wait for: the component serves from now on.
pub fn announce_ready(what: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    // stdout may be a pipe that a supervisor closed; readiness is also logged.
    let _ = writeln!(stdout, "ready: {what}");
    let _ = stdout.flush();
    tracing::info!("ready: {what}");
}
