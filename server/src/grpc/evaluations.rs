//! Handlers of evaluation sets, evaluations and comparisons.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app::{self};
use crate::domain::evaluation;
use crate::domain::{
    self, CompareRequest, Evaluation, EvaluationSet, Name, NewEvaluation, SetRef, Violations,
};
use crate::error::Error;
use crate::grpc::convert::{self, comparison_to_pb, evaluation_set_to_pb, evaluation_to_pb};

use super::*;

#[instrument(skip_all, fields(set = %req.get_ref().name, version = %req.get_ref().version))]
pub(super) async fn create_evaluation_set(
    svc: &RegistryService,
    req: Request<pb::CreateEvaluationSetRequest>,
) -> Result<Response<pb::CreateEvaluationSetResponse>, Status> {
    let actor = actor(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let id = v.take(
        SetRef::parse("evaluation_set", &r.name, &r.version).map_err(|e| {
            // Report the request's own field names, not the nested ones.
            match e {
                Error::InvalidArgument(mut vs) => {
                    for x in &mut vs {
                        x.field = x.field.trim_start_matches("evaluation_set.").to_owned();
                    }
                    Error::InvalidArgument(vs)
                }
                other => other,
            }
        }),
    );
    let uri = v.take(domain::parse_artifact_uri("uri", &r.uri));
    let digest = v.take(domain::parse_required_digest("digest", &r.digest));
    let metrics = v.take(evaluation::parse_definitions(
        "metrics",
        convert::definitions_from_pb(r.metrics),
    ));
    let description = v.take(domain::parse_text("description", &r.description));
    v.finish()?;
    let set = EvaluationSet {
        id: id.expect("checked"),
        uri: uri.expect("checked"),
        digest: digest.expect("checked"),
        metrics: metrics.expect("checked"),
        description: description.expect("checked"),
        created_by: String::new(),
        create_time: 0,
    };
    let set = app::create_evaluation_set(&svc.store, set, actor).await?;
    Ok(Response::new(pb::CreateEvaluationSetResponse {
        evaluation_set: Some(evaluation_set_to_pb(set)),
    }))
}

#[instrument(skip_all, fields(set = %req.get_ref().name, version = %req.get_ref().version))]
pub(super) async fn get_evaluation_set(
    svc: &RegistryService,
    req: Request<pb::GetEvaluationSetRequest>,
) -> Result<Response<pb::GetEvaluationSetResponse>, Status> {
    let r = req.into_inner();
    let mut v = Violations::default();
    let name = v.take(Name::parse("name", &r.name));
    let version = v.take(domain::parse_set_version("version", &r.version));
    v.finish()?;
    let id = SetRef {
        name: name.expect("checked").to_string(),
        version: version.expect("checked"),
    };
    let set = app::get_evaluation_set(&svc.store, &id).await?;
    Ok(Response::new(pb::GetEvaluationSetResponse {
        evaluation_set: Some(evaluation_set_to_pb(set)),
    }))
}

#[instrument(skip_all)]
pub(super) async fn list_evaluation_sets(
    svc: &RegistryService,
    req: Request<pb::ListEvaluationSetsRequest>,
) -> Result<Response<pb::ListEvaluationSetsResponse>, Status> {
    let r = req.into_inner();
    let mut v = Violations::default();
    let name = if r.name.is_empty() {
        Some(None)
    } else {
        v.take(Name::parse("name", &r.name)).map(Some)
    };
    let size = v.take(domain::parse_page_size("page_size", r.page_size));
    let after = v.take(page_token::decode(
        &r.page_token,
        "evaluation_sets",
        &r.name,
    ));
    v.finish()?;
    let after = match after.expect("checked") {
        None => None,
        Some(key) => {
            let (n, ver) = split_key(&key)
                .ok_or_else(|| Error::invalid("page_token", "is not a page token of this query"))?;
            Some(SetRef {
                name: n.to_owned(),
                version: ver.to_owned(),
            })
        }
    };
    let name = name.expect("checked").map(|n| n.to_string());
    let (sets, more) = app::list_evaluation_sets(
        &svc.store,
        name.as_deref(),
        after.as_ref(),
        size.expect("checked"),
    )
    .await?;
    let next_page_token = match (more, sets.last()) {
        (true, Some(last)) => page_token::encode(
            "evaluation_sets",
            &format!("{}\u{1e}{}", last.id.name, last.id.version),
            &r.name,
        ),
        _ => String::new(),
    };
    Ok(Response::new(pb::ListEvaluationSetsResponse {
        evaluation_sets: sets.into_iter().map(evaluation_set_to_pb).collect(),
        next_page_token,
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version))]
pub(super) async fn attach_evaluation(
    svc: &RegistryService,
    req: Request<pb::AttachEvaluationRequest>,
) -> Result<Response<pb::AttachEvaluationResponse>, Status> {
    let actor = actor(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let version = v.take(domain::parse_version_number("version", r.version));
    let set = v.take(required_set_ref(
        "evaluation_set",
        r.evaluation_set.as_ref(),
    ));
    let evaluator = v.take(domain::parse_evaluator_version(
        "evaluator_version",
        &r.evaluator_version,
    ));
    let metrics = v.take(domain::parse_metrics("metrics", &to_btree(&r.metrics)));
    let report_uri = v.take(domain::parse_optional_uri("report_uri", &r.report_uri));
    let request_id = v.take(domain::parse_request_id("request_id", &r.request_id));
    v.finish()?;
    let new = NewEvaluation {
        evaluation: Evaluation {
            model: model.expect("checked").to_string(),
            version: version.expect("checked"),
            set: set.expect("checked"),
            evaluator_version: evaluator.expect("checked"),
            metrics: metrics.expect("checked"),
            report_uri: report_uri.expect("checked"),
            created_by: String::new(),
            create_time: 0,
        },
        request_id: request_id.expect("checked"),
    };
    let evaluation = app::attach_evaluation(&svc.store, new, actor).await?;
    Ok(Response::new(pb::AttachEvaluationResponse {
        evaluation: Some(evaluation_to_pb(evaluation)),
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn list_evaluations(
    svc: &RegistryService,
    req: Request<pb::ListEvaluationsRequest>,
) -> Result<Response<pb::ListEvaluationsResponse>, Status> {
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let set = v.take(required_set_ref(
        "evaluation_set",
        r.evaluation_set.as_ref(),
    ));
    let size = v.take(domain::parse_page_size("page_size", r.page_size));
    let query = format!("{}|{:?}|{}", r.model, r.evaluation_set, r.metric);
    let after = v.take(page_token::decode(&r.page_token, "evaluations", &query));
    v.finish()?;
    let after = match after.expect("checked") {
        None => None,
        Some(key) => {
            let bad = || Error::invalid("page_token", "is not a page token of this query");
            let (n, e) = split_key(&key).ok_or_else(bad)?;
            Some((n.parse::<i64>().map_err(|_| bad())?, e.to_owned()))
        }
    };
    let (model, set) = (model.expect("checked"), set.expect("checked"));
    let metric = (!r.metric.is_empty()).then_some(r.metric.as_str());
    let (evaluations, more) = app::list_evaluations(
        &svc.store,
        model.as_str(),
        &set,
        metric,
        after,
        size.expect("checked"),
    )
    .await?;
    let next_page_token = match (more, evaluations.last()) {
        (true, Some(last)) => page_token::encode(
            "evaluations",
            &format!("{}\u{1e}{}", last.version, last.evaluator_version),
            &query,
        ),
        _ => String::new(),
    };
    Ok(Response::new(pb::ListEvaluationsResponse {
        evaluations: evaluations.into_iter().map(evaluation_to_pb).collect(),
        next_page_token,
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model, candidate = req.get_ref().candidate_version))]
pub(super) async fn compare_versions(
    svc: &RegistryService,
    req: Request<pb::CompareVersionsRequest>,
) -> Result<Response<pb::CompareVersionsResponse>, Status> {
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let candidate = v.take(domain::parse_version_number(
        "candidate_version",
        r.candidate_version,
    ));
    if r.baseline_version < 0 {
        v.add(
            "baseline_version",
            "must be 0 (the production version) or a version number",
        );
    }
    let set = v.take(parse_set_ref("evaluation_set", r.evaluation_set.as_ref()));
    let evaluator = if r.evaluator_version.is_empty() {
        Some(None)
    } else {
        v.take(domain::parse_evaluator_version(
            "evaluator_version",
            &r.evaluator_version,
        ))
        .map(Some)
    };
    v.finish()?;
    let request = CompareRequest {
        model: model.expect("checked"),
        candidate: candidate.expect("checked"),
        baseline: r.baseline_version,
        set: set.expect("checked"),
        evaluator_version: evaluator.expect("checked"),
    };
    let comparison = app::compare(&svc.store, &request).await?;
    Ok(Response::new(pb::CompareVersionsResponse {
        comparison: Some(comparison_to_pb(comparison)),
    }))
}
