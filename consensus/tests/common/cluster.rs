//! A simulated cluster that drives the real consensus core: every node decision goes through
//! `tessera_consensus::Node`, every leader decision through `Leader`, every coordinator
//! decision through `LeadershipChange`. What this file adds is only the "tablet twin": a log
//! of entries, message plumbing and crash handling, plus ghost state used to check invariants.
//!
//! Both the stateright model (L1) and the seeded simulator (L2) run these transitions; they
//! differ only in how they choose the next transition and how the network behaves.
//!
//! Log-shipping rules of the twin (the equivalent of streaming replication plus pg_rewind):
//! a follower receiving the leader's log in the leader's term keeps its own log if the leader's
//! is a prefix of it (a stale, reordered message), extends it if its own is a prefix, and
//! otherwise replaces its divergent suffix.

use std::collections::BTreeMap;

use tessera_consensus::faults::Faults;
use tessera_consensus::{
    ActiveRules, AgentId, ChangeRequest, Command, Input, Leader, LeadershipChange, LogPosition,
    LogSummary, Node, NodeId, NodeState, NodeStep, RecruitAnswer, Refusal, Ruleset, Term,
};

/// Index of a node in `Config::names`.
pub type NodeIndex = u8;
/// Index of a ruleset in `Config::rulesets`.
pub type RulesetId = u8;
/// A log length or 1-based entry position (L2 logs grow past 255 entries).
pub type Position = u16;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Payload {
    /// A term's establishment entry, recording the ruleset in force after it.
    Establish(RulesetId),
    /// A client request with a unique value.
    Request(u8),
    /// A ruleset change proposed by the leader.
    Rules(RulesetId),
}

/// One log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    /// Term of the leader (or agent) that wrote it.
    pub term: u8,
    /// What it carries.
    pub payload: Payload,
}

impl Entry {
    fn ruleset(&self) -> Option<RulesetId> {
        match self.payload {
            Payload::Establish(ruleset) | Payload::Rules(ruleset) => Some(ruleset),
            Payload::Request(_) => None,
        }
    }
}

/// Who owns a term: a coordinator, or a leader handing over in a planned change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AgentRef {
    /// Coordinator by index.
    Coordinator(u8),
    /// The leader on this node acting as agent for a planned hand-off.
    Handoff(NodeIndex),
}

/// Messages between nodes and coordinators.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Msg {
    /// Coordinator -> node.
    Recruit {
        to: NodeIndex,
        coordinator: u8,
        term: u8,
    },
    /// Node -> coordinator; carries the log so a later CatchUp can ship it.
    Recruited {
        coordinator: u8,
        from: NodeIndex,
        term: u8,
        log: Vec<Entry>,
        commit: Position,
    },
    /// Node -> coordinator.
    Refused {
        coordinator: u8,
        from: NodeIndex,
        known_term: u8,
        taken: bool,
    },
    /// Coordinator -> candidate: adopt this timeline.
    CatchUp {
        to: NodeIndex,
        coordinator: u8,
        term: u8,
        log: Vec<Entry>,
    },
    /// Candidate -> coordinator.
    CaughtUp {
        coordinator: u8,
        from: NodeIndex,
        term: u8,
        last: (u8, Position),
    },
    /// Coordinator -> candidate.
    Promote {
        to: NodeIndex,
        coordinator: u8,
        term: u8,
    },
    /// Candidate -> coordinator.
    Promoted {
        coordinator: u8,
        from: NodeIndex,
        term: u8,
    },
    /// Coordinator -> candidate.
    Establish {
        to: NodeIndex,
        coordinator: u8,
        term: u8,
        rules: Vec<RulesetId>,
    },
    /// Candidate -> coordinator.
    Established {
        coordinator: u8,
        from: NodeIndex,
        term: u8,
        position: Position,
    },
    /// Coordinator -> candidate.
    Delegate {
        to: NodeIndex,
        coordinator: u8,
        term: u8,
    },
    /// Coordinator -> candidate, pipelined: catch up to `log` (if any), promote, establish.
    Takeover {
        to: NodeIndex,
        coordinator: u8,
        term: u8,
        log: Option<Vec<Entry>>,
        rules: Vec<RulesetId>,
    },
    /// Leader -> follower: the leader's whole log and what it has applied.
    Replicate {
        to: NodeIndex,
        from: NodeIndex,
        term: u8,
        agent: AgentRef,
        log: Vec<Entry>,
        commit: Position,
    },
    /// Follower -> leader: flushed the leader's log up to `len`.
    Ack {
        to: NodeIndex,
        from: NodeIndex,
        term: u8,
        len: Position,
    },
    /// Leader -> observer: applied entries only.
    Observe {
        to: NodeIndex,
        from: NodeIndex,
        log: Vec<Entry>,
    },
    /// Old leader -> candidate: establish the next term (planned hand-off).
    Handoff {
        to: NodeIndex,
        from: NodeIndex,
        term: u8,
        rules: Vec<RulesetId>,
        up_to: Position,
    },
}

impl Msg {
    /// The node the message is addressed to, if it goes to a node.
    pub fn to_node(&self) -> Option<NodeIndex> {
        match self {
            Msg::Recruit { to, .. }
            | Msg::CatchUp { to, .. }
            | Msg::Promote { to, .. }
            | Msg::Establish { to, .. }
            | Msg::Delegate { to, .. }
            | Msg::Takeover { to, .. }
            | Msg::Replicate { to, .. }
            | Msg::Ack { to, .. }
            | Msg::Observe { to, .. }
            | Msg::Handoff { to, .. } => Some(*to),
            _ => None,
        }
    }

    /// The coordinator the message is addressed to, if any.
    pub fn to_coordinator(&self) -> Option<u8> {
        match self {
            Msg::Recruited { coordinator, .. }
            | Msg::Refused { coordinator, .. }
            | Msg::CaughtUp { coordinator, .. }
            | Msg::Promoted { coordinator, .. }
            | Msg::Established { coordinator, .. } => Some(*coordinator),
            _ => None,
        }
    }

    /// The sending endpoint: `Ok(node)` or `Err(coordinator)`.
    pub fn sender(&self) -> Result<NodeIndex, u8> {
        match self {
            Msg::Recruit { coordinator, .. }
            | Msg::CatchUp { coordinator, .. }
            | Msg::Promote { coordinator, .. }
            | Msg::Establish { coordinator, .. }
            | Msg::Delegate { coordinator, .. }
            | Msg::Takeover { coordinator, .. } => Err(*coordinator),
            Msg::Recruited { from, .. }
            | Msg::Refused { from, .. }
            | Msg::CaughtUp { from, .. }
            | Msg::Promoted { from, .. }
            | Msg::Established { from, .. }
            | Msg::Replicate { from, .. }
            | Msg::Ack { from, .. }
            | Msg::Handoff { from, .. }
            | Msg::Observe { from, .. } => Ok(*from),
        }
    }
}

/// Everything that can happen next.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// A message arrives.
    Deliver(Msg),
    /// A coordinator starts a leadership change (abandoning any previous one).
    StartChange {
        /// Which coordinator.
        coordinator: u8,
        /// Into which term.
        term: u8,
        /// Switching to this ruleset at the same time.
        new_ruleset: Option<RulesetId>,
    },
    /// A client request reaches the leader on this node.
    ClientRequest(NodeIndex),
    /// The leader on `node` proposes a ruleset change.
    ProposeRules {
        /// The leader's node.
        node: NodeIndex,
        /// The proposed ruleset.
        ruleset: RulesetId,
    },
    /// The leader on `node` starts a planned hand-off.
    BeginHandoff {
        /// The leader's node.
        node: NodeIndex,
        /// The next leader.
        candidate: NodeIndex,
    },
    /// A node crashes and restarts from disk.
    Crash(NodeIndex),
    /// A node's pending writes reach the disk.
    Flush(NodeIndex),
    /// The leader on `leader` ships its current log to `follower` (pull-style replication).
    Replicate {
        /// The leader's node.
        leader: NodeIndex,
        /// The follower.
        follower: NodeIndex,
    },
}

/// Static description of a simulated cluster.
#[derive(Clone, Debug)]
pub struct Config {
    /// Every node, cohort members first.
    pub names: Vec<NodeId>,
    /// Nodes outside every cohort that only receive applied entries.
    pub observers: Vec<NodeIndex>,
    /// Every ruleset the run can use; id 0 is in force at the start.
    pub rulesets: Vec<Ruleset>,
    /// Number of coordinators.
    pub coordinators: u8,
    /// Persist terms and logs as part of the step that needs it (L1) instead of in separate
    /// flush steps that a crash can pre-empt (L2).
    pub immediate_persistence: bool,
    /// Send `Refused` answers (L2 coordinators use them to pick their next term).
    pub send_refusals: bool,
    /// Leaders push their log as messages after every write (L2). Otherwise (L1) replication
    /// happens through explicit `Action::Replicate` steps that ship the leader's current log;
    /// an older snapshot of the same leader's log is a prefix of the current one and would be
    /// ignored by the follower anyway, so this loses no interesting behaviour.
    pub push_replication: bool,
    /// The coordinator pipelines CatchUp, Promote and Establish into one message that the
    /// candidate executes in order (L1). The agent is still stepped through CaughtUp and
    /// Promoted, assuming success; a candidate that refuses any step executes none of the later
    /// ones. Delegation is then applied as soon as the agent emits it. L2 uses one message per
    /// command instead.
    pub pipeline_takeover: bool,
    /// Deliberate mistakes in the agents.
    pub faults: Faults,
    /// For each coordinator, the nodes it can reach and therefore recruits (empty: every
    /// cohort node). Models a coordinator partitioned from part of the cohort.
    pub reach: Vec<Vec<NodeIndex>>,
    /// Precomputed agent ids (allocation-free lookups on the hot path).
    agents: Vec<(AgentRef, AgentId)>,
}

impl Config {
    /// Index of a node id.
    pub fn index_of(&self, node: &NodeId) -> NodeIndex {
        self.names
            .iter()
            .position(|name| name == node)
            .map(|index| index as NodeIndex)
            .unwrap_or_else(|| panic!("unknown node {node}"))
    }

    /// Id of a ruleset (registered in `rulesets`).
    pub fn ruleset_id(&self, ruleset: &Ruleset) -> RulesetId {
        self.rulesets
            .iter()
            .position(|known| known == ruleset)
            .map(|index| index as RulesetId)
            .unwrap_or_else(|| panic!("unregistered ruleset {ruleset}"))
    }

    /// A configuration with the given nodes and rulesets and L2-style behaviour (separate
    /// flushes, refusals, pushed replication, one message per command, no faults).
    pub fn new(
        names: Vec<NodeId>,
        observers: Vec<NodeIndex>,
        rulesets: Vec<Ruleset>,
        coordinators: u8,
    ) -> Self {
        let node_count = names.len() as u8;
        let mut config = Self {
            names,
            observers,
            rulesets,
            coordinators,
            immediate_persistence: false,
            send_refusals: true,
            push_replication: true,
            pipeline_takeover: false,
            faults: Faults::NONE,
            reach: Vec::new(),
            agents: Vec::new(),
        };
        config.agents = (0..coordinators)
            .map(AgentRef::Coordinator)
            .chain((0..node_count).map(AgentRef::Handoff))
            .map(|agent| {
                let text = match agent {
                    AgentRef::Coordinator(index) => format!("coordinator-{index}"),
                    AgentRef::Handoff(node) => format!("handoff-{}", config.names[node as usize]),
                };
                (
                    agent,
                    AgentId::new(text).expect("generated agent ids are valid"),
                )
            })
            .collect();
        config
    }

    /// Agent id for an agent reference.
    pub fn agent_id(&self, agent: AgentRef) -> &AgentId {
        self.agents
            .iter()
            .find(|(known, _)| *known == agent)
            .map(|(_, id)| id)
            .unwrap_or_else(|| panic!("unknown agent {agent:?}"))
    }

    fn is_observer(&self, node: NodeIndex) -> bool {
        self.observers.contains(&node)
    }

    fn cohort_nodes(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        (0..self.names.len() as NodeIndex).filter(|node| !self.is_observer(*node))
    }
}

/// A leader's volatile state on its node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaderModel {
    /// The real leader state machine.
    pub leader: Leader,
    /// Who owns the term.
    pub agent: AgentRef,
    /// Delegated: may take client requests.
    pub serving: bool,
}

/// One simulated node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeModel {
    /// The real node state machine (persisted state plus a join being persisted).
    pub node: Node,
    /// The log in memory.
    pub log: Vec<Entry>,
    /// Length of the log prefix on disk.
    /// Invariant: `flushed <= log.len()` (as far as the twin goes; a crash truncates to it).
    pub flushed: Position,
    /// Length of the applied prefix.
    pub commit: Position,
    /// Promoted for this term (may write, does not serve yet).
    pub promoted: Option<u8>,
    /// Leader state, if leading.
    pub leader: Option<LeaderModel>,
    /// Messages to send once everything is flushed.
    pub outbox_after_flush: Vec<Msg>,
    /// Messages to handle again once the term being persisted is on disk.
    pub deferred: Vec<Msg>,
}

/// One simulated coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CoordinatorModel {
    /// The leadership change in progress.
    pub change: Option<LeadershipChange>,
    /// Logs reported by recruited nodes, to ship on CatchUp.
    pub logs: BTreeMap<NodeIndex, Vec<Entry>>,
    /// Attempts made.
    pub attempts: u8,
    /// Term of the last attempt.
    pub last_term: u8,
    /// Highest term learnt from refusals.
    pub known_term: u8,
    /// The ruleset this coordinator believes in.
    pub believed_ruleset: RulesetId,
    /// The primary this coordinator believes in.
    pub believed_primary: Option<NodeIndex>,
}

/// Invariant violations, recorded by the transition that caused them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Violations {
    /// Two different leaders completed requests in one term.
    pub two_leaders_in_a_term: bool,
    /// An acknowledged request is missing (or elsewhere) on an established later leader.
    pub acknowledged_lost: bool,
    /// Two applied prefixes disagree (or an observer saw an unapplied entry).
    pub applied_diverged: bool,
    /// A node's persisted term went down.
    pub term_decreased: bool,
    /// A leader completed an entry without checking the newest committed ruleset.
    pub stale_ruleset: bool,
}

impl Violations {
    /// Names of the violated invariants.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.two_leaders_in_a_term {
            names.push("at most one leader completes requests in a term");
        }
        if self.acknowledged_lost {
            names.push("an acknowledged request is never lost or reordered");
        }
        if self.applied_diverged {
            names.push("applied prefixes never diverge");
        }
        if self.term_decreased {
            names.push("terms never decrease");
        }
        if self.stale_ruleset {
            names.push("no completion under a stale ruleset");
        }
        names
    }

    /// Whether anything was violated.
    pub fn any(&self) -> bool {
        !self.names().is_empty()
    }
}

/// History the invariants need.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Acknowledged requests: (1-based position, entry).
    pub acknowledged: Vec<(Position, Entry)>,
    /// The longest applied prefix seen anywhere.
    pub committed: Vec<Entry>,
    /// Which node completed requests in which term.
    pub completers: Vec<(u8, NodeIndex)>,
    /// Next client request value.
    pub next_value: u8,
    /// Leader-proposed ruleset changes so far.
    pub rule_changes: u8,
    /// Planned hand-offs begun so far.
    pub handoffs: u8,
    /// Terms established through a planned hand-off.
    pub handoffs_established: u16,
    /// What went wrong.
    pub violations: Violations,
}

/// The whole simulated cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cluster {
    /// Nodes by index.
    pub nodes: Vec<NodeModel>,
    /// Coordinators by index.
    pub coordinators: Vec<CoordinatorModel>,
    /// Invariant bookkeeping.
    pub ghost: Ghost,
}

fn small(value: u64) -> u8 {
    u8::try_from(value).expect("simulated terms fit in a byte")
}

fn position(value: u64) -> Position {
    Position::try_from(value).expect("simulated logs stay below 65536 entries")
}

fn length(log: &[Entry]) -> Position {
    position(log.len() as u64)
}

fn last_position(log: &[Entry]) -> LogPosition {
    LogPosition::new(
        Term(log.last().map_or(0, |entry| entry.term as u64)),
        log.len() as u64,
    )
}

/// What a node reports about its log: the newest ruleset in its applied prefix, and every
/// ruleset recorded after it.
pub fn summarize(config: &Config, log: &[Entry], commit: Position) -> LogSummary {
    let applied = &log[..(commit as usize).min(log.len())];
    let ruleset = applied
        .iter()
        .rev()
        .find_map(Entry::ruleset)
        .map(|id| config.rulesets[id as usize].clone());
    let pending = log[applied.len()..]
        .iter()
        .filter_map(Entry::ruleset)
        .map(|id| config.rulesets[id as usize].clone())
        .collect();
    LogSummary {
        last: last_position(log),
        ruleset,
        pending,
    }
}

impl Cluster {
    /// A cluster with empty logs in term 0: the first leadership change bootstraps it.
    pub fn empty(config: &Config) -> Self {
        let nodes = config
            .names
            .iter()
            .map(|_| NodeModel {
                node: Node::recover(NodeState::default()),
                log: Vec::new(),
                flushed: 0,
                commit: 0,
                promoted: None,
                leader: None,
                outbox_after_flush: Vec::new(),
                deferred: Vec::new(),
            })
            .collect();
        let coordinators = (0..config.coordinators)
            .map(|_| CoordinatorModel {
                change: None,
                logs: BTreeMap::new(),
                attempts: 0,
                last_term: 0,
                known_term: 0,
                believed_ruleset: 0,
                believed_primary: None,
            })
            .collect();
        Self {
            nodes,
            coordinators,
            ghost: Ghost::default(),
        }
    }

    /// A cluster where `leader` already leads term 1 under ruleset 0, every cohort node holds
    /// and has applied the establishment entry, and coordinators believe `leader` is primary.
    pub fn established(config: &Config, leader: NodeIndex) -> Self {
        let mut cluster = Self::empty(config);
        let agent = AgentRef::Coordinator(0);
        let entry = Entry {
            term: 1,
            payload: Payload::Establish(0),
        };
        for node in config.cohort_nodes() {
            let model = &mut cluster.nodes[node as usize];
            let state = NodeState {
                term: Term(1),
                agent: Some(config.agent_id(agent).clone()),
            };
            model.node = Node::recover(state);
            model.log = vec![entry];
            model.flushed = 1;
            model.commit = 1;
        }
        let mut leader_state = Leader::establish(
            config.names[leader as usize].clone(),
            Term(1),
            config.agent_id(agent).clone(),
            ActiveRules::new(config.rulesets[0].clone()),
            1,
        );
        for node in config.cohort_nodes() {
            leader_state
                .on_ack(&config.names[node as usize], Term(1), 1)
                .expect("same term");
        }
        leader_state.apply(1).expect("durable");
        cluster.nodes[leader as usize].leader = Some(LeaderModel {
            leader: leader_state,
            agent,
            serving: true,
        });
        cluster.ghost.committed = vec![entry];
        cluster.ghost.completers = vec![(1, leader)];
        for coordinator in &mut cluster.coordinators {
            coordinator.last_term = 1;
            coordinator.known_term = 1;
            coordinator.believed_primary = Some(leader);
        }
        cluster
    }

    // ----- actions chosen by the model checker or the simulator -----

    /// Performs one action, then checks every invariant.
    pub fn step(&mut self, config: &Config, action: &Action) -> Vec<Msg> {
        let terms_before: Vec<Term> = self
            .nodes
            .iter()
            .map(|model| model.node.durable().term)
            .collect();
        let out = match action {
            Action::Deliver(message) => self.deliver(config, message),
            Action::StartChange {
                coordinator,
                term,
                new_ruleset,
            } => self.start_change(config, *coordinator, *term, *new_ruleset),
            Action::ClientRequest(node) => self.client_request(config, *node),
            Action::ProposeRules { node, ruleset } => self.propose_rules(config, *node, *ruleset),
            Action::BeginHandoff { node, candidate } => {
                self.begin_handoff(config, *node, *candidate)
            }
            Action::Crash(node) => {
                self.crash(*node);
                Vec::new()
            }
            Action::Flush(node) => self.flush(config, *node),
            Action::Replicate { leader, follower } => {
                match self.replication_message(config, *leader, *follower) {
                    Some(message) => self.deliver(config, &message),
                    None => Vec::new(),
                }
            }
        };
        for (model, before) in self.nodes.iter().zip(terms_before) {
            if model.node.durable().term < before {
                self.ghost.violations.term_decreased = true;
            }
        }
        // Only the node an action touches can change its log, applied prefix or leadership
        // (acknowledgements are checked against every leader as they happen).
        let touched = match action {
            Action::Deliver(message) => message.to_node(),
            Action::StartChange { .. } => None,
            Action::ClientRequest(node)
            | Action::ProposeRules { node, .. }
            | Action::BeginHandoff { node, .. }
            | Action::Crash(node)
            | Action::Flush(node) => Some(*node),
            Action::Replicate { follower, .. } => Some(*follower),
        };
        if let Some(node) = touched {
            self.check_node(config, node);
        }
        out
    }

    /// Coordinator `index` starts a leadership change into `term`, optionally switching to
    /// `new_ruleset` at the same time.
    pub fn start_change(
        &mut self,
        config: &Config,
        index: u8,
        term: u8,
        new_ruleset: Option<RulesetId>,
    ) -> Vec<Msg> {
        let coordinator = &mut self.coordinators[index as usize];
        coordinator.attempts += 1;
        coordinator.last_term = term;
        coordinator.logs.clear();
        let request = ChangeRequest {
            agent: config.agent_id(AgentRef::Coordinator(index)).clone(),
            term: Term(term as u64),
            nodes: match config
                .reach
                .get(index as usize)
                .filter(|reach| !reach.is_empty())
            {
                Some(reach) => reach
                    .iter()
                    .map(|node| config.names[*node as usize].clone())
                    .collect(),
                None => config
                    .cohort_nodes()
                    .map(|node| config.names[node as usize].clone())
                    .collect(),
            },
            believed_ruleset: config.rulesets[coordinator.believed_ruleset as usize].clone(),
            believed_primary: coordinator
                .believed_primary
                .map(|node| config.names[node as usize].clone()),
            new_ruleset: new_ruleset.map(|id| config.rulesets[id as usize].clone()),
        };
        let (change, commands) = LeadershipChange::start(request);
        coordinator.change = Some(change.with_faults(config.faults));
        self.execute(config, index, commands)
    }

    /// A client sends a request to the serving leader on `node`.
    pub fn client_request(&mut self, config: &Config, node: NodeIndex) -> Vec<Msg> {
        let value = self.ghost.next_value;
        let model = &mut self.nodes[node as usize];
        let Some(leading) = model.leader.as_mut().filter(|leading| leading.serving) else {
            return Vec::new();
        };
        let position = model.log.len() as u64 + 1;
        if leading.leader.append(position).is_err() {
            return Vec::new();
        }
        let term = small(leading.leader.term().0);
        model.log.push(Entry {
            term,
            payload: Payload::Request(value),
        });
        self.ghost.next_value += 1;
        self.after_leader_write(config, node)
    }

    /// The serving leader on `node` proposes a switch to ruleset `ruleset`.
    pub fn propose_rules(
        &mut self,
        config: &Config,
        node: NodeIndex,
        ruleset: RulesetId,
    ) -> Vec<Msg> {
        let model = &mut self.nodes[node as usize];
        let Some(leading) = model.leader.as_mut().filter(|leading| leading.serving) else {
            return Vec::new();
        };
        let position = model.log.len() as u64 + 1;
        let proposal = config.rulesets[ruleset as usize].clone();
        if leading.leader.propose_rules(position, proposal).is_err() {
            return Vec::new();
        }
        let term = small(leading.leader.term().0);
        model.log.push(Entry {
            term,
            payload: Payload::Rules(ruleset),
        });
        self.ghost.rule_changes += 1;
        self.after_leader_write(config, node)
    }

    /// The serving leader on `node` starts a planned hand-off to `candidate`.
    pub fn begin_handoff(
        &mut self,
        config: &Config,
        node: NodeIndex,
        candidate: NodeIndex,
    ) -> Vec<Msg> {
        let Some(leading) = self.nodes[node as usize]
            .leader
            .as_mut()
            .filter(|leading| leading.serving)
        else {
            return Vec::new();
        };
        if leading
            .leader
            .begin_handoff(config.names[candidate as usize].clone())
            .is_err()
        {
            return Vec::new();
        }
        self.ghost.handoffs += 1;
        self.try_handoff(config, node)
    }

    /// `node` crashes and restarts: volatile state is lost, and so is anything not flushed.
    pub fn crash(&mut self, node: NodeIndex) {
        let model = &mut self.nodes[node as usize];
        model.node = Node::recover(model.node.durable().clone());
        model.log.truncate(model.flushed as usize);
        model.commit = model.commit.min(model.flushed);
        model.promoted = None;
        model.leader = None;
        model.outbox_after_flush.clear();
        model.deferred.clear();
    }

    /// `node` finishes writing: the term being persisted and the whole log reach the disk,
    /// held answers go out, deferred messages are handled.
    pub fn flush(&mut self, config: &Config, node: NodeIndex) -> Vec<Msg> {
        let model = &mut self.nodes[node as usize];
        let mut out = Vec::new();
        let pending_state = model.node.effective().clone();
        model.node.on_persisted(&pending_state);
        model.flushed = length(&model.log);
        out.append(&mut model.outbox_after_flush);
        let deferred = std::mem::take(&mut model.deferred);
        let flushed = model.flushed as u64;
        let self_ack = model.leader.as_ref().map(|leading| leading.leader.term());
        if let Some(term) = self_ack {
            out.extend(self.leader_ack(config, node, node, term, flushed));
        }
        for message in deferred {
            out.extend(self.deliver(config, &message));
        }
        out
    }

    /// Whether `flush` would change anything on `node`.
    pub fn needs_flush(&self, node: NodeIndex) -> bool {
        let model = &self.nodes[node as usize];
        model.flushed as usize != model.log.len()
            || model.node.effective() != model.node.durable()
            || !model.outbox_after_flush.is_empty()
            || !model.deferred.is_empty()
    }

    // ----- message delivery -----

    /// Delivers one message and returns what it triggers.
    pub fn deliver(&mut self, config: &Config, message: &Msg) -> Vec<Msg> {
        match message {
            Msg::Recruited { .. }
            | Msg::Refused { .. }
            | Msg::CaughtUp { .. }
            | Msg::Promoted { .. }
            | Msg::Established { .. } => self.deliver_to_coordinator(config, message),
            _ => self.deliver_to_node(config, message),
        }
    }

    /// Admits a message stamped (term, agent) on `node`. `Ok(())`: act on it now. `Err(out)`:
    /// do not act now; send `out` (a refusal, or nothing when the message was deferred until
    /// the term it opens is persisted).
    fn admit(
        &mut self,
        config: &Config,
        node: NodeIndex,
        term: u8,
        agent: AgentRef,
        message: &Msg,
    ) -> Result<(), Vec<Msg>> {
        let agent_id = config.agent_id(agent);
        let model = &mut self.nodes[node as usize];
        match model.node.admit(Term(term as u64), agent_id) {
            Ok(NodeStep::Act) => Ok(()),
            Ok(NodeStep::PersistThenAct(next)) => {
                // Joining a newer term: stop acting in older ones at once.
                if model
                    .leader
                    .as_ref()
                    .is_some_and(|leading| leading.leader.term() < next.term)
                {
                    model.leader = None;
                }
                if model
                    .promoted
                    .is_some_and(|promoted| (promoted as u64) < next.term.0)
                {
                    model.promoted = None;
                }
                if config.immediate_persistence {
                    model.node.on_persisted(&next);
                    Ok(())
                } else {
                    model.deferred.push(message.clone());
                    Err(Vec::new())
                }
            }
            Ok(NodeStep::ActAfterPersist) => {
                model.deferred.push(message.clone());
                Err(Vec::new())
            }
            Err(refusal) => {
                let mut out = Vec::new();
                if config.send_refusals
                    && let (Msg::Recruit { coordinator, .. }, AgentRef::Coordinator(_)) =
                        (message, agent)
                {
                    out.push(Msg::Refused {
                        coordinator: *coordinator,
                        from: node,
                        known_term: small(refusal.known_term().0),
                        taken: matches!(refusal, Refusal::TermTaken { .. }),
                    });
                }
                Err(out)
            }
        }
    }

    /// Sends `message` now if `node` has flushed what it depends on, otherwise after the flush.
    fn send_when_flushed(&mut self, config: &Config, node: NodeIndex, message: Msg) -> Vec<Msg> {
        let model = &mut self.nodes[node as usize];
        if config.immediate_persistence {
            model.flushed = length(&model.log);
            vec![message]
        } else {
            model.outbox_after_flush.push(message);
            Vec::new()
        }
    }

    fn deliver_to_node(&mut self, config: &Config, message: &Msg) -> Vec<Msg> {
        match message.clone() {
            Msg::Recruit {
                to,
                coordinator,
                term,
            } => {
                if let Err(out) = self.admit(
                    config,
                    to,
                    term,
                    AgentRef::Coordinator(coordinator),
                    message,
                ) {
                    return out;
                }
                let model = &self.nodes[to as usize];
                let reply = Msg::Recruited {
                    coordinator,
                    from: to,
                    term,
                    log: model.log.clone(),
                    commit: model.commit,
                };
                self.send_when_flushed(config, to, reply)
            }
            Msg::CatchUp {
                to,
                coordinator,
                term,
                log,
            } => {
                if let Err(out) = self.admit(
                    config,
                    to,
                    term,
                    AgentRef::Coordinator(coordinator),
                    message,
                ) {
                    return out;
                }
                let model = &mut self.nodes[to as usize];
                adopt(model, &log);
                let last = last_position(&log);
                let reply = Msg::CaughtUp {
                    coordinator,
                    from: to,
                    term,
                    last: (small(last.term.0), position(last.index)),
                };
                self.send_when_flushed(config, to, reply)
            }
            Msg::Promote {
                to,
                coordinator,
                term,
            } => {
                if let Err(out) = self.admit(
                    config,
                    to,
                    term,
                    AgentRef::Coordinator(coordinator),
                    message,
                ) {
                    return out;
                }
                self.nodes[to as usize].promoted = Some(term);
                vec![Msg::Promoted {
                    coordinator,
                    from: to,
                    term,
                }]
            }
            Msg::Establish {
                to,
                coordinator,
                term,
                rules,
            } => {
                let agent = AgentRef::Coordinator(coordinator);
                if let Err(out) = self.admit(config, to, term, agent, message) {
                    return out;
                }
                let model = &self.nodes[to as usize];
                if model.promoted != Some(term) || model.leader.is_some() {
                    return Vec::new();
                }
                self.establish(config, to, term, agent, &rules)
            }
            Msg::Takeover {
                to,
                coordinator,
                term,
                log,
                rules,
            } => {
                let agent = AgentRef::Coordinator(coordinator);
                if let Err(out) = self.admit(config, to, term, agent, message) {
                    return out;
                }
                let model = &mut self.nodes[to as usize];
                if model.leader.is_some() {
                    return Vec::new();
                }
                if let Some(log) = log {
                    adopt(model, &log);
                }
                model.promoted = Some(term);
                self.establish(config, to, term, agent, &rules)
            }
            Msg::Delegate {
                to,
                coordinator,
                term,
            } => {
                let agent = AgentRef::Coordinator(coordinator);
                if let Err(out) = self.admit(config, to, term, agent, message) {
                    return out;
                }
                if let Some(leading) = self.nodes[to as usize].leader.as_mut()
                    && leading.leader.term() == Term(term as u64)
                    && leading.leader.is_established()
                {
                    leading.serving = true;
                }
                Vec::new()
            }
            Msg::Handoff {
                to,
                from,
                term,
                rules,
                up_to,
            } => {
                let agent = AgentRef::Handoff(from);
                if let Err(out) = self.admit(config, to, term, agent, message) {
                    return out;
                }
                let model = &self.nodes[to as usize];
                if model.leader.is_some() || model.log.len() < up_to as usize {
                    return Vec::new();
                }
                self.establish(config, to, term, agent, &rules)
            }
            Msg::Replicate {
                to,
                from,
                term,
                agent,
                log,
                commit,
            } => {
                if config.is_observer(to) {
                    return Vec::new();
                }
                if let Err(out) = self.admit(config, to, term, agent, message) {
                    return out;
                }
                let model = &mut self.nodes[to as usize];
                if model.leader.is_some() {
                    // A leader never follows another leader of its own term.
                    return Vec::new();
                }
                adopt(model, &log);
                let matched = length(&log);
                model.commit = model.commit.max(commit.min(matched));
                if !config.push_replication {
                    // Pull-style replication (L1): an ack telling the leader nothing new would be
                    // a no-op on delivery; not sending it keeps the state space small.
                    let known = self.nodes[from as usize]
                        .leader
                        .as_ref()
                        .filter(|leading| leading.leader.term() == Term(term as u64))
                        .and_then(|leading| leading.leader.flushed(&config.names[to as usize]));
                    if known.is_some_and(|known| known >= matched as u64) {
                        return Vec::new();
                    }
                }
                let ack = Msg::Ack {
                    to: from,
                    from: to,
                    term,
                    len: matched,
                };
                self.send_when_flushed(config, to, ack)
            }
            Msg::Ack {
                to,
                from,
                term,
                len,
            } => self.leader_ack(config, to, from, Term(term as u64), len as u64),
            Msg::Observe { to, log, .. } => {
                let model = &mut self.nodes[to as usize];
                if log.len() > model.log.len() && log.starts_with(&model.log) {
                    model.log = log;
                    model.flushed = length(&model.log);
                    model.commit = length(&model.log);
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Starts a leader of `term` on `node` by writing its establishment entry.
    fn establish(
        &mut self,
        config: &Config,
        node: NodeIndex,
        term: u8,
        agent: AgentRef,
        rules: &[RulesetId],
    ) -> Vec<Msg> {
        let mut active = ActiveRules::new(config.rulesets[rules[0] as usize].clone());
        for id in &rules[1..] {
            active.push(config.rulesets[*id as usize].clone());
        }
        let target = config.ruleset_id(active.target());
        let model = &mut self.nodes[node as usize];
        model.log.push(Entry {
            term,
            payload: Payload::Establish(target),
        });
        let position = model.log.len() as u64;
        model.leader = Some(LeaderModel {
            leader: Leader::establish(
                config.names[node as usize].clone(),
                Term(term as u64),
                config.agent_id(agent).clone(),
                active,
                position,
            ),
            agent,
            serving: false,
        });
        self.after_leader_write(config, node)
    }

    /// After the leader on `node` appended: count its own flush (if immediate) and replicate.
    fn after_leader_write(&mut self, config: &Config, node: NodeIndex) -> Vec<Msg> {
        let mut out = Vec::new();
        if config.immediate_persistence {
            let model = &mut self.nodes[node as usize];
            model.flushed = length(&model.log);
            if let Some(term) = model.leader.as_ref().map(|leading| leading.leader.term()) {
                let flushed = model.flushed as u64;
                out.extend(self.leader_ack(config, node, node, term, flushed));
            }
        }
        out.extend(self.replicate(config, node));
        out
    }

    /// The message shipping the leader's current log on `leader` to `follower`.
    pub fn replication_message(
        &self,
        config: &Config,
        leader: NodeIndex,
        follower: NodeIndex,
    ) -> Option<Msg> {
        let model = &self.nodes[leader as usize];
        let leading = model.leader.as_ref()?;
        if follower == leader {
            return None;
        }
        if config.is_observer(follower) {
            let limit = leading.leader.observer_limit()?;
            return Some(Msg::Observe {
                to: follower,
                from: leader,
                log: model.log[..limit as usize].to_vec(),
            });
        }
        Some(Msg::Replicate {
            to: follower,
            from: leader,
            term: small(leading.leader.term().0),
            agent: leading.agent,
            log: model.log.clone(),
            commit: model.commit,
        })
    }

    /// A leader re-sends its log to everyone (retransmission after message loss).
    pub fn heartbeat(&self, config: &Config, node: NodeIndex) -> Vec<Msg> {
        self.replicate(config, node)
    }

    /// The leader's log (and applied position) to every other cohort node, and applied
    /// entries to observers, when leaders push (L2).
    fn replicate(&self, config: &Config, node: NodeIndex) -> Vec<Msg> {
        if !config.push_replication {
            return Vec::new();
        }
        let model = &self.nodes[node as usize];
        let Some(leading) = &model.leader else {
            return Vec::new();
        };
        let term = small(leading.leader.term().0);
        let mut out: Vec<Msg> = config
            .cohort_nodes()
            .filter(|other| *other != node)
            .map(|other| Msg::Replicate {
                to: other,
                from: node,
                term,
                agent: leading.agent,
                log: model.log.clone(),
                commit: model.commit,
            })
            .collect();
        if let Some(limit) = leading.leader.observer_limit() {
            let applied = model.log[..limit as usize].to_vec();
            out.extend(config.observers.iter().map(|observer| Msg::Observe {
                to: *observer,
                from: node,
                log: applied.clone(),
            }));
        }
        out
    }

    /// The leader on `leader_node` learns that `from` flushed `len` entries in `term`.
    fn leader_ack(
        &mut self,
        config: &Config,
        leader_node: NodeIndex,
        from: NodeIndex,
        term: Term,
        len: u64,
    ) -> Vec<Msg> {
        let model = &mut self.nodes[leader_node as usize];
        let Some(leading) = model.leader.as_mut() else {
            return Vec::new();
        };
        // The rules a completion is checked against are those in force before the ack: the
        // previously committed ruleset plus the changes this ack commits.
        let previous_committed = leading.leader.committed_ruleset().clone();
        let before = leading.leader.durable();
        let Ok(progress) = leading
            .leader
            .on_ack(&config.names[from as usize], term, len)
        else {
            return Vec::new();
        };
        let Some(durable) = progress.durable else {
            return self.try_handoff(config, leader_node);
        };
        let leader_term = small(leading.leader.term().0);
        let mut rules = ActiveRules::new(previous_committed);
        for committed in &progress.committed_rulesets {
            rules.push(committed.clone());
        }
        leading
            .leader
            .apply(durable)
            .expect("durable entries can be applied");
        model.commit = model.commit.max(position(durable));
        let start = before.map_or(0, |before| before as usize);
        let acknowledged: Vec<(Position, Entry)> = model.log[start..durable as usize]
            .iter()
            .enumerate()
            .filter(|(_, entry)| {
                entry.term == leader_term && matches!(entry.payload, Payload::Request(_))
            })
            .map(|(offset, entry)| (position((start + offset + 1) as u64), *entry))
            .collect();
        let log_prefix = model.log[..durable as usize].to_vec();
        let agent = leading.agent;
        let establishment = position(leading.leader.establishment());
        let handed_off = progress.established && matches!(agent, AgentRef::Handoff(_));
        if handed_off {
            // A planned hand-off delegates the term together with the request to establish it.
            leading.serving = true;
        }
        if handed_off {
            self.ghost.handoffs_established = self.ghost.handoffs_established.saturating_add(1);
        }
        self.record_completion(config, leader_node, leader_term, &rules, &log_prefix);
        self.acknowledge(acknowledged);
        let mut out = Vec::new();
        if progress.established
            && let AgentRef::Coordinator(coordinator) = agent
        {
            out.push(Msg::Established {
                coordinator,
                from: leader_node,
                term: leader_term,
                position: establishment,
            });
        }
        out.extend(self.replicate(config, leader_node));
        out.extend(self.try_handoff(config, leader_node));
        out
    }

    /// Ghost checks at the moment a leader completes entries up to `prefix.len()`.
    fn record_completion(
        &mut self,
        config: &Config,
        node: NodeIndex,
        term: u8,
        rules: &ActiveRules,
        prefix: &[Entry],
    ) {
        match self
            .ghost
            .completers
            .iter()
            .find(|(completed, _)| *completed == term)
        {
            Some((_, other)) if *other != node => {
                self.ghost.violations.two_leaders_in_a_term = true
            }
            Some(_) => {}
            None => self.ghost.completers.push((term, node)),
        }
        // The newest ruleset already committed before this completion must be among the rules
        // this completion was checked against.
        if let Some(latest) = self.ghost.committed.iter().rev().find_map(Entry::ruleset)
            && !rules.rulesets().contains(&config.rulesets[latest as usize])
        {
            self.ghost.violations.stale_ruleset = true;
        }
        self.observe_applied(prefix);
    }

    fn observe_applied(&mut self, prefix: &[Entry]) {
        observe(&mut self.ghost, prefix);
    }

    /// If the leader on `node` is handing off and ready, step down and tell the candidate.
    fn try_handoff(&mut self, config: &Config, node: NodeIndex) -> Vec<Msg> {
        let agent = AgentRef::Handoff(node);
        let Some(handoff) = self.nodes[node as usize]
            .leader
            .as_ref()
            .and_then(|leading| leading.leader.handoff(config.agent_id(agent).clone()).ok())
        else {
            return Vec::new();
        };
        let term = small(handoff.term.0);
        // The old leader joins the next term for itself as agent: it stops leading now. With
        // separate flushes the join reaches the disk at the node's next flush.
        let model = &mut self.nodes[node as usize];
        match model.node.admit(handoff.term, config.agent_id(agent)) {
            Ok(NodeStep::PersistThenAct(next)) => {
                if config.immediate_persistence {
                    model.node.on_persisted(&next);
                }
            }
            Ok(NodeStep::Act | NodeStep::ActAfterPersist) => {}
            Err(_) => return Vec::new(),
        }
        model.leader = None;
        vec![Msg::Handoff {
            to: config.index_of(&handoff.candidate),
            from: node,
            term,
            rules: handoff
                .rules
                .rulesets()
                .iter()
                .map(|ruleset| config.ruleset_id(ruleset))
                .collect(),
            up_to: position(handoff.up_to),
        }]
    }

    fn deliver_to_coordinator(&mut self, config: &Config, message: &Msg) -> Vec<Msg> {
        let Some(index) = message.to_coordinator() else {
            return Vec::new();
        };
        let coordinator = &mut self.coordinators[index as usize];
        let Some(change) = coordinator.change.as_mut() else {
            return Vec::new();
        };
        let term = small(change.term().0);
        let input = match message.clone() {
            Msg::Recruited {
                from,
                term: answered,
                log,
                commit,
                ..
            } if answered == term => {
                let answer = RecruitAnswer {
                    node: config.names[from as usize].clone(),
                    term: change.term(),
                    agent: change.agent().clone(),
                    log: summarize(config, &log, commit),
                };
                coordinator.logs.insert(from, log);
                Input::Recruited(answer)
            }
            Msg::Refused {
                from,
                known_term,
                taken,
                ..
            } => {
                coordinator.known_term = coordinator.known_term.max(known_term);
                let refusal = if taken {
                    Refusal::TermTaken {
                        term: Term(known_term as u64),
                        holder: change.agent().clone(),
                    }
                } else {
                    Refusal::StaleTerm {
                        offered: change.term(),
                        current: Term(known_term as u64),
                    }
                };
                Input::Refused {
                    node: config.names[from as usize].clone(),
                    refusal,
                }
            }
            Msg::CaughtUp {
                from,
                term: answered,
                last,
                ..
            } if answered == term => Input::CaughtUp {
                node: config.names[from as usize].clone(),
                position: LogPosition::new(Term(last.0 as u64), last.1 as u64),
            },
            Msg::Promoted {
                from,
                term: answered,
                ..
            } if answered == term => Input::Promoted {
                node: config.names[from as usize].clone(),
            },
            Msg::Established {
                from,
                term: answered,
                position,
                ..
            } if answered == term => Input::Established {
                node: config.names[from as usize].clone(),
                position: position as u64,
            },
            _ => return Vec::new(),
        };
        let is_answer = matches!(input, Input::Recruited(_));
        let mut commands = change.step(input).unwrap_or_default();
        if is_answer {
            // Decide as soon as revocation and candidacy hold; with arbitrary message delays this
            // covers every moment a real coordinator could choose to decide at.
            let preference = change.default_preference(
                coordinator
                    .believed_primary
                    .map(|node| &config.names[node as usize]),
            );
            if let Ok(mut decided) = change.decide(&preference) {
                commands.append(&mut decided);
            }
        }
        self.execute(config, index, commands)
    }

    /// Turns agent commands into messages.
    fn execute(&mut self, config: &Config, index: u8, commands: Vec<Command>) -> Vec<Msg> {
        if config.pipeline_takeover {
            return self.execute_pipelined(config, index, commands);
        }
        let coordinator = &mut self.coordinators[index as usize];
        let mut out = Vec::new();
        for command in commands {
            match command {
                Command::Recruit { node, term, .. } => out.push(Msg::Recruit {
                    to: config.index_of(&node),
                    coordinator: index,
                    term: small(term.0),
                }),
                Command::CatchUp {
                    candidate,
                    source,
                    up_to,
                    term,
                    ..
                } => {
                    let log = coordinator
                        .logs
                        .get(&config.index_of(&source))
                        .cloned()
                        .unwrap_or_default();
                    debug_assert_eq!(last_position(&log), up_to);
                    out.push(Msg::CatchUp {
                        to: config.index_of(&candidate),
                        coordinator: index,
                        term: small(term.0),
                        log,
                    });
                }
                Command::Promote {
                    candidate, term, ..
                } => out.push(Msg::Promote {
                    to: config.index_of(&candidate),
                    coordinator: index,
                    term: small(term.0),
                }),
                // The twin's leader pushes its log to every cohort node, which is what
                // repointing achieves on PostgreSQL.
                Command::Repoint { .. } => {}
                Command::Establish {
                    candidate,
                    term,
                    rules,
                    ..
                } => out.push(Msg::Establish {
                    to: config.index_of(&candidate),
                    coordinator: index,
                    term: small(term.0),
                    rules: rules
                        .rulesets()
                        .iter()
                        .map(|ruleset| config.ruleset_id(ruleset))
                        .collect(),
                }),
                Command::Delegate {
                    candidate, term, ..
                } => {
                    let candidate = config.index_of(&candidate);
                    coordinator.believed_primary = Some(candidate);
                    out.push(Msg::Delegate {
                        to: candidate,
                        coordinator: index,
                        term: small(term.0),
                    });
                }
            }
        }
        out
    }

    /// L1 execution: CatchUp, Promote and Establish travel as one Takeover message; Delegate
    /// is applied directly.
    fn execute_pipelined(
        &mut self,
        config: &Config,
        index: u8,
        commands: Vec<Command>,
    ) -> Vec<Msg> {
        let coordinator = &mut self.coordinators[index as usize];
        let mut out = Vec::new();
        let mut pending: std::collections::VecDeque<Command> = commands.into();
        let mut catch_up: Option<Vec<Entry>> = None;
        while let Some(command) = pending.pop_front() {
            let Some(change) = coordinator.change.as_mut() else {
                break;
            };
            match command {
                Command::Recruit { node, term, .. } => out.push(Msg::Recruit {
                    to: config.index_of(&node),
                    coordinator: index,
                    term: small(term.0),
                }),
                Command::CatchUp {
                    candidate,
                    source,
                    up_to,
                    ..
                } => {
                    catch_up = coordinator.logs.get(&config.index_of(&source)).cloned();
                    let next = change
                        .step(Input::CaughtUp {
                            node: candidate,
                            position: up_to,
                        })
                        .expect("pipelined catch-up follows the plan");
                    pending.extend(next);
                }
                Command::Promote { candidate, .. } => {
                    let next = change
                        .step(Input::Promoted { node: candidate })
                        .expect("pipelined promotion follows the plan");
                    pending.extend(next);
                }
                Command::Repoint { .. } => {}
                Command::Establish {
                    candidate,
                    term,
                    rules,
                    ..
                } => out.push(Msg::Takeover {
                    to: config.index_of(&candidate),
                    coordinator: index,
                    term: small(term.0),
                    log: catch_up.take(),
                    rules: rules
                        .rulesets()
                        .iter()
                        .map(|ruleset| config.ruleset_id(ruleset))
                        .collect(),
                }),
                Command::Delegate {
                    candidate, term, ..
                } => {
                    let candidate = config.index_of(&candidate);
                    coordinator.believed_primary = Some(candidate);
                    if let Some(leading) = self.nodes[candidate as usize].leader.as_mut()
                        && leading.leader.term() == term
                        && leading.leader.is_established()
                    {
                        leading.serving = true;
                    }
                }
            }
        }
        out
    }

    // ----- invariants checked on every state -----

    /// Checks the state-based invariants on every node, recording violations in the ghost.
    pub fn check_state(&mut self, config: &Config) {
        for node in 0..self.nodes.len() {
            self.check_node(config, node as NodeIndex);
        }
    }

    /// Checks the invariants that involve one node's state.
    fn check_node(&mut self, config: &Config, node: NodeIndex) {
        let model = &self.nodes[node as usize];
        if config.is_observer(node) {
            // Observers only ever receive applied entries.
            if !self.ghost.committed.starts_with(&model.log) {
                self.ghost.violations.applied_diverged = true;
            }
            return;
        }
        let applied = &model.log[..(model.commit as usize).min(model.log.len())];
        observe(&mut self.ghost, applied);
        if let Some(leading) = &model.leader
            && leading.leader.is_established()
        {
            let term = small(leading.leader.term().0);
            if !holds_acknowledged(&model.log, term, &self.ghost.acknowledged) {
                self.ghost.violations.acknowledged_lost = true;
            }
        }
    }

    /// Records newly acknowledged requests and checks them at once against the applied
    /// history and against every established leader of a later term.
    fn acknowledge(&mut self, acknowledged: Vec<(Position, Entry)>) {
        for (position, entry) in &acknowledged {
            if self.ghost.committed.get(*position as usize - 1) != Some(entry) {
                self.ghost.violations.acknowledged_lost = true;
            }
        }
        for model in &self.nodes {
            if let Some(leading) = &model.leader
                && leading.leader.is_established()
                && !holds_acknowledged(&model.log, small(leading.leader.term().0), &acknowledged)
            {
                self.ghost.violations.acknowledged_lost = true;
            }
        }
        self.ghost.acknowledged.extend(acknowledged);
    }
}

/// Whether `log` (of an established leader of `term`) holds every acknowledged request of
/// an earlier term at its position.
fn holds_acknowledged(log: &[Entry], term: u8, acknowledged: &[(Position, Entry)]) -> bool {
    acknowledged
        .iter()
        .filter(|(_, entry)| entry.term < term)
        .all(|(position, entry)| log.get(*position as usize - 1) == Some(entry))
}

/// Records an applied prefix in the ghost: it must agree with every other applied prefix.
fn observe(ghost: &mut Ghost, prefix: &[Entry]) {
    let shared = prefix.len().min(ghost.committed.len());
    if prefix[..shared] != ghost.committed[..shared] {
        ghost.violations.applied_diverged = true;
    } else if prefix.len() > ghost.committed.len() {
        ghost.committed = prefix.to_vec();
    }
}

/// The twin's log shipping: extend, ignore a stale prefix, or replace a divergent suffix.
fn adopt(model: &mut NodeModel, incoming: &[Entry]) {
    if incoming.starts_with(&model.log) {
        model.log = incoming.to_vec();
    } else if model.log.starts_with(incoming) {
        // Stale or reordered message: we already have all of it.
    } else {
        let common = model
            .log
            .iter()
            .zip(incoming)
            .take_while(|(left, right)| left == right)
            .count();
        model.log = incoming.to_vec();
        // The divergent suffix was rewound: whatever was flushed beyond the common prefix is gone.
        model.flushed = model.flushed.min(position(common as u64));
    }
}
