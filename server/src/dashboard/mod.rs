//! The approval dashboard on the HTTP listener: server-rendered pages for
//! models, versions, pending approvals, the audit log and durable consumers,
//! Approve / Reject and dead-letter Retry forms, and live refresh by
//! server-sent events.
//!
//! - An edge like the gRPC one, beside it: every read and every decision is
//!   a call of a [`crate::app`] use case with domain values, as the
//!   visitor, after the role check of the same [`Action`] table the gRPC
//!   auth layer uses. Four-eyes, gate re-checks and audit events are the
//!   use cases' own, and failures are [`Error`]s, shown with the HTTP status
//!   of [`Error::into_http`]. Pages render domain types; nothing here knows
//!   protobuf or tonic.
//! - Sign-in takes a bearer token from the server's token file and keeps it
//!   in a session ([`session`]); without a token file (local mode, loopback
//!   only) pages are open and the decision form asks who is acting.
//! - Every POST carries the session's CSRF token and, when the browser
//!   sends one, an `Origin` of this host; the cookie is SameSite=Strict.
//! - Pages work without JavaScript; `live.js` only re-fetches the page when
//!   `/events` (SSE from a subscription to the watch tail) reports a
//!   relevant event.

mod chart;
mod forms;
mod live;
mod pages;
mod reads;
mod session;
mod views;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::app::{self, Caller};
use crate::auth::{Action, Identity, Role, TokenStore};
use crate::domain::Actor;
use crate::error::Error;
use crate::store::{ChainReport, Store};
use crate::watch::Tail;
use session::{Session, Sessions};

pub use pages::Page;

/// The body of every response of the HTTP listener.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The largest form accepted (a decision's comment is the big field).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Rows per page of lists the dashboard pages through.
const PAGE: usize = 500;

/// What the dashboard's use cases need: what the gRPC service gives its
/// `app::` calls, shared with it.
#[derive(Clone)]
pub struct Registry {
    /// Where everything is kept: every read and decision is an `app::` call on it.
    pub store: Store,
    /// The event log's shared tail, which `/events` subscribes to.
    pub tail: Arc<Tail>,
    /// How often an idle `/events` stream gets a heartbeat.
    pub heartbeat: Duration,
    /// Fires when the server begins shutting down, ending `/events` streams.
    pub shutdown: CancellationToken,
}

/// The dashboard: the registry it acts on, who may sign in, the sessions.
pub struct Dashboard {
    /// The store, tail and settings the use cases and the live page need.
    registry: Registry,
    /// `None` is local mode.
    tokens: Option<TokenStore>,
    /// Who is signed in, by cookie.
    sessions: Sessions,
    /// Served over TLS: cookies get `Secure`.
    secure: bool,
    /// The last verification of the hash chain and when it ran: audit pages
    /// refreshed live on a busy log reuse it for [`CHAIN_CHECK_REUSE`]
    /// instead of reading the whole log on every event.
    chain: tokio::sync::Mutex<Option<(Instant, ChainReport)>>,
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

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let (status, message) = e.into_http();
        Failure::new(status, message)
    }
}

impl Dashboard {
    /// The dashboard over `registry`; `secure` when the listener has TLS.
    pub fn new(registry: Registry, tokens: Option<TokenStore>, secure: bool) -> Dashboard {
        Dashboard {
            registry,
            tokens,
            sessions: Sessions::default(),
            chain: tokio::sync::Mutex::new(None),
            secure,
        }
    }

    fn store(&self) -> &Store {
        &self.registry.store
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
        let page = Page::new(visit, "").since(app::latest_sequence(self.store()));
        match segments.as_slice() {
            [""] if is_get => self.models_page(&who, page).await,
            ["models", name] if is_get => self.model_page(&who, page, name, &query).await,
            ["requests"] if is_get => self.requests_page(&who, page).await,
            ["requests", id] if is_get => self.request_page(&who, page, id).await,
            ["requests", id, "decide"] if method == Method::POST => {
                self.decide(req, visit, who, id).await
            }
            ["audit"] if is_get => self.audit_page(&who, page, &query).await,
            ["consumers"] if is_get => self.consumers_page(&who, page).await,
            ["consumers", name] if is_get => self.consumer_page(&who, page, name).await,
            ["consumers", name, "retry"] if method == Method::POST => {
                self.retry(req, visit, who, name).await
            }
            ["events"] if is_get => self.events(&who, visit, req.headers(), &query).await,
            ["" | "requests" | "audit" | "events" | "consumers"]
            | ["models" | "requests" | "consumers", _] => Err(not_allowed("GET")),
            ["requests", _, "decide"] | ["consumers", _, "retry"] => Err(not_allowed("POST")),
            _ => Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no page at {path}"),
            )),
        }
    }
}

/// Refuses `who` an `action` whose role they lack: the check the gRPC auth
/// layer makes, from the same table.
pub(crate) fn permit(who: &Identity, action: Action) -> Result<(), Error> {
    let need = action.required_role();
    if who.has(need) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "{action} needs the {need} role; {} has {}",
            who.name,
            roles(who)
        )))
    }
}

/// The visitor as the use cases know callers.
pub(crate) fn caller(who: &Identity) -> Result<Caller, Error> {
    Ok(Caller {
        admin: who.has(Role::Admin),
        actor: Actor::parse("actor", &who.name)?,
    })
}

/// A local-mode name: the one rule for actor names, in the ASCII a gRPC
/// caller's actor header can carry, so the CLI can act under the same name.
pub(crate) fn valid_actor(name: &str) -> bool {
    Actor::parse("actor", name).is_ok() && name.is_ascii()
}

/// The visitor's roles, for pages and messages.
pub(crate) fn roles(who: &Identity) -> String {
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

/// Whether `who` may retry dead letters: the role RetryDeadLetter needs.
pub fn may_retry(who: &Identity) -> bool {
    who.has(Action::RetryDeadLetter.required_role())
}

pub(crate) fn signed_out() -> Failure {
    Failure::new(
        StatusCode::UNAUTHORIZED,
        "sign in first: your session has ended or the token was revoked",
    )
}

pub(crate) fn not_allowed(allow: &'static str) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this page takes {allow}"),
    )
}

/// A sign-in target that stays on this site, or `/`.
pub(crate) fn safe_next(next: Option<&str>) -> String {
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
pub(crate) fn is_site_path(target: &str) -> bool {
    let bytes = target.as_bytes();
    bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && bytes.iter().all(|&b| b.is_ascii_graphic() && b != b'\\')
}

/// `application/x-www-form-urlencoded` pairs; the first of a repeated key wins.
pub(crate) fn parse_pairs(text: &str) -> HashMap<String, String> {
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
pub(crate) fn percent_decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

pub(crate) fn redirect(to: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// An HTML page with the headers every page carries: no caching of
/// per-user pages, no framing, scripts and styles only from this server.
pub(crate) fn html_response(status: StatusCode, markup: maud::Markup) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(markup.into_string())).boxed_unsync());
    *resp.status_mut() = status;
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    set_headers(&mut resp, headers);
    resp
}

/// The stylesheet and the live-refresh script.
pub(crate) fn asset_response(name: &str, method: &Method) -> Response<Body> {
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
    set_headers(
        &mut resp,
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
    );
    resp
}

/// Sets `headers` on `resp`, and `X-Content-Type-Options: nosniff`, which
/// every page and asset carries.
fn set_headers<const N: usize>(
    resp: &mut Response<Body>,
    headers: [(header::HeaderName, &'static str); N],
) {
    let h = resp.headers_mut();
    for (name, value) in headers {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
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
