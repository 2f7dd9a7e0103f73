//! Handlers of evaluation sets, evaluations and comparisons.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app::{self};
use crate::domain::{self, CompareRequest, EvaluationSet, Name, NewEvaluation, SetRef};
use crate::error::Error;
use crate::grpc::convert::{comparison_to_pb, evaluation_set_to_pb, evaluation_to_pb};

use super::*;

#[instrument(skip_all, fields(set = %req.get_ref().name, version = %req.get_ref().version))]
pub(super) async fn create_evaluation_set(
    svc: &RegistryService,
    req: Request<pb::CreateEvaluationSetRequest>,
) -> Result<Response<pb::CreateEvaluationSetResponse>, Status> {
    let actor = actor(&req)?;
    let set = EvaluationSet::try_from(req.into_inner())?;
    let set = app::create_evaluation_set(&svc.store, set, actor).await?;
    let evaluation_set = Some(evaluation_set_to_pb(set));
    Ok(Response::new(pb::CreateEvaluationSetResponse {
        evaluation_set,
    }))
}

#[instrument(skip_all, fields(set = %req.get_ref().name, version = %req.get_ref().version))]
pub(super) async fn get_evaluation_set(
    svc: &RegistryService,
    req: Request<pb::GetEvaluationSetRequest>,
) -> Result<Response<pb::GetEvaluationSetResponse>, Status> {
    let r = req.into_inner();
    let (name, version) = domain::all((
        Name::parse("name", &r.name),
        domain::parse_set_version("version", &r.version),
    ))?;
    let id = SetRef {
        name: name.to_string(),
        version,
    };
    let evaluation_set = Some(evaluation_set_to_pb(
        app::get_evaluation_set(&svc.store, &id).await?,
    ));
    Ok(Response::new(pb::GetEvaluationSetResponse {
        evaluation_set,
    }))
}

#[instrument(skip_all)]
pub(super) async fn list_evaluation_sets(
    svc: &RegistryService,
    req: Request<pb::ListEvaluationSetsRequest>,
) -> Result<Response<pb::ListEvaluationSetsResponse>, Status> {
    let r = req.into_inner();
    let name = match r.name.as_str() {
        "" => Ok(None),
        raw => Name::parse("name", raw).map(|n| Some(n.to_string())),
    };
    let after = page_token::decode(&r.page_token, "evaluation_sets", &r.name).and_then(|key| {
        key.map(|key| {
            let (name, version) = split_key(&key)
                .ok_or_else(|| Error::invalid("page_token", "is not a page token of this query"))?;
            Ok(SetRef {
                name: name.to_owned(),
                version: version.to_owned(),
            })
        })
        .transpose()
    });
    let (name, size, after) = domain::all((
        name,
        domain::parse_page_size("page_size", r.page_size),
        after,
    ))?;
    let (sets, more) =
        app::list_evaluation_sets(&svc.store, name.as_deref(), after.as_ref(), size).await?;
    let (evaluation_sets, next_page_token) =
        page_token::page(sets, more, "evaluation_sets", &r.name, evaluation_set_to_pb);
    Ok(Response::new(pb::ListEvaluationSetsResponse {
        evaluation_sets,
        next_page_token,
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version))]
pub(super) async fn attach_evaluation(
    svc: &RegistryService,
    req: Request<pb::AttachEvaluationRequest>,
) -> Result<Response<pb::AttachEvaluationResponse>, Status> {
    let actor = actor(&req)?;
    let new = NewEvaluation::try_from(req.into_inner())?;
    let evaluation = app::attach_evaluation(&svc.store, new, actor).await?;
    let evaluation = Some(evaluation_to_pb(evaluation));
    Ok(Response::new(pb::AttachEvaluationResponse { evaluation }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn list_evaluations(
    svc: &RegistryService,
    req: Request<pb::ListEvaluationsRequest>,
) -> Result<Response<pb::ListEvaluationsResponse>, Status> {
    let r = req.into_inner();
    let query = format!("{}|{:?}|{}", r.model, r.evaluation_set, r.metric);
    let after = page_token::decode(&r.page_token, "evaluations", &query).and_then(|key| {
        key.map(|key| {
            let bad = || Error::invalid("page_token", "is not a page token of this query");
            let (n, e) = split_key(&key).ok_or_else(bad)?;
            Ok((n.parse::<i64>().map_err(|_| bad())?, e.to_owned()))
        })
        .transpose()
    });
    let (model, set, size, after) = domain::all((
        Name::parse("model", &r.model),
        required_set_ref("evaluation_set", r.evaluation_set.as_ref()),
        domain::parse_page_size("page_size", r.page_size),
        after,
    ))?;
    let metric = (!r.metric.is_empty()).then_some(r.metric.as_str());
    let (evaluations, more) =
        app::list_evaluations(&svc.store, model.as_str(), &set, metric, after, size).await?;
    let (evaluations, next_page_token) =
        page_token::page(evaluations, more, "evaluations", &query, evaluation_to_pb);
    Ok(Response::new(pb::ListEvaluationsResponse {
        evaluations,
        next_page_token,
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model, candidate = req.get_ref().candidate_version))]
pub(super) async fn compare_versions(
    svc: &RegistryService,
    req: Request<pb::CompareVersionsRequest>,
) -> Result<Response<pb::CompareVersionsResponse>, Status> {
    let request = CompareRequest::try_from(req.into_inner())?;
    let comparison = app::compare(&svc.store, &request).await?;
    Ok(Response::new(pb::CompareVersionsResponse {
        comparison: Some(comparison_to_pb(comparison)),
    }))
}
