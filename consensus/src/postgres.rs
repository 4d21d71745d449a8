//! Compiles a leader's durability rules into PostgreSQL's `synchronous_standby_names`.
//!
//! PostgreSQL 15 can only wait for "any k of these standbys" (`ANY k (s1, s2, ...)`), and it
//! counts standbys only, never the primary itself. Our rules are a disjunction of groups (per
//! ruleset) and a conjunction across rulesets in flight. The compiler picks the smallest `k`
//! over the standbys that appear in some group such that *every* k of them complete the rules:
//!
//! ```text
//!   S  = standbys named by the (combined) groups
//!   τ  = size of the smallest set of S meeting every group (fewest nodes that block the rules)
//!   k  = |S| - τ + 1        any k nodes leave fewer than τ out, so they contain a whole group
//! ```
//!
//! The result is never weaker than the rules. It is `exact` when the rules' minimal groups are
//! precisely all k-subsets of S; otherwise it is strictly stronger, and says so.

use std::collections::BTreeSet;
use std::fmt;

use crate::ids::NodeId;
use crate::policy::MAX_GROUPS_PER_PRIMARY;
use crate::ruleset::{ActiveRules, Ruleset, minimize};
use crate::subsets::{IndexedNodes, MAX_ENUMERATED_NODES};

/// A compiled `synchronous_standby_names` value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SyncStandbyNames {
    /// Invariant: 0 only when `standbys` is empty; otherwise 1..=standbys.len().
    quorum: usize,
    /// Invariant: sorted and distinct.
    standbys: Vec<NodeId>,
    exact: bool,
}

impl SyncStandbyNames {
    /// How many of the standbys must acknowledge (0: the primary alone is enough).
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// The standbys PostgreSQL waits for, by `application_name`.
    pub fn standbys(&self) -> &[NodeId] {
        &self.standbys
    }

    /// `true` if PostgreSQL will accept exactly the acknowledgement sets the rules accept;
    /// `false` if it demands strictly more (never less).
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// Whether PostgreSQL would consider a commit durable with acknowledgements from
    /// `acknowledged`.
    pub fn is_satisfied_by(&self, acknowledged: &BTreeSet<NodeId>) -> bool {
        self.standbys
            .iter()
            .filter(|standby| acknowledged.contains(standby))
            .count()
            >= self.quorum
    }

    /// The value for `synchronous_standby_names`; empty means asynchronous commit is enough.
    pub fn setting(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SyncStandbyNames {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quorum == 0 {
            return Ok(());
        }
        write!(formatter, "ANY {} (", self.quorum)?;
        for (position, standby) in self.standbys.iter().enumerate() {
            if position > 0 {
                formatter.write_str(", ")?;
            }
            // Node ids never contain quotes (see `NodeId`), so plain double quotes suffice.
            write!(formatter, "\"{standby}\"")?;
        }
        formatter.write_str(")")
    }
}

/// Why no `ANY k` expression at least as strong as the rules exists.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostgresCompileError {
    /// The leader is not an eligible primary under one of the rulesets.
    #[error("{leader} is not an eligible primary under the ruleset {ruleset}")]
    NotEligible {
        /// The leader asked about.
        leader: NodeId,
        /// The ruleset it is not eligible under.
        ruleset: Ruleset,
    },
    /// Every group of the leader needs a node that is not one of its standbys, so PostgreSQL
    /// cannot be told to wait for any of them.
    #[error(
        "every durability group of {leader} under {ruleset} names a node that is not a standby"
    )]
    NoGroupOfStandbys {
        /// The leader asked about.
        leader: NodeId,
        /// The ruleset whose groups are all out of reach.
        ruleset: Ruleset,
    },
    /// Too many nodes or group combinations to analyse.
    #[error("the rules are too large to compile ({reason})")]
    TooLarge {
        /// What exceeded the limit.
        reason: String,
    },
}

impl Ruleset {
    /// Compiles `leader`'s rules, assuming every other cohort member is a standby.
    pub fn to_postgres(&self, leader: &NodeId) -> Result<SyncStandbyNames, PostgresCompileError> {
        compile(leader, std::slice::from_ref(self), None)
    }

    /// Compiles `leader`'s rules for the standbys actually attached to it; groups that name
    /// anything else cannot be waited for and are dropped (which only makes the result
    /// stronger, and then it is reported as not exact).
    pub fn to_postgres_with_standbys(
        &self,
        leader: &NodeId,
        standbys: &BTreeSet<NodeId>,
    ) -> Result<SyncStandbyNames, PostgresCompileError> {
        compile(leader, std::slice::from_ref(self), Some(standbys))
    }
}

impl ActiveRules {
    /// Compiles the conjunction of every ruleset in force or in flight for `leader`.
    pub fn to_postgres(&self, leader: &NodeId) -> Result<SyncStandbyNames, PostgresCompileError> {
        compile(leader, self.rulesets(), None)
    }

    /// As [`ActiveRules::to_postgres`], for the standbys actually attached to the leader.
    pub fn to_postgres_with_standbys(
        &self,
        leader: &NodeId,
        standbys: &BTreeSet<NodeId>,
    ) -> Result<SyncStandbyNames, PostgresCompileError> {
        compile(leader, self.rulesets(), Some(standbys))
    }
}

/// Minimal groups of the conjunction "one complete group from every ruleset".
fn combined_groups(
    leader: &NodeId,
    rulesets: &[Ruleset],
    standbys: Option<&BTreeSet<NodeId>>,
) -> Result<Vec<BTreeSet<NodeId>>, PostgresCompileError> {
    let mut family: Vec<BTreeSet<NodeId>> = vec![BTreeSet::new()];
    for ruleset in rulesets {
        if !ruleset.is_eligible(leader) {
            return Err(PostgresCompileError::NotEligible {
                leader: leader.clone(),
                ruleset: ruleset.clone(),
            });
        }
        let groups: Vec<&BTreeSet<NodeId>> = ruleset
            .groups(leader)
            .iter()
            .map(|group| group.members())
            .filter(|members| standbys.is_none_or(|standbys| members.is_subset(standbys)))
            .collect();
        if groups.is_empty() {
            return Err(PostgresCompileError::NoGroupOfStandbys {
                leader: leader.clone(),
                ruleset: ruleset.clone(),
            });
        }
        if family.len().saturating_mul(groups.len()) > MAX_GROUPS_PER_PRIMARY {
            return Err(PostgresCompileError::TooLarge {
                reason: format!("more than {MAX_GROUPS_PER_PRIMARY} combined groups"),
            });
        }
        let product = family
            .iter()
            .flat_map(|partial| {
                groups
                    .iter()
                    .map(move |group| partial.union(group).cloned().collect())
            })
            .collect();
        family = minimize(product);
    }
    Ok(family)
}

fn compile(
    leader: &NodeId,
    rulesets: &[Ruleset],
    standbys: Option<&BTreeSet<NodeId>>,
) -> Result<SyncStandbyNames, PostgresCompileError> {
    let family = combined_groups(leader, rulesets, standbys)?;
    // Exactness is judged against the rules themselves, before unreachable groups were dropped.
    let unrestricted = match standbys {
        Some(_) => combined_groups(leader, rulesets, None)?,
        None => family.clone(),
    };
    let nothing_dropped = unrestricted == family;

    if family.iter().any(BTreeSet::is_empty) {
        return Ok(SyncStandbyNames {
            quorum: 0,
            standbys: Vec::new(),
            exact: nothing_dropped,
        });
    }
    let named: BTreeSet<NodeId> = family.iter().flatten().cloned().collect();
    let indexed = IndexedNodes::new(named).ok_or_else(|| PostgresCompileError::TooLarge {
        reason: format!("more than {MAX_ENUMERATED_NODES} standbys named by the groups"),
    })?;
    let group_masks: Vec<u32> = family.iter().map(|group| indexed.mask_of(group)).collect();
    let blocking = indexed.min_hitting_set_size(&group_masks);
    let quorum = indexed.len() - blocking + 1;
    let all_quorum_sized = family.iter().all(|group| group.len() == quorum);
    let exact = nothing_dropped
        && all_quorum_sized
        && family.len() == binomial_exact(indexed.len(), quorum);
    Ok(SyncStandbyNames {
        quorum,
        standbys: indexed.nodes().to_vec(),
        exact,
    })
}

/// n choose k without overflow for the small sizes enumerated here (n <= 20).
fn binomial_exact(total: usize, chosen: usize) -> usize {
    if chosen > total {
        return 0;
    }
    (0..chosen).fold(1usize, |accumulated, step| {
        accumulated * (total - step) / (step + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AtLeastN, MultiZone, Policy};
    use crate::ruleset::tests::{cohort, node, series_example, set};

    #[test]
    fn at_least_two_of_three_waits_for_any_one_standby() {
        // Goal: PostgreSQL counts standbys only, so at_least_n(2) over 3 nodes is ANY 1 (others).
        let members = cohort(&[
            ("zone1-101", "zone1"),
            ("zone2-102", "zone2"),
            ("zone3-103", "zone3"),
        ]);
        let ruleset = AtLeastN(2).compile(&members).expect("compiles");
        let compiled = ruleset.to_postgres(&node("zone1-101")).expect("compiles");
        assert_eq!(compiled.setting(), r#"ANY 1 ("zone2-102", "zone3-103")"#);
        assert!(compiled.is_exact());
    }

    #[test]
    fn series_leader_n1_needs_both_standbys_exactly() {
        // Goal: "N2 and N3" compiles to ANY 2 over exactly those two.
        let compiled = series_example().to_postgres(&node("N1")).expect("compiles");
        assert_eq!(compiled.setting(), r#"ANY 2 ("N2", "N3")"#);
        assert!(compiled.is_exact());
        let compiled = series_example().to_postgres(&node("N4")).expect("compiles");
        assert_eq!(compiled.setting(), r#"ANY 1 ("N5", "N6")"#);
        assert!(compiled.is_exact());
    }

    #[test]
    fn uneven_groups_compile_to_something_strictly_stronger() {
        // Goal: "{b, c} or {d}" has no exact ANY k form; ANY 2 of b,c,d is flagged as stronger.
        let ruleset = Ruleset::new(
            cohort(&[("a", "z"), ("b", "z"), ("c", "z"), ("d", "z")]),
            [(node("a"), vec![set(&["b", "c"]), set(&["d"])])],
        )
        .expect("valid");
        let compiled = ruleset.to_postgres(&node("a")).expect("compiles");
        assert_eq!(compiled.setting(), r#"ANY 2 ("b", "c", "d")"#);
        assert!(!compiled.is_exact());
        assert!(
            !compiled.is_satisfied_by(&set(&["d"])),
            "stronger than the rules"
        );
        assert!(ruleset.is_durable(&node("a"), &set(&["d"])));
    }

    #[test]
    fn multi_zone_ignores_same_zone_standbys() {
        // Goal: a same-zone standby is never listed, since its ack never helps multi_zone(2).
        let members = cohort(&[("a1", "z1"), ("a2", "z1"), ("b1", "z2"), ("c1", "z3")]);
        let ruleset = MultiZone(2).compile(&members).expect("compiles");
        let compiled = ruleset.to_postgres(&node("a1")).expect("compiles");
        assert_eq!(compiled.setting(), r#"ANY 1 ("b1", "c1")"#);
        assert!(compiled.is_exact());
    }

    #[test]
    fn primary_alone_compiles_to_an_empty_setting() {
        // Goal: at_least_n(1) needs no standby, which PostgreSQL spells as an empty setting.
        let members = cohort(&[("a", "z"), ("b", "z")]);
        let compiled = AtLeastN(1)
            .compile(&members)
            .expect("compiles")
            .to_postgres(&node("a"))
            .expect("compiles");
        assert_eq!(compiled.setting(), "");
        assert_eq!(compiled.quorum(), 0);
        assert!(compiled.is_exact());
    }

    #[test]
    fn rules_in_flight_compile_to_their_conjunction() {
        // Goal: during "N2 and N3" -> "N2 or N3", the leader still waits for both.
        let old = series_example();
        let new = Ruleset::new(
            old.cohort().clone(),
            [
                (node("N1"), vec![set(&["N2"]), set(&["N3"])]),
                (node("N4"), vec![set(&["N5"]), set(&["N6"])]),
            ],
        )
        .expect("valid");
        let rules = ActiveRules::new(old).with(new.clone());
        assert_eq!(
            rules.to_postgres(&node("N1")).expect("compiles").setting(),
            r#"ANY 2 ("N2", "N3")"#
        );
        assert_eq!(
            new.to_postgres(&node("N1")).expect("compiles").setting(),
            r#"ANY 1 ("N2", "N3")"#
        );
    }

    #[test]
    fn missing_standbys_make_it_stronger_or_impossible() {
        // Goal: a group naming a non-standby is dropped (stronger); if none remain, a typed error.
        let ruleset = Ruleset::new(
            cohort(&[("a", "z"), ("b", "z"), ("c", "z")]),
            [(node("a"), vec![set(&["b"]), set(&["c"])])],
        )
        .expect("valid");
        let compiled = ruleset
            .to_postgres_with_standbys(&node("a"), &set(&["b"]))
            .expect("compiles");
        assert_eq!(compiled.setting(), r#"ANY 1 ("b")"#);
        assert!(!compiled.is_exact());
        let only_c = Ruleset::new(
            cohort(&[("a", "z"), ("b", "z"), ("c", "z")]),
            [(node("a"), vec![set(&["c"])])],
        )
        .expect("valid");
        assert!(matches!(
            only_c.to_postgres_with_standbys(&node("a"), &set(&["b"])),
            Err(PostgresCompileError::NoGroupOfStandbys { .. })
        ));
        assert!(matches!(
            series_example().to_postgres(&node("N2")),
            Err(PostgresCompileError::NotEligible { .. })
        ));
    }
}
