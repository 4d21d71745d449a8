//! Bad input gets a precise error and loses nothing: wrong password, unknown database,
//! unparsable SQL, malformed protocol messages, and clusters that cannot start.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tessera_cli::up::LocalCluster;
use tessera_tests::{TestCluster, connect, sqlstate, temp_dir, test_options};
use tessera_wire::{ConnectConfig, ServerConn, Target};
use tokio_postgres::NoTls;

fn url_with(cluster: &TestCluster, user_password: &str, database: &str) -> String {
    let address = cluster.cluster.gate_address;
    format!(
        "postgres://{user_password}@{}:{}/{database}",
        address.ip(),
        address.port()
    )
}

/// Reads whatever the server answers until it closes the connection (bounded).
fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return answer,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_get_precise_sqlstates_and_the_gate_keeps_serving() {
    let cluster = TestCluster::start(2, 1).await;

    let error = tokio_postgres::connect(&url_with(&cluster, "postgres:wrong", "app"), NoTls)
        .await
        .err()
        .expect("wrong password must fail");
    assert_eq!(sqlstate(&error), "28P01");
    let error = tokio_postgres::connect(&url_with(&cluster, "nobody:postgres", "app"), NoTls)
        .await
        .err()
        .expect("unknown user must fail");
    assert_eq!(
        sqlstate(&error),
        "28P01",
        "unknown users look like wrong passwords"
    );
    let error = tokio_postgres::connect(&url_with(&cluster, "postgres:postgres", "nope"), NoTls)
        .await
        .err()
        .expect("unknown database must fail");
    assert_eq!(sqlstate(&error), "3D000");

    let client = cluster.client().await;
    let error = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&error), "42601");
    let message = error
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("SELEC"),
        "the parser's message names the problem: {message}"
    );
    let error = client.prepare("SELECT (1 +").await.unwrap_err();
    assert_eq!(sqlstate(&error), "42601");
    // The session is still usable after errors.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    // A malformed startup packet: the connection is closed with an error ...
    let address = cluster.cluster.gate_address;
    let mut raw = TcpStream::connect(address).unwrap();
    raw.write_all(&[0, 0, 0, 3, 1, 2, 3]).unwrap();
    let answer = read_until_close(&mut raw);
    assert_eq!(
        answer.first(),
        Some(&b'E'),
        "expected an ErrorResponse, got {answer:?}"
    );
    assert!(String::from_utf8_lossy(&answer).contains("08P01"));
    // ... an absurd length is refused without reading it ...
    let mut raw = TcpStream::connect(address).unwrap();
    raw.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .unwrap();
    let answer = read_until_close(&mut raw);
    assert!(String::from_utf8_lossy(&answer).contains("08P01"));
    // ... an unsupported protocol version is refused ...
    let mut raw = TcpStream::connect(address).unwrap();
    raw.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).unwrap();
    let answer = read_until_close(&mut raw);
    assert!(String::from_utf8_lossy(&answer).contains("unsupported frontend protocol"));

    // A malformed message after authentication: FATAL 08P01, connection closed.
    let mut conn = ServerConn::connect(&ConnectConfig {
        target: Target::Tcp {
            host: address.ip().to_string(),
            port: address.port(),
        },
        user: "postgres".into(),
        password: "postgres".into(),
        database: "app".into(),
        params: vec![],
        connect_timeout_ms: 5_000,
    })
    .await
    .unwrap();
    conn.stream.write(b"Z\0\0\0\x04");
    conn.stream.flush().await.unwrap();
    let (tag, len) = conn.stream.next_frame().await.unwrap();
    assert_eq!(tag, b'E');
    let error = tessera_wire::SqlError::from_body(conn.stream.body(len));
    assert_eq!((error.severity, error.code.as_str()), ("FATAL", "08P01"));
    // A truncated Bind is a protocol violation too, never a panic.
    let mut conn = ServerConn::connect(&ConnectConfig {
        target: Target::Tcp {
            host: address.ip().to_string(),
            port: address.port(),
        },
        user: "postgres".into(),
        password: "postgres".into(),
        database: "app".into(),
        params: vec![],
        connect_timeout_ms: 5_000,
    })
    .await
    .unwrap();
    conn.stream.write(b"B\0\0\0\x08p\0s\0");
    conn.stream.write(b"S\0\0\0\x04");
    conn.stream.flush().await.unwrap();
    let (tag, len) = conn.stream.next_frame().await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(
        tessera_wire::SqlError::from_body(conn.stream.body(len)).code,
        "08P01"
    );

    // After all of that, the gate still serves a new client.
    let client = connect(&cluster.url()).await;
    let two: i32 = client.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);
    cluster.stop().await;
}

/// Starts a cluster that must fail, and returns its error message.
async fn start_error(options: tessera_cli::up::UpOptions) -> String {
    LocalCluster::start(options)
        .await
        .err()
        .expect("must fail")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_that_cannot_start_say_why_in_one_line() {
    tessera_tests::init_tracing();
    // Gate port in use.
    let dir = temp_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut options = test_options(dir.path(), 1, 1);
    options.gate_port = taken.local_addr().unwrap().port();
    let error = start_error(options).await;
    assert!(
        error.contains("already in use") && error.contains("gate"),
        "{error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");

    // Missing PostgreSQL binaries.
    let dir = temp_dir();
    let mut options = test_options(dir.path(), 1, 1);
    options.pg_bin_dir = "/nonexistent/pg/bin".into();
    let error = start_error(options).await;
    assert!(
        error.contains("/nonexistent/pg/bin/initdb") && error.contains("not found"),
        "{error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");

    // Unwritable data dir (a path below a regular file).
    let dir = temp_dir();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let mut options = test_options(dir.path(), 1, 1);
    options.data_dir = file.join("data");
    let error = start_error(options).await;
    assert!(
        error.contains("not writable") && error.contains("plain-file"),
        "{error}"
    );
    assert!(!error.contains('\n'), "one line: {error}");

    // A PostgreSQL port in use.
    let dir = temp_dir();
    let options = test_options(dir.path(), 1, 1);
    let pg_port = options.base_port.unwrap();
    let blocker = std::net::TcpListener::bind(("127.0.0.1", pg_port)).unwrap();
    let error = start_error(options).await;
    assert!(
        error.contains(&pg_port.to_string()) && error.contains("in use"),
        "{error}"
    );
    drop(blocker);
}
