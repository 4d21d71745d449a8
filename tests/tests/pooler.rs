//! The tablet pooler endpoint on its own: transaction pooling with named prepared statements
//! and session settings that survive the change of server connection.

use tessera_tests::{TestCluster, connect, sqlstate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_and_settings_survive_transaction_pooling() {
    let cluster = TestCluster::start(1, 1).await;
    let tablet = cluster.tablets().await.remove(0);
    let url = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/app",
        tablet.pooler_port
    );
    let setup = connect(&url).await;
    setup
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    // More clients than the pool has connections (40): each client's transactions land on
    // whatever server connection is free, so statements and settings must follow the client.
    let mut clients = Vec::new();
    for _ in 0..48 {
        clients.push(connect(&url).await);
    }
    for (n, client) in clients.iter().enumerate() {
        if n % 2 == 0 {
            client
                .batch_execute("SET application_name = 'even'")
                .await
                .unwrap();
        }
    }
    let mut tasks = Vec::new();
    for (n, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let statement = client
                .prepare("SELECT v, current_setting('application_name') FROM items WHERE id = $1")
                .await
                .unwrap();
            for round in 0..20 {
                let id = ((n + round) % 50 + 1) as i32;
                let row = client.query_one(&statement, &[&id]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("v{id}"));
                let name: String = row.get(1);
                assert_eq!(
                    name == "even",
                    n % 2 == 0,
                    "client {n} saw application_name {name:?}"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // A transaction keeps its connection: a temp object lives until the end of it.
    let client = connect(&url).await;
    client
        .batch_execute("BEGIN; CREATE TEMP TABLE scratch (x int) ON COMMIT DROP; INSERT INTO scratch VALUES (1);")
        .await
        .unwrap();
    let x: i32 = client
        .query_one("SELECT x FROM scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 1);
    client.batch_execute("COMMIT").await.unwrap();
    // Wrong database on the pooler: 3D000.
    let error = tokio_postgres::connect(
        &format!(
            "postgres://postgres:postgres@127.0.0.1:{}/other",
            tablet.pooler_port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("unknown database");
    assert_eq!(sqlstate(&error), "3D000");
    cluster.stop().await;
}
