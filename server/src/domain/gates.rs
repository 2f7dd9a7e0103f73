//! Metric gates: each check of a policy's gates on a candidate's evaluation,
//! absolute and relative to the production version, and the failures as
//! precondition violations. Pure functions.

use serde::{Deserialize, Serialize};

use crate::error::PreconditionViolation;

use super::*;

/// The outcome of one check of one gate.
#[serde_with::skip_serializing_none]
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
        let missing = format!(
            "version {} has no evaluation on {set_name}",
            inputs.candidate
        );
        let absolute = [(gate.min_value, ">=", true), (gate.max_value, "<=", false)];
        for (bound, op, at_least) in absolute {
            let Some(bound) = bound else { continue };
            let check = format!("{metric} {op} {bound}");
            match value {
                None => push(check, false, None, missing.clone()),
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
        let relatives = [
            (gate.max_regression, "regression", "<="),
            (gate.min_improvement, "improvement", ">="),
        ];
        for (bound, what, op) in relatives {
            let Some(bound) = bound else { continue };
            let check = format!("{metric} {what} vs production {op} {bound}");
            let (passed, baseline, message) = match value {
                None => (false, None, missing.clone()),
                Some(_) => relative(inputs, metric, higher_is_better, (bound, what, op)),
            };
            push(check, passed, baseline, message);
        }
    }
    results
}

/// Judges a relative gate (`what` is "regression" or "improvement", `op`
/// its comparison with `bound`) of a candidate that has a value: whether it
/// passes, the production value, and why.
fn relative(
    inputs: &GateInputs<'_>,
    metric: &str,
    higher_is_better: bool,
    (bound, what, op): (f64, &str, &str),
) -> (bool, Option<f64>, String) {
    if inputs.production == 0 || inputs.production == inputs.candidate {
        let message = "no other version is in production: nothing to compare with";
        return (true, None, message.to_owned());
    }
    let cmp = match &inputs.comparison {
        Err(why) => return (false, None, why.clone()),
        Ok(cmp) => cmp,
    };
    let Some(m) = cmp.metrics.iter().find(|m| m.metric == metric) else {
        return (
            false,
            None,
            format!("{metric} is missing from the comparison"),
        );
    };
    // Improvement in the metric's direction; regression is its negation.
    let improvement = if higher_is_better { m.delta } else { -m.delta };
    let (measured, ok) = if what == "regression" {
        (-improvement, -improvement <= bound + f64::EPSILON)
    } else {
        (improvement, improvement + f64::EPSILON >= bound)
    };
    let verdict = if ok { "within" } else { "outside" };
    let message = format!(
        "{metric} {what} vs production version {} is {} ({} vs {}), {verdict} {op} {bound}",
        inputs.production,
        crate::domain::decimal(measured, 6),
        m.candidate,
        m.baseline
    );
    (ok, Some(m.baseline), message)
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
