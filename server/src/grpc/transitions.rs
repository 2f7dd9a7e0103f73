//! Handlers of stage moves, transition requests and rollback.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app::{self, RollbackOrder, TransitionOutcome};
use crate::domain::RequestStatus;
use crate::domain::{self, Name, StageChange};
use crate::grpc::convert::{self, request_to_pb, version_to_pb};

use super::*;

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version))]
pub(super) async fn transition_stage(
    svc: &RegistryService,
    req: Request<pb::TransitionStageRequest>,
) -> Result<Response<pb::TransitionStageResponse>, Status> {
    let caller = caller(&req)?;
    let change = StageChange::try_from(req.into_inner())?;
    let outcome = app::request_transition(&svc.store, change, caller).await?;
    Ok(Response::new(match outcome {
        TransitionOutcome::Applied(v) => pb::TransitionStageResponse {
            version: Some(version_to_pb(v)),
            request: None,
        },
        TransitionOutcome::Pending(r) => pb::TransitionStageResponse {
            version: None,
            request: Some(request_to_pb(r)),
        },
    }))
}

#[instrument(skip_all, fields(request = %req.get_ref().request_id))]
pub(super) async fn approve_transition(
    svc: &RegistryService,
    req: Request<pb::ApproveTransitionRequest>,
) -> Result<Response<pb::ApproveTransitionResponse>, Status> {
    let r = req.get_ref();
    let status = RequestStatus::Approved;
    let (request, version) = decide(svc, &req, &r.request_id, &r.comment, status).await?;
    Ok(Response::new(pb::ApproveTransitionResponse {
        request,
        version,
    }))
}

#[instrument(skip_all, fields(request = %req.get_ref().request_id))]
pub(super) async fn reject_transition(
    svc: &RegistryService,
    req: Request<pb::RejectTransitionRequest>,
) -> Result<Response<pb::RejectTransitionResponse>, Status> {
    let r = req.get_ref();
    let status = RequestStatus::Rejected;
    let (request, version) = decide(svc, &req, &r.request_id, &r.comment, status).await?;
    Ok(Response::new(pb::RejectTransitionResponse {
        request,
        version,
    }))
}

#[instrument(skip_all, fields(request = %req.get_ref().request_id))]
pub(super) async fn cancel_transition(
    svc: &RegistryService,
    req: Request<pb::CancelTransitionRequest>,
) -> Result<Response<pb::CancelTransitionResponse>, Status> {
    let r = req.get_ref();
    let status = RequestStatus::Cancelled;
    let (request, version) = decide(svc, &req, &r.request_id, &r.comment, status).await?;
    Ok(Response::new(pb::CancelTransitionResponse {
        request,
        version,
    }))
}

#[instrument(skip_all)]
pub(super) async fn list_transition_requests(
    svc: &RegistryService,
    req: Request<pb::ListTransitionRequestsRequest>,
) -> Result<Response<pb::ListTransitionRequestsResponse>, Status> {
    let r = req.into_inner();
    let model = match r.model.as_str() {
        "" => Ok(None),
        raw => Name::parse("model", raw).map(Some),
    };
    let query = format!("{}\u{1e}{}", r.model, r.status);
    let after = page_token::decode(&r.page_token, "requests", &query)
        .and_then(|key| key.map(|key| request_cursor(&key)).transpose());
    let (model, status, size, after) = domain::all((
        model,
        convert::request_status_from_pb("status", r.status),
        domain::parse_page_size("page_size", r.page_size),
        after,
    ))?;
    let model = model.as_ref().map(Name::as_str);
    let (requests, more) = app::list_requests(&svc.store, model, status, after, size).await?;
    let (requests, next_page_token) =
        page_token::page(requests, more, "requests", &query, request_to_pb);
    Ok(Response::new(pb::ListTransitionRequestsResponse {
        requests,
        next_page_token,
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn rollback(
    svc: &RegistryService,
    req: Request<pb::RollbackRequest>,
) -> Result<Response<pb::RollbackResponse>, Status> {
    let caller = caller(&req)?;
    let r = req.into_inner();
    let reason = domain::parse_text("reason", &r.reason).and_then(|reason| {
        parse::require(
            !reason.trim().is_empty(),
            "reason",
            "is required: say why production is rolled back",
        )
        .map(|()| reason)
    });
    let (model, (), reason) = domain::all((
        Name::parse("model", &r.model),
        parse::require(
            r.version >= 0,
            "version",
            "must be a version number, or 0 for the previous production version",
        ),
        reason,
    ))?;
    let order = RollbackOrder {
        model,
        version: r.version,
        reason,
        caller,
    };
    let outcome = app::rollback(&svc.store, order).await?;
    Ok(Response::new(match outcome {
        TransitionOutcome::Applied(v) => pb::RollbackResponse {
            version: Some(version_to_pb(v)),
            request: None,
        },
        TransitionOutcome::Pending(r) => pb::RollbackResponse {
            version: None,
            request: Some(request_to_pb(r)),
        },
    }))
}

/// Approves, rejects or cancels a request: one shape for the three decisions.
async fn decide<T>(
    svc: &RegistryService,
    req: &Request<T>,
    request_id: &str,
    comment: &str,
    status: RequestStatus,
) -> Result<(Option<pb::TransitionRequest>, Option<pb::ModelVersion>), Status> {
    let decision = decision(req, request_id, comment, status == RequestStatus::Rejected)?;
    let (request, version) = match status {
        RequestStatus::Approved => app::approve(&svc.store, decision).await?,
        closed => app::close_request(&svc.store, decision, closed).await?,
    };
    Ok((Some(request_to_pb(request)), Some(version_to_pb(version))))
}
