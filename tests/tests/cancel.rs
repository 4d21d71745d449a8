//! A CancelRequest sent to the gate reaches the shard running the client's query.

use std::time::{Duration, Instant};

use tessera_tests::{TestCluster, sqlstate};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_interrupts_a_running_query() {
    let cluster = TestCluster::start(1, 1).await;
    let client = cluster.client().await;
    let token = client.cancel_token();
    let started = Instant::now();
    let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    token.cancel_query(NoTls).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the query must end soon after the cancel")
        .unwrap();
    let error = result.expect_err("a cancelled query fails");
    assert_eq!(sqlstate(&error), "57014");
    assert!(started.elapsed() < Duration::from_secs(15));
    cluster.stop().await;
}
