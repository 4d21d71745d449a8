//! Scatter SELECTs of the simple protocol run on every shard as a statement prepared on the
//! server (issue 6, gate): PostgreSQL skips parse and plan there, and the client still gets the
//! simple query's answer. Which way a shard ran a query is read from its own log
//! (`log_statement = all`: `execute <name>: ...` for a bound run, `statement: ...` for text).
//! A text runs bound from its second run in a session on; a shard whose prepared copy went stale
//! after DDL runs the text instead, without an error.

use std::path::PathBuf;

use tessera_tests::raw::{answer, connect};
use tessera_tests::{TestCluster, temp_dir, test_options};
use tessera_wire::message::backend;

/// The same query under another comment, so a shard's log does not count the comparison run.
fn uncounted(sql: &str) -> String {
    sql.replace("/* scatter", "/* direct comparison")
}

fn tags(frames: &[(u8, Vec<u8>)]) -> String {
    frames.iter().map(|(tag, _)| *tag as char).collect()
}

fn body(frames: &[(u8, Vec<u8>)], tag: u8) -> Vec<u8> {
    frames
        .iter()
        .find(|(t, _)| *t == tag)
        .map(|(_, body)| body.clone())
        .unwrap_or_else(|| panic!("no {:?} frame in {}", tag as char, tags(frames)))
}

/// How one shard ran the queries carrying `marker`, from its log, in order: `bound`, `text`,
/// or `stale` (its server refused a bound run because the plan's result type changed).
fn runs(log: &PathBuf, marker: &str) -> Vec<&'static str> {
    let text = std::fs::read_to_string(log).expect("read the shard's PostgreSQL log");
    let lines: Vec<&str> = text.lines().collect();
    let mut runs = Vec::new();
    for (number, line) in lines.iter().enumerate() {
        if line.contains("cached plan must not change result type")
            && lines
                .get(number + 1)
                .is_some_and(|next| next.contains("STATEMENT:") && next.contains(marker))
        {
            runs.push("stale");
        } else if !line.contains(marker) {
            continue;
        } else if line.contains("LOG:  execute t") {
            runs.push("bound");
        } else if line.contains("LOG:  statement: ") {
            runs.push("text");
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scatter_selects_run_bound_on_every_shard_and_fall_back_to_text_when_stale() {
    tessera_tests::init_tracing();
    let dir = temp_dir();
    let mut options = test_options(dir.path(), 2, 1);
    options
        .pg_settings
        .insert("log_statement".into(), "all".into());
    let data_dir = options.data_dir.clone();
    let cluster = TestCluster::start_with(dir, options).await;
    let keyspace = cluster.cluster.layout.keyspace.clone();
    let logs: Vec<PathBuf> = cluster
        .cluster
        .layout
        .tablets(&data_dir)
        .expect("layout")
        .into_iter()
        .map(|tablet| tablet.dir.join("postgres.log"))
        .collect();
    assert_eq!(logs.len(), 2);

    let client = cluster.client().await;
    client
        .batch_execute(
            "CREATE TABLE items (tenant_id bigint, id int, name text, PRIMARY KEY (tenant_id, id))",
        )
        .await
        .expect("schema");
    for tenant in 1..=20i64 {
        client
            .execute(
                "INSERT INTO items VALUES ($1, 1, 'one'), ($1, 2, 'two')",
                &[&tenant],
            )
            .await
            .expect("rows");
    }
    for shard in ["-80", "80-"] {
        let direct = cluster.shard_primary_client(shard).await;
        let row = direct
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .expect("count on the shard");
        assert!(row.get::<_, i64>(0) > 0, "shard {shard} holds no rows");
    }

    let mut gate = connect(cluster.cluster.gate_address.port(), &keyspace, Vec::new()).await;
    let tablets = cluster.tablets().await;
    let mut direct = connect(tablets[0].postgres_port, &keyspace, Vec::new()).await;

    // An aggregate merged by the gate, and rows concatenated and sorted.
    let count = "SELECT count(*) FROM items /* scatter count */";
    for _ in 0..3 {
        let frames = answer(&mut gate, count).await;
        assert_eq!(tags(&frames), "TDCZ", "{frames:?}");
        assert_eq!(
            body(&frames, backend::ROW_DESCRIPTION),
            body(
                &answer(&mut direct, &uncounted(count)).await,
                backend::ROW_DESCRIPTION
            ),
            "the gate's RowDescription is the one PostgreSQL sends for the text"
        );
        assert_eq!(
            body(&frames, backend::DATA_ROW),
            b"\x00\x01\x00\x00\x00\x0240"
        );
        assert_eq!(body(&frames, backend::COMMAND_COMPLETE), b"SELECT 1\0");
    }
    let sorted = "SELECT tenant_id, id, name FROM items ORDER BY tenant_id, id /* scatter rows */";
    let mut answers = Vec::new();
    for _ in 0..2 {
        let frames = answer(&mut gate, sorted).await;
        assert_eq!(tags(&frames), format!("T{}CZ", "D".repeat(40)));
        assert_eq!(
            body(&frames, backend::ROW_DESCRIPTION),
            body(
                &answer(&mut direct, &uncounted(sorted)).await,
                backend::ROW_DESCRIPTION
            ),
        );
        assert_eq!(body(&frames, backend::COMMAND_COMPLETE), b"SELECT 40\0");
        answers.push(frames);
    }
    assert_eq!(answers[0], answers[1], "text and bound runs answer alike");
    // A text seen once (changing literals, ad-hoc queries) takes no server statement.
    let once = "SELECT count(*) FROM items WHERE id > 1 /* scatter once */";
    assert_eq!(tags(&answer(&mut gate, once).await), "TDCZ");

    // Inside a transaction a refusal could not be taken back: the text runs.
    for sql in [
        "BEGIN",
        "SELECT count(*) FROM items /* scatter in transaction */",
        "COMMIT",
    ] {
        let frames = answer(&mut gate, sql).await;
        assert!(!tags(&frames).contains('E'), "{sql}: {frames:?}");
    }

    // Prepared on the pooled connections, then made stale by a column added through the gate.
    let star = "SELECT * FROM items /* scatter star */";
    for _ in 0..2 {
        assert_eq!(&tags(&answer(&mut gate, star).await)[..1], "T");
    }
    let frames = answer(&mut gate, "ALTER TABLE items ADD COLUMN note text").await;
    assert!(!tags(&frames).contains('E'), "{frames:?}");
    let frames = answer(&mut gate, star).await;
    assert_eq!(
        tags(&frames),
        format!("T{}CZ", "D".repeat(40)),
        "{frames:?}"
    );
    let description = body(&frames, backend::ROW_DESCRIPTION);
    assert_eq!(&description[..2], &4i16.to_be_bytes(), "four columns now");
    assert_eq!(
        description,
        body(
            &answer(&mut direct, &uncounted(star)).await,
            backend::ROW_DESCRIPTION
        )
    );
    // The statement is prepared anew at its next run.
    assert_eq!(&tags(&answer(&mut gate, star).await)[..1], "T");

    for log in &logs {
        let shown = log.display();
        assert_eq!(
            runs(log, "scatter count"),
            ["text", "bound", "bound"],
            "{shown}"
        );
        assert_eq!(runs(log, "scatter rows"), ["text", "bound"], "{shown}");
        assert_eq!(runs(log, "scatter once"), ["text"], "{shown}");
        assert_eq!(runs(log, "scatter in transaction"), ["text"], "{shown}");
        assert_eq!(
            runs(log, "scatter star"),
            ["text", "bound", "stale", "text", "bound"],
            "{shown}"
        );
    }
    cluster.cluster.stop().await;
}
