//! Use cases of evaluation sets and evaluations, and CompareVersions.

use serde_json::json;

use crate::domain::evaluation;
use crate::domain::{
    Actor, CompareRequest, Comparison, Evaluation, EvaluationSet, EventKind, GateResult,
    NewEvaluation, NewEvent, SetRef,
};
use crate::error::{Error, Result};
use crate::store::{Db, Store, Tx};

use super::*;

pub async fn create_evaluation_set(
    store: &Store,
    set: EvaluationSet,
    actor: Actor,
) -> Result<EvaluationSet> {
    let mut set = set;
    write_tx!(store, |tx| -> EvaluationSet {
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
        set.create_time = tx.now();
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
    })
}

pub async fn get_evaluation_set(store: &Store, set: &SetRef) -> Result<EvaluationSet> {
    read_db!(store, |db| get_evaluation_set_on(db, set))
}

pub(crate) async fn get_evaluation_set_on<D: Db>(db: &D, set: &SetRef) -> Result<EvaluationSet> {
    db.fetch_evaluation_set(set)
        .await?
        .ok_or_else(|| set_not_found(set))
}

pub async fn list_evaluation_sets(
    store: &Store,
    name: Option<&str>,
    after: Option<&SetRef>,
    limit: usize,
) -> Result<(Vec<EvaluationSet>, bool)> {
    read_db!(store, |db| async {
        Ok(page(
            db.list_evaluation_sets(name, after, limit + 1).await?,
            limit,
        ))
    })
}

pub async fn attach_evaluation(
    store: &Store,
    new: NewEvaluation,
    actor: Actor,
) -> Result<Evaluation> {
    write_tx!(store, |tx| -> Evaluation {
        let mut e = new.evaluation;
        let id = RequestId::new("AttachEvaluation", &actor, &new.request_id, e.fingerprint());
        if let Some(stored) = begin_version_write(tx, &e.model, e.version, &id).await? {
            return tx
                .fetch_evaluation(&stored.model, stored.version, &e.set, &e.evaluator_version)
                .await?
                .ok_or_else(|| vanished("evaluation"))
                .map(|v| (v, None));
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
        e.create_time = tx.now();
        tx.insert_evaluation(&e).await?;
        id.remember(tx, &e.model, e.version, None).await?;
        tx.touch_version(&e.model, e.version, e.create_time).await?;
        let details = e.attached_details();
        let event = NewEvent::new(EventKind::EvaluationAttached, &e.model, e.version, details);
        let seq = append_events(tx, &actor, vec![event]).await?;
        Ok((e, Some(seq)))
    })
}

pub async fn list_evaluations(
    store: &Store,
    model: &str,
    set: &SetRef,
    metric: Option<&str>,
    after: Option<(i64, String)>,
    limit: usize,
) -> Result<(Vec<Evaluation>, bool)> {
    read_db!(store, |db| async {
        get_model_on(db, model).await?;
        let defined = get_evaluation_set_on(db, set).await?;
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
    })
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

pub async fn compare(store: &Store, req: &CompareRequest) -> Result<JudgedComparison> {
    read_db!(store, |db| async {
        let model = req.model.as_str();
        let current = get_model_on(db, model).await?;
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
        let set = get_evaluation_set_on(db, &set_ref).await?;
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
    })
}
