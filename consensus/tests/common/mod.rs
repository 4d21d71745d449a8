//! Shared test support: the simulated cluster (tablet twin), the stateright model, the seeded
//! simulator, and the example cohorts the tests use.
#![allow(dead_code)]

pub mod cluster;
pub mod model;
pub mod scenario;
pub mod simulator;

use std::collections::BTreeSet;

use tessera_consensus::faults::Faults;
use tessera_consensus::{AtLeastN, Cohort, NodeId, NodeProperties, Policy, Ruleset};

use cluster::Config;

/// A node id from a literal.
pub fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("test ids are valid")
}

/// A node set from literals.
pub fn set(names: &[&str]) -> BTreeSet<NodeId> {
    names.iter().map(|name| node(name)).collect()
}

/// A cohort from (name, zone) literals.
pub fn cohort(members: &[(&str, &str)]) -> Cohort {
    members
        .iter()
        .map(|(name, zone)| (node(name), NodeProperties::in_zone(*zone)))
        .collect()
}

/// The series' six-node example cohort, N1..N6 (N1-N3 in zone z1, N4-N6 in zone z2).
pub fn series_cohort() -> Cohort {
    cohort(&[
        ("N1", "z1"),
        ("N2", "z1"),
        ("N3", "z1"),
        ("N4", "z2"),
        ("N5", "z2"),
        ("N6", "z2"),
    ])
}

/// The series' ruleset: only N1 and N4 are eligible; N1 needs N2 and N3; N4 needs N5 or N6.
pub fn series_ruleset() -> Ruleset {
    "explicit(N1: {N2, N3}; N4: {N5} | {N6})"
        .parse::<tessera_consensus::PolicySpec>()
        .expect("parses")
        .compile(&series_cohort())
        .expect("compiles")
}

/// The series' changed ruleset: N1 needs N2 or N3 (N4 unchanged).
pub fn series_ruleset_relaxed() -> Ruleset {
    "explicit(N1: {N2} | {N3}; N4: {N5} | {N6})"
        .parse::<tessera_consensus::PolicySpec>()
        .expect("parses")
        .compile(&series_cohort())
        .expect("compiles")
}

/// Three nodes in three zones.
pub fn three_cohort() -> Cohort {
    cohort(&[("n1", "z1"), ("n2", "z2"), ("n3", "z3")])
}

/// Three nodes, two coordinators; ruleset 0 is `at_least_n(3)`, ruleset 1 `at_least_n(2)`.
///
/// Why these two: the change weakens durability, so a coordinator still believing ruleset 0
/// would think one recruited node revokes everyone, which is exactly the stale-ruleset
/// mistake the invariants must rule out.
pub fn three_node_config(faults: Faults) -> Config {
    let members = three_cohort();
    model_config(
        Config::new(
            members.nodes().cloned().collect(),
            Vec::new(),
            vec![
                AtLeastN(3).compile(&members).expect("compiles"),
                AtLeastN(2).compile(&members).expect("compiles"),
            ],
            2,
        ),
        faults,
    )
}

/// Switches a configuration to the compact L1 behaviour (see `Config`'s fields).
pub fn model_config(mut config: Config, faults: Faults) -> Config {
    config.immediate_persistence = true;
    config.send_refusals = false;
    config.push_replication = false;
    config.pipeline_takeover = true;
    config.faults = faults;
    config
}

/// The series' six nodes and two coordinators; ruleset 0 is the example, ruleset 1 the relaxed
/// "N2 or N3" version.
pub fn six_node_config(faults: Faults) -> Config {
    let members = series_cohort();
    model_config(
        Config::new(
            members.nodes().cloned().collect(),
            Vec::new(),
            vec![series_ruleset(), series_ruleset_relaxed()],
            2,
        ),
        faults,
    )
}
