//! L2: seeded deterministic simulation. One seed fixes everything: the cohort (5 to 9 nodes,
//! 2 or 3 zones, sometimes an observer), the initial policy and the policies the run switches
//! to, and every event: message delay, loss and duplication, partitions of nodes and
//! coordinators, crashes that lose unflushed writes, coordinators racing for terms with stale
//! beliefs, client requests, leader-driven and coordinator-driven rule changes, planned
//! hand-offs. Every invariant is checked after every step.

use std::collections::{BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tessera_consensus::faults::Faults;
use tessera_consensus::{
    AtLeastN, Cohort, ExplicitGroups, Majority, MultiZone, NodeId, NodeProperties, Policy,
    PolicySpec, Ruleset,
};

use super::cluster::{Action, Cluster, Config, Msg, NodeIndex, Violations};

/// Environment variable that replays one seed.
pub const SEED_VARIABLE: &str = "TESSERA_SIM_SEED";

/// Knobs of a simulation run.
#[derive(Clone, Copy, Debug)]
pub struct SimulationOptions {
    /// Steps per seed.
    pub steps: u32,
    /// Deliberate mistakes in the agents.
    pub faults: Faults,
}

impl Default for SimulationOptions {
    fn default() -> Self {
        Self {
            steps: 4000,
            faults: Faults::NONE,
        }
    }
}

/// What a finished run observed (used to show that runs make progress, so the invariants
/// are not checked on an idle cluster).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Cohort size.
    pub nodes: usize,
    /// The initial policy.
    pub policy: String,
    /// Acknowledged requests.
    pub acknowledged: usize,
    /// Terms in which some leader completed an entry.
    pub terms_completed: usize,
    /// Ruleset changes that committed.
    pub rule_changes_committed: usize,
    /// Terms established by a planned hand-off.
    pub handoffs: usize,
    /// Whether the cluster had an observer.
    pub observer: bool,
    /// Violated invariants (empty when the run is correct).
    pub violations: Vec<&'static str>,
    /// Step at which the first violation was detected.
    pub violation_step: Option<u32>,
    /// The last events before the violation, for the failure message.
    pub trace: Vec<String>,
}

/// Something that happened, kept for the failure report.
enum Event {
    Action(Action),
    Partition(Option<Vec<bool>>),
}

/// Formats an event compactly: logs are shown as their length and last entry.
fn describe(time: u64, event: &Event) -> String {
    let text = match event {
        Event::Partition(sides) => format!("partition {sides:?}"),
        Event::Action(action) => {
            let text = format!("{action:?}");
            // Logs dominate the text; keep their length and last entry only.
            let mut compact = String::with_capacity(text.len().min(300));
            let mut rest = text.as_str();
            while let Some(start) = rest.find("log: [") {
                compact.push_str(&rest[..start]);
                let after = &rest[start + 6..];
                let end = after
                    .find("] ")
                    .or_else(|| after.find("]"))
                    .unwrap_or(after.len());
                let entries = &after[..end];
                let count = entries.matches("Entry {").count();
                let last = entries
                    .rsplit("Entry {")
                    .next()
                    .unwrap_or("")
                    .trim_end_matches([' ', ',', '}']);
                compact.push_str(&format!("log: <{count} entries, last {{{last}}}>"));
                rest = &after[(end + 1).min(after.len())..];
            }
            compact.push_str(rest);
            compact
        }
    };
    format!("t={time} {text}")
}

struct InFlight {
    deliver_at: u64,
    message: Msg,
}

/// A seeded run.
pub struct Simulation {
    config: Config,
    cluster: Cluster,
    rng: StdRng,
    now: u64,
    network: Vec<InFlight>,
    /// Side of each endpoint (nodes first, then coordinators) while partitioned.
    partition: Option<Vec<bool>>,
    partition_until: u64,
    /// Nodes that are down (crashed and not yet restarted) until the given time.
    down_until: Vec<u64>,
    /// The ruleset the topology advertises; coordinators read it with lag.
    advertised_ruleset: u8,
    /// The last events, formatted only when a report needs them.
    trace: VecDeque<(u64, Event)>,
    policy: String,
    /// When each coordinator last started a leadership change.
    attempt_started: Vec<u64>,
}

const LOSS_PROBABILITY: f64 = 0.05;
const DUPLICATE_PROBABILITY: f64 = 0.02;
const TRACE_LENGTH: usize = 200;

fn random_policy(rng: &mut StdRng, cohort: &Cohort) -> PolicySpec {
    let nodes: Vec<NodeId> = cohort.nodes().cloned().collect();
    match rng.random_range(0..5) {
        0 => PolicySpec::AtLeastN(AtLeastN(2)),
        1 => PolicySpec::AtLeastN(AtLeastN(3)),
        2 => PolicySpec::Majority(Majority),
        3 => PolicySpec::MultiZone(MultiZone(2)),
        _ => {
            let mut primaries = Vec::new();
            let eligible = rng.random_range(1..=3usize);
            let mut candidates = nodes.clone();
            for _ in 0..eligible {
                let position = rng.random_range(0..candidates.len());
                let primary = candidates.remove(position);
                let others: Vec<NodeId> = nodes
                    .iter()
                    .filter(|node| **node != primary)
                    .cloned()
                    .collect();
                let group_count = rng.random_range(1..=2usize);
                let groups = (0..group_count)
                    .map(|_| {
                        let size = rng.random_range(1..=2usize);
                        let mut members: BTreeSet<NodeId> = BTreeSet::new();
                        while members.len() < size {
                            members.insert(others.choose(rng).expect("others exist").clone());
                        }
                        members.into_iter().collect()
                    })
                    .collect();
                primaries.push((primary, groups));
            }
            PolicySpec::Explicit(
                ExplicitGroups::new(primaries).expect("generated groups are valid"),
            )
        }
    }
}

fn random_ruleset(rng: &mut StdRng, cohort: &Cohort) -> (String, Ruleset) {
    loop {
        let policy = random_policy(rng, cohort);
        if let Ok(ruleset) = policy.compile(cohort) {
            return (policy.to_string(), ruleset);
        }
    }
}

impl Simulation {
    /// Builds the cluster of a seed.
    pub fn new(seed: u64, options: SimulationOptions) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let size = rng.random_range(5..=9usize);
        let zones = rng.random_range(2..=3usize);
        let mut members = Cohort::new();
        let mut names = Vec::new();
        for index in 0..size {
            let zone = index % zones + 1;
            let name = NodeId::new(format!("zone{zone}-{}", 101 + index)).expect("valid id");
            members.insert(name.clone(), NodeProperties::in_zone(format!("zone{zone}")));
            names.push(name);
        }
        let mut observers = Vec::new();
        if rng.random_bool(0.3) {
            observers.push(names.len() as NodeIndex);
            names.push(NodeId::new("observer-1").expect("valid id"));
        }
        let (policy, first) = random_ruleset(&mut rng, &members);
        let mut rulesets = vec![first];
        while rulesets.len() < 3 {
            let (_, next) = random_ruleset(&mut rng, &members);
            if !rulesets.contains(&next) {
                rulesets.push(next);
            }
        }
        let coordinators = rng.random_range(2..=3u8);
        let mut config = Config::new(names, observers, rulesets, coordinators);
        config.faults = options.faults;
        let cluster = Cluster::empty(&config);
        let endpoints = config.names.len();
        Self {
            cluster,
            rng,
            now: 0,
            network: Vec::new(),
            partition: None,
            partition_until: 0,
            down_until: vec![0; endpoints],
            advertised_ruleset: 0,
            trace: VecDeque::new(),
            policy,
            attempt_started: vec![0; coordinators as usize],
            config,
        }
    }

    fn endpoint_of_sender(&self, message: &Msg) -> usize {
        match message.sender() {
            Ok(node) => node as usize,
            Err(coordinator) => self.config.names.len() + coordinator as usize,
        }
    }

    fn endpoint_of_receiver(&self, message: &Msg) -> usize {
        match (message.to_node(), message.to_coordinator()) {
            (Some(node), _) => node as usize,
            (None, Some(coordinator)) => self.config.names.len() + coordinator as usize,
            (None, None) => unreachable!("every message has a receiver"),
        }
    }

    fn connected(&self, message: &Msg) -> bool {
        match &self.partition {
            None => true,
            Some(sides) => {
                sides[self.endpoint_of_sender(message)] == sides[self.endpoint_of_receiver(message)]
            }
        }
    }

    fn send(&mut self, messages: Vec<Msg>) {
        for message in messages {
            if !self.connected(&message) || self.rng.random_bool(LOSS_PROBABILITY) {
                continue;
            }
            let copies = if self.rng.random_bool(DUPLICATE_PROBABILITY) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = self.rng.random_range(1..=12u64);
                self.network.push(InFlight {
                    deliver_at: self.now + delay,
                    message: message.clone(),
                });
            }
        }
    }

    fn is_down(&self, node: NodeIndex) -> bool {
        self.down_until[node as usize] > self.now
    }

    fn record(&mut self, event: Event) {
        if self.trace.len() == TRACE_LENGTH {
            self.trace.pop_front();
        }
        self.trace.push_back((self.now, event));
    }

    fn act(&mut self, action: Action) {
        let out = self.cluster.step(&self.config, &action);
        self.record(Event::Action(action));
        self.send(out);
    }

    fn formatted_trace(&self) -> Vec<String> {
        self.trace
            .iter()
            .map(|(time, event)| describe(*time, event))
            .collect()
    }

    fn serving_leaders(&self) -> Vec<NodeIndex> {
        (0..self.config.names.len() as NodeIndex)
            .filter(|node| !self.is_down(*node))
            .filter(|node| {
                self.cluster.nodes[*node as usize]
                    .leader
                    .as_ref()
                    .is_some_and(|leading| leading.serving)
            })
            .collect()
    }

    fn leaders(&self) -> Vec<NodeIndex> {
        (0..self.config.names.len() as NodeIndex)
            .filter(|node| {
                !self.is_down(*node) && self.cluster.nodes[*node as usize].leader.is_some()
            })
            .collect()
    }

    /// Delivers every message that is due (in send order among equal times).
    fn deliver_due(&mut self) {
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].deliver_at <= self.now {
                due.push(self.network.swap_remove(index).message);
            } else {
                index += 1;
            }
        }
        // Shuffle deliveries that fall due together: reordering.
        for position in (1..due.len()).rev() {
            let other = self.rng.random_range(0..=position);
            due.swap(position, other);
        }
        for message in due {
            let receiver_down = message.to_node().is_some_and(|node| self.is_down(node));
            if receiver_down || !self.connected(&message) {
                continue;
            }
            self.act(Action::Deliver(message));
            if self.cluster.ghost.violations.any() {
                return;
            }
        }
    }

    /// A coordinator suspects the primary when it cannot see a serving leader, and also
    /// (rarely) by mistake; it gives its own attempt time to finish first. Mistaken suspicion
    /// is what makes coordinators race with a live leader.
    fn suspects_failure(&mut self, coordinator: u8) -> bool {
        let endpoint = self.config.names.len() + coordinator as usize;
        let sees_leader = self
            .serving_leaders()
            .into_iter()
            .any(|node| match &self.partition {
                None => true,
                Some(sides) => sides[node as usize] == sides[endpoint],
            });
        let since_attempt = self.now - self.attempt_started[coordinator as usize];
        let attempt_running = self.cluster.coordinators[coordinator as usize]
            .change
            .is_some()
            && since_attempt < 100;
        if sees_leader || attempt_running {
            self.rng.random_bool(0.01)
        } else {
            // Jittered: coordinators that notice together rarely start together.
            self.rng.random_bool(0.1)
        }
    }

    fn start_change(&mut self, coordinator: u8) {
        let model = &self.cluster.coordinators[coordinator as usize];
        // Coordinators learn higher terms only from refusals, so they often race for the same one.
        let term = model.last_term.max(model.known_term) + 1;
        if term >= u8::MAX - 1 {
            return;
        }
        // The topology is read with lag: sometimes the belief stays stale.
        if self.rng.random_bool(0.5) {
            self.cluster.coordinators[coordinator as usize].believed_ruleset =
                self.advertised_ruleset;
        }
        let new_ruleset = if self.rng.random_bool(0.1) {
            Some(self.rng.random_range(0..self.config.rulesets.len() as u8))
        } else {
            None
        };
        self.act(Action::StartChange {
            coordinator,
            term,
            new_ruleset,
        });
    }

    fn record_advertised_ruleset(&mut self) {
        let latest =
            self.cluster
                .ghost
                .committed
                .iter()
                .rev()
                .find_map(|entry| match entry.payload {
                    super::cluster::Payload::Establish(ruleset)
                    | super::cluster::Payload::Rules(ruleset) => Some(ruleset),
                    super::cluster::Payload::Request(_) => None,
                });
        if let Some(latest) = latest {
            self.advertised_ruleset = latest;
        }
    }

    /// One simulated tick: deliveries, then one random event.
    fn tick(&mut self, options: &SimulationOptions) {
        self.now += 1;
        if self.partition.is_some() && self.now >= self.partition_until {
            self.partition = None;
            self.record(Event::Partition(None));
        }
        self.deliver_due();
        if self.cluster.ghost.violations.any() {
            return;
        }
        self.record_advertised_ruleset();
        let nodes = self.config.names.len() as NodeIndex;
        // One event per tick, chosen by weight (out of 1000).
        let roll = self.rng.random_range(0..1000u32);
        match roll {
            // Flush a node that has pending writes (the common case).
            0..=349 => {
                let pending: Vec<NodeIndex> = (0..nodes)
                    .filter(|node| !self.is_down(*node) && self.cluster.needs_flush(*node))
                    .collect();
                if let Some(node) = pending.choose(&mut self.rng).copied() {
                    self.act(Action::Flush(node));
                }
            }
            // Client requests go to a serving leader.
            350..=549 => {
                if let Some(node) = self.serving_leaders().choose(&mut self.rng).copied()
                    && self.cluster.ghost.next_value < 250
                {
                    self.act(Action::ClientRequest(node));
                }
            }
            // Leaders retransmit (message loss would otherwise stall replication).
            550..=699 => {
                if let Some(node) = self.leaders().choose(&mut self.rng).copied() {
                    let out = self.cluster.heartbeat(&self.config, node);
                    self.send(out);
                }
            }
            // A coordinator's failure detector fires.
            700..=799 => {
                let coordinator = self.rng.random_range(0..self.config.coordinators);
                if self.suspects_failure(coordinator) {
                    self.attempt_started[coordinator as usize] = self.now;
                    self.start_change(coordinator);
                }
            }
            // A node crashes (losing unflushed writes) and stays down for a while.
            800..=814 => {
                let node = self.rng.random_range(0..nodes);
                if !self.is_down(node) {
                    self.act(Action::Crash(node));
                    self.down_until[node as usize] = self.now + self.rng.random_range(5..80u64);
                }
            }
            // A partition splits nodes and coordinators in two for a while.
            815..=818 if self.partition.is_none() => {
                let endpoints = self.config.names.len() + self.config.coordinators as usize;
                let sides = (0..endpoints).map(|_| self.rng.random_bool(0.5)).collect();
                self.partition = Some(sides);
                self.partition_until = self.now + self.rng.random_range(20..150u64);
                self.record(Event::Partition(self.partition.clone()));
            }
            // The leader proposes a ruleset change.
            819..=828 => {
                if let Some(node) = self.serving_leaders().choose(&mut self.rng).copied() {
                    let ruleset = self.rng.random_range(0..self.config.rulesets.len() as u8);
                    self.act(Action::ProposeRules { node, ruleset });
                }
            }
            // The leader hands over to another node (planned switchover).
            829..=833 => {
                if let Some(node) = self.serving_leaders().choose(&mut self.rng).copied() {
                    let candidate = self.rng.random_range(0..nodes);
                    if candidate != node {
                        self.act(Action::BeginHandoff { node, candidate });
                    }
                }
            }
            // Otherwise time just passes.
            _ => {}
        }
        let _ = options;
    }

    /// Runs the seed and returns a dump of the final state (debugging aid).
    pub fn debug_run(mut self) -> String {
        let options = SimulationOptions::default();
        let mut starts = 0;
        for _ in 0..options.steps {
            let before: usize = self
                .cluster
                .coordinators
                .iter()
                .map(|c| c.attempts as usize)
                .sum();
            self.tick(&options);
            let after: usize = self
                .cluster
                .coordinators
                .iter()
                .map(|c| c.attempts as usize)
                .sum();
            starts += after - before;
            if self.cluster.ghost.violations.any() {
                break;
            }
        }
        let mut dump = format!("rulesets: {:?}\nstarts: {starts}\n", self.config.rulesets);
        dump += &format!("ghost: {:?}\n", self.cluster.ghost);
        for (index, node) in self.cluster.nodes.iter().enumerate() {
            dump += &format!(
                "node {index} {}: {:?} log={:?} flushed={} commit={} leader={:?} down={}\n",
                self.config.names[index],
                node.node.durable(),
                node.log
                    .iter()
                    .map(|e| (e.term, e.payload))
                    .collect::<Vec<_>>(),
                node.flushed,
                node.commit,
                node.leader
                    .as_ref()
                    .map(|l| (l.leader.term(), l.leader.durable(), l.serving)),
                self.is_down(index as u8)
            );
        }
        for (index, coordinator) in self.cluster.coordinators.iter().enumerate() {
            dump += &format!(
                "coordinator {index}: attempts {} last_term {} known {} phase {:?} answers {:?} revocation {:?}\n",
                coordinator.attempts,
                coordinator.last_term,
                coordinator.known_term,
                coordinator.change.as_ref().map(|c| c.phase()),
                coordinator.change.as_ref().map(|c| c
                    .answers()
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()),
                coordinator.change.as_ref().map(|c| c.revocation().len()),
            );
        }
        dump += &self.formatted_trace().join("\n");
        dump
    }

    /// Runs the seed to completion or to the first violation.
    pub fn run(mut self, seed: u64, options: SimulationOptions) -> Outcome {
        let mut violation_step = None;
        for step in 0..options.steps {
            self.tick(&options);
            if self.cluster.ghost.violations.any() {
                violation_step = Some(step);
                break;
            }
        }
        let ghost = &self.cluster.ghost;
        let committed_changes = ghost
            .committed
            .windows(2)
            .filter(|pair| {
                matches!(pair[1].payload, super::cluster::Payload::Rules(_))
                    || matches!(
                        (pair[0].payload, pair[1].payload),
                        (super::cluster::Payload::Establish(a), super::cluster::Payload::Establish(b)) if a != b
                    )
            })
            .count();
        Outcome {
            seed,
            nodes: self.config.names.len() - self.config.observers.len(),
            policy: self.policy.clone(),
            acknowledged: ghost.acknowledged.len(),
            terms_completed: ghost.completers.len(),
            rule_changes_committed: committed_changes,
            handoffs: ghost.handoffs_established as usize,
            observer: !self.config.observers.is_empty(),
            violations: ghost.violations.names(),
            violation_step,
            trace: if violation_step.is_some() {
                self.formatted_trace()
            } else {
                Vec::new()
            },
        }
    }
}

/// Runs one seed.
pub fn run_seed(seed: u64, options: SimulationOptions) -> Outcome {
    Simulation::new(seed, options).run(seed, options)
}

/// The failure report of a run: seed, replay command, violations and the last events.
pub fn failure_report(outcome: &Outcome) -> String {
    format!(
        "seed {seed} violated {violations:?} at step {step:?} ({nodes} nodes, policy {policy})\n\
         replay: {variable}={seed} cargo test -p tessera-consensus --test simulation replay -- --nocapture\n\
         last events:\n  {trace}",
        seed = outcome.seed,
        violations = outcome.violations,
        step = outcome.violation_step,
        nodes = outcome.nodes,
        policy = outcome.policy,
        variable = SEED_VARIABLE,
        trace = outcome.trace.join("\n  "),
    )
}

/// Whether violations were found.
pub fn violated(violations: &Violations) -> bool {
    violations.any()
}
