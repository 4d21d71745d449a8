//! L1: the simulated cluster as a stateright model. The network is a set of messages in flight
//! that may be delivered in any order or never (lossy and reordering: a message that is never
//! delivered is a lost one); nodes crash and recover from their persisted state.

use std::collections::BTreeSet;

use stateright::{Model, Property};

use super::cluster::{Action, AgentRef, Cluster, Config, NodeIndex, Payload, RulesetId};

/// How far the model explores.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// For each coordinator, the terms of its successive attempts may be chosen from these
    /// (each attempt uses a term above its previous one).
    pub terms: Vec<Vec<u8>>,
    /// Leadership changes each coordinator may start.
    pub attempts_per_coordinator: u8,
    /// Client requests in total.
    pub requests: u8,
    /// Node crashes in total.
    pub crashes: u8,
    /// Rulesets the leader of term 1 may propose, in order (leaders of later terms do not
    /// propose changes; that keeps the space small while a change can still be in flight
    /// during every coordinator race).
    pub leader_rule_changes: Vec<RulesetId>,
    /// A ruleset coordinators may switch to during a leadership change.
    pub coordinator_rule_change: Option<RulesetId>,
    /// Planned hand-offs in total.
    pub handoffs: u8,
}

/// One state of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelState {
    /// Nodes, coordinators and ghost.
    pub cluster: Cluster,
    /// Messages in flight; delivery removes a message.
    pub network: BTreeSet<super::cluster::Msg>,
    /// Crashes so far.
    pub crashes: u8,
}

/// The cluster model.
pub struct ClusterModel {
    /// Nodes, rulesets, faults.
    pub config: Config,
    /// Exploration bounds.
    pub bounds: Bounds,
    /// The leader at the start (term 1 already established).
    pub initial_leader: NodeIndex,
}

impl Model for ClusterModel {
    type State = ModelState;
    type Action = Action;

    fn init_states(&self) -> Vec<Self::State> {
        vec![ModelState {
            cluster: Cluster::established(&self.config, self.initial_leader),
            network: BTreeSet::new(),
            crashes: 0,
        }]
    }

    /// Actions are listed from least to most "progressing": depth-first search explores the
    /// last one first, so a bounded depth-first run follows messages and replication before it
    /// tries crashes and new coordinators (breadth-first search does not depend on the order).
    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>) {
        let nodes = self.config.names.len() as NodeIndex;
        for (index, model) in state.cluster.nodes.iter().enumerate() {
            let node = index as NodeIndex;
            // Only crashes that lose volatile state produce anything new.
            let volatile = model.leader.is_some()
                || model.promoted.is_some()
                || state.cluster.needs_flush(node);
            if state.crashes < self.bounds.crashes && volatile {
                actions.push(Action::Crash(node));
            }
        }
        for (index, coordinator) in state.cluster.coordinators.iter().enumerate() {
            if coordinator.attempts >= self.bounds.attempts_per_coordinator {
                continue;
            }
            let choices = self
                .bounds
                .terms
                .get(index)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for term in choices
                .iter()
                .copied()
                .filter(|term| *term > coordinator.last_term)
            {
                actions.push(Action::StartChange {
                    coordinator: index as u8,
                    term,
                    new_ruleset: None,
                });
                if let Some(ruleset) = self.bounds.coordinator_rule_change {
                    actions.push(Action::StartChange {
                        coordinator: index as u8,
                        term,
                        new_ruleset: Some(ruleset),
                    });
                }
            }
        }
        let ghost = &state.cluster.ghost;
        for (index, model) in state.cluster.nodes.iter().enumerate() {
            let node = index as NodeIndex;
            if !self.config.immediate_persistence && state.cluster.needs_flush(node) {
                actions.push(Action::Flush(node));
            }
            let Some(leading) = &model.leader else {
                continue;
            };
            if leading.serving {
                if ghost.handoffs < self.bounds.handoffs {
                    for candidate in (0..nodes).filter(|candidate| *candidate != node) {
                        actions.push(Action::BeginHandoff { node, candidate });
                    }
                }
                let first_term = leading.leader.term().0 == 1;
                if let Some(ruleset) = self
                    .bounds
                    .leader_rule_changes
                    .get(ghost.rule_changes as usize)
                    .filter(|_| first_term)
                {
                    actions.push(Action::ProposeRules {
                        node,
                        ruleset: *ruleset,
                    });
                }
                if ghost.next_value < self.bounds.requests {
                    actions.push(Action::ClientRequest(node));
                }
            }
            for follower in (0..nodes).filter(|follower| *follower != node) {
                let behind = &state.cluster.nodes[follower as usize];
                if behind.log != model.log || behind.commit < model.commit {
                    actions.push(Action::Replicate {
                        leader: node,
                        follower,
                    });
                }
            }
        }
        for message in &state.network {
            actions.push(Action::Deliver(message.clone()));
        }
    }

    fn next_state(&self, last_state: &Self::State, action: Self::Action) -> Option<Self::State> {
        let mut next = last_state.clone();
        match &action {
            Action::Crash(_) => next.crashes += 1,
            Action::Deliver(message) => {
                next.network.remove(message);
            }
            _ => {}
        }
        let out = next.cluster.step(&self.config, &action);
        next.network.extend(out);
        (next != *last_state).then_some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property::always(
                "at most one leader completes requests in a term",
                |_, state: &ModelState| !state.cluster.ghost.violations.two_leaders_in_a_term,
            ),
            Property::always(
                "an acknowledged request is never lost or reordered",
                |_, state: &ModelState| !state.cluster.ghost.violations.acknowledged_lost,
            ),
            Property::always("applied prefixes never diverge", |_, state: &ModelState| {
                !state.cluster.ghost.violations.applied_diverged
            }),
            Property::always("terms never decrease", |_, state: &ModelState| {
                !state.cluster.ghost.violations.term_decreased
            }),
            Property::always(
                "no completion under a stale ruleset",
                |_, state: &ModelState| !state.cluster.ghost.violations.stale_ruleset,
            ),
            // Reachability goals: without them the invariants could hold vacuously.
            Property::sometimes("a new term completes requests", |_, state: &ModelState| {
                state
                    .cluster
                    .ghost
                    .completers
                    .iter()
                    .any(|(term, _)| *term > 1)
            }),
        ];
        if self.bounds.requests > 0 {
            properties.push(Property::sometimes(
                "a request is acknowledged",
                |_, state: &ModelState| !state.cluster.ghost.acknowledged.is_empty(),
            ));
        }
        if !self.bounds.leader_rule_changes.is_empty()
            || self.bounds.coordinator_rule_change.is_some()
        {
            properties.push(Property::sometimes("a ruleset change commits", |_, state: &ModelState| {
                state.cluster.ghost.committed.iter().any(|entry| {
                    matches!(entry.payload, Payload::Rules(ruleset) | Payload::Establish(ruleset) if ruleset != 0)
                })
            }));
        }
        if self.bounds.handoffs > 0 {
            properties.push(Property::sometimes(
                "a planned hand-off establishes the next term",
                |_, state: &ModelState| {
                    state.cluster.nodes.iter().any(|model| {
                        model.leader.as_ref().is_some_and(|leading| {
                            matches!(leading.agent, AgentRef::Handoff(_))
                                && leading.leader.is_established()
                        })
                    })
                },
            ));
        }
        properties
    }
}
