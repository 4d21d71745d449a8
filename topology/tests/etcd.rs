//! etcd-specific behaviour against a real etcd process started by the harness: watch resume
//! after a disconnect and after compaction, surviving an etcd restart, fast failure when etcd is
//! unreachable, and key-prefix isolation.

mod support;

use std::time::{Duration, Instant};

use support::{Proxy, etcd_client_for, next_event, start_etcd};
use tessera_topology::{
    EtcdConfig, EtcdTopo, TopoError, TopoStore, Version, WatchEvent, WatchStream,
};

/// Asserts that nothing arrives on the watch for `quiet`.
async fn assert_quiet(stream: &mut WatchStream, quiet: Duration) {
    if let Ok(item) = tokio::time::timeout(quiet, stream.next_event()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

async fn through_proxy(proxy: &Proxy, prefix: &str) -> EtcdTopo {
    let mut config = EtcdConfig::new(vec![proxy.address.to_string()], prefix);
    config.request_timeout = Duration::from_secs(2);
    EtcdTopo::connect(config)
        .await
        .expect("connect through proxy")
}

/// Goal: after a disconnect, the watch resumes from its last revision: every change made while
/// it was cut off arrives, in order, without a new snapshot and without duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_disconnect_without_loss() {
    let directory = tempfile::tempdir().unwrap();
    let etcd = start_etcd(&directory).await;
    let direct = etcd_client_for(&etcd, "/resume").await;
    let upstream = etcd.endpoint().parse().unwrap();
    let proxy = Proxy::start(upstream).await;
    let watched = through_proxy(&proxy, "/resume").await;

    direct.create("/r/before", b"0".to_vec()).await.unwrap();
    let mut stream = watched.watch("/r/").await.unwrap();
    assert!(
        matches!(next_event(&mut stream).await, WatchEvent::Snapshot(entries) if entries.len() == 1)
    );
    let live = direct.update("/r/live", b"1".to_vec(), None).await.unwrap();
    assert!(
        matches!(next_event(&mut stream).await, WatchEvent::Put { version, .. } if version == live)
    );

    proxy.cut();
    let mut written = Vec::new();
    for index in 0..5 {
        let version = direct
            .update(
                &format!("/r/cut{index}"),
                index.to_string().into_bytes(),
                None,
            )
            .await
            .unwrap();
        written.push(version);
    }
    direct.delete("/r/before", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();

    let mut received = Vec::new();
    for _ in 0..5 {
        match next_event(&mut stream).await {
            WatchEvent::Put { version, .. } => received.push(version),
            other => panic!("expected the missed puts in order, got {other:?}"),
        }
    }
    assert_eq!(received, written);
    assert_eq!(
        next_event(&mut stream).await,
        WatchEvent::Delete {
            key: "/r/before".into()
        }
    );
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

/// Goal: when etcd compacted away the revisions a disconnected watch needs, the watch re-lists
/// and delivers a fresh snapshot equal to the current state, then continues with live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_relists_after_compaction() {
    let directory = tempfile::tempdir().unwrap();
    let etcd = start_etcd(&directory).await;
    let direct = etcd_client_for(&etcd, "/compact").await;
    let proxy = Proxy::start(etcd.endpoint().parse().unwrap()).await;
    let watched = through_proxy(&proxy, "/compact").await;

    direct.create("/c/gone", b"x".to_vec()).await.unwrap();
    let mut stream = watched.watch("/c/").await.unwrap();
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Snapshot(_)
    ));

    proxy.cut();
    direct.delete("/c/gone", None).await.unwrap();
    let mut expected = Vec::new();
    for index in 0..3 {
        let key = format!("/c/k{index}");
        direct.update(&key, b"first".to_vec(), None).await.unwrap();
        let version = direct.update(&key, b"second".to_vec(), None).await.unwrap();
        expected.push((key, b"second".to_vec(), version));
    }
    let compacted_at = direct.compact_history().await.expect("compact");
    assert!(compacted_at >= expected[2].2);
    proxy.restore();

    match next_event(&mut stream).await {
        WatchEvent::Snapshot(entries) => {
            let entries: Vec<(String, Vec<u8>, Version)> = entries
                .into_iter()
                .map(|(key, versioned)| (key, versioned.value, versioned.version))
                .collect();
            assert_eq!(entries, expected, "the snapshot must be the current state");
        }
        other => panic!("expected a fresh snapshot after compaction, got {other:?}"),
    }
    let live = direct
        .update("/c/after", b"y".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut stream).await,
        WatchEvent::Put {
            key: "/c/after".into(),
            value: b"y".to_vec(),
            version: live
        }
    );
}

/// Goal: a watch keeps working across an etcd crash and restart on the same data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_etcd_restart() {
    let directory = tempfile::tempdir().unwrap();
    let mut etcd = start_etcd(&directory).await;
    let store = etcd_client_for(&etcd, "/restart").await;
    store.create("/x/kept", b"1".to_vec()).await.unwrap();
    let mut stream = store.watch("/x/").await.unwrap();
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Snapshot(_)
    ));

    etcd.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.restart().await.expect("restart etcd");

    assert_eq!(
        store.get("/x/kept").await.unwrap().value,
        b"1",
        "data survived the restart"
    );
    let version = store
        .update("/x/new", b"2".to_vec(), None)
        .await
        .expect("write after restart");
    assert_eq!(
        next_event(&mut stream).await,
        WatchEvent::Put {
            key: "/x/new".into(),
            value: b"2".to_vec(),
            version
        }
    );
}

/// Goal: an unreachable etcd — nothing listening, or a frozen process that accepts but never
/// answers — fails `connect` with `Unavailable` within a bounded time instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_fails_fast() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    match tessera_topology::connect(&format!("etcd://127.0.0.1:{closed_port}/x")).await {
        Err(TopoError::Unavailable { .. }) => {}
        other => panic!(
            "expected Unavailable, got {:?}",
            other.map(|store| store.describe())
        ),
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );

    let directory = tempfile::tempdir().unwrap();
    let etcd = start_etcd(&directory).await;
    etcd.suspend().unwrap();
    let started = Instant::now();
    let result = tessera_topology::connect(&etcd.url("/frozen")).await;
    etcd.resume().unwrap();
    assert!(
        matches!(result, Err(TopoError::Unavailable { .. })),
        "expected Unavailable from a frozen etcd"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

/// Goal: requests to an etcd that freezes after connecting fail with `Unavailable` within the
/// request timeout, and work again once it thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_time_out_while_etcd_is_frozen() {
    let directory = tempfile::tempdir().unwrap();
    let etcd = start_etcd(&directory).await;
    let mut config = EtcdConfig::new(vec![etcd.endpoint()], "/frozen");
    config.request_timeout = Duration::from_secs(1);
    let store = EtcdTopo::connect(config).await.unwrap();
    store.create("/f/a", b"1".to_vec()).await.unwrap();

    etcd.suspend().unwrap();
    let started = Instant::now();
    let result = store.get("/f/a").await;
    assert!(
        matches!(result, Err(TopoError::Unavailable { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    etcd.resume().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.get("/f/a").await {
            Ok(value) => {
                assert_eq!(value.value, b"1");
                break;
            }
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, "etcd not back yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("etcd did not come back: {error}"),
        }
    }
}

/// Goal: two clusters with different URL prefixes share one etcd without seeing each other's
/// keys, and the prefix never leaks into the keys callers see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_isolate_clusters() {
    let directory = tempfile::tempdir().unwrap();
    let etcd = start_etcd(&directory).await;
    let first = tessera_topology::connect(&etcd.url("/one")).await.unwrap();
    let second = tessera_topology::connect(&etcd.url("/two/nested"))
        .await
        .unwrap();
    let unprefixed = tessera_topology::connect(&etcd.url("")).await.unwrap();

    first
        .create("/tessera/keyspaces/app", b"1".to_vec())
        .await
        .unwrap();
    assert!(matches!(
        second.get("/tessera/keyspaces/app").await,
        Err(TopoError::NotFound { .. })
    ));
    second
        .create("/tessera/keyspaces/app", b"2".to_vec())
        .await
        .unwrap();
    let listed = first.list("/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, "/tessera/keyspaces/app");
    assert_eq!(listed[0].1.value, b"1");

    let everything: Vec<String> = unprefixed
        .list("/")
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        everything,
        [
            "/one/tessera/keyspaces/app",
            "/two/nested/tessera/keyspaces/app"
        ]
    );
}
