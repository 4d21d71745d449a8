//! L1 model checking of the consensus core with stateright.

mod common;

use std::time::Instant;

use stateright::{Checker, Model};
use tessera_consensus::faults::Faults;

use common::model::{Bounds, ClusterModel};

#[test]
fn three_nodes_two_coordinators_exhaustive() {
    // Goal: every interleaving of 3 nodes, 2 racing coordinators and a client keeps all invariants.
    let model = ClusterModel {
        config: common::three_node_config(Faults::NONE),
        bounds: Bounds {
            terms: vec![vec![2], vec![2, 3]],
            attempts_per_coordinator: 1,
            requests: 1,
            crashes: 1,
            leader_rule_changes: vec![],
            coordinator_rule_change: None,
            handoffs: 0,
        },
        initial_leader: 0,
    };
    let started = Instant::now();
    let seconds: u64 = std::env::var("MODEL_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3600);
    let checker = model.checker().threads(2).timeout(std::time::Duration::from_secs(seconds)).spawn_bfs().join();
    println!(
        "states: {} unique: {} depth: {} in {:?}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    checker.assert_properties();
}
