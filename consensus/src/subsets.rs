//! Subset enumeration over small node sets, shared by the ruleset queries and the PostgreSQL
//! compiler. Cohorts are small (3 to 9 nodes in practice), so exhaustive enumeration is both
//! the simplest and the most obviously correct way to answer "minimal set" questions.

use std::collections::BTreeSet;

use crate::ids::NodeId;

/// Largest node set we enumerate subsets of (2^20 masks).
pub(crate) const MAX_ENUMERATED_NODES: usize = 20;

/// A node set with a fixed index per node, so subsets can be bit masks.
pub(crate) struct IndexedNodes {
    /// Invariant: sorted, distinct, at most `MAX_ENUMERATED_NODES` long.
    nodes: Vec<NodeId>,
}

impl IndexedNodes {
    /// Indexes `nodes`; `None` if there are too many to enumerate.
    pub(crate) fn new(nodes: impl IntoIterator<Item = NodeId>) -> Option<Self> {
        let nodes: Vec<NodeId> = nodes
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        (nodes.len() <= MAX_ENUMERATED_NODES).then_some(Self { nodes })
    }

    /// Number of indexed nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes in index order.
    pub(crate) fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Bit mask of the indexed members of `set` (others are ignored).
    pub(crate) fn mask_of(&self, set: &BTreeSet<NodeId>) -> u32 {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| set.contains(node))
            .fold(0, |mask, (position, _)| mask | (1 << position))
    }

    /// The nodes selected by `mask`.
    pub(crate) fn set_of(&self, mask: u32) -> BTreeSet<NodeId> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(position, _)| mask & (1 << position) != 0)
            .map(|(_, node)| node.clone())
            .collect()
    }

    fn masks_by_size(&self) -> Vec<u32> {
        let mut masks: Vec<u32> = (0..(1u32 << self.nodes.len())).collect();
        masks.sort_by_key(|mask| (mask.count_ones(), *mask));
        masks
    }

    /// All minimal sets satisfying `accept`, which must be upward closed (if a set is accepted,
    /// so is every superset), smallest first.
    pub(crate) fn minimal_upward_closed(
        &self,
        mut accept: impl FnMut(&BTreeSet<NodeId>) -> bool,
    ) -> Vec<BTreeSet<NodeId>> {
        let mut minimal: Vec<u32> = Vec::new();
        for mask in self.masks_by_size() {
            if minimal.iter().any(|found| mask & found == *found) {
                continue;
            }
            if accept(&self.set_of(mask)) {
                minimal.push(mask);
            }
        }
        minimal.into_iter().map(|mask| self.set_of(mask)).collect()
    }

    /// Size of the smallest set meeting every one of `groups` (masks over this index).
    /// `groups` must all be non-empty.
    pub(crate) fn min_hitting_set_size(&self, groups: &[u32]) -> usize {
        self.masks_by_size()
            .into_iter()
            .find(|mask| groups.iter().all(|group| group & mask != 0))
            .map_or(self.nodes.len(), |mask| mask.count_ones() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).expect("valid")
    }

    #[test]
    fn minimal_sets_of_an_upward_closed_predicate() {
        // Goal: "contains a, or contains both b and c" has exactly {a} and {b, c} as minimal sets.
        let indexed = IndexedNodes::new(["a", "b", "c"].map(node)).expect("small");
        let minimal = indexed.minimal_upward_closed(|set| {
            set.contains(&node("a")) || (set.contains(&node("b")) && set.contains(&node("c")))
        });
        let expected: Vec<BTreeSet<NodeId>> = vec![
            [node("a")].into_iter().collect(),
            [node("b"), node("c")].into_iter().collect(),
        ];
        assert_eq!(minimal, expected);
    }

    #[test]
    fn hitting_set_of_disjoint_pairs_needs_one_node_per_pair() {
        // Goal: groups {a,b} and {c,d} can only both be hit with two nodes.
        let indexed = IndexedNodes::new(["a", "b", "c", "d"].map(node)).expect("small");
        assert_eq!(indexed.min_hitting_set_size(&[0b0011, 0b1100]), 2);
        assert_eq!(indexed.min_hitting_set_size(&[0b0011, 0b0110]), 1);
    }

    #[test]
    fn refuses_to_enumerate_huge_sets() {
        // Goal: exponential enumeration is bounded instead of hanging.
        let many = (0..=MAX_ENUMERATED_NODES).map(|index| node(&format!("n{index}")));
        assert!(IndexedNodes::new(many).is_none());
    }
}
