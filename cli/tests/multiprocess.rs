//! Tessera as separate processes on a real etcd: every tablet, the coordinator and the gate are
//! their own `tessera` process, started by the test (see `support::Deployment`).

mod support;

use std::time::Duration;

use support::{Deployment, eventually, fetch_metrics, tessera, write_and_read};

/// How long the cluster may take to serve again after a component restarts.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn separate_processes_serve_the_walking_skeleton_sql() {
    // Goal: a gate process routes DDL, multi-shard writes, single-shard and scatter reads,
    // UPDATE and DELETE to tablet processes it found through etcd, and rows land on the shard
    // PostgreSQL itself says owns them.
    let deployment = Deployment::start(2).await;
    deployment.run_walking_skeleton().await;

    // The admin view agrees: both tablets registered, each named primary of its shard by the
    // provisional bootstrap.
    let listed = tessera(&["tablet", "list", "--json", "--topo", &deployment.topo]).await;
    let tablets: serde_json::Value = serde_json::from_str(listed.ok()).expect("JSON");
    let tablets = tablets.as_array().expect("array");
    assert_eq!(tablets.len(), 2, "{tablets:?}");
    assert!(tablets.iter().all(|t| t["primary"] == true), "{tablets:?}");

    // The gate's Prometheus endpoint reports its client connections.
    let metrics = fetch_metrics(deployment.metrics_port)
        .await
        .expect("metrics endpoint");
    assert!(
        metrics.contains("tessera_gate_client_connections"),
        "{metrics}"
    );
    // Statement counters are registered once per gate; they must count on the real recorder.
    for protocol in ["simple", "extended"] {
        let prefix = format!("tessera_gate_queries_total{{protocol=\"{protocol}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"));
        assert!(count > 0.0, "{protocol} statements not counted: {metrics}");
    }
    deployment.stop().await;
}

#[tokio::test]
async fn killed_components_restart_and_the_cluster_converges() {
    // Goal: SIGKILL of the gate, of a tablet and of the coordinator, each followed by a restart
    // of the same command, leaves a cluster that serves reads and writes again, with the rows
    // written before the crashes still there.
    let mut deployment = Deployment::start(2).await;
    let port = deployment.gate_port;
    deployment.run_walking_skeleton().await;
    let shard0_tenants = deployment.tenants_of_shard(0, 100..200).await;
    let mut tenants = shard0_tenants.into_iter();
    let mut next_tenant = move || tenants.next().expect("enough tenants on shard 0");

    // Gate: clients reconnect to the restarted process.
    deployment.gate.kill().await;
    assert!(
        support::connect(port).await.is_err(),
        "the killed gate still accepts connections"
    );
    deployment.gate.restart().await;
    let tenant = next_tenant();
    eventually("writes after a gate restart", CONVERGE_TIMEOUT, || {
        write_and_read(port, "orders", tenant)
    })
    .await;

    // Tablet of shard 0: its PostgreSQL dies with it (parent-death signal), the restarted
    // tablet adopts the data dir and is primary again; the gate's stale connections recover.
    let tablet = deployment.tablet("zone1-101");
    tablet.kill().await;
    tablet.restart().await;
    let tenant = next_tenant();
    eventually("writes to a restarted tablet", CONVERGE_TIMEOUT, || {
        write_and_read(port, "orders", tenant)
    })
    .await;

    // Coordinator: restarts cleanly (it holds no state yet), and the cluster keeps serving.
    let coordinator = &mut deployment.coordinators[0];
    coordinator.kill().await;
    coordinator.restart().await;
    let tenant = next_tenant();
    eventually(
        "writes after a coordinator restart",
        CONVERGE_TIMEOUT,
        || write_and_read(port, "orders", tenant),
    )
    .await;

    // Nothing written before the crashes was lost: 19 skeleton rows plus three new ones. (Read
    // once the cluster has settled: a restarted coordinator may still be establishing terms.)
    let count = eventually(
        "a scatter read after the restarts",
        CONVERGE_TIMEOUT,
        || async {
            let gate = support::connect(port).await?;
            Ok(gate
                .query_one("SELECT count(*) FROM orders", &[])
                .await?
                .get::<_, i64>(0))
        },
    )
    .await;
    assert_eq!(count, 22, "{}", deployment.logs());
    deployment.stop().await;
}
