//! Property tests of the policy algebra over random cohorts and policies:
//! - each compiled ruleset means what its policy says (checked against an independent oracle);
//! - revocation holds if and only if the un-recruited complement satisfies no group;
//! - the minimal revocation sets are exactly the minimal revoking sets;
//! - the PostgreSQL `ANY k` compiler is never weaker than the rules, exact when it says so, and
//!   uses the smallest k that is not weaker;
//! - policy text round-trips exactly.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tessera_consensus::{
    ActiveRules, AtLeastN, Cohort, ExplicitGroups, Majority, MultiZone, NodeId, NodeProperties,
    Policy, PolicySpec, PostgresCompileError, Ruleset,
};

fn name(index: usize) -> NodeId {
    NodeId::new(format!("n{index}")).expect("valid")
}

/// A random cohort description: zone of each node.
fn cohort_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..3, 2..=7)
}

fn build_cohort(zones: &[u8]) -> Cohort {
    zones
        .iter()
        .enumerate()
        .map(|(index, zone)| (name(index), NodeProperties::in_zone(format!("z{zone}"))))
        .collect()
}

/// A random policy over `size` nodes, described by plain numbers so it can be shrunk.
#[derive(Clone, Debug)]
enum PolicyShape {
    AtLeastN(usize),
    MultiZone(usize),
    Majority,
    /// (primary, groups as lists of node indices)
    Explicit(Vec<(usize, Vec<Vec<usize>>)>),
}

fn policy_strategy() -> impl Strategy<Value = PolicyShape> {
    prop_oneof![
        (1usize..=4).prop_map(PolicyShape::AtLeastN),
        (1usize..=3).prop_map(PolicyShape::MultiZone),
        Just(PolicyShape::Majority),
        proptest::collection::vec(
            (
                0usize..7,
                proptest::collection::vec(proptest::collection::vec(0usize..7, 0..=3), 1..=3)
            ),
            1..=3
        )
        .prop_map(PolicyShape::Explicit),
    ]
}

/// Builds the policy for a cohort of `size` nodes; `None` if the shape does not fit.
fn build_policy(shape: &PolicyShape, size: usize) -> Option<PolicySpec> {
    Some(match shape {
        PolicyShape::AtLeastN(count) => PolicySpec::AtLeastN(AtLeastN(*count)),
        PolicyShape::MultiZone(count) => PolicySpec::MultiZone(MultiZone(*count)),
        PolicyShape::Majority => PolicySpec::Majority(Majority),
        PolicyShape::Explicit(primaries) => {
            let mut seen = BTreeSet::new();
            let mut built = Vec::new();
            for (primary, groups) in primaries {
                let primary = primary % size;
                if !seen.insert(primary) {
                    continue;
                }
                let groups = groups
                    .iter()
                    .map(|group| {
                        group
                            .iter()
                            .map(|member| member % size)
                            .filter(|member| *member != primary)
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .map(name)
                            .collect()
                    })
                    .collect();
                built.push((name(primary), groups));
            }
            PolicySpec::Explicit(ExplicitGroups::new(built).ok()?)
        }
    })
}

/// What the policy means, written independently of the compiler: does `leader` with
/// acknowledgements from `acknowledged` satisfy it?
fn oracle(
    policy: &PolicySpec,
    cohort: &Cohort,
    leader: &NodeId,
    acknowledged: &BTreeSet<NodeId>,
) -> bool {
    let mut holders: BTreeSet<&NodeId> = acknowledged
        .iter()
        .filter(|node| cohort.contains(node))
        .collect();
    holders.insert(leader);
    match policy {
        PolicySpec::AtLeastN(AtLeastN(count)) => holders.len() >= *count,
        PolicySpec::MultiZone(MultiZone(count)) => {
            let zones: BTreeSet<&str> = holders
                .iter()
                .filter_map(|node| cohort.properties(node))
                .map(|properties| properties.zone.as_str())
                .collect();
            zones.len() >= *count
        }
        PolicySpec::Majority(_) => holders.len() * 2 > cohort.len(),
        PolicySpec::Explicit(explicit) => explicit
            .primaries()
            .iter()
            .filter(|(primary, _)| primary == leader)
            .flat_map(|(_, groups)| groups)
            .any(|group| group.iter().all(|member| holders.contains(member))),
    }
}

fn subset(nodes: &[NodeId], mask: u32) -> BTreeSet<NodeId> {
    nodes
        .iter()
        .enumerate()
        .filter(|(position, _)| mask & (1 << position) != 0)
        .map(|(_, node)| node.clone())
        .collect()
}

fn compile(zones: &[u8], shape: &PolicyShape) -> Option<(Cohort, PolicySpec, Ruleset)> {
    let cohort = build_cohort(zones);
    let policy = build_policy(shape, zones.len())?;
    let ruleset = policy.compile(&cohort).ok()?;
    Some((cohort, policy, ruleset))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn compiled_rulesets_mean_what_the_policy_says(zones in cohort_strategy(), shape in policy_strategy()) {
        // Goal: for every eligible leader and every ack set, durability matches the policy text.
        let Some((cohort, policy, ruleset)) = compile(&zones, &shape) else { return Ok(()); };
        let nodes: Vec<NodeId> = cohort.nodes().cloned().collect();
        for leader in ruleset.eligible_primaries() {
            for mask in 0..(1u32 << nodes.len()) {
                let acknowledged = subset(&nodes, mask);
                prop_assert_eq!(
                    ruleset.is_durable(leader, &acknowledged),
                    oracle(&policy, &cohort, leader, &acknowledged),
                    "{} leader {} acks {:?}", policy, leader, acknowledged
                );
            }
        }
    }

    #[test]
    fn revocation_holds_iff_the_complement_satisfies_no_group(zones in cohort_strategy(), shape in policy_strategy()) {
        // Goal: recruited S revokes all exactly when no eligible P outside S completes a group outside S.
        let Some((cohort, _, ruleset)) = compile(&zones, &shape) else { return Ok(()); };
        let nodes: Vec<NodeId> = cohort.nodes().cloned().collect();
        for mask in 0..(1u32 << nodes.len()) {
            let recruited = subset(&nodes, mask);
            let complement = subset(&nodes, !mask);
            let complement_can_complete = ruleset
                .eligible_primaries()
                .any(|primary| complement.contains(primary) && ruleset.is_durable(primary, &complement));
            prop_assert_eq!(ruleset.revokes_all(&recruited), !complement_can_complete, "recruited {:?}", recruited);
        }
    }

    #[test]
    fn minimal_revocation_sets_are_exactly_the_minimal_revoking_sets(zones in cohort_strategy(), shape in policy_strategy()) {
        // Goal: every listed set revokes, none has a revoking proper subset, and every revoking set contains one.
        let Some((cohort, _, ruleset)) = compile(&zones, &shape) else { return Ok(()); };
        let minimal = ruleset.minimal_revocation_sets().expect("small cohort");
        let nodes: Vec<NodeId> = cohort.nodes().cloned().collect();
        for set in &minimal {
            prop_assert!(ruleset.revokes_all(set));
            for member in set {
                let mut smaller = set.clone();
                smaller.remove(member);
                prop_assert!(!ruleset.revokes_all(&smaller), "{:?} is not minimal", set);
            }
        }
        for mask in 0..(1u32 << nodes.len()) {
            let recruited = subset(&nodes, mask);
            if ruleset.revokes_all(&recruited) {
                prop_assert!(minimal.iter().any(|set| set.is_subset(&recruited)), "{:?} contains no listed set", recruited);
            }
        }
    }

    #[test]
    fn postgres_compiler_is_never_weaker_and_exact_when_it_says_so(
        zones in cohort_strategy(),
        shape in policy_strategy(),
        second in proptest::option::of(policy_strategy()),
    ) {
        // Goal: every ack set PostgreSQL accepts satisfies the rules (and vice versa if exact); k is minimal.
        let Some((cohort, _, ruleset)) = compile(&zones, &shape) else { return Ok(()); };
        let mut rules = ActiveRules::new(ruleset);
        if let Some(second) = second
            && let Some(policy) = build_policy(&second, zones.len())
            && let Ok(next) = policy.compile(&cohort)
        {
            rules.push(next);
        }
        let nodes: Vec<NodeId> = cohort.nodes().cloned().collect();
        for leader in &nodes {
            let compiled = match rules.to_postgres(leader) {
                Ok(compiled) => compiled,
                Err(PostgresCompileError::NotEligible { .. }) => {
                    prop_assert!(!rules.is_eligible(leader));
                    continue;
                }
                Err(other) => return Err(TestCaseError::fail(other.to_string())),
            };
            let standbys: Vec<NodeId> = nodes.iter().filter(|node| *node != leader).cloned().collect();
            let mut weaker_by_one_fails = compiled.quorum() == 0;
            for mask in 0..(1u32 << standbys.len()) {
                let acknowledged = subset(&standbys, mask);
                let postgres = compiled.is_satisfied_by(&acknowledged);
                let durable = rules.is_durable(leader, &acknowledged);
                prop_assert!(!postgres || durable, "{} accepts {:?} which the rules reject", compiled, acknowledged);
                if compiled.is_exact() {
                    prop_assert_eq!(postgres, durable, "{} claims exactness", compiled);
                }
                let named = compiled.standbys().iter().filter(|standby| acknowledged.contains(standby)).count();
                if named + 1 == compiled.quorum() && !durable {
                    weaker_by_one_fails = true;
                }
            }
            prop_assert!(weaker_by_one_fails, "ANY {} would also be safe for {}", compiled.quorum().saturating_sub(1), compiled);
        }
    }

    #[test]
    fn compiling_for_attached_standbys_is_never_weaker(
        zones in cohort_strategy(),
        shape in policy_strategy(),
        attached_mask in any::<u32>(),
    ) {
        // Goal: with only some standbys attached, the result is still never weaker, or a typed error.
        let Some((cohort, _, ruleset)) = compile(&zones, &shape) else { return Ok(()); };
        let nodes: Vec<NodeId> = cohort.nodes().cloned().collect();
        for leader in ruleset.eligible_primaries() {
            let standbys: Vec<NodeId> = nodes.iter().filter(|node| *node != leader).cloned().collect();
            let attached = subset(&standbys, attached_mask);
            match ruleset.to_postgres_with_standbys(leader, &attached) {
                Ok(compiled) => {
                    prop_assert!(compiled.standbys().iter().all(|standby| attached.contains(standby)));
                    for mask in 0..(1u32 << standbys.len()) {
                        let acknowledged = subset(&standbys, mask);
                        prop_assert!(!compiled.is_satisfied_by(&acknowledged) || ruleset.is_durable(leader, &acknowledged));
                    }
                }
                Err(PostgresCompileError::NoGroupOfStandbys { .. }) => {
                    prop_assert!(!ruleset.is_durable(leader, &attached), "a group was reachable");
                }
                Err(other) => return Err(TestCaseError::fail(other.to_string())),
            }
        }
    }

    #[test]
    fn policy_text_round_trips_exactly(zones in cohort_strategy(), shape in policy_strategy()) {
        // Goal: Display then FromStr gives the same policy, and printing it again gives the same text.
        let Some(policy) = build_policy(&shape, zones.len()) else { return Ok(()); };
        let text = policy.to_string();
        let parsed: PolicySpec = text.parse().map_err(|error| TestCaseError::fail(format!("{text}: {error}")))?;
        prop_assert_eq!(&parsed, &policy);
        prop_assert_eq!(parsed.to_string(), text);
    }
}
