//! Memory per idle client connection: the resident set of the target's process before and
//! after thousands of authenticated, idle client connections are opened.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use tokio_postgres::NoTls;

use crate::system::rss_kib;
use crate::targets::Target;

/// Connections opened at once while building up the idle set.
const CONNECT_CONCURRENCY: usize = 32;
/// Time given to the target to settle before each reading.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    pub target: String,
    pub clients: usize,
    pub rss_before_kib: u64,
    /// Everyone connected, authenticated, idle.
    pub rss_idle_kib: u64,
    /// Every connection then ran one point select and went idle again.
    pub rss_after_query_kib: u64,
    /// After every connection closed.
    pub rss_closed_kib: u64,
    pub connect_seconds: f64,
}

impl MemoryResult {
    pub fn idle_bytes_per_client(&self) -> f64 {
        per_client(self.rss_idle_kib, self.rss_before_kib, self.clients)
    }

    pub fn after_query_bytes_per_client(&self) -> f64 {
        per_client(self.rss_after_query_kib, self.rss_before_kib, self.clients)
    }
}

fn per_client(after_kib: u64, before_kib: u64, clients: usize) -> f64 {
    (after_kib as f64 - before_kib as f64) * 1024.0 / clients.max(1) as f64
}

/// Opens `clients` idle connections to `target` and reads its process's RSS along the way.
pub async fn measure(target: &Target, clients: usize) -> anyhow::Result<MemoryResult> {
    let url = target.url();
    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss_kib(target.pid)?;
    let started = Instant::now();
    let connected: Vec<Result<tokio_postgres::Client, tokio_postgres::Error>> =
        futures::stream::iter(0..clients)
            .map(|_| {
                let url = url.clone();
                async move {
                    let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    Ok(client)
                }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let connections: Vec<tokio_postgres::Client> = connected
        .into_iter()
        .collect::<Result<_, _>>()
        .with_context(|| format!("opening {clients} connections to {}", target.label()))?;
    tokio::time::sleep(SETTLE).await;
    let rss_idle_kib = rss_kib(target.pid)?;
    let queried: Vec<Result<_, _>> = futures::stream::iter(connections.iter().enumerate())
        .map(|(index, client)| async move {
            client
                .simple_query(&format!(
                    "SELECT abalance FROM pgbench_accounts WHERE aid = {}",
                    index % 100_000 + 1
                ))
                .await
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    for result in queried {
        result
            .with_context(|| format!("point select on an idle connection to {}", target.label()))?;
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after_query_kib = rss_kib(target.pid)?;
    drop(connections);
    tokio::time::sleep(SETTLE).await;
    let rss_closed_kib = rss_kib(target.pid)?;
    Ok(MemoryResult {
        target: target.label(),
        clients,
        rss_before_kib,
        rss_idle_kib,
        rss_after_query_kib,
        rss_closed_kib,
        connect_seconds,
    })
}
