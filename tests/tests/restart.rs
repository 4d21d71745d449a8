//! A second start on the same data dir restarts the same cluster with its data and schema.

use tessera_tests::{TestCluster, temp_dir, test_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_dir_keeps_data_and_routing() {
    tessera_tests::init_tracing();
    let dir = temp_dir();
    let options = test_options(dir.path(), 2, 1);
    let cluster = TestCluster::start_with(dir, options.clone()).await;
    let client = cluster.client().await;
    client
        .batch_execute(
            "CREATE TABLE notes (tenant_id bigint, id int, body text, PRIMARY KEY (tenant_id, id));
             CREATE TABLE kinds (id int PRIMARY KEY, label text);
             INSERT INTO kinds VALUES (1, 'memo');",
        )
        .await
        .unwrap();
    for tenant in 1..=20i64 {
        client
            .execute(
                "INSERT INTO notes VALUES ($1, 1, $2)",
                &[&tenant, &format!("n{tenant}")],
            )
            .await
            .unwrap();
    }
    drop(client);
    let TestCluster { cluster, dir } = cluster;
    let first_pids: Vec<u32> = cluster
        .tablets
        .iter()
        .filter_map(|t| t.postgres().pid())
        .collect();
    cluster.stop().await;

    // Same data dir, same options: the layout, topology and PostgreSQL data are adopted.
    let cluster = TestCluster::start_with(dir, options).await;
    let second_pids: Vec<u32> = cluster
        .cluster
        .tablets
        .iter()
        .filter_map(|t| t.postgres().pid())
        .collect();
    assert_ne!(
        first_pids, second_pids,
        "PostgreSQL must really have restarted"
    );
    let client = cluster.client().await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 20);
    // Routing still knows `notes` is sharded: a keyed read goes to one shard and finds its row.
    for tenant in [3i64, 11, 20] {
        let body: String = client
            .query_one("SELECT body FROM notes WHERE tenant_id = $1", &[&tenant])
            .await
            .unwrap()
            .get(0);
        assert_eq!(body, format!("n{tenant}"));
    }
    // And `kinds` is still a reference table: one copy comes back, not one per shard.
    let kinds = client.query("SELECT label FROM kinds", &[]).await.unwrap();
    assert_eq!(kinds.len(), 1);
    // New writes work after the restart.
    client
        .execute("INSERT INTO notes VALUES (99, 1, 'after')", &[])
        .await
        .unwrap();
    cluster.stop().await;
}
