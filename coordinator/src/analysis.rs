//! Analysis: what is wrong with a shard, as a named problem. Pure: a snapshot of the observed
//! tablets and the shard's topology record in, problems out. Each problem has one recovery
//! (see `recover.rs`).

use std::fmt;

use tessera_proto::tablet::TabletStatus;
use tessera_topology::records::{ShardRecord, TabletRecord};

/// One tablet as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct TabletView {
    pub record: TabletRecord,
    /// The last status received, if any.
    pub status: Option<TabletStatus>,
    /// A status stream is open and its last message is recent.
    pub reachable: bool,
}

impl TabletView {
    fn healthy(&self) -> bool {
        self.reachable && self.status.as_ref().is_some_and(|s| s.postgres_healthy)
    }

    fn status(&self) -> Option<&TabletStatus> {
        self.status.as_ref()
    }

    /// Serving as primary right now.
    fn serving_primary(&self) -> bool {
        self.healthy()
            && self
                .status()
                .is_some_and(|s| s.role == "primary" && s.serving)
    }
}

/// A shard as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct ShardView {
    pub record: ShardRecord,
    pub tablets: Vec<TabletView>,
}

impl ShardView {
    /// The highest term any reachable tablet reports.
    pub fn highest_term(&self) -> u64 {
        self.tablets
            .iter()
            .filter_map(|t| t.status.as_ref().map(|s| s.term))
            .max()
            .unwrap_or(0)
            .max(self.record.term)
    }

    /// The serving primary with the highest term, if any.
    pub fn leader(&self) -> Option<&TabletView> {
        self.tablets
            .iter()
            .filter(|t| t.serving_primary())
            .max_by_key(|t| t.status.as_ref().map(|s| s.term).unwrap_or(0))
    }

    pub fn tablet(&self, id: &str) -> Option<&TabletView> {
        self.tablets.iter().find(|t| t.record.id == id)
    }
}

/// A named problem (as in Vitess's vtorc analysis), with the tablet it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No tablet serves as primary and the last primary is gone or stopped: fail over.
    NoPrimary {
        last_primary: Option<String>,
        reason: String,
    },
    /// The primary's PostgreSQL is down (its tablet answers): fail over.
    DeadPrimary { tablet: String },
    /// The primary's tablet does not answer at all: fail over.
    UnreachablePrimary { tablet: String },
    /// The primary's tablet answers but its PostgreSQL does not (e.g. SIGSTOP): fail over.
    UnresponsivePrimary { tablet: String },
    /// A primary serving without any established term (a new shard's bootstrap primary):
    /// establish term 1.
    Unestablished { tablet: String },
    /// A second writable PostgreSQL that is not the leader (an old primary): repoint it.
    StalePrimary { tablet: String, term: u64 },
    /// A replica that does not stream from the leader: repoint it.
    ReplicaNotReplicating { tablet: String },
    /// A tablet joined a term the leader does not lead (a higher term, or the leader's term
    /// under another agent, e.g. an agent that recruited it and died). The node rules forbid
    /// repointing it in the leader's term, so only a new term brings it back: a leadership
    /// change that keeps the leader.
    ForeignTerm {
        tablet: String,
        term: u64,
        agent: String,
    },
    /// The topology asks for a different durability policy than the leader runs under:
    /// change the rules.
    PolicyMismatch { wanted: String, running: String },
    /// Commits on the leader wait for standbys the policy needs (reported, not recovered: the
    /// missing standbys must come back).
    DurabilityBlocked {
        tablet: String,
        commits_waiting: u32,
    },
    /// A tablet whose WAL could not be repaired (reported; an operator must act).
    Quarantined { tablet: String },
}

impl Problem {
    /// Problems that a leadership change (a new term) fixes.
    pub fn needs_failover(&self) -> bool {
        matches!(
            self,
            Problem::NoPrimary { .. }
                | Problem::DeadPrimary { .. }
                | Problem::UnreachablePrimary { .. }
                | Problem::UnresponsivePrimary { .. }
                | Problem::Unestablished { .. }
        )
    }

    /// A stable key for tracking how long a problem has persisted.
    pub fn key(&self) -> String {
        match self {
            Problem::NoPrimary { .. } => "no_primary".into(),
            Problem::DeadPrimary { tablet } => format!("dead_primary:{tablet}"),
            Problem::UnreachablePrimary { tablet } => format!("unreachable_primary:{tablet}"),
            Problem::UnresponsivePrimary { tablet } => format!("unresponsive_primary:{tablet}"),
            Problem::Unestablished { tablet } => format!("unestablished:{tablet}"),
            Problem::StalePrimary { tablet, .. } => format!("stale_primary:{tablet}"),
            Problem::ReplicaNotReplicating { tablet } => {
                format!("replica_not_replicating:{tablet}")
            }
            Problem::ForeignTerm { tablet, term, .. } => format!("foreign_term:{tablet}:{term}"),
            Problem::PolicyMismatch { wanted, .. } => format!("policy_mismatch:{wanted}"),
            Problem::DurabilityBlocked { tablet, .. } => format!("durability_blocked:{tablet}"),
            Problem::Quarantined { tablet } => format!("quarantined:{tablet}"),
        }
    }

    /// The metric label of the problem kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::NoPrimary { .. } => "no_primary",
            Problem::DeadPrimary { .. } => "dead_primary",
            Problem::UnreachablePrimary { .. } => "unreachable_primary",
            Problem::UnresponsivePrimary { .. } => "unresponsive_primary",
            Problem::Unestablished { .. } => "unestablished",
            Problem::StalePrimary { .. } => "stale_primary",
            Problem::ReplicaNotReplicating { .. } => "replica_not_replicating",
            Problem::ForeignTerm { .. } => "foreign_term",
            Problem::PolicyMismatch { .. } => "policy_mismatch",
            Problem::DurabilityBlocked { .. } => "durability_blocked",
            Problem::Quarantined { .. } => "quarantined",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoPrimary {
                last_primary,
                reason,
            } => write!(
                f,
                "no primary (last primary {}): {reason}",
                last_primary.as_deref().unwrap_or("unknown")
            ),
            Problem::DeadPrimary { tablet } => write!(f, "primary {tablet}: PostgreSQL is down"),
            Problem::UnreachablePrimary { tablet } => write!(f, "primary {tablet} is unreachable"),
            Problem::UnresponsivePrimary { tablet } => {
                write!(f, "primary {tablet}: PostgreSQL does not respond")
            }
            Problem::Unestablished { tablet } => {
                write!(f, "primary {tablet} serves without an established term")
            }
            Problem::StalePrimary { tablet, term } => {
                write!(
                    f,
                    "{tablet} is a writable PostgreSQL from term {term} but not the leader"
                )
            }
            Problem::ReplicaNotReplicating { tablet } => {
                write!(f, "replica {tablet} does not stream from the primary")
            }
            Problem::ForeignTerm {
                tablet,
                term,
                agent,
            } => write!(
                f,
                "{tablet} joined term {term} of agent {agent:?}, which the leader does not lead"
            ),
            Problem::PolicyMismatch { wanted, running } => {
                write!(
                    f,
                    "policy is {wanted} in the topology but the primary runs {running}"
                )
            }
            Problem::DurabilityBlocked {
                tablet,
                commits_waiting,
            } => write!(
                f,
                "{commits_waiting} commits on {tablet} wait for standbys the policy requires"
            ),
            Problem::Quarantined { tablet } => write!(f, "{tablet} is quarantined"),
        }
    }
}

/// Names every problem of a shard.
pub fn analyse(shard: &ShardView) -> Vec<Problem> {
    let mut problems = Vec::new();
    for tablet in &shard.tablets {
        if tablet.status().is_some_and(|s| s.role == "quarantined") {
            problems.push(Problem::Quarantined {
                tablet: tablet.record.id.clone(),
            });
        }
    }
    let Some(leader) = shard.leader() else {
        problems.push(no_leader_problem(shard));
        return problems;
    };
    let leader_status = leader.status.as_ref().expect("a leader has a status");
    if leader_status.term == 0 {
        problems.push(Problem::Unestablished {
            tablet: leader.record.id.clone(),
        });
        return problems;
    }
    // A change to the wanted policy already in flight on the leader is not a mismatch.
    if !shard.record.policy.is_empty()
        && !leader_status.policy.is_empty()
        && shard.record.policy != leader_status.policy
        && shard.record.policy != leader_status.pending_policy
    {
        problems.push(Problem::PolicyMismatch {
            wanted: shard.record.policy.clone(),
            running: leader_status.policy.clone(),
        });
    }
    if leader_status.commits_waiting > 0 {
        problems.push(Problem::DurabilityBlocked {
            tablet: leader.record.id.clone(),
            commits_waiting: leader_status.commits_waiting,
        });
    }
    for tablet in &shard.tablets {
        if tablet.record.id == leader.record.id || !tablet.healthy() {
            continue;
        }
        let status = tablet
            .status
            .as_ref()
            .expect("healthy tablets have a status");
        if status.role == "quarantined" {
            continue;
        }
        let foreign = status.term > leader_status.term
            || (status.term == leader_status.term
                && !status.agent.is_empty()
                && status.agent != leader_status.agent);
        if foreign {
            problems.push(Problem::ForeignTerm {
                tablet: tablet.record.id.clone(),
                term: status.term,
                agent: status.agent.clone(),
            });
        } else if !status.in_recovery {
            problems.push(Problem::StalePrimary {
                tablet: tablet.record.id.clone(),
                term: status.term,
            });
        } else if !status.streaming
            || (!status.following.is_empty() && status.following != leader.record.id)
        {
            problems.push(Problem::ReplicaNotReplicating {
                tablet: tablet.record.id.clone(),
            });
        }
    }
    problems
}

fn no_leader_problem(shard: &ShardView) -> Problem {
    let last = shard.record.primary.clone();
    let Some(tablet) = last.as_deref().and_then(|id| shard.tablet(id)) else {
        return Problem::NoPrimary {
            last_primary: last,
            reason: "no tablet serves as primary".into(),
        };
    };
    let id = tablet.record.id.clone();
    if !tablet.reachable {
        return Problem::UnreachablePrimary { tablet: id };
    }
    match tablet.status() {
        Some(status) if status.postgres_pid == 0 => Problem::DeadPrimary { tablet: id },
        Some(status) if !status.postgres_healthy => Problem::UnresponsivePrimary { tablet: id },
        Some(status) => Problem::NoPrimary {
            last_primary: last,
            reason: if status.message.is_empty() {
                format!("{} is {} and not serving", status.id, status.role)
            } else {
                format!("{}: {}", status.id, status.message)
            },
        },
        None => Problem::UnreachablePrimary { tablet: id },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> TabletRecord {
        TabletRecord {
            id: id.into(),
            zone: id.split('-').next().unwrap_or("zone1").into(),
            keyspace: "app".into(),
            shard: "-80".into(),
            host: "127.0.0.1".into(),
            postgres_port: 1,
            pooler_port: 2,
            grpc_port: 3,
            data_dir: String::new(),
        }
    }

    fn status(id: &str, role: &str, term: u64, serving: bool) -> TabletStatus {
        TabletStatus {
            id: id.into(),
            role: role.into(),
            term,
            serving,
            postgres_pid: 42,
            postgres_healthy: true,
            in_recovery: role != "primary",
            streaming: role == "replica",
            following: if role == "replica" {
                "zone1-101".into()
            } else {
                String::new()
            },
            policy: "at_least_n(2)".into(),
            agent: "coordinator-zone1".into(),
            ..TabletStatus::default()
        }
    }

    fn shard(tablets: Vec<TabletView>) -> ShardView {
        let mut record = ShardRecord::new("app", "-80");
        record.primary = Some("zone1-101".into());
        ShardView { record, tablets }
    }

    fn view(id: &str, status: Option<TabletStatus>, reachable: bool) -> TabletView {
        TabletView {
            record: record(id),
            status,
            reachable,
        }
    }

    fn healthy_shard() -> Vec<TabletView> {
        vec![
            view(
                "zone1-101",
                Some(status("zone1-101", "primary", 3, true)),
                true,
            ),
            view(
                "zone2-102",
                Some(status("zone2-102", "replica", 3, false)),
                true,
            ),
            view(
                "zone3-103",
                Some(status("zone3-103", "replica", 3, false)),
                true,
            ),
        ]
    }

    #[test]
    fn a_healthy_shard_has_no_problem() {
        assert_eq!(analyse(&shard(healthy_shard())), vec![]);
    }

    #[test]
    fn each_way_of_losing_the_primary_has_its_own_name() {
        // Goal: the table of primary failures maps to distinct named problems.
        let cases: Vec<(TabletView, Problem)> = vec![
            (
                view(
                    "zone1-101",
                    Some(status("zone1-101", "primary", 3, true)),
                    false,
                ),
                Problem::UnreachablePrimary {
                    tablet: "zone1-101".into(),
                },
            ),
            (
                view(
                    "zone1-101",
                    Some(TabletStatus {
                        postgres_pid: 0,
                        postgres_healthy: false,
                        ..status("zone1-101", "primary", 3, false)
                    }),
                    true,
                ),
                Problem::DeadPrimary {
                    tablet: "zone1-101".into(),
                },
            ),
            (
                view(
                    "zone1-101",
                    Some(TabletStatus {
                        postgres_healthy: false,
                        ..status("zone1-101", "primary", 3, true)
                    }),
                    true,
                ),
                Problem::UnresponsivePrimary {
                    tablet: "zone1-101".into(),
                },
            ),
        ];
        for (primary, expected) in cases {
            let mut tablets = healthy_shard();
            tablets[0] = primary;
            let problems = analyse(&shard(tablets));
            assert_eq!(problems, vec![expected.clone()]);
            assert!(expected.needs_failover());
        }
    }

    #[test]
    fn a_primary_that_stopped_serving_is_no_primary_with_its_reason() {
        let mut tablets = healthy_shard();
        let mut stopped = status("zone1-101", "primary", 3, false);
        stopped.message = "restarted; waiting for a coordinator".into();
        tablets[0] = view("zone1-101", Some(stopped), true);
        let problems = analyse(&shard(tablets));
        assert!(
            matches!(&problems[..], [Problem::NoPrimary { reason, .. }] if reason.contains("restarted"))
        );
    }

    #[test]
    fn replicas_and_old_primaries_out_of_place_are_named() {
        let mut tablets = healthy_shard();
        tablets[1].status.as_mut().unwrap().streaming = false;
        tablets[2].status.as_mut().unwrap().in_recovery = false;
        tablets[2].status.as_mut().unwrap().role = "primary".into();
        let problems = analyse(&shard(tablets));
        assert_eq!(
            problems,
            vec![
                Problem::ReplicaNotReplicating {
                    tablet: "zone2-102".into()
                },
                Problem::StalePrimary {
                    tablet: "zone3-103".into(),
                    term: 3
                },
            ]
        );
        assert!(!problems.iter().any(Problem::needs_failover));
    }

    #[test]
    fn a_replica_in_a_term_the_leader_does_not_lead_is_a_foreign_term() {
        // Goal: an agent that recruited a standby and died leaves it in the leader's term under
        // another agent (or in a higher term); repointing in the leader's term would be
        // refused, so the problem is named apart from a plain replica out of place.
        let mut tablets = healthy_shard();
        tablets[1].status.as_mut().unwrap().agent = "racer-b".into();
        tablets[1].status.as_mut().unwrap().streaming = false;
        tablets[2].status.as_mut().unwrap().term = 4;
        let view = shard(tablets);
        let problems = analyse(&view);
        assert_eq!(
            problems,
            vec![
                Problem::ForeignTerm {
                    tablet: "zone2-102".into(),
                    term: 3,
                    agent: "racer-b".into()
                },
                Problem::ForeignTerm {
                    tablet: "zone3-103".into(),
                    term: 4,
                    agent: "coordinator-zone1".into()
                },
            ]
        );
        // Its recovery is a new term that keeps the leader, under the rules the leader runs.
        let spec = crate::recover::change_spec("app", &view, &problems[0]);
        assert_eq!(spec.candidate.as_deref(), Some("zone1-101"));
        assert_eq!(spec.policy, "at_least_n(2)");
        assert_eq!(spec.new_policy, None);
        assert_eq!(spec.min_term, 4);
    }

    #[test]
    fn bootstrap_policy_and_blocked_durability_are_reported() {
        let mut tablets = healthy_shard();
        tablets[0].status.as_mut().unwrap().term = 0;
        assert_eq!(
            analyse(&shard(tablets)),
            vec![Problem::Unestablished {
                tablet: "zone1-101".into()
            }]
        );
        let mut tablets = healthy_shard();
        tablets[0].status.as_mut().unwrap().commits_waiting = 2;
        let mut shard = shard(tablets);
        shard.record.policy = "multi_zone(3)".into();
        assert_eq!(
            analyse(&shard),
            vec![
                Problem::PolicyMismatch {
                    wanted: "multi_zone(3)".into(),
                    running: "at_least_n(2)".into()
                },
                Problem::DurabilityBlocked {
                    tablet: "zone1-101".into(),
                    commits_waiting: 2
                },
            ]
        );
    }

    #[test]
    fn the_leader_is_the_serving_primary_of_the_highest_term() {
        let mut tablets = healthy_shard();
        tablets[2] = view(
            "zone3-103",
            Some(status("zone3-103", "primary", 5, true)),
            true,
        );
        let shard = shard(tablets);
        assert_eq!(
            shard.leader().map(|t| t.record.id.as_str()),
            Some("zone3-103")
        );
        assert_eq!(shard.highest_term(), 5);
    }
}
