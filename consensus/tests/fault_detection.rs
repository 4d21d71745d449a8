//! The simulator must catch deliberate mistakes: each test re-introduces one classic bug into
//! the agents (through the test-only `Faults` switch) and asserts that some seed violates an
//! invariant. If a refactoring ever made the simulator blind to one of these, this fails.

mod common;

use common::simulator::{SimulationOptions, run_seed};
use tessera_consensus::faults::Faults;

/// Seeds searched per fault before giving up (each is found far sooner; see docs/consensus.md).
const SEARCH_SEEDS: u64 = 2000;

fn first_violation(faults: Faults) -> Option<(u64, Vec<&'static str>)> {
    (0..SEARCH_SEEDS).find_map(|seed| {
        let outcome = run_seed(
            seed,
            SimulationOptions {
                faults,
                ..SimulationOptions::default()
            },
        );
        (!outcome.violations.is_empty()).then_some((seed, outcome.violations))
    })
}

fn assert_caught(name: &str, faults: Faults) {
    let found = first_violation(faults);
    println!("{name}: first violating seed {found:?}");
    assert!(
        found.is_some(),
        "the simulator did not catch {name} in {SEARCH_SEEDS} seeds"
    );
}

#[test]
fn catches_majority_counting_instead_of_the_policy() {
    // Goal: judging revocation and candidacy by majority instead of the policy's groups is found.
    assert_caught(
        "majority counting",
        Faults {
            majority_quorums: true,
            ..Faults::NONE
        },
    );
}

#[test]
fn catches_revoking_only_the_believed_leader() {
    // Goal: revoking only the primary the coordinator believes in (not every eligible one) is found.
    assert_caught(
        "revoking only the believed leader",
        Faults {
            revoke_only_believed_primary: true,
            ..Faults::NONE
        },
    );
}

#[test]
fn catches_choosing_the_longest_log() {
    // Goal: discovery by longest log instead of newest last-entry term is found.
    assert_caught(
        "longest log wins",
        Faults {
            longest_log_wins: true,
            ..Faults::NONE
        },
    );
}
