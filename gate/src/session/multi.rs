//! Statements that run on more than one shard: scatter reads (merged), and writes that must be
//! atomic across shards (split INSERTs, scatter UPDATE/DELETE, DDL, reference-table writes).
//!
//! Shards run concurrently. Their answers are collected rather than streamed, merged when the
//! plan says so (aggregates, ORDER BY, LIMIT), and then written to the client in one piece.
//! Outside an explicit transaction a multi-shard write runs inside a transaction the gate opens
//! on each shard and commits with two-phase commit.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::join_all;
use tessera_wire::extended::Bind;
use tessera_wire::message::{self, backend, frontend};
use tessera_wire::relay::{self, Collected, Expect, Outcome, RelayError, Reply, is_stale_plan};
use tessera_wire::statement::SqlKey;
use tessera_wire::{SqlError, Statement};

use super::{ClientStatement, Session};
use crate::sql::merge::{self, FieldDesc};
use crate::sql::plan::{StatementKind, StatementPlan, Target};
use crate::sql::route::Route;
use crate::sql::shardmap::ShardIndex;

/// Results of a multi-shard statement, ready to send.
#[derive(Debug)]
pub(crate) struct Buffered {
    pub row_description: Option<Bytes>,
    pub rows: VecDeque<Bytes>,
    pub tag: String,
}

/// How the client sent the statement.
pub(super) enum Call<'a, 'b> {
    Simple,
    Extended {
        statement: &'a ClientStatement,
        bind: &'a Bind<'b>,
    },
}

/// Scatter texts a session remembers having run once (then it starts over).
const MAX_SCATTER_SEEN: usize = 64;

/// What one shard runs.
struct ShardWork {
    shard: ShardIndex,
    sql: Arc<str>,
    /// For a split INSERT: which client parameters the rewritten statement uses, in order.
    param_map: Option<Vec<usize>>,
}

fn is_atomic_write(kind: &StatementKind) -> bool {
    matches!(
        kind,
        StatementKind::Insert | StatementKind::Update | StatementKind::Delete | StatementKind::Ddl
    )
}

/// Field types and formats from a RowDescription body.
pub(super) fn fields(row_description: &[u8]) -> Result<Vec<FieldDesc>, SqlError> {
    let bad = || SqlError::new("08P01", "malformed RowDescription from a shard");
    let count = i16::from_be_bytes(
        row_description
            .get(..2)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let mut pos = 2;
    let mut fields = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let name_end = row_description[pos..]
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(bad)?;
        pos += name_end + 1;
        let fixed = row_description.get(pos..pos + 18).ok_or_else(bad)?;
        let type_oid = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
        let format = i16::from_be_bytes([fixed[16], fixed[17]]);
        fields.push(FieldDesc { type_oid, format });
        pos += 18;
    }
    Ok(fields)
}

fn tag_rows(tag: &[u8]) -> u64 {
    message::command_tag_rows(tag).unwrap_or(0)
}

/// The command tag for the client. `replicated`: every shard ran the same write on its copy of
/// a reference table, so one shard's count is the answer, not the sum.
fn combined_tag(
    kind: &StatementKind,
    collected: &[Collected],
    rows: usize,
    replicated: bool,
) -> String {
    let sum = || -> u64 {
        let counts = collected
            .iter()
            .filter_map(|c| c.tags.last())
            .map(|t| tag_rows(t));
        if replicated {
            counts.max().unwrap_or(0)
        } else {
            counts.sum()
        }
    };
    match kind {
        StatementKind::Select => format!("SELECT {rows}"),
        StatementKind::Insert => format!("INSERT 0 {}", sum()),
        StatementKind::Update => format!("UPDATE {}", sum()),
        StatementKind::Delete => format!("DELETE {}", sum()),
        _ => collected
            .iter()
            .find_map(|c| c.tags.last())
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default(),
    }
}

impl Session {
    /// Runs `plan` on the shards of `route` and returns the combined results.
    pub(super) async fn multi(
        &mut self,
        plan: &Arc<StatementPlan>,
        route: &Route,
        call: Call<'_, '_>,
    ) -> Result<Buffered, SqlError> {
        let view = self.view()?;
        let work = self.shard_work(plan, route, view.shards.len())?;
        let atomic = is_atomic_write(&plan.kind);
        let implicit = atomic && !self.tx.is_open() && work.len() > 1;

        let bound = self.scatter_statement(plan, &work, &call);
        let mut indices = Vec::with_capacity(work.len());
        for item in &work {
            let index = self.hold(item.shard).await?;
            let held = &mut self.held[index];
            if implicit {
                held.batch.query(&mut held.conn, "BEGIN", false);
            }
            match &call {
                Call::Simple => match &bound {
                    Some(statement) => {
                        held.batch
                            .query_prepared(&mut held.conn, statement, |_, _| {})
                    }
                    None => held.batch.query(&mut held.conn, &item.sql, true),
                },
                Call::Extended { statement, bind } => {
                    let conn = &mut held.conn;
                    match &item.param_map {
                        Some(map) => {
                            let types = map
                                .iter()
                                .map(|i| statement.wire.param_types.get(*i).copied().unwrap_or(0))
                                .collect();
                            let rewritten = Arc::new(Statement::new(item.sql.clone(), types));
                            held.batch.bind_subset(conn, &rewritten, bind, map, true);
                        }
                        None if *item.sql == *plan.sql => {
                            held.batch.bind(conn, &statement.wire, bind)
                        }
                        None => {
                            let rewritten = Arc::new(Statement::new(
                                item.sql.clone(),
                                statement.wire.param_types.clone(),
                            ));
                            held.batch.bind(conn, &rewritten, bind);
                        }
                    }
                    message::describe_or_close(
                        &mut conn.stream.write_buf,
                        frontend::DESCRIBE,
                        b'P',
                        bind.portal,
                    );
                    held.batch
                        .queue
                        .push_back(Expect::Forward(Reply::DescribePortal));
                    message::execute(&mut conn.stream.write_buf, bind.portal, 0);
                    held.batch.queue.push_back(Expect::Forward(Reply::Execute));
                    held.batch.sync(conn);
                }
            }
            indices.push(index);
        }

        let mut results = self.collect_all(&indices).await;
        if let Some(statement) = &bound {
            self.rerun_stale_as_text(statement, &work, &mut results)
                .await;
        }

        let mut by_index: Vec<(usize, Collected)> = Vec::with_capacity(results.len());
        let mut first_error: Option<SqlError> = None;
        let mut lost = Vec::new();
        for (index, collected, result) in results {
            match result {
                Ok(outcome) => {
                    if let Some(error) = outcome.error {
                        first_error.get_or_insert(error);
                    }
                }
                Err(error) => {
                    lost.push(self.held[index].shard);
                    first_error.get_or_insert(SqlError::new(
                        "08006",
                        format!(
                            "lost the connection to shard {}: {error}",
                            view.shards.name(self.held[index].shard)
                        ),
                    ));
                }
            }
            by_index.push((index, collected));
        }
        // Order results by shard, as the work list is.
        by_index.sort_by_key(|(index, _)| indices.iter().position(|i| i == index));

        if let Some(error) = first_error {
            if implicit {
                for (index, _) in &by_index {
                    let conn = &mut self.held[*index].conn;
                    if !conn.broken && conn.simple("ROLLBACK").await.is_err() {
                        conn.broken = true;
                    }
                }
            } else {
                self.tx.fail();
            }
            for shard in lost {
                self.drop_held(shard);
            }
            self.held.retain(|h| !h.conn.broken);
            return Err(error);
        }

        if implicit {
            let coordinator_index = by_index[0].0;
            let coordinator_shard = view
                .shards
                .name(self.held[coordinator_index].shard)
                .to_string();
            let gid = crate::twopc::gid(
                &self.keyspace,
                &coordinator_shard,
                &self.shared.config.gate_id,
                self.shared.boot_id,
                self.shared.new_transaction_id(),
            );
            let mut coordinator = None;
            let mut others = Vec::new();
            for (index, held) in self.held.iter_mut().enumerate() {
                if index == coordinator_index {
                    coordinator = Some(&mut *held.conn);
                } else if indices.contains(&index) {
                    others.push(&mut *held.conn);
                }
            }
            let coordinator = coordinator.expect("coordinator was collected");
            let result = crate::twopc::commit(coordinator, others, &gid).await;
            self.held.retain(|h| !h.conn.broken);
            result?;
        }

        if let Some(effect) = &plan.effect {
            if self.tx.is_open() {
                self.tx.effects.push(effect.clone());
            } else {
                self.publish_effects(vec![effect.clone()]).await?;
            }
        }

        // Notices: every shard says the same thing; pass on one shard's.
        if let Some((_, first)) = by_index.first() {
            for notice in &first.notices {
                self.client.write_buf.extend_from_slice(notice);
            }
        }
        let row_description = by_index.iter().find_map(|(_, c)| c.row_description.clone());
        let collected: Vec<Collected> = by_index.into_iter().map(|(_, c)| c).collect();
        let rows: Vec<Bytes> = match (&plan.merge, &row_description) {
            (Some(merge_plan), Some(description)) if work.len() > 1 => {
                let fields = fields(description)?;
                let per_shard = collected.iter().map(|c| c.rows.clone()).collect();
                merge::merge(merge_plan, &fields, per_shard).map_err(|e| self.plan_error(e))?
            }
            _ => collected
                .iter()
                .flat_map(|c| c.rows.iter().cloned())
                .collect(),
        };
        let tag = combined_tag(
            &plan.kind,
            &collected,
            rows.len(),
            plan.target == Target::AllShards,
        );
        Ok(Buffered {
            row_description,
            rows: rows.into(),
            tag,
        })
    }

    /// The server statement a parameterless scatter SELECT runs as, outside a transaction: like
    /// a bound single-shard simple query (`simple.rs`), PostgreSQL then skips parse and plan on
    /// every shard. `None` to send the text: always at a text's first run in this session, so
    /// ad-hoc queries with changing literals do not crowd the connections' prepared statements.
    fn scatter_statement(
        &mut self,
        plan: &StatementPlan,
        work: &[ShardWork],
        call: &Call<'_, '_>,
    ) -> Option<Arc<Statement>> {
        let sql = &work.first()?.sql;
        let eligible = matches!(call, Call::Simple)
            && plan.kind == StatementKind::Select
            && plan.param_count == 0
            && self.shared.config.prepare_simple_queries
            && !self.tx.is_open()
            // One statement serves every shard only if they all run the same text.
            && work.iter().all(|w| w.sql == *sql);
        if !eligible {
            return None;
        }
        let key = SqlKey::of(sql).with_types(&[]);
        if !self.bound.contains_key(&key) && !self.scatter_seen.contains(&key) {
            if self.scatter_seen.len() >= MAX_SCATTER_SEEN {
                self.scatter_seen.clear();
            }
            self.scatter_seen.insert(key);
            return None;
        }
        self.scatter_seen.remove(&key);
        Some(super::simple::remember_statement(
            &mut self.bound,
            key,
            sql,
            &[],
        ))
    }

    /// Waits for every held connection in `indices` to answer its queued round trip.
    async fn collect_all(
        &mut self,
        indices: &[usize],
    ) -> Vec<(usize, Collected, Result<Outcome, RelayError>)> {
        let mut pending: Vec<_> = self
            .held
            .iter_mut()
            .enumerate()
            .filter(|(index, _)| indices.contains(index))
            .collect();
        join_all(pending.iter_mut().map(|(index, held)| async move {
            let mut collected = Collected::default();
            let result = relay::collect(&mut held.conn, &mut held.batch, &mut collected).await;
            (*index, collected, result)
        }))
        .await
    }

    /// A shard whose server refused the bound `statement` as stale (DDL changed its result
    /// type) runs the text instead, as a single-shard bound query does. That is safe: no
    /// transaction is open, the refusal came before the statement ran there, and the answers
    /// were collected, not sent. Only the refusing shards run again.
    async fn rerun_stale_as_text(
        &mut self,
        statement: &Statement,
        work: &[ShardWork],
        results: &mut [(usize, Collected, Result<Outcome, RelayError>)],
    ) {
        let stale: Vec<usize> = results
            .iter()
            .filter(|(_, _, result)| {
                matches!(result, Ok(outcome) if outcome.error.as_ref().is_some_and(is_stale_plan))
            })
            .map(|(index, _, _)| *index)
            .collect();
        if stale.is_empty() {
            return;
        }
        self.forget_stale_bound(statement.key, &stale);
        // The text repeats: its next run prepares it anew.
        self.scatter_seen.insert(statement.key);
        for &index in &stale {
            let held = &mut self.held[index];
            held.batch.query(&mut held.conn, &work[0].sql, true);
        }
        for rerun in self.collect_all(&stale).await {
            if let Some(slot) = results.iter_mut().find(|(index, _, _)| *index == rerun.0) {
                *slot = rerun;
            }
        }
    }

    fn shard_work(
        &self,
        plan: &StatementPlan,
        route: &Route,
        shard_count: usize,
    ) -> Result<Vec<ShardWork>, SqlError> {
        let many = |shards: Vec<ShardIndex>| {
            let sql = if shards.len() > 1 {
                plan.shard_sql.clone().unwrap_or_else(|| plan.sql.clone())
            } else {
                plan.sql.clone()
            };
            shards
                .into_iter()
                .map(|shard| ShardWork {
                    shard,
                    sql: sql.clone(),
                    param_map: None,
                })
                .collect()
        };
        Ok(match route {
            Route::Single(shard) => many(vec![*shard]),
            Route::Shards(shards) => many(shards.clone()),
            Route::All => many((0..shard_count).collect()),
            Route::InsertSplit(parts) => {
                let mut work = Vec::with_capacity(parts.len());
                for (shard, rows) in parts {
                    let (sql, param_map) = crate::sql::rewrite::rewrite_insert(plan, rows)
                        .map_err(|e| self.plan_error(e))?;
                    work.push(ShardWork {
                        shard: *shard,
                        sql: sql.into(),
                        param_map: Some(param_map),
                    });
                }
                work
            }
            Route::Gate => Vec::new(),
        })
    }

    /// Writes buffered results: RowDescription (if asked), up to `max_rows` rows (0 = all),
    /// then CommandComplete, or PortalSuspended if rows remain.
    pub(super) fn emit_buffered(&mut self, buffered: &mut Buffered, describe: bool, max_rows: i32) {
        let out = &mut self.client.write_buf;
        if describe {
            write_description(out, &buffered.row_description);
        }
        let limit = if max_rows <= 0 {
            usize::MAX
        } else {
            max_rows as usize
        };
        let mut sent = 0;
        while sent < limit {
            let Some(row) = buffered.rows.pop_front() else {
                break;
            };
            out.put_u8(backend::DATA_ROW);
            out.put_i32(row.len() as i32 + 4);
            out.extend_from_slice(&row);
            sent += 1;
        }
        if buffered.rows.is_empty() {
            message::command_complete(out, &buffered.tag);
        } else {
            message::empty(out, backend::PORTAL_SUSPENDED);
        }
    }
}

/// RowDescription, or NoData for statements that return no rows.
pub(super) fn write_description(out: &mut BytesMut, row_description: &Option<Bytes>) {
    match row_description {
        Some(body) => {
            out.put_u8(backend::ROW_DESCRIPTION);
            out.put_i32(body.len() as i32 + 4);
            out.extend_from_slice(body);
        }
        None => message::empty(out, backend::NO_DATA),
    }
}
