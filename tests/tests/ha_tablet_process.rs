//! L3: kill -9 of a primary *tablet process*. Tablets run as separate processes (what
//! `tessera tablet` runs) on a real etcd; the coordinators (one per zone) and the gate run in
//! the test process, the gate reaching the tablets through their poolers over TCP.

use std::time::Duration;

use tessera_cli::admin::keyspace::CreateArgs;
use tessera_coordinator::CoordinatorConfig;
use tessera_gate::{GateConfig, LocalTablets};
use tessera_tests::ha::{SETTLE_TIMEOUT, ShardWatch, capture_logs};
use tessera_tests::processes::{
    TabletProcess, TabletSpec, free_ports, run_tablet_child_if_requested, start_etcd,
};
use tessera_tests::temp_dir;
use tessera_tests::workload::{Workload, WorkloadOptions, create_table};
use tessera_topology::Topology;
use tokio::sync::watch;

/// Name of the entry point below, which the tablet child processes run.
const CHILD_ENTRY: &str = "tablet_child_process";

#[test]
#[ignore = "not a test: the entry point of the tablet processes the tests here start"]
fn tablet_child_process() {
    run_tablet_child_if_requested();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_tablet_process_fails_over_and_the_restarted_tablet_rejoins() {
    // Goal: SIGKILL of the primary's tablet process (its PostgreSQL dies with it) makes another
    // tablet primary in a new term, writes through the gate resume on it, the restarted
    // process rejoins as a standby, and every acknowledged write is on every copy exactly once.
    capture_logs();
    let dir = temp_dir();
    let etcd = start_etcd(dir.path()).await;
    let topo = etcd.url("/ha");
    let store = tessera_topology::connect(&topo)
        .await
        .expect("connect to etcd");
    let topology = Topology::new(store);
    let create = CreateArgs {
        name: "app".into(),
        sharding_column: "tenant_id".into(),
        shards: 1,
        policy: "at_least_n(2)".into(),
    };
    tessera_cli::admin::keyspace::create(&topology, &create)
        .await
        .expect("create the keyspace");
    let shard = topology
        .list_shards("app")
        .await
        .expect("shards")
        .remove(0)
        .0
        .name;

    // Zone 1 first: it claims the shard and runs initdb; the others copy it.
    let mut tablets: Vec<TabletProcess> = Vec::new();
    for zone in 1..=3 {
        let ports = free_ports(3);
        let id = format!("zone{zone}-10{zone}");
        let spec = TabletSpec {
            dir: dir.path().join(&id),
            id,
            zone: format!("zone{zone}"),
            keyspace: "app".into(),
            shard: shard.clone(),
            postgres_port: ports[0],
            pooler_port: ports[1],
            grpc_port: ports[2],
        };
        tablets.push(TabletProcess::spawn(spec, &topo, CHILD_ENTRY));
        if zone == 1 {
            tablets[0].wait_ready().await;
        }
    }
    for tablet in &mut tablets[1..] {
        tablet.wait_ready().await;
    }

    let (stop, stopped) = watch::channel(false);
    let shutdown = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut tasks = Vec::new();
    for zone in 1..=3 {
        let config = CoordinatorConfig {
            zone: format!("zone{zone}"),
            ..CoordinatorConfig::default()
        };
        let coordinator = tessera_coordinator::run(config, topology.clone(), shutdown());
        tasks.push(tokio::spawn(async move {
            let _ = coordinator.await;
        }));
    }
    let gate_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("gate port");
    let gate_address = gate_listener.local_addr().expect("gate address");
    let gate_config = GateConfig {
        listen: gate_address,
        gate_id: "ha".into(),
        ..GateConfig::default()
    };
    let gate = tessera_gate::run(
        gate_config,
        gate_listener,
        topology.clone(),
        LocalTablets::new(),
        shutdown(),
    );
    tasks.push(tokio::spawn(async move {
        let _ = gate.await;
    }));
    let url = format!("postgres://postgres:postgres@{gate_address}/app");

    let watch = ShardWatch::new(topology.clone(), "app", &shard);
    let logs: Vec<_> = tablets
        .iter()
        .map(|t| (t.spec.id.clone(), t.spec.dir.with_extension("log")))
        .collect();
    watch.add_diagnostics(move || {
        logs.iter()
            .map(|(id, log)| {
                format!(
                    "=== tablet process {id} ===\n{}",
                    tessera_tests::ha::file_tail(log, 25)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let before = watch.wait_settled(&[], SETTLE_TIMEOUT).await;

    let gate = tessera_tests::connect(&url).await;
    create_table(&gate, "tablet_kill")
        .await
        .expect("create the workload table");
    let options = WorkloadOptions {
        attempt_timeout: Duration::from_secs(5),
        ..WorkloadOptions::new("tablet_kill")
    };
    let workload = Workload::start(&url, options, 1);
    watch
        .check(
            "writes before the kill",
            workload.wait_for_more(40, Duration::from_secs(30)).await,
        )
        .await;

    let primary = tablets
        .iter_mut()
        .find(|t| t.spec.id == before.primary)
        .expect("the primary is one of the processes");
    primary.kill().await;
    let (new_primary, term) = watch
        .wait_for_primary(before.term, Duration::from_secs(30))
        .await;
    assert_ne!(new_primary, before.primary, "a killed tablet cannot lead");
    watch
        .check(
            "writes on the new primary",
            workload.wait_for_more(40, Duration::from_secs(30)).await,
        )
        .await;

    // The same command again: the tablet adopts its data dir and must rejoin as a standby.
    let primary = tablets
        .iter_mut()
        .find(|t| t.spec.id == before.primary)
        .expect("old primary");
    primary.restart();
    primary.wait_ready().await;
    watch
        .check(
            "writes after the restart",
            workload.wait_for_more(20, Duration::from_secs(30)).await,
        )
        .await;
    let history = workload.stop().await;
    let after = watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    watch.verify(&history, &after).await;
    assert!(
        after.term >= term,
        "term went back from {term} to {}",
        after.term
    );
    assert!(
        after.replicas.contains(&before.primary),
        "the restarted tablet {} did not rejoin: {after:?}",
        before.primary
    );
    eprintln!(
        "tablet process kill: {} -> {new_primary} in term {term}; {}",
        before.primary,
        history.summary()
    );

    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    for tablet in &mut tablets {
        tablet.stop().await;
    }
    drop(etcd);
}
