//! Atomic commit across shards with PostgreSQL's two-phase commit.
//!
//! The decision is the commit of the coordinator shard's own transaction: it inserts
//! `(gid, 'commit')` into `tessera.twopc_decisions` and commits normally, while every other
//! participant has already done `PREPARE TRANSACTION gid`. So the decision is as durable as any
//! write on that shard, and no separate log is needed.
//!
//! Recovery resolves prepared transactions left behind by a crash: it inserts `(gid, 'abort')`
//! with `ON CONFLICT DO NOTHING` on the coordinator shard and reads back the winner. The primary
//! key serialises it against a gate still committing: whichever insert commits first decides.
//!
//! ```text
//!  participants (all but coordinator):  PREPARE TRANSACTION gid ──┐ all ok?
//!  coordinator: INSERT decision 'commit'; COMMIT  ◀───────────────┘  (the decision point)
//!  participants: COMMIT PREPARED gid      (failures are finished by recovery)
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tessera_proto::schema::TWOPC_GID_PREFIX;
use tessera_wire::{ServerConn, SqlError, WireError};

use crate::server::Shared;

/// The transaction id for one distributed commit: names the keyspace and the coordinator shard
/// so that recovery knows where the decision lives.
pub fn gid(
    keyspace: &str,
    coordinator_shard: &str,
    gate_id: &str,
    boot: u64,
    transaction: u64,
) -> String {
    format!("{TWOPC_GID_PREFIX}{keyspace}:{coordinator_shard}:{gate_id}:{boot:x}:{transaction}")
}

/// Keyspace and coordinator shard named by a gid, if it is one of ours.
pub fn parse_gid(gid: &str) -> Option<(&str, &str)> {
    let rest = gid.strip_prefix(TWOPC_GID_PREFIX)?;
    let mut parts = rest.split(':');
    let keyspace = parts.next()?;
    let shard = parts.next()?;
    (parts.count() == 3).then_some((keyspace, shard))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Commits the open transactions on `coordinator` and `others` atomically. On error nothing is
/// committed, except for `08007` (the coordinator's commit outcome is unknown; recovery decides).
pub async fn commit(
    coordinator: &mut ServerConn,
    others: Vec<&mut ServerConn>,
    gid: &str,
) -> Result<(), SqlError> {
    let prepare = format!("PREPARE TRANSACTION {}", literal(gid));
    let results = join_all(others.into_iter().map(|conn| {
        let prepare = &prepare;
        async move {
            let result = conn.simple(prepare).await;
            (conn, result)
        }
    }))
    .await;
    let mut prepared = Vec::new();
    let mut failure: Option<SqlError> = None;
    for (conn, result) in results {
        match result {
            Ok(_) => prepared.push(conn),
            Err(error) => {
                failure.get_or_insert(error.to_sql_error("prepare transaction on a shard failed"));
            }
        }
    }
    if let Some(error) = failure {
        rollback_prepared(prepared, gid).await;
        if coordinator.simple("ROLLBACK").await.is_err() {
            coordinator.broken = true;
        }
        return Err(error);
    }
    let decide = format!(
        "INSERT INTO tessera.twopc_decisions (gid, decision) VALUES ({}, 'commit'); COMMIT",
        literal(gid)
    );
    match coordinator.simple(&decide).await {
        Ok(_) => {}
        Err(WireError::Server(error)) => {
            // The coordinator's transaction aborted (e.g. recovery already decided 'abort'):
            // nothing committed anywhere.
            if coordinator.tx_status != tessera_wire::message::TxStatus::Idle
                && coordinator.simple("ROLLBACK").await.is_err()
            {
                coordinator.broken = true;
            }
            rollback_prepared(prepared, gid).await;
            return Err(error);
        }
        Err(error) => {
            coordinator.broken = true;
            tracing::error!(%gid, %error, "commit outcome unknown; recovery will resolve it");
            return Err(SqlError::new(
                "08007",
                format!("transaction resolution unknown: lost the coordinator shard during commit ({error})"),
            )
            .with_hint("Tessera resolves the transaction automatically; check the data before retrying"));
        }
    }
    let commit = format!("COMMIT PREPARED {}", literal(gid));
    for (conn, result) in join_all(prepared.into_iter().map(|conn| {
        let commit = &commit;
        async move {
            let result = conn.simple(commit).await;
            (conn, result)
        }
    }))
    .await
    {
        if let Err(error) = result {
            // Decided and durable: recovery will finish it. The client's commit succeeded.
            conn.broken = true;
            tracing::warn!(%gid, %error, "COMMIT PREPARED failed; recovery will finish it");
        }
    }
    metrics::counter!("tessera_gate_distributed_commits_total").increment(1);
    Ok(())
}

async fn rollback_prepared(conns: Vec<&mut ServerConn>, gid: &str) {
    let sql = format!("ROLLBACK PREPARED {}", literal(gid));
    for conn in conns {
        if let Err(error) = conn.simple(&sql).await {
            conn.broken = true;
            tracing::warn!(%gid, %error, "ROLLBACK PREPARED failed; recovery will finish it");
        }
    }
}

/// Periodically resolves in-doubt transactions of every keyspace.
pub async fn recovery_loop(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.config.twopc_recovery_interval_ms.max(100));
    loop {
        tokio::time::sleep(interval).await;
        let keyspaces: Vec<String> = shared.cluster.view().keyspaces.keys().cloned().collect();
        for keyspace in keyspaces {
            if let Err(error) = recover_keyspace(&shared, &keyspace).await {
                tracing::debug!(%keyspace, %error, "two-phase-commit recovery pass incomplete");
            }
        }
    }
}

/// One recovery pass over a keyspace; returns how many transactions it resolved.
pub async fn recover_keyspace(shared: &Shared, keyspace: &str) -> Result<usize, SqlError> {
    let Some(view) = shared.cluster.keyspace(keyspace) else {
        return Ok(0);
    };
    let age_ms = shared.config.twopc_recovery_age_ms;
    let mut resolved = 0;
    let mut all_prepared = Vec::new();
    let mut complete = true;
    for shard in 0..view.shards.len() {
        let mut conn = match shared
            .backends
            .try_acquire(&shared.cluster, keyspace, shard)
            .await
        {
            Ok(conn) => conn,
            Err(_) => {
                complete = false;
                continue;
            }
        };
        let rows = conn
            .simple_rows(&format!(
                "SELECT gid, prepared < now() - interval '{age_ms} milliseconds' \
                 FROM pg_prepared_xacts WHERE gid LIKE 'tessera:%' AND database = current_database()"
            ))
            .await
            .map_err(|e| e.to_sql_error("listing prepared transactions"))?;
        for row in rows {
            let (Some(gid), Some(old)) = (
                row.first().cloned().flatten(),
                row.get(1).cloned().flatten(),
            ) else {
                continue;
            };
            all_prepared.push(gid.clone());
            if old != "t" {
                continue;
            }
            let Some((_, coordinator)) = parse_gid(&gid) else {
                continue;
            };
            let Some(coordinator) = view.shards.index_of(coordinator) else {
                tracing::error!(%gid, "in-doubt transaction names an unknown coordinator shard");
                continue;
            };
            let decision = decide(shared, keyspace, coordinator, &gid).await?;
            let sql = if decision == "commit" {
                format!("COMMIT PREPARED {}", literal(&gid))
            } else {
                format!("ROLLBACK PREPARED {}", literal(&gid))
            };
            match conn.simple(&sql).await {
                Ok(_) => {
                    resolved += 1;
                    metrics::counter!("tessera_gate_twopc_recovered_total", "decision" => decision.clone()).increment(1);
                    tracing::info!(%gid, %decision, shard = view.shards.name(shard), "resolved in-doubt transaction");
                }
                // Another gate's recovery may have resolved it first.
                Err(error) => {
                    tracing::debug!(%gid, %error, "resolving in-doubt transaction failed")
                }
            }
        }
    }
    if complete {
        // Decisions no participant still needs can go. Only when every shard answered, and
        // only old ones, so that a participant that was briefly unreachable still finds its
        // decision.
        let keep = if all_prepared.is_empty() {
            "''".to_string()
        } else {
            all_prepared
                .iter()
                .map(|g| literal(g))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for shard in 0..view.shards.len() {
            if let Ok(mut conn) = shared
                .backends
                .try_acquire(&shared.cluster, keyspace, shard)
                .await
            {
                let _ = conn
                    .simple(&format!(
                        "DELETE FROM tessera.twopc_decisions WHERE decided_at < now() - interval '60 seconds' AND gid NOT IN ({keep})"
                    ))
                    .await;
            }
        }
    }
    Ok(resolved)
}

/// Reads the decision for `gid`, recording 'abort' first if none was made, so a gate still
/// committing cannot decide 'commit' afterwards.
async fn decide(
    shared: &Shared,
    keyspace: &str,
    coordinator: usize,
    gid: &str,
) -> Result<String, SqlError> {
    let mut conn = shared
        .backends
        .try_acquire(&shared.cluster, keyspace, coordinator)
        .await
        .map_err(|e| e.to_sql_error())?;
    let rows = conn
        .simple_rows(&format!(
            "INSERT INTO tessera.twopc_decisions (gid, decision) VALUES ({gid}, 'abort') ON CONFLICT (gid) DO NOTHING; \
             SELECT decision FROM tessera.twopc_decisions WHERE gid = {gid}",
            gid = literal(gid)
        ))
        .await
        .map_err(|e| e.to_sql_error("reading a two-phase-commit decision"))?;
    rows.first()
        .and_then(|row| row.first().cloned().flatten())
        .ok_or_else(|| SqlError::new("XX000", format!("no decision recorded for {gid}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_name_their_keyspace_and_coordinator() {
        let gid = gid("app", "-80", "gate1", 0xabc, 7);
        assert_eq!(gid, "tessera:app:-80:gate1:abc:7");
        assert_eq!(parse_gid(&gid), Some(("app", "-80")));
        assert_eq!(parse_gid("tessera:app:-80"), None);
        assert_eq!(parse_gid("other:app:-80:g:1:2"), None);
    }
}
