//! The gRPC edge: `modelreg.v1.ModelRegistryService`, one handler per RPC,
//! each in the file of its resource ([`models`], [`versions`],
//! [`transitions`], [`evaluations`], [`reports`], [`events`]). A handler
//! identifies the caller, parses its request into domain values (every bad
//! field in one `INVALID_ARGUMENT`), calls one [`crate::app`] use case and
//! converts the answer back ([`convert`]). No rule and no SQL lives here;
//! the trait implementation below only routes each RPC to its handler.

pub mod convert;
mod evaluations;
mod events;
mod models;
mod parse;
mod policy;
mod reports;
mod transitions;
mod versions;

use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use modelreg_api::v1 as pb;
use modelreg_api::v1::model_registry_service_server::ModelRegistryService;
use tonic::{Request, Response, Status};

use crate::app::{Caller, Decision};
use crate::auth::{Identity, Role};
use crate::domain::{self, Actor, SetRef, Stage};
use crate::error::Error;
use crate::store::{ModelFilter, RequestCursor, Store};
use crate::watch::Tail;

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
        }
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

/// Parses the request id and comment of an approve/reject/cancel call.
fn decision<T>(
    req: &Request<T>,
    request_id: &str,
    comment: &str,
    comment_required: bool,
) -> Result<Decision, Status> {
    let caller = caller(req)?;
    Ok(Decision::parse(
        request_id,
        comment,
        comment_required,
        caller,
    )?)
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
    use crate::domain;
    use crate::error::Error;

    pub fn encode(kind: &str, key: &str, query: &str) -> String {
        let bind = &crate::domain::audit::sha256_hex(query.as_bytes())[..16];
        let raw = format!("{kind}\u{1f}{key}\u{1f}{bind}");
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// One page for the response: the items in their protobuf form, and the
    /// token of the next page ("" when `more` is false).
    pub fn page<T: Keyed, P>(
        items: Vec<T>,
        more: bool,
        kind: &str,
        query: &str,
        to_pb: fn(T) -> P,
    ) -> (Vec<P>, String) {
        let token = match (more, items.last()) {
            (true, Some(last)) => encode(kind, &last.page_key(), query),
            _ => String::new(),
        };
        (items.into_iter().map(to_pb).collect(), token)
    }

    /// What a page token records of a page's last item: where the next
    /// page starts.
    pub trait Keyed {
        /// The key, as `decode` gives it back.
        fn page_key(&self) -> String;
    }

    impl Keyed for domain::Model {
        fn page_key(&self) -> String {
            self.name.clone()
        }
    }

    impl Keyed for domain::Version {
        fn page_key(&self) -> String {
            self.version.to_string()
        }
    }

    impl Keyed for domain::TransitionRequest {
        fn page_key(&self) -> String {
            format!(
                "{}\u{1e}{}\u{1e}{}",
                self.create_time, self.model, self.number
            )
        }
    }

    impl Keyed for domain::EvaluationSet {
        fn page_key(&self) -> String {
            format!("{}\u{1e}{}", self.id.name, self.id.version)
        }
    }

    impl Keyed for domain::Evaluation {
        fn page_key(&self) -> String {
            format!("{}\u{1e}{}", self.version, self.evaluator_version)
        }
    }

    impl Keyed for domain::Event {
        fn page_key(&self) -> String {
            self.sequence.to_string()
        }
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
    async fn create_model(
        &self,
        req: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::CreateModelResponse>, Status> {
        models::create_model(self, req).await
    }

    async fn get_model(
        &self,
        req: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        models::get_model(self, req).await
    }

    async fn list_models(
        &self,
        req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        models::list_models(self, req).await
    }

    async fn update_model(
        &self,
        req: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::UpdateModelResponse>, Status> {
        models::update_model(self, req).await
    }

    async fn register_version(
        &self,
        req: Request<pb::RegisterVersionRequest>,
    ) -> Result<Response<pb::RegisterVersionResponse>, Status> {
        versions::register_version(self, req).await
    }

    async fn get_version(
        &self,
        req: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        versions::get_version(self, req).await
    }

    async fn list_versions(
        &self,
        req: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        versions::list_versions(self, req).await
    }

    async fn set_alias(
        &self,
        req: Request<pb::SetAliasRequest>,
    ) -> Result<Response<pb::SetAliasResponse>, Status> {
        models::set_alias(self, req).await
    }

    async fn delete_alias(
        &self,
        req: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        models::delete_alias(self, req).await
    }

    async fn transition_stage(
        &self,
        req: Request<pb::TransitionStageRequest>,
    ) -> Result<Response<pb::TransitionStageResponse>, Status> {
        transitions::transition_stage(self, req).await
    }

    async fn approve_transition(
        &self,
        req: Request<pb::ApproveTransitionRequest>,
    ) -> Result<Response<pb::ApproveTransitionResponse>, Status> {
        transitions::approve_transition(self, req).await
    }

    async fn reject_transition(
        &self,
        req: Request<pb::RejectTransitionRequest>,
    ) -> Result<Response<pb::RejectTransitionResponse>, Status> {
        transitions::reject_transition(self, req).await
    }

    async fn cancel_transition(
        &self,
        req: Request<pb::CancelTransitionRequest>,
    ) -> Result<Response<pb::CancelTransitionResponse>, Status> {
        transitions::cancel_transition(self, req).await
    }

    async fn list_transition_requests(
        &self,
        req: Request<pb::ListTransitionRequestsRequest>,
    ) -> Result<Response<pb::ListTransitionRequestsResponse>, Status> {
        transitions::list_transition_requests(self, req).await
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        transitions::rollback(self, req).await
    }

    async fn create_evaluation_set(
        &self,
        req: Request<pb::CreateEvaluationSetRequest>,
    ) -> Result<Response<pb::CreateEvaluationSetResponse>, Status> {
        evaluations::create_evaluation_set(self, req).await
    }

    async fn get_evaluation_set(
        &self,
        req: Request<pb::GetEvaluationSetRequest>,
    ) -> Result<Response<pb::GetEvaluationSetResponse>, Status> {
        evaluations::get_evaluation_set(self, req).await
    }

    async fn list_evaluation_sets(
        &self,
        req: Request<pb::ListEvaluationSetsRequest>,
    ) -> Result<Response<pb::ListEvaluationSetsResponse>, Status> {
        evaluations::list_evaluation_sets(self, req).await
    }

    async fn attach_evaluation(
        &self,
        req: Request<pb::AttachEvaluationRequest>,
    ) -> Result<Response<pb::AttachEvaluationResponse>, Status> {
        evaluations::attach_evaluation(self, req).await
    }

    async fn list_evaluations(
        &self,
        req: Request<pb::ListEvaluationsRequest>,
    ) -> Result<Response<pb::ListEvaluationsResponse>, Status> {
        evaluations::list_evaluations(self, req).await
    }

    async fn compare_versions(
        &self,
        req: Request<pb::CompareVersionsRequest>,
    ) -> Result<Response<pb::CompareVersionsResponse>, Status> {
        evaluations::compare_versions(self, req).await
    }

    async fn report_deployment(
        &self,
        req: Request<pb::ReportDeploymentRequest>,
    ) -> Result<Response<pb::ReportDeploymentResponse>, Status> {
        reports::report_deployment(self, req).await
    }

    async fn report_live_metric(
        &self,
        req: Request<pb::ReportLiveMetricRequest>,
    ) -> Result<Response<pb::ReportLiveMetricResponse>, Status> {
        reports::report_live_metric(self, req).await
    }

    async fn report_worker_failure(
        &self,
        req: Request<pb::ReportWorkerFailureRequest>,
    ) -> Result<Response<pb::ReportWorkerFailureResponse>, Status> {
        reports::report_worker_failure(self, req).await
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        events::list_events(self, req).await
    }

    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        events::verify_audit_log(self, req).await
    }

    type WatchTransitionsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::WatchTransitionsResponse, Status>> + Send>,
    >;

    async fn watch_transitions(
        &self,
        req: Request<pb::WatchTransitionsRequest>,
    ) -> Result<Response<Self::WatchTransitionsStream>, Status> {
        events::watch_transitions(self, req).await
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
