//! Each change of the registry as one transaction, written once for every
//! backend: lock what the change depends on, check, apply, append the events,
//! commit, wake watchers. The rules themselves come from [`crate::domain::lifecycle`];
//! the statements from the backend's [`Tx`].

use std::collections::HashMap;

use serde_json::json;

use super::{ChainReport, Db, ModelFilter, RequestCursor, StoredRequest, Tx, VersionRef};
use crate::domain::audit::{ChainVerifier, event_hash, sha256_hex};
use crate::domain::evaluation;
use crate::domain::lifecycle;
use crate::domain::{
    self, GateInputs, GateResult, LiveMetricAction, Policy, RequestStatus, TransitionRequest,
};
use crate::domain::{
    Actor, AliasName, Cause, CompareRequest, Comparison, Deployment, Evaluation, EvaluationSet,
    Event, EventFilter, EventKind, LiveObservation, Model, ModelUpdate, Name, NewDeployment,
    NewEvaluation, NewEvent, NewModel, NewVersion, SetRef, Stage, StageChange, Version,
    WorkerFailure, etag, human_duration, now_micros, rfc3339,
};
use crate::error::{Error, Result};

fn model_not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.Model",
        name: name.to_owned(),
    }
}

fn version_not_found(model: &str, which: &str) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.ModelVersion",
        name: format!("{model}/{which}"),
    }
}

fn alias_not_found(model: &str, alias: &str) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.Alias",
        name: format!("{model}@{alias}"),
    }
}

fn vanished(what: &str) -> Error {
    Error::Internal(format!("{what} vanished inside its own transaction"))
}

fn check_etag(expected: Option<i64>, actual: i64, kind: &str, subject: &str) -> Result<()> {
    match expected {
        Some(e) if e != actual => Err(Error::precondition(
            "ETAG",
            subject,
            format!(
                "the {kind} {subject} has changed since it was read: etag {} is stale, the current etag is {}; read it again and retry",
                etag(e),
                etag(actual)
            ),
        )),
        _ => Ok(()),
    }
}

/// The key a request id is stored under: AIP-155 scopes request ids to the
/// principal, so one caller can never claim (or replay) another's id.
fn scoped_request_id(actor: &Actor, request_id: &str) -> String {
    format!("{}\u{1f}{request_id}", actor.0)
}

/// Looks up an earlier request of `actor` with this id: `Some` for a retry of
/// the same request, an error for a different request reusing the id.
async fn find_retry<T: Tx>(
    tx: &mut T,
    method: &str,
    actor: &Actor,
    request_id: &str,
    fingerprint: &str,
) -> Result<Option<StoredRequest>> {
    match tx
        .find_request(method, &scoped_request_id(actor, request_id))
        .await?
    {
        Some(stored) if stored.fingerprint != fingerprint => Err(Error::invalid(
            "request_id",
            format!(
                "{request_id:?} was already used for a different {method} request; use a new request id for a new request"
            ),
        )),
        other => Ok(other),
    }
}

/// Records the first answer to `actor`'s request id, for [`find_retry`].
async fn remember_request<T: Tx>(
    tx: &mut T,
    method: &str,
    actor: &Actor,
    request_id: &str,
    stored: &StoredRequest,
) -> Result<()> {
    tx.remember_request(method, &scoped_request_id(actor, request_id), stored)
        .await
}

/// Appends events with the next sequences and chained hashes; returns the
/// last sequence. Runs last in each transaction: the log head stays locked
/// from here to commit, so sequences commit in order and never show a gap.
async fn append_events<T: Tx>(tx: &mut T, actor: &Actor, events: Vec<NewEvent>) -> Result<u64> {
    let (mut sequence, mut prev_hash) = tx.log_head().await?;
    let now = now_micros();
    let mut chained = Vec::with_capacity(events.len());
    for ne in events {
        sequence += 1;
        let mut e = Event {
            sequence,
            kind: ne.kind,
            model: ne.model,
            version: ne.version,
            from_stage: ne.from_stage,
            to_stage: ne.to_stage,
            cause: ne.cause,
            actor: actor.0.clone(),
            comment: ne.comment,
            occur_time: now,
            details: ne.details,
            transition_request_id: ne.transition_request_id,
            prev_hash,
            hash: String::new(),
        };
        e.hash = event_hash(&e);
        prev_hash = e.hash.clone();
        chained.push(e);
    }
    tx.insert_events(&chained).await?;
    tx.set_log_head(sequence, &prev_hash).await?;
    Ok(sequence)
}

/// Appends the events of a model-level change and reads the model back as
/// the transaction left it.
async fn finish_with_model<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    events: Vec<NewEvent>,
    name: &str,
) -> Result<(Model, Option<u64>)> {
    let seq = append_events(tx, actor, events).await?;
    let model = tx
        .fetch_model(name)
        .await?
        .ok_or_else(|| vanished("model"))?;
    Ok((model, Some(seq)))
}

/// Splits one extra row off a page read with `limit + 1`: the page, and
/// whether more rows follow.
fn page<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

/// Types a write closure for [`Db::write`]: the closure gets the open
/// transaction and returns its result with the last sequence it appended.
fn job<T, R, F>(f: F) -> F
where
    F: for<'t> FnOnce(&'t mut T) -> super::WriteFuture<'t, R>,
{
    f
}

fn stage_event(
    model: &str,
    mv: &lifecycle::Move,
    comment: String,
    details: serde_json::Value,
) -> NewEvent {
    NewEvent {
        kind: EventKind::StageChanged,
        model: model.to_owned(),
        version: mv.version,
        from_stage: Some(mv.from),
        to_stage: Some(mv.to),
        cause: Some(mv.cause),
        comment,
        details,
        transition_request_id: String::new(),
    }
}

// ---- models -----------------------------------------------------------------

pub async fn create_model<D: Db>(db: &D, new: NewModel, actor: Actor) -> Result<Model> {
    db.write(job(move |tx| Box::pin(create_model_in(tx, new, actor))))
        .await
}

async fn create_model_in<T: Tx>(
    tx: &mut T,
    new: NewModel,
    actor: Actor,
) -> Result<(Model, Option<u64>)> {
    let name = new.name.as_str();
    tx.lock_key(&format!("model:{name}")).await?;
    let fingerprint = sha256_hex(
        json!({"name": name, "description": new.description, "tags": new.tags, "policy": new.policy})
            .to_string()
            .as_bytes(),
    );
    if let Some(request_id) = &new.request_id
        && let Some(stored) =
            find_retry(tx, "CreateModel", &actor, request_id, &fingerprint).await?
    {
        return tx
            .fetch_model(&stored.model)
            .await?
            .ok_or_else(|| model_not_found(&stored.model))
            .map(|v| (v, None));
    }
    let policy = new.policy.clone().unwrap_or_default();
    check_policy(tx, &policy).await?;
    let now = now_micros();
    let model = Model {
        name: name.to_owned(),
        description: new.description.clone(),
        tags: new.tags.clone(),
        policy: policy.clone(),
        revision: 1,
        latest_version: 0,
        production_version: 0,
        aliases: Default::default(),
        created_by: actor.0.clone(),
        create_time: now,
        update_time: now,
        deployments: Vec::new(),
    };
    if !tx.insert_model(&model).await? {
        return Err(Error::AlreadyExists {
            kind: "modelreg.v1.Model",
            name: name.to_owned(),
        });
    }
    if let Some(request_id) = &new.request_id {
        let stored = StoredRequest {
            fingerprint,
            model: name.to_owned(),
            version: 0,
            response: None,
        };
        remember_request(tx, "CreateModel", &actor, request_id, &stored).await?;
    }
    let event = NewEvent::new(
        EventKind::ModelCreated,
        name,
        0,
        json!({"description": new.description, "tags": new.tags, "policy": policy.effective()}),
    );
    finish_with_model(tx, &actor, vec![event], name).await
}

pub async fn get_model<D: Db>(db: &D, name: &str) -> Result<Model> {
    db.fetch_model(name)
        .await?
        .ok_or_else(|| model_not_found(name))
}

pub async fn list_models<D: Db>(
    db: &D,
    filter: &ModelFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Model>, bool)> {
    Ok(page(db.list_models(filter, after, limit + 1).await?, limit))
}

pub async fn update_model<D: Db>(db: &D, update: ModelUpdate, actor: Actor) -> Result<Model> {
    db.write(job(move |tx| Box::pin(update_model_in(tx, update, actor))))
        .await
}

async fn update_model_in<T: Tx>(
    tx: &mut T,
    update: ModelUpdate,
    actor: Actor,
) -> Result<(Model, Option<u64>)> {
    let name = update.name.as_str();
    let current = tx
        .lock_model(name)
        .await?
        .ok_or_else(|| model_not_found(name))?;
    check_etag(update.etag, current.revision, "model", name)?;
    let mut before = serde_json::Map::new();
    let mut after = serde_json::Map::new();
    let mut next = current.clone();
    if let Some(d) = update.description
        && d != current.description
    {
        before.insert("description".into(), json!(current.description));
        after.insert("description".into(), json!(d));
        next.description = d;
    }
    if let Some(t) = update.tags
        && t != current.tags
    {
        before.insert("tags".into(), json!(current.tags));
        after.insert("tags".into(), json!(t));
        next.tags = t;
    }
    if let Some(p) = update.policy
        && p != current.policy
    {
        check_policy(tx, &p).await?;
        before.insert("policy".into(), json!(current.policy.effective()));
        after.insert("policy".into(), json!(p.effective()));
        next.policy = p;
    }
    if after.is_empty() {
        // Nothing changes: no write, no event, same etag.
        return Ok((current, None));
    }
    next.update_time = now_micros();
    tx.update_model(&next).await?;
    let event = NewEvent::new(
        EventKind::ModelUpdated,
        name,
        0,
        json!({"before": before, "after": after}),
    );
    finish_with_model(tx, &actor, vec![event], name).await
}

// ---- versions ---------------------------------------------------------------

/// What RegisterVersion did.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The version (in its target stage, or in NONE while a request waits).
    pub version: Version,
    /// The request opened because the target stage needs approval.
    pub request: Option<TransitionRequest>,
}

pub async fn register_version<D: Db>(db: &D, new: NewVersion, actor: Actor) -> Result<Registered> {
    db.write(job(move |tx| Box::pin(register_version_in(tx, new, actor))))
        .await
}

async fn register_version_in<T: Tx>(
    tx: &mut T,
    new: NewVersion,
    actor: Actor,
) -> Result<(Registered, Option<u64>)> {
    let model = new.model.as_str();
    // The model lock serializes registrations of one model, so version numbers
    // and request-id checks never race.
    let current = tx.lock_model(model).await?;
    let fingerprint = format!("{model}:{}", new.fingerprint());
    if let Some(request_id) = &new.request_id
        && let Some(stored) =
            find_retry(tx, "RegisterVersion", &actor, request_id, &fingerprint).await?
    {
        return registered_before(tx, &stored).await.map(|r| (r, None));
    }
    let current = current.ok_or_else(|| model_not_found(model))?;
    let number = current.latest_version + 1;
    let now = now_micros();
    let mut version = Version {
        model: model.to_owned(),
        version: number,
        artifact_uri: new.artifact_uri.clone(),
        artifact_digest: new.artifact_digest.clone(),
        source: new.source.clone(),
        training_metrics: new.training_metrics.clone(),
        tags: new.tags.clone(),
        description: new.description.clone(),
        stage: Stage::None,
        aliases: Vec::new(),
        revision: 1,
        created_by: actor.0.clone(),
        create_time: now,
        update_time: now,
        stage_update_time: now,
        evaluations: Vec::new(),
        deployments: Vec::new(),
    };
    // Registering straight into a stage is the NONE→stage move, decided by
    // the same rule as every other move (approval, gates).
    let decision = match new.target_stage {
        Stage::None => MoveDecision::Apply(Vec::new()),
        target => decide_move(tx, &current, &version, target).await?,
    };
    if let MoveDecision::Apply(moves) = &decision
        && let Some(last) = moves.last()
    {
        version.stage = last.to;
    }
    tx.insert_version(&version).await?;
    let mut events = vec![NewEvent::new(
        EventKind::VersionRegistered,
        model,
        number,
        json!({
            "artifact_uri": new.artifact_uri,
            "artifact_digest": new.artifact_digest,
            "source": new.source,
            "training_metrics": new.training_metrics,
            "tags": new.tags,
        }),
    )];
    let request = match decision {
        MoveDecision::Apply(moves) => {
            for mv in moves {
                events.push(stage_event(model, &mv, String::new(), json!({})));
            }
            None
        }
        MoveDecision::NeedsApproval(judgement) => {
            let ask = Ask {
                to: new.target_stage,
                rollback: false,
                comment: "",
                judgement,
            };
            let (request, event) = open_request(tx, &current, &version, &actor, ask).await?;
            events.extend(event);
            Some(request)
        }
    };
    if let Some(request_id) = &new.request_id {
        let stored = StoredRequest {
            fingerprint,
            model: model.to_owned(),
            version: number,
            response: request.as_ref().map(|r| r.number.to_string()),
        };
        remember_request(tx, "RegisterVersion", &actor, request_id, &stored).await?;
    }
    let seq = append_events(tx, &actor, events).await?;
    // Just inserted: no aliases, no evaluations; nothing to read back.
    Ok((Registered { version, request }, Some(seq)))
}

/// The answer to a retried registration: the version and the request it
/// opened, both as they are now.
async fn registered_before<T: Tx>(tx: &mut T, stored: &StoredRequest) -> Result<Registered> {
    let version = tx
        .fetch_version(&stored.model, stored.version)
        .await?
        .ok_or_else(|| version_not_found(&stored.model, &stored.version.to_string()))?;
    let request = match stored.response.as_deref().map(str::parse::<i64>) {
        Some(Ok(number)) => tx.fetch_request(&stored.model, number).await?,
        _ => None,
    };
    Ok(Registered { version, request })
}

pub async fn get_version<D: Db>(db: &D, model: &str, which: &VersionRef) -> Result<Version> {
    let number = match which {
        VersionRef::Number(n) => *n,
        VersionRef::Alias(alias) => match db.alias_target(model, alias.as_str()).await? {
            Some(n) => n,
            None => {
                get_model(db, model).await?;
                return Err(alias_not_found(model, alias.as_str()));
            }
        },
    };
    match db.fetch_version(model, number).await? {
        Some(v) => Ok(v),
        None => {
            get_model(db, model).await?;
            Err(version_not_found(model, &number.to_string()))
        }
    }
}

pub async fn list_versions<D: Db>(
    db: &D,
    model: &str,
    stage: Option<Stage>,
    after: i64,
    limit: usize,
) -> Result<(Vec<Version>, bool)> {
    let versions = db.list_versions(model, stage, after, limit + 1).await?;
    if versions.is_empty() {
        // An unknown model is NOT_FOUND, not an empty page.
        get_model(db, model).await?;
    }
    Ok(page(versions, limit))
}

// ---- aliases ----------------------------------------------------------------

pub async fn set_alias<D: Db>(
    db: &D,
    model: Name,
    alias: AliasName,
    version: i64,
    actor: Actor,
) -> Result<Model> {
    db.write(job(move |tx| {
        Box::pin(set_alias_in(tx, model, alias, version, actor))
    }))
    .await
}

async fn set_alias_in<T: Tx>(
    tx: &mut T,
    model: Name,
    alias: AliasName,
    version: i64,
    actor: Actor,
) -> Result<(Model, Option<u64>)> {
    let name = model.as_str();
    let current = tx
        .lock_model(name)
        .await?
        .ok_or_else(|| model_not_found(name))?;
    if tx.fetch_version(name, version).await?.is_none() {
        return Err(version_not_found(name, &version.to_string()));
    }
    let previous = current.aliases.get(alias.as_str()).copied();
    if previous == Some(version) {
        return Ok((current, None));
    }
    let now = now_micros();
    tx.upsert_alias(name, alias.as_str(), version).await?;
    tx.touch_model(name, now).await?;
    tx.touch_version(name, version, now).await?;
    if let Some(prev) = previous {
        tx.touch_version(name, prev, now).await?;
    }
    let event = NewEvent::new(
        EventKind::AliasSet,
        name,
        version,
        json!({"alias": alias.as_str(), "previous_version": previous.unwrap_or(0)}),
    );
    finish_with_model(tx, &actor, vec![event], name).await
}

pub async fn delete_alias<D: Db>(
    db: &D,
    model: Name,
    alias: AliasName,
    actor: Actor,
) -> Result<Model> {
    db.write(job(move |tx| {
        Box::pin(delete_alias_in(tx, model, alias, actor))
    }))
    .await
}

async fn delete_alias_in<T: Tx>(
    tx: &mut T,
    model: Name,
    alias: AliasName,
    actor: Actor,
) -> Result<(Model, Option<u64>)> {
    let name = model.as_str();
    let current = tx
        .lock_model(name)
        .await?
        .ok_or_else(|| model_not_found(name))?;
    let Some(version) = current.aliases.get(alias.as_str()).copied() else {
        return Err(alias_not_found(name, alias.as_str()));
    };
    let now = now_micros();
    tx.remove_alias(name, alias.as_str()).await?;
    tx.touch_model(name, now).await?;
    tx.touch_version(name, version, now).await?;
    let event = NewEvent::new(
        EventKind::AliasDeleted,
        name,
        version,
        json!({"alias": alias.as_str()}),
    );
    finish_with_model(tx, &actor, vec![event], name).await
}

// ---- stages -----------------------------------------------------------------

/// Who asks for a change, with the one role the store itself must know.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Recorded as the actor of every event.
    pub actor: Actor,
    /// Admins may cancel anyone's request.
    pub admin: bool,
}

/// What TransitionStage or Rollback did.
#[derive(Debug, Clone)]
pub enum TransitionOutcome {
    /// The move was applied.
    Applied(Version),
    /// A request waits for approval.
    Pending(TransitionRequest),
}

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

fn request_not_found(model: &str, number: i64) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.TransitionRequest",
        name: format!("{model}:{number}"),
    }
}

/// Checks a policy against the evaluation set it names.
async fn check_policy<T: Tx>(tx: &mut T, policy: &Policy) -> Result<()> {
    let set = match &policy.standard_evaluation_set {
        Some(r) => Some(tx.fetch_evaluation_set(r).await?.ok_or_else(|| {
            Error::invalid(
                "policy.standard_evaluation_set",
                format!("evaluation set {r} does not exist; create it first"),
            )
        })?),
        None => None,
    };
    domain::check_policy_against_set("policy", policy, set.as_ref())
}

/// What the gates and a notification need to know about a candidate.
struct Judgement {
    /// One result per check.
    results: Vec<GateResult>,
    /// The comparison with production on the standard set, if one was possible.
    comparison: Option<Comparison>,
}

/// Compares two versions on `set` with the evaluator version both share.
fn compare_on(
    model: &str,
    set: &EvaluationSet,
    candidate: &Version,
    baseline: &Version,
) -> Result<Comparison> {
    let on_set = |v: &Version| -> Vec<Evaluation> {
        v.evaluations
            .iter()
            .filter(|e| e.set == set.id)
            .cloned()
            .collect()
    };
    let (cand, base) = (on_set(candidate), on_set(baseline));
    let evaluator = evaluation::choose_evaluator(
        model,
        (candidate.version, &cand),
        (baseline.version, &base),
        &set.id.to_string(),
        None,
    )?;
    let pick = |evals: &[Evaluation]| {
        evals
            .iter()
            .rev()
            .find(|e| e.evaluator_version == evaluator)
            .cloned()
            .ok_or_else(|| vanished("evaluation"))
    };
    evaluation::compare(set, &pick(&cand)?, &pick(&base)?)
}

/// Runs the model's gates on `candidate` against today's production version.
async fn judge<T: Tx>(tx: &mut T, model: &Model, candidate: &Version) -> Result<Judgement> {
    let name = model.name.as_str();
    let set = match &model.policy.standard_evaluation_set {
        Some(r) => tx.fetch_evaluation_set(r).await?,
        None => None,
    };
    let production = match tx.production_version(name).await? {
        Some(n) if n != candidate.version => Some(
            tx.fetch_version(name, n)
                .await?
                .ok_or_else(|| vanished("production version"))?,
        ),
        _ => None,
    };
    judge_with(model, set.as_ref(), production.as_ref(), candidate)
}

/// The gates' verdict on `candidate` given the standard set and the current
/// production version (None when there is none, or it is the candidate).
fn judge_with(
    model: &Model,
    set: Option<&EvaluationSet>,
    production: Option<&Version>,
    candidate: &Version,
) -> Result<Judgement> {
    let name = model.name.as_str();
    let comparison = match (set, production) {
        (Some(set), Some(prod)) => match compare_on(name, set, candidate, prod) {
            Ok(c) => Ok(c),
            Err(Error::FailedPrecondition(v)) => Err(v
                .into_iter()
                .map(|v| v.description)
                .collect::<Vec<_>>()
                .join("; ")),
            Err(other) => return Err(other),
        },
        _ => Err("no other version is in production".to_owned()),
    };
    let candidate_evaluation = set.and_then(|s| domain::latest_on(&candidate.evaluations, &s.id));
    let results = domain::run_gates(
        &model.policy,
        &GateInputs {
            set,
            candidate: candidate.version,
            candidate_evaluation,
            production: production.map_or(0, |p| p.version),
            comparison: comparison.as_ref().map_err(Clone::clone),
        },
    );
    Ok(Judgement {
        results,
        comparison: comparison.ok(),
    })
}

/// Refuses with every failed check, if any failed.
fn require_gates(model: &str, version: i64, results: &[GateResult]) -> Result<()> {
    let failed = domain::failures(&format!("{model}/{version}"), results);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(failed))
    }
}

/// Applies planned moves and closes the pending requests of every moved
/// version (except `keep`, the request being approved); returns the events.
async fn apply_moves<T: Tx>(
    tx: &mut T,
    model: &str,
    moves: &[lifecycle::Move],
    comment: &str,
    details: serde_json::Value,
    request_id: &str,
    keep: Option<i64>,
) -> Result<Vec<NewEvent>> {
    let now = now_micros();
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
fn requested_event(
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

fn comparison_json(c: &Comparison) -> serde_json::Value {
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
struct Ask<'a> {
    /// The stage the version should enter.
    to: Stage,
    /// Whether it is a rollback.
    rollback: bool,
    /// The requester's comment (the reason, for a rollback).
    comment: &'a str,
    /// The gates' verdict at request time.
    judgement: Judgement,
}

/// Opens a request and appends its event: the outcome of a move that waits.
async fn pending<T: Tx>(
    tx: &mut T,
    model: &Model,
    version: &Version,
    actor: &Actor,
    ask: Ask<'_>,
) -> Result<(TransitionOutcome, Option<u64>)> {
    let (request, event) = open_request(tx, model, version, actor, ask).await?;
    let seq = match event {
        Some(event) => Some(append_events(tx, actor, vec![event]).await?),
        None => None,
    };
    Ok((TransitionOutcome::Pending(request), seq))
}

/// Creates a pending request (or returns the identical pending one) and the
/// TRANSITION_REQUESTED event the caller appends (none for the existing one).
async fn open_request<T: Tx>(
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
    let now = now_micros();
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

/// How a requested move is carried out.
enum MoveDecision {
    /// The move applies now: these moves, in order.
    Apply(Vec<lifecycle::Move>),
    /// The model's policy needs approval for the target stage: open a
    /// request carrying this verdict of the gates.
    NeedsApproval(Judgement),
}

/// The one answer to "applies now, needs approval, or refused by gates" for
/// moving `candidate` to `target`, asked by every path that moves a version
/// on someone's request (registration with a target stage, TransitionStage).
/// An illegal move and failing gates are errors, with every failed check.
async fn decide_move<T: Tx>(
    tx: &mut T,
    model: &Model,
    candidate: &Version,
    target: Stage,
) -> Result<MoveDecision> {
    let name = model.name.as_str();
    let production = tx.production_version(name).await?.unwrap_or(0);
    let moves =
        lifecycle::plan_transition(name, candidate.version, candidate.stage, target, production)?;
    let needs_approval = model.policy.needs_approval(target);
    if needs_approval || target == Stage::Production {
        // Gates guard every way into production and every governed stage.
        let judgement = judge(tx, model, candidate).await?;
        require_gates(name, candidate.version, &judgement.results)?;
        if needs_approval {
            return Ok(MoveDecision::NeedsApproval(judgement));
        }
    }
    Ok(MoveDecision::Apply(moves))
}

pub async fn request_transition<D: Db>(
    db: &D,
    change: StageChange,
    caller: Caller,
) -> Result<TransitionOutcome> {
    db.write(job(move |tx| {
        Box::pin(request_transition_in(tx, change, caller))
    }))
    .await
}

async fn request_transition_in<T: Tx>(
    tx: &mut T,
    change: StageChange,
    caller: Caller,
) -> Result<(TransitionOutcome, Option<u64>)> {
    let name = change.model.as_str();
    // The model lock makes "read production version, then move" one step, so
    // racing promotions of one model serialize and exactly one production remains.
    let model = tx
        .lock_model(name)
        .await?
        .ok_or_else(|| model_not_found(name))?;
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
    let moves = match decide_move(tx, &model, &current, change.target).await? {
        MoveDecision::Apply(moves) => moves,
        MoveDecision::NeedsApproval(judgement) => {
            let ask = Ask {
                to: change.target,
                rollback: false,
                comment: &change.comment,
                judgement,
            };
            return pending(tx, &model, &current, &caller.actor, ask).await;
        }
    };
    let events = apply_moves(tx, name, &moves, &change.comment, json!({}), "", None).await?;
    let seq = append_events(tx, &caller.actor, events).await?;
    let version = tx
        .fetch_version(name, change.version)
        .await?
        .ok_or_else(|| vanished("version"))?;
    Ok((TransitionOutcome::Applied(version), Some(seq)))
}

/// Locks the model and reads a request that must still be pending.
async fn pending_request<T: Tx>(
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

/// The moves of a rollback to `target`: the current production version (if
/// another) is archived, the target returns, both with cause ROLLBACK.
fn rollback_moves(target: &Version, production: i64) -> Vec<lifecycle::Move> {
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

pub async fn approve<D: Db>(db: &D, decision: Decision) -> Result<(TransitionRequest, Version)> {
    db.write(job(move |tx| Box::pin(approve_in(tx, decision))))
        .await
}

async fn approve_in<T: Tx>(
    tx: &mut T,
    decision: Decision,
) -> Result<((TransitionRequest, Version), Option<u64>)> {
    let name = decision.model.as_str();
    let (model, mut request) = pending_request(tx, name, decision.number, "approved").await?;
    let approver = decision.caller.actor.0.clone();
    let id = request.id();
    if request.requester == approver && !model.policy.allow_self_approval() {
        return Err(Error::precondition(
            "SELF_APPROVAL",
            id.clone(),
            format!(
                "{approver} requested {id} and the policy of model {name:?} forbids approving one's own request; another approver must approve it"
            ),
        ));
    }
    if request.approvals.iter().any(|a| a.approver == approver) {
        return Err(Error::precondition(
            "DUPLICATE_APPROVAL",
            id.clone(),
            format!(
                "{approver} has already approved {id}; it needs {} distinct approvers",
                model.policy.min_approvals()
            ),
        ));
    }
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
    if !request.rollback {
        // Production may have changed since the request: judge again, today.
        let judgement = judge(tx, &model, &version).await?;
        require_gates(name, version.version, &judgement.results)?;
    }
    let now = now_micros();
    request.approvals.push(domain::Approval {
        approver: approver.clone(),
        comment: decision.comment.clone(),
        approve_time: now,
    });
    request.update_time = now;
    let needed = model.policy.min_approvals() as usize;
    let complete = request.approvals.len() >= needed;
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
        request.status = RequestStatus::Approved;
        request.resolved_by = approver;
        request.resolution_comment = decision.comment.clone();
        let production = tx.production_version(name).await?.unwrap_or(0);
        let moves = if request.rollback {
            rollback_moves(&version, production)
        } else {
            let mut moves = lifecycle::plan_transition(
                name,
                version.version,
                version.stage,
                request.to_stage,
                production,
            )?;
            if let Some(last) = moves.last_mut() {
                last.cause = Cause::Approval;
            }
            moves
        };
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
    tx.update_request(&request).await?;
    let seq = append_events(tx, &decision.caller.actor, events).await?;
    let version = tx
        .fetch_version(name, request.version)
        .await?
        .ok_or_else(|| vanished("version"))?;
    Ok(((request, version), Some(seq)))
}

pub async fn close_request<D: Db>(
    db: &D,
    decision: Decision,
    status: RequestStatus,
) -> Result<(TransitionRequest, Version)> {
    db.write(job(move |tx| {
        Box::pin(close_request_in(tx, decision, status))
    }))
    .await
}

async fn close_request_in<T: Tx>(
    tx: &mut T,
    decision: Decision,
    status: RequestStatus,
) -> Result<((TransitionRequest, Version), Option<u64>)> {
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
    if status == RequestStatus::Cancelled && who != request.requester && !decision.caller.admin {
        return Err(Error::PermissionDenied(format!(
            "only the requester ({}) or an admin may cancel {}; {who} is neither",
            request.requester,
            request.id()
        )));
    }
    let now = now_micros();
    request.status = status;
    request.resolved_by = who;
    request.resolution_comment = decision.comment.clone();
    request.update_time = now;
    tx.update_request(&request).await?;
    tx.touch_version(name, request.version, now).await?;
    let mut event = NewEvent::new(
        kind,
        name,
        request.version,
        json!({"request_id": request.id(), "requester": request.requester, "to_stage": request.to_stage.as_str()}),
    );
    event.comment = decision.comment;
    event.transition_request_id = request.id();
    let seq = append_events(tx, &decision.caller.actor, vec![event]).await?;
    let version = tx
        .fetch_version(name, request.version)
        .await?
        .ok_or_else(|| vanished("version"))?;
    Ok(((request, version), Some(seq)))
}

pub async fn list_requests<D: Db>(
    db: &D,
    model: Option<&str>,
    status: Option<RequestStatus>,
    after: Option<RequestCursor>,
    limit: usize,
) -> Result<(Vec<TransitionRequest>, bool)> {
    if let Some(m) = model {
        get_model(db, m).await?;
    }
    Ok(page(
        db.list_requests(model, status, after, limit + 1).await?,
        limit,
    ))
}

pub async fn rollback<D: Db>(db: &D, order: RollbackOrder) -> Result<TransitionOutcome> {
    db.write(job(move |tx| Box::pin(rollback_in(tx, order))))
        .await
}

async fn rollback_in<T: Tx>(
    tx: &mut T,
    order: RollbackOrder,
) -> Result<(TransitionOutcome, Option<u64>)> {
    let name = order.model.as_str();
    let model = tx
        .lock_model(name)
        .await?
        .ok_or_else(|| model_not_found(name))?;
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
    if model.policy.rollback_requires_approval() {
        let ask = Ask {
            to: Stage::Production,
            rollback: true,
            comment: &order.reason,
            // Rollback is the way back from a bad release: no gates.
            judgement: Judgement {
                results: Vec::new(),
                comparison: None,
            },
        };
        return pending(tx, &model, &version, &order.caller.actor, ask).await;
    }
    let moves = rollback_moves(&version, production);
    let details = json!({"rolled_back_from": production, "rolled_back_to": target});
    let events = apply_moves(tx, name, &moves, &order.reason, details, "", None).await?;
    let seq = append_events(tx, &order.caller.actor, events).await?;
    let version = tx
        .fetch_version(name, target)
        .await?
        .ok_or_else(|| vanished("version"))?;
    Ok((TransitionOutcome::Applied(version), Some(seq)))
}

// ---- evaluations ------------------------------------------------------------

fn set_not_found(set: &SetRef) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.EvaluationSet",
        name: set.to_string(),
    }
}

pub async fn create_evaluation_set<D: Db>(
    db: &D,
    set: EvaluationSet,
    actor: Actor,
) -> Result<EvaluationSet> {
    db.write(job(move |tx| {
        Box::pin(create_evaluation_set_in(tx, set, actor))
    }))
    .await
}

async fn create_evaluation_set_in<T: Tx>(
    tx: &mut T,
    mut set: EvaluationSet,
    actor: Actor,
) -> Result<(EvaluationSet, Option<u64>)> {
    tx.lock_key(&format!("evaluation-set:{}", set.id)).await?;
    if let Some(existing) = tx.fetch_evaluation_set(&set.id).await? {
        // Immutable: the same content again is a retry, anything else a conflict.
        return if existing.same_content(&set) {
            Ok((existing, None))
        } else {
            Err(Error::AlreadyExists {
                kind: "modelreg.v1.EvaluationSet",
                name: set.id.to_string(),
            })
        };
    }
    set.created_by = actor.0.clone();
    set.create_time = now_micros();
    tx.insert_evaluation_set(&set).await?;
    let event = NewEvent::new(
        EventKind::EvaluationSetCreated,
        "",
        0,
        json!({
            "evaluation_set": {"name": set.id.name, "version": set.id.version},
            "uri": set.uri,
            "digest": set.digest,
            "metrics": set.metrics,
        }),
    );
    let seq = append_events(tx, &actor, vec![event]).await?;
    Ok((set, Some(seq)))
}

pub async fn get_evaluation_set<D: Db>(db: &D, set: &SetRef) -> Result<EvaluationSet> {
    db.fetch_evaluation_set(set)
        .await?
        .ok_or_else(|| set_not_found(set))
}

pub async fn list_evaluation_sets<D: Db>(
    db: &D,
    name: Option<&str>,
    after: Option<&SetRef>,
    limit: usize,
) -> Result<(Vec<EvaluationSet>, bool)> {
    Ok(page(
        db.list_evaluation_sets(name, after, limit + 1).await?,
        limit,
    ))
}

pub async fn attach_evaluation<D: Db>(
    db: &D,
    new: NewEvaluation,
    actor: Actor,
) -> Result<Evaluation> {
    db.write(job(move |tx| {
        Box::pin(attach_evaluation_in(tx, new, actor))
    }))
    .await
}

async fn attach_evaluation_in<T: Tx>(
    tx: &mut T,
    new: NewEvaluation,
    actor: Actor,
) -> Result<(Evaluation, Option<u64>)> {
    let mut e = new.evaluation;
    if tx.lock_model(&e.model).await?.is_none() {
        return Err(model_not_found(&e.model));
    }
    let fingerprint = sha256_hex(
        json!([
            e.model,
            e.version,
            e.set.name,
            e.set.version,
            e.evaluator_version,
            e.metrics,
            e.report_uri
        ])
        .to_string()
        .as_bytes(),
    );
    if let Some(request_id) = &new.request_id
        && let Some(stored) =
            find_retry(tx, "AttachEvaluation", &actor, request_id, &fingerprint).await?
    {
        return tx
            .fetch_evaluation(&stored.model, stored.version, &e.set, &e.evaluator_version)
            .await?
            .ok_or_else(|| vanished("evaluation"))
            .map(|v| (v, None));
    }
    if tx.fetch_version(&e.model, e.version).await?.is_none() {
        return Err(version_not_found(&e.model, &e.version.to_string()));
    }
    let set = tx
        .fetch_evaluation_set(&e.set)
        .await?
        .ok_or_else(|| set_not_found(&e.set))?;
    evaluation::check_reported("metrics", &set, &e.metrics)?;
    if let Some(existing) = tx
        .fetch_evaluation(&e.model, e.version, &e.set, &e.evaluator_version)
        .await?
    {
        // Immutable: one result per version, set version and evaluator version.
        return if existing.same_content(&e) {
            Ok((existing, None))
        } else {
            Err(Error::AlreadyExists {
                kind: "modelreg.v1.Evaluation",
                name: format!(
                    "{}/{} on {} by evaluator {}",
                    e.model, e.version, e.set, e.evaluator_version
                ),
            })
        };
    }
    e.created_by = actor.0.clone();
    e.create_time = now_micros();
    tx.insert_evaluation(&e).await?;
    if let Some(request_id) = &new.request_id {
        let stored = StoredRequest {
            fingerprint,
            model: e.model.clone(),
            version: e.version,
            response: None,
        };
        remember_request(tx, "AttachEvaluation", &actor, request_id, &stored).await?;
    }
    tx.touch_version(&e.model, e.version, e.create_time).await?;
    let event = NewEvent::new(
        EventKind::EvaluationAttached,
        &e.model,
        e.version,
        json!({
            "evaluation_set": {"name": e.set.name, "version": e.set.version},
            "evaluator_version": e.evaluator_version,
            "metrics": e.metrics,
            "report_uri": e.report_uri,
        }),
    );
    let seq = append_events(tx, &actor, vec![event]).await?;
    Ok((e, Some(seq)))
}

pub async fn list_evaluations<D: Db>(
    db: &D,
    model: &str,
    set: &SetRef,
    metric: Option<&str>,
    after: Option<(i64, String)>,
    limit: usize,
) -> Result<(Vec<Evaluation>, bool)> {
    get_model(db, model).await?;
    let defined = get_evaluation_set(db, set).await?;
    if let Some(metric) = metric
        && !defined.metrics.iter().any(|m| m.name == metric)
    {
        return Err(Error::invalid(
            "metric",
            format!(
                "{:?} is not a metric of evaluation set {set}",
                crate::domain::truncate(metric, 64)
            ),
        ));
    }
    let (mut evaluations, more) = page(
        db.list_evaluations(model, set, after, limit + 1).await?,
        limit,
    );
    if let Some(metric) = metric {
        for e in &mut evaluations {
            e.metrics.retain(|k, _| k == metric);
        }
    }
    Ok((evaluations, more))
}

/// A comparison with the policy's gates judged on its candidate.
#[derive(Debug, Clone)]
pub struct JudgedComparison {
    /// The two versions, metric by metric, on the requested set.
    pub comparison: Comparison,
    /// The gates on the candidate, exactly as TransitionStage to PRODUCTION
    /// would judge them now (standard set, current production version).
    pub gate_results: Vec<GateResult>,
}

pub async fn compare<D: Db>(db: &D, req: &CompareRequest) -> Result<JudgedComparison> {
    let model = req.model.as_str();
    let current = get_model(db, model).await?;
    let baseline = match req.baseline {
        0 if current.production_version == 0 => {
            return Err(Error::precondition(
                "NO_PRODUCTION_VERSION",
                model,
                format!(
                    "model {model:?} has no production version to compare with; name a baseline_version"
                ),
            ));
        }
        0 => current.production_version,
        n => n,
    };
    let Some(set_ref) = req
        .set
        .clone()
        .or_else(|| current.policy.standard_evaluation_set.clone())
    else {
        return Err(Error::precondition(
            "NO_STANDARD_EVALUATION_SET",
            model,
            format!(
                "model {model:?} has no standard evaluation set in its policy; name one with evaluation_set"
            ),
        ));
    };
    let set = get_evaluation_set(db, &set_ref).await?;
    let mut versions = Vec::with_capacity(2);
    for v in [req.candidate, baseline] {
        versions.push(
            db.fetch_version(model, v)
                .await?
                .ok_or_else(|| version_not_found(model, &v.to_string()))?,
        );
    }
    let gate_results = gates_on(db, &current, &set, &versions[0]).await?;
    let evaluations = db.evaluations_of(model, &[req.candidate, baseline]).await?;
    let on_set = |v: i64| -> Vec<Evaluation> {
        evaluations
            .iter()
            .filter(|e| e.version == v && e.set == set_ref)
            .cloned()
            .collect()
    };
    let (cand, base) = (on_set(req.candidate), on_set(baseline));
    let evaluator = evaluation::choose_evaluator(
        model,
        (req.candidate, &cand),
        (baseline, &base),
        &set_ref.to_string(),
        req.evaluator_version.as_deref(),
    )?;
    let pick = |evals: &[Evaluation]| {
        evals
            .iter()
            .find(|e| e.evaluator_version == evaluator)
            .cloned()
            .ok_or_else(|| vanished("evaluation"))
    };
    let comparison = evaluation::compare(&set, &pick(&cand)?, &pick(&base)?)?;
    Ok(JudgedComparison {
        comparison,
        gate_results,
    })
}

/// The gates' results on `candidate` by the same judgement TransitionStage
/// uses, read outside a transaction (`compared` is the set already read).
async fn gates_on<D: Db>(
    db: &D,
    model: &Model,
    compared: &EvaluationSet,
    candidate: &Version,
) -> Result<Vec<GateResult>> {
    let standard = match &model.policy.standard_evaluation_set {
        Some(r) if *r == compared.id => Some(compared.clone()),
        Some(r) => db.fetch_evaluation_set(r).await?,
        None => None,
    };
    let production = match model.production_version {
        0 => None,
        n if n == candidate.version => None,
        n => db.fetch_version(&model.name, n).await?,
    };
    Ok(judge_with(model, standard.as_ref(), production.as_ref(), candidate)?.results)
}

// ---- audit ------------------------------------------------------------------

/// Walks the whole chain, then checks `anchors` (sequence, hash) recorded
/// earlier: each must still be in the log with the same hash.
pub async fn verify_chain<D: Db>(db: &D, anchors: &[(u64, String)]) -> Result<ChainReport> {
    let wanted: HashMap<u64, &str> = anchors.iter().map(|(s, h)| (*s, h.as_str())).collect();
    let mut found: HashMap<u64, String> = HashMap::new();
    let mut verifier = ChainVerifier::default();
    let mut head = None;
    let mut after = 0u64;
    let all = EventFilter::default();
    loop {
        let page = db.events(&all, after, None, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.sequence;
        for e in &page {
            if !verifier.check(e) {
                let first_bad = verifier.first_bad.unwrap_or(e.sequence);
                return Ok(ChainReport {
                    ok: false,
                    checked: verifier.checked,
                    first_bad,
                    head: None,
                    problem: format!(
                        "event {first_bad}'s hash, link to the event before or sequence is wrong: \
                         the log was edited or rows were removed"
                    ),
                });
            }
            if wanted.contains_key(&e.sequence) {
                found.insert(e.sequence, e.hash.clone());
            }
            head = Some((e.sequence, e.hash.clone()));
        }
    }
    let mut report = ChainReport {
        ok: true,
        checked: verifier.checked,
        first_bad: 0,
        head,
        problem: String::new(),
    };
    let mut sorted: Vec<(u64, &str)> = wanted.into_iter().collect();
    sorted.sort_unstable();
    for (sequence, hash) in sorted {
        let problem = match found.get(&sequence) {
            Some(h) if h == hash => continue,
            Some(_) => format!(
                "anchor {sequence}: the event there has another hash now: the log up to it was \
                 rewritten"
            ),
            None => format!(
                "anchor {sequence}: the log ends at {}: events were cut from its end",
                report.head.as_ref().map_or(0, |h| h.0)
            ),
        };
        report.ok = false;
        report.first_bad = sequence;
        report.problem = problem;
        break;
    }
    Ok(report)
}

// ---- deployments, worker failures, live metrics -------------------------------

/// The first answer of an idempotent call, stored as JSON with its request id.
fn stored_response<T: serde::de::DeserializeOwned>(stored: &StoredRequest) -> Result<T> {
    let text = stored
        .response
        .as_deref()
        .ok_or_else(|| Error::Internal("a stored request without its response".into()))?;
    serde_json::from_str(text).map_err(|e| Error::Internal(format!("stored response: {e}")))
}

pub async fn report_deployment<D: Db>(
    db: &D,
    new: NewDeployment,
    actor: Actor,
) -> Result<Deployment> {
    db.write(job(move |tx| {
        Box::pin(report_deployment_in(tx, new, actor))
    }))
    .await
}

async fn report_deployment_in<T: Tx>(
    tx: &mut T,
    new: NewDeployment,
    actor: Actor,
) -> Result<(Deployment, Option<u64>)> {
    let name = new.model.as_str();
    if tx.lock_model(name).await?.is_none() {
        return Err(model_not_found(name));
    }
    let fingerprint = sha256_hex(
        json!([
            name,
            new.version,
            new.environment.as_str(),
            new.status.as_str(),
            new.endpoint,
            new.message
        ])
        .to_string()
        .as_bytes(),
    );
    if let Some(request_id) = &new.request_id
        && let Some(stored) =
            find_retry(tx, "ReportDeployment", &actor, request_id, &fingerprint).await?
    {
        // The deployment as first recorded, even if later reports moved it on.
        return Ok((stored_response(&stored)?, None));
    }
    if tx.fetch_version(name, new.version).await?.is_none() {
        return Err(version_not_found(name, &new.version.to_string()));
    }
    let now = now_micros();
    let deployment = Deployment {
        model: name.to_owned(),
        version: new.version,
        environment: new.environment.to_string(),
        status: new.status,
        endpoint: new.endpoint,
        message: new.message,
        reported_by: actor.0.clone(),
        report_time: now,
    };
    tx.upsert_deployment(&deployment).await?;
    tx.touch_version(name, deployment.version, now).await?;
    if let Some(request_id) = &new.request_id {
        let stored = StoredRequest {
            fingerprint,
            model: name.to_owned(),
            version: deployment.version,
            response: Some(
                serde_json::to_string(&deployment).map_err(crate::store::sql::json_err)?,
            ),
        };
        remember_request(tx, "ReportDeployment", &actor, request_id, &stored).await?;
    }
    let event = NewEvent::new(
        EventKind::DeploymentReported,
        name,
        deployment.version,
        json!({
            "environment": deployment.environment,
            "status": deployment.status.as_str(),
            "endpoint": deployment.endpoint,
            "message": deployment.message,
        }),
    );
    let seq = append_events(tx, &actor, vec![event]).await?;
    Ok((deployment, Some(seq)))
}

pub async fn report_worker_failure<D: Db>(
    db: &D,
    failure: WorkerFailure,
    actor: Actor,
) -> Result<Event> {
    db.write(job(move |tx| {
        Box::pin(report_worker_failure_in(tx, failure, actor))
    }))
    .await
}

async fn report_worker_failure_in<T: Tx>(
    tx: &mut T,
    f: WorkerFailure,
    actor: Actor,
) -> Result<(Event, Option<u64>)> {
    let name = f.model.as_str();
    if tx.lock_model(name).await?.is_none() {
        return Err(model_not_found(name));
    }
    let fingerprint = sha256_hex(
        json!([
            name,
            f.version,
            f.worker,
            f.event_sequence,
            f.error,
            f.attempts
        ])
        .to_string()
        .as_bytes(),
    );
    if let Some(request_id) = &f.request_id
        && let Some(stored) =
            find_retry(tx, "ReportWorkerFailure", &actor, request_id, &fingerprint).await?
    {
        let sequence: u64 = stored_response(&stored)?;
        let event = tx
            .fetch_event(sequence)
            .await?
            .ok_or_else(|| vanished("reported event"))?;
        return Ok((event, None));
    }
    if tx.fetch_version(name, f.version).await?.is_none() {
        return Err(version_not_found(name, &f.version.to_string()));
    }
    let (latest, _) = tx.log_head().await?;
    if f.event_sequence > latest {
        return Err(Error::invalid(
            "event_sequence",
            format!(
                "{} is beyond the end of the log (the latest sequence is {latest})",
                f.event_sequence
            ),
        ));
    }
    let event = NewEvent::new(
        EventKind::WorkerFailed,
        name,
        f.version,
        json!({
            "worker": f.worker,
            "event_sequence": f.event_sequence,
            "error": f.error,
            "attempts": f.attempts,
        }),
    );
    let seq = append_events(tx, &actor, vec![event]).await?;
    if let Some(request_id) = &f.request_id {
        let stored = StoredRequest {
            fingerprint,
            model: name.to_owned(),
            version: f.version,
            response: Some(seq.to_string()),
        };
        remember_request(tx, "ReportWorkerFailure", &actor, request_id, &stored).await?;
    }
    let event = tx
        .fetch_event(seq)
        .await?
        .ok_or_else(|| vanished("appended event"))?;
    Ok((event, Some(seq)))
}

pub async fn report_live_metric<D: Db>(db: &D, observation: LiveObservation) -> Result<()> {
    db.write(job(move |tx| {
        Box::pin(report_live_metric_in(tx, observation))
    }))
    .await
}

/// Stores an observation. No model lock and no event: observations are
/// facts about the outside world, not changes the log must order, and one
/// event each would flood it.
async fn report_live_metric_in<T: Tx>(tx: &mut T, o: LiveObservation) -> Result<((), Option<u64>)> {
    let name = o.model.as_str();
    if tx.fetch_version(name, o.version).await?.is_none() {
        return Err(match tx.fetch_model(name).await? {
            None => model_not_found(name),
            Some(_) => version_not_found(name, &o.version.to_string()),
        });
    }
    tx.upsert_observation(&o).await?;
    Ok(((), None))
}

// ---- the policy engine --------------------------------------------------------

/// What one policy tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Models looked at.
    pub models: usize,
    /// Versions archived by the archival rule.
    pub archived: usize,
    /// Breach episodes reported by the live monitor.
    pub breaches: usize,
    /// Rollbacks made by the live monitor.
    pub rollbacks: usize,
    /// Models whose rules failed to run (logged; retried next tick).
    pub failures: usize,
}

impl TickReport {
    fn add(&mut self, other: TickReport) {
        self.models += other.models;
        self.archived += other.archived;
        self.breaches += other.breaches;
        self.rollbacks += other.rollbacks;
        self.failures += other.failures;
    }
}

/// Models read per page by a tick.
const TICK_PAGE: usize = 500;

/// Runs the live monitor and the archival rule over every model, as at time
/// `now`. Each model is first judged on plain reads; only a model with
/// something to do gets a write, which locks it and judges again, so
/// replicas ticking at once never act twice. A model that fails is logged
/// and skipped; the next tick tries again.
pub async fn policy_tick<D: Db>(db: &D, now: i64) -> Result<TickReport> {
    let mut report = TickReport::default();
    let mut after: Option<String> = None;
    loop {
        let models = db
            .list_models(&ModelFilter::default(), after.as_deref(), TICK_PAGE)
            .await?;
        for model in &models {
            report.models += 1;
            match policy_for_model(db, model, now).await {
                Ok(r) => report.add(r),
                Err(e) => {
                    report.failures += 1;
                    tracing::warn!(model = %model.name, error = %e, "policy rules failed; retrying next tick");
                }
            }
        }
        match models.last() {
            Some(last) if models.len() == TICK_PAGE => after = Some(last.name.clone()),
            _ => return Ok(report),
        }
    }
}

async fn policy_for_model<D: Db>(db: &D, model: &Model, now: i64) -> Result<TickReport> {
    let mut report = TickReport::default();
    let name = model.name.clone();
    let archival = model.policy.archival();
    if model.production_version == 0 {
        return Ok(report);
    }
    // The live monitor first: a rollback changes which candidates are passed over.
    if let Some(rule) = &archival.live_metric
        && let Some(production) = db.production_since(&name).await?
    {
        let readings = db
            .live_readings(&name, production.version, rule, production.since, now)
            .await?;
        if let Some(breach) = rule.breach(&readings)
            && !db
                .breach_recorded(&name, production.version, &rule.metric, breach.bad_since)
                .await?
        {
            let model = name.clone();
            report.add(
                db.write(job(move |tx| Box::pin(live_monitor_in(tx, model, now))))
                    .await?,
            );
        }
    }
    let days = archival.archive_after_days();
    if days > 0
        && let Some(production) = db.production_since(&name).await?
    {
        let candidates = db.passed_over(&name, production.version).await?;
        if !domain::due_for_archival(days, &production, &candidates, now).is_empty() {
            let model = name.clone();
            report.add(
                db.write(job(move |tx| {
                    Box::pin(archive_passed_over_in(tx, model, now))
                }))
                .await?,
            );
        }
    }
    Ok(report)
}

/// The live monitor's write: under the model lock, judges the rule again
/// and reports a breach episode not reported yet, rolling back in the same
/// transaction when the rule says so and a target exists.
async fn live_monitor_in<T: Tx>(
    tx: &mut T,
    name: String,
    now: i64,
) -> Result<(TickReport, Option<u64>)> {
    let nothing = Ok((TickReport::default(), None));
    let Some(model) = tx.lock_model(&name).await? else {
        return nothing;
    };
    let Some(rule) = model.policy.archival().live_metric else {
        return nothing;
    };
    let Some(production) = tx.production_since(&name).await? else {
        return nothing;
    };
    let readings = tx
        .live_readings(&name, production.version, &rule, production.since, now)
        .await?;
    let Some(breach) = rule.breach(&readings) else {
        return nothing;
    };
    if tx
        .breach_recorded(&name, production.version, &rule.metric, breach.bad_since)
        .await?
    {
        return nothing;
    }
    tx.record_breach(
        &name,
        production.version,
        &rule.metric,
        breach.bad_since,
        now,
    )
    .await?;
    let (side, op) = if rule.higher_is_better {
        ("below", ">=")
    } else {
        ("above", "<=")
    };
    let window = human_duration(rule.window_micros);
    let condition = format!(
        "live metric {} of version {} has been {side} {} since {} (rule: {} {op} {} over {window})",
        rule.metric,
        production.version,
        rule.threshold,
        rfc3339(breach.bad_since),
        rule.metric,
        rule.threshold
    );
    let mut report = TickReport {
        breaches: 1,
        ..Default::default()
    };
    let mut moves_events = Vec::new();
    let (rolled_back_to, outcome) = match rule.action {
        LiveMetricAction::Alert => (0, "alert only (action ALERT)".to_owned()),
        LiveMetricAction::Rollback => {
            let history = tx.stage_history(&name).await?;
            match domain::rollback_target(&history, production.version) {
                None => (
                    0,
                    format!(
                        "alert only: action ROLLBACK, but model {name:?} has no earlier good production version to roll back to"
                    ),
                ),
                Some(target) => {
                    let version = tx
                        .fetch_version(&name, target)
                        .await?
                        .ok_or_else(|| vanished("rollback target"))?;
                    let moves = rollback_moves(&version, production.version);
                    let comment = format!("rolled back by the live monitor: {condition}");
                    let details = json!({
                        "rolled_back_from": production.version,
                        "rolled_back_to": target,
                        "rule": "live_metric",
                        "metric": rule.metric,
                    });
                    moves_events =
                        apply_moves(tx, &name, &moves, &comment, details, "", None).await?;
                    report.rollbacks = 1;
                    (
                        target,
                        format!(
                            "rolled back from version {} to version {target}",
                            production.version
                        ),
                    )
                }
            }
        }
    };
    let mut breach_event = NewEvent::new(
        EventKind::LiveMetricBreach,
        &name,
        production.version,
        json!({
            "metric": rule.metric,
            "threshold": rule.threshold,
            "higher_is_better": rule.higher_is_better,
            "window": window,
            "window_seconds": rule.window_micros / 1_000_000,
            "last_value": breach.last.value,
            "last_observe_time": rfc3339(breach.last.time),
            "observations_in_window": breach.in_window,
            "bad_since": rfc3339(breach.bad_since),
            "action": rule.action.as_str(),
            "rolled_back_to": rolled_back_to,
            "outcome": outcome,
        }),
    );
    breach_event.comment = format!("{condition}: {outcome}");
    let mut events = vec![breach_event];
    events.extend(moves_events);
    let seq = append_events(tx, &Actor(domain::LIVE_MONITOR_ACTOR.into()), events).await?;
    Ok((report, Some(seq)))
}

/// The archival rule's write: under the model lock, finds the passed-over
/// candidates due at `now` again and archives them with cause POLICY.
async fn archive_passed_over_in<T: Tx>(
    tx: &mut T,
    name: String,
    now: i64,
) -> Result<(TickReport, Option<u64>)> {
    let nothing = Ok((TickReport::default(), None));
    let Some(model) = tx.lock_model(&name).await? else {
        return nothing;
    };
    let days = model.policy.archival().archive_after_days();
    let Some(production) = tx.production_since(&name).await? else {
        return nothing;
    };
    let candidates = tx.passed_over(&name, production.version).await?;
    let due = domain::due_for_archival(days, &production, &candidates, now);
    if due.is_empty() {
        return nothing;
    }
    let mut events = Vec::new();
    for c in &due {
        let mut moves = lifecycle::plan_transition(
            &name,
            c.version,
            c.stage,
            Stage::Archived,
            production.version,
        )?;
        for mv in &mut moves {
            mv.cause = Cause::Policy;
        }
        let comment = format!(
            "archived by policy: version {} stayed in {} while version {} has been in production since {} (archive_superseded_after_days = {days})",
            c.version,
            c.stage,
            production.version,
            rfc3339(production.since)
        );
        let details = json!({
            "rule": "archive_superseded_after_days",
            "days": days,
            "production_version": production.version,
            "production_since": rfc3339(production.since),
            "stage_since": rfc3339(c.since),
        });
        events.extend(apply_moves(tx, &name, &moves, &comment, details, "", None).await?);
    }
    let seq = append_events(tx, &Actor(domain::ARCHIVAL_ACTOR.into()), events).await?;
    Ok((
        TickReport {
            archived: due.len(),
            ..Default::default()
        },
        Some(seq),
    ))
}
