//! Operator-driven changes (`tessera switchover`, `tessera failover`): the CLI acts as an agent
//! of its own, with the same leadership-change procedure the coordinators use.

use std::time::{Duration, Instant};

use tessera_proto::tablet::{DrainRequest, StatusRequest};
use tessera_topology::Topology;

use crate::analysis::{ShardView, TabletView};
use crate::change::{self, ChangeOutcome, ChangeSpec, Timeouts};
use crate::client::{Clients, call};

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("topology: {0}")]
    Topology(#[from] tessera_topology::TopoError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Change(#[from] change::ChangeError),
}

/// Reads a shard from the topology and asks each of its tablets for its status once.
pub async fn snapshot(
    clients: &Clients,
    topology: &Topology,
    keyspace: &str,
    shard: &str,
) -> Result<ShardView, OperationError> {
    let (record, _) = topology.get_shard(keyspace, shard).await?;
    let tablets = topology
        .list_tablets(None)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| t.keyspace == keyspace && t.shard == shard)
        .collect::<Vec<_>>();
    if tablets.is_empty() {
        return Err(OperationError::Invalid(format!(
            "shard {keyspace}/{shard} has no tablets"
        )));
    }
    let views = futures::future::join_all(tablets.into_iter().map(|record| async move {
        let status = match clients.get(&record) {
            Ok(mut client) => call(
                Duration::from_secs(3),
                "status",
                client.status(StatusRequest {}),
            )
            .await
            .ok(),
            Err(_) => None,
        };
        TabletView {
            reachable: status.is_some(),
            status,
            record,
        }
    }))
    .await;
    Ok(ShardView {
        record,
        tablets: views,
    })
}

/// A planned switchover: drain the current primary (bounded), then a leadership change to
/// `to` (or the best other candidate). Gates buffer the shard's queries meanwhile.
pub async fn switchover(
    topology: &Topology,
    keyspace: &str,
    shard: &str,
    to: Option<&str>,
    drain: Duration,
) -> Result<(ChangeOutcome, Duration), OperationError> {
    let clients = Clients::default();
    let view = snapshot(&clients, topology, keyspace, shard).await?;
    let leader = view
        .leader()
        .ok_or_else(|| {
            OperationError::Invalid(format!(
                "shard {keyspace}/{shard} has no serving primary; use `tessera failover`"
            ))
        })?
        .clone();
    let candidate = match to {
        Some(to) => {
            let target = view.tablet(to).ok_or_else(|| {
                OperationError::Invalid(format!("{to} is not a tablet of {keyspace}/{shard}"))
            })?;
            if target.record.id == leader.record.id {
                return Err(OperationError::Invalid(format!(
                    "{to} is already the primary"
                )));
            }
            if !target.reachable
                || target
                    .status
                    .as_ref()
                    .is_some_and(|s| s.role == "quarantined")
            {
                return Err(OperationError::Invalid(format!(
                    "{to} is not healthy enough to lead"
                )));
            }
            Some(to.to_string())
        }
        None => None,
    };
    let _lock = tokio::time::timeout(
        Duration::from_secs(5),
        topology.lock_shard(keyspace, shard, crate::SHARD_LOCK_TTL),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let started = Instant::now();
    if let Ok(mut client) = clients.get(&leader.record) {
        let _ = call(
            drain + Duration::from_secs(2),
            "drain",
            client.drain(DrainRequest {
                timeout_ms: drain.as_millis() as u32,
            }),
        )
        .await;
    }
    let spec = ChangeSpec {
        keyspace: keyspace.to_string(),
        shard: shard.to_string(),
        policy: view.record.policy.clone(),
        believed_primary: Some(leader.record.id.clone()),
        tablets: view.tablets.clone(),
        new_policy: None,
        candidate: candidate.or_else(|| best_other(&view, &leader.record.id)),
        min_term: view.highest_term(),
    };
    let agent = crate::agent_id("cli");
    let outcome = change::run(&agent, &clients, Some(topology), spec, &Timeouts::default()).await?;
    Ok((outcome, started.elapsed()))
}

/// The healthiest, most caught-up tablet other than `not`.
fn best_other(view: &ShardView, not: &str) -> Option<String> {
    view.tablets
        .iter()
        .filter(|t| t.record.id != not && t.reachable)
        .filter(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.postgres_healthy && s.role != "quarantined")
        })
        .max_by_key(|t| t.status.as_ref().map(|s| (s.wal_term, s.lsn_value)))
        .map(|t| t.record.id.clone())
}

/// A manual emergency failover: a leadership change now, whatever the primary's state.
pub async fn failover(
    topology: &Topology,
    keyspace: &str,
    shard: &str,
    to: Option<&str>,
) -> Result<ChangeOutcome, OperationError> {
    let clients = Clients::default();
    let view = snapshot(&clients, topology, keyspace, shard).await?;
    if let Some(to) = to
        && view.tablet(to).is_none()
    {
        return Err(OperationError::Invalid(format!(
            "{to} is not a tablet of {keyspace}/{shard}"
        )));
    }
    let spec = ChangeSpec {
        keyspace: keyspace.to_string(),
        shard: shard.to_string(),
        policy: view.record.policy.clone(),
        believed_primary: view.record.primary.clone(),
        tablets: view.tablets.clone(),
        new_policy: None,
        candidate: to.map(str::to_string),
        min_term: view.highest_term(),
    };
    let agent = crate::agent_id("cli");
    Ok(change::run(&agent, &clients, Some(topology), spec, &Timeouts::default()).await?)
}
