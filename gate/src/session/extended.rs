//! The extended query protocol: Parse/Bind/Describe/Execute/Close up to Sync or Flush.
//!
//! Messages are handled in order. Single-shard work is queued on that shard's connection and
//! sent in one round trip at Sync (or Flush); the gate's own answers (ParseComplete for a
//! statement the server already has, BindComplete of a multi-shard portal, errors) are queued
//! in the same stream so the client sees every answer in order. Before work for another shard
//! or a multi-shard statement, the queued work is flushed and answered first.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tessera_wire::extended::{Bind, Execute, Named, Parse, Target as NamedTarget};
use tessera_wire::message::{self, backend, frontend};
use tessera_wire::relay::{Batch, RelayError, Reply, check_not_outdated};
use tessera_wire::socket::frame_at;
use tessera_wire::{SqlError, Statement};

use super::multi::{Call, write_description};
use super::simple::{aborted_error, allowed_in_failed_transaction};
use super::{ClientStatement, Flow, Portal, Session};
use crate::sql::plan::{Target, check_unparsed};
use crate::sql::route::{Params, Route, route};
use crate::sql::shardmap::ShardIndex;

impl Session {
    pub(super) async fn extended_batch(
        &mut self,
        frames: &[u8],
        sync: bool,
    ) -> Result<Flow, RelayError> {
        let mut active: Option<ShardIndex> = None;
        let mut pos = 0;
        while pos < frames.len() {
            let Ok(Some((tag, len))) = frame_at(&frames[pos..]) else {
                break;
            };
            let frame = &frames[pos..pos + len];
            pos += len;
            if self.skip_to_sync {
                continue;
            }
            let result = match tag {
                frontend::PARSE => self.on_parse(frame, active),
                frontend::BIND => self.on_bind(frame, &mut active).await,
                frontend::DESCRIBE => self.on_describe(frame, &mut active).await,
                frontend::EXECUTE => self.on_execute(frame, &mut active).await,
                frontend::CLOSE => self.on_close(frame, active),
                _ => Ok(()),
            };
            if let Err(error) = result {
                if error.severity == "FATAL" {
                    error.encode(&mut self.client.write_buf);
                    let _ = self.client.flush().await;
                    return Ok(Flow::Close);
                }
                self.emit_error(&error, active);
                self.skip_to_sync = true;
                self.tx.fail();
            }
        }
        self.shared.metrics.extended_batches.increment(1);
        if sync {
            self.finish_sync(active).await?;
        } else if let Some(shard) = active {
            self.flush_segment(shard).await?;
            self.client.flush().await.map_err(RelayError::Client)?;
        } else {
            self.client.flush().await.map_err(RelayError::Client)?;
        }
        Ok(Flow::Continue)
    }

    /// Sync: every connection used in this batch gets Sync; the active one carries the queued
    /// answers and goes last so they come out in order.
    async fn finish_sync(&mut self, active: Option<ShardIndex>) -> Result<(), RelayError> {
        // A reused list: no allocation per batch.
        let mut order = std::mem::take(&mut self.sync_order);
        order.clear();
        order.extend(
            self.held
                .iter()
                .filter(|h| {
                    Some(h.shard) != active
                        && (h.conn.tx_status != message::TxStatus::Idle || !h.batch.is_empty())
                })
                .map(|h| h.shard),
        );
        order.extend(active);
        for &shard in &order {
            let Some(index) = self.held.iter().position(|h| h.shard == shard) else {
                continue;
            };
            let held = &mut self.held[index];
            held.batch.sync(&mut held.conn);
            if let Err(error) = self.pump(index).await {
                if error.code == "08006" && error.severity == "FATAL" {
                    return Err(RelayError::Client(std::io::Error::other(error.message)));
                }
                self.emit_error(&error, None);
            }
        }
        self.sync_order = order;
        self.skip_to_sync = false;
        if !self.tx.is_open() {
            // An implicit transaction ends at Sync, and portals with it.
            self.portals.clear();
        }
        self.release_idle();
        self.ready().await
    }

    /// Sends what is queued for `shard` with a Flush and relays the answers.
    async fn flush_segment(&mut self, shard: ShardIndex) -> Result<(), RelayError> {
        let Some(index) = self.held.iter().position(|h| h.shard == shard) else {
            return Ok(());
        };
        let held = &mut self.held[index];
        if held.batch.is_empty() {
            return Ok(());
        }
        held.batch.flush(&mut held.conn);
        match self.pump(index).await {
            Ok(outcome) => {
                if outcome.error.is_some() {
                    self.skip_to_sync = true;
                }
                Ok(())
            }
            Err(error) if error.severity == "FATAL" => {
                Err(RelayError::Client(std::io::Error::other(error.message)))
            }
            Err(error) => {
                error.encode(&mut self.client.write_buf);
                self.skip_to_sync = true;
                Ok(())
            }
        }
    }

    /// Makes `shard` the connection that receives queued work, flushing the previous one.
    async fn activate(
        &mut self,
        shard: ShardIndex,
        active: &mut Option<ShardIndex>,
    ) -> Result<usize, SqlError> {
        if let Some(previous) = *active
            && previous != shard
        {
            self.flush_segment(previous)
                .await
                .map_err(|e| SqlError::fatal("08006", e.to_string()))?;
            *active = None;
            if self.skip_to_sync {
                return Err(SqlError::new("XX000", "batch aborted by an earlier error"));
            }
        }
        let index = self.hold(shard).await?;
        *active = Some(shard);
        Ok(index)
    }

    /// Flushes the active segment before the gate answers by itself or runs multi-shard work.
    async fn deactivate(&mut self, active: &mut Option<ShardIndex>) -> Result<(), SqlError> {
        if let Some(shard) = active.take() {
            self.flush_segment(shard)
                .await
                .map_err(|e| SqlError::fatal("08006", e.to_string()))?;
            if self.skip_to_sync {
                return Err(SqlError::new("XX000", "batch aborted by an earlier error"));
            }
        }
        Ok(())
    }

    fn emit_empty(&mut self, tag: u8, active: Option<ShardIndex>) {
        let mut bytes = BytesMut::with_capacity(5);
        message::empty(&mut bytes, tag);
        self.emit(bytes, active);
    }

    fn on_parse(&mut self, frame: &[u8], active: Option<ShardIndex>) -> Result<(), SqlError> {
        let parse =
            Parse::parse(&frame[5..]).map_err(|e| SqlError::fatal("08P01", e.to_string()))?;
        if !parse.name.is_empty() && self.statements.contains_key(parse.name) {
            return Err(SqlError::new(
                "42P05",
                format!("prepared statement \"{}\" already exists", parse.name),
            ));
        }
        let view = self.view()?;
        let plan =
            match self
                .shared
                .plans
                .get_statement(parse.sql, &parse.param_types, &view.vschema)
            {
                Ok(plan) => Some(plan),
                Err(error) => {
                    // Unparsable SQL may still run inside a transaction pinned to one shard.
                    let pinned = self.tx.is_open()
                        && self.held.iter().filter(|h| h.in_transaction).count() == 1;
                    if pinned && check_unparsed(parse.sql).is_ok() {
                        None
                    } else {
                        return Err(self.plan_error(error));
                    }
                }
            };
        let wire = Arc::new(Statement::new(parse.sql.into(), parse.param_types));
        self.statements.insert(
            parse.name.to_string(),
            Arc::new(ClientStatement { wire, plan }),
        );
        self.emit_empty(backend::PARSE_COMPLETE, active);
        Ok(())
    }

    fn statement(&self, name: &str) -> Result<Arc<ClientStatement>, SqlError> {
        self.statements.get(name).cloned().ok_or_else(|| {
            SqlError::new(
                "26000",
                format!("prepared statement \"{name}\" does not exist"),
            )
        })
    }

    async fn on_bind(
        &mut self,
        frame: &[u8],
        active: &mut Option<ShardIndex>,
    ) -> Result<(), SqlError> {
        let bind = Bind::parse(&frame[5..]).map_err(|e| SqlError::fatal("08P01", e.to_string()))?;
        let statement = self.statement(bind.statement)?;
        if !bind.portal.is_empty() && self.portals.contains(bind.portal) {
            return Err(SqlError::new(
                "42P03",
                format!("portal \"{}\" already exists", bind.portal),
            ));
        }
        let expected = statement
            .wire
            .param_types
            .len()
            .max(statement.plan.as_ref().map_or(0, |p| p.param_count));
        if bind.params.len() != expected && statement.plan.is_some() {
            return Err(SqlError::new(
                "08P01",
                format!(
                    "bind message supplies {} parameters, but prepared statement \"{}\" requires {expected}",
                    bind.params.len(),
                    bind.statement
                ),
            ));
        }
        let route = match &statement.plan {
            Some(plan) => {
                if self.tx.is_failed() && !allowed_in_failed_transaction(&plan.kind) {
                    return Err(aborted_error());
                }
                let view = self.view()?;
                let params = Params {
                    values: &bind.params,
                    formats: &bind.param_formats,
                    types: &statement.wire.param_types,
                };
                route(plan, &params, &view.shards).map_err(|e| self.plan_error(e))?
            }
            None => match self.held.iter().find(|h| h.in_transaction) {
                Some(held) => Route::Single(held.shard),
                None => return Err(SqlError::new("42601", "statement could not be parsed")),
            },
        };
        let keep_bind = !matches!(route, Route::Single(_));
        if let Route::Single(shard) = route {
            let index = self.activate(shard, active).await?;
            let held = &mut self.held[index];
            check_not_outdated(&held.conn, &statement.wire)?;
            held.batch.bind(&mut held.conn, &statement.wire, &bind);
        } else {
            self.emit_empty(backend::BIND_COMPLETE, *active);
        }
        self.portals.insert(
            bind.portal,
            Portal {
                statement,
                route,
                bind: if keep_bind {
                    // Only multi-shard portals keep it (re-sent to each shard).
                    Bytes::copy_from_slice(&frame[5..])
                } else {
                    Bytes::new()
                },
                buffered: None,
            },
        );
        Ok(())
    }

    async fn on_describe(
        &mut self,
        frame: &[u8],
        active: &mut Option<ShardIndex>,
    ) -> Result<(), SqlError> {
        let named = Named::parse(&frame[5..], "Describe")
            .map_err(|e| SqlError::fatal("08P01", e.to_string()))?;
        match named.target {
            NamedTarget::Statement => {
                let statement = self.statement(named.name)?;
                if let Some(plan) = &statement.plan
                    && plan.target == Target::Gate
                {
                    let mut bytes = BytesMut::new();
                    message::parameter_description(&mut bytes, &statement.wire.param_types);
                    message::empty(&mut bytes, backend::NO_DATA);
                    self.emit(bytes, *active);
                    return Ok(());
                }
                // Any shard can describe a statement; prefer the one already in use.
                let shard = active
                    .or_else(|| self.held.iter().find(|h| h.in_transaction).map(|h| h.shard))
                    .or_else(|| {
                        let plan = statement.plan.as_ref()?;
                        let view = self.view.clone()?;
                        match route(plan, &Params::default(), &view.shards) {
                            Ok(Route::Single(shard)) => Some(shard),
                            _ => None,
                        }
                    })
                    .unwrap_or(0);
                let index = self.activate(shard, active).await?;
                let held = &mut self.held[index];
                check_not_outdated(&held.conn, &statement.wire)?;
                held.batch
                    .describe_statement(&mut held.conn, &statement.wire);
                Ok(())
            }
            NamedTarget::Portal => {
                let route = self.portal_route(named.name)?;
                match route {
                    Route::Single(shard) => {
                        let index = self.activate(shard, active).await?;
                        let held = &mut self.held[index];
                        held.batch
                            .raw(&mut held.conn, frame, Reply::DescribePortal, true);
                    }
                    Route::Gate => self.emit_empty(backend::NO_DATA, *active),
                    _ => {
                        self.deactivate(active).await?;
                        self.run_multi_portal(named.name).await?;
                        let portal = self.portals.get(named.name).expect("portal checked");
                        let description = portal
                            .buffered
                            .as_ref()
                            .and_then(|b| b.row_description.clone());
                        write_description(&mut self.client.write_buf, &description);
                    }
                }
                Ok(())
            }
        }
    }

    fn portal_route(&self, name: &str) -> Result<Route, SqlError> {
        self.portals
            .get(name)
            .map(|p| p.route.clone())
            .ok_or_else(|| SqlError::new("34000", format!("portal \"{name}\" does not exist")))
    }

    /// Runs a multi-shard portal once, keeping its results for Execute.
    async fn run_multi_portal(&mut self, name: &str) -> Result<(), SqlError> {
        let portal = self.portals.get(name).expect("portal checked");
        if portal.buffered.is_some() {
            return Ok(());
        }
        let statement = portal.statement.clone();
        let route = portal.route.clone();
        let bind_body = portal.bind.clone();
        let Some(plan) = statement.plan.clone() else {
            return Err(SqlError::new("42601", "statement could not be parsed"));
        };
        let bind = Bind::parse(&bind_body).map_err(|e| SqlError::fatal("08P01", e.to_string()))?;
        let buffered = self
            .multi(
                &plan,
                &route,
                Call::Extended {
                    statement: &statement,
                    bind: &bind,
                },
            )
            .await?;
        if let Some(portal) = self.portals.get_mut(name) {
            portal.buffered = Some(buffered);
        }
        Ok(())
    }

    async fn on_execute(
        &mut self,
        frame: &[u8],
        active: &mut Option<ShardIndex>,
    ) -> Result<(), SqlError> {
        let execute =
            Execute::parse(&frame[5..]).map_err(|e| SqlError::fatal("08P01", e.to_string()))?;
        let route = self.portal_route(execute.portal)?;
        match route {
            Route::Single(shard) => {
                let index = self.activate(shard, active).await?;
                let held = &mut self.held[index];
                held.batch.raw(&mut held.conn, frame, Reply::Execute, true);
                Ok(())
            }
            Route::Gate => {
                self.deactivate(active).await?;
                let plan = self
                    .portals
                    .get(execute.portal)
                    .and_then(|p| p.statement.plan.clone())
                    .expect("gate portals have plans");
                self.gate_command(&plan).await
            }
            _ => {
                self.deactivate(active).await?;
                self.run_multi_portal(execute.portal).await?;
                let mut buffered = self
                    .portals
                    .get_mut(execute.portal)
                    .and_then(|p| p.buffered.take())
                    .expect("multi portal ran");
                self.emit_buffered(&mut buffered, false, execute.max_rows);
                if let Some(portal) = self.portals.get_mut(execute.portal) {
                    portal.buffered = Some(buffered);
                }
                Ok(())
            }
        }
    }

    fn on_close(&mut self, frame: &[u8], active: Option<ShardIndex>) -> Result<(), SqlError> {
        let named = Named::parse(&frame[5..], "Close")
            .map_err(|e| SqlError::fatal("08P01", e.to_string()))?;
        match named.target {
            // Server-side statements are shared by content and stay prepared for other clients.
            NamedTarget::Statement => {
                self.statements.remove(named.name);
            }
            NamedTarget::Portal => {
                self.portals.remove(named.name);
            }
        }
        self.emit_empty(backend::CLOSE_COMPLETE, active);
        Ok(())
    }
}

#[allow(dead_code)]
fn _assert_batch_is_send(batch: Batch) -> impl Send {
    batch
}
