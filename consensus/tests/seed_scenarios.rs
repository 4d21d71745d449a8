//! The series' example cohort as table-driven tests: six nodes N1..N6, only N1 and N4
//! eligible, N1 needs acks from both N2 and N3, N4 needs an ack from N5 or N6.
//!
//! The revocation and candidacy tables query the ruleset and the agent directly. The
//! discovery, three-coordinator race and ruleset-change scenarios run the real node, leader and
//! agent state machines through the simulated cluster, choosing which messages get through.

mod common;

use std::collections::BTreeSet;

use common::cluster::{AgentRef, Config, Entry, Msg, Payload};
use common::scenario::Scenario;
use common::{node, series_ruleset, series_ruleset_relaxed, set};
use tessera_consensus::faults::Faults;
use tessera_consensus::{
    AgentError, AgentId, ChangeRequest, Input, LeadershipChange, LogPosition, LogSummary,
    RecruitAnswer, Term, Unrevoked,
};

#[test]
fn which_recruited_sets_revoke_n1() {
    // Goal: N1 is revoked exactly when it, N2 or N3 is recruited (its only group is {N2, N3}).
    let ruleset = series_ruleset();
    let table: &[(&[&str], bool)] = &[
        (&[], false),
        (&["N1"], true),
        (&["N2"], true),
        (&["N3"], true),
        (&["N4", "N5", "N6"], false),
        (&["N2", "N3"], true),
        (&["N4"], false),
    ];
    for (recruited, expected) in table {
        assert_eq!(
            ruleset.revokes(&node("N1"), &set(recruited)),
            *expected,
            "recruiting {recruited:?}"
        );
    }
}

#[test]
fn which_recruited_sets_revoke_every_eligible_primary() {
    // Goal: revoking N1 is not enough; N4 must be recruited or both N5 and N6 must be.
    let ruleset = series_ruleset();
    let table: &[(&[&str], bool)] = &[
        (&["N2", "N4"], true),
        (&["N2", "N5"], false),
        (&["N2", "N5", "N6"], true),
        (&["N1", "N4"], true),
        (&["N3", "N6"], false),
        (&["N4", "N5", "N6"], false),
        (&["N1", "N2", "N3"], false),
    ];
    for (recruited, expected) in table {
        assert_eq!(
            ruleset.revokes_all(&set(recruited)),
            *expected,
            "recruiting {recruited:?}"
        );
    }
}

#[test]
fn which_recruited_sets_allow_candidacy_of_n4() {
    // Goal: N4 may lead only with itself and N5 or N6 recruited.
    let ruleset = series_ruleset();
    let table: &[(&[&str], bool)] = &[
        (&[], false),
        (&["N4"], false),
        (&["N4", "N5"], true),
        (&["N4", "N6"], true),
        (&["N5", "N6"], false),
        (&["N1", "N2", "N3", "N4"], false),
        (&["N4", "N5", "N6"], true),
    ];
    for (recruited, expected) in table {
        assert_eq!(
            ruleset.allows_candidacy(&node("N4"), &set(recruited)),
            *expected,
            "recruiting {recruited:?}"
        );
    }
}

fn agent() -> AgentId {
    AgentId::new("coordinator-7").expect("valid")
}

fn answer(name: &str) -> RecruitAnswer {
    RecruitAnswer {
        node: node(name),
        term: Term(7),
        agent: agent(),
        log: LogSummary {
            last: LogPosition::new(Term(5), 3),
            ruleset: Some(series_ruleset()),
            pending: Vec::new(),
        },
    }
}

#[test]
fn the_agent_decides_for_n4_only_when_revocation_and_candidacy_both_hold() {
    // Goal: the agent's decision for candidate N4 follows both tables at once.
    #[derive(Debug, PartialEq)]
    enum Decision {
        Proceed,
        NotRevoked(Vec<&'static str>),
        NoCandidate,
    }
    let table: &[(&[&str], Decision)] = &[
        (&["N3", "N4", "N5"], Decision::Proceed),
        (&["N1", "N4", "N6"], Decision::Proceed),
        (&["N2", "N5", "N6"], Decision::NoCandidate),
        (&["N4", "N5"], Decision::NotRevoked(vec!["N1"])),
        (&["N2", "N3", "N5"], Decision::NotRevoked(vec!["N4"])),
        (&["N5"], Decision::NotRevoked(vec!["N1", "N4"])),
    ];
    for (recruited, expected) in table {
        let (mut change, _) = LeadershipChange::start(ChangeRequest {
            agent: agent(),
            term: Term(7),
            nodes: ["N1", "N2", "N3", "N4", "N5", "N6"].map(node).to_vec(),
            believed_ruleset: series_ruleset(),
            believed_primary: Some(node("N1")),
            new_ruleset: None,
        });
        for name in *recruited {
            change.step(Input::Recruited(answer(name))).expect("answer");
        }
        let decision = match change.decide(&[node("N4")]) {
            Ok(_) => Decision::Proceed,
            Err(AgentError::RevocationIncomplete { unrevoked }) => Decision::NotRevoked(
                ["N1", "N4"]
                    .into_iter()
                    .filter(|name| unrevoked.iter().any(|u| u.primary == node(name)))
                    .collect(),
            ),
            Err(AgentError::NoCandidate { .. }) => Decision::NoCandidate,
            Err(other) => panic!("unexpected {other}"),
        };
        assert_eq!(&decision, expected, "recruiting {recruited:?}");
    }
}

// ----- scenarios on the simulated cluster -----

const A: u8 = 0;
const B: u8 = 1;
const C: u8 = 2;
const D: u8 = 3;
const E: u8 = 4;

fn request(term: u8, value: u8) -> (u8, Payload) {
    (term, Payload::Request(value))
}

fn establish(term: u8) -> (u8, Payload) {
    (term, Payload::Establish(0))
}

/// The series cohort with `coordinators` coordinators; ruleset 0 is "N2 and N3", ruleset 1 is
/// "N2 or N3".
fn series_scenario(coordinators: u8) -> Scenario {
    let names = ["N1", "N2", "N3", "N4", "N5", "N6"].map(node).to_vec();
    Scenario::new(Config::new(
        names,
        Vec::new(),
        vec![series_ruleset(), series_ruleset_relaxed()],
        coordinators,
    ))
}

/// Coordinator 0 establishes N1 as leader of term 5 with every message delivered.
fn n1_leads_term_5(scenario: &mut Scenario) {
    let n1 = scenario.index("N1");
    scenario.cluster.coordinators[0].believed_primary = Some(n1);
    scenario.act(common::cluster::Action::StartChange {
        coordinator: 0,
        term: 5,
        new_ruleset: None,
    });
    scenario.run(|_| true);
    let leading = scenario.cluster.nodes[n1 as usize].leader.as_ref();
    assert!(
        leading.is_some_and(|leading| leading.serving),
        "N1 leads term 5"
    );
}

/// Client requests on N1; only replication to `to` (and acks back) get through.
fn requests_on_n1(scenario: &mut Scenario, count: usize, to: &[&str]) {
    let n1 = scenario.index("N1");
    let followers: BTreeSet<u8> = to.iter().map(|name| scenario.index(name)).collect();
    for _ in 0..count {
        scenario.act(common::cluster::Action::ClientRequest(n1));
    }
    scenario.run(|message| match message {
        Msg::Replicate { to, .. } => followers.contains(to),
        Msg::Ack { .. } => true,
        _ => false,
    });
}

/// Coordinator `coordinator` runs a leadership change into `term`, reaching only `reach`;
/// `replicate_to` says which followers the new leader's log reaches, `acks` whether their
/// acknowledgements come back, `finish` whether the coordinator survives to delegate.
struct Attempt<'a> {
    coordinator: u8,
    term: u8,
    reach: &'a [&'a str],
    believed_primary: Option<&'a str>,
    replicate_to: &'a [&'a str],
    acks: bool,
    finish: bool,
}

fn attempt(scenario: &mut Scenario, attempt: Attempt<'_>) {
    let believed = attempt.believed_primary.map(|name| scenario.index(name));
    scenario.cluster.coordinators[attempt.coordinator as usize].believed_primary = believed;
    scenario.act(common::cluster::Action::StartChange {
        coordinator: attempt.coordinator,
        term: attempt.term,
        new_ruleset: None,
    });
    let reach: BTreeSet<u8> = attempt
        .reach
        .iter()
        .map(|name| scenario.index(name))
        .collect();
    let replicate_to: BTreeSet<u8> = attempt
        .replicate_to
        .iter()
        .map(|name| scenario.index(name))
        .collect();
    let coordinator = attempt.coordinator;
    scenario.run(|message| match message {
        Msg::Replicate { to, term, .. } => *term == attempt.term && replicate_to.contains(to),
        Msg::Ack { term, .. } => *term == attempt.term && attempt.acks,
        Msg::Observe { .. } => false,
        Msg::Established {
            coordinator: to, ..
        }
        | Msg::Delegate {
            coordinator: to, ..
        } => *to == coordinator && attempt.finish,
        other => {
            let node_end = other.to_node().or_else(|| other.sender().ok());
            let coordinator_end = other.to_coordinator().or_else(|| other.sender().err());
            coordinator_end == Some(coordinator)
                && node_end.is_some_and(|node| reach.contains(&node))
        }
    });
}

#[test]
fn discovery_honours_exactly_what_the_recruited_nodes_can_vouch_for() {
    // Goal: N1 has ABCD, N2 ABC, N3 AB; recruiting only N3 honours A,B; recruiting N2 honours A,B,C.
    let table: &[(&str, Vec<(u8, Payload)>)] = &[
        (
            "N3",
            vec![establish(5), request(5, A), request(5, B), establish(6)],
        ),
        (
            "N2",
            vec![
                establish(5),
                request(5, A),
                request(5, B),
                request(5, C),
                establish(6),
            ],
        ),
    ];
    for (recruited_from_n1_side, expected) in table {
        let mut scenario = series_scenario(2);
        n1_leads_term_5(&mut scenario);
        requests_on_n1(&mut scenario, 2, &["N2", "N3"]);
        requests_on_n1(&mut scenario, 1, &["N2"]);
        requests_on_n1(&mut scenario, 1, &[]);
        assert_eq!(
            scenario.entries("N1"),
            vec![
                establish(5),
                request(5, A),
                request(5, B),
                request(5, C),
                request(5, D)
            ]
        );
        assert_eq!(
            scenario.entries("N2"),
            vec![establish(5), request(5, A), request(5, B), request(5, C)]
        );
        assert_eq!(
            scenario.entries("N3"),
            vec![establish(5), request(5, A), request(5, B)]
        );
        attempt(
            &mut scenario,
            Attempt {
                coordinator: 1,
                term: 6,
                reach: &[recruited_from_n1_side, "N4", "N5"],
                believed_primary: Some("N1"),
                replicate_to: &["N5"],
                acks: true,
                finish: true,
            },
        );
        let plan = scenario.cluster.coordinators[1]
            .change
            .as_ref()
            .and_then(|change| change.plan().cloned())
            .expect("decided");
        assert_eq!(plan.candidate, node("N4"));
        assert_eq!(plan.source, node(recruited_from_n1_side));
        assert_eq!(
            &scenario.entries("N4"),
            expected,
            "recruiting {recruited_from_n1_side}"
        );
        let leading = scenario.cluster.nodes[scenario.index("N4") as usize]
            .leader
            .as_ref();
        assert!(
            leading.is_some_and(|leading| leading.serving),
            "N4 leads term 6"
        );
        assert!(
            !scenario.cluster.ghost.violations.any(),
            "{:?}",
            scenario.cluster.ghost.violations
        );
    }
}

/// The three-coordinator race: C6, C7 and C8 each fail part-way, leaving N1 with the longest
/// log (last term 7) and N5 with a shorter one whose last entry is from term 8.
fn three_failed_coordinators() -> Scenario {
    let mut scenario = series_scenario(5);
    n1_leads_term_5(&mut scenario);
    // A and B are durable; C, D, E were written by N1 alone.
    requests_on_n1(&mut scenario, 2, &["N2", "N3"]);
    requests_on_n1(&mut scenario, 3, &[]);
    // C6 revokes N1 through N2 and promotes N4, which writes E6 and then loses contact.
    attempt(
        &mut scenario,
        Attempt {
            coordinator: 1,
            term: 6,
            reach: &["N2", "N4", "N5"],
            believed_primary: Some("N1"),
            replicate_to: &[],
            acks: false,
            finish: false,
        },
    );
    assert_eq!(
        scenario.entries("N4"),
        vec![establish(5), request(5, A), request(5, B), establish(6)]
    );
    // C7 recruits N1's side plus N5 and N6, keeps N1's own suffix C D E and writes E7, which
    // reaches only N2 (never durable: N3 lacks it).
    attempt(
        &mut scenario,
        Attempt {
            coordinator: 2,
            term: 7,
            reach: &["N1", "N2", "N3", "N5", "N6"],
            believed_primary: Some("N1"),
            replicate_to: &["N2"],
            acks: false,
            finish: false,
        },
    );
    let n1_timeline = vec![
        establish(5),
        request(5, A),
        request(5, B),
        request(5, C),
        request(5, D),
        request(5, E),
        establish(7),
    ];
    assert_eq!(scenario.entries("N1"), n1_timeline);
    assert_eq!(scenario.entries("N2"), n1_timeline);
    // C8 revokes N1 through N3 and N4 by recruiting it; N4's E6 timeline is the newest it
    // sees; E8 becomes durable with N5's ack, then C8 dies before delegating.
    attempt(
        &mut scenario,
        Attempt {
            coordinator: 3,
            term: 8,
            reach: &["N3", "N4", "N5"],
            believed_primary: None,
            replicate_to: &["N5"],
            acks: true,
            finish: false,
        },
    );
    assert_eq!(
        scenario.entries("N5"),
        vec![
            establish(5),
            request(5, A),
            request(5, B),
            establish(6),
            establish(8)
        ]
    );
    scenario
}

fn c9(scenario: &mut Scenario) {
    attempt(
        scenario,
        Attempt {
            coordinator: 4,
            term: 9,
            reach: &["N1", "N2", "N3", "N5", "N6"],
            believed_primary: Some("N1"),
            replicate_to: &["N2", "N3", "N4", "N5", "N6"],
            acks: true,
            finish: true,
        },
    );
}

#[test]
fn three_coordinator_race_c9_chooses_the_newest_term_not_the_longest_log() {
    // Goal: after C6, C7, C8 fail part-way, C9 picks N5's term-8 timeline over N1's longer one.
    let mut scenario = three_failed_coordinators();
    c9(&mut scenario);
    let plan = scenario.cluster.coordinators[4]
        .change
        .as_ref()
        .and_then(|change| change.plan().cloned())
        .expect("C9 decided");
    assert_eq!(plan.source, node("N5"));
    assert_eq!(plan.timeline, LogPosition::new(Term(8), 5));
    assert_eq!(plan.candidate, node("N1"));
    let expected = vec![
        establish(5),
        request(5, A),
        request(5, B),
        establish(6),
        establish(8),
        establish(9),
    ];
    assert_eq!(
        scenario.entries("N1"),
        expected,
        "C, D, E and E7 are discarded"
    );
    assert_eq!(scenario.entries("N2"), expected);
    assert!(
        !scenario.cluster.ghost.violations.any(),
        "{:?}",
        scenario.cluster.ghost.violations
    );
}

#[test]
fn three_coordinator_race_with_longest_log_discovery_loses_a_durable_entry() {
    // Goal: the same race with the longest-log mistake picks N1's log and the invariants catch it.
    let mut scenario = three_failed_coordinators();
    scenario.config.faults = Faults {
        longest_log_wins: true,
        ..Faults::NONE
    };
    c9(&mut scenario);
    let plan = scenario.cluster.coordinators[4]
        .change
        .as_ref()
        .and_then(|change| change.plan().cloned())
        .expect("C9 decided");
    assert_eq!(
        plan.timeline,
        LogPosition::new(Term(7), 7),
        "the longest log"
    );
    assert!(
        scenario.cluster.ghost.violations.applied_diverged,
        "the durable E8 was overwritten: {:?}",
        scenario.cluster.ghost.violations
    );
}

#[test]
fn ruleset_change_from_both_to_either_needs_both_rulesets_while_in_flight() {
    // Goal: N1's change "N2 and N3" -> "N2 or N3" commits only with N3's ack too; then N2 suffices.
    let mut scenario = series_scenario(2);
    n1_leads_term_5(&mut scenario);
    let n1 = scenario.index("N1");
    scenario.act(common::cluster::Action::ProposeRules {
        node: n1,
        ruleset: 1,
    });
    requests_on_n1(&mut scenario, 0, &["N2"]);
    let committed = |scenario: &Scenario| {
        scenario.cluster.nodes[n1 as usize]
            .leader
            .as_ref()
            .map(|leading| leading.leader.committed_ruleset().clone())
    };
    assert_eq!(
        committed(&scenario),
        Some(series_ruleset()),
        "N2 alone is not enough"
    );
    let out = scenario.cluster.heartbeat(&scenario.config, n1);
    scenario.queue.extend(out);
    requests_on_n1(&mut scenario, 0, &["N3"]);
    assert_eq!(
        committed(&scenario),
        Some(series_ruleset_relaxed()),
        "committed with N3"
    );
    requests_on_n1(&mut scenario, 1, &["N2"]);
    assert_eq!(
        scenario.cluster.ghost.acknowledged,
        vec![(
            3,
            Entry {
                term: 5,
                payload: Payload::Request(A)
            }
        )],
        "under the new ruleset N2's ack alone makes a request durable"
    );
}

#[test]
fn coordinator_with_the_old_ruleset_must_still_revoke_under_the_new_one() {
    // Goal: a coordinator believing "N2 and N3" learns "N2 or N3" from N3 and cannot stop at N3.
    let mut scenario = series_scenario(2);
    n1_leads_term_5(&mut scenario);
    let n1 = scenario.index("N1");
    scenario.act(common::cluster::Action::ProposeRules {
        node: n1,
        ruleset: 1,
    });
    requests_on_n1(&mut scenario, 0, &["N2", "N3"]);
    // Request A is acknowledged with N2's ack only, as the new ruleset allows.
    requests_on_n1(&mut scenario, 1, &["N2"]);
    assert_eq!(scenario.cluster.ghost.acknowledged.len(), 1);
    // Coordinator 1 still believes ruleset 0 and first reaches only N3, N4 and N5. Under its
    // belief that would revoke N1; N3 reports the new ruleset, under which N1 could still
    // complete requests with N2.
    assert_eq!(scenario.cluster.coordinators[1].believed_ruleset, 0);
    scenario.act(common::cluster::Action::StartChange {
        coordinator: 1,
        term: 6,
        new_ruleset: None,
    });
    let (n2, reach): (u8, BTreeSet<u8>) = (
        scenario.index("N2"),
        ["N3", "N4", "N5"]
            .iter()
            .map(|name| scenario.index(name))
            .collect(),
    );
    let mut held = Vec::new();
    while let Some(message) = scenario.queue.pop_front() {
        match &message {
            Msg::Recruit { to, .. } if *to == n2 => held.push(message),
            Msg::Recruit { to, .. } if reach.contains(to) => {
                scenario.act(common::cluster::Action::Deliver(message))
            }
            Msg::Recruited { .. } => scenario.act(common::cluster::Action::Deliver(message)),
            _ => {}
        }
    }
    let change = scenario.cluster.coordinators[1]
        .change
        .as_ref()
        .expect("started");
    assert_eq!(
        change.revocation(),
        vec![Unrevoked {
            primary: node("N1"),
            ruleset: series_ruleset_relaxed()
        }],
        "N1 is still able to complete requests with N2"
    );
    assert!(change.plan().is_none(), "no decision yet");
    // Once N2 answers, N1 is revoked under both rulesets and N4 takes over with request A.
    scenario.queue.extend(held);
    scenario.run(|message| {
        !matches!(message, Msg::Replicate { from, .. } if *from == n1)
            && !matches!(message, Msg::Ack { to, .. } if *to == n1)
    });
    let n4 = scenario.index("N4");
    let leading = scenario.cluster.nodes[n4 as usize].leader.as_ref();
    assert!(
        leading.is_some_and(|leading| leading.serving && leading.agent == AgentRef::Coordinator(1))
    );
    assert!(scenario.log("N4").contains(&Entry {
        term: 5,
        payload: Payload::Request(A)
    }));
    assert!(
        !scenario.cluster.ghost.violations.any(),
        "{:?}",
        scenario.cluster.ghost.violations
    );
}

#[test]
fn coordinator_driven_change_establishes_under_both_rulesets() {
    // Goal: a coordinator switching to "N2 or N3" while changing leader needs N2 and N3 to establish.
    let mut scenario = series_scenario(2);
    n1_leads_term_5(&mut scenario);
    scenario.cluster.coordinators[1].believed_primary = Some(scenario.index("N1"));
    scenario.act(common::cluster::Action::StartChange {
        coordinator: 1,
        term: 6,
        new_ruleset: Some(1),
    });
    let n3 = scenario.index("N3");
    let mut establish_rules = None;
    let mut held = Vec::new();
    while let Some(message) = scenario.queue.pop_front() {
        if let Msg::Establish { rules, .. } = &message {
            establish_rules = Some(rules.clone());
        }
        match &message {
            // N3's acknowledgement of the establishment entry is held back.
            Msg::Ack { from, .. } if *from == n3 => held.push(message),
            _ => scenario.act(common::cluster::Action::Deliver(message)),
        }
    }
    assert_eq!(
        establish_rules,
        Some(vec![0, 1]),
        "both rulesets are required"
    );
    let n1 = scenario.index("N1");
    let leader = |scenario: &Scenario| {
        scenario.cluster.nodes[n1 as usize]
            .leader
            .as_ref()
            .map(|leading| (leading.leader.term(), leading.leader.is_established()))
    };
    assert_eq!(
        leader(&scenario),
        Some((Term(6), false)),
        "N2 alone does not establish"
    );
    scenario.queue.extend(held);
    scenario.run(|_| true);
    assert_eq!(leader(&scenario), Some((Term(6), true)));
    let committed = scenario.cluster.nodes[n1 as usize]
        .leader
        .as_ref()
        .map(|leading| leading.leader.committed_ruleset().clone());
    assert_eq!(committed, Some(series_ruleset_relaxed()));
    assert!(
        !scenario.cluster.ghost.violations.any(),
        "{:?}",
        scenario.cluster.ghost.violations
    );
}
