//! Bad input to the runners and admin verbs: an unreachable or frozen etcd at start-up, invalid
//! topology URLs, corrupt and unknown records. Each gets one clear line and exit status 1,
//! never a panic or a hang, and no record is changed by a command that failed.

mod support;

use std::time::{Duration, Instant};

use support::{Finished, free_ports, short_temp_dir, start_etcd, tessera};
use tessera_topology::Topology;

/// Tablet arguments that would work against a reachable topology (nothing starts PostgreSQL
/// before the topology answered).
fn tablet_args(topo: &str, data_dir: &str) -> Vec<String> {
    let ports = free_ports(3);
    support::strings(&[
        "tablet",
        "--topo",
        topo,
        "--shard",
        "-80",
        "--pg-port",
        &ports[0].to_string(),
        "--pooler-port",
        &ports[1].to_string(),
        "--grpc-port",
        &ports[2].to_string(),
        "--data-dir",
        data_dir,
    ])
}

/// Runs every command concurrently and returns their outcomes with the slowest duration.
async fn run_all(commands: &[Vec<String>]) -> (Vec<Finished>, Duration) {
    let started = Instant::now();
    let outcomes = futures::future::join_all(commands.iter().map(|args| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        async move { tessera(&args).await }
    }))
    .await;
    (outcomes, started.elapsed())
}

fn every_component(topo: &str, data_dir: &str) -> Vec<Vec<String>> {
    let gate_port = free_ports(1)[0].to_string();
    vec![
        support::strings(&[
            "gate",
            "--topo",
            topo,
            "--listen",
            &format!("127.0.0.1:{gate_port}"),
        ]),
        tablet_args(topo, data_dir),
        support::strings(&["coordinator", "--topo", topo]),
        support::strings(&["keyspace", "list", "--topo", topo]),
        support::strings(&["shard", "list", "--topo", topo]),
    ]
}

/// Creates keyspace `app` (2 shards) through the binary; returns a raw handle on the store.
async fn with_keyspace_app(topo: &str) -> std::sync::Arc<dyn tessera_topology::TopoStore> {
    tessera(&["keyspace", "create", "app", "--topo", topo])
        .await
        .ok();
    tessera_topology::connect(topo).await.expect("connect")
}

#[tokio::test]
async fn an_unreachable_etcd_at_start_fails_fast_with_one_line() {
    // Goal: every runner and admin verb pointed at a closed port exits 1 within seconds with
    // one line saying the topology is unavailable.
    let dir = short_temp_dir();
    let closed = format!("etcd://127.0.0.1:{}/x", free_ports(1)[0]);
    let (outcomes, elapsed) = run_all(&every_component(
        &closed,
        &dir.path().join("t").display().to_string(),
    ))
    .await;
    for outcome in &outcomes {
        let line = outcome.failed();
        assert!(
            line.contains("cannot open the topology at etcd://") && line.contains("unavailable"),
            "{line}"
        );
    }
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(
        !dir.path().join("t").exists(),
        "a tablet touched its data dir without a topology"
    );
}

#[tokio::test]
async fn a_frozen_etcd_at_start_fails_within_bounds() {
    // Goal: an etcd that accepts connections but never answers (SIGSTOP) is reported like an
    // unreachable one instead of hanging the process.
    let (dir, etcd) = start_etcd().await;
    etcd.suspend().expect("SIGSTOP etcd");
    let (outcomes, elapsed) = run_all(&every_component(
        &etcd.url("/x"),
        &dir.path().join("t").display().to_string(),
    ))
    .await;
    etcd.resume().expect("SIGCONT etcd");
    for outcome in &outcomes {
        assert!(
            outcome.failed().contains("unavailable"),
            "{}",
            outcome.stderr
        );
    }
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
}

#[tokio::test]
async fn invalid_topology_urls_are_named_before_anything_starts() {
    // Goal: malformed URLs are rejected with the URL and the reason, by runners and admin verbs.
    let dir = short_temp_dir();
    for url in [
        "etcd:/127.0.0.1:2379",
        "etcd://",
        "zk://127.0.0.1:2181",
        "file://relative/topo.json",
        "etcd://host:port",
    ] {
        let (outcomes, _) = run_all(&every_component(
            url,
            &dir.path().join("t").display().to_string(),
        ))
        .await;
        for outcome in &outcomes {
            let line = outcome.failed();
            assert!(
                line.contains("invalid topology URL") && line.contains(url),
                "{url}: {line}"
            );
        }
    }
}

#[tokio::test]
async fn corrupt_records_are_reported_by_name_and_left_untouched() {
    // Goal: a shard record that is not valid JSON makes the admin verbs, the gate and a tablet
    // of that shard fail with one line naming the key, and none of them rewrites it or any
    // other record.
    let (dir, etcd) = start_etcd().await;
    let topo = etcd.url("/c");
    let store = with_keyspace_app(&topo).await;
    let corrupt_key = "/tessera/keyspaces/app/shards/-80";
    store
        .update(
            corrupt_key,
            b"{\"keyspace\": \"app\", \"name\"".to_vec(),
            None,
        )
        .await
        .expect("corrupt");
    let before = store.list("/tessera/").await.expect("list");

    let data_dir = dir.path().join("t").display().to_string();
    let gate_port = free_ports(1)[0].to_string();
    let commands = vec![
        support::strings(&["shard", "list", "--keyspace", "app", "--topo", &topo]),
        support::strings(&["keyspace", "list", "--topo", &topo]),
        support::strings(&["tablet", "list", "--topo", &topo]),
        support::strings(&[
            "gate",
            "--topo",
            &topo,
            "--listen",
            &format!("127.0.0.1:{gate_port}"),
        ]),
        tablet_args(&topo, &data_dir),
    ];
    let (outcomes, _) = run_all(&commands).await;
    for (command, outcome) in commands.iter().zip(&outcomes) {
        let line = outcome.failed();
        assert!(
            line.contains(&format!("topology record {corrupt_key} is corrupt")),
            "{command:?}: {line}"
        );
    }
    assert_eq!(
        store.list("/tessera/").await.expect("list"),
        before,
        "a failed command changed the topology"
    );
}

#[tokio::test]
async fn unknown_records_and_fields_are_ignored() {
    // Goal: keys and record fields written by a newer version do not break the admin verbs.
    let (_dir, etcd) = start_etcd().await;
    let topo = etcd.url("/u");
    let store = with_keyspace_app(&topo).await;
    store
        .create("/tessera/future/feature", b"whatever".to_vec())
        .await
        .expect("unknown key");
    store
        .create("/tessera/keyspaces/app/routing_rules", b"[]".to_vec())
        .await
        .expect("unknown key");
    let topology = Topology::new(store.clone());
    let (shard, version) = topology.get_shard("app", "80-").await.expect("shard");
    let mut value: serde_json::Value = serde_json::to_value(&shard).expect("json");
    value["added_later"] = serde_json::json!({"x": 1});
    store
        .update(
            "/tessera/keyspaces/app/shards/80-",
            serde_json::to_vec(&value).expect("json"),
            Some(version),
        )
        .await
        .expect("extended record");

    let keyspaces = tessera(&["keyspace", "list", "--json", "--topo", &topo]).await;
    let keyspaces: serde_json::Value = serde_json::from_str(keyspaces.ok()).expect("JSON");
    assert_eq!(
        keyspaces[0]["shards"],
        serde_json::json!(["-80", "80-"]),
        "{keyspaces}"
    );
    let shards = tessera(&["shard", "list", "--keyspace", "app", "--topo", &topo]).await;
    assert!(shards.ok().contains("80-"), "{}", shards.stdout);
}

#[tokio::test]
async fn up_names_a_metrics_port_that_a_tablet_would_use_before_starting_anything() {
    // Goal: `--metrics-port` equal to a tablet's PostgreSQL port is refused with the flag, the
    // port and the tablet named, before any PostgreSQL starts (as for `--port`).
    let dir = short_temp_dir();
    let data_dir = dir.path().join("cluster").display().to_string();
    let ports = free_ports(2);
    let outcome = tessera(&[
        "up",
        "--data-dir",
        &data_dir,
        "--port",
        &ports[0].to_string(),
        "--admin-port",
        &ports[1].to_string(),
        "--base-port",
        "25432",
        "--metrics-port",
        "25432",
    ])
    .await;
    let line = outcome.failed();
    assert!(
        line.contains("--metrics-port 25432 is also the PostgreSQL port of tablet zone1-101"),
        "{line}"
    );
    assert!(
        !dir.path().join("cluster").join("zone1-101").exists(),
        "a tablet directory was created before the refusal"
    );
}
