//! Conversions between wire types (`modelreg_api::v1`) and domain values,
//! kept together so the rest of the server never sees protobuf.

use modelreg_api::v1 as pb;
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};

use crate::app::{JudgedComparison, TransitionOutcome};
use crate::domain::{Approval, GateResult, RequestStatus, TransitionRequest};
use crate::domain::{
    Cause, Deployment, DeploymentStatus, Evaluation, EvaluationSet, Event, EventKind,
    MetricDefinition, Model, Outcome, SetRef, Source, Stage, Version, Violations, etag,
};
use crate::error::{Error, Result};
use crate::watch::WatchItem;

pub use super::policy::{policy_from_pb, policy_to_pb};

/// µs since the epoch → `Timestamp`.
pub fn micros_to_pb(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// `Timestamp` → µs since the epoch, refusing out-of-range values.
pub fn micros_from_pb(field: &str, t: &Timestamp) -> Result<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) || t.seconds.unsigned_abs() > 253_402_300_799 {
        return Err(Error::invalid(field, "is not a valid timestamp"));
    }
    Ok(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

/// A wire stage, `None` for UNSPECIFIED or unknown numbers.
pub fn stage_from_pb(raw: i32) -> Option<Stage> {
    match pb::Stage::try_from(raw).ok()? {
        pb::Stage::Unspecified => None,
        pb::Stage::None => Some(Stage::None),
        pb::Stage::Staging => Some(Stage::Staging),
        pb::Stage::Production => Some(Stage::Production),
        pb::Stage::Archived => Some(Stage::Archived),
    }
}

/// A domain stage on the wire.
pub fn stage_to_pb(stage: Stage) -> pb::Stage {
    match stage {
        Stage::None => pb::Stage::None,
        Stage::Staging => pb::Stage::Staging,
        Stage::Production => pb::Stage::Production,
        Stage::Archived => pb::Stage::Archived,
    }
}

fn cause_to_pb(cause: Cause) -> pb::StageChangeCause {
    match cause {
        Cause::Request => pb::StageChangeCause::Request,
        Cause::Approval => pb::StageChangeCause::Approval,
        Cause::Superseded => pb::StageChangeCause::Superseded,
        Cause::Rollback => pb::StageChangeCause::Rollback,
        Cause::Policy => pb::StageChangeCause::Policy,
        Cause::Import => pb::StageChangeCause::Import,
    }
}

pub fn event_kind_to_pb(kind: EventKind) -> pb::EventType {
    match kind {
        EventKind::ModelCreated => pb::EventType::ModelCreated,
        EventKind::ModelUpdated => pb::EventType::ModelUpdated,
        EventKind::VersionRegistered => pb::EventType::VersionRegistered,
        EventKind::StageChanged => pb::EventType::StageChanged,
        EventKind::TransitionRequested => pb::EventType::TransitionRequested,
        EventKind::TransitionApproved => pb::EventType::TransitionApproved,
        EventKind::TransitionRejected => pb::EventType::TransitionRejected,
        EventKind::TransitionCancelled => pb::EventType::TransitionCancelled,
        EventKind::EvaluationAttached => pb::EventType::EvaluationAttached,
        EventKind::DeploymentReported => pb::EventType::DeploymentReported,
        EventKind::AliasSet => pb::EventType::AliasSet,
        EventKind::AliasDeleted => pb::EventType::AliasDeleted,
        EventKind::EvaluationSetCreated => pb::EventType::EvaluationSetCreated,
        EventKind::WorkerFailed => pb::EventType::WorkerFailed,
        EventKind::TransitionSuperseded => pb::EventType::TransitionSuperseded,
        EventKind::LiveMetricBreach => pb::EventType::LiveMetricBreach,
        EventKind::VersionUpdated => pb::EventType::VersionUpdated,
        EventKind::DeadLettered => pb::EventType::DeadLettered,
        EventKind::DeadLetterRetried => pb::EventType::DeadLetterRetried,
    }
}

/// Parses a list of wire event types, recording bad entries in `v`.
pub fn event_kinds_from_pb(field: &str, raw: &[i32], v: &mut Violations) -> Vec<EventKind> {
    let mut kinds = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        match EventKind::ALL
            .into_iter()
            .find(|k| event_kind_to_pb(*k) as i32 == *t)
        {
            // Repeats add nothing but placeholders to the query.
            Some(k) if kinds.contains(&k) => {}
            Some(k) => kinds.push(k),
            None => v.add(
                format!("{field}[{i}]"),
                format!("{t} is not a valid event type"),
            ),
        }
    }
    kinds
}

/// A wire source as a domain one; `original_create_time` is checked and
/// converted, so a bad one is a violation of `{field}.original_create_time`.
pub fn source_from_pb(field: &str, s: pb::Source) -> Result<Source> {
    let original_create_time = s
        .original_create_time
        .map(|t| micros_from_pb(&format!("{field}.original_create_time"), &t))
        .transpose()?;
    Ok(Source {
        commit: s.commit,
        pipeline_url: s.pipeline_url,
        run_id: s.run_id,
        repository: s.repository,
        imported_from: s.imported_from,
        original_create_time,
    })
}

/// A domain source on the wire.
fn source_to_pb(s: Source) -> pb::Source {
    pb::Source {
        commit: s.commit,
        pipeline_url: s.pipeline_url,
        run_id: s.run_id,
        repository: s.repository,
        imported_from: s.imported_from,
        original_create_time: s.original_create_time.map(micros_to_pb),
    }
}

/// A domain model on the wire.
pub fn model_to_pb(m: Model) -> pb::Model {
    pb::Model {
        name: m.name,
        description: m.description,
        tags: m.tags.into_iter().collect(),
        policy: Some(policy_to_pb(&m.policy.effective())),
        etag: etag(m.revision),
        latest_version: m.latest_version,
        production_version: m.production_version,
        aliases: m.aliases.into_iter().collect(),
        created_by: m.created_by,
        create_time: Some(micros_to_pb(m.create_time)),
        update_time: Some(micros_to_pb(m.update_time)),
        deployments: m.deployments.into_iter().map(deployment_to_pb).collect(),
    }
}

/// A deployment status on the wire.
pub fn deployment_status_to_pb(s: DeploymentStatus) -> pb::DeploymentStatus {
    match s {
        DeploymentStatus::Deploying => pb::DeploymentStatus::Deploying,
        DeploymentStatus::Succeeded => pb::DeploymentStatus::Succeeded,
        DeploymentStatus::Failed => pb::DeploymentStatus::Failed,
        DeploymentStatus::Undeployed => pb::DeploymentStatus::Undeployed,
    }
}

/// A wire deployment status; UNSPECIFIED and unknown numbers are refused.
pub fn deployment_status_from_pb(field: &str, raw: i32) -> Result<DeploymentStatus> {
    match pb::DeploymentStatus::try_from(raw) {
        Ok(pb::DeploymentStatus::Unspecified) => Err(Error::invalid(
            field,
            "is required: DEPLOYMENT_STATUS_DEPLOYING, DEPLOYMENT_STATUS_SUCCEEDED, DEPLOYMENT_STATUS_FAILED or DEPLOYMENT_STATUS_UNDEPLOYED",
        )),
        Ok(s) => Ok(DeploymentStatus::ALL
            .into_iter()
            .find(|d| deployment_status_to_pb(*d) == s)
            .expect("every wire status but UNSPECIFIED has a domain one")),
        Err(_) => Err(Error::invalid(
            field,
            format!("{raw} is not a valid deployment status"),
        )),
    }
}

/// A domain deployment on the wire.
pub fn deployment_to_pb(d: Deployment) -> pb::Deployment {
    pb::Deployment {
        model: d.model,
        version: d.version,
        environment: d.environment,
        status: deployment_status_to_pb(d.status) as i32,
        endpoint: d.endpoint,
        message: d.message,
        reported_by: d.reported_by,
        report_time: Some(micros_to_pb(d.report_time)),
    }
}

/// A domain version on the wire.
pub fn version_to_pb(v: Version) -> pb::ModelVersion {
    pb::ModelVersion {
        model: v.model,
        version: v.version,
        artifact_uri: v.artifact_uri,
        artifact_digest: v.artifact_digest,
        source: Some(source_to_pb(v.source)),
        training_metrics: v.training_metrics.into_iter().collect(),
        tags: v.tags.into_iter().collect(),
        stage: stage_to_pb(v.stage) as i32,
        aliases: v.aliases,
        created_by: v.created_by,
        create_time: Some(micros_to_pb(v.create_time)),
        update_time: Some(micros_to_pb(v.update_time)),
        stage_update_time: Some(micros_to_pb(v.stage_update_time)),
        etag: etag(v.revision),
        evaluations: v.evaluations.into_iter().map(evaluation_to_pb).collect(),
        deployments: v.deployments.into_iter().map(deployment_to_pb).collect(),
        description: v.description,
    }
}

/// A set reference on the wire.
pub fn set_ref_to_pb(s: SetRef) -> pb::EvaluationSetRef {
    pb::EvaluationSetRef {
        name: s.name,
        version: s.version,
    }
}

/// A domain evaluation set on the wire.
pub fn evaluation_set_to_pb(s: EvaluationSet) -> pb::EvaluationSet {
    pb::EvaluationSet {
        name: s.id.name,
        version: s.id.version,
        uri: s.uri,
        digest: s.digest,
        metrics: s
            .metrics
            .into_iter()
            .map(|m| pb::MetricDefinition {
                name: m.name,
                higher_is_better: m.higher_is_better,
            })
            .collect(),
        description: s.description,
        created_by: s.created_by,
        create_time: Some(micros_to_pb(s.create_time)),
    }
}

/// Wire metric definitions as domain ones.
pub fn definitions_from_pb(defs: Vec<pb::MetricDefinition>) -> Vec<MetricDefinition> {
    defs.into_iter()
        .map(|m| MetricDefinition {
            name: m.name,
            higher_is_better: m.higher_is_better,
        })
        .collect()
}

/// A domain evaluation on the wire.
pub fn evaluation_to_pb(e: Evaluation) -> pb::Evaluation {
    pb::Evaluation {
        model: e.model,
        version: e.version,
        evaluation_set: Some(set_ref_to_pb(e.set)),
        evaluator_version: e.evaluator_version,
        metrics: e.metrics.into_iter().collect(),
        report_uri: e.report_uri,
        created_by: e.created_by,
        create_time: Some(micros_to_pb(e.create_time)),
    }
}

/// A domain comparison on the wire.
pub fn comparison_to_pb(judged: JudgedComparison) -> pb::VersionComparison {
    let JudgedComparison {
        comparison: c,
        gate_results,
    } = judged;
    pb::VersionComparison {
        model: c.model,
        candidate_version: c.candidate,
        baseline_version: c.baseline,
        evaluation_set: Some(set_ref_to_pb(c.set)),
        evaluator_version: c.evaluator_version,
        metrics: c
            .metrics
            .into_iter()
            .map(|m| pb::MetricComparison {
                metric: m.metric,
                higher_is_better: m.higher_is_better,
                candidate: m.candidate,
                baseline: m.baseline,
                delta: m.delta,
                relative_delta: m.relative_delta,
                outcome: match m.outcome {
                    Outcome::Better => pb::Outcome::Better,
                    Outcome::Worse => pb::Outcome::Worse,
                    Outcome::Equal => pb::Outcome::Equal,
                } as i32,
            })
            .collect(),
        gates_passed: gate_results.iter().all(|g| g.passed),
        gate_results: gate_results.into_iter().map(gate_result_to_pb).collect(),
    }
}

/// A domain event on the wire.
pub fn event_to_pb(e: Event) -> pb::RegistryEvent {
    pb::RegistryEvent {
        sequence: e.sequence,
        r#type: event_kind_to_pb(e.kind) as i32,
        model: e.model,
        version: e.version,
        from_stage: e
            .from_stage
            .map(stage_to_pb)
            .unwrap_or(pb::Stage::Unspecified) as i32,
        to_stage: e
            .to_stage
            .map(stage_to_pb)
            .unwrap_or(pb::Stage::Unspecified) as i32,
        cause: e
            .cause
            .map(cause_to_pb)
            .unwrap_or(pb::StageChangeCause::Unspecified) as i32,
        actor: e.actor,
        comment: e.comment,
        occur_time: Some(micros_to_pb(e.occur_time)),
        prev_hash: e.prev_hash,
        hash: e.hash,
        details: match json_to_pb(e.details).kind {
            Some(Kind::StructValue(s)) => Some(s),
            _ => None,
        },
        transition_request_id: e.transition_request_id,
    }
}

/// A JSON value as a `google.protobuf.Value`.
pub fn json_to_pb(v: serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(json_to_pb).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.into_iter().map(|(k, v)| (k, json_to_pb(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// A gate result on the wire.
pub fn gate_result_to_pb(r: GateResult) -> pb::GateResult {
    pb::GateResult {
        metric: r.metric,
        check: r.check,
        passed: r.passed,
        candidate_value: r.candidate_value,
        baseline_value: r.baseline_value,
        message: r.message,
    }
}

/// A request status on the wire.
pub fn request_status_to_pb(s: RequestStatus) -> pb::TransitionRequestStatus {
    match s {
        RequestStatus::Pending => pb::TransitionRequestStatus::Pending,
        RequestStatus::Approved => pb::TransitionRequestStatus::Approved,
        RequestStatus::Rejected => pb::TransitionRequestStatus::Rejected,
        RequestStatus::Cancelled => pb::TransitionRequestStatus::Cancelled,
        RequestStatus::Superseded => pb::TransitionRequestStatus::Superseded,
    }
}

/// A wire request status, `None` for UNSPECIFIED (all); an error for unknown numbers.
pub fn request_status_from_pb(field: &str, raw: i32) -> Result<Option<RequestStatus>> {
    match pb::TransitionRequestStatus::try_from(raw) {
        Ok(pb::TransitionRequestStatus::Unspecified) => Ok(None),
        Ok(s) => Ok(RequestStatus::ALL
            .into_iter()
            .find(|r| request_status_to_pb(*r) == s)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{raw} is not a valid transition request status"),
        )),
    }
}

fn approval_to_pb(a: Approval) -> pb::Approval {
    pb::Approval {
        approver: a.approver,
        comment: a.comment,
        approve_time: Some(micros_to_pb(a.approve_time)),
    }
}

/// A transition request on the wire.
pub fn request_to_pb(r: TransitionRequest) -> pb::TransitionRequest {
    pb::TransitionRequest {
        id: r.id(),
        model: r.model,
        version: r.version,
        from_stage: stage_to_pb(r.from_stage) as i32,
        to_stage: stage_to_pb(r.to_stage) as i32,
        requester: r.requester,
        comment: r.comment,
        gate_results: r.gate_results.into_iter().map(gate_result_to_pb).collect(),
        approvals: r.approvals.into_iter().map(approval_to_pb).collect(),
        status: request_status_to_pb(r.status) as i32,
        create_time: Some(micros_to_pb(r.create_time)),
        update_time: Some(micros_to_pb(r.update_time)),
        resolved_by: r.resolved_by,
        resolution_comment: r.resolution_comment,
        rollback: r.rollback,
    }
}

/// What a stage move came to, as the `version` and `request` fields of
/// TransitionStage and Rollback: the moved version, or the request that now
/// waits for approval.
pub fn outcome_to_pb(
    outcome: TransitionOutcome,
) -> (Option<pb::ModelVersion>, Option<pb::TransitionRequest>) {
    match outcome {
        TransitionOutcome::Applied(v) => (Some(version_to_pb(v)), None),
        TransitionOutcome::Pending(r) => (None, Some(request_to_pb(r))),
    }
}

/// One item of a watch stream: an event, or a heartbeat stamped `now`.
pub fn watch_item_to_pb(item: WatchItem, now: i64) -> pb::WatchTransitionsResponse {
    use pb::watch_transitions_response::Kind;
    let kind = match item {
        WatchItem::Event(e) => Kind::Event(event_to_pb(std::sync::Arc::unwrap_or_clone(e))),
        WatchItem::Heartbeat(sequence) => Kind::Heartbeat(pb::Heartbeat {
            sequence,
            time: Some(micros_to_pb(now)),
        }),
    };
    pb::WatchTransitionsResponse { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_microsecond_precision() {
        for micros in [0, 1, 1_700_000_000_123_456, -1] {
            assert_eq!(micros_from_pb("t", &micros_to_pb(micros)).unwrap(), micros);
        }
    }

    #[test]
    fn archival_policies_round_trip_and_name_their_bad_fields() {
        let raw = pb::Policy {
            archival: Some(pb::ArchivalPolicy {
                archive_superseded_after_days: Some(7),
                live_metric: Some(pb::LiveMetricRule {
                    metric: "p99_latency_ms".into(),
                    threshold: 250.0,
                    higher_is_better: false,
                    window: Some(prost_types::Duration {
                        seconds: 600,
                        nanos: 0,
                    }),
                    action: pb::LiveMetricAction::Rollback as i32,
                }),
            }),
            ..Default::default()
        };
        let policy = policy_from_pb("policy", raw.clone()).unwrap();
        assert_eq!(policy_to_pb(&policy).archival, raw.archival);
        // Empty means unset; the defaults show on the effective policy.
        let empty = pb::Policy {
            archival: Some(pb::ArchivalPolicy::default()),
            ..Default::default()
        };
        let policy = policy_from_pb("policy", empty).unwrap();
        assert_eq!(policy.archival, None);
        let shown = policy_to_pb(&policy.effective()).archival.unwrap();
        assert_eq!(shown.archive_superseded_after_days, Some(30));

        let bad = pb::Policy {
            archival: Some(pb::ArchivalPolicy {
                archive_superseded_after_days: Some(3651),
                live_metric: Some(pb::LiveMetricRule {
                    metric: String::new(),
                    threshold: f64::INFINITY,
                    higher_is_better: true,
                    window: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 999_999_999,
                    }),
                    action: 9,
                }),
            }),
            ..Default::default()
        };
        let Err(Error::InvalidArgument(v)) = policy_from_pb("policy", bad) else {
            panic!("refused")
        };
        let mut fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "policy.archival.archive_superseded_after_days",
                "policy.archival.live_metric.action",
                "policy.archival.live_metric.metric",
                "policy.archival.live_metric.threshold",
                "policy.archival.live_metric.window",
            ]
        );
    }

    #[test]
    fn every_event_kind_has_a_distinct_wire_value() {
        let mut seen = std::collections::HashSet::new();
        for k in EventKind::ALL {
            assert!(seen.insert(event_kind_to_pb(k) as i32));
        }
    }
}
