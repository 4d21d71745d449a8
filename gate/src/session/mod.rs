//! One client session: startup and authentication, then the message loop.
//!
//! The session owns the client's protocol state (prepared statements, portals, transaction,
//! settings) and borrows server connections per shard only as long as it needs them
//! (transaction pooling): for the duration of one batch outside a transaction, for the whole
//! transaction inside one.

mod extended;
mod multi;
mod portals;
mod settings;
mod simple;
mod transaction;

use std::sync::Arc;

use bytes::BytesMut;
use tessera_wire::message::{self, TxStatus, frontend};
use tessera_wire::relay::{self, Batch, Outcome, RelayError};
use tessera_wire::startup::{self, StartupRequest};
use tessera_wire::{PgStream, PooledConn, ServerConn, SqlError, Statement};

use crate::backend::SourceCache;
use crate::cluster::KeyspaceView;
use crate::server::{CancelEntry, RunningQuery, Shared};
use crate::sql::error::PlanError;
use crate::sql::plan::StatementPlan;
use crate::sql::shardmap::ShardIndex;
use crate::sql::template::Template;

pub(crate) use portals::{Portal, Portals};
pub(crate) use settings::Settings;
pub(crate) use transaction::Tx;

/// A statement the client prepared.
pub(crate) struct ClientStatement {
    /// Content-named server statement.
    pub wire: Arc<Statement>,
    /// `None` when the gate could not parse it; it may then only run inside a transaction that
    /// is pinned to a single shard.
    pub plan: Option<Arc<StatementPlan>>,
}

/// A server connection in use by this session, with the frames queued for it.
pub(crate) struct Held {
    pub shard: ShardIndex,
    pub conn: PooledConn,
    /// Boxed, like the connection, so that taking and giving back a connection moves pointers.
    pub batch: Box<Batch>,
    /// Joined the client's explicit transaction (BEGIN was sent).
    pub in_transaction: bool,
}

pub(crate) struct Session {
    shared: Arc<Shared>,
    client: PgStream,
    peer: String,
    keyspace: String,
    process_id: i32,
    cancel: Arc<CancelEntry>,
    settings: Settings,
    statements: foldhash::HashMap<String, Arc<ClientStatement>>,
    portals: Portals,
    tx: Tx,
    /// Invariant: at most one entry per shard.
    held: Vec<Held>,
    /// Shard map snapshot used by the current transaction (or batch), so that one transaction
    /// never mixes two shard maps.
    view: Option<Arc<KeyspaceView>>,
    /// After an error in an extended-protocol batch, messages are ignored until Sync.
    skip_to_sync: bool,
    /// Scratch space for the literal template of simple queries (reused, never shrunk).
    template: Template,
    /// Parameter types of the current template's constants (scratch, reused).
    bind_types: Vec<u32>,
    /// Server statements of bound simple queries, by content key (see `simple::single_bound`).
    bound: foldhash::HashMap<u64, Arc<Statement>>,
    /// Content keys of parameterless scatter SELECTs this session ran once as text: the second
    /// run binds (`multi::scatter_statement`), so one-off texts never take a server statement.
    scatter_seen: foldhash::HashSet<u64>,
    /// Empty batch queues of released connections, reused by the next `hold`.
    /// Invariant: every entry is empty; at most `MAX_SPARE_BATCHES`.
    #[allow(clippy::vec_box)] // boxed for the same reason as `Held::batch`
    spare_batches: Vec<Box<Batch>>,
    /// Connection sources resolved for this session's shards (see `Backends::acquire`).
    sources: SourceCache,
    /// Scratch list of the shards a Sync goes to (reused).
    sync_order: Vec<ShardIndex>,
}

/// Capacity of the extended-protocol message buffer a session keeps between batches.
const MAX_KEPT_BATCH_BYTES: usize = 16 * 1024;

/// Spare batch queues a session keeps (one per shard it commonly uses at once).
const MAX_SPARE_BATCHES: usize = 2;

/// Tells a client over the connection limit why it is refused.
pub(crate) async fn refuse(stream: &mut PgStream, shared: &Shared) {
    if let Ok(StartupRequest::Startup { .. }) = startup::read_startup(stream).await {
        SqlError::fatal(
            "53300",
            format!(
                "sorry, too many clients already (max_client_connections = {})",
                shared.config.max_client_connections
            ),
        )
        .encode(&mut stream.write_buf);
        stream.shutdown().await;
    }
}

/// Outcome of handling one message: keep going or close the connection.
enum Flow {
    Continue,
    Close,
}

impl Session {
    pub(crate) async fn run(mut client: PgStream, shared: Arc<Shared>, peer: String) {
        let request = match startup::read_startup(&mut client).await {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%peer, %error, "bad startup packet");
                SqlError::fatal("08P01", format!("invalid startup packet: {error}"))
                    .encode(&mut client.write_buf);
                client.shutdown().await;
                return;
            }
        };
        let params = match request {
            StartupRequest::Cancel {
                process_id,
                secret_key,
            } => {
                cancel(&shared, process_id, secret_key).await;
                return;
            }
            StartupRequest::Startup { params } => params,
        };
        let user = StartupRequest::param(&params, "user")
            .unwrap_or("")
            .to_string();
        let database = StartupRequest::param(&params, "database")
            .filter(|d| !d.is_empty())
            .unwrap_or(&user)
            .to_string();
        if user.is_empty() {
            SqlError::fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
            .encode(&mut client.write_buf);
            client.shutdown().await;
            return;
        }
        if let Err(error) =
            startup::authenticate(&mut client, &user, shared.verifiers.get(&user)).await
        {
            tracing::info!(%peer, %user, code = %error.code, "authentication failed");
            metrics::counter!("tessera_gate_auth_failures_total").increment(1);
            client.shutdown().await;
            return;
        }
        if shared.cluster.keyspace(&database).is_none() {
            SqlError::fatal("3D000", format!("database \"{database}\" does not exist"))
                .with_hint("connect to a keyspace name (e.g. app); `tessera status` lists them")
                .encode(&mut client.write_buf);
            client.shutdown().await;
            return;
        }
        let settings = match Settings::from_startup(&params) {
            Ok(settings) => settings,
            Err(error) => {
                SqlError {
                    severity: "FATAL",
                    ..error
                }
                .encode(&mut client.write_buf);
                client.shutdown().await;
                return;
            }
        };
        let process_id = shared.new_process_id();
        let secret_key: i32 = rand::random();
        let cancel = Arc::new(CancelEntry {
            secret_key,
            running: parking_lot::Mutex::new(Vec::new()),
        });
        shared.cancels.insert(process_id, cancel.clone());
        let mut session = Session {
            shared: shared.clone(),
            client,
            peer,
            keyspace: database,
            process_id,
            cancel,
            settings,
            statements: Default::default(),
            portals: Portals::default(),
            tx: Tx::default(),
            held: Vec::new(),
            view: None,
            skip_to_sync: false,
            template: Template::default(),
            bind_types: Vec::new(),
            bound: Default::default(),
            scatter_seen: Default::default(),
            spare_batches: Vec::new(),
            sync_order: Vec::new(),
            sources: SourceCache::default(),
        };
        session.greet(secret_key);
        let result = session.serve().await;
        if let Err(error) = result {
            tracing::debug!(peer = %session.peer, %error, "session ended with error");
        }
        session.abandon_transaction().await;
        shared.cancels.remove(&session.process_id);
        session.client.shutdown().await;
    }

    /// AuthenticationOk was sent; now the parameters, the cancel key and ReadyForQuery.
    fn greet(&mut self, secret_key: i32) {
        let reported = self.shared.server_params.read().clone();
        for (name, value) in &reported {
            let value = self.settings.reported_value(name).unwrap_or(value);
            message::parameter_status(&mut self.client.write_buf, name, value);
        }
        message::backend_key_data(&mut self.client.write_buf, self.process_id, secret_key);
        message::ready_for_query(&mut self.client.write_buf, TxStatus::Idle);
    }

    async fn serve(&mut self) -> Result<(), RelayError> {
        self.client.flush().await.map_err(RelayError::Client)?;
        let mut batch = BytesMut::new();
        loop {
            let (tag, len) = match self.client.next_frame().await {
                Ok(frame) => frame,
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                    self.fatal_protocol(&error.to_string()).await;
                    return Ok(());
                }
                Err(error) => return Err(RelayError::Client(error)),
            };
            let flow = match tag {
                frontend::QUERY => {
                    let frame = self.client.read_buf.split_to(len).freeze();
                    self.simple_query(&frame[5..]).await?
                }
                frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::CLOSE => {
                    self.client.relay_into(len, &mut batch);
                    Flow::Continue
                }
                frontend::SYNC | frontend::FLUSH => {
                    self.client.consume(len);
                    let flow = self.extended_batch(&batch, tag == frontend::SYNC).await?;
                    // Keep the buffer for the next batch unless one huge batch grew it.
                    if batch.capacity() > MAX_KEPT_BATCH_BYTES {
                        batch = BytesMut::new();
                    } else {
                        batch.clear();
                    }
                    flow
                }
                frontend::TERMINATE => Flow::Close,
                frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {
                    // Stray COPY messages outside a COPY are ignored, as PostgreSQL does.
                    self.client.consume(len);
                    Flow::Continue
                }
                frontend::FUNCTION_CALL => {
                    self.client.consume(len);
                    let error = SqlError::new(
                        "0A000",
                        "the fast-path function call protocol is not supported by Tessera",
                    );
                    error.encode(&mut self.client.write_buf);
                    self.ready().await?;
                    Flow::Continue
                }
                other => {
                    self.fatal_protocol(&format!(
                        "invalid frontend message type '{}'",
                        tessera_wire::socket::printable(other)
                    ))
                    .await;
                    Flow::Close
                }
            };
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    async fn fatal_protocol(&mut self, message: &str) {
        metrics::counter!("tessera_gate_protocol_errors_total").increment(1);
        SqlError::fatal("08P01", message).encode(&mut self.client.write_buf);
        let _ = self.client.flush().await;
    }

    /// Writes ReadyForQuery with the client-visible transaction status and flushes.
    async fn ready(&mut self) -> Result<(), RelayError> {
        message::ready_for_query(&mut self.client.write_buf, self.tx.status());
        self.client.flush().await.map_err(RelayError::Client)
    }

    /// Writes an error in stream order: after answers still expected from an active server
    /// batch, otherwise directly.
    fn emit_error(&mut self, error: &SqlError, active: Option<ShardIndex>) {
        let mut bytes = BytesMut::new();
        error.encode(&mut bytes);
        self.emit(bytes, active);
    }

    fn emit(&mut self, bytes: BytesMut, active: Option<ShardIndex>) {
        if let Some(held) = active.and_then(|shard| self.held.iter_mut().find(|h| h.shard == shard))
            && held.batch.awaits_server()
        {
            held.batch.synthetic(bytes.freeze());
            return;
        }
        self.client.write_buf.extend_from_slice(&bytes);
    }

    /// The keyspace view for the current transaction or batch.
    fn view(&mut self) -> Result<Arc<KeyspaceView>, SqlError> {
        if let Some(view) = &self.view {
            return Ok(view.clone());
        }
        let view = self
            .shared
            .cluster
            .keyspace(&self.keyspace)
            .ok_or_else(|| {
                SqlError::new(
                    "3D000",
                    format!("keyspace \"{}\" no longer exists", self.keyspace),
                )
            })?;
        self.view = Some(view.clone());
        Ok(view)
    }

    /// Index in `held` of a connection to `shard`, acquiring one if needed. A new connection
    /// gets the session's settings and, inside a transaction, joins it; both are queued in its
    /// batch so they cost no extra round trip.
    async fn hold(&mut self, shard: ShardIndex) -> Result<usize, SqlError> {
        if let Some(index) = self.held.iter().position(|h| h.shard == shard) {
            return Ok(index);
        }
        if self.tx.is_open() {
            self.tx
                .check_can_join(self.held.iter().filter(|h| h.in_transaction).count())?;
        }
        let mut conn = self
            .shared
            .backends
            .acquire(
                &self.shared.cluster,
                &self.keyspace,
                shard,
                &mut self.sources,
            )
            .await
            .map_err(|error| error.to_sql_error())?;
        if !conn.params_reported {
            self.remember_server_params(&conn);
            conn.params_reported = true;
        }
        // Reuse the queue of an earlier borrow: no allocation per statement.
        let mut batch = self.spare_batches.pop().unwrap_or_default();
        self.settings.sync(&mut conn, &mut batch);
        let in_transaction = self.tx.is_open();
        if in_transaction {
            self.tx.join(&mut conn, &mut batch);
        }
        self.cancel.lock_running().push(RunningQuery {
            target: conn.target.clone(),
            process_id: conn.process_id,
            secret_key: conn.secret_key,
        });
        self.held.push(Held {
            shard,
            conn,
            batch,
            in_transaction,
        });
        Ok(self.held.len() - 1)
    }

    fn remember_server_params(&self, conn: &ServerConn) {
        if conn.server_params.is_empty() {
            return;
        }
        let reported = self.shared.server_params.read();
        if reported.iter().any(|(k, _)| k == "server_version")
            && reported.iter().find(|(k, _)| k == "server_version")
                == conn
                    .server_params
                    .iter()
                    .find(|(k, _)| k == "server_version")
        {
            return;
        }
        drop(reported);
        *self.shared.server_params.write() = conn.server_params.clone();
    }

    /// Pumps the batch of held connection `index` to the client.
    async fn pump(&mut self, index: usize) -> Result<Outcome, SqlError> {
        let held = &mut self.held[index];
        loop {
            let result = relay::pump(&mut held.conn, &mut held.batch, &mut self.client).await;
            match result {
                Ok(outcome) if outcome.copy_in => {
                    relay_copy_in(&mut self.client, &mut held.conn).await?;
                    continue;
                }
                Ok(outcome) => {
                    if let Some(status) = outcome.tx_status {
                        self.tx
                            .observe(status, held.in_transaction, outcome.error.is_some());
                        if status != TxStatus::Idle && !held.in_transaction {
                            // The server opened a transaction the gate did not see coming
                            // (e.g. a statement the gate could not parse): keep the
                            // connection pinned for the rest of it.
                            held.in_transaction = true;
                            self.tx.adopt_server_transaction();
                        }
                    }
                    return Ok(outcome);
                }
                Err(RelayError::Client(error)) => {
                    held.conn.discard();
                    return Err(SqlError::fatal(
                        "08006",
                        format!("client connection lost: {error}"),
                    ));
                }
                Err(error) => {
                    let shard = held.shard;
                    self.drop_held(shard);
                    self.tx.fail();
                    let name = self.view.as_ref().map(|v| v.shards.name(shard).to_string());
                    return Err(SqlError::new(
                        "08006",
                        format!(
                            "lost the connection to shard {}: {error}",
                            name.unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }

    fn drop_held(&mut self, shard: ShardIndex) {
        if let Some(index) = self.held.iter().position(|h| h.shard == shard) {
            let mut held = self.held.swap_remove(index);
            held.conn.discard();
            self.forget_running(&held.conn);
        }
    }

    fn forget_running(&self, conn: &ServerConn) {
        // The backend's process id and random 32-bit secret key identify it; comparing them
        // rather than targets (socket paths, compared component by component) keeps this off
        // the per-statement profile.
        self.cancel
            .lock_running()
            .retain(|r| !(r.process_id == conn.process_id && r.secret_key == conn.secret_key));
    }

    /// Keeps the (empty) queue of a released connection for the next borrow.
    fn recycle(&mut self, mut batch: Box<Batch>) {
        if batch.is_empty() && self.spare_batches.len() < MAX_SPARE_BATCHES {
            batch.reset();
            self.spare_batches.push(batch);
        }
    }

    /// Outside a transaction, gives back every connection whose work is done.
    fn release_idle(&mut self) {
        if self.tx.is_open() {
            return;
        }
        let mut index = 0;
        while index < self.held.len() {
            let held = &self.held[index];
            if !held.in_transaction
                && held.batch.is_empty()
                && held.conn.tx_status == TxStatus::Idle
            {
                let held = self.held.swap_remove(index);
                self.forget_running(&held.conn);
                self.recycle(held.batch);
            } else {
                index += 1;
            }
        }
        if self.held.is_empty() {
            self.view = None;
        }
    }

    /// The client went away: roll back whatever is open on the servers.
    async fn abandon_transaction(&mut self) {
        for held in &mut self.held {
            if held.conn.tx_status != TxStatus::Idle && held.conn.simple("ROLLBACK").await.is_err()
            {
                held.conn.discard();
            }
        }
        self.held.clear();
    }

    fn plan_error(&self, error: PlanError) -> SqlError {
        let mut sql = SqlError::new(error.sqlstate, error.message);
        sql.detail = error.detail;
        sql.hint = error.hint;
        sql
    }
}

impl CancelEntry {
    fn lock_running(&self) -> parking_lot::MutexGuard<'_, Vec<RunningQuery>> {
        self.running.lock()
    }
}

/// Relays the client's COPY data to the server until CopyDone or CopyFail.
async fn relay_copy_in(client: &mut PgStream, conn: &mut ServerConn) -> Result<(), SqlError> {
    client
        .flush()
        .await
        .map_err(|e| SqlError::fatal("08006", format!("client connection lost: {e}")))?;
    loop {
        let (tag, len) = client.next_frame().await.map_err(|e| {
            SqlError::fatal("08006", format!("client connection lost during COPY: {e}"))
        })?;
        match tag {
            frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {
                client.relay_into(len, &mut conn.stream.write_buf);
                if conn.stream.write_buf.len() >= 64 * 1024 || tag != frontend::COPY_DATA {
                    conn.stream.flush().await.map_err(|e| {
                        conn.broken = true;
                        SqlError::new(
                            "08006",
                            format!("lost the shard connection during COPY: {e}"),
                        )
                    })?;
                }
                if tag != frontend::COPY_DATA {
                    return Ok(());
                }
            }
            frontend::FLUSH | frontend::SYNC => client.consume(len),
            other => {
                return Err(SqlError::fatal(
                    "08P01",
                    format!(
                        "unexpected message type '{}' during COPY from stdin",
                        tessera_wire::socket::printable(other)
                    ),
                ));
            }
        }
    }
}

/// Passes a CancelRequest on to whatever the session is running on its shards.
async fn cancel(shared: &Shared, process_id: i32, secret_key: i32) {
    let Some(entry) = shared.cancels.get(&process_id).map(|e| e.clone()) else {
        return;
    };
    if entry.secret_key != secret_key {
        tracing::info!(process_id, "cancel request with a wrong key ignored");
        return;
    }
    let running = entry.running.lock().clone();
    for query in running {
        if let Err(error) =
            ServerConn::cancel(&query.target, query.process_id, query.secret_key).await
        {
            tracing::debug!(%error, "cancel forwarding failed");
        }
    }
}
