//! Governance rules: model policies, metric gates, transition requests and
//! the choice of a rollback target. Pure functions over domain values; the
//! store applies their outcome in one transaction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{Cause, Comparison, Evaluation, EvaluationSet, SetRef, Stage};
use crate::error::{Error, PreconditionViolation, Result};

/// Most approvals a policy may ask for.
pub const MAX_MIN_APPROVALS: u32 = 10;
/// Most gates one policy may hold.
pub const MAX_GATES: usize = 64;

/// A model's policy as set by an admin. `None` means "not set: use the
/// default", which differs from an empty list (SPEC §3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Stages whose entry needs approval [PRODUCTION].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_required_for: Option<Vec<Stage>>,
    /// Distinct approvals needed [1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_approvals: Option<u32>,
    /// Whether a requester may approve their own request [false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_self_approval: Option<bool>,
    /// The evaluation set gates and comparisons use [none].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_evaluation_set: Option<SetRef>,
    /// Metric gates [none].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Vec<Gate>>,
    /// Whether a rollback waits for approval [false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_requires_approval: Option<bool>,
}

impl Policy {
    /// The stages that need approval, defaults applied.
    pub fn approval_stages(&self) -> Vec<Stage> {
        self.approval_required_for
            .clone()
            .unwrap_or_else(|| vec![Stage::Production])
    }

    /// Whether entering `stage` needs approval.
    pub fn needs_approval(&self, stage: Stage) -> bool {
        self.approval_stages().contains(&stage)
    }

    /// Distinct approvals needed.
    pub fn min_approvals(&self) -> u32 {
        self.min_approvals.unwrap_or(1)
    }

    /// Whether self-approval is allowed.
    pub fn allow_self_approval(&self) -> bool {
        self.allow_self_approval.unwrap_or(false)
    }

    /// The gates, none by default.
    pub fn gates(&self) -> &[Gate] {
        self.gates.as_deref().unwrap_or(&[])
    }

    /// Whether rollback waits for approval.
    pub fn rollback_requires_approval(&self) -> bool {
        self.rollback_requires_approval.unwrap_or(false)
    }

    /// Every field with its default filled in, as GetModel shows it.
    pub fn effective(&self) -> Policy {
        Policy {
            approval_required_for: Some(self.approval_stages()),
            min_approvals: Some(self.min_approvals()),
            allow_self_approval: Some(self.allow_self_approval()),
            standard_evaluation_set: self.standard_evaluation_set.clone(),
            gates: Some(self.gates().to_vec()),
            rollback_requires_approval: Some(self.rollback_requires_approval()),
        }
    }

    /// Whether any gate compares with the production version.
    pub fn has_relative_gates(&self) -> bool {
        self.gates().iter().any(Gate::is_relative)
    }
}

/// One metric gate. Bounds are in the metric's units; the relative bounds
/// compare with the current production version on the standard set and
/// follow the metric's direction (a regression of a lower-is-better metric
/// is an increase).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// The metric of the standard evaluation set.
    pub metric: String,
    /// The candidate must score at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_value: Option<f64>,
    /// The candidate must score at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value: Option<f64>,
    /// The candidate may be worse than production by at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_regression: Option<f64>,
    /// The candidate must be better than production by at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_improvement: Option<f64>,
}

impl Gate {
    /// Whether the gate needs a production version to compare with.
    pub fn is_relative(&self) -> bool {
        self.max_regression.is_some() || self.min_improvement.is_some()
    }
}

/// Checks a policy against the evaluation set it names (already looked up):
/// gates need a standard set, and each gate's metric must be one of its
/// metrics. Field paths are relative to the request's `policy`.
pub fn check_policy_against_set(
    field: &str,
    policy: &Policy,
    set: Option<&EvaluationSet>,
) -> Result<()> {
    let mut violations = crate::domain::Violations::default();
    for (i, gate) in policy.gates().iter().enumerate() {
        match set {
            None => violations.add(
                format!("{field}.gates.gates[{i}]"),
                "gates are judged on the standard evaluation set: set standard_evaluation_set too",
            ),
            Some(set) if !set.metrics.iter().any(|m| m.name == gate.metric) => violations.add(
                format!("{field}.gates.gates[{i}].metric"),
                format!(
                    "{:?} is not a metric of evaluation set {}; it defines {}",
                    gate.metric,
                    set.id,
                    set.metrics
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Some(_) => {}
        }
    }
    violations.finish()
}

/// The outcome of one check of one gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The metric.
    pub metric: String,
    /// The check, e.g. `accuracy >= 0.9` or `f1 regression <= 0.01`.
    pub check: String,
    /// Whether it passed.
    pub passed: bool,
    /// The candidate's value (0 when it has none).
    pub candidate_value: f64,
    /// The production version's value, for relative checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_value: Option<f64>,
    /// Why it passed or failed, in a sentence.
    pub message: String,
}

/// What the gates are judged on: the candidate's evaluation on the standard
/// set, and the comparison with production when a relative gate needs one.
#[derive(Debug, Clone)]
pub struct GateInputs<'a> {
    /// The standard set, if the policy names one.
    pub set: Option<&'a EvaluationSet>,
    /// The candidate version number.
    pub candidate: i64,
    /// The candidate's most recent evaluation on the standard set.
    pub candidate_evaluation: Option<&'a Evaluation>,
    /// The production version, 0 when none.
    pub production: i64,
    /// The comparison with production, or why there is none.
    pub comparison: std::result::Result<&'a Comparison, String>,
}

/// Runs every gate; one result per check (a gate with two bounds gives two).
pub fn run_gates(policy: &Policy, inputs: &GateInputs<'_>) -> Vec<GateResult> {
    let mut results = Vec::new();
    let set_name = inputs
        .set
        .map(|s| s.id.to_string())
        .unwrap_or_else(|| "the standard evaluation set".to_owned());
    for gate in policy.gates() {
        let metric = gate.metric.as_str();
        let higher_is_better = inputs
            .set
            .and_then(|s| s.metrics.iter().find(|m| m.name == metric))
            .is_none_or(|m| m.higher_is_better);
        let value = inputs
            .candidate_evaluation
            .and_then(|e| e.metrics.get(metric).copied());
        let mut push = |check: String, passed: bool, baseline: Option<f64>, message: String| {
            results.push(GateResult {
                metric: metric.to_owned(),
                check,
                passed,
                candidate_value: value.unwrap_or(0.0),
                baseline_value: baseline,
                message,
            })
        };
        let absolute = [(gate.min_value, ">=", true), (gate.max_value, "<=", false)];
        for (bound, op, at_least) in absolute {
            let Some(bound) = bound else { continue };
            let check = format!("{metric} {op} {bound}");
            match value {
                None => push(
                    check,
                    false,
                    None,
                    format!(
                        "version {} has no evaluation on {set_name}",
                        inputs.candidate
                    ),
                ),
                Some(v) => {
                    let ok = if at_least { v >= bound } else { v <= bound };
                    let verdict = if ok { "meets" } else { "fails" };
                    push(
                        check,
                        ok,
                        None,
                        format!("{metric} = {v} {verdict} {op} {bound}"),
                    )
                }
            }
        }
        let relative = [
            (gate.max_regression, "regression", "<="),
            (gate.min_improvement, "improvement", ">="),
        ];
        for (bound, what, op) in relative {
            let Some(bound) = bound else { continue };
            let check = format!("{metric} {what} vs production {op} {bound}");
            if value.is_none() {
                push(
                    check,
                    false,
                    None,
                    format!(
                        "version {} has no evaluation on {set_name}",
                        inputs.candidate
                    ),
                );
                continue;
            }
            if inputs.production == 0 || inputs.production == inputs.candidate {
                push(
                    check,
                    true,
                    None,
                    "no other version is in production: nothing to compare with".to_owned(),
                );
                continue;
            }
            match &inputs.comparison {
                Err(why) => push(check, false, None, why.clone()),
                Ok(cmp) => {
                    let Some(m) = cmp.metrics.iter().find(|m| m.metric == metric) else {
                        push(
                            check,
                            false,
                            None,
                            format!("{metric} is missing from the comparison"),
                        );
                        continue;
                    };
                    // Improvement in the metric's direction; regression is its negation.
                    let improvement = if higher_is_better { m.delta } else { -m.delta };
                    let (measured, ok) = if what == "regression" {
                        (-improvement, -improvement <= bound + f64::EPSILON)
                    } else {
                        (improvement, improvement + f64::EPSILON >= bound)
                    };
                    let verdict = if ok { "within" } else { "outside" };
                    push(
                        check,
                        ok,
                        Some(m.baseline),
                        format!(
                            "{metric} {what} vs production version {} is {} ({} vs {}), {verdict} {op} {bound}",
                            inputs.production,
                            rounded(measured),
                            m.candidate,
                            m.baseline
                        ),
                    );
                }
            }
        }
    }
    results
}

/// A difference as people read it: at most 6 decimals, no trailing zeros
/// (`0.0010000000000000009` → `0.001`, `12.0` → `12`).
fn rounded(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// The failed results as precondition violations (kind `GATE_FAILED`).
pub fn failures(subject: &str, results: &[GateResult]) -> Vec<PreconditionViolation> {
    results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| PreconditionViolation {
            kind: "GATE_FAILED",
            subject: subject.to_owned(),
            description: format!("gate {} failed: {}", r.check, r.message),
        })
        .collect()
}

/// The status of a transition request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    /// Waiting for approvals.
    Pending,
    /// Approved and applied.
    Approved,
    /// Rejected by an approver.
    Rejected,
    /// Withdrawn by the requester or an admin.
    Cancelled,
    /// The version moved elsewhere first.
    Superseded,
}

impl RequestStatus {
    /// Every status.
    pub const ALL: [RequestStatus; 5] = [
        RequestStatus::Pending,
        RequestStatus::Approved,
        RequestStatus::Rejected,
        RequestStatus::Cancelled,
        RequestStatus::Superseded,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "PENDING",
            RequestStatus::Approved => "APPROVED",
            RequestStatus::Rejected => "REJECTED",
            RequestStatus::Cancelled => "CANCELLED",
            RequestStatus::Superseded => "SUPERSEDED",
        }
    }

    /// The inverse of [`RequestStatus::as_str`].
    pub fn from_db(s: &str) -> Option<RequestStatus> {
        RequestStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved.
    pub approver: String,
    /// Their comment.
    pub comment: String,
    /// When, µs since the epoch.
    pub approve_time: i64,
}

/// A move waiting for sign-off.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRequest {
    /// The model.
    pub model: String,
    /// Per-model number; the id is `model:number`.
    pub number: i64,
    /// The version to move.
    pub version: i64,
    /// Its stage when requested.
    pub from_stage: Stage,
    /// Where it goes when approved.
    pub to_stage: Stage,
    /// True for a rollback waiting for approval.
    pub rollback: bool,
    /// Who asked.
    pub requester: String,
    /// Their comment (the reason, for a rollback).
    pub comment: String,
    /// Gate results at request time.
    pub gate_results: Vec<GateResult>,
    /// Approvals so far, oldest first.
    pub approvals: Vec<Approval>,
    /// Status.
    pub status: RequestStatus,
    /// µs since the epoch.
    pub create_time: i64,
    /// µs since the epoch.
    pub update_time: i64,
    /// Who closed it (the last approver, the rejecter, the canceller).
    pub resolved_by: String,
    /// The closing comment.
    pub resolution_comment: String,
}

impl TransitionRequest {
    /// The request's id: `MODEL:NUMBER`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.model, self.number)
    }
}

/// Parses a request id `MODEL:NUMBER`.
pub fn parse_request_id(field: &str, raw: &str) -> Result<(crate::domain::Name, i64)> {
    let bad = || {
        Error::invalid(
            field,
            format!(
                "{:?} is not a transition request id: ids look like MODEL:NUMBER, e.g. fraud-detector:3",
                crate::domain::truncate(raw, 80)
            ),
        )
    };
    let (model, number) = raw.rsplit_once(':').ok_or_else(bad)?;
    let number: i64 = number.parse().map_err(|_| bad())?;
    if number < 1 {
        return Err(bad());
    }
    let model = crate::domain::Name::parse(field, model).map_err(|_| bad())?;
    Ok((model, number))
}

/// One stage change of a model's history, as the rollback choice needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageStep {
    /// The version.
    pub version: i64,
    /// Where it went.
    pub to: Stage,
    /// Why.
    pub cause: Option<Cause>,
}

/// The version a rollback returns to: the most recent version that was in
/// production before the current one and was not itself rolled back from
/// (so two rollbacks in a row go two good versions back). `None` when there
/// is none.
pub fn rollback_target(history: &[StageStep], current: i64) -> Option<i64> {
    let rolled_back: std::collections::BTreeSet<i64> = history
        .iter()
        .filter(|s| s.cause == Some(Cause::Rollback) && s.to != Stage::Production)
        .map(|s| s.version)
        .collect();
    history
        .iter()
        .rev()
        .filter(|s| s.to == Stage::Production)
        .map(|s| s.version)
        .find(|v| *v != current && !rolled_back.contains(v))
}

/// Whether `version` has ever been in production.
pub fn was_in_production(history: &[StageStep], version: i64) -> bool {
    history
        .iter()
        .any(|s| s.version == version && s.to == Stage::Production)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MetricComparison, MetricDefinition, Outcome};

    fn set() -> EvaluationSet {
        EvaluationSet {
            id: SetRef {
                name: "holdout".into(),
                version: "v1".into(),
            },
            uri: String::new(),
            digest: String::new(),
            metrics: vec![
                MetricDefinition {
                    name: "auc".into(),
                    higher_is_better: true,
                },
                MetricDefinition {
                    name: "latency".into(),
                    higher_is_better: false,
                },
            ],
            description: String::new(),
            created_by: String::new(),
            create_time: 0,
        }
    }

    fn eval(version: i64, auc: f64, latency: f64) -> Evaluation {
        Evaluation {
            model: "m".into(),
            version,
            set: set().id,
            evaluator_version: "1".into(),
            metrics: [("auc".to_owned(), auc), ("latency".to_owned(), latency)].into(),
            report_uri: String::new(),
            created_by: String::new(),
            create_time: 0,
        }
    }

    fn cmp(c: &Evaluation, b: &Evaluation) -> Comparison {
        Comparison {
            model: "m".into(),
            candidate: c.version,
            baseline: b.version,
            set: set().id,
            evaluator_version: "1".into(),
            metrics: ["auc", "latency"]
                .iter()
                .map(|m| MetricComparison {
                    metric: (*m).into(),
                    higher_is_better: *m == "auc",
                    candidate: c.metrics[*m],
                    baseline: b.metrics[*m],
                    delta: c.metrics[*m] - b.metrics[*m],
                    relative_delta: 0.0,
                    outcome: Outcome::Equal,
                })
                .collect(),
        }
    }

    #[test]
    fn regression_follows_the_metric_direction() {
        let policy = Policy {
            gates: Some(vec![
                Gate {
                    metric: "auc".into(),
                    max_regression: Some(0.01),
                    ..Default::default()
                },
                Gate {
                    metric: "latency".into(),
                    max_regression: Some(5.0),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let s = set();
        let prod = eval(1, 0.90, 100.0);
        // auc drops by 0.02 (fails), latency rises by 4 (within 5).
        let cand = eval(2, 0.88, 104.0);
        let c = cmp(&cand, &prod);
        let results = run_gates(
            &policy,
            &GateInputs {
                set: Some(&s),
                candidate: 2,
                candidate_evaluation: Some(&cand),
                production: 1,
                comparison: Ok(&c),
            },
        );
        assert_eq!(results.len(), 2);
        assert!(!results[0].passed, "{:?}", results[0]);
        assert!(results[1].passed, "{:?}", results[1]);
        // Latency up by 6 breaks the lower-is-better gate.
        let worse = eval(2, 0.95, 106.0);
        let c = cmp(&worse, &prod);
        let results = run_gates(
            &policy,
            &GateInputs {
                set: Some(&s),
                candidate: 2,
                candidate_evaluation: Some(&worse),
                production: 1,
                comparison: Ok(&c),
            },
        );
        assert!(results[0].passed);
        assert!(!results[1].passed);
    }

    #[test]
    fn missing_evaluation_fails_every_check() {
        let policy = Policy {
            gates: Some(vec![Gate {
                metric: "auc".into(),
                min_value: Some(0.8),
                min_improvement: Some(0.0),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let s = set();
        let results = run_gates(
            &policy,
            &GateInputs {
                set: Some(&s),
                candidate: 2,
                candidate_evaluation: None,
                production: 0,
                comparison: Err("none".into()),
            },
        );
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(|r| !r.passed));
        assert!(results[0].message.contains("no evaluation"));
    }

    #[test]
    fn rollback_skips_versions_rolled_back_from() {
        let step = |version, to, cause| StageStep {
            version,
            to,
            cause: Some(cause),
        };
        let mut h = vec![
            step(1, Stage::Production, Cause::Request),
            step(1, Stage::Archived, Cause::Superseded),
            step(2, Stage::Production, Cause::Approval),
            step(2, Stage::Archived, Cause::Superseded),
            step(3, Stage::Production, Cause::Approval),
        ];
        assert_eq!(rollback_target(&h, 3), Some(2));
        h.push(step(3, Stage::Archived, Cause::Rollback));
        h.push(step(2, Stage::Production, Cause::Rollback));
        assert_eq!(rollback_target(&h, 2), Some(1));
        h.push(step(2, Stage::Archived, Cause::Rollback));
        h.push(step(1, Stage::Production, Cause::Rollback));
        assert_eq!(rollback_target(&h, 1), None);
    }

    #[test]
    fn request_ids_round_trip() {
        let (m, n) = parse_request_id("id", "fraud-detector:3").unwrap();
        assert_eq!((m.as_str(), n), ("fraud-detector", 3));
        for bad in ["", "x", "x:", "x:0", ":3", "Bad:1", "x:-1"] {
            assert!(parse_request_id("id", bad).is_err(), "{bad}");
        }
    }
}
