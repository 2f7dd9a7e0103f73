//! Handlers of models and aliases.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app;
use crate::domain::{self, AliasName, ModelUpdate, Name, NewModel};
use crate::grpc::convert::model_to_pb;

use super::*;

#[instrument(skip_all, fields(model = %req.get_ref().name))]
pub(super) async fn create_model(
    svc: &RegistryService,
    req: Request<pb::CreateModelRequest>,
) -> Result<Response<pb::CreateModelResponse>, Status> {
    let caller = caller(&req)?;
    let model = app::create_model(&svc.store, NewModel::try_from(req.into_inner())?, caller);
    let model = Some(model_to_pb(model.await?));
    Ok(Response::new(pb::CreateModelResponse { model }))
}

#[instrument(skip_all, fields(model = %req.get_ref().name))]
pub(super) async fn get_model(
    svc: &RegistryService,
    req: Request<pb::GetModelRequest>,
) -> Result<Response<pb::GetModelResponse>, Status> {
    let name = Name::parse("name", &req.get_ref().name)?;
    let model = Some(model_to_pb(
        app::get_model(&svc.store, name.as_str()).await?,
    ));
    Ok(Response::new(pb::GetModelResponse { model }))
}

#[instrument(skip_all)]
pub(super) async fn list_models(
    svc: &RegistryService,
    req: Request<pb::ListModelsRequest>,
) -> Result<Response<pb::ListModelsResponse>, Status> {
    let r = req.into_inner();
    let (size, filter, after) = domain::all((
        domain::parse_page_size("page_size", r.page_size),
        parse_model_filter(&r.filter),
        page_token::decode(&r.page_token, "models", &r.filter),
    ))?;
    let (models, more) = app::list_models(&svc.store, &filter, after.as_deref(), size).await?;
    let (models, next_page_token) =
        page_token::page(models, more, "models", &r.filter, model_to_pb);
    Ok(Response::new(pb::ListModelsResponse {
        models,
        next_page_token,
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().name))]
pub(super) async fn update_model(
    svc: &RegistryService,
    req: Request<pb::UpdateModelRequest>,
) -> Result<Response<pb::UpdateModelResponse>, Status> {
    let caller = caller(&req)?;
    let update = ModelUpdate::try_from(req.into_inner())?;
    let model = Some(model_to_pb(
        app::update_model(&svc.store, update, caller).await?,
    ));
    Ok(Response::new(pb::UpdateModelResponse { model }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn set_alias(
    svc: &RegistryService,
    req: Request<pb::SetAliasRequest>,
) -> Result<Response<pb::SetAliasResponse>, Status> {
    let actor = actor(&req)?;
    let r = req.into_inner();
    let (model, alias, version) = domain::all((
        Name::parse("model", &r.model),
        AliasName::parse("alias", &r.alias),
        domain::parse_version_number("version", r.version),
    ))?;
    let model = app::set_alias(&svc.store, model, alias, version, actor).await?;
    let model = Some(model_to_pb(model));
    Ok(Response::new(pb::SetAliasResponse { model }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn delete_alias(
    svc: &RegistryService,
    req: Request<pb::DeleteAliasRequest>,
) -> Result<Response<pb::DeleteAliasResponse>, Status> {
    let actor = actor(&req)?;
    let r = req.into_inner();
    let (model, alias) = domain::all((
        Name::parse("model", &r.model),
        AliasName::parse("alias", &r.alias),
    ))?;
    let model = Some(model_to_pb(
        app::delete_alias(&svc.store, model, alias, actor).await?,
    ));
    Ok(Response::new(pb::DeleteAliasResponse { model }))
}
