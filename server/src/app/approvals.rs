//! Deciding transition requests: approve (second person, gates judged
//! again), reject, cancel, and the requests inbox.

use serde_json::json;

use crate::domain::{
    self, EventKind, Model, Name, NewEvent, RequestStatus, TransitionRequest, Version,
};
use crate::error::{Error, Result};
use crate::store::{Db, RequestCursor, Store, Tx};

use super::*;

/// An approver's or requester's decision on one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The request's model.
    pub model: Name,
    /// The request's number.
    pub number: i64,
    /// Why.
    pub comment: String,
    /// Who decides.
    pub caller: Caller,
}

impl Decision {
    /// A decision by `caller` on the request `request_id` (`MODEL:NUMBER`),
    /// every bad field reported at once. A rejection must say why
    /// (`comment_required`), so a blank comment is refused.
    pub fn parse(
        request_id: &str,
        comment: &str,
        comment_required: bool,
        caller: Caller,
    ) -> Result<Decision> {
        let mut v = domain::Violations::default();
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
}

/// Locks the model and reads a request that must still be pending.
pub(crate) async fn pending_request<T: Tx>(
    tx: &mut T,
    model: &str,
    number: i64,
    action: &str,
) -> Result<(Model, TransitionRequest)> {
    let current = tx
        .lock_model(model)
        .await?
        .ok_or_else(|| request_not_found(model, number))?;
    let request = tx
        .fetch_request(model, number)
        .await?
        .ok_or_else(|| request_not_found(model, number))?;
    if request.status != RequestStatus::Pending {
        return Err(Error::precondition(
            "REQUEST_CLOSED",
            request.id(),
            format!(
                "request {} is {}; only a PENDING request can be {action}",
                request.id(),
                request.status.as_str()
            ),
        ));
    }
    Ok((current, request))
}

pub async fn approve(store: &Store, decision: Decision) -> Result<(TransitionRequest, Version)> {
    write_tx!(store, |tx| -> (TransitionRequest, Version) {
        let name = decision.model.as_str();
        let (model, mut request) = pending_request(tx, name, decision.number, "approved").await?;
        let approver = decision.caller.actor.0.clone();
        let id = request.id();
        authz::may_approve(&model.policy, &request, &approver)?;
        let version = tx
            .fetch_version(name, request.version)
            .await?
            .ok_or_else(|| vanished("version"))?;
        if version.stage != request.from_stage {
            return Err(Error::Internal(format!(
                "pending request {id} for a version no longer in {}",
                request.from_stage
            )));
        }
        // Production may have changed since the request: decided again, today.
        let path = MovePath::Approved {
            rollback: request.rollback,
        };
        let moves = match decide_move(tx, &model, &version, request.to_stage, path).await? {
            MoveDecision::Apply(moves) => moves,
            MoveDecision::NeedsApproval(_) => {
                return Err(Error::Internal(format!(
                    "an approved request {id} was sent back for approval"
                )));
            }
        };
        let now = tx.now();
        let needed = model.policy.min_approvals() as usize;
        let complete = request.record_approval(&approver, &decision.comment, now, needed);
        let mut approved = NewEvent::new(
            EventKind::TransitionApproved,
            name,
            request.version,
            json!({
                "request_id": id,
                "approvals": request.approvals.len(),
                "approvals_needed": needed,
                "complete": complete,
                "to_stage": request.to_stage.as_str(),
            }),
        );
        approved.comment = decision.comment.clone();
        approved.transition_request_id = id.clone();
        let mut events = vec![approved];
        if complete {
            let details = json!({"request_id": id, "requester": request.requester});
            let comment = request.comment.clone();
            events.extend(
                apply_moves(
                    tx,
                    name,
                    &moves,
                    &comment,
                    details,
                    &id,
                    Some(request.number),
                )
                .await?,
            );
        } else {
            tx.touch_version(name, version.version, now).await?;
        }
        record_decision(tx, request, &decision.caller.actor, events).await
    })
}

pub async fn close_request(
    store: &Store,
    decision: Decision,
    status: RequestStatus,
) -> Result<(TransitionRequest, Version)> {
    write_tx!(store, |tx| -> (TransitionRequest, Version) {
        let name = decision.model.as_str();
        let (kind, action) = match status {
            RequestStatus::Rejected => (EventKind::TransitionRejected, "rejected"),
            RequestStatus::Cancelled => (EventKind::TransitionCancelled, "cancelled"),
            other => {
                return Err(Error::Internal(format!(
                    "cannot close a request as {other:?}"
                )));
            }
        };
        let (_, mut request) = pending_request(tx, name, decision.number, action).await?;
        let who = decision.caller.actor.0.clone();
        if status == RequestStatus::Cancelled {
            authz::may_cancel(&decision.caller, &request)?;
        }
        let now = tx.now();
        request.status = status;
        request.resolved_by = who;
        request.resolution_comment = decision.comment.clone();
        request.update_time = now;
        tx.touch_version(name, request.version, now).await?;
        let mut event = NewEvent::new(
            kind,
            name,
            request.version,
            json!({"request_id": request.id(), "requester": request.requester, "to_stage": request.to_stage.as_str()}),
        );
        event.comment = decision.comment;
        event.transition_request_id = request.id();
        record_decision(tx, request, &decision.caller.actor, vec![event]).await
    })
}

/// Stores a decided request and appends the decision's `events`: the
/// request and its version as they now stand, and the last sequence.
async fn record_decision<T: Tx>(
    tx: &mut T,
    request: TransitionRequest,
    actor: &Actor,
    events: Vec<NewEvent>,
) -> Result<((TransitionRequest, Version), Option<u64>)> {
    tx.update_request(&request).await?;
    let seq = append_events(tx, actor, events).await?;
    let version = tx
        .fetch_version(&request.model, request.version)
        .await?
        .ok_or_else(|| vanished("version"))?;
    Ok(((request, version), Some(seq)))
}

pub async fn list_requests(
    store: &Store,
    model: Option<&str>,
    status: Option<RequestStatus>,
    after: Option<RequestCursor>,
    limit: usize,
) -> Result<(Vec<TransitionRequest>, bool)> {
    read_db!(store, |db| async {
        if let Some(m) = model {
            get_model_on(db, m).await?;
        }
        Ok(page(
            db.list_requests(model, status, after, limit + 1).await?,
            limit,
        ))
    })
}

/// Request `number` of `model`, which must exist; `None` when the model has
/// no such request.
pub async fn find_request(
    store: &Store,
    model: &str,
    number: i64,
) -> Result<Option<TransitionRequest>> {
    read_db!(store, |db| async {
        get_model_on(db, model).await?;
        db.fetch_request(model, number).await
    })
}
