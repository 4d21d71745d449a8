//! `tessera up --topo etcd://...`: the local cluster with its topology in an external etcd.

mod support;

use support::{Process, serving_primaries, start_etcd, strings, tessera, walking_skeleton};

#[tokio::test]
async fn up_runs_the_local_cluster_against_an_external_etcd_and_restarts_with_its_data() {
    // Goal: `tessera up --topo etcd://...` keeps its topology in etcd (visible to
    // `tessera status --topo etcd://...`), serves the walking-skeleton SQL, stops on SIGTERM
    // with exit 0, and a second `up` on the same data dir and etcd serves the same data.
    let (dir, etcd) = start_etcd().await;
    let topo = etcd.url("/up");
    let base = support::free_base_port(4);
    let ports = support::free_ports(2);
    let (gate_port, admin_port) = (ports[0], ports[1]);
    let args = strings(&[
        "up",
        "--topo",
        &topo,
        "--shards",
        "2",
        "--replicas",
        "2",
        "--zones",
        "2",
        "--port",
        &gate_port.to_string(),
        "--admin-port",
        &admin_port.to_string(),
        "--metrics-port",
        "0",
        "--base-port",
        &base.to_string(),
        "--data-dir",
        &dir.path().join("cluster").display().to_string(),
        "--unsafe-no-fsync",
    ]);
    let mut up = Process::start("up", args, dir.path()).await;
    let shards = serving_primaries(&["--topo", &topo]).await;
    if let Err(error) = walking_skeleton(gate_port, &shards, "orders").await {
        panic!("{error:#}\n{}", up.log_tail());
    }

    // The topology is in etcd: a separate `status` process finds both tablets there, live.
    let status = tessera(&["status", "--json", "--topo", &topo]).await;
    let status: serde_json::Value = serde_json::from_str(status.ok()).expect("JSON");
    let keyspace = &status["keyspaces"][0];
    assert_eq!(keyspace["name"], "app", "{status}");
    for shard in keyspace["shards"].as_array().expect("shards") {
        let tablets = shard["tablets"].as_array().expect("tablets");
        assert_eq!(tablets.len(), 2, "{status}");
        assert!(tablets.iter().all(|t| t["reachable"] == true), "{status}");
        let primaries = tablets
            .iter()
            .filter(|t| t["role"] == "primary" && t["serving"] == true);
        assert_eq!(primaries.count(), 1, "{status}");
    }

    let status = up.terminate().await;
    assert!(
        status.success(),
        "up exited with {status}\n{}",
        up.log_tail()
    );
    up.restart().await;
    let gate = support::connect(gate_port)
        .await
        .expect("connect after restart");
    let count: i64 = gate
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 19, "rows after restarting up against the same etcd");
    let status = up.terminate().await;
    assert!(
        status.success(),
        "up exited with {status}\n{}",
        up.log_tail()
    );
}
