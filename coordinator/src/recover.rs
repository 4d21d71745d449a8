//! Recovery: one action per named problem.
//!
//! | problem | recovery |
//! |---|---|
//! | NoPrimary, DeadPrimary, UnreachablePrimary, UnresponsivePrimary | failover: a leadership change in a new term |
//! | Unestablished | a leadership change that keeps the bootstrap primary (term 1) |
//! | PolicyMismatch | the leader changes its rules as a request in its own term (both rulesets until the change is durable) |
//! | ForeignTerm | a leadership change that keeps the leader (only a new term reaches the tablet) |
//! | StalePrimary, ReplicaNotReplicating | repoint the tablet at the leader, in the leader's term |
//! | DurabilityBlocked, Quarantined | none: reported (metrics, logs, `tessera status`) |

use std::time::Duration;

use tessera_consensus::AgentId;
use tessera_proto::rules;
use tessera_proto::tablet::{ChangeRulesRequest, Peer, RepointRequest, Stamp};
use tessera_topology::Topology;

use crate::analysis::{Problem, ShardView, TabletView};
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
    let candidate = match problem {
        Problem::Unestablished { tablet } => Some(tablet.clone()),
        Problem::ForeignTerm { .. } => leader.clone(),
        _ => None,
    };
    // Rules in force are those a leader runs (the topology may already want new ones); with
    // no leader, the topology's.
    let policy = shard
        .leader()
        .and_then(|t| t.status.as_ref())
        .map(|s| s.policy.clone())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| shard.record.policy.clone());
    ChangeSpec {
        keyspace: keyspace.to_string(),
        shard: shard.record.name.clone(),
        policy,
        believed_primary: leader.or_else(|| shard.record.primary.clone()),
        tablets: shard.tablets.clone(),
        new_policy: None,
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
        // Named only while a leader serves (`analyse`): the leader changes its own rules.
        Problem::PolicyMismatch { wanted, .. } => {
            change_rules_on_leader(clients, shard, wanted, timeouts.repoint).await?;
            Ok(None)
        }
        Problem::NoPrimary { .. }
        | Problem::DeadPrimary { .. }
        | Problem::UnreachablePrimary { .. }
        | Problem::UnresponsivePrimary { .. }
        | Problem::Unestablished { .. }
        | Problem::ForeignTerm { .. } => {
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

/// Asks the leader to change its rules to `policy` within its own term (compiled for the
/// shard's cohort). The stamp is the leader's own (term, agent): the leader decides the change
/// as a request; a leader that moved on refuses it.
pub async fn change_rules_on_leader(
    clients: &Clients,
    shard: &ShardView,
    policy: &str,
    timeout: Duration,
) -> Result<(), RecoveryError> {
    let (leader, stamp) = leader_stamp(shard)?;
    let ruleset = change::compile(policy, &change::cohort_of(&shard.tablets))?;
    let mut client = clients
        .get(&leader.record)
        .map_err(|e| RecoveryError::Repair(e.to_string()))?;
    let response = call(
        timeout,
        "change rules",
        client.change_rules(ChangeRulesRequest {
            stamp: Some(stamp),
            ruleset: Some(rules::to_wire(&ruleset, policy)),
        }),
    )
    .await
    .map_err(RecoveryError::Repair)?;
    tracing::info!(leader = %leader.record.id, policy = %response.pending_policy, "rule change in flight on the leader");
    Ok(())
}

/// The shard's leader and its own (term, agent).
fn leader_stamp(shard: &ShardView) -> Result<(&TabletView, Stamp), RecoveryError> {
    let leader = shard
        .leader()
        .ok_or_else(|| RecoveryError::Repair("no leader".into()))?;
    let status = leader.status.as_ref().expect("leaders have a status");
    if status.agent.is_empty() || status.term == 0 {
        return Err(RecoveryError::Repair(
            "the leader has no established term".into(),
        ));
    }
    Ok((
        leader,
        Stamp {
            term: status.term,
            agent: status.agent.clone(),
        },
    ))
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
    let (leader, stamp) = leader_stamp(shard)?;
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
            stamp: Some(stamp),
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
