//! A deterministic driver for hand-written scenarios: messages are delivered in the order they
//! were sent, and the test decides which ones get through (the rest are lost).

use std::collections::VecDeque;

use super::cluster::{Action, Cluster, Config, Entry, Msg, NodeIndex};

/// A scenario over the simulated cluster.
pub struct Scenario {
    /// Nodes, rulesets, coordinators.
    pub config: Config,
    /// The state.
    pub cluster: Cluster,
    /// Messages sent and not yet delivered or dropped, oldest first.
    pub queue: VecDeque<Msg>,
}

impl Scenario {
    /// A scenario on an empty cluster (term 0, empty logs). Persistence is immediate, leaders
    /// push their logs, and coordinators send one message per command.
    pub fn new(mut config: Config) -> Self {
        config.immediate_persistence = true;
        let cluster = Cluster::empty(&config);
        Self {
            config,
            cluster,
            queue: VecDeque::new(),
        }
    }

    /// Performs an action and queues what it sends.
    pub fn act(&mut self, action: Action) {
        let out = self.cluster.step(&self.config, &action);
        self.queue.extend(out);
    }

    /// Delivers queued messages (and those they trigger) in order while `allow` accepts them;
    /// the others are dropped. Returns how many were delivered.
    pub fn run(&mut self, allow: impl Fn(&Msg) -> bool) -> usize {
        let mut delivered = 0;
        while let Some(message) = self.queue.pop_front() {
            if allow(&message) {
                self.act(Action::Deliver(message));
                delivered += 1;
            }
        }
        delivered
    }

    /// Index of a node by name.
    pub fn index(&self, name: &str) -> NodeIndex {
        self.config.index_of(&super::node(name))
    }

    /// A node's log.
    pub fn log(&self, name: &str) -> Vec<Entry> {
        self.cluster.nodes[self.index(name) as usize].log.clone()
    }

    /// A node's log as (term, payload) pairs, easier to compare in tables.
    pub fn entries(&self, name: &str) -> Vec<(u8, super::cluster::Payload)> {
        self.log(name)
            .into_iter()
            .map(|entry| (entry.term, entry.payload))
            .collect()
    }

    /// Whether `message` goes to or comes from one of `names` (coordinator messages count by
    /// their node end).
    pub fn touches(&self, message: &Msg, names: &[&str]) -> bool {
        let nodes: Vec<NodeIndex> = names.iter().map(|name| self.index(name)).collect();
        let receiver = message.to_node();
        let sender = message.sender().ok();
        receiver.is_some_and(|node| nodes.contains(&node))
            || (message.to_coordinator().is_some()
                && sender.is_some_and(|node| nodes.contains(&node)))
    }
}
