//! Simple queries run as their literal template prepared on the server (issue 6, gate): each
//! answer through the gate must be byte for byte what PostgreSQL sends for the same text
//! (RowDescription with its types, DataRows, CommandComplete), whether or not the gate bound
//! the query, and the gate must bind exactly the queries whose constants sit where a parameter
//! means the same. Which path ran is read from PostgreSQL itself: `pg_stat_activity` shows the
//! template (`$1`) for a bound query and the literal text otherwise.

use tessera_tests::TestCluster;
use tessera_wire::message::backend;
use tessera_wire::{ServerConn, SqlError};

/// A raw protocol connection, so the comparison sees every frame and type OID.
async fn raw(port: u16, database: &str, application_name: &str) -> ServerConn {
    let params = vec![("application_name".into(), application_name.into())];
    tessera_tests::raw::connect(port, database, params).await
}

/// The frames answering one simple query, up to and including ReadyForQuery. Errors are
/// reduced to their SQLSTATE: a bound parameter's error has no cursor position.
async fn answer(conn: &mut ServerConn, sql: &str) -> Vec<(char, Vec<u8>)> {
    tessera_tests::raw::answer(conn, sql)
        .await
        .into_iter()
        .map(|(tag, body)| match tag {
            backend::ERROR => ('E', SqlError::from_body(&body).code.into_bytes()),
            _ => (tag as char, body),
        })
        .collect()
}

/// What the gate's server connection last ran for the query carrying `marker`.
async fn server_text(direct: &mut ServerConn, marker: &str) -> String {
    let rows = direct
        .simple_rows(&format!(
            "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
             AND application_name <> 'direct-compare' AND position('{marker}' IN query) > 0"
        ))
        .await
        .expect("pg_stat_activity");
    match rows.as_slice() {
        [row] => row[0].clone().unwrap_or_default(),
        other => panic!("expected one server connection to have run {marker}, got {other:?}"),
    }
}

struct Case {
    sql: &'static str,
    bound: bool,
    /// Run directly after the gate's run, so the direct run starts from the same data.
    undo: Option<&'static str>,
}

const fn case(sql: &'static str, bound: bool) -> Case {
    Case {
        sql,
        bound,
        undo: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queries_bound_on_the_server_answer_exactly_like_their_text() {
    let cluster = TestCluster::start(1, 1).await;
    let keyspace = cluster.cluster.layout.keyspace.clone();
    let client = cluster.client().await;
    client
        .batch_execute(
            "CREATE TABLE items (tenant_id bigint, id int, name text, price numeric, \
               born date, flags int, PRIMARY KEY (tenant_id, id));
             INSERT INTO items VALUES (1, 1, 'a''b', 1.50, '2019-05-06', 7), \
               (1, 2, 'apple', 2.25, '2021-01-01', -5), (1, 3, 'a\\b', 10, NULL, 0), \
               (99999999999, 1, 'big', 0.5, '2020-02-02', 1);",
        )
        .await
        .expect("schema and rows");
    let tablet = cluster.tablets().await.remove(0);
    let mut gate = raw(
        cluster.cluster.gate_address.port(),
        &keyspace,
        "through-gate",
    )
    .await;
    let mut direct = raw(tablet.postgres_port, &keyspace, "direct-compare").await;
    let mut observer = raw(tablet.postgres_port, &keyspace, "direct-compare").await;

    let cases = [
        case(
            "SELECT id, name FROM items WHERE tenant_id = 1 /* case 1 */",
            true,
        ),
        case(
            "SELECT * FROM items WHERE tenant_id = '1' AND name = 'a''b' /* case 2 */",
            true,
        ),
        case(
            "SELECT id, price FROM items WHERE tenant_id = 1 AND price > 1.5 \
             AND born < '2022-01-01'::date /* case 3 */",
            true,
        ),
        // `ORDER BY 1` is a column ordinal, `ORDER BY $n` would sort by a constant.
        case(
            "SELECT id FROM items WHERE tenant_id = 1 AND id IN (1, 2, 3) ORDER BY 1 DESC LIMIT 2 /* case 4 */",
            false,
        ),
        case(
            "SELECT id FROM items WHERE tenant_id = 1 AND id IN (1, 2, 3) ORDER BY id DESC LIMIT 2 /* case 5 */",
            true,
        ),
        // An untyped string in the select list: text to PostgreSQL, undeterminable as `$n`.
        case(
            "SELECT 'x' AS tag, id FROM items WHERE tenant_id = 1 /* case 6 */",
            false,
        ),
        case(
            "SELECT id FROM items WHERE tenant_id = 1 AND name LIKE 'a%' ORDER BY id /* case 7 */",
            true,
        ),
        case(
            "SELECT id FROM items WHERE tenant_id = 1 AND id BETWEEN 2 AND 3 ORDER BY id /* case 8 */",
            true,
        ),
        case(
            "SELECT name FROM items WHERE tenant_id = 99999999999 /* case 9 */",
            true,
        ),
        // A backslash's meaning depends on standard_conforming_strings: stays text.
        case(
            "SELECT id FROM items WHERE tenant_id = 1 AND name = 'a\\b' /* case 10 */",
            false,
        ),
        case(
            "SELECT id FROM items WHERE tenant_id = 1 AND id = 'abc' /* case 11 */",
            true,
        ),
        case(
            "SELECT id FROM items WHERE tenant_id = 1 AND id = 1.5 /* case 12 */",
            true,
        ),
        case(
            "SELECT id, flags FROM items WHERE tenant_id = 1 AND flags = -5 /* case 13 */",
            true,
        ),
        // `-2147483648` is one int4 constant; `-$1` would be int8.
        case(
            "SELECT id FROM items WHERE tenant_id = 1 AND flags > -2147483648 ORDER BY id /* case 14 */",
            false,
        ),
        case(
            "UPDATE items SET name = 'apple', flags = flags + -3 + 3 WHERE tenant_id = 1 AND id = 2 /* case 15 */",
            true,
        ),
        Case {
            sql: "INSERT INTO items (tenant_id, id, name, price, born) \
                  VALUES (1, 10, 'new', 2.50, '2021-02-03') RETURNING * /* case 16 */",
            bound: true,
            undo: Some("DELETE FROM items WHERE tenant_id = 1 AND id = 10"),
        },
        case(
            "DELETE FROM items WHERE tenant_id = 1 AND id = 12345 /* case 17 */",
            true,
        ),
        case(
            "SELECT * FROM items WHERE tenant_id = 1 /* case 18 */",
            true,
        ),
    ];
    for (number, case) in cases.iter().enumerate() {
        let marker = format!("case {} */", number + 1);
        assert!(case.sql.ends_with(&format!("/* {marker}")), "{}", case.sql);
        let through_gate = answer(&mut gate, case.sql).await;
        let ran = server_text(&mut observer, &marker).await;
        assert_eq!(
            ran.contains("$1"),
            case.bound,
            "{}: the server ran {ran:?}",
            case.sql
        );
        if let Some(undo) = case.undo {
            direct.simple(undo).await.expect("undo");
        }
        let from_postgres = answer(&mut direct, case.sql).await;
        assert_eq!(through_gate, from_postgres, "{}", case.sql);
    }

    // DDL changes the result type of `SELECT *`: the statement prepared for it goes stale on
    // the server connection, and the gate falls back to the text instead of failing.
    let star = "SELECT * FROM items WHERE tenant_id = 1 ORDER BY id /* stale */";
    for _ in 0..3 {
        answer(&mut gate, star).await;
    }
    assert!(server_text(&mut observer, "stale */").await.contains("$1"));
    let added = answer(
        &mut gate,
        "ALTER TABLE items ADD COLUMN extra int DEFAULT 4",
    )
    .await;
    assert_eq!(added.first().map(|f| f.0), Some('C'), "{added:?}");
    for _ in 0..3 {
        let through_gate = answer(&mut gate, star).await;
        let from_postgres = answer(&mut direct, star).await;
        assert_eq!(through_gate, from_postgres, "{star} after ALTER TABLE");
    }
    cluster.stop().await;
}
