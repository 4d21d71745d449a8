//! The tablet's gRPC service: status snapshots and a status stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tessera_consensus::{LogPosition, Refusal, Term};
use tessera_proto::rules;
use tessera_proto::tablet::tablet_server::{Tablet as TabletRpc, TabletServer};
use tessera_proto::tablet::{
    CatchUpRequest, ChangeRulesRequest, ChangeRulesResponse, DelegateRequest, DelegateResponse,
    DrainRequest, DrainResponse, EstablishRequest, LogSummary, PositionResponse, PromoteRequest,
    RecruitRequest, RecruitResponse, RepointRequest, RepointResponse, StatusRequest, TabletStatus,
    WatchStatusRequest, recruit_response,
};
use tonic::{Request, Response, Status};

use crate::consensus::{ConsensusError, Stamp, peer_source};
use crate::tablet::Tablet;

/// Default upper bound between two status snapshots of a stream.
const DEFAULT_INTERVAL_MS: u32 = 1_000;

pub struct TabletService {
    tablet: Arc<Tablet>,
}

impl TabletService {
    pub fn server(tablet: Arc<Tablet>) -> TabletServer<TabletService> {
        TabletServer::new(TabletService { tablet })
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<TabletStatus, Status>> + Send>>;

#[tonic::async_trait]
impl TabletRpc for TabletService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<TabletStatus>, Status> {
        Ok(Response::new(self.tablet.status()))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let interval_ms = match request.into_inner().interval_ms {
            0 => DEFAULT_INTERVAL_MS,
            ms => ms.clamp(50, 60_000),
        };
        let tablet = self.tablet.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut changes = tablet.subscribe();
            loop {
                if sender.send(Ok(tablet.status())).await.is_err() {
                    return;
                }
                let _ = tokio::time::timeout(
                    Duration::from_millis(u64::from(interval_ms)),
                    changes.changed(),
                )
                .await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn recruit(
        &self,
        request: Request<RecruitRequest>,
    ) -> Result<Response<RecruitResponse>, Status> {
        let stamp = Stamp::try_from(request.get_ref().stamp.as_ref()).map_err(to_status)?;
        let node = self.tablet.id().to_string();
        let tablet = self.tablet.clone();
        match detached(async move { tablet.recruit(&stamp).await }).await {
            Ok(summary) => Ok(Response::new(RecruitResponse {
                node,
                outcome: Some(recruit_response::Outcome::Log(LogSummary {
                    last_term: summary.last.term.0,
                    lsn: summary.last.index,
                    ruleset: summary.ruleset.as_ref().map(|r| rules::to_wire(r, "")),
                    pending: summary
                        .pending
                        .iter()
                        .map(|r| rules::to_wire(r, ""))
                        .collect(),
                })),
            })),
            Err(ConsensusError::Refused(refusal)) => Ok(Response::new(RecruitResponse {
                node,
                outcome: Some(recruit_response::Outcome::Refusal(refusal_to_wire(
                    &refusal,
                ))),
            })),
            Err(error) => Err(to_status(error)),
        }
    }

    async fn catch_up(
        &self,
        request: Request<CatchUpRequest>,
    ) -> Result<Response<PositionResponse>, Status> {
        let request = request.into_inner();
        let stamp = Stamp::try_from(request.stamp.as_ref()).map_err(to_status)?;
        let (source_id, source) =
            peer_source(&self.tablet, request.source.as_ref()).map_err(to_status)?;
        let up_to = LogPosition::new(Term(request.up_to_term), request.up_to_lsn);
        let tablet = self.tablet.clone();
        let position =
            detached(async move { tablet.catch_up(&stamp, &source_id, &source, up_to).await })
                .await
                .map_err(to_status)?;
        Ok(Response::new(position_response(position)))
    }

    async fn promote(
        &self,
        request: Request<PromoteRequest>,
    ) -> Result<Response<PositionResponse>, Status> {
        let stamp = Stamp::try_from(request.get_ref().stamp.as_ref()).map_err(to_status)?;
        let tablet = self.tablet.clone();
        let position = detached(async move { tablet.promote(&stamp).await })
            .await
            .map_err(to_status)?;
        Ok(Response::new(position_response(position)))
    }

    async fn repoint(
        &self,
        request: Request<RepointRequest>,
    ) -> Result<Response<RepointResponse>, Status> {
        let request = request.into_inner();
        let stamp = Stamp::try_from(request.stamp.as_ref()).map_err(to_status)?;
        let (primary_id, source) =
            peer_source(&self.tablet, request.primary.as_ref()).map_err(to_status)?;
        let tablet = self.tablet.clone();
        let response = detached(async move { tablet.repoint(&stamp, &primary_id, &source).await })
            .await
            .map_err(to_status)?;
        Ok(Response::new(response))
    }

    async fn establish(
        &self,
        request: Request<EstablishRequest>,
    ) -> Result<Response<PositionResponse>, Status> {
        let request = request.into_inner();
        let stamp = Stamp::try_from(request.stamp.as_ref()).map_err(to_status)?;
        let tablet = self.tablet.clone();
        let position = detached(async move { tablet.establish(&stamp, &request.rules).await })
            .await
            .map_err(to_status)?;
        Ok(Response::new(position_response(position)))
    }

    async fn delegate(
        &self,
        request: Request<DelegateRequest>,
    ) -> Result<Response<DelegateResponse>, Status> {
        let stamp = Stamp::try_from(request.get_ref().stamp.as_ref()).map_err(to_status)?;
        let tablet = self.tablet.clone();
        detached(async move { tablet.delegate(&stamp).await })
            .await
            .map_err(to_status)?;
        Ok(Response::new(DelegateResponse {}))
    }

    async fn change_rules(
        &self,
        request: Request<ChangeRulesRequest>,
    ) -> Result<Response<ChangeRulesResponse>, Status> {
        let request = request.into_inner();
        let stamp = Stamp::try_from(request.stamp.as_ref()).map_err(to_status)?;
        let ruleset = request
            .ruleset
            .ok_or_else(|| Status::invalid_argument("missing ruleset"))?;
        let tablet = self.tablet.clone();
        let pending_policy = detached(async move { tablet.change_rules(&stamp, &ruleset).await })
            .await
            .map_err(to_status)?;
        Ok(Response::new(ChangeRulesResponse { pending_policy }))
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        let timeout_ms = request.get_ref().timeout_ms.clamp(0, 30_000);
        let remaining = self
            .tablet
            .drain(Duration::from_millis(u64::from(timeout_ms)))
            .await;
        Ok(Response::new(DrainResponse { remaining }))
    }
}

/// Runs a consensus operation in its own task: if the caller gives up (timeout, cancelled
/// RPC), the operation still finishes instead of stopping between two of its steps.
async fn detached<T: Send + 'static>(
    operation: impl std::future::Future<Output = Result<T, ConsensusError>> + Send + 'static,
) -> Result<T, ConsensusError> {
    match tokio::spawn(operation).await {
        Ok(result) => result,
        Err(error) => Err(ConsensusError::Query(format!(
            "consensus operation failed: {error}"
        ))),
    }
}

fn position_response(position: LogPosition) -> PositionResponse {
    PositionResponse {
        last_term: position.term.0,
        lsn: position.index,
    }
}

fn refusal_to_wire(refusal: &Refusal) -> tessera_proto::tablet::Refusal {
    match refusal {
        Refusal::StaleTerm { current, .. } => tessera_proto::tablet::Refusal {
            kind: "stale_term".into(),
            current_term: current.0,
            holder: String::new(),
            message: refusal.to_string(),
        },
        Refusal::TermTaken { term, holder } => tessera_proto::tablet::Refusal {
            kind: "term_taken".into(),
            current_term: term.0,
            holder: holder.as_str().to_string(),
            message: refusal.to_string(),
        },
    }
}

/// Maps consensus failures to gRPC codes: refusals and lost terms are FAILED_PRECONDITION /
/// ABORTED (the caller's term is stale), bad requests INVALID_ARGUMENT, the rest UNAVAILABLE
/// (retry later) — each with a message that names the tablet's term.
fn to_status(error: ConsensusError) -> Status {
    match &error {
        ConsensusError::Refused(_) | ConsensusError::Precondition(_) => {
            Status::failed_precondition(error.to_string())
        }
        ConsensusError::Superseded { .. } => Status::aborted(error.to_string()),
        ConsensusError::Invalid(_) => Status::invalid_argument(error.to_string()),
        ConsensusError::Timeout(..) => Status::deadline_exceeded(error.to_string()),
        ConsensusError::Persist(_) | ConsensusError::Postgres(_) | ConsensusError::Query(_) => {
            Status::unavailable(error.to_string())
        }
    }
}
