//! Transactions as the client sees them, and the statements the gate answers itself
//! (BEGIN, COMMIT, ROLLBACK, savepoints, SET/RESET, DISCARD, DEALLOCATE).
//!
//! BEGIN opens nothing on the servers: a shard joins the transaction when a statement first
//! goes there (BEGIN is queued in front of that statement). COMMIT of a transaction that
//! touched one shard is a plain COMMIT there; several shards commit with two-phase commit.

use bytes::BytesMut;
use sqlparser::ast::Statement as Ast;
use tessera_wire::message::{self, TxStatus};
use tessera_wire::relay::Batch;
use tessera_wire::{ServerConn, SqlError};

use super::{Session, settings};
use crate::sql::plan::{SchemaEffect, StatementKind, StatementPlan};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum TxState {
    #[default]
    Autocommit,
    Open,
    /// A statement failed; everything but ROLLBACK fails until the transaction ends.
    Failed,
}

/// The client's explicit transaction.
#[derive(Debug, Default)]
pub(crate) struct Tx {
    state: TxState,
    /// BEGIN as the client wrote it (isolation level, read only ...), replayed on each shard.
    begin_sql: String,
    /// Statements to replay on a shard when it joins: savepoints made before any shard was
    /// involved, SET LOCAL.
    replay: Vec<String>,
    /// Savepoints exist: the transaction may not spread to a second shard (a savepoint cannot be
    /// rolled back consistently on shards that joined after it).
    has_savepoints: bool,
    /// Session-level SET/RESET made inside the transaction, applied when it commits.
    pending_settings: Vec<(String, Option<String>)>,
    /// Schema changes to publish in the topology once the transaction commits.
    pub effects: Vec<SchemaEffect>,
}

impl Tx {
    pub fn status(&self) -> TxStatus {
        match self.state {
            TxState::Autocommit => TxStatus::Idle,
            TxState::Open => TxStatus::InTransaction,
            TxState::Failed => TxStatus::Failed,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state != TxState::Autocommit
    }

    pub fn is_failed(&self) -> bool {
        self.state == TxState::Failed
    }

    pub fn fail(&mut self) {
        if self.state == TxState::Open {
            self.state = TxState::Failed;
        }
    }

    fn begin(&mut self, sql: &str) {
        *self = Tx {
            state: TxState::Open,
            begin_sql: sql.to_string(),
            ..Tx::default()
        };
    }

    pub fn check_can_join(&self, participants: usize) -> Result<(), SqlError> {
        if self.has_savepoints && participants >= 1 {
            return Err(SqlError::new(
                "0A000",
                "a transaction with savepoints cannot span several shards",
            )
            .with_hint("keep transactions that use savepoints on one sharding key"));
        }
        Ok(())
    }

    /// Queues what makes a new connection part of the transaction.
    pub fn join(&self, conn: &mut ServerConn, batch: &mut Batch) {
        let mut sql = self.begin_sql.clone();
        for statement in &self.replay {
            sql.push_str("; ");
            sql.push_str(statement);
        }
        batch.query(conn, &sql, false);
    }

    /// Reacts to a ReadyForQuery from a connection that is part of the transaction.
    pub fn observe(&mut self, status: TxStatus, in_transaction: bool, failed: bool) {
        if !in_transaction || self.state == TxState::Autocommit {
            return;
        }
        match status {
            TxStatus::Failed => self.state = TxState::Failed,
            TxStatus::InTransaction if !failed => self.state = TxState::Open,
            TxStatus::Idle => {
                // The server ended the transaction by itself (e.g. COMMIT inside a statement
                // the gate forwarded verbatim).
                self.state = TxState::Autocommit;
            }
            _ => {}
        }
    }

    /// The server is in a transaction the gate did not open (a statement it forwarded
    /// verbatim started one).
    pub fn adopt_server_transaction(&mut self) {
        if self.state == TxState::Autocommit {
            self.begin("BEGIN");
        }
    }
}

fn statement_tag(plan: &StatementPlan) -> &'static str {
    match &*plan.ast {
        Ast::Savepoint { .. } => "SAVEPOINT",
        Ast::ReleaseSavepoint { .. } => "RELEASE",
        Ast::Rollback { .. } => "ROLLBACK",
        Ast::Discard { .. } => "DISCARD ALL",
        Ast::Deallocate { .. } => "DEALLOCATE",
        _ => "",
    }
}

impl Session {
    /// Runs a statement routed to the gate itself; writes its answer to the client.
    pub(super) async fn gate_command(&mut self, plan: &StatementPlan) -> Result<(), SqlError> {
        match &plan.kind {
            StatementKind::Begin => {
                if self.tx.is_open() {
                    let mut notice =
                        SqlError::new("25001", "there is already a transaction in progress");
                    notice.severity = "WARNING";
                    self.notice(&notice);
                } else {
                    self.tx.begin(&plan.sql);
                    // Extended-protocol connections of this batch stay in the transaction.
                }
                self.complete("BEGIN");
                Ok(())
            }
            StatementKind::Commit => self.commit().await,
            StatementKind::Rollback
                if !matches!(
                    &*plan.ast,
                    Ast::Rollback {
                        savepoint: Some(_),
                        ..
                    }
                ) =>
            {
                if !self.tx.is_open() {
                    let mut notice = SqlError::new("25P01", "there is no transaction in progress");
                    notice.severity = "WARNING";
                    self.notice(&notice);
                }
                self.rollback().await;
                self.complete("ROLLBACK");
                Ok(())
            }
            StatementKind::Savepoint | StatementKind::Rollback => self.savepoint(plan).await,
            StatementKind::Set { name, .. } => self.set(plan, name).await,
            StatementKind::Reset { name } => self.reset(plan, name.as_deref()).await,
            _ => match &*plan.ast {
                Ast::Discard { .. } => {
                    if self.tx.is_open() {
                        return Err(SqlError::new(
                            "25001",
                            "DISCARD ALL cannot run inside a transaction block",
                        ));
                    }
                    self.statements.clear();
                    self.portals.clear();
                    self.settings.reset_all();
                    self.complete("DISCARD ALL");
                    Ok(())
                }
                Ast::Deallocate { name, .. } => {
                    let name = name.value.clone();
                    if name.eq_ignore_ascii_case("all") {
                        self.statements.clear();
                        self.complete("DEALLOCATE ALL");
                    } else if self.statements.remove(&name).is_some() {
                        self.complete("DEALLOCATE");
                    } else {
                        return Err(SqlError::new(
                            "26000",
                            format!("prepared statement \"{name}\" does not exist"),
                        ));
                    }
                    Ok(())
                }
                other => Err(SqlError::new(
                    "0A000",
                    format!(
                        "statement not supported by the gate: {}",
                        statement_tag_or_text(other)
                    ),
                )),
            },
        }
    }

    fn complete(&mut self, tag: &str) {
        message::command_complete(&mut self.client.write_buf, tag);
    }

    fn notice(&mut self, notice: &SqlError) {
        let mut bytes = BytesMut::new();
        notice.encode(&mut bytes);
        // A notice is an ErrorResponse with tag 'N'.
        bytes[0] = tessera_wire::message::backend::NOTICE;
        self.client.write_buf.extend_from_slice(&bytes);
    }

    fn participants(&self) -> Vec<usize> {
        (0..self.held.len())
            .filter(|i| self.held[*i].in_transaction)
            .collect()
    }

    /// Ends the transaction: commit (two-phase across shards) or, if it failed, roll back.
    pub(super) async fn commit(&mut self) -> Result<(), SqlError> {
        if !self.tx.is_open() {
            let mut notice = SqlError::new("25P01", "there is no transaction in progress");
            notice.severity = "WARNING";
            self.notice(&notice);
            self.complete("COMMIT");
            return Ok(());
        }
        if self.tx.is_failed() {
            self.rollback().await;
            self.complete("ROLLBACK");
            return Ok(());
        }
        let participants = self.participants();
        let result = match participants.as_slice() {
            [] => Ok(()),
            [only] => {
                let conn = &mut self.held[*only].conn;
                conn.simple("COMMIT").await.map(|_| ()).map_err(|error| {
                    if !matches!(error, tessera_wire::WireError::Server(_)) {
                        conn.broken = true;
                    }
                    error.to_sql_error("commit failed")
                })
            }
            _ => self.commit_distributed(&participants).await,
        };
        let tx = std::mem::take(&mut self.tx);
        self.end_transaction();
        result?;
        for (name, statement) in tx.pending_settings {
            match statement {
                Some(statement) => self.settings.set(&name, statement),
                None if name == "all" => self.settings.reset_all(),
                None => self.settings.reset(&name),
            }
        }
        self.publish_effects(tx.effects).await?;
        self.complete("COMMIT");
        Ok(())
    }

    /// Two-phase commit over the participants at these `held` indices.
    async fn commit_distributed(&mut self, participants: &[usize]) -> Result<(), SqlError> {
        let view = self.view()?;
        let coordinator_index = participants[0];
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
            } else if participants.contains(&index) {
                others.push(&mut *held.conn);
            }
        }
        let coordinator = coordinator.expect("coordinator is a participant");
        crate::twopc::commit(coordinator, others, &gid).await
    }

    /// Rolls back every participant and forgets the transaction.
    pub(super) async fn rollback(&mut self) {
        for index in self.participants() {
            let conn = &mut self.held[index].conn;
            if conn.tx_status != TxStatus::Idle && conn.simple("ROLLBACK").await.is_err() {
                conn.broken = true;
            }
        }
        self.tx = Tx::default();
        self.end_transaction();
    }

    /// After COMMIT/ROLLBACK: connections leave the transaction and go back to the pool.
    fn end_transaction(&mut self) {
        for held in &mut self.held {
            held.in_transaction = false;
            if held.conn.tx_status != TxStatus::Idle {
                // A participant we could not end cleanly must not be reused.
                held.conn.discard();
                held.conn.tx_status = TxStatus::Idle;
            }
        }
        self.portals.clear();
        self.held.retain(|h| !h.conn.broken);
        self.release_idle();
    }

    async fn savepoint(&mut self, plan: &StatementPlan) -> Result<(), SqlError> {
        if !self.tx.is_open() {
            return Err(SqlError::new(
                "25P01",
                format!(
                    "{} can only be used in transaction blocks",
                    statement_tag(plan)
                ),
            ));
        }
        let participants = self.participants();
        match participants.as_slice() {
            [] => {
                self.tx.has_savepoints = true;
                self.tx.replay.push(plan.sql.to_string());
                self.complete(statement_tag(plan));
                Ok(())
            }
            [only] => {
                self.tx.has_savepoints = true;
                let index = *only;
                let held = &mut self.held[index];
                held.batch.query(&mut held.conn, &plan.sql, true);
                self.pump(index).await.map(|_| ())
            }
            _ => Err(SqlError::new(
                "0A000",
                "savepoints are not supported in a transaction that spans several shards",
            )),
        }
    }

    /// SET: checked by a shard (which also applies it to that connection), then remembered.
    async fn set(&mut self, plan: &StatementPlan, name: &str) -> Result<(), SqlError> {
        let name = name.to_ascii_lowercase();
        if settings::PROTECTED.contains(&name.as_str()) {
            return Err(settings::protected_error(&name));
        }
        if self.tx.is_open() {
            self.run_on_participants(plan).await?;
            if plan.set_local {
                self.tx.replay.push(plan.sql.to_string());
            } else {
                self.tx
                    .pending_settings
                    .push((name, Some(plan.sql.to_string())));
            }
            return Ok(());
        }
        if plan.set_local {
            // Outside a transaction SET LOCAL has no effect; PostgreSQL warns and says SET.
            let mut notice =
                SqlError::new("25P01", "SET LOCAL can only be used in transaction blocks");
            notice.severity = "WARNING";
            self.notice(&notice);
            self.complete("SET");
            return Ok(());
        }
        if let Some(ran_on) = self.run_checked_setting(&plan.sql).await? {
            self.settings.set(&name, plan.sql.to_string());
            self.sync_settings_marker(ran_on);
        }
        Ok(())
    }

    async fn reset(&mut self, plan: &StatementPlan, name: Option<&str>) -> Result<(), SqlError> {
        let key = name.map(str::to_ascii_lowercase);
        if let Some(key) = &key
            && settings::PROTECTED.contains(&key.as_str())
        {
            return Err(settings::protected_error(key));
        }
        if self.tx.is_open() {
            self.run_on_participants(plan).await?;
            self.tx
                .pending_settings
                .push((key.unwrap_or_else(|| "all".into()), None));
            return Ok(());
        }
        if let Some(ran_on) = self.run_checked_setting(&plan.sql).await? {
            match key {
                Some(key) => self.settings.reset(&key),
                None => self.settings.reset_all(),
            }
            self.sync_settings_marker(ran_on);
        }
        Ok(())
    }

    /// Runs a SET/RESET on one shard with its answer forwarded. Returns the index of the
    /// connection it ran on, or `None` if the server refused it (the error was forwarded).
    async fn run_checked_setting(&mut self, sql: &str) -> Result<Option<usize>, SqlError> {
        let shard = self.held.first().map(|h| h.shard).unwrap_or(0);
        let index = self.hold(shard).await?;
        let held = &mut self.held[index];
        held.batch.query(&mut held.conn, sql, true);
        let outcome = self.pump(index).await?;
        Ok(outcome.error.is_none().then_some(index))
    }

    /// The connection that ran a SET/RESET now carries the session's settings exactly; any
    /// other connection held by the session gets them queued before its next statement.
    fn sync_settings_marker(&mut self, ran_on: usize) {
        for (index, held) in self.held.iter_mut().enumerate() {
            if index == ran_on {
                held.conn.settings = self.settings.list().to_vec();
            } else {
                self.settings.sync(&mut held.conn, &mut held.batch);
            }
        }
    }

    /// Sends a statement to every participant (or, with none yet, to the first shard, which
    /// joins), forwarding the first answer and swallowing the rest.
    async fn run_on_participants(&mut self, plan: &StatementPlan) -> Result<(), SqlError> {
        let mut participants = self.participants();
        if participants.is_empty() {
            participants.push(self.hold(0).await?);
        }
        for (n, index) in participants.into_iter().enumerate() {
            let held = &mut self.held[index];
            held.batch.query(&mut held.conn, &plan.sql, n == 0);
            let outcome = self.pump(index).await?;
            if outcome.error.is_some() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Records DDL effects in the topology so every gate routes the new schema.
    pub(super) async fn publish_effects(
        &mut self,
        effects: Vec<SchemaEffect>,
    ) -> Result<(), SqlError> {
        if effects.is_empty() {
            return Ok(());
        }
        crate::schema::publish(&self.shared.cluster, &self.keyspace, &effects)
            .await
            .map_err(|error| {
                SqlError::new(
                    "XX000",
                    format!("the schema change succeeded on every shard but could not be recorded in the topology: {error}"),
                )
                .with_hint("retry the statement with IF NOT EXISTS / IF EXISTS to record it")
            })?;
        self.view = None;
        Ok(())
    }
}

fn statement_tag_or_text(statement: &Ast) -> String {
    let text = statement.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}
