//! The tablet as a consensus node (ARCHITECTURE.md §5, mapped onto PostgreSQL 15).
//!
//! Every consensus RPC is stamped with (term, agent) and admitted by the core's node rules
//! (`tessera_consensus::Node`): current term of the same agent → act; older → refused; newer →
//! step down at once, persist the term (temp file, fsync, rename, fsync dir), then act.
//!
//! Stepping down is what revokes this node's part in older terms:
//! - a primary stops serving (the pooler refuses at once), may no longer acknowledge any commit
//!   (`synchronous_standby_names` is pointed at a standby that never exists), and its client
//!   backends are terminated, so nothing waiting for acknowledgement can still be acknowledged;
//! - a standby stops its WAL receiver, so it acknowledges nothing to the old primary.
//!
//! A recruited primary is not restarted as a standby at once (that would add a restart to every
//! switchover pause); it cannot complete requests any more, and it is demoted — rewound if its
//! WAL diverged — when the new leader repoints it.
//!
//! The term and rules under which WAL was written live in the WAL itself (`tessera.terms`),
//! written by `establish`; a node reports (term of its last establishment entry, LSN).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use tessera_consensus::{
    ActiveRules, AgentId, LogPosition, LogSummary, NodeId, NodeState, NodeStep, Refusal, Ruleset,
    SyncStandbyNames, Term,
};
use tessera_proto::schema::LAST_TERMS;
use tessera_proto::tablet as pb;

use crate::postgres::{PostgresError, ReplicationSource, ServerRole};
use crate::tablet::{Role, Tablet};

/// `synchronous_standby_names` of a recruited primary: a standby that never exists, so no
/// commit can be acknowledged any more.
pub const FENCED_STANDBY_NAMES: &str = "ANY 1 (\"tessera-fenced\")";

/// Bounds on the PostgreSQL work inside consensus RPCs.
const STOP_FOLLOWING_TIMEOUT: Duration = Duration::from_secs(10);
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a standby may take to start streaming from a new upstream before it is rewound.
const FOLLOW_CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a consensus RPC failed. Refusals are answers, not failures.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("superseded: term {term} of agent {agent} is no longer this node's term")]
    Superseded { term: u64, agent: String },
    #[error("cannot persist the term: {0}")]
    Persist(std::io::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] PostgresError),
    #[error("control query failed: {0}")]
    Query(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
}

/// The persisted node state: `<tablet dir>/consensus.json`.
pub struct TermFile {
    path: PathBuf,
}

impl TermFile {
    pub fn new(tablet_dir: &Path) -> TermFile {
        TermFile {
            path: tablet_dir.join("consensus.json"),
        }
    }

    /// The persisted state; term 0 when the file does not exist yet.
    pub fn load(&self) -> Result<NodeState, std::io::Error> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(NodeState::default());
            }
            Err(error) => return Err(error),
        };
        let corrupt = |reason: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is corrupt ({reason}); restore it or remove the tablet",
                    self.path.display()
                ),
            )
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let term = value["term"]
            .as_u64()
            .ok_or_else(|| corrupt("no term".into()))?;
        let agent = match value["agent"].as_str() {
            Some(agent) => Some(AgentId::new(agent).map_err(|e| corrupt(e.to_string()))?),
            None => None,
        };
        Ok(NodeState {
            term: Term(term),
            agent,
        })
    }

    /// Writes atomically and durably: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, state: &NodeState) -> Result<(), std::io::Error> {
        use std::io::Write;
        let text = serde_json::json!({
            "term": state.term.0,
            "agent": state.agent.as_ref().map(|a| a.as_str().to_string()),
        })
        .to_string();
        let temp = self.path.with_extension("json.tmp");
        {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&temp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Consensus state the tablet keeps in memory.
pub struct ConsensusState {
    pub node: parking_lot::Mutex<tessera_consensus::Node>,
    pub file: TermFile,
    /// Serialises operations that change PostgreSQL's role or upstream.
    pub operations: tokio::sync::Mutex<()>,
    /// Term whose establishment entry this node wrote and saw durable (0: none).
    pub established: AtomicU64,
    /// A rule change in flight on this leader: (term, policy of the new ruleset).
    pub pending_rules: parking_lot::Mutex<Option<(u64, String)>>,
}

impl ConsensusState {
    pub fn open(tablet_dir: &Path) -> Result<ConsensusState, std::io::Error> {
        let file = TermFile::new(tablet_dir);
        let durable = file.load()?;
        Ok(ConsensusState {
            node: parking_lot::Mutex::new(tessera_consensus::Node::recover(durable)),
            file,
            operations: tokio::sync::Mutex::new(()),
            established: AtomicU64::new(0),
            pending_rules: parking_lot::Mutex::new(None),
        })
    }

    /// The durable term: a join still being persisted is not reported, so a status never
    /// shows the new term next to state from the old one.
    pub fn term(&self) -> u64 {
        self.node.lock().durable().term.0
    }

    /// The policy of the rule change in flight, if any.
    pub fn pending_policy(&self) -> Option<String> {
        self.pending_rules.lock().as_ref().map(|(_, p)| p.clone())
    }

    pub fn agent(&self) -> Option<String> {
        self.node
            .lock()
            .durable()
            .agent
            .as_ref()
            .map(|a| a.as_str().to_string())
    }
}

/// A ruleset as `tessera.terms` stores it (protobuf), decoded and validated.
fn decode_ruleset(bytes: &[u8], which: &str) -> Result<Ruleset, ConsensusError> {
    let wire = pb::Ruleset::decode(bytes)
        .map_err(|e| ConsensusError::Query(format!("undecodable ruleset {which}: {e}")))?;
    Ruleset::try_from(&wire)
        .map_err(|e| ConsensusError::Query(format!("invalid ruleset {which}: {e}")))
}

/// A stamp from the wire, validated.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub term: Term,
    pub agent: AgentId,
}

impl TryFrom<Option<&pb::Stamp>> for Stamp {
    type Error = ConsensusError;
    fn try_from(stamp: Option<&pb::Stamp>) -> Result<Stamp, ConsensusError> {
        let stamp = stamp.ok_or_else(|| ConsensusError::Invalid("missing stamp".into()))?;
        if stamp.term == 0 {
            return Err(ConsensusError::Invalid("term 0 cannot be joined".into()));
        }
        let agent = AgentId::new(stamp.agent.clone())
            .map_err(|e| ConsensusError::Invalid(format!("agent: {e}")))?;
        Ok(Stamp {
            term: Term(stamp.term),
            agent,
        })
    }
}

/// Where another tablet's PostgreSQL can be reached, from the wire.
pub fn peer_source(
    tablet: &Tablet,
    peer: Option<&pb::Peer>,
) -> Result<(String, ReplicationSource), ConsensusError> {
    let peer = peer.ok_or_else(|| ConsensusError::Invalid("missing peer".into()))?;
    let port = u16::try_from(peer.postgres_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ConsensusError::Invalid(format!("invalid port {}", peer.postgres_port)))?;
    if peer.id.is_empty() || peer.host.is_empty() {
        return Err(ConsensusError::Invalid(
            "peer id and host are required".into(),
        ));
    }
    Ok((peer.id.clone(), tablet.replication_source(&peer.host, port)))
}

impl Tablet {
    fn node_id(&self) -> NodeId {
        NodeId::new(self.id()).expect("tablet ids are valid node ids (validated in config)")
    }

    /// `synchronous_standby_names` that enforces `rules` with this tablet as primary.
    fn standby_names(&self, rules: &ActiveRules) -> Result<SyncStandbyNames, ConsensusError> {
        rules.to_postgres(&self.node_id()).map_err(|e| {
            ConsensusError::Precondition(format!("rules cannot be enforced by PostgreSQL: {e}"))
        })
    }

    /// Admits a stamped request. A newer term makes this node step down at once and persist
    /// the term before anything else happens; returns whether it did (joined the term now).
    pub(crate) async fn admit(&self, stamp: &Stamp) -> Result<bool, ConsensusError> {
        let step = {
            let mut node = self.consensus().node.lock();
            node.admit(stamp.term, &stamp.agent)
                .map_err(ConsensusError::Refused)?
        };
        match step {
            NodeStep::Act => Ok(false),
            NodeStep::ActAfterPersist => self.wait_persisted(stamp).await.map(|()| false),
            NodeStep::PersistThenAct(next) => {
                self.step_down(stamp.term.0).await;
                let file_state = next.clone();
                let saved = {
                    let consensus = self.consensus();
                    consensus.file.save(&file_state)
                };
                if let Err(error) = saved {
                    tracing::error!(tablet = %self.id(), %error, "cannot persist the consensus term");
                    return Err(ConsensusError::Persist(error));
                }
                let recorded = self.consensus().node.lock().on_persisted(&next);
                if !recorded {
                    return Err(self.superseded(stamp));
                }
                tracing::info!(tablet = %self.id(), term = stamp.term.0, agent = %stamp.agent, "joined term");
                self.notify_changed();
                Ok(true)
            }
        }
    }

    async fn wait_persisted(&self, stamp: &Stamp) -> Result<(), ConsensusError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self
                .consensus()
                .node
                .lock()
                .may_act(stamp.term, &stamp.agent)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.superseded(stamp));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn superseded(&self, stamp: &Stamp) -> ConsensusError {
        ConsensusError::Superseded {
            term: stamp.term.0,
            agent: stamp.agent.as_str().to_string(),
        }
    }

    /// Fails if a newer term arrived since `stamp` was admitted (long operations check this
    /// before answering).
    fn still_current(&self, stamp: &Stamp) -> Result<(), ConsensusError> {
        if self
            .consensus()
            .node
            .lock()
            .may_act(stamp.term, &stamp.agent)
        {
            Ok(())
        } else {
            Err(self.superseded(stamp))
        }
    }

    /// Revokes everything this node could still do for an older term. Never fails: each step
    /// is best effort and logged, and the pooler is fenced first, unconditionally.
    async fn step_down(&self, new_term: u64) {
        self.set_serving(false, format!("recruited into term {new_term}"));
        self.pool().reset();
        match self.postgres().role().await {
            Ok(ServerRole::Primary) => {
                if let Err(error) = self
                    .postgres()
                    .set_synchronous_standby_names(FENCED_STANDBY_NAMES)
                    .await
                {
                    tracing::error!(tablet = %self.id(), %error, "cannot fence commits of the old primary");
                }
                if let Err(error) = self.terminate_client_backends().await {
                    tracing::warn!(tablet = %self.id(), %error, "cannot terminate client backends");
                }
            }
            Ok(ServerRole::Standby) => {
                if let Err(error) = self.postgres().stop_following(STOP_FOLLOWING_TIMEOUT).await {
                    tracing::error!(tablet = %self.id(), %error, "cannot stop following the old primary");
                }
            }
            Err(error) => {
                tracing::warn!(tablet = %self.id(), %error, "PostgreSQL unavailable while stepping down")
            }
        }
        self.consensus().established.store(0, Ordering::Release);
        self.consensus().pending_rules.lock().take();
    }

    /// Ends every client session on this PostgreSQL (Tessera's own control sessions survive).
    async fn terminate_client_backends(&self) -> Result<(), ConsensusError> {
        let client = self.postgres().connect("postgres").await?;
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                 AND application_name NOT LIKE 'tessera-tablet%'",
                &[],
            )
            .await
            .map_err(|e| ConsensusError::Query(e.to_string()))?;
        Ok(())
    }

    /// Reads this node's log summary: the last two establishment entries in its WAL and the
    /// end of its WAL.
    pub(crate) async fn log_summary(&self) -> Result<(LogSummary, u64), ConsensusError> {
        let position = self.postgres().wal_position().await?;
        let lsn = if position.is_standby {
            position
                .flushed_lsn
                .into_iter()
                .chain(position.replayed_lsn)
                .max()
                .map(|l| l.as_u64())
                .unwrap_or(0)
        } else {
            position.current_lsn.map(|l| l.as_u64()).unwrap_or(0)
        };
        let client = self.postgres().connect(&self.config().keyspace).await?;
        let rows = client
            .query(LAST_TERMS, &[])
            .await
            .map_err(|e| ConsensusError::Query(format!("reading tessera.terms: {e}")))?;
        let mut entries = Vec::new();
        for row in &rows {
            let term: i64 = row.get(0);
            let bytes: Vec<u8> = row.get(2);
            let ruleset = decode_ruleset(&bytes, &format!("of term {term}"))?;
            entries.push((term as u64, ruleset));
        }
        let last_term = entries.first().map(|(t, _)| *t).unwrap_or(0);
        // The newest entry may not be durable yet: report its ruleset as pending, and the one
        // before as applied. Reporting an applied ruleset as pending only makes agents stricter.
        let summary = LogSummary {
            last: LogPosition::new(Term(last_term), lsn),
            ruleset: entries.get(1).map(|(_, r)| r.clone()),
            pending: entries
                .first()
                .map(|(_, r)| vec![r.clone()])
                .unwrap_or_default(),
        };
        Ok((summary, last_term))
    }

    /// Recruit: join the term (stepping down), wait for replay to catch up, report the log.
    pub async fn recruit(&self, stamp: &Stamp) -> Result<LogSummary, ConsensusError> {
        let joined = self.admit(stamp).await?;
        let _operation = self.consensus().operations.lock().await;
        self.still_current(stamp)?;
        if let Ok(ServerRole::Standby) = self.postgres().role().await {
            // Joining stopped the receiver already; a repeated recruit (a retry) makes sure.
            if !joined {
                self.postgres()
                    .stop_following(STOP_FOLLOWING_TIMEOUT)
                    .await?;
            }
            // Replay what was received before answering.
            self.postgres()
                .wait_replay_caught_up(REPLAY_TIMEOUT)
                .await?;
            self.set_following(None);
        }
        let (summary, _) = self.log_summary().await?;
        self.still_current(stamp)?;
        Ok(summary)
    }

    /// Catch up: stream from `source` until this node's log reaches `up_to`, then stop.
    pub async fn catch_up(
        &self,
        stamp: &Stamp,
        source_id: &str,
        source: &ReplicationSource,
        up_to: LogPosition,
    ) -> Result<LogPosition, ConsensusError> {
        self.admit(stamp).await?;
        let _operation = self.consensus().operations.lock().await;
        self.still_current(stamp)?;
        let (current, _) = self.log_summary().await?;
        // Already there (typical in a planned switchover): nothing to stream.
        if source_id != self.id() && current.last < up_to {
            let role = self.postgres().role().await?;
            if role == ServerRole::Primary || !self.follow_and_confirm(source).await {
                tracing::info!(tablet = %self.id(), source = source_id, "rewinding before catching up");
                self.postgres().rewind_from(source).await?;
            }
            self.set_following(Some(source_id.to_string()));
            let deadline = Instant::now() + CATCH_UP_TIMEOUT;
            loop {
                self.still_current(stamp)?;
                let (summary, _) = self.log_summary().await?;
                if summary.last >= up_to {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(ConsensusError::Timeout(
                        CATCH_UP_TIMEOUT,
                        format!(
                            "catching up to {up_to} from {source_id}, at {}",
                            summary.last
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.postgres()
                .stop_following(STOP_FOLLOWING_TIMEOUT)
                .await?;
            self.postgres()
                .wait_replay_caught_up(REPLAY_TIMEOUT)
                .await?;
            self.set_following(None);
        }
        let (summary, _) = self.log_summary().await?;
        self.still_current(stamp)?;
        Ok(summary.last)
    }

    /// Points this standby's WAL receiver at `source` and waits (bounded) until it streams.
    /// False when it does not: the source's timeline is not a continuation of this server's
    /// WAL (or the source is unreachable), and the caller falls back to pg_rewind.
    async fn follow_and_confirm(&self, source: &ReplicationSource) -> bool {
        if let Err(error) = self.postgres().follow(source).await {
            tracing::info!(tablet = %self.id(), %error, "cannot follow; will rewind");
            return false;
        }
        let deadline = Instant::now() + FOLLOW_CONFIRM_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(position) = self.postgres().wal_position().await
                && position.wal_receiver_status.as_deref() == Some("streaming")
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(tablet = %self.id(), source = %source.address(), "WAL receiver did not start streaming; will rewind");
        false
    }

    /// Promote: make PostgreSQL writable. Clients are still refused until `delegate`.
    pub async fn promote(&self, stamp: &Stamp) -> Result<LogPosition, ConsensusError> {
        self.admit(stamp).await?;
        let _operation = self.consensus().operations.lock().await;
        self.still_current(stamp)?;
        if self.postgres().role().await? == ServerRole::Standby {
            // Commits of the new primary must wait for its standbys from the very first one.
            self.postgres()
                .set_synchronous_standby_names(FENCED_STANDBY_NAMES)
                .await?;
            let timeline = self.postgres().promote(PROMOTE_TIMEOUT).await?;
            tracing::info!(tablet = %self.id(), term = stamp.term.0, timeline, "promoted");
        }
        self.set_following(None);
        let (summary, _) = self.log_summary().await?;
        Ok(summary.last)
    }

    /// Repoint: follow `primary` in this term, rewinding a diverged WAL first. A node whose
    /// repair fails is quarantined, never silently reused.
    pub async fn repoint(
        &self,
        stamp: &Stamp,
        primary_id: &str,
        source: &ReplicationSource,
    ) -> Result<pb::RepointResponse, ConsensusError> {
        self.admit(stamp).await?;
        let _operation = self.consensus().operations.lock().await;
        self.still_current(stamp)?;
        if primary_id == self.id() {
            return Ok(pb::RepointResponse::default());
        }
        let role = self.postgres().role().await.ok();
        let mut diverged = match role {
            // A former primary is always run through pg_rewind (a no-op when nothing diverged):
            // it may hold commits that were never acknowledged.
            Some(ServerRole::Primary) | None => true,
            // A standby first simply follows: PostgreSQL itself refuses to stream a timeline
            // that is not a continuation of its own, which is the authoritative divergence
            // check (a stopped receiver makes the standby's own timeline report lag).
            Some(ServerRole::Standby) => !self.follow_and_confirm(source).await,
        };
        let result = if diverged {
            tracing::info!(tablet = %self.id(), primary = primary_id, "rewinding to follow the new primary");
            self.postgres().rewind_from(source).await
        } else {
            Ok(())
        };
        if result.is_err() && !diverged {
            diverged = true;
        }
        match result {
            Ok(()) => {
                self.still_current(stamp)?;
                self.set_role(Role::Replica, String::new());
                self.set_following(Some(primary_id.to_string()));
                Ok(pb::RepointResponse {
                    rewound: diverged,
                    quarantined: false,
                    message: String::new(),
                })
            }
            Err(error) => {
                let message = format!("repair failed, quarantined: {error}");
                tracing::error!(tablet = %self.id(), %error, "quarantining tablet: its WAL could not be repaired");
                self.set_role(Role::Quarantined, message.clone());
                Ok(pb::RepointResponse {
                    rewound: diverged,
                    quarantined: true,
                    message,
                })
            }
        }
    }

    /// Establish: durability for `rules`, then the establishment entry of the term, written and
    /// waited for under those rules.
    pub async fn establish(
        &self,
        stamp: &Stamp,
        rules: &[pb::Ruleset],
    ) -> Result<LogPosition, ConsensusError> {
        self.admit(stamp).await?;
        let _operation = self.consensus().operations.lock().await;
        self.still_current(stamp)?;
        if self.postgres().role().await? != ServerRole::Primary {
            return Err(ConsensusError::Precondition(
                "not promoted: PostgreSQL is a standby".into(),
            ));
        }
        let (target_wire, rulesets) = match rules.split_last() {
            Some((target, _)) => (
                target,
                rules
                    .iter()
                    .map(Ruleset::try_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConsensusError::Invalid(e.to_string()))?,
            ),
            None => return Err(ConsensusError::Invalid("no rules".into())),
        };
        let mut active = ActiveRules::new(rulesets[0].clone());
        for ruleset in &rulesets[1..] {
            active.push(ruleset.clone());
        }
        let names = self.standby_names(&active)?;
        if !names.is_exact() {
            tracing::info!(tablet = %self.id(), setting = %names, "synchronous_standby_names is stricter than the policy (no exact ANY k form)");
        }
        self.postgres()
            .set_synchronous_standby_names(&names.setting())
            .await?;
        let client = self.postgres().connect(&self.config().keyspace).await?;
        let encoded = target_wire.encode_to_vec();
        let term = stamp.term.0 as i64;
        let leader = self.id().to_string();
        let agent = stamp.agent.as_str().to_string();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&term, &leader, &agent, &target_wire.policy, &encoded];
        let insert = client.query_one(
            "INSERT INTO tessera.terms (term, seq, leader, agent, policy, ruleset) VALUES ($1, 0, $2, $3, $4, $5) \
             ON CONFLICT (term, seq) DO UPDATE SET leader = EXCLUDED.leader, agent = EXCLUDED.agent, \
             policy = EXCLUDED.policy, ruleset = EXCLUDED.ruleset, established_at = now() \
             RETURNING pg_current_wal_lsn()::text",
            &params,
        );
        let row = tokio::time::timeout(ESTABLISH_TIMEOUT, insert)
            .await
            .map_err(|_| {
                ConsensusError::Timeout(
                    ESTABLISH_TIMEOUT,
                    format!("establishment entry not acknowledged under {names}"),
                )
            })?
            .map_err(|e| ConsensusError::Query(format!("writing the establishment entry: {e}")))?;
        let lsn: String = row.get(0);
        let lsn: crate::postgres::Lsn = lsn
            .parse()
            .map_err(|e| ConsensusError::Query(format!("{e}")))?;
        self.still_current(stamp)?;
        self.consensus()
            .established
            .store(stamp.term.0, Ordering::Release);
        tracing::info!(tablet = %self.id(), term = stamp.term.0, setting = %names, lsn = %lsn, "term established");
        Ok(LogPosition::new(stamp.term, lsn.as_u64()))
    }

    /// A rule change the leader makes as a request within its own term (the "changing rules"
    /// decision of the series, done by the leader). From now on every commit must satisfy both
    /// the running ruleset and `new`; the rule-change entry (`tessera.terms`, next `seq` of the
    /// term) is written under both, and once it is durable only `new` applies. Returns when
    /// the change is in flight: if `new` cannot be met (a zone is down), commits — the entry
    /// and every client write — wait, reported as commits waiting, until it can.
    pub async fn change_rules(
        self: &std::sync::Arc<Self>,
        stamp: &Stamp,
        new: &pb::Ruleset,
    ) -> Result<String, ConsensusError> {
        self.admit(stamp).await?;
        let _operation = self.consensus().operations.lock().await;
        self.still_current(stamp)?;
        if self.consensus().established.load(Ordering::Acquire) != stamp.term.0 {
            return Err(ConsensusError::Precondition(format!(
                "not the leader of term {}: rules change only on the established primary",
                stamp.term.0
            )));
        }
        if let Some((term, policy)) = self.consensus().pending_rules.lock().clone()
            && term == stamp.term.0
        {
            if policy == new.policy {
                return Ok(policy);
            }
            return Err(ConsensusError::Precondition(format!(
                "a change to {policy} is still in flight"
            )));
        }
        let new_ruleset =
            Ruleset::try_from(new).map_err(|e| ConsensusError::Invalid(e.to_string()))?;
        let client = self.postgres().connect(&self.config().keyspace).await?;
        let row = client
            .query_one(
                "SELECT ruleset, seq FROM tessera.terms WHERE term = $1 ORDER BY seq DESC LIMIT 1",
                &[&(stamp.term.0 as i64)],
            )
            .await
            .map_err(|e| ConsensusError::Query(format!("reading the running rules: {e}")))?;
        let running_bytes: Vec<u8> = row.get(0);
        let seq: i32 = row.get(1);
        let running = decode_ruleset(&running_bytes, "in force")?;
        if running == new_ruleset {
            return Ok(new.policy.clone());
        }
        let mut both = ActiveRules::new(running);
        both.push(new_ruleset.clone());
        let names = self.standby_names(&both)?;
        let target = self.standby_names(&ActiveRules::new(new_ruleset))?;
        // Both rulesets from this commit on: never weaker than either while the change is open.
        self.postgres()
            .set_synchronous_standby_names(&names.setting())
            .await?;
        *self.consensus().pending_rules.lock() = Some((stamp.term.0, new.policy.clone()));
        self.notify_changed();
        tracing::info!(tablet = %self.id(), term = stamp.term.0, policy = %new.policy, setting = %names, "rule change in flight");
        let policy = new.policy.clone();
        let tablet = self.clone();
        let stamp = stamp.clone();
        let new = new.clone();
        tokio::spawn(async move {
            let outcome = tablet
                .write_rule_change(&stamp, seq + 1, &new, &target.setting())
                .await;
            if outcome.is_ok() {
                tablet.note_policy(new.policy.clone());
            }
            let mut pending = tablet.consensus().pending_rules.lock();
            if pending.as_ref().is_some_and(|(t, _)| *t == stamp.term.0) {
                pending.take();
            }
            drop(pending);
            match outcome {
                Ok(()) => {
                    tracing::info!(tablet = %tablet.id(), term = stamp.term.0, policy = %new.policy, "rule change durable; new rules in force")
                }
                Err(error) => {
                    tracing::warn!(tablet = %tablet.id(), term = stamp.term.0, policy = %new.policy, %error, "rule change did not complete")
                }
            }
            tablet.notify_changed();
        });
        Ok(policy)
    }

    /// Writes the rule-change entry and waits (unbounded: the policy decides) until it is
    /// durable under both rulesets, then applies the new rules alone. The session is not a
    /// control session, so stepping down terminates it like any client's.
    async fn write_rule_change(
        &self,
        stamp: &Stamp,
        seq: i32,
        new: &pb::Ruleset,
        target_setting: &str,
    ) -> Result<(), ConsensusError> {
        let client = self.postgres().connect(&self.config().keyspace).await?;
        let query = |e: tokio_postgres::Error| ConsensusError::Query(e.to_string());
        client
            .batch_execute("SET application_name = 'tessera-rule-change'")
            .await
            .map_err(query)?;
        let term = stamp.term.0 as i64;
        let leader = self.id().to_string();
        let agent = stamp.agent.as_str().to_string();
        let encoded = new.encode_to_vec();
        client
            .execute(
                "INSERT INTO tessera.terms (term, seq, leader, agent, policy, ruleset) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&term, &seq, &leader, &agent, &new.policy, &encoded],
            )
            .await
            .map_err(query)?;
        let _operation = self.consensus().operations.lock().await;
        self.still_current(stamp)?;
        self.postgres()
            .set_synchronous_standby_names(target_setting)
            .await?;
        Ok(())
    }

    /// Delegate: serve clients as primary in the term.
    pub async fn delegate(&self, stamp: &Stamp) -> Result<(), ConsensusError> {
        self.admit(stamp).await?;
        self.still_current(stamp)?;
        if self.consensus().established.load(Ordering::Acquire) != stamp.term.0 {
            return Err(ConsensusError::Precondition(format!(
                "term {} is not established on this node",
                stamp.term.0
            )));
        }
        self.set_role(Role::Primary, String::new());
        self.set_serving(true, String::new());
        tracing::info!(tablet = %self.id(), term = stamp.term.0, "serving as primary");
        Ok(())
    }

    /// Drain before a planned switchover: refuse new transactions and wait (bounded) for the
    /// running ones. Serving resumes by itself if no new term arrives shortly after.
    pub async fn drain(self: &std::sync::Arc<Self>, timeout: Duration) -> u32 {
        let term = self.consensus().term();
        self.set_serving(false, "draining for a switchover".into());
        let deadline = Instant::now() + timeout;
        while self.pool().in_use_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let remaining = self.pool().in_use_count() as u32;
        let tablet_resume = self.resume_after_drain(term, timeout + Duration::from_secs(5));
        tokio::spawn(tablet_resume);
        remaining
    }
}
