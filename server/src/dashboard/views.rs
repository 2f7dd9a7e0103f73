//! The GET pages: models, a model, pending approvals, a request's evidence,
//! the audit log, durable consumers.

use std::collections::HashMap;

use hyper::{Response, StatusCode};

use crate::app;
use crate::auth::{Action, Identity};
use crate::domain::{
    CompareRequest, Comparison, Event, EventFilter, EventKind, Name, SetRef, Stage,
};
use crate::store::VersionRef;

use super::*;

impl Dashboard {
    pub(super) async fn models_page(
        &self,
        who: &Identity,
        page: Page,
    ) -> Result<Response<Body>, Failure> {
        let models = self.all_models(who).await?;
        let pending = self.pending_requests(who, None).await?;
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
        permit(who, Action::GetModel)?;
        let name = Name::parse("name", name)?;
        let model = app::get_model(self.store(), name.as_str()).await?;
        let versions = self.all_versions(who, &model.name).await?;
        let pending = self.pending_requests(who, Some(&model.name)).await?;
        let filter = EventFilter {
            models: vec![model.name.clone()],
            kinds: vec![EventKind::StageChanged],
            ..Default::default()
        };
        let moves = self.events_between(who, &filter, 0, u64::MAX).await?;
        let production = Some(Stage::Production);
        let timeline: Vec<Event> = moves
            .into_iter()
            .filter(|e| e.to_stage == production || e.from_stage == production)
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
        let pending = self.pending_requests(who, None).await?;
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
        let (model_name, number) = id.split_once(':').ok_or_else(|| {
            Failure::new(
                StatusCode::NOT_FOUND,
                format!("{id:?} is not a request id (MODEL:NUMBER, e.g. fraud:3)"),
            )
        })?;
        permit(who, Action::ListTransitionRequests)?;
        let model_name = Name::parse("model", model_name)?;
        let found = match number.parse::<i64>() {
            Ok(n) => app::find_request(self.store(), model_name.as_str(), n).await?,
            Err(_) => app::get_model(self.store(), model_name.as_str())
                .await
                .map(|_| None)?,
        };
        let request = found.filter(|r| r.id() == id).ok_or_else(|| {
            Failure::new(StatusCode::NOT_FOUND, format!("no transition request {id}"))
        })?;
        permit(who, Action::GetModel)?;
        let model = app::get_model(self.store(), &request.model).await?;
        permit(who, Action::GetVersion)?;
        let which = VersionRef::Number(request.version);
        let version = app::get_version(self.store(), &request.model, &which).await?;
        let standard = model.policy.standard_evaluation_set.clone();
        let baseline = model.production_version;
        let comparison = match &standard {
            Some(set) if baseline > 0 && baseline != request.version => Some(
                self.compare(who, &model_name, request.version, baseline, set)
                    .await,
            ),
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

    /// The candidate against production on the standard set, or why not.
    async fn compare(
        &self,
        who: &Identity,
        model: &Name,
        candidate: i64,
        baseline: i64,
        set: &SetRef,
    ) -> Result<Comparison, String> {
        let req = CompareRequest {
            model: model.clone(),
            candidate,
            baseline,
            set: Some(set.clone()),
            evaluator_version: None,
        };
        let compared = match permit(who, Action::CompareVersions) {
            Ok(()) => app::compare(self.store(), &req).await,
            Err(e) => Err(e),
        };
        compared
            .map(|judged| judged.comparison)
            .map_err(|e| e.into_http().1)
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
        let mut filter = EventFilter::default();
        if !actor.is_empty() {
            filter.actor = Some(actor.clone());
        }
        if !kind.is_empty() {
            let k = EventKind::from_db(&kind).ok_or_else(|| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown event type {kind:?}"),
                )
            })?;
            filter.kinds = vec![k];
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
        if !model.is_empty() {
            filter.models = vec![Name::parse("model", &model)?.to_string()];
        }
        let latest = app::latest_sequence(self.store());
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

    pub(super) async fn consumers_page(
        &self,
        who: &Identity,
        page: Page,
    ) -> Result<Response<Body>, Failure> {
        let views = self.all_consumers(who).await?;
        let page = page.titled("Consumers").live("/events");
        Ok(html_response(
            StatusCode::OK,
            pages::consumers(&page, &views),
        ))
    }

    pub(super) async fn consumer_page(
        &self,
        who: &Identity,
        page: Page,
        name: &str,
    ) -> Result<Response<Body>, Failure> {
        permit(who, Action::GetConsumer)?;
        let name = Name::parse("name", name)?;
        let view = app::get_consumer(self.store(), name.as_str()).await?;
        let dead = self.all_dead_letters(who, name.as_str()).await?;
        let page = page
            .titled(&format!("Consumer {}", name.as_str()))
            .live("/events");
        Ok(html_response(
            StatusCode::OK,
            pages::consumer(&page, &view, &dead),
        ))
    }
}
