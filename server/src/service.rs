//! The gRPC edge: `modelreg.v1.ModelRegistryService` handlers.
//!
//! Each handler parses its request into domain values (collecting every bad
//! field into one `INVALID_ARGUMENT`), calls the store, and converts the result
//! back. No rule and no SQL lives here; see [`crate::convert`] for the
//! wire ↔ domain mappings.

use std::collections::BTreeMap;
use std::time::Duration;

use modelreg_api::v1 as pb;
use modelreg_api::v1::model_registry_service_server::ModelRegistryService;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app::{self, Caller, Decision, RollbackOrder, TransitionOutcome};
use crate::auth::{Credential, Identity, Role};
use crate::convert::{
    self, comparison_to_pb, deployment_to_pb, evaluation_set_to_pb, evaluation_to_pb, event_to_pb,
    model_to_pb, request_to_pb, version_to_pb,
};
use crate::domain::RequestStatus;
use crate::domain::evaluation;
use crate::domain::{
    self, Actor, AliasName, CompareRequest, Evaluation, EvaluationSet, EventFilter,
    LiveObservation, ModelUpdate, Name, NewDeployment, NewEvaluation, NewModel, NewVersion, SetRef,
    Source, Stage, StageChange, Violations, WorkerFailure,
};
use crate::error::Error;
use crate::policy::Clock;
use crate::store::{ModelFilter, RequestCursor, Store, VersionRef};
use crate::watch::{self as watcher, Subscription, Tail, WatchItem};

/// The metadata key naming the caller in local mode (no token file).
pub const ACTOR_HEADER: &str = "x-modelreg-actor";

/// The registry service; cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct RegistryService {
    /// Where everything is kept.
    store: Store,
    /// Flips to true when the server begins shutting down, ending streams.
    shutdown: watch::Receiver<bool>,
    /// How often idle watch streams get a heartbeat.
    heartbeat: Duration,
    /// Recent events shared by every watch stream.
    tail: std::sync::Arc<Tail>,
    /// "Now" for live metrics (their default time and the limit on future
    /// ones), the same clock the policy engine judges them by.
    clock: Clock,
}

impl RegistryService {
    /// A service over `store`.
    pub fn new(
        store: Store,
        shutdown: watch::Receiver<bool>,
        heartbeat: Duration,
        clock: Clock,
    ) -> Self {
        let tail = Tail::spawn(store.clone(), shutdown.clone());
        RegistryService {
            store,
            shutdown,
            heartbeat,
            tail,
            clock,
        }
    }

    /// The cursors of this service's WatchTransitions subscribers, for `/metrics`.
    pub fn watchers(&self) -> std::sync::Arc<crate::watch::Watchers> {
        self.tail.watchers()
    }

    /// The sequence of the newest committed event this server knows of; a
    /// page rendered now shows everything up to it.
    pub fn latest_sequence(&self) -> u64 {
        self.store.latest_sequence()
    }
}

/// The most anchors one VerifyAuditLog call checks.
const MAX_AUDIT_ANCHORS: usize = 100;

/// How far in the future a live metric's observe_time may lie (clock skew).
const MAX_OBSERVATION_LEAD_MICROS: i64 = 5 * 60 * 1_000_000;

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
            let s = v.to_str().unwrap_or("");
            if s.is_empty() || s.len() > 256 || s.chars().any(|c| c.is_control()) {
                Err(Error::invalid(ACTOR_HEADER, "must be 1 to 256 printable characters").into())
            } else {
                Ok(Identity::local(s))
            }
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

/// Refuses a policy change by anyone but an admin.
fn require_admin_for_policy(id: &Identity) -> Result<(), Status> {
    if id.has(Role::Admin) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "{} lacks the role \"admin\" needed to set a model policy",
            id.name
        ))
        .into())
    }
}

/// Parses the request id and comment of an approve/reject/cancel call.
fn decision<T>(
    req: &Request<T>,
    request_id: &str,
    comment: &str,
    comment_required: bool,
) -> Result<Decision, Status> {
    let caller = caller(req)?;
    let mut v = Violations::default();
    let id = v.take(domain::parse_transition_request_id(
        "request_id",
        request_id,
    ));
    let comment = v.take(domain::parse_text("comment", comment));
    if comment_required && comment.as_deref().is_some_and(|c| c.trim().is_empty()) {
        v.add("comment", "is required: say why the request is rejected");
    }
    v.finish()?;
    let (model, number) = id.expect("checked");
    Ok(Decision {
        model,
        number,
        comment: comment.expect("checked"),
        caller,
    })
}

fn parse_stage_field(field: &str, raw: i32) -> Result<Stage, Error> {
    convert::stage_from_pb(raw).ok_or_else(|| {
        Error::invalid(
            field,
            format!(
                "{} is not a valid stage: use STAGE_NONE, STAGE_STAGING, STAGE_PRODUCTION or STAGE_ARCHIVED",
                pb::Stage::try_from(raw)
                    .map(|s| s.as_str_name().to_owned())
                    .unwrap_or_else(|_| raw.to_string())
            ),
        )
    })
}

/// Opaque AIP-158 page tokens: the last key of the page, bound to the request's
/// filter so a token cannot be replayed against a different query.
mod page_token {
    use crate::error::Error;

    pub fn encode(kind: &str, key: &str, query: &str) -> String {
        let bind = &crate::domain::audit::sha256_hex(query.as_bytes())[..16];
        let raw = format!("{kind}\u{1f}{key}\u{1f}{bind}");
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(token: &str, kind: &str, query: &str) -> Result<Option<String>, Error> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            Error::invalid(
                "page_token",
                "is not a page token of this query: pass next_page_token from the previous page unchanged, with the same filters",
            )
        };
        if !token.len().is_multiple_of(2) || token.len() > 1024 {
            return Err(bad());
        }
        let bytes: Option<Vec<u8>> = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect();
        let text = String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())?;
        let mut parts = text.split('\u{1f}');
        let (Some(k), Some(key), Some(bind), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if k != kind || bind != &crate::domain::audit::sha256_hex(query.as_bytes())[..16] {
            return Err(bad());
        }
        Ok(Some(key.to_owned()))
    }
}

/// The most terms a ListModels filter may have: each term is one more
/// condition in the query, and the database refuses a deep enough tree.
pub const MAX_FILTER_TERMS: usize = 32;

/// The longest ListModels filter, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;

/// The most models one WatchTransitions filter may name.
pub const MAX_WATCHED_MODELS: usize = 1000;

/// Parses the ListModels filter grammar (terms joined by ` AND `).
fn parse_model_filter(raw: &str) -> Result<ModelFilter, Error> {
    let mut filter = ModelFilter::default();
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(filter);
    }
    if raw.len() > MAX_FILTER_BYTES {
        return Err(Error::invalid(
            "filter",
            format!(
                "is {} bytes; at most {MAX_FILTER_BYTES} are allowed",
                raw.len()
            ),
        ));
    }
    let terms = raw.split(" AND ").count();
    if terms > MAX_FILTER_TERMS {
        return Err(Error::invalid(
            "filter",
            format!("has {terms} terms; at most {MAX_FILTER_TERMS} are allowed"),
        ));
    }
    let bad = |term: &str| {
        Error::invalid(
            "filter",
            format!(
                "cannot parse {:?}: use terms like tags.KEY=VALUE, tags.KEY:*, name=NAME or name:PREFIX*, joined by AND",
                domain::truncate(term, 80)
            ),
        )
    };
    for term in raw.split(" AND ") {
        let term = term.trim();
        let unquote = |v: &str| v.trim().trim_matches('"').to_owned();
        if let Some(rest) = term.strip_prefix("tags.") {
            if let Some(key) = rest.strip_suffix(":*") {
                if key.is_empty() {
                    return Err(bad(term));
                }
                filter.tag_present.push(key.to_owned());
            } else if let Some((key, value)) = rest.split_once('=') {
                if key.is_empty() {
                    return Err(bad(term));
                }
                filter.tag_equals.push((key.to_owned(), unquote(value)));
            } else {
                return Err(bad(term));
            }
        } else if let Some(name) = term.strip_prefix("name=") {
            filter.name_equals = Some(unquote(name));
        } else if let Some(prefix) = term.strip_prefix("name:") {
            let prefix = unquote(prefix);
            let Some(prefix) = prefix.strip_suffix('*') else {
                return Err(bad(term));
            };
            filter.name_prefix = Some(prefix.to_owned());
        } else {
            return Err(bad(term));
        }
    }
    Ok(filter)
}

/// Parses an optional `EvaluationSetRef` field; `Ok(None)` when unset.
fn parse_set_ref(field: &str, raw: Option<&pb::EvaluationSetRef>) -> Result<Option<SetRef>, Error> {
    match raw {
        None => Ok(None),
        Some(r) if r.name.is_empty() && r.version.is_empty() => Ok(None),
        Some(r) => SetRef::parse(field, &r.name, &r.version).map(Some),
    }
}

/// Parses a required `EvaluationSetRef` field.
fn required_set_ref(field: &str, raw: Option<&pb::EvaluationSetRef>) -> Result<SetRef, Error> {
    parse_set_ref(field, raw)?.ok_or_else(|| {
        Error::invalid(
            field,
            "is required: name the evaluation set and its version",
        )
    })
}

/// Parses the key of a ListTransitionRequests page: `create_time\u{1e}model\u{1e}number`.
fn request_cursor(key: &str) -> Result<RequestCursor, Error> {
    let bad = || Error::invalid("page_token", "is not a page token of this query");
    let mut parts = key.split('\u{1e}');
    let (Some(t), Some(m), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok(RequestCursor {
        create_time: t.parse().map_err(|_| bad())?,
        model: m.to_owned(),
        number: n.parse().map_err(|_| bad())?,
    })
}

/// Splits a two-part page key `a\u{1e}b`.
fn split_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('\u{1e}')
}

fn to_btree<V: Clone>(map: &std::collections::HashMap<String, V>) -> BTreeMap<String, V> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[tonic::async_trait]
impl ModelRegistryService for RegistryService {
    #[instrument(skip_all, fields(model = %req.get_ref().name))]
    async fn create_model(
        &self,
        req: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::CreateModelResponse>, Status> {
        let id = identity(&req)?;
        let actor = Actor(id.name.clone());
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
        if policy.is_some() {
            require_admin_for_policy(&id)?;
        }
        let model = app::create_model(
            &self.store,
            NewModel {
                name: name.expect("checked"),
                description: description.expect("checked"),
                tags: tags.expect("checked"),
                policy,
                request_id: request_id.expect("checked"),
            },
            actor,
        )
        .await?;
        Ok(Response::new(pb::CreateModelResponse {
            model: Some(model_to_pb(model)),
        }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().name))]
    async fn get_model(
        &self,
        req: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let name = Name::parse("name", &req.get_ref().name)?;
        let model = app::get_model(&self.store, name.as_str()).await?;
        Ok(Response::new(pb::GetModelResponse {
            model: Some(model_to_pb(model)),
        }))
    }

    #[instrument(skip_all)]
    async fn list_models(
        &self,
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
            &self.store,
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
    async fn update_model(
        &self,
        req: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::UpdateModelResponse>, Status> {
        let id = identity(&req)?;
        let actor = Actor(id.name.clone());
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
        if policy.is_some() {
            require_admin_for_policy(&id)?;
        }
        let update = ModelUpdate {
            name: name.expect("checked"),
            description,
            tags,
            policy,
            etag: etag.expect("checked"),
        };
        let model = app::update_model(&self.store, update, actor).await?;
        Ok(Response::new(pb::UpdateModelResponse {
            model: Some(model_to_pb(model)),
        }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn register_version(
        &self,
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
            &self.store,
            model.expect("checked").as_str(),
            &which.expect("checked"),
        )
        .await?;
        Ok(Response::new(pb::GetVersionResponse {
            version: Some(version_to_pb(version)),
        }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn list_versions(
        &self,
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
            &self.store,
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

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn set_alias(
        &self,
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
            &self.store,
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
    async fn delete_alias(
        &self,
        req: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let actor = actor(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let model = v.take(Name::parse("model", &r.model));
        let alias = v.take(AliasName::parse("alias", &r.alias));
        v.finish()?;
        let model = app::delete_alias(
            &self.store,
            model.expect("checked"),
            alias.expect("checked"),
            actor,
        )
        .await?;
        Ok(Response::new(pb::DeleteAliasResponse {
            model: Some(model_to_pb(model)),
        }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version))]
    async fn transition_stage(
        &self,
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
            &self.store,
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
    async fn approve_transition(
        &self,
        req: Request<pb::ApproveTransitionRequest>,
    ) -> Result<Response<pb::ApproveTransitionResponse>, Status> {
        let decision = decision(
            &req,
            &req.get_ref().request_id,
            &req.get_ref().comment,
            false,
        )?;
        let (request, version) = app::approve(&self.store, decision).await?;
        Ok(Response::new(pb::ApproveTransitionResponse {
            request: Some(request_to_pb(request)),
            version: Some(version_to_pb(version)),
        }))
    }

    #[instrument(skip_all, fields(request = %req.get_ref().request_id))]
    async fn reject_transition(
        &self,
        req: Request<pb::RejectTransitionRequest>,
    ) -> Result<Response<pb::RejectTransitionResponse>, Status> {
        let decision = decision(
            &req,
            &req.get_ref().request_id,
            &req.get_ref().comment,
            true,
        )?;
        let (request, version) =
            app::close_request(&self.store, decision, RequestStatus::Rejected).await?;
        Ok(Response::new(pb::RejectTransitionResponse {
            request: Some(request_to_pb(request)),
            version: Some(version_to_pb(version)),
        }))
    }

    #[instrument(skip_all, fields(request = %req.get_ref().request_id))]
    async fn cancel_transition(
        &self,
        req: Request<pb::CancelTransitionRequest>,
    ) -> Result<Response<pb::CancelTransitionResponse>, Status> {
        let decision = decision(
            &req,
            &req.get_ref().request_id,
            &req.get_ref().comment,
            false,
        )?;
        let (request, version) =
            app::close_request(&self.store, decision, RequestStatus::Cancelled).await?;
        Ok(Response::new(pb::CancelTransitionResponse {
            request: Some(request_to_pb(request)),
            version: Some(version_to_pb(version)),
        }))
    }

    #[instrument(skip_all)]
    async fn list_transition_requests(
        &self,
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
            &self.store,
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
    async fn rollback(
        &self,
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
            &self.store,
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

    #[instrument(skip_all, fields(set = %req.get_ref().name, version = %req.get_ref().version))]
    async fn create_evaluation_set(
        &self,
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
        let set = app::create_evaluation_set(&self.store, set, actor).await?;
        Ok(Response::new(pb::CreateEvaluationSetResponse {
            evaluation_set: Some(evaluation_set_to_pb(set)),
        }))
    }

    #[instrument(skip_all, fields(set = %req.get_ref().name, version = %req.get_ref().version))]
    async fn get_evaluation_set(
        &self,
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
        let set = app::get_evaluation_set(&self.store, &id).await?;
        Ok(Response::new(pb::GetEvaluationSetResponse {
            evaluation_set: Some(evaluation_set_to_pb(set)),
        }))
    }

    #[instrument(skip_all)]
    async fn list_evaluation_sets(
        &self,
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
                let (n, ver) = split_key(&key).ok_or_else(|| {
                    Error::invalid("page_token", "is not a page token of this query")
                })?;
                Some(SetRef {
                    name: n.to_owned(),
                    version: ver.to_owned(),
                })
            }
        };
        let name = name.expect("checked").map(|n| n.to_string());
        let (sets, more) = app::list_evaluation_sets(
            &self.store,
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
    async fn attach_evaluation(
        &self,
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
        let evaluation = app::attach_evaluation(&self.store, new, actor).await?;
        Ok(Response::new(pb::AttachEvaluationResponse {
            evaluation: Some(evaluation_to_pb(evaluation)),
        }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model))]
    async fn list_evaluations(
        &self,
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
            &self.store,
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
    async fn compare_versions(
        &self,
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
        let comparison = app::compare(&self.store, &request).await?;
        Ok(Response::new(pb::CompareVersionsResponse {
            comparison: Some(comparison_to_pb(comparison)),
        }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, environment = %req.get_ref().environment))]
    async fn report_deployment(
        &self,
        req: Request<pb::ReportDeploymentRequest>,
    ) -> Result<Response<pb::ReportDeploymentResponse>, Status> {
        let actor = actor(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let model = v.take(Name::parse("model", &r.model));
        let version = v.take(domain::parse_version_number("version", r.version));
        let environment = v.take(Name::parse("environment", &r.environment));
        let status = v.take(convert::deployment_status_from_pb("status", r.status));
        let endpoint = v.take(domain::parse_text("endpoint", &r.endpoint));
        let message = v.take(domain::parse_text("message", &r.message));
        let request_id = v.take(domain::parse_request_id("request_id", &r.request_id));
        v.finish()?;
        let new = NewDeployment {
            model: model.expect("checked"),
            version: version.expect("checked"),
            environment: environment.expect("checked"),
            status: status.expect("checked"),
            endpoint: endpoint.expect("checked"),
            message: message.expect("checked"),
            request_id: request_id.expect("checked"),
        };
        let deployment = app::report_deployment(&self.store, new, actor).await?;
        Ok(Response::new(pb::ReportDeploymentResponse {
            deployment: Some(deployment_to_pb(deployment)),
        }))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, metric = %req.get_ref().metric))]
    async fn report_live_metric(
        &self,
        req: Request<pb::ReportLiveMetricRequest>,
    ) -> Result<Response<pb::ReportLiveMetricResponse>, Status> {
        let r = req.into_inner();
        let now = self.clock.now_micros();
        let mut v = Violations::default();
        let model = v.take(Name::parse("model", &r.model));
        let version = v.take(domain::parse_version_number("version", r.version));
        let metric = v.take(domain::parse_short_text("metric", &r.metric));
        if !r.value.is_finite() {
            v.add("value", format!("must be a finite number; got {}", r.value));
        }
        let observe_time = match &r.observe_time {
            None => Some(now),
            Some(t) => v
                .take(convert::micros_from_pb("observe_time", t))
                .and_then(|t| {
                    if t > now + MAX_OBSERVATION_LEAD_MICROS {
                        v.add(
                            "observe_time",
                            format!(
                                "{} is more than 5 minutes in the future (the server's time is {})",
                                domain::rfc3339(t),
                                domain::rfc3339(now)
                            ),
                        );
                        None
                    } else {
                        Some(t)
                    }
                }),
        };
        v.finish()?;
        app::report_live_metric(
            &self.store,
            LiveObservation {
                model: model.expect("checked"),
                version: version.expect("checked"),
                metric: metric.expect("checked"),
                value: r.value,
                observe_time: observe_time.expect("checked"),
            },
        )
        .await?;
        Ok(Response::new(pb::ReportLiveMetricResponse {}))
    }

    #[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, worker = %req.get_ref().worker))]
    async fn report_worker_failure(
        &self,
        req: Request<pb::ReportWorkerFailureRequest>,
    ) -> Result<Response<pb::ReportWorkerFailureResponse>, Status> {
        let actor = actor(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let model = v.take(Name::parse("model", &r.model));
        let version = v.take(domain::parse_version_number("version", r.version));
        let worker = v.take(domain::parse_short_text("worker", &r.worker));
        if r.event_sequence == 0 {
            v.add(
                "event_sequence",
                "is required: the sequence of the event the worker was handling",
            );
        }
        let error = v.take(domain::parse_text("error", &r.error));
        if r.error.trim().is_empty() {
            v.add("error", "is required: say what went wrong");
        }
        if r.attempts < 1 {
            v.add(
                "attempts",
                format!("must be at least 1; got {}", r.attempts),
            );
        }
        let request_id = v.take(domain::parse_request_id("request_id", &r.request_id));
        v.finish()?;
        let failure = WorkerFailure {
            model: model.expect("checked"),
            version: version.expect("checked"),
            worker: worker.expect("checked"),
            event_sequence: r.event_sequence,
            error: error.expect("checked"),
            attempts: r.attempts as u32,
            request_id: request_id.expect("checked"),
        };
        let event = app::report_worker_failure(&self.store, failure, actor).await?;
        Ok(Response::new(pb::ReportWorkerFailureResponse {
            event: Some(event_to_pb(event)),
        }))
    }

    #[instrument(skip_all)]
    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::default();
        let size = v.take(domain::parse_page_size("page_size", r.page_size));
        let mut filter = EventFilter::default();
        if !r.model.is_empty()
            && let Some(m) = v.take(Name::parse("model", &r.model))
        {
            filter.models = vec![m.to_string()];
        }
        if r.version < 0 {
            v.add("version", "must not be negative");
        } else if r.version > 0 && r.model.is_empty() {
            v.add("version", "filtering by version needs a model");
        }
        filter.version = r.version.max(0);
        if !r.actor.is_empty() {
            filter.actor = Some(r.actor.clone());
        }
        filter.kinds = convert::event_kinds_from_pb("types", &r.types, &mut v);
        filter.start_time = r
            .start_time
            .as_ref()
            .and_then(|t| v.take(convert::micros_from_pb("start_time", t)));
        filter.end_time = r
            .end_time
            .as_ref()
            .and_then(|t| v.take(convert::micros_from_pb("end_time", t)));
        let query = format!(
            "{}|{}|{}|{:?}|{}|{:?}|{:?}",
            r.model, r.version, r.actor, r.types, r.after_sequence, r.start_time, r.end_time
        );
        let after = v
            .take(page_token::decode(&r.page_token, "events", &query))
            .map(|k| k.and_then(|k| k.parse::<u64>().ok()));
        v.finish()?;
        let after = after.expect("checked").unwrap_or(0).max(r.after_sequence);
        let size = size.expect("checked");
        let mut events = self.store.events(&filter, after, None, size + 1).await?;
        let more = events.len() > size;
        events.truncate(size);
        let next_page_token = match (more, events.last()) {
            (true, Some(last)) => page_token::encode("events", &last.sequence.to_string(), &query),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEventsResponse {
            events: events.into_iter().map(event_to_pb).collect(),
            next_page_token,
        }))
    }

    #[instrument(skip_all)]
    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::default();
        if r.anchors.len() > MAX_AUDIT_ANCHORS {
            v.add(
                "anchors",
                format!(
                    "at most {MAX_AUDIT_ANCHORS} anchors, got {}",
                    r.anchors.len()
                ),
            );
        }
        for (i, a) in r.anchors.iter().enumerate() {
            if a.sequence == 0 {
                v.add(format!("anchors[{i}].sequence"), "must be 1 or more");
            }
            if !crate::domain::is_sha256_hex(&a.hash) {
                v.add(
                    format!("anchors[{i}].hash"),
                    "must be 64 lowercase hex digits",
                );
            }
        }
        v.finish()?;
        let anchors: Vec<(u64, String)> = r
            .anchors
            .into_iter()
            .map(|a| (a.sequence, a.hash))
            .collect();
        let report = app::verify_chain(&self.store, &anchors).await?;
        Ok(Response::new(pb::VerifyAuditLogResponse {
            ok: report.ok,
            events_checked: report.checked,
            first_bad_sequence: report.first_bad,
            head: report
                .head
                .map(|(sequence, hash)| pb::AuditAnchor { sequence, hash }),
            problem: report.problem,
        }))
    }

    type WatchTransitionsStream = ReceiverStream<Result<pb::WatchTransitionsResponse, Status>>;

    #[instrument(skip_all)]
    async fn watch_transitions(
        &self,
        req: Request<pb::WatchTransitionsRequest>,
    ) -> Result<Response<Self::WatchTransitionsStream>, Status> {
        // The caller's token, so the stream ends when a reload revokes it.
        let credential = req.extensions().get::<Credential>().cloned();
        let r = req.into_inner();
        let mut v = Violations::default();
        let mut filter = EventFilter::default();
        for (i, m) in r.models.iter().enumerate() {
            if let Some(name) = v.take(Name::parse(&format!("models[{i}]"), m)) {
                filter.models.push(name.to_string());
            }
        }
        filter.kinds = convert::event_kinds_from_pb("types", &r.types, &mut v);
        if r.models.len() > MAX_WATCHED_MODELS {
            v.add(
                "models",
                format!(
                    "names {} models; at most {MAX_WATCHED_MODELS} are allowed (leave it empty for every model)",
                    r.models.len()
                ),
            );
        }
        for (i, s) in r.to_stages.iter().enumerate() {
            if let Some(stage) = v.take(parse_stage_field(&format!("to_stages[{i}]"), *s))
                && !filter.to_stages.contains(&stage)
            {
                filter.to_stages.push(stage);
            }
        }
        let latest = self.store.latest_sequence();
        let after = match r.after_sequence {
            None => latest,
            Some(n) if n > latest => {
                v.add(
                    "after_sequence",
                    format!("{n} is beyond the end of the log (the latest sequence is {latest})"),
                );
                latest
            }
            Some(n) => n,
        };
        v.finish()?;
        let stream = watcher::spawn(
            self.store.clone(),
            self.tail.clone(),
            Subscription {
                filter,
                after,
                heartbeat: self.heartbeat,
                credential,
            },
            self.shutdown.clone(),
            |item| pb::WatchTransitionsResponse {
                kind: Some(match item {
                    WatchItem::Event(e) => pb::watch_transitions_response::Kind::Event(
                        event_to_pb(std::sync::Arc::unwrap_or_clone(e)),
                    ),
                    WatchItem::Heartbeat(sequence) => {
                        pb::watch_transitions_response::Kind::Heartbeat(pb::Heartbeat {
                            sequence,
                            time: Some(convert::micros_to_pb(domain::now_micros())),
                        })
                    }
                }),
            },
        );
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_every_documented_term() {
        let f = parse_model_filter("tags.team=fraud AND tags.tier:* AND name:fr*").unwrap();
        assert_eq!(f.tag_equals, vec![("team".into(), "fraud".into())]);
        assert_eq!(f.tag_present, vec!["tier".to_string()]);
        assert_eq!(f.name_prefix.as_deref(), Some("fr"));
        assert!(parse_model_filter("owner = me").is_err());
        assert!(parse_model_filter("name:fr").is_err());
    }

    #[test]
    fn page_tokens_are_bound_to_their_query() {
        let t = page_token::encode("models", "abc", "tags.a=b");
        assert_eq!(
            page_token::decode(&t, "models", "tags.a=b").unwrap(),
            Some("abc".into())
        );
        assert!(page_token::decode(&t, "models", "").is_err());
        assert!(page_token::decode("zz", "models", "").is_err());
    }
}
