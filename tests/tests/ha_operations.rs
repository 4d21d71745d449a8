//! L3 tests of operator-driven and racing leadership changes on real PostgreSQL: planned
//! switchover under load, two agents failing over one shard at the same moment, and a
//! durability policy that cannot be satisfied while a zone is down. An in-process cluster
//! (one shard, three tablets in three zones) runs a write workload through the gate; every
//! acknowledged write is checked on every copy afterwards.
//!
//! The tests of this file run one at a time (see `ha_failover.rs`).

use std::time::{Duration, Instant};

use tessera_coordinator::analysis::{Problem, analyse};
use tessera_coordinator::change::{self, ChangeSpec, Timeouts};
use tessera_coordinator::client::Clients;
use tessera_coordinator::operations;
use tessera_proto::tablet::{ChangeRulesRequest, RecruitRequest, Stamp, recruit_response};
use tessera_tests::ha::{HaCluster, SETTLE_TIMEOUT, serving_primary};
use tessera_tests::workload::{Workload, WorkloadOptions, create_table};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Drain bound of a planned switchover (what `tessera switchover` defaults to).
const DRAIN: Duration = Duration::from_secs(2);

async fn start_workload(cluster: &HaCluster, table: &str, options: WorkloadOptions) -> Workload {
    let gate = cluster.test.client().await;
    create_table(&gate, table)
        .await
        .expect("create the workload table");
    let workload = Workload::start(&cluster.test.url(), options, 1);
    let ready = workload.wait_for_more(40, Duration::from_secs(30)).await;
    cluster.watch.check("writes before the change", ready).await;
    workload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchovers_under_load_show_clients_no_error_and_lose_nothing() {
    // Goal: a switchover to the best other tablet, then one back to the first primary with
    // `--to`, while writers run through the gate: no client sees any error (the gate buffers
    // while the shard changes primaries), every acknowledged write is on every copy once.
    let _serial = SERIAL.lock().await;
    let cluster = HaCluster::start(|_| {}).await;
    let before = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    let workload = start_workload(&cluster, "switchover", WorkloadOptions::new("switchover")).await;
    let topology = &cluster.test.cluster.topology;
    let (keyspace, shard) = (&cluster.watch.keyspace, &cluster.watch.shard);

    let first_started = Instant::now();
    let first = operations::switchover(topology, keyspace, shard, None, DRAIN).await;
    let (first, first_took) = cluster
        .watch
        .check("the first switchover", first.map_err(|e| e.to_string()))
        .await;
    let first_ended = Instant::now();
    cluster
        .watch
        .check(
            "writes after it",
            workload.wait_for_more(20, Duration::from_secs(30)).await,
        )
        .await;
    cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;

    let second_started = Instant::now();
    let second =
        operations::switchover(topology, keyspace, shard, Some(&before.primary), DRAIN).await;
    let (second, second_took) = cluster
        .watch
        .check("the switchover back", second.map_err(|e| e.to_string()))
        .await;
    let second_ended = Instant::now();
    cluster
        .watch
        .check(
            "writes after it",
            workload.wait_for_more(20, Duration::from_secs(30)).await,
        )
        .await;
    let history = workload.stop().await;

    assert_ne!(
        first.leader, before.primary,
        "the first switchover kept the primary"
    );
    assert_eq!(
        second.leader, before.primary,
        "switchover --to {} went to {}",
        before.primary, second.leader
    );
    assert!(
        before.term < first.term && first.term < second.term,
        "terms {} -> {} -> {}",
        before.term,
        first.term,
        second.term
    );
    let errors = history.client_errors();
    if !errors.is_empty() {
        cluster
            .watch
            .fail(&format!(
                "clients saw {} errors during planned switchovers: {errors:?}",
                errors.len()
            ))
            .await;
    }
    let settled = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    assert_eq!(settled.primary, before.primary);
    cluster.watch.verify(&history, &settled).await;
    eprintln!(
        "switchover: {} -> {} took {first_took:?} (longest write gap {:?}); back took {second_took:?} (gap {:?}); {}",
        before.primary,
        first.leader,
        history.longest_gap(first_started, first_ended),
        history.longest_gap(second_started, second_ended),
        history.summary()
    );
    cluster.stop().await;
}

/// How a race round is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Race {
    /// Both agents run a whole failover at once; `b_first` decides whose requests go out first.
    Full { b_first: bool },
    /// Agent B recruits one standby into the term and dies; agent A then runs the failover.
    BDiesAfterOneRecruit,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_failing_over_the_same_shard_at_once_elect_exactly_one_leader() {
    // Goal: two agents fail over the same shard for the same new term (same view, tablets
    // asked in opposite orders), and in a last round one agent holds a standby in the term and
    // dies: exactly one agent wins the term, the shard settles with every tablet following the
    // winner's leader in one term, and no acknowledged write is lost.
    let _serial = SERIAL.lock().await;
    let cluster = HaCluster::start(|_| {}).await;
    let workload = start_workload(
        &cluster,
        "race",
        WorkloadOptions {
            attempt_timeout: Duration::from_secs(5),
            ..WorkloadOptions::new("race")
        },
    )
    .await;
    let topology = &cluster.test.cluster.topology;
    let (keyspace, shard) = (&cluster.watch.keyspace, &cluster.watch.shard);
    let mut outcomes = Vec::new();
    let rounds = [
        Race::Full { b_first: false },
        Race::Full { b_first: true },
        Race::BDiesAfterOneRecruit,
    ];
    for (round, race) in rounds.into_iter().enumerate() {
        let before = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
        let clients = (Clients::default(), Clients::default());
        let view = operations::snapshot(&clients.0, topology, keyspace, shard).await;
        let view = cluster
            .watch
            .check("a snapshot of the shard", view.map_err(|e| e.to_string()))
            .await;
        let spec = ChangeSpec {
            keyspace: keyspace.clone(),
            shard: shard.clone(),
            policy: view.record.policy.clone(),
            believed_primary: Some(before.primary.clone()),
            tablets: view.tablets.clone(),
            new_policy: None,
            candidate: None,
            min_term: view.highest_term(),
        };
        let mut reversed = spec.clone();
        reversed.tablets.reverse();
        let agents = (
            tessera_coordinator::agent_id("racer-a"),
            tessera_coordinator::agent_id("racer-b"),
        );
        let timeouts = Timeouts::default();
        let term = before.term + 1;
        let (a, b) = match race {
            Race::Full { b_first: false } => tokio::join!(
                change::run(&agents.0, &clients.0, Some(topology), spec, &timeouts),
                change::run(&agents.1, &clients.1, Some(topology), reversed, &timeouts),
            ),
            Race::Full { b_first: true } => {
                let (b, a) = tokio::join!(
                    change::run(&agents.1, &clients.1, Some(topology), reversed, &timeouts),
                    change::run(&agents.0, &clients.0, Some(topology), spec, &timeouts),
                );
                (a, b)
            }
            Race::BDiesAfterOneRecruit => {
                let held = before.replicas.last().expect("a standby").clone();
                let record = view
                    .tablet(&held)
                    .expect("the standby's record")
                    .record
                    .clone();
                let mut client = clients.1.get(&record).expect("a client of the standby");
                let stamp = Stamp {
                    term,
                    agent: agents.1.as_str().to_string(),
                };
                let joined = client.recruit(RecruitRequest { stamp: Some(stamp) }).await;
                let joined = joined
                    .map(|r| r.into_inner().outcome)
                    .map_err(|e| e.to_string());
                if !matches!(joined, Ok(Some(recruit_response::Outcome::Log(_)))) {
                    cluster
                        .watch
                        .fail(&format!("agent B could not recruit {held}: {joined:?}"))
                        .await;
                }
                let a = change::run(&agents.0, &clients.0, Some(topology), spec, &timeouts).await;
                (
                    a,
                    Err(change::ChangeError::Step(format!(
                        "recruited {held} into term {term}, then died"
                    ))),
                )
            }
        };
        let (winner, agent, loser) = match (a, b) {
            (Ok(winner), Err(error)) => (winner, &agents.0, error.to_string()),
            (Err(error), Ok(winner)) => (winner, &agents.1, error.to_string()),
            (Ok(a), Ok(b)) => {
                cluster
                    .watch
                    .fail(&format!(
                        "round {round} ({race:?}): both agents won: {a:?} and {b:?}"
                    ))
                    .await
            }
            (Err(a), Err(b)) => {
                cluster
                    .watch
                    .fail(&format!(
                        "round {round} ({race:?}): neither agent won: {a}; {b}"
                    ))
                    .await
            }
        };
        assert_eq!(
            winner.term, term,
            "round {round} ({race:?}): the race was for term {term}"
        );
        // The shard settles under the winner's leader, every tablet in one term with it.
        let settled = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
        let view = cluster
            .watch
            .check("the shard after the race", cluster.watch.view().await)
            .await;
        let leader_agent = view
            .tablet(&settled.primary)
            .and_then(|t| t.status.as_ref())
            .map(|s| s.agent.clone())
            .unwrap_or_default();
        for tablet in &view.tablets {
            let status = tablet.status.as_ref().expect("settled tablets answer");
            if status.term != settled.term || status.agent != leader_agent {
                cluster
                    .watch
                    .fail(&format!(
                        "round {round} ({race:?}): {} is in term {} of {:?}, the leader {} in term {} of {leader_agent:?}",
                        tablet.record.id, status.term, status.agent, settled.primary, settled.term
                    ))
                    .await;
            }
        }
        // The shard settles under the winner's leader: in the winner's term, or in a later
        // one that keeps that leader when the loser held a tablet in the term (the node rules
        // let only a new term take it back).
        if race != Race::BDiesAfterOneRecruit
            && (settled.primary != winner.leader || settled.term < winner.term)
        {
            cluster
                .watch
                .fail(&format!(
                    "round {round} ({race:?}): {winner:?} won but the shard settled as {settled:?}"
                ))
                .await;
        }
        let more = workload.wait_for_more(20, Duration::from_secs(30)).await;
        cluster.watch.check("writes after the race", more).await;
        outcomes.push(format!(
            "round {round} ({race:?}): {agent} won term {} ({}); settled in term {} under {}; loser: {loser}",
            winner.term, winner.leader, settled.term, settled.primary
        ));
    }
    let history = workload.stop().await;
    let settled = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    cluster.watch.verify(&history, &settled).await;
    eprintln!("race:\n{}\n{}", outcomes.join("\n"), history.summary());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsatisfiable_policy_blocks_writes_until_the_missing_zone_returns() {
    // Goal: with one zone's tablet shut down, the shard's policy set to multi_zone(3) (every
    // write on all three zones) cannot be satisfied: no write is acknowledged meanwhile (a
    // write does not complete within a bounded time), the blockage is reported (commits
    // waiting on the primary / DurabilityBlocked), and writes resume under multi_zone(3) once
    // the zone is back; nothing acknowledged is lost.
    let _serial = SERIAL.lock().await;
    let cluster = HaCluster::start(|_| {}).await;
    let before = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    let workload = start_workload(
        &cluster,
        "policy",
        WorkloadOptions {
            attempt_timeout: Duration::from_secs(5),
            ..WorkloadOptions::new("policy")
        },
    )
    .await;
    let down = before.replicas.last().expect("a replica").clone();
    cluster.tablet(&down).shutdown().await;
    // Under at_least_n(2) the remaining standby is enough.
    let more = workload.wait_for_more(20, Duration::from_secs(30)).await;
    cluster
        .watch
        .check("writes with one zone down under at_least_n(2)", more)
        .await;

    let topology = &cluster.test.cluster.topology;
    topology
        .update_shard(&cluster.watch.keyspace, &cluster.watch.shard, |record| {
            record.policy = "multi_zone(3)".into();
            Ok::<(), tessera_topology::TopoError>(())
        })
        .await
        .expect("set the policy");
    let policy_set = Instant::now();

    // The situation is reported: the primary has commits waiting for standbys the policy
    // requires (DurabilityBlocked).
    let reported = cluster
        .watch
        .wait_for(
            "the blocked writes to be reported",
            Duration::from_secs(30),
            |view| {
                // Blocked under the new policy (a brief wait right after establishment, before
                // the standbys stream, is not the blockage this test is about).
                let problems = analyse(view);
                let changing = serving_primary(view)
                    .and_then(|t| t.status.as_ref())
                    .is_some_and(|s| {
                        s.policy == "multi_zone(3)" || s.pending_policy == "multi_zone(3)"
                    });
                if changing
                    && problems
                        .iter()
                        .any(|p| matches!(p, Problem::DurabilityBlocked { .. }))
                {
                    Ok(())
                } else {
                    Err(format!("problems: {problems:?}"))
                }
            },
        )
        .await;
    let reported_at = Instant::now();
    let primary = serving_primary(&reported)
        .map(|t| t.record.id.clone())
        .unwrap_or_default();
    // Bounded check: nothing is acknowledged for a while.
    let acknowledged = workload.acknowledged();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let blocked_acknowledged = workload.acknowledged() - acknowledged;

    // The zone returns. Its standby may stream (and unblock commits) before `start` returns,
    // so the blocked window ends when the restart begins.
    let returned_at = Instant::now();
    let restarted = cluster.tablet(&down).postgres().start().await;
    cluster
        .watch
        .check(
            "restarting the zone's PostgreSQL",
            restarted.map(|_| ()).map_err(|e| e.to_string()),
        )
        .await;
    let more = workload.wait_for_more(20, Duration::from_secs(60)).await;
    cluster
        .watch
        .check("writes once the zone is back", more)
        .await;
    let history = workload.stop().await;
    let settled = cluster.watch.wait_settled(&[], SETTLE_TIMEOUT).await;
    cluster.watch.verify(&history, &settled).await;

    assert_eq!(
        blocked_acknowledged, 0,
        "writes were acknowledged while multi_zone(3) could not be satisfied"
    );
    // No write that started once the blockage was reported was acknowledged before the zone
    // returned.
    let early: Vec<_> = history
        .acknowledged()
        .filter(|a| a.started > reported_at && a.ended < returned_at)
        .map(|a| a.id)
        .collect();
    assert!(early.is_empty(), "acknowledged while blocked: {early:?}");
    let leader = cluster.watch.tablet(&settled.primary).await;
    let running = leader
        .status
        .as_ref()
        .map(|s| s.policy.clone())
        .unwrap_or_default();
    assert_eq!(running, "multi_zone(3)", "the primary runs {running:?}");

    // Rule changes are decisions of the term's leader: a stale stamp, another agent's stamp
    // and a request to a standby are all refused, and nothing changes.
    let status = leader.status.clone().expect("the leader's status");
    let view = cluster
        .watch
        .check("the shard", cluster.watch.view().await)
        .await;
    let replica = view
        .tablets
        .iter()
        .find(|t| t.record.id != settled.primary)
        .expect("a standby");
    let clients = Clients::default();
    let weaker = |agent: &str, term: u64| ChangeRulesRequest {
        stamp: Some(Stamp {
            term,
            agent: agent.to_string(),
        }),
        ruleset: Some(tessera_proto::rules::to_wire(
            &change::compile("at_least_n(1)", &change::cohort_of(&view.tablets)).expect("compiles"),
            "at_least_n(1)",
        )),
    };
    let attempts = [
        (
            &leader.record,
            weaker(&status.agent, status.term - 1),
            "a stale term",
        ),
        (
            &leader.record,
            weaker("someone-else", status.term),
            "another agent",
        ),
        (
            &replica.record,
            weaker(&status.agent, status.term),
            "a standby",
        ),
    ];
    for (record, request, what) in attempts {
        let mut client = clients.get(record).expect("a client");
        let refused = client.change_rules(request).await;
        assert!(
            refused.is_err(),
            "a rule change with {what} was accepted: {refused:?}"
        );
    }
    let after = cluster.watch.tablet(&settled.primary).await;
    let after = after.status.expect("the leader's status");
    assert_eq!(
        (after.policy.as_str(), after.pending_policy.as_str()),
        ("multi_zone(3)", ""),
        "refused rule changes changed the rules"
    );
    eprintln!(
        "policy: {down} down; blockage reported on {primary} {:?} after the policy change; resumed; {}",
        reported_at.duration_since(policy_set),
        history.summary()
    );
    cluster.stop().await;
}
