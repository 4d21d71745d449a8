//! `ServerConn`: one authenticated connection from Tessera to a PostgreSQL server or to a
//! tablet pooler (which speaks the same protocol).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;

use super::error::{SqlError, WireError};
use super::message::{TxStatus, backend};
use super::socket::PgStream;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    /// Path of the socket file itself (e.g. `<dir>/.s.PGSQL.5432`).
    Unix {
        path: PathBuf,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix { path } => write!(f, "{}", path.display()),
        }
    }
}

/// How to open and authenticate a server connection.
#[derive(Clone)]
pub struct ConnectConfig {
    pub target: Target,
    pub user: String,
    pub password: String,
    pub database: String,
    /// Extra startup parameters (application_name, client_encoding, ...).
    pub params: Vec<(String, String)>,
    pub connect_timeout_ms: u64,
}

impl std::fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("target", &self.target)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// Statements prepared on one server connection, by content key, with FIFO eviction so that a
/// long-lived connection does not accumulate statements without bound.
#[derive(Debug, Default)]
pub struct PreparedSet {
    /// Statement key -> when this connection prepared it (`statement::parse_clock`).
    keys: foldhash::HashMap<u64, u64>,
    order: VecDeque<u64>,
    /// Evicted statements still to be closed on the server before the next use.
    pub to_close: Vec<u64>,
}

/// Statements kept per server connection before the oldest is closed.
pub const MAX_PREPARED_PER_CONN: usize = 1024;

impl PreparedSet {
    pub fn contains(&self, key: u64) -> bool {
        self.keys.contains_key(&key)
    }

    /// When this connection prepared `key`, if it did.
    pub fn prepared_at(&self, key: u64) -> Option<u64> {
        self.keys.get(&key).copied()
    }

    /// Records that `key` is (about to be) prepared on this connection, now.
    pub fn insert(&mut self, key: u64) {
        let now = crate::statement::parse_clock();
        if self.keys.insert(key, now).is_none() {
            self.order.push_back(key);
            if self.order.len() > MAX_PREPARED_PER_CONN
                && let Some(old) = self.order.pop_front()
            {
                self.keys.remove(&old);
                self.to_close.push(old);
            }
        }
    }

    /// The server ran `key` successfully with a plan checked after parse-clock tick `at`: the
    /// connection's copy is as current as one prepared then.
    pub fn revalidated(&mut self, key: u64, at: u64) {
        if let Some(prepared_at) = self.keys.get_mut(&key) {
            *prepared_at = (*prepared_at).max(at);
        }
    }

    /// Forgets everything (after DISCARD ALL or a failed batch whose Parse may not have run).
    pub fn clear(&mut self) {
        self.keys.clear();
        self.order.clear();
        self.to_close.clear();
    }

    /// Forgets `key` and schedules its Close before the next use of the connection (the server
    /// may or may not hold it, e.g. after a failed batch or a stale cached plan).
    pub fn forget(&mut self, key: u64) {
        self.remove(key);
        self.to_close.push(key);
    }

    pub fn remove(&mut self, key: u64) {
        if self.keys.remove(&key).is_some() {
            self.order.retain(|k| *k != key);
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// An authenticated server connection, idle at a ReadyForQuery boundary when handed out.
#[derive(Debug)]
pub struct ServerConn {
    pub stream: PgStream,
    /// Shared, so that cancel registries can keep it without an allocation per borrow.
    pub target: Arc<Target>,
    pub process_id: i32,
    pub secret_key: i32,
    /// ParameterStatus values reported by the server (server_version, TimeZone, ...).
    pub server_params: Vec<(String, String)>,
    pub prepared: PreparedSet,
    /// Session settings applied on top of the server defaults (SET name = value), in order.
    pub settings: Vec<(String, String)>,
    /// Status from the last ReadyForQuery.
    pub tx_status: TxStatus,
    /// Set when the connection's protocol state is unknown; it must not be reused.
    pub broken: bool,
    /// Set by a user once it has looked at `server_params` (they never change for a
    /// connection), so later borrowers can skip comparing them.
    pub params_reported: bool,
    pub created: Instant,
}

impl ServerConn {
    /// Opens, authenticates and waits for the first ReadyForQuery.
    pub async fn connect(config: &ConnectConfig) -> Result<ServerConn, WireError> {
        let timeout_ms = config.connect_timeout_ms.max(1);
        tokio::time::timeout(
            Duration::from_millis(timeout_ms),
            Self::connect_inner(config),
        )
        .await
        .map_err(|_| WireError::Timeout(timeout_ms))?
    }

    async fn connect_inner(config: &ConnectConfig) -> Result<ServerConn, WireError> {
        let mut stream = match &config.target {
            Target::Tcp { host, port } => PgStream::connect_tcp(host, *port).await?,
            Target::Unix { path } => PgStream::connect_unix(path).await?,
        };
        let mut params: Vec<(&str, &str)> = vec![
            ("user", config.user.as_str()),
            ("database", config.database.as_str()),
        ];
        params.extend(config.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        frontend::startup_message(params.iter().copied(), &mut stream.write_buf)?;
        stream.flush().await?;

        let mut conn = ServerConn {
            stream,
            target: Arc::new(config.target.clone()),
            process_id: 0,
            secret_key: 0,
            server_params: Vec::new(),
            prepared: PreparedSet::default(),
            settings: Vec::new(),
            tx_status: TxStatus::Idle,
            broken: false,
            params_reported: false,
            created: Instant::now(),
        };
        conn.authenticate(config).await?;
        loop {
            let (tag, len) = conn.stream.next_frame().await?;
            let body = conn.stream.body(len).to_vec();
            conn.stream.consume(len);
            match tag {
                backend::PARAMETER_STATUS => {
                    let mut parts = body.split(|b| *b == 0);
                    let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    let value = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    conn.server_params
                        .push((name.into_owned(), value.into_owned()));
                }
                backend::BACKEND_KEY_DATA if body.len() >= 8 => {
                    conn.process_id = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    conn.secret_key = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                }
                backend::READY_FOR_QUERY => return Ok(conn),
                backend::ERROR => return Err(WireError::Server(SqlError::from_body(&body))),
                backend::NOTICE | backend::NEGOTIATE_PROTOCOL => {}
                other => {
                    return Err(WireError::protocol(format!(
                        "unexpected message '{}' during startup",
                        other as char
                    )));
                }
            }
        }
    }

    async fn authenticate(&mut self, config: &ConnectConfig) -> Result<(), WireError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, len) = self.stream.next_frame().await?;
            let body = self.stream.body(len).to_vec();
            self.stream.consume(len);
            match tag {
                backend::ERROR => return Err(WireError::Server(SqlError::from_body(&body))),
                backend::AUTHENTICATION if body.len() >= 4 => {}
                other => {
                    return Err(WireError::protocol(format!(
                        "expected authentication request, got '{}'",
                        other as char
                    )));
                }
            }
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let payload = &body[4..];
            match code {
                0 => return Ok(()),
                3 => {
                    frontend::password_message(
                        config.password.as_bytes(),
                        &mut self.stream.write_buf,
                    )?;
                }
                5 => {
                    let salt: [u8; 4] = payload
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| WireError::protocol("short MD5 salt"))?;
                    let hashed = postgres_protocol::authentication::md5_hash(
                        config.user.as_bytes(),
                        config.password.as_bytes(),
                        salt,
                    );
                    frontend::password_message(hashed.as_bytes(), &mut self.stream.write_buf)?;
                }
                10 => {
                    let offers_scram = payload
                        .split(|b| *b == 0)
                        .any(|m| m == SCRAM_SHA_256.as_bytes());
                    if !offers_scram {
                        return Err(WireError::Auth(
                            "server offers no SASL mechanism Tessera supports".into(),
                        ));
                    }
                    let state =
                        ScramSha256::new(config.password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        state.message(),
                        &mut self.stream.write_buf,
                    )?;
                    scram = Some(state);
                }
                11 => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| WireError::protocol("SASLContinue before SASL"))?;
                    state
                        .update(payload)
                        .map_err(|e| WireError::Auth(e.to_string()))?;
                    frontend::sasl_response(state.message(), &mut self.stream.write_buf)?;
                }
                12 => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| WireError::protocol("SASLFinal before SASL"))?;
                    state
                        .finish(payload)
                        .map_err(|e| WireError::Auth(format!("server signature: {e}")))?;
                }
                other => {
                    return Err(WireError::Auth(format!(
                        "unsupported authentication method {other}"
                    )));
                }
            }
            self.stream.flush().await?;
        }
    }

    /// Runs one simple-query string and discards its results, failing on the first error.
    /// Control path only (settings, BEGIN, 2PC commands); returns the last command tag.
    pub async fn simple(&mut self, sql: &str) -> Result<String, WireError> {
        super::message::query(&mut self.stream.write_buf, sql);
        self.stream.flush().await?;
        let mut error = None;
        let mut tag = String::new();
        loop {
            let (kind, len) = match self.stream.next_frame().await {
                Ok(frame) => frame,
                Err(e) => {
                    self.broken = true;
                    return Err(e.into());
                }
            };
            match kind {
                backend::ERROR => {
                    error.get_or_insert(SqlError::from_body(self.stream.body(len)));
                }
                backend::COMMAND_COMPLETE => {
                    tag =
                        String::from_utf8_lossy(super::message::command_tag(self.stream.body(len)))
                            .into_owned();
                }
                backend::READY_FOR_QUERY => {
                    let status = self.stream.body(len).first().copied().unwrap_or(b'I');
                    self.tx_status = TxStatus::from_byte(status).unwrap_or(TxStatus::Idle);
                    self.stream.consume(len);
                    return match error {
                        Some(error) => Err(WireError::Server(error)),
                        None => Ok(tag),
                    };
                }
                backend::COPY_IN | backend::COPY_BOTH => {
                    self.broken = true;
                    return Err(WireError::protocol("unexpected COPY in control query"));
                }
                _ => {}
            }
            self.stream.consume(len);
        }
    }

    /// Runs a control query and returns the rows as text (simple protocol, text format).
    pub async fn simple_rows(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WireError> {
        super::message::query(&mut self.stream.write_buf, sql);
        self.stream.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (kind, len) = match self.stream.next_frame().await {
                Ok(frame) => frame,
                Err(e) => {
                    self.broken = true;
                    return Err(e.into());
                }
            };
            match kind {
                backend::ERROR => {
                    error.get_or_insert(SqlError::from_body(self.stream.body(len)));
                }
                backend::DATA_ROW => rows.push(decode_text_row(self.stream.body(len))?),
                backend::READY_FOR_QUERY => {
                    let status = self.stream.body(len).first().copied().unwrap_or(b'I');
                    self.tx_status = TxStatus::from_byte(status).unwrap_or(TxStatus::Idle);
                    self.stream.consume(len);
                    return match error {
                        Some(error) => Err(WireError::Server(error)),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
            self.stream.consume(len);
        }
    }

    /// Asks the server to cancel whatever this connection is running (a new connection sends
    /// CancelRequest, as the protocol requires).
    pub async fn cancel(
        target: &Target,
        process_id: i32,
        secret_key: i32,
    ) -> Result<(), WireError> {
        let mut stream = match target {
            Target::Tcp { host, port } => PgStream::connect_tcp(host, *port).await?,
            Target::Unix { path } => PgStream::connect_unix(path).await?,
        };
        let mut buf = BytesMut::new();
        frontend::cancel_request(process_id, secret_key, &mut buf);
        stream.write(&buf);
        stream.flush().await?;
        stream.shutdown().await;
        Ok(())
    }
}

/// Decodes a text-format DataRow body.
pub fn decode_text_row(body: &[u8]) -> Result<Vec<Option<String>>, WireError> {
    let bad = || WireError::protocol("malformed DataRow");
    let count = i16::from_be_bytes(
        body.get(..2)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let mut pos = 2;
    let mut row = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count {
        let len = i32::from_be_bytes(
            body.get(pos..pos + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        pos += 4;
        if len < 0 {
            row.push(None);
        } else {
            let end = pos + len as usize;
            row.push(Some(
                String::from_utf8_lossy(body.get(pos..end).ok_or_else(bad)?).into_owned(),
            ));
            pos = end;
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revalidated_statement_counts_as_prepared_at_the_later_tick_only() {
        let mut prepared = PreparedSet::default();
        prepared.insert(7);
        let at = prepared.prepared_at(7).expect("prepared");
        prepared.revalidated(7, at + 10);
        assert_eq!(prepared.prepared_at(7), Some(at + 10));
        // An older check never moves it back.
        prepared.revalidated(7, at + 5);
        assert_eq!(prepared.prepared_at(7), Some(at + 10));
        // A statement the connection does not hold stays unknown.
        prepared.revalidated(8, at + 20);
        assert_eq!(prepared.prepared_at(8), None);
    }

    #[test]
    fn prepared_set_evicts_oldest_and_remembers_to_close_it() {
        let mut set = PreparedSet::default();
        for key in 0..(MAX_PREPARED_PER_CONN as u64 + 2) {
            set.insert(key);
        }
        assert_eq!(set.len(), MAX_PREPARED_PER_CONN);
        assert!(!set.contains(0) && !set.contains(1));
        assert_eq!(set.to_close, vec![0, 1]);
        assert!(set.contains(MAX_PREPARED_PER_CONN as u64 + 1));
    }
}
