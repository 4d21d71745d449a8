//! High-availability verbs: `tessera switchover`, `tessera failover`, `tessera policy set`.
//! Switchover and failover run the coordinators' leadership-change procedure with the CLI as
//! its own agent; a policy change is recorded in the topology and applied by the coordinators
//! as a consensus rule change, which this command waits for.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tessera_consensus::{Cohort, NodeId, NodeProperties, Policy, PolicySpec};
use tessera_coordinator::client::Clients;
use tessera_coordinator::operations;

use crate::status::TopoArgs;

#[derive(Debug, Args)]
pub struct ShardArgs {
    #[arg(long, default_value = "app")]
    pub keyspace: String,
    /// Shard (key range name), e.g. -80.
    #[arg(long, allow_hyphen_values = true)]
    pub shard: String,
}

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub target: ShardArgs,
    /// The tablet to make primary; default: the most caught-up healthy other tablet.
    #[arg(long)]
    pub to: Option<String>,
    /// How long the old primary waits for running transactions before the switch.
    #[arg(long, default_value_t = 2_000)]
    pub drain_ms: u64,
    #[command(flatten)]
    pub topo: TopoArgs,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub target: ShardArgs,
    /// The tablet to make primary; default: the coordinators' preference.
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub topo: TopoArgs,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Set a shard's durability policy, e.g. `multi_zone(2)`; waits until it is in force.
    Set(PolicySetArgs),
}

#[derive(Debug, Args)]
pub struct PolicySetArgs {
    #[command(flatten)]
    pub target: ShardArgs,
    /// at_least_n(N), multi_zone(N), majority, or explicit groups.
    pub policy: String,
    /// How long to wait for the coordinators to put it in force (0: do not wait).
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    #[command(flatten)]
    pub topo: TopoArgs,
}

pub async fn switchover(args: SwitchoverArgs) -> anyhow::Result<()> {
    let topology = args.topo.connect().await?;
    let (outcome, elapsed) = operations::switchover(
        &topology,
        &args.target.keyspace,
        &args.target.shard,
        args.to.as_deref(),
        Duration::from_millis(args.drain_ms),
    )
    .await?;
    println!(
        "switched {}/{} to {} in term {} ({} ms from drain to serving)",
        args.target.keyspace,
        args.target.shard,
        outcome.leader,
        outcome.term,
        elapsed.as_millis()
    );
    Ok(())
}

pub async fn failover(args: FailoverArgs) -> anyhow::Result<()> {
    let topology = args.topo.connect().await?;
    let outcome = operations::failover(
        &topology,
        &args.target.keyspace,
        &args.target.shard,
        args.to.as_deref(),
    )
    .await?;
    println!(
        "failed over {}/{} to {} in term {}",
        args.target.keyspace, args.target.shard, outcome.leader, outcome.term
    );
    Ok(())
}

pub async fn policy(args: PolicyArgs) -> anyhow::Result<()> {
    let PolicyCommand::Set(args) = args.command;
    let spec: PolicySpec = args
        .policy
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid policy {:?}: {e}", args.policy))?;
    let canonical = spec.to_string();
    let topology = args.topo.connect().await?;
    let (keyspace, shard) = (&args.target.keyspace, &args.target.shard);
    let tablets: Vec<_> = topology
        .list_tablets(None)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| t.keyspace == *keyspace && t.shard == *shard)
        .collect();
    if tablets.is_empty() {
        bail!("shard {keyspace}/{shard} has no tablets (see `tessera status`)");
    }
    let mut cohort = Cohort::new();
    for tablet in &tablets {
        cohort.insert(
            NodeId::new(tablet.id.clone())
                .map_err(|e| anyhow::anyhow!("tablet id {}: {e}", tablet.id))?,
            NodeProperties::in_zone(tablet.zone.clone()),
        );
    }
    spec.compile(&cohort).map_err(|e| {
        anyhow::anyhow!("policy {canonical} cannot work for the tablets of {keyspace}/{shard}: {e}")
    })?;
    topology
        .update_shard(keyspace, shard, |record| {
            record.policy = canonical.clone();
            Ok::<(), tessera_topology::TopoError>(())
        })
        .await
        .with_context(|| format!("recording the policy of {keyspace}/{shard}"))?;
    println!(
        "policy of {keyspace}/{shard} set to {canonical}; waiting for the coordinators to put it in force"
    );
    if args.wait_secs == 0 {
        return Ok(());
    }
    let clients = Clients::default();
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let view = operations::snapshot(&clients, &topology, keyspace, shard).await?;
        let last;
        if let Some(leader) = view.leader()
            && let Some(status) = &leader.status
        {
            if status.policy == canonical && status.pending_policy.is_empty() {
                println!(
                    "{keyspace}/{shard} runs {canonical} (term {}, primary {})",
                    status.term, status.id
                );
                return Ok(());
            }
            last = if !status.pending_policy.is_empty() && status.pending_policy != canonical {
                format!(
                    "a change to {} is still in flight on primary {} and must complete first ({} commits wait for the standbys it requires)",
                    status.pending_policy, status.id, status.commits_waiting
                )
            } else if status.pending_policy == canonical {
                format!(
                    "the change to {canonical} is in flight on primary {}; {} commits wait for standbys both policies require",
                    status.id, status.commits_waiting
                )
            } else if status.commits_waiting > 0 {
                format!(
                    "primary {} still runs {}; {} commits wait for standbys",
                    status.id, status.policy, status.commits_waiting
                )
            } else {
                format!("primary {} still runs {}", status.id, status.policy)
            };
        } else {
            last = "no primary serves right now (a rule change is in progress, or the new policy cannot be met yet)".into();
        }
        if Instant::now() > deadline {
            bail!(
                "policy {canonical} is recorded for {keyspace}/{shard} but not in force after {} s: {last}",
                args.wait_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
