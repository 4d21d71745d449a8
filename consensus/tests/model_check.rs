//! L1: model checking the consensus core with stateright.
//!
//! Nodes, racing coordinators and a client run the real state machines over a lossy,
//! reordering network, with crashes that drop volatile state (leadership, promotion) and
//! recover persisted state (term, promise, log). Invariants, checked in every state:
//! at most one leader completes requests in a term; an acknowledged request is never lost or
//! reordered; applied prefixes never diverge; terms never decrease; no completion under a stale
//! ruleset. Each configuration is also required to reach an acknowledged request and a
//! completed later term, so the invariants cannot hold vacuously.
//!
//! The 3-node configurations are exhaustive (every interleaving within the bounds). The
//! six-node series example is bounded (depth-first to a depth and state budget). Larger
//! configurations run with `cargo test -p tessera-consensus --test model_check extended -- --ignored --nocapture`.
//! State counts and timings are recorded in docs/consensus.md.

mod common;

use std::time::{Duration, Instant};

use stateright::{Checker, Expectation, Model};
use tessera_consensus::faults::Faults;

use common::model::{Bounds, ClusterModel};

fn three_nodes(bounds: Bounds, default_policy_first: bool) -> ClusterModel {
    let mut config = common::three_node_config(Faults::NONE);
    if default_policy_first {
        // Tessera's default at_least_n(2) in force, at_least_n(3) as the alternative.
        config.rulesets.swap(0, 1);
    }
    ClusterModel {
        config,
        bounds,
        initial_leader: 0,
    }
}

fn bounds(terms: Vec<Vec<u8>>, requests: u8) -> Bounds {
    Bounds {
        terms,
        attempts_per_coordinator: 1,
        requests,
        crashes: 1,
        leader_rule_changes: Vec::new(),
        coordinator_rule_change: None,
        handoffs: 0,
    }
}

fn report<C: Checker<ClusterModel>>(name: &str, checker: &C, started: Instant) {
    println!(
        "{name}: {} states, {} unique, max depth {}, {:.1?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed()
    );
}

/// Checks every interleaving within the bounds. Depth-first: the same states as breadth-first
/// search, but only fingerprints and one path are kept in memory (the machine is shared).
fn exhaustive(name: &str, model: ClusterModel) {
    let started = Instant::now();
    let checker = model.checker().threads(2).spawn_dfs().join();
    report(name, &checker, started);
    checker.assert_properties();
}

/// Checks depth-first up to `depth` steps and about `states` states; every invariant must hold
/// in what was explored and every reachability goal must have been reached.
fn bounded(name: &str, model: ClusterModel, depth: usize, states: usize) {
    let started = Instant::now();
    let properties = model.properties();
    let checker = model
        .checker()
        .threads(2)
        .target_max_depth(depth)
        .target_state_count(states)
        .timeout(Duration::from_secs(1800))
        .spawn_dfs()
        .join();
    report(name, &checker, started);
    for property in properties {
        let found = checker.discovery(property.name);
        match property.expectation {
            Expectation::Always | Expectation::Eventually => {
                if let Some(path) = found {
                    panic!("{} violated:\n{path}", property.name);
                }
            }
            Expectation::Sometimes => {
                assert!(found.is_some(), "{} was never reached", property.name);
            }
        }
    }
}

#[test]
fn three_nodes_racing_coordinators_exhaustive() {
    // Goal: two coordinators racing (same term or a higher one) with a client and a crash keep every invariant.
    exhaustive(
        "3 nodes, at_least_n(3), coordinators at terms {2} and {2,3}, 1 request, 1 crash",
        three_nodes(bounds(vec![vec![2], vec![2, 3]], 1), false),
    );
}

#[test]
fn three_nodes_default_policy_same_term_race_exhaustive() {
    // Goal: under at_least_n(2), two coordinators contending for one term never both succeed.
    exhaustive(
        "3 nodes, at_least_n(2), coordinators both at term 2, 1 request, 1 crash",
        three_nodes(bounds(vec![vec![2], vec![2]], 1), true),
    );
}

#[test]
fn three_nodes_leader_rule_change_with_stale_coordinators_exhaustive() {
    // Goal: a leader relaxing at_least_n(3) to at_least_n(2) while coordinators still believe the old ruleset is safe.
    let mut limits = bounds(vec![vec![2], vec![2]], 0);
    limits.leader_rule_changes = vec![1];
    exhaustive(
        "3 nodes, leader changes at_least_n(3) -> at_least_n(2), stale coordinators at term 2, 1 crash",
        three_nodes(limits, false),
    );
}

#[test]
fn three_nodes_coordinator_rule_change_exhaustive() {
    // Goal: a coordinator switching rulesets while changing leadership races another one safely.
    let mut limits = bounds(vec![vec![2], vec![2, 3]], 0);
    limits.coordinator_rule_change = Some(1);
    exhaustive(
        "3 nodes, coordinators may switch at_least_n(3) -> at_least_n(2), terms {2} and {2,3}, 1 crash",
        three_nodes(limits, false),
    );
}

#[test]
fn three_nodes_planned_handoff_exhaustive() {
    // Goal: a planned hand-off racing coordinators for the next term never loses or forks anything.
    let mut limits = bounds(vec![vec![2], vec![2, 3]], 0);
    limits.handoffs = 1;
    exhaustive(
        "3 nodes, planned hand-off, coordinators at terms {2} and {2,3}, 1 crash",
        three_nodes(limits, false),
    );
}

#[test]
fn six_node_series_example_bounded() {
    // Goal: the series cohort (N1 needs N2+N3, N4 needs N5|N6) with racing coordinators, a client,
    // a crash and the leader relaxing "N2 and N3" to "N2 or N3" keeps every invariant within the bound.
    let mut limits = bounds(vec![vec![2], vec![2, 3]], 1);
    limits.leader_rule_changes = vec![1];
    bounded(
        "6 nodes (series example), terms {2} and {2,3}, 1 request, rule change, 1 crash",
        ClusterModel {
            config: common::six_node_config(Faults::NONE),
            bounds: limits,
            initial_leader: 0,
        },
        40,
        1_500_000,
    );
}

#[test]
#[ignore = "extended model checking; minutes of CPU"]
fn extended_three_nodes_default_policy_racing_coordinators() {
    // Goal: at_least_n(2) with coordinators at terms {2} and {2,3}, a request and a crash. This
    // space runs to tens of millions of states, so it is bounded by depth and a state budget.
    bounded(
        "extended (bounded): 3 nodes, at_least_n(2), terms {2} and {2,3}, 1 request, 1 crash",
        three_nodes(bounds(vec![vec![2], vec![2, 3]], 1), true),
        60,
        20_000_000,
    );
}

#[test]
#[ignore = "extended model checking; minutes of CPU"]
fn extended_three_nodes_two_requests() {
    // Goal: two client requests in the base race.
    exhaustive(
        "extended: 3 nodes, at_least_n(3), terms {2} and {2,3}, 2 requests, 1 crash",
        three_nodes(bounds(vec![vec![2], vec![2, 3]], 2), false),
    );
}

#[test]
#[ignore = "extended model checking; minutes of CPU"]
fn extended_three_nodes_leader_rule_change_successive_terms() {
    // Goal: the leader's rule change followed by two successive leadership changes (terms 2 then 3).
    let mut limits = bounds(vec![vec![2], vec![3]], 0);
    limits.leader_rule_changes = vec![1];
    limits.crashes = 0;
    exhaustive(
        "extended: 3 nodes, leader rule change, coordinators at terms 2 and 3",
        three_nodes(limits, false),
    );
}

#[test]
#[ignore = "extended model checking; minutes of CPU"]
fn extended_three_nodes_rule_change_and_handoff_with_requests() {
    // Goal: coordinator rule change and planned hand-off, each with a client request.
    let mut change = bounds(vec![vec![2], vec![2, 3]], 1);
    change.coordinator_rule_change = Some(1);
    exhaustive(
        "extended: 3 nodes, coordinator rule change, 1 request, 1 crash",
        three_nodes(change, false),
    );
    let mut handoff = bounds(vec![vec![2], vec![2, 3]], 1);
    handoff.handoffs = 1;
    exhaustive(
        "extended: 3 nodes, planned hand-off, 1 request, 1 crash",
        three_nodes(handoff, false),
    );
}
