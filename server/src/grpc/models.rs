//! Handlers of models and aliases.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app::{self};
use crate::domain::{self, AliasName, ModelUpdate, Name, NewModel, Violations};
use crate::grpc::convert::{self, model_to_pb};

use super::*;

#[instrument(skip_all, fields(model = %req.get_ref().name))]
pub(super) async fn create_model(
    svc: &RegistryService,
    req: Request<pb::CreateModelRequest>,
) -> Result<Response<pb::CreateModelResponse>, Status> {
    let caller = caller(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let name = v.take(Name::parse("name", &r.name));
    let description = v.take(domain::parse_text("description", &r.description));
    let tags = v.take(domain::parse_tags("tags", &to_btree(&r.tags)));
    let request_id = v.take(domain::parse_request_id("request_id", &r.request_id));
    let policy = match r.policy {
        Some(p) if p != pb::Policy::default() => v.take(convert::policy_from_pb("policy", p)),
        _ => None,
    };
    v.finish()?;
    let model = app::create_model(
        &svc.store,
        NewModel {
            name: name.expect("checked"),
            description: description.expect("checked"),
            tags: tags.expect("checked"),
            policy,
            request_id: request_id.expect("checked"),
        },
        caller,
    )
    .await?;
    Ok(Response::new(pb::CreateModelResponse {
        model: Some(model_to_pb(model)),
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().name))]
pub(super) async fn get_model(
    svc: &RegistryService,
    req: Request<pb::GetModelRequest>,
) -> Result<Response<pb::GetModelResponse>, Status> {
    let name = Name::parse("name", &req.get_ref().name)?;
    let model = app::get_model(&svc.store, name.as_str()).await?;
    Ok(Response::new(pb::GetModelResponse {
        model: Some(model_to_pb(model)),
    }))
}

#[instrument(skip_all)]
pub(super) async fn list_models(
    svc: &RegistryService,
    req: Request<pb::ListModelsRequest>,
) -> Result<Response<pb::ListModelsResponse>, Status> {
    let r = req.into_inner();
    let mut v = Violations::default();
    let size = v.take(domain::parse_page_size("page_size", r.page_size));
    let filter = v.take(parse_model_filter(&r.filter));
    let after = v.take(page_token::decode(&r.page_token, "models", &r.filter));
    v.finish()?;
    let size = size.expect("checked");
    let (models, more) = app::list_models(
        &svc.store,
        &filter.expect("checked"),
        after.expect("checked").as_deref(),
        size,
    )
    .await?;
    let next_page_token = match (more, models.last()) {
        (true, Some(last)) => page_token::encode("models", &last.name, &r.filter),
        _ => String::new(),
    };
    Ok(Response::new(pb::ListModelsResponse {
        models: models.into_iter().map(model_to_pb).collect(),
        next_page_token,
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().name))]
pub(super) async fn update_model(
    svc: &RegistryService,
    req: Request<pb::UpdateModelRequest>,
) -> Result<Response<pb::UpdateModelResponse>, Status> {
    let caller = caller(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let name = v.take(Name::parse("name", &r.name));
    let etag = v.take(domain::parse_etag("etag", &r.etag));
    // AIP-134: without a mask, every field that is set is updated.
    let paths: Vec<String> = match &r.update_mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
        _ => {
            let mut implied = Vec::new();
            if !r.description.is_empty() {
                implied.push("description".to_owned());
            }
            if !r.tags.is_empty() {
                implied.push("tags".to_owned());
            }
            if r.policy.is_some() {
                implied.push("policy".to_owned());
            }
            implied
        }
    };
    let (mut description, mut tags, mut policy) = (None, None, None);
    for path in &paths {
        match path.as_str() {
            "description" => {
                description = v.take(domain::parse_text("description", &r.description))
            }
            "tags" => tags = v.take(domain::parse_tags("tags", &to_btree(&r.tags))),
            "policy" => {
                // In the mask but unset: back to the defaults (AIP-134).
                policy = v.take(convert::policy_from_pb(
                    "policy",
                    r.policy.clone().unwrap_or_default(),
                ))
            }
            other => v.add(
                "update_mask",
                format!(
                    "{:?} cannot be updated: use description, tags or policy",
                    domain::truncate(other, 64)
                ),
            ),
        }
    }
    if paths.is_empty() {
        v.add(
            "update_mask",
            "names no field and the request sets none: nothing to update",
        );
    }
    v.finish()?;
    let update = ModelUpdate {
        name: name.expect("checked"),
        description,
        tags,
        policy,
        etag: etag.expect("checked"),
    };
    let model = app::update_model(&svc.store, update, caller).await?;
    Ok(Response::new(pb::UpdateModelResponse {
        model: Some(model_to_pb(model)),
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn set_alias(
    svc: &RegistryService,
    req: Request<pb::SetAliasRequest>,
) -> Result<Response<pb::SetAliasResponse>, Status> {
    let actor = actor(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let alias = v.take(AliasName::parse("alias", &r.alias));
    let version = v.take(domain::parse_version_number("version", r.version));
    v.finish()?;
    let model = app::set_alias(
        &svc.store,
        model.expect("checked"),
        alias.expect("checked"),
        version.expect("checked"),
        actor,
    )
    .await?;
    Ok(Response::new(pb::SetAliasResponse {
        model: Some(model_to_pb(model)),
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model))]
pub(super) async fn delete_alias(
    svc: &RegistryService,
    req: Request<pb::DeleteAliasRequest>,
) -> Result<Response<pb::DeleteAliasResponse>, Status> {
    let actor = actor(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let alias = v.take(AliasName::parse("alias", &r.alias));
    v.finish()?;
    let model = app::delete_alias(
        &svc.store,
        model.expect("checked"),
        alias.expect("checked"),
        actor,
    )
    .await?;
    Ok(Response::new(pb::DeleteAliasResponse {
        model: Some(model_to_pb(model)),
    }))
}
