//! The approval dashboard on the HTTP listener: server-rendered pages for
//! models, versions, pending approvals and the audit log, Approve / Reject
//! forms, and live refresh by server-sent events.
//!
//! - Every read and every decision goes through [`RegistryService`], the
//!   code behind the gRPC methods, with the visitor's [`Identity`] in the
//!   request extensions, after the same [`auth::required_role`] check the
//!   gRPC auth layer makes. Roles, four-eyes, gate re-checks and audit events
//!   are therefore the RPCs' own.
//! - Sign-in takes a bearer token from the server's token file and keeps it
//!   in a session ([`session`]); without a token file (local mode, loopback
//!   only) pages are open and the decision form asks who is acting.
//! - Every POST carries the session's CSRF token and, when the browser
//!   sends one, an `Origin` of this host; the cookie is SameSite=Strict.
//! - Pages work without JavaScript; `live.js` only re-fetches the page when
//!   `/events` (SSE over WatchTransitions) reports a relevant event.

mod chart;
mod pages;
mod session;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use modelreg_api::v1 as pb;
use modelreg_api::v1::model_registry_service_server::ModelRegistryService;
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::auth::{self, Credential, Identity, Role, TokenStore};
use crate::grpc::RegistryService;
use session::{Session, Sessions};

pub use pages::Page;

/// The body of every response of the HTTP listener.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Where local mode's self-declared name travels (as from gRPC callers).
use crate::domain::ACTOR_HEADER;

/// The largest form accepted (a decision's comment is the big field).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Rows per page of lists the dashboard pages through.
const PAGE: i32 = 500;

/// The dashboard: the service it calls, who may sign in, the sessions.
pub struct Dashboard {
    service: RegistryService,
    /// `None` is local mode.
    tokens: Option<TokenStore>,
    sessions: Sessions,
    /// Served over TLS: cookies get `Secure`.
    secure: bool,
    /// The last verification of the hash chain and when it ran: audit pages
    /// refreshed live on a busy log reuse it for [`CHAIN_CHECK_REUSE`]
    /// instead of reading the whole log on every event.
    chain: tokio::sync::Mutex<Option<(Instant, pb::VerifyAuditLogResponse)>>,
}

/// How long one verification of the whole hash chain serves audit pages.
const CHAIN_CHECK_REUSE: Duration = Duration::from_secs(10);

/// Who is looking, in one request.
pub struct Visit {
    /// The session (new or found).
    pub session: Session,
    /// The identity calls are made as; `None` when not signed in.
    pub who: Option<Identity>,
    /// True without a token file.
    pub local: bool,
}

/// A failed page: the HTTP status and what to tell the visitor.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        let status = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure::new(status, s.message())
    }
}

impl Dashboard {
    /// The dashboard over `service`; `secure` when the listener has TLS.
    pub fn new(service: RegistryService, tokens: Option<TokenStore>, secure: bool) -> Dashboard {
        Dashboard {
            service,
            tokens,
            sessions: Sessions::default(),
            chain: tokio::sync::Mutex::new(None),
            secure,
        }
    }

    /// Answers one request for any path but `/metrics`.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if let Some(asset) = path.strip_prefix("/assets/") {
            return asset_response(asset, req.method());
        }
        let visit = self.visit(req.headers());
        let mut resp = match self.route(req, &path, &visit).await {
            Ok(resp) => resp,
            Err(f) => html_response(
                f.status,
                pages::failure(&Page::new(&visit, "Error"), f.status, &f.message),
            ),
        };
        if visit.session.fresh
            && !resp.headers().contains_key(header::SET_COOKIE)
            && let Ok(v) = HeaderValue::from_str(&session::set_cookie(&visit.session, self.secure))
        {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp
    }

    /// The session and identity of a request.
    fn visit(&self, headers: &HeaderMap) -> Visit {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::from_cookie_header);
        let session = self.sessions.get_or_start(cookie);
        let who = match &self.tokens {
            Some(tokens) => session.token.as_deref().and_then(|t| tokens.identify(t)),
            None => Some(Identity::local(
                session.actor.clone().unwrap_or_else(|| "anonymous".into()),
            )),
        };
        Visit {
            session,
            who,
            local: self.tokens.is_none(),
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        path: &str,
        visit: &Visit,
    ) -> Result<Response<Body>, Failure> {
        let method = req.method().clone();
        let query = parse_pairs(req.uri().query().unwrap_or(""));
        if path == "/signin" {
            return match method {
                Method::GET | Method::HEAD => Ok(self.signin_form(visit, &query, None)),
                Method::POST => self.signin(req, visit).await,
                _ => Err(not_allowed("GET, POST")),
            };
        }
        if path == "/signout" {
            return match method {
                Method::POST => self.signout(req, visit).await,
                _ => Err(not_allowed("POST")),
            };
        }
        let Some(who) = visit.who.clone() else {
            if method == Method::GET || method == Method::HEAD {
                let next = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let target = format!("/signin?next={}", encode_component(next));
                return Ok(redirect(&target));
            }
            return Err(signed_out());
        };
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(percent_decode)
            .collect::<Option<_>>()
            .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "the path is not valid UTF-8"))?;
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let is_get = method == Method::GET || method == Method::HEAD;
        // Read before the page's data: the live stream resumes after it, so
        // an event committed while the page renders still refreshes it.
        let page = Page::new(visit, "").since(self.service.latest_sequence());
        match segments.as_slice() {
            [""] if is_get => self.models_page(&who, page).await,
            ["models", name] if is_get => self.model_page(&who, page, name, &query).await,
            ["requests"] if is_get => self.requests_page(&who, page).await,
            ["requests", id] if is_get => self.request_page(&who, page, id).await,
            ["requests", id, "decide"] if method == Method::POST => {
                self.decide(req, visit, who, id).await
            }
            ["audit"] if is_get => self.audit_page(&who, page, &query).await,
            ["events"] if is_get => self.events(&who, visit, req.headers(), &query).await,
            ["" | "requests" | "audit" | "events"] | ["models" | "requests", _] => {
                Err(not_allowed("GET"))
            }
            ["requests", _, "decide"] => Err(not_allowed("POST")),
            _ => Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no page at {path}"),
            )),
        }
    }

    /// Calls one service method as `who`, after the role check the gRPC
    /// auth layer makes for `method`.
    async fn call<T, R, F, Fut>(
        &self,
        who: &Identity,
        method: &str,
        msg: T,
        f: F,
    ) -> Result<R, Status>
    where
        F: FnOnce(RegistryService, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        self.call_holding(who, None, method, msg, f).await
    }

    /// [`Dashboard::call`] with the visitor's bearer token, for a call that
    /// outlives its first check (a stream ends when the token is revoked).
    async fn call_holding<T, R, F, Fut>(
        &self,
        who: &Identity,
        credential: Option<Credential>,
        method: &str,
        msg: T,
        f: F,
    ) -> Result<R, Status>
    where
        F: FnOnce(RegistryService, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let need = auth::required_role(method);
        if !who.has(need) {
            return Err(Status::permission_denied(format!(
                "{method} needs the {need} role; {} has {}",
                who.name,
                roles(who)
            )));
        }
        let mut req = tonic::Request::new(msg);
        if who.local {
            // Local mode: the service takes the self-declared name from the
            // header, as it does for gRPC callers.
            let name = tonic::metadata::MetadataValue::try_from(who.name.as_str())
                .map_err(|_| Status::invalid_argument("the actor name must be printable ASCII"))?;
            req.metadata_mut().insert(ACTOR_HEADER, name);
        }
        req.extensions_mut().insert(who.clone());
        if let Some(credential) = credential {
            req.extensions_mut().insert(credential);
        }
        f(self.service.clone(), req)
            .await
            .map(tonic::Response::into_inner)
    }

    // ---- reads -------------------------------------------------------

    async fn all_models(&self, who: &Identity) -> Result<Vec<pb::Model>, Status> {
        every_page(|page_token| async move {
            let req = pb::ListModelsRequest {
                page_size: PAGE,
                page_token,
                filter: String::new(),
            };
            let page = self
                .call(who, "ListModels", req, |s, r| async move {
                    s.list_models(r).await
                })
                .await?;
            Ok((page.models, page.next_page_token))
        })
        .await
    }

    async fn all_versions(
        &self,
        who: &Identity,
        model: &str,
    ) -> Result<Vec<pb::ModelVersion>, Status> {
        every_page(|page_token| async move {
            let req = pb::ListVersionsRequest {
                model: model.to_owned(),
                stage: pb::Stage::Unspecified as i32,
                page_size: PAGE,
                page_token,
            };
            let page = self
                .call(who, "ListVersions", req, |s, r| async move {
                    s.list_versions(r).await
                })
                .await?;
            Ok((page.versions, page.next_page_token))
        })
        .await
    }

    /// Transition requests of one model (or all), with one status (or any).
    async fn all_requests(
        &self,
        who: &Identity,
        model: &str,
        status: pb::TransitionRequestStatus,
    ) -> Result<Vec<pb::TransitionRequest>, Status> {
        every_page(|page_token| async move {
            let req = pb::ListTransitionRequestsRequest {
                model: model.to_owned(),
                status: status as i32,
                page_size: PAGE,
                page_token,
            };
            let page = self
                .call(who, "ListTransitionRequests", req, |s, r| async move {
                    s.list_transition_requests(r).await
                })
                .await?;
            Ok((page.requests, page.next_page_token))
        })
        .await
    }

    /// Events matching `filter` with sequence in (`after`, `before`).
    async fn events_between(
        &self,
        who: &Identity,
        filter: &pb::ListEventsRequest,
        after: u64,
        before: u64,
    ) -> Result<Vec<pb::RegistryEvent>, Status> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let req = pb::ListEventsRequest {
                after_sequence: after,
                page_size: PAGE,
                page_token: token,
                ..filter.clone()
            };
            let page = self
                .call(who, "ListEvents", req, |s, r| async move {
                    s.list_events(r).await
                })
                .await?;
            let done = page.next_page_token.is_empty()
                || page.events.last().is_some_and(|e| e.sequence >= before);
            out.extend(page.events.into_iter().filter(|e| e.sequence < before));
            if done {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// The newest `want` events matching `filter` before sequence `before`:
    /// looks back through ever wider windows, so a busy log is not read
    /// whole to show its last page.
    async fn newest_events(
        &self,
        who: &Identity,
        filter: &pb::ListEventsRequest,
        before: u64,
        want: usize,
    ) -> Result<Vec<pb::RegistryEvent>, Status> {
        let mut window = (want as u64).saturating_mul(2).max(64);
        loop {
            let after = before.saturating_sub(window);
            let mut events = self.events_between(who, filter, after, before).await?;
            if events.len() >= want || after == 0 {
                let skip = events.len().saturating_sub(want);
                events.drain(..skip);
                return Ok(events);
            }
            window = window.saturating_mul(4);
        }
    }

    /// VerifyAuditLog, reused for [`CHAIN_CHECK_REUSE`]; one verification
    /// runs at a time however many pages ask.
    async fn verified_chain(&self, who: &Identity) -> Result<pb::VerifyAuditLogResponse, Status> {
        let mut last = self.chain.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < CHAIN_CHECK_REUSE
            && who.has(auth::required_role("VerifyAuditLog"))
        {
            return Ok(report.clone());
        }
        let report = self
            .call(
                who,
                "VerifyAuditLog",
                pb::VerifyAuditLogRequest::default(),
                |s, r| async move { s.verify_audit_log(r).await },
            )
            .await?;
        *last = Some((Instant::now(), report.clone()));
        Ok(report)
    }

    // ---- pages -------------------------------------------------------

    async fn models_page(&self, who: &Identity, page: Page) -> Result<Response<Body>, Failure> {
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

    async fn model_page(
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

    async fn requests_page(&self, who: &Identity, page: Page) -> Result<Response<Body>, Failure> {
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
    async fn request_evidence(&self, who: &Identity, id: &str) -> Result<pages::Evidence, Failure> {
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

    async fn request_page(
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

    async fn audit_page(
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

    // ---- decisions ---------------------------------------------------

    async fn decide(
        &self,
        req: Request<Incoming>,
        visit: &Visit,
        who: Identity,
        id: &str,
    ) -> Result<Response<Body>, Failure> {
        let form = self.checked_form(req, visit).await?;
        let field = |k: &str| form.get(k).map(|v| v.trim()).unwrap_or("").to_owned();
        let who = if visit.local {
            let actor = field("actor");
            if !valid_actor(&actor) {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    "local mode: say who is deciding in the \"Acting as\" field \
                     (1 to 128 printable ASCII characters)",
                ));
            }
            self.sessions.remember_actor(&visit.session, &actor);
            Identity::local(actor)
        } else {
            who
        };
        let comment = field("comment");
        let page = Page::new(visit, "Decision").acting_as(&who);
        let result = match field("decision").as_str() {
            "approve" => {
                let msg = pb::ApproveTransitionRequest {
                    request_id: id.to_owned(),
                    comment,
                };
                self.call(&who, "ApproveTransition", msg, |s, r| async move {
                    s.approve_transition(r).await
                })
                .await
                .map(|r| {
                    (
                        pages::Decision::Approve,
                        r.request.unwrap_or_default(),
                        r.version.unwrap_or_default(),
                    )
                })
            }
            "reject" => {
                let msg = pb::RejectTransitionRequest {
                    request_id: id.to_owned(),
                    comment,
                };
                self.call(&who, "RejectTransition", msg, |s, r| async move {
                    s.reject_transition(r).await
                })
                .await
                .map(|r| {
                    (
                        pages::Decision::Reject,
                        r.request.unwrap_or_default(),
                        r.version.unwrap_or_default(),
                    )
                })
            }
            other => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("decision must be approve or reject, not {other:?}"),
                ));
            }
        };
        match &result {
            Ok((decision, request, _)) => tracing::info!(
                request = %request.id, actor = %who.name, ?decision, "dashboard: decision recorded"
            ),
            Err(status) => tracing::info!(
                request = %id, actor = %who.name, code = ?status.code(), "dashboard: decision refused"
            ),
        }
        match result {
            Ok((decision, request, version)) => Ok(html_response(
                StatusCode::OK,
                pages::decided(&page, decision, &request, &version),
            )),
            Err(status) => {
                let failure = Failure::from(status);
                Ok(html_response(
                    failure.status,
                    pages::refused(&page, id, &failure.message),
                ))
            }
        }
    }

    /// Reads a POSTed form and checks it came from this site's page: the
    /// session's CSRF token, and the `Origin` when the browser sent one.
    async fn checked_form(
        &self,
        req: Request<Incoming>,
        visit: &Visit,
    ) -> Result<HashMap<String, String>, Failure> {
        let path = req.uri().path().to_owned();
        let forged = |why: &str| {
            tracing::warn!(path = %path, why, "dashboard: refused a form (CSRF)");
            Failure::new(
                StatusCode::FORBIDDEN,
                format!("refused: {why} (CSRF protection). Reload the page and try again."),
            )
        };
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            let origin_host = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .map(|(_, h)| h);
            if host.is_none() || origin_host != host {
                return Err(forged("the form was posted from another site"));
            }
        }
        let kind = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !kind.starts_with("application/x-www-form-urlencoded") {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "post the page's form (application/x-www-form-urlencoded)",
            ));
        }
        let body = Limited::new(req.into_body(), MAX_FORM_BYTES)
            .collect()
            .await
            .map_err(|_| {
                Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the form is larger than {MAX_FORM_BYTES} bytes"),
                )
            })?
            .to_bytes();
        let text = std::str::from_utf8(&body)
            .map_err(|_| Failure::new(StatusCode::BAD_REQUEST, "the form is not UTF-8"))?;
        let form = parse_pairs(text);
        match form.get("csrf") {
            None => Err(forged("the form carries no CSRF token")),
            Some(t) if !session::same_secret(t, &visit.session.csrf) => {
                Err(forged("the form's CSRF token is not this session's"))
            }
            Some(_) => Ok(form),
        }
    }

    // ---- sign-in -----------------------------------------------------

    fn signin_form(
        &self,
        visit: &Visit,
        query: &HashMap<String, String>,
        error: Option<&str>,
    ) -> Response<Body> {
        let next = safe_next(query.get("next").map(String::as_str));
        let page = Page::new(visit, "Sign in");
        let status = if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        html_response(status, pages::signin(&page, &next, error))
    }

    async fn signin(
        &self,
        req: Request<Incoming>,
        visit: &Visit,
    ) -> Result<Response<Body>, Failure> {
        let form = self.checked_form(req, visit).await?;
        let next = safe_next(form.get("next").map(String::as_str));
        let (token, actor) = match &self.tokens {
            Some(tokens) => {
                let token = form.get("token").map(|t| t.trim()).unwrap_or("");
                if token.is_empty() || tokens.identify(token).is_none() {
                    let mut query = HashMap::new();
                    query.insert("next".to_owned(), next);
                    return Ok(self.signin_form(
                        visit,
                        &query,
                        Some("That token is not in the server's token file."),
                    ));
                }
                (Some(token.to_owned()), None)
            }
            None => {
                let actor = form.get("actor").map(|a| a.trim()).unwrap_or("");
                if !valid_actor(actor) {
                    let mut query = HashMap::new();
                    query.insert("next".to_owned(), next);
                    return Ok(self.signin_form(
                        visit,
                        &query,
                        Some("Give a name of 1 to 128 printable ASCII characters."),
                    ));
                }
                (None, Some(actor.to_owned()))
            }
        };
        let session = self.sessions.sign_in(&visit.session.id, token, actor);
        let mut resp = redirect(&next);
        if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&session, self.secure)) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        Ok(resp)
    }

    async fn signout(
        &self,
        req: Request<Incoming>,
        visit: &Visit,
    ) -> Result<Response<Body>, Failure> {
        self.checked_form(req, visit).await?;
        self.sessions.end(&visit.session.id);
        let mut resp = redirect("/signin");
        if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(self.secure)) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        Ok(resp)
    }

    // ---- live --------------------------------------------------------

    /// `/events`: server-sent events fed by WatchTransitions, so a page
    /// learns that something it shows changed. Resumes after `Last-Event-ID`
    /// (the browser sends it on reconnect) or `after`. Ends when the
    /// session's token leaves the token file, like a gRPC stream.
    async fn events(
        &self,
        who: &Identity,
        visit: &Visit,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, Failure> {
        let credential = match (&self.tokens, visit.session.token.as_deref()) {
            (Some(tokens), Some(token)) => match tokens.authenticate(token) {
                Some((_, credential)) => Some(credential),
                None => return Err(signed_out()),
            },
            _ => None,
        };
        let resume = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| query.get("after").cloned());
        let after = match resume {
            None => self.service.latest_sequence(),
            Some(s) => s.trim().parse::<u64>().map_err(|_| {
                Failure::new(StatusCode::BAD_REQUEST, "after must be a sequence number")
            })?,
        };
        let models = query
            .get("model")
            .filter(|m| !m.is_empty())
            .map(|m| vec![m.clone()])
            .unwrap_or_default();
        let req = pb::WatchTransitionsRequest {
            models,
            types: Vec::new(),
            to_stages: Vec::new(),
            after_sequence: Some(after),
        };
        let stream = self
            .call_holding(
                who,
                credential,
                "WatchTransitions",
                req,
                |s, r| async move { s.watch_transitions(r).await },
            )
            .await?;
        let opening = tokio_stream::once(Bytes::from_static(b"retry: 3000\n\n"));
        let items = stream
            .map_while(|item| item.ok())
            .filter_map(|item| match item.kind? {
                pb::watch_transitions_response::Kind::Event(e) => Some(Bytes::from(sse_event(&e))),
                pb::watch_transitions_response::Kind::Heartbeat(h) => {
                    Some(Bytes::from(format!(": heartbeat {}\n\n", h.sequence)))
                }
            });
        let body = StreamBody::new(
            opening
                .chain(items)
                .map(|b| Ok::<_, Infallible>(Frame::data(b))),
        );
        let mut resp = Response::new(BodyExt::boxed_unsync(body));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(resp)
    }
}

/// Every item of a paged list: `fetch` takes a page token and returns a
/// page and the next token (empty after the last page).
async fn every_page<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Status>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = fetch(token).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}

/// One SSE message: the event's sequence as its id, a small JSON summary.
fn sse_event(e: &pb::RegistryEvent) -> String {
    let data = serde_json::json!({
        "sequence": e.sequence,
        "type": pages::event_type_name(e.r#type),
        "model": e.model,
        "version": e.version,
    });
    format!("id: {}\nevent: registry\ndata: {data}\n\n", e.sequence)
}

/// A local-mode name: the one rule for actor names, in the ASCII a gRPC
/// metadata value can carry (the decision travels as the actor header).
fn valid_actor(name: &str) -> bool {
    crate::domain::Actor::parse("actor", name).is_ok() && name.is_ascii()
}

/// The visitor's roles, for pages and messages.
fn roles(who: &Identity) -> String {
    if who.roles.is_empty() {
        return "no role".into();
    }
    who.roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `who` may decide on requests at all.
pub fn may_decide(who: &Identity) -> bool {
    who.has(Role::Approver)
}

fn signed_out() -> Failure {
    Failure::new(
        StatusCode::UNAUTHORIZED,
        "sign in first: your session has ended or the token was revoked",
    )
}

fn not_allowed(allow: &'static str) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this page takes {allow}"),
    )
}

/// A sign-in target that stays on this site, or `/`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if is_site_path(n) => n.to_owned(),
        _ => "/".to_owned(),
    }
}

/// Whether `target` is a path-absolute reference: one `/` not followed by
/// another `/` or a `\`, then visible ASCII only (what a request's path and
/// query hold) without backslashes. Browsers drop tabs and newlines inside
/// a `Location`, trim leading controls and spaces, and read `\` as `/`, so
/// anything looser can become `//other.host` on the way.
fn is_site_path(target: &str) -> bool {
    let bytes = target.as_bytes();
    bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && bytes.iter().all(|&b| b.is_ascii_graphic() && b != b'\\')
}

/// `application/x-www-form-urlencoded` pairs; the first of a repeated key wins.
fn parse_pairs(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(text.as_bytes()) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

/// A query-string component.
pub fn encode_component(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `%XX` escapes of one path segment decoded; `None` if not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

fn redirect(to: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// An HTML page with the headers every page carries: no caching of
/// per-user pages, no framing, scripts and styles only from this server.
fn html_response(status: StatusCode, markup: maud::Markup) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(markup.into_string())).boxed_unsync());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// The stylesheet and the live-refresh script.
fn asset_response(name: &str, method: &Method) -> Response<Body> {
    let asset: Option<(&'static str, &'static str)> = match name {
        "style.css" => Some((include_str!("assets/style.css"), "text/css; charset=utf-8")),
        "live.js" => Some((
            include_str!("assets/live.js"),
            "text/javascript; charset=utf-8",
        )),
        _ => None,
    };
    let (body, kind) = asset.unwrap_or(("not found\n", "text/plain; charset=utf-8"));
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed_unsync());
    if asset.is_none() {
        *resp.status_mut() = StatusCode::NOT_FOUND;
    } else if method != Method::GET && method != Method::HEAD {
        *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    }
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_targets_stay_on_this_site() {
        assert_eq!(safe_next(Some("/requests/fraud:2")), "/requests/fraud:2");
        assert_eq!(
            safe_next(Some("/audit?actor=bob&x=%09")),
            "/audit?actor=bob&x=%09"
        );
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "/\t/evil.example",
            "/x\r\n",
            "/\0",
            "/\u{85}",
            "/ x",
            " /x",
            "/a\\b",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn path_segments_decode() {
        assert_eq!(percent_decode("fraud%3A2").as_deref(), Some("fraud:2"));
        assert_eq!(percent_decode("a%2").as_deref(), Some("a%2"));
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(
            encode_component("/requests/fraud:2?x=1"),
            "%2Frequests%2Ffraud%3A2%3Fx%3D1"
        );
    }
}
