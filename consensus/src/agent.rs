//! Changing leadership: the agent (a coordinator) as a synchronous state machine.
//!
//! ```text
//!  LeadershipChange::start ──► [Recruit(node, T, agent) ...]
//!        │
//!  step(Recruited | Refused) ─► [Recruit ...] for nodes named by newly discovered rulesets
//!        │   queries: revocation(), candidacy(c), most_progressed(), known_rulesets()
//!  decide(preference) ───────► [CatchUp(candidate ← source, up to position)]   if behind
//!        │                      [Promote(candidate)]                           otherwise
//!  step(CaughtUp) ───────────► [Promote(candidate)]
//!  step(Promoted) ───────────► [Repoint(other, → candidate) ..., Establish(candidate, rules)]
//!  step(Established) ────────► [Delegate(candidate)]                           Done
//! ```
//!
//! Safety argument in one paragraph. Revocation is checked against every ruleset the agent can
//! know of: the one it believed, and every ruleset (applied or pending) reported by any
//! recruited node. A ruleset can only take over after being made durable under its
//! predecessor, so a recruitment that revokes the predecessor always meets a node that reports
//! the successor; checking every reported ruleset therefore covers the whole chain. Once every
//! eligible primary is revoked, no entry can become durable in an older term any more, and
//! every entry that did is on the most progressed recruited timeline (highest last term, then
//! position). The candidate is caught up to that timeline and establishes the term with an
//! entry of its own, durable under the timeline's rules (applied and pending) and any ruleset
//! this agent introduces; only then are the older entries durable in the new term.

use std::collections::{BTreeMap, BTreeSet};

use crate::faults::Faults;
use crate::ids::{AgentId, LogPosition, NodeId, Term};
use crate::node::{RecruitAnswer, Refusal};
use crate::policy::{Majority, Policy};
use crate::ruleset::{ActiveRules, Ruleset};

/// What the agent asks the outside world to do. Every command carries the term and agent, so
/// a node can fence stale ones with [`crate::node::NodeState::admit`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Recruit `node` into `term`: it steps down from older terms, persists the term, reports
    /// its log.
    Recruit {
        /// The node to recruit.
        node: NodeId,
        /// The new term.
        term: Term,
        /// This agent.
        agent: AgentId,
    },
    /// Bring `candidate`'s log to `source`'s timeline up to `up_to` (rewinding any divergent
    /// suffix first), then report [`Input::CaughtUp`].
    CatchUp {
        /// The node that will lead.
        candidate: NodeId,
        /// The node holding the most progressed timeline.
        source: NodeId,
        /// The end of that timeline.
        up_to: LogPosition,
        /// The new term.
        term: Term,
        /// This agent.
        agent: AgentId,
    },
    /// Make `candidate` able to write (on PostgreSQL: promote it); it does not serve clients
    /// yet. Report [`Input::Promoted`].
    Promote {
        /// The node that will lead.
        candidate: NodeId,
        /// The new term.
        term: Term,
        /// This agent.
        agent: AgentId,
    },
    /// Make `node` follow `primary` in `term` (repairing a divergent log by rewinding).
    Repoint {
        /// The follower.
        node: NodeId,
        /// The new primary.
        primary: NodeId,
        /// The new term.
        term: Term,
        /// This agent.
        agent: AgentId,
    },
    /// Have `candidate` write the establishment entry of `term` (recording `rules.target()`)
    /// and wait until it is durable under every ruleset in `rules`. Report
    /// [`Input::Established`].
    Establish {
        /// The node that will lead.
        candidate: NodeId,
        /// The new term.
        term: Term,
        /// This agent.
        agent: AgentId,
        /// Every ruleset establishment must satisfy, oldest first.
        rules: ActiveRules,
    },
    /// Hand the term to `candidate`: it now leads and serves requests.
    Delegate {
        /// The new leader.
        candidate: NodeId,
        /// The term it leads.
        term: Term,
        /// This agent.
        agent: AgentId,
    },
}

/// What the outside world reports back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// A node joined the term and reported its log.
    Recruited(RecruitAnswer),
    /// A node refused to join.
    Refused {
        /// The refusing node.
        node: NodeId,
        /// Why.
        refusal: Refusal,
    },
    /// The candidate now holds the chosen timeline.
    CaughtUp {
        /// The candidate.
        node: NodeId,
        /// The end of its log.
        position: LogPosition,
    },
    /// The candidate can write.
    Promoted {
        /// The candidate.
        node: NodeId,
    },
    /// The establishment entry is durable.
    Established {
        /// The candidate.
        node: NodeId,
        /// Position of the establishment entry.
        position: u64,
    },
}

/// Where a leadership change stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Collecting recruitment answers; `decide` may be called.
    Recruiting,
    /// Waiting for the candidate to catch up.
    CatchingUp,
    /// Waiting for the candidate to be promoted.
    Promoting,
    /// Waiting for establishment to become durable.
    Establishing,
    /// The term is delegated to the candidate.
    Done,
}

/// The decision taken by [`LeadershipChange::decide`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    /// The node that will lead.
    pub candidate: NodeId,
    /// The node whose timeline was chosen.
    pub source: NodeId,
    /// The end of the chosen timeline.
    pub timeline: LogPosition,
    /// The rules establishment must satisfy.
    pub rules: ActiveRules,
}

/// An eligible primary that the recruited set does not revoke, and under which ruleset.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Unrevoked {
    /// The primary that could still complete requests.
    pub primary: NodeId,
    /// The ruleset under which it could.
    pub ruleset: Ruleset,
}

/// Why a node cannot be the candidate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CandidacyError {
    /// It has not joined the term for this agent.
    #[error("{node} is not recruited")]
    NotRecruited {
        /// The node.
        node: NodeId,
    },
    /// There is nothing to base a decision on yet.
    #[error("no node has answered yet")]
    NoAnswers,
    /// It cannot lead under one of the rulesets establishment must satisfy.
    #[error("{node} is not eligible under {ruleset}")]
    NotEligible {
        /// The node.
        node: NodeId,
        /// The ruleset.
        ruleset: Ruleset,
    },
    /// No complete group of it is recruited under one of the rulesets.
    #[error("no complete group of {node} under {ruleset} is recruited")]
    NoCompleteGroup {
        /// The node.
        node: NodeId,
        /// The ruleset.
        ruleset: Ruleset,
    },
}

/// Why `decide` cannot choose yet, or an input does not fit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Some eligible primary could still complete requests.
    #[error("revocation incomplete: {} eligible primaries could still complete requests", unrevoked.len())]
    RevocationIncomplete {
        /// Who, under which ruleset.
        unrevoked: Vec<Unrevoked>,
    },
    /// No node in the preference order can be the candidate.
    #[error("no preferred node can be the candidate")]
    NoCandidate {
        /// Each preferred node with the reason it was rejected.
        rejected: Vec<CandidacyError>,
    },
    /// `decide` was already successful.
    #[error("the leadership change was already decided")]
    AlreadyDecided,
    /// An answer for a different term or agent.
    #[error("answer from {node} is for term {term} of agent {agent}, not this change")]
    ForeignAnswer {
        /// The node.
        node: NodeId,
        /// Its term.
        term: Term,
        /// Its agent.
        agent: AgentId,
    },
    /// The input does not belong to the current phase or names the wrong node.
    #[error("unexpected input {input:?} in phase {phase:?}")]
    UnexpectedInput {
        /// The input.
        input: Box<Input>,
        /// The phase it arrived in.
        phase: Phase,
    },
}

/// What a coordinator knows when it starts a leadership change.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChangeRequest {
    /// This coordinator.
    pub agent: AgentId,
    /// The new term; higher than any the coordinator has seen.
    pub term: Term,
    /// Nodes to recruit (typically every reachable cohort member).
    pub nodes: Vec<NodeId>,
    /// The ruleset the coordinator believes in (from topology); may be stale.
    pub believed_ruleset: Ruleset,
    /// The primary the coordinator believes in, if any; used for candidate preference only.
    pub believed_primary: Option<NodeId>,
    /// A ruleset to switch to as part of this change (a coordinator-driven rule change).
    pub new_ruleset: Option<Ruleset>,
}

/// One leadership change by one agent for one term.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeadershipChange {
    request: ChangeRequest,
    /// Nodes a Recruit was emitted for.
    asked: BTreeSet<NodeId>,
    /// Invariant: every answer is for `request.term` and `request.agent`.
    answers: BTreeMap<NodeId, RecruitAnswer>,
    refusals: BTreeMap<NodeId, Refusal>,
    phase: Phase,
    /// Invariant: `Some` exactly when `phase != Recruiting`.
    plan: Option<Plan>,
    faults: Faults,
}

impl LeadershipChange {
    /// Starts a change: emits a Recruit for every node in the request.
    pub fn start(request: ChangeRequest) -> (Self, Vec<Command>) {
        let mut change = Self {
            request,
            asked: BTreeSet::new(),
            answers: BTreeMap::new(),
            refusals: BTreeMap::new(),
            phase: Phase::Recruiting,
            plan: None,
            faults: Faults::NONE,
        };
        let nodes = change.request.nodes.clone();
        let commands = change.recruit(nodes);
        (change, commands)
    }

    /// Re-introduces deliberate mistakes (tests only).
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The term being established.
    pub fn term(&self) -> Term {
        self.request.term
    }

    /// This agent.
    pub fn agent(&self) -> &AgentId {
        &self.request.agent
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The decision, once taken.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// Answers received so far.
    pub fn answers(&self) -> &BTreeMap<NodeId, RecruitAnswer> {
        &self.answers
    }

    /// Nodes that have joined the term for this agent.
    pub fn recruited(&self) -> BTreeSet<NodeId> {
        self.answers.keys().cloned().collect()
    }

    /// The highest term any node reported; a retry must use a higher one.
    pub fn highest_term_seen(&self) -> Term {
        self.refusals
            .values()
            .map(Refusal::known_term)
            .chain(std::iter::once(self.request.term))
            .max()
            .unwrap_or(self.request.term)
    }

    fn recruit(&mut self, nodes: impl IntoIterator<Item = NodeId>) -> Vec<Command> {
        let mut commands = Vec::new();
        for node in nodes {
            if self.asked.insert(node.clone()) {
                commands.push(Command::Recruit {
                    node,
                    term: self.request.term,
                    agent: self.request.agent.clone(),
                });
            }
        }
        commands
    }

    /// Every ruleset revocation is checked against: the believed one, each reported one
    /// (applied and pending) and the one this change introduces, without duplicates.
    pub fn known_rulesets(&self) -> Vec<Ruleset> {
        let mut known: Vec<Ruleset> = vec![self.request.believed_ruleset.clone()];
        let reported = self
            .answers
            .values()
            .flat_map(|answer| answer.log.ruleset.iter().chain(answer.log.pending.iter()));
        for ruleset in reported.chain(self.request.new_ruleset.iter()) {
            if !known.contains(ruleset) {
                known.push(ruleset.clone());
            }
        }
        known
    }

    /// With the majority fault on, every ruleset is replaced by "majority of its cohort".
    fn as_judged(&self, ruleset: &Ruleset) -> Ruleset {
        if self.faults.majority_quorums {
            Majority
                .compile(ruleset.cohort())
                .unwrap_or_else(|_| ruleset.clone())
        } else {
            ruleset.clone()
        }
    }

    /// Eligible primaries, under any known ruleset, that the recruited set does not revoke.
    pub fn revocation(&self) -> Vec<Unrevoked> {
        let recruited = self.recruited();
        let mut unrevoked = Vec::new();
        for ruleset in self.known_rulesets() {
            let judged = self.as_judged(&ruleset);
            for primary in judged.unrevoked_primaries(&recruited) {
                if self.faults.revoke_only_believed_primary
                    && self.request.believed_primary.as_ref() != Some(&primary)
                {
                    continue;
                }
                unrevoked.push(Unrevoked {
                    primary,
                    ruleset: ruleset.clone(),
                });
            }
        }
        unrevoked
    }

    /// The recruited node holding the most progressed timeline: highest last-entry term,
    /// then highest position (ties go to the lowest node id).
    pub fn most_progressed(&self) -> Option<&RecruitAnswer> {
        let key = |answer: &RecruitAnswer| {
            if self.faults.longest_log_wins {
                (answer.log.last.index, answer.log.last.term.0)
            } else {
                (answer.log.last.term.0, answer.log.last.index)
            }
        };
        // `max_by_key` keeps the last maximum; iterate in reverse id order so the lowest id wins.
        self.answers.values().rev().max_by_key(|answer| key(answer))
    }

    /// The rules establishment must satisfy: the chosen timeline's applied ruleset (or the
    /// believed one if it reports none), the changes pending in it, and this change's new
    /// ruleset.
    pub fn establishment_rules(&self) -> Option<ActiveRules> {
        let source = self.most_progressed()?;
        let base = source
            .log
            .ruleset
            .clone()
            .unwrap_or_else(|| self.request.believed_ruleset.clone());
        let mut rules = ActiveRules::new(base);
        for pending in &source.log.pending {
            rules.push(pending.clone());
        }
        if let Some(new_ruleset) = &self.request.new_ruleset {
            rules.push(new_ruleset.clone());
        }
        Some(rules)
    }

    /// Whether `candidate` may lead: recruited, eligible and with a complete recruited group
    /// under every ruleset establishment must satisfy.
    pub fn candidacy(&self, candidate: &NodeId) -> Result<(), CandidacyError> {
        let Some(rules) = self.establishment_rules() else {
            return Err(CandidacyError::NoAnswers);
        };
        let recruited = self.recruited();
        if !recruited.contains(candidate) {
            return Err(CandidacyError::NotRecruited {
                node: candidate.clone(),
            });
        }
        for ruleset in rules.rulesets() {
            let judged = self.as_judged(ruleset);
            if !judged.is_eligible(candidate) {
                return Err(CandidacyError::NotEligible {
                    node: candidate.clone(),
                    ruleset: ruleset.clone(),
                });
            }
            if !judged.allows_candidacy(candidate, &recruited) {
                return Err(CandidacyError::NoCompleteGroup {
                    node: candidate.clone(),
                    ruleset: ruleset.clone(),
                });
            }
        }
        Ok(())
    }

    /// The recruited nodes ordered the way Tessera prefers candidates: same zone as
    /// `old_primary` first, then most caught up, then by id.
    pub fn default_preference(&self, old_primary: Option<&NodeId>) -> Vec<NodeId> {
        let known = self.known_rulesets();
        let zone_of = |node: &NodeId| {
            known
                .iter()
                .find_map(|ruleset| ruleset.cohort().properties(node))
                .map(|properties| properties.zone.clone())
        };
        let old_zone = old_primary.and_then(zone_of);
        let mut ordered: Vec<&RecruitAnswer> = self.answers.values().collect();
        ordered.sort_by(|left, right| {
            let same_zone =
                |answer: &RecruitAnswer| old_zone.is_some() && zone_of(&answer.node) == old_zone;
            same_zone(right)
                .cmp(&same_zone(left))
                .then(right.log.last.cmp(&left.log.last))
                .then(left.node.cmp(&right.node))
        });
        ordered
            .into_iter()
            .map(|answer| answer.node.clone())
            .collect()
    }

    /// Chooses the first node of `preference` that satisfies candidacy, once every eligible
    /// primary is revoked, and emits the first step of propagation.
    pub fn decide(&mut self, preference: &[NodeId]) -> Result<Vec<Command>, AgentError> {
        if self.phase != Phase::Recruiting {
            return Err(AgentError::AlreadyDecided);
        }
        let unrevoked = self.revocation();
        if !unrevoked.is_empty() {
            return Err(AgentError::RevocationIncomplete { unrevoked });
        }
        let (Some(source), Some(rules)) = (self.most_progressed(), self.establishment_rules())
        else {
            return Err(AgentError::NoCandidate {
                rejected: vec![CandidacyError::NoAnswers],
            });
        };
        let (source, timeline) = (source.node.clone(), source.log.last);
        let mut rejected = Vec::new();
        let mut chosen = None;
        for candidate in preference {
            match self.candidacy(candidate) {
                Ok(()) => {
                    chosen = Some(candidate.clone());
                    break;
                }
                Err(reason) => rejected.push(reason),
            }
        }
        let Some(candidate) = chosen else {
            return Err(AgentError::NoCandidate { rejected });
        };
        let candidate_last = self.answers.get(&candidate).map(|answer| answer.log.last);
        let (term, agent) = (self.request.term, self.request.agent.clone());
        let command = if candidate_last == Some(timeline) {
            self.phase = Phase::Promoting;
            Command::Promote {
                candidate: candidate.clone(),
                term,
                agent,
            }
        } else {
            self.phase = Phase::CatchingUp;
            Command::CatchUp {
                candidate: candidate.clone(),
                source: source.clone(),
                up_to: timeline,
                term,
                agent,
            }
        };
        self.plan = Some(Plan {
            candidate,
            source,
            timeline,
            rules,
        });
        Ok(vec![command])
    }

    /// Feeds one input; returns the commands it triggers.
    pub fn step(&mut self, input: Input) -> Result<Vec<Command>, AgentError> {
        let (term, agent) = (self.request.term, self.request.agent.clone());
        let candidate = self.plan.as_ref().map(|plan| plan.candidate.clone());
        let unexpected = |input: Input, phase: Phase| AgentError::UnexpectedInput {
            input: Box::new(input),
            phase,
        };
        match input {
            Input::Recruited(answer) => {
                if answer.term != term || answer.agent != agent {
                    return Err(AgentError::ForeignAnswer {
                        node: answer.node,
                        term: answer.term,
                        agent: answer.agent,
                    });
                }
                let node = answer.node.clone();
                let newly_named: Vec<NodeId> = answer
                    .log
                    .ruleset
                    .iter()
                    .chain(answer.log.pending.iter())
                    .flat_map(|ruleset| ruleset.cohort().nodes().cloned().collect::<Vec<_>>())
                    .collect();
                self.refusals.remove(&node);
                self.answers.insert(node.clone(), answer);
                let mut commands = self.recruit(newly_named);
                if matches!(self.phase, Phase::Establishing | Phase::Done)
                    && candidate.as_ref() != Some(&node)
                    && let Some(primary) = candidate
                {
                    commands.push(Command::Repoint {
                        node,
                        primary,
                        term,
                        agent,
                    });
                }
                Ok(commands)
            }
            Input::Refused { node, refusal } => {
                if !self.answers.contains_key(&node) {
                    self.refusals.insert(node, refusal);
                }
                Ok(Vec::new())
            }
            Input::CaughtUp { ref node, position } => {
                let timeline = self.plan.as_ref().map(|plan| plan.timeline);
                if self.phase != Phase::CatchingUp
                    || candidate.as_ref() != Some(node)
                    || Some(position) < timeline
                {
                    return Err(unexpected(input, self.phase));
                }
                self.phase = Phase::Promoting;
                Ok(vec![Command::Promote {
                    candidate: node.clone(),
                    term,
                    agent,
                }])
            }
            Input::Promoted { ref node } => {
                if self.phase != Phase::Promoting || candidate.as_ref() != Some(node) {
                    return Err(unexpected(input, self.phase));
                }
                self.phase = Phase::Establishing;
                let mut commands: Vec<Command> = self
                    .answers
                    .keys()
                    .filter(|other| *other != node)
                    .map(|other| Command::Repoint {
                        node: other.clone(),
                        primary: node.clone(),
                        term,
                        agent: agent.clone(),
                    })
                    .collect();
                let rules = self
                    .plan
                    .as_ref()
                    .map(|plan| plan.rules.clone())
                    .ok_or_else(|| unexpected(input.clone(), self.phase))?;
                commands.push(Command::Establish {
                    candidate: node.clone(),
                    term,
                    agent,
                    rules,
                });
                Ok(commands)
            }
            Input::Established { ref node, .. } => {
                if self.phase != Phase::Establishing || candidate.as_ref() != Some(node) {
                    return Err(unexpected(input, self.phase));
                }
                self.phase = Phase::Done;
                Ok(vec![Command::Delegate {
                    candidate: node.clone(),
                    term,
                    agent,
                }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::LogSummary;
    use crate::ruleset::tests::{node, series_example, set};

    fn agent() -> AgentId {
        AgentId::new("coordinator-1").expect("valid")
    }

    fn answer(name: &str, last_term: u64, index: u64) -> RecruitAnswer {
        RecruitAnswer {
            node: node(name),
            term: Term(7),
            agent: agent(),
            log: LogSummary {
                last: LogPosition::new(Term(last_term), index),
                ruleset: Some(series_example()),
                pending: Vec::new(),
            },
        }
    }

    fn start() -> LeadershipChange {
        let (change, _) = LeadershipChange::start(ChangeRequest {
            agent: agent(),
            term: Term(7),
            nodes: ["N1", "N2", "N3", "N4", "N5", "N6"].map(node).to_vec(),
            believed_ruleset: series_example(),
            believed_primary: Some(node("N1")),
            new_ruleset: None,
        });
        change
    }

    #[test]
    fn start_recruits_every_requested_node_once() {
        // Goal: the first commands are exactly one Recruit per node, in the new term.
        let (_, commands) = LeadershipChange::start(ChangeRequest {
            agent: agent(),
            term: Term(7),
            nodes: vec![node("N1"), node("N2"), node("N1")],
            believed_ruleset: series_example(),
            believed_primary: None,
            new_ruleset: None,
        });
        assert_eq!(
            commands,
            vec![
                Command::Recruit {
                    node: node("N1"),
                    term: Term(7),
                    agent: agent()
                },
                Command::Recruit {
                    node: node("N2"),
                    term: Term(7),
                    agent: agent()
                },
            ]
        );
    }

    #[test]
    fn full_sequence_emits_exact_commands() {
        // Goal: recruit -> catch up -> promote -> repoint+establish -> delegate, command by command.
        let mut change = start();
        for (name, last_term, index) in [("N3", 6, 3), ("N4", 5, 2), ("N5", 5, 1)] {
            change
                .step(Input::Recruited(answer(name, last_term, index)))
                .expect("answer");
        }
        assert_eq!(change.revocation(), vec![]);
        assert_eq!(
            change.most_progressed().map(|a| a.node.clone()),
            Some(node("N3"))
        );
        let commands = change.decide(&[node("N1"), node("N4")]).expect("decides");
        assert_eq!(
            commands,
            vec![Command::CatchUp {
                candidate: node("N4"),
                source: node("N3"),
                up_to: LogPosition::new(Term(6), 3),
                term: Term(7),
                agent: agent(),
            }]
        );
        let commands = change
            .step(Input::CaughtUp {
                node: node("N4"),
                position: LogPosition::new(Term(6), 3),
            })
            .expect("caught up");
        assert_eq!(
            commands,
            vec![Command::Promote {
                candidate: node("N4"),
                term: Term(7),
                agent: agent()
            }]
        );
        let commands = change
            .step(Input::Promoted { node: node("N4") })
            .expect("promoted");
        let repoint = |name: &str| Command::Repoint {
            node: node(name),
            primary: node("N4"),
            term: Term(7),
            agent: agent(),
        };
        assert_eq!(
            commands,
            vec![
                repoint("N3"),
                repoint("N5"),
                Command::Establish {
                    candidate: node("N4"),
                    term: Term(7),
                    agent: agent(),
                    rules: ActiveRules::new(series_example()),
                },
            ]
        );
        // A late answer is repointed at the new primary straight away.
        let commands = change
            .step(Input::Recruited(answer("N6", 5, 1)))
            .expect("late answer");
        assert_eq!(commands, vec![repoint("N6")]);
        let commands = change
            .step(Input::Established {
                node: node("N4"),
                position: 4,
            })
            .expect("established");
        assert_eq!(
            commands,
            vec![Command::Delegate {
                candidate: node("N4"),
                term: Term(7),
                agent: agent()
            }]
        );
        assert_eq!(change.phase(), Phase::Done);
    }

    #[test]
    fn inputs_out_of_order_are_rejected() {
        // Goal: a Promoted before any decision, or from the wrong node, is a typed error.
        let mut change = start();
        assert!(matches!(
            change.step(Input::Promoted { node: node("N4") }),
            Err(AgentError::UnexpectedInput {
                phase: Phase::Recruiting,
                ..
            })
        ));
        let mut foreign = answer("N3", 6, 3);
        foreign.term = Term(8);
        assert!(matches!(
            change.step(Input::Recruited(foreign)),
            Err(AgentError::ForeignAnswer { .. })
        ));
    }

    #[test]
    fn decide_refuses_until_every_eligible_primary_is_revoked() {
        // Goal: revoking the believed primary N1 is not enough while N4 could still commit.
        let mut change = start();
        change
            .step(Input::Recruited(answer("N2", 5, 2)))
            .expect("answer");
        change
            .step(Input::Recruited(answer("N3", 5, 2)))
            .expect("answer");
        let result = change.decide(&[node("N2")]);
        assert_eq!(
            result,
            Err(AgentError::RevocationIncomplete {
                unrevoked: vec![Unrevoked {
                    primary: node("N4"),
                    ruleset: series_example()
                }]
            })
        );
        let mut faulty = start().with_faults(Faults {
            revoke_only_believed_primary: true,
            ..Faults::NONE
        });
        faulty
            .step(Input::Recruited(answer("N2", 5, 2)))
            .expect("answer");
        faulty
            .step(Input::Recruited(answer("N3", 5, 2)))
            .expect("answer");
        assert_eq!(faulty.revocation(), vec![], "the fault hides N4");
    }

    #[test]
    fn candidate_preference_is_honoured_in_order() {
        // Goal: the first preferred node that satisfies candidacy is chosen; others are explained.
        let mut change = start();
        for name in ["N1", "N2", "N3", "N4", "N5"] {
            change
                .step(Input::Recruited(answer(name, 5, 2)))
                .expect("answer");
        }
        let commands = change
            .decide(&[node("N2"), node("N4"), node("N1")])
            .expect("decides");
        assert_eq!(
            commands,
            vec![Command::Promote {
                candidate: node("N4"),
                term: Term(7),
                agent: agent()
            }]
        );
        assert!(matches!(
            change.decide(&[node("N1")]),
            Err(AgentError::AlreadyDecided)
        ));
    }

    #[test]
    fn default_preference_puts_the_old_primarys_zone_first_then_progress() {
        // Goal: same zone as the old primary first, then the most caught up.
        let mut change = start();
        for (name, last_term, index) in [("N2", 5, 2), ("N3", 5, 3), ("N4", 5, 9), ("N5", 6, 1)] {
            change
                .step(Input::Recruited(answer(name, last_term, index)))
                .expect("answer");
        }
        assert_eq!(
            change.default_preference(Some(&node("N1"))),
            vec![node("N3"), node("N2"), node("N5"), node("N4")]
        );
        assert_eq!(
            change.default_preference(None),
            vec![node("N5"), node("N4"), node("N3"), node("N2")]
        );
    }

    #[test]
    fn reported_rulesets_pull_in_nodes_to_recruit() {
        // Goal: a pending ruleset naming a node the coordinator did not know makes it recruit it.
        let (mut change, _) = LeadershipChange::start(ChangeRequest {
            agent: agent(),
            term: Term(7),
            nodes: vec![node("N1")],
            believed_ruleset: series_example(),
            believed_primary: None,
            new_ruleset: None,
        });
        let wider = Ruleset::new(
            series_example()
                .cohort()
                .clone()
                .with_node(node("N7"), crate::ruleset::NodeProperties::in_zone("z3")),
            [(node("N1"), vec![set(&["N7"])])],
        )
        .expect("valid");
        let mut reported = answer("N1", 5, 2);
        reported.log.pending = vec![wider];
        let commands = change.step(Input::Recruited(reported)).expect("answer");
        let recruited: Vec<NodeId> = commands
            .into_iter()
            .map(|command| match command {
                Command::Recruit { node, .. } => node,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            recruited,
            ["N2", "N3", "N4", "N5", "N6", "N7"].map(node).to_vec()
        );
    }
}
