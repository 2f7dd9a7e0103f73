//! The POSTs: decisions on requests, dead-letter retries, sign-in and
//! sign-out, each behind the session's CSRF token; and where a sign-in may
//! send the visitor next.

use std::collections::HashMap;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::app::{self, Decision};
use crate::auth::{Action, Identity};
use crate::domain::{DeadLetterRecord, Name, RequestStatus, TransitionRequest, Version};
use crate::error::Error;

use super::*;

impl Dashboard {
    pub(super) async fn decide(
        &self,
        req: Request<Incoming>,
        visit: &Visit,
        who: Identity,
        id: &str,
    ) -> Result<Response<Body>, Failure> {
        let form = self.checked_form(req, visit).await?;
        let field = |k: &str| form.get(k).map(|v| v.trim()).unwrap_or("").to_owned();
        let who = self.acting(visit, who, &form, "deciding")?;
        let comment = field("comment");
        let page = Page::new(visit, "Decision").acting_as(&who);
        let decision = match field("decision").as_str() {
            "approve" => pages::Decision::Approve,
            "reject" => pages::Decision::Reject,
            other => {
                return Err(Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("decision must be approve or reject, not {other:?}"),
                ));
            }
        };
        let result = self.apply(&who, decision, id, &comment).await;
        match &result {
            Ok((request, _)) => tracing::info!(
                request = %request.id(), actor = %who.name, ?decision, "dashboard: decision recorded"
            ),
            Err(e) => tracing::info!(
                request = %id, actor = %who.name, error = %e, "dashboard: decision refused"
            ),
        }
        match result {
            Ok((request, version)) => Ok(html_response(
                StatusCode::OK,
                pages::decided(&page, decision, &request, &version),
            )),
            Err(e) => {
                let failure = Failure::from(e);
                Ok(html_response(
                    failure.status,
                    pages::refused(&page, id, &failure.message),
                ))
            }
        }
    }

    /// Approves or rejects request `id` as `who`: the use cases behind
    /// ApproveTransition and RejectTransition, after the same role check.
    async fn apply(
        &self,
        who: &Identity,
        decision: pages::Decision,
        id: &str,
        comment: &str,
    ) -> Result<(TransitionRequest, Version), Error> {
        let action = match decision {
            pages::Decision::Approve => Action::ApproveTransition,
            pages::Decision::Reject => Action::RejectTransition,
        };
        permit(who, action)?;
        let reject = decision == pages::Decision::Reject;
        let decided = Decision::parse(id, comment, reject, caller(who)?)?;
        match decision {
            pages::Decision::Approve => app::approve(self.store(), decided).await,
            pages::Decision::Reject => {
                app::close_request(self.store(), decided, RequestStatus::Rejected).await
            }
        }
    }

    /// Who a form acts as: the visitor, or in local mode the name the form's
    /// "Acting as" field gives (remembered for the session's next forms).
    fn acting(
        &self,
        visit: &Visit,
        who: Identity,
        form: &HashMap<String, String>,
        doing: &str,
    ) -> Result<Identity, Failure> {
        if !visit.local {
            return Ok(who);
        }
        let actor = form.get("actor").map(|v| v.trim()).unwrap_or("");
        if !valid_actor(actor) {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "local mode: say who is {doing} in the \"Acting as\" field \
                     (1 to 128 printable ASCII characters)"
                ),
            ));
        }
        self.sessions.remember_actor(&visit.session, actor);
        Ok(Identity::local(actor))
    }

    /// Retries dead letter `sequence` (a form field) of consumer `name` as
    /// `who`: the use case behind RetryDeadLetter, after the same role check.
    pub(super) async fn retry(
        &self,
        req: Request<Incoming>,
        visit: &Visit,
        who: Identity,
        name: &str,
    ) -> Result<Response<Body>, Failure> {
        let form = self.checked_form(req, visit).await?;
        let who = self.acting(visit, who, &form, "retrying")?;
        let page = Page::new(visit, "Retry").acting_as(&who);
        let sequence = form.get("sequence").map(|v| v.trim()).unwrap_or("");
        let result = self.retry_as(&who, name, sequence).await;
        match &result {
            Ok(d) => tracing::info!(
                consumer = %name, sequence = d.sequence, actor = %who.name, "dashboard: dead letter retried"
            ),
            Err(e) => tracing::info!(
                consumer = %name, sequence, actor = %who.name, error = %e, "dashboard: retry refused"
            ),
        }
        match result {
            Ok(d) => Ok(html_response(
                StatusCode::OK,
                pages::retried(&page, name, &d),
            )),
            Err(e) => {
                let failure = Failure::from(e);
                Ok(html_response(
                    failure.status,
                    pages::retry_refused(&page, name, &failure.message),
                ))
            }
        }
    }

    async fn retry_as(
        &self,
        who: &Identity,
        name: &str,
        sequence: &str,
    ) -> Result<DeadLetterRecord, Error> {
        permit(who, Action::RetryDeadLetter)?;
        let name = Name::parse("consumer", name)?;
        let sequence = match sequence.parse::<u64>() {
            Ok(s) if s > 0 => s,
            _ => return Err(Error::invalid("sequence", "must be 1 or more")),
        };
        app::retry_dead_letter(self.store(), &name, sequence, caller(who)?.actor).await
    }

    /// Reads a POSTed form and checks it came from this site's page: the
    /// session's CSRF token, and the `Origin` when the browser sent one.
    pub(super) async fn checked_form(
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

    pub(super) fn signin_form(
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

    pub(super) async fn signin(
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
                    let query = HashMap::from([("next".to_owned(), next)]);
                    let refusal = Some("That token is not in the server's token file.");
                    return Ok(self.signin_form(visit, &query, refusal));
                }
                (Some(token.to_owned()), None)
            }
            None => {
                let actor = form.get("actor").map(|a| a.trim()).unwrap_or("");
                if !valid_actor(actor) {
                    let query = HashMap::from([("next".to_owned(), next)]);
                    let refusal = Some("Give a name of 1 to 128 printable ASCII characters.");
                    return Ok(self.signin_form(visit, &query, refusal));
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

    pub(super) async fn signout(
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
}
