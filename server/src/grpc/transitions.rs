//! Handlers of stage moves, transition requests and rollback.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app::{self, RollbackOrder, TransitionOutcome};
use crate::domain::RequestStatus;
use crate::domain::{self, Name, StageChange, Violations};
use crate::grpc::convert::{self, request_to_pb, version_to_pb};

use super::*;

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version))]
pub(super) async fn transition_stage(
    svc: &RegistryService,
    req: Request<pb::TransitionStageRequest>,
) -> Result<Response<pb::TransitionStageResponse>, Status> {
    let caller = caller(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let version = v.take(domain::parse_version_number("version", r.version));
    let target = v.take(parse_stage_field("target_stage", r.target_stage));
    let comment = v.take(domain::parse_text("comment", &r.comment));
    let etag = v.take(domain::parse_etag("etag", &r.etag));
    v.finish()?;
    let outcome = app::request_transition(
        &svc.store,
        StageChange {
            model: model.expect("checked"),
            version: version.expect("checked"),
            target: target.expect("checked"),
            comment: comment.expect("checked"),
            etag: etag.expect("checked"),
        },
        caller,
    )
    .await?;
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
    let decision = decision(
        &req,
        &req.get_ref().request_id,
        &req.get_ref().comment,
        false,
    )?;
    let (request, version) = app::approve(&svc.store, decision).await?;
    Ok(Response::new(pb::ApproveTransitionResponse {
        request: Some(request_to_pb(request)),
        version: Some(version_to_pb(version)),
    }))
}

#[instrument(skip_all, fields(request = %req.get_ref().request_id))]
pub(super) async fn reject_transition(
    svc: &RegistryService,
    req: Request<pb::RejectTransitionRequest>,
) -> Result<Response<pb::RejectTransitionResponse>, Status> {
    let decision = decision(
        &req,
        &req.get_ref().request_id,
        &req.get_ref().comment,
        true,
    )?;
    let (request, version) =
        app::close_request(&svc.store, decision, RequestStatus::Rejected).await?;
    Ok(Response::new(pb::RejectTransitionResponse {
        request: Some(request_to_pb(request)),
        version: Some(version_to_pb(version)),
    }))
}

#[instrument(skip_all, fields(request = %req.get_ref().request_id))]
pub(super) async fn cancel_transition(
    svc: &RegistryService,
    req: Request<pb::CancelTransitionRequest>,
) -> Result<Response<pb::CancelTransitionResponse>, Status> {
    let decision = decision(
        &req,
        &req.get_ref().request_id,
        &req.get_ref().comment,
        false,
    )?;
    let (request, version) =
        app::close_request(&svc.store, decision, RequestStatus::Cancelled).await?;
    Ok(Response::new(pb::CancelTransitionResponse {
        request: Some(request_to_pb(request)),
        version: Some(version_to_pb(version)),
    }))
}

#[instrument(skip_all)]
pub(super) async fn list_transition_requests(
    svc: &RegistryService,
    req: Request<pb::ListTransitionRequestsRequest>,
) -> Result<Response<pb::ListTransitionRequestsResponse>, Status> {
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = if r.model.is_empty() {
        None
    } else {
        v.take(Name::parse("model", &r.model))
    };
    let status = v
        .take(convert::request_status_from_pb("status", r.status))
        .flatten();
    let size = v.take(domain::parse_page_size("page_size", r.page_size));
    let query = format!("{}\u{1e}{}", r.model, r.status);
    let after = v
        .take(page_token::decode(&r.page_token, "requests", &query))
        .flatten()
        .and_then(|key| v.take(request_cursor(&key)));
    v.finish()?;
    let (requests, more) = app::list_requests(
        &svc.store,
        model.as_ref().map(Name::as_str),
        status,
        after,
        size.expect("checked"),
    )
    .await?;
    let next_page_token = match (more, requests.last()) {
        (true, Some(last)) => page_token::encode(
            "requests",
            &format!(
                "{}\u{1e}{}\u{1e}{}",
                last.create_time, last.model, last.number
            ),
            &query,
        ),
        _ => String::new(),
    };
    Ok(Response::new(pb::ListTransitionRequestsResponse {
        requests: requests.into_iter().map(request_to_pb).collect(),
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
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    if r.version < 0 {
        v.add(
            "version",
            "must be a version number, or 0 for the previous production version",
        );
    }
    let reason = v.take(domain::parse_text("reason", &r.reason));
    if r.reason.trim().is_empty() {
        v.add("reason", "is required: say why production is rolled back");
    }
    v.finish()?;
    let outcome = app::rollback(
        &svc.store,
        RollbackOrder {
            model: model.expect("checked"),
            version: r.version,
            reason: reason.expect("checked"),
            caller,
        },
    )
    .await?;
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
