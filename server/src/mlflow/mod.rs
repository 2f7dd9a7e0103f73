//! The MLflow Model Registry REST API (`/api/2.0/mlflow/…` and
//! `/ajax-api/2.0/mlflow/…`) on the HTTP listener: another edge, so an
//! MLflow client pointed at the registry (`MLFLOW_REGISTRY_URI`) goes through
//! the same `app::` use cases as a gRPC call, with the same roles, policies,
//! gates, approvals, events and audit trail.
//!
//! Shapes and errors are MLflow's: snake_case JSON, `version` as a string,
//! epoch milliseconds, stages `None|Staging|Production|Archived`, and
//! `{"error_code", "message"}` with the HTTP status MLflow's client expects
//! (never a status it retries, for a refusal). What modelreg does not allow
//! (renaming, deleting) is refused with a message that says so.
//!
//! Callers authenticate as MLflow's client does: `Authorization: Bearer
//! $MLFLOW_TRACKING_TOKEN`, or `Basic` with the token as the password
//! (`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`). In local mode the
//! caller is the Basic user name, else the `x-modelreg-actor` header, else
//! `anonymous`, with every role, as on the gRPC port.

mod models;
mod params;
mod search;
mod shapes;
mod versions;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::app::Caller;
use crate::auth::{Action, Identity, TokenStore};
use crate::dashboard::{Body, caller, permit, valid_actor};
use crate::error::Error;
use crate::settings::PublicUrl;
use crate::store::Store;

use params::Params;

/// The path prefixes MLflow's clients call.
const PREFIXES: [&str; 2] = ["/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/"];

/// Whether `path` is the facade's.
pub fn serves(path: &str) -> bool {
    PREFIXES.iter().any(|p| path.starts_with(p))
}

/// A refused call, in MLflow's terms.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    /// A bad parameter: `INVALID_PARAMETER_VALUE`, 400.
    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
    }

    /// Something modelreg never does (rename, delete).
    fn permanent(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::FORBIDDEN, "FEATURE_DISABLED", message)
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Refusal {
        let (status, code) = match &e {
            Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE"),
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
            Error::AlreadyExists { .. } => (StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS"),
            // 409, not MLflow's 500 for INVALID_STATE: its client retries a 5xx.
            Error::FailedPrecondition(_) => (StatusCode::CONFLICT, "INVALID_STATE"),
            Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            Error::Unavailable(_) | Error::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE")
            }
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        };
        // The gRPC status's message: internal errors are logged, not shown.
        let (_, message) = e.into_http();
        Refusal::new(status, code, message)
    }
}

/// The endpoints, by method and path after the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    CreateModel,
    GetModel,
    SearchModels,
    UpdateModel,
    RenameModel,
    DeleteModel,
    SetModelTag,
    DeleteModelTag,
    LatestVersions,
    SetAlias,
    DeleteAlias,
    GetByAlias,
    CreateVersion,
    GetVersion,
    SearchVersions,
    UpdateVersion,
    Transition,
    SetVersionTag,
    DeleteVersionTag,
    DownloadUri,
    DeleteVersion,
}

/// Method, path and endpoint, as MLflow's `model_registry.proto` declares them.
const ROUTES: [(&str, &str, Route); 22] = [
    ("POST", "registered-models/create", Route::CreateModel),
    ("GET", "registered-models/get", Route::GetModel),
    ("GET", "registered-models/search", Route::SearchModels),
    ("PATCH", "registered-models/update", Route::UpdateModel),
    ("POST", "registered-models/rename", Route::RenameModel),
    ("DELETE", "registered-models/delete", Route::DeleteModel),
    ("POST", "registered-models/set-tag", Route::SetModelTag),
    (
        "DELETE",
        "registered-models/delete-tag",
        Route::DeleteModelTag,
    ),
    (
        "POST",
        "registered-models/get-latest-versions",
        Route::LatestVersions,
    ),
    (
        "GET",
        "registered-models/get-latest-versions",
        Route::LatestVersions,
    ),
    ("POST", "registered-models/alias", Route::SetAlias),
    ("DELETE", "registered-models/alias", Route::DeleteAlias),
    ("GET", "registered-models/alias", Route::GetByAlias),
    ("POST", "model-versions/create", Route::CreateVersion),
    ("GET", "model-versions/get", Route::GetVersion),
    ("GET", "model-versions/search", Route::SearchVersions),
    ("PATCH", "model-versions/update", Route::UpdateVersion),
    ("POST", "model-versions/transition-stage", Route::Transition),
    ("POST", "model-versions/set-tag", Route::SetVersionTag),
    (
        "DELETE",
        "model-versions/delete-tag",
        Route::DeleteVersionTag,
    ),
    ("GET", "model-versions/get-download-uri", Route::DownloadUri),
    ("DELETE", "model-versions/delete", Route::DeleteVersion),
];

impl Route {
    /// The endpoint of `method` on `endpoint`: ENDPOINT_NOT_FOUND for an
    /// unknown path, 405 naming the methods for a known one.
    fn find(method: &Method, endpoint: &str) -> Result<Route, Refusal> {
        // HEAD is a GET without the body.
        let method = if method == Method::HEAD {
            "GET"
        } else {
            method.as_str()
        };
        let known: Vec<&(&str, &str, Route)> =
            ROUTES.iter().filter(|(_, p, _)| *p == endpoint).collect();
        if let Some((_, _, route)) = known.iter().find(|(m, _, _)| *m == method) {
            return Ok(*route);
        }
        if known.is_empty() {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "ENDPOINT_NOT_FOUND",
                format!(
                    "no MLflow endpoint {endpoint:?} here: modelreg serves the model registry API \
                     (registered-models/…, model-versions/…); keep MLFLOW_TRACKING_URI on your MLflow \
                     server for experiments and runs"
                ),
            ));
        }
        let allowed: Vec<&str> = known.iter().map(|(m, _, _)| *m).collect();
        Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "ENDPOINT_NOT_FOUND",
            format!("{endpoint} takes {}", allowed.join(" or ")),
        ))
    }

    /// The registry action whose role the endpoint needs; `None` for what
    /// is refused to everyone.
    fn action(self) -> Option<Action> {
        use Route::*;
        Some(match self {
            CreateModel => Action::CreateModel,
            GetModel => Action::GetModel,
            GetByAlias | GetVersion | DownloadUri => Action::GetVersion,
            SearchModels => Action::ListModels,
            UpdateModel | SetModelTag | DeleteModelTag => Action::UpdateModel,
            LatestVersions | SearchVersions => Action::ListVersions,
            SetAlias => Action::SetAlias,
            DeleteAlias => Action::DeleteAlias,
            CreateVersion => Action::RegisterVersion,
            UpdateVersion | SetVersionTag | DeleteVersionTag => Action::UpdateVersion,
            Transition => Action::TransitionStage,
            RenameModel | DeleteModel | DeleteVersion => return None,
        })
    }
}

/// One call: who makes it, with what, and where the dashboard is.
struct Call {
    who: Identity,
    params: Params,
    /// The dashboard's base URL, for links in messages.
    dashboard: String,
}

impl Call {
    fn caller(&self) -> Result<Caller, Refusal> {
        Ok(caller(&self.who)?)
    }
}

/// The facade: the store the use cases act on and how callers are known.
pub struct Facade {
    store: Store,
    tokens: Option<TokenStore>,
    public: Option<PublicUrl>,
    secure: bool,
}

impl Facade {
    /// The facade over `store`; `tokens` is `None` in local mode, `secure`
    /// when the listener has TLS.
    pub fn new(
        store: Store,
        tokens: Option<TokenStore>,
        public: Option<PublicUrl>,
        secure: bool,
    ) -> Facade {
        Facade {
            store,
            tokens,
            public,
            secure,
        }
    }

    /// Answers one call under one of [`PREFIXES`].
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        let (status, body) = match self.answer(req).await {
            Ok(value) => (StatusCode::OK, value),
            Err(r) => {
                if r.status.is_server_error() {
                    tracing::warn!(code = r.code, message = %r.message, "mlflow: call failed");
                }
                (
                    r.status,
                    json!({"error_code": r.code, "message": r.message}),
                )
            }
        };
        let bytes = if head {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let mut resp = Response::new(Full::new(bytes).boxed_unsync());
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"modelreg\""),
            );
        }
        resp
    }

    async fn answer(&self, req: Request<Incoming>) -> Result<Value, Refusal> {
        let (head, body) = req.into_parts();
        let body = params::read_body(body).await?;
        let path = head.uri.path();
        let endpoint = PREFIXES
            .iter()
            .find_map(|p| path.strip_prefix(p))
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned();
        let route = Route::find(&head.method, &endpoint)?;
        let who = self.identify(&head.headers)?;
        let Some(action) = route.action() else {
            return Err(refused(route));
        };
        permit(&who, action)?;
        let dashboard = self.dashboard_base(&head.headers);
        let params = Params::parse(&head.method, &head.uri, &head.headers, &body)?;
        let call = Call {
            who,
            params,
            dashboard,
        };
        use Route::*;
        match route {
            CreateModel => self.create_model(&call).await,
            GetModel => self.get_model(&call).await,
            SearchModels => self.search_models(&call).await,
            UpdateModel => self.update_model(&call).await,
            SetModelTag => self.set_model_tag(&call, true).await,
            DeleteModelTag => self.set_model_tag(&call, false).await,
            LatestVersions => self.latest_versions(&call).await,
            SetAlias => self.set_alias(&call, true).await,
            DeleteAlias => self.set_alias(&call, false).await,
            GetByAlias => self.get_by_alias(&call).await,
            CreateVersion => self.create_version(&call).await,
            GetVersion => self.get_version(&call).await,
            SearchVersions => self.search_versions(&call).await,
            UpdateVersion => self.update_version(&call).await,
            Transition => self.transition(&call).await,
            SetVersionTag => self.set_version_tag(&call, true).await,
            DeleteVersionTag => self.set_version_tag(&call, false).await,
            DownloadUri => self.download_uri(&call).await,
            RenameModel | DeleteModel | DeleteVersion => Err(refused(route)),
        }
    }

    /// Who calls: a token from the token file (Bearer, or Basic's
    /// password), or in local mode whoever the call says.
    fn identify(&self, headers: &HeaderMap) -> Result<Identity, Refusal> {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let (scheme, credential) = auth
            .and_then(|a| a.split_once(' '))
            .map(|(s, c)| (s.to_ascii_lowercase(), c.trim()))
            .unwrap_or_default();
        let basic = (scheme == "basic")
            .then(|| {
                base64::engine::general_purpose::STANDARD
                    .decode(credential)
                    .ok()
            })
            .flatten()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
        let Some(tokens) = &self.tokens else {
            let name = basic
                .map(|(user, _)| user)
                .or_else(|| {
                    headers
                        .get("x-modelreg-actor")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "anonymous".into());
            if !valid_actor(&name) {
                return Err(Refusal::invalid(format!(
                    "{:?} cannot name an actor: use letters, digits and . _ - @ : /",
                    crate::domain::truncate(&name, 64)
                )));
            }
            return Ok(Identity::local(name));
        };
        let token = match (scheme.as_str(), basic) {
            ("bearer", _) => Some(credential.to_owned()),
            ("basic", Some((_, password))) => Some(password),
            _ => None,
        };
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "this registry needs a token: set MLFLOW_TRACKING_TOKEN (sent as Authorization: Bearer) \
                 or MLFLOW_TRACKING_PASSWORD to a token from the server's token file",
            ));
        };
        tokens.identify(&token).ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "the token is not in the server's token file (revoked or mistyped)",
            )
        })
    }

    /// The dashboard's address as the caller sees this listener.
    fn dashboard_base(&self, headers: &HeaderMap) -> String {
        if let Some(p) = &self.public {
            let scheme = if p.default_port == 443 {
                "https"
            } else {
                "http"
            };
            return if p.port == p.default_port {
                format!("{scheme}://{}", p.host)
            } else {
                format!("{scheme}://{}:{}", p.host, p.port)
            };
        }
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{host}")
    }
}

/// Why what modelreg never does is refused.
fn refused(route: Route) -> Refusal {
    Refusal::permanent(match route {
        Route::RenameModel => {
            "modelreg does not rename models: a model's name is permanent, since events, audit \
             trail and workers refer to it. Create a model under the new name and register \
             versions there"
        }
        Route::DeleteModel => {
            "modelreg does not delete models: names and history are permanent (the audit trail \
             keeps them). Archive the versions instead (transition them to Archived)"
        }
        _ => {
            "modelreg does not delete model versions: history is permanent (the audit trail keeps \
             it). Archive the version instead (transition it to Archived)"
        }
    })
}

/// `items[offset..]`, at most `max` of them, and the token of the next
/// page (empty when this is the last).
fn page<T>(items: Vec<T>, offset: usize, max: usize, query: &str) -> (Vec<T>, String) {
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(offset).take(max).collect();
    let next = offset.saturating_add(page.len());
    let token = if next < total {
        search::encode_token(next, query)
    } else {
        String::new()
    };
    (page, token)
}

/// `max_results`: `default` when absent, 1..=`limit` otherwise, as MLflow's
/// server checks it.
fn max_results(params: &Params, default: i64, limit: i64) -> Result<usize, Refusal> {
    match params.integer("max_results")?.unwrap_or(default) {
        n if (1..=limit).contains(&n) => Ok(n as usize),
        n => Err(Refusal::invalid(format!(
            "max_results must be between 1 and {limit}, got {n}"
        ))),
    }
}
