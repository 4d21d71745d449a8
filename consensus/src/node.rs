//! Node rules: what a cohort member may accept, and what it persists.
//!
//! ```text
//!   message stamped (term, agent) ──► NodeState::admit ──► Current        act now
//!                                                      ├─► Join{next}     step down, persist
//!                                                      │                  `next`, then act
//!                                                      └─► Refusal        answer with the reason
//! ```
//!
//! The rules: accept the current term (for the agent the node joined it for), reject lower
//! terms, join a higher term. Only the first agent to reach a node in a term gets it; that
//! single-agent promise is what stops two agents that picked the same term from both
//! succeeding (each needs a set of nodes that must intersect the other's).
//!
//! [`NodeState`] is the plain persisted struct (the tablet writes it atomically and fsyncs it).
//! [`Node`] adds the one piece of volatile state a real node needs: a join whose persistence
//! has not finished yet, during which the node refuses to act in the new term.

use crate::ids::{AgentId, LogPosition, NodeId, Term};
use crate::ruleset::Ruleset;

/// What a node persists about consensus.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeState {
    /// The highest term this node has joined.
    /// Invariant: never decreases across the node's lifetime, including restarts.
    pub term: Term,
    /// The revocation promise for `term`: the only agent (and the leader it delegates to) this
    /// node serves in `term`; by implication it serves nothing from older terms.
    /// Invariant: `None` only while `term` is the initial term 0; never changes while `term`
    /// stays the same.
    pub agent: Option<AgentId>,
}

/// The outcome of admitting a message stamped with a term and an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The message belongs to the term and agent this node already serves: act on it.
    Current,
    /// The message opens a newer term: stop acting in older terms at once (a primary stops
    /// serving, a standby stops acknowledging the old primary), persist `next`, then act.
    Join {
        /// The state to persist.
        next: NodeState,
    },
}

/// Why a node refuses a message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// The message's term is older than the node's.
    #[error("term {offered} is older than this node's term {current}")]
    StaleTerm {
        /// The term the message carried.
        offered: Term,
        /// The node's term; the sender should retry above it.
        current: Term,
    },
    /// Another agent already recruited this node for the same term.
    #[error("term {term} already belongs to agent {holder}")]
    TermTaken {
        /// The contested term.
        term: Term,
        /// The agent the node serves in that term.
        holder: AgentId,
    },
}

impl Refusal {
    /// The highest term the refusing node knows of, so an agent can pick a higher one.
    pub fn known_term(&self) -> Term {
        match self {
            Refusal::StaleTerm { current, .. } => *current,
            Refusal::TermTaken { term, .. } => *term,
        }
    }
}

impl NodeState {
    /// Decides whether a message stamped `(term, agent)` may be acted upon.
    pub fn admit(&self, term: Term, agent: &AgentId) -> Result<Admission, Refusal> {
        if term < self.term {
            return Err(Refusal::StaleTerm {
                offered: term,
                current: self.term,
            });
        }
        if term == self.term {
            return match &self.agent {
                Some(holder) if holder == agent => Ok(Admission::Current),
                Some(holder) => Err(Refusal::TermTaken {
                    term,
                    holder: holder.clone(),
                }),
                // Term 0 is the initial state that no agent owns; nobody can act in it.
                None => Err(Refusal::StaleTerm {
                    offered: term,
                    current: self.term,
                }),
            };
        }
        Ok(Admission::Join {
            next: NodeState {
                term,
                agent: Some(agent.clone()),
            },
        })
    }

    /// Whether this state serves exactly `(term, agent)`.
    pub fn serves(&self, term: Term, agent: &AgentId) -> bool {
        self.term == term && self.agent.as_ref() == Some(agent)
    }
}

/// What a node must do with an admitted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeStep {
    /// Act on the message now.
    Act,
    /// Step down from anything in older terms now, persist `state` durably, report it with
    /// [`Node::on_persisted`], and only then act on the message.
    PersistThenAct(NodeState),
    /// The message's term is already being persisted; act on it after
    /// [`Node::on_persisted`].
    ActAfterPersist,
}

/// Why a node cannot produce an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Answers are only given once the term they are given in is on disk; otherwise a crash
    /// could make the node forget a promise the agent relies on.
    #[error("node has not persisted term {term} for agent {agent}")]
    NotPersisted {
        /// The term of the answer.
        term: Term,
        /// The agent of the answer.
        agent: AgentId,
    },
}

/// A node's consensus state in memory: the persisted [`NodeState`] plus a join whose
/// persistence is in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Node {
    durable: NodeState,
    /// Invariant: when `Some`, its term is greater than `durable.term`.
    persisting: Option<NodeState>,
}

impl Node {
    /// Restarts from the persisted state; anything that was being persisted is forgotten,
    /// which is safe because nothing was answered in its term yet.
    pub fn recover(durable: NodeState) -> Self {
        Self {
            durable,
            persisting: None,
        }
    }

    /// The state known to be on disk.
    pub fn durable(&self) -> &NodeState {
        &self.durable
    }

    /// The newest state, persisted or not: what incoming messages are judged against.
    pub fn effective(&self) -> &NodeState {
        self.persisting.as_ref().unwrap_or(&self.durable)
    }

    /// Admits a message stamped `(term, agent)`.
    ///
    /// Persist in order: when a newer join supersedes one still being written, the older write
    /// must not land after the newer one (serialise the writes), otherwise the term on disk
    /// could go backwards.
    pub fn admit(&mut self, term: Term, agent: &AgentId) -> Result<NodeStep, Refusal> {
        match self.effective().admit(term, agent)? {
            Admission::Current if self.persisting.is_some() => Ok(NodeStep::ActAfterPersist),
            Admission::Current => Ok(NodeStep::Act),
            Admission::Join { next } => {
                self.persisting = Some(next.clone());
                Ok(NodeStep::PersistThenAct(next))
            }
        }
    }

    /// Reports that `state` is durably on disk. Returns `false` (and changes nothing) if it is
    /// not the state being persisted, e.g. a stale completion after a newer join.
    pub fn on_persisted(&mut self, state: &NodeState) -> bool {
        if self.persisting.as_ref() == Some(state) {
            self.durable = state.clone();
            self.persisting = None;
            true
        } else {
            false
        }
    }

    /// Whether the node may act for `(term, agent)` right now (persisted and not superseded).
    pub fn may_act(&self, term: Term, agent: &AgentId) -> bool {
        self.persisting.is_none() && self.durable.serves(term, agent)
    }

    /// Builds the answer to a recruitment into `(term, agent)`; refused until that term is
    /// persisted.
    pub fn recruit_answer(
        &self,
        node: NodeId,
        term: Term,
        agent: &AgentId,
        log: LogSummary,
    ) -> Result<RecruitAnswer, NodeError> {
        if !self.may_act(term, agent) {
            return Err(NodeError::NotPersisted {
                term,
                agent: agent.clone(),
            });
        }
        Ok(RecruitAnswer {
            node,
            term,
            agent: agent.clone(),
            log,
        })
    }
}

/// What a node reports about its log when recruited.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogSummary {
    /// Term of the last entry and its position.
    pub last: LogPosition,
    /// The newest ruleset the node knows to be applied (`None` if its log holds none yet).
    pub ruleset: Option<Ruleset>,
    /// Rulesets recorded in the log after that point and not known to be applied, oldest
    /// first. Reporting a ruleset here that was in fact applied is always safe: agents only
    /// get stricter.
    pub pending: Vec<Ruleset>,
}

impl LogSummary {
    /// A summary of an empty log.
    pub fn empty() -> Self {
        Self {
            last: LogPosition::default(),
            ruleset: None,
            pending: Vec::new(),
        }
    }
}

/// A node's answer to being recruited: it has joined `term` for `agent` and reports its log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecruitAnswer {
    /// The answering node.
    pub node: NodeId,
    /// The term it joined.
    pub term: Term,
    /// The agent it joined the term for.
    pub agent: AgentId,
    /// Its log.
    pub log: LogSummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str) -> AgentId {
        AgentId::new(name).expect("valid")
    }

    #[test]
    fn node_rules_accept_current_reject_lower_join_higher() {
        // Goal: the three term rules and the first-agent rule, as a table.
        let state = NodeState {
            term: Term(5),
            agent: Some(agent("c1")),
        };
        assert_eq!(state.admit(Term(5), &agent("c1")), Ok(Admission::Current));
        assert_eq!(
            state.admit(Term(4), &agent("c1")),
            Err(Refusal::StaleTerm {
                offered: Term(4),
                current: Term(5)
            })
        );
        assert_eq!(
            state.admit(Term(5), &agent("c2")),
            Err(Refusal::TermTaken {
                term: Term(5),
                holder: agent("c1")
            })
        );
        assert_eq!(
            state.admit(Term(6), &agent("c2")),
            Ok(Admission::Join {
                next: NodeState {
                    term: Term(6),
                    agent: Some(agent("c2"))
                }
            })
        );
    }

    #[test]
    fn nobody_acts_in_the_initial_term() {
        // Goal: term 0 has no agent, so a message stamped 0 is stale rather than "current".
        assert!(NodeState::default().admit(Term(0), &agent("c1")).is_err());
    }

    #[test]
    fn answers_wait_for_persistence_and_crashes_forget_unpersisted_joins() {
        // Goal: a join is acted on only after on_persisted; a restart before that forgets it.
        let mut node = Node::recover(NodeState::default());
        let step = node.admit(Term(1), &agent("c1")).expect("joins");
        let NodeStep::PersistThenAct(next) = step else {
            panic!("expected a persist step, got {step:?}");
        };
        let id = NodeId::new("n1").expect("valid");
        assert!(
            node.recruit_answer(id.clone(), Term(1), &agent("c1"), LogSummary::empty())
                .is_err()
        );
        // A second agent for the same term is refused even before the fsync completes.
        assert!(matches!(
            node.admit(Term(1), &agent("c2")),
            Err(Refusal::TermTaken { .. })
        ));
        assert_eq!(
            node.admit(Term(1), &agent("c1")),
            Ok(NodeStep::ActAfterPersist)
        );
        let restarted = Node::recover(node.durable().clone());
        assert_eq!(restarted.effective().term, Term(0));
        assert!(node.on_persisted(&next));
        assert!(
            node.recruit_answer(id, Term(1), &agent("c1"), LogSummary::empty())
                .is_ok()
        );
        assert_eq!(node.admit(Term(1), &agent("c1")), Ok(NodeStep::Act));
    }
}
