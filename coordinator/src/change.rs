//! Executing a leadership change: the consensus core (`tessera_consensus::LeadershipChange`)
//! decides, this module performs its commands on tablets over gRPC and feeds the outcomes back.
//!
//! ```text
//!  start ─► Recruit* (concurrent) ─► decide(preference) ─► CatchUp? ─► Promote
//!        ─► Repoint* (concurrent, not awaited) + Establish ─► Delegate ─► topology updated
//! ```
//! Failover, planned switchover, coordinator-driven policy changes and the bootstrap of a new
//! shard are all this one procedure with different inputs.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tessera_consensus::{
    AgentError, AgentId, ChangeRequest, Cohort, Command, Input, LeadershipChange, LogPosition,
    LogSummary, NodeId, NodeProperties, Policy, PolicySpec, RecruitAnswer, Refusal, Ruleset, Term,
};
use tessera_proto::rules;
use tessera_proto::tablet::{
    CatchUpRequest, DelegateRequest, EstablishRequest, Peer, PromoteRequest, RecruitRequest,
    RepointRequest, Stamp, recruit_response,
};
use tessera_topology::Topology;
use tessera_topology::records::TabletRecord;

use crate::analysis::TabletView;
use crate::client::{Clients, call};

/// Timeouts of the steps of a change.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub recruit: Duration,
    pub catch_up: Duration,
    pub promote: Duration,
    pub repoint: Duration,
    pub establish: Duration,
    pub delegate: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            recruit: Duration::from_secs(10),
            catch_up: Duration::from_secs(60),
            promote: Duration::from_secs(30),
            repoint: Duration::from_secs(60),
            establish: Duration::from_secs(30),
            delegate: Duration::from_secs(5),
        }
    }
}

/// What a change needs to know.
#[derive(Debug, Clone)]
pub struct ChangeSpec {
    pub keyspace: String,
    pub shard: String,
    /// The shard's policy as the topology says (believed).
    pub policy: String,
    /// The primary the caller believes in (candidate preference only).
    pub believed_primary: Option<String>,
    /// The cohort, with what was last seen of each tablet.
    pub tablets: Vec<TabletView>,
    /// Switch to this policy as part of the change.
    pub new_policy: Option<String>,
    /// Only this tablet may become the leader (switchover `--to`, keeping a bootstrap primary).
    pub candidate: Option<String>,
    /// The new term is above this and every term seen.
    pub min_term: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOutcome {
    pub term: u64,
    pub leader: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("policy {policy:?}: {reason}")]
    Policy { policy: String, reason: String },
    #[error(
        "term {term} was taken or overtaken (highest seen {highest}); retry with a higher term"
    )]
    Outpaced { term: u64, highest: u64 },
    #[error("cannot decide: {0}")]
    Decide(AgentError),
    #[error("{0}")]
    Step(String),
    #[error("consensus core rejected an input: {0}")]
    Core(AgentError),
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("tablet ids are valid node ids")
}

/// The shard's cohort: every tablet, with its zone.
pub fn cohort_of(tablets: &[TabletView]) -> Cohort {
    let mut cohort = Cohort::new();
    for tablet in tablets {
        cohort.insert(
            node(&tablet.record.id),
            NodeProperties::in_zone(tablet.record.zone.clone()),
        );
    }
    cohort
}

pub fn compile(policy: &str, cohort: &Cohort) -> Result<Ruleset, ChangeError> {
    let spec: PolicySpec =
        policy.parse().map_err(
            |e: tessera_consensus::PolicyParseError| ChangeError::Policy {
                policy: policy.to_string(),
                reason: e.to_string(),
            },
        )?;
    spec.compile(cohort).map_err(|e| ChangeError::Policy {
        policy: policy.to_string(),
        reason: e.to_string(),
    })
}

fn peer(record: &TabletRecord) -> Peer {
    Peer {
        id: record.id.clone(),
        host: record.host.clone(),
        postgres_port: u32::from(record.postgres_port),
    }
}

fn answer_from_wire(
    node_id: NodeId,
    term: Term,
    agent: &AgentId,
    log: &tessera_proto::tablet::LogSummary,
) -> Result<RecruitAnswer, String> {
    let decode =
        |r: &tessera_proto::tablet::Ruleset| Ruleset::try_from(r).map_err(|e| e.to_string());
    Ok(RecruitAnswer {
        node: node_id,
        term,
        agent: agent.clone(),
        log: LogSummary {
            last: LogPosition::new(Term(log.last_term), log.lsn),
            ruleset: log.ruleset.as_ref().map(decode).transpose()?,
            pending: log.pending.iter().map(decode).collect::<Result<_, _>>()?,
        },
    })
}

/// Runs one leadership change to completion, or fails without having delegated anything.
pub async fn run(
    agent: &AgentId,
    clients: &Clients,
    topology: Option<&Topology>,
    spec: ChangeSpec,
    timeouts: &Timeouts,
) -> Result<ChangeOutcome, ChangeError> {
    let cohort = cohort_of(&spec.tablets);
    let believed = compile(&spec.policy, &cohort)?;
    let new_ruleset = spec
        .new_policy
        .as_deref()
        .map(|p| compile(p, &cohort))
        .transpose()?;
    let highest_seen = spec
        .tablets
        .iter()
        .filter_map(|t| t.status.as_ref().map(|s| s.term))
        .max()
        .unwrap_or(0)
        .max(spec.min_term);
    let term = Term(highest_seen + 1);
    let record = |id: &NodeId| {
        spec.tablets
            .iter()
            .find(|t| t.record.id == id.as_str())
            .map(|t| &t.record)
    };
    // A client of one of the change's tablets.
    let client_of = |id: &NodeId| {
        let target = record(id).ok_or_else(|| ChangeError::Step(format!("unknown tablet {id}")))?;
        clients
            .get(target)
            .map_err(|e| ChangeError::Step(e.to_string()))
    };
    let stamp = Stamp {
        term: term.0,
        agent: agent.as_str().to_string(),
    };
    let (mut change, commands) = LeadershipChange::start(ChangeRequest {
        agent: agent.clone(),
        term,
        nodes: spec.tablets.iter().map(|t| node(&t.record.id)).collect(),
        believed_ruleset: believed.clone(),
        believed_primary: spec.believed_primary.as_deref().map(node),
        new_ruleset: new_ruleset.clone(),
    });
    tracing::info!(keyspace = %spec.keyspace, shard = %spec.shard, term = term.0, %agent, "leadership change: recruiting");

    // Recruit every tablet at once; each call runs to completion in its own task, so a
    // decision taken before the slowest answer never cancels a half-done recruitment.
    let (answers_tx, mut answers_rx) = tokio::sync::mpsc::channel(spec.tablets.len().max(1));
    for command in commands {
        let Command::Recruit { node: target, .. } = command else {
            continue;
        };
        let Some(record) = record(&target).cloned() else {
            continue;
        };
        let client = clients.get(&record);
        let request = RecruitRequest {
            stamp: Some(stamp.clone()),
        };
        let sender = answers_tx.clone();
        let timeout = timeouts.recruit;
        tokio::spawn(async move {
            let result = match client {
                Ok(mut client) => call(timeout, "recruit", client.recruit(request)).await,
                Err(error) => Err(error.to_string()),
            };
            let _ = sender.send((target, result)).await;
        });
    }
    drop(answers_tx);
    let preference = |change: &LeadershipChange| -> Vec<NodeId> {
        if let Some(candidate) = &spec.candidate {
            return vec![node(candidate)];
        }
        let (failed, mut ordered): (Vec<NodeId>, Vec<NodeId>) = change
            .default_preference(spec.believed_primary.as_deref().map(node).as_ref())
            .into_iter()
            .filter(|id| {
                // A candidate must be able to work: not quarantined, PostgreSQL answering.
                spec.tablets.iter().any(|t| {
                    t.record.id == id.as_str()
                        && t.status
                            .as_ref()
                            .is_none_or(|s| s.role != "quarantined" && s.postgres_pid != 0)
                })
            })
            .partition(|id| spec.believed_primary.as_deref() == Some(id.as_str()));
        // Without a fixed candidate this change is a failover away from the believed primary:
        // that tablet is the last resort, not the first choice, even when it answered (e.g.
        // its PostgreSQL restarted after a crash and it is in its own preferred zone).
        ordered.extend(failed);
        ordered
    };
    let mut decided: Option<Vec<Command>> = None;
    let mut last_error = None;
    let mut outpaced = None;
    while let Some((target, result)) = answers_rx.recv().await {
        match result {
            Ok(response) => match response.outcome {
                Some(recruit_response::Outcome::Log(log)) => {
                    let answer = answer_from_wire(target.clone(), term, agent, &log)
                        .map_err(ChangeError::Step)?;
                    change
                        .step(Input::Recruited(answer))
                        .map_err(ChangeError::Core)?;
                }
                Some(recruit_response::Outcome::Refusal(refusal)) => {
                    tracing::info!(tablet = %target, reason = %refusal.message, "recruitment refused");
                    outpaced = Some(outpaced.unwrap_or(0).max(refusal.current_term));
                    let refusal = if refusal.kind == "term_taken" {
                        Refusal::TermTaken {
                            term,
                            holder: AgentId::new(refusal.holder.clone())
                                .unwrap_or_else(|_| agent.clone()),
                        }
                    } else {
                        Refusal::StaleTerm {
                            offered: term,
                            current: Term(refusal.current_term),
                        }
                    };
                    let _ = change.step(Input::Refused {
                        node: target.clone(),
                        refusal,
                    });
                }
                None => {}
            },
            Err(error) => tracing::info!(tablet = %target, %error, "not recruited"),
        }
        match change.decide(&preference(&change)) {
            Ok(commands) => {
                decided = Some(commands);
                break;
            }
            Err(error) => last_error = Some(error),
        }
    }
    let Some(commands) = decided else {
        if let Some(highest) = outpaced {
            return Err(ChangeError::Outpaced {
                term: term.0,
                highest,
            });
        }
        return Err(ChangeError::Decide(
            last_error.unwrap_or(AgentError::AlreadyDecided),
        ));
    };
    let plan = change.plan().cloned().expect("decided");
    tracing::info!(
        keyspace = %spec.keyspace, shard = %spec.shard, term = term.0,
        candidate = %plan.candidate, timeline = %plan.timeline, source = %plan.source,
        "leadership change: decided"
    );
    let rules_wire: Vec<_> = plan
        .rules
        .rulesets()
        .iter()
        .map(|ruleset| {
            let label = if Some(ruleset) == new_ruleset.as_ref() {
                spec.new_policy.clone().unwrap_or_default()
            } else if *ruleset == believed {
                spec.policy.clone()
            } else {
                String::new()
            };
            rules::to_wire(ruleset, &label)
        })
        .collect();

    let mut queue: VecDeque<Command> = commands.into();
    let mut repoints = Vec::new();
    let repointed: Arc<parking_lot::Mutex<BTreeSet<NodeId>>> = Arc::default();
    let mut late_listener = None;
    let mut answers_rx = Some(answers_rx);
    let mut leader = None;
    let repoint_request = |primary_record: &TabletRecord| RepointRequest {
        stamp: Some(stamp.clone()),
        primary: Some(peer(primary_record)),
    };
    while let Some(command) = queue.pop_front() {
        let next = match command {
            Command::CatchUp {
                candidate,
                source,
                up_to,
                ..
            } => {
                let source_record = record(&source)
                    .ok_or_else(|| ChangeError::Step(format!("unknown tablet {source}")))?;
                let mut client = client_of(&candidate)?;
                let position = call(
                    timeouts.catch_up,
                    "catch up",
                    client.catch_up(CatchUpRequest {
                        stamp: Some(stamp.clone()),
                        source: Some(peer(source_record)),
                        up_to_term: up_to.term.0,
                        up_to_lsn: up_to.index,
                    }),
                )
                .await
                .map_err(ChangeError::Step)?;
                change
                    .step(Input::CaughtUp {
                        node: candidate,
                        position: LogPosition::new(Term(position.last_term), position.lsn),
                    })
                    .map_err(ChangeError::Core)?
            }
            Command::Promote { candidate, .. } => {
                let mut client = client_of(&candidate)?;
                call(
                    timeouts.promote,
                    "promote",
                    client.promote(PromoteRequest {
                        stamp: Some(stamp.clone()),
                    }),
                )
                .await
                .map_err(ChangeError::Step)?;
                change
                    .step(Input::Promoted { node: candidate })
                    .map_err(ChangeError::Core)?
            }
            Command::Repoint {
                node: follower,
                primary,
                ..
            } => {
                if let (Some(target), Some(primary_record)) =
                    (record(&follower).cloned(), record(&primary).cloned())
                {
                    repointed.lock().insert(follower.clone());
                    repoints.push(spawn_repoint(
                        clients.get(&target).map_err(|e| e.to_string()),
                        repoint_request(&primary_record),
                        timeouts.repoint,
                        target.id.clone(),
                    ));
                    // Tablets whose recruitment answer comes after the decision are part of
                    // the term too, but the core only knows the answers it had: repoint each
                    // late one as it arrives (a healthy standby often answers last, and it is
                    // the one that can acknowledge the establishment soonest).
                    if let Some(mut rx) = answers_rx.take() {
                        let repointed = repointed.clone();
                        let targets: Vec<(String, Result<_, String>)> = spec
                            .tablets
                            .iter()
                            .map(|t| {
                                (
                                    t.record.id.clone(),
                                    clients.get(&t.record).map_err(|e| e.to_string()),
                                )
                            })
                            .collect();
                        let request = repoint_request(&primary_record);
                        let timeout = timeouts.repoint;
                        let primary_id = primary.clone();
                        late_listener = Some(tokio::spawn(async move {
                            while let Some((late, result)) = rx.recv().await {
                                let joined = matches!(result, Ok(ref r) if matches!(r.outcome, Some(recruit_response::Outcome::Log(_))));
                                if joined
                                    && late != primary_id
                                    && repointed.lock().insert(late.clone())
                                    && let Some((id, client)) =
                                        targets.iter().find(|(id, _)| id == late.as_str())
                                {
                                    let _ = spawn_repoint(
                                        client.clone(),
                                        request.clone(),
                                        timeout,
                                        id.clone(),
                                    )
                                    .await;
                                }
                            }
                        }));
                    }
                }
                Vec::new()
            }
            Command::Establish { candidate, .. } => {
                let mut client = client_of(&candidate)?;
                let position = call(
                    timeouts.establish,
                    "establish",
                    client.establish(EstablishRequest {
                        stamp: Some(stamp.clone()),
                        rules: rules_wire.clone(),
                    }),
                )
                .await
                .map_err(ChangeError::Step)?;
                change
                    .step(Input::Established {
                        node: candidate,
                        position: position.lsn,
                    })
                    .map_err(ChangeError::Core)?
            }
            Command::Delegate { candidate, .. } => {
                let mut client = client_of(&candidate)?;
                call(
                    timeouts.delegate,
                    "delegate",
                    client.delegate(DelegateRequest {
                        stamp: Some(stamp.clone()),
                    }),
                )
                .await
                .map_err(ChangeError::Step)?;
                leader = Some(candidate.as_str().to_string());
                Vec::new()
            }
            Command::Recruit { .. } => Vec::new(),
        };
        queue.extend(next);
    }
    let leader =
        leader.ok_or_else(|| ChangeError::Step("the change ended without delegating".into()))?;
    tracing::info!(keyspace = %spec.keyspace, shard = %spec.shard, term = term.0, %leader, "leadership change: delegated");
    metrics::counter!("tessera_coordinator_leadership_changes_total").increment(1);
    if let Some(topology) = topology {
        record_primary(
            topology.clone(),
            spec.keyspace.clone(),
            spec.shard.clone(),
            leader.clone(),
            term.0,
        );
    }
    drop(repoints);
    drop(late_listener);
    Ok(ChangeOutcome {
        term: term.0,
        leader,
    })
}

/// Repoints one tablet in the background, logging the outcome (a failure is repaired later by
/// the coordinators' ReplicaNotReplicating recovery).
fn spawn_repoint(
    client: Result<
        tessera_proto::tablet::tablet_client::TabletClient<tonic::transport::Channel>,
        String,
    >,
    request: RepointRequest,
    timeout: Duration,
    tablet: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let result = match client {
            Ok(mut client) => call(timeout, "repoint", client.repoint(request)).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(response) if response.quarantined => {
                tracing::error!(%tablet, message = %response.message, "tablet quarantined")
            }
            Ok(response) => tracing::info!(%tablet, rewound = response.rewound, "repointed"),
            Err(error) => {
                tracing::warn!(%tablet, %error, "repoint failed; a later repair will retry")
            }
        }
    })
}

/// Records the new primary in the topology, retrying in the background while the topology is
/// unavailable (the tablets already know; the topology is a hint for gates and operators).
pub fn record_primary(
    topology: Topology,
    keyspace: String,
    shard: String,
    primary: String,
    term: u64,
) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            let update = topology.update_shard(&keyspace, &shard, |record| {
                if record.term <= term {
                    record.primary = Some(primary.clone());
                    record.term = term;
                }
                Ok::<(), tessera_topology::TopoError>(())
            });
            match tokio::time::timeout(Duration::from_secs(3), update).await {
                Ok(Ok(_)) => return,
                Ok(Err(error)) => {
                    tracing::warn!(%error, %keyspace, %shard, "cannot record the new primary yet")
                }
                Err(_) => {
                    tracing::warn!(%keyspace, %shard, "topology slow; retrying to record the new primary")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}

/// Cohort members as node ids (for tests and callers building rulesets).
pub fn members(tablets: &[TabletView]) -> BTreeSet<NodeId> {
    tablets.iter().map(|t| node(&t.record.id)).collect()
}

/// Shared handle type for the clients.
pub type SharedClients = Arc<Clients>;
