//! Admin verbs through the binary, against both topology backends: a real etcd, and the
//! embedded store that `tessera up` serves on its admin endpoint (`--topo memory --admin`).

mod support;

use std::sync::Arc;

use support::{free_ports, start_etcd, tessera};
use tessera_topology::records::TabletRecord;
use tessera_topology::{MemoryTopo, TopoServer, TopoStore, Topology};

/// Runs the same admin scenario given the flags that select the backend and a handle on the
/// same store (to register tablets the way a tablet process would).
async fn admin_scenario(backend: &[&str], topology: &Topology) {
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(backend.iter().map(|a| a.to_string()));
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            tessera(&all).await
        }
    };

    let empty = run(&["keyspace", "list"]).await;
    assert!(empty.ok().contains("no keyspaces"), "{}", empty.stdout);

    let created = run(&[
        "keyspace",
        "create",
        "app",
        "--shards",
        "4",
        "--policy",
        "multi_zone(2)",
    ])
    .await;
    assert!(
        created
            .ok()
            .contains("with 4 shard(s): -40, 40-80, 80-c0, c0-"),
        "{}",
        created.stdout
    );
    run(&[
        "keyspace",
        "create",
        "billing",
        "--sharding-column",
        "account_id",
        "--shards",
        "1",
    ])
    .await
    .ok();

    // Wrong-state requests: precise messages, nothing changed.
    let again = run(&["keyspace", "create", "app", "--shards", "2"]).await;
    assert!(
        again.failed().contains(
            "keyspace app already exists (shards: -40, 40-80, 80-c0, c0-); nothing changed"
        )
    );
    let missing = run(&["shard", "list", "--keyspace", "nope"]).await;
    assert!(
        missing
            .failed()
            .contains("keyspace nope does not exist (keyspaces: app, billing)")
    );

    let listed = run(&["keyspace", "list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(listed.ok()).expect("JSON");
    assert_eq!(listed[0]["name"], "app");
    assert_eq!(listed[0]["shards"].as_array().map(Vec::len), Some(4));
    assert_eq!(listed[1]["sharding_column"], "account_id");
    assert_eq!(listed[1]["shards"], serde_json::json!(["-"]));

    let no_tablets = run(&["tablet", "list"]).await;
    assert!(no_tablets.ok().contains("no tablets registered"));

    // Tablets register themselves; the listings show them, filtered, with the primary hint.
    for (id, zone, shard) in [("zone1-101", "zone1", "-40"), ("zone2-102", "zone2", "-40")] {
        topology
            .register_tablet(&TabletRecord {
                id: id.into(),
                zone: zone.into(),
                keyspace: "app".into(),
                shard: shard.into(),
                host: "127.0.0.1".into(),
                postgres_port: 1,
                pooler_port: 2,
                grpc_port: 3,
                data_dir: String::new(),
            })
            .await
            .expect("register");
    }
    topology
        .update_shard("app", "-40", |shard| {
            shard.primary = Some("zone1-101".into());
            Ok::<_, tessera_topology::TopoError>(())
        })
        .await
        .expect("primary hint");
    let zone2 = run(&["tablet", "list", "--zone", "zone2", "--json"]).await;
    let zone2: serde_json::Value = serde_json::from_str(zone2.ok()).expect("JSON");
    assert_eq!(zone2.as_array().map(Vec::len), Some(1), "{zone2}");
    assert_eq!(zone2[0]["id"], "zone2-102");
    assert_eq!(zone2[0]["primary"], false);
    let shards = run(&["shard", "list", "--keyspace", "app", "--json"]).await;
    let shards: serde_json::Value = serde_json::from_str(shards.ok()).expect("JSON");
    assert_eq!(shards[0]["primary"], "zone1-101");
    assert_eq!(shards[0]["policy"], "multi_zone(2)");
    assert_eq!(
        shards[0]["tablets"],
        serde_json::json!(["zone1-101", "zone2-102"])
    );
    let table = run(&["shard", "list", "--keyspace", "app"]).await;
    assert!(
        table
            .ok()
            .lines()
            .any(|l| l.starts_with("-40 ") && l.contains("zone1-101 zone2-102")),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn admin_verbs_work_against_etcd() {
    // Goal: keyspace create/list, shard list and tablet list read and write a real etcd.
    let (_dir, etcd) = start_etcd().await;
    let url = etcd.url("/admin");
    let topology = Topology::new(tessera_topology::connect(&url).await.expect("connect"));
    admin_scenario(&["--topo", &url], &topology).await;
}

#[tokio::test]
async fn admin_verbs_work_against_the_embedded_store_of_tessera_up() {
    // Goal: with `--topo memory`, the verbs reach the store a running `tessera up` serves on
    // its admin endpoint (here a TopoServer over an in-memory store, as `up` runs it).
    let store: Arc<dyn TopoStore> = Arc::new(MemoryTopo::new());
    let port = free_ports(1)[0];
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(TopoServer::new(store.clone()).serve(listener, async {
        let _ = stopped.await;
    }));
    let admin = format!("127.0.0.1:{port}");
    admin_scenario(
        &["--topo", "memory", "--admin", &admin],
        &Topology::new(store),
    )
    .await;
    let _ = stop.send(());
    server.await.expect("server task").expect("server");
}

#[tokio::test]
async fn admin_verbs_explain_a_missing_up_process() {
    // Goal: `--topo memory` without a running `tessera up` says so instead of a transport error.
    let closed = format!("127.0.0.1:{}", free_ports(1)[0]);
    let outcome = tessera(&["keyspace", "list", "--topo", "memory", "--admin", &closed]).await;
    assert!(
        outcome.failed().contains("is the cluster running?"),
        "{}",
        outcome.stderr
    );
}
