//! Moving versions: [`decide_move`] is the one answer to "applies now, needs
//! approval, or refused by gates" for every path that moves a version on
//! someone's request; opening requests; applying moves with their events;
//! rollback.

use serde_json::json;

use crate::domain::lifecycle;
use crate::domain::{
    self, Actor, Cause, Comparison, EventKind, Model, Name, NewEvent, Policy, RequestStatus, Stage,
    StageChange, TransitionRequest, Version,
};
use crate::error::{Error, Result};
use crate::store::{Store, Tx};

use super::*;

/// Who asks for a change, with the one role the store itself must know.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Recorded as the actor of every event.
    pub actor: Actor,
    /// Admins may cancel anyone's request.
    pub admin: bool,
}

/// What TransitionStage or Rollback did.
// One is returned per call and matched at once: boxing the version would
// cost an allocation to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum TransitionOutcome {
    /// The move was applied.
    Applied(Version),
    /// A request waits for approval.
    Pending(TransitionRequest),
}

/// A checked Rollback.
#[derive(Debug, Clone)]
pub struct RollbackOrder {
    /// The model.
    pub model: Name,
    /// The version to restore; 0 for the previous good production version.
    pub version: i64,
    /// Why; required.
    pub reason: String,
    /// Who asks.
    pub caller: Caller,
}

/// Applies planned moves and closes the pending requests of every moved
/// version (except `keep`, the request being approved); returns the events.
pub(crate) async fn apply_moves<T: Tx>(
    tx: &mut T,
    model: &str,
    moves: &[lifecycle::Move],
    comment: &str,
    details: serde_json::Value,
    request_id: &str,
    keep: Option<i64>,
) -> Result<Vec<NewEvent>> {
    let now = tx.now();
    let mut events = Vec::with_capacity(moves.len());
    for mv in moves {
        tx.move_stage(model, mv.version, mv.from, mv.to, now)
            .await?;
        let (comment, details, request) = if mv.cause == Cause::Superseded {
            let by = moves.last().map(|m| m.version).unwrap_or(0);
            (String::new(), json!({"superseded_by": by}), String::new())
        } else {
            (comment.to_owned(), details.clone(), request_id.to_owned())
        };
        let mut event = stage_event(model, mv, comment, details);
        event.transition_request_id = request;
        events.push(event);
        for mut pending in tx.pending_requests_of(model, mv.version).await? {
            if Some(pending.number) == keep {
                continue;
            }
            pending.status = RequestStatus::Superseded;
            pending.update_time = now;
            pending.resolution_comment = format!("version {} moved to {} first", mv.version, mv.to);
            tx.update_request(&pending).await?;
            let mut closed = NewEvent::new(
                EventKind::TransitionSuperseded,
                model,
                mv.version,
                json!({"request_id": pending.id(), "moved_to": mv.to.as_str(), "requested_stage": pending.to_stage.as_str()}),
            );
            closed.transition_request_id = pending.id();
            events.push(closed);
        }
    }
    tx.touch_model(model, now).await?;
    Ok(events)
}

/// The TRANSITION_REQUESTED event: everything a notifier needs without
/// calling back.
pub(crate) fn requested_event(
    request: &TransitionRequest,
    version: &Version,
    judgement: &Judgement,
    policy: &Policy,
) -> NewEvent {
    let mut e = NewEvent::new(
        EventKind::TransitionRequested,
        &request.model,
        request.version,
        json!({
            "request_id": request.id(),
            "from_stage": request.from_stage.as_str(),
            "to_stage": request.to_stage.as_str(),
            "rollback": request.rollback,
            "requester": request.requester,
            "artifact_uri": version.artifact_uri,
            "artifact_digest": version.artifact_digest,
            "source": version.source,
            "metrics": domain::metrics_json(&version.evaluations),
            "comparison": judgement.comparison.as_ref().map(comparison_json),
            "gate_results": request.gate_results,
            "gates_passed": request.gate_results.iter().all(|r| r.passed),
            "approvals_needed": policy.min_approvals(),
        }),
    );
    e.comment = request.comment.clone();
    e.transition_request_id = request.id();
    e
}

pub(crate) fn comparison_json(c: &Comparison) -> serde_json::Value {
    json!({
        "candidate_version": c.candidate,
        "baseline_version": c.baseline,
        "evaluation_set": {"name": c.set.name, "version": c.set.version},
        "evaluator_version": c.evaluator_version,
        "metrics": c.metrics.iter().map(|m| json!({
            "metric": m.metric,
            "higher_is_better": m.higher_is_better,
            "candidate": m.candidate,
            "baseline": m.baseline,
            "delta": m.delta,
            "relative_delta": m.relative_delta,
            "outcome": format!("{:?}", m.outcome).to_uppercase(),
        })).collect::<Vec<_>>(),
    })
}

/// What a new request asks for.
pub(crate) struct Ask<'a> {
    /// The stage the version should enter.
    pub(crate) to: Stage,
    /// Whether it is a rollback.
    pub(crate) rollback: bool,
    /// The requester's comment (the reason, for a rollback).
    pub(crate) comment: &'a str,
    /// The gates' verdict at request time.
    pub(crate) judgement: Judgement,
}

/// Appends the event of a request [`open_request`] opened: the outcome of a
/// move that waits.
pub(crate) async fn pending<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    (request, event): (TransitionRequest, Option<NewEvent>),
) -> Result<(TransitionOutcome, Option<u64>)> {
    let seq = match event {
        Some(event) => Some(append_events(tx, actor, vec![event]).await?),
        None => None,
    };
    Ok((TransitionOutcome::Pending(request), seq))
}

/// Creates a pending request (or returns the identical pending one) and the
/// TRANSITION_REQUESTED event the caller appends (none for the existing one).
pub(crate) async fn open_request<T: Tx>(
    tx: &mut T,
    model: &Model,
    version: &Version,
    actor: &Actor,
    ask: Ask<'_>,
) -> Result<(TransitionRequest, Option<NewEvent>)> {
    let name = model.name.as_str();
    let Ask {
        to,
        rollback,
        comment,
        judgement,
    } = ask;
    // At most one request per version is pending: the server never opens a second.
    if let Some(pending) = tx
        .pending_requests_of(name, version.version)
        .await?
        .into_iter()
        .next()
    {
        if pending.to_stage == to && pending.rollback == rollback {
            // A retry (or a second ask): the open request stands.
            return Ok((pending, None));
        }
        return Err(Error::precondition(
            "REQUEST_PENDING",
            pending.id(),
            format!(
                "version {} already has pending request {} to {}; cancel it before asking for {to}",
                version.version,
                pending.id(),
                pending.to_stage
            ),
        ));
    }
    let now = tx.now();
    let request = TransitionRequest {
        model: name.to_owned(),
        number: tx.next_request_number(name).await?,
        version: version.version,
        from_stage: version.stage,
        to_stage: to,
        rollback,
        requester: actor.0.clone(),
        comment: comment.to_owned(),
        gate_results: judgement.results.clone(),
        approvals: Vec::new(),
        status: RequestStatus::Pending,
        create_time: now,
        update_time: now,
        resolved_by: String::new(),
        resolution_comment: String::new(),
    };
    tx.insert_request(&request).await?;
    tx.touch_version(name, version.version, now).await?;
    let event = requested_event(&request, version, &judgement, &model.policy);
    Ok((request, Some(event)))
}

/// Who moves a version: the one thing, besides the model's policy, that
/// [`decide_move`]'s answer turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovePath {
    /// Someone asks for a stage (RegisterVersion with a target stage,
    /// TransitionStage): gates guard every governed stage and production, and
    /// a stage the policy governs waits for approval.
    Request,
    /// A pending request has the approvals it needs (dashboard or RPC): the
    /// gates are judged again, since production may have changed; a rollback
    /// request has none.
    Approved {
        /// Whether the request is a rollback.
        rollback: bool,
    },
    /// Rollback to an earlier production version: no gates (it is the way
    /// back from a bad release); it waits only where the policy says
    /// rollbacks need approval.
    Rollback,
    /// The policy engine acting on the model's own policy: it applies.
    Policy,
}

/// How a move is carried out.
pub(crate) enum MoveDecision {
    /// The move applies now: these moves, in order.
    Apply(Vec<lifecycle::Move>),
    /// The model's policy needs approval: open a request carrying this
    /// verdict of the gates.
    NeedsApproval(Judgement),
}

/// The one answer to "applies now, needs approval, or refused by gates" for
/// moving `candidate` to `target`, asked by every path that moves a version
/// (registration with a target stage, TransitionStage, approval — RPC or
/// dashboard —, rollback, the policy engine's rollback). An illegal move and
/// failing gates are errors, with every failed check.
pub(crate) async fn decide_move<T: Tx>(
    tx: &mut T,
    model: &Model,
    candidate: &Version,
    target: Stage,
    path: MovePath,
) -> Result<MoveDecision> {
    let name = model.name.as_str();
    let rollback = matches!(
        path,
        MovePath::Rollback | MovePath::Policy | MovePath::Approved { rollback: true }
    );
    // Only a move into production supersedes (or rolls back from) the
    // production version; other moves spare the writer the query.
    let production = if rollback || target == Stage::Production {
        tx.production_version(name).await?.unwrap_or(0)
    } else {
        0
    };
    let mut moves = if rollback {
        rollback_moves(candidate, production)
    } else {
        lifecycle::plan_transition(name, candidate.version, candidate.stage, target, production)?
    };
    let gated = match path {
        MovePath::Request => model.policy.needs_approval(target) || target == Stage::Production,
        MovePath::Approved { rollback } => !rollback,
        MovePath::Rollback | MovePath::Policy => false,
    };
    let judgement = if gated {
        let judgement = judge(tx, model, candidate).await?;
        require_gates(name, candidate.version, &judgement.results)?;
        Some(judgement)
    } else {
        None
    };
    let needs_approval = match path {
        MovePath::Request => model.policy.needs_approval(target),
        MovePath::Rollback => model.policy.rollback_requires_approval(),
        MovePath::Approved { .. } | MovePath::Policy => false,
    };
    if needs_approval {
        return Ok(MoveDecision::NeedsApproval(judgement.unwrap_or_default()));
    }
    if let (MovePath::Approved { rollback: false }, Some(last)) = (path, moves.last_mut()) {
        last.cause = Cause::Approval;
    }
    Ok(MoveDecision::Apply(moves))
}

pub async fn request_transition(
    store: &Store,
    change: StageChange,
    caller: Caller,
) -> Result<TransitionOutcome> {
    write_tx!(store, |tx| -> TransitionOutcome {
        let name = change.model.as_str();
        // The model lock makes "read production version, then move" one step, so
        // racing promotions of one model serialize and exactly one production remains.
        let model = lock_existing(tx, name).await?;
        let current = tx
            .fetch_version(name, change.version)
            .await?
            .ok_or_else(|| version_not_found(name, &change.version.to_string()))?;
        check_etag(
            change.etag,
            current.revision,
            "version",
            &format!("{name}/{}", change.version),
        )?;
        let moves =
            match decide_move(tx, &model, &current, change.target, MovePath::Request).await? {
                MoveDecision::Apply(moves) => moves,
                MoveDecision::NeedsApproval(judgement) => {
                    let ask = Ask {
                        to: change.target,
                        rollback: false,
                        comment: &change.comment,
                        judgement,
                    };
                    let opened = open_request(tx, &model, &current, &caller.actor, ask).await?;
                    return pending(tx, &caller.actor, opened).await;
                }
            };
        let events = apply_moves(tx, name, &moves, &change.comment, json!({}), "", None).await?;
        let seq = append_events(tx, &caller.actor, events).await?;
        let version = tx
            .fetch_version(name, change.version)
            .await?
            .ok_or_else(|| vanished("version"))?;
        Ok((TransitionOutcome::Applied(version), Some(seq)))
    })
}

/// The moves of a rollback to `target`: the current production version (if
/// another) is archived, the target returns, both with cause ROLLBACK.
pub(crate) fn rollback_moves(target: &Version, production: i64) -> Vec<lifecycle::Move> {
    let mut moves = Vec::with_capacity(2);
    if production != 0 && production != target.version {
        moves.push(lifecycle::Move {
            version: production,
            from: Stage::Production,
            to: Stage::Archived,
            cause: Cause::Rollback,
        });
    }
    moves.push(lifecycle::Move {
        version: target.version,
        from: target.stage,
        to: Stage::Production,
        cause: Cause::Rollback,
    });
    moves
}

pub async fn rollback(store: &Store, order: RollbackOrder) -> Result<TransitionOutcome> {
    write_tx!(store, |tx| -> TransitionOutcome {
        let name = order.model.as_str();
        let model = lock_existing(tx, name).await?;
        let Some(production) = tx.production_version(name).await? else {
            return Err(Error::precondition(
                "NO_PRODUCTION_VERSION",
                name,
                format!("model {name:?} has no production version to roll back"),
            ));
        };
        let history = tx.stage_history(name).await?;
        let target = if order.version != 0 {
            let v = order.version;
            if tx.fetch_version(name, v).await?.is_none() {
                return Err(version_not_found(name, &v.to_string()));
            }
            if v == production {
                return Err(Error::precondition(
                    "ROLLBACK_TARGET",
                    format!("{name}/{v}"),
                    format!("version {v} is already in production"),
                ));
            }
            if !domain::was_in_production(&history, v) {
                return Err(Error::precondition(
                    "ROLLBACK_TARGET",
                    format!("{name}/{v}"),
                    format!(
                        "version {v} of model {name:?} has never been in production; rollback returns to a version that was (promote new versions with TransitionStage)"
                    ),
                ));
            }
            v
        } else {
            domain::rollback_target(&history, production).ok_or_else(|| {
                Error::precondition(
                    "NO_ROLLBACK_TARGET",
                    name,
                    format!(
                        "model {name:?} has no earlier production version to roll back to (versions already rolled back from are skipped); name one with version"
                    ),
                )
            })?
        };
        let version = tx
            .fetch_version(name, target)
            .await?
            .ok_or_else(|| vanished("version"))?;
        if version.stage == Stage::None {
            return Err(Error::Internal(format!(
                "version {target} was in production but is in stage NONE"
            )));
        }
        let moves =
            match decide_move(tx, &model, &version, Stage::Production, MovePath::Rollback).await? {
                MoveDecision::Apply(moves) => moves,
                MoveDecision::NeedsApproval(judgement) => {
                    let ask = Ask {
                        to: Stage::Production,
                        rollback: true,
                        comment: &order.reason,
                        judgement,
                    };
                    let actor = &order.caller.actor;
                    let opened = open_request(tx, &model, &version, actor, ask).await?;
                    return pending(tx, actor, opened).await;
                }
            };
        let details = json!({"rolled_back_from": production, "rolled_back_to": target});
        let events = apply_moves(tx, name, &moves, &order.reason, details, "", None).await?;
        let seq = append_events(tx, &order.caller.actor, events).await?;
        let version = tx
            .fetch_version(name, target)
            .await?
            .ok_or_else(|| vanished("version"))?;
        Ok((TransitionOutcome::Applied(version), Some(seq)))
    })
}
