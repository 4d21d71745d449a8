//! In-doubt distributed transactions left by a crashed gate are resolved by recovery: committed
//! when the coordinator shard recorded the decision, rolled back otherwise.

use std::time::{Duration, Instant};

use tessera_tests::{TestCluster, temp_dir, test_options};

async fn wait_until_resolved(client: &tokio_postgres::Client, gid: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
                &[&gid],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{gid} still prepared after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_commits_decided_and_aborts_undecided_prepared_transactions() {
    tessera_tests::init_tracing();
    let dir = temp_dir();
    let mut options = test_options(dir.path(), 2, 1);
    options.gate.twopc_recovery_interval_ms = 200;
    options.gate.twopc_recovery_age_ms = 500;
    let cluster = TestCluster::start_with(dir, options).await;
    let client = cluster.client().await;
    client
        .batch_execute("CREATE TABLE t (tenant_id bigint PRIMARY KEY, v text)")
        .await
        .unwrap();
    let participant = cluster.shard_primary_client("80-").await;
    let coordinator = cluster.shard_primary_client("-80").await;

    // A gate crashed after PREPARE and after deciding 'commit' on the coordinator shard.
    let committed = "tessera:app:-80:deadgate:1:1";
    participant
        .batch_execute(&format!(
            "BEGIN; INSERT INTO t VALUES (1001, 'decided'); PREPARE TRANSACTION '{committed}'"
        ))
        .await
        .unwrap();
    coordinator
        .execute(
            "INSERT INTO tessera.twopc_decisions (gid, decision) VALUES ($1, 'commit')",
            &[&committed],
        )
        .await
        .unwrap();
    // A gate crashed after PREPARE but before any decision.
    let undecided = "tessera:app:-80:deadgate:1:2";
    participant
        .batch_execute(&format!(
            "BEGIN; INSERT INTO t VALUES (1002, 'undecided'); PREPARE TRANSACTION '{undecided}'"
        ))
        .await
        .unwrap();

    wait_until_resolved(&participant, committed).await;
    wait_until_resolved(&participant, undecided).await;
    let rows: Vec<i64> = participant
        .query("SELECT tenant_id FROM t ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec![1001],
        "decided commit applied, undecided one rolled back"
    );
    // Recovery recorded its 'abort', so a late gate cannot decide 'commit' any more.
    let decision: String = coordinator
        .query_one(
            "SELECT decision FROM tessera.twopc_decisions WHERE gid = $1",
            &[&undecided],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(decision, "abort");
    cluster.stop().await;
}
