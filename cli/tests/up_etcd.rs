//! `tessera up --topo etcd://...`: the local cluster with its topology in an external etcd.

mod support;

use support::{Process, ShardPort, short_temp_dir, strings, tessera, walking_skeleton};
use tessera_proto::keyrange::KeyRange;
use tessera_topology::etcd_process::EtcdProcess;

/// A base port such that base+i, base+1000+i and base+2000+i are free for i < `count`.
fn free_base_port(count: u16) -> u16 {
    for _ in 0..200 {
        let base = 20_000 + rand_offset() % 20_000;
        let ports = (0..count).flat_map(|i| [base + i, base + 1000 + i, base + 2000 + i]);
        let held: Result<Vec<_>, _> = ports
            .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)))
            .collect();
        if held.is_ok() {
            return base;
        }
    }
    panic!("no free port range found");
}

fn rand_offset() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ std::process::id()) as u16
}

#[tokio::test]
async fn up_runs_the_local_cluster_against_an_external_etcd_and_restarts_with_its_data() {
    // Goal: `tessera up --topo etcd://...` keeps its topology in etcd (visible to
    // `tessera status --topo etcd://...`), serves the walking-skeleton SQL, stops on SIGTERM
    // with exit 0, and a second `up` on the same data dir and etcd serves the same data.
    let dir = short_temp_dir();
    let etcd = EtcdProcess::start(&dir.path().join("etcd"))
        .await
        .expect("etcd");
    let topo = etcd.url("/up");
    let base = free_base_port(2);
    let ports = support::free_ports(2);
    let (gate_port, admin_port) = (ports[0], ports[1]);
    let args = strings(&[
        "up",
        "--topo",
        &topo,
        "--shards",
        "2",
        "--replicas",
        "1",
        "--zones",
        "1",
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
    let shards: Vec<ShardPort> = KeyRange::split_evenly(2)
        .expect("split")
        .into_iter()
        .zip([base, base + 1])
        .map(|(range, postgres_port)| ShardPort {
            range,
            postgres_port,
        })
        .collect();
    if let Err(error) = walking_skeleton(gate_port, &shards, "orders").await {
        panic!("{error:#}\n{}", up.log_tail());
    }

    // The topology is in etcd: a separate `status` process finds both tablets there, live.
    let status = tessera(&["status", "--json", "--topo", &topo]).await;
    let status: serde_json::Value = serde_json::from_str(status.ok()).expect("JSON");
    let keyspace = &status["keyspaces"][0];
    assert_eq!(keyspace["name"], "app", "{status}");
    for shard in keyspace["shards"].as_array().expect("shards") {
        let tablet = &shard["tablets"][0];
        assert_eq!(tablet["role"], "primary", "{status}");
        assert_eq!(tablet["serving"], true, "{status}");
        assert_eq!(tablet["reachable"], true, "{status}");
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
