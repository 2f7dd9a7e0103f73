//! The gates' verdict on a candidate: its evaluation on the policy's standard
//! set, compared with today's production version. One judgement serves
//! TransitionStage, approval and CompareVersions.

use crate::domain::evaluation;
use crate::domain::{
    self, Comparison, Evaluation, EvaluationSet, GateInputs, GateResult, Model, Version,
};
use crate::error::{Error, Result};
use crate::store::{Db, Tx};

use super::*;

/// What the gates and a notification need to know about a candidate.
#[derive(Default)]
pub(crate) struct Judgement {
    /// One result per check.
    pub(crate) results: Vec<GateResult>,
    /// The comparison with production on the standard set, if one was possible.
    pub(crate) comparison: Option<Comparison>,
}

/// Compares two versions on `set` with the evaluator version both share.
pub(crate) fn compare_on(
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
pub(crate) async fn judge<T: Tx>(
    tx: &mut T,
    model: &Model,
    candidate: &Version,
) -> Result<Judgement> {
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
pub(crate) fn judge_with(
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
pub(crate) fn require_gates(model: &str, version: i64, results: &[GateResult]) -> Result<()> {
    let failed = domain::failures(&format!("{model}/{version}"), results);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(failed))
    }
}

/// The gates' results on `candidate` by the same judgement TransitionStage
/// uses, read outside a transaction (`compared` is the set already read).
pub(crate) async fn gates_on<D: Db>(
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
