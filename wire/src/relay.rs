//! Relaying a client's batch through a server connection.
//!
//! A component (gate session or pooler session) translates the client's messages into frames
//! for one server connection and records, per frame it sends, what to do with the server's
//! answer: forward it, swallow it (frames Tessera added, such as a lazily injected Parse), or,
//! where Tessera answers itself, emit a synthetic reply at that exact point in the stream. The
//! pump then streams the server's answers to the client in order, copying raw frames.
//!
//! ReadyForQuery is never forwarded: the caller writes its own, because only the caller knows
//! the client-visible transaction status (a gate transaction may span several shards).
//!
//! Stale plans. Statements are shared per server connection by content, so a connection may
//! hold a statement prepared before a schema change (`ALTER TABLE ... ADD COLUMN`) that a client
//! parsing the same text now does not know about. PostgreSQL then refuses the old statement
//! (0A000 "cached plan must not change result type"), where it would simply have planned the
//! client's new Parse. When the client's Parse is newer than the connection's statement, nothing
//! has run yet and nothing has reached the client, the pump takes the error back, re-prepares
//! the statement and sends the round trip again. A client whose own statement is older than the
//! change gets the error, exactly as from PostgreSQL, and the statement is re-prepared for the
//! next use.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::SqlError;
use crate::extended::Bind;
use crate::message::{self, TxStatus, backend, frontend};
use crate::server_conn::ServerConn;
use crate::socket::PgStream;
use crate::statement::{Statement, note_stale, predates_change, statement_name};

/// Client write-buffer size at which the pump flushes mid-result, bounding memory per session.
const CLIENT_FLUSH_BYTES: usize = 64 * 1024;

/// The server's answer to one frontend message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    ParseComplete,
    BindComplete,
    CloseComplete,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// RowDescription or NoData of a simple query run as a prepared statement: NoData is never
    /// forwarded, because the simple protocol has no such message.
    DescribeRows,
    /// DataRows / COPY data, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// Everything a simple query produces, up to and including ReadyForQuery.
    Query,
    /// ReadyForQuery.
    Sync,
}

impl Reply {
    /// Does a frame with this tag end the reply?
    fn completed_by(self, tag: u8) -> Option<bool> {
        use backend::*;
        match (self, tag) {
            (Reply::ParseComplete, PARSE_COMPLETE)
            | (Reply::BindComplete, BIND_COMPLETE)
            | (Reply::CloseComplete, CLOSE_COMPLETE)
            | (
                Reply::DescribeStatement | Reply::DescribePortal | Reply::DescribeRows,
                ROW_DESCRIPTION | NO_DATA,
            )
            | (Reply::Execute, COMMAND_COMPLETE | EMPTY_QUERY | PORTAL_SUSPENDED) => Some(true),
            (Reply::DescribeStatement, PARAMETER_DESCRIPTION)
            | (Reply::Execute, DATA_ROW | COPY_OUT | COPY_DATA | COPY_DONE | COPY_IN) => {
                Some(false)
            }
            (Reply::Query, READY_FOR_QUERY) | (Reply::Sync, READY_FOR_QUERY) => Some(true),
            (Reply::Query, _) => Some(false),
            _ => None,
        }
    }
}

/// What to do with the answer to one frame sent to the server.
#[derive(Debug, Clone)]
pub enum Expect {
    Forward(Reply),
    Swallow(Reply),
    /// Bytes Tessera answers with itself, emitted when the stream reaches this point.
    Synthetic(Bytes),
}

/// Frames queued for one server connection and the plan for their answers.
#[derive(Debug, Default)]
pub struct Batch {
    pub queue: VecDeque<Expect>,
    /// Statements this round trip prepares; forgotten (and closed) if it fails, since the
    /// server skipped everything after the error and cannot tell us which Parse ran.
    pub injected: Vec<u64>,
    /// Statements this round trip uses that the connection prepared before the client parsed
    /// them: the ones to re-prepare if the server finds a plan stale.
    renewable: Vec<Arc<Statement>>,
    /// Renewable statements this round trip binds. If it succeeds, the server ran them with a
    /// plan checked against every schema change committed before it was sent, so the
    /// connection's copy counts as prepared then (see `pump_into`).
    validated: Vec<u64>,
    /// A Flush was sent since the last Sync: the server may have run part of the implicit
    /// transaction already, so a round trip can no longer be sent again.
    flushed: bool,
    /// The round trip as sent, kept while it may have to be sent again (reused buffers).
    replay_bytes: BytesMut,
    replay_queue: VecDeque<Expect>,
}

/// A client statement parsed before this connection's server last found its content stale:
/// running it would return rows shaped unlike the client's description of them, so it gets
/// PostgreSQL's own error instead (it would on PostgreSQL too).
pub fn check_not_outdated(conn: &ServerConn, statement: &Statement) -> Result<(), SqlError> {
    if predates_change(|| conn.target.to_string(), statement) {
        return Err(SqlError::new(
            "0A000",
            "cached plan must not change result type",
        ));
    }
    Ok(())
}

/// PostgreSQL's refusal to run a statement prepared before its result type changed.
pub fn is_stale_plan(error: &SqlError) -> bool {
    error.code == "0A000"
        && error
            .message
            .starts_with("cached plan must not change result type")
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Has a frame been queued whose answer must still be read?
    pub fn awaits_server(&self) -> bool {
        self.queue
            .iter()
            .any(|e| !matches!(e, Expect::Synthetic(_)))
    }

    /// Closes statements the connection evicted from its prepared set.
    pub fn close_evicted(&mut self, conn: &mut ServerConn) {
        for key in std::mem::take(&mut conn.prepared.to_close) {
            message::describe_or_close(
                &mut conn.stream.write_buf,
                frontend::CLOSE,
                b'S',
                &statement_name(key),
            );
            self.queue.push_back(Expect::Swallow(Reply::CloseComplete));
        }
    }

    /// Makes sure `statement` is prepared on `conn`. With `client_parse` the client sent this
    /// Parse and expects ParseComplete; otherwise the Parse is Tessera's own and is swallowed.
    pub fn prepare(
        &mut self,
        conn: &mut ServerConn,
        statement: &Arc<Statement>,
        client_parse: bool,
    ) {
        self.close_evicted(conn);
        if let Some(prepared_at) = conn.prepared.prepared_at(statement.key) {
            if prepared_at < statement.parsed_at()
                && !self.renewable.iter().any(|s| s.key == statement.key)
            {
                self.renewable.push(statement.clone());
            }
            if client_parse {
                self.synthetic_empty(backend::PARSE_COMPLETE);
            }
            return;
        }
        statement.write_parse(&mut conn.stream.write_buf);
        conn.prepared.insert(statement.key);
        self.injected.push(statement.key);
        self.queue.push_back(if client_parse {
            Expect::Forward(Reply::ParseComplete)
        } else {
            Expect::Swallow(Reply::ParseComplete)
        });
        // Preparing may have evicted an older statement; close it in the same round trip.
        self.close_evicted(conn);
    }

    /// The client's Bind, re-targeted at the content-named statement.
    pub fn bind(&mut self, conn: &mut ServerConn, statement: &Arc<Statement>, bind: &Bind<'_>) {
        self.prepare(conn, statement, false);
        self.note_bound(statement);
        bind.write_renamed(&mut conn.stream.write_buf, &statement.name);
        self.queue.push_back(Expect::Forward(Reply::BindComplete));
    }

    /// A Bind carrying a subset of the client's parameters (split INSERTs).
    pub fn bind_subset(
        &mut self,
        conn: &mut ServerConn,
        statement: &Arc<Statement>,
        bind: &Bind<'_>,
        param_map: &[usize],
        forward: bool,
    ) {
        self.prepare(conn, statement, false);
        self.note_bound(statement);
        bind.write_subset(&mut conn.stream.write_buf, &statement.name, param_map);
        self.push_reply(Reply::BindComplete, forward);
    }

    /// A Bind of a renewable statement checks its plan on the server (PostgreSQL revalidates
    /// a cached plan when a portal is created from it, and refuses one whose result type
    /// changed).
    fn note_bound(&mut self, statement: &Statement) {
        if self.renewable.iter().any(|s| s.key == statement.key) {
            self.validated.push(statement.key);
        }
    }

    /// Forgets the current round trip's statement bookkeeping (after its answers, or for a
    /// queue given back unsent).
    pub fn reset(&mut self) {
        self.injected.clear();
        self.renewable.clear();
        self.validated.clear();
    }

    pub fn describe_statement(&mut self, conn: &mut ServerConn, statement: &Arc<Statement>) {
        self.prepare(conn, statement, false);
        message::describe_or_close(
            &mut conn.stream.write_buf,
            frontend::DESCRIBE,
            b'S',
            &statement.name,
        );
        self.queue
            .push_back(Expect::Forward(Reply::DescribeStatement));
    }

    /// Sends a client frame unchanged (Execute, Describe portal, Close portal).
    pub fn raw(&mut self, conn: &mut ServerConn, frame: &[u8], reply: Reply, forward: bool) {
        conn.stream.write_buf.extend_from_slice(frame);
        self.push_reply(reply, forward);
    }

    /// A simple query run as `statement` with text parameters (Parse if the connection lacks
    /// it, Bind, Describe, Execute, Sync). The client sees what the simple query would have
    /// produced: RowDescription (if any), DataRows, CommandComplete. `write_param(i, out)`
    /// appends the text of parameter `i`; `None` parameters are not supported here.
    pub fn query_prepared(
        &mut self,
        conn: &mut ServerConn,
        statement: &Arc<Statement>,
        mut write_param: impl FnMut(usize, &mut BytesMut),
    ) {
        self.prepare(conn, statement, false);
        let out = &mut conn.stream.write_buf;
        let start = message::begin(out, frontend::BIND);
        message::put_cstr(out, b"");
        message::put_cstr(out, statement.name.as_bytes());
        out.put_i16(0); // every parameter in text format
        out.put_i16(statement.param_types.len() as i16);
        for index in 0..statement.param_types.len() {
            let length_at = out.len();
            out.put_i32(0);
            write_param(index, out);
            let length = (out.len() - length_at - 4) as i32;
            out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
        }
        out.put_i16(0); // every result column in text format, as the simple protocol sends
        message::finish(out, start);
        self.queue.push_back(Expect::Swallow(Reply::BindComplete));
        message::describe_or_close(out, frontend::DESCRIBE, b'P', "");
        self.queue.push_back(Expect::Forward(Reply::DescribeRows));
        message::execute(out, "", 0);
        self.queue.push_back(Expect::Forward(Reply::Execute));
        self.sync(conn);
    }

    /// A simple query. With `forward` false its results are consumed silently (control SQL).
    pub fn query(&mut self, conn: &mut ServerConn, sql: &str, forward: bool) {
        message::query(&mut conn.stream.write_buf, sql);
        self.push_reply(Reply::Query, forward);
    }

    pub fn sync(&mut self, conn: &mut ServerConn) {
        message::empty(&mut conn.stream.write_buf, frontend::SYNC);
        self.queue.push_back(Expect::Forward(Reply::Sync));
    }

    pub fn flush(&mut self, conn: &mut ServerConn) {
        message::empty(&mut conn.stream.write_buf, frontend::FLUSH);
        self.flushed = true;
    }

    pub fn synthetic(&mut self, bytes: Bytes) {
        self.queue.push_back(Expect::Synthetic(bytes));
    }

    pub fn synthetic_empty(&mut self, tag: u8) {
        let mut out = BytesMut::with_capacity(5);
        message::empty(&mut out, tag);
        self.synthetic(out.freeze());
    }

    fn push_reply(&mut self, reply: Reply, forward: bool) {
        self.queue.push_back(if forward {
            Expect::Forward(reply)
        } else {
            Expect::Swallow(reply)
        });
    }

    /// Emits leading synthetic replies; used when no server answer precedes them.
    pub fn drain_synthetic(&mut self, out: &mut BytesMut) {
        while let Some(Expect::Synthetic(bytes)) = self.queue.front() {
            out.extend_from_slice(bytes);
            self.queue.pop_front();
        }
    }
}

/// Result of pumping a batch.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Status of the last ReadyForQuery read, if any.
    pub tx_status: Option<TxStatus>,
    /// The first error the server reported (it was forwarded to the client).
    pub error: Option<SqlError>,
    /// The server entered COPY FROM STDIN and waits for the client's data; pump again after
    /// relaying CopyData/CopyDone/CopyFail.
    pub copy_in: bool,
    /// Whether any frame of an answer reached the client (a retry elsewhere is then unsafe).
    pub forwarded_any: bool,
}

/// Which side of a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("server connection failed: {0}")]
    Server(io::Error),
    #[error("client connection failed: {0}")]
    Client(io::Error),
    #[error("server protocol violation: {0}")]
    Protocol(String),
}

/// Answers gathered from one shard instead of being streamed (scatter queries, control SQL).
#[derive(Debug, Default)]
pub struct Collected {
    /// RowDescription body (first one seen).
    pub row_description: Option<Bytes>,
    /// ParameterDescription body.
    pub parameter_description: Option<Bytes>,
    /// DataRow bodies in order.
    pub rows: Vec<Bytes>,
    /// CommandComplete tags (without NUL) in order.
    pub tags: Vec<Bytes>,
    /// Whole NoticeResponse frames, to pass on to the client.
    pub notices: Vec<Bytes>,
    pub no_data: bool,
}

/// Where forwarded answers go.
pub enum Sink<'a> {
    /// Raw frames into the client's write buffer (flushed as it grows).
    Client(&'a mut PgStream),
    /// Decoded just enough to merge later.
    Collect(&'a mut Collected),
}

impl Sink<'_> {
    fn put(&mut self, conn: &mut ServerConn, tag: u8, len: usize) {
        match self {
            Sink::Client(client) => conn.stream.relay_into(len, &mut client.write_buf),
            Sink::Collect(collected) => {
                let frame = &conn.stream.read_buf[..len];
                let body = Bytes::copy_from_slice(&frame[5..]);
                match tag {
                    backend::ROW_DESCRIPTION => {
                        collected.row_description.get_or_insert(body);
                    }
                    backend::PARAMETER_DESCRIPTION => {
                        collected.parameter_description.get_or_insert(body);
                    }
                    backend::DATA_ROW => collected.rows.push(body),
                    backend::COMMAND_COMPLETE => {
                        let tag = message::command_tag(&body).len();
                        collected.tags.push(body.slice(..tag));
                    }
                    backend::NOTICE => collected.notices.push(Bytes::copy_from_slice(frame)),
                    backend::NO_DATA => collected.no_data = true,
                    _ => {}
                }
                conn.stream.consume(len);
            }
        }
    }

    /// Flushes a large client buffer; `true` if it did.
    async fn maybe_flush(&mut self) -> Result<bool, RelayError> {
        if let Sink::Client(client) = self
            && client.write_buf.len() >= CLIENT_FLUSH_BYTES
        {
            client.flush().await.map_err(RelayError::Client)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn drain_synthetic(&mut self, batch: &mut Batch) {
        match self {
            Sink::Client(client) => batch.drain_synthetic(&mut client.write_buf),
            Sink::Collect(_) => {
                while let Some(Expect::Synthetic(_)) = batch.queue.front() {
                    batch.queue.pop_front();
                }
            }
        }
    }
}

/// Sends the queued frames and relays the answers to `client` until the batch is answered.
pub async fn pump(
    conn: &mut ServerConn,
    batch: &mut Batch,
    client: &mut PgStream,
) -> Result<Outcome, RelayError> {
    pump_into(conn, batch, Sink::Client(client)).await
}

/// Like [`pump`], gathering the answers instead of streaming them.
pub async fn collect(
    conn: &mut ServerConn,
    batch: &mut Batch,
    collected: &mut Collected,
) -> Result<Outcome, RelayError> {
    pump_into(conn, batch, Sink::Collect(collected)).await
}

async fn pump_into(
    conn: &mut ServerConn,
    batch: &mut Batch,
    mut sink: Sink<'_>,
) -> Result<Outcome, RelayError> {
    let mut outcome = Outcome::default();
    let client_start = match &sink {
        Sink::Client(client) => Some(client.write_buf.len()),
        Sink::Collect(_) => None,
    };
    let replayable = client_start.is_some() && batch.may_replay(conn);
    // Taken before sending: the server's check of these plans happens after this tick.
    let sent_at = if batch.validated.is_empty() {
        0
    } else {
        crate::statement::parse_clock()
    };
    if replayable {
        batch.replay_bytes.clear();
        batch.replay_bytes.extend_from_slice(&conn.stream.write_buf);
        batch.replay_queue.clone_from(&batch.queue);
    }
    let mut result = pump_answers(conn, batch, &mut sink, &mut outcome, replayable).await;
    if matches!(result, Ok(true))
        && let (Sink::Client(client), Some(start)) = (&mut sink, client_start)
    {
        // Take back what this round trip wrote (nothing was flushed), then send it again
        // behind a fresh Parse of every statement that may be stale.
        client.write_buf.truncate(start);
        batch.queue_replay(conn);
        metrics::counter!("tessera_stale_plans_reprepared_total").increment(1);
        outcome = Outcome::default();
        result = pump_answers(conn, batch, &mut sink, &mut outcome, false).await;
    }
    if result.is_err() {
        conn.broken = true;
    }
    if let Some(error) = &outcome.error {
        for key in batch.injected.drain(..) {
            conn.prepared.forget(key);
        }
        if is_stale_plan(error) {
            // Not sent again (something had run or reached the client): the next use of this
            // content prepares it anew.
            let server = conn.target.to_string();
            for statement in batch.renewable.drain(..) {
                note_stale(&server, statement.key);
                conn.prepared.forget(statement.key);
            }
        }
    }
    if result.is_ok() && outcome.error.is_none() {
        // Clients that parsed before `sent_at` need no replay for these statements any more:
        // without this, a connection that prepared a statement before a client parsed it
        // would keep copying every round trip of that client in case of a stale plan.
        for &key in &batch.validated {
            conn.prepared.revalidated(key, sent_at);
        }
    }
    batch.reset();
    if batch.queue.is_empty() {
        batch.flushed = false;
    }
    result.map(|_| outcome)
}

impl Batch {
    /// Can this round trip be sent again if a plan is stale? Only a whole implicit transaction
    /// (no transaction open, no Flush before, ending in Sync) that uses a renewable statement.
    fn may_replay(&self, conn: &ServerConn) -> bool {
        !self.renewable.is_empty()
            && !self.flushed
            && conn.tx_status == TxStatus::Idle
            && matches!(
                self.queue.back(),
                Some(Expect::Forward(Reply::Sync) | Expect::Swallow(Reply::Sync))
            )
    }

    /// Queues the kept round trip again, behind a Close and a Parse of each renewable
    /// statement and a Close of each statement the failed attempt prepared.
    fn queue_replay(&mut self, conn: &mut ServerConn) {
        let server = conn.target.to_string();
        let out = &mut conn.stream.write_buf;
        let renewed = self.renewable.iter().map(|s| s.key);
        for key in renewed.chain(self.injected.iter().copied()) {
            message::describe_or_close(out, frontend::CLOSE, b'S', &statement_name(key));
            self.queue.push_back(Expect::Swallow(Reply::CloseComplete));
        }
        for statement in &self.renewable {
            statement.write_parse(out);
            // Clients parsing earlier than this may describe the old rows; these statements
            // get their description from the plan about to be prepared.
            note_stale(&server, statement.key);
            statement.renew();
            conn.prepared.insert(statement.key);
            self.queue.push_back(Expect::Swallow(Reply::ParseComplete));
        }
        out.extend_from_slice(&self.replay_bytes);
        let kept = std::mem::take(&mut self.replay_queue);
        self.queue.extend(kept.iter().cloned());
        self.replay_queue = kept;
        self.renewable.clear();
        // Prepared anew just above.
        self.validated.clear();
    }
}

/// Sends the queued frames and relays the answers; `Ok(true)` if the server found a plan stale
/// and the round trip was taken back to be sent again (only with `replayable`).
async fn pump_answers(
    conn: &mut ServerConn,
    batch: &mut Batch,
    sink: &mut Sink<'_>,
    outcome: &mut Outcome,
    replayable: bool,
) -> Result<bool, RelayError> {
    conn.stream.flush().await.map_err(RelayError::Server)?;
    // Still possible to send the round trip again: nothing ran and nothing was flushed.
    let mut replayable = replayable;
    let mut taken_back = false;
    loop {
        sink.drain_synthetic(batch);
        let Some(front) = batch.queue.front().cloned() else {
            return Ok(taken_back);
        };
        let (reply, forward) = match front {
            Expect::Forward(reply) => (reply, true),
            Expect::Swallow(reply) => (reply, false),
            Expect::Synthetic(_) => unreachable!("drained above"),
        };
        let (tag, len) = conn.stream.next_frame().await.map_err(RelayError::Server)?;
        match tag {
            backend::ERROR => {
                let error = SqlError::from_body(conn.stream.body(len));
                if replayable && !taken_back && is_stale_plan(&error) {
                    taken_back = true;
                    conn.stream.consume(len);
                } else {
                    outcome.forwarded_any = true;
                    match sink {
                        // A collecting caller reports the error itself, once, after merging.
                        Sink::Collect(_) => conn.stream.consume(len),
                        Sink::Client(_) => sink.put(conn, tag, len),
                    }
                    outcome.error.get_or_insert(error);
                }
                if reply != Reply::Query {
                    // The server now ignores everything up to Sync.
                    while let Some(next) = batch.queue.front() {
                        if matches!(
                            next,
                            Expect::Forward(Reply::Sync) | Expect::Swallow(Reply::Sync)
                        ) {
                            break;
                        }
                        batch.queue.pop_front();
                    }
                }
            }
            backend::READY_FOR_QUERY => {
                let status = conn.stream.body(len).first().copied().unwrap_or(0);
                let status = TxStatus::from_byte(status).ok_or_else(|| {
                    RelayError::Protocol(format!("invalid transaction status {status}"))
                })?;
                conn.stream.consume(len);
                conn.tx_status = status;
                outcome.tx_status = Some(status);
                if !matches!(reply, Reply::Sync | Reply::Query) {
                    return Err(RelayError::Protocol(format!(
                        "ReadyForQuery while waiting for {reply:?}"
                    )));
                }
                batch.queue.pop_front();
            }
            backend::NOTICE | backend::PARAMETER_STATUS | backend::NOTIFICATION => {
                if forward {
                    sink.put(conn, tag, len);
                } else {
                    conn.stream.consume(len);
                }
            }
            _ => {
                let done = reply.completed_by(tag).ok_or_else(|| {
                    RelayError::Protocol(format!(
                        "unexpected message '{}' while waiting for {reply:?}",
                        crate::socket::printable(tag)
                    ))
                })?;
                if forward && !(reply == Reply::DescribeRows && tag == backend::NO_DATA) {
                    outcome.forwarded_any = true;
                    sink.put(conn, tag, len);
                } else {
                    conn.stream.consume(len);
                }
                if tag == backend::COPY_IN || tag == backend::COPY_BOTH {
                    outcome.copy_in = true;
                    return Ok(false);
                }
                if done {
                    if matches!(reply, Reply::Execute | Reply::Query) {
                        replayable = false;
                    }
                    batch.queue.pop_front();
                }
            }
        }
        if sink.maybe_flush().await? {
            replayable = false;
        }
    }
}
