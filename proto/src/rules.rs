//! Conversions between the consensus core's rulesets and their wire form (`tablet.proto`).
//! Invalid wire rulesets are rejected here, at the edge.

use std::collections::BTreeSet;

use tessera_consensus::{Cohort, NodeId, NodeProperties, Ruleset};

use crate::tablet as pb;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesWireError {
    #[error("invalid node id {0:?}")]
    NodeId(String),
    #[error("invalid ruleset: {0}")]
    Ruleset(String),
    #[error("missing field {0}")]
    Missing(&'static str),
}

fn node(id: &str) -> Result<NodeId, RulesWireError> {
    NodeId::new(id).map_err(|_| RulesWireError::NodeId(id.to_string()))
}

impl TryFrom<&pb::Ruleset> for Ruleset {
    type Error = RulesWireError;

    fn try_from(wire: &pb::Ruleset) -> Result<Ruleset, RulesWireError> {
        let mut cohort = Cohort::new();
        for member in &wire.cohort {
            cohort.insert(
                node(&member.id)?,
                NodeProperties::in_zone(member.zone.clone()),
            );
        }
        let mut primaries = Vec::with_capacity(wire.primaries.len());
        for primary in &wire.primaries {
            let groups = primary
                .groups
                .iter()
                .map(|g| {
                    g.members
                        .iter()
                        .map(|m| node(m))
                        .collect::<Result<BTreeSet<_>, _>>()
                })
                .collect::<Result<Vec<_>, _>>()?;
            primaries.push((node(&primary.primary)?, groups));
        }
        Ruleset::new(cohort, primaries).map_err(|e| RulesWireError::Ruleset(e.to_string()))
    }
}

/// The wire form of a ruleset, labelled with the policy text it came from.
pub fn to_wire(ruleset: &Ruleset, policy: &str) -> pb::Ruleset {
    pb::Ruleset {
        cohort: ruleset
            .cohort()
            .iter()
            .map(|(id, properties)| pb::Member {
                id: id.as_str().to_string(),
                zone: properties.zone.clone(),
            })
            .collect(),
        primaries: ruleset
            .eligible_primaries()
            .map(|primary| pb::PrimaryGroups {
                primary: primary.as_str().to_string(),
                groups: ruleset
                    .groups(primary)
                    .iter()
                    .map(|group| pb::Group {
                        members: group
                            .members()
                            .iter()
                            .map(|m| m.as_str().to_string())
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        policy: policy.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_consensus::{Policy, PolicySpec};

    #[test]
    fn rulesets_round_trip_through_the_wire_form() {
        let cohort = Cohort::new()
            .with_node(
                NodeId::new("zone1-101").unwrap(),
                NodeProperties::in_zone("zone1"),
            )
            .with_node(
                NodeId::new("zone2-102").unwrap(),
                NodeProperties::in_zone("zone2"),
            )
            .with_node(
                NodeId::new("zone3-103").unwrap(),
                NodeProperties::in_zone("zone3"),
            );
        for policy in ["at_least_n(2)", "multi_zone(2)", "majority"] {
            let spec: PolicySpec = policy.parse().unwrap();
            let ruleset = spec.compile(&cohort).unwrap();
            let wire = to_wire(&ruleset, policy);
            let back = Ruleset::try_from(&wire).unwrap();
            assert_eq!(back, ruleset, "{policy}");
        }
    }

    #[test]
    fn wire_rulesets_naming_strangers_are_rejected() {
        let wire = pb::Ruleset {
            cohort: vec![pb::Member {
                id: "a".into(),
                zone: "z".into(),
            }],
            primaries: vec![pb::PrimaryGroups {
                primary: "a".into(),
                groups: vec![pb::Group {
                    members: vec!["b".into()],
                }],
            }],
            policy: String::new(),
        };
        assert!(Ruleset::try_from(&wire).is_err());
    }
}
