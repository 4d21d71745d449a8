//! The pgbench schema and data, created the same way on every target: DDL and multi-row
//! INSERTs sent through the target itself (through the gate for Tessera, which creates the
//! tables on every shard and splits the rows by `aid`).
//!
//! `pgbench -i` cannot be used through the gate: its data load uses COPY, which the gate
//! refuses today. PgBouncer shares the direct target's server, so it needs no load of its own.

use anyhow::Context;
use tokio_postgres::NoTls;

use crate::targets::Target;

/// Rows of pgbench_accounts per scale unit, as in pgbench.
pub const ACCOUNTS_PER_SCALE: u32 = 100_000;
/// Rows per INSERT statement while loading.
const ROWS_PER_INSERT: u32 = 1_000;

/// pgbench's tables. `aid` is the sharding column of the Tessera keyspace, so
/// pgbench_accounts and pgbench_history are sharded by it; branches and tellers have no `aid`
/// and are reference tables (a full copy on every shard).
const DDL: &str = "CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))";

async fn connect(target: &Target) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&target.url(), NoTls)
        .await
        .with_context(|| format!("connecting to {}", target.label()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Creates and fills the pgbench tables for `scale` through `target`, then vacuums and
/// analyzes them.
pub async fn load(target: &Target, scale: u32) -> anyhow::Result<()> {
    let client = connect(target).await?;
    create_with(&client, target).await?;
    insert_rows(
        &client,
        "pgbench_branches (bid, bbalance)",
        1..=scale,
        |bid| format!("({bid}, 0)"),
    )
    .await?;
    insert_rows(
        &client,
        "pgbench_tellers (tid, bid, tbalance)",
        1..=scale * 10,
        |tid| format!("({tid}, {}, 0)", (tid - 1) / 10 + 1),
    )
    .await?;
    insert_rows(
        &client,
        "pgbench_accounts (aid, bid, abalance, filler)",
        1..=scale * ACCOUNTS_PER_SCALE,
        |aid| format!("({aid}, {}, 0, '')", (aid - 1) / ACCOUNTS_PER_SCALE + 1),
    )
    .await
    .with_context(|| format!("loading pgbench_accounts through {}", target.label()))?;
    for table in [
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_accounts",
        "pgbench_history",
    ] {
        for command in ["VACUUM", "ANALYZE"] {
            client
                .batch_execute(&format!("{command} {table}"))
                .await
                .with_context(|| format!("{}: {command} {table}", target.label()))?;
        }
    }
    // A sanity check that catches a load that silently lost rows (e.g. a routing mistake).
    let count: i64 = client
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        count == i64::from(scale * ACCOUNTS_PER_SCALE),
        "{}: pgbench_accounts has {count} rows after the load",
        target.label()
    );
    Ok(())
}

/// Creates the pgbench tables, empty, through `target`.
pub async fn create_tables(target: &Target) -> anyhow::Result<()> {
    let client = connect(target).await?;
    create_with(&client, target).await
}

async fn create_with(client: &tokio_postgres::Client, target: &Target) -> anyhow::Result<()> {
    for statement in DDL.split(";\n") {
        client
            .batch_execute(statement)
            .await
            .with_context(|| format!("{}: {statement}", target.label()))?;
    }
    Ok(())
}

async fn insert_rows(
    client: &tokio_postgres::Client,
    table_and_columns: &str,
    ids: std::ops::RangeInclusive<u32>,
    row: impl Fn(u32) -> String,
) -> anyhow::Result<()> {
    let ids: Vec<u32> = ids.collect();
    for chunk in ids.chunks(ROWS_PER_INSERT as usize) {
        let values: Vec<String> = chunk.iter().map(|id| row(*id)).collect();
        client
            .batch_execute(&format!(
                "INSERT INTO {table_and_columns} VALUES {}",
                values.join(", ")
            ))
            .await
            .with_context(|| format!("INSERT INTO {table_and_columns}"))?;
    }
    Ok(())
}
