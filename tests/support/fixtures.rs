//! The evaluation fixtures most suites share: the `holdout@v1` standard set,
//! evaluations attached on it, and the policies gated on it.

use std::collections::HashMap;

use modelreg_client::{RegistryClient, pb};

/// A well-formed artifact digest.
pub const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

/// The standard set of the governed tests: `holdout@v1`.
pub fn holdout() -> pb::EvaluationSetRef {
    pb::EvaluationSetRef {
        name: "holdout".into(),
        version: "v1".into(),
    }
}

/// A request creating the set `name@version` at `s3://datasets/name/version`
/// with `metrics` as `(name, higher_is_better)`.
pub fn evaluation_set(
    name: &str,
    version: &str,
    metrics: &[(&str, bool)],
) -> pb::CreateEvaluationSetRequest {
    pb::CreateEvaluationSetRequest {
        name: name.into(),
        version: version.into(),
        uri: format!("s3://datasets/{name}/{version}"),
        digest: DIGEST.into(),
        metrics: metrics
            .iter()
            .map(|(name, higher_is_better)| pb::MetricDefinition {
                name: (*name).into(),
                higher_is_better: *higher_is_better,
            })
            .collect(),
        description: String::new(),
    }
}

/// Creates `holdout@v1` with the one metric `auc` (higher is better).
pub async fn create_holdout(c: &mut RegistryClient) {
    c.create_evaluation_set(evaluation_set("holdout", "v1", &[("auc", true)]))
        .await
        .expect("create holdout");
}

/// A request attaching `metrics` to `model` `version`, scored on
/// [`holdout`] by evaluator `eval-1`.
pub fn evaluation(
    model: &str,
    version: i64,
    metrics: &[(&str, f64)],
) -> pb::AttachEvaluationRequest {
    pb::AttachEvaluationRequest {
        model: model.into(),
        version,
        evaluation_set: Some(holdout()),
        evaluator_version: "eval-1".into(),
        metrics: metrics
            .iter()
            .map(|(name, value)| ((*name).to_string(), *value))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

/// Attaches an `auc` on [`holdout`] to `model` `version`.
pub async fn evaluate(c: &mut RegistryClient, model: &str, version: i64, auc: f64) {
    c.attach_evaluation(evaluation(model, version, &[("auc", auc)]))
        .await
        .expect("attach evaluation");
}

/// `stages` as the policy's list of stages.
pub fn stages(stages: &[pb::Stage]) -> Option<pb::StageList> {
    Some(pb::StageList {
        stages: stages.iter().map(|s| *s as i32).collect(),
    })
}

/// The gates of `gate` on `auc`.
pub fn auc_gate(gate: pb::MetricGate) -> Option<pb::MetricGateList> {
    Some(pb::MetricGateList {
        gates: vec![pb::MetricGate {
            metric: "auc".into(),
            ..gate
        }],
    })
}

/// The policy with [`holdout`] as its standard set and the gate
/// `auc >= min_auc`; approvals as by default.
pub fn auc_gated(min_auc: f64) -> pb::Policy {
    pb::Policy {
        standard_evaluation_set: Some(holdout()),
        gates: auc_gate(pb::MetricGate {
            min_value: Some(min_auc),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The precondition violations a FAILED_PRECONDITION refusal carries.
pub fn precondition_violations(status: &tonic::Status) -> Vec<tonic_types::PreconditionViolation> {
    use tonic_types::StatusExt as _;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    status
        .get_details_precondition_failure()
        .expect("precondition details")
        .violations
}

/// The fields an INVALID_ARGUMENT refusal names, sorted.
pub fn invalid_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let mut fields = modelreg_client::errors::violated_fields(status);
    fields.sort();
    fields
}

/// Each of the `bad` policies is refused as INVALID_ARGUMENT, both as the new
/// policy of the model `model` (naming exactly its fields, sorted) and as
/// the policy of a new model.
pub async fn assert_policies_refused(
    c: &mut RegistryClient,
    model: &str,
    bad: Vec<(pb::Policy, Vec<&str>)>,
) {
    for (policy, fields) in bad {
        let s = crate::update_policy(c, model, policy.clone(), "")
            .await
            .unwrap_err();
        assert_eq!(invalid_fields(&s), fields, "{policy:?}: {s:?}");
        let s = crate::create_model_with(c, "other", policy)
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    }
}

/// A policy's reviewers, each `(email, identity)` (an empty identity is none).
pub fn reviewers(list: &[(&str, &str)]) -> Option<pb::ReviewerList> {
    Some(pb::ReviewerList {
        reviewers: list
            .iter()
            .map(|(email, identity)| pb::Reviewer {
                email: (*email).into(),
                identity: (*identity).into(),
            })
            .collect(),
    })
}
