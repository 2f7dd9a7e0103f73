//! Handlers of versions.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app;
use crate::domain::{self, AliasName, Name, NewVersion};
use crate::error::Error;
use crate::grpc::convert::{request_to_pb, version_to_pb};
use crate::store::VersionRef;

use super::*;

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn register_version(
    svc: &RegistryService,
    req: Request<pb::RegisterVersionRequest>,
) -> Result<Response<pb::RegisterVersionResponse>, Status> {
    let actor = actor(&req)?;
    let new = NewVersion::try_from(req.into_inner())?;
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
    let model = Name::parse("model", &r.model);
    let which = match (r.version, r.alias.is_empty()) {
        (0, true) => Err(Error::invalid(
            "version",
            "give a version number (1, 2, …) or an alias",
        )),
        (n, true) => domain::parse_version_number("version", n).map(VersionRef::Number),
        (0, false) => AliasName::parse("alias", &r.alias).map(VersionRef::Alias),
        (_, false) => Err(Error::invalid(
            "alias",
            "give either a version number or an alias, not both",
        )),
    };
    let (model, which) = domain::all((model, which))?;
    let version = app::get_version(&svc.store, model.as_str(), &which).await?;
    let version = Some(version_to_pb(version));
    Ok(Response::new(pb::GetVersionResponse { version }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn list_versions(
    svc: &RegistryService,
    req: Request<pb::ListVersionsRequest>,
) -> Result<Response<pb::ListVersionsResponse>, Status> {
    let r = req.into_inner();
    let stage = match r.stage {
        0 => Ok(None),
        raw => parse_stage_field("stage", raw).map(Some),
    };
    let query = format!("{}|{}", r.model, r.stage);
    let (model, size, stage, after) = domain::all((
        Name::parse("model", &r.model),
        domain::parse_page_size("page_size", r.page_size),
        stage,
        page_token::decode(&r.page_token, "versions", &query),
    ))?;
    let after = after.and_then(|k| k.parse::<i64>().ok()).unwrap_or(0);
    let (versions, more) =
        app::list_versions(&svc.store, model.as_str(), stage, after, size).await?;
    let (versions, next_page_token) =
        page_token::page(versions, more, "versions", &query, version_to_pb);
    Ok(Response::new(pb::ListVersionsResponse {
        versions,
        next_page_token,
    }))
}
