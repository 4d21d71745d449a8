//! Behaviour specific to the in-process store: persistence of `MemoryTopo::open` across reopen
//! (the embedded store of `tessera up` must survive restarts), exclusive ownership of the file,
//! refusal of a corrupt file, resynchronisation of a watcher that falls behind, and the
//! terminal error when the store is gone.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_topology::{
    MemoryTopo, TopoError, TopoStore, Version, Versioned, WATCH_CHANNEL_CAPACITY, WatchEvent,
};

/// Goal: everything written through `MemoryTopo::open` — values, versions, binary data — is there
/// after reopening, and versions keep increasing across the restart.
#[tokio::test]
async fn file_store_survives_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("nested").join("topo.json");
    let (kept, binary, last) = {
        let store = MemoryTopo::open(&path).unwrap();
        let kept = store
            .create("/p/kept", b"{\"json\":true}".to_vec())
            .await
            .unwrap();
        let binary = store
            .create("/p/binary", vec![0, 159, 146, 150, 255])
            .await
            .unwrap();
        store.create("/p/deleted", b"x".to_vec()).await.unwrap();
        let last = store
            .update("/p/deleted", b"y".to_vec(), None)
            .await
            .unwrap();
        store.delete("/p/deleted", None).await.unwrap();
        (kept, binary, last)
    };

    let store = MemoryTopo::open(&path).unwrap();
    let entries = store.list("/").await.unwrap();
    let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["/p/binary", "/p/kept"]);
    assert_eq!(store.get("/p/kept").await.unwrap().version, kept);
    assert_eq!(
        store.get("/p/kept").await.unwrap().value,
        b"{\"json\":true}"
    );
    assert_eq!(
        store.get("/p/binary").await.unwrap().value,
        vec![0, 159, 146, 150, 255]
    );
    assert_eq!(store.get("/p/binary").await.unwrap().version, binary);
    let next = store.create("/p/new", b"n".to_vec()).await.unwrap();
    assert!(
        next > last,
        "versions must not restart after reopening: {next} <= {last}"
    );
    // A compare-and-set with a version read before the restart still works.
    store
        .update("/p/kept", b"2".to_vec(), Some(kept))
        .await
        .unwrap();

    // The file is plain JSON an operator can read.
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        parsed["entries"]
            .as_array()
            .is_some_and(|entries| entries.len() == 3)
    );
}

/// Goal: a second process (here: a second open) cannot write the same store file concurrently;
/// it gets a clear error, and can open it once the first owner is gone.
#[tokio::test]
async fn file_store_is_exclusive() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("topo.json");
    let first = MemoryTopo::open(&path).unwrap();
    match MemoryTopo::open(&path) {
        Err(TopoError::Io { reason, .. }) => assert!(reason.contains("in use"), "{reason}"),
        other => panic!("second open must fail, got {other:?}"),
    }
    drop(first);
    MemoryTopo::open(&path).expect("open after the owner is gone");
}

/// Goal: a corrupt store file is refused with Corrupt naming the file, and left untouched so an
/// operator can repair it.
#[tokio::test]
async fn corrupt_file_is_refused_and_kept() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("topo.json");
    for garbage in [
        &b"{\"format\":1,\"revision\":3,\"entries\":[{\"key\":\"/a\""[..],
        b"{\"format\":1,\"revision\":1,\"entries\":[{\"key\":\"/a\",\"version\":7,\"text\":\"x\"}]}",
        b"{\"format\":99,\"revision\":0,\"entries\":[]}",
        b"{\"format\":1,\"revision\":2,\"entries\":[{\"key\":\"bad\",\"version\":1,\"text\":\"x\"}]}",
    ] {
        std::fs::write(&path, garbage).unwrap();
        match MemoryTopo::open(&path) {
            Err(TopoError::Corrupt { key, .. }) => assert_eq!(key, path.display().to_string()),
            other => panic!("expected Corrupt for {:?}, got {other:?}", String::from_utf8_lossy(garbage)),
        }
        assert_eq!(std::fs::read(&path).unwrap(), garbage, "the corrupt file must not be rewritten");
    }
}

/// Goal: `connect("file:///...")` opens the persistent store and `connect("memory")` a volatile
/// one.
#[tokio::test]
async fn connect_opens_memory_backends() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("topo.json");
    let url = format!("file://{}", path.display());
    {
        let store = tessera_topology::connect(&url).await.unwrap();
        store.create("/c/a", b"1".to_vec()).await.unwrap();
        assert_eq!(store.describe(), url);
    }
    let reopened = tessera_topology::connect(&url).await.unwrap();
    assert_eq!(reopened.get("/c/a").await.unwrap().value, b"1");

    let volatile = tessera_topology::connect("memory").await.unwrap();
    assert!(volatile.list("/").await.unwrap().is_empty());
}

/// Goal: a watcher that stops reading while many changes happen is not buffered without bound
/// and does not silently miss changes: it gets a fresh snapshot, and rebuilding from it (plus the
/// events after it) yields exactly the store's final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_gets_a_fresh_snapshot() {
    let store = MemoryTopo::new();
    let mut stream = store.watch("/lag/").await.unwrap();
    assert!(matches!(
        stream.next_event().await,
        Some(Ok(WatchEvent::Snapshot(_)))
    ));

    // Far more changes than the watch channel plus the change buffer can hold.
    let changes = WATCH_CHANNEL_CAPACITY + 2000;
    let mut last = Version(0);
    for index in 0..changes {
        last = store
            .update(
                &format!("/lag/k{}", index % 7),
                index.to_string().into_bytes(),
                None,
            )
            .await
            .unwrap();
    }

    // Rebuild the view the way a cache would, until it has caught up with the last write.
    let mut view: BTreeMap<String, Versioned> = BTreeMap::new();
    let (mut puts, mut snapshots) = (0, 0);
    while view.values().map(|versioned| versioned.version).max() != Some(last) {
        match tokio::time::timeout(Duration::from_secs(10), stream.next_event()).await {
            Ok(Some(Ok(WatchEvent::Put {
                key,
                value,
                version,
            }))) => {
                puts += 1;
                view.insert(key, Versioned { value, version });
            }
            Ok(Some(Ok(WatchEvent::Snapshot(entries)))) => {
                snapshots += 1;
                view = entries.into_iter().collect();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        snapshots >= 1,
        "the watcher should have lagged and been resynchronised"
    );
    assert!(
        puts < changes,
        "a lagging watcher must not be fed every change"
    );
    let expected: BTreeMap<String, Versioned> =
        store.list("/lag/").await.unwrap().into_iter().collect();
    assert_eq!(view, expected, "the rebuilt view must equal the store");
}

/// Goal: when the store itself is gone for good, a watch does not stop silently: it yields an
/// error item and then ends.
#[tokio::test]
async fn watch_reports_a_dropped_store() {
    let store = MemoryTopo::new();
    let mut stream = store.watch("/").await.unwrap();
    assert!(matches!(
        stream.next_event().await,
        Some(Ok(WatchEvent::Snapshot(_)))
    ));
    drop(store);
    match tokio::time::timeout(Duration::from_secs(5), stream.next_event()).await {
        Ok(Some(Err(TopoError::Closed { .. }))) => {}
        other => panic!("expected a Closed error item, got {other:?}"),
    }
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.next_event()).await,
        Ok(None)
    ));
}
