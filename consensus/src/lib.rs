//! # tessera-consensus: the generalized-consensus core
//!
//! Pure and synchronous: no async runtime, no clock, no sockets, no files. Everything here is
//! a value or a state machine that takes inputs and returns commands; the tablet and the
//! coordinator perform the IO (fsync, RPCs, PostgreSQL control) and feed the results back.
//!
//! ## Modules, inputs and outputs
//!
//! ```text
//!  operator text ──► policy::PolicySpec (FromStr/Display) ──compile(Cohort)──► ruleset::Ruleset
//!                                                                               │
//!          ┌────────────────────────────────────────────────────────────────────┤
//!          │ queries: is_durable · revokes/revokes_all · allows_candidacy ·     │
//!          │          minimal_revocation_sets · minimal_recruitment_sets        │
//!          ▼                                                                    ▼
//!  postgres: Ruleset/ActiveRules::to_postgres(leader) ──► SyncStandbyNames "ANY k (..)", exact?
//!
//!  NODE (tablet)                         AGENT (coordinator)                 LEADER (primary)
//!  node::NodeState (persisted)           agent::LeadershipChange             leader::Leader
//!   admit(term, agent)                    start(ChangeRequest) ─► [Recruit]   establish(rules, pos)
//!    ─► Current | Join{next} | Refusal    step(Recruited|Refused)             append(pos)
//!  node::Node (volatile wrapper)          decide(preference) ─► [CatchUp]     on_ack(node, term, pos)
//!   admit ─► Act | PersistThenAct          │                    or [Promote]    ─► Progress{durable,
//!   on_persisted(state)                   step(CaughtUp)  ─► [Promote]             committed rulesets}
//!   recruit_answer(log) ─► RecruitAnswer  step(Promoted)  ─► [Repoint.., Establish]
//!        │                                step(Established) ─► [Delegate]  apply(pos), observer_limit
//!        └──── RecruitAnswer ───────────► (Input::Recruited)               propose_rules(pos, ruleset)
//!                                                                          begin_handoff ─► Handoff
//! ```
//!
//! * [`ids`]: [`NodeId`], [`AgentId`], [`Term`], [`LogPosition`] (term of last entry, then
//!   index; this order *is* "most progressed").
//! * [`ruleset`]: [`Cohort`], [`Ruleset`], [`ActiveRules`] and the durability, revocation and
//!   candidacy queries.
//! * [`policy`]: the [`Policy`] trait and `at_least_n`, `multi_zone`, `majority`, `explicit`.
//! * [`postgres`]: the compiler to `synchronous_standby_names`, never weaker than the rules.
//! * [`node`]: node rules (terms, first agent per term, persist before answering).
//! * [`agent`]: leadership change (revoke, recruit, discover, propagate, establish, delegate).
//! * [`leader`]: request fulfilment (two-phase sync), ruleset changes by the leader, planned
//!   hand-off, observers.
//!
//! `docs/consensus.md` maps every rule of the design to the code and the tests enforcing it.

pub mod agent;
#[cfg(any(test, feature = "fault-injection"))]
pub mod faults;
#[cfg(not(any(test, feature = "fault-injection")))]
mod faults;
pub mod ids;
pub mod leader;
pub mod node;
pub mod policy;
pub mod postgres;
pub mod ruleset;
mod subsets;

pub use agent::{
    AgentError, CandidacyError, ChangeRequest, Command, Input, LeadershipChange, Phase, Plan,
    Unrevoked,
};
pub use ids::{AgentId, IdError, LogPosition, NodeId, Term};
pub use leader::{Handoff, HandoffNotReady, Leader, LeaderError, Progress};
pub use node::{
    Admission, LogSummary, Node, NodeError, NodeState, NodeStep, RecruitAnswer, Refusal,
};
pub use policy::{
    AtLeastN, ExplicitGroups, ExplicitGroupsError, Majority, MultiZone, Policy, PolicyError,
    PolicyParseError, PolicyParseErrorKind, PolicySpec,
};
pub use postgres::{PostgresCompileError, SyncStandbyNames};
pub use ruleset::{ActiveRules, Cohort, Group, NodeProperties, Ruleset, RulesetError};
