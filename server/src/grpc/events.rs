//! Handlers of the event log: listing, verifying the chain, watching.

use modelreg_api::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app::{self};
use crate::auth::Credential;
use crate::domain::{self, EventFilter, Name, Violations};
use crate::grpc::convert::{self, event_to_pb};
use crate::watch::{self as watcher, Subscription, WatchItem};

use super::*;

#[instrument(skip_all)]
pub(super) async fn list_events(
    svc: &RegistryService,
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
    let (events, more) = app::list_events(&svc.store, &filter, after, None, size).await?;
    let (events, next_page_token) = page_token::page(events, more, "events", &query, event_to_pb);
    Ok(Response::new(pb::ListEventsResponse {
        events,
        next_page_token,
    }))
}

#[instrument(skip_all)]
pub(super) async fn verify_audit_log(
    svc: &RegistryService,
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
    let report = app::verify_chain(&svc.store, &anchors).await?;
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

#[instrument(skip_all)]
pub(super) async fn watch_transitions(
    svc: &RegistryService,
    req: Request<pb::WatchTransitionsRequest>,
) -> Result<Response<<RegistryService as ModelRegistryService>::WatchTransitionsStream>, Status> {
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
    let after = v.take(app::watch_start(
        &svc.store,
        "after_sequence",
        r.after_sequence,
    ));
    v.finish()?;
    let after = after.expect("checked");
    let clock = svc.store.clock().clone();
    let stream = watcher::spawn(
        svc.store.clone(),
        svc.tail.clone(),
        Subscription {
            filter,
            after,
            heartbeat: svc.heartbeat,
            credential,
        },
        svc.shutdown.clone(),
        move |item| pb::WatchTransitionsResponse {
            kind: Some(match item {
                WatchItem::Event(e) => pb::watch_transitions_response::Kind::Event(event_to_pb(
                    std::sync::Arc::unwrap_or_clone(e),
                )),
                WatchItem::Heartbeat(sequence) => {
                    pb::watch_transitions_response::Kind::Heartbeat(pb::Heartbeat {
                        sequence,
                        time: Some(convert::micros_to_pb(clock.now_micros())),
                    })
                }
            }),
        },
    );
    Ok(Response::new(Box::pin(
        stream.map(|item| item.map_err(Status::from)),
    )))
}
