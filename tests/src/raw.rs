//! Raw protocol connections, for tests that compare answers frame by frame.

use tessera_wire::message::{self, backend};
use tessera_wire::{ConnectConfig, ServerConn, Target};

/// A protocol-level connection to `127.0.0.1:port` as `postgres`, with `params` in its startup.
pub async fn connect(port: u16, database: &str, params: Vec<(String, String)>) -> ServerConn {
    ServerConn::connect(&ConnectConfig {
        target: Target::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        user: "postgres".into(),
        password: "postgres".into(),
        database: database.into(),
        params,
        connect_timeout_ms: 10_000,
    })
    .await
    .expect("raw connection")
}

/// Every frame answering one simple query, up to and including ReadyForQuery, except notices
/// and parameter status reports (which depend on the connection's history).
pub async fn answer(conn: &mut ServerConn, sql: &str) -> Vec<(u8, Vec<u8>)> {
    message::query(&mut conn.stream.write_buf, sql);
    conn.stream.flush().await.expect("send query");
    let mut frames = Vec::new();
    loop {
        let (tag, len) = conn.stream.next_frame().await.expect("answer frame");
        let body = conn.stream.body(len).to_vec();
        conn.stream.consume(len);
        if tag != backend::NOTICE && tag != backend::PARAMETER_STATUS {
            frames.push((tag, body));
        }
        if tag == backend::READY_FOR_QUERY {
            return frames;
        }
    }
}
