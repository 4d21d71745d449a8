//! The pooler: a PG-wire endpoint in front of the tablet's PostgreSQL with transaction
//! pooling. A client borrows a server connection for one transaction (or one extended-protocol
//! batch outside a transaction) and gives it back afterwards.
//!
//! Named prepared statements survive the change of server connection: they are re-prepared
//! lazily under content-derived names (see `tessera_wire::statement`). Session settings made
//! with SET/RESET outside a transaction are remembered and replayed on each borrowed connection.
//! Every borrow checks the tablet's serving state first: that is the fencing point.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use tessera_wire::extended::{Bind, Named, Parse, Target as NamedTarget};
use tessera_wire::message::{self, TxStatus, backend, frontend};
use tessera_wire::relay::{self, Batch, RelayError, Reply, check_not_outdated};
use tessera_wire::startup::{self, StartupRequest};
use tessera_wire::{PgStream, PooledConn, ServerConn, SqlError, Statement, Target};
use tokio::net::TcpListener;

use crate::tablet::Tablet;

/// Which server backend a pooler client is using, for cancel requests.
type CancelMap = DashMap<i32, (i32, Option<(Arc<Target>, i32, i32)>)>;

/// Serves pooler clients until `shutdown` resolves.
pub async fn serve(listener: TcpListener, tablet: Arc<Tablet>, shutdown: impl Future<Output = ()>) {
    let cancels: Arc<CancelMap> = Arc::new(DashMap::new());
    let next_id = Arc::new(std::sync::atomic::AtomicI32::new(1));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((socket, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let tablet = tablet.clone();
        let cancels = cancels.clone();
        let id = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let mut client = PgStream::tcp(socket);
            match startup::read_startup(&mut client).await {
                Ok(StartupRequest::Cancel {
                    process_id,
                    secret_key,
                }) => forward_cancel(&cancels, process_id, secret_key).await,
                Ok(StartupRequest::Startup { params }) => {
                    let secret: i32 = rand::random();
                    cancels.insert(id, (secret, None));
                    let mut session = PoolerSession {
                        tablet,
                        client,
                        id,
                        cancels: cancels.clone(),
                        statements: HashMap::new(),
                        settings: Vec::new(),
                        held: None,
                        batch: Batch::default(),
                        skip_to_sync: false,
                    };
                    if session.start(&params, secret).await
                        && let Err(error) = session.serve().await
                    {
                        tracing::debug!(%error, "pooler session ended");
                    }
                    session.finish().await;
                    cancels.remove(&id);
                }
                Err(error) => {
                    SqlError::fatal("08P01", format!("invalid startup packet: {error}"))
                        .encode(&mut client.write_buf);
                    client.shutdown().await;
                }
            }
        });
    }
}

async fn forward_cancel(cancels: &CancelMap, process_id: i32, secret_key: i32) {
    let Some(entry) = cancels.get(&process_id).map(|e| e.clone()) else {
        return;
    };
    if entry.0 != secret_key {
        return;
    }
    if let Some((target, pid, key)) = entry.1 {
        let _ = ServerConn::cancel(&target, pid, key).await;
    }
}

struct PoolerSession {
    tablet: Arc<Tablet>,
    client: PgStream,
    id: i32,
    cancels: Arc<CancelMap>,
    statements: HashMap<String, Arc<Statement>>,
    /// Session SET/RESET scripts, replayed (after RESET ALL) on each borrowed connection.
    settings: Vec<(String, String)>,
    held: Option<PooledConn>,
    batch: Batch,
    skip_to_sync: bool,
}

/// Is this simple query a session-level SET/RESET to remember?
fn session_setting(sql: &str) -> Option<bool> {
    let lower = sql.trim_start().to_ascii_lowercase();
    if lower.starts_with("reset all") {
        return Some(true);
    }
    let is_set = lower.starts_with("set ") || lower.starts_with("reset ");
    let scoped = lower.starts_with("set local")
        || lower.starts_with("set transaction")
        || lower.starts_with("set session characteristics");
    (is_set && !scoped).then_some(false)
}

impl PoolerSession {
    async fn start(&mut self, params: &[(String, String)], secret: i32) -> bool {
        let user = StartupRequest::param(params, "user")
            .unwrap_or("")
            .to_string();
        let database = StartupRequest::param(params, "database")
            .unwrap_or(&user)
            .to_string();
        let verifier =
            (user == self.tablet.config().postgres.superuser).then(|| self.tablet.verifier());
        if startup::authenticate(&mut self.client, &user, verifier)
            .await
            .is_err()
        {
            return false;
        }
        if database != self.tablet.config().keyspace {
            SqlError::fatal("3D000", format!("database \"{database}\" does not exist"))
                .encode(&mut self.client.write_buf);
            let _ = self.client.flush().await;
            return false;
        }
        // Parameters the client asked for become session settings (except identity ones).
        for (name, value) in params {
            if matches!(
                name.as_str(),
                "user" | "database" | "application_name" | "options" | "replication"
            ) {
                continue;
            }
            if name.eq_ignore_ascii_case("client_encoding") && value.eq_ignore_ascii_case("utf8") {
                continue;
            }
            self.settings.push((
                name.to_ascii_lowercase(),
                format!("SET {name} TO '{}'", value.replace('\'', "''")),
            ));
        }
        // Report the server's parameters, learned from a real connection.
        let reported = match self.tablet.pool().get().await {
            Ok(conn) => conn.server_params.clone(),
            Err(_) => Vec::new(),
        };
        for (name, value) in &reported {
            message::parameter_status(&mut self.client.write_buf, name, value);
        }
        message::backend_key_data(&mut self.client.write_buf, self.id, secret);
        message::ready_for_query(&mut self.client.write_buf, TxStatus::Idle);
        self.client.flush().await.is_ok()
    }

    fn status(&self) -> TxStatus {
        self.held.as_ref().map_or(TxStatus::Idle, |c| c.tx_status)
    }

    async fn ready(&mut self) -> Result<(), RelayError> {
        let status = self.status();
        message::ready_for_query(&mut self.client.write_buf, status);
        self.client.flush().await.map_err(RelayError::Client)
    }

    /// Borrows a server connection (fenced) unless one is held; returns it with the batch.
    async fn conn(&mut self) -> Result<(&mut PooledConn, &mut Batch), SqlError> {
        if self.held.is_none() {
            self.tablet.check_serving().map_err(|e| e.to_sql_error())?;
            let mut conn = self
                .tablet
                .pool()
                .get()
                .await
                .map_err(|e| e.to_sql_error())?;
            if conn.settings != self.settings {
                let mut sql = String::from("RESET ALL");
                for (_, statement) in &self.settings {
                    sql.push_str("; ");
                    sql.push_str(statement);
                }
                self.batch.query(&mut conn, &sql, false);
                conn.settings = self.settings.clone();
            }
            if let Some(mut entry) = self.cancels.get_mut(&self.id) {
                entry.1 = Some((conn.target.clone(), conn.process_id, conn.secret_key));
            }
            self.held = Some(conn);
        }
        Ok((self.held.as_mut().expect("held"), &mut self.batch))
    }

    fn release_if_idle(&mut self) {
        if self.batch.is_empty()
            && self
                .held
                .as_ref()
                .is_some_and(|c| c.tx_status == TxStatus::Idle)
        {
            self.held = None;
            if let Some(mut entry) = self.cancels.get_mut(&self.id) {
                entry.1 = None;
            }
        }
    }

    async fn pump(&mut self) -> Result<relay::Outcome, RelayError> {
        let conn = self.held.as_mut().expect("held");
        loop {
            let outcome = relay::pump(conn, &mut self.batch, &mut self.client).await?;
            if outcome.copy_in {
                copy_in(&mut self.client, conn).await?;
                continue;
            }
            return Ok(outcome);
        }
    }

    fn emit(&mut self, bytes: BytesMut) {
        if self.batch.awaits_server() {
            self.batch.synthetic(bytes.freeze());
        } else {
            self.client.write_buf.extend_from_slice(&bytes);
        }
    }

    fn emit_empty(&mut self, tag: u8) {
        let mut bytes = BytesMut::with_capacity(5);
        message::empty(&mut bytes, tag);
        self.emit(bytes);
    }

    fn emit_error(&mut self, error: &SqlError) {
        let mut bytes = BytesMut::new();
        error.encode(&mut bytes);
        self.emit(bytes);
    }

    async fn serve(&mut self) -> Result<(), RelayError> {
        loop {
            let (tag, len) = match self.client.next_frame().await {
                Ok(frame) => frame,
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => {
                    SqlError::fatal("08P01", error.to_string()).encode(&mut self.client.write_buf);
                    let _ = self.client.flush().await;
                    return Ok(());
                }
            };
            let frame = self.client.read_buf.split_to(len).freeze();
            let result = match tag {
                frontend::QUERY => self.query(&frame).await,
                frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::CLOSE => {
                    if self.skip_to_sync {
                        Ok(())
                    } else {
                        self.extended(tag, &frame).await
                    }
                }
                frontend::SYNC => {
                    self.skip_to_sync = false;
                    if self.held.is_some() {
                        let conn = self.held.as_mut().expect("held");
                        self.batch.sync(conn);
                        if let Err(error) = self.pump().await {
                            self.held = None;
                            return Err(error);
                        }
                    }
                    self.release_if_idle();
                    self.ready().await?;
                    Ok(())
                }
                frontend::FLUSH => {
                    if let Some(conn) = self.held.as_mut() {
                        self.batch.flush(conn);
                        self.pump().await?;
                    }
                    self.client.flush().await.map_err(RelayError::Client)?;
                    Ok(())
                }
                frontend::TERMINATE => return Ok(()),
                frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => Ok(()),
                other => {
                    SqlError::fatal(
                        "08P01",
                        format!(
                            "invalid frontend message type '{}'",
                            tessera_wire::socket::printable(other)
                        ),
                    )
                    .encode(&mut self.client.write_buf);
                    let _ = self.client.flush().await;
                    return Ok(());
                }
            };
            if let Err(error) = result {
                if error.severity == "FATAL" {
                    error.encode(&mut self.client.write_buf);
                    let _ = self.client.flush().await;
                    return Ok(());
                }
                self.emit_error(&error);
                if tag == frontend::QUERY {
                    self.ready().await?;
                } else {
                    self.skip_to_sync = true;
                }
            }
        }
    }

    async fn query(&mut self, frame: &Bytes) -> Result<(), SqlError> {
        let sql = tessera_wire::extended::parse_query(&frame[5..])
            .map_err(|e| SqlError::fatal("08P01", e.to_string()))?
            .to_string();
        let outside_transaction = self
            .held
            .as_ref()
            .is_none_or(|c| c.tx_status == TxStatus::Idle);
        let setting = outside_transaction.then(|| session_setting(&sql)).flatten();
        let (conn, batch) = self.conn().await?;
        batch.query(conn, &sql, true);
        let outcome = match self.pump().await {
            Ok(outcome) => outcome,
            Err(RelayError::Client(error)) => {
                return Err(SqlError::fatal("08006", error.to_string()));
            }
            Err(error) => {
                self.held = None;
                return Err(SqlError::new(
                    "08006",
                    format!("lost the PostgreSQL connection: {error}"),
                ));
            }
        };
        if outcome.error.is_none() {
            match setting {
                Some(true) => self.settings = vec![("script".into(), sql.clone())],
                Some(false) => self.settings.push(("script".into(), sql.clone())),
                None => {}
            }
            if setting.is_some()
                && let Some(conn) = self.held.as_mut()
            {
                conn.settings = self.settings.clone();
            }
        }
        self.release_if_idle();
        self.ready()
            .await
            .map_err(|e| SqlError::fatal("08006", e.to_string()))
    }

    fn statement(&self, name: &str) -> Result<Arc<Statement>, SqlError> {
        self.statements.get(name).cloned().ok_or_else(|| {
            SqlError::new(
                "26000",
                format!("prepared statement \"{name}\" does not exist"),
            )
        })
    }

    async fn extended(&mut self, tag: u8, frame: &Bytes) -> Result<(), SqlError> {
        let body = &frame[5..];
        let protocol = |e: tessera_wire::WireError| SqlError::fatal("08P01", e.to_string());
        match tag {
            frontend::PARSE => {
                let parse = Parse::parse(body).map_err(protocol)?;
                if !parse.name.is_empty() && self.statements.contains_key(parse.name) {
                    return Err(SqlError::new(
                        "42P05",
                        format!("prepared statement \"{}\" already exists", parse.name),
                    ));
                }
                let statement = Arc::new(Statement::new(parse.sql.into(), parse.param_types));
                let (conn, batch) = self.conn().await?;
                batch.prepare(conn, &statement, true);
                self.statements.insert(parse.name.to_string(), statement);
            }
            frontend::BIND => {
                let bind = Bind::parse(body).map_err(protocol)?;
                let statement = self.statement(bind.statement)?;
                let (conn, batch) = self.conn().await?;
                check_not_outdated(conn, &statement)?;
                batch.bind(conn, &statement, &bind);
            }
            frontend::DESCRIBE => {
                let named = Named::parse(body, "Describe").map_err(protocol)?;
                match named.target {
                    NamedTarget::Statement => {
                        let statement = self.statement(named.name)?;
                        let (conn, batch) = self.conn().await?;
                        check_not_outdated(conn, &statement)?;
                        batch.describe_statement(conn, &statement);
                    }
                    NamedTarget::Portal => {
                        let (conn, batch) = self.conn().await?;
                        batch.raw(conn, frame, Reply::DescribePortal, true);
                    }
                }
            }
            frontend::EXECUTE => {
                let (conn, batch) = self.conn().await?;
                batch.raw(conn, frame, Reply::Execute, true);
            }
            frontend::CLOSE => {
                let named = Named::parse(body, "Close").map_err(protocol)?;
                match named.target {
                    NamedTarget::Statement => {
                        self.statements.remove(named.name);
                        self.emit_empty(backend::CLOSE_COMPLETE);
                    }
                    NamedTarget::Portal => {
                        let (conn, batch) = self.conn().await?;
                        batch.raw(conn, frame, Reply::CloseComplete, true);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The client left: roll back whatever it left open, then return the connection.
    async fn finish(&mut self) {
        if let Some(conn) = self.held.as_mut()
            && conn.tx_status != TxStatus::Idle
            && conn.simple("ROLLBACK").await.is_err()
        {
            conn.discard();
        }
        self.held = None;
        self.client.shutdown().await;
    }
}

async fn copy_in(client: &mut PgStream, conn: &mut ServerConn) -> Result<(), RelayError> {
    client.flush().await.map_err(RelayError::Client)?;
    loop {
        let (tag, len) = client.next_frame().await.map_err(RelayError::Client)?;
        match tag {
            frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {
                client.relay_into(len, &mut conn.stream.write_buf);
                if tag != frontend::COPY_DATA || conn.stream.write_buf.len() >= 64 * 1024 {
                    conn.stream.flush().await.map_err(RelayError::Server)?;
                }
                if tag != frontend::COPY_DATA {
                    return Ok(());
                }
            }
            _ => client.consume(len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::session_setting;

    #[test]
    fn only_session_level_settings_are_remembered() {
        assert_eq!(session_setting("SET search_path = a"), Some(false));
        assert_eq!(session_setting("  reset all; SET x = 1"), Some(true));
        assert_eq!(session_setting("reset timezone"), Some(false));
        assert_eq!(session_setting("SET LOCAL x = 1"), None);
        assert_eq!(
            session_setting("set transaction isolation level serializable"),
            None
        );
        assert_eq!(session_setting("select 1"), None);
    }
}
