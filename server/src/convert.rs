//! Conversions between wire types (`modelreg_api::v1`) and domain values,
//! kept together so the rest of the server never sees protobuf.

use modelreg_api::v1 as pb;
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};

use crate::domain::{
    Cause, Comparison, Evaluation, EvaluationSet, Event, EventKind, MetricDefinition, Model,
    Outcome, SetRef, Source, Stage, Version, Violations, etag,
};
use crate::error::{Error, Result};

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
    }
}

fn event_kind_to_pb(kind: EventKind) -> pb::EventType {
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
            Some(k) => kinds.push(k),
            None => v.add(
                format!("{field}[{i}]"),
                format!("{t} is not a valid event type"),
            ),
        }
    }
    kinds
}

/// A wire source as a domain one.
pub fn source_from_pb(s: pb::Source) -> Source {
    Source {
        commit: s.commit,
        pipeline_url: s.pipeline_url,
        run_id: s.run_id,
        repository: s.repository,
    }
}

/// A domain model on the wire.
pub fn model_to_pb(m: Model) -> pb::Model {
    pb::Model {
        name: m.name,
        description: m.description,
        tags: m.tags.into_iter().collect(),
        policy: None,
        etag: etag(m.revision),
        latest_version: m.latest_version,
        production_version: m.production_version,
        aliases: m.aliases.into_iter().collect(),
        created_by: m.created_by,
        create_time: Some(micros_to_pb(m.create_time)),
        update_time: Some(micros_to_pb(m.update_time)),
    }
}

/// A domain version on the wire.
pub fn version_to_pb(v: Version) -> pb::ModelVersion {
    pb::ModelVersion {
        model: v.model,
        version: v.version,
        artifact_uri: v.artifact_uri,
        artifact_digest: v.artifact_digest,
        source: Some(pb::Source {
            commit: v.source.commit,
            pipeline_url: v.source.pipeline_url,
            run_id: v.source.run_id,
            repository: v.source.repository,
        }),
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
        deployments: Vec::new(),
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
pub fn comparison_to_pb(c: Comparison) -> pb::VersionComparison {
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
        gate_results: Vec::new(),
        gates_passed: true,
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
    fn every_event_kind_has_a_distinct_wire_value() {
        let mut seen = std::collections::HashSet::new();
        for k in EventKind::ALL {
            assert!(seen.insert(event_kind_to_pb(k) as i32));
        }
    }
}
