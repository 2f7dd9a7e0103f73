//! The rules of evaluations: what a set may define, what an evaluation must
//! report, and when two versions are comparable at all. Pure functions over
//! domain values; the store supplies the data and applies the outcome.
//!
//! Two versions are only ever compared on the same evaluation set *version*
//! scored by the same *evaluator version*: numbers from different data or
//! different metric code are refused, never silently compared.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{
    Comparison, Evaluation, EvaluationSet, MAX_METRICS, MetricComparison, MetricDefinition,
    Outcome, Violations,
};
use crate::error::{Error, PreconditionViolation, Result};

/// Checks the metric definitions of a new set: at least one, at most
/// [`MAX_METRICS`], valid and distinct names.
pub fn parse_definitions(field: &str, raw: Vec<MetricDefinition>) -> Result<Vec<MetricDefinition>> {
    let mut v = Violations::default();
    if raw.is_empty() {
        v.add(field, "an evaluation set defines at least one metric");
    }
    if raw.len() > MAX_METRICS {
        v.add(
            field,
            format!(
                "defines {} metrics; at most {MAX_METRICS} are allowed",
                raw.len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, m) in raw.iter().enumerate() {
        let ok = !m.name.is_empty()
            && m.name.len() <= 128
            && m.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !ok {
            v.add(
                format!("{field}[{i}].name"),
                "metric names must be 1 to 128 characters of [A-Za-z0-9._/-]",
            );
        } else if !seen.insert(m.name.as_str()) {
            v.add(
                format!("{field}[{i}].name"),
                format!("metric {:?} is defined twice", m.name),
            );
        }
    }
    v.finish()?;
    Ok(raw)
}

/// Checks that `metrics` reports exactly the set's metrics, naming every
/// unknown and every missing one.
pub fn check_reported(
    field: &str,
    set: &EvaluationSet,
    metrics: &BTreeMap<String, f64>,
) -> Result<()> {
    let mut v = Violations::default();
    let defined: BTreeSet<&str> = set.metrics.iter().map(|m| m.name.as_str()).collect();
    for name in metrics.keys() {
        if !defined.contains(name.as_str()) {
            v.add(
                format!("{field}[{name}]"),
                format!(
                    "{name:?} is not a metric of evaluation set {}; it defines {}",
                    set.id,
                    defined.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    let missing: Vec<&str> = defined
        .iter()
        .copied()
        .filter(|d| !metrics.contains_key(*d))
        .collect();
    if !missing.is_empty() {
        v.add(
            field,
            format!(
                "evaluation set {} is scored with {} but the evaluation is missing {}",
                set.id,
                defined.iter().copied().collect::<Vec<_>>().join(", "),
                missing.join(", ")
            ),
        );
    }
    v.finish()
}

/// The evaluator version to compare on: the requested one if both sides have
/// it, else the one both sides share (the candidate's most recent when they
/// share several). Refuses with every reason when there is none.
pub fn choose_evaluator(
    model: &str,
    candidate: (i64, &[Evaluation]),
    baseline: (i64, &[Evaluation]),
    set: &str,
    requested: Option<&str>,
) -> Result<String> {
    let mut missing = Vec::new();
    for (version, evals) in [candidate, baseline] {
        let has = |e: &&Evaluation| requested.is_none_or(|r| e.evaluator_version == r);
        if !evals.iter().any(|e| has(&e)) {
            let scored: Vec<&str> = evals.iter().map(|e| e.evaluator_version.as_str()).collect();
            missing.push(PreconditionViolation {
                kind: "EVALUATION_MISSING",
                subject: format!("{model}/{version}"),
                description: match (requested, scored.is_empty()) {
                    (Some(r), false) => format!(
                        "version {version} has no evaluation on {set} by evaluator {r} (it was scored by {})",
                        scored.join(", ")
                    ),
                    (Some(r), true) => {
                        format!("version {version} has no evaluation on {set} by evaluator {r}")
                    }
                    (None, _) => format!("version {version} has no evaluation on {set}"),
                },
            });
        }
    }
    if !missing.is_empty() {
        return Err(Error::FailedPrecondition(missing));
    }
    if let Some(r) = requested {
        return Ok(r.to_owned());
    }
    let base: BTreeSet<&str> = baseline
        .1
        .iter()
        .map(|e| e.evaluator_version.as_str())
        .collect();
    // Candidate evaluations arrive oldest first; prefer the most recent shared one.
    if let Some(e) = candidate
        .1
        .iter()
        .rev()
        .find(|e| base.contains(e.evaluator_version.as_str()))
    {
        return Ok(e.evaluator_version.clone());
    }
    let list = |evals: &[Evaluation]| {
        evals
            .iter()
            .map(|e| e.evaluator_version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(Error::precondition(
        "NOT_COMPARABLE",
        format!("{model}/{}", candidate.0),
        format!(
            "versions {} and {} were scored on {set} by different evaluator versions (candidate: {}; baseline: {}); re-evaluate one of them with the other's evaluator",
            candidate.0,
            baseline.0,
            list(candidate.1),
            list(baseline.1)
        ),
    ))
}

/// Compares two evaluations of the same set and evaluator, metric by metric
/// in the set's order, taking each metric's direction into account.
pub fn compare(
    set: &EvaluationSet,
    candidate: &Evaluation,
    baseline: &Evaluation,
) -> Result<Comparison> {
    if candidate.set != set.id || baseline.set != set.id {
        return Err(Error::Internal("comparison across sets".into()));
    }
    let mut metrics = Vec::with_capacity(set.metrics.len());
    for def in &set.metrics {
        let (Some(&c), Some(&b)) = (
            candidate.metrics.get(&def.name),
            baseline.metrics.get(&def.name),
        ) else {
            return Err(Error::Internal(format!(
                "stored evaluation lacks metric {}",
                def.name
            )));
        };
        let delta = c - b;
        let outcome = if c == b {
            Outcome::Equal
        } else if (c > b) == def.higher_is_better {
            Outcome::Better
        } else {
            Outcome::Worse
        };
        metrics.push(MetricComparison {
            metric: def.name.clone(),
            higher_is_better: def.higher_is_better,
            candidate: c,
            baseline: b,
            delta,
            relative_delta: if b == 0.0 { 0.0 } else { delta / b.abs() },
            outcome,
        });
    }
    Ok(Comparison {
        model: candidate.model.clone(),
        candidate: candidate.version,
        baseline: baseline.version,
        set: set.id.clone(),
        evaluator_version: candidate.evaluator_version.clone(),
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SetRef;

    fn set() -> EvaluationSet {
        EvaluationSet {
            id: SetRef {
                name: "holdout".into(),
                version: "v1".into(),
            },
            uri: "s3://d".into(),
            digest: String::new(),
            metrics: vec![
                MetricDefinition {
                    name: "accuracy".into(),
                    higher_is_better: true,
                },
                MetricDefinition {
                    name: "latency_ms".into(),
                    higher_is_better: false,
                },
            ],
            description: String::new(),
            created_by: String::new(),
            create_time: 0,
        }
    }

    fn eval(version: i64, evaluator: &str, acc: f64, lat: f64) -> Evaluation {
        Evaluation {
            model: "m".into(),
            version,
            set: set().id,
            evaluator_version: evaluator.into(),
            metrics: BTreeMap::from([("accuracy".into(), acc), ("latency_ms".into(), lat)]),
            report_uri: String::new(),
            created_by: String::new(),
            create_time: 0,
        }
    }

    #[test]
    fn verdicts_follow_each_metrics_direction() {
        let c = compare(
            &set(),
            &eval(2, "e1", 0.95, 40.0),
            &eval(1, "e1", 0.90, 50.0),
        )
        .unwrap();
        assert_eq!(c.metrics[0].outcome, Outcome::Better);
        assert_eq!(
            c.metrics[1].outcome,
            Outcome::Better,
            "lower latency is better"
        );
        let c = compare(
            &set(),
            &eval(2, "e1", 0.85, 60.0),
            &eval(1, "e1", 0.90, 50.0),
        )
        .unwrap();
        assert_eq!(c.metrics[0].outcome, Outcome::Worse);
        assert_eq!(c.metrics[1].outcome, Outcome::Worse);
        assert!((c.metrics[1].relative_delta - 0.2).abs() < 1e-12);
        let c = compare(&set(), &eval(2, "e1", 0.9, 50.0), &eval(1, "e1", 0.9, 50.0)).unwrap();
        assert!(c.metrics.iter().all(|m| m.outcome == Outcome::Equal));
    }

    #[test]
    fn reported_metrics_must_be_exactly_the_sets() {
        let mut m = BTreeMap::from([("accuracy".to_string(), 0.9)]);
        assert!(check_reported("metrics", &set(), &m).is_err());
        m.insert("latency_ms".into(), 3.0);
        assert!(check_reported("metrics", &set(), &m).is_ok());
        m.insert("f1".into(), 0.3);
        assert!(check_reported("metrics", &set(), &m).is_err());
    }

    #[test]
    fn different_evaluators_are_not_comparable() {
        let c = [eval(2, "e2", 0.9, 1.0)];
        let b = [eval(1, "e1", 0.9, 1.0)];
        let err = choose_evaluator("m", (2, &c), (1, &b), "holdout@v1", None).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(ref v) if v[0].kind == "NOT_COMPARABLE"));
        let b = [eval(1, "e1", 0.9, 1.0), eval(1, "e2", 0.9, 1.0)];
        assert_eq!(
            choose_evaluator("m", (2, &c), (1, &b), "holdout@v1", None).unwrap(),
            "e2"
        );
    }
}
