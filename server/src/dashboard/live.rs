//! `/events`: server-sent events fed by WatchTransitions, one summary per
//! event, resuming after `Last-Event-ID`.

use std::collections::HashMap;
use std::convert::Infallible;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use modelreg_api::v1 as pb;
use modelreg_api::v1::model_registry_service_server::ModelRegistryService;
use tokio_stream::StreamExt;

use crate::auth::Identity;

use super::*;

impl Dashboard {
    /// `/events`: server-sent events fed by WatchTransitions, so a page
    /// learns that something it shows changed. Resumes after `Last-Event-ID`
    /// (the browser sends it on reconnect) or `after`. Ends when the
    /// session's token leaves the token file, like a gRPC stream.
    pub(super) async fn events(
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
