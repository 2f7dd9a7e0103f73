//! Handlers of versions.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app::{self};
use crate::domain::{self, AliasName, Name, NewVersion, Source, Stage, Violations};
use crate::grpc::convert::{self, request_to_pb, version_to_pb};
use crate::store::VersionRef;

use super::*;

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn register_version(
    svc: &RegistryService,
    req: Request<pb::RegisterVersionRequest>,
) -> Result<Response<pb::RegisterVersionResponse>, Status> {
    let actor = actor(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let artifact_uri = v.take(domain::parse_artifact_uri("artifact_uri", &r.artifact_uri));
    let artifact_digest = v.take(domain::parse_digest("artifact_digest", &r.artifact_digest));
    let source = v.take(Source::parse(
        "source",
        r.source.map(convert::source_from_pb).unwrap_or_default(),
    ));
    let metrics = v.take(domain::parse_metrics(
        "training_metrics",
        &to_btree(&r.training_metrics),
    ));
    let tags = v.take(domain::parse_tags("tags", &to_btree(&r.tags)));
    let description = v.take(domain::parse_text("description", &r.description));
    let request_id = v.take(domain::parse_request_id("request_id", &r.request_id));
    let target_stage = match pb::Stage::try_from(r.target_stage) {
        Ok(pb::Stage::Unspecified) | Ok(pb::Stage::None) => Some(Stage::None),
        Ok(pb::Stage::Staging) => Some(Stage::Staging),
        _ => {
            v.add(
                "target_stage",
                "a new version may only enter STAGE_NONE or STAGE_STAGING; promote it with TransitionStage",
            );
            None
        }
    };
    v.finish()?;
    let new = NewVersion {
        model: model.expect("checked"),
        artifact_uri: artifact_uri.expect("checked"),
        artifact_digest: artifact_digest.expect("checked"),
        source: source.expect("checked"),
        training_metrics: metrics.expect("checked"),
        tags: tags.expect("checked"),
        description: description.expect("checked"),
        request_id: request_id.expect("checked"),
        target_stage: target_stage.expect("checked"),
    };
    let registered = app::register_version(&svc.store, new, actor).await?;
    Ok(Response::new(pb::RegisterVersionResponse {
        version: Some(version_to_pb(registered.version)),
        request: registered.request.map(request_to_pb),
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn get_version(
    svc: &RegistryService,
    req: Request<pb::GetVersionRequest>,
) -> Result<Response<pb::GetVersionResponse>, Status> {
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let which = match (r.version, r.alias.is_empty()) {
        (0, true) => {
            v.add("version", "give a version number (1, 2, …) or an alias");
            None
        }
        (n, true) => v
            .take(domain::parse_version_number("version", n))
            .map(VersionRef::Number),
        (0, false) => v
            .take(AliasName::parse("alias", &r.alias))
            .map(VersionRef::Alias),
        (_, false) => {
            v.add(
                "alias",
                "give either a version number or an alias, not both",
            );
            None
        }
    };
    v.finish()?;
    let version = app::get_version(
        &svc.store,
        model.expect("checked").as_str(),
        &which.expect("checked"),
    )
    .await?;
    Ok(Response::new(pb::GetVersionResponse {
        version: Some(version_to_pb(version)),
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn list_versions(
    svc: &RegistryService,
    req: Request<pb::ListVersionsRequest>,
) -> Result<Response<pb::ListVersionsResponse>, Status> {
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let size = v.take(domain::parse_page_size("page_size", r.page_size));
    let stage = if r.stage == pb::Stage::Unspecified as i32 {
        Some(None)
    } else {
        v.take(parse_stage_field("stage", r.stage)).map(Some)
    };
    let query = format!("{}|{}", r.model, r.stage);
    let after = v
        .take(page_token::decode(&r.page_token, "versions", &query))
        .map(|k| k.and_then(|k| k.parse::<i64>().ok()).unwrap_or(0));
    v.finish()?;
    let (versions, more) = app::list_versions(
        &svc.store,
        model.expect("checked").as_str(),
        stage.expect("checked"),
        after.expect("checked"),
        size.expect("checked"),
    )
    .await?;
    let next_page_token = match (more, versions.last()) {
        (true, Some(last)) => page_token::encode("versions", &last.version.to_string(), &query),
        _ => String::new(),
    };
    Ok(Response::new(pb::ListVersionsResponse {
        versions: versions.into_iter().map(version_to_pb).collect(),
        next_page_token,
    }))
}
