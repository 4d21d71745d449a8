//! Pooled server connections that died while idle (backend terminated, server restarted) are
//! never handed to a query: the next statement succeeds instead of failing with a lost
//! connection.

use tessera_tests::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_after_idle_server_connections_died_still_succeed() {
    let cluster = TestCluster::start(1, 1).await;
    let client = cluster.client().await;
    client
        .batch_execute("CREATE TABLE t (tenant_id bigint PRIMARY KEY)")
        .await
        .unwrap();
    // Fill the pool with several idle connections.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(cluster.client().await);
    }
    let warmups: Vec<_> = clients
        .iter()
        .map(|c| c.query_one("SELECT pg_sleep(0.05)::text, 1", &[]))
        .collect();
    for result in futures::future::join_all(warmups).await {
        result.unwrap();
    }
    // Kill every pooled server connection behind Tessera's back.
    let direct = cluster.shard_primary_client("-").await;
    let killed: i64 = direct
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name LIKE 'tessera-pooler%') t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "expected pooled connections to terminate");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for (n, client) in clients.iter().enumerate() {
        client
            .execute("INSERT INTO t VALUES ($1)", &[&(n as i64)])
            .await
            .unwrap_or_else(|e| panic!("statement {n} after the kill failed: {e}"));
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, clients.len() as i64);
    cluster.stop().await;
}
