//! The simple query protocol: one Query message, possibly several statements.

use std::sync::Arc;

use tessera_wire::relay::{RelayError, is_stale_plan};
use tessera_wire::{SqlError, Statement, extended};

use super::multi::Call;
use super::{Flow, Session};
use crate::cluster::KeyspaceView;
use crate::sql::plan::{StatementKind, StatementPlan, check_unparsed};
use crate::sql::route::{Params, Route, route};
use crate::sql::{TemplatePlan, template_route};

/// Statements allowed in a transaction that already failed.
pub(super) fn allowed_in_failed_transaction(kind: &StatementKind) -> bool {
    matches!(
        kind,
        StatementKind::Commit | StatementKind::Rollback | StatementKind::Savepoint
    )
}

/// Server statements a session remembers for its bound simple queries (then it starts over).
const MAX_BOUND_STATEMENTS: usize = 64;

/// What PostgreSQL answers to statements in a transaction that already failed.
pub(super) fn aborted_error() -> SqlError {
    SqlError::new(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

impl Session {
    pub(super) async fn simple_query(&mut self, body: &[u8]) -> Result<Flow, RelayError> {
        let sql = match extended::parse_query(body) {
            Ok(sql) => sql,
            Err(error) => {
                self.fatal_protocol(&error.to_string()).await;
                return Ok(Flow::Close);
            }
        };
        self.shared.metrics.simple_queries.increment(1);
        if let Err(error) = self.run_simple(sql).await {
            error.encode(&mut self.client.write_buf);
            if error.severity == "FATAL" {
                let _ = self.client.flush().await;
                return Ok(Flow::Close);
            }
        }
        self.release_idle();
        self.ready().await?;
        Ok(Flow::Continue)
    }

    async fn run_simple(&mut self, sql: &str) -> Result<(), SqlError> {
        let view = self.view()?;
        if let Some((shard, template)) = self.template_shard(sql, &view) {
            // Exactly what planning the text would do for a single-shard data statement.
            if self.tx.is_failed() {
                return Err(aborted_error());
            }
            // Outside a transaction a bound run can always fall back to the text (below).
            if self.shared.config.prepare_simple_queries
                && !self.tx.is_open()
                && self
                    .template
                    .bind_types(sql, &template.bindable, &mut self.bind_types)
            {
                return self.single_bound(shard, &template, sql).await.map(|_| ());
            }
            return self.single_simple(shard, sql).await.map(|_| ());
        }
        let plans = match self.shared.plans.get_query(sql, &view.vschema) {
            Ok(plans) => plans,
            Err(error) => return self.run_unparsed(sql, self.plan_error(error)).await,
        };
        if plans.is_empty() {
            tessera_wire::message::empty(
                &mut self.client.write_buf,
                tessera_wire::message::backend::EMPTY_QUERY,
            );
            return Ok(());
        }
        // Several statements all bound for one shard go there as one string, keeping
        // PostgreSQL's implicit-transaction semantics for multi-statement queries.
        if plans.len() > 1
            && let Some(shard) = self.common_shard(&plans)?
        {
            return self.single_simple(shard, sql).await.map(|_| ());
        }
        for plan in plans.iter() {
            if !self.run_simple_statement(plan).await? {
                break;
            }
        }
        Ok(())
    }

    /// The shard of a single-shard data statement whose constants vary (`... WHERE id = 42`),
    /// found through its literal template without parsing the text; `None` to plan the text.
    fn template_shard(
        &mut self,
        sql: &str,
        view: &KeyspaceView,
    ) -> Option<(usize, Arc<TemplatePlan>)> {
        if !self.template.scan(sql) {
            return None;
        }
        let plan = self
            .shared
            .plans
            .get_template(&self.template.text, &view.vschema)?;
        let shard = template_route(&plan, &self.template, sql, &view.shards)?;
        Some((shard, plan))
    }

    /// Runs the query on `shard` as its template prepared on the server and bound to the
    /// query's constants (types already in `bind_types`): PostgreSQL skips parse and plan. The
    /// client sees the simple query's answer. If the server's cached plan went stale (DDL
    /// changed the result type), the statement is dropped and the text runs instead, which is
    /// safe because no transaction is open and the error came before any result.
    async fn single_bound(
        &mut self,
        shard: usize,
        template: &TemplatePlan,
        sql: &str,
    ) -> Result<bool, SqlError> {
        let statement = self.bound_statement(template);
        let index = self.hold(shard).await?;
        // Anything pending goes out first, so a stale-plan error can be taken back below.
        self.client
            .flush()
            .await
            .map_err(|e| SqlError::fatal("08006", format!("client connection lost: {e}")))?;
        let held = &mut self.held[index];
        let scanned = &self.template;
        held.batch
            .query_prepared(&mut held.conn, &statement, |i, out| {
                scanned.write_value(sql, i, out)
            });
        let outcome = self.pump(index).await?;
        if let Some(error) = &outcome.error
            && is_stale_plan(error)
            && self.client.write_buf.first() == Some(&tessera_wire::message::backend::ERROR)
        {
            self.client.write_buf.clear();
            if let Some(index) = self.held.iter().position(|h| h.shard == shard) {
                self.forget_stale_bound(statement.key, &[index]);
            }
            return self.single_simple(shard, sql).await;
        }
        Ok(outcome.error.is_none())
    }

    /// The server statement for `template` with the parameter types in `bind_types`.
    fn bound_statement(&mut self, template: &TemplatePlan) -> Arc<Statement> {
        let key = template.sql_key.with_types(&self.bind_types);
        remember_statement(&mut self.bound, key, &template.plan.sql, &self.bind_types)
    }

    /// A bound statement that the servers of the held connections at `indices` refused as
    /// stale: closed there at their next round trip, and forgotten by the session, so its next
    /// use prepares it anew.
    pub(super) fn forget_stale_bound(&mut self, key: u64, indices: &[usize]) {
        for &index in indices {
            self.held[index].conn.prepared.forget(key);
        }
        self.bound.remove(&key);
        metrics::counter!("tessera_gate_stale_prepared_total").increment(indices.len() as u64);
    }

    /// The one shard every statement routes to, if there is one and none is for the gate.
    fn common_shard(&mut self, plans: &[Arc<StatementPlan>]) -> Result<Option<usize>, SqlError> {
        let view = self.view()?;
        let mut common = None;
        for plan in plans {
            match route(plan, &Params::default(), &view.shards) {
                Ok(Route::Single(shard)) if common.is_none_or(|c| c == shard) => {
                    common = Some(shard)
                }
                _ => return Ok(None),
            }
        }
        Ok(common)
    }

    /// Runs one statement; `Ok(false)` if it failed and the server's error was already sent.
    async fn run_simple_statement(&mut self, plan: &Arc<StatementPlan>) -> Result<bool, SqlError> {
        if self.tx.is_failed() && !allowed_in_failed_transaction(&plan.kind) {
            return Err(aborted_error());
        }
        let view = self.view()?;
        let route =
            route(plan, &Params::default(), &view.shards).map_err(|e| self.plan_error(e))?;
        match route {
            Route::Gate => self.gate_command(plan).await.map(|_| true),
            Route::Single(shard) => self.single_simple(shard, &plan.sql).await,
            route => {
                let mut buffered = self.multi(plan, &route, Call::Simple).await?;
                let describe = buffered.row_description.is_some();
                self.emit_buffered(&mut buffered, describe, 0);
                Ok(true)
            }
        }
    }

    async fn single_simple(&mut self, shard: usize, sql: &str) -> Result<bool, SqlError> {
        let index = self.hold(shard).await?;
        let held = &mut self.held[index];
        held.batch.query(&mut held.conn, sql, true);
        let outcome = self.pump(index).await?;
        Ok(outcome.error.is_none())
    }

    /// SQL the gate cannot parse runs only where that is safe: inside a transaction already
    /// pinned to exactly one shard.
    async fn run_unparsed(&mut self, sql: &str, error: SqlError) -> Result<(), SqlError> {
        let participants: Vec<usize> = self
            .held
            .iter()
            .filter(|h| h.in_transaction)
            .map(|h| h.shard)
            .collect();
        match participants.as_slice() {
            [shard] if self.tx.is_open() => {
                check_unparsed(sql).map_err(|e| self.plan_error(e))?;
                self.single_simple(*shard, sql).await.map(|_| ())
            }
            _ => Err(error),
        }
    }
}

/// The server statement for `sql` with `param_types` (content `key`), from the session's
/// `bound` statements or added to them.
pub(super) fn remember_statement(
    bound: &mut foldhash::HashMap<u64, Arc<Statement>>,
    key: u64,
    sql: &Arc<str>,
    param_types: &[u32],
) -> Arc<Statement> {
    if let Some(statement) = bound.get(&key) {
        return statement.clone();
    }
    if bound.len() >= MAX_BOUND_STATEMENTS {
        bound.clear();
    }
    let statement = Arc::new(Statement::new(sql.clone(), param_types.to_vec()));
    bound.insert(key, statement.clone());
    statement
}
