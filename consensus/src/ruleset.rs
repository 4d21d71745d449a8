//! Cohorts, durability groups and rulesets: the algebra every safety decision is made with.
//!
//! A [`Ruleset`] says, for each eligible primary, which groups of other cohort nodes make a
//! write durable once they have all acknowledged it. Everything the agents need follows from
//! that one relation:
//!
//! ```text
//!   durable(leader, acks)       some group G of leader with G ⊆ acks
//!   revokes(primary, recruited) primary ∈ recruited, or every group G of primary meets recruited
//!   candidacy(c, recruited)     c ∈ recruited and some group G of c with G ⊆ recruited
//! ```
//!
//! The primary always holds its own writes, so groups never name their primary; recruiting the
//! primary itself revokes it because a recruited node stops acting in older terms.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::ids::NodeId;
use crate::subsets::{IndexedNodes, MAX_ENUMERATED_NODES};

/// Static properties of a node that policies may use.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeProperties {
    /// Failure domain (availability zone / cell) the node runs in.
    pub zone: String,
}

impl NodeProperties {
    /// Properties of a node in `zone`.
    pub fn in_zone(zone: impl Into<String>) -> Self {
        Self { zone: zone.into() }
    }
}

/// The nodes responsible for durability, with their static properties.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cohort {
    nodes: BTreeMap<NodeId, NodeProperties>,
}

impl Cohort {
    /// An empty cohort.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a node; builder style.
    pub fn with_node(mut self, node: NodeId, properties: NodeProperties) -> Self {
        self.nodes.insert(node, properties);
        self
    }

    /// Adds (or replaces) a node.
    pub fn insert(&mut self, node: NodeId, properties: NodeProperties) {
        self.nodes.insert(node, properties);
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &NodeId) -> bool {
        self.nodes.contains_key(node)
    }

    /// Properties of `node`, if it is a member.
    pub fn properties(&self, node: &NodeId) -> Option<&NodeProperties> {
        self.nodes.get(node)
    }

    /// Members in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes.keys()
    }

    /// Members with their properties, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &NodeProperties)> {
        self.nodes.iter()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cohort has no members.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Distinct zones of the members.
    pub fn zones(&self) -> BTreeSet<&str> {
        self.nodes.values().map(|node| node.zone.as_str()).collect()
    }
}

impl FromIterator<(NodeId, NodeProperties)> for Cohort {
    fn from_iter<I: IntoIterator<Item = (NodeId, NodeProperties)>>(iter: I) -> Self {
        Self {
            nodes: iter.into_iter().collect(),
        }
    }
}

/// Cohort nodes other than the primary whose acknowledgements together make a write durable.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Group(BTreeSet<NodeId>);

impl Group {
    /// Members of the group.
    pub fn members(&self) -> &BTreeSet<NodeId> {
        &self.0
    }

    /// Whether every member is in `nodes`.
    pub fn is_subset_of(&self, nodes: &BTreeSet<NodeId>) -> bool {
        self.0.is_subset(nodes)
    }

    /// Whether at least one member is in `nodes`.
    pub fn meets(&self, nodes: &BTreeSet<NodeId>) -> bool {
        self.0.iter().any(|member| nodes.contains(member))
    }
}

/// Why a ruleset could not be built or queried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RulesetError {
    /// A ruleset must let someone lead.
    #[error("the ruleset names no eligible primary")]
    NoEligiblePrimary,
    /// Primaries and group members must belong to the cohort.
    #[error("{node} is not a member of the cohort")]
    NotInCohort {
        /// The offending node.
        node: NodeId,
    },
    /// A primary without groups could never make anything durable.
    #[error("eligible primary {primary} has no durability group")]
    NoGroups {
        /// The primary without groups.
        primary: NodeId,
    },
    /// Enumerating subsets is exponential; cohorts are small in practice and this bounds it.
    #[error("the query enumerates subsets of {nodes} nodes; at most {limit} are supported")]
    TooLarge {
        /// Nodes that would be enumerated.
        nodes: usize,
        /// The supported maximum.
        limit: usize,
    },
}

#[derive(Debug)]
struct RulesetInner {
    cohort: Cohort,
    /// Invariant: keys and group members are cohort members; no group contains its own
    /// primary; each list is non-empty, sorted, free of duplicates and of supersets.
    primaries: BTreeMap<NodeId, Vec<Group>>,
    /// Hash of `cohort` and `primaries`, computed once because rulesets are hashed constantly by
    /// the model checker and the simulator.
    fingerprint: u64,
}

/// Durability rules: the cohort, the eligible primaries, and each primary's groups.
///
/// Cheap to clone (shared); compared and hashed by content.
#[derive(Clone)]
pub struct Ruleset {
    inner: Arc<RulesetInner>,
}

impl Ruleset {
    /// Builds a ruleset. A primary listed inside one of its own groups is dropped from that
    /// group (a primary always holds its own writes); groups that contain another group of the
    /// same primary are dropped as redundant.
    pub fn new(
        cohort: Cohort,
        primaries: impl IntoIterator<Item = (NodeId, Vec<BTreeSet<NodeId>>)>,
    ) -> Result<Self, RulesetError> {
        let mut normalized = BTreeMap::new();
        for (primary, groups) in primaries {
            if !cohort.contains(&primary) {
                return Err(RulesetError::NotInCohort { node: primary });
            }
            let mut cleaned: Vec<BTreeSet<NodeId>> = Vec::with_capacity(groups.len());
            for mut group in groups {
                if let Some(stranger) = group.iter().find(|member| !cohort.contains(member)) {
                    return Err(RulesetError::NotInCohort {
                        node: stranger.clone(),
                    });
                }
                group.remove(&primary);
                cleaned.push(group);
            }
            if cleaned.is_empty() {
                return Err(RulesetError::NoGroups { primary });
            }
            normalized.insert(primary, minimize(cleaned).into_iter().map(Group).collect());
        }
        if normalized.is_empty() {
            return Err(RulesetError::NoEligiblePrimary);
        }
        let mut hasher = DefaultHasher::new();
        cohort.hash(&mut hasher);
        normalized.hash(&mut hasher);
        Ok(Self {
            inner: Arc::new(RulesetInner {
                cohort,
                primaries: normalized,
                fingerprint: hasher.finish(),
            }),
        })
    }

    /// The cohort the rules were compiled for.
    pub fn cohort(&self) -> &Cohort {
        &self.inner.cohort
    }

    /// Eligible primaries in id order.
    pub fn eligible_primaries(&self) -> impl Iterator<Item = &NodeId> {
        self.inner.primaries.keys()
    }

    /// Whether `node` may lead under these rules.
    pub fn is_eligible(&self, node: &NodeId) -> bool {
        self.inner.primaries.contains_key(node)
    }

    /// The groups of `primary` (empty if it is not eligible).
    pub fn groups(&self, primary: &NodeId) -> &[Group] {
        self.inner
            .primaries
            .get(primary)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether acknowledgements from `acknowledged` (the leader's own copy is implied) make a
    /// write by `leader` durable.
    pub fn is_durable(&self, leader: &NodeId, acknowledged: &BTreeSet<NodeId>) -> bool {
        self.groups(leader)
            .iter()
            .any(|group| group.is_subset_of(acknowledged))
    }

    /// Whether recruiting `recruited` revokes `primary`: it is recruited itself, or none of its
    /// groups can be completed by un-recruited nodes. Nodes that are not eligible are trivially
    /// revoked.
    pub fn revokes(&self, primary: &NodeId, recruited: &BTreeSet<NodeId>) -> bool {
        recruited.contains(primary)
            || self
                .groups(primary)
                .iter()
                .all(|group| group.meets(recruited))
    }

    /// Eligible primaries that `recruited` does not revoke, in id order.
    pub fn unrevoked_primaries(&self, recruited: &BTreeSet<NodeId>) -> Vec<NodeId> {
        self.eligible_primaries()
            .filter(|primary| !self.revokes(primary, recruited))
            .cloned()
            .collect()
    }

    /// Whether `recruited` revokes every eligible primary.
    pub fn revokes_all(&self, recruited: &BTreeSet<NodeId>) -> bool {
        self.eligible_primaries()
            .all(|primary| self.revokes(primary, recruited))
    }

    /// Whether `recruited` contains `candidate` and one complete group of it.
    pub fn allows_candidacy(&self, candidate: &NodeId, recruited: &BTreeSet<NodeId>) -> bool {
        recruited.contains(candidate) && self.is_durable(candidate, recruited)
    }

    /// Every minimal set of cohort nodes whose recruitment revokes all eligible primaries.
    pub fn minimal_revocation_sets(&self) -> Result<Vec<BTreeSet<NodeId>>, RulesetError> {
        self.minimal_sets(|recruited| self.revokes_all(recruited))
    }

    /// Every minimal set of cohort nodes whose recruitment both revokes all eligible primaries
    /// and lets `candidate` take over (candidate plus one complete group).
    pub fn minimal_recruitment_sets(
        &self,
        candidate: &NodeId,
    ) -> Result<Vec<BTreeSet<NodeId>>, RulesetError> {
        self.minimal_sets(|recruited| {
            self.revokes_all(recruited) && self.allows_candidacy(candidate, recruited)
        })
    }

    fn minimal_sets(
        &self,
        mut accept: impl FnMut(&BTreeSet<NodeId>) -> bool,
    ) -> Result<Vec<BTreeSet<NodeId>>, RulesetError> {
        let indexed =
            IndexedNodes::new(self.cohort().nodes().cloned()).ok_or(RulesetError::TooLarge {
                nodes: self.cohort().len(),
                limit: MAX_ENUMERATED_NODES,
            })?;
        Ok(indexed.minimal_upward_closed(|set| accept(set)))
    }
}

/// Drops duplicate groups and groups that contain another group, then sorts.
pub(crate) fn minimize(mut groups: Vec<BTreeSet<NodeId>>) -> Vec<BTreeSet<NodeId>> {
    groups.sort_by(|left, right| left.len().cmp(&right.len()).then(left.cmp(right)));
    let mut kept: Vec<BTreeSet<NodeId>> = Vec::with_capacity(groups.len());
    for group in groups {
        if !kept.iter().any(|smaller| smaller.is_subset(&group)) {
            kept.push(group);
        }
    }
    kept.sort();
    kept
}

impl PartialEq for Ruleset {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.inner.fingerprint == other.inner.fingerprint
                && self.inner.cohort == other.inner.cohort
                && self.inner.primaries == other.inner.primaries)
    }
}

impl Eq for Ruleset {}

impl Hash for Ruleset {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Consistent with Eq: equal content has an equal fingerprint.
        self.inner.fingerprint.hash(state);
    }
}

impl fmt::Debug for Ruleset {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{self}")
    }
}

/// Human-readable form of the groups, e.g. `{N1: [N2 N3]; N4: [N5] | [N6]}`.
impl fmt::Display for Ruleset {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("{")?;
        for (position, (primary, groups)) in self.inner.primaries.iter().enumerate() {
            if position > 0 {
                formatter.write_str("; ")?;
            }
            write!(formatter, "{primary}:")?;
            for (group_position, group) in groups.iter().enumerate() {
                formatter.write_str(if group_position == 0 { " [" } else { " | [" })?;
                for (member_position, member) in group.members().iter().enumerate() {
                    if member_position > 0 {
                        formatter.write_str(" ")?;
                    }
                    write!(formatter, "{member}")?;
                }
                formatter.write_str("]")?;
            }
        }
        formatter.write_str("}")
    }
}

/// The rulesets a decision must satisfy at the same time: the ruleset in force, followed by
/// every ruleset change still in flight, oldest first.
///
/// Why a list: while a change from R to R' is in flight, a leader running under either could
/// exist, so durability, candidacy and revocation must hold under both.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ActiveRules {
    /// Invariant: non-empty, in order of (last) appearance, no ruleset appears twice; the last
    /// one is the target.
    rulesets: Vec<Ruleset>,
}

impl ActiveRules {
    /// Rules with a single ruleset in force and nothing in flight.
    pub fn new(current: Ruleset) -> Self {
        Self {
            rulesets: vec![current],
        }
    }

    /// Adds a ruleset change in flight; it becomes the target. A ruleset already in the list
    /// moves to the end instead of appearing twice, so changing back (R0 -> R1 -> R0) keeps
    /// R0 as the target while both still have to be satisfied.
    pub fn push(&mut self, next: Ruleset) {
        if self.target() == &next {
            return;
        }
        self.rulesets.retain(|ruleset| ruleset != &next);
        self.rulesets.push(next);
    }

    /// Builder form of [`ActiveRules::push`].
    pub fn with(mut self, next: Ruleset) -> Self {
        self.push(next);
        self
    }

    /// The oldest ruleset in the list (normally the one in force before the changes in
    /// flight).
    pub fn current(&self) -> &Ruleset {
        &self.rulesets[0]
    }

    /// The newest ruleset: the one in force once every change in flight has been made durable.
    pub fn target(&self) -> &Ruleset {
        &self.rulesets[self.rulesets.len() - 1]
    }

    /// All rulesets, oldest first.
    pub fn rulesets(&self) -> &[Ruleset] {
        &self.rulesets
    }

    /// Whether `node` is eligible under every ruleset.
    pub fn is_eligible(&self, node: &NodeId) -> bool {
        self.rulesets
            .iter()
            .all(|ruleset| ruleset.is_eligible(node))
    }

    /// Whether `acknowledged` makes a write by `leader` durable under every ruleset.
    pub fn is_durable(&self, leader: &NodeId, acknowledged: &BTreeSet<NodeId>) -> bool {
        self.rulesets
            .iter()
            .all(|ruleset| ruleset.is_durable(leader, acknowledged))
    }

    /// Whether `recruited` gives `candidate` a complete group under every ruleset.
    pub fn allows_candidacy(&self, candidate: &NodeId, recruited: &BTreeSet<NodeId>) -> bool {
        self.rulesets
            .iter()
            .all(|ruleset| ruleset.allows_candidacy(candidate, recruited))
    }

    /// Whether `recruited` revokes every eligible primary of every ruleset.
    pub fn revokes_all(&self, recruited: &BTreeSet<NodeId>) -> bool {
        self.rulesets
            .iter()
            .all(|ruleset| ruleset.revokes_all(recruited))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn node(name: &str) -> NodeId {
        NodeId::new(name).expect("test ids are valid")
    }

    pub(crate) fn set(names: &[&str]) -> BTreeSet<NodeId> {
        names.iter().map(|name| node(name)).collect()
    }

    pub(crate) fn cohort(names: &[(&str, &str)]) -> Cohort {
        names
            .iter()
            .map(|(name, zone)| (node(name), NodeProperties::in_zone(*zone)))
            .collect()
    }

    /// The series' example: N1 needs N2 and N3; N4 needs N5 or N6; nobody else is eligible.
    pub(crate) fn series_example() -> Ruleset {
        Ruleset::new(
            cohort(&[
                ("N1", "z1"),
                ("N2", "z1"),
                ("N3", "z1"),
                ("N4", "z2"),
                ("N5", "z2"),
                ("N6", "z2"),
            ]),
            [
                (node("N1"), vec![set(&["N2", "N3"])]),
                (node("N4"), vec![set(&["N5"]), set(&["N6"])]),
            ],
        )
        .expect("example ruleset is valid")
    }

    #[test]
    fn groups_drop_their_primary_and_redundant_supersets() {
        // Goal: normalisation keeps only minimal groups and never lists the primary.
        let ruleset = Ruleset::new(
            cohort(&[("a", "z"), ("b", "z"), ("c", "z")]),
            [(
                node("a"),
                vec![set(&["a", "b"]), set(&["b", "c"]), set(&["c"])],
            )],
        )
        .expect("valid");
        let groups: Vec<_> = ruleset
            .groups(&node("a"))
            .iter()
            .map(|group| group.members().clone())
            .collect();
        assert_eq!(groups, vec![set(&["b"]), set(&["c"])]);
    }

    #[test]
    fn construction_rejects_strangers_and_groupless_primaries() {
        // Goal: a ruleset never mentions nodes outside its cohort or primaries that cannot commit.
        let members = cohort(&[("a", "z"), ("b", "z")]);
        assert_eq!(
            Ruleset::new(members.clone(), [(node("a"), vec![set(&["x"])])]),
            Err(RulesetError::NotInCohort { node: node("x") })
        );
        assert_eq!(
            Ruleset::new(members.clone(), [(node("a"), vec![])]),
            Err(RulesetError::NoGroups { primary: node("a") })
        );
        assert_eq!(
            Ruleset::new(members, Vec::new()),
            Err(RulesetError::NoEligiblePrimary)
        );
    }

    #[test]
    fn minimal_revocation_sets_of_the_series_example() {
        // Goal: the minimal recruitments that revoke both N1 and N4 are exactly the hitting sets.
        let sets = series_example().minimal_revocation_sets().expect("small");
        let expected: Vec<BTreeSet<NodeId>> = vec![
            set(&["N1", "N4"]),
            set(&["N1", "N5", "N6"]),
            set(&["N2", "N4"]),
            set(&["N2", "N5", "N6"]),
            set(&["N3", "N4"]),
            set(&["N3", "N5", "N6"]),
        ];
        let mut sorted = sets;
        sorted.sort();
        let mut expected_sorted = expected;
        expected_sorted.sort();
        assert_eq!(sorted, expected_sorted);
    }

    #[test]
    fn changing_back_keeps_both_rulesets_and_targets_the_latest() {
        // Goal: R0 -> R1 -> R0 requires both and ends with R0 in force, not R1.
        let other = Ruleset::new(
            cohort(&[("a", "z"), ("b", "z")]),
            [(node("a"), vec![set(&["b"])])],
        )
        .expect("valid");
        let rules = ActiveRules::new(series_example())
            .with(other.clone())
            .with(series_example());
        assert_eq!(rules.rulesets(), &[other.clone(), series_example()]);
        assert_eq!(rules.target(), &series_example());
        let unchanged = ActiveRules::new(other.clone()).with(other.clone());
        assert_eq!(unchanged.rulesets(), &[other]);
    }

    #[test]
    fn equal_content_means_equal_rulesets_even_when_built_twice() {
        // Goal: Eq/Hash are by content, not by the shared pointer.
        assert_eq!(series_example(), series_example());
        let other = Ruleset::new(
            cohort(&[("a", "z"), ("b", "z")]),
            [(node("a"), vec![set(&["b"])])],
        )
        .expect("valid");
        assert_ne!(series_example(), other);
    }
}
