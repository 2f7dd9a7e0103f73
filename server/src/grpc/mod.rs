//! The gRPC edge: `modelreg.v1.ModelRegistryService`. Every RPC takes one
//! course, written out in the trait implementation below: identify the
//! caller (where the use case acts for someone), parse the request into
//! domain values ([`parse`]: every bad field in one `INVALID_ARGUMENT`),
//! call one [`crate::app`] use case and convert the answer ([`convert`]).
//! The paged reads ([`lists`]) and the event log's verify and watch
//! ([`events`]) are longer and have files of their own. No rule and no SQL
//! lives here.

mod consumers;
pub mod convert;
mod events;
mod lists;
mod page_token;
mod parse;
mod policy;

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::instrument;

use modelreg_api::v1 as pb;
use modelreg_api::v1::model_registry_service_server::ModelRegistryService;
use tonic::{Request, Response, Status};

use crate::app::{self, Caller, Decision};
use crate::auth::{Identity, Role};
use crate::domain::{
    Actor, CompareRequest, EvaluationSet, ModelUpdate, Name, NewDeployment, NewEvaluation,
    NewImport, NewModel, NewVersion, RequestStatus, StageChange, VersionUpdate, WorkerFailure,
};
use crate::error::Error;
use crate::store::Store;
use crate::watch::Tail;
use convert::{
    comparison_to_pb, deployment_to_pb, evaluation_set_to_pb, evaluation_to_pb, event_to_pb,
    model_to_pb, outcome_to_pb, request_to_pb, version_to_pb,
};

pub use events::MAX_WATCHED_MODELS;
pub use lists::{MAX_FILTER_BYTES, MAX_FILTER_TERMS};

pub use modelreg_api::ACTOR_HEADER;

/// The registry service; cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct RegistryService {
    /// Where everything is kept.
    store: Store,
    /// Flips to true when the server begins shutting down, ending streams.
    shutdown: CancellationToken,
    /// How often idle watch streams get a heartbeat.
    heartbeat: Duration,
    /// Recent events shared by every watch stream.
    tail: std::sync::Arc<Tail>,
    /// Wakes this server's consumer member streams.
    consumers: std::sync::Arc<crate::consume::Hub>,
}

impl RegistryService {
    /// A service over `store`, whose watch streams read `tail`.
    pub fn new(
        store: Store,
        tail: std::sync::Arc<Tail>,
        shutdown: CancellationToken,
        heartbeat: Duration,
    ) -> Self {
        RegistryService {
            store,
            shutdown,
            heartbeat,
            tail,
            consumers: std::sync::Arc::default(),
        }
    }
}

/// The caller, as the auth layer identified them. Without the layer (a
/// service used directly, in local mode) the `x-modelreg-actor` header names
/// the caller, who then holds every role.
fn identity<T>(req: &Request<T>) -> Result<Identity, Status> {
    if let Some(id) = req.extensions().get::<Identity>()
        && !id.local
    {
        return Ok(id.clone());
    }
    match req.metadata().get(ACTOR_HEADER) {
        None => Ok(Identity::local(Actor::anonymous().0)),
        Some(v) => {
            let actor = Actor::parse(ACTOR_HEADER, v.to_str().unwrap_or(""))?;
            Ok(Identity::local(actor.0))
        }
    }
}

/// The actor recorded for the caller's events.
fn actor<T>(req: &Request<T>) -> Result<Actor, Status> {
    identity(req).map(|id| Actor(id.name))
}

/// The caller as the store needs to know them.
fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    identity(req).map(|id| Caller {
        admin: id.has(Role::Admin),
        actor: Actor(id.name),
    })
}

/// Who calls, then what they ask for: `who` identifies the caller
/// ([`caller`] or [`actor`]) before `parse` reads the request, the order
/// every handler keeps, so a bad actor header is reported before the
/// request's own fields.
fn identified<R, W, V>(
    req: Request<R>,
    who: fn(&Request<R>) -> Result<W, Status>,
    parse: fn(R) -> Result<V, Error>,
) -> Result<(W, V), Status> {
    let who = who(&req)?;
    let value = parse(req.into_inner())?;
    Ok((who, value))
}

impl RegistryService {
    /// Approves, rejects or cancels the request `request_id`: the three
    /// decisions take one course, and only a rejection must say why. The
    /// answer is the request and its version as they are now.
    async fn decide<T>(
        &self,
        req: &Request<T>,
        request_id: &str,
        comment: &str,
        status: RequestStatus,
    ) -> Result<(Option<pb::TransitionRequest>, Option<pb::ModelVersion>), Status> {
        let caller = caller(req)?;
        let comment_required = status == RequestStatus::Rejected;
        let decision = Decision::parse(request_id, comment, comment_required, caller)?;
        let (request, version) = match status {
            RequestStatus::Approved => app::approve(&self.store, decision).await?,
            closed => app::close_request(&self.store, decision, closed).await?,
        };
        Ok((Some(request_to_pb(request)), Some(version_to_pb(version))))
    }
}

#[tonic::async_trait]
impl ModelRegistryService for RegistryService {
    #[instrument(skip_all, fields(model = %req.get_ref().name))]
    async fn create_model(
        &self,
        req: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::CreateModelResponse>, Status> {
        let (caller, new) = identified(req, caller, NewModel::try_from)?;
        let model = app::create_model(&self.store, new, caller).await?;
        let model = Some(model_to_pb(model));
        Ok(Response::new(pb::CreateModelResponse { model }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().name))]
    async fn get_model(
        &self,
        req: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let name = Name::parse("name", &req.get_ref().name)?;
        let model = app::get_model(&self.store, name.as_str()).await?;
        let model = Some(model_to_pb(model));
        Ok(Response::new(pb::GetModelResponse { model }))
    }

    #[instrument(skip_all)]
    async fn list_models(
        &self,
        req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Ok(Response::new(
            lists::models(&self.store, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().name))]
    async fn update_model(
        &self,
        req: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::UpdateModelResponse>, Status> {
        let (caller, update) = identified(req, caller, ModelUpdate::try_from)?;
        let model = app::update_model(&self.store, update, caller).await?;
        let model = Some(model_to_pb(model));
        Ok(Response::new(pb::UpdateModelResponse { model }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn register_version(
        &self,
        req: Request<pb::RegisterVersionRequest>,
    ) -> Result<Response<pb::RegisterVersionResponse>, Status> {
        let (actor, new) = identified(req, actor, NewVersion::try_from)?;
        let registered = app::register_version(&self.store, new, actor).await?;
        Ok(Response::new(pb::RegisterVersionResponse {
            version: Some(version_to_pb(registered.version)),
            request: registered.request.map(request_to_pb),
        }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn get_version(
        &self,
        req: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        let (model, which) = parse::get_version(req.into_inner())?;
        let version = app::get_version(&self.store, model.as_str(), &which).await?;
        let version = Some(version_to_pb(version));
        Ok(Response::new(pb::GetVersionResponse { version }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        Ok(Response::new(
            lists::versions(&self.store, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version))]
    async fn update_version(
        &self,
        req: Request<pb::UpdateVersionRequest>,
    ) -> Result<Response<pb::UpdateVersionResponse>, Status> {
        let (actor, update) = identified(req, actor, VersionUpdate::try_from)?;
        let version = app::update_version(&self.store, update, actor).await?;
        let version = Some(version_to_pb(version));
        Ok(Response::new(pb::UpdateVersionResponse { version }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn set_alias(
        &self,
        req: Request<pb::SetAliasRequest>,
    ) -> Result<Response<pb::SetAliasResponse>, Status> {
        let (actor, (model, alias, version)) = identified(req, actor, parse::set_alias)?;
        let model = app::change_alias(&self.store, model, alias, Some(version), actor).await?;
        let model = Some(model_to_pb(model));
        Ok(Response::new(pb::SetAliasResponse { model }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn delete_alias(
        &self,
        req: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let (actor, (model, alias)) = identified(req, actor, parse::delete_alias)?;
        let model = app::change_alias(&self.store, model, alias, None, actor).await?;
        let model = Some(model_to_pb(model));
        Ok(Response::new(pb::DeleteAliasResponse { model }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version))]
    async fn transition_stage(
        &self,
        req: Request<pb::TransitionStageRequest>,
    ) -> Result<Response<pb::TransitionStageResponse>, Status> {
        let (caller, change) = identified(req, caller, StageChange::try_from)?;
        let outcome = app::request_transition(&self.store, change, caller).await?;
        let (version, request) = outcome_to_pb(outcome);
        Ok(Response::new(pb::TransitionStageResponse {
            version,
            request,
        }))
    }

    #[instrument(skip_all, fields(request = %req.get_ref().request_id))]
    async fn approve_transition(
        &self,
        req: Request<pb::ApproveTransitionRequest>,
    ) -> Result<Response<pb::ApproveTransitionResponse>, Status> {
        let r = req.get_ref();
        let status = RequestStatus::Approved;
        let (request, version) = self.decide(&req, &r.request_id, &r.comment, status).await?;
        Ok(Response::new(pb::ApproveTransitionResponse {
            request,
            version,
        }))
    }

    #[instrument(skip_all, fields(request = %req.get_ref().request_id))]
    async fn reject_transition(
        &self,
        req: Request<pb::RejectTransitionRequest>,
    ) -> Result<Response<pb::RejectTransitionResponse>, Status> {
        let r = req.get_ref();
        let status = RequestStatus::Rejected;
        let (request, version) = self.decide(&req, &r.request_id, &r.comment, status).await?;
        Ok(Response::new(pb::RejectTransitionResponse {
            request,
            version,
        }))
    }

    #[instrument(skip_all, fields(request = %req.get_ref().request_id))]
    async fn cancel_transition(
        &self,
        req: Request<pb::CancelTransitionRequest>,
    ) -> Result<Response<pb::CancelTransitionResponse>, Status> {
        let r = req.get_ref();
        let status = RequestStatus::Cancelled;
        let (request, version) = self.decide(&req, &r.request_id, &r.comment, status).await?;
        Ok(Response::new(pb::CancelTransitionResponse {
            request,
            version,
        }))
    }

    #[instrument(skip_all)]
    async fn list_transition_requests(
        &self,
        req: Request<pb::ListTransitionRequestsRequest>,
    ) -> Result<Response<pb::ListTransitionRequestsResponse>, Status> {
        Ok(Response::new(
            lists::requests(&self.store, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let caller = caller(&req)?;
        let order = parse::rollback(req.into_inner(), caller)?;
        let outcome = app::rollback(&self.store, order).await?;
        let (version, request) = outcome_to_pb(outcome);
        Ok(Response::new(pb::RollbackResponse { version, request }))
    }

    #[instrument(skip_all, fields(set = %req.get_ref().name, version = %req.get_ref().version))]
    async fn create_evaluation_set(
        &self,
        req: Request<pb::CreateEvaluationSetRequest>,
    ) -> Result<Response<pb::CreateEvaluationSetResponse>, Status> {
        let (actor, set) = identified(req, actor, EvaluationSet::try_from)?;
        let set = app::create_evaluation_set(&self.store, set, actor).await?;
        let evaluation_set = Some(evaluation_set_to_pb(set));
        Ok(Response::new(pb::CreateEvaluationSetResponse {
            evaluation_set,
        }))
    }

    #[instrument(skip_all, fields(set = %req.get_ref().name, version = %req.get_ref().version))]
    async fn get_evaluation_set(
        &self,
        req: Request<pb::GetEvaluationSetRequest>,
    ) -> Result<Response<pb::GetEvaluationSetResponse>, Status> {
        let set = parse::get_evaluation_set(req.into_inner())?;
        let set = app::get_evaluation_set(&self.store, &set).await?;
        let evaluation_set = Some(evaluation_set_to_pb(set));
        Ok(Response::new(pb::GetEvaluationSetResponse {
            evaluation_set,
        }))
    }

    #[instrument(skip_all)]
    async fn list_evaluation_sets(
        &self,
        req: Request<pb::ListEvaluationSetsRequest>,
    ) -> Result<Response<pb::ListEvaluationSetsResponse>, Status> {
        let sets = lists::evaluation_sets(&self.store, req.into_inner()).await?;
        Ok(Response::new(sets))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version))]
    async fn attach_evaluation(
        &self,
        req: Request<pb::AttachEvaluationRequest>,
    ) -> Result<Response<pb::AttachEvaluationResponse>, Status> {
        let (actor, new) = identified(req, actor, NewEvaluation::try_from)?;
        let evaluation = app::attach_evaluation(&self.store, new, actor).await?;
        let evaluation = Some(evaluation_to_pb(evaluation));
        Ok(Response::new(pb::AttachEvaluationResponse { evaluation }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn list_evaluations(
        &self,
        req: Request<pb::ListEvaluationsRequest>,
    ) -> Result<Response<pb::ListEvaluationsResponse>, Status> {
        let evaluations = lists::evaluations(&self.store, req.into_inner()).await?;
        Ok(Response::new(evaluations))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, candidate = req.get_ref().candidate_version))]
    async fn compare_versions(
        &self,
        req: Request<pb::CompareVersionsRequest>,
    ) -> Result<Response<pb::CompareVersionsResponse>, Status> {
        let request = CompareRequest::try_from(req.into_inner())?;
        let comparison = app::compare(&self.store, &request).await?;
        let comparison = Some(comparison_to_pb(comparison));
        Ok(Response::new(pb::CompareVersionsResponse { comparison }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, environment = %req.get_ref().environment))]
    async fn report_deployment(
        &self,
        req: Request<pb::ReportDeploymentRequest>,
    ) -> Result<Response<pb::ReportDeploymentResponse>, Status> {
        let (actor, new) = identified(req, actor, NewDeployment::try_from)?;
        let deployment = app::report_deployment(&self.store, new, actor).await?;
        let deployment = Some(deployment_to_pb(deployment));
        Ok(Response::new(pb::ReportDeploymentResponse { deployment }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, metric = %req.get_ref().metric))]
    async fn report_live_metric(
        &self,
        req: Request<pb::ReportLiveMetricRequest>,
    ) -> Result<Response<pb::ReportLiveMetricResponse>, Status> {
        let now = self.store.clock().now_micros();
        let reading = parse::live_observation(req.into_inner(), now)?;
        app::report_live_metric(&self.store, reading).await?;
        Ok(Response::new(pb::ReportLiveMetricResponse {}))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, worker = %req.get_ref().worker))]
    async fn report_worker_failure(
        &self,
        req: Request<pb::ReportWorkerFailureRequest>,
    ) -> Result<Response<pb::ReportWorkerFailureResponse>, Status> {
        let (actor, failure) = identified(req, actor, WorkerFailure::try_from)?;
        let event = app::report_worker_failure(&self.store, failure, actor).await?;
        let event = Some(event_to_pb(event));
        Ok(Response::new(pb::ReportWorkerFailureResponse { event }))
    }

    #[instrument(skip_all)]
    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        Ok(Response::new(
            lists::events(&self.store, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all)]
    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let report = events::verify_audit_log(&self.store, req.into_inner()).await?;
        Ok(Response::new(report))
    }

    type WatchTransitionsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::WatchTransitionsResponse, Status>> + Send>,
    >;

    #[instrument(skip_all)]
    async fn watch_transitions(
        &self,
        req: Request<pb::WatchTransitionsRequest>,
    ) -> Result<Response<Self::WatchTransitionsStream>, Status> {
        events::watch_transitions(self, req).await
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version))]
    async fn import_version(
        &self,
        req: Request<pb::ImportVersionRequest>,
    ) -> Result<Response<pb::ImportVersionResponse>, Status> {
        let (actor, import) = identified(req, actor, NewImport::try_from)?;
        let imported = app::import_version(&self.store, import, actor).await?;
        Ok(Response::new(pb::ImportVersionResponse {
            version: Some(version_to_pb(imported.version)),
            created: imported.created,
        }))
    }

    type ConsumeStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ConsumeResponse, Status>> + Send>,
    >;

    #[instrument(skip_all)]
    async fn consume(
        &self,
        req: Request<tonic::Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        consumers::consume(self, req).await
    }

    #[instrument(skip_all, fields(consumer = %req.get_ref().consumer, model = %req.get_ref().model, sequence = req.get_ref().sequence))]
    async fn ack_event(
        &self,
        req: Request<pb::AckEventRequest>,
    ) -> Result<Response<pb::AckEventResponse>, Status> {
        Ok(Response::new(consumers::ack(self, req).await?))
    }

    #[instrument(skip_all, fields(consumer = %req.get_ref().consumer, model = %req.get_ref().model, sequence = req.get_ref().sequence))]
    async fn reject_event(
        &self,
        req: Request<pb::RejectEventRequest>,
    ) -> Result<Response<pb::RejectEventResponse>, Status> {
        Ok(Response::new(consumers::reject(self, req).await?))
    }

    #[instrument(skip_all, fields(consumer = %req.get_ref().name))]
    async fn get_consumer(
        &self,
        req: Request<pb::GetConsumerRequest>,
    ) -> Result<Response<pb::GetConsumerResponse>, Status> {
        Ok(Response::new(consumers::get(self, req.into_inner()).await?))
    }

    #[instrument(skip_all)]
    async fn list_consumers(
        &self,
        req: Request<pb::ListConsumersRequest>,
    ) -> Result<Response<pb::ListConsumersResponse>, Status> {
        Ok(Response::new(
            consumers::list(self, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, fields(consumer = %req.get_ref().name))]
    async fn delete_consumer(
        &self,
        req: Request<pb::DeleteConsumerRequest>,
    ) -> Result<Response<pb::DeleteConsumerResponse>, Status> {
        Ok(Response::new(
            consumers::delete(self, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, fields(consumer = %req.get_ref().consumer))]
    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        Ok(Response::new(
            consumers::dead_letters(self, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, fields(consumer = %req.get_ref().consumer, sequence = req.get_ref().sequence))]
    async fn retry_dead_letter(
        &self,
        req: Request<pb::RetryDeadLetterRequest>,
    ) -> Result<Response<pb::RetryDeadLetterResponse>, Status> {
        Ok(Response::new(consumers::retry(self, req).await?))
    }
}
