//! The GET pages: models, a model, pending approvals, a request's evidence,
//! the audit log.

use std::collections::HashMap;

use hyper::{Response, StatusCode};
use modelreg_api::v1 as pb;
use modelreg_api::v1::model_registry_service_server::ModelRegistryService;

use crate::auth::Identity;

use super::*;

impl Dashboard {
    pub(super) async fn models_page(
        &self,
        who: &Identity,
        page: Page,
    ) -> Result<Response<Body>, Failure> {
        let models = self.all_models(who).await?;
        let pending = self
            .all_requests(who, "", pb::TransitionRequestStatus::Pending)
            .await?;
        let page = page.titled("Models").live("/events");
        Ok(html_response(
            StatusCode::OK,
            pages::models(&page, &models, &pending),
        ))
    }

    pub(super) async fn model_page(
        &self,
        who: &Identity,
        page: Page,
        name: &str,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, Failure> {
        let model = self
            .call(
                who,
                "GetModel",
                pb::GetModelRequest {
                    name: name.to_owned(),
                },
                |s, r| async move { s.get_model(r).await },
            )
            .await?
            .model
            .unwrap_or_default();
        let versions = self.all_versions(who, &model.name).await?;
        let pending = self
            .all_requests(who, &model.name, pb::TransitionRequestStatus::Pending)
            .await?;
        let filter = pb::ListEventsRequest {
            model: model.name.clone(),
            types: vec![pb::EventType::StageChanged as i32],
            ..Default::default()
        };
        let moves = self.events_between(who, &filter, 0, u64::MAX).await?;
        let timeline: Vec<pb::RegistryEvent> = moves
            .into_iter()
            .filter(|e| {
                e.to_stage == pb::Stage::Production as i32
                    || e.from_stage == pb::Stage::Production as i32
            })
            .collect();
        let page = page
            .titled(&model.name)
            .live(&format!("/events?model={}", encode_component(&model.name)));
        let metric = query.get("metric").map(String::as_str);
        Ok(html_response(
            StatusCode::OK,
            pages::model(&page, &model, &versions, &pending, &timeline, metric),
        ))
    }

    pub(super) async fn requests_page(
        &self,
        who: &Identity,
        page: Page,
    ) -> Result<Response<Body>, Failure> {
        let pending = self
            .all_requests(who, "", pb::TransitionRequestStatus::Pending)
            .await?;
        let page = page.titled("Pending approvals").live("/events");
        Ok(html_response(
            StatusCode::OK,
            pages::requests(&page, &pending),
        ))
    }

    /// Everything the request page shows.
    pub(super) async fn request_evidence(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<pages::Evidence, Failure> {
        let (model_name, _) = id.split_once(':').ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("{id:?} is not a request id (MODEL:NUMBER, e.g. fraud:3)"),
            )
        })?;
        let requests = self
            .all_requests(who, model_name, pb::TransitionRequestStatus::Unspecified)
            .await?;
        let request = requests.into_iter().find(|r| r.id == id).ok_or_else(|| {
            Failure::new(StatusCode::NOT_FOUND, format!("no transition request {id}"))
        })?;
        let model = self
            .call(
                who,
                "GetModel",
                pb::GetModelRequest {
                    name: request.model.clone(),
                },
                |s, r| async move { s.get_model(r).await },
            )
            .await?
            .model
            .unwrap_or_default();
        let version = self
            .call(
                who,
                "GetVersion",
                pb::GetVersionRequest {
                    model: request.model.clone(),
                    version: request.version,
                    alias: String::new(),
                },
                |s, r| async move { s.get_version(r).await },
            )
            .await?
            .version
            .unwrap_or_default();
        let standard = model
            .policy
            .as_ref()
            .and_then(|p| p.standard_evaluation_set.clone())
            .filter(|s| !s.name.is_empty());
        let baseline = model.production_version;
        let comparison = match &standard {
            Some(set) if baseline > 0 && baseline != request.version => {
                let req = pb::CompareVersionsRequest {
                    model: request.model.clone(),
                    candidate_version: request.version,
                    baseline_version: baseline,
                    evaluation_set: Some(set.clone()),
                    evaluator_version: String::new(),
                };
                Some(
                    self.call(who, "CompareVersions", req, |s, r| async move {
                        s.compare_versions(r).await
                    })
                    .await
                    .map(|c| c.comparison.unwrap_or_default())
                    .map_err(|s| s.message().to_owned()),
                )
            }
            _ => None,
        };
        Ok(pages::Evidence {
            request,
            model,
            version,
            standard,
            comparison,
        })
    }

    pub(super) async fn request_page(
        &self,
        who: &Identity,
        page: Page,
        id: &str,
    ) -> Result<Response<Body>, Failure> {
        let evidence = self.request_evidence(who, id).await?;
        let page = page.titled(&format!("Request {id}")).live(&format!(
            "/events?model={}",
            encode_component(&evidence.request.model)
        ));
        Ok(html_response(
            StatusCode::OK,
            pages::request(&page, &evidence),
        ))
    }

    pub(super) async fn audit_page(
        &self,
        who: &Identity,
        page: Page,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, Failure> {
        let get = |k: &str| query.get(k).map(|v| v.trim()).unwrap_or("").to_owned();
        let (model, actor, kind) = (get("model"), get("actor"), get("type"));
        let mut filter = pb::ListEventsRequest {
            model: model.clone(),
            actor: actor.clone(),
            ..Default::default()
        };
        if !kind.is_empty() {
            let t = pb::EventType::from_str_name(&format!("EVENT_TYPE_{kind}"))
                .filter(|t| *t != pb::EventType::Unspecified)
                .ok_or_else(|| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        format!("unknown event type {kind:?}"),
                    )
                })?;
            filter.types = vec![t as i32];
        }
        let before = match query.get("before").map(|b| b.parse::<u64>()) {
            None => u64::MAX,
            Some(Ok(b)) => b,
            Some(Err(_)) => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "before must be a sequence number",
                ));
            }
        };
        let latest = self.service.latest_sequence();
        let events = self
            .newest_events(who, &filter, before.min(latest.saturating_add(1)), 100)
            .await?;
        let chain = self.verified_chain(who).await?;
        let live = if model.is_empty() {
            "/events".to_owned()
        } else {
            format!("/events?model={}", encode_component(&model))
        };
        let page = page.titled("Audit log").live(&live);
        let filters = pages::AuditFilters { model, actor, kind };
        Ok(html_response(
            StatusCode::OK,
            pages::audit(&page, &filters, &events, &chain),
        ))
    }
}
