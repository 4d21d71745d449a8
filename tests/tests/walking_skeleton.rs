//! The walking skeleton end to end: the issue's SQL through the gate with a real driver, rows
//! placed on the shard that owns their keyspace ID (checked in each shard's own PostgreSQL),
//! scatter merges, transactions, and reference tables.

use std::collections::BTreeSet;

use tessera_proto::keyrange::KeyRange;
use tessera_proto::vindex::{HashFamily, hash_int8, sql_hash_expr};
use tessera_tests::{TestCluster, sqlstate};
use tokio_postgres::SimpleQueryMessage;

const SHARDS: [&str; 2] = ["-80", "80-"];

fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Tenants per shard, computed from the hash and the shard ranges.
fn shard_of(tenant: i64) -> &'static str {
    let id = hash_int8(tenant);
    SHARDS
        .iter()
        .find(|s| s.parse::<KeyRange>().unwrap().contains(id))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issue_sql_runs_with_correct_results_and_rows_live_on_their_shard() {
    let cluster = TestCluster::start(2, 1).await;
    let client = cluster.client().await;
    // The issue's statements, verbatim, over the simple protocol (what psql uses).
    client
        .batch_execute(
            "CREATE TABLE customers (tenant_id bigint, id bigint, name text, PRIMARY KEY (tenant_id, id));
             CREATE TABLE plans (id int PRIMARY KEY, name text);",
        )
        .await
        .unwrap();
    let insert = client
        .simple_query("INSERT INTO customers VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 1, 'c')")
        .await
        .unwrap();
    assert!(matches!(
        insert.last(),
        Some(SimpleQueryMessage::CommandComplete(3))
    ));
    let rows = simple_rows(
        &client
            .simple_query("SELECT * FROM customers WHERE tenant_id = 2")
            .await
            .unwrap(),
    );
    assert_eq!(
        rows,
        vec![vec![Some("2".into()), Some("1".into()), Some("b".into())]]
    );
    let rows = simple_rows(
        &client
            .simple_query("SELECT count(*) FROM customers")
            .await
            .unwrap(),
    );
    assert_eq!(rows, vec![vec![Some("3".into())]]);
    let update = client
        .simple_query("UPDATE customers SET name = 'z' WHERE tenant_id = 3")
        .await
        .unwrap();
    assert!(matches!(
        update.last(),
        Some(SimpleQueryMessage::CommandComplete(1))
    ));
    let delete = client
        .simple_query("DELETE FROM customers WHERE tenant_id = 1")
        .await
        .unwrap();
    assert!(matches!(
        delete.last(),
        Some(SimpleQueryMessage::CommandComplete(1))
    ));

    // Each shard's own PostgreSQL holds exactly the rows whose keyspace ID its range contains.
    let expected: BTreeSet<(i64, String)> = [(2, "b".to_string()), (3, "z".to_string())].into();
    let mut seen = BTreeSet::new();
    for shard in SHARDS {
        let direct = cluster.shard_primary_client(shard).await;
        for row in direct
            .query("SELECT tenant_id, name FROM customers", &[])
            .await
            .unwrap()
        {
            let tenant: i64 = row.get(0);
            assert_eq!(
                shard_of(tenant),
                shard,
                "tenant {tenant} is on the wrong shard"
            );
            seen.insert((tenant, row.get::<_, String>(1)));
        }
        // The same check, evaluated by PostgreSQL with the range predicate.
        let range: KeyRange = shard.parse().unwrap();
        let predicate = range.to_sql_predicate(&sql_hash_expr(HashFamily::Int, "tenant_id"));
        let misplaced: i64 = direct
            .query_one(
                &format!("SELECT count(*) FROM customers WHERE NOT ({predicate})"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(misplaced, 0, "rows outside {shard}'s range");
        // `plans` has no tenant_id: a reference table, created on every shard.
        let plans: i64 = direct
            .query_one("SELECT count(*) FROM plans", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(plans, 0);
    }
    assert_eq!(seen, expected);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_routes_by_parameters_and_merges_scatter_results() {
    let cluster = TestCluster::start(2, 1).await;
    let client = cluster.client().await;
    client
        .batch_execute("CREATE TABLE orders (tenant_id bigint, id int, amount bigint, note text, PRIMARY KEY (tenant_id, id))")
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO orders (tenant_id, id, amount, note) VALUES ($1, $2, $3, $4)")
        .await
        .unwrap();
    let mut expected_sum = 0i64;
    for tenant in 1..=40i64 {
        for id in 1..=3i32 {
            let amount = tenant * 10 + i64::from(id);
            expected_sum += amount;
            client
                .execute(&insert, &[&tenant, &id, &amount, &format!("t{tenant}")])
                .await
                .unwrap();
        }
    }
    // Both shards got rows (40 tenants cannot all hash to one half).
    for shard in SHARDS {
        let direct = cluster.shard_primary_client(shard).await;
        let count: i64 = direct
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .unwrap()
            .get(0);
        assert!(count > 0, "shard {shard} got no rows");
        for row in direct
            .query("SELECT DISTINCT tenant_id FROM orders", &[])
            .await
            .unwrap()
        {
            assert_eq!(shard_of(row.get(0)), shard);
        }
    }
    // Equality on the sharding column with a parameter: one shard, exact rows.
    let by_tenant = client
        .prepare("SELECT id, amount FROM orders WHERE tenant_id = $1 ORDER BY id")
        .await
        .unwrap();
    for tenant in [1i64, 17, 40] {
        let rows = client.query(&by_tenant, &[&tenant]).await.unwrap();
        let amounts: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
        assert_eq!(
            amounts,
            vec![tenant * 10 + 1, tenant * 10 + 2, tenant * 10 + 3]
        );
    }
    // = ANY($1) spanning both shards, merged with ORDER BY + LIMIT.
    let tenants: Vec<i64> = (1..=40).collect();
    let rows = client
        .query(
            "SELECT tenant_id, amount FROM orders WHERE tenant_id = ANY($1) ORDER BY amount DESC LIMIT 5",
            &[&tenants],
        )
        .await
        .unwrap();
    let amounts: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(amounts, vec![403, 402, 401, 393, 392]);
    // Aggregates over every shard, decoded in binary by the driver (sum(bigint) is numeric).
    let row = client
        .query_one(
            "SELECT count(*), count(note), min(amount), max(amount) FROM orders",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 120);
    assert_eq!(row.get::<_, i64>(1), 120);
    assert_eq!(row.get::<_, i64>(2), 11);
    assert_eq!(row.get::<_, i64>(3), 403);
    let sum = client
        .simple_query("SELECT sum(amount) FROM orders")
        .await
        .unwrap();
    assert_eq!(
        simple_rows(&sum),
        vec![vec![Some(expected_sum.to_string())]]
    );
    // An aggregate inside an expression cannot be merged from per-shard results: the gate
    // must refuse with 0A000, never answer wrongly.
    let error = client
        .query_one(
            "SELECT sum(amount)::text = $1 FROM orders",
            &[&expected_sum.to_string()],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "0A000");
    // GROUP BY with ORDER BY over the group key.
    let rows = client
        .query("SELECT tenant_id, count(*), sum(id) FROM orders GROUP BY tenant_id ORDER BY tenant_id LIMIT 3", &[])
        .await
        .unwrap();
    let groups: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(groups, vec![(1, 3), (2, 3), (3, 3)]);
    // Plain scatter concatenation returns every row once.
    let all = client
        .query("SELECT tenant_id, id FROM orders", &[])
        .await
        .unwrap();
    assert_eq!(all.len(), 120);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_atomically_across_shards_and_roll_back_entirely() {
    let cluster = TestCluster::start(2, 1).await;
    let mut client = cluster.client().await;
    client
        .batch_execute(
            "CREATE TABLE accounts (tenant_id bigint PRIMARY KEY, balance bigint NOT NULL)",
        )
        .await
        .unwrap();
    // Two tenants on different shards.
    let a = (1..).find(|t| shard_of(*t) == "-80").unwrap();
    let b = (1..).find(|t| shard_of(*t) == "80-").unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO accounts VALUES ($1, 100)", &[&a])
        .await
        .unwrap();
    tx.execute("INSERT INTO accounts VALUES ($1, 200)", &[&b])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let rows = client
        .query("SELECT balance FROM accounts", &[])
        .await
        .unwrap();
    let summed: i64 = rows.iter().map(|r| r.get::<_, i64>(0)).sum();
    assert_eq!(summed, 300);

    let tx = client.transaction().await.unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance - 50 WHERE tenant_id = $1",
        &[&a],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance + 50 WHERE tenant_id = $1",
        &[&b],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let rows = client
        .query(
            "SELECT tenant_id, balance FROM accounts ORDER BY tenant_id",
            &[],
        )
        .await
        .unwrap();
    let balances: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut expected = vec![(a, 100), (b, 200)];
    expected.sort();
    assert_eq!(balances, expected, "rollback must undo both shards");

    // A multi-row INSERT spanning shards where one shard fails (duplicate key) commits nothing.
    let a2 = (a + 1..).find(|t| shard_of(*t) == "-80").unwrap();
    let error = client
        .execute("INSERT INTO accounts VALUES ($1, 1), ($2, 1)", &[&a2, &b])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "23505");
    let direct = cluster.shard_primary_client("-80").await;
    let leaked: i64 = direct
        .query_one("SELECT count(*) FROM accounts WHERE tenant_id = $1", &[&a2])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        leaked, 0,
        "the other shard's part of a failed INSERT must not commit"
    );
    // No distributed transaction is left prepared.
    for shard in SHARDS {
        let direct = cluster.shard_primary_client(shard).await;
        let prepared: i64 = direct
            .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(prepared, 0);
    }
    // After an error inside a transaction, everything but ROLLBACK fails, on any shard.
    let tx = client.transaction().await.unwrap();
    let _ = tx
        .execute("INSERT INTO accounts VALUES ($1, 1)", &[&a])
        .await
        .unwrap_err();
    let error = tx
        .execute("INSERT INTO accounts VALUES ($1, 1)", &[&b])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "25P02");
    tx.rollback().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_tables_are_written_to_every_shard_and_read_from_one() {
    let cluster = TestCluster::start(2, 1).await;
    let client = cluster.client().await;
    client
        .batch_execute("CREATE TABLE plans (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    let inserted = client
        .execute(
            "INSERT INTO plans VALUES ($1, $2), ($3, $4)",
            &[&1i32, &"free", &2i32, &"pro"],
        )
        .await
        .unwrap();
    assert_eq!(
        inserted, 2,
        "a reference write reports the rows of one copy"
    );
    let updated = client
        .execute("UPDATE plans SET name = upper(name)", &[])
        .await
        .unwrap();
    assert_eq!(updated, 2);
    for shard in SHARDS {
        let direct = cluster.shard_primary_client(shard).await;
        let names: Vec<String> = direct
            .query("SELECT name FROM plans ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(names, vec!["FREE", "PRO"], "shard {shard}");
    }
    let rows = client
        .query("SELECT name FROM plans ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "a reference read returns one copy, not one per shard"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_the_client_across_pooled_connections() {
    let cluster = TestCluster::start(2, 1).await;
    let client = cluster.client().await;
    let other = cluster.client().await;
    client
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    for _ in 0..5 {
        let zone: String = client.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
        assert_eq!(zone, "Asia/Tokyo");
        let zone: String = other.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
        assert_ne!(
            zone, "Asia/Tokyo",
            "a setting must not leak to another client"
        );
    }
    let error = client
        .batch_execute("SET synchronous_commit = off")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    let error = client
        .batch_execute("BEGIN; SET LOCAL synchronous_commit = off; COMMIT")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    let error = client
        .query("SELECT set_config('synchronous_commit', 'off', false)", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    cluster.stop().await;
}
