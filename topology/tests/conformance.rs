//! The TopoStore conformance suite: ONE set of behavioural tests, run against every backend —
//! volatile memory, file-backed memory, the gRPC remote store (real localhost socket), and etcd
//! (a real etcd process started by the harness; the tests fail if etcd is not installed).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Backend, Fixture, next_event};
use tessera_topology::paths::{self, KeyKind};
use tessera_topology::{
    KeyspaceRecord, ShardRecord, TableKind, TableRecord, TabletRecord, TopoError, Topology,
    Version, WatchEvent,
};

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

fn tablet(zone: &str, id: &str, port: u16) -> TabletRecord {
    TabletRecord {
        id: id.to_string(),
        zone: zone.to_string(),
        keyspace: "app".to_string(),
        shard: "-80".to_string(),
        host: "127.0.0.1".to_string(),
        postgres_port: port,
        pooler_port: port + 1,
        grpc_port: port + 2,
        data_dir: format!("/data/{id}"),
    }
}

mod cases {
    use super::*;

    /// Goal: get/create/update/delete follow the documented semantics and error kinds, and every
    /// change raises the key's version.
    pub async fn crud_semantics(fixture: Fixture) {
        let store = &fixture.store;
        let key = "/crud/a";
        assert_eq!(
            store.get(key).await,
            Err(TopoError::NotFound { key: key.into() })
        );

        let v1 = store.create(key, b"one".to_vec()).await.expect("create");
        assert_eq!(
            store.create(key, b"again".to_vec()).await,
            Err(TopoError::AlreadyExists { key: key.into() })
        );
        let read = store.get(key).await.expect("get");
        assert_eq!((read.value.as_slice(), read.version), (&b"one"[..], v1));

        let v2 = store
            .update(key, b"two".to_vec(), Some(v1))
            .await
            .expect("cas");
        assert!(v2 > v1, "version must increase: {v1} -> {v2}");
        assert_eq!(
            store.update(key, b"stale".to_vec(), Some(v1)).await,
            Err(TopoError::BadVersion {
                key: key.into(),
                expected: v1,
                actual: v2
            })
        );
        assert_eq!(
            text(&store.get(key).await.unwrap().value),
            "two",
            "a failed CAS must not write"
        );

        let v3 = store
            .update(key, b"three".to_vec(), None)
            .await
            .expect("upsert existing");
        assert!(v3 > v2);
        let created_by_upsert = store
            .update("/crud/b", b"b".to_vec(), None)
            .await
            .expect("upsert new");
        assert!(created_by_upsert > v3);
        assert_eq!(
            store.update("/crud/missing", b"x".to_vec(), Some(v3)).await,
            Err(TopoError::NotFound {
                key: "/crud/missing".into()
            })
        );

        assert_eq!(
            store.delete(key, Some(v2)).await,
            Err(TopoError::BadVersion {
                key: key.into(),
                expected: v2,
                actual: v3
            })
        );
        store
            .delete(key, Some(v3))
            .await
            .expect("delete at version");
        assert_eq!(
            store.get(key).await,
            Err(TopoError::NotFound { key: key.into() })
        );
        assert_eq!(
            store.delete(key, None).await,
            Err(TopoError::NotFound { key: key.into() })
        );
        store
            .delete("/crud/b", None)
            .await
            .expect("unconditional delete");

        let recreated = store
            .create(key, b"again".to_vec())
            .await
            .expect("re-create");
        assert!(
            recreated > created_by_upsert,
            "re-creation must get a newer version"
        );

        for bad in ["", "relative", "/trailing/", "/a//b"] {
            assert!(
                matches!(store.get(bad).await, Err(TopoError::InvalidKey { .. })),
                "get {bad:?}"
            );
            assert!(
                matches!(
                    store.create(bad, vec![]).await,
                    Err(TopoError::InvalidKey { .. })
                ),
                "create {bad:?}"
            );
        }
        assert!(matches!(
            store.list("nope").await,
            Err(TopoError::InvalidKey { .. })
        ));
    }

    /// Goal: list returns exactly the keys under a prefix (byte-wise), sorted, with versions.
    pub async fn list_semantics(fixture: Fixture) {
        let store = &fixture.store;
        let mut written = BTreeMap::new();
        for key in [
            "/list/b/2",
            "/list/a/1",
            "/list/ab",
            "/list/a/0",
            "/list/b/1",
            "/other/x",
        ] {
            let version = store
                .create(key, key.as_bytes().to_vec())
                .await
                .expect("create");
            written.insert(key.to_string(), version);
        }
        let keys = |entries: &[(String, tessera_topology::Versioned)]| -> Vec<String> {
            entries.iter().map(|(key, _)| key.clone()).collect()
        };

        let children = store.list("/list/a/").await.expect("list");
        assert_eq!(keys(&children), ["/list/a/0", "/list/a/1"]);
        for (key, versioned) in &children {
            assert_eq!(versioned.version, written[key]);
            assert_eq!(versioned.value, key.as_bytes());
        }
        assert_eq!(
            keys(&store.list("/list/a").await.unwrap()),
            ["/list/a/0", "/list/a/1", "/list/ab"],
            "prefixes match byte-wise"
        );
        assert_eq!(
            keys(&store.list("/list/").await.unwrap()),
            [
                "/list/a/0",
                "/list/a/1",
                "/list/ab",
                "/list/b/1",
                "/list/b/2"
            ]
        );
        assert!(store.list("/nothing/").await.unwrap().is_empty());
        assert_eq!(store.list("/").await.unwrap().len(), 6);
    }

    /// Goal: compare-and-set never loses an update: many tasks CAS-increment one counter, and the
    /// final value equals the number of updates the store acknowledged.
    pub async fn concurrent_updates_conflict_safely(fixture: Fixture) {
        const TASKS: usize = 8;
        const ATTEMPTS: usize = 12;
        let key = "/counter";
        fixture
            .store
            .create(key, b"0".to_vec())
            .await
            .expect("create counter");
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let store = fixture.other_client().await;
            tasks.push(tokio::spawn(async move {
                let (mut successes, mut conflicts) = (0usize, 0usize);
                for _ in 0..ATTEMPTS {
                    let current = store.get(key).await.expect("get");
                    let value: u64 = text(&current.value).parse().expect("counter value");
                    match store
                        .update(
                            key,
                            (value + 1).to_string().into_bytes(),
                            Some(current.version),
                        )
                        .await
                    {
                        Ok(version) => {
                            assert!(version > current.version);
                            successes += 1;
                        }
                        Err(TopoError::BadVersion {
                            expected, actual, ..
                        }) => {
                            assert_eq!(expected, current.version);
                            assert!(actual > expected, "a conflict means someone wrote later");
                            conflicts += 1;
                        }
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
                (successes, conflicts)
            }));
        }
        let (mut successes, mut conflicts) = (0, 0);
        for task in tasks {
            let (task_successes, task_conflicts) = task.await.expect("task");
            successes += task_successes;
            conflicts += task_conflicts;
        }
        let final_value: usize = text(&fixture.store.get(key).await.unwrap().value)
            .parse()
            .unwrap();
        assert_eq!(final_value, successes, "{conflicts} conflicts");
        assert_eq!(successes + conflicts, TASKS * ATTEMPTS);
        assert!(
            successes >= ATTEMPTS,
            "at least one task's worth of progress"
        );
    }

    /// Goal: a watch starts with a snapshot of exactly its prefix, then delivers every change
    /// under the prefix — and nothing else — in commit (version) order.
    pub async fn watch_snapshot_then_ordered_events(fixture: Fixture) {
        const WRITERS: usize = 4;
        const WRITES: usize = 10;
        let store = &fixture.store;
        let pre_version = store.create("/w/pre", b"pre".to_vec()).await.unwrap();
        store.create("/wx/outside", b"x".to_vec()).await.unwrap();
        store.create("/elsewhere", b"x".to_vec()).await.unwrap();

        let mut stream = store.watch("/w/").await.expect("watch");
        match next_event(&mut stream).await {
            WatchEvent::Snapshot(entries) => {
                assert_eq!(
                    entries.len(),
                    1,
                    "snapshot must hold only the prefix: {entries:?}"
                );
                assert_eq!(entries[0].0, "/w/pre");
                assert_eq!(entries[0].1.version, pre_version);
            }
            other => panic!("first event must be a snapshot, got {other:?}"),
        }

        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let store = fixture.other_client().await;
            writers.push(tokio::spawn(async move {
                let key = format!("/w/k{writer}");
                let mut versions = Vec::new();
                for write in 0..WRITES {
                    let value = format!("{writer}:{write}").into_bytes();
                    versions.push((store.update(&key, value, None).await.expect("write"), write));
                    // Noise outside the prefix must not show up.
                    store
                        .update("/wx/outside", b"n".to_vec(), None)
                        .await
                        .expect("noise");
                }
                (key, versions)
            }));
        }
        let mut expected: BTreeMap<Version, (String, String)> = BTreeMap::new();
        for writer in writers {
            let (key, versions) = writer.await.expect("writer");
            for (version, write) in versions {
                let writer_index = &key["/w/k".len()..];
                expected.insert(version, (key.clone(), format!("{writer_index}:{write}")));
            }
        }
        store.delete("/w/pre", None).await.expect("delete");

        let mut received: Vec<(Version, String, String)> = Vec::new();
        while received.len() < WRITERS * WRITES {
            match next_event(&mut stream).await {
                WatchEvent::Put {
                    key,
                    value,
                    version,
                } => received.push((version, key, text(&value))),
                other => panic!("expected only puts before the delete, got {other:?}"),
            }
        }
        assert_eq!(
            next_event(&mut stream).await,
            WatchEvent::Delete {
                key: "/w/pre".into()
            }
        );
        let versions: Vec<Version> = received.iter().map(|(version, _, _)| *version).collect();
        assert!(
            versions.windows(2).all(|pair| pair[0] < pair[1]),
            "events out of commit order: {versions:?}"
        );
        let received: BTreeMap<Version, (String, String)> = received
            .into_iter()
            .map(|(version, key, value)| (version, (key, value)))
            .collect();
        assert_eq!(
            received, expected,
            "exactly the acknowledged writes, with their versions"
        );
    }

    /// Goal: a lock excludes: contenders from separate clients never overlap in the critical
    /// section, and every contender eventually gets its turn.
    pub async fn lock_exclusion(fixture: Fixture) {
        const CONTENDERS: usize = 4;
        const ROUNDS: usize = 3;
        let inside = Arc::new(AtomicUsize::new(0));
        let entries = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..CONTENDERS {
            let store = fixture.other_client().await;
            let inside = inside.clone();
            let entries = entries.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let guard = tokio::time::timeout(
                        Duration::from_secs(30),
                        store.lock("/tessera/locks/exclusion", Duration::from_secs(5)),
                    )
                    .await
                    .expect("lock not acquired within 30 s")
                    .expect("lock");
                    let before = inside.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(before, 0, "two holders inside the critical section");
                    entries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.expect("release");
                }
            }));
        }
        for task in tasks {
            task.await.expect("contender");
        }
        assert_eq!(entries.load(Ordering::SeqCst), CONTENDERS * ROUNDS);
    }

    /// Goal: a holder that keeps renewing keeps its lock well past one TTL; after it releases,
    /// the waiter gets the lock promptly.
    pub async fn lock_is_kept_while_renewed(fixture: Fixture) {
        let key = "/tessera/locks/renewed";
        // Two seconds leave slack for a loaded CI machine; the wait covers more than two TTLs.
        let ttl = Duration::from_secs(2);
        let holder = fixture.store.lock(key, ttl).await.expect("lock");
        let other = fixture.other_client().await;
        let stolen = tokio::time::timeout(Duration::from_millis(4500), other.lock(key, ttl)).await;
        assert!(
            stolen.is_err(),
            "lock taken while its holder was renewing it"
        );
        assert!(!holder.is_lost());

        holder.release().await.expect("release");
        let started = Instant::now();
        let guard = tokio::time::timeout(Duration::from_secs(5), other.lock(key, ttl))
            .await
            .expect("lock after release")
            .expect("lock");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "release was not prompt"
        );
        guard.release().await.unwrap();
    }

    /// Goal: dropping a guard releases the lock long before its lease would expire.
    pub async fn lock_released_when_guard_dropped(fixture: Fixture) {
        let key = "/tessera/locks/dropped";
        let ttl = Duration::from_secs(20);
        let holder = fixture.store.lock(key, ttl).await.expect("lock");
        drop(holder);
        let started = Instant::now();
        let other = fixture.other_client().await;
        let guard = tokio::time::timeout(Duration::from_secs(10), other.lock(key, ttl))
            .await
            .expect("a dropped guard must release its lock")
            .expect("lock");
        assert!(started.elapsed() < Duration::from_secs(10));
        guard.release().await.unwrap();
    }

    /// Goal: when the holder dies (stops renewing without releasing), the lock frees itself once
    /// the lease expires — and not before it was held for a while.
    pub async fn lock_expires_when_holder_stops_renewing(fixture: Fixture) {
        let key = "/tessera/locks/abandoned";
        let ttl = Duration::from_secs(1);
        let holder = fixture.store.lock(key, ttl).await.expect("lock");
        let started = Instant::now();
        holder.abandon();
        let other = fixture.other_client().await;
        let guard = tokio::time::timeout(Duration::from_secs(10), other.lock(key, ttl))
            .await
            .expect("an abandoned lock must expire within 10 s")
            .expect("lock");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "abandoning must not release; the lease should run out first (waited {waited:?})"
        );
        guard.release().await.unwrap();
    }

    /// Goal: the typed facade works end to end on this backend: keyspaces, shards and tablets
    /// round-trip, read-modify-write loses no concurrent update, and the watch sees typed keys.
    pub async fn typed_facade(fixture: Fixture) {
        let topology = Topology::new(fixture.store.clone());
        let mut keyspace = KeyspaceRecord::new("app");
        keyspace.tables.insert(
            "settings".into(),
            TableRecord {
                kind: TableKind::Reference,
                column: None,
                column_type: None,
                columns: vec!["key".into(), "value".into()],
            },
        );
        topology
            .create_keyspace(&keyspace)
            .await
            .expect("create keyspace");
        assert!(matches!(
            topology.create_keyspace(&keyspace).await,
            Err(TopoError::AlreadyExists { .. })
        ));
        assert!(matches!(
            topology
                .create_shard(&ShardRecord::new("nope", "-80"))
                .await,
            Err(TopoError::NotFound { .. })
        ));
        for name in ["80-", "-80"] {
            topology
                .create_shard(&ShardRecord::new("app", name))
                .await
                .expect("shard");
        }

        let keyspaces = topology.list_keyspaces().await.expect("list keyspaces");
        assert_eq!(
            keyspaces.len(),
            1,
            "shard keys must not be listed as keyspaces"
        );
        assert_eq!(keyspaces[0].0, keyspace);
        let shards = topology.list_shards("app").await.expect("list shards");
        let names: Vec<&str> = shards
            .iter()
            .map(|(shard, _)| shard.name.as_str())
            .collect();
        assert_eq!(names, ["-80", "80-"]);

        let (_, before) = topology.get_shard("app", "-80").await.unwrap();
        let (updated, after) = topology
            .update_shard("app", "-80", |shard| {
                shard.policy = "multi_zone(2)".into();
                shard.primary = Some("zone1-101".into());
                Ok::<(), TopoError>(())
            })
            .await
            .expect("update shard");
        assert!(after > before);
        assert_eq!(
            topology.get_shard("app", "-80").await.unwrap(),
            (updated, after)
        );

        // Concurrent read-modify-writes of one keyspace: each adds its own table; none is lost.
        let mut tasks = Vec::new();
        for index in 0..6 {
            let topology = Topology::new(fixture.other_client().await);
            tasks.push(tokio::spawn(async move {
                topology
                    .update_keyspace("app", |keyspace| {
                        keyspace.tables.insert(
                            format!("t{index}"),
                            TableRecord {
                                kind: TableKind::Sharded,
                                column: Some("tenant_id".into()),
                                column_type: Some("bigint".into()),
                                columns: vec!["tenant_id".into()],
                            },
                        );
                        Ok::<(), TopoError>(())
                    })
                    .await
                    .expect("update keyspace")
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let (keyspace, version) = topology.get_keyspace("app").await.unwrap();
        assert_eq!(
            keyspace.tables.len(),
            7,
            "a concurrent update was lost: {keyspace:?}"
        );

        // A refusing closure and an identity change both leave the record untouched.
        let refused: Result<_, TopoError> = topology
            .update_keyspace("app", |_| {
                Err(TopoError::InvalidArgument {
                    reason: "no".into(),
                })
            })
            .await;
        assert!(refused.is_err());
        let renamed = topology
            .update_keyspace("app", |keyspace| {
                keyspace.name = "other".into();
                Ok::<(), TopoError>(())
            })
            .await;
        assert!(
            matches!(renamed, Err(TopoError::InvalidArgument { .. })),
            "{renamed:?}"
        );
        assert_eq!(topology.get_keyspace("app").await.unwrap().1, version);
        assert!(matches!(
            topology.delete_keyspace("app").await,
            Err(TopoError::InvalidArgument { .. })
        ));

        let mut watch = topology.watch().await.expect("watch");
        match next_event(&mut watch).await {
            WatchEvent::Snapshot(entries) => {
                assert_eq!(entries.len(), 3, "keyspace and two shards: {entries:?}")
            }
            other => panic!("expected snapshot, got {other:?}"),
        }

        topology
            .register_tablet(&tablet("zone1", "zone1-101", 25432))
            .await
            .unwrap();
        topology
            .register_tablet(&tablet("zone1", "zone1-102", 25442))
            .await
            .unwrap();
        topology
            .register_tablet(&tablet("zone2", "zone2-201", 25452))
            .await
            .unwrap();
        topology
            .register_tablet(&tablet("zone1", "zone1-101", 26000))
            .await
            .unwrap();
        assert_eq!(topology.list_tablets(None).await.unwrap().len(), 3);
        let zone1 = topology.list_tablets(Some("zone1")).await.unwrap();
        let ids: Vec<&str> = zone1.iter().map(|(tablet, _)| tablet.id.as_str()).collect();
        assert_eq!(ids, ["zone1-101", "zone1-102"]);
        assert_eq!(
            zone1[0].0.postgres_port, 26000,
            "re-registration overwrites"
        );
        assert!(topology.remove_tablet("zone1", "zone1-102").await.unwrap());
        assert!(!topology.remove_tablet("zone1", "zone1-102").await.unwrap());
        assert!(matches!(
            topology.get_tablet("zone1", "zone1-102").await,
            Err(TopoError::NotFound { .. })
        ));

        let mut seen = Vec::new();
        while seen.len() < 5 {
            match next_event(&mut watch).await {
                WatchEvent::Put { key, .. } => seen.push(("put", paths::classify(&key))),
                WatchEvent::Delete { key } => seen.push(("delete", paths::classify(&key))),
                other => panic!("unexpected {other:?}"),
            }
        }
        let tablet_kind = |zone: &str, id: &str| KeyKind::Tablet {
            zone: zone.into(),
            id: id.into(),
        };
        assert_eq!(
            seen,
            [
                ("put", tablet_kind("zone1", "zone1-101")),
                ("put", tablet_kind("zone1", "zone1-102")),
                ("put", tablet_kind("zone2", "zone2-201")),
                ("put", tablet_kind("zone1", "zone1-101")),
                ("delete", tablet_kind("zone1", "zone1-102")),
            ]
        );
    }

    /// Goal: corrupt or mismatched records are reported as Corrupt naming the key (never a
    /// panic, never overwritten), while records with unknown extra fields are accepted.
    pub async fn corrupt_and_unknown_records(fixture: Fixture) {
        let store = &fixture.store;
        let topology = Topology::new(store.clone());
        let bad_key = paths::keyspace("bad").unwrap();
        store.create(&bad_key, b"{not json".to_vec()).await.unwrap();

        match topology.get_keyspace("bad").await {
            Err(TopoError::Corrupt { key, .. }) => assert_eq!(key, bad_key),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        match topology.list_keyspaces().await {
            Err(TopoError::Corrupt { key, .. }) => assert_eq!(key, bad_key),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        let update: Result<_, TopoError> = topology
            .update_keyspace("bad", |keyspace| {
                keyspace.sharding_column = "x".into();
                Ok(())
            })
            .await;
        assert!(matches!(update, Err(TopoError::Corrupt { .. })));
        assert_eq!(
            store.get(&bad_key).await.unwrap().value,
            b"{not json",
            "left untouched"
        );

        let mismatched = paths::shard("app", "-80").unwrap();
        store
            .create(&mismatched, br#"{"keyspace":"app","name":"80-"}"#.to_vec())
            .await
            .unwrap();
        assert!(matches!(
            topology.get_shard("app", "-80").await,
            Err(TopoError::Corrupt { .. })
        ));

        let newer = paths::tablet("zone9", "zone9-1").unwrap();
        store
            .create(
                &newer,
                br#"{"id":"zone9-1","zone":"zone9","keyspace":"app","shard":"-80","host":"h",
                     "postgres_port":1,"pooler_port":2,"grpc_port":3,"role_hint":"primary",
                     "labels":{"rack":"r1"}}"#
                    .to_vec(),
            )
            .await
            .unwrap();
        let (record, _) = topology
            .get_tablet("zone9", "zone9-1")
            .await
            .expect("unknown fields tolerated");
        assert_eq!(record.grpc_port, 3);
        assert_eq!(
            record.data_dir, "",
            "missing optional field takes its default"
        );
    }
}

/// Instantiates every conformance case for one backend.
macro_rules! conformance {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            /// Goal: see cases::crud_semantics.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crud_semantics() {
                cases::crud_semantics(Fixture::new($backend).await).await
            }

            /// Goal: see cases::list_semantics.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn list_semantics() {
                cases::list_semantics(Fixture::new($backend).await).await
            }

            /// Goal: see cases::concurrent_updates_conflict_safely.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_updates_conflict_safely() {
                cases::concurrent_updates_conflict_safely(Fixture::new($backend).await).await
            }

            /// Goal: see cases::watch_snapshot_then_ordered_events.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_snapshot_then_ordered_events() {
                cases::watch_snapshot_then_ordered_events(Fixture::new($backend).await).await
            }

            /// Goal: see cases::lock_exclusion.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lock_exclusion() {
                cases::lock_exclusion(Fixture::new($backend).await).await
            }

            /// Goal: see cases::lock_is_kept_while_renewed.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lock_is_kept_while_renewed() {
                cases::lock_is_kept_while_renewed(Fixture::new($backend).await).await
            }

            /// Goal: see cases::lock_released_when_guard_dropped.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lock_released_when_guard_dropped() {
                cases::lock_released_when_guard_dropped(Fixture::new($backend).await).await
            }

            /// Goal: see cases::lock_expires_when_holder_stops_renewing.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lock_expires_when_holder_stops_renewing() {
                cases::lock_expires_when_holder_stops_renewing(Fixture::new($backend).await).await
            }

            /// Goal: see cases::typed_facade.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn typed_facade() {
                cases::typed_facade(Fixture::new($backend).await).await
            }

            /// Goal: see cases::corrupt_and_unknown_records.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn corrupt_and_unknown_records() {
                cases::corrupt_and_unknown_records(Fixture::new($backend).await).await
            }
        }
    };
}

conformance!(memory, Backend::Memory);
conformance!(file, Backend::File);
conformance!(remote, Backend::Remote);
conformance!(etcd, Backend::Etcd);
