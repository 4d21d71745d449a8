//! Recovery: one action per named problem.
//!
//! | problem | recovery |
//! |---|---|
//! | NoPrimary, DeadPrimary, UnreachablePrimary, UnresponsivePrimary | failover: a leadership change in a new term |
//! | Unestablished | a leadership change that keeps the bootstrap primary (term 1) |
//! | PolicyMismatch | a leadership change with the new ruleset, keeping the leader |
//! | StalePrimary, ReplicaNotReplicating | repoint the tablet at the leader, in the leader's term |
//! | DurabilityBlocked, Quarantined | none: reported (metrics, logs, `tessera status`) |

use std::time::Duration;

use tessera_consensus::AgentId;
use tessera_proto::tablet::{Peer, RepointRequest, Stamp};
use tessera_topology::Topology;

use crate::analysis::{Problem, ShardView};
use crate::change::{self, ChangeOutcome, ChangeSpec, Timeouts};
use crate::client::{Clients, call};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Change(#[from] change::ChangeError),
    #[error("{0}")]
    Repair(String),
}

/// The change that fixes a primary problem.
pub fn change_spec(keyspace: &str, shard: &ShardView, problem: &Problem) -> ChangeSpec {
    let leader = shard.leader().map(|t| t.record.id.clone());
    let (new_policy, candidate) = match problem {
        Problem::Unestablished { tablet } => (None, Some(tablet.clone())),
        Problem::PolicyMismatch { wanted, .. } => (Some(wanted.clone()), leader.clone()),
        _ => (None, None),
    };
    // Rules in force are those the leader runs (the topology may already want new ones).
    let policy = match problem {
        Problem::PolicyMismatch { running, .. } => running.clone(),
        _ => shard.record.policy.clone(),
    };
    ChangeSpec {
        keyspace: keyspace.to_string(),
        shard: shard.record.name.clone(),
        policy,
        believed_primary: leader.or_else(|| shard.record.primary.clone()),
        tablets: shard.tablets.clone(),
        new_policy,
        candidate,
        min_term: shard.highest_term(),
    }
}

/// Applies the recovery for `problem`.
pub async fn recover(
    agent: &AgentId,
    clients: &Clients,
    topology: Option<&Topology>,
    keyspace: &str,
    shard: &ShardView,
    problem: &Problem,
    timeouts: &Timeouts,
) -> Result<Option<ChangeOutcome>, RecoveryError> {
    match problem {
        Problem::NoPrimary { .. }
        | Problem::DeadPrimary { .. }
        | Problem::UnreachablePrimary { .. }
        | Problem::UnresponsivePrimary { .. }
        | Problem::Unestablished { .. }
        | Problem::PolicyMismatch { .. } => {
            let spec = change_spec(keyspace, shard, problem);
            Ok(Some(
                change::run(agent, clients, topology, spec, timeouts).await?,
            ))
        }
        Problem::StalePrimary { tablet, .. } | Problem::ReplicaNotReplicating { tablet } => {
            repoint_to_leader(clients, shard, tablet, timeouts.repoint).await?;
            Ok(None)
        }
        Problem::DurabilityBlocked { .. } | Problem::Quarantined { .. } => Ok(None),
    }
}

/// Repoints a tablet at the shard's leader within the leader's own term. The stamp is the
/// term's (term, agent) as the leader reports it: the repair carries out that agent's decision
/// ("follow the delegated leader of term T") and nothing else, so it cannot conflict with it.
pub async fn repoint_to_leader(
    clients: &Clients,
    shard: &ShardView,
    tablet: &str,
    timeout: Duration,
) -> Result<(), RecoveryError> {
    let leader = shard
        .leader()
        .ok_or_else(|| RecoveryError::Repair("no leader to repoint to".into()))?;
    let leader_status = leader.status.as_ref().expect("leaders have a status");
    if leader_status.agent.is_empty() || leader_status.term == 0 {
        return Err(RecoveryError::Repair(
            "the leader has no established term".into(),
        ));
    }
    let target = shard
        .tablet(tablet)
        .ok_or_else(|| RecoveryError::Repair(format!("unknown tablet {tablet}")))?;
    let mut client = clients
        .get(&target.record)
        .map_err(|e| RecoveryError::Repair(e.to_string()))?;
    let response = call(
        timeout,
        "repoint",
        client.repoint(RepointRequest {
            stamp: Some(Stamp {
                term: leader_status.term,
                agent: leader_status.agent.clone(),
            }),
            primary: Some(Peer {
                id: leader.record.id.clone(),
                host: leader.record.host.clone(),
                postgres_port: u32::from(leader.record.postgres_port),
            }),
        }),
    )
    .await
    .map_err(RecoveryError::Repair)?;
    if response.quarantined {
        tracing::error!(%tablet, message = %response.message, "tablet quarantined during repair");
    } else {
        tracing::info!(%tablet, leader = %leader.record.id, rewound = response.rewound, "tablet repointed");
    }
    Ok(())
}
