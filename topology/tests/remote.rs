//! Remote-store behaviour over a real localhost socket: watches survive a server restart, the
//! server shuts down promptly despite open watches and pending lock waits, a dead client's lock
//! expires on the server, and an unreachable server fails fast.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{ServerHandle, next_event};
use tessera_topology::{
    DEFAULT_REMOTE_TIMEOUT, MemoryTopo, RemoteTopo, TopoError, TopoStore, WatchEvent,
};

/// Goal: `tessera up` restarting its server does not break remote watchers: they reconnect,
/// rebuild from a fresh snapshot that includes changes made meanwhile, and follow new events.
/// The shutdown itself completes promptly although a watch and a lock wait are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_server_restart() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("topo.json");
    let backing: Arc<dyn TopoStore> = Arc::new(MemoryTopo::open(&path).unwrap());
    let server = ServerHandle::start(backing.clone(), None).await;
    let address = server.address;
    let remote = RemoteTopo::connect(&address.to_string(), DEFAULT_REMOTE_TIMEOUT)
        .await
        .unwrap();

    remote.create("/s/a", b"1".to_vec()).await.unwrap();
    let mut stream = remote.watch("/s/").await.unwrap();
    assert!(
        matches!(next_event(&mut stream).await, WatchEvent::Snapshot(entries) if entries.len() == 1)
    );

    // A second client holds a lock another waits for, so a lock wait is pending at shutdown.
    let holder = remote
        .lock("/tessera/locks/l", Duration::from_secs(30))
        .await
        .unwrap();
    let waiter_client = RemoteTopo::connect(&address.to_string(), DEFAULT_REMOTE_TIMEOUT)
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        waiter_client
            .lock("/tessera/locks/l", Duration::from_secs(30))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited on long calls"
    );
    match tokio::time::timeout(Duration::from_secs(5), waiter).await {
        Ok(Ok(Err(TopoError::Unavailable { .. }))) => {}
        other => panic!("pending lock wait should fail with Unavailable: {other:?}"),
    }
    holder.abandon();

    // While the server is down the store changes (as if another path wrote it).
    backing.update("/s/b", b"2".to_vec(), None).await.unwrap();
    let server = ServerHandle::start(backing.clone(), Some(address)).await;

    match next_event(&mut stream).await {
        WatchEvent::Snapshot(entries) => {
            let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
            assert_eq!(
                keys,
                ["/s/a", "/s/b"],
                "the rebuild snapshot must be current"
            );
        }
        other => panic!("expected a snapshot after reconnecting, got {other:?}"),
    }
    let version = remote.update("/s/c", b"3".to_vec(), None).await.unwrap();
    assert_eq!(
        next_event(&mut stream).await,
        WatchEvent::Put {
            key: "/s/c".into(),
            value: b"3".to_vec(),
            version
        }
    );
    server.stop().await;
}

/// Goal: a remote client that dies while holding a lock (its process and connection vanish)
/// loses the lock once the lease expires, so others are not blocked forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_of_a_vanished_client_expires() {
    let backing: Arc<dyn TopoStore> = Arc::new(MemoryTopo::new());
    let server = ServerHandle::start(backing.clone(), None).await;
    let address = server.address.to_string();
    {
        let doomed = RemoteTopo::connect(&address, DEFAULT_REMOTE_TIMEOUT)
            .await
            .unwrap();
        let guard = doomed
            .lock("/tessera/locks/d", Duration::from_secs(1))
            .await
            .unwrap();
        // No release, no renewal: the client is gone.
        guard.abandon();
        drop(doomed);
    }
    let started = Instant::now();
    let survivor = RemoteTopo::connect(&address, DEFAULT_REMOTE_TIMEOUT)
        .await
        .unwrap();
    let guard = tokio::time::timeout(
        Duration::from_secs(10),
        survivor.lock("/tessera/locks/d", Duration::from_secs(1)),
    )
    .await
    .expect("the lock must expire")
    .expect("lock");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "expired too early"
    );
    guard.release().await.unwrap();
    // The backing store agrees that the lock is free again after release.
    let direct = backing
        .lock("/tessera/locks/d", Duration::from_secs(1))
        .await
        .expect("free in the backend");
    direct.release().await.unwrap();
    server.stop().await;
}

/// Goal: a typed error from the backend (here BadVersion with its actual version) reaches the
/// remote caller intact, so retry logic works the same over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_cross_the_wire() {
    let server = ServerHandle::start(Arc::new(MemoryTopo::new()), None).await;
    let remote = RemoteTopo::connect(&server.address.to_string(), DEFAULT_REMOTE_TIMEOUT)
        .await
        .unwrap();
    let first = remote.create("/e/k", b"1".to_vec()).await.unwrap();
    let second = remote.update("/e/k", b"2".to_vec(), None).await.unwrap();
    assert_eq!(
        remote.update("/e/k", b"3".to_vec(), Some(first)).await,
        Err(TopoError::BadVersion {
            key: "/e/k".into(),
            expected: first,
            actual: second
        })
    );
    server.stop().await;
}

/// Goal: connecting to a topology server that is not running fails fast with Unavailable and a
/// hint, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_fast() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    match tessera_topology::connect(&format!("grpc://127.0.0.1:{port}")).await {
        Err(TopoError::Unavailable { reason, .. }) => {
            assert!(reason.contains("tessera up"), "{reason}")
        }
        other => panic!(
            "expected Unavailable, got {:?}",
            other.map(|store| store.describe())
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(7));
}
