//! Schema changes under shared server statements (gate and pooler relay). Tessera prepares each
//! statement text once per server connection and shares it between clients, so after
//! `ALTER TABLE ... ADD COLUMN` a connection still holds a plan with the old result type, which
//! PostgreSQL refuses ("cached plan must not change result type"). A client that parses the text
//! after the change must get the new columns, as from PostgreSQL; a client whose own prepared
//! statement predates the change must get PostgreSQL's error, never rows shaped unlike its
//! description.

use tessera_tests::{TestCluster, connect};
use tokio_postgres::types::Type;

const SELECT: &str = "SELECT * FROM items WHERE tenant_id = $1";
const TAGS: &str = "SELECT * FROM tags WHERE tenant_id = $1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_reprepare_shared_statements_like_postgres_plans_them() {
    let cluster = TestCluster::start(1, 1).await;
    let keyspace = cluster.cluster.layout.keyspace.clone();
    let tablet = cluster.tablets().await.remove(0);
    let old_client = cluster.client().await;
    old_client
        .batch_execute(
            "CREATE TABLE items (tenant_id bigint, id int, PRIMARY KEY (tenant_id, id));
             INSERT INTO items VALUES (1, 1), (1, 2);",
        )
        .await
        .expect("schema");
    // The same statement prepared straight on PostgreSQL, to compare its behaviour.
    let direct = connect(&format!(
        "postgres://postgres:postgres@127.0.0.1:{}/{keyspace}",
        tablet.postgres_port
    ))
    .await;
    let direct_old = direct.prepare(SELECT).await.expect("prepare directly");
    // Prepared through the gate, with and without a declared parameter type (two server
    // statements): the pool's connection now holds both plans.
    let old = old_client.prepare(SELECT).await.expect("prepare via gate");
    let rows = old_client.query(&old, &[&1i64]).await.expect("old plan");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].len(), 2);
    let old_typed = old_client
        .prepare_typed(SELECT, &[Type::INT8])
        .await
        .expect("prepare typed via gate");
    let rows = old_client
        .query(&old_typed, &[&1i64])
        .await
        .expect("old plan");
    assert_eq!(rows[0].len(), 2);

    let admin = cluster.client().await;
    admin
        .batch_execute("ALTER TABLE items ADD COLUMN note text DEFAULT 'n'")
        .await
        .expect("first column");

    // Unnamed statement, one round trip (Parse, Bind, Describe, Execute, Sync): the server
    // refuses the Bind of its old plan, and the relay re-prepares and sends the batch again.
    let fresh = cluster.client().await;
    let rows = fresh
        .query_typed(SELECT, &[(&1i64, Type::INT8)])
        .await
        .expect("a statement parsed after the change runs with the new columns");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].len(), 3);
    assert_eq!(rows[0].get::<_, String>("note"), "n");

    admin
        .batch_execute("ALTER TABLE items ADD COLUMN label text DEFAULT 'l'")
        .await
        .expect("second column");

    // Named statement, two round trips (Parse + Describe, then Bind + Execute): here the
    // server refuses the Describe of its old plan.
    let rows = fresh
        .query(SELECT, &[&1i64])
        .await
        .expect("a statement prepared after the change describes and runs the new columns");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].len(), 4);
    assert_eq!(rows[0].get::<_, String>("label"), "l");
    // The simple protocol sees the new columns too.
    let simple = fresh
        .simple_query("SELECT * FROM items WHERE tenant_id = 1 AND id = 2")
        .await
        .expect("simple query");
    let row = simple
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.len()),
            _ => None,
        })
        .expect("one row");
    assert_eq!(row, 4);

    // A statement prepared before the change: PostgreSQL refuses it, and so does Tessera, now
    // that the server connection holds the new plan.
    let expected = direct
        .query(&direct_old, &[&1i64])
        .await
        .expect_err("PostgreSQL refuses a plan whose result type changed");
    let through_gate = old_client
        .query(&old, &[&1i64])
        .await
        .expect_err("the gate refuses the old statement as PostgreSQL does");
    assert_same_refusal(&through_gate, &expected);
    let through_gate = old_client
        .query(&old_typed, &[&1i64])
        .await
        .expect_err("the gate refuses the old typed statement as PostgreSQL does");
    assert_eq!(through_gate.code(), expected.code());
    // Re-preparing is the client's way out, as on PostgreSQL.
    let renewed = old_client.prepare(SELECT).await.expect("prepare again");
    let rows = old_client
        .query(&renewed, &[&1i64])
        .await
        .expect("new plan");
    assert_eq!(rows[0].len(), 4);

    // A client that parsed its statement after the server connection prepared the same text,
    // and ran it before the change: its description has the old columns, so after the change
    // it must get PostgreSQL's error, not a re-prepared plan with rows of another shape.
    admin
        .batch_execute(
            "CREATE TABLE tags (tenant_id bigint, id int, PRIMARY KEY (tenant_id, id));
             INSERT INTO tags VALUES (1, 1);",
        )
        .await
        .expect("second table");
    let direct_tags = direct.prepare(TAGS).await.expect("prepare directly");
    let first = cluster.client().await;
    let statement = first.prepare(TAGS).await.expect("prepare");
    assert_eq!(
        first.query(&statement, &[&1i64]).await.expect("run")[0].len(),
        2
    );
    let second = cluster.client().await;
    let statement = second
        .prepare(TAGS)
        .await
        .expect("prepare after the server did");
    assert_eq!(
        second.query(&statement, &[&1i64]).await.expect("run")[0].len(),
        2
    );
    admin
        .batch_execute("ALTER TABLE tags ADD COLUMN note text DEFAULT 'n'")
        .await
        .expect("column");
    let expected = direct
        .query(&direct_tags, &[&1i64])
        .await
        .expect_err("PostgreSQL refuses a plan whose result type changed");
    let through_gate = second
        .query(&statement, &[&1i64])
        .await
        .expect_err("the gate refuses it as PostgreSQL does");
    assert_same_refusal(&through_gate, &expected);

    cluster.stop().await;
}

/// The gate's error is PostgreSQL's own: same SQLSTATE and message.
fn assert_same_refusal(through_gate: &tokio_postgres::Error, expected: &tokio_postgres::Error) {
    assert_eq!(
        through_gate.code(),
        expected.code(),
        "gate: {through_gate:?}, PostgreSQL: {expected:?}"
    );
    assert_eq!(
        through_gate.as_db_error().map(|e| e.message()),
        expected.as_db_error().map(|e| e.message()),
        "gate: {through_gate:?}, PostgreSQL: {expected:?}"
    );
}
