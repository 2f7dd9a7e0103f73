//! Each change of the registry as one transaction, written once for every
//! backend: lock what the change depends on, check, apply, append the events,
//! commit, wake watchers. The rules themselves come from [`crate::lifecycle`];
//! the statements from the backend's [`Tx`].

use serde_json::json;

use super::{ChainReport, Db, ModelFilter, StoredRequest, Tx, VersionRef};
use crate::audit::{ChainVerifier, event_hash, sha256_hex};
use crate::domain::{
    Actor, AliasName, Cause, CompareRequest, Comparison, Evaluation, EvaluationSet, Event,
    EventFilter, EventKind, Model, ModelUpdate, Name, NewEvaluation, NewEvent, NewModel,
    NewVersion, SetRef, Stage, StageChange, Version, etag, now_micros,
};
use crate::error::{Error, Result};
use crate::evaluation;
use crate::lifecycle;

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

/// Looks up an earlier request with this id: `Some` for a retry of the same
/// request, an error for a different request reusing the id.
async fn find_retry<T: Tx>(
    tx: &mut T,
    method: &str,
    request_id: &str,
    fingerprint: &str,
) -> Result<Option<StoredRequest>> {
    match tx.find_request(method, request_id).await? {
        Some(stored) if stored.fingerprint != fingerprint => Err(Error::invalid(
            "request_id",
            format!(
                "{request_id:?} was already used for a different {method} request; use a new request id for a new request"
            ),
        )),
        other => Ok(other),
    }
}

/// Appends events with the next sequences and chained hashes; returns the
/// last sequence. Runs last in each transaction: the log head stays locked
/// from here to commit, so sequences commit in order and never show a gap.
async fn append_events<T: Tx>(tx: &mut T, actor: &Actor, events: Vec<NewEvent>) -> Result<u64> {
    let (mut sequence, mut prev_hash) = tx.log_head().await?;
    let now = now_micros();
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
        tx.insert_event(&e).await?;
        prev_hash = e.hash;
    }
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
        json!({"name": name, "description": new.description, "tags": new.tags})
            .to_string()
            .as_bytes(),
    );
    if let Some(request_id) = &new.request_id
        && let Some(stored) = find_retry(tx, "CreateModel", request_id, &fingerprint).await?
    {
        return tx
            .fetch_model(&stored.model)
            .await?
            .ok_or_else(|| model_not_found(&stored.model))
            .map(|v| (v, None));
    }
    let now = now_micros();
    let model = Model {
        name: name.to_owned(),
        description: new.description.clone(),
        tags: new.tags.clone(),
        revision: 1,
        latest_version: 0,
        production_version: 0,
        aliases: Default::default(),
        created_by: actor.0.clone(),
        create_time: now,
        update_time: now,
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
        };
        tx.remember_request("CreateModel", request_id, &stored)
            .await?;
    }
    let event = NewEvent::new(
        EventKind::ModelCreated,
        name,
        0,
        json!({"description": new.description, "tags": new.tags}),
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

pub async fn register_version<D: Db>(db: &D, new: NewVersion, actor: Actor) -> Result<Version> {
    db.write(job(move |tx| Box::pin(register_version_in(tx, new, actor))))
        .await
}

async fn register_version_in<T: Tx>(
    tx: &mut T,
    new: NewVersion,
    actor: Actor,
) -> Result<(Version, Option<u64>)> {
    let model = new.model.as_str();
    // The model lock serializes registrations of one model, so version numbers
    // and request-id checks never race.
    let current = tx.lock_model(model).await?;
    let fingerprint = format!("{model}:{}", new.fingerprint());
    if let Some(request_id) = &new.request_id
        && let Some(stored) = find_retry(tx, "RegisterVersion", request_id, &fingerprint).await?
    {
        return tx
            .fetch_version(&stored.model, stored.version)
            .await?
            .ok_or_else(|| version_not_found(&stored.model, &stored.version.to_string()))
            .map(|v| (v, None));
    }
    let current = current.ok_or_else(|| model_not_found(model))?;
    let number = current.latest_version + 1;
    let now = now_micros();
    let version = Version {
        model: model.to_owned(),
        version: number,
        artifact_uri: new.artifact_uri.clone(),
        artifact_digest: new.artifact_digest.clone(),
        source: new.source.clone(),
        training_metrics: new.training_metrics.clone(),
        tags: new.tags.clone(),
        description: new.description.clone(),
        stage: new.target_stage,
        aliases: Vec::new(),
        revision: 1,
        created_by: actor.0.clone(),
        create_time: now,
        update_time: now,
        stage_update_time: now,
        evaluations: Vec::new(),
    };
    tx.insert_version(&version).await?;
    if let Some(request_id) = &new.request_id {
        let stored = StoredRequest {
            fingerprint,
            model: model.to_owned(),
            version: number,
        };
        tx.remember_request("RegisterVersion", request_id, &stored)
            .await?;
    }
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
    if new.target_stage != Stage::None {
        // Registering straight into a stage is the NONE→stage move, by the same rules.
        for mv in lifecycle::plan_transition(model, number, Stage::None, new.target_stage, 0)? {
            events.push(stage_event(model, &mv, String::new(), json!({})));
        }
    }
    let seq = append_events(tx, &actor, events).await?;
    // Just inserted: no aliases, no evaluations; nothing to read back.
    Ok((version, Some(seq)))
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

pub async fn transition<D: Db>(db: &D, change: StageChange, actor: Actor) -> Result<Version> {
    db.write(job(move |tx| Box::pin(transition_in(tx, change, actor))))
        .await
}

async fn transition_in<T: Tx>(
    tx: &mut T,
    change: StageChange,
    actor: Actor,
) -> Result<(Version, Option<u64>)> {
    let model = change.model.as_str();
    // The model lock makes "read production version, then move" one step, so
    // racing promotions of one model serialize and exactly one production remains.
    if tx.lock_model(model).await?.is_none() {
        return Err(model_not_found(model));
    }
    let current = tx
        .fetch_version(model, change.version)
        .await?
        .ok_or_else(|| version_not_found(model, &change.version.to_string()))?;
    check_etag(
        change.etag,
        current.revision,
        "version",
        &format!("{model}/{}", change.version),
    )?;
    let production = tx.production_version(model).await?;
    let moves = lifecycle::plan_transition(
        model,
        change.version,
        current.stage,
        change.target,
        production.unwrap_or(0),
    )?;
    let now = now_micros();
    let mut events = Vec::with_capacity(moves.len());
    for mv in &moves {
        tx.move_stage(model, mv.version, mv.from, mv.to, now)
            .await?;
        let (comment, details) = if mv.cause == Cause::Superseded {
            (String::new(), json!({"superseded_by": change.version}))
        } else {
            (change.comment.clone(), json!({}))
        };
        events.push(stage_event(model, mv, comment, details));
    }
    tx.touch_model(model, now).await?;
    let seq = append_events(tx, &actor, events).await?;
    let version = tx
        .fetch_version(model, change.version)
        .await?
        .ok_or_else(|| vanished("version"))?;
    Ok((version, Some(seq)))
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
        && let Some(stored) = find_retry(tx, "AttachEvaluation", request_id, &fingerprint).await?
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
        };
        tx.remember_request("AttachEvaluation", request_id, &stored)
            .await?;
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

pub async fn compare<D: Db>(db: &D, req: &CompareRequest) -> Result<Comparison> {
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
    let Some(set_ref) = req.set.clone() else {
        return Err(Error::precondition(
            "NO_STANDARD_EVALUATION_SET",
            model,
            format!("model {model:?} has no standard evaluation set; name one with evaluation_set"),
        ));
    };
    let set = get_evaluation_set(db, &set_ref).await?;
    for v in [req.candidate, baseline] {
        if db.fetch_version(model, v).await?.is_none() {
            return Err(version_not_found(model, &v.to_string()));
        }
    }
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
    evaluation::compare(&set, &pick(&cand)?, &pick(&base)?)
}

// ---- audit ------------------------------------------------------------------

pub async fn verify_chain<D: Db>(db: &D) -> Result<ChainReport> {
    let mut verifier = ChainVerifier::default();
    let mut after = 0u64;
    let all = EventFilter::default();
    loop {
        let page = db.events(&all, after, None, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.sequence;
        for e in &page {
            if !verifier.check(e) {
                return Ok(ChainReport {
                    ok: false,
                    checked: verifier.checked,
                    first_bad: verifier.first_bad.unwrap_or(e.sequence),
                });
            }
        }
    }
    Ok(ChainReport {
        ok: true,
        checked: verifier.checked,
        first_bad: 0,
    })
}
