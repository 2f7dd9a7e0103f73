//! `/events`: server-sent events from a subscription to the watch tail (the
//! one WatchTransitions streams from), one summary per event, resuming after
//! `Last-Event-ID`.

use std::collections::HashMap;
use std::convert::Infallible;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use tokio_stream::StreamExt;

use crate::app;
use crate::auth::{Action, Identity};
use crate::domain::{Event, EventFilter, Name};
use crate::watch::{self, Subscription, WatchItem};

use super::*;

impl Dashboard {
    /// `/events`: server-sent events of the watch tail, so a page learns
    /// that something it shows changed. Resumes after `Last-Event-ID` (the
    /// browser sends it on reconnect) or `after`; heartbeats while idle. Ends
    /// when the session's token leaves the token file, like a gRPC stream,
    /// and when the server shuts down.
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
            None => None,
            Some(s) => Some(s.trim().parse::<u64>().map_err(|_| {
                Failure::new(StatusCode::BAD_REQUEST, "after must be a sequence number")
            })?),
        };
        permit(who, Action::WatchTransitions)?;
        let after = app::watch_start(self.store(), "after", after)?;
        let mut filter = EventFilter::default();
        if let Some(m) = query.get("model").filter(|m| !m.is_empty()) {
            filter.models = vec![Name::parse("model", m)?.to_string()];
        }
        let registry = &self.registry;
        let stream = watch::spawn(
            registry.store.clone(),
            registry.tail.clone(),
            Subscription {
                filter,
                after,
                heartbeat: registry.heartbeat,
                credential,
            },
            registry.shutdown.clone(),
            |item| match item {
                WatchItem::Event(e) => Bytes::from(sse_event(&e)),
                WatchItem::Heartbeat(sequence) => {
                    Bytes::from(format!(": heartbeat {sequence}\n\n"))
                }
            },
        );
        let opening = tokio_stream::once(Bytes::from_static(b"retry: 3000\n\n"));
        // The stream's last item is why it ended (revocation, shutdown).
        let items = stream.map_while(Result::ok);
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
fn sse_event(e: &Event) -> String {
    let data = serde_json::json!({
        "sequence": e.sequence,
        "type": e.kind.as_str(),
        "model": e.model,
        "version": e.version,
    });
    format!("id: {}\nevent: registry\ndata: {data}\n\n", e.sequence)
}
