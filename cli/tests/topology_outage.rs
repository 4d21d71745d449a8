//! Topology trouble: the query path never waits on etcd (ARCHITECTURE.md §6). Gates keep
//! serving from their cached shard map while etcd is frozen or down, and pick up changes once
//! it is back.

mod support;

use std::time::Duration;

use support::{Deployment, eventually, write_and_read};

/// Generous bound for a query while etcd is away; a query that waits on the topology would hit
/// the topology client's own timeouts (5 s) or hang.
const QUERY_TIMEOUT: Duration = Duration::from_secs(4);

async fn bounded(what: &str, work: impl Future<Output = anyhow::Result<()>>) {
    match tokio::time::timeout(QUERY_TIMEOUT, work).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("{what}: {error:#}"),
        Err(_) => panic!("{what}: no answer within {QUERY_TIMEOUT:?}"),
    }
}

#[tokio::test]
async fn gate_serves_from_its_cached_shard_map_while_etcd_is_frozen_or_down() {
    // Goal: with etcd frozen (SIGSTOP: connections hang) and then killed (connections refused),
    // reads and writes through the gate keep working on every shard, promptly; after etcd
    // returns, the gate follows topology changes again (a new table created through the gate
    // is routed).
    let mut deployment = Deployment::start(2).await;
    let port = deployment.gate_port;
    deployment.run_walking_skeleton().await;
    let mut tenants = Vec::new();
    for shard in 0..2 {
        tenants.extend(
            deployment
                .tenants_of_shard(shard, 1000..1100)
                .await
                .into_iter()
                .take(2),
        );
    }

    deployment.etcd.suspend().expect("SIGSTOP etcd");
    // Long enough for watches and keepalives to notice the silence.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for &tenant in &tenants[..2] {
        bounded(
            "write while etcd is frozen",
            write_and_read(port, "orders", tenant),
        )
        .await;
    }
    bounded("scatter read while etcd is frozen", count_is(port, 21)).await;
    deployment.etcd.resume().expect("SIGCONT etcd");

    deployment.etcd.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for &tenant in &tenants[2..] {
        bounded(
            "write while etcd is down",
            write_and_read(port, "orders", tenant),
        )
        .await;
    }
    bounded("scatter read while etcd is down", count_is(port, 23)).await;

    deployment.etcd.restart().await.expect("restart etcd");
    // DDL updates the vschema in the topology, and routing the new table needs the gate to see
    // it: both work again once the gate's watch has resumed.
    eventually(
        "a new table after etcd is back",
        Duration::from_secs(30),
        || async {
            let gate = support::connect(port).await?;
            gate.batch_execute("CREATE TABLE IF NOT EXISTS items (tenant_id bigint, id bigint)")
                .await?;
            gate.execute("INSERT INTO items VALUES (1, 1), (2, 2), (3, 3)", &[])
                .await?;
            let count: i64 = gate
                .query_one("SELECT count(*) FROM items", &[])
                .await?
                .get(0);
            anyhow::ensure!(count >= 3, "items has {count} rows");
            Ok(())
        },
    )
    .await;
    deployment.stop().await;
}

async fn count_is(port: u16, expected: i64) -> anyhow::Result<()> {
    let gate = support::connect(port).await?;
    let count: i64 = gate
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    anyhow::ensure!(count == expected, "count(*) = {count}, expected {expected}");
    Ok(())
}

#[tokio::test]
async fn failover_during_a_topology_outage() {
    // Goal (issue 5, "survives topology trouble"): with etcd stopped, killing a shard's primary
    // tablet must not stop writes for long: the coordinator fails over from tablet state alone
    // and the gate follows the tablets' health streams. Three tablets: under at_least_n(2) the
    // survivors must still form a durability group.
    let mut deployment = Deployment::start_with_replicas(1, 3).await;
    let port = deployment.gate_port;
    deployment.run_walking_skeleton().await;
    // Find the primary while the topology still answers `tessera status`.
    let primary = deployment.shard_ports().await[0].tablet.clone();
    deployment.etcd.stop();
    deployment.tablet(&primary).kill().await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(40),
        eventually(
            "writes after failover during an etcd outage",
            Duration::from_secs(30),
            || write_and_read(port, "orders", 4242),
        ),
    );
    let result = std::panic::AssertUnwindSafe(outcome);
    if futures::FutureExt::catch_unwind(result).await.is_err() {
        panic!(
            "no failover during the etcd outage; component logs:\n{}",
            deployment.logs()
        );
    }
}
