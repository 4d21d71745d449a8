//! Durability policies: what operators write (`at_least_n(2)`, `multi_zone(2)`, `majority`,
//! `explicit(...)`) and how each compiles, for a given cohort, into a [`Ruleset`].
//!
//! Text form (canonical; [`PolicySpec`]'s `Display` prints exactly this and `FromStr` reads it
//! back to an equal value; the parser also tolerates extra whitespace between tokens):
//!
//! ```text
//! at_least_n(N)    the primary plus N-1 other cohort nodes            (N >= 1)
//! multi_zone(N)    nodes in N distinct zones, the primary's included  (N >= 1)
//! majority         more than half of the cohort, the primary included
//! explicit(P: {A, B}; Q: {C} | {D})
//!                  only P and Q are eligible; P needs acks from A and B;
//!                  Q needs an ack from C or from D; `{}` means the primary alone
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::ids::{IdError, NodeId};
use crate::ruleset::{Cohort, Ruleset, RulesetError};

/// Upper bound on the groups one primary may get; policies over huge cohorts would otherwise
/// produce combinatorially many groups.
pub const MAX_GROUPS_PER_PRIMARY: usize = 4096;

/// A durability policy: turns a cohort into durability rules.
///
/// Why a trait: policies are pluggable; the rest of the system only ever looks at the compiled
/// [`Ruleset`], so a new policy needs no change anywhere else.
pub trait Policy: fmt::Display {
    /// Compiles the policy for `cohort`.
    fn compile(&self, cohort: &Cohort) -> Result<Ruleset, PolicyError>;
}

/// Why a policy could not be compiled for a cohort.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Nothing can be durable without nodes.
    #[error("the cohort is empty")]
    EmptyCohort,
    /// Counts start at one (the primary itself).
    #[error("{policy} needs a count of at least 1")]
    ZeroCount {
        /// The policy text.
        policy: String,
    },
    /// The cohort is smaller than the policy demands.
    #[error("the policy needs {required} nodes but the cohort has {available}")]
    NotEnoughNodes {
        /// Nodes the policy needs.
        required: usize,
        /// Nodes in the cohort.
        available: usize,
    },
    /// The cohort spans fewer zones than the policy demands.
    #[error("the policy needs {required} zones but the cohort spans {available}")]
    NotEnoughZones {
        /// Zones the policy needs.
        required: usize,
        /// Zones in the cohort.
        available: usize,
    },
    /// The policy would produce too many groups to reason about.
    #[error("the policy yields {count} groups for one primary; at most {limit} are supported")]
    TooManyGroups {
        /// Groups it would produce.
        count: usize,
        /// The supported maximum.
        limit: usize,
    },
    /// The compiled groups do not form a valid ruleset (e.g. an explicit policy names a node
    /// outside the cohort).
    #[error(transparent)]
    Ruleset(#[from] RulesetError),
}

/// `at_least_n(N)`: the primary plus any N-1 other cohort nodes; every member is eligible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AtLeastN(pub usize);

/// `multi_zone(N)`: acknowledgements spanning N distinct zones, counting the primary's own
/// zone; every member is eligible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MultiZone(pub usize);

/// `majority`: more than half of the cohort including the primary; every member is eligible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Majority;

/// `explicit(...)`: named eligible primaries, each with its own list of groups, in the order
/// the operator wrote them (kept so the text round-trips exactly).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExplicitGroups {
    /// Invariant: primaries are distinct; no group names its own primary or a node twice.
    primaries: Vec<(NodeId, Vec<Vec<NodeId>>)>,
}

impl ExplicitGroups {
    /// Validates and builds an explicit policy.
    pub fn new(primaries: Vec<(NodeId, Vec<Vec<NodeId>>)>) -> Result<Self, ExplicitGroupsError> {
        if primaries.is_empty() {
            return Err(ExplicitGroupsError::NoPrimaries);
        }
        let mut seen = BTreeSet::new();
        for (primary, groups) in &primaries {
            if !seen.insert(primary) {
                return Err(ExplicitGroupsError::DuplicatePrimary {
                    primary: primary.clone(),
                });
            }
            if groups.is_empty() {
                return Err(ExplicitGroupsError::NoGroups {
                    primary: primary.clone(),
                });
            }
            for group in groups {
                let mut members = BTreeSet::new();
                for member in group {
                    if member == primary {
                        return Err(ExplicitGroupsError::PrimaryInOwnGroup {
                            primary: primary.clone(),
                        });
                    }
                    if !members.insert(member) {
                        return Err(ExplicitGroupsError::DuplicateMember {
                            member: member.clone(),
                        });
                    }
                }
            }
        }
        Ok(Self { primaries })
    }

    /// Primaries and their groups, as written.
    pub fn primaries(&self) -> &[(NodeId, Vec<Vec<NodeId>>)] {
        &self.primaries
    }
}

/// Why an explicit policy is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExplicitGroupsError {
    /// At least one primary must be eligible.
    #[error("an explicit policy must name at least one primary")]
    NoPrimaries,
    /// Each primary is listed once.
    #[error("primary {primary} is listed twice")]
    DuplicatePrimary {
        /// The repeated primary.
        primary: NodeId,
    },
    /// Each primary needs at least one group (`{}` means the primary alone).
    #[error("primary {primary} has no group; write {{}} if the primary alone is enough")]
    NoGroups {
        /// The primary without groups.
        primary: NodeId,
    },
    /// The primary always holds its own writes, so listing it is a mistake worth reporting.
    #[error("primary {primary} is listed in its own group; the primary always counts itself")]
    PrimaryInOwnGroup {
        /// The primary.
        primary: NodeId,
    },
    /// A node appears twice in one group.
    #[error("{member} appears twice in one group")]
    DuplicateMember {
        /// The repeated node.
        member: NodeId,
    },
}

/// Any policy Tessera knows, as stored in the topology and shown by `tessera status`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PolicySpec {
    /// `at_least_n(N)`.
    AtLeastN(AtLeastN),
    /// `multi_zone(N)`.
    MultiZone(MultiZone),
    /// `majority`.
    Majority(Majority),
    /// `explicit(...)`.
    Explicit(ExplicitGroups),
}

fn combinations<T: Clone>(items: &[T], size: usize) -> Vec<Vec<T>> {
    if size == 0 {
        return vec![Vec::new()];
    }
    if items.len() < size {
        return Vec::new();
    }
    let mut result = Vec::new();
    for (position, first) in items.iter().enumerate() {
        for mut rest in combinations(&items[position + 1..], size - 1) {
            rest.insert(0, first.clone());
            result.push(rest);
        }
    }
    result
}

fn binomial(total: usize, chosen: usize) -> usize {
    if chosen > total {
        return 0;
    }
    let chosen = chosen.min(total - chosen);
    (0..chosen).fold(1usize, |accumulated, step| {
        accumulated.saturating_mul(total - step) / (step + 1)
    })
}

/// Every member eligible, each needing any `others` of the other members.
fn any_others(cohort: &Cohort, others: usize) -> Result<Ruleset, PolicyError> {
    let count = binomial(cohort.len().saturating_sub(1), others);
    if count > MAX_GROUPS_PER_PRIMARY {
        return Err(PolicyError::TooManyGroups {
            count,
            limit: MAX_GROUPS_PER_PRIMARY,
        });
    }
    let primaries = cohort.nodes().map(|primary| {
        let rest: Vec<NodeId> = cohort
            .nodes()
            .filter(|node| *node != primary)
            .cloned()
            .collect();
        let groups = combinations(&rest, others)
            .into_iter()
            .map(|group| group.into_iter().collect())
            .collect();
        (primary.clone(), groups)
    });
    Ok(Ruleset::new(cohort.clone(), primaries.collect::<Vec<_>>())?)
}

impl Policy for AtLeastN {
    fn compile(&self, cohort: &Cohort) -> Result<Ruleset, PolicyError> {
        if cohort.is_empty() {
            return Err(PolicyError::EmptyCohort);
        }
        if self.0 == 0 {
            return Err(PolicyError::ZeroCount {
                policy: self.to_string(),
            });
        }
        if self.0 > cohort.len() {
            return Err(PolicyError::NotEnoughNodes {
                required: self.0,
                available: cohort.len(),
            });
        }
        any_others(cohort, self.0 - 1)
    }
}

impl Policy for Majority {
    fn compile(&self, cohort: &Cohort) -> Result<Ruleset, PolicyError> {
        if cohort.is_empty() {
            return Err(PolicyError::EmptyCohort);
        }
        // floor(n/2) others plus the primary is floor(n/2)+1 > n/2 nodes.
        any_others(cohort, cohort.len() / 2)
    }
}

impl Policy for MultiZone {
    fn compile(&self, cohort: &Cohort) -> Result<Ruleset, PolicyError> {
        if cohort.is_empty() {
            return Err(PolicyError::EmptyCohort);
        }
        if self.0 == 0 {
            return Err(PolicyError::ZeroCount {
                policy: self.to_string(),
            });
        }
        let zones = cohort.zones();
        if self.0 > zones.len() {
            return Err(PolicyError::NotEnoughZones {
                required: self.0,
                available: zones.len(),
            });
        }
        let mut primaries = Vec::with_capacity(cohort.len());
        for (primary, properties) in cohort.iter() {
            let other_zones: Vec<&str> = zones
                .iter()
                .copied()
                .filter(|zone| *zone != properties.zone)
                .collect();
            let mut groups: Vec<BTreeSet<NodeId>> = Vec::new();
            for chosen_zones in combinations(&other_zones, self.0 - 1) {
                // One node from each chosen zone: the cartesian product of the zones' members.
                let mut partial: Vec<BTreeSet<NodeId>> = vec![BTreeSet::new()];
                for zone in chosen_zones {
                    let members: Vec<&NodeId> = cohort
                        .iter()
                        .filter(|(_, other)| other.zone == zone)
                        .map(|(node, _)| node)
                        .collect();
                    partial = partial
                        .into_iter()
                        .flat_map(|group| {
                            members.iter().map(move |member| {
                                let mut extended = group.clone();
                                extended.insert((*member).clone());
                                extended
                            })
                        })
                        .collect();
                    if partial.len() > MAX_GROUPS_PER_PRIMARY {
                        return Err(PolicyError::TooManyGroups {
                            count: partial.len(),
                            limit: MAX_GROUPS_PER_PRIMARY,
                        });
                    }
                }
                groups.extend(partial);
                if groups.len() > MAX_GROUPS_PER_PRIMARY {
                    return Err(PolicyError::TooManyGroups {
                        count: groups.len(),
                        limit: MAX_GROUPS_PER_PRIMARY,
                    });
                }
            }
            primaries.push((primary.clone(), groups));
        }
        Ok(Ruleset::new(cohort.clone(), primaries)?)
    }
}

impl Policy for ExplicitGroups {
    fn compile(&self, cohort: &Cohort) -> Result<Ruleset, PolicyError> {
        if cohort.is_empty() {
            return Err(PolicyError::EmptyCohort);
        }
        let primaries: BTreeMap<NodeId, Vec<BTreeSet<NodeId>>> = self
            .primaries
            .iter()
            .map(|(primary, groups)| {
                let groups = groups
                    .iter()
                    .map(|group| group.iter().cloned().collect())
                    .collect();
                (primary.clone(), groups)
            })
            .collect();
        Ok(Ruleset::new(cohort.clone(), primaries)?)
    }
}

impl Policy for PolicySpec {
    fn compile(&self, cohort: &Cohort) -> Result<Ruleset, PolicyError> {
        match self {
            PolicySpec::AtLeastN(policy) => policy.compile(cohort),
            PolicySpec::MultiZone(policy) => policy.compile(cohort),
            PolicySpec::Majority(policy) => policy.compile(cohort),
            PolicySpec::Explicit(policy) => policy.compile(cohort),
        }
    }
}

impl fmt::Display for AtLeastN {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "at_least_n({})", self.0)
    }
}

impl fmt::Display for MultiZone {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "multi_zone({})", self.0)
    }
}

impl fmt::Display for Majority {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("majority")
    }
}

impl fmt::Display for ExplicitGroups {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("explicit(")?;
        for (primary_position, (primary, groups)) in self.primaries.iter().enumerate() {
            if primary_position > 0 {
                formatter.write_str("; ")?;
            }
            write!(formatter, "{primary}: ")?;
            for (group_position, group) in groups.iter().enumerate() {
                if group_position > 0 {
                    formatter.write_str(" | ")?;
                }
                formatter.write_str("{")?;
                for (member_position, member) in group.iter().enumerate() {
                    if member_position > 0 {
                        formatter.write_str(", ")?;
                    }
                    write!(formatter, "{member}")?;
                }
                formatter.write_str("}")?;
            }
        }
        formatter.write_str(")")
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySpec::AtLeastN(policy) => policy.fmt(formatter),
            PolicySpec::MultiZone(policy) => policy.fmt(formatter),
            PolicySpec::Majority(policy) => policy.fmt(formatter),
            PolicySpec::Explicit(policy) => policy.fmt(formatter),
        }
    }
}

/// Why policy text could not be parsed; `column` is 1-based and counts characters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy at column {column}: {kind}")]
pub struct PolicyParseError {
    /// Where the problem was found.
    pub column: usize,
    /// What is wrong.
    pub kind: PolicyParseErrorKind,
}

/// What is wrong with policy text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyParseErrorKind {
    /// Nothing but whitespace.
    #[error(
        "the policy is empty; expected at_least_n(N), multi_zone(N), majority or explicit(...)"
    )]
    Empty,
    /// The policy name is not known.
    #[error(
        "unknown policy {name:?}; expected at_least_n(N), multi_zone(N), majority or explicit(...)"
    )]
    UnknownPolicy {
        /// The name found.
        name: String,
    },
    /// A specific token was expected.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What would have been valid here.
        expected: &'static str,
        /// What was found ("end of input" at the end).
        found: String,
    },
    /// The count is not a positive number that fits.
    #[error("{text:?} is not a valid count; expected a whole number of at least 1")]
    InvalidCount {
        /// The text found.
        text: String,
    },
    /// A node id is malformed.
    #[error(transparent)]
    InvalidNode(#[from] IdError),
    /// The explicit groups are malformed.
    #[error(transparent)]
    InvalidGroups(#[from] ExplicitGroupsError),
    /// Text remains after a complete policy.
    #[error("unexpected {found} after the end of the policy")]
    TrailingInput {
        /// What was found.
        found: String,
    },
}

struct Parser {
    characters: Vec<char>,
    /// Index into `characters` of the next character to read.
    position: usize,
}

impl Parser {
    fn new(text: &str) -> Self {
        Self {
            characters: text.chars().collect(),
            position: 0,
        }
    }

    fn error(&self, kind: PolicyParseErrorKind) -> PolicyParseError {
        PolicyParseError {
            column: self.position + 1,
            kind,
        }
    }

    fn found(&self) -> String {
        match self.characters.get(self.position) {
            Some(character) => format!("{character:?}"),
            None => "end of input".to_owned(),
        }
    }

    fn skip_whitespace(&mut self) {
        while self
            .characters
            .get(self.position)
            .is_some_and(|character| character.is_whitespace())
        {
            self.position += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_whitespace();
        self.characters.get(self.position).copied()
    }

    fn expect(&mut self, wanted: char, expected: &'static str) -> Result<(), PolicyParseError> {
        if self.peek() == Some(wanted) {
            self.position += 1;
            Ok(())
        } else {
            Err(self.error(PolicyParseErrorKind::Expected {
                expected,
                found: self.found(),
            }))
        }
    }

    fn word(&mut self) -> String {
        self.skip_whitespace();
        let start = self.position;
        while self.characters.get(self.position).is_some_and(|character| {
            character.is_ascii_alphanumeric() || "-_.".contains(*character)
        }) {
            self.position += 1;
        }
        self.characters[start..self.position].iter().collect()
    }

    fn count(&mut self) -> Result<usize, PolicyParseError> {
        self.skip_whitespace();
        let start = self.position;
        let text = self.word();
        match text.parse::<usize>() {
            Ok(count) if count >= 1 && text.chars().all(|c| c.is_ascii_digit()) => Ok(count),
            _ => {
                self.position = start;
                Err(self.error(if text.is_empty() {
                    PolicyParseErrorKind::Expected {
                        expected: "a count",
                        found: self.found(),
                    }
                } else {
                    PolicyParseErrorKind::InvalidCount { text }
                }))
            }
        }
    }

    fn node(&mut self) -> Result<NodeId, PolicyParseError> {
        self.skip_whitespace();
        let start = self.position;
        let text = self.word();
        if text.is_empty() {
            return Err(self.error(PolicyParseErrorKind::Expected {
                expected: "a node id",
                found: self.found(),
            }));
        }
        NodeId::new(text).map_err(|error| {
            self.position = start;
            self.error(error.into())
        })
    }

    fn counted(&mut self) -> Result<usize, PolicyParseError> {
        self.expect('(', "'('")?;
        let count = self.count()?;
        self.expect(')', "')'")?;
        Ok(count)
    }

    fn group(&mut self) -> Result<Vec<NodeId>, PolicyParseError> {
        self.expect('{', "'{' opening a group")?;
        let mut members = Vec::new();
        if self.peek() == Some('}') {
            self.position += 1;
            return Ok(members);
        }
        loop {
            members.push(self.node()?);
            match self.peek() {
                Some(',') => self.position += 1,
                Some('}') => {
                    self.position += 1;
                    return Ok(members);
                }
                _ => {
                    return Err(self.error(PolicyParseErrorKind::Expected {
                        expected: "',' or '}'",
                        found: self.found(),
                    }));
                }
            }
        }
    }

    fn explicit(&mut self) -> Result<ExplicitGroups, PolicyParseError> {
        let start = self.position;
        self.expect('(', "'('")?;
        let mut primaries = Vec::new();
        loop {
            let primary = self.node()?;
            self.expect(':', "':' after the primary")?;
            let mut groups = vec![self.group()?];
            while self.peek() == Some('|') {
                self.position += 1;
                groups.push(self.group()?);
            }
            primaries.push((primary, groups));
            match self.peek() {
                Some(';') => self.position += 1,
                Some(')') => {
                    self.position += 1;
                    break;
                }
                _ => {
                    return Err(self.error(PolicyParseErrorKind::Expected {
                        expected: "'|', ';' or ')'",
                        found: self.found(),
                    }));
                }
            }
        }
        ExplicitGroups::new(primaries).map_err(|error| PolicyParseError {
            column: start + 1,
            kind: error.into(),
        })
    }

    fn policy(&mut self) -> Result<PolicySpec, PolicyParseError> {
        if self.peek().is_none() {
            return Err(self.error(PolicyParseErrorKind::Empty));
        }
        let start = self.position;
        let name = self.word();
        let policy = match name.as_str() {
            "at_least_n" => PolicySpec::AtLeastN(AtLeastN(self.counted()?)),
            "multi_zone" => PolicySpec::MultiZone(MultiZone(self.counted()?)),
            "majority" => PolicySpec::Majority(Majority),
            "explicit" => PolicySpec::Explicit(self.explicit()?),
            _ => {
                self.position = start;
                return Err(self.error(if name.is_empty() {
                    PolicyParseErrorKind::Expected {
                        expected: "a policy name",
                        found: self.found(),
                    }
                } else {
                    PolicyParseErrorKind::UnknownPolicy { name }
                }));
            }
        };
        if self.peek().is_some() {
            return Err(self.error(PolicyParseErrorKind::TrailingInput {
                found: self.found(),
            }));
        }
        Ok(policy)
    }
}

impl FromStr for PolicySpec {
    type Err = PolicyParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Parser::new(text).policy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::tests::{cohort, node, set};

    fn three_zones() -> Cohort {
        cohort(&[("a1", "z1"), ("a2", "z1"), ("b1", "z2"), ("c1", "z3")])
    }

    #[test]
    fn canonical_texts_round_trip_exactly() {
        // Goal: Display(parse(text)) == text for the canonical form of every policy kind.
        for text in [
            "at_least_n(2)",
            "multi_zone(3)",
            "majority",
            "explicit(N1: {N2, N3}; N4: {N5} | {N6})",
            "explicit(zone1-101: {})",
        ] {
            let parsed: PolicySpec = text.parse().expect(text);
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.to_string().parse::<PolicySpec>(), Ok(parsed));
        }
    }

    #[test]
    fn parser_tolerates_whitespace_but_prints_canonically() {
        // Goal: operators may space tokens freely; the shown form is canonical.
        let parsed: PolicySpec = "  explicit( N1 :{N2,N3}|{ N4 } )  ".parse().expect("valid");
        assert_eq!(parsed.to_string(), "explicit(N1: {N2, N3} | {N4})");
    }

    #[test]
    fn parse_errors_say_what_and_where() {
        // Goal: each kind of mistake yields a typed error pointing at the right column.
        let cases: Vec<(&str, usize, PolicyParseErrorKind)> = vec![
            ("", 1, PolicyParseErrorKind::Empty),
            (
                "at_most_n(2)",
                1,
                PolicyParseErrorKind::UnknownPolicy {
                    name: "at_most_n".into(),
                },
            ),
            (
                "at_least_n(0)",
                12,
                PolicyParseErrorKind::InvalidCount { text: "0".into() },
            ),
            (
                "at_least_n(2",
                13,
                PolicyParseErrorKind::Expected {
                    expected: "')'",
                    found: "end of input".into(),
                },
            ),
            (
                "majority x",
                10,
                PolicyParseErrorKind::TrailingInput {
                    found: "'x'".into(),
                },
            ),
            (
                "explicit(N1: {N1})",
                9,
                PolicyParseErrorKind::InvalidGroups(ExplicitGroupsError::PrimaryInOwnGroup {
                    primary: node("N1"),
                }),
            ),
            (
                "explicit(N1: {N2}; N1: {N3})",
                9,
                PolicyParseErrorKind::InvalidGroups(ExplicitGroupsError::DuplicatePrimary {
                    primary: node("N1"),
                }),
            ),
            (
                "explicit(N1: {N2 N3})",
                18,
                PolicyParseErrorKind::Expected {
                    expected: "',' or '}'",
                    found: "'N'".into(),
                },
            ),
        ];
        for (text, column, kind) in cases {
            assert_eq!(
                text.parse::<PolicySpec>(),
                Err(PolicyParseError { column, kind }),
                "{text}"
            );
        }
        let message = "at_least_n(x)"
            .parse::<PolicySpec>()
            .unwrap_err()
            .to_string();
        assert!(message.contains("column 12"), "{message}");
    }

    #[test]
    fn at_least_n_counts_the_primary() {
        // Goal: at_least_n(2) on three nodes means "the primary plus any one other".
        let ruleset = AtLeastN(2).compile(&three_zones()).expect("compiles");
        assert!(ruleset.is_durable(&node("a1"), &set(&["c1"])));
        assert!(!ruleset.is_durable(&node("a1"), &set(&[])));
        assert_eq!(ruleset.groups(&node("a1")).len(), 3);
        assert_eq!(
            AtLeastN(5).compile(&three_zones()),
            Err(PolicyError::NotEnoughNodes {
                required: 5,
                available: 4
            })
        );
    }

    #[test]
    fn multi_zone_needs_distinct_zones_including_the_primarys() {
        // Goal: a same-zone ack never satisfies multi_zone(2); another zone's ack does.
        let ruleset = MultiZone(2).compile(&three_zones()).expect("compiles");
        assert!(!ruleset.is_durable(&node("a1"), &set(&["a2"])));
        assert!(ruleset.is_durable(&node("a1"), &set(&["b1"])));
        let three = MultiZone(3).compile(&three_zones()).expect("compiles");
        assert!(!three.is_durable(&node("a1"), &set(&["a2", "b1"])));
        assert!(three.is_durable(&node("a1"), &set(&["b1", "c1"])));
        assert!(three.is_durable(&node("b1"), &set(&["a2", "c1"])));
        assert_eq!(
            MultiZone(4).compile(&three_zones()),
            Err(PolicyError::NotEnoughZones {
                required: 4,
                available: 3
            })
        );
    }

    #[test]
    fn majority_needs_more_than_half() {
        // Goal: with four nodes a majority is three, so the primary needs two others.
        let ruleset = Majority.compile(&three_zones()).expect("compiles");
        assert!(!ruleset.is_durable(&node("a1"), &set(&["b1"])));
        assert!(ruleset.is_durable(&node("a1"), &set(&["b1", "c1"])));
    }

    #[test]
    fn explicit_groups_reject_nodes_outside_the_cohort() {
        // Goal: a typo in an explicit policy is reported, not silently ignored.
        let policy: PolicySpec = "explicit(a1: {zz})".parse().expect("parses");
        assert_eq!(
            policy.compile(&three_zones()),
            Err(PolicyError::Ruleset(RulesetError::NotInCohort {
                node: node("zz")
            }))
        );
    }
}
