//! Evaluation sets and evaluations, and the rules of comparing them: what a
//! set may define, what an evaluation must report, and when two versions are
//! comparable at all. Two versions are only ever compared on the same
//! evaluation set *version* scored by the same *evaluator version*: numbers
//! from different data or different metric code are refused, never silently
//! compared.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::{Error, PreconditionViolation, Result};

use super::*;

/// A standard evaluation set version's identity: `name@version`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SetRef {
    /// The set name, like a model name.
    pub name: String,
    /// The set version, e.g. `2026-06` or `v3`.
    pub version: String,
}

impl SetRef {
    /// Parses the two parts of a set reference in request field `field`.
    pub fn parse(field: &str, name: &str, version: &str) -> Result<SetRef> {
        let mut v = Violations::default();
        let name = v.take(Name::parse(&format!("{field}.name"), name));
        let version = v.take(parse_set_version(&format!("{field}.version"), version));
        v.finish()?;
        Ok(SetRef {
            name: name.expect("checked").to_string(),
            version: version.expect("checked"),
        })
    }
}

impl fmt::Display for SetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// One metric an evaluation set is scored with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetricDefinition {
    /// The metric's name.
    pub name: String,
    /// Whether a higher value is better.
    pub higher_is_better: bool,
}

/// Whether `a` and `b` are equal once `unstamp` cleared who made each and
/// when: what a retry must match.
fn equal_but_stamp<T: Clone + PartialEq>(a: &T, b: &T, unstamp: fn(&mut T)) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    unstamp(&mut a);
    unstamp(&mut b);
    a == b
}

/// A standard, versioned evaluation set. Immutable once created.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationSet {
    /// `name@version`.
    pub id: SetRef,
    /// Where the data lives.
    pub uri: String,
    /// The data's content digest.
    pub digest: String,
    /// The metrics it is scored with, in the order given at creation.
    pub metrics: Vec<MetricDefinition>,
    /// Free text.
    pub description: String,
    /// Who created it.
    pub created_by: String,
    /// µs since the epoch.
    pub create_time: i64,
}

impl EvaluationSet {
    /// Whether `other` asks for exactly this set (ignoring who and when).
    pub fn same_content(&self, other: &EvaluationSet) -> bool {
        equal_but_stamp(self, other, |s| {
            (s.created_by, s.create_time) = (String::new(), 0)
        })
    }
}

/// The metrics of one version on one evaluation set version, scored by one
/// evaluator version. Immutable.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The model.
    pub model: String,
    /// The version number.
    pub version: i64,
    /// The evaluation set version.
    pub set: SetRef,
    /// The version of the metric code.
    pub evaluator_version: String,
    /// Metric values, exactly the set's metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Where a full report lives.
    pub report_uri: String,
    /// Who attached it.
    pub created_by: String,
    /// µs since the epoch.
    pub create_time: i64,
}

impl Evaluation {
    /// A digest of what a caller attached, so a reused request id with a
    /// different result is told apart from a retry.
    pub fn fingerprint(&self) -> String {
        let body = serde_json::json!([
            self.model,
            self.version,
            self.set.name,
            self.set.version,
            self.evaluator_version,
            self.metrics,
            self.report_uri
        ]);
        crate::domain::audit::sha256_hex(body.to_string().as_bytes())
    }

    /// The details of its EVALUATION_ATTACHED event.
    pub fn attached_details(&self) -> serde_json::Value {
        serde_json::json!({
            "evaluation_set": {"name": self.set.name, "version": self.set.version},
            "evaluator_version": self.evaluator_version,
            "metrics": self.metrics,
            "report_uri": self.report_uri,
        })
    }

    /// Whether `other` carries the same result (ignoring who and when).
    pub fn same_content(&self, other: &Evaluation) -> bool {
        equal_but_stamp(self, other, |e| {
            (e.created_by, e.create_time) = (String::new(), 0)
        })
    }
}

/// A checked AttachEvaluation.
#[derive(Debug, Clone)]
pub struct NewEvaluation {
    /// The evaluation, with actor and time still to be filled in.
    pub evaluation: Evaluation,
    /// AIP-155 request id.
    pub request_id: Option<String>,
}

/// A checked CompareVersions.
#[derive(Debug, Clone)]
pub struct CompareRequest {
    /// The model.
    pub model: Name,
    /// The candidate version.
    pub candidate: i64,
    /// The baseline version; 0 for the current production version.
    pub baseline: i64,
    /// The evaluation set; `None` for the model's standard set.
    pub set: Option<SetRef>,
    /// The evaluator version; `None` for the one both sides share.
    pub evaluator_version: Option<String>,
}

/// How a candidate's metric compares with the baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Better in the metric's direction.
    Better,
    /// Worse in the metric's direction.
    Worse,
    /// Equal.
    Equal,
}

/// One metric of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricComparison {
    /// The metric.
    pub metric: String,
    /// Its direction.
    pub higher_is_better: bool,
    /// The candidate's value.
    pub candidate: f64,
    /// The baseline's value.
    pub baseline: f64,
    /// candidate − baseline.
    pub delta: f64,
    /// delta / |baseline|, 0 when the baseline is 0.
    pub relative_delta: f64,
    /// Better, worse or equal.
    pub outcome: Outcome,
}

/// Two versions compared on one set version and evaluator version.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The model.
    pub model: String,
    /// The candidate version.
    pub candidate: i64,
    /// The baseline version.
    pub baseline: i64,
    /// The set both were measured on.
    pub set: SetRef,
    /// The evaluator version both were scored by.
    pub evaluator_version: String,
    /// One entry per metric of the set, in the set's order.
    pub metrics: Vec<MetricComparison>,
}

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

/// A version's evaluations keyed for gate input: the most recent one on `set`.
pub fn latest_on<'a>(evaluations: &'a [Evaluation], set: &SetRef) -> Option<&'a Evaluation> {
    evaluations.iter().rev().find(|e| &e.set == set)
}

/// Metrics of a version as a JSON object per set, for notifications.
pub fn metrics_json(evaluations: &[Evaluation]) -> serde_json::Value {
    let mut out: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for e in evaluations {
        out.insert(
            format!("{} by {}", e.set, e.evaluator_version),
            serde_json::json!(e.metrics),
        );
    }
    serde_json::json!(out)
}

/// Evaluation sets and evaluations for the domain's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::domain::SetRef;

    /// `holdout@v1` with `metrics` (name, higher is better).
    pub(crate) fn holdout(metrics: &[(&str, bool)]) -> EvaluationSet {
        EvaluationSet {
            id: SetRef {
                name: "holdout".into(),
                version: "v1".into(),
            },
            uri: "s3://d".into(),
            digest: String::new(),
            metrics: metrics
                .iter()
                .map(|&(name, higher_is_better)| MetricDefinition {
                    name: name.into(),
                    higher_is_better,
                })
                .collect(),
            description: String::new(),
            created_by: String::new(),
            create_time: 0,
        }
    }

    /// Model `m`'s `version` scored on `holdout@v1` by `evaluator`.
    pub(crate) fn evaluation(version: i64, evaluator: &str, metrics: &[(&str, f64)]) -> Evaluation {
        Evaluation {
            model: "m".into(),
            version,
            set: holdout(&[]).id,
            evaluator_version: evaluator.into(),
            metrics: metrics.iter().map(|&(k, v)| (k.to_owned(), v)).collect(),
            report_uri: String::new(),
            created_by: String::new(),
            create_time: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{evaluation, holdout};
    use super::*;

    fn set() -> EvaluationSet {
        holdout(&[("accuracy", true), ("latency_ms", false)])
    }

    fn eval(version: i64, evaluator: &str, acc: f64, lat: f64) -> Evaluation {
        evaluation(
            version,
            evaluator,
            &[("accuracy", acc), ("latency_ms", lat)],
        )
    }

    #[test]
    fn verdicts_follow_each_metrics_direction() {
        let baseline = eval(1, "e1", 0.90, 50.0);
        let against_baseline =
            |acc, lat| compare(&set(), &eval(2, "e1", acc, lat), &baseline).unwrap();
        let c = against_baseline(0.95, 40.0);
        assert_eq!(c.metrics[0].outcome, Outcome::Better);
        assert_eq!(
            c.metrics[1].outcome,
            Outcome::Better,
            "lower latency is better"
        );
        let c = against_baseline(0.85, 60.0);
        assert_eq!(c.metrics[0].outcome, Outcome::Worse);
        assert_eq!(c.metrics[1].outcome, Outcome::Worse);
        assert!((c.metrics[1].relative_delta - 0.2).abs() < 1e-12);
        let c = against_baseline(0.9, 50.0);
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
