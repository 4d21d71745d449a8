//! L3 failover tests on real PostgreSQL: an in-process cluster (one shard, three tablets in
//! three zones, policy `at_least_n(2)`, one coordinator per zone, a gate) under a write
//! workload through the gate. After each fault every acknowledged write must be present
//! exactly once on the new primary and on every standby, read straight from each PostgreSQL.
//!
//! The tests of this file run one at a time: each runs three PostgreSQL servers, and
//! failure detection works on timeouts that a starved machine would trip spuriously.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tessera_tests::ha::{
    HaCluster, SETTLE_TIMEOUT, Settled, log_lines_containing, signal_postgres,
};
use tessera_tests::workload::{History, Workload, WorkloadOptions, create_table};

/// Bound on a failover: detection, recruitment, promotion, establishment.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Acknowledged writes wanted before a fault, and after the new primary serves.
const WRITES_BEFORE: u64 = 40;
const WRITES_AFTER: u64 = 40;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates the workload table and starts writing through the gate.
async fn start_workload(cluster: &HaCluster, table: &str) -> Workload {
    let gate = cluster.test.client().await;
    create_table(&gate, table)
        .await
        .expect("create the workload table");
    let workload = Workload::start(&cluster.test.url(), WorkloadOptions::new(table), 1);
    let ready = workload
        .wait_for_more(WRITES_BEFORE, Duration::from_secs(30))
        .await;
    cluster.watch.check("writes before the fault", ready).await;
    workload
}

/// Waits for writes on the new primary, stops the workload, and checks the history against
/// every copy once the whole shard (old primary included) has settled.
async fn finish(cluster: &HaCluster, workload: Workload) -> (History, Settled) {
    let more = workload.wait_for_more(WRITES_AFTER, FAILOVER_TIMEOUT).await;
    cluster.watch.check("writes on the new primary", more).await;
    let history = workload.stop().await;
    let settled = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    cluster.watch.verify(&history, &settled).await;
    (history, settled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primarys_postgres_fails_over_without_losing_acknowledged_writes() {
    // Goal: after kill -9 of the primary's postmaster, another tablet becomes primary in a new
    // term and serves writes through the gate; the old primary rejoins as its standby; no
    // acknowledged write is lost or duplicated on any copy.
    let _serial = SERIAL.lock().await;
    let cluster = HaCluster::start(|_| {}).await;
    let before = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    let workload = start_workload(&cluster, "kill_postgres").await;

    let old = cluster.watch.tablet(&before.primary).await;
    let old_status = old.status.clone().expect("status of the primary");
    let killed_at = Instant::now();
    signal_postgres(old_status.postgres_pid, Signal::SIGKILL);

    let (primary, term) = cluster
        .watch
        .wait_for_primary(before.term, FAILOVER_TIMEOUT)
        .await;
    let new_primary_seen = Instant::now();
    if primary == before.primary {
        cluster
            .watch
            .fail(&format!(
                "the tablet whose PostgreSQL was killed ({primary}) leads again in term {term}: no failover to another tablet"
            ))
            .await;
    }
    let (history, after) = finish(&cluster, workload).await;
    assert!(
        after.term > before.term,
        "term {} -> {}",
        before.term,
        after.term
    );
    assert!(
        after.replicas.contains(&before.primary),
        "the old primary {} did not rejoin as a standby: {after:?}",
        before.primary
    );
    // Writes sent once the new primary served were acknowledged by its PostgreSQL.
    let new_port = cluster.tablet(&primary).config().postgres.port;
    let first = history.first_acknowledged_after(killed_at);
    let late: Vec<_> = history
        .acknowledged()
        .filter(|a| a.started > new_primary_seen && a.port() != Some(new_port))
        .collect();
    assert!(
        late.is_empty(),
        "writes acknowledged by another server than the new primary: {late:?}"
    );
    eprintln!(
        "kill -9: {} -> {primary} in term {term}; first acknowledgement {:?} after the kill; {}",
        before.primary,
        first.map(|a| a.ended.duration_since(killed_at)),
        history.summary()
    );
    cluster.stop().await;
}

/// Fails unless no write that started after `since` was acknowledged by the PostgreSQL on
/// `port` (the old primary's).
async fn assert_no_acknowledgement_from(
    cluster: &HaCluster,
    history: &History,
    port: u16,
    since: Instant,
    what: &str,
) {
    let accepted: Vec<String> = history
        .acknowledged()
        .filter(|a| a.port() == Some(port) && a.started > since)
        .map(|a| {
            format!(
                "write {} ({:?} after {what})",
                a.id,
                a.started.duration_since(since)
            )
        })
        .collect();
    if !accepted.is_empty() {
        cluster
            .watch
            .fail(&format!(
                "the old primary acknowledged writes sent after {what}: {accepted:?}"
            ))
            .await;
    }
}

/// Fails unless a write straight to `tablet`'s pooler is refused with the retryable fencing
/// error (SQLSTATE 57P03) naming a term of at least `term`.
async fn assert_pooler_refuses(cluster: &HaCluster, tablet: &str, table: &str, term: u64) {
    let pooler = cluster.tablet(tablet).config().pooler_port;
    let url = format!("postgres://postgres:postgres@127.0.0.1:{pooler}/app");
    let outcome = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
                .execute(
                    &*format!("INSERT INTO {table} (tenant_id, id, writer) VALUES (-2, -2, -2)"),
                    &[],
                )
                .await
                .map(|_| ())
        }
        Err(error) => Err(error),
    };
    let error = match outcome {
        Ok(()) => {
            cluster
                .watch
                .fail(&format!(
                    "the old primary {tablet} accepted a write through its pooler"
                ))
                .await
        }
        Err(error) => error,
    };
    let code = error.code().map(|c| c.code().to_string());
    let message = error
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| error.to_string());
    let names_term = (term..term + 10).any(|t| message.contains(&format!("term {t}")));
    if code.as_deref() != Some("57P03") || !names_term {
        cluster
            .watch
            .fail(&format!(
                "the old primary {tablet} refused a write with {code:?} {message:?}; wanted 57P03 naming term {term} or later"
            ))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_the_primarys_postgres_then_sigcont_never_lets_it_accept_writes_again() {
    // Goal: PostgreSQL of the primary frozen (SIGSTOP, whole process group) for longer than
    // failure detection is replaced by another tablet; once thawed it acknowledges no write
    // sent after the new term, its pooler refuses writes naming the new term, and it rejoins
    // as a standby of the new primary; no acknowledged write is lost.
    let _serial = SERIAL.lock().await;
    let cluster = HaCluster::start(|_| {}).await;
    let before = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    let workload = start_workload(&cluster, "sigstop").await;
    let old = cluster.watch.tablet(&before.primary).await;
    let pid = old.status.as_ref().map_or(0, |s| s.postgres_pid);
    let old_port = cluster.tablet(&before.primary).config().postgres.port;

    let stopped_at = Instant::now();
    signal_postgres(pid, Signal::SIGSTOP);
    let (primary, term) = cluster
        .watch
        .wait_for_primary(before.term, FAILOVER_TIMEOUT)
        .await;
    let new_term_seen = Instant::now();
    let failover_time = new_term_seen.duration_since(stopped_at);
    assert_ne!(primary, before.primary, "a frozen PostgreSQL cannot lead");
    let more = workload.wait_for_more(WRITES_AFTER, FAILOVER_TIMEOUT).await;
    cluster
        .watch
        .check(
            "writes on the new primary while the old one is frozen",
            more,
        )
        .await;
    // Frozen well past detection (the failover above took at least that long).
    let frozen_for = stopped_at.elapsed();
    signal_postgres(pid, Signal::SIGCONT);

    assert_pooler_refuses(&cluster, &before.primary, "sigstop", term).await;
    let (history, after) = finish(&cluster, workload).await;
    assert_no_acknowledgement_from(
        &cluster,
        &history,
        old_port,
        new_term_seen,
        "the new term was serving",
    )
    .await;
    assert!(
        after.replicas.contains(&before.primary),
        "the thawed primary {} did not rejoin as a standby: {after:?}",
        before.primary
    );
    eprintln!(
        "SIGSTOP: {} frozen for {frozen_for:?}; {primary} leads term {term} {failover_time:?} after the SIGSTOP; {}",
        before.primary,
        history.summary()
    );
    cluster.stop().await;
}

/// Plants a row only `tablet`'s PostgreSQL holds: committed locally without waiting for any
/// standby (possible only directly on PostgreSQL, never through Tessera). Its id (-1) is one
/// the workload never writes, so a copy that still holds it after the rejoin was not rewound.
async fn plant_local_only_row(cluster: &HaCluster, tablet: &str, table: &str) {
    let direct = cluster
        .watch
        .check(
            "connecting to the old primary",
            cluster.watch.direct(tablet).await,
        )
        .await;
    let planted = direct
        .batch_execute(&format!(
            "SET synchronous_commit = local; INSERT INTO {table} (tenant_id, id, writer) VALUES (-1, -1, -1)"
        ))
        .await;
    if let Err(error) = planted {
        cluster
            .watch
            .fail(&format!("planting a local-only row on {tablet}: {error}"))
            .await;
    }
}

/// Heals the old primary's proxy, then checks the outcome of a cut: nothing it acknowledged
/// after `cut_at`, and it rejoined as a standby through a rewind. Returns the writes' history.
async fn heal_and_check_rejoin(
    cluster: &HaCluster,
    workload: Workload,
    old_primary: &str,
    old_port: u16,
    cut_at: Instant,
    what: &str,
) -> History {
    cluster.proxies[old_primary].heal();
    let (history, after) = finish(cluster, workload).await;
    assert_no_acknowledgement_from(cluster, &history, old_port, cut_at, what).await;
    assert!(
        after.replicas.iter().any(|r| r == old_primary),
        "the old primary {old_primary} did not rejoin as a standby: {after:?}"
    );
    assert_rewound(cluster, old_primary).await;
    history
}

/// Fails unless a coordinator repointed `tablet` with a rewind (its WAL had diverged).
async fn assert_rewound(cluster: &HaCluster, tablet: &str) {
    let lines = log_lines_containing(&format!("tablet={tablet}"));
    let rewound = lines
        .iter()
        .any(|line| line.contains("repointed") && line.contains("rewound=true"));
    if !rewound {
        cluster
            .watch
            .fail(&format!(
                "{tablet} rejoined without a pg_rewind; its repoint log lines: {:?}",
                lines
                    .iter()
                    .filter(|l| l.contains("repoint"))
                    .collect::<Vec<_>>()
            ))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_primary_acknowledges_nothing_and_rejoins_by_rewind_after_the_partition() {
    // Goal: a primary cut off from the coordinators and the standbys (TCP proxies blackholed)
    // while the gate still sends it writes acknowledges none of them; another tablet takes
    // over; when the partition heals the old primary is fenced, its diverged WAL (a row
    // committed only locally) is rewound away, and it rejoins; nothing acknowledged is lost.
    let _serial = SERIAL.lock().await;
    let mut cluster = HaCluster::start(|_| {}).await;
    let before = cluster.put_behind_proxies().await;
    let workload = start_workload(&cluster, "partition").await;
    let old_port = cluster.tablet(&before.primary).config().postgres.port;

    let cut_at = Instant::now();
    cluster.proxies[&before.primary].cut();
    plant_local_only_row(&cluster, &before.primary, "partition").await;
    let (primary, term) = cluster
        .watch
        .wait_for_primary(before.term, FAILOVER_TIMEOUT)
        .await;
    assert_ne!(primary, before.primary, "a partitioned tablet cannot lead");
    let more = workload.wait_for_more(WRITES_AFTER, FAILOVER_TIMEOUT).await;
    cluster
        .watch
        .check("writes on the new primary during the partition", more)
        .await;
    // The isolated primary still believes it leads: it was never recruited.
    let isolated = cluster.watch.tablet(&before.primary).await;
    let isolated_term = isolated.status.as_ref().map_or(0, |s| s.term);
    assert!(
        isolated_term < term,
        "the isolated primary is in term {isolated_term}, the new one in {term}"
    );

    let history = heal_and_check_rejoin(
        &cluster,
        workload,
        &before.primary,
        old_port,
        cut_at,
        "the partition began",
    )
    .await;
    eprintln!(
        "partition: {} isolated; {primary} leads term {term}; {}",
        before.primary,
        history.summary()
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_with_unreplicated_commits_comes_back_after_failover_and_rejoins_by_rewind()
{
    // Goal: a primary whose standbys stopped receiving its WAL holds commits nobody else has
    // (blocked writes, a local-only row); its PostgreSQL is killed and the tablet is
    // unreachable during the failover; when it comes back, the coordinators rewind it onto
    // the new primary's timeline (the local-only commits disappear) and it streams again.
    let _serial = SERIAL.lock().await;
    let mut cluster = HaCluster::start(|_| {}).await;
    let before = cluster.put_behind_proxies().await;
    let workload = start_workload(&cluster, "comeback").await;
    let old_port = cluster.tablet(&before.primary).config().postgres.port;

    // Standbys lose the WAL stream: commits on the primary are local only and wait.
    let cut_at = Instant::now();
    cluster.proxies[&before.primary].postgres.cut();
    plant_local_only_row(&cluster, &before.primary, "comeback").await;
    let waiting = tessera_tests::ha::poll(Duration::from_secs(10), || async {
        let status = cluster
            .watch
            .tablet(&before.primary)
            .await
            .status
            .unwrap_or_default();
        if status.commits_waiting > 0 {
            Ok(())
        } else {
            Err(format!(
                "{} commits wait for standbys",
                status.commits_waiting
            ))
        }
    })
    .await;
    cluster
        .watch
        .check("writes blocked on the primary without standbys", waiting)
        .await;

    // The primary goes away: PostgreSQL killed, tablet unreachable for the coordinators.
    cluster.proxies[&before.primary].grpc.cut();
    let pid = cluster
        .tablet(&before.primary)
        .postgres()
        .pid()
        .unwrap_or(0);
    signal_postgres(pid, Signal::SIGKILL);
    let (primary, term) = cluster
        .watch
        .wait_for_primary(before.term, FAILOVER_TIMEOUT)
        .await;
    assert_ne!(primary, before.primary, "an unreachable tablet cannot lead");
    let more = workload.wait_for_more(WRITES_AFTER, FAILOVER_TIMEOUT).await;
    cluster.watch.check("writes on the new primary", more).await;

    // It comes back.
    let history = heal_and_check_rejoin(
        &cluster,
        workload,
        &before.primary,
        old_port,
        cut_at,
        "replication was cut",
    )
    .await;
    eprintln!(
        "comeback: {} came back; {primary} leads term {term}; {}",
        before.primary,
        history.summary()
    );
    cluster.stop().await;
}
