//! Fulfilling requests: the leader's side of two-phase sync, ruleset changes as requests,
//! planned hand-off, and what observers may see.
//!
//! ```text
//!  append(position) ───────────────► entry written locally, sent to the cohort
//!  on_ack(node, term, position) ────► Progress { durable advanced?, rulesets committed? }
//!  apply(position) ─────────────────► applied (<= durable); observers may now receive it
//!  propose_rules(position, ruleset) ► change in flight: durability needs BOTH rulesets
//!  begin_handoff(candidate), then handoff(agent) ► Handoff (planned leadership change)
//! ```
//!
//! An entry at position `p` is durable once the leader itself and one complete group of every
//! ruleset that applies at `p` have flushed `p`. The rulesets that apply at `p` are the one
//! known to be committed plus every ruleset change recorded at or before `p` that is not yet
//! committed. Entries from older terms never become durable on their own: the leader's first
//! entry (the establishment entry) must become durable first, and takes them with it.
//!
//! On PostgreSQL the counting is done by PostgreSQL itself from
//! [`Leader::rules`]`.to_postgres(..)`; this type is the reference the simulator and model
//! checker run, and the bookkeeping the tablet uses to know which ruleset is in force.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use crate::ids::{AgentId, NodeId, Term};
use crate::ruleset::{ActiveRules, Ruleset};

/// Why the leader refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaderError {
    /// Positions must strictly increase.
    #[error("position {position} does not follow the last position {last}")]
    PositionNotIncreasing {
        /// The position offered.
        position: u64,
        /// The last position appended.
        last: u64,
    },
    /// The leader is handing its term over and accepts nothing new.
    #[error("leader is handing over to {candidate}; retry on the new leader")]
    HandingOff {
        /// Where requests should go.
        candidate: NodeId,
    },
    /// A change may only start once the leader's own establishment is durable.
    #[error("leader of term {term} is not established yet")]
    NotEstablished {
        /// The leader's term.
        term: Term,
    },
    /// One ruleset change at a time keeps "both rulesets" meaning exactly two.
    #[error("a ruleset change is already in flight")]
    ChangeInFlight,
    /// After the change the leader could not make anything durable; hand over first.
    #[error(
        "{leader} is not eligible under the proposed ruleset; hand over to an eligible node first"
    )]
    NotEligibleUnderNewRules {
        /// This leader.
        leader: NodeId,
    },
    /// The hand-off candidate cannot lead under the rules in force.
    #[error("{candidate} is not eligible under the rules in force")]
    CandidateNotEligible {
        /// The refused candidate.
        candidate: NodeId,
    },
    /// An acknowledgement from another term is meaningless to this leader.
    #[error("acknowledgement for term {offered} reached the leader of term {term}")]
    WrongTerm {
        /// The ack's term.
        offered: Term,
        /// The leader's term.
        term: Term,
    },
    /// Only durable entries may be applied.
    #[error("position {position} is not durable (durable up to {durable:?})")]
    NotDurable {
        /// The position asked for.
        position: u64,
        /// The durable position.
        durable: Option<u64>,
    },
}

/// What an acknowledgement changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The new durable position, if it advanced.
    pub durable: Option<u64>,
    /// `true` if this acknowledgement made the establishment entry durable.
    pub established: bool,
    /// Ruleset changes that became committed, oldest first; the last is now in force.
    pub committed_rulesets: Vec<Ruleset>,
}

/// A planned leadership change, ready to be carried out.
///
/// The old leader must join `term` for `agent` on itself (stepping down) before it tells the
/// candidate to establish `term` with `rules`. No recruitment is needed: the old leader knows
/// every durable entry is in its log, and the candidate has flushed all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The next leader.
    pub candidate: NodeId,
    /// The term the candidate establishes.
    pub term: Term,
    /// The agent that owns `term` (the old leader acting as agent).
    pub agent: AgentId,
    /// Rules the candidate's establishment must satisfy.
    pub rules: ActiveRules,
    /// The last position of the old leader; the candidate has it.
    pub up_to: u64,
}

/// Why a hand-off cannot happen yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandoffNotReady {
    /// `begin_handoff` was not called.
    #[error("no hand-off was requested")]
    NotRequested,
    /// The candidate has not flushed everything yet.
    #[error("{candidate} has flushed up to {flushed:?}, the log ends at {last}")]
    CandidateBehind {
        /// The candidate.
        candidate: NodeId,
        /// What it has flushed.
        flushed: Option<u64>,
        /// The leader's last position.
        last: u64,
    },
    /// Requests in flight are completed before handing over, so no client sees an error.
    #[error("entries up to {last} are not durable yet (durable up to {durable:?})")]
    InFlight {
        /// The leader's last position.
        last: u64,
        /// The durable position.
        durable: Option<u64>,
    },
}

/// The leader of one term.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Leader {
    node: NodeId,
    term: Term,
    agent: AgentId,
    /// The ruleset known committed.
    /// Invariant: only replaced by a change whose position is durable.
    committed: Ruleset,
    /// Ruleset changes recorded in the log and not yet committed, with their positions.
    /// Invariant: positions strictly increase and exceed `durable`.
    changes: Vec<(u64, Ruleset)>,
    /// Position of this term's establishment entry.
    establishment: u64,
    /// Invariant: strictly increases with every append; `>= establishment`.
    last: u64,
    /// Highest position proven durable in this term.
    /// Invariant: never decreases; `None` or `Some(p)` with `establishment <= p <= last`.
    durable: Option<u64>,
    /// Highest position applied.
    /// Invariant: never decreases; never exceeds `durable`.
    applied: Option<u64>,
    /// Highest position each node (the leader included) has flushed in this term.
    /// Invariant: values never decrease.
    flushed: BTreeMap<NodeId, u64>,
    /// Hand-off target once a planned change has begun.
    handoff: Option<NodeId>,
}

impl Leader {
    /// Starts a leader whose establishment entry sits at `position`. `rules` are the rules
    /// establishment must satisfy (the ruleset in force on the chosen timeline plus every
    /// change pending in it, plus any change the agent makes); once the establishment entry
    /// is durable, `rules.target()` is in force.
    pub fn establish(
        node: NodeId,
        term: Term,
        agent: AgentId,
        rules: ActiveRules,
        position: u64,
    ) -> Self {
        let mut rulesets = rules.rulesets().iter().cloned();
        // ActiveRules is never empty.
        let committed = rulesets.next().unwrap_or_else(|| rules.current().clone());
        Self {
            node,
            term,
            agent,
            committed,
            changes: rulesets.map(|ruleset| (position, ruleset)).collect(),
            establishment: position,
            last: position,
            durable: None,
            applied: None,
            flushed: BTreeMap::new(),
            handoff: None,
        }
    }

    /// The leader's node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The leader's term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The agent that owns the term.
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }

    /// Whether the establishment entry is durable (the leader may acknowledge requests).
    pub fn is_established(&self) -> bool {
        self.durable.is_some()
    }

    /// Last appended position.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Position of the establishment entry.
    pub fn establishment(&self) -> u64 {
        self.establishment
    }

    /// Highest durable position, if any.
    pub fn durable(&self) -> Option<u64> {
        self.durable
    }

    /// Highest applied position, if any.
    pub fn applied(&self) -> Option<u64> {
        self.applied
    }

    /// Observers only ever receive applied entries: this is how far they may be sent.
    pub fn observer_limit(&self) -> Option<u64> {
        self.applied
    }

    /// The ruleset known committed.
    pub fn committed_ruleset(&self) -> &Ruleset {
        &self.committed
    }

    /// Every ruleset that must be satisfied for the next entry: the committed one and every
    /// change in flight. Compile this for `synchronous_standby_names`.
    pub fn rules(&self) -> ActiveRules {
        self.rules_at(self.last)
    }

    /// The rulesets that apply to the entry at `position`.
    pub fn rules_at(&self, position: u64) -> ActiveRules {
        let mut rules = ActiveRules::new(self.committed.clone());
        for (change_position, ruleset) in &self.changes {
            if *change_position <= position {
                rules.push(ruleset.clone());
            }
        }
        rules
    }

    /// Highest position `node` has flushed in this term.
    pub fn flushed(&self, node: &NodeId) -> Option<u64> {
        self.flushed.get(node).copied()
    }

    fn check_accepting(&self, position: u64) -> Result<(), LeaderError> {
        if let Some(candidate) = &self.handoff {
            return Err(LeaderError::HandingOff {
                candidate: candidate.clone(),
            });
        }
        if position <= self.last {
            return Err(LeaderError::PositionNotIncreasing {
                position,
                last: self.last,
            });
        }
        Ok(())
    }

    /// Records a request entry written at `position`.
    pub fn append(&mut self, position: u64) -> Result<(), LeaderError> {
        self.check_accepting(position)?;
        self.last = position;
        Ok(())
    }

    /// Records a ruleset change entry written at `position`. From it on, and until it is
    /// durable under both, entries need the old and the new ruleset.
    pub fn propose_rules(&mut self, position: u64, ruleset: Ruleset) -> Result<(), LeaderError> {
        self.check_accepting(position)?;
        if !self.is_established() {
            return Err(LeaderError::NotEstablished { term: self.term });
        }
        if !self.changes.is_empty() {
            return Err(LeaderError::ChangeInFlight);
        }
        if !ruleset.is_eligible(&self.node) {
            return Err(LeaderError::NotEligibleUnderNewRules {
                leader: self.node.clone(),
            });
        }
        self.last = position;
        self.changes.push((position, ruleset));
        Ok(())
    }

    /// Records that `node` (possibly the leader itself) has flushed everything up to
    /// `position` of this leader's log in `term`.
    pub fn on_ack(
        &mut self,
        node: &NodeId,
        term: Term,
        position: u64,
    ) -> Result<Progress, LeaderError> {
        if term != self.term {
            return Err(LeaderError::WrongTerm {
                offered: term,
                term: self.term,
            });
        }
        let position = position.min(self.last);
        let entry = self.flushed.entry(node.clone()).or_insert(position);
        *entry = (*entry).max(position);
        Ok(self.advance())
    }

    fn acknowledged_at(&self, position: u64) -> BTreeSet<NodeId> {
        self.flushed
            .iter()
            .filter(|(_, flushed)| **flushed >= position)
            .map(|(node, _)| node.clone())
            .collect()
    }

    fn advance(&mut self) -> Progress {
        let mut progress = Progress::default();
        let floor = self
            .durable
            .map_or(self.establishment, |durable| durable + 1);
        let mut candidates: Vec<u64> = self
            .flushed
            .values()
            .copied()
            .filter(|position| *position >= floor)
            .collect();
        candidates.sort_unstable_by(|left, right| right.cmp(left));
        candidates.dedup();
        let Some(position) = candidates.into_iter().find(|position| {
            let acknowledged = self.acknowledged_at(*position);
            acknowledged.contains(&self.node)
                && self
                    .rules_at(*position)
                    .is_durable(&self.node, &acknowledged)
        }) else {
            return progress;
        };
        progress.established = self.durable.is_none();
        self.durable = Some(position);
        progress.durable = Some(position);
        while self
            .changes
            .first()
            .is_some_and(|(change_position, _)| *change_position <= position)
        {
            let (_, ruleset) = self.changes.remove(0);
            self.committed = ruleset.clone();
            progress.committed_rulesets.push(ruleset);
        }
        progress
    }

    /// Records that entries up to `position` were applied. Only durable entries may be.
    pub fn apply(&mut self, position: u64) -> Result<(), LeaderError> {
        match self.durable {
            Some(durable) if position <= durable => {
                self.applied = Some(
                    self.applied
                        .map_or(position, |applied| applied.max(position)),
                );
                Ok(())
            }
            durable => Err(LeaderError::NotDurable { position, durable }),
        }
    }

    /// Starts a planned hand-off to `candidate`: no new entries are accepted from now on.
    pub fn begin_handoff(&mut self, candidate: NodeId) -> Result<(), LeaderError> {
        if !self.is_established() {
            return Err(LeaderError::NotEstablished { term: self.term });
        }
        if !self.rules().is_eligible(&candidate) {
            return Err(LeaderError::CandidateNotEligible { candidate });
        }
        self.handoff = Some(candidate);
        Ok(())
    }

    /// The hand-off, once the candidate has flushed the whole log and every entry is durable.
    pub fn handoff(&self, agent: AgentId) -> Result<Handoff, HandoffNotReady> {
        let Some(candidate) = &self.handoff else {
            return Err(HandoffNotReady::NotRequested);
        };
        let flushed = self.flushed(candidate);
        if flushed.is_none_or(|flushed| flushed < self.last) {
            return Err(HandoffNotReady::CandidateBehind {
                candidate: candidate.clone(),
                flushed,
                last: self.last,
            });
        }
        if self.durable != Some(self.last) {
            return Err(HandoffNotReady::InFlight {
                last: self.last,
                durable: self.durable,
            });
        }
        Ok(Handoff {
            candidate: candidate.clone(),
            term: self.term.next(),
            agent,
            rules: self.rules(),
            up_to: self.last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::tests::{node, series_example, set};

    fn agent() -> AgentId {
        AgentId::new("coordinator-1").expect("valid")
    }

    fn n1_leader(rules: ActiveRules) -> Leader {
        Leader::establish(node("N1"), Term(3), agent(), rules, 10)
    }

    fn or_ruleset() -> Ruleset {
        Ruleset::new(
            series_example().cohort().clone(),
            [
                (node("N1"), vec![set(&["N2"]), set(&["N3"])]),
                (node("N4"), vec![set(&["N5"]), set(&["N6"])]),
            ],
        )
        .expect("valid")
    }

    #[test]
    fn entries_become_durable_only_with_a_complete_group_and_the_leader() {
        // Goal: N1's entries need the leader plus both N2 and N3, in this term.
        let mut leader = n1_leader(ActiveRules::new(series_example()));
        leader.append(11).expect("append");
        assert_eq!(
            leader.on_ack(&node("N2"), Term(3), 11),
            Ok(Progress::default())
        );
        assert_eq!(
            leader.on_ack(&node("N3"), Term(3), 11),
            Ok(Progress::default())
        );
        let progress = leader.on_ack(&node("N1"), Term(3), 11).expect("same term");
        assert_eq!(progress.durable, Some(11));
        assert!(progress.established);
        assert_eq!(
            leader.on_ack(&node("N2"), Term(2), 12),
            Err(LeaderError::WrongTerm {
                offered: Term(2),
                term: Term(3)
            })
        );
    }

    #[test]
    fn majority_of_acks_is_not_enough_when_the_policy_says_otherwise() {
        // Goal: five of six nodes acking is not durable for N1 if N3 is missing.
        let mut leader = n1_leader(ActiveRules::new(series_example()));
        for name in ["N1", "N2", "N4", "N5", "N6"] {
            let progress = leader.on_ack(&node(name), Term(3), 10).expect("same term");
            assert_eq!(progress.durable, None, "{name}");
        }
        assert_eq!(
            leader
                .on_ack(&node("N3"), Term(3), 10)
                .expect("ack")
                .durable,
            Some(10)
        );
    }

    #[test]
    fn a_ruleset_change_needs_both_rulesets_until_it_commits() {
        // Goal: "N2 and N3" -> "N2 or N3": the change and what follows need both until durable.
        let mut leader = n1_leader(ActiveRules::new(series_example()));
        for name in ["N1", "N2", "N3"] {
            leader.on_ack(&node(name), Term(3), 10).expect("ack");
        }
        leader.propose_rules(11, or_ruleset()).expect("propose");
        assert_eq!(
            leader.propose_rules(12, or_ruleset()),
            Err(LeaderError::ChangeInFlight)
        );
        leader.on_ack(&node("N1"), Term(3), 11).expect("ack");
        let progress = leader.on_ack(&node("N2"), Term(3), 11).expect("ack");
        assert_eq!(progress.durable, None, "the old ruleset still needs N3");
        let progress = leader.on_ack(&node("N3"), Term(3), 11).expect("ack");
        assert_eq!(progress.durable, Some(11));
        assert_eq!(progress.committed_rulesets, vec![or_ruleset()]);
        leader.append(12).expect("append");
        leader.on_ack(&node("N1"), Term(3), 12).expect("ack");
        let progress = leader.on_ack(&node("N2"), Term(3), 12).expect("ack");
        assert_eq!(
            progress.durable,
            Some(12),
            "the new ruleset alone applies now"
        );
    }

    #[test]
    fn establishment_with_a_pending_change_needs_every_ruleset() {
        // Goal: a leader establishing over a pending change satisfies both rulesets first.
        let rules = ActiveRules::new(series_example()).with(or_ruleset());
        let mut leader = n1_leader(rules);
        leader.on_ack(&node("N1"), Term(3), 10).expect("ack");
        assert_eq!(
            leader
                .on_ack(&node("N2"), Term(3), 10)
                .expect("ack")
                .durable,
            None
        );
        let progress = leader.on_ack(&node("N3"), Term(3), 10).expect("ack");
        assert!(progress.established);
        assert_eq!(progress.committed_rulesets, vec![or_ruleset()]);
        assert_eq!(leader.committed_ruleset(), &or_ruleset());
    }

    #[test]
    fn apply_never_passes_durable_and_bounds_observers() {
        // Goal: only durable entries are applied, and observers see only applied ones.
        let mut leader = n1_leader(ActiveRules::new(series_example()));
        assert!(leader.apply(10).is_err());
        for name in ["N1", "N2", "N3"] {
            leader.on_ack(&node(name), Term(3), 10).expect("ack");
        }
        leader.append(11).expect("append");
        assert_eq!(leader.observer_limit(), None);
        leader.apply(10).expect("durable");
        assert_eq!(leader.observer_limit(), Some(10));
        assert!(leader.apply(11).is_err());
    }

    #[test]
    fn planned_handoff_waits_for_candidate_and_in_flight_requests() {
        // Goal: the hand-off stops new requests and is ready only when nothing can be lost.
        let rules = ActiveRules::new(or_ruleset());
        let mut leader = n1_leader(rules.clone());
        leader.on_ack(&node("N1"), Term(3), 10).expect("ack");
        leader.on_ack(&node("N2"), Term(3), 10).expect("ack");
        leader.append(11).expect("append");
        assert_eq!(
            leader.begin_handoff(node("N2")),
            Err(LeaderError::CandidateNotEligible {
                candidate: node("N2")
            })
        );
        leader.begin_handoff(node("N4")).expect("eligible");
        assert_eq!(
            leader.append(12),
            Err(LeaderError::HandingOff {
                candidate: node("N4")
            })
        );
        let next_agent = AgentId::new("leader-N1").expect("valid");
        assert!(matches!(
            leader.handoff(next_agent.clone()),
            Err(HandoffNotReady::CandidateBehind { .. })
        ));
        leader.on_ack(&node("N4"), Term(3), 11).expect("ack");
        assert!(matches!(
            leader.handoff(next_agent.clone()),
            Err(HandoffNotReady::InFlight { .. })
        ));
        leader.on_ack(&node("N1"), Term(3), 11).expect("ack");
        leader.on_ack(&node("N3"), Term(3), 11).expect("ack");
        assert_eq!(
            leader.handoff(next_agent.clone()),
            Ok(Handoff {
                candidate: node("N4"),
                term: Term(4),
                agent: next_agent,
                rules,
                up_to: 11,
            })
        );
    }
}
