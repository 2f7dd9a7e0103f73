//! The event log's other reads: verifying the hash chain and watching
//! (listing is with the other paged reads, in [`super::lists`]).

use modelreg_api::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::app;
use crate::auth::Credential;
use crate::domain::{EventFilter, Name, Violations};
use crate::error::Result;
use crate::grpc::convert::{self, watch_item_to_pb};
use crate::grpc::parse::parse_stage_field;
use crate::store::Store;
use crate::watch::{self as watcher, Subscription};

use super::{ModelRegistryService, RegistryService};

/// The most anchors one VerifyAuditLog call checks.
const MAX_AUDIT_ANCHORS: usize = 100;

/// The most models one WatchTransitions filter may name.
pub const MAX_WATCHED_MODELS: usize = 1000;

/// VerifyAuditLog: walks the hash chain, checking it against the caller's
/// anchors (hashes they kept of earlier events).
pub(super) async fn verify_audit_log(
    store: &Store,
    r: pb::VerifyAuditLogRequest,
) -> Result<pb::VerifyAuditLogResponse> {
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
    let report = app::verify_chain(store, &anchors).await?;
    Ok(pb::VerifyAuditLogResponse {
        ok: report.ok,
        events_checked: report.checked,
        first_bad_sequence: report.first_bad,
        head: report
            .head
            .map(|(sequence, hash)| pb::AuditAnchor { sequence, hash }),
        problem: report.problem,
    })
}

/// WatchTransitions: the events that match the filter, from the log and then
/// live, with heartbeats while idle, until the caller leaves, the server
/// shuts down or the caller's token is revoked.
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
    let subscription = Subscription {
        filter,
        after: after.expect("checked"),
        heartbeat: svc.heartbeat,
        credential,
    };
    // Heartbeats carry the time of the server's clock, the one events carry.
    let clock = svc.store.clock().clone();
    let stream = watcher::spawn(
        svc.store.clone(),
        svc.tail.clone(),
        subscription,
        svc.shutdown.clone(),
        move |item| watch_item_to_pb(item, clock.now_micros()),
    );
    Ok(Response::new(Box::pin(
        stream.map(|item| item.map_err(Status::from)),
    )))
}
